//! Observability of a running broker over real sockets: the counters a
//! snapshot reports, the trace-context carry, and the leak watchdog
//! catching connection tasks leaked on purpose.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Client, publish};
use myriad_broker::BrokerConfig;
use myriad_broker::shell::Hooks;
use myriad_broker::trace::{PublishTracer, TRACEPARENT, TraceParent, find_traceparent};
use myriad_broker::watchdog::task::{Probes, WatchdogStatus};
use myriad_broker::watchdog::{Alert, Rules};
use myriad_mqtt::{Packet, Properties, Publish, QoS};

use common::Server;

async fn start(hooks: Hooks) -> Server {
    common::serve(BrokerConfig::default(), None, hooks).await
}

/// Polls `check` every 20 ms for up to 5 s.
async fn eventually<F: FnMut() -> bool>(mut check: F) -> bool {
    for _ in 0..250 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

fn publish_with(topic: &str, qos: QoS, payload: &'static [u8], props: Properties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
        payload: Bytes::from_static(payload),
        properties: props.into(),
    })
}

#[tokio::test]
async fn snapshot_counts_connections_and_traffic_by_qos() {
    let server = start(Hooks::default()).await;
    let before = server.handle.snapshot().await.expect("snapshot");
    let mut sub = Client::connect(server.addr, "sub", 0).await;
    assert!(matches!(
        sub.subscribe(1, "m/#", QoS::AtLeastOnce).await,
        Some(Packet::SubAck(_))
    ));
    let mut publisher = Client::connect(server.addr, "pub", 0).await;
    publisher.send(publish("m/a", 1, b"hello")).await; // QoS 1, 5 bytes
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    publisher
        .send(publish_with(
            "m/b",
            QoS::AtMostOnce,
            b"abc",
            Properties::default(),
        ))
        .await;
    for _ in 0..2 {
        assert!(matches!(sub.recv().await, Some(Packet::Publish(_))));
    }
    let now = server.handle.snapshot().await.expect("snapshot");
    let t = now.traffic;
    assert_eq!(t.connections_opened - before.traffic.connections_opened, 2);
    assert_eq!(t.messages_in, [1, 1, 0]);
    assert_eq!(t.bytes_in, [3, 5, 0]);
    assert_eq!(t.messages_out, [1, 1, 0]);
    assert_eq!(t.bytes_out, [3, 5, 0]);
    assert_eq!(now.network_sessions, 2);
    assert_eq!(now.levels.sessions_online, 2);
    assert_eq!(now.levels.subscriptions, 1);
    assert_eq!(server.handle.census().counts().registered, 2);
    publisher.cut().await;
    let handle = server.handle.clone();
    let mut closed = 0;
    for _ in 0..250 {
        let s = handle.snapshot().await.expect("snapshot");
        closed = s
            .traffic
            .closed(myriad_broker::core::observe::CloseReason::NetworkLoss);
        if closed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed, 1);
    let census = server.handle.census();
    assert!(eventually(|| census.counts().tasks == 1).await);
    server.stop().await;
}

/// What the tracer was asked: topic, parent, trace state.
type Routed = (String, Option<TraceParent>, Option<String>);

/// A tracer that continues every trace with span ids 1, 2, 3... and
/// starts none.
#[derive(Default)]
struct Counting {
    next: AtomicU64,
    seen: std::sync::Mutex<Vec<Routed>>,
}

impl PublishTracer for Counting {
    fn route(
        &self,
        topic: &str,
        parent: Option<&TraceParent>,
        state: Option<&str>,
    ) -> Option<TraceParent> {
        self.seen.lock().expect("lock").push((
            topic.to_string(),
            parent.copied(),
            state.map(str::to_string),
        ));
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        parent.map(|p| p.child(id.to_be_bytes()))
    }
}

