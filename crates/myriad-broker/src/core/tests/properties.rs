//! PUBLISH properties reach subscribers unchanged.

use super::*;

fn rich_properties() -> Properties {
    Properties {
        payload_format_indicator: Some(true),
        content_type: Some("text/plain; charset=utf-8".into()),
        response_topic: Some("reply/to/me".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\xffid-17")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..Properties::default()
    }
}

#[test]
fn publish_properties_pass_through() {
    let mut h = H::new();
    let sub = h.connect(v5("s"));
    h.subscribe_with(sub, &[("t", opts(QoS::AtLeastOnce))], Some(9));
    let p = h.connect(v5("p"));
    let mut publish = msg_q("t", "hello", QoS::AtLeastOnce, 1);
    publish.properties = rich_properties().into();
    publish.properties.topic_alias = Some(3);
    h.publish(p, publish);
    assert_eq!(
        h.packets(p),
        vec![Packet::PubAck(ack(1, ReasonCode::Success))]
    );
    let received = h.one_publish(sub);
    let mut expected = rich_properties();
    // The publisher's alias is stripped; the subscriber's identifier added.
    expected.subscription_identifiers = vec![9];
    assert_eq!(received.properties, expected);
    assert_eq!(payload(&received), "hello");
}

#[test]
fn publisher_subscription_identifiers_are_a_protocol_error() {
    // Only a server puts Subscription Identifiers on a PUBLISH (MQTT-3.3.4-6).
    let mut h = H::new();
    let sub = subscriber(&mut h, "s", "t", QoS::AtMostOnce);
    let p = h.connect(v5("p"));
    let mut publish = msg("t", "x");
    publish.properties.subscription_identifiers = vec![77];
    h.publish(p, publish);
    h.expect_disconnect(p, ReasonCode::ProtocolError);
    h.assert_silent(sub);
}

#[test]
fn properties_survive_queueing_and_retention() {
    let mut h = H::new();
    let sub = h.connect(v5("s").resume().expiry(100));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.lose(sub);
    let mut publish = Publish {
        retain: true,
        ..msg_q("t", "stored", QoS::AtLeastOnce, 0)
    };
    publish.properties = rich_properties().into();
    h.inject(publish);
    let sub = h.connect(v5("s").resume().expiry(100));
    assert_eq!(h.one_publish(sub).properties, rich_properties());
    let late = h.connect(v5("late"));
    h.subscribe(late, "t", QoS::AtMostOnce);
    assert_eq!(h.one_publish(late).properties, rich_properties());
}
