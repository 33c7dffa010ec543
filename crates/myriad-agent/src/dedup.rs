//! The command ids seen recently, persisted, so a command the platform delivers again (a
//! retry, a reconnect, a restart: delivery is at least once, and a resent command keeps its
//! id) is run and answered once.
//!
//! The ids live in memory (a set and their arrival order; the oldest is forgotten past the
//! capacity) and in an append-only log, `commands.log`, each id one checksummed frame fsynced
//! before [`Dedup::insert`] returns. When the log holds twice the capacity it is rewritten
//! with the ids kept (temp file, fsync, rename, directory fsync). Opening reads the log up to
//! its first bad frame and cuts it there; any bytes on disk open (a bad header starts an
//! empty log).
//!
//! Use: on a command, [`Dedup::insert`] its id before running the handler: `Ok(false)` means
//! it was seen already (do not run it again). A crash while the handler runs leaves the
//! command unanswered (at most once; the platform's timeout reports it) rather than run
//! twice.
//!
//! # Example
//!
//! ```
//! use myriad_agent::dedup::{Dedup, DEFAULT_CAPACITY};
//! use myriad_agent::fs::RealFs;
//!
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path();
//! let mut seen = Dedup::open(RealFs, dir, DEFAULT_CAPACITY)?;
//! assert!(seen.insert("cmd-42")?); // new: run the handler, reply
//! assert!(!seen.insert("cmd-42")?); // redelivered: already answered
//! drop(seen);
//! let seen = Dedup::open(RealFs, dir, DEFAULT_CAPACITY)?; // after a restart too
//! assert!(seen.contains("cmd-42"));
//! # Ok::<(), myriad_agent::dedup::DedupError>(())
//! ```
//!
//! # On disk
//!
//! | what | layout |
//! |---|---|
//! | header (12 bytes) | magic `MYRDEDUP`, format version `1` (u32 LE) |
//! | frame (6 bytes + id) | id length (u16 LE, 1..=128), CRC-32 of the id (u32 LE), the id's bytes |
//!
//! # Limits
//!
//! | limit | value | one past |
//! |---|---|---|
//! | command id | 1 ..= [`MAX_ID_BYTES`] (128) bytes | [`DedupError::BadId`], nothing written |
//! | ids remembered | capacity, default [`DEFAULT_CAPACITY`] (1,024), 1 ..= [`MAX_CAPACITY`] (65,536) | the oldest id is forgotten; a capacity out of range is [`DedupError::Capacity`] |
//! | log file | header + 2 x capacity frames before it is rewritten (at most about 17 MiB at the largest capacity) | a longer file is read up to that size and cut |

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use crate::fs::{AppendFile, LogFs};

/// Longest command id (bytes).
pub const MAX_ID_BYTES: usize = 128;
/// Default number of ids remembered.
pub const DEFAULT_CAPACITY: usize = 1024;
/// Largest capacity.
pub const MAX_CAPACITY: usize = 65_536;
/// Log file magic.
pub const MAGIC: [u8; 8] = *b"MYRDEDUP";
const VERSION: u32 = 1;
const HEADER: usize = 12;
const FRAME: usize = 6;
const LOG: &str = "commands.log";
const LOG_TMP: &str = "commands.log.tmp";

/// Why the id set failed.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    /// A file operation failed.
    #[error("command id log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An id that is empty or longer than [`MAX_ID_BYTES`].
    #[error("command id of {0} bytes, 1..={MAX_ID_BYTES}")]
    BadId(usize),
    /// A capacity out of range.
    #[error("capacity {0} not in 1..={MAX_CAPACITY}")]
    Capacity(usize),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DedupError + '_ {
    move |source| DedupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn header() -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

fn frame(id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(id.as_bytes()).to_le_bytes());
    out.extend_from_slice(id.as_bytes());
}

/// Parses a log: the ids in order and the length of the valid prefix (`None`: bad header).
fn parse(b: &[u8]) -> Option<(Vec<String>, usize)> {
    if b.len() < HEADER || b[..HEADER] != header() {
        return None;
    }
    let mut ids = Vec::new();
    let mut at = HEADER;
    while b.len() >= at + FRAME {
        let len = usize::from(u16::from_le_bytes([b[at], b[at + 1]]));
        let sum = u32::from_le_bytes([b[at + 2], b[at + 3], b[at + 4], b[at + 5]]);
        if len == 0 || len > MAX_ID_BYTES || b.len() < at + FRAME + len {
            break;
        }
        let id = &b[at + FRAME..at + FRAME + len];
        if crc32fast::hash(id) != sum {
            break;
        }
        let Ok(id) = std::str::from_utf8(id) else {
            break;
        };
        ids.push(id.to_string());
        at += FRAME + len;
    }
    Some((ids, at))
}

