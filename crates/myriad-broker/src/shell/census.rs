//! A count of live connection tasks, for metrics and the leak watchdog.
//!
//! Every network connection task holds a [`TaskGuard`] from the moment it
//! is spawned, and a [`Registration`] once its CONNECT was handed to the
//! core (it is then registered with its session). Both are released when
//! the task ends, whatever way it ends, so the counts are what is alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live connection tasks. Shared by the accept loop, every connection task
/// and whoever watches them (through [`super::BrokerHandle::census`]).
#[derive(Debug, Default)]
pub struct Census {
    tasks: AtomicU64,
    registered: AtomicU64,
    spawned: AtomicU64,
    #[cfg(feature = "leak-test")]
    leak: std::sync::atomic::AtomicBool,
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
}

impl Census {
    /// The counts now.
    pub fn counts(&self) -> CensusCounts {
        CensusCounts {
            tasks: self.tasks.load(Ordering::Relaxed),
            registered: self.registered.load(Ordering::Relaxed),
            spawned: self.spawned.load(Ordering::Relaxed),
        }
    }

    /// Counts a task that has just been spawned until the guard drops.
    pub(crate) fn task(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::Relaxed);
        self.spawned.fetch_add(1, Ordering::Relaxed);
        TaskGuard(self.clone())
    }

    /// Counts a task registered with its session until the guard drops.
    pub(crate) fn register(self: &Arc<Self>) -> Registration {
        self.registered.fetch_add(1, Ordering::Relaxed);
        Registration(self.clone())
    }

    /// Test builds only: from now on, connection tasks whose connection
    /// ended stay alive (and registered) until shutdown, a deliberate
    /// leak for the watchdog to find.
    #[cfg(feature = "leak-test")]
    pub fn leak_connection_tasks(&self, on: bool) {
        self.leak.store(on, Ordering::Relaxed);
    }

    /// Whether tasks are to leak (always false outside test builds).
    pub(crate) fn leaking(&self) -> bool {
        #[cfg(feature = "leak-test")]
        {
            self.leak.load(Ordering::Relaxed)
        }
        #[cfg(not(feature = "leak-test"))]
        {
            false
        }
    }
}

/// Held by a live connection task.
#[derive(Debug)]
pub(crate) struct TaskGuard(Arc<Census>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held by a connection task registered with its session.
#[derive(Debug)]
pub(crate) struct Registration(Arc<Census>);

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.registered.fetch_sub(1, Ordering::Relaxed);
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
        let registered = census.register();
        assert_eq!(
            census.counts(),
            CensusCounts {
                tasks: 2,
                registered: 1,
                spawned: 2
            }
        );
        drop(registered);
        drop(task);
        assert_eq!(census.counts().tasks, 1);
        assert_eq!(census.counts().registered, 0);
        drop(other);
        assert_eq!(census.counts().tasks, 0);
        assert_eq!(census.counts().spawned, 2);
    }
}
