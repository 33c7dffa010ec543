//! `conn`: open N connections, hold them idle with keepalive K, and measure
//! the connect rate, failures and the broker's memory per idle connection.

use std::sync::Arc;
use std::time::Duration;

use myriad_mqtt::Packet;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ConnectOptions};
use crate::error::Result;
use crate::metrics::Counters;
use crate::proc::{Memory, Watch};
use crate::report::{ErrorLog, emit, round3};
use crate::{Env, progress, secs};

/// Options of `myriad sim conn`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub count: usize,
    /// Keep alive in seconds (PINGREQ when idle that long).
    #[arg(long, default_value_t = 60)]
    pub keepalive: u16,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Seconds after the last connect before the broker's memory is read.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Connects per second (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Bound on the connect phase in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,
}

/// Results of `conn`.
#[derive(Debug, Serialize)]
pub struct ConnReport {
    /// Connections asked for.
    pub requested: usize,
    /// Connections that got a successful CONNACK.
    pub connected: u64,
    /// Connection attempts that failed.
    pub failed: u64,
    /// Connections lost while being held.
    pub dropped: u64,
    /// PINGRESPs received while holding.
    pub pongs: u64,
    /// Seconds from the first attempt to the last connect (or failure).
    pub connect_secs: f64,
    /// Connections per second over `connect_secs`.
    pub connect_rate: f64,
    /// Keep alive used.
    pub keepalive: u16,
    /// Seconds the connections were held.
    pub hold_secs: f64,
    /// Source addresses used.
    pub source_addresses: usize,
    /// Broker memory before connecting.
    pub broker_mem_before: Option<Memory>,
    /// Broker memory with every connection open (after `settle`).
    pub broker_mem_after: Option<Memory>,
    /// Highest broker VmRSS seen.
    pub broker_rss_peak: Option<u64>,
    /// Broker memory a second after the connections closed.
    pub broker_mem_after_close: Option<Memory>,
    /// (VmRSS after - before) / connected.
    pub bytes_per_conn: Option<i64>,
    /// (RssAnon after - before) / connected.
    pub anon_bytes_per_conn: Option<i64>,
    /// Broker CPU seconds over the run.
    pub broker_cpu_secs: Option<f64>,
}

