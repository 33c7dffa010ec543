//! The device registry: create, search, read, update, delete, passwords.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use myriad_fleet::credentials::hash_password;
use myriad_fleet::registry::{Device, DeviceId, DevicePatch, NewDevice, Page};
use myriad_fleet::service::devices::{DeviceAdminError, Revocation};
use myriad_fleet::service::now_ms;
use myriad_fleet::store::FleetStoreError;

use crate::blocking::blocking;
use crate::dto::{
    CreateDevice, DeviceListParams, Disconnected, ErrorBody, GroupCount, GroupListParams,
    GroupPage, PasswordBody,
};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, DevicePath};
use crate::schema::{DeviceDoc, DevicePageDoc, DevicePatchDoc};
use crate::state::ApiState;

/// A 404 for device `id`.
pub(crate) fn device_not_found(id: &DeviceId) -> ApiError {
    FleetStoreError::DeviceNotFound(id.clone()).into()
}

/// Creates a device, with an Argon2id hash of its password if one is given.
#[utoipa::path(
    post,
    path = "/api/v1/devices",
    tag = "devices",
    request_body = CreateDevice,
    responses(
        (status = 201, description = "Created", body = DeviceDoc),
        (status = 400, description = "Invalid body or field", body = ErrorBody),
        (status = 409, description = "The id is taken by a device or an app client", body = ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = ErrorBody),
    )
)]
pub(crate) async fn create_device(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateDevice>,
) -> Result<(StatusCode, Json<Device>), ApiError> {
    let (new, password) = body.into_parts()?;
    let now = now_ms();
    let device = blocking(move || {
        let store = &state.store;
        let Some(password) = password else {
            return Ok(store.create_device(&new, now)?);
        };
        // Refuse a taken id before spending an Argon2 hash on it.
        if store.get_device(&new.id)?.is_some() {
            return Err(FleetStoreError::DeviceExists(new.id).into());
        }
        let phc = hash_password(password.expose(), &state.hash_params)?;
        insert_with_credential(&state, new, phc, now)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(device)))
}

/// Inserts `new` with its credential in one transaction (never a device
/// without its password, nor a password without its device).
fn insert_with_credential(
    state: &ApiState,
    new: NewDevice,
    phc: String,
    now: u64,
) -> Result<Device, ApiError> {
    let device = new.clone().into_device(now)?;
    let results = state.store.insert_devices_batch(&[(new, Some(phc))], now)?;
    match results.into_iter().next() {
        Some(result) => result?,
        None => return Err(ApiError::Internal("the store reported no result".into())),
    }
    Ok(device)
}

/// The device groups, in name order, with how many devices each has, one
/// page at a time, from the registry's group index: one seek per group and
/// a count of its entries (the cost is the page's groups and their devices).
#[utoipa::path(
    get,
    path = "/api/v1/groups",
    tag = "devices",
    params(GroupListParams),
    responses(
        (status = 200, description = "One page of groups", body = GroupPage),
        (status = 400, description = "Invalid query", body = ErrorBody),
    )
)]
pub(crate) async fn list_groups(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<GroupListParams>,
) -> Result<Json<GroupPage>, ApiError> {
    let limit = crate::dto::parse_limit(params.limit.as_deref())? as usize;
    let after = params.after.filter(|a| !a.is_empty());
    let (items, next) =
        blocking(move || Ok(state.store.list_groups(after.as_deref(), limit)?)).await?;
    Ok(Json(GroupPage {
        items: items
            .into_iter()
            .map(|(group, devices)| GroupCount { group, devices })
            .collect(),
        next,
    }))
}

/// Searches devices, in id order, one page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    params(DeviceListParams),
    responses(
        (status = 200, description = "One page of devices", body = DevicePageDoc),
        (status = 400, description = "Invalid query", body = ErrorBody),
    )
)]
pub(crate) async fn list_devices(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<DeviceListParams>,
) -> Result<Json<Page<Device>>, ApiError> {
    let query = params.into_query()?;
    let page = blocking(move || Ok(state.store.list_devices(&query)?)).await?;
    Ok(Json(page))
}

/// One device.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 200, description = "The device", body = DeviceDoc),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn get_device(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
) -> Result<Json<Device>, ApiError> {
    read_device(state, id).await.map(Json)
}

