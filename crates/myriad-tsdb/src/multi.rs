//! Queries over many devices: the same metrics of a list of devices (a group, the devices with
//! an attribute, or named ones: the caller resolves them), raw or aggregated per step bucket,
//! per device or combined across devices per bucket.
//!
//! Sans-IO: the caller hands in the [`Db`] and the device list.
//!
//! # Limits (what one more does)
//!
//! | input | limit | one past |
//! |---|---|---|
//! | devices | [`MAX_DEVICES`] (10,000) | [`MultiError::TooManyDevices`] |
//! | points in the answer (raw or buckets, all series) | [`MAX_POINTS`] (200,000) | [`MultiError::TooManyPoints`] |
//! | buckets per series | [`crate::db::MAX_BUCKETS`] | [`DbError::TooManyBuckets`] |

use std::collections::BTreeMap;

use crate::block::as_f64;
use crate::db::{Agg, Db, DbError};
use crate::index::{DEVICE_LABEL, METRIC_LABEL, SeriesId};

/// Most devices one query may cover.
pub const MAX_DEVICES: usize = 10_000;
/// Most points (raw points or buckets, over all series) one answer may hold.
pub const MAX_POINTS: usize = 200_000;

/// How per-device bucket values are combined across devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Mean of the devices' values.
    Avg,
    /// Smallest.
    Min,
    /// Largest.
    Max,
    /// Sum.
    Sum,
    /// How many devices have a value.
    Count,
}

/// What to read.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiQuery {
    /// Device ids.
    pub devices: Vec<String>,
    /// Metric names; empty for every metric of each device.
    pub metrics: Vec<String>,
    /// Start, Unix ms, included.
    pub from: i64,
    /// End, Unix ms, excluded.
    pub to: i64,
    /// Bucket width in ms and the function per bucket; `None` for raw points.
    pub step: Option<(i64, Agg)>,
    /// Combine the devices' bucket values (needs `step`); `None` answers per device.
    pub combine: Option<Combine>,
}

/// One device's metric: `(ms, value)` pairs (booleans as 0 / 1).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSeries {
    /// Device id.
    pub device: String,
    /// Metric name.
    pub metric: String,
    /// Points (raw) or bucket values (aggregated, `ms` the bucket start), by time.
    pub points: Vec<(i64, f64)>,
}

/// One metric combined across devices.
#[derive(Debug, Clone, PartialEq)]
pub struct CombinedSeries {
    /// Metric name.
    pub metric: String,
    /// How many devices had data for it in the range.
    pub devices: usize,
    /// `(bucket start, combined value, devices with a value in the bucket)`, by time.
    pub points: Vec<(i64, f64, usize)>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq)]
