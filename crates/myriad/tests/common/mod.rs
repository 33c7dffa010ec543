//! Shared helpers for integration tests that drive the real `myriad` binary with
//! rumqttc clients.
//!
//! * [`Broker`] spawns `myriad serve --listen 127.0.0.1:0 --config <tmp>`, reads the
//!   port from the `MQTT listening on 127.0.0.1:PORT` stdout line and kills the child
//!   (by its PID, through the process handle) when dropped.
//! * [`v4`] and [`v5`] wrap rumqttc's `AsyncClient` + event loop: the event loop runs
//!   in its own task and forwards events over a channel, so tests can wait for
//!   specific packets with a bounded timeout, and can drop the connection abruptly
//!   (abort the task => socket closed without DISCONNECT).
//!
//! Every wait is bounded by `tokio::time::timeout`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Default bound for any single wait (a packet, an ack, the broker starting).
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to wait for the broker to print its listening line.
pub const STARTUP: Duration = Duration::from_secs(30);
/// How long to listen for a message that must *not* arrive.
pub const QUIET: Duration = Duration::from_millis(700);

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A unique client id / topic prefix, so tests never collide.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::SeqCst)
    )
}

/// A running `myriad serve` child process.
pub struct Broker {
    child: Child,
    pid: Option<u32>,
    pub port: u16,
    config: PathBuf,
    data_dir: PathBuf,
    stderr_log: PathBuf,
}

impl Broker {
    /// Start a broker with an otherwise empty `[mqtt]` table.
    pub async fn start() -> Broker {
        Broker::start_with("").await
    }

    /// Start a broker; `mqtt_extra` is TOML appended inside the `[mqtt]` table,
    /// e.g. `"deny_subscribe = [\"secret/#\"]"`.
    pub async fn start_with(mqtt_extra: &str) -> Broker {
        let stem = unique("myriad-rumqttc");
        let dir = std::env::temp_dir();
        let config = dir.join(format!("{stem}.toml"));
        let stderr_log = dir.join(format!("{stem}.stderr.log"));
        // Each broker keeps its own store, so tests neither share sessions
        // nor contend for the database file.
        let data_dir = dir.join(format!("{stem}.data"));
        std::fs::write(
            &config,
            format!("[mqtt]\nlisten = \"127.0.0.1:0\"\n{mqtt_extra}\n"),
        )
        .expect("write broker config");
        let stderr = std::fs::File::create(&stderr_log).expect("create broker log");

        let mut child = Command::new(env!("CARGO_BIN_EXE_myriad"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--api-listen")
            .arg("127.0.0.1:0")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn myriad serve");
        let pid = child.id();
        let stdout = child.stdout.take().expect("child stdout");
        // From here on, Drop takes care of the child whatever happens.
        let mut broker = Broker {
            child,
            pid,
            port: 0,
            config,
            data_dir,
            stderr_log,
        };

        let mut lines = BufReader::new(stdout).lines();
        let found = timeout(STARTUP, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(port) = parse_listening_line(&line) {
                            return Some(port);
                        }
                    }
                    _ => return None, // stdout closed: the broker exited
                }
            }
        })
        .await;
        match found {
            Ok(Some(port)) => broker.port = port,
            Ok(None) => panic!(
                "myriad exited before printing 'MQTT listening on ...'; stderr:\n{}",
                broker.stderr_tail()
            ),
            Err(_) => panic!(
                "myriad did not print 'MQTT listening on ...' within {STARTUP:?}; stderr:\n{}",
                broker.stderr_tail()
            ),
        }
        // Keep draining stdout so the broker can never block on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        broker
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        lines[start..].join("\n")
    }
}

/// `MQTT listening on 127.0.0.1:PORT` -> PORT
pub fn parse_listening_line(line: &str) -> Option<u16> {
    let rest = line.trim().strip_prefix("MQTT listening on ")?;
    rest.trim().rsplit(':').next()?.parse().ok()
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SIGKILL to the child's PID via its handle (never by name).
        let _ = self.child.start_kill();
        for _ in 0..100 {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- myriad (pid {:?}, port {}) stderr tail ---\n{}",
                self.pid,
                self.port,
                self.stderr_tail()
            );
        }
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.stderr_log);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Run `fut` with the default [`WAIT`] bound, panicking with `what` on timeout.
pub async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

