//! `[[pipelines]]` in the config file (and the same entries as JSON over the API), and
//! running them with `myriad serve` ([`manager`]). See docs/pipelines.md ("Running
//! pipelines", "Pipelines over the API").

pub mod manager;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use myriad_broker::shell::BrokerHandle;
use myriad_fleet::service::telemetry::TelemetryService;
use myriad_fleet::telemetry::Sample;
use myriad_pipeline::runtime::files::{FileFormat, FilesSourceConfig};
use myriad_pipeline::runtime::ingest::HttpSourceConfig;
use myriad_pipeline::runtime::pg_source::{PgSourceMode, PostgresSourceConfig};
use myriad_pipeline::runtime::pg_value::TimeFormat;
use myriad_pipeline::runtime::poll::HttpPollConfig;
use myriad_pipeline::runtime::telemetry_source::{
    self, StoreFuture, TelemetryChunk, TelemetrySourceConfig, TelemetryStore,
};
use myriad_pipeline::runtime::{
    self, FileSinkConfig, HttpSinkConfig, KeyFields, NatsSinkConfig, OutputFormat, PipelineConfig,
    PostgresSinkConfig, SinkConfig, TopicTemplate,
};
use myriad_pipeline::runtime::{Ended, SourceConfig};
use myriad_pipeline::sql::Rule;
use myriad_pipeline::status::{PipelineState, PipelineStatus};
use myriad_pipeline::transform::BatchConfig;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// How long a stopping pipeline may take to commit and acknowledge what it holds.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// The most pipelines: in the config file, and in all (config file and API).
pub const MAX_PIPELINES: usize = 256;

/// One `[[pipelines]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineEntry {
    /// `[a-z0-9_-]{1,64}`, unique.
    pub name: String,
    /// The rule: `SELECT ... FROM '<filter>' [WHERE ...]`.
    pub sql: String,
    /// When batches go to the sink.
    #[serde(default)]
    pub batch: BatchEntry,
    /// Unacknowledged messages at most (the source's Receive Maximum), 1 to 65535.
    #[serde(default = "default_in_flight")]
    pub in_flight: u32,
    /// Where committed records go.
    pub sink: SinkEntry,
    /// Where records that fail the rule or are refused by the sink go.
    pub dead_letter: FileEntry,
    /// How long a record may wait for a failing sink before it goes to the dead-letter
    /// file (100 ms to 1 day); absent: retried until the sink takes it.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Where records come from (default: this broker, the rule's FROM filter).
    #[serde(default)]
    pub source: Option<SourceEntry>,
}

/// `source = { type = "files", dir = "...", format = "jsonl" | "csv", ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceEntry {
    /// This broker (the default).
    Mqtt,
    /// A directory of JSONL or CSV files (docs/pipelines.md, "Files source").
    Files {
        /// The directory; relative paths are under `store.data_dir`.
        dir: PathBuf,
        /// `jsonl` (default) or `csv` (a header line first).
        #[serde(default)]
        format: FileFormatEntry,
        /// How often the directory is listed again when all is read (10 to 3,600,000 ms;
        /// default 1000).
        #[serde(default = "default_poll_ms")]
        poll_ms: u64,
        /// Longer lines are dead-lettered (1 to 16 MiB; default 1 MiB).
        #[serde(default = "default_max_line_bytes")]
        max_line_bytes: usize,
        /// Delete each file once all of it is done (default false).
        #[serde(default)]
        delete_done: bool,
    },
    /// NDJSON bodies POSTed to `/api/v1/pipelines/{name}/records` (docs/pipelines.md,
    /// "HTTP sources"); records have the topic `http/{name}`.
    Http {
        /// Longer lines are dead-lettered (1 to 16 MiB; default 1 MiB).
        #[serde(default = "default_max_line_bytes")]
        max_line_bytes: usize,
        /// The most bytes of one request body (1 to 1 GiB; default 64 MiB).
        #[serde(default = "default_max_body_bytes")]
        max_body_bytes: u64,
    },
    /// A URL polled with GET (a JSON array or NDJSON); records have the topic `http/{name}`.
    HttpPoll {
        /// `http://` or `https://` URL.
        url: String,
        /// Time between polls (10 to 86,400,000 ms; default 10,000).
        #[serde(default = "default_interval_ms")]
        interval_ms: u64,
        /// Extra request headers.
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// One request's whole exchange at most (1 to 300,000 ms; default 10,000).
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        /// The most bytes of a response (1 to 256 MiB; default 16 MiB).
        #[serde(default = "default_max_response_bytes")]
        max_response_bytes: usize,
    },
    /// A PostgreSQL query or followed table (docs/pipelines.md, "PostgreSQL source").
    Postgres(PostgresSourceEntry),
    /// The telemetry store (docs/pipelines.md, "Telemetry source").
    Telemetry(TelemetrySourceEntry),
}

