//! Pipelines (`[[pipelines]]` in the config file): each one's state, last error and
//! counters, as `myriad ctl pipelines status` prints them.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use myriad_pipeline::status::{RECORD_COUNTERS, StatusSnapshot};
use serde::Serialize;
use utoipa::ToSchema;

use crate::dto::ErrorBody;
use crate::error::ApiError;
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

impl From<StatusSnapshot> for PipelineStatusDto {
    fn from(s: StatusSnapshot) -> Self {
        let (last_error, last_error_ms) = match s.last_error {
            Some((error, at)) => (Some(error), Some(at)),
            None => (None, None),
        };
        PipelineStatusDto {
            name: s.name,
            source: s.source,
            sink: s.sink,
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

/// Every configured pipeline, in config order.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineList {
    /// The pipelines.
    pub pipelines: Vec<PipelineStatusDto>,
}

/// The status of every pipeline.
#[utoipa::path(
    get,
    path = "/api/v1/pipelines",
    tag = "pipelines",
    responses((status = 200, description = "Every pipeline, in config order", body = PipelineList))
)]
pub(crate) async fn list_pipelines(State(state): State<ApiState>) -> Json<PipelineList> {
    Json(PipelineList {
        pipelines: state
            .pipelines
            .iter()
            .map(|p| p.snapshot().into())
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
        .iter()
        .find(|p| p.name() == name)
        .map(|p| Json(p.snapshot().into()))
        .ok_or_else(|| {
            let shown: String = name.chars().take(64).collect();
            ApiError::NotFound(format!("pipeline {shown:?} not found"))
        })
}
