//! Telemetry of many devices at once: `GET /api/v1/telemetry` with the devices named
//! (`devices=a,b`), or a group (`group=g`) and/or one attribute (`attr.key=value`) resolved
//! through the registry; per device, or combined across devices per bucket (`combine=avg`).
//!
//! The device list is resolved on the blocking pool (pages of the registry walk), the query
//! runs on the telemetry writer thread ([`myriad_tsdb::multi`]).
//!
//! # Limits
//!
//! | input | limit | one past |
//! |---|---|---|
//! | devices named or resolved | [`myriad_tsdb::multi::MAX_DEVICES`] (10,000) | 400 naming `devices`, `group` or `attr.*` |
//! | points in the answer | [`myriad_tsdb::multi::MAX_POINTS`] (200,000) | 400 naming `step` |
//! | metrics, buckets | as `GET /api/v1/devices/{id}/telemetry` | 400 |

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use myriad_fleet::registry::{DeviceId, DeviceQuery, MAX_PAGE_LIMIT};
use myriad_tsdb::multi::{self, Combine, MAX_DEVICES, MultiAnswer, MultiError, MultiQuery};
use myriad_tsdb::{Agg, DbError};
use serde_json::{Value, json};

use super::telemetry::{DEFAULT_RANGE_MS, parse_metrics, step_and_agg, time_range, unavailable};
use crate::blocking::blocking;
use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::ApiState;

const KNOWN: [&str; 9] = [
    "metrics", "from", "to", "step", "agg", "devices", "group", "group_by", "combine",
];

fn parse_combine(s: &str) -> Result<Combine, ApiError> {
    Ok(match s {
        "avg" => Combine::Avg,
        "min" => Combine::Min,
        "max" => Combine::Max,
        "sum" => Combine::Sum,
        "count" => Combine::Count,
        other => {
            return Err(ApiError::BadRequest(format!(
                "combine: one of avg, min, max, sum, count; got {other:?}"
            )));
        }
    })
}

/// Which devices: named, or a registry filter.
enum Devices {
    Named(Vec<String>),
    Filter {
        group: Option<String>,
        attribute: Option<(String, String)>,
    },
}

fn devices_param(params: &BTreeMap<String, String>) -> Result<Devices, ApiError> {
    let attrs: Vec<(&String, &String)> = params
        .iter()
        .filter(|(k, _)| k.starts_with("attr."))
        .collect();
    if attrs.len() > 1 {
        return Err(ApiError::BadRequest(
            "attr.*: at most one attribute per query".into(),
        ));
    }
    let attribute = attrs
        .first()
        .map(|(k, v)| (k["attr.".len()..].to_owned(), (*v).clone()));
    if let Some((k, _)) = &attribute
        && k.is_empty()
    {
        return Err(ApiError::BadRequest(
            "attr.: the attribute name is empty".into(),
        ));
    }
    let group = params.get("group").cloned();
    match (params.get("devices"), group, attribute) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ApiError::BadRequest(
            "devices: give devices, or group and/or attr.<key>, not both".into(),
        )),
        (Some(list), None, None) => {
            let names: Vec<String> = list
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if names.is_empty() {
                return Err(ApiError::BadRequest("devices: empty list".into()));
            }
            if names.len() > MAX_DEVICES {
                return Err(ApiError::BadRequest(format!(
                    "devices: at most {MAX_DEVICES} devices, got {}",
                    names.len()
                )));
            }
            for n in &names {
                DeviceId::new(n.as_str()).map_err(|e| {
                    ApiError::BadRequest(format!("devices: {n:?} is not a device id: {e}"))
                })?;
            }
            Ok(Devices::Named(names))
        }
        (None, None, None) => Err(ApiError::BadRequest(
            "devices: give devices=a,b, group=<name> or attr.<key>=<value>".into(),
        )),
        (None, group, attribute) => Ok(Devices::Filter { group, attribute }),
    }
}

