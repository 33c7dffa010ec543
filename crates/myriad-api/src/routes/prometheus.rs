//! A Prometheus-compatible read API over the telemetry store, so Grafana's Prometheus data
//! source charts device telemetry without plug-ins.
//!
//! Routes (all behind the bearer token like the rest of `/api/v1`): `GET|POST /api/v1/query`,
//! `GET|POST /api/v1/query_range`, `GET|POST /api/v1/series`, `GET|POST /api/v1/labels`,
//! `GET /api/v1/label/{name}/values`, `GET /api/v1/status/buildinfo` and
//! `GET /api/v1/metadata` (always empty: the store keeps no metric metadata).
//!
//! Parameters come from the query string and, for POST, from an
//! `application/x-www-form-urlencoded` body (Grafana's default), as in Prometheus: `query`,
//! `time`, `start`, `end` (Unix seconds or RFC 3339), `step` (seconds or a duration such as
//! `15s`), `match[]` (repeated). Answers use Prometheus's envelope:
//! `{"status":"success","data":..}`, or `{"status":"error","errorType":"bad_data","error":..}`
//! with 400 (bad input), `execution` with 422 (limits hit while running) and `unavailable`
//! with 503 (telemetry disabled or stopped).
//!
//! The PromQL subset and its evaluation are in [`myriad_tsdb::promql`]; `query` and
//! `query_range` read the store series by series from the blocking pool
//! ([`myriad_fleet::service::telemetry::SlicedReads`]), the index APIs run as one job on the
//! telemetry writer thread ([`myriad_fleet::service::telemetry::TelemetryService::read`]).
//! `start`/`end` of `series`, `labels` and `label/{name}/values` keep the series (the `match[]`
//! selects, or without `match[]` every series) that have data in that window.
//!
//! Series carry their device's registry groups (`group`) and attributes as labels
//! ([`myriad_fleet::service::telemetry_labels`]): the store's part of a selector runs on the
//! telemetry writer thread, the registry is read by device id on the blocking pool.
//!
//! # Limits
//!
//! | input | limit | one past |
//! |---|---|---|
//! | parameters per request | [`MAX_PARAMS`] (256) | 400 `bad_data` |
//! | `match[]` per request | [`MAX_MATCH`] (64) | 400 `bad_data` naming `match[]` |
//! | body | the API's 1 MiB | 413 |
//! | query text, steps, series, samples, regex | see [`myriad_tsdb::promql`] | 400 / 422 |
//! | series / devices examined for device labels or a window | [`myriad_tsdb::promql::PromLimits::max_examined`] (100,000) | 422 `execution` |

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use myriad_fleet::service::telemetry::SlicedReads;
use myriad_fleet::service::telemetry_labels::{LabelledReads, RegistryLabels};
use myriad_tsdb::Db;
use myriad_tsdb::promql::{
    self, Instant, Labels, PromError, PromLimits, Query, Selector, SeriesSource, Window,
};
use serde_json::{Value, json};

use crate::state::ApiState;

/// Most parameters (query string and form body together) one request may carry.
pub(crate) const MAX_PARAMS: usize = 256;
/// Most `match[]` selectors one request may carry.
pub(crate) const MAX_MATCH: usize = 64;

/// An error in Prometheus's envelope.
#[derive(Debug)]
pub(crate) struct PromFailure {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl PromFailure {
    fn bad_data(message: impl Into<String>) -> Self {
        PromFailure {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_data",
            message: message.into(),
        }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        PromFailure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "unavailable",
            message: message.into(),
        }
    }
}

impl From<PromError> for PromFailure {
    fn from(e: PromError) -> Self {
        if let PromError::Unavailable(message) = e {
            return PromFailure::unavailable(message);
        }
        if e.is_bad_data() {
            PromFailure::bad_data(e.to_string())
        } else {
            PromFailure {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                kind: "execution",
                message: e.to_string(),
            }
        }
    }
}

