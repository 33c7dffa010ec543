//! Primitive writers.
//!
//! Encoding runs twice over the same code: once into a [`Counter`] to learn
//! the length (and to validate every field), then into the output buffer.
//! Sharing the code guarantees that `encoded_len` equals the bytes written.

use bytes::{BufMut, BytesMut};

use crate::{EncodeError, MAX_VARIABLE_INT};

/// Something encoded bytes can go to.
pub(crate) trait Sink {
    /// Appends one byte.
    fn put_u8(&mut self, value: u8);
    /// Appends bytes.
    fn put_slice(&mut self, bytes: &[u8]);

    /// Appends a big-endian Two Byte Integer.
    fn put_u16(&mut self, value: u16) {
        self.put_slice(&value.to_be_bytes());
    }

    /// Appends a big-endian Four Byte Integer.
    fn put_u32(&mut self, value: u32) {
        self.put_slice(&value.to_be_bytes());
    }

    /// Appends a Variable Byte Integer.
    fn put_variable_int(&mut self, value: u32, field: &'static str) -> Result<(), EncodeError> {
        if value > MAX_VARIABLE_INT {
            return Err(EncodeError::InvalidValue(field));
        }
        let mut value = value;
        loop {
            let mut byte = (value & 0x7F) as u8;
            value >>= 7;
            if value > 0 {
                byte |= 0x80;
            }
            self.put_u8(byte);
            if value == 0 {
                return Ok(());
            }
        }
    }

    /// Appends Binary Data (two byte length prefix).
    fn put_binary(&mut self, bytes: &[u8], field: &'static str) -> Result<(), EncodeError> {
        let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong(field))?;
        self.put_u16(len);
        self.put_slice(bytes);
        Ok(())
    }

    /// Appends a UTF-8 Encoded String (two byte length prefix).
    fn put_str(&mut self, value: &str, field: &'static str) -> Result<(), EncodeError> {
        self.put_binary(value.as_bytes(), field)
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, value: u8) {
        BufMut::put_u8(self, value);
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A sink that only counts bytes.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put_u8(&mut self, _value: u8) {
        self.0 += 1;
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}
