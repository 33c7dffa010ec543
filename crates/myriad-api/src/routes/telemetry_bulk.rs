//! Bulk telemetry: writes in InfluxDB line protocol or JSON (`POST /api/v1/telemetry/write`,
//! and the InfluxDB compatible `POST /write` and `POST /api/v2/write`), and streaming export
//! (`GET /api/v1/devices/{id}/telemetry/export`).
//!
//! Writes: the body (at most [`WRITE_BODY_LIMIT`] bytes, [`MAX_WRITE_LINES`] lines or JSON
//! items, [`MAX_WRITE_POINTS`] samples; one past any is a 413 and nothing is written) is parsed
//! whole ([`myriad_fleet::lineproto`] for line protocol, `Content-Type: text/plain` or none;
//! `application/json` for JSON), every `device` is looked up in the registry (an unknown one makes
//! its line a bad line, its samples counted as `unregistered`), and the good lines' samples go
//! to the telemetry writer in one job; the answer comes after the writer appended them to the WAL
//! (fsynced when `[store] fsync`). As InfluxDB's "partial write", the good lines are kept when
//! some are bad: the answer is then a 400 naming the first bad line, with the counts.
//!
//! Export: points are read one metric, one day and at most
//! [`EXPORT_CHUNK_POINTS`](myriad_fleet::service::telemetry::EXPORT_CHUNK_POINTS) points at a time
//! and streamed as CSV (`ts,metric,value`) or NDJSON, so memory stays bounded whatever the range.
//! An error after the first byte ends the stream early (the body is then cut short).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use myriad_fleet::lineproto::{Precision, parse_body};
use myriad_fleet::registry::DeviceId;
use myriad_fleet::service::telemetry::{DeviceSamples, StoredPoint, TelemetryService};
use myriad_fleet::telemetry::{ParsedSample, Refusal, Sample, TelemetryLimits, parse_value};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::devices::read_device;
use super::telemetry::{now_ms, parse_metrics, query_error, time_range, unavailable, value_json};
use crate::blocking::blocking;
use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::extract::{ApiQuery, DevicePath};
use crate::state::ApiState;

/// Largest write body, 4 MiB.
pub(crate) const WRITE_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Most lines (line protocol, empty and comment lines not counted) or JSON items per write.
pub(crate) const MAX_WRITE_LINES: usize = 100_000;
/// Most samples (one field or metric at one timestamp) per write.
pub(crate) const MAX_WRITE_POINTS: usize = 100_000;

/// Query string of the write routes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WriteParams {
    /// Unit of line protocol timestamps: `ns` (default), `us`, `ms` or `s` (also `n`, `u`).
    /// JSON `ts` is always unix ms.
    pub precision: Option<String>,
}

/// The first bad line of a write.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WriteLineError {
    /// 1-based line number (JSON: 1-based item number).
    pub line: usize,
    /// Why it is bad.
    pub error: String,
}

/// Answer of a write: `200` when every line was good (samples may still be refused by rule or
/// by the store: `refused`), `400` (with `status` and `message`) when some lines were bad; the
/// good lines' samples are stored either way.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WriteReport {
    /// HTTP status (only with a bad line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `partial write: ...` (only with a bad line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Samples stored (durable as `[store] fsync` says).
    pub written: usize,
    /// Samples not stored (by rule, by the store, or of an unknown device).
    pub refused: usize,
    /// `refused` by reason (the labels of `myriad_telemetry_points_refused_total`).
    pub refusals: BTreeMap<String, usize>,
    /// Lines that did not parse or named an unknown device.
    pub bad_lines: usize,
    /// The first bad line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<WriteLineError>,
}

/// One JSON write item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonItem {
    device: String,
    points: Value,
}

/// What a body parsed into, before the registry check.
struct Parsed {
    lines: Vec<(usize, String, Vec<ParsedSample>)>,
    refused: Vec<Refusal>,
    errors: Vec<(usize, String)>,
    line_count: usize,
}

fn too_large(what: &str) -> ApiError {
    ApiError::PayloadTooLarge(what.to_owned())
}

fn parse_lines(body: &[u8], precision: Precision, now: i64) -> Parsed {
    let p = parse_body(body, precision, now, &TelemetryLimits::default(), |d| {
        DeviceId::new(d).is_ok()
    });
    Parsed {
        lines: p
            .lines
            .into_iter()
            .map(|l| (l.line, l.device, l.samples))
            .collect(),
        refused: p.refused,
        errors: p
            .errors
            .into_iter()
            .map(|(n, e)| (n, e.to_string()))
            .collect(),
        line_count: p.line_count,
    }
}

