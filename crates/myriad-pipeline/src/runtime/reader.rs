//! The loop shared by the pulled sources (PostgreSQL, the telemetry store): a [`Reader`]
//! produces records on demand; this loop hands them to the worker with at most `in_flight`
//! not done, moves the reader's checkpoint only past a done prefix (the in-order
//! [`Window`]), saves it atomically at most every [`CHECKPOINT_EVERY`] and when idle, and
//! ends the pipeline as `finished` once a one-shot reader has nothing more and every record
//! it produced is done.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::window::Window;
use super::{Counters, Ended, Item, Outcome, RETRY_MAX, RETRY_MIN, RuntimeError};
use crate::record;

/// How often the checkpoint is written while records are done (and when the source idles).
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// The largest checkpoint file read at start-up.
pub const MAX_CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;

/// One record a reader produced, and what its being done moves the checkpoint to.
pub(crate) struct Produced<T> {
    pub token: T,
    pub topic: String,
    pub payload: Bytes,
    /// Set when the record cannot be taken as it is: dead-lettered with this reason.
    pub error: Option<String>,
}

/// What a read gave.
pub(crate) enum Read<T> {
    /// Records (at least one).
    Records(Vec<Produced<T>>),
    /// Nothing new now: ask again after the poll interval.
    Idle,
    /// Nothing more ever (a one-shot query or range).
    Finished,
    /// The source cannot go on in this run (a query's cursor lost mid-stream): what was
    /// handed out drains, then the pipeline ends with this error (and is restarted).
    Failed(String),
}

/// A pulled source.
pub(crate) trait Reader: Send {
    /// What a done record moves the checkpoint to.
    type Token: Send;
    /// Up to `max` (>= 1) records. An error is logged and the read tried again later.
    fn read(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Read<Self::Token>, String>> + Send;
    /// `token`'s record and every one before it are done (called for each, in order).
    fn done(&mut self, token: Self::Token);
    /// The checkpoint as it stands (JSON, written atomically by the loop).
    fn checkpoint(&self) -> Value;
}

/// Loads a checkpoint written by [`save_checkpoint`]: `None` when there is none, or when it is
/// unreadable (logged: reading again from the start is at least once).
pub(crate) fn load_checkpoint(path: &Path) -> Option<Value> {
    let read = || -> Result<Option<Value>, String> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut text = String::new();
        io::Read::read_to_string(
            &mut io::Read::take(file, MAX_CHECKPOINT_BYTES + 1),
            &mut text,
        )
        .map_err(|e| e.to_string())?;
        if text.len() as u64 > MAX_CHECKPOINT_BYTES {
            return Err(format!("larger than {MAX_CHECKPOINT_BYTES} bytes"));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| e.to_string())
    };
    read().unwrap_or_else(|error| {
        tracing::warn!(checkpoint = %path.display(), %error, "unreadable checkpoint: reading from the start");
        None
    })
}

