//! Live change events for the web console: what the services change, as it
//! happens, on one in-process broadcast bus.
//!
//! - [`FleetEvent`]: one change (presence, command status, rollout state and
//!   counts, shadow version, a device's OTA state, an overview sample);
//! - [`EventBus`]: a bounded `tokio::sync::broadcast` channel
//!   ([`EVENT_BUS_CAPACITY`] events); a receiver that falls further behind
//!   loses the oldest events and is told how many (`RecvError::Lagged`);
//! - [`EventSink`]: what each service holds; it emits nothing until a bus is
//!   attached, and building an event is skipped while nobody listens;
//! - [`journal::DeviceJournal`]: the recent events of each device and the
//!   last presence changes, kept in bounded rings.
//!
//! Emitting never blocks and never fails: a change is reported once the
//! service applied it (shadows and rollouts after their commit, commands
//! once handed to the command log, presence as the tracker changes), and a
//! slow listener only loses events.

pub mod journal;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::sync::broadcast;

/// Events the bus holds for its slowest receiver before that receiver lags.
pub const EVENT_BUS_CAPACITY: usize = 4096;

/// A device going online or offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceChange {
    /// The device id.
    pub device: String,
    /// Whether it is now connected.
    pub online: bool,
    /// When it happened (unix ms).
    pub at_ms: u64,
    /// Why it went offline (`client_disconnect`, `keep_alive_timeout`, ...); `None` when online.
    pub reason: Option<String>,
}

/// A command whose status changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandChange {
    /// The command id.
    pub id: String,
    /// The device it is for.
    pub device: String,
    /// Its status as the commands API words it (`queued`, `delivered`, `succeeded`, ...).
    pub status: String,
    /// When it changed (unix ms).
    pub at_ms: u64,
}

/// A rollout whose state or per-state device counts changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutChange {
    /// The rollout id.
    pub id: String,
    /// Its status as the OTA API words it (`RUNNING`, `PAUSED`, ...).
    pub state: String,
    /// Devices per state (`QUEUED`, `NOTIFIED`, ...).
    pub counts: BTreeMap<String, u32>,
    /// When it changed (unix ms).
    pub at_ms: u64,
}

/// A shadow that got a new version (update or delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowChange {
    /// The device id.
    pub device: String,
    /// The shadow's version now.
    pub version: u64,
    /// When it changed (unix ms).
    pub at_ms: u64,
}

/// A device whose state in a rollout changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OtaChange {
    /// The device id.
    pub device: String,
    /// The rollout.
    pub rollout: String,
    /// The device's state in it (`NOTIFIED`, `DOWNLOADING`, `SUCCEEDED`, ...).
    pub state: String,
    /// The version the rollout installs.
    pub version: String,
    /// When it changed (unix ms).
    pub at_ms: u64,
}

/// One sample of the platform's numbers (taken every few seconds by the server).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct OverviewSample {
    /// When it was taken (unix ms).
    pub at_ms: u64,
    /// Open network MQTT connections.
    pub connections: u64,
    /// Sessions, online and offline.
    pub sessions: u64,
    /// PUBLISH packets received per second since the previous sample.
    pub messages_in_per_sec: f64,
    /// PUBLISH packets sent per second since the previous sample.
    pub messages_out_per_sec: f64,
    /// Messages dropped per second since the previous sample.
    pub dropped_per_sec: f64,
    /// 99th percentile of the store commits since the previous sample (ms; 0 without commits).
    pub store_commit_p99_ms: f64,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FleetEvent {
    /// A device went online or offline.
    Presence(PresenceChange),
    /// A command's status changed.
    Command(CommandChange),
    /// A rollout's state or counts changed.
    Rollout(RolloutChange),
    /// A shadow got a new version.
    Shadow(ShadowChange),
    /// A device's state in a rollout changed.
    Ota(OtaChange),
    /// A new overview sample.
    Overview(OverviewSample),
}