fn parse_json(body: &[u8], now: i64) -> Result<Parsed, ApiError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body: not JSON: {e}")))?;
    let items = match doc {
        Value::Array(items) => items,
        one @ Value::Object(_) => vec![one],
        _ => {
            return Err(ApiError::BadRequest(
                "body: a {\"device\", \"points\"} object or an array of them expected".into(),
            ));
        }
    };
    if items.len() > MAX_WRITE_LINES {
        return Err(too_large(&format!(
            "body: {} items, at most {MAX_WRITE_LINES} per request",
            items.len()
        )));
    }
    let limits = TelemetryLimits {
        max_points: MAX_WRITE_POINTS,
        ..TelemetryLimits::default()
    };
    let mut out = Parsed {
        lines: Vec::new(),
        refused: Vec::new(),
        errors: Vec::new(),
        line_count: items.len(),
    };
    for (i, item) in items.into_iter().enumerate() {
        let n = i + 1;
        let item = match serde_json::from_value::<JsonItem>(item) {
            Ok(item) => item,
            Err(e) => {
                out.errors
                    .push((n, format!("expected {{\"device\", \"points\"}}: {e}")));
                continue;
            }
        };
        if DeviceId::new(&item.device).is_err() {
            out.errors.push((
                n,
                format!("device {:?} is not a valid device id", item.device),
            ));
            continue;
        }
        if !item.points.is_array() {
            out.errors
                .push((n, "points: an array of objects expected".into()));
            continue;
        }
        let parsed = parse_value(Some(json!({ "points": item.points })), now, &limits);
        out.refused.extend(parsed.refused);
        if !parsed.samples.is_empty() {
            out.lines.push((n, item.device, parsed.samples));
        }
    }
    Ok(out)
}

/// Which registered devices, of `devices`, exist.
async fn known_devices(
    state: &ApiState,
    devices: BTreeSet<String>,
) -> Result<BTreeSet<String>, ApiError> {
    let store = state.store.clone();
    blocking(move || {
        let mut known = BTreeSet::new();
        for d in devices {
            let Ok(id) = DeviceId::new(&d) else { continue };
            if store.get_device(&id)?.is_some() {
                known.insert(d);
            }
        }
        Ok(known)
    })
    .await
}

