//! The publish/subscribe engine behind `fanin`, `fanout`, `p2p` and `shared`.
//!
//! A scenario module only describes its topology as a [`Plan`]: which topic
//! each publisher uses, which filter each subscriber holds, and which
//! subscribers count deliveries together (a shared group counts as one
//! receiver). The engine connects subscribers, then publishers, starts
//! everyone at once, publishes for `--duration` (or `--count` messages per
//! publisher), waits up to `--drain` for the last deliveries, and reports.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use myriad_mqtt::{Packet, QoS};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ConnectOptions};
use crate::error::{Result, SimError};
use crate::metrics::{Clock, Counters, Latency, LatencySummary, Seen, Stamp, Tracker};
use crate::proc::Watch;
use crate::report::{ErrorLog, emit, round3};
use crate::{Env, progress, secs};

/// Options of `fanin`, `fanout`, `p2p` and `shared`.
#[derive(Debug, Clone, clap::Args)]
pub struct PubSubArgs {
    /// Publishers (pairs for p2p). Default: fanin 16, fanout 1, p2p 100, shared 4.
    #[arg(long, visible_alias = "pairs")]
    pub publishers: Option<usize>,
    /// Subscribers. Default: fanin 1, fanout 100, p2p = pairs, shared 4.
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// QoS of publications and subscriptions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 20: the stamp).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Messages per second per publisher (0: as fast as the window allows).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// QoS 1/2 publications in flight per publisher (QoS 0: messages per write).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Messages per publisher (0: publish until --duration ends).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Seconds of publishing (an upper bound when --count is given).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for outstanding acks and deliveries once publishing stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Keep alive of every connection.
    #[arg(long, default_value_t = 60)]
    pub keepalive: u16,
    /// Shared subscription group (shared only).
    #[arg(long, default_value = "sim")]
    pub group: String,
    /// Subscribers keep persistent sessions (3.1.1 clean session 0; 5.0 clean
    /// start 0 and a one-hour session expiry), so a broker with a store
    /// persists what it delivers to them.
    #[arg(long)]
    pub persistent_subscribers: bool,
}

impl PubSubArgs {
    /// Publisher and subscriber counts, with the scenario's defaults.
    pub fn counts(&self, publishers: usize, subscribers: usize) -> (usize, usize) {
        (
            self.publishers.unwrap_or(publishers),
            self.subscribers.unwrap_or(subscribers),
        )
    }
}

/// One publisher of a plan.
#[derive(Debug, Clone)]
pub struct PubPlan {
    /// Topic it publishes to.
    pub topic: String,
    /// How many receivers (subscribers or shared groups) get each message.
    pub receivers: u64,
}

/// One subscriber of a plan.
#[derive(Debug, Clone)]
pub struct SubPlan {
    /// Filter it subscribes to.
    pub filter: String,
    /// Index of the receiver it counts deliveries for; subscribers of one
    /// shared group share a receiver.
    pub receiver: usize,
}

/// A topology.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenario name for the report.
    pub scenario: &'static str,
    /// Publishers.
    pub publishers: Vec<PubPlan>,
    /// Subscribers.
    pub subscribers: Vec<SubPlan>,
    /// Number of distinct receivers.
    pub receivers: usize,
}

/// Results of a publish/subscribe scenario.
#[derive(Debug, Serialize)]
pub struct PubSubReport {
    /// Publishers asked for.
    pub publishers: usize,
    /// Subscribers asked for.
    pub subscribers: usize,
    /// Publishers connected.
    pub publishers_ready: u64,
    /// Subscribers connected and subscribed.
    pub subscribers_ready: u64,
    /// QoS used.
    pub qos: u8,
    /// Payload size.
    pub payload: usize,
    /// Target rate per publisher (0: as fast as allowed).
    pub rate_per_publisher: f64,
    /// In-flight window per publisher.
    pub window: usize,
    /// Messages published.
    pub sent: u64,
    /// QoS 1/2 publications acknowledged.
    pub acked: u64,
    /// Deliveries expected (sent x receivers).
    pub expected: u64,
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Messages delivered more than once to one receiver.
    pub duplicates: u64,
    /// Deliveries with no valid stamp.
    pub invalid: u64,
    /// Seconds publishers were publishing.
    pub publish_secs: f64,
    /// Seconds from the start to the last delivery.
    pub delivery_secs: f64,
    /// Publications per second.
    pub sent_per_sec: f64,
    /// Distinct deliveries per second.
    pub delivered_per_sec: f64,
    /// End-to-end latency (send stamp to receipt), milliseconds.
    #[serde(flatten)]
    pub latency: LatencySummary,
    /// Broker CPU seconds from start to last delivery (+ drain check).
    pub broker_cpu_secs: Option<f64>,
    /// Delivered messages per broker CPU second.
    pub msgs_per_broker_cpu_sec: Option<f64>,
    /// Broker peak VmRSS sampled during the run.
    pub broker_rss_peak: Option<u64>,
}

