//! Myriad's telemetry storage engine: a sans-IO core plus one file-backed shell ([`mod@file`]).
//!
//! The engine modules have no clock, no threads and no I/O: timestamps come in as arguments (milliseconds
//! since the Unix epoch) and bytes to persist come out for the caller to write and fsync.
//!
//! * [`gorilla`]: the Gorilla chunk codec for open (head) chunks — delta-of-delta timestamps,
//!   XOR floats, delta-of-delta integers, one bit per boolean.
//! * [`head`]: the open chunk per series, with an out-of-order window and last-write-wins
//!   duplicates.
//! * [`index`]: the series index, (device, metric, labels) -> series id with inverted postings.
//! * [`wal`]: write-ahead log records (length, CRC32, version) and a reader that stops at a torn
//!   or corrupt tail.
//! * [`engine`]: index + head, producing WAL bytes for what they accept and replaying a log.
//! * [`block`]: sealed blocks per time partition, columns re-encoded with `pco`, rollups.
//! * [`db`]: engine plus blocks — seal, raw / aggregated / latest / rollup queries, retention.
//! * [`mod@file`]: the file-backed shell (WAL segments, atomic block files, recovery at open), the
//!   only module doing I/O.
//! * [`multi`]: the same metrics of many devices, per device or combined per bucket.
//! * [`promql`]: a PromQL subset (selectors, `rate` and `*_over_time`, `sum`/`avg`/.. `by`)
//!   evaluated over the [`Db`], for the Prometheus-compatible read API.
//! * [`retention`]: retention per metric pattern (raw points and rollups).
//! * [`storage`]: the byte-file trait the caller implements, with an in-memory one for tests.
//! * `fuzz` (feature `fuzz`): the fuzz harnesses of WAL segments, block files and PromQL
//!   queries (`fuzz/`, replayed by `tests/fuzz_corpus.rs`).
//!
//! # Limits (what one more does)
//!
//! | input | limit | one past |
//! |---|---|---|
//! | late point | [`HeadConfig::ooo_window_ms`] (1 h) before the series' newest | [`AppendError::TooOld`] |
//! | late points buffered per series until seal | [`HeadConfig::max_ooo_points`] (4,096) | [`AppendError::OutOfOrderFull`] (rewriting a buffered timestamp still works) |
//! | series | [`IndexLimits::max_series`] (2,000,000) | [`IndexError::TooManySeries`] |
//! | extra labels per series | [`IndexLimits::max_labels`] (32) | [`IndexError::TooManyLabels`] |
//! | device id, metric, label name or value | [`IndexLimits::max_text_len`] (256 bytes) | [`IndexError::TooLong`] |
//! | points per [`Engine::append`] batch | [`engine::MAX_BATCH_POINTS`] | [`WalEncodeError::TooLarge`], batch refused whole |
//! | WAL record length read back | [`wal::MAX_RECORD_LEN`] (64 MiB) | replay stops: [`WalStop::BadLength`] |
//! | buckets per aggregation | [`db::MAX_BUCKETS`] (100,000) | [`DbError::TooManyBuckets`] |
//! | retention rules | [`retention::MAX_RULES`] (64) | [`retention::RetentionError::TooManyRules`] |
//! | retention metric pattern | [`retention::MAX_PATTERN_LEN`] (256 bytes) | [`retention::RetentionError::BadPattern`] |
//! | block file read back | header, footer, index CRC, index order and payload bounds checked at open; a series' payload CRC when read | [`BlockError`], the file renamed `.corrupt` at open |

#![deny(missing_docs)]

mod bits;
pub mod block;
pub mod db;
pub mod engine;
pub mod file;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod gorilla;
pub mod head;
pub mod index;
pub mod multi;
pub mod promql;
pub mod retention;
pub mod storage;
mod value;
pub mod wal;

pub use block::{BlockError, Rollup, SealedBlock, SealedSeries};
pub use db::{Agg, Db, DbConfig, DbError};
pub use engine::{AppendReport, Engine, EngineError, PointError, ReplayReport};
pub use file::{FileDb, FileDbError, OpenReport, RetentionReport, TornSegment};
pub use gorilla::{ChunkEncoder, DecodeError, EncodeError, decode_chunk, decode_chunk_into};
pub use head::{AppendError, Appended, Head, HeadConfig};
pub use index::{IndexError, IndexLimits, SeriesId, SeriesIndex, SeriesKey};
pub use retention::{RetentionPolicy, RetentionRule};
pub use storage::{MemStorage, Storage};
pub use value::{Point, Value, ValueKind};
pub use wal::{WalEncodeError, WalReader, WalRecord, WalStop};
