//! SUBSCRIBE / UNSUBSCRIBE: matching, options, shared groups, refusals.

use myriad_mqtt::RetainHandling;

use super::*;

#[test]
fn suback_grants_requested_qos() {
    let mut h = H::new();
    let c = h.connect(v5("c"));
    let codes = h.subscribe_with(
        c,
        &[
            ("a", opts(QoS::AtMostOnce)),
            ("b", opts(QoS::AtLeastOnce)),
            ("c", opts(QoS::ExactlyOnce)),
        ],
        None,
    );
    assert_eq!(
        codes,
        vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2
        ]
    );
    assert_eq!(h.broker.subscription_count(), 3);
}

#[test]
fn wildcards_plus_and_hash() {
    let mut h = H::new();
    let plus = subscriber(&mut h, "plus", "a/+/c", QoS::AtMostOnce);
    let hash = subscriber(&mut h, "hash", "a/#", QoS::AtMostOnce);
    let all = subscriber(&mut h, "all", "#", QoS::AtMostOnce);
    let lead = subscriber(&mut h, "lead", "+/b/c", QoS::AtMostOnce);
    let exact = subscriber(&mut h, "exact", "a/b", QoS::AtMostOnce);
    for topic in ["a/b/c", "a", "x/b/c", "a/b", "a/b/c/d", "a//c"] {
        h.inject(msg(topic, topic));
    }
    assert_eq!(h.payloads(plus), vec!["a/b/c", "a//c"]);
    // `a/#` also matches the parent level `a`.
    assert_eq!(
        h.payloads(hash),
        vec!["a/b/c", "a", "a/b", "a/b/c/d", "a//c"]
    );
    assert_eq!(
        h.payloads(all),
        vec!["a/b/c", "a", "x/b/c", "a/b", "a/b/c/d", "a//c"]
    );
    assert_eq!(h.payloads(lead), vec!["a/b/c", "x/b/c"]);
    assert_eq!(h.payloads(exact), vec!["a/b"]);
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let mut h = H::new();
    let all = subscriber(&mut h, "all", "#", QoS::AtMostOnce);
    let plus = subscriber(&mut h, "plus", "+/x", QoS::AtMostOnce);
    let sys_all = subscriber(&mut h, "sys", "$SYS/#", QoS::AtMostOnce);
    let sys_plus = subscriber(&mut h, "sysplus", "$SYS/+", QoS::AtMostOnce);
    h.inject(msg("$SYS/x", "sys"));
    h.inject(msg("a/x", "plain"));
    assert_eq!(h.payloads(all), vec!["plain"]);
    assert_eq!(h.payloads(plus), vec!["plain"]);
    assert_eq!(h.payloads(sys_all), vec!["sys"]);
    assert_eq!(h.payloads(sys_plus), vec!["sys"]);
}

#[test]
fn overlapping_subscriptions_deliver_once_with_highest_qos_and_all_ids() {
    let mut h = H::new();
    let c = h.connect(v5("c"));
    h.subscribe_with(c, &[("a/+", opts(QoS::AtMostOnce))], Some(1));
    h.subscribe_with(c, &[("a/#", opts(QoS::ExactlyOnce))], Some(2));
    h.subscribe_with(c, &[("a/b", opts(QoS::AtLeastOnce))], None);
    h.inject(msg_q("a/b", "x", QoS::ExactlyOnce, 0));
    let mut publish = h.one_publish(c);
    assert_eq!((publish.qos, publish.packet_id), (QoS::ExactlyOnce, 1));
    publish.properties.subscription_identifiers.sort_unstable();
    assert_eq!(publish.properties.subscription_identifiers, vec![1, 2]);
}