pub enum MultiAnswer {
    /// One series per device and metric with data.
    PerDevice(Vec<DeviceSeries>),
    /// One series per metric.
    Combined(Vec<CombinedSeries>),
}

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultiError {
    /// More devices than [`MAX_DEVICES`].
    #[error("{count} devices, limit {MAX_DEVICES}")]
    TooManyDevices {
        /// Devices given.
        count: usize,
    },
    /// More points than [`MAX_POINTS`].
    #[error("the answer would hold more than {MAX_POINTS} points")]
    TooManyPoints,
    /// `combine` without a step.
    #[error("combining devices needs a step")]
    CombineNeedsStep,
    /// The store refused or failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Runs `q` over `db`.
pub fn query(db: &Db, q: &MultiQuery) -> Result<MultiAnswer, MultiError> {
    query_bounded(db, q, MAX_POINTS)
}

fn query_bounded(db: &Db, q: &MultiQuery, max_points: usize) -> Result<MultiAnswer, MultiError> {
    if q.devices.len() > MAX_DEVICES {
        return Err(MultiError::TooManyDevices {
            count: q.devices.len(),
        });
    }
    if q.combine.is_some() && q.step.is_none() {
        return Err(MultiError::CombineNeedsStep);
    }
    let index = db.engine().index();
    let mut per_device = Vec::new();
    let mut total = 0usize;
    for device in &q.devices {
        let mut series: Vec<(String, SeriesId)> = if q.metrics.is_empty() {
            index
                .select(&[(DEVICE_LABEL, device)])
                .unwrap_or_default()
                .into_iter()
                .filter_map(|id| index.key(id).map(|k| (k.metric, id)))
                .collect()
        } else {
            q.metrics
                .iter()
                .filter_map(|m| {
                    let ids = index
                        .select(&[(DEVICE_LABEL, device), (METRIC_LABEL, m)])
                        .ok()?;
                    ids.first().map(|id| (m.clone(), *id))
                })
                .collect()
        };
        series.sort();
        for (metric, id) in series {
            let points: Vec<(i64, f64)> = match q.step {
                Some((step, agg)) => db.aggregate(id, q.from, q.to, step, agg)?,
                None => db
                    .raw(id, q.from, q.to)?
                    .into_iter()
                    .map(|p| (p.ts, as_f64(p.value)))
                    .collect(),
            };
            if points.is_empty() {
                continue;
            }
            total = total.saturating_add(points.len());
            if total > max_points {
                return Err(MultiError::TooManyPoints);
            }
            per_device.push(DeviceSeries {
                device: device.clone(),
                metric,
                points,
            });
        }
    }
    let Some(combine) = q.combine else {
        return Ok(MultiAnswer::PerDevice(per_device));
    };
    Ok(MultiAnswer::Combined(combine_series(per_device, combine)))
}

fn combine_series(series: Vec<DeviceSeries>, how: Combine) -> Vec<CombinedSeries> {
    // metric -> bucket -> (sum, count, min, max); metric -> devices.
    type Acc = (f64, usize, f64, f64);
    let mut by_metric: BTreeMap<String, (usize, BTreeMap<i64, Acc>)> = BTreeMap::new();
    for s in series {
        let (devices, buckets) = by_metric.entry(s.metric).or_default();
        *devices += 1;
        for (t, v) in s.points {
            let a = buckets.entry(t).or_insert((0.0, 0, v, v));
            a.0 += v;
            a.1 += 1;
            a.2 = a.2.min(v);
            a.3 = a.3.max(v);
        }
    }
    by_metric
        .into_iter()
        .map(|(metric, (devices, buckets))| CombinedSeries {
            metric,
            devices,
            points: buckets
                .into_iter()
                .map(|(t, (sum, n, min, max))| {
                    let v = match how {
                        Combine::Avg => sum / n as f64,
                        Combine::Min => min,
                        Combine::Max => max,
                        Combine::Sum => sum,
                        Combine::Count => n as f64,
                    };
                    (t, v, n)
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DbConfig;
    use crate::index::SeriesKey;
    use crate::value::{Point, Value};

    fn db() -> Db {
        let mut db = Db::new(DbConfig::default()).expect("db");
        let mut wal = Vec::new();
        // d1 temp: 1, 2 | 3 ; d2 temp: 10 | 20, 30 ; d2 hum: 5 (buckets of 60 s).
        for (device, metric, pts) in [
            ("d1", "temp", vec![(0, 1.0), (1_000, 2.0), (60_000, 3.0)]),
            (
                "d2",
                "temp",
                vec![(0, 10.0), (60_000, 20.0), (61_000, 30.0)],
            ),
            ("d2", "hum", vec![(0, 5.0)]),
        ] {
            let id = db
                .engine_mut()
                .series(&SeriesKey::new(device, metric), &mut wal)
                .expect("series");
            let batch: Vec<_> = pts
                .into_iter()
                .map(|(ts, v)| {
                    (
                        id,
                        Point {
                            ts,
                            value: Value::F64(v),
                        },
                    )
                })
                .collect();
            db.engine_mut().append(&batch, &mut wal).expect("append");
        }
        db
    }

    fn q(devices: &[&str], metrics: &[&str]) -> MultiQuery {
        MultiQuery {
            devices: devices.iter().map(|d| d.to_string()).collect(),
            metrics: metrics.iter().map(|m| m.to_string()).collect(),
            from: 0,
            to: 120_000,
            step: Some((60_000, Agg::Avg)),
            combine: None,
        }
    }

    #[test]
    fn per_device_and_combined() {
        let db = db();
        let MultiAnswer::PerDevice(s) = query(&db, &q(&["d1", "d2", "d3"], &["temp"])).expect("ok")
        else {
            panic!("per device")
        };
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].points, vec![(0, 1.5), (60_000, 3.0)]);
        assert_eq!(s[1].points, vec![(0, 10.0), (60_000, 25.0)]);
        let all = query(&db, &q(&["d2"], &[])).expect("ok");
        let MultiAnswer::PerDevice(all) = all else {
            panic!("per device")
        };
        assert_eq!(
            all.iter().map(|s| s.metric.as_str()).collect::<Vec<_>>(),
            ["hum", "temp"]
        );
        let combined = MultiQuery {
            combine: Some(Combine::Avg),
            ..q(&["d1", "d2"], &["temp"])
        };
        let MultiAnswer::Combined(c) = query(&db, &combined).expect("ok") else {
            panic!("combined")
        };
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].devices, 2);
        assert_eq!(c[0].points, vec![(0, 5.75, 2), (60_000, 14.0, 2)]);
        let max = MultiQuery {
            combine: Some(Combine::Max),
            ..combined.clone()
        };
        let MultiAnswer::Combined(c) = query(&db, &max).expect("ok") else {
            panic!("combined")
        };
        assert_eq!(c[0].points, vec![(0, 10.0, 2), (60_000, 25.0, 2)]);
        let raw = MultiQuery {
            step: None,
            ..q(&["d1"], &["temp"])
        };
        let MultiAnswer::PerDevice(r) = query(&db, &raw).expect("ok") else {
            panic!("raw")
        };
        assert_eq!(r[0].points.len(), 3);
        let bad = MultiQuery {
            step: None,
            ..combined
        };
        assert_eq!(query(&db, &bad), Err(MultiError::CombineNeedsStep));
    }

    #[test]
    fn points_one_past_the_limit_are_refused() {
        let db = db();
        let raw = MultiQuery {
            step: None,
            ..q(&["d1", "d2"], &["temp"])
        };
        assert!(query_bounded(&db, &raw, 6).is_ok());
        assert_eq!(query_bounded(&db, &raw, 5), Err(MultiError::TooManyPoints));
    }

    #[test]
    fn devices_one_past_the_limit_are_refused() {
        let db = db();
        let many: Vec<String> = (0..=MAX_DEVICES).map(|i| format!("x{i}")).collect();
        let mut at = q(&[], &["temp"]);
        at.devices = many[..MAX_DEVICES].to_vec();
        assert!(query(&db, &at).is_ok());
        at.devices = many;
        assert_eq!(
            query(&db, &at),
            Err(MultiError::TooManyDevices {
                count: MAX_DEVICES + 1
            })
        );
    }
}
