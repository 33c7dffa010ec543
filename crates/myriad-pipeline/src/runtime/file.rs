//! An append-only JSONL file with rotation by size: `out/hot.jsonl` rotates to
//! `out/hot.1.jsonl`, `out/hot.2.jsonl`, ... (1 the newest), keeping at most `keep_files`
//! rotated files. Each append is written whole and fsynced before it returns; a failed
//! append is cut off again, so the file never holds half a batch.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The smallest `max_file_bytes`.
pub const MIN_FILE_BYTES: u64 = 4096;
/// The largest `max_file_bytes` (1 TiB).
pub const MAX_FILE_BYTES: u64 = 1 << 40;
/// The most rotated files kept.
pub const MAX_KEEP_FILES: u32 = 1000;

/// Where a [`RotatingFile`] writes and when it rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The current file (created with its directory if missing).
    pub path: PathBuf,
    /// Rotate before an append that would take the current file past this size (a
    /// single append larger than this is still written, to a fresh file).
    /// [`MIN_FILE_BYTES`] ..= [`MAX_FILE_BYTES`].
    pub max_file_bytes: u64,
    /// Rotated files kept besides the current one (0 ..= [`MAX_KEEP_FILES`]); older ones are
    /// deleted.
    pub keep_files: u32,
}

impl FileSinkConfig {
    /// A file at `path` with 100 MiB files, 10 kept.
    pub fn new(path: impl Into<PathBuf>) -> FileSinkConfig {
        FileSinkConfig {
            path: path.into(),
            max_file_bytes: 100 * 1024 * 1024,
            keep_files: 10,
        }
    }

    /// Checks the ranges; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_FILE_BYTES..=MAX_FILE_BYTES).contains(&self.max_file_bytes) {
            return Err(format!(
                "max_file_bytes: {} is out of range ({MIN_FILE_BYTES} ..= {MAX_FILE_BYTES})",
                self.max_file_bytes
            ));
        }
        if self.keep_files > MAX_KEEP_FILES {
            return Err(format!(
                "keep_files: {} is out of range (0 ..= {MAX_KEEP_FILES})",
                self.keep_files
            ));
        }
        if self.path.file_name().is_none() {
            return Err(format!("path: {} names no file", self.path.display()));
        }
        Ok(())
    }
}

/// The path of rotated file `n` (1 the newest) of `path`: `a/b.jsonl` -> `a/b.{n}.jsonl`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{n}"),
    };
    path.with_file_name(name)
}

/// See the module docs.
#[derive(Debug)]
pub struct RotatingFile {
    config: FileSinkConfig,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    /// A writer for `config` (nothing is opened until the first append).
    pub fn new(config: FileSinkConfig) -> RotatingFile {
        RotatingFile {
            config,
            file: None,
            size: 0,
        }
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.config.path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.config.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("file not open"))
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let path = &self.config.path;
        let keep = self.config.keep_files;
        if keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            let oldest = rotated_path(path, keep);
            if oldest.exists() {
                std::fs::remove_file(&oldest)?;
            }
            for n in (1..keep).rev() {
                let from = rotated_path(path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated_path(path, n + 1))?;
                }
            }
            std::fs::rename(path, rotated_path(path, 1))?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = File::open(dir)
        {
            // Best effort: the renames themselves.
            let _ = dir.sync_all();
        }
        self.size = 0;
        Ok(())
    }

    /// Appends `bytes` whole and fsyncs, rotating first if they would take the file past
    /// `max_file_bytes`. On an error the file is cut back to its previous length (best
    /// effort) and reopened on the next call.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.open()?;
        if self.size > 0
            && self.size.saturating_add(bytes.len() as u64) > self.config.max_file_bytes
        {
            self.rotate()?;
        }
        let before = self.size;
        let file = self.open()?;
        let written = file.write_all(bytes).and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.size = before.saturating_add(bytes.len() as u64);
                Ok(())
            }
            Err(error) => {
                if let Some(file) = self.file.take() {
                    let _ = file.set_len(before);
                }
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("myriad-pipeline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_count() {
        let dir = temp_dir("rotate");
        let path = dir.join("out").join("hot.jsonl");
        let mut file = RotatingFile::new(FileSinkConfig {
            path: path.clone(),
            max_file_bytes: MIN_FILE_BYTES,
            keep_files: 2,
        });
        let line = vec![b'x'; 1000];
        for _ in 0..20 {
            file.append(&line).unwrap();
        }
        assert!(path.exists());
        assert!(rotated_path(&path, 1).exists());
        assert!(rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists(), "keep_files = 2 exceeded");
        for p in [path.clone(), rotated_path(&path, 1)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= MIN_FILE_BYTES, "{} is {len} bytes", p.display());
        }
        assert_eq!(rotated_path(&path, 1), dir.join("out").join("hot.1.jsonl"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn validate_names_the_key_one_past_the_limits() {
        let mut config = FileSinkConfig::new("a.jsonl");
        config.max_file_bytes = MIN_FILE_BYTES - 1;
        assert!(config.validate().unwrap_err().starts_with("max_file_bytes"));
        config.max_file_bytes = MAX_FILE_BYTES + 1;
        assert!(config.validate().unwrap_err().starts_with("max_file_bytes"));
        config.max_file_bytes = MAX_FILE_BYTES;
        config.keep_files = MAX_KEEP_FILES + 1;
        assert!(config.validate().unwrap_err().starts_with("keep_files"));
        config.keep_files = MAX_KEEP_FILES;
        assert!(config.validate().is_ok());
    }
}
