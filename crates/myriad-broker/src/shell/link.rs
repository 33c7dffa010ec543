//! The outbound mailbox between the core task and one connection task.
//!
//! A mutex-guarded outbox plus the waiting task's waker: it holds no memory
//! while empty (unlike a channel, which keeps a block of slots per
//! connection), waiting on it needs no future state in the connection task
//! (unlike `Notify`, whose waiter node lives in the waiting future), and the
//! connection task drains everything queued in one go, so many packets
//! become one write.
//!
//! A network connection's outbox holds bytes: the core task encodes each
//! packet as it queues it, so a packet is never moved again and the
//! connection task only writes. A PUBLISH with a large payload is queued as
//! its encoded header plus the message's own payload buffer (shared with
//! every other subscriber, never copied), and the connection task writes
//! the chunks with one vectored write. After each write it reports how many
//! QoS 0 publications left (`Event::Written`), which paces the core's QoS 0
//! sends and frees their share of the session's byte budget. An in-process
//! client's outbox holds packets.

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV6};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use myriad_mqtt::{ByteString, Packet, ProtocolVersion, QoS};

use crate::ConnId;
use tracing::debug;

/// Payloads at least this large are written from the message's own buffer
/// (vectored I/O) rather than copied behind their header.
const SHARE_PAYLOAD_FROM: usize = 1024;

/// What is waiting to go out.
#[derive(Debug)]
enum Outbox {
    /// Encoded packets for a network connection: `chunks` then `tail`.
    /// Small packets are encoded into `tail`; a large payload is not
    /// copied: its header ends a chunk and the payload (shared with every
    /// other subscriber and queue) is the next one.
    Wire {
        /// Boxed and allocated on first use: most connections never get a
        /// large payload, and every idle link pays for what is inline (a
        /// bare `VecDeque` would push the link past its size class).
        #[allow(clippy::box_collection)]
        chunks: Option<Box<VecDeque<Bytes>>>,
        tail: BytesMut,
    },
    /// Packets for an in-process client.
    Packets(VecDeque<Packet>),
}

#[derive(Debug)]
struct Pending {
    outbox: Outbox,
    /// QoS 0 publications in the outbox (dropped ones included: the core
    /// counts them until they are reported written).
    qos0_publishes: u32,
    closing: bool,
    /// The server is shutting down: the connection says goodbye and ends.
    shutting_down: bool,
    /// Woken flag: set by [`Link::push`] and [`Link::wake`], cleared when
    /// the task sees it.
    woken: bool,
    /// The task waiting in [`Link::poll_woken`].
    waker: Option<Waker>,
}

/// One connection's outbound mailbox, and what the connection task and the
/// core task both need to know about it (kept here rather than in the
/// connection task, whose state every idle connection pays for in full).
#[derive(Debug)]
pub struct Link {
    pending: Mutex<Pending>,
    /// Who is on the other end, for lifecycle events and log lines.
    peer: Peer,
    /// The client identifier given at CONNECT (for log lines).
    pub(crate) client_id: ByteString,
    /// The connection's identifier in the core.
    pub(crate) conn: ConnId,
    /// The protocol version the client speaks.
    pub(crate) protocol: ProtocolVersion,
    /// Where the client's own messages for the ingest sink go, if anywhere.
    pub(crate) ingest: Option<Box<super::ingest::IngestRoute>>,
}

/// Appends `packet` encoded for `protocol` to `out`; a packet that cannot be
/// encoded is logged and skipped, leaving `out` as it was.
pub(super) fn encode_into(packet: &Packet, protocol: ProtocolVersion, out: &mut BytesMut) {
    let before = out.len();
    if let Err(error) = myriad_mqtt::encode(packet, protocol, out) {
        out.truncate(before);
        debug!(%error, "dropping a packet that cannot be encoded");
    }
}

