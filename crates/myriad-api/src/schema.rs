//! OpenAPI schemas of the fleet's own types, which do not derive
//! `utoipa::ToSchema` (the device layer does not depend on the HTTP
//! layer). These mirrors are for the document only, never built; a test
//! (`schema_mirrors_match_the_fleet_types` below) checks that their field
//! names match what the real types serialize.

// Documentation-only types: their fields are read by the derive alone.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use utoipa::ToSchema;

/// A registered device.
#[derive(ToSchema)]
#[schema(as = Device)]
pub(crate) struct DeviceDoc {
    /// The id, also the MQTT client id and user name.
    id: String,
    /// A human-readable name; may be empty.
    name: String,
    /// Free-form tags.
    attributes: BTreeMap<String, String>,
    /// Groups the device is in.
    groups: BTreeSet<String>,
    /// A disabled device may not log in.
    enabled: bool,
    /// When it was created (unix ms).
    created_at: u64,
    /// When it was last changed (unix ms).
    updated_at: u64,
}

/// A partial update of a device: absent fields stay as they are.
/// `attributes` merges (`null` removes a key); `groups` replaces the set;
/// `enabled: false` also ends cached MQTT logins. Unknown fields are
/// rejected.
#[derive(ToSchema)]
#[schema(as = DevicePatch)]
pub(crate) struct DevicePatchDoc {
    /// A new name.
    name: Option<String>,
    /// Attributes to set (a string) or remove (`null`).
    attributes: Option<BTreeMap<String, Option<String>>>,
    /// The new set of groups.
    groups: Option<BTreeSet<String>>,
    /// Enable or disable the device.
    enabled: Option<bool>,
}

/// One page of devices, in id order. When `next` is not `null` there may
/// be more: ask again with `after=next`. A page can be short (even empty)
/// while `next` is set, when the search stopped to bound its work.
#[derive(ToSchema)]
#[schema(as = DevicePage)]
pub(crate) struct DevicePageDoc {
    /// The devices.
    items: Vec<DeviceDoc>,
    /// The cursor of the next page.
    next: Option<String>,
}

/// The last known presence of a device. A device never seen is offline
/// with version 0.
#[derive(ToSchema)]
#[schema(as = PresenceRecord)]
pub(crate) struct PresenceRecordDoc {
    /// The device.
    device: String,
    /// Whether it is connected.
    online: bool,
    /// Grows by one with every presence event of this device.
    version: u64,
    /// The broker's id of the current (or last) connection.
    connection: u64,
    /// When it last connected (unix ms).
    last_connected_at: Option<u64>,
    /// When it last disconnected (unix ms).
    last_disconnected_at: Option<u64>,
    /// When anything was last heard from it (unix ms). While it stays
    /// connected this moves every `devices.last_seen_flush_secs` (default
    /// 30 s); at disconnect it is the time of the disconnect.
    last_seen: u64,
    /// Why it last went offline: `client_disconnect`, `network_loss`,
    /// `keep_alive_timeout`, `protocol_error`, `takeover`,
    /// `server_shutdown`, `server_restart`, `kicked`, `auth_failed`,
    /// `disabled` or `slow_consumer`.
    disconnect_reason: Option<String>,
    /// The address of the current (or last) connection, `ip:port`.
    address: Option<String>,
    /// MQTT protocol level of the current (or last) connection (4 or 5).
    protocol: u8,
    /// Keep-alive of the current (or last) connection, seconds.
    keep_alive_secs: u16,
}

/// A registered application client.
#[derive(ToSchema)]
#[schema(as = AppClient)]
pub(crate) struct AppClientDoc {
    /// The id; the client logs in to MQTT as `app:{id}`.
    id: String,
    /// A human-readable name.
    name: String,
    /// Filters of the topics it may publish to.
    publish: Vec<String>,
    /// Filters it may subscribe within.
    subscribe: Vec<String>,
    /// An admin client may publish and subscribe anywhere.
    admin: bool,
    /// When it was created (unix ms).
    created_at: u64,
}

