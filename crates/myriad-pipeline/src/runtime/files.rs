//! The files source: a directory watched for JSON-lines or CSV files. Each line is a record
//! with the topic `files/{file name}` (the rule's FROM filter selects files, e.g.
//! `'files/+'`); a JSONL line is the payload as it is, a CSV line becomes a JSON object keyed
//! by the file's header line (numbers as numbers, the rest as strings).
//!
//! # Guarantees
//!
//! - **At least once**: a checkpoint file records, per file, the offset up to which every
//!   line is done (committed, filtered or dead-lettered). It moves only past a done prefix,
//!   is written atomically (temporary file, fsync, rename), and at start-up reading resumes
//!   there: lines read but not done before a crash are read again.
//! - **Whole lines only**: a line counts once its `\n` is written; a file may grow while it
//!   is read (appended logs). A last line without `\n` waits for it.
//! - **Backpressure**: at most `in_flight` lines are read and not done; reading stops
//!   meanwhile. Blocking reads and checkpoint writes run on the blocking pool.
//! - **Bad lines** (longer than `max_line_bytes`, a CSV line that does not parse or does not
//!   match the header) go to the dead-letter file with the reason; the rest of the file goes
//!   on.
//! - A file that becomes shorter than what was read is taken as a new file under the old
//!   name (rotated by its writer) and read from its start.
//! - With `delete_done`, a file is deleted once all of it is done: write files elsewhere
//!   and rename them into the directory when complete.
//!
//! # Limits
//!
//! | bound | value |
//! |---|---|
//! | `poll_ms` | [`MIN_POLL_MS`] ..= [`MAX_POLL_MS`] |
//! | `max_line_bytes` | 1 ..= [`MAX_LINE_BYTES`] |
//! | files looked at per poll | [`MAX_FILES`] (in name order; names starting with `.` or holding `+`, `#` are skipped) |
//! | checkpoint file read at start-up | [`MAX_CHECKPOINT_BYTES`] |

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::window::Window;
use super::{Counters, Item, Outcome, RuntimeError};
use crate::record;

/// The shortest poll interval.
pub const MIN_POLL_MS: u64 = 10;
/// The longest poll interval: one hour.
pub const MAX_POLL_MS: u64 = 3_600_000;
/// The largest `max_line_bytes`: 16 MiB.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// The most files looked at per poll (the first ones in name order).
pub const MAX_FILES: usize = 10_000;
/// The largest checkpoint file read at start-up.
pub const MAX_CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// Lines read from a file per blocking read.
const LINES_PER_READ: usize = 1000;
/// How often the checkpoint is written while lines are done (and when the source goes idle).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// How each line is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON value per line: the payload.
    Jsonl,
    /// Comma-separated values; the first line is the header naming the fields.
    Csv,
}

/// `source = { type = "files", ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesSourceConfig {
    /// The directory watched (files directly in it; not subdirectories).
    pub dir: PathBuf,
    /// The files' format.
    pub format: FileFormat,
    /// How often the directory is listed again once everything in it is read.
    pub poll_ms: u64,
    /// A longer line is dead-lettered (its first `max_line_bytes`), not read whole.
    pub max_line_bytes: usize,
    /// Where the offsets are kept.
    pub checkpoint: PathBuf,
    /// Delete each file once all of it is done.
    pub delete_done: bool,
}

impl FilesSourceConfig {
    /// Checks the ranges; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_POLL_MS..=MAX_POLL_MS).contains(&self.poll_ms) {
            return Err(format!(
                "poll_ms: {} is out of range ({MIN_POLL_MS} ..= {MAX_POLL_MS})",
                self.poll_ms
            ));
        }
        if !(1..=MAX_LINE_BYTES).contains(&self.max_line_bytes) {
            return Err(format!(
                "max_line_bytes: {} is out of range (1 ..= {MAX_LINE_BYTES})",
                self.max_line_bytes
            ));
        }
        if self.dir.as_os_str().is_empty() {
            return Err("dir: empty".to_owned());
        }
        Ok(())
    }
}

/// One line read: its bytes (at most `max_line_bytes`), the offset just past its `\n`, and
/// whether it was cut.
struct Line {
    bytes: Vec<u8>,
    end: u64,
    too_long: bool,
}

