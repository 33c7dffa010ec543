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
//! connection task only writes. An in-process client's outbox holds packets.

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV6};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use myriad_mqtt::{ByteString, Packet, ProtocolVersion, QoS};

use crate::ConnId;
use tracing::debug;

/// What is waiting to go out.
#[derive(Debug)]
enum Outbox {
    /// Encoded packets for a network connection.
    Wire { bytes: BytesMut },
    /// Packets for an in-process client.
    Packets(VecDeque<Packet>),
}

#[derive(Debug)]
struct Pending {
    outbox: Outbox,
    /// QoS 0 publications in the outbox.
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
            bytes: BytesMut::new(),
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
        }
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
    /// waiting ones are dropped.
    pub fn push(&self, packet: Packet, max_qos0: usize) -> Pushed {
        let mut pending = self.lock();
        if pending.closing {
            return Pushed::Closed;
        }
        let qos0 = matches!(&packet, Packet::Publish(p) if p.qos == QoS::AtMostOnce);
        if qos0 {
            if pending.qos0_publishes as usize >= max_qos0 {
                return Pushed::DroppedQos0;
            }
            pending.qos0_publishes += 1;
        }
        match &mut pending.outbox {
            Outbox::Wire { bytes } => encode_into(&packet, self.protocol, bytes),
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

    /// Takes the encoded bytes queued for a network connection, and whether
    /// the connection must then close.
    pub fn take_bytes(&self) -> (BytesMut, bool) {
        let mut pending = self.lock();
        pending.qos0_publishes = 0;
        let bytes = match &mut pending.outbox {
            Outbox::Wire { bytes } => std::mem::take(bytes),
            Outbox::Packets(_) => BytesMut::new(),
        };
        (bytes, pending.closing)
    }

    /// Takes the packets queued for an in-process client, and whether it
    /// must then close.
    pub fn take_packets(&self) -> (VecDeque<Packet>, bool) {
        let mut pending = self.lock();
        pending.qos0_publishes = 0;
        let packets = match &mut pending.outbox {
            Outbox::Packets(packets) => std::mem::take(packets),
            Outbox::Wire { .. } => VecDeque::new(),
        };
        (packets, pending.closing)
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
        let (bytes, closing) = link.take_bytes();
        assert!(!closing);
        let mut expected = BytesMut::new();
        myriad_mqtt::encode(
            &publish(QoS::AtLeastOnce),
            ProtocolVersion::V311,
            &mut expected,
        )
        .expect("encode");
        myriad_mqtt::encode(&ack, ProtocolVersion::V311, &mut expected).expect("encode");
        assert_eq!(bytes, expected);
        assert!(link.take_bytes().0.is_empty());
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
        link.take_bytes();
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
        let (bytes, closing) = link.take_bytes();
        assert!(bytes.is_empty() && closing);
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
        let (packets, _) = link.take_packets();
        assert_eq!(packets.len(), 1);
    }
}
