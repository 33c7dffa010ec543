//! Delivery receipts for acknowledged messages under a prefix.

use super::*;
use crate::core::receipts::DeliveryReceipt;

fn receipts(h: &mut H, conn: ConnId) -> Vec<DeliveryReceipt> {
    h.out(conn)
        .into_iter()
        .filter_map(|o| match o {
            Output::Delivered(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn command(topic: &str, correlation: &[u8]) -> Publish {
    let mut publish = msg_q(topic, "go", QoS::AtLeastOnce, 0);
    publish.properties.correlation_data = Some(Bytes::copy_from_slice(correlation));
    publish
}

#[test]
fn puback_of_a_message_under_the_prefix_is_reported_once() {
    let mut h = H::new();
    h.broker.set_delivery_receipts(Some("$commands/".into()));
    let device = subscriber(&mut h, "d1", "$commands/d1/#", QoS::AtLeastOnce);
    h.broker
        .publish(h.now, command("$commands/d1/reboot", b"c-1"));
    h.broker
        .publish(h.now, msg_q("$other/d1", "x", QoS::AtLeastOnce, 0));
    h.drain();
    let sent = h.publishes(device);
    assert_eq!(sent.len(), 1);
    assert!(
        receipts(&mut h, device).is_empty(),
        "no receipt before PUBACK"
    );
    h.packet(
        device,
        Packet::PubAck(ack(sent[0].packet_id, ReasonCode::Success)),
    );
    let got = receipts(&mut h, device);
    assert_eq!(
        got,
        vec![DeliveryReceipt {
            conn: device,
            client_id: "d1".into(),
            topic: "$commands/d1/reboot".into(),
            correlation_data: Some(Bytes::from_static(b"c-1")),
        }]
    );
    // A repeated PUBACK closes nothing and reports nothing.
    h.packet(
        device,
        Packet::PubAck(ack(sent[0].packet_id, ReasonCode::Success)),
    );
    assert!(receipts(&mut h, device).is_empty());
}

#[test]
fn no_receipts_unless_enabled_or_outside_the_prefix() {
    let mut h = H::new();
    let device = subscriber(&mut h, "d1", "$commands/d1/#", QoS::AtLeastOnce);
    h.broker
        .publish(h.now, command("$commands/d1/reboot", b"c-1"));
    h.drain();
    let first = h.publishes(device);
    h.packet(
        device,
        Packet::PubAck(ack(first[0].packet_id, ReasonCode::Success)),
    );
    assert!(receipts(&mut h, device).is_empty());
    h.broker.set_delivery_receipts(Some("$commands/d2/".into()));
    h.broker.publish(h.now, command("$commands/d1/x", b"c-2"));
    h.drain();
    let second = h.publishes(device);
    h.packet(
        device,
        Packet::PubAck(ack(second[0].packet_id, ReasonCode::Success)),
    );
    assert!(receipts(&mut h, device).is_empty());
}
