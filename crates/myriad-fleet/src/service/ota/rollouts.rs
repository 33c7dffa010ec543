//! Rollouts: creation, the service loop, device reports, operator actions and restart.
//!
//! # Topics
//! - `$ota/{id}/notify` (platform -> device, QoS 1): `{"rollout", "attempt", "artifact": {"id",
//!   "version", "hardware_type", "size", "sha256"}, "url", "manifest"}` (`manifest`: the
//!   signed manifest, base64; the device verifies it before it writes anything) when the
//!   device should update, or
//!   `{"rollout", "cancel": true}` when a notified or downloading device should stop.
//! - `$ota/{id}/get` (device -> platform, any payload): the platform answers on
//!   `$ota/{id}/notify` with every update the device has been notified of and not finished,
//!   as an agent asks after each connect (a clean session misses what was sent while it was
//!   offline).
//! - `$ota/{id}/progress` (device -> platform): `{"rollout", "state", "done", "total",
//!   "reason"}` with `state` one of `DOWNLOADING` (with `done` / `total` bytes), `VERIFYING`,
//!   `INSTALLING`, `REBOOTING`, `SUCCEEDED`, `FAILED`, `REJECTED`, `ROLLED_BACK` (with a
//!   `reason`). Reports over [`MAX_REPORT_BYTES`], that do not parse, or that the planner refuses
//!   (unknown rollout, a device not notified, already finished) are dropped and counted in
//!   `myriad_ota_reports_dropped_total`.
//!
//! # Memory
//! A rollout in work keeps its planner and every device record in memory. Once it is
//! finished and every device is final it is *settled*: only its summary (record and counts)
//! stays, and its device pages are read from the store. Gauges:
//! `myriad_ota_rollouts{state="live"|"settled"}`, `myriad_ota_rollout_devices_in_memory`.
//!
//! # Durability
//! Every write goes through `OtaService::persist`: under one writer lock it takes what
//! changed from the planners and commits it, so commits land in the order the changes were
//! made. The loop commits before it publishes, so a device is never told about an update the
//! store does not know it was told about; operator actions commit before the API answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use myriad_broker::shell::BrokerStopped;
use myriad_mqtt::{PacketProperties, QoS};
use myriad_ota::manifest::Manifest;
use myriad_ota::rollout::{
    DeviceRecord, DeviceReport, DeviceState, MAX_ROLLOUT_DEVICES, Progress, Rollout, RolloutError,
    RolloutSpec,
};
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use super::throttle::Throttle;
use super::{OtaError, OtaService, hex, new_id};
use crate::events::{FleetEvent, OtaChange, RolloutChange};
use crate::registry::DeviceId;
use crate::service::now_ms;
use crate::store::ota::{ArtifactRecord, RolloutDelta, RolloutTarget, StoredRollout};
use crate::store::{FleetStore, MAX_INDEX_PAGE};

/// Largest progress report a device may publish (bytes).
pub const MAX_REPORT_BYTES: usize = 4096;
/// Longest rollout name (bytes).
pub const MAX_NAME_BYTES: usize = 128;
/// Smallest bandwidth cap a rollout may set (bytes per second).
pub const MIN_BYTES_PER_SECOND: u64 = 1024;
/// Prefix of rollout ids (`r` and 16 hex digits).
pub const ROLLOUT_ID_PREFIX: &str = "r";
/// How often the loop runs when nothing wakes it.
const ROUND: Duration = Duration::from_secs(1);

