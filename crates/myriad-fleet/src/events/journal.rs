//! The recent events of each device, and the last presence changes, in
//! bounded in-memory rings (lost at restart).
//!
//! - each device keeps its last [`EVENTS_PER_DEVICE`] events (presence,
//!   command, shadow, OTA);
//! - at most [`MAX_DEVICES`] devices are kept: the ones with the most recent
//!   events (the least recently active device is dropped first);
//! - at most [`MAX_EVENTS`] events in all: past that, the least recently
//!   active device loses its oldest event;
//! - the last [`RECENT_PRESENCE`] presence changes of the whole fleet.
//!
//! Events are shared with the bus (`Arc`), not copied.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::{FleetEvent, OtaChange, PresenceChange};

/// Events kept per device.
pub const EVENTS_PER_DEVICE: usize = 50;
/// Devices whose events are kept (the most recently active).
pub const MAX_DEVICES: usize = 10_000;
/// Events kept in all.
pub const MAX_EVENTS: usize = 100_000;
/// Presence changes kept for the overview.
pub const RECENT_PRESENCE: usize = 50;

/// The bounds of a [`DeviceJournal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    /// Events kept per device.
    pub per_device: usize,
    /// Devices kept.
    pub devices: usize,
    /// Events kept in all.
    pub events: usize,
    /// Presence changes kept.
    pub presence: usize,
}

impl Default for JournalLimits {
    fn default() -> Self {
        JournalLimits {
            per_device: EVENTS_PER_DEVICE,
            devices: MAX_DEVICES,
            events: MAX_EVENTS,
            presence: RECENT_PRESENCE,
        }
    }
}

struct Ring {
    /// Its key in `Inner::order`.
    touched: u64,
    /// Oldest first.
    events: VecDeque<Arc<FleetEvent>>,
}

#[derive(Default)]
struct Inner {
    devices: HashMap<Box<str>, Ring>,
    /// Devices by last activity, least recent first.
    order: BTreeMap<u64, Box<str>>,
    next: u64,
    total: usize,
    /// Newest last.
    presence: VecDeque<PresenceChange>,
    /// Deleted devices and when: their events up to then are not recorded
    /// (some are still on their way from the bus). Oldest first, bounded.
    forgotten: HashMap<Box<str>, u64>,
    forgotten_order: VecDeque<Box<str>>,
}

/// Recent events per device and recent presence changes (see the module docs).
pub struct DeviceJournal {
    limits: JournalLimits,
    inner: Mutex<Inner>,
    missed: AtomicU64,
}

impl std::fmt::Debug for DeviceJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceJournal")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for DeviceJournal {
    fn default() -> Self {
        DeviceJournal::new(JournalLimits::default())
    }
}

