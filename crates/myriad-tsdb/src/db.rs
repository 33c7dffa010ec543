//! The database: the [`Engine`] (index, head, WAL) plus sealed blocks, with queries and retention.
//!
//! * [`Db::seal`] moves every head point into one [`SealedBlock`] per time partition and returns
//!   the partitions it changed, for the caller to persist. Points sealed into a partition that
//!   already has a block (late points) are merged into that block's series (the newer value wins
//!   at equal timestamps) and the series re-encoded, so rollups never count a point twice.
//!   Queries merge the block with the head, the head winning at equal timestamps.
//! * Queries: [`Db::raw`], [`Db::aggregate`] (avg, min, max, sum, count, last, rate per step
//!   bucket, over head and blocks), [`Db::latest`], and [`Db::rollups`] (the 1 min / 1 h rollups
//!   stored at seal time, blocks only).
//! * Retention: [`Db::drop_raw_before`] drops the raw columns of partitions that end at or before
//!   a cutoff and keeps their rollups; [`Db::drop_before`] drops whole partitions.

use crate::block::{
    BlockError, HOUR_MS, MINUTE_MS, Rollup, SealedBlock, SealedSeries, as_f64, floor_to,
};
use crate::engine::Engine;
use crate::head::HeadConfig;
use crate::index::{IndexLimits, SeriesId};
use crate::value::Point;
use std::collections::BTreeMap;

/// Most buckets an aggregation may produce; a query needing more is refused.
pub const MAX_BUCKETS: i64 = 100_000;

/// Database configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbConfig {
    /// Index limits.
    pub index: IndexLimits,
    /// Head configuration.
    pub head: HeadConfig,
    /// Width of a time partition in ms (default one day).
    pub partition_ms: i64,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            index: IndexLimits::default(),
            head: HeadConfig::default(),
            partition_ms: 86_400_000,
        }
    }
}

/// Aggregation functions for [`Db::aggregate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Mean of the values.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Sum of the values.
    Sum,
    /// Number of points.
    Count,
    /// Value of the latest point.
    Last,
    /// Per-second increase of a counter between the bucket's first and last point (a drop is
    /// taken as a reset to zero); buckets with fewer than two points have no rate.
    Rate,
}

/// Why a query or seal failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// A block could not be built or decoded.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The step is not positive.
    #[error("step must be positive, got {0}")]
    BadStep(i64),
    /// The range divided by the step exceeds [`MAX_BUCKETS`].
    #[error("query needs {buckets} buckets, limit {MAX_BUCKETS}")]
    TooManyBuckets {
        /// Buckets the query would need.
        buckets: i64,
    },
    /// The partition width is not positive.
    #[error("partition width must be positive, got {0}")]
    BadPartition(i64),
}

/// Engine plus sealed blocks.
#[derive(Debug, Clone)]
pub struct Db {
    engine: Engine,
    partition_ms: i64,
    /// One block per partition start.
    blocks: BTreeMap<i64, SealedBlock>,
    /// Points refused at seal because their partition's raw data had already expired.
    expired_points: u64,
}

impl Db {
    /// An empty database.
    pub fn new(cfg: DbConfig) -> Result<Self, DbError> {
        if cfg.partition_ms <= 0 {
            return Err(DbError::BadPartition(cfg.partition_ms));
        }
        Ok(Self {
            engine: Engine::new(cfg.index, cfg.head),
            partition_ms: cfg.partition_ms,
            blocks: BTreeMap::new(),
            expired_points: 0,
        })
    }

    /// The engine (index, head, WAL records).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, mutably (to write points).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The sealed blocks by partition start.
    pub fn blocks(&self) -> &BTreeMap<i64, SealedBlock> {
        &self.blocks
    }

    /// Adds a block read back from storage (e.g. at start-up); it replaces any block of the same
    /// partition.
    pub fn load_block(&mut self, bytes: &[u8]) -> Result<(), DbError> {
        let b = SealedBlock::from_bytes(bytes)?;
        self.blocks.insert(b.partition, b);
        Ok(())
    }

