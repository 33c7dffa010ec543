//! Retained messages.

use super::*;

fn sorted(mut publishes: Vec<Publish>) -> Vec<(String, String, bool)> {
    publishes.sort_by(|a, b| a.topic.cmp(&b.topic));
    publishes
        .iter()
        .map(|p| (p.topic.to_string(), payload(p), p.retain))
        .collect()
}

#[test]
fn set_replace_and_clear() {
    let mut h = H::new();
    let p = h.connect(v5("p"));
    h.publish(p, retained("t", "1"));
    assert_eq!(h.broker.retained_count(), 1);
    h.publish(p, retained("t", "2"));
    assert_eq!(h.broker.retained_count(), 1);

    let s = h.connect(v5("s"));
    h.subscribe(s, "t", QoS::AtMostOnce);
    let publish = h.one_publish(s);
    assert_eq!((payload(&publish), publish.retain), ("2".into(), true));

    // An empty retained payload clears the topic and is still routed (RETAIN 0 here).
    h.publish(p, retained("t", ""));
    assert_eq!(h.broker.retained_count(), 0);
    let publish = h.one_publish(s);
    assert_eq!((payload(&publish), publish.retain), (String::new(), false));
    let late = h.connect(v5("late"));
    h.subscribe(late, "t", QoS::AtMostOnce);
    h.assert_silent(late);
}

#[test]
fn non_retained_publish_does_not_touch_the_store() {
    let mut h = H::new();
    h.inject(retained("t", "kept"));
    h.inject(msg("t", "live"));
    h.inject(msg("t", ""));
    let s = h.connect(v5("s"));
    h.subscribe(s, "t", QoS::AtMostOnce);
    assert_eq!(h.payloads(s), vec!["kept"]);
}

#[test]
fn delivered_with_retain_through_wildcards() {
    let mut h = H::new();
    for topic in ["a/b", "a/c/d", "a", "b/b", "$SYS/x"] {
        h.inject(retained(topic, topic));
    }
    let s = h.connect(v5("s"));
    h.subscribe(s, "a/#", QoS::AtMostOnce);
    assert_eq!(
        sorted(h.publishes(s)),
        vec![
            ("a".into(), "a".into(), true),
            ("a/b".into(), "a/b".into(), true),
            ("a/c/d".into(), "a/c/d".into(), true),
        ]
    );
    h.subscribe(s, "+/b", QoS::AtMostOnce);
    assert_eq!(
        sorted(h.publishes(s)),
        vec![
            ("a/b".into(), "a/b".into(), true),
            ("b/b".into(), "b/b".into(), true),
        ]
    );
    // `#` does not reach `$` topics; `$SYS/#` does.
    h.subscribe(s, "#", QoS::AtMostOnce);
    assert_eq!(h.publishes(s).len(), 4);
    h.subscribe(s, "$SYS/#", QoS::AtMostOnce);
    assert_eq!(
        sorted(h.publishes(s)),
        vec![("$SYS/x".into(), "$SYS/x".into(), true)]
    );
}

#[test]
fn retained_qos_is_the_lower_of_message_and_subscription() {
    let mut h = H::new();
    h.inject(Publish {
        retain: true,
        ..msg_q("t", "r", QoS::AtLeastOnce, 0)
    });
    let low = h.connect(v5("low"));
    h.subscribe(low, "t", QoS::AtMostOnce);
    let publish = h.one_publish(low);
    assert_eq!((publish.qos, publish.packet_id), (QoS::AtMostOnce, 0));
    let high = h.connect(v5("high"));
    h.subscribe_with(high, &[("t", opts(QoS::ExactlyOnce))], Some(5));
    let publish = h.one_publish(high);
    assert_eq!(
        (publish.qos, publish.packet_id, publish.retain),
        (QoS::AtLeastOnce, 1, true)
    );
    assert_eq!(publish.properties.subscription_identifiers, vec![5]);
}

#[test]
fn retained_expiry_is_respected() {
    let mut h = H::new();
    let mut publish = retained("t", "r");
    publish.properties.message_expiry_interval = Some(10);
    h.inject(publish);
    h.advance(4);
    let s = h.connect(v5("s"));
    h.subscribe(s, "t", QoS::AtMostOnce);
    assert_eq!(h.one_publish(s).properties.message_expiry_interval, Some(6));
    h.advance(7);
    let late = h.connect(v5("late"));
    h.subscribe(late, "t", QoS::AtMostOnce);
    h.assert_silent(late);
    assert_eq!(h.broker.retained_count(), 0);
}
