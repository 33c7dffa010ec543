//! The device's MQTT connection (feature `client`): one connection per device, MQTT 5 first
//! with a fallback to 3.1.1, a persistent session, keep alive, reconnects spread by
//! [`crate::backoff::Backoff`], subscriptions declared up front, incoming publishes
//! dispatched by topic to bounded channels, and QoS 1 publishes whose PUBACK is reported back
//! to the caller ([`Delivery`]).
//!
//! # Choices
//!
//! - **Async, tokio + rumqttc's `AsyncClient`** (3.1.1) and `v5::AsyncClient` (5.0): the
//!   connection is one tokio task ([`ClientBuilder::start`]) bound to a
//!   [`CancellationToken`]; cancelling it sends DISCONNECT, fails what is still waiting with
//!   [`ClientError::Closed`] and ends the task. Applications on threads use
//!   [`Delivery::wait_blocking`] and [`Client::publish_blocking`].
//! - **A fresh rumqttc event loop per connection attempt.** The retry timing is ours
//!   (full-jitter backoff, [`crate::backoff`]), and so is the retransmission: every QoS 1
//!   publish stays in the client's outbox until its PUBACK, and after a reconnect the whole
//!   outbox is published again, in order (new packet ids). A publish that was delivered but
//!   whose PUBACK was lost arrives twice (QoS 1 is at least once; the telemetry store drops
//!   a point whose series already holds its timestamp).
//! - **PUBACK to caller**: the task hands publishes to rumqttc in order and rumqttc reports
//!   the packet id it gave each (`Outgoing::Publish(pkid)`, in the same order), so packet ids
//!   map back to the callers' [`Delivery`] futures.
//! - **Protocol**: [`Protocol::Auto`] connects with 5.0; when the broker refuses it (a
//!   CONNACK refusing the protocol version, a CONNACK this version cannot read, or the
//!   connection closed before any CONNACK), the next attempt, at once, is 3.1.1, and the
//!   client stays on 3.1.1 once a 3.1.1 connection succeeded after 5.0 was refused.
//!   [`Protocol::V5`] / [`Protocol::V311`] force one.
//! - **Session**: clean start off (3.1.1: clean session off), 5.0 session expiry
//!   [`ClientConfig::session_expiry_secs`]; subscriptions are made again after every CONNACK
//!   (also when the broker kept the session: cheap, and right after a broker lost its state).
//! - **The first attempt** after [`ClientBuilder::start`] goes at once (a device that boots
//!   wants its connection); every attempt after a refused or lost connection waits
//!   [`Backoff::next_delay`], so a fleet that lost its broker spreads its reconnects. A fleet
//!   powered up at once can stagger its start itself.
//! - **Randomness** for the jitter: [`ClientConfig::rng_seed`] when given (tests), else keys
//!   from the OS through std's `RandomState`.
//! - **Credentials**: user name and password ([`ClientConfig::credentials`]) and/or TLS
//!   ([`ClientConfig::tls`]: rustls with the aws-lc-rs provider, the broker's certificate
//!   checked against a CA file, ALPN `mqtt`, and a client certificate and key for mutual TLS,
//!   docs/tls.md). The files are read once, by [`ClientBuilder::start`] (each at most
//!   [`MAX_PEM_FILE`]); a file that cannot be read or parsed is [`ClientError::Tls`] naming it.
//!
//! # Example
//!
//! ```no_run
//! use myriad_agent::client::{ClientBuilder, ClientConfig, Qos};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), myriad_agent::client::ClientError> {
//! let mut config = ClientConfig::new("broker.example", 1883, "gw-0001");
//! config.credentials = Some(("gw-0001".into(), "device-password".into()));
//! let mut builder = ClientBuilder::new(config);
//! let mut commands = builder.subscribe("$commands/gw-0001/+", Qos::AtLeastOnce, 16)?;
//! let cancel = CancellationToken::new();
//! let (client, task) = builder.start(cancel.clone())?;
//! // Returns when the broker acknowledged the message (PUBACK).
//! client
//!     .publish("devices/gw-0001/telemetry", br#"{"temp":20.5}"#.to_vec(), Qos::AtLeastOnce)
//!     .await?
//!     .await?;
//! if let Some(m) = commands.recv().await {
//!     println!("{} {} bytes", m.topic, m.payload.len());
//! }
//! cancel.cancel();
//! let _ = task.await;
//! # Ok(()) }
//! ```
//!
//! # Limits
//!
//! | limit | value | one past |
//! |---|---|---|
//! | QoS 1 publishes not yet acknowledged | [`ClientConfig::max_outbox`], default 256, 1 ..= [`MAX_OUTBOX`] (65,536) | [`Client::publish`] waits; [`Client::try_publish`] is [`ClientError::Full`] |
//! | subscriptions | [`MAX_SUBSCRIPTIONS`] (64) | [`ClientError::Config`] |
//! | a subscription's channel | 1 ..= [`MAX_CHANNEL`] (4,096) messages | a message that finds it full is dropped (counted in [`ClientStats::dropped_incoming`]) |
//! | incoming packet | [`ClientConfig::max_packet_bytes`], default 1 MiB + 1 KiB, 1 KiB ..= [`MAX_PACKET_BYTES`] (16 MiB) | rumqttc breaks the connection |
//! | keep alive | [`ClientConfig::keep_alive_secs`], default 30, 5 ..= 3,600 | [`ClientError::Config`] |
//! | connect timeout | [`ClientConfig::connect_timeout_secs`], default 10, 1 ..= 300 | [`ClientError::Config`] |

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::Outgoing;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, BackoffConfig};

