//! Primitive readers over the body of one packet.
//!
//! A [`Reader`] owns a [`Bytes`] view of exactly one packet's variable header
//! and payload; every read either succeeds or reports a malformed packet, so
//! running past the end of the packet is never possible.

use bytes::{Buf, Bytes};
use bytestring::ByteString;

use crate::DecodeError;

/// Shorthand for a malformed-packet error.
pub(crate) fn malformed(why: &'static str) -> DecodeError {
    DecodeError::Malformed(why)
}

/// Shorthand for a protocol error.
pub(crate) fn protocol(why: &'static str) -> DecodeError {
    DecodeError::Protocol(why)
}

/// Decodes a Variable Byte Integer from the front of `bytes`.
///
/// Returns `Ok(None)` when `bytes` ends before the integer does, otherwise the
/// value and the number of bytes it took. More than four bytes is malformed.
pub(crate) fn parse_variable_int(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(malformed("variable byte integer longer than 4 bytes"))
    } else {
        Ok(None)
    }
}

/// Reads the fields of one packet.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    /// A reader over `buf`.
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    /// Bytes left unread.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Whether every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails with a malformed-packet error unless every byte has been read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed("unexpected bytes after the end of the packet"))
        }
    }

    /// Reads one byte.
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(malformed("packet ends inside a byte field"));
        }
        Ok(self.buf.get_u8())
    }

    /// Reads a big-endian Two Byte Integer.
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(malformed("packet ends inside a two byte integer"));
        }
        Ok(self.buf.get_u16())
    }

    /// Reads a big-endian Four Byte Integer.
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(malformed("packet ends inside a four byte integer"));
        }
        Ok(self.buf.get_u32())
    }

    /// Reads a Variable Byte Integer.
    pub(crate) fn variable_int(&mut self) -> Result<u32, DecodeError> {
        match parse_variable_int(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(malformed("packet ends inside a variable byte integer")),
        }
    }

    /// Takes the next `len` bytes (zero-copy).
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(malformed("field length runs past the end of the packet"));
        }
        Ok(self.buf.split_to(len))
    }

    /// Takes every byte left (zero-copy).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Reads Binary Data: a two byte length and that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// Reads a UTF-8 Encoded String; U+0000 is malformed (MQTT-1.5.4-2), in
    /// topic names and filters too.
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(malformed("string contains U+0000"));
        }
        ByteString::try_from(bytes).map_err(|_| malformed("string is not valid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_int_forms() {
        assert_eq!(parse_variable_int(&[0x00]), Ok(Some((0, 1))));
        assert_eq!(parse_variable_int(&[0x7F]), Ok(Some((127, 1))));
        assert_eq!(parse_variable_int(&[0x80, 0x01]), Ok(Some((128, 2))));
        assert_eq!(
            parse_variable_int(&[0xFF, 0xFF, 0xFF, 0x7F]),
            Ok(Some((268_435_455, 4)))
        );
        // Non-minimal encodings are accepted.
        assert_eq!(parse_variable_int(&[0x80, 0x00]), Ok(Some((0, 2))));
        assert_eq!(parse_variable_int(&[]), Ok(None));
        assert_eq!(parse_variable_int(&[0x80, 0x80, 0x80]), Ok(None));
        assert!(parse_variable_int(&[0x80, 0x80, 0x80, 0x80]).is_err());
        assert!(parse_variable_int(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
    }

    #[test]
    fn strings() {
        let mut reader = Reader::new(Bytes::from_static(b"\x00\x02hi\x00\x01\x00\x00\x01\xFF"));
        assert_eq!(reader.string().unwrap(), "hi");
        assert!(reader.string().is_err());
        assert!(reader.string().is_err());
        assert!(reader.is_empty());
    }
}
