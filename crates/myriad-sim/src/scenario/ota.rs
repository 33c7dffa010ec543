//! `ota`: a rollout to many simulated devices, end to end (issue 18).
//!
//! Against a running `myriad serve` (MQTT `--broker` plus HTTP `--api`):
//!
//! 1. Registers N devices in one bulk import (one cheap Argon2 hash shared by all) and
//!    uploads a random firmware image of `--image-bytes`.
//! 2. Connects the N devices; each subscribes `$ota/{id}/notify` at QoS 1. On a notification
//!    a device optionally downloads the image from its signed URL (`--download`, at most
//!    `--download-concurrency` at once, over keep-alive HTTP connections), then reports
//!    `DOWNLOADING`, `VERIFYING`, `INSTALLING`, `REBOOTING` and `SUCCEEDED` on
//!    `$ota/{id}/progress` at QoS 1, as a fast agent would.
//! 3. Creates a rollout of the image to the devices (by id list) in `--waves` (percent of all
//!    devices, comma-separated) and polls it until `COMPLETED` (or `--timeout`).
//!
//! Reported: notification latency (from the rollout's `POST` to each device reading its
//! notification), the time until every device was notified and until the rollout completed,
//! and the server's CPU and peak RSS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use myriad_mqtt::{Packet, Publish, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ConnectOptions};
use crate::error::{Result, SimError};
use crate::http::HttpClient;
use crate::metrics::{Counters, Latency, LatencySummary};
use crate::proc::Watch;
use crate::report::{ErrorLog, emit, round3};
use crate::{Env, progress, secs};

use super::commands::{PlatformArgs, api_addr, import_devices, json, setup_call};
use super::{connect_device, wait_for_connections};

/// Options of `myriad sim ota`.
#[derive(Debug, Clone, clap::Args)]
pub struct OtaArgs {
    /// API address, token and device logins.
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Devices to register, connect and update.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub devices: usize,
    /// Bytes of the firmware image.
    #[arg(long, default_value_t = 64 * 1024)]
    pub image_bytes: usize,
    /// Waves in percent of all devices, comma-separated (the rest is a final wave).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub waves: Vec<u8>,
    /// Devices download the image from their signed URL before reporting.
    #[arg(long)]
    pub download: bool,
    /// Downloads at once.
    #[arg(long, default_value_t = 32)]
    pub download_concurrency: usize,
    /// Longest wait for the rollout to complete, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Longest wait for every device to connect, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,
}

/// Results of `ota`.
#[derive(Debug, Serialize)]
pub struct OtaReport {
    /// Devices simulated.
    pub devices: usize,
    /// Devices connected and subscribed.
    pub connected: u64,
    /// Devices whose connection failed.
    pub connect_failures: u64,
    /// Bytes of the image.
    pub image_bytes: usize,
    /// Whether devices downloaded it.
    pub download: bool,
    /// The waves asked for.
    pub waves: Vec<u8>,
    /// Seconds to register the devices.
    pub import_secs: f64,
    /// Seconds to connect them.
    pub connect_secs: f64,
    /// Notifications read by the devices.
    pub notified: u64,
    /// Downloads that failed (status or size).
    pub download_failures: u64,
    /// Seconds from the rollout's POST until every connected device was notified.
    pub all_notified_secs: Option<f64>,
    /// Seconds from the rollout's POST until it was COMPLETED.
    pub completed_secs: Option<f64>,
    /// The rollout's final status.
    pub status: String,
    /// Devices SUCCEEDED at the end.
    pub succeeded: u64,
    /// From the rollout's POST to each device reading its notification.
    pub notify_latency: LatencySummary,
    /// Server CPU seconds during the rollout.
    pub broker_cpu_secs: Option<f64>,
    /// Server peak RSS (bytes) during the run.
    pub broker_rss_peak: Option<u64>,
}

