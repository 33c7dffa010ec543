//! Counters, the latency histogram, message stamps, and loss/duplicate tracking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Size of the stamp at the front of every simulated payload.
pub const STAMP_LEN: usize = 20;

/// Largest sequence number tracked (bounds the loss/duplicate bitmaps).
pub const MAX_TRACKED_SEQ: u64 = 1 << 28;

/// What a simulated publisher writes at the front of each payload:
/// send time (ns since the run's epoch), publisher index, sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Nanoseconds since the run's [`Clock`] epoch when the message was queued.
    pub sent_ns: u64,
    /// Index of the publisher.
    pub publisher: u32,
    /// Sequence number within the publisher, from 0.
    pub seq: u64,
}

impl Stamp {
    /// A payload of `size` bytes (at least [`STAMP_LEN`]) starting with the stamp.
    pub fn payload(&self, size: usize) -> Bytes {
        let mut buf = BytesMut::with_capacity(size.max(STAMP_LEN));
        buf.put_u64(self.sent_ns);
        buf.put_u32(self.publisher);
        buf.put_u64(self.seq);
        buf.resize(size.max(STAMP_LEN), b'.');
        buf.freeze()
    }

    /// Reads the stamp back; `None` when the payload is too short to hold one.
    pub fn parse(payload: &[u8]) -> Option<Stamp> {
        let sent_ns = u64::from_be_bytes(payload.get(0..8)?.try_into().ok()?);
        let publisher = u32::from_be_bytes(payload.get(8..12)?.try_into().ok()?);
        let seq = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
        Some(Stamp {
            sent_ns,
            publisher,
            seq,
        })
    }
}

/// The run's time base: all stamps and latencies are measured from one epoch
/// in this process, so no clock synchronisation is needed.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Whether a tracked message was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First delivery.
    Fresh,
    /// Delivered before.
    Duplicate,
    /// Sequence number beyond [`MAX_TRACKED_SEQ`]: not ours or corrupt.
    Invalid,
}

/// Which (publisher, sequence) pairs one receiver (or one shared group) got.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    seen: HashMap<u32, Vec<u64>>,
    unique: u64,
    duplicates: u64,
    invalid: u64,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Records one delivery.
    pub fn record(&mut self, publisher: u32, seq: u64) -> Seen {
        if seq >= MAX_TRACKED_SEQ {
            self.invalid += 1;
            return Seen::Invalid;
        }
        let bits = self.seen.entry(publisher).or_default();
        let word = (seq / 64) as usize;
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let mask = 1u64 << (seq % 64);
        if bits[word] & mask != 0 {
            self.duplicates += 1;
            Seen::Duplicate
        } else {
            bits[word] |= mask;
            self.unique += 1;
            Seen::Fresh
        }
    }

    /// Distinct messages received.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Repeated deliveries.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Deliveries that carried no valid stamp.
    pub fn invalid(&self) -> u64 {
        self.invalid
    }

    /// Distinct messages from `publisher` with sequence numbers below `sent`.
    pub fn unique_below(&self, publisher: u32, sent: u64) -> u64 {
        let Some(bits) = self.seen.get(&publisher) else {
            return 0;
        };
        let full_words = (sent / 64) as usize;
        let mut count: u64 = bits
            .iter()
            .take(full_words)
            .map(|word| u64::from(word.count_ones()))
            .sum();
        let rest = sent % 64;
        if rest > 0
            && let Some(word) = bits.get(full_words)
        {
            count += u64::from((word & ((1u64 << rest) - 1)).count_ones());
        }
        count
    }
}

/// End-to-end latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct LatencySummary {
    /// Number of samples.
    pub latency_samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// An empty histogram (1 µs to 1 h, 3 significant digits, auto-resizing).
    pub fn new() -> Latency {
        let mut histogram =
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid");
        histogram.auto(true);
        Latency { histogram }
    }

    /// Records one sample given in nanoseconds.
    pub fn record_ns(&mut self, nanos: u64) {
        let micros = (nanos / 1000).max(1);
        // Auto-resize makes recording infallible for any u64.
        let _ = self.histogram.record(micros);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.histogram.add(&other.histogram);
    }

    /// Percentiles in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let ms = |micros: u64| micros as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            latency_samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: (h.mean()).round() / 1000.0,
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

/// Live counters shared by all tasks of a run (read by the progress line).
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections established.
    pub connected: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failed: AtomicU64,
    /// Connections lost after being established.
    pub dropped: AtomicU64,
    /// Messages published.
    pub sent: AtomicU64,
    /// QoS 1/2 publications acknowledged by the broker.
    pub acked: AtomicU64,
    /// Messages received by subscribers (duplicates included).
    pub received: AtomicU64,
    /// Distinct messages received (per receiving subscriber or shared group).
    pub unique: AtomicU64,
    /// PINGRESPs received.
    pub pongs: AtomicU64,
    /// Generic event counter for scenarios (commands answered, reconnects, ...).
    pub events: AtomicU64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip_and_padding() {
        let stamp = Stamp {
            sent_ns: 123_456_789,
            publisher: 7,
            seq: 42,
        };
        let payload = stamp.payload(64);
        assert_eq!(payload.len(), 64);
        assert_eq!(Stamp::parse(&payload), Some(stamp));
        assert_eq!(stamp.payload(4).len(), STAMP_LEN);
        assert_eq!(Stamp::parse(&payload[..19]), None);
        assert_eq!(Stamp::parse(b""), None);
    }

    #[test]
    fn tracker_counts_unique_and_duplicates() {
        let mut tracker = Tracker::new();
        assert_eq!(tracker.record(1, 0), Seen::Fresh);
        assert_eq!(tracker.record(1, 65), Seen::Fresh);
        assert_eq!(tracker.record(1, 0), Seen::Duplicate);
        assert_eq!(tracker.record(2, 0), Seen::Fresh);
        assert_eq!(tracker.record(2, MAX_TRACKED_SEQ), Seen::Invalid);
        assert_eq!(tracker.unique(), 3);
        assert_eq!(tracker.duplicates(), 1);
        assert_eq!(tracker.invalid(), 1);
        assert_eq!(tracker.unique_below(1, 65), 1);
        assert_eq!(tracker.unique_below(1, 66), 2);
        assert_eq!(tracker.unique_below(3, 10), 0);
    }

    #[test]
    fn latency_percentiles() {
        let mut latency = Latency::new();
        for ms in 1..=1000u64 {
            latency.record_ns(ms * 1_000_000);
        }
        let mut other = Latency::new();
        other.record_ns(5_000_000_000);
        latency.merge(&other);
        let summary = latency.summary();
        assert_eq!(summary.latency_samples, 1001);
        assert!((summary.p50_ms - 500.0).abs() < 2.0, "{summary:?}");
        assert!((summary.p99_ms - 990.0).abs() < 5.0, "{summary:?}");
        assert!(summary.max_ms >= 4990.0, "{summary:?}");
        assert_eq!(Latency::new().summary().latency_samples, 0);
    }
}