/// Reads device `id`, 404 if it does not exist.
pub(crate) async fn read_device(state: ApiState, id: DeviceId) -> Result<Device, ApiError> {
    blocking(move || {
        state
            .store
            .get_device(&id)?
            .ok_or_else(|| device_not_found(&id))
    })
    .await
}

/// Changes some fields of a device. Disabling it (`"enabled": false`) also
/// ends the cached MQTT logins of its password and closes its open
/// connection (5.0: DISCONNECT 0x87; presence `disabled`).
#[utoipa::path(
    patch,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "The device id")),
    request_body = DevicePatchDoc,
    responses(
        (status = 200, description = "The updated device", body = DeviceDoc),
        (status = 400, description = "Invalid body or field", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn patch_device(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
    ApiJson(patch): ApiJson<DevicePatch>,
) -> Result<Json<Device>, ApiError> {
    update_device(state, id, patch).await.map(Json)
}

/// Applies `patch` to device `id`.
pub(crate) async fn update_device(
    state: ApiState,
    id: DeviceId,
    patch: DevicePatch,
) -> Result<Device, ApiError> {
    let admin = state.devices.clone();
    let disables = patch.enabled == Some(false);
    let device = blocking(move || Ok(state.store.update_device(&id, &patch, now_ms())?)).await?;
    if disables {
        admin.revoke(&device.id, Revocation::Disabled).await;
    }
    Ok(device)
}

/// Deletes a device and everything kept for it: its password, shadow and
/// presence record, its open connection (5.0: DISCONNECT 0x87; presence
/// `disabled`), its MQTT session and queued messages, the retained
/// messages of its namespace, and its commands that are not final
/// (`cancelled`, reason `device_deleted`).
#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn delete_device(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
) -> Result<StatusCode, ApiError> {
    remove_device(state, id).await
}

/// Deletes device `id` and forgets it everywhere.
pub(crate) async fn remove_device(state: ApiState, id: DeviceId) -> Result<StatusCode, ApiError> {
    state.devices.delete(&id).await.map_err(admin_error)?;
    // Its recent events go too (the console's device events).
    state.console.journal.forget(id.as_str(), now_ms());
    Ok(StatusCode::NO_CONTENT)
}

/// Closes the device's open MQTT connection, if it has one (5.0: DISCONNECT
/// 0x98 Administrative action; presence `kicked`). The device may connect
/// again at once: disable it to keep it out.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/disconnect",
    tag = "devices",
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 200, description = "Whether a connection was closed", body = Disconnected),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn disconnect_device(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
) -> Result<Json<Disconnected>, ApiError> {
    let disconnected = state.devices.kick(&id).await.map_err(admin_error)?;
    Ok(Json(Disconnected {
        device: id.into_string(),
        disconnected,
    }))
}

/// The API error for a failed device operation.
fn admin_error(error: DeviceAdminError) -> ApiError {
    match error {
        DeviceAdminError::Store(error) => error.into(),
        DeviceAdminError::Stopped => ApiError::Internal(error.to_string()),
    }
}

/// Sets a device's MQTT password (stored as an Argon2id hash), ends the
/// cached logins of the old one and closes the connection opened with it
/// (5.0: DISCONNECT 0x98; presence `kicked`).
#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/password",
    tag = "devices",
    params(("id" = String, Path, description = "The device id")),
    request_body = PasswordBody,
    responses(
        (status = 204, description = "Password set"),
        (status = 400, description = "Invalid body or password", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn set_password(
    State(state): State<ApiState>,
    DevicePath(id): DevicePath,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    crate::dto::check_password(&body.password)?;
    let admin = state.devices.clone();
    let device = id.clone();
    blocking(move || {
        if state.store.get_device(&id)?.is_none() {
            return Err(device_not_found(&id));
        }
        let phc = hash_password(body.password.expose(), &state.hash_params)?;
        // A device deleted meanwhile fails here with a 404.
        state.store.put_credential(id.as_str(), &phc)?;
        Ok(())
    })
    .await?;
    admin.revoke(&device, Revocation::PasswordChanged).await;
    Ok(StatusCode::NO_CONTENT)
}
