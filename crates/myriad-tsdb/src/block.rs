//! Sealed blocks: points of one time partition, re-encoded column-wise with `pco`, plus
//! per-bucket rollups computed when the block is built.
//!
//! Per series a block holds a timestamp column (`i64` ms) and a value column (`f64`, `i64`, or
//! booleans as `i64` 0/1), each compressed separately with `pco` at its default level, and two
//! rollup tables (1 minute and 1 hour buckets: start, min, max, sum, count, last), also as `pco`
//! columns (min, max, sum and last as integers of 10^-k when all values are multiples of 10^-k;
//! sums are then exact).
//!
//! A partition may have several blocks, one per seal (generation) until compaction merges them
//! ([`crate::db`]). Version 2 layout (integers little endian), read in place ([`BlockView`]):
//!
//! ```text
//! header (36 B): "MTB" 2, i64 partition start, u64 generation, u8 level, u8 flags (1: every
//!                series holds rollups only), 6 zero bytes, i64 retained at (ms; the moment
//!                retention last rewrote the partition, i64::MIN if never)
//! payloads:      per series: col ts, col values, 2 x (u32 buckets, col start, col min,
//!                col max, col sum, col count, col last)
//! index:         per series, ascending id, 48 B: u32 id, u8 kind tag, 3 zero bytes,
//!                u32 points, u32 CRC32 of the payload, i64 first ts, i64 last ts,
//!                u64 payload offset, u64 payload length
//! footer (16 B): u32 series, u64 index offset, u32 CRC32 of header and index
//! col = u32 byte length + pco standalone bytes (decimal columns: a mode byte first)
//! ```
//!
//! Opening a block checks the header, footer, index CRC, index order and payload bounds (so a
//! series is found by binary search without reading payloads); a series' payload CRC is
//! checked when it is read. Version 1 (one CRC over the whole file, series inline, one block per
//! partition) is still parsed by [`SealedBlock::from_bytes`], to rewrite old files.

use std::collections::BTreeMap;
use std::sync::Arc;

use pco::ChunkConfig;
use pco::standalone::{DecompressorItem, FileDecompressor, simple_compress};

use crate::index::SeriesId;
use crate::value::{Point, Value, ValueKind};

const MAGIC: &[u8; 3] = b"MTB";
const BLOCK_VERSION: u8 = 2;

/// One-minute rollup bucket width (ms).
pub const MINUTE_MS: i64 = 60_000;
/// One-hour rollup bucket width (ms).
pub const HOUR_MS: i64 = 3_600_000;

/// Why a block could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The bytes end early or a field is out of range.
    #[error("corrupt block: {0}")]
    Corrupt(&'static str),
    /// The CRC does not match.
    #[error("block CRC mismatch")]
    Crc,
    /// `pco` refused to compress or decompress a column.
    #[error("pco: {0}")]
    Pco(String),
}

fn pco_err(e: pco::errors::PcoError) -> BlockError {
    BlockError::Pco(e.to_string())
}

/// Aggregates of the points in one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollup {
    /// Bucket start (ms, a multiple of the bucket width).
    pub start: i64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of the values.
    pub sum: f64,
    /// Number of points.
    pub count: u64,
    /// Value of the latest point.
    pub last: f64,
}

/// The start of the `width`-ms bucket holding `ts` (`width` > 0), clamped to `i64::MIN` where
/// the true start is below it, so any timestamp is safe.
pub fn floor_to(ts: i64, width: i64) -> i64 {
    ts.saturating_sub(ts.rem_euclid(width))
}

/// A value as a float for aggregation (booleans as 0 and 1).
pub fn as_f64(v: Value) -> f64 {
    match v {
        Value::F64(f) => f,
        Value::I64(i) => i as f64,
        Value::Bool(b) => f64::from(u8::from(b)),
    }
}

