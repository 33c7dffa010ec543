//! Telemetry queries: raw or aggregated points of a device's metrics, and the latest values.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use myriad_fleet::service::telemetry::{MetricSeries, StoredPoint, TelemetryError, TelemetryRange};
use myriad_fleet::telemetry::{Sample, TelemetryLimits, valid_metric_name};
use myriad_tsdb::{Agg, DbError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::devices::read_device;
use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::extract::{ApiQuery, DevicePath};
use crate::state::ApiState;

/// Most metrics one query may name.
pub(crate) const MAX_QUERY_METRICS: usize = 64;
/// Most raw points one answer may hold (all metrics together); more is a 400 asking for a
/// narrower range or a `step`.
pub(crate) const MAX_RAW_POINTS: usize = 100_000;
/// Default range: the last day.
pub(super) const DEFAULT_RANGE_MS: i64 = 86_400_000;

/// Query string of `GET /api/v1/devices/{id}/telemetry`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TelemetryParams {
    /// Comma-separated metric names (at most 64); default: every metric of the device.
    pub metrics: Option<String>,
    /// Start, unix ms, inclusive (default: `to` minus one day).
    #[param(value_type = Option<i64>)]
    pub from: Option<String>,
    /// End, unix ms, exclusive (default: now plus one hour, the furthest a device `ts` may be).
    #[param(value_type = Option<i64>)]
    pub to: Option<String>,
    /// Bucket width in ms: with it the answer is aggregated (at most 100,000 buckets).
    #[param(value_type = Option<i64>, minimum = 1)]
    pub step: Option<String>,
    /// `avg` (default with `step`), `min`, `max`, `sum`, `count`, `last` or `rate`; needs `step`.
    pub agg: Option<String>,
}

/// One metric's points: `[ts, value]` pairs, value a number or a boolean (raw), or a number
/// (aggregated: one per bucket with data, `ts` the bucket start).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TelemetrySeries {
    /// The metric.
    pub metric: String,
    /// `[ts, value]` pairs by time.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub points: Vec<Value>,
}

/// Answer of `GET /api/v1/devices/{id}/telemetry`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TelemetryAnswer {
    /// The device.
    pub device: String,
    /// Start of the range (unix ms, inclusive).
    pub from: i64,
    /// End of the range (unix ms, exclusive).
    pub to: i64,
    /// Bucket width when aggregated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
    /// Aggregation function when aggregated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agg: Option<String>,
    /// One entry per metric that has data or was named.
    pub series: Vec<TelemetrySeries>,
}

/// One metric's newest point.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LatestPoint {
    /// Unix ms.
    pub ts: i64,
    /// A number or a boolean.
    #[schema(value_type = Object)]
    pub value: Value,
}

/// Answer of `GET /api/v1/devices/{id}/telemetry/latest`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LatestAnswer {
    /// The device.
    pub device: String,
    /// Metric name -> its newest point.
    pub metrics: BTreeMap<String, LatestPoint>,
}

pub(super) fn value_json(v: Sample) -> Value {
    match v {
        Sample::Number(f) => json!(f),
        Sample::Bool(b) => json!(b),
    }
}

pub(super) fn int_param(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) => s.parse::<i64>().map(Some).map_err(|_| {
            ApiError::BadRequest(format!("{name}: an integer (unix ms) expected, got {s:?}"))
        }),
    }
}

pub(super) fn parse_agg(s: &str) -> Result<Agg, ApiError> {
    Ok(match s {
        "avg" => Agg::Avg,
        "min" => Agg::Min,
        "max" => Agg::Max,
        "sum" => Agg::Sum,
        "count" => Agg::Count,
        "last" => Agg::Last,
        "rate" => Agg::Rate,
        other => {
            return Err(ApiError::BadRequest(format!(
                "agg: one of avg, min, max, sum, count, last, rate; got {other:?}"
            )));
        }
    })
}

