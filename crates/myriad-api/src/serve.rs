//! Serving the API on a listener until told to stop, with the limits an
//! HTTP server facing the network needs ([`HttpLimits`]): a connection
//! cap, and header, idle and body timeouts.
//!
//! - **Connection cap**: at most `max_connections` sockets are kept. A
//!   connection accepted at the cap evicts the connection that has no
//!   request in flight and has been quiet the longest (an idle keep-alive
//!   socket or one still sending its head); if every connection has a
//!   request in flight, the new one is closed at once. So idle sockets can
//!   neither exhaust file descriptors nor keep an operator out.
//! - **Header timeout**: a request head must be complete within
//!   `header_timeout` of its first byte (slowloris), else the connection
//!   is closed.
//! - **Idle timeout**: a connection without a request in flight and
//!   without any byte read or written for `idle_timeout` is closed.
//! - **Body timeout**: a request body that stalls (no data) for
//!   `body_timeout` fails the request (the handler sees a body error) and
//!   the connection is closed.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::body::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::{debug, warn};

use crate::routes::router;
use crate::state::ApiState;

/// Limits of the HTTP server (config `[api]`; see docs/limits.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections kept at once (default 1,024).
    pub max_connections: usize,
    /// Longest time from a request's first byte to the end of its head
    /// (default 10 s).
    pub header_timeout: Duration,
    /// Longest quiet time of a connection without a request in flight
    /// (default 60 s).
    pub idle_timeout: Duration,
    /// Longest stall of a request body (default 30 s).
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled, then
/// stops accepting connections and returns once the requests in flight
/// have been answered (graceful shutdown; a long import delays it, so the
/// caller may bound the wait with a timeout).
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_router(listener, router(state), shutdown).await
}

/// Like [`serve`], for a router built beforehand (e.g. by
/// [`crate::observed_router`], which adds `/metrics` and `/readyz`), with
/// the default [`HttpLimits`].
pub async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_router_with(listener, router, shutdown, HttpLimits::default()).await
}

/// One connection's activity, shared by its socket, its service and the
/// accept loop.
struct Conn {
    epoch: Instant,
    /// Requests being served.
    in_flight: AtomicUsize,
    /// Last byte read or written, ms since `epoch` (+1).
    last_active: AtomicU64,
    /// First byte of the request head being read, ms since `epoch` (+1);
    /// 0 when none is being read.
    head_started: AtomicU64,
    /// Cancelled to evict the connection.
    evict: CancellationToken,
}

impl Conn {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn touch(&self) {
        self.last_active.store(self.now(), Ordering::Relaxed);
    }
}

/// The open connections (for the cap and eviction).
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, evicting the quietest one without a
    /// request in flight at the cap; `None` if none can be evicted.
    fn admit(&self, epoch: Instant, max: usize) -> Option<(u64, Arc<Conn>)> {
        let mut conns = self.lock();
        if conns.len() >= max {
            let victim = conns
                .iter()
                .filter(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            let victim = victim.and_then(|id| conns.remove(&id))?;
            victim.evict.cancel();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            epoch,
            in_flight: AtomicUsize::new(0),
            last_active: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            evict: CancellationToken::new(),
        });
        conn.touch();
        conns.insert(id, conn.clone());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// [`serve_router`] with explicit [`HttpLimits`].
pub async fn serve_router_with(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
) -> std::io::Result<()> {
    serve_listener(listener, router, shutdown, limits, None).await
}

/// Gives the rustls settings for the next TLS connection.
pub type TlsConfigSource = Arc<dyn Fn() -> Arc<tokio_rustls::rustls::ServerConfig> + Send + Sync>;

/// Told how each TLS handshake ended.
pub type HandshakeObserver = Arc<dyn Fn(Result<(), &io::Error>) + Send + Sync>;

/// Where a TLS API listener gets its settings and reports its handshakes.
#[derive(Clone)]
pub struct ApiTls {
    /// The rustls settings for the next connection (called once per
    /// connection, so a reload takes effect for new connections only).
    pub config: TlsConfigSource,
    /// Told how each handshake ended (for metrics); a handshake that did
    /// not finish in time ends with [`io::ErrorKind::TimedOut`].
    pub on_handshake: HandshakeObserver,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls").finish_non_exhaustive()
    }
}

