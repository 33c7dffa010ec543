//! One device's place in a rollout: its state, attempts, progress and the reason it failed,
//! and the reports a device sends about itself.

use serde::{Deserialize, Serialize};

/// Longest failure reason kept (bytes); longer reasons are cut at a character boundary.
pub const MAX_REASON_BYTES: usize = 256;

/// Where a device is in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DeviceState {
    /// Waiting for its wave (or for a retry).
    Queued,
    /// Told about the update; has not started.
    Notified,
    /// Downloading the image or patch.
    Downloading,
    /// Checking signature and hashes.
    Verifying,
    /// Writing the inactive slot.
    Installing,
    /// Switched slots; booting the new image and running its self-test.
    Rebooting,
    /// Running the new image, confirmed.
    Succeeded,
    /// Failed with a reason, retries used up.
    Failed,
    /// Refused the update (signature, hardware type, security counter ...).
    Rejected,
    /// Stayed silent past its timeout, retries used up.
    TimedOut,
    /// The rollout was canceled or aborted before the device started.
    Canceled,
    /// The new image failed its self-test; the device went back to the old one.
    RolledBack,
}

impl DeviceState {
    /// Every state, in lifecycle order.
    pub const ALL: [DeviceState; 12] = [
        DeviceState::Queued,
        DeviceState::Notified,
        DeviceState::Downloading,
        DeviceState::Verifying,
        DeviceState::Installing,
        DeviceState::Rebooting,
        DeviceState::Succeeded,
        DeviceState::Failed,
        DeviceState::Rejected,
        DeviceState::TimedOut,
        DeviceState::Canceled,
        DeviceState::RolledBack,
    ];

    /// The state's name as the API and the MQTT topics spell it (`QUEUED`, `TIMED_OUT` ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Queued => "QUEUED",
            DeviceState::Notified => "NOTIFIED",
            DeviceState::Downloading => "DOWNLOADING",
            DeviceState::Verifying => "VERIFYING",
            DeviceState::Installing => "INSTALLING",
            DeviceState::Rebooting => "REBOOTING",
            DeviceState::Succeeded => "SUCCEEDED",
            DeviceState::Failed => "FAILED",
            DeviceState::Rejected => "REJECTED",
            DeviceState::TimedOut => "TIMED_OUT",
            DeviceState::Canceled => "CANCELED",
            DeviceState::RolledBack => "ROLLED_BACK",
        }
    }

    /// Parses a name written by [`DeviceState::as_str`].
    pub fn parse(name: &str) -> Option<DeviceState> {
        DeviceState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
    }

    /// Position in [`DeviceState::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// A state the device never leaves in this rollout.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeviceState::Succeeded
                | DeviceState::Failed
                | DeviceState::Rejected
                | DeviceState::TimedOut
                | DeviceState::Canceled
                | DeviceState::RolledBack
        )
    }

    /// A terminal state that counts against the abort threshold.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            DeviceState::Failed
                | DeviceState::Rejected
                | DeviceState::TimedOut
                | DeviceState::RolledBack
        )
    }

    /// Notified and not yet finished: the device is working on the update (or about to).
    pub fn is_active(self) -> bool {
        !self.is_terminal() && self != DeviceState::Queued
    }
}

/// Bytes downloaded of the total, as the device reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes received so far.
    pub done: u64,
    /// Bytes in the whole download.
    pub total: u64,
}

/// A device's record in a rollout; stored as is, so it survives a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Where the device is.
    pub state: DeviceState,
    /// Notifications sent so far (first attempt and retries).
    pub attempts: u32,
    /// When the device entered `state` or last reported (milliseconds since the epoch).
    pub since_ms: u64,
    /// Download progress, once the device reported some.
    pub progress: Option<Progress>,
    /// Why the last attempt failed (at most [`MAX_REASON_BYTES`]).
    pub reason: Option<String>,
}

impl DeviceRecord {
    /// A device waiting for its wave.
    pub fn queued(now_ms: u64) -> Self {
        Self {
            state: DeviceState::Queued,
            attempts: 0,
            since_ms: now_ms,
            progress: None,
            reason: None,
        }
    }
}

/// What a device says about itself on `$ota/{id}/progress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceReport {
    /// Downloading, with bytes received so far.
    Downloading(Progress),
    /// Checking signature and hashes.
    Verifying,
    /// Writing the inactive slot.
    Installing,
    /// Switched slots and rebooting.
    Rebooting,
    /// Running the new image and confirmed it.
    Succeeded,
    /// Failed (download, verification or install error); may be retried.
    Failed(String),
    /// Refused the update; never retried.
    Rejected(String),
    /// The self-test failed and the device went back to its old image; never retried.
    RolledBack(String),
}

impl DeviceReport {
    /// The state the report moves the device to (before any retry).
    pub fn state(&self) -> DeviceState {
        match self {
            DeviceReport::Downloading(_) => DeviceState::Downloading,
            DeviceReport::Verifying => DeviceState::Verifying,
            DeviceReport::Installing => DeviceState::Installing,
            DeviceReport::Rebooting => DeviceState::Rebooting,
            DeviceReport::Succeeded => DeviceState::Succeeded,
            DeviceReport::Failed(_) => DeviceState::Failed,
            DeviceReport::Rejected(_) => DeviceState::Rejected,
            DeviceReport::RolledBack(_) => DeviceState::RolledBack,
        }
    }

    /// The reason a failing report gives.
    pub(crate) fn reason(&self) -> Option<&str> {
        match self {
            DeviceReport::Failed(reason)
            | DeviceReport::Rejected(reason)
            | DeviceReport::RolledBack(reason) => Some(reason),
            _ => None,
        }
    }
}

/// `reason` cut to at most [`MAX_REASON_BYTES`] at a character boundary.
pub(crate) fn bounded_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_classes_partition() {
        for state in DeviceState::ALL {
            assert_eq!(DeviceState::parse(state.as_str()), Some(state));
            assert_eq!(DeviceState::ALL[state.index()], state);
            let classes = [
                state == DeviceState::Queued,
                state.is_active(),
                state.is_terminal(),
            ];
            assert_eq!(classes.iter().filter(|&&c| c).count(), 1, "{state:?}");
            if state.is_failure() {
                assert!(state.is_terminal());
            }
        }
        assert_eq!(DeviceState::parse("queued"), None);
    }

    #[test]
    fn reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(200);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.len() >= MAX_REASON_BYTES - 1);
        assert!(long.starts_with(&cut));
        assert_eq!(bounded_reason("short"), "short");
    }
}
