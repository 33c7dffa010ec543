//! Bulk provisioning: devices streamed from CSV or JSON lines into the
//! store.
//!
//! # Formats
//!
//! **CSV** ([`ImportFormat::Csv`]): a header row naming the columns, in any
//! order; `id` is required, the others optional:
//!
//! ```text
//! id,name,enabled,groups,attributes,password,password_hash
//! pump-1,Pump 1,true,plant-a;pumps,site=berlin;floor=2,,"$argon2id$v=19$m=19456,t=2,p=1$..."
//! ```
//!
//! PHC strings contain commas (`m=19456,t=2,p=1`): quote the
//! `password_hash` field (`"$argon2id$v=19$m=19456,t=2,p=1$..."`), as any
//! CSV writer does. `enabled` is `true`/`false`/`1`/`0`/`yes`/`no` (empty:
//! `true`);
//! `groups` is `;`-separated; `attributes` is `key=value` pairs separated
//! by `;` (a value may contain `=`, not `;`). Fields are trimmed. An
//! unknown or repeated column stops the import before any row (a typo in
//! a header must not silently drop a column).
//!
//! **JSON lines** ([`ImportFormat::JsonLines`]): one object per line, the
//! fields of [`NewDevice`] plus optional `password` and `password_hash`:
//!
//! ```text
//! {"id":"pump-1","name":"Pump 1","groups":["pumps"],"attributes":{"site":"berlin"},"password_hash":"$argon2id$..."}
//! ```
//!
//! Unknown fields make the row bad; blank lines are skipped; a line longer
//! than [`MAX_LINE_LEN`] is a bad row.
//!
//! # Policy
//!
//! - Good rows land, bad rows are reported with their 1-based line number,
//!   the id if it could be read, and a message ([`RowError`]). A row is bad
//!   if it does not parse, breaks a registry limit, gives both `password`
//!   and `password_hash`, has a `password_hash` that is not an acceptable
//!   Argon2 PHC string ([`crate::credentials::check_phc`]), or has an id
//!   that exists already (in the store or earlier in the file).
//! - With [`ImportOptions::upsert`], a row whose id is an existing device
//!   updates it instead of being bad: its name, attributes, groups and
//!   `enabled` become the row's (an absent or empty field gives the
//!   default, as for a new device), its creation time stays, and its
//!   password is replaced only when the row gives one. Devices whose
//!   password changed or that were disabled are listed in
//!   [`ImportReport::revoked`] for the caller to close their connections.
//! - After more than [`ImportOptions::max_errors`] bad rows (default
//!   1,000) the import stops: the rows read so far that were good still
//!   land, [`ImportReport::truncated_errors`] is set and
//!   [`ImportReport::stopped_at_line`] says where reading stopped.
//! - Rows are inserted in batches of [`ImportOptions::batch_size`]
//!   (default 1,000), one write transaction each: memory is bounded by one
//!   batch, whatever the file's size, and an import that fails half-way
//!   (I/O error) keeps the batches committed before.
//! - A plain `password` is hashed here with Argon2id
//!   ([`ImportOptions::hash_params`]), tens of milliseconds each: 100,000
//!   such rows take most of an hour of CPU. Bulk files should carry
//!   `password_hash` (made offline, e.g. by the provisioning tool), which
//!   costs only a parse.
//!
//! The import is synchronous and blocking: run it on a blocking thread.

mod csv_rows;
mod jsonl_rows;
mod row;

use std::io::BufRead;

use crate::credentials::HashParams;
use crate::registry::{DeviceId, NewDevice};
use crate::store::{FleetStore, FleetStoreError, Upserted};
use row::{RawRow, Source};

pub use jsonl_rows::MAX_LINE_LEN;

/// The file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

/// How to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// The file's format.
    pub format: ImportFormat,
    /// Bad rows tolerated; one more stops the import (default 1,000).
    pub max_errors: usize,
    /// Rows per write transaction (default 1,000).
    pub batch_size: usize,
    /// Argon2 costs for rows with a plain `password`.
    pub hash_params: HashParams,
    /// Creation time of the imported devices (unix ms).
    pub now: u64,
    /// Update existing devices instead of refusing their rows.
    pub upsert: bool,
}

impl ImportOptions {
    /// The defaults for `format`, creating devices at `now`.
    pub fn new(format: ImportFormat, now: u64) -> Self {
        ImportOptions {
            format,
            max_errors: 1_000,
            batch_size: 1_000,
            hash_params: HashParams::default(),
            now,
            upsert: false,
        }
    }
}

/// A bad row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// Its 1-based line number in the file.
    pub line: u64,
    /// Its id, if one could be read.
    pub id: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Devices created.
    pub imported: u64,
    /// Existing devices updated (with [`ImportOptions::upsert`]).
    pub updated: u64,
    /// Devices updated whose password changed or that were disabled
    /// (`true`: disabled): their open connections must be closed.
    pub revoked: Vec<(DeviceId, bool)>,
    /// Bad rows, in file order (at most `max_errors`).
    pub failed: Vec<RowError>,
    /// Whether the import stopped because of too many bad rows (so
    /// `failed` is not the whole story and later rows were not read).
    pub truncated_errors: bool,
    /// The line at which reading stopped, when it stopped early.
    pub stopped_at_line: Option<u64>,
}

