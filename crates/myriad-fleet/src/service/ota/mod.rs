//! OTA updates on the platform side (issue 18): firmware artifacts on disk, rollouts driven by
//! the planner of [`myriad_ota::rollout`], notifications on `$ota/{id}/notify` and device
//! reports on `$ota/{id}/progress` (docs/topics.md).
//!
//! - [`artifacts`]: uploads streamed to `{data_dir}/ota/artifacts/{id}` (SHA-256 and size
//!   recorded as the bytes arrive, `fsync`ed and renamed into place before the record is
//!   written), listing, deletion (refused while a rollout that has not finished uses it).
//! - [`download`]: signed per-device download URLs (Range requests resume).
//! - [`chunks`]: downloads over MQTT in chunks, for devices without HTTP.
//! - [`throttle`]: a rollout's download bandwidth cap.
//! - [`deltas`]: delta patches between stored artifacts, built by one worker thread, cached.
//! - [`signing`]: the manifest signing key (Ed25519, or SM2 with its chain).
//! - [`rollouts`]: creating a rollout (device ids, a group or an attribute value), the
//!   service's loop (one round a second or when woken: ticks every planner, writes what changed,
//!   then publishes notifications), device reports, pause / resume / cancel, and the restart:
//!   every stored rollout is restored and devices left `NOTIFIED` are notified again.
//!
//! Store commits (which `fsync`) and file writes run on the blocking pool, never on the event
//! loop; the planners sit behind one mutex held only for in-memory work.
//!
//! # Limits (`[ota]`, see [`OtaConfig`])
//! | what | limit |
//! |---|---|
//! | artifact size | `max_artifact_bytes` (default 2 GiB) |
//! | artifacts stored | `max_artifacts` (default 1,000) |
//! | delta image size | `max_delta_image_bytes` (default 256 MiB); deltas queued [`deltas::DELTA_QUEUE`] |
//! | uploads at once | `concurrent_uploads` (default 4); more are refused with 429 |
//! | rollouts not finished | `max_active_rollouts` (default 64) |
//! | devices per rollout | [`myriad_ota::rollout::MAX_ROLLOUT_DEVICES`] |
//! | notifications sent | `notify_per_second` (default 1,000) over all rollouts |
//! | progress report | [`MAX_REPORT_BYTES`]; bigger ones are dropped |
//! | MQTT chunk | [`chunks::MAX_CHUNK_BYTES`]; [`chunks::CHUNK_READS`] at once, more rejected `busy` |
//! | version, hardware type | [`MAX_LABEL_BYTES`]; notes [`MAX_NOTES_BYTES`] |

pub mod artifacts;
pub mod chunks;
pub mod deltas;
pub mod download;
pub mod rollouts;
pub mod signing;
pub mod throttle;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use myriad_broker::shell::BrokerHandle;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

use crate::store::{FleetStore, FleetStoreError};

pub use rollouts::{MAX_REPORT_BYTES, NewRollout, RolloutAction, RolloutView, TargetSpec};

/// Longest version string or hardware type (bytes).
pub const MAX_LABEL_BYTES: usize = 64;
/// Longest release notes (bytes).
pub const MAX_NOTES_BYTES: usize = 4096;

/// The `[ota]` config table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtaConfig {
    /// Largest firmware image an upload may send (bytes).
    pub max_artifact_bytes: u64,
    /// Most artifacts stored at once.
    pub max_artifacts: usize,
    /// Uploads running at once; more are refused (429).
    pub concurrent_uploads: usize,
    /// Rollouts not yet finished at once.
    pub max_active_rollouts: usize,
    /// Update notifications sent per second over all rollouts.
    pub notify_per_second: u32,
    /// How long a device's signed download URL stays valid (seconds).
    pub download_url_ttl_secs: u64,
    /// The manifest signing key: Ed25519 (PKCS#8 PEM), or SM2 with `signing_chain`; none: a
    /// development Ed25519 key in `{data_dir}/ota` ([`signing`]).
    pub signing_key: Option<PathBuf>,
    /// The SM2 signing key's certificate chain (PEM, leaf first).
    pub signing_chain: Option<PathBuf>,
    /// Largest image (base or target) a delta is built for (bytes): the differ holds both
    /// images and a suffix array of the base in memory.
    pub max_delta_image_bytes: u64,
}

