//! `commands`: end-to-end throughput and latency of Myriad's command service.
//!
//! Against a running `myriad serve` (MQTT `--broker` plus HTTP `--api`):
//!
//! 1. Registers N devices in one bulk import (`POST /api/v1/devices/import`,
//!    JSON lines) with one precomputed cheap Argon2 `password_hash` shared by
//!    all, so the logins that follow cost microseconds, not an OWASP-strength
//!    hash each. Creates an app client allowed to subscribe `$events/commands/#`.
//! 2. Connects the N devices (MQTT 5.0, or 3.1.1 with `--mqtt 3`, or half and
//!    half with `--mixed`); each subscribes `$commands/{id}/+` at QoS 1 and
//!    answers every command with `{"status":"succeeded",..}` at QoS 1: 5.0 on
//!    the Response Topic with the Correlation Data, 3.1.1 on the envelope's
//!    `reply_topic`. Waits until the platform reports them all online.
//! 3. The app client subscribes `$events/commands/+/+`.
//! 4. `--window` workers, each with its own keep-alive HTTP connection, send
//!    commands round-robin over the devices for `--duration` seconds
//!    (`POST /api/v1/devices/{id}/commands`). A worker has one command open at
//!    a time: it waits for the command's final status event before sending the
//!    next, so at most `--window` commands are open at once (a closed loop).
//!
//! Latency is from just before the worker writes the POST to the moment the
//! app client has read the command's final `$events/commands/{id}/{cid}`
//! event: the platform has recorded the device's reply by then, so it covers
//! the API call, queueing, the MQTT delivery, the device's reply and the
//! service recording it. Only succeeded commands count in the percentiles.
//! The time to the POST's `201` is reported separately (`accept_*`).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use myriad_mqtt::{Packet, Properties, ProtocolVersion, Publish, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};
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

use super::{connect_device, wait_for_connections};

/// What every simulated device answers.
const REPLY: &[u8] = br#"{"status":"succeeded","result":{"ok":true}}"#;

/// Options of the scenarios that drive a running `myriad serve` through its HTTP API with
/// devices they register themselves (`commands`, `telemetry`).
#[derive(Debug, Clone, clap::Args)]
pub struct PlatformArgs {
    /// Address of Myriad's HTTP API (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api: String,
    /// The API's bearer token (`{data_dir}/api-token` of `myriad serve`).
    #[arg(long, env = "MYRIAD_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Keep alive of each device in seconds.
    #[arg(long, default_value_t = 60)]
    pub keepalive: u16,
    /// The devices are already registered (by an earlier run with the same
    /// `--prefix` and `--password`): skip the import.
    #[arg(long)]
    pub no_import: bool,
    /// Password of every device (stored as one cheap Argon2 hash).
    #[arg(long, default_value = "device-secret")]
    pub password: String,
}

/// Options of `myriad sim commands`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommandsArgs {
    /// API address, token and device logins.
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Devices to register and connect.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub devices: usize,
    /// Seconds during which new commands are sent.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Commands open at once (each of these workers has its own HTTP connection).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Class of the commands: l1, l2 or l3.
    #[arg(long, default_value = "l2", value_parser = ["l1", "l2", "l3"])]
    pub priority: String,
    /// Reply timeout of each command (`timeout_ms`), in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub command_timeout_ms: u64,
    /// Half of the devices speak MQTT 3.1.1 (the others the `--mqtt` version).
    #[arg(long)]
    pub mixed: bool,
    /// Longest wait for every device to connect and show as online, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,
}

