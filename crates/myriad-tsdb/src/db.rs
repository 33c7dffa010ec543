//! The database: the [`Engine`] (index, head, WAL) plus sealed blocks, with queries, retention
//! and compaction.
//!
//! * [`Db::seal`] moves every head point into a new block per time partition (level 0, the next
//!   generation, raw columns only) and returns their keys, for the caller to persist. A
//!   partition may so hold several blocks; a series' points in a later generation win over an
//!   earlier one's at equal timestamps, and queries merge the blocks with the head, the head
//!   winning.
//! * Compaction ([`Db::plan_compaction`], [`Db::start_compaction`] / [`Compaction::step`],
//!   [`Db::install`]) keeps the blocks per partition few: [`LEVEL_FANIN`] consecutive blocks of
//!   one level merge into one of the next level, and a partition that ended
//!   [`DbConfig::cold_after_ms`] ago is merged whole once ([`FULL_LEVEL`]). A merge writes series
//!   by series to any `Write` sink; a whole-partition merge stores rollup tables computed from
//!   the merged points (so they count a rewritten point once), other blocks compute them from
//!   their points when asked.
//! * Blocks are [`BlockView`]s over bytes the caller supplies (a memory-mapped file), so held
//!   blocks cost their mappings, not decoded series.
//! * Queries: [`Db::raw`], [`Db::aggregate`] (avg, min, max, sum, count, last, rate per step
//!   bucket, over head and blocks), [`Db::latest`], and [`Db::rollups`] (blocks only).
//! * Retention ([`RetentionPolicy`], set with [`Db::set_retention`]): [`Db::plan_retention`]
//!   merges each partition that crossed a duration of the policy into one block where every
//!   series is kept, cut to its rollups or left out; [`Db::drop_expired`] drops partitions no
//!   rule keeps.

use crate::block::{
    BlockBuilder, BlockBytes, BlockError, BlockHeader, BlockView, HOUR_MS, MINUTE_MS, Rollup,
    SealedBlock, SealedSeries, SeriesView, as_f64, floor_to,
};
use crate::engine::Engine;
use crate::head::HeadConfig;
use crate::index::{IndexLimits, SeriesId};
use crate::retention::RetentionPolicy;
use crate::value::Point;
use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// How long (ms) after a partition's end its blocks are merged into one (default one hour,
    /// the default out-of-order window).
    pub cold_after_ms: i64,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            index: IndexLimits::default(),
            head: HeadConfig::default(),
            partition_ms: 86_400_000,
            cold_after_ms: 3_600_000,
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
    /// A block the call names is not held (or its bytes hold another block).
    #[error("no block {0:?}")]
    NoBlock(BlockKey),
}

/// Names one block: its partition and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockKey {
    /// Partition start (ms).
    pub partition: i64,
    /// Generation within the partition (later wins).
    pub generation: u64,
}

/// Level of a block that merged a whole cold partition.
pub const FULL_LEVEL: u8 = u8::MAX;

/// How many blocks of one level a compaction merges into one of the next level.
pub const LEVEL_FANIN: usize = 4;

/// A compaction: merge the `inputs` generations of a partition into one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionPlan {
    /// The partition.
    pub partition: i64,
    /// Generations merged, ascending.
    pub inputs: Vec<u64>,
    /// Level of the merged block.
    pub level: u8,
    /// Apply the retention policy as of this moment (ms) to each series: drop those whose
    /// rollups expired, keep only the rollups of those whose raw points expired.
    pub retain_at: Option<i64>,
}

impl CompactionPlan {
    /// The merged block's key: the newest input's generation, so blocks written since (newer
    /// generations) still win over it.
    pub fn output(&self) -> BlockKey {
        BlockKey {
            partition: self.partition,
            generation: self.inputs.last().copied().unwrap_or(0),
        }
    }
}

/// What [`Db::compact`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Series written.
    pub series: usize,
    /// Raw points written.
    pub points: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Series parts that did not decode (payload CRC or column), left out and logged.
    pub corrupt: usize,
    /// Series left out because their rollups expired.
    pub expired_series: usize,
    /// Series reduced to their rollups because their raw points expired.
    pub raw_dropped_series: usize,
}