/// Which devices a new rollout targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// These devices, in this order.
    Devices(Vec<String>),
    /// Every device of the group, in id order.
    Group(String),
    /// Every device with this attribute value, in id order.
    Attribute {
        /// Attribute key.
        key: String,
        /// Attribute value.
        value: String,
    },
}

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRollout {
    /// A name for people (at most [`MAX_NAME_BYTES`]).
    pub name: String,
    /// The artifact to install.
    pub artifact: String,
    /// Which devices.
    pub target: TargetSpec,
    /// Waves, thresholds, timeouts, retries.
    pub spec: RolloutSpec,
    /// Download bandwidth cap over all its devices (bytes per second; at least 1024).
    pub max_bytes_per_second: Option<u64>,
    /// Offer the (built) delta from this artifact beside the full image.
    pub delta_from: Option<String>,
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutView {
    /// What is stored about it.
    pub stored: StoredRollout,
    /// Devices targeted.
    pub devices: u32,
    /// Devices per state, in lifecycle order.
    pub counts: Vec<(DeviceState, u32)>,
}

/// Where one device stands in a rollout ([`OtaService::device_ota`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOta {
    /// The rollout.
    pub rollout: String,
    /// The version it installs.
    pub version: String,
    /// The device's state in it.
    pub state: DeviceState,
    /// When the device entered that state or last reported (unix ms).
    pub since_ms: u64,
}

/// One rollout in memory.
pub(super) struct Entry {
    stored: StoredRollout,
    pub(super) artifact: ArtifactRecord,
    planner: Rollout,
    /// The download bandwidth cap (`stored.max_bytes_per_second`).
    pub(super) throttle: Option<Arc<Throttle>>,
}

impl Entry {
    /// Whether the rollout's devices may fetch `file` (its artifact or its delta).
    fn offers(&self, file: &str) -> bool {
        self.artifact.id == file || self.stored.delta.as_ref().is_some_and(|d| d.id == file)
    }

    /// Bytes of `file` (the artifact or the delta).
    pub(super) fn file_size(&self, file: &str) -> u64 {
        match &self.stored.delta {
            Some(delta) if delta.id == file => delta.size,
            _ => self.artifact.size,
        }
    }

    fn new(stored: StoredRollout, artifact: ArtifactRecord, planner: Rollout) -> Self {
        let throttle = stored
            .max_bytes_per_second
            .map(|rate| Arc::new(Throttle::new(rate)));
        Entry {
            stored,
            artifact,
            planner,
            throttle,
        }
    }
}

impl Entry {
    fn view(&self) -> RolloutView {
        let mut stored = self.stored.clone();
        stored.planner = self.planner.record().clone();
        RolloutView {
            stored,
            devices: self.planner.len(),
            counts: self.planner.counts().iter().collect(),
        }
    }

    /// Finished, every device in a final state, and no cancel notice waiting to be sent:
    /// nothing can change it any more (reports
    /// of final devices are refused), so it is kept as a summary ([`RolloutView`]) and its
    /// devices are read from the store when asked for.
    fn is_settled(&self) -> bool {
        self.planner.status().is_finished()
            && !self.planner.has_pending_effects()
            && self
                .planner
                .counts()
                .iter()
                .all(|(state, n)| n == 0 || state.is_terminal())
    }

    fn cancel_payload(&self) -> Bytes {
        Bytes::from(json!({"rollout": self.stored.id, "cancel": true}).to_string())
    }
}

/// The manifest of `artifact` as a full image (no delta).
fn full_image_manifest(artifact: &ArtifactRecord) -> Manifest {
    Manifest {
        target_version: artifact.version.clone(),
        base_version: String::new(),
        hardware_type: artifact.hardware_type.clone(),
        image_size: artifact.size,
        patch_size: 0,
        base_sha256: Vec::new(),
        target_sha256: artifact.sha256.to_vec(),
        patch_sha256: Vec::new(),
        security_counter: artifact.security_counter,
        locations: vec![format!("/ota/v1/download/{}", artifact.id)],
    }
}

/// The manifest of the delta from `base` to `target` (`patch`: its size and SHA-256).
fn delta_manifest(
    base: &ArtifactRecord,
    target: &ArtifactRecord,
    patch: (u64, [u8; 32]),
) -> Manifest {
    Manifest {
        base_version: base.version.clone(),
        patch_size: patch.0,
        base_sha256: base.sha256.to_vec(),
        patch_sha256: patch.1.to_vec(),
        locations: vec![format!("/ota/v1/download/{}-{}", base.id, target.id)],
        ..full_image_manifest(target)
    }
}