    /// Seeds the head with what the sealed blocks hold of each series (its value kind and newest
    /// sealed timestamp, see [`crate::Head::seed`]); call once after loading the blocks and
    /// before replaying the WAL.
    pub fn seed_head_from_blocks(&mut self) {
        for block in self.blocks.values() {
            for (id, s) in &block.series {
                let newest = (!s.is_empty()).then(|| s.time_range().1);
                self.engine.head_mut().seed(*id, s.kind(), newest);
            }
        }
    }

    /// Seals every head point into the block of its partition; returns the partitions whose
    /// blocks changed, ascending. The caller persists each one's [`SealedBlock::to_bytes`].
    pub fn seal(&mut self) -> Result<Vec<i64>, DbError> {
        let mut changed = std::collections::BTreeSet::new();
        for id in (0..self.engine.index().len() as u32).map(SeriesId) {
            let Some((kind, points)) = self.engine.head_mut().seal(id) else {
                continue;
            };
            let mut rest = points.as_slice();
            while let Some(p) = rest.first() {
                let partition = floor_to(p.ts, self.partition_ms);
                let end = partition.saturating_add(self.partition_ms);
                let n = rest.partition_point(|q| q.ts < end);
                let (part, tail) = rest.split_at(n);
                let block = self.blocks.entry(partition).or_insert_with(|| SealedBlock {
                    partition,
                    ..SealedBlock::default()
                });
                if block.raw_dropped {
                    // Raw retention already passed this partition: its rollups are final.
                    self.expired_points += part.len() as u64;
                    rest = tail;
                    continue;
                }
                let encoded = match block.series.get(&id) {
                    Some(old) => SealedSeries::encode(kind, &merge_newer(old.points()?, part))?,
                    None => SealedSeries::encode(kind, part)?,
                };
                block.series.insert(id, encoded);
                changed.insert(partition);
                rest = tail;
            }
        }
        Ok(changed.into_iter().collect())
    }

    fn block_series(
        &self,
        id: SeriesId,
        from: i64,
        to: i64,
    ) -> impl Iterator<Item = &SealedSeries> {
        let w = self.partition_ms;
        self.blocks
            .range(floor_to(from, w)..)
            .map(|(_, b)| b)
            .take_while(move |b| b.partition < to)
            .filter_map(move |b| b.series.get(&id))
            .filter(move |s| {
                let (a, z) = s.time_range();
                a < to && z >= from
            })
    }

    /// Whether series `id` has data in `from <= ts < to` as far as the sealed blocks' time ranges
    /// and the head's points tell (a block whose first and last points bracket the range counts,
    /// as Prometheus counts blocks for its `series` API).
    pub fn has_data(&self, id: SeriesId, from: i64, to: i64) -> bool {
        from < to
            && (self.block_series(id, from, to).next().is_some()
                || !self.engine.head().range(id, from, to).is_empty())
    }

