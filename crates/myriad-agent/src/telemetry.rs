//! Telemetry store-and-forward, end to end (feature `client`): the application hands points
//! to [`Telemetry::send_points`], which returns once they are durable in the
//! [`crate::spool::Spool`]; a pump task publishes the spool's records on
//! `devices/{id}/telemetry` at QoS 1 over the [`crate::client`] connection, several in flight
//! (a bounded window), and acknowledges them in the spool ([`Spool::ack`]) only after their
//! PUBACK, in order.
//!
//! # Order: every point goes through the spool
//!
//! The telemetry store refuses a sample more than one hour older than its series' newest
//! ([`crate::replay`]): live points sent ahead of an old backlog would make the backlog
//! unstorable. So there is no "live" path beside the spool: every point is appended to the
//! spool and published in the spool's order. [`crate::replay::Replay`] paces the backlog
//! only: the records that were in the spool when the connection came up go out at
//! [`crate::replay::ReplayConfig::records_per_sec`] (bucket [`ReplayConfig::burst`]);
//! records appended after it went up follow the backlog without pacing. Live data waits
//! behind the backlog, by design: its order is what keeps it storable.
//!
//! # Guarantees
//!
//! - A point for which [`Telemetry::send_points`] returned `Ok` is on disk; it is deleted
//!   from the spool only after the broker's PUBACK for its record (the platform acknowledges
//!   a telemetry publish once the store has it, docs/topics.md).
//! - After a kill -9, the records published but not acknowledged are published again; the
//!   telemetry store drops a point whose series already holds its timestamp, so it holds each
//!   point once. The points carry the timestamps they were handed over with.
//! - While offline the spool grows up to its cap; then its oldest segments are dropped and
//!   counted ([`TelemetryStats::dropped_points`]).
//! - A record the broker refuses with an MQTT 5 PUBACK failure reason (e.g. not authorized)
//!   would never be taken: it is acknowledged in the spool and counted in
//!   [`TelemetryStats::refused`], so it cannot block the records behind it.
//!
//! # Limits
//!
//! | limit | value | one past |
//! |---|---|---|
//! | records in flight (published, PUBACK awaited) | [`TelemetryConfig::window`], default 8, 1 ..= [`MAX_WINDOW`] (256) | [`TelemetryError::Config`] |
//! | points per [`Telemetry::send_points`] | [`MAX_SEND_POINTS`] (100,000), split into records of [`crate::spool::MAX_POINTS`] | [`TelemetryError::TooMany`] |
//! | the spool | [`crate::spool::SpoolConfig`] | oldest segments dropped, counted |

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, ConnState, Delivery, Qos};
use crate::fs::LogFs;
use crate::replay::{Next, Replay, ReplayConfig};
use crate::spool::{MAX_RECORD_BYTES, Point, Spool, SpoolError, SpoolStats};

/// Largest [`TelemetryConfig::window`].
pub const MAX_WINDOW: usize = 256;
/// Most points in one [`Telemetry::send_points`].
pub const MAX_SEND_POINTS: usize = 100_000;

/// The pump's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The topic, `devices/{id}/telemetry`.
    pub topic: String,
    /// Records published and waiting for their PUBACK, at most.
    pub window: usize,
    /// The backlog's pace.
    pub replay: ReplayConfig,
}

impl TelemetryConfig {
    /// The defaults for device `id`: a window of 8, the default pace.
    pub fn new(id: &str) -> TelemetryConfig {
        TelemetryConfig {
            topic: format!("devices/{id}/telemetry"),
            window: 8,
            replay: ReplayConfig::default(),
        }
    }
}

/// Why a telemetry call failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The spool failed (the points are not durable).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A setting out of bounds (named).
    #[error("telemetry config: {0}")]
    Config(String),
    /// More than [`MAX_SEND_POINTS`] points in one call.
    #[error("{0} points in one call, at most {MAX_SEND_POINTS}")]
    TooMany(usize),
    /// The pump stopped (cancelled).
    #[error("telemetry stopped")]
    Stopped,
}

/// Counters for the application.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryStats {
    /// Points handed over ([`Telemetry::send_points`] returned `Ok`), since start.
    pub points_in: u64,
    /// Records published (again after a restart or reconnect too), since start.
    pub sent: u64,
    /// Records acknowledged by the broker, since start.
    pub acked: u64,
    /// Records the broker refused (MQTT 5 failure reason), since start.
    pub refused: u64,
    /// The spool's counters (dropped records and points over the cap, persisted, pending).
    pub spool: SpoolStats,
}

