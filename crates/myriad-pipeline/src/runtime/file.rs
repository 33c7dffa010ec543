//! An append-only JSONL or CSV file with rotation by size and by age: `out/hot.jsonl`
//! rotates to `out/hot.1.jsonl`, `out/hot.2.jsonl`, ... (1 the newest), keeping at most
//! `keep_files` rotated files. Each append is written whole and fsynced before it returns; a
//! failed append is cut off again, so the file never holds half a batch. A CSV file starts
//! with its header line (the configured columns), every rotated file too.
//!
//! Rotation by age happens at the first append after the current file has been written for
//! `max_file_age_ms` (a file with nothing new stays current, however old). The age counts
//! from the file's first append in this process: after a restart, an existing file is aged
//! from its first append after the restart.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The smallest `max_file_bytes`.
pub const MIN_FILE_BYTES: u64 = 4096;
/// The largest `max_file_bytes` (1 TiB).
pub const MAX_FILE_BYTES: u64 = 1 << 40;
/// The most rotated files kept.
pub const MAX_KEEP_FILES: u32 = 1000;
/// The shortest `max_file_age_ms`: one second.
pub const MIN_FILE_AGE_MS: u64 = 1000;
/// The longest `max_file_age_ms`: 30 days.
pub const MAX_FILE_AGE_MS: u64 = 30 * 86_400_000;
/// The most CSV `columns`.
pub const MAX_CSV_COLUMNS: usize = 256;
/// The longest CSV column name, in bytes.
pub const MAX_CSV_COLUMN_BYTES: usize = 256;

/// How records are written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// Comma-separated values (RFC 4180 quoting), one row per record: these output fields
    /// in this order, under a header line naming them.
    Csv {
        /// The output fields, 1 ..= [`MAX_CSV_COLUMNS`] distinct names of 1 ..=
        /// [`MAX_CSV_COLUMN_BYTES`] bytes.
        columns: Vec<String>,
    },
}

impl OutputFormat {
    /// The header line a new file starts with (CSV), empty for JSONL.
    pub fn header(&self) -> Vec<u8> {
        match self {
            OutputFormat::Jsonl => Vec::new(),
            OutputFormat::Csv { columns } => csv_row(columns.iter().map(String::as_str)),
        }
    }

    /// One record as written (with its line end): its JSON text, or its CSV row. A CSV row
    /// needs an object: a missing or null field is an empty cell, a string its text, other
    /// values their JSON text. `Err` names why the record cannot be written.
    pub fn encode(&self, output: &Value) -> Result<Vec<u8>, String> {
        match self {
            OutputFormat::Jsonl => {
                let mut line = output.to_string().into_bytes();
                line.push(b'\n');
                Ok(line)
            }
            OutputFormat::Csv { columns } => {
                let Some(object) = output.as_object() else {
                    return Err("csv: the output is not an object".into());
                };
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| match object.get(c) {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                    })
                    .collect();
                Ok(csv_row(cells.iter().map(String::as_str)))
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        let OutputFormat::Csv { columns } = self else {
            return Ok(());
        };
        if columns.is_empty() || columns.len() > MAX_CSV_COLUMNS {
            return Err(format!(
                "columns: {} columns; format = \"csv\" needs 1 ..= {MAX_CSV_COLUMNS}",
                columns.len()
            ));
        }
        for (i, column) in columns.iter().enumerate() {
            if column.is_empty() || column.len() > MAX_CSV_COLUMN_BYTES {
                return Err(format!(
                    "columns[{i}]: names must be 1 ..= {MAX_CSV_COLUMN_BYTES} bytes"
                ));
            }
            if columns[..i].contains(column) {
                return Err(format!("columns[{i}]: {column:?} is listed twice"));
            }
        }
        Ok(())
    }
}

/// One CSV line of `cells`, quoted where needed, ending in `\n`.
fn csv_row<'a>(cells: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if cell.contains([',', '"', '\n', '\r']) {
            out.push(b'"');
            for b in cell.bytes() {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(cell.as_bytes());
        }
    }
    out.push(b'\n');
    out
}

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
    /// Rotate before an append once the current file has been written for this long
    /// ([`MIN_FILE_AGE_MS`] ..= [`MAX_FILE_AGE_MS`]); `None`: by size only.
    pub max_file_age_ms: Option<u64>,
    /// JSONL (the default; dead letters always) or CSV.
    pub format: OutputFormat,
}