/// Appends `packet` to a wire outbox: a PUBLISH with a large payload as its
/// encoded header plus the payload itself (no copy), anything else encoded
/// into `tail`.
#[allow(clippy::box_collection)]
fn encode_wire(
    packet: &Packet,
    protocol: ProtocolVersion,
    chunks: &mut Option<Box<VecDeque<Bytes>>>,
    tail: &mut BytesMut,
) {
    match packet {
        Packet::Publish(publish) if publish.payload.len() >= SHARE_PAYLOAD_FROM => {
            match myriad_mqtt::encode_publish_header(publish, protocol, tail) {
                Ok(()) => {
                    let chunks = chunks.get_or_insert_with(Box::default);
                    chunks.push_back(std::mem::take(tail).freeze());
                    chunks.push_back(publish.payload.clone());
                }
                Err(error) => debug!(%error, "dropping a packet that cannot be encoded"),
            }
        }
        _ => encode_into(packet, protocol, tail),
    }
}

/// What a connection task takes from its mailbox to write.
#[derive(Debug, Default)]
pub struct Batch {
    /// The bytes to write, in order.
    pub chunks: VecDeque<Bytes>,
    /// QoS 0 PUBLISH packets among them (to report once written).
    pub qos0: usize,
    /// Whether the connection must close once they are written.
    pub closing: bool,
}

impl Batch {
    /// Bytes left to write.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// Whether nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(Bytes::is_empty)
    }
}

/// A peer address in 16 bytes instead of 32: IPv4 inline, IPv6 boxed.
#[derive(Debug)]
enum Peer {
    InProcess,
    V4 { ip: [u8; 4], port: u16 },
    V6(Box<SocketAddrV6>),
}

impl Peer {
    fn new(peer: Option<SocketAddr>) -> Peer {
        match peer {
            None => Peer::InProcess,
            Some(SocketAddr::V4(v4)) => Peer::V4 {
                ip: v4.ip().octets(),
                port: v4.port(),
            },
            Some(SocketAddr::V6(v6)) => Peer::V6(Box::new(v6)),
        }
    }

    fn get(&self) -> Option<SocketAddr> {
        match self {
            Peer::InProcess => None,
            Peer::V4 { ip, port } => Some(SocketAddr::from((*ip, *port))),
            Peer::V6(v6) => Some(SocketAddr::V6(**v6)),
        }
    }
}

/// What a push did.
#[derive(Debug)]
pub enum Pushed {
    /// Queued for writing. The task must be woken: with this waker if it is
    /// waiting (`None`: it will find the packet when it next looks).
    Queued(Option<Waker>),
    /// Queued behind packets the task has not been woken for yet: nothing
    /// to wake.
    Added,
    /// A QoS 0 PUBLISH dropped because the connection is too far behind.
    DroppedQos0,
    /// The connection is closing; nothing more is written.
    Closed,
}

impl Link {
    /// A mailbox for network connection `conn` from `peer` speaking
    /// `protocol`, whose client gave `client_id`.
    pub fn network(
        conn: ConnId,
        peer: SocketAddr,
        protocol: ProtocolVersion,
        client_id: ByteString,
    ) -> Link {
        let outbox = Outbox::Wire {
            chunks: None,
            tail: BytesMut::new(),
        };
        Link::with(outbox, conn, Some(peer), protocol, client_id)
    }

    /// A mailbox for in-process client `conn` (MQTT 5.0): packets are
    /// handed over as they are.
    pub fn internal(conn: ConnId, client_id: ByteString) -> Link {
        let outbox = Outbox::Packets(VecDeque::new());
        Link::with(outbox, conn, None, ProtocolVersion::V5, client_id)
    }

    fn with(
        outbox: Outbox,
        conn: ConnId,
        peer: Option<SocketAddr>,
        protocol: ProtocolVersion,
        client_id: ByteString,
    ) -> Link {
        let pending = Pending {
            outbox,
            qos0_publishes: 0,
            closing: false,
            shutting_down: false,
            woken: false,
            waker: None,
        };
        Link {
            pending: Mutex::new(pending),
            peer: Peer::new(peer),
            client_id,
            conn,
            protocol,
            ingest: None,
        }
    }

    /// The same link, whose client's messages to `route`'s topic go to the ingest sink.
    pub(crate) fn with_ingest(mut self, route: Option<super::ingest::IngestRoute>) -> Link {
        self.ingest = route.map(Box::new);
        self
    }

