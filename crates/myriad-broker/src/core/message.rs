//! Application messages as the router carries them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use myriad_mqtt::{ByteString, PacketProperties, Publish, QoS};

use super::SessionId;

/// One application message on its way through the broker. Shared (`Arc`) by
/// every subscriber it is delivered to: fan-out never copies the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (never an alias).
    pub topic: ByteString,
    /// Body.
    pub payload: Bytes,
    /// QoS the publisher used.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// Properties to pass through (no topic alias, no subscription identifiers,
    /// no message expiry: that is kept as `expires_at`).
    pub properties: PacketProperties,
    /// When the message expires (5.0 Message Expiry Interval).
    pub expires_at: Option<Instant>,
    /// The session that published it, for No Local.
    pub publisher: Option<SessionId>,
}

impl Message {
    /// Builds the routed message from a received PUBLISH (topic already resolved).
    pub fn from_publish(publish: Publish, publisher: Option<SessionId>, now: Instant) -> Message {
        let mut properties = publish.properties;
        // Through `get_mut`: a publication without properties allocates none.
        let expiry_secs = properties.get_mut().and_then(|props| {
            props.topic_alias = None;
            props.subscription_identifiers.clear();
            props.message_expiry_interval.take()
        });
        // Copies of the message should not allocate for nothing left.
        properties.shrink();
        let expires_at = expiry_secs.map(|secs| now + Duration::from_secs(u64::from(secs)));
        Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at,
            publisher,
        }
    }

    /// Whether the message has expired at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Seconds of life left, rounded up, for the Message Expiry Interval sent on.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
        })
    }

    /// What one copy held for a subscriber counts against its session's
    /// byte budget (`mqtt.max_queued_bytes`): payload, topic and the encoded
    /// properties. The payload is shared by every subscriber, but each one
    /// that holds it keeps it alive, so each counts it.
    pub fn weight(&self) -> usize {
        self.payload.len() + self.topic.len() + myriad_mqtt::properties_len(&self.properties)
    }
}

/// A message as one subscriber gets it: QoS and retain flag decided by its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS for this subscriber: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions (5.0).
    pub subscription_ids: Vec<u32>,
    /// Position in the session's outbound order, given when the session takes
    /// it (0 until then); the key under which it is stored.
    pub seq: u64,
}

impl Delivery {
    /// The PUBLISH to send for this delivery, before topic aliasing.
    pub fn to_publish(&self, packet_id: u16, dup: bool, now: Instant) -> Publish {
        let message = &self.message;
        let mut properties = message.properties.clone();
        // Writes only what changes, so that a message without properties
        // delivered without expiry or identifiers allocates none.
        let expiry = message.remaining_expiry(now);
        if properties.message_expiry_interval != expiry {
            properties.message_expiry_interval = expiry;
        }
        if properties.subscription_identifiers != self.subscription_ids {
            properties
                .subscription_identifiers
                .clone_from(&self.subscription_ids);
        }
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: message.topic.clone(),
            packet_id,
            payload: message.payload.clone(),
            properties,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(properties: PacketProperties) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 1,
            payload: Bytes::from_static(b"x"),
            properties,
        }
    }

    fn delivery(message: Message, subscription_ids: Vec<u32>) -> Delivery {
        Delivery {
            message: Arc::new(message),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids,
            seq: 0,
        }
    }

    /// The fan-out path allocates no properties for messages that carry none
    /// once the per-hop ones (alias, identifiers, expiry) are taken off.
    #[test]
    fn no_properties_allocate_nothing() {
        let now = Instant::now();
        let mut hop_only = PacketProperties::new();
        hop_only.topic_alias = Some(2);
        hop_only.subscription_identifiers.push(5);
        for properties in [PacketProperties::new(), hop_only] {
            let message = Message::from_publish(publish(properties), None, now);
            assert!(message.properties.get().is_none());
            let out = delivery(message, Vec::new()).to_publish(1, false, now);
            assert!(out.properties.get().is_none());
        }
    }

    #[test]
    fn expiry_and_identifiers_are_set_per_delivery() {
        let now = Instant::now();
        let mut properties = PacketProperties::new();
        properties.message_expiry_interval = Some(60);
        properties.topic_alias = Some(2);
        let message = Message::from_publish(publish(properties), None, now);
        assert!(message.properties.get().is_none());
        assert_eq!(message.expires_at, Some(now + Duration::from_secs(60)));
        let out = delivery(message, vec![7]).to_publish(1, false, now);
        assert_eq!(out.properties.message_expiry_interval, Some(60));
        assert_eq!(out.properties.subscription_identifiers, vec![7]);
        assert_eq!(out.properties.topic_alias, None);
    }
}
