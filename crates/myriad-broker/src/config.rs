//! Broker limits and policies, read from the `[mqtt]` table of the config file.

use std::path::PathBuf;

use serde::Deserialize;

/// Settings of the MQTT broker. Every field has a default; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// TCP address the plain MQTT listener binds to (empty: none, when
    /// `listeners` has every listener).
    pub listen: String,
    /// More listeners, each with its own address and kind (`[[mqtt.listeners]]`):
    /// plain TCP, MQTT over TLS, MQTT over WebSocket (`ws`) or over
    /// WebSocket over TLS (`wss`). `listen` stays the first plain one.
    pub listeners: Vec<ListenerConfig>,
    /// Largest keep alive the server accepts (Server Keep Alive in 5.0). A 5.0
    /// client asking for more, or for 0, is told this value in CONNACK.
    pub max_keep_alive_secs: u16,
    /// Largest packet the server accepts, in bytes (announced in CONNACK).
    pub max_packet_size: u32,
    /// How many unacknowledged QoS 2 publications a client may have open at once.
    pub receive_maximum: u16,
    /// Highest topic alias a client may use (0 disables client aliases).
    pub topic_alias_maximum: u16,
    /// Upper bound on a session's expiry interval in seconds.
    pub max_session_expiry_secs: u32,
    /// Messages kept per session beyond its in-flight window (offline or slow clients).
    pub max_queued_messages: usize,
    /// A session's whole byte budget: everything the server holds for one
    /// subscriber counts against it: queued messages, QoS 1/2 messages in
    /// flight (until acknowledged), QoS 0 messages handed to the connection
    /// but not yet written to its socket, and 64 bytes per retained message
    /// a SUBSCRIBE still has to send. A message weighs its payload, topic and
    /// properties. A message that does not fit is dropped per the queue
    /// policy (oldest QoS 0 first, then the oldest queued).
    pub max_queued_bytes: usize,
    /// `max_queued_messages` for the platform's own clients (client ids
    /// `$myriad/...`: a pipeline's source, the OTA, command and shadow
    /// services). A pipeline whose sink is down buffers up to this in its
    /// source session, so it is sized for the longest outage to ride out.
    pub internal_max_queued_messages: usize,
    /// `max_queued_bytes` for the platform's own clients (see
    /// `internal_max_queued_messages`): each internal session may hold this much.
    pub internal_max_queued_bytes: usize,
    /// QoS 0 messages handed to one connection and not yet written to its
    /// socket; beyond it they wait in the session's queue (and count against
    /// `max_queued_bytes` there), so a client that reads slowly is paced.
    pub max_outbound_qos0: usize,
    /// Most QoS 1/2 messages in flight (sent, not yet acknowledged) towards
    /// one client: the outbound window is the smaller of this and the
    /// client's Receive Maximum. The default, 65,535, lets the client's
    /// Receive Maximum decide (EMQX caps at 32, Mosquitto at 20); in-flight
    /// messages count against `max_queued_bytes` whatever the window.
    pub max_inflight: u16,
    /// How long a QoS 1 PUBLISH may be held unacknowledged while a connected
    /// subscriber's queue is full, in milliseconds (publisher flow control).
    /// 0 (the default) turns holding off: a full queue drops per its policy
    /// at once. Holding lets any subscriber that stops reading slow every
    /// publisher of the topics it subscribes to (`#`: all of them), so turn it
    /// on only where every subscriber is trusted.
    pub publisher_hold_ms: u32,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u16,
    /// Network connections open at once, counting those still in their
    /// handshake (and closing ones); a socket beyond it is closed as soon as
    /// it is accepted. At start-up it is lowered to what the process's
    /// open-file limit leaves room for (see `shell::connection_cap`).
    pub max_connections: usize,
    /// Length of the listen socket's queue of connections the kernel has
    /// completed but the broker has not yet accepted (Linux caps it at
    /// `net.core.somaxconn`). A burst of connects beyond it has its SYNs
    /// dropped and retried a second later.
    pub listen_backlog: u32,
    /// Topics no client may read: a SUBSCRIBE whose filter lies inside one of
    /// these is refused (0x80), and messages on them reach no subscriber.
    pub deny_subscribe: Vec<String>,
    /// Most levels a topic name or filter may have (a `$share/{group}/`
    /// prefix not counted). A PUBLISH with a deeper topic gets DISCONNECT
    /// 0x90 (5.0) or is closed (3.1.1); a deeper filter gets SUBACK 0x8F
    /// (5.0) / 0x80 (3.1.1); a CONNECT whose will topic is deeper gets
    /// CONNACK 0x90 (5.0) or is closed (3.1.1).
    pub max_topic_levels: usize,
    /// Most bytes a topic name or filter may have (UTF-8, a `$share/{group}/`
    /// prefix included), at most 65,535 (the protocol's limit). Refused as
    /// for `max_topic_levels`.
    pub max_topic_length: usize,
    /// Most subscriptions one session may hold; SUBSCRIBE for a new filter
    /// beyond it gets 0x97 Quota Exceeded (5.0) / 0x80 (3.1.1).
    pub max_subscriptions_per_client: usize,
    /// Most topic aliases the server assigns towards one client (5.0): the
    /// smaller of this and the client's Topic Alias Maximum; 0 assigns none.
    pub max_outbound_aliases: u16,
    /// Most bytes of a WebSocket upgrade request (request line and headers)
    /// on `ws`/`wss` listeners; a longer one is answered 431 and closed. The
    /// whole upgrade counts against `connect_timeout_secs` (with the TLS
    /// handshake and the CONNECT).
    pub ws_max_handshake_bytes: usize,
    /// Largest payload of one WebSocket frame a client may send, in bytes; a
    /// bigger frame is answered with close 1009 and the connection closed.
    /// A packet may span frames, but clients (MQTT.js, paho) send one frame
    /// per packet: keep it at least `max_packet_size`.
    pub ws_max_frame_size: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "0.0.0.0:1883".to_owned(),
            listeners: Vec::new(),
            max_keep_alive_secs: u16::MAX,
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_session_expiry_secs: u32::MAX,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            internal_max_queued_messages: 1_000_000,
            internal_max_queued_bytes: 256 * 1024 * 1024,
            max_outbound_qos0: 1000,
            max_inflight: u16::MAX,
            publisher_hold_ms: 0,
            connect_timeout_secs: 10,
            max_connections: 100_000,
            listen_backlog: 1024,
            deny_subscribe: Vec::new(),
            max_topic_levels: 128,
            max_topic_length: 4096,
            max_subscriptions_per_client: 1000,
            max_outbound_aliases: 64,
            ws_max_handshake_bytes: 8 * 1024,
            ws_max_frame_size: 1024 * 1024,
        }
    }
}

