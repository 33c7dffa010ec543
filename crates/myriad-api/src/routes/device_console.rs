//! A device's page in the console: its session as the broker holds it, its
//! recent events, and its OTA state.

use axum::Json;
use axum::extract::State;
use myriad_fleet::events::journal::EVENTS_PER_DEVICE;
use myriad_ota::rollout::DeviceState;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::devices::read_device;
use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::extract::{ApiQuery, DevicePath};
use crate::state::ApiState;

/// Subscriptions listed at most by `GET /api/v1/devices/{id}/session`.
pub(crate) const MAX_SESSION_SUBSCRIPTIONS: usize = 1000;

/// One subscription of a session.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubscriptionBody {
    /// The filter (with any `$share/{group}/` prefix).
    filter: String,
    /// Its maximum QoS (0, 1 or 2).
    qos: u8,
}

/// A device's session as the broker holds it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionBody {
    /// Whether a connection is attached.
    connected: bool,
    /// The session's client id (the device id).
    client_id: String,
    /// MQTT protocol level (3, 4 or 5) of the connection, or of the last one when offline
    /// (`null` if unknown).
    protocol: Option<u8>,
    /// The connection's Clean Start flag (`null` while offline).
    clean_start: Option<bool>,
    /// Session Expiry Interval, seconds (4294967295: never).
    expiry_secs: u32,
    /// Messages waiting in the session's queue.
    queued_messages: u64,
    /// Bytes (payload and topic) waiting in the queue.
    queued_bytes: u64,
    /// QoS 1/2 messages sent and not yet acknowledged.
    inflight: u64,
    /// Subscriptions in filter order, at most 1,000.
    subscriptions: Vec<SubscriptionBody>,
    /// Whether the session has more than 1,000 subscriptions.
    subscriptions_truncated: bool,
}

/// What the broker holds for the device's session: connected or not, queued and in-flight
/// messages, subscriptions (at most 1,000 listed).
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/session",
    tag = "console",
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 200, description = "The session", body = SessionBody),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "The broker holds no session for the device", body = ErrorBody),
        (status = 503, description = "The broker has stopped", body = ErrorBody),
    )
)]
pub(crate) async fn device_session(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
) -> Result<Json<SessionBody>, ApiError> {
    let view = state
        .console
        .broker
        .session(id.as_str(), MAX_SESSION_SUBSCRIPTIONS)
        .await
        .map_err(super::retained::broker_stopped)?
        .ok_or_else(|| ApiError::NotFound(format!("device {id} has no session")))?;
    let last_protocol = state
        .presence
        .get(&id)
        .map(|p| p.protocol)
        .filter(|&p| p != 0);
    Ok(Json(SessionBody {
        connected: view.connected,
        client_id: view.client_id.to_string(),
        protocol: view.protocol.or(last_protocol),
        clean_start: view.clean_start,
        expiry_secs: view.expiry_secs,
        queued_messages: view.queued_messages as u64,
        queued_bytes: view.queued_bytes as u64,
        inflight: view.inflight as u64,
        subscriptions: view
            .subscriptions
            .into_iter()
            .map(|s| SubscriptionBody {
                filter: s.filter.to_string(),
                qos: s.qos as u8,
            })
            .collect(),
        subscriptions_truncated: view.subscriptions_truncated,
    }))
}

/// Query of `GET /api/v1/devices/{id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeviceEventsParams {
    /// How many events, 1..=50 (default 50).
    limit: Option<String>,
}

/// One event of a device.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceEventBody {
    /// When it happened (unix ms).
    at_ms: u64,
    /// `presence`, `command`, `shadow` or `ota`.
    kind: String,
    /// What happened, in a few words.
    detail: String,
}

/// A device's recent events.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceEventList {
    /// Newest first.
    items: Vec<DeviceEventBody>,
}

/// The device's last events (presence, command status, shadow versions, OTA states), newest
/// first, from an in-memory ring: the last 50 events of each of the 10,000 most recently
/// active devices (100,000 events at most in all), lost at restart.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/events",
    tag = "console",
    params(("id" = String, Path, description = "The device id"), DeviceEventsParams),
    responses(
        (status = 200, description = "Its recent events", body = DeviceEventList),
        (status = 400, description = "Invalid id or limit", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn device_events(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
    ApiQuery(params): ApiQuery<DeviceEventsParams>,
) -> Result<Json<DeviceEventList>, ApiError> {
    let limit = match params.limit.as_deref().filter(|l| !l.is_empty()) {
        None => EVENTS_PER_DEVICE,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=EVENTS_PER_DEVICE).contains(&n) => n,
            _ => {
                let shown: String = raw.chars().take(32).collect();
                return Err(ApiError::BadRequest(format!(
                    "limit must be an integer in 1..={EVENTS_PER_DEVICE}, got {shown:?}"
                )));
            }
        },
    };
    let journal = state.console.journal.clone();
    read_device(state, id.clone()).await?;
    let items = journal
        .device_events(id.as_str(), limit)
        .iter()
        .map(|event| DeviceEventBody {
            at_ms: event.at_ms(),
            kind: event.kind().as_str().to_owned(),
            detail: event.describe(),
        })
        .collect();
    Ok(Json(DeviceEventList { items }))
}

/// What the OTA service knows of a device.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct DeviceOtaBody {
    /// The version installed by the last rollout that succeeded on the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    installed_version: Option<String>,
    /// The rollout the device was last part of.
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<String>,
    /// Its state in that rollout (`NOTIFIED`, `DOWNLOADING`, ..., `SUCCEEDED`, `FAILED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    /// The version that rollout installs.
    #[serde(skip_serializing_if = "Option::is_none")]
    target_version: Option<String>,
    /// When the state was entered or last reported (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_ms: Option<u64>,
}

/// The device's OTA state: the rollout it was last part of (from the rollouts in memory,
/// else from its recent events) and its state there. `{}` when nothing is known.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/ota",
    tag = "console",
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 200, description = "What is known", body = DeviceOtaBody),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn device_ota(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
) -> Result<Json<DeviceOtaBody>, ApiError> {
    let (ota, journal) = (state.ota.clone(), state.console.journal.clone());
    read_device(state, id.clone()).await?;
    let known = match ota.device_ota(id.as_str()) {
        Some(live) => Some((
            live.rollout,
            live.state.as_str().to_owned(),
            live.version,
            live.since_ms,
        )),
        None => journal
            .last_ota(id.as_str())
            .map(|o| (o.rollout, o.state, o.version, o.at_ms)),
    };
    let Some((rollout, device_state, version, updated_ms)) = known else {
        return Ok(Json(DeviceOtaBody::default()));
    };
    let succeeded = device_state == DeviceState::Succeeded.as_str();
    Ok(Json(DeviceOtaBody {
        installed_version: succeeded.then(|| version.clone()),
        rollout: Some(rollout),
        state: Some(device_state),
        target_version: Some(version),
        updated_ms: Some(updated_ms),
    }))
}
