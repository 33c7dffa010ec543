//! What callers send: the command request shared by the HTTP API and the
//! MQTT request topic `$commands/request`, and fan-out targets.

use base64::Engine as _;
use bytes::Bytes;
use myriad_mqtt::{Properties, Publish};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CommandError, CommandService};
use crate::commands::{CommandSpec, CommandsConfig, Payload, Priority};
use crate::registry::DeviceId;
use crate::service::now_ms;

/// A command as a caller asks for it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// The command's name (one topic level).
    pub name: String,
    /// A JSON payload.
    #[serde(default)]
    pub payload: Option<Value>,
    /// A binary payload, base64 (instead of `payload`).
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// `l1`, `l2` (the default) or `l3`.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Reply timeout once sent, ms (default from the config).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Expiry, ms from now (L1 default from the config).
    #[serde(default)]
    pub expires_in_ms: Option<u64>,
    /// Whether the command only reads state (L2 reads fall back to the shadow).
    #[serde(default)]
    pub read: bool,
}

impl CommandRequest {
    /// Checks the request against `config` and makes the spec.
    pub fn into_spec(self, config: &CommandsConfig, now: u64) -> Result<CommandSpec, CommandError> {
        let payload = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(CommandError::Invalid(
                    "give payload or payload_base64, not both".into(),
                ));
            }
            (Some(value), None) => Payload::Json(value),
            (None, Some(text)) => Payload::Binary(
                base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| CommandError::Invalid(format!("payload_base64: {e}")))?,
            ),
            (None, None) => Payload::Json(Value::Null),
        };
        if payload.len() > config.max_payload_bytes {
            return Err(CommandError::Invalid(format!(
                "payload of {} bytes exceeds the limit of {} bytes",
                payload.len(),
                config.max_payload_bytes
            )));
        }
        let timeout_ms = self.timeout_ms.unwrap_or(config.default_timeout_ms);
        if timeout_ms > config.max_timeout_ms {
            return Err(CommandError::Invalid(format!(
                "timeout_ms {timeout_ms} exceeds the limit of {}",
                config.max_timeout_ms
            )));
        }
        if self.expires_in_ms == Some(0) {
            return Err(CommandError::Invalid(
                "expires_in_ms must be at least 1".into(),
            ));
        }
        let spec = CommandSpec {
            name: self.name,
            payload,
            priority: self.priority.unwrap_or(Priority::L2),
            timeout_ms,
            expires_at: self.expires_in_ms.map(|ms| now.saturating_add(ms)),
            read: self.read,
        };
        spec.validate().map_err(CommandError::Invalid)?;
        Ok(spec)
    }
}

/// The devices a fan-out goes to.
#[derive(Debug, Clone)]
pub enum Targets {
    /// These devices.
    Devices(Vec<DeviceId>),
    /// Every device of this group.
    Group(String),
}

/// Most devices listed in one request.
pub const MAX_LISTED_DEVICES: usize = 10_000;

impl Targets {
    /// Checks the list size and group name.
    pub fn validate(&self) -> Result<(), CommandError> {
        match self {
            Targets::Devices(devices) if devices.is_empty() => Err(CommandError::Invalid(
                "devices: give at least one device".into(),
            )),
            Targets::Devices(devices) if devices.len() > MAX_LISTED_DEVICES => {
                Err(CommandError::Invalid(format!(
                    "devices: at most {MAX_LISTED_DEVICES} (use a group for more)"
                )))
            }
            Targets::Group(group) if group.is_empty() => {
                Err(CommandError::Invalid("group: must not be empty".into()))
            }
            _ => Ok(()),
        }
    }
}

/// A request published by an application on `$commands/request`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttRequest {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    devices: Option<Vec<String>>,
    #[serde(default)]
    group: Option<String>,
    #[serde(flatten)]
    command: CommandRequest,
}

impl CommandService {
    /// Handles a request on `$commands/request`; the answer (the command,
    /// the batch, or `{"error": ..}`) goes to the request's Response Topic
    /// with its Correlation Data, if it has one.
    pub(super) async fn handle_request(self: &CommandService, publish: Publish) {
        let answer = match serde_json::from_slice::<MqttRequest>(&publish.payload) {
            Err(error) => json!({"error": "bad_request", "message": error.to_string()}),
            Ok(request) => self.answer(request).await,
        };
        let Some(response_topic) = publish.properties.response_topic.clone() else {
            return;
        };
        let properties = Properties {
            correlation_data: publish.properties.correlation_data.clone(),
            ..Properties::default()
        };
        let _ = self
            .publish(
                response_topic.to_string(),
                Bytes::from(answer.to_string()),
                properties.into(),
            )
            .await;
    }

    async fn answer(&self, request: MqttRequest) -> Value {
        let MqttRequest {
            device,
            devices,
            group,
            command,
        } = request;
        let outcome = match (device, devices, group) {
            (Some(device), None, None) => match DeviceId::new(device) {
                Ok(id) => self.submit(&id, command).await.map(|c| json!(c)),
                Err(e) => Err(CommandError::Invalid(e.to_string())),
            },
            (None, devices, group) if devices.is_some() != group.is_some() => {
                let targets = match (devices, group) {
                    (Some(list), None) => list
                        .into_iter()
                        .map(DeviceId::new)
                        .collect::<Result<Vec<_>, _>>()
                        .map(Targets::Devices)
                        .map_err(|e| CommandError::Invalid(e.to_string())),
                    (None, Some(group)) => Ok(Targets::Group(group)),
                    _ => Err(CommandError::Invalid("give devices or group".into())),
                };
                match (targets, self.self_arc()) {
                    (Ok(targets), Some(service)) => service
                        .submit_batch(targets, command)
                        .map(|b| json!({"batch_id": b.id})),
                    (Err(e), _) => Err(e),
                    (_, None) => Err(CommandError::Stopped),
                }
            }
            _ => Err(CommandError::Invalid(
                "give exactly one of device, devices or group".into(),
            )),
        };
        match outcome {
            Ok(value) => value,
            Err(error) => {
                let code = match &error {
                    CommandError::Refused(refused) => {
                        return json!({
                            "error": "rate_limited",
                            "message": error.to_string(),
                            "retry_after_ms": refused.retry_after_ms(),
                            "at": now_ms(),
                        });
                    }
                    CommandError::UnknownDevice(_) | CommandError::NotFound(_) => "not_found",
                    CommandError::Invalid(_) => "bad_request",
                    _ => "internal",
                };
                json!({"error": code, "message": error.to_string()})
            }
        }
    }
}