/// The ids of the devices matching the filter, walking the registry page by page; more than
/// [`MAX_DEVICES`] is a 400 naming the filter.
async fn resolve(
    state: &ApiState,
    group: Option<String>,
    attribute: Option<(String, String)>,
) -> Result<Vec<String>, ApiError> {
    let store = state.store.clone();
    let what = match (&group, &attribute) {
        (Some(_), _) => "group",
        _ => "attr.*",
    };
    blocking(move || {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let query = DeviceQuery {
                group: group.clone(),
                attribute: attribute.clone(),
                limit: MAX_PAGE_LIMIT,
                after,
                ..DeviceQuery::default()
            };
            let page = store.list_devices(&query)?;
            out.extend(page.items.into_iter().map(|d| d.id.as_str().to_owned()));
            if out.len() > MAX_DEVICES {
                return Err(ApiError::BadRequest(format!(
                    "{what}: matches more than {MAX_DEVICES} devices"
                )));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    })
    .await
}

/// The same metrics of many devices, per device or combined across them per bucket.
///
/// Query string: `devices=a,b` or `group=g` and/or `attr.<key>=<value>` (one attribute);
/// `metrics` (comma-separated, default every metric), `from`/`to` (unix ms, default the last
/// day), `step` (ms) with `agg` (avg, min, max, sum, count, last, rate), `group_by`
/// (`device`, the default, or `none`) and `combine` (avg, the default with `group_by=none`,
/// min, max, sum, count: across devices per bucket; needs `step`).
#[utoipa::path(
    get,
    path = "/api/v1/telemetry",
    tag = "telemetry",
    params(
        ("devices" = Option<String>, Query, description = "Comma-separated device ids (at most 10,000)"),
        ("group" = Option<String>, Query, description = "A device group"),
        ("attr.{key}" = Option<String>, Query, description = "Devices with this attribute value"),
        ("metrics" = Option<String>, Query, description = "Comma-separated metric names (at most 64)"),
        ("from" = Option<i64>, Query, description = "Start, unix ms, inclusive"),
        ("to" = Option<i64>, Query, description = "End, unix ms, exclusive"),
        ("step" = Option<i64>, Query, description = "Bucket width, ms"),
        ("agg" = Option<String>, Query, description = "Per-bucket function (default avg)"),
        ("group_by" = Option<String>, Query, description = "`device` (default) or `none`"),
        ("combine" = Option<String>, Query, description = "Across devices per bucket: avg (default with group_by=none), min, max, sum, count"),
    ),
    responses(
        (status = 200, description = "`{devices, series: [{device, metric, points: [[ts, v]..]}]}` or, combined, `{series: [{metric, devices, points: [[ts, v, devices]..]}]}`", body = Object),
        (status = 400, description = "A bad parameter (the message names it)", body = ErrorBody),
        (status = 503, description = "Telemetry is disabled or stopped", body = ErrorBody),
    )
)]
pub(crate) async fn fleet_telemetry(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if let Some(k) = params
        .keys()
        .find(|k| !KNOWN.contains(&k.as_str()) && !k.starts_with("attr."))
    {
        return Err(ApiError::BadRequest(format!("{k}: unknown parameter")));
    }
    let devices = devices_param(&params)?;
    let metrics = parse_metrics(params.get("metrics").map(String::as_str))?;
    let (from, to) = time_range(
        params.get("from").map(String::as_str),
        params.get("to").map(String::as_str),
        |to| to.saturating_sub(DEFAULT_RANGE_MS),
    )?;
    let buckets = step_and_agg(
        from,
        to,
        params.get("step").map(String::as_str),
        params.get("agg").map(String::as_str),
    )?;
    let step = buckets.as_ref().map(|b| b.step);
    let agg = buckets.as_ref().map_or(Agg::Avg, |b| b.agg);
    let combine = match (
        params.get("group_by").map(String::as_str),
        params.get("combine").map(String::as_str),
    ) {
        (None | Some("device"), None) => None,
        (Some("device"), Some(_)) => {
            return Err(ApiError::BadRequest("combine: needs group_by=none".into()));
        }
        (None | Some("none"), Some(c)) => Some(parse_combine(c)?),
        (Some("none"), None) => Some(Combine::Avg),
        (Some(other), _) => {
            return Err(ApiError::BadRequest(format!(
                "group_by: device or none; got {other:?}"
            )));
        }
    };
    if combine.is_some() && step.is_none() {
        return Err(ApiError::BadRequest(
            "step: required to combine devices (group_by=none)".into(),
        ));
    }
    let Some(telemetry) = state.telemetry.clone() else {
        return Err(unavailable("telemetry is disabled (telemetry.enabled)"));
    };
    let ids = match devices {
        Devices::Named(ids) => ids,
        Devices::Filter { group, attribute } => resolve(&state, group, attribute).await?,
    };
    let count = ids.len();
    let query = MultiQuery {
        devices: ids,
        metrics,
        from,
        to,
        step: step.map(|s| (s, agg)),
        combine,
    };
    let answer = telemetry
        .read(move |db| multi::query(db, &query))
        .await
        .map_err(|e| unavailable(&e.to_string()))?
        .map_err(|e| match e {
            MultiError::TooManyPoints => ApiError::BadRequest(format!(
                "step: {e}; narrow from/to, set or widen step, or name fewer devices or metrics"
            )),
            MultiError::TooManyDevices { .. } => ApiError::BadRequest(format!("devices: {e}")),
            MultiError::CombineNeedsStep => ApiError::BadRequest(format!("step: {e}")),
            MultiError::Db(DbError::TooManyBuckets { .. } | DbError::BadStep(_)) => {
                ApiError::BadRequest(format!("step: {e}"))
            }
            MultiError::Db(other) => ApiError::Internal(other.to_string()),
        })?;
    let mut out = json!({"from": from, "to": to, "devices": count});
    if let Some(s) = step {
        out["step"] = json!(s);
        out["agg"] = json!(buckets.as_ref().map_or("avg", |b| b.agg_name.as_str()));
    }
    match answer {
        MultiAnswer::PerDevice(series) => {
            out["group_by"] = json!("device");
            out["series"] = series
                .into_iter()
                .map(|s| {
                    let points: Vec<Value> =
                        s.points.into_iter().map(|(t, v)| json!([t, v])).collect();
                    json!({"device": s.device, "metric": s.metric, "points": points})
                })
                .collect();
        }
        MultiAnswer::Combined(series) => {
            out["group_by"] = json!("none");
            out["combine"] = json!(params.get("combine").map_or("avg", String::as_str));
            out["series"] = series
                .into_iter()
                .map(|s| {
                    let points: Vec<Value> = s
                        .points
                        .into_iter()
                        .map(|(t, v, n)| json!([t, v, n]))
                        .collect();
                    json!({"metric": s.metric, "devices": s.devices, "points": points})
                })
                .collect();
        }
    }
    Ok(Json(out))
}
