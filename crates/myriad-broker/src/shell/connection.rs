//! One task per connection: read and decode, hand packets to the core, write
//! what the core queued. Keep alive is enforced by the core.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use myriad_mqtt::{
    ConnAck, Connect, DecodeError, Disconnect, Packet, PacketProperties, ProtocolVersion,
    ReasonCode,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::census::{RegisteredTask, TaskGuard};
use super::ingest::{Ingest, IngestRoute};
use super::link::{Batch, Link};
use super::transport::Transport;
use super::{Event, Shared};
use crate::core::connect::detached;
use crate::hooks::{Acl, AuthDecision, ConnectInfo};
use crate::{ConnId, ConnectionLoss};

/// Runs one connection until it closes. The handshake runs in its own
/// allocation, freed once done; only the connected loop's state stays in the
/// task, so an idle connection's task is as small as that loop. `task`
/// counts it in the [`super::census::Census`] until it ends.
pub(super) fn run(
    task: TaskGuard,
    stream: Transport,
    peer: SocketAddr,
    conn: ConnId,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Phased<impl Future<Output = Option<Connected>>, impl Future<Output = ()>> {
    Phased::new(
        Box::pin(start(task, stream, peer, conn, shared, shutdown)),
        connected,
    )
}

/// What a connection that passed its handshake carries into the main loop.
/// Every idle connection holds this: what does not change (the connection's
/// id, protocol, peer) lives in the link, settings in `shared`.
pub(super) struct Connected {
    stream: Transport,
    link: Arc<Link>,
    buf: BytesMut,
    shared: Arc<Shared>,
    /// Counts this task, registered with its session, in the census.
    task: RegisteredTask,
}

/// Reads and checks the CONNECT, then hands it to the core. `None` when the
/// connection ended before that (refusals are answered here).
async fn start(
    task: TaskGuard,
    mut stream: Transport,
    peer: SocketAddr,
    conn: ConnId,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Option<Connected> {
    let mut buf = BytesMut::new();
    let connect = handshake(&mut stream, peer, &mut buf, &shared, &shutdown).await?;
    let Some(acl) = admit(&mut stream, peer, &connect, &shared).await else {
        linger(stream).await;
        return None;
    };
    let protocol = connect.protocol;
    let ingest = shared
        .ingest
        .as_ref()
        .and_then(|sink| sink.topic_for(&connect.client_id, acl.as_deref()))
        .map(IngestRoute::new);
    // Copies, so the link does not keep the CONNECT packet alive.
    let link = Arc::new(
        Link::network(conn, peer, protocol, detached(&connect.client_id)).with_ingest(ingest),
    );
    // Reserve before building the event so it is never held across an await.
    let permit = shared.events.reserve().await.ok()?;
    permit.send(Event::Connect {
        conn,
        connect,
        link: link.clone(),
        acl,
    });
    debug!(%peer, client_id = %link.client_id, "connected");
    if buf.is_empty() {
        // The emptied buffer still holds the allocation the CONNECT was read
        // into; an idle connection keeps none.
        buf = BytesMut::new();
    }
    Some(Connected {
        stream,
        link,
        buf,
        shared,
        task: task.register(),
    })
}

/// Serves a connected client until the connection ends, then tells the core.
/// Not an `async fn`: that would keep a second copy of its argument in the
/// future.
#[allow(clippy::manual_async_fn)]
fn connected(mut c: Connected) -> impl Future<Output = ()> {
    async move {
        let loss = serve(&mut c).await;
        Box::pin(finish(c, loss)).await;
    }
}

/// Reports how the connection ended and lingers where the server ended it.
async fn finish(c: Connected, loss: Option<ConnectionLoss>) {
    // Network connections always have a peer; logged as an address, like
    // every other connection-level line.
    let peer = c.link.peer().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let client_id = &c.link.client_id;
    if let Some(loss) = loss {
        debug!(%peer, %client_id, ?loss, "connection lost");
        if let Ok(permit) = c.shared.events.reserve().await {
            permit.send(Event::Lost {
                conn: c.link.conn,
                loss,
            });
        }
    } else {
        debug!(%peer, %client_id, "connection closed by the server");
    }
    #[cfg(feature = "leak-test")]
    c.task.hold_if_leaking().await;
    // The session is done with this task: lingering is not a leak.
    let _task = c.task.unregister();
    if loss != Some(ConnectionLoss::Network) {
        linger(c.stream).await;
    }
}

pin_project_lite::pin_project! {
    /// A task in two phases: a boxed first future whose output starts the
    /// second, which lives inline. Only the larger of a pointer and the
    /// second future counts toward the task's size.
    #[project = PhasedProjection]
    pub(super) enum Phased<A, B> {
        /// Waiting for the first phase.
        First { first: Pin<Box<A>>, then: fn(Connected) -> B },
        /// Running the second phase.
        Second { #[pin] second: B },
        /// Finished.
        Done,
    }
}

impl<A, B> Phased<A, B> {
    fn new(first: Pin<Box<A>>, then: fn(Connected) -> B) -> Self {
        Phased::First { first, then }
    }
}

impl<A, B> Future for Phased<A, B>
where
    A: Future<Output = Option<Connected>>,
    B: Future<Output = ()>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                PhasedProjection::First { first, then } => {
                    let then = *then;
                    let next = match first.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(connected)) => Phased::Second {
                            second: then(connected),
                        },
                        Poll::Ready(None) => Phased::Done,
                    };
                    self.set(next);
                }
                PhasedProjection::Second { second } => {
                    if second.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.set(Phased::Done);
                }
                PhasedProjection::Done => return Poll::Ready(()),
            }
        }
    }
}

