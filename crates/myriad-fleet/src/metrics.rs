//! Metric names of the device layer and the small API its services call
//! to record them (through the [`metrics`] facade: nothing is recorded
//! unless the binary installed a recorder, e.g. the Prometheus exporter).
//!
//! Labels are bounded sets (a class, a status, a state): never a device id.
//!
//! The command service records every status a command reaches through
//! [`command_changed`]; breaker states and queue levels are read from it
//! at scrape time by the binary (gauges below).

use crate::commands::breaker::BreakerState;
use crate::commands::{Command, CommandStatus, Priority};

/// Counter: presence changes of registered devices, by `to` (`online`, `offline`).
pub const PRESENCE_CHANGES_TOTAL: &str = "myriad_presence_changes_total";
/// Counter: commands that reached a status, by `class` (`l1`..`l3`) and
/// `status` (`queued`, `sent`, `delivered`, `succeeded`, `failed`,
/// `timed_out`, `expired`, `cancelled`).
pub const COMMANDS_TOTAL: &str = "myriad_commands_total";
/// Histogram: seconds from acceptance to a final status, by `class`.
pub const COMMAND_DURATION_SECONDS: &str = "myriad_command_duration_seconds";
/// Gauge: commands not final.
pub const COMMANDS_ACTIVE: &str = "myriad_commands_active";
/// Gauge: commands sent and not final.
pub const COMMANDS_IN_FLIGHT: &str = "myriad_commands_in_flight";
/// Gauge: L1 commands waiting in offline devices' queues.
pub const COMMANDS_QUEUED: &str = "myriad_commands_queued";
/// Gauge: class breaker state by `class`: 0 closed, 1 half-open, 2 open.
pub const COMMAND_BREAKER_STATE: &str = "myriad_command_breaker_state";
/// Counter: telemetry samples (one metric's value at one timestamp) stored.
pub const TELEMETRY_POINTS_TOTAL: &str = "myriad_telemetry_points_total";
/// Counter: telemetry samples refused, by `reason`
/// ([`crate::telemetry::Refusal::as_str`]; a payload that is not a JSON object counts once).
pub const TELEMETRY_POINTS_REFUSED_TOTAL: &str = "myriad_telemetry_points_refused_total";
/// Counter: telemetry block compactions done, by `kind` (`level`: the newest blocks of a
/// partition merged into one of the next level; `cold`: a whole partition merged once it is
/// cold; `retention`: a partition reduced to its rollups).
pub const TELEMETRY_COMPACTIONS_TOTAL: &str = "myriad_telemetry_compactions_total";
/// Gauge: telemetry block files.
pub const TELEMETRY_BLOCKS: &str = "myriad_telemetry_blocks";
/// Gauge: bytes of telemetry block files (memory-mapped, read through the page cache).
pub const TELEMETRY_BLOCK_BYTES: &str = "myriad_telemetry_block_bytes";

/// Records a presence change.
pub(crate) fn presence_changed(online: bool) {
    let to = if online { "online" } else { "offline" };
    metrics::counter!(PRESENCE_CHANGES_TOTAL, "to" => to).increment(1);
}

/// Records that `command` reached its current status (and, for a final
/// one, how long it took since it was accepted).
pub fn command_changed(command: &Command) {
    let class = command.priority.as_str();
    let status = command.status.as_str();
    metrics::counter!(COMMANDS_TOTAL, "class" => class, "status" => status).increment(1);
    if command.status.is_final()
        && let (Some(start), Some(end)) = (
            command.timestamps.get(&CommandStatus::Queued),
            command.timestamps.get(&command.status),
        )
    {
        let seconds = end.saturating_sub(*start) as f64 / 1000.0;
        metrics::histogram!(COMMAND_DURATION_SECONDS, "class" => class).record(seconds);
    }
}

/// The gauge value of a breaker state: 0 closed, 1 half-open, 2 open.
pub fn breaker_value(state: BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

/// Sets the breaker gauge of `class`.
pub fn breaker_state(class: Priority, state: BreakerState) {
    metrics::gauge!(COMMAND_BREAKER_STATE, "class" => class.as_str()).set(breaker_value(state));
}
