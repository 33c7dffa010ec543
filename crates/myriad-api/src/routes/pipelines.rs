//! Pipelines: each one's state, last error and counters (as `myriad ctl pipelines status`
//! prints them); pipelines defined over the API (`PUT`, `DELETE`); records streamed into a
//! pipeline whose source is `http` (`POST .../records`). See docs/pipelines.md.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;
use myriad_pipeline::status::{RECORD_COUNTERS, StatusSnapshot};
use serde::Serialize;
use utoipa::ToSchema;

use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::pipelines::{PipelineControlError, PipelineOrigin, PutOutcome, not_found};
use crate::state::ApiState;

/// One pipeline's status.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineStatusDto {
    /// Its name.
    pub name: String,
    /// Its source: the rule's FROM topic filter.
    pub source: String,
    /// Its sink's kind (`file`, `mqtt`, ...).
    pub sink: String,
    /// `config` (`[[pipelines]]` in the config file; read-only here) or `api` (defined with
    /// `PUT /api/v1/pipelines/{name}`).
    pub origin: String,
    /// `starting`, `running`, `retrying` (a write failed; retried with backoff), `failed`
    /// (ended with an error; restarted after a delay), `stopped` or `finished` (a one-shot
    /// source, a PostgreSQL query or a telemetry range, was read whole).
    pub state: String,
    /// Since when it is in that state (unix ms).
    pub state_since_ms: i64,
    /// The last error (at most 1 KiB), if any.
    pub last_error: Option<String>,
    /// When the last error happened (unix ms).
    pub last_error_ms: Option<i64>,
    /// Records by stage outcome: `received` (from the source), `passed`, `filtered`,
    /// `failed` (the rule), `unmatched`, `committed`, `refused` (the sink).
    pub records: BTreeMap<String, u64>,
    /// Batches committed.
    pub batches: u64,
    /// Records written to the dead-letter file.
    pub dead_letters: u64,
    /// Writes retried.
    pub retries: u64,
    /// Restarts after failing.
    pub restarts: u64,
    /// Messages received and not yet acknowledged to the broker.
    pub lag: u64,
    /// When a batch was last committed (unix ms), if ever.
    pub last_commit_ms: Option<i64>,
}

impl PipelineStatusDto {
    fn new(s: StatusSnapshot, origin: PipelineOrigin) -> Self {
        let (last_error, last_error_ms) = match s.last_error {
            Some((error, at)) => (Some(error), Some(at)),
            None => (None, None),
        };
        PipelineStatusDto {
            name: s.name,
            source: s.source,
            sink: s.sink,
            origin: origin.as_str().to_owned(),
            state: s.state.as_str().to_owned(),
            state_since_ms: s.state_since_ms,
            last_error,
            last_error_ms,
            records: RECORD_COUNTERS
                .iter()
                .zip(s.records)
                .map(|(name, n)| ((*name).to_owned(), n))
                .collect(),
            batches: s.batches,
            dead_letters: s.dead_letters,
            retries: s.retries,
            restarts: s.restarts,
            lag: s.lag,
            last_commit_ms: s.last_commit_ms,
        }
    }
}

/// Every pipeline: config-file ones in config order, then API ones by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineList {
    /// The pipelines.
    pub pipelines: Vec<PipelineStatusDto>,
}

/// What the lines of a `POST .../records` body became.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestReportDto {
    /// Lines committed by the sink or filtered out by the rule's WHERE.
    pub accepted: u64,
    /// Lines written to the dead-letter file (longer than `max_line_bytes`, not JSON,
    /// refused by the sink).
    pub dead_lettered: u64,
}