/// Writes `value` to `path` atomically (temporary file, fsync, rename, directory fsync).
pub(crate) fn save_checkpoint(path: &Path, value: &Value) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A 64-bit FNV-1a hash of `parts` (what a checkpoint was made for: a changed query, table
/// or range starts over instead of resuming someone else's position).
pub(crate) fn fingerprint(parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_bytes().iter().chain(&[0xff]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

async fn save(path: &Path, value: Value) {
    let path = path.to_owned();
    let written = tokio::task::spawn_blocking(move || save_checkpoint(&path, &value))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
    if let Err(error) = written {
        tracing::warn!(%error, "source: cannot write the checkpoint");
    }
}

/// Opens the reader with `open` (on the blocking pool: it reads its checkpoint), then runs it
/// into the worker until it is finished and drained (`Ended::Finished`),
/// `shutdown` (the worker drains; `Ended::Stopped`) or `hard`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run<R: Reader + 'static>(
    open: impl FnOnce() -> R + Send + 'static,
    what: &str,
    checkpoint: &Path,
    poll: Duration,
    in_flight: usize,
    items: mpsc::Sender<Item>,
    mut done: mpsc::UnboundedReceiver<u64>,
    shutdown: &CancellationToken,
    hard: &CancellationToken,
    counters: Counters,
) -> Result<Ended, RuntimeError> {
    // Opening reads its checkpoint: on the blocking pool.
    let mut reader = super::off_loop(open).await?;
    let mut window: Window<R::Token> = Window::new();
    let mut items = Some(items);
    let mut pending: std::collections::VecDeque<Item> = std::collections::VecDeque::new();
    let mut dirty = false;
    let mut finished = false;
    let mut failed: Option<String> = None;
    let mut last_save = tokio::time::Instant::now();
    let mut idle_until: Option<tokio::time::Instant> = None;
    let mut error_delay = RETRY_MIN;
    loop {
        if pending.is_empty()
            && items.is_some()
            && !finished
            && window.len() < in_flight
            && idle_until.is_none()
        {
            let room = in_flight.saturating_sub(window.len());
            let read = tokio::select! {
                read = reader.read(room) => Some(read),
                () = shutdown.cancelled() => None,
            };
            match read {
                None => {}
                Some(Ok(Read::Records(records))) => {
                    error_delay = RETRY_MIN;
                    for r in records {
                        let seq = window.push(r.token);
                        pending.push_back(Item {
                            seq,
                            topic: r.topic,
                            payload: r.payload,
                            qos: record::QoS::AtLeastOnce,
                            error: r.error,
                            user_properties: record::UserProperties::new(),
                            trace: None,
                        });
                    }
                }
                Some(Ok(Read::Idle)) => {
                    error_delay = RETRY_MIN;
                    idle_until = Some(tokio::time::Instant::now() + poll);
                }
                Some(Ok(Read::Finished)) => {
                    finished = true;
                    // Saved once drained (a one-shot source notes that it ran).
                    dirty = true;
                }
                Some(Ok(Read::Failed(error))) => {
                    tracing::warn!(source = what, %error, "source: cannot go on; draining, then restarting");
                    failed = Some(error);
                    items = None;
                    pending.clear();
                }
                Some(Err(error)) => {
                    tracing::warn!(source = what, %error, retry_in_ms = error_delay.as_millis() as u64, "source: read failed; trying again");
                    counters.retry(&format!("{what} read: {error}"));
                    idle_until = Some(tokio::time::Instant::now() + error_delay);
                    error_delay = (error_delay * 2).min(RETRY_MAX);
                }
            }
        }
        if finished && pending.is_empty() && items.is_some() {
            // Everything read: the worker drains what it holds and ends.
            items = None;
        }
        if dirty && (last_save.elapsed() >= CHECKPOINT_EVERY || idle_until.is_some()) {
            save(checkpoint, reader.checkpoint()).await;
            dirty = false;
            last_save = tokio::time::Instant::now();
        }
        let can_send = items.is_some() && !pending.is_empty();
        let mut stop = false;
        tokio::select! {
            biased;
            finished_seq = done.recv() => {
                let Some(seq) = finished_seq else {
                    if dirty {
                        save(checkpoint, reader.checkpoint()).await;
                    }
                    return if let Some(error) = failed {
                        Err(RuntimeError::SourceEnded(error))
                    } else if finished && window.len() == 0 {
                        Ok(Ended::Finished)
                    } else if shutdown.is_cancelled() {
                        Ok(Ended::Stopped)
                    } else {
                        Err(RuntimeError::SourceEnded("the worker stopped".to_owned()))
                    };
                };
                window.mark_reported(seq, &mut done);
                for token in window.take_done() {
                    reader.done(token);
                    dirty = true;
                }
                counters.lag(window.len());
            }
            () = hard.cancelled() => {
                if dirty {
                    save(checkpoint, reader.checkpoint()).await;
                }
                return Ok(Ended::Stopped);
            }
            () = shutdown.cancelled(), if items.is_some() => stop = true,
            permit = super::files::reserve(&items), if can_send => {
                let Some(permit) = permit else { return Ok(Ended::Stopped) };
                if let Some(item) = pending.pop_front() {
                    counters.records(Outcome::Received, 1);
                    counters.lag(window.len());
                    permit.send(item);
                }
            }
            () = async {
                if let Some(at) = idle_until { tokio::time::sleep_until(at).await }
            }, if idle_until.is_some() => {
                idle_until = None;
            }
        }
        if stop {
            items = None;
            pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_and_damage_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp/x.checkpoint");
        assert_eq!(load_checkpoint(&path), None);
        let value = serde_json::json!({"last": 42});
        save_checkpoint(&path, &value).unwrap();
        assert_eq!(load_checkpoint(&path), Some(value));
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load_checkpoint(&path), None);
    }

    #[test]
    fn fingerprints_separate_parts() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["q"]), fingerprint(&["q"]));
        assert_eq!(fingerprint(&["q"]).len(), 16);
    }
}
