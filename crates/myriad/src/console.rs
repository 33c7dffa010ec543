//! The overview sampler of the web console: every [`SAMPLE_INTERVAL`] it
//! takes the platform's numbers (broker snapshot, presence, registry size,
//! store commit latency from the metrics recorder, watchdog alerts) into a
//! ring of the last hour ([`HISTORY`] samples) that `GET /api/v1/overview`
//! reads ([`OverviewSource`]), and sends each sample on the event bus
//! (`overview` events).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use myriad_api::{OverviewNow, OverviewPoint, OverviewReport, OverviewSource, WatchdogAlertView};
use myriad_broker::shell::BrokerHandle;
use myriad_broker::shell::snapshot::STORE_COMMIT_SECONDS;
use myriad_broker::watchdog::Alert;
use myriad_broker::watchdog::task::WatchdogStatus;
use myriad_fleet::events::{EventBus, FleetEvent, OverviewSample};
use myriad_fleet::service::now_ms;
use myriad_fleet::service::presence::PresenceService;
use myriad_fleet::store::FleetStore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Time between two samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: one hour.
pub const HISTORY: usize = 720;

/// The counters one sample is computed against the previous one with.
#[derive(Debug, Clone)]
struct Counters {
    at: Instant,
    received: u64,
    sent: u64,
    dropped: u64,
    /// Cumulative store commit histogram: (upper bound in seconds, count).
    commits: Vec<(f64, u64)>,
}

#[derive(Debug, Default)]
struct State {
    now: OverviewNow,
    history: VecDeque<OverviewPoint>,
    previous: Option<Counters>,
    /// When each standing alert kind was first seen (unix ms).
    alerts_since: BTreeMap<&'static str, u64>,
}

/// The sampler's ring (see the module docs).
#[derive(Debug, Default)]
pub struct Sampler {
    state: Mutex<State>,
}

/// Where the sampler reads.
pub struct Sources {
    /// The broker (snapshot).
    pub broker: BrokerHandle,
    /// Devices online.
    pub presence: Arc<PresenceService>,
    /// Devices registered.
    pub store: Arc<FleetStore>,
    /// The leak watchdog's last report.
    pub watchdog: WatchdogStatus,
    /// The metrics recorder (store commit histogram).
    pub metrics: PrometheusHandle,
    /// Where each sample is sent.
    pub bus: EventBus,
}

impl OverviewSource for Sampler {
    fn overview(&self) -> OverviewReport {
        let state = self.lock();
        OverviewReport {
            now: state.now.clone(),
            history: state.history.iter().copied().collect(),
        }
    }
}

