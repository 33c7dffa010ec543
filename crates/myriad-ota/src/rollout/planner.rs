//! [`Rollout`]: the state machine behind one rollout (see the [module docs](super)).

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::device::{DeviceRecord, DeviceReport, DeviceState, MAX_REASON_BYTES, bounded_reason};
use super::spec::{RolloutSpec, SpecError};

/// Most devices one rollout may target.
pub const MAX_ROLLOUT_DEVICES: usize = 1_000_000;
/// Longest device id a rollout accepts (bytes).
pub const MAX_DEVICE_ID_BYTES: usize = 256;

/// Where a rollout is as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutStatus {
    /// Notifying devices wave by wave.
    Running,
    /// Stopped by the operator; notifies no one until resumed.
    Paused,
    /// Every device is in a terminal state.
    Completed,
    /// The abort threshold was crossed; no more devices are notified.
    Aborted,
    /// Canceled by the operator; no more devices are notified.
    Canceled,
}

impl RolloutStatus {
    /// The name the API uses (`RUNNING`, `PAUSED` ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Running => "RUNNING",
            RolloutStatus::Paused => "PAUSED",
            RolloutStatus::Completed => "COMPLETED",
            RolloutStatus::Aborted => "ABORTED",
            RolloutStatus::Canceled => "CANCELED",
        }
    }

    /// Completed, aborted or canceled: nothing more will be notified.
    pub fn is_finished(self) -> bool {
        !matches!(self, RolloutStatus::Running | RolloutStatus::Paused)
    }
}

/// The rollout-wide part of the stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// What the operator asked for.
    pub spec: RolloutSpec,
    /// Where the rollout is.
    pub status: RolloutStatus,
    /// Waves started so far.
    pub waves_started: u32,
    /// Created at (milliseconds since the epoch).
    pub created_ms: u64,
    /// Last changed at (milliseconds since the epoch).
    pub updated_ms: u64,
}

/// Something the shell must do for the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Send the update notification to device `device` (an index into the rollout's devices);
    /// `attempt` counts from 1.
    Notify {
        /// The device's index.
        device: u32,
        /// Which notification this is for the device (1 = first, 2 = first retry ...).
        attempt: u32,
    },
    /// Tell device `device`, notified but not started, that the update is withdrawn.
    Cancel {
        /// The device's index.
        device: u32,
    },
}

/// What changed since the last [`Rollout::take_dirty`]: the records the shell must write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// The [`RolloutRecord`] changed.
    pub rollout: bool,
    /// These devices' records changed (indices, ascending).
    pub devices: Vec<u32>,
}

/// Devices per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts([u32; DeviceState::ALL.len()]);

impl StateCounts {
    /// Devices in `state`.
    pub fn get(&self, state: DeviceState) -> u32 {
        self.0[state.index()]
    }

    /// Every state with its count, in lifecycle order.
    pub fn iter(&self) -> impl Iterator<Item = (DeviceState, u32)> + '_ {
        DeviceState::ALL
            .into_iter()
            .map(|state| (state, self.get(state)))
    }

    fn add(&mut self, state: DeviceState) {
        self.0[state.index()] += 1;
    }

    fn remove(&mut self, state: DeviceState) {
        self.0[state.index()] -= 1;
    }

    fn sum(&self, include: impl Fn(DeviceState) -> bool) -> u32 {
        self.iter()
            .filter(|(state, _)| include(*state))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Why a new rollout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// The spec is out of bounds.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No devices to update.
    #[error("the rollout targets no devices")]
    NoDevices,
    /// More than [`MAX_ROLLOUT_DEVICES`].
    #[error("the rollout targets {0} devices, at most {MAX_ROLLOUT_DEVICES}")]
    TooManyDevices(usize),
    /// A device id is listed twice.
    #[error("device {0:?} is listed twice")]
    DuplicateDevice(String),
    /// A device id is empty or longer than [`MAX_DEVICE_ID_BYTES`].
    #[error("device id of {0} bytes: between 1 and {MAX_DEVICE_ID_BYTES}")]
    DeviceId(usize),
    /// Pause, resume or cancel in a status that does not allow it.
    #[error("the rollout is {}", .0.as_str())]
    Status(RolloutStatus),
}

