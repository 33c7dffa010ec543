//! The differ: qbsdiff's control entries, re-encoded into the container (format in the
//! [module docs](super)), compressed with zstd and xz, the smaller kept.

use std::io::{Read, Write};

use liblzma::stream::{PRESET_EXTREME, Stream};
use qbsdiff::{Bsdiff, ParallelScheme};
use sha2::{Digest, Sha256};

use super::codec::lzma2_filters;
use super::container::{Codec, HEADER_LEN, Header, MAX_ENTRY_HEAD, put_varint, zigzag};
use super::{MAX_BODY_SIZE, MAX_IMAGE_SIZE, MAX_WINDOW_LOG, MAX_ZSTD_WINDOW_LOG, MIN_WINDOW_LOG};

/// How [`diff()`] compresses.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// log2 of the decoder window ([`MIN_WINDOW_LOG`]..=[`MAX_WINDOW_LOG`]; default the
    /// maximum); zstd uses at most [`MAX_ZSTD_WINDOW_LOG`]. The header carries the chosen
    /// codec's.
    pub window_log: u8,
    /// zstd level (default 19).
    pub zstd_level: i32,
    /// xz preset 0..=9 (default 9; always with liblzma's "extreme" flag; above 9 counts as 9).
    pub xz_preset: u32,
    /// Only this codec (default: both, the smaller kept).
    pub only: Option<Codec>,
    /// Use threads (default): qbsdiff searches 512 KiB chunks of the new image on rayon's
    /// pool, and the zstd encoder runs on a scoped thread beside the xz one. `false` spawns
    /// nothing: one whole search (qbsdiff's `ParallelScheme::Never`), encoders in turn. The
    /// chunked search also made smaller patches on the Debian pair (`libcrypto.so.3`: 189,000
    /// vs 194,192 bytes).
    pub threads: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            window_log: MAX_WINDOW_LOG,
            zstd_level: 19,
            xz_preset: 9,
            only: None,
            threads: true,
        }
    }
}

/// A patch and how it was made.
#[derive(Debug, Clone)]
pub struct Patch {
    /// The patch: header and body.
    pub bytes: Vec<u8>,
    /// Its header.
    pub header: Header,
    /// Entries in the stream.
    pub entries: usize,
    /// Bytes of the uncompressed entry stream.
    pub raw_len: u64,
    /// Body size with zstd (when tried).
    pub zstd_len: Option<u64>,
    /// Body size with xz (when tried).
    pub xz_len: Option<u64>,
}

/// Why no patch was made.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// An image over [`MAX_IMAGE_SIZE`].
    #[error("{which} image of {size} bytes, at most {MAX_IMAGE_SIZE}")]
    TooLarge {
        /// `old` or `new`.
        which: &'static str,
        /// Its size.
        size: u64,
    },
    /// A body over [`MAX_BODY_SIZE`].
    #[error("patch body of {0} bytes, at most {MAX_BODY_SIZE}")]
    BodyTooLarge(u64),
    /// `window_log` outside its range.
    #[error("window_log {0} outside {MIN_WINDOW_LOG}..={MAX_WINDOW_LOG}")]
    Window(u8),
    /// The differ failed or produced controls that do not rebuild `new`.
    #[error("differ: {0}")]
    Differ(String),
    /// An encoder failed.
    #[error("{0} encoder: {1}")]
    Encoder(&'static str, String),
}

/// One entry: seek (applied first), add_len, copy_len.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seek: i64,
    add: u64,
    copy: u64,
}