#[test]
fn subscription_identifier_on_delivery() {
    let mut h = H::new();
    let with_id = h.connect(v5("a"));
    h.subscribe_with(with_id, &[("t", opts(QoS::AtMostOnce))], Some(42));
    let without = subscriber(&mut h, "b", "t", QoS::AtMostOnce);
    h.inject(msg("t", "x"));
    assert_eq!(
        h.one_publish(with_id).properties.subscription_identifiers,
        vec![42]
    );
    assert_eq!(
        h.one_publish(without).properties.subscription_identifiers,
        Vec::<u32>::new()
    );
    // Subscribing again without an identifier replaces the subscription and drops it.
    h.subscribe_with(with_id, &[("t", opts(QoS::AtMostOnce))], None);
    h.inject(msg("t", "y"));
    assert!(
        h.one_publish(with_id)
            .properties
            .subscription_identifiers
            .is_empty()
    );
}

#[test]
fn no_local() {
    let mut h = H::new();
    let local = h.connect(v5("local"));
    let no_local = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    h.subscribe_with(local, &[("t", no_local)], None);
    let plain = h.connect(v5("plain"));
    h.subscribe(plain, "t", QoS::AtMostOnce);
    h.publish(local, msg("t", "from local"));
    h.publish(plain, msg("t", "from plain"));
    assert_eq!(h.payloads(local), vec!["from plain"]);
    // Without No Local a client gets its own messages back.
    assert_eq!(h.payloads(plain), vec!["from local", "from plain"]);
}

#[test]
fn retain_as_published() {
    let mut h = H::new();
    let keep = h.connect(v5("keep"));
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..opts(QoS::AtMostOnce)
    };
    h.subscribe_with(keep, &[("t", rap)], None);
    let clear = subscriber(&mut h, "clear", "t", QoS::AtMostOnce);
    let v3 = h.connect(v311("v3"));
    h.subscribe(v3, "t", QoS::AtMostOnce);
    h.inject(retained("t", "r"));
    h.inject(msg("t", "n"));
    let flags = |ps: Vec<Publish>| ps.iter().map(|p| p.retain).collect::<Vec<_>>();
    assert_eq!(flags(h.publishes(keep)), vec![true, false]);
    assert_eq!(flags(h.publishes(clear)), vec![false, false]);
    // 3.1.1 (MQTT-3.3.1-9): RETAIN 0 on messages for established subscriptions.
    assert_eq!(flags(h.publishes(v3)), vec![false, false]);
}

#[test]
fn retain_handling_0_1_2() {
    let mut h = H::new();
    h.inject(retained("t", "r"));
    let c = h.connect(v5("c"));
    let with = |handling| SubscriptionOptions {
        retain_handling: handling,
        ..opts(QoS::AtMostOnce)
    };
    // 0: at every subscribe.
    h.subscribe_with(c, &[("t", with(RetainHandling::SendAtSubscribe))], None);
    assert_eq!(h.payloads(c), vec!["r"]);
    h.subscribe_with(c, &[("t", with(RetainHandling::SendAtSubscribe))], None);
    assert_eq!(h.payloads(c), vec!["r"]);
    // 1: only when the subscription is new.
    h.subscribe_with(c, &[("t", with(RetainHandling::SendIfNew))], None);
    h.assert_silent(c);
    h.subscribe_with(c, &[("+", with(RetainHandling::SendIfNew))], None);
    assert_eq!(h.payloads(c), vec!["r"]);
    // 2: never.
    h.subscribe_with(c, &[("#", with(RetainHandling::DoNotSend))], None);
    h.assert_silent(c);
}

#[test]
fn shared_subscription_round_robin() {
    let mut h = H::new();
    let a = subscriber(&mut h, "a", "$share/g/t/+", QoS::AtLeastOnce);
    let b = subscriber(&mut h, "b", "$share/g/t/+", QoS::AtLeastOnce);
    let plain = subscriber(&mut h, "plain", "t/+", QoS::AtMostOnce);
    let other_group = subscriber(&mut h, "o", "$share/h/t/#", QoS::AtMostOnce);
    for i in 1..=4 {
        h.inject(msg_q("t/x", &i.to_string(), QoS::AtLeastOnce, 0));
    }
    assert_eq!(h.payloads(a), vec!["1", "3"]);
    assert_eq!(h.payloads(b), vec!["2", "4"]);
    assert_eq!(h.payloads(plain), vec!["1", "2", "3", "4"]);
    assert_eq!(h.payloads(other_group), vec!["1", "2", "3", "4"]);
}

