//! The HTTP ingest source (`source = { type = "http" }`): request bodies streamed in by
//! `POST /api/v1/pipelines/{name}/records`, one JSON value per line (NDJSON). Each line is a
//! record with the topic `http/{pipeline}`.
//!
//! # Guarantees
//!
//! - **Backpressure**: a body is read only as fast as the pipeline takes its lines: at most
//!   `in_flight` lines of the pipeline are handed out and not done, and at most
//!   [`QUEUE_LINES`] wait in front of it (shared by every request to the pipeline). A request
//!   holds at most one body chunk and one partial line besides.
//! - **At least once for the caller**: [`IngestHandle::ingest`] returns only once every line
//!   of the body is done (committed by the sink, filtered out by WHERE, or dead-lettered).
//!   If the pipeline stops or fails first, it returns [`IngestError::Stopped`] (the API
//!   answers 503): some lines may be committed, the caller sends the body again.
//! - **Bad lines**: a line longer than `max_line_bytes` (its first `max_line_bytes`) and a
//!   line that is not one JSON value go to the dead-letter file with the reason, and the
//!   rest of the body goes on. Both count as `dead_lettered`.
//! - **Body size**: more than `max_body_bytes` fails the request with
//!   [`IngestError::TooLarge`] (413); lines before the limit may be committed.
//!
//! # Limits
//!
//! | bound | value |
//! |---|---|
//! | `max_line_bytes` | 1 ..= [`super::files::MAX_LINE_BYTES`] (default 1 MiB) |
//! | `max_body_bytes` | 1 ..= [`MAX_BODY_BYTES`] (default 64 MiB) |
//! | lines queued in front of the pipeline | [`QUEUE_LINES`] |

use std::fmt::Display;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use thiserror::Error;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::window::Window;
use super::{Counters, Item, Outcome, RuntimeError};
use crate::lines::{LineSplitter, json_error};
use crate::record;

/// The largest `max_body_bytes`: 1 GiB.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024 * 1024;
/// Lines waiting in front of a pipeline (read from bodies, not yet handed to it).
pub const QUEUE_LINES: usize = 16;

/// `source = { type = "http", max_line_bytes, max_body_bytes }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSourceConfig {
    /// A longer line is dead-lettered (its first `max_line_bytes`).
    pub max_line_bytes: usize,
    /// The most bytes of one request body.
    pub max_body_bytes: u64,
    /// Where request bodies' lines wait for the pipeline.
    pub queue: IngestQueue,
}

impl HttpSourceConfig {
    /// A config with its own queue.
    pub fn new(max_line_bytes: usize, max_body_bytes: u64) -> HttpSourceConfig {
        HttpSourceConfig {
            max_line_bytes,
            max_body_bytes,
            queue: IngestQueue::new(),
        }
    }

    /// Checks the ranges; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=super::files::MAX_LINE_BYTES).contains(&self.max_line_bytes) {
            return Err(format!(
                "max_line_bytes: {} is out of range (1 ..= {})",
                self.max_line_bytes,
                super::files::MAX_LINE_BYTES
            ));
        }
        if !(1..=MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            return Err(format!(
                "max_body_bytes: {} is out of range (1 ..= {MAX_BODY_BYTES})",
                self.max_body_bytes
            ));
        }
        Ok(())
    }

    /// What request handlers stream bodies into.
    pub fn handle(&self) -> IngestHandle {
        IngestHandle {
            lines: self.queue.tx.clone(),
            max_line_bytes: self.max_line_bytes,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// The queue between request handlers and the pipeline's source. Clones share it; it
/// outlives restarts of the pipeline (lines queued wait for the next run) and goes away with
/// the last clone (handlers still sending then get [`IngestError::Stopped`]).
#[derive(Clone)]
pub struct IngestQueue {
    tx: mpsc::Sender<IngestLine>,
    rx: Arc<Mutex<mpsc::Receiver<IngestLine>>>,
}

impl IngestQueue {
    fn new() -> IngestQueue {
        let (tx, rx) = mpsc::channel(QUEUE_LINES);
        IngestQueue {
            tx,
            rx: Arc::new(Mutex::new(rx)),
        }
    }
}

impl PartialEq for IngestQueue {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.rx, &other.rx)
    }
}

impl Eq for IngestQueue {}

impl std::fmt::Debug for IngestQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestQueue").finish_non_exhaustive()
    }
}

/// One line on its way, with the tally of its request.
struct IngestLine {
    tally: Arc<Tally>,
    payload: Bytes,
    error: Option<String>,
}

/// A request's lines done so far. Dropped with the last line (and the request's own
/// reference): a request whose tally is gone before all its lines are done lost some.
struct Tally {
    progress: watch::Sender<Progress>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    done: u64,
    dead: u64,
}

/// What a request's lines became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestReport {
    /// Lines committed by the sink or filtered out by the rule's WHERE.
    pub accepted: u64,
    /// Lines written to the dead-letter file (too long, not JSON, refused by the sink).
    pub dead_lettered: u64,
}

/// Why a request's body was not taken whole.
#[derive(Debug, Error)]
pub enum IngestError {
    /// The body is larger than `max_body_bytes`.
    #[error("the body is larger than {limit} bytes (the source's max_body_bytes)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body could not be read.
    #[error("cannot read the body: {0}")]
    Body(String),
    /// The pipeline stopped (deleted, restarted, the server shutting down) before every
    /// line was done; send the body again.
    #[error("the pipeline stopped before every line was committed; send the body again")]
    Stopped,
}

