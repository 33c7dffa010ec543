//! The watchdog's periodic task: samples a running broker, runs
//! [`Watchdog::check`], logs a warning per alert and sets the metrics.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Alert, Rules, Sample, Watchdog, deviation};
use crate::shell::BrokerHandle;

/// Gauge: 1 while an alert of this `kind` stands, else 0.
pub const ALERT_GAUGE: &str = "myriad_watchdog_alert";
/// Counter: checks that raised an alert of this `kind`.
pub const ALERTS_TOTAL: &str = "myriad_watchdog_alerts_total";
/// Counter: checks run.
pub const CHECKS_TOTAL: &str = "myriad_watchdog_checks_total";
/// Gauge: how far registered connection tasks and online sessions deviate (0..1).
pub const TASK_DEVIATION: &str = "myriad_watchdog_task_session_deviation_ratio";

/// A reading the watchdog cannot take from the broker itself.
pub type Probe = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// Readings from the process around the broker.
#[derive(Default)]
pub struct Probes {
    /// Open sockets of the process (e.g. from `/proc/self/fd`).
    pub open_sockets: Option<Probe>,
    /// Bytes allocated (e.g. jemalloc's `stats.allocated`).
    pub allocated_bytes: Option<Probe>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("open_sockets", &self.open_sockets.is_some())
            .field("allocated_bytes", &self.allocated_bytes.is_some())
            .finish()
    }
}

/// What the watchdog saw last.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Checks run so far.
    pub checks: u64,
    /// The last sample.
    pub last: Option<Sample>,
    /// The alerts of the last check.
    pub alerts: Vec<Alert>,
    /// Checks that raised at least one alert.
    pub alerting_checks: u64,
}

/// The watchdog's latest report, shared with whoever asks (cheap to clone).
#[derive(Debug, Default, Clone)]
pub struct WatchdogStatus(Arc<Mutex<Report>>);

impl WatchdogStatus {
    fn lock(&self) -> MutexGuard<'_, Report> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the latest report.
    pub fn report(&self) -> Report {
        self.lock().clone()
    }
}

/// Checks `handle`'s broker every `interval` until `shutdown` is cancelled
/// or the broker stops. Sockets open at the first check (listeners) are the
/// baseline that later socket counts are taken relative to.
pub async fn run(
    handle: BrokerHandle,
    rules: Rules,
    interval: Duration,
    probes: Probes,
    status: WatchdogStatus,
    shutdown: CancellationToken,
) {
    let mut dog = Watchdog::new(rules);
    let baseline = probes.open_sockets.as_ref().and_then(|p| p());
    for kind in Alert::KINDS {
        metrics::gauge!(ALERT_GAUGE, "kind" => kind).set(0.0);
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Ok(snapshot) = handle.snapshot().await else {
            return;
        };
        let census = handle.census().counts();
        let open_sockets = match (&probes.open_sockets, baseline) {
            (Some(probe), Some(base)) => probe().map(|n| n.saturating_sub(base)),
            _ => None,
        };
        let sample = Sample {
            tasks: census.tasks,
            registered_tasks: census.registered,
            sessions_online: snapshot.network_sessions,
            open_sockets,
            allocated_bytes: probes.allocated_bytes.as_ref().and_then(|p| p()),
        };
        let alerts = dog.check(sample);
        publish(&sample, &alerts);
        let mut report = status.lock();
        report.checks += 1;
        report.last = Some(sample);
        if !alerts.is_empty() {
            report.alerting_checks += 1;
        }
        report.alerts = alerts;
    }
}

/// Logs and sets the metrics for one check.
fn publish(sample: &Sample, alerts: &[Alert]) {
    metrics::counter!(CHECKS_TOTAL).increment(1);
    metrics::gauge!(TASK_DEVIATION).set(deviation(sample.registered_tasks, sample.sessions_online));
    for kind in Alert::KINDS {
        let raised = alerts.iter().any(|a| a.kind() == kind);
        metrics::gauge!(ALERT_GAUGE, "kind" => kind).set(if raised { 1.0 } else { 0.0 });
        if raised {
            metrics::counter!(ALERTS_TOTAL, "kind" => kind).increment(1);
        }
    }
    for alert in alerts {
        match *alert {
            Alert::TaskDeviation { tasks, sessions } => warn!(
                tasks,
                sessions,
                deviation = deviation(tasks, sessions),
                "leak watchdog: connection tasks and online sessions deviate by more than 15%"
            ),
            Alert::SocketDeviation { sockets, tasks } => warn!(
                sockets,
                tasks,
                deviation = deviation(sockets, tasks),
                "leak watchdog: open sockets and connection tasks deviate by more than 15%"
            ),
            Alert::MemoryGrowth { from, to, checks } => warn!(
                from_bytes = from,
                to_bytes = to,
                checks,
                "leak watchdog: allocator memory keeps growing while connections do not"
            ),
        }
    }
}
