//! Every session, in a slab indexed by session id, with indexes by client id
//! and by attached connection.
//!
//! A hash map of sessions by id keeps its buckets (each a whole session)
//! half empty right after it grows; the slab holds one pointer per session
//! instead, and each session is one allocation of its own size. The indexes
//! store slot numbers only (4 bytes a bucket): the keys are the session's own
//! client id and its connection's id, so neither is copied for an index.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use myriad_mqtt::ByteString;

use super::session::Session;
use super::{ConnId, Connection, SessionId};

/// The sessions of a broker. See the module documentation.
///
/// A [`SessionId`] is the session's slot in the low 32 bits and a serial
/// number in the high 32 bits, so an id kept after its session ended never
/// finds the session that reuses the slot.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    slots: Vec<Option<Box<Session>>>,
    /// Empty slots, reused before the slab grows.
    free: Vec<u32>,
    /// Occupied slots by their session's client id.
    by_client_id: HashTable<u32>,
    /// Slots of sessions with a connection attached, by connection id.
    by_conn: HashTable<u32>,
    hasher: RandomState,
    /// Serial number of the next session created.
    next_serial: u32,
    len: usize,
}

fn slot_of(id: SessionId) -> usize {
    (id & u64::from(u32::MAX)) as usize
}

impl Sessions {
    /// No sessions.
    pub(super) fn new() -> Sessions {
        Sessions::default()
    }

    /// Number of sessions.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The session `id`, if it still exists.
    pub(super) fn get(&self, id: SessionId) -> Option<&Session> {
        let session = self.slots.get(slot_of(id))?.as_deref()?;
        (session.id == id).then_some(session)
    }

    /// The session `id`, mutably, if it still exists.
    pub(super) fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        let session = self.slots.get_mut(slot_of(id))?.as_deref_mut()?;
        (session.id == id).then_some(session)
    }

    /// Whether the session `id` exists.
    pub(super) fn contains(&self, id: SessionId) -> bool {
        self.get(id).is_some()
    }

    /// The session of `client_id`, if there is one.
    pub(super) fn id_of(&self, client_id: &str) -> Option<SessionId> {
        let hash = self.hasher.hash_one(client_id);
        let slots = &self.slots;
        let slot = *self
            .by_client_id
            .find(hash, |&slot| client_id_at(slots, slot) == Some(client_id))?;
        slots[slot as usize].as_ref().map(|s| s.id)
    }

    /// Creates a session for `client_id` and returns its id. A session that
    /// held `client_id` before must have been removed.
    pub(super) fn insert(&mut self, client_id: ByteString, expiry_interval: u32) -> SessionId {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                // More than 2^32 sessions at once would not fit in memory.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.next_serial = self.next_serial.wrapping_add(1);
        let id = (u64::from(self.next_serial) << 32) | u64::from(slot);
        let hash = self.hasher.hash_one(&*client_id);
        let slots = &self.slots;
        let hasher = &self.hasher;
        // Any entry still holding this client id is replaced, so the index
        // never holds a client id twice.
        match self.by_client_id.entry(
            hash,
            |&other| client_id_at(slots, other) == Some(&*client_id),
            |&other| client_id_at(slots, other).map_or(0, |c| hasher.hash_one(c)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut entry) => *entry.get_mut() = slot,
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert(slot);
            }
        }
        let session = Box::new(Session::new(id, client_id, expiry_interval));
        if let Some(place) = self.slots.get_mut(slot as usize) {
            *place = Some(session);
        }
        self.len += 1;
        id
    }

    /// Removes the session `id`, if it exists (with the connection attached
    /// to it, if any).
    pub(super) fn remove(&mut self, id: SessionId) -> Option<Box<Session>> {
        if let Some(conn) = self.get(id).and_then(|s| s.conn()) {
            self.detach(conn);
        }
        let slot = slot_of(id);
        let place = self.slots.get_mut(slot)?;
        if place.as_ref().is_none_or(|s| s.id != id) {
            return None;
        }
        let session = place.take()?;
        let hash = self.hasher.hash_one(&*session.client_id);
        if let Ok(entry) = self
            .by_client_id
            .find_entry(hash, |&other| other as usize == slot)
        {
            entry.remove();
        }
        // Slots come from `insert`, which numbers them in 32 bits.
        self.free.push(u32::try_from(slot).unwrap_or(u32::MAX));
        self.len -= 1;
        if self.len == 0 {
            // No session left: give the memory back.
            *self = Sessions {
                hasher: std::mem::take(&mut self.hasher),
                next_serial: self.next_serial,
                ..Sessions::default()
            };
        }
        Some(session)
    }

    /// Attaches `connection` to the session `id`, which has none. Connection
    /// ids are unique among live connections (the shell numbers them).
    pub(super) fn attach(&mut self, id: SessionId, connection: Box<Connection>) {
        let conn = connection.id;
        let Some(session) = self.get(id) else {
            return;
        };
        debug_assert!(session.connection.is_none(), "detach first");
        let slot = slot_of(id) as u32;
        let hash = self.hasher.hash_one(conn);
        let slots = &self.slots;
        let hasher = &self.hasher;
        match self.by_conn.entry(
            hash,
            |&other| conn_at(slots, other) == Some(conn),
            |&other| conn_at(slots, other).map_or(0, |c| hasher.hash_one(c)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut entry) => *entry.get_mut() = slot,
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert(slot);
            }
        }
        if let Some(session) = self.get_mut(id) {
            session.connection_gone();
            session.connection = Some(connection);
        }
    }

    /// Takes connection `conn` from the session it is attached to.
    pub(super) fn detach(&mut self, conn: ConnId) -> Option<(SessionId, Box<Connection>)> {
        let hash = self.hasher.hash_one(conn);
        let slots = &self.slots;
        let entry = self
            .by_conn
            .find_entry(hash, |&slot| conn_at(slots, slot) == Some(conn))
            .ok()?;
        let (slot, _) = entry.remove();
        let session = self.slots.get_mut(slot as usize)?.as_deref_mut()?;
        let connection = session.connection.take()?;
        session.connection_gone();
        Some((session.id, connection))
    }

    /// The session connection `conn` is attached to.
    pub(super) fn attached(&self, conn: ConnId) -> Option<&Session> {
        let hash = self.hasher.hash_one(conn);
        let slots = &self.slots;
        let slot = *self
            .by_conn
            .find(hash, |&slot| conn_at(slots, slot) == Some(conn))?;
        slots.get(slot as usize)?.as_deref()
    }

    /// The session connection `conn` is attached to, mutably.
    pub(super) fn attached_mut(&mut self, conn: ConnId) -> Option<&mut Session> {
        let hash = self.hasher.hash_one(conn);
        let slots = &self.slots;
        let slot = *self
            .by_conn
            .find(hash, |&slot| conn_at(slots, slot) == Some(conn))?;
        self.slots.get_mut(slot as usize)?.as_deref_mut()
    }

    /// Number of attached connections.
    pub(super) fn connection_count(&self) -> usize {
        self.by_conn.len()
    }

    /// Every session, in slot order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Session> {
        self.slots.iter().filter_map(|s| s.as_deref())
    }

    /// Every session, mutably, in slot order.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.slots.iter_mut().filter_map(|s| s.as_deref_mut())
    }
}