/// A progress report as devices send it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    rollout: String,
    state: String,
    #[serde(default)]
    done: u64,
    #[serde(default)]
    total: u64,
    #[serde(default)]
    reason: String,
}

impl ReportBody {
    fn report(&self) -> Option<DeviceReport> {
        let reason = || self.reason.clone();
        Some(match DeviceState::parse(&self.state)? {
            DeviceState::Downloading => DeviceReport::Downloading(Progress {
                done: self.done,
                total: self.total,
            }),
            DeviceState::Verifying => DeviceReport::Verifying,
            DeviceState::Installing => DeviceReport::Installing,
            DeviceState::Rebooting => DeviceReport::Rebooting,
            DeviceState::Succeeded => DeviceReport::Succeeded,
            DeviceState::Failed => DeviceReport::Failed(reason()),
            DeviceState::Rejected => DeviceReport::Rejected(reason()),
            DeviceState::RolledBack => DeviceReport::RolledBack(reason()),
            _ => return None,
        })
    }
}

/// A message to publish after the next commit.
struct Send {
    device: String,
    payload: Bytes,
}

/// Notifications to send again after a restart: (rollout, device, attempt).
pub(super) type Resend = Vec<(String, String, u32)>;

/// What a restart restores: the rollouts still in work, the finished ones as summaries, and
/// the notifications to send again.
pub(super) struct Restored {
    /// Rollouts with a device not in a final state, planners and devices in memory.
    pub(super) live: BTreeMap<String, Entry>,
    /// Finished rollouts whose devices are all final: counts only ([`Entry::is_settled`]).
    pub(super) settled: BTreeMap<String, RolloutView>,
    /// Notifications to send again.
    pub(super) resend: Resend,
}

/// Every stored rollout restored (one rollout's devices in memory at a time; settled ones are
/// kept as summaries), and the notifications to send again (rollout, device, attempt) for
/// devices left `NOTIFIED`. A rollout whose records do not make a rollout is logged and left
/// out.
pub(super) fn restore_all(store: &FleetStore) -> Result<Restored, OtaError> {
    let mut restored = Restored {
        live: BTreeMap::new(),
        settled: BTreeMap::new(),
        resend: Vec::new(),
    };
    for stored in store.load_rollout_records()? {
        let Some(artifact) = store.get_artifact(&stored.artifact)? else {
            warn!(rollout = %stored.id, artifact = %stored.artifact, "rollout left out: its artifact is gone");
            continue;
        };
        let devices = store.load_rollout_devices(&stored.id)?;
        let planner = match Rollout::restore(stored.planner.clone(), devices) {
            Ok(planner) => planner,
            Err(error) => {
                warn!(rollout = %stored.id, %error, "rollout left out: its stored records do not agree");
                continue;
            }
        };
        if !planner.status().is_finished() {
            for (id, record) in planner.devices() {
                if record.state == DeviceState::Notified {
                    restored
                        .resend
                        .push((stored.id.clone(), id.to_owned(), record.attempts));
                }
            }
        }
        let entry = Entry::new(stored, artifact, planner);
        if entry.is_settled() {
            restored
                .settled
                .insert(entry.stored.id.clone(), entry.view());
        } else {
            restored.live.insert(entry.stored.id.clone(), entry);
        }
    }
    Ok(restored)
}