/// Why a device report was not applied. The shell logs it and drops the report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The device is not part of this rollout.
    #[error("device is not in this rollout")]
    UnknownDevice,
    /// The device has not been notified (yet, or again after a failure).
    #[error("device has not been notified")]
    NotNotified,
    /// The device already finished: late or repeated report.
    #[error("device already finished as {}", .0.as_str())]
    Finished(DeviceState),
    /// Download progress past its total.
    #[error("progress {done} of {total} bytes")]
    BadProgress {
        /// Bytes done as reported.
        done: u64,
        /// Total as reported.
        total: u64,
    },
}

/// Why stored records do not make a rollout; the shell marks the rollout unreadable and
/// serves the rest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The stored devices or spec are refused as a new rollout would be.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// The stored records contradict each other.
    #[error("stored rollout is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// One rollout's planner. See the [module docs](super).
#[derive(Debug)]
pub struct Rollout {
    record: RolloutRecord,
    ids: Vec<String>,
    index: HashMap<String, u32>,
    devices: Vec<DeviceRecord>,
    counts: StateCounts,
    /// Devices below this index are in started waves.
    released: u32,
    /// First device of the current (last started) wave.
    wave_start: u32,
    /// Devices of the current wave in a terminal state.
    wave_finished: u32,
    /// Next device of the started waves never notified.
    cursor: u32,
    /// Devices waiting to be notified again, in wave order (so a restored rollout notifies
    /// them in the same order as the one that stored its records).
    retries: BTreeSet<u32>,
    /// (deadline, device) of every device with a running timeout.
    deadlines: BTreeSet<(u64, u32)>,
    effects: Vec<Effect>,
    dirty_rollout: bool,
    /// Every device record is dirty (a new rollout).
    dirty_all: bool,
    dirty_devices: BTreeSet<u32>,
}

impl Rollout {
    /// A running rollout of `spec` over `devices` (in wave order), created at `now_ms`.
    /// Nothing is notified until the first [`Rollout::tick`].
    pub fn new(spec: RolloutSpec, devices: Vec<String>, now_ms: u64) -> Result<Self, RolloutError> {
        let record = RolloutRecord {
            spec,
            status: RolloutStatus::Running,
            waves_started: 0,
            created_ms: now_ms,
            updated_ms: now_ms,
        };
        let records = vec![DeviceRecord::queued(now_ms); devices.len()];
        let mut rollout = Self::build(record, devices, records)?;
        rollout.dirty_rollout = true;
        rollout.dirty_all = true;
        Ok(rollout)
    }

    /// The rollout as its stored records describe it; each record is checked as if it came
    /// from a peer.
    pub fn restore(
        record: RolloutRecord,
        devices: Vec<(String, DeviceRecord)>,
    ) -> Result<Self, RestoreError> {
        let (ids, records): (Vec<_>, Vec<_>) = devices.into_iter().unzip();
        for device in &records {
            let bad_progress = device.progress.is_some_and(|p| p.done > p.total);
            let bad_reason = device
                .reason
                .as_ref()
                .is_some_and(|r| r.len() > MAX_REASON_BYTES);
            if bad_progress || bad_reason {
                return Err(RestoreError::Inconsistent(
                    "device progress or reason out of bounds",
                ));
            }
            if device.attempts > record.spec.max_retries.saturating_add(1) {
                return Err(RestoreError::Inconsistent(
                    "device attempts past the retries allowed",
                ));
            }
            if device.state != DeviceState::Queued
                && device.state != DeviceState::Canceled
                && device.attempts == 0
            {
                return Err(RestoreError::Inconsistent(
                    "device left the queue without a notification",
                ));
            }
        }
        let waves_started = record.waves_started;
        let mut rollout = Self::build(record, ids, records)?;
        rollout.record.waves_started = 0;
        for _ in 0..waves_started {
            if !rollout.start_wave() {
                return Err(RestoreError::Inconsistent(
                    "more waves started than devices",
                ));
            }
        }
        let released = rollout.released as usize;
        if rollout.devices[released..]
            .iter()
            .any(|d| d.state != DeviceState::Queued && d.state != DeviceState::Canceled)
        {
            return Err(RestoreError::Inconsistent(
                "a device outside the started waves was notified",
            ));
        }
        let first_unnotified = rollout.devices[..released]
            .iter()
            .position(|d| d.state == DeviceState::Queued && d.attempts == 0)
            .unwrap_or(released);
        rollout.cursor = first_unnotified as u32;
        rollout.retries = (0..rollout.cursor)
            .filter(|&i| rollout.devices[i as usize].state == DeviceState::Queued)
            .collect();
        rollout.dirty_rollout = false;
        Ok(rollout)
    }

