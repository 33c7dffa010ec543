//! The pipeline runtime (feature `runtime`): a running pipeline reads MQTT messages from
//! this broker, evaluates its rule, batches the outputs and writes them to a sink, and
//! acknowledges each source message only once what it caused is committed.
//!
//! ```text
//! broker --(durable internal client, QoS 1, Receive Maximum = in_flight)--> source task
//!   source --Item (bounded channel, in_flight)--> worker: Rule::apply -> Batcher -> sink
//!   worker --done sequence numbers--> source: PUBACK in arrival order
//! ```
//!
//! # Guarantees
//!
//! - **At least once**: the source is a durable internal session (clean start false,
//!   session expiry [`SESSION_EXPIRY_SECS`]): a message is PUBACKed after the sink committed
//!   its batch (file: written and fsynced; MQTT: PUBACKed by the broker; NATS: acked by
//!   JetStream; HTTP: a 2xx answer), after it was
//!   filtered out by WHERE, or after it was written to the dead-letter file. Until then the
//!   broker keeps it for the session (and in its store): a crash or kill -9 redelivers it,
//!   so a file sink may hold duplicates.
//! - **Bounded memory, backpressure**: at most `in_flight` messages are unacknowledged (the
//!   source's Receive Maximum); the broker queues the rest for the session within its
//!   per-session byte limit (`mqtt.max_queued_messages` and `mqtt.max_queued_bytes`).
//! - **Dead letters**: a record whose evaluation fails, or that the sink refuses (MQTT: no
//!   valid topic from the template, or a PUBACK with an error code), is written to the
//!   dead-letter file (`{"pipeline", "topic", "payload" (base64), "reason", "time" (unix
//!   ms)}` per line) and acknowledged.
//! - **Transient errors** (a file write failing, the broker not answering) are retried with
//!   exponential backoff from [`RETRY_MIN`] to [`RETRY_MAX`], each logged and counted in
//!   `myriad_pipeline_retries_total`: a pipeline never stops silently.
//! - **Stopping**: when the shutdown token is cancelled the source stops taking messages,
//!   the worker flushes and commits what it holds, and acknowledgements are sent; after the
//!   grace period whatever is still uncommitted is left to redelivery.
//!
//! # Record metadata and tracing
//!
//! A record from the MQTT source carries the message's MQTT 5 user properties (for
//! `get_user_property`) and its W3C trace context; each batch commit is reported to the
//! pipeline's [`BatchTracer`] (if any) with those contexts as parent and links: see [`trace`].
//!
//! # Metrics
//!
//! `myriad_pipeline_records_total{pipeline,stage,outcome}` (source/received,
//! rule/passed|filtered|failed|unmatched, sink/committed|refused),
//! `myriad_pipeline_batches_total{pipeline}`, `myriad_pipeline_dead_letters_total{pipeline}`,
//! `myriad_pipeline_retries_total{pipeline}`, gauge `myriad_pipeline_lag_records{pipeline}`
//! (messages received and not yet acknowledged). Sinks add their own: NATS
//! `myriad_pipeline_sink_duplicates_total{pipeline}` ([`nats`]); HTTP
//! `myriad_pipeline_http_requests_total{pipeline,outcome}`,
//! `myriad_pipeline_sink_retries_total{pipeline}`, gauge `myriad_pipeline_breaker_open{pipeline}`
//! and `myriad_pipeline_breaker_opened_total{pipeline}` ([`http`]).
//!
//! # Limits
//!
//! | bound | value |
//! |---|---|
//! | pipeline name | `[a-z0-9_-]{1,64}` ([`MAX_NAME_BYTES`]) |
//! | `in_flight` | 1 ..= 65535 ([`MAX_IN_FLIGHT`]) |
//! | file `max_file_bytes` | [`file::MIN_FILE_BYTES`] ..= [`file::MAX_FILE_BYTES`] |
//! | file `keep_files` | 0 ..= [`file::MAX_KEEP_FILES`] |
//! | file `max_file_age_ms` | [`file::MIN_FILE_AGE_MS`] ..= [`file::MAX_FILE_AGE_MS`] |
//! | file CSV `columns` | [`file::MAX_CSV_COLUMNS`] names of [`file::MAX_CSV_COLUMN_BYTES`] |
//! | user properties kept per record | [`record::MAX_USER_PROPERTIES`], [`record::MAX_USER_PROPERTY_BYTES`] (the rest are left out) |
//! | links per batch span | [`trace::MAX_BATCH_LINKS`] |
//! | topic template | [`template::MAX_TOPIC_BYTES`], [`template::MAX_PLACEHOLDERS`] |
//! | PostgreSQL sink | see [`postgres`] |
//! | NATS / HTTP `key` | [`key::MAX_KEY_FIELDS`] fields, [`key::MAX_KEY_BYTES`] rendered |
//! | NATS sink | [`nats::MAX_URL_BYTES`], `ack_timeout_ms` up to [`nats::MAX_ACK_TIMEOUT`] |
//! | HTTP sink | [`http::MAX_URL_BYTES`], [`http::MAX_HEADERS`] headers, [`http::MAX_RESPONSE_BYTES`] read, [`http::MAX_CONCURRENCY`], [`http::MAX_TIMEOUT`] |
//! | files source | see [`files`] |
//! | HTTP ingest source | see [`ingest`]: `max_line_bytes`, [`ingest::MAX_BODY_BYTES`], [`ingest::QUEUE_LINES`] |
//! | HTTP polling source | see [`poll`]: [`poll::MAX_RESPONSE_BYTES`], [`poll::MIN_INTERVAL_MS`] |
//! | PostgreSQL source | see [`pg_source`]: [`pg_source::MAX_QUERY_BYTES`] query, `fetch_rows` up to [`pg_source::MAX_FETCH_ROWS`], `poll_ms` [`pg_source::MIN_POLL_MS`] ..= [`pg_source::MAX_POLL_MS`], `max_row_bytes` up to [`pg_source::MAX_ROW_BYTES`] |
//! | telemetry source | see [`telemetry_source`]: [`telemetry_source::MAX_DEVICES`] devices, [`telemetry_source::MAX_METRICS`] metrics, [`telemetry_source::MAX_SERIES`] series per pass |
//! | a source's checkpoint file read at start-up | [`reader::MAX_CHECKPOINT_BYTES`] |
//!
//! # Other sources
//!
//! Instead of the broker: a directory of files ([`files`]), request bodies POSTed to the API
//! ([`ingest`]), a URL polled ([`poll`]), a PostgreSQL query or table ([`pg_source`]) or the
//! telemetry store ([`telemetry_source`]). Each keeps the same window (at most `in_flight`
//! records handed out and not done) and learns which records are done from the worker.

