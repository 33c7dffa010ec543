//! The telemetry service: `devices/{id}/telemetry` messages into the telemetry store, and the
//! queries the HTTP API answers from it.
//!
//! The service is the broker's [`IngestSink`]: a device's connection hands every message the
//! device publishes to its own `devices/{id}/telemetry` (the device it logged in as; its ACL
//! says so) to [`TelemetryService`] before the broker routes and acknowledges it. Payloads are
//! parsed there, in the connection's task (cheap, bounded by [`TelemetryLimits`]); the samples
//! go over a bounded queue ([`QUEUE`] jobs; a full queue holds the sending connections) to one
//! writer thread that owns the [`FileDb`]. The writer appends every write job waiting (up to
//! [`GROUP_JOBS`]) to the WAL, syncs once (when `[store] fsync` is on) and only then answers
//! them: a QoS 1 PUBLISH is acknowledged once its points are in the WAL as durably as the store
//! policy says (group commit: one fsync for every device that wrote meanwhile). Seals (every
//! [`TelemetryConfig::seal_interval_secs`], and at shutdown) and queries run on the writer
//! thread too, never on the event loop.
//!
//! Only the device itself writes its telemetry over MQTT: an application or admin client
//! publishing to `devices/{id}/telemetry` is routed as any message but not stored.
//!
//! Bulk writes ([`TelemetryService::write_durable`], the HTTP write API) go through the same
//! queue but wait for the writer's reply, which comes after the WAL append (and fsync when
//! `[store] fsync`): their success means durable.
//!
//! Retention ([`TelemetryConfig::retention`] per metric pattern, else
//! [`TelemetryConfig::raw_retention_days`] / [`TelemetryConfig::rollup_retention_days`]):
//! samples older than their metric's raw retention are refused at ingest ([`Refusal::Expired`]);
//! at start (after sealing what the WAL replayed, before any job) and after each seal (queued
//! for the compactor) the writer rewrites each
//! partition (one UTC day) that crossed a retention duration since it was last rewritten: each
//! series kept, cut to its rollups or left out as its rule says; partitions past every rule's
//! rollup retention are deleted ([`FileDb::queue_retention`]).
//!
//! Compaction ([`FileDb::compaction_work`]): retention rewrites, level merges of the blocks
//! seals wrote, and one merge of each day once it is an hour old run on the writer thread in
//! steps of [`COMPACTION_STEP_SERIES`] series: one step after each job while jobs arrive,
//! steps back to back while the queue is empty. So a day's merge of a large fleet never holds
//! the writes queued behind it for longer than a step.
//!
//! Export ([`TelemetryService::export_chunk`]) reads one metric at most one day at a time and
//! at most [`EXPORT_CHUNK_POINTS`] points per job, so a long export holds bounded memory and
//! shares the writer with ingest between chunks.
//!
//! Counters: [`crate::metrics::TELEMETRY_POINTS_TOTAL`] (samples stored) and
//! [`crate::metrics::TELEMETRY_POINTS_REFUSED_TOTAL`] by `reason` ([`Refusal::as_str`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use myriad_broker::hooks::{Acl, BoxFuture, IngestRefused, IngestSink};
use myriad_tsdb::file::Work;
use myriad_tsdb::index::{DEVICE_LABEL, METRIC_LABEL};
use myriad_tsdb::promql::{self, SeriesSource};
use myriad_tsdb::{
    Agg, AppendError, Db, DbConfig, DbError, FileDb, FileDbError, Point, PointError,
    RetentionPolicy, RetentionRule, SeriesId, SeriesKey, Value,
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::now_ms;
use crate::telemetry::{Refusal, Sample, TelemetryLimits, parse};

/// How often the ticker thread wakes the writer to check whether a seal is due.
pub const TICK: Duration = Duration::from_millis(250);

/// Jobs waiting for the writer thread.
pub const QUEUE: usize = 1_024;
/// Most write jobs one WAL sync covers.
pub const GROUP_JOBS: usize = 256;

/// Most points one export job returns.
pub const EXPORT_CHUNK_POINTS: usize = 10_000;

/// Most empty days one export job walks over (after jumping to the series' first data) before
/// it returns with a cursor to go on.
const EXPORT_MAX_WINDOWS: usize = 4_096;

const DAY_MS: i64 = 86_400_000;

/// The `[telemetry]` config table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Whether `myriad serve` stores telemetry (default `true`).
    pub enabled: bool,
    /// Seconds between seals of the head into blocks (default 600; 1 to 86,400).
    pub seal_interval_secs: u64,
    /// Days raw points are kept (default 30; 1 to 36,500): older samples are refused at
    /// ingest, and sealed days that ended before are reduced to their rollups.
    pub raw_retention_days: u32,
    /// Days rollups (and so anything) are kept (default 365; at least `raw_retention_days`,
    /// at most 36,500): sealed days that ended before are deleted.
    pub rollup_retention_days: u32,
    /// Retention per metric pattern (`[[telemetry.retention]]`, at most 64, the first whose
    /// pattern matches a metric applies); other metrics keep the two values above.
    pub retention: Vec<MetricRetention>,
}

