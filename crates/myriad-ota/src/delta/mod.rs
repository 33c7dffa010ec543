//! Delta patches: a bsdiff-class differ, Myriad's own streaming patch container, and a sans-IO
//! applier that rebuilds the new image in bounded memory.
//!
//! # Pieces
//!
//! - [`diff()`] (server side, CPU-bound, no I/O: run it on a blocking pool; it uses rayon and
//!   a second thread unless [`DiffOptions::threads`] is off) finds the bsdiff control entries
//!   between two in-memory images and writes them, with their diff and extra bytes, into one
//!   container ([`Patch`]). It compresses the stream with both codecs (zstd and xz/LZMA2) and
//!   keeps the smaller. Behind the `diff` feature (on by default): a device needs only the
//!   applier.
//! - [`Applier`] (device side): no I/O, no clock. The caller pushes patch bytes in chunks as
//!   they arrive, reads the old image where the applier asks ([`Step::ReadOld`]: random
//!   offsets) and writes what it emits ([`Step::Write`]: strictly sequential). It hashes what
//!   it emits and ends with [`Step::Done`] only when the new image's SHA-256 matches.
//!
//! # Why qbsdiff
//!
//! Both bsdiff-class crates were measured on the same inputs, entry stream and xz settings
//! (2026-12-05, libssl3 3.0.17 -> 3.0.20 from Debian, `libcrypto.so.3` 4.7 MB): qbsdiff 1.4
//! found 1,023 control entries whose stream compresses to 189,382 bytes (xz) in 0.62 s; bidiff
//! 1.0 found 1,831 entries, 196,820 bytes, 0.78 s (`libssl.so.3`: 17,328 vs 17,326 bytes).
//! qbsdiff is also the maintained one (1.4.4 in 2025; bidiff's only stable release, 1.0.0, is
//! from 2020). Its only output is a bsdiff 4 file (three bzip2 streams): [`diff()`] asks for the
//! fastest bzip2 level, decodes only the control stream back (24 bytes per entry) and
//! recomputes the diff and extra bytes from the two images, so the bzip2 work on the data
//! streams is the price of using the crate unmodified.
//!
//! # Byte format (version 1)
//!
//! A patch is a fixed [`HEADER_LEN`]-byte header followed by exactly `body_len` bytes of ONE
//! compressed stream; nothing may follow it. Integers are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MYRDELTA` |
//! | 8 | 1 | format version, `1` |
//! | 9 | 1 | codec: `1` zstd, `2` xz (raw LZMA2, no `.xz` container) |
//! | 10 | 1 | `window_log`: the decoder window is `2^window_log` bytes, [`MIN_WINDOW_LOG`]..=[`MAX_WINDOW_LOG`] (xz) or ..=[`MAX_ZSTD_WINDOW_LOG`] (zstd) |
//! | 11 | 1 | reserved, `0` |
//! | 12 | 8 | `old_size`: bytes of the old (base) image, at most [`MAX_IMAGE_SIZE`] |
//! | 20 | 8 | `new_size`: bytes of the new image, at most [`MAX_IMAGE_SIZE`] |
//! | 28 | 8 | `body_len`: bytes of the compressed stream after the header, at most [`MAX_BODY_SIZE`] |
//! | 36 | 32 | SHA-256 of the old image |
//! | 68 | 32 | SHA-256 of the new image |
//! | 100 | 4 | CRC-32 (IEEE) of bytes 0..100 |
//!
//! The decompressed stream is a sequence of entries, each read strictly in order:
//!
//! ```text
//! seek     zigzag LEB128 varint (i64)  move the old-image cursor by this much (first)
//! add_len  LEB128 varint (u64)         then: add_len diff bytes follow,
//! copy_len LEB128 varint (u64)         then: copy_len extra bytes follow
//! add_len bytes:  new[i] = old[cursor + i] + diff[i] (wrapping); the cursor advances by add_len
//! copy_len bytes: new[i] = extra[i]
//! ```
//!
//! The entries end exactly when `new_size` bytes have been produced, and the compressed stream
//! must end there too (zstd: one frame, its end; xz: the LZMA2 end marker). The seek comes
//! first (bsdiff puts it last), so no entry ever moves the cursor without reading there.
//!
//! Compared with bsdiff 4 (three bzip2 streams of controls, diff and extra bytes read in
//! parallel), the applier here reads one stream front to back, so the patch can be fed as it
//! downloads and one decoder window is all the codec holds. Measured on the same Debian pair,
//! the whole patch (one LZMA2 stream) is smaller than Debian's `bsdiff` (`libssl.so.3`: 17,445
//! vs 17,847 bytes; `libcrypto.so.3`: 189,000 vs 242,123); `bench/RESULTS.md` has the run.
//!
//! # What the applier refuses
//!
//! A device checks the whole patch's SHA-256 against the signed manifest before it applies it
//! (issue 18: nothing tampered reaches the inactive slot); the checks below are the second line,
//! and the applier's only line for a patch that is applied while it downloads. Every refusal is
//! an [`ApplyError`]; nothing panics and no input makes it allocate more than its fixed buffers
//! and one decoder window:
//!
//! - header: bad magic, unknown version or codec, a reserved byte set, a window outside
//!   [`MIN_WINDOW_LOG`]..=[`MAX_WINDOW_LOG`] ([`MAX_ZSTD_WINDOW_LOG`] for zstd), sizes over
//!   [`MAX_IMAGE_SIZE`] / [`MAX_BODY_SIZE`], a header CRC mismatch;
//! - entries: an overlong varint, a seek that leaves the old image, an add reading past its
//!   end, an entry writing past `new_size`, an entry that produces nothing (so a small patch
//!   cannot make the applier spin);
//! - stream: a codec error (including a zstd frame asking for a window over the header's),
//!   the stream ending before `new_size` bytes ([`ApplyError::Truncated`]), more decompressed
//!   data after them or patch bytes past `body_len` ([`ApplyError::TrailingData`]);
//! - the end: the SHA-256 of what was emitted differs from the header's
//!   ([`ApplyError::NewHashMismatch`]). A flipped byte that still decodes is caught here, so
//!   the caller must not use (switch to) the written image before [`Step::Done`].
//!
//! The applier does not hash the old image: its reads are random and partial. The caller
//! checks its base (size and SHA-256, compared with [`Header::old_sha256`] and with the signed
//! manifest) once [`Step::Header`] has shown the header, before the first [`Step::ReadOld`].
//! A wrong base that slipped through still ends in [`ApplyError::NewHashMismatch`].
//!
//! # Memory
//!
//! Beyond the caller's I/O buffers the applier holds [`Applier::BUFFERS`] bytes of its own
//! (patch input, decompressed data, computed output) plus the decoder: for xz the LZMA2
//! dictionary (`2^window_log`, fixed by the header, not by the stream) and about 30 KiB of
//! state; for zstd the window (the decoder refuses a frame that asks for more than
//! `2^window_log`) plus two output blocks, one input block and its tables.
//! [`Applier::codec_memory`] reports the codec's share. At the largest windows (xz 512 KiB,
//! zstd 256 KiB) the total stays under 1 MiB; `crates/myriad-ota/examples/delta_bench.rs`
//! measures the process's malloc peak while applying.

