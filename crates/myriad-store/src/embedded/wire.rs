//! The primitives stored values are built from: fixed-width big-endian
//! integers, LEB128 varints and length-prefixed byte strings.
//!
//! Reading never panics: every short or malformed input is a [`Malformed`]
//! that the caller turns into [`crate::StoreError::Corrupt`].

use bytes::Bytes;
use myriad_mqtt::ByteString;

/// Why a stored value could not be decoded (a static description; the
/// caller adds the table and the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Malformed(pub(super) &'static str);

/// Appends primitives to a value being built.
pub(super) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A writer whose value starts with the format `version` byte.
    pub(super) fn new(version: u8, capacity: usize) -> Writer {
        let mut buf = Vec::with_capacity(capacity + 1);
        buf.push(version);
        Writer { buf }
    }

    /// A writer with nothing in it (for a part written ahead of its count).
    pub(super) fn empty(capacity: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Appends what `other` holds.
    pub(super) fn append(&mut self, other: Writer) {
        self.buf.extend_from_slice(&other.buf);
    }

    pub(super) fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    pub(super) fn u16(&mut self, value: u16) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    pub(super) fn u32(&mut self, value: u32) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    pub(super) fn u64(&mut self, value: u64) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    /// LEB128, 1 to 10 bytes.
    pub(super) fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            // Truncation intended: the low seven bits plus the continuation bit.
            self.buf.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.buf.push(value as u8);
    }

    /// A varint length, then the bytes.
    pub(super) fn bytes(&mut self, value: &[u8]) {
        self.varint(value.len() as u64);
        self.buf.extend_from_slice(value);
    }

    pub(super) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads primitives from a stored value, slicing byte strings out of it
/// without copying.
pub(super) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// A reader over `buf`, past its version byte, which must be `version`.
    pub(super) fn new(buf: Bytes, version: u8) -> Result<Reader, Malformed> {
        match buf.first() {
            None => Err(Malformed("empty value")),
            Some(&found) if found == version => Ok(Reader { buf, pos: 1 }),
            Some(_) => Err(Malformed("unknown record version")),
        }
    }

    fn take(&mut self, len: usize) -> Result<&[u8], Malformed> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.buf.len())
            .ok_or(Malformed("value is truncated"))?;
        let slice = &self.buf[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(super) fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(Malformed("varint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed("varint longer than 10 bytes"))
    }

    pub(super) fn varint_u32(&mut self) -> Result<u32, Malformed> {
        u32::try_from(self.varint()?).map_err(|_| Malformed("varint overflows 32 bits"))
    }

    /// A length-prefixed byte string, sliced out of the value.
    pub(super) fn bytes(&mut self) -> Result<Bytes, Malformed> {
        let len = usize::try_from(self.varint()?).map_err(|_| Malformed("length too large"))?;
        let start = self.pos;
        self.take(len)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// A length-prefixed UTF-8 string, sliced out of the value.
    pub(super) fn string(&mut self) -> Result<ByteString, Malformed> {
        ByteString::try_from(self.bytes()?).map_err(|_| Malformed("string is not UTF-8"))
    }

    /// Fails unless every byte was read.
    pub(super) fn finish(&self) -> Result<(), Malformed> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(Malformed("trailing bytes after the record"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip() {
        let mut w = Writer::new(7, 0);
        w.u8(1);
        w.u16(0x0203);
        w.u32(0x0405_0607);
        w.u64(u64::MAX - 1);
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            w.varint(v);
        }
        w.bytes(b"payload");
        w.bytes("t\u{e9}".as_bytes());
        let mut r = Reader::new(Bytes::from(w.finish()), 7).expect("version");
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.u32(), Ok(0x0405_0607));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(r.varint(), Ok(v));
        }
        assert_eq!(r.bytes(), Ok(Bytes::from_static(b"payload")));
        assert_eq!(r.string().map(|s| s.to_string()), Ok("t\u{e9}".to_string()));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Reader::new(Bytes::new(), 1).is_err());
        assert!(Reader::new(Bytes::from_static(&[2]), 1).is_err());
        let mut r = Reader::new(Bytes::from_static(&[1, 0xff, 0xff]), 1).expect("version");
        assert!(r.varint().is_err());
        let mut r = Reader::new(Bytes::from_static(&[1, 5, b'a']), 1).expect("version");
        assert!(r.bytes().is_err());
        let mut r = Reader::new(Bytes::from_static(&[1, 1, 0xff]), 1).expect("version");
        assert!(r.string().is_err());
        let mut eleven = vec![1u8];
        eleven.extend([0x81; 11]);
        let mut r = Reader::new(Bytes::from(eleven), 1).expect("version");
        assert!(r.varint().is_err());
        let mut r = Reader::new(
            Bytes::from_static(&[
                1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ]),
            1,
        )
        .expect("version");
        assert!(r.varint().is_err());
        let r = Reader::new(Bytes::from_static(&[1, 0]), 1).expect("version");
        assert!(r.finish().is_err());
    }
}