pub(super) fn parse_metrics(s: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(s) = s.filter(|s| !s.is_empty()) else {
        return Ok(Vec::new());
    };
    let limits = TelemetryLimits::default();
    let names: Vec<String> = s.split(',').map(str::to_owned).collect();
    if names.len() > MAX_QUERY_METRICS {
        return Err(ApiError::BadRequest(format!(
            "metrics: at most {MAX_QUERY_METRICS} names, got {}",
            names.len()
        )));
    }
    if let Some(bad) = names.iter().find(|n| !valid_metric_name(n, &limits)) {
        return Err(ApiError::BadRequest(format!(
            "metrics: {bad:?} is not a metric name (1 to {} bytes of [A-Za-z0-9_.:-])",
            limits.max_name_len
        )));
    }
    Ok(names)
}

pub(super) fn query_error(e: TelemetryError) -> ApiError {
    match e {
        TelemetryError::Query(DbError::TooManyBuckets { buckets }) => {
            ApiError::BadRequest(format!(
                "step: the range needs {buckets} buckets, at most {} allowed",
                myriad_tsdb::db::MAX_BUCKETS
            ))
        }
        TelemetryError::Query(DbError::BadStep(s)) => {
            ApiError::BadRequest(format!("step: must be positive, got {s}"))
        }
        other => unavailable(&other.to_string()),
    }
}

pub(super) fn unavailable(message: &str) -> ApiError {
    ApiError::Other {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: message.to_owned(),
    }
}

pub(super) fn now_ms() -> i64 {
    myriad_fleet::service::now_ms() as i64
}

/// `from` and `to` of a telemetry query (unix ms): `to` defaults to now plus one hour (the
/// furthest a device `ts` may be), `from` to `default_from(to)`; `from` must be before `to`.
pub(super) fn time_range(
    from: Option<&str>,
    to: Option<&str>,
    default_from: impl FnOnce(i64) -> i64,
) -> Result<(i64, i64), ApiError> {
    let to = int_param("to", to)?.unwrap_or_else(|| now_ms().saturating_add(3_600_001));
    let from = int_param("from", from)?.unwrap_or_else(|| default_from(to));
    if from >= to {
        return Err(ApiError::BadRequest(format!(
            "from: must be before to ({from} >= {to})"
        )));
    }
    Ok((from, to))
}

/// The buckets of an aggregated telemetry query.
#[derive(Debug)]
pub(super) struct Buckets {
    /// Bucket width, ms.
    pub step: i64,
    /// The function, as named (`avg` when not given).
    pub agg_name: String,
    /// The function.
    pub agg: Agg,
}

/// `step` and `agg` of a telemetry query over `from..to`: `None` without `step` (raw points).
/// `step` must be positive and need at most [`myriad_tsdb::db::MAX_BUCKETS`] buckets, counted
/// `(to - from) / step + 1` (the store's own count, so the answer does not depend on whether
/// data exists); `agg` defaults to avg and needs `step`.
pub(super) fn step_and_agg(
    from: i64,
    to: i64,
    step: Option<&str>,
    agg: Option<&str>,
) -> Result<Option<Buckets>, ApiError> {
    let step = int_param("step", step)?;
    if let Some(s) = step {
        if s <= 0 {
            return Err(ApiError::BadRequest(format!(
                "step: must be positive, got {s}"
            )));
        }
        let buckets = (to.saturating_sub(from) / s).saturating_add(1);
        if buckets > myriad_tsdb::db::MAX_BUCKETS {
            return Err(ApiError::BadRequest(format!(
                "step: the range needs {buckets} buckets, at most {} allowed",
                myriad_tsdb::db::MAX_BUCKETS
            )));
        }
    }
    match (step, agg) {
        (Some(step), Some(a)) => Ok(Some(Buckets {
            step,
            agg_name: a.to_owned(),
            agg: parse_agg(a)?,
        })),
        (Some(step), None) => Ok(Some(Buckets {
            step,
            agg_name: "avg".to_owned(),
            agg: Agg::Avg,
        })),
        (None, Some(a)) => {
            parse_agg(a)?;
            Err(ApiError::BadRequest("step: required with agg".into()))
        }
        (None, None) => Ok(None),
    }
}

