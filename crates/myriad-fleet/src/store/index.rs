//! The device indexes: group -> devices and (attribute key, value) -> devices.
//!
//! Two tables of empty values, `devices_by_group` keyed `group 0x00 device` and
//! `devices_by_attribute` keyed `key 0x00 value 0x00 device`, written in the same transaction as
//! every change of a device's groups or attributes (create, update, delete, bulk insert and
//! import). Group names, attribute keys and device ids have no `0x00` and attribute values no
//! control character, so the keys are unambiguous and the devices of one group (or attribute
//! value) are one key range, in id order.
//!
//! A file written before the indexes existed has no `device_indexes` entry in `meta`:
//! [`ensure`] (run by [`FleetStore::open`]) then builds both tables from the devices in one
//! transaction and writes the entry.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use redb::{Database, ReadableTable};

use super::error::{FileName, FleetStoreError};
use super::tables::{
    DEVICES, DEVICES_BY_ATTRIBUTE, DEVICES_BY_GROUP, DEVICES_NAME, META, RawTable, Tables,
    read_table,
};
use super::{FleetStore, codec};
use crate::registry::Device;

/// The `meta` key that says the device indexes are complete.
const MARKER: &[u8] = b"device_indexes";

/// Most entries one [`FleetStore::devices_in_group`] / [`FleetStore::devices_with_attribute`]
/// page answers, and most distinct keys one [`FleetStore::attribute_keys`] call answers.
pub const MAX_INDEX_PAGE: usize = 10_000;

/// One page of device ids in id order, and the cursor of the next page (the last id, when more
/// follow).
pub type IdPage = (Vec<String>, Option<String>);

