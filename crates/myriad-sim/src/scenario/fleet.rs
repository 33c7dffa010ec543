//! `fleet`: simulated devices that behave like real ones.
//!
//! Each device connects with credentials (user name = its id), keeps the
//! connection alive with PINGREQ, publishes telemetry at a fixed interval,
//! answers commands sent to `PREFIX/cmd/{id}/{name}` on `PREFIX/reply/{id}`,
//! and after any drop reconnects with exponential, jittered backoff. A
//! commander connection sends commands at `--command-rate` and measures
//! their round trip. With `--storm-after S` every device drops its
//! connection at once (TCP reset) S seconds in and reconnects: the report
//! gives the time until all are back, how the reconnects spread over the
//! seconds after it (the busiest second's share: a thundering herd shows as
//! a share near 1) and the broker's peak memory against its steady state
//! just before the storm. `--backoff agent` makes every device wait as
//! `myriad agent` does ([`myriad_agent::backoff`]: full jitter, a window
//! doubling from `--backoff-min-ms` to `--backoff-max-ms`, before every
//! reconnect, the first after a storm included).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use myriad_mqtt::{Packet, QoS};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ConnectOptions};
use crate::error::{Result, SimError};
use crate::metrics::{Clock, Counters, Latency, LatencySummary, Stamp};
use crate::proc::Watch;
use crate::report::{ErrorLog, emit, round3};
use crate::{Env, progress, secs};

/// Options of `myriad sim fleet`.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Devices to simulate.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub devices: usize,
    /// Seconds the run lasts.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds between telemetry messages of one device (0: none).
    #[arg(long, default_value_t = 5.0)]
    pub telemetry_interval: f64,
    /// QoS of telemetry.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub telemetry_qos: u8,
    /// Keep alive of each device in seconds.
    #[arg(long, default_value_t = 30)]
    pub keepalive: u16,
    /// Commands per second sent to random devices (0: none).
    #[arg(long, default_value_t = 2.0)]
    pub command_rate: f64,
    /// Drop every connection at once this many seconds in, then reconnect.
    #[arg(long)]
    pub storm_after: Option<f64>,
    /// Smallest reconnect backoff in milliseconds (the first delay is uniform in 0..this).
    #[arg(long, default_value_t = 200)]
    pub backoff_min_ms: u64,
    /// Largest reconnect backoff in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub backoff_max_ms: u64,
    /// Password every device presents.
    #[arg(long, default_value = "device-secret")]
    pub password: String,
    /// Persistent sessions (clean start off; 5.0 session expiry 1 h).
    #[arg(long)]
    pub persistent: bool,
    /// How devices wait before reconnecting: `sim` (uniform in [base/2, base], the first
    /// after a storm uniform in 0..min) or `agent` (`myriad agent`'s full-jitter backoff).
    #[arg(long, value_enum, default_value = "sim")]
    pub backoff: BackoffKind,
}

/// The reconnect wait a simulated device uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackoffKind {
    /// The simulator's own: uniform in [base/2, base].
    Sim,
    /// `myriad agent`'s: full jitter over a doubling window ([`myriad_agent::backoff`]).
    Agent,
}

/// Seconds after a storm whose reconnects are counted one by one (later ones land in the
/// last second).
const SPREAD_SECS: usize = 300;

/// The reconnect storm's outcome.
#[derive(Debug, Serialize)]
pub struct StormReport {
    /// Seconds into the run when the storm started.
    pub at_secs: f64,
    /// Devices online just before the storm.
    pub online_before: i64,
    /// Seconds until that many were online again (None: not within the run).
    pub reconnect_secs: Option<f64>,
    /// Reconnects in each second after the storm (up to the last one with any; at most
    /// 300 s, later ones counted in the last).
    pub reconnects_per_second: Vec<u64>,
    /// The largest number of reconnects within any one second (100 ms steps) after the
    /// storm, over `online_before`: near 1 is a thundering herd.
    pub busiest_second_share: Option<f64>,
    /// Broker VmRSS just before the storm.
    pub rss_steady: Option<u64>,
    /// Highest broker VmRSS from the storm to the end of the run.
    pub rss_peak: Option<u64>,
    /// rss_peak / rss_steady.
    pub peak_over_steady: Option<f64>,
}

