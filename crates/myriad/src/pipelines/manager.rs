//! The running pipelines: the config file's (fixed) and the API's (created, replaced and
//! deleted at run time, stored in the fleet store and started again at the next start).
//! Implements the API's [`PipelineControl`].
//!
//! - Each pipeline runs as one supervised task ([`super::supervise`]) with its own
//!   cancellation token, a child of the server's shutdown token, on the pipelines' own
//!   runtime ([`super::pipelines_runtime`]), never on the broker's: config-file and API
//!   pipelines alike get the batch tracer and the telemetry store.
//! - Changes (PUT, DELETE) are serialised; a replaced or deleted pipeline drains (at most
//!   [`STOP_GRACE`]) before the change returns, so the same name never runs twice at once.
//! - A definition stored over the API is checked again at every start; one that no longer
//!   builds (its name or files now used by the config file, a rule no longer accepted) is
//!   logged and not started, and stays stored until deleted or replaced.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use myriad_api::BoxFuture;
use myriad_api::pipelines::{
    BodyStream, IngestCounts, PipelineControl, PipelineControlError, PipelineEntryView,
    PipelineOrigin, PutOutcome, not_found,
};
use myriad_broker::shell::BrokerHandle;
use myriad_fleet::service::telemetry::TelemetryService;
use myriad_fleet::store::{FleetStore, StoredPipeline};
use myriad_pipeline::runtime::ingest::{IngestError, IngestHandle};
use myriad_pipeline::runtime::telemetry_source::TelemetryStore;
use myriad_pipeline::runtime::{self, BatchTracer, PipelineConfig, SourceConfig};
use myriad_pipeline::status::PipelineStatus;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    MAX_PIPELINES, PipelineEntry, STOP_GRACE, TelemetryStoreAdapter, build_entry,
    pipelines_runtime, supervise, written_files,
};

/// One running pipeline.
struct Running {
    status: Arc<PipelineStatus>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// Set when its source is `http`.
    ingest: Option<IngestHandle>,
    /// The files it writes.
    files: Vec<PathBuf>,
}

#[derive(Default)]
struct Table {
    /// The config file's, in its order.
    config: Vec<(String, Running)>,
    /// The API's, by name.
    api: BTreeMap<String, Running>,
}

impl Table {
    fn find(&self, name: &str) -> Option<(&Running, PipelineOrigin)> {
        if let Some((_, running)) = self.config.iter().find(|(n, _)| n == name) {
            return Some((running, PipelineOrigin::Config));
        }
        self.api.get(name).map(|r| (r, PipelineOrigin::Api))
    }

    /// The files written by every pipeline but `except`.
    fn files_but(&self, except: &str) -> HashSet<PathBuf> {
        self.config
            .iter()
            .map(|(n, r)| (n.as_str(), r))
            .chain(self.api.iter().map(|(n, r)| (n.as_str(), r)))
            .filter(|(n, _)| *n != except)
            .flat_map(|(_, r)| r.files.iter().cloned())
            .collect()
    }

    fn len(&self) -> usize {
        self.config.len() + self.api.len()
    }
}

/// The server's pipelines (see the [module docs](self)).
pub struct Manager {
    broker: BrokerHandle,
    store: Arc<FleetStore>,
    /// Relative paths of definitions are under it (`store.data_dir`).
    base: PathBuf,
    shutdown: CancellationToken,
    /// The pipelines' own runtime: every pipeline task is spawned on it.
    runtime: tokio::runtime::Handle,
    /// Set on every pipeline (the config file's and the API's) when tracing is on.
    tracer: Option<Arc<dyn BatchTracer>>,
    /// The telemetry store a telemetry source reads; `None`: telemetry is disabled.
    telemetry: Option<Arc<dyn TelemetryStore>>,
    table: Mutex<Table>,
    /// Serialises PUT and DELETE.
    changes: tokio::sync::Mutex<()>,
}