/// One `[[telemetry.retention]]` rule: how long raw points and rollups of the metrics matching
/// `metrics` are kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRetention {
    /// Metric name pattern, `*` matching any run of characters (`debug.*`, `*_raw`); 1 to 256
    /// bytes.
    pub metrics: String,
    /// Days raw points are kept (1 to 36,500).
    pub raw_days: u32,
    /// Days rollups are kept (`raw_days` to 36,500).
    pub rollup_days: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            seal_interval_secs: 600,
            raw_retention_days: 30,
            rollup_retention_days: 365,
            retention: Vec::new(),
        }
    }
}

fn days_ms(d: u32) -> i64 {
    i64::from(d) * DAY_MS
}

impl TelemetryConfig {
    /// Checks the values; `Err` names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=86_400).contains(&self.seal_interval_secs) {
            return Err("seal_interval_secs: between 1 and 86400".into());
        }
        if !(1..=36_500).contains(&self.raw_retention_days) {
            return Err("raw_retention_days: between 1 and 36500".into());
        }
        if !(self.raw_retention_days..=36_500).contains(&self.rollup_retention_days) {
            return Err("rollup_retention_days: between raw_retention_days and 36500".into());
        }
        if self.retention.len() > myriad_tsdb::retention::MAX_RULES {
            return Err(format!(
                "retention: at most {} rules",
                myriad_tsdb::retention::MAX_RULES
            ));
        }
        for (i, r) in self.retention.iter().enumerate() {
            if !(1..=myriad_tsdb::retention::MAX_PATTERN_LEN).contains(&r.metrics.len()) {
                return Err(format!("retention[{i}].metrics: 1 to 256 bytes"));
            }
            if !(1..=36_500).contains(&r.raw_days) {
                return Err(format!("retention[{i}].raw_days: between 1 and 36500"));
            }
            if !(r.raw_days..=36_500).contains(&r.rollup_days) {
                return Err(format!(
                    "retention[{i}].rollup_days: between raw_days and 36500"
                ));
            }
        }
        Ok(())
    }

    /// The retention policy these values give the store.
    pub fn policy(&self) -> Result<RetentionPolicy, String> {
        RetentionPolicy::new(
            self.retention
                .iter()
                .map(|r| RetentionRule {
                    pattern: r.metrics.clone(),
                    raw_ms: days_ms(r.raw_days),
                    rollup_ms: days_ms(r.rollup_days),
                })
                .collect(),
            days_ms(self.raw_retention_days),
            days_ms(self.rollup_retention_days),
        )
        .map_err(|e| e.to_string())
    }
}

/// One device's samples of a bulk write.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSamples {
    /// The device id.
    pub device: String,
    /// Its samples.
    pub samples: Vec<crate::telemetry::ParsedSample>,
}

/// What a bulk write stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Samples stored (in the WAL).
    pub written: usize,
    /// Samples the store refused, by reason.
    pub refused: std::collections::BTreeMap<Refusal, usize>,
}

/// One piece of an export: points of one metric, and where to go on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportChunk {
    /// Points by time.
    pub points: Vec<StoredPoint>,
    /// The `from` of the next chunk of this metric, `None` when the range is done.
    pub next: Option<i64>,
}

/// Why a telemetry query failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The writer thread has stopped.
    #[error("the telemetry store is stopped")]
    Stopped,
    /// The store could not write (a disk error).
    #[error("the telemetry store could not write: {0}")]
    Write(String),
    /// The query was refused (bad step, too many buckets).
    #[error(transparent)]
    Query(#[from] DbError),
}

/// One stored value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredPoint {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// The value.
    pub value: Sample,
}

/// One metric's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSeries<T> {
    /// The metric name.
    pub metric: String,
    /// Its points, by time.
    pub points: Vec<T>,
}

type Reply<T> = oneshot::Sender<Result<T, TelemetryError>>;

/// What a query reads: `device`'s `metrics` (all its metrics if empty)
/// with `from <= ts < to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryRange {
    /// The device id.
    pub device: String,
    /// Metric names; empty for all of the device's.
    pub metrics: Vec<String>,
    /// Start, Unix ms, included.
    pub from: i64,
    /// End, Unix ms, excluded.
    pub to: i64,
}

