//! Devices: create, read, update, delete, search, bulk insert.

use std::ops::Bound;

use redb::{ReadableTable, ReadableTableMetadata};

use super::error::{FileName, FleetStoreError};
use super::tables::{
    DEVICES, DEVICES_BY_ATTRIBUTE, DEVICES_BY_GROUP, DEVICES_NAME, Tables, read_table,
};
use super::{FleetStore, codec, has_key, index};
use crate::credentials::{PhcLimits, check_phc};
use crate::registry::{Device, DeviceId, DevicePatch, DeviceQuery, NewDevice, Page};

/// Most rows one [`FleetStore::list_devices`] call reads. A search whose
/// filters match few devices returns a short (possibly empty) page with a
/// `next` cursor after this many rows, so one request never scans a
/// million-device table.
pub const LIST_SCAN_BUDGET: usize = 50_000;

/// Inserts a new device (and its credential), checking everything first
/// so that a failed row writes nothing.
fn insert_new(
    tables: &mut Tables<'_>,
    file: &FileName,
    new: &NewDevice,
    phc: Option<&str>,
    now: u64,
) -> Result<(), FleetStoreError> {
    check_row(new, phc)?;
    let key = new.id.as_str().as_bytes();
    if has_key(&tables.devices, key, file)? {
        return Err(FleetStoreError::DeviceExists(new.id.clone()));
    }
    if has_key(&tables.apps, key, file)? {
        return Err(FleetStoreError::IdTaken {
            id: new.id.to_string(),
            by: "an app client",
        });
    }
    put_device(tables, file, new, None, phc, now, now)
}

/// The checks of a row that need no table: its fields and its PHC string.
fn check_row(new: &NewDevice, phc: Option<&str>) -> Result<(), FleetStoreError> {
    new.validate()?;
    if let Some(phc) = phc {
        check_phc(phc, &PhcLimits::default())?;
    }
    Ok(())
}

/// Writes the record of `new` (created at `created_at`, updated `now`) and,
/// when given, its credential, replacing what is stored under its id.
fn put_device(
    tables: &mut Tables<'_>,
    file: &FileName,
    new: &NewDevice,
    old: Option<&Device>,
    phc: Option<&str>,
    created_at: u64,
    now: u64,
) -> Result<(), FleetStoreError> {
    let key = new.id.as_str().as_bytes();
    let value = codec::encode_device(
        &new.name,
        &new.attributes,
        &new.groups,
        new.enabled,
        created_at,
        now,
    )
    .map_err(FleetStoreError::Encode)?;
    tables
        .devices
        .insert(key, value.as_slice())
        .map_err(|e| file.engine(e))?;
    index::reindex(
        tables,
        file,
        new.id.as_str(),
        old.map(index::of),
        Some((&new.groups, &new.attributes)),
    )?;
    if let Some(phc) = phc {
        let value = codec::encode_credential(phc);
        tables
            .credentials
            .insert(key, value.as_slice())
            .map_err(|e| file.engine(e))?;
    }
    Ok(())
}

/// The index range a query's devices are under: its group's, else its
/// attribute value's, else `None` (walk the devices).
fn index_prefix(query: &DeviceQuery) -> Option<Vec<u8>> {
    if let Some(g) = &query.group {
        return Some(format!("{g}\0").into_bytes());
    }
    query
        .attribute
        .as_ref()
        .map(|(k, v)| format!("{k}\0{v}\0").into_bytes())
}

/// How many `0x00` separators [`index_prefix`] puts in the prefix of `query`.
fn prefix_parts(query: &DeviceQuery) -> usize {
    if query.group.is_some() { 1 } else { 2 }
}

/// One page of groups: (name, device count) in name order, and the cursor
/// of the next page.
pub type GroupPage = (Vec<(String, u64)>, Option<String>);

/// What [`FleetStore::upsert_devices_batch`] did with one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// A new device.
    Created,
    /// An existing device was updated.
    Updated {
        /// Its password was replaced.
        password_changed: bool,
        /// It was enabled and is now disabled.
        disabled: bool,
    },
}

