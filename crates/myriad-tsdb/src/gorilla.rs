//! Gorilla chunk codec (Pelkonen et al., VLDB 2015), our own implementation.
//!
//! A chunk holds the points of one series in strictly increasing timestamp order, all of one
//! [`ValueKind`]. Layout of an encoded chunk:
//!
//! ```text
//! byte 0      format version (1)
//! byte 1      value kind tag (0 f64, 1 i64, 2 bool)
//! bytes 2..6  point count, u32 little endian
//! bytes 6..   bit stream, MSB first, zero-padded to a whole byte
//! ```
//!
//! Bit stream: the first timestamp as 64 raw bits, the first value raw (64 bits, or 1 for a
//! bool); then for each further point its timestamp and its value:
//!
//! * timestamps (ms) as the delta of deltas `dod = (t - t1) - (t1 - t2)` (the first delta's
//!   predecessor is 0) in a prefix code: `0` for 0, `10`+7 bits, `110`+9, `1110`+12,
//!   `11110`+32, `11111`+64 bits (two's complement, so every `i64` fits);
//! * floats XOR-ed with the previous value: `0` when equal; `10` + the meaningful bits when they
//!   fit the previous window of leading/trailing zeros; `11` + 6 bits of leading zeros + 6 bits of
//!   (length - 1) + the meaningful bits otherwise;
//! * integers as the delta of deltas of the values, in the timestamp prefix code;
//! * booleans as one bit.
//!
//! Decoding checks every length against the bytes left and returns [`DecodeError`] for corrupt or
//! truncated input; it never panics and allocates at most one point per two bits of input.

use crate::bits::{BitReader, BitWriter, OutOfBits};
use crate::value::{Point, Value, ValueKind};

/// Chunk format version written in byte 0.
pub const CHUNK_VERSION: u8 = 1;
/// Bytes before the bit stream.
pub const CHUNK_HEADER_LEN: usize = 6;

/// Why a point could not be appended to a chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The timestamp is not greater than the chunk's last one.
    #[error("timestamp {ts} is not after the chunk's last timestamp {last}")]
    NotIncreasing {
        /// The refused timestamp.
        ts: i64,
        /// The chunk's last timestamp.
        last: i64,
    },
    /// The value's kind differs from the chunk's.
    #[error("value of kind {got:?} in a chunk of kind {want:?}")]
    KindMismatch {
        /// The chunk's kind.
        want: ValueKind,
        /// The value's kind.
        got: ValueKind,
    },
    /// The chunk already holds `u32::MAX` points.
    #[error("chunk is full")]
    Full,
}

/// Why bytes could not be decoded as a chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header.
    #[error("chunk shorter than its {CHUNK_HEADER_LEN}-byte header")]
    ShortHeader,
    /// Unknown format version.
    #[error("unknown chunk version {0}")]
    Version(u8),
    /// Unknown value kind tag.
    #[error("unknown value kind tag {0}")]
    Kind(u8),
    /// The count cannot fit in the bytes given.
    #[error("chunk claims {count} points but has only {bits} bits")]
    CountTooLarge {
        /// Claimed point count.
        count: u32,
        /// Bits in the stream.
        bits: usize,
    },
    /// The bit stream ended before the claimed points.
    #[error("chunk bit stream truncated after {decoded} points")]
    Truncated {
        /// Points decoded before the end.
        decoded: usize,
    },
    /// The stream decodes to timestamps that do not increase.
    #[error("timestamps not increasing at point {index}")]
    NotIncreasing {
        /// Index of the offending point.
        index: usize,
    },
    /// A float used the previous XOR window before any was set, or a window past 64 bits.
    #[error("invalid XOR window at point {index}")]
    BadWindow {
        /// Index of the offending point.
        index: usize,
    },
    /// Bytes left over after the last point (more than the padding of one byte).
    #[error("{0} trailing bits after the last point")]
    Trailing(usize),
}

/// Appends points to an open Gorilla chunk.
#[derive(Debug, Clone)]
pub struct ChunkEncoder {
    kind: ValueKind,
    w: BitWriter,
    count: u32,
    last_ts: i64,
    last_delta: i64,
    last_bits: u64,
    last_int_delta: i64,
    /// Leading zeros and meaningful length of the current XOR window; `None` until one is set.
    window: Option<(u32, u32)>,
}