/// Why [`Db::compact`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// The plan names blocks the database no longer holds, or a block could not be built.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The sink refused the bytes.
    #[error("writing the compacted block: {0}")]
    Write(#[from] std::io::Error),
}

/// Engine plus sealed blocks.
#[derive(Debug, Clone)]
pub struct Db {
    engine: Engine,
    partition_ms: i64,
    cold_after_ms: i64,
    /// Blocks per partition start, ascending by generation.
    blocks: BTreeMap<i64, Vec<BlockView>>,
    retention: RetentionPolicy,
    next_generation: u64,
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
            cold_after_ms: cfg.cold_after_ms.max(0),
            blocks: BTreeMap::new(),
            retention: RetentionPolicy::default(),
            next_generation: 1,
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

    /// Sets the retention policy ([`Db::plan_retention`], [`Db::drop_expired`]); the default
    /// keeps everything.
    pub fn set_retention(&mut self, policy: RetentionPolicy) {
        self.retention = policy;
    }

    /// The retention policy.
    pub fn retention(&self) -> &RetentionPolicy {
        &self.retention
    }

    /// `(raw_ms, rollup_ms)` the policy gives series `id` (the default for an unknown id).
    fn series_retention(&self, id: SeriesId) -> (i64, i64) {
        match self.engine.index().key(id) {
            Some(key) => self.retention.for_metric(&key.metric),
            None => self.retention.for_metric(""),
        }
    }

    /// The sealed blocks by partition start, each partition's ascending by generation.
    pub fn blocks(&self) -> &BTreeMap<i64, Vec<BlockView>> {
        &self.blocks
    }

    /// The block `key`, if held.
    pub fn block(&self, key: BlockKey) -> Option<&BlockView> {
        self.blocks
            .get(&key.partition)?
            .iter()
            .find(|b| b.generation == key.generation)
    }

    /// A generation number above every block's, for a block made outside [`Db::seal`] (a
    /// version 1 file rewritten at open).
    pub fn allocate_generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// Adds a version 2 block (e.g. read back at start-up); it replaces a block of the same
    /// partition and generation.
    pub fn load_block(&mut self, bytes: BlockBytes) -> Result<BlockKey, DbError> {
        self.load_block_expecting(bytes, None)
    }

    /// [`Db::load_block`], refusing (without loading) a block that is not `expected` (the key
    /// its file name gives).
    pub fn load_block_expecting(
        &mut self,
        bytes: BlockBytes,
        expected: Option<BlockKey>,
    ) -> Result<BlockKey, DbError> {
        let view = BlockView::open(bytes)?;
        let key = BlockKey {
            partition: view.partition,
            generation: view.generation,
        };
        if let Some(want) = expected
            && want != key
        {
            return Err(DbError::NoBlock(want));
        }
        self.next_generation = self.next_generation.max(view.generation.saturating_add(1));
        let views = self.blocks.entry(view.partition).or_default();
        match views.binary_search_by_key(&view.generation, |b| b.generation) {
            Ok(i) => views[i] = view,
            Err(i) => views.insert(i, view),
        }
        Ok(key)
    }

    /// Swaps the bytes behind block `key` for the same block elsewhere (the file a seal wrote,
    /// memory-mapped, for the `Vec` the seal built), checking they hold the same block.
    pub fn replace_bytes(&mut self, key: BlockKey, bytes: BlockBytes) -> Result<(), DbError> {
        let view = BlockView::open(bytes)?;
        let slot = self
            .blocks
            .get_mut(&key.partition)
            .and_then(|v| v.iter_mut().find(|b| b.generation == key.generation))
            .ok_or(DbError::NoBlock(key))?;
        if view.partition != key.partition
            || view.generation != key.generation
            || view.len() != slot.len()
        {
            return Err(DbError::NoBlock(key));
        }
        *slot = view;
        Ok(())
    }

    /// Removes the blocks that a whole-partition merge ([`FULL_LEVEL`]: a cold merge or a
    /// retention rewrite, whose inputs were every block of the partition then) supersedes:
    /// older generations left behind by a crash before the merge deleted them. Returns them,
    /// for the caller to delete. Call after loading the blocks.
    pub fn remove_superseded(&mut self) -> Vec<BlockKey> {
        let mut gone = Vec::new();
        for (p, views) in &mut self.blocks {
            if let Some(i) = views.iter().rposition(|b| b.level == FULL_LEVEL) {
                gone.extend(views.drain(..i).map(|b| BlockKey {
                    partition: *p,
                    generation: b.generation,
                }));
            }
        }
        gone
    }