pub mod file;
pub mod files;
pub mod http;
pub mod ingest;
pub mod key;
pub mod nats;
pub mod pg_source;
pub mod pg_tls;
pub mod pg_value;
pub mod poll;
pub mod postgres;
pub mod reader;
mod sink;
pub mod telemetry_source;
pub mod template;
pub mod trace;
mod window;

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use myriad_broker::shell::internal::{DurableOptions, InternalClient};
use myriad_broker::shell::{BrokerHandle, BrokerStopped};
use myriad_mqtt::QoS;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use file::{FileSinkConfig, OutputFormat, RotatingFile};
pub use http::HttpSinkConfig;
pub use key::KeyFields;
pub use nats::NatsSinkConfig;
pub use postgres::PostgresSinkConfig;
pub use template::{TemplateError, TopicTemplate};
pub use trace::{BatchOutcome, BatchSpan, BatchTracer};

use crate::record::{self, Record};
use crate::sql::{EvalContext, Rule};
use crate::status::{PipelineState, PipelineStatus};
use crate::transform::{Batch, BatchConfig, Batcher};
use sink::{Pending, Sink, SinkError, Verdict, append};
use window::Window;

/// The longest pipeline name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// The largest `in_flight` (MQTT's Receive Maximum is a u16).
pub const MAX_IN_FLIGHT: u32 = 65_535;
/// How long the broker keeps a pipeline's source session (and its queued messages) while
/// the pipeline is not running: 7 days.
pub const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;
/// The first retry delay after a transient error.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Checks a pipeline name: `[a-z0-9_-]{1,64}`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} must match [a-z0-9_-]{{1,64}}"))
    }
}

