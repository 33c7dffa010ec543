//! The shell's extension points over real sockets: the authenticator, the
//! per-connection ACL, lifecycle events and in-process clients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Client, connect_packet, publish};
use myriad_broker::BrokerConfig;
use myriad_broker::hooks::{
    Acl, AuthDecision, Authenticator, BoxFuture, ConnectInfo, Lifecycle, OfflineReason, Presence,
};
use myriad_broker::shell::Hooks;
use myriad_mqtt::{Packet, ProtocolVersion, QoS, ReasonCode, Will};
use tokio::sync::mpsc;

#[derive(Debug)]
struct OwnOnly(String);

impl Acl for OwnOnly {
    fn may_publish(&self, topic: &str) -> bool {
        topic.starts_with(&self.0)
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        filter.starts_with(&self.0)
    }
}

/// `good` / `secret` may connect and use `own/...`; everyone else is refused.
struct Passwords;

impl Authenticator for Passwords {
    fn authenticate<'a>(&'a self, info: ConnectInfo<'a>) -> BoxFuture<'a, AuthDecision> {
        Box::pin(async move {
            if info.username == Some("good") && info.password == Some(b"secret".as_slice()) {
                AuthDecision::Allow(Some(Arc::new(OwnOnly("own/".into()))))
            } else {
                AuthDecision::Deny(ReasonCode::BadUserNameOrPassword)
            }
        })
    }
}

/// The shell with a password authenticator and a lifecycle channel.
struct Server {
    shell: common::Server,
    lifecycle: mpsc::UnboundedReceiver<Lifecycle>,
}

impl std::ops::Deref for Server {
    type Target = common::Server;
    fn deref(&self) -> &common::Server {
        &self.shell
    }
}

async fn start() -> Server {
    let (lifecycle_tx, lifecycle) = mpsc::unbounded_channel();
    let hooks = Hooks {
        authenticator: Some(Arc::new(Passwords)),
        lifecycle: Some(lifecycle_tx),
        tracer: None,
        receipts: None,
        ingest: None,
    };
    let shell = common::serve(BrokerConfig::default(), None, hooks).await;
    Server { shell, lifecycle }
}

impl Server {
    async fn stop(self) {
        self.shell.stop().await;
    }

    async fn next_lifecycle(&mut self) -> Lifecycle {
        tokio::time::timeout(Duration::from_secs(5), self.lifecycle.recv())
            .await
            .expect("a lifecycle event within 5 s")
            .expect("channel open")
    }
}

fn login(
    protocol: ProtocolVersion,
    id: &str,
    user: &str,
    password: &'static [u8],
) -> myriad_mqtt::Connect {
    let mut connect = connect_packet(protocol, id, 0);
    connect.username = Some(user.into());
    connect.password = Some(Bytes::from_static(password));
    connect
}