    /// Seeds the head with what the sealed blocks hold of each series (its value kind and newest
    /// sealed timestamp, see [`crate::Head::seed`]); call once after loading the blocks and
    /// before replaying the WAL. Reads the blocks' indexes only.
    pub fn seed_head_from_blocks(&mut self) {
        for view in self.blocks.values().flatten() {
            for i in 0..view.series_count() {
                let Ok(s) = view.summary(i) else { continue };
                let newest = (s.count > 0).then_some(s.last_ts);
                self.engine.head_mut().seed(s.id, s.kind, newest);
            }
        }
    }

    /// Seals every head point into a new block (level 0) per partition it falls in; returns the
    /// new blocks' keys, ascending. The blocks are held in memory until the caller swaps in
    /// their persisted bytes ([`Db::replace_bytes`]). Points of a partition whose raw data
    /// expired are refused and counted ([`Db::expired_points`]).
    pub fn seal(&mut self) -> Result<Vec<BlockKey>, DbError> {
        let mut built: BTreeMap<i64, SealedBlock> = BTreeMap::new();
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
                rest = tail;
                if self.raw_dropped_in(partition, id) {
                    // Raw retention already passed this series there: its rollups are final.
                    self.expired_points += part.len() as u64;
                    continue;
                }
                built
                    .entry(partition)
                    .or_insert_with(|| SealedBlock {
                        partition,
                        ..SealedBlock::default()
                    })
                    .series
                    .insert(id, SealedSeries::encode_raw(kind, part)?);
            }
        }
        self.engine.head_mut().mark_sealed();
        let mut keys = Vec::with_capacity(built.len());
        for (_, mut block) in built {
            block.generation = self.allocate_generation();
            keys.push(self.load_block(Arc::new(block.to_bytes()))?);
        }
        Ok(keys)
    }

    /// Whether a block of `partition` holds only rollups of series `id`.
    fn raw_dropped_in(&self, partition: i64, id: SeriesId) -> bool {
        self.blocks.get(&partition).is_some_and(|v| {
            v.iter().any(|b| {
                b.summary_of(id)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.count == 0)
            })
        })
    }

    /// Blocks of the partitions overlapping `from..to`, oldest partition first, each
    /// partition's ascending by generation.
    fn views(&self, from: i64, to: i64) -> impl Iterator<Item = &BlockView> {
        self.blocks
            .range(floor_to(from, self.partition_ms)..)
            .take_while(move |(p, _)| **p < to)
            .flat_map(|(_, v)| v.iter())
    }

    fn block_series(
        &self,
        id: SeriesId,
        from: i64,
        to: i64,
    ) -> Result<Vec<SeriesView<'_>>, DbError> {
        let mut out = Vec::new();
        for b in self.views(from, to) {
            if let Some(i) = b.position(id)?
                && b.summary(i)?.overlaps(from, to)
            {
                out.push(b.series_at(i)?.1);
            }
        }
        Ok(out)
    }

    /// Whether series `id` has data in `from <= ts < to` as far as the sealed blocks' time ranges
    /// and the head's points tell (a block whose first and last points bracket the range counts,
    /// as Prometheus counts blocks for its `series` API).
    pub fn has_data(&self, id: SeriesId, from: i64, to: i64) -> bool {
        from < to
            && (self.views(from, to).any(|b| {
                b.summary_of(id)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.overlaps(from, to))
            }) || !self.engine.head().range(id, from, to).is_empty())
    }

    /// The start of the first partition at or after the one holding `from` that has a block
    /// holding series `id` (index lookups only).
    pub fn first_partition_with(&self, id: SeriesId, from: i64) -> Option<i64> {
        self.blocks
            .range(floor_to(from, self.partition_ms)..)
            .find(|(_, views)| {
                views
                    .iter()
                    .any(|b| b.position(id).ok().flatten().is_some())
            })
            .map(|(p, _)| *p)
    }

    /// Points of series `id` with `from <= ts < to`, sorted, one per timestamp (the latest
    /// written wins).
    pub fn raw(&self, id: SeriesId, from: i64, to: i64) -> Result<Vec<Point>, DbError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut sources = 0;
        for s in self.block_series(id, from, to)? {
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
            out = dedup_later_wins(out);
        }
        Ok(out)
    }

    /// `agg` of series `id` over buckets of `step` ms aligned to multiples of `step`, for points
    /// with `from <= ts < to`: `(bucket start, value)` for each bucket that has a value.
    ///
    /// Partitions whose raw data was dropped (retention, [`Db::plan_retention`]) answer from their stored
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
            for b in self.views(from, to) {
                if let Some(i) = b.position(id)?
                    && b.summary(i)?.count == 0
                {
                    let (_, s) = b.series_at(i)?;
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
        // Partitions newest first: the first with raw data of the series holds its newest
        // point; among its blocks the latest generation wins at equal timestamps.
        for views in self.blocks.values().rev() {
            let mut best: Option<(i64, &BlockView, usize)> = None;
            for b in views {
                if let Some(i) = b.position(id)? {
                    let s = b.summary(i)?;
                    if s.count > 0 && best.is_none_or(|(t, _, _)| s.last_ts >= t) {
                        best = Some((s.last_ts, b, i));
                    }
                }
            }
            if let Some((_, b, i)) = best {
                let (_, s) = b.series_at(i)?;
                return Ok(s.points()?.last().copied());
            }
        }
        Ok(None)
    }

    /// Rollups of `width` ([`crate::block::MINUTE_MS`] or [`crate::block::HOUR_MS`]) for series
    /// `id` with `from <= start < to`, from sealed blocks only, sorted by start: the stored ones
    /// where a partition has one block (or only rollups), else computed from its merged points
    /// (so a point rewritten in a later block counts once). Buckets split over partitions are
    /// combined.
    pub fn rollups(
        &self,
        id: SeriesId,
        width: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<Rollup>, DbError> {
        let lo = floor_to(from.saturating_sub(width), self.partition_ms);
        let mut all = Vec::new();
        for views in self
            .blocks
            .range(lo..)
            .take_while(|(p, _)| **p < to)
            .map(|(_, v)| v)
        {
            let mut parts = Vec::new();
            for b in views {
                if let Some(s) = b.series(id)? {
                    parts.push((s.is_empty(), s));
                }
            }
            let stored = match parts.as_slice() {
                [] => continue,
                [(_, s)] => s.rollups(width)?,
                _ => match parts.iter().rev().find(|(dropped, _)| *dropped) {
                    Some((_, s)) => s.rollups(width)?,
                    None => {
                        let mut pts = Vec::new();
                        for (_, s) in &parts {
                            pts.extend(s.points()?);
                        }
                        crate::block::rollup(&dedup_later_wins(pts), width)
                    }
                },
            };
            all.extend(
                stored
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

    /// The next compaction worth doing at `now_ms`, if any:
    /// * a partition that ended at least `cold_after_ms` ago and has more than one block, none
    ///   of them merged whole yet: all of its blocks into one of [`FULL_LEVEL`];
    /// * the oldest run of [`LEVEL_FANIN`] consecutive blocks of a partition sharing a level
    ///   below [`FULL_LEVEL`]: into one of the next level (so seals every few minutes leave at
    ///   most three blocks per level, and each point is rewritten about log4(seals per
    ///   partition) times). Seals add level 0 blocks at the end and a merge puts its block where
    ///   its run was, so levels never rise from older to newer blocks.
    pub fn plan_compaction(&self, now_ms: i64) -> Option<CompactionPlan> {
        let w = self.partition_ms;
        for (p, views) in &self.blocks {
            if views.len() < 2 {
                continue;
            }
            let cold = p.saturating_add(w).saturating_add(self.cold_after_ms) <= now_ms;
            if cold && views[0].level != FULL_LEVEL {
                return Some(self.plan(*p, views, FULL_LEVEL, None));
            }
            if let Some(run) = views.windows(LEVEL_FANIN).find(|run| {
                run[0].level < FULL_LEVEL - 1 && run.iter().all(|b| b.level == run[0].level)
            }) {
                return Some(self.plan(*p, run, run[0].level + 1, None));
            }
        }
        None
    }

    /// Plans the retention rewrites due at `now_ms`: every partition that crossed a retention
    /// duration of the policy (its end plus the duration is in `(retained_at, now_ms]`, where
    /// `retained_at` is when retention last rewrote it) is merged whole, each series kept, cut
    /// to its rollups or dropped as its metric's rule says. Partitions past every rule's rollup
    /// duration are [`Db::drop_expired`]'s.
    pub fn plan_retention(&self, now_ms: i64) -> Vec<CompactionPlan> {
        let w = self.partition_ms;
        let longest = self.retention.longest_rollup_ms();
        let mut plans = Vec::new();
        for (p, views) in &self.blocks {
            let end = p.saturating_add(w);
            if crossed(end, longest, now_ms) {
                continue;
            }
            let done = views
                .iter()
                .filter(|b| b.level == FULL_LEVEL)
                .map(|b| b.retained_at)
                .max()
                .unwrap_or(i64::MIN);
            let due = self
                .retention
                .durations()
                .any(|d| end.checked_add(d).is_some_and(|t| t > done && t <= now_ms));
            if due {
                plans.push(self.plan(*p, views, FULL_LEVEL, Some(now_ms)));
            }
        }
        plans
    }

    /// Drops every partition past the longest rollup duration of the retention policy at
    /// `now_ms` (nothing any rule keeps); returns their blocks, for the caller to delete.
    pub fn drop_expired(&mut self, now_ms: i64) -> Vec<BlockKey> {
        let longest = self.retention.longest_rollup_ms();
        match now_ms.checked_sub(longest) {
            Some(cutoff) => self.drop_before(cutoff),
            None => Vec::new(),
        }
    }

    fn plan(
        &self,
        partition: i64,
        views: &[BlockView],
        level: u8,
        retain_at: Option<i64>,
    ) -> CompactionPlan {
        CompactionPlan {
            partition,
            inputs: views.iter().map(|b| b.generation).collect(),
            level,
            retain_at,
        }
    }

    /// A plan merging every block of `partition` into one ([`FULL_LEVEL`]), applying
    /// retention as of `retain_at` if given; `None` when there is nothing to merge (no block,
    /// or one block and no retention to apply).
    pub fn plan_whole(&self, partition: i64, retain_at: Option<i64>) -> Option<CompactionPlan> {
        let views = self.blocks.get(&partition)?;
        if views.is_empty() || (views.len() == 1 && retain_at.is_none()) {
            return None;
        }
        Some(self.plan(partition, views, FULL_LEVEL, retain_at))
    }

    /// Whether every input of `plan` is still held (so [`Db::install`] would take it).
    pub fn inputs_present(&self, plan: &CompactionPlan) -> bool {
        self.inputs(plan).is_ok()
    }

    fn inputs(&self, plan: &CompactionPlan) -> Result<Vec<&BlockView>, DbError> {
        plan.inputs
            .iter()
            .map(|g| {
                let key = BlockKey {
                    partition: plan.partition,
                    generation: *g,
                };
                self.block(key).ok_or(DbError::NoBlock(key))
            })
            .collect()
    }

    /// Writes the block `plan` makes to `out`, series by series (memory: one series' points
    /// plus 48 bytes of index per series). Per series the inputs' points are merged, a later
    /// generation winning at equal timestamps, and re-encoded with fresh rollups; a series part
    /// that does not decode is left out and counted. Nothing changes until [`Db::install`].
    /// The same work in bounded steps: [`Db::start_compaction`].
    pub fn compact(
        &self,
        plan: &CompactionPlan,
        out: &mut impl std::io::Write,
    ) -> Result<CompactionReport, CompactError> {
        let mut c = self.start_compaction(plan, out)?;
        while c.step(self, out, usize::MAX)? {}
        c.finish(out)
    }

    /// Starts the compaction `plan` (writing the block header to `out`); [`Compaction::step`]
    /// writes some series at a time, so a caller can answer other work in between. The inputs'
    /// bytes are held by the [`Compaction`] itself (shared, not copied).
    pub fn start_compaction(
        &self,
        plan: &CompactionPlan,
        out: &mut impl std::io::Write,
    ) -> Result<Compaction, CompactError> {
        let inputs: Vec<BlockView> = self.inputs(plan)?.into_iter().cloned().collect();
        let key = plan.output();
        let end = plan.partition.saturating_add(self.partition_ms);
        let longest_raw = self.retention.longest_raw_ms();
        let builder = BlockBuilder::new(
            BlockHeader {
                partition: key.partition,
                generation: key.generation,
                level: plan.level,
                raw_dropped: plan
                    .retain_at
                    .is_some_and(|now| crossed(end, longest_raw, now)),
                retained_at: plan.retain_at.unwrap_or(i64::MIN),
            },
            out,
        )?;
        Ok(Compaction {
            plan: plan.clone(),
            at: vec![0; inputs.len()],
            inputs,
            builder,
            end,
            report: CompactionReport::default(),
        })
    }

    /// Puts the block `plan` made (as [`Db::compact`] wrote it) in place of its inputs; returns
    /// the inputs other than the output's key, for the caller to delete.
    pub fn install(
        &mut self,
        plan: &CompactionPlan,
        bytes: BlockBytes,
    ) -> Result<Vec<BlockKey>, DbError> {
        self.inputs(plan)?;
        let view = BlockView::open(bytes)?;
        let key = plan.output();
        if view.partition != key.partition || view.generation != key.generation {
            return Err(DbError::NoBlock(key));
        }
        let views = self.blocks.entry(plan.partition).or_default();
        views.retain(|b| !plan.inputs.contains(&b.generation));
        let i = views.partition_point(|b| b.generation < key.generation);
        views.insert(i, view);
        Ok(plan
            .inputs
            .iter()
            .filter(|g| **g != key.generation)
            .map(|g| BlockKey {
                partition: plan.partition,
                generation: *g,
            })
            .collect())
    }

    /// [`Db::compact`] into memory and [`Db::install`] (tests, and databases without files).
    pub fn compact_in_memory(
        &mut self,
        plan: &CompactionPlan,
    ) -> Result<CompactionReport, CompactError> {
        let mut out = Vec::new();
        let report = self.compact(plan, &mut out)?;
        self.install(plan, Arc::new(out))?;
        Ok(report)
    }

    /// Applies the retention policy at `now_ms` in memory ([`Db::drop_expired`], then every
    /// rewrite [`Db::plan_retention`] finds, each [`Db::compact_in_memory`]); returns the
    /// partitions dropped whole and the partitions rewritten. Points that reach a series whose
    /// raw data a partition no longer holds are refused at seal and counted in
    /// [`Db::expired_points`]; raw queries return nothing there, aggregations use the rollups.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<(usize, usize), CompactError> {
        let mut dropped: Vec<i64> = self
            .drop_expired(now_ms)
            .into_iter()
            .map(|k| k.partition)
            .collect();
        dropped.dedup();
        let plans = self.plan_retention(now_ms);
        for plan in &plans {
            self.compact_in_memory(plan)?;
        }
        Ok((dropped.len(), plans.len()))
    }

    /// Points refused at seal because their partition's raw data had expired (a counter).
    pub fn expired_points(&self) -> u64 {
        self.expired_points
    }

    /// Drops every block (raw and rollups) whose partition ends at or before `cutoff`; returns
    /// their keys (for the caller to delete their files).
    pub fn drop_before(&mut self, cutoff: i64) -> Vec<BlockKey> {
        let w = self.partition_ms;
        let keep = self.blocks.split_off(&i64::MIN);
        let mut gone = Vec::new();
        for (p, views) in keep {
            if p.saturating_add(w) > cutoff {
                self.blocks.insert(p, views);
            } else {
                gone.extend(views.iter().map(|b| BlockKey {
                    partition: p,
                    generation: b.generation,
                }));
            }
        }
        gone
    }
}

/// A compaction under way ([`Db::start_compaction`]): the inputs it merges (their bytes held
/// here), how far it got in each, and the block builder.
#[derive(Debug)]
pub struct Compaction {
    plan: CompactionPlan,
    inputs: Vec<BlockView>,
    at: Vec<usize>,
    builder: BlockBuilder,
    end: i64,
    report: CompactionReport,
}

impl Compaction {
    /// The plan.
    pub fn plan(&self) -> &CompactionPlan {
        &self.plan
    }

    /// Writes up to `max_series` more series to `out`; `Ok(true)` while some are left. `db`
    /// answers what the retention policy says of a series (its key); it may have changed since
    /// the start (points written, blocks added: the inputs are fixed).
    pub fn step(
        &mut self,
        db: &Db,
        out: &mut impl std::io::Write,
        max_series: usize,
    ) -> Result<bool, CompactError> {
        // Series handled in this step (written, left out or empty).
        let mut written = 0;
        while written < max_series {
            // The smallest series id not yet written, over all inputs (k-way merge of indexes).
            let mut next: Option<SeriesId> = None;
            for (b, &i) in self.inputs.iter().zip(&self.at) {
                if i < b.series_count() {
                    let id = b.summary(i).map_err(DbError::from)?.id;
                    next = Some(next.map_or(id, |n| n.min(id)));
                }
            }
            let Some(id) = next else {
                return Ok(false);
            };
            // What retention says of this series (when the plan applies it).
            let end = self.end;
            let (drop_series, drop_raw) = match self.plan.retain_at {
                Some(now) => {
                    let (raw_ms, rollup_ms) = db.series_retention(id);
                    (crossed(end, rollup_ms, now), crossed(end, raw_ms, now))
                }
                None => (false, false),
            };
            let mut points: Vec<Point> = Vec::new();
            let mut kind = None;
            let mut rolled_only = None;
            for (b, i) in self.inputs.iter().zip(self.at.iter_mut()) {
                if *i >= b.series_count() || b.summary(*i).map_err(DbError::from)?.id != id {
                    continue;
                }
                let part = if drop_series {
                    Ok(None)
                } else {
                    b.series_at(*i).and_then(|(_, s)| {
                        if s.is_empty() {
                            Ok(Some((s, Vec::new())))
                        } else {
                            s.points().map(|p| Some((s, p)))
                        }
                    })
                };
                *i += 1;
                match part {
                    Ok(None) => {}
                    Ok(Some((s, pts))) => {
                        kind = Some(s.kind());
                        if s.is_empty() {
                            // Rollups only (raw retention passed it): its rollups stay final;
                            // raw points of later blocks (written after a policy change)
                            // cannot join them and are left out.
                            rolled_only = Some(s.to_owned_series(true));
                        } else {
                            points.extend(pts);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(partition = self.plan.partition, generation = b.generation, series = id.0, error = %e, "telemetry block series does not decode; left out of the compaction");
                        self.report.corrupt += 1;
                    }
                }
            }
            written += 1;
            if drop_series {
                self.report.expired_series += 1;
                continue;
            }
            let series = match (rolled_only, kind) {
                (Some(s), _) => s,
                (None, Some(kind)) if !points.is_empty() => {
                    let merged = dedup_later_wins(points);
                    // Rollup tables are stored by whole-partition merges only; level merges
                    // (blocks merged again later) keep raw columns, as seals do.
                    let encode = if self.plan.level == FULL_LEVEL {
                        SealedSeries::encode
                    } else {
                        SealedSeries::encode_raw
                    };
                    let mut s = encode(kind, &merged).map_err(DbError::from)?;
                    if drop_raw {
                        s.drop_raw();
                        self.report.raw_dropped_series += 1;
                    } else {
                        self.report.points += merged.len();
                    }
                    s
                }
                _ => continue,
            };
            self.builder.add(id, &series, out)?;
            self.report.series += 1;
        }
        Ok(true)
    }

    /// Writes the index and footer; the report of the whole compaction.
    pub fn finish(
        mut self,
        out: &mut impl std::io::Write,
    ) -> Result<CompactionReport, CompactError> {
        self.report.bytes = self.builder.finish(out)?;
        Ok(self.report)
    }
}

/// Whether `end + duration` (no overflow: a duration past the end of time never passes) is at
/// or before `now`.
fn crossed(end: i64, duration: i64, now: i64) -> bool {
    end.checked_add(duration).is_some_and(|t| t <= now)
}

/// Sorts points by timestamp (stable) and keeps, among equal timestamps, the last one.
fn dedup_later_wins(mut points: Vec<Point>) -> Vec<Point> {
    points.sort_by_key(|p| p.ts);
    let mut merged: Vec<Point> = Vec::with_capacity(points.len());
    for p in points {
        match merged.last_mut() {
            Some(l) if l.ts == p.ts => *l = p,
            _ => merged.push(p),
        }
    }
    merged
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
