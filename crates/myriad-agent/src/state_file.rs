//! The boot state on disk: two alternating files with a sequence number (like RAUC's or
//! U-Boot's redundant environment), each written atomically.
//!
//! A save writes the state with the next sequence number to `state.tmp`, fsyncs it, renames
//! it over `state.{seq % 2}` and fsyncs the directory. The other file keeps the previous
//! state, so a torn or damaged newest file leaves the one before. A load reads both and keeps
//! the valid one with the highest sequence number; a damaged file is a [`StateFileError`]
//! naming it (reported alongside the state that was loaded), never a panic.
//!
//! # Format (version 1)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MYRAGSTA` |
//! | 8 | 4 | format version, `1` (u32 LE) |
//! | 12 | 8 | sequence number (u64 LE) |
//! | 20 | 4 | payload length `n` (u32 LE), at most [`MAX_STATE_FILE`] in all |
//! | 24 | n | the [`BootState`] as JSON |
//! | 24+n | 32 | SHA-256 of bytes `0..24+n` |

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::boot::BootState;
use crate::fs::Fs;

/// Largest state file read or written (bytes).
pub const MAX_STATE_FILE: usize = 16 * 1024;
/// The file magic.
pub const MAGIC: [u8; 8] = *b"MYRAGSTA";
/// The format version written.
pub const VERSION: u32 = 1;
const HEAD: usize = 24;
const SUM: usize = 32;

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// An I/O error on the file.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is damaged (short, bad magic, version, length, checksum or JSON).
    #[error("state file {path} is damaged: {what}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Every state file present is damaged.
    #[error("no valid state file in {dir}: {errors}")]
    NoValidState {
        /// The state directory.
        dir: PathBuf,
        /// The errors, joined.
        errors: String,
    },
    /// The state encodes to more than [`MAX_STATE_FILE`] bytes.
    #[error("state of {0} bytes, at most {MAX_STATE_FILE}")]
    TooLarge(usize),
}

/// A loaded state.
#[derive(Debug)]
pub struct Loaded {
    /// The newest valid state.
    pub state: BootState,
    /// Its sequence number.
    pub seq: u64,
    /// Files that were present but damaged (the caller logs them).
    pub damaged: Vec<StateFileError>,
}

/// The two state files in a directory.
#[derive(Debug, Clone)]
pub struct StateFiles {
    dir: PathBuf,
    seq: u64,
}

impl StateFiles {
    /// The state files in `dir` (which must exist); nothing is read yet.
    pub fn new(dir: &Path) -> StateFiles {
        StateFiles {
            dir: dir.to_path_buf(),
            seq: 0,
        }
    }

    /// The path of file `i` (0 or 1).
    pub fn path(&self, i: u64) -> PathBuf {
        self.dir.join(format!("state.{}", i % 2))
    }

