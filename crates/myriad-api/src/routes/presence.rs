//! Presence: one device's record, the online devices, and counts.

use axum::Json;
use axum::extract::State;
use myriad_fleet::presence::PresenceRecord;
use myriad_fleet::registry::DeviceId;

use super::devices::read_device;
use crate::blocking::blocking;
use crate::dto::{ErrorBody, OnlinePage, PresenceCount, PresenceListParams, parse_limit};
use crate::error::ApiError;
use crate::extract::{ApiQuery, DevicePath};
use crate::schema::PresenceRecordDoc;
use crate::state::ApiState;

/// The presence record of a device; a device never seen is offline with
/// version 0.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/presence",
    tag = "presence",
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 200, description = "Its presence", body = PresenceRecordDoc),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn device_presence(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
) -> Result<Json<PresenceRecord>, ApiError> {
    let presence = state.presence.clone();
    read_device(state, id.clone()).await?;
    Ok(Json(
        presence.get(&id).unwrap_or_else(|| PresenceRecord::new(id)),
    ))
}

/// The online devices, in id order, one page at a time, with how many are
/// online.
#[utoipa::path(
    get,
    path = "/api/v1/presence",
    tag = "presence",
    params(PresenceListParams),
    responses(
        (status = 200, description = "One page of online device ids", body = OnlinePage),
        (status = 400, description = "Invalid query", body = ErrorBody),
    )
)]
pub(crate) async fn list_online(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<PresenceListParams>,
) -> Result<Json<OnlinePage>, ApiError> {
    let limit = parse_limit(params.limit.as_deref())?;
    let after = match params.after.filter(|a| !a.is_empty()) {
        None => None,
        Some(after) => Some(DeviceId::new(after.as_str()).map_err(|reason| {
            ApiError::BadRequest(format!("after: device id {after:?} {reason}"))
        })?),
    };
    let page = state.presence.list_online(after.as_ref(), limit as usize);
    Ok(Json(OnlinePage {
        items: page.items,
        next: page.next,
        online: state.presence.online_count() as u64,
    }))
}

/// How many devices are online and how many are registered.
#[utoipa::path(
    get,
    path = "/api/v1/presence/count",
    tag = "presence",
    responses((status = 200, description = "The counts", body = PresenceCount))
)]
pub(crate) async fn presence_count(
    State(state): State<ApiState>,
) -> Result<Json<PresenceCount>, ApiError> {
    let online = state.presence.online_count() as u64;
    let devices = blocking(move || Ok(state.store.count_devices()?)).await?;
    Ok(Json(PresenceCount { online, devices }))
}
