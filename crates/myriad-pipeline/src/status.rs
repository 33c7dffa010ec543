//! What a running pipeline reports about itself (for `GET /api/v1/pipelines` and
//! `myriad ctl pipelines status`): its state, the last error, and counters, written by the
//! runtime and read by the API. Plain atomics and one short lock; no clock (the caller passes
//! the time in).

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The longest error message kept, in bytes (longer ones are cut at a char boundary).
pub const MAX_ERROR_BYTES: usize = 1024;

/// Where a pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineState {
    /// Configured, its source not subscribed yet (start-up, or after a restart's delay).
    Starting,
    /// Taking messages and committing them.
    Running,
    /// A sink write or dead-letter write failed; retrying with backoff.
    Retrying,
    /// The pipeline ended with an error; it is restarted after a delay.
    Failed,
    /// Stopped by a shutdown.
    Stopped,
    /// A one-shot source (a query, a telemetry range) was read whole and every record is
    /// done; not started again.
    Finished,
}

impl PipelineState {
    /// Its name in the API: `starting`, `running`, `retrying`, `failed`, `stopped`,
    /// `finished`.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Starting => "starting",
            PipelineState::Running => "running",
            PipelineState::Retrying => "retrying",
            PipelineState::Failed => "failed",
            PipelineState::Stopped => "stopped",
            PipelineState::Finished => "finished",
        }
    }
}

/// What each record counter counts, in [`StatusSnapshot::records`] order.
pub const RECORD_COUNTERS: [&str; 7] = [
    "received",
    "passed",
    "filtered",
    "failed",
    "unmatched",
    "committed",
    "refused",
];

/// One pipeline's live status. Shared (`Arc`) between its runtime and the API.
#[derive(Debug)]
pub struct PipelineStatus {
    name: String,
    source: String,
    sink: String,
    records: [AtomicU64; 7],
    batches: AtomicU64,
    dead_letters: AtomicU64,
    retries: AtomicU64,
    restarts: AtomicU64,
    lag: AtomicU64,
    last_commit_ms: AtomicI64,
    state: Mutex<StateRecord>,
}

#[derive(Debug, Clone)]
struct StateRecord {
    state: PipelineState,
    since_ms: i64,
    last_error: Option<(String, i64)>,
}

/// A copy of a [`PipelineStatus`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// The pipeline's name.
    pub name: String,
    /// Its source (the rule's FROM filter).
    pub source: String,
    /// Its sink's kind (`file`, `mqtt`, ...).
    pub sink: String,
    /// Where it is.
    pub state: PipelineState,
    /// Since when (unix ms).
    pub state_since_ms: i64,
    /// The last error (at most [`MAX_ERROR_BYTES`]) and when (unix ms).
    pub last_error: Option<(String, i64)>,
    /// Records per counter, in [`RECORD_COUNTERS`] order.
    pub records: [u64; 7],
    /// Batches committed.
    pub batches: u64,
    /// Records written to the dead-letter file.
    pub dead_letters: u64,
    /// Retried writes.
    pub retries: u64,
    /// Times the pipeline was restarted after failing.
    pub restarts: u64,
    /// Messages received and not yet acknowledged.
    pub lag: u64,
    /// When a batch was last committed (unix ms), if ever.
    pub last_commit_ms: Option<i64>,
}