fn default_max_body_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_interval_ms() -> u64 {
    10_000
}

fn default_max_response_bytes() -> usize {
    16 * 1024 * 1024
}

/// `source = { type = "postgres", url, query = "..." }` or `{ type = "postgres", url, table,
/// key, columns }`, with `fetch_rows`, `poll_ms`, `max_row_bytes`, `timestamps`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceEntry {
    /// `postgres://user[:password]@host[:port]/db`.
    pub url: String,
    /// A query streamed once (or `table` and `key`).
    #[serde(default)]
    pub query: Option<String>,
    /// A table followed by `key` (or `query`).
    #[serde(default)]
    pub table: Option<String>,
    /// The followed table's increasing key column.
    #[serde(default)]
    pub key: Option<String>,
    /// The followed table's columns in each record (default: all).
    #[serde(default)]
    pub columns: Vec<String>,
    /// Rows per fetch (1 to 10,000; default 1000).
    #[serde(default = "default_fetch_rows")]
    pub fetch_rows: usize,
    /// Follow: the wait when nothing is new (10 to 3,600,000 ms; default 1000).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// A row with longer JSON is dead-lettered (1 to 16 MiB; default 1 MiB).
    #[serde(default = "default_max_line_bytes")]
    pub max_row_bytes: usize,
    /// Timestamps as `rfc3339` strings (default) or unix `ms`.
    #[serde(default)]
    pub timestamps: TimestampsEntry,
}

/// `timestamps = "rfc3339" | "ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampsEntry {
    /// RFC 3339 strings in UTC.
    #[default]
    Rfc3339,
    /// Unix milliseconds.
    Ms,
}

/// A time: unix milliseconds or an RFC 3339 string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TimeEntry {
    /// Unix milliseconds.
    Ms(i64),
    /// RFC 3339.
    Text(String),
}

/// `source = { type = "telemetry", devices, metrics, from, to, follow, poll_ms }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySourceEntry {
    /// The device ids (1 to 1000).
    pub devices: Vec<String>,
    /// The metrics (default: all of each device's).
    #[serde(default)]
    pub metrics: Vec<String>,
    /// The first time read (default: 0, the beginning).
    #[serde(default)]
    pub from: Option<TimeEntry>,
    /// The end of a range, excluded (default: none).
    #[serde(default)]
    pub to: Option<TimeEntry>,
    /// Follow new points (default false: read the range once).
    #[serde(default)]
    pub follow: bool,
    /// Follow: the wait when nothing is new (10 to 3,600,000 ms; default 1000).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

fn default_fetch_rows() -> usize {
    1000
}

/// A time entry as unix ms, or the problem.
fn time_ms(entry: &TimeEntry) -> std::result::Result<i64, String> {
    match entry {
        TimeEntry::Ms(ms) => Ok(*ms),
        TimeEntry::Text(text) => telemetry_source::parse_time(text)
            .ok_or_else(|| format!("{text:?} is neither unix ms nor an RFC 3339 time")),
    }
}

/// The PostgreSQL source's config, or the problem (starting with the key under `source`).
fn postgres_source(
    entry: &PostgresSourceEntry,
    checkpoint: PathBuf,
) -> std::result::Result<PostgresSourceConfig, String> {
    let mode = match (&entry.query, &entry.table, &entry.key) {
        (Some(query), None, None) => {
            if !entry.columns.is_empty() {
                return Err("columns: only with table (a query names its columns)".into());
            }
            PgSourceMode::Query {
                query: query.clone(),
            }
        }
        (None, Some(table), Some(key)) => PgSourceMode::Follow {
            table: table.clone(),
            key: key.clone(),
            columns: entry.columns.clone(),
        },
        (None, Some(_), None) => return Err("key: a followed table needs its key column".into()),
        (Some(_), _, _) => return Err("query: either query or table and key, not both".into()),
        (None, None, _) => return Err("query: a query, or table and key".into()),
    };
    let config = PostgresSourceConfig {
        url: entry.url.clone(),
        mode,
        fetch_rows: entry.fetch_rows,
        poll_ms: entry.poll_ms,
        max_row_bytes: entry.max_row_bytes,
        timestamps: match entry.timestamps {
            TimestampsEntry::Rfc3339 => TimeFormat::Rfc3339,
            TimestampsEntry::Ms => TimeFormat::Millis,
        },
        checkpoint,
    };
    config.validate()?;
    Ok(config)
}

