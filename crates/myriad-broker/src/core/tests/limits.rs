//! Issue 13 section 1 and the subscription side of section 2: deep topics
//! never crash the core, topic and subscription limits, duplicate filters in
//! one SUBSCRIBE, and nothing kept from a packet pins its buffer.

use myriad_mqtt::ByteString;

use myriad_store::{
    MessageRecord, OutboundRecord, OutboundState, SessionRecord, Snapshot, StoredSession,
    SubscriptionRecord,
};

use super::*;

/// Runs `f` on a thread with a 1 MiB stack. The recursive walks this
/// replaced took more than that for 25,000 levels (the repro
/// overflowed tokio's 2 MiB worker stacks from there).
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no stack overflow or panic");
}

/// Limits high enough for the deepest topic a packet can carry (65,535
/// bytes: 65,536 levels of `/`).
fn high(config: &mut BrokerConfig) {
    config.max_topic_levels = 1_000_000;
    config.max_topic_length = usize::from(u16::MAX);
}

fn subscribe_retained_as(qos: QoS) -> SubscriptionOptions {
    opts(qos)
}

#[test]
fn deep_filter_subscribe_then_unsubscribe() {
    on_small_stack(|| {
        let mut h = H::with(high);
        let c = h.connect(v5("deep"));
        let filter = "/".repeat(40_000);
        assert_eq!(
            h.subscribe(c, &filter, QoS::AtMostOnce),
            vec![ReasonCode::Success]
        );
        assert_eq!(h.unsubscribe(c, &[&filter]), vec![ReasonCode::Success]);
        assert_eq!(h.broker.subscription_count(), 0);
        // The deepest filter a packet can carry, then the connection ends.
        let deepest = "/".repeat(usize::from(u16::MAX));
        assert_eq!(
            h.subscribe(c, &deepest, QoS::AtMostOnce),
            vec![ReasonCode::Success]
        );
        h.disconnect(c);
        assert_eq!(h.broker.subscription_count(), 0);
    });
}

#[test]
fn deep_shared_filter_matches_and_goes_with_the_session() {
    on_small_stack(|| {
        let mut h = H::with(high);
        let s = h.connect(v5("s"));
        let topic = "a/".repeat(25_000) + "b";
        let filter = format!("$share/g/{}", "+/".repeat(25_000) + "#");
        assert_eq!(
            h.subscribe(s, &filter, QoS::AtMostOnce),
            vec![ReasonCode::Success]
        );
        let p = h.connect(v5("p"));
        h.publish(p, msg(&topic, "deep"));
        assert_eq!(h.payloads(s), vec!["deep"]);
        h.lose(s);
        assert_eq!(h.broker.subscription_count(), 0);
    });
}

#[test]
fn deep_retained_message_cleared_and_expired() {
    on_small_stack(|| {
        let mut h = H::with(high);
        let p = h.connect(v5("p"));
        let topic = "/".repeat(usize::from(u16::MAX));
        h.publish(p, retained(&topic, "kept"));
        assert_eq!(h.broker.retained_count(), 1);
        h.publish(p, retained(&topic, ""));
        assert_eq!(h.broker.retained_count(), 0);
        let mut expiring = retained(&topic, "short-lived");
        expiring.properties.message_expiry_interval = Some(1);
        h.publish(p, expiring);
        assert_eq!(h.broker.retained_count(), 1);
        h.advance(2);
        let s = h.connect(v5("s"));
        h.subscribe(s, &topic, QoS::AtMostOnce);
        assert_eq!(h.publishes(s), vec![]);
        assert_eq!(h.broker.retained_count(), 0);
    });
}

#[test]
fn deep_subscription_of_an_expiring_persistent_session() {
    on_small_stack(|| {
        let mut h = H::with(high);
        let c = h.connect(v5("persistent").expiry(10));
        let filter = "/".repeat(40_000);
        h.subscribe(c, &filter, QoS::AtLeastOnce);
        h.disconnect(c);
        assert_eq!(h.broker.session_count(), 1);
        h.tick_at(11);
        assert_eq!(h.broker.session_count(), 0);
        assert_eq!(h.broker.subscription_count(), 0);
    });
}