enum Job {
    /// Store these devices' samples; answered once they are in the WAL (and synced), or why
    /// not. Write jobs waiting together share one sync (group commit).
    Write {
        batches: Vec<DeviceSamples>,
        reply: Reply<WriteOutcome>,
    },
    Raw {
        range: TelemetryRange,
        reply: Reply<Vec<MetricSeries<StoredPoint>>>,
    },
    Aggregate {
        range: TelemetryRange,
        step: i64,
        agg: Agg,
        reply: Reply<Vec<MetricSeries<(i64, f64)>>>,
    },
    Latest {
        device: String,
        reply: Reply<Vec<MetricSeries<StoredPoint>>>,
    },
    /// A read-only job over the database (PromQL, multi-device queries); it sends its own reply.
    Read(Box<dyn FnOnce(&Db) + Send>),
    /// Seal what the head holds, apply retention and stop; answered once done.
    Stop(oneshot::Sender<()>),
    /// Nothing to do but check whether a seal is due (sent every [`TICK`] by the ticker
    /// thread, so a quiet store still seals, applies retention and compacts).
    Tick,
    Metrics {
        device: String,
        reply: Reply<Vec<String>>,
    },
    Export {
        device: String,
        metric: String,
        from: i64,
        to: i64,
        limit: usize,
        reply: Reply<ExportChunk>,
    },
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct TelemetryService {
    jobs: mpsc::Sender<Job>,
    limits: TelemetryLimits,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl TelemetryService {
    /// Opens (recovering) the store in `dir` and starts its writer thread. Blocking: call it
    /// before the event loop runs or from the blocking pool.
    pub fn open(
        dir: impl Into<PathBuf>,
        fsync: bool,
        config: TelemetryConfig,
    ) -> Result<TelemetryService, FileDbError> {
        let (mut db, report) = FileDb::open(dir, DbConfig::default(), fsync)?;
        // `validate` ran at config load; a policy it lets through cannot fail here, but if it
        // did, keeping everything loses nothing.
        match config.policy() {
            Ok(policy) => db.set_retention(policy),
            Err(e) => error!(error = %e, "telemetry retention policy refused; keeping everything"),
        }
        info!(
            dir = %db.dir().display(),
            blocks = report.blocks,
            segments = report.segments,
            series = report.series,
            points = report.points,
            torn = report.torn.len(),
            bad_blocks = report.bad_blocks.len(),
            "telemetry store opened"
        );
        for r in Refusal::ALL {
            metrics::counter!(crate::metrics::TELEMETRY_POINTS_REFUSED_TOTAL, "reason" => r.as_str())
                .increment(0);
        }
        metrics::counter!(crate::metrics::TELEMETRY_POINTS_TOTAL).increment(0);
        let (tx, rx) = mpsc::channel(QUEUE);
        let interval = Duration::from_secs(config.seal_interval_secs);
        let spawn_error = |source| FileDbError::Io {
            op: "spawn writer thread",
            path: PathBuf::new(),
            source,
        };
        std::thread::Builder::new()
            .name("telemetry-writer".into())
            .spawn(move || writer(db, rx, interval))
            .map_err(spawn_error)?;
        // The ticker holds only a weak sender: once the service is gone it stops, and the
        // writer sees its queue closed. A full queue skips a tick (the writer is busy anyway).
        let weak = tx.downgrade();
        std::thread::Builder::new()
            .name("telemetry-ticker".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    let Some(tx) = weak.upgrade() else { break };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Job::Tick) {
                        break;
                    }
                }
            })
            .map_err(spawn_error)?;
        Ok(TelemetryService {
            jobs: tx,
            limits: TelemetryLimits::default(),
        })
    }

    /// The per-message limits.
    pub fn limits(&self) -> &TelemetryLimits {
        &self.limits
    }

    /// Parses one payload from `device` and stores its samples; resolves once they are in the
    /// WAL. Returns how many samples parsing refused (counted in the metric; store refusals are
    /// counted by the writer). `Err` when the store could not write (the samples are counted as
    /// refused with reason `store`).
    pub async fn ingest(
        &self,
        device: &str,
        payload: &[u8],
        arrival_ms: i64,
    ) -> Result<usize, TelemetryError> {
        let parsed = parse(payload, arrival_ms, &self.limits);
        for r in &parsed.refused {
            refused(*r, 1);
        }
        if !parsed.samples.is_empty() {
            let n = parsed.samples.len() as u64;
            let stored = self
                .write_durable(vec![DeviceSamples {
                    device: device.to_owned(),
                    samples: parsed.samples,
                }])
                .await;
            if let Err(e) = stored {
                // A write the writer failed it counted itself; one it never saw is counted here.
                if matches!(e, TelemetryError::Stopped) {
                    refused(Refusal::Store, n);
                }
                return Err(e);
            }
        }
        Ok(parsed.refused.len())
    }

    async fn ask<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, TelemetryError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(job(tx))
            .await
            .map_err(|_| TelemetryError::Stopped)?;
        rx.await.map_err(|_| TelemetryError::Stopped)?
    }

    /// Raw points in `range`.
    pub async fn raw(
        &self,
        range: TelemetryRange,
    ) -> Result<Vec<MetricSeries<StoredPoint>>, TelemetryError> {
        self.ask(|reply| Job::Raw { range, reply }).await
    }

    /// `agg` per `step` ms bucket over `range`.
    pub async fn aggregate(
        &self,
        range: TelemetryRange,
        step: i64,
        agg: Agg,
    ) -> Result<Vec<MetricSeries<(i64, f64)>>, TelemetryError> {
        self.ask(|reply| Job::Aggregate {
            range,
            step,
            agg,
            reply,
        })
        .await
    }

    /// Runs `read` on the writer thread over the database and answers what it returns (the
    /// PromQL and multi-device queries). `read` must be bounded: writes wait while it runs.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Db) -> T + Send + 'static,
    ) -> Result<T, TelemetryError> {
        let (job, answer) = read_job(read);
        self.jobs
            .send(job)
            .await
            .map_err(|_| TelemetryError::Stopped)?;
        answer.await.map_err(|_| TelemetryError::Stopped)
    }

    /// As [`TelemetryService::read`], from a thread that may block (the blocking pool, never
    /// the event loop): waits for room in the queue and for the answer.
    pub fn read_blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Db) -> T + Send + 'static,
    ) -> Result<T, TelemetryError> {
        let (job, answer) = read_job(read);
        self.jobs
            .blocking_send(job)
            .map_err(|_| TelemetryError::Stopped)?;
        answer.blocking_recv().map_err(|_| TelemetryError::Stopped)
    }

    /// Stops the writer once it has sealed the head into blocks and applied retention (call it
    /// at shutdown, after the broker and the API stopped): until then a stop would leave the
    /// head to the WAL, replayed and sealed at the next start. Later calls return at once.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The newest point of each of `device`'s metrics.
    pub async fn latest(
        &self,
        device: &str,
    ) -> Result<Vec<MetricSeries<StoredPoint>>, TelemetryError> {
        let device = device.to_owned();
        self.ask(|reply| Job::Latest { device, reply }).await
    }

    /// Counts `n` samples refused by `reason` in
    /// [`crate::metrics::TELEMETRY_POINTS_REFUSED_TOTAL`] (for callers that parse themselves).
    pub fn count_refused(&self, reason: Refusal, n: usize) {
        refused(reason, n as u64);
    }

    /// Stores `batches` and waits until the writer has appended them to the WAL (fsynced when
    /// so configured); what was stored and what the store refused. Rule refusals of the caller's
    /// parsing are the caller's to count.
    pub async fn write_durable(
        &self,
        batches: Vec<DeviceSamples>,
    ) -> Result<WriteOutcome, TelemetryError> {
        self.ask(|reply| Job::Write { batches, reply }).await
    }

    /// The names of `device`'s metrics, sorted.
    pub async fn metrics(&self, device: &str) -> Result<Vec<String>, TelemetryError> {
        let device = device.to_owned();
        self.ask(|reply| Job::Metrics { device, reply }).await
    }

    /// Up to `limit` (at most [`EXPORT_CHUNK_POINTS`]) raw points of `device`'s `metric` with
    /// `from <= ts < to`, read at most one day at a time; follow [`ExportChunk::next`].
    pub async fn export_chunk(
        &self,
        device: &str,
        metric: &str,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<ExportChunk, TelemetryError> {
        let (device, metric) = (device.to_owned(), metric.to_owned());
        let limit = limit.clamp(1, EXPORT_CHUNK_POINTS);
        self.ask(|reply| Job::Export {
            device,
            metric,
            from,
            to,
            limit,
            reply,
        })
        .await
    }
}

