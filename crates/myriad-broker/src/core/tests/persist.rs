//! Recording changes for a store and restoring from its snapshot: a
//! "restart" rebuilds the broker from what was committed, as after a crash.

use myriad_store::{MemoryStore, SessionStore, Snapshot};

use super::*;

/// Wall-clock time of the harness's start, in Unix milliseconds.
const UNIX_START: u64 = 1_700_000_000_000;

/// A harness whose broker records changes, and the store they are committed to.
struct P {
    h: H,
    store: MemoryStore,
}

impl P {
    fn new() -> P {
        let mut h = H::new();
        h.broker = Broker::restore(
            BrokerConfig::default(),
            Snapshot::default(),
            h.start,
            UNIX_START,
        );
        P {
            h,
            store: MemoryStore::new(),
        }
    }

    /// Commits what the broker recorded (the shell does this after every batch).
    fn commit(&mut self) {
        let changes = self.h.broker.take_changes();
        self.store
            .commit(&changes)
            .expect("the broker records a consistent batch");
    }

    /// Throws the broker away with anything uncommitted and rebuilds it from the store.
    fn crash_and_restart(&mut self) {
        let snapshot = self.store.load().expect("load");
        let since_start = self.h.now.duration_since(self.h.start);
        let now_unix = UNIX_START + u64::try_from(since_start.as_millis()).expect("ms");
        self.h.broker = Broker::restore(BrokerConfig::default(), snapshot, self.h.now, now_unix);
        self.h.outputs.clear();
    }

    fn stored_sessions(&mut self) -> Vec<String> {
        let snapshot = self.store.load().expect("load");
        snapshot
            .sessions
            .iter()
            .map(|s| s.record.client_id.to_string())
            .collect()
    }
}

fn publisher(p: &mut P) -> ConnId {
    p.h.connect(v5("pub"))
}

#[test]
fn queued_messages_of_an_offline_session_survive_a_restart() {
    let mut p = P::new();
    let s = p.h.connect(v5("s").expiry(300));
    p.h.subscribe(s, "t/#", QoS::AtLeastOnce);
    p.h.disconnect(s);
    let publ = publisher(&mut p);
    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        p.h.publish(publ, msg_q("t/x", body, QoS::AtLeastOnce, i as u16 + 1));
    }
    p.commit();
    p.crash_and_restart();
    let (s, ack) = p.h.connect_ack(v5("s").expiry(300).resume());
    assert!(ack.session_present);
    assert_eq!(p.h.payloads(s), vec!["one", "two", "three"]);
    // The subscription came back too.
    let publ = publisher(&mut p);
    p.h.publish(publ, msg_q("t/y", "four", QoS::AtLeastOnce, 9));
    assert_eq!(p.h.payloads(s), vec!["four"]);
}

#[test]
fn unacknowledged_messages_are_redelivered_with_dup_after_a_restart() {
    let mut p = P::new();
    let s = p.h.connect(v311("s").resume());
    p.h.subscribe(s, "t", QoS::AtLeastOnce);
    let publ = publisher(&mut p);
    p.h.publish(publ, msg_q("t", "m", QoS::AtLeastOnce, 1));
    let first = p.h.one_publish(s);
    assert!(!first.dup);
    p.commit();
    p.crash_and_restart();
    let s = p.h.connect(v311("s").resume());
    let again = p.h.one_publish(s);
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(payload(&again), "m");
    p.h.puback(s, again.packet_id);
    p.commit();
    p.crash_and_restart();
    let s = p.h.connect(v311("s").resume());
    p.h.assert_silent(s);
}

#[test]
fn a_released_qos2_flow_resumes_with_pubrel_after_a_restart() {
    let mut p = P::new();
    let s = p.h.connect(v5("s").expiry(300));
    p.h.subscribe(s, "t", QoS::ExactlyOnce);
    let publ = publisher(&mut p);
    p.h.publish(publ, msg_q("t", "m", QoS::ExactlyOnce, 1));
    let delivered = p.h.one_publish(s);
    p.h.pubrec(s, delivered.packet_id);
    assert_eq!(
        p.h.packets(s),
        vec![Packet::PubRel(PublishAck::success(delivered.packet_id))]
    );
    p.commit();
    p.crash_and_restart();
    let s = p.h.connect(v5("s").expiry(300).resume());
    // Only PUBREL again: the message itself is never sent twice.
    assert_eq!(
        p.h.packets(s),
        vec![Packet::PubRel(PublishAck::success(delivered.packet_id))]
    );
    p.h.pubcomp(s, delivered.packet_id);
    p.commit();
    p.crash_and_restart();
    let s = p.h.connect(v5("s").expiry(300).resume());
    p.h.assert_silent(s);
}

#[test]
fn inbound_qos2_is_routed_once_across_a_restart() {
    let mut p = P::new();
    let s = p.h.connect(v5("s").expiry(300));
    p.h.subscribe(s, "t", QoS::AtMostOnce);
    let publ = p.h.connect(v5("pub").expiry(300));
    p.h.publish(publ, msg_q("t", "once", QoS::ExactlyOnce, 9));
    assert_eq!(
        p.h.packets(publ),
        vec![Packet::PubRec(PublishAck::success(9))]
    );
    assert_eq!(p.h.payloads(s), vec!["once"]);
    p.commit();
    p.crash_and_restart();
    let s = p.h.connect(v5("s").expiry(300).resume());
    let publ = p.h.connect(v5("pub").expiry(300).resume());
    // The publisher did not see PUBREC before the crash: it sends again with DUP.
    let mut resend = msg_q("t", "once", QoS::ExactlyOnce, 9);
    resend.dup = true;
    p.h.publish(publ, resend);
    assert_eq!(
        p.h.packets(publ),
        vec![Packet::PubRec(PublishAck::success(9))]
    );
    p.h.assert_silent(s);
    p.h.pubrel(publ, 9);
    assert_eq!(
        p.h.packets(publ),
        vec![Packet::PubComp(PublishAck::success(9))]
    );
}