/// Writes `dod` in the delta-of-delta prefix code.
#[inline]
fn write_dod(w: &mut BitWriter, dod: i64) {
    match dod {
        0 => w.bit(false),
        -64..=63 => {
            w.write(0b10, 2);
            w.write(dod as u64, 7);
        }
        -256..=255 => {
            w.write(0b110, 3);
            w.write(dod as u64, 9);
        }
        -2048..=2047 => {
            w.write(0b1110, 4);
            w.write(dod as u64, 12);
        }
        -2_147_483_648..=2_147_483_647 => {
            w.write(0b11110, 5);
            w.write(dod as u64, 32);
        }
        _ => {
            w.write(0b11111, 5);
            w.write(dod as u64, 64);
        }
    }
}

#[inline]
fn sign_extend(v: u64, n: u32) -> i64 {
    let shift = 64 - n;
    ((v << shift) as i64) >> shift
}

#[inline]
fn read_dod(r: &mut BitReader<'_>) -> Result<i64, OutOfBits> {
    let mut ones = 0u32;
    while ones < 5 && r.bit()? {
        ones += 1;
    }
    let n = match ones {
        0 => return Ok(0),
        1 => 7,
        2 => 9,
        3 => 12,
        4 => 32,
        _ => 64,
    };
    Ok(sign_extend(r.read(n)?, n))
}

impl ChunkEncoder {
    /// An empty chunk for values of `kind`.
    pub fn new(kind: ValueKind) -> Self {
        Self {
            kind,
            w: BitWriter::default(),
            count: 0,
            last_ts: 0,
            last_delta: 0,
            last_bits: 0,
            last_int_delta: 0,
            window: None,
        }
    }

    /// The chunk's value kind.
    pub fn kind(&self) -> ValueKind {
        self.kind
    }

    /// Points in the chunk.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the chunk has no points.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The last timestamp appended, if any.
    pub fn last_ts(&self) -> Option<i64> {
        (self.count > 0).then_some(self.last_ts)
    }

    /// Size of the encoded chunk in bytes (header included).
    pub fn encoded_len(&self) -> usize {
        CHUNK_HEADER_LEN + self.w.bit_len().div_ceil(8)
    }

    /// Heap bytes held by this encoder.
    pub fn heap_bytes(&self) -> usize {
        self.w.capacity()
    }

    /// Appends a point; its timestamp must be greater than the last one and its kind the chunk's.
    pub fn push(&mut self, ts: i64, value: Value) -> Result<(), EncodeError> {
        if value.kind() != self.kind {
            return Err(EncodeError::KindMismatch {
                want: self.kind,
                got: value.kind(),
            });
        }
        if self.count == u32::MAX {
            return Err(EncodeError::Full);
        }
        if self.count == 0 {
            self.w.write(ts as u64, 64);
            match value {
                Value::F64(f) => {
                    self.last_bits = f.to_bits();
                    self.w.write(self.last_bits, 64);
                }
                Value::I64(i) => {
                    self.last_bits = i as u64;
                    self.w.write(self.last_bits, 64);
                }
                Value::Bool(b) => self.w.bit(b),
            }
            self.last_ts = ts;
            self.count = 1;
            return Ok(());
        }
        if ts <= self.last_ts {
            return Err(EncodeError::NotIncreasing {
                ts,
                last: self.last_ts,
            });
        }
        let delta = ts.wrapping_sub(self.last_ts);
        write_dod(&mut self.w, delta.wrapping_sub(self.last_delta));
        self.last_delta = delta;
        self.last_ts = ts;
        match value {
            Value::F64(f) => self.push_float(f.to_bits()),
            Value::I64(i) => {
                let delta = i.wrapping_sub(self.last_bits as i64);
                write_dod(&mut self.w, delta.wrapping_sub(self.last_int_delta));
                self.last_int_delta = delta;
                self.last_bits = i as u64;
            }
            Value::Bool(b) => self.w.bit(b),
        }
        self.count += 1;
        Ok(())
    }

    #[inline]
    fn push_float(&mut self, bits: u64) {
        let xor = bits ^ self.last_bits;
        self.last_bits = bits;
        if xor == 0 {
            self.w.bit(false);
            return;
        }
        let lead = xor.leading_zeros().min(63);
        let trail = xor.trailing_zeros();
        if let Some((wl, wlen)) = self.window {
            let wtrail = 64 - wl - wlen;
            if lead >= wl && trail >= wtrail {
                self.w.write(0b10, 2);
                self.w.write(xor >> wtrail, wlen);
                return;
            }
        }
        let len = 64 - lead - trail;
        self.w.write(0b11, 2);
        self.w.write(u64::from(lead), 6);
        self.w.write(u64::from(len - 1), 6);
        self.w.write(xor >> trail, len);
        self.window = Some((lead, len));
    }