/// The telemetry source's config, or the problem (starting with the key under `source`).
fn telemetry_source_config(
    entry: &TelemetrySourceEntry,
    checkpoint: PathBuf,
) -> std::result::Result<TelemetrySourceConfig, String> {
    let from = match &entry.from {
        Some(t) => time_ms(t).map_err(|e| format!("from: {e}"))?,
        None => 0,
    };
    let to = match &entry.to {
        Some(t) => Some(time_ms(t).map_err(|e| format!("to: {e}"))?),
        None => None,
    };
    let config = TelemetrySourceConfig {
        devices: entry.devices.clone(),
        metrics: entry.metrics.clone(),
        from,
        to,
        follow: entry.follow,
        poll_ms: entry.poll_ms,
        checkpoint,
    };
    config.validate()?;
    Ok(config)
}

/// The telemetry store as a pipeline source reads it.
pub(crate) struct TelemetryStoreAdapter(pub(crate) Arc<TelemetryService>);

impl TelemetryStore for TelemetryStoreAdapter {
    fn metrics<'a>(&'a self, device: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move { self.0.metrics(device).await.map_err(|e| e.to_string()) })
    }

    fn export<'a>(
        &'a self,
        device: &'a str,
        metric: &'a str,
        from: i64,
        to: i64,
        limit: usize,
    ) -> StoreFuture<'a, TelemetryChunk> {
        Box::pin(async move {
            let chunk = self
                .0
                .export_chunk(device, metric, from, to, limit)
                .await
                .map_err(|e| e.to_string())?;
            let points = chunk
                .points
                .into_iter()
                .map(|p| {
                    let value = match p.value {
                        Sample::Number(x) => serde_json::Number::from_f64(x)
                            .map_or(serde_json::Value::Null, serde_json::Value::Number),
                        Sample::Bool(b) => serde_json::Value::Bool(b),
                    };
                    (p.ts, value)
                })
                .collect();
            Ok(TelemetryChunk {
                points,
                next: chunk.next,
            })
        })
    }
}

/// `format = "jsonl" | "csv"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormatEntry {
    /// One JSON value per line.
    #[default]
    Jsonl,
    /// Comma-separated values under a header line.
    Csv,
}

fn default_poll_ms() -> u64 {
    1000
}

fn default_max_line_bytes() -> usize {
    1024 * 1024
}

fn default_in_flight() -> u32 {
    1000
}

/// `batch = { ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchEntry {
    /// Records per batch at most (1 to 1,000,000; default 500).
    pub max_records: usize,
    /// Output bytes per batch at most (1 to 256 MiB; default 1 MiB).
    pub max_bytes: usize,
    /// How long the first record of a batch waits (1 to 3,600,000 ms; default 200).
    pub max_age_ms: u64,
}

impl Default for BatchEntry {
    fn default() -> Self {
        BatchEntry {
            max_records: 500,
            max_bytes: 1024 * 1024,
            max_age_ms: 200,
        }
    }
}

/// A file: `{ path, max_file_bytes, keep_files }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// The file; relative paths are under `store.data_dir`.
    pub path: PathBuf,
    /// Rotate past this size (4 KiB to 1 TiB; default 100 MiB).
    #[serde(default = "default_file_bytes")]
    pub max_file_bytes: u64,
    /// Rotated files kept (0 to 1000; default 10).
    #[serde(default = "default_keep_files")]
    pub keep_files: u32,
}

fn default_file_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_keep_files() -> u32 {
    10
}