/// Results of `fleet`.
#[derive(Debug, Serialize)]
pub struct FleetReport {
    /// Devices simulated.
    pub devices: usize,
    /// Devices online at the end.
    pub online_at_end: i64,
    /// Successful connects (first connects and reconnects).
    pub connects: u64,
    /// Reconnects after a drop.
    pub reconnects: u64,
    /// Failed connect attempts.
    pub connect_failures: u64,
    /// Connections lost (storm drops included).
    pub drops: u64,
    /// Telemetry messages published.
    pub telemetry_sent: u64,
    /// Commands sent.
    pub commands_sent: u64,
    /// Commands answered.
    pub commands_answered: u64,
    /// Command round trip (commander -> device -> commander).
    #[serde(flatten)]
    pub command_latency: LatencySummary,
    /// The reconnect storm, if one was asked for.
    pub storm: Option<StormReport>,
    /// Broker CPU seconds over the run.
    pub broker_cpu_secs: Option<f64>,
    /// Broker peak VmRSS.
    pub broker_rss_peak: Option<u64>,
}

struct Fleet {
    counters: Arc<Counters>,
    errors: Arc<ErrorLog>,
    online: AtomicI64,
    connects: AtomicU64,
    reconnects: AtomicU64,
    /// Reconnects after the storm per 100 ms since it began.
    spread: Mutex<Vec<u64>>,
    /// When the storm began.
    storm_began: Mutex<Option<Instant>>,
    stop: CancellationToken,
    storm: watch::Receiver<u64>,
    permits: Semaphore,
    prefix: String,
    args: FleetArgs,
    version: myriad_mqtt::ProtocolVersion,
    broker: SocketAddr,
}

impl Fleet {
    /// Counts a reconnect in its 100 ms step after the storm (none before one).
    fn count_reconnect(&self) {
        let Some(began) = self.storm_began.lock().ok().and_then(|b| *b) else {
            return;
        };
        if let Ok(mut spread) = self.spread.lock() {
            let last = spread.len() - 1;
            let step = (began.elapsed().as_millis() / 100) as usize;
            spread[step.min(last)] += 1;
        }
    }
}

/// Runs `fleet`.
pub async fn run(env: Env, args: FleetArgs) -> Result<()> {
    env.check_sockets(args.devices + 1)?;
    let duration = secs(args.duration, "duration")?;
    let telemetry = secs(args.telemetry_interval, "telemetry-interval")?;
    let storm_after = args
        .storm_after
        .map(|at| secs(at, "storm-after"))
        .transpose()?;
    if args.backoff_min_ms == 0 || args.backoff_max_ms < args.backoff_min_ms {
        return Err(SimError::Args(
            "need 0 < --backoff-min-ms <= --backoff-max-ms".to_owned(),
        ));
    }
    let started = Instant::now();
    let mut watch = env.broker_pid.map(Watch::start).transpose()?;
    let (storm_tx, storm_rx) = watch::channel(0u64);
    let fleet = Arc::new(Fleet {
        counters: Arc::new(Counters::default()),
        errors: Arc::new(ErrorLog::default()),
        online: AtomicI64::new(0),
        connects: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        spread: Mutex::new(vec![0; SPREAD_SECS * 10]),
        storm_began: Mutex::new(None),
        stop: CancellationToken::new(),
        storm: storm_rx,
        permits: Semaphore::new(env.connect_concurrency),
        prefix: env.prefix.clone(),
        args: args.clone(),
        version: env.version,
        broker: env.broker,
    });
    let progress_stop = CancellationToken::new();
    let progress = progress::spawn(
        "fleet",
        fleet.counters.clone(),
        env.quiet,
        progress_stop.clone(),
        progress::render_connections,
    );
    let mut devices = JoinSet::new();
    for index in 0..args.devices {
        devices.spawn(device(
            fleet.clone(),
            index,
            env.sources.source(index),
            telemetry,
        ));
    }
    let latency = Arc::new(Mutex::new(Latency::new()));
    let commands_sent = Arc::new(AtomicU64::new(0));
    let commander = tokio::spawn(commander(
        fleet.clone(),
        latency.clone(),
        commands_sent.clone(),
    ));

    let end = started + duration;
    let mut storm = None;
    let mut storm_at = storm_after.map(|after| started + after);
    let mut storm_state: Option<(Instant, i64, Option<u64>, Option<f64>)> = None;
    let mut storm_peak = 0;
    while Instant::now() < end {
        sleep(Duration::from_millis(100)).await;
        let sampled = watch.as_mut().and_then(|watch| watch.sample().ok());
        if let (Some(_), Some(memory)) = (&storm_state, sampled) {
            storm_peak = u64::max(storm_peak, memory.rss);
        }
        if let Some(at) = storm_at
            && Instant::now() >= at
        {
            storm_at = None;
            let online = fleet.online.load(Ordering::Relaxed);
            storm_state = Some((Instant::now(), online, sampled.map(|m| m.rss), None));
            if let Ok(mut began) = fleet.storm_began.lock() {
                *began = Some(Instant::now());
            }
            storm_tx.send_modify(|generation| *generation += 1);
        }
        if let Some((at, before, _, back @ None)) = storm_state.as_mut()
            && fleet.online.load(Ordering::Relaxed) >= *before
            && at.elapsed() > Duration::from_millis(200)
        {
            *back = Some(at.elapsed().as_secs_f64());
        }
    }
    if let Some((at, online_before, rss_steady, back)) = storm_state {
        let rss_peak = watch.as_ref().map(|_| storm_peak);
        let tenths = fleet
            .spread
            .lock()
            .map(|spread| spread.clone())
            .unwrap_or_default();
        let (reconnects_per_second, busiest) = spread_summary(&tenths);
        storm = Some(StormReport {
            at_secs: round3(at.duration_since(started).as_secs_f64()),
            online_before,
            reconnect_secs: back.map(round3),
            reconnects_per_second,
            busiest_second_share: (online_before > 0)
                .then(|| round3(busiest as f64 / online_before as f64)),
            rss_steady,
            rss_peak,
            peak_over_steady: match (rss_steady, rss_peak) {
                (Some(steady), Some(peak)) if steady > 0 => {
                    Some(round3(peak as f64 / steady as f64))
                }
                _ => None,
            },
        });
    }
    let online_at_end = fleet.online.load(Ordering::Relaxed);
    let cpu = match watch.as_ref() {
        Some(watch) => Some(round3(watch.cpu_since_start()?)),
        None => None,
    };
    fleet.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while devices.join_next().await.is_some() {}
    })
    .await;
    devices.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(5), commander).await;
    progress_stop.cancel();
    let _ = progress.await;
    let counters = &fleet.counters;
    let command_latency = latency
        .lock()
        .map(|latency| latency.summary())
        .unwrap_or_default();
    let body = FleetReport {
        devices: args.devices,
        online_at_end,
        connects: fleet.connects.load(Ordering::Relaxed),
        reconnects: fleet.reconnects.load(Ordering::Relaxed),
        connect_failures: Counters::get(&counters.connect_failed),
        drops: Counters::get(&counters.dropped),
        telemetry_sent: Counters::get(&counters.sent),
        commands_sent: commands_sent.load(Ordering::Relaxed),
        commands_answered: command_latency.latency_samples,
        command_latency,
        storm,
        broker_cpu_secs: cpu,
        broker_rss_peak: watch.as_ref().map(|watch| watch.peak_rss),
    };
    emit(&env.header("fleet", started, fleet.errors.summary()), &body)
}

