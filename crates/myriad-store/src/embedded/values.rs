//! Stored values: every one starts with a format version byte ([`VERSION`]),
//! then the record's fields. Keys carry what identifies a record (client id,
//! filter, seq, packet id), so values do not repeat them.

use bytes::Bytes;
use myriad_mqtt::{ByteString, QoS, RetainHandling, SubscriptionOptions};

use super::properties;
use super::wire::{Malformed, Reader, Writer};
use crate::records::{
    MessageRecord, OutboundRecord, OutboundState, SessionRecord, SubscriptionRecord, UnixMillis,
};

/// The format version written first in every value.
pub(super) const VERSION: u8 = 1;

fn reader(value: &[u8]) -> Result<Reader, Malformed> {
    // One copy out of the database page; strings and payloads are sliced from it.
    Reader::new(Bytes::copy_from_slice(value), VERSION)
}

fn qos(bits: u8) -> Result<QoS, Malformed> {
    QoS::from_u8(bits & 0b11).ok_or(Malformed("QoS 3"))
}

fn write_message(w: &mut Writer, message: &MessageRecord) {
    let mut flags = message.qos as u8;
    if message.retain {
        flags |= 0b100;
    }
    if message.expires_at.is_some() {
        flags |= 0b1000;
    }
    w.u8(flags);
    w.bytes(message.topic.as_bytes());
    w.bytes(&message.payload);
    if let Some(at) = message.expires_at {
        w.u64(at);
    }
    properties::write(w, &message.properties);
}

fn read_message(r: &mut Reader) -> Result<MessageRecord, Malformed> {
    let flags = r.u8()?;
    if flags & !0b1111 != 0 {
        return Err(Malformed("unknown message flags"));
    }
    let topic = r.string()?;
    let payload = r.bytes()?;
    let expires_at = if flags & 0b1000 != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    Ok(MessageRecord {
        topic,
        payload,
        qos: qos(flags)?,
        retain: flags & 0b100 != 0,
        properties: properties::read(r)?.into(),
        expires_at,
    })
}

fn message_len(message: &MessageRecord) -> usize {
    message.topic.len() + message.payload.len() + 24
}

/// A session's settings (the client id is the key).
pub(super) fn encode_session(record: &SessionRecord) -> Vec<u8> {
    let mut w = Writer::new(VERSION, 13);
    w.u32(record.expiry_interval);
    match record.expires_at {
        Some(at) => {
            w.u8(1);
            w.u64(at);
        }
        None => w.u8(0),
    }
    w.finish()
}

pub(super) fn decode_session(
    client_id: ByteString,
    value: &[u8],
) -> Result<SessionRecord, Malformed> {
    let mut r = reader(value)?;
    let expiry_interval = r.u32()?;
    let expires_at = match r.u8()? {
        0 => None,
        1 => Some(r.u64()?),
        _ => return Err(Malformed("bad expiry flag")),
    };
    r.finish()?;
    Ok(SessionRecord {
        client_id,
        expiry_interval,
        expires_at,
    })
}

/// A subscription's options and identifier (the filter is in the key).
pub(super) fn encode_subscription(subscription: &SubscriptionRecord) -> Vec<u8> {
    let o = subscription.options;
    let mut options = o.qos as u8 | (o.retain_handling as u8) << 4;
    if o.no_local {
        options |= 0b100;
    }
    if o.retain_as_published {
        options |= 0b1000;
    }
    if subscription.id.is_some() {
        options |= 0b100_0000;
    }
    let mut w = Writer::new(VERSION, 6);
    w.u8(options);
    if let Some(id) = subscription.id {
        w.varint(u64::from(id));
    }
    w.finish()
}

pub(super) fn decode_subscription(
    filter: ByteString,
    value: &[u8],
) -> Result<SubscriptionRecord, Malformed> {
    let mut r = reader(value)?;
    let options = r.u8()?;
    if options & 0b1000_0000 != 0 {
        return Err(Malformed("unknown subscription option bits"));
    }
    let retain_handling = match (options >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(Malformed("retain handling 3")),
    };
    let id = if options & 0b100_0000 != 0 {
        Some(r.varint_u32()?)
    } else {
        None
    };
    r.finish()?;
    Ok(SubscriptionRecord {
        filter,
        options: SubscriptionOptions {
            qos: qos(options)?,
            no_local: options & 0b100 != 0,
            retain_as_published: options & 0b1000 != 0,
            retain_handling,
        },
        id,
    })
}

/// An outbound message and its state (client id and seq are the key).
pub(super) fn encode_outbound(record: &OutboundRecord) -> Vec<u8> {
    let len = 16 + record.message.as_ref().map_or(0, message_len);
    let mut w = Writer::new(VERSION, len);
    match record.state {
        OutboundState::Queued => w.u8(0),
        OutboundState::Published { packet_id } => {
            w.u8(1);
            w.u16(packet_id);
        }
        OutboundState::Released { packet_id } => {
            w.u8(2);
            w.u16(packet_id);
        }
    }
    let mut flags = record.qos as u8;
    if record.retain {
        flags |= 0b100;
    }
    if record.message.is_some() {
        flags |= 0b1000;
    }
    w.u8(flags);
    w.varint(record.subscription_ids.len() as u64);
    for &id in &record.subscription_ids {
        w.varint(u64::from(id));
    }
    if let Some(message) = &record.message {
        write_message(&mut w, message);
    }
    w.finish()
}

