//! The fleet's embedded store: one [redb](https://docs.rs/redb) file,
//! `{dir}/fleet.redb`.
//!
//! # Tables
//!
//! | table | key | value |
//! |---|---|---|
//! | `devices` | device id | [`Device`] (less its id) |
//! | `apps` | app id | [`AppClient`] (less its id) |
//! | `credentials` | device or app id | PHC string |
//! | `shadows` | device id | opaque bytes, the caller's own format |
//! | `presence` | device id | last [`PresenceRecord`] |
//! | `device_certificates` | SHA-256 fingerprint | [`crate::certs::DeviceCertificate`] |
//! | `device_certificates_by_device` | device id, `0x00`, fingerprint | empty |
//! | `certificate_authorities` | SHA-256 fingerprint | [`crate::certs::CertificateAuthority`] |
//! | `devices_by_group` | group, `0x00`, device id | empty |
//! | `devices_by_attribute` | attribute key, `0x00`, value, `0x00`, device id | empty |
//! | `meta` | `format`; `device_indexes` | the layout version; `1` once the two device indexes are complete |
//! | `commands`, `commands_by_device`, `commands_active`, `command_batches` | see `store/commands.rs` | command records (JSON) |
//! | `ota_artifacts`, `ota_rollouts`, `ota_rollout_devices` | see [`ota`] | firmware artifacts and rollouts |
//! | `pipelines` | pipeline name | [`StoredPipeline`] (a pipeline defined over the API) |
//! | `operator_users`, `operator_sessions`, `operator_tokens`, `operator_audit` | see `store/operators.rs` | operator accounts and the audit log |
//!
//! Keys are the ids' UTF-8 bytes, so every table iterates in id order and
//! an id prefix is one range scan. Values (but shadows) start with a
//! format-version byte followed by postcard; a value that does not decode
//! is a [`FleetStoreError::Corrupt`] naming the table and key, never a
//! panic. Device ids and app ids share one namespace: creating one with an
//! id the other kind uses fails with [`FleetStoreError::IdTaken`], so a
//! login name identifies one principal ([`FleetStore::login_record`]).
//! Deleting a device also deletes its credential, shadow, presence record
//! and certificates in the same transaction.
//!
//! The two device indexes (`store/index.rs`) are written in the transaction
//! of every device write, so [`FleetStore::devices_in_group`],
//! [`FleetStore::devices_with_attribute`], [`FleetStore::list_groups`] and a
//! [`FleetStore::list_devices`] filtered by group or attribute read only the
//! matching devices. A file written before the indexes existed gets them
//! built at open, in one transaction.
//!
//! # Durability and cost
//!
//! Every write method is one redb write transaction, committed with
//! `fsync` (`Durability::Immediate`) before it returns: a few hundred to a
//! few thousand commits per second depending on the disk. Bulk writes go
//! through [`FleetStore::insert_devices_batch`] and
//! [`FleetStore::put_presence_batch`] (one commit for many rows).
//!
//! # Threads
//!
//! `FleetStore` is `Send + Sync`; share it with an `Arc`. Reads run in
//! parallel, writes are serialized by redb. Every method blocks on disk
//! I/O: async callers run them in `tokio::task::spawn_blocking`.

mod apps;
mod certs;
mod codec;
mod commands;
mod devices;
mod error;
mod index;
mod login;
mod operators;
pub mod ota;
mod pipelines;
mod records;
mod tables;

use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

use devices::get_in as devices_get;
pub use devices::{LIST_SCAN_BUDGET, Upserted};
pub use error::FleetStoreError;
pub use index::{IdPage, MAX_INDEX_PAGE};
pub use login::LoginRecord;
pub use operators::{AUDIT_SCAN_BUDGET, AuditPage, OperatorChange, OperatorRecords};
pub use pipelines::StoredPipeline;

#[cfg(doc)]
use crate::{presence::PresenceRecord, registry::AppClient, registry::Device};
use error::FileName;
use myriad_store::format::{FormatError, ensure_format};
use tables::{FORMAT, Tables};

/// The name of the database file inside the store's directory.
pub const FILE_NAME: &str = "fleet.redb";

/// The registry, credentials, shadows and presence records in one redb
/// file (see the [module documentation](self)).
pub struct FleetStore {
    db: Database,
    path: PathBuf,
    file: FileName,
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// redb's page cache for `fleet.redb`. redb keeps every page it writes in
/// its cache (1 GiB by default), so without a smaller bound a fan-out of
/// 100,000 commands grew the process by ~110 MiB that stayed. Reads past the
/// cache still hit the kernel's page cache.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

impl FleetStore {
    /// Opens the store in `dir` (created if missing), in the file
    /// `dir/fleet.redb` (created if missing). Verifies the checksums of the
    /// whole file and repairs it after a crash.
    ///
    /// Fails with [`FleetStoreError::Io`] or [`FleetStoreError::CorruptFile`]
    /// naming the file if it cannot be read, is not a redb file, is damaged
    /// or has an unknown layout, and with [`FleetStoreError::Engine`] if
    /// another process has it open.
    pub fn open(dir: &Path) -> Result<FleetStore, FleetStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| FleetStoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let file = FileName(path.display().to_string());
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| file.engine(e))?;
        check_format(&db, &file)?;
        index::ensure(&db, &file)?;
        Ok(FleetStore { db, path, file })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the file, reporting any error (dropping the store closes it
    /// too, silently).
    pub fn close(self) -> Result<(), FleetStoreError> {
        let FleetStore { db, file, .. } = self;
        db.close().map_err(|e| file.engine(e))
    }

    /// Runs `f` in one write transaction over every table; commits (with
    /// `fsync`) if it returns `Ok`, writes nothing if it returns `Err`.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, FleetStoreError>,
    ) -> Result<T, FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        let result = Tables::open(&txn, file).and_then(|mut tables| f(&mut tables));
        match result {
            Ok(value) => {
                txn.commit().map_err(|e| file.engine(e))?;
                Ok(value)
            }
            Err(err) => {
                // Nothing of the transaction is written either way.
                let _ = txn.abort();
                Err(err)
            }
        }
    }

    /// Runs `f` in one read transaction (a consistent snapshot).
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, FleetStoreError>,
    ) -> Result<T, FleetStoreError> {
        let txn = self.db.begin_read().map_err(|e| self.file.engine(e))?;
        f(&txn)
    }
}

/// Creates the tables and the format entry in a new file; checks the
/// format of an existing one.
fn check_format(db: &Database, file: &FileName) -> Result<(), FleetStoreError> {
    let txn = db.begin_write().map_err(|e| file.engine(e))?;
    match ensure_format(&txn, FORMAT) {
        Ok(()) => {}
        Err(FormatError::Engine(e)) => return Err(file.engine(e)),
        Err(FormatError::Unknown { found }) => {
            return Err(FleetStoreError::CorruptFile {
                path: file.0.clone(),
                reason: format!(
                    "unknown fleet store format {found:?} (this build reads [{FORMAT}])"
                ),
            });
        }
    }
    Tables::open(&txn, file)?;
    txn.commit().map_err(|e| file.engine(e))
}

/// Whether `table` has a row under `key`.
fn has_key(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
    file: &FileName,
) -> Result<bool, FleetStoreError> {
    Ok(table.get(key).map_err(|e| file.engine(e))?.is_some())
}
