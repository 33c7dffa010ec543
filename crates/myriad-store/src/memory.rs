//! A store that keeps everything in memory.

use std::collections::{BTreeMap, BTreeSet};

use myriad_mqtt::ByteString;

use crate::records::{
    Change, MessageRecord, OutboundRecord, SessionRecord, Snapshot, StoredSession,
    SubscriptionRecord, UnixMillis,
};
use crate::{SessionStore, StoreError};

#[derive(Debug, Clone)]
struct SessionImage {
    record: SessionRecord,
    subscriptions: BTreeMap<ByteString, SubscriptionRecord>,
    outbound: BTreeMap<u64, OutboundRecord>,
    inbound_qos2: BTreeSet<u16>,
    will: Option<(UnixMillis, MessageRecord)>,
}

/// Keeps committed state in memory for the life of the process.
///
/// Cloning shares nothing: a clone is a copy of the state at that moment,
/// which is how tests "restart" a broker from what it had committed.
/// A batch is checked before it is applied, so a bad batch changes nothing.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    sessions: BTreeMap<ByteString, SessionImage>,
    retained: BTreeMap<ByteString, MessageRecord>,
    commits: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many batches have been committed.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    fn session(&mut self, client_id: &ByteString) -> Result<&mut SessionImage, StoreError> {
        self.sessions
            .get_mut(client_id)
            .ok_or_else(|| StoreError::UnknownSession {
                client_id: client_id.to_string(),
            })
    }

    fn apply(&mut self, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::PutSession(record) => match self.sessions.get_mut(&record.client_id) {
                Some(image) => image.record = record.clone(),
                None => {
                    self.sessions.insert(
                        record.client_id.clone(),
                        SessionImage {
                            record: record.clone(),
                            subscriptions: BTreeMap::new(),
                            outbound: BTreeMap::new(),
                            inbound_qos2: BTreeSet::new(),
                            will: None,
                        },
                    );
                }
            },
            Change::DeleteSession { client_id } => {
                self.sessions.remove(client_id);
            }
            Change::PutSubscription {
                client_id,
                subscription,
            } => {
                self.session(client_id)?
                    .subscriptions
                    .insert(subscription.filter.clone(), subscription.clone());
            }
            Change::DeleteSubscription { client_id, filter } => {
                self.session(client_id)?.subscriptions.remove(filter);
            }
            Change::PutOutbound {
                client_id,
                seq,
                record,
            } => {
                self.session(client_id)?
                    .outbound
                    .insert(*seq, record.clone());
            }
            Change::DeleteOutbound { client_id, seq } => {
                self.session(client_id)?.outbound.remove(seq);
            }
            Change::PutInboundQos2 {
                client_id,
                packet_id,
            } => {
                self.session(client_id)?.inbound_qos2.insert(*packet_id);
            }
            Change::DeleteInboundQos2 {
                client_id,
                packet_id,
            } => {
                self.session(client_id)?.inbound_qos2.remove(packet_id);
            }
            Change::PutWill {
                client_id,
                due_at,
                message,
            } => {
                self.session(client_id)?.will = Some((*due_at, message.clone()));
            }
            Change::DeleteWill { client_id } => {
                self.session(client_id)?.will = None;
            }
            Change::PutRetained(message) => {
                self.retained.insert(message.topic.clone(), message.clone());
            }
            Change::DeleteRetained { topic } => {
                self.retained.remove(topic);
            }
        }
        Ok(())
    }
}

impl SessionStore for MemoryStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            sessions: self
                .sessions
                .values()
                .map(|image| StoredSession {
                    record: image.record.clone(),
                    subscriptions: image.subscriptions.values().cloned().collect(),
                    outbound: image
                        .outbound
                        .iter()
                        .map(|(seq, record)| (*seq, record.clone()))
                        .collect(),
                    inbound_qos2: image.inbound_qos2.iter().copied().collect(),
                    will: image.will.clone(),
                })
                .collect(),
            retained: self.retained.values().cloned().collect(),
        })
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        // All or nothing: check the batch first, so applying it cannot fail halfway.
        let mut created: BTreeSet<&ByteString> = BTreeSet::new();
        let mut deleted: BTreeSet<&ByteString> = BTreeSet::new();
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
                    if let Some(client_id) = other.needed_session() {
                        let exists = created.contains(client_id)
                            || (self.sessions.contains_key(client_id)
                                && !deleted.contains(client_id));
                        if !exists {
                            return Err(StoreError::UnknownSession {
                                client_id: client_id.to_string(),
                            });
                        }
                    }
                }
            }
        }
        for change in changes {
            self.apply(change)?;
        }
        self.commits += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use myriad_mqtt::{PacketProperties, QoS, SubscriptionOptions};

    fn session(id: &str) -> Change {
        Change::PutSession(SessionRecord {
            client_id: id.into(),
            expiry_interval: 60,
            expires_at: None,
        })
    }

    fn subscribe(id: &str, filter: &str) -> Change {
        Change::PutSubscription {
            client_id: id.into(),
            subscription: SubscriptionRecord {
                filter: filter.into(),
                options: SubscriptionOptions::default(),
                id: None,
            },
        }
    }

    #[test]
    fn committed_changes_come_back_in_load() {
        let mut store = MemoryStore::new();
        let message = MessageRecord {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PacketProperties::new(),
            expires_at: None,
        };
        store
            .commit(&[
                session("a"),
                subscribe("a", "t/#"),
                subscribe("a", "u"),
                Change::DeleteSubscription {
                    client_id: "a".into(),
                    filter: "u".into(),
                },
                Change::PutInboundQos2 {
                    client_id: "a".into(),
                    packet_id: 7,
                },
                Change::PutRetained(message.clone()),
            ])
            .expect("valid batch");
        let snapshot = store.load().expect("load");
        assert_eq!(snapshot.sessions.len(), 1);
        assert_eq!(snapshot.sessions[0].subscriptions.len(), 1);
        assert_eq!(snapshot.sessions[0].inbound_qos2, vec![7]);
        assert_eq!(snapshot.retained, vec![message]);
        store
            .commit(&[Change::DeleteSession {
                client_id: "a".into(),
            }])
            .expect("delete");
        assert!(store.load().expect("load").sessions.is_empty());
        assert_eq!(store.commits(), 2);
    }

    #[test]
    fn a_bad_batch_changes_nothing() {
        let mut store = MemoryStore::new();
        let result = store.commit(&[session("a"), subscribe("b", "t")]);
        assert!(matches!(result, Err(StoreError::UnknownSession { .. })));
        assert!(store.load().expect("load").sessions.is_empty());
        let result = store.commit(&[
            session("a"),
            Change::DeleteSession {
                client_id: "a".into(),
            },
            subscribe("a", "t"),
        ]);
        assert!(result.is_err());
        assert_eq!(store.commits(), 0);
    }
}