struct Shared {
    counters: Arc<Counters>,
    errors: Arc<ErrorLog>,
    stop: CancellationToken,
    /// Set when the rollout is posted; notifications are timed from it.
    posted: Mutex<Option<Instant>>,
    latency: Mutex<Latency>,
    downloads: Semaphore,
    download_failures: std::sync::atomic::AtomicU64,
    api: SocketAddr,
    image_bytes: usize,
    download: bool,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct RolloutState {
    status: String,
    counts: std::collections::BTreeMap<String, u64>,
}

/// Runs `ota`.
pub async fn run(env: Env, args: OtaArgs) -> Result<()> {
    if args.devices == 0 || args.image_bytes == 0 || args.download_concurrency == 0 {
        return Err(SimError::Args(
            "--devices, --image-bytes and --download-concurrency must be at least 1".into(),
        ));
    }
    env.check_sockets(args.devices + args.download_concurrency + 4)?;
    let connect_timeout = secs(args.connect_timeout, "connect-timeout")?;
    let rollout_timeout = secs(args.timeout, "timeout")?;
    let api = api_addr(&args.platform.api)?;
    let token = args.platform.token.as_deref();
    let started = Instant::now();
    let shared = Arc::new(Shared {
        counters: Arc::new(Counters::default()),
        errors: Arc::new(ErrorLog::default()),
        stop: CancellationToken::new(),
        posted: Mutex::new(None),
        latency: Mutex::new(Latency::new()),
        downloads: Semaphore::new(args.download_concurrency),
        download_failures: std::sync::atomic::AtomicU64::new(0),
        api,
        image_bytes: args.image_bytes,
        download: args.download,
    });
    let ids: Vec<String> = (0..args.devices)
        .map(|i| format!("{}-d{i}", env.prefix))
        .collect();

    // 1. Devices and the image.
    let mut http = HttpClient::new(api, token)?;
    let import_started = Instant::now();
    if !args.platform.no_import {
        import_devices(&mut http, &ids, &args.platform.password).await?;
    }
    let import_secs = import_started.elapsed().as_secs_f64();
    let image: Vec<u8> = (0..args.image_bytes).map(|_| fastrand::u8(..)).collect();
    let path = format!(
        "/api/v1/ota/artifacts?version=1.0.{}&hardware_type=sim",
        fastrand::u32(..)
    );
    let body = setup_call(
        &mut http,
        Method::POST,
        &path,
        Some((Bytes::from(image), "application/octet-stream")),
        201,
    )
    .await?;
    let artifact: Created = json(&path, &body)?;

    // 2. Devices.
    let progress_stop = CancellationToken::new();
    let progress = progress::spawn(
        "ota",
        shared.counters.clone(),
        env.quiet,
        progress_stop.clone(),
        render,
    );
    let connect_started = Instant::now();
    let permits = Arc::new(Semaphore::new(env.connect_concurrency));
    let password = Bytes::from(args.platform.password.clone().into_bytes());
    let mut devices = JoinSet::new();
    for (index, id) in ids.iter().enumerate() {
        let mut options = ConnectOptions::new(id.clone(), env.version);
        options.keep_alive = args.platform.keepalive;
        options.username = Some(id.clone());
        options.password = Some(password.clone());
        options.source = env.sources.source(index);
        devices.spawn(device(shared.clone(), env.broker, options, permits.clone()));
    }
    wait_for_connections(
        &shared.counters,
        args.devices as u64,
        connect_started + connect_timeout,
    )
    .await;
    let connected = Counters::get(&shared.counters.connected);
    let connect_secs = connect_started.elapsed().as_secs_f64();

    // 3. The rollout.
    let mut broker = env.broker_pid.map(Watch::start).transpose()?;
    let cpu_before = broker.as_mut().map(|w| w.cpu_since_start()).transpose()?;
    let rollout = serde_json::json!({
        "name": "sim",
        "artifact": artifact.id,
        "targets": {"devices": ids},
        "waves": {"percent": args.waves},
    });
    let posted = Instant::now();
    *shared.posted.lock().unwrap_or_else(|p| p.into_inner()) = Some(posted);
    let body = setup_call(
        &mut http,
        Method::POST,
        "/api/v1/ota/rollouts",
        Some((Bytes::from(rollout.to_string()), "application/json")),
        201,
    )
    .await?;
    let created: Created = json("POST /api/v1/ota/rollouts", &body)?;
    let path = format!("/api/v1/ota/rollouts/{}", created.id);
    let deadline = posted + rollout_timeout;
    let mut all_notified_secs = None;
    let mut last = RolloutState {
        status: "RUNNING".into(),
        counts: Default::default(),
    };
    while Instant::now() < deadline {
        if let Some(broker) = broker.as_mut() {
            let _ = broker.sample();
        }
        if all_notified_secs.is_none() && Counters::get(&shared.counters.received) >= connected {
            all_notified_secs = Some(round3(posted.elapsed().as_secs_f64()));
        }
        let body = setup_call(&mut http, Method::GET, &path, None, 200).await?;
        last = json(&path, &body)?;
        if last.status != "RUNNING" {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let completed_secs =
        (last.status == "COMPLETED").then(|| round3(posted.elapsed().as_secs_f64()));
    let broker_cpu_secs = match (broker.as_mut(), cpu_before) {
        (Some(watch), Some(before)) => {
            let _ = watch.sample();
            Some(round3(watch.cpu_since_start()? - before))
        }
        _ => None,
    };

    // Wind down.
    shared.stop.cancel();
    let _ = timeout(Duration::from_secs(15), async {
        while devices.join_next().await.is_some() {}
    })
    .await;
    devices.abort_all();
    progress_stop.cancel();
    let _ = progress.await;
    let body = OtaReport {
        devices: args.devices,
        connected,
        connect_failures: Counters::get(&shared.counters.connect_failed),
        image_bytes: args.image_bytes,
        download: args.download,
        waves: args.waves.clone(),
        import_secs: round3(import_secs),
        connect_secs: round3(connect_secs),
        notified: Counters::get(&shared.counters.received),
        download_failures: shared
            .download_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        all_notified_secs,
        completed_secs,
        status: last.status.clone(),
        succeeded: last.counts.get("SUCCEEDED").copied().unwrap_or(0),
        notify_latency: shared
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .summary(),
        broker_cpu_secs,
        broker_rss_peak: broker.as_ref().map(|watch| watch.peak_rss),
    };
    emit(&env.header("ota", started, shared.errors.summary()), &body)
}

/// The progress line.
fn render(c: &Counters) -> String {
    format!(
        "connected {} notified {} reported {}",
        Counters::get(&c.connected),
        Counters::get(&c.received),
        Counters::get(&c.sent)
    )
}

/// One device: connects, follows notifications until the run stops.
async fn device(
    shared: Arc<Shared>,
    broker: SocketAddr,
    options: ConnectOptions,
    permits: Arc<Semaphore>,
) {
    let filter = format!("$ota/{}/notify", options.client_id);
    let id = options.client_id.clone();
    let Some(mut client) = connect_device(
        broker,
        &options,
        &permits,
        &shared.stop,
        Some(filter),
        &shared.counters,
        &shared.errors,
    )
    .await
    else {
        return;
    };
    match follow(&shared, &mut client, &id).await {
        Ok(()) => client.disconnect().await,
        Err(error) => {
            Counters::inc(&shared.counters.dropped);
            shared.errors.add(format!("device: {error}"));
            client.abort();
        }
    }
}

#[derive(Deserialize)]
struct Notification {
    rollout: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    cancel: bool,
}

/// Reads notifications and reports an update's steps for each, until the run stops.
async fn follow(shared: &Shared, client: &mut Client, id: &str) -> Result<()> {
    loop {
        let ping_at = client.ping_deadline();
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return Ok(()),
            read = client.fill() => { read?; }
            _ = sleep_until(ping_at) => { client.queue_ping_if_due()?; }
        }
        let mut notes = Vec::new();
        while let Some(packet) = client.poll_packet()? {
            if let Some(Packet::Publish(publish)) = client.auto_reply(packet)? {
                notes.push(publish);
            }
        }
        for note in notes {
            handle(shared, client, id, &note).await?;
        }
        client.flush().await?;
        client.shrink();
    }
}

async fn handle(shared: &Shared, client: &mut Client, id: &str, note: &Publish) -> Result<()> {
    let Ok(note) = serde_json::from_slice::<Notification>(&note.payload) else {
        shared.errors.add("unparsable notification".to_owned());
        return Ok(());
    };
    if note.cancel {
        return Ok(());
    }
    if let Some(posted) = *shared.posted.lock().unwrap_or_else(|p| p.into_inner()) {
        let nanos = posted.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        shared
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_ns(nanos);
    }
    Counters::inc(&shared.counters.received);
    if shared.download {
        download(shared, &note.url).await;
    }
    let size = shared.image_bytes;
    for state in [
        "DOWNLOADING",
        "VERIFYING",
        "INSTALLING",
        "REBOOTING",
        "SUCCEEDED",
    ] {
        let body = serde_json::json!({"rollout": note.rollout, "state": state, "done": size, "total": size});
        let packet_id = client.next_packet_id();
        client.queue(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: format!("$ota/{id}/progress").into(),
            packet_id,
            payload: Bytes::from(body.to_string()),
            properties: Default::default(),
        }))?;
        Counters::inc(&shared.counters.sent);
    }
    Ok(())
}

/// Fetches `url` (path and query) from the API, counting a failure on a bad status or size.
async fn download(shared: &Shared, url: &str) {
    let Ok(_permit) = shared.downloads.acquire().await else {
        return;
    };
    let ok = match HttpClient::new(shared.api, None) {
        Ok(mut http) => match http.request(Method::GET, url, None).await {
            Ok(response) => response.status == 200 && response.body.len() == shared.image_bytes,
            Err(error) => {
                shared.errors.add(format!("download: {error}"));
                false
            }
        },
        Err(error) => {
            shared.errors.add(format!("download: {error}"));
            false
        }
    };
    if !ok {
        shared
            .download_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