    /// Points of series `id` with `from <= ts < to`, sorted, one per timestamp (the latest
    /// written wins).
    pub fn raw(&self, id: SeriesId, from: i64, to: i64) -> Result<Vec<Point>, DbError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut sources = 0;
        for s in self.block_series(id, from, to) {
            let pts = s.points()?;
            let lo = pts.partition_point(|p| p.ts < from);
            let hi = pts.partition_point(|p| p.ts < to);
            out.extend_from_slice(&pts[lo..hi]);
            sources += 1;
        }
        let head = self.engine.head().range(id, from, to);
        if !head.is_empty() {
            out.extend(head);
            sources += 1;
        }
        if sources > 1 {
            // Stable: among equal timestamps the later source stays last; keep that one.
            out.sort_by_key(|p| p.ts);
            let mut merged: Vec<Point> = Vec::with_capacity(out.len());
            for p in out {
                match merged.last_mut() {
                    Some(l) if l.ts == p.ts => *l = p,
                    _ => merged.push(p),
                }
            }
            out = merged;
        }
        Ok(out)
    }

    /// `agg` of series `id` over buckets of `step` ms aligned to multiples of `step`, for points
    /// with `from <= ts < to`: `(bucket start, value)` for each bucket that has a value.
    ///
    /// Partitions whose raw data was dropped ([`Db::drop_raw_before`]) answer from their stored
    /// rollups when `step` is a multiple of 1 min (or 1 h), for every function but `Rate`; there
    /// a rollup bucket counts whole if its start is in the range.
    pub fn aggregate(
        &self,
        id: SeriesId,
        from: i64,
        to: i64,
        step: i64,
        agg: Agg,
    ) -> Result<Vec<(i64, f64)>, DbError> {
        if step <= 0 {
            return Err(DbError::BadStep(step));
        }
        if from >= to {
            return Ok(Vec::new());
        }
        let buckets = (to.saturating_sub(from) / step).saturating_add(1);
        if buckets > MAX_BUCKETS {
            return Err(DbError::TooManyBuckets { buckets });
        }
        let mut out = aggregate_points(&self.raw(id, from, to)?, step, agg);
        // Partitions whose raw data expired answer from their rollups, when the step is a
        // multiple of a rollup width (rollup buckets then nest in step buckets). No rate there.
        let width = [HOUR_MS, MINUTE_MS].into_iter().find(|w| step % w == 0);
        if let (Some(width), false) = (width, agg == Agg::Rate) {
            let mut rolled = Vec::new();
            for b in self
                .blocks
                .range(floor_to(from, self.partition_ms)..)
                .map(|(_, b)| b)
                .take_while(|b| b.partition < to)
                .filter(|b| b.raw_dropped)
            {
                if let Some(s) = b.series.get(&id) {
                    rolled.extend(
                        s.rollups(width)?
                            .into_iter()
                            .filter(|r| r.start >= from && r.start < to),
                    );
                }
            }
            if !rolled.is_empty() {
                let extra = aggregate_rollups(&rolled, step, agg);
                out.extend(
                    extra
                        .into_iter()
                        .filter(|(start, _)| out.binary_search_by_key(start, |x| x.0).is_err())
                        .collect::<Vec<_>>(),
                );
                out.sort_by_key(|x| x.0);
            }
        }
        Ok(out)
    }

    /// The newest point of series `id` in head or blocks.
    pub fn latest(&self, id: SeriesId) -> Result<Option<Point>, DbError> {
        if let Some(p) = self.engine.head().latest(id) {
            return Ok(Some(p));
        }
        let newest = self
            .blocks
            .values()
            .filter_map(|b| b.series.get(&id))
            .filter(|s| !s.is_empty())
            .max_by_key(|s| s.time_range().1);
        match newest {
            Some(s) => Ok(s.points()?.last().copied()),
            None => Ok(None),
        }
    }

    /// Stored rollups of `width` ([`crate::block::MINUTE_MS`] or [`crate::block::HOUR_MS`]) for
    /// series `id` with `from <= start < to`, from sealed blocks only, sorted by start. Buckets
    /// split over several blocks are combined.
    pub fn rollups(
        &self,
        id: SeriesId,
        width: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<Rollup>, DbError> {
        let mut all = Vec::new();
        for s in self.block_series(id, from.saturating_sub(width), to) {
            all.extend(
                s.rollups(width)?
                    .into_iter()
                    .filter(|r| r.start >= from && r.start < to),
            );
        }
        all.sort_by_key(|r| r.start);
        let mut out: Vec<Rollup> = Vec::with_capacity(all.len());
        for r in all {
            match out.last_mut() {
                Some(l) if l.start == r.start => {
                    l.min = l.min.min(r.min);
                    l.max = l.max.max(r.max);
                    l.sum += r.sum;
                    l.count += r.count;
                    l.last = r.last;
                }
                _ => out.push(r),
            }
        }
        Ok(out)
    }

    /// Drops the raw columns of every block whose partition ends at or before `cutoff`, keeping
    /// its rollups (so rollups can be kept longer than raw data); returns how many blocks lost
    /// raw data. Points that reach such a partition later are refused at seal and counted in
    /// [`Db::expired_points`]. Raw queries return nothing for those partitions.
    pub fn drop_raw_before(&mut self, cutoff: i64) -> usize {
        let w = self.partition_ms;
        let mut n = 0;
        for b in self.blocks.values_mut() {
            if b.partition.saturating_add(w) <= cutoff && !b.raw_dropped {
                b.raw_dropped = true;
                b.series.values_mut().for_each(SealedSeries::drop_raw);
                n += 1;
            }
        }
        n
    }

    /// Points refused at seal because their partition's raw data had expired (a counter).
    pub fn expired_points(&self) -> u64 {
        self.expired_points
    }

    /// Drops every block (raw and rollups) whose partition ends at or before `cutoff`; returns how many.
    pub fn drop_before(&mut self, cutoff: i64) -> usize {
        let w = self.partition_ms;
        let before = self.blocks.len();
        self.blocks
            .retain(|_, b| b.partition.saturating_add(w) > cutoff);
        before - self.blocks.len()
    }
}

