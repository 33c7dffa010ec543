//! The in-memory presence table.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use super::event::{ConnectInfo, PresenceEvent, PresenceRecord};
use super::reason::DisconnectReason;
use crate::registry::{DeviceId, MAX_PAGE_LIMIT, Page};

/// Who is online, with ordered versions (see the
/// [module documentation](super)).
///
/// Holds one [`PresenceRecord`] per device seen (about 200 bytes each) and
/// a sorted set of the online ids, so [`Self::is_online`] is a hash lookup,
/// [`Self::online_count`] is O(1) and [`Self::list_online`] pages through
/// the online devices in id order without scanning the offline ones.
#[derive(Debug, Default)]
pub struct PresenceTracker {
    records: HashMap<DeviceId, PresenceRecord>,
    online: BTreeSet<DeviceId>,
}

impl PresenceTracker {
    /// An empty tracker (no device seen yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker holding `records` as they are (versions carry on from
    /// them). After a crash, use [`Self::recover`] instead.
    pub fn from_records(records: impl IntoIterator<Item = PresenceRecord>) -> Self {
        let mut tracker = Self::new();
        for record in records {
            if record.online {
                tracker.online.insert(record.device.clone());
            } else {
                tracker.online.remove(&record.device);
            }
            tracker.records.insert(record.device.clone(), record);
        }
        tracker
    }

    /// A tracker from the stored records at start-up: every device recorded
    /// online is marked offline at `now_ms` with reason
    /// [`DisconnectReason::ServerRestart`] (its connection cannot have
    /// survived the restart). Returns the events to publish; store the
    /// changed records ([`Self::get`] for each event's device).
    pub fn recover(
        records: impl IntoIterator<Item = PresenceRecord>,
        now_ms: u64,
    ) -> (Self, Vec<PresenceEvent>) {
        let mut tracker = Self::from_records(records);
        let mut events = Vec::with_capacity(tracker.online.len());
        for id in std::mem::take(&mut tracker.online) {
            if let Some(record) = tracker.records.get_mut(&id) {
                record.online = false;
                record.version += 1;
                record.last_disconnected_at = Some(now_ms);
                record.disconnect_reason = Some(DisconnectReason::ServerRestart);
                events.push(record.event(now_ms));
            }
        }
        (tracker, events)
    }

    /// `device` connected on connection `conn` at `at_ms`. Always an
    /// `online` event, also when it was online on another connection
    /// (takeover: the old connection's disconnect will be ignored).
    pub fn connected(
        &mut self,
        device: &DeviceId,
        conn: u64,
        at_ms: u64,
        info: &ConnectInfo,
    ) -> PresenceEvent {
        let record = self
            .records
            .entry(device.clone())
            .or_insert_with(|| PresenceRecord::new(device.clone()));
        // Online on another connection: this one takes it over. The old
        // connection's end is recorded (reason `takeover`) and the online
        // event says so.
        let takeover = record.online && record.connection != conn;
        if takeover {
            record.last_disconnected_at = Some(at_ms);
            record.disconnect_reason = Some(DisconnectReason::Takeover);
        }
        record.online = true;
        record.version += 1;
        record.connection = conn;
        record.last_connected_at = Some(at_ms);
        record.last_seen = record.last_seen.max(at_ms);
        record.address = info.address;
        record.protocol = info.protocol;
        record.keep_alive_secs = info.keep_alive_secs;
        let mut event = record.event(at_ms);
        if takeover {
            event.reason = Some(DisconnectReason::Takeover);
        }
        self.online.insert(device.clone());
        event
    }

    /// Connection `conn` of `device` closed at `at_ms`. `None` (nothing
    /// changes) when `conn` is not the device's current connection (a
    /// newer one took over) or the device is already offline.
    pub fn disconnected(
        &mut self,
        device: &DeviceId,
        conn: u64,
        at_ms: u64,
        reason: DisconnectReason,
    ) -> Option<PresenceEvent> {
        let record = self.records.get_mut(device)?;
        if !record.online || record.connection != conn {
            return None;
        }
        record.online = false;
        record.version += 1;
        record.last_disconnected_at = Some(at_ms);
        record.last_seen = record.last_seen.max(at_ms);
        record.disconnect_reason = Some(reason);
        self.online.remove(device);
        Some(record.event(at_ms))
    }

    /// Something arrived from `device` at `at_ms` (a packet): updates
    /// `last_seen`, no event. Ignored for devices not tracked.
    pub fn seen(&mut self, device: &DeviceId, at_ms: u64) {
        if let Some(record) = self.records.get_mut(device) {
            record.last_seen = record.last_seen.max(at_ms);
        }
    }

    /// Connection `conn` of `device` sent a packet at `at_ms` (a periodic
    /// sample of the broker's activity stamps): moves `last_seen` if `conn`
    /// is the device's current connection; true if it moved.
    pub fn seen_on(&mut self, device: &DeviceId, conn: u64, at_ms: u64) -> bool {
        match self.records.get_mut(device) {
            Some(record)
                if record.online && record.connection == conn && at_ms > record.last_seen =>
            {
                record.last_seen = at_ms;
                true
            }
            _ => false,
        }
    }

