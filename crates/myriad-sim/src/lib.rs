//! `myriad sim`: a load generator and fleet simulator for MQTT brokers.
//!
//! It speaks MQTT 3.1.1 and 5.0 through the project's own codec
//! ([`myriad_mqtt`]) over plain tokio sockets, so it can measure Myriad and
//! its peers alike. Each scenario is bounded in count and time, stops by
//! itself, shows progress on stderr and prints one JSON line with its results
//! last on stdout.
//!
//! Scenarios:
//! * `conn`: hold N idle connections; connect rate, failures and the broker's
//!   resident memory per connection.
//! * `fanin`, `fanout`, `p2p`, `shared`: publishers and subscribers; delivered
//!   msgs/s, end-to-end latency percentiles, losses, duplicates and
//!   messages per broker CPU second.
//! * `fleet`: devices that connect with credentials, send telemetry, answer
//!   commands and reconnect with jittered backoff; optionally a reconnect storm.
//! * `commands` (Myriad only): N registered devices answer commands sent
//!   through the HTTP API; commands per second and latency from the API call
//!   to the device's recorded reply.
//! * `telemetry` (Myriad only): N registered devices publish sensor readings
//!   to the telemetry store; stored values per second, PUBACK latency and
//!   broker CPU per value.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod http;
pub mod metrics;
pub mod net;
pub mod proc;
pub mod progress;
pub mod report;
pub mod scenario;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use myriad_mqtt::ProtocolVersion;

pub use error::{Result, SimError};

/// Arguments of `myriad sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Options shared by every scenario.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The scenario to run.
    #[command(subcommand)]
    pub command: SimCommand,
}

/// Options shared by every scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Broker address (host:port).
    #[arg(long, global = true, default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// PID of the broker process, to read its memory and CPU time from /proc.
    #[arg(long, global = true)]
    pub broker_pid: Option<u32>,
    /// MQTT protocol version: 3 (3.1.1) or 5.
    #[arg(long, global = true, default_value_t = 5, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub mqtt: u8,
    /// Label copied into the report (e.g. the broker's name).
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// No progress line on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Connections per source address before moving on to the next one of
    /// 127.0.0.2, 127.0.0.3, ... (only against a loopback broker).
    #[arg(long, global = true, default_value_t = 20_000)]
    pub conns_per_source: usize,
    /// Connection attempts in flight at once (past a broker's listen backlog,
    /// SYNs are dropped and retried a second later, which skews connect rates).
    #[arg(long, global = true, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Worker threads of the simulator's runtime (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Prefix of every client id and topic (default: a random one per run).
    #[arg(long, global = true)]
    pub prefix: Option<String>,
}

/// The scenarios.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SimCommand {
    /// Open N idle connections, hold them, report connect rate and memory per connection.
    Conn(scenario::conn::ConnArgs),
    /// Many publishers -> one wildcard subscriber.
    Fanin(scenario::pubsub::PubSubArgs),
    /// One publisher -> many subscribers of one topic.
    Fanout(scenario::pubsub::PubSubArgs),
    /// Pairs of one publisher and one subscriber, each on its own topic.
    P2p(scenario::pubsub::PubSubArgs),
    /// Publishers -> a shared subscription group ($share/GROUP/...).
    Shared(scenario::pubsub::PubSubArgs),
    /// Simulated devices: credentials, telemetry, commands, reconnects, storms.
    Fleet(scenario::fleet::FleetArgs),
    /// Myriad's command service end to end: HTTP API -> device -> recorded reply.
    Commands(scenario::commands::CommandsArgs),
    /// Myriad's telemetry store: devices publish quantised sensor readings over MQTT.
    Telemetry(scenario::telemetry::TelemetryArgs),
    /// Myriad's OTA rollouts: a rollout to N simulated devices that report every step.
    Ota(scenario::ota::OtaArgs),
}