#[test]
fn shared_subscription_prefers_connected_members() {
    let mut h = H::new();
    let a = h.connect(v5("a").resume().expiry(100));
    h.subscribe(a, "$share/g/t", QoS::AtLeastOnce);
    let b = subscriber(&mut h, "b", "$share/g/t", QoS::AtLeastOnce);
    h.lose(a);
    for i in 1..=3 {
        h.inject(msg_q("t", &i.to_string(), QoS::AtLeastOnce, 0));
    }
    assert_eq!(h.payloads(b), vec!["1", "2", "3"]);
}

#[test]
fn shared_subscription_gets_no_retained_messages() {
    let mut h = H::new();
    h.inject(retained("t", "r"));
    let c = h.connect(v5("c"));
    assert_eq!(
        h.subscribe(c, "$share/g/t", QoS::AtLeastOnce),
        vec![ReasonCode::GrantedQoS1]
    );
    h.assert_silent(c);
    // Live retained publications reach it with RETAIN 0.
    h.inject(retained("t", "r2"));
    let publish = h.one_publish(c);
    assert_eq!((payload(&publish), publish.retain), ("r2".into(), false));
}

#[test]
fn no_local_on_shared_subscription_is_protocol_error() {
    let mut h = H::new();
    let c = h.connect(v5("c"));
    let options = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    h.packet(
        c,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscriptionRequest {
                filter: "$share/g/t".into(),
                options,
            }],
            properties: PacketProperties::new(),
        }),
    );
    h.expect_disconnect(c, ReasonCode::ProtocolError);
    assert_eq!(h.broker.connection_count(), 0);
}

#[test]
fn denied_subscriptions() {
    let mut h = H::with(|c| c.deny_subscribe = vec!["secret/#".into()]);
    let v3 = h.connect(v311("v3"));
    assert_eq!(
        h.subscribe_with(
            v3,
            &[
                ("secret/#", opts(QoS::AtLeastOnce)),
                ("open", opts(QoS::AtLeastOnce))
            ],
            None
        ),
        // 0x80 (Failure) on 3.1.1.
        vec![ReasonCode::UnspecifiedError, ReasonCode::GrantedQoS1]
    );
    let v5c = h.connect(v5("v5"));
    assert_eq!(
        h.subscribe_with(
            v5c,
            &[
                ("secret/#", opts(QoS::AtMostOnce)),
                ("secret/plans", opts(QoS::AtMostOnce)),
                ("$share/g/secret/#", opts(QoS::AtMostOnce)),
                ("secret/+", opts(QoS::AtMostOnce)),
            ],
            None
        ),
        vec![ReasonCode::UnspecifiedError; 4]
    );
    // Wider filters are granted, but never carry denied topics.
    assert_eq!(
        h.subscribe_with(
            v5c,
            &[
                ("#", opts(QoS::AtMostOnce)),
                ("+/plans", opts(QoS::AtMostOnce))
            ],
            None
        ),
        vec![ReasonCode::Success; 2]
    );
    assert_eq!(h.broker.subscription_count(), 3);
    h.inject(msg("secret/plans", "x"));
    h.assert_silent(v3);
    h.assert_silent(v5c);
    h.inject(msg("open/plans", "y"));
    assert_eq!(h.payloads(v5c), vec!["y"]);
}

#[test]
fn invalid_shared_filters() {
    let mut h = H::new();
    let c = h.connect(v5("c"));
    assert_eq!(
        h.subscribe_with(
            c,
            &[
                ("$share/g", opts(QoS::AtMostOnce)),
                ("$share//t", opts(QoS::AtMostOnce)),
                ("$share/g+/t", opts(QoS::AtMostOnce)),
                ("$share", opts(QoS::AtMostOnce)),
                ("$share/g/t", opts(QoS::AtLeastOnce)),
            ],
            None
        ),
        vec![
            ReasonCode::TopicFilterInvalid,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::GrantedQoS1,
        ]
    );
    assert_eq!(h.broker.subscription_count(), 1);
}

