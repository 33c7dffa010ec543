//! `telemetry`: device telemetry into Myriad's telemetry store over MQTT.
//!
//! Against a running `myriad serve` (MQTT `--broker` plus HTTP `--api`):
//!
//! 1. Registers N devices in one bulk import (as `commands` does).
//! 2. Connects them, `--connect-rate` per second at most.
//! 3. Each device publishes `devices/{id}/telemetry` every `--interval`
//!    seconds for `--duration` seconds: quantised sensor readings as the
//!    issue's size target describes them (temperature in 0.1 °C steps,
//!    humidity in 0.1 %, battery in 0.01 V, an event counter), one JSON
//!    object per message, or `--batch` timestamped points per message in the
//!    batch form. QoS 1 by default: a PUBACK means the points are in the
//!    store's write-ahead log.
//! 4. Reads `myriad_telemetry_points_total` from `/metrics` before and after:
//!    the points the store took, which must equal the points sent.
//!
//! Reports points sent, acknowledged and stored, stored points per second,
//! PUBACK latency percentiles, and broker CPU per point (`--broker-pid`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use myriad_mqtt::{Packet, QoS};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::commands::{PlatformArgs, api_addr, import_devices, setup_call};
use super::{connect_device, paced, wait_for_connections};
use crate::client::{Client, ConnectOptions};
use crate::error::{Result, SimError};
use crate::http::HttpClient;
use crate::metrics::{Counters, Latency, LatencySummary};
use crate::proc::Watch;
use crate::report::{ErrorLog, emit, round3};
use crate::{Env, progress, secs};

/// Metrics in every point.
pub const METRICS_PER_POINT: u64 = 4;

/// The counter of stored points in `/metrics`.
const STORED_COUNTER: &str = "myriad_telemetry_points_total";

/// Options of `myriad sim telemetry`.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// API address, token and device logins.
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Devices to register and connect.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub devices: usize,
    /// Seconds during which the devices publish.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds between two messages of one device.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Points per message (more than 1: the `{"points": [...]}` batch form).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch: u16,
    /// QoS of the messages.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Devices connecting per second (0: as fast as the connect concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Longest wait for every device to connect, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,
}

/// Results of `telemetry`.
#[derive(Debug, Serialize)]
pub struct TelemetryReport {
    /// Devices simulated.
    pub devices: usize,
    /// Devices connected.
    pub connected: u64,
    /// Devices whose connection failed (after three attempts).
    pub connect_failures: u64,
    /// Connections lost during the run.
    pub drops: u64,
    /// Points per message.
    pub batch: u16,
    /// QoS of the messages.
    pub qos: u8,
    /// Seconds until every device was connected.
    pub connect_secs: f64,
    /// Seconds from the first message to the last acknowledgement.
    pub send_secs: f64,
    /// Messages published.
    pub messages_sent: u64,
    /// Messages acknowledged (QoS 1).
    pub messages_acked: u64,
    /// Values published (messages x points x metrics).
    pub values_sent: u64,
    /// Values the store counted as stored during the run.
    pub values_stored: u64,
    /// Stored values per second of `send_secs`.
    pub values_per_sec: f64,
    /// Publish to PUBACK (QoS 1).
    #[serde(flatten)]
    pub latency: LatencySummary,
    /// Broker CPU seconds over `send_secs` (`--broker-pid`).
    pub broker_cpu_secs: Option<f64>,
    /// Broker CPU microseconds per stored value.
    pub broker_cpu_us_per_value: Option<f64>,
    /// Broker peak resident memory, bytes.
    pub broker_rss_peak: Option<u64>,
}

/// One device's sensors: random walks on quantised grids.
#[derive(Debug, Clone)]
struct Sensors {
    /// Tenths of a degree.
    temp: i64,
    /// Tenths of a percent.
    hum: i64,
    /// Hundredths of a volt.
    bat: i64,
    events: u64,
}

impl Sensors {
    fn new(rng: &mut fastrand::Rng) -> Sensors {
        Sensors {
            temp: 180 + rng.i64(0..80),
            hum: 350 + rng.i64(0..200),
            bat: 370 - rng.i64(0..40),
            events: 0,
        }
    }

