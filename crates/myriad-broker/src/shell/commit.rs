//! Store commits off the event loop, and the outputs that wait for them.
//!
//! The core task applies a batch of events, hands the changes to a commit
//! on tokio's blocking pool and goes on with the next batch while the disk
//! works (a redb commit with fsync takes milliseconds; on the default
//! one-thread runtime, doing it inline stalled every connection). What a
//! batch produced that must not be seen before its changes are durable
//! (acknowledgements, CONNACKs of stored sessions, deliveries) is *held*
//! here, in production order, and released once the commit holding the
//! batch's changes (and every earlier one) is done. While anything is held,
//! later outputs are held behind it too, so each connection receives its
//! packets in the order the core sent them.
//!
//! One exception: a PINGRESP goes out at once unless its connection's
//! CONNACK is still held. It reveals no state, and MQTT orders only
//! PUBLISH and its acknowledgements, so it may overtake a held PUBACK; an
//! idle client's keep alive then never waits for other clients' commits
//! (Mosquitto answers pings directly too).
//!
//! One commit runs at a time. In group mode, changes made while it runs
//! gather into the next one, which starts when it ends (and no earlier
//! than the group window after its first change); per acknowledgement,
//! every event's changes are committed on their own, in order. The core
//! stops taking events while [`MAX_HELD`] outputs wait, so a slow disk
//! slows clients down (through the event channel) instead of growing memory.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use myriad_mqtt::Packet;
use myriad_store::{Change, SessionStore, StoreError};
use tokio::task::{JoinError, JoinHandle};

use super::{CommitPolicy, Persistence};
use crate::ConnId;
use crate::core::receipts::DeliveryReceipt;
use crate::hooks::Lifecycle;

/// Held outputs beyond which the core takes no more events until a commit
/// releases some.
pub(super) const MAX_HELD: usize = 32 * 1024;
/// Changes waiting for a commit beyond which the core takes no more events:
/// bounds events that change much and answer nothing (a connection loss, a
/// will to stored sessions), which [`MAX_HELD`] does not see.
const MAX_WAITING_CHANGES: usize = 256 * 1024;

/// Events whose changes start a group commit before its window is over.
const GROUP_EVENTS: usize = 256;

/// Something the core task does once the changes before it are durable.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Deferred {
    /// Queue a packet on a connection.
    Send(ConnId, Packet),
    /// Close a connection after what was queued before.
    Close(ConnId),
    /// Announce a presence change (the peer already resolved).
    Lifecycle(Lifecycle),
    /// Report a delivery receipt.
    Delivered(DeliveryReceipt),
}

/// The outcome of one commit on the blocking pool.
pub(super) struct Finished {
    store: Box<dyn SessionStore>,
    result: Result<(), StoreError>,
    /// The set the commit made durable (and every set before it).
    set: u64,
}

/// Why the commits stopped.
#[derive(Debug)]
pub(super) enum CommitFailure {
    /// The store refused the commit.
    Store(StoreError),
    /// The commit task panicked or was cancelled.
    Task(JoinError),
}

/// The store, the changes waiting for it, and the outputs waiting for them.
pub(super) struct Durability {
    /// The store while no commit runs.
    store: Option<Box<dyn SessionStore>>,
    /// The commit running on the blocking pool.
    running: Option<JoinHandle<Finished>>,
    policy: CommitPolicy,
    /// Change sets not handed to a commit yet, oldest first, by number.
    /// In group mode at most one: later changes join it.
    waiting: VecDeque<(u64, Vec<Change>)>,
    /// When the oldest waiting set got its first change.
    waiting_since: Option<Instant>,
    /// Events that changed something since the oldest waiting set opened.
    waiting_events: usize,
    /// Changes in the waiting sets.
    waiting_changes: usize,
    /// Number of the newest set (0: none yet).
    last: u64,
    /// Every set up to this number is committed.
    durable: u64,
    /// Outputs waiting for the set numbered with them, in production order.
    held: VecDeque<(u64, Deferred)>,
    /// Connections whose CONNACK is held (their PINGRESPs wait too).
    held_connacks: HashSet<ConnId, foldhash::fast::RandomState>,
}

