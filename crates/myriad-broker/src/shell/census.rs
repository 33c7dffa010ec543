//! A count of live connection tasks, for metrics and the leak watchdog.
//!
//! Every network connection task holds a [`TaskGuard`] from the moment it
//! is spawned; once its CONNECT was handed to the core (it is then
//! registered with its session) the guard becomes a [`RegisteredTask`],
//! and back again when the session is done with the task. Dropping either
//! releases what it counts, whatever way the task ends, so the counts are
//! what is alive. Each guard is one pointer: it sits in the connection
//! task's state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live connection tasks. Shared by the accept loop, every connection task
/// and whoever watches them (through [`super::BrokerHandle::census`]).
#[derive(Debug, Default)]
pub struct Census {
    tasks: AtomicU64,
    registered: AtomicU64,
    spawned: AtomicU64,
    refused: AtomicU64,
    #[cfg(feature = "leak-test")]
    leak: std::sync::atomic::AtomicBool,
    #[cfg(feature = "leak-test")]
    release: tokio::sync::Notify,
}

/// The counts at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CensusCounts {
    /// Connection tasks alive (handshaking or serving).
    pub tasks: u64,
    /// Of those, tasks registered with a session (past CONNECT).
    pub registered: u64,
    /// Connection tasks spawned since start.
    pub spawned: u64,
    /// Connections closed as soon as accepted because `mqtt.max_connections`
    /// were open, since start.
    pub refused: u64,
}

impl Census {
    /// The counts now.
    pub fn counts(&self) -> CensusCounts {
        CensusCounts {
            tasks: self.tasks.load(Ordering::Relaxed),
            registered: self.registered.load(Ordering::Relaxed),
            spawned: self.spawned.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Counts a connection closed at once because the limit was reached.
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a task that has just been spawned until the guard drops.
    pub(crate) fn task(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::Relaxed);
        self.spawned.fetch_add(1, Ordering::Relaxed);
        TaskGuard(self.clone())
    }

    /// Test builds only: while on, connection tasks whose connection ended
    /// stay alive and registered (a deliberate leak for the watchdog to
    /// find); turning it off lets them end.
    #[cfg(feature = "leak-test")]
    pub fn leak_connection_tasks(&self, on: bool) {
        self.leak.store(on, Ordering::Relaxed);
        if !on {
            self.release.notify_waiters();
        }
    }
}

/// Held by a live connection task.
#[derive(Debug)]
pub(crate) struct TaskGuard(Arc<Census>);

impl TaskGuard {
    /// The task is now registered with its session.
    pub(crate) fn register(self) -> RegisteredTask {
        let census = self.0.clone();
        census.registered.fetch_add(1, Ordering::Relaxed);
        // The task count moves over to the registered guard.
        std::mem::forget(self);
        RegisteredTask(census)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held by a live connection task registered with its session.
#[derive(Debug)]
pub(crate) struct RegisteredTask(Arc<Census>);

impl RegisteredTask {
    /// The session is done with the task, which still lives (lingering).
    pub(crate) fn unregister(self) -> TaskGuard {
        let census = self.0.clone();
        census.registered.fetch_sub(1, Ordering::Relaxed);
        std::mem::forget(self);
        TaskGuard(census)
    }

    /// Test builds only: waits while tasks are to leak.
    #[cfg(feature = "leak-test")]
    pub(crate) async fn hold_if_leaking(&self) {
        loop {
            let released = self.0.release.notified();
            if !self.0.leak.load(Ordering::Relaxed) {
                return;
            }
            released.await;
        }
    }
}

impl Drop for RegisteredTask {
    fn drop(&mut self) {
        self.0.registered.fetch_sub(1, Ordering::Relaxed);
        self.0.tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_while_held() {
        let census = Arc::new(Census::default());
        let task = census.task();
        let other = census.task();
        let registered = task.register();
        assert_eq!(
            census.counts(),
            CensusCounts {
                tasks: 2,
                registered: 1,
                spawned: 2,
                refused: 0,
            }
        );
        let lingering = registered.unregister();
        assert_eq!(census.counts().tasks, 2);
        assert_eq!(census.counts().registered, 0);
        drop(lingering);
        assert_eq!(census.counts().tasks, 1);
        // A registered task that ends releases both counts.
        let registered = other.register();
        assert_eq!(census.counts().registered, 1);
        drop(registered);
        assert_eq!(census.counts().tasks, 0);
        assert_eq!(census.counts().registered, 0);
        assert_eq!(census.counts().spawned, 2);
    }
}
