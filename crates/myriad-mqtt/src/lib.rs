//! Sans-IO MQTT 3.1.1 and 5.0 codec.
//!
//! This crate knows the wire format and nothing else: no sockets, no tasks,
//! no clocks. It turns bytes into [`Packet`]s and back, and rejects every
//! malformed input the specifications list with an error that names the
//! reason code a server must answer with ([`DecodeError::reason_code`]).
//!
//! ```
//! use bytes::BytesMut;
//! use myriad_mqtt::{decode, encode, Packet, ProtocolVersion};
//!
//! let mut wire = BytesMut::new();
//! encode(&Packet::PingReq, ProtocolVersion::V5, &mut wire).unwrap();
//! let packet = decode(&mut wire, ProtocolVersion::V5, 1024).unwrap();
//! assert_eq!(packet, Some(Packet::PingReq));
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod codec;
mod error;
mod packet;
mod properties;
mod reason;
pub mod topic;
mod types;

pub use bytestring::ByteString;
pub use codec::{
    decode, encode, encode_publish_header, encoded_len, properties_len, variable_int_len,
};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, Publish, PublishAck, SubAck, Subscribe,
    SubscriptionRequest, UnsubAck, Unsubscribe, Will,
};
pub use properties::{PacketProperties, Properties, PropertyContext, PropertyId};
pub use reason::ReasonCode;
pub use types::{ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};

/// The largest value a Variable Byte Integer can carry (268,435,455).
pub const MAX_VARIABLE_INT: u32 = 268_435_455;