/// What every task of a run shares.
struct Shared {
    counters: Arc<Counters>,
    errors: Arc<ErrorLog>,
    clock: Clock,
    latency: Mutex<Latency>,
    last_delivery_ns: AtomicU64,
    subs_ready: AtomicU64,
    subs_failed: AtomicU64,
    pubs_ready: AtomicU64,
    pubs_failed: AtomicU64,
    go: CancellationToken,
    stop_publishing: CancellationToken,
    stop_subscribers: CancellationToken,
}

/// Runs a planned scenario.
pub async fn run(env: Env, args: PubSubArgs, plan: Plan) -> Result<()> {
    if args.window == 0 || args.window > 65_000 {
        return Err(SimError::Args("--window must be 1..=65000".to_owned()));
    }
    let qos = QoS::from_u8(args.qos).ok_or_else(|| SimError::Args("--qos".to_owned()))?;
    let duration = secs(args.duration, "duration")?;
    let drain = secs(args.drain, "drain")?;
    env.check_sockets(plan.publishers.len() + plan.subscribers.len())?;
    let started = Instant::now();
    let mut watch = env.broker_pid.map(Watch::start).transpose()?;
    let shared = Arc::new(Shared {
        counters: Arc::new(Counters::default()),
        errors: Arc::new(ErrorLog::default()),
        clock: Clock::new(),
        latency: Mutex::new(Latency::new()),
        last_delivery_ns: AtomicU64::new(0),
        subs_ready: AtomicU64::new(0),
        subs_failed: AtomicU64::new(0),
        pubs_ready: AtomicU64::new(0),
        pubs_failed: AtomicU64::new(0),
        go: CancellationToken::new(),
        stop_publishing: CancellationToken::new(),
        stop_subscribers: CancellationToken::new(),
    });
    let progress_stop = CancellationToken::new();
    let progress = progress::spawn(
        plan.scenario,
        shared.counters.clone(),
        env.quiet,
        progress_stop.clone(),
        progress::render_messages,
    );
    let trackers: Vec<Arc<Mutex<Tracker>>> = (0..plan.receivers)
        .map(|_| Arc::new(Mutex::new(Tracker::new())))
        .collect();
    let permits = Arc::new(Semaphore::new(env.connect_concurrency));
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    let read_chunk = if plan.subscribers.len() <= 16 {
        256 * 1024
    } else {
        4096
    };

    // Subscribers first, all subscribed before anyone publishes.
    let mut subscribers = JoinSet::new();
    for (index, sub) in plan.subscribers.iter().enumerate() {
        let Some(tracker) = trackers.get(sub.receiver).cloned() else {
            return Err(SimError::Args(format!(
                "plan: no receiver {}",
                sub.receiver
            )));
        };
        let mut options = ConnectOptions::new(format!("{}-s{index}", env.prefix), env.version);
        options.keep_alive = args.keepalive;
        options.source = env.sources.source(index);
        if args.persistent_subscribers {
            options.clean_start = false;
            options.session_expiry = Some(3600);
        }
        subscribers.spawn(subscriber(
            env.broker,
            options,
            sub.filter.clone(),
            qos,
            read_chunk,
            tracker,
            shared.clone(),
            permits.clone(),
        ));
    }
    let subs = plan.subscribers.len() as u64;
    while shared.subs_ready.load(Ordering::Relaxed) + shared.subs_failed.load(Ordering::Relaxed)
        < subs
        && Instant::now() < setup_deadline
    {
        sleep(Duration::from_millis(10)).await;
    }

    let mut publishers = JoinSet::new();
    let offset = plan.subscribers.len();
    for (index, publisher_plan) in plan.publishers.iter().enumerate() {
        let mut options = ConnectOptions::new(format!("{}-p{index}", env.prefix), env.version);
        options.keep_alive = args.keepalive;
        options.source = env.sources.source(offset + index);
        let job = PublishJob {
            index: index as u32,
            topic: publisher_plan.topic.clone(),
            qos,
            payload: args.payload,
            rate: args.rate,
            window: args.window,
            count: args.count,
            drain,
            phase: index as f64 / plan.publishers.len().max(1) as f64,
        };
        publishers.spawn(publisher(
            env.broker,
            options,
            job,
            shared.clone(),
            permits.clone(),
        ));
    }
    let pubs = plan.publishers.len() as u64;
    while shared.pubs_ready.load(Ordering::Relaxed) + shared.pubs_failed.load(Ordering::Relaxed)
        < pubs
        && Instant::now() < setup_deadline
    {
        sleep(Duration::from_millis(10)).await;
    }

    // Go.
    if let Some(watch) = watch.as_mut() {
        watch.reset_cpu()?;
    }
    let go_ns = shared.clock.now_ns();
    let go_at = Instant::now();
    shared.go.cancel();
    let stopper = {
        let stop = shared.stop_publishing.clone();
        tokio::spawn(async move {
            sleep(duration).await;
            stop.cancel();
        })
    };
    let mut sent_by = vec![0u64; plan.publishers.len()];
    let mut acked = 0;
    let mut publish_end = go_at;
    // Publishers end by count or by the stop token, then drain their acks.
    let publishers_bound = duration + drain + Duration::from_secs(5);
    let _ = tokio::time::timeout(publishers_bound, async {
        while let Some(joined) = publishers.join_next().await {
            if let Ok(outcome) = joined {
                if let Some(slot) = sent_by.get_mut(outcome.index as usize) {
                    *slot = outcome.sent;
                }
                acked += outcome.acked;
                publish_end = publish_end.max(outcome.last_send);
            }
            if let Some(watch) = watch.as_mut() {
                let _ = watch.sample();
            }
        }
    })
    .await;
    publishers.abort_all();
    shared.stop_publishing.cancel();
    stopper.abort();
    let sent: u64 = sent_by.iter().sum();
    let expected: u64 = sent_by
        .iter()
        .zip(plan.publishers.iter())
        .map(|(sent, publisher)| sent * publisher.receivers)
        .sum();
    // Wait for the last deliveries; give up early once nothing has arrived
    // for two seconds (QoS 0 messages the broker dropped never come).
    let drain_deadline = Instant::now() + drain;
    let mut seen = Counters::get(&shared.counters.received);
    let mut quiet_since = Instant::now();
    while Counters::get(&shared.counters.unique) < expected && Instant::now() < drain_deadline {
        sleep(Duration::from_millis(10)).await;
        let now_seen = Counters::get(&shared.counters.received);
        if now_seen != seen {
            seen = now_seen;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let (cpu, peak) = match watch.as_mut() {
        Some(watch) => {
            let _ = watch.sample();
            (Some(watch.cpu_since_start()?), Some(watch.peak_rss))
        }
        None => (None, None),
    };
    shared.stop_subscribers.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while subscribers.join_next().await.is_some() {}
    })
    .await;
    subscribers.abort_all();
    progress_stop.cancel();
    let _ = progress.await;

    let (mut delivered, mut duplicates, mut invalid) = (0, 0, 0);
    for tracker in &trackers {
        if let Ok(tracker) = tracker.lock() {
            delivered += tracker.unique();
            duplicates += tracker.duplicates();
            invalid += tracker.invalid();
        }
    }
    let latency = shared
        .latency
        .lock()
        .map(|latency| latency.summary())
        .unwrap_or_default();
    let last_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    let delivery_secs = if last_ns > go_ns {
        (last_ns - go_ns) as f64 / 1e9
    } else {
        0.0
    };
    let publish_secs = publish_end.duration_since(go_at).as_secs_f64();
    let body = PubSubReport {
        publishers: plan.publishers.len(),
        subscribers: plan.subscribers.len(),
        publishers_ready: shared.pubs_ready.load(Ordering::Relaxed),
        subscribers_ready: shared.subs_ready.load(Ordering::Relaxed),
        qos: args.qos,
        payload: args.payload.max(crate::metrics::STAMP_LEN),
        rate_per_publisher: args.rate,
        window: args.window,
        sent,
        acked,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicates,
        invalid,
        publish_secs: round3(publish_secs),
        delivery_secs: round3(delivery_secs),
        sent_per_sec: round3(sent as f64 / publish_secs.max(1e-9)),
        delivered_per_sec: round3(delivered as f64 / delivery_secs.max(1e-9)),
        latency,
        broker_cpu_secs: cpu.map(round3),
        msgs_per_broker_cpu_sec: cpu
            .filter(|cpu| *cpu > 0.0)
            .map(|cpu| round3(delivered as f64 / cpu)),
        broker_rss_peak: peak,
    };
    emit(
        &env.header(plan.scenario, started, shared.errors.summary()),
        &body,
    )
}

