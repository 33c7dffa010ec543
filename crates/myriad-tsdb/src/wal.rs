//! Write-ahead log records.
//!
//! The engine encodes records into a caller-supplied buffer; the caller appends them to its log
//! and fsyncs as its durability policy says. Record layout (integers little endian):
//!
//! ```text
//! u32  len     bytes after this 8-byte header (version + body), at most MAX_RECORD_LEN
//! u32  crc     CRC32 (IEEE) of those len bytes
//! u8   version WAL_VERSION (1)
//! body:
//!   u8 type 1 = series: varint id, str device, str metric, varint n, n x (str name, str value)
//!   u8 type 2 = points: varint n, n x (varint series id, zigzag varint ts - previous ts
//!                        (the first point's previous is 0; wrapping),
//!                        u8 kind tag, value: f64 8 bytes | i64 zigzag varint | bool 1 byte)
//! str = varint length + UTF-8 bytes; varint = LEB128, at most 10 bytes
//! ```
//!
//! [`WalReader`] walks a log and stops at the first record that is incomplete (a torn tail),
//! fails its CRC, claims a length over [`MAX_RECORD_LEN`], or does not parse; it reports the
//! offset of the end of the last whole record so the caller can truncate the rest.

use crate::index::{SeriesId, SeriesKey};
use crate::value::{Point, Value, ValueKind};

/// WAL format version.
pub const WAL_VERSION: u8 = 1;
/// Bytes before a record's version byte.
pub const RECORD_HEADER_LEN: usize = 8;
/// Largest `len` a record may have (64 MiB); a batch encoding to more is refused.
pub const MAX_RECORD_LEN: usize = 64 << 20;

const TYPE_SERIES: u8 = 1;
const TYPE_POINTS: u8 = 2;

/// One decoded WAL record.
#[derive(Debug, Clone, PartialEq)]
pub enum WalRecord {
    /// A series was created with this id.
    Series {
        /// Its id.
        id: SeriesId,
        /// Its key.
        key: SeriesKey,
    },
    /// A batch of accepted points.
    Points(Vec<(SeriesId, Point)>),
}

/// Why a record could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalEncodeError {
    /// The record would exceed [`MAX_RECORD_LEN`].
    #[error("WAL record of {len} bytes exceeds the {MAX_RECORD_LEN}-byte limit")]
    TooLarge {
        /// Its encoded length.
        len: usize,
    },
}

