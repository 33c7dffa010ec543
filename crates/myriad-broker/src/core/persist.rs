//! What the broker records for its store, and how it comes back from a snapshot.
//!
//! When recording is on ([`Broker::restore`]), every change to state that
//! must survive a restart is appended as a [`Change`]; the shell takes them
//! with [`Broker::take_changes`] and commits them before it sends the
//! outputs of the same batch, so no acknowledgement leaves before the
//! message it acknowledges is stored. Only sessions that outlive their
//! connection (expiry interval above 0) are recorded; QoS 0 messages never are.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use myriad_mqtt::{ByteString, QoS, Will};
use myriad_store::{
    Change, MessageRecord, OutboundRecord, OutboundState, SessionRecord, Snapshot,
    SubscriptionRecord, UnixMillis,
};

use super::message::{Delivery, Message};
use super::session::{NEVER_EXPIRES, Session};
use super::subscribe::split_filter;
use super::tree::Subscription;
use super::{Broker, SessionId, limits};
use crate::config::BrokerConfig;

/// The wall-clock time now, in milliseconds since the Unix epoch.
pub fn unix_now() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Ties the monotonic clock the core runs on to wall-clock time for storage.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    base: Instant,
    base_unix: UnixMillis,
}

impl Clock {
    pub(super) fn new(base: Instant, base_unix: UnixMillis) -> Clock {
        Clock { base, base_unix }
    }

