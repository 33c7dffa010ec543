//! File-backed shell around [`Db`]: WAL segment files and block files in one directory.
//!
//! This is the only module of the crate that does I/O. It is synchronous (plain `std::fs`) and
//! meant to be owned by one writer thread, never called on an async event loop.
//!
//! Layout of the directory:
//!
//! * `wal-{seq:016}.log`: WAL segments, replayed in sequence order at open. Each batch written
//!   by [`FileDb::write`] / [`FileDb::append`] is one `write` to the newest segment, followed by
//!   an `fsync` when the store was opened with `fsync = true`. With `fsync = false` the bytes are
//!   in the OS page cache when the call returns: they survive a killed process, not a power loss.
//! * `block-{partition}-{generation:016}.blk`: sealed blocks ([`crate::block`], version 2),
//!   written atomically (a `.tmp` file written and fsynced, renamed into place, the directory
//!   fsynced), never modified afterwards, and read through a read-only memory map: the page
//!   cache holds their bytes, not the heap, so the memory of the process does not grow with the
//!   data kept.
//!
//! [`FileDb::seal`] writes one new block per partition with head points (only those points:
//! the cost of a seal follows what arrived since the last one, not the partition's size),
//! starts a new segment holding a checkpoint (every series record) and only then deletes the
//! older segments, so a crash at any step leaves either the old segments (replayed again:
//! the same points go into a newer block, winning over the copy) or the new one.
//!
//! Compaction ([`FileDb::compact_step`], planned by [`Db::plan_compaction`]) streams the merge of
//! some blocks of a partition into a `.tmp` file (memory: one series at a time), fsyncs it,
//! renames it over the newest input (it takes that generation), then deletes the other inputs.
//! A crash in between leaves inputs whose points the merged block also holds; queries answer
//! the same and a later compaction merges them again.
//!
//! Retention ([`FileDb::apply_retention`], per metric pattern: [`crate::retention`]): a
//! partition that crossed a retention duration is compacted whole, each series kept, cut to
//! its rollups or left out; partitions nothing keeps have their files unlinked and the
//! directory fsynced. Blocks that a whole-partition merge supersedes (left by a crash) are
//! deleted at open, so no rollup counts a point twice.
//!
//! Recovery ([`FileDb::open`]): leftover `.tmp` files are removed, blocks are mapped and their
//! indexes checked (a block that does not load, or whose name disagrees with its header, is
//! renamed to `.corrupt`, logged and reported, not loaded; version 1 files,
//! `block-{partition}.blk`, are rewritten as version 2), then the segments are replayed; a
//! segment whose tail is torn or corrupt is truncated to its last whole record, the dropped
//! bytes logged and reported. Nothing read from the directory can make it panic.

use crate::block::{BlockBytes, SealedBlock};
use crate::db::{
    BlockKey, CompactError, Compaction, CompactionPlan, CompactionReport, Db, DbConfig, DbError,
};
use crate::engine::{AppendReport, EngineError};
use crate::index::{SeriesId, SeriesKey};
use crate::value::Point;
use crate::wal::WalStop;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a file-backed operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileDbError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database refused a seal or its configuration.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The engine refused a series key or a batch.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileDbError + 'a {
    move |source| FileDbError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A WAL segment whose tail was dropped at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornSegment {
    /// The segment's file name.
    pub file: String,
    /// Bytes kept (the segment was truncated to this length).
    pub kept: usize,
    /// Bytes dropped.
    pub dropped: usize,
    /// Why replay stopped.
    pub stop: Option<WalStop>,
}

/// What [`FileDb::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Blocks loaded.
    pub blocks: usize,
    /// Block files that did not decode (renamed to `.corrupt`), with the error.
    pub bad_blocks: Vec<(String, String)>,
    /// WAL segments replayed.
    pub segments: usize,
    /// Series restored from the WAL.
    pub series: usize,
    /// Points restored into the head.
    pub points: usize,
    /// Segments whose tail was dropped.
    pub torn: Vec<TornSegment>,
}

/// What [`FileDb::apply_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Partitions rewritten by retention (series cut to rollups or left out), ascending.
    pub rewritten: Vec<i64>,
    /// Series (summed over the rewritten partitions) reduced to their rollups.
    pub raw_dropped_series: usize,
    /// Series (summed over the rewritten partitions) left out, their rollups expired.
    pub expired_series: usize,
    /// Partitions dropped whole (block files removed), ascending.
    pub dropped: Vec<i64>,
}