/// Results of `commands`.
#[derive(Debug, Serialize)]
pub struct CommandsReport {
    /// Devices simulated.
    pub devices: usize,
    /// Devices connected and subscribed.
    pub connected: u64,
    /// Devices whose connection failed (after three attempts).
    pub connect_failures: u64,
    /// Devices speaking MQTT 3.1.1.
    pub devices_v311: usize,
    /// Device connections lost during the run.
    pub drops: u64,
    /// Commands open at once.
    pub window: usize,
    /// Class of the commands.
    pub priority: String,
    /// Seconds the import took (0 with `--no-import`).
    pub import_secs: f64,
    /// Seconds until every device was connected and online.
    pub connect_secs: f64,
    /// Seconds from the first command to the last one final.
    pub send_secs: f64,
    /// POSTs made.
    pub commands_sent: u64,
    /// POSTs answered 201.
    pub commands_accepted: u64,
    /// Commands that ended `succeeded`.
    pub commands_succeeded: u64,
    /// Commands that ended `failed`, `expired` or `cancelled`.
    pub commands_failed: u64,
    /// POSTs refused with 429 (rate limit, breaker or pressure).
    pub commands_refused: u64,
    /// Commands that ended `timed_out`, or whose final event did not come
    /// within the command timeout plus 5 s.
    pub commands_timed_out: u64,
    /// POSTs that failed otherwise (transport error, other status).
    pub request_errors: u64,
    /// Succeeded commands per second of `send_secs`.
    pub commands_per_sec: f64,
    /// API call to final `succeeded` event, succeeded commands only.
    #[serde(flatten)]
    pub latency: LatencySummary,
    /// Median API call to `201`.
    pub accept_p50_ms: f64,
    /// 99th percentile API call to `201`.
    pub accept_p99_ms: f64,
    /// Broker (`myriad serve`) CPU seconds over `send_secs`.
    pub broker_cpu_secs: Option<f64>,
    /// Succeeded commands per broker CPU second.
    pub commands_per_broker_cpu_sec: Option<f64>,
    /// Broker peak VmRSS.
    pub broker_rss_peak: Option<u64>,
}

/// How a command ended, as its final status event said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
}

impl Outcome {
    /// The outcome of a status, `None` while the command is not final.
    fn of(status: &str) -> Option<Outcome> {
        match status {
            "succeeded" => Some(Outcome::Succeeded),
            "failed" | "expired" | "cancelled" => Some(Outcome::Failed),
            "timed_out" => Some(Outcome::TimedOut),
            _ => None,
        }
    }
}

/// A final event: the outcome and when the app client read it.
#[derive(Debug, Clone, Copy)]
struct Final {
    outcome: Outcome,
    at: Instant,
}

/// A command id's entry: a worker waiting for the final event, or the
/// event, when it came before the worker had read the 201.
enum Slot {
    Waiting(oneshot::Sender<Final>),
    Arrived(Final),
}

struct Shared {
    counters: Arc<Counters>,
    errors: Arc<ErrorLog>,
    slots: Mutex<HashMap<String, Slot>>,
    stop: CancellationToken,
}

impl Shared {
    /// Hands a final event to its worker, or keeps it for the worker.
    fn deliver(&self, command_id: &str, fin: Final) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        match slots.remove(command_id) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(fin);
            }
            Some(arrived @ Slot::Arrived(_)) => {
                slots.insert(command_id.to_owned(), arrived);
            }
            None => {
                slots.insert(command_id.to_owned(), Slot::Arrived(fin));
            }
        }
    }

    /// Waits for the final event of `command_id`, at most `wait`.
    async fn wait_final(&self, command_id: String, wait: Duration) -> Option<Final> {
        let rx = {
            let mut slots = self.slots.lock().ok()?;
            if let Some(Slot::Arrived(fin)) = slots.remove(&command_id) {
                return Some(fin);
            }
            let (tx, rx) = oneshot::channel();
            slots.insert(command_id.clone(), Slot::Waiting(tx));
            rx
        };
        match timeout(wait, rx).await {
            Ok(Ok(fin)) => Some(fin),
            _ => {
                if let Ok(mut slots) = self.slots.lock() {
                    slots.remove(&command_id);
                }
                None
            }
        }
    }
}

/// One worker's tallies.
#[derive(Default)]
struct Tally {
    sent: u64,
    accepted: u64,
    succeeded: u64,
    failed: u64,
    refused: u64,
    timed_out: u64,
    errors: u64,
    latency: Latency,
    accept: Latency,
}

#[derive(Deserialize)]
struct Accepted {
    id: String,
}

#[derive(Deserialize)]
struct StatusEvent<'a> {
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct Envelope {
    reply_topic: String,
}

#[derive(Deserialize)]
struct ImportReport {
    imported: u64,
    #[serde(default)]
    failed: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct PresenceCount {
    online: u64,
}

/// Resolves `--api`.
pub(crate) fn api_addr(api: &str) -> Result<SocketAddr> {
    api.to_socket_addrs()
        .map_err(|error| SimError::Args(format!("--api {api}: {error}")))?
        .next()
        .ok_or_else(|| SimError::Args(format!("--api {api}: no address")))
}

/// Sends a setup request and returns its body, failing on any status other than `expect`.
pub(crate) async fn setup_call(
    http: &mut HttpClient,
    method: Method,
    path: &str,
    body: Option<(Bytes, &'static str)>,
    expect: u16,
) -> Result<Bytes> {
    let what = format!("{method} {path}");
    let response = http.request(method, path, body).await?;
    if response.status != expect {
        return Err(SimError::Api {
            what,
            status: response.status,
            body: response.body_text(300),
        });
    }
    Ok(response.body)
}

pub(crate) fn json<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|error| SimError::Api {
        what: what.to_owned(),
        status: 200,
        body: format!("unexpected body: {error}"),
    })
}