    pub(super) fn to_unix(self, at: Instant) -> UnixMillis {
        let since = at.saturating_duration_since(self.base);
        self.base_unix
            .saturating_add(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn to_instant(self, at: UnixMillis) -> Instant {
        let ahead = at.saturating_sub(self.base_unix);
        self.base + Duration::from_millis(ahead)
    }
}

fn message_record(message: &Message, clock: Clock) -> MessageRecord {
    MessageRecord {
        topic: message.topic.clone(),
        payload: message.payload.clone(),
        qos: message.qos,
        retain: message.retain,
        properties: message.properties.clone(),
        expires_at: message.expires_at.map(|at| clock.to_unix(at)),
    }
}

fn message_from_record(record: MessageRecord, clock: Clock) -> Message {
    Message {
        topic: record.topic,
        payload: record.payload,
        qos: record.qos,
        retain: record.retain,
        properties: record.properties,
        expires_at: record.expires_at.map(|at| clock.to_instant(at)),
        publisher: None,
    }
}

/// Records a restore leaves out because the limits in force refuse them
/// (a data dir written with higher limits, or by an older version).
#[derive(Default)]
struct Skipped {
    count: usize,
}

impl Skipped {
    /// Lines logged one by one; past them only the total is.
    const LOGGED: usize = 10;

    fn note(&mut self, what: &str, client_id: Option<&ByteString>, topic: &str) {
        self.count += 1;
        if self.count <= Self::LOGGED {
            let levels = topic.split('/').count();
            let length = topic.len();
            tracing::warn!(
                client_id = client_id.map(|c| &**c),
                levels,
                length,
                "stored {what} not restored: beyond mqtt.max_topic_levels, \
                 mqtt.max_topic_length or mqtt.max_subscriptions_per_client"
            );
        }
    }

    fn report(&self) {
        if self.count > 0 {
            tracing::warn!(
                skipped = self.count,
                "stored records not restored: the configured limits refuse them (they stay in the store)"
            );
        }
    }
}

impl Broker {
    /// A broker rebuilt from a store's snapshot, recording changes from now
    /// on. `now` and `now_unix` are the same moment on both clocks.
    ///
    /// A record the configured limits refuse (a topic or filter beyond
    /// `mqtt.max_topic_levels` / `mqtt.max_topic_length`, subscriptions
    /// beyond `mqtt.max_subscriptions_per_client`) is logged and left out:
    /// whatever a data dir holds, start-up goes on. It stays in the store,
    /// so raising the limits again brings it back.
    pub fn restore(
        config: BrokerConfig,
        snapshot: Snapshot,
        now: Instant,
        now_unix: UnixMillis,
    ) -> Broker {
        let mut broker = Broker::new(config);
        broker.clock = Clock::new(now, now_unix);
        broker.recording = true;
        let clock = broker.clock;
        let mut skipped = Skipped::default();
        for message in snapshot.retained {
            if !limits::topic_fits(&broker.config, &message.topic) {
                skipped.note("retained message", None, &message.topic);
                continue;
            }
            let message = Arc::new(message_from_record(message, clock));
            if !message.is_expired(now) {
                broker.retained.set(message);
            }
        }
        for stored in snapshot.sessions {
            let record = stored.record;
            let id = broker
                .sessions
                .insert(record.client_id.clone(), record.expiry_interval);
            let Some(session) = broker.sessions.get_mut(id) else {
                continue;
            };
            session.persisted = true;
            for subscription in stored.subscriptions {
                let client_id = Some(&record.client_id);
                if !limits::filter_fits(&broker.config, &subscription.filter) {
                    skipped.note("subscription", client_id, &subscription.filter);
                    continue;
                }
                if session.subscriptions.len() >= broker.config.max_subscriptions_per_client {
                    skipped.note(
                        "subscription beyond the quota",
                        client_id,
                        &subscription.filter,
                    );
                    continue;
                }
                let (group, inner) = split_filter(&subscription.filter);
                let entry = Subscription {
                    options: subscription.options,
                    id: subscription.id,
                };
                broker.tree.insert(inner, group, id, entry);
                session
                    .subscriptions
                    .insert(subscription.filter.clone(), entry);
            }
            for (seq, outbound) in stored.outbound {
                session.outbound_mut().resume_seq_after(seq);
                if let Some(message) = &outbound.message
                    && !limits::topic_fits(&broker.config, &message.topic)
                {
                    skipped.note("queued message", Some(&record.client_id), &message.topic);
                    continue;
                }
                let delivery = outbound.message.map(|message| Delivery {
                    message: Arc::new(message_from_record(message, clock)),
                    qos: outbound.qos,
                    retain: outbound.retain,
                    subscription_ids: outbound.subscription_ids.clone(),
                    seq,
                });
                match (outbound.state, delivery) {
                    (OutboundState::Queued, Some(delivery)) => {
                        if let Some(at) = delivery.message.expires_at {
                            broker.next_sweep = Some(broker.next_sweep.map_or(at, |n| n.min(at)));
                        }
                        session.outbound_mut().restore_queued(delivery);
                    }
                    (OutboundState::Published { packet_id }, Some(delivery)) => {
                        session.outbound_mut().record_sent(packet_id, delivery);
                    }
                    (OutboundState::Released { packet_id }, _) => {
                        session.outbound_mut().restore_released(packet_id, seq);
                    }
                    // A queued or published record without its message cannot be delivered.
                    (_, None) => {}
                }
            }
            if !stored.inbound_qos2.is_empty() {
                session.inbound_qos2_mut().extend(stored.inbound_qos2);
            }
            // Restored sessions are offline: they expire as they would have.
            let expires_at = match record.expires_at {
                Some(at) => Some(clock.to_instant(at)),
                None if record.expiry_interval != NEVER_EXPIRES => {
                    Some(now + Duration::from_secs(u64::from(record.expiry_interval)))
                }
                None => None,
            };
            if let Some(at) = expires_at {
                let at = broker.epoch.ticks(at);
                session.set_expires_at(Some(at));
                broker.expiries.insert((at, id));
            }
            let will = stored.will.filter(|(_, message)| {
                let fits = limits::topic_fits(&broker.config, &message.topic);
                if !fits {
                    skipped.note("will", Some(&record.client_id), &message.topic);
                }
                fits
            });
            if let Some((due, message)) = will {
                let due = clock.to_instant(due);
                session.set_will_due(Some(due));
                broker.wills_due.insert((due, id));
                let message = message_from_record(message, clock);
                broker.pending_wills.insert(
                    id,
                    Box::new(Will {
                        topic: message.topic,
                        payload: message.payload,
                        qos: message.qos,
                        retain: message.retain,
                        properties: message.properties,
                    }),
                );
            }
        }
        skipped.report();
        broker
    }

    /// The changes recorded since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Whether changes are waiting for [`Broker::take_changes`].
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// The client id of `session` if its changes are recorded.
    fn recorded(&self, session: SessionId) -> Option<ByteString> {
        if !self.recording {
            return None;
        }
        self.sessions
            .get(session)
            .filter(|s| s.expiry_interval > 0)
            .map(|s| s.client_id.clone())
    }

    pub(super) fn record_session(&mut self, session: SessionId) {
        if self.recorded(session).is_none() {
            return;
        }
        let clock = self.clock;
        let epoch = self.epoch;
        if let Some(s) = self.sessions.get_mut(session) {
            s.persisted = true;
            let record = SessionRecord {
                client_id: s.client_id.clone(),
                expiry_interval: s.expiry_interval,
                expires_at: s.expires_at().map(|at| clock.to_unix(epoch.instant(at))),
            };
            self.changes.push(Change::PutSession(record));
        }
    }

    /// Records the end of a session that had been recorded.
    pub(super) fn record_session_end(&mut self, session: &Session) {
        if self.recording && session.persisted {
            let client_id = &session.client_id;
            self.changes.push(Change::DeleteSession {
                client_id: client_id.clone(),
            });
        }
    }

    pub(super) fn record_subscription(
        &mut self,
        session: SessionId,
        filter: &ByteString,
        subscription: Option<Subscription>,
    ) {
        let Some(client_id) = self.recorded(session) else {
            return;
        };
        let filter = filter.clone();
        self.changes.push(match subscription {
            Some(entry) => Change::PutSubscription {
                client_id,
                subscription: SubscriptionRecord {
                    filter,
                    options: entry.options,
                    id: entry.id,
                },
            },
            None => Change::DeleteSubscription { client_id, filter },
        });
    }

    /// Records a QoS 1/2 delivery queued (`packet_id` None) or sent.
    pub(super) fn record_outbound(
        &mut self,
        session: SessionId,
        delivery: &Delivery,
        packet_id: Option<u16>,
    ) {
        if delivery.qos == QoS::AtMostOnce {
            return;
        }
        let Some(client_id) = self.recorded(session) else {
            return;
        };
        let state = match packet_id {
            Some(packet_id) => OutboundState::Published { packet_id },
            None => OutboundState::Queued,
        };
        let record = OutboundRecord {
            state,
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
            message: Some(message_record(&delivery.message, self.clock)),
        };
        self.changes.push(Change::PutOutbound {
            client_id,
            seq: delivery.seq,
            record,
        });
    }

    /// Records the delivery just appended to a session's queue (nothing is
    /// copied unless the session is recorded).
    pub(super) fn record_last_queued(&mut self, session: SessionId) {
        if self.recorded(session).is_none() {
            return;
        }
        let Some(queued) = self
            .sessions
            .get(session)
            .and_then(|s| s.outbound().queue().back())
            .cloned()
        else {
            return;
        };
        self.record_outbound(session, &queued, None);
    }

    /// Records a QoS 2 delivery as released (PUBREL sent).
    pub(super) fn record_released(&mut self, session: SessionId, seq: u64, packet_id: u16) {
        let Some(client_id) = self.recorded(session) else {
            return;
        };
        self.changes.push(Change::PutOutbound {
            client_id,
            seq,
            record: OutboundRecord {
                state: OutboundState::Released { packet_id },
                qos: QoS::ExactlyOnce,
                retain: false,
                subscription_ids: Vec::new(),
                message: None,
            },
        });
    }

    /// Records that an outbound delivery is finished (acknowledged, dropped or expired).
    pub(super) fn record_outbound_done(&mut self, session: SessionId, seq: u64) {
        if seq == 0 {
            return;
        }
        if let Some(client_id) = self.recorded(session) {
            self.changes.push(Change::DeleteOutbound { client_id, seq });
        }
    }

    pub(super) fn record_inbound_qos2(&mut self, session: SessionId, packet_id: u16, open: bool) {
        let Some(client_id) = self.recorded(session) else {
            return;
        };
        self.changes.push(if open {
            Change::PutInboundQos2 {
                client_id,
                packet_id,
            }
        } else {
            Change::DeleteInboundQos2 {
                client_id,
                packet_id,
            }
        });
    }

    pub(super) fn record_will(&mut self, session: SessionId, due: Option<(Instant, &Will)>) {
        let Some(client_id) = self.recorded(session) else {
            return;
        };
        let clock = self.clock;
        self.changes.push(match due {
            Some((at, will)) => Change::PutWill {
                client_id,
                due_at: clock.to_unix(at),
                message: MessageRecord {
                    topic: will.topic.clone(),
                    payload: will.payload.clone(),
                    qos: will.qos,
                    retain: will.retain,
                    properties: will.properties.clone(),
                    expires_at: None,
                },
            },
            None => Change::DeleteWill { client_id },
        });
    }

    pub(super) fn record_retained(&mut self, message: &Message) {
        if !self.recording {
            return;
        }
        self.changes.push(if message.payload.is_empty() {
            Change::DeleteRetained {
                topic: message.topic.clone(),
            }
        } else {
            Change::PutRetained(message_record(message, self.clock))
        });
    }
}