/// A [`Db`] persisted in a directory (see the module docs).
#[derive(Debug)]
pub struct FileDb {
    dir: PathBuf,
    fsync: bool,
    db: Db,
    seq: u64,
    /// Oldest segment still on disk.
    oldest: u64,
    wal: File,
    /// Series records not yet written (flushed with the next batch).
    pending: Vec<u8>,
    /// The compaction under way, written step by step ([`FileDb::compaction_work`]).
    running: Option<Running>,
    /// Sealed blocks held in memory whose file is not written yet (a seal failed to write
    /// them); the next seal writes them before the WAL moves on.
    unpersisted: Vec<BlockKey>,
    /// Partitions whose retention rewrite is due (with the moment to apply it at), oldest first.
    retention_queue: std::collections::VecDeque<(i64, i64)>,
}

/// A compaction being streamed into its `.tmp` file.
#[derive(Debug)]
struct Running {
    compaction: Compaction,
    out: std::io::BufWriter<File>,
    tmp: PathBuf,
}

/// What one [`FileDb::compaction_work`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Nothing to do: no compaction running, queued or due.
    Idle,
    /// Wrote some series of the running compaction.
    Progress,
    /// A compaction finished and its block replaced its inputs.
    Done(CompactionPlan, CompactionReport),
    /// A compaction finished but its inputs were gone meanwhile (retention dropped the
    /// partition); its file was removed.
    Abandoned(CompactionPlan),
}

fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016}.log")
}