pub(super) fn decode_outbound(value: &[u8]) -> Result<OutboundRecord, Malformed> {
    let mut r = reader(value)?;
    let state = match r.u8()? {
        0 => OutboundState::Queued,
        1 => OutboundState::Published {
            packet_id: r.u16()?,
        },
        2 => OutboundState::Released {
            packet_id: r.u16()?,
        },
        _ => return Err(Malformed("unknown outbound state")),
    };
    let flags = r.u8()?;
    if flags & !0b1111 != 0 {
        return Err(Malformed("unknown outbound flags"));
    }
    let count = r.varint()?;
    // Not preallocated from the count: a corrupt count must not allocate.
    let mut subscription_ids = Vec::new();
    for _ in 0..count {
        subscription_ids.push(r.varint_u32()?);
    }
    let message = if flags & 0b1000 != 0 {
        Some(read_message(&mut r)?)
    } else {
        None
    };
    r.finish()?;
    Ok(OutboundRecord {
        state,
        qos: qos(flags)?,
        retain: flags & 0b100 != 0,
        subscription_ids,
        message,
    })
}

/// A delayed will: when it is due, and the message (client id is the key).
pub(super) fn encode_will(due_at: UnixMillis, message: &MessageRecord) -> Vec<u8> {
    let mut w = Writer::new(VERSION, 8 + message_len(message));
    w.u64(due_at);
    write_message(&mut w, message);
    w.finish()
}

pub(super) fn decode_will(value: &[u8]) -> Result<(UnixMillis, MessageRecord), Malformed> {
    let mut r = reader(value)?;
    let due_at = r.u64()?;
    let message = read_message(&mut r)?;
    r.finish()?;
    Ok((due_at, message))
}

/// A retained message (keyed by its topic, which it also holds).
pub(super) fn encode_retained(message: &MessageRecord) -> Vec<u8> {
    let mut w = Writer::new(VERSION, message_len(message));
    write_message(&mut w, message);
    w.finish()
}

pub(super) fn decode_retained(value: &[u8]) -> Result<MessageRecord, Malformed> {
    let mut r = reader(value)?;
    let message = read_message(&mut r)?;
    r.finish()?;
    Ok(message)
}

/// An inbound QoS 2 packet id holds nothing but its key.
pub(super) const INBOUND_QOS2: [u8; 1] = [VERSION];

pub(super) fn decode_inbound_qos2(value: &[u8]) -> Result<(), Malformed> {
    if value == INBOUND_QOS2 {
        Ok(())
    } else {
        Err(Malformed("unknown inbound QoS 2 record"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myriad_mqtt::Properties;

    fn message(expires_at: Option<u64>, properties: Properties) -> MessageRecord {
        MessageRecord {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"\x00\x01payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: properties.into(),
            expires_at,
        }
    }

    fn all_properties() -> Properties {
        Properties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(7),
            content_type: Some("text/plain".into()),
            response_topic: Some("r".into()),
            correlation_data: Some(Bytes::from_static(b"c")),
            subscription_identifiers: vec![1, 268_435_455],
            session_expiry_interval: Some(u32::MAX),
            assigned_client_identifier: Some("id".into()),
            server_keep_alive: Some(60),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(b"d")),
            request_problem_information: Some(false),
            will_delay_interval: Some(30),
            request_response_information: Some(true),
            response_information: Some("ri".into()),
            server_reference: Some("s".into()),
            reason_string: Some("why".into()),
            receive_maximum: Some(10),
            topic_alias_maximum: Some(11),
            topic_alias: Some(12),
            maximum_qos: Some(1),
            retain_available: Some(false),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            maximum_packet_size: Some(1 << 20),
            wildcard_subscription_available: Some(true),
            subscription_identifier_available: Some(false),
            shared_subscription_available: Some(true),
        }
    }

    #[test]
    fn every_property_round_trips() {
        let m = message(Some(5), all_properties());
        assert_eq!(decode_retained(&encode_retained(&m)), Ok(m.clone()));
        assert_eq!(decode_will(&encode_will(9, &m)), Ok((9, m)));
    }

    #[test]
    fn outbound_round_trips_in_every_state() {
        for state in [
            OutboundState::Queued,
            OutboundState::Published { packet_id: 1 },
            OutboundState::Released { packet_id: 65535 },
        ] {
            for message in [None, Some(message(None, Properties::default()))] {
                let record = OutboundRecord {
                    state,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: vec![3, 4],
                    message,
                };
                assert_eq!(decode_outbound(&encode_outbound(&record)), Ok(record));
            }
        }
    }

    #[test]
    fn session_and_subscription_round_trip() {
        for expires_at in [None, Some(123)] {
            let record = SessionRecord {
                client_id: "c".into(),
                expiry_interval: 42,
                expires_at,
            };
            let value = encode_session(&record);
            assert_eq!(decode_session("c".into(), &value), Ok(record));
        }
        for id in [None, Some(0), Some(268_435_455)] {
            let record = SubscriptionRecord {
                filter: "$share/g/a/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                id,
            };
            let value = encode_subscription(&record);
            assert_eq!(
                decode_subscription(record.filter.clone(), &value),
                Ok(record)
            );
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let record = OutboundRecord {
            state: OutboundState::Published { packet_id: 9 },
            qos: QoS::ExactlyOnce,
            retain: true,
            subscription_ids: vec![1],
            message: Some(message(Some(1), all_properties())),
        };
        let value = encode_outbound(&record);
        for len in 0..value.len() {
            assert!(decode_outbound(&value[..len]).is_err(), "prefix of {len}");
        }
        let mut longer = value.clone();
        longer.push(0);
        assert!(decode_outbound(&longer).is_err());
    }
}
