//! The store-and-forward telemetry log: what the application handed over while the broker was
//! unreachable (or not yet acknowledged), on disk until the platform's PUBACK.
//!
//! Sans-IO in the sense of the other cores: no clock, no threads; every file operation goes
//! through [`LogFs`], so tests cut the power after any of them ([`crate::memfs::MemFs`]).
//!
//! # On disk
//!
//! A directory of append-only segment files named by their first sequence number
//! (`{first_seq:016x}.seg`), and `spool.meta`, the ack cursor and the drop counters.
//!
//! | what | layout |
//! |---|---|
//! | segment header (24 bytes) | magic `MYRSPOOL`, format version `1` (u32 LE), first sequence number (u64 LE), CRC-32 of the 20 bytes before it |
//! | record frame (20 bytes + payload) | payload length (u32 LE), CRC-32 of the other 16 header bytes and the payload, sequence number (u64 LE), point count (u32 LE), payload |
//! | `spool.meta` (40 bytes) | magic `MYRSPMET`, version `1`, acked sequence number, dropped records, dropped points (u64 LE each), CRC-32 of the 36 bytes before it; replaced by temp file + fsync + rename + directory fsync |
//!
//! Sequence numbers start at 1, grow by one per record and are never reused for a record
//! that was acknowledged to the application (an append returned `Ok`), unless `spool.meta`
//! is damaged while no segment is left (they start again at 1; nothing is lost, the platform
//! does not see them). The pace of the replay after a reconnect is [`crate::replay`]'s.
//!
//! # Guarantees
//!
//! - [`Spool::append`] / [`Spool::append_batch`] return once the records are durable (written
//!   and fsynced; a new segment's name is made durable with a directory fsync before any
//!   record goes into it). An append that returns an error left nothing visible in this
//!   process, but after a crash its records may or may not be there (as with any fsync).
//! - [`Spool::peek`] reads from the oldest unacknowledged record, in order;
//!   [`Spool::ack`] persists the cursor and deletes fully acknowledged segments. After a kill
//!   -9 at any point, every record appended (and returned) and not acknowledged is still
//!   there, in order; at most the records peeked and not yet acknowledged are sent again (the
//!   telemetry store drops a point whose series already holds its timestamp).
//! - Opening never panics on any bytes on disk: a segment is read up to its first bad frame
//!   (short, too long, checksum, sequence out of order) and cut there ([`OpenReport`] counts the
//!   segments cut and the bytes); a segment without a valid header or record is removed; a
//!   damaged `spool.meta` counts as absent (so acknowledged records still on disk are sent
//!   again, never lost).
//! - Over the size cap, whole oldest segments are dropped (their unacknowledged records and
//!   points are counted in [`SpoolStats::dropped_records`] / `dropped_points`, persisted in
//!   `spool.meta` before the segment is removed), so at most one segment's worth more than
//!   needed is dropped.
//!
//! # Example
//!
//! ```
//! use myriad_agent::fs::RealFs;
//! use myriad_agent::spool::{MetricValue, Point, Spool, SpoolConfig};
//!
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path();
//! let mut spool = Spool::open(RealFs, dir, SpoolConfig::default())?;
//! // The application hands over points while the broker is unreachable: to disk.
//! let seqs = spool.append_points(&[Point {
//!     ts_ms: 1_733_350_000_000,
//!     metrics: vec![("temp".into(), MetricValue::F64(20.5))],
//! }])?;
//! // Connected again: the oldest records go out; each is acknowledged after its PUBACK.
//! let batch = spool.peek(16, 256 * 1024)?;
//! assert_eq!(batch[0].seq, *seqs.start());
//! assert_eq!(batch[0].payload, br#"{"points":[{"ts":1733350000000,"temp":20.5}]}"#);
//! // ... publish each payload on devices/{id}/telemetry at QoS 1, await the PUBACKs ...
//! spool.ack(batch[batch.len() - 1].seq)?;
//! assert!(spool.is_empty());
//! # Ok::<(), myriad_agent::spool::SpoolError>(())
//! ```
//!
//! # Limits
//!
//! | limit | value | one past |
//! |---|---|---|
//! | record payload | [`SpoolConfig::max_record_bytes`], default and at most [`MAX_RECORD_BYTES`] (256 KiB) | [`SpoolError::RecordTooLarge`], nothing written |
//! | segment file | [`SpoolConfig::segment_bytes`], default 4 MiB, [`MIN_SEGMENT_BYTES`] (4 KiB) ..= [`MAX_SEGMENT_BYTES`] (256 MiB), at least one largest record | a record that does not fit starts a new segment; a config out of range is [`SpoolError::Config`] |
//! | whole spool | [`SpoolConfig::max_total_bytes`], default 64 MiB, 2 segments ..= [`MAX_TOTAL_BYTES`] (1 TiB) | the oldest segments are dropped (counted) |
//! | records in one `append_batch` | [`MAX_BATCH_RECORDS`] (1,024) | [`SpoolError::BatchTooLarge`], nothing written |
//! | records per `peek` | [`MAX_PEEK_RECORDS`] (10,000), and the `max_bytes` given (at least one record is returned) | capped |
//! | points in a [`Point`] batch, metrics in a point, metric name | 1,000; 64; 1 to 128 bytes of `[A-Za-z0-9_.:-]`, not `ts` (the telemetry store's limits) | [`PointError`]; [`encode_batches`] / [`Spool::append_points`] split larger sets into several records |