/// The topic a device's telemetry goes to.
fn telemetry_topic(device: &str) -> String {
    format!("devices/{device}/telemetry")
}

impl IngestSink for TelemetryService {
    /// A device connection's own `devices/{id}/telemetry`; nothing for other clients.
    fn topic_for(&self, _client_id: &str, acl: Option<&dyn Acl>) -> Option<String> {
        acl?.device().map(telemetry_topic)
    }

    fn ingest(&self, topic: &str, payload: Bytes) -> BoxFuture<'static, Result<(), IngestRefused>> {
        let service = self.clone();
        let device = topic
            .strip_prefix("devices/")
            .and_then(|t| t.strip_suffix("/telemetry"))
            .unwrap_or_default()
            .to_owned();
        Box::pin(async move {
            service
                .ingest(&device, &payload, now_ms() as i64)
                .await
                .map(|_| ())
                .map_err(|e| IngestRefused(e.to_string()))
        })
    }
}

/// A [`Job::Read`] running `read`, and where its answer arrives.
fn read_job<T: Send + 'static>(
    read: impl FnOnce(&Db) -> T + Send + 'static,
) -> (Job, oneshot::Receiver<T>) {
    let (tx, rx) = oneshot::channel();
    let job = Job::Read(Box::new(move |db: &Db| {
        let _ = tx.send(read(db));
    }));
    (job, rx)
}

/// A PromQL [`SeriesSource`] over the store whose every call (one selector's series, one
/// series' points) is its own job on the writer thread: a long query is read series by series,
/// and the write groups of devices waiting for their acknowledgements go in between, instead of
/// waiting for the whole query. Use it from the blocking pool only (each call blocks).
#[derive(Debug, Clone)]
pub struct SlicedReads(pub TelemetryService);

impl SeriesSource for SlicedReads {
    fn select(
        &self,
        sel: &promql::Selector,
        limits: &promql::PromLimits,
    ) -> Result<Vec<(SeriesId, promql::Labels)>, promql::PromError> {
        let (sel, limits) = (sel.clone(), *limits);
        self.0
            .read_blocking(move |db| promql::select(db.engine().index(), &sel, &limits))
            .map_err(|e| promql::PromError::Unavailable(e.to_string()))?
    }

    fn raw(&self, id: SeriesId, from: i64, to: i64) -> Result<Vec<Point>, promql::PromError> {
        Ok(self
            .0
            .read_blocking(move |db| db.raw(id, from, to))
            .map_err(|e| promql::PromError::Unavailable(e.to_string()))??)
    }
}

fn refused(r: Refusal, n: u64) {
    metrics::counter!(crate::metrics::TELEMETRY_POINTS_REFUSED_TOTAL, "reason" => r.as_str())
        .increment(n);
}

fn to_sample(v: Value) -> Sample {
    match v {
        Value::Bool(b) => Sample::Bool(b),
        Value::F64(f) => Sample::Number(f),
        Value::I64(i) => Sample::Number(i as f64),
    }
}

/// The series of `device` to answer for: the named metrics that exist, or all of them.
/// `read` of each series `range` names, with its metric.
fn per_metric<T>(
    db: &FileDb,
    range: &TelemetryRange,
    mut read: impl FnMut(SeriesId) -> Result<Vec<T>, TelemetryError>,
) -> Result<Vec<MetricSeries<T>>, TelemetryError> {
    series_of(db, &range.device, &range.metrics)
        .into_iter()
        .map(|(metric, id)| {
            Ok(MetricSeries {
                metric,
                points: read(id)?,
            })
        })
        .collect()
}

