//! The outbound mailbox between the core task and one connection task.
//!
//! A mutex-guarded queue plus a `Notify`: it holds no memory while empty
//! (unlike a channel, which keeps a block of slots per connection), and the
//! connection task drains everything queued in one go, so many packets
//! become one write.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use myriad_mqtt::{ByteString, Packet, QoS};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Pending {
    packets: VecDeque<Packet>,
    qos0_publishes: usize,
    closing: bool,
}

/// One connection's outbound mailbox.
#[derive(Debug, Default)]
pub struct Link {
    pending: Mutex<Pending>,
    notify: Notify,
    /// Who is on the other end, for lifecycle events.
    pub(crate) peer: Option<SocketAddr>,
    /// The user name given at CONNECT.
    pub(crate) username: Option<ByteString>,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for writing.
    Queued,
    /// A QoS 0 PUBLISH dropped because the connection is too far behind.
    DroppedQos0,
    /// The connection is closing; nothing more is written.
    Closed,
}

impl Link {
    /// A mailbox for a connection from `peer` (`None`: in-process) that gave `username`.
    pub fn new(peer: Option<SocketAddr>, username: Option<ByteString>) -> Link {
        Link {
            peer,
            username,
            ..Link::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A poisoned lock only means another thread panicked mid-push; the
        // queue itself is still a valid VecDeque.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `packet`. QoS 0 publications beyond `max_qos0` waiting ones are dropped.
    pub fn push(&self, packet: Packet, max_qos0: usize) -> Pushed {
        let mut pending = self.lock();
        if pending.closing {
            return Pushed::Closed;
        }
        if let Packet::Publish(publish) = &packet
            && publish.qos == QoS::AtMostOnce
        {
            if pending.qos0_publishes >= max_qos0 {
                return Pushed::DroppedQos0;
            }
            pending.qos0_publishes += 1;
        }
        pending.packets.push_back(packet);
        Pushed::Queued
    }

    /// Asks the connection to close once what is queued is written.
    pub fn close(&self) {
        self.lock().closing = true;
    }

    /// Wakes the connection task.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Waits until woken.
    pub async fn woken(&self) {
        self.notify.notified().await;
    }

    /// Takes everything queued, and whether the connection must then close.
    pub fn take(&self) -> (VecDeque<Packet>, bool) {
        let mut pending = self.lock();
        pending.qos0_publishes = 0;
        (std::mem::take(&mut pending.packets), pending.closing)
    }
}