use std::collections::VecDeque;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::fs::{AppendFile, LogFs};

/// Largest record payload accepted (bytes); also the largest a segment may hold when read.
pub const MAX_RECORD_BYTES: u32 = 256 * 1024;
/// Smallest segment size.
pub const MIN_SEGMENT_BYTES: u64 = 4 * 1024;
/// Largest segment size.
pub const MAX_SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
/// Largest total size cap.
pub const MAX_TOTAL_BYTES: u64 = 1 << 40;
/// Most records in one [`Spool::append_batch`].
pub const MAX_BATCH_RECORDS: usize = 1024;
/// Most records one [`Spool::peek`] returns.
pub const MAX_PEEK_RECORDS: usize = 10_000;
/// Segment header size (bytes).
pub const SEGMENT_HEADER: u64 = 24;
/// Record frame header size (bytes).
pub const FRAME_HEADER: u64 = 20;
/// Segment file magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MYRSPOOL";
/// Meta file magic.
pub const META_MAGIC: [u8; 8] = *b"MYRSPMET";
const FORMAT_VERSION: u32 = 1;
const META_LEN: usize = 40;
const META: &str = "spool.meta";
const META_TMP: &str = "spool.meta.tmp";

/// The spool's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The size cap of all segment files together (bytes); default 64 MiB, at least two
    /// segments, at most [`MAX_TOTAL_BYTES`].
    pub max_total_bytes: u64,
    /// A segment file's size (bytes); default 4 MiB, [`MIN_SEGMENT_BYTES`] ..=
    /// [`MAX_SEGMENT_BYTES`], and room for one largest record.
    pub segment_bytes: u64,
    /// The largest record payload accepted (bytes); default and at most
    /// [`MAX_RECORD_BYTES`], at least 1.
    pub max_record_bytes: u32,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_total_bytes: 64 * 1024 * 1024,
            segment_bytes: 4 * 1024 * 1024,
            max_record_bytes: MAX_RECORD_BYTES,
        }
    }
}

impl SpoolConfig {
    /// Checks the bounds; the error names the field.
    pub fn validate(&self) -> Result<(), SpoolError> {
        let bad = |what: String| Err(SpoolError::Config(what));
        if self.max_record_bytes == 0 || self.max_record_bytes > MAX_RECORD_BYTES {
            return bad(format!(
                "max_record_bytes {} not in 1..={MAX_RECORD_BYTES}",
                self.max_record_bytes
            ));
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(format!(
                "segment_bytes {} not in {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}",
                self.segment_bytes
            ));
        }
        let need = SEGMENT_HEADER + FRAME_HEADER + u64::from(self.max_record_bytes);
        if self.segment_bytes < need {
            return bad(format!(
                "segment_bytes {} cannot hold a record of max_record_bytes {} (needs {need})",
                self.segment_bytes, self.max_record_bytes
            ));
        }
        if self.max_total_bytes < 2 * self.segment_bytes || self.max_total_bytes > MAX_TOTAL_BYTES {
            return bad(format!(
                "max_total_bytes {} not in 2 * segment_bytes ({}) ..={MAX_TOTAL_BYTES}",
                self.max_total_bytes,
                2 * self.segment_bytes
            ));
        }
        Ok(())
    }
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The configuration is out of bounds.
    #[error("spool config: {0}")]
    Config(String),
    /// A record larger than [`SpoolConfig::max_record_bytes`].
    #[error("record of {len} bytes, at most {max}")]
    RecordTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// More than [`MAX_BATCH_RECORDS`] records in one batch.
    #[error("batch of {0} records, at most {MAX_BATCH_RECORDS}")]
    BatchTooLarge(usize),
    /// An acknowledgement past the last record appended.
    #[error("ack of sequence number {seq}, the last appended is {last}")]
    AckBeyondEnd {
        /// The sequence number acknowledged.
        seq: u64,
        /// The last one appended.
        last: u64,
    },
    /// A record read back no longer matches its checksum (damaged since the spool was
    /// opened; reopening cuts the segment there).
    #[error("spool segment {path} damaged at offset {offset}")]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// Where.
        offset: u64,
    },
    /// A point batch breaks the telemetry rules.
    #[error(transparent)]
    Point(#[from] PointError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`Spool::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segments cut at a torn or damaged frame.
    pub segments_cut: u64,
    /// Bytes cut off those segments (and of segment files removed as unreadable).
    pub bytes_cut: u64,
    /// Segment files removed because their header was bad, they held no valid record, or they
    /// overlapped an earlier segment.
    pub segments_discarded: u64,
    /// Whether `spool.meta` was present but damaged (read as absent).
    pub meta_damaged: bool,
}