    /// Who is on the other end (`None`: an in-process client).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer.get()
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A poisoned lock only means another thread panicked mid-push; the
        // outbox itself is still valid.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `packet` (encoding it for a network connection; a packet that
    /// cannot be encoded is dropped). QoS 0 publications beyond `max_qos0`
    /// waiting ones are dropped (a backstop: the core paces QoS 0 to
    /// `mqtt.max_outbound_qos0` unwritten messages itself).
    pub fn push(&self, packet: Packet, max_qos0: usize) -> Pushed {
        let mut pending = self.lock();
        if pending.closing {
            return Pushed::Closed;
        }
        let qos0 = matches!(&packet, Packet::Publish(p) if p.qos == QoS::AtMostOnce);
        if qos0 {
            // Counted even when dropped: the core waits for its report.
            pending.qos0_publishes += 1;
            if pending.qos0_publishes as usize > max_qos0 {
                return Pushed::DroppedQos0;
            }
        }
        match &mut pending.outbox {
            Outbox::Wire { chunks, tail } => encode_wire(&packet, self.protocol, chunks, tail),
            Outbox::Packets(packets) => packets.push_back(packet),
        }
        if std::mem::replace(&mut pending.woken, true) {
            Pushed::Added
        } else {
            Pushed::Queued(pending.waker.take())
        }
    }

    /// Asks the connection to close once what is queued is written. Returns
    /// the waker of the waiting task, to wake once the batch is out.
    pub fn close(&self) -> Option<Waker> {
        let mut pending = self.lock();
        pending.closing = true;
        pending.woken = true;
        pending.waker.take()
    }

    /// Asks the connection to say goodbye because the server is shutting down.
    pub fn shut_down(&self) {
        self.lock().shutting_down = true;
        self.wake();
    }