/// The kind of a [`FleetEvent`] (the SSE event name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// [`FleetEvent::Presence`].
    Presence,
    /// [`FleetEvent::Command`].
    Command,
    /// [`FleetEvent::Rollout`].
    Rollout,
    /// [`FleetEvent::Shadow`].
    Shadow,
    /// [`FleetEvent::Ota`].
    Ota,
    /// [`FleetEvent::Overview`].
    Overview,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 6] = [
        EventKind::Presence,
        EventKind::Command,
        EventKind::Rollout,
        EventKind::Shadow,
        EventKind::Ota,
        EventKind::Overview,
    ];

    /// Its name: `presence`, `command`, `rollout`, `shadow`, `ota`, `overview`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Presence => "presence",
            EventKind::Command => "command",
            EventKind::Rollout => "rollout",
            EventKind::Shadow => "shadow",
            EventKind::Ota => "ota",
            EventKind::Overview => "overview",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl FleetEvent {
    /// Its kind.
    pub fn kind(&self) -> EventKind {
        match self {
            FleetEvent::Presence(_) => EventKind::Presence,
            FleetEvent::Command(_) => EventKind::Command,
            FleetEvent::Rollout(_) => EventKind::Rollout,
            FleetEvent::Shadow(_) => EventKind::Shadow,
            FleetEvent::Ota(_) => EventKind::Ota,
            FleetEvent::Overview(_) => EventKind::Overview,
        }
    }

    /// The device it is about (`None` for rollouts and overview samples).
    pub fn device(&self) -> Option<&str> {
        match self {
            FleetEvent::Presence(e) => Some(&e.device),
            FleetEvent::Command(e) => Some(&e.device),
            FleetEvent::Shadow(e) => Some(&e.device),
            FleetEvent::Ota(e) => Some(&e.device),
            FleetEvent::Rollout(_) | FleetEvent::Overview(_) => None,
        }
    }

    /// When it happened (unix ms).
    pub fn at_ms(&self) -> u64 {
        match self {
            FleetEvent::Presence(e) => e.at_ms,
            FleetEvent::Command(e) => e.at_ms,
            FleetEvent::Rollout(e) => e.at_ms,
            FleetEvent::Shadow(e) => e.at_ms,
            FleetEvent::Ota(e) => e.at_ms,
            FleetEvent::Overview(e) => e.at_ms,
        }
    }

    /// Its data as JSON (the SSE `data:` line).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// One line for people: what happened to the device (the device events list).
    pub fn describe(&self) -> String {
        match self {
            FleetEvent::Presence(e) => match (&e.online, &e.reason) {
                (true, _) => "online".to_owned(),
                (false, Some(reason)) => format!("offline ({reason})"),
                (false, None) => "offline".to_owned(),
            },
            FleetEvent::Command(e) => format!("command {} {}", e.id, e.status),
            FleetEvent::Rollout(e) => format!("rollout {} {}", e.id, e.state),
            FleetEvent::Shadow(e) => format!("shadow version {}", e.version),
            FleetEvent::Ota(e) => format!("rollout {} ({}): {}", e.rollout, e.version, e.state),
            FleetEvent::Overview(_) => "overview sample".to_owned(),
        }
    }
}

/// The broadcast bus of [`FleetEvent`]s. Cheap to clone (one sender).
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<FleetEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(EVENT_BUS_CAPACITY)
    }
}

impl EventBus {
    /// A bus holding up to `capacity` events for its slowest receiver.
    pub fn new(capacity: usize) -> EventBus {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventBus { sender }
    }

    /// A new receiver of every event sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FleetEvent>> {
        self.sender.subscribe()
    }

    /// Whether anyone listens.
    pub fn has_listeners(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Sends `event` to every receiver (dropped when there is none).
    pub fn publish(&self, event: FleetEvent) {
        if self.has_listeners() {
            let _ = self.sender.send(Arc::new(event));
        }
    }
}

/// Where a service emits its events: nothing until [`EventSink::attach`]
/// gives it a bus.
#[derive(Debug, Default)]
pub struct EventSink(OnceLock<EventBus>);

impl EventSink {
    /// Sends this service's events to `bus` from now on (the first bus
    /// attached stays).
    pub fn attach(&self, bus: EventBus) {
        let _ = self.0.set(bus);
    }

    /// Emits the event `make` builds, if anyone listens (else `make` is not called).
    pub fn emit(&self, make: impl FnOnce() -> FleetEvent) {
        if let Some(bus) = self.0.get()
            && bus.has_listeners()
        {
            bus.publish(make());
        }
    }

    /// Whether a bus with listeners is attached (to skip preparing many events).
    pub fn is_listened(&self) -> bool {
        self.0.get().is_some_and(EventBus::has_listeners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow(device: &str, version: u64) -> FleetEvent {
        FleetEvent::Shadow(ShadowChange {
            device: device.into(),
            version,
            at_ms: 5,
        })
    }

    #[test]
    fn a_sink_without_a_bus_or_listeners_builds_nothing() {
        let sink = EventSink::default();
        sink.emit(|| panic!("no bus: the event must not be built"));
        let bus = EventBus::new(4);
        sink.attach(bus.clone());
        sink.emit(|| panic!("no listener: the event must not be built"));
        let mut rx = bus.subscribe();
        sink.emit(|| shadow("d1", 3));
        let got = rx.try_recv().expect("event");
        assert_eq!(*got, shadow("d1", 3));
        assert_eq!(got.kind(), EventKind::Shadow);
        assert_eq!(got.device(), Some("d1"));
        assert_eq!(got.to_json(), r#"{"device":"d1","version":3,"at_ms":5}"#);
    }

    #[test]
    fn a_slow_receiver_is_told_how_many_it_missed() {
        let bus = EventBus::new(2);
        let mut rx = bus.subscribe();
        for v in 0..5 {
            bus.publish(shadow("d", v));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 3),
            other => panic!("expected lag, got {other:?}"),
        }
        assert_eq!(rx.try_recv().expect("kept").at_ms(), 5);
    }

    #[test]
    fn kinds_parse_by_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("Presence"), None);
        assert_eq!(EventKind::parse(""), None);
    }
}