/// A data dir written by a broker with high limits (or by hand): a
/// persistent session with a 40,000-level subscription, a queued message
/// and a pending will on a 45,000-level topic, and a 45,000-level retained
/// message, besides ordinary records.
fn deep_snapshot() -> Snapshot {
    let deep_topic = "/".repeat(45_000);
    let record = |topic: &str, retain: bool| MessageRecord {
        topic: topic.into(),
        payload: Bytes::from_static(b"stored"),
        qos: QoS::AtLeastOnce,
        retain,
        properties: PacketProperties::new(),
        expires_at: None,
    };
    let queued = |topic: &str| OutboundRecord {
        state: OutboundState::Queued,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        message: Some(record(topic, false)),
    };
    let subscription = |filter: &str| SubscriptionRecord {
        filter: filter.into(),
        options: opts(QoS::AtLeastOnce),
        id: None,
    };
    Snapshot {
        sessions: vec![StoredSession {
            record: SessionRecord {
                client_id: "keeper".into(),
                expiry_interval: 60,
                expires_at: None,
            },
            subscriptions: vec![subscription(&"/".repeat(40_000)), subscription("ok/#")],
            outbound: vec![(1, queued(&deep_topic)), (2, queued("ok/queued"))],
            inbound_qos2: Vec::new(),
            will: Some((UNIX_START + 30_000, record(&deep_topic, false))),
        }],
        retained: vec![record(&deep_topic, true), record("ok/retained", true)],
    }
}

/// Wall-clock time of the restore, in Unix milliseconds.
const UNIX_START: u64 = 1_700_000_000_000;

fn restored(configure: impl FnOnce(&mut BrokerConfig), snapshot: Snapshot) -> H {
    let mut h = H::with(configure);
    let config = h.broker.config().clone();
    h.broker = Broker::restore(config, snapshot, h.start, UNIX_START);
    h
}

#[test]
fn restore_skips_what_the_limits_refuse_and_serves() {
    let mut h = restored(|_| {}, deep_snapshot());
    assert_eq!(h.broker.session_count(), 1);
    assert_eq!(h.broker.subscription_count(), 1);
    assert_eq!(h.broker.retained_count(), 1);
    let (c, ack) = h.connect_ack(v5("keeper").expiry(60).resume());
    assert!(ack.session_present);
    let queued = h.publishes(c);
    assert_eq!(
        queued
            .iter()
            .map(|p| p.topic.to_string())
            .collect::<Vec<_>>(),
        vec!["ok/queued"]
    );
    h.puback(c, queued[0].packet_id);
    let p = h.connect(v5("p"));
    h.publish(p, msg("ok/live", "1"));
    assert_eq!(h.payloads(c), vec!["1"]);
    let s = h.connect(v5("s"));
    h.subscribe(s, "#", QoS::AtMostOnce);
    assert_eq!(h.payloads(s), vec!["stored"]);
    // The skipped will is not published when the session ends.
    h.disconnect(c);
    h.tick_at(120);
    assert_eq!(h.broker.session_state("keeper"), None);
    assert_eq!(h.publishes(s), vec![]);
}

#[test]
fn restore_with_high_limits_keeps_deep_records_and_expires_them() {
    on_small_stack(|| {
        let mut h = restored(high, deep_snapshot());
        assert_eq!(h.broker.subscription_count(), 2);
        assert_eq!(h.broker.retained_count(), 2);
        let s = h.connect(v5("s"));
        h.subscribe(s, "#", QoS::AtMostOnce);
        assert_eq!(h.payloads(s).len(), 2);
        // The session expires with its deep subscription; the will goes out first.
        h.tick_at(61);
        assert_eq!(h.broker.session_count(), 1);
        assert_eq!(h.broker.subscription_count(), 1);
        assert_eq!(h.payloads(s), vec!["stored"]);
        // The deep retained message is cleared.
        h.publish(s, retained(&"/".repeat(45_000), ""));
        assert_eq!(h.broker.retained_count(), 1);
    });
}

#[test]
fn publish_beyond_the_limits_is_refused() {
    let mut h = H::with(|c| {
        c.max_topic_levels = 4;
        c.max_topic_length = 16;
    });
    let s = subscriber(&mut h, "s", "#", QoS::AtMostOnce);
    for topic in ["a/b/c/d/e", "////", &"x".repeat(17)] {
        let c = h.connect(v5("p5"));
        h.publish(c, msg(topic, "no"));
        h.expect_disconnect(c, ReasonCode::TopicNameInvalid);
        let c = h.connect(v311("p3"));
        h.publish(c, msg(topic, "no"));
        assert_eq!(h.out(c), vec![Output::Close(c)]);
    }
    let c = h.connect(v5("p5"));
    h.publish(c, msg("a/b/c/d", "at the limit"));
    h.publish(c, msg(&"x".repeat(16), "at the limit"));
    h.assert_silent(c);
    assert_eq!(h.payloads(s), vec!["at the limit", "at the limit"]);
}

