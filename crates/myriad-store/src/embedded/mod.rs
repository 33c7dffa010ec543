//! The embedded store: one [redb](https://docs.rs/redb) file, no server.
//!
//! # Layout
//!
//! One table per kind of record, keyed so that [`SessionStore::load`] is a
//! single ordered pass over each table: `sessions` (client id),
//! `subscriptions` (client id, filter), `outbound` (client id, big-endian
//! seq), `inbound_qos2` (client id, big-endian packet id), `wills` (client
//! id) and `retained` (topic). Every value starts with a format version
//! byte. A session's rows form one key range per table, so
//! [`Change::DeleteSession`] removes them with range deletes.
//!
//! # Durability
//!
//! Each [`SessionStore::commit`] is one write transaction: all of the batch
//! or none of it, also across a crash. What "committed" means on disk
//! depends on [`EmbeddedOptions::fsync`]:
//!
//! - `fsync: true`: every commit is `fsync`ed (redb `Durability::Immediate`)
//!   before `commit` returns. A batch that returned `Ok` survives a process
//!   kill and a power loss (as far as the disk honours `fsync`).
//! - `fsync: false`: commits are redb `Durability::None`: written to the
//!   file's pages but not made durable. A non-durable commit is invisible
//!   after a restart *even if only the process died*: redb rolls back to the
//!   last durable commit, whether the process was killed, aborted or the
//!   machine lost power (tested: `tests/embedded.rs`,
//!   `process_kill_keeps_what_each_mode_promises`). To bound that loss, the
//!   store makes a commit durable (one `fsync`) when the last durable one is
//!   [`CHECKPOINT_INTERVAL`] old or more, and on [`EmbeddedStore::flush`],
//!   [`EmbeddedStore::close`] and drop. So after a kill, the file holds every
//!   batch up to some checkpoint, never part of a batch, and loses the
//!   batches since: at most those of the last [`CHECKPOINT_INTERVAL`] while
//!   commits keep coming, or everything since the last commit that made a
//!   checkpoint if traffic stopped (call [`EmbeddedStore::flush`] when idle
//!   to close that window). A clean shutdown loses nothing.
//!
//! # Opening
//!
//! [`EmbeddedStore::open`] creates the directory and the file if needed. A
//! file that is not a redb database, or is damaged, is an error that names
//! the file ([`StoreError::Corrupt`] or [`StoreError::Io`]), never a panic:
//! the open verifies the checksum of every page (redb's integrity check).
//! That costs a read of the whole file, about as much as
//! [`SessionStore::load`] itself, but without it redb panics on damaged
//! data pages (tested: `garbage_in_data_pages_is_an_error_naming_the_file`).
//! After a crash, redb repairs the file at open (rolls back to the last
//! durable commit and rebuilds its allocator state).
//!
//! The file never shrinks while open: redb reuses freed pages but keeps the
//! file's length, and with `fsync: false` pages freed since the last
//! checkpoint cannot be reused before the next one, so the file can grow
//! by up to what changed in a checkpoint interval. At open, when at least a
//! quarter of the file (and at least [`COMPACT_MIN_FREE`]) is free, the
//! store compacts it (redb `compact`: live pages move down, the file is
//! truncated); below that, compaction is skipped as not worth its cost.
//! [`EmbeddedStore::open_report`] says what happened.
//!
//! # Cost (measured on the 2-core development VM, `examples/store_bench.rs`)
//!
//! - Commit, QoS 1-like traffic (each commit: new messages plus the acks of
//!   the previous commit's): about 6,000 commits/s with `fsync: true` and
//!   one message per commit (the disk's own fsync rate there), about
//!   470,000 messages/s with 256 per commit; about 110,000 commits/s with
//!   `fsync: false` and one per commit, about 880,000 messages/s with 256.
//! - Start-up with 100,000 sessions and 1,000,000 queued 64-byte messages
//!   (a 197 MB file): open about 0.6 s (integrity check), load 0.55 to
//!   1.4 s. The spread is page faults: the snapshot takes about 0.55 GB of
//!   fresh memory, over 500 bytes per outbound record, 400 of which were
//!   the then inline [`myriad_mqtt::Properties`] of its message (now held
//!   out of line by [`myriad_mqtt::PacketProperties`]; not measured again).
//! - Compaction at open after half of those sessions were deleted: the
//!   file went from 393 MB to 115 MB in about 0.4 s.

mod apply;
mod errors;
mod keys;
mod load;
mod properties;
mod tables;
mod values;
mod wire;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, Durability};

use crate::format::FormatError;
use crate::records::{Change, Snapshot};
use crate::{SessionStore, StoreError};
use errors::FileName;
use tables::{FORMAT, Tables};

/// The name of the database file inside the store's directory.
pub const FILE_NAME: &str = "myriad.redb";

/// redb's page cache. redb keeps every page it writes in its cache (1 GiB
/// by default), on top of the broker's own in-memory copy of every queued
/// message: 100,000 queued 512-byte messages took the broker to 173 MB of
/// RSS with the default. The store is read in full only at start-up; reads
/// past the cache still hit the kernel's page cache.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// With `fsync: false`, a commit is made durable when the last durable
/// commit is at least this old.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Free space (in bytes) below which the file is not compacted at open.
pub const COMPACT_MIN_FREE: u64 = 16 << 20;