impl Manager {
    /// Starts the pipelines' runtime, the config file's `pipelines` and the API's stored
    /// ones; returns the manager and the token that stops the broker: cancelled once
    /// `shutdown` is and every pipeline has drained (at most [`STOP_GRACE`] and a second),
    /// so the last acknowledgements still reach the broker.
    pub fn start(
        pipelines: Vec<PipelineConfig>,
        broker: &BrokerHandle,
        store: Arc<FleetStore>,
        base: PathBuf,
        tracer: Option<Arc<dyn BatchTracer>>,
        telemetry: Option<Arc<TelemetryService>>,
        shutdown: &CancellationToken,
    ) -> Result<(Arc<Manager>, CancellationToken)> {
        let pipeline_runtime = pipelines_runtime()?;
        let telemetry =
            telemetry.map(|t| Arc::new(TelemetryStoreAdapter(t)) as Arc<dyn TelemetryStore>);
        let manager = Arc::new(Manager {
            broker: broker.clone(),
            store,
            base,
            shutdown: shutdown.clone(),
            runtime: pipeline_runtime.handle().clone(),
            tracer,
            telemetry,
            table: Mutex::new(Table::default()),
            changes: tokio::sync::Mutex::new(()),
        });
        let broker_stop = CancellationToken::new();
        // Spawned first: the runtime is never dropped here, on an async context, even when
        // reading the stored pipelines fails below.
        let (waiting, stop, shutdown) = (manager.clone(), broker_stop.clone(), shutdown.clone());
        let drain_all = async move {
            shutdown.cancelled().await;
            let tasks: Vec<JoinHandle<()>> = {
                let mut table = waiting.lock();
                let config = std::mem::take(&mut table.config)
                    .into_iter()
                    .map(|(_, r)| r);
                let api = std::mem::take(&mut table.api).into_values();
                config.chain(api).map(|r| r.task).collect()
            };
            let drained = async {
                for task in tasks {
                    let _ = task.await;
                }
            };
            if tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), drained)
                .await
                .is_err()
            {
                tracing::warn!("pipelines did not drain in time");
            }
            stop.cancel();
        };
        // The runtime is dropped on its own thread once every pipeline is done (dropping it
        // on the broker's runtime would block an async context).
        std::thread::Builder::new()
            .name("myriad-pipelines-main".into())
            .spawn(move || pipeline_runtime.block_on(drain_all))
            .context("cannot start the pipelines' thread")?;
        {
            let mut table = manager.lock();
            for config in pipelines {
                let name = config.name.clone();
                table.config.push((name, manager.run(config)));
            }
        }
        // At start-up, before anything is served: a blocking read is acceptable here.
        let stored = manager
            .store
            .list_pipelines()
            .map_err(|e| anyhow::anyhow!("cannot read the stored pipelines: {e}"))?;
        for pipeline in stored {
            let built = {
                let table = manager.lock();
                manager.check(&table, &pipeline.name, parse(&pipeline.definition))
            };
            match built {
                Ok(config) => {
                    let running = manager.run(config);
                    manager.lock().api.insert(pipeline.name, running);
                }
                Err(error) => {
                    tracing::error!(pipeline = %pipeline.name, %error, "a pipeline stored over the API does not start (delete or put it again)");
                }
            }
        }
        Ok((manager, broker_stop))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `config` as a supervised task on the pipelines' runtime.
    fn run(&self, mut config: PipelineConfig) -> Running {
        if config.tracer.is_none() {
            config.tracer = self.tracer.clone();
        }
        let status = Arc::new(PipelineStatus::new(
            &config.name,
            config.rule.topic_filter().as_str(),
            config.sink.kind(),
            runtime::now_ms(),
        ));
        let ingest = match &config.source {
            SourceConfig::Http(http) => Some(http.handle()),
            _ => None,
        };
        let files = written_files(&config).into_iter().map(|(_, p)| p).collect();
        let cancel = self.shutdown.child_token();
        let task = self.runtime.spawn(supervise(
            config,
            self.broker.clone(),
            self.telemetry.clone(),
            cancel.clone(),
            status.clone(),
        ));
        Running {
            status,
            cancel,
            task,
            ingest,
            files,
        }
    }

    /// Checks an API definition of `name` against the running pipelines (but `name`
    /// itself): the message names the field (`invalid value for sink.path: ...`).
    fn check(
        &self,
        table: &Table,
        name: &str,
        entry: Result<PipelineEntry, PipelineControlError>,
    ) -> Result<PipelineConfig, PipelineControlError> {
        if table.config.iter().any(|(n, _)| n == name) {
            return Err(PipelineControlError::Conflict(format!(
                "pipeline {name:?} is defined in the config file: read-only over the API"
            )));
        }
        let entry = entry?;
        let key = |k: &str| format!("invalid value for {k}");
        let config = build_entry(&entry, &self.base, self.telemetry.is_some(), &key)
            .map_err(|e| PipelineControlError::Invalid(e.to_string()))?;
        let mut taken = table.files_but(name);
        for (field, path) in written_files(&config) {
            if !taken.insert(path.clone()) {
                return Err(PipelineControlError::Conflict(format!(
                    "{}: {} is written by another sink or pipeline",
                    key(field),
                    path.display()
                )));
            }
        }
        Ok(config)
    }

    async fn put_inner(
        &self,
        name: String,
        definition: serde_json::Value,
    ) -> Result<PutOutcome, PipelineControlError> {
        let _change = self.changes.lock().await;
        if self.shutdown.is_cancelled() {
            return Err(PipelineControlError::Unavailable(
                "the server is shutting down".into(),
            ));
        }
        if let Err(problem) = runtime::validate_name(&name) {
            return Err(PipelineControlError::Invalid(format!(
                "invalid value for name: {problem}"
            )));
        }
        let definition = with_name(definition, &name)?;
        let text = definition.to_string();
        let (config, replaced) = {
            let table = self.lock();
            let config = self.check(&table, &name, entry_from(definition))?;
            let replaced = table.api.contains_key(&name);
            if !replaced && table.len() >= MAX_PIPELINES {
                return Err(PipelineControlError::Conflict(format!(
                    "at most {MAX_PIPELINES} pipelines"
                )));
            }
            (config, replaced)
        };
        let stored = StoredPipeline {
            name: name.clone(),
            definition: text,
            updated_at: u64::try_from(runtime::now_ms()).unwrap_or(0),
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put_pipeline(&stored))
            .await
            .map_err(|e| PipelineControlError::Internal(e.to_string()))?
            .map_err(|e| PipelineControlError::Internal(format!("cannot store: {e}")))?;
        let old = self.lock().api.remove(&name);
        if let Some(old) = old {
            stop(&name, old).await;
        }
        let running = self.run(config);
        self.lock().api.insert(name.clone(), running);
        tracing::info!(pipeline = %name, replaced, "pipeline put over the API");
        Ok(if replaced {
            PutOutcome::Replaced
        } else {
            PutOutcome::Created
        })
    }

    async fn delete_inner(&self, name: String) -> Result<(), PipelineControlError> {
        let _change = self.changes.lock().await;
        match self.lock().find(&name) {
            None => return Err(PipelineControlError::NotFound(not_found(&name))),
            Some((_, PipelineOrigin::Config)) => {
                return Err(PipelineControlError::Conflict(format!(
                    "pipeline {name:?} is defined in the config file: read-only over the API"
                )));
            }
            Some((_, PipelineOrigin::Api)) => {}
        }
        let store = self.store.clone();
        let key = name.clone();
        tokio::task::spawn_blocking(move || store.delete_pipeline(&key))
            .await
            .map_err(|e| PipelineControlError::Internal(e.to_string()))?
            .map_err(|e| PipelineControlError::Internal(format!("cannot delete: {e}")))?;
        let old = self.lock().api.remove(&name);
        if let Some(old) = old {
            stop(&name, old).await;
        }
        tracing::info!(pipeline = %name, "pipeline deleted over the API");
        Ok(())
    }

    async fn ingest_inner(
        &self,
        name: String,
        body: BodyStream,
        declared: Option<u64>,
    ) -> Result<IngestCounts, PipelineControlError> {
        let handle = match self.lock().find(&name) {
            None => return Err(PipelineControlError::NotFound(not_found(&name))),
            Some((running, _)) => running.ingest.clone(),
        };
        let Some(handle) = handle else {
            return Err(PipelineControlError::Conflict(format!(
                "pipeline {name:?}: its source is not http"
            )));
        };
        let limit = handle.max_body_bytes();
        if declared.is_some_and(|n| n > limit) {
            return Err(PipelineControlError::TooLarge(format!(
                "the body is larger than {limit} bytes (the source's max_body_bytes)"
            )));
        }
        match handle.ingest(body).await {
            Ok(report) => Ok(IngestCounts {
                accepted: report.accepted,
                dead_lettered: report.dead_lettered,
            }),
            Err(error @ IngestError::TooLarge { .. }) => {
                Err(PipelineControlError::TooLarge(error.to_string()))
            }
            Err(error @ IngestError::Body(_)) => {
                Err(PipelineControlError::Invalid(error.to_string()))
            }
            Err(error @ IngestError::Stopped) => {
                Err(PipelineControlError::Unavailable(error.to_string()))
            }
        }
    }
}

