//! `myriad ctl debug ...`: heap and CPU profiles (`/debug/pprof/...`, written to standard
//! output as they arrive: `myriad ctl debug heap > heap.pb.gz`), the heap profiler's switch
//! and live task counts (`/debug/tasks`). Admin only.

use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::request::{ApiBody, ApiRequest, Method};

/// `ctl debug ...`
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// The heap profile now (pprof protobuf, gzip) on standard output; the heap profiler
    /// must be on (`ctl debug heap-profiling on`).
    Heap,
    /// Switch jemalloc's heap profiler on or off (off forgets what was sampled).
    HeapProfiling {
        /// `on` or `off`.
        state: Switch,
    },
    /// Sample the CPU for SECONDS (1 to 60) and write the profile to standard output.
    Profile {
        /// How long to sample.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// A flame graph SVG instead of pprof protobuf (gzip).
        #[arg(long)]
        flamegraph: bool,
    },
    /// Live tasks by kind beside online sessions.
    Tasks,
}

/// On or off.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Switch {
    /// Switch on.
    On,
    /// Switch off.
    Off,
}

impl DebugCommand {
    /// Whether the answer is a profile streamed to standard output as is.
    pub fn streams(&self) -> bool {
        matches!(self, DebugCommand::Heap | DebugCommand::Profile { .. })
    }
}

/// The request of `cmd`.
pub fn request(cmd: &DebugCommand) -> ApiRequest {
    match cmd {
        DebugCommand::Heap => ApiRequest::new(Method::Get, "/debug/pprof/heap".into()),
        DebugCommand::HeapProfiling { state } => {
            let mut r = ApiRequest::new(Method::Put, "/debug/pprof/heap/active".into());
            r.body = ApiBody::Json(json!({ "active": matches!(state, Switch::On) }));
            r
        }
        DebugCommand::Profile {
            seconds,
            flamegraph,
        } => ApiRequest::new(Method::Get, "/debug/pprof/profile".into())
            .param("seconds", Some(seconds))
            .param("format", flamegraph.then_some("flamegraph")),
        DebugCommand::Tasks => ApiRequest::new(Method::Get, "/debug/tasks".into()),
    }
}
