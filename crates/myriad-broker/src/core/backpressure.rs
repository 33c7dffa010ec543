//! Publisher flow control: a QoS 1 PUBLISH that would overflow the queue of
//! a connected subscriber is held, unacknowledged, until that queue has
//! drained to half, instead of being accepted and then dropping the
//! subscriber's oldest message.
//!
//! Holding back the PUBACK is MQTT's own flow control: a publisher stops
//! once its in-flight window (Receive Maximum in 5.0, the client's own limit
//! in 3.1.1) is full of unacknowledged messages, so a fast publisher slows
//! to the pace of its slowest connected consumer and nothing it sent is
//! lost. A message is held at most `mqtt.publisher_hold_ms`; after that it
//! is routed as before (the full queue drops its oldest). Offline sessions
//! never hold anyone back (their queues drop as before), nor does the
//! publisher's own session.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use myriad_mqtt::{QoS, ReasonCode};

use super::message::Message;
use super::publish::queue_limits;
use super::tree::Matched;
use super::{Broker, ConnId, SessionId};

/// One PUBLISH held back, in the order it arrived.
#[derive(Debug)]
struct Held {
    message: Message,
    packet_id: u16,
    since: Instant,
}

/// Held publications and who waits on whom.
#[derive(Debug, Default)]
pub(super) struct Backpressure {
    /// Held QoS 1 publications per publishing connection, oldest first.
    held: HashMap<ConnId, VecDeque<Held>>,
    /// Publishing connections waiting for each full session to drain.
    waiting: HashMap<SessionId, Vec<ConnId>>,
}

/// What routing a message did.
pub(super) enum Routed {
    /// Delivered (or queued) to this many sessions.
    To(usize),
    /// Not routed: this connected session's queue is full.
    Blocked(Message, SessionId),
}

impl Backpressure {
    /// How many publications are held, over every connection.
    pub(super) fn held_count(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }
}

impl Broker {
    /// QoS 1 publications held back right now, over every connection.
    pub fn held_publications(&self) -> usize {
        self.backpressure.held_count()
    }

    fn hold_limit(&self) -> Option<Duration> {
        match self.config.publisher_hold_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }

    /// Whether a QoS 1 PUBLISH from `conn` must queue behind ones already
    /// held (publications from one client keep their order).
    pub(super) fn is_holding(&self, conn: ConnId) -> bool {
        self.backpressure.held.contains_key(&conn)
    }

    /// Holds a QoS 1 PUBLISH from `conn` behind those already held. Hands
    /// the message back (not held) once as many are held as the server's
    /// Receive Maximum: a client ignoring flow control gets the old behaviour.
    pub(super) fn hold_behind(
        &mut self,
        now: Instant,
        conn: ConnId,
        message: Message,
        packet_id: u16,
    ) -> Result<(), Message> {
        let limit = usize::from(self.config.receive_maximum);
        match self.backpressure.held.get_mut(&conn) {
            Some(held) if held.len() < limit => {
                held.push_back(Held {
                    message,
                    packet_id,
                    since: now,
                });
                self.stats.publishes_held += 1;
                Ok(())
            }
            _ => Err(message),
        }
    }

    /// Holds `message` (the first held for `conn`) until `blocker` drains.
    pub(super) fn hold(
        &mut self,
        now: Instant,
        conn: ConnId,
        message: Message,
        packet_id: u16,
        blocker: SessionId,
    ) {
        self.stats.publishes_held += 1;
        self.backpressure
            .held
            .entry(conn)
            .or_default()
            .push_back(Held {
                message,
                packet_id,
                since: now,
            });
        self.wait_on(blocker, conn);
    }

    fn wait_on(&mut self, blocker: SessionId, conn: ConnId) {
        let waiting = self.backpressure.waiting.entry(blocker).or_default();
        if !waiting.contains(&conn) {
            waiting.push(conn);
        }
    }

    /// The first connected session other than `publisher` among `matched`
    /// whose queue is full, if holding is on.
    pub(super) fn blocker(&self, matched: &[Matched], publisher: SessionId) -> Option<SessionId> {
        self.hold_limit()?;
        matched.iter().map(|m| m.session).find(|&id| {
            id != publisher
                && self.sessions.get(id).is_some_and(|s| {
                    s.connection.is_some() && s.outbound().is_full(queue_limits(&self.config, s))
                })
        })
    }

    /// After `session`'s queue shrank: lets the publishers waiting on it
    /// go on once it has drained to half (or is gone or offline).
    pub(super) fn relieve(&mut self, now: Instant, session: SessionId) {
        if !self.backpressure.waiting.contains_key(&session) {
            return;
        }
        let still_full = self.sessions.get(session).is_some_and(|s| {
            s.connection.is_some() && !s.outbound().is_half_empty(queue_limits(&self.config, s))
        });
        if !still_full {
            self.release_waiters(now, session);
        }
    }

    /// Lets every publisher waiting on `session` go on.
    fn release_waiters(&mut self, now: Instant, session: SessionId) {
        let Some(waiting) = self.backpressure.waiting.remove(&session) else {
            return;
        };
        for conn in waiting {
            self.release(now, conn);
        }
    }

    /// Routes `conn`'s held publications in order until one is blocked
    /// again; those held longer than the limit are routed regardless.
    fn release(&mut self, now: Instant, conn: ConnId) {
        let Some(publisher) = self.session_of(conn) else {
            self.backpressure.held.remove(&conn);
            return;
        };
        let limit = self.hold_limit().unwrap_or_default();
        loop {
            let Some(held) = self
                .backpressure
                .held
                .get_mut(&conn)
                .and_then(VecDeque::pop_front)
            else {
                break;
            };
            let overdue = now.saturating_duration_since(held.since) >= limit;
            let hold_for = (!overdue).then_some(publisher);
            match self.route(now, held.message, hold_for) {
                Routed::To(count) => {
                    let v5 = self.is_v5(conn);
                    let reason = if count == 0 && v5 {
                        ReasonCode::NoMatchingSubscribers
                    } else {
                        ReasonCode::Success
                    };
                    self.acknowledge(conn, QoS::AtLeastOnce, held.packet_id, reason);
                }
                Routed::Blocked(message, blocker) => {
                    if let Some(queue) = self.backpressure.held.get_mut(&conn) {
                        queue.push_front(Held { message, ..held });
                    }
                    self.wait_on(blocker, conn);
                    return;
                }
            }
        }
        self.backpressure.held.remove(&conn);
    }

    /// A connection ended: what it had held is dropped unacknowledged (its
    /// client sends it again), and whoever waited on its session goes on.
    pub(super) fn forget_connection(&mut self, now: Instant, conn: ConnId, session: SessionId) {
        self.backpressure.held.remove(&conn);
        self.release_waiters(now, session);
    }

    /// When the oldest held publication reaches the hold limit.
    pub(super) fn next_hold_deadline(&self) -> Option<Instant> {
        let limit = self.hold_limit()?;
        self.backpressure
            .held
            .values()
            .filter_map(|held| held.front())
            .map(|held| held.since + limit)
            .min()
    }

    /// Routes publications held past the limit.
    pub(super) fn release_overdue(&mut self, now: Instant) {
        let Some(limit) = self.hold_limit() else {
            return;
        };
        let overdue: Vec<ConnId> = (self.backpressure.held.iter())
            .filter(|(_, held)| held.front().is_some_and(|h| h.since + limit <= now))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in overdue {
            self.release(now, conn);
        }
    }
}
