//! `myriad-agent`: the device agent alone, for gateways and devices (the same program as
//! `myriad agent`, without the platform's broker, store, simulator and ctl, and with the
//! system allocator): a smaller binary and fewer resident code pages.

use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The device agent: A/B updates, telemetry with store-and-forward, commands, shadow sync.
#[derive(Debug, Parser)]
#[command(name = "myriad-agent", version)]
struct Cli {
    /// Log lines on stderr as JSON instead of text.
    #[arg(long, env = "MYRIAD_AGENT_LOG_JSON")]
    log_json: bool,
    #[command(flatten)]
    agent: myriad_device::AgentArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("MYRIAD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    myriad_device::run(cli.agent)
}