/// `a 0x00 b`.
fn join(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

/// Adds the index entries of a device with `groups` and `attributes`.
fn add(
    by_group: &mut RawTable<'_>,
    by_attribute: &mut RawTable<'_>,
    file: &FileName,
    id: &str,
    groups: &BTreeSet<String>,
    attributes: &BTreeMap<String, String>,
) -> Result<(), FleetStoreError> {
    for g in groups {
        by_group
            .insert(join(&[g, id]).as_slice(), [].as_slice())
            .map_err(|e| file.engine(e))?;
    }
    for (k, v) in attributes {
        by_attribute
            .insert(join(&[k, v, id]).as_slice(), [].as_slice())
            .map_err(|e| file.engine(e))?;
    }
    Ok(())
}

/// Replaces the index entries of device `id`: those of `old` (if any) go, those of `new` (if
/// any) come. Entries both have are left as they are.
pub(super) fn reindex(
    tables: &mut Tables<'_>,
    file: &FileName,
    id: &str,
    old: Option<(&BTreeSet<String>, &BTreeMap<String, String>)>,
    new: Option<(&BTreeSet<String>, &BTreeMap<String, String>)>,
) -> Result<(), FleetStoreError> {
    let empty_g = BTreeSet::new();
    let empty_a = BTreeMap::new();
    let (old_g, old_a) = old.unwrap_or((&empty_g, &empty_a));
    let (new_g, new_a) = new.unwrap_or((&empty_g, &empty_a));
    for g in old_g.difference(new_g) {
        tables
            .by_group
            .remove(join(&[g, id]).as_slice())
            .map_err(|e| file.engine(e))?;
    }
    for (k, v) in old_a {
        if new_a.get(k) != Some(v) {
            tables
                .by_attribute
                .remove(join(&[k, v, id]).as_slice())
                .map_err(|e| file.engine(e))?;
        }
    }
    let add_g: BTreeSet<String> = new_g.difference(old_g).cloned().collect();
    let add_a: BTreeMap<String, String> = new_a
        .iter()
        .filter(|(k, v)| old_a.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    add(
        &mut tables.by_group,
        &mut tables.by_attribute,
        file,
        id,
        &add_g,
        &add_a,
    )
}

/// The groups and attributes of `d`, as [`reindex`] takes them.
pub(super) fn of(d: &Device) -> (&BTreeSet<String>, &BTreeMap<String, String>) {
    (&d.groups, &d.attributes)
}

/// Builds the indexes from the devices (in one transaction) unless `meta` says they are
/// complete: a file written by a build without them.
pub(super) fn ensure(db: &Database, file: &FileName) -> Result<(), FleetStoreError> {
    let txn = db.begin_write().map_err(|e| file.engine(e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| file.engine(e))?;
        if meta.get(MARKER).map_err(|e| file.engine(e))?.is_some() {
            drop(meta);
            let _ = txn.abort();
            return Ok(());
        }
        let devices = txn.open_table(DEVICES).map_err(|e| file.engine(e))?;
        let mut by_group = txn
            .open_table(DEVICES_BY_GROUP)
            .map_err(|e| file.engine(e))?;
        let mut by_attribute = txn
            .open_table(DEVICES_BY_ATTRIBUTE)
            .map_err(|e| file.engine(e))?;
        by_group.retain(|_, _| false).map_err(|e| file.engine(e))?;
        by_attribute
            .retain(|_, _| false)
            .map_err(|e| file.engine(e))?;
        for row in devices.iter().map_err(|e| file.engine(e))? {
            let (key, value) = row.map_err(|e| file.engine(e))?;
            let key = key.value();
            let d = codec::decode_device(key, value.value())
                .map_err(|why| file.corrupt(DEVICES_NAME, key, why))?;
            add(
                &mut by_group,
                &mut by_attribute,
                file,
                d.id.as_str(),
                &d.groups,
                &d.attributes,
            )?;
        }
        meta.insert(MARKER, [1u8].as_slice())
            .map_err(|e| file.engine(e))?;
    }
    txn.commit().map_err(|e| file.engine(e))
}

/// The first key at or after `lower` in `table`, if any (one seek): how the distinct-name walks
/// skip from one name to the next.
fn first_key_from(
    table: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    lower: &[u8],
    file: &FileName,
) -> Result<Option<Vec<u8>>, FleetStoreError> {
    let mut rows = table.range::<&[u8]>(lower..).map_err(|e| file.engine(e))?;
    match rows.next() {
        Some(row) => Ok(Some(row.map_err(|e| file.engine(e))?.0.value().to_vec())),
        None => Ok(None),
    }
}

/// The key after every key starting with `prefix` (`prefix` ends with `0x00`: its last byte
/// becomes `0x01`).
fn past(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// One page of the ids after `prefix` in `table`, after id `after`, at most `limit`.
fn id_page(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    file: &FileName,
    prefix: &[u8],
    after: Option<&str>,
    limit: usize,
) -> Result<IdPage, FleetStoreError> {
    let limit = limit.clamp(1, MAX_INDEX_PAGE);
    let lower = match after {
        Some(a) => {
            let mut k = prefix.to_vec();
            k.extend_from_slice(a.as_bytes());
            Bound::Excluded(k)
        }
        None => Bound::Included(prefix.to_vec()),
    };
    let end = past(prefix);
    let rows = table
        .range::<&[u8]>((
            lower.as_ref().map(Vec::as_slice),
            Bound::Excluded(end.as_slice()),
        ))
        .map_err(|e| file.engine(e))?;
    let mut ids = Vec::new();
    for row in rows {
        let (key, _) = row.map_err(|e| file.engine(e))?;
        if ids.len() == limit {
            let next = ids.last().cloned();
            return Ok((ids, next));
        }
        let key = key.value();
        let id = std::str::from_utf8(&key[prefix.len()..])
            .map_err(|_| file.corrupt("devices_by_group/attribute", key, "not UTF-8".into()))?;
        ids.push(id.to_owned());
    }
    Ok((ids, None))
}

impl FleetStore {
    /// One page of the ids of the devices in `group`, in id order after `after`: at most
    /// `limit` (1..=[`MAX_INDEX_PAGE`], clamped), and the cursor of the next page. A range scan
    /// of the group index: its cost is the page, not the registry.
    pub fn devices_in_group(
        &self,
        group: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<IdPage, FleetStoreError> {
        if group.contains('\0') {
            return Ok((Vec::new(), None)); // no group has one
        }
        let file = &self.file;
        self.read(|txn| {
            let table = read_table(txn, DEVICES_BY_GROUP, file)?;
            id_page(&table, file, &join(&[group, ""]), after, limit)
        })
    }

    /// One page of the ids of the devices whose attribute `key` is `value`, as
    /// [`FleetStore::devices_in_group`] pages.
    pub fn devices_with_attribute(
        &self,
        key: &str,
        value: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<IdPage, FleetStoreError> {
        if key.contains('\0') || value.contains('\0') {
            return Ok((Vec::new(), None)); // no key or value has one
        }
        let file = &self.file;
        self.read(|txn| {
            let table = read_table(txn, DEVICES_BY_ATTRIBUTE, file)?;
            id_page(&table, file, &join(&[key, value, ""]), after, limit)
        })
    }

    /// The distinct attribute keys some device has that start with `prefix`, in order: at most
    /// `limit` (1..=[`MAX_INDEX_PAGE`], clamped), and whether more follow. One seek per key
    /// (skipping its values and devices).
    pub fn attribute_keys(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<(Vec<String>, bool), FleetStoreError> {
        let file = &self.file;
        let limit = limit.clamp(1, MAX_INDEX_PAGE);
        self.read(|txn| {
            let table = read_table(txn, DEVICES_BY_ATTRIBUTE, file)?;
            let mut keys = Vec::new();
            let mut lower: Vec<u8> = prefix.as_bytes().to_vec();
            loop {
                let Some(key) = first_key_from(&table, &lower, file)? else {
                    return Ok((keys, false));
                };
                let key = key.as_slice();
                if !key.starts_with(prefix.as_bytes()) {
                    return Ok((keys, false));
                }
                let name = key.split(|b| *b == 0).next().unwrap_or_default();
                if keys.len() == limit {
                    return Ok((keys, true));
                }
                let name_str = std::str::from_utf8(name)
                    .map_err(|_| file.corrupt("devices_by_attribute", key, "not UTF-8".into()))?;
                keys.push(name_str.to_owned());
                lower = name.to_vec();
                lower.push(1);
            }
        })
    }

    /// Like [`FleetStore::list_groups`] from the group index: each group is one seek and a
    /// count of its range (its devices).
    pub(super) fn list_groups_indexed(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<super::devices::GroupPage, FleetStoreError> {
        let file = &self.file;
        let limit = limit.max(1);
        self.read(|txn| {
            let table = read_table(txn, DEVICES_BY_GROUP, file)?;
            let mut items: Vec<(String, u64)> = Vec::new();
            let mut lower: Vec<u8> = match after {
                Some(a) => {
                    let mut k = a.as_bytes().to_vec();
                    k.push(1);
                    k
                }
                None => Vec::new(),
            };
            loop {
                let Some(key) = first_key_from(&table, &lower, file)? else {
                    return Ok((items, None));
                };
                let key = key.as_slice();
                let name = key.split(|b| *b == 0).next().unwrap_or_default();
                if items.len() == limit {
                    let next = items.last().map(|(g, _)| g.clone());
                    return Ok((items, next));
                }
                let group = std::str::from_utf8(name)
                    .map_err(|_| file.corrupt("devices_by_group", key, "not UTF-8".into()))?
                    .to_owned();
                let mut prefix = name.to_vec();
                prefix.push(0);
                let end = past(&prefix);
                let mut count = 0u64;
                for row in table
                    .range::<&[u8]>(prefix.as_slice()..end.as_slice())
                    .map_err(|e| file.engine(e))?
                {
                    row.map_err(|e| file.engine(e))?;
                    count += 1;
                }
                items.push((group, count));
                lower = end;
            }
        })
    }
}