impl Sampler {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Samples every [`SAMPLE_INTERVAL`] (the first at once) until
    /// `shutdown` is cancelled or the broker stops.
    pub async fn run(self: Arc<Self>, sources: Sources, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let Ok(snapshot) = sources.broker.snapshot().await else {
                return;
            };
            let store = sources.store.clone();
            let registered = match tokio::task::spawn_blocking(move || store.count_devices()).await
            {
                Ok(Ok(n)) => n,
                Ok(Err(error)) => {
                    warn!(%error, "overview: cannot count devices");
                    0
                }
                Err(_) => 0,
            };
            let stats = snapshot.stats;
            let counters = Counters {
                at: Instant::now(),
                received: stats.messages_received,
                sent: stats.messages_sent,
                dropped: stats.messages_dropped + snapshot.dropped_qos0_slow,
                commits: commit_buckets(&sources.metrics.render()),
            };
            let levels = snapshot.levels;
            let numbers = Numbers {
                connections: snapshot.network_sessions,
                sessions: levels.sessions_online + levels.sessions_offline,
                online_devices: sources.presence.online_count() as u64,
                registered_devices: registered,
                alerts: sources.watchdog.report().alerts,
            };
            let sample = self.record(counters, numbers, now_ms());
            sources.bus.publish(FleetEvent::Overview(sample));
        }
    }

    /// Adds one sample; returns it.
    fn record(&self, counters: Counters, numbers: Numbers, at_ms: u64) -> OverviewSample {
        let mut state = self.lock();
        let (in_rate, out_rate, drop_rate, p99) = match &state.previous {
            Some(previous) => {
                let secs = counters
                    .at
                    .saturating_duration_since(previous.at)
                    .as_secs_f64()
                    .max(0.001);
                let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
                (
                    rate(counters.received, previous.received),
                    rate(counters.sent, previous.sent),
                    rate(counters.dropped, previous.dropped),
                    quantile_ms(&previous.commits, &counters.commits, 0.99),
                )
            }
            None => (0.0, 0.0, 0.0, quantile_ms(&[], &counters.commits, 0.99)),
        };
        let sample = OverviewSample {
            at_ms,
            connections: numbers.connections,
            sessions: numbers.sessions,
            messages_in_per_sec: round2(in_rate),
            messages_out_per_sec: round2(out_rate),
            dropped_per_sec: round2(drop_rate),
            store_commit_p99_ms: round2(p99),
        };
        let standing: Vec<&'static str> = numbers.alerts.iter().map(Alert::kind).collect();
        state.alerts_since.retain(|kind, _| standing.contains(kind));
        let alerts_since = &mut state.alerts_since;
        let watchdog_alerts = numbers
            .alerts
            .iter()
            .map(|alert| WatchdogAlertView {
                kind: alert.kind().to_owned(),
                message: describe(alert),
                since_ms: *alerts_since.entry(alert.kind()).or_insert(at_ms),
            })
            .collect();
        state.now = OverviewNow {
            connections: numbers.connections,
            sessions: numbers.sessions,
            online_devices: numbers.online_devices,
            registered_devices: numbers.registered_devices,
            messages_in_per_sec: sample.messages_in_per_sec,
            messages_out_per_sec: sample.messages_out_per_sec,
            dropped_total: counters.dropped,
            dropped_per_sec: sample.dropped_per_sec,
            store_commit_p99_ms: sample.store_commit_p99_ms,
            watchdog_alerts,
        };
        state.history.push_back(sample.into());
        while state.history.len() > HISTORY {
            state.history.pop_front();
        }
        state.previous = Some(counters);
        sample
    }
}