    fn build(
        record: RolloutRecord,
        ids: Vec<String>,
        devices: Vec<DeviceRecord>,
    ) -> Result<Self, RolloutError> {
        record.spec.validate()?;
        if ids.is_empty() {
            return Err(RolloutError::NoDevices);
        }
        if ids.len() > MAX_ROLLOUT_DEVICES {
            return Err(RolloutError::TooManyDevices(ids.len()));
        }
        let mut index = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if id.is_empty() || id.len() > MAX_DEVICE_ID_BYTES {
                return Err(RolloutError::DeviceId(id.len()));
            }
            if index.insert(id.clone(), i as u32).is_some() {
                return Err(RolloutError::DuplicateDevice(id.clone()));
            }
        }
        let mut rollout = Self {
            record,
            ids,
            index,
            devices: Vec::new(),
            counts: StateCounts::default(),
            released: 0,
            wave_start: 0,
            wave_finished: 0,
            cursor: 0,
            retries: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            effects: Vec::new(),
            dirty_rollout: false,
            dirty_all: false,
            dirty_devices: BTreeSet::new(),
        };
        for (i, device) in devices.iter().enumerate() {
            rollout.counts.add(device.state);
            if let Some(deadline) = rollout.deadline(device) {
                rollout.deadlines.insert((deadline, i as u32));
            }
        }
        rollout.devices = devices;
        Ok(rollout)
    }

    /// Number of devices.
    pub fn len(&self) -> u32 {
        self.ids.len() as u32
    }

    /// Always false: a rollout has at least one device.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The rollout-wide record (spec, status, waves started).
    pub fn record(&self) -> &RolloutRecord {
        &self.record
    }

    /// Where the rollout is.
    pub fn status(&self) -> RolloutStatus {
        self.record.status
    }

    /// Devices per state.
    pub fn counts(&self) -> StateCounts {
        self.counts
    }

    /// The id of device `index`.
    pub fn device_id(&self, index: u32) -> &str {
        &self.ids[index as usize]
    }

    /// The record of device `index`.
    pub fn device(&self, index: u32) -> &DeviceRecord {
        &self.devices[index as usize]
    }

    /// The index of device `id`, if the rollout targets it.
    pub fn find(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// Every device with its id and record, in wave order.
    pub fn devices(&self) -> impl Iterator<Item = (&str, &DeviceRecord)> {
        self.ids.iter().map(String::as_str).zip(&self.devices)
    }

    /// Whether anything changed since the last [`Rollout::take_dirty`] (not yet written).
    pub fn is_dirty(&self) -> bool {
        self.dirty_rollout || self.dirty_all || !self.dirty_devices.is_empty()
    }

    /// What changed since the last call: the records to write.
    pub fn take_dirty(&mut self) -> Dirty {
        let changed = std::mem::take(&mut self.dirty_devices);
        let devices = if std::mem::take(&mut self.dirty_all) {
            (0..self.len()).collect()
        } else {
            changed.into_iter().collect()
        };
        Dirty {
            rollout: std::mem::take(&mut self.dirty_rollout),
            devices,
        }
    }

    /// Applies what device `id` reports about itself at `now_ms`; returns the state the device
    /// is in afterwards (`Queued` when a failure is retried).
    pub fn report(
        &mut self,
        id: &str,
        report: DeviceReport,
        now_ms: u64,
    ) -> Result<DeviceState, ReportError> {
        let device = self.find(id).ok_or(ReportError::UnknownDevice)?;
        let current = self.devices[device as usize].state;
        if current == DeviceState::Queued {
            return Err(ReportError::NotNotified);
        }
        if current.is_terminal() {
            return Err(ReportError::Finished(current));
        }
        if let DeviceReport::Downloading(progress) = report {
            if progress.done > progress.total {
                return Err(ReportError::BadProgress {
                    done: progress.done,
                    total: progress.total,
                });
            }
            self.devices[device as usize].progress = Some(progress);
        }
        if let Some(reason) = report.reason() {
            self.devices[device as usize].reason = Some(bounded_reason(reason));
        }
        let next = match report.state() {
            DeviceState::Failed => self.retry_or(device, DeviceState::Failed),
            state => state,
        };
        self.set_state(device, next, now_ms);
        Ok(next)
    }

    /// Stops notifying devices until [`Rollout::resume`].
    pub fn pause(&mut self, now_ms: u64) -> Result<(), RolloutError> {
        self.expect_status(RolloutStatus::Running)?;
        self.set_status(RolloutStatus::Paused, now_ms);
        Ok(())
    }

    /// Continues a paused rollout.
    pub fn resume(&mut self, now_ms: u64) -> Result<(), RolloutError> {
        self.expect_status(RolloutStatus::Paused)?;
        self.set_status(RolloutStatus::Running, now_ms);
        Ok(())
    }

    /// Cancels the rollout: queued devices are canceled, notified and downloading ones too
    /// and told so (nothing is written before the download ends); devices verifying,
    /// installing or rebooting finish.
    pub fn cancel(&mut self, now_ms: u64) -> Result<(), RolloutError> {
        if self.record.status.is_finished() {
            return Err(RolloutError::Status(self.record.status));
        }
        self.stop(RolloutStatus::Canceled, now_ms);
        Ok(())
    }

    /// Advances the rollout to `now_ms`: times out silent devices, checks the abort threshold,
    /// starts waves, notifies at most `notify_budget` devices (the shell's pace) and returns
    /// what to do. Call it after every report or operator action, and on a timer.
    pub fn tick(&mut self, now_ms: u64, notify_budget: usize) -> Vec<Effect> {
        self.expire(now_ms);
        self.check_abort(now_ms);
        if self.record.status == RolloutStatus::Running {
            while self.wave_done() && self.start_wave() {
                self.record.updated_ms = now_ms;
            }
            self.notify(now_ms, notify_budget);
        }
        let unfinished = self.counts.sum(|state| !state.is_terminal());
        if unfinished == 0 && !self.record.status.is_finished() {
            self.set_status(RolloutStatus::Completed, now_ms);
        }
        std::mem::take(&mut self.effects)
    }

    /// Whether effects wait for the next [`Rollout::tick`] (notifications, cancel notices).
    pub fn has_pending_effects(&self) -> bool {
        !self.effects.is_empty()
    }

    /// The earliest time a device times out, for the shell's timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    fn expect_status(&self, want: RolloutStatus) -> Result<(), RolloutError> {
        if self.record.status != want {
            return Err(RolloutError::Status(self.record.status));
        }
        Ok(())
    }

    fn set_status(&mut self, status: RolloutStatus, now_ms: u64) {
        self.record.status = status;
        self.record.updated_ms = now_ms;
        self.dirty_rollout = true;
    }

    /// `final_state`, or back to the queue when the device has retries left.
    fn retry_or(&mut self, device: u32, final_state: DeviceState) -> DeviceState {
        let attempts = self.devices[device as usize].attempts;
        if attempts <= self.record.spec.max_retries && !self.record.status.is_finished() {
            self.retries.insert(device);
            DeviceState::Queued
        } else {
            final_state
        }
    }

    fn deadline(&self, device: &DeviceRecord) -> Option<u64> {
        let timeout = match device.state {
            DeviceState::Notified => self.record.spec.pending_timeout_ms?,
            state if state.is_active() => self.record.spec.in_progress_timeout_ms,
            _ => return None,
        };
        Some(device.since_ms.saturating_add(timeout))
    }

    fn set_state(&mut self, device: u32, state: DeviceState, now_ms: u64) {
        let i = device as usize;
        if let Some(deadline) = self.deadline(&self.devices[i]) {
            self.deadlines.remove(&(deadline, device));
        }
        let old = self.devices[i].state;
        self.counts.remove(old);
        self.counts.add(state);
        self.devices[i].state = state;
        self.devices[i].since_ms = now_ms;
        if let Some(deadline) = self.deadline(&self.devices[i]) {
            self.deadlines.insert((deadline, device));
        }
        if state.is_terminal()
            && !old.is_terminal()
            && (self.wave_start..self.released).contains(&device)
        {
            self.wave_finished += 1;
        }
        self.dirty_devices.insert(device);
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(deadline, device)) = self.deadlines.first() {
            if deadline > now_ms {
                break;
            }
            self.devices[device as usize].reason = Some("timed out".to_owned());
            let next = self.retry_or(device, DeviceState::TimedOut);
            self.set_state(device, next, now_ms);
        }
    }

    fn check_abort(&mut self, now_ms: u64) {
        let Some(threshold) = self.record.spec.abort else {
            return;
        };
        if self.record.status.is_finished() {
            return;
        }
        let failed = u64::from(self.counts.sum(DeviceState::is_failure));
        let finished = failed + u64::from(self.counts.get(DeviceState::Succeeded));
        if finished >= u64::from(threshold.min_finished)
            && finished > 0
            && failed * 100 > u64::from(threshold.max_failure_percent) * finished
        {
            self.stop(RolloutStatus::Aborted, now_ms);
        }
    }

    /// Ends the rollout early: nothing queued is notified, notified devices are told.
    fn stop(&mut self, status: RolloutStatus, now_ms: u64) {
        for device in 0..self.len() {
            match self.devices[device as usize].state {
                DeviceState::Queued => self.set_state(device, DeviceState::Canceled, now_ms),
                // Told, or still downloading: nothing written yet, so the device stops.
                DeviceState::Notified | DeviceState::Downloading => {
                    self.set_state(device, DeviceState::Canceled, now_ms);
                    self.effects.push(Effect::Cancel { device });
                }
                _ => {}
            }
        }
        self.retries.clear();
        self.set_status(status, now_ms);
    }

    /// The current wave has finished far enough for the next to start.
    fn wave_done(&self) -> bool {
        let size = u64::from(self.released - self.wave_start);
        u64::from(self.wave_finished) * 100 >= u64::from(self.record.spec.advance_percent) * size
    }

    /// Starts the next wave; false when every device is already in a started wave.
    fn start_wave(&mut self) -> bool {
        let size = self
            .record
            .spec
            .wave_size(self.record.waves_started, self.released, self.len());
        if size == 0 {
            return false;
        }
        self.wave_start = self.released;
        self.released += size;
        self.wave_finished = self.devices[self.wave_start as usize..self.released as usize]
            .iter()
            .filter(|d| d.state.is_terminal())
            .count() as u32;
        self.record.waves_started += 1;
        self.dirty_rollout = true;
        true
    }

    fn notify(&mut self, now_ms: u64, budget: usize) {
        for _ in 0..budget {
            let device = if let Some(device) = self.retries.pop_first() {
                device
            } else if self.cursor < self.released {
                self.cursor += 1;
                self.cursor - 1
            } else {
                return;
            };
            if self.devices[device as usize].state != DeviceState::Queued {
                continue;
            }
            let record = &mut self.devices[device as usize];
            record.attempts += 1;
            record.progress = None;
            let attempt = record.attempts;
            self.set_state(device, DeviceState::Notified, now_ms);
            self.effects.push(Effect::Notify { device, attempt });
        }
    }
}
