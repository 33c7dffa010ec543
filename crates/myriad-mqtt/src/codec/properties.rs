//! Reading and writing the MQTT 5.0 property block.

use crate::codec::read::{Reader, malformed, protocol};
use crate::codec::write::{Counter, Sink};
use crate::properties::PropertyContext;
use crate::{
    DecodeError, EncodeError, MAX_VARIABLE_INT, PacketProperties, PacketType, Properties,
    PropertyId,
};

/// Reads a property length and the properties it covers, checking that each
/// property is known, allowed in `context`, not repeated and in range.
/// Nothing is allocated when the property length is 0.
pub(crate) fn read_properties(
    reader: &mut Reader,
    context: PropertyContext,
) -> Result<PacketProperties, DecodeError> {
    let len = reader.variable_int()?;
    if len == 0 {
        return Ok(PacketProperties::new());
    }
    let mut props = Properties::new();
    let len = usize::try_from(len).map_err(|_| malformed("property length too large"))?;
    let mut r = Reader::new(reader.take(len)?);
    let subscription_ids_repeat = context == PropertyContext::Packet(PacketType::Publish);
    let mut seen: u64 = 0;
    while !r.is_empty() {
        let raw = r.variable_int()?;
        let id = u8::try_from(raw)
            .ok()
            .and_then(PropertyId::from_u8)
            .ok_or(malformed("unknown property identifier"))?;
        // MQTT 5.0 section 2.2.2.2: an identifier not valid for the packet type is malformed.
        if !id.allowed_in(context) {
            return Err(malformed("property not allowed in this packet"));
        }
        let repeatable = id == PropertyId::UserProperty
            || (id == PropertyId::SubscriptionIdentifier && subscription_ids_repeat);
        let bit = 1u64 << (id as u8);
        if !repeatable && seen & bit != 0 {
            return Err(protocol("property included more than once"));
        }
        seen |= bit;
        read_one(id, &mut r, &mut props)?;
    }
    // Not empty: the block held at least one property.
    Ok(PacketProperties::from(props))
}

/// Reads a byte that must be 0 or 1.
fn read_bool(r: &mut Reader) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(protocol("boolean property is neither 0 nor 1")),
    }
}

/// Reads the value of one property into `props`.
fn read_one(id: PropertyId, r: &mut Reader, props: &mut Properties) -> Result<(), DecodeError> {
    use PropertyId::*;
    match id {
        PayloadFormatIndicator => props.payload_format_indicator = Some(read_bool(r)?),
        MessageExpiryInterval => props.message_expiry_interval = Some(r.u32()?),
        ContentType => props.content_type = Some(r.string()?),
        ResponseTopic => {
            let topic = r.string()?;
            if !crate::topic::valid_topic_name(&topic) {
                return Err(protocol("response topic is not a valid topic name"));
            }
            props.response_topic = Some(topic);
        }
        CorrelationData => props.correlation_data = Some(r.binary()?),
        SubscriptionIdentifier => {
            let value = r.variable_int()?;
            if value == 0 {
                return Err(protocol("subscription identifier 0"));
            }
            props.subscription_identifiers.push(value);
        }
        SessionExpiryInterval => props.session_expiry_interval = Some(r.u32()?),
        AssignedClientIdentifier => props.assigned_client_identifier = Some(r.string()?),
        ServerKeepAlive => props.server_keep_alive = Some(r.u16()?),
        AuthenticationMethod => props.authentication_method = Some(r.string()?),
        AuthenticationData => props.authentication_data = Some(r.binary()?),
        RequestProblemInformation => props.request_problem_information = Some(read_bool(r)?),
        WillDelayInterval => props.will_delay_interval = Some(r.u32()?),
        RequestResponseInformation => props.request_response_information = Some(read_bool(r)?),
        ResponseInformation => props.response_information = Some(r.string()?),
        ServerReference => props.server_reference = Some(r.string()?),
        ReasonString => props.reason_string = Some(r.string()?),
        ReceiveMaximum => {
            let value = r.u16()?;
            if value == 0 {
                return Err(protocol("receive maximum 0"));
            }
            props.receive_maximum = Some(value);
        }
        TopicAliasMaximum => props.topic_alias_maximum = Some(r.u16()?),
        TopicAlias => {
            let value = r.u16()?;
            if value == 0 {
                return Err(protocol("topic alias 0"));
            }
            props.topic_alias = Some(value);
        }
        MaximumQoS => {
            let value = r.u8()?;
            if value > 1 {
                return Err(protocol("maximum QoS is neither 0 nor 1"));
            }
            props.maximum_qos = Some(value);
        }
        RetainAvailable => props.retain_available = Some(read_bool(r)?),
        UserProperty => {
            let key = r.string()?;
            let value = r.string()?;
            props.user_properties.push((key, value));
        }
        MaximumPacketSize => {
            let value = r.u32()?;
            if value == 0 {
                return Err(protocol("maximum packet size 0"));
            }
            props.maximum_packet_size = Some(value);
        }
        WildcardSubscriptionAvailable => {
            props.wildcard_subscription_available = Some(read_bool(r)?);
        }
        SubscriptionIdentifierAvailable => {
            props.subscription_identifier_available = Some(read_bool(r)?);
        }
        SharedSubscriptionAvailable => {
            props.shared_subscription_available = Some(read_bool(r)?);
        }
    }
    Ok(())
}

