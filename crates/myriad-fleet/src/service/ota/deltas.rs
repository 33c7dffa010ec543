//! Delta patches between two stored artifacts, built in the background and cached.
//!
//! A request names a base and a target artifact of the same hardware type; the delta's id is
//! `{from}-{to}`, so asking twice returns the same delta (a failed one is queued again). One
//! worker thread (`ota-delta`) builds them in turn from a queue of at most [`DELTA_QUEUE`]
//! (more are refused with 429): it reads both images (each at most
//! `ota.max_delta_image_bytes`; the differ holds both and its suffix array in memory), runs
//! `myriad_ota::delta::diff` (both codecs, the smaller kept), writes `{id}.partial`, `fsync`s,
//! renames it to `{data_dir}/ota/deltas/{id}` and marks the record done with the patch's size
//! and SHA-256. The record's `phase` says where it is (`queued`, `reading`, `diffing`,
//! `writing`, `done`). A restart marks deltas that were queued or running as failed
//! ("interrupted"); asking again rebuilds them. Deleting an artifact deletes its deltas.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use sha2::{Digest, Sha256};

use super::artifacts::is_artifact_id;
use super::{OtaError, OtaService};
use crate::store::FleetStore;
use crate::store::ota::{DeltaRecord, DeltaStatus};

/// Deltas waiting for the worker, at most.
pub const DELTA_QUEUE: usize = 16;

/// The id of the delta from `from` to `to`.
pub fn delta_id(from: &str, to: &str) -> String {
    format!("{from}-{to}")
}

/// Whether `id` has the shape of a delta id (so it is safe as a file name).
pub fn is_delta_id(id: &str) -> bool {
    id.split_once('-')
        .is_some_and(|(from, to)| is_artifact_id(from) && is_artifact_id(to))
}

/// What the worker needs, apart from the queue.
pub(super) struct DeltaWorker {
    pub(super) store: Arc<FleetStore>,
    pub(super) artifact_dir: PathBuf,
    pub(super) delta_dir: PathBuf,
}

impl DeltaWorker {
    /// Builds the deltas named on `jobs` until the sender is dropped.
    pub(super) fn run(self, jobs: Receiver<String>) {
        while let Ok(id) = jobs.recv() {
            if let Err(error) = self.build(&id) {
                tracing::warn!(delta = %id, %error, "OTA delta failed");
                self.finish(&id, Err(error.to_string()));
            }
        }
    }

    fn record(&self, id: &str) -> Option<DeltaRecord> {
        self.store
            .list_deltas()
            .ok()?
            .into_iter()
            .find(|d| d.id == id)
    }

    fn set_phase(
        &self,
        id: &str,
        status: DeltaStatus,
        phase: &str,
    ) -> Result<DeltaRecord, OtaError> {
        let mut record = self
            .record(id)
            .ok_or_else(|| OtaError::NotFound(format!("delta {id} is gone")))?;
        record.status = status;
        record.phase = phase.to_owned();
        self.store.put_delta(&record)?;
        Ok(record)
    }

    fn build(&self, id: &str) -> Result<(), OtaError> {
        let record = self.set_phase(id, DeltaStatus::Running, "reading")?;
        let read = |artifact: &str| {
            let path = self.artifact_dir.join(artifact);
            std::fs::read(&path).map_err(|e| OtaError::io(&path, e))
        };
        let (old, new) = (read(&record.from)?, read(&record.to)?);
        self.set_phase(id, DeltaStatus::Running, "diffing")?;
        let patch = myriad_ota::delta::diff(&old, &new, &myriad_ota::delta::DiffOptions::default())
            .map_err(|e| OtaError::BadRequest(format!("cannot diff: {e}")))?;
        drop((old, new));
        self.set_phase(id, DeltaStatus::Running, "writing")?;
        let path = self.delta_dir.join(id);
        let partial = self.delta_dir.join(format!("{id}.partial"));
        write_synced(&partial, &patch.bytes)?;
        std::fs::rename(&partial, &path).map_err(|e| OtaError::io(&path, e))?;
        let codec = format!("{:?}", patch.header.codec).to_lowercase();
        self.finish(
            id,
            Ok((
                patch.bytes.len() as u64,
                Sha256::digest(&patch.bytes).into(),
                codec,
            )),
        );
        Ok(())
    }

    fn finish(&self, id: &str, outcome: Result<(u64, [u8; 32], String), String>) {
        let Some(mut record) = self.record(id) else {
            return;
        };
        match outcome {
            Ok((size, sha256, codec)) => {
                record.status = DeltaStatus::Done;
                record.phase = "done".into();
                record.size = size;
                record.sha256 = sha256;
                record.codec = codec;
            }
            Err(error) => {
                record.status = DeltaStatus::Failed;
                record.phase = "failed".into();
                record.error = error;
            }
        }
        record.finished_ms = crate::service::now_ms();
        if let Err(error) = self.store.put_delta(&record) {
            tracing::warn!(delta = %id, %error, "cannot store the OTA delta's outcome");
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), OtaError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| OtaError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| OtaError::io(path, e))
}