/// Merges two sorted point lists; at equal timestamps the one from `newer` is kept.
fn merge_newer(older: Vec<Point>, newer: &[Point]) -> Vec<Point> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let mut old = older.into_iter().peekable();
    for &p in newer {
        while let Some(o) = old.next_if(|o| o.ts < p.ts) {
            out.push(o);
        }
        if old.peek().is_some_and(|o| o.ts == p.ts) {
            old.next();
        }
        out.push(p);
    }
    out.extend(old);
    out
}

/// Aggregates sorted rollups into `step`-aligned buckets (`step` a multiple of their width);
/// `Rate` gives nothing.
fn aggregate_rollups(rollups: &[Rollup], step: i64, agg: Agg) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let mut rest = rollups;
    while let Some(first) = rest.first() {
        let start = floor_to(first.start, step);
        let end = start.saturating_add(step);
        let n = rest.partition_point(|r| r.start < end);
        let (bucket, tail) = rest.split_at(n);
        rest = tail;
        let count: u64 = bucket.iter().map(|r| r.count).sum();
        let sum: f64 = bucket.iter().map(|r| r.sum).sum();
        let v = match agg {
            Agg::Avg => Some(sum / count as f64),
            Agg::Min => bucket.iter().map(|r| r.min).reduce(f64::min),
            Agg::Max => bucket.iter().map(|r| r.max).reduce(f64::max),
            Agg::Sum => Some(sum),
            Agg::Count => Some(count as f64),
            Agg::Last => bucket.last().map(|r| r.last),
            Agg::Rate => None,
        };
        if let Some(v) = v {
            out.push((start, v));
        }
    }
    out
}

/// Aggregates sorted points into `step`-aligned buckets.
pub fn aggregate_points(points: &[Point], step: i64, agg: Agg) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let mut rest = points;
    while let Some(first) = rest.first() {
        let start = floor_to(first.ts, step);
        let end = start.saturating_add(step);
        let n = rest.partition_point(|p| p.ts < end);
        let (bucket, tail) = rest.split_at(n);
        rest = tail;
        let vals = bucket.iter().map(|p| as_f64(p.value));
        let v = match agg {
            Agg::Avg => Some(vals.sum::<f64>() / bucket.len() as f64),
            Agg::Min => vals.reduce(f64::min),
            Agg::Max => vals.reduce(f64::max),
            Agg::Sum => Some(vals.sum()),
            Agg::Count => Some(bucket.len() as f64),
            Agg::Last => bucket.last().map(|p| as_f64(p.value)),
            Agg::Rate => rate(bucket),
        };
        if let Some(v) = v {
            out.push((start, v));
        }
    }
    out
}

fn rate(bucket: &[Point]) -> Option<f64> {
    let (first, last) = (bucket.first()?, bucket.last()?);
    if bucket.len() < 2 {
        return None;
    }
    let mut increase = 0.0;
    for w in bucket.windows(2) {
        let (a, b) = (as_f64(w[0].value), as_f64(w[1].value));
        increase += if b >= a { b - a } else { b };
    }
    Some(increase * 1000.0 / (last.ts as f64 - first.ts as f64))
}
