//! The tables of the database file. Keys and values are raw bytes, encoded
//! by [`super::keys`] and [`super::values`]: redb's own string types would
//! panic on stored bytes that are not UTF-8, ours report them as corrupt.

use redb::{Table, TableDefinition, WriteTransaction};

use super::errors::FileName;
use crate::StoreError;

/// Raw key to raw value.
pub(super) type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Client id -> session settings.
pub(super) const SESSIONS: Def = TableDefinition::new("sessions");
/// (client id, filter) -> options and identifier.
pub(super) const SUBSCRIPTIONS: Def = TableDefinition::new("subscriptions");
/// (client id, seq) -> outbound message and state.
pub(super) const OUTBOUND: Def = TableDefinition::new("outbound");
/// (client id, packet id) -> nothing.
pub(super) const INBOUND_QOS2: Def = TableDefinition::new("inbound_qos2");
/// Client id -> delayed will.
pub(super) const WILLS: Def = TableDefinition::new("wills");
/// Topic -> retained message.
pub(super) const RETAINED: Def = TableDefinition::new("retained");

/// The key layout this build writes and reads (checked by [`crate::format`]).
pub(super) const FORMAT: u8 = 1;

/// Every table but `meta` (see `myriad_store::format`), open for writing in one transaction.
pub(super) struct Tables<'txn> {
    pub(super) sessions: Table<'txn, &'static [u8], &'static [u8]>,
    pub(super) subscriptions: Table<'txn, &'static [u8], &'static [u8]>,
    pub(super) outbound: Table<'txn, &'static [u8], &'static [u8]>,
    pub(super) inbound_qos2: Table<'txn, &'static [u8], &'static [u8]>,
    pub(super) wills: Table<'txn, &'static [u8], &'static [u8]>,
    pub(super) retained: Table<'txn, &'static [u8], &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    /// Opens (creating if needed) every table.
    pub(super) fn open(txn: &'txn WriteTransaction, file: &FileName) -> Result<Self, StoreError> {
        let open = |def: Def| txn.open_table(def).map_err(|e| file.engine(e));
        Ok(Tables {
            sessions: open(SESSIONS)?,
            subscriptions: open(SUBSCRIPTIONS)?,
            outbound: open(OUTBOUND)?,
            inbound_qos2: open(INBOUND_QOS2)?,
            wills: open(WILLS)?,
            retained: open(RETAINED)?,
        })
    }
}