impl OtaService {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding the lock leaves plain data; keep serving it.
        self.rollouts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates and stores a rollout; the loop starts notifying at once. Blocking (reads the
    /// registry, commits every device record): run it on the blocking pool.
    pub fn create_rollout(&self, new: NewRollout, now_ms: u64) -> Result<RolloutView, OtaError> {
        if new
            .max_bytes_per_second
            .is_some_and(|rate| rate < MIN_BYTES_PER_SECOND)
        {
            return Err(OtaError::BadRequest(format!(
                "max_bytes_per_second: at least {MIN_BYTES_PER_SECOND}"
            )));
        }
        if new.name.len() > MAX_NAME_BYTES {
            return Err(OtaError::BadRequest(format!(
                "name: at most {MAX_NAME_BYTES} bytes"
            )));
        }
        let artifact = self
            .artifact(&new.artifact)?
            .ok_or_else(|| OtaError::BadRequest(format!("artifact: {} not found", new.artifact)))?;
        let active = self
            .lock()
            .values()
            .filter(|e| !e.planner.status().is_finished())
            .count();
        if active >= self.config.max_active_rollouts {
            return Err(OtaError::Conflict(format!(
                "{active} rollouts have not finished (ota.max_active_rollouts); cancel one first"
            )));
        }
        let delta = match &new.delta_from {
            Some(base) => Some(self.rollout_delta(base, &artifact)?),
            None => None,
        };
        let (devices, target) = self.resolve(new.target)?;
        let mut planner = Rollout::new(new.spec, devices, now_ms)
            .map_err(|e| OtaError::BadRequest(e.to_string()))?;
        let stored = StoredRollout {
            id: new_id(ROLLOUT_ID_PREFIX),
            name: new.name,
            artifact: artifact.id.clone(),
            target,
            max_bytes_per_second: new.max_bytes_per_second,
            manifest: self.signer.sign(&full_image_manifest(&artifact)),
            delta,
            planner: planner.record().clone(),
        };
        let dirty = planner.take_dirty();
        let records: Vec<_> = dirty
            .devices
            .iter()
            .map(|&i| (i, planner.device_id(i), planner.device(i)))
            .collect();
        self.store.put_rollout(&stored, &records)?;
        let entry = Entry::new(stored, artifact, planner);
        let view = entry.view();
        self.lock().insert(view.stored.id.clone(), entry);
        self.wake.notify_one();
        Ok(view)
    }

    /// The delta from artifact `base` to `target`, which must be built, with its manifest.
    fn rollout_delta(&self, base: &str, target: &ArtifactRecord) -> Result<RolloutDelta, OtaError> {
        let id = super::deltas::delta_id(base, &target.id);
        let delta = self
            .delta(&id)?
            .filter(|d| d.status == crate::store::ota::DeltaStatus::Done)
            .ok_or_else(|| {
                OtaError::Conflict(format!(
                    "delta_from: delta {id} is not built; POST /api/v1/ota/deltas first"
                ))
            })?;
        let base = self.artifact(base)?.ok_or_else(|| {
            OtaError::BadRequest(format!("delta_from: artifact {base} not found"))
        })?;
        let manifest = self
            .signer
            .sign(&delta_manifest(&base, target, (delta.size, delta.sha256)));
        Ok(RolloutDelta {
            id,
            base_sha256: base.sha256,
            size: delta.size,
            sha256: delta.sha256,
            manifest,
        })
    }

    /// The device ids `target` names, in wave order, and how it is stored.
    fn resolve(&self, target: TargetSpec) -> Result<(Vec<String>, RolloutTarget), OtaError> {
        let too_many =
            || OtaError::BadRequest(format!("targets: more than {MAX_ROLLOUT_DEVICES} devices"));
        match target {
            TargetSpec::Devices(ids) => {
                if ids.len() > MAX_ROLLOUT_DEVICES {
                    return Err(too_many());
                }
                for chunk in ids.chunks(MAX_INDEX_PAGE) {
                    let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                    for (id, device) in refs.iter().zip(self.store.get_devices(&refs)?) {
                        if device.is_none() {
                            return Err(OtaError::BadRequest(format!(
                                "targets: device {id:?} not found"
                            )));
                        }
                    }
                }
                Ok((ids, RolloutTarget::Devices))
            }
            TargetSpec::Group(group) => {
                let ids = self
                    .page_all(|after| self.store.devices_in_group(&group, after, MAX_INDEX_PAGE))?;
                Ok((ids, RolloutTarget::Group(group)))
            }
            TargetSpec::Attribute { key, value } => {
                let ids = self.page_all(|after| {
                    self.store
                        .devices_with_attribute(&key, &value, after, MAX_INDEX_PAGE)
                })?;
                Ok((ids, RolloutTarget::Attribute { key, value }))
            }
        }
    }

    fn page_all(
        &self,
        page: impl Fn(Option<&str>) -> Result<crate::store::IdPage, crate::store::FleetStoreError>,
    ) -> Result<Vec<String>, OtaError> {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (mut more, next) = page(after.as_deref())?;
            ids.append(&mut more);
            if ids.len() > MAX_ROLLOUT_DEVICES {
                return Err(OtaError::BadRequest(format!(
                    "targets: more than {MAX_ROLLOUT_DEVICES} devices"
                )));
            }
            match next {
                Some(next) => after = Some(next),
                None => return Ok(ids),
            }
        }
    }

