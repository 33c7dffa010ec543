//! The device agent program (issues 18 and 19), run as `myriad-agent` (this crate's binary, the
//! device-only build) or `myriad agent` (the platform binary). It reads the config, provisions on the
//! first start, takes the boot decision (discard an interrupted install, run the trial's
//! self-test and confirm or roll back) and prints the outcome as one JSON line on stdout.
//! Without an `[mqtt]` table it exits there; with one it enters the network mode
//! ([`net`]): it reports the boot outcome, follows `$ota/{id}/notify`, downloads, installs,
//! reports `REBOOTING` and exits 0 — the "reboot": the next start runs the trial.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use myriad_agent::config::{self, MAX_CONFIG_FILE};
use myriad_agent::fs::RealFs;
use myriad_agent::selftest::ProcessRunner;
use myriad_agent::{Agent, AgentError, BootDecision};

mod net;

/// Options of `myriad agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Config file (TOML: slot paths, state dir, keys, self-test command).
    #[arg(long, short, env = "MYRIAD_AGENT_CONFIG")]
    pub config: PathBuf,
}

/// Runs the boot decision, then the network mode when the config has an `[mqtt]` table.
pub fn run(args: AgentArgs) -> Result<()> {
    let path = &args.config;
    let mut text = String::new();
    std::fs::File::open(path)
        .with_context(|| format!("config file {}", path.display()))?
        .take(MAX_CONFIG_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("config file {}", path.display()))?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        bail!(
            "config file {}: larger than {MAX_CONFIG_FILE} bytes",
            path.display()
        );
    }
    let (config, provision) = config::parse(&text)?;
    let mqtt = config::parse_mqtt(&text)?;
    let telemetry = config::parse_telemetry(&text)?;
    let handlers = config::parse_commands(&text)?;
    let shadow = config::parse_shadow(&text)?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("state_dir {}", config.state_dir.display()))?;
    let mut agent = match Agent::open(config.clone(), RealFs) {
        Ok(a) => a,
        Err(AgentError::NotProvisioned(dir)) => {
            let Some(p) = provision else {
                bail!(
                    "no boot state in {} and no [provision] section in {}",
                    dir.display(),
                    path.display()
                );
            };
            Agent::provision(config, RealFs, p.slot, &p.version, p.size, p.counter)?
        }
        Err(e) => return Err(e.into()),
    };
    for e in agent.damaged_state_files() {
        tracing::warn!(error = %e, "damaged state file, using the other one");
    }
    let decision = agent.start(&ProcessRunner)?;
    let s = agent.state().clone();
    let boot_reports = agent.take_reports();
    let reports: Vec<_> = boot_reports
        .iter()
        .map(|r| {
            serde_json::json!({"rollout": r.rollout, "state": r.state.as_str(), "reason": r.reason})
        })
        .collect();
    let decision = match decision {
        BootDecision::Normal => "normal",
        BootDecision::Discarded(_) => "discarded",
        BootDecision::RunSelfTest { .. } => "self_test",
        BootDecision::RolledBack(_) => "rolled_back",
    };
    let out = serde_json::json!({
        "decision": decision,
        "active": s.active.name(),
        "version": s.image.version,
        "counter": s.counter,
        "reports": reports,
    });
    println!("{out}");
    match mqtt {
        Some(m) => net::run(agent, &m, boot_reports, telemetry, handlers, shadow),
        None => Ok(()),
    }
}