/// Reads up to `max_lines` whole lines of `path` from `offset`.
fn read_lines(
    path: &Path,
    offset: u64,
    max_lines: usize,
    max_line_bytes: usize,
) -> io::Result<Vec<Line>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut lines = Vec::new();
    let mut position = offset;
    let mut current = Vec::new();
    let mut cut = false;
    let mut consumed_in_line = 0u64;
    while lines.len() < max_lines {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            // End of file: a line without its `\n` is not read yet.
            break;
        }
        let (chunk, found) = match buffer.iter().position(|&b| b == b'\n') {
            Some(i) => (&buffer[..i], true),
            None => (buffer, false),
        };
        let room = max_line_bytes.saturating_sub(current.len());
        if chunk.len() > room {
            cut = true;
        }
        current.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len() + usize::from(found);
        consumed_in_line += used as u64;
        reader.consume(used);
        if found {
            position += consumed_in_line;
            lines.push(Line {
                bytes: std::mem::take(&mut current),
                end: position,
                too_long: cut,
            });
            cut = false;
            consumed_in_line = 0;
        }
    }
    Ok(lines)
}

/// The first line of `path` (a CSV header), if it is whole.
fn read_header(path: &Path, max_line_bytes: usize) -> io::Result<Option<Line>> {
    Ok(read_lines(path, 0, 1, max_line_bytes)?.into_iter().next())
}

/// Splits one CSV line into fields.
fn csv_fields(line: &[u8]) -> Result<Vec<String>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line);
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => Ok(record.iter().map(str::to_owned).collect()),
        Ok(false) => Ok(Vec::new()),
        Err(error) => Err(format!("csv: {error}")),
    }
}

/// A CSV value as JSON: an integer or a finite number when it reads as one, else a string.
fn csv_value(field: &str) -> Value {
    if let Ok(n) = field.parse::<i64>() {
        return Value::from(n);
    }
    match field.parse::<f64>() {
        Ok(x) if x.is_finite() && !field.trim().is_empty() => Value::from(x),
        _ => Value::from(field),
    }
}

/// A CSV line as a JSON object keyed by `header`.
fn csv_record(header: &[String], line: &[u8]) -> Result<Vec<u8>, String> {
    let fields = csv_fields(line)?;
    if fields.len() != header.len() {
        return Err(format!(
            "csv: {} fields, the header has {}",
            fields.len(),
            header.len()
        ));
    }
    let object: Map<String, Value> = header
        .iter()
        .cloned()
        .zip(fields.iter().map(|f| csv_value(f)))
        .collect();
    Ok(Value::Object(object).to_string().into_bytes())
}

/// Whether a file name can be a topic level and is not hidden or temporary.
fn watched(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with(".tmp")
        && !name.contains(['+', '#', '\0'])
}

/// The files of `dir` to look at, in name order, with their sizes (the first
/// [`MAX_FILES`]), and whether there were more.
fn list(dir: &Path) -> io::Result<(Vec<(String, u64)>, bool)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && watched(&name) {
            files.push((name, meta.len()));
        }
    }
    files.sort();
    let more = files.len() > MAX_FILES;
    files.truncate(MAX_FILES);
    Ok((files, more))
}

/// Per file, the offset up to which every line is done.
fn load_checkpoint(path: &Path) -> BTreeMap<String, u64> {
    let read = || -> Result<BTreeMap<String, u64>, String> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut text = String::new();
        io::Read::read_to_string(
            &mut io::Read::take(file, MAX_CHECKPOINT_BYTES + 1),
            &mut text,
        )
        .map_err(|e| e.to_string())?;
        if text.len() as u64 > MAX_CHECKPOINT_BYTES {
            return Err(format!("larger than {MAX_CHECKPOINT_BYTES} bytes"));
        }
        serde_json::from_str(&text).map_err(|e| e.to_string())
    };
    read().unwrap_or_else(|error| {
        // Reading everything again is at least once; refusing to start would stop the
        // pipeline for good.
        tracing::warn!(checkpoint = %path.display(), %error, "unreadable checkpoint: reading the files from their start");
        BTreeMap::new()
    })
}

