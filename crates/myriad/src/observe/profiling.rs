//! Heap and CPU profiles on demand and live task counts: the binary's [`Debugging`] behind
//! the `/debug` routes (docs/observability.md).
//!
//! The heap profiler is jemalloc's own sampler, compiled in (`prof:true` in `malloc_conf`)
//! and inactive until switched on (`prof.active`); the CPU profiler is `pprof`'s SIGPROF
//! sampler, whose timer runs off the event loop.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use myriad_api::BoxFuture;
use myriad_api::debug::{CpuProfileFormat, DebugError, Debugging, TaskCounts};
use myriad_api::pipelines::PipelineControl;
use myriad_broker::shell::BrokerHandle;
use myriad_fleet::service::presence::PresenceService;
use myriad_pipeline::status::PipelineState;
use pprof::protos::Message;

use crate::supervise::ServiceCensus;

/// CPU samples per second (a prime, so sampling does not beat with periodic work).
const CPU_SAMPLE_HZ: i32 = 99;
/// How long `/debug/tasks` waits for the broker's snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the task counts are read from.
pub struct TaskSources {
    /// The running broker (connection tasks, online sessions).
    pub broker: BrokerHandle,
    /// Device presence.
    pub presence: Arc<PresenceService>,
    /// The platform's long-running tasks by name.
    pub services: ServiceCensus,
    /// The pipelines.
    pub pipelines: Arc<dyn PipelineControl>,
}

/// The profilers and task counts.
pub struct Profiler {
    cpu_busy: Arc<AtomicBool>,
    tasks: TaskSources,
}

impl Profiler {
    /// Profiles this process; task counts from `tasks`.
    pub fn new(tasks: TaskSources) -> Profiler {
        Profiler {
            cpu_busy: Arc::new(AtomicBool::new(false)),
            tasks,
        }
    }
}

/// jemalloc's profiler control, or an error when it is not compiled in.
fn heap_ctl() -> Result<Arc<tokio::sync::Mutex<jemalloc_pprof::JemallocProfCtl>>, DebugError> {
    jemalloc_pprof::PROF_CTL.as_ref().cloned().ok_or_else(|| {
        DebugError::Internal("jemalloc's heap profiler is not enabled (opt.prof is false)".into())
    })
}

/// Switches the heap profiler on or off; returns the new state.
pub async fn set_heap_profiling(active: bool) -> Result<bool, DebugError> {
    let ctl = heap_ctl()?;
    let mut ctl = ctl.lock().await;
    let result = if active {
        ctl.activate()
    } else {
        ctl.deactivate()
    };
    result.map_err(|e| DebugError::Internal(format!("cannot switch the heap profiler: {e}")))?;
    tracing::info!(active, "heap profiler switched");
    Ok(ctl.activated())
}

/// Clears the CPU profiler's busy flag when the profile ends, however it ends.
struct CpuSlot(Arc<AtomicBool>);

impl Drop for CpuSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Builds the report of a finished CPU profile in `format`.
fn cpu_report(
    guard: pprof::ProfilerGuard<'static>,
    format: CpuProfileFormat,
) -> Result<Vec<u8>, DebugError> {
    let failed = |e: &dyn std::fmt::Display| DebugError::Internal(format!("CPU profile: {e}"));
    let report = guard.report().build().map_err(|e| failed(&e))?;
    drop(guard);
    match format {
        CpuProfileFormat::Flamegraph => {
            let mut svg = Vec::new();
            report.flamegraph(&mut svg).map_err(|e| failed(&e))?;
            Ok(svg)
        }
        CpuProfileFormat::Pprof => {
            let profile = report.pprof().map_err(|e| failed(&e))?;
            let raw = profile.encode_to_vec();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&raw).map_err(|e| failed(&e))?;
            gz.finish().map_err(|e| failed(&e))
        }
    }
}

impl Debugging for Profiler {
    fn heap_profiling(&self) -> BoxFuture<'_, Result<bool, DebugError>> {
        Box::pin(async move { Ok(heap_ctl()?.lock().await.activated()) })
    }

    fn set_heap_profiling(&self, active: bool) -> BoxFuture<'_, Result<bool, DebugError>> {
        Box::pin(set_heap_profiling(active))
    }

    fn heap_profile(&self) -> BoxFuture<'_, Result<Vec<u8>, DebugError>> {
        Box::pin(async move {
            let ctl = heap_ctl()?;
            // Writes a temporary file and symbolises: off the runtime's workers.
            tokio::task::spawn_blocking(move || {
                let mut ctl = ctl.blocking_lock();
                if !ctl.activated() {
                    return Err(DebugError::Conflict(
                        "heap profiling is off: switch it on with PUT /debug/pprof/heap/active \
                         {\"active\": true} (or debug.heap_profiling in the config) first"
                            .into(),
                    ));
                }
                ctl.dump_pprof()
                    .map_err(|e| DebugError::Internal(format!("heap profile: {e}")))
            })
            .await
            .map_err(|e| DebugError::Internal(format!("heap profile: {e}")))?
        })
    }

    fn cpu_profile(
        &self,
        seconds: u32,
        format: CpuProfileFormat,
    ) -> BoxFuture<'_, Result<Vec<u8>, DebugError>> {
        Box::pin(async move {
            if self
                .cpu_busy
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(DebugError::Conflict(
                    "a CPU profile is already running; retry when it ends".into(),
                ));
            }
            let slot = CpuSlot(self.cpu_busy.clone());
            let guard = pprof::ProfilerGuardBuilder::default()
                .frequency(CPU_SAMPLE_HZ)
                .blocklist(&["libc", "libgcc", "pthread", "vdso"])
                .build()
                .map_err(|e| DebugError::Internal(format!("cannot start the CPU profiler: {e}")))?;
            // The profiler's own timer samples; this task only waits.
            tokio::time::sleep(Duration::from_secs(u64::from(seconds))).await;
            // The slot goes with the report: a caller that gives up while it is built does
            // not let a second profile start before this one's guard is gone.
            tokio::task::spawn_blocking(move || {
                let report = cpu_report(guard, format);
                drop(slot);
                report
            })
            .await
            .map_err(|e| DebugError::Internal(format!("CPU profile: {e}")))?
        })
    }

    fn tasks(&self) -> BoxFuture<'_, TaskCounts> {
        Box::pin(async move {
            let census = self.tasks.broker.census().counts();
            let sessions_online =
                match tokio::time::timeout(SNAPSHOT_TIMEOUT, self.tasks.broker.snapshot()).await {
                    Ok(Ok(snapshot)) => snapshot.levels.sessions_online,
                    _ => 0,
                };
            let pipelines_running = self
                .tasks
                .pipelines
                .list()
                .iter()
                .filter(|p| {
                    matches!(
                        p.status.snapshot().state,
                        PipelineState::Running | PipelineState::Retrying | PipelineState::Starting
                    )
                })
                .count() as u64;
            TaskCounts {
                connection_tasks: census.tasks,
                connection_tasks_registered: census.registered,
                sessions_online,
                devices_online: self.tasks.presence.online_count() as u64,
                services: self.tasks.services.by_name(),
                pipelines_running,
                runtime_tasks_alive: tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks() as u64,
            }
        })
    }
}