impl IntoResponse for PromFailure {
    fn into_response(self) -> Response {
        let body = json!({"status": "error", "errorType": self.kind, "error": self.message});
        (self.status, Json(body)).into_response()
    }
}

fn success(data: Value) -> Response {
    Json(json!({"status": "success", "data": data})).into_response()
}

/// The request's parameters: (POST) the form body, then the query string.
struct Params(Vec<(String, String)>);

impl Params {
    fn read(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Self, PromFailure> {
        let mut all = Vec::new();
        let mut add = |bytes: &[u8]| -> Result<(), PromFailure> {
            for (k, v) in form_urlencoded::parse(bytes) {
                if all.len() == MAX_PARAMS {
                    return Err(PromFailure::bad_data(format!(
                        "more than {MAX_PARAMS} parameters"
                    )));
                }
                all.push((k.into_owned(), v.into_owned()));
            }
            Ok(())
        };
        if method == Method::POST && !body.is_empty() {
            let form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_none_or(|v| {
                    v.to_ascii_lowercase()
                        .starts_with("application/x-www-form-urlencoded")
                });
            if !form {
                return Err(PromFailure::bad_data(
                    "body: only application/x-www-form-urlencoded is accepted",
                ));
            }
            add(body)?;
        }
        // After the body: body values win, as in Go's `Request.FormValue`.
        if let Some(q) = uri.query() {
            add(q.as_bytes())?;
        }
        Ok(Params(all))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, name: &str) -> Result<&str, PromFailure> {
        self.get(name)
            .ok_or_else(|| PromFailure::bad_data(format!("{name}: parameter is required")))
    }

    fn matchers(&self, limits: &PromLimits) -> Result<Vec<Selector>, PromFailure> {
        let texts: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, _)| k == "match[]")
            .map(|(_, v)| v.as_str())
            .collect();
        if texts.len() > MAX_MATCH {
            return Err(PromFailure::bad_data(format!(
                "match[]: at most {MAX_MATCH} selectors, got {}",
                texts.len()
            )));
        }
        texts
            .into_iter()
            .map(|t| promql::parse_selector(t, limits).map_err(PromFailure::from))
            .collect()
    }
}

/// Runs `f` over the store on the telemetry writer thread.
async fn run<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&Db) -> Result<T, PromError> + Send + 'static,
) -> Result<T, PromFailure> {
    let Some(telemetry) = state.telemetry.clone() else {
        return Err(PromFailure::unavailable(
            "telemetry is disabled (telemetry.enabled)",
        ));
    };
    telemetry
        .read(f)
        .await
        .map_err(|e| PromFailure::unavailable(e.to_string()))?
        .map_err(PromFailure::from)
}

/// PromQL evaluations running at once; more wait their turn (each holds a blocking-pool thread
/// while it reads the store series by series).
pub(crate) const MAX_CONCURRENT_EVALS: usize = 4;
static EVALS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_EVALS);

/// Runs a PromQL evaluation on the blocking pool over [`SlicedReads`]: each selector and each
/// series is read by its own job on the telemetry writer thread, so devices' writes (and their
/// acknowledgements) go on between them instead of waiting for the whole query.
async fn run_sliced<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&dyn SeriesSource) -> Result<T, PromError> + Send + 'static,
) -> Result<T, PromFailure> {
    let Some(telemetry) = state.telemetry.clone() else {
        return Err(PromFailure::unavailable(
            "telemetry is disabled (telemetry.enabled)",
        ));
    };
    let _turn = EVALS
        .acquire()
        .await
        .map_err(|e| PromFailure::unavailable(e.to_string()))?;
    let source = LabelledReads {
        reads: SlicedReads((*telemetry).clone()),
        devices: RegistryLabels(state.store.clone()),
    };
    tokio::task::spawn_blocking(move || f(&source))
        .await
        // A bug in a query must not take the process down: the caller sees 503.
        .map_err(|_| PromFailure::unavailable("the query failed"))?
        .map_err(PromFailure::from)
}