/// How long a connection the server ended may keep draining the client's bytes.
const LINGER: Duration = Duration::from_secs(1);
/// How many of the client's bytes are drained at most.
const LINGER_BYTES: usize = 64 * 1024;

/// After the server ended a connection: close our direction, then read and
/// discard until the client closes too (bounded by [`LINGER`] and
/// [`LINGER_BYTES`]). A client still writing (PUBRELs after a DISCONNECT
/// 0x93, say) then reads the DISCONNECT instead of running into a reset.
async fn linger(mut stream: Transport) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let stream = stream.into_tcp();
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        tokio::select! {
            ready = stream.readable() => {
                if ready.is_err() {
                    return;
                }
            }
            _ = sleep_until(deadline) => return,
        }
        let mut chunk = [0u8; 4096];
        match stream.try_read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Reads the CONNECT (within the configured time), answering a bad one.
async fn handshake(
    stream: &mut Transport,
    peer: SocketAddr,
    buf: &mut BytesMut,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<Box<Connect>> {
    let max_size = shared.config.max_packet_size as usize;
    let connect_timeout = Duration::from_secs(u64::from(shared.config.connect_timeout_secs));
    // The TLS handshake, if any, counts against the same timeout.
    let first = tokio::select! {
        first = read_connect(stream, buf, max_size) => first,
        _ = tokio::time::sleep(connect_timeout) => {
            if stream.is_handshaking() {
                stream.count_handshake_timeout();
                debug!(%peer, "TLS handshake not finished in time");
            } else if stream.is_upgrading() {
                super::ws::count_refused(super::ws::TIMEOUT_REASON);
                debug!(%peer, "WebSocket upgrade not finished in time");
            } else {
                debug!(%peer, "no CONNECT in time");
            }
            return None;
        }
        _ = shutdown.cancelled() => return None,
    };
    match first {
        Ok(Packet::Connect(connect)) => Some(connect),
        Ok(_) => {
            debug!(%peer, "first packet was not CONNECT");
            None
        }
        Err(FirstPacketError::Io(e)) => {
            debug!(%peer, error = %e, "connection failed before CONNECT");
            None
        }
        Err(FirstPacketError::Decode { error, level }) => {
            debug!(%peer, %error, "bad CONNECT");
            let _ = refuse_connect(stream, &error, level).await;
            None
        }
    }
}

/// Client identifiers with this prefix belong to in-process clients of the
/// platform; a network client claiming one is refused (0x85 / return code 2).
pub use crate::core::session::RESERVED_CLIENT_ID_PREFIX;

/// Asks the authenticator about `connect`. Returns the connection's ACL, or
/// `None` after answering a refusal.
async fn admit(
    stream: &mut Transport,
    peer: SocketAddr,
    connect: &Connect,
    shared: &Shared,
) -> Option<Option<Arc<dyn Acl>>> {
    let protocol = connect.protocol;
    if connect.client_id.starts_with(RESERVED_CLIENT_ID_PREFIX) {
        debug!(%peer, client_id = %connect.client_id, "reserved client id refused");
        let refusal = connack_refusal(protocol, ReasonCode::ClientIdentifierNotValid);
        let _ = stream.write_all(&refusal).await;
        return None;
    }
    let Some(authenticator) = &shared.authenticator else {
        return Some(None);
    };
    let info = ConnectInfo {
        client_id: &connect.client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        peer,
        protocol,
        certificates: stream.peer_certificates(),
    };
    let refusal = match authenticator.authenticate(info).await {
        AuthDecision::Allow(acl) => {
            // As Mosquitto does: a will the client could not publish itself is refused up front.
            let will_allowed = match (&acl, &connect.will) {
                (Some(acl), Some(will)) => acl.may_publish(&will.topic),
                _ => true,
            };
            if will_allowed {
                return Some(acl);
            }
            ReasonCode::NotAuthorized
        }
        AuthDecision::Deny(reason) => reason,
    };
    debug!(%peer, client_id = %connect.client_id, ?refusal, "connection refused");
    let _ = stream.write_all(&connack_refusal(protocol, refusal)).await;
    None
}

/// A CONNACK refusing the connection with `reason` (mapped to a return code for 3.1.1).
fn connack_refusal(protocol: ProtocolVersion, reason: ReasonCode) -> BytesMut {
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: reason,
        properties: PacketProperties::new(),
    });
    encode_one(connack, protocol)
}

