//! What a restart does to commands that were not final when the server
//! stopped (or was killed): none stays stuck.
//!
//! - L1 (critical): requeued to be sent again (devices may see it twice:
//!   delivery is at least once, the command id lets them tell), unless its
//!   expiry passed: then `expired`.
//! - L2 / L3: a queued one never reached the device and a sent one's reply
//!   can no longer be matched to a waiting caller in time: `failed` with
//!   reason `server_restart`.

use super::model::{Command, CommandStatus, Priority};

/// The reason recorded for commands ended by a restart.
pub const SERVER_RESTART: &str = "server_restart";

/// What recovery does with one stored command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Already final: nothing to do.
    Final,
    /// Back to `queued`, to be sent again.
    Requeue,
    /// Moved to this final status.
    Finish(CommandStatus),
}

/// The rule for `command` at `now` (unix ms). See the module docs.
pub fn recovery(command: &Command, now: u64) -> Recovery {
    if command.status.is_final() {
        return Recovery::Final;
    }
    match command.priority {
        Priority::L1 if command.is_expired(now) => Recovery::Finish(CommandStatus::Expired),
        Priority::L1 => Recovery::Requeue,
        Priority::L2 | Priority::L3 => Recovery::Finish(CommandStatus::Failed),
    }
}

/// Applies [`recovery`] to `command`; true if it changed.
pub fn recover(command: &mut Command, now: u64) -> bool {
    match recovery(command, now) {
        Recovery::Final => false,
        Recovery::Requeue => {
            if command.status == CommandStatus::Queued {
                return false;
            }
            command.status = CommandStatus::Queued;
            command.timestamps.insert(CommandStatus::Queued, now);
            command.reason = Some(SERVER_RESTART.to_string());
            true
        }
        Recovery::Finish(status) => command.set_status(status, now, Some(SERVER_RESTART)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::model::{CommandId, CommandSpec, Payload};

    fn command(priority: Priority, status: CommandStatus, expires_at: Option<u64>) -> Command {
        let spec = CommandSpec {
            name: "x".into(),
            payload: Payload::Json(serde_json::Value::Null),
            priority,
            timeout_ms: 1_000,
            expires_at,
            read: false,
        };
        let mut c = Command::new(CommandId::generate(1), "d".into(), spec, None, 1);
        c.status = status;
        c
    }

    #[test]
    fn no_command_stays_in_flight_after_a_restart() {
        use CommandStatus::*;
        for priority in Priority::ALL {
            for status in CommandStatus::ALL {
                for expires_at in [None, Some(50), Some(500)] {
                    let mut c = command(priority, status, expires_at);
                    recover(&mut c, 100);
                    let ok =
                        c.status.is_final() || (priority == Priority::L1 && c.status == Queued);
                    assert!(
                        ok,
                        "{priority:?} {status:?} {expires_at:?} -> {:?}",
                        c.status
                    );
                    if status.is_final() {
                        assert_eq!(c.status, status, "final statuses never change");
                    }
                }
            }
        }
    }

    #[test]
    fn rules_per_class() {
        use CommandStatus::*;
        let mut c = command(Priority::L1, Delivered, Some(500));
        assert!(recover(&mut c, 100));
        assert_eq!(
            (c.status, c.reason.as_deref()),
            (Queued, Some(SERVER_RESTART))
        );
        let mut c = command(Priority::L1, Sent, Some(50));
        recover(&mut c, 100);
        assert_eq!(c.status, Expired);
        let mut c = command(Priority::L1, Queued, None);
        assert!(!recover(&mut c, 100), "a queued L1 stays as it is");
        for p in [Priority::L2, Priority::L3] {
            let mut c = command(p, Sent, None);
            recover(&mut c, 100);
            assert_eq!(
                (c.status, c.reason.as_deref()),
                (Failed, Some(SERVER_RESTART))
            );
            assert_eq!(c.timestamps.get(&Failed), Some(&100));
        }
    }
}
