//! What the console's data routes share ([`Console`], in [`crate::ApiState`]):
//! the event bus, the per-device event journal, the overview samples
//! ([`OverviewSource`], implemented by the binary's sampler), the broker for
//! in-process queries, and the cap on open event streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use myriad_broker::shell::BrokerHandle;
use myriad_fleet::events::journal::DeviceJournal;
use myriad_fleet::events::{EventBus, OverviewSample};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// Default of `api.max_event_streams`: event streams open at once.
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 256;

/// A leak watchdog alert standing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct WatchdogAlertView {
    /// `task_deviation`, `socket_deviation` or `memory_growth`.
    pub kind: String,
    /// What the watchdog saw.
    pub message: String,
    /// Since when it stands (unix ms).
    pub since_ms: u64,
}

/// The platform's numbers now.
#[derive(Debug, Clone, PartialEq, Default, Serialize, ToSchema)]
pub struct OverviewNow {
    /// Open network MQTT connections.
    pub connections: u64,
    /// Sessions, online and offline.
    pub sessions: u64,
    /// Devices connected.
    pub online_devices: u64,
    /// Devices registered.
    pub registered_devices: u64,
    /// PUBLISH packets received per second (last sample).
    pub messages_in_per_sec: f64,
    /// PUBLISH packets sent per second (last sample).
    pub messages_out_per_sec: f64,
    /// Messages dropped since start (full queues, slow consumers).
    pub dropped_total: u64,
    /// Messages dropped per second (last sample).
    pub dropped_per_sec: f64,
    /// 99th percentile of store commits in the last sample's window, ms.
    pub store_commit_p99_ms: f64,
    /// Leak watchdog alerts standing now.
    pub watchdog_alerts: Vec<WatchdogAlertView>,
}

/// One sample of the history (one every 5 s).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, ToSchema)]
pub struct OverviewPoint {
    /// When it was taken (unix ms).
    pub at_ms: u64,
    /// Open network MQTT connections.
    pub connections: u64,
    /// Sessions, online and offline.
    pub sessions: u64,
    /// PUBLISH packets received per second.
    pub messages_in_per_sec: f64,
    /// PUBLISH packets sent per second.
    pub messages_out_per_sec: f64,
    /// Messages dropped per second.
    pub dropped_per_sec: f64,
    /// 99th percentile of store commits, ms (0 without commits).
    pub store_commit_p99_ms: f64,
}

impl From<OverviewSample> for OverviewPoint {
    fn from(s: OverviewSample) -> Self {
        OverviewPoint {
            at_ms: s.at_ms,
            connections: s.connections,
            sessions: s.sessions,
            messages_in_per_sec: s.messages_in_per_sec,
            messages_out_per_sec: s.messages_out_per_sec,
            dropped_per_sec: s.dropped_per_sec,
            store_commit_p99_ms: s.store_commit_p99_ms,
        }
    }
}

/// The numbers now and the last hour of samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OverviewReport {
    /// Now.
    pub now: OverviewNow,
    /// Oldest first.
    pub history: Vec<OverviewPoint>,
}

/// Where `GET /api/v1/overview` gets its numbers (the binary samples them).
pub trait OverviewSource: Send + Sync + 'static {
    /// The latest numbers and the history.
    fn overview(&self) -> OverviewReport;
}

/// No sampler: zeros and no history (tests, embedders).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoOverview;

impl OverviewSource for NoOverview {
    fn overview(&self) -> OverviewReport {
        OverviewReport::default()
    }
}

/// The console's shared parts. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    /// The services' change events.
    pub bus: EventBus,
    /// Recent events per device and recent presence changes (fed from `bus`
    /// by [`DeviceJournal::run`], which the server spawns).
    pub journal: Arc<DeviceJournal>,
    /// The overview numbers.
    pub overview: Arc<dyn OverviewSource>,
    /// The broker, for sessions and retained messages.
    pub broker: BrokerHandle,
    /// Event streams open at once at most (`api.max_event_streams`).
    pub max_event_streams: usize,
    /// Cancelled at shutdown: every event stream ends.
    pub shutdown: CancellationToken,
    /// Event streams open now.
    pub(crate) streams: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("max_event_streams", &self.max_event_streams)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// The console over `bus`, `journal` and `broker`, with no overview
    /// sampler, [`DEFAULT_MAX_EVENT_STREAMS`] and a shutdown token of its own.
    pub fn new(bus: EventBus, journal: Arc<DeviceJournal>, broker: BrokerHandle) -> Console {
        Console {
            bus,
            journal,
            overview: Arc::new(NoOverview),
            broker,
            max_event_streams: DEFAULT_MAX_EVENT_STREAMS,
            shutdown: CancellationToken::new(),
            streams: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The same with `source` for the overview.
    pub fn with_overview(self, source: Arc<dyn OverviewSource>) -> Console {
        Console {
            overview: source,
            ..self
        }
    }

    /// The same with at most `max` event streams open at once.
    pub fn with_max_event_streams(self, max: usize) -> Console {
        Console {
            max_event_streams: max,
            ..self
        }
    }

    /// The same, ending every event stream when `shutdown` is cancelled.
    pub fn with_shutdown(self, shutdown: CancellationToken) -> Console {
        Console { shutdown, ..self }
    }

    /// Event streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Takes one of the stream places, or `None` when all are taken.
    pub(crate) fn open_stream(&self) -> Option<StreamSlot> {
        let max = self.max_event_streams;
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| StreamSlot(self.streams.clone()))
    }
}

/// One open event stream's place; given back when dropped.
#[derive(Debug)]
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_places_are_capped_and_given_back() {
        let (broker, _events) = myriad_broker::shell::channel();
        let console =
            Console::new(EventBus::new(4), Arc::default(), broker).with_max_event_streams(2);
        let a = console.open_stream().expect("first");
        let b = console.open_stream().expect("second");
        assert!(console.open_stream().is_none());
        assert_eq!(console.open_streams(), 2);
        drop(a);
        let c = console.open_stream().expect("a place came back");
        drop((b, c));
        assert_eq!(console.open_streams(), 0);
    }
}
