//! Inbound and outbound QoS flows, flow control, queueing, expiry and size limits.

use super::*;
use myriad_mqtt::PacketType;

#[test]
fn qos0_inbound_is_not_acknowledged() {
    let mut h = H::new();
    let sub = subscriber(&mut h, "s", "t", QoS::ExactlyOnce);
    let c = h.connect(v5("p"));
    h.publish(c, msg("t", "x"));
    h.assert_silent(c);
    let publish = h.one_publish(sub);
    assert_eq!((publish.qos, publish.packet_id), (QoS::AtMostOnce, 0));
    assert_eq!(h.broker.stats().messages_received, 1);
    assert_eq!(h.broker.stats().messages_sent, 1);
}

#[test]
fn qos1_puback_reports_no_matching_subscribers_v5() {
    let mut h = H::new();
    let c = h.connect(v5("p"));
    h.publish(c, msg_q("t", "x", QoS::AtLeastOnce, 1));
    assert_eq!(
        h.packets(c),
        vec![Packet::PubAck(ack(1, ReasonCode::NoMatchingSubscribers))]
    );
    let sub = subscriber(&mut h, "s", "t", QoS::AtLeastOnce);
    h.publish(c, msg_q("t", "y", QoS::AtLeastOnce, 2));
    assert_eq!(
        h.packets(c),
        vec![Packet::PubAck(ack(2, ReasonCode::Success))]
    );
    assert_eq!(h.payloads(sub), vec!["y"]);
}

#[test]
fn qos1_puback_is_success_on_v311_without_subscribers() {
    let mut h = H::new();
    let c = h.connect(v311("p"));
    h.publish(c, msg_q("t", "x", QoS::AtLeastOnce, 1));
    assert_eq!(
        h.packets(c),
        vec![Packet::PubAck(ack(1, ReasonCode::Success))]
    );
}

#[test]
fn qos2_inbound_pubrec_pubrel_pubcomp() {
    let mut h = H::new();
    let sub = subscriber(&mut h, "s", "t", QoS::ExactlyOnce);
    let c = h.connect(v5("p"));
    h.publish(c, msg_q("t", "x", QoS::ExactlyOnce, 7));
    assert_eq!(
        h.packets(c),
        vec![Packet::PubRec(ack(7, ReasonCode::Success))]
    );
    // Routed at PUBLISH time (method A of the specification).
    assert_eq!(h.payloads(sub), vec!["x"]);
    h.pubrel(c, 7);
    assert_eq!(
        h.packets(c),
        vec![Packet::PubComp(ack(7, ReasonCode::Success))]
    );
    // Without subscribers the PUBREC says so.
    h.publish(c, msg_q("nobody", "x", QoS::ExactlyOnce, 8));
    assert_eq!(
        h.packets(c),
        vec![Packet::PubRec(ack(8, ReasonCode::NoMatchingSubscribers))]
    );
}

#[test]
fn qos2_resend_before_pubrel_is_not_routed_twice() {
    let mut h = H::new();
    let sub = subscriber(&mut h, "s", "t", QoS::AtMostOnce);
    let c = h.connect(v5("p"));
    h.publish(c, msg_q("t", "once", QoS::ExactlyOnce, 1));
    assert_eq!(
        h.packets(c),
        vec![Packet::PubRec(ack(1, ReasonCode::Success))]
    );
    assert_eq!(h.payloads(sub), vec!["once"]);

    let resend = Publish {
        dup: true,
        ..msg_q("t", "once", QoS::ExactlyOnce, 1)
    };
    h.publish(c, resend);
    assert_eq!(
        h.packets(c),
        vec![Packet::PubRec(ack(1, ReasonCode::Success))]
    );
    h.assert_silent(sub);

    h.pubrel(c, 1);
    assert_eq!(
        h.packets(c),
        vec![Packet::PubComp(ack(1, ReasonCode::Success))]
    );
    // After PUBREL the identifier is free: a new message with it is routed.
    h.publish(c, msg_q("t", "twice", QoS::ExactlyOnce, 1));
    assert_eq!(
        h.packets(c),
        vec![Packet::PubRec(ack(1, ReasonCode::Success))]
    );
    assert_eq!(h.payloads(sub), vec!["twice"]);
}