#[test]
fn filter_beyond_the_limits_gets_0x8f_and_the_connection_stays() {
    let mut h = H::with(|c| {
        c.max_topic_levels = 3;
        c.max_topic_length = 24;
    });
    for connect in [v5("s5"), v311("s3")] {
        let c = h.connect(connect);
        let codes = h.subscribe_with(
            c,
            &[
                ("a/b/c/d", opts(QoS::AtMostOnce)),
                ("a/b/#", opts(QoS::AtMostOnce)),
                ("$share/g/a/+/c/d", opts(QoS::AtMostOnce)),
                ("$share/g/a/+/#", opts(QoS::AtMostOnce)),
                (&"y".repeat(25), opts(QoS::AtMostOnce)),
            ],
            None,
        );
        assert_eq!(
            codes,
            vec![
                ReasonCode::TopicFilterInvalid,
                ReasonCode::Success,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::Success,
                ReasonCode::TopicFilterInvalid,
            ]
        );
        h.packet(c, Packet::PingReq);
        assert_eq!(h.packets(c), vec![Packet::PingResp]);
    }
}

#[test]
fn will_beyond_the_limits_refuses_the_connect() {
    let mut h = H::with(|c| c.max_topic_levels = 2);
    let (c, ack) = h.connect_ack(v5("w5").will(will("a/b/c", "bye")));
    assert_eq!(ack.reason_code, ReasonCode::TopicNameInvalid);
    assert_eq!(h.out(c), vec![Output::Close(c)]);
    // 3.1.1 has no code for it: closed without CONNACK.
    assert!(
        !h.broker
            .handle_connect(h.now, 99, v311("w3").will(will("a/b/c", "bye")))
    );
    assert_eq!(h.out(99), vec![Output::Close(99)]);
    assert_eq!(h.broker.session_count(), 0);
    h.connect(v311("w3").will(will("a/b", "bye")));
}

#[test]
fn in_process_publish_beyond_the_limits_is_dropped() {
    let mut h = H::with(|c| c.max_topic_levels = 2);
    let s = subscriber(&mut h, "s", "#", QoS::AtMostOnce);
    h.inject(msg("a/b/c", "dropped"));
    h.inject(msg("a/b", "routed"));
    assert_eq!(h.payloads(s), vec!["routed"]);
}

#[test]
fn aliased_topic_beyond_the_limits_is_refused() {
    let mut h = H::with(|c| c.max_topic_levels = 2);
    let c = h.connect(v5("p"));
    let mut publish = msg("a/b/c", "x");
    publish.properties.topic_alias = Some(1);
    h.publish(c, publish);
    h.expect_disconnect(c, ReasonCode::TopicNameInvalid);
}

#[test]
fn repeated_filters_count_once_and_send_each_retained_message_once() {
    let mut h = H::new();
    let p = h.connect(v5("p"));
    for i in 0..1_000 {
        h.publish(p, retained(&format!("r/{i}"), "x"));
    }
    let s = h.connect(v5("s"));
    let filters = vec![("#", opts(QoS::AtMostOnce)); 20_000];
    let codes = h.subscribe_with(s, &filters, None);
    assert_eq!(codes, vec![ReasonCode::Success; 20_000]);
    assert_eq!(h.publishes(s).len(), 1_000);
    assert_eq!(h.broker.subscription_count(), 1);
}

#[test]
fn the_last_copy_of_a_repeated_filter_wins() {
    let mut h = H::new();
    let s = h.connect(v5("s"));
    let codes = h.subscribe_with(
        s,
        &[
            ("t", opts(QoS::AtMostOnce)),
            ("u", opts(QoS::AtMostOnce)),
            ("t", opts(QoS::AtLeastOnce)),
        ],
        None,
    );
    assert_eq!(
        codes,
        vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::Success,
            ReasonCode::GrantedQoS1
        ]
    );
    let p = h.connect(v5("p"));
    h.publish(p, msg_q("t", "x", QoS::AtLeastOnce, 1));
    assert_eq!(h.one_publish(s).qos, QoS::AtLeastOnce);
    assert_eq!(h.broker.subscription_count(), 2);
}

#[test]
fn overlapping_filters_send_a_retained_message_once_at_the_highest_qos() {
    let mut h = H::new();
    let p = h.connect(v5("p"));
    h.publish(p, msg_q("a/b", "x", QoS::AtLeastOnce, 1).retained());
    let s = h.connect(v5("s"));
    h.subscribe_with(
        s,
        &[
            ("#", subscribe_retained_as(QoS::AtMostOnce)),
            ("a/+", subscribe_retained_as(QoS::AtLeastOnce)),
            ("+/b", subscribe_retained_as(QoS::AtMostOnce)),
        ],
        Some(7),
    );
    let got = h.one_publish(s);
    assert_eq!((got.qos, got.retain), (QoS::AtLeastOnce, true));
    assert_eq!(got.properties.subscription_identifiers, vec![7]);
}

trait Retained {
    fn retained(self) -> Self;
}

impl Retained for Publish {
    fn retained(mut self) -> Self {
        self.retain = true;
        self
    }
}

