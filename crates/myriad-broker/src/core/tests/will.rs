//! Will messages: when they are published, delayed, or dropped.

use super::*;

fn delayed(secs: u32) -> Will {
    let mut w = will("will/c", "gone");
    w.properties.will_delay_interval = Some(secs);
    w
}

/// A watcher subscribed to `will/#` and a client "c" connected with `connect`.
fn setup(connect: Connect) -> (H, ConnId, ConnId) {
    let mut h = H::new();
    let watcher = subscriber(&mut h, "watcher", "will/#", QoS::AtLeastOnce);
    let c = h.connect(connect);
    (h, watcher, c)
}

#[test]
fn published_on_connection_loss() {
    let (mut h, watcher, c) = setup(v5("c").will(will("will/c", "gone")));
    h.lose(c);
    let publish = h.one_publish(watcher);
    assert_eq!(
        (publish.topic.as_ref(), payload(&publish).as_str()),
        ("will/c", "gone")
    );
}

#[test]
fn published_on_keep_alive_timeout() {
    let (mut h, watcher, c) = setup(v311("c").will(will("will/c", "gone")));
    h.broker
        .handle_connection_lost(h.now, c, ConnectionLoss::KeepAliveTimeout);
    assert_eq!(h.payloads(watcher), vec!["gone"]);
    assert_eq!(h.broker.connection_count(), 1);
}

#[test]
fn published_on_protocol_violation() {
    let (mut h, watcher, c) = setup(v5("c").will(will("will/c", "gone")));
    h.broker.handle_connection_lost(
        h.now,
        c,
        ConnectionLoss::ProtocolViolation(ReasonCode::MalformedPacket),
    );
    assert_eq!(h.payloads(watcher), vec!["gone"]);
}

#[test]
fn published_when_the_server_closes_on_error() {
    let (mut h, watcher, c) = setup(v5("c").will(will("will/c", "gone")));
    h.publish(c, msg_q("", "x", QoS::AtMostOnce, 0));
    h.expect_disconnect(c, ReasonCode::ProtocolError);
    assert_eq!(h.payloads(watcher), vec!["gone"]);
}

#[test]
fn not_published_on_normal_disconnect() {
    let (mut h, watcher, c) = setup(v5("c").will(will("will/c", "gone")));
    h.disconnect(c);
    h.assert_silent(watcher);
    let (mut h, watcher, c) = setup(v311("c").will(will("will/c", "gone")));
    h.disconnect(c);
    h.assert_silent(watcher);
}

#[test]
fn published_on_disconnect_with_will_message() {
    let (mut h, watcher, c) = setup(v5("c").will(will("will/c", "gone")));
    h.disconnect_with(c, Disconnect::new(ReasonCode::DisconnectWithWillMessage));
    assert_eq!(h.out(c), vec![Output::Close(c)]);
    assert_eq!(h.payloads(watcher), vec!["gone"]);
}

#[test]
fn will_qos_and_retain_are_honoured() {
    let mut w = will("will/c", "gone");
    w.qos = QoS::AtLeastOnce;
    w.retain = true;
    let (mut h, watcher, c) = setup(v5("c").will(w));
    h.lose(c);
    let publish = h.one_publish(watcher);
    assert_eq!(
        (publish.qos, publish.packet_id, publish.retain),
        (QoS::AtLeastOnce, 1, false)
    );
    assert_eq!(h.broker.retained_count(), 1);
    let late = h.connect(v5("late"));
    h.subscribe(late, "will/c", QoS::AtLeastOnce);
    let publish = h.one_publish(late);
    assert_eq!((payload(&publish), publish.retain), ("gone".into(), true));
}

#[test]
fn delayed_will_is_published_after_the_delay() {
    let (mut h, watcher, c) = setup(v5("c").resume().expiry(100).will(delayed(10)));
    h.lose(c);
    h.assert_silent(watcher);
    assert_eq!(h.broker.next_timeout(), Some(h.at(10)));
    h.tick_at(9);
    h.assert_silent(watcher);
    h.tick_at(10);
    let publish = h.one_publish(watcher);
    assert_eq!(payload(&publish), "gone");
    // The Will Delay Interval is not forwarded.
    assert_eq!(publish.properties.will_delay_interval, None);
    // Only the session expiry timer is left.
    assert_eq!(h.broker.next_timeout(), Some(h.at(100)));
    h.tick_at(50);
    h.assert_silent(watcher);
}