fn series_of(db: &FileDb, device: &str, metrics: &[String]) -> Vec<(String, SeriesId)> {
    let index = db.db().engine().index();
    if metrics.is_empty() {
        let ids = index.select(&[(DEVICE_LABEL, device)]).unwrap_or_default();
        let mut out: Vec<_> = ids
            .into_iter()
            .filter_map(|id| index.key(id).map(|k| (k.metric, id)))
            .collect();
        out.sort();
        out
    } else {
        metrics
            .iter()
            .filter_map(|m| {
                index
                    .select(&[(DEVICE_LABEL, device), (METRIC_LABEL, m)])
                    .ok()?
                    .first()
                    .map(|id| (m.clone(), *id))
            })
            .collect()
    }
}

fn writer(mut db: FileDb, mut jobs: mpsc::Receiver<Job>, seal_every: Duration) {
    // Points replayed from the WAL into the head join their blocks first, so retention at
    // start covers them too.
    maintain(&mut db, Retention::Whole);
    let mut compaction = Compactor::default();
    let mut next_seal = Instant::now() + seal_every;
    let mut next = jobs.blocking_recv();
    let mut stopped = None;
    while let Some(job) = next.take() {
        match job {
            Job::Write { batches, reply } => {
                // Group commit: every write waiting goes into the WAL before one sync.
                let mut group = vec![(batches, reply)];
                while group.len() < GROUP_JOBS {
                    match jobs.try_recv() {
                        Ok(Job::Write { batches, reply }) => group.push((batches, reply)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                write_group(&mut db, group, now_ms() as i64);
            }
            Job::Metrics { device, reply } => {
                let names = series_of(&db, &device, &[])
                    .into_iter()
                    .map(|(m, _)| m)
                    .collect();
                let _ = reply.send(Ok(names));
            }
            Job::Export {
                device,
                metric,
                from,
                to,
                limit,
                reply,
            } => {
                let _ = reply.send(export(&db, &device, &metric, from, to, limit));
            }
            Job::Raw { range, reply } => {
                let r = per_metric(&db, &range, |id| {
                    Ok(db
                        .db()
                        .raw(id, range.from, range.to)?
                        .into_iter()
                        .map(|p| StoredPoint {
                            ts: p.ts,
                            value: to_sample(p.value),
                        })
                        .collect())
                });
                let _ = reply.send(r);
            }
            Job::Aggregate {
                range,
                step,
                agg,
                reply,
            } => {
                let r = per_metric(&db, &range, |id| {
                    Ok(db.db().aggregate(id, range.from, range.to, step, agg)?)
                });
                let _ = reply.send(r);
            }
            Job::Latest { device, reply } => {
                let r = series_of(&db, &device, &[])
                    .into_iter()
                    .filter_map(|(metric, id)| match db.db().latest(id) {
                        Ok(Some(p)) => Some(Ok(MetricSeries {
                            metric,
                            points: vec![StoredPoint {
                                ts: p.ts,
                                value: to_sample(p.value),
                            }],
                        })),
                        Ok(None) => None,
                        Err(e) => Some(Err(e.into())),
                    })
                    .collect();
                let _ = reply.send(r);
            }
            Job::Read(read) => {
                // A bug in a query must not stop the store: the caller sees `Stopped`.
                let db = db.db();
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(db))).is_err() {
                    error!("telemetry read job panicked");
                }
            }
            Job::Tick => {}
            Job::Stop(done) => {
                stopped = Some(done);
                break;
            }
        }
        if Instant::now() >= next_seal {
            maintain(&mut db, Retention::Queued);
            next_seal = Instant::now() + seal_every;
        }
        // Under load a running compaction still moves: one step per job.
        if db.compaction_running() {
            compaction.step(&mut db);
        }
        if next.is_none() {
            // Idle: compaction steps until a job arrives or nothing is left to do.
            next = loop {
                match jobs.try_recv() {
                    Ok(job) => break Some(job),
                    Err(mpsc::error::TryRecvError::Disconnected) => break None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if !compaction.step(&mut db) {
                            break jobs.blocking_recv();
                        }
                    }
                }
            };
        }
    }
    // Later jobs are refused (their senders see `Stopped`); the store is sealed first. A
    // compaction under way is dropped (its inputs stay; it runs again after the restart).
    jobs.close();
    seal(&mut db);
    db.abandon();
    block_gauges(&db);
    info!("telemetry writer stopped");
    if let Some(done) = stopped {
        let _ = done.send(());
    }
}

type WriteJob = (Vec<DeviceSamples>, Reply<WriteOutcome>);

/// Appends each job's samples to the WAL (refusing those older than their metric's raw
/// retention at `now`), syncs once,
/// then answers every job: its outcome once its points are durable, or the error for a job
/// that could not be written (its samples counted as refused with reason `store`, the written
/// ones too when the sync failed).
fn write_group(db: &mut FileDb, group: Vec<WriteJob>, now: i64) {
    let mut answers = Vec::with_capacity(group.len());
    for (batches, reply) in group {
        let mut outcome = WriteOutcome::default();
        let mut failed = None;
        for b in &batches {
            let (o, result) = store(db, &b.device, &b.samples, now);
            outcome.written += o.written;
            for (r, n) in o.refused {
                *outcome.refused.entry(r).or_default() += n;
            }
            failed = failed.or(result.err());
        }
        answers.push((reply, outcome, failed));
    }
    let synced = sync(db);
    for (reply, outcome, failed) in answers {
        let answer = match (failed, &synced) {
            (Some(e), _) => Err(TelemetryError::Write(e)),
            (None, Err(e)) => {
                refused(Refusal::Store, outcome.written as u64);
                Err(TelemetryError::Write(e.clone()))
            }
            (None, Ok(())) => Ok(outcome),
        };
        let _ = reply.send(answer);
    }
}

