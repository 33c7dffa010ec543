//! SUBSCRIBE and UNSUBSCRIBE.

use std::time::Instant;

use myriad_mqtt::topic::{self, parse_shared};
use myriad_mqtt::{
    Packet, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

use super::message::Delivery;
use super::tree::Subscription;
use super::{Broker, ConnId};

/// Splits a stored filter into its share group (if any) and the filter proper.
/// The filter was validated when it was subscribed.
pub(super) fn split_filter(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Ok(Some(shared)) => (Some(shared.group), shared.filter),
        _ => (None, filter),
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

    pub(super) fn handle_subscribe(&mut self, now: Instant, conn: ConnId, subscribe: Subscribe) {
        let Some(session_id) = self.session_of(conn) else {
            return;
        };
        let Some(connection) = self.connection(conn) else {
            return;
        };
        let connection_acl = connection.acl.clone();
        let subscription_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for request in subscribe.filters {
            let (group, inner) = match parse_shared(&request.filter) {
                Ok(Some(shared)) => (Some(shared.group), shared.filter),
                Ok(None) => (None, &*request.filter),
                Err(_) => {
                    reason_codes.push(ReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            if group.is_some() && request.options.no_local {
                // MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error.
                self.disconnect_with(now, conn, ReasonCode::ProtocolError);
                return;
            }
            if self.is_denied(inner) {
                // The config deny list answers 0x80 in both versions, as
                // Mosquitto-era clients and the Eclipse Paho suite expect;
                // per-device ACLs answer 0x87 Not Authorized.
                reason_codes.push(ReasonCode::UnspecifiedError);
                continue;
            }
            if let Some(acl) = &connection_acl
                && !acl.may_subscribe(inner)
            {
                self.stats.subscriptions_denied += 1;
                // 0x87 in 5.0; a 3.1.1 SUBACK can only say 0x80 Failure.
                reason_codes.push(ReasonCode::NotAuthorized);
                continue;
            }
            let mut options = request.options;
            options.qos = options.qos.min(MAXIMUM_QOS);
            let subscription = Subscription {
                options,
                id: subscription_id,
            };
            let existed = self.tree.insert(inner, group, session_id, subscription);
            if let Some(session) = self.sessions.get_mut(session_id) {
                session
                    .subscriptions
                    .insert(request.filter.clone(), subscription);
            }
            self.record_subscription(session_id, &request.filter, Some(subscription));
            reason_codes.push(ReasonCode::granted(options.qos));
            let send_retained = group.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for message in self.retained.matching(inner, now) {
                    retained.push(Delivery {
                        qos: message.qos.min(options.qos),
                        message,
                        retain: true,
                        subscription_ids: subscription_id.into_iter().collect(),
                        seq: 0,
                    });
                }
            }
        }
        self.send(
            conn,
            Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                reason_codes,
                properties: Default::default(),
            }),
        );
        for delivery in retained {
            self.deliver(now, session_id, delivery);
        }
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
