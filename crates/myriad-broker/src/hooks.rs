//! Extension points for the layers above the broker (the device layer).
//!
//! - [`Authenticator`]: decides on every network CONNECT, in the connection's
//!   own task (so a slow password hash never stalls the broker core), and
//!   hands back the connection's [`Acl`];
//! - [`Acl`]: consulted by the core for every PUBLISH, SUBSCRIBE and will of
//!   that connection;
//! - [`Presence`] events: the core reports every session going online and
//!   offline, in order, with the reason; the shell adds the peer address and
//!   user name and sends them as [`Lifecycle`] events.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use myriad_mqtt::{ByteString, ProtocolVersion, ReasonCode};
pub use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};

use crate::ConnId;

/// What a client offered in CONNECT, for the [`Authenticator`].
#[derive(Clone, Copy)]
pub struct ConnectInfo<'a> {
    /// The client identifier (may be empty: the broker then assigns one).
    pub client_id: &'a str,
    /// The user name, if any.
    pub username: Option<&'a str>,
    /// The password, if any. Never log it.
    pub password: Option<&'a [u8]>,
    /// Where the connection comes from.
    pub peer: SocketAddr,
    /// The client's protocol version.
    pub protocol: ProtocolVersion,
    /// The certificate chain a TLS client presented, end entity first,
    /// already verified by the listener (against its `client_ca`, the
    /// [`crate::shell::client_trust::ClientTrust`] the layer above gave, or
    /// a pinned fingerprint); empty without one.
    pub certificates: &'a [CertificateDer<'static>],
}

impl fmt::Debug for ConnectInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectInfo")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "<redacted>"))
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

/// What a connection may do once connected.
pub trait Acl: Send + Sync + fmt::Debug {
    /// Whether the client may publish to `topic` (also checked for its will).
    fn may_publish(&self, topic: &str) -> bool;
    /// Whether the client may publish this message: a PUBLISH to `topic`
    /// with this retain flag and Response Topic (5.0). The default is
    /// [`Acl::may_publish`] on `topic`; a layer that acts on some messages
    /// (publishing its answer to the Response Topic, say) refines it.
    fn may_publish_message(&self, topic: &str, retain: bool, response_topic: Option<&str>) -> bool {
        let _ = (retain, response_topic);
        self.may_publish(topic)
    }
    /// Whether messages on `topic` may reach the client through a wider
    /// subscription it was granted (`#`, `+/...`): asked at delivery, and
    /// only when [`Acl::filters_deliveries`] is true. Default: yes.
    fn may_receive(&self, topic: &str) -> bool {
        let _ = topic;
        true
    }
    /// Whether [`Acl::may_receive`] must be asked for every message
    /// delivered to this client (decided once at CONNECT). Default: no.
    fn filters_deliveries(&self) -> bool {
        false
    }
    /// Whether the client may subscribe to `filter` (for a shared
    /// subscription, the filter without its `$share/{group}/` prefix).
    fn may_subscribe(&self, filter: &str) -> bool;
    /// The device this connection authenticated as, if it is one: an
    /// [`IngestSink`] takes the messages a device publishes about itself.
    /// Default: none.
    fn device(&self) -> Option<&str> {
        None
    }
}

/// The answer to a CONNECT.
#[derive(Debug, Clone)]
pub enum AuthDecision {
    /// Let the client in; `None` means no restrictions beyond the config.
    Allow(Option<Arc<dyn Acl>>),
    /// Refuse with this CONNACK reason (3.1.1 clients get the nearest return
    /// code: 0x86 -> 4 "bad user name or password", 0x87 / 0x8A -> 5 "not authorized").
    Deny(ReasonCode),
}

/// A boxed future, as the [`Authenticator`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Decides whether a network client may connect. Runs in the connection's
/// task; put CPU-heavy work (password hashing) on a blocking thread.
pub trait Authenticator: Send + Sync + 'static {
    /// Decides on one CONNECT.
    fn authenticate<'a>(&'a self, info: ConnectInfo<'a>) -> BoxFuture<'a, AuthDecision>;
}