/// Syncs the WAL (a no-op without `fsync`), logging a failure.
fn sync(db: &mut FileDb) -> Result<(), String> {
    db.sync().map_err(|e| {
        error!(error = %e, "telemetry WAL sync failed");
        e.to_string()
    })
}

/// Series one compaction step writes before the writer looks at its queue again (a step of a
/// day's merge of 1,000 devices x 4 metrics at 10 s takes a few ms per series written).
pub const COMPACTION_STEP_SERIES: usize = 64;

/// How long compaction pauses after it failed (a full disk, an unreadable block), so a
/// failure does not repeat in a tight loop.
const COMPACTION_RETRY: Duration = Duration::from_secs(60);

/// How [`maintain`] applies the retention due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retention {
    /// Every rewrite done before returning: at start, before the first job, so a store that
    /// was down while days expired answers without them.
    Whole,
    /// Rewrites queued for the stepwise compactor: every later round.
    Queued,
}

/// Seal, then the retention due (partitions nothing keeps deleted, rewrites done or queued),
/// and the block gauges.
fn maintain(db: &mut FileDb, how: Retention) {
    seal(db);
    let now = now_ms() as i64;
    let applied = match how {
        Retention::Whole => db.apply_retention(now),
        Retention::Queued => db.queue_retention(now),
    };
    match applied {
        Ok(r) if !r.dropped.is_empty() || !r.rewritten.is_empty() => {
            // Queued rewrites are counted by the compactor when they are done.
            if how == Retention::Whole {
                metrics::counter!(crate::metrics::TELEMETRY_COMPACTIONS_TOTAL, "kind" => "retention")
                    .increment(r.rewritten.len() as u64);
            }
            info!(
                ?how,
                rewritten = r.rewritten.len(),
                dropped = r.dropped.len(),
                "telemetry retention applied"
            );
        }
        Ok(_) => {}
        Err(e) => error!(error = %e, "telemetry retention failed"),
    }
    block_gauges(db);
}

/// Drives [`FileDb::compaction_work`] from the writer loop, one bounded step at a time.
#[derive(Debug, Default)]
struct Compactor {
    paused_until: Option<Instant>,
}

impl Compactor {
    /// Does one step; `false` when there is nothing to do (or compaction is paused).
    fn step(&mut self, db: &mut FileDb) -> bool {
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        self.paused_until = None;
        match db.compaction_work(now_ms() as i64, COMPACTION_STEP_SERIES) {
            Ok(Work::Idle) => false,
            Ok(Work::Progress) => true,
            Ok(Work::Abandoned(plan)) => {
                info!(
                    partition = plan.partition,
                    "telemetry compaction abandoned: its partition was dropped"
                );
                true
            }
            Ok(Work::Done(plan, r)) => {
                let kind = if plan.retain_at.is_some() {
                    "retention"
                } else if plan.level == myriad_tsdb::db::FULL_LEVEL {
                    "cold"
                } else {
                    "level"
                };
                metrics::counter!(crate::metrics::TELEMETRY_COMPACTIONS_TOTAL, "kind" => kind)
                    .increment(1);
                info!(
                    kind,
                    partition = plan.partition,
                    blocks = plan.inputs.len(),
                    level = plan.level,
                    series = r.series,
                    points = r.points,
                    bytes = r.bytes,
                    corrupt = r.corrupt,
                    raw_dropped_series = r.raw_dropped_series,
                    expired_series = r.expired_series,
                    "telemetry blocks compacted"
                );
                block_gauges(db);
                true
            }
            Err(e) => {
                error!(error = %e, "telemetry compaction failed; retrying in a minute");
                self.paused_until = Some(Instant::now() + COMPACTION_RETRY);
                false
            }
        }
    }
}

fn block_gauges(db: &FileDb) {
    let blocks = db.db().blocks().values().flatten();
    let (n, bytes) = blocks.fold((0usize, 0usize), |(n, b), v| (n + 1, b + v.len()));
    metrics::gauge!(crate::metrics::TELEMETRY_BLOCKS).set(n as f64);
    metrics::gauge!(crate::metrics::TELEMETRY_BLOCK_BYTES).set(bytes as f64);
}

fn seal(db: &mut FileDb) {
    match db.seal() {
        Ok(parts) if !parts.is_empty() => info!(partitions = parts.len(), "telemetry sealed"),
        Ok(_) => {}
        Err(e) => error!(error = %e, "telemetry seal failed"),
    }
}