/// [`serve_router_with`] over TLS: each accepted connection first
/// completes a TLS handshake with `tls`'s current settings, within
/// [`HttpLimits::header_timeout`] (else it is closed). Handshaking
/// connections count against [`HttpLimits::max_connections`] like idle
/// ones (and are evicted first when they have been quiet longest).
pub async fn serve_router_tls(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
    tls: ApiTls,
) -> std::io::Result<()> {
    serve_listener(listener, router, shutdown, limits, Some(tls)).await
}

async fn serve_listener(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
    tls: Option<ApiTls>,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry::default());
    let epoch = Instant::now();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or a connection reset before
                // accept: wait a little rather than spin.
                debug!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some((id, conn)) = registry.admit(epoch, limits.max_connections.max(1)) else {
            debug!("HTTP connection refused: every connection has a request in flight");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            match tls {
                None => serve_connection(stream, peer, conn, router, shutdown, limits).await,
                Some(tls) => {
                    let handshake = handshake(stream, &tls, limits.header_timeout);
                    let stream = tokio::select! {
                        stream = handshake => stream,
                        _ = conn.evict.cancelled() => None,
                        _ = shutdown.cancelled() => None,
                    };
                    if let Some(stream) = stream {
                        conn.touch();
                        serve_connection(stream, peer, conn, router, shutdown, limits).await;
                    }
                }
            }
            registry.remove(id);
        });
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Completes the TLS handshake on `stream` within `timeout`, reporting
/// how it ended; `None` if it failed.
async fn handshake(
    stream: tokio::net::TcpStream,
    tls: &ApiTls,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from((tls.config)());
    let outcome = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake not finished in time",
        )),
    };
    (tls.on_handshake)(outcome.as_ref().map(|_| ()));
    match outcome {
        Ok(stream) => Some(stream),
        Err(error) => {
            debug!(%error, "HTTP API TLS handshake failed");
            None
        }
    }
}

/// Serves one connection until it ends, times out or is evicted.
async fn serve_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    conn: Arc<Conn>,
    router: axum::Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(TimedIo {
        inner: stream,
        conn: conn.clone(),
    });
    let service_conn = conn.clone();
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let guard = InFlight::new(service_conn.clone());
        let mut request = request.map(|body| Body::new(TimedBody::new(body, body_timeout)));
        // The client's address, for the audit log and login throttling.
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let mut router = router.clone();
        // axum's Router is always ready.
        let response = router.call(request);
        async move {
            let response = response.await;
            drop(guard);
            response
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let shortest = limits
        .header_timeout
        .min(limits.idle_timeout)
        .min(limits.body_timeout);
    let period = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        tokio::select! {
            outcome = connection.as_mut() => {
                if let Err(error) = outcome {
                    debug!(%error, "HTTP connection ended with an error");
                }
                return;
            }
            _ = conn.evict.cancelled() => {
                debug!("HTTP connection evicted at the connection cap");
                return;
            }
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                if conn.in_flight.load(Ordering::Relaxed) > 0 {
                    continue;
                }
                let now = conn.now();
                let head = conn.head_started.load(Ordering::Relaxed);
                if head != 0 {
                    if now.saturating_sub(head) > limits.header_timeout.as_millis() as u64 {
                        debug!("HTTP request head not complete in time; closing");
                        return;
                    }
                } else {
                    let quiet = now.saturating_sub(conn.last_active.load(Ordering::Relaxed));
                    if quiet > limits.idle_timeout.as_millis() as u64 {
                        debug!("idle HTTP connection closed");
                        return;
                    }
                }
            }
        }
    }
}

/// Counts a request in flight while alive.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(conn: Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.head_started.store(0, Ordering::Relaxed);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that records its activity in its [`Conn`].
struct TimedIo<T> {
    inner: T,
    conn: Arc<Conn>,
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            let now = self.conn.now();
            self.conn.last_active.store(now, Ordering::Relaxed);
            if self.conn.in_flight.load(Ordering::Relaxed) == 0 {
                let _ = self.conn.head_started.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.conn.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.conn.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body stalled for longer than the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body timed out: no data for {0:?}")]
pub struct BodyTimeout(Duration);

/// A request body failing with [`BodyTimeout`] when it stalls.
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> TimedBody {
        TimedBody {
            inner,
            timeout,
            sleep: None,
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Box::new(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    warn!(?timeout, "HTTP request body stalled; failing the request");
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