/// Counters and sizes, for the agent's status and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// The highest sequence number acknowledged (or dropped).
    pub acked: u64,
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// Records appended and neither acknowledged nor dropped.
    pub pending_records: u64,
    /// Bytes of all segment files.
    pub total_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Records dropped over the size cap, since the spool was created (persisted).
    pub dropped_records: u64,
    /// Their points.
    pub dropped_points: u64,
}

/// One record read for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    /// Its sequence number (acknowledge up to it with [`Spool::ack`]).
    pub seq: u64,
    /// The point count given at append.
    pub points: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    first_seq: u64,
    /// One past its last record.
    next_seq: u64,
    /// Bytes committed (header and whole frames).
    len: u64,
    points: u64,
}

impl Segment {
    fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }
    fn records(&self) -> u64 {
        self.next_seq - self.first_seq
    }
}

/// A read position: record `seq` starts at `offset` of segment `first_seq`.
#[derive(Debug, Clone, Copy)]
struct Pos {
    segment: u64,
    seq: u64,
    offset: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Meta {
    acked: u64,
    dropped_records: u64,
    dropped_points: u64,
}

/// Undo of a failed append: the segments created by it, the back segment as it was.
#[derive(Debug, Default)]
struct Repair {
    remove: Vec<PathBuf>,
    truncate: Option<(PathBuf, u64)>,
}

/// The telemetry spool in a directory.
pub struct Spool<F: LogFs> {
    fs: F,
    dir: PathBuf,
    config: SpoolConfig,
    segments: VecDeque<Segment>,
    /// Open for appending: the back segment (only one created by this process).
    active: Option<Box<dyn AppendFile + Send>>,
    repair: Option<Repair>,
    next_seq: u64,
    meta: Meta,
    total_bytes: u64,
    cursor: Option<Pos>,
    report: OpenReport,
}

impl<F: LogFs> std::fmt::Debug for Spool<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_seq.to_le_bytes());
    let sum = crc(&[&h[..20]]);
    h[20..].copy_from_slice(&sum.to_le_bytes());
    h
}

fn encode_frame(out: &mut Vec<u8>, seq: u64, points: u32, payload: &[u8]) {
    let mut head = [0u8; FRAME_HEADER as usize];
    head[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    head[8..16].copy_from_slice(&seq.to_le_bytes());
    head[16..20].copy_from_slice(&points.to_le_bytes());
    let sum = crc(&[&head[..4], &head[8..20], payload]);
    head[4..8].copy_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
}

fn encode_meta(m: &Meta) -> [u8; META_LEN] {
    let mut b = [0u8; META_LEN];
    b[..8].copy_from_slice(&META_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&m.acked.to_le_bytes());
    b[20..28].copy_from_slice(&m.dropped_records.to_le_bytes());
    b[28..36].copy_from_slice(&m.dropped_points.to_le_bytes());
    let sum = crc(&[&b[..36]]);
    b[36..].copy_from_slice(&sum.to_le_bytes());
    b
}

fn decode_meta(b: &[u8]) -> Option<Meta> {
    if b.len() != META_LEN
        || b[..8] != META_MAGIC
        || u32_at(b, 8) != FORMAT_VERSION
        || u32_at(b, 36) != crc(&[&b[..36]])
    {
        return None;
    }
    Some(Meta {
        acked: u64_at(b, 12),
        dropped_records: u64_at(b, 20),
        dropped_points: u64_at(b, 28),
    })
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:016x}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A frame read from a segment: its header fields and where the next one starts.
struct Frame {
    seq: u64,
    points: u32,
    payload: Vec<u8>,
    end: u64,
}

/// Reads a segment through a 64 KiB window (a scan or a peek costs one read per window, not
/// two per record).
struct Reader<'a, F: LogFs> {
    fs: &'a F,
    path: PathBuf,
    start: u64,
    buf: Vec<u8>,
}

const WINDOW: usize = 64 * 1024;

