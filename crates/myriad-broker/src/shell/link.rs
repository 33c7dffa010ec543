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
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use myriad_mqtt::{ByteString, Packet, ProtocolVersion, QoS};
use tracing::debug;

/// What is waiting to go out.
#[derive(Debug)]
enum Outbox {
    /// Encoded packets for a network connection speaking `protocol`.
    Wire {
        bytes: BytesMut,
        protocol: ProtocolVersion,
    },
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

/// One connection's outbound mailbox.
#[derive(Debug)]
pub struct Link {
    pending: Mutex<Pending>,
    /// Who is on the other end, for lifecycle events.
    pub(crate) peer: Option<SocketAddr>,
    /// The client identifier given at CONNECT (for log lines).
    pub(crate) client_id: ByteString,
    /// The user name given at CONNECT.
    pub(crate) username: Option<ByteString>,
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
    /// A mailbox for a network connection from `peer` speaking `protocol`,
    /// whose client gave `client_id` and `username`.
    pub fn network(
        peer: SocketAddr,
        protocol: ProtocolVersion,
        client_id: ByteString,
        username: Option<ByteString>,
    ) -> Link {
        let outbox = Outbox::Wire {
            bytes: BytesMut::new(),
            protocol,
        };
        Link::with(outbox, Some(peer), client_id, username)
    }

    /// A mailbox for an in-process client: packets are handed over as they are.
    pub fn internal(client_id: ByteString) -> Link {
        Link::with(Outbox::Packets(VecDeque::new()), None, client_id, None)
    }

    fn with(
        outbox: Outbox,
        peer: Option<SocketAddr>,
        client_id: ByteString,
        username: Option<ByteString>,
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
            peer,
            client_id,
            username,
        }
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
            Outbox::Wire { bytes, protocol } => {
                let before = bytes.len();
                if let Err(error) = myriad_mqtt::encode(&packet, *protocol, bytes) {
                    bytes.truncate(before);
                    debug!(%error, "dropping a packet that cannot be encoded");
                }
            }
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
            Outbox::Wire { bytes, .. } => std::mem::take(bytes),
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
            SocketAddr::from(([127, 0, 0, 1], 1)),
            ProtocolVersion::V311,
            "c".into(),
            None,
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
    fn internal_links_keep_packets() {
        let link = Link::internal("$myriad/x".into());
        link.push(publish(QoS::AtLeastOnce), 8);
        let (packets, _) = link.take_packets();
        assert_eq!(packets.len(), 1);
    }
}