/// Connects under the concurrency limit.
async fn connect(
    broker: SocketAddr,
    options: &ConnectOptions,
    permits: &Semaphore,
) -> Result<Client> {
    let Ok(_permit) = permits.acquire().await else {
        return Err(SimError::Timeout("a connect slot"));
    };
    Client::connect(broker, options)
        .await
        .map(|(client, _)| client)
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    broker: SocketAddr,
    options: ConnectOptions,
    filter: String,
    qos: QoS,
    read_chunk: usize,
    tracker: Arc<Mutex<Tracker>>,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
) {
    let counters = &shared.counters;
    let setup = async {
        let mut client = connect(broker, &options, &permits).await?;
        client
            .subscribe(&[(filter, qos)], Duration::from_secs(30))
            .await?;
        Ok::<_, SimError>(client)
    };
    let mut client = match setup.await {
        Ok(client) => client,
        Err(error) => {
            shared.subs_failed.fetch_add(1, Ordering::Relaxed);
            Counters::inc(&counters.connect_failed);
            shared.errors.add(format!("subscriber: {error}"));
            return;
        }
    };
    client.set_read_chunk(read_chunk);
    shared.subs_ready.fetch_add(1, Ordering::Relaxed);
    Counters::inc(&counters.connected);
    let mut stamps = Vec::new();
    let result: Result<()> = async {
        loop {
            let ping_at = client.ping_deadline();
            tokio::select! {
                biased;
                _ = shared.stop_subscribers.cancelled() => return Ok(()),
                read = client.fill() => { read?; }
                _ = sleep_until(ping_at) => { client.queue_ping_if_due()?; }
            }
            while let Some(packet) = client.poll_packet()? {
                if let Some(Packet::Publish(publish)) = client.auto_reply(packet)? {
                    match Stamp::parse(&publish.payload) {
                        Some(stamp) => stamps.push(stamp),
                        None => shared.errors.add("delivery without a stamp"),
                    }
                }
            }
            if !stamps.is_empty() {
                record(&shared, &tracker, &mut stamps);
            }
            client.flush().await?;
        }
    }
    .await;
    match result {
        Ok(()) => client.disconnect().await,
        Err(error) => {
            Counters::inc(&counters.dropped);
            shared.errors.add(format!("subscriber: {error}"));
        }
    }
}

