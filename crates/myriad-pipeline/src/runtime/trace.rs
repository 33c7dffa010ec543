//! One span per batch commit, continuing the traces the records carried.
//!
//! An MQTT 5 message may carry a W3C `traceparent` user property (the broker rewrites it to
//! its own `mqtt.route` span when tracing is on, see `myriad_broker::trace`). The MQTT
//! source keeps it on each record; when a batch has been committed (or dead-lettered, or
//! abandoned at shutdown) the worker reports one [`BatchSpan`] to the pipeline's
//! [`BatchTracer`], if one is installed. Its parent is the first sampled trace context in
//! the batch (else the first one), and every other distinct context is a link, at most
//! [`MAX_BATCH_LINKS`] (the rest are counted in [`BatchSpan::dropped_links`]). A batch whose
//! records carry none is a root span (sampled as the tracer decides).
//!
//! The tracer is a trait so that this crate does not depend on OpenTelemetry: `myriad serve`
//! installs one that exports over OTLP (crates/myriad/src/observe/otel.rs).

use std::time::SystemTime;

pub use myriad_broker::trace::TraceParent;

/// The most links one batch span carries (distinct trace contexts beyond the parent).
pub const MAX_BATCH_LINKS: usize = 32;

/// The name of the batch span.
pub const BATCH_SPAN: &str = "pipeline.batch";

/// How a batch commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Every record committed by the sink.
    Committed,
    /// The sink took the batch but refused some records (dead-lettered with the reason).
    Partial,
    /// The sink failed until the per-record deadline: the batch went to the dead-letter file.
    DeadLettered,
    /// The grace period after a shutdown ended, or the sink stopped, before the batch was
    /// committed: its records are left to redelivery.
    Abandoned,
}

impl BatchOutcome {
    /// The outcome as the span attribute writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchOutcome::Committed => "committed",
            BatchOutcome::Partial => "partial",
            BatchOutcome::DeadLettered => "dead_lettered",
            BatchOutcome::Abandoned => "abandoned",
        }
    }
}

/// One finished batch commit, as reported to a [`BatchTracer`].
#[derive(Debug, Clone)]
pub struct BatchSpan<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The sink's kind (`file`, `mqtt`, `postgres`, `nats`, `http`).
    pub sink: &'static str,
    /// Records in the batch.
    pub records: usize,
    /// Records the sink committed.
    pub committed: usize,
    /// Sink writes tried (1 when the first one succeeded).
    pub attempts: u32,
    /// How it ended.
    pub outcome: BatchOutcome,
    /// The last sink error, when a write failed.
    pub error: Option<&'a str>,
    /// When the first write started.
    pub start: SystemTime,
    /// When the outcome was known.
    pub end: SystemTime,
    /// The parent: the first sampled trace context of the batch's records, else the first.
    pub parent: Option<TraceParent>,
    /// The other distinct trace contexts, at most [`MAX_BATCH_LINKS`].
    pub links: &'a [TraceParent],
    /// Distinct contexts left out past [`MAX_BATCH_LINKS`].
    pub dropped_links: usize,
}

/// Receives a [`BatchSpan`] per batch commit. Called on the pipeline's worker task, so it
/// must be quick and must not block (an exporter batches and sends elsewhere).
pub trait BatchTracer: Send + Sync + 'static {
    /// A batch commit ended.
    fn batch(&self, span: &BatchSpan<'_>);
}

impl std::fmt::Debug for dyn BatchTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchTracer")
    }
}

/// The parent, the links (distinct, at most [`MAX_BATCH_LINKS`]) and how many were left
/// out, from the records' contexts in batch order.
pub fn parent_and_links<'a>(
    contexts: impl Iterator<Item = &'a TraceParent>,
) -> (Option<TraceParent>, Vec<TraceParent>, usize) {
    let mut all: Vec<TraceParent> = Vec::new();
    let mut dropped = 0usize;
    for context in contexts {
        if all.contains(context) {
            continue;
        }
        // One more than kept links plus the parent: enough to pick the parent and drop the rest.
        if all.len() > MAX_BATCH_LINKS {
            dropped += 1;
            continue;
        }
        all.push(*context);
    }
    let parent_at = all
        .iter()
        .position(TraceParent::sampled)
        .or(if all.is_empty() { None } else { Some(0) });
    let parent = parent_at.map(|i| all.remove(i));
    if all.len() > MAX_BATCH_LINKS {
        dropped += all.len() - MAX_BATCH_LINKS;
        all.truncate(MAX_BATCH_LINKS);
    }
    (parent, all, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(n: u8, sampled: bool) -> TraceParent {
        TraceParent {
            trace_id: [n; 16],
            parent_id: [n; 8],
            flags: u8::from(sampled),
        }
    }

    #[test]
    fn the_first_sampled_context_is_the_parent_and_the_rest_are_links() {
        let contexts = [
            context(1, false),
            context(2, true),
            context(1, false),
            context(3, true),
        ];
        let (parent, links, dropped) = parent_and_links(contexts.iter());
        assert_eq!(parent, Some(context(2, true)));
        assert_eq!(links, vec![context(1, false), context(3, true)]);
        assert_eq!(dropped, 0);

        let (parent, links, _) = parent_and_links([context(4, false)].iter());
        assert_eq!(parent, Some(context(4, false)));
        assert!(links.is_empty());
        let (parent, links, dropped) = parent_and_links([].iter());
        assert_eq!((parent, links.len(), dropped), (None, 0, 0));
    }

    #[test]
    fn links_are_bounded_at_the_limit_and_one_past() {
        let at: Vec<_> = (1..=(MAX_BATCH_LINKS as u8 + 1))
            .map(|n| context(n, true))
            .collect();
        let (parent, links, dropped) = parent_and_links(at.iter());
        assert_eq!(parent, Some(context(1, true)));
        assert_eq!((links.len(), dropped), (MAX_BATCH_LINKS, 0));

        let past: Vec<_> = (1..=(MAX_BATCH_LINKS as u8 + 2))
            .map(|n| context(n, true))
            .collect();
        let (_, links, dropped) = parent_and_links(past.iter());
        assert_eq!((links.len(), dropped), (MAX_BATCH_LINKS, 1));

        // Many more: memory stays bounded, every extra one is counted.
        let many: Vec<_> = (0..1000u32)
            .map(|n| TraceParent {
                trace_id: [(n % 251) as u8 + 1; 16],
                parent_id: n.to_be_bytes().repeat(2).try_into().unwrap(),
                flags: 1,
            })
            .collect();
        let (parent, links, dropped) = parent_and_links(many.iter());
        assert!(parent.is_some());
        assert_eq!(links.len(), MAX_BATCH_LINKS);
        assert_eq!(dropped, 1000 - 1 - MAX_BATCH_LINKS);
    }
}