    /// The encoded chunk (header and bit stream) as of now; the encoder stays open.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(CHUNK_VERSION);
        out.push(self.kind.tag());
        out.extend_from_slice(&self.count.to_le_bytes());
        self.w.to_bytes_into(&mut out);
        out
    }
}

/// Decodes a whole chunk into its kind and points.
pub fn decode_chunk(bytes: &[u8]) -> Result<(ValueKind, Vec<Point>), DecodeError> {
    let mut out = Vec::new();
    let kind = decode_chunk_into(bytes, &mut out)?;
    Ok((kind, out))
}

/// Decodes a whole chunk, appending its points to `out`; returns the chunk's kind.
///
/// On error `out` may hold the points decoded before the error.
pub fn decode_chunk_into(bytes: &[u8], out: &mut Vec<Point>) -> Result<ValueKind, DecodeError> {
    let header: &[u8; CHUNK_HEADER_LEN] = bytes
        .get(..CHUNK_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(DecodeError::ShortHeader)?;
    if header[0] != CHUNK_VERSION {
        return Err(DecodeError::Version(header[0]));
    }
    let kind = ValueKind::from_tag(header[1]).ok_or(DecodeError::Kind(header[1]))?;
    let count = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
    let stream = &bytes[CHUNK_HEADER_LEN..];
    let bits = stream.len() * 8;
    // Every point after the first takes at least 2 bits; the first at least 65.
    if count > 0 && (bits < 65 || (count as usize - 1) > (bits - 65) / 2) {
        return Err(DecodeError::CountTooLarge { count, bits });
    }
    out.reserve(count as usize);
    let mut r = BitReader::new(stream);
    let start = out.len();
    let trunc = |out: &Vec<Point>| DecodeError::Truncated {
        decoded: out.len() - start,
    };
    if count == 0 {
        return if r.remaining() == 0 {
            Ok(kind)
        } else {
            Err(DecodeError::Trailing(r.remaining()))
        };
    }
    let mut ts = r.read(64).map_err(|_| trunc(out))? as i64;
    let mut last_bits = match kind {
        ValueKind::Bool => r.read(1),
        _ => r.read(64),
    }
    .map_err(|_| trunc(out))?;
    out.push(Point {
        ts,
        value: to_value(kind, last_bits),
    });
    let mut delta = 0i64;
    let mut int_delta = 0i64;
    let mut window: Option<(u32, u32)> = None;
    for index in 1..count as usize {
        let dod = read_dod(&mut r).map_err(|_| trunc(out))?;
        delta = delta.wrapping_add(dod);
        let next = ts.wrapping_add(delta);
        if next <= ts {
            return Err(DecodeError::NotIncreasing { index });
        }
        ts = next;
        match kind {
            ValueKind::F64 => {
                if r.bit().map_err(|_| trunc(out))? {
                    let (lead, len) = if r.bit().map_err(|_| trunc(out))? {
                        let lead = r.read(6).map_err(|_| trunc(out))? as u32;
                        let len = r.read(6).map_err(|_| trunc(out))? as u32 + 1;
                        if lead + len > 64 {
                            return Err(DecodeError::BadWindow { index });
                        }
                        window = Some((lead, len));
                        (lead, len)
                    } else {
                        window.ok_or(DecodeError::BadWindow { index })?
                    };
                    let trail = 64 - lead - len;
                    let m = r.read(len).map_err(|_| trunc(out))?;
                    last_bits ^= m << trail;
                }
            }
            ValueKind::I64 => {
                let dod = read_dod(&mut r).map_err(|_| trunc(out))?;
                int_delta = int_delta.wrapping_add(dod);
                last_bits = (last_bits as i64).wrapping_add(int_delta) as u64;
            }
            ValueKind::Bool => last_bits = r.read(1).map_err(|_| trunc(out))?,
        }
        out.push(Point {
            ts,
            value: to_value(kind, last_bits),
        });
    }
    if r.remaining() >= 8 {
        return Err(DecodeError::Trailing(r.remaining()));
    }
    Ok(kind)
}

#[inline]
fn to_value(kind: ValueKind, bits: u64) -> Value {
    match kind {
        ValueKind::F64 => Value::F64(f64::from_bits(bits)),
        ValueKind::I64 => Value::I64(bits as i64),
        ValueKind::Bool => Value::Bool(bits != 0),
    }
}