/// `sink = { type = "file", ... }`, `{ type = "mqtt", topic = "..." }`,
/// `{ type = "postgres", url, table, columns, key }`, `{ type = "nats", ... }` or
/// `{ type = "http", ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkEntry {
    /// JSON lines or CSV rows in a rotating file.
    File {
        /// The file; relative paths are under `store.data_dir`.
        path: PathBuf,
        /// Rotate past this size.
        #[serde(default = "default_file_bytes")]
        max_file_bytes: u64,
        /// Rotated files kept.
        #[serde(default = "default_keep_files")]
        keep_files: u32,
        /// Rotate once the current file has been written for this long (1 s to 30 days;
        /// default: by size only).
        #[serde(default)]
        max_file_age_ms: Option<u64>,
        /// `jsonl` (default) or `csv` (then `columns` is required).
        #[serde(default)]
        format: FileFormatEntry,
        /// The CSV columns: output fields, in order (1 to 256).
        #[serde(default)]
        columns: Vec<String>,
    },
    /// Republish on this broker.
    Mqtt {
        /// Topic template, `${field}` from the output.
        topic: String,
    },
    /// Rows in a PostgreSQL table (docs/pipelines.md, "PostgreSQL sink").
    Postgres {
        /// `postgres://user[:password]@host[:port]/db`.
        url: String,
        /// The target table.
        table: String,
        /// Columns written (default: the output's fields).
        #[serde(default)]
        columns: Vec<String>,
        /// Idempotency key columns (default: none, at least once).
        #[serde(default)]
        key: Vec<String>,
        /// PEM certificates trusted beside the Mozilla roots with `sslmode=require`;
        /// relative paths are under `store.data_dir`.
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// Publish to NATS JetStream.
    Nats(NatsEntry),
    /// Send to an HTTP webhook.
    Http(HttpEntry),
}

/// `sink = { type = "nats", url, subject, key, ack_timeout_ms }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsEntry {
    /// `nats://host:port`.
    pub url: String,
    /// Subject template, `${field}` from the output.
    pub subject: String,
    /// Output fields making the `Nats-Msg-Id` (none: no id, at least once).
    #[serde(default)]
    pub key: Vec<String>,
    /// How long to wait for a PubAck (1 to 300,000 ms; default 5000).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
}

fn default_ack_timeout_ms() -> u64 {
    5000
}

/// `sink = { type = "http", url, method, headers, per_record, timeout_ms, concurrency, key,
/// retry = { min_ms, max_ms, attempts }, breaker = { failures, cooldown_ms } }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpEntry {
    /// `http://` or `https://` URL.
    pub url: String,
    /// `POST` (default), `PUT` or `PATCH`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// One request per record (default: one per batch, a JSON array).
    #[serde(default)]
    pub per_record: bool,
    /// One request's whole exchange at most (1 to 300,000 ms; default 10,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at most (1 to 256; default 4).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Output fields making the `Idempotency-Key` (none: no header).
    #[serde(default)]
    pub key: Vec<String>,
    /// Retries of a failed request.
    #[serde(default)]
    pub retry: RetryEntry,
    /// The circuit breaker.
    #[serde(default)]
    pub breaker: BreakerEntry,
}

fn default_method() -> String {
    "POST".into()
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_concurrency() -> usize {
    4
}

/// `retry = { min_ms, max_ms, attempts }` of the HTTP sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryEntry {
    /// The first delay (1 to 60,000 ms; default 100).
    pub min_ms: u64,
    /// The longest delay (min_ms to 600,000 ms; default 10,000).
    pub max_ms: u64,
    /// Attempts per request before the write fails as transient (1 to 100; default 3).
    pub attempts: u32,
}

impl Default for RetryEntry {
    fn default() -> Self {
        RetryEntry {
            min_ms: 100,
            max_ms: 10_000,
            attempts: 3,
        }
    }
}

/// `breaker = { failures, cooldown_ms }` of the HTTP sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerEntry {
    /// Consecutive failed requests that open it (1 to 1000; default 5).
    pub failures: u32,
    /// How long it stays open before a probe (1 to 3,600,000 ms; default 5000).
    pub cooldown_ms: u64,
}

impl Default for BreakerEntry {
    fn default() -> Self {
        BreakerEntry {
            failures: 5,
            cooldown_ms: 5000,
        }
    }
}

/// The NATS sink's config, or the problem (starting with the key under `sink`).
fn nats_sink(entry: &NatsEntry) -> std::result::Result<SinkConfig, String> {
    NatsSinkConfig::new(&entry.url, &entry.subject, &entry.key, entry.ack_timeout_ms)
        .map(SinkConfig::Nats)
}