/// The JSON-lines body registering `ids`, all with one password hash.
pub(crate) fn import_body(ids: &[String], phc: &str) -> Result<Bytes> {
    let mut body = Vec::with_capacity(ids.len() * (phc.len() + 64));
    for id in ids {
        serde_json::to_writer(
            &mut body,
            &serde_json::json!({ "id": id, "password_hash": phc }),
        )
        .map_err(|error| SimError::Report(error.to_string()))?;
        body.push(b'\n');
    }
    Ok(Bytes::from(body))
}

/// Registers `ids` in one bulk import, all with `password` (one cheap Argon2 hash).
pub(crate) async fn import_devices(
    http: &mut HttpClient,
    ids: &[String],
    password: &str,
) -> Result<()> {
    let phc = myriad_fleet::credentials::hash_password(
        password,
        &myriad_fleet::credentials::HashParams::INSECURE_FAST,
    )
    .map_err(|error| SimError::Args(format!("--password: {error}")))?;
    let path = "/api/v1/devices/import?format=jsonl";
    let body = setup_call(
        http,
        Method::POST,
        path,
        Some((import_body(ids, &phc)?, "application/x-ndjson")),
        200,
    )
    .await?;
    let report: ImportReport = json(path, &body)?;
    if report.imported != ids.len() as u64 {
        return Err(SimError::Api {
            what: format!("POST {path}"),
            status: 200,
            body: format!(
                "imported {} of {} devices; first errors: {:?}",
                report.imported,
                ids.len(),
                report.failed.iter().take(3).collect::<Vec<_>>()
            ),
        });
    }
    Ok(())
}

