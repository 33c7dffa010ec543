//! The ingest sink over real sockets: a device's messages on its own
//! topic are stored before they are acknowledged and routed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Client, connect_packet, publish};
use myriad_broker::BrokerConfig;
use myriad_broker::hooks::{
    Acl, AuthDecision, Authenticator, BoxFuture, ConnectInfo, IngestRefused, IngestSink,
};
use myriad_broker::shell::Hooks;
use myriad_mqtt::{Packet, ProtocolVersion, QoS, ReasonCode};
use tokio::sync::Semaphore;

/// A device: publishes below `devices/{id}/`.
#[derive(Debug)]
struct DeviceAcl(String);

impl Acl for DeviceAcl {
    fn may_publish(&self, topic: &str) -> bool {
        topic.starts_with(&format!("devices/{}/", self.0))
    }
    fn may_subscribe(&self, _filter: &str) -> bool {
        true
    }
    fn device(&self) -> Option<&str> {
        Some(&self.0)
    }
}

/// User name `device` logs in as the device named by the client id; anyone else without an ACL.
struct Logins;

impl Authenticator for Logins {
    fn authenticate<'a>(&'a self, info: ConnectInfo<'a>) -> BoxFuture<'a, AuthDecision> {
        Box::pin(async move {
            if info.username == Some("device") {
                AuthDecision::Allow(Some(Arc::new(DeviceAcl(info.client_id.to_owned()))))
            } else {
                AuthDecision::Allow(None)
            }
        })
    }
}

/// Stores payloads once the test lets it (one permit per message); refuses `bad`.
#[derive(Clone)]
struct Gate(Arc<Shelf>);

struct Shelf {
    stored: Mutex<Vec<(String, Bytes)>>,
    permits: Semaphore,
}

impl std::ops::Deref for Gate {
    type Target = Shelf;
    fn deref(&self) -> &Shelf {
        &self.0
    }
}

impl IngestSink for Gate {
    fn topic_for(&self, _client_id: &str, acl: Option<&dyn Acl>) -> Option<String> {
        acl?.device().map(|d| format!("devices/{d}/telemetry"))
    }
    fn ingest(&self, topic: &str, payload: Bytes) -> BoxFuture<'static, Result<(), IngestRefused>> {
        let gate = self.clone();
        let topic = topic.to_owned();
        Box::pin(async move {
            let permit = gate.permits.acquire().await.expect("semaphore open");
            permit.forget();
            if payload.as_ref() == b"bad" {
                return Err(IngestRefused("bad payload".into()));
            }
            gate.stored.lock().expect("lock").push((topic, payload));
            Ok(())
        })
    }
}

async fn start() -> (common::Server, Gate) {
    let gate = Gate(Arc::new(Shelf {
        stored: Mutex::new(Vec::new()),
        permits: Semaphore::new(0),
    }));
    let hooks = Hooks {
        authenticator: Some(Arc::new(Logins)),
        ingest: Some(Arc::new(gate.clone())),
        ..Hooks::default()
    };
    (
        common::serve(BrokerConfig::default(), None, hooks).await,
        gate,
    )
}

async fn device(addr: std::net::SocketAddr, protocol: ProtocolVersion, id: &str) -> Client {
    let mut connect = connect_packet(protocol, id, 0);
    connect.username = Some("device".into());
    let (client, answer) = Client::open(addr, connect).await;
    assert!(matches!(answer, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::Success));
    client
}

async fn watcher(addr: std::net::SocketAddr) -> Client {
    let mut client = Client::connect(addr, "watcher", 0).await;
    assert!(matches!(
        client.subscribe(1, "devices/#", QoS::AtLeastOnce).await,
        Some(Packet::SubAck(_))
    ));
    client
}

/// Whether a packet arrives within `ms`.
async fn quiet_for(client: &mut Client, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), client.recv())
        .await
        .is_err()
}

