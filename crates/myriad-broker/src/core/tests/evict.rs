//! Evictions by client id: the connection is closed with the reason, and
//! on request the session and retained messages go too.

use super::*;
use crate::core::evict::{Evicted, Eviction};

#[test]
fn a_v5_connection_gets_disconnect_with_the_reason_and_its_will() {
    let mut h = H::new();
    let watcher = subscriber(&mut h, "watcher", "will/#", QoS::AtMostOnce);
    let c = h.connect(v5("dev").will(will("will/dev", "gone")));
    let evicted = h.broker.evict(
        h.now,
        &Eviction::disconnect("dev", ReasonCode::AdministrativeAction),
    );
    assert_eq!(
        evicted,
        Evicted {
            disconnected: true,
            ..Evicted::default()
        }
    );
    h.expect_disconnect(c, ReasonCode::AdministrativeAction);
    assert_eq!(h.payloads(watcher), vec!["gone"]);
    // Nothing left to evict.
    let again = h.broker.evict(
        h.now,
        &Eviction::disconnect("dev", ReasonCode::AdministrativeAction),
    );
    assert_eq!(again, Evicted::default());
}

#[test]
fn a_v311_connection_is_closed_and_the_will_may_be_dropped() {
    let mut h = H::new();
    let watcher = subscriber(&mut h, "watcher", "will/#", QoS::AtMostOnce);
    let c = h.connect(v311("dev").will(will("will/dev", "gone")));
    let eviction = Eviction {
        publish_will: false,
        ..Eviction::disconnect("dev", ReasonCode::NotAuthorized)
    };
    assert!(h.broker.evict(h.now, &eviction).disconnected);
    assert_eq!(h.out(c), vec![Output::Close(c)]);
    h.assert_silent(watcher);
}

#[test]
fn discarding_removes_the_session_queue_and_retained_namespace() {
    let mut h = H::new();
    let c = h.connect(v5("dev").resume().expiry(3600));
    h.subscribe(c, "cmd/dev/#", QoS::AtLeastOnce);
    h.inject(retained("ns/dev/secret", "old"));
    h.inject(retained("ns/dev", "top"));
    h.inject(retained("ns/other/x", "keep"));
    let kept = Eviction::disconnect("dev", ReasonCode::NotAuthorized);
    assert!(h.broker.evict(h.now, &kept).disconnected);
    h.drain();
    // Offline, the session queues a command.
    h.inject(msg_q("cmd/dev/wipe", "old-secret", QoS::AtLeastOnce, 0));
    assert_eq!(h.broker.session_state("dev"), Some(false));
    let eviction = Eviction {
        discard_session: true,
        clear_retained: vec!["ns/dev/#".into()],
        ..Eviction::disconnect("dev", ReasonCode::NotAuthorized)
    };
    assert_eq!(
        h.broker.evict(h.now, &eviction),
        Evicted {
            disconnected: false,
            session_discarded: true,
            retained_cleared: 2,
        }
    );
    assert_eq!(h.broker.session_state("dev"), None);
    assert_eq!(h.broker.retained_count(), 1);
    // A new client with the id starts from nothing.
    let (c, ack) = h.connect_ack(v5("dev").resume().expiry(3600));
    assert!(!ack.session_present);
    h.subscribe(c, "ns/#", QoS::AtLeastOnce);
    assert_eq!(h.payloads(c), vec!["keep"]);
}