#[test]
fn unsubscribe_codes_and_no_delivery_after() {
    let mut h = H::new();
    let c = h.connect(v5("c"));
    h.subscribe(c, "t", QoS::AtMostOnce);
    h.subscribe(c, "$share/g/s", QoS::AtMostOnce);
    assert_eq!(
        h.unsubscribe(c, &["t", "u", "$share/g/s", "$share/h/s"]),
        vec![
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
        ]
    );
    assert_eq!(h.broker.subscription_count(), 0);
    h.inject(msg("t", "x"));
    h.inject(msg("s", "x"));
    h.assert_silent(c);
    assert_eq!(
        h.unsubscribe(c, &["t"]),
        vec![ReasonCode::NoSubscriptionExisted]
    );
}

#[test]
fn unsubscribe_survives_reconnect() {
    let mut h = H::new();
    let c = h.connect(v5("c").resume().expiry(100));
    h.subscribe(c, "t", QoS::AtMostOnce);
    h.subscribe(c, "u", QoS::AtMostOnce);
    h.unsubscribe(c, &["t"]);
    h.lose(c);
    let c = h.connect(v5("c").resume().expiry(100));
    h.inject(msg("t", "t"));
    h.inject(msg("u", "u"));
    assert_eq!(h.payloads(c), vec!["u"]);
}

#[test]
fn no_local_on_one_of_overlapping_subscriptions() {
    let mut h = H::new();
    let c = h.connect(v5("c"));
    let no_local = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtLeastOnce)
    };
    h.subscribe_with(c, &[("a/+", no_local)], Some(1));
    h.subscribe_with(c, &[("a/#", opts(QoS::AtMostOnce))], Some(2));
    h.publish(c, msg_q("a/b", "x", QoS::AtLeastOnce, 1));
    let packets = h.packets(c);
    let Packet::Publish(publish) = &packets[0] else {
        panic!("expected PUBLISH first, got {packets:?}");
    };
    // Only the subscription without No Local matched.
    assert_eq!(
        (publish.qos, &publish.properties.subscription_identifiers),
        (QoS::AtMostOnce, &vec![2])
    );
    assert_eq!(packets[1], Packet::PubAck(ack(1, ReasonCode::Success)));
    assert_eq!(packets.len(), 2);
}

#[test]
fn shared_group_after_a_member_leaves() {
    let mut h = H::new();
    let a = subscriber(&mut h, "a", "$share/g/t", QoS::AtMostOnce);
    let b = h.connect(v5("b").resume().expiry(10));
    h.subscribe(b, "$share/g/t", QoS::AtMostOnce);
    let c = subscriber(&mut h, "c", "$share/g/t", QoS::AtMostOnce);
    assert_eq!(h.unsubscribe(a, &["$share/g/t"]), vec![ReasonCode::Success]);
    h.lose(b);
    h.tick_at(10);
    assert_eq!(h.broker.session_state("b"), None);
    for i in 1..=3 {
        h.inject(msg("t", &i.to_string()));
    }
    h.assert_silent(a);
    assert_eq!(h.payloads(c), vec!["1", "2", "3"]);
}

#[test]
fn v311_suback_and_unsuback() {
    let mut h = H::new();
    let c = h.connect(v311("c"));
    assert_eq!(
        h.subscribe_with(
            c,
            &[
                ("$share//t", opts(QoS::AtMostOnce)),
                ("t", opts(QoS::ExactlyOnce))
            ],
            None
        ),
        // Encoded as 0x80 and 0x02 on 3.1.1.
        vec![ReasonCode::TopicFilterInvalid, ReasonCode::GrantedQoS2]
    );
    h.unsubscribe(c, &["t", "u"]);
    h.inject(msg("t", "x"));
    h.assert_silent(c);
}
