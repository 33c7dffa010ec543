//! Storage for Myriad.
//!
//! The broker keeps its working state in memory and describes every change
//! to what must survive a restart as a [`Change`]. A [`SessionStore`] commits
//! batches of changes atomically and gives everything back as a [`Snapshot`]
//! at start-up. The broker sends a QoS 1/2 acknowledgement only after the
//! batch that holds the message is committed, so an implementation's
//! durability (fsync per batch, or none) is the broker's.
//!
//! [`MemoryStore`] keeps the snapshot in memory: nothing survives the
//! process, but it follows the same contract, so the broker's restore path
//! is tested against it.
//!
//! [`EmbeddedStore`] keeps it in one [redb](https://docs.rs/redb) file: the
//! default store, no server needed. See [`embedded`] for its layout and for
//! what each durability mode guarantees.

#![warn(missing_docs)]

pub mod embedded;
pub mod format;
mod memory;
mod records;
mod secret_file;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use memory::MemoryStore;
pub use records::{
    Change, MessageRecord, OutboundRecord, OutboundState, SessionRecord, Snapshot, StoredSession,
    SubscriptionRecord, UnixMillis,
};
pub use secret_file::{Existing, write_secret_file};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A change refers to a session the store does not hold.
    #[error("change for unknown session {client_id:?}")]
    UnknownSession {
        /// The client identifier named by the change.
        client_id: String,
    },
    /// The storage medium failed.
    #[error("storage I/O failed on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data could not be read back.
    #[error("stored data in {path} is corrupt: {reason}")]
    Corrupt {
        /// The file involved.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The storage engine refused the operation for another reason (for
    /// example: another process has the file open, or a value is too large).
    #[error("storage engine failed on {path}: {reason}")]
    Engine {
        /// The file involved.
        path: String,
        /// What the engine reported.
        reason: String,
    },
}

/// Where the broker keeps what must survive a restart.
pub trait SessionStore: Send {
    /// Everything committed so far, read at start-up.
    fn load(&mut self) -> Result<Snapshot, StoreError>;

    /// Applies `changes` in order, all or nothing. When this returns `Ok`,
    /// the changes are as durable as the store is configured to make them.
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError>;
}