impl<'a, F: LogFs> Reader<'a, F> {
    fn new(fs: &'a F, path: PathBuf) -> Self {
        Reader {
            fs,
            path,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// Fills `out` from `offset`: `false` when the file ends first.
    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<bool, SpoolError> {
        let end = offset + out.len() as u64;
        if offset >= self.start && end <= self.start + self.buf.len() as u64 {
            let at = (offset - self.start) as usize;
            out.copy_from_slice(&self.buf[at..at + out.len()]);
            return Ok(true);
        }
        if out.len() >= WINDOW {
            let n = self
                .fs
                .read_at(&self.path, offset, out)
                .map_err(io_err(&self.path))?;
            return Ok(n == out.len());
        }
        self.buf.resize(WINDOW, 0);
        let n = self
            .fs
            .read_at(&self.path, offset, &mut self.buf)
            .map_err(io_err(&self.path))?;
        self.buf.truncate(n);
        self.start = offset;
        if n < out.len() {
            return Ok(false);
        }
        out.copy_from_slice(&self.buf[..out.len()]);
        Ok(true)
    }

    /// The frame at `offset` (the file ends at `file_len`): `Ok(None)` when it is short or
    /// bad.
    fn frame(&mut self, offset: u64, file_len: u64) -> Result<Option<Frame>, SpoolError> {
        if offset + FRAME_HEADER > file_len {
            return Ok(None);
        }
        let mut head = [0u8; FRAME_HEADER as usize];
        if !self.read(offset, &mut head)? {
            return Ok(None);
        }
        let len = u32_at(&head, 0);
        if len > MAX_RECORD_BYTES || offset + FRAME_HEADER + u64::from(len) > file_len {
            return Ok(None);
        }
        let mut payload = vec![0u8; len as usize];
        if !self.read(offset + FRAME_HEADER, &mut payload)? {
            return Ok(None);
        }
        if crc(&[&head[..4], &head[8..20], &payload]) != u32_at(&head, 4) {
            return Ok(None);
        }
        Ok(Some(Frame {
            seq: u64_at(&head, 8),
            points: u32_at(&head, 16),
            payload,
            end: offset + FRAME_HEADER + u64::from(len),
        }))
    }
}

impl<F: LogFs> Spool<F> {
    /// Opens (or creates) the spool in `dir`: reads the meta file, scans every segment, cuts
    /// torn tails and removes segments that are unreadable or fully acknowledged.
    pub fn open(fs: F, dir: &Path, config: SpoolConfig) -> Result<Spool<F>, SpoolError> {
        config.validate()?;
        fs.create_dir_all(dir).map_err(io_err(dir))?;
        let mut report = OpenReport::default();
        let meta_path = dir.join(META);
        let meta = match fs.read_file(&meta_path, 4096) {
            Ok(None) => Meta::default(),
            Ok(Some(b)) => decode_meta(&b).unwrap_or_else(|| {
                report.meta_damaged = true;
                Meta::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                report.meta_damaged = true;
                Meta::default()
            }
            Err(e) => return Err(io_err(&meta_path)(e)),
        };
        let mut names: Vec<(u64, String)> = Vec::new();
        let mut changed = false;
        for name in fs.list(dir).map_err(io_err(dir))? {
            if name == META_TMP {
                let p = dir.join(&name);
                fs.remove(&p).map_err(io_err(&p))?;
                changed = true;
            } else if let Some(first) = parse_segment_name(&name) {
                names.push((first, name));
            }
        }
        names.sort();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        for (first_seq, name) in names {
            let path = dir.join(&name);
            let file_len = fs.file_len(&path).map_err(io_err(&path))?;
            let after = segments.back().map_or(0, |s| s.last_seq());
            let seg = if first_seq == 0 || first_seq <= after {
                None
            } else {
                scan(&fs, &path, first_seq, file_len)?
            };
            let keep = match seg {
                Some(s) if s.records() > 0 && s.last_seq() > meta.acked => Some(s),
                Some(s) if s.records() > 0 => None, // fully acknowledged (or dropped)
                Some(s) => {
                    // Header only: a segment started just before a crash.
                    report.bytes_cut += file_len - SEGMENT_HEADER.min(s.len);
                    None
                }
                None => {
                    report.segments_discarded += 1;
                    report.bytes_cut += file_len;
                    None
                }
            };
            match keep {
                Some(s) => {
                    if file_len > s.len {
                        fs.truncate(&path, s.len).map_err(io_err(&path))?;
                        report.segments_cut += 1;
                        report.bytes_cut += file_len - s.len;
                    }
                    segments.push_back(s);
                }
                None => {
                    fs.remove(&path).map_err(io_err(&path))?;
                    changed = true;
                }
            }
        }
        if changed {
            fs.sync_dir(dir).map_err(io_err(dir))?;
        }
        let next_seq = segments
            .back()
            .map_or(1, |s| s.next_seq)
            .max(meta.acked + 1);
        let total_bytes = segments.iter().map(|s| s.len).sum();
        Ok(Spool {
            fs,
            dir: dir.to_path_buf(),
            config,
            segments,
            active: None,
            repair: None,
            next_seq,
            meta,
            total_bytes,
            cursor: None,
            report,
        })
    }

    /// What opening found and repaired.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The configuration.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Counters and sizes.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            acked: self.meta.acked,
            next_seq: self.next_seq,
            pending_records: self.pending_records(),
            total_bytes: self.total_bytes,
            segments: self.segments.len() as u64,
            dropped_records: self.meta.dropped_records,
            dropped_points: self.meta.dropped_points,
        }
    }

    /// Records appended and neither acknowledged nor dropped.
    pub fn pending_records(&self) -> u64 {
        let acked = self.meta.acked;
        self.segments
            .iter()
            .map(|s| s.next_seq - s.first_seq.max(acked + 1).min(s.next_seq))
            .sum()
    }

    /// Whether nothing is waiting to be sent.
    pub fn is_empty(&self) -> bool {
        self.pending_records() == 0
    }

    fn seg_path(&self, first_seq: u64) -> PathBuf {
        self.dir.join(segment_name(first_seq))
    }

    /// Appends one record (a telemetry message payload holding `points` points); returns its
    /// sequence number once it is durable.
    pub fn append(&mut self, payload: &[u8], points: u32) -> Result<u64, SpoolError> {
        Ok(*self.append_batch(&[(payload, points)])?.start())
    }

    /// Appends records with one fsync at the end; returns their sequence numbers once all
    /// are durable. On an error none of them is visible (but see the module docs on crashes).
    pub fn append_batch(
        &mut self,
        records: &[(&[u8], u32)],
    ) -> Result<RangeInclusive<u64>, SpoolError> {
        if records.len() > MAX_BATCH_RECORDS {
            return Err(SpoolError::BatchTooLarge(records.len()));
        }
        for (payload, _) in records {
            if payload.len() > self.config.max_record_bytes as usize {
                return Err(SpoolError::RecordTooLarge {
                    len: payload.len(),
                    max: self.config.max_record_bytes,
                });
            }
        }
        let first = self.next_seq;
        if records.is_empty() {
            // An empty range: start > end.
            return Ok(first..=first - 1);
        }
        self.run_repair()?;
        let back = self.segments.back().copied();
        match self.append_inner(records) {
            Ok(()) => Ok(first..=self.next_seq - 1),
            Err(e) => {
                self.undo(first, back);
                Err(e)
            }
        }
    }

    fn append_inner(&mut self, records: &[(&[u8], u32)]) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        for &(payload, points) in records {
            let frame_len = FRAME_HEADER + payload.len() as u64;
            if let Some(back) = self.segments.back()
                && self.active.is_some()
                && back.len + frame_len > self.config.segment_bytes
            {
                self.flush(&mut buf)?;
                self.sync_active()?;
                self.active = None;
            }
            let mut need = frame_len
                + if self.active.is_none() {
                    SEGMENT_HEADER
                } else {
                    0
                };
            while self.total_bytes + need > self.config.max_total_bytes {
                if self.segments.is_empty() {
                    break; // cannot happen with a valid config
                }
                if self.segments.len() == 1 && self.active.is_some() {
                    self.flush(&mut buf)?;
                    self.sync_active()?;
                    self.active = None;
                    need += SEGMENT_HEADER;
                }
                self.drop_oldest()?;
            }
            if self.active.is_none() {
                self.start_segment()?;
            }
            encode_frame(&mut buf, self.next_seq, points, payload);
            let back = self.segments.back_mut().expect("a segment is active");
            back.len += frame_len;
            back.next_seq += 1;
            back.points += u64::from(points);
            self.next_seq += 1;
            self.total_bytes += frame_len;
        }
        self.flush(&mut buf)?;
        self.sync_active()
    }