/// Runs `conn`.
pub async fn run(env: Env, args: ConnArgs) -> Result<()> {
    env.check_sockets(args.count)?;
    let connect_timeout = secs(args.connect_timeout, "connect-timeout")?;
    let hold = secs(args.hold, "hold")?;
    let settle = secs(args.settle, "settle")?.min(hold);
    let started = Instant::now();
    let mut watch = env.broker_pid.map(Watch::start).transpose()?;
    let counters = Arc::new(Counters::default());
    let errors = Arc::new(ErrorLog::default());
    let stop = CancellationToken::new();
    let progress_stop = CancellationToken::new();
    let progress = progress::spawn(
        "conn",
        counters.clone(),
        env.quiet,
        progress_stop.clone(),
        progress::render_connections,
    );

    let permits = Arc::new(Semaphore::new(env.connect_concurrency));
    let mut tasks = JoinSet::new();
    let connect_start = Instant::now();
    let connect_deadline = connect_start + connect_timeout;
    let mut spawned = 0;
    for index in 0..args.count {
        let at = super::paced(connect_start, index, args.rate);
        if at > Instant::now() {
            sleep_until(at.min(connect_deadline)).await;
        }
        if Instant::now() >= connect_deadline {
            break;
        }
        let mut options = ConnectOptions::new(format!("{}-c{index}", env.prefix), env.version);
        options.keep_alive = args.keepalive;
        options.source = env.sources.source(index);
        options.timeout = Duration::from_secs(30);
        tasks.spawn(hold_one(
            env.broker,
            options,
            counters.clone(),
            errors.clone(),
            permits.clone(),
            stop.clone(),
        ));
        spawned += 1;
    }
    // Wait for every attempt to finish, bounded by the connect timeout.
    let spawned = spawned as u64;
    while Counters::get(&counters.connected) + Counters::get(&counters.connect_failed) < spawned
        && Instant::now() < connect_deadline
    {
        sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let connected = Counters::get(&counters.connected);
    let failed = Counters::get(&counters.connect_failed)
        + (args.count as u64).saturating_sub(
            Counters::get(&counters.connected) + Counters::get(&counters.connect_failed),
        );

    let hold_start = Instant::now();
    sleep(settle).await;
    let mem_after = match watch.as_mut() {
        Some(watch) => Some(watch.sample()?),
        None => None,
    };
    while hold_start.elapsed() < hold {
        sleep((hold - hold_start.elapsed()).min(Duration::from_secs(1))).await;
        if let Some(watch) = watch.as_mut() {
            watch.sample()?;
        }
    }
    let hold_secs = hold_start.elapsed().as_secs_f64();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let (mem_after_close, cpu) = match watch.as_mut() {
        Some(watch) => {
            sleep(Duration::from_secs(1)).await;
            (
                Some(watch.sample()?),
                Some(round3(watch.cpu_since_start()?)),
            )
        }
        None => (None, None),
    };
    progress_stop.cancel();
    let _ = progress.await;

    let before = watch.as_ref().map(|watch| watch.start);
    let per = |field: fn(&Memory) -> u64| match (before, mem_after) {
        (Some(before), Some(after)) => super::per_item(field(&after), field(&before), connected),
        _ => None,
    };
    let body = ConnReport {
        requested: args.count,
        connected,
        failed,
        dropped: Counters::get(&counters.dropped),
        pongs: Counters::get(&counters.pongs),
        connect_secs: round3(connect_secs),
        connect_rate: round3(connected as f64 / connect_secs.max(1e-9)),
        keepalive: args.keepalive,
        hold_secs: round3(hold_secs),
        source_addresses: env.sources.addresses_used(args.count),
        broker_mem_before: before,
        broker_mem_after: mem_after,
        broker_rss_peak: watch.as_ref().map(|watch| watch.peak_rss),
        broker_mem_after_close: mem_after_close,
        bytes_per_conn: per(|m| m.rss),
        anon_bytes_per_conn: per(|m| m.rss_anon),
        broker_cpu_secs: cpu,
    };
    emit(&env.header("conn", started, errors.summary()), &body)
}

/// One idle connection: connect, then answer nothing but keep alive until `stop`.
async fn hold_one(
    broker: std::net::SocketAddr,
    options: ConnectOptions,
    counters: Arc<Counters>,
    errors: Arc<ErrorLog>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let connected = {
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        if stop.is_cancelled() {
            return;
        }
        Client::connect(broker, &options).await
    };
    let mut client = match connected {
        Ok((client, _)) => client,
        Err(error) => {
            Counters::inc(&counters.connect_failed);
            errors.add(error);
            return;
        }
    };
    Counters::inc(&counters.connected);
    client.shrink();
    loop {
        let ping_at = client.ping_deadline();
        tokio::select! {
            _ = stop.cancelled() => {
                client.disconnect().await;
                return;
            }
            read = client.fill() => {
                if let Err(error) = read {
                    lost(&counters, &errors, error);
                    return;
                }
                loop {
                    match client.poll_packet() {
                        Ok(Some(Packet::PingResp)) => Counters::inc(&counters.pongs),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(error) => {
                            lost(&counters, &errors, error);
                            return;
                        }
                    }
                }
                client.shrink();
            }
            _ = sleep_until(ping_at) => {
                let sent = client.queue_ping_if_due();
                if let Err(error) = sent {
                    lost(&counters, &errors, error);
                    return;
                }
                if let Err(error) = client.flush().await {
                    lost(&counters, &errors, error);
                    return;
                }
            }
        }
    }
}

fn lost(counters: &Counters, errors: &ErrorLog, error: crate::SimError) {
    Counters::inc(&counters.dropped);
    errors.add(format!("held connection lost: {error}"));
}