/// A setting that is out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for mqtt.{key}: {reason}")]
pub struct ConfigError {
    /// The offending key, without the `mqtt.` prefix.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl BrokerConfig {
    /// Checks ranges serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.max_packet_size < 64 {
            return fail("max_packet_size", "must be at least 64 bytes");
        }
        if self.receive_maximum == 0 {
            return fail("receive_maximum", "must be at least 1");
        }
        if self.max_inflight == 0 {
            return fail("max_inflight", "must be at least 1");
        }
        if self.max_outbound_qos0 == 0 {
            return fail("max_outbound_qos0", "must be at least 1");
        }
        if self.max_queued_bytes == 0 {
            return fail("max_queued_bytes", "must be at least 1");
        }
        if self.internal_max_queued_bytes == 0 {
            return fail("internal_max_queued_bytes", "must be at least 1");
        }
        if self.max_keep_alive_secs == 0 {
            return fail("max_keep_alive_secs", "must be at least 1");
        }
        if self.connect_timeout_secs == 0 {
            return fail("connect_timeout_secs", "must be at least 1");
        }
        if self.max_topic_levels == 0 {
            return fail("max_topic_levels", "must be at least 1");
        }
        if self.max_topic_length == 0 || self.max_topic_length > usize::from(u16::MAX) {
            return fail("max_topic_length", "must be between 1 and 65535");
        }
        if self.max_subscriptions_per_client == 0 {
            return fail("max_subscriptions_per_client", "must be at least 1");
        }
        if self.max_connections == 0 {
            return fail("max_connections", "must be at least 1");
        }
        if self.listen_backlog == 0 || self.listen_backlog > 65_535 {
            return fail("listen_backlog", "must be between 1 and 65535");
        }
        if !(256..=1024 * 1024).contains(&self.ws_max_handshake_bytes) {
            return fail(
                "ws_max_handshake_bytes",
                "must be between 256 and 1048576 bytes",
            );
        }
        if self.ws_max_frame_size < 64 {
            return fail("ws_max_frame_size", "must be at least 64 bytes");
        }
        if self.listen.is_empty() && self.listeners.is_empty() {
            return fail("listen", "is empty and no mqtt.listeners are configured");
        }
        for listener in &self.listeners {
            listener.validate()?;
        }
        for filter in &self.deny_subscribe {
            if !myriad_mqtt::topic::valid_topic_filter(filter) {
                return fail(
                    "deny_subscribe",
                    &format!("{filter:?} is not a topic filter"),
                );
            }
        }
        Ok(())
    }
}

