//! The shell sends an acknowledgement only after the batch holding the
//! message is committed, and stops rather than acknowledge what it cannot
//! store; commits run off the event loop, so a slow disk does not stall
//! other clients.

mod common;

use std::sync::{Arc, Condvar, Mutex};
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

/// A store that logs each committed batch and can be told to fail, or to
/// hold its commits until released (a disk that takes its time).
#[derive(Clone, Default)]
struct ProbeStore {
    inner: Arc<Mutex<ProbeState>>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

/// Opens the store's gate when dropped, so a failing test never leaves a
/// commit blocked (and the runtime unable to stop).
struct GateGuard(ProbeStore);

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.0.set_gate(false);
    }
}

impl ProbeStore {
    /// While closed, commits wait.
    fn set_gate(&self, closed: bool) {
        let (lock, changed) = &*self.gate;
        *lock.lock().expect("lock") = closed;
        changed.notify_all();
    }
    fn close_gate(&self) -> GateGuard {
        self.set_gate(true);
        GateGuard(self.clone())
    }
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
        {
            let (lock, changed) = &*self.gate;
            let mut closed = lock.lock().expect("lock");
            while *closed {
                closed = changed.wait(closed).expect("lock");
            }
        }
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

async fn start(store: ProbeStore) -> common::Server {
    let persistence = Persistence {
        store: Box::new(store),
        policy: CommitPolicy::Group {
            window: Duration::from_millis(2),
        },
    };
    common::serve(
        BrokerConfig::default(),
        Some(persistence),
        shell::Hooks::default(),
    )
    .await
}

#[tokio::test]
async fn puback_follows_the_commit_of_the_queued_message() {
    let store = ProbeStore::default();
    let server = start(store.clone()).await;
    let addr = server.addr;
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
    server.stop().await;
}

#[tokio::test]
async fn a_failed_commit_stops_the_broker_without_acknowledging() {
    let store = ProbeStore::default();
    let common::Server { addr, task, .. } = start(store.clone()).await;
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
    let outcome = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("server stops")
        .expect("join");
    assert!(matches!(outcome, Err(ServeError::Commit(_))), "{outcome:?}");
}

/// A broker on its own thread and one-thread runtime (as `myriad serve`
/// runs it), so a commit that blocks it cannot block the test's clients.
struct Threaded {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    thread: std::thread::JoinHandle<Result<(), ServeError>>,
}

impl Threaded {
    fn start(store: ProbeStore) -> Threaded {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                ready_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("ready");
                let (handle, events) = shell::channel();
                let persistence = Persistence {
                    store: Box::new(store),
                    policy: CommitPolicy::Group {
                        window: Duration::from_millis(2),
                    },
                };
                shell::run(
                    BrokerConfig::default(),
                    Some(persistence),
                    shell::Hooks::default(),
                    listener,
                    token,
                    handle,
                    events,
                )
                .await
            })
        });
        let addr = ready_rx.recv().expect("broker thread started");
        Threaded {
            addr,
            shutdown,
            thread,
        }
    }

    fn stop(self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        self.thread.join().expect("broker thread")
    }
}

/// Waits up to `within` for the client's next packet (`None`: nothing came).
async fn next_within(client: &mut Client, within: Duration) -> Option<Packet> {
    tokio::time::timeout(within, client.recv())
        .await
        .ok()
        .flatten()
}

// Before commits moved off the event loop, the stuck commit blocked the
// broker's thread: no PINGRESP came, and the test failed at the first ping.
#[tokio::test]
async fn a_stuck_commit_holds_its_puback_but_not_other_clients_pings() {
    let store = ProbeStore::default();
    let server = Threaded::start(store.clone());
    let addr = server.addr;
    let _subscriber = persistent_subscriber(addr).await;
    let mut publisher = Client::connect(addr, "pub", 0).await;
    let mut idle = Client::connect(addr, "idle", 0).await;
    let gate = store.close_gate();
    publisher.send(common::publish("t", 5, b"slow disk")).await;
    // The publisher's own ping may overtake its held PUBACK (MQTT orders
    // only PUBLISH and its acknowledgements).
    publisher.send(Packet::PingReq).await;
    assert_eq!(
        next_within(&mut publisher, Duration::from_secs(3)).await,
        Some(Packet::PingResp),
        "PINGRESP while the commit is stuck, PUBACK not yet"
    );
    for _ in 0..3 {
        idle.send(Packet::PingReq).await;
        assert_eq!(
            next_within(&mut idle, Duration::from_secs(3)).await,
            Some(Packet::PingResp),
            "an idle client's ping waits for nobody's commit"
        );
    }
    assert_eq!(
        next_within(&mut publisher, Duration::from_millis(300)).await,
        None,
        "no PUBACK before the commit"
    );
    drop(gate);
    assert!(
        matches!(next_within(&mut publisher, Duration::from_secs(3)).await, Some(Packet::PubAck(ack)) if ack.packet_id == 5)
    );
    server.stop().expect("clean stop");
}

#[tokio::test]
async fn a_connack_held_for_its_commit_keeps_its_ping_behind_it() {
    let store = ProbeStore::default();
    let server = Threaded::start(store.clone());
    let addr = server.addr;
    let gate = store.close_gate();
    // A stored session: its CONNACK waits for the session's commit, and a
    // PINGREQ sent right behind the CONNECT must not be answered first.
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut client = Client::from_stream(stream, myriad_mqtt::ProtocolVersion::V5);
    client
        .send(Packet::Connect(Box::new(common::connect_packet(
            myriad_mqtt::ProtocolVersion::V5,
            "stored",
            600,
        ))))
        .await;
    client.send(Packet::PingReq).await;
    assert_eq!(
        next_within(&mut client, Duration::from_millis(300)).await,
        None,
        "nothing before the session is stored"
    );
    drop(gate);
    assert!(matches!(
        next_within(&mut client, Duration::from_secs(3)).await,
        Some(Packet::ConnAck(_))
    ));
    assert_eq!(
        next_within(&mut client, Duration::from_secs(3)).await,
        Some(Packet::PingResp)
    );
    server.stop().expect("clean stop");
}

#[tokio::test]
async fn outputs_keep_their_order_through_pipelined_commits() {
    // Per acknowledgement: each PUBLISH is its own commit, and the core
    // goes on applying while earlier ones commit; PUBACKs come back in order.
    let store = ProbeStore::default();
    let server = common::serve(
        BrokerConfig::default(),
        Some(Persistence {
            store: Box::new(store.clone()),
            policy: CommitPolicy::PerEvent,
        }),
        shell::Hooks::default(),
    )
    .await;
    let addr = server.addr;
    let _subscriber = persistent_subscriber(addr).await;
    let mut publisher = Client::connect(addr, "pub", 0).await;
    for id in 1..=50u16 {
        publisher.send(common::publish("t", id, b"m")).await;
    }
    for id in 1..=50u16 {
        match publisher.recv().await {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, id),
            other => panic!("expected PUBACK {id}, got {other:?}"),
        }
    }
    let commits = store.batches().len();
    assert!(commits >= 50, "one commit per PUBLISH, got {commits}");
    server.stop().await;
}