impl DeviceJournal {
    /// An empty journal with these bounds (each at least 1).
    pub fn new(limits: JournalLimits) -> DeviceJournal {
        DeviceJournal {
            limits: JournalLimits {
                per_device: limits.per_device.max(1),
                devices: limits.devices.max(1),
                events: limits.events.max(1),
                presence: limits.presence.max(1),
            },
            inner: Mutex::new(Inner::default()),
            missed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `event` (rollout and overview events are not device events: ignored).
    pub fn record(&self, event: &Arc<FleetEvent>) {
        let mut inner = self.lock();
        if let FleetEvent::Presence(change) = &**event {
            inner.presence.push_back(change.clone());
            while inner.presence.len() > self.limits.presence {
                inner.presence.pop_front();
            }
        }
        if matches!(**event, FleetEvent::Rollout(_) | FleetEvent::Overview(_)) {
            return;
        }
        let Some(device) = event.device() else {
            return;
        };
        if inner
            .forgotten
            .get(device)
            .is_some_and(|&until| event.at_ms() <= until)
        {
            return;
        }
        let inner = &mut *inner;
        let stamp = inner.next;
        inner.next += 1;
        match inner.devices.get_mut(device) {
            Some(ring) => {
                inner.order.remove(&ring.touched);
                ring.touched = stamp;
                inner.order.insert(stamp, device.into());
                ring.events.push_back(event.clone());
                inner.total += 1;
                if ring.events.len() > self.limits.per_device {
                    ring.events.pop_front();
                    inner.total -= 1;
                }
            }
            None => {
                if inner.devices.len() >= self.limits.devices {
                    evict_least_recent(inner, usize::MAX);
                }
                let mut events = VecDeque::new();
                events.push_back(event.clone());
                inner.devices.insert(
                    device.into(),
                    Ring {
                        touched: stamp,
                        events,
                    },
                );
                inner.order.insert(stamp, device.into());
                inner.total += 1;
            }
        }
        while inner.total > self.limits.events {
            evict_least_recent(inner, 1);
        }
    }

    /// Drops the events of `device` (deleted at `at_ms`), and any of its
    /// events up to then that arrive later; a device created again with the
    /// same id starts with no history. Remembers the last [`MAX_DEVICES`]
    /// deletions.
    pub fn forget(&self, device: &str, at_ms: u64) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(ring) = inner.devices.remove(device) {
            inner.order.remove(&ring.touched);
            inner.total -= ring.events.len();
        }
        if inner.forgotten.insert(device.into(), at_ms).is_none() {
            inner.forgotten_order.push_back(device.into());
        }
        while inner.forgotten_order.len() > self.limits.devices {
            if let Some(old) = inner.forgotten_order.pop_front() {
                inner.forgotten.remove(&old);
            }
        }
    }

    /// The last `limit` events of `device`, newest first.
    pub fn device_events(&self, device: &str, limit: usize) -> Vec<Arc<FleetEvent>> {
        let inner = self.lock();
        inner
            .devices
            .get(device)
            .map(|ring| ring.events.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// The last OTA change recorded for `device`, if it is still kept.
    pub fn last_ota(&self, device: &str) -> Option<OtaChange> {
        let inner = self.lock();
        inner
            .devices
            .get(device)?
            .events
            .iter()
            .rev()
            .find_map(|event| match &**event {
                FleetEvent::Ota(change) => Some(change.clone()),
                _ => None,
            })
    }

    /// The last presence changes of the fleet, newest first.
    pub fn recent_presence(&self) -> Vec<PresenceChange> {
        self.lock().presence.iter().rev().cloned().collect()
    }

    /// Devices kept and events kept in all.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.devices.len(), inner.total)
    }

    /// Events the journal missed because it fell behind the bus.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// Records every event of `events` until the bus is gone.
    pub async fn run(self: Arc<Self>, mut events: broadcast::Receiver<Arc<FleetEvent>>) {
        loop {
            match events.recv().await {
                Ok(event) => self.record(&event),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.missed.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Removes up to `count` of the oldest events of the least recently active
/// device (the whole device when it has no more).
fn evict_least_recent(inner: &mut Inner, count: usize) {
    let Some((&stamp, device)) = inner.order.iter().next() else {
        return;
    };
    let device = device.clone();
    let Some(ring) = inner.devices.get_mut(&device) else {
        inner.order.remove(&stamp);
        return;
    };
    let take = count.min(ring.events.len());
    ring.events.drain(..take);
    inner.total -= take;
    if ring.events.is_empty() {
        inner.devices.remove(&device);
        inner.order.remove(&stamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CommandChange, RolloutChange, ShadowChange};

    fn shadow(device: &str, version: u64) -> Arc<FleetEvent> {
        Arc::new(FleetEvent::Shadow(ShadowChange {
            device: device.into(),
            version,
            at_ms: version,
        }))
    }

    fn presence(device: &str, online: bool, at_ms: u64) -> Arc<FleetEvent> {
        Arc::new(FleetEvent::Presence(PresenceChange {
            device: device.into(),
            online,
            at_ms,
            reason: None,
        }))
    }

    fn small() -> DeviceJournal {
        DeviceJournal::new(JournalLimits {
            per_device: 3,
            devices: 2,
            events: 5,
            presence: 2,
        })
    }

    fn versions(journal: &DeviceJournal, device: &str) -> Vec<u64> {
        journal
            .device_events(device, 100)
            .iter()
            .map(|e| e.at_ms())
            .collect()
    }

    #[test]
    fn each_device_keeps_its_last_events_newest_first() {
        let journal = small();
        for v in 1..=5 {
            journal.record(&shadow("a", v));
        }
        assert_eq!(versions(&journal, "a"), [5, 4, 3]);
        assert_eq!(journal.device_events("a", 2).len(), 2);
        assert!(journal.device_events("b", 10).is_empty());
        assert_eq!(journal.size(), (1, 3));
    }

    #[test]
    fn the_least_recently_active_device_goes_first() {
        let journal = small();
        journal.record(&shadow("a", 1));
        journal.record(&shadow("b", 2));
        // `a` is active again: `b` is now the least recent.
        journal.record(&shadow("a", 3));
        journal.record(&shadow("c", 4));
        assert_eq!(versions(&journal, "a"), [3, 1]);
        assert!(versions(&journal, "b").is_empty());
        assert_eq!(versions(&journal, "c"), [4]);
        assert_eq!(journal.size(), (2, 3));
    }

    #[test]
    fn the_total_bound_trims_the_least_recent_device() {
        let journal = small();
        for v in 1..=3 {
            journal.record(&shadow("a", v));
        }
        for v in 10..=12 {
            journal.record(&shadow("b", v));
        }
        // 6 events > 5: `a` (least recent) loses its oldest.
        assert_eq!(versions(&journal, "a"), [3, 2]);
        assert_eq!(versions(&journal, "b"), [12, 11, 10]);
        assert_eq!(journal.size(), (2, 5));
    }

    #[test]
    fn presence_changes_are_kept_for_the_fleet_and_the_device() {
        let journal = small();
        journal.record(&presence("a", true, 1));
        journal.record(&presence("b", true, 2));
        journal.record(&presence("a", false, 3));
        let recent: Vec<(String, bool)> = journal
            .recent_presence()
            .into_iter()
            .map(|p| (p.device, p.online))
            .collect();
        assert_eq!(recent, [("a".into(), false), ("b".into(), true)]);
        assert_eq!(versions(&journal, "a"), [3, 1]);
    }

    #[test]
    fn rollout_events_are_not_device_events_and_ota_is_found() {
        let journal = small();
        journal.record(&Arc::new(FleetEvent::Rollout(RolloutChange {
            id: "r1".into(),
            state: "RUNNING".into(),
            counts: Default::default(),
            at_ms: 1,
        })));
        assert_eq!(journal.size(), (0, 0));
        journal.record(&Arc::new(FleetEvent::Ota(OtaChange {
            device: "a".into(),
            rollout: "r1".into(),
            state: "NOTIFIED".into(),
            version: "2.0".into(),
            at_ms: 2,
        })));
        journal.record(&Arc::new(FleetEvent::Command(CommandChange {
            id: "c1".into(),
            device: "a".into(),
            status: "queued".into(),
            at_ms: 3,
        })));
        let ota = journal.last_ota("a").expect("ota kept");
        assert_eq!(
            (ota.rollout.as_str(), ota.state.as_str()),
            ("r1", "NOTIFIED")
        );
        assert!(journal.last_ota("b").is_none());
    }

    #[test]
    fn a_forgotten_device_loses_its_events_and_late_ones_are_dropped() {
        let journal = small();
        journal.record(&shadow("a", 1));
        journal.record(&shadow("b", 2));
        journal.forget("a", 5);
        assert!(versions(&journal, "a").is_empty());
        assert_eq!(journal.size(), (1, 1));
        // An event from before the deletion arriving late is dropped; later ones are kept.
        journal.record(&shadow("a", 4));
        assert!(versions(&journal, "a").is_empty());
        journal.record(&shadow("a", 6));
        assert_eq!(versions(&journal, "a"), [6]);
    }

    #[tokio::test]
    async fn run_records_from_the_bus_until_it_closes() {
        let journal = Arc::new(small());
        let bus = crate::events::EventBus::new(16);
        let task = tokio::spawn(journal.clone().run(bus.subscribe()));
        bus.publish(FleetEvent::Shadow(ShadowChange {
            device: "a".into(),
            version: 7,
            at_ms: 7,
        }));
        drop(bus);
        task.await.expect("journal task");
        assert_eq!(versions(&journal, "a"), [7]);
    }
}