/// Why an [`IngestSink`] could not take a message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the ingest sink refused the message: {0}")]
pub struct IngestRefused(pub String);

/// Takes what a client publishes to one topic of its own (a device's
/// telemetry) before the broker routes it, so that the publisher's
/// acknowledgement waits until the sink has stored it.
///
/// The connection task asks [`IngestSink::topic_for`] once, after CONNECT;
/// from then on every PUBLISH of that client to that topic (named, or
/// through a Topic Alias set to it) is handed to [`IngestSink::ingest`] and
/// awaited *before* the packet goes on to the broker core, which checks
/// the ACL, routes it to subscribers and acknowledges it as usual. The
/// client's later packets wait meanwhile (so its acknowledgements keep
/// their order); other clients do not. When the sink refuses, the message
/// is not routed: a 5.0 client gets PUBACK / PUBREC 0x80 (Unspecified
/// error), a 3.1.1 client is disconnected without an acknowledgement (it
/// sends the message again), and a QoS 0 message is dropped.
pub trait IngestSink: Send + Sync + 'static {
    /// The topic of this client whose messages go to the sink, if any.
    fn topic_for(&self, client_id: &str, acl: Option<&dyn Acl>) -> Option<String>;
    /// Takes one message published to the client's topic; resolves once it
    /// is stored (as durably as the sink promises).
    fn ingest(
        &self,
        topic: &str,
        payload: bytes::Bytes,
    ) -> BoxFuture<'static, Result<(), IngestRefused>>;
}

/// Why a session went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    /// The client sent DISCONNECT (normal disconnection).
    ClientDisconnect,
    /// The client sent DISCONNECT 0x04 (disconnect and publish the will).
    ClientDisconnectWithWill,
    /// The socket closed or failed without DISCONNECT.
    NetworkLoss,
    /// Nothing arrived for 1.5 times the keep alive.
    KeepAliveTimeout,
    /// The client sent something the protocol forbids; the reason the server gave.
    ProtocolError(ReasonCode),
    /// Another connection with the same client identifier took the session over.
    TakenOver,
    /// The server is shutting down.
    ServerShutdown,
    /// The layer above closed the connection through
    /// [`crate::shell::BrokerHandle::evict`] (an operator's kick, revoked
    /// credentials); the reason code the client was given.
    Kicked(ReasonCode),
}

impl OfflineReason {
    /// A stable snake_case name for events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::ClientDisconnect => "client_disconnect",
            OfflineReason::ClientDisconnectWithWill => "client_disconnect_with_will",
            OfflineReason::NetworkLoss => "network_loss",
            OfflineReason::KeepAliveTimeout => "keep_alive_timeout",
            OfflineReason::ProtocolError(_) => "protocol_error",
            OfflineReason::TakenOver => "taken_over",
            OfflineReason::ServerShutdown => "server_shutdown",
            OfflineReason::Kicked(_) => "kicked",
        }
    }
}

/// A session went online or offline (reported by the core when enabled with
/// [`crate::Broker::set_presence_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// A connection was accepted for `client_id`.
    Online {
        /// The connection.
        conn: ConnId,
        /// The session's client identifier.
        client_id: ByteString,
        /// The keep alive the server enforces, in seconds (0: none).
        keep_alive: u16,
        /// The client's protocol version.
        protocol: ProtocolVersion,
        /// Whether an existing session was resumed.
        session_present: bool,
        /// The user name given at CONNECT.
        username: Option<ByteString>,
    },
    /// The connection of `client_id` ended.
    Offline {
        /// The connection that ended.
        conn: ConnId,
        /// The session's client identifier.
        client_id: ByteString,
        /// Why.
        reason: OfflineReason,
    },
}

impl Presence {
    /// The connection the event is about.
    pub fn conn(&self) -> ConnId {
        match self {
            Presence::Online { conn, .. } | Presence::Offline { conn, .. } => *conn,
        }
    }
}

/// A [`Presence`] event with what only the shell knows, as sent to the
/// lifecycle channel given to [`crate::shell::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// What happened.
    pub presence: Presence,
    /// The connection's peer address (`None` for in-process clients).
    pub peer: Option<SocketAddr>,
}
