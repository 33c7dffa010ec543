//! `myriad`: the Myriad IoT device platform in one binary.

mod config;
mod ctl;
mod platform;
mod serve;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "myriad",
    version,
    about = "An open IoT device platform: MQTT broker and device layer"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "MYRIAD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform.
    Serve(ServeArgs),
    /// Load generator and fleet simulator against any MQTT broker.
    Sim(myriad_sim::SimArgs),
    /// Operate a running platform through its HTTP API.
    Ctl(ctl::CtlArgs),
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
/// aligned allocations (tokio's task cells) cost no padding chunks.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options: pages freed by a connection storm go back to
/// the system within a second (dirty) or at once (muzzy), from a background
/// thread, instead of the default 10 s. `_RJEM_MALLOC_CONF` overrides them.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Sim(args) => Ok(myriad_sim::run(args)?),
        Command::Ctl(args) => ctl::run(args),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MYRIAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