/// A shadow document (AWS IoT Device Shadow format, timestamps in unix
/// ms): `{"state": {"desired": {..}, "reported": {..}, "delta": {..}},
/// "metadata": {"desired": {..}, "reported": {..}}, "version": 3,
/// "timestamp": ms, "clientToken": ".."}`. `delta` (the part of `desired`
/// that differs from `reported`) appears only when not empty.
#[derive(ToSchema)]
#[schema(as = ShadowDocument)]
pub(crate) struct ShadowDocumentDoc {
    /// `desired`, `reported` and, when not empty, `delta`.
    #[schema(value_type = Object)]
    state: Value,
    /// Per-field `{"timestamp": ms}` of `desired` and `reported`.
    #[schema(value_type = Object)]
    metadata: Value,
    /// Grows by one with every accepted update.
    version: u64,
    /// When this document was made (unix ms).
    timestamp: u64,
    /// The request's client token, when it had one.
    #[schema(rename = "clientToken")]
    client_token: Option<String>,
}

/// A command with its status history.
#[derive(ToSchema)]
#[schema(as = Command)]
pub(crate) struct CommandDoc {
    /// Its id (32 hex digits, time-ordered).
    id: String,
    /// The target device.
    device: String,
    /// The command's name.
    name: String,
    /// `{"json": ..}` or `{"binary": [bytes]}`.
    #[schema(value_type = Object)]
    payload: Value,
    /// `l1`, `l2` or `l3`.
    priority: String,
    /// Reply timeout once sent, ms.
    timeout_ms: u64,
    /// Expiry (unix ms).
    expires_at: Option<u64>,
    /// Whether it only reads state.
    read: bool,
    /// Its fan-out batch.
    batch: Option<String>,
    /// `queued`, `sent`, `delivered`, `succeeded`, `failed`, `timed_out`,
    /// `expired` or `cancelled`.
    status: String,
    /// When it reached each status (unix ms), by status.
    timestamps: BTreeMap<String, u64>,
    /// Why it failed, timed out, expired, or was answered from the shadow
    /// (`device_offline`, `breaker_open`, `timed_out`, `device_error`,
    /// `no_reply`, `server_restart`, ...).
    reason: Option<String>,
    /// The device's result (or the shadow's `reported` section).
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    /// `device` or `shadow`.
    source: Option<String>,
    /// How many times it was published.
    attempts: u32,
}

/// Progress of a fan-out batch.
#[derive(ToSchema)]
#[schema(as = CommandBatch)]
pub(crate) struct BatchDoc {
    /// Its id.
    id: String,
    /// The command's name.
    name: String,
    /// Its class.
    priority: String,
    /// When it was accepted (unix ms).
    created_at: u64,
    /// Whether every target has been handled.
    dispatched: bool,
    /// Targets handled so far.
    targets: u64,
    /// Targets that got no command (unknown device, device rate limit).
    refused: u64,
    /// Commands of the batch by current status.
    statuses: BTreeMap<String, u64>,
    /// Whether the batch was cancelled (`DELETE`): targets not yet handled
    /// got no command, its open commands were cancelled.
    cancelled: bool,
}

/// Circuit breakers: one per class, and the per-device ones that are not
/// closed and clean.
#[derive(ToSchema)]
#[schema(as = CommandBreakers)]
pub(crate) struct BreakersDoc {
    /// By class (`l1`, `l2`, `l3`): `{"state": "closed" | "open" |
    /// "half_open", "consecutive_failures", "window_calls",
    /// "window_failures", "opened", "retry_at"}`.
    #[schema(value_type = Object)]
    classes: Value,
    /// `{"device", "priority", "state", ...}` per device and class.
    #[schema(value_type = Vec<Object>)]
    devices: Vec<Value>,
}