/// Writes `offsets` to `path` atomically (temporary file, fsync, rename, directory fsync).
fn save_checkpoint(path: &Path, offsets: &BTreeMap<String, u64>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(&serde_json::to_vec(offsets).map_err(io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    File::open(dir)?.sync_all()
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// What the source knows about one file while it runs.
#[derive(Debug, Default)]
struct Progress {
    /// Read up to here (lines handed to the worker).
    read: u64,
    /// The CSV header's fields, once read.
    header: Option<Vec<String>>,
}

/// Reads the directory into the worker and moves the checkpoint as lines are done, until
/// `shutdown` (then the worker drains) or `hard`.
pub(super) async fn run_source(
    config: FilesSourceConfig,
    in_flight: usize,
    items: mpsc::Sender<Item>,
    mut done: mpsc::UnboundedReceiver<u64>,
    shutdown: &CancellationToken,
    hard: &CancellationToken,
    counters: Counters,
) -> Result<(), RuntimeError> {
    let checkpoint_path = config.checkpoint.clone();
    let mut offsets = {
        let path = checkpoint_path.clone();
        blocking(move || Ok(load_checkpoint(&path)))
            .await
            .unwrap_or_default()
    };
    let mut progress: HashMap<String, Progress> = HashMap::new();
    // (file name, offset past the line) of each line not yet done.
    let mut window: Window<(String, u64)> = Window::new();
    let mut items = Some(items);
    let mut pending: std::collections::VecDeque<Item> = std::collections::VecDeque::new();
    let mut dirty = false;
    let mut last_save = tokio::time::Instant::now();
    let mut idle_until: Option<tokio::time::Instant> = None;
    loop {
        // Refill what to send when there is room and nothing is waiting.
        if pending.is_empty() && items.is_some() && window.len() < in_flight && idle_until.is_none()
        {
            let room = in_flight.saturating_sub(window.len()).min(LINES_PER_READ);
            match next_lines(&config, room, &mut offsets, &mut progress, &mut window).await {
                Ok(lines) if !lines.is_empty() => pending.extend(lines),
                Ok(_) => {
                    idle_until =
                        Some(tokio::time::Instant::now() + Duration::from_millis(config.poll_ms));
                    if config.delete_done {
                        delete_done(&config, &mut offsets, &progress, window.len(), &mut dirty)
                            .await;
                    }
                }
                Err(error) => {
                    tracing::warn!(dir = %config.dir.display(), %error, "files source: cannot read; trying again");
                    idle_until =
                        Some(tokio::time::Instant::now() + Duration::from_millis(config.poll_ms));
                }
            }
        }
        if dirty && (last_save.elapsed() >= CHECKPOINT_EVERY || idle_until.is_some()) {
            save(&checkpoint_path, &offsets).await;
            dirty = false;
            last_save = tokio::time::Instant::now();
        }
        // Lines waiting in `pending` are in the window already (read no more than it has room for).
        let can_send = items.is_some() && !pending.is_empty();
        let mut stop = false;
        tokio::select! {
            biased;
            finished = done.recv() => {
                let Some(seq) = finished else {
                    if dirty {
                        save(&checkpoint_path, &offsets).await;
                    }
                    return if shutdown.is_cancelled() {
                        Ok(())
                    } else {
                        Err(RuntimeError::SourceEnded("the worker stopped".to_owned()))
                    };
                };
                window.mark_reported(seq, &mut done);
                for (name, end) in window.take_done() {
                    offsets.insert(name, end);
                    dirty = true;
                }
                counters.lag(window.len());
            }
            () = hard.cancelled() => {
                if dirty {
                    save(&checkpoint_path, &offsets).await;
                }
                return Ok(());
            }
            () = shutdown.cancelled(), if items.is_some() => stop = true,
            permit = reserve(&items), if can_send => {
                let Some(permit) = permit else { return Ok(()) };
                if let Some(item) = pending.pop_front() {
                    counters.records(Outcome::Received, 1);
                    counters.lag(window.len());
                    permit.send(item);
                }
            }
            () = async {
                if let Some(at) = idle_until { tokio::time::sleep_until(at).await }
            }, if idle_until.is_some() => {
                idle_until = None;
            }
        }
        if stop {
            // Stop reading; the worker drains what it has and ends.
            items = None;
            pending.clear();
        }
    }
}

/// A slot on the worker's channel (`None`: the worker is gone); never ready without a
/// channel.
pub(super) async fn reserve(items: &Option<mpsc::Sender<Item>>) -> Option<mpsc::Permit<'_, Item>> {
    match items {
        Some(sender) => sender.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

/// Writes the checkpoint, logging (not failing on) an error: the next write retries.
async fn save(path: &Path, offsets: &BTreeMap<String, u64>) {
    let (path, offsets) = (path.to_owned(), offsets.clone());
    if let Err(error) = blocking(move || save_checkpoint(&path, &offsets)).await {
        tracing::warn!(%error, "files source: cannot write the checkpoint");
    }
}

/// The next lines to hand out, from the first file (in name order) with unread bytes; empty
/// when everything is read. Each line is pushed on `window` as it becomes an item.
async fn next_lines(
    config: &FilesSourceConfig,
    max_lines: usize,
    offsets: &mut BTreeMap<String, u64>,
    progress: &mut HashMap<String, Progress>,
    window: &mut Window<(String, u64)>,
) -> io::Result<Vec<Item>> {
    let dir = config.dir.clone();
    let (files, more) = blocking(move || list(&dir)).await?;
    if !more {
        // Forget what is no longer there (with more files than listed, a file beyond the
        // listing keeps its offset for when it comes into it).
        offsets.retain(|name, _| files.iter().any(|(n, _)| n == name));
        progress.retain(|name, _| files.iter().any(|(n, _)| n == name));
    }
    for (name, size) in files {
        let mut acked = offsets.get(&name).copied().unwrap_or(0);
        let state = progress.entry(name.clone()).or_default();
        if size < acked.max(state.read) {
            // Shorter than what was read: a new file under the old name. From its start.
            tracing::info!(file = %name, "files source: the file shrank; reading it from its start");
            offsets.remove(&name);
            *state = Progress::default();
            acked = 0;
        }
        let start = state.read.max(acked);
        if size <= start {
            continue;
        }
        let path = config.dir.join(&name);
        let topic = format!("files/{name}");
        if config.format == FileFormat::Csv && state.header.is_none() {
            let (p, max) = (path.clone(), config.max_line_bytes);
            let Some(header) = blocking(move || read_header(&p, max)).await? else {
                continue; // not even a whole header line yet
            };
            let fields = csv_fields(&header.bytes).unwrap_or_default();
            state.header = Some(fields);
            if start < header.end {
                // The header is no record: done at once.
                state.read = header.end;
                offsets.insert(name.clone(), header.end.max(acked));
            }
        }
        let start = state.read.max(acked);
        let (p, max) = (path.clone(), config.max_line_bytes);
        let lines = blocking(move || read_lines(&p, start, max_lines, max)).await?;
        if lines.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(lines.len());
        for line in lines {
            state.read = line.end;
            let seq = window.push((name.clone(), line.end));
            let (payload, error) = if line.too_long {
                (
                    line.bytes,
                    Some(format!("line longer than {} bytes", config.max_line_bytes)),
                )
            } else {
                match (&config.format, &state.header) {
                    (FileFormat::Csv, Some(header)) => match csv_record(header, &line.bytes) {
                        Ok(json) => (json, None),
                        Err(reason) => (line.bytes, Some(reason)),
                    },
                    _ => (line.bytes, None),
                }
            };
            out.push(Item {
                seq,
                topic: topic.clone(),
                payload: Bytes::from(payload),
                qos: record::QoS::AtLeastOnce,
                user_properties: record::UserProperties::new(),
                trace: None,
                error,
            });
        }
        return Ok(out);
    }
    Ok(Vec::new())
}

/// Deletes the files read to their end whose every line is done (none in the window).
async fn delete_done(
    config: &FilesSourceConfig,
    offsets: &mut BTreeMap<String, u64>,
    progress: &HashMap<String, Progress>,
    in_window: usize,
    dirty: &mut bool,
) {
    if in_window > 0 {
        return;
    }
    let done: Vec<String> = offsets
        .iter()
        .filter(|(name, offset)| progress.get(*name).is_some_and(|p| p.read == **offset))
        .map(|(name, _)| name.clone())
        .collect();
    for name in done {
        let path = config.dir.join(&name);
        let size = std::fs::metadata(&path).map(|m| m.len()).ok();
        if size == offsets.get(&name).copied() {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    offsets.remove(&name);
                    *dirty = true;
                }
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "files source: cannot delete a done file")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_only_and_long_lines_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n0123456789\n{\"b\":2}\n{\"partial\"").unwrap();
        let lines = read_lines(&path, 0, 100, 8).unwrap();
        let got: Vec<_> = lines
            .iter()
            .map(|l| (l.bytes.clone(), l.end, l.too_long))
            .collect();
        assert_eq!(
            got,
            vec![
                (b"{\"a\":1}".to_vec(), 8, false),
                (b"01234567".to_vec(), 19, true),
                (b"{\"b\":2}".to_vec(), 27, false),
            ]
        );
        assert!(read_lines(&path, 27, 100, 8).unwrap().is_empty());
        assert_eq!(read_lines(&path, 0, 1, 8).unwrap().len(), 1);
    }

    #[test]
    fn csv_lines_become_objects() {
        let header = csv_fields(b"device,temp,note").unwrap();
        let json = csv_record(&header, b"d1,21.5,\"a, b\"").unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&json).unwrap(),
            serde_json::json!({"device": "d1", "temp": 21.5, "note": "a, b"})
        );
        assert!(
            csv_record(&header, b"d1,21.5")
                .unwrap_err()
                .contains("2 fields")
        );
        assert_eq!(csv_value("7"), Value::from(7));
        assert_eq!(csv_value("NaN"), Value::from("NaN"));
        assert_eq!(csv_value(""), Value::from(""));
    }

    #[test]
    fn checkpoint_round_trip_and_damage_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp/x.checkpoint");
        let offsets = BTreeMap::from([("a.jsonl".to_owned(), 42u64)]);
        save_checkpoint(&path, &offsets).unwrap();
        assert_eq!(load_checkpoint(&path), offsets);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load_checkpoint(&path).is_empty());
    }

    #[test]
    fn names_that_cannot_be_topics_or_are_hidden_are_skipped() {
        assert!(watched("readings-1.csv"));
        assert!(!watched(".partial"));
        assert!(!watched("x.tmp"));
        assert!(!watched("a+b"));
        assert!(!watched("a#"));
    }
}
