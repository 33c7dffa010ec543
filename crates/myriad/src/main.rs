//! `myriad`: the Myriad IoT device platform in one binary.

mod config;
mod console;
mod ctl;
mod observe;
mod pipelines;
mod platform;
mod serve;
mod supervise;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use config::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "myriad",
    version,
    about = "An open IoT device platform: MQTT broker and device layer"
)]
struct Cli {
    /// Log format on stderr: `text` (default) or `json` lines; for
    /// `serve` it overrides the config's `log.format`.
    #[arg(long, global = true, value_enum, env = "MYRIAD_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform.
    Serve(ServeArgs),
    /// Load generator and fleet simulator against any MQTT broker.
    Sim(myriad_sim::SimArgs),
    /// Operate a running platform through its HTTP API.
    Ctl(ctl::CtlArgs),
    /// The device agent (for now: the boot decision once, then exit).
    Agent(myriad_device::AgentArgs),
}

/// Options of `myriad serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML).
    #[arg(long, short, env = "MYRIAD_CONFIG")]
    pub config: Option<PathBuf>,
    /// MQTT listen address, overriding `mqtt.listen`.
    #[arg(long, env = "MYRIAD_LISTEN")]
    pub listen: Option<String>,
    /// Data directory of the embedded store, overriding `store.data_dir`.
    #[arg(long, env = "MYRIAD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP API listen address, overriding `api.listen`.
    #[arg(long, env = "MYRIAD_API_LISTEN")]
    pub api_listen: Option<String>,
}

/// jemalloc: size classes keep small per-connection allocations dense, and
/// aligned allocations (tokio's task cells) cost no padding chunks. Its
/// statistics feed `/metrics` and the leak watchdog.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options: pages freed by a connection storm go back to
/// the system within a second (dirty) or at once (muzzy), from a background
/// thread, instead of the default 10 s. `_RJEM_MALLOC_CONF` overrides them.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,prof:true,prof_active:false,lg_prof_sample:19\0";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let format = cli.log_format;
    match cli.command {
        // Serve sets logging up once its config is read.
        Command::Serve(args) => serve::run(args, format),
        Command::Sim(args) => {
            observe::logging::init(format.unwrap_or_default(), None, None);
            Ok(myriad_sim::run(args)?)
        }
        Command::Ctl(args) => {
            observe::logging::init(format.unwrap_or_default(), None, None);
            ctl::run(args)
        }
        Command::Agent(args) => {
            observe::logging::init(format.unwrap_or_default(), None, None);
            myriad_device::run(args)
        }
    }
}
