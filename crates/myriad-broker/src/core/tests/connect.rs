//! CONNECT, CONNACK, session present, keep alive and takeover.

use super::*;
use crate::core::connect::negotiated_keep_alive;

#[test]
fn v5_connack_announces_capabilities() {
    let mut h = H::with(|c| {
        c.receive_maximum = 10;
        c.max_packet_size = 2048;
        c.topic_alias_maximum = 5;
    });
    let (_, ack) = h.connect_ack(v5("c"));
    assert_eq!(
        ack,
        ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: Properties {
                receive_maximum: Some(10),
                maximum_packet_size: Some(2048),
                topic_alias_maximum: Some(5),
                retain_available: Some(true),
                wildcard_subscription_available: Some(true),
                subscription_identifier_available: Some(true),
                shared_subscription_available: Some(true),
                ..Properties::default()
            }
            .into(),
        }
    );
    // QoS 2 is supported: Maximum QoS is absent.
    assert_eq!(ack.properties.maximum_qos, None);
}

#[test]
fn v311_connack_has_no_properties() {
    let mut h = H::new();
    let (_, ack) = h.connect_ack(v311("c"));
    assert_eq!(
        ack,
        ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: PacketProperties::new(),
        }
    );
}

#[test]
fn v5_empty_client_id_gets_assigned_one() {
    let mut h = H::new();
    let (c1, ack1) = h.connect_ack(v5(""));
    let (_, ack2) = h.connect_ack(v5(""));
    let id1 = ack1
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned id");
    let id2 = ack2
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned id");
    assert!(!id1.is_empty());
    assert_ne!(id1, id2);
    assert_eq!(h.broker.session_state(&id1), Some(true));
    assert_eq!(h.broker.connection_count(), 2);
    h.assert_silent(c1);
}

#[test]
fn v311_empty_client_id_with_clean_session_is_accepted() {
    let mut h = H::new();
    let (_, ack) = h.connect_ack(v311(""));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.properties.is_empty());
    assert_eq!(h.broker.session_count(), 1);
}

#[test]
fn v311_empty_client_id_without_clean_session_is_refused() {
    let mut h = H::new();
    let accepted = h.broker.handle_connect(h.now, 7, v311("").resume());
    assert!(!accepted);
    assert_eq!(
        h.out(7),
        vec![
            Output::Send(
                7,
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    // Encoded as the 3.1.1 return code 0x02 (identifier rejected).
                    reason_code: ReasonCode::ClientIdentifierNotValid,
                    properties: PacketProperties::new(),
                })
            ),
            Output::Close(7)
        ]
    );
    assert_eq!(ReasonCode::ClientIdentifierNotValid.to_v311_connack(), 2);
    assert_eq!(h.broker.connection_count(), 0);
    assert_eq!(h.broker.session_count(), 0);
}

#[test]
fn session_present_false_then_true_v5() {
    let mut h = H::new();
    let (c, ack) = h.connect_ack(v5("c").resume().expiry(100));
    assert!(!ack.session_present);
    h.disconnect(c);
    assert_eq!(h.broker.session_state("c"), Some(false));
    let (_, ack) = h.connect_ack(v5("c").resume().expiry(100));
    assert!(ack.session_present);
}

#[test]
fn session_present_false_then_true_v311() {
    let mut h = H::new();
    let (c, ack) = h.connect_ack(v311("c").resume());
    assert!(!ack.session_present);
    h.disconnect(c);
    let (_, ack) = h.connect_ack(v311("c").resume());
    assert!(ack.session_present);
}

#[test]
fn session_with_zero_expiry_is_not_kept() {
    let mut h = H::new();
    let c = h.connect(v5("c").resume());
    h.disconnect(c);
    assert_eq!(h.broker.session_count(), 0);
    let (_, ack) = h.connect_ack(v5("c").resume());
    assert!(!ack.session_present);
}

#[test]
fn clean_start_discards_the_session() {
    let mut h = H::new();
    let c = h.connect(v5("c").resume().expiry(100));
    h.subscribe(c, "t", QoS::AtLeastOnce);
    h.disconnect(c);
    h.inject(msg_q("t", "queued", QoS::AtLeastOnce, 0));
    let (c, ack) = h.connect_ack(v5("c").expiry(100));
    assert!(!ack.session_present);
    // Neither the queued message nor the subscription survived.
    h.assert_silent(c);
    assert_eq!(h.broker.subscription_count(), 0);
    h.inject(msg("t", "later"));
    h.assert_silent(c);
}

#[test]
fn session_expiry_is_capped_by_config() {
    let mut h = H::with(|c| c.max_session_expiry_secs = 30);
    let (c, ack) = h.connect_ack(v5("c").resume().expiry(3600));
    assert_eq!(ack.properties.session_expiry_interval, Some(30));
    // Under the cap: the client's value stands and is not echoed.
    let (_, ack) = h.connect_ack(v5("d").expiry(10));
    assert_eq!(ack.properties.session_expiry_interval, None);
    // The capped value is the one enforced.
    h.lose(c);
    h.tick_at(29);
    assert_eq!(h.broker.session_state("c"), Some(false));
    h.tick_at(30);
    assert_eq!(h.broker.session_state("c"), None);
}