/// The HTTP sink's config, or the problem (starting with the key under `sink`).
fn http_sink(entry: &HttpEntry) -> std::result::Result<SinkConfig, String> {
    let config = HttpSinkConfig {
        url: entry.url.clone(),
        method: entry.method.clone(),
        headers: entry.headers.clone().into_iter().collect(),
        per_record: entry.per_record,
        timeout: Duration::from_millis(entry.timeout_ms),
        concurrency: entry.concurrency,
        retry_min: Duration::from_millis(entry.retry.min_ms),
        retry_max: Duration::from_millis(entry.retry.max_ms),
        retry_attempts: entry.retry.attempts,
        breaker_failures: entry.breaker.failures,
        breaker_cooldown: Duration::from_millis(entry.breaker.cooldown_ms),
        key: KeyFields::new(&entry.key).map_err(|e| format!("key: {e}"))?,
    };
    config.validate()?;
    Ok(SinkConfig::Http(config))
}

fn file(base: &Path, path: &Path, max_file_bytes: u64, keep_files: u32) -> FileSinkConfig {
    FileSinkConfig {
        path: base.join(path),
        max_file_bytes,
        keep_files,
        ..FileSinkConfig::new(path)
    }
}

/// Checks `entries` and builds the runtime configs, relative paths under `base`; a telemetry
/// source needs `telemetry_enabled`. The error names the key: `invalid value for
/// pipelines[0].sql: ...`.
pub fn build(
    entries: &[PipelineEntry],
    base: &Path,
    telemetry_enabled: bool,
) -> Result<Vec<PipelineConfig>> {
    if entries.len() > MAX_PIPELINES {
        bail!("invalid value for pipelines: at most {MAX_PIPELINES} pipelines");
    }
    let mut names = HashSet::new();
    // Every file (sink and dead letters) has one writer.
    let mut files = HashSet::new();
    let mut built = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let key = |k: &str| format!("invalid value for pipelines[{i}].{k}");
        let config = build_entry(entry, base, telemetry_enabled, &key)?;
        if !names.insert(entry.name.as_str()) {
            bail!("{}: {:?} is used twice", key("name"), entry.name);
        }
        for (field, path) in written_files(&config) {
            if !files.insert(path.clone()) {
                bail!(
                    "{}: {} is written by another sink or pipeline",
                    key(field),
                    path.display()
                );
            }
        }
        built.push(config);
    }
    Ok(built)
}

/// The files `config` writes, each with its key: the file sink's and the dead-letter file.
pub fn written_files(config: &PipelineConfig) -> Vec<(&'static str, PathBuf)> {
    let mut files = Vec::with_capacity(2);
    if let SinkConfig::File(sink) = &config.sink {
        files.push(("sink.path", sink.path.clone()));
    }
    files.push(("dead_letter.path", config.dead_letter.path.clone()));
    files
}

/// Checks one entry and builds its runtime config (a telemetry source needs
/// `telemetry_enabled`); `key("sink.path")` is the start of an error about that field.
pub fn build_entry(
    entry: &PipelineEntry,
    base: &Path,
    telemetry_enabled: bool,
    key: &dyn Fn(&str) -> String,
) -> Result<PipelineConfig> {
    if let Err(problem) = runtime::validate_name(&entry.name) {
        bail!("{}: {problem}", key("name"));
    }
    let rule = match Rule::compile(&entry.sql) {
        Ok(rule) => rule,
        Err(error) => bail!("{}: {error}", key("sql")),
    };
    let batch = BatchConfig {
        max_records: entry.batch.max_records,
        max_bytes: entry.batch.max_bytes,
        max_age_ms: entry.batch.max_age_ms,
    };
    if let Err(error) = batch.validate() {
        bail!("{}: {error}", key(&format!("batch.{}", error.key)));
    }
    let Ok(in_flight) = u16::try_from(entry.in_flight) else {
        bail!("{}: between 1 and 65535", key("in_flight"));
    };
    if in_flight == 0 {
        bail!("{}: between 1 and 65535", key("in_flight"));
    }
    let sink = build_sink(&entry.sink, base, key)?;
    let source = build_source(entry, base, telemetry_enabled, key)?;
    if let Some(topic) = source.topic(&entry.name)
        && !rule.matches_topic(&topic)
    {
        bail!(
            "{}: FROM '{}' does not match the source's topic {topic:?}",
            key("sql"),
            rule.topic_filter().as_str()
        );
    }
    let deadline_ms = entry.deadline_ms;
    if let Some(ms) = deadline_ms
        && !(runtime::MIN_DEADLINE_MS..=runtime::MAX_DEADLINE_MS).contains(&ms)
    {
        bail!(
            "{}: between {} and {} ms",
            key("deadline_ms"),
            runtime::MIN_DEADLINE_MS,
            runtime::MAX_DEADLINE_MS
        );
    }
    let dead_letter = file(
        base,
        &entry.dead_letter.path,
        entry.dead_letter.max_file_bytes,
        entry.dead_letter.keep_files,
    );
    if let Err(problem) = dead_letter.validate() {
        bail!("{}", key(&format!("dead_letter.{problem}")));
    }
    Ok(PipelineConfig {
        source,
        name: entry.name.clone(),
        rule,
        batch,
        in_flight,
        sink,
        dead_letter,
        deadline_ms,
        tracer: None,
    })
}

