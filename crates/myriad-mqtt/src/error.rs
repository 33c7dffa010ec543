//! Decode and encode errors.

use crate::{PacketType, ReasonCode};

/// Why bytes could not be decoded into a packet.
///
/// Each variant knows the reason code a server sends before closing
/// ([`DecodeError::reason_code`]); a 3.1.1 server just closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The packet breaks the wire format (bad lengths, bad UTF-8, bad flags, truncated fields).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well formed but breaks a protocol rule.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The packet is larger than the receiver's maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Size of the whole packet in bytes.
        size: usize,
        /// The maximum that applies.
        max: usize,
    },
    /// CONNECT names a protocol or level this codec does not speak.
    #[error("unsupported protocol: {0}")]
    UnsupportedProtocolVersion(&'static str),
    /// A PUBLISH topic name is not valid (wildcards, U+0000).
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
    /// A SUBSCRIBE/UNSUBSCRIBE topic filter is not valid.
    #[error("invalid topic filter: {0}")]
    TopicFilterInvalid(&'static str),
    /// A packet of this type may not be received in this direction or version.
    #[error("unexpected packet type {0:?}")]
    UnexpectedPacket(PacketType),
}

impl DecodeError {
    /// The reason code for the CONNACK or DISCONNECT answering this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) | DecodeError::UnexpectedPacket(_) => {
                ReasonCode::ProtocolError
            }
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TopicNameInvalid,
            DecodeError::TopicFilterInvalid(_) => ReasonCode::TopicFilterInvalid,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes.
    #[error("field {0} is longer than 65535 bytes")]
    FieldTooLong(&'static str),
    /// The packet would be longer than the largest remaining length.
    #[error("packet too large to encode")]
    PacketTooLarge,
    /// A QoS 1/2 PUBLISH or an acknowledgement has packet identifier 0.
    #[error("packet identifier 0 where one is required")]
    ZeroPacketId,
    /// The packet type does not exist in the target version (AUTH on 3.1.1).
    #[error("packet type {0:?} does not exist in this protocol version")]
    UnsupportedInVersion(PacketType),
    /// A value is out of its range (a subscription identifier of 0, say).
    #[error("invalid value for {0}")]
    InvalidValue(&'static str),
}