/// Where a pipeline's committed records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// JSON lines appended to a rotating file, fsynced per batch.
    File(FileSinkConfig),
    /// Republished on this broker at QoS 1, to the topic the template renders, with the
    /// output JSON as payload.
    Mqtt {
        /// The topic template.
        topic: TopicTemplate,
    },
    /// Rows in a PostgreSQL table, by binary COPY (see [`postgres`]).
    Postgres(PostgresSinkConfig),
    /// Published to NATS JetStream, acknowledged by the stream (see [`nats`]).
    Nats(NatsSinkConfig),
    /// Sent to an HTTP webhook (see [`http`]).
    Http(HttpSinkConfig),
}

impl SinkConfig {
    /// The sink's kind as configured: `file`, `mqtt`, `postgres`, `nats`, `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::File(_) => "file",
            SinkConfig::Mqtt { .. } => "mqtt",
            SinkConfig::Postgres(_) => "postgres",
            SinkConfig::Nats(_) => "nats",
            SinkConfig::Http(_) => "http",
        }
    }
}

/// Where a pipeline's records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// This broker: a durable session subscribed to the rule's FROM filter.
    Mqtt,
    /// A directory of JSONL or CSV files (see [`files`]).
    Files(files::FilesSourceConfig),
    /// Request bodies streamed in over the HTTP API (see [`ingest`]); topic `http/{name}`.
    Http(ingest::HttpSourceConfig),
    /// A URL polled with GET (see [`poll`]); topic `http/{name}`.
    HttpPoll(poll::HttpPollConfig),
    /// A PostgreSQL query or followed table (see [`pg_source`]).
    Postgres(pg_source::PostgresSourceConfig),
    /// The telemetry store (see [`telemetry_source`]); needs a store passed to
    /// [`run_with_status`].
    Telemetry(telemetry_source::TelemetrySourceConfig),
}

impl SourceConfig {
    /// The source's kind as configured: `mqtt`, `files`, `http`, `http_poll`, `postgres`,
    /// `telemetry`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Mqtt => "mqtt",
            SourceConfig::Files(_) => "files",
            SourceConfig::Http(_) => "http",
            SourceConfig::HttpPoll(_) => "http_poll",
            SourceConfig::Postgres(_) => "postgres",
            SourceConfig::Telemetry(_) => "telemetry",
        }
    }

    /// The topic of the records of pipeline `name` from this source, when the source sets
    /// one for all of them (`http/{name}` for the HTTP sources; the others: `None`).
    pub fn topic(&self, name: &str) -> Option<String> {
        match self {
            SourceConfig::Http(_) | SourceConfig::HttpPoll(_) => Some(format!("http/{name}")),
            SourceConfig::Mqtt
            | SourceConfig::Files(_)
            | SourceConfig::Postgres(_)
            | SourceConfig::Telemetry(_) => None,
        }
    }
}

/// How a pipeline ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stopped by the shutdown token.
    Stopped,
    /// A one-shot source (a query, a telemetry range) was read to its end and every record is
    /// done: the pipeline has nothing more to do and is not started again.
    Finished,
}

/// One pipeline, validated.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Its name (see [`validate_name`]); its source session is `$myriad/pipeline/{name}`.
    pub name: String,
    /// The rule: its FROM filter is the source's subscription (a files source: it selects
    /// the files, whose records have the topic `files/{file name}`; the HTTP sources' records
    /// have the topic `http/{name}`).
    pub rule: Rule,
    /// Where records come from.
    pub source: SourceConfig,
    /// When batches are flushed to the sink.
    pub batch: BatchConfig,
    /// The source's Receive Maximum: unacknowledged messages at most (1 ..= 65535).
    pub in_flight: u16,
    /// The sink.
    pub sink: SinkConfig,
    /// The dead-letter file.
    pub dead_letter: FileSinkConfig,
    /// How long a record may wait for its sink (from its arrival, in ms) while writes fail:
    /// past it, its batch goes to the dead-letter file with the last error instead of being
    /// retried further, so the stream moves on. `None`: retried until committed (the sink
    /// slows the source instead). [`MIN_DEADLINE_MS`] ..= [`MAX_DEADLINE_MS`].
    pub deadline_ms: Option<u64>,
    /// Where a span per batch commit goes (see [`trace`]); `None`: no spans.
    pub tracer: Option<Arc<dyn BatchTracer>>,
}

/// The shortest per-record deadline.
pub const MIN_DEADLINE_MS: u64 = 100;
/// The longest per-record deadline: one day.
pub const MAX_DEADLINE_MS: u64 = 86_400_000;