/// The sink of an entry.
fn build_sink(sink: &SinkEntry, base: &Path, key: &dyn Fn(&str) -> String) -> Result<SinkConfig> {
    Ok(match sink {
        SinkEntry::File {
            path,
            max_file_bytes,
            keep_files,
            max_file_age_ms,
            format,
            columns,
        } => {
            let mut config = file(base, path, *max_file_bytes, *keep_files);
            config.max_file_age_ms = *max_file_age_ms;
            config.format = match format {
                FileFormatEntry::Jsonl if !columns.is_empty() => {
                    bail!("{}: only with format = \"csv\"", key("sink.columns"))
                }
                FileFormatEntry::Jsonl => OutputFormat::Jsonl,
                FileFormatEntry::Csv => OutputFormat::Csv {
                    columns: columns.clone(),
                },
            };
            if let Err(problem) = config.validate() {
                bail!("{}", key(&format!("sink.{problem}")));
            }
            SinkConfig::File(config)
        }
        SinkEntry::Mqtt { topic } => match TopicTemplate::parse(topic) {
            Ok(topic) => SinkConfig::Mqtt { topic },
            Err(error) => bail!("{}: {error}", key("sink.topic")),
        },
        SinkEntry::Postgres {
            url,
            table,
            columns,
            key: key_columns,
            ca_file,
        } => {
            let ca_certs = match ca_file {
                Some(path) => runtime::pg_tls::load_ca_file(&base.join(path))
                    .or_else(|p| bail!("{}", key(&format!("sink.{p}"))))?,
                None => Vec::new(),
            };
            let config = PostgresSinkConfig {
                url: url.clone(),
                table: table.clone(),
                columns: columns.clone(),
                key: key_columns.clone(),
                ca_certs,
            };
            if let Err(problem) = config.validate() {
                bail!("{}", key(&format!("sink.{problem}")));
            }
            SinkConfig::Postgres(config)
        }
        SinkEntry::Nats(nats) => {
            nats_sink(nats).or_else(|p| bail!("{}", key(&format!("sink.{p}"))))?
        }
        SinkEntry::Http(http) => {
            http_sink(http).or_else(|p| bail!("{}", key(&format!("sink.{p}"))))?
        }
    })
}