/// The main loop after CONNECT. Returns how the connection was lost, or
/// `None` when the core closed it. The core ends it at shutdown through the
/// link ([`Link::shut_down`]).
async fn serve(c: &mut Connected) -> Option<ConnectionLoss> {
    // Packets that arrived together with CONNECT are in `buf` already: the
    // socket will not signal them again.
    if !c.buf.is_empty()
        && let Err(loss) = Box::pin(c.drain()).await
    {
        return Some(loss);
    }
    loop {
        // One poll over the mailbox and the socket: waiting keeps no future
        // state (no waiter nodes) in the task, which is most of an idle
        // connection's memory.
        match std::future::poll_fn(|cx| poll_idle(c, cx)).await {
            Wake::Mail => {
                if c.link.is_shutting_down() {
                    let goodbye = say_goodbye(
                        &mut c.stream,
                        c.link.protocol,
                        ReasonCode::ServerShuttingDown,
                    );
                    Box::pin(goodbye).await;
                    return Some(ConnectionLoss::ServerShutdown);
                }
                let batch = c.link.take_batch();
                let closing = batch.closing;
                // Boxed: the write's state exists only while writing.
                let written = write_batch(&mut c.stream, batch, c.link.conn, &c.shared.events);
                if Box::pin(written).await.is_err() {
                    return Some(ConnectionLoss::Network);
                }
                if closing {
                    return None;
                }
            }
            Wake::Readable => {
                if let Err(loss) = Box::pin(c.read_and_drain()).await {
                    return Some(loss);
                }
            }
            Wake::ReadFailed => return Some(ConnectionLoss::Network),
        }
    }
}

impl Connected {
    /// Reads what the socket has, sends what TLS has to say back (key
    /// updates, alerts), and forwards the whole packets read to the core.
    async fn read_and_drain(&mut self) -> Result<(), ConnectionLoss> {
        let read = self.stream.read_available(&mut self.buf);
        if self.stream.wants_write() && self.stream.flush().await.is_err() {
            return Err(ConnectionLoss::Network);
        }
        match read {
            Ok(0) => return Err(ConnectionLoss::Network),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // A refused WebSocket frame, answered with a close frame: the
            // connection lingers so that the client reads it.
            Err(e) if super::ws::is_frame_error(&e) => {
                return Err(ConnectionLoss::ProtocolViolation(ReasonCode::ProtocolError));
            }
            Err(_) => return Err(ConnectionLoss::Network),
        }
        self.drain().await
    }

    /// Forwards the whole packets in the read buffer to the core.
    async fn drain(&mut self) -> Result<(), ConnectionLoss> {
        let ingest = self
            .shared
            .ingest
            .as_deref()
            .zip(self.link.ingest.as_deref());
        let reader = Reader {
            conn: self.link.conn,
            protocol: self.link.protocol,
            max_size: self.shared.config.max_packet_size as usize,
            alias_maximum: self.shared.config.topic_alias_maximum,
            events: &self.shared.events,
            ingest,
        };
        drain(&mut self.stream, &mut self.buf, &reader).await
    }
}

