//! Application clients: create (with a password), list, read, update,
//! delete.
//!
//! # Credential key
//!
//! An app client logs in to MQTT as `app:{id}`, and the authenticator
//! caches verified logins under that name ([`login_name`]). Its password
//! hash is stored under the store's key for the client, its bare id
//! ([`credential_key`]): the store accepts credentials only under the id
//! of an existing device or app client (device and app ids share one
//! namespace, so the bare id is unambiguous), and
//! `FleetStore::delete_app` removes the credential under that key.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use myriad_fleet::credentials::hash_password;
use myriad_fleet::registry::{AppClient, AppId};
use myriad_fleet::service::auth::APP_USERNAME_PREFIX;
use myriad_fleet::service::now_ms;
use myriad_fleet::store::FleetStoreError;

use crate::blocking::blocking;
use crate::dto::{AppList, CreateApp, ErrorBody, UpdateApp};
use crate::error::ApiError;
use crate::extract::{ApiJson, AppPath};
use crate::schema::AppClientDoc;
use crate::state::ApiState;

/// The MQTT user name of app client `id`: `app:{id}`.
pub(crate) fn login_name(id: &AppId) -> String {
    format!("{APP_USERNAME_PREFIX}{id}")
}

/// The key of app client `id`'s password hash in the store (see the
/// [module documentation](self)).
pub(crate) fn credential_key(id: &AppId) -> &str {
    id.as_str()
}

/// Creates an app client with an Argon2id hash of its password.
#[utoipa::path(
    post,
    path = "/api/v1/apps",
    tag = "apps",
    request_body = CreateApp,
    responses(
        (status = 201, description = "Created", body = AppClientDoc),
        (status = 400, description = "Invalid body, field or filter", body = ErrorBody),
        (status = 409, description = "The id is taken by an app client or a device", body = ErrorBody),
    )
)]
pub(crate) async fn create_app(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateApp>,
) -> Result<(StatusCode, Json<AppClient>), ApiError> {
    let (new, password) = body.into_parts()?;
    let auth = state.auth.clone();
    let app = blocking(move || {
        let store = &state.store;
        // Refuse a taken id before spending an Argon2 hash on it.
        if store.get_app(&new.id)?.is_some() {
            return Err(FleetStoreError::AppExists(new.id).into());
        }
        let phc = hash_password(password.expose(), &state.hash_params)?;
        let app = store.create_app(&new, now_ms())?;
        if let Err(error) = store.put_credential(credential_key(&app.id), &phc) {
            // No app client without its password: undo the creation.
            if let Err(undo) = store.delete_app(&app.id) {
                tracing::error!(%undo, app = %app.id, "cannot undo a half-created app client");
            }
            return Err(error.into());
        }
        Ok(app)
    })
    .await?;
    auth.forget(&login_name(&app.id));
    Ok((StatusCode::CREATED, Json(app)))
}

/// Every app client, in id order.
#[utoipa::path(
    get,
    path = "/api/v1/apps",
    tag = "apps",
    responses((status = 200, description = "The app clients", body = AppList))
)]
pub(crate) async fn list_apps(State(state): State<ApiState>) -> Result<Json<AppList>, ApiError> {
    let items = blocking(move || Ok(state.store.list_apps()?)).await?;
    Ok(Json(AppList { items }))
}

/// One app client.
#[utoipa::path(
    get,
    path = "/api/v1/apps/{id}",
    tag = "apps",
    params(("id" = String, Path, description = "The app client id")),
    responses(
        (status = 200, description = "The app client", body = AppClientDoc),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such app client", body = ErrorBody),
    )
)]
pub(crate) async fn get_app(
    State(state): State<ApiState>,
    AppPath(id): AppPath,
) -> Result<Json<AppClient>, ApiError> {
    let app = blocking(move || {
        state
            .store
            .get_app(&id)?
            .ok_or_else(|| FleetStoreError::AppNotFound(id).into())
    })
    .await?;
    Ok(Json(app))
}

/// Changes an app client (name, ACL lists, admin flag, password) in
/// place. Any change closes its live MQTT connections (5.0: DISCONNECT
/// 0x98 Administrative action; no will) and forgets its cached logins: a
/// connection's rights are fixed at CONNECT, so the client reconnects and
/// gets the new ones (with the new password if it changed).
#[utoipa::path(
    patch,
    path = "/api/v1/apps/{id}",
    tag = "apps",
    params(("id" = String, Path, description = "The app client id")),
    request_body = UpdateApp,
    responses(
        (status = 200, description = "The app client as changed", body = AppClientDoc),
        (status = 400, description = "Invalid body, field, filter or password", body = ErrorBody),
        (status = 404, description = "No such app client", body = ErrorBody),
    )
)]
pub(crate) async fn update_app(
    State(state): State<ApiState>,
    AppPath(id): AppPath,
    ApiJson(body): ApiJson<UpdateApp>,
) -> Result<Json<AppClient>, ApiError> {
    let admin = state.devices.clone();
    let app = blocking(move || {
        let store = &state.store;
        let app = store
            .get_app(&id)?
            .ok_or_else(|| FleetStoreError::AppNotFound(id.clone()))?;
        let (updated, password) = body.apply(&app)?;
        if let Some(password) = password {
            let phc = hash_password(password.expose(), &state.hash_params)?;
            store.put_credential(credential_key(&updated.id), &phc)?;
        }
        store.put_app(&updated)?;
        Ok(updated)
    })
    .await?;
    admin.revoke_app(app.id.as_str(), false).await;
    Ok(Json(app))
}

/// Deletes an app client and its password, ends its cached MQTT logins
/// and closes its live connections (5.0: DISCONNECT 0x87 Not authorized;
/// no will).
#[utoipa::path(
    delete,
    path = "/api/v1/apps/{id}",
    tag = "apps",
    params(("id" = String, Path, description = "The app client id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such app client", body = ErrorBody),
    )
)]
pub(crate) async fn delete_app(
    State(state): State<ApiState>,
    AppPath(id): AppPath,
) -> Result<StatusCode, ApiError> {
    let auth = state.auth.clone();
    let admin = state.devices.clone();
    let name = login_name(&id);
    let app = id.as_str().to_string();
    // `delete_app` removes the credential under `credential_key` too.
    blocking(move || Ok(state.store.delete_app(&id)?)).await?;
    auth.forget(&name);
    admin.revoke_app(&app, true).await;
    Ok(StatusCode::NO_CONTENT)
}
