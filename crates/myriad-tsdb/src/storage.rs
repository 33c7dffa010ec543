//! The storage boundary: named append-only files the caller backs with real files (fsynced as
//! its policy says) or, in tests, with memory.

use std::collections::BTreeMap;

/// Named byte files. The engine never calls it itself; glue code and tests move the bytes the
/// engine produces (WAL records, later sealed blocks) through it.
pub trait Storage {
    /// The implementation's error.
    type Error: std::error::Error;
    /// Appends bytes to `name`, creating it if needed.
    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), Self::Error>;
    /// The whole content of `name` (empty if absent).
    fn read(&self, name: &str) -> Result<Vec<u8>, Self::Error>;
    /// Cuts `name` to `len` bytes (no-op if shorter).
    fn truncate(&mut self, name: &str, len: usize) -> Result<(), Self::Error>;
    /// Removes `name` (no-op if absent).
    fn remove(&mut self, name: &str) -> Result<(), Self::Error>;
    /// Names of all files, sorted.
    fn list(&self) -> Result<Vec<String>, Self::Error>;
}

/// In-memory [`Storage`] for tests.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    files: BTreeMap<String, Vec<u8>>,
}

impl MemStorage {
    /// Mutable access to a file's bytes (to simulate torn or corrupted writes in tests).
    pub fn file_mut(&mut self, name: &str) -> &mut Vec<u8> {
        self.files.entry(name.to_owned()).or_default()
    }
}

impl Storage for MemStorage {
    type Error = std::convert::Infallible;

    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), Self::Error> {
        self.file_mut(name).extend_from_slice(bytes);
        Ok(())
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, Self::Error> {
        Ok(self.files.get(name).cloned().unwrap_or_default())
    }

    fn truncate(&mut self, name: &str, len: usize) -> Result<(), Self::Error> {
        if let Some(f) = self.files.get_mut(name) {
            f.truncate(len);
        }
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), Self::Error> {
        self.files.remove(name);
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>, Self::Error> {
        Ok(self.files.keys().cloned().collect())
    }
}