impl FileSinkConfig {
    /// A JSONL file at `path` with 100 MiB files, 10 kept, no rotation by age.
    pub fn new(path: impl Into<PathBuf>) -> FileSinkConfig {
        FileSinkConfig {
            path: path.into(),
            max_file_bytes: 100 * 1024 * 1024,
            keep_files: 10,
            max_file_age_ms: None,
            format: OutputFormat::Jsonl,
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
        if let Some(age) = self.max_file_age_ms
            && !(MIN_FILE_AGE_MS..=MAX_FILE_AGE_MS).contains(&age)
        {
            return Err(format!(
                "max_file_age_ms: {age} is out of range ({MIN_FILE_AGE_MS} ..= {MAX_FILE_AGE_MS})"
            ));
        }
        if self.path.file_name().is_none() {
            return Err(format!("path: {} names no file", self.path.display()));
        }
        self.format.validate()
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
    /// When the current file was first appended to (in this process).
    started: Option<Instant>,
}

impl RotatingFile {
    /// A writer for `config` (nothing is opened until the first append).
    pub fn new(config: FileSinkConfig) -> RotatingFile {
        RotatingFile {
            config,
            file: None,
            size: 0,
            started: None,
        }
    }

    /// How records are written to this file.
    pub fn format(&self) -> &OutputFormat {
        &self.config.format
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
        self.started = None;
        Ok(())
    }

    /// [`RotatingFile::append_at`] now.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.append_at(bytes, Instant::now())
    }

    /// Appends `bytes` whole and fsyncs, rotating first if they would take the file past
    /// `max_file_bytes` or the file has been written for `max_file_age_ms` at `now`; a new
    /// CSV file gets its header first. On an error the file is cut back to its previous
    /// length (best effort) and reopened on the next call.
    pub fn append_at(&mut self, bytes: &[u8], now: Instant) -> io::Result<()> {
        self.open()?;
        let too_big = self.size.saturating_add(bytes.len() as u64) > self.config.max_file_bytes;
        let too_old = match (self.config.max_file_age_ms, self.started) {
            (Some(age), Some(started)) => {
                now.saturating_duration_since(started) >= Duration::from_millis(age)
            }
            _ => false,
        };
        if self.size > 0 && (too_big || too_old) {
            self.rotate()?;
        }
        let before = self.size;
        let header = if before == 0 {
            self.config.format.header()
        } else {
            Vec::new()
        };
        let file = self.open()?;
        let written = if header.is_empty() {
            file.write_all(bytes)
        } else {
            file.write_all(&[header.as_slice(), bytes].concat())
        }
        .and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.size = before.saturating_add((header.len() + bytes.len()) as u64);
                self.started.get_or_insert(now);
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
            ..FileSinkConfig::new(&path)
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

    #[test]
    fn rotates_by_age_at_the_first_append_past_it() {
        let dir = temp_dir("age");
        let path = dir.join("hot.jsonl");
        let mut file = RotatingFile::new(FileSinkConfig {
            max_file_age_ms: Some(MIN_FILE_AGE_MS),
            ..FileSinkConfig::new(&path)
        });
        let t0 = Instant::now();
        file.append_at(b"a\n", t0).unwrap();
        file.append_at(b"b\n", t0 + Duration::from_millis(999))
            .unwrap();
        assert!(!rotated_path(&path, 1).exists(), "rotated before the age");
        file.append_at(b"c\n", t0 + Duration::from_millis(1000))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(rotated_path(&path, 1)).unwrap(),
            "a\nb\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "c\n");
        // The age counts from the new file's first append.
        file.append_at(b"d\n", t0 + Duration::from_millis(1999))
            .unwrap();
        assert!(!rotated_path(&path, 2).exists());
        file.append_at(b"e\n", t0 + Duration::from_millis(2000))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(rotated_path(&path, 1)).unwrap(),
            "c\nd\n"
        );
        assert_eq!(
            std::fs::read_to_string(rotated_path(&path, 2)).unwrap(),
            "a\nb\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn csv_files_start_with_the_header_and_quote_cells() {
        let dir = temp_dir("csv");
        let path = dir.join("hot.csv");
        let format = OutputFormat::Csv {
            columns: vec!["device".into(), "t".into(), "note".into(), "tags".into()],
        };
        let mut file = RotatingFile::new(FileSinkConfig {
            max_file_bytes: MIN_FILE_BYTES,
            format: format.clone(),
            ..FileSinkConfig::new(&path)
        });
        let row = format
            .encode(&serde_json::json!({"device": "d1", "t": 21.5, "note": "a \"b\", c", "tags": [1, 2], "x": 1}))
            .unwrap();
        assert_eq!(
            String::from_utf8(row.clone()).unwrap(),
            "d1,21.5,\"a \"\"b\"\", c\",\"[1,2]\"\n"
        );
        let sparse = format.encode(&serde_json::json!({"t": null})).unwrap();
        assert_eq!(sparse, b",,,\n");
        assert!(format.encode(&serde_json::json!([1])).is_err());
        for _ in 0..200 {
            file.append(&row).unwrap();
        }
        for p in [path.clone(), rotated_path(&path, 1)] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.starts_with("device,t,note,tags\n"), "{}", p.display());
            assert_eq!(text.matches("device,t").count(), 1);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn age_and_csv_columns_are_validated_naming_the_key() {
        let mut config = FileSinkConfig::new("a.csv");
        config.max_file_age_ms = Some(MIN_FILE_AGE_MS - 1);
        assert!(
            config
                .validate()
                .unwrap_err()
                .starts_with("max_file_age_ms")
        );
        config.max_file_age_ms = Some(MAX_FILE_AGE_MS + 1);
        assert!(
            config
                .validate()
                .unwrap_err()
                .starts_with("max_file_age_ms")
        );
        config.max_file_age_ms = Some(MAX_FILE_AGE_MS);
        assert!(config.validate().is_ok());
        let columns = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        config.format = OutputFormat::Csv {
            columns: columns(MAX_CSV_COLUMNS),
        };
        assert!(config.validate().is_ok());
        config.format = OutputFormat::Csv {
            columns: columns(MAX_CSV_COLUMNS + 1),
        };
        assert!(config.validate().unwrap_err().starts_with("columns"));
        config.format = OutputFormat::Csv { columns: vec![] };
        assert!(config.validate().unwrap_err().starts_with("columns"));
        config.format = OutputFormat::Csv {
            columns: vec!["a".repeat(MAX_CSV_COLUMN_BYTES + 1)],
        };
        assert!(config.validate().unwrap_err().starts_with("columns[0]"));
        config.format = OutputFormat::Csv {
            columns: vec!["a".into(), "a".into()],
        };
        assert!(config.validate().unwrap_err().starts_with("columns[1]"));
    }
}
