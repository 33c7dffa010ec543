//! Firmware artifacts: streamed uploads, records, files and deletion.
//!
//! An upload is written to `{id}.partial` as it arrives, hashed (SHA-256) and counted on the
//! way, `fsync`ed, renamed to `{id}` and only then recorded in the store; at start-up
//! (`clean_partial_uploads`) `*.partial` files and files without a record (a crash between
//! rename and record) are removed, so a stored record always has its whole file.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;

use super::{MAX_NOTES_BYTES, OtaError, OtaService, check_label, new_id};
use crate::store::FleetStore;
use crate::store::ota::ArtifactRecord;

/// Prefix of artifact ids (`a` and 16 hex digits).
pub const ARTIFACT_ID_PREFIX: &str = "a";
const PARTIAL: &str = ".partial";
/// Bytes read from the body per step.
const CHUNK: usize = 64 * 1024;

/// What an operator says about a new artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    /// The firmware version the image installs.
    pub version: String,
    /// The hardware type it is built for.
    pub hardware_type: String,
    /// Release notes.
    pub notes: String,
    /// Anti-rollback counter (devices refuse an image below the counter they run).
    pub security_counter: u64,
}

impl NewArtifact {
    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<(), OtaError> {
        check_label("version", &self.version)?;
        check_label("hardware_type", &self.hardware_type)?;
        if self.notes.len() > MAX_NOTES_BYTES {
            return Err(OtaError::BadRequest(format!(
                "notes: at most {MAX_NOTES_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

/// Whether `id` has the shape of an artifact id (so it is safe as a file name).
pub fn is_artifact_id(id: &str) -> bool {
    id.strip_prefix(ARTIFACT_ID_PREFIX).is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

impl OtaService {
    /// A place among the uploads that may run at once, or [`OtaError::Busy`].
    pub fn upload_permit(&self) -> Result<OwnedSemaphorePermit, OtaError> {
        self.uploads.clone().try_acquire_owned().map_err(|_| {
            OtaError::Busy(format!(
                "{} uploads are running (ota.concurrent_uploads); try again later",
                self.config.concurrent_uploads
            ))
        })
    }

    /// Stores the image read from `body` as a new artifact described by `meta`, at `now_ms`.
    /// Blocking (file writes, `fsync`, a store commit): run it on the blocking pool.
    pub fn store_artifact(
        &self,
        meta: NewArtifact,
        body: &mut impl Read,
        now_ms: u64,
    ) -> Result<ArtifactRecord, OtaError> {
        meta.validate()?;
        if self.store.list_artifacts()?.len() >= self.config.max_artifacts {
            return Err(OtaError::Conflict(format!(
                "{} artifacts are stored (ota.max_artifacts); delete one first",
                self.config.max_artifacts
            )));
        }
        let id = new_id(ARTIFACT_ID_PREFIX);
        let partial = self.artifact_dir.join(format!("{id}{PARTIAL}"));
        let written = write_image(&partial, body, self.config.max_artifact_bytes);
        let (size, sha256) = match written {
            Ok(done) => done,
            Err(error) => {
                let _ = std::fs::remove_file(&partial);
                return Err(error);
            }
        };
        let path = self.artifact_path(&id);
        std::fs::rename(&partial, &path).map_err(|e| OtaError::io(&path, e))?;
        sync_dir(&self.artifact_dir)?;
        let record = ArtifactRecord {
            id,
            version: meta.version,
            hardware_type: meta.hardware_type,
            notes: meta.notes,
            size,
            sha256,
            security_counter: meta.security_counter,
            created_ms: now_ms,
        };
        if let Err(error) = self.store.put_artifact(&record) {
            let _ = std::fs::remove_file(&path);
            return Err(error.into());
        }
        Ok(record)
    }

    /// The artifact `id`, if stored.
    pub fn artifact(&self, id: &str) -> Result<Option<ArtifactRecord>, OtaError> {
        if !is_artifact_id(id) {
            return Ok(None);
        }
        Ok(self.store.get_artifact(id)?)
    }

    /// Every artifact, in id order.
    pub fn artifacts(&self) -> Result<Vec<ArtifactRecord>, OtaError> {
        Ok(self.store.list_artifacts()?)
    }

    /// Deletes artifact `id` and its file; [`OtaError::Conflict`] while a rollout that has not
    /// finished uses it. Blocking.
    pub fn delete_artifact(&self, id: &str) -> Result<ArtifactRecord, OtaError> {
        let missing = || OtaError::NotFound(format!("artifact {id} not found"));
        if !is_artifact_id(id) {
            return Err(missing());
        }
        let record = match self.store.delete_artifact(id) {
            Ok(Some(record)) => record,
            Ok(None) => return Err(missing()),
            Err(crate::store::FleetStoreError::ArtifactInUse { artifact, rollout }) => {
                return Err(OtaError::Conflict(format!(
                    "artifact {artifact} is used by rollout {rollout}, which has not finished"
                )));
            }
            Err(error) => return Err(error.into()),
        };
        let path = self.artifact_path(id);
        std::fs::remove_file(&path).map_err(|e| OtaError::io(&path, e))?;
        self.delete_deltas_of(id)?;
        Ok(record)
    }

    /// The file of artifact `id` (which must be a valid id).
    pub fn artifact_path(&self, id: &str) -> PathBuf {
        self.artifact_dir.join(id)
    }
}

/// Writes `body` to `path`, at most `limit` bytes; returns size and SHA-256.
fn write_image(path: &Path, body: &mut impl Read, limit: u64) -> Result<(u64, [u8; 32]), OtaError> {
    let file = File::create(path).map_err(|e| OtaError::io(path, e))?;
    let mut out = BufWriter::with_capacity(CHUNK, file);
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(OtaError::BadRequest(format!("body: {e}"))),
        };
        size += n as u64;
        if size > limit {
            return Err(OtaError::TooLarge(limit));
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n])
            .map_err(|e| OtaError::io(path, e))?;
    }
    if size == 0 {
        return Err(OtaError::BadRequest("body: the image is empty".into()));
    }
    let file = out
        .into_inner()
        .map_err(|e| OtaError::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| OtaError::io(path, e))?;
    Ok((size, hasher.finalize().into()))
}

fn sync_dir(dir: &Path) -> Result<(), OtaError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| OtaError::io(dir, e))
}

/// Removes partial uploads and files without a record from `dir`.
pub(super) fn clean_partial_uploads(store: &FleetStore, dir: &Path) -> Result<(), OtaError> {
    let entries = std::fs::read_dir(dir).map_err(|e| OtaError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| OtaError::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let orphan = name.ends_with(PARTIAL)
            || (is_artifact_id(&name) && store.get_artifact(&name)?.is_none());
        if orphan {
            let path = entry.path();
            tracing::warn!(file = %path.display(), "removing an unfinished OTA upload");
            std::fs::remove_file(&path).map_err(|e| OtaError::io(&path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_ids_are_file_name_safe() {
        assert!(is_artifact_id("a0123456789abcdef"));
        for bad in [
            "a0123456789ABCDEF",
            "a../../etc/passwd",
            "a0123456789abcde",
            "b0123456789abcdef",
            "",
        ] {
            assert!(!is_artifact_id(bad), "{bad}");
        }
    }

    #[test]
    fn images_are_hashed_bounded_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let image = vec![5u8; 200_000];
        let (size, sha) = write_image(&path, &mut image.as_slice(), 200_000).unwrap();
        assert_eq!(size, 200_000);
        assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(&image)));
        assert_eq!(std::fs::read(&path).unwrap(), image);
        assert!(matches!(
            write_image(&path, &mut image.as_slice(), 199_999),
            Err(OtaError::TooLarge(199_999))
        ));
        assert!(matches!(
            write_image(&path, &mut [].as_slice(), 10),
            Err(OtaError::BadRequest(_))
        ));
    }
}