/// Most QoS 1 publishes the client holds until their PUBACK ([`ClientConfig::max_outbox`]).
pub const MAX_OUTBOX: usize = 65_536;
/// Most subscriptions declared on a [`ClientBuilder`].
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Largest channel capacity of one subscription.
pub const MAX_CHANNEL: usize = 4096;
/// Largest CA, certificate or key file read for TLS (bytes).
pub const MAX_PEM_FILE: u64 = 64 * 1024;
/// Largest incoming packet size allowed in [`ClientConfig::max_packet_bytes`].
pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// Which MQTT version to speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// 5.0, falling back to 3.1.1 when the broker refuses 5.0 (the default).
    #[default]
    Auto,
    /// 5.0 only.
    #[serde(rename = "5")]
    V5,
    /// 3.1.1 only.
    #[serde(rename = "3.1.1")]
    V311,
}

/// The version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.0.
    V5,
}

/// Quality of service (QoS 2 is not offered: rumqttc#1060).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// At most once: the [`Delivery`] completes when the message is handed to the connection;
    /// while the connection is down the message is dropped (and the delivery completes too).
    AtMostOnce,
    /// At least once: the [`Delivery`] completes at the PUBACK.
    AtLeastOnce,
}

/// TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA certificates (PEM) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// The client certificate (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The broker's host name or address.
    pub host: String,
    /// The broker's port.
    pub port: u16,
    /// The MQTT client id (the device id).
    pub client_id: String,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// TLS (`None`: plain TCP).
    pub tls: Option<TlsConfig>,
    /// The MQTT version.
    pub protocol: Protocol,
    /// Keep alive (seconds), 5 ..= 3,600.
    pub keep_alive_secs: u16,
    /// MQTT 5 session expiry (seconds) the broker keeps the session after a disconnect.
    pub session_expiry_secs: u32,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// Largest incoming packet (bytes), 1 KiB ..= [`MAX_PACKET_BYTES`].
    pub max_packet_bytes: usize,
    /// QoS 1 publishes held until their PUBACK, 1 ..= [`MAX_OUTBOX`].
    pub max_outbox: usize,
    /// How long one connection attempt may take until the CONNACK (seconds), 1 ..= 300.
    pub connect_timeout_secs: u64,
    /// Seed of the jitter's random numbers (tests); `None`: from the OS.
    pub rng_seed: Option<u64>,
}

impl ClientConfig {
    /// The defaults for a broker and a client id: no credentials, [`Protocol::Auto`], keep alive
    /// 30 s, session expiry 1 day, default backoff, 1 MiB + 1 KiB packets, an outbox of 256.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> ClientConfig {
        ClientConfig {
            host: host.into(),
            port,
            client_id: client_id.into(),
            credentials: None,
            tls: None,
            protocol: Protocol::Auto,
            keep_alive_secs: 30,
            session_expiry_secs: 86_400,
            backoff: BackoffConfig::default(),
            max_packet_bytes: 1024 * 1024 + 1024,
            max_outbox: 256,
            connect_timeout_secs: 10,
            rng_seed: None,
        }
    }

    /// Checks the bounds; the error names the field.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |s: String| Err(ClientError::Config(s));
        if self.host.is_empty() {
            return bad("host: empty".into());
        }
        if self.client_id.is_empty() {
            return bad("client_id: empty".into());
        }
        if !(5..=3600).contains(&self.keep_alive_secs) {
            return bad(format!(
                "keep_alive_secs {} not in 5..=3600",
                self.keep_alive_secs
            ));
        }
        if !(1024..=MAX_PACKET_BYTES).contains(&self.max_packet_bytes) {
            return bad(format!(
                "max_packet_bytes {} not in 1024..={MAX_PACKET_BYTES}",
                self.max_packet_bytes
            ));
        }
        if !(1..=MAX_OUTBOX).contains(&self.max_outbox) {
            return bad(format!(
                "max_outbox {} not in 1..={MAX_OUTBOX}",
                self.max_outbox
            ));
        }
        if !(1..=300).contains(&self.connect_timeout_secs) {
            return bad(format!(
                "connect_timeout_secs {} not in 1..=300",
                self.connect_timeout_secs
            ));
        }
        self.backoff
            .validate()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(())
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A setting out of bounds (named).
    #[error("client config: {0}")]
    Config(String),
    /// A TLS file that cannot be read or used (named).
    #[error("client config: tls: {0}")]
    Tls(String),
    /// The client was shut down (its token cancelled) before the message was acknowledged.
    #[error("the MQTT client is closed")]
    Closed,
    /// The outbox is full ([`Client::try_publish`]).
    #[error("the MQTT client's outbox is full")]
    Full,
    /// The broker answered the publish with a failure reason (MQTT 5 PUBACK).
    #[error("publish refused by the broker: {0}")]
    Refused(String),
}

/// An incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// MQTT 5: the Response Topic property (a request's reply goes there).
    pub response_topic: Option<String>,
    /// MQTT 5: the Correlation Data property (echoed in the reply).
    pub correlation_data: Option<Bytes>,
    /// MQTT 5: the user properties.
    pub user_properties: Vec<(String, String)>,
}