/// Points of a device's metrics, raw or aggregated per `step` bucket.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/telemetry",
    tag = "telemetry",
    params(("id" = String, Path, description = "The device id"), TelemetryParams),
    responses(
        (status = 200, description = "The points", body = TelemetryAnswer),
        (status = 400, description = "A bad parameter (the message names it)", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = "Telemetry is disabled or stopped", body = ErrorBody),
    )
)]
pub(crate) async fn device_telemetry(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
    ApiQuery(params): ApiQuery<TelemetryParams>,
) -> Result<Json<TelemetryAnswer>, ApiError> {
    let metrics = parse_metrics(params.metrics.as_deref())?;
    let (from, to) = time_range(params.from.as_deref(), params.to.as_deref(), |to| {
        to.saturating_sub(DEFAULT_RANGE_MS)
    })?;
    let buckets = step_and_agg(from, to, params.step.as_deref(), params.agg.as_deref())?;
    let step = buckets.as_ref().map(|b| b.step);
    let agg = buckets.map(|b| (b.agg_name, b.agg));
    let Some(telemetry) = state.telemetry.clone() else {
        return Err(unavailable("telemetry is disabled (telemetry.enabled)"));
    };
    read_device(state, id.clone()).await?;
    let device = id.as_str().to_owned();
    let range = TelemetryRange {
        device: device.clone(),
        metrics,
        from,
        to,
    };
    let series = match (step, &agg) {
        (Some(step), Some((_, f))) => telemetry
            .aggregate(range, step, *f)
            .await
            .map_err(query_error)?
            .into_iter()
            .map(|MetricSeries { metric, points }| TelemetrySeries {
                metric,
                points: points.into_iter().map(|(t, v)| json!([t, v])).collect(),
            })
            .collect(),
        _ => {
            let raw = telemetry.raw(range).await.map_err(query_error)?;
            let total: usize = raw.iter().map(|s| s.points.len()).sum();
            if total > MAX_RAW_POINTS {
                return Err(ApiError::BadRequest(format!(
                    "from: the range holds {total} points, at most {MAX_RAW_POINTS} raw; narrow from/to or set step"
                )));
            }
            raw.into_iter()
                .map(|MetricSeries { metric, points }| TelemetrySeries {
                    metric,
                    points: points
                        .into_iter()
                        .map(|StoredPoint { ts, value }| json!([ts, value_json(value)]))
                        .collect(),
                })
                .collect()
        }
    };
    Ok(Json(TelemetryAnswer {
        device,
        from,
        to,
        step,
        agg: agg.map(|(name, _)| name),
        series,
    }))
}

/// The newest point of each of a device's metrics.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/telemetry/latest",
    tag = "telemetry",
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 200, description = "The newest points", body = LatestAnswer),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = "Telemetry is disabled or stopped", body = ErrorBody),
    )
)]
pub(crate) async fn latest_telemetry(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
) -> Result<Json<LatestAnswer>, ApiError> {
    let Some(telemetry) = state.telemetry.clone() else {
        return Err(unavailable("telemetry is disabled (telemetry.enabled)"));
    };
    read_device(state, id.clone()).await?;
    let latest = telemetry.latest(id.as_str()).await.map_err(query_error)?;
    let metrics = latest
        .into_iter()
        .filter_map(|MetricSeries { metric, points }| {
            let p = points.first()?;
            Some((
                metric,
                LatestPoint {
                    ts: p.ts,
                    value: value_json(p.value),
                },
            ))
        })
        .collect();
    Ok(Json(LatestAnswer {
        device: id.as_str().to_owned(),
        metrics,
    }))
}