/// Creates the device of `new`, or replaces the fields of the existing
/// one (its creation time kept; its password replaced only when `phc` is
/// given), checking everything first so that a failed row writes nothing.
fn upsert(
    tables: &mut Tables<'_>,
    file: &FileName,
    new: &NewDevice,
    phc: Option<&str>,
    now: u64,
) -> Result<Upserted, FleetStoreError> {
    let Some(old) = get_in(&tables.devices, file, &new.id)? else {
        return insert_new(tables, file, new, phc, now).map(|()| Upserted::Created);
    };
    check_row(new, phc)?;
    put_device(tables, file, new, Some(&old), phc, old.created_at, now)?;
    Ok(Upserted::Updated {
        password_changed: phc.is_some(),
        disabled: old.enabled && !new.enabled,
    })
}

/// Reads and decodes one device from any table handle.
pub(super) fn get_in(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    file: &FileName,
    id: &DeviceId,
) -> Result<Option<Device>, FleetStoreError> {
    let key = id.as_str().as_bytes();
    let Some(guard) = table.get(key).map_err(|e| file.engine(e))? else {
        return Ok(None);
    };
    codec::decode_device(key, guard.value())
        .map(Some)
        .map_err(|why| file.corrupt(DEVICES_NAME, key, why))
}

impl FleetStore {
    /// Creates a device at `now` (unix ms). Fails with
    /// [`FleetStoreError::DeviceExists`] if the id is taken by a device,
    /// [`FleetStoreError::IdTaken`] if by an app client, and
    /// [`FleetStoreError::Invalid`] if a field breaks the limits.
    pub fn create_device(&self, new: &NewDevice, now: u64) -> Result<Device, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| insert_new(tables, file, new, None, now))?;
        Ok(new.clone().into_device(now)?)
    }

    /// The device `id`, if it exists.
    pub fn get_device(&self, id: &DeviceId) -> Result<Option<Device>, FleetStoreError> {
        self.read(|txn| get_in(&read_table(txn, DEVICES, &self.file)?, &self.file, id))
    }

    /// The devices with the ids `ids` (same order; `None` for an id no device has), read in
    /// one transaction: point lookups by id, for callers that hold many ids (the telemetry
    /// labels of a query's series).
    pub fn get_devices(&self, ids: &[&str]) -> Result<Vec<Option<Device>>, FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let table = read_table(txn, DEVICES, file)?;
            ids.iter()
                .map(|id| {
                    let key = id.as_bytes();
                    let Some(guard) = table.get(key).map_err(|e| file.engine(e))? else {
                        return Ok(None);
                    };
                    codec::decode_device(key, guard.value())
                        .map(Some)
                        .map_err(|why| file.corrupt(DEVICES_NAME, key, why))
                })
                .collect()
        })
    }

    /// Applies `patch` to device `id` at `now`; returns the updated device.
    pub fn update_device(
        &self,
        id: &DeviceId,
        patch: &DevicePatch,
        now: u64,
    ) -> Result<Device, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let device = get_in(&tables.devices, file, id)?
                .ok_or_else(|| FleetStoreError::DeviceNotFound(id.clone()))?;
            let updated = patch.apply(&device, now)?;
            let value = codec::encode_device_record(&updated).map_err(FleetStoreError::Encode)?;
            tables
                .devices
                .insert(id.as_str().as_bytes(), value.as_slice())
                .map_err(|e| file.engine(e))?;
            index::reindex(
                tables,
                file,
                id.as_str(),
                Some(index::of(&device)),
                Some(index::of(&updated)),
            )?;
            Ok(updated)
        })
    }

    /// Deletes device `id` with its credential, shadow and presence record
    /// (one transaction); returns the deleted device.
    pub fn delete_device(&self, id: &DeviceId) -> Result<Device, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let device = get_in(&tables.devices, file, id)?
                .ok_or_else(|| FleetStoreError::DeviceNotFound(id.clone()))?;
            let key = id.as_str().as_bytes();
            for table in [
                &mut tables.devices,
                &mut tables.credentials,
                &mut tables.shadows,
                &mut tables.presence,
            ] {
                table.remove(key).map_err(|e| file.engine(e))?;
            }
            super::certs::remove_device_certificates(tables, file, id)?;
            index::reindex(tables, file, id.as_str(), Some(index::of(&device)), None)?;
            Ok(device)
        })
    }

    /// How many devices there are.
    pub fn count_devices(&self) -> Result<u64, FleetStoreError> {
        self.read(|txn| {
            read_table(txn, DEVICES, &self.file)?
                .len()
                .map_err(|e| self.file.engine(e))
        })
    }

    /// One page of the devices matching `query`, in id order after
    /// `query.after`. Walks the id index from the cursor (an `id_prefix`
    /// narrows the walk to that key range), filters, and stops at
    /// `query.limit` matches or after [`LIST_SCAN_BUDGET`] rows, whichever
    /// comes first; `next` is `Some` unless the walk reached the end.
    ///
    /// With a `group` (or else an `attribute`) filter the walk goes through
    /// that index instead (the group's or attribute value's devices in id
    /// order, each read by id), under the same budget.
    pub fn list_devices(&self, query: &DeviceQuery) -> Result<Page<Device>, FleetStoreError> {
        query.validate()?;
        if let Some(prefix) = index_prefix(query) {
            // A 0x00 no stored name has would make the prefix span other
            // entries: nothing matches.
            if prefix.iter().filter(|b| **b == 0).count() != prefix_parts(query) {
                return Ok(Page::default());
            }
            return self.list_devices_indexed(query, &prefix);
        }
        let file = &self.file;
        let limit = query.limit as usize;
        let after = query.after.as_ref().map(|a| a.as_str().as_bytes());
        let prefix = query
            .id_prefix
            .as_deref()
            .map(str::as_bytes)
            .filter(|p| !p.is_empty());
        let lower = match (after, prefix) {
            (Some(a), Some(p)) if a >= p => Bound::Excluded(a),
            (_, Some(p)) => Bound::Included(p),
            (Some(a), None) => Bound::Excluded(a),
            (None, None) => Bound::Unbounded,
        };
        let in_range = |key: &[u8]| prefix.is_none_or(|p| key.starts_with(p));
        self.read(|txn| {
            let table = read_table(txn, DEVICES, file)?;
            let rows = table
                .range::<&[u8]>((lower, Bound::Unbounded))
                .map_err(|e| file.engine(e))?;
            let mut page = Page::default();
            let mut last_scanned: Option<DeviceId> = None;
            for (scanned, row) in rows.enumerate() {
                let (key, value) = row.map_err(|e| file.engine(e))?;
                let key = key.value();
                if !in_range(key) {
                    break;
                }
                if page.items.len() == limit || scanned == LIST_SCAN_BUDGET {
                    // More rows follow: resume after the last row read.
                    page.next = last_scanned;
                    break;
                }
                let device = codec::decode_device(key, value.value())
                    .map_err(|why| file.corrupt(DEVICES_NAME, key, why))?;
                last_scanned = Some(device.id.clone());
                if query.matches(&device) {
                    page.items.push(device);
                }
            }
            Ok(page)
        })
    }

    /// One page of the device groups, in name order after `after`, with how
    /// many devices each has: at most `limit` groups, and `next` is the
    /// last one when more follow. Answered from the group index: one seek
    /// per group and a walk of its entries to count them, so its cost is the
    /// page's groups and their devices, not the registry.
    pub fn list_groups(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<GroupPage, FleetStoreError> {
        self.list_groups_indexed(after, limit)
    }

    /// [`FleetStore::list_devices`] through the index range under `prefix`.
    fn list_devices_indexed(
        &self,
        query: &DeviceQuery,
        prefix: &[u8],
    ) -> Result<Page<Device>, FleetStoreError> {
        let file = &self.file;
        let limit = query.limit as usize;
        let id_prefix = query.id_prefix.as_deref().unwrap_or("");
        let mut start = prefix.to_vec();
        let lower = match query.after.as_ref().map(|a| a.as_str()) {
            Some(a) if a >= id_prefix => {
                start.extend_from_slice(a.as_bytes());
                Bound::Excluded(start)
            }
            _ => {
                start.extend_from_slice(id_prefix.as_bytes());
                Bound::Included(start)
            }
        };
        let mut end = prefix.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let table_def = if query.group.is_some() {
            DEVICES_BY_GROUP
        } else {
            DEVICES_BY_ATTRIBUTE
        };
        self.read(|txn| {
            let index = read_table(txn, table_def, file)?;
            let devices = read_table(txn, DEVICES, file)?;
            let rows = index
                .range::<&[u8]>((
                    lower.as_ref().map(Vec::as_slice),
                    Bound::Excluded(end.as_slice()),
                ))
                .map_err(|e| file.engine(e))?;
            let mut page = Page::default();
            let mut last_scanned: Option<DeviceId> = None;
            for (scanned, row) in rows.enumerate() {
                let (key, _) = row.map_err(|e| file.engine(e))?;
                let key = key.value();
                let id = &key[prefix.len()..];
                if !id.starts_with(id_prefix.as_bytes()) {
                    break;
                }
                if page.items.len() == limit || scanned == LIST_SCAN_BUDGET {
                    page.next = last_scanned;
                    break;
                }
                let Some(value) = devices.get(id).map_err(|e| file.engine(e))? else {
                    return Err(file.corrupt(
                        "devices_by_group/attribute",
                        key,
                        "names a device that does not exist".into(),
                    ));
                };
                let device = codec::decode_device(id, value.value())
                    .map_err(|why| file.corrupt(DEVICES_NAME, id, why))?;
                last_scanned = Some(device.id.clone());
                if query.matches(&device) {
                    page.items.push(device);
                }
            }
            Ok(page)
        })
    }

    /// Like [`FleetStore::insert_devices_batch`], but a row whose id is an
    /// existing device updates it (see [`Upserted`]) instead of failing.
    pub fn upsert_devices_batch(
        &self,
        rows: &[(NewDevice, Option<String>)],
        now: u64,
    ) -> Result<Vec<Result<Upserted, FleetStoreError>>, FleetStoreError> {
        self.write_device_rows(rows, now, upsert)
    }

    /// Inserts many devices (each with an optional PHC string) in one write
    /// transaction at `now`. Each row succeeds or fails on its own (a
    /// failed row writes nothing); the outer `Err` means the transaction
    /// itself failed and nothing was written. Duplicate ids, in the store
    /// or earlier in `rows`, fail with [`FleetStoreError::DeviceExists`].
    pub fn insert_devices_batch(
        &self,
        rows: &[(NewDevice, Option<String>)],
        now: u64,
    ) -> Result<Vec<Result<(), FleetStoreError>>, FleetStoreError> {
        self.write_device_rows(rows, now, insert_new)
    }

    /// Writes each of `rows` with `write_row` in one write transaction: a
    /// row's own error is its result, an engine error (which leaves the
    /// transaction in doubt) ends the batch and writes nothing.
    fn write_device_rows<T>(
        &self,
        rows: &[(NewDevice, Option<String>)],
        now: u64,
        write_row: impl Fn(
            &mut Tables<'_>,
            &FileName,
            &NewDevice,
            Option<&str>,
            u64,
        ) -> Result<T, FleetStoreError>,
    ) -> Result<Vec<Result<T, FleetStoreError>>, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let mut results = Vec::with_capacity(rows.len());
            for (new, phc) in rows {
                match write_row(tables, file, new, phc.as_deref(), now) {
                    Err(
                        err @ (FleetStoreError::Io { .. }
                        | FleetStoreError::Engine { .. }
                        | FleetStoreError::CorruptFile { .. }),
                    ) => return Err(err),
                    other => results.push(other),
                }
            }
            Ok(results)
        })
    }
}