fn parse_segment(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

fn block_name(key: BlockKey) -> String {
    format!("block-{}-{:016}.blk", key.partition, key.generation)
}

/// The key a version 2 block file name gives.
fn parse_block_name(name: &str) -> Option<BlockKey> {
    let rest = name.strip_prefix("block-")?.strip_suffix(".blk")?;
    let (p, g) = rest.rsplit_once('-')?;
    Some(BlockKey {
        partition: p.parse().ok()?,
        generation: g.parse().ok()?,
    })
}

/// Whether `name` is a version 1 block file (`block-{partition}.blk`, before compaction).
fn is_v1_block(name: &str) -> bool {
    name.strip_prefix("block-")
        .and_then(|s| s.strip_suffix(".blk"))
        .is_some_and(|s| s.parse::<i64>().is_ok())
}

/// Maps a block file read-only.
fn map_file(path: &Path) -> Result<BlockBytes, FileDbError> {
    let file = File::open(path).map_err(io("open", path))?;
    // SAFETY: block files are written once (to a `.tmp` name, fsynced, renamed into place) and
    // never written again: a compaction or retention rewrite renames a new file over the name
    // (the mapped inode stays intact) and deletions only unlink. The mapping can only change
    // under us if something outside Myriad writes into the data directory.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("map", path))?;
    Ok(Arc::new(map))
}

impl FileDb {
    /// Opens (creating if needed) the store in `dir` and recovers its content.
    pub fn open(
        dir: impl Into<PathBuf>,
        cfg: DbConfig,
        fsync: bool,
    ) -> Result<(Self, OpenReport), FileDbError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let mut db = Db::new(cfg)?;
        let mut report = OpenReport::default();
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io("list", &dir))? {
            let entry = entry.map_err(io("list", &dir))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        let mut segments = Vec::new();
        let mut v1 = Vec::new();
        for name in &names {
            let path = dir.join(name);
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io("remove", &path))?;
            } else if let Some(key) = parse_block_name(name) {
                let loaded = map_file(&path)
                    .and_then(|bytes| Ok(db.load_block_expecting(bytes, Some(key))?));
                match loaded {
                    Ok(_) => report.blocks += 1,
                    Err(e) => quarantine(&dir, name, &e, &mut report)?,
                }
            } else if is_v1_block(name) {
                v1.push(name.clone());
            } else if let Some(seq) = parse_segment(name) {
                segments.push((seq, name.clone()));
            }
        }
        // Version 1 blocks (one per partition, from before generations) become version 2
        // blocks of new generations; the old file goes once the new one is durable.
        for name in v1 {
            let path = dir.join(&name);
            let bytes = fs::read(&path).map_err(io("read", &path))?;
            match SealedBlock::from_bytes(&bytes) {
                Ok(mut block) => {
                    block.generation = db.allocate_generation();
                    let key = BlockKey {
                        partition: block.partition,
                        generation: block.generation,
                    };
                    let new = write_atomic(&dir, &block_name(key), &block.to_bytes())?;
                    db.load_block(map_file(&new)?)?;
                    fs::remove_file(&path).map_err(io("remove", &path))?;
                    report.blocks += 1;
                }
                Err(e) => quarantine(&dir, &name, &FileDbError::Db(e.into()), &mut report)?,
            }
        }
        let superseded = db.remove_superseded();
        remove_blocks(&dir, &superseded)?;
        segments.sort();
        db.seed_head_from_blocks();
        for (_, name) in &segments {
            let path = dir.join(name);
            let bytes = fs::read(&path).map_err(io("read", &path))?;
            let r = db.engine_mut().replay(&bytes);
            report.segments += 1;
            report.series += r.series;
            report.points += r.points;
            if r.dropped_bytes > 0 {
                tracing::warn!(file = %path.display(), kept = r.valid_len, dropped = r.dropped_bytes, stop = ?r.stop, "telemetry WAL tail torn or corrupt; dropped");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                f.set_len(r.valid_len as u64)
                    .map_err(io("truncate", &path))?;
                f.sync_all().map_err(io("fsync", &path))?;
                report.torn.push(TornSegment {
                    file: name.clone(),
                    kept: r.valid_len,
                    dropped: r.dropped_bytes,
                    stop: r.stop,
                });
            }
        }
        let seq = segments.last().map_or(1, |(s, _)| *s);
        let oldest = segments.first().map_or(seq, |(s, _)| *s);
        let path = dir.join(segment_name(seq));
        let wal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        if segments.is_empty() {
            sync_dir(&dir)?;
        }
        Ok((
            Self {
                dir,
                fsync,
                db,
                seq,
                oldest,
                wal,
                pending: Vec::new(),
                running: None,
                unpersisted: Vec::new(),
                retention_queue: std::collections::VecDeque::new(),
            },
            report,
        ))
    }

    /// The database (for queries).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Sets the retention policy [`FileDb::apply_retention`] applies.
    pub fn set_retention(&mut self, policy: crate::retention::RetentionPolicy) {
        self.db.set_retention(policy);
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of `key`, creating the series if needed. A new series' record is written with the
    /// next batch (before its points).
    pub fn series(&mut self, key: &SeriesKey) -> Result<SeriesId, FileDbError> {
        Ok(self.db.engine_mut().series(key, &mut self.pending)?)
    }

    /// Applies a batch and writes the accepted points (and pending series records) to the WAL
    /// as one write, fsynced if so configured; when it returns `Ok`, the accepted points are as
    /// durable as configured. If the write fails, the points are in memory but not in the log.
    pub fn append(&mut self, points: &[(SeriesId, Point)]) -> Result<AppendReport, FileDbError> {
        let report = self.append_unsynced(points)?;
        self.sync()?;
        Ok(report)
    }

    /// [`FileDb::append`] without the fsync: the record is written to the WAL file but durable
    /// only after the next [`FileDb::sync`] (group commit: many appends, one fsync).
    pub fn append_unsynced(
        &mut self,
        points: &[(SeriesId, Point)],
    ) -> Result<AppendReport, FileDbError> {
        let mut buf = std::mem::take(&mut self.pending);
        let report = match self.db.engine_mut().append(points, &mut buf) {
            Ok(r) => r,
            Err(e) => {
                self.pending = buf;
                return Err(e.into());
            }
        };
        self.write_wal(&buf)?;
        Ok(report)
    }

    /// Makes every record written so far durable (fsync of the WAL segment) when the store was
    /// opened with `fsync`; otherwise nothing.
    pub fn sync(&mut self) -> Result<(), FileDbError> {
        if self.fsync {
            let path = self.dir.join(segment_name(self.seq));
            self.wal.sync_data().map_err(io("fsync", &path))?;
        }
        Ok(())
    }

    /// Resolves each point's series key and appends them as one batch ([`FileDb::append`]).
    /// A key the index refuses refuses the whole call before anything is written.
    pub fn write(&mut self, points: &[(SeriesKey, Point)]) -> Result<AppendReport, FileDbError> {
        let mut batch = Vec::with_capacity(points.len());
        for (key, p) in points {
            batch.push((self.series(key)?, *p));
        }
        self.append(&batch)
    }

    fn write_wal(&mut self, bytes: &[u8]) -> Result<(), FileDbError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(segment_name(self.seq));
        self.wal.write_all(bytes).map_err(io("write", &path))?;
        Ok(())
    }

    /// Seals the head into new blocks (one per partition with head points; nothing at all when
    /// no point arrived since the last seal), writes them atomically and maps them, starts a
    /// new WAL segment with a checkpoint and deletes the older segments. Returns the partitions
    /// written, ascending.
    pub fn seal(&mut self) -> Result<Vec<i64>, FileDbError> {
        if !self.db.engine().head().has_unsealed() && self.unpersisted.is_empty() {
            // Nothing arrived since the last seal: no block, and the segment stays.
            return Ok(Vec::new());
        }
        let keys = self.db.seal()?;
        self.unpersisted.extend(&keys);
        // Blocks an earlier seal could not write (a full disk) are written first; until every
        // sealed block is in a file, the WAL segments holding their points stay.
        while let Some(key) = self.unpersisted.first().copied() {
            if let Some(block) = self.db.block(key) {
                let path = write_atomic(&self.dir, &block_name(key), block.bytes())?;
                self.db.replace_bytes(key, map_file(&path)?)?;
            }
            self.unpersisted.remove(0);
        }
        let changed: Vec<i64> = keys.iter().map(|k| k.partition).collect();
        let mut cp = std::mem::take(&mut self.pending);
        cp.clear();
        self.db.engine().checkpoint(&mut cp)?;
        let next = self.seq + 1;
        let path = self.dir.join(segment_name(next));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io("create", &path))?;
        f.write_all(&cp).map_err(io("write", &path))?;
        f.sync_all().map_err(io("fsync", &path))?;
        sync_dir(&self.dir)?;
        drop(f);
        self.wal = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let old = self.seq;
        self.seq = next;
        for seq in self.oldest..=old {
            let p = self.dir.join(segment_name(seq));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &p)(e)),
            }
            self.oldest = seq + 1;
        }
        Ok(changed)
    }
}