/// The persisted set of recent command ids.
pub struct Dedup<F: LogFs> {
    fs: F,
    dir: PathBuf,
    capacity: usize,
    order: VecDeque<String>,
    set: HashSet<String>,
    log: Option<Box<dyn AppendFile + Send>>,
    /// Bytes of the log known good (the header and whole frames).
    log_len: u64,
    log_frames: usize,
    /// A failed append may have left part of a frame: cut the log back before the next one.
    needs_cut: bool,
    bytes_cut: u64,
}

impl<F: LogFs> std::fmt::Debug for Dedup<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("dir", &self.dir)
            .field("len", &self.order.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<F: LogFs> Dedup<F> {
    /// Opens (or creates) the id log in `dir`, remembering at most `capacity` ids.
    pub fn open(fs: F, dir: &Path, capacity: usize) -> Result<Dedup<F>, DedupError> {
        if !(1..=MAX_CAPACITY).contains(&capacity) {
            return Err(DedupError::Capacity(capacity));
        }
        fs.create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(LOG);
        let tmp = dir.join(LOG_TMP);
        if fs.file_len(&tmp).is_ok() {
            fs.remove(&tmp).map_err(io_err(&tmp))?;
        }
        let max_len = (HEADER + (2 * capacity + 1) * (FRAME + MAX_ID_BYTES)) as u64;
        let (bytes, file_len) = match fs.file_len(&path) {
            Ok(len) => {
                let mut b = vec![0u8; len.min(max_len) as usize];
                let n = fs.read_at(&path, 0, &mut b).map_err(io_err(&path))?;
                b.truncate(n);
                (Some(b), len)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut d = Dedup {
            fs,
            dir: dir.to_path_buf(),
            capacity,
            order: VecDeque::new(),
            set: HashSet::new(),
            log: None,
            log_len: 0,
            log_frames: 0,
            needs_cut: false,
            bytes_cut: 0,
        };
        match bytes.as_deref().and_then(parse) {
            Some((ids, valid)) => {
                d.log_frames = ids.len();
                for id in ids {
                    d.remember(id);
                }
                d.log_len = valid as u64;
                if file_len > d.log_len {
                    d.bytes_cut = file_len - d.log_len;
                    d.fs.truncate(&path, d.log_len).map_err(io_err(&path))?;
                }
            }
            None => {
                // Missing or a bad header: start a fresh log.
                d.bytes_cut = file_len;
                d.rewrite()?;
            }
        }
        Ok(d)
    }

    /// Bytes cut off a torn or damaged log when it was opened.
    pub fn bytes_cut(&self) -> u64 {
        self.bytes_cut
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Whether `id` was seen (and not forgotten yet).
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn remember(&mut self, id: String) {
        if self.set.contains(&id) {
            return;
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Records `id`: `Ok(true)` when it is new (and now durable), `Ok(false)` when it was
    /// seen already (nothing written).
    pub fn insert(&mut self, id: &str) -> Result<bool, DedupError> {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(DedupError::BadId(id.len()));
        }
        if self.contains(id) {
            return Ok(false);
        }
        let path = self.dir.join(LOG);
        if self.needs_cut {
            self.log = None;
            self.fs
                .truncate(&path, self.log_len)
                .map_err(io_err(&path))?;
            self.needs_cut = false;
        }
        if self.log.is_none() {
            self.log = Some(self.fs.open_append(&path).map_err(io_err(&path))?);
        }
        let mut buf = Vec::with_capacity(FRAME + id.len());
        frame(id, &mut buf);
        let log = self.log.as_mut().expect("opened above");
        if let Err(e) = log.append(&buf).and_then(|()| log.sync()) {
            self.needs_cut = true;
            self.log = None;
            return Err(io_err(&path)(e));
        }
        self.log_len += buf.len() as u64;
        self.log_frames += 1;
        self.remember(id.to_string());
        if self.log_frames >= 2 * self.capacity {
            // The id is durable already. A failed rewrite leaves a valid log (the old one or
            // the new one) and is tried again at the next insert.
            let _ = self.rewrite();
        }
        Ok(true)
    }

    /// Rewrites the log with the ids kept.
    fn rewrite(&mut self) -> Result<(), DedupError> {
        let path = self.dir.join(LOG);
        let tmp = self.dir.join(LOG_TMP);
        let mut b = header().to_vec();
        for id in &self.order {
            frame(id, &mut b);
        }
        self.log = None;
        self.fs.write_synced(&tmp, &b).map_err(io_err(&tmp))?;
        self.fs.rename(&tmp, &path).map_err(io_err(&path))?;
        // The name now holds the new log, durable or not: appends go after its end.
        self.log_len = b.len() as u64;
        self.log_frames = self.order.len();
        self.needs_cut = false;
        self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;
    use crate::memfs::MemFs;
    use proptest::prelude::*;

    fn dir() -> &'static Path {
        Path::new("/cmd")
    }

    #[test]
    fn seen_ids_survive_a_reopen_and_the_oldest_are_forgotten() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = Dedup::open(RealFs, tmp.path(), 3).unwrap();
        assert!(d.insert("a").unwrap());
        assert!(!d.insert("a").unwrap());
        assert!(d.insert("b").unwrap());
        drop(d);
        let mut d = Dedup::open(RealFs, tmp.path(), 3).unwrap();
        assert!(d.contains("a") && d.contains("b"));
        assert!(!d.insert("b").unwrap());
        assert!(d.insert("c").unwrap());
        assert!(d.insert("d").unwrap());
        assert!(
            !d.contains("a"),
            "the oldest is forgotten past the capacity"
        );
        assert_eq!(d.len(), 3);
        // Enough inserts to rewrite the log several times; the newest three stay.
        for i in 0..20 {
            d.insert(&format!("id-{i}")).unwrap();
        }
        drop(d);
        let d = Dedup::open(RealFs, tmp.path(), 3).unwrap();
        assert_eq!(d.bytes_cut(), 0);
        let kept: Vec<&str> = d.order.iter().map(String::as_str).collect();
        assert_eq!(kept, ["id-17", "id-18", "id-19"]);
        let len = std::fs::metadata(tmp.path().join(LOG)).unwrap().len();
        assert!(len <= (HEADER + 6 * (FRAME + 5)) as u64, "{len}");
    }

    #[test]
    fn limits_one_past() {
        let fs = MemFs::new(1);
        let mut d = Dedup::open(fs.clone(), dir(), 4).unwrap();
        assert!(d.insert(&"x".repeat(MAX_ID_BYTES)).unwrap());
        assert!(matches!(
            d.insert(&"x".repeat(MAX_ID_BYTES + 1)),
            Err(DedupError::BadId(129))
        ));
        assert!(matches!(d.insert(""), Err(DedupError::BadId(0))));
        assert!(matches!(
            Dedup::open(fs.clone(), dir(), MAX_CAPACITY + 1),
            Err(DedupError::Capacity(_))
        ));
        assert!(matches!(
            Dedup::open(fs.clone(), dir(), 0),
            Err(DedupError::Capacity(0))
        ));
        let d = Dedup::open(fs, dir(), MAX_CAPACITY).unwrap();
        assert!(d.contains(&"x".repeat(MAX_ID_BYTES)));
    }

    #[test]
    fn a_torn_tail_is_cut() {
        let fs = MemFs::new(2);
        let mut d = Dedup::open(fs.clone(), dir(), 10).unwrap();
        d.insert("one").unwrap();
        d.insert("two").unwrap();
        drop(d);
        let p = dir().join(LOG);
        let mut b = fs.contents(&p).unwrap();
        let good = b.len();
        b.extend_from_slice(&[5, 0, 1, 2, 3]);
        fs.put(&p, &b);
        let mut d = Dedup::open(fs.clone(), dir(), 10).unwrap();
        assert_eq!(d.bytes_cut(), 5);
        assert_eq!(fs.contents(&p).unwrap().len(), good);
        assert!(d.insert("three").unwrap());
        drop(d);
        let d = Dedup::open(fs, dir(), 10).unwrap();
        assert!(d.contains("one") && d.contains("two") && d.contains("three"));
    }

    #[test]
    fn a_cut_after_every_operation_keeps_every_confirmed_id() {
        const CAP: usize = 5;
        let mut n = 0;
        loop {
            let fs = MemFs::new(n);
            let mut d = Dedup::open(fs.clone(), dir(), CAP).unwrap();
            fs.cut_after(n);
            let mut confirmed = Vec::new();
            let mut cut = false;
            for i in 0..25 {
                let id = format!("cmd-{i}");
                match d.insert(&id) {
                    Ok(new) => {
                        assert!(new);
                        confirmed.push(id);
                    }
                    Err(_) => {
                        cut = true;
                        break;
                    }
                }
            }
            if !cut {
                break;
            }
            drop(d);
            fs.crash();
            let d = Dedup::open(fs, dir(), CAP).unwrap();
            // The newest CAP - 1 confirmed ids are there (the interrupted one may have
            // pushed one more out).
            for id in confirmed.iter().rev().take(CAP - 1) {
                assert!(d.contains(id), "cut at {n}: {id} lost");
            }
            n += 1;
        }
        assert!(n > 60, "{n} operations");
    }

    proptest! {
        #[test]
        fn any_bytes_open(bytes in proptest::collection::vec(any::<u8>(), 0..400), valid_header in any::<bool>()) {
            let fs = MemFs::new(3);
            let mut b = bytes;
            if valid_header {
                let mut h = header().to_vec();
                h.extend_from_slice(&b);
                b = h;
            }
            fs.put(&dir().join(LOG), &b);
            let mut d = Dedup::open(fs.clone(), dir(), 8).unwrap();
            prop_assert!(d.insert("fresh").unwrap());
            drop(d);
            let d = Dedup::open(fs, dir(), 8).unwrap();
            prop_assert!(d.contains("fresh"));
        }
    }
}