/// Cancels `running` and waits for it to drain (bounded).
async fn stop(name: &str, running: Running) {
    running.cancel.cancel();
    if tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), running.task)
        .await
        .is_err()
    {
        tracing::warn!(pipeline = %name, "pipeline did not drain in time");
    }
}

/// `definition` with `name` set (it must be an object; a `name` in it must be `name`).
fn with_name(
    definition: serde_json::Value,
    name: &str,
) -> Result<serde_json::Value, PipelineControlError> {
    let serde_json::Value::Object(mut object) = definition else {
        return Err(PipelineControlError::Invalid(
            "invalid pipeline definition: a JSON object with the fields of a [[pipelines]] entry"
                .into(),
        ));
    };
    match object.get("name") {
        None => {
            object.insert("name".into(), name.into());
        }
        Some(serde_json::Value::String(given)) if given == name => {}
        Some(other) => {
            return Err(PipelineControlError::Invalid(format!(
                "invalid value for name: {other} is not the name in the path ({name:?})"
            )));
        }
    }
    Ok(serde_json::Value::Object(object))
}

/// The entry of a definition (serde's message names the field: `unknown field`, `missing
/// field`, ...).
fn entry_from(definition: serde_json::Value) -> Result<PipelineEntry, PipelineControlError> {
    serde_json::from_value(definition)
        .map_err(|e| PipelineControlError::Invalid(format!("invalid pipeline definition: {e}")))
}

