//! Myriad's data pipelines, the sans-IO part: the [`record::Record`] that flows through a
//! pipeline, the rule language ([`sql::Rule`]: AWS IoT Rules / EMQX rule SQL parsed with
//! `sqlparser` and evaluated on JSON) and the pure transforms ([`transform`]: batching,
//! sampling, rate limiting).
//!
//! Nothing here does I/O, reads a clock or draws random numbers: time (`now_ms`) and
//! randomness (a `u64`) are passed in, so every stage is deterministic under test and the async
//! shells (sources, sinks, the bounded channels between them) live elsewhere.
//!
//! See the [`sql`] module for the grammar subset, the functions, the semantics and the limits,
//! and `docs/pipelines.md` for the user reference.

pub mod record;
pub mod sql;
pub mod topic;
pub mod transform;

#[cfg(feature = "fuzz")]
pub mod fuzz;