/// Rolls sorted points into buckets of `width` ms.
pub fn rollup(points: &[Point], width: i64) -> Vec<Rollup> {
    let mut out: Vec<Rollup> = Vec::new();
    for p in points {
        let start = floor_to(p.ts, width);
        let v = as_f64(p.value);
        match out.last_mut() {
            Some(r) if r.start == start => {
                r.min = r.min.min(v);
                r.max = r.max.max(v);
                r.sum += v;
                r.count += 1;
                r.last = v;
            }
            _ => out.push(Rollup {
                start,
                min: v,
                max: v,
                sum: v,
                count: 1,
                last: v,
            }),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
struct RollupCols {
    n: u32,
    cols: [Vec<u8>; 6],
}

/// One series' data in a block, owned (built by [`SealedSeries::encode`] at seal or compaction).
#[derive(Debug, Clone, PartialEq)]
pub struct SealedSeries {
    kind: ValueKind,
    count: u32,
    first_ts: i64,
    last_ts: i64,
    ts_col: Vec<u8>,
    val_col: Vec<u8>,
    rollups: [RollupCols; 2],
}

impl SealedSeries {
    /// Drops the raw columns, keeping the rollups and the time range.
    pub fn drop_raw(&mut self) {
        self.count = 0;
        self.ts_col = Vec::new();
        self.val_col = Vec::new();
    }

    /// The same data, borrowed: its kind, length, time range and decoding methods are
    /// [`SeriesView`]'s.
    pub fn view(&self) -> SeriesView<'_> {
        SeriesView {
            kind: self.kind,
            count: self.count,
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            ts_col: &self.ts_col,
            val_col: &self.val_col,
            rollups: [self.rollups[0].view(), self.rollups[1].view()],
        }
    }

    /// Decodes the raw points.
    pub fn points(&self) -> Result<Vec<Point>, BlockError> {
        self.view().points()
    }

    /// Decodes the rollups of `width` ([`MINUTE_MS`] or [`HOUR_MS`]; anything else gives none).
    pub fn rollups(&self, width: i64) -> Result<Vec<Rollup>, BlockError> {
        self.view().rollups(width)
    }

    /// The serialised columns (the payload of a block's series, see the module docs).
    fn payload(&self, out: &mut Vec<u8>) {
        put_col(out, &self.ts_col);
        put_col(out, &self.val_col);
        for r in &self.rollups {
            out.extend_from_slice(&r.n.to_le_bytes());
            for c in &r.cols {
                put_col(out, c);
            }
        }
    }
}

impl RollupCols {
    /// No rollup table (a series with raw points and no buckets: computed when asked).
    fn absent() -> Self {
        Self {
            n: 0,
            cols: Default::default(),
        }
    }

    fn view(&self) -> RollupView<'_> {
        RollupView {
            n: self.n,
            cols: [
                &self.cols[0],
                &self.cols[1],
                &self.cols[2],
                &self.cols[3],
                &self.cols[4],
                &self.cols[5],
            ],
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct RollupView<'a> {
    n: u32,
    cols: [&'a [u8]; 6],
}

/// One series' data in a block, borrowed from the block's bytes: header fields are read, the
/// columns decoded only when asked.
#[derive(Debug, Clone, Copy)]
pub struct SeriesView<'a> {
    kind: ValueKind,
    count: u32,
    first_ts: i64,
    last_ts: i64,
    ts_col: &'a [u8],
    val_col: &'a [u8],
    rollups: [RollupView<'a>; 2],
}

impl<'a> SeriesView<'a> {
    /// Value kind.
    pub fn kind(&self) -> ValueKind {
        self.kind
    }

    /// Number of raw points.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether it holds no raw points.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// First and last timestamps.
    pub fn time_range(&self) -> (i64, i64) {
        (self.first_ts, self.last_ts)
    }

    /// Bytes of the compressed raw columns.
    pub fn raw_bytes(&self) -> usize {
        self.ts_col.len() + self.val_col.len()
    }

    /// Bytes of the compressed rollup columns.
    pub fn rollup_bytes(&self) -> usize {
        self.rollups
            .iter()
            .flat_map(|r| r.cols.iter())
            .map(|c| c.len())
            .sum()
    }

    /// An owned copy of the columns; `drop_raw` leaves the raw ones out.
    pub fn to_owned_series(&self, drop_raw: bool) -> SealedSeries {
        let own = |r: &RollupView<'_>| RollupCols {
            n: r.n,
            cols: r.cols.map(<[u8]>::to_vec),
        };
        let mut s = SealedSeries {
            kind: self.kind,
            count: self.count,
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            ts_col: self.ts_col.to_vec(),
            val_col: self.val_col.to_vec(),
            rollups: [own(&self.rollups[0]), own(&self.rollups[1])],
        };
        if drop_raw {
            s.drop_raw();
        }
        s
    }

    /// Decodes the raw points.
    pub fn points(&self) -> Result<Vec<Point>, BlockError> {
        if self.count == 0 {
            return Ok(Vec::new());
        }
        // Timestamps are unique and sorted: `count` points need a span of at least `count` ms.
        // A count the time range cannot hold is refused before any column is decoded.
        let span = i128::from(self.last_ts) - i128::from(self.first_ts);
        if span < i128::from(self.count) - 1 {
            return Err(BlockError::Corrupt("point count exceeds the time range"));
        }
        let n = self.count as usize;
        let ts: Vec<i64> = decompress_exact(self.ts_col, n, "timestamp column length")?;
        let vals: Vec<Value> = match self.kind {
            ValueKind::F64 => decode_decimal(self.val_col, n, "value column length")?
                .into_iter()
                .map(Value::F64)
                .collect(),
            ValueKind::I64 => decompress_exact::<i64>(self.val_col, n, "value column length")?
                .into_iter()
                .map(Value::I64)
                .collect(),
            ValueKind::Bool => decompress_exact::<i64>(self.val_col, n, "value column length")?
                .into_iter()
                .map(|b| Value::Bool(b != 0))
                .collect(),
        };
        Ok(ts
            .into_iter()
            .zip(vals)
            .map(|(ts, value)| Point { ts, value })
            .collect())
    }

    /// Decodes the rollups of `width` ([`MINUTE_MS`] or [`HOUR_MS`]; anything else gives none).
    /// A series written without rollup tables ([`SealedSeries::encode_raw`]: raw points and no
    /// buckets) computes them from its points.
    pub fn rollups(&self, width: i64) -> Result<Vec<Rollup>, BlockError> {
        let r = match width {
            MINUTE_MS => &self.rollups[0],
            HOUR_MS => &self.rollups[1],
            _ => return Ok(Vec::new()),
        };
        if r.n == 0 && self.count > 0 {
            return Ok(rollup(&self.points()?, width));
        }
        let [s, mn, mx, sm, c, l] = r.cols;
        let n = r.n as usize;
        const LEN: &str = "rollup column length";
        let starts: Vec<i64> = decompress_exact(s, n, LEN)?;
        let min: Vec<f64> = decode_decimal(mn, n, LEN)?;
        let max: Vec<f64> = decode_decimal(mx, n, LEN)?;
        let sum: Vec<f64> = decode_decimal(sm, n, LEN)?;
        let count: Vec<u64> = decompress_exact(c, n, LEN)?;
        let last: Vec<f64> = decode_decimal(l, n, LEN)?;
        Ok((0..n)
            .map(|i| Rollup {
                start: starts[i],
                min: min[i],
                max: max[i],
                sum: sum[i],
                count: count[i],
                last: last[i],
            })
            .collect())
    }
}

fn compress<T: pco::data_types::Number>(v: &[T]) -> Result<Vec<u8>, BlockError> {
    simple_compress(v, &ChunkConfig::default()).map_err(pco_err)
}

/// The smallest `k` in 0..=6 such that every value is an exact multiple of 10^-k (as a float
/// round trip), if any: sums of such values are then stored exactly as integers of 10^-k.
fn decimal_scale(points: &[Point]) -> Option<u32> {
    (0..=6u32).find(|&k| {
        let m = 10f64.powi(k as i32);
        points.iter().all(|p| {
            let v = as_f64(p.value);
            let q = (v * m).round();
            q.abs() < 9.0e15 && q / m == v
        })
    })
}

/// Sum column: one mode byte, then pco bytes. Mode 0: `f64` sums. Mode `k + 1`: `i64` sums in
/// units of 10^-k, exact (chosen when every value is a multiple of 10^-k and the sums fit 2^53).
fn encode_sums(points: &[Point], width: i64, r: &[Rollup]) -> Result<Vec<u8>, BlockError> {
    if let Some(k) = decimal_scale(points) {
        let m = 10f64.powi(k as i32);
        let mut sums: Vec<i64> = Vec::with_capacity(r.len());
        let mut ok = true;
        for p in points {
            let start = floor_to(p.ts, width);
            let q = (as_f64(p.value) * m).round() as i64;
            if sums.len() < r.len() && r.get(sums.len()).is_some_and(|b| b.start == start) {
                sums.push(0);
            }
            match sums.last_mut().and_then(|s| s.checked_add(q)) {
                Some(v) if v.unsigned_abs() < (1u64 << 53) => {
                    if let Some(l) = sums.last_mut() {
                        *l = v;
                    }
                }
                _ => ok = false,
            }
        }
        if ok && sums.len() == r.len() {
            let mut out = vec![k as u8 + 1];
            out.extend(compress(&sums)?);
            return Ok(out);
        }
    }
    let mut out = vec![0];
    out.extend(compress(&r.iter().map(|r| r.sum).collect::<Vec<f64>>())?);
    Ok(out)
}

/// A float column in the same form as the sums: as `i64` units of 10^-`k` (mode `k + 1`) when
/// every value round-trips bit-exactly that way, else as `f64` (mode 0).
fn encode_decimal(values: &[f64], k: Option<u32>) -> Result<Vec<u8>, BlockError> {
    if let Some(k) = k {
        let m = 10f64.powi(k as i32);
        let q: Vec<i64> = values.iter().map(|v| (v * m).round() as i64).collect();
        if q.iter()
            .zip(values)
            .all(|(&q, v)| (q as f64 / m).to_bits() == v.to_bits())
        {
            let mut out = vec![k as u8 + 1];
            out.extend(compress(&q)?);
            return Ok(out);
        }
    }
    let mut out = vec![0];
    out.extend(compress(values)?);
    Ok(out)
}

/// Decodes a `pco` column that must hold exactly `n` numbers (`n` from the block's index).
///
/// A chunk header says how many numbers the chunk holds (up to 2^24), and a few bytes of
/// compressed data can legally stand for that many: so each chunk's count is checked against
/// what is left of `n` before memory is taken for it. A column claiming more numbers than its
/// series has (or fewer) is [`BlockError::Corrupt`]`(what)`, and decoding one never takes
/// memory for more than `2 n` numbers (the vector's growth), however its bytes were forged.
fn decompress_exact<T: pco::data_types::Number>(
    col: &[u8],
    n: usize,
    what: &'static str,
) -> Result<Vec<T>, BlockError> {
    let (file, mut src) = FileDecompressor::new(col).map_err(pco_err)?;
    let mut out: Vec<T> = Vec::new();
    while let DecompressorItem::Chunk(mut chunk) =
        file.chunk_decompressor::<T, &[u8]>(src).map_err(pco_err)?
    {
        let at = out.len();
        if chunk.n() > n - at {
            return Err(BlockError::Corrupt(what));
        }
        out.resize(at + chunk.n(), T::default());
        let progress = chunk.read(&mut out[at..]).map_err(pco_err)?;
        if progress.n_processed != chunk.n() {
            return Err(BlockError::Corrupt(what));
        }
        src = chunk.into_src();
    }
    if out.len() != n {
        return Err(BlockError::Corrupt(what));
    }
    Ok(out)
}

fn decode_decimal(col: &[u8], n: usize, what: &'static str) -> Result<Vec<f64>, BlockError> {
    let (&mode, rest) = col
        .split_first()
        .ok_or(BlockError::Corrupt("empty decimal column"))?;
    match mode {
        0 => decompress_exact(rest, n, what),
        1..=7 => {
            let m = 10f64.powi(i32::from(mode) - 1);
            let q: Vec<i64> = decompress_exact(rest, n, what)?;
            Ok(q.into_iter().map(|q| q as f64 / m).collect())
        }
        _ => Err(BlockError::Corrupt("decimal column mode")),
    }
}

fn encode_rollups(points: &[Point], width: i64) -> Result<RollupCols, BlockError> {
    let r = rollup(points, width);
    let k = decimal_scale(points);
    let starts: Vec<i64> = r.iter().map(|r| r.start).collect();
    let min: Vec<f64> = r.iter().map(|r| r.min).collect();
    let max: Vec<f64> = r.iter().map(|r| r.max).collect();
    let count: Vec<u64> = r.iter().map(|r| r.count).collect();
    let last: Vec<f64> = r.iter().map(|r| r.last).collect();
    Ok(RollupCols {
        n: u32::try_from(r.len()).map_err(|_| BlockError::Corrupt("too many buckets"))?,
        cols: [
            compress(&starts)?,
            encode_decimal(&min, k)?,
            encode_decimal(&max, k)?,
            encode_sums(points, width, &r)?,
            compress(&count)?,
            encode_decimal(&last, k)?,
        ],
    })
}

impl SealedSeries {
    /// Encodes sorted points with unique timestamps (as [`crate::Head::seal`] returns them),
    /// with their rollups.
    pub fn encode(kind: ValueKind, points: &[Point]) -> Result<Self, BlockError> {
        let mut s = Self::encode_raw(kind, points)?;
        s.rollups = [
            encode_rollups(points, MINUTE_MS)?,
            encode_rollups(points, HOUR_MS)?,
        ];
        Ok(s)
    }

    /// [`SealedSeries::encode`] without the rollup tables (what a seal writes: twelve of the
    /// fourteen columns, and most of the cost for the few points of one seal interval). Its
    /// rollups are computed from the points when asked, and stored once a compaction merges it.
    pub fn encode_raw(kind: ValueKind, points: &[Point]) -> Result<Self, BlockError> {
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            return Err(BlockError::Corrupt("no points"));
        };
        let count =
            u32::try_from(points.len()).map_err(|_| BlockError::Corrupt("too many points"))?;
        let ts: Vec<i64> = points.iter().map(|p| p.ts).collect();
        let val_col = match kind {
            ValueKind::F64 => encode_decimal(
                &points.iter().map(|p| as_f64(p.value)).collect::<Vec<f64>>(),
                decimal_scale(points),
            )?,
            ValueKind::I64 | ValueKind::Bool => compress(
                &points
                    .iter()
                    .map(|p| match p.value {
                        Value::I64(i) => i,
                        Value::Bool(b) => i64::from(b),
                        Value::F64(f) => f as i64,
                    })
                    .collect::<Vec<i64>>(),
            )?,
        };
        Ok(Self {
            kind,
            count,
            first_ts: first.ts,
            last_ts: last.ts,
            ts_col: compress(&ts)?,
            val_col,
            rollups: [RollupCols::absent(), RollupCols::absent()],
        })
    }
}

/// The sealed points of one time partition, owned: what a seal builds (and what a version 1
/// block file parses into, to be rewritten as version 2).
#[derive(Debug, Clone, PartialEq)]
pub struct SealedBlock {
    /// Partition start (ms, a multiple of the partition width).
    pub partition: i64,
    /// Generation: blocks of one partition are ordered by it, a later one winning at equal
    /// timestamps of a series.
    pub generation: u64,
    /// Compaction level (0 for a seal, see [`crate::db`]).
    pub level: u8,
    /// Whether the raw columns were dropped by retention (the rollups remain).
    pub raw_dropped: bool,
    /// When retention last rewrote the partition into this block (ms), `i64::MIN` if never.
    pub retained_at: i64,
    /// Series in this block.
    pub series: BTreeMap<SeriesId, SealedSeries>,
}

impl Default for SealedBlock {
    fn default() -> Self {
        Self {
            partition: 0,
            generation: 0,
            level: 0,
            raw_dropped: false,
            retained_at: i64::MIN,
            series: BTreeMap::new(),
        }
    }
}

/// The fields of a block's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// Partition start (ms).
    pub partition: i64,
    /// Generation.
    pub generation: u64,
    /// Compaction level.
    pub level: u8,
    /// Whether every series holds rollups only.
    pub raw_dropped: bool,
    /// When retention last rewrote the partition into this block (ms), `i64::MIN` if never.
    pub retained_at: i64,
}

fn put_col(out: &mut Vec<u8>, col: &[u8]) {
    out.extend_from_slice(&(col.len() as u32).to_le_bytes());
    out.extend_from_slice(col);
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BlockError> {
        if n > self.0.len() {
            return Err(BlockError::Corrupt("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], BlockError> {
        self.take(N)?
            .try_into()
            .map_err(|_| BlockError::Corrupt("truncated"))
    }
    fn u8(&mut self) -> Result<u8, BlockError> {
        Ok(self.arr::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, BlockError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, BlockError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, BlockError> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn col(&mut self) -> Result<&'a [u8], BlockError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn rollups(&mut self) -> Result<[RollupView<'a>; 2], BlockError> {
        let mut one = || -> Result<RollupView<'a>, BlockError> {
            Ok(RollupView {
                n: self.u32()?,
                cols: [
                    self.col()?,
                    self.col()?,
                    self.col()?,
                    self.col()?,
                    self.col()?,
                    self.col()?,
                ],
            })
        };
        Ok([one()?, one()?])
    }
}

/// Bytes of a version 2 block header.
pub const HEADER_LEN: usize = 36;
/// Bytes of one index entry.
pub const ENTRY_LEN: usize = 48;
/// Bytes of the footer.
pub const FOOTER_LEN: usize = 16;

fn header(f: BlockHeader) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..3].copy_from_slice(MAGIC);
    h[3] = BLOCK_VERSION;
    h[4..12].copy_from_slice(&f.partition.to_le_bytes());
    h[12..20].copy_from_slice(&f.generation.to_le_bytes());
    h[20] = f.level;
    h[21] = u8::from(f.raw_dropped);
    h[28..36].copy_from_slice(&f.retained_at.to_le_bytes());
    h
}

/// Writes a version 2 block series by series to any [`std::io::Write`] sink, holding only the
/// index entries (48 bytes a series): a seal writes into a `Vec`, a compaction streams into a
/// file. Series must come in ascending id order.
#[derive(Debug)]
pub struct BlockBuilder {
    header: [u8; HEADER_LEN],
    index: Vec<u8>,
    written: u64,
    series: u32,
    last_id: Option<SeriesId>,
    payload: Vec<u8>,
}

impl BlockBuilder {
    /// Starts a block, writing its header.
    pub fn new(fields: BlockHeader, out: &mut impl std::io::Write) -> std::io::Result<Self> {
        let header = header(fields);
        out.write_all(&header)?;
        Ok(Self {
            header,
            index: Vec::new(),
            written: HEADER_LEN as u64,
            series: 0,
            last_id: None,
            payload: Vec::new(),
        })
    }

    /// Appends one series; `id` must be above the previous one's.
    pub fn add(
        &mut self,
        id: SeriesId,
        s: &SealedSeries,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        if self.last_id.is_some_and(|last| last >= id) {
            return Err(std::io::Error::other("block series out of order"));
        }
        self.last_id = Some(id);
        self.payload.clear();
        s.payload(&mut self.payload);
        out.write_all(&self.payload)?;
        let e = &mut self.index;
        e.extend_from_slice(&id.0.to_le_bytes());
        e.extend_from_slice(&[s.kind.tag(), 0, 0, 0]);
        e.extend_from_slice(&s.count.to_le_bytes());
        e.extend_from_slice(&crc32fast::hash(&self.payload).to_le_bytes());
        e.extend_from_slice(&s.first_ts.to_le_bytes());
        e.extend_from_slice(&s.last_ts.to_le_bytes());
        e.extend_from_slice(&self.written.to_le_bytes());
        e.extend_from_slice(&(self.payload.len() as u64).to_le_bytes());
        self.written += self.payload.len() as u64;
        self.series += 1;
        Ok(())
    }

    /// Series added so far.
    pub fn len(&self) -> usize {
        self.series as usize
    }

    /// Whether no series was added.
    pub fn is_empty(&self) -> bool {
        self.series == 0
    }

    /// Writes the index and the footer; returns the block's length in bytes.
    pub fn finish(self, out: &mut impl std::io::Write) -> std::io::Result<u64> {
        out.write_all(&self.index)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.header);
        crc.update(&self.index);
        let mut footer = [0u8; FOOTER_LEN];
        footer[..4].copy_from_slice(&self.series.to_le_bytes());
        footer[4..12].copy_from_slice(&self.written.to_le_bytes());
        footer[12..].copy_from_slice(&crc.finalize().to_le_bytes());
        out.write_all(&footer)?;
        Ok(self.written + self.index.len() as u64 + FOOTER_LEN as u64)
    }
}

impl SealedBlock {
    /// The header fields.
    pub fn header(&self) -> BlockHeader {
        BlockHeader {
            partition: self.partition,
            generation: self.generation,
            level: self.level,
            raw_dropped: self.raw_dropped,
            retained_at: self.retained_at,
        }
    }

    /// Raw points over all series.
    pub fn points(&self) -> usize {
        self.series.values().map(|s| s.view().len()).sum()
    }

    /// Serialises the block (version 2, see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail and the map iterates in ascending id order.
        if let Ok(mut b) = BlockBuilder::new(self.header(), &mut out) {
            for (id, s) in &self.series {
                let _ = b.add(*id, s, &mut out);
            }
            let _ = b.finish(&mut out);
        }
        out
    }

    /// Parses a block of either version (version 1 files come from before compaction: they
    /// have generation 0), checking magic, version and CRCs.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlockError> {
        if bytes.get(..3) == Some(MAGIC.as_slice()) && bytes.get(3) == Some(&1) {
            return parse_v1(bytes);
        }
        let view = BlockView::parse(bytes)?;
        let mut series = BTreeMap::new();
        for i in 0..view.series_count {
            let (id, s) = view.entry(bytes, i)?;
            series.insert(id, s.to_owned_series(false));
        }
        Ok(Self {
            partition: view.partition,
            generation: view.generation,
            level: view.level,
            raw_dropped: view.raw_dropped,
            retained_at: view.retained_at,
            series,
        })
    }
}

