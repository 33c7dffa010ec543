//! Property tests: round trips of every packet type in both versions,
//! `encoded_len` agreement, incremental decoding, and decoding arbitrary or
//! mutated bytes without panicking.

use bytes::{Bytes, BytesMut};
use myriad_mqtt::*;
use proptest::collection::vec;
use proptest::option::of as opt;
use proptest::prelude::*;

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

// ---------------------------------------------------------------- leaf strategies

/// Any UTF-8 string without U+0000, short.
fn string() -> impl Strategy<Value = ByteString> {
    vec(any::<char>().prop_filter("no U+0000", |c| *c != '\0'), 0..8)
        .prop_map(|chars| ByteString::from(chars.into_iter().collect::<String>()))
}

/// [`string`] without the control characters the decoder refuses in
/// client identifiers and user names (U+0001-U+001F, U+007F-U+009F).
fn strict_string() -> impl Strategy<Value = ByteString> {
    vec(
        any::<char>().prop_filter(
            "no control character",
            |c| !matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}'),
        ),
        0..8,
    )
    .prop_map(|chars| ByteString::from(chars.into_iter().collect::<String>()))
}

/// A valid, non-empty topic name.
fn topic_name() -> impl Strategy<Value = ByteString> {
    "[a-z0-9$ é/]{1,12}".prop_map(ByteString::from)
}

/// A valid topic filter (levels, `+`, a trailing `#`), sometimes shared.
fn topic_filter(version: ProtocolVersion) -> impl Strategy<Value = ByteString> {
    let level = prop_oneof![Just("+".to_string()), "[a-z0-9]{0,3}"];
    let plain = (vec(level, 1..4), any::<bool>()).prop_map(|(levels, hash)| {
        let mut filter = levels.join("/");
        if hash {
            filter.push_str("/#");
        }
        if filter.is_empty() {
            filter.push('a');
        }
        filter
    });
    let shared = version.is_v5();
    (plain, "[a-z]{1,3}", any::<bool>()).prop_map(move |(filter, group, share)| {
        if share && shared {
            ByteString::from(format!("$share/{group}/{filter}"))
        } else {
            ByteString::from(filter)
        }
    })
}

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// A reason code the version can carry in a packet of type `packet`.
fn reason(packet: PacketType, version: ProtocolVersion) -> BoxedStrategy<ReasonCode> {
    let codes: Vec<ReasonCode> = match (version, packet) {
        (ProtocolVersion::V5, _) => ReasonCode::ALL
            .into_iter()
            .filter(|code| code.allowed_in(packet))
            .collect(),
        (ProtocolVersion::V311 | ProtocolVersion::V31, PacketType::ConnAck) => {
            (0..=5).filter_map(ReasonCode::from_v311_connack).collect()
        }
        (ProtocolVersion::V311 | ProtocolVersion::V31, PacketType::SubAck) => vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ],
        (ProtocolVersion::V311 | ProtocolVersion::V31, _) => vec![ReasonCode::Success],
    };
    proptest::sample::select(codes).boxed()
}

