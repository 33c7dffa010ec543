//! What the pipeline routes ask of the server: [`PipelineControl`], implemented by the binary
//! (which owns the running pipelines and their runtime; this crate has none).

use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use futures_util::Stream;
use myriad_pipeline::status::PipelineStatus;

use crate::observe::BoxFuture;

/// A request body, chunk by chunk (an error ends it).
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Where a pipeline was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineOrigin {
    /// `[[pipelines]]` in the config file: read-only over the API.
    Config,
    /// `PUT /api/v1/pipelines/{name}`: stored, started again after a restart.
    Api,
}

impl PipelineOrigin {
    /// `config` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineOrigin::Config => "config",
            PipelineOrigin::Api => "api",
        }
    }
}

/// One pipeline as listed.
#[derive(Debug, Clone)]
pub struct PipelineEntryView {
    /// Its live status.
    pub status: Arc<PipelineStatus>,
    /// Where it was defined.
    pub origin: PipelineOrigin,
}

/// What a `PUT` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new pipeline (201).
    Created,
    /// An API pipeline replaced: the old one drained and stopped, the new one started (200).
    Replaced,
}

/// What the lines of an ingest body became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestCounts {
    /// Committed by the sink or filtered out by the rule.
    pub accepted: u64,
    /// Written to the dead-letter file.
    pub dead_lettered: u64,
}

/// Why a pipeline request failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum PipelineControlError {
    /// 404: no pipeline of that name.
    #[error("{0}")]
    NotFound(String),
    /// 400: the definition is not valid (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// 409: a config-file pipeline (read-only), a source that is not `http`, a file another
    /// pipeline writes, or too many pipelines.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// 503: the pipeline stopped before every record was committed; retry.
    #[error("{0}")]
    Unavailable(String),
    /// 500: the store failed.
    #[error("{0}")]
    Internal(String),
}

/// The server's pipelines, as the API sees them.
pub trait PipelineControl: Send + Sync {
    /// Every pipeline: config-file ones in config order, then API ones by name.
    fn list(&self) -> Vec<PipelineEntryView>;

    /// Creates or replaces the API pipeline `name` from `definition` (a JSON object with the
    /// fields of a `[[pipelines]]` entry; `name` may be left out). Stored before it starts.
    fn put(
        &self,
        name: String,
        definition: serde_json::Value,
    ) -> BoxFuture<'_, Result<PutOutcome, PipelineControlError>>;

    /// Stops the API pipeline `name` (draining what it holds) and forgets it.
    fn delete(&self, name: String) -> BoxFuture<'_, Result<(), PipelineControlError>>;

    /// Streams `body` (NDJSON) into pipeline `name`, whose source must be `http`; returns
    /// once every line is committed or dead-lettered. `declared` is the Content-Length, if
    /// any (checked against the limit before reading).
    fn ingest(
        &self,
        name: String,
        body: BodyStream,
        declared: Option<u64>,
    ) -> BoxFuture<'_, Result<IngestCounts, PipelineControlError>>;
}

/// A fixed set of config-file pipelines and nothing else (tests, or a server without a
/// pipeline manager): writes are refused.
#[derive(Debug, Default)]
pub struct FixedPipelines(pub Vec<Arc<PipelineStatus>>);

impl PipelineControl for FixedPipelines {
    fn list(&self) -> Vec<PipelineEntryView> {
        self.0
            .iter()
            .map(|status| PipelineEntryView {
                status: status.clone(),
                origin: PipelineOrigin::Config,
            })
            .collect()
    }

    fn put(
        &self,
        _name: String,
        _definition: serde_json::Value,
    ) -> BoxFuture<'_, Result<PutOutcome, PipelineControlError>> {
        Box::pin(async {
            Err(PipelineControlError::Conflict(
                "pipelines cannot be changed on this server".into(),
            ))
        })
    }

    fn delete(&self, name: String) -> BoxFuture<'_, Result<(), PipelineControlError>> {
        Box::pin(async move { Err(PipelineControlError::NotFound(not_found(&name))) })
    }

    fn ingest(
        &self,
        name: String,
        _body: BodyStream,
        _declared: Option<u64>,
    ) -> BoxFuture<'_, Result<IngestCounts, PipelineControlError>> {
        Box::pin(async move { Err(PipelineControlError::NotFound(not_found(&name))) })
    }
}

/// `pipeline "name" not found`, the name cut to 64 characters.
pub fn not_found(name: &str) -> String {
    let shown: String = name.chars().take(64).collect();
    format!("pipeline {shown:?} not found")
}