/// What ended an idle connection's wait.
enum Wake {
    /// The core queued packets, closed the connection or is shutting down.
    Mail,
    /// The socket has bytes (or end of file) to read.
    Readable,
    /// The socket reported an error.
    ReadFailed,
}

/// Polls the mailbox first (so the core's packets and closes are never
/// starved by a chatty client), then the socket's read readiness. Both keep
/// only the task's waker, outside the task's state.
fn poll_idle(c: &Connected, cx: &mut Context<'_>) -> Poll<Wake> {
    if c.link.poll_woken(cx).is_ready() {
        return Poll::Ready(Wake::Mail);
    }
    match c.stream.poll_read_ready(cx) {
        Poll::Ready(Ok(())) => Poll::Ready(Wake::Readable),
        Poll::Ready(Err(_)) => Poll::Ready(Wake::ReadFailed),
        Poll::Pending => Poll::Pending,
    }
}

/// Sends a 5.0 client DISCONNECT with `reason` before the server closes (3.1.1 has no such packet).
async fn say_goodbye(stream: &mut Transport, protocol: ProtocolVersion, reason: ReasonCode) {
    if protocol.is_v5() {
        let disconnect = Packet::Disconnect(Disconnect::new(reason));
        let _ = stream.write_all(&encode_one(disconnect, protocol)).await;
    }
}

/// How one connection's packets are decoded and where they go.
struct Reader<'a> {
    conn: ConnId,
    protocol: ProtocolVersion,
    max_size: usize,
    alias_maximum: u16,
    events: &'a mpsc::Sender<Event>,
    ingest: Ingest<'a>,
}

/// Forwards every whole packet in `buf` to the core; on undecodable bytes
/// says goodbye (5.0) and reports the violation. An emptied buffer is freed.
async fn drain(
    stream: &mut Transport,
    buf: &mut BytesMut,
    reader: &Reader<'_>,
) -> Result<(), ConnectionLoss> {
    if let Err(error) = forward_packets(buf, reader).await {
        let reason = error.reason_code();
        say_goodbye(stream, reader.protocol, reason).await;
        return Err(ConnectionLoss::ProtocolViolation(reason));
    }
    if buf.is_empty() {
        // Idle connections keep no read buffer.
        *buf = BytesMut::new();
    }
    Ok(())
}

/// Why the first packet could not be had.
enum FirstPacketError {
    Io(io::Error),
    Decode {
        error: DecodeError,
        /// The protocol level byte, if the CONNECT got that far.
        level: Option<u8>,
    },
}

