//! Every validation rule of the decoder, fed raw bytes, checking the exact
//! error variant and the reason code a server answers with.

use bytes::BytesMut;
use myriad_mqtt::{DecodeError, Packet, PacketType, ProtocolVersion, ReasonCode, decode};

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A whole packet: first byte, remaining length, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len & 0x7F) as u8;
        len >>= 7;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or binary field.
fn s(value: &[u8]) -> Vec<u8> {
    let mut out = (value.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(value);
    out
}

/// A property block: length then content.
fn props(content: &[u8]) -> Vec<u8> {
    assert!(content.len() < 128);
    let mut out = vec![content.len() as u8];
    out.extend_from_slice(content);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A 5.0 CONNECT with the given flags, properties and payload.
fn connect_v5(flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    packet(
        0x10,
        &cat(&[&s(b"MQTT"), &[5, flags, 0, 60], &props(properties), payload]),
    )
}

/// A 3.1.1 CONNECT with the given flags and payload.
fn connect_v3(flags: u8, payload: &[u8]) -> Vec<u8> {
    packet(0x10, &cat(&[&s(b"MQTT"), &[4, flags, 0, 60], payload]))
}

fn try_decode(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, version, 1 << 20)
}

fn ok(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, 1 << 20)
        .unwrap_or_else(|e| panic!("{bytes:02X?} should decode: {e}"))
        .expect("complete packet");
    assert!(buf.is_empty(), "exactly one packet consumed");
    packet
}

fn err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    match try_decode(bytes, version) {
        Err(e) => e,
        Ok(p) => panic!("{bytes:02X?} should fail, got {p:?}"),
    }
}

fn malformed(bytes: &[u8], version: ProtocolVersion) {
    let e = err(bytes, version);
    assert!(
        matches!(e, DecodeError::Malformed(_)),
        "{bytes:02X?}: {e:?}"
    );
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

fn protocol(bytes: &[u8], version: ProtocolVersion) {
    let e = err(bytes, version);
    assert!(matches!(e, DecodeError::Protocol(_)), "{bytes:02X?}: {e:?}");
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
}

fn topic_name_invalid(bytes: &[u8], version: ProtocolVersion) {
    let e = err(bytes, version);
    assert!(
        matches!(e, DecodeError::TopicNameInvalid(_)),
        "{bytes:02X?}: {e:?}"
    );
    assert_eq!(e.reason_code(), ReasonCode::TopicNameInvalid);
}

fn topic_filter_invalid(bytes: &[u8], version: ProtocolVersion) {
    let e = err(bytes, version);
    assert!(
        matches!(e, DecodeError::TopicFilterInvalid(_)),
        "{bytes:02X?}: {e:?}"
    );
    assert_eq!(e.reason_code(), ReasonCode::TopicFilterInvalid);
}

fn unsupported(bytes: &[u8]) {
    for version in [V3, V5] {
        let e = err(bytes, version);
        assert!(
            matches!(e, DecodeError::UnsupportedProtocolVersion(_)),
            "{bytes:02X?}: {e:?}"
        );
        assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    }
}

// ---------------------------------------------------------------- fixed header

#[test]
fn reserved_fixed_header_flags() {
    for version in [V3, V5] {
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE must carry 0b0010.
        malformed(&packet(0x60, &[0, 1]), version);
        malformed(&packet(0x63, &[0, 1]), version);
        malformed(&packet(0x80, &cat(&[&[0, 1, 0], &s(b"a"), &[0]])), version);
        malformed(&packet(0xA0, &cat(&[&[0, 1, 0], &s(b"a")])), version);
        // Every other type except PUBLISH must carry 0.
        for first in [0x11, 0x21, 0x42, 0x52, 0x72, 0x91, 0xB1, 0xC1, 0xD8, 0xE2] {
            malformed(&packet(first, &[]), version);
        }
        // Packet type 0 is reserved.
        malformed(&[0x00, 0x00], version);
    }
    malformed(&packet(0xF1, &[]), V5);
    // Flags are checked as soon as the first byte is there.
    malformed(&[0x61], V5);
}

#[test]
fn publish_qos_3() {
    for version in [V3, V5] {
        malformed(&packet(0x36, &cat(&[&s(b"t"), &[0, 1]])), version);
        malformed(&[0x36], version);
    }
}

#[test]
fn publish_qos0_with_dup() {
    for version in [V3, V5] {
        malformed(&packet(0x38, &s(b"t")), version);
    }
}

#[test]
fn remaining_length_too_long() {
    for version in [V3, V5] {
        malformed(&[0xC0, 0x80, 0x80, 0x80, 0x80, 0x01], version);
        // Continuation on the fourth byte, even before the fifth arrives.
        malformed(&[0xC0, 0xFF, 0xFF, 0xFF, 0xFF], version);
        // Non-minimal but at most four bytes is accepted.
        assert_eq!(ok(&[0xC0, 0x80, 0x80, 0x00], version), Packet::PingReq);
    }
}

#[test]
fn packet_too_large_before_body() {
    // Remaining length 1000, body not yet received.
    let mut buf = BytesMut::from(&[0x30, 0xE8, 0x07][..]);
    let e = decode(&mut buf, V5, 100).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 1003,
            max: 100
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
    assert_eq!(buf.len(), 3, "nothing consumed");
    // Exactly the maximum is fine.
    let bytes = packet(0x30, &cat(&[&s(b"t"), b"xyz"]));
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(decode(&mut buf, V3, bytes.len()).unwrap().is_some());
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, V3, bytes.len() - 1).unwrap_err(),
        DecodeError::PacketTooLarge {
            size: bytes.len(),
            max: bytes.len() - 1
        }
    );
}