impl Default for OtaConfig {
    fn default() -> Self {
        Self {
            max_artifact_bytes: 2 << 30,
            max_artifacts: 1000,
            concurrent_uploads: 4,
            max_active_rollouts: 64,
            notify_per_second: 1000,
            download_url_ttl_secs: 7 * 24 * 3600,
            signing_key: None,
            signing_chain: None,
            max_delta_image_bytes: 256 << 20,
        }
    }
}

impl OtaConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_artifact_bytes == 0 {
            return Err("max_artifact_bytes: at least 1".into());
        }
        if !(1..=1_000_000).contains(&self.max_artifacts) {
            return Err("max_artifacts: 1..=1000000".into());
        }
        if !(1..=64).contains(&self.concurrent_uploads) {
            return Err("concurrent_uploads: 1..=64".into());
        }
        if !(1..=10_000).contains(&self.max_active_rollouts) {
            return Err("max_active_rollouts: 1..=10000".into());
        }
        if !(1..=1_000_000).contains(&self.notify_per_second) {
            return Err("notify_per_second: 1..=1000000".into());
        }
        if !(1..=myriad_ota::delta::MAX_IMAGE_SIZE).contains(&self.max_delta_image_bytes) {
            return Err("max_delta_image_bytes: 1..=4294967296".into());
        }
        if !(60..=365 * 24 * 3600).contains(&self.download_url_ttl_secs) {
            return Err("download_url_ttl_secs: 60..=31536000".into());
        }
        Ok(())
    }
}

/// Why an OTA request failed; the API maps each kind to its status.
#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    /// A bad parameter (400); the message names it.
    #[error("{0}")]
    BadRequest(String),
    /// No such artifact or rollout (404).
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Over a limit of concurrent work (429).
    #[error("{0}")]
    Busy(String),
    /// The upload is larger than `max_artifact_bytes` (413).
    #[error("the artifact is larger than {0} bytes (ota.max_artifact_bytes)")]
    TooLarge(u64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] FleetStoreError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl OtaError {
    fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        OtaError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The OTA service (see the [module docs](self)).
pub struct OtaService {
    store: Arc<FleetStore>,
    broker: BrokerHandle,
    /// `{data_dir}/ota/artifacts`.
    artifact_dir: PathBuf,
    config: OtaConfig,
    uploads: Arc<Semaphore>,
    /// Places among the MQTT chunk reads that may run at once ([`chunks::CHUNK_READS`]).
    chunk_reads: Arc<Semaphore>,
    /// Rollouts in work: planners and device records.
    rollouts: Mutex<BTreeMap<String, rollouts::Entry>>,
    /// Finished rollouts whose devices are all final: counts only (devices in the store).
    settled: Mutex<BTreeMap<String, RolloutView>>,
    /// `{data_dir}/ota/deltas`.
    delta_dir: PathBuf,
    /// The delta worker's queue ([`deltas`]).
    delta_jobs: deltas::DeltaQueue,
    /// Signs every rollout's manifest.
    signer: signing::ManifestSigner,
    /// Keys the signed download URLs ([`download`]).
    download_key: [u8; 32],
    /// Notifications to send again after a restart (devices left `NOTIFIED`).
    resend: Mutex<rollouts::Resend>,
    /// Held while changes are taken from the planners and committed, so commits keep order.
    writer: Mutex<()>,
    wake: Notify,
    /// Rollout and per-device changes, live (the console's event bus).
    events: crate::events::EventSink,
}

impl std::fmt::Debug for OtaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtaService")
            .field("artifact_dir", &self.artifact_dir)
            .finish_non_exhaustive()
    }
}

