//! The records a store keeps, and the changes that modify them.

use bytes::Bytes;
use myriad_mqtt::{ByteString, PacketProperties, QoS, SubscriptionOptions};

/// Milliseconds since the Unix epoch (wall-clock: stored times must survive restarts).
pub type UnixMillis = u64;

/// An application message as stored (retained, queued or in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Topic name.
    pub topic: ByteString,
    /// Body.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// Properties passed through (no alias, no subscription ids, no expiry interval).
    pub properties: PacketProperties,
    /// When it expires, if it does.
    pub expires_at: Option<UnixMillis>,
}

/// A session's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Client identifier (the key).
    pub client_id: ByteString,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// When the session expires, if it is disconnected and expires at all.
    pub expires_at: Option<UnixMillis>,
}

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The full filter, with any `$share/{group}/` prefix.
    pub filter: ByteString,
    /// Options granted.
    pub options: SubscriptionOptions,
    /// Subscription identifier, if any.
    pub id: Option<u32>,
}

/// Where an outbound message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundState {
    /// Waiting to be sent.
    Queued,
    /// PUBLISH sent with this packet id, not yet acknowledged.
    Published {
        /// Packet identifier used.
        packet_id: u16,
    },
    /// QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    Released {
        /// Packet identifier used.
        packet_id: u16,
    },
}

/// One message on its way to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRecord {
    /// Where it stands.
    pub state: OutboundState,
    /// QoS for this subscriber.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers to send.
    pub subscription_ids: Vec<u32>,
    /// The message (absent once released: only the packet id matters then).
    pub message: Option<MessageRecord>,
}

/// One change to stored state. Changes naming a session come after its
/// [`Change::PutSession`] and are removed with it by [`Change::DeleteSession`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Creates or updates a session's record.
    PutSession(SessionRecord),
    /// Removes a session and everything it holds.
    DeleteSession {
        /// Client identifier.
        client_id: ByteString,
    },
    /// Adds or replaces a subscription.
    PutSubscription {
        /// Client identifier.
        client_id: ByteString,
        /// The subscription.
        subscription: SubscriptionRecord,
    },
    /// Removes a subscription.
    DeleteSubscription {
        /// Client identifier.
        client_id: ByteString,
        /// The full filter.
        filter: ByteString,
    },
    /// Adds or updates an outbound message, ordered by `seq` within the session.
    PutOutbound {
        /// Client identifier.
        client_id: ByteString,
        /// Position in the session's outbound order.
        seq: u64,
        /// The message and its state.
        record: OutboundRecord,
    },
    /// Removes an outbound message (acknowledged, dropped or expired).
    DeleteOutbound {
        /// Client identifier.
        client_id: ByteString,
        /// Position in the session's outbound order.
        seq: u64,
    },
    /// Records an inbound QoS 2 packet id awaiting PUBREL.
    PutInboundQos2 {
        /// Client identifier.
        client_id: ByteString,
        /// Packet identifier.
        packet_id: u16,
    },
    /// Forgets an inbound QoS 2 packet id (PUBREL received).
    DeleteInboundQos2 {
        /// Client identifier.
        client_id: ByteString,
        /// Packet identifier.
        packet_id: u16,
    },
    /// Schedules a session's delayed will.
    PutWill {
        /// Client identifier.
        client_id: ByteString,
        /// When it is due.
        due_at: UnixMillis,
        /// The will as a message.
        message: MessageRecord,
    },
    /// Cancels a session's delayed will (published or no longer due).
    DeleteWill {
        /// Client identifier.
        client_id: ByteString,
    },
    /// Sets the retained message of its topic.
    PutRetained(MessageRecord),
    /// Clears the retained message of a topic.
    DeleteRetained {
        /// Topic name.
        topic: ByteString,
    },
}

impl Change {
    /// The session this change needs to exist already: every change that
    /// names a session except the ones creating or deleting it.
    pub fn needed_session(&self) -> Option<&ByteString> {
        match self {
            Change::PutSubscription { client_id, .. }
            | Change::DeleteSubscription { client_id, .. }
            | Change::PutOutbound { client_id, .. }
            | Change::DeleteOutbound { client_id, .. }
            | Change::PutInboundQos2 { client_id, .. }
            | Change::DeleteInboundQos2 { client_id, .. }
            | Change::PutWill { client_id, .. }
            | Change::DeleteWill { client_id } => Some(client_id),
            Change::PutSession(_)
            | Change::DeleteSession { .. }
            | Change::PutRetained(_)
            | Change::DeleteRetained { .. } => None,
        }
    }
}

/// One session as loaded at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Its record.
    pub record: SessionRecord,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Its outbound messages in `seq` order.
    pub outbound: Vec<(u64, OutboundRecord)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// Its pending delayed will: when due, and the message.
    pub will: Option<(UnixMillis, MessageRecord)>,
}

/// Everything a store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every stored session.
    pub sessions: Vec<StoredSession>,
    /// Every retained message.
    pub retained: Vec<MessageRecord>,
}