#[test]
fn subscriptions_beyond_the_quota_get_0x97() {
    let mut h = H::with(|c| c.max_subscriptions_per_client = 3);
    for connect in [v5("q5"), v311("q3")] {
        let c = h.connect(connect);
        let codes = h.subscribe_with(
            c,
            &[
                ("a", opts(QoS::AtMostOnce)),
                ("b", opts(QoS::AtMostOnce)),
                ("c", opts(QoS::AtMostOnce)),
                ("d", opts(QoS::AtMostOnce)),
            ],
            None,
        );
        assert_eq!(codes[3], ReasonCode::QuotaExceeded);
        // At the quota, an existing filter can still be changed.
        assert_eq!(
            h.subscribe(c, "a", QoS::AtLeastOnce),
            vec![ReasonCode::GrantedQoS1]
        );
        assert_eq!(
            h.subscribe(c, "e", QoS::AtMostOnce),
            vec![ReasonCode::QuotaExceeded]
        );
        h.unsubscribe(c, &["b"]);
        assert_eq!(
            h.subscribe(c, "e", QoS::AtMostOnce),
            vec![ReasonCode::Success]
        );
    }
}

/// A packet buffer of 64 KiB, and a string inside it. What the broker keeps
/// must not share it: `buffer.is_unique()` once the packet is gone.
fn packet_buffer(text: &str) -> (Bytes, ByteString) {
    let mut raw = vec![b'p'; 64 * 1024];
    raw[..text.len()].copy_from_slice(text.as_bytes());
    let buffer = Bytes::from(raw);
    let slice = buffer.slice(..text.len());
    let string = ByteString::try_from(slice).expect("UTF-8");
    (buffer, string)
}

#[test]
fn kept_strings_do_not_pin_packet_buffers() {
    let mut h = H::new();
    // A subscription filter.
    let s = h.connect(v5("s").alias_max(10));
    let (buffer, filter) = packet_buffer("pinned/#");
    let subscribe = Subscribe {
        packet_id: 1,
        filters: vec![SubscriptionRequest {
            filter,
            options: opts(QoS::AtMostOnce),
        }],
        properties: PacketProperties::new(),
    };
    h.packet(s, Packet::Subscribe(subscribe));
    h.out(s);
    assert!(
        buffer.is_unique(),
        "the session's filter pins the SUBSCRIBE"
    );

    // An inbound topic alias, and the outbound alias the subscriber gets.
    let p = h.connect(v5("p"));
    let (buffer, topic) = packet_buffer("pinned/alias");
    let mut publish = msg("", "x");
    publish.topic = topic;
    publish.payload = buffer.slice(100..200);
    publish.properties.topic_alias = Some(1);
    h.publish(p, publish);
    let got = h.one_publish(s);
    assert_eq!(got.properties.topic_alias, Some(1));
    drop(got);
    assert!(buffer.is_unique(), "an alias map pins the PUBLISH");

    // A retained message.
    let (buffer, topic) = packet_buffer("pinned/retained");
    let mut publish = retained("", "");
    publish.topic = topic;
    publish.payload = buffer.slice(100..200);
    h.publish(p, publish);
    h.out(s);
    assert_eq!(h.broker.retained_count(), 1);
    assert!(buffer.is_unique(), "the retained store pins the PUBLISH");

    // A will, with properties.
    let (buffer, topic) = packet_buffer("pinned/will");
    let mut last_will = will("", "");
    last_will.topic = topic;
    last_will.payload = buffer.slice(100..200);
    last_will.properties.correlation_data = Some(buffer.slice(200..210));
    let text = ByteString::try_from(buffer.slice(300..310)).expect("UTF-8");
    last_will
        .properties
        .user_properties
        .push((text.clone(), text));
    h.connect(v5("w").will(last_will));
    assert!(buffer.is_unique(), "the will pins the CONNECT");
}

#[test]
fn outbound_aliases_are_capped_by_the_server() {
    let mut h = H::with(|c| c.max_outbound_aliases = 3);
    let s = h.connect(v5("s").alias_max(u16::MAX));
    h.subscribe(s, "#", QoS::AtMostOnce);
    for i in 0..10 {
        h.inject(msg(&format!("t/{i}"), "x"));
    }
    let aliases: Vec<Option<u16>> = h
        .publishes(s)
        .iter()
        .map(|p| p.properties.topic_alias)
        .collect();
    let mut expected = vec![Some(1), Some(2), Some(3)];
    expected.extend([None; 7]);
    assert_eq!(aliases, expected);
    // 0 assigns none, whatever the client accepts.
    let mut h = H::with(|c| c.max_outbound_aliases = 0);
    let s = h.connect(v5("s").alias_max(u16::MAX));
    h.subscribe(s, "#", QoS::AtMostOnce);
    h.inject(msg("t", "x"));
    assert_eq!(h.one_publish(s).properties.topic_alias, None);
}