impl Durability {
    /// Commits to `persistence`'s store with its policy.
    pub(super) fn new(persistence: Persistence) -> Durability {
        Durability {
            store: Some(persistence.store),
            running: None,
            policy: persistence.policy,
            waiting: VecDeque::new(),
            waiting_since: None,
            waiting_events: 0,
            waiting_changes: 0,
            last: 0,
            durable: 0,
            held: VecDeque::new(),
            held_connacks: HashSet::default(),
        }
    }

    /// Whether each event's changes are committed on their own.
    pub(super) fn per_event(&self) -> bool {
        self.policy == CommitPolicy::PerEvent
    }

    /// Takes the changes of `events` applied events (made at `now`).
    pub(super) fn record(&mut self, changes: Vec<Change>, events: usize, now: Instant) {
        if changes.is_empty() {
            return;
        }
        self.waiting_changes += changes.len();
        let joins = matches!(self.policy, CommitPolicy::Group { .. });
        match self.waiting.back_mut() {
            Some((_, set)) if joins => set.extend(changes),
            _ => {
                self.last += 1;
                self.waiting.push_back((self.last, changes));
            }
        }
        if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
        self.waiting_events += events;
    }

    /// Whether changes are not yet durable: new outputs must be held.
    pub(super) fn pending(&self) -> bool {
        self.last > self.durable
    }

    /// Holds `deferred` until the newest set is durable, unless it may go
    /// now (see the module docs); gives it back if so.
    pub(super) fn hold(&mut self, deferred: Deferred) -> Option<Deferred> {
        if !self.pending() {
            return Some(deferred);
        }
        match &deferred {
            Deferred::Send(conn, Packet::PingResp) if !self.held_connacks.contains(conn) => {
                return Some(deferred);
            }
            Deferred::Send(conn, Packet::ConnAck(_)) => {
                self.held_connacks.insert(*conn);
            }
            _ => {}
        }
        self.held.push_back((self.last, deferred));
        None
    }

    /// Whether the core may take more events.
    pub(super) fn has_room(&self) -> bool {
        self.held.len() < MAX_HELD && self.waiting_changes < MAX_WAITING_CHANGES
    }

    /// When the next commit is due, if one waits and none runs.
    pub(super) fn due(&self) -> Option<Instant> {
        if self.running.is_some() {
            return None;
        }
        let since = self.waiting_since?;
        match self.policy {
            CommitPolicy::Group { window }
                if self.waiting_events < GROUP_EVENTS && self.has_room() =>
            {
                Some(since + window)
            }
            _ => Some(since),
        }
    }

    /// Starts the next commit if it is due at `now`.
    pub(super) fn start_if_due(&mut self, now: Instant) {
        if self.due().is_some_and(|due| due <= now) {
            self.start(now);
        }
    }

    /// Starts committing the oldest waiting set, if any, unless a commit runs.
    fn start(&mut self, now: Instant) {
        if self.running.is_some() || self.waiting.is_empty() {
            return;
        }
        let Some(mut store) = self.store.take() else {
            return;
        };
        let Some((set, changes)) = self.waiting.pop_front() else {
            self.store = Some(store);
            return;
        };
        // Per event, the next set's clock starts now; a group set is gone.
        self.waiting_since = (!self.waiting.is_empty()).then_some(now);
        self.waiting_events = self.waiting.len();
        self.waiting_changes = self.waiting_changes.saturating_sub(changes.len());
        self.running = Some(tokio::task::spawn_blocking(move || {
            let result = super::snapshot::timed_commit(&mut *store, &changes);
            // Dropped here, on the blocking pool: big batches free a lot.
            drop(changes);
            Finished { store, result, set }
        }));
    }

