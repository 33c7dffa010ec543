//! Decoding of each packet type's variable header and payload.

use bytestring::ByteString;

use crate::codec::properties::read_properties;
use crate::codec::read::{Reader, malformed, protocol};
use crate::properties::PropertyContext;
use crate::topic::{parse_shared, valid_topic_filter, valid_topic_name};
use crate::{
    Auth, ConnAck, Connect, DecodeError, Disconnect, Packet, PacketProperties, PacketType,
    Properties, ProtocolVersion, Publish, PublishAck, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, SubscriptionOptions, SubscriptionRequest, UnsubAck, Unsubscribe, Will,
};

/// Checks the first byte of the fixed header and returns the packet type.
///
/// Runs before the rest of the packet has arrived, so that bad flags are
/// reported as early as possible.
pub(crate) fn check_first_byte(
    first: u8,
    version: ProtocolVersion,
) -> Result<PacketType, DecodeError> {
    let packet_type = PacketType::from_u8(first >> 4).ok_or(malformed("reserved packet type 0"))?;
    let flags = first & 0x0F;
    match packet_type {
        PacketType::Publish => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(malformed("PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(malformed("PUBLISH with QoS 0 and DUP set"));
            }
        }
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => {
            if flags != 0x02 {
                return Err(malformed("reserved fixed header flags must be 0010"));
            }
        }
        _ => {
            if flags != 0 {
                return Err(malformed("reserved fixed header flags must be 0000"));
            }
        }
    }
    if packet_type == PacketType::Auth && !version.is_v5() {
        return Err(DecodeError::UnexpectedPacket(PacketType::Auth));
    }
    Ok(packet_type)
}

/// Decodes the body of a packet whose first byte is `first`.
pub(crate) fn packet(
    packet_type: PacketType,
    first: u8,
    mut r: Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let r = &mut r;
    let packet = match packet_type {
        PacketType::Connect => Packet::Connect(Box::new(connect(r)?)),
        PacketType::ConnAck => Packet::ConnAck(connack(r, version)?),
        PacketType::Publish => Packet::Publish(publish(first, r, version)?),
        PacketType::PubAck => Packet::PubAck(publish_ack(packet_type, r, version)?),
        PacketType::PubRec => Packet::PubRec(publish_ack(packet_type, r, version)?),
        PacketType::PubRel => Packet::PubRel(publish_ack(packet_type, r, version)?),
        PacketType::PubComp => Packet::PubComp(publish_ack(packet_type, r, version)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe(r, version)?),
        PacketType::SubAck => Packet::SubAck(suback(r, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe(r, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsuback(r, version)?),
        PacketType::PingReq => {
            r.finish()?;
            Packet::PingReq
        }
        PacketType::PingResp => {
            r.finish()?;
            Packet::PingResp
        }
        PacketType::Disconnect => {
            let (reason_code, properties) = optional_reason(packet_type, r, version)?;
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        }
        PacketType::Auth => {
            let (reason_code, properties) = optional_reason(packet_type, r, version)?;
            check_auth_data(&properties)?;
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        }
    };
    r.finish()?;
    Ok(packet)
}

/// Reads the properties of a packet of type `packet_type` (5.0 only).
fn properties(
    packet_type: PacketType,
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<PacketProperties, DecodeError> {
    if version.is_v5() {
        read_properties(r, PropertyContext::Packet(packet_type))
    } else {
        Ok(PacketProperties::new())
    }
}

/// Parses a 5.0 reason code byte that must be defined for `packet_type`.
fn reason_code(byte: u8, packet_type: PacketType) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(byte)
        .filter(|code| code.allowed_in(packet_type))
        .ok_or(malformed("reason code not defined for this packet"))
}

/// Whether `s` holds a control character, U+0001 to U+001F or U+007F to
/// U+009F. The spec lets a receiver treat these as malformed (MQTT 5.0
/// section 1.5.4); Myriad does, as Mosquitto does, in topic names, topic
/// filters, client identifiers and user names (docs/conformance.md).
pub(crate) fn has_control_character(s: &str) -> bool {
    s.chars()
        .any(|c| matches!(c, '\u{1}'..='\u{1f}' | '\u{7f}'..='\u{9f}'))
}

/// Reads a string that may not hold control characters (see
/// [`has_control_character`]).
fn strict_string(r: &mut Reader, what: &'static str) -> Result<ByteString, DecodeError> {
    let s = r.string()?;
    if has_control_character(&s) {
        return Err(malformed(what));
    }
    Ok(s)
}

/// Reads a non-zero packet identifier.
fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(protocol("packet identifier 0")),
        id => Ok(id),
    }
}

/// Authentication Data without an Authentication Method is a protocol error.
fn check_auth_data(props: &Properties) -> Result<(), DecodeError> {
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(protocol(
            "authentication data without authentication method",
        ));
    }
    Ok(())
}

