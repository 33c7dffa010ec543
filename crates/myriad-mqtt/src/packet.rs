//! The MQTT control packets.

use bytes::Bytes;
use bytestring::ByteString;

use crate::{PacketProperties, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};

/// The fifteen control packet types (the high nibble of the fixed header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    /// 5.0 only.
    Auth = 15,
}

impl PacketType {
    /// Parses the packet type nibble; `None` for the reserved 0 value.
    pub fn from_u8(value: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match value {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client request to connect.
    Connect(Box<Connect>),
    /// Connect acknowledgement.
    ConnAck(ConnAck),
    /// Application message.
    Publish(Publish),
    /// QoS 1 acknowledgement.
    PubAck(PublishAck),
    /// QoS 2 step 1: publish received.
    PubRec(PublishAck),
    /// QoS 2 step 2: publish release.
    PubRel(PublishAck),
    /// QoS 2 step 3: publish complete.
    PubComp(PublishAck),
    /// Subscribe request.
    Subscribe(Subscribe),
    /// Subscribe acknowledgement.
    SubAck(SubAck),
    /// Unsubscribe request.
    Unsubscribe(Unsubscribe),
    /// Unsubscribe acknowledgement.
    UnsubAck(UnsubAck),
    /// Ping request.
    PingReq,
    /// Ping response.
    PingResp,
    /// Disconnect notification (either direction in 5.0).
    Disconnect(Disconnect),
    /// Authentication exchange (5.0).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT: the first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level the client speaks.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: ByteString,
    /// The will message, if any.
    pub will: Option<Will>,
    /// User name, if any.
    pub username: Option<ByteString>,
    /// Password, if any.
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0).
    pub properties: PacketProperties,
}

/// The will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic to publish the will to.
    pub topic: ByteString,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will publication.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
    /// Will properties (5.0).
    pub properties: PacketProperties,
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// Result; on 3.1.1 mapped to the nearest return code.
    pub reason_code: ReasonCode,
    /// CONNACK properties (5.0).
    pub properties: PacketProperties,
}

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery flag.
    pub dup: bool,
    /// Quality of service.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name; empty when a 5.0 topic alias stands for it.
    pub topic: ByteString,
    /// Packet identifier; 0 for QoS 0.
    pub packet_id: u16,
    /// Message body.
    pub payload: Bytes,
    /// PUBLISH properties (5.0).
    pub properties: PacketProperties,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// Packet identifier of the flow.
    pub packet_id: u16,
    /// Result (5.0); Success on 3.1.1.
    pub reason_code: ReasonCode,
    /// Properties (5.0): reason string and user properties.
    pub properties: PacketProperties,
}

impl PublishAck {
    /// A successful acknowledgement without properties.
    pub fn success(packet_id: u16) -> PublishAck {
        PublishAck {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: PacketProperties::new(),
        }
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    /// Topic filter, possibly with wildcards or a `$share/{group}/` prefix.
    pub filter: ByteString,
    /// Subscription options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<SubscriptionRequest>,
    /// Properties (5.0): subscription identifier and user properties.
    pub properties: PacketProperties,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// One code per filter, in order (3.1.1: 0, 1, 2 or 0x80).
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (5.0).
    pub properties: PacketProperties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<ByteString>,
    /// Properties (5.0): user properties.
    pub properties: PacketProperties,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// One code per filter (5.0); empty on 3.1.1.
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (5.0).
    pub properties: PacketProperties,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason (5.0); Success (normal disconnection) on 3.1.1.
    pub reason_code: ReasonCode,
    /// Properties (5.0).
    pub properties: PacketProperties,
}

impl Disconnect {
    /// A DISCONNECT with the given reason and no properties.
    pub fn new(reason_code: ReasonCode) -> Disconnect {
        Disconnect {
            reason_code,
            properties: PacketProperties::new(),
        }
    }
}

/// AUTH (5.0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties: authentication method and data, reason string, user properties.
    pub properties: PacketProperties,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PacketProperties;

    /// Packets are moved through channels and queues on every delivery: keep
    /// them small. Properties live out of line ([`PacketProperties`]) for this.
    #[test]
    fn packets_stay_small() {
        assert!(size_of::<PacketProperties>() <= 8);
        assert!(
            size_of::<Publish>() <= 80,
            "Publish is {}",
            size_of::<Publish>()
        );
        assert!(
            size_of::<Packet>() <= 80,
            "Packet is {}",
            size_of::<Packet>()
        );
    }
}
