//! The telemetry service: `devices/{id}/telemetry` messages into the telemetry store, and the
//! queries the HTTP API answers from it.
//!
//! An in-process client subscribes to `devices/+/telemetry`; the broker's ACL lets a device
//! publish only below its own `devices/{id}/`, so the topic's id is the sender's (application
//! clients granted such a topic, and admins, can write there too). Payloads are parsed on the
//! event loop (cheap, bounded by [`TelemetryLimits`]) and the samples handed over a bounded
//! queue ([`QUEUE`] jobs; a full queue holds the subscription, so the broker's per-session
//! limits apply) to one writer thread that owns the [`FileDb`]: WAL writes and fsyncs, seals
//! (every [`TelemetryConfig::seal_interval_secs`], and at shutdown) and queries all run there,
//! never on the event loop.
//!
//! The device's QoS 1 PUBACK does not wait for the WAL: the broker acknowledges a publish when
//! it has routed it, and the internal client's receipt is not tied to the sender's. A publish
//! acknowledged just before a crash can be lost if the writer had not written it yet.
//!
//! Counters: [`crate::metrics::TELEMETRY_POINTS_TOTAL`] (samples stored) and
//! [`crate::metrics::TELEMETRY_POINTS_REFUSED_TOTAL`] by `reason` ([`Refusal::as_str`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use myriad_broker::shell::{BrokerHandle, BrokerStopped};
use myriad_mqtt::QoS;
use myriad_tsdb::index::{DEVICE_LABEL, METRIC_LABEL};
use myriad_tsdb::{
    Agg, AppendError, Db, DbConfig, DbError, FileDb, FileDbError, Point, PointError, SeriesId,
    SeriesKey, Value,
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::now_ms;
use crate::registry::DeviceId;
use crate::telemetry::{Refusal, Sample, TelemetryLimits, parse};

/// Jobs waiting for the writer thread.
pub const QUEUE: usize = 1_024;

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

    /// Parses one payload from `device` and queues its samples; returns how many were refused
    /// by parsing (counted in the metric; store refusals are counted by the writer).
    pub async fn ingest(&self, device: &str, payload: &[u8], arrival_ms: i64) -> usize {
        let parsed = parse(payload, arrival_ms, &self.limits);
        for r in &parsed.refused {
            refused(*r, 1);
        }
        if !parsed.samples.is_empty() {
            let n = parsed.samples.len() as u64;
            let job = Job::Write {
                device: device.to_owned(),
                samples: parsed.samples,
            };
            if self.jobs.send(job).await.is_err() {
                refused(Refusal::Store, n);
            }
        }
        parsed.refused.len()
    }

    /// Stores `devices/+/telemetry` messages until the broker stops.
    pub async fn run(self: Arc<Self>, broker: BrokerHandle) -> Result<(), BrokerStopped> {
        let mut client = broker.connect_internal("telemetry").await?;
        client
            .subscribe("devices/+/telemetry", QoS::AtLeastOnce)
            .await?;
        while let Some(publish) = client.recv().await {
            let mut parts = publish.topic.split('/');
            let (Some("devices"), Some(id), Some("telemetry"), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if DeviceId::new(id).is_err() {
                continue;
            }
            self.ingest(id, &publish.payload, now_ms() as i64).await;
        }
        Ok(())
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
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Write { device, samples } => write(&mut db, &device, &samples),
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
    }
    seal(&mut db);
    info!("telemetry writer stopped");
}

fn seal(db: &mut FileDb) {
    match db.seal() {
        Ok(parts) if !parts.is_empty() => info!(partitions = parts.len(), "telemetry sealed"),
        Ok(_) => {}
        Err(e) => error!(error = %e, "telemetry seal failed"),
    }
}

fn write(db: &mut FileDb, device: &str, samples: &[crate::telemetry::ParsedSample]) {
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
    match db.append(&batch) {
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
        }
        Err(e) => {
            error!(device, error = %e, "telemetry write failed");
            refused(Refusal::Store, batch.len() as u64);
        }
    }
}