fn connack_code(answer: Option<Packet>) -> ReasonCode {
    match answer {
        Some(Packet::ConnAck(ack)) => ack.reason_code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_credentials_are_refused_in_both_versions() {
    let server = start().await;
    for protocol in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let (mut client, answer) =
            Client::open(server.addr, login(protocol, "dev", "good", b"wrong")).await;
        // 3.1.1 return code 4 decodes back to 0x86.
        assert_eq!(connack_code(answer), ReasonCode::BadUserNameOrPassword);
        assert_eq!(client.recv().await, None, "connection closed after refusal");
        let (_client, answer) =
            Client::open(server.addr, connect_packet(protocol, "anon", 0)).await;
        assert_eq!(connack_code(answer), ReasonCode::BadUserNameOrPassword);
    }
    server.stop().await;
}

#[tokio::test]
async fn an_accepted_client_is_held_to_its_acl() {
    let server = start().await;
    let (mut client, answer) = Client::open(
        server.addr,
        login(ProtocolVersion::V5, "dev", "good", b"secret"),
    )
    .await;
    assert_eq!(connack_code(answer), ReasonCode::Success);
    match client.subscribe(1, "other/#", QoS::AtLeastOnce).await {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![ReasonCode::NotAuthorized]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    client.send(publish("other/t", 5, b"x")).await;
    match client.recv().await {
        Some(Packet::PubAck(ack)) => {
            assert_eq!(
                (ack.packet_id, ack.reason_code),
                (5, ReasonCode::NotAuthorized)
            )
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    match client.subscribe(2, "own/#", QoS::AtLeastOnce).await {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_will_outside_the_acl_is_refused_at_connect() {
    let server = start().await;
    let mut connect = login(ProtocolVersion::V5, "dev", "good", b"secret");
    connect.will = Some(Will {
        topic: "other/will".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (_client, answer) = Client::open(server.addr, connect).await;
    assert_eq!(connack_code(answer), ReasonCode::NotAuthorized);
    server.stop().await;
}

#[tokio::test]
async fn reserved_client_ids_are_refused() {
    let server = start().await;
    let connect = login(ProtocolVersion::V5, "$myriad/shadow", "good", b"secret");
    let (_client, answer) = Client::open(server.addr, connect).await;
    assert_eq!(connack_code(answer), ReasonCode::ClientIdentifierNotValid);
    server.stop().await;
}

#[tokio::test]
async fn lifecycle_events_carry_peer_user_and_reason() {
    let mut server = start().await;
    let (client, answer) = Client::open(
        server.addr,
        login(ProtocolVersion::V311, "dev", "good", b"secret"),
    )
    .await;
    assert_eq!(connack_code(answer), ReasonCode::Success);
    let online = server.next_lifecycle().await;
    assert!(online.peer.is_some_and(|p| p.ip().is_loopback()));
    let conn = match online.presence {
        Presence::Online {
            conn,
            ref client_id,
            keep_alive,
            protocol,
            ref username,
            ..
        } => {
            assert_eq!(
                (&**client_id, keep_alive, protocol),
                ("dev", 30, ProtocolVersion::V311)
            );
            assert_eq!(username.as_deref(), Some("good"));
            conn
        }
        other => panic!("expected online, got {other:?}"),
    };
    client.cut().await;
    let offline = server.next_lifecycle().await;
    assert_eq!(
        offline.presence,
        Presence::Offline {
            conn,
            client_id: "dev".into(),
            reason: OfflineReason::NetworkLoss,
        }
    );
    assert_eq!(
        offline.peer, online.peer,
        "the offline event keeps the address"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_internal_client_receives_what_devices_publish() {
    let mut server = start().await;
    let mut service = server
        .handle
        .connect_internal("shadow")
        .await
        .expect("internal client attaches");
    service
        .subscribe("own/+/update", QoS::AtLeastOnce)
        .await
        .expect("subscribed");
    // The internal client is a session like any other.
    assert!(matches!(
        server.next_lifecycle().await.presence,
        Presence::Online { ref client_id, .. } if client_id == "$myriad/shadow"
    ));
    let (mut device, answer) = Client::open(
        server.addr,
        login(ProtocolVersion::V5, "dev", "good", b"secret"),
    )
    .await;
    assert_eq!(connack_code(answer), ReasonCode::Success);
    device.send(publish("own/dev/update", 1, b"{}")).await;
    match device.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let got = tokio::time::timeout(Duration::from_secs(5), service.recv())
        .await
        .expect("delivered within 5 s")
        .expect("client open");
    assert_eq!(
        (&*got.topic, &got.payload[..]),
        ("own/dev/update", &b"{}"[..])
    );
    // And it can answer on a topic the device subscribes to.
    match device
        .subscribe(2, "own/dev/accepted", QoS::AtMostOnce)
        .await
    {
        Some(Packet::SubAck(_)) => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }
    service
        .publish(myriad_mqtt::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "own/dev/accepted".into(),
            packet_id: 0,
            payload: Bytes::from_static(b"ok"),
            properties: Default::default(),
        })
        .await
        .expect("published");
    match device.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"ok"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    service.disconnect().await;
    server.stop().await;
}
