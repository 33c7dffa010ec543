//! What the `/debug` routes ask of the server: [`Debugging`], implemented by the binary (which
//! owns the allocator, the CPU profiler and the task counts; this crate has none of them).

use serde::Serialize;
use utoipa::ToSchema;

use crate::observe::BoxFuture;

/// The shortest CPU profile, in seconds.
pub const CPU_PROFILE_MIN_SECONDS: u32 = 1;
/// The longest CPU profile, in seconds.
pub const CPU_PROFILE_MAX_SECONDS: u32 = 60;

/// How a CPU profile is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuProfileFormat {
    /// pprof protobuf, gzip-compressed (what `go tool pprof` reads).
    Pprof,
    /// A flame graph as SVG.
    Flamegraph,
}

/// Why a debug request failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    /// 409: the profiler is off, or a CPU profile is already running.
    #[error("{0}")]
    Conflict(String),
    /// 500: the profiler failed.
    #[error("{0}")]
    Internal(String),
}

/// Live tasks by kind beside online sessions (`GET /debug/tasks`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskCounts {
    /// Connection tasks alive now (one per MQTT connection, handshake included).
    pub connection_tasks: u64,
    /// Connection tasks registered with the broker's core (past CONNECT).
    pub connection_tasks_registered: u64,
    /// MQTT sessions the broker counts as online.
    pub sessions_online: u64,
    /// Devices the presence service counts as online.
    pub devices_online: u64,
    /// The platform's long-running service tasks (device layer, API, sampler...) by name.
    pub services: std::collections::BTreeMap<String, u64>,
    /// Pipelines running now (each runs its source, transform and sink stages as tasks).
    pub pipelines_running: u64,
    /// Every task the async runtime holds alive (all kinds, short-lived ones included).
    pub runtime_tasks_alive: u64,
}

/// The server's profilers and task counts, as the `/debug` routes see them.
pub trait Debugging: Send + Sync {
    /// Whether jemalloc's heap profiler is sampling now.
    fn heap_profiling(&self) -> BoxFuture<'_, Result<bool, DebugError>>;
    /// Switches the heap profiler on or off (off drops what it sampled); returns the new state.
    fn set_heap_profiling(&self, active: bool) -> BoxFuture<'_, Result<bool, DebugError>>;
    /// The heap profile now: pprof protobuf, gzip-compressed. [`DebugError::Conflict`] while
    /// the heap profiler is off.
    fn heap_profile(&self) -> BoxFuture<'_, Result<Vec<u8>, DebugError>>;
    /// Samples the CPU for `seconds` (already checked to be within
    /// [`CPU_PROFILE_MIN_SECONDS`]..=[`CPU_PROFILE_MAX_SECONDS`]) and returns the profile;
    /// [`DebugError::Conflict`] while another one runs.
    fn cpu_profile(
        &self,
        seconds: u32,
        format: CpuProfileFormat,
    ) -> BoxFuture<'_, Result<Vec<u8>, DebugError>>;
    /// Live tasks by kind now.
    fn tasks(&self) -> BoxFuture<'_, TaskCounts>;
}