/// Parses the version 1 layout (one CRC over the whole block, columns inline).
fn parse_v1(bytes: &[u8]) -> Result<SealedBlock, BlockError> {
    if bytes.len() < 4 {
        return Err(BlockError::Corrupt("truncated"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc: [u8; 4] = crc
        .try_into()
        .map_err(|_| BlockError::Corrupt("truncated"))?;
    if crc32fast::hash(body) != u32::from_le_bytes(crc) {
        return Err(BlockError::Crc);
    }
    let mut c = Cursor(body);
    c.take(4)?;
    let partition = c.i64()?;
    let raw_dropped = match c.u8()? {
        0 => false,
        1 => true,
        _ => return Err(BlockError::Corrupt("flags")),
    };
    let n = c.u32()?;
    let mut series = BTreeMap::new();
    for _ in 0..n {
        let id = SeriesId(c.u32()?);
        let kind = ValueKind::from_tag(c.u8()?).ok_or(BlockError::Corrupt("kind"))?;
        let view = SeriesView {
            kind,
            count: c.u32()?,
            first_ts: c.i64()?,
            last_ts: c.i64()?,
            ts_col: c.col()?,
            val_col: c.col()?,
            rollups: c.rollups()?,
        };
        series.insert(id, view.to_owned_series(false));
    }
    if !c.0.is_empty() {
        return Err(BlockError::Corrupt("trailing bytes"));
    }
    Ok(SealedBlock {
        partition,
        generation: 0,
        level: 0,
        raw_dropped,
        retained_at: i64::MIN,
        series,
    })
}

/// The bytes of a block: a memory map of its file, or a `Vec` (a seal not yet written, tests).
pub type BlockBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A version 2 block read in place: the header, footer and index are checked when it is
/// opened (not the columns); a series is found by binary search in the index and its payload
/// CRC checked when it is read. Holding one costs its mapping, not its series.
#[derive(Clone)]
pub struct BlockView {
    bytes: BlockBytes,
    /// Partition start (ms).
    pub partition: i64,
    /// Generation (see [`SealedBlock::generation`]).
    pub generation: u64,
    /// Compaction level.
    pub level: u8,
    /// Whether every series holds rollups only.
    pub raw_dropped: bool,
    /// When retention last rewrote the partition into this block (ms), `i64::MIN` if never.
    pub retained_at: i64,
    series_count: usize,
    index_at: usize,
}

impl std::fmt::Debug for BlockView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockView")
            .field("partition", &self.partition)
            .field("generation", &self.generation)
            .field("level", &self.level)
            .field("raw_dropped", &self.raw_dropped)
            .field("series", &self.series_count)
            .field("bytes", &self.len())
            .finish()
    }
}

impl BlockView {
    /// Opens a version 2 block (version 1 gives [`BlockError::Corrupt`]`("version")`: parse it
    /// with [`SealedBlock::from_bytes`] and rewrite it).
    pub fn open(bytes: BlockBytes) -> Result<Self, BlockError> {
        let mut v = Self::parse((*bytes).as_ref())?;
        v.bytes = bytes;
        Ok(v)
    }

    fn parse(b: &[u8]) -> Result<Self, BlockError> {
        if b.len() < HEADER_LEN + FOOTER_LEN {
            return Err(BlockError::Corrupt("truncated"));
        }
        let mut c = Cursor(b);
        if c.take(3)? != MAGIC {
            return Err(BlockError::Corrupt("magic"));
        }
        if c.u8()? != BLOCK_VERSION {
            return Err(BlockError::Corrupt("version"));
        }
        let partition = c.i64()?;
        let generation = c.u64()?;
        let level = c.u8()?;
        let raw_dropped = match c.u8()? {
            0 => false,
            1 => true,
            _ => return Err(BlockError::Corrupt("flags")),
        };
        c.take(6)?;
        let retained_at = c.i64()?;
        let mut f = Cursor(&b[b.len() - FOOTER_LEN..]);
        let series_count = f.u32()? as usize;
        let index_at = usize::try_from(f.u64()?).map_err(|_| BlockError::Corrupt("index"))?;
        let crc = f.u32()?;
        let index_len = series_count
            .checked_mul(ENTRY_LEN)
            .ok_or(BlockError::Corrupt("index"))?;
        if index_at < HEADER_LEN || index_at.checked_add(index_len) != Some(b.len() - FOOTER_LEN) {
            return Err(BlockError::Corrupt("index bounds"));
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..HEADER_LEN]);
        h.update(&b[index_at..index_at + index_len]);
        if h.finalize() != crc {
            return Err(BlockError::Crc);
        }
        let view = Self {
            bytes: Arc::new(Vec::new()),
            partition,
            generation,
            level,
            raw_dropped,
            retained_at,
            series_count,
            index_at,
        };
        // Ids ascending (binary search relies on it); payloads inside the data section.
        let mut last: Option<u32> = None;
        for i in 0..series_count {
            let e = view.raw_entry(b, i)?;
            if last.is_some_and(|l| l >= e.id) {
                return Err(BlockError::Corrupt("index order"));
            }
            last = Some(e.id);
            let end = e.offset.checked_add(e.len);
            if e.offset < HEADER_LEN || end.is_none_or(|end| end > index_at) {
                return Err(BlockError::Corrupt("payload bounds"));
            }
            ValueKind::from_tag(e.kind).ok_or(BlockError::Corrupt("kind"))?;
        }
        Ok(view)
    }

    /// The block's bytes.
    pub fn bytes(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }

    /// Bytes of the block.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether the block holds no series.
    pub fn is_empty(&self) -> bool {
        self.series_count == 0
    }

    /// Series in the block.
    pub fn series_count(&self) -> usize {
        self.series_count
    }

    fn raw_entry(&self, b: &[u8], i: usize) -> Result<Entry, BlockError> {
        let at = self.index_at + i * ENTRY_LEN;
        let mut c = Cursor(
            b.get(at..at + ENTRY_LEN)
                .ok_or(BlockError::Corrupt("index"))?,
        );
        let id = c.u32()?;
        let kind = c.u8()?;
        c.take(3)?;
        Ok(Entry {
            id,
            kind,
            count: c.u32()?,
            crc: c.u32()?,
            first_ts: c.i64()?,
            last_ts: c.i64()?,
            offset: usize::try_from(c.u64()?).map_err(|_| BlockError::Corrupt("offset"))?,
            len: usize::try_from(c.u64()?).map_err(|_| BlockError::Corrupt("length"))?,
        })
    }

    /// The id and time range of the `i`th series (no payload read).
    pub fn summary(&self, i: usize) -> Result<SeriesSummary, BlockError> {
        let e = self.raw_entry(self.bytes(), i)?;
        Ok(SeriesSummary {
            id: SeriesId(e.id),
            kind: ValueKind::from_tag(e.kind).ok_or(BlockError::Corrupt("kind"))?,
            count: e.count,
            first_ts: e.first_ts,
            last_ts: e.last_ts,
        })
    }

    fn entry<'a>(&self, b: &'a [u8], i: usize) -> Result<(SeriesId, SeriesView<'a>), BlockError> {
        let e = self.raw_entry(b, i)?;
        let payload = b
            .get(e.offset..e.offset + e.len)
            .ok_or(BlockError::Corrupt("payload bounds"))?;
        if crc32fast::hash(payload) != e.crc {
            return Err(BlockError::Crc);
        }
        let mut c = Cursor(payload);
        let view = SeriesView {
            kind: ValueKind::from_tag(e.kind).ok_or(BlockError::Corrupt("kind"))?,
            count: e.count,
            first_ts: e.first_ts,
            last_ts: e.last_ts,
            ts_col: c.col()?,
            val_col: c.col()?,
            rollups: c.rollups()?,
        };
        if !c.0.is_empty() {
            return Err(BlockError::Corrupt("trailing payload bytes"));
        }
        Ok((SeriesId(e.id), view))
    }

    /// Where series `id` is in the index (for [`BlockView::summary`] and
    /// [`BlockView::series_at`]), if it is in this block: one binary search.
    pub fn position(&self, id: SeriesId) -> Result<Option<usize>, BlockError> {
        let b = self.bytes();
        let (mut lo, mut hi) = (0, self.series_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self.index_at + mid * ENTRY_LEN;
            let got = b
                .get(at..at + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map(u32::from_le_bytes)
                .ok_or(BlockError::Corrupt("index"))?;
            match got.cmp(&id.0) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(mid)),
            }
        }
        Ok(None)
    }

    /// What the index says of series `id`, if it is in this block (no payload read).
    pub fn summary_of(&self, id: SeriesId) -> Result<Option<SeriesSummary>, BlockError> {
        match self.position(id)? {
            Some(i) => Ok(Some(self.summary(i)?)),
            None => Ok(None),
        }
    }

    /// The time range of series `id` in this block, if it is there (no payload read).
    pub fn time_range(&self, id: SeriesId) -> Result<Option<(i64, i64)>, BlockError> {
        Ok(self.summary_of(id)?.map(|s| (s.first_ts, s.last_ts)))
    }

    /// Series `id`, its payload CRC checked, if it is in this block.
    pub fn series(&self, id: SeriesId) -> Result<Option<SeriesView<'_>>, BlockError> {
        match self.position(id)? {
            Some(i) => Ok(Some(self.entry(self.bytes(), i)?.1)),
            None => Ok(None),
        }
    }

    /// The `i`th series (ascending ids), its payload CRC checked.
    pub fn series_at(&self, i: usize) -> Result<(SeriesId, SeriesView<'_>), BlockError> {
        self.entry(self.bytes(), i)
    }

    /// Bytes of the compressed raw columns and of the rollup columns over all series.
    pub fn column_bytes(&self) -> Result<(usize, usize), BlockError> {
        let (mut raw, mut rolled) = (0, 0);
        for i in 0..self.series_count {
            let (_, s) = self.series_at(i)?;
            raw += s.raw_bytes();
            rolled += s.rollup_bytes();
        }
        Ok((raw, rolled))
    }

    /// Raw points over all series (from the index).
    pub fn points(&self) -> Result<usize, BlockError> {
        (0..self.series_count).try_fold(0usize, |n, i| Ok(n + self.summary(i)?.count as usize))
    }
}

struct Entry {
    id: u32,
    kind: u8,
    count: u32,
    crc: u32,
    first_ts: i64,
    last_ts: i64,
    offset: usize,
    len: usize,
}

/// What a block's index says of one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesSummary {
    /// The series.
    pub id: SeriesId,
    /// Its value kind.
    pub kind: ValueKind,
    /// Raw points (0 once the raw data was dropped).
    pub count: u32,
    /// First timestamp.
    pub first_ts: i64,
    /// Last timestamp.
    pub last_ts: i64,
}

impl SeriesSummary {
    /// Whether its time range overlaps `from <= ts < to`.
    pub fn overlaps(&self, from: i64, to: i64) -> bool {
        self.first_ts < to && self.last_ts >= from
    }
}