impl OtaService {
    /// Opens the service over `store`, with artifacts under `data_dir/ota/artifacts`: removes
    /// partial uploads a crash left, and restores every stored rollout (blocking: call it
    /// before the runtime serves, or on the blocking pool).
    pub fn open(
        store: Arc<FleetStore>,
        broker: BrokerHandle,
        data_dir: &std::path::Path,
        config: OtaConfig,
    ) -> Result<Self, OtaError> {
        let artifact_dir = data_dir.join("ota").join("artifacts");
        std::fs::create_dir_all(&artifact_dir).map_err(|e| OtaError::io(&artifact_dir, e))?;
        artifacts::clean_partial_uploads(&store, &artifact_dir)?;
        let download_key = download::load_or_create_key(&data_dir.join("ota"))?;
        let signer = signing::ManifestSigner::load(&config, &data_dir.join("ota"))?;
        let delta_dir = data_dir.join("ota").join("deltas");
        std::fs::create_dir_all(&delta_dir).map_err(|e| OtaError::io(&delta_dir, e))?;
        deltas::recover(&store, &delta_dir)?;
        let (delta_jobs, jobs) = std::sync::mpsc::sync_channel(deltas::DELTA_QUEUE);
        let worker = deltas::DeltaWorker {
            store: store.clone(),
            artifact_dir: artifact_dir.clone(),
            delta_dir: delta_dir.clone(),
        };
        std::thread::Builder::new()
            .name("ota-delta".into())
            .spawn(move || worker.run(jobs))
            .map_err(|e| OtaError::io(&delta_dir, e))?;
        let restored = rollouts::restore_all(&store)?;
        let uploads = Arc::new(Semaphore::new(config.concurrent_uploads));
        Ok(Self {
            store,
            broker,
            artifact_dir,
            config,
            uploads,
            chunk_reads: Arc::new(Semaphore::new(chunks::CHUNK_READS)),
            download_key,
            delta_dir,
            delta_jobs,
            signer,
            rollouts: Mutex::new(restored.live),
            settled: Mutex::new(restored.settled),
            resend: Mutex::new(restored.resend),
            writer: Mutex::new(()),
            wake: Notify::new(),
            events: crate::events::EventSink::default(),
        })
        .inspect(|service| service.settle())
    }

    /// Where rollout and per-device OTA changes are reported live (the console's event bus).
    pub fn events(&self) -> &crate::events::EventSink {
        &self.events
    }

    /// The service's limits.
    pub fn config(&self) -> &OtaConfig {
        &self.config
    }

    /// What devices pin to verify manifests: `(algorithm, PEM)`.
    pub fn signing_key(&self) -> (&'static str, String) {
        (self.signer.algorithm(), self.signer.public_pem())
    }
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random id with `prefix` (16 hex digits of randomness).
fn new_id(prefix: &str) -> String {
    let mut random = [0u8; 8];
    // A failing system RNG leaves zeros; the time keeps ids apart then.
    if getrandom::fill(&mut random).is_err() {
        random = super::now_ms().to_be_bytes();
    }
    format!("{prefix}{}", hex(&random))
}

/// Checks a version or hardware type: 1..=[`MAX_LABEL_BYTES`] of `A-Za-z0-9._+-`.
fn check_label(name: &str, value: &str) -> Result<(), OtaError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_LABEL_BYTES
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(OtaError::BadRequest(format!(
            "{name}: 1 to {MAX_LABEL_BYTES} characters of A-Z a-z 0-9 . _ + -"
        )))
    }
}

#[cfg(test)]
mod tests {
    use myriad_ota::rollout::{Rollout, RolloutSpec};

    use super::*;
    use crate::store::ota::{ArtifactRecord, RolloutTarget, StoredRollout};

    #[test]
    fn stored_rollouts_that_do_not_agree_are_left_out_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FleetStore::open(dir.path()).unwrap());
        let artifact = ArtifactRecord {
            id: "a0123456789abcdef".into(),
            version: "1".into(),
            hardware_type: "hw".into(),
            notes: String::new(),
            size: 1,
            sha256: [0; 32],
            security_counter: 0,
            created_ms: 0,
        };
        store.put_artifact(&artifact).unwrap();
        let planner =
            Rollout::new(RolloutSpec::default(), vec!["d1".into(), "d2".into()], 1).unwrap();
        let devices: Vec<_> = (0..2)
            .map(|i| (i, planner.device_id(i), planner.device(i)))
            .collect();
        let good = StoredRollout {
            id: "r-good".into(),
            name: String::new(),
            artifact: artifact.id.clone(),
            target: RolloutTarget::Devices,
            max_bytes_per_second: None,
            manifest: Vec::new(),
            delta: None,
            planner: planner.record().clone(),
        };
        store.put_rollout(&good, &devices).unwrap();
        // More waves started than devices, and a rollout whose artifact is gone.
        let mut bad = StoredRollout {
            id: "r-bad".into(),
            ..good.clone()
        };
        bad.planner.waves_started = 9;
        store.put_rollout(&bad, &devices).unwrap();
        let orphan = StoredRollout {
            id: "r-orphan".into(),
            artifact: "a1111111111111111".into(),
            ..good.clone()
        };
        store.put_rollout(&orphan, &devices).unwrap();
        let (broker, _events) = myriad_broker::shell::channel();
        let service = OtaService::open(store, broker, dir.path(), OtaConfig::default()).unwrap();
        let ids: Vec<String> = service
            .rollouts()
            .into_iter()
            .map(|r| r.stored.id)
            .collect();
        assert_eq!(ids, vec!["r-good".to_owned()]);
    }
}
