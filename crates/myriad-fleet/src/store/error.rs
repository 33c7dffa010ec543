//! What can go wrong in the [`super::FleetStore`].

use crate::credentials::CredentialError;
use crate::registry::{AppId, DeviceId, ValidationError};

/// An error of the fleet store. Storage errors name the database file;
/// a record that does not decode names its table and key.
#[derive(Debug, thiserror::Error)]
pub enum FleetStoreError {
    /// The file or its directory cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is damaged or not a fleet store.
    #[error("{path}: {reason}")]
    CorruptFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// One stored record does not decode.
    #[error("{path}: table {table}, key {key:?}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// The table.
        table: &'static str,
        /// The record's key (lossy UTF-8).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Another error of the database engine (e.g. the file is open in
    /// another process).
    #[error("{path}: {reason}")]
    Engine {
        /// The file.
        path: String,
        /// The engine's message.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode a record: {0}")]
    Encode(String),
    /// A device with this id exists already.
    #[error("device {0} already exists")]
    DeviceExists(DeviceId),
    /// No device with this id.
    #[error("device {0} not found")]
    DeviceNotFound(DeviceId),
    /// An app client with this id exists already.
    #[error("app client {0} already exists")]
    AppExists(AppId),
    /// No app client with this id.
    #[error("app client {0} not found")]
    AppNotFound(AppId),
    /// The id is taken by the other kind of principal (device ids and app
    /// ids share one namespace).
    #[error("id {id} is already used by {by}")]
    IdTaken {
        /// The id.
        id: String,
        /// `"a device"` or `"an app client"`.
        by: &'static str,
    },
    /// No device or app client with this id.
    #[error("no device or app client {0}")]
    PrincipalNotFound(String),
    /// A certificate or CA that cannot be added or changed as asked
    /// (already registered, revoked, over the limit).
    #[error("{0}")]
    CertificateConflict(String),
    /// No such certificate or CA.
    #[error("{0}")]
    CertificateNotFound(String),
    /// An artifact a rollout that has not finished still installs.
    #[error("artifact {artifact} is used by rollout {rollout}, which has not finished")]
    ArtifactInUse {
        /// The artifact.
        artifact: String,
        /// A rollout using it.
        rollout: String,
    },
    /// The record is not valid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The password hash is not usable.
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// The database file, as errors name it.
#[derive(Debug, Clone)]
pub(super) struct FileName(pub(super) String);

impl FileName {
    /// An error of the database engine.
    pub(super) fn engine(&self, err: impl Into<redb::Error>) -> FleetStoreError {
        let path = self.0.clone();
        match err.into() {
            redb::Error::Io(source) => FleetStoreError::Io { path, source },
            redb::Error::Corrupted(reason) => FleetStoreError::CorruptFile { path, reason },
            redb::Error::RepairAborted => FleetStoreError::CorruptFile {
                path,
                reason: "the file needs a repair, which was aborted".into(),
            },
            redb::Error::UpgradeRequired(version) => FleetStoreError::CorruptFile {
                path,
                reason: format!("file format {version} needs an upgrade this build cannot do"),
            },
            redb::Error::TableTypeMismatch { table, .. }
            | redb::Error::TableIsMultimap(table)
            | redb::Error::TableIsNotMultimap(table) => FleetStoreError::CorruptFile {
                path,
                reason: format!("table {table} does not have the expected layout"),
            },
            other => FleetStoreError::Engine {
                path,
                reason: other.to_string(),
            },
        }
    }

    /// A stored record that does not decode.
    pub(super) fn corrupt(
        &self,
        table: &'static str,
        key: &[u8],
        reason: String,
    ) -> FleetStoreError {
        FleetStoreError::Corrupt {
            path: self.0.clone(),
            table,
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        }
    }
}