#[test]
fn incomplete_consumes_nothing() {
    let bytes = packet(0x30, &cat(&[&s(b"topic"), b"payload"]));
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert_eq!(decode(&mut buf, V3, 1 << 20), Ok(None));
        assert_eq!(buf.len(), cut);
    }
}

#[test]
fn auth_on_v311() {
    let e = err(&[0xF0, 0x00], V3);
    assert_eq!(e, DecodeError::UnexpectedPacket(PacketType::Auth));
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
}

// ---------------------------------------------------------------- PUBLISH

#[test]
fn publish_topic_with_wildcards_or_nul() {
    for version in [V3, V5] {
        let suffix: &[u8] = if version == V5 { &[0] } else { &[] };
        for topic in [&b"a/+"[..], b"a/#", b"#"] {
            topic_name_invalid(&packet(0x30, &cat(&[&s(topic), suffix])), version);
        }
        // U+0000 in any string is a Malformed Packet (MQTT-1.5.4-2).
        malformed(&packet(0x30, &cat(&[&s(b"a\0b"), suffix])), version);
    }
}

#[test]
fn publish_empty_topic() {
    topic_name_invalid(&packet(0x30, &s(b"")), V3);
    protocol(&packet(0x30, &cat(&[&s(b""), &[0]])), V5);
    // 5.0 with a topic alias is fine.
    let Packet::Publish(p) = ok(&packet(0x30, &cat(&[&s(b""), &props(&[0x23, 0, 1])])), V5) else {
        panic!("expected PUBLISH")
    };
    assert!(p.topic.is_empty());
    assert_eq!(p.properties.topic_alias, Some(1));
}

#[test]
fn packet_id_zero() {
    for version in [V3, V5] {
        let publish_props: &[u8] = if version == V5 { &[0] } else { &[] };
        protocol(
            &packet(0x32, &cat(&[&s(b"t"), &[0, 0], publish_props])),
            version,
        );
        protocol(
            &packet(0x34, &cat(&[&s(b"t"), &[0, 0], publish_props])),
            version,
        );
        let sub_props: &[u8] = if version == V5 { &[0] } else { &[] };
        protocol(
            &packet(0x82, &cat(&[&[0, 0], sub_props, &s(b"a"), &[0]])),
            version,
        );
        protocol(
            &packet(0xA2, &cat(&[&[0, 0], sub_props, &s(b"a")])),
            version,
        );
        for first in [0x40, 0x50, 0x62, 0x70] {
            protocol(&packet(first, &[0, 0]), version);
        }
        protocol(&packet(0x90, &cat(&[&[0, 0], sub_props, &[0]])), version);
        let unsuback: &[u8] = if version == V5 {
            &[0, 0, 0, 0]
        } else {
            &[0, 0]
        };
        protocol(&packet(0xB0, unsuback), version);
    }
}

// ---------------------------------------------------------------- SUBSCRIBE / UNSUBSCRIBE

