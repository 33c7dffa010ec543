//! Device shadows: read, change `desired`, delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use myriad_fleet::service::now_ms;
use serde_json::Value;

use crate::blocking::blocking;
use crate::dto::{ErrorBody, ShadowPatch};
use crate::error::ApiError;
use crate::extract::{ApiJson, DevicePath};
use crate::schema::ShadowDocumentDoc;
use crate::state::ApiState;

/// The shadow document of a device (empty sections and version 0 if it
/// has none yet), with the delta when `desired` and `reported` differ.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/shadow",
    tag = "shadows",
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 200, description = "The shadow", body = ShadowDocumentDoc),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn get_shadow(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
) -> Result<Json<Value>, ApiError> {
    let shadow = blocking(move || Ok(state.shadows.get(&id)?)).await?;
    Ok(Json(shadow.get_document(None, now_ms())))
}

/// Changes the shadow's `desired` section (operators set `desired`; only
/// the device reports `reported`). The device is told the delta over MQTT.
#[utoipa::path(
    patch,
    path = "/api/v1/devices/{id}/shadow",
    tag = "shadows",
    params(("id" = String, Path, description = "The device id")),
    request_body = ShadowPatch,
    responses(
        (status = 200, description = "The accepted document", body = ShadowDocumentDoc),
        (status = 400, description = "Invalid body, or nested too deep", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 409, description = "The shadow is not at the given version", body = ErrorBody),
        (status = 413, description = "The resulting document is too large", body = ErrorBody),
    )
)]
pub(crate) async fn patch_shadow(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
    ApiJson(body): ApiJson<ShadowPatch>,
) -> Result<Json<Value>, ApiError> {
    let request = body.into_request()?;
    let accepted = state.shadows.update(&id, request).await?;
    Ok(Json(accepted.accepted))
}

/// Deletes the shadow of a device. The device is told on
/// `$shadow/{id}/delete/accepted` (`{"version", "timestamp"}`). The deletion
/// is itself a version: the version goes up by one and stays (after a
/// restart too), so a client holding the deleted shadow's version gets 409
/// and the next update starts above it. 404 when the device has no shadow
/// (never written, or deleted already).
#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}/shadow",
    tag = "shadows",
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such device, or it has no shadow", body = ErrorBody),
    )
)]
pub(crate) async fn delete_shadow(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
) -> Result<StatusCode, ApiError> {
    if state.shadows.delete(&id).await?.is_some() {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("device {id} has no shadow")))
    }
}