/// Why a pipeline stopped before its shutdown token was cancelled.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The broker stopped (or refused the source's session).
    #[error("the broker stopped")]
    BrokerStopped(#[from] BrokerStopped),
    /// The batch settings are out of range.
    #[error("batch.{0}")]
    Batch(#[from] crate::transform::ConfigError),
    /// A source other than the broker ended before the shutdown.
    #[error("the source ended: {0}")]
    SourceEnded(String),
    /// A telemetry source without a telemetry store to read.
    #[error("the telemetry store is not available (telemetry disabled)")]
    NoTelemetry,
}

/// The wall clock in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A message handed from the source to the worker.
struct Item {
    seq: u64,
    /// The message's topic (a file source's records: `files/{file name}`).
    topic: String,
    payload: Bytes,
    qos: record::QoS,
    /// MQTT 5 user properties, the first ones within [`record::MAX_USER_PROPERTIES`] and
    /// [`record::MAX_USER_PROPERTY_BYTES`] (the rest are not kept).
    user_properties: record::UserProperties,
    /// The valid W3C `traceparent` among the user properties.
    trace: Option<trace::TraceParent>,
    /// Set when the source could not take the record as it is (a file line too long): it
    /// goes to the dead-letter file with this reason.
    error: Option<String>,
}

/// The pipeline's metric handles, registered once (no label allocation per record), and its
/// status for the API.
struct Counters {
    status: Arc<PipelineStatus>,
    records: [metrics::Counter; 7],
    batches: metrics::Counter,
    dead_letters: metrics::Counter,
    retries: metrics::Counter,
    lag: metrics::Gauge,
}

/// `(stage, outcome)` of each `records` counter, indexed by [`Outcome`].
const OUTCOMES: [(&str, &str); 7] = [
    ("source", "received"),
    ("rule", "passed"),
    ("rule", "filtered"),
    ("rule", "failed"),
    ("rule", "unmatched"),
    ("sink", "committed"),
    ("sink", "refused"),
];

#[derive(Clone, Copy)]
enum Outcome {
    Received = 0,
    Passed = 1,
    Filtered = 2,
    Failed = 3,
    Unmatched = 4,
    Committed = 5,
    Refused = 6,
}

impl Counters {
    fn new(name: &str, status: Arc<PipelineStatus>) -> Counters {
        let records = OUTCOMES.map(|(stage, outcome)| {
            metrics::counter!("myriad_pipeline_records_total",
                "pipeline" => name.to_string(), "stage" => stage, "outcome" => outcome)
        });
        Counters {
            status,
            records,
            batches: metrics::counter!("myriad_pipeline_batches_total", "pipeline" => name.to_string()),
            dead_letters: metrics::counter!("myriad_pipeline_dead_letters_total", "pipeline" => name.to_string()),
            retries: metrics::counter!("myriad_pipeline_retries_total", "pipeline" => name.to_string()),
            lag: metrics::gauge!("myriad_pipeline_lag_records", "pipeline" => name.to_string()),
        }
    }
    fn records(&self, outcome: Outcome, n: u64) {
        self.records[outcome as usize].increment(n);
        self.status.add_records(outcome as usize, n);
    }
    fn batch(&self) {
        self.batches.increment(1);
        self.status.batch_committed(now_ms());
    }
    fn dead_letter(&self) {
        self.dead_letters.increment(1);
        self.status.dead_letter();
    }
    fn retry(&self, error: &str) {
        self.retries.increment(1);
        self.status.retrying(error, now_ms());
    }
    fn lag(&self, n: usize) {
        self.lag.set(n as f64);
        self.status.set_lag(n as u64);
    }
}

/// Runs `config` on `broker` until `shutdown` is cancelled, then drains for at most `grace`.
/// Returns how it ended (a one-shot source: [`Ended::Finished`] once all of it is done), an
/// error if the broker or the source went away first.
pub async fn run(
    config: PipelineConfig,
    broker: BrokerHandle,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<Ended, RuntimeError> {
    let status = Arc::new(PipelineStatus::new(
        &config.name,
        config.rule.topic_filter().as_str(),
        config.sink.kind(),
        now_ms(),
    ));
    run_with_status(config, broker, shutdown, grace, status, None).await
}

/// [`run`], reporting to `status` (state, counters, the last error) as it goes; a telemetry
/// source reads `telemetry`.
pub async fn run_with_status(
    config: PipelineConfig,
    broker: BrokerHandle,
    shutdown: CancellationToken,
    grace: Duration,
    status: Arc<PipelineStatus>,
    telemetry: Option<Arc<dyn telemetry_source::TelemetryStore>>,
) -> Result<Ended, RuntimeError> {
    if matches!(config.source, SourceConfig::Telemetry(_)) && telemetry.is_none() {
        return Err(RuntimeError::NoTelemetry);
    }
    let options = DurableOptions {
        receive_maximum: config.in_flight.max(1),
        session_expiry_secs: SESSION_EXPIRY_SECS,
    };
    let name = config.name.clone();
    let mut source = match &config.source {
        SourceConfig::Mqtt => {
            let mut client = broker
                .connect_internal_durable(&format!("pipeline/{name}"), options)
                .await?;
            client
                .subscribe(config.rule.topic_filter().as_str(), QoS::AtLeastOnce)
                .await?;
            Some(client)
        }
        SourceConfig::Files(_)
        | SourceConfig::Http(_)
        | SourceConfig::HttpPoll(_)
        | SourceConfig::Postgres(_)
        | SourceConfig::Telemetry(_) => None,
    };
    let mut sink = Sink::open(&config.sink, &name, &broker).await?;
    if config.source == SourceConfig::Mqtt {
        sink.guard_loops(config.rule.topic_filter());
    }
    tracing::info!(pipeline = %name, filter = config.rule.topic_filter().as_str(), "pipeline started");
    status.set_state(PipelineState::Running, None, now_ms());
    // Cancelled `grace` after `shutdown`: retries and the drain give up then.
    let hard = CancellationToken::new();
    let timer = {
        let (shutdown, hard) = (shutdown.clone(), hard.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
            hard.cancel();
        })
    };
    let capacity = usize::from(options.receive_maximum);
    let (items_tx, items_rx) = mpsc::channel(capacity);
    // Unbounded in type only: the worker sends at most one entry per item, and at most
    // `in_flight` items are outstanding.
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    // Dead letters reported to the source (the HTTP ingest source counts them per request).
    let (dead_tx, dead_rx) = mpsc::unbounded_channel();
    let topic = config.source.topic(&name).unwrap_or_default();
    let worker = Worker {
        counters: Counters::new(&name, status.clone()),
        name: name.clone(),
        rule: config.rule,
        deadline_ms: config.deadline_ms,
        batcher: Batcher::new(config.batch)?,
        sink,
        dead_letter: Arc::new(Mutex::new(RotatingFile::new(config.dead_letter))),
        done: done_tx,
        dead: matches!(config.source, SourceConfig::Http(_)).then_some(dead_tx),
        hard: hard.clone(),
        seed: std::collections::hash_map::RandomState::new(),
        tracer: config.tracer,
    };
    let worker = tokio::spawn(worker.run(items_rx));
    let counters = Counters::new(&name, status.clone());
    let outcome = {
        match (&mut source, config.source) {
            (Some(client), _) => run_source(client, items_tx, done_rx, &shutdown, &hard, counters)
                .await
                .map(|()| Ended::Stopped),
            (None, SourceConfig::Files(files)) => files::run_source(
                files, capacity, items_tx, done_rx, &shutdown, &hard, counters,
            )
            .await
            .map(|()| Ended::Stopped),
            (None, SourceConfig::Postgres(pg)) => {
                let (checkpoint, poll) = (pg.checkpoint.clone(), Duration::from_millis(pg.poll_ms));
                if matches!(pg.mode, pg_source::PgSourceMode::Query { .. }) {
                    let open = move || pg_source::QueryReader::new(pg);
                    reader::run(
                        open,
                        "postgres",
                        &checkpoint,
                        poll,
                        capacity,
                        items_tx,
                        done_rx,
                        &shutdown,
                        &hard,
                        counters,
                    )
                    .await
                } else {
                    let open = move || pg_source::FollowReader::new(pg);
                    reader::run(
                        open,
                        "postgres",
                        &checkpoint,
                        poll,
                        capacity,
                        items_tx,
                        done_rx,
                        &shutdown,
                        &hard,
                        counters,
                    )
                    .await
                }
            }
            (None, SourceConfig::Telemetry(t)) => match telemetry {
                Some(store) => {
                    let (checkpoint, poll) =
                        (t.checkpoint.clone(), Duration::from_millis(t.poll_ms));
                    let open = move || telemetry_source::TelemetryReader::new(t, store);
                    reader::run(
                        open,
                        "telemetry",
                        &checkpoint,
                        poll,
                        capacity,
                        items_tx,
                        done_rx,
                        &shutdown,
                        &hard,
                        counters,
                    )
                    .await
                }
                None => Err(RuntimeError::NoTelemetry),
            },
            (None, SourceConfig::Http(http)) => ingest::run_source(
                http.queue, topic, capacity, items_tx, done_rx, dead_rx, &shutdown, &hard, counters,
            )
            .await
            .map(|()| Ended::Stopped),
            (None, SourceConfig::HttpPoll(poll)) => poll::run_source(
                poll, &name, topic, capacity, items_tx, done_rx, &shutdown, &hard, counters,
            )
            .await
            .map(|()| Ended::Stopped),
            (None, SourceConfig::Mqtt) => Ok(Ended::Stopped),
        }
    };
    let _ = worker.await;
    timer.abort();
    tracing::info!(pipeline = %name, "pipeline stopped");
    match &outcome {
        Ok(Ended::Stopped) => status.set_state(PipelineState::Stopped, None, now_ms()),
        Ok(Ended::Finished) => status.set_state(PipelineState::Finished, None, now_ms()),
        Err(error) => status.set_state(PipelineState::Failed, Some(&error.to_string()), now_ms()),
    }
    // The session stays (clean start false): unacknowledged messages wait for the next run.
    if let Some(client) = source {
        client.disconnect().await;
    }
    outcome
}

/// Runs `f` (blocking: a source reading its checkpoint file) on the blocking pool.
async fn off_loop<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::SourceEnded(e.to_string()))
}

