//! Sealed blocks: the points of one time partition, re-encoded column-wise with `pco`, plus
//! per-bucket rollups computed at seal time.
//!
//! Per series a block holds a timestamp column (`i64` ms) and a value column (`f64`, `i64`, or
//! booleans as `i64` 0/1), each compressed separately with `pco` at its default level, and two
//! rollup tables (1 minute and 1 hour buckets: start, min, max, sum, count, last), also as `pco`
//! columns (min, max, sum and last as integers of 10^-k when all values are multiples of 10^-k;
//! sums are then exact).
//! Serialised layout (integers little endian):
//!
//! ```text
//! "MTB" version(1)  i64 partition start  u8 raw dropped (0/1)  u32 series count
//! per series: u32 id, u8 kind tag, u32 count, i64 first ts, i64 last ts,
//!             col ts, col values, 2 x (u32 buckets, col start, col min, col max,
//!             col sum, col count, col last)
//! u32 CRC32 of everything before it
//! col = u32 byte length + pco standalone bytes
//! ```

use std::collections::BTreeMap;

use pco::ChunkConfig;
use pco::standalone::{simple_compress, simple_decompress};

use crate::index::SeriesId;
use crate::value::{Point, Value, ValueKind};

const MAGIC: &[u8; 3] = b"MTB";
const BLOCK_VERSION: u8 = 1;

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