/// Properties with every field possibly set to a valid value.
fn any_properties() -> impl Strategy<Value = Properties> {
    let a = (
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(string()),
        opt(topic_name()),
        opt(bytes()),
        vec(1..=MAX_VARIABLE_INT, 0..3),
        opt(any::<u32>()),
        opt(string()),
        opt(any::<u16>()),
    );
    let b = (
        opt(string()),
        opt(bytes()),
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(any::<bool>()),
        opt(string()),
        opt(string()),
        opt(string()),
        opt(1..=u16::MAX),
    );
    let c = (
        opt(any::<u16>()),
        opt(1..=u16::MAX),
        opt(0..=1u8),
        opt(any::<bool>()),
        vec((string(), string()), 0..3),
        opt(1..=u32::MAX),
        opt(any::<bool>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
    );
    (a, b, c).prop_map(|(a, b, c)| Properties {
        payload_format_indicator: a.0,
        message_expiry_interval: a.1,
        content_type: a.2,
        response_topic: a.3,
        correlation_data: a.4,
        subscription_identifiers: a.5,
        session_expiry_interval: a.6,
        assigned_client_identifier: a.7,
        server_keep_alive: a.8,
        authentication_method: b.0,
        authentication_data: b.1,
        request_problem_information: b.2,
        will_delay_interval: b.3,
        request_response_information: b.4,
        response_information: b.5,
        server_reference: b.6,
        reason_string: b.7,
        receive_maximum: b.8,
        topic_alias_maximum: c.0,
        topic_alias: c.1,
        maximum_qos: c.2,
        retain_available: c.3,
        user_properties: c.4,
        maximum_packet_size: c.5,
        wildcard_subscription_available: c.6,
        subscription_identifier_available: c.7,
        shared_subscription_available: c.8,
    })
}

/// Clears `field` unless `id` is allowed in `context`.
macro_rules! keep_if_allowed {
    ($props:ident, $context:ident, $($id:ident => $field:ident),* $(,)?) => {
        $(
            if !PropertyId::$id.allowed_in($context) {
                $props.$field = Default::default();
            }
        )*
    };
}

/// Properties valid in `context` on `version` (none on 3.1.1).
fn properties(context: PropertyContext, version: ProtocolVersion) -> BoxedStrategy<Properties> {
    if !version.is_v5() {
        return Just(Properties::default()).boxed();
    }
    any_properties()
        .prop_map(move |mut p| {
            keep_if_allowed!(p, context,
                PayloadFormatIndicator => payload_format_indicator,
                MessageExpiryInterval => message_expiry_interval,
                ContentType => content_type,
                ResponseTopic => response_topic,
                CorrelationData => correlation_data,
                SubscriptionIdentifier => subscription_identifiers,
                SessionExpiryInterval => session_expiry_interval,
                AssignedClientIdentifier => assigned_client_identifier,
                ServerKeepAlive => server_keep_alive,
                AuthenticationMethod => authentication_method,
                AuthenticationData => authentication_data,
                RequestProblemInformation => request_problem_information,
                WillDelayInterval => will_delay_interval,
                RequestResponseInformation => request_response_information,
                ResponseInformation => response_information,
                ServerReference => server_reference,
                ReasonString => reason_string,
                ReceiveMaximum => receive_maximum,
                TopicAliasMaximum => topic_alias_maximum,
                TopicAlias => topic_alias,
                MaximumQoS => maximum_qos,
                RetainAvailable => retain_available,
                UserProperty => user_properties,
                MaximumPacketSize => maximum_packet_size,
                WildcardSubscriptionAvailable => wildcard_subscription_available,
                SubscriptionIdentifierAvailable => subscription_identifier_available,
                SharedSubscriptionAvailable => shared_subscription_available,
            );
            if context == PropertyContext::Packet(PacketType::Subscribe) {
                p.subscription_identifiers.truncate(1);
            }
            if p.authentication_method.is_none() {
                p.authentication_data = None;
            }
            p
        })
        .boxed()
}

fn packet_props(packet: PacketType, version: ProtocolVersion) -> BoxedStrategy<PacketProperties> {
    properties(PropertyContext::Packet(packet), version)
        .prop_map(PacketProperties::from)
        .boxed()
}

// ---------------------------------------------------------------- packet strategies

fn will(version: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        bytes(),
        qos(),
        any::<bool>(),
        properties(PropertyContext::Will, version),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties: properties.into(),
        })
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        strict_string(),
        opt(will(version)),
        opt(strict_string()),
        opt(bytes()),
        packet_props(PacketType::Connect, version),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                let password = if version.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        reason(PacketType::ConnAck, version),
        packet_props(PacketType::ConnAck, version),
    )
        .prop_map(|(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code,
                properties,
            })
        })
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        vec(any::<u8>(), 0..64),
        packet_props(PacketType::Publish, version),
    )
        .prop_map(
            |(dup, qos, retain, topic, aliased, packet_id, payload, properties)| {
                let at_most_once = qos == QoS::AtMostOnce;
                let topic = if aliased && properties.topic_alias.is_some() {
                    ByteString::new()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_most_once { 0 } else { packet_id },
                    payload: Bytes::from(payload),
                    properties,
                })
            },
        )
}

fn publish_ack(packet: PacketType, version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        reason(packet, version),
        packet_props(packet, version),
    )
        .prop_map(move |(packet_id, reason_code, properties)| {
            let ack = PublishAck {
                packet_id,
                reason_code,
                properties,
            };
            match packet {
                PacketType::PubAck => Packet::PubAck(ack),
                PacketType::PubRec => Packet::PubRec(ack),
                PacketType::PubRel => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        })
}