impl From<PipelineControlError> for ApiError {
    fn from(error: PipelineControlError) -> Self {
        match error {
            PipelineControlError::NotFound(m) => ApiError::NotFound(m),
            PipelineControlError::Invalid(m) => ApiError::BadRequest(m),
            PipelineControlError::Conflict(m) => ApiError::Conflict(m),
            PipelineControlError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            PipelineControlError::Unavailable(message) => ApiError::Other {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message,
            },
            PipelineControlError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// The status of every pipeline.
#[utoipa::path(
    get,
    path = "/api/v1/pipelines",
    tag = "pipelines",
    responses((status = 200, description = "Every pipeline: the config file's in its order, then the API's by name", body = PipelineList))
)]
pub(crate) async fn list_pipelines(State(state): State<ApiState>) -> Json<PipelineList> {
    Json(PipelineList {
        pipelines: state
            .pipelines
            .list()
            .into_iter()
            .map(|p| PipelineStatusDto::new(p.status.snapshot(), p.origin))
            .collect(),
    })
}

/// The status of one pipeline.
#[utoipa::path(
    get,
    path = "/api/v1/pipelines/{name}",
    tag = "pipelines",
    params(("name" = String, Path, description = "The pipeline's name")),
    responses(
        (status = 200, description = "Its status", body = PipelineStatusDto),
        (status = 404, description = "No pipeline of that name", body = ErrorBody),
    )
)]
pub(crate) async fn get_pipeline(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PipelineStatusDto>, ApiError> {
    state
        .pipelines
        .list()
        .into_iter()
        .find(|p| p.status.name() == name)
        .map(|p| Json(PipelineStatusDto::new(p.status.snapshot(), p.origin)))
        .ok_or_else(|| ApiError::NotFound(not_found(&name)))
}

/// Creates or replaces a pipeline defined over the API. The body has the fields of a
/// `[[pipelines]]` entry as JSON (`name` may be left out; if given it must be the path's).
/// It is checked as the config file's entries are (the message names the field), stored,
/// and started; it is started again after a restart. Replacing one drains and stops the old
/// one first. Pipelines of the config file cannot be replaced (409).
#[utoipa::path(
    put,
    path = "/api/v1/pipelines/{name}",
    tag = "pipelines",
    params(("name" = String, Path, description = "The pipeline's name, `[a-z0-9_-]{1,64}`")),
    request_body(content = Object, description = "A `[[pipelines]]` entry as JSON: sql, sink, dead_letter, source, batch, in_flight, deadline_ms"),
    responses(
        (status = 201, description = "Created and started", body = PipelineStatusDto),
        (status = 200, description = "Replaced and started", body = PipelineStatusDto),
        (status = 400, description = "Invalid definition; the message names the field", body = ErrorBody),
        (status = 409, description = "A config-file pipeline, a file another pipeline writes, or too many pipelines", body = ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = ErrorBody),
    )
)]
pub(crate) async fn put_pipeline(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(definition): ApiJson<serde_json::Value>,
) -> Result<(StatusCode, Json<PipelineStatusDto>), ApiError> {
    let outcome = state.pipelines.put(name.clone(), definition).await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Replaced => StatusCode::OK,
    };
    let Json(dto) = get_pipeline(State(state), Path(name)).await?;
    Ok((status, Json(dto)))
}

/// Stops a pipeline defined over the API (what it holds is drained and committed, for at
/// most the stop grace period) and forgets it. Its MQTT source session stays (with the
/// messages queued for it) until it expires: a pipeline put again under the same name
/// resumes from it. Pipelines of the config file cannot be deleted (409).
#[utoipa::path(
    delete,
    path = "/api/v1/pipelines/{name}",
    tag = "pipelines",
    params(("name" = String, Path, description = "The pipeline's name")),
    responses(
        (status = 204, description = "Stopped and deleted"),
        (status = 404, description = "No pipeline of that name", body = ErrorBody),
        (status = 409, description = "A config-file pipeline", body = ErrorBody),
    )
)]
pub(crate) async fn delete_pipeline(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.pipelines.delete(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams records into a pipeline whose source is `{ type = "http" }`: the body is NDJSON,
/// one JSON value per line (blank lines skipped; the last line may lack its newline), each
/// line a record with the topic `http/{name}`. The body is read only as fast as the pipeline
/// takes records (backpressure). The answer comes once every line is committed by the sink,
/// filtered out, or dead-lettered (a line longer than the source's `max_line_bytes`, not
/// JSON, or refused by the sink): at least once for the caller, who sends the body again
/// on any other answer. A body larger than the source's `max_body_bytes` is refused (413;
/// lines before the limit may be committed).
#[utoipa::path(
    post,
    path = "/api/v1/pipelines/{name}/records",
    tag = "pipelines",
    params(("name" = String, Path, description = "The pipeline's name")),
    request_body(description = "NDJSON: one JSON value per line", content((String = "application/x-ndjson"))),
    responses(
        (status = 200, description = "Every line committed or dead-lettered", body = IngestReportDto),
        (status = 400, description = "The body could not be read", body = ErrorBody),
        (status = 404, description = "No pipeline of that name", body = ErrorBody),
        (status = 409, description = "The pipeline's source is not `http`", body = ErrorBody),
        (status = 413, description = "Body larger than the source's max_body_bytes", body = ErrorBody),
        (status = 503, description = "The pipeline stopped before every line was committed; send again", body = ErrorBody),
    )
)]
pub(crate) async fn ingest_records(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestReportDto>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let stream = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(|e| e.to_string()));
    let counts = state
        .pipelines
        .ingest(name, Box::pin(stream), declared)
        .await?;
    Ok(Json(IngestReportDto {
        accepted: counts.accepted,
        dead_lettered: counts.dead_lettered,
    }))
}