#[test]
fn qos2_inbound_state_survives_reconnect() {
    let mut h = H::new();
    let sub = subscriber(&mut h, "s", "t", QoS::AtMostOnce);
    let c = h.connect(v5("p").resume().expiry(100));
    h.publish(c, msg_q("t", "once", QoS::ExactlyOnce, 3));
    h.packets(c);
    assert_eq!(h.payloads(sub), vec!["once"]);
    h.lose(c);
    let c = h.connect(v5("p").resume().expiry(100));
    let resend = Publish {
        dup: true,
        ..msg_q("t", "once", QoS::ExactlyOnce, 3)
    };
    h.publish(c, resend);
    assert_eq!(
        h.packets(c),
        vec![Packet::PubRec(ack(3, ReasonCode::Success))]
    );
    h.assert_silent(sub);
    h.pubrel(c, 3);
    assert_eq!(
        h.packets(c),
        vec![Packet::PubComp(ack(3, ReasonCode::Success))]
    );
}

#[test]
fn pubrel_for_unknown_id() {
    let mut h = H::new();
    let c5 = h.connect(v5("a"));
    h.pubrel(c5, 9);
    assert_eq!(
        h.packets(c5),
        vec![Packet::PubComp(ack(
            9,
            ReasonCode::PacketIdentifierNotFound
        ))]
    );
    // 3.1.1 has no reason codes: PUBCOMP all the same.
    let c3 = h.connect(v311("b"));
    h.pubrel(c3, 9);
    assert_eq!(
        h.packets(c3),
        vec![Packet::PubComp(ack(9, ReasonCode::Success))]
    );
}

#[test]
fn outbound_qos1_flow() {
    let mut h = H::new();
    let sub = subscriber(&mut h, "s", "t", QoS::AtLeastOnce);
    h.inject(msg_q("t", "a", QoS::AtLeastOnce, 0));
    let publish = h.one_publish(sub);
    assert_eq!(
        publish,
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 1,
            payload: Bytes::from_static(b"a"),
            properties: PacketProperties::new(),
        }
    );
    h.puback(sub, 1);
    h.assert_silent(sub);
    h.inject(msg_q("t", "b", QoS::AtLeastOnce, 0));
    assert_eq!(h.one_publish(sub).packet_id, 2);
    // A PUBACK for an unknown identifier is ignored.
    h.puback(sub, 77);
    h.assert_silent(sub);
}

#[test]
fn outbound_qos2_flow() {
    let mut h = H::new();
    let sub = subscriber(&mut h, "s", "t", QoS::ExactlyOnce);
    h.inject(msg_q("t", "a", QoS::ExactlyOnce, 0));
    let publish = h.one_publish(sub);
    assert_eq!(
        (publish.qos, publish.packet_id, publish.dup),
        (QoS::ExactlyOnce, 1, false)
    );
    h.pubrec(sub, 1);
    assert_eq!(
        h.packets(sub),
        vec![Packet::PubRel(ack(1, ReasonCode::Success))]
    );
    // A repeated PUBREC gets the PUBREL again.
    h.pubrec(sub, 1);
    assert_eq!(
        h.packets(sub),
        vec![Packet::PubRel(ack(1, ReasonCode::Success))]
    );
    h.pubcomp(sub, 1);
    h.assert_silent(sub);
    // PUBREC for an identifier not in flight.
    h.pubrec(sub, 1);
    assert_eq!(
        h.packets(sub),
        vec![Packet::PubRel(ack(1, ReasonCode::PacketIdentifierNotFound))]
    );
}

#[test]
fn outbound_qos2_refused_by_pubrec_error_ends_the_flow() {
    let mut h = H::new();
    let sub = h.connect(v5("s").receive_maximum(1));
    h.subscribe(sub, "t", QoS::ExactlyOnce);
    h.inject(msg_q("t", "a", QoS::ExactlyOnce, 0));
    h.inject(msg_q("t", "b", QoS::ExactlyOnce, 0));
    assert_eq!(h.payloads(sub), vec!["a"]);
    h.packet(
        sub,
        Packet::PubRec(ack(1, ReasonCode::ImplementationSpecificError)),
    );
    // No PUBREL; the window opens for the next message.
    let next = h.one_publish(sub);
    assert_eq!((payload(&next), next.packet_id), ("b".into(), 2));
}

