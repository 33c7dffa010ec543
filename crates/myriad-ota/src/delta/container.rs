//! The patch header and the varints of the entry stream (format in the [module docs](super)).

use super::{MAX_BODY_SIZE, MAX_IMAGE_SIZE, MAX_WINDOW_LOG, MAX_ZSTD_WINDOW_LOG, MIN_WINDOW_LOG};

/// First bytes of every patch.
pub const MAGIC: [u8; 8] = *b"MYRDELTA";
/// The format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Bytes in the fixed header.
pub const HEADER_LEN: usize = 104;
/// Bytes covered by the header CRC (everything before it).
const CRC_AT: usize = 100;

/// The codec of the compressed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// zstd, one frame, its window at most the header's.
    Zstd,
    /// Raw LZMA2 (no `.xz` container), dictionary size from the header.
    Xz,
}

impl Codec {
    /// The header byte.
    pub fn byte(self) -> u8 {
        match self {
            Codec::Zstd => 1,
            Codec::Xz => 2,
        }
    }

    /// The codec a header byte names.
    pub fn from_byte(b: u8) -> Option<Codec> {
        match b {
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Xz),
            _ => None,
        }
    }

    /// Largest `window_log` a patch of this codec may declare.
    pub fn max_window_log(self) -> u8 {
        match self {
            Codec::Zstd => MAX_ZSTD_WINDOW_LOG,
            Codec::Xz => MAX_WINDOW_LOG,
        }
    }

    /// Its name (`zstd`, `xz`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Xz => "xz",
        }
    }
}

/// The parsed, validated patch header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Codec of the body.
    pub codec: Codec,
    /// log2 of the decoder window.
    pub window_log: u8,
    /// Size of the old (base) image.
    pub old_size: u64,
    /// Size of the new image.
    pub new_size: u64,
    /// Size of the compressed body following the header.
    pub body_len: u64,
    /// SHA-256 of the old image (the caller checks its base against it).
    pub old_sha256: [u8; 32],
    /// SHA-256 of the new image (the applier checks what it emitted against it).
    pub new_sha256: [u8; 32],
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not a Myriad patch.
    #[error("bad magic")]
    BadMagic,
    /// A format version this build does not read.
    #[error("format version {0}, this build reads {VERSION}")]
    Version(u8),
    /// Unknown codec byte.
    #[error("unknown codec {0}")]
    Codec(u8),
    /// The reserved byte is not zero.
    #[error("reserved byte {0} is not zero")]
    Reserved(u8),
    /// Decoder window outside the codec's range.
    #[error("window_log {0} outside {MIN_WINDOW_LOG}..={1} for this codec")]
    Window(u8, u8),
    /// A size over its cap.
    #[error("{field} {value} over the cap {cap}")]
    TooLarge {
        /// `old_size`, `new_size` or `body_len`.
        field: &'static str,
        /// The value in the header.
        value: u64,
        /// Its cap.
        cap: u64,
    },
    /// The header CRC does not match.
    #[error("header CRC mismatch")]
    Crc,
}

fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn hash_at(b: &[u8; HEADER_LEN], at: usize) -> [u8; 32] {
    let mut v = [0u8; 32];
    v.copy_from_slice(&b[at..at + 32]);
    v
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8] = VERSION;
        b[9] = self.codec.byte();
        b[10] = self.window_log;
        b[11] = 0;
        b[12..20].copy_from_slice(&self.old_size.to_le_bytes());
        b[20..28].copy_from_slice(&self.new_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.body_len.to_le_bytes());
        b[36..68].copy_from_slice(&self.old_sha256);
        b[68..100].copy_from_slice(&self.new_sha256);
        let crc = crc32fast::hash(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates a header (every check in the [module docs](super)).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        if b[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if b[8] != VERSION {
            return Err(HeaderError::Version(b[8]));
        }
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&b[CRC_AT..]);
        if crc32fast::hash(&b[..CRC_AT]) != u32::from_le_bytes(crc) {
            return Err(HeaderError::Crc);
        }
        let codec = Codec::from_byte(b[9]).ok_or(HeaderError::Codec(b[9]))?;
        let window_log = b[10];
        let max = codec.max_window_log();
        if !(MIN_WINDOW_LOG..=max).contains(&window_log) {
            return Err(HeaderError::Window(window_log, max));
        }
        if b[11] != 0 {
            return Err(HeaderError::Reserved(b[11]));
        }
        let header = Header {
            codec,
            window_log,
            old_size: u64_at(b, 12),
            new_size: u64_at(b, 20),
            body_len: u64_at(b, 28),
            old_sha256: hash_at(b, 36),
            new_sha256: hash_at(b, 68),
        };
        header.check_sizes()?;
        Ok(header)
    }

    /// The size caps ([`MAX_IMAGE_SIZE`], [`MAX_BODY_SIZE`]).
    pub(crate) fn check_sizes(&self) -> Result<(), HeaderError> {
        for (field, value, cap) in [
            ("old_size", self.old_size, MAX_IMAGE_SIZE),
            ("new_size", self.new_size, MAX_IMAGE_SIZE),
            ("body_len", self.body_len, MAX_BODY_SIZE),
        ] {
            if value > cap {
                return Err(HeaderError::TooLarge { field, value, cap });
            }
        }
        Ok(())
    }
}

