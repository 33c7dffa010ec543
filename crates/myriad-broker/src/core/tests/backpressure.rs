//! Publisher flow control: QoS 1 publications held while a connected
//! subscriber's queue is full.

use super::*;

/// A broker whose sessions queue 4 messages, a subscriber to `t` with a
/// window of 1 and a 3.1.1 publisher; the subscriber's window and queue are
/// filled (1 in flight + 4 queued) by `a0`..`a4`.
fn full_subscriber(hold_ms: u32) -> (H, ConnId, ConnId) {
    let mut h = H::with(|c| {
        c.max_queued_messages = 4;
        c.publisher_hold_ms = hold_ms;
    });
    let sub = h.connect(v5("s").receive_maximum(1));
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    let publisher = h.connect(v311("p"));
    for i in 0..5u16 {
        h.publish(
            publisher,
            msg_q("t", &format!("a{i}"), QoS::AtLeastOnce, i + 1),
        );
        assert_eq!(
            h.packets(publisher),
            vec![Packet::PubAck(PublishAck::success(i + 1))]
        );
    }
    assert_eq!(h.payloads(sub), vec!["a0"]);
    (h, sub, publisher)
}

#[test]
fn a_full_subscriber_holds_the_publisher_back_until_it_drains() {
    let (mut h, sub, publisher) = full_subscriber(5000);
    // The queue is full: neither message is acknowledged, nothing is dropped.
    h.publish(publisher, msg_q("t", "b0", QoS::AtLeastOnce, 10));
    h.publish(publisher, msg_q("t", "b1", QoS::AtLeastOnce, 11));
    h.assert_silent(publisher);
    assert_eq!(h.broker.held_publications(), 2);
    assert_eq!(h.broker.stats().messages_dropped, 0);
    // Draining to half (2 queued) lets both go, in order, acknowledged.
    h.puback(sub, 1);
    h.assert_silent(publisher);
    h.puback(sub, 2);
    assert_eq!(
        h.packets(publisher),
        vec![
            Packet::PubAck(PublishAck::success(10)),
            Packet::PubAck(PublishAck::success(11))
        ]
    );
    assert_eq!(h.broker.held_publications(), 0);
    let mut received = h.payloads(sub);
    for id in 3..=7 {
        h.puback(sub, id);
        received.extend(h.payloads(sub));
    }
    assert_eq!(received, vec!["a1", "a2", "a3", "a4", "b0", "b1"]);
    assert_eq!(h.broker.stats().messages_dropped, 0);
}

#[test]
fn a_held_publication_is_routed_after_the_hold_limit() {
    let (mut h, _sub, publisher) = full_subscriber(2000);
    h.publish(publisher, msg_q("t", "late", QoS::AtLeastOnce, 10));
    h.assert_silent(publisher);
    let due = h.broker.next_timeout().expect("a hold deadline");
    assert!(due <= h.now + Duration::from_secs(2));
    h.tick_at(2);
    // Routed as before the feature: the full queue drops its oldest.
    assert_eq!(
        h.packets(publisher),
        vec![Packet::PubAck(PublishAck::success(10))]
    );
    assert_eq!(h.broker.stats().messages_dropped, 1);
}

#[test]
fn an_offline_subscriber_or_the_publishers_own_session_holds_nobody() {
    let (mut h, sub, publisher) = full_subscriber(5000);
    // The publisher's own full queue does not hold it back.
    let own = h.connect(v5("own").receive_maximum(1));
    h.subscribe(own, "own", QoS::AtLeastOnce);
    for i in 0..6u16 {
        h.publish(own, msg_q("own", "x", QoS::AtLeastOnce, 100 + i));
        let ack = Packet::PubAck(PublishAck::success(100 + i));
        assert!(
            h.packets(own).contains(&ack),
            "publication {i} acknowledged"
        );
    }
    // A held publisher is let go when the full session goes offline.
    h.publish(publisher, msg_q("t", "b0", QoS::AtLeastOnce, 10));
    h.assert_silent(publisher);
    h.lose(sub);
    assert_eq!(
        h.packets(publisher),
        vec![Packet::PubAck(PublishAck::success(10))]
    );
}

#[test]
fn holding_is_off_with_a_zero_limit() {
    let (mut h, _sub, publisher) = full_subscriber(0);
    h.publish(publisher, msg_q("t", "b0", QoS::AtLeastOnce, 10));
    assert_eq!(
        h.packets(publisher),
        vec![Packet::PubAck(PublishAck::success(10))]
    );
    assert_eq!(h.broker.stats().messages_dropped, 1);
}

#[test]
fn a_publisher_that_goes_away_loses_only_unacknowledged_publications() {
    let (mut h, sub, publisher) = full_subscriber(5000);
    h.publish(publisher, msg_q("t", "b0", QoS::AtLeastOnce, 10));
    h.lose(publisher);
    assert_eq!(h.broker.held_publications(), 0);
    let mut received = Vec::new();
    for id in 1..=5 {
        h.puback(sub, id);
        received.extend(h.payloads(sub));
    }
    assert_eq!(received, vec!["a1", "a2", "a3", "a4"]);
}

#[test]
fn the_hold_deadline_is_the_oldest_held_publication_of_any_publisher() {
    let (mut h, _sub, first) = full_subscriber(2000);
    let second = h.connect(v311("p2"));
    let third = h.connect(v311("p3"));
    assert_eq!(h.broker.next_hold_deadline(), None);
    h.publish(first, msg_q("t", "f0", QoS::AtLeastOnce, 10));
    h.advance(1);
    h.publish(second, msg_q("t", "s0", QoS::AtLeastOnce, 20));
    h.publish(first, msg_q("t", "f1", QoS::AtLeastOnce, 11));
    h.publish(third, msg_q("t", "t0", QoS::AtLeastOnce, 30));
    assert_eq!(h.broker.held_publications(), 4);
    // The first publisher's oldest (held at 0 s) is due first, at 2 s.
    assert_eq!(h.broker.next_hold_deadline(), Some(h.at(2)));
    // It goes away: the others' (held at 1 s) are next.
    h.lose(first);
    assert_eq!(h.broker.next_hold_deadline(), Some(h.at(3)));
    // At 3 s both are routed regardless of the full queue: nothing is held any more.
    h.tick_at(3);
    assert_eq!(h.broker.held_publications(), 0);
    assert_eq!(h.broker.next_hold_deadline(), None);
    assert_eq!(
        h.packets(second),
        vec![Packet::PubAck(PublishAck::success(20))]
    );
    assert_eq!(
        h.packets(third),
        vec![Packet::PubAck(PublishAck::success(30))]
    );
}