#[test]
fn qos_is_downgraded_to_the_subscription() {
    let mut h = H::new();
    let s0 = subscriber(&mut h, "s0", "t", QoS::AtMostOnce);
    let s1 = subscriber(&mut h, "s1", "t", QoS::AtLeastOnce);
    let s2 = subscriber(&mut h, "s2", "t", QoS::ExactlyOnce);
    h.inject(msg_q("t", "x", QoS::ExactlyOnce, 0));
    let qos_and_id = |p: Publish| (p.qos, p.packet_id);
    assert_eq!(qos_and_id(h.one_publish(s0)), (QoS::AtMostOnce, 0));
    assert_eq!(qos_and_id(h.one_publish(s1)), (QoS::AtLeastOnce, 1));
    assert_eq!(qos_and_id(h.one_publish(s2)), (QoS::ExactlyOnce, 1));
    // Never upgraded.
    h.inject(msg_q("t", "y", QoS::AtLeastOnce, 0));
    assert_eq!(qos_and_id(h.one_publish(s2)), (QoS::AtLeastOnce, 2));
    h.inject(msg("t", "z"));
    assert_eq!(qos_and_id(h.one_publish(s2)), (QoS::AtMostOnce, 0));
}

#[test]
fn outbound_receive_maximum_limits_in_flight_messages() {
    let mut h = H::new();
    let sub = h.connect(v5("s").receive_maximum(2));
    h.subscribe(sub, "t", QoS::ExactlyOnce);
    h.inject(msg_q("t", "1", QoS::AtLeastOnce, 0));
    h.inject(msg_q("t", "2", QoS::ExactlyOnce, 0));
    h.inject(msg_q("t", "3", QoS::AtLeastOnce, 0));
    let first = h.publishes(sub);
    assert_eq!(
        first.iter().map(|p| p.packet_id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    h.pubrec(sub, 2);
    // PUBREC does not free the slot: the QoS 2 flow is still open.
    assert_eq!(
        h.packets(sub),
        vec![Packet::PubRel(ack(2, ReasonCode::Success))]
    );
    h.puback(sub, 1);
    let third = h.one_publish(sub);
    assert_eq!((payload(&third), third.packet_id), ("3".into(), 3));
    h.inject(msg_q("t", "4", QoS::AtLeastOnce, 0));
    h.assert_silent(sub);
    h.pubcomp(sub, 2);
    assert_eq!(h.payloads(sub), vec!["4"]);
}

#[test]
fn qos0_waits_behind_blocked_messages_to_keep_order() {
    let mut h = H::new();
    let sub = h.connect(v5("s").receive_maximum(1));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.inject(msg_q("t", "1", QoS::AtLeastOnce, 0));
    h.inject(msg_q("t", "2", QoS::AtLeastOnce, 0));
    h.inject(msg("t", "3"));
    assert_eq!(h.payloads(sub), vec!["1"]);
    h.puback(sub, 1);
    assert_eq!(h.payloads(sub), vec!["2", "3"]);
}

#[test]
fn inbound_receive_maximum_exceeded() {
    let mut h = H::with(|c| c.receive_maximum = 2);
    let c = h.connect(v5("p"));
    for id in 1..=2 {
        h.publish(c, msg_q("t", "x", QoS::ExactlyOnce, id));
    }
    assert_eq!(h.packets(c).len(), 2);
    // Releasing one makes room for one more.
    h.pubrel(c, 1);
    assert_eq!(
        h.packets(c),
        vec![Packet::PubComp(ack(1, ReasonCode::Success))]
    );
    h.publish(c, msg_q("t", "x", QoS::ExactlyOnce, 3));
    assert_eq!(
        h.packets(c),
        vec![Packet::PubRec(ack(3, ReasonCode::NoMatchingSubscribers))]
    );
    // QoS 1 is acknowledged at once and does not count.
    h.publish(c, msg_q("t", "x", QoS::AtLeastOnce, 4));
    assert_eq!(h.packets(c).len(), 1);
    h.publish(c, msg_q("t", "x", QoS::ExactlyOnce, 5));
    h.expect_disconnect(c, ReasonCode::ReceiveMaximumExceeded);
    assert_eq!(h.broker.connection_count(), 0);
}

#[test]
fn redelivery_on_resume_with_dup_in_original_order() {
    let mut h = H::new();
    let sub = h.connect(v5("s").resume().expiry(100));
    h.subscribe(sub, "t", QoS::ExactlyOnce);
    h.inject(msg_q("t", "a", QoS::AtLeastOnce, 0));
    h.inject(msg_q("t", "b", QoS::ExactlyOnce, 0));
    h.inject(msg_q("t", "c", QoS::ExactlyOnce, 0));
    h.inject(msg_q("t", "d", QoS::ExactlyOnce, 0));
    assert_eq!(h.payloads(sub), vec!["a", "b", "c", "d"]);
    h.pubrec(sub, 3);
    assert_eq!(
        h.packets(sub),
        vec![Packet::PubRel(ack(3, ReasonCode::Success))]
    );
    h.pubrec(sub, 4);
    h.pubcomp(sub, 4);
    h.packets(sub);
    h.lose(sub);

    let (sub, connack) = h.connect_ack(v5("s").resume().expiry(100));
    assert!(connack.session_present);
    let resent = h.packets(sub);
    let dup = |body: &str, qos, packet_id| {
        Packet::Publish(Publish {
            dup: true,
            ..msg_q("t", body, qos, packet_id)
        })
    };
    assert_eq!(
        resent,
        vec![
            dup("a", QoS::AtLeastOnce, 1),
            dup("b", QoS::ExactlyOnce, 2),
            Packet::PubRel(ack(3, ReasonCode::Success)),
        ]
    );
    // The flows complete on the new connection.
    h.puback(sub, 1);
    h.pubrec(sub, 2);
    assert_eq!(
        h.packets(sub),
        vec![Packet::PubRel(ack(2, ReasonCode::Success))]
    );
    h.pubcomp(sub, 2);
    h.pubcomp(sub, 3);
    h.assert_silent(sub);
    h.lose(sub);
    let sub = h.connect(v5("s").resume().expiry(100));
    h.assert_silent(sub);
}

#[test]
fn offline_persistent_session_gets_queued_messages_on_reconnect() {
    let mut h = H::new();
    let sub = h.connect(v5("s").resume().expiry(100));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.lose(sub);
    let p = h.connect(v5("p"));
    h.publish(p, msg("t", "1"));
    h.publish(p, msg_q("t", "2", QoS::AtLeastOnce, 1));
    // The offline subscription counts as a match.
    assert_eq!(
        h.packets(p),
        vec![Packet::PubAck(ack(1, ReasonCode::Success))]
    );
    h.inject(msg_q("t", "3", QoS::ExactlyOnce, 0));

    let (sub, connack) = h.connect_ack(v5("s").resume().expiry(100));
    assert!(connack.session_present);
    let got: Vec<_> = h
        .publishes(sub)
        .into_iter()
        .map(|p| (payload(&p), p.qos, p.packet_id, p.dup))
        .collect();
    assert_eq!(
        got,
        vec![
            ("1".into(), QoS::AtMostOnce, 0, false),
            ("2".into(), QoS::AtLeastOnce, 1, false),
            ("3".into(), QoS::AtLeastOnce, 2, false),
        ]
    );
}

#[test]
fn full_queue_drops_oldest_qos0_first() {
    let mut h = H::with(|c| c.max_queued_messages = 3);
    let sub = h.connect(v5("s").resume().expiry(100));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.lose(sub);
    h.inject(msg_q("t", "a", QoS::AtLeastOnce, 0));
    h.inject(msg("t", "b"));
    h.inject(msg_q("t", "c", QoS::AtLeastOnce, 0));
    assert_eq!(h.broker.stats().messages_dropped, 0);
    h.inject(msg_q("t", "d", QoS::AtLeastOnce, 0));
    assert_eq!(h.broker.stats().messages_dropped, 1);
    // Only QoS 1 left: the oldest goes.
    h.inject(msg_q("t", "e", QoS::AtLeastOnce, 0));
    assert_eq!(h.broker.stats().messages_dropped, 2);
    // A QoS 0 newcomer does not push out QoS 1 messages.
    h.inject(msg("t", "f"));
    assert_eq!(h.broker.stats().messages_dropped, 3);
    let sub = h.connect(v5("s").resume().expiry(100));
    assert_eq!(h.payloads(sub), vec!["c", "d", "e"]);
}

#[test]
fn internal_sessions_queue_within_their_own_limits() {
    // The network limit is 2 messages, the platform's own clients may queue 4.
    let mut h = H::with(|c| {
        c.max_queued_messages = 2;
        c.internal_max_queued_messages = 4;
    });
    let device = h.connect(v5("dev").resume().expiry(100));
    let pipeline = h.connect(v5("$myriad/pipeline/p").resume().expiry(100));
    for session in [device, pipeline] {
        h.subscribe(session, "t", QoS::AtLeastOnce);
        h.lose(session);
    }
    for i in 0..5 {
        h.inject(msg_q("t", &i.to_string(), QoS::AtLeastOnce, 0));
    }
    // 3 dropped for the device, 1 for the pipeline.
    assert_eq!(h.broker.stats().messages_dropped, 4);
    let device = h.connect(v5("dev").resume().expiry(100));
    assert_eq!(h.payloads(device), vec!["3", "4"]);
    let pipeline = h.connect(v5("$myriad/pipeline/p").resume().expiry(100));
    assert_eq!(h.payloads(pipeline), vec!["1", "2", "3", "4"]);
    h.broker.check_consistency().unwrap();
}

#[test]
fn message_expiry_is_decremented_on_delivery() {
    let mut h = H::new();
    let sub = h.connect(v5("s").resume().expiry(1000));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    // Delivered at once: the interval is passed on unchanged.
    let mut expiring = msg_q("t", "now", QoS::AtLeastOnce, 0);
    expiring.properties.message_expiry_interval = Some(60);
    h.inject(expiring.clone());
    assert_eq!(
        h.one_publish(sub).properties.message_expiry_interval,
        Some(60)
    );
    h.puback(sub, 1);
    h.lose(sub);

    expiring.payload = Bytes::from_static(b"later");
    h.inject(expiring);
    h.advance(20);
    let sub = h.connect(v5("s").resume().expiry(1000));
    let publish = h.one_publish(sub);
    assert_eq!(payload(&publish), "later");
    assert_eq!(publish.properties.message_expiry_interval, Some(40));
}

#[test]
fn expired_queued_message_is_not_delivered() {
    let mut h = H::new();
    let sub = h.connect(v5("s").resume().expiry(1000));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.lose(sub);
    let mut short = msg_q("t", "short", QoS::AtLeastOnce, 0);
    short.properties.message_expiry_interval = Some(10);
    let mut long = msg_q("t", "long", QoS::AtLeastOnce, 0);
    long.properties.message_expiry_interval = Some(100);
    h.inject(short);
    h.inject(long);
    h.inject(msg("t", "forever"));
    h.advance(11);
    let sub = h.connect(v5("s").resume().expiry(1000));
    let publishes = h.publishes(sub);
    let got: Vec<_> = publishes
        .iter()
        .map(|p| (payload(p), p.properties.message_expiry_interval))
        .collect();
    assert_eq!(
        got,
        vec![("long".into(), Some(89)), ("forever".into(), None)]
    );
    assert_eq!(h.broker.stats().messages_expired, 1);
}

#[test]
fn client_maximum_packet_size_is_respected() {
    let mut h = H::new();
    let sub = h.connect(v5("s").max_packet_size(100));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.inject(msg("t", &"x".repeat(200)));
    h.inject(msg_q("t", &"y".repeat(200), QoS::AtLeastOnce, 0));
    h.assert_silent(sub);
    assert_eq!(h.broker.stats().messages_too_large, 2);
    h.inject(msg_q("t", "small", QoS::AtLeastOnce, 0));
    let publish = h.one_publish(sub);
    assert_eq!(payload(&publish), "small");
    // The dropped QoS 1 message left nothing in flight to resend.
    h.puback(sub, publish.packet_id);
    h.assert_silent(sub);
    // Exactly at the limit still fits: header 2 + topic 3 + id 2 + properties 1 + payload 92.
    h.inject(msg_q("t", &"z".repeat(92), QoS::AtLeastOnce, 0));
    assert_eq!(h.publishes(sub).len(), 1);
    h.inject(msg_q("t", &"z".repeat(93), QoS::AtLeastOnce, 0));
    h.assert_silent(sub);
    assert_eq!(h.broker.stats().messages_too_large, 3);
}

#[test]
fn queue_byte_bound_drops_oldest() {
    let mut h = H::with(|c| c.max_queued_bytes = 10);
    let sub = h.connect(v5("s").resume().expiry(100));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.lose(sub);
    // Each message weighs its payload plus its topic: 4 + 1 bytes.
    for body in ["aaaa", "bbbb", "cccc"] {
        h.inject(msg_q("t", body, QoS::AtLeastOnce, 0));
    }
    assert_eq!(h.broker.stats().messages_dropped, 1);
    let sub = h.connect(v5("s").resume().expiry(100));
    assert_eq!(h.payloads(sub), vec!["bbbb", "cccc"]);
}

#[test]
fn oversize_inflight_message_is_not_resent_to_a_smaller_client() {
    let mut h = H::new();
    let sub = h.connect(v5("s").resume().expiry(100));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.inject(msg_q("t", &"x".repeat(200), QoS::AtLeastOnce, 0));
    h.inject(msg_q("t", "small", QoS::AtLeastOnce, 0));
    assert_eq!(h.publishes(sub).len(), 2);
    h.lose(sub);
    // MQTT-3.1.2-25: too large for the new Maximum Packet Size, the message is
    // discarded as if it had been delivered; the small one is resent.
    let sub = h.connect(v5("s").resume().expiry(100).max_packet_size(100));
    let resent = h.publishes(sub);
    assert_eq!(resent.len(), 1);
    assert_eq!(
        (payload(&resent[0]), resent[0].packet_id, resent[0].dup),
        ("small".into(), 2, true)
    );
    assert_eq!(h.broker.stats().messages_too_large, 1);
    h.puback(sub, 2);
    h.lose(sub);
    let sub = h.connect(v5("s").resume().expiry(100));
    h.assert_silent(sub);
}

#[test]
fn wrong_acknowledgement_types_are_protocol_errors() {
    // PUBACK or PUBCOMP for a QoS 2 flow awaiting PUBREC.
    for wrong in [PacketType::PubAck, PacketType::PubComp] {
        let mut h = H::new();
        let sub = h.connect(v5("s"));
        h.subscribe(sub, "t", QoS::ExactlyOnce);
        h.inject(msg_q("t", "a", QoS::ExactlyOnce, 0));
        assert_eq!(h.payloads(sub), vec!["a"]);
        match wrong {
            PacketType::PubAck => h.puback(sub, 1),
            _ => h.pubcomp(sub, 1),
        }
        h.expect_disconnect(sub, ReasonCode::ProtocolError);
    }
    // PUBREC or PUBCOMP for a QoS 1 flow.
    for wrong in [PacketType::PubRec, PacketType::PubComp] {
        let mut h = H::new();
        let sub = h.connect(v5("s"));
        h.subscribe(sub, "t", QoS::AtLeastOnce);
        h.inject(msg_q("t", "a", QoS::AtLeastOnce, 0));
        assert_eq!(h.payloads(sub), vec!["a"]);
        match wrong {
            PacketType::PubRec => h.pubrec(sub, 1),
            _ => h.pubcomp(sub, 1),
        }
        h.expect_disconnect(sub, ReasonCode::ProtocolError);
    }
    // PUBACK after PUBREL (the flow awaits PUBCOMP).
    let mut h = H::new();
    let sub = h.connect(v5("s"));
    h.subscribe(sub, "t", QoS::ExactlyOnce);
    h.inject(msg_q("t", "a", QoS::ExactlyOnce, 0));
    assert_eq!(h.payloads(sub), vec!["a"]);
    h.pubrec(sub, 1);
    assert_eq!(
        h.packets(sub),
        vec![Packet::PubRel(ack(1, ReasonCode::Success))]
    );
    h.puback(sub, 1);
    h.expect_disconnect(sub, ReasonCode::ProtocolError);
}

#[test]
fn acknowledgements_for_ids_not_in_flight_are_ignored() {
    let mut h = H::new();
    let sub = h.connect(v5("s").receive_maximum(1));
    h.subscribe(sub, "t", QoS::ExactlyOnce);
    h.inject(msg_q("t", "a", QoS::ExactlyOnce, 0));
    h.inject(msg_q("t", "b", QoS::ExactlyOnce, 0));
    assert_eq!(h.payloads(sub), vec!["a"]);
    // Late duplicates for an id nobody uses: no error.
    h.puback(sub, 9);
    h.pubcomp(sub, 9);
    h.assert_silent(sub);
    h.pubrec(sub, 1);
    assert_eq!(
        h.packets(sub),
        vec![Packet::PubRel(ack(1, ReasonCode::Success))]
    );
    h.pubcomp(sub, 1);
    assert_eq!(h.payloads(sub), vec!["b"]);
}