/// The levels of one sample.
struct Numbers {
    connections: u64,
    sessions: u64,
    online_devices: u64,
    registered_devices: u64,
    alerts: Vec<Alert>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One line for an alert.
fn describe(alert: &Alert) -> String {
    match *alert {
        Alert::TaskDeviation { tasks, sessions } => format!(
            "{tasks} registered connection tasks but {sessions} online sessions (more than 15% apart)"
        ),
        Alert::SocketDeviation { sockets, tasks } => {
            format!("{sockets} open sockets but {tasks} connection tasks (more than 15% apart)")
        }
        Alert::MemoryGrowth { from, to, checks } => format!(
            "allocated memory grew from {from} to {to} bytes over {checks} checks while connections did not"
        ),
    }
}

/// The cumulative buckets of the store commit histogram in a Prometheus
/// text exposition, ascending (`+Inf` last).
fn commit_buckets(text: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{STORE_COMMIT_SECONDS}_bucket{{");
    let mut buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (labels, value) = rest.split_once("} ")?;
            let le = labels
                .split(',')
                .find_map(|label| label.strip_prefix("le=\""))?
                .trim_end_matches('"');
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = value.trim().parse::<f64>().ok()? as u64;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `q` quantile in ms of the commits between two cumulative histograms
/// (interpolated within its bucket, as PromQL's `histogram_quantile`); 0
/// without commits.
fn quantile_ms(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| {
            let then = before.iter().find(|(b, _)| *b == le).map_or(0, |&(_, n)| n);
            (le, n.saturating_sub(then))
        })
        .collect();
    let Some(&(_, total)) = counts.last() else {
        return 0.0;
    };
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, cumulative) in &counts {
        if cumulative as f64 >= rank {
            if le.is_infinite() {
                return lower * 1000.0;
            }
            let in_bucket = cumulative.saturating_sub(below).max(1) as f64;
            let fraction = (rank - below as f64) / in_bucket;
            return (lower + (le - lower) * fraction.clamp(0.0, 1.0)) * 1000.0;
        }
        lower = le;
        below = cumulative;
    }
    lower * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(connections: u64) -> Numbers {
        Numbers {
            connections,
            sessions: connections + 1,
            online_devices: connections,
            registered_devices: 10,
            alerts: Vec::new(),
        }
    }

    fn counters(at: Instant, received: u64, commits: Vec<(f64, u64)>) -> Counters {
        Counters {
            at,
            received,
            sent: received * 2,
            dropped: 0,
            commits,
        }
    }

    #[test]
    fn rates_come_from_counter_deltas_and_the_ring_is_bounded() {
        let sampler = Sampler::default();
        let start = Instant::now();
        let first = sampler.record(counters(start, 100, vec![]), numbers(1), 1);
        assert_eq!(first.messages_in_per_sec, 0.0);
        let second = sampler.record(
            counters(start + Duration::from_secs(5), 600, vec![]),
            numbers(2),
            2,
        );
        assert_eq!(second.messages_in_per_sec, 100.0);
        assert_eq!(second.messages_out_per_sec, 200.0);
        let report = sampler.overview();
        assert_eq!(report.now.connections, 2);
        assert_eq!(report.now.registered_devices, 10);
        assert_eq!(report.history.len(), 2);
        for i in 0..HISTORY as u64 + 5 {
            let at = start + Duration::from_secs(10 + 5 * i);
            sampler.record(counters(at, 600, vec![]), numbers(3), 3 + i);
        }
        let report = sampler.overview();
        assert_eq!(report.history.len(), HISTORY);
        // Oldest first: the first samples went.
        assert_eq!(report.history[0].at_ms, 8);
        assert!(report.history.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    }

    #[test]
    fn alerts_keep_the_time_they_were_first_seen() {
        let sampler = Sampler::default();
        let start = Instant::now();
        let alert = Alert::TaskDeviation {
            tasks: 10,
            sessions: 2,
        };
        let with_alert = || Numbers {
            alerts: vec![alert],
            ..numbers(1)
        };
        sampler.record(counters(start, 0, vec![]), with_alert(), 100);
        sampler.record(counters(start, 0, vec![]), with_alert(), 200);
        let now = sampler.overview().now;
        assert_eq!(now.watchdog_alerts.len(), 1);
        assert_eq!(now.watchdog_alerts[0].kind, "task_deviation");
        assert_eq!(now.watchdog_alerts[0].since_ms, 100);
        sampler.record(counters(start, 0, vec![]), numbers(1), 300);
        assert!(sampler.overview().now.watchdog_alerts.is_empty());
        sampler.record(counters(start, 0, vec![]), with_alert(), 400);
        assert_eq!(sampler.overview().now.watchdog_alerts[0].since_ms, 400);
    }

    #[test]
    fn the_commit_quantile_is_read_from_the_histogram_text() {
        let text = format!(
            "# TYPE {n} histogram\n{n}_bucket{{le=\"0.001\"}} 50\n{n}_bucket{{le=\"0.01\"}} 99\n\
             {n}_bucket{{le=\"0.1\"}} 100\n{n}_bucket{{le=\"+Inf\"}} 100\n{n}_sum 0.5\n{n}_count 100\n\
             other_bucket{{le=\"1\"}} 7\n",
            n = STORE_COMMIT_SECONDS
        );
        let buckets = commit_buckets(&text);
        assert_eq!(buckets.len(), 4);
        assert_eq!(buckets[3], (f64::INFINITY, 100));
        // The 99th of 100 commits is the last in the 1-10 ms bucket.
        let p99 = quantile_ms(&[], &buckets, 0.99);
        assert!((p99 - 10.0).abs() < 1e-9, "{p99}");
        // Only what happened since the previous sample counts.
        let before = vec![(0.001, 0), (0.01, 0), (0.1, 0), (f64::INFINITY, 0)];
        let later = vec![(0.001, 0), (0.01, 0), (0.1, 10), (f64::INFINITY, 10)];
        let p99 = quantile_ms(&before, &later, 0.99);
        assert!(p99 > 10.0 && p99 <= 100.0, "{p99}");
        assert_eq!(quantile_ms(&later, &later, 0.99), 0.0);
        assert_eq!(quantile_ms(&[], &[], 0.99), 0.0);
    }
}
