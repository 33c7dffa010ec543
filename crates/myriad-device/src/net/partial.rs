//! The download file: `{state_dir}/download`, with the SHA-256 it should have beside it
//! (`download.sha256`), so a restart resumes a partial file of the same image or patch and
//! starts over for another one. Written sequentially, fsynced every [`SYNC_EVERY`] bytes
//! (a power cut loses at most that much progress; the whole file is hashed against the
//! signed manifest before anything is installed, so torn bytes are never installed).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use myriad_ota::rollout::DeviceState;

use super::link::Link;

/// Bytes written between two fsyncs of the download file.
pub(super) const SYNC_EVERY: u64 = 8 * 1024 * 1024;

/// A download in progress.
pub(super) struct Partial {
    file: File,
    path: PathBuf,
    /// Bytes in the file (all of them from the start of the image or patch).
    pub(super) have: u64,
    /// Bytes expected in all.
    pub(super) total: u64,
    unsynced: u64,
    next_report: u64,
}

impl Partial {
    /// Opens `path` for the download of `total` bytes hashing to `sha256` (hex): a partial
    /// file of the same download is resumed, anything else is started over.
    pub(super) fn open(path: &Path, sha256: &str, total: u64) -> Result<Partial> {
        let meta = path.with_extension("sha256");
        let same = std::fs::read_to_string(&meta).is_ok_and(|s| s == sha256);
        let mut have = if same {
            std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        if have > total {
            have = 0;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("{}", path.display()))?;
        file.set_len(have)
            .with_context(|| format!("{}", path.display()))?;
        file.seek(SeekFrom::Start(have))
            .with_context(|| format!("{}", path.display()))?;
        if have == 0 {
            std::fs::write(&meta, sha256).with_context(|| format!("{}", meta.display()))?;
        }
        Ok(Partial {
            file,
            path: path.to_path_buf(),
            have,
            total,
            unsynced: 0,
            next_report: have + step(total),
        })
    }

    /// Drops what was written (the server sent the whole body again).
    pub(super) fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.have = 0;
        self.next_report = step(self.total);
        Ok(())
    }

    /// Appends `data`, fsyncs every [`SYNC_EVERY`] bytes, and reports `DOWNLOADING` about
    /// every tenth of the total.
    pub(super) fn write(&mut self, link: &Link, rollout: &str, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .with_context(|| format!("{}", self.path.display()))?;
        self.have += data.len() as u64;
        self.unsynced += data.len() as u64;
        if self.unsynced >= SYNC_EVERY {
            self.sync()?;
        }
        if self.have >= self.next_report || self.have == self.total {
            link.progress(
                rollout,
                DeviceState::Downloading,
                Some((self.have, self.total)),
                None,
            );
            self.next_report = self.have + step(self.total);
        }
        Ok(())
    }

    /// Flushes the file to disk.
    pub(super) fn sync(&mut self) -> Result<()> {
        self.unsynced = 0;
        self.file
            .sync_data()
            .with_context(|| format!("{}", self.path.display()))
    }

    /// Whether every byte is there.
    pub(super) fn complete(&self) -> bool {
        self.have == self.total
    }
}

fn step(total: u64) -> u64 {
    (total / 10).max(1)
}

/// Removes the download file and its hash (after an install, or a file that did not match).
pub(super) fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("sha256"));
}
