//! Head: the open, in-memory chunk of every series.
//!
//! Each series has one open Gorilla chunk ([`ChunkEncoder`]) taking points in increasing
//! timestamp order, and a small sorted side buffer for points that arrive late:
//!
//! * a point after the series' newest timestamp is appended to the chunk;
//! * a point at or before the newest timestamp, but no more than
//!   [`HeadConfig::ooo_window_ms`] before it, goes into the side buffer (a `BTreeMap` keyed by
//!   timestamp, so a second write at the same timestamp replaces the first);
//! * anything older is refused with [`AppendError::TooOld`].
//!
//! Readers and [`Head::seal`] merge the chunk with the side buffer; at equal timestamps the side
//! buffer wins, because it was written later (a chunk point at `t` can only precede a side entry
//! at `t`). So a duplicate timestamp keeps the last value. The side buffer holds at most
//! [`HeadConfig::max_ooo_points`] distinct timestamps per series.

use std::collections::BTreeMap;

use crate::gorilla::{ChunkEncoder, EncodeError, decode_chunk_into};
use crate::index::SeriesId;
use crate::value::{Point, Value, ValueKind};

/// Head configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadConfig {
    /// How far (ms) before a series' newest timestamp a point may still arrive.
    pub ooo_window_ms: i64,
    /// Most out-of-order points buffered per series until the next seal.
    pub max_ooo_points: usize,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            ooo_window_ms: 3_600_000,
            max_ooo_points: 4096,
        }
    }
}

/// Why a point was refused by the head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The point is older than the out-of-order window allows.
    #[error("timestamp {ts} is before the out-of-order window starting at {min}")]
    TooOld {
        /// The refused timestamp.
        ts: i64,
        /// The oldest timestamp still accepted.
        min: i64,
    },
    /// The series' out-of-order buffer is full until the next seal.
    #[error("out-of-order buffer full ({limit} points)")]
    OutOfOrderFull {
        /// The limit.
        limit: usize,
    },
    /// The value's kind differs from the series'.
    #[error("value of kind {got:?} for a series of kind {want:?}")]
    KindMismatch {
        /// The series' kind.
        want: ValueKind,
        /// The value's kind.
        got: ValueKind,
    },
    /// The open chunk refused the point.
    #[error(transparent)]
    Chunk(#[from] EncodeError),
}

/// Where an accepted point went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Appended to the open chunk.
    InOrder,
    /// Put in the out-of-order side buffer (new timestamp or replacing a value).
    OutOfOrder,
}

#[derive(Debug, Clone)]
struct HeadSeries {
    chunk: ChunkEncoder,
    side: BTreeMap<i64, Value>,
    /// Newest timestamp ever accepted (kept across seals) and its current value.
    newest: Option<Point>,
    /// Newest timestamp already in sealed blocks when the head was rebuilt at open
    /// ([`Head::seed`]): the out-of-order window counts from it until `newest` is set.
    sealed_newest: Option<i64>,
}

/// The open chunks of all series, indexed by [`SeriesId`].
#[derive(Debug, Clone, Default)]
pub struct Head {
    cfg: HeadConfig,
    series: Vec<Option<HeadSeries>>,
    /// Whether a point was accepted since [`Head::mark_sealed`].
    unsealed: bool,
}

impl Head {
    /// An empty head.
    pub fn new(cfg: HeadConfig) -> Self {
        Self {
            cfg,
            series: Vec::new(),
            unsealed: false,
        }
    }

    /// The head's configuration.
    pub fn config(&self) -> HeadConfig {
        self.cfg
    }

    /// Adds one point to series `id`.
    pub fn append(&mut self, id: SeriesId, ts: i64, value: Value) -> Result<Appended, AppendError> {
        let idx = id.0 as usize;
        if idx >= self.series.len() {
            self.series.resize_with(idx + 1, || None);
        }
        let slot = &mut self.series[idx];
        let s = slot.get_or_insert_with(|| HeadSeries {
            chunk: ChunkEncoder::new(value.kind()),
            side: BTreeMap::new(),
            newest: None,
            sealed_newest: None,
        });
        let kind = s.chunk.kind();
        if value.kind() != kind {
            return Err(AppendError::KindMismatch {
                want: kind,
                got: value.kind(),
            });
        }
        let newest = match s.newest.map(|p| p.ts).or(s.sealed_newest) {
            Some(newest) if ts <= newest => newest,
            _ => {
                s.chunk.push(ts, value)?;
                s.newest = Some(Point { ts, value });
                self.unsealed = true;
                return Ok(Appended::InOrder);
            }
        };
        let min = newest.saturating_sub(self.cfg.ooo_window_ms);
        if ts < min {
            return Err(AppendError::TooOld { ts, min });
        }
        if !s.side.contains_key(&ts) && s.side.len() >= self.cfg.max_ooo_points {
            return Err(AppendError::OutOfOrderFull {
                limit: self.cfg.max_ooo_points,
            });
        }
        s.side.insert(ts, value);
        if ts == newest {
            s.newest = Some(Point { ts, value });
        }
        self.unsealed = true;
        Ok(Appended::OutOfOrder)
    }