    /// Whether [`Link::shut_down`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Wakes the connection task (a wake with no task waiting is remembered).
    pub fn wake(&self) {
        let waker = {
            let mut pending = self.lock();
            pending.woken = true;
            pending.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ready once woken since the last time it was ready; otherwise keeps
    /// `cx`'s waker for [`Link::wake`]. The waiting costs the caller no state.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut pending = self.lock();
        if std::mem::take(&mut pending.woken) {
            return Poll::Ready(());
        }
        match &pending.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => pending.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits until woken.
    pub async fn woken(&self) {
        std::future::poll_fn(|cx| self.poll_woken(cx)).await;
    }

    /// Takes what is queued for a network connection: its bytes, how many
    /// QoS 0 publications they hold, and whether the connection must then close.
    pub fn take_batch(&self) -> Batch {
        let mut pending = self.lock();
        let qos0 = std::mem::take(&mut pending.qos0_publishes) as usize;
        let mut chunks = VecDeque::new();
        if let Outbox::Wire {
            chunks: queued,
            tail,
        } = &mut pending.outbox
        {
            if let Some(queued) = queued.take() {
                chunks = *queued;
            }
            if !tail.is_empty() {
                chunks.push_back(std::mem::take(tail).freeze());
            }
        }
        Batch {
            chunks,
            qos0,
            closing: pending.closing,
        }
    }

    /// Takes the packets queued for an in-process client, and whether it
    /// must then close.
    /// Also returns how many QoS 0 publications were taken (to report).
    pub fn take_packets(&self) -> (VecDeque<Packet>, usize, bool) {
        let mut pending = self.lock();
        let qos0 = std::mem::take(&mut pending.qos0_publishes) as usize;
        let packets = match &mut pending.outbox {
            Outbox::Packets(packets) => std::mem::take(packets),
            Outbox::Wire { .. } => VecDeque::new(),
        };
        (packets, qos0, pending.closing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myriad_mqtt::{Publish, PublishAck};

    fn publish(qos: QoS) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: "t".into(),
            packet_id: u16::from(qos != QoS::AtMostOnce),
            payload: bytes::Bytes::from_static(b"hi"),
            properties: Default::default(),
        })
    }

    fn link() -> Link {
        Link::network(
            1,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            ProtocolVersion::V311,
            "c".into(),
        )
    }

    #[test]
    fn packets_are_encoded_as_queued_and_taken_as_one_buffer() {
        let link = link();
        assert!(matches!(
            link.push(publish(QoS::AtLeastOnce), 8),
            Pushed::Queued(None)
        ));
        let ack = Packet::PubAck(PublishAck::success(7));
        assert!(matches!(link.push(ack.clone(), 8), Pushed::Added));
        let batch = link.take_batch();
        assert!(!batch.closing);
        let bytes: Vec<u8> = batch
            .chunks
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect();
        let mut expected = BytesMut::new();
        myriad_mqtt::encode(
            &publish(QoS::AtLeastOnce),
            ProtocolVersion::V311,
            &mut expected,
        )
        .expect("encode");
        myriad_mqtt::encode(&ack, ProtocolVersion::V311, &mut expected).expect("encode");
        assert_eq!(bytes, expected.to_vec());
        assert!(link.take_batch().is_empty());
    }

    #[test]
    fn qos0_backlog_is_bounded_until_taken() {
        let link = link();
        assert!(matches!(
            link.push(publish(QoS::AtMostOnce), 2),
            Pushed::Queued(_)
        ));
        assert!(matches!(
            link.push(publish(QoS::AtMostOnce), 2),
            Pushed::Added
        ));
        assert!(matches!(
            link.push(publish(QoS::AtMostOnce), 2),
            Pushed::DroppedQos0
        ));
        // QoS 1 is never dropped here.
        assert!(matches!(
            link.push(publish(QoS::AtLeastOnce), 2),
            Pushed::Added
        ));
        assert_eq!(link.take_batch().qos0, 3, "a dropped one is reported too");
        assert!(matches!(
            link.push(publish(QoS::AtMostOnce), 2),
            Pushed::Added
        ));
    }

    #[test]
    fn a_closing_link_takes_nothing_more() {
        let link = link();
        link.close();
        assert!(matches!(
            link.push(publish(QoS::AtLeastOnce), 8),
            Pushed::Closed
        ));
        let batch = link.take_batch();
        assert!(batch.is_empty() && batch.closing);
    }

    #[test]
    fn peer_addresses_come_back_as_given() {
        let v6: SocketAddr = "[::1]:1883".parse().expect("address");
        let v4: SocketAddr = "10.1.2.3:40000".parse().expect("address");
        for peer in [v4, v6] {
            assert_eq!(
                Link::network(1, peer, ProtocolVersion::V5, "c".into()).peer(),
                Some(peer)
            );
        }
        assert_eq!(Link::internal(1, "c".into()).peer(), None);
        assert!(
            std::mem::size_of::<Link>() <= 144,
            "a link fits jemalloc's 160-byte class with its counts"
        );
    }

    #[test]
    fn internal_links_keep_packets() {
        let link = Link::internal(1, "$myriad/x".into());
        link.push(publish(QoS::AtLeastOnce), 8);
        let (packets, qos0, _) = link.take_packets();
        assert_eq!(qos0, 0);
        assert_eq!(packets.len(), 1);
    }
}

#[cfg(test)]
mod vectored_tests {
    use super::*;
    use myriad_mqtt::Publish;

    /// A large payload goes out as its header plus the message's own buffer:
    /// every connection's outbox shares it, none copies it.
    #[test]
    fn large_payloads_are_shared_not_copied() {
        let payload = bytes::Bytes::from(vec![5u8; 100_000]);
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "big".into(),
            packet_id: 0,
            payload: payload.clone(),
            properties: Default::default(),
        });
        let links: Vec<Link> = (0..3)
            .map(|conn| {
                Link::network(
                    conn,
                    SocketAddr::from(([127, 0, 0, 1], 1)),
                    ProtocolVersion::V5,
                    "c".into(),
                )
            })
            .collect();
        for link in &links {
            link.push(packet.clone(), 8);
        }
        let mut expected = BytesMut::new();
        myriad_mqtt::encode(&packet, ProtocolVersion::V5, &mut expected).expect("encode");
        for link in &links {
            let batch = link.take_batch();
            assert_eq!(batch.qos0, 1);
            assert_eq!(batch.chunks.len(), 2, "header, then the payload");
            assert_eq!(
                batch.chunks[1].as_ptr(),
                payload.as_ptr(),
                "the payload is not copied"
            );
            let bytes: Vec<u8> = batch
                .chunks
                .iter()
                .flat_map(|c| c.iter().copied())
                .collect();
            assert_eq!(bytes, expected.to_vec());
        }
    }
}
