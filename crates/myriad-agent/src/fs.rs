//! The file operations the agent uses, behind a trait so tests can inject failures (a "power
//! cut" after N operations) without touching the logic.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// An open slot (a file or a block device): positioned reads and writes.
pub trait SlotFile {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`.
    fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Flushes written data to stable storage (`fsync`).
    fn sync(&mut self) -> io::Result<()>;
}

/// The file system as the agent sees it.
pub trait Fs {
    /// Opens a slot for reading, or for reading and writing (created if missing; never
    /// truncated: a block device keeps its size, and only an image's first `size` bytes count).
    fn open_slot(&self, path: &Path, write: bool) -> io::Result<Box<dyn SlotFile>>;
    /// Creates (or truncates) `path`, writes `data` and fsyncs it.
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Renames `from` to `to` (atomic on POSIX file systems).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Fsyncs a directory (makes a rename durable).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Reads a whole file of at most `limit` bytes: `Ok(None)` when it does not exist,
    /// [`io::ErrorKind::FileTooLarge`] when it is longer.
    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl SlotFile for File {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, data, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Fs for RealFs {
    fn open_slot(&self, path: &Path, write: bool) -> io::Result<Box<dyn SlotFile>> {
        // A missing slot file is created for writing (a block device exists already).
        let f = OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .truncate(false)
            .open(path)?;
        Ok(Box::new(f))
    }

    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)?;
        f.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        f.take(limit + 1).read_to_end(&mut out)?;
        if out.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("longer than {limit} bytes"),
            ));
        }
        Ok(Some(out))
    }
}
