//! Device shadows over MQTT and for the HTTP API.
//!
//! Topics (the device's namespace, see docs/topics.md):
//! - the device publishes `$shadow/{id}/update` (an update request) and
//!   `$shadow/{id}/get` (empty or `{"clientToken": ..}`);
//! - the platform answers on `$shadow/{id}/update/accepted`,
//!   `$shadow/{id}/update/rejected`, `$shadow/{id}/get/accepted`,
//!   `$shadow/{id}/get/rejected`, and publishes `$shadow/{id}/update/delta`
//!   whenever an update leaves `desired` different from `reported`, and
//!   `$shadow/{id}/update/documents` (previous and current) after every
//!   accepted update. All at QoS 1, so a persistent session that is offline
//!   gets the delta when it reconnects.
//!
//! Updates are applied one at a time (MQTT and HTTP alike), each read,
//! applied and stored before the next, so versions never race.

use std::sync::Arc;

use bytes::Bytes;
use myriad_broker::shell::{BrokerHandle, BrokerStopped, internal::InternalClient};
use myriad_broker::trace::trace_properties;
use myriad_mqtt::{ByteString, Properties, Publish, QoS};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::warn;

use super::now_ms;
use crate::registry::DeviceId;
use crate::shadow::{
    GetRequest, Shadow, ShadowLimits, UpdateAccepted, UpdateRejected, UpdateRequest,
};
use crate::store::{FleetStore, FleetStoreError};

/// One MQTT 5.0 user property (name, value).
type UserProperty = (ByteString, ByteString);

/// Why a shadow operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ShadowServiceError {
    /// No registered device has this id.
    #[error("no device {0}")]
    UnknownDevice(String),
    /// The update was rejected (bad request, version conflict, too large).
    #[error("{}", .0.message)]
    Rejected(UpdateRejected),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] FleetStoreError),
    /// A stored shadow does not decode.
    #[error("stored shadow of {device} is corrupt: {message}")]
    Corrupt {
        /// The device.
        device: String,
        /// What went wrong.
        message: String,
    },
}

/// Shadows of all devices. See the module docs.
pub struct ShadowService {
    store: Arc<FleetStore>,
    broker: BrokerHandle,
    limits: ShadowLimits,
    /// Serializes updates.
    updates: Mutex<()>,
}

impl ShadowService {
    /// A service over `store`, publishing through `broker`.
    pub fn new(
        store: Arc<FleetStore>,
        broker: BrokerHandle,
        limits: ShadowLimits,
    ) -> ShadowService {
        ShadowService {
            store,
            broker,
            limits,
            updates: Mutex::new(()),
        }
    }

    /// The shadow of `device` (a new, empty one if it has none yet).
    pub fn get(&self, device: &DeviceId) -> Result<Shadow, ShadowServiceError> {
        self.require_device(device)?;
        self.load(device)
    }

    /// Applies `request` to the shadow of `device`, stores it and publishes
    /// the accepted document, the delta and the documents.
    pub async fn update(
        &self,
        device: &DeviceId,
        request: UpdateRequest,
    ) -> Result<UpdateAccepted, ShadowServiceError> {
        self.update_traced(device, request, &[]).await
    }

    /// [`Self::update`] for a request that carried `trace` (its W3C
    /// `traceparent` / `tracestate` user properties): the documents it
    /// publishes carry them too, so the trace continues through the
    /// device layer.
    async fn update_traced(
        &self,
        device: &DeviceId,
        request: UpdateRequest,
        trace: &[UserProperty],
    ) -> Result<UpdateAccepted, ShadowServiceError> {
        self.require_device(device)?;
        let _turn = self.updates.lock().await;
        let mut shadow = self.load(device)?;
        let accepted = shadow
            .apply_request(request, now_ms(), &self.limits)
            .map_err(ShadowServiceError::Rejected)?;
        self.save(device, &shadow)?;
        self.announce(device, &accepted, trace).await;
        Ok(accepted)
    }

    /// Deletes the shadow of `device`; false if it had none.
    pub async fn delete(&self, device: &DeviceId) -> Result<bool, ShadowServiceError> {
        self.require_device(device)?;
        let _turn = self.updates.lock().await;
        Ok(self.store.delete_shadow(device)?)
    }

    fn require_device(&self, device: &DeviceId) -> Result<(), ShadowServiceError> {
        match self.store.get_device(device)? {
            Some(_) => Ok(()),
            None => Err(ShadowServiceError::UnknownDevice(
                device.as_str().to_string(),
            )),
        }
    }

