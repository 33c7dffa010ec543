//! Myriad's telemetry storage engine, sans-IO.
//!
//! The engine has no clock, no threads and no I/O: timestamps come in as arguments (milliseconds
//! since the Unix epoch) and bytes to persist come out for the caller to write and fsync.
//!
//! * [`gorilla`]: the Gorilla chunk codec for open (head) chunks — delta-of-delta timestamps,
//!   XOR floats, delta-of-delta integers, one bit per boolean.

mod bits;
pub mod gorilla;
mod value;

pub use gorilla::{ChunkEncoder, DecodeError, EncodeError, decode_chunk, decode_chunk_into};
pub use value::{Point, Value, ValueKind};