/// Longest LEB128 encoding of a u64.
pub(crate) const MAX_VARINT: usize = 10;
/// Longest encoded entry head (three varints).
pub(crate) const MAX_ENTRY_HEAD: usize = 3 * MAX_VARINT;

/// Appends `v` as LEB128.
#[cfg(feature = "diff")]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Zigzag: small magnitudes of either sign encode short.
#[cfg(feature = "diff")]
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Outcome of reading a varint from a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Varint {
    /// The value and the bytes it took.
    Value(u64, usize),
    /// The buffer ends inside the varint.
    Incomplete,
    /// Longer than [`MAX_VARINT`] bytes or over u64.
    Invalid,
}

/// Reads a LEB128 varint from the front of `b`.
pub(crate) fn get_varint(b: &[u8]) -> Varint {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(MAX_VARINT) {
        let part = u64::from(byte & 0x7f);
        if i == MAX_VARINT - 1 && part > 1 {
            return Varint::Invalid;
        }
        v |= part << (7 * i);
        if byte & 0x80 == 0 {
            return Varint::Value(v, i + 1);
        }
    }
    if b.len() >= MAX_VARINT {
        Varint::Invalid
    } else {
        Varint::Incomplete
    }
}

#[cfg(all(test, feature = "diff"))]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_refuse_overlong() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(get_varint(&b), Varint::Value(v, b.len()));
            assert_eq!(get_varint(&b[..b.len() - 1]), Varint::Incomplete);
        }
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        // Eleven bytes, and ten whose last carries bits past 64.
        assert_eq!(get_varint(&[0x80; 11]), Varint::Invalid);
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_varint(&over), Varint::Invalid);
    }

    fn header() -> Header {
        Header {
            codec: Codec::Xz,
            window_log: MAX_WINDOW_LOG,
            old_size: 10,
            new_size: 20,
            body_len: 30,
            old_sha256: [1; 32],
            new_sha256: [2; 32],
        }
    }

    #[test]
    fn header_round_trips() {
        let h = header();
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    /// Re-encodes with a correct CRC after `edit`, so the check after the CRC is reached.
    fn edited(edit: impl FnOnce(&mut [u8; HEADER_LEN])) -> Result<Header, HeaderError> {
        let mut b = header().encode();
        edit(&mut b);
        let crc = crc32fast::hash(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        Header::decode(&b)
    }

    #[test]
    fn header_fields_refused() {
        assert_eq!(edited(|b| b[0] = b'X'), Err(HeaderError::BadMagic));
        assert_eq!(edited(|b| b[8] = 2), Err(HeaderError::Version(2)));
        assert_eq!(edited(|b| b[9] = 3), Err(HeaderError::Codec(3)));
        assert_eq!(edited(|b| b[9] = 0), Err(HeaderError::Codec(0)));
        let max = MAX_WINDOW_LOG;
        assert_eq!(
            edited(|b| b[10] = max + 1),
            Err(HeaderError::Window(max + 1, max))
        );
        assert_eq!(
            edited(|b| b[10] = MIN_WINDOW_LOG - 1),
            Err(HeaderError::Window(MIN_WINDOW_LOG - 1, max))
        );
        let zmax = MAX_ZSTD_WINDOW_LOG;
        assert!(edited(|b| (b[9], b[10]) = (1, zmax)).is_ok());
        assert_eq!(
            edited(|b| (b[9], b[10]) = (1, zmax + 1)),
            Err(HeaderError::Window(zmax + 1, zmax))
        );
        assert_eq!(edited(|b| b[11] = 1), Err(HeaderError::Reserved(1)));
        let mut b = header().encode();
        b[50] ^= 1;
        assert_eq!(Header::decode(&b), Err(HeaderError::Crc));
    }

    #[test]
    fn sizes_one_past_the_cap_refused() {
        let at_cap = edited(|b| {
            b[12..20].copy_from_slice(&MAX_IMAGE_SIZE.to_le_bytes());
            b[20..28].copy_from_slice(&MAX_IMAGE_SIZE.to_le_bytes());
            b[28..36].copy_from_slice(&MAX_BODY_SIZE.to_le_bytes());
        });
        assert!(at_cap.is_ok());
        for (at, field, cap) in [
            (12, "old_size", MAX_IMAGE_SIZE),
            (20, "new_size", MAX_IMAGE_SIZE),
            (28, "body_len", MAX_BODY_SIZE),
        ] {
            let got = edited(|b| b[at..at + 8].copy_from_slice(&(cap + 1).to_le_bytes()));
            assert_eq!(
                got,
                Err(HeaderError::TooLarge {
                    field,
                    value: cap + 1,
                    cap
                })
            );
        }
    }
}