    fn load(&self, device: &DeviceId) -> Result<Shadow, ShadowServiceError> {
        match self.store.get_shadow(device)? {
            None => Ok(Shadow::new()),
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| ShadowServiceError::Corrupt {
                    device: device.as_str().to_string(),
                    message: e.to_string(),
                })
            }
        }
    }

    fn save(&self, device: &DeviceId, shadow: &Shadow) -> Result<(), ShadowServiceError> {
        let bytes = serde_json::to_vec(shadow).map_err(|e| ShadowServiceError::Corrupt {
            device: device.as_str().to_string(),
            message: e.to_string(),
        })?;
        Ok(self.store.put_shadow(device, &bytes)?)
    }

    /// Publishes what an accepted update tells the device and applications.
    async fn announce(&self, device: &DeviceId, accepted: &UpdateAccepted, trace: &[UserProperty]) {
        let base = format!("$shadow/{}/update", device.as_str());
        let _ = self
            .send_traced(&format!("{base}/accepted"), &accepted.accepted, trace)
            .await;
        if let Some(delta) = &accepted.delta {
            let _ = self
                .send_traced(&format!("{base}/delta"), delta, trace)
                .await;
        }
        let _ = self
            .send_traced(&format!("{base}/documents"), &accepted.documents, trace)
            .await;
    }

    /// Publishes `body` on `topic` with the `trace` user properties.
    async fn send_traced(
        &self,
        topic: &str,
        body: &Value,
        trace: &[UserProperty],
    ) -> Result<(), BrokerStopped> {
        let properties = Properties {
            user_properties: trace.to_vec(),
            ..Properties::default()
        };
        self.broker
            .publish_at_least_once(
                topic.into(),
                Bytes::from(body.to_string()),
                properties.into(),
            )
            .await
    }

    /// Answers `$shadow/+/update` and `$shadow/+/get` until the broker stops.
    pub async fn run(self: Arc<Self>) -> Result<(), BrokerStopped> {
        let mut client: InternalClient = self.broker.connect_internal("shadow").await?;
        client
            .subscribe("$shadow/+/update", QoS::AtLeastOnce)
            .await?;
        client.subscribe("$shadow/+/get", QoS::AtLeastOnce).await?;
        while let Some(publish) = client.recv().await {
            self.handle(&publish).await?;
        }
        Ok(())
    }

    /// Handles one request from a device.
    async fn handle(&self, publish: &Publish) -> Result<(), BrokerStopped> {
        let mut parts = publish.topic.split('/');
        let (Some("$shadow"), Some(id), Some(action), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(());
        };
        let Ok(device) = DeviceId::new(id) else {
            return Ok(());
        };
        let base = format!("$shadow/{id}/{action}");
        let now = now_ms();
        let trace = trace_properties(&publish.properties.user_properties);
        let outcome = match action {
            "update" => match UpdateRequest::parse(&publish.payload, &self.limits) {
                Ok(request) => self
                    .update_traced(&device, request, &trace)
                    .await
                    .map(|_| None),
                Err(rejected) => Err(ShadowServiceError::Rejected(rejected)),
            },
            "get" => match GetRequest::parse(&publish.payload, &self.limits) {
                Ok(request) => self
                    .get(&device)
                    .map(|shadow| Some(shadow.get_document(request.client_token.as_deref(), now))),
                Err(rejected) => Err(ShadowServiceError::Rejected(rejected)),
            },
            _ => return Ok(()),
        };
        match outcome {
            // Update: accepted and delta were published by `update`.
            Ok(None) => Ok(()),
            Ok(Some(document)) => {
                self.send_traced(&format!("{base}/accepted"), &document, &trace)
                    .await
            }
            Err(error) => {
                let body = rejection(&error, &publish.payload, now);
                if let ShadowServiceError::Store(_) | ShadowServiceError::Corrupt { .. } = &error {
                    warn!(%error, device = id, "shadow request failed");
                }
                self.send_traced(&format!("{base}/rejected"), &body, &trace)
                    .await
            }
        }
    }
}

/// The `rejected` body for `error`, echoing the request's client token when it has one.
fn rejection(error: &ShadowServiceError, payload: &[u8], now: u64) -> Value {
    match error {
        ShadowServiceError::Rejected(rejected) => rejected.to_json(now),
        other => {
            let code = match other {
                ShadowServiceError::UnknownDevice(_) => 404,
                _ => 500,
            };
            let token = serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v.get("clientToken").cloned());
            let mut body = json!({"code": code, "message": other.to_string(), "timestamp": now});
            if let (Some(token), Some(map)) = (token, body.as_object_mut()) {
                map.insert("clientToken".into(), token);
            }
            body
        }
    }
}
