//! Encoding of each packet type's variable header and payload.

use crate::codec::properties::write_properties;
use crate::codec::write::Sink;
use crate::{
    Auth, ConnAck, Connect, Disconnect, EncodeError, Packet, PacketProperties, PacketType,
    ProtocolVersion, Publish, PublishAck, QoS, ReasonCode, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};

/// The first byte of the fixed header: packet type and flags.
pub(crate) fn first_byte(packet: &Packet) -> u8 {
    let packet_type = packet.packet_type();
    let flags = match packet {
        Packet::Publish(publish) => {
            (u8::from(publish.dup) << 3) | ((publish.qos as u8) << 1) | u8::from(publish.retain)
        }
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0x02,
        _ => 0,
    };
    ((packet_type as u8) << 4) | flags
}

/// The first byte of a PUBLISH's fixed header.
pub(crate) fn first_byte_of_publish(publish: &Publish) -> u8 {
    ((PacketType::Publish as u8) << 4)
        | (u8::from(publish.dup) << 3)
        | ((publish.qos as u8) << 1)
        | u8::from(publish.retain)
}

/// Writes the variable header and payload of `packet`, validating it.
pub(crate) fn body<S: Sink>(
    packet: &Packet,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(connect) => write_connect(connect, s),
        Packet::ConnAck(connack) => write_connack(connack, version, s),
        Packet::Publish(publish) => write_publish(publish, version, s),
        Packet::PubAck(ack) => write_publish_ack(PacketType::PubAck, ack, version, s),
        Packet::PubRec(ack) => write_publish_ack(PacketType::PubRec, ack, version, s),
        Packet::PubRel(ack) => write_publish_ack(PacketType::PubRel, ack, version, s),
        Packet::PubComp(ack) => write_publish_ack(PacketType::PubComp, ack, version, s),
        Packet::Subscribe(subscribe) => write_subscribe(subscribe, version, s),
        Packet::SubAck(suback) => write_suback(suback, version, s),
        Packet::Unsubscribe(unsubscribe) => write_unsubscribe(unsubscribe, version, s),
        Packet::UnsubAck(unsuback) => write_unsuback(unsuback, version, s),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(Disconnect {
            reason_code,
            properties,
        }) => {
            if version.is_v5() {
                write_optional_reason(PacketType::Disconnect, *reason_code, properties, true, s)
            } else {
                Ok(())
            }
        }
        Packet::Auth(Auth {
            reason_code,
            properties,
        }) => {
            if version.is_v5() {
                write_optional_reason(PacketType::Auth, *reason_code, properties, false, s)
            } else {
                Err(EncodeError::UnsupportedInVersion(PacketType::Auth))
            }
        }
    }
}

/// Writes a packet's properties on 5.0; nothing on 3.1.1.
fn write_props<S: Sink>(
    props: &PacketProperties,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    if version.is_v5() {
        write_properties(props, s)
    } else {
        Ok(())
    }
}

/// Writes a 5.0 reason code defined for `packet_type`.
fn write_reason<S: Sink>(
    code: ReasonCode,
    packet_type: PacketType,
    s: &mut S,
) -> Result<(), EncodeError> {
    if !code.allowed_in(packet_type) {
        return Err(EncodeError::InvalidValue("reason code"));
    }
    s.put_u8(code.as_u8());
    Ok(())
}

/// Writes a packet identifier, which must not be 0.
fn write_packet_id<S: Sink>(id: u16, s: &mut S) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::ZeroPacketId);
    }
    s.put_u16(id);
    Ok(())
}

/// CONNECT, in the version it names itself.
fn write_connect<S: Sink>(c: &Connect, s: &mut S) -> Result<(), EncodeError> {
    let version = c.protocol;
    if !version.is_v5() && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::InvalidValue("password without user name"));
    }
    s.put_str(version.protocol_name(), "protocol name")?;
    s.put_u8(version.level());
    let mut flags = (u8::from(c.username.is_some()) << 7)
        | (u8::from(c.password.is_some()) << 6)
        | (u8::from(c.clean_start) << 1);
    if let Some(will) = &c.will {
        flags |= (u8::from(will.retain) << 5) | ((will.qos as u8) << 3) | 0x04;
    }
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    write_props(&c.properties, version, s)?;
    s.put_str(&c.client_id, "client identifier")?;
    if let Some(will) = &c.will {
        write_props(&will.properties, version, s)?;
        s.put_str(&will.topic, "will topic")?;
        s.put_binary(&will.payload, "will payload")?;
    }
    if let Some(username) = &c.username {
        s.put_str(username, "user name")?;
    }
    if let Some(password) = &c.password {
        s.put_binary(password, "password")?;
    }
    Ok(())
}