/// Why an import could not go on. Batches committed before stay.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The CSV header is missing or names an unknown or repeated column.
    #[error("CSV header: {0}")]
    Header(String),
    /// The input could not be read.
    #[error("reading line {line}: {source} ({imported} devices imported before)")]
    Read {
        /// Where.
        line: u64,
        /// The I/O error.
        source: std::io::Error,
        /// Devices committed before the error.
        imported: u64,
    },
    /// The store failed (not a bad row: the transaction itself).
    #[error("store: {source} ({imported} devices imported before)")]
    Store {
        /// The store's error.
        source: FleetStoreError,
        /// Devices committed before the error.
        imported: u64,
    },
}

/// The batch being filled and the report so far.
struct Importer<'a> {
    store: &'a FleetStore,
    options: &'a ImportOptions,
    rows: Vec<(NewDevice, Option<String>)>,
    lines: Vec<u64>,
    report: ImportReport,
}

impl Importer<'_> {
    /// Records a bad row; `false` once there are too many.
    fn bad(&mut self, error: RowError) -> bool {
        if self.report.failed.len() >= self.options.max_errors {
            self.report.truncated_errors = true;
            self.report.stopped_at_line = Some(error.line);
            return false;
        }
        self.report.failed.push(error);
        true
    }

    /// The report, bad rows in line order (rows refused by the store are
    /// found only when their batch is written, after later parse errors).
    fn finish(mut self) -> ImportReport {
        self.report.failed.sort_by_key(|e| e.line);
        self.report
    }

    /// Inserts the batch; `false` once there are too many bad rows.
    fn flush(&mut self) -> Result<bool, ImportError> {
        if self.rows.is_empty() {
            return Ok(true);
        }
        let results: Vec<Result<Upserted, FleetStoreError>> = if self.options.upsert {
            self.store
                .upsert_devices_batch(&self.rows, self.options.now)
        } else {
            self.store
                .insert_devices_batch(&self.rows, self.options.now)
                .map(|results| {
                    results
                        .into_iter()
                        .map(|r| r.map(|()| Upserted::Created))
                        .collect()
                })
        }
        .map_err(|source| ImportError::Store {
            source,
            imported: self.report.imported,
        })?;
        let rows = std::mem::take(&mut self.rows);
        let lines = std::mem::take(&mut self.lines);
        let last_line = lines.last().copied();
        let mut go_on = true;
        for ((result, (new, _)), line) in results.into_iter().zip(rows).zip(lines) {
            match result {
                Ok(Upserted::Created) => self.report.imported += 1,
                Ok(Upserted::Updated {
                    password_changed,
                    disabled,
                }) => {
                    self.report.updated += 1;
                    if password_changed || disabled {
                        self.report.revoked.push((new.id, disabled));
                    }
                }
                Err(err) if go_on => {
                    go_on = self.bad(RowError {
                        line,
                        id: Some(new.id.into_string()),
                        message: err.to_string(),
                    });
                }
                Err(_) => {}
            }
        }
        if !go_on {
            // Reading went on past the row that broke the limit.
            self.report.stopped_at_line = last_line;
        }
        Ok(go_on)
    }
}

/// Imports devices from `reader` into `store` (see the
/// [module documentation](self) for the formats and the policy).
pub fn import(
    store: &FleetStore,
    reader: impl BufRead,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let mut source: Box<dyn Source + '_> = match options.format {
        ImportFormat::Csv => Box::new(csv_rows::CsvRows::new(reader)?),
        ImportFormat::JsonLines => Box::new(jsonl_rows::JsonRows::new(reader)),
    };
    let batch_size = options.batch_size.max(1);
    let mut importer = Importer {
        store,
        options,
        rows: Vec::with_capacity(batch_size),
        lines: Vec::with_capacity(batch_size),
        report: ImportReport::default(),
    };
    loop {
        let imported =
            importer.report.imported + importer.report.updated + importer.rows.len() as u64;
        let Some((line, parsed)) = source.next_row(imported)? else {
            break;
        };
        let converted = parsed.and_then(|raw: RawRow| {
            let id = raw.id.clone();
            raw.into_new_device(&options.hash_params)
                .map_err(|message| (Some(id), message))
        });
        match converted {
            Ok((new, phc)) => {
                importer.rows.push((new, phc));
                importer.lines.push(line);
                if importer.rows.len() >= batch_size && !importer.flush()? {
                    return Ok(importer.finish());
                }
            }
            Err((id, message)) => {
                if !importer.bad(RowError { line, id, message }) {
                    importer.flush()?;
                    return Ok(importer.finish());
                }
            }
        }
    }
    importer.flush()?;
    Ok(importer.finish())
}