fn puback(packet: Option<Packet>) -> (u16, ReasonCode) {
    match packet {
        Some(Packet::PubAck(ack)) => (ack.packet_id, ack.reason_code),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

fn published(packet: Option<Packet>) -> (String, Bytes) {
    match packet {
        Some(Packet::Publish(p)) => (p.topic.to_string(), p.payload),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn the_puback_waits_for_the_sink_and_keeps_its_order() {
    let (server, gate) = start().await;
    let mut watch = watcher(server.addr).await;
    let mut d1 = device(server.addr, ProtocolVersion::V5, "d1").await;
    d1.send(publish("devices/d1/telemetry", 1, b"{\"t\":1}"))
        .await;
    // Not to the sink: acknowledged at once, but after the held one.
    d1.send(publish("devices/d1/state", 2, b"on")).await;
    assert!(
        quiet_for(&mut d1, 300).await,
        "no PUBACK before the sink stored"
    );
    assert!(
        quiet_for(&mut watch, 50).await,
        "not routed before the sink stored"
    );
    // Other clients are not held up.
    let mut d2 = device(server.addr, ProtocolVersion::V5, "d2").await;
    d2.send(publish("devices/d2/state", 9, b"x")).await;
    assert_eq!(puback(d2.recv().await), (9, ReasonCode::Success));
    assert_eq!(published(watch.recv().await).0, "devices/d2/state");
    gate.permits.add_permits(1);
    assert_eq!(puback(d1.recv().await), (1, ReasonCode::Success));
    assert_eq!(puback(d1.recv().await), (2, ReasonCode::Success));
    assert_eq!(
        published(watch.recv().await),
        (
            "devices/d1/telemetry".into(),
            Bytes::from_static(b"{\"t\":1}")
        )
    );
    assert_eq!(published(watch.recv().await).0, "devices/d1/state");
    let stored = gate.stored.lock().expect("lock").clone();
    assert_eq!(
        stored,
        vec![(
            "devices/d1/telemetry".to_owned(),
            Bytes::from_static(b"{\"t\":1}")
        )]
    );
    server.stop().await;
}

#[tokio::test]
async fn only_the_device_itself_reaches_the_sink() {
    let (server, gate) = start().await;
    gate.permits.add_permits(100);
    // No ACL naming a device: routed as usual, never stored.
    let mut app = Client::connect(server.addr, "app", 0).await;
    app.send(publish("devices/d1/telemetry", 1, b"{\"t\":2}"))
        .await;
    assert_eq!(puback(app.recv().await).0, 1);
    // A device's other topics and other devices' topics are not its ingest topic.
    let mut d1 = device(server.addr, ProtocolVersion::V311, "d1").await;
    d1.send(publish("devices/d1/telemetry/extra", 2, b"x"))
        .await;
    assert_eq!(puback(d1.recv().await).0, 2);
    d1.send(publish("devices/d1/telemetry", 3, b"{\"t\":3}"))
        .await;
    assert_eq!(puback(d1.recv().await), (3, ReasonCode::Success));
    let stored = gate.stored.lock().expect("lock").clone();
    assert_eq!(
        stored,
        vec![(
            "devices/d1/telemetry".to_owned(),
            Bytes::from_static(b"{\"t\":3}")
        )]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_topic_alias_to_the_ingest_topic_is_followed() {
    let (server, gate) = start().await;
    gate.permits.add_permits(100);
    let mut d1 = device(server.addr, ProtocolVersion::V5, "d1").await;
    let with_alias = |topic: &str, id: u16, payload: &'static [u8], alias: u16| {
        let mut packet = publish(topic, id, payload);
        if let Packet::Publish(p) = &mut packet {
            p.properties.topic_alias = Some(alias);
        }
        packet
    };
    d1.send(with_alias("devices/d1/telemetry", 1, b"a", 5))
        .await;
    d1.send(with_alias("", 2, b"b", 5)).await;
    d1.send(with_alias("devices/d1/state", 3, b"c", 5)).await;
    d1.send(with_alias("", 4, b"d", 5)).await;
    // Nobody subscribes: what the sink stored is a success, the rest has no match.
    for (id, reason) in [
        (1, ReasonCode::Success),
        (2, ReasonCode::Success),
        (3, ReasonCode::NoMatchingSubscribers),
        (4, ReasonCode::NoMatchingSubscribers),
    ] {
        assert_eq!(puback(d1.recv().await), (id, reason));
    }
    let stored: Vec<Bytes> = gate
        .stored
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(
        stored,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_refused_message_is_not_acknowledged_nor_routed() {
    let (server, gate) = start().await;
    gate.permits.add_permits(100);
    let mut watch = watcher(server.addr).await;
    let mut v5 = device(server.addr, ProtocolVersion::V5, "d5").await;
    v5.send(publish("devices/d5/telemetry", 1, b"bad")).await;
    assert_eq!(puback(v5.recv().await), (1, ReasonCode::UnspecifiedError));
    v5.send(publish("devices/d5/telemetry", 2, b"good")).await;
    assert_eq!(puback(v5.recv().await), (2, ReasonCode::Success));
    assert_eq!(published(watch.recv().await).1, Bytes::from_static(b"good"));
    // 3.1.1 cannot say no: the connection closes without an acknowledgement.
    let mut v3 = device(server.addr, ProtocolVersion::V311, "d3").await;
    v3.send(publish("devices/d3/telemetry", 1, b"bad")).await;
    assert_eq!(v3.recv().await, None);
    assert!(
        quiet_for(&mut watch, 200).await,
        "the refused message was routed"
    );
    server.stop().await;
}