fn subscription_options(version: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    (qos(), any::<bool>(), any::<bool>(), retain_handling).prop_map(
        move |(qos, no_local, retain_as_published, retain_handling)| {
            if version.is_v5() {
                SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                }
            } else {
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                }
            }
        },
    )
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let request =
        (topic_filter(version), subscription_options(version)).prop_map(|(filter, mut options)| {
            if filter.starts_with("$share/") {
                options.no_local = false;
            }
            SubscriptionRequest { filter, options }
        });
    (
        packet_id(),
        vec(request, 1..4),
        packet_props(PacketType::Subscribe, version),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        vec(reason(PacketType::SubAck, version), 0..4),
        packet_props(PacketType::SubAck, version),
    )
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        vec(topic_filter(version), 1..4),
        packet_props(PacketType::Unsubscribe, version),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let count = if version.is_v5() { 0..4 } else { 0..1 };
    (
        packet_id(),
        vec(reason(PacketType::UnsubAck, version), count),
        packet_props(PacketType::UnsubAck, version),
    )
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
}

fn disconnect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        reason(PacketType::Disconnect, version),
        packet_props(PacketType::Disconnect, version),
    )
        .prop_map(|(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        })
}

fn auth() -> impl Strategy<Value = Packet> {
    (
        reason(PacketType::Auth, V5),
        packet_props(PacketType::Auth, V5),
    )
        .prop_map(|(reason_code, properties)| {
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        })
}

/// Any packet valid in `version`.
fn any_packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(version),
        connack(version),
        publish(version),
        publish_ack(PacketType::PubAck, version),
        publish_ack(PacketType::PubRec, version),
        publish_ack(PacketType::PubRel, version),
        publish_ack(PacketType::PubComp, version),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(version),
    ];
    if version.is_v5() {
        prop_oneof![14 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

// ---------------------------------------------------------------- properties under test

/// Encodes, checks `encoded_len`, decodes and compares.
fn check_roundtrip(packet: &Packet, version: ProtocolVersion) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(encoded_len(packet, version), Ok(buf.len()));
    let len = buf.len();
    let decoded = decode(&mut buf, version, len);
    prop_assert_eq!(decoded, Ok(Some(packet.clone())));
    prop_assert!(buf.is_empty());
    Ok(())
}

/// Decodes packets from `bytes` until `None` or an error; must not panic.
/// Whatever decodes must re-encode and decode to the same packet.
fn decode_all(bytes: &[u8], version: ProtocolVersion, max: usize) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(packet)) = decode(&mut buf, version, max) {
        let mut again = BytesMut::new();
        let encoded = encode(&packet, version, &mut again);
        prop_assert_eq!(encoded, Ok(()), "{:?}", packet);
        prop_assert_eq!(encoded_len(&packet, version), Ok(again.len()));
        prop_assert_eq!(decode(&mut again, version, usize::MAX), Ok(Some(packet)));
    }
    Ok(())
}

macro_rules! roundtrip_tests {
    ($($name:ident: $strategy:expr;)*) => {
        proptest! {
            $(
                #[test]
                fn $name(packet in $strategy) {
                    let version = if stringify!($name).starts_with("v5_") { V5 } else { V3 };
                    check_roundtrip(&packet, version)?;
                }
            )*
        }
    };
}

roundtrip_tests! {
    v311_connect: connect(V3);
    v311_connack: connack(V3);
    v311_publish: publish(V3);
    v311_puback: publish_ack(PacketType::PubAck, V3);
    v311_pubrec: publish_ack(PacketType::PubRec, V3);
    v311_pubrel: publish_ack(PacketType::PubRel, V3);
    v311_pubcomp: publish_ack(PacketType::PubComp, V3);
    v311_subscribe: subscribe(V3);
    v311_suback: suback(V3);
    v311_unsubscribe: unsubscribe(V3);
    v311_unsuback: unsuback(V3);
    v311_pingreq: Just(Packet::PingReq);
    v311_pingresp: Just(Packet::PingResp);
    v311_disconnect: disconnect(V3);
    v5_connect: connect(V5);
    v5_connack: connack(V5);
    v5_publish: publish(V5);
    v5_puback: publish_ack(PacketType::PubAck, V5);
    v5_pubrec: publish_ack(PacketType::PubRec, V5);
    v5_pubrel: publish_ack(PacketType::PubRel, V5);
    v5_pubcomp: publish_ack(PacketType::PubComp, V5);
    v5_subscribe: subscribe(V5);
    v5_suback: suback(V5);
    v5_unsubscribe: unsubscribe(V5);
    v5_unsuback: unsuback(V5);
    v5_pingreq: Just(Packet::PingReq);
    v5_pingresp: Just(Packet::PingResp);
    v5_disconnect: disconnect(V5);
    v5_auth: auth();
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(V3), Just(V5)]
}