/// The connection's state, as [`Client::state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Not connected (connecting or waiting to).
    Down,
    /// Connected.
    Up {
        /// The version spoken.
        version: Version,
        /// Whether the broker kept the session.
        session_present: bool,
        /// Counts connections since start (1 for the first).
        epoch: u64,
    },
    /// Shut down.
    Closed,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Connections made.
    pub connects: u64,
    /// QoS 1 publishes acknowledged.
    pub acked: u64,
    /// Publishes sent again after a reconnect.
    pub resent: u64,
    /// Incoming messages dropped because their channel was full.
    pub dropped_incoming: u64,
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    acked: AtomicU64,
    resent: AtomicU64,
    dropped_incoming: AtomicU64,
}

/// The outcome of one publish: a future resolving at the PUBACK (QoS 1) or when the message
/// went to the connection (QoS 0).
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<Result<(), ClientError>>);

impl Future for Delivery {
    type Output = Result<(), ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

impl Delivery {
    /// The outcome if it is known already (without waiting). Once this returned `Some`, the
    /// delivery is spent: do not await it.
    pub fn try_outcome(&mut self) -> Option<Result<(), ClientError>> {
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(ClientError::Closed)),
        }
    }

    /// Whether the outcome is not known yet.
    pub fn is_pending(&mut self) -> bool {
        self.try_outcome().is_none()
    }

    /// Waits for the outcome from a thread outside the runtime.
    pub fn wait_blocking(self) -> Result<(), ClientError> {
        self.0.blocking_recv().unwrap_or(Err(ClientError::Closed))
    }
}

struct Publish {
    topic: String,
    payload: Bytes,
    qos: Qos,
    correlation: Option<Bytes>,
    retain: bool,
    done: Option<oneshot::Sender<Result<(), ClientError>>>,
}

/// The application's handle on the connection (cheap to clone).
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Publish>,
    state: watch::Receiver<ConnState>,
    counters: Arc<Counters>,
}

impl Client {
    /// Queues a publish (waits while the outbox is full); the [`Delivery`] resolves at the
    /// PUBACK (QoS 1).
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: Qos,
    ) -> Result<Delivery, ClientError> {
        self.queue(publish(topic, payload, qos)).await
    }

    /// Hands `p` to the connection task (waits while its queue is full).
    async fn queue(&self, (p, d): (Publish, Delivery)) -> Result<Delivery, ClientError> {
        self.tx.send(p).await.map_err(|_| ClientError::Closed)?;
        Ok(d)
    }

    /// A reply to a request received over MQTT 5 (QoS 1): published on `topic` (the request's
    /// Response Topic) with the request's Correlation Data echoed (under 3.1.1 the property
    /// is left out).
    pub async fn publish_reply(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        correlation_data: Option<Bytes>,
    ) -> Result<Delivery, ClientError> {
        let (mut p, d) = publish(topic, payload, Qos::AtLeastOnce);
        p.correlation = correlation_data;
        self.queue((p, d)).await
    }

    /// As [`Client::publish`], with the retain flag set (the broker keeps the last one for
    /// new subscribers).
    pub async fn publish_retained(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: Qos,
    ) -> Result<Delivery, ClientError> {
        let (mut p, d) = publish(topic, payload, qos);
        p.retain = true;
        self.queue((p, d)).await
    }

    /// As [`Client::publish`] without waiting: [`ClientError::Full`] when the queue is full.
    pub fn try_publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: Qos,
    ) -> Result<Delivery, ClientError> {
        let (p, d) = publish(topic, payload, qos);
        self.tx.try_send(p).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClientError::Full,
            mpsc::error::TrySendError::Closed(_) => ClientError::Closed,
        })?;
        Ok(d)
    }

    /// As [`Client::publish`] from a thread outside the runtime (blocks while the queue is
    /// full).
    pub fn publish_blocking(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: Qos,
    ) -> Result<Delivery, ClientError> {
        let (p, d) = publish(topic, payload, qos);
        self.tx.blocking_send(p).map_err(|_| ClientError::Closed)?;
        Ok(d)
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnState {
        *self.state.borrow()
    }

    /// A receiver of state changes.
    pub fn watch_state(&self) -> watch::Receiver<ConnState> {
        self.state.clone()
    }

    /// Counters since start.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            connects: self.counters.connects.load(Ordering::Relaxed),
            acked: self.counters.acked.load(Ordering::Relaxed),
            resent: self.counters.resent.load(Ordering::Relaxed),
            dropped_incoming: self.counters.dropped_incoming.load(Ordering::Relaxed),
        }
    }
}

fn publish(topic: impl Into<String>, payload: impl Into<Bytes>, qos: Qos) -> (Publish, Delivery) {
    let (tx, rx) = oneshot::channel();
    (
        Publish {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            correlation: None,
            retain: false,
            done: Some(tx),
        },
        Delivery(rx),
    )
}

struct Sub {
    filter: String,
    qos: Qos,
    tx: mpsc::Sender<Message>,
}

/// Declares the subscriptions and the messages published after each connect, then starts
/// the connection.
pub struct ClientBuilder {
    config: ClientConfig,
    subs: Vec<Sub>,
    birth: Vec<(String, Bytes, Qos)>,
}

impl ClientBuilder {
    /// A builder for `config`.
    pub fn new(config: ClientConfig) -> ClientBuilder {
        ClientBuilder {
            config,
            subs: Vec::new(),
            birth: Vec::new(),
        }
    }

