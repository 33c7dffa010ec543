//! Bodies and queries of the command routes.

use myriad_fleet::commands::Priority;
use myriad_fleet::service::commands::CommandRequest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// A command for one device. `{"name": "reboot", "payload": {"delay": 5},
/// "priority": "l1", "timeout_ms": 10000, "expires_in_ms": 3600000}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendCommand {
    /// The command's name: one topic level of letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// A JSON payload (default `null`).
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// A binary payload in base64, instead of `payload`.
    pub payload_base64: Option<String>,
    /// `l1` (critical, queued for offline devices), `l2` (normal, the
    /// default) or `l3` (low, dropped first).
    #[schema(value_type = Option<String>, example = "l2")]
    pub priority: Option<Priority>,
    /// How long the device has to reply once the command is sent, ms.
    pub timeout_ms: Option<u64>,
    /// Expiry, ms from now (L1 commands default to the configured expiry).
    pub expires_in_ms: Option<u64>,
    /// Whether the command only reads state: an L2 read the device cannot
    /// answer is answered from its shadow's `reported` section.
    #[serde(default)]
    pub read: bool,
}

impl SendCommand {
    /// The service's request.
    pub(crate) fn into_request(self) -> CommandRequest {
        CommandRequest {
            name: self.name,
            payload: self.payload,
            payload_base64: self.payload_base64,
            priority: self.priority,
            timeout_ms: self.timeout_ms,
            expires_in_ms: self.expires_in_ms,
            read: self.read,
        }
    }
}

/// A command for several devices: `devices` (a list) or `group`, and the
/// fields of a single command.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendBatch {
    /// The devices (at most 10,000; use a group for more).
    pub devices: Option<Vec<String>>,
    /// Every device in this group.
    pub group: Option<String>,
    /// The command's name.
    pub name: String,
    /// A JSON payload.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// A binary payload in base64.
    pub payload_base64: Option<String>,
    /// `l1`, `l2` or `l3`.
    #[schema(value_type = Option<String>, example = "l2")]
    pub priority: Option<Priority>,
    /// Reply timeout once sent, ms.
    pub timeout_ms: Option<u64>,
    /// Expiry, ms from now.
    pub expires_in_ms: Option<u64>,
    /// Whether the command only reads state.
    #[serde(default)]
    pub read: bool,
}

impl SendBatch {
    /// The command part.
    pub(crate) fn request(&self) -> CommandRequest {
        CommandRequest {
            name: self.name.clone(),
            payload: self.payload.clone(),
            payload_base64: self.payload_base64.clone(),
            priority: self.priority,
            timeout_ms: self.timeout_ms,
            expires_in_ms: self.expires_in_ms,
            read: self.read,
        }
    }
}

/// The answer to a fan-out: follow it at `/api/v1/command-batches/{batch_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchAccepted {
    /// The batch's id.
    pub batch_id: String,
}

/// Paging of a device's commands (newest first).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CommandListParams {
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<String>,
    /// Only commands older than this command id (the previous page's `next`).
    pub before: Option<String>,
}

/// One page of a device's commands.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CommandPage {
    /// Newest first.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
    /// The cursor for the next page (`before=`), if there may be one.
    pub next: Option<String>,
}