impl PipelineStatus {
    /// A pipeline `name` reading `source` into a `sink` kind, starting at `now_ms`.
    pub fn new(name: &str, source: &str, sink: &str, now_ms: i64) -> PipelineStatus {
        PipelineStatus {
            name: name.to_owned(),
            source: source.to_owned(),
            sink: sink.to_owned(),
            records: Default::default(),
            batches: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            last_commit_ms: AtomicI64::new(i64::MIN),
            state: Mutex::new(StateRecord {
                state: PipelineState::Starting,
                since_ms: now_ms,
                last_error: None,
            }),
        }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `n` to record counter `index` (see [`RECORD_COUNTERS`]).
    pub fn add_records(&self, index: usize, n: u64) {
        if let Some(counter) = self.records.get(index) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A batch was committed at `now_ms`; a retrying pipeline is running again.
    pub fn batch_committed(&self, now_ms: i64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.last_commit_ms.store(now_ms, Ordering::Relaxed);
        let mut state = self.lock();
        if state.state == PipelineState::Retrying {
            state.state = PipelineState::Running;
            state.since_ms = now_ms;
        }
    }

    /// A record went to the dead-letter file.
    pub fn dead_letter(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    /// A write failed with `error` at `now_ms` and will be retried.
    pub fn retrying(&self, error: &str, now_ms: i64) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        if state.state != PipelineState::Retrying {
            state.state = PipelineState::Retrying;
            state.since_ms = now_ms;
        }
        state.last_error = Some((bounded(error), now_ms));
    }

    /// Messages received and not yet acknowledged.
    pub fn set_lag(&self, n: u64) {
        self.lag.store(n, Ordering::Relaxed);
    }

    /// Moves to `state` at `now_ms`; `error` (for [`PipelineState::Failed`]) becomes the last
    /// error. A restart (`Starting` after `Failed`) is counted.
    pub fn set_state(&self, state: PipelineState, error: Option<&str>, now_ms: i64) {
        let mut record = self.lock();
        if state == PipelineState::Starting && record.state == PipelineState::Failed {
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
        if record.state != state {
            record.state = state;
            record.since_ms = now_ms;
        }
        if let Some(error) = error {
            record.last_error = Some((bounded(error), now_ms));
        }
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> StatusSnapshot {
        let state = self.lock().clone();
        let last_commit = self.last_commit_ms.load(Ordering::Relaxed);
        StatusSnapshot {
            name: self.name.clone(),
            source: self.source.clone(),
            sink: self.sink.clone(),
            state: state.state,
            state_since_ms: state.since_ms,
            last_error: state.last_error,
            records: std::array::from_fn(|i| self.records[i].load(Ordering::Relaxed)),
            batches: self.batches.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            lag: self.lag.load(Ordering::Relaxed),
            last_commit_ms: (last_commit != i64::MIN).then_some(last_commit),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateRecord> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `error` cut to at most [`MAX_ERROR_BYTES`] at a char boundary.
fn bounded(error: &str) -> String {
    let mut end = error.len().min(MAX_ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrying_then_a_commit_is_running_again_with_the_error_kept() {
        let status = PipelineStatus::new("p", "a/#", "file", 1);
        status.set_state(PipelineState::Running, None, 2);
        status.retrying("disk full", 3);
        status.retrying("disk full", 4);
        let s = status.snapshot();
        assert_eq!(
            (s.state, s.state_since_ms, s.retries),
            (PipelineState::Retrying, 3, 2)
        );
        assert_eq!(s.last_error, Some(("disk full".to_owned(), 4)));
        status.batch_committed(5);
        let s = status.snapshot();
        assert_eq!(
            (s.state, s.state_since_ms, s.batches),
            (PipelineState::Running, 5, 1)
        );
        assert_eq!(s.last_commit_ms, Some(5));
        assert_eq!(s.last_error, Some(("disk full".to_owned(), 4)));
    }

    #[test]
    fn restarts_are_counted_and_errors_bounded() {
        let status = PipelineStatus::new("p", "a/#", "file", 1);
        assert_eq!(status.snapshot().last_commit_ms, None);
        status.set_state(PipelineState::Failed, Some(&"é".repeat(1000)), 2);
        status.set_state(PipelineState::Starting, None, 3);
        let s = status.snapshot();
        assert_eq!(s.restarts, 1);
        let (error, at) = s.last_error.unwrap();
        assert_eq!((error.len(), at), (MAX_ERROR_BYTES, 2));
        status.add_records(5, 3);
        status.add_records(99, 1); // out of range: ignored
        assert_eq!(status.snapshot().records[5], 3);
    }
}