#[test]
fn subscribe_without_filters() {
    protocol(&packet(0x82, &[0, 1]), V3);
    protocol(&packet(0x82, &[0, 1, 0]), V5);
    protocol(&packet(0xA2, &[0, 1]), V3);
    protocol(&packet(0xA2, &[0, 1, 0]), V5);
}

#[test]
fn invalid_topic_filters() {
    for version in [V3, V5] {
        let p: &[u8] = if version == V5 { &[0] } else { &[] };
        malformed(
            &packet(0x82, &cat(&[&[0, 1], p, &s(b"a\0"), &[0]])),
            version,
        );
        for filter in [&b""[..], b"a/#/b", b"a+", b"a/b#"] {
            topic_filter_invalid(
                &packet(0x82, &cat(&[&[0, 1], p, &s(filter), &[0]])),
                version,
            );
            topic_filter_invalid(&packet(0xA2, &cat(&[&[0, 1], p, &s(filter)])), version);
        }
    }
    // Shared subscription syntax is checked on 5.0 only.
    for filter in [&b"$share/g"[..], b"$share//a", b"$share/g+/a"] {
        topic_filter_invalid(&packet(0x82, &cat(&[&[0, 1, 0], &s(filter), &[0]])), V5);
    }
    ok(&packet(0x82, &cat(&[&[0, 1], &s(b"$share/g"), &[0]])), V3);
    // No Local on a shared subscription is a protocol error.
    protocol(
        &packet(0x82, &cat(&[&[0, 1, 0], &s(b"$share/g/a"), &[0x04]])),
        V5,
    );
}

#[test]
fn subscription_options_reserved_bits() {
    let sub = |options: u8, version: ProtocolVersion| {
        let p: &[u8] = if version == V5 { &[0] } else { &[] };
        packet(0x82, &cat(&[&[0, 1], p, &s(b"a"), &[options]]))
    };
    for options in [0x40, 0x80, 0xC0, 0x30, 0x03, 0x33] {
        malformed(&sub(options, V5), V5);
    }
    for options in [0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x03] {
        malformed(&sub(options, V3), V3);
    }
    // Everything allowed on 5.0.
    ok(&sub(0x2E, V5), V5);
    ok(&sub(0x02, V3), V3);
}

// ---------------------------------------------------------------- CONNECT

#[test]
fn connect_protocol_name_and_level() {
    unsupported(&packet(
        0x10,
        &cat(&[&s(b"MQTX"), &[4, 2, 0, 60], &s(b"c")]),
    ));
    for level in [0, 3, 6, 0x84] {
        unsupported(&packet(
            0x10,
            &cat(&[&s(b"MQTT"), &[level, 2, 0, 60], &s(b"c")]),
        ));
    }
    // MQTT 3.1 is "MQIsdp" at level 3, and only there.
    for level in [0, 2, 4, 5] {
        unsupported(&packet(
            0x10,
            &cat(&[&s(b"MQIsdp"), &[level, 2, 0, 60], &s(b"c")]),
        ));
    }
    for version in [V3, V5] {
        let Packet::Connect(c) = ok(
            &packet(0x10, &cat(&[&s(b"MQIsdp"), &[3, 2, 0, 60], &s(b"c")])),
            version,
        ) else {
            panic!("expected CONNECT")
        };
        assert_eq!(c.protocol, ProtocolVersion::V31);
        assert_eq!(&c.client_id[..], "c");
    }
    // CONNECT carries its own version whatever the connection's.
    for version in [V3, V5] {
        let Packet::Connect(c) = ok(&connect_v5(0x02, &[], &s(b"c")), version) else {
            panic!("expected CONNECT")
        };
        assert_eq!(c.protocol, V5);
        let Packet::Connect(c) = ok(&connect_v3(0x02, &s(b"c")), version) else {
            panic!("expected CONNECT")
        };
        assert_eq!(c.protocol, V3);
    }
}