/// Runs `f` with the registry's device labels on the blocking pool (the second phase of the
/// label APIs, after the store's part ran on the telemetry writer).
async fn with_registry<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&RegistryLabels) -> Result<T, PromError> + Send + 'static,
) -> Result<T, PromFailure> {
    let devices = RegistryLabels(state.store.clone());
    tokio::task::spawn_blocking(move || f(&devices))
        .await
        .map_err(|_| PromFailure::unavailable("the label request failed"))?
        .map_err(PromFailure::from)
}

/// The series of `selectors` with data in `window`, with their device labels: the store's
/// candidates on the telemetry writer, then the registry on the blocking pool.
async fn matching_series(
    state: &ApiState,
    selectors: Vec<Selector>,
    window: Window,
    limits: PromLimits,
) -> Result<Vec<Labels>, PromFailure> {
    // `=` matchers on groups and attributes pick their devices from the registry's indexes
    // first, so those selectors' candidates are the devices' series, not every series.
    let (selectors, sets) = with_registry(state, move |devices| {
        let sets = selectors
            .iter()
            .map(|sel| promql::device_sets(sel, devices, &limits))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((selectors, sets))
    })
    .await?;
    let candidates = run(state, move |db| {
        promql::series_candidates_within(db, &selectors, &sets, window, &limits)
    })
    .await?;
    with_registry(state, move |devices| {
        promql::series_finish(candidates, devices, &limits)
    })
    .await
}

fn now_ms() -> i64 {
    myriad_fleet::service::now_ms() as i64
}

/// A timestamp as Prometheus writes it: seconds, a float with the milliseconds.
fn ts_json(ms: i64) -> Value {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

fn point_json(ms: i64, v: f64) -> Value {
    json!([ts_json(ms), promql::format_value(v)])
}

fn matrix_json(m: Vec<(Labels, Vec<(i64, f64)>)>) -> Value {
    let result: Vec<Value> = m
        .into_iter()
        .map(|(labels, points)| {
            let values: Vec<Value> = points.into_iter().map(|(t, v)| point_json(t, v)).collect();
            json!({"metric": labels, "values": values})
        })
        .collect();
    json!({"resultType": "matrix", "result": result})
}

fn parse_time(params: &Params, name: &str) -> Result<Option<i64>, PromFailure> {
    params
        .get(name)
        .map(|s| promql::parse_time(name, s))
        .transpose()
        .map_err(PromFailure::from)
}

/// Evaluates a PromQL expression over a range of time.
#[utoipa::path(
    method(get, post),
    path = "/api/v1/query_range",
    tag = "telemetry",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "POST: the same parameters as a form"),
    params(
        ("query" = String, Query, description = "PromQL (the subset in docs/telemetry.md)"),
        ("start" = String, Query, description = "Unix seconds or RFC 3339"),
        ("end" = String, Query, description = "Unix seconds or RFC 3339"),
        ("step" = String, Query, description = "Seconds or a duration (`15s`); at most 11,000 steps"),
    ),
    responses(
        (status = 200, description = "`{status, data: {resultType: matrix, result}}`", body = Object),
        (status = 400, description = "`bad_data`: a bad parameter or query", body = Object),
        (status = 422, description = "`execution`: a limit was hit while evaluating", body = Object),
        (status = 503, description = "Telemetry is disabled or stopped", body = Object),
    )
)]
pub(crate) async fn query_range(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = Params::read(&method, &uri, &headers, &body)?;
        let limits = PromLimits::default();
        let query = Query::parse(params.require("query")?, &limits)?;
        let start = promql::parse_time("start", params.require("start")?)?;
        let end = promql::parse_time("end", params.require("end")?)?;
        let step = promql::parse_duration("step", params.require("step")?)?;
        promql::check_range_params(start, end, step)?;
        run_sliced(&state, move |db| {
            promql::eval_range(db, &query, start, end, step, &limits)
        })
        .await
    }
    .await;
    match result {
        Ok(m) => success(matrix_json(m)),
        Err(e) => e.into_response(),
    }
}

