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

/// A file opened for appending (a spool segment, a log).
pub trait AppendFile {
    /// Appends all of `data` at the end of the file (not yet durable).
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Flushes the appended data to stable storage (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
}

/// The directory and append operations the SDK cores (the telemetry spool, the command-id
/// log, the shadow copy) need on top of [`Fs`]; behind a trait so tests can cut the power
/// after any operation ([`crate::memfs::MemFs`]).
pub trait LogFs: Fs {
    /// Creates `dir` and its parents when missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir` (names that are not UTF-8 are left out).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The length of a file in bytes.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Opens `path` for appending, creating it when missing (the new name is durable only
    /// after [`Fs::sync_dir`]). `Send`, so a spool can move to the thread that owns it.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile + Send>>;
    /// Cuts a file to `len` bytes and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Removes a file (durable after [`Fs::sync_dir`]).
    fn remove(&self, path: &Path) -> io::Result<()>;
}

impl AppendFile for File {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl LogFs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = File::open(path)?;
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(&f, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile + Send>> {
        let f = OpenOptions::new().append(true).create(true).open(path)?;
        Ok(Box::new(f))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}