/// Settings every scenario reads, resolved from [`CommonArgs`].
#[derive(Debug, Clone)]
pub struct Env {
    /// Broker address.
    pub broker: SocketAddr,
    /// Broker PID.
    pub broker_pid: Option<u32>,
    /// Protocol version.
    pub version: ProtocolVersion,
    /// Report label.
    pub label: Option<String>,
    /// Suppress progress.
    pub quiet: bool,
    /// Source address spreading.
    pub sources: net::Sources,
    /// Connection attempts in flight.
    pub connect_concurrency: usize,
    /// Prefix of client ids and topics.
    pub prefix: String,
}

impl Env {
    fn resolve(common: &CommonArgs) -> Result<Env> {
        let broker = common
            .broker
            .to_socket_addrs()
            .map_err(|error| SimError::Args(format!("--broker {}: {error}", common.broker)))?
            .next()
            .ok_or_else(|| SimError::Args(format!("--broker {}: no address", common.broker)))?;
        let version = if common.mqtt == 5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        let prefix = common
            .prefix
            .clone()
            .unwrap_or_else(|| format!("sim{:06x}", fastrand::u32(..0x100_0000)));
        if prefix.is_empty() || prefix.contains(['+', '#', '/']) {
            return Err(SimError::Args(
                "--prefix must be non-empty without '/', '+' or '#'".to_owned(),
            ));
        }
        Ok(Env {
            broker,
            broker_pid: common.broker_pid,
            version,
            label: common.label.clone(),
            quiet: common.quiet,
            sources: net::Sources::new(broker, common.conns_per_source),
            connect_concurrency: common.connect_concurrency.max(1),
            prefix,
        })
    }

    /// Fails early when a run would need more sockets than this process may open.
    pub fn check_sockets(&self, sockets: usize) -> Result<()> {
        if let Some(limit) = net::open_file_limit()
            && sockets as u64 + 64 > limit
        {
            return Err(SimError::Args(format!(
                "{sockets} connections need more open files than this process's limit of {limit}; \
                 split the run over several `myriad sim` processes"
            )));
        }
        Ok(())
    }

    /// The report header for a scenario, given the run's start.
    pub fn header(
        &self,
        scenario: &'static str,
        started: tokio::time::Instant,
        errors: Vec<String>,
    ) -> report::Header {
        report::Header {
            scenario,
            label: self.label.clone(),
            broker: self.broker.to_string(),
            mqtt: self.version.level(),
            broker_pid: self.broker_pid,
            elapsed_secs: report::round3(started.elapsed().as_secs_f64()),
            sim_cpu_secs: proc::own_cpu_seconds().map(report::round3),
            errors,
        }
    }
}

/// Seconds as a [`Duration`], refusing negative or non-finite values.
pub fn secs(value: f64, name: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| SimError::Args(format!("--{name} must be a non-negative number of seconds")))
}

/// Runs `myriad sim` on its own tokio runtime; the report is printed on stdout.
pub fn run(args: SimArgs) -> Result<()> {
    let env = Env::resolve(&args.common)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.common.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder.build().map_err(SimError::Runtime)?;
    let result = runtime.block_on(async move {
        match args.command {
            SimCommand::Conn(a) => scenario::conn::run(env, a).await,
            SimCommand::Fanin(a) => scenario::fanin::run(env, a).await,
            SimCommand::Fanout(a) => scenario::fanout::run(env, a).await,
            SimCommand::P2p(a) => scenario::p2p::run(env, a).await,
            SimCommand::Shared(a) => scenario::shared::run(env, a).await,
            SimCommand::Fleet(a) => scenario::fleet::run(env, a).await,
            SimCommand::Commands(a) => scenario::commands::run(env, a).await,
            SimCommand::Telemetry(a) => scenario::telemetry::run(env, a).await,
            SimCommand::Ota(a) => scenario::ota::run(env, a).await,
        }
    });
    // Tasks still winding down (closing sockets) must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}