/// Evaluates a PromQL expression at one time.
#[utoipa::path(
    method(get, post),
    path = "/api/v1/query",
    tag = "telemetry",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "POST: the same parameters as a form"),
    params(
        ("query" = String, Query, description = "PromQL (the subset in docs/telemetry.md)"),
        ("time" = Option<String>, Query, description = "Unix seconds or RFC 3339; default now"),
    ),
    responses(
        (status = 200, description = "`{status, data: {resultType: vector|scalar|matrix, result}}`", body = Object),
        (status = 400, description = "`bad_data`: a bad parameter or query", body = Object),
        (status = 422, description = "`execution`: a limit was hit while evaluating", body = Object),
        (status = 503, description = "Telemetry is disabled or stopped", body = Object),
    )
)]
pub(crate) async fn query(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = Params::read(&method, &uri, &headers, &body)?;
        let limits = PromLimits::default();
        let query = Query::parse(params.require("query")?, &limits)?;
        let t = parse_time(&params, "time")?.unwrap_or_else(now_ms);
        let answer = run_sliced(&state, move |db| {
            promql::eval_instant(db, &query, t, &limits)
        })
        .await?;
        Ok::<_, PromFailure>((t, answer))
    }
    .await;
    match result {
        Ok((t, Instant::Scalar(v))) => {
            success(json!({"resultType": "scalar", "result": point_json(t, v)}))
        }
        Ok((t, Instant::Vector(v))) => {
            let result: Vec<Value> = v
                .into_iter()
                .map(|(labels, v)| json!({"metric": labels, "value": point_json(t, v)}))
                .collect();
            success(json!({"resultType": "vector", "result": result}))
        }
        Ok((_, Instant::Matrix(m))) => success(matrix_json(m)),
        Err(e) => e.into_response(),
    }
}

/// The series matching `match[]` selectors, as label sets.
#[utoipa::path(
    method(get, post),
    path = "/api/v1/series",
    tag = "telemetry",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "POST: the same parameters as a form"),
    params(
        ("match[]" = Vec<String>, Query, description = "Series selectors (at least one, at most 64)"),
        ("start" = Option<String>, Query, description = "Unix seconds or RFC 3339: only series with data from then"),
        ("end" = Option<String>, Query, description = "Unix seconds or RFC 3339: only series with data until then"),
    ),
    responses(
        (status = 200, description = "`{status, data: [labels..]}`", body = Object),
        (status = 400, description = "`bad_data`", body = Object),
        (status = 422, description = "`execution`: too many series or devices to examine", body = Object),
        (status = 503, description = "Telemetry is disabled or stopped", body = Object),
    )
)]
pub(crate) async fn series(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = Params::read(&method, &uri, &headers, &body)?;
        let limits = PromLimits::default();
        let window = window(&params)?;
        let selectors = params.matchers(&limits)?;
        if selectors.is_empty() {
            return Err(PromFailure::bad_data(
                "match[]: no match[] parameter provided",
            ));
        }
        matching_series(&state, selectors, window, limits).await
    }
    .await;
    match result {
        Ok(s) => success(json!(s)),
        Err(e) => e.into_response(),
    }
}

/// `start` and `end` (both included, default: all time) as a [`Window`]; applied to the series
/// a `match[]` selects, or to every series without `match[]`.
fn window(params: &Params) -> Result<Window, PromFailure> {
    let from = parse_time(params, "start")?.unwrap_or(i64::MIN);
    let to = parse_time(params, "end")?.map_or(i64::MAX, |end| end.saturating_add(1));
    Ok(Window { from, to })
}