/// Exponential backoff with jitter: uniform in [base/2, base] where base
/// doubles per failed attempt from the minimum up to the maximum.
fn backoff(attempt: u32, min_ms: u64, max_ms: u64) -> Duration {
    let base = min_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(max_ms)
        .max(1);
    Duration::from_millis(fastrand::u64(base / 2..=base))
}

/// Per-second counts (trailing empty seconds cut) and the busiest one-second window of
/// `tenths` (reconnects per 100 ms).
fn spread_summary(tenths: &[u64]) -> (Vec<u64>, u64) {
    let mut seconds: Vec<u64> = tenths.chunks(10).map(|c| c.iter().sum()).collect();
    while seconds.last() == Some(&0) {
        seconds.pop();
    }
    let busiest = tenths
        .windows(10.min(tenths.len()).max(1))
        .map(|w| w.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    (seconds, busiest)
}

/// The device's reconnect wait, as `--backoff` says.
enum Waiter {
    Sim,
    Agent(myriad_agent::backoff::Backoff),
}

impl Waiter {
    fn new(args: &FleetArgs) -> Waiter {
        match args.backoff {
            BackoffKind::Sim => Waiter::Sim,
            BackoffKind::Agent => {
                myriad_agent::backoff::Backoff::new(myriad_agent::backoff::BackoffConfig {
                    base_ms: args.backoff_min_ms,
                    cap_ms: args.backoff_max_ms,
                    ..myriad_agent::backoff::BackoffConfig::default()
                })
                .map_or(Waiter::Sim, Waiter::Agent)
            }
        }
    }

    fn connected(&mut self, now_ms: u64) {
        if let Waiter::Agent(b) = self {
            b.connected(now_ms);
        }
    }

    /// The wait before the next attempt; `storm`: everyone lost the connection at once.
    fn next(&mut self, attempt: u32, storm: bool, now_ms: u64, args: &FleetArgs) -> Duration {
        match self {
            Waiter::Sim if storm => Duration::from_millis(fastrand::u64(0..=args.backoff_min_ms)),
            Waiter::Sim => backoff(attempt, args.backoff_min_ms, args.backoff_max_ms),
            Waiter::Agent(b) => {
                b.disconnected(now_ms);
                Duration::from_millis(b.next_delay(fastrand::u64(..)))
            }
        }
    }
}

/// Why a device's session ended.
enum Ended {
    Stop,
    Storm,
    Lost(SimError),
}

async fn device(
    fleet: Arc<Fleet>,
    index: usize,
    source: Option<std::net::IpAddr>,
    telemetry: Duration,
) {
    let id = format!("{}-d{index}", fleet.prefix);
    let args = &fleet.args;
    let mut options = ConnectOptions::new(id.clone(), fleet.version);
    options.keep_alive = args.keepalive;
    options.username = Some(id.clone());
    options.password = Some(Bytes::from(args.password.clone().into_bytes()));
    options.clean_start = !args.persistent;
    options.session_expiry = args.persistent.then_some(3600);
    options.source = source;
    let mut storm = fleet.storm.clone();
    let mut waiter = Waiter::new(args);
    let clock = Instant::now();
    let now_ms = move || clock.elapsed().as_millis() as u64;
    let mut attempt: u32 = 0;
    let mut ever_connected = false;
    let mut delay = Duration::ZERO;
    loop {
        tokio::select! {
            _ = fleet.stop.cancelled() => return,
            _ = sleep(delay) => {}
        }
        let connected = {
            let Ok(_permit) = fleet.permits.acquire().await else {
                return;
            };
            if fleet.stop.is_cancelled() {
                return;
            }
            Client::connect(fleet.broker, &options).await
        };
        let mut client = match connected {
            Ok((client, _)) => client,
            Err(error) => {
                Counters::inc(&fleet.counters.connect_failed);
                fleet.errors.add(format!("device connect: {error}"));
                attempt = attempt.saturating_add(1);
                delay = waiter.next(attempt, false, now_ms(), args);
                continue;
            }
        };
        attempt = 0;
        fleet.connects.fetch_add(1, Ordering::Relaxed);
        if ever_connected {
            fleet.reconnects.fetch_add(1, Ordering::Relaxed);
            fleet.count_reconnect();
        }
        waiter.connected(now_ms());
        ever_connected = true;
        Counters::inc(&fleet.counters.connected);
        fleet.online.fetch_add(1, Ordering::Relaxed);
        storm.borrow_and_update();
        let ended = session(&fleet, &mut client, &id, index, telemetry, &mut storm).await;
        fleet.online.fetch_sub(1, Ordering::Relaxed);
        match ended {
            Ended::Stop => {
                client.disconnect().await;
                return;
            }
            Ended::Storm => {
                Counters::inc(&fleet.counters.dropped);
                client.abort();
                // Everyone comes back at once, spread only by the backoff.
                delay = waiter.next(0, true, now_ms(), args);
            }
            Ended::Lost(error) => {
                Counters::inc(&fleet.counters.dropped);
                fleet.errors.add(format!("device: {error}"));
                client.abort();
                delay = waiter.next(0, false, now_ms(), args);
            }
        }
    }
}

async fn session(
    fleet: &Fleet,
    client: &mut Client,
    id: &str,
    index: usize,
    telemetry: Duration,
    storm: &mut watch::Receiver<u64>,
) -> Ended {
    let result: Result<Ended> = async {
        let commands = format!("{}/cmd/{id}/+", fleet.prefix);
        client
            .subscribe(&[(commands, QoS::AtLeastOnce)], Duration::from_secs(30))
            .await?;
        client.shrink();
        let telemetry_topic = format!("{}/devices/{id}/telemetry", fleet.prefix);
        let reply_topic = format!("{}/reply/{id}", fleet.prefix);
        let telemetry_qos = QoS::from_u8(fleet.args.telemetry_qos).unwrap_or_default();
        let far = Instant::now() + Duration::from_secs(86_400);
        // Devices start their telemetry at a random phase.
        let mut next_telemetry = if telemetry.is_zero() {
            far
        } else {
            Instant::now() + telemetry.mul_f64(fastrand::f64())
        };
        let mut reading: u64 = 0;
        loop {
            let ping_at = client.ping_deadline();
            tokio::select! {
                biased;
                _ = fleet.stop.cancelled() => return Ok(Ended::Stop),
                changed = storm.changed() => {
                    if changed.is_ok() {
                        return Ok(Ended::Storm);
                    }
                }
                read = client.fill() => { read?; }
                _ = sleep_until(next_telemetry) => {
                    reading += 1;
                    let payload = format!(
                        "{{\"temperature\":{:.2},\"battery\":{},\"seq\":{reading}}}",
                        20.0 + (index % 10) as f64 + fastrand::f64(),
                        100 - (reading % 100)
                    );
                    let packet_id = if telemetry_qos == QoS::AtMostOnce { 0 } else { client.next_packet_id() };
                    client.queue_publish(&telemetry_topic, telemetry_qos, packet_id, Bytes::from(payload))?;
                    Counters::inc(&fleet.counters.sent);
                    next_telemetry += telemetry;
                }
                _ = sleep_until(ping_at) => { client.queue_ping_if_due()?; }
            }
            while let Some(packet) = client.poll_packet()? {
                match client.auto_reply(packet)? {
                    Some(Packet::Publish(command)) => {
                        // Answer with the command's own payload (it carries the stamp).
                        let packet_id = client.next_packet_id();
                        client.queue_publish(&reply_topic, QoS::AtLeastOnce, packet_id, command.payload)?;
                        Counters::inc(&fleet.counters.events);
                    }
                    Some(Packet::PingResp) | None => Counters::inc(&fleet.counters.pongs),
                    _ => {}
                }
            }
            client.flush().await?;
            client.shrink();
        }
    }
    .await;
    result.unwrap_or_else(Ended::Lost)
}

/// Sends commands to random devices and times the replies.
async fn commander(fleet: Arc<Fleet>, latency: Arc<Mutex<Latency>>, sent: Arc<AtomicU64>) {
    let rate = fleet.args.command_rate;
    if rate <= 0.0 || !rate.is_finite() || fleet.args.devices == 0 {
        return;
    }
    let clock = Clock::new();
    let options = ConnectOptions::new(format!("{}-commander", fleet.prefix), fleet.version);
    let setup = async {
        let (mut client, _) = Client::connect(fleet.broker, &options).await?;
        let replies = format!("{}/reply/+", fleet.prefix);
        client
            .subscribe(&[(replies, QoS::AtLeastOnce)], Duration::from_secs(30))
            .await?;
        Ok::<_, SimError>(client)
    };
    let mut client = match setup.await {
        Ok(client) => client,
        Err(error) => {
            fleet.errors.add(format!("commander: {error}"));
            return;
        }
    };
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now() + interval;
    let mut seq: u64 = 0;
    let result: Result<()> = async {
        loop {
            let ping_at = client.ping_deadline();
            tokio::select! {
                biased;
                _ = fleet.stop.cancelled() => return Ok(()),
                read = client.fill() => { read?; }
                _ = sleep_until(next) => {
                    let device = fastrand::usize(..fleet.args.devices);
                    let topic = format!("{}/cmd/{}-d{device}/reboot", fleet.prefix, fleet.prefix);
                    let stamp = Stamp { sent_ns: clock.now_ns(), publisher: device as u32, seq };
                    let packet_id = client.next_packet_id();
                    client.queue_publish(&topic, QoS::AtLeastOnce, packet_id, stamp.payload(32))?;
                    seq += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    next += interval;
                }
                _ = sleep_until(ping_at) => { client.queue_ping_if_due()?; }
            }
            while let Some(packet) = client.poll_packet()? {
                if let Some(Packet::Publish(reply)) = client.auto_reply(packet)?
                    && let Some(stamp) = Stamp::parse(&reply.payload)
                    && let Ok(mut latency) = latency.lock()
                {
                    latency.record_ns(clock.now_ns().saturating_sub(stamp.sent_ns));
                }
            }
            client.flush().await?;
        }
    }
    .await;
    match result {
        Ok(()) => client.disconnect().await,
        Err(error) => fleet.errors.add(format!("commander: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_counts_seconds_and_the_busiest_window() {
        let mut tenths = vec![0; 50];
        tenths[0] = 3;
        tenths[9] = 4;
        tenths[10] = 5;
        tenths[25] = 1;
        let (seconds, busiest) = spread_summary(&tenths);
        assert_eq!(seconds, vec![7, 5, 1]);
        assert_eq!(busiest, 9, "the window from 0.1 s to 1.1 s holds 4 + 5");
        assert_eq!(spread_summary(&[0; 20]), (vec![], 0));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for _ in 0..100 {
            let first = backoff(0, 100, 5000);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let capped = backoff(30, 100, 5000);
            assert!(capped >= Duration::from_millis(2500) && capped <= Duration::from_millis(5000));
        }
    }
}
