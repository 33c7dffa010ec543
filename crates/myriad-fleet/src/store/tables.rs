//! The tables of the database file. Keys and values are raw bytes (see
//! [`super::codec`]): redb's own string types would panic on stored bytes
//! that are not UTF-8, ours report them as corrupt.

use redb::{ReadOnlyTable, ReadTransaction, Table, TableDefinition, WriteTransaction};

use super::error::{FileName, FleetStoreError};

/// Raw key to raw value.
pub(super) type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Device id -> device.
pub(super) const DEVICES: Def = TableDefinition::new("devices");
/// App id -> app client.
pub(super) const APPS: Def = TableDefinition::new("apps");
/// Device or app id -> PHC string.
pub(super) const CREDENTIALS: Def = TableDefinition::new("credentials");
/// Device id -> shadow bytes (opaque, the caller's own format).
pub(super) const SHADOWS: Def = TableDefinition::new("shadows");
/// Device id -> last presence record.
pub(super) const PRESENCE: Def = TableDefinition::new("presence");

/// Certificate fingerprint -> device certificate.
pub(super) const DEVICE_CERTS: Def = TableDefinition::new("device_certificates");
/// Device id, `0x00`, fingerprint -> empty: each device's certificates.
pub(super) const CERTS_BY_DEVICE: Def = TableDefinition::new("device_certificates_by_device");
/// CA fingerprint -> certificate authority.
pub(super) const CAS: Def = TableDefinition::new("certificate_authorities");

/// Group, `0x00`, device id -> empty: the devices of each group.
pub(super) const DEVICES_BY_GROUP: Def = TableDefinition::new("devices_by_group");
/// Attribute key, `0x00`, value, `0x00`, device id -> empty: the devices with each attribute
/// value (keys, groups and ids have no `0x00`, values no control character).
pub(super) const DEVICES_BY_ATTRIBUTE: Def = TableDefinition::new("devices_by_attribute");
/// The `meta` table (shared with `myriad_store::format`, which owns its `format` key).
pub(super) const META: Def = TableDefinition::new("meta");

/// Table names for errors (redb's `TableHandle::name` borrows the def).
pub(super) const DEVICES_NAME: &str = "devices";
/// See [`DEVICES_NAME`].
pub(super) const APPS_NAME: &str = "apps";
/// See [`DEVICES_NAME`].
pub(super) const CREDENTIALS_NAME: &str = "credentials";
/// See [`DEVICES_NAME`].
pub(super) const PRESENCE_NAME: &str = "presence";

/// The layout this build writes and reads (checked by `myriad_store::format`).
pub(super) const FORMAT: u8 = 1;

/// A raw table open for writing.
pub(super) type RawTable<'txn> = Table<'txn, &'static [u8], &'static [u8]>;

/// Every table but `meta` (see `myriad_store::format`), open for writing in one transaction.
pub(super) struct Tables<'txn> {
    pub(super) devices: RawTable<'txn>,
    pub(super) apps: RawTable<'txn>,
    pub(super) credentials: RawTable<'txn>,
    pub(super) shadows: RawTable<'txn>,
    pub(super) presence: RawTable<'txn>,
    pub(super) device_certs: RawTable<'txn>,
    pub(super) certs_by_device: RawTable<'txn>,
    pub(super) cas: RawTable<'txn>,
    pub(super) by_group: RawTable<'txn>,
    pub(super) by_attribute: RawTable<'txn>,
}

impl<'txn> Tables<'txn> {
    /// Opens (creating if needed) every table.
    pub(super) fn open(
        txn: &'txn WriteTransaction,
        file: &FileName,
    ) -> Result<Self, FleetStoreError> {
        let open = |def: Def| txn.open_table(def).map_err(|e| file.engine(e));
        Ok(Tables {
            devices: open(DEVICES)?,
            apps: open(APPS)?,
            credentials: open(CREDENTIALS)?,
            shadows: open(SHADOWS)?,
            presence: open(PRESENCE)?,
            device_certs: open(DEVICE_CERTS)?,
            certs_by_device: open(CERTS_BY_DEVICE)?,
            cas: open(CAS)?,
            by_group: open(DEVICES_BY_GROUP)?,
            by_attribute: open(DEVICES_BY_ATTRIBUTE)?,
        })
    }
}

/// Opens one table for reading.
pub(super) fn read_table(
    txn: &ReadTransaction,
    def: Def,
    file: &FileName,
) -> Result<ReadOnlyTable<&'static [u8], &'static [u8]>, FleetStoreError> {
    txn.open_table(def).map_err(|e| file.engine(e))
}
