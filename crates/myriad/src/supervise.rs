//! Panics end the process: every panic is logged through `tracing` (so it
//! reaches JSON logs too), and a panic in an essential task (the broker's
//! core, the device layer's services, the HTTP API, the watchdog) stops
//! `myriad serve` with a non-zero exit, so a supervisor restarts it instead
//! of it running on half-dead. A panic in one connection's task ends only
//! that connection.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::{Id, JoinSet};

/// Logs every panic (message, place, thread and, with `RUST_BACKTRACE`, the
/// backtrace) as an error line instead of the default bare stderr text.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info.payload_as_str().unwrap_or("(no message)");
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("(unnamed)");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(thread, %location, %backtrace, "panic: {message}");
        } else {
            tracing::error!(thread, %location, "panic: {message}");
        }
    }));
}

/// Tasks the process cannot do without.
#[derive(Default)]
pub struct Essential {
    tasks: JoinSet<()>,
    names: ServiceCensus,
}

/// The essential tasks alive now, by name (shared with `/debug/tasks`).
#[derive(Debug, Clone, Default)]
pub struct ServiceCensus(Arc<Mutex<HashMap<Id, &'static str>>>);

impl ServiceCensus {
    fn insert(&self, id: Id, name: &'static str) {
        self.lock().insert(id, name);
    }

    fn remove(&self, id: &Id) -> Option<&'static str> {
        self.lock().remove(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Id, &'static str>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many essential tasks of each name are alive.
    pub fn by_name(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for name in self.lock().values() {
            *counts.entry((*name).to_owned()).or_insert(0) += 1;
        }
        counts
    }
}

impl Essential {
    /// Runs `task` as essential task `name`.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The essential tasks alive now, by name (a shared view).
    pub fn census(&self) -> ServiceCensus {
        self.names.clone()
    }

    /// Waits until an essential task panics and returns its name and the
    /// panic's message. Tasks that end normally (at shutdown) are let go;
    /// with none left this waits forever.
    pub async fn failure(&mut self) -> (&'static str, String) {
        loop {
            match self.tasks.join_next_with_id().await {
                Some(Ok((id, ()))) => {
                    self.names.remove(&id);
                }
                Some(Err(error)) => {
                    let name = self.names.remove(&error.id()).unwrap_or("task");
                    let message = match error.try_into_panic() {
                        Ok(payload) => myriad_broker::shell::panic_message(payload.as_ref()),
                        Err(error) => error.to_string(),
                    };
                    return (name, message);
                }
                None => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_panicking_task_is_reported_and_finished_ones_are_not() {
        let mut essential = Essential::default();
        essential.spawn("quick", async {});
        essential.spawn("forever", std::future::pending());
        essential.spawn("buggy", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("oops");
        });
        let (name, message) = tokio::time::timeout(Duration::from_secs(5), essential.failure())
            .await
            .expect("reported");
        assert_eq!((name, message.as_str()), ("buggy", "oops"));
        // Nothing else fails.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), essential.failure())
                .await
                .is_err()
        );
    }
}