    /// Writes the frames buffered for the active segment (accounted already).
    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), SpoolError> {
        if buf.is_empty() {
            return Ok(());
        }
        let path = self.seg_path(self.segments.back().map_or(0, |s| s.first_seq));
        let active = self
            .active
            .as_mut()
            .expect("frames buffered for an active segment");
        active.append(buf).map_err(io_err(&path))?;
        buf.clear();
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), SpoolError> {
        if let Some(active) = self.active.as_mut() {
            let path = self.dir.join(segment_name(
                self.segments.back().map_or(0, |s| s.first_seq),
            ));
            active.sync().map_err(io_err(&path))?;
        }
        Ok(())
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let first_seq = self.next_seq;
        let path = self.seg_path(first_seq);
        self.segments.push_back(Segment {
            first_seq,
            next_seq: first_seq,
            len: 0,
            points: 0,
        });
        // A leftover with this name (from a failed append whose repair did not run): start
        // from nothing.
        if self.fs.file_len(&path).is_ok() {
            self.fs.truncate(&path, 0).map_err(io_err(&path))?;
        }
        let mut f = self.fs.open_append(&path).map_err(io_err(&path))?;
        f.append(&segment_header(first_seq))
            .map_err(io_err(&path))?;
        f.sync().map_err(io_err(&path))?;
        self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.segments.back_mut().expect("just pushed").len = SEGMENT_HEADER;
        self.total_bytes += SEGMENT_HEADER;
        self.active = Some(f);
        Ok(())
    }

    /// Rolls the in-memory state back to before a failed append and notes the files to fix.
    fn undo(&mut self, first: u64, back: Option<Segment>) {
        let mut repair = self.repair.take().unwrap_or_default();
        while let Some(s) = self.segments.back() {
            if s.first_seq < first {
                break;
            }
            repair.remove.push(self.seg_path(s.first_seq));
            self.segments.pop_back();
        }
        if let (Some(old), Some(cur)) = (back, self.segments.back_mut())
            && cur.first_seq == old.first_seq
            && cur.next_seq != old.next_seq
        {
            *cur = old;
            repair.truncate = Some((self.seg_path(old.first_seq), old.len));
        }
        self.next_seq = first;
        self.total_bytes = self.segments.iter().map(|s| s.len).sum();
        self.active = None;
        self.cursor = None;
        self.repair = Some(repair);
    }

    /// Makes the files match the in-memory state after a failed append.
    fn run_repair(&mut self) -> Result<(), SpoolError> {
        let Some(repair) = self.repair.take() else {
            return Ok(());
        };
        let result = (|| {
            if let Some((path, len)) = &repair.truncate {
                self.fs.truncate(path, *len).map_err(io_err(path))?;
            }
            for path in &repair.remove {
                match self.fs.remove(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(path)(e)),
                }
            }
            if !repair.remove.is_empty() {
                self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
            }
            Ok(())
        })();
        if result.is_err() {
            self.repair = Some(repair);
        }
        result
    }

    fn write_meta(&mut self, meta: Meta) -> Result<(), SpoolError> {
        let tmp = self.dir.join(META_TMP);
        let dst = self.dir.join(META);
        self.fs
            .write_synced(&tmp, &encode_meta(&meta))
            .map_err(io_err(&tmp))?;
        self.fs.rename(&tmp, &dst).map_err(io_err(&dst))?;
        self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.meta = meta;
        Ok(())
    }

    /// Drops the oldest segment (not the active one): counts its unacknowledged records
    /// and points, persists the counters with the cursor past it, removes the file.
    fn drop_oldest(&mut self) -> Result<(), SpoolError> {
        let seg = *self.segments.front().expect("a segment to drop");
        let acked = self.meta.acked;
        let (records, points) = if seg.first_seq > acked {
            (seg.records(), seg.points)
        } else if seg.last_seq() > acked {
            let mut points = 0;
            let path = self.seg_path(seg.first_seq);
            let mut reader = Reader::new(&self.fs, path.clone());
            let mut offset = SEGMENT_HEADER;
            let mut seq = seg.first_seq;
            while seq < seg.next_seq {
                let Some(frame) = reader.frame(offset, seg.len)? else {
                    return Err(SpoolError::Damaged { path, offset });
                };
                if frame.seq > acked {
                    points += u64::from(frame.points);
                }
                offset = frame.end;
                seq += 1;
            }
            (seg.last_seq() - acked, points)
        } else {
            (0, 0)
        };
        self.write_meta(Meta {
            acked: acked.max(seg.last_seq()),
            dropped_records: self.meta.dropped_records + records,
            dropped_points: self.meta.dropped_points + points,
        })?;
        self.segments.pop_front();
        self.total_bytes -= seg.len;
        if self.cursor.is_some_and(|c| c.segment == seg.first_seq) {
            self.cursor = None;
        }
        let path = self.seg_path(seg.first_seq);
        // The meta file says these are gone: a file that stays is removed at the next open.
        self.fs.remove(&path).map_err(io_err(&path))
    }

    /// Acknowledges every record up to `up_to` (the platform's PUBACK for them): persists the
    /// cursor, then removes the segments that are fully acknowledged.
    pub fn ack(&mut self, up_to: u64) -> Result<(), SpoolError> {
        if up_to <= self.meta.acked {
            return Ok(());
        }
        if up_to >= self.next_seq {
            return Err(SpoolError::AckBeyondEnd {
                seq: up_to,
                last: self.next_seq - 1,
            });
        }
        self.run_repair()?;
        self.write_meta(Meta {
            acked: up_to,
            ..self.meta
        })?;
        while let Some(seg) = self.segments.front().copied() {
            if seg.last_seq() > up_to {
                break;
            }
            if self.segments.len() == 1 {
                // The active segment: a new one starts at the next append.
                self.active = None;
            }
            self.segments.pop_front();
            self.total_bytes -= seg.len;
            if self.cursor.is_some_and(|c| c.segment == seg.first_seq) {
                self.cursor = None;
            }
            let path = self.seg_path(seg.first_seq);
            self.fs.remove(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// The oldest unacknowledged records, in order: at most `max_records` (and
    /// [`MAX_PEEK_RECORDS`]) and `max_bytes` of payload, but at least one when any is waiting.
    /// Nothing changes: the same records come again until acknowledged.
    pub fn peek(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Peeked>, SpoolError> {
        self.peek_after(self.meta.acked, max_records, max_bytes)
    }

    /// As [`Spool::peek`], from the first record after `after` (to send the next batch
    /// while earlier ones wait for their PUBACK).
    pub fn peek_after(
        &mut self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Peeked>, SpoolError> {
        let max_records = max_records.min(MAX_PEEK_RECORDS);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let want = after.max(self.meta.acked) + 1;
        let Some(mut si) = self.segments.iter().position(|s| s.next_seq > want) else {
            return Ok(out);
        };
        let seg = self.segments[si];
        let mut pos = match self.cursor {
            Some(c) if c.segment == seg.first_seq && c.seq <= want && c.seq >= seg.first_seq => c,
            _ => Pos {
                segment: seg.first_seq,
                seq: seg.first_seq,
                offset: SEGMENT_HEADER,
            },
        };
        let mut reader: Option<Reader<'_, F>> = None;
        while out.len() < max_records {
            let seg = self.segments[si];
            if pos.seq >= seg.next_seq {
                si += 1;
                let Some(next) = self.segments.get(si) else {
                    break;
                };
                pos = Pos {
                    segment: next.first_seq,
                    seq: next.first_seq,
                    offset: SEGMENT_HEADER,
                };
                continue;
            }
            let path = self.seg_path(seg.first_seq);
            if reader.as_ref().is_none_or(|r| r.path != path) {
                reader = Some(Reader::new(&self.fs, path.clone()));
            }
            let r = reader.as_mut().expect("set above");
            let frame = match r.frame(pos.offset, seg.len)? {
                Some(f) if f.seq == pos.seq => f,
                _ => {
                    return Err(SpoolError::Damaged {
                        path,
                        offset: pos.offset,
                    });
                }
            };
            if pos.seq >= want {
                if !out.is_empty() && bytes + frame.payload.len() > max_bytes {
                    break;
                }
                bytes += frame.payload.len();
                out.push(Peeked {
                    seq: frame.seq,
                    points: frame.points,
                    payload: frame.payload,
                });
            }
            pos = Pos {
                segment: seg.first_seq,
                seq: pos.seq + 1,
                offset: frame.end,
            };
            self.cursor = Some(pos);
        }
        Ok(out)
    }

    /// Appends points as batch telemetry messages ([`encode_batches`]: as few records as
    /// [`SpoolConfig::max_record_bytes`] and [`MAX_POINTS`] allow, one fsync); returns
    /// their sequence numbers (empty when there are no points).
    pub fn append_points(&mut self, points: &[Point]) -> Result<RangeInclusive<u64>, SpoolError> {
        let records = encode_batches(points, self.config.max_record_bytes as usize)?;
        let refs: Vec<(&[u8], u32)> = records.iter().map(|(r, n)| (r.as_slice(), *n)).collect();
        self.append_batch(&refs)
    }
}

/// Scans a segment: its state up to the first bad frame, `None` when the header is bad.
fn scan<F: LogFs>(
    fs: &F,
    path: &Path,
    first_seq: u64,
    file_len: u64,
) -> Result<Option<Segment>, SpoolError> {
    let mut reader = Reader::new(fs, path.to_path_buf());
    let mut head = [0u8; SEGMENT_HEADER as usize];
    if file_len < SEGMENT_HEADER || !reader.read(0, &mut head)? || head != segment_header(first_seq)
    {
        return Ok(None);
    }
    let mut seg = Segment {
        first_seq,
        next_seq: first_seq,
        len: SEGMENT_HEADER,
        points: 0,
    };
    while let Some(frame) = reader.frame(seg.len, file_len)? {
        if frame.seq != seg.next_seq {
            break;
        }
        seg.next_seq += 1;
        seg.len = frame.end;
        seg.points += u64::from(frame.points);
    }
    Ok(Some(seg))
}

// ---------------------------------------------------------------------------------------------
// Points

/// Most points in one batch (the telemetry store's limit).
pub const MAX_POINTS: usize = 1000;
/// Most metrics in one point.
pub const MAX_METRICS: usize = 64;
/// Longest metric name (bytes).
pub const MAX_METRIC_NAME: usize = 128;

/// A metric's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricValue {
    /// A number (finite).
    F64(f64),
    /// A boolean.
    Bool(bool),
}

/// One telemetry point: a timestamp and its metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Unix milliseconds.
    pub ts_ms: u64,
    /// The metrics: names (1 to 128 bytes of `[A-Za-z0-9_.:-]`, not `ts`, no repeats) and
    /// values.
    pub metrics: Vec<(String, MetricValue)>,
}

/// Why a point batch cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    /// No points, or more than [`MAX_POINTS`].
    #[error("{0} points in a batch, 1..={MAX_POINTS}")]
    Points(usize),
    /// A point with no metrics or more than [`MAX_METRICS`].
    #[error("point {index}: {count} metrics, 1..={MAX_METRICS}")]
    Metrics {
        /// The point's index.
        index: usize,
        /// Its metric count.
        count: usize,
    },
    /// A metric name that breaks the rules.
    #[error("point {index}: bad metric name {name:?}")]
    Name {
        /// The point's index.
        index: usize,
        /// The name (its first 128 characters).
        name: String,
    },
    /// A metric named twice in one point.
    #[error("point {index}: metric {name:?} twice")]
    Duplicate {
        /// The point's index.
        index: usize,
        /// The name.
        name: String,
    },
    /// One point whose batch message alone is larger than the record limit.
    #[error("point {index}: {bytes} bytes as a message, at most {max}")]
    TooLarge {
        /// The point's index.
        index: usize,
        /// The size of a message holding only it.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A value that is not a finite number.
    #[error("point {index}: metric {name:?} is not finite")]
    NotFinite {
        /// The point's index.
        index: usize,
        /// The name.
        name: String,
    },
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_METRIC_NAME
        && name != "ts"
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'))
}

/// Encodes points as the platform's batch telemetry JSON,
/// `{"points":[{"ts":1733350000000,"temp":20.5,"on":true},..]}`, after checking them
/// against the telemetry store's rules (so the store refuses none of them).
pub fn encode_points(points: &[Point]) -> Result<Vec<u8>, PointError> {
    if points.is_empty() || points.len() > MAX_POINTS {
        return Err(PointError::Points(points.len()));
    }
    let mut out = Vec::with_capacity(16 + points.len() * 32);
    out.extend_from_slice(BATCH_OPEN);
    for (index, p) in points.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        encode_point(index, p, &mut out)?;
    }
    out.extend_from_slice(BATCH_CLOSE);
    Ok(out)
}

const BATCH_OPEN: &[u8] = b"{\"points\":[";
const BATCH_CLOSE: &[u8] = b"]}";

/// Encodes points as batch messages of at most `max_bytes` each (and [`MAX_POINTS`]
/// points), in order: the records [`Spool::append_points`] appends, with their point
/// counts. No points: no records.
pub fn encode_batches(
    points: &[Point],
    max_bytes: usize,
) -> Result<Vec<(Vec<u8>, u32)>, PointError> {
    let frame = BATCH_OPEN.len() + BATCH_CLOSE.len();
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut n = 0u32;
    let mut one = Vec::new();
    for (index, p) in points.iter().enumerate() {
        one.clear();
        encode_point(index, p, &mut one)?;
        if frame + one.len() > max_bytes {
            return Err(PointError::TooLarge {
                index,
                bytes: frame + one.len(),
                max: max_bytes,
            });
        }
        if n > 0
            && (cur.len() + 1 + one.len() + BATCH_CLOSE.len() > max_bytes
                || n as usize == MAX_POINTS)
        {
            cur.extend_from_slice(BATCH_CLOSE);
            out.push((std::mem::take(&mut cur), n));
            n = 0;
        }
        if n == 0 {
            cur.extend_from_slice(BATCH_OPEN);
        } else {
            cur.push(b',');
        }
        cur.extend_from_slice(&one);
        n += 1;
    }
    if n > 0 {
        cur.extend_from_slice(BATCH_CLOSE);
        out.push((cur, n));
    }
    Ok(out)
}

/// One point's JSON object, checked.
fn encode_point(index: usize, p: &Point, out: &mut Vec<u8>) -> Result<(), PointError> {
    if p.metrics.is_empty() || p.metrics.len() > MAX_METRICS {
        return Err(PointError::Metrics {
            index,
            count: p.metrics.len(),
        });
    }
    out.extend_from_slice(format!("{{\"ts\":{}", p.ts_ms).as_bytes());
    for (i, (name, value)) in p.metrics.iter().enumerate() {
        if !valid_name(name) {
            return Err(PointError::Name {
                index,
                name: name.chars().take(MAX_METRIC_NAME).collect(),
            });
        }
        if p.metrics[..i].iter().any(|(n, _)| n == name) {
            return Err(PointError::Duplicate {
                index,
                name: name.clone(),
            });
        }
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            MetricValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            MetricValue::F64(x) => {
                if !x.is_finite() {
                    return Err(PointError::NotFinite {
                        index,
                        name: name.clone(),
                    });
                }
                // serde_json writes the shortest form that reads back to the same f64.
                let text = serde_json::to_string(x).map_err(|_| PointError::NotFinite {
                    index,
                    name: name.clone(),
                })?;
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