/// One `[[mqtt.listeners]]` entry: where to listen and how connections are
/// carried.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// What the connections speak: plain MQTT over TCP, MQTT over TLS, or
    /// MQTT over WebSocket without (`ws`) or with TLS (`wss`).
    pub kind: ListenerKind,
    /// Address to bind, such as `0.0.0.0:8883`.
    pub listen: String,
    /// The HTTP path WebSocket clients upgrade on (`ws` and `wss` only;
    /// default `/mqtt`). A request for another path gets 404.
    #[serde(default)]
    pub path: Option<String>,
    /// PEM file with the server's certificate chain, leaf first (`tls` and `wss`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM file with the server's private key: PKCS#8, PKCS#1 or SEC1 (TLS only).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM bundle of the CAs whose client certificates are accepted (TLS
    /// only). Optional: with `client_certs = "optional"` or `"require"` and
    /// no `client_ca`, only the CAs and pinned certificates registered with
    /// the device registry are trusted.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// PEM file of certificate revocation lists from the client CAs: a client
    /// certificate they revoke is refused (TLS only, with `client_ca`).
    #[serde(default)]
    pub client_crl: Option<PathBuf>,
    /// Whether clients present certificates: `none` (the default), `optional`
    /// (verified when presented) or `require`.
    #[serde(default)]
    pub client_certs: ClientCertPolicy,
}

/// How a listener's connections are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over plain TCP (conventionally port 1883).
    Tcp,
    /// MQTT over TLS 1.2 or 1.3 (conventionally port 8883), ALPN `mqtt` accepted.
    Tls,
    /// MQTT over WebSocket (conventionally port 8083), path `path`.
    Ws,
    /// MQTT over WebSocket over TLS (conventionally port 8084): the TLS
    /// settings of `tls`, then the WebSocket upgrade of `ws`.
    Wss,
}

impl ListenerKind {
    /// Whether connections start with TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether connections carry MQTT in WebSocket frames.
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }

    /// The name the config spells it with.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
}

/// The WebSocket path of a listener without `path`.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// Whether a TLS listener asks clients for certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertPolicy {
    /// No client certificates are asked for.
    #[default]
    None,
    /// A client may present a certificate; one that verifies neither against
    /// `client_ca` nor against the registry's CAs and pins is refused, a
    /// client without one is let in.
    Optional,
    /// Every client must present a certificate that verifies (as for `optional`).
    Require,
}

impl ListenerConfig {
    /// The WebSocket path (`path`, or [`DEFAULT_WS_PATH`]).
    pub fn ws_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_WS_PATH)
    }

    /// Checks that the fields present fit the kind.
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.listen.is_empty() {
            return fail("listeners.listen", "must not be empty");
        }
        if self.kind.is_websocket() {
            if let Some(path) = &self.path
                && (!path.starts_with('/')
                    || path.contains(|c: char| c.is_whitespace() || c == '?'))
            {
                return fail(
                    "listeners.path",
                    "must start with / and have no spaces or query",
                );
            }
        } else if self.path.is_some() {
            return fail("listeners.path", "needs kind = \"ws\" or \"wss\"");
        }
        match self.kind {
            ListenerKind::Tcp | ListenerKind::Ws => {
                if self.cert.is_some()
                    || self.key.is_some()
                    || self.client_ca.is_some()
                    || self.client_crl.is_some()
                {
                    return fail(
                        "listeners.kind",
                        "a tcp or ws listener takes no cert, key, client_ca or client_crl (use kind = \"tls\" or \"wss\")",
                    );
                }
                if self.client_certs != ClientCertPolicy::None {
                    return fail("listeners.client_certs", "needs kind = \"tls\" or \"wss\"");
                }
            }
            ListenerKind::Tls | ListenerKind::Wss => {
                if self.cert.is_none() {
                    return fail(
                        "listeners.cert",
                        "a tls or wss listener needs a certificate chain",
                    );
                }
                if self.key.is_none() {
                    return fail("listeners.key", "a tls or wss listener needs a private key");
                }
                if self.client_crl.is_some() && self.client_ca.is_none() {
                    return fail("listeners.client_crl", "needs client_ca");
                }
            }
        }
        Ok(())
    }
}
