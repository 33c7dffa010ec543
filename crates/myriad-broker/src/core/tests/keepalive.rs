//! Keep alive enforced by the core (MQTT-3.1.2-22, 3.1.2-24).

use super::*;
use crate::hooks::{OfflineReason, Presence};

#[test]
fn a_silent_connection_is_closed_after_one_and_a_half_keep_alives() {
    let mut h = H::new();
    h.broker.set_presence_events(true);
    let conn = h.connect(v5("quiet").keep_alive(10));
    // Due at 15 s: nothing happens at 14 s.
    h.tick_at(14);
    h.assert_silent(conn);
    h.tick_at(15);
    h.expect_disconnect(conn, ReasonCode::KeepAliveTimeout);
    assert!(matches!(
        h.presence.last(),
        Some(Presence::Offline {
            reason: OfflineReason::KeepAliveTimeout,
            ..
        })
    ));
    assert_eq!(h.broker.session_state("quiet"), None);
}

#[test]
fn any_packet_postpones_the_deadline_and_a_v311_client_is_just_closed() {
    let mut h = H::new();
    let watcher = subscriber(&mut h, "watcher", "wills", QoS::AtMostOnce);
    let mut connect = v311("pinger").keep_alive(10);
    connect.will = Some(will("wills", "gone"));
    let conn = h.connect(connect);
    h.advance(12);
    h.packet(conn, Packet::PingReq);
    assert_eq!(h.packets(conn), vec![Packet::PingResp]);
    // 15 s after the start the check finds a packet 3 s old and re-arms for 27 s.
    h.tick_at(26);
    h.assert_silent(conn);
    h.tick_at(27);
    assert_eq!(h.out(conn), vec![Output::Close(conn)]);
    // Closing for keep alive publishes the will.
    assert_eq!(h.payloads(watcher), vec!["gone"]);
}

#[test]
fn keep_alive_zero_is_never_checked_and_a_capped_one_is() {
    let mut h = H::with(|c| c.max_keep_alive_secs = 20);
    let forever = h.connect(v311("forever").keep_alive(0));
    let capped = h.connect(v5("capped").keep_alive(0));
    h.tick_at(29);
    h.assert_silent(capped);
    h.tick_at(30);
    h.expect_disconnect(capped, ReasonCode::KeepAliveTimeout);
    h.tick_at(100_000);
    h.assert_silent(forever);
    assert_eq!(h.broker.next_timeout(), None);
}

#[test]
fn a_taken_over_connection_leaves_no_check_behind() {
    let mut h = H::new();
    let first = h.connect(v5("same").keep_alive(10));
    let second = h.connect(v5("same").keep_alive(100));
    h.expect_disconnect(first, ReasonCode::SessionTakenOver);
    h.tick_at(20);
    h.assert_silent(second);
    h.tick_at(150);
    h.expect_disconnect(second, ReasonCode::KeepAliveTimeout);
}
