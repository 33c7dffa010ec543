//! Per-connection ACLs and presence events.

use std::sync::Arc;

use super::*;
use crate::hooks::{Acl, OfflineReason, Presence};

/// Allows publishing and subscribing only under `own/`.
#[derive(Debug)]
struct OwnOnly;

impl Acl for OwnOnly {
    fn may_publish(&self, topic: &str) -> bool {
        topic.starts_with("own/")
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        filter.starts_with("own/")
    }
}

fn restricted(h: &mut H, connect: Connect) -> ConnId {
    let conn = h.connect(connect);
    h.broker.set_acl(conn, Arc::new(OwnOnly));
    conn
}

#[test]
fn v5_publish_outside_the_acl_gets_not_authorized_and_is_not_routed() {
    let mut h = H::new();
    let watcher = subscriber(&mut h, "watcher", "#", QoS::AtLeastOnce);
    let device = restricted(&mut h, v5("device"));
    h.publish(device, msg_q("other/x", "no", QoS::AtLeastOnce, 1));
    h.publish(device, msg_q("other/y", "no", QoS::ExactlyOnce, 2));
    h.publish(device, msg("other/z", "no"));
    assert_eq!(
        h.packets(device),
        vec![
            Packet::PubAck(ack(1, ReasonCode::NotAuthorized)),
            Packet::PubRec(ack(2, ReasonCode::NotAuthorized)),
        ]
    );
    h.assert_silent(watcher);
    assert_eq!(h.broker.stats().publishes_denied, 3);
    // Inside its namespace it publishes as usual.
    h.publish(device, msg_q("own/t", "yes", QoS::AtLeastOnce, 3));
    assert_eq!(
        h.packets(device),
        vec![Packet::PubAck(ack(3, ReasonCode::Success))]
    );
    assert_eq!(h.payloads(watcher), vec!["yes"]);
}

#[test]
fn v311_publish_outside_the_acl_is_acknowledged_and_dropped() {
    let mut h = H::new();
    let watcher = subscriber(&mut h, "watcher", "#", QoS::AtLeastOnce);
    let device = restricted(&mut h, v311("device"));
    h.publish(device, msg_q("other/x", "no", QoS::AtLeastOnce, 1));
    h.publish(device, msg_q("other/y", "no", QoS::ExactlyOnce, 2));
    assert_eq!(
        h.packets(device),
        vec![
            Packet::PubAck(ack(1, ReasonCode::Success)),
            Packet::PubRec(ack(2, ReasonCode::Success)),
        ]
    );
    // The QoS 2 flow still completes.
    h.pubrel(device, 2);
    let packets = h.packets(device);
    assert!(
        matches!(packets.as_slice(), [Packet::PubComp(c)] if c.packet_id == 2),
        "{packets:?}"
    );
    h.assert_silent(watcher);
}

#[test]
fn subscriptions_outside_the_acl_are_refused_with_not_authorized() {
    let mut h = H::new();
    let device = restricted(&mut h, v5("device"));
    assert_eq!(
        h.subscribe_with(
            device,
            &[
                ("own/#", opts(QoS::AtLeastOnce)),
                ("#", opts(QoS::AtLeastOnce)),
                ("$share/g/other/+", opts(QoS::AtMostOnce)),
                ("$share/g/own/x", opts(QoS::AtMostOnce)),
            ],
            None
        ),
        vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::NotAuthorized,
            ReasonCode::NotAuthorized,
            ReasonCode::Success,
        ]
    );
    assert_eq!(h.broker.stats().subscriptions_denied, 2);
    // The refused filter never delivers.
    h.inject(msg("elsewhere", "x"));
    h.assert_silent(device);
}

#[test]
fn connections_without_an_acl_are_unrestricted() {
    let mut h = H::new();
    let client = h.connect(v5("free"));
    assert_eq!(
        h.subscribe(client, "#", QoS::AtMostOnce),
        vec![ReasonCode::Success]
    );
}

#[test]
fn presence_reports_online_and_each_way_of_going_offline_in_order() {
    let mut h = H::new();
    h.broker.set_presence_events(true);
    let a = h.connect(v5("a"));
    h.disconnect(a);
    let b = h.connect(v311("b").keep_alive(60));
    h.lose(b);
    let c1 = h.connect(v5("c"));
    let c2 = h.connect(v5("c"));
    h.drain();
    h.broker
        .handle_connection_lost(h.now, c2, ConnectionLoss::KeepAliveTimeout);
    h.drain();
    let summary: Vec<(ConnId, String, Option<OfflineReason>)> = h
        .presence
        .iter()
        .map(|p| match p {
            Presence::Online {
                conn, client_id, ..
            } => (*conn, client_id.to_string(), None),
            Presence::Offline {
                conn,
                client_id,
                reason,
            } => (*conn, client_id.to_string(), Some(*reason)),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (a, "a".into(), None),
            (a, "a".into(), Some(OfflineReason::ClientDisconnect)),
            (b, "b".into(), None),
            (b, "b".into(), Some(OfflineReason::NetworkLoss)),
            (c1, "c".into(), None),
            (c1, "c".into(), Some(OfflineReason::TakenOver)),
            (c2, "c".into(), None),
            (c2, "c".into(), Some(OfflineReason::KeepAliveTimeout)),
        ]
    );
    assert!(matches!(
        h.presence[2],
        Presence::Online {
            keep_alive: 60,
            protocol: ProtocolVersion::V311,
            session_present: false,
            ..
        }
    ));
}

#[test]
fn presence_is_off_by_default_and_a_protocol_error_names_its_reason() {
    let mut h = H::new();
    let a = h.connect(v5("a"));
    h.disconnect(a);
    assert!(h.presence.is_empty());
    h.broker.set_presence_events(true);
    let b = h.connect(v5("b"));
    // Topic alias 0 is a protocol error the core detects.
    let mut bad = msg("t", "x");
    bad.properties.topic_alias = Some(0);
    h.publish(b, bad);
    h.drain();
    assert_eq!(
        h.presence.last(),
        Some(&Presence::Offline {
            conn: b,
            client_id: "b".into(),
            reason: OfflineReason::ProtocolError(ReasonCode::TopicAliasInvalid),
        })
    );
}