    fn step(&mut self, rng: &mut fastrand::Rng) {
        self.temp = (self.temp + rng.i64(-2..=2)).clamp(-400, 850);
        self.hum = (self.hum + rng.i64(-3..=3)).clamp(0, 1000);
        if rng.u8(..100) == 0 {
            self.bat = (self.bat - 1).max(300);
        }
        self.events += u64::from(rng.u8(..100) < 5);
    }

    fn point(&self, ts: Option<i64>) -> serde_json::Value {
        let mut point = serde_json::json!({
            "temp": self.temp as f64 / 10.0,
            "hum": self.hum as f64 / 10.0,
            "bat": self.bat as f64 / 100.0,
            "events": self.events,
        });
        if let Some(ts) = ts {
            point["ts"] = ts.into();
        }
        point
    }
}

/// One message: a single point at arrival time, or `batch` points ending now, `spacing_ms` apart.
fn message(sensors: &mut Sensors, rng: &mut fastrand::Rng, batch: u16, spacing_ms: i64) -> Bytes {
    let body = if batch == 1 {
        sensors.step(rng);
        sensors.point(None)
    } else {
        let now = unix_ms();
        let points: Vec<_> = (0..i64::from(batch))
            .rev()
            .map(|back| {
                sensors.step(rng);
                sensors.point(Some(now - back * spacing_ms))
            })
            .collect();
        serde_json::json!({ "points": points })
    };
    Bytes::from(body.to_string())
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `myriad_telemetry_points_total` from a Prometheus text page.
fn stored_counter(page: &str) -> Option<u64> {
    page.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(STORED_COUNTER)?;
            let value = rest.strip_prefix(' ').or_else(|| {
                // Labels, if any, end before the value.
                rest.strip_prefix('{')
                    .and_then(|r| r.split_once("} ").map(|(_, v)| v))
            })?;
            value.trim().parse::<f64>().ok()
        })
        .map(|v| v as u64)
}

async fn read_stored(http: &mut HttpClient) -> Result<u64> {
    let body = setup_call(http, Method::GET, "/metrics", None, 200).await?;
    stored_counter(&String::from_utf8_lossy(&body)).ok_or_else(|| SimError::Api {
        what: "GET /metrics".to_owned(),
        status: 200,
        body: format!("no {STORED_COUNTER} (telemetry.enabled = false?)"),
    })
}

struct Shared {
    counters: Arc<Counters>,
    errors: Arc<ErrorLog>,
    stop: CancellationToken,
    /// Devices start publishing at this moment.
    go: tokio::sync::watch::Receiver<Option<Instant>>,
}

