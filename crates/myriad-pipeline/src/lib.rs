//! Myriad's data pipelines, the sans-IO part: the [`record::Record`] that flows through a
//! pipeline, the rule language ([`sql::Rule`]: AWS IoT Rules / EMQX rule SQL parsed with
//! `sqlparser` and evaluated on JSON) and the pure transforms ([`transform`]: batching,
//! sampling, rate limiting).
//!
//! Nothing here does I/O, reads a clock or draws random numbers: time (`now_ms`) and
//! randomness (a `u64`) are passed in, so every stage is deterministic under test, and the
//! async shells (sources, sinks, the bounded channels between them, acknowledgements flowing
//! back to sources) are built on top.
//!
//! ```text
//! source --Record<A>--> Rule::apply --JSON--> Batcher / Sampler / RateLimiter --> sink
//!    ^                                                                             |
//!    +------------------- A (the ack token) once the sink committed ---------------+
//! ```
//!
//! # The rule language
//!
//! `SELECT <expr> [AS name], ... | * [, ...] FROM '<topic filter>' [WHERE <expr>]`, with
//! payload paths (`payload.a.b`, bare `a.b`, `arr[0]`), literals, arithmetic, `||`,
//! comparisons, `AND`/`OR`/`NOT`, `IS [NOT] NULL`, `IS [NOT] UNDEFINED`, `IN (...)`,
//! `BETWEEN`, `CASE`, `cast(x AS ...)` and AWS IoT's functions (`topic(n)`, `clientid()`,
//! `timestamp()`, `newuuid()`, string and numeric functions, ...). The [`sql`] module docs
//! hold the grammar subset, the functions table, the semantics (Undefined vs Null, the Int /
//! Decimal rules, conversions) and how the FROM filter is handed past the SQL parser;
//! `docs/pipelines.md` is the user reference.
//!
//! # Limits
//!
//! | bound | value | past it |
//! |---|---|---|
//! | rule SQL text | [`sql::MAX_SQL_BYTES`] = 16 KiB | [`sql::RuleError::TooLong`] |
//! | expression nesting | [`sql::MAX_NESTING`] = 64 | [`sql::RuleError::TooDeep`] (checked before recursing) |
//! | `concat` / `coalesce` arguments | [`sql::MAX_VARIADIC_ARGS`] = 16 | [`sql::RuleError::Arity`] |
//! | FROM topic filter | [`topic::MAX_FILTER_BYTES`] = 4096, valid MQTT filter | [`sql::RuleError::TopicFilter`] |
//! | output JSON of one record (and each string computed) | [`sql::RuleLimits::max_output_bytes`], default 256 KiB, at most 16 MiB | [`sql::EvalError::OutputTooLarge`] for that record |
//! | payload JSON nesting | [`record::MAX_JSON_DEPTH`] = 64 | [`sql::EvalError::Payload`] for that record |
//! | user properties per record | [`record::MAX_USER_PROPERTIES`] = 32, [`record::MAX_USER_PROPERTY_BYTES`] = 8 KiB | [`record::RecordError`] |
//! | batch size | [`transform::MAX_BATCH_RECORDS`], [`transform::MAX_BATCH_BYTES`], [`transform::MAX_BATCH_AGE_MS`] | [`transform::ConfigError`] naming the key |
//! | rate limit | [`transform::MAX_RATE_PER_SEC`], [`transform::MAX_BURST`] | [`transform::ConfigError`] |
//!
//! A payload's size is the source's bound (for MQTT, the broker's `mqtt.max_packet_size`).
//! Compile errors name the place (line and column) and, for functions, the name; evaluation
//! errors are per record and never panic.

pub mod lines;
pub mod record;
pub mod sql;
pub mod status;
pub mod topic;
pub mod transform;

#[cfg(feature = "fuzz")]
pub mod fuzz;

#[cfg(feature = "runtime")]
pub mod runtime;
