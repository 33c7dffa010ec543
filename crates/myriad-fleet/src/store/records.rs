//! Credentials, shadows and presence records: one value per principal or
//! device, which must exist.

use redb::ReadableTable;

use super::error::{FileName, FleetStoreError};
use super::tables::{CREDENTIALS, CREDENTIALS_NAME, PRESENCE, PRESENCE_NAME, SHADOWS, read_table};
use super::{FleetStore, codec, has_key};
use crate::credentials::{PhcLimits, check_phc};
use crate::presence::PresenceRecord;
use crate::registry::DeviceId;

/// Reads a principal's PHC string from any table handle.
pub(super) fn get_credential_in(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    file: &FileName,
    principal: &str,
) -> Result<Option<String>, FleetStoreError> {
    let key = principal.as_bytes();
    let Some(guard) = table.get(key).map_err(|e| file.engine(e))? else {
        return Ok(None);
    };
    codec::decode_credential(guard.value())
        .map(Some)
        .map_err(|why| file.corrupt(CREDENTIALS_NAME, key, why))
}

impl FleetStore {
    /// Sets the password hash (a PHC string, see
    /// [`crate::credentials::hash_password`]) of a device or app client.
    /// Fails with [`FleetStoreError::PrincipalNotFound`] if neither exists,
    /// and with [`FleetStoreError::Credential`] if `phc` is not a usable
    /// Argon2 hash.
    pub fn put_credential(&self, principal: &str, phc: &str) -> Result<(), FleetStoreError> {
        check_phc(phc, &PhcLimits::default())?;
        let file = &self.file;
        self.write(|tables| {
            let key = principal.as_bytes();
            if !has_key(&tables.devices, key, file)? && !has_key(&tables.apps, key, file)? {
                return Err(FleetStoreError::PrincipalNotFound(principal.to_string()));
            }
            let value = codec::encode_credential(phc);
            tables
                .credentials
                .insert(key, value.as_slice())
                .map_err(|e| file.engine(e))?;
            Ok(())
        })
    }

    /// The PHC string of a device or app client, if it has one.
    pub fn get_credential(&self, principal: &str) -> Result<Option<String>, FleetStoreError> {
        self.read(|txn| {
            let table = read_table(txn, CREDENTIALS, &self.file)?;
            get_credential_in(&table, &self.file, principal)
        })
    }

    /// Removes the password of a device or app client (it can no longer
    /// log in with one); whether there was one.
    pub fn delete_credential(&self, principal: &str) -> Result<bool, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let removed = tables
                .credentials
                .remove(principal.as_bytes())
                .map_err(|e| file.engine(e))?;
            Ok(removed.is_some())
        })
    }

    /// Stores the shadow document of `device` (bytes in the caller's own
    /// format). Fails with [`FleetStoreError::DeviceNotFound`].
    pub fn put_shadow(&self, device: &DeviceId, bytes: &[u8]) -> Result<(), FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let key = device.as_str().as_bytes();
            if !has_key(&tables.devices, key, file)? {
                return Err(FleetStoreError::DeviceNotFound(device.clone()));
            }
            tables
                .shadows
                .insert(key, bytes)
                .map_err(|e| file.engine(e))?;
            Ok(())
        })
    }

    /// Stores several shadow documents in one commit (one `fsync`), in
    /// order; a device that no longer exists is skipped. Returns, per
    /// entry, whether it was stored.
    pub fn put_shadows(
        &self,
        shadows: &[(DeviceId, Vec<u8>)],
    ) -> Result<Vec<bool>, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let mut stored = Vec::with_capacity(shadows.len());
            for (device, bytes) in shadows {
                let key = device.as_str().as_bytes();
                if !has_key(&tables.devices, key, file)? {
                    stored.push(false);
                    continue;
                }
                tables
                    .shadows
                    .insert(key, bytes.as_slice())
                    .map_err(|e| file.engine(e))?;
                stored.push(true);
            }
            Ok(stored)
        })
    }

    /// The shadow bytes of `device`, if stored.
    pub fn get_shadow(&self, device: &DeviceId) -> Result<Option<Vec<u8>>, FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let table = read_table(txn, SHADOWS, file)?;
            let value = table
                .get(device.as_str().as_bytes())
                .map_err(|e| file.engine(e))?;
            Ok(value.map(|v| v.value().to_vec()))
        })
    }

    /// Deletes the shadow of `device`; whether there was one.
    pub fn delete_shadow(&self, device: &DeviceId) -> Result<bool, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let removed = tables
                .shadows
                .remove(device.as_str().as_bytes())
                .map_err(|e| file.engine(e))?;
            Ok(removed.is_some())
        })
    }

    /// Stores the presence record of its device. Fails with
    /// [`FleetStoreError::DeviceNotFound`] (a device deleted while
    /// connected leaves no stray record).
    pub fn put_presence(&self, record: &PresenceRecord) -> Result<(), FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let key = record.device.as_str().as_bytes();
            if !has_key(&tables.devices, key, file)? {
                return Err(FleetStoreError::DeviceNotFound(record.device.clone()));
            }
            let value = codec::encode_presence(record).map_err(FleetStoreError::Encode)?;
            tables
                .presence
                .insert(key, value.as_slice())
                .map_err(|e| file.engine(e))?;
            Ok(())
        })
    }

    /// Stores many presence records in one transaction (after
    /// [`crate::presence::PresenceTracker::recover`], or batched by the
    /// caller); records of devices that no longer exist are skipped.
    /// Returns how many were written.
    pub fn put_presence_batch(&self, records: &[PresenceRecord]) -> Result<usize, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let mut written = 0;
            for record in records {
                let key = record.device.as_str().as_bytes();
                if !has_key(&tables.devices, key, file)? {
                    continue;
                }
                let value = codec::encode_presence(record).map_err(FleetStoreError::Encode)?;
                tables
                    .presence
                    .insert(key, value.as_slice())
                    .map_err(|e| file.engine(e))?;
                written += 1;
            }
            Ok(written)
        })
    }

    /// The stored presence record of `device`.
    pub fn get_presence(
        &self,
        device: &DeviceId,
    ) -> Result<Option<PresenceRecord>, FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let table = read_table(txn, PRESENCE, file)?;
            let key = device.as_str().as_bytes();
            let Some(guard) = table.get(key).map_err(|e| file.engine(e))? else {
                return Ok(None);
            };
            codec::decode_presence(key, guard.value())
                .map(Some)
                .map_err(|why| file.corrupt(PRESENCE_NAME, key, why))
        })
    }

    /// Every stored presence record, in device id order (for
    /// [`crate::presence::PresenceTracker::recover`] at start-up).
    pub fn list_presence(&self) -> Result<Vec<PresenceRecord>, FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let table = read_table(txn, PRESENCE, file)?;
            let mut records = Vec::new();
            for row in table.iter().map_err(|e| file.engine(e))? {
                let (key, value) = row.map_err(|e| file.engine(e))?;
                let record = codec::decode_presence(key.value(), value.value())
                    .map_err(|why| file.corrupt(PRESENCE_NAME, key.value(), why))?;
                records.push(record);
            }
            Ok(records)
        })
    }
}