/// Points of one metric for an export chunk (see [`TelemetryService::export_chunk`]).
fn export(
    db: &FileDb,
    device: &str,
    metric: &str,
    mut from: i64,
    to: i64,
    limit: usize,
) -> Result<ExportChunk, TelemetryError> {
    let Some((_, id)) = series_of(db, device, &[metric.to_owned()]).pop() else {
        return Ok(ExportChunk::default());
    };
    // Jump over the empty time before the series' first data at or after `from`: the first
    // block holding the series (its partition start), or the head's first point.
    let first_block = db.db().first_partition_with(id, from);
    let first_head = db
        .db()
        .engine()
        .head()
        .range(id, from, to)
        .first()
        .map(|p| p.ts);
    match first_block.into_iter().chain(first_head).min() {
        Some(start) => from = from.max(start),
        None => return Ok(ExportChunk::default()),
    }
    for _ in 0..EXPORT_MAX_WINDOWS {
        if from >= to {
            return Ok(ExportChunk::default());
        }
        let end = from
            .div_euclid(DAY_MS)
            .saturating_mul(DAY_MS)
            .saturating_add(DAY_MS)
            .min(to);
        let mut points = db.db().raw(id, from, end)?;
        if points.len() > limit {
            points.truncate(limit);
            let next = points.last().map(|p| p.ts.saturating_add(1));
            return Ok(ExportChunk {
                points: points.into_iter().map(stored).collect(),
                next,
            });
        }
        if !points.is_empty() {
            return Ok(ExportChunk {
                points: points.into_iter().map(stored).collect(),
                next: (end < to).then_some(end),
            });
        }
        from = end;
    }
    Ok(ExportChunk {
        points: Vec::new(),
        next: (from < to).then_some(from),
    })
}

fn stored(p: Point) -> StoredPoint {
    StoredPoint {
        ts: p.ts,
        value: to_sample(p.value),
    }
}