/// CONNECT: the protocol version comes from the packet itself.
fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT" | b"MQIsdp", _) => {
            return Err(DecodeError::UnsupportedProtocolVersion(
                "unsupported protocol level",
            ));
        }
        _ => {
            return Err(DecodeError::UnsupportedProtocolVersion(
                "unknown protocol name",
            ));
        }
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(malformed("CONNECT reserved flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(malformed("will QoS or will retain set without will flag"));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(malformed("will QoS 3"))?;
    if !protocol.is_v5() && password_flag && !username_flag {
        return Err(malformed("password flag without user name flag"));
    }
    let keep_alive = r.u16()?;
    let properties = properties(PacketType::Connect, r, protocol)?;
    check_auth_data(&properties)?;
    let client_id = strict_string(r, "control character in client identifier")?;
    let will = if will_flag {
        let properties = if protocol.is_v5() {
            read_properties(r, PropertyContext::Will)?
        } else {
            PacketProperties::new()
        };
        let topic = strict_string(r, "control character in will topic")?;
        if !valid_topic_name(&topic) {
            return Err(DecodeError::TopicNameInvalid("invalid will topic"));
        }
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(strict_string(r, "control character in user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// CONNACK.
fn connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(malformed("CONNACK reserved flags set"));
    }
    let code = r.u8()?;
    let reason_code = if version.is_v5() {
        reason_code(code, PacketType::ConnAck)?
    } else {
        ReasonCode::from_v311_connack(code).ok_or(malformed("unknown CONNACK return code"))?
    };
    let properties = properties(PacketType::ConnAck, r, version)?;
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        reason_code,
        properties,
    })
}

/// PUBLISH; the payload is a zero-copy slice of the input.
fn publish(first: u8, r: &mut Reader, version: ProtocolVersion) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((first >> 1) & 0x03).ok_or(malformed("PUBLISH with QoS 3"))?;
    let topic = strict_string(r, "control character in topic name")?;
    if topic.is_empty() {
        if !version.is_v5() {
            return Err(DecodeError::TopicNameInvalid("empty topic name"));
        }
    } else if !valid_topic_name(&topic) {
        return Err(DecodeError::TopicNameInvalid(
            "topic name contains a wildcard",
        ));
    }
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = properties(PacketType::Publish, r, version)?;
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(protocol("empty topic name without topic alias"));
    }
    Ok(Publish {
        dup: first & 0x08 != 0,
        qos,
        retain: first & 0x01 != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (with the 5.0 short forms).
fn publish_ack(
    packet_type: PacketType,
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<PublishAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let (reason_code, properties) = optional_reason(packet_type, r, version)?;
    Ok(PublishAck {
        packet_id,
        reason_code,
        properties,
    })
}

/// A reason code and properties that may both be omitted (5.0), or nothing (3.1.1).
fn optional_reason(
    packet_type: PacketType,
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<(ReasonCode, PacketProperties), DecodeError> {
    if !version.is_v5() || r.is_empty() {
        return Ok((ReasonCode::Success, PacketProperties::new()));
    }
    let code = reason_code(r.u8()?, packet_type)?;
    let properties = if r.is_empty() {
        PacketProperties::new()
    } else {
        read_properties(r, PropertyContext::Packet(packet_type))?
    };
    Ok((code, properties))
}

/// Reads and validates a topic filter.
fn topic_filter(r: &mut Reader, version: ProtocolVersion) -> Result<ByteString, DecodeError> {
    let filter = strict_string(r, "control character in topic filter")?;
    if !valid_topic_filter(&filter) {
        return Err(DecodeError::TopicFilterInvalid("invalid topic filter"));
    }
    if version.is_v5() && parse_shared(&filter).is_err() {
        return Err(DecodeError::TopicFilterInvalid(
            "invalid shared subscription filter",
        ));
    }
    Ok(filter)
}

/// Parses a subscription options byte.
fn subscription_options(
    byte: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if version.is_v5() { 0xC0 } else { 0xFC };
    if byte & reserved != 0 {
        return Err(malformed("subscription options reserved bits set"));
    }
    let qos = QoS::from_u8(byte & 0x03).ok_or(malformed("subscription QoS 3"))?;
    let retain_handling = match (byte >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(malformed("retain handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

/// SUBSCRIBE.
fn subscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(PacketType::Subscribe, r, version)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = topic_filter(r, version)?;
        let options = subscription_options(r.u8()?, version)?;
        if options.no_local && filter.starts_with("$share/") {
            return Err(protocol("no local on a shared subscription"));
        }
        filters.push(SubscriptionRequest { filter, options });
    }
    if filters.is_empty() {
        return Err(protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

/// SUBACK.
fn suback(r: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(PacketType::SubAck, r, version)?;
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let byte = r.u8()?;
        let code = if version.is_v5() {
            reason_code(byte, PacketType::SubAck)?
        } else {
            match byte {
                0 => ReasonCode::Success,
                1 => ReasonCode::GrantedQoS1,
                2 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                _ => return Err(malformed("unknown SUBACK return code")),
            }
        };
        reason_codes.push(code);
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

/// UNSUBSCRIBE.
fn unsubscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(PacketType::Unsubscribe, r, version)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(topic_filter(r, version)?);
    }
    if filters.is_empty() {
        return Err(protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

/// UNSUBACK (3.1.1: packet identifier only).
fn unsuback(r: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(PacketType::UnsubAck, r, version)?;
    let mut reason_codes = Vec::new();
    if version.is_v5() {
        reason_codes.reserve(r.remaining());
        while !r.is_empty() {
            reason_codes.push(reason_code(r.u8()?, PacketType::UnsubAck)?);
        }
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}
