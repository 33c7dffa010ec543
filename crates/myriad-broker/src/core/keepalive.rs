//! Keep alive, enforced by the core for every connection at once.
//!
//! Each connection remembers when its last packet arrived. A check is set
//! lazily: a packet only updates `last_seen`; when a check comes due, the
//! connection is closed if it has been silent for 1.5 times its keep alive
//! (MQTT-3.1.2-22 / 3.1.2-24), and otherwise checked again at
//! `last_seen + grace`. Connection tasks keep no timer of their own.
//!
//! Checks are kept in buckets of one second: a connection id in a vector, 8
//! bytes, where an ordered set of `(Instant, ConnId)` cost a B-tree entry
//! of 24 bytes in half-full nodes. A bucket is taken up when its second
//! begins; the connections in it that are due within that second move to a
//! small ordered set and are closed at their exact time, the others (those
//! that sent something since) go to the bucket of their new due time. Entries
//! are never removed early: one of a connection that is gone is skipped when
//! its bucket comes up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use myriad_mqtt::ReasonCode;

use super::time::Ticks;
use super::{Broker, ConnId};

/// How long a connection with keep alive `secs` may stay silent (0: forever).
pub(super) fn grace(keep_alive_secs: u16) -> Option<Duration> {
    (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500))
}

/// Pending keep alive checks. See the module documentation.
#[derive(Debug, Default)]
pub(super) struct KeepAliveChecks {
    /// Connections to check when each second (counted from the epoch) begins.
    buckets: BTreeMap<i64, Vec<ConnId>>,
    /// Connections due within a second that has begun, by due time.
    near: BTreeSet<(Ticks, ConnId)>,
}

/// Which check of a connection is the live one: the second of its due time,
/// truncated to 32 bits (entries only need telling apart from stale ones).
pub(super) type CheckMark = u32;

impl KeepAliveChecks {
    /// Schedules a check of `conn` at `due`, seen at `now`; returns the mark
    /// the connection keeps to recognise it.
    fn arm(&mut self, now: Ticks, conn: ConnId, due: Ticks) -> CheckMark {
        let second = due.secs();
        if Ticks::from_secs(second) <= now {
            self.near.insert((due, conn));
        } else {
            self.buckets.entry(second).or_default().push(conn);
        }
        second as CheckMark
    }

    /// When the earliest check is due, in ticks.
    fn next(&self) -> Option<Ticks> {
        let bucket = self.buckets.keys().next().map(|&s| Ticks::from_secs(s));
        let near = self.near.first().map(|&(at, _)| at);
        bucket.into_iter().chain(near).min()
    }
}

impl Broker {
    /// Starts watching `conn`, just accepted at `now`.
    pub(super) fn watch_keep_alive(&mut self, now: Instant, conn: ConnId) {
        let now = self.epoch.ticks(now);
        let Some(connection) = self
            .sessions
            .attached_mut(conn)
            .and_then(|s| s.connection.as_deref_mut())
        else {
            return;
        };
        connection.last_seen = now;
        if let Some(grace) = grace(connection.keep_alive) {
            let due = now.after(grace);
            connection.keep_alive_check = self.keep_alive.arm(now, conn, due);
        }
    }

    /// The earliest keep alive check.
    pub(super) fn next_keep_alive_check(&self) -> Option<Instant> {
        self.keep_alive.next().map(|at| self.epoch.instant(at))
    }

    /// Closes the connections silent for too long at `now`; re-arms the others.
    pub(super) fn check_keep_alives(&mut self, now: Instant) {
        let ticks = self.epoch.ticks(now);
        while let Some(bucket) = self.keep_alive.buckets.first_entry() {
            if Ticks::from_secs(*bucket.key()) > ticks {
                break;
            }
            let (second, conns) = bucket.remove_entry();
            for conn in conns {
                self.check_keep_alive(now, ticks, conn, second as CheckMark);
            }
        }
        while let Some(&(due, conn)) = self.keep_alive.near.first() {
            if due > ticks {
                break;
            }
            self.keep_alive.near.pop_first();
            self.check_keep_alive(now, ticks, conn, due.secs() as CheckMark);
        }
    }

    /// Runs the check of `conn` marked `mark`, if it is still the live one.
    fn check_keep_alive(&mut self, now: Instant, ticks: Ticks, conn: ConnId, mark: CheckMark) {
        let Some(session) = self.sessions.attached_mut(conn) else {
            return;
        };
        let Some(connection) = session.connection.as_deref_mut() else {
            return;
        };
        if connection.keep_alive_check != mark {
            return;
        }
        let Some(grace) = grace(connection.keep_alive) else {
            return;
        };
        let due = connection.last_seen.after(grace);
        if due <= ticks {
            self.disconnect_with(now, conn, ReasonCode::KeepAliveTimeout);
        } else {
            connection.keep_alive_check = self.keep_alive.arm(ticks, conn, due);
            // A quiet moment for this session: give back what idle flows held.
            session.tidy();
        }
    }
}