    /// Waits for the running commit (forever if none runs).
    pub(super) async fn commit_done(&mut self) -> Result<Finished, JoinError> {
        match self.running.as_mut() {
            Some(running) => running.await,
            None => std::future::pending().await,
        }
    }

    /// Takes the outcome of the running commit; on success returns what it released.
    pub(super) fn committed(
        &mut self,
        done: Result<Finished, JoinError>,
        released: &mut Vec<Deferred>,
    ) -> Result<(), CommitFailure> {
        self.running = None;
        let finished = done.map_err(CommitFailure::Task)?;
        self.store = Some(finished.store);
        finished.result.map_err(CommitFailure::Store)?;
        self.durable = finished.set;
        while let Some((set, _)) = self.held.front() {
            if *set > self.durable {
                break;
            }
            let Some((_, deferred)) = self.held.pop_front() else {
                break;
            };
            if let Deferred::Send(conn, Packet::ConnAck(_)) = &deferred {
                self.held_connacks.remove(conn);
            }
            released.push(deferred);
        }
        Ok(())
    }

    /// Commits everything still waiting (waiting for a running commit
    /// first) and returns what that released. For shutdown.
    pub(super) async fn flush(
        &mut self,
        released: &mut Vec<Deferred>,
    ) -> Result<(), CommitFailure> {
        loop {
            if self.running.is_some() {
                let done = self.commit_done().await;
                self.committed(done, released)?;
            }
            if self.waiting.is_empty() {
                return Ok(());
            }
            // At once: nothing more will join.
            self.start(Instant::now());
        }
    }

    /// Outputs held now.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myriad_mqtt::{ConnAck, PacketProperties, PublishAck, ReasonCode};
    use myriad_store::MemoryStore;
    use std::time::Duration;

    fn durability(policy: CommitPolicy) -> Durability {
        Durability::new(Persistence {
            store: Box::new(MemoryStore::default()),
            policy,
        })
    }

    fn change(n: u32) -> Change {
        Change::DeleteSession {
            client_id: format!("c{n}").into(),
        }
    }