/// One series' data in a block.
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
            .map(Vec::len)
            .sum()
    }

    /// Drops the raw columns, keeping the rollups and the time range.
    pub fn drop_raw(&mut self) {
        self.count = 0;
        self.ts_col = Vec::new();
        self.val_col = Vec::new();
    }

    /// Decodes the raw points.
    pub fn points(&self) -> Result<Vec<Point>, BlockError> {
        if self.count == 0 {
            return Ok(Vec::new());
        }
        let ts: Vec<i64> = simple_decompress(&self.ts_col).map_err(pco_err)?;
        if ts.len() != self.count as usize {
            return Err(BlockError::Corrupt("timestamp column length"));
        }
        let vals: Vec<Value> = match self.kind {
            ValueKind::F64 => decode_decimal(&self.val_col)?
                .into_iter()
                .map(Value::F64)
                .collect(),
            ValueKind::I64 => simple_decompress::<i64>(&self.val_col)
                .map_err(pco_err)?
                .into_iter()
                .map(Value::I64)
                .collect(),
            ValueKind::Bool => simple_decompress::<i64>(&self.val_col)
                .map_err(pco_err)?
                .into_iter()
                .map(|b| Value::Bool(b != 0))
                .collect(),
        };
        if vals.len() != ts.len() {
            return Err(BlockError::Corrupt("value column length"));
        }
        Ok(ts
            .into_iter()
            .zip(vals)
            .map(|(ts, value)| Point { ts, value })
            .collect())
    }

    /// Decodes the rollups of `width` ([`MINUTE_MS`] or [`HOUR_MS`]; anything else gives none).
    pub fn rollups(&self, width: i64) -> Result<Vec<Rollup>, BlockError> {
        let r = match width {
            MINUTE_MS => &self.rollups[0],
            HOUR_MS => &self.rollups[1],
            _ => return Ok(Vec::new()),
        };
        let [s, mn, mx, sm, c, l] = &r.cols;
        let starts: Vec<i64> = simple_decompress(s).map_err(pco_err)?;
        let min: Vec<f64> = decode_decimal(mn)?;
        let max: Vec<f64> = decode_decimal(mx)?;
        let sum: Vec<f64> = decode_decimal(sm)?;
        let count: Vec<u64> = simple_decompress(c).map_err(pco_err)?;
        let last: Vec<f64> = decode_decimal(l)?;
        let n = r.n as usize;
        if [
            starts.len(),
            min.len(),
            max.len(),
            sum.len(),
            count.len(),
            last.len(),
        ]
        .iter()
        .any(|&x| x != n)
        {
            return Err(BlockError::Corrupt("rollup column length"));
        }
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

fn decode_decimal(col: &[u8]) -> Result<Vec<f64>, BlockError> {
    let (&mode, rest) = col
        .split_first()
        .ok_or(BlockError::Corrupt("empty decimal column"))?;
    match mode {
        0 => simple_decompress(rest).map_err(pco_err),
        1..=7 => {
            let m = 10f64.powi(i32::from(mode) - 1);
            let q: Vec<i64> = simple_decompress(rest).map_err(pco_err)?;
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
    /// Encodes sorted points with unique timestamps (as [`crate::Head::seal`] returns them).
    pub fn encode(kind: ValueKind, points: &[Point]) -> Result<Self, BlockError> {
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
            rollups: [
                encode_rollups(points, MINUTE_MS)?,
                encode_rollups(points, HOUR_MS)?,
            ],
        })
    }
}

/// The sealed points of one time partition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SealedBlock {
    /// Partition start (ms, a multiple of the partition width).
    pub partition: i64,
    /// Whether the raw columns were dropped by retention (the rollups remain).
    pub raw_dropped: bool,
    /// Series in this block.
    pub series: BTreeMap<SeriesId, SealedSeries>,
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
    fn u32(&mut self) -> Result<u32, BlockError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, BlockError> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn col(&mut self) -> Result<Vec<u8>, BlockError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

impl SealedBlock {
    /// Bytes of raw columns over all series.
    pub fn raw_bytes(&self) -> usize {
        self.series.values().map(SealedSeries::raw_bytes).sum()
    }

    /// Bytes of rollup columns over all series.
    pub fn rollup_bytes(&self) -> usize {
        self.series.values().map(SealedSeries::rollup_bytes).sum()
    }

    /// Raw points over all series.
    pub fn points(&self) -> usize {
        self.series.values().map(SealedSeries::len).sum()
    }

    /// Serialises the block (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(BLOCK_VERSION);
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.push(u8::from(self.raw_dropped));
        out.extend_from_slice(&(self.series.len() as u32).to_le_bytes());
        for (id, s) in &self.series {
            out.extend_from_slice(&id.0.to_le_bytes());
            out.push(s.kind.tag());
            out.extend_from_slice(&s.count.to_le_bytes());
            out.extend_from_slice(&s.first_ts.to_le_bytes());
            out.extend_from_slice(&s.last_ts.to_le_bytes());
            put_col(&mut out, &s.ts_col);
            put_col(&mut out, &s.val_col);
            for r in &s.rollups {
                out.extend_from_slice(&r.n.to_le_bytes());
                for c in &r.cols {
                    put_col(&mut out, c);
                }
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses bytes from [`SealedBlock::to_bytes`], checking magic, version and CRC.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlockError> {
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
        if c.take(3)? != MAGIC {
            return Err(BlockError::Corrupt("magic"));
        }
        if c.arr::<1>()?[0] != BLOCK_VERSION {
            return Err(BlockError::Corrupt("version"));
        }
        let partition = c.i64()?;
        let raw_dropped = match c.arr::<1>()?[0] {
            0 => false,
            1 => true,
            _ => return Err(BlockError::Corrupt("flags")),
        };
        let n = c.u32()?;
        let mut series = BTreeMap::new();
        for _ in 0..n {
            let id = SeriesId(c.u32()?);
            let kind = ValueKind::from_tag(c.arr::<1>()?[0]).ok_or(BlockError::Corrupt("kind"))?;
            let count = c.u32()?;
            let first_ts = c.i64()?;
            let last_ts = c.i64()?;
            let ts_col = c.col()?;
            let val_col = c.col()?;
            let mut rollups = Vec::with_capacity(2);
            for _ in 0..2 {
                let n = c.u32()?;
                rollups.push(RollupCols {
                    n,
                    cols: [c.col()?, c.col()?, c.col()?, c.col()?, c.col()?, c.col()?],
                });
            }
            let rollups: [RollupCols; 2] = rollups
                .try_into()
                .map_err(|_| BlockError::Corrupt("rollups"))?;
            series.insert(
                id,
                SealedSeries {
                    kind,
                    count,
                    first_ts,
                    last_ts,
                    ts_col,
                    val_col,
                    rollups,
                },
            );
        }
        if !c.0.is_empty() {
            return Err(BlockError::Corrupt("trailing bytes"));
        }
        Ok(Self {
            partition,
            raw_dropped,
            series,
        })
    }
}
