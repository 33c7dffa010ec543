//! Reading everything back: one ordered pass over each table.
//!
//! Sessions come first, in client-id order; every per-session table is
//! sorted the same way (see [`super::keys`]), so each row is matched to its
//! session by walking a cursor forward, without a lookup or an allocated
//! key per row.

use myriad_mqtt::ByteString;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableHandle};

use super::errors::FileName;
use super::tables::{Def, INBOUND_QOS2, OUTBOUND, RETAINED, SESSIONS, SUBSCRIPTIONS, WILLS};
use super::wire::Malformed;
use super::{keys, values};
use crate::StoreError;
use crate::records::{Snapshot, StoredSession};

/// Walks the sessions' key prefixes in order, in step with a table's rows.
struct Cursor<'a> {
    prefixes: &'a [Vec<u8>],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// The index of the session `key` belongs to, and the rest of the key.
    fn find<'k>(&mut self, key: &'k [u8]) -> Option<(usize, &'k [u8])> {
        while let Some(prefix) = self.prefixes.get(self.at) {
            if let Some(rest) = key.strip_prefix(prefix.as_slice()) {
                return Some((self.at, rest));
            }
            if prefix.as_slice() < key {
                self.at += 1;
            } else {
                return None;
            }
        }
        None
    }
}

fn utf8(bytes: &[u8]) -> Result<ByteString, Malformed> {
    ByteString::try_from(bytes).map_err(|_| Malformed("key is not UTF-8"))
}

/// Visits every row of `def` in key order.
fn each_row(
    txn: &ReadTransaction,
    def: Def,
    file: &FileName,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), Malformed>,
) -> Result<(), StoreError> {
    let table = txn.open_table(def).map_err(|e| file.engine(e))?;
    let name = def.name();
    for row in table.iter().map_err(|e| file.engine(e))? {
        let (key, value) = row.map_err(|e| file.engine(e))?;
        visit(key.value(), value.value()).map_err(|why| file.corrupt(name, why))?;
    }
    Ok(())
}

/// Visits every row of a per-session table with the index of its session
/// and the part of the key after the session's prefix.
fn each_session_row(
    txn: &ReadTransaction,
    def: Def,
    prefixes: &[Vec<u8>],
    file: &FileName,
    mut visit: impl FnMut(usize, &[u8], &[u8]) -> Result<(), Malformed>,
) -> Result<(), StoreError> {
    let mut cursor = Cursor { prefixes, at: 0 };
    each_row(txn, def, file, |key, value| {
        let (index, rest) = cursor
            .find(key)
            .ok_or(Malformed("row of a client id that has no session"))?;
        visit(index, rest, value)
    })
}

/// Everything the file holds.
pub(super) fn load(db: &Database, file: &FileName) -> Result<Snapshot, StoreError> {
    let txn = db.begin_read().map_err(|e| file.engine(e))?;
    let mut sessions: Vec<StoredSession> = Vec::new();
    let mut prefixes: Vec<Vec<u8>> = Vec::new();
    each_row(&txn, SESSIONS, file, |key, value| {
        let record = values::decode_session(utf8(key)?, value)?;
        prefixes.push(keys::session_prefix(key));
        sessions.push(StoredSession {
            record,
            subscriptions: Vec::new(),
            outbound: Vec::new(),
            inbound_qos2: Vec::new(),
            will: None,
        });
        Ok(())
    })?;
    each_session_row(&txn, SUBSCRIPTIONS, &prefixes, file, |i, filter, value| {
        let record = values::decode_subscription(utf8(filter)?, value)?;
        sessions[i].subscriptions.push(record);
        Ok(())
    })?;
    // Outbound records are large (over 500 bytes each in memory) and many:
    // count them first so each session's vector is allocated once, at its
    // size, instead of growing (and copying) by doubling.
    let mut counts = vec![0usize; sessions.len()];
    each_session_row(&txn, OUTBOUND, &prefixes, file, |i, _, _| {
        counts[i] += 1;
        Ok(())
    })?;
    for (session, count) in sessions.iter_mut().zip(counts) {
        session.outbound.reserve_exact(count);
    }
    each_session_row(&txn, OUTBOUND, &prefixes, file, |i, seq, value| {
        let seq: [u8; 8] = seq.try_into().map_err(|_| Malformed("bad seq"))?;
        let record = values::decode_outbound(value)?;
        sessions[i].outbound.push((u64::from_be_bytes(seq), record));
        Ok(())
    })?;
    each_session_row(&txn, INBOUND_QOS2, &prefixes, file, |i, id, value| {
        let id: [u8; 2] = id.try_into().map_err(|_| Malformed("bad packet id"))?;
        values::decode_inbound_qos2(value)?;
        sessions[i].inbound_qos2.push(u16::from_be_bytes(id));
        Ok(())
    })?;
    let mut cursor = Cursor {
        prefixes: &prefixes,
        at: 0,
    };
    each_row(&txn, WILLS, file, |client_id, value| {
        let prefix = keys::session_prefix(client_id);
        let (i, _) = cursor
            .find(&prefix)
            .ok_or(Malformed("will of a client id that has no session"))?;
        sessions[i].will = Some(values::decode_will(value)?);
        Ok(())
    })?;
    let mut retained = Vec::new();
    each_row(&txn, RETAINED, file, |topic, value| {
        let message = values::decode_retained(value)?;
        if message.topic.as_bytes().as_ref() != topic {
            return Err(Malformed("retained message under another topic"));
        }
        retained.push(message);
        Ok(())
    })?;
    Ok(Snapshot { sessions, retained })
}