/// The shared write: parses, checks devices, stores and waits for the WAL.
async fn write(
    state: ApiState,
    params: WriteParams,
    headers: &HeaderMap,
    body: Body,
) -> Result<WriteReport, ApiError> {
    let precision = match params.precision.as_deref() {
        None | Some("") => Precision::default(),
        Some(p) => Precision::parse(p).ok_or_else(|| {
            ApiError::BadRequest(format!("precision: one of ns, us, ms, s; got {p:?}"))
        })?,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = match mime.as_str() {
        "application/json" => true,
        "text/plain" | "" | "application/octet-stream" => false,
        other => {
            return Err(ApiError::Other {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: format!(
                    "Content-Type: text/plain (line protocol) or application/json, got {other:?}"
                ),
            });
        }
    };
    let Some(telemetry) = state.telemetry.clone() else {
        return Err(unavailable("telemetry is disabled (telemetry.enabled)"));
    };
    // Read up to the limit (not refused on Content-Length alone, so a client one byte over
    // has sent its whole body and reads the 413 instead of a reset).
    let limit_msg = format!("body: larger than {} MiB", WRITE_BODY_LIMIT / (1024 * 1024));
    let bytes = axum::body::to_bytes(body, WRITE_BODY_LIMIT)
        .await
        .map_err(|_| too_large(&limit_msg))?;
    let now = now_ms();
    let mut parsed = if json {
        parse_json(&bytes, now)?
    } else {
        parse_lines(&bytes, precision, now)
    };
    if parsed.line_count > MAX_WRITE_LINES {
        return Err(too_large(&format!(
            "body: {} lines, at most {MAX_WRITE_LINES} per request",
            parsed.line_count
        )));
    }
    let samples: usize = parsed.lines.iter().map(|(_, _, s)| s.len()).sum();
    if samples > MAX_WRITE_POINTS {
        return Err(too_large(&format!(
            "body: {samples} samples, at most {MAX_WRITE_POINTS} per request"
        )));
    }
    let devices: BTreeSet<String> = parsed.lines.iter().map(|(_, d, _)| d.clone()).collect();
    let known = known_devices(&state, devices).await?;
    let mut by_device: BTreeMap<String, Vec<ParsedSample>> = BTreeMap::new();
    for (n, device, samples) in std::mem::take(&mut parsed.lines) {
        if known.contains(&device) {
            by_device.entry(device).or_default().extend(samples);
        } else {
            parsed
                .refused
                .extend(std::iter::repeat_n(Refusal::UnknownDevice, samples.len()));
            parsed
                .errors
                .push((n, format!("unknown device {device:?} (not registered)")));
        }
    }
    parsed.errors.sort_by_key(|(n, _)| *n);
    let mut refusals: BTreeMap<Refusal, usize> = BTreeMap::new();
    for r in &parsed.refused {
        *refusals.entry(*r).or_default() += 1;
    }
    for (r, n) in &refusals {
        telemetry.count_refused(*r, *n);
    }
    let batches: Vec<DeviceSamples> = by_device
        .into_iter()
        .map(|(device, samples)| DeviceSamples { device, samples })
        .collect();
    let written = if batches.is_empty() {
        0
    } else {
        let outcome = telemetry
            .write_durable(batches)
            .await
            .map_err(query_error)?;
        for (r, n) in outcome.refused {
            *refusals.entry(r).or_default() += n;
        }
        outcome.written
    };
    let first_error = parsed.errors.first().map(|(line, error)| WriteLineError {
        line: *line,
        error: error.clone(),
    });
    Ok(WriteReport {
        status: first_error.as_ref().map(|_| 400),
        message: first_error
            .as_ref()
            .map(|e| format!("partial write: line {}: {}", e.line, e.error)),
        written,
        refused: refusals.values().sum(),
        refusals: refusals
            .into_iter()
            .map(|(r, n)| (r.as_str().to_owned(), n))
            .collect(),
        bad_lines: parsed.errors.len(),
        first_error,
    })
}

fn report_response(report: WriteReport, no_content: bool) -> Response {
    match (&report.first_error, no_content) {
        (Some(_), _) => (StatusCode::BAD_REQUEST, axum::Json(report)).into_response(),
        (None, true) => StatusCode::NO_CONTENT.into_response(),
        (None, false) => (StatusCode::OK, axum::Json(report)).into_response(),
    }
}

/// Writes telemetry of many devices at once: InfluxDB line protocol (`text/plain`, the default;
/// metric `<measurement>.<field>`, device from the required `device` tag) or JSON
/// (`application/json`: `{"device": "d1", "points": [{"ts": .., "temp": ..}]}` or an array of
/// those). Answers after the samples are in the WAL. Bad lines do not stop the good ones
/// (a 400 "partial write" names the first bad line).
#[utoipa::path(
    post,
    path = "/api/v1/telemetry/write",
    tag = "telemetry",
    params(WriteParams),
    request_body(
        description = "Line protocol, or JSON",
        content((String = "text/plain"), (Object = "application/json"))
    ),
    responses(
        (status = 200, description = "Every line was good", body = WriteReport),
        (status = 400, description = "Partial write (the good lines are stored), or a bad parameter", body = WriteReport),
        (status = 413, description = "Body over 4 MiB, over 100,000 lines or 100,000 samples; nothing stored", body = ErrorBody),
        (status = 415, description = "Another Content-Type", body = ErrorBody),
        (status = 503, description = "Telemetry is disabled or stopped", body = ErrorBody),
    )
)]
pub(crate) async fn write_telemetry(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    Ok(report_response(
        write(state, params, &headers, body).await?,
        false,
    ))
}

/// InfluxDB 1.x compatible write (`db`, `rp`, `u`, `p` are ignored): as
/// `POST /api/v1/telemetry/write`, but `204 No Content` on success as InfluxDB.
#[utoipa::path(
    post,
    path = "/write",
    tag = "telemetry",
    params(WriteParams),
    request_body(description = "Line protocol", content((String = "text/plain"))),
    responses(
        (status = 204, description = "Every line was good"),
        (status = 400, description = "Partial write (the good lines are stored)", body = WriteReport),
        (status = 413, description = "Too large; nothing stored", body = ErrorBody),
    )
)]
pub(crate) async fn write_influx_v1(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    Ok(report_response(
        write(state, params, &headers, body).await?,
        true,
    ))
}

/// InfluxDB 2.x compatible write (`org`, `bucket` are ignored): as
/// `POST /api/v1/telemetry/write`, but `204 No Content` on success as InfluxDB.
#[utoipa::path(
    post,
    path = "/api/v2/write",
    tag = "telemetry",
    params(WriteParams),
    request_body(description = "Line protocol", content((String = "text/plain"))),
    responses(
        (status = 204, description = "Every line was good"),
        (status = 400, description = "Partial write (the good lines are stored)", body = WriteReport),
        (status = 413, description = "Too large; nothing stored", body = ErrorBody),
    )
)]
pub(crate) async fn write_influx_v2(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    Ok(report_response(
        write(state, params, &headers, body).await?,
        true,
    ))
}

