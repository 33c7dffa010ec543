//! The shell under failure and pressure: a panicking core stops the broker
//! at once with an error, and connections beyond `max_connections` are
//! closed without disturbing the others.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Client, connect_packet, publish};
use myriad_broker::BrokerConfig;
use myriad_broker::shell::{self, Hooks, ServeError};
use myriad_broker::trace::{PublishTracer, TraceParent};
use myriad_mqtt::{Packet, ProtocolVersion};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A tracer with a bug: it panics on the topic `boom` (it runs in the core task).
struct Buggy;

impl PublishTracer for Buggy {
    fn route(
        &self,
        topic: &str,
        _parent: Option<&TraceParent>,
        _state: Option<&str>,
    ) -> Option<TraceParent> {
        assert_ne!(topic, "boom", "a bug in a hook");
        None
    }
}

#[tokio::test]
async fn a_panic_in_the_core_ends_the_run_with_an_error_at_once() {
    let hooks = Hooks {
        tracer: Some(Arc::new(Buggy)),
        ..Hooks::default()
    };
    let common::Server { addr, task, .. } =
        common::serve(BrokerConfig::default(), None, hooks).await;
    let _bystander = Client::connect(addr, "bystander", 0).await;
    let mut client = Client::connect(addr, "victim", 0).await;
    client.send(publish("fine", 1, b"x")).await;
    assert!(matches!(client.recv().await, Some(Packet::PubAck(_))));
    client.send(publish("boom", 2, b"x")).await;
    // No new connection arrives to make the accept loop notice: the run
    // must end by itself, with an error naming the panic.
    let outcome = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the run ends promptly after the core panicked")
        .expect("join");
    match outcome {
        Err(ServeError::Panicked { task, message }) => {
            assert_eq!(task, "core task");
            assert!(message.contains("a bug in a hook"), "{message}");
        }
        other => panic!("expected a panic error, got {other:?}"),
    }
}

/// Whether the server closes `stream` within `within` (reads end of file or a reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_the_others_served() {
    let config = BrokerConfig {
        max_connections: 3,
        ..BrokerConfig::default()
    };
    let server = common::serve(config, None, Hooks::default()).await;
    let addr = server.addr;
    let mut first = Client::connect(addr, "first", 0).await;
    let second = Client::connect(addr, "second", 0).await;
    // A connection still in its handshake counts too.
    let mut handshaking = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = TcpStream::connect(addr).await.expect("the kernel accepts");
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "a fourth connection is closed at once"
    );
    // The others are undisturbed.
    first.send(Packet::PingReq).await;
    assert_eq!(first.recv().await, Some(Packet::PingResp));
    assert!(
        !closed_within(&mut handshaking, Duration::from_millis(200)).await,
        "the handshaking one is still open"
    );
    // Once one goes, a newcomer gets in.
    second.cut().await;
    drop(handshaking);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_third, answer) =
        Client::open(addr, connect_packet(ProtocolVersion::V311, "third", 0)).await;
    assert!(matches!(answer, Some(Packet::ConnAck(_))), "{answer:?}");
    server.stop().await;
}

#[test]
fn the_connection_cap_leaves_room_below_the_open_file_limit() {
    let cap = shell::connection_cap(usize::MAX);
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    if let Some(limit) = limit {
        assert!(cap < limit, "cap {cap} below the limit {limit}");
        assert!(cap >= limit / 2, "cap {cap} uses most of {limit}");
    }
    assert_eq!(shell::connection_cap(5), 5);
}

#[tokio::test]
async fn the_listener_gets_the_configured_backlog() {
    let config = BrokerConfig {
        listen: "127.0.0.1:0".to_owned(),
        listen_backlog: 777,
        ..BrokerConfig::default()
    };
    let listener = shell::bind(&config).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // /proc/net/tcp does not show the backlog; `ss` does (Send-Q of a
    // listening socket). Skip where it is missing.
    let Ok(output) = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let backlog: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(backlog.get(2), Some(&"777"), "ss said: {text}");
}