#[test]
fn control_characters_are_malformed() {
    // U+0001-U+001F and U+007F-U+009F (docs/conformance.md); others pass.
    for bad in ["\u{1}", "\u{1f}", "\u{7f}", "\u{80}", "\u{9f}"] {
        let bad = format!("a{bad}b");
        let bad = bad.as_bytes();
        malformed(&connect_v3(0x02, &s(bad)), V3);
        malformed(&connect_v3(0x82, &cat(&[&s(b"c"), &s(bad)])), V3);
        malformed(
            &connect_v3(0x06, &cat(&[&s(b"c"), &s(bad), &s(b"payload")])),
            V3,
        );
        for version in [V3, V5] {
            let p: &[u8] = if version == V5 { &[0] } else { &[] };
            malformed(&packet(0x30, &cat(&[&s(bad), p, b"x"])), version);
            malformed(&packet(0x82, &cat(&[&[0, 1], p, &s(bad), &[0]])), version);
            malformed(&packet(0xA2, &cat(&[&[0, 1], p, &s(bad)])), version);
        }
    }
    for fine in ["\u{a0}", "é", "€", " ", "~"] {
        let fine = format!("a{fine}b");
        ok(&connect_v3(0x02, &s(fine.as_bytes())), V3);
        ok(&packet(0x30, &cat(&[&s(fine.as_bytes()), b"x"])), V3);
    }
}

#[test]
fn connect_reserved_flag() {
    malformed(&connect_v3(0x03, &s(b"c")), V3);
    malformed(&connect_v5(0x01, &[], &s(b"c")), V5);
}

#[test]
fn connect_will_flags() {
    // Will QoS or retain without the will flag.
    malformed(&connect_v3(0x08, &s(b"c")), V3);
    malformed(&connect_v3(0x10, &s(b"c")), V3);
    malformed(&connect_v3(0x20, &s(b"c")), V3);
    malformed(&connect_v5(0x20, &[], &s(b"c")), V5);
    // Will QoS 3.
    let will_v3 = cat(&[&s(b"c"), &s(b"w"), &s(b"p")]);
    malformed(&connect_v3(0x1C, &will_v3), V3);
    let will_v5 = cat(&[&s(b"c"), &[0], &s(b"w"), &s(b"p")]);
    malformed(&connect_v5(0x1C, &[], &will_v5), V5);
    // The same will with QoS 2 and retain decodes.
    ok(&connect_v3(0x34, &will_v3), V3);
    ok(&connect_v5(0x34, &[], &will_v5), V5);
    // A will topic must be a valid topic name.
    let bad_topic = cat(&[&s(b"c"), &s(b"w/#"), &s(b"p")]);
    topic_name_invalid(&connect_v3(0x04, &bad_topic), V3);
}

