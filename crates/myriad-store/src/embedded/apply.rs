//! Checking a batch against what is stored, then writing it.

use std::collections::{HashMap, HashSet};

use myriad_mqtt::ByteString;
use redb::{ReadableTable, Table};

use super::errors::FileName;
use super::tables::Tables;
use super::{keys, values};
use crate::StoreError;
use crate::records::Change;

/// Fails with [`StoreError::UnknownSession`] if a change names a session
/// that neither the file nor an earlier change of the batch holds at that
/// point: the same rule as [`crate::MemoryStore`], checked before anything
/// is written so a bad batch changes nothing.
pub(super) fn check(
    sessions: &Table<'_, &'static [u8], &'static [u8]>,
    changes: &[Change],
    file: &FileName,
) -> Result<(), StoreError> {
    let mut created: HashSet<&ByteString> = HashSet::new();
    let mut deleted: HashSet<&ByteString> = HashSet::new();
    let mut stored: HashMap<&ByteString, bool> = HashMap::new();
    for change in changes {
        match change {
            Change::PutSession(record) => {
                created.insert(&record.client_id);
                deleted.remove(&record.client_id);
            }
            Change::DeleteSession { client_id } => {
                created.remove(client_id);
                deleted.insert(client_id);
            }
            other => {
                let Some(client_id) = other.needed_session() else {
                    continue;
                };
                if created.contains(client_id) {
                    continue;
                }
                let in_file = match stored.get(client_id) {
                    Some(&found) => found,
                    None => {
                        let found = sessions
                            .get(client_id.as_bytes().as_ref())
                            .map_err(|e| file.engine(e))?
                            .is_some();
                        stored.insert(client_id, found);
                        found
                    }
                };
                if !in_file || deleted.contains(client_id) {
                    return Err(StoreError::UnknownSession {
                        client_id: client_id.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Removes every row of `table` whose key starts with `prefix`.
fn remove_prefixed(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    prefix: &[u8],
    file: &FileName,
) -> Result<(), StoreError> {
    let end = keys::prefix_end(prefix);
    table
        .retain_in::<&[u8], _>(prefix..end.as_slice(), |_, _| false)
        .map_err(|e| file.engine(e))
}

/// Writes one change of a checked batch.
pub(super) fn apply(
    tables: &mut Tables<'_>,
    change: &Change,
    file: &FileName,
) -> Result<(), StoreError> {
    let engine = |e: redb::StorageError| file.engine(e);
    match change {
        Change::PutSession(record) => {
            let value = values::encode_session(record);
            tables
                .sessions
                .insert(record.client_id.as_bytes().as_ref(), value.as_slice())
                .map_err(engine)?;
        }
        Change::DeleteSession { client_id } => {
            let id: &[u8] = client_id.as_bytes();
            tables.sessions.remove(id).map_err(engine)?;
            tables.wills.remove(id).map_err(engine)?;
            let prefix = keys::session_prefix(id);
            remove_prefixed(&mut tables.subscriptions, &prefix, file)?;
            remove_prefixed(&mut tables.outbound, &prefix, file)?;
            remove_prefixed(&mut tables.inbound_qos2, &prefix, file)?;
        }
        Change::PutSubscription {
            client_id,
            subscription,
        } => {
            let key = keys::subscription(client_id.as_bytes(), subscription.filter.as_bytes());
            let value = values::encode_subscription(subscription);
            tables
                .subscriptions
                .insert(key.as_slice(), value.as_slice())
                .map_err(engine)?;
        }
        Change::DeleteSubscription { client_id, filter } => {
            let key = keys::subscription(client_id.as_bytes(), filter.as_bytes());
            tables
                .subscriptions
                .remove(key.as_slice())
                .map_err(engine)?;
        }
        Change::PutOutbound {
            client_id,
            seq,
            record,
        } => {
            let key = keys::outbound(client_id.as_bytes(), *seq);
            let value = values::encode_outbound(record);
            tables
                .outbound
                .insert(key.as_slice(), value.as_slice())
                .map_err(engine)?;
        }
        Change::DeleteOutbound { client_id, seq } => {
            let key = keys::outbound(client_id.as_bytes(), *seq);
            tables.outbound.remove(key.as_slice()).map_err(engine)?;
        }
        Change::PutInboundQos2 {
            client_id,
            packet_id,
        } => {
            let key = keys::inbound_qos2(client_id.as_bytes(), *packet_id);
            tables
                .inbound_qos2
                .insert(key.as_slice(), values::INBOUND_QOS2.as_slice())
                .map_err(engine)?;
        }
        Change::DeleteInboundQos2 {
            client_id,
            packet_id,
        } => {
            let key = keys::inbound_qos2(client_id.as_bytes(), *packet_id);
            tables.inbound_qos2.remove(key.as_slice()).map_err(engine)?;
        }
        Change::PutWill {
            client_id,
            due_at,
            message,
        } => {
            let value = values::encode_will(*due_at, message);
            tables
                .wills
                .insert(client_id.as_bytes().as_ref(), value.as_slice())
                .map_err(engine)?;
        }
        Change::DeleteWill { client_id } => {
            tables
                .wills
                .remove(client_id.as_bytes().as_ref())
                .map_err(engine)?;
        }
        Change::PutRetained(message) => {
            let value = values::encode_retained(message);
            tables
                .retained
                .insert(message.topic.as_bytes().as_ref(), value.as_slice())
                .map_err(engine)?;
        }
        Change::DeleteRetained { topic } => {
            tables
                .retained
                .remove(topic.as_bytes().as_ref())
                .map_err(engine)?;
        }
    }
    Ok(())
}