/// At start-up: deltas left queued or running are marked failed, partial files removed.
pub(super) fn recover(store: &FleetStore, delta_dir: &Path) -> Result<(), OtaError> {
    for mut record in store.list_deltas()? {
        if matches!(record.status, DeltaStatus::Queued | DeltaStatus::Running) {
            record.status = DeltaStatus::Failed;
            record.phase = "failed".into();
            record.error = "interrupted by a restart; ask again".into();
            store.put_delta(&record)?;
        }
    }
    for entry in std::fs::read_dir(delta_dir).map_err(|e| OtaError::io(delta_dir, e))? {
        let entry = entry.map_err(|e| OtaError::io(delta_dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(".partial") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| OtaError::io(&path, e))?;
        }
    }
    Ok(())
}

/// The queue in front of the worker.
pub(super) type DeltaQueue = SyncSender<String>;

impl OtaService {
    /// Asks for the delta from artifact `from` to artifact `to`: the cached one if it is
    /// queued, running or done, else a new (or retried) job. Blocking (store writes).
    pub fn request_delta(
        &self,
        from: &str,
        to: &str,
        now_ms: u64,
    ) -> Result<DeltaRecord, OtaError> {
        let missing = |id: &str| OtaError::BadRequest(format!("artifact {id:?} not found"));
        let base = self.artifact(from)?.ok_or_else(|| missing(from))?;
        let target = self.artifact(to)?.ok_or_else(|| missing(to))?;
        if from == to {
            return Err(OtaError::BadRequest(
                "from and to are the same artifact".into(),
            ));
        }
        if base.hardware_type != target.hardware_type {
            return Err(OtaError::BadRequest(format!(
                "from is for hardware type {:?}, to for {:?}",
                base.hardware_type, target.hardware_type
            )));
        }
        let limit = self.config.max_delta_image_bytes;
        if base.size > limit || target.size > limit {
            return Err(OtaError::BadRequest(format!(
                "images over {limit} bytes (ota.max_delta_image_bytes) get no delta; use the full image"
            )));
        }
        let id = delta_id(from, to);
        if let Some(existing) = self.delta(&id)?
            && existing.status != DeltaStatus::Failed
        {
            return Ok(existing);
        }
        let record = DeltaRecord {
            id: id.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
            status: DeltaStatus::Queued,
            phase: "queued".into(),
            size: 0,
            sha256: [0; 32],
            codec: String::new(),
            error: String::new(),
            created_ms: now_ms,
            finished_ms: 0,
        };
        self.store.put_delta(&record)?;
        match self.delta_jobs.try_send(id.clone()) {
            Ok(()) => Ok(record),
            Err(TrySendError::Full(_)) => {
                self.store.delete_deltas(std::slice::from_ref(&id))?;
                Err(OtaError::Busy(format!(
                    "{DELTA_QUEUE} deltas are waiting; ask again later"
                )))
            }
            Err(TrySendError::Disconnected(_)) => {
                Err(OtaError::Conflict("the delta worker stopped".into()))
            }
        }
    }

    /// Every delta, in id order.
    pub fn deltas(&self) -> Result<Vec<DeltaRecord>, OtaError> {
        Ok(self.store.list_deltas()?)
    }

    /// Delta `id`, if known.
    pub fn delta(&self, id: &str) -> Result<Option<DeltaRecord>, OtaError> {
        if !is_delta_id(id) {
            return Ok(None);
        }
        Ok(self.store.get_delta(id)?)
    }

    /// The patch file of delta `id` (a valid id).
    pub fn delta_path(&self, id: &str) -> PathBuf {
        self.delta_dir.join(id)
    }

    /// Deletes every delta from or to `artifact` (records and files). Blocking.
    pub(super) fn delete_deltas_of(&self, artifact: &str) -> Result<(), OtaError> {
        let ids: Vec<String> = self
            .store
            .list_deltas()?
            .into_iter()
            .filter(|d| d.from == artifact || d.to == artifact)
            .map(|d| d.id)
            .collect();
        self.store.delete_deltas(&ids)?;
        for id in ids {
            let path = self.delta_path(&id);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(OtaError::io(&path, e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_ids_are_two_artifact_ids() {
        assert!(is_delta_id("a0123456789abcdef-afedcba9876543210"));
        for bad in [
            "a0123456789abcdef",
            "a0123456789abcdef-",
            "x-y",
            "a0123456789abcdef-../../etc",
        ] {
            assert!(!is_delta_id(bad), "{bad}");
        }
    }
}
