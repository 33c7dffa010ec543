//! Hand-written encodings checked byte for byte.

use bytes::{Bytes, BytesMut};
use myriad_mqtt::*;

fn roundtrip(packet: Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(&packet, version, &mut buf).unwrap();
    assert_eq!(encoded_len(&packet, version).unwrap(), buf.len());
    let wire = buf.to_vec();
    let decoded = decode(&mut buf, version, usize::MAX).unwrap();
    assert_eq!(decoded, Some(packet));
    assert!(buf.is_empty());
    wire
}

#[test]
fn connect_v311_bytes() {
    let connect = Connect {
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".into(),
        will: None,
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: PacketProperties::new(),
    };
    let wire = roundtrip(Packet::Connect(Box::new(connect)), ProtocolVersion::V311);
    assert_eq!(
        wire,
        b"\x10\x13\x00\x04MQTT\x04\xC2\x00\x3C\x00\x01c\x00\x01u\x00\x01p".to_vec()
    );
}

#[test]
fn publish_v5_bytes() {
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: 7,
        payload: Bytes::from_static(b"hi"),
        properties: Properties {
            topic_alias: Some(1),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        }
        .into(),
    };
    let wire = roundtrip(Packet::Publish(publish), ProtocolVersion::V5);
    assert_eq!(
        wire,
        b"\x33\x14\x00\x03a/b\x00\x07\x0A\x23\x00\x01\x26\x00\x01k\x00\x01vhi".to_vec()
    );
}

#[test]
fn short_acks_v5() {
    let wire = roundtrip(Packet::PubAck(PublishAck::success(5)), ProtocolVersion::V5);
    assert_eq!(wire, vec![0x40, 0x02, 0x00, 0x05]);
    let ack = PublishAck {
        packet_id: 5,
        reason_code: ReasonCode::NoMatchingSubscribers,
        properties: PacketProperties::new(),
    };
    let wire = roundtrip(Packet::PubAck(ack), ProtocolVersion::V5);
    assert_eq!(wire, vec![0x40, 0x03, 0x00, 0x05, 0x10]);
    let wire = roundtrip(
        Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        ProtocolVersion::V5,
    );
    assert_eq!(wire, vec![0xE0, 0x00]);
    let wire = roundtrip(
        Packet::Disconnect(Disconnect::new(ReasonCode::ServerShuttingDown)),
        ProtocolVersion::V5,
    );
    assert_eq!(wire, vec![0xE0, 0x01, 0x8B]);
    let wire = roundtrip(
        Packet::Auth(Auth {
            reason_code: ReasonCode::Success,
            properties: PacketProperties::new(),
        }),
        ProtocolVersion::V5,
    );
    assert_eq!(wire, vec![0xF0, 0x00]);
    let wire = roundtrip(
        Packet::PubRel(PublishAck::success(1)),
        ProtocolVersion::V311,
    );
    assert_eq!(wire, vec![0x62, 0x02, 0x00, 0x01]);
}

#[test]
fn subscribe_and_suback() {
    let sub = Subscribe {
        packet_id: 1,
        filters: vec![SubscriptionRequest {
            filter: "a/+".into(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }],
        properties: Properties {
            subscription_identifiers: vec![300],
            ..Properties::default()
        }
        .into(),
    };
    let wire = roundtrip(Packet::Subscribe(sub), ProtocolVersion::V5);
    assert_eq!(
        wire,
        b"\x82\x0C\x00\x01\x03\x0B\xAC\x02\x00\x03a/+\x2E".to_vec()
    );
    let ack = SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
        properties: PacketProperties::new(),
    };
    let wire = roundtrip(Packet::SubAck(ack), ProtocolVersion::V311);
    assert_eq!(wire, vec![0x90, 0x04, 0x00, 0x01, 0x01, 0x80]);
}

#[test]
fn publish_payload_is_zero_copy() {
    let mut buf = BytesMut::from(&b"\x30\x06\x00\x01tabc"[..]);
    let storage = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, ProtocolVersion::V311, 100).unwrap() else {
        panic!("expected PUBLISH");
    };
    assert_eq!(&p.payload[..], b"abc");
    assert_eq!(p.payload.as_ptr() as usize, storage + 5);
    assert_eq!(p.topic.as_bytes().as_ptr() as usize, storage + 4);
}

/// Properties allocated but empty encode exactly as unset ones, and decoding
/// a packet without properties allocates none.
#[test]
fn empty_properties_stay_unallocated() {
    let mut allocated_empty = PacketProperties::new();
    allocated_empty.user_properties.clear();
    assert!(allocated_empty.get().is_some());
    let publish = |properties: PacketProperties| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 1,
            payload: Bytes::from_static(b"x"),
            properties,
        })
    };
    let puback = |properties: PacketProperties| {
        Packet::PubAck(PublishAck {
            packet_id: 1,
            reason_code: ReasonCode::NoMatchingSubscribers,
            properties,
        })
    };
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for make in [publish, puback] {
            let mut unset = BytesMut::new();
            encode(&make(PacketProperties::new()), version, &mut unset).unwrap();
            let mut empty = BytesMut::new();
            encode(&make(allocated_empty.clone()), version, &mut empty).unwrap();
            assert_eq!(unset, empty);
            let decoded = decode(&mut unset, version, usize::MAX).unwrap().unwrap();
            let properties = match &decoded {
                Packet::Publish(p) => &p.properties,
                Packet::PubAck(a) => &a.properties,
                other => panic!("unexpected {other:?}"),
            };
            assert!(properties.get().is_none(), "{version:?} {decoded:?}");
        }
    }
}
