//! Sans-IO tests of the broker core: packets in, exact packets out.
//!
//! [`H`] owns a [`Broker`] and a fake clock. Outputs are drained into a
//! buffer and taken per connection, so each test only looks at the
//! connections it cares about.

mod activity;
mod alias;
mod backpressure;
mod connect;
mod console;
mod evict;
mod expiry;
mod hooks;
mod keepalive;
mod limits;
mod outbound;
mod persist;
mod properties;
mod publish;
mod receipts;
mod retained;
mod subscribe;
mod will;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use myriad_mqtt::{
    ConnAck, Connect, Disconnect, Packet, PacketProperties, Properties, ProtocolVersion, Publish,
    PublishAck, QoS, ReasonCode, Subscribe, SubscriptionOptions, SubscriptionRequest, Unsubscribe,
    Will,
};

use super::{Broker, ConnId, ConnectionLoss, Output};
use crate::config::BrokerConfig;

/// Test harness: a broker, a clock and the outputs not yet looked at.
struct H {
    broker: Broker,
    now: Instant,
    start: Instant,
    outputs: Vec<Output>,
    next_conn: ConnId,
    next_packet_id: u16,
    /// Protocol and Maximum Packet Size of every connection opened.
    peers: HashMap<ConnId, (ProtocolVersion, u32)>,
    /// Presence events, in order (when enabled).
    presence: Vec<crate::hooks::Presence>,
}

impl H {
    fn new() -> H {
        H::with(|_| {})
    }

    fn with(configure: impl FnOnce(&mut BrokerConfig)) -> H {
        let mut config = BrokerConfig::default();
        configure(&mut config);
        let now = Instant::now();
        H {
            broker: Broker::new(config),
            now,
            start: now,
            outputs: Vec::new(),
            next_conn: 1,
            next_packet_id: 1,
            peers: HashMap::new(),
            presence: Vec::new(),
        }
    }