impl FileDb {
    /// Applies the database's retention policy at `now_ms` at once: partitions past every
    /// rule's rollup duration have their files removed ([`Db::drop_expired`]), and partitions
    /// that crossed a duration since they were last rewritten are merged whole, each series
    /// kept, cut to its rollups or left out as its rule says ([`Db::plan_retention`]). A
    /// server queues the rewrites instead ([`FileDb::queue_retention`]).
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<RetentionReport, FileDbError> {
        let mut report = self.drop_expired(now_ms)?;
        for plan in self.db.plan_retention(now_ms) {
            let r = self.run(&plan)?;
            report.expired_series += r.expired_series;
            report.raw_dropped_series += r.raw_dropped_series;
            report.rewritten.push(plan.partition);
        }
        Ok(report)
    }

    /// Removes the partitions nothing keeps at `now_ms` and queues the retention rewrites due
    /// (each partition once), for [`FileDb::compaction_work`] to do step by step. The report's
    /// `rewritten` lists the partitions newly queued.
    pub fn queue_retention(&mut self, now_ms: i64) -> Result<RetentionReport, FileDbError> {
        let mut report = self.drop_expired(now_ms)?;
        for plan in self.db.plan_retention(now_ms) {
            let p = plan.partition;
            let running = self.running.as_ref().is_some_and(|r| {
                r.compaction.plan().partition == p && r.compaction.plan().retain_at.is_some()
            });
            if !running && !self.retention_queue.iter().any(|(q, _)| *q == p) {
                self.retention_queue.push_back((p, now_ms));
                report.rewritten.push(p);
            }
        }
        Ok(report)
    }

    fn drop_expired(&mut self, now_ms: i64) -> Result<RetentionReport, FileDbError> {
        let gone = self.db.drop_expired(now_ms);
        remove_blocks(&self.dir, &gone)?;
        let mut report = RetentionReport {
            dropped: gone.iter().map(|k| k.partition).collect(),
            ..RetentionReport::default()
        };
        report.dropped.dedup();
        Ok(report)
    }

    /// Runs the next compaction [`Db::plan_compaction`] finds at `now_ms` to its end, if any
    /// (after finishing one under way). See [`FileDb::compaction_work`].
    pub fn compact_step(
        &mut self,
        now_ms: i64,
    ) -> Result<Option<(CompactionPlan, CompactionReport)>, FileDbError> {
        loop {
            match self.compaction_work(now_ms, usize::MAX)? {
                Work::Idle => return Ok(None),
                Work::Progress | Work::Abandoned(_) => {}
                Work::Done(plan, report) => return Ok(Some((plan, report))),
            }
        }
    }

    /// Whether a compaction is under way.
    pub fn compaction_running(&self) -> bool {
        self.running.is_some()
    }

