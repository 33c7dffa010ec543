//! Turning redb's errors and undecodable values into [`StoreError`]s that
//! name the database file.

use crate::StoreError;

use super::wire::Malformed;

/// The database file, as errors name it.
#[derive(Debug, Clone)]
pub(super) struct FileName(pub(super) String);

impl FileName {
    /// An error of the database engine.
    pub(super) fn engine(&self, err: impl Into<redb::Error>) -> StoreError {
        let path = self.0.clone();
        match err.into() {
            redb::Error::Io(source) => StoreError::Io { path, source },
            redb::Error::Corrupted(reason) => StoreError::Corrupt { path, reason },
            redb::Error::RepairAborted => StoreError::Corrupt {
                path,
                reason: "the file needs a repair, which was aborted".into(),
            },
            redb::Error::UpgradeRequired(version) => StoreError::Corrupt {
                path,
                reason: format!("file format {version} needs an upgrade this build cannot do"),
            },
            redb::Error::TableTypeMismatch { table, .. }
            | redb::Error::TableIsMultimap(table)
            | redb::Error::TableIsNotMultimap(table) => StoreError::Corrupt {
                path,
                reason: format!("table {table} does not have the expected layout"),
            },
            other => StoreError::Engine {
                path,
                reason: other.to_string(),
            },
        }
    }

    /// A stored value or key that does not decode.
    pub(super) fn corrupt(&self, table: &str, why: Malformed) -> StoreError {
        StoreError::Corrupt {
            path: self.0.clone(),
            reason: format!("table {table}: {}", why.0),
        }
    }
}