fn conn_at(slots: &[Option<Box<Session>>], slot: u32) -> Option<ConnId> {
    slots.get(slot as usize)?.as_deref()?.conn()
}

fn client_id_at(slots: &[Option<Box<Session>>], slot: u32) -> Option<&str> {
    slots.get(slot as usize)?.as_deref().map(|s| &*s.client_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_ended_sessions_find_nothing_and_slots_are_reused() {
        let mut sessions = Sessions::new();
        let a = sessions.insert("a".into(), 0);
        let b = sessions.insert("b".into(), 0);
        assert_eq!(sessions.id_of("a"), Some(a));
        assert_eq!(sessions.id_of("b"), Some(b));
        assert!(sessions.remove(a).is_some());
        assert!(sessions.remove(a).is_none());
        assert_eq!(sessions.id_of("a"), None);
        let c = sessions.insert("a".into(), 0);
        assert_eq!(slot_of(c), slot_of(a), "the free slot is reused");
        assert_ne!(c, a);
        assert!(sessions.get(a).is_none());
        assert_eq!(sessions.get(c).map(|s| &*s.client_id), Some("a"));
        assert_eq!(sessions.id_of("a"), Some(c));
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions.values().count(), 2);
    }

    fn connection(id: ConnId) -> Box<Connection> {
        Box::new(Connection {
            id,
            last_seen: crate::core::time::Ticks::NEVER,
            acl: None,
            will: None,
            aliases: None,
            max_packet_size: u32::MAX,
            keep_alive_check: 0,
            receive_maximum: u16::MAX,
            topic_alias_maximum: 0,
            keep_alive: 0,
            protocol: myriad_mqtt::ProtocolVersion::V5,
            flags: Connection::flags(true, true),
        })
    }

    #[test]
    fn connections_are_found_while_attached() {
        let mut sessions = Sessions::new();
        let a = sessions.insert("a".into(), 0);
        let b = sessions.insert("b".into(), 0);
        for conn in 0..1000 {
            let session = if conn % 2 == 0 { a } else { b };
            sessions.attach(session, connection(conn));
            assert_eq!(sessions.attached(conn).map(|s| s.id), Some(session));
            assert_eq!(sessions.connection_count(), 1);
            let (detached, taken) = sessions.detach(conn).expect("attached");
            assert_eq!((detached, taken.id), (session, conn));
            assert!(sessions.attached(conn).is_none() && sessions.detach(conn).is_none());
        }
        sessions.attach(a, connection(7));
        sessions.attach(b, connection(8));
        assert!(sessions.remove(a).is_some());
        assert!(sessions.attached(7).is_none());
        assert_eq!(sessions.attached_mut(8).map(|s| s.id), Some(b));
        assert_eq!(sessions.connection_count(), 1);
    }

    #[test]
    fn the_index_follows_many_sessions() {
        let mut sessions = Sessions::new();
        let ids: Vec<SessionId> = (0..10_000)
            .map(|i| sessions.insert(format!("client-{i}").into(), 0))
            .collect();
        for (i, id) in ids.iter().enumerate().step_by(2) {
            assert!(sessions.remove(*id).is_some(), "session {i}");
        }
        for (i, id) in ids.iter().enumerate() {
            let expected = (i % 2 == 1).then_some(*id);
            assert_eq!(sessions.id_of(&format!("client-{i}")), expected);
        }
        for id in ids.iter().skip(1).step_by(2) {
            assert!(sessions.remove(*id).is_some());
        }
        assert_eq!(sessions.len(), 0);
        assert!(sessions.slots.is_empty() && sessions.by_client_id.is_empty());
    }
}