#[test]
fn delayed_will_is_dropped_if_the_client_resumes_in_time() {
    let (mut h, watcher, c) = setup(v5("c").resume().expiry(100).will(delayed(10)));
    h.lose(c);
    h.tick_at(5);
    let (_, ack) = h.connect_ack(v5("c").resume().expiry(100));
    assert!(ack.session_present);
    h.tick_at(20);
    h.assert_silent(watcher);
    assert_eq!(h.broker.next_timeout(), None);
}

#[test]
fn delayed_will_is_published_if_the_client_starts_clean() {
    // Clean Start ends the old session, and with it the delay (MQTT 5.0 3.1.2.5).
    let (mut h, watcher, c) = setup(v5("c").resume().expiry(100).will(delayed(10)));
    h.lose(c);
    h.tick_at(5);
    let (_, ack) = h.connect_ack(v5("c"));
    assert!(!ack.session_present);
    assert_eq!(h.payloads(watcher), vec!["gone"]);
    h.tick_at(20);
    h.assert_silent(watcher);
}

#[test]
fn delayed_will_on_takeover_is_dropped_when_resumed() {
    let (mut h, watcher, old) = setup(v5("c").resume().expiry(100).will(delayed(10)));
    let new = h.connect(v5("c").resume().expiry(100));
    h.expect_disconnect(old, ReasonCode::SessionTakenOver);
    h.tick_at(20);
    h.assert_silent(watcher);
    h.assert_silent(new);
}

#[test]
fn will_without_delay_is_published_on_takeover() {
    let (mut h, watcher, old) = setup(v5("c").resume().expiry(100).will(will("will/c", "gone")));
    h.connect(v5("c").resume().expiry(100));
    h.expect_disconnect(old, ReasonCode::SessionTakenOver);
    assert_eq!(h.payloads(watcher), vec!["gone"]);
}

#[test]
fn delayed_will_is_published_at_session_end_if_expiry_is_shorter() {
    let (mut h, watcher, c) = setup(v5("c").resume().expiry(5).will(delayed(30)));
    h.lose(c);
    assert_eq!(h.broker.next_timeout(), Some(h.at(5)));
    h.tick_at(4);
    h.assert_silent(watcher);
    h.tick_at(5);
    assert_eq!(h.payloads(watcher), vec!["gone"]);
    assert_eq!(h.broker.session_state("c"), None);
    h.tick_at(40);
    h.assert_silent(watcher);
}

#[test]
fn delayed_will_with_zero_session_expiry_is_published_at_once() {
    let (mut h, watcher, c) = setup(v5("c").will(delayed(30)));
    h.lose(c);
    assert_eq!(h.payloads(watcher), vec!["gone"]);
    assert_eq!(h.broker.next_timeout(), None);
}

#[test]
fn will_properties_are_carried_through() {
    let mut w = will("will/c", "{}");
    w.properties = Properties {
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(300),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/c".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        will_delay_interval: Some(1),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
        ..Properties::default()
    }
    .into();
    let (mut h, watcher, c) = setup(v5("c").resume().expiry(100).will(w));
    h.lose(c);
    h.tick_at(1);
    let publish = h.one_publish(watcher);
    assert_eq!(
        publish.properties,
        Properties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(300),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/c".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
            ..Properties::default()
        }
    );
}

#[test]
fn delayed_will_on_takeover_with_clean_start_is_published() {
    // The takeover ends the old session, so the delay does not apply.
    let (mut h, watcher, old) = setup(v5("c").resume().expiry(100).will(delayed(10)));
    h.connect(v5("c"));
    h.expect_disconnect(old, ReasonCode::SessionTakenOver);
    assert_eq!(h.payloads(watcher), vec!["gone"]);
    assert_eq!(h.broker.next_timeout(), None);
}

#[test]
fn disconnect_with_will_message_respects_the_delay() {
    let (mut h, watcher, c) = setup(v5("c").resume().expiry(100).will(delayed(10)));
    h.disconnect_with(c, Disconnect::new(ReasonCode::DisconnectWithWillMessage));
    assert_eq!(h.out(c), vec![Output::Close(c)]);
    h.assert_silent(watcher);
    h.tick_at(10);
    assert_eq!(h.payloads(watcher), vec!["gone"]);
}