/// Query string of `GET /api/v1/devices/{id}/telemetry/export`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExportParams {
    /// Comma-separated metric names (at most 64); default: every metric of the device.
    pub metrics: Option<String>,
    /// Start, unix ms, inclusive (default 0).
    #[param(value_type = Option<i64>)]
    pub from: Option<String>,
    /// End, unix ms, exclusive (default: now plus one hour).
    #[param(value_type = Option<i64>)]
    pub to: Option<String>,
    /// `csv` (default; header `ts,metric,value`) or `ndjson` (`{"ts","metric","value"}` lines).
    pub format: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

struct ExportState {
    telemetry: Arc<TelemetryService>,
    device: String,
    metrics: Vec<String>,
    /// Index of the metric being read, and its cursor.
    at: usize,
    from: i64,
    start: i64,
    to: i64,
    format: Format,
    header: bool,
}

fn render(format: Format, metric: &str, points: &[StoredPoint], out: &mut String) {
    use std::fmt::Write;
    for p in points {
        let _ = match (format, p.value) {
            (Format::Csv, Sample::Number(f)) => writeln!(out, "{},{metric},{f}", p.ts),
            (Format::Csv, Sample::Bool(b)) => writeln!(out, "{},{metric},{b}", p.ts),
            (Format::Ndjson, v) => writeln!(
                out,
                "{}",
                json!({"ts": p.ts, "metric": metric, "value": value_json(v)})
            ),
        };
    }
}

async fn next_piece(mut st: ExportState) -> Option<(Result<Bytes, std::io::Error>, ExportState)> {
    if st.header {
        st.header = false;
        if st.format == Format::Csv {
            return Some((Ok(Bytes::from_static(b"ts,metric,value\n")), st));
        }
    }
    loop {
        let metric = st.metrics.get(st.at)?.clone();
        let chunk = match st
            .telemetry
            .export_chunk(
                &st.device,
                &metric,
                st.from,
                st.to,
                myriad_fleet::service::telemetry::EXPORT_CHUNK_POINTS,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(device = %st.device, metric, error = %e, "telemetry export cut short");
                st.at = st.metrics.len();
                return Some((Err(std::io::Error::other(e)), st));
            }
        };
        match chunk.next {
            Some(next) => st.from = next,
            None => {
                st.at += 1;
                st.from = st.start;
            }
        }
        if !chunk.points.is_empty() {
            let mut out = String::with_capacity(chunk.points.len() * 32);
            render(st.format, &metric, &chunk.points, &mut out);
            return Some((Ok(Bytes::from(out)), st));
        }
    }
}

/// Every raw point of a device's metrics in a range, streamed as CSV or NDJSON (no point cap;
/// memory bounded). Sorted by metric, then time.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/telemetry/export",
    tag = "telemetry",
    params(("id" = String, Path, description = "The device id"), ExportParams),
    responses(
        (status = 200, description = "The points, streamed", content_type = "text/csv", body = String),
        (status = 400, description = "A bad parameter (the message names it)", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = "Telemetry is disabled or stopped", body = ErrorBody),
    )
)]
pub(crate) async fn export_telemetry(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
    ApiQuery(params): ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    let format = match params.format.as_deref() {
        None | Some("csv") => Format::Csv,
        Some("ndjson") => Format::Ndjson,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format: csv or ndjson, got {other:?}"
            )));
        }
    };
    let metrics = parse_metrics(params.metrics.as_deref())?;
    let (from, to) = time_range(params.from.as_deref(), params.to.as_deref(), |_| 0)?;
    let Some(telemetry) = state.telemetry.clone() else {
        return Err(unavailable("telemetry is disabled (telemetry.enabled)"));
    };
    read_device(state, id.clone()).await?;
    let device = id.as_str().to_owned();
    let metrics = if metrics.is_empty() {
        telemetry.metrics(&device).await.map_err(query_error)?
    } else {
        metrics
    };
    let st = ExportState {
        telemetry,
        device,
        metrics,
        at: 0,
        from,
        start: from,
        to,
        format,
        header: true,
    };
    let content_type = match format {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Ndjson => "application/x-ndjson",
    };
    let body = Body::from_stream(stream::unfold(st, next_piece));
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}