#[test]
fn server_keep_alive_when_client_asks_above_max() {
    let mut h = H::with(|c| c.max_keep_alive_secs = 60);
    let config = h.broker.config().clone();

    let (_, ack) = h.connect_ack(v5("a").keep_alive(120));
    assert_eq!(ack.properties.server_keep_alive, Some(60));
    assert_eq!(negotiated_keep_alive(&config, &v5("a").keep_alive(120)), 60);

    let (_, ack) = h.connect_ack(v5("b").keep_alive(30));
    assert_eq!(ack.properties.server_keep_alive, None);
    assert_eq!(negotiated_keep_alive(&config, &v5("b").keep_alive(30)), 30);

    // No keep alive asked while a cap exists: the cap is imposed.
    let (_, ack) = h.connect_ack(v5("c").keep_alive(0));
    assert_eq!(ack.properties.server_keep_alive, Some(60));

    // 3.1.1 cannot be told: no property, and the client's value stands.
    let (_, ack) = h.connect_ack(v311("d").keep_alive(120));
    assert!(ack.properties.is_empty());
    assert_eq!(
        negotiated_keep_alive(&config, &v311("d").keep_alive(120)),
        120
    );
}

#[test]
fn no_server_keep_alive_without_a_cap() {
    let mut h = H::new();
    let (_, ack) = h.connect_ack(v5("c").keep_alive(0));
    assert_eq!(ack.properties.server_keep_alive, None);
}

#[test]
fn takeover_v5_keeps_session_and_subscriptions() {
    let mut h = H::new();
    let old = h.connect(v5("c").resume().expiry(100));
    h.subscribe(old, "t", QoS::AtLeastOnce);
    let (new, ack) = h.connect_ack(v5("c").resume().expiry(100));
    h.expect_disconnect(old, ReasonCode::SessionTakenOver);
    assert!(ack.session_present);
    assert_eq!(h.broker.connection_count(), 1);
    assert_eq!(h.broker.session_count(), 1);

    h.inject(msg_q("t", "hello", QoS::AtLeastOnce, 0));
    let publish = h.one_publish(new);
    assert_eq!((payload(&publish), publish.packet_id), ("hello".into(), 1));
    h.assert_silent(old);
    // Packets still arriving on the old connection are ignored.
    h.publish(old, msg_q("t", "stale", QoS::AtLeastOnce, 5));
    h.assert_silent(old);
    h.assert_silent(new);
}

#[test]
fn takeover_v311_closes_without_disconnect() {
    let mut h = H::new();
    let old = h.connect(v311("c").resume());
    let (new, ack) = h.connect_ack(v311("c").resume());
    assert_eq!(h.out(old), vec![Output::Close(old)]);
    assert!(ack.session_present);
    h.packet(new, Packet::PingReq);
    assert_eq!(h.packets(new), vec![Packet::PingResp]);
}

#[test]
fn takeover_with_clean_start_drops_subscriptions() {
    let mut h = H::new();
    let old = h.connect(v5("c").resume().expiry(100));
    h.subscribe(old, "t", QoS::AtMostOnce);
    let (new, ack) = h.connect_ack(v5("c"));
    h.expect_disconnect(old, ReasonCode::SessionTakenOver);
    assert!(!ack.session_present);
    h.inject(msg("t", "x"));
    h.assert_silent(new);
    assert_eq!(h.broker.subscription_count(), 0);
}

#[test]
fn ping_and_second_connect() {
    let mut h = H::new();
    let c = h.connect(v5("c"));
    h.packet(c, Packet::PingReq);
    assert_eq!(h.packets(c), vec![Packet::PingResp]);
    // A second CONNECT is a Protocol Error (MQTT-3.1.0-2).
    h.packet(c, Packet::Connect(Box::new(v5("c"))));
    h.expect_disconnect(c, ReasonCode::ProtocolError);
    assert_eq!(h.broker.connection_count(), 0);
}

#[test]
fn authentication_method_is_refused() {
    let mut h = H::new();
    let mut connect = v5("c");
    connect.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let accepted = h.broker.handle_connect(h.now, 3, connect);
    assert!(!accepted);
    assert_eq!(
        h.out(3),
        vec![
            Output::Send(
                3,
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason_code: ReasonCode::BadAuthenticationMethod,
                    properties: PacketProperties::new(),
                })
            ),
            Output::Close(3)
        ]
    );
}

#[test]
fn assigned_client_id_session_can_be_resumed() {
    let mut h = H::new();
    let (c, ack) = h.connect_ack(v5("").resume().expiry(100));
    let id = ack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned id");
    h.subscribe(c, "t", QoS::AtMostOnce);
    h.lose(c);
    let (c, ack) = h.connect_ack(v5(&id).resume().expiry(100));
    assert!(ack.session_present);
    assert_eq!(ack.properties.assigned_client_identifier, None);
    h.inject(msg("t", "x"));
    assert_eq!(h.payloads(c), vec!["x"]);
}

#[test]
fn v311_clean_session_discards_a_stored_session() {
    let mut h = H::new();
    let c = h.connect(v311("c").resume());
    h.subscribe(c, "t", QoS::AtMostOnce);
    h.disconnect(c);
    let (c, ack) = h.connect_ack(v311("c"));
    assert!(!ack.session_present);
    h.inject(msg("t", "x"));
    h.assert_silent(c);
    // Clean Session 1: nothing kept after this connection either.
    h.disconnect(c);
    assert_eq!(h.broker.session_count(), 0);
}