#[test]
fn connect_password_without_username() {
    malformed(&connect_v3(0x40, &cat(&[&s(b"c"), &s(b"pw")])), V3);
    // Allowed in 5.0.
    let Packet::Connect(c) = ok(&connect_v5(0x40, &[], &cat(&[&s(b"c"), &s(b"pw")])), V5) else {
        panic!("expected CONNECT")
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn connect_strings() {
    // Invalid UTF-8, a UTF-16 surrogate, U+0000.
    malformed(&connect_v3(0x02, &s(b"\xFF")), V3);
    malformed(&connect_v3(0x02, &s(b"\xED\xA0\x80")), V3);
    malformed(&connect_v3(0x02, &s(b"a\0")), V3);
    // User name with U+0000.
    malformed(&connect_v3(0x82, &cat(&[&s(b"c"), &s(b"\0")])), V3);
    // Field length running past the packet.
    malformed(&connect_v3(0x02, &[0, 5, b'a']), V3);
    // Truncated variable header.
    malformed(&packet(0x10, &cat(&[&s(b"MQTT"), &[4, 2, 0]])), V3);
}

// ---------------------------------------------------------------- properties

#[test]
fn duplicate_properties() {
    // Session expiry interval twice in CONNECT.
    protocol(
        &connect_v5(0x02, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], &s(b"c")),
        V5,
    );
    // Topic alias twice in PUBLISH.
    protocol(
        &packet(0x30, &cat(&[&s(b"t"), &props(&[0x23, 0, 1, 0x23, 0, 2])])),
        V5,
    );
    // Subscription identifier twice in SUBSCRIBE.
    protocol(
        &packet(
            0x82,
            &cat(&[&[0, 1], &props(&[0x0B, 1, 0x0B, 2]), &s(b"a"), &[0]]),
        ),
        V5,
    );
    // Reason string twice in PUBACK.
    protocol(
        &packet(
            0x40,
            &cat(&[
                &[0, 1, 0],
                &props(&cat(&[&[0x1F], &s(b"x"), &[0x1F], &s(b"y")])),
            ]),
        ),
        V5,
    );
    // User properties and PUBLISH subscription identifiers may repeat.
    let user = cat(&[&[0x26], &s(b"k"), &s(b"v")]);
    let Packet::Publish(p) = ok(
        &packet(
            0x30,
            &cat(&[&s(b"t"), &props(&cat(&[&user, &user, &[0x0B, 1, 0x0B, 2]]))]),
        ),
        V5,
    ) else {
        panic!("expected PUBLISH")
    };
    assert_eq!(p.properties.user_properties.len(), 2);
    assert_eq!(p.properties.subscription_identifiers, vec![1, 2]);
}

#[test]
fn property_not_allowed_in_packet() {
    // Topic alias in CONNECT.
    malformed(&connect_v5(0x02, &[0x23, 0, 1], &s(b"c")), V5);
    // Will delay interval among the CONNECT properties (it belongs to the will).
    malformed(&connect_v5(0x02, &[0x18, 0, 0, 0, 1], &s(b"c")), V5);
    // Session expiry interval among the will properties.
    malformed(
        &connect_v5(
            0x06,
            &[],
            &cat(&[&s(b"c"), &props(&[0x11, 0, 0, 0, 1]), &s(b"w"), &s(b"p")]),
        ),
        V5,
    );
    // Maximum QoS in PUBLISH.
    malformed(&packet(0x30, &cat(&[&s(b"t"), &props(&[0x24, 0])])), V5);
    // Reason string in SUBSCRIBE.
    malformed(
        &packet(
            0x82,
            &cat(&[&[0, 1], &props(&cat(&[&[0x1F], &s(b"x")])), &s(b"a"), &[0]]),
        ),
        V5,
    );
    // Will delay interval in the will properties is fine.
    ok(
        &connect_v5(
            0x06,
            &[],
            &cat(&[&s(b"c"), &props(&[0x18, 0, 0, 0, 1]), &s(b"w"), &s(b"p")]),
        ),
        V5,
    );
}

#[test]
fn unknown_property_identifier() {
    malformed(&packet(0x30, &cat(&[&s(b"t"), &props(&[0x05, 0])])), V5);
    malformed(&packet(0x30, &cat(&[&s(b"t"), &props(&[0x00])])), V5);
    // Identifier 255 encoded as a two byte variable integer.
    malformed(
        &packet(0x30, &cat(&[&s(b"t"), &props(&[0xFF, 0x01, 0])])),
        V5,
    );
    malformed(&connect_v5(0x02, &[0x7F, 0], &s(b"c")), V5);
}

#[test]
fn property_length_past_packet() {
    // Property length 10, only 3 bytes follow.
    malformed(&packet(0x30, &cat(&[&s(b"t"), &[10, 0x23, 0, 1]])), V5);
    // Property value running past the property length.
    malformed(&packet(0x30, &cat(&[&s(b"t"), &[2, 0x23, 0, 1]])), V5);
    malformed(&connect_v5(0x02, &[0x11, 0, 0], &s(b"c")), V5);
    // String property longer than the block.
    malformed(
        &packet(0x40, &cat(&[&[0, 1, 0], &[4, 0x1F, 0, 5, b'a']])),
        V5,
    );
}

#[test]
fn boolean_properties() {
    protocol(&packet(0x30, &cat(&[&s(b"t"), &props(&[0x01, 2])])), V5);
    protocol(&connect_v5(0x02, &[0x17, 2], &s(b"c")), V5);
    protocol(&connect_v5(0x02, &[0x19, 0xFF], &s(b"c")), V5);
    for id in [0x25, 0x28, 0x29, 0x2A] {
        protocol(&packet(0x20, &cat(&[&[0, 0], &props(&[id, 2])])), V5);
        ok(&packet(0x20, &cat(&[&[0, 0], &props(&[id, 1])])), V5);
    }
}

#[test]
fn maximum_qos_property() {
    protocol(&packet(0x20, &cat(&[&[0, 0], &props(&[0x24, 2])])), V5);
    ok(&packet(0x20, &cat(&[&[0, 0], &props(&[0x24, 1])])), V5);
    ok(&packet(0x20, &cat(&[&[0, 0], &props(&[0x24, 0])])), V5);
}

#[test]
fn zero_valued_properties() {
    // Receive maximum 0.
    protocol(&connect_v5(0x02, &[0x21, 0, 0], &s(b"c")), V5);
    protocol(&packet(0x20, &cat(&[&[0, 0], &props(&[0x21, 0, 0])])), V5);
    // Maximum packet size 0.
    protocol(&connect_v5(0x02, &[0x27, 0, 0, 0, 0], &s(b"c")), V5);
    // Subscription identifier 0.
    protocol(
        &packet(0x82, &cat(&[&[0, 1], &props(&[0x0B, 0]), &s(b"a"), &[0]])),
        V5,
    );
    protocol(&packet(0x30, &cat(&[&s(b"t"), &props(&[0x0B, 0])])), V5);
    // Subscription identifier above 268,435,455 needs five bytes: malformed.
    malformed(
        &packet(
            0x82,
            &cat(&[
                &[0, 1],
                &props(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]),
                &s(b"a"),
                &[0],
            ]),
        ),
        V5,
    );
    // The largest one is fine.
    ok(
        &packet(
            0x82,
            &cat(&[
                &[0, 1],
                &props(&[0x0B, 0xFF, 0xFF, 0xFF, 0x7F]),
                &s(b"a"),
                &[0],
            ]),
        ),
        V5,
    );
    // Topic alias 0.
    protocol(&packet(0x30, &cat(&[&s(b"t"), &props(&[0x23, 0, 0])])), V5);
}