/// Writes the property length followed by every property that is set; unset
/// properties are just a property length of 0.
pub(crate) fn write_properties<S: Sink>(
    props: &PacketProperties,
    sink: &mut S,
) -> Result<(), EncodeError> {
    match props.get() {
        Some(props) => write_block(props, sink),
        None => {
            sink.put_u8(0);
            Ok(())
        }
    }
}

/// Writes the property length followed by every property that is set.
fn write_block<S: Sink>(props: &Properties, sink: &mut S) -> Result<(), EncodeError> {
    let mut counter = Counter::default();
    write_content(props, &mut counter)?;
    let len = u32::try_from(counter.0)
        .ok()
        .filter(|len| *len <= MAX_VARIABLE_INT)
        .ok_or(EncodeError::PacketTooLarge)?;
    sink.put_variable_int(len, "property length")?;
    write_content(props, sink)
}

/// Writes an identifier byte.
fn id<S: Sink>(sink: &mut S, id: PropertyId) {
    sink.put_u8(id as u8);
}

/// Writes every property that is set, in field order, without the length.
fn write_content<S: Sink>(p: &Properties, s: &mut S) -> Result<(), EncodeError> {
    use PropertyId::*;
    if let Some(v) = p.payload_format_indicator {
        id(s, PayloadFormatIndicator);
        s.put_u8(u8::from(v));
    }
    if let Some(v) = p.message_expiry_interval {
        id(s, MessageExpiryInterval);
        s.put_u32(v);
    }
    if let Some(v) = &p.content_type {
        id(s, ContentType);
        s.put_str(v, "content type")?;
    }
    if let Some(v) = &p.response_topic {
        id(s, ResponseTopic);
        s.put_str(v, "response topic")?;
    }
    if let Some(v) = &p.correlation_data {
        id(s, CorrelationData);
        s.put_binary(v, "correlation data")?;
    }
    for &v in &p.subscription_identifiers {
        if v == 0 {
            return Err(EncodeError::InvalidValue("subscription identifier"));
        }
        id(s, SubscriptionIdentifier);
        s.put_variable_int(v, "subscription identifier")?;
    }
    if let Some(v) = p.session_expiry_interval {
        id(s, SessionExpiryInterval);
        s.put_u32(v);
    }
    if let Some(v) = &p.assigned_client_identifier {
        id(s, AssignedClientIdentifier);
        s.put_str(v, "assigned client identifier")?;
    }
    if let Some(v) = p.server_keep_alive {
        id(s, ServerKeepAlive);
        s.put_u16(v);
    }
    if let Some(v) = &p.authentication_method {
        id(s, AuthenticationMethod);
        s.put_str(v, "authentication method")?;
    }
    if let Some(v) = &p.authentication_data {
        id(s, AuthenticationData);
        s.put_binary(v, "authentication data")?;
    }
    if let Some(v) = p.request_problem_information {
        id(s, RequestProblemInformation);
        s.put_u8(u8::from(v));
    }
    if let Some(v) = p.will_delay_interval {
        id(s, WillDelayInterval);
        s.put_u32(v);
    }
    if let Some(v) = p.request_response_information {
        id(s, RequestResponseInformation);
        s.put_u8(u8::from(v));
    }
    if let Some(v) = &p.response_information {
        id(s, ResponseInformation);
        s.put_str(v, "response information")?;
    }
    if let Some(v) = &p.server_reference {
        id(s, ServerReference);
        s.put_str(v, "server reference")?;
    }
    if let Some(v) = &p.reason_string {
        id(s, ReasonString);
        s.put_str(v, "reason string")?;
    }
    if let Some(v) = p.receive_maximum {
        if v == 0 {
            return Err(EncodeError::InvalidValue("receive maximum"));
        }
        id(s, ReceiveMaximum);
        s.put_u16(v);
    }
    if let Some(v) = p.topic_alias_maximum {
        id(s, TopicAliasMaximum);
        s.put_u16(v);
    }
    if let Some(v) = p.topic_alias {
        if v == 0 {
            return Err(EncodeError::InvalidValue("topic alias"));
        }
        id(s, TopicAlias);
        s.put_u16(v);
    }
    if let Some(v) = p.maximum_qos {
        if v > 1 {
            return Err(EncodeError::InvalidValue("maximum QoS"));
        }
        id(s, MaximumQoS);
        s.put_u8(v);
    }
    if let Some(v) = p.retain_available {
        id(s, RetainAvailable);
        s.put_u8(u8::from(v));
    }
    for (key, value) in &p.user_properties {
        id(s, UserProperty);
        s.put_str(key, "user property name")?;
        s.put_str(value, "user property value")?;
    }
    if let Some(v) = p.maximum_packet_size {
        if v == 0 {
            return Err(EncodeError::InvalidValue("maximum packet size"));
        }
        id(s, MaximumPacketSize);
        s.put_u32(v);
    }
    if let Some(v) = p.wildcard_subscription_available {
        id(s, WildcardSubscriptionAvailable);
        s.put_u8(u8::from(v));
    }
    if let Some(v) = p.subscription_identifier_available {
        id(s, SubscriptionIdentifierAvailable);
        s.put_u8(u8::from(v));
    }
    if let Some(v) = p.shared_subscription_available {
        id(s, SharedSubscriptionAvailable);
        s.put_u8(u8::from(v));
    }
    Ok(())
}