#[tokio::test]
async fn routed_messages_carry_the_child_trace_context() {
    let tracer = Arc::new(Counting::default());
    let hooks = Hooks {
        tracer: Some(tracer.clone()),
        ..Hooks::default()
    };
    let server = start(hooks).await;
    let mut sub = Client::connect(server.addr, "tsub", 0).await;
    assert!(matches!(
        sub.subscribe(1, "t/#", QoS::AtMostOnce).await,
        Some(Packet::SubAck(_))
    ));
    let mut publisher = Client::connect(server.addr, "tpub", 0).await;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let props = Properties {
        user_properties: vec![
            ("app".into(), "x".into()),
            (TRACEPARENT.into(), parent.into()),
            ("tracestate".into(), "vendor=1".into()),
        ],
        ..Properties::default()
    };
    publisher
        .send(publish_with("t/1", QoS::AtMostOnce, b"x", props))
        .await;
    let Some(Packet::Publish(got)) = sub.recv().await else {
        panic!("expected the PUBLISH");
    };
    let carried = find_traceparent(&got.properties.user_properties).expect("traceparent");
    assert_eq!(
        carried.format(),
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000001-01"
    );
    assert_eq!(&*got.properties.user_properties[0].0, "app");
    assert_eq!(&*got.properties.user_properties[2].1, "vendor=1");
    // Without a context (and a tracer that starts none) nothing is added.
    publisher
        .send(publish_with(
            "t/2",
            QoS::AtMostOnce,
            b"y",
            Properties::default(),
        ))
        .await;
    let Some(Packet::Publish(plain)) = sub.recv().await else {
        panic!("expected the PUBLISH");
    };
    assert!(plain.properties.user_properties.is_empty());
    let seen = tracer.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "t/1");
    assert_eq!(seen[0].1, TraceParent::parse(parent).ok());
    assert_eq!(seen[0].2.as_deref(), Some("vendor=1"));
    assert_eq!(seen[1].1, None);
    let snapshot = server.handle.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.traffic.traces_continued, 1);
    server.stop().await;
}

#[tokio::test]
async fn watchdog_sees_connection_tasks_leaked_on_purpose() {
    let server = start(Hooks::default()).await;
    let status = WatchdogStatus::default();
    tokio::spawn(myriad_broker::watchdog::task::run(
        server.handle.clone(),
        Rules::default(),
        Duration::from_millis(50),
        Probes::default(),
        status.clone(),
        server.shutdown.clone(),
    ));
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(Client::connect(server.addr, &format!("w{i}"), 0).await);
    }
    // Healthy: connections come and go, tasks end with them.
    for client in clients.drain(5..) {
        client.cut().await;
    }
    let census = server.handle.census();
    assert!(eventually(|| census.counts().tasks == 5).await);
    let checks = status.report().checks;
    assert!(eventually(|| status.report().checks >= checks + 3).await);
    let report = status.report();
    assert!(report.alerts.is_empty(), "{report:?}");
    assert_eq!(report.alerting_checks, 0, "{report:?}");
    assert_eq!(report.last.map(|s| s.sessions_online), Some(5));

    // The deliberate leak: tasks of ended connections stay alive.
    census.leak_connection_tasks(true);
    for client in clients.drain(..) {
        client.cut().await;
    }
    for i in 0..2 {
        clients.push(Client::connect(server.addr, &format!("x{i}"), 0).await);
    }
    let leaked = Alert::TaskDeviation {
        tasks: 7,
        sessions: 2,
    };
    assert!(
        eventually(|| status.report().alerts.contains(&leaked)).await,
        "{:?}",
        status.report()
    );
    assert_eq!(census.counts().tasks, 7);
    // Ending the leak ends the tasks, and the alert goes away.
    census.leak_connection_tasks(false);
    assert!(eventually(|| census.counts().tasks == 2).await);
    assert!(eventually(|| status.report().alerts.is_empty()).await);
    server.stop().await;
    assert_eq!(census.counts().tasks, 0);
}