#[test]
fn authentication_data_without_method() {
    protocol(&connect_v5(0x02, &cat(&[&[0x16], &s(b"d")]), &s(b"c")), V5);
    protocol(
        &packet(0xF0, &cat(&[&[0x18], &props(&cat(&[&[0x16], &s(b"d")]))])),
        V5,
    );
    ok(
        &connect_v5(
            0x02,
            &cat(&[&[0x15], &s(b"m"), &[0x16], &s(b"d")]),
            &s(b"c"),
        ),
        V5,
    );
}

#[test]
fn response_topic_with_wildcard() {
    protocol(
        &packet(
            0x30,
            &cat(&[&s(b"t"), &props(&cat(&[&[0x08], &s(b"r/#")]))]),
        ),
        V5,
    );
}

// ---------------------------------------------------------------- reason codes

#[test]
fn unknown_reason_codes() {
    // Bytes that are no reason code at all.
    malformed(&packet(0x40, &[0, 1, 0x03]), V5);
    malformed(&packet(0xE0, &[0xFF]), V5);
    malformed(&packet(0xF0, &[0x20, 0]), V5);
    malformed(&packet(0x20, &[0, 0x05, 0]), V5);
    malformed(&packet(0x90, &[0, 1, 0, 0x03]), V5);
    malformed(&packet(0xB0, &[0, 1, 0, 0x12]), V5);
    // Reason codes not defined for the packet type.
    malformed(&packet(0x62, &[0, 1, 0x10]), V5);
    malformed(&packet(0x40, &[0, 1, 0x92]), V5);
    malformed(&packet(0xF0, &[0x04, 0]), V5);
    malformed(&packet(0x20, &[0, 0x18, 0]), V5);
    // 3.1.1 CONNACK return codes 0..=5 only, SUBACK 0, 1, 2, 0x80 only.
    malformed(&packet(0x20, &[0, 6]), V3);
    malformed(&packet(0x20, &[0, 0x80]), V3);
    malformed(&packet(0x90, &[0, 1, 3]), V3);
    malformed(&packet(0x90, &[0, 1, 0x87]), V3);
}

#[test]
fn v311_return_code_mapping() {
    let expected = [
        ReasonCode::Success,
        ReasonCode::UnsupportedProtocolVersion,
        ReasonCode::ClientIdentifierNotValid,
        ReasonCode::ServerUnavailable,
        ReasonCode::BadUserNameOrPassword,
        ReasonCode::NotAuthorized,
    ];
    for (code, reason) in expected.into_iter().enumerate() {
        let Packet::ConnAck(c) = ok(&packet(0x20, &[0, code as u8]), V3) else {
            panic!("expected CONNACK")
        };
        assert_eq!(c.reason_code, reason);
    }
    let Packet::SubAck(s) = ok(&packet(0x90, &[0, 1, 0, 1, 2, 0x80]), V3) else {
        panic!("expected SUBACK")
    };
    assert_eq!(
        s.reason_codes,
        vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError
        ]
    );
}