/// Hands messages to the worker and acknowledges them, in arrival order, as the worker
/// reports them done.
async fn run_source(
    client: &mut InternalClient,
    items: mpsc::Sender<Item>,
    mut done: mpsc::UnboundedReceiver<u64>,
    shutdown: &CancellationToken,
    hard: &CancellationToken,
    counters: Counters,
) -> Result<(), RuntimeError> {
    // The packet id of each message not yet acknowledged, oldest first.
    let mut window: Window<Option<u16>> = Window::new();
    let mut items = Some(items);
    loop {
        tokio::select! {
            biased;
            finished = done.recv() => {
                let Some(seq) = finished else {
                    // The worker ended: after a shutdown, its drain is over; before
                    // one, its sink lost the broker.
                    return if shutdown.is_cancelled() {
                        Ok(())
                    } else {
                        Err(RuntimeError::BrokerStopped(BrokerStopped))
                    };
                };
                window.mark_reported(seq, &mut done);
                // Everything done at the window's front, in one event for the broker.
                let acks = window.take_done().into_iter().flatten().collect();
                client.ack_many(acks).await?;
                counters.lag(window.len());
            }
            () = hard.cancelled() => return Ok(()),
            () = shutdown.cancelled(), if items.is_some() => {
                // Stop taking messages; the worker drains what it has and ends.
                items = None;
            }
            delivery = client.recv_manual(), if items.is_some() => {
                let Some(delivery) = delivery else {
                    return Err(RuntimeError::BrokerStopped(BrokerStopped));
                };
                let seq = window.push(delivery.packet_id);
                counters.records(Outcome::Received, 1);
                counters.lag(window.len());
                let Some(sender) = &items else { continue };
                let publish = delivery.publish;
                let (user_properties, trace) = metadata(&publish.properties);
                let item = Item {
                    seq,
                    topic: publish.topic.to_string(),
                    payload: publish.payload,
                    qos: match publish.qos {
                        QoS::AtMostOnce => record::QoS::AtMostOnce,
                        _ => record::QoS::AtLeastOnce,
                    },
                    user_properties,
                    trace,
                    error: None,
                };
                if sender.send(item).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// A message's user properties as a record keeps them (the first ones within the record's
/// bounds; the rest are left out) and its valid `traceparent`.
fn metadata(
    properties: &myriad_mqtt::PacketProperties,
) -> (record::UserProperties, Option<trace::TraceParent>) {
    let mut kept = record::UserProperties::new();
    let Some(properties) = properties.get() else {
        return (kept, None);
    };
    for (name, value) in &properties.user_properties {
        if kept.push(&**name, &**value).is_err() {
            break;
        }
    }
    let trace = myriad_broker::trace::find_traceparent(&properties.user_properties);
    (kept, trace)
}

struct Worker {
    counters: Counters,
    name: String,
    rule: Rule,
    deadline_ms: Option<u64>,
    batcher: Batcher<Pending>,
    sink: Sink,
    dead_letter: Arc<Mutex<RotatingFile>>,
    done: mpsc::UnboundedSender<u64>,
    /// Where dead-lettered sequence numbers are reported too (before `done`), if the source
    /// wants them.
    dead: Option<mpsc::UnboundedSender<u64>>,
    hard: CancellationToken,
    seed: std::collections::hash_map::RandomState,
    tracer: Option<Arc<dyn BatchTracer>>,
}

impl Worker {
    async fn run(mut self, mut items: mpsc::Receiver<Item>) {
        loop {
            let due = self.batcher.deadline().map(|deadline| {
                let wait = u64::try_from(deadline.saturating_sub(now_ms())).unwrap_or(0);
                tokio::time::Instant::now() + Duration::from_millis(wait)
            });
            tokio::select! {
                item = items.recv() => match item {
                    Some(item) => {
                        if !self.process(item).await {
                            return;
                        }
                    }
                    None => break,
                },
                () = async { if let Some(due) = due { tokio::time::sleep_until(due).await } }, if due.is_some() => {
                    if let Some(batch) = self.batcher.poll(now_ms())
                        && !self.commit(batch).await
                    {
                        return;
                    }
                }
            }
        }
        if let Some(batch) = self.batcher.flush() {
            self.commit(batch).await;
        }
    }

    /// Retries `attempt` with backoff until it succeeds or the grace period ends (`false`).
    async fn retry_sleep(
        &self,
        delay: &mut Duration,
        what: &str,
        error: &(dyn std::fmt::Display + Sync),
    ) -> bool {
        tracing::warn!(pipeline = %self.name, error = %error, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
        self.counters.retry(&format!("{what}: {error}"));
        tokio::select! {
            () = tokio::time::sleep(*delay) => {}
            () = self.hard.cancelled() => return false,
        }
        *delay = (*delay * 2).min(RETRY_MAX);
        true
    }

    /// Writes a dead letter (retrying), then reports `seq` done. `false`: gave up (grace).
    async fn dead_letter(&self, seq: u64, topic: &str, payload: &[u8], reason: &str) -> bool {
        let line = serde_json::json!({
            "pipeline": self.name,
            "topic": topic,
            "payload": base64::engine::general_purpose::STANDARD.encode(payload),
            "reason": reason,
            "time": now_ms(),
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let mut delay = RETRY_MIN;
        loop {
            match append(&self.dead_letter, bytes.clone()).await {
                Ok(()) => break,
                Err(error) => {
                    if !self
                        .retry_sleep(&mut delay, "dead-letter write", &error)
                        .await
                    {
                        return false;
                    }
                }
            }
        }
        tracing::debug!(pipeline = %self.name, topic, reason, "dead letter");
        self.counters.dead_letter();
        if let Some(dead) = &self.dead {
            let _ = dead.send(seq);
        }
        let _ = self.done.send(seq);
        true
    }

    async fn process(&mut self, item: Item) -> bool {
        let Item {
            seq,
            topic,
            payload,
            qos,
            user_properties,
            trace,
            error,
        } = item;
        if let Some(reason) = error {
            self.counters.records(Outcome::Failed, 1);
            return self.dead_letter(seq, &topic, &payload, &reason).await;
        }
        if !self.rule.matches_topic(&topic) {
            // A subscription left in the session by an earlier rule.
            self.counters.records(Outcome::Unmatched, 1);
            let _ = self.done.send(seq);
            return true;
        }
        let now = now_ms();
        let record = Record::new(topic.clone(), payload.clone(), ())
            .with_qos(qos)
            .with_user_properties(user_properties)
            .with_publish_time_ms(now);
        let ctx = EvalContext::new(now).with_random(self.seed.hash_one(seq));
        match self.rule.apply(&record, &ctx) {
            Ok(None) => {
                self.counters.records(Outcome::Filtered, 1);
                let _ = self.done.send(seq);
                true
            }
            Err(error) => {
                self.counters.records(Outcome::Failed, 1);
                self.dead_letter(seq, &topic, &payload, &format!("rule: {error}"))
                    .await
            }
            Ok(Some(output)) => {
                self.counters.records(Outcome::Passed, 1);
                let bytes = output.to_string().len();
                let pending = Pending {
                    seq,
                    received_ms: now,
                    output,
                    topic,
                    payload,
                    trace,
                };
                match self.batcher.push(pending, bytes, now) {
                    Some(batch) => self.commit(batch).await,
                    None => true,
                }
            }
        }
    }

    /// Commits `batch` to the sink (retrying transient errors), dead-letters what it
    /// refused, then reports its records done, and its span to the tracer. `false`: the
    /// grace period ended or the sink stopped first (nothing more reported).
    async fn commit(&mut self, batch: Batch<Pending>) -> bool {
        let start = SystemTime::now();
        let mut report = CommitReport {
            attempts: 0,
            committed: 0,
            error: None,
            outcome: BatchOutcome::Abandoned,
        };
        let carried_on = self.commit_batch(&batch, &mut report).await;
        if let Some(tracer) = &self.tracer {
            let (parent, links, dropped_links) =
                trace::parent_and_links(batch.items.iter().filter_map(|p| p.trace.as_ref()));
            tracer.batch(&BatchSpan {
                pipeline: &self.name,
                sink: self.sink.config_kind(),
                records: batch.items.len(),
                committed: report.committed,
                attempts: report.attempts,
                outcome: report.outcome,
                error: report.error.as_deref(),
                start,
                end: SystemTime::now(),
                parent,
                links: &links,
                dropped_links,
            });
        }
        carried_on
    }

    async fn commit_batch(&mut self, batch: &Batch<Pending>, report: &mut CommitReport) -> bool {
        let mut delay = RETRY_MIN;
        let verdicts = loop {
            report.attempts += 1;
            let written = tokio::select! {
                written = self.sink.write(&batch.items) => written,
                () = self.hard.cancelled() => return false,
            };
            match written {
                Ok(verdicts) => break verdicts,
                Err(SinkError::Transient(error)) => {
                    let what = format!("{} write", self.sink.kind());
                    report.error = Some(error.clone());
                    if let Some(deadline) = self.deadline_ms {
                        let oldest = batch.items.iter().map(|p| p.received_ms).min();
                        if oldest.is_some_and(|t| now_ms().saturating_sub(t) >= deadline as i64) {
                            let reason = format!(
                                "deadline: not committed within {deadline} ms ({what}: {error})"
                            );
                            for item in &batch.items {
                                if !self
                                    .dead_letter(item.seq, &item.topic, &item.payload, &reason)
                                    .await
                                {
                                    return false;
                                }
                            }
                            report.outcome = BatchOutcome::DeadLettered;
                            return true;
                        }
                    }
                    if !self.retry_sleep(&mut delay, &what, &error).await {
                        return false;
                    }
                }
                Err(SinkError::Stopped) => {
                    tracing::warn!(pipeline = %self.name, sink = self.sink.kind(), "the sink stopped");
                    return false;
                }
            }
        };
        let mut refused = 0usize;
        for (item, verdict) in batch.items.iter().zip(verdicts) {
            match verdict {
                Verdict::Committed => {
                    self.counters.records(Outcome::Committed, 1);
                    report.committed += 1;
                    let _ = self.done.send(item.seq);
                }
                Verdict::Refused(reason) => {
                    self.counters.records(Outcome::Refused, 1);
                    refused += 1;
                    if !self
                        .dead_letter(item.seq, &item.topic, &item.payload, &reason)
                        .await
                    {
                        return false;
                    }
                }
            }
        }
        report.outcome = if refused == 0 {
            BatchOutcome::Committed
        } else {
            BatchOutcome::Partial
        };
        self.counters.batch();
        true
    }
}

/// What became of one batch commit, for its span.
struct CommitReport {
    attempts: u32,
    committed: usize,
    error: Option<String>,
    outcome: BatchOutcome,
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn names_are_bounded_and_lowercase() {
        assert!(validate_name("hot_1-a").is_ok());
        assert!(validate_name(&"a".repeat(64)).is_ok());
        assert!(validate_name(&"a".repeat(65)).is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("Hot").is_err());
        assert!(validate_name("a/b").is_err());
    }
}