/// Label names in use (of the series matching `match[]`, if given).
#[utoipa::path(
    method(get, post),
    path = "/api/v1/labels",
    tag = "telemetry",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "POST: the same parameters as a form"),
    params(
        ("match[]" = Option<Vec<String>>, Query, description = "Series selectors (at most 64)"),
        ("start" = Option<String>, Query, description = "Unix seconds or RFC 3339: only series with data from then"),
        ("end" = Option<String>, Query, description = "Unix seconds or RFC 3339: only series with data until then"),
    ),
    responses(
        (status = 200, description = "`{status, data: [names..]}`", body = Object),
        (status = 400, description = "`bad_data`", body = Object),
        (status = 422, description = "`execution`: too many series or devices to examine", body = Object),
        (status = 503, description = "Telemetry is disabled or stopped", body = Object),
    )
)]
pub(crate) async fn labels(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let params = Params::read(&method, &uri, &headers, &body)?;
        let limits = PromLimits::default();
        let window = window(&params)?;
        let selectors = params.matchers(&limits)?;
        if !selectors.is_empty() {
            let series = matching_series(&state, selectors, window, limits).await?;
            return Ok(promql::names_of(series));
        }
        let found = run(&state, move |db| {
            promql::index_labels(db, None, window, &limits)
        })
        .await?;
        with_registry(&state, move |devices| {
            promql::label_names_finish(found, devices)
        })
        .await
    }
    .await;
    match result {
        Ok(names) => success(json!(names)),
        Err(e) => e.into_response(),
    }
}

/// Values of one label (of the series matching `match[]`, if given).
#[utoipa::path(
    get,
    path = "/api/v1/label/{name}/values",
    tag = "telemetry",
    params(
        ("name" = String, Path, description = "The label name (`__name__` for metric names)"),
        ("match[]" = Option<Vec<String>>, Query, description = "Series selectors (at most 64)"),
        ("start" = Option<String>, Query, description = "Unix seconds or RFC 3339: only series with data from then"),
        ("end" = Option<String>, Query, description = "Unix seconds or RFC 3339: only series with data until then"),
    ),
    responses(
        (status = 200, description = "`{status, data: [values..]}`", body = Object),
        (status = 400, description = "`bad_data`", body = Object),
        (status = 422, description = "`execution`: too many series or devices to examine", body = Object),
        (status = 503, description = "Telemetry is disabled or stopped", body = Object),
    )
)]
pub(crate) async fn label_values(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let params = Params::read(&Method::GET, &uri, &headers, &[])?;
        let limits = PromLimits::default();
        let window = window(&params)?;
        if name.is_empty() || name.len() > 256 {
            return Err(PromFailure::bad_data(format!(
                "name: invalid label name {name:?}"
            )));
        }
        let selectors = params.matchers(&limits)?;
        if !selectors.is_empty() {
            let series = matching_series(&state, selectors, window, limits).await?;
            return Ok(promql::values_of(&name, series));
        }
        let asked = name.clone();
        let found = run(&state, move |db| {
            promql::index_labels(db, Some(&asked), window, &limits)
        })
        .await?;
        with_registry(&state, move |devices| {
            promql::label_values_finish(&name, found, devices)
        })
        .await
    }
    .await;
    match result {
        Ok(values) => success(json!(values)),
        Err(e) => e.into_response(),
    }
}

/// Build information, as Grafana probes it to learn the server's flavour.
#[utoipa::path(
    get,
    path = "/api/v1/status/buildinfo",
    tag = "telemetry",
    responses((status = 200, description = "`{status, data: {version, ..}}`", body = Object))
)]
pub(crate) async fn buildinfo() -> Response {
    success(json!({
        // Grafana reads `version` to choose the features it uses; this is the Prometheus API
        // level answered here, not Myriad's version.
        "version": "2.40.0",
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
        "application": "myriad",
        "myriadVersion": env!("CARGO_PKG_VERSION"),
    }))
}

/// Metric metadata: always empty (the store keeps none).
#[utoipa::path(
    get,
    path = "/api/v1/metadata",
    tag = "telemetry",
    responses((status = 200, description = "`{status, data: {}}`", body = Object))
)]
pub(crate) async fn metadata() -> Response {
    success(json!({}))
}
