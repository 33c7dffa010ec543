//! SUBSCRIBE and UNSUBSCRIBE.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Instant;

use myriad_mqtt::topic::{self, parse_shared};
use myriad_mqtt::{
    Packet, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionRequest, UnsubAck,
    Unsubscribe,
};

use super::message::{Delivery, Message};
use super::tree::Subscription;
use super::{Broker, ConnId, SessionId, detach, limits};
use crate::hooks::Acl;

/// Splits a stored filter into its share group (if any) and the filter proper.
/// The filter was validated when it was subscribed.
pub(super) fn split_filter(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Ok(Some(shared)) => (Some(shared.group), shared.filter),
        _ => (None, filter),
    }
}

/// For each filter of a SUBSCRIBE, the index of the last request with the same filter.
fn last_occurrences(filters: &[SubscriptionRequest]) -> Vec<usize> {
    if filters.len() < 2 {
        return (0..filters.len()).collect();
    }
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(filters.len());
    for (index, request) in filters.iter().enumerate() {
        last.insert(&request.filter, index);
    }
    filters
        .iter()
        .map(|request| last[&*request.filter])
        .collect()
}

/// The retained messages one SUBSCRIBE sends, each once: a message matched
/// by several of its filters is sent at the highest QoS they grant.
#[derive(Default)]
struct RetainedBatch {
    deliveries: Vec<Delivery>,
    /// Index in `deliveries` by message (the store's `Arc`s are unique per message).
    index: HashMap<*const Message, usize>,
}

impl RetainedBatch {
    fn add(&mut self, message: Arc<Message>, granted: QoS, subscription_id: Option<u32>) {
        let qos = message.qos.min(granted);
        match self.index.entry(Arc::as_ptr(&message)) {
            Entry::Occupied(entry) => {
                let delivery = &mut self.deliveries[*entry.get()];
                delivery.qos = delivery.qos.max(qos);
            }
            Entry::Vacant(entry) => {
                entry.insert(self.deliveries.len());
                self.deliveries.push(Delivery {
                    qos,
                    message,
                    retain: true,
                    subscription_ids: subscription_id.into_iter().collect(),
                    seq: 0,
                });
            }
        }
    }
}

/// The highest QoS this broker grants.
const MAXIMUM_QOS: QoS = QoS::ExactlyOnce;

impl Broker {
    /// A subscription is refused when every topic its filter matches is denied.
    /// A wider filter (`#`) is granted, and messages on denied topics are
    /// withheld at delivery instead ([`Broker::is_topic_denied`]), the way a
    /// read ACL works in Mosquitto.
    fn is_denied(&self, filter: &str) -> bool {
        self.config
            .deny_subscribe
            .iter()
            .any(|denied| topic::filter_covers(denied, filter))
    }

    /// Whether messages on `topic` are withheld from every subscriber.
    pub(super) fn is_topic_denied(&self, topic_name: &str) -> bool {
        self.config
            .deny_subscribe
            .iter()
            .any(|denied| topic::matches(denied, topic_name))
    }