#[test]
fn retained_messages_and_their_clearing_survive_a_restart() {
    let mut p = P::new();
    let publ = publisher(&mut p);
    p.h.publish(publ, retained("a", "kept"));
    p.h.publish(publ, retained("b", "gone"));
    p.h.publish(publ, retained("b", ""));
    p.commit();
    p.crash_and_restart();
    assert_eq!(p.h.broker.retained_count(), 1);
    let s = p.h.connect(v5("s"));
    p.h.subscribe(s, "#", QoS::AtMostOnce);
    assert_eq!(p.h.payloads(s), vec!["kept"]);
}

#[test]
fn sessions_that_end_with_their_connection_are_not_stored() {
    let mut p = P::new();
    let c = p.h.connect(v5("clean"));
    p.h.subscribe(c, "t", QoS::AtLeastOnce);
    let q = p.h.connect(v5("lowered").expiry(60));
    p.h.subscribe(q, "t", QoS::AtLeastOnce);
    p.commit();
    assert_eq!(p.stored_sessions(), vec!["lowered"]);
    // DISCONNECT may lower the expiry to 0: the session ends and leaves the store.
    p.h.disconnect_with(
        q,
        Disconnect {
            reason_code: ReasonCode::Success,
            properties: Properties {
                session_expiry_interval: Some(0),
                ..Properties::default()
            }
            .into(),
        },
    );
    p.h.disconnect(c);
    p.commit();
    assert!(p.stored_sessions().is_empty());
}

#[test]
fn session_expiry_keeps_counting_across_a_restart() {
    let mut p = P::new();
    let s = p.h.connect(v5("s").expiry(10));
    p.h.subscribe(s, "t", QoS::AtLeastOnce);
    p.h.disconnect(s);
    p.commit();
    p.h.advance(5);
    p.crash_and_restart();
    p.h.tick_at(6);
    assert_eq!(p.h.broker.session_state("s"), Some(false));
    p.h.tick_at(11);
    assert_eq!(p.h.broker.session_state("s"), None);
    p.commit();
    assert!(p.stored_sessions().is_empty());
}

#[test]
fn a_delayed_will_survives_a_restart() {
    let mut p = P::new();
    let mut w = will("wills/c", "bye");
    w.properties.will_delay_interval = Some(5);
    let c = p.h.connect(v5("c").expiry(100).will(w));
    p.h.lose(c);
    p.commit();
    p.h.advance(1);
    p.crash_and_restart();
    let watcher = p.h.connect(v5("watcher"));
    p.h.subscribe(watcher, "wills/#", QoS::AtMostOnce);
    p.h.tick_at(4);
    p.h.assert_silent(watcher);
    p.h.tick_at(6);
    assert_eq!(p.h.payloads(watcher), vec!["bye"]);
    p.commit();
    let snapshot = p.store.load().expect("load");
    assert!(snapshot.sessions.iter().all(|s| s.will.is_none()));
}

#[test]
fn acknowledged_flows_leave_nothing_behind_in_the_store() {
    let mut p = P::new();
    let s = p.h.connect(v5("s").expiry(300).receive_maximum(1));
    p.h.subscribe(s, "t", QoS::ExactlyOnce);
    let publ = publisher(&mut p);
    for i in 1..=3u16 {
        p.h.publish(publ, msg_q("t", "m", QoS::AtLeastOnce, i));
    }
    for _ in 0..3 {
        let delivered = p.h.one_publish(s);
        p.h.puback(s, delivered.packet_id);
        p.commit();
    }
    let snapshot = p.store.load().expect("load");
    assert_eq!(snapshot.sessions.len(), 1);
    assert!(snapshot.sessions[0].outbound.is_empty());
}

#[test]
fn expired_messages_leave_offline_queues_and_the_store() {
    let mut p = P::new();
    let s = p.h.connect(v5("s").expiry(300));
    p.h.subscribe(s, "t", QoS::AtLeastOnce);
    p.h.disconnect(s);
    let publ = publisher(&mut p);
    let mut short = msg_q("t", "short", QoS::AtLeastOnce, 1);
    short.properties.message_expiry_interval = Some(5);
    p.h.publish(publ, short);
    p.h.publish(publ, msg_q("t", "long", QoS::AtLeastOnce, 2));
    p.commit();
    assert_eq!(p.store.load().expect("load").sessions[0].outbound.len(), 2);
    assert_eq!(p.h.broker.next_timeout(), Some(p.h.at(5)));
    p.h.tick_at(6);
    p.commit();
    assert_eq!(p.store.load().expect("load").sessions[0].outbound.len(), 1);
    assert_eq!(p.h.broker.stats().messages_expired, 1);
    // Only the session's own expiry is left to wait for.
    assert_eq!(p.h.broker.next_timeout(), Some(p.h.at(300)));
    let s = p.h.connect(v5("s").expiry(300).resume());
    assert_eq!(p.h.payloads(s), vec!["long"]);
}