/// Appends one device's samples to the WAL without syncing (refusing those older than their
/// metric's raw retention at `now`), counting the metrics. The result is `Err` when the WAL could not be written
/// (the samples are then counted as refused with reason `store`).
fn store(
    db: &mut FileDb,
    device: &str,
    samples: &[crate::telemetry::ParsedSample],
    now: i64,
) -> (WriteOutcome, Result<(), String>) {
    let mut outcome = WriteOutcome::default();
    let mut refuse = |r: Refusal, n: usize| {
        refused(r, n as u64);
        *outcome.refused.entry(r).or_default() += n;
    };
    let mut batch = Vec::with_capacity(samples.len());
    for s in samples {
        let (raw_ms, _) = db.db().retention().for_metric(s.metric.as_str());
        if s.ts < now.saturating_sub(raw_ms) {
            refuse(Refusal::Expired, 1);
            continue;
        }
        match db.series(&SeriesKey::new(device, s.metric.as_str())) {
            Ok(id) => {
                let value = match s.value {
                    Sample::Number(f) => Value::F64(f),
                    Sample::Bool(b) => Value::Bool(b),
                };
                batch.push((id, Point { ts: s.ts, value }));
            }
            Err(e) => {
                warn!(device, metric = %s.metric, error = %e, "telemetry series refused");
                refuse(Refusal::Series, 1);
            }
        }
    }
    let result = match db.append_unsynced(&batch) {
        Ok(report) => {
            metrics::counter!(crate::metrics::TELEMETRY_POINTS_TOTAL)
                .increment(report.accepted as u64);
            outcome.written = report.accepted;
            for (_, e) in report.refused {
                let r = match e {
                    PointError::UnknownSeries(_) => Refusal::Series,
                    PointError::Head(AppendError::TooOld { .. }) => Refusal::TooOld,
                    PointError::Head(AppendError::OutOfOrderFull { .. }) => Refusal::OutOfOrderFull,
                    PointError::Head(AppendError::KindMismatch { .. }) => Refusal::KindMismatch,
                    PointError::Head(_) => Refusal::Store,
                };
                refuse(r, 1);
            }
            Ok(())
        }
        Err(e) => {
            error!(device, error = %e, "telemetry write failed");
            refuse(Refusal::Store, batch.len());
            Err(e.to_string())
        }
    };
    (outcome, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ParsedSample;

    fn sample(metric: &str, ts: i64, v: f64) -> ParsedSample {
        ParsedSample {
            metric: metric.into(),
            ts,
            value: Sample::Number(v),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_write_export_chunks_and_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TelemetryConfig {
            raw_retention_days: 5,
            rollup_retention_days: 5,
            ..TelemetryConfig::default()
        };
        let svc = TelemetryService::open(dir.path(), false, config).expect("open");
        let now = now_ms() as i64;
        // 25,000 points one second apart, starting two days ago (crosses a day boundary),
        // one expired sample, and a second metric.
        let start = now - 2 * DAY_MS;
        let mut samples: Vec<_> = (0..25_000)
            .map(|i| sample("a", start + i * 1_000, i as f64))
            .collect();
        samples.push(sample("a", now - 5 * DAY_MS - 1, 0.0));
        samples.push(sample("b", now - 1_000, 1.0));
        let out = svc
            .write_durable(vec![DeviceSamples {
                device: "d1".into(),
                samples,
            }])
            .await
            .expect("write");
        assert_eq!(out.written, 25_001);
        assert_eq!(out.refused, [(Refusal::Expired, 1)].into_iter().collect());
        assert_eq!(svc.metrics("d1").await.expect("metrics"), vec!["a", "b"]);
        // Export from 0 in chunks: each at most EXPORT_CHUNK_POINTS, within one day, in order.
        let (mut from, mut got, mut chunks) = (0, Vec::new(), 0);
        loop {
            let c = svc
                .export_chunk("d1", "a", from, now + 1, usize::MAX)
                .await
                .expect("chunk");
            assert!(c.points.len() <= EXPORT_CHUNK_POINTS);
            if let (Some(f), Some(l)) = (c.points.first(), c.points.last()) {
                assert_eq!(f.ts.div_euclid(DAY_MS), l.ts.div_euclid(DAY_MS));
            }
            got.extend(c.points.iter().map(|p| p.ts));
            chunks += 1;
            match c.next {
                Some(n) => from = n,
                None => break,
            }
        }
        assert_eq!(
            got,
            (0..25_000).map(|i| start + i * 1_000).collect::<Vec<_>>()
        );
        assert!((3..=5).contains(&chunks), "{chunks}");
        let none = svc
            .export_chunk("d1", "nosuch", 0, now, 10)
            .await
            .expect("chunk");
        assert_eq!(none, ExportChunk::default());
    }

    /// A PromQL query read through [`SlicedReads`] leaves the writer free between its series: a
    /// device write issued while the query is half done (from inside its second series read)
    /// is stored and answered before the query ends, and the query still sees every series.
    /// Run as one job on the writer thread, the same write would wait for the whole query (here:
    /// never return, as the query waits for it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_go_on_between_the_series_of_a_query() {
        struct WriteMidway {
            inner: SlicedReads,
            reads: std::sync::atomic::AtomicUsize,
            handle: tokio::runtime::Handle,
            now: i64,
        }
        impl SeriesSource for WriteMidway {
            fn select(
                &self,
                sel: &promql::Selector,
                limits: &promql::PromLimits,
            ) -> Result<Vec<(SeriesId, promql::Labels)>, promql::PromError> {
                self.inner.select(sel, limits)
            }
            fn raw(
                &self,
                id: SeriesId,
                from: i64,
                to: i64,
            ) -> Result<Vec<Point>, promql::PromError> {
                if self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                    let svc = self.inner.0.clone();
                    let payload = format!("{{\"v\": 42, \"ts\": {}}}", self.now - 500);
                    let stored = self.handle.block_on(async move {
                        svc.ingest("late", payload.as_bytes(), self.now).await
                    });
                    assert_eq!(stored.expect("stored midway"), 0);
                }
                self.inner.raw(id, from, to)
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let svc =
            TelemetryService::open(dir.path(), false, TelemetryConfig::default()).expect("open");
        let now = now_ms() as i64;
        let batches = (0..3)
            .map(|d| DeviceSamples {
                device: format!("d{d}"),
                samples: (0..10)
                    .map(|i| sample("v", now - 10_000 + i * 1_000, i as f64))
                    .collect(),
            })
            .collect();
        svc.write_durable(batches).await.expect("write");
        let source = WriteMidway {
            inner: SlicedReads(svc.clone()),
            reads: Default::default(),
            handle: tokio::runtime::Handle::current(),
            now,
        };
        let query = promql::Query::parse("last_over_time(v[1m])", &promql::PromLimits::default())
            .expect("parse");
        let answer = tokio::task::spawn_blocking(move || {
            promql::eval_instant(&source, &query, now, &promql::PromLimits::default())
        })
        .await
        .expect("join")
        .expect("query");
        let promql::Instant::Vector(v) = answer else {
            panic!("a vector expected");
        };
        assert_eq!(v.len(), 3, "{v:?}");
        let late = svc.latest("late").await.expect("latest");
        assert_eq!(late.len(), 1, "the midway write is stored");
    }

    #[test]
    fn retention_config_rules() {
        let ok = TelemetryConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let policy = ok.policy().expect("policy");
        assert_eq!(policy.for_metric("x"), (30 * DAY_MS, 365 * DAY_MS));
        let rule = |metrics: &str, raw_days, rollup_days| MetricRetention {
            metrics: metrics.into(),
            raw_days,
            rollup_days,
        };
        let with = |rules: Vec<MetricRetention>| TelemetryConfig {
            retention: rules,
            ..TelemetryConfig::default()
        };
        let c = with(vec![rule("debug.*", 2, 7)]);
        assert_eq!(c.validate(), Ok(()));
        let policy = c.policy().expect("policy");
        assert_eq!(policy.for_metric("debug.x"), (2 * DAY_MS, 7 * DAY_MS));
        assert_eq!(policy.for_metric("temp"), (30 * DAY_MS, 365 * DAY_MS));
        for (rules, key) in [
            (vec![rule("", 1, 1)], "retention[0].metrics"),
            (vec![rule(&"x".repeat(257), 1, 1)], "retention[0].metrics"),
            (
                vec![rule("a", 1, 1), rule("b", 0, 1)],
                "retention[1].raw_days",
            ),
            (vec![rule("a", 5, 4)], "retention[0].rollup_days"),
            (vec![rule("a", 1, 36_501)], "retention[0].rollup_days"),
            (vec![rule("a", 1, 1); 65], "retention: at most 64"),
        ] {
            assert!(with(rules).validate().expect_err(key).starts_with(key));
        }
        assert_eq!(with(vec![rule("a", 1, 1); 64]).validate(), Ok(()));
        for (raw, roll, key) in [
            (0, 365, "raw_retention_days"),
            (36_501, 36_501, "raw_retention_days"),
            (10, 9, "rollup_retention_days"),
            (10, 36_501, "rollup_retention_days"),
        ] {
            let c = TelemetryConfig {
                raw_retention_days: raw,
                rollup_retention_days: roll,
                ..TelemetryConfig::default()
            };
            assert!(c.validate().expect_err(key).starts_with(key));
        }
    }
}