/// Runs `commands`.
pub async fn run(env: Env, args: CommandsArgs) -> Result<()> {
    if args.devices == 0 || args.window == 0 {
        return Err(SimError::Args(
            "--devices and --window must be at least 1".to_owned(),
        ));
    }
    env.check_sockets(args.devices + args.window + 2)?;
    let duration = secs(args.duration, "duration")?;
    let connect_timeout = secs(args.connect_timeout, "connect-timeout")?;
    let api = api_addr(&args.platform.api)?;
    let token = args.platform.token.as_deref();
    let started = Instant::now();
    let shared = Arc::new(Shared {
        counters: Arc::new(Counters::default()),
        errors: Arc::new(ErrorLog::default()),
        slots: Mutex::new(HashMap::new()),
        stop: CancellationToken::new(),
    });
    let ids: Arc<Vec<String>> = Arc::new(
        (0..args.devices)
            .map(|index| format!("{}-d{index}", env.prefix))
            .collect(),
    );

    // 1. Registration: devices and the watching app client.
    let mut http = HttpClient::new(api, token)?;
    let import_started = Instant::now();
    if !args.platform.no_import {
        import_devices(&mut http, &ids, &args.platform.password).await?;
    }
    let import_secs = import_started.elapsed().as_secs_f64();
    let app_id = format!("{}-watch", env.prefix);
    let app_password = format!("{}-app-secret", env.prefix);
    let app = serde_json::json!({
        "id": app_id,
        "subscribe": ["$events/commands/#"],
        "password": app_password,
    });
    setup_call(
        &mut http,
        Method::POST,
        "/api/v1/apps",
        Some((Bytes::from(app.to_string()), "application/json")),
        201,
    )
    .await?;

    // 2. Devices.
    let progress_stop = CancellationToken::new();
    let progress = progress::spawn(
        "commands",
        shared.counters.clone(),
        env.quiet,
        progress_stop.clone(),
        render,
    );
    let connect_started = Instant::now();
    let permits = Arc::new(Semaphore::new(env.connect_concurrency));
    let password = Bytes::from(args.platform.password.clone().into_bytes());
    let mut devices = JoinSet::new();
    let mut devices_v311 = 0;
    for (index, id) in ids.iter().enumerate() {
        let version = if args.mixed && index % 2 == 1 {
            ProtocolVersion::V311
        } else {
            env.version
        };
        if version == ProtocolVersion::V311 {
            devices_v311 += 1;
        }
        let mut options = ConnectOptions::new(id.clone(), version);
        options.keep_alive = args.platform.keepalive;
        options.username = Some(id.clone());
        options.password = Some(password.clone());
        options.source = env.sources.source(index);
        devices.spawn(device(shared.clone(), env.broker, options, permits.clone()));
    }
    let connect_deadline = connect_started + connect_timeout;
    wait_for_connections(&shared.counters, args.devices as u64, connect_deadline).await;
    let connected = Counters::get(&shared.counters.connected);
    // The command service sends only to devices it knows are online.
    while Instant::now() < connect_deadline {
        let body = setup_call(&mut http, Method::GET, "/api/v1/presence/count", None, 200).await?;
        let count: PresenceCount = json("GET /api/v1/presence/count", &body)?;
        if count.online >= connected {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();

    // 3. The app client following status events.
    let mut watch_options = ConnectOptions::new(app_id.clone(), env.version);
    watch_options.username = Some(format!("app:{app_id}"));
    watch_options.password = Some(Bytes::from(app_password.into_bytes()));
    let mut watcher = Client::connect(env.broker, &watch_options).await?.0;
    watcher
        .subscribe(
            &[("$events/commands/+/+".to_owned(), QoS::AtLeastOnce)],
            Duration::from_secs(30),
        )
        .await?;
    watcher.set_read_chunk(64 * 1024);
    let watcher_stop = CancellationToken::new();
    let watcher_task = tokio::spawn(watch_events(shared.clone(), watcher, watcher_stop.clone()));

    // 4. Workers.
    let mut broker = env.broker_pid.map(Watch::start).transpose()?;
    let send_started = Instant::now();
    let end = send_started + duration;
    let body = Bytes::from(
        serde_json::json!({
            "name": "bench",
            "payload": {"op": "noop"},
            "priority": args.priority,
            "timeout_ms": args.command_timeout_ms,
        })
        .to_string(),
    );
    let wait = Duration::from_millis(args.command_timeout_ms) + Duration::from_secs(5);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..args.window {
        let http = HttpClient::new(api, token)?;
        workers.spawn(worker(
            shared.clone(),
            http,
            ids.clone(),
            next.clone(),
            end,
            body.clone(),
            wait,
        ));
    }
    let mut tally = Tally::default();
    let mut sampler = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok(part)) => tally.merge(part),
                Some(Err(error)) => shared.errors.add(format!("worker: {error}")),
                None => break,
            },
            _ = sampler.tick() => {
                if let Some(broker) = broker.as_mut() {
                    let _ = broker.sample();
                }
            }
        }
    }
    let send_secs = send_started.elapsed().as_secs_f64();
    let broker_cpu_secs = match broker.as_mut() {
        Some(watch) => {
            let _ = watch.sample();
            Some(round3(watch.cpu_since_start()?))
        }
        None => None,
    };

    // Wind down.
    shared.stop.cancel();
    watcher_stop.cancel();
    let _ = timeout(Duration::from_secs(15), async {
        while devices.join_next().await.is_some() {}
    })
    .await;
    devices.abort_all();
    let _ = timeout(Duration::from_secs(5), watcher_task).await;
    progress_stop.cancel();
    let _ = progress.await;

    let succeeded = tally.succeeded;
    let body = CommandsReport {
        devices: args.devices,
        connected,
        connect_failures: Counters::get(&shared.counters.connect_failed),
        devices_v311,
        drops: Counters::get(&shared.counters.dropped),
        window: args.window,
        priority: args.priority.clone(),
        import_secs: round3(import_secs),
        connect_secs: round3(connect_secs),
        send_secs: round3(send_secs),
        commands_sent: tally.sent,
        commands_accepted: tally.accepted,
        commands_succeeded: succeeded,
        commands_failed: tally.failed,
        commands_refused: tally.refused,
        commands_timed_out: tally.timed_out,
        request_errors: tally.errors,
        commands_per_sec: if send_secs > 0.0 {
            round3(succeeded as f64 / send_secs)
        } else {
            0.0
        },
        latency: tally.latency.summary(),
        accept_p50_ms: tally.accept.summary().p50_ms,
        accept_p99_ms: tally.accept.summary().p99_ms,
        broker_cpu_secs,
        commands_per_broker_cpu_sec: broker_cpu_secs
            .filter(|cpu| *cpu > 0.0)
            .map(|cpu| round3(succeeded as f64 / cpu)),
        broker_rss_peak: broker.as_ref().map(|watch| watch.peak_rss),
    };
    emit(
        &env.header("commands", started, shared.errors.summary()),
        &body,
    )
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.refused += other.refused;
        self.timed_out += other.timed_out;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
        self.accept.merge(&other.accept);
    }
}