    /// Every rollout, in id order.
    pub fn rollouts(&self) -> Vec<RolloutView> {
        let mut all: BTreeMap<String, RolloutView> = self.settled().clone();
        all.extend(
            self.lock()
                .values()
                .map(|entry| (entry.stored.id.clone(), entry.view())),
        );
        all.into_values().collect()
    }

    /// Rollout `id`.
    pub fn rollout(&self, id: &str) -> Option<RolloutView> {
        if let Some(view) = self.lock().get(id).map(Entry::view) {
            return Some(view);
        }
        self.settled().get(id).cloned()
    }

    fn settled(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RolloutView>> {
        self.settled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves the settled rollouts ([`Entry::is_settled`]) out of the live map: their planners
    /// and device records leave memory. Call after a commit (nothing of theirs is dirty).
    pub(super) fn settle(&self) {
        let mut rollouts = self.lock();
        // A change not yet committed keeps the entry live until the commit that writes it.
        let done: Vec<String> = rollouts
            .values()
            .filter(|entry| entry.is_settled() && !entry.planner.is_dirty())
            .map(|entry| entry.stored.id.clone())
            .collect();
        let mut settled = self.settled();
        for id in done {
            if let Some(entry) = rollouts.remove(&id) {
                settled.insert(id, entry.view());
            }
        }
        let devices: u64 = rollouts.values().map(|e| u64::from(e.planner.len())).sum();
        metrics::gauge!("myriad_ota_rollouts", "state" => "live").set(rollouts.len() as f64);
        metrics::gauge!("myriad_ota_rollouts", "state" => "settled").set(settled.len() as f64);
        metrics::gauge!("myriad_ota_rollout_devices_in_memory").set(devices as f64);
    }

    /// Devices of rollout `id` in wave order (only those in `state` if given): the `limit`
    /// after the first `offset`, and how many match in all. Blocking for a settled rollout
    /// (read from the store).
    pub fn rollout_devices(
        &self,
        id: &str,
        state: Option<DeviceState>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<(String, DeviceRecord)>, usize), OtaError> {
        let wanted = |r: &DeviceRecord| state.is_none_or(|s| r.state == s);
        {
            let rollouts = self.lock();
            if let Some(entry) = rollouts.get(id) {
                let matching = entry.planner.devices().filter(|(_, r)| wanted(r));
                let total = match state {
                    Some(state) => entry.planner.counts().get(state) as usize,
                    None => entry.planner.len() as usize,
                };
                let page = matching
                    .skip(offset)
                    .take(limit)
                    .map(|(id, r)| (id.to_owned(), r.clone()))
                    .collect();
                return Ok((page, total));
            }
        }
        if !self.settled().contains_key(id) {
            return Err(OtaError::NotFound(format!("rollout {id} not found")));
        }
        let devices = self.store.load_rollout_devices(id)?;
        let total = devices.iter().filter(|(_, r)| wanted(r)).count();
        let page = devices
            .into_iter()
            .filter(|(_, r)| wanted(r))
            .skip(offset)
            .take(limit)
            .collect();
        Ok((page, total))
    }

    /// Pauses, resumes or cancels rollout `id` at `now_ms` and commits it. Blocking.
    pub fn control_rollout(
        &self,
        id: &str,
        action: RolloutAction,
        now_ms: u64,
    ) -> Result<RolloutView, OtaError> {
        {
            let mut rollouts = self.lock();
            let Some(entry) = rollouts.get_mut(id) else {
                return Err(match self.settled().get(id) {
                    Some(view) => OtaError::Conflict(
                        RolloutError::Status(view.stored.planner.status).to_string(),
                    ),
                    None => OtaError::NotFound(format!("rollout {id} not found")),
                });
            };
            let done = match action {
                RolloutAction::Pause => entry.planner.pause(now_ms),
                RolloutAction::Resume => entry.planner.resume(now_ms),
                RolloutAction::Cancel => entry.planner.cancel(now_ms),
            };
            done.map_err(|e| OtaError::Conflict(e.to_string()))?;
        }
        // The loop sends the cancel notices; commit first so the answer is durable.
        self.persist()?;
        self.wake.notify_one();
        self.rollout(id)
            .ok_or_else(|| OtaError::NotFound(format!("rollout {id} not found")))
    }

    /// Commits what changed in every planner. Blocking.
    fn persist(&self) -> Result<(), OtaError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        type Changed = (StoredRollout, Vec<(u32, String, DeviceRecord)>);
        let listened = self.events.is_listened();
        let mut changes: Vec<FleetEvent> = Vec::new();
        let batch: Vec<Changed> = {
            let mut rollouts = self.lock();
            rollouts
                .values_mut()
                .filter_map(|entry| {
                    let dirty = entry.planner.take_dirty();
                    if !dirty.rollout && dirty.devices.is_empty() {
                        return None;
                    }
                    entry.stored.planner = entry.planner.record().clone();
                    if listened {
                        changes.extend(change_events(entry, &dirty.devices));
                    }
                    let devices = dirty
                        .devices
                        .iter()
                        .map(|&i| {
                            (
                                i,
                                entry.planner.device_id(i).to_owned(),
                                entry.planner.device(i).clone(),
                            )
                        })
                        .collect();
                    Some((entry.stored.clone(), devices))
                })
                .collect()
        };
        for (stored, devices) in &batch {
            let refs: Vec<_> = devices
                .iter()
                .map(|(i, id, r)| (*i, id.as_str(), r))
                .collect();
            self.store.put_rollout(stored, &refs)?;
        }
        for change in changes {
            self.events.emit(|| change);
        }
        self.settle();
        Ok(())
    }

    /// Applies a device's progress report (the payload of `$ota/{device}/progress`).
    fn apply_report(&self, device: &str, payload: &[u8], now_ms: u64) -> bool {
        if payload.len() > MAX_REPORT_BYTES {
            return false;
        }
        let Ok(body) = serde_json::from_slice::<ReportBody>(payload) else {
            return false;
        };
        let Some(report) = body.report() else {
            return false;
        };
        let mut rollouts = self.lock();
        let Some(entry) = rollouts.get_mut(&body.rollout) else {
            return false;
        };
        match entry.planner.report(device, report, now_ms) {
            Ok(_) => true,
            Err(error) => {
                debug!(device, rollout = %body.rollout, %error, "OTA report dropped");
                false
            }
        }
    }

    /// The notification of `entry`'s update for `device`, with its signed download URL.
    fn notify_payload(&self, entry: &Entry, device: &str, attempt: u32, now_ms: u64) -> Bytes {
        let artifact = &entry.artifact;
        let url = self.download_url(&artifact.id, device, now_ms);
        let body = json!({
            "rollout": entry.stored.id,
            "attempt": attempt,
            "artifact": {
                "id": artifact.id,
                "version": artifact.version,
                "hardware_type": artifact.hardware_type,
                "size": artifact.size,
                "sha256": hex(&artifact.sha256),
            },
            "url": url,
            "manifest": base64::engine::general_purpose::STANDARD.encode(&entry.stored.manifest),
            "delta": entry.stored.delta.as_ref().map(|delta| json!({
                "id": delta.id,
                "base_sha256": hex(&delta.base_sha256),
                "size": delta.size,
                "sha256": hex(&delta.sha256),
                "url": self.download_url(&delta.id, device, now_ms),
                "manifest": base64::engine::general_purpose::STANDARD.encode(&delta.manifest),
            })),
        });
        Bytes::from(body.to_string())
    }

    /// `f` of the rollout (not finished) in which `device` is working on an update that installs
    /// `artifact`.
    pub(super) fn with_device_entry<T>(
        &self,
        device: &str,
        artifact: &str,
        f: impl Fn(&Entry) -> T,
    ) -> Option<T> {
        let rollouts = self.lock();
        rollouts
            .values()
            .filter(|entry| entry.offers(artifact) && !entry.planner.status().is_finished())
            .find(|entry| {
                entry
                    .planner
                    .find(device)
                    .is_some_and(|i| entry.planner.device(i).state.is_active())
            })
            .map(f)
    }

    /// Where `device` stands in the rollout in memory (live, or finished and not yet
    /// settled) in which it changed state last; `None` if it is in none.
    pub fn device_ota(&self, device: &str) -> Option<DeviceOta> {
        let rollouts = self.lock();
        rollouts
            .values()
            .filter_map(|entry| {
                let record = entry.planner.device(entry.planner.find(device)?);
                Some(DeviceOta {
                    rollout: entry.stored.id.clone(),
                    version: entry.artifact.version.clone(),
                    state: record.state,
                    since_ms: record.since_ms,
                })
            })
            .max_by_key(|ota| ota.since_ms)
    }

    /// The notifications of every rollout in which `device` was notified and has not finished.
    fn pending_for(&self, device: &str) -> Vec<Send> {
        let rollouts = self.lock();
        rollouts
            .values()
            .filter(|entry| !entry.planner.status().is_finished())
            .filter_map(|entry| {
                let record = entry.planner.device(entry.planner.find(device)?);
                record.state.is_active().then(|| Send {
                    device: device.to_owned(),
                    payload: self.notify_payload(entry, device, record.attempts, now_ms()),
                })
            })
            .collect()
    }

    /// One round: tick every planner, commit, then publish. Returns what to publish.
    fn round(&self, now_ms: u64, budget: usize) -> Vec<Send> {
        let mut sends = Vec::new();
        let mut budget = budget;
        let mut rollouts = self.lock();
        for entry in rollouts.values_mut() {
            for effect in entry.planner.tick(now_ms, budget) {
                let (device, payload) = match effect {
                    myriad_ota::rollout::Effect::Notify { device, attempt } => {
                        budget = budget.saturating_sub(1);
                        let id = entry.planner.device_id(device);
                        (device, self.notify_payload(entry, id, attempt, now_ms))
                    }
                    myriad_ota::rollout::Effect::Cancel { device } => {
                        (device, entry.cancel_payload())
                    }
                };
                sends.push(Send {
                    device: entry.planner.device_id(device).to_owned(),
                    payload,
                });
            }
        }
        sends
    }

    async fn publish(&self, sends: Vec<Send>) -> Result<(), BrokerStopped> {
        for send in sends {
            let topic = format!("$ota/{}/notify", send.device);
            self.broker
                .publish_at_least_once(topic.into(), send.payload, PacketProperties::new())
                .await?;
        }
        Ok(())
    }

    /// Runs the rollouts until the broker stops: listens to `$ota/+/progress` and runs a round
    /// every second or when woken.
    pub async fn run(self: Arc<Self>) -> Result<(), BrokerStopped> {
        let mut client = self.broker.connect_internal("ota").await?;
        client
            .subscribe("$ota/+/progress", QoS::AtLeastOnce)
            .await?;
        client.subscribe("$ota/+/get", QoS::AtLeastOnce).await?;
        client
            .subscribe("$ota/+/chunk/get", QoS::AtLeastOnce)
            .await?;
        let resend: Vec<Send> = {
            let pending =
                std::mem::take(&mut *self.resend.lock().unwrap_or_else(|p| p.into_inner()));
            let rollouts = self.lock();
            pending
                .into_iter()
                .filter_map(|(rollout, device, attempt)| {
                    let entry = rollouts.get(&rollout)?;
                    let payload = self.notify_payload(entry, &device, attempt, now_ms());
                    Some(Send { device, payload })
                })
                .collect()
        };
        self.publish(resend).await?;
        let reports = async {
            while let Some(publish) = client.recv().await {
                let mut parts = publish.topic.split('/');
                let (Some("$ota"), Some(device), Some(action)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let rest = parts.next();
                if DeviceId::new(device).is_err() || parts.next().is_some() {
                    continue;
                }
                match (action, rest) {
                    ("get", None) => {
                        self.publish(self.pending_for(device)).await?;
                        continue;
                    }
                    ("chunk", Some("get")) => {
                        self.serve_chunk(device, &publish.payload).await;
                        continue;
                    }
                    ("progress", None) => {}
                    _ => continue,
                }
                if self.apply_report(device, &publish.payload, now_ms()) {
                    self.wake.notify_one();
                } else {
                    metrics::counter!("myriad_ota_reports_dropped_total").increment(1);
                }
            }
            Err::<(), BrokerStopped>(BrokerStopped)
        };
        let rounds = async {
            let rate = u64::from(self.config.notify_per_second);
            let mut last = now_ms();
            // Sends of rounds whose commit failed: published after the next good commit.
            let mut held: Vec<Send> = Vec::new();
            loop {
                let _ = tokio::time::timeout(ROUND, self.wake.notified()).await;
                let now = now_ms();
                // Notifications earned since the last round, at most one second's worth.
                let budget = (rate * now.saturating_sub(last).min(1000) / 1000).max(1) as usize;
                last = now;
                held.extend(self.round(now, budget));
                let service = self.clone();
                match tokio::task::spawn_blocking(move || service.persist()).await {
                    Ok(Ok(())) => self.publish(std::mem::take(&mut held)).await?,
                    // Nothing is published that is not stored; the next round commits again.
                    Ok(Err(error)) => warn!(%error, "cannot store OTA rollout changes"),
                    Err(join) => warn!(%join, "OTA store task failed"),
                }
            }
        };
        tokio::select! {
            done = reports => done,
            done = rounds => done,
        }
    }
}

/// The events of a rollout whose planner changed: the rollout's state and counts, and each
/// changed device's state.
fn change_events(entry: &Entry, devices: &[u32]) -> Vec<FleetEvent> {
    let at_ms = now_ms();
    let id = &entry.stored.id;
    let mut events = Vec::with_capacity(devices.len() + 1);
    events.push(FleetEvent::Rollout(RolloutChange {
        id: id.clone(),
        state: entry.planner.status().as_str().to_owned(),
        counts: entry
            .planner
            .counts()
            .iter()
            .map(|(state, n)| (state.as_str().to_owned(), n))
            .collect(),
        at_ms,
    }));
    events.extend(devices.iter().map(|&i| {
        FleetEvent::Ota(OtaChange {
            device: entry.planner.device_id(i).to_owned(),
            rollout: id.clone(),
            state: entry.planner.device(i).state.as_str().to_owned(),
            version: entry.artifact.version.clone(),
            at_ms,
        })
    }));
    events
}

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    /// Stop notifying devices.
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// Cancel the rollout.
    Cancel,
}
