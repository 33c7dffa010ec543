//! Bit-level writer and reader used by the Gorilla chunk codec (MSB first).

/// Appends bits, most significant first, to a growable byte buffer.
#[derive(Debug, Clone, Default)]
pub(crate) struct BitWriter {
    buf: Vec<u8>,
    /// Pending bits not yet forming a whole byte, right-aligned (always < 8 of them).
    acc: u128,
    nacc: u32,
}

impl BitWriter {
    /// Appends the low `n` bits of `value` (`n` in 0..=64).
    #[inline]
    pub(crate) fn write(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        if n == 0 {
            return;
        }
        let v = if n == 64 {
            value
        } else {
            value & ((1u64 << n) - 1)
        };
        self.acc = (self.acc << n) | u128::from(v);
        self.nacc += n;
        while self.nacc >= 8 {
            self.nacc -= 8;
            self.buf.push((self.acc >> self.nacc) as u8);
        }
        self.acc &= (1u128 << self.nacc) - 1;
    }

    /// Appends one bit.
    #[inline]
    pub(crate) fn bit(&mut self, b: bool) {
        self.write(u64::from(b), 1);
    }

    /// Number of bits written so far.
    pub(crate) fn bit_len(&self) -> usize {
        self.buf.len() * 8 + self.nacc as usize
    }

    /// The bytes written so far, the last one zero-padded.
    pub(crate) fn to_bytes_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.buf);
        if self.nacc > 0 {
            out.push((self.acc << (8 - self.nacc)) as u8);
        }
    }

    /// Bytes of heap held by the buffer.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Reads bits, most significant first, from a byte slice; never reads past its end.
#[derive(Debug, Clone)]
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

/// The reader ran out of bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfBits;

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Bits left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len() * 8 - self.pos
    }

    /// Reads `n` bits (0..=64) as the low bits of a `u64`.
    #[inline]
    pub(crate) fn read(&mut self, n: u32) -> Result<u64, OutOfBits> {
        debug_assert!(n <= 64);
        if (n as usize) > self.remaining() {
            return Err(OutOfBits);
        }
        let mut v = 0u64;
        let mut left = n;
        while left > 0 {
            let byte = self.data.get(self.pos / 8).copied().ok_or(OutOfBits)?;
            let off = (self.pos % 8) as u32;
            let avail = 8 - off;
            let take = avail.min(left);
            let bits = (u64::from(byte) >> (avail - take)) & ((1u64 << take) - 1);
            v = (v << take) | bits;
            self.pos += take as usize;
            left -= take;
        }
        Ok(v)
    }

    /// Reads one bit.
    #[inline]
    pub(crate) fn bit(&mut self) -> Result<bool, OutOfBits> {
        Ok(self.read(1)? == 1)
    }
}