/// The source of an entry.
fn build_source(
    entry: &PipelineEntry,
    base: &Path,
    telemetry_enabled: bool,
    key: &dyn Fn(&str) -> String,
) -> Result<SourceConfig> {
    // A source's position: `{data_dir}/pipelines/{name}.checkpoint`.
    let checkpoint = || {
        base.join("pipelines")
            .join(format!("{}.checkpoint", entry.name))
    };
    let source = match &entry.source {
        None | Some(SourceEntry::Mqtt) => SourceConfig::Mqtt,
        Some(SourceEntry::Files {
            dir,
            format,
            poll_ms,
            max_line_bytes,
            delete_done,
        }) => {
            let config = FilesSourceConfig {
                dir: base.join(dir),
                format: match format {
                    FileFormatEntry::Jsonl => FileFormat::Jsonl,
                    FileFormatEntry::Csv => FileFormat::Csv,
                },
                poll_ms: *poll_ms,
                max_line_bytes: *max_line_bytes,
                checkpoint: checkpoint(),
                delete_done: *delete_done,
            };
            if let Err(problem) = config.validate() {
                bail!("{}", key(&format!("source.{problem}")));
            }
            SourceConfig::Files(config)
        }
        Some(SourceEntry::Http {
            max_line_bytes,
            max_body_bytes,
        }) => {
            let config = HttpSourceConfig::new(*max_line_bytes, *max_body_bytes);
            if let Err(problem) = config.validate() {
                bail!("{}", key(&format!("source.{problem}")));
            }
            SourceConfig::Http(config)
        }
        Some(SourceEntry::HttpPoll {
            url,
            interval_ms,
            headers,
            timeout_ms,
            max_response_bytes,
        }) => {
            let config = HttpPollConfig {
                url: url.clone(),
                interval_ms: *interval_ms,
                headers: headers.clone().into_iter().collect(),
                timeout: Duration::from_millis(*timeout_ms),
                max_response_bytes: *max_response_bytes,
            };
            if let Err(problem) = config.validate() {
                bail!("{}", key(&format!("source.{problem}")));
            }
            SourceConfig::HttpPoll(config)
        }
        Some(SourceEntry::Postgres(pg)) => match postgres_source(pg, checkpoint()) {
            Ok(config) => SourceConfig::Postgres(config),
            Err(problem) => bail!("{}", key(&format!("source.{problem}"))),
        },
        Some(SourceEntry::Telemetry(t)) => {
            if !telemetry_enabled {
                bail!(
                    "{}: the telemetry store is disabled (telemetry.enabled = false)",
                    key("source.type")
                );
            }
            match telemetry_source_config(t, checkpoint()) {
                Ok(config) => SourceConfig::Telemetry(config),
                Err(problem) => bail!("{}", key(&format!("source.{problem}"))),
            }
        }
    };
    Ok(source)
}

/// The first delay before a failed pipeline is started again; it doubles per failure in a
/// row, up to [`RESTART_MAX`], and starts over after a run of [`RESTART_MAX`] or longer.
pub const RESTART_MIN: Duration = Duration::from_secs(1);
/// The longest delay before a failed pipeline is started again.
pub const RESTART_MAX: Duration = Duration::from_secs(60);

/// Worker threads of the pipelines' own runtime, at most (fewer on fewer cores).
pub const PIPELINE_THREADS: usize = 2;

/// The pipelines' own tokio runtime (threads `myriad-pipelines`, at most
/// [`PIPELINE_THREADS`]), on which [`manager::Manager`] runs every pipeline.
///
/// On the broker's runtime a pipeline's tasks take their turn among every connection task,
/// so with 10,000 devices publishing its source got one poll in 10,000 and fell behind until
/// publishing stopped. On their own threads the operating system shares the CPU between the
/// broker and the pipelines instead. The runtime must be dropped off any async context (the
/// manager drops it on a thread of its own once every pipeline drained).
pub fn pipelines_runtime() -> Result<tokio::runtime::Runtime> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(PIPELINE_THREADS);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("myriad-pipelines")
        .enable_all()
        .build()
        .context("cannot start the pipelines' runtime")
}

/// Runs `pipeline` until `shutdown`, starting it again with backoff whenever it ends first
/// (except a one-shot source that finished: it stays `finished`).
pub(crate) async fn supervise(
    pipeline: PipelineConfig,
    broker: BrokerHandle,
    telemetry: Option<Arc<dyn TelemetryStore>>,
    shutdown: CancellationToken,
    status: Arc<PipelineStatus>,
) {
    let name = pipeline.name.clone();
    let mut delay = RESTART_MIN;
    loop {
        status.set_state(PipelineState::Starting, None, runtime::now_ms());
        let started = tokio::time::Instant::now();
        let outcome = runtime::run_with_status(
            pipeline.clone(),
            broker.clone(),
            shutdown.clone(),
            STOP_GRACE,
            status.clone(),
            telemetry.clone(),
        )
        .await;
        if shutdown.is_cancelled() {
            return;
        }
        let error = match outcome {
            Ok(Ended::Finished) => {
                tracing::info!(pipeline = %name, "pipeline finished: its source was read whole");
                return;
            }
            Ok(Ended::Stopped) => "ended before the shutdown".to_owned(),
            Err(error) => error.to_string(),
        };
        tracing::error!(pipeline = %name, %error, retry_in_secs = delay.as_secs(), "pipeline stopped; starting it again");
        metrics::counter!("myriad_pipeline_failures_total", "pipeline" => name.clone())
            .increment(1);
        status.set_state(PipelineState::Failed, Some(&error), runtime::now_ms());
        if started.elapsed() >= RESTART_MAX {
            delay = RESTART_MIN;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(RESTART_MAX);
    }
}
