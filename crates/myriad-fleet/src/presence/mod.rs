//! Online/offline state of devices, with ordered versions.
//!
//! [`PresenceTracker`] lives in memory and is driven by the broker's
//! connect/disconnect hooks (sans-IO: times are passed in). Each change
//! returns a [`PresenceEvent`], which the caller publishes on
//! `$events/presence/{id}` ([`PresenceEvent::topic`],
//! [`PresenceEvent::payload`]) and records in the store
//! ([`crate::store::FleetStore::put_presence`] with
//! [`PresenceTracker::get`]).
//!
//! # Ordering
//!
//! Every device has a `version` that grows by one with each event, across
//! restarts (the tracker is seeded from the stored records), so consumers
//! can drop stale or repeated events: keep the highest version seen per
//! device.
//!
//! A session takeover (the same client id connecting again while its old
//! connection is still open) yields one `online` event for the new
//! connection, with reason [`DisconnectReason::Takeover`] (the record
//! keeps it as its last disconnect); the old connection's later
//! disconnect is ignored, because
//! it names a connection id that is no longer the device's current one.
//! The broker must report a device's connects and disconnects in the
//! order they happen.
//!
//! # Crash recovery
//!
//! After a crash nobody marked the connected devices offline. At start-up,
//! [`PresenceTracker::recover`] takes the stored records and turns every
//! device recorded online into an offline one with reason
//! [`DisconnectReason::ServerRestart`], returning the events to publish
//! and store.

mod event;
mod reason;
mod tracker;

pub use event::{ConnectInfo, PresenceEvent, PresenceRecord};
pub use reason::{DisconnectReason, UnknownReason};
pub use tracker::PresenceTracker;