/// Streams request bodies into one pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IngestHandle {
    lines: mpsc::Sender<IngestLine>,
    max_line_bytes: usize,
    max_body_bytes: u64,
}

impl IngestHandle {
    /// The most bytes of one body.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }

    /// Feeds `body` line by line into the pipeline (waiting whenever it is full) and
    /// returns once every line is done (see the [module docs](self)).
    pub async fn ingest<S, E>(&self, body: S) -> Result<IngestReport, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Display,
    {
        let (progress, mut watch) = watch::channel(Progress::default());
        let tally = Arc::new(Tally { progress });
        let mut splitter = LineSplitter::new(self.max_line_bytes);
        let mut lines = Vec::new();
        let (mut sent, mut seen) = (0u64, 0u64);
        let mut body = std::pin::pin!(body);
        loop {
            let next = body.next().await;
            let finished = match next {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| IngestError::Body(e.to_string()))?;
                    seen = seen.saturating_add(chunk.len() as u64);
                    if seen > self.max_body_bytes {
                        return Err(IngestError::TooLarge {
                            limit: self.max_body_bytes,
                        });
                    }
                    splitter.push(&chunk, &mut lines);
                    false
                }
                None => {
                    lines.extend(splitter.finish());
                    true
                }
            };
            for line in lines.drain(..) {
                let error = if line.too_long {
                    Some(format!(
                        "line longer than {} bytes (max_line_bytes)",
                        self.max_line_bytes
                    ))
                } else {
                    json_error(&line.bytes)
                };
                let line = IngestLine {
                    tally: tally.clone(),
                    payload: Bytes::from(line.bytes),
                    error,
                };
                self.lines
                    .send(line)
                    .await
                    .map_err(|_| IngestError::Stopped)?;
                sent += 1;
            }
            if finished {
                break;
            }
        }
        // From here the lines hold the tally: once the last is dropped, the wait ends.
        drop(tally);
        let report = |p: &Progress| IngestReport {
            accepted: p.done - p.dead,
            dead_lettered: p.dead,
        };
        let waited = watch.wait_for(|p| p.done >= sent).await.map(|p| *p);
        match waited {
            Ok(progress) => Ok(report(&progress)),
            Err(_) => {
                let progress = *watch.borrow();
                if progress.done >= sent {
                    Ok(report(&progress))
                } else {
                    Err(IngestError::Stopped)
                }
            }
        }
    }
}

/// A line handed to the worker: its request's tally, and whether it was dead-lettered.
struct Entry {
    tally: Arc<Tally>,
    dead: bool,
}

/// Hands queued lines to the worker (at most `in_flight` not done) and counts them done on
/// their requests' tallies, until `shutdown` (then the worker drains) or `hard`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_source(
    queue: IngestQueue,
    topic: String,
    in_flight: usize,
    items: mpsc::Sender<Item>,
    mut done: mpsc::UnboundedReceiver<u64>,
    mut dead: mpsc::UnboundedReceiver<u64>,
    shutdown: &CancellationToken,
    hard: &CancellationToken,
    counters: Counters,
) -> Result<(), RuntimeError> {
    // One run at a time takes from the queue (a restarted run waits for the last to end).
    let mut lines = queue.rx.clone().lock_owned().await;
    let mut window: Window<Entry> = Window::new();
    let mut items = Some(items);
    loop {
        let room = items.is_some() && window.len() < in_flight;
        tokio::select! {
            biased;
            finished = done.recv() => {
                let Some(seq) = finished else {
                    return if shutdown.is_cancelled() {
                        Ok(())
                    } else {
                        Err(RuntimeError::SourceEnded("the worker stopped".to_owned()))
                    };
                };
                // The worker reports a dead letter before reporting it done.
                mark_dead(&mut window, &mut dead);
                window.mark_reported(seq, &mut done);
                mark_dead(&mut window, &mut dead);
                for entry in window.take_done() {
                    entry.tally.progress.send_modify(|p| {
                        p.done += 1;
                        p.dead += u64::from(entry.dead);
                    });
                }
                counters.lag(window.len());
            }
            () = hard.cancelled() => return Ok(()),
            () = shutdown.cancelled(), if items.is_some() => {
                // Take no more lines; the worker drains what it has and ends.
                items = None;
            }
            line = lines.recv(), if room => {
                // The queue's sender lives in the config this run holds: never closed here.
                let (Some(line), Some(sender)) = (line, &items) else { continue };
                let seq = window.push(Entry { tally: line.tally, dead: false });
                counters.records(Outcome::Received, 1);
                counters.lag(window.len());
                let item = Item {
                    seq,
                    topic: topic.clone(),
                    payload: line.payload,
                    qos: record::QoS::AtLeastOnce,
                    user_properties: record::UserProperties::new(),
                    trace: None,
                    error: line.error,
                };
                if sender.send(item).await.is_err() {
                    return Err(RuntimeError::SourceEnded("the worker stopped".to_owned()));
                }
            }
        }
    }
}

/// Flags the lines the worker reported as dead-lettered.
fn mark_dead(window: &mut Window<Entry>, dead: &mut mpsc::UnboundedReceiver<u64>) {
    while let Ok(seq) = dead.try_recv() {
        if let Some(entry) = window.get_mut(seq) {
            entry.dead = true;
        }
    }
}
