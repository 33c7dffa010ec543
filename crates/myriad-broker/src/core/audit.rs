//! Self-checks: whether the broker's indexes agree with each other, and the
//! state its store should hold. Each costs a walk over every session; they
//! are for tests and fuzzing (`myriad_broker::fuzz`), not for the hot path.

use myriad_mqtt::QoS;
use myriad_store::{
    MessageRecord, OutboundRecord, OutboundState, SessionRecord, Snapshot, StoredSession,
    SubscriptionRecord,
};

use super::Broker;
use super::message::Message;
use super::publish::queue_limits;
use super::session::InflightState;

/// A record of `message` as the store keeps it.
fn record_of(message: &Message, clock: super::persist::Clock) -> MessageRecord {
    MessageRecord {
        topic: message.topic.clone(),
        payload: message.payload.clone(),
        qos: message.qos,
        retain: message.retain,
        properties: message.properties.clone(),
        expires_at: message.expires_at.map(|at| clock.to_unix(at)),
    }
}

impl Broker {
    /// Checks that the broker's indexes and counters agree with its sessions:
    /// subscription and connection counts, the client-id and connection
    /// indexes, expiry and will timers, queue byte counts, packet ids in
    /// flight. Returns the first disagreement found.
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut subscriptions = 0;
        let mut sessions = 0;
        let mut connected = 0;
        let mut expiring = 0;
        let mut wills = 0;
        for session in self.sessions.values() {
            let id = session.id;
            let name = &session.client_id;
            sessions += 1;
            subscriptions += session.subscriptions.len();
            if self.sessions.id_of(name) != Some(id) {
                return Err(format!("session {name:?} is not found by its client id"));
            }
            if let Some(connection) = session.connection.as_deref() {
                connected += 1;
                if self.sessions.attached(connection.id).map(|s| s.id) != Some(id) {
                    return Err(format!(
                        "session {name:?} is not found by its connection {}",
                        connection.id
                    ));
                }
                if session.expires_at().is_some() || session.will_due().is_some() {
                    return Err(format!(
                        "connected session {name:?} has an expiry or a will timer"
                    ));
                }
            } else if session.expiry_interval == 0 {
                return Err(format!("offline session {name:?} has expiry interval 0"));
            }
            if let Some(at) = session.expires_at() {
                expiring += 1;
                if !self.expiries.contains(&(at, id)) {
                    return Err(format!("expiry of session {name:?} is not scheduled"));
                }
            }
            if let Some(due) = session.will_due() {
                wills += 1;
                if !self.wills_due.contains(&(due, id)) || !self.pending_wills.contains_key(&id) {
                    return Err(format!("delayed will of session {name:?} is not scheduled"));
                }
            }
            let outbound = session.outbound();
            let queued: usize = outbound.queue().iter().map(|d| d.message.weight()).sum();
            if queued != outbound.queued_bytes() {
                return Err(format!(
                    "session {name:?} counts {} queued bytes, holds {queued}",
                    outbound.queued_bytes()
                ));
            }
            let limits = queue_limits(&self.config, session);
            if outbound.queue().len() > limits.max_messages.max(1)
                || outbound.queued_bytes() > limits.max_bytes
            {
                return Err(format!(
                    "session {name:?} queues {} messages, {} bytes, over its limits",
                    outbound.queue().len(),
                    outbound.queued_bytes()
                ));
            }
            let mut ids: Vec<u16> = outbound.inflight().iter().map(|f| f.packet_id).collect();
            ids.sort_unstable();
            if ids.first() == Some(&0) || ids.windows(2).any(|w| w[0] == w[1]) {
                return Err(format!("session {name:?} has packet ids {ids:?} in flight"));
            }
            if session.inbound_qos2().len() > usize::from(self.config.receive_maximum) {
                return Err(format!(
                    "session {name:?} holds {} inbound QoS 2 flows",
                    session.inbound_qos2().len()
                ));
            }
        }
        if sessions != self.sessions.len() {
            return Err(format!(
                "{} sessions counted, {sessions} held",
                self.sessions.len()
            ));
        }
        if subscriptions != self.tree.len() {
            return Err(format!(
                "sessions hold {subscriptions} subscriptions, the tree {}",
                self.tree.len()
            ));
        }
        if connected != self.sessions.connection_count() {
            return Err(format!(
                "{connected} sessions connected, {} in the connection index",
                self.sessions.connection_count()
            ));
        }
        if expiring != self.expiries.len() {
            return Err(format!(
                "{expiring} sessions expiring, {} expiries scheduled",
                self.expiries.len()
            ));
        }
        if wills != self.wills_due.len() || wills != self.pending_wills.len() {
            return Err(format!(
                "{wills} sessions with a delayed will, {} scheduled, {} pending",
                self.wills_due.len(),
                self.pending_wills.len()
            ));
        }
        if self.retained.indexed() != self.retained.len() {
            return Err(format!(
                "{} retained messages counted, {} topics indexed",
                self.retained.len(),
                self.retained.indexed()
            ));
        }
        if self.retained.all().len() != self.retained.len() {
            return Err(format!(
                "{} retained messages counted, {} held",
                self.retained.len(),
                self.retained.all().len()
            ));
        }
        Ok(())
    }

    /// What the store should hold now, in the form [`myriad_store::SessionStore::load`]
    /// returns it: every session that outlives its connection (expiry interval
    /// above 0) with its subscriptions, QoS 1/2 messages queued and in flight,
    /// inbound QoS 2 ids and delayed will, and every retained message.
    ///
    /// With recording on, the changes taken so far with
    /// [`Broker::take_changes`], applied in order to the snapshot the broker
    /// was restored from, load as this (up to order and time stamps, and
    /// retained messages that expired: those are dropped from memory when
    /// met and from the store at the next start).
    pub fn durable_state(&self) -> Snapshot {
        let clock = self.clock;
        let mut snapshot = Snapshot::default();
        for session in self.sessions.values() {
            if session.expiry_interval == 0 {
                continue;
            }
            let subscriptions = session
                .subscriptions
                .iter()
                .map(|(filter, entry)| SubscriptionRecord {
                    filter: filter.clone(),
                    options: entry.options,
                    id: entry.id,
                })
                .collect();
            let outbound = session.outbound();
            let mut flows: Vec<(u64, OutboundRecord)> = Vec::new();
            for flow in outbound.inflight() {
                let record = match &flow.state {
                    InflightState::Published(delivery) => OutboundRecord {
                        state: OutboundState::Published {
                            packet_id: flow.packet_id,
                        },
                        qos: delivery.qos,
                        retain: delivery.retain,
                        subscription_ids: delivery.subscription_ids.clone(),
                        message: Some(record_of(&delivery.message, clock)),
                    },
                    InflightState::Released => OutboundRecord {
                        state: OutboundState::Released {
                            packet_id: flow.packet_id,
                        },
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        subscription_ids: Vec::new(),
                        message: None,
                    },
                };
                flows.push((flow.seq, record));
            }
            for delivery in outbound.queue() {
                if delivery.qos == QoS::AtMostOnce {
                    continue;
                }
                flows.push((
                    delivery.seq,
                    OutboundRecord {
                        state: OutboundState::Queued,
                        qos: delivery.qos,
                        retain: delivery.retain,
                        subscription_ids: delivery.subscription_ids.clone(),
                        message: Some(record_of(&delivery.message, clock)),
                    },
                ));
            }
            flows.sort_by_key(|(seq, _)| *seq);
            let will = self.pending_wills.get(&session.id).map(|will| {
                let due = session.will_due().map_or(0, |at| clock.to_unix(at));
                let message = MessageRecord {
                    topic: will.topic.clone(),
                    payload: will.payload.clone(),
                    qos: will.qos,
                    retain: will.retain,
                    properties: will.properties.clone(),
                    expires_at: None,
                };
                (due, message)
            });
            snapshot.sessions.push(StoredSession {
                record: SessionRecord {
                    client_id: session.client_id.clone(),
                    expiry_interval: session.expiry_interval,
                    expires_at: session
                        .expires_at()
                        .map(|at| clock.to_unix(self.epoch.instant(at))),
                },
                subscriptions,
                outbound: flows,
                inbound_qos2: session.inbound_qos2().iter().collect(),
                will,
            });
        }
        snapshot.retained = (self.retained.all().iter())
            .map(|message| record_of(message, clock))
            .collect();
        snapshot
    }
}