mod apply;
mod codec;
mod container;
#[cfg(feature = "diff")]
mod diff;

pub use apply::{Applier, ApplyError, Step};
pub use container::{Codec, HEADER_LEN, Header, HeaderError, MAGIC, VERSION};
#[cfg(feature = "diff")]
pub use diff::{DiffError, DiffOptions, Patch, diff};

/// Largest old or new image a patch may describe (bytes): 4 GiB, the limit of the differ's
/// suffix array.
pub const MAX_IMAGE_SIZE: u64 = 1 << 32;
/// Largest compressed body a header may announce (bytes): twice [`MAX_IMAGE_SIZE`], room for
/// an incompressible image plus codec framing; a sanity bound, the applier streams the body.
pub const MAX_BODY_SIZE: u64 = 2 * MAX_IMAGE_SIZE;
/// Smallest decoder window (`2^12` = 4 KiB, LZMA2's smallest dictionary).
pub const MIN_WINDOW_LOG: u8 = 12;
/// Largest decoder window an xz patch may ask for: `2^19` = 512 KiB (the LZMA2 dictionary),
/// which keeps the applier near 600 KiB in all.
pub const MAX_WINDOW_LOG: u8 = 19;
/// Largest decoder window a zstd patch may ask for: `2^18` = 256 KiB. zstd's streaming decoder
/// holds the window plus two blocks of output and one block of input (128 KiB each) and its
/// tables: about 1,010 KiB at `2^19`, about 750 KiB here.
pub const MAX_ZSTD_WINDOW_LOG: u8 = 18;