/// Runs `telemetry`.
pub async fn run(env: Env, args: TelemetryArgs) -> Result<()> {
    if args.devices == 0 {
        return Err(SimError::Args("--devices must be at least 1".to_owned()));
    }
    env.check_sockets(args.devices + 2)?;
    let duration = secs(args.duration, "duration")?;
    let interval = secs(args.interval, "interval")?;
    if interval.is_zero() {
        return Err(SimError::Args("--interval must be positive".to_owned()));
    }
    let connect_timeout = secs(args.connect_timeout, "connect-timeout")?;
    let api = api_addr(&args.platform.api)?;
    let started = Instant::now();
    let ids: Vec<String> = (0..args.devices)
        .map(|index| format!("{}-t{index}", env.prefix))
        .collect();
    let mut http = HttpClient::new(api, args.platform.token.as_deref())?;
    if !args.platform.no_import {
        import_devices(&mut http, &ids, &args.platform.password).await?;
    }

    let (go_tx, go) = tokio::sync::watch::channel(None);
    let shared = Arc::new(Shared {
        counters: Arc::new(Counters::default()),
        errors: Arc::new(ErrorLog::default()),
        stop: CancellationToken::new(),
        go,
    });
    let progress_stop = CancellationToken::new();
    let progress = progress::spawn(
        "telemetry",
        shared.counters.clone(),
        env.quiet,
        progress_stop.clone(),
        render,
    );
    let connect_started = Instant::now();
    let permits = Arc::new(Semaphore::new(env.connect_concurrency));
    let password = Bytes::from(args.platform.password.clone().into_bytes());
    let qos = if args.qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let plan = Plan {
        interval,
        batch: args.batch,
        qos,
    };
    let mut devices = JoinSet::new();
    for (index, id) in ids.iter().enumerate() {
        let mut options = ConnectOptions::new(id.clone(), env.version);
        options.keep_alive = args.platform.keepalive;
        options.username = Some(id.clone());
        options.password = Some(password.clone());
        options.source = env.sources.source(index);
        let at = paced(connect_started, index, args.connect_rate);
        devices.spawn(device(
            shared.clone(),
            env.broker,
            options,
            permits.clone(),
            at,
            plan,
            index as u64,
        ));
    }
    wait_for_connections(
        &shared.counters,
        args.devices as u64,
        connect_started + connect_timeout,
    )
    .await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let connected = Counters::get(&shared.counters.connected);

    let stored_before = read_stored(&mut http).await?;
    let mut broker = env.broker_pid.map(Watch::start).transpose()?;
    let send_started = Instant::now();
    let _ = go_tx.send(Some(send_started + duration));
    let mut latency = Latency::new();
    let mut sampler = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            joined = devices.join_next() => match joined {
                Some(Ok(part)) => latency.merge(&part),
                Some(Err(error)) => shared.errors.add(format!("device task: {error}")),
                None => break,
            },
            _ = sampler.tick() => {
                if let Some(broker) = broker.as_mut() {
                    let _ = broker.sample();
                }
                if Instant::now() > send_started + duration + Duration::from_secs(30) {
                    shared.stop.cancel();
                }
            }
        }
    }
    let send_secs = send_started.elapsed().as_secs_f64();
    let broker_cpu_secs = match broker.as_mut() {
        Some(watch) => {
            let _ = watch.sample();
            Some(watch.cpu_since_start()?)
        }
        None => None,
    };
    // QoS 0 points may still be on their way to the store.
    let mut stored_after = read_stored(&mut http).await?;
    let values_sent =
        Counters::get(&shared.counters.sent) * u64::from(args.batch) * METRICS_PER_POINT;
    let settle = Instant::now() + Duration::from_secs(10);
    while stored_after < stored_before + values_sent && Instant::now() < settle {
        sleep(Duration::from_millis(200)).await;
        stored_after = read_stored(&mut http).await?;
    }
    progress_stop.cancel();
    let _ = progress.await;

    let values_stored = stored_after.saturating_sub(stored_before);
    let body = TelemetryReport {
        devices: args.devices,
        connected,
        connect_failures: Counters::get(&shared.counters.connect_failed),
        drops: Counters::get(&shared.counters.dropped),
        batch: args.batch,
        qos: args.qos,
        connect_secs: round3(connect_secs),
        send_secs: round3(send_secs),
        messages_sent: Counters::get(&shared.counters.sent),
        messages_acked: Counters::get(&shared.counters.acked),
        values_sent,
        values_stored,
        values_per_sec: if send_secs > 0.0 {
            round3(values_stored as f64 / send_secs)
        } else {
            0.0
        },
        latency: latency.summary(),
        broker_cpu_secs: broker_cpu_secs.map(round3),
        broker_cpu_us_per_value: broker_cpu_secs
            .filter(|_| values_stored > 0)
            .map(|cpu| round3(cpu * 1e6 / values_stored as f64)),
        broker_rss_peak: broker.as_ref().map(|watch| watch.peak_rss),
    };
    emit(
        &env.header("telemetry", started, shared.errors.summary()),
        &body,
    )
}

fn render(c: &Counters) -> String {
    format!(
        "connected {} sent {} acked {}",
        Counters::get(&c.connected),
        Counters::get(&c.sent),
        Counters::get(&c.acked)
    )
}

/// What each device sends.
#[derive(Debug, Clone, Copy)]
struct Plan {
    interval: Duration,
    batch: u16,
    qos: QoS,
}

