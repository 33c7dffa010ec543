//! The outbound path's limits: the in-flight cap, one byte budget per
//! session, QoS 0 paced by what the connection has written, retained
//! delivery paced instead of dropped, and no publisher held by default.

use super::*;

#[test]
fn the_window_is_the_smaller_of_max_inflight_and_receive_maximum() {
    let mut h = H::with(|c| c.max_inflight = 3);
    let wide = h.connect(v5("wide").receive_maximum(u16::MAX));
    let narrow = h.connect(v5("narrow").receive_maximum(2));
    h.subscribe(wide, "t", QoS::AtLeastOnce);
    h.subscribe(narrow, "t", QoS::AtLeastOnce);
    let publisher = h.connect(v311("p"));
    for i in 0..6u16 {
        h.publish(
            publisher,
            msg_q("t", &format!("m{i}"), QoS::AtLeastOnce, i + 1),
        );
    }
    assert_eq!(h.payloads(wide), vec!["m0", "m1", "m2"]);
    assert_eq!(h.payloads(narrow), vec!["m0", "m1"]);
    // Each acknowledgement lets one more go.
    h.puback(wide, 1);
    assert_eq!(h.payloads(wide), vec!["m3"]);
}

#[test]
fn in_flight_messages_count_against_the_byte_budget() {
    // Weight of each message: 1 (topic) + 3 (payload).
    let mut h = H::with(|c| {
        c.max_queued_bytes = 10;
        c.max_inflight = 100;
    });
    let sub = h.connect(v5("s"));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    let publisher = h.connect(v311("p"));
    for i in 0..5u16 {
        h.publish(
            publisher,
            msg_q("t", &format!("m{i:02}"), QoS::AtLeastOnce, i + 1),
        );
    }
    // Two in flight (8 bytes): nothing else fits, in flight or queued.
    assert_eq!(h.payloads(sub), vec!["m00", "m01"]);
    assert_eq!(h.broker.stats().messages_dropped, 3);
    // Acknowledged, they leave the budget.
    h.puback(sub, 1);
    h.puback(sub, 2);
    h.publish(publisher, msg_q("t", "m05", QoS::AtLeastOnce, 9));
    assert_eq!(h.payloads(sub), vec!["m05"]);
}

#[test]
fn unwritten_qos0_is_paced_by_the_written_reports_and_counted() {
    let mut h = H::with(|c| c.max_outbound_qos0 = 2);
    let sub = h.connect(v5("s"));
    h.subscribe(sub, "t", QoS::AtMostOnce);
    for i in 0..5 {
        h.inject(msg("t", &format!("m{i}")));
    }
    assert_eq!(h.payloads(sub), vec!["m0", "m1"]);
    h.broker.handle_written(h.now, sub, 1);
    assert_eq!(h.payloads(sub), vec!["m2"]);
    h.broker.handle_written(h.now, sub, 2);
    assert_eq!(h.payloads(sub), vec!["m3", "m4"]);
    assert_eq!(h.broker.stats().messages_dropped, 0);
    // A report for a connection that is gone changes nothing.
    h.broker.handle_written(h.now, 999, 5);
}

#[test]
fn unwritten_qos0_counts_against_the_byte_budget() {
    // Weight 1 + 3 each: two unwritten fill a budget of 8.
    let mut h = H::with(|c| c.max_queued_bytes = 8);
    let sub = h.connect(v5("s"));
    h.subscribe(sub, "t", QoS::AtMostOnce);
    for i in 0..4 {
        h.inject(msg("t", &format!("m{i:02}")));
    }
    assert_eq!(h.payloads(sub), vec!["m00", "m01"]);
    assert_eq!(h.broker.stats().messages_dropped, 2);
    h.broker.handle_written(h.now, sub, 2);
    h.inject(msg("t", "m04"));
    assert_eq!(h.payloads(sub), vec!["m04"]);
}

#[test]
fn retained_messages_are_paced_to_the_client_and_none_is_dropped() {
    let mut h = H::with(|c| {
        c.max_outbound_qos0 = 3;
        c.max_queued_messages = 2;
    });
    let publisher = h.connect(v5("p"));
    for i in 0..10 {
        h.publish(publisher, retained(&format!("r/{i}"), &format!("v{i}")));
    }
    let sub = h.connect(v5("s"));
    h.subscribe(sub, "r/#", QoS::AtMostOnce);
    let mut got = h.payloads(sub);
    assert_eq!(got.len(), 3, "as many as may be unwritten");
    while got.len() < 10 {
        h.broker.handle_written(h.now, sub, 3);
        let more = h.payloads(sub);
        assert!(!more.is_empty(), "stuck after {got:?}");
        got.extend(more);
    }
    got.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(h.broker.stats().messages_dropped, 0);
}

#[test]
fn retained_qos1_messages_follow_the_window() {
    let mut h = H::with(|c| c.max_queued_messages = 1);
    let publisher = h.connect(v5("p"));
    for i in 0..6u16 {
        let mut p = retained(&format!("r/{i}"), &format!("v{i}"));
        p.qos = QoS::AtLeastOnce;
        p.packet_id = i + 1;
        h.publish(publisher, p);
    }
    let sub = h.connect(v5("s").receive_maximum(2));
    h.subscribe(sub, "r/#", QoS::AtLeastOnce);
    let mut received = 0;
    loop {
        let publishes = h.publishes(sub);
        if publishes.is_empty() {
            break;
        }
        assert!(publishes.len() <= 2);
        received += publishes.len();
        for p in publishes {
            h.puback(sub, p.packet_id);
        }
    }
    assert_eq!(received, 6);
    assert_eq!(h.broker.stats().messages_dropped, 0);
}

#[test]
fn a_stalled_subscriber_holds_no_publisher_by_default() {
    let mut h = H::with(|c| c.max_queued_messages = 4);
    let stalled = h.connect(v5("anon").receive_maximum(1));
    h.subscribe(stalled, "#", QoS::AtLeastOnce);
    let publisher = h.connect(v311("p"));
    for i in 0..50u16 {
        h.publish(
            publisher,
            msg_q("other/topic", "m", QoS::AtLeastOnce, i + 1),
        );
        assert_eq!(
            h.packets(publisher),
            vec![Packet::PubAck(PublishAck::success(i + 1))],
            "publication {i} held"
        );
    }
    assert_eq!(h.broker.held_publications(), 0);
    // The stalled subscriber is the one that loses messages.
    assert_eq!(h.broker.stats().messages_dropped, 50 - 1 - 4);
}