/// Accounts a batch of deliveries to one receiver.
fn record(shared: &Shared, tracker: &Mutex<Tracker>, stamps: &mut Vec<Stamp>) {
    let now = shared.clock.now_ns();
    let mut fresh = 0;
    if let Ok(mut tracker) = tracker.lock() {
        for stamp in stamps.iter() {
            if tracker.record(stamp.publisher, stamp.seq) == Seen::Fresh {
                fresh += 1;
            }
        }
    }
    if let Ok(mut latency) = shared.latency.lock() {
        for stamp in stamps.iter() {
            latency.record_ns(now.saturating_sub(stamp.sent_ns));
        }
    }
    let counters = &shared.counters;
    counters
        .received
        .fetch_add(stamps.len() as u64, Ordering::Relaxed);
    counters.unique.fetch_add(fresh, Ordering::Relaxed);
    shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
    stamps.clear();
}

/// What one publisher does.
#[derive(Debug, Clone)]
struct PublishJob {
    index: u32,
    topic: String,
    qos: QoS,
    payload: usize,
    rate: f64,
    window: usize,
    count: u64,
    drain: Duration,
    /// Fraction of one send interval to wait before the first message, so
    /// rate-limited publishers do not all fire at the same instants.
    phase: f64,
}

/// What one publisher did.
struct PublishOutcome {
    index: u32,
    sent: u64,
    acked: u64,
    last_send: Instant,
}