    /// Subscribes to every filter of `subscribe` and answers SUBACK, then
    /// sends the retained messages the new subscriptions ask for.
    ///
    /// A filter given more than once counts once, the last time (its
    /// options win), and every copy gets that reason code; a retained
    /// message matched by several filters is sent once, at the highest QoS
    /// granted. So one SUBSCRIBE sends each retained message at most once,
    /// however it repeats itself.
    pub(super) fn handle_subscribe(&mut self, now: Instant, conn: ConnId, subscribe: Subscribe) {
        let Some(session_id) = self.session_of(conn) else {
            return;
        };
        let Some(connection) = self.connection(conn) else {
            return;
        };
        let acl = connection.acl.clone();
        // MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error.
        if subscribe.filters.iter().any(|request| {
            request.options.no_local && matches!(parse_shared(&request.filter), Ok(Some(_)))
        }) {
            self.disconnect_with(now, conn, ReasonCode::ProtocolError);
            return;
        }
        let subscription_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let last = last_occurrences(&subscribe.filters);
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = RetainedBatch::default();
        for (index, request) in subscribe.filters.iter().enumerate() {
            let code = if last[index] == index {
                self.subscribe_one(
                    now,
                    session_id,
                    request,
                    subscription_id,
                    acl.as_ref(),
                    &mut retained,
                )
            } else {
                // Answered below with the code of its last copy.
                ReasonCode::Success
            };
            reason_codes.push(code);
        }
        for (index, &last) in last.iter().enumerate() {
            reason_codes[index] = reason_codes[last];
        }
        self.send(
            conn,
            Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                reason_codes,
                properties: Default::default(),
            }),
        );
        if !retained.deliveries.is_empty() {
            self.deliver_retained(now, session_id, retained.deliveries);
        }
    }

    /// Subscribes `session_id` to one filter; returns its SUBACK reason code.
    /// Retained messages to send are added to `retained`.
    fn subscribe_one(
        &mut self,
        now: Instant,
        session_id: SessionId,
        request: &SubscriptionRequest,
        subscription_id: Option<u32>,
        acl: Option<&Arc<dyn Acl>>,
        retained: &mut RetainedBatch,
    ) -> ReasonCode {
        let (group, inner) = match parse_shared(&request.filter) {
            Ok(Some(shared)) => (Some(shared.group), shared.filter),
            Ok(None) => (None, &*request.filter),
            Err(_) => return ReasonCode::TopicFilterInvalid,
        };
        if !limits::filter_fits(&self.config, &request.filter) {
            // 0x8F in 5.0; a 3.1.1 SUBACK says 0x80 Failure.
            return ReasonCode::TopicFilterInvalid;
        }
        if self.is_denied(inner) {
            // The config deny list answers 0x80 in both versions, as
            // Mosquitto-era clients and the Eclipse Paho suite expect;
            // per-device ACLs answer 0x87 Not Authorized.
            return ReasonCode::UnspecifiedError;
        }
        if let Some(acl) = acl
            && !acl.may_subscribe(inner)
        {
            self.stats.subscriptions_denied += 1;
            // 0x87 in 5.0; a 3.1.1 SUBACK can only say 0x80 Failure.
            return ReasonCode::NotAuthorized;
        }
        let Some(session) = self.sessions.get(session_id) else {
            return ReasonCode::UnspecifiedError;
        };
        if !session.subscriptions.contains_key(&*request.filter)
            && session.subscriptions.len() >= self.config.max_subscriptions_per_client
        {
            // 0x97 in 5.0; a 3.1.1 SUBACK says 0x80 Failure.
            return ReasonCode::QuotaExceeded;
        }
        let mut options = request.options;
        options.qos = options.qos.min(MAXIMUM_QOS);
        let subscription = Subscription {
            options,
            id: subscription_id,
        };
        let existed = self.tree.insert(inner, group, session_id, subscription);
        if let Some(session) = self.sessions.get_mut(session_id) {
            match session.subscriptions.get_mut(&*request.filter) {
                Some(kept) => *kept = subscription,
                // A copy: the packet's filter would pin its whole buffer.
                None => {
                    session
                        .subscriptions
                        .insert(detach::string(&request.filter), subscription);
                }
            }
        }
        self.record_subscription(session_id, &request.filter, Some(subscription));
        let send_retained = group.is_none()
            && match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
        if send_retained {
            let filtered = acl.filter(|a| a.filters_deliveries());
            for message in self.retained.matching(inner, now) {
                if filtered.is_some_and(|a| !a.may_receive(&message.topic)) {
                    continue;
                }
                retained.add(message, options.qos, subscription_id);
            }
        }
        ReasonCode::granted(options.qos)
    }

    pub(super) fn handle_unsubscribe(&mut self, conn: ConnId, unsubscribe: Unsubscribe) {
        let Some(session_id) = self.session_of(conn) else {
            return;
        };
        let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let (group, inner) = split_filter(filter);
            let removed = self.tree.remove(inner, group, session_id);
            if let Some(session) = self.sessions.get_mut(session_id) {
                session.subscriptions.remove(filter);
            }
            if removed {
                self.record_subscription(session_id, filter, None);
            }
            reason_codes.push(if removed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        self.send(
            conn,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                reason_codes,
                properties: Default::default(),
            }),
        );
    }
}
