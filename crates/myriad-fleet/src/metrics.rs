//! Metric names of the device layer and the small API its services call
//! to record them (through the [`metrics`] facade: nothing is recorded
//! unless the binary installed a recorder, e.g. the Prometheus exporter).
//!
//! Labels are bounded sets (a class, a status, a state): never a device id.
//!
//! The command service (issue 6) records through [`CommandMetrics`]:
//!
//! ```
//! use myriad_fleet::metrics::{BreakerState, CommandMetrics, CommandOutcome};
//! let metrics = CommandMetrics;
//! metrics.issued("high");
//! metrics.finished("high", CommandOutcome::Succeeded);
//! metrics.breaker("high", BreakerState::Open);
//! ```

/// Counter: presence changes of registered devices, by `to` (`online`, `offline`).
pub const PRESENCE_CHANGES_TOTAL: &str = "myriad_presence_changes_total";
/// Counter: commands accepted for delivery, by `class`.
pub const COMMANDS_ISSUED_TOTAL: &str = "myriad_commands_issued_total";
/// Counter: commands that reached a final status, by `class` and `status`.
pub const COMMANDS_TOTAL: &str = "myriad_commands_total";
/// Histogram: seconds from issue to final status, by `class`.
pub const COMMAND_DURATION_SECONDS: &str = "myriad_command_duration_seconds";
/// Gauge: commands waiting in offline queues, by `class`.
pub const COMMANDS_QUEUED: &str = "myriad_commands_queued";
/// Gauge: breaker state by `class`: 0 closed, 1 half-open, 2 open.
pub const COMMAND_BREAKER_STATE: &str = "myriad_command_breaker_state";

/// Records a presence change.
pub(crate) fn presence_changed(online: bool) {
    let to = if online { "online" } else { "offline" };
    metrics::counter!(PRESENCE_CHANGES_TOTAL, "to" => to).increment(1);
}

/// How a command ended, as the `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome {
    /// The device replied with success.
    Succeeded,
    /// The device replied with an error.
    Failed,
    /// No reply in time.
    TimedOut,
    /// Refused before delivery (rate limit, open breaker, queue full).
    Rejected,
    /// Cancelled by an operator or expired in the offline queue.
    Cancelled,
}

impl CommandOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandOutcome::Succeeded => "succeeded",
            CommandOutcome::Failed => "failed",
            CommandOutcome::TimedOut => "timed_out",
            CommandOutcome::Rejected => "rejected",
            CommandOutcome::Cancelled => "cancelled",
        }
    }
}

/// A circuit breaker's state, as the gauge's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Commands flow.
    Closed,
    /// Trial commands flow.
    HalfOpen,
    /// Commands are refused.
    Open,
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// What the command service records. `class` is the priority class name
/// (a small fixed set); a unit struct, free to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandMetrics;

impl CommandMetrics {
    /// A command of `class` was accepted for delivery.
    pub fn issued(&self, class: &'static str) {
        metrics::counter!(COMMANDS_ISSUED_TOTAL, "class" => class).increment(1);
    }

    /// A command of `class` reached its final `outcome`.
    pub fn finished(&self, class: &'static str, outcome: CommandOutcome) {
        metrics::counter!(COMMANDS_TOTAL, "class" => class, "status" => outcome.as_str())
            .increment(1);
    }

    /// A command of `class` took `seconds` from issue to its final status.
    pub fn duration(&self, class: &'static str, seconds: f64) {
        metrics::histogram!(COMMAND_DURATION_SECONDS, "class" => class).record(seconds);
    }

    /// `count` commands of `class` wait in offline queues now.
    pub fn queued(&self, class: &'static str, count: usize) {
        metrics::gauge!(COMMANDS_QUEUED, "class" => class).set(count as f64);
    }

    /// The breaker of `class` is now in `state`.
    pub fn breaker(&self, class: &'static str, state: BreakerState) {
        metrics::gauge!(COMMAND_BREAKER_STATE, "class" => class).set(state.value());
    }
}
