//! Session expiry and the Session Expiry Interval in DISCONNECT.

use super::*;

/// Client "c" with a 10 s session subscribed to "t", then disconnected at 0 s.
fn offline_session() -> H {
    let mut h = H::new();
    let c = h.connect(v5("c").resume().expiry(10));
    h.subscribe(c, "t", QoS::AtLeastOnce);
    h.lose(c);
    h
}

#[test]
fn session_is_still_there_before_expiry() {
    let mut h = offline_session();
    assert_eq!(h.broker.next_timeout(), Some(h.at(10)));
    h.tick_at(5);
    assert_eq!(h.broker.session_state("c"), Some(false));
    h.inject(msg_q("t", "kept", QoS::AtLeastOnce, 0));
    let (c, ack) = h.connect_ack(v5("c").resume().expiry(10));
    assert!(ack.session_present);
    assert_eq!(h.payloads(c), vec!["kept"]);
    // Reconnecting cancelled the expiry timer.
    assert_eq!(h.broker.next_timeout(), None);
    h.tick_at(20);
    assert_eq!(h.broker.session_state("c"), Some(true));
}

#[test]
fn session_is_gone_after_expiry() {
    let mut h = offline_session();
    h.inject(msg_q("t", "lost", QoS::AtLeastOnce, 0));
    h.tick_at(11);
    assert_eq!(h.broker.session_state("c"), None);
    assert_eq!(h.broker.session_count(), 0);
    assert_eq!(h.broker.subscription_count(), 0);
    assert_eq!(h.broker.next_timeout(), None);
    let (c, ack) = h.connect_ack(v5("c").resume().expiry(10));
    assert!(!ack.session_present);
    h.assert_silent(c);
}

#[test]
fn v311_persistent_session_never_expires() {
    let mut h = H::new();
    let c = h.connect(v311("c").resume());
    h.lose(c);
    assert_eq!(h.broker.next_timeout(), None);
    h.tick_at(10 * 365 * 24 * 3600);
    assert_eq!(h.broker.session_state("c"), Some(false));
}

#[test]
fn disconnect_raising_expiry_from_zero_is_protocol_error() {
    let mut h = H::new();
    let watcher = subscriber(&mut h, "w", "will", QoS::AtMostOnce);
    let c = h.connect(v5("c").will(will("will", "gone")));
    let mut disconnect = Disconnect::new(ReasonCode::Success);
    disconnect.properties.session_expiry_interval = Some(30);
    h.disconnect_with(c, disconnect);
    h.expect_disconnect(c, ReasonCode::ProtocolError);
    // Closed by the server on an error: the will goes out, the session ends.
    assert_eq!(h.payloads(watcher), vec!["gone"]);
    assert_eq!(h.broker.session_state("c"), None);
}

#[test]
fn disconnect_can_lower_expiry_to_zero() {
    let mut h = H::new();
    let c = h.connect(v5("c").resume().expiry(100));
    let mut disconnect = Disconnect::new(ReasonCode::Success);
    disconnect.properties.session_expiry_interval = Some(0);
    h.disconnect_with(c, disconnect);
    assert_eq!(h.out(c), vec![Output::Close(c)]);
    assert_eq!(h.broker.session_count(), 0);
}

#[test]
fn disconnect_can_change_a_nonzero_expiry() {
    let mut h = H::with(|c| c.max_session_expiry_secs = 50);
    let c = h.connect(v5("c").resume().expiry(10));
    let mut disconnect = Disconnect::new(ReasonCode::Success);
    disconnect.properties.session_expiry_interval = Some(500);
    h.disconnect_with(c, disconnect);
    assert_eq!(h.out(c), vec![Output::Close(c)]);
    // Raised, but still capped by the configuration.
    assert_eq!(h.broker.next_timeout(), Some(h.at(50)));
    h.tick_at(49);
    assert_eq!(h.broker.session_state("c"), Some(false));
    h.tick_at(50);
    assert_eq!(h.broker.session_state("c"), None);
}

#[test]
fn reconnect_updates_the_expiry_interval() {
    let mut h = offline_session();
    let c = h.connect(v5("c").resume().expiry(60));
    h.lose(c);
    h.tick_at(30);
    assert_eq!(h.broker.session_state("c"), Some(false));
    h.tick_at(60);
    assert_eq!(h.broker.session_state("c"), None);
}