macro_rules! client_wrapper {
    ($modname:ident, client: $($c:ident)::+, packets: $($p:ident)::+, qos: $($q:ident)::+, topic_of: $topic_of:expr) => {
        pub mod $modname {
            use std::collections::VecDeque;
            use std::time::Duration;

            use bytes::Bytes;
            use tokio::sync::mpsc;
            use tokio::task::JoinHandle;
            use tokio::time::{timeout, Instant};

            use rumqttc::Outgoing;
            use $($c)::+::{AsyncClient, Event, EventLoop, MqttOptions};
            pub use $($c)::+::Incoming;
            pub use $($p)::+::{ConnAck, LastWill, Publish, SubscribeReasonCode};
            pub use $($q)::+::QoS;

            use super::{QUIET, WAIT};

            /// A connected client whose event loop runs in a background task.
            pub struct Conn {
                pub client: AsyncClient,
                events: mpsc::UnboundedReceiver<Result<Event, String>>,
                task: JoinHandle<()>,
                /// publishes seen while waiting for something else
                pending: VecDeque<Publish>,
            }

            /// Options for 127.0.0.1:`port` with a 5 s keep alive.
            pub fn options(port: u16, client_id: &str) -> MqttOptions {
                let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
                o.set_keep_alive(Duration::from_secs(5));
                o
            }

            fn spawn(options: MqttOptions) -> Conn {
                let (client, eventloop) = AsyncClient::new(options, 64);
                let (tx, rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(drive(eventloop, tx));
                Conn { client, events: rx, task, pending: VecDeque::new() }
            }

            async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Result<Event, String>>) {
                loop {
                    match eventloop.poll().await {
                        Ok(ev) => {
                            if tx.send(Ok(ev)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            // do not let rumqttc reconnect on its own: tests decide
                            let _ = tx.send(Err(e.to_string()));
                            break;
                        }
                    }
                }
            }

            /// Connect and wait for the CONNACK; returns the connection and the CONNACK.
            pub async fn connect(options: MqttOptions) -> (Conn, ConnAck) {
                let mut conn = spawn(options);
                let ack = conn
                    .wait_for("CONNACK", |p| match p {
                        Incoming::ConnAck(a) => Some(a.clone()),
                        _ => None,
                    })
                    .await;
                (conn, ack)
            }

            impl Conn {
                /// Next event from the event loop (bounded by WAIT); panics on a
                /// connection error.
                pub async fn next_event(&mut self, what: &str) -> Event {
                    match timeout(WAIT, self.events.recv()).await {
                        Ok(Some(Ok(ev))) => ev,
                        Ok(Some(Err(e))) => panic!("connection error while waiting for {what}: {e}"),
                        Ok(None) => panic!("event loop ended while waiting for {what}"),
                        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
                    }
                }

                /// Wait (bounded) for an incoming packet that `pick` accepts; incoming
                /// PUBLISHes skipped on the way are kept for `recv_publish`.
                pub async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Incoming) -> Option<T>) -> T {
                    let deadline = Instant::now() + WAIT;
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let ev = match timeout(left, self.events.recv()).await {
                            Ok(Some(Ok(ev))) => ev,
                            Ok(Some(Err(e))) => panic!("connection error while waiting for {what}: {e}"),
                            Ok(None) => panic!("event loop ended while waiting for {what}"),
                            Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
                        };
                        if let Event::Incoming(packet) = ev {
                            if let Some(v) = pick(&packet) {
                                return v;
                            }
                            if let Incoming::Publish(p) = packet {
                                self.pending.push_back(p);
                            }
                        }
                    }
                }

                /// Subscribe and wait for the SUBACK; returns its return codes.
                pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
                    super::bounded("subscribe request", self.client.subscribe(filter, qos))
                        .await
                        .expect("queue SUBSCRIBE");
                    self.wait_for(&format!("SUBACK for {filter}"), |p| match p {
                        Incoming::SubAck(a) => Some(a.return_codes.clone()),
                        _ => None,
                    })
                    .await
                }

                /// Subscribe and assert the broker granted exactly `qos`.
                pub async fn subscribe_ok(&mut self, filter: &str, qos: QoS) {
                    let codes = self.subscribe(filter, qos).await;
                    assert_eq!(
                        codes,
                        vec![SubscribeReasonCode::Success(qos)],
                        "SUBACK for {filter}"
                    );
                }

                /// Publish and, for QoS 1/2, wait until the flow is complete
                /// (PUBACK, or PUBREC..PUBCOMP).
                pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
                    let payload: Vec<u8> = payload.into();
                    super::bounded("publish request", self.client.publish(topic, qos, retain, payload))
                        .await
                        .expect("queue PUBLISH");
                    match qos {
                        QoS::AtMostOnce => {
                            // wait until it is actually written to the socket
                            let deadline = Instant::now() + WAIT;
                            loop {
                                let left = deadline.saturating_duration_since(Instant::now());
                                match timeout(left, self.events.recv()).await {
                                    Ok(Some(Ok(Event::Outgoing(Outgoing::Publish(_))))) => break,
                                    Ok(Some(Ok(Event::Incoming(Incoming::Publish(p))))) => self.pending.push_back(p),
                                    Ok(Some(Ok(_))) => {}
                                    Ok(Some(Err(e))) => panic!("connection error while publishing to {topic}: {e}"),
                                    Ok(None) => panic!("event loop ended while publishing to {topic}"),
                                    Err(_) => panic!("timed out after {WAIT:?} publishing QoS 0 to {topic}"),
                                }
                            }
                        }
                        QoS::AtLeastOnce => {
                            self.wait_for(&format!("PUBACK for {topic}"), |p| match p {
                                Incoming::PubAck(_) => Some(()),
                                _ => None,
                            })
                            .await
                        }
                        QoS::ExactlyOnce => {
                            self.wait_for(&format!("PUBCOMP for {topic}"), |p| match p {
                                Incoming::PubComp(_) => Some(()),
                                _ => None,
                            })
                            .await
                        }
                    }
                }

                /// Next incoming PUBLISH (bounded by WAIT).
                pub async fn recv_publish(&mut self) -> Publish {
                    if let Some(p) = self.pending.pop_front() {
                        return p;
                    }
                    self.wait_for("an incoming PUBLISH", |p| match p {
                        Incoming::Publish(p) => Some(p.clone()),
                        _ => None,
                    })
                    .await
                }

                /// Receive `n` publishes, returned sorted by topic then payload so
                /// tests do not depend on delivery order across topics.
                pub async fn recv_publishes(&mut self, n: usize) -> Vec<Publish> {
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        v.push(self.recv_publish().await);
                    }
                    v.sort_by(|a, b| (topic_of(a), &a.payload).cmp(&(topic_of(b), &b.payload)));
                    v
                }

                /// Assert that no PUBLISH arrives within `QUIET`.
                pub async fn expect_no_publish(&mut self) {
                    if let Some(p) = self.pending.pop_front() {
                        panic!("unexpected PUBLISH on {}: {:?}", topic_of(&p), p.payload);
                    }
                    let deadline = Instant::now() + QUIET;
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match timeout(left, self.events.recv()).await {
                            Err(_) => return,
                            Ok(Some(Ok(Event::Incoming(Incoming::Publish(p))))) => {
                                panic!("unexpected PUBLISH on {}: {:?}", topic_of(&p), p.payload)
                            }
                            Ok(Some(Ok(_))) => {}
                            Ok(Some(Err(e))) => panic!("connection error while expecting silence: {e}"),
                            Ok(None) => panic!("event loop ended while expecting silence"),
                        }
                    }
                }

                /// Clean disconnect: send DISCONNECT, wait until it is written, then
                /// stop the event loop. Gives the broker a moment to process it.
                pub async fn disconnect(mut self) {
                    super::bounded("disconnect request", self.client.disconnect())
                        .await
                        .expect("queue DISCONNECT");
                    let deadline = Instant::now() + WAIT;
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match timeout(left, self.events.recv()).await {
                            Ok(Some(Ok(Event::Outgoing(Outgoing::Disconnect)))) => break,
                            Ok(Some(Ok(_))) => {}
                            // the broker closing the socket after DISCONNECT is fine
                            Ok(Some(Err(_))) | Ok(None) => break,
                            Err(_) => panic!("timed out after {WAIT:?} sending DISCONNECT"),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.task.abort();
                }

                /// Abrupt drop: abort the event-loop task, which drops the network
                /// connection without sending DISCONNECT (as a crashed client would).
                pub async fn drop_abruptly(self) {
                    self.task.abort();
                    let _ = self.task.await;
                }
            }

            fn topic_of(p: &Publish) -> String {
                ($topic_of)(p)
            }

            /// Payload as bytes, for comparisons.
            pub fn payload(p: &Publish) -> Bytes {
                p.payload.clone()
            }

            /// Topic as a string.
            pub fn topic(p: &Publish) -> String {
                topic_of(p)
            }
        }
    };
}

// MQTT 3.1.1 client: rumqttc's top-level API.
client_wrapper!(v4, client: rumqttc, packets: rumqttc, qos: rumqttc,
    topic_of: |p: &Publish| p.topic.clone());
// MQTT 5.0 client: rumqttc::v5 (packet types live under rumqttc::v5::mqttbytes).
client_wrapper!(v5, client: rumqttc::v5, packets: rumqttc::v5::mqttbytes::v5,
    qos: rumqttc::v5::mqttbytes,
    topic_of: |p: &Publish| String::from_utf8_lossy(&p.topic).into_owned());
