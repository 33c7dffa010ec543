//! The broker's numbers, copied out of the core task on request, and the
//! timing of store commits.
//!
//! Counters live in the single-threaded core as plain integers; a scrape
//! (or the watchdog) sends one [`super::Event::Snapshot`] and gets them all
//! at one consistent moment, so the hot path pays nothing for metrics.

use std::sync::Arc;
use std::time::Instant;

use myriad_store::{Change, SessionStore, StoreError};

use super::census::Census;
use super::{BrokerHandle, BrokerStopped, Event, Links};
use crate::core::observe::{Levels, Traffic};
use crate::core::{Broker, BrokerStats};

/// Histogram of store commit latency (seconds), one sample per commit.
pub const STORE_COMMIT_SECONDS: &str = "myriad_store_commit_duration_seconds";

/// Everything the core and its task count, at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BrokerSnapshot {
    /// The core's message counters.
    pub stats: BrokerStats,
    /// Connections and traffic by QoS.
    pub traffic: Traffic,
    /// Sessions, retained, in-flight and queued messages now.
    pub levels: Levels,
    /// Connections with a network peer (in-process clients excluded).
    pub network_sessions: u64,
    /// QoS 0 messages dropped because a connection's mailbox was full.
    pub dropped_qos0_slow: u64,
}

/// Builds the snapshot on the core task.
pub(super) fn take(broker: &Broker, links: &Links) -> BrokerSnapshot {
    BrokerSnapshot {
        stats: broker.stats(),
        traffic: broker.traffic(),
        levels: broker.levels(),
        network_sessions: links.live.values().filter(|l| l.peer().is_some()).count() as u64,
        dropped_qos0_slow: links.dropped_qos0,
    }
}

/// Commits `changes`, recording how long it took in [`STORE_COMMIT_SECONDS`].
pub(super) fn timed_commit(
    store: &mut dyn SessionStore,
    changes: &[Change],
) -> Result<(), StoreError> {
    let started = Instant::now();
    let outcome = store.commit(changes);
    metrics::histogram!(STORE_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    outcome
}

impl BrokerHandle {
    /// The broker's counters and levels now (one round trip to the core task).
    pub async fn snapshot(&self) -> Result<BrokerSnapshot, BrokerStopped> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.events
            .send(Event::Snapshot(tx))
            .await
            .map_err(|_| BrokerStopped)?;
        rx.await.map_err(|_| BrokerStopped)
    }

    /// Live connection tasks, shared with the running broker.
    pub fn census(&self) -> Arc<Census> {
        self.census.clone()
    }

    /// Whether the broker's core task is still taking events (false once it
    /// stopped, e.g. after a failed store commit).
    pub fn is_running(&self) -> bool {
        !self.events.is_closed()
    }
}