/// Connects (three attempts), waits for the start, publishes until the end; returns its
/// PUBACK latencies.
async fn device(
    shared: Arc<Shared>,
    broker: std::net::SocketAddr,
    options: ConnectOptions,
    permits: Arc<Semaphore>,
    at: Instant,
    plan: Plan,
    seed: u64,
) -> Latency {
    sleep_until(at).await;
    let topic = format!("devices/{}/telemetry", options.client_id);
    let Some(mut client) = connect_device(
        broker,
        &options,
        &permits,
        &shared.stop,
        None,
        &shared.counters,
        &shared.errors,
    )
    .await
    else {
        return Latency::new();
    };
    let mut latency = Latency::new();
    match publish_until_end(&shared, &mut client, plan, seed, &topic, &mut latency).await {
        Ok(()) => client.disconnect().await,
        Err(error) => {
            Counters::inc(&shared.counters.dropped);
            shared.errors.add(format!("device: {error}"));
            client.abort();
        }
    }
    latency
}

async fn publish_until_end(
    shared: &Shared,
    client: &mut Client,
    plan: Plan,
    seed: u64,
    topic: &str,
    latency: &mut Latency,
) -> Result<()> {
    let mut go = shared.go.clone();
    let end = loop {
        if let Some(end) = *go.borrow_and_update() {
            break end;
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return Ok(()),
            changed = go.changed() => if changed.is_err() { return Ok(()) },
        }
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sensors = Sensors::new(&mut rng);
    let spacing_ms = (plan.interval.as_millis() as i64 / i64::from(plan.batch)).max(1);
    // Spread the devices over one interval.
    let mut next = Instant::now() + plan.interval.mul_f64(rng.f64());
    // Packet id -> when it was sent.
    let mut in_flight: std::collections::HashMap<u16, Instant> = Default::default();
    loop {
        let sending = next < end;
        if !sending && in_flight.is_empty() {
            return Ok(());
        }
        let ping_at = client.ping_deadline();
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return Ok(()),
            read = client.fill() => { read?; }
            _ = sleep_until(next), if sending => {
                let payload = message(&mut sensors, &mut rng, plan.batch, spacing_ms);
                let packet_id = if plan.qos == QoS::AtLeastOnce { client.next_packet_id() } else { 0 };
                client.queue_publish(topic, plan.qos, packet_id, payload)?;
                if packet_id != 0 {
                    in_flight.insert(packet_id, Instant::now());
                }
                Counters::inc(&shared.counters.sent);
                next += plan.interval;
            }
            _ = sleep_until(ping_at) => { client.queue_ping_if_due()?; }
        }
        while let Some(packet) = client.poll_packet()? {
            if let Some(Packet::PubAck(ack)) = client.auto_reply(packet)?
                && let Some(sent) = in_flight.remove(&ack.packet_id)
            {
                if !ack.reason_code.is_error() {
                    Counters::inc(&shared.counters.acked);
                }
                latency.record_ns(sent.elapsed().as_nanos() as u64);
            }
        }
        client.flush().await?;
        client.shrink();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stored_counter() {
        let page = "# TYPE myriad_telemetry_points_total counter\nmyriad_telemetry_points_total 1234\nmyriad_telemetry_points_refused_total{reason=\"bad_json\"} 5\n";
        assert_eq!(stored_counter(page), Some(1234));
        assert_eq!(stored_counter("other 1\n"), None);
    }

    #[test]
    fn messages_are_quantised_json() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut sensors = Sensors::new(&mut rng);
        let one: serde_json::Value =
            serde_json::from_slice(&message(&mut sensors, &mut rng, 1, 1000)).expect("json");
        let temp = one["temp"].as_f64().expect("temp");
        assert!((temp * 10.0 - (temp * 10.0).round()).abs() < 1e-9);
        assert!(one.get("ts").is_none());
        let batch: serde_json::Value =
            serde_json::from_slice(&message(&mut sensors, &mut rng, 3, 1000)).expect("json");
        let points = batch["points"].as_array().expect("points");
        assert_eq!(points.len(), 3);
        let ts: Vec<i64> = points
            .iter()
            .map(|p| p["ts"].as_i64().expect("ts"))
            .collect();
        assert_eq!(ts[1] - ts[0], 1000);
        assert_eq!(ts[2] - ts[1], 1000);
    }
}