    /// Tells the head what sealed blocks already hold of series `id` (at open, before the WAL
    /// is replayed): its value kind, which later points must keep, and its newest sealed
    /// timestamp, from which the out-of-order window counts until a newer point arrives.
    /// Without it a restart would forget both: a point of another kind would be taken (and
    /// could not be merged into the block at the next seal), and points of any age would be.
    /// A series the head already holds keeps its kind.
    pub fn seed(&mut self, id: SeriesId, kind: ValueKind, sealed_newest: Option<i64>) {
        let idx = id.0 as usize;
        if idx >= self.series.len() {
            self.series.resize_with(idx + 1, || None);
        }
        let s = self.series[idx].get_or_insert_with(|| HeadSeries {
            chunk: ChunkEncoder::new(kind),
            side: BTreeMap::new(),
            newest: None,
            sealed_newest: None,
        });
        if let Some(ts) = sealed_newest {
            s.sealed_newest = Some(s.sealed_newest.map_or(ts, |old| old.max(ts)));
        }
    }

    /// The value kind of series `id`, once it has had a point.
    pub fn kind(&self, id: SeriesId) -> Option<ValueKind> {
        self.get(id).map(|s| s.chunk.kind())
    }

    fn get(&self, id: SeriesId) -> Option<&HeadSeries> {
        self.series.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// The newest point of series `id` (including points already sealed).
    pub fn latest(&self, id: SeriesId) -> Option<Point> {
        self.get(id).and_then(|s| s.newest)
    }

    /// Points in the head of series `id` with `from <= ts < to`, sorted, duplicates resolved.
    pub fn range(&self, id: SeriesId, from: i64, to: i64) -> Vec<Point> {
        let Some(s) = self.get(id) else {
            return Vec::new();
        };
        let mut chunk = Vec::new();
        // The head encodes its own chunks; a decode error would be a bug, reported as no points.
        if decode_chunk_into(&s.chunk.to_bytes(), &mut chunk).is_err() {
            chunk.clear();
        }
        merge(chunk, &s.side, from, to)
    }

    /// Takes everything buffered for series `id` (merged, sorted, one point per timestamp) and
    /// leaves it with an empty chunk; its newest timestamp is kept, so the out-of-order window
    /// still applies. `None` if the series holds nothing.
    pub fn seal(&mut self, id: SeriesId) -> Option<(ValueKind, Vec<Point>)> {
        let s = self.series.get_mut(id.0 as usize)?.as_mut()?;
        if s.chunk.is_empty() && s.side.is_empty() {
            return None;
        }
        let kind = s.chunk.kind();
        let mut chunk = Vec::new();
        if decode_chunk_into(&s.chunk.to_bytes(), &mut chunk).is_err() {
            chunk.clear();
        }
        let side = std::mem::take(&mut s.side);
        s.chunk = ChunkEncoder::new(kind);
        Some((kind, merge(chunk, &side, i64::MIN, i64::MAX)))
    }

    /// Whether a point was accepted since the last [`Head::mark_sealed`] (a seal would write
    /// something).
    pub fn has_unsealed(&self) -> bool {
        self.unsealed
    }

    /// Records that every series was sealed ([`crate::Db::seal`] calls it).
    pub fn mark_sealed(&mut self) {
        self.unsealed = false;
    }

    /// Points held (chunk plus side buffer) for series `id`.
    pub fn points(&self, id: SeriesId) -> usize {
        self.get(id).map_or(0, |s| s.chunk.len() + s.side.len())
    }

    /// Bytes of encoded chunk data held by all series (excluding bookkeeping).
    pub fn chunk_bytes(&self) -> usize {
        self.series
            .iter()
            .flatten()
            .map(|s| s.chunk.encoded_len())
            .sum()
    }
}

/// Merges sorted chunk points with the side buffer (which wins at equal timestamps), keeping
/// `from <= ts < to`.
fn merge(chunk: Vec<Point>, side: &BTreeMap<i64, Value>, from: i64, to: i64) -> Vec<Point> {
    if from >= to {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(chunk.len() + side.len());
    let mut side = side.range(from..to).peekable();
    for p in chunk.into_iter().filter(|p| p.ts >= from && p.ts < to) {
        while let Some(&(&ts, &value)) = side.peek() {
            if ts > p.ts {
                break;
            }
            out.push(Point { ts, value });
            side.next();
        }
        if out.last().is_none_or(|l| l.ts != p.ts) {
            out.push(p);
        }
    }
    out.extend(side.map(|(&ts, &value)| Point { ts, value }));
    out
}