    /// Loads the newest valid state: `Ok(None)` when neither file exists (first start).
    pub fn load(&mut self, fs: &dyn Fs) -> Result<Option<Loaded>, StateFileError> {
        let mut best: Option<(u64, BootState)> = None;
        let mut damaged = Vec::new();
        for i in 0..2 {
            let path = self.path(i);
            let bytes = match fs.read_file(&path, MAX_STATE_FILE as u64) {
                Ok(None) => continue,
                Ok(Some(b)) => b,
                Err(source) => {
                    damaged.push(StateFileError::Io { path, source });
                    continue;
                }
            };
            match decode(&bytes) {
                Ok((seq, state)) => {
                    if best.as_ref().is_none_or(|(s, _)| seq > *s) {
                        best = Some((seq, state));
                    }
                }
                Err(what) => damaged.push(StateFileError::Damaged { path, what }),
            }
        }
        match best {
            Some((seq, state)) => {
                self.seq = seq;
                Ok(Some(Loaded {
                    state,
                    seq,
                    damaged,
                }))
            }
            None if damaged.is_empty() => Ok(None),
            None => Err(StateFileError::NoValidState {
                dir: self.dir.clone(),
                errors: damaged
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    /// Saves `state` with the next sequence number over the older file.
    pub fn save(&mut self, fs: &dyn Fs, state: &BootState) -> Result<(), StateFileError> {
        let seq = self.seq + 1;
        let bytes = encode(seq, state)?;
        let tmp = self.dir.join("state.tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateFileError::Io { path, source }
        };
        fs.write_synced(&tmp, &bytes).map_err(io(&tmp))?;
        let dst = self.path(seq);
        fs.rename(&tmp, &dst).map_err(io(&dst))?;
        fs.sync_dir(&self.dir).map_err(io(&self.dir))?;
        self.seq = seq;
        Ok(())
    }
}

/// Encodes one state file.
pub fn encode(seq: u64, state: &BootState) -> Result<Vec<u8>, StateFileError> {
    let json = serde_json::to_vec(state).map_err(|e| StateFileError::Damaged {
        path: PathBuf::new(),
        what: e.to_string(),
    })?;
    let total = HEAD + json.len() + SUM;
    if total > MAX_STATE_FILE {
        return Err(StateFileError::TooLarge(total));
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Decodes one state file: its sequence number and state, or what is wrong with it.
pub fn decode(b: &[u8]) -> Result<(u64, BootState), String> {
    if b.len() > MAX_STATE_FILE {
        return Err(format!("{} bytes, at most {MAX_STATE_FILE}", b.len()));
    }
    if b.len() < HEAD + SUM {
        return Err(format!("{} bytes, too short", b.len()));
    }
    if b[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let version = u32_at(8);
    if version != VERSION {
        return Err(format!("format version {version}, expected {VERSION}"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&b[12..20]);
    let seq = u64::from_le_bytes(seq);
    let n = u32_at(20) as usize;
    if HEAD + n + SUM != b.len() {
        return Err(format!("payload length {n} does not match the file's"));
    }
    let sum = Sha256::digest(&b[..HEAD + n]);
    if sum.as_slice() != &b[HEAD + n..] {
        return Err("checksum mismatch".into());
    }
    let state = serde_json::from_slice(&b[HEAD..HEAD + n]).map_err(|e| format!("JSON: {e}"))?;
    Ok((seq, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{Image, Slot};
    use crate::fs::RealFs;

    fn state(v: &str) -> BootState {
        BootState::provisioned(
            Slot::A,
            Image {
                version: v.into(),
                size: 1,
                sha256: [7; 32],
            },
            2,
        )
    }

    #[test]
    fn alternates_and_falls_back_to_the_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = StateFiles::new(dir.path());
        assert!(f.load(&RealFs).unwrap().is_none());
        f.save(&RealFs, &state("1")).unwrap();
        f.save(&RealFs, &state("2")).unwrap();
        f.save(&RealFs, &state("3")).unwrap();
        let mut g = StateFiles::new(dir.path());
        let l = g.load(&RealFs).unwrap().unwrap();
        assert_eq!((l.seq, l.state.image.version.as_str()), (3, "3"));
        assert!(l.damaged.is_empty());
        // Flip a byte of the newest (seq 3 -> state.1): the older one (seq 2) is loaded and
        // the damaged one named.
        let p = dir.path().join("state.1");
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let l = g.load(&RealFs).unwrap().unwrap();
        assert_eq!((l.seq, l.state.image.version.as_str()), (2, "2"));
        assert_eq!(l.damaged.len(), 1);
        assert!(
            l.damaged[0].to_string().contains("state.1"),
            "{}",
            l.damaged[0]
        );
        // The next save overwrites the damaged one, not the good one.
        g.save(&RealFs, &state("4")).unwrap();
        let l = StateFiles::new(dir.path()).load(&RealFs).unwrap().unwrap();
        assert_eq!((l.seq, l.state.image.version.as_str()), (3, "4"));
        // Both damaged (one truncated, one garbage): an error naming the files.
        std::fs::write(dir.path().join("state.0"), b"MYRAGSTA").unwrap();
        std::fs::write(dir.path().join("state.1"), vec![0u8; 100]).unwrap();
        let e = StateFiles::new(dir.path()).load(&RealFs).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("state.0") && msg.contains("state.1"), "{msg}");
    }

    #[test]
    fn every_truncation_and_byte_flip_is_refused() {
        let b = encode(5, &state("x")).unwrap();
        assert_eq!(decode(&b).unwrap().0, 5);
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(decode(&c).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn size_limit_one_past() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.0");
        std::fs::write(&p, vec![0u8; MAX_STATE_FILE + 1]).unwrap();
        let e = StateFiles::new(dir.path()).load(&RealFs).unwrap_err();
        assert!(e.to_string().contains("state.0"), "{e}");
        let mut big = vec![0u8; MAX_STATE_FILE + 1];
        big[..8].copy_from_slice(&MAGIC);
        assert!(decode(&big).unwrap_err().contains("at most"));
        // A state whose encoding is one byte over the limit is refused on save.
        let mut s = state("");
        let base = encode(1, &s).unwrap().len();
        s.image.version = "v".repeat(MAX_STATE_FILE - base + 1);
        assert!(
            matches!(encode(1, &s), Err(StateFileError::TooLarge(n)) if n == MAX_STATE_FILE + 1)
        );
        s.image.version.pop();
        assert_eq!(encode(1, &s).unwrap().len(), MAX_STATE_FILE);
    }
}