async fn publisher(
    broker: SocketAddr,
    options: ConnectOptions,
    job: PublishJob,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
) -> PublishOutcome {
    let mut outcome = PublishOutcome {
        index: job.index,
        sent: 0,
        acked: 0,
        last_send: Instant::now(),
    };
    let mut client = match connect(broker, &options, &permits).await {
        Ok(client) => client,
        Err(error) => {
            shared.pubs_failed.fetch_add(1, Ordering::Relaxed);
            Counters::inc(&shared.counters.connect_failed);
            shared.errors.add(format!("publisher: {error}"));
            return outcome;
        }
    };
    shared.pubs_ready.fetch_add(1, Ordering::Relaxed);
    Counters::inc(&shared.counters.connected);
    shared.go.cancelled().await;
    match publish_loop(&mut client, &job, &shared, &mut outcome).await {
        Ok(()) => client.disconnect().await,
        Err(error) => {
            Counters::inc(&shared.counters.dropped);
            shared.errors.add(format!("publisher: {error}"));
        }
    }
    outcome
}

async fn publish_loop(
    client: &mut Client,
    job: &PublishJob,
    shared: &Shared,
    outcome: &mut PublishOutcome,
) -> Result<()> {
    let counters = &shared.counters;
    let window = if job.qos == QoS::AtMostOnce {
        job.window
    } else {
        job.window.min(usize::from(client.server_receive_maximum()))
    };
    let interval = (job.rate > 0.0 && job.rate.is_finite()).then(|| 1.0 / job.rate);
    let start = Instant::now();
    let far = start + Duration::from_secs(86_400);
    let due = |seq: u64| match interval {
        Some(interval) => start + Duration::from_secs_f64((seq as f64 + job.phase) * interval),
        None => start,
    };
    let mut inflight: HashSet<u16> = HashSet::new();
    let mut seq: u64 = 0;
    let mut stopping = false;
    let mut drain_deadline = far;
    loop {
        if !stopping && job.count > 0 && seq >= job.count {
            stopping = true;
            drain_deadline = Instant::now() + job.drain;
        }
        if !stopping {
            let now = Instant::now();
            let mut queued = 0;
            while queued < window
                && (job.count == 0 || seq < job.count)
                && (job.qos == QoS::AtMostOnce || inflight.len() < window)
                && due(seq) <= now
            {
                let packet_id = if job.qos == QoS::AtMostOnce {
                    0
                } else {
                    let mut id = client.next_packet_id();
                    while inflight.contains(&id) {
                        id = client.next_packet_id();
                    }
                    inflight.insert(id);
                    id
                };
                let stamp = Stamp {
                    sent_ns: shared.clock.now_ns(),
                    publisher: job.index,
                    seq,
                };
                client.queue_publish(&job.topic, job.qos, packet_id, stamp.payload(job.payload))?;
                seq += 1;
                queued += 1;
            }
            if queued > 0 {
                outcome.sent = seq;
                outcome.last_send = now;
                counters.sent.fetch_add(queued as u64, Ordering::Relaxed);
            }
        }
        client.flush().await?;
        if stopping && inflight.is_empty() {
            return Ok(());
        }
        let window_open = job.qos == QoS::AtMostOnce || inflight.len() < window;
        let more = !stopping && (job.count == 0 || seq < job.count);
        let send_now = more && window_open && due(seq) <= Instant::now();
        let next_send = if more && window_open { due(seq) } else { far };
        let ping_at = client.ping_deadline();
        tokio::select! {
            biased;
            _ = shared.stop_publishing.cancelled(), if !stopping => {
                stopping = true;
                drain_deadline = Instant::now() + job.drain;
            }
            read = client.fill() => {
                read?;
                while let Some(packet) = client.poll_packet()? {
                    match client.auto_reply(packet)? {
                        Some(Packet::PubAck(ack)) | Some(Packet::PubComp(ack))
                            if inflight.remove(&ack.packet_id) =>
                        {
                            outcome.acked += 1;
                            Counters::inc(&counters.acked);
                        }
                        Some(Packet::PubRec(ack)) if ack.reason_code.is_error() => {
                            inflight.remove(&ack.packet_id);
                            shared.errors.add(format!("PUBREC {:?}", ack.reason_code));
                        }
                        _ => {}
                    }
                }
            }
            _ = tokio::task::yield_now(), if send_now => {}
            _ = sleep_until(next_send), if !send_now && next_send < far => {}
            _ = sleep_until(ping_at) => { client.queue_ping_if_due()?; }
            _ = sleep_until(drain_deadline), if stopping => {
                shared.errors.add("publisher: acks missing at the end of the drain");
                return Ok(());
            }
        }
    }
}
