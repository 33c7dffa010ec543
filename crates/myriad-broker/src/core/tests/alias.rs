//! Topic aliases, inbound and outbound.

use super::*;

fn aliased(topic: &str, alias: u16, body: &str) -> Publish {
    let mut publish = msg(topic, body);
    publish.properties.topic_alias = Some(alias);
    publish
}

#[test]
fn inbound_alias_registration_and_reuse() {
    let mut h = H::new();
    let sub = subscriber(&mut h, "s", "#", QoS::AtMostOnce);
    let c = h.connect(v5("p"));
    h.publish(c, aliased("a/b", 1, "1"));
    h.publish(c, aliased("", 1, "2"));
    // Remapping an alias to another topic.
    h.publish(c, aliased("c/d", 1, "3"));
    h.publish(c, aliased("", 1, "4"));
    h.assert_silent(c);
    let got: Vec<_> = h
        .publishes(sub)
        .into_iter()
        .map(|p| (p.topic.to_string(), payload(&p), p.properties.topic_alias))
        .collect();
    // The subscriber sees topic names, never the publisher's alias.
    assert_eq!(
        got,
        vec![
            ("a/b".into(), "1".into(), None),
            ("a/b".into(), "2".into(), None),
            ("c/d".into(), "3".into(), None),
            ("c/d".into(), "4".into(), None),
        ]
    );
}

#[test]
fn inbound_alias_above_maximum_is_invalid() {
    let mut h = H::with(|c| c.topic_alias_maximum = 2);
    let c = h.connect(v5("p"));
    h.publish(c, aliased("t", 2, "ok"));
    h.publish(c, aliased("t", 3, "too high"));
    h.expect_disconnect(c, ReasonCode::TopicAliasInvalid);
    let c = h.connect(v5("q"));
    h.publish(c, aliased("t", 0, "zero"));
    h.expect_disconnect(c, ReasonCode::TopicAliasInvalid);
}

#[test]
fn inbound_alias_not_allowed_when_maximum_is_zero() {
    let mut h = H::with(|c| c.topic_alias_maximum = 0);
    let (c, ack) = h.connect_ack(v5("p"));
    assert_eq!(ack.properties.topic_alias_maximum, Some(0));
    h.publish(c, aliased("t", 1, "x"));
    h.expect_disconnect(c, ReasonCode::TopicAliasInvalid);
}

#[test]
fn unknown_alias_with_empty_topic_is_protocol_error() {
    let mut h = H::new();
    let c = h.connect(v5("p"));
    h.publish(c, aliased("", 1, "x"));
    h.expect_disconnect(c, ReasonCode::ProtocolError);
}

#[test]
fn inbound_aliases_do_not_survive_the_connection() {
    let mut h = H::new();
    let c = h.connect(v5("p").resume().expiry(100));
    h.publish(c, aliased("t", 1, "x"));
    h.lose(c);
    let c = h.connect(v5("p").resume().expiry(100));
    h.publish(c, aliased("", 1, "y"));
    h.expect_disconnect(c, ReasonCode::ProtocolError);
}

#[test]
fn outbound_aliases_up_to_the_client_maximum() {
    let mut h = H::new();
    let sub = h.connect(v5("s").alias_max(2));
    h.subscribe(sub, "#", QoS::AtMostOnce);
    for topic in ["t1", "t1", "t2", "t3", "t3", "t2"] {
        h.inject(msg(topic, topic));
    }
    let got: Vec<_> = h
        .publishes(sub)
        .into_iter()
        .map(|p| (p.topic.to_string(), p.properties.topic_alias))
        .collect();
    assert_eq!(
        got,
        vec![
            ("t1".into(), Some(1)),
            (String::new(), Some(1)),
            ("t2".into(), Some(2)),
            // No alias left: the topic is sent in full.
            ("t3".into(), None),
            ("t3".into(), None),
            (String::new(), Some(2)),
        ]
    );
}

#[test]
fn outbound_aliases_restart_on_a_new_connection() {
    let mut h = H::new();
    let sub = h.connect(v5("s").alias_max(1).resume().expiry(100));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.inject(msg_q("t", "1", QoS::AtLeastOnce, 0));
    h.inject(msg_q("t", "2", QoS::AtLeastOnce, 0));
    let got: Vec<_> = h
        .publishes(sub)
        .into_iter()
        .map(|p| p.topic.to_string())
        .collect();
    assert_eq!(got, vec!["t", ""]);
    h.lose(sub);
    let sub = h.connect(v5("s").alias_max(1).resume().expiry(100));
    // The resent messages carry the topic again before the alias is reused.
    let got: Vec<_> = h
        .publishes(sub)
        .into_iter()
        .map(|p| (p.topic.to_string(), p.properties.topic_alias, p.dup))
        .collect();
    assert_eq!(
        got,
        vec![("t".into(), Some(1), true), (String::new(), Some(1), true)]
    );
}

#[test]
fn no_outbound_aliases_without_client_maximum_or_on_v311() {
    let mut h = H::new();
    let v5c = subscriber(&mut h, "a", "t", QoS::AtMostOnce);
    let v3 = h.connect(v311("b").alias_max(5));
    h.subscribe(v3, "t", QoS::AtMostOnce);
    h.inject(msg("t", "1"));
    h.inject(msg("t", "2"));
    for conn in [v5c, v3] {
        for publish in h.publishes(conn) {
            assert_eq!(
                (publish.topic.as_ref(), publish.properties.topic_alias),
                ("t", None)
            );
        }
    }
}
