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

use std::collections::{BTreeSet, HashMap, VecDeque};
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
    /// When each connection's oldest held publication was held, soonest first: the next
    /// hold deadline without a scan over every holding connection (it is asked for after
    /// every batch of events).
    fronts: BTreeSet<(Instant, ConnId)>,
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

    /// When `conn`'s oldest held publication was held.
    fn front(&self, conn: ConnId) -> Option<Instant> {
        Some(self.held.get(&conn)?.front()?.since)
    }

    /// Brings `fronts` up to date for `conn`, whose oldest held publication was held at
    /// `before` (`None`: it held nothing) before the change.
    fn sync_front(&mut self, conn: ConnId, before: Option<Instant>) {
        let after = self.front(conn);
        if after == before {
            return;
        }
        if let Some(since) = before {
            self.fronts.remove(&(since, conn));
        }
        if let Some(since) = after {
            self.fronts.insert((since, conn));
        }
    }

    /// Drops everything `conn` holds.
    fn drop_held(&mut self, conn: ConnId) {
        let before = self.front(conn);
        self.held.remove(&conn);
        self.sync_front(conn, before);
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
        let before = self.backpressure.front(conn);
        self.backpressure
            .held
            .entry(conn)
            .or_default()
            .push_back(Held {
                message,
                packet_id,
                since: now,
            });
        self.backpressure.sync_front(conn, before);
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
            self.backpressure.drop_held(conn);
            return;
        };
        let limit = self.hold_limit().unwrap_or_default();
        let before = self.backpressure.front(conn);
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
                    self.backpressure.sync_front(conn, before);
                    self.wait_on(blocker, conn);
                    return;
                }
            }
        }
        self.backpressure.held.remove(&conn);
        self.backpressure.sync_front(conn, before);
    }

    /// A connection ended: what it had held is dropped unacknowledged (its
    /// client sends it again), and whoever waited on its session goes on.
    pub(super) fn forget_connection(&mut self, now: Instant, conn: ConnId, session: SessionId) {
        self.backpressure.drop_held(conn);
        self.release_waiters(now, session);
    }

    /// When the oldest held publication reaches the hold limit.
    pub(super) fn next_hold_deadline(&self) -> Option<Instant> {
        let limit = self.hold_limit()?;
        let (since, _) = self.backpressure.fronts.first()?;
        Some(*since + limit)
    }

    /// Routes publications held past the limit.
    pub(super) fn release_overdue(&mut self, now: Instant) {
        let Some(limit) = self.hold_limit() else {
            return;
        };
        let overdue: Vec<ConnId> = (self.backpressure.fronts.iter())
            .take_while(|(since, _)| *since + limit <= now)
            .map(|(_, conn)| *conn)
            .collect();
        for conn in overdue {
            self.release(now, conn);
        }
    }
}