#[test]
fn connack_reserved_flags() {
    malformed(&packet(0x20, &[0x02, 0]), V3);
    malformed(&packet(0x20, &[0x80, 0, 0]), V5);
}

// ---------------------------------------------------------------- lengths

#[test]
fn trailing_bytes() {
    for version in [V3, V5] {
        malformed(&packet(0xC0, &[0]), version);
        malformed(&packet(0xD0, &[0]), version);
        let connect = if version == V5 {
            connect_v5(0x02, &[], &cat(&[&s(b"c"), &[0]]))
        } else {
            connect_v3(0x02, &cat(&[&s(b"c"), &[0]]))
        };
        malformed(&connect, version);
    }
    // 3.1.1 acks are exactly two bytes, CONNACK exactly two, DISCONNECT empty.
    for first in [0x40, 0x50, 0x62, 0x70, 0xB0] {
        malformed(&packet(first, &[0, 1, 0]), V3);
    }
    malformed(&packet(0x20, &[0, 0, 0]), V3);
    malformed(&packet(0xE0, &[0]), V3);
    // 5.0: bytes after the property block of an ack.
    malformed(&packet(0x40, &[0, 1, 0, 0, 0]), V5);
    malformed(&packet(0xE0, &[0, 0, 0]), V5);
    malformed(&packet(0xF0, &[0, 0, 0]), V5);
    malformed(&packet(0x20, &[0, 0, 0, 0]), V5);
}

#[test]
fn truncated_packets() {
    for version in [V3, V5] {
        // Acks shorter than a packet identifier.
        for first in [0x40, 0x50, 0x62, 0x70, 0x90, 0xB0] {
            malformed(&packet(first, &[0]), version);
        }
        malformed(&packet(0x20, &[0]), version);
        // PUBLISH shorter than its topic.
        malformed(&packet(0x30, &[0, 3, b'a']), version);
        // QoS 1 PUBLISH without a packet identifier.
        malformed(&packet(0x32, &s(b"t")), version);
        // SUBSCRIBE filter without options.
        let p: &[u8] = if version == V5 { &[0] } else { &[] };
        malformed(&packet(0x82, &cat(&[&[0, 1], p, &s(b"a")])), version);
    }
    // 5.0 PUBLISH without its property length.
    malformed(&packet(0x30, &s(b"t")), V5);
}

#[test]
fn short_forms_v5() {
    use myriad_mqtt::{Disconnect, PublishAck};
    for first in [0x40, 0x50, 0x62, 0x70] {
        let p = ok(&packet(first, &[0, 9]), V5);
        let ack = match p {
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => a,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(ack, PublishAck::success(9));
    }
    let Packet::PubAck(ack) = ok(&packet(0x40, &[0, 9, 0x10]), V5) else {
        panic!("expected PUBACK")
    };
    assert_eq!(ack.reason_code, ReasonCode::NoMatchingSubscribers);
    assert_eq!(
        ok(&packet(0xE0, &[]), V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::Success))
    );
    assert_eq!(
        ok(&packet(0xE0, &[0x04]), V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage))
    );
    let Packet::Auth(auth) = ok(&packet(0xF0, &[]), V5) else {
        panic!("expected AUTH")
    };
    assert_eq!(auth.reason_code, ReasonCode::Success);
    assert!(auth.properties.is_empty());
}

#[test]
fn disconnect_codes_a_client_may_send() {
    // MQTT 5.0 section 3.14.2.1: the codes marked "Client" or "Client or Server".
    let client = [
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
    ];
    let server_only = [
        0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ];
    for byte in 0..=u8::MAX {
        let Some(code) = ReasonCode::from_u8(byte) else {
            continue;
        };
        if !code.allowed_in(PacketType::Disconnect) {
            assert!(!client.contains(&byte) && !server_only.contains(&byte));
            continue;
        }
        assert_eq!(
            code.client_may_disconnect_with(),
            client.contains(&byte),
            "{byte:#04x}"
        );
        assert_eq!(client.contains(&byte), !server_only.contains(&byte));
    }
}
