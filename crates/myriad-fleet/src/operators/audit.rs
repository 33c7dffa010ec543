//! [`AuditLog`]: appends audit entries through one writer task that commits
//! them in batches (one fsync'd transaction for every entry waiting, at
//! most [`MAX_AUDIT_BATCH`]) on the blocking pool, trimming the oldest past
//! the cap. [`AuditLog::record`] returns once its entry is committed, so an
//! answered request is in the log.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::model::AuditEntry;
use crate::store::FleetStore;

/// Entries waiting for the writer; a request past it waits for room.
pub const AUDIT_QUEUE: usize = 1_024;
/// Most entries committed in one transaction.
pub const MAX_AUDIT_BATCH: usize = 256;

type Job = (AuditEntry, oneshot::Sender<()>);

/// The audit log's writer (cheap to clone).
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
}

impl AuditLog {
    /// Starts the writer task on the current runtime; it ends when every
    /// `AuditLog` is dropped.
    pub fn start(store: Arc<FleetStore>, max_entries: u64) -> AuditLog {
        let (tx, mut rx) = mpsc::channel::<Job>(AUDIT_QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_AUDIT_BATCH);
            while rx.recv_many(&mut batch, MAX_AUDIT_BATCH).await > 0 {
                let jobs = std::mem::take(&mut batch);
                let store = store.clone();
                let written = tokio::task::spawn_blocking(move || {
                    let entries: Vec<AuditEntry> = jobs.iter().map(|(e, _)| e.clone()).collect();
                    let result = store.append_audit(&entries, max_entries);
                    (result, jobs)
                })
                .await;
                match written {
                    Ok((result, jobs)) => {
                        if let Err(error) = result {
                            warn!(%error, entries = jobs.len(), "cannot write audit entries");
                        }
                        for (_, done) in jobs {
                            let _ = done.send(());
                        }
                    }
                    Err(error) => warn!(%error, "the audit writer task failed"),
                }
            }
        });
        AuditLog { tx }
    }

    /// Appends `entry` and waits until it is committed (or failed, logged).
    pub async fn record(&self, entry: AuditEntry) {
        let (done, wait) = oneshot::channel();
        if self.tx.send((entry, done)).await.is_err() {
            warn!("the audit writer has stopped; entry lost");
            return;
        }
        let _ = wait.await;
    }
}