/// How an [`EmbeddedStore`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// `true`: each commit is on disk (`fsync`ed) before it returns.
    /// `false`: commits are not synced; after a process kill or a power
    /// loss the file comes back as of the last checkpoint (see the
    /// [module documentation](self)).
    pub fsync: bool,
}

impl Default for EmbeddedOptions {
    /// `fsync: true`.
    fn default() -> Self {
        EmbeddedOptions { fsync: true }
    }
}

/// What [`EmbeddedStore::open`] did to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// Length of the file when it was opened, in bytes.
    pub file_len_before: u64,
    /// Length of the file after open (and compaction, if any), in bytes.
    pub file_len_after: u64,
    /// Whether the file was compacted.
    pub compacted: bool,
}

/// A [`SessionStore`] in one redb file (see the [module documentation](self)
/// for the layout and what each durability mode guarantees).
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
    file: FileName,
    options: EmbeddedOptions,
    last_durable: Instant,
    /// Non-durable commits since the last durable one.
    pending: bool,
    report: OpenReport,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("options", &self.options)
            .field("pending", &self.pending)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

impl EmbeddedStore {
    /// Opens the store in `dir` (created if missing), in the file
    /// `dir/myriad.redb` (created if missing). Verifies the file, repairs it
    /// after a crash, and compacts it when much of it is free.
    ///
    /// Fails with [`StoreError::Io`] or [`StoreError::Corrupt`] naming the
    /// file if it cannot be read, is not a redb file or is damaged, and with
    /// [`StoreError::Engine`] if another process has it open.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let file = FileName(path.display().to_string());
        let file_len_before = file_len(&path);
        let mut db = Database::builder()
            .set_check_integrity_on_open(true)
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| file.engine(e))?;
        check_format(&db, &file)?;
        let compacted = compact_if_worth_it(&mut db, &file, &path)?;
        let report = OpenReport {
            file_len_before,
            file_len_after: file_len(&path),
            compacted,
        };
        Ok(EmbeddedStore {
            db,
            path,
            file,
            options,
            last_durable: Instant::now(),
            pending: false,
            report,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options the store was opened with.
    pub fn options(&self) -> EmbeddedOptions {
        self.options
    }

    /// What the open did to the file (length, compaction).
    pub fn open_report(&self) -> OpenReport {
        self.report
    }

    /// Makes every commit so far durable (one `fsync`), if some are not.
    /// Nothing to do with `fsync: true`.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if !self.pending {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.file.engine(e))?;
        txn.commit().map_err(|e| self.file.engine(e))?;
        self.pending = false;
        self.last_durable = Instant::now();
        Ok(())
    }

    /// Makes every commit durable and closes the file, reporting any error
    /// (dropping the store does the same but cannot report one).
    pub fn close(mut self) -> Result<(), StoreError> {
        self.flush()?;
        let EmbeddedStore { db, file, .. } = self;
        db.close().map_err(|e| file.engine(e))
    }
}

impl SessionStore for EmbeddedStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        load::load(&self.db, &self.file)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let file = &self.file;
        let mut txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        let durable = self.options.fsync || self.last_durable.elapsed() >= CHECKPOINT_INTERVAL;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| file.engine(e))?;
        }
        let result = Tables::open(&txn, file).and_then(|mut tables| {
            apply::check(&tables.sessions, changes, file)?;
            for change in changes {
                apply::apply(&mut tables, change, file)?;
            }
            Ok(())
        });
        if let Err(err) = result {
            // Nothing of the batch is written; an abort that fails leaves nothing either.
            let _ = txn.abort();
            return Err(err);
        }
        txn.commit().map_err(|e| file.engine(e))?;
        if durable {
            self.pending = false;
            self.last_durable = Instant::now();
        } else {
            self.pending = true;
        }
        Ok(())
    }
}

/// Creates the tables and the format entry in a new file; checks the
/// format of an existing one.
fn check_format(db: &Database, file: &FileName) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(|e| file.engine(e))?;
    match crate::format::ensure_format(&txn, FORMAT) {
        Ok(()) => {}
        Err(FormatError::Engine(e)) => return Err(file.engine(e)),
        Err(FormatError::Unknown { found }) => {
            return Err(StoreError::Corrupt {
                path: file.0.clone(),
                reason: format!("unknown store format {found:?} (this build reads [{FORMAT}])"),
            });
        }
    }
    Tables::open(&txn, file)?;
    txn.commit().map_err(|e| file.engine(e))
}

/// Compacts the file when at least a quarter of it, and at least
/// [`COMPACT_MIN_FREE`], is free. Returns whether it did.
fn compact_if_worth_it(
    db: &mut Database,
    file: &FileName,
    path: &Path,
) -> Result<bool, StoreError> {
    let len = file_len(path);
    let used = {
        let txn = db.begin_write().map_err(|e| file.engine(e))?;
        let stats = txn.stats().map_err(|e| file.engine(e))?;
        let used = stats.allocated_pages() * stats.page_size() as u64;
        txn.abort().map_err(|e| file.engine(e))?;
        used
    };
    let free = len.saturating_sub(used);
    if free < COMPACT_MIN_FREE || free < len / 4 {
        return Ok(false);
    }
    for _ in 0..8 {
        if !db.compact().map_err(|e| file.engine(e))? {
            break;
        }
    }
    Ok(true)
}