/// CONNACK.
fn write_connack<S: Sink>(
    c: &ConnAck,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    // 3.1 has no session present flag: the byte is reserved (as Mosquitto, 0).
    s.put_u8(u8::from(
        c.session_present && version != ProtocolVersion::V31,
    ));
    if version.is_v5() {
        write_reason(c.reason_code, PacketType::ConnAck, s)?;
    } else {
        s.put_u8(c.reason_code.to_v311_connack());
    }
    write_props(&c.properties, version, s)
}

/// PUBLISH.
fn write_publish<S: Sink>(
    p: &Publish,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    write_publish_header(p, version, s)?;
    s.put_slice(&p.payload);
    Ok(())
}

/// Writes the variable header of a PUBLISH (topic, packet id, properties):
/// everything of its body but the payload.
pub(crate) fn write_publish_header<S: Sink>(
    p: &Publish,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    if p.qos == QoS::AtMostOnce && p.dup {
        return Err(EncodeError::InvalidValue("DUP on a QoS 0 PUBLISH"));
    }
    s.put_str(&p.topic, "topic name")?;
    if p.qos != QoS::AtMostOnce {
        write_packet_id(p.packet_id, s)?;
    }
    write_props(&p.properties, version, s)
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP; the 5.0 short forms when possible.
fn write_publish_ack<S: Sink>(
    packet_type: PacketType,
    ack: &PublishAck,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    write_packet_id(ack.packet_id, s)?;
    if version.is_v5() {
        write_optional_reason(packet_type, ack.reason_code, &ack.properties, true, s)?;
    }
    Ok(())
}

/// A 5.0 reason code and properties, omitting what may be omitted: both
/// when Success without properties, the property length when there are no
/// properties and `short_reason` allows a reason-only form.
fn write_optional_reason<S: Sink>(
    packet_type: PacketType,
    code: ReasonCode,
    properties: &PacketProperties,
    short_reason: bool,
    s: &mut S,
) -> Result<(), EncodeError> {
    let no_properties = properties.is_empty();
    if code == ReasonCode::Success && no_properties {
        return Ok(());
    }
    write_reason(code, packet_type, s)?;
    if no_properties && short_reason {
        return Ok(());
    }
    write_properties(properties, s)
}

/// SUBSCRIBE.
fn write_subscribe<S: Sink>(
    sub: &Subscribe,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    write_packet_id(sub.packet_id, s)?;
    if sub.filters.is_empty() {
        return Err(EncodeError::InvalidValue("SUBSCRIBE without topic filters"));
    }
    write_props(&sub.properties, version, s)?;
    for request in &sub.filters {
        s.put_str(&request.filter, "topic filter")?;
        let o = &request.options;
        let mut byte = o.qos as u8;
        if version.is_v5() {
            byte |= (u8::from(o.no_local) << 2)
                | (u8::from(o.retain_as_published) << 3)
                | ((o.retain_handling as u8) << 4);
        }
        s.put_u8(byte);
    }
    Ok(())
}

/// SUBACK; on 3.1.1 every failure becomes 0x80.
fn write_suback<S: Sink>(
    ack: &SubAck,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    write_packet_id(ack.packet_id, s)?;
    write_props(&ack.properties, version, s)?;
    for &code in &ack.reason_codes {
        if version.is_v5() {
            write_reason(code, PacketType::SubAck, s)?;
        } else {
            s.put_u8(match code {
                ReasonCode::Success => 0,
                ReasonCode::GrantedQoS1 => 1,
                ReasonCode::GrantedQoS2 => 2,
                code if code.is_error() => 0x80,
                _ => return Err(EncodeError::InvalidValue("SUBACK return code")),
            });
        }
    }
    Ok(())
}

/// UNSUBSCRIBE.
fn write_unsubscribe<S: Sink>(
    unsub: &Unsubscribe,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    write_packet_id(unsub.packet_id, s)?;
    if unsub.filters.is_empty() {
        return Err(EncodeError::InvalidValue(
            "UNSUBSCRIBE without topic filters",
        ));
    }
    write_props(&unsub.properties, version, s)?;
    for filter in &unsub.filters {
        s.put_str(filter, "topic filter")?;
    }
    Ok(())
}

/// UNSUBACK; 3.1.1 carries only the packet identifier.
fn write_unsuback<S: Sink>(
    ack: &UnsubAck,
    version: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    write_packet_id(ack.packet_id, s)?;
    if version.is_v5() {
        write_properties(&ack.properties, s)?;
        for &code in &ack.reason_codes {
            write_reason(code, PacketType::UnsubAck, s)?;
        }
    }
    Ok(())
}
