//! Cloud-to-device commands, sans-IO.
//!
//! - [`model`]: ids, priority classes, statuses with timestamps, replies;
//! - [`breaker`]: circuit breakers (consecutive failures and failure rate
//!   over a sliding window, half-open probes);
//! - [`limits`]: token buckets per class and per device;
//! - [`queue`]: per-device ordered L1 queues;
//! - [`restart`]: what a restart does to commands in flight;
//! - [`engine`]: all the rules together, driven by the service in
//!   [`crate::service::commands`];
//! - [`config`]: the `[commands]` settings.

pub mod breaker;
pub mod config;
pub mod engine;
pub mod limits;
pub mod model;
pub mod queue;
pub mod restart;

pub use config::CommandsConfig;
pub use engine::{
    BatchProgress, BreakersSnapshot, Effect, Engine, EngineStats, Refused, ShadowReader,
};
pub use model::{
    BatchId, BatchJob, BatchTargets, Command, CommandId, CommandSpec, CommandStatus, Payload,
    Priority, Reply, ResultSource,
};
