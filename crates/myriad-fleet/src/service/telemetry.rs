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
//! Counters: [`crate::metrics::TELEMETRY_POINTS_TOTAL`] (samples stored) and
//! [`crate::metrics::TELEMETRY_POINTS_REFUSED_TOTAL`] by `reason` ([`Refusal::as_str`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use myriad_broker::hooks::{Acl, BoxFuture, IngestRefused, IngestSink};
use myriad_tsdb::index::{DEVICE_LABEL, METRIC_LABEL};
use myriad_tsdb::{
    Agg, AppendError, Db, DbConfig, DbError, FileDb, FileDbError, Point, PointError, SeriesId,
    SeriesKey, Value,
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::now_ms;
use crate::telemetry::{Refusal, Sample, TelemetryLimits, parse};

/// Jobs waiting for the writer thread.
pub const QUEUE: usize = 1_024;
/// Most write jobs one WAL sync covers.
pub const GROUP_JOBS: usize = 256;

/// The `[telemetry]` config table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Whether `myriad serve` stores telemetry (default `true`).
    pub enabled: bool,
    /// Seconds between seals of the head into blocks (default 600; 1 to 86,400).
    pub seal_interval_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            seal_interval_secs: 600,
        }
    }
}

impl TelemetryConfig {
    /// Checks the values; `Err` names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=86_400).contains(&self.seal_interval_secs) {
            return Err("seal_interval_secs: between 1 and 86400".into());
        }
        Ok(())
    }
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
    Write {
        device: String,
        samples: Vec<crate::telemetry::ParsedSample>,
        /// Told once the points are in the WAL (and synced), or why not.
        done: oneshot::Sender<Result<(), String>>,
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
        let (db, report) = FileDb::open(dir, DbConfig::default(), fsync)?;
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
        std::thread::Builder::new()
            .name("telemetry-writer".into())
            .spawn(move || writer(db, rx, interval))
            .map_err(|source| FileDbError::Io {
                op: "spawn writer thread",
                path: PathBuf::new(),
                source,
            })?;
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
                .ask(|done| Job::Write {
                    device: device.to_owned(),
                    samples: parsed.samples,
                    done,
                })
                .await;
            if let Err(e) = stored {
                refused(Refusal::Store, n);
                return Err(e);
            }
        }
        Ok(parsed.refused.len())
    }

    async fn ask<T, E: Into<TelemetryError>>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, E>>) -> Job,
    ) -> Result<T, TelemetryError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(job(tx))
            .await
            .map_err(|_| TelemetryError::Stopped)?;
        rx.await
            .map_err(|_| TelemetryError::Stopped)?
            .map_err(Into::into)
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
        let (tx, rx) = oneshot::channel();
        let job = Job::Read(Box::new(move |db: &Db| {
            let _ = tx.send(read(db));
        }));
        self.jobs
            .send(job)
            .await
            .map_err(|_| TelemetryError::Stopped)?;
        rx.await.map_err(|_| TelemetryError::Stopped)
    }

    /// The newest point of each of `device`'s metrics.
    pub async fn latest(
        &self,
        device: &str,
    ) -> Result<Vec<MetricSeries<StoredPoint>>, TelemetryError> {
        let device = device.to_owned();
        self.ask(|reply| Job::Latest { device, reply }).await
    }
}

impl From<String> for TelemetryError {
    fn from(message: String) -> Self {
        TelemetryError::Write(message)
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
    let mut next_seal = Instant::now() + seal_every;
    let mut next = jobs.blocking_recv();
    while let Some(job) = next.take() {
        match job {
            Job::Write {
                device,
                samples,
                done,
            } => {
                // Group commit: every write waiting goes into the WAL before one sync.
                let mut group = vec![(device, samples, done)];
                while group.len() < GROUP_JOBS {
                    match jobs.try_recv() {
                        Ok(Job::Write {
                            device,
                            samples,
                            done,
                        }) => group.push((device, samples, done)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                write_group(&mut db, group);
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
        }
        if Instant::now() >= next_seal {
            seal(&mut db);
            next_seal = Instant::now() + seal_every;
        }
        if next.is_none() {
            next = jobs.blocking_recv();
        }
    }
    seal(&mut db);
    info!("telemetry writer stopped");
}

type WriteJob = (
    String,
    Vec<crate::telemetry::ParsedSample>,
    oneshot::Sender<Result<(), String>>,
);

/// Appends each job's points to the WAL, syncs once, then answers every job: `Ok` for those
/// whose points are durable, the error for those that could not be written.
fn write_group(db: &mut FileDb, group: Vec<WriteJob>) {
    let mut answers = Vec::with_capacity(group.len());
    for (device, samples, done) in group {
        let written = write(db, &device, &samples);
        answers.push((done, written, samples.len() as u64));
    }
    let synced = db.sync().map_err(|e| e.to_string());
    if let Err(e) = &synced {
        error!(error = %e, "telemetry WAL sync failed");
    }
    for (done, written, n) in answers {
        let answer = written.and_then(|()| synced.clone());
        if answer.is_err() {
            refused(Refusal::Store, n);
        }
        let _ = done.send(answer);
    }
}

fn seal(db: &mut FileDb) {
    match db.seal() {
        Ok(parts) if !parts.is_empty() => info!(partitions = parts.len(), "telemetry sealed"),
        Ok(_) => {}
        Err(e) => error!(error = %e, "telemetry seal failed"),
    }
}

/// Appends one device's samples (without syncing). Points the store refuses one by one are
/// counted; `Err` when nothing could be written.
fn write(
    db: &mut FileDb,
    device: &str,
    samples: &[crate::telemetry::ParsedSample],
) -> Result<(), String> {
    let mut batch = Vec::with_capacity(samples.len());
    for s in samples {
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
                refused(Refusal::Series, 1);
            }
        }
    }
    match db.append_unsynced(&batch) {
        Ok(report) => {
            metrics::counter!(crate::metrics::TELEMETRY_POINTS_TOTAL)
                .increment(report.accepted as u64);
            for (_, e) in report.refused {
                let r = match e {
                    PointError::UnknownSeries(_) => Refusal::Series,
                    PointError::Head(AppendError::TooOld { .. }) => Refusal::TooOld,
                    PointError::Head(AppendError::OutOfOrderFull { .. }) => Refusal::OutOfOrderFull,
                    PointError::Head(AppendError::KindMismatch { .. }) => Refusal::KindMismatch,
                    PointError::Head(_) => Refusal::Store,
                };
                refused(r, 1);
            }
            Ok(())
        }
        Err(e) => {
            error!(device, error = %e, "telemetry write failed");
            Err(e.to_string())
        }
    }
}