async fn read_connect(
    stream: &mut Transport,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Packet, FirstPacketError> {
    stream.establish(buf).await.map_err(FirstPacketError::Io)?;
    loop {
        // CONNECT carries its own version; the one given here is not used for it.
        match myriad_mqtt::decode(buf, ProtocolVersion::V5, max_size) {
            Ok(Some(packet)) => return Ok(packet),
            Ok(None) => {}
            Err(error) => {
                let level = connect_level(buf);
                return Err(FirstPacketError::Decode { error, level });
            }
        }
        stream.readable().await.map_err(FirstPacketError::Io)?;
        let read = stream.read_available(buf);
        // WebSocket pongs or a close frame owed to the client.
        if stream.wants_write() {
            stream.flush().await.map_err(FirstPacketError::Io)?;
        }
        match read {
            Ok(0) => {
                return Err(FirstPacketError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(FirstPacketError::Io(e)),
        }
    }
}

/// Reads the protocol level of a CONNECT at the front of `buf`, if present.
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    // Skip the fixed header's remaining length.
    let mut index = 1;
    while buf.get(index)? & 0x80 != 0 {
        index += 1;
        if index > 4 {
            return None;
        }
    }
    index += 1;
    let name_len = usize::from(u16::from_be_bytes([*buf.get(index)?, *buf.get(index + 1)?]));
    buf.get(index + 2 + name_len).copied()
}

/// Answers a CONNECT that did not decode: a CONNACK with the reason where the
/// client's version is known (or the 3.1.1 "unacceptable protocol version").
async fn refuse_connect(
    stream: &mut Transport,
    error: &DecodeError,
    level: Option<u8>,
) -> io::Result<()> {
    let unsupported = matches!(error, DecodeError::UnsupportedProtocolVersion(_));
    let (protocol, reason) = match level {
        Some(5) => (ProtocolVersion::V5, error.reason_code()),
        _ if unsupported => (
            ProtocolVersion::V311,
            ReasonCode::UnsupportedProtocolVersion,
        ),
        // MQTT-3.1.4-1 (3.1.1): close without CONNACK on a malformed CONNECT.
        _ => return Ok(()),
    };
    stream.write_all(&connack_refusal(protocol, reason)).await
}

/// Decodes every whole packet in `buf` and hands each to the core; a
/// PUBLISH to the connection's ingest topic goes to the sink first (see
/// [`crate::hooks::IngestSink`]).
async fn forward_packets(buf: &mut BytesMut, reader: &Reader<'_>) -> Result<(), DecodeError> {
    let conn = reader.conn;
    while !buf.is_empty() {
        // Reserve first so no decoded packet is held across the await.
        let Ok(permit) = reader.events.reserve().await else {
            return Ok(());
        };
        let Some(packet) = myriad_mqtt::decode(buf, reader.protocol, reader.max_size)? else {
            break;
        };
        let (publish, sink, route) = match (packet, reader.ingest) {
            (Packet::Publish(publish), Some((sink, route)))
                if route.takes(&publish, reader.alias_maximum) =>
            {
                (publish, sink, route)
            }
            (packet, _) => {
                permit.send(Event::Packet { conn, packet });
                continue;
            }
        };
        // The permit is not held while the sink works: others may go on.
        drop(permit);
        let (qos, packet_id) = (publish.qos, publish.packet_id);
        let stored = sink.ingest(route.topic(), publish.payload.clone()).await;
        let Ok(permit) = reader.events.reserve().await else {
            return Ok(());
        };
        match stored {
            Ok(()) => permit.send(Event::Ingested {
                conn,
                publish: Box::new(publish),
            }),
            Err(error) => {
                debug!(conn, topic = route.topic(), %error, "ingest sink refused a message");
                permit.send(Event::IngestRefused {
                    conn,
                    qos,
                    packet_id,
                });
            }
        }
    }
    Ok(())
}

/// Encodes one packet. A plain function, so the packet never sits in a task's state.
fn encode_one(packet: Packet, protocol: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    super::link::encode_into(&packet, protocol, &mut out);
    out
}

/// Writes a batch taken from the mailbox (vectored: headers and shared
/// payloads as they are), then tells the core how many QoS 0 publications
/// left, so that it sends more (see `Broker::handle_written`).
async fn write_batch(
    stream: &mut Transport,
    mut batch: Batch,
    conn: ConnId,
    events: &mpsc::Sender<Event>,
) -> io::Result<()> {
    stream.write_chunks(&mut batch.chunks).await?;
    if batch.qos0 > 0 {
        let _ = events
            .send(Event::Written {
                conn,
                qos0: batch.qos0,
            })
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// An idle connection's whole state is this future (plus its socket
    /// registration and mailbox): keep it small. Tokio adds 112 bytes of
    /// header, stage tag and trailer and rounds the task to 128-byte lines,
    /// and the task tracker adds 8: up to 144 bytes the task fits in 256.
    #[tokio::test]
    async fn idle_connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (events, _rx) = tokio::sync::mpsc::channel(1);
        let shared = std::sync::Arc::new(super::Shared {
            config: Default::default(),
            authenticator: None,
            ingest: None,
            events,
        });
        let census = std::sync::Arc::new(super::super::census::Census::default());
        let guard = census.task();
        let task = super::run(
            guard,
            super::Transport::from(super::super::transport::Stream::Tcp(client)),
            addr,
            1,
            shared,
            Default::default(),
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 144, "connection task state grew to {size} bytes");
    }

    #[test]
    fn connect_level_is_read_from_a_partial_connect() {
        let bytes = [0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02];
        assert_eq!(super::connect_level(&bytes), Some(5));
        assert_eq!(super::connect_level(&bytes[..5]), None);
        assert_eq!(super::connect_level(&[0x30, 0x00]), None);
    }
}