fn packet_with_version() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), any_packet(v)))
}

/// One edit of an encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::Set(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
        Mutation::Remove(i) => {
            bytes.remove(i.index(bytes.len()));
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
    }
}

proptest! {
    /// Any packet of either version round-trips (mixed strategy).
    #[test]
    fn any_packet_roundtrips((version, packet) in packet_with_version()) {
        check_roundtrip(&packet, version)?;
    }

    /// Several packets back to back decode one at a time, in order.
    #[test]
    fn back_to_back((version, packets) in version().prop_flat_map(|v| (Just(v), vec(any_packet(v), 1..5)))) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            encode(packet, version, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        for packet in packets {
            prop_assert_eq!(decode(&mut buf, version, usize::MAX), Ok(Some(packet)));
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decode(&mut buf, version, usize::MAX), Ok(None));
    }

    /// Feeding an encoding one byte at a time yields `None` until the last byte.
    #[test]
    fn byte_by_byte((version, packet) in packet_with_version()) {
        let mut wire = BytesMut::new();
        encode(&packet, version, &mut wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut buf = BytesMut::new();
        for (index, byte) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let result = decode(&mut buf, version, usize::MAX);
            if index + 1 < wire.len() {
                prop_assert_eq!(result, Ok(None));
                prop_assert_eq!(buf.len(), index + 1);
            } else {
                prop_assert_eq!(result, Ok(Some(packet.clone())));
                prop_assert!(buf.is_empty());
            }
        }
    }

    /// Arbitrary bytes never make decode panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), max in 0usize..2048) {
        decode_all(&bytes, V3, max)?;
        decode_all(&bytes, V5, max)?;
        decode_all(&bytes, V5, usize::MAX)?;
    }

    /// Arbitrary bytes behind a plausible first byte never make decode panic.
    #[test]
    fn arbitrary_bodies_never_panic(first in any::<u8>(), body in vec(any::<u8>(), 0..200)) {
        let mut bytes = vec![first, body.len() as u8 & 0x7F];
        bytes.extend_from_slice(&body);
        decode_all(&bytes, V3, usize::MAX)?;
        decode_all(&bytes, V5, usize::MAX)?;
    }

    /// Mutated valid encodings never make decode panic; whatever still
    /// decodes re-encodes to an equal packet.
    #[test]
    fn mutated_encodings_never_panic(
        (version, packet) in packet_with_version(),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut wire = BytesMut::new();
        encode(&packet, version, &mut wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut bytes = wire.to_vec();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        decode_all(&bytes, version, usize::MAX)?;
        let other = if version.is_v5() { V3 } else { V5 };
        decode_all(&bytes, other, usize::MAX)?;
    }
}

// ---------------------------------------------------------------- encode errors