/// Builds the patch that turns `old` into `new`. CPU-bound, run it off any event loop. With
/// [`DiffOptions::threads`] (the default) it uses rayon's pool and one scoped thread; without,
/// it spawns nothing.
pub fn diff(old: &[u8], new: &[u8], opts: &DiffOptions) -> Result<Patch, DiffError> {
    for (which, image) in [("old", old), ("new", new)] {
        if image.len() as u64 > MAX_IMAGE_SIZE || image.len() > qbsdiff::bsdiff::MAX_LENGTH {
            return Err(DiffError::TooLarge {
                which,
                size: image.len() as u64,
            });
        }
    }
    if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&opts.window_log) {
        return Err(DiffError::Window(opts.window_log));
    }
    let entries = entries(old, &controls(old, new, opts.threads)?, new.len() as u64)?;

    let want = |c: Codec| opts.only.is_none_or(|only| only == c);
    let run_zstd = || -> Result<Vec<u8>, DiffError> {
        let mut z = zstd_encoder(opts)?;
        encode(&mut z, "zstd", &entries, old, new)?;
        z.finish()
            .map_err(|e| DiffError::Encoder("zstd", e.to_string()))
    };
    let run_xz = || -> Result<Vec<u8>, DiffError> {
        let mut x = xz_encoder(opts)?;
        encode(&mut x, "xz", &entries, old, new)?;
        x.finish()
            .map_err(|e| DiffError::Encoder("xz", e.to_string()))
    };
    let (zstd_body, xz_body) = if opts.threads && want(Codec::Zstd) && want(Codec::Xz) {
        // The two encoders side by side, each over its own pass of the entries.
        std::thread::scope(|scope| {
            let zstd = scope.spawn(run_zstd);
            let xz = run_xz()?;
            let zstd = zstd
                .join()
                .map_err(|_| DiffError::Encoder("zstd", "encoder thread panicked".into()))??;
            Ok::<_, DiffError>((Some(zstd), Some(xz)))
        })?
    } else {
        let zstd = want(Codec::Zstd).then(run_zstd).transpose()?;
        let xz = want(Codec::Xz).then(run_xz).transpose()?;
        (zstd, xz)
    };
    let raw_len = raw_len(&entries);
    let zstd_len = zstd_body.as_ref().map(|b| b.len() as u64);
    let xz_len = xz_body.as_ref().map(|b| b.len() as u64);
    let (codec, body) = match (zstd_body, xz_body) {
        (Some(z), Some(x)) if z.len() < x.len() => (Codec::Zstd, z),
        (_, Some(x)) => (Codec::Xz, x),
        (Some(z), None) => (Codec::Zstd, z),
        (None, None) => return Err(DiffError::Encoder("none", "no codec".into())),
    };
    if body.len() as u64 > MAX_BODY_SIZE {
        return Err(DiffError::BodyTooLarge(body.len() as u64));
    }
    let header = Header {
        codec,
        window_log: opts.window_log.min(codec.max_window_log()),
        old_size: old.len() as u64,
        new_size: new.len() as u64,
        body_len: body.len() as u64,
        old_sha256: Sha256::digest(old).into(),
        new_sha256: Sha256::digest(new).into(),
    };
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(&header.encode());
    bytes.extend_from_slice(&body);
    Ok(Patch {
        bytes,
        header,
        entries: entries.len(),
        raw_len,
        zstd_len,
        xz_len,
    })
}

/// Writes the entry stream (heads, diff bytes, extra bytes) to `w`.
fn encode(
    w: &mut impl Write,
    codec: &'static str,
    entries: &[Entry],
    old: &[u8],
    new: &[u8],
) -> Result<(), DiffError> {
    let mut write = |bytes: &[u8]| -> Result<(), DiffError> {
        w.write_all(bytes)
            .map_err(|e| DiffError::Encoder(codec, e.to_string()))
    };
    let (mut spos, mut npos) = (0usize, 0usize);
    let mut head = Vec::with_capacity(MAX_ENTRY_HEAD);
    let mut delta = Vec::with_capacity(64 * 1024);
    for e in entries {
        head.clear();
        put_varint(&mut head, zigzag(e.seek));
        put_varint(&mut head, e.add);
        put_varint(&mut head, e.copy);
        write(&head)?;
        // entries() checked every range against both images.
        spos = (spos as i64 + e.seek) as usize;
        let mut left = e.add as usize;
        while left > 0 {
            let n = left.min(64 * 1024);
            delta.clear();
            delta.extend(
                new[npos..npos + n]
                    .iter()
                    .zip(&old[spos..spos + n])
                    .map(|(n, o)| n.wrapping_sub(*o)),
            );
            write(&delta)?;
            spos += n;
            npos += n;
            left -= n;
        }
        let copy = e.copy as usize;
        write(&new[npos..npos + copy])?;
        npos += copy;
    }
    Ok(())
}

/// Length of the entry stream without encoding it.
fn raw_len(entries: &[Entry]) -> u64 {
    let mut head = Vec::with_capacity(MAX_ENTRY_HEAD);
    entries
        .iter()
        .map(|e| {
            head.clear();
            put_varint(&mut head, zigzag(e.seek));
            put_varint(&mut head, e.add);
            put_varint(&mut head, e.copy);
            head.len() as u64 + e.add + e.copy
        })
        .sum()
}

