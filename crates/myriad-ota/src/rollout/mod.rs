//! The rollout planner: which devices to notify and when, sans-IO (time is passed in as
//! milliseconds since the epoch; nothing here sends, stores or sleeps).
//!
//! A [`Rollout`] holds the devices it targets (resolved by the caller from an id list, a
//! group or an attribute query), one [`DeviceRecord`] each, and the [`RolloutSpec`]. The
//! shell drives it:
//!
//! - [`Rollout::report`] records what a device says about itself ([`DeviceReport`]);
//! - [`Rollout::pause`], [`Rollout::resume`] and [`Rollout::cancel`] are the operator's;
//! - [`Rollout::tick`] (after any of those, and on a timer) times out silent devices, checks
//!   the abort threshold, starts the next wave when the current one has finished far enough,
//!   notifies devices and returns the [`Effect`]s to carry out (notify, cancel);
//! - [`Rollout::take_dirty`] names what changed, so the shell writes only those records and
//!   a restart ([`Rollout::restore`]) resumes where the stored records say.
//!
//! ## Rules
//! - Waves ([`WavePlan`]) take devices in list order. The next wave starts once
//!   `advance_percent` of the current one is in a terminal state.
//! - A device that fails or times out is notified again while it has retries left; a device
//!   that rejects the update or rolls back is finished.
//! - Abort: once at least `min_finished` devices finished (succeeded or failed for good) and
//!   failures are more than `max_failure_percent` of them, the rollout is aborted: queued and
//!   notified and downloading devices are canceled (and told: nothing is written to a slot
//!   before the download ends); devices verifying, installing or rebooting finish and keep
//!   reporting. A cancel by the operator does the same.
//! - A paused rollout notifies no one and starts no wave; reports and timeouts still count.
//! - A rollout completes when every device is in a terminal state.
//!
//! ## Limits
//! At most [`MAX_ROLLOUT_DEVICES`] devices; the spec's bounds are in [`spec`]; failure
//! reasons are cut to [`MAX_REASON_BYTES`]. Memory is about 130 bytes per device plus twice its id (list and lookup).

mod device;
mod planner;
pub mod spec;
#[cfg(test)]
mod tests;

pub use device::{DeviceRecord, DeviceReport, DeviceState, MAX_REASON_BYTES, Progress};
pub use planner::{
    Dirty, Effect, MAX_DEVICE_ID_BYTES, MAX_ROLLOUT_DEVICES, ReportError, RestoreError, Rollout,
    RolloutError, RolloutRecord, RolloutStatus, StateCounts,
};
pub use spec::{AbortThreshold, RolloutSpec, SpecError, WavePlan};
