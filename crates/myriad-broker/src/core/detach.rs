//! Copies of what the broker keeps from a packet, in allocations of their own.
//!
//! A decoded packet's strings and payload are slices of the buffer the
//! connection read (`Bytes`), and that buffer may hold the whole packet and
//! others read with it. Anything kept past the packet's handling (a topic
//! alias, a subscription filter, a will, a retained message) would pin the
//! whole buffer: 64 aliases set by 1 MB packets kept 64 MB per connection.
//! What is kept is copied out with these functions; what only passes
//! through (a message routed at once) is not.

use bytes::Bytes;
use myriad_mqtt::{ByteString, PacketProperties, Will};

use super::message::Message;

/// A copy of `text` sharing nothing with the packet it came from.
pub(crate) fn string(text: &ByteString) -> ByteString {
    super::connect::detached(text)
}

/// A copy of `bytes` sharing nothing with the packet it came from.
pub(crate) fn bytes(bytes: &Bytes) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

/// A copy of `properties` whose strings and binary data are copies too.
pub(crate) fn properties(properties: &PacketProperties) -> PacketProperties {
    let Some(props) = properties.get() else {
        return PacketProperties::new();
    };
    let mut copy = PacketProperties::new();
    let out = &mut *copy;
    out.clone_from(props);
    let strings = [
        &mut out.content_type,
        &mut out.response_topic,
        &mut out.assigned_client_identifier,
        &mut out.authentication_method,
        &mut out.response_information,
        &mut out.server_reference,
        &mut out.reason_string,
    ];
    for text in strings.into_iter().flatten() {
        *text = string(text);
    }
    for data in [&mut out.correlation_data, &mut out.authentication_data]
        .into_iter()
        .flatten()
    {
        *data = bytes(data);
    }
    for (name, value) in &mut out.user_properties {
        *name = string(name);
        *value = string(value);
    }
    copy
}

/// A will that shares nothing with its CONNECT.
pub(crate) fn will(will: Will) -> Will {
    Will {
        topic: string(&will.topic),
        payload: bytes(&will.payload),
        qos: will.qos,
        retain: will.retain,
        properties: properties(&will.properties),
    }
}

/// A message that shares nothing with the PUBLISH it came from.
pub(crate) fn message(message: &Message) -> Message {
    Message {
        topic: string(&message.topic),
        payload: bytes(&message.payload),
        qos: message.qos,
        retain: message.retain,
        properties: properties(&message.properties),
        expires_at: message.expires_at,
        publisher: message.publisher,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myriad_mqtt::QoS;

    /// Whether `slice` lies inside `buffer`'s memory.
    fn inside(buffer: &Bytes, slice: &[u8]) -> bool {
        let range = buffer.as_ptr_range();
        slice.is_empty() || range.contains(&slice.as_ptr())
    }

    #[test]
    fn copies_share_nothing_with_the_packet() {
        let packet = Bytes::from(b"topic/aux:payloadctcorrkeyvalue".to_vec());
        let text = |range: std::ops::Range<usize>| {
            ByteString::try_from(packet.slice(range)).expect("UTF-8")
        };
        let mut props = PacketProperties::new();
        props.content_type = Some(text(17..19));
        props.correlation_data = Some(packet.slice(19..23));
        props.user_properties.push((text(23..26), text(26..31)));
        let original = Will {
            topic: text(0..9),
            payload: packet.slice(10..17),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: props,
        };
        let copy = will(original.clone());
        assert_eq!(copy, original);
        let props = copy.properties.get().expect("properties kept");
        let (name, value) = &props.user_properties[0];
        let content_type = props.content_type.as_deref().unwrap_or_default();
        for kept in [
            str::as_bytes(&copy.topic),
            &copy.payload[..],
            content_type.as_bytes(),
            props.correlation_data.as_deref().unwrap_or_default(),
            str::as_bytes(name),
            str::as_bytes(value),
        ] {
            assert!(!kept.is_empty() && !inside(&packet, kept));
        }
        assert!(inside(&packet, str::as_bytes(&original.topic)));
    }
}
