//! The listeners: binding every configured address, and one accept loop per
//! listener handing its connections (plain, TLS, WebSocket over either) to
//! connection tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::tls::{TlsSettings, TlsSetupError};
use super::transport::{Stream, Transport};
use super::ws::{WsSettings, WsStream};
use super::{BrokerHandle, Shared, connection};
use crate::config::{BrokerConfig, ListenerKind};

/// How long an accept loop pauses after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one log line per this long about refused or failed accepts.
const COMPLAINT_INTERVAL: Duration = Duration::from_secs(10);

/// One bound listener and how its connections are carried.
#[derive(Debug)]
pub struct BoundListener {
    socket: TcpListener,
    kind: ListenerKind,
    /// The TLS settings (`tls` and `wss` listeners only).
    tls: Option<Arc<TlsSettings>>,
    /// The WebSocket settings (`ws` and `wss` listeners only).
    ws: Option<Arc<WsSettings>>,
}

impl BoundListener {
    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// What its connections speak.
    pub fn kind(&self) -> ListenerKind {
        self.kind
    }

    /// Its TLS settings (to reload them), if it is a TLS listener.
    pub fn tls(&self) -> Option<&Arc<TlsSettings>> {
        self.tls.as_ref()
    }
}

/// Every listener of one broker.
#[derive(Debug, Default)]
pub struct Listeners(Vec<BoundListener>);

impl From<TcpListener> for Listeners {
    /// A single plain TCP listener.
    fn from(socket: TcpListener) -> Listeners {
        Listeners(vec![BoundListener {
            socket,
            kind: ListenerKind::Tcp,
            tls: None,
            ws: None,
        }])
    }
}

impl Listeners {
    /// The listeners, in configuration order (`mqtt.listen` first).
    pub fn iter(&self) -> impl Iterator<Item = &BoundListener> {
        self.0.iter()
    }

    /// The TLS settings of every TLS listener, for reloading.
    pub fn tls_settings(&self) -> Vec<Arc<TlsSettings>> {
        self.0.iter().filter_map(|l| l.tls.clone()).collect()
    }

    /// Starts one accept loop per listener; they end when `acceptor`'s
    /// shutdown token is cancelled, closing their listeners.
    pub(super) fn accept_all(self, acceptor: &Acceptor) -> JoinSet<()> {
        let mut loops = JoinSet::new();
        for listener in self.0 {
            loops.spawn(accept_loop(listener, acceptor.clone()));
        }
        loops
    }
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address could not be bound.
    #[error("cannot listen on {address} ({key}): {source}")]
    Bind {
        /// The config key naming it.
        key: String,
        /// The address.
        address: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A TLS listener's certificate, key or CAs could not be loaded.
    #[error("mqtt.listeners[{index}]: {source}")]
    Tls {
        /// Position in `[[mqtt.listeners]]`.
        index: usize,
        /// What is wrong.
        #[source]
        source: TlsSetupError,
    },
}

/// Binds `mqtt.listen` (unless empty) and every `[[mqtt.listeners]]` entry,
/// reading TLS files as it goes: any failure stops start-up naming the key.
pub async fn bind_all(config: &BrokerConfig) -> Result<Listeners, BindError> {
    let mut listeners = Vec::new();
    if !config.listen.is_empty() {
        let socket = bind(&config.listen, config.listen_backlog)
            .await
            .map_err(|source| BindError::Bind {
                key: "mqtt.listen".to_owned(),
                address: config.listen.clone(),
                source,
            })?;
        listeners.push(BoundListener {
            socket,
            kind: ListenerKind::Tcp,
            tls: None,
            ws: None,
        });
    }
    for (index, entry) in config.listeners.iter().enumerate() {
        let tls = if entry.kind.is_tls() {
            Some(Arc::new(
                TlsSettings::load(entry).map_err(|source| BindError::Tls { index, source })?,
            ))
        } else {
            None
        };
        let ws = entry
            .kind
            .is_websocket()
            .then(|| Arc::new(WsSettings::new(entry, config)));
        let socket = bind(&entry.listen, config.listen_backlog)
            .await
            .map_err(|source| BindError::Bind {
                key: format!("mqtt.listeners[{index}].listen"),
                address: entry.listen.clone(),
                source,
            })?;
        listeners.push(BoundListener {
            socket,
            kind: entry.kind,
            tls,
            ws,
        });
    }
    Ok(Listeners(listeners))
}

/// Binds `address` with a listen queue of `backlog` (std and tokio use 128:
/// a burst of connects beyond it has SYNs dropped, retried only a second
/// later).
pub(super) async fn bind(address: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for address in tokio::net::lookup_host(address).await? {
        let socket = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(address).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

/// What every accept loop shares.
#[derive(Clone)]
pub(super) struct Acceptor {
    pub handle: BrokerHandle,
    pub shared: Arc<Shared>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    /// Connections open at once, handshakes included (`max_connections`
    /// after [`super::connection_cap`]).
    pub cap: usize,
}

/// Accepts connections on `listener` until shutdown.
async fn accept_loop(listener: BoundListener, acceptor: Acceptor) {
    let mut complaints = Complaints::default();
    // The `listener` label of its connections' handshake counter.
    let label: Arc<str> = listener.tls.as_ref().map_or_else(
        || Arc::from(""),
        |tls| Arc::from(tls.listener().listen.as_str()),
    );
    loop {
        let accepted = tokio::select! {
            accepted = listener.socket.accept() => accepted,
            _ = acceptor.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of
                // spinning (the pending connection stays queued).
                complaints.accept_failed(&error);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Handshaking and lingering connections hold a socket too: the cap
        // is shared by every listener.
        if acceptor.handle.census.counts().tasks >= acceptor.cap as u64 {
            acceptor.handle.census.refused();
            complaints.refused(acceptor.cap);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let stream = match &listener.tls {
            None => Stream::Tcp(stream),
            Some(tls) => match Stream::tls(stream, tls.current(), label.clone()) {
                Ok(stream) => stream,
                Err(error) => {
                    debug!(%peer, %error, "cannot start TLS");
                    continue;
                }
            },
        };
        let transport = match &listener.ws {
            None => Transport::from(stream),
            Some(ws) => Transport::Ws(Box::new(WsStream::new(stream, ws.clone()))),
        };
        let conn = acceptor.handle.next_conn_id();
        let task = acceptor.handle.census.task();
        acceptor.tracker.spawn(connection::run(
            task,
            transport,
            peer,
            conn,
            acceptor.shared.clone(),
            acceptor.shutdown.clone(),
        ));
    }
}

/// Rate-limited log lines of an accept loop: a flood of refusals must not
/// become a flood of log lines.
#[derive(Default)]
struct Complaints {
    refused: Option<tokio::time::Instant>,
    failed: Option<tokio::time::Instant>,
}

impl Complaints {
    fn due(last: &mut Option<tokio::time::Instant>) -> bool {
        let now = tokio::time::Instant::now();
        if last.is_some_and(|at| now < at + COMPLAINT_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn refused(&mut self, cap: usize) {
        if Complaints::due(&mut self.refused) {
            warn!(
                max_connections = cap,
                "connection limit reached: closing new connections (mqtt.max_connections)"
            );
        }
    }

    fn accept_failed(&mut self, error: &std::io::Error) {
        if Complaints::due(&mut self.failed) {
            warn!(%error, "accept failed; retrying every 50 ms");
        }
    }
}
