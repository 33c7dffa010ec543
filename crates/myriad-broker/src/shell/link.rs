//! The outbound mailbox between the core task and one connection task.
//!
//! A mutex-guarded queue plus the waiting task's waker: it holds no memory
//! while empty (unlike a channel, which keeps a block of slots per
//! connection), waiting on it needs no future state in the connection task
//! (unlike `Notify`, whose waiter node lives in the waiting future), and the
//! connection task drains everything queued in one go, so many packets
//! become one write.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use myriad_mqtt::{ByteString, Packet, QoS};

#[derive(Debug, Default)]
struct Pending {
    packets: VecDeque<Packet>,
    qos0_publishes: usize,
    closing: bool,
    /// The server is shutting down: the connection says goodbye and ends.
    shutting_down: bool,
    /// Woken flag: set by [`Link::wake`], cleared when the task sees it.
    woken: bool,
    /// The task waiting in [`Link::poll_woken`].
    waker: Option<Waker>,
}

/// One connection's outbound mailbox.
#[derive(Debug, Default)]
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
    /// A mailbox for a connection from `peer` (`None`: in-process) that gave
    /// `client_id` and `username`.
    pub fn new(
        peer: Option<SocketAddr>,
        client_id: ByteString,
        username: Option<ByteString>,
    ) -> Link {
        Link {
            peer,
            client_id,
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

    /// Takes everything queued, and whether the connection must then close.
    pub fn take(&self) -> (VecDeque<Packet>, bool) {
        let mut pending = self.lock();
        pending.qos0_publishes = 0;
        (std::mem::take(&mut pending.packets), pending.closing)
    }
}