fn zstd_encoder(opts: &DiffOptions) -> Result<zstd::stream::Encoder<'static, Vec<u8>>, DiffError> {
    use zstd::stream::raw::CParameter;
    let err = |e: std::io::Error| DiffError::Encoder("zstd", e.to_string());
    let mut z = zstd::stream::Encoder::new(Vec::new(), opts.zstd_level).map_err(err)?;
    let window_log = opts.window_log.min(MAX_ZSTD_WINDOW_LOG);
    z.set_parameter(CParameter::WindowLog(u32::from(window_log)))
        .map_err(err)?;
    z.set_parameter(CParameter::ChecksumFlag(false))
        .map_err(err)?;
    Ok(z)
}

fn xz_encoder(opts: &DiffOptions) -> Result<liblzma::write::XzEncoder<Vec<u8>>, DiffError> {
    let filters = lzma2_filters(opts.xz_preset.min(9) | PRESET_EXTREME, opts.window_log)
        .map_err(|e| DiffError::Encoder("xz", e.into()))?;
    let stream =
        Stream::new_raw_encoder(&filters).map_err(|e| DiffError::Encoder("xz", e.to_string()))?;
    Ok(liblzma::write::XzEncoder::new_stream(Vec::new(), stream))
}

/// qbsdiff's controls (add, copy, seek), read back from the control stream of its bsdiff 4
/// output.
fn controls(old: &[u8], new: &[u8], threads: bool) -> Result<Vec<(u64, u64, i64)>, DiffError> {
    let err = |what: &str| DiffError::Differ(what.to_string());
    let mut bsdiff = Vec::new();
    Bsdiff::new(old, new)
        .parallel_scheme(if threads {
            ParallelScheme::Auto
        } else {
            ParallelScheme::Never
        })
        .compression_level(1)
        .compare(&mut bsdiff)
        .map_err(|e| DiffError::Differ(e.to_string()))?;
    // Header: "BSDIFF40", control stream length, diff stream length, new size.
    if bsdiff.len() < 32 || &bsdiff[..8] != b"BSDIFF40" {
        return Err(err("no bsdiff 4 header"));
    }
    let clen = usize::try_from(offtin(&bsdiff[8..16])).map_err(|_| err("control length"))?;
    let ctrl_bz = bsdiff
        .get(32..32usize.saturating_add(clen))
        .ok_or_else(|| err("control length"))?;
    let mut ctrl = Vec::new();
    bzip2::read::BzDecoder::new(ctrl_bz)
        .read_to_end(&mut ctrl)
        .map_err(|e| DiffError::Differ(e.to_string()))?;
    if ctrl.len() % 24 != 0 {
        return Err(err("control stream not a multiple of 24 bytes"));
    }
    ctrl.chunks_exact(24)
        .map(|c| {
            let add = u64::try_from(offtin(&c[0..8])).map_err(|_| err("negative add"))?;
            let copy = u64::try_from(offtin(&c[8..16])).map_err(|_| err("negative copy"))?;
            Ok((add, copy, offtin(&c[16..24])))
        })
        .collect()
}

/// bsdiff's sign-magnitude 64-bit integer.
fn offtin(b: &[u8]) -> i64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[..8]);
    let x = u64::from_le_bytes(v);
    let magnitude = (x & (u64::MAX >> 1)) as i64;
    if x >> 63 == 1 { -magnitude } else { magnitude }
}

/// bsdiff controls (add, copy, seek after) to our entries (seek before, add, copy): adds
/// keep their absolute old offsets, copies without an add join the entry before, empty
/// entries vanish; every range is checked against both images.
fn entries(
    old: &[u8],
    controls: &[(u64, u64, i64)],
    new_len: u64,
) -> Result<Vec<Entry>, DiffError> {
    let bad = || DiffError::Differ("controls leave the images".into());
    let old_len = old.len() as i128;
    let (mut spos, mut cursor, mut produced) = (0i128, 0i128, 0u64);
    let mut out: Vec<Entry> = Vec::with_capacity(controls.len());
    for &(add, copy, seek) in controls {
        if add > 0 {
            if spos < 0 || spos + i128::from(add) > old_len {
                return Err(bad());
            }
            let seek = i64::try_from(spos - cursor).map_err(|_| bad())?;
            out.push(Entry { seek, add, copy });
            cursor = spos + i128::from(add);
        } else if copy > 0 {
            match out.last_mut() {
                Some(last) => last.copy += copy,
                None => out.push(Entry {
                    seek: 0,
                    add: 0,
                    copy,
                }),
            }
        }
        produced = produced
            .checked_add(add)
            .and_then(|p| p.checked_add(copy))
            .ok_or_else(bad)?;
        spos += i128::from(add) + i128::from(seek);
    }
    if produced != new_len {
        return Err(bad());
    }
    Ok(out)
}