    /// Subscribes `filter` (made again after each connect); messages whose topic matches go
    /// to the returned channel of `capacity` (1 ..= [`MAX_CHANNEL`]). A message matching
    /// several filters goes to each of their channels.
    pub fn subscribe(
        &mut self,
        filter: &str,
        qos: Qos,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Message>, ClientError> {
        if self.subs.len() == MAX_SUBSCRIPTIONS {
            return Err(ClientError::Config(format!(
                "subscriptions: at most {MAX_SUBSCRIPTIONS}"
            )));
        }
        if !(1..=MAX_CHANNEL).contains(&capacity) {
            return Err(ClientError::Config(format!(
                "subscription {filter}: capacity {capacity} not in 1..={MAX_CHANNEL}"
            )));
        }
        if filter.is_empty() {
            return Err(ClientError::Config("subscription: empty filter".into()));
        }
        let (tx, rx) = mpsc::channel(capacity);
        self.subs.push(Sub {
            filter: filter.to_string(),
            qos,
            tx,
        });
        Ok(rx)
    }

    /// A message published after every CONNACK (after the subscriptions), e.g.
    /// `$ota/{id}/get`.
    pub fn publish_on_connect(&mut self, topic: &str, payload: impl Into<Bytes>, qos: Qos) {
        self.birth.push((topic.to_string(), payload.into(), qos));
    }

    /// Starts the connection task on the current tokio runtime (call inside one). The task
    /// ends when `cancel` is cancelled.
    pub fn start(self, cancel: CancellationToken) -> Result<(Client, JoinHandle<()>), ClientError> {
        self.config.validate()?;
        let tls = match &self.config.tls {
            Some(t) => Some(rustls_config(t)?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(self.config.max_outbox);
        let (state_tx, state) = watch::channel(ConnState::Down);
        let counters = Arc::new(Counters::default());
        let seed = self.config.rng_seed.unwrap_or_else(|| {
            let mut h = std::hash::RandomState::new().build_hasher();
            h.write_u64(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
            );
            h.finish()
        });
        let backoff =
            Backoff::new(self.config.backoff).map_err(|e| ClientError::Config(e.to_string()))?;
        let task = Task {
            tls,
            config: self.config,
            subs: self.subs,
            birth: self.birth,
            rx,
            state: state_tx,
            counters: counters.clone(),
            cancel,
            backoff,
            rng: seed | 1,
            outbox: BTreeMap::new(),
            next_id: 0,
            epoch: 0,
        };
        let handle = tokio::spawn(task.run());
        Ok((
            Client {
                tx,
                state,
                counters,
            },
            handle,
        ))
    }
}

fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| ClientError::Tls(format!("{what} {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(ClientError::Tls(format!(
            "{what} {}: larger than {MAX_PEM_FILE} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The rustls client config of `t` (aws-lc-rs provider, explicit: the binary may hold
/// several providers), ALPN `mqtt`.
fn rustls_config(
    t: &TlsConfig,
) -> Result<Arc<rumqttc::tokio_rustls::rustls::ClientConfig>, ClientError> {
    use rumqttc::tokio_rustls::rustls;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        ClientError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let ca = read_pem("ca_file", &t.ca_file)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        let c = c.map_err(|e| bad("ca_file", &t.ca_file, &e))?;
        roots.add(c).map_err(|e| bad("ca_file", &t.ca_file, &e))?;
    }
    if roots.is_empty() {
        return Err(bad("ca_file", &t.ca_file, &"no certificate"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_pem("client_cert", cert)?;
            let chain = CertificateDer::pem_slice_iter(&chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("client_cert", cert, &e))?;
            if chain.is_empty() {
                return Err(bad("client_cert", cert, &"no certificate"));
            }
            let k = read_pem("client_key", key)?;
            let k = PrivateKeyDer::from_pem_slice(&k).map_err(|e| bad("client_key", key, &e))?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| bad("client_key", key, &e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(ClientError::Tls(
                "client_cert and client_key go together".into(),
            ));
        }
    };
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok(Arc::new(config))
}

/// Whether `topic` matches the MQTT filter `filter` (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

// -----------------------------------------------------------------------------------------
// The connection task

/// One attempt's rumqttc client and event loop (one exists at a time: the size difference
/// does not matter).
#[allow(clippy::large_enum_variant)]
enum Raw {
    V4(rumqttc::AsyncClient, rumqttc::EventLoop),
    V5(rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop),
}

/// What one poll of the event loop gave, in the version-free form the task uses.
enum Ev {
    ConnAck { session_present: bool },
    Refused { protocol: bool, reason: String },
    OutPublish(u16),
    PubAck { pkid: u16, failure: Option<String> },
    Publish(Message),
    Other,
}

/// A connection error: whether it looks like the broker refusing 5.0.
struct Lost {
    protocol: bool,
    reason: String,
}

fn qos4(q: Qos) -> rumqttc::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
    }
}

fn qos5(q: Qos) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    }
}

/// rumqttc's in-flight limit for a client that holds at most `max_outbox` unacknowledged
/// publishes.
fn inflight_limit(max_outbox: usize) -> u16 {
    u16::try_from(max_outbox).unwrap_or(u16::MAX).max(1)
}

impl Raw {
    fn new(
        c: &ClientConfig,
        tls: Option<Arc<rumqttc::tokio_rustls::rustls::ClientConfig>>,
        version: Version,
        cap: usize,
    ) -> Raw {
        match version {
            Version::V311 => {
                let mut o = rumqttc::MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
                o.set_clean_session(false)
                    .set_keep_alive(Duration::from_secs(u64::from(c.keep_alive_secs)))
                    .set_max_packet_size(c.max_packet_bytes, c.max_packet_bytes)
                    .set_request_channel_capacity(cap)
                    .set_inflight(inflight_limit(c.max_outbox));
                if let Some((u, p)) = &c.credentials {
                    o.set_credentials(u.clone(), p.clone());
                }
                if let Some(t) = tls {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(t),
                    ));
                }
                let (client, el) = rumqttc::AsyncClient::new(o, cap);
                Raw::V4(client, el)
            }
            Version::V5 => {
                let mut o =
                    rumqttc::v5::MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
                o.set_clean_start(false)
                    .set_keep_alive(Duration::from_secs(u64::from(c.keep_alive_secs)))
                    .set_session_expiry_interval(Some(c.session_expiry_secs))
                    .set_max_packet_size(Some(c.max_packet_bytes as u32))
                    .set_request_channel_capacity(cap)
                    // rumqttc keeps a slot per in-flight publish (about 256 bytes each) for
                    // this many: left unset it is 65,535 slots, a 16 MiB table per
                    // connection. The client never has more than `max_outbox` in flight.
                    .set_outgoing_inflight_upper_limit(inflight_limit(c.max_outbox));
                if let Some((u, p)) = &c.credentials {
                    o.set_credentials(u.clone(), p.clone());
                }
                if let Some(t) = tls {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(t),
                    ));
                }
                let (client, el) = rumqttc::v5::AsyncClient::new(o, cap);
                Raw::V5(client, el)
            }
        }
    }

    async fn poll(&mut self) -> Result<Ev, Lost> {
        match self {
            Raw::V4(_, el) => {
                use rumqttc::{ConnectReturnCode as C, ConnectionError as E, Event, Packet};
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Ok(match a.code {
                        C::Success => Ev::ConnAck {
                            session_present: a.session_present,
                        },
                        code => Ev::Refused {
                            protocol: code == C::RefusedProtocolVersion,
                            reason: format!("{code:?}"),
                        },
                    }),
                    Ok(Event::Incoming(Packet::PubAck(a))) => Ok(Ev::PubAck {
                        pkid: a.pkid,
                        failure: None,
                    }),
                    Ok(Event::Incoming(Packet::Publish(p))) => Ok(Ev::Publish(Message {
                        topic: p.topic,
                        payload: p.payload,
                        response_topic: None,
                        correlation_data: None,
                        user_properties: Vec::new(),
                    })),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ok(Ev::OutPublish(pkid)),
                    Ok(_) => Ok(Ev::Other),
                    Err(E::ConnectionRefused(code)) => Ok(Ev::Refused {
                        protocol: code == C::RefusedProtocolVersion,
                        reason: format!("{code:?}"),
                    }),
                    Err(e) => Err(Lost {
                        protocol: false,
                        reason: e.to_string(),
                    }),
                }
            }
            Raw::V5(_, el) => {
                use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as C, Packet, PubAckReason};
                use rumqttc::v5::{ConnectionError as E, Event};
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Ok(match a.code {
                        C::Success => Ev::ConnAck {
                            session_present: a.session_present,
                        },
                        code => Ev::Refused {
                            protocol: matches!(
                                code,
                                C::UnsupportedProtocolVersion | C::RefusedProtocolVersion
                            ),
                            reason: format!("{code:?}"),
                        },
                    }),
                    Ok(Event::Incoming(Packet::PubAck(a))) => Ok(Ev::PubAck {
                        pkid: a.pkid,
                        failure: match a.reason {
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                            r => Some(format!("{r:?}")),
                        },
                    }),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let props = p.properties.unwrap_or_default();
                        Ok(Ev::Publish(Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            response_topic: props.response_topic,
                            correlation_data: props.correlation_data,
                            user_properties: props.user_properties,
                        }))
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ok(Ev::OutPublish(pkid)),
                    Ok(_) => Ok(Ev::Other),
                    Err(E::ConnectionRefused(code)) => Ok(Ev::Refused {
                        protocol: matches!(
                            code,
                            C::UnsupportedProtocolVersion | C::RefusedProtocolVersion
                        ),
                        reason: format!("{code:?}"),
                    }),
                    Err(e) => {
                        // A 3.1.1 broker answers a 5.0 CONNECT with a CONNACK 5.0 cannot read
                        // (return code 1), or closes the connection.
                        let protocol = !matches!(&e, E::Io(io)
                            if io.kind() == std::io::ErrorKind::ConnectionRefused);
                        Err(Lost {
                            protocol,
                            reason: e.to_string(),
                        })
                    }
                }
            }
        }
    }

    fn subscribe(&self, filter: &str, qos: Qos) {
        let r = match self {
            Raw::V4(c, _) => c
                .try_subscribe(filter, qos4(qos))
                .map_err(|e| e.to_string()),
            Raw::V5(c, _) => c
                .try_subscribe(filter, qos5(qos))
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, filter, "subscribe not queued");
        }
    }

    fn publish(
        &self,
        topic: &str,
        payload: &Bytes,
        qos: Qos,
        correlation: Option<&Bytes>,
        retain: bool,
    ) -> bool {
        let r = match self {
            Raw::V4(c, _) => c
                .try_publish(topic, qos4(qos), retain, payload.clone())
                .map_err(|e| e.to_string()),
            Raw::V5(c, _) => match correlation {
                Some(cd) => {
                    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
                        correlation_data: Some(cd.clone()),
                        ..Default::default()
                    };
                    c.try_publish_with_properties(topic, qos5(qos), retain, payload.clone(), props)
                        .map_err(|e| e.to_string())
                }
                None => c
                    .try_publish(topic, qos5(qos), retain, payload.clone())
                    .map_err(|e| e.to_string()),
            },
        };
        if let Err(e) = &r {
            tracing::warn!(error = %e, topic, "publish not queued");
        }
        r.is_ok()
    }

    fn disconnect(&self) {
        let _ = match self {
            Raw::V4(c, _) => c.try_disconnect().map_err(|e| e.to_string()),
            Raw::V5(c, _) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

/// A QoS 1 publish waiting for its PUBACK.
struct Pending {
    topic: String,
    payload: Bytes,
    correlation: Option<Bytes>,
    retain: bool,
    done: Option<oneshot::Sender<Result<(), ClientError>>>,
}

struct Task {
    config: ClientConfig,
    tls: Option<Arc<rumqttc::tokio_rustls::rustls::ClientConfig>>,
    subs: Vec<Sub>,
    birth: Vec<(String, Bytes, Qos)>,
    rx: mpsc::Receiver<Publish>,
    state: watch::Sender<ConnState>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    backoff: Backoff,
    rng: u64,
    /// QoS 1 publishes by the order they came in, until their PUBACK.
    outbox: BTreeMap<u64, Pending>,
    next_id: u64,
    epoch: u64,
}

/// How one connection ended.
enum End {
    Cancelled,
    /// Refused or lost; `protocol`: it looked like the broker refusing 5.0 before a CONNACK.
    Lost {
        protocol: bool,
        was_up: bool,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Task {
    fn random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    async fn run(mut self) {
        let mut v311 = self.config.protocol == Protocol::V311;
        let mut fell_back = false;
        let mut wait = false;
        loop {
            if wait {
                let r = self.random();
                let delay = self.backoff.next_delay(r);
                tracing::info!(delay_ms = delay, "reconnecting after a pause");
                if !self.idle(Duration::from_millis(delay)).await {
                    break;
                }
            }
            let version = if v311 { Version::V311 } else { Version::V5 };
            match self.connection(version).await {
                End::Cancelled => break,
                End::Lost { protocol, was_up } => {
                    if was_up {
                        self.backoff.disconnected(now_ms());
                    }
                    if protocol && version == Version::V5 && self.config.protocol == Protocol::Auto
                    {
                        tracing::info!("MQTT 5 refused: trying 3.1.1");
                        v311 = true;
                        fell_back = true;
                        wait = false;
                        continue;
                    }
                    // After a fallback that did not connect, 5.0 gets another chance.
                    if version == Version::V311 && fell_back && !was_up {
                        v311 = false;
                        fell_back = false;
                    }
                    wait = true;
                }
            }
        }
        let _ = self.state.send(ConnState::Closed);
        self.rx.close();
        while let Ok(mut p) = self.rx.try_recv() {
            if let Some(d) = p.done.take() {
                let _ = d.send(Err(ClientError::Closed));
            }
        }
        for (_, mut p) in std::mem::take(&mut self.outbox) {
            if let Some(d) = p.done.take() {
                let _ = d.send(Err(ClientError::Closed));
            }
        }
    }

    /// Waits `d` while taking publishes into the outbox; false when cancelled.
    async fn idle(&mut self, d: Duration) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            let room = self.outbox.len() < self.config.max_outbox;
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = &mut sleep => return true,
                p = self.rx.recv(), if room => match p {
                    Some(p) => { self.enqueue(p); }
                    None => return false,
                },
            }
        }
    }

    /// Takes a publish: QoS 1 into the outbox (returns its id); QoS 0 is dropped while down.
    fn enqueue(&mut self, mut p: Publish) -> Option<u64> {
        match p.qos {
            Qos::AtLeastOnce => {
                let id = self.next_id;
                self.next_id += 1;
                self.outbox.insert(
                    id,
                    Pending {
                        topic: p.topic,
                        payload: p.payload,
                        correlation: p.correlation,
                        retain: p.retain,
                        done: p.done,
                    },
                );
                Some(id)
            }
            Qos::AtMostOnce => {
                if let Some(d) = p.done.take() {
                    let _ = d.send(Ok(()));
                }
                None
            }
        }
    }

    async fn connection(&mut self, version: Version) -> End {
        let cap = self.config.max_outbox + self.subs.len() + self.birth.len() + 16;
        let mut raw = Raw::new(&self.config, self.tls.clone(), version, cap);
        // Until the CONNACK, at most connect_timeout_secs.
        let deadline = tokio::time::sleep(Duration::from_secs(self.config.connect_timeout_secs));
        tokio::pin!(deadline);
        let session_present = loop {
            let room = self.outbox.len() < self.config.max_outbox;
            tokio::select! {
                _ = self.cancel.cancelled() => return End::Cancelled,
                _ = &mut deadline => {
                    tracing::warn!(?version, "no CONNACK in time");
                    return End::Lost { protocol: false, was_up: false };
                }
                p = self.rx.recv(), if room => match p {
                    Some(p) => { self.enqueue(p); }
                    None => return End::Cancelled,
                },
                ev = raw.poll() => match ev {
                    Ok(Ev::ConnAck { session_present }) => break session_present,
                    Ok(Ev::Refused { protocol, reason }) => {
                        tracing::warn!(?version, reason, "connection refused");
                        return End::Lost { protocol, was_up: false };
                    }
                    Ok(_) => {}
                    Err(Lost { protocol, reason }) => {
                        tracing::warn!(?version, error = reason, "connection failed");
                        return End::Lost { protocol, was_up: false };
                    }
                },
            }
        };
        self.epoch += 1;
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        self.backoff.connected(now_ms());
        tracing::info!(?version, session_present, "connected");
        let _ = self.state.send(ConnState::Up {
            version,
            session_present,
            epoch: self.epoch,
        });
        // Publishes handed to rumqttc in this connection, in order, waiting for their packet
        // id (None: a message published on connect, not tracked).
        let mut awaiting: VecDeque<Option<u64>> = VecDeque::new();
        let mut by_pkid: HashMap<u16, u64> = HashMap::new();
        for s in &self.subs {
            raw.subscribe(&s.filter, s.qos);
        }
        for (topic, payload, qos) in &self.birth {
            if raw.publish(topic, payload, *qos, None, false) && *qos == Qos::AtLeastOnce {
                awaiting.push_back(None);
            }
        }
        for (id, p) in &self.outbox {
            if raw.publish(
                &p.topic,
                &p.payload,
                Qos::AtLeastOnce,
                p.correlation.as_ref(),
                p.retain,
            ) {
                awaiting.push_back(Some(*id));
                self.counters.resent.fetch_add(1, Ordering::Relaxed);
            }
        }
        let end = loop {
            let room = self.outbox.len() < self.config.max_outbox;
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    raw.disconnect();
                    // Let the DISCONNECT go out.
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        while raw.poll().await.is_ok() {}
                    }).await;
                    break End::Cancelled;
                }
                p = self.rx.recv(), if room => match p {
                    Some(p) => {
                        let qos = p.qos;
                        let (topic, payload) = (p.topic.clone(), p.payload.clone());
                        let (correlation, retain) = (p.correlation.clone(), p.retain);
                        let id = self.enqueue_live(p);
                        if raw.publish(&topic, &payload, qos, correlation.as_ref(), retain)
                            && let Some(id) = id
                        {
                            awaiting.push_back(Some(id));
                        }
                    }
                    None => {
                        raw.disconnect();
                        break End::Cancelled;
                    }
                },
                ev = raw.poll() => match ev {
                    Ok(Ev::OutPublish(pkid)) if pkid != 0 => {
                        // A retransmission (or a publish held on a packet id collision) keeps
                        // its mapping; a new packet id takes the next publish in order.
                        if !by_pkid.contains_key(&pkid)
                            && let Some(next) = awaiting.pop_front()
                            && let Some(id) = next
                        {
                            by_pkid.insert(pkid, id);
                        }
                    }
                    Ok(Ev::PubAck { pkid, failure }) => {
                        if let Some(id) = by_pkid.remove(&pkid)
                            && let Some(mut p) = self.outbox.remove(&id)
                        {
                            self.counters.acked.fetch_add(1, Ordering::Relaxed);
                            if let Some(d) = p.done.take() {
                                let _ = d.send(match failure {
                                    None => Ok(()),
                                    Some(r) => Err(ClientError::Refused(r)),
                                });
                            }
                        }
                    }
                    Ok(Ev::Publish(m)) => self.dispatch(m),
                    Ok(_) => {}
                    Err(Lost { reason, .. }) => {
                        tracing::warn!(error = reason, "connection lost");
                        break End::Lost { protocol: false, was_up: true };
                    }
                },
            }
        };
        if !matches!(end, End::Cancelled) {
            let _ = self.state.send(ConnState::Down);
        }
        end
    }

    /// Takes a publish while connected: QoS 1 into the outbox (its id); QoS 0 completes when
    /// handed to rumqttc.
    fn enqueue_live(&mut self, mut p: Publish) -> Option<u64> {
        if p.qos == Qos::AtMostOnce {
            if let Some(d) = p.done.take() {
                let _ = d.send(Ok(()));
            }
            return None;
        }
        self.enqueue(p)
    }

    fn dispatch(&self, msg: Message) {
        let mut matched = false;
        for s in &self.subs {
            if topic_matches(&s.filter, &msg.topic) {
                matched = true;
                if s.tx.try_send(msg.clone()).is_err() {
                    self.counters
                        .dropped_incoming
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = msg.topic, "incoming message dropped: channel full");
                }
            }
        }
        if !matched {
            tracing::debug!(
                topic = msg.topic,
                "incoming message matches no subscription"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match() {
        for (f, t, ok) in [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a/b/c", true),
            ("a/#", "a", true),
            ("#", "$ota/x", false),
            ("$ota/d1/chunk/+/+", "$ota/d1/chunk/a1/4096", true),
            ("$ota/d1/chunk/+/+", "$ota/d1/chunk/rejected", false),
            ("$ota/d1/notify", "$ota/d1/notify", true),
        ] {
            assert_eq!(topic_matches(f, t), ok, "{f} {t}");
        }
    }

    #[test]
    fn config_bounds_name_the_field() {
        let ok = ClientConfig::new("h", 1883, "d1");
        assert!(ok.validate().is_ok());
        for (mut c, field) in [
            (ClientConfig::new("h", 1, "d"), "max_outbox"),
            (ClientConfig::new("h", 1, "d"), "keep_alive_secs"),
            (ClientConfig::new("h", 1, "d"), "max_packet_bytes"),
            (ClientConfig::new("h", 1, "d"), "connect_timeout_secs"),
        ] {
            match field {
                "max_outbox" => c.max_outbox = MAX_OUTBOX + 1,
                "keep_alive_secs" => c.keep_alive_secs = 3601,
                "max_packet_bytes" => c.max_packet_bytes = MAX_PACKET_BYTES + 1,
                _ => c.connect_timeout_secs = 301,
            }
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let mut c = ClientConfig::new("h", 1, "d");
        c.max_outbox = MAX_OUTBOX;
        assert!(c.validate().is_ok());
        let mut b = ClientBuilder::new(ok);
        assert!(b.subscribe("a", Qos::AtMostOnce, MAX_CHANNEL + 1).is_err());
        for i in 0..MAX_SUBSCRIPTIONS {
            b.subscribe(&format!("t/{i}"), Qos::AtMostOnce, 1).unwrap();
        }
        assert!(b.subscribe("t/x", Qos::AtMostOnce, 1).is_err());
    }

    /// A broker that speaks only 3.1.1: a 5.0 CONNECT gets the 3.1.1 refusal (return code 1).
    /// The first 3.1.1 connection takes one PUBLISH and drops without a PUBACK; the next
    /// acknowledges everything. Returns what it saw: (protocol level, publish topic) pairs.
    async fn fake_broker(
        listener: tokio::net::TcpListener,
        seen: Arc<std::sync::Mutex<Vec<(u8, String)>>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut v311_conns = 0;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut level = 0u8;
            'conn: loop {
                let mut h = [0u8; 1];
                if s.read_exact(&mut h).await.is_err() {
                    break;
                }
                let (mut len, mut mul) = (0usize, 1usize);
                loop {
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_err() {
                        break 'conn;
                    }
                    len += (b[0] & 0x7f) as usize * mul;
                    mul *= 128;
                    if b[0] & 0x80 == 0 {
                        break;
                    }
                }
                let mut body = vec![0u8; len];
                if s.read_exact(&mut body).await.is_err() {
                    break;
                }
                match h[0] >> 4 {
                    1 => {
                        level = body[6];
                        seen.lock().unwrap().push((level, String::new()));
                        if level == 5 {
                            let _ = s.write_all(&[0x20, 2, 0, 1]).await;
                            break;
                        }
                        v311_conns += 1;
                        let _ = s.write_all(&[0x20, 2, 0, 0]).await;
                    }
                    3 => {
                        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                        let topic = String::from_utf8_lossy(&body[2..2 + tl]).into_owned();
                        seen.lock().unwrap().push((level, topic));
                        if v311_conns == 1 {
                            break; // dropped before the PUBACK
                        }
                        if h[0] & 0x06 != 0 {
                            let _ = s.write_all(&[0x40, 2, body[2 + tl], body[3 + tl]]).await;
                        }
                    }
                    8 => {
                        let _ = s.write_all(&[0x90, 3, body[0], body[1], 1]).await;
                    }
                    12 => {
                        let _ = s.write_all(&[0xd0, 0]).await;
                    }
                    14 => break,
                    _ => {}
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn falls_back_to_311_and_resends_until_puback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = tokio::spawn(fake_broker(listener, seen.clone()));
        let mut config = ClientConfig::new("127.0.0.1", port, "d1");
        config.backoff = BackoffConfig {
            base_ms: 10,
            cap_ms: 50,
            reset_after_ms: 1000,
        };
        config.rng_seed = Some(42);
        let cancel = CancellationToken::new();
        let (client, task) = ClientBuilder::new(config).start(cancel.clone()).unwrap();
        let d = client
            .publish("devices/d1/telemetry", b"{}".to_vec(), Qos::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), d)
            .await
            .expect("acknowledged in time")
            .unwrap();
        assert!(matches!(
            client.state(),
            ConnState::Up {
                version: Version::V311,
                ..
            }
        ));
        let stats = client.stats();
        assert_eq!(stats.acked, 1);
        assert!(stats.connects >= 2 && stats.resent >= 1, "{stats:?}");
        {
            let seen = seen.lock().unwrap();
            // 5.0 first, then 3.1.1; the publish went out twice (dropped, then acknowledged).
            assert_eq!(seen[0], (5, String::new()));
            assert!(seen.iter().all(|(l, _)| *l == 5 || *l == 4));
            let sends = seen
                .iter()
                .filter(|(_, t)| t == "devices/d1/telemetry")
                .count();
            assert_eq!(sends, 2, "{seen:?}");
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(client.state(), ConnState::Closed);
        // After the shutdown, publishing fails at once.
        assert!(matches!(
            client.try_publish("t", Vec::new(), Qos::AtLeastOnce),
            Err(ClientError::Closed)
        ));
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forced_v5_never_falls_back_and_cancel_fails_waiting_publishes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = tokio::spawn(fake_broker(listener, seen.clone()));
        let mut config = ClientConfig::new("127.0.0.1", port, "d1");
        config.protocol = Protocol::V5;
        config.backoff = BackoffConfig {
            base_ms: 10,
            cap_ms: 50,
            reset_after_ms: 1000,
        };
        let cancel = CancellationToken::new();
        let (client, task) = ClientBuilder::new(config).start(cancel.clone()).unwrap();
        let d = client
            .publish("t", b"x".to_vec(), Qos::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(client.state(), ConnState::Down);
        cancel.cancel();
        assert_eq!(d.await, Err(ClientError::Closed));
        task.await.unwrap();
        let seen = seen.lock().unwrap();
        assert!(
            seen.len() >= 2 && seen.iter().all(|(l, _)| *l == 5),
            "{seen:?}"
        );
        server.abort();
    }
}
