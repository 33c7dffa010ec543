//! `/debug`: heap and CPU profiles on demand and live task counts (admin only; see
//! [`crate::debug::Debugging`] and docs/observability.md).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::debug::{
    CPU_PROFILE_MAX_SECONDS, CPU_PROFILE_MIN_SECONDS, CpuProfileFormat, DebugError, Debugging,
    TaskCounts,
};
use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::ApiState;

/// The content type of a gzip-compressed pprof protobuf.
const PPROF_CONTENT_TYPE: &str = "application/octet-stream";

impl From<DebugError> for ApiError {
    fn from(error: DebugError) -> ApiError {
        match error {
            DebugError::Conflict(message) => ApiError::with_status(StatusCode::CONFLICT, message),
            DebugError::Internal(message) => ApiError::Internal(message),
        }
    }
}

/// The server's profilers, or 503 when this server has none.
fn source(state: &ApiState) -> Result<Arc<dyn Debugging>, ApiError> {
    state.debug.clone().ok_or_else(|| {
        ApiError::with_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "profiling is not available on this server",
        )
    })
}

/// A profile as a download.
fn profile_response(bytes: Vec<u8>, content_type: &'static str, name: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// Whether the heap profiler samples.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct HeapProfiling {
    /// `true`: allocations are sampled (one per ~512 KiB allocated, on average).
    active: bool,
}

/// The heap profile now (jemalloc's sampled live allocations with their call stacks), as a
/// gzip-compressed pprof protobuf that `go tool pprof` opens. 409 while the heap profiler is
/// off: switch it on with `PUT /debug/pprof/heap/active` (or `debug.heap_profiling` in the
/// config) and let the allocations of interest happen first.
#[utoipa::path(
    get,
    path = "/debug/pprof/heap",
    tag = "debug",
    responses(
        (status = 200, description = "pprof protobuf, gzip", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 409, description = "The heap profiler is off", body = ErrorBody),
        (status = 503, description = "No profiler on this server", body = ErrorBody),
    )
)]
pub(crate) async fn heap_profile(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let bytes = source(&state)?.heap_profile().await?;
    Ok(profile_response(bytes, PPROF_CONTENT_TYPE, "heap.pb.gz"))
}

/// Whether the heap profiler is on.
#[utoipa::path(
    get,
    path = "/debug/pprof/heap/active",
    tag = "debug",
    responses(
        (status = 200, description = "The heap profiler's state", body = HeapProfiling),
        (status = 503, description = "No profiler on this server", body = ErrorBody),
    )
)]
pub(crate) async fn get_heap_profiling(
    State(state): State<ApiState>,
) -> Result<Json<HeapProfiling>, ApiError> {
    let active = source(&state)?.heap_profiling().await?;
    Ok(Json(HeapProfiling { active }))
}

/// Switches the heap profiler on or off. Off stops sampling and forgets what was sampled; the
/// profiler is compiled in either way.
#[utoipa::path(
    put,
    path = "/debug/pprof/heap/active",
    tag = "debug",
    request_body = HeapProfiling,
    responses(
        (status = 200, description = "The heap profiler's new state", body = HeapProfiling),
        (status = 400, description = "Not `{\"active\": true|false}`", body = ErrorBody),
        (status = 503, description = "No profiler on this server", body = ErrorBody),
    )
)]
pub(crate) async fn set_heap_profiling(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<HeapProfiling>,
) -> Result<Json<HeapProfiling>, ApiError> {
    let active = source(&state)?.set_heap_profiling(body.active).await?;
    Ok(Json(HeapProfiling { active }))
}

/// The query of `GET /debug/pprof/profile`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CpuProfileQuery {
    /// How long to sample, 1..=60 seconds (default 10).
    seconds: Option<u32>,
    /// `pprof` (default: gzip-compressed pprof protobuf) or `flamegraph` (SVG).
    format: Option<String>,
}

/// Samples the CPU (99 times a second, every thread) for `seconds` and returns the profile:
/// pprof protobuf (gzip) or a flame graph SVG. One at a time: 409 while another runs.
#[utoipa::path(
    get,
    path = "/debug/pprof/profile",
    tag = "debug",
    params(CpuProfileQuery),
    responses(
        (status = 200, description = "pprof protobuf (gzip), or SVG with `format=flamegraph`", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "`seconds` outside 1..=60 or an unknown `format`", body = ErrorBody),
        (status = 409, description = "Another CPU profile is running", body = ErrorBody),
        (status = 503, description = "No profiler on this server", body = ErrorBody),
    )
)]
pub(crate) async fn cpu_profile(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<CpuProfileQuery>,
) -> Result<Response, ApiError> {
    let seconds = query.seconds.unwrap_or(10);
    if !(CPU_PROFILE_MIN_SECONDS..=CPU_PROFILE_MAX_SECONDS).contains(&seconds) {
        return Err(ApiError::BadRequest(format!(
            "seconds must be within {CPU_PROFILE_MIN_SECONDS}..={CPU_PROFILE_MAX_SECONDS}"
        )));
    }
    let format = match query.format.as_deref() {
        None | Some("pprof") => CpuProfileFormat::Pprof,
        Some("flamegraph") => CpuProfileFormat::Flamegraph,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "format must be pprof or flamegraph".into(),
            ));
        }
    };
    let bytes = source(&state)?.cpu_profile(seconds, format).await?;
    Ok(match format {
        CpuProfileFormat::Pprof => profile_response(bytes, PPROF_CONTENT_TYPE, "profile.pb.gz"),
        CpuProfileFormat::Flamegraph => profile_response(bytes, "image/svg+xml", "profile.svg"),
    })
}

/// Live tasks by kind beside online sessions: connection tasks that outnumber online sessions
/// are what the leak watchdog alerts on.
#[utoipa::path(
    get,
    path = "/debug/tasks",
    tag = "debug",
    responses(
        (status = 200, description = "Live tasks by kind", body = TaskCounts),
        (status = 503, description = "No profiler on this server", body = ErrorBody),
    )
)]
pub(crate) async fn tasks(State(state): State<ApiState>) -> Result<Json<TaskCounts>, ApiError> {
    Ok(Json(source(&state)?.tasks().await))
}