impl TelemetryStats {
    /// Points dropped over the spool's cap since the spool was created.
    pub fn dropped_points(&self) -> u64 {
        self.spool.dropped_points
    }
}

struct Inner<F: LogFs> {
    spool: Mutex<Spool<F>>,
    wake: Notify,
    points_in: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
}

/// The application's handle (cheap to clone).
pub struct Telemetry<F: LogFs> {
    inner: Arc<Inner<F>>,
}

impl<F: LogFs> Clone for Telemetry<F> {
    fn clone(&self) -> Self {
        Telemetry {
            inner: self.inner.clone(),
        }
    }
}

fn lock<F: LogFs>(inner: &Inner<F>) -> std::sync::MutexGuard<'_, Spool<F>> {
    // A panic while holding the lock leaves a spool whose files are still consistent (every
    // operation is durable or undone on the next open): go on.
    inner.spool.lock().unwrap_or_else(|p| p.into_inner())
}

impl<F: LogFs + Send + 'static> Telemetry<F> {
    /// Starts the pump on the current tokio runtime; it ends when `cancel` is cancelled.
    pub fn start(
        client: Client,
        spool: Spool<F>,
        config: TelemetryConfig,
        cancel: CancellationToken,
    ) -> Result<(Telemetry<F>, JoinHandle<()>), TelemetryError> {
        if !(1..=MAX_WINDOW).contains(&config.window) {
            return Err(TelemetryError::Config(format!(
                "window {} not in 1..={MAX_WINDOW}",
                config.window
            )));
        }
        config
            .replay
            .validate()
            .map_err(|e| TelemetryError::Config(e.to_string()))?;
        let inner = Arc::new(Inner {
            spool: Mutex::new(spool),
            wake: Notify::new(),
            points_in: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let pump = Pump {
            inner: inner.clone(),
            client,
            config,
            cancel,
        };
        let task = tokio::spawn(pump.run());
        Ok((Telemetry { inner }, task))
    }

    /// Appends `points` to the spool (one fsync) and wakes the pump; returns their records'
    /// sequence numbers once durable. Runs the disk work on tokio's blocking pool.
    pub async fn send_points(
        &self,
        points: &[Point],
    ) -> Result<RangeInclusive<u64>, TelemetryError> {
        if points.len() > MAX_SEND_POINTS {
            return Err(TelemetryError::TooMany(points.len()));
        }
        let inner = self.inner.clone();
        let points = points.to_vec();
        tokio::task::spawn_blocking(move || append(&inner, &points))
            .await
            .map_err(|_| TelemetryError::Stopped)?
    }

    /// As [`Telemetry::send_points`], from a thread outside the runtime (blocks on the disk).
    pub fn send_points_blocking(
        &self,
        points: &[Point],
    ) -> Result<RangeInclusive<u64>, TelemetryError> {
        if points.len() > MAX_SEND_POINTS {
            return Err(TelemetryError::TooMany(points.len()));
        }
        append(&self.inner, points)
    }

    /// The counters now.
    pub fn stats(&self) -> TelemetryStats {
        TelemetryStats {
            points_in: self.inner.points_in.load(Ordering::Relaxed),
            sent: self.inner.sent.load(Ordering::Relaxed),
            acked: self.inner.acked.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
            spool: lock(&self.inner).stats(),
        }
    }
}

fn append<F: LogFs>(
    inner: &Inner<F>,
    points: &[Point],
) -> Result<RangeInclusive<u64>, TelemetryError> {
    let mut seqs: Option<RangeInclusive<u64>> = None;
    // Whole records of at most MAX_BATCH_RECORDS per append (one fsync each).
    for chunk in points.chunks(crate::spool::MAX_POINTS * 16) {
        let r = lock(inner).append_points(chunk)?;
        if !r.is_empty() {
            seqs = Some(match seqs {
                Some(s) => *s.start()..=*r.end(),
                None => r,
            });
        }
    }
    inner
        .points_in
        .fetch_add(points.len() as u64, Ordering::Relaxed);
    inner.wake.notify_one();
    #[allow(clippy::reversed_empty_ranges)]
    Ok(seqs.unwrap_or(1..=0))
}

struct Pump<F: LogFs> {
    inner: Arc<Inner<F>>,
    client: Client,
    config: TelemetryConfig,
    cancel: CancellationToken,
}

impl<F: LogFs + Send + 'static> Pump<F> {
    /// Runs blocking spool work off the event loop.
    async fn spool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool<F>) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&mut lock(&inner))).await {
            Ok(r) => r,
            Err(e) => Err(SpoolError::Io {
                path: "(spool task)".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    async fn run(self) {
        let started = Instant::now();
        let now_ms = || started.elapsed().as_millis() as u64;
        let mut state = self.client.watch_state();
        let mut epoch = 0;
        // The last record handed to the client, and the first that is not backlog.
        let mut after = 0u64;
        let mut backlog_end = 0u64;
        let mut replay = match Replay::new(self.config.replay, 0) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "telemetry pump not started");
                return;
            }
        };
        let mut inflight: VecDeque<(u64, Delivery)> = VecDeque::new();
        loop {
            let mut wait_until: Option<u64> = None;
            let up = match *state.borrow_and_update() {
                ConnState::Up { epoch: e, .. } => Some(e),
                ConnState::Closed => return,
                ConnState::Down => None,
            };
            if let Some(e) = up
                && e != epoch
            {
                // A new connection: what the spool holds now is the backlog, paced.
                epoch = e;
                let stats = match self.spool(|s| Ok(s.stats())).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "telemetry spool failed");
                        return;
                    }
                };
                backlog_end = stats.next_seq;
                after = after.max(stats.acked);
                match Replay::new(self.config.replay, now_ms()) {
                    Ok(r) => replay = r,
                    Err(e) => tracing::error!(error = %e, "replay pacer"),
                }
            }
            // Fill the window while connected (while down, records stay in the spool; those
            // already handed over are resent by the client after the reconnect).
            while up.is_some() && inflight.len() < self.config.window {
                let room = (self.config.window - inflight.len()) as u64;
                let want = if after + 1 < backlog_end {
                    match replay.next(now_ms(), backlog_end - 1 - after, false) {
                        Next::Backlog { max_records } => u64::from(max_records)
                            .min(room)
                            .min(backlog_end - 1 - after),
                        Next::WaitUntil(t) => {
                            wait_until = Some(t);
                            break;
                        }
                        Next::Idle | Next::Live => room,
                    }
                } else {
                    room
                };
                let from = after;
                let records = match self
                    .spool(move |s| s.peek_after(from, want as usize, MAX_RECORD_BYTES as usize))
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "telemetry spool read failed; retrying");
                        wait_until = Some(now_ms() + 1000);
                        break;
                    }
                };
                if records.is_empty() {
                    break;
                }
                for r in records {
                    let d = match self
                        .client
                        .publish(self.config.topic.clone(), r.payload, Qos::AtLeastOnce)
                        .await
                    {
                        Ok(d) => d,
                        Err(_) => return,
                    };
                    self.inner.sent.fetch_add(1, Ordering::Relaxed);
                    if r.seq < backlog_end {
                        replay.sent_backlog(1);
                    }
                    after = r.seq;
                    inflight.push_back((r.seq, d));
                }
            }
            let pause = wait_until.map(|t| Duration::from_millis(t.saturating_sub(now_ms())));
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = async {
                    match inflight.front_mut() {
                        Some((_, d)) => d.await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some((seq, _)) = inflight.pop_front() else { continue };
                    match r {
                        Ok(()) => {}
                        Err(ClientError::Refused(reason)) => {
                            self.inner.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(seq, reason, "telemetry record refused by the broker");
                        }
                        Err(_) => return,
                    }
                    if let Err(e) = self.spool(move |s| s.ack(seq)).await {
                        tracing::error!(error = %e, seq, "telemetry ack not saved");
                    }
                    self.inner.acked.fetch_add(1, Ordering::Relaxed);
                }
                _ = self.inner.wake.notified() => {}
                _ = async {
                    match pause {
                        Some(p) => tokio::time::sleep(p).await,
                        None => std::future::pending().await,
                    }
                } => {}
                r = state.changed() => if r.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::BackoffConfig;
    use crate::client::{ClientBuilder, ClientConfig, Protocol};
    use crate::fs::RealFs;
    use crate::spool::{MetricValue, SpoolConfig};
    use std::sync::atomic::AtomicBool;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A 3.1.1 broker that records PUBLISH payloads and sends PUBACKs only while `ack` is set
    /// (withheld ones are sent when it is set again).
    async fn broker(
        listener: tokio::net::TcpListener,
        got: Arc<Mutex<Vec<String>>>,
        ack: Arc<AtomicBool>,
    ) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut held: Vec<[u8; 4]> = Vec::new();
        loop {
            let mut h = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(50), s.read_exact(&mut h)).await;
            if ack.load(Ordering::SeqCst) {
                for p in held.drain(..) {
                    s.write_all(&p).await.unwrap();
                }
            }
            let Ok(r) = read else { continue };
            if r.is_err() {
                return;
            }
            let (mut len, mut mul) = (0usize, 1usize);
            loop {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                len += (b[0] & 0x7f) as usize * mul;
                mul *= 128;
                if b[0] & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await.unwrap();
            match h[0] >> 4 {
                1 => s.write_all(&[0x20, 2, 0, 0]).await.unwrap(),
                3 => {
                    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                    got.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body[tl + 4..]).into_owned());
                    held.push([0x40, 2, body[2 + tl], body[3 + tl]]);
                }
                12 => s.write_all(&[0xd0, 0]).await.unwrap(),
                _ => {}
            }
        }
    }

    fn point(ts: u64) -> Point {
        Point {
            ts_ms: ts,
            metrics: vec![("n".into(), MetricValue::F64(ts as f64))],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_leave_the_spool_only_after_their_puback_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let ack = Arc::new(AtomicBool::new(false));
        let server = tokio::spawn(broker(listener, got.clone(), ack.clone()));
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(RealFs, dir.path(), SpoolConfig::default()).unwrap();
        let mut config = ClientConfig::new("127.0.0.1", port, "d1");
        config.protocol = Protocol::V311;
        config.backoff = BackoffConfig {
            base_ms: 10,
            cap_ms: 50,
            reset_after_ms: 1000,
        };
        let cancel = CancellationToken::new();
        let (client, conn) = ClientBuilder::new(config).start(cancel.clone()).unwrap();
        let mut tc = TelemetryConfig::new("d1");
        tc.window = 2;
        let (telemetry, pump) = Telemetry::start(client, spool, tc, cancel.clone()).unwrap();
        for ts in 1..=5 {
            let seqs = telemetry.send_points(&[point(ts)]).await.unwrap();
            assert_eq!(seqs, ts..=ts);
        }
        assert!(matches!(
            telemetry
                .send_points(&vec![point(1); MAX_SEND_POINTS + 1])
                .await,
            Err(TelemetryError::TooMany(_))
        ));
        // No PUBACK: two records in flight (the window), nothing acknowledged in the spool.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = telemetry.stats();
        assert_eq!(
            (s.sent, s.acked, s.spool.pending_records),
            (2, 0, 5),
            "{s:?}"
        );
        assert_eq!(got.lock().unwrap().len(), 2);
        ack.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while telemetry.stats().spool.pending_records > 0 || telemetry.stats().acked < 5 {
            assert!(Instant::now() < deadline, "{:?}", telemetry.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = telemetry.stats();
        assert_eq!((s.points_in, s.sent, s.acked, s.spool.acked), (5, 5, 5, 5));
        let got = got.lock().unwrap().clone();
        let want: Vec<String> = (1..=5)
            .map(|ts| format!("{{\"points\":[{{\"ts\":{ts},\"n\":{ts}.0}}]}}"))
            .collect();
        assert_eq!(got, want);
        cancel.cancel();
        pump.await.unwrap();
        conn.await.unwrap();
        server.abort();
    }

    #[test]
    fn window_is_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let (client, _) = ClientBuilder::new(ClientConfig::new("127.0.0.1", 1, "d1"))
            .start(cancel.clone())
            .unwrap();
        for (w, ok) in [
            (0, false),
            (1, true),
            (MAX_WINDOW, true),
            (MAX_WINDOW + 1, false),
        ] {
            let spool = Spool::open(RealFs, dir.path(), SpoolConfig::default()).unwrap();
            let mut tc = TelemetryConfig::new("d1");
            tc.window = w;
            let r = Telemetry::start(client.clone(), spool, tc, cancel.clone());
            assert_eq!(r.is_ok(), ok, "{w}");
            if let Err(e) = r {
                assert!(e.to_string().contains("window"), "{e}");
            }
        }
        cancel.cancel();
    }
}