/// A stored definition's entry.
fn parse(text: &str) -> Result<PipelineEntry, PipelineControlError> {
    serde_json::from_str(text)
        .map_err(|e| PipelineControlError::Invalid(format!("invalid pipeline definition: {e}")))
}

impl PipelineControl for Manager {
    fn list(&self) -> Vec<PipelineEntryView> {
        let table = self.lock();
        let view = |r: &Running, origin| PipelineEntryView {
            status: r.status.clone(),
            origin,
        };
        table
            .config
            .iter()
            .map(|(_, r)| view(r, PipelineOrigin::Config))
            .chain(table.api.values().map(|r| view(r, PipelineOrigin::Api)))
            .collect()
    }

    fn put(
        &self,
        name: String,
        definition: serde_json::Value,
    ) -> BoxFuture<'_, Result<PutOutcome, PipelineControlError>> {
        Box::pin(self.put_inner(name, definition))
    }

    fn delete(&self, name: String) -> BoxFuture<'_, Result<(), PipelineControlError>> {
        Box::pin(self.delete_inner(name))
    }

    fn ingest(
        &self,
        name: String,
        body: BodyStream,
        declared: Option<u64>,
    ) -> BoxFuture<'_, Result<IngestCounts, PipelineControlError>> {
        Box::pin(self.ingest_inner(name, body, declared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_names_the_pipeline() {
        let got = with_name(serde_json::json!({"sql": "x"}), "p1").unwrap();
        assert_eq!(got["name"], "p1");
        assert!(with_name(serde_json::json!({"name": "p1"}), "p1").is_ok());
        let error = with_name(serde_json::json!({"name": "p2"}), "p1").unwrap_err();
        assert!(
            error.to_string().starts_with("invalid value for name"),
            "{error}"
        );
        assert!(with_name(serde_json::json!([1]), "p1").is_err());
    }
}
