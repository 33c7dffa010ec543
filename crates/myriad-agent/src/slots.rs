//! Slot I/O: hashing a slot's image, and writing the inactive slot from a full image or a
//! delta patch (driving [`myriad_ota::delta::Applier`]: the old image is the active slot read
//! at random offsets, the new one is written sequentially), hashing what is written.
//!
//! These functions only move bytes; the checks around them (manifest, base, source hashes,
//! the state's phases) are in [`crate::agent`].

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use myriad_ota::delta::{Applier, ApplyError, Header, Step};
use sha2::{Digest, Sha256};

use crate::fs::{Fs, SlotFile};

/// Bytes moved per read or write of a slot or a source.
pub const IO_CHUNK: usize = 64 * 1024;

/// Why writing or reading a slot failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// An I/O error on a slot or the source.
    #[error("{path}: {source}")]
    Io {
        /// The slot, or `<source>`.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The full image source ended early or ran long.
    #[error("image source has {got} bytes, the manifest says {want}")]
    SourceLength {
        /// Bytes read (stops at one past `want`).
        got: u64,
        /// The manifest's size.
        want: u64,
    },
    /// The applier refused the patch.
    #[error("patch refused: {0}")]
    Apply(#[from] ApplyError),
    /// The patch header disagrees with the manifest or the base.
    #[error("patch header: {0}")]
    Header(&'static str),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SlotError + '_ {
    move |source| SlotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn source_err(source: io::Error) -> SlotError {
    SlotError::Io {
        path: PathBuf::from("<source>"),
        source,
    }
}

/// SHA-256 of the first `size` bytes of the slot at `path`.
pub fn hash_slot(fs: &dyn Fs, path: &Path, size: u64) -> Result<[u8; 32], SlotError> {
    let mut f = fs.open_slot(path, false).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(IO_CHUNK as u64) as usize;
        f.read_exact_at(&mut buf[..n], at).map_err(io_err(path))?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize().into())
}

/// SHA-256 and length of a source, reading at most `limit + 1` bytes.
pub fn hash_source(src: &mut dyn Read, limit: u64) -> Result<([u8; 32], u64), SlotError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut total = 0u64;
    let mut src = src.take(limit + 1);
    loop {
        let n = src.read(&mut buf).map_err(source_err)?;
        if n == 0 {
            return Ok((h.finalize().into(), total));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// Sequential writer into a slot: buffers [`IO_CHUNK`] bytes, hashes everything written.
struct SlotWriter<'a> {
    file: Box<dyn SlotFile>,
    path: &'a Path,
    buf: Vec<u8>,
    at: u64,
    hash: Sha256,
}

impl SlotWriter<'_> {
    fn write(&mut self, mut data: &[u8]) -> Result<(), SlotError> {
        while !data.is_empty() {
            let n = (IO_CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == IO_CHUNK {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SlotError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buf, self.at)
            .map_err(io_err(self.path))?;
        self.hash.update(&self.buf);
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Flushes, fsyncs; the SHA-256 and length of everything written.
    fn finish(mut self) -> Result<([u8; 32], u64), SlotError> {
        self.flush()?;
        self.file.sync().map_err(io_err(self.path))?;
        Ok((self.hash.finalize().into(), self.at))
    }
}

fn writer<'a>(fs: &dyn Fs, path: &'a Path) -> Result<SlotWriter<'a>, SlotError> {
    Ok(SlotWriter {
        file: fs.open_slot(path, true).map_err(io_err(path))?,
        path,
        buf: Vec::with_capacity(IO_CHUNK),
        at: 0,
        hash: Sha256::new(),
    })
}

/// Copies exactly `size` bytes of a full image from `src` into the slot at `dst`, then
/// fsyncs; returns the SHA-256 of what was written. A source shorter or longer than `size`
/// is refused (a longer one after `size` bytes were written).
pub fn write_full(
    fs: &dyn Fs,
    src: &mut dyn Read,
    dst: &Path,
    size: u64,
) -> Result<[u8; 32], SlotError> {
    let mut w = writer(fs, dst)?;
    let mut buf = vec![0u8; IO_CHUNK];
    let mut src = src.take(size + 1);
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(source_err)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > size {
            return Err(SlotError::SourceLength {
                got: total,
                want: size,
            });
        }
        w.write(&buf[..n])?;
    }
    if total != size {
        return Err(SlotError::SourceLength {
            got: total,
            want: size,
        });
    }
    Ok(w.finish()?.0)
}

/// What a patch's header must say.
#[derive(Debug, Clone)]
pub struct DeltaExpect {
    /// The base image's size (the active slot's image).
    pub old_size: u64,
    /// The base's SHA-256.
    pub old_sha256: [u8; 32],
    /// The new image's size (the manifest's).
    pub new_size: u64,
    /// The new image's SHA-256 (the manifest's target).
    pub new_sha256: [u8; 32],
}

fn check_header(h: &Header, want: &DeltaExpect) -> Result<(), SlotError> {
    if h.old_size != want.old_size || h.old_sha256 != want.old_sha256 {
        return Err(SlotError::Header("base differs from the active image"));
    }
    if h.new_size != want.new_size || h.new_sha256 != want.new_sha256 {
        return Err(SlotError::Header("target differs from the manifest"));
    }
    Ok(())
}

/// Applies the patch read from `src` to the image in the slot at `old` (read at the offsets
/// the applier asks), writing the new image into the slot at `dst`, then fsyncs; returns the
/// SHA-256 of what was written. The header is checked against `want` before the slot is
/// opened for writing.
pub fn write_delta(
    fs: &dyn Fs,
    src: &mut dyn Read,
    old: &Path,
    dst: &Path,
    want: &DeltaExpect,
) -> Result<[u8; 32], SlotError> {
    let mut old_file = fs.open_slot(old, false).map_err(io_err(old))?;
    let mut w: Option<SlotWriter<'_>> = None;
    let mut applier = Applier::new();
    let mut inbuf = vec![0u8; IO_CHUNK];
    let (mut in_start, mut in_end) = (0usize, 0usize);
    let mut eof = false;
    let mut oldbuf = vec![0u8; IO_CHUNK];
    loop {
        match applier.poll()? {
            Step::Header(h) => {
                check_header(h, want)?;
                w = Some(writer(fs, dst)?);
            }
            Step::NeedPatch => {
                if in_start == in_end && !eof {
                    in_start = 0;
                    in_end = src.read(&mut inbuf).map_err(source_err)?;
                    eof = in_end == 0;
                }
                if in_start == in_end {
                    applier.finish_patch();
                } else {
                    in_start += applier.push_patch(&inbuf[in_start..in_end])?;
                }
            }
            Step::ReadOld { offset, len } => {
                let Some(buf) = oldbuf.get_mut(..len) else {
                    return Err(SlotError::Header("old-image read over 64 KiB"));
                };
                old_file.read_exact_at(buf, offset).map_err(io_err(old))?;
                applier.provide_old(buf)?;
            }
            Step::Write(bytes) => match w.as_mut() {
                Some(w) => w.write(bytes)?,
                None => return Err(SlotError::Header("data before the header")),
            },
            Step::Done => break,
        }
    }
    match w {
        Some(w) => Ok(w.finish()?.0),
        None => Err(SlotError::Header("no header")),
    }
}