    fn connack() -> Packet {
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: PacketProperties::new(),
        })
    }

    fn sent(released: &[Deferred]) -> Vec<(ConnId, &'static str)> {
        released
            .iter()
            .map(|d| match d {
                Deferred::Send(conn, Packet::PubAck(_)) => (*conn, "puback"),
                Deferred::Send(conn, Packet::ConnAck(_)) => (*conn, "connack"),
                Deferred::Send(conn, Packet::PingResp) => (*conn, "pingresp"),
                Deferred::Send(conn, _) => (*conn, "other"),
                Deferred::Close(conn) => (*conn, "close"),
                _ => (0, "hook"),
            })
            .collect()
    }

    #[tokio::test]
    async fn outputs_wait_for_their_commit_and_leave_in_order() {
        let window = Duration::from_millis(2);
        let mut d = durability(CommitPolicy::Group { window });
        let now = Instant::now();
        // Nothing changed: outputs go at once.
        assert!(
            d.hold(Deferred::Send(1, Packet::PubAck(PublishAck::success(1))))
                .is_some()
        );
        d.record(vec![change(1)], 1, now);
        assert!(d.pending());
        assert!(
            d.hold(Deferred::Send(1, Packet::PubAck(PublishAck::success(2))))
                .is_none()
        );
        // Not due before the window.
        d.start_if_due(now);
        assert!(d.running.is_none());
        assert_eq!(d.due(), Some(now + window));
        d.start_if_due(now + window);
        assert!(d.running.is_some());
        // The next batch changes more while the first commit runs: its
        // outputs wait for the second commit, and an unchanged batch after
        // it waits too.
        d.record(vec![change(2)], 1, now + window);
        assert!(
            d.hold(Deferred::Send(2, Packet::PubAck(PublishAck::success(3))))
                .is_none()
        );
        assert!(d.hold(Deferred::Close(2)).is_none());
        assert_eq!(d.due(), None, "one commit at a time");
        let mut released = Vec::new();
        let done = d.commit_done().await;
        d.committed(done, &mut released).expect("commit");
        assert_eq!(sent(&released), vec![(1, "puback")]);
        assert_eq!(d.held(), 2);
        d.start_if_due(now + 2 * window);
        released.clear();
        let done = d.commit_done().await;
        d.committed(done, &mut released).expect("commit");
        assert_eq!(sent(&released), vec![(2, "puback"), (2, "close")]);
        assert!(!d.pending());
        assert_eq!(d.held(), 0);
    }

    #[tokio::test]
    async fn pings_overtake_held_outputs_but_not_a_held_connack() {
        let mut d = durability(CommitPolicy::Group {
            window: Duration::ZERO,
        });
        let now = Instant::now();
        d.record(vec![change(1)], 1, now);
        assert!(
            d.hold(Deferred::Send(1, Packet::PubAck(PublishAck::success(1))))
                .is_none()
        );
        assert!(d.hold(Deferred::Send(2, connack())).is_none());
        // Connection 1's ping overtakes its PUBACK, connection 3 has
        // nothing held; connection 2 has not had its CONNACK yet.
        assert!(d.hold(Deferred::Send(1, Packet::PingResp)).is_some());
        assert!(d.hold(Deferred::Send(3, Packet::PingResp)).is_some());
        assert!(d.hold(Deferred::Send(2, Packet::PingResp)).is_none());
        d.start_if_due(now);
        let mut released = Vec::new();
        let done = d.commit_done().await;
        d.committed(done, &mut released).expect("commit");
        assert_eq!(
            sent(&released),
            vec![(1, "puback"), (2, "connack"), (2, "pingresp")]
        );
        assert!(d.held_connacks.is_empty());
    }

    #[tokio::test]
    async fn per_event_sets_commit_one_by_one() {
        let mut d = durability(CommitPolicy::PerEvent);
        let now = Instant::now();
        for n in 1..=3 {
            d.record(vec![change(n)], 1, now);
            assert!(d.hold(Deferred::Close(u64::from(n))).is_none());
        }
        let mut closed = Vec::new();
        while d.pending() {
            d.start_if_due(Instant::now());
            let mut released = Vec::new();
            let done = d.commit_done().await;
            d.committed(done, &mut released).expect("commit");
            assert_eq!(released.len(), 1, "each set releases its own outputs");
            closed.extend(sent(&released));
        }
        assert_eq!(closed, vec![(1, "close"), (2, "close"), (3, "close")]);
    }

    #[tokio::test]
    async fn the_core_pauses_while_too_much_waits() {
        let mut d = durability(CommitPolicy::Group {
            window: Duration::from_secs(1),
        });
        let now = Instant::now();
        let many: Vec<Change> = (0..MAX_WAITING_CHANGES as u32).map(change).collect();
        d.record(many, 1, now);
        assert!(!d.has_room(), "too many changes wait");
        assert_eq!(d.due(), Some(now), "and their commit starts at once");
        d.start_if_due(now);
        assert!(d.has_room(), "handed to the commit");
        let mut released = Vec::new();
        let done = d.commit_done().await;
        d.committed(done, &mut released).expect("commit");
        d.record(vec![change(1)], 1, now);
        for n in 0..MAX_HELD as u64 {
            assert!(d.hold(Deferred::Close(n)).is_none());
        }
        assert!(!d.has_room(), "too many outputs held");
    }

    #[tokio::test]
    async fn flush_commits_what_waits() {
        let mut d = durability(CommitPolicy::Group {
            window: Duration::from_secs(1),
        });
        d.record(vec![change(1)], 1, Instant::now());
        assert!(d.hold(Deferred::Close(1)).is_none());
        let mut released = Vec::new();
        d.flush(&mut released).await.expect("flush");
        assert_eq!(released.len(), 1);
        assert!(!d.pending());
    }
}