    /// Does a bounded piece of compaction work: up to `max_series` series of the compaction
    /// under way, or starts the next one (a queued retention rewrite first, then what
    /// [`Db::plan_compaction`] finds at `now_ms`). A compaction streams into a `.tmp` file; once
    /// all its series are written the file is fsynced and renamed over the newest input (whose
    /// generation it takes), and the other inputs are deleted. A crash in between leaves inputs
    /// whose points the merged block also holds (a later generation wins, so queries answer the
    /// same), merged again by a later compaction or removed at open.
    pub fn compaction_work(&mut self, now_ms: i64, max_series: usize) -> Result<Work, FileDbError> {
        if self.running.is_none() {
            let plan = loop {
                match self.retention_queue.pop_front() {
                    Some((p, at)) => {
                        if let Some(plan) = self.db.plan_whole(p, Some(at)) {
                            break Some(plan);
                        }
                    }
                    None => break self.db.plan_compaction(now_ms),
                }
            };
            let Some(plan) = plan else {
                return Ok(Work::Idle);
            };
            self.start(&plan)?;
        }
        let Some(run) = self.running.as_mut() else {
            return Ok(Work::Idle);
        };
        let more = run
            .compaction
            .step(&self.db, &mut run.out, max_series)
            .map_err(|e| compact_error(e, &run.tmp));
        let more = match more {
            Ok(more) => more,
            Err(e) => {
                self.abandon();
                return Err(e);
            }
        };
        if more {
            return Ok(Work::Progress);
        }
        let Some(run) = self.running.take() else {
            return Ok(Work::Idle);
        };
        self.install(run)
    }

    /// Drops the compaction under way (its `.tmp` file removed): at a stop, or after an error.
    pub fn abandon(&mut self) {
        if let Some(run) = self.running.take() {
            drop(run.out);
            let _ = fs::remove_file(&run.tmp);
        }
    }

    fn start(&mut self, plan: &CompactionPlan) -> Result<(), FileDbError> {
        let tmp = self.dir.join(format!("{}.tmp", block_name(plan.output())));
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        let compaction = self
            .db
            .start_compaction(plan, &mut out)
            .map_err(|e| compact_error(e, &tmp))?;
        self.running = Some(Running {
            compaction,
            out,
            tmp,
        });
        Ok(())
    }

    fn install(&mut self, run: Running) -> Result<Work, FileDbError> {
        let Running {
            compaction,
            mut out,
            tmp,
        } = run;
        let plan = compaction.plan().clone();
        let written = (|| {
            let report = compaction
                .finish(&mut out)
                .map_err(|e| compact_error(e, &tmp))?;
            let file = out
                .into_inner()
                .map_err(|e| io("write", &tmp)(e.into_error()))?;
            file.sync_all().map_err(io("fsync", &tmp))?;
            Ok::<_, FileDbError>(report)
        })();
        let report = match written {
            Ok(r) => r,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if !self.db.inputs_present(&plan) {
            fs::remove_file(&tmp).map_err(io("remove", &tmp))?;
            return Ok(Work::Abandoned(plan));
        }
        let dst = self.dir.join(block_name(plan.output()));
        fs::rename(&tmp, &dst).map_err(io("rename", &tmp))?;
        sync_dir(&self.dir)?;
        let gone = self.db.install(&plan, map_file(&dst)?)?;
        remove_blocks(&self.dir, &gone)?;
        Ok(Work::Done(plan, report))
    }

    fn run(&mut self, plan: &CompactionPlan) -> Result<CompactionReport, FileDbError> {
        self.abandon();
        self.start(plan)?;
        loop {
            match self.compaction_work(i64::MIN, usize::MAX)? {
                Work::Done(_, report) => return Ok(report),
                Work::Progress => {}
                Work::Idle | Work::Abandoned(_) => return Ok(CompactionReport::default()),
            }
        }
    }
}

fn compact_error(e: CompactError, tmp: &Path) -> FileDbError {
    match e {
        CompactError::Db(e) => FileDbError::Db(e),
        CompactError::Write(source) => io("write", tmp)(source),
    }
}

/// Renames a block file that does not load to `.corrupt`, logs and reports it.
fn quarantine(
    dir: &Path,
    name: &str,
    e: &FileDbError,
    report: &mut OpenReport,
) -> Result<(), FileDbError> {
    let path = dir.join(name);
    tracing::warn!(file = %path.display(), error = %e, "telemetry block does not load; renamed to .corrupt and skipped");
    let to = dir.join(format!("{name}.corrupt"));
    fs::rename(&path, &to).map_err(io("rename", &path))?;
    report.bad_blocks.push((name.to_owned(), e.to_string()));
    Ok(())
}

/// Unlinks the files of `keys` (absent ones are fine) and fsyncs the directory.
fn remove_blocks(dir: &Path, keys: &[BlockKey]) -> Result<(), FileDbError> {
    if keys.is_empty() {
        return Ok(());
    }
    for key in keys {
        let path = dir.join(block_name(*key));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &path)(e)),
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), FileDbError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Writes `name` in `dir` atomically: temp file, fsync, rename, directory fsync. Returns the
/// file's path.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, FileDbError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(io("rename", &tmp))?;
    sync_dir(dir)?;
    Ok(dst)
}
