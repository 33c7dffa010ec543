//! The shell sends an acknowledgement only after the batch holding the
//! message is committed, and stops rather than acknowledge what it cannot store.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Client;
use myriad_broker::BrokerConfig;
use myriad_broker::shell::{self, CommitPolicy, Persistence, ServeError};
use myriad_mqtt::{Packet, QoS};
use myriad_store::{Change, MemoryStore, SessionStore, Snapshot, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct ProbeState {
    store: MemoryStore,
    batches: Vec<Vec<Change>>,
    failing: bool,
}

/// A store that logs each committed batch and can be told to fail.
#[derive(Clone, Default)]
struct ProbeStore {
    inner: Arc<Mutex<ProbeState>>,
}

impl ProbeStore {
    fn fail_from_now(&self) {
        self.inner.lock().expect("lock").failing = true;
    }
    fn batches(&self) -> Vec<Vec<Change>> {
        self.inner.lock().expect("lock").batches.clone()
    }
}

impl SessionStore for ProbeStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.inner.lock().expect("lock").store.load()
    }
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().expect("lock");
        if inner.failing {
            return Err(StoreError::Io {
                path: "probe".into(),
                source: std::io::Error::other("disk on fire"),
            });
        }
        inner.store.commit(changes)?;
        inner.batches.push(changes.to_vec());
        Ok(())
    }
}

/// A subscriber to `t` at QoS 1 whose session outlives its connection, so
/// deliveries to it are stored.
async fn persistent_subscriber(addr: std::net::SocketAddr) -> Client {
    let mut subscriber = Client::connect(addr, "sub", 600).await;
    let suback = subscriber.subscribe(1, "t", QoS::AtLeastOnce).await;
    assert!(matches!(suback, Some(Packet::SubAck(_))));
    subscriber
}

async fn start(
    store: ProbeStore,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), ServeError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let (handle, events) = shell::channel();
    let persistence = Persistence {
        store: Box::new(store),
        policy: CommitPolicy::Group {
            window: Duration::from_millis(2),
        },
    };
    let server = tokio::spawn(shell::run(
        BrokerConfig::default(),
        Some(persistence),
        shell::Hooks::default(),
        listener,
        shutdown.clone(),
        handle,
        events,
    ));
    (addr, shutdown, server)
}

#[tokio::test]
async fn puback_follows_the_commit_of_the_queued_message() {
    let store = ProbeStore::default();
    let (addr, shutdown, server) = start(store.clone()).await;
    let _subscriber = persistent_subscriber(addr).await;
    let mut publisher = Client::connect(addr, "pub", 0).await;
    publisher.send(common::publish("t", 7, b"durable")).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(ack)) if ack.packet_id == 7));
    // By the time PUBACK arrived, the subscriber's copy was committed.
    let stored = store.batches().into_iter().flatten().any(|change| {
        matches!(&change, Change::PutOutbound { client_id, record, .. }
            if client_id == "sub" && record.message.as_ref().is_some_and(|m| m.payload == "durable"))
    });
    assert!(
        stored,
        "no committed outbound record before PUBACK: {:?}",
        store.batches()
    );
    shutdown.cancel();
    server.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn a_failed_commit_stops_the_broker_without_acknowledging() {
    let store = ProbeStore::default();
    let (addr, _shutdown, server) = start(store.clone()).await;
    let _subscriber = persistent_subscriber(addr).await;
    let mut publisher = Client::connect(addr, "pub", 0).await;
    store.fail_from_now();
    publisher.send(common::publish("t", 9, b"durable")).await;
    // The broker stops: the publisher sees its connection end, never a PUBACK.
    loop {
        match publisher.recv().await {
            None => break,
            Some(Packet::PubAck(_)) => panic!("acknowledged a message that was not stored"),
            Some(_) => {}
        }
    }
    let outcome = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .expect("join");
    assert!(matches!(outcome, Err(ServeError::Commit(_))), "{outcome:?}");
}
