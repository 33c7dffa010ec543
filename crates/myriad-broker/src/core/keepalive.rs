//! Keep alive, enforced by the core for every connection at once.
//!
//! Each connection remembers when its last packet arrived. One ordered set
//! holds a single check time per connection, set lazily: a packet only
//! updates `last_seen`; when a check comes due, the connection is closed if
//! it has been silent for 1.5 times its keep alive (MQTT-3.1.2-22 / 3.1.2-24),
//! and otherwise checked again at `last_seen + grace`. Connection tasks keep
//! no timer of their own, and a million idle sessions cost one set entry each.

use std::time::{Duration, Instant};

use myriad_mqtt::ReasonCode;

use super::{Broker, ConnId};

/// How long a connection with keep alive `secs` may stay silent (0: forever).
pub(super) fn grace(keep_alive_secs: u16) -> Option<Duration> {
    (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500))
}

impl Broker {
    /// Starts watching `conn`, just accepted at `now`.
    pub(super) fn watch_keep_alive(&mut self, now: Instant, conn: ConnId) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return;
        };
        connection.last_seen = now;
        if let Some(grace) = connection.keep_alive_grace {
            let at = now + grace;
            connection.keep_alive_check = Some(at);
            self.keep_alive_checks.insert((at, conn));
        }
    }

    /// Stops watching `conn` (it is being detached).
    pub(super) fn unwatch_keep_alive(&mut self, conn: ConnId, check: Option<Instant>) {
        if let Some(at) = check {
            self.keep_alive_checks.remove(&(at, conn));
        }
    }

    /// The earliest keep alive check.
    pub(super) fn next_keep_alive_check(&self) -> Option<Instant> {
        self.keep_alive_checks.first().map(|(at, _)| *at)
    }

    /// Closes the connections silent for too long at `now`; re-arms the others.
    pub(super) fn check_keep_alives(&mut self, now: Instant) {
        while let Some(&(at, conn)) = self.keep_alive_checks.first() {
            if at > now {
                break;
            }
            self.keep_alive_checks.remove(&(at, conn));
            let Some(connection) = self.connections.get_mut(&conn) else {
                continue;
            };
            let Some(grace) = connection.keep_alive_grace else {
                connection.keep_alive_check = None;
                continue;
            };
            let due = connection.last_seen + grace;
            if due <= now {
                connection.keep_alive_check = None;
                self.disconnect_with(now, conn, ReasonCode::KeepAliveTimeout);
            } else {
                connection.keep_alive_check = Some(due);
                self.keep_alive_checks.insert((due, conn));
            }
        }
    }
}