    /// Whether `device` is connected.
    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.online.contains(device)
    }

    /// How many devices are connected, O(1).
    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    /// How many devices the tracker has a record of.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the tracker has no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The record of `device`, if it was ever seen.
    pub fn get(&self, device: &DeviceId) -> Option<&PresenceRecord> {
        self.records.get(device)
    }

    /// Drops the record of a deleted device, returning it.
    pub fn forget(&mut self, device: &DeviceId) -> Option<PresenceRecord> {
        self.online.remove(device);
        self.records.remove(device)
    }

    /// Online devices in id order, after the cursor `after`, at most
    /// `limit` (clamped to 1..=1000). `next` is `Some` exactly when more
    /// follow.
    pub fn list_online(&self, after: Option<&DeviceId>, limit: usize) -> Page<DeviceId> {
        let limit = limit.clamp(1, MAX_PAGE_LIMIT as usize);
        let start = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let mut range = self.online.range::<DeviceId, _>((start, Bound::Unbounded));
        let items: Vec<DeviceId> = range.by_ref().take(limit).cloned().collect();
        let next = match (range.next(), items.last()) {
            (Some(_), Some(last)) => Some(last.clone()),
            _ => None,
        };
        Page { items, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    fn info() -> ConnectInfo {
        ConnectInfo {
            address: Some("192.0.2.7:4000".parse().unwrap()),
            protocol: 5,
            keep_alive_secs: 60,
        }
    }

    #[test]
    fn connect_disconnect_versions() {
        let mut t = PresenceTracker::new();
        let d = id("d1");
        let e = t.connected(&d, 1, 100, &info());
        assert!(e.online && e.version == 1 && e.at == 100 && e.reason.is_none());
        assert!(t.is_online(&d));
        assert_eq!(t.online_count(), 1);
        t.seen(&d, 150);
        let e = t
            .disconnected(&d, 1, 200, DisconnectReason::KeepAliveTimeout)
            .unwrap();
        assert!(!e.online);
        assert_eq!(e.version, 2);
        assert_eq!(e.reason, Some(DisconnectReason::KeepAliveTimeout));
        assert_eq!(e.address, info().address);
        assert!(!t.is_online(&d));
        assert_eq!(t.online_count(), 0);
        // A second disconnect changes nothing.
        assert!(
            t.disconnected(&d, 1, 300, DisconnectReason::NetworkLoss)
                .is_none()
        );
        let r = t.get(&d).unwrap();
        assert_eq!(r.last_connected_at, Some(100));
        assert_eq!(r.last_disconnected_at, Some(200));
        assert_eq!(r.last_seen, 200);
        // Unknown device: nothing.
        assert!(
            t.disconnected(&id("zz"), 1, 1, DisconnectReason::NetworkLoss)
                .is_none()
        );
    }

    #[test]
    fn takeover_does_not_mark_offline() {
        let mut t = PresenceTracker::new();
        let d = id("d1");
        t.connected(&d, 1, 100, &info());
        let e = t.connected(&d, 2, 110, &ConnectInfo::default());
        assert!(e.online);
        assert_eq!(e.version, 2);
        // The takeover is recorded, and named in the online event.
        assert_eq!(e.reason, Some(DisconnectReason::Takeover));
        let record = t.get(&d).unwrap();
        assert_eq!(record.disconnect_reason, Some(DisconnectReason::Takeover));
        assert_eq!(record.last_disconnected_at, Some(110));
        // The old connection closes after the new one took over.
        assert!(
            t.disconnected(&d, 1, 120, DisconnectReason::Takeover)
                .is_none()
        );
        assert!(t.is_online(&d));
        assert_eq!(t.online_count(), 1);
        let e = t
            .disconnected(&d, 2, 130, DisconnectReason::ClientDisconnect)
            .unwrap();
        assert_eq!(e.version, 3);
        assert_eq!(t.online_count(), 0);
    }

    #[test]
    fn list_online_pages_in_id_order() {
        let mut t = PresenceTracker::new();
        for i in 0..25 {
            t.connected(&id(&format!("d{i:02}")), i, 1, &info());
        }
        t.disconnected(&id("d03"), 3, 2, DisconnectReason::NetworkLoss);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = t.list_online(after.as_ref(), 10);
            seen.extend(page.items.iter().map(|d| d.to_string()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = (0..25)
            .filter(|&i| i != 3)
            .map(|i| format!("d{i:02}"))
            .collect();
        assert_eq!(seen, expected);
        // Exactly full last page: no `next`.
        let page = t.list_online(Some(&id("d14")), 10);
        assert_eq!(page.items.len(), 10);
        assert_eq!(page.next, None);
    }

    #[test]
    fn recover_marks_online_devices_offline_and_keeps_versions() {
        let mut before = PresenceTracker::new();
        before.connected(&id("a"), 1, 10, &info());
        before.connected(&id("b"), 2, 10, &info());
        before.disconnected(&id("b"), 2, 20, DisconnectReason::ClientDisconnect);
        let records: Vec<PresenceRecord> = ["a", "b"]
            .iter()
            .map(|d| before.get(&id(d)).unwrap().clone())
            .collect();
        let (mut after, events) = PresenceTracker::recover(records, 1_000);
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.device, id("a"));
        assert!(!e.online);
        assert_eq!(e.version, 2);
        assert_eq!(e.at, 1_000);
        assert_eq!(e.reason, Some(DisconnectReason::ServerRestart));
        assert_eq!(after.online_count(), 0);
        assert_eq!(after.get(&id("a")).unwrap().version, 2);
        assert_eq!(after.get(&id("b")).unwrap().version, 2);
        // Versions carry on.
        assert_eq!(after.connected(&id("b"), 1, 2_000, &info()).version, 3);
    }
}
