//! The sans-IO streaming applier: patch bytes in, old-image reads out, new-image bytes out.

use sha2::{Digest, Sha256};

use super::codec::Decoder;
use super::container::{
    HEADER_LEN, Header, HeaderError, MAX_ENTRY_HEAD, Varint, get_varint, unzigzag,
};

/// Patch bytes the applier buffers between [`Applier::push_patch`] and the decoder.
const IN_BUF: usize = 16 * 1024;
/// Decompressed bytes buffered (entry heads, diff and extra bytes).
const DEC_BUF: usize = 32 * 1024;
/// New-image bytes computed from one old-image read; the largest [`Step::ReadOld`].
const OUT_BUF: usize = 32 * 1024;

/// What the caller does next (from [`Applier::poll`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// The header was read and validated (shown once, before any read of the old image): the
    /// caller checks `old_size` and `old_sha256` against its base, and `new_size` and
    /// `new_sha256` against the signed manifest (the applier writes exactly `new_size` bytes,
    /// up to 4 GiB, whatever the patch's own size).
    Header(&'a Header),
    /// Push more patch bytes ([`Applier::push_patch`]), or call [`Applier::finish_patch`] if
    /// there are none.
    NeedPatch,
    /// Read `len` bytes of the old image at `offset` and hand them to
    /// [`Applier::provide_old`]. The range is inside the old image.
    ReadOld {
        /// Offset in the old image.
        offset: u64,
        /// Bytes to read (at most 32 KiB).
        len: usize,
    },
    /// Append these bytes to the new image (sequential writes), then poll again.
    Write(&'a [u8]),
    /// The new image is complete and its SHA-256 matches the header's.
    Done,
}

/// Why a patch was refused (or the applier was misused). Once returned, every later call
/// returns the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The header is invalid.
    #[error("patch header: {0}")]
    Header(#[from] HeaderError),
    /// The codec refused the stream (corrupt data, or a window over the header's).
    #[error("patch stream: {0}")]
    Decompress(&'static str),
    /// An entry's varint is longer than 10 bytes or over 64 bits.
    #[error("entry varint malformed")]
    Varint,
    /// An entry with neither add nor copy bytes.
    #[error("entry produces no bytes")]
    EmptyEntry,
    /// A seek moves the old-image cursor outside the old image.
    #[error("seek {seek} from {cursor} leaves the old image of {old_size} bytes")]
    SeekOutOfRange {
        /// The cursor before the seek.
        cursor: u64,
        /// The seek.
        seek: i64,
        /// The old image's size.
        old_size: u64,
    },
    /// An add reads past the end of the old image.
    #[error("add of {len} bytes at {offset} reads past the old image of {old_size} bytes")]
    ReadPastOld {
        /// Where the add starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The old image's size.
        old_size: u64,
    },
    /// An entry would write past the new image's size.
    #[error("entry of {len} bytes at {written} writes past the new image of {new_size} bytes")]
    WritePastEnd {
        /// Bytes written so far.
        written: u64,
        /// add_len + copy_len (saturating).
        len: u64,
        /// The new image's size.
        new_size: u64,
    },
    /// The patch (or its compressed stream) ended before the new image was complete.
    #[error("patch truncated")]
    Truncated,
    /// Bytes after the end: past `body_len`, after the compressed stream, or decompressed
    /// data after the new image's last byte.
    #[error("trailing data after the patch")]
    TrailingData,
    /// The emitted image's SHA-256 differs from the header's.
    #[error("new image SHA-256 mismatch")]
    NewHashMismatch,
    /// [`Applier::provide_old`] was called with a length other than the one asked.
    #[error("old-image read of {got} bytes, {expected} asked")]
    OldLength {
        /// The length asked for.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// [`Applier::provide_old`] was called when no read was asked for.
    #[error("old-image bytes given but none asked for")]
    NotAwaitingOld,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the header.
    Header,
    /// Header parsed; [`Step::Header`] not shown yet.
    ShowHeader,
    /// Between or inside entries.
    Entries,
    /// [`Step::ReadOld`] issued for this many bytes.
    AwaitOld(usize),
    /// `out[..n]` computed, to be emitted.
    EmitOut(usize),
    /// All bytes written: confirming the stream's end, then the hash.
    Finish,
    /// Finished and verified.
    Done,
}

/// The bytes returned by the last [`Step::Write`], released on the next call.
#[derive(Debug, Clone, Copy)]
enum Pending {
    None,
    Dec(usize),
}

/// What [`Applier::advance`] decided, without borrowing the applier.
enum Next {
    Header,
    NeedPatch,
    ReadOld(u64, usize),
    WriteDec(usize, usize),
    WriteOut(usize),
    Done,
}

/// The streaming patch applier (format and checks in the [module docs](super)).
///
/// ```no_run
/// # use myriad_ota::delta::{Applier, Step};
/// # fn run(patch: &[u8], old: &[u8], new: &mut Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
/// let mut applier = Applier::new();
/// let mut patch = patch; // e.g. a download, in chunks
/// loop {
///     match applier.poll()? {
///         Step::Header(h) => assert_eq!(h.old_size, old.len() as u64), // and the base hash
///         Step::NeedPatch if patch.is_empty() => applier.finish_patch(),
///         Step::NeedPatch => {
///             let n = applier.push_patch(patch)?;
///             patch = &patch[n..];
///         }
///         Step::ReadOld { offset, len } => {
///             let at = offset as usize;
///             applier.provide_old(&old[at..at + len])?;
///         }
///         Step::Write(bytes) => new.extend_from_slice(bytes),
///         Step::Done => return Ok(()),
///     }
/// }
/// # }
/// ```
pub struct Applier {
    state: State,
    error: Option<ApplyError>,
    hdr: [u8; HEADER_LEN],
    hdr_len: usize,
    header: Option<Header>,
    decoder: Option<Decoder>,
    input: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    /// Body bytes accepted by [`Applier::push_patch`].
    body_fed: u64,
    patch_eof: bool,
    stream_ended: bool,
    dec: Box<[u8]>,
    dec_start: usize,
    dec_end: usize,
    out: Box<[u8]>,
    pending: Pending,
    /// Old-image cursor.
    old_pos: u64,
    written: u64,
    add_left: u64,
    copy_left: u64,
    hasher: Sha256,
}

impl Default for Applier {
    fn default() -> Self {
        Self::new()
    }
}

impl Applier {
    /// Bytes of the applier's own buffers (patch input, decompressed data, computed output);
    /// the codec's state comes on top ([`Applier::codec_memory`]).
    pub const BUFFERS: usize = IN_BUF + DEC_BUF + OUT_BUF;

    /// A fresh applier waiting for the header.
    pub fn new() -> Applier {
        Applier {
            state: State::Header,
            error: None,
            hdr: [0; HEADER_LEN],
            hdr_len: 0,
            header: None,
            decoder: None,
            input: vec![0; IN_BUF].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            body_fed: 0,
            patch_eof: false,
            stream_ended: false,
            dec: vec![0; DEC_BUF].into_boxed_slice(),
            dec_start: 0,
            dec_end: 0,
            out: vec![0; OUT_BUF].into_boxed_slice(),
            pending: Pending::None,
            old_pos: 0,
            written: 0,
            add_left: 0,
            copy_left: 0,
            hasher: Sha256::new(),
        }
    }

    /// The header, once read.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// New-image bytes emitted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes the codec library allocated for its state (0 before the header).
    pub fn codec_memory(&self) -> usize {
        self.decoder.as_ref().map_or(0, Decoder::memory)
    }

    fn fail<T>(&mut self, e: ApplyError) -> Result<T, ApplyError> {
        self.error = Some(e.clone());
        Err(e)
    }

    fn check(&self) -> Result<(), ApplyError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Takes patch bytes; returns how many it took (fewer than offered when its buffer is
    /// full: poll, then push the rest). Bytes past the header's `body_len` are refused.
    pub fn push_patch(&mut self, data: &[u8]) -> Result<usize, ApplyError> {
        self.check()?;
        let mut used = 0;
        if self.state == State::Header {
            let n = (HEADER_LEN - self.hdr_len).min(data.len());
            self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[..n]);
            self.hdr_len += n;
            used = n;
            if self.hdr_len < HEADER_LEN {
                return Ok(used);
            }
            let header = match Header::decode(&self.hdr) {
                Ok(h) => h,
                Err(e) => return self.fail(e.into()),
            };
            match Decoder::new(header.codec, header.window_log) {
                Ok(d) => self.decoder = Some(d),
                Err(e) => return self.fail(ApplyError::Decompress(e)),
            }
            self.header = Some(header);
            self.state = State::ShowHeader;
        }
        let rest = &data[used..];
        if rest.is_empty() {
            return Ok(used);
        }
        let body_len = self.header.as_ref().map_or(0, |h| h.body_len);
        let body_room = body_len - self.body_fed;
        if body_room == 0 {
            return self.fail(ApplyError::TrailingData);
        }
        if self.in_start > 0 {
            self.input.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
        let space = IN_BUF - self.in_end;
        let n = rest
            .len()
            .min(space)
            .min(usize::try_from(body_room).unwrap_or(usize::MAX));
        if n < rest.len() && n as u64 == body_room {
            return self.fail(ApplyError::TrailingData);
        }
        self.input[self.in_end..self.in_end + n].copy_from_slice(&rest[..n]);
        self.in_end += n;
        self.body_fed += n as u64;
        Ok(used + n)
    }

    /// Says no more patch bytes will come: where more are needed, [`Applier::poll`] returns
    /// [`ApplyError::Truncated`] instead of [`Step::NeedPatch`].
    pub fn finish_patch(&mut self) {
        self.patch_eof = true;
    }

    /// The old-image bytes a [`Step::ReadOld`] asked for (exactly `len` of them).
    pub fn provide_old(&mut self, old: &[u8]) -> Result<(), ApplyError> {
        self.check()?;
        let State::AwaitOld(len) = self.state else {
            return self.fail(ApplyError::NotAwaitingOld);
        };
        if old.len() != len {
            return self.fail(ApplyError::OldLength {
                expected: len,
                got: old.len(),
            });
        }
        let diff = &self.dec[self.dec_start..self.dec_start + len];
        for ((o, &a), &d) in self.out[..len].iter_mut().zip(old).zip(diff) {
            *o = a.wrapping_add(d);
        }
        self.dec_start += len;
        self.add_left -= len as u64;
        self.old_pos += len as u64;
        self.state = State::EmitOut(len);
        Ok(())
    }

    /// The next step (see [`Step`]).
    pub fn poll(&mut self) -> Result<Step<'_>, ApplyError> {
        self.check()?;
        match self.advance() {
            Ok(Next::Header) => Ok(Step::Header(
                self.header.as_ref().ok_or(ApplyError::Truncated)?,
            )),
            Ok(Next::NeedPatch) => Ok(Step::NeedPatch),
            Ok(Next::ReadOld(offset, len)) => Ok(Step::ReadOld { offset, len }),
            Ok(Next::WriteDec(at, len)) => Ok(Step::Write(&self.dec[at..at + len])),
            Ok(Next::WriteOut(len)) => Ok(Step::Write(&self.out[..len])),
            Ok(Next::Done) => Ok(Step::Done),
            Err(e) => self.fail(e),
        }
    }

    fn dec_avail(&self) -> usize {
        self.dec_end - self.dec_start
    }

    /// Patch bytes are needed: [`Next::NeedPatch`], or [`ApplyError::Truncated`] when none
    /// can come (input finished, or the whole body already given).
    fn need_patch(&self) -> Result<Next, ApplyError> {
        let body_done = self
            .header
            .as_ref()
            .is_some_and(|h| self.body_fed == h.body_len);
        if self.patch_eof || (body_done && self.in_start == self.in_end) {
            Err(ApplyError::Truncated)
        } else {
            Ok(Next::NeedPatch)
        }
    }

    /// Decodes until `need` bytes are buffered or the stream ended; `Ok(false)`: patch input
    /// is needed first.
    fn fill(&mut self, need: usize) -> Result<bool, ApplyError> {
        let mut stalls = 0;
        loop {
            if self.dec_avail() >= need || self.stream_ended {
                return Ok(true);
            }
            if self.dec_start > 0 {
                self.dec.copy_within(self.dec_start..self.dec_end, 0);
                self.dec_end -= self.dec_start;
                self.dec_start = 0;
            }
            let Some(decoder) = self.decoder.as_mut() else {
                return Err(ApplyError::Truncated);
            };
            let p = decoder
                .decode(
                    &self.input[self.in_start..self.in_end],
                    &mut self.dec[self.dec_end..],
                )
                .map_err(ApplyError::Decompress)?;
            self.in_start += p.consumed;
            self.dec_end += p.produced;
            if p.ended {
                self.stream_ended = true;
            } else if p.consumed == 0 && p.produced == 0 {
                if self.in_start == self.in_end {
                    return Ok(false);
                }
                // Input and output space, yet no progress: never loop on it.
                stalls += 1;
                if stalls > 2 {
                    return Err(ApplyError::Decompress("decoder stalled"));
                }
            }
        }
    }

    fn advance(&mut self) -> Result<Next, ApplyError> {
        if let Pending::Dec(n) = std::mem::replace(&mut self.pending, Pending::None) {
            self.dec_start += n;
        }
        loop {
            match self.state {
                State::Header => return self.need_patch(),
                State::ShowHeader => {
                    self.state = State::Entries;
                    return Ok(Next::Header);
                }
                State::AwaitOld(len) => return Ok(Next::ReadOld(self.old_pos, len)),
                State::EmitOut(len) => {
                    self.hasher.update(&self.out[..len]);
                    self.written += len as u64;
                    self.state = State::Entries;
                    return Ok(Next::WriteOut(len));
                }
                State::Entries => {
                    if self.add_left > 0 || self.copy_left > 0 {
                        if self.dec_avail() == 0 {
                            if !self.fill(1)? {
                                return self.need_patch();
                            }
                            if self.dec_avail() == 0 {
                                return Err(ApplyError::Truncated);
                            }
                        }
                        let avail = self.dec_avail();
                        if self.add_left > 0 {
                            let len = avail.min(OUT_BUF).min(clamp(self.add_left));
                            self.state = State::AwaitOld(len);
                            return Ok(Next::ReadOld(self.old_pos, len));
                        }
                        let len = avail.min(clamp(self.copy_left));
                        let at = self.dec_start;
                        self.hasher.update(&self.dec[at..at + len]);
                        self.copy_left -= len as u64;
                        self.written += len as u64;
                        self.pending = Pending::Dec(len);
                        return Ok(Next::WriteDec(at, len));
                    }
                    if self
                        .header
                        .as_ref()
                        .is_some_and(|h| self.written == h.new_size)
                    {
                        self.state = State::Finish;
                        continue;
                    }
                    if !self.fill(MAX_ENTRY_HEAD)? {
                        return self.need_patch();
                    }
                    self.entry()?;
                }
                State::Finish => {
                    if self.dec_avail() > 0 {
                        return Err(ApplyError::TrailingData);
                    }
                    if !self.fill(1)? {
                        return self.need_patch();
                    }
                    if self.dec_avail() > 0 {
                        return Err(ApplyError::TrailingData);
                    }
                    // The stream ended: nothing may follow it.
                    let body_len = self.header.as_ref().map_or(0, |h| h.body_len);
                    if self.in_start < self.in_end || self.body_fed < body_len {
                        return Err(ApplyError::TrailingData);
                    }
                    let got: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
                    if self.header.as_ref().is_none_or(|h| got != h.new_sha256) {
                        return Err(ApplyError::NewHashMismatch);
                    }
                    self.state = State::Done;
                }
                State::Done => return Ok(Next::Done),
            }
        }
    }

    /// Parses and validates the entry head at the front of the decompressed buffer.
    fn entry(&mut self) -> Result<(), ApplyError> {
        let (old_size, new_size) = match &self.header {
            Some(h) => (h.old_size, h.new_size),
            None => return Err(ApplyError::Truncated),
        };
        let mut at = self.dec_start;
        let mut fields = [0u64; 3];
        for field in &mut fields {
            match get_varint(&self.dec[at..self.dec_end]) {
                Varint::Value(v, n) => {
                    *field = v;
                    at += n;
                }
                // fill() buffered a whole head unless the stream ended.
                Varint::Incomplete => return Err(ApplyError::Truncated),
                Varint::Invalid => return Err(ApplyError::Varint),
            }
        }
        self.dec_start = at;
        let [seek, add, copy] = fields;
        let seek = unzigzag(seek);
        if add == 0 && copy == 0 {
            return Err(ApplyError::EmptyEntry);
        }
        let room = new_size - self.written;
        if add > room || copy > room - add {
            let len = add.saturating_add(copy);
            return Err(ApplyError::WritePastEnd {
                written: self.written,
                len,
                new_size,
            });
        }
        let cursor = i128::from(self.old_pos) + i128::from(seek);
        if cursor < 0 || cursor > i128::from(old_size) {
            return Err(ApplyError::SeekOutOfRange {
                cursor: self.old_pos,
                seek,
                old_size,
            });
        }
        // In 0..=old_size, so it fits.
        let cursor = cursor as u64;
        if add > old_size - cursor {
            return Err(ApplyError::ReadPastOld {
                offset: cursor,
                len: add,
                old_size,
            });
        }
        self.old_pos = cursor;
        self.add_left = add;
        self.copy_left = copy;
        Ok(())
    }
}

/// `v` as a buffer length (the callers take the min with a buffer size).
fn clamp(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}
