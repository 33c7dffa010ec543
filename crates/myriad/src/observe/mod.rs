//! Observability of the running platform: logging set-up, the
//! Prometheus metrics behind `/metrics` and `/readyz`, process and
//! allocator readings for the leak watchdog, and OpenTelemetry tracing.
//! See docs/observability.md.

pub mod logging;
pub mod metrics;
pub mod otel;
pub mod process;
pub mod profiling;

use std::time::Duration;

use myriad_broker::shell::BrokerHandle;
use myriad_broker::watchdog::task::{Probes, WatchdogStatus};
use tokio_util::sync::CancellationToken;

use crate::config::WatchdogConfig;

/// Starts the leak watchdog on `broker` as configured (no-op when disabled).
pub fn spawn_watchdog(
    config: &WatchdogConfig,
    broker: &BrokerHandle,
    shutdown: &CancellationToken,
    essential: &mut crate::supervise::Essential,
) -> WatchdogStatus {
    let status = WatchdogStatus::default();
    if !config.enabled {
        return status;
    }
    let probes = Probes {
        open_sockets: Some(Box::new(process::open_sockets)),
        allocated_bytes: Some(Box::new(|| {
            process::allocator_stats().map(|stats| stats.allocated)
        })),
    };
    essential.spawn(
        "leak watchdog",
        myriad_broker::watchdog::task::run(
            broker.clone(),
            config.rules(),
            Duration::from_secs(config.interval_secs),
            probes,
            status.clone(),
            shutdown.clone(),
        ),
    );
    status
}