    /// Moves the clock forward (no timers run; see [`H::tick`]).
    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }

    /// Sets the clock to `secs` after the start and runs the timers.
    fn tick_at(&mut self, secs: u64) {
        self.now = self.start + Duration::from_secs(secs);
        self.broker.handle_timeout(self.now);
    }

    fn at(&self, secs: u64) -> Instant {
        self.start + Duration::from_secs(secs)
    }

    /// Collects the broker's outputs, checking that every packet can be
    /// encoded for its connection's protocol and fits its Maximum Packet Size.
    fn drain(&mut self) {
        while let Some(output) = self.broker.poll_output() {
            if let Output::Presence(presence) = output {
                self.presence.push(presence);
                continue;
            }
            if let Output::Send(conn, packet) = &output
                && let Some(&(protocol, max_size)) = self.peers.get(conn)
            {
                let mut wire = BytesMut::new();
                if let Err(e) = myriad_mqtt::encode(packet, protocol, &mut wire) {
                    panic!("unencodable {packet:?} for {protocol:?}: {e}");
                }
                assert!(
                    wire.len() <= max_size as usize,
                    "{} bytes exceed the client's maximum {max_size}: {packet:?}",
                    wire.len()
                );
            }
            self.outputs.push(output);
        }
    }

    /// Sends CONNECT on a new connection; returns it with the CONNACK.
    fn connect_ack(&mut self, connect: Connect) -> (ConnId, ConnAck) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let max_size = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        self.peers.insert(conn, (connect.protocol, max_size));
        let accepted = self.broker.handle_connect(self.now, conn, connect);
        match self.next(conn) {
            Some(Output::Send(_, Packet::ConnAck(ack))) => {
                assert_eq!(accepted, ack.reason_code == ReasonCode::Success);
                (conn, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and asserts success.
    fn connect(&mut self, connect: Connect) -> ConnId {
        let (conn, ack) = self.connect_ack(connect);
        assert_eq!(ack.reason_code, ReasonCode::Success);
        conn
    }

    /// The first pending output of `conn`, removed.
    fn next(&mut self, conn: ConnId) -> Option<Output> {
        self.drain();
        let index = self.outputs.iter().position(|o| conn_of(o) == conn)?;
        Some(self.outputs.remove(index))
    }

    /// Every pending output of `conn`, removed, in order.
    fn out(&mut self, conn: ConnId) -> Vec<Output> {
        self.drain();
        let (mine, rest) = std::mem::take(&mut self.outputs)
            .into_iter()
            .partition(|o| conn_of(o) == conn);
        self.outputs = rest;
        mine
    }

    /// Every pending packet of `conn`; panics if the connection was closed.
    fn packets(&mut self, conn: ConnId) -> Vec<Packet> {
        self.out(conn)
            .into_iter()
            .map(|o| match o {
                Output::Send(_, packet) => packet,
                Output::Close(_) => panic!("connection {conn} unexpectedly closed"),
                Output::Presence(_) => unreachable!("presence events are kept apart"),
                Output::Delivered(r) => panic!("unexpected delivery receipt {r:?}"),
            })
            .collect()
    }

    /// Every pending packet of `conn`, which must all be PUBLISH.
    fn publishes(&mut self, conn: ConnId) -> Vec<Publish> {
        self.packets(conn)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(publish) => publish,
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect()
    }

    /// The single pending PUBLISH of `conn`.
    fn one_publish(&mut self, conn: ConnId) -> Publish {
        let mut publishes = self.publishes(conn);
        assert_eq!(publishes.len(), 1, "expected one PUBLISH: {publishes:?}");
        publishes.remove(0)
    }

    /// Payloads of the pending PUBLISH packets of `conn`.
    fn payloads(&mut self, conn: ConnId) -> Vec<String> {
        self.publishes(conn).iter().map(payload).collect()
    }

    fn assert_silent(&mut self, conn: ConnId) {
        assert_eq!(self.out(conn), vec![], "connection {conn} got output");
    }

    /// `conn` got (5.0) DISCONNECT with `reason` and was closed.
    fn expect_disconnect(&mut self, conn: ConnId, reason: ReasonCode) {
        assert_eq!(
            self.out(conn),
            vec![
                Output::Send(conn, Packet::Disconnect(Disconnect::new(reason))),
                Output::Close(conn)
            ]
        );
    }

    fn packet(&mut self, conn: ConnId, packet: Packet) {
        self.broker.handle_packet(self.now, conn, packet);
    }

    fn publish(&mut self, conn: ConnId, publish: Publish) {
        self.packet(conn, Packet::Publish(publish));
    }

    /// Publishes from inside the process.
    fn inject(&mut self, publish: Publish) {
        self.broker.publish(self.now, publish);
    }

    fn puback(&mut self, conn: ConnId, packet_id: u16) {
        self.packet(conn, Packet::PubAck(PublishAck::success(packet_id)));
    }

    fn pubrec(&mut self, conn: ConnId, packet_id: u16) {
        self.packet(conn, Packet::PubRec(PublishAck::success(packet_id)));
    }

    fn pubrel(&mut self, conn: ConnId, packet_id: u16) {
        self.packet(conn, Packet::PubRel(PublishAck::success(packet_id)));
    }

    fn pubcomp(&mut self, conn: ConnId, packet_id: u16) {
        self.packet(conn, Packet::PubComp(PublishAck::success(packet_id)));
    }

    /// Subscribes to one filter with default options; returns the SUBACK codes.
    /// Retained messages sent after the SUBACK stay pending.
    fn subscribe(&mut self, conn: ConnId, filter: &str, qos: QoS) -> Vec<ReasonCode> {
        self.subscribe_with(conn, &[(filter, opts(qos))], None)
    }

    fn subscribe_with(
        &mut self,
        conn: ConnId,
        filters: &[(&str, SubscriptionOptions)],
        id: Option<u32>,
    ) -> Vec<ReasonCode> {
        let packet_id = self.packet_id();
        let subscribe = Subscribe {
            packet_id,
            filters: filters
                .iter()
                .map(|(filter, options)| SubscriptionRequest {
                    filter: (*filter).into(),
                    options: *options,
                })
                .collect(),
            properties: Properties {
                subscription_identifiers: id.into_iter().collect(),
                ..Properties::default()
            }
            .into(),
        };
        self.packet(conn, Packet::Subscribe(subscribe));
        match self.next(conn) {
            Some(Output::Send(_, Packet::SubAck(ack))) => {
                assert_eq!(ack.packet_id, packet_id);
                ack.reason_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    fn unsubscribe(&mut self, conn: ConnId, filters: &[&str]) -> Vec<ReasonCode> {
        let packet_id = self.packet_id();
        let unsubscribe = Unsubscribe {
            packet_id,
            filters: filters.iter().map(|f| (*f).into()).collect(),
            properties: PacketProperties::new(),
        };
        self.packet(conn, Packet::Unsubscribe(unsubscribe));
        match self.next(conn) {
            Some(Output::Send(_, Packet::UnsubAck(ack))) => {
                assert_eq!(ack.packet_id, packet_id);
                ack.reason_codes
            }
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Normal DISCONNECT from the client; the broker closes the connection.
    fn disconnect(&mut self, conn: ConnId) {
        self.disconnect_with(conn, Disconnect::new(ReasonCode::Success));
        assert_eq!(self.out(conn), vec![Output::Close(conn)]);
    }

    fn disconnect_with(&mut self, conn: ConnId, disconnect: Disconnect) {
        self.packet(conn, Packet::Disconnect(disconnect));
    }

    /// The network connection drops.
    fn lose(&mut self, conn: ConnId) {
        self.broker
            .handle_connection_lost(self.now, conn, ConnectionLoss::Network);
        self.assert_silent(conn);
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id += 1;
        id
    }
}

fn conn_of(output: &Output) -> ConnId {
    match output {
        Output::Send(conn, _) | Output::Close(conn) => *conn,
        Output::Presence(presence) => presence.conn(),
        Output::Delivered(receipt) => receipt.conn,
    }
}

fn payload(publish: &Publish) -> String {
    String::from_utf8(publish.payload.to_vec()).expect("UTF-8 payload")
}

/// A 5.0 CONNECT with Clean Start, keep alive 0 (tests of keep alive set
/// their own, so the clock can jump without closing anyone) and no properties.
fn v5(client_id: &str) -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: PacketProperties::new(),
    }
}

/// A 3.1.1 CONNECT with Clean Session and keep alive 0.
fn v311(client_id: &str) -> Connect {
    Connect {
        protocol: ProtocolVersion::V311,
        ..v5(client_id)
    }
}

/// Builder methods for [`Connect`].
trait ConnectExt {
    /// Clean Start 0.
    fn resume(self) -> Self;
    fn expiry(self, secs: u32) -> Self;
    fn keep_alive(self, secs: u16) -> Self;
    fn receive_maximum(self, value: u16) -> Self;
    fn max_packet_size(self, value: u32) -> Self;
    fn alias_max(self, value: u16) -> Self;
    fn will(self, will: Will) -> Self;
}

impl ConnectExt for Connect {
    fn resume(mut self) -> Self {
        self.clean_start = false;
        self
    }
    fn expiry(mut self, secs: u32) -> Self {
        self.properties.session_expiry_interval = Some(secs);
        self
    }
    fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }
    fn receive_maximum(mut self, value: u16) -> Self {
        self.properties.receive_maximum = Some(value);
        self
    }
    fn max_packet_size(mut self, value: u32) -> Self {
        self.properties.maximum_packet_size = Some(value);
        self
    }
    fn alias_max(mut self, value: u16) -> Self {
        self.properties.topic_alias_maximum = Some(value);
        self
    }
    fn will(mut self, will: Will) -> Self {
        self.will = Some(will);
        self
    }
}

/// A QoS 0 will without properties.
fn will(topic: &str, body: &str) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(body.as_bytes()),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: PacketProperties::new(),
    }
}

/// A QoS 0 PUBLISH without properties.
fn msg(topic: &str, body: &str) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: 0,
        payload: Bytes::copy_from_slice(body.as_bytes()),
        properties: PacketProperties::new(),
    }
}

/// A PUBLISH with the given QoS and packet identifier.
fn msg_q(topic: &str, body: &str, qos: QoS, packet_id: u16) -> Publish {
    Publish {
        qos,
        packet_id,
        ..msg(topic, body)
    }
}

/// A retained QoS 0 PUBLISH.
fn retained(topic: &str, body: &str) -> Publish {
    Publish {
        retain: true,
        ..msg(topic, body)
    }
}

/// Default subscription options with this maximum QoS.
fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

fn ack(packet_id: u16, reason_code: ReasonCode) -> PublishAck {
    PublishAck {
        packet_id,
        reason_code,
        properties: PacketProperties::new(),
    }
}

/// A subscriber connected with 5.0 to `filter` at `qos`.
fn subscriber(h: &mut H, client_id: &str, filter: &str, qos: QoS) -> ConnId {
    let conn = h.connect(v5(client_id));
    assert_eq!(
        h.subscribe(conn, filter, qos),
        vec![ReasonCode::granted(qos)]
    );
    conn
}