/// Why the reader stopped before the end of the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalStop {
    /// The log ends inside a record (a torn write).
    #[error("incomplete record: {have} of {need} bytes")]
    Incomplete {
        /// Bytes present from the record's start.
        have: usize,
        /// Bytes the record needs.
        need: usize,
    },
    /// The length field exceeds [`MAX_RECORD_LEN`] or is zero.
    #[error("record length {0} out of range")]
    BadLength(u32),
    /// The CRC does not match.
    #[error("record CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Unknown version byte.
    #[error("unknown WAL version {0}")]
    Version(u8),
    /// The CRC matched but the body does not parse.
    #[error("malformed record body: {0}")]
    Malformed(&'static str),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Starts a record in `out`; returns where it starts.
fn begin(out: &mut Vec<u8>, ty: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    out.push(WAL_VERSION);
    out.push(ty);
    start
}

/// Fills in the header of the record started at `start`, or removes it if too large.
fn finish(out: &mut Vec<u8>, start: usize) -> Result<(), WalEncodeError> {
    let len = out.len() - start - RECORD_HEADER_LEN;
    if len > MAX_RECORD_LEN {
        out.truncate(start);
        return Err(WalEncodeError::TooLarge { len });
    }
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Appends a series record to `out`.
pub fn encode_series(
    id: SeriesId,
    key: &SeriesKey,
    out: &mut Vec<u8>,
) -> Result<(), WalEncodeError> {
    let start = begin(out, TYPE_SERIES);
    put_varint(out, u64::from(id.0));
    put_str(out, &key.device);
    put_str(out, &key.metric);
    put_varint(out, key.labels.len() as u64);
    for (k, v) in &key.labels {
        put_str(out, k);
        put_str(out, v);
    }
    finish(out, start)
}

/// Appends a points record to `out`.
pub fn encode_points(
    points: &[(SeriesId, Point)],
    out: &mut Vec<u8>,
) -> Result<(), WalEncodeError> {
    let start = begin(out, TYPE_POINTS);
    put_varint(out, points.len() as u64);
    let mut prev = 0i64;
    for (id, p) in points {
        put_varint(out, u64::from(id.0));
        put_varint(out, zigzag(p.ts.wrapping_sub(prev)));
        prev = p.ts;
        out.push(p.value.kind().tag());
        match p.value {
            Value::F64(f) => out.extend_from_slice(&f.to_le_bytes()),
            Value::I64(i) => put_varint(out, zigzag(i)),
            Value::Bool(b) => out.push(u8::from(b)),
        }
    }
    finish(out, start)
}

struct Body<'a> {
    b: &'a [u8],
}

impl<'a> Body<'a> {
    fn u8(&mut self) -> Result<u8, WalStop> {
        let (&v, rest) = self
            .b
            .split_first()
            .ok_or(WalStop::Malformed("short body"))?;
        self.b = rest;
        Ok(v)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WalStop> {
        if n > self.b.len() {
            return Err(WalStop::Malformed("short body"));
        }
        let (v, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(v)
    }

    fn varint(&mut self) -> Result<u64, WalStop> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = self.u8()?;
            if i == 9 && byte > 1 {
                return Err(WalStop::Malformed("varint overflows 64 bits"));
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WalStop::Malformed("varint longer than 10 bytes"))
    }

    fn id(&mut self) -> Result<SeriesId, WalStop> {
        u32::try_from(self.varint()?)
            .map(SeriesId)
            .map_err(|_| WalStop::Malformed("series id over 32 bits"))
    }

    fn string(&mut self) -> Result<String, WalStop> {
        let n = usize::try_from(self.varint()?).map_err(|_| WalStop::Malformed("string length"))?;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| WalStop::Malformed("string not UTF-8"))
    }
}

fn parse_body(b: &[u8]) -> Result<WalRecord, WalStop> {
    let mut r = Body { b };
    let rec = match r.u8()? {
        TYPE_SERIES => {
            let id = r.id()?;
            let mut key = SeriesKey::new(r.string()?, r.string()?);
            let n = r.varint()?;
            for _ in 0..n {
                let k = r.string()?;
                let v = r.string()?;
                key.labels.insert(k, v);
            }
            WalRecord::Series { id, key }
        }
        TYPE_POINTS => {
            let n = r.varint()?;
            // Each point takes at least 4 bytes: bound the allocation by the body's size.
            if n > (r.b.len() / 4) as u64 {
                return Err(WalStop::Malformed("point count exceeds body"));
            }
            let mut pts = Vec::with_capacity(n as usize);
            let mut prev = 0i64;
            for _ in 0..n {
                let id = r.id()?;
                let ts = prev.wrapping_add(unzigzag(r.varint()?));
                prev = ts;
                let value = match ValueKind::from_tag(r.u8()?) {
                    Some(ValueKind::F64) => {
                        let b: [u8; 8] = r
                            .bytes(8)?
                            .try_into()
                            .map_err(|_| WalStop::Malformed("f64"))?;
                        Value::F64(f64::from_le_bytes(b))
                    }
                    Some(ValueKind::I64) => Value::I64(unzigzag(r.varint()?)),
                    Some(ValueKind::Bool) => match r.u8()? {
                        0 => Value::Bool(false),
                        1 => Value::Bool(true),
                        _ => return Err(WalStop::Malformed("bool not 0 or 1")),
                    },
                    None => return Err(WalStop::Malformed("unknown value kind")),
                };
                pts.push((id, Point { ts, value }));
            }
            WalRecord::Points(pts)
        }
        _ => return Err(WalStop::Malformed("unknown record type")),
    };
    if !r.b.is_empty() {
        return Err(WalStop::Malformed("trailing bytes in record"));
    }
    Ok(rec)
}

/// Iterates the whole records of a log from its start.
#[derive(Debug, Clone)]
pub struct WalReader<'a> {
    log: &'a [u8],
    pos: usize,
    stop: Option<WalStop>,
}

impl<'a> WalReader<'a> {
    /// A reader over a whole log.
    pub fn new(log: &'a [u8]) -> Self {
        Self {
            log,
            pos: 0,
            stop: None,
        }
    }

    /// End offset of the last whole, valid record read so far.
    pub fn valid_len(&self) -> usize {
        self.pos
    }

    /// Why reading stopped before the end of the log, once it has.
    pub fn stop(&self) -> Option<&WalStop> {
        self.stop.as_ref()
    }

    fn read(&mut self) -> Result<Option<WalRecord>, WalStop> {
        let rest = &self.log[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
            return Err(WalStop::Incomplete {
                have: rest.len(),
                need: RECORD_HEADER_LEN,
            });
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len as usize > MAX_RECORD_LEN {
            return Err(WalStop::BadLength(len));
        }
        let need = RECORD_HEADER_LEN + len as usize;
        let Some(body) = rest.get(RECORD_HEADER_LEN..need) else {
            return Err(WalStop::Incomplete {
                have: rest.len(),
                need,
            });
        };
        let computed = crc32fast::hash(body);
        if computed != stored {
            return Err(WalStop::BadCrc { stored, computed });
        }
        let (&version, body) = body.split_first().ok_or(WalStop::Malformed("empty"))?;
        if version != WAL_VERSION {
            return Err(WalStop::Version(version));
        }
        let rec = parse_body(body)?;
        self.pos += need;
        Ok(Some(rec))
    }
}

impl Iterator for WalReader<'_> {
    type Item = WalRecord;

    fn next(&mut self) -> Option<WalRecord> {
        if self.stop.is_some() {
            return None;
        }
        match self.read() {
            Ok(rec) => rec,
            Err(stop) => {
                self.stop = Some(stop);
                None
            }
        }
    }
}