#[test]
fn encode_errors() {
    let mut buf = BytesMut::new();
    let publish = |qos, packet_id| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: "t".into(),
            packet_id,
            payload: Bytes::new(),
            properties: PacketProperties::new(),
        })
    };
    for version in [V3, V5] {
        assert_eq!(
            encode(&publish(QoS::AtLeastOnce, 0), version, &mut buf),
            Err(EncodeError::ZeroPacketId)
        );
        assert_eq!(
            encoded_len(&publish(QoS::ExactlyOnce, 0), version),
            Err(EncodeError::ZeroPacketId)
        );
        assert!(encode(&publish(QoS::AtMostOnce, 0), version, &mut BytesMut::new()).is_ok());
        for packet in [
            Packet::PubAck(PublishAck::success(0)),
            Packet::PubRec(PublishAck::success(0)),
            Packet::PubRel(PublishAck::success(0)),
            Packet::PubComp(PublishAck::success(0)),
            Packet::Subscribe(Subscribe {
                packet_id: 0,
                filters: vec![SubscriptionRequest {
                    filter: "a".into(),
                    options: SubscriptionOptions::default(),
                }],
                properties: PacketProperties::new(),
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 0,
                filters: vec!["a".into()],
                properties: PacketProperties::new(),
            }),
            Packet::SubAck(SubAck {
                packet_id: 0,
                reason_codes: vec![ReasonCode::Success],
                properties: PacketProperties::new(),
            }),
            Packet::UnsubAck(UnsubAck {
                packet_id: 0,
                reason_codes: vec![],
                properties: PacketProperties::new(),
            }),
        ] {
            assert_eq!(
                encode(&packet, version, &mut buf),
                Err(EncodeError::ZeroPacketId)
            );
        }
        let long = ByteString::from("x".repeat(65_536));
        let Packet::Publish(mut p) = publish(QoS::AtMostOnce, 0) else {
            unreachable!()
        };
        p.topic = long.clone();
        assert!(matches!(
            encode(&Packet::Publish(p), version, &mut buf),
            Err(EncodeError::FieldTooLong(_))
        ));
        let connect = Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: Some(Will {
                topic: "w".into(),
                payload: Bytes::from(vec![0; 65_536]),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: PacketProperties::new(),
            }),
            username: None,
            password: None,
            properties: PacketProperties::new(),
        };
        assert!(matches!(
            encode(&Packet::Connect(Box::new(connect)), version, &mut buf),
            Err(EncodeError::FieldTooLong(_))
        ));
    }
    // A long property string on 5.0; properties are ignored on 3.1.1.
    let ack = Packet::PubAck(PublishAck {
        packet_id: 1,
        reason_code: ReasonCode::Success,
        properties: Properties {
            reason_string: Some(ByteString::from("x".repeat(65_536))),
            ..Properties::default()
        }
        .into(),
    });
    assert!(matches!(
        encode(&ack, V5, &mut buf),
        Err(EncodeError::FieldTooLong(_))
    ));
    assert_eq!(encoded_len(&ack, V3), Ok(4));
    // AUTH does not exist in 3.1.1.
    let auth = Packet::Auth(Auth {
        reason_code: ReasonCode::Success,
        properties: PacketProperties::new(),
    });
    assert_eq!(
        encode(&auth, V3, &mut buf),
        Err(EncodeError::UnsupportedInVersion(PacketType::Auth))
    );
    // Nothing was written by any failing call.
    assert!(buf.is_empty());
    // Out-of-range values.
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscriptionRequest {
            filter: "a".into(),
            options: SubscriptionOptions::default(),
        }],
        properties: Properties {
            subscription_identifiers: vec![MAX_VARIABLE_INT + 1],
            ..Properties::default()
        }
        .into(),
    });
    assert!(matches!(
        encode(&sub, V5, &mut buf),
        Err(EncodeError::InvalidValue(_))
    ));
    let Packet::Publish(mut p) = publish(QoS::AtMostOnce, 0) else {
        unreachable!()
    };
    p.dup = true;
    assert!(matches!(
        encode(&Packet::Publish(p), V5, &mut buf),
        Err(EncodeError::InvalidValue(_))
    ));
    // A packet larger than the largest remaining length.
    let Packet::Publish(mut p) = publish(QoS::AtMostOnce, 0) else {
        unreachable!()
    };
    p.payload = Bytes::from(vec![0; MAX_VARIABLE_INT as usize]);
    assert_eq!(
        encoded_len(&Packet::Publish(p), V3),
        Err(EncodeError::PacketTooLarge)
    );
    assert!(buf.is_empty());
}

#[test]
fn v311_encoding_maps_codes() {
    let mut buf = BytesMut::new();
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: ReasonCode::Banned,
        properties: PacketProperties::new(),
    });
    encode(&connack, V3, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0x20, 0x02, 0x00, 0x05]);
    buf.clear();
    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::NotAuthorized, ReasonCode::GrantedQoS2],
        properties: Properties {
            reason_string: Some("ignored".into()),
            ..Properties::default()
        }
        .into(),
    });
    encode(&suback, V3, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0x90, 0x04, 0x00, 0x01, 0x80, 0x02]);
    buf.clear();
    let disconnect = Packet::Disconnect(Disconnect::new(ReasonCode::ServerShuttingDown));
    encode(&disconnect, V3, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0xE0, 0x00]);
}