/// The progress line.
fn render(c: &Counters) -> String {
    format!(
        "connected={} failed={} sent={} accepted={} final={} succeeded={} refused={}",
        Counters::get(&c.connected),
        Counters::get(&c.connect_failed),
        Counters::get(&c.sent),
        Counters::get(&c.acked),
        Counters::get(&c.received),
        Counters::get(&c.unique),
        Counters::get(&c.events),
    )
}

/// Sends commands until `end`, one open at a time.
async fn worker(
    shared: Arc<Shared>,
    mut http: HttpClient,
    ids: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    end: Instant,
    body: Bytes,
    wait: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let counters = &shared.counters;
    while Instant::now() < end {
        let index = next.fetch_add(1, Ordering::Relaxed) % ids.len();
        let path = format!("/api/v1/devices/{}/commands", ids[index]);
        let sent_at = Instant::now();
        tally.sent += 1;
        Counters::inc(&counters.sent);
        let response = match http
            .request(
                Method::POST,
                &path,
                Some((body.clone(), "application/json")),
            )
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tally.errors += 1;
                shared.errors.add(format!("POST commands: {error}"));
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match response.status {
            201 => {}
            429 => {
                tally.refused += 1;
                Counters::inc(&counters.events);
                let pause = response.retry_after.unwrap_or(0.01).clamp(0.001, 1.0);
                sleep(Duration::from_secs_f64(pause)).await;
                continue;
            }
            status => {
                tally.errors += 1;
                shared.errors.add(format!(
                    "POST commands: HTTP {status}: {}",
                    response.body_text(200)
                ));
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        tally.accepted += 1;
        Counters::inc(&counters.acked);
        tally.accept.record_ns(duration_ns(sent_at.elapsed()));
        let id = match serde_json::from_slice::<Accepted>(&response.body) {
            Ok(accepted) => accepted.id,
            Err(error) => {
                tally.errors += 1;
                shared
                    .errors
                    .add(format!("POST commands: bad 201 body: {error}"));
                continue;
            }
        };
        match shared.wait_final(id, wait).await {
            Some(Final {
                outcome: Outcome::Succeeded,
                at,
            }) => {
                tally.succeeded += 1;
                tally
                    .latency
                    .record_ns(duration_ns(at.saturating_duration_since(sent_at)));
            }
            Some(Final {
                outcome: Outcome::Failed,
                ..
            }) => tally.failed += 1,
            Some(Final {
                outcome: Outcome::TimedOut,
                ..
            })
            | None => tally.timed_out += 1,
        }
    }
    tally
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Reads status events and hands final ones to the workers.
async fn watch_events(shared: Arc<Shared>, mut client: Client, stop: CancellationToken) {
    let result: Result<()> = async {
        loop {
            let ping_at = client.ping_deadline();
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                read = client.fill() => { read?; }
                _ = sleep_until(ping_at) => { client.queue_ping_if_due()?; }
            }
            let now = Instant::now();
            while let Some(packet) = client.poll_packet()? {
                let Some(Packet::Publish(event)) = client.auto_reply(packet)? else {
                    continue;
                };
                let Some(command_id) = event
                    .topic
                    .strip_prefix("$events/commands/")
                    .and_then(|rest| rest.split('/').nth(1))
                else {
                    continue;
                };
                let Ok(status) = serde_json::from_slice::<StatusEvent>(&event.payload) else {
                    shared.errors.add("status event without a status");
                    continue;
                };
                Counters::inc(&shared.counters.received);
                if let Some(outcome) = Outcome::of(&status.status) {
                    if outcome == Outcome::Succeeded {
                        Counters::inc(&shared.counters.unique);
                    }
                    shared.deliver(command_id, Final { outcome, at: now });
                }
            }
            client.flush().await?;
        }
    }
    .await;
    match result {
        Ok(()) => client.disconnect().await,
        Err(error) => shared.errors.add(format!("event watcher: {error}")),
    }
}

/// One device: connects (three attempts), subscribes to its commands and
/// answers each one until the run stops.
async fn device(
    shared: Arc<Shared>,
    broker: SocketAddr,
    options: ConnectOptions,
    permits: Arc<Semaphore>,
) {
    let filter = format!("$commands/{}/+", options.client_id);
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
    match answer(&shared, &mut client).await {
        Ok(()) => client.disconnect().await,
        Err(error) => {
            Counters::inc(&shared.counters.dropped);
            shared.errors.add(format!("device: {error}"));
            client.abort();
        }
    }
}

/// Answers commands until the run stops.
async fn answer(shared: &Shared, client: &mut Client) -> Result<()> {
    loop {
        let ping_at = client.ping_deadline();
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return Ok(()),
            read = client.fill() => { read?; }
            _ = sleep_until(ping_at) => { client.queue_ping_if_due()?; }
        }
        while let Some(packet) = client.poll_packet()? {
            if let Some(Packet::Publish(command)) = client.auto_reply(packet)? {
                let reply = reply_to(client.version(), &command)?;
                let packet_id = client.next_packet_id();
                client.queue(&Packet::Publish(Publish { packet_id, ..reply }))?;
            }
        }
        client.flush().await?;
        client.shrink();
    }
}

/// The reply to a command: 5.0 on its Response Topic with its Correlation
/// Data, 3.1.1 on the envelope's `reply_topic` (packet id left 0).
fn reply_to(version: ProtocolVersion, command: &Publish) -> Result<Publish> {
    let mut properties = Properties::default();
    let topic = if version.is_v5() {
        properties.correlation_data = command.properties.correlation_data.clone();
        command
            .properties
            .response_topic
            .clone()
            .ok_or(SimError::Args(format!(
                "command on {} without a Response Topic",
                command.topic
            )))?
    } else {
        let envelope: Envelope = serde_json::from_slice(&command.payload).map_err(|error| {
            SimError::Args(format!(
                "command on {}: bad envelope: {error}",
                command.topic
            ))
        })?;
        envelope.reply_topic.into()
    };
    Ok(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic,
        packet_id: 0,
        payload: Bytes::from_static(REPLY),
        properties: properties.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(Outcome::of("succeeded"), Some(Outcome::Succeeded));
        assert_eq!(Outcome::of("expired"), Some(Outcome::Failed));
        assert_eq!(Outcome::of("timed_out"), Some(Outcome::TimedOut));
        assert_eq!(Outcome::of("delivered"), None);
    }

    #[test]
    fn replies_follow_the_protocol() {
        let mut command = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "$commands/d1/bench".into(),
            packet_id: 7,
            payload: Bytes::from_static(
                br#"{"command_id":"c1","name":"bench","reply_topic":"$commands/d1/reply/c1","payload":null}"#,
            ),
            properties: Default::default(),
        };
        let reply = reply_to(ProtocolVersion::V311, &command).expect("envelope");
        assert_eq!(&*reply.topic, "$commands/d1/reply/c1");
        assert_eq!(&reply.payload[..], REPLY);
        assert!(reply_to(ProtocolVersion::V5, &command).is_err());
        command.properties.response_topic = Some("$commands/d1/reply/c2".into());
        command.properties.correlation_data = Some(Bytes::from_static(b"c2"));
        let reply = reply_to(ProtocolVersion::V5, &command).expect("response topic");
        assert_eq!(&*reply.topic, "$commands/d1/reply/c2");
        assert_eq!(
            reply.properties.correlation_data.as_deref(),
            Some(&b"c2"[..])
        );
    }

    #[test]
    fn early_events_wait_for_their_worker() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let shared = Shared {
                counters: Arc::new(Counters::default()),
                errors: Arc::new(ErrorLog::default()),
                slots: Mutex::new(HashMap::new()),
                stop: CancellationToken::new(),
            };
            let at = Instant::now();
            shared.deliver(
                "early",
                Final {
                    outcome: Outcome::Failed,
                    at,
                },
            );
            let fin = shared
                .wait_final("early".into(), Duration::from_millis(10))
                .await;
            assert_eq!(fin.map(|f| f.outcome), Some(Outcome::Failed));
            let missing = shared
                .wait_final("never".into(), Duration::from_millis(10))
                .await;
            assert!(missing.is_none());
            assert!(shared.slots.lock().expect("lock").is_empty());
        });
    }

    #[test]
    fn import_body_is_json_lines() {
        let body = import_body(&["a".to_owned(), "b".to_owned()], "$argon2id$x").expect("body");
        let text = std::str::from_utf8(&body).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains(r#""id":"a""#) && lines[0].contains("password_hash"));
    }
}
