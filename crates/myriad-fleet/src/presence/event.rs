//! What is known about a device's connection, and the events published
//! when it changes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::reason::DisconnectReason;
use crate::registry::DeviceId;

/// Facts about a new connection, from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectInfo {
    /// The client's address, if known.
    pub address: Option<SocketAddr>,
    /// MQTT protocol level: 3 for 3.1, 4 for 3.1.1, 5 for 5.0 (0 if unknown).
    pub protocol: u8,
    /// The keep-alive the session runs with, seconds.
    pub keep_alive_secs: u16,
}

/// The last known presence of one device, as stored and as the API shows
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// The device.
    pub device: DeviceId,
    /// Whether it is connected.
    pub online: bool,
    /// Grows by one with every event of this device.
    pub version: u64,
    /// The broker's id of the current (or last) connection.
    pub connection: u64,
    /// When it last connected (unix ms).
    pub last_connected_at: Option<u64>,
    /// When it last disconnected (unix ms).
    pub last_disconnected_at: Option<u64>,
    /// When anything was last heard from it (unix ms).
    pub last_seen: u64,
    /// Why it last went offline (kept while it is online again).
    pub disconnect_reason: Option<DisconnectReason>,
    /// The address of the current (or last) connection.
    pub address: Option<SocketAddr>,
    /// MQTT protocol level of the current (or last) connection.
    pub protocol: u8,
    /// Keep-alive of the current (or last) connection, seconds.
    pub keep_alive_secs: u16,
}

impl PresenceRecord {
    /// A device never seen before: offline, version 0.
    pub fn new(device: DeviceId) -> Self {
        PresenceRecord {
            device,
            online: false,
            version: 0,
            connection: 0,
            last_connected_at: None,
            last_disconnected_at: None,
            last_seen: 0,
            disconnect_reason: None,
            address: None,
            protocol: 0,
            keep_alive_secs: 0,
        }
    }

    /// The event describing the record's current state at `at`.
    pub(super) fn event(&self, at: u64) -> PresenceEvent {
        PresenceEvent {
            device: self.device.clone(),
            online: self.online,
            version: self.version,
            at,
            reason: if self.online {
                None
            } else {
                self.disconnect_reason
            },
            address: self.address,
        }
    }
}

/// A device went online or offline. Published as JSON on
/// `$events/presence/{id}`:
///
/// ```json
/// {"device":"d1","online":false,"version":3,"at":1700000000000,
///  "reason":"keep_alive_timeout","address":"192.0.2.1:51234"}
/// ```
///
/// `reason` is `null` for `online` events, except `"takeover"` when the
/// connection replaced one of the same device that was still open;
/// `address` is `null` when unknown. Consumers keep the highest `version` per device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// The device.
    pub device: DeviceId,
    /// Whether it is now connected.
    pub online: bool,
    /// The device's presence version after this event.
    pub version: u64,
    /// When it happened (unix ms).
    pub at: u64,
    /// Why it went offline (`None` when online).
    pub reason: Option<DisconnectReason>,
    /// The connection's address.
    pub address: Option<SocketAddr>,
}

impl PresenceEvent {
    /// The topic the event is published on: `$events/presence/{id}`.
    pub fn topic(&self) -> String {
        format!("$events/presence/{}", self.device)
    }

    /// The JSON payload.
    pub fn payload(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_shape() {
        let event = PresenceEvent {
            device: DeviceId::new("d1").unwrap(),
            online: false,
            version: 3,
            at: 1_700_000_000_000,
            reason: Some(DisconnectReason::KeepAliveTimeout),
            address: Some("192.0.2.1:51234".parse().unwrap()),
        };
        assert_eq!(event.topic(), "$events/presence/d1");
        let json: serde_json::Value = serde_json::from_slice(&event.payload().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"device":"d1","online":false,"version":3,"at":1_700_000_000_000u64,
                "reason":"keep_alive_timeout","address":"192.0.2.1:51234"})
        );
        let online = PresenceEvent {
            online: true,
            reason: None,
            address: None,
            ..event
        };
        let json: serde_json::Value = serde_json::from_slice(&online.payload().unwrap()).unwrap();
        assert_eq!(json["reason"], serde_json::Value::Null);
        assert_eq!(json["address"], serde_json::Value::Null);
    }
}
