//! Durable internal clients: late acknowledgements, the Receive Maximum
//! window, and redelivery after a reconnection and after a restart.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use myriad_broker::BrokerConfig;
use myriad_broker::shell::internal::{Delivery, DurableOptions, InternalClient};
use myriad_broker::shell::{self, CommitPolicy, Persistence};
use myriad_mqtt::{PacketProperties, QoS};
use myriad_store::{Change, MemoryStore, SessionStore, Snapshot, StoreError};

/// A memory store shared between two broker runs (a "restart").
#[derive(Clone, Default)]
struct SharedStore(Arc<Mutex<MemoryStore>>);

impl SessionStore for SharedStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.0.lock().expect("lock").load()
    }
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        self.0.lock().expect("lock").commit(changes)
    }
}

const OPTIONS: DurableOptions = DurableOptions {
    receive_maximum: 2,
    session_expiry_secs: 3600,
};

async fn publish_n(server: &common::Server, n: usize) {
    for i in 0..n {
        server
            .handle
            .publish_at_least_once(
                "data/x".into(),
                Bytes::from(format!("m{i}")),
                PacketProperties::new(),
            )
            .await
            .expect("publish");
    }
}

async fn next(client: &mut InternalClient) -> Option<Delivery> {
    tokio::time::timeout(Duration::from_millis(300), client.recv_manual())
        .await
        .ok()
        .flatten()
}

fn payload(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.publish.payload).into_owned()
}

#[tokio::test]
async fn the_window_holds_and_unacked_messages_come_back_after_a_reconnection() {
    let server = common::serve(BrokerConfig::default(), None, shell::Hooks::default()).await;
    let mut client = server
        .handle
        .connect_internal_durable("pipe", OPTIONS)
        .await
        .expect("connect");
    client
        .subscribe("data/#", QoS::AtLeastOnce)
        .await
        .expect("sub");
    publish_n(&server, 5).await;

    let a = next(&mut client).await.expect("first");
    let b = next(&mut client).await.expect("second");
    assert_eq!((payload(&a), payload(&b)), ("m0".into(), "m1".into()));
    assert!(
        next(&mut client).await.is_none(),
        "a third message went past a Receive Maximum of 2"
    );
    client.ack(a.packet_id.expect("qos 1")).await.expect("ack");
    let c = next(&mut client).await.expect("third after an ack");
    assert_eq!(payload(&c), "m2");
    assert!(next(&mut client).await.is_none(), "window of 2 exceeded");

    // Detach with m1 and m2 unacknowledged; m3, m4 queued.
    client.disconnect().await;
    let mut client = server
        .handle
        .connect_internal_durable("pipe", OPTIONS)
        .await
        .expect("reconnect");
    let mut got = Vec::new();
    while let Some(d) = next(&mut client).await {
        got.push(payload(&d));
        client.ack(d.packet_id.expect("qos 1")).await.expect("ack");
    }
    assert_eq!(got, ["m1", "m2", "m3", "m4"]);
    server.stop().await;
}

#[tokio::test]
async fn unacked_messages_survive_a_restart_with_a_store() {
    let store = SharedStore::default();
    let persistence = |store: &SharedStore| Persistence {
        store: Box::new(store.clone()),
        policy: CommitPolicy::PerEvent,
    };
    let server = common::serve(
        BrokerConfig::default(),
        Some(persistence(&store)),
        shell::Hooks::default(),
    )
    .await;
    let mut client = server
        .handle
        .connect_internal_durable("pipe", OPTIONS)
        .await
        .expect("connect");
    client
        .subscribe("data/#", QoS::AtLeastOnce)
        .await
        .expect("sub");
    publish_n(&server, 3).await;
    let a = next(&mut client).await.expect("first");
    client.ack(a.packet_id.expect("qos 1")).await.expect("ack");
    let _unacked = next(&mut client).await.expect("second");
    // Let the ack commit, then stop without acknowledging m1.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(client);
    server.stop().await;

    let server = common::serve(
        BrokerConfig::default(),
        Some(persistence(&store)),
        shell::Hooks::default(),
    )
    .await;
    let mut client = server
        .handle
        .connect_internal_durable("pipe", OPTIONS)
        .await
        .expect("reconnect");
    let mut got = Vec::new();
    while let Some(d) = next(&mut client).await {
        got.push(payload(&d));
        client.ack(d.packet_id.expect("qos 1")).await.expect("ack");
    }
    assert_eq!(got, ["m1", "m2"]);
    server.stop().await;
}

#[tokio::test]
async fn the_plain_internal_client_still_acknowledges_on_receipt() {
    let server = common::serve(BrokerConfig::default(), None, shell::Hooks::default()).await;
    let mut client = server
        .handle
        .connect_internal("svc")
        .await
        .expect("connect");
    client
        .subscribe("data/#", QoS::AtLeastOnce)
        .await
        .expect("sub");
    publish_n(&server, 3).await;
    for i in 0..3 {
        let p = tokio::time::timeout(Duration::from_secs(2), client.recv())
            .await
            .expect("in time")
            .expect("message");
        assert_eq!(p.payload, Bytes::from(format!("m{i}")));
    }
    server.stop().await;
}

#[tokio::test]
async fn publish_confirmed_waits_for_the_puback_and_keeps_other_packets() {
    let server = common::serve(BrokerConfig::default(), None, shell::Hooks::default()).await;
    let mut client = server
        .handle
        .connect_internal("both")
        .await
        .expect("connect");
    client
        .subscribe("out/#", QoS::AtLeastOnce)
        .await
        .expect("sub");
    let publish = myriad_mqtt::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "out/x".into(),
        packet_id: 0,
        payload: Bytes::from_static(b"hello"),
        properties: PacketProperties::new(),
    };
    let ack = tokio::time::timeout(Duration::from_secs(2), client.publish_confirmed(publish))
        .await
        .expect("in time")
        .expect("acked");
    assert!(!ack.reason_code.is_error(), "{ack:?}");
    // Its own message, routed back to it while it waited, is still there.
    let own = tokio::time::timeout(Duration::from_secs(2), client.recv())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(own.payload, Bytes::from_static(b"hello"));
    assert_eq!(own.qos, QoS::AtLeastOnce, "published at QoS 1");
    server.stop().await;
}
