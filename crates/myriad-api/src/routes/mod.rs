//! The router: every route, its OpenAPI description, auth and body limits.

mod accounts;
mod apps;
mod certs;
mod commands;
pub(crate) mod console;
mod debug;
mod device_console;
mod devices;
mod events;
mod health;
mod import;
mod ota;
mod overview;
mod pipelines;
mod presence;
mod prometheus;
mod retained;
mod shadows;
mod telemetry;
mod telemetry_bulk;
mod telemetry_multi;
pub(crate) mod tls;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router, middleware};
use myriad_fleet::registry::{Device, DeviceId, DevicePatch};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{authorize, authorize_influx};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::openapi::{ApiDoc, secure_api_paths};
use crate::state::ApiState;
use health::OpenApiJson;

/// Largest JSON body, 1 MiB.
pub(crate) const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// Every route behind [`authorize`] (without the layer): each must have
/// an entry in [`crate::policy::POLICY`].
pub(crate) fn protected_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(accounts::get_session))
        .routes(routes!(accounts::logout))
        .routes(routes!(accounts::list_users, accounts::create_user))
        .routes(routes!(
            accounts::get_user,
            accounts::update_user,
            accounts::delete_user
        ))
        .routes(routes!(accounts::set_password))
        .routes(routes!(accounts::list_tokens, accounts::create_token))
        .routes(routes!(accounts::revoke_token))
        .routes(routes!(accounts::list_audit))
        .routes(routes!(devices::create_device, devices::list_devices))
        .routes(routes!(
            devices::get_device,
            devices::patch_device,
            devices::delete_device
        ))
        .routes(routes!(devices::set_password))
        .routes(routes!(devices::disconnect_device))
        .routes(routes!(presence::device_presence))
        .routes(routes!(presence::list_online))
        .routes(routes!(presence::presence_count))
        .routes(routes!(telemetry::device_telemetry))
        .routes(routes!(telemetry::latest_telemetry))
        .routes(routes!(telemetry_multi::fleet_telemetry))
        .routes(routes!(prometheus::query_range))
        .routes(routes!(prometheus::query))
        .routes(routes!(prometheus::series))
        .routes(routes!(prometheus::labels))
        .routes(routes!(prometheus::label_values))
        .routes(routes!(prometheus::buildinfo))
        .routes(routes!(prometheus::metadata))
        .routes(routes!(telemetry_bulk::export_telemetry))
        .routes(routes!(
            shadows::get_shadow,
            shadows::patch_shadow,
            shadows::delete_shadow
        ))
        .routes(routes!(
            commands::send_command,
            commands::list_device_commands
        ))
        .routes(routes!(commands::send_batch))
        .routes(routes!(commands::breakers))
        .routes(routes!(commands::get_command, commands::cancel_command))
        .routes(routes!(commands::get_batch, commands::cancel_batch))
        .routes(routes!(apps::create_app, apps::list_apps))
        .routes(routes!(apps::get_app, apps::update_app, apps::delete_app))
        .routes(routes!(devices::list_groups))
        .routes(routes!(
            certs::add_device_certificate,
            certs::list_device_certificates
        ))
        .routes(routes!(certs::revoke_device_certificate))
        .routes(routes!(certs::add_ca, certs::list_cas))
        .routes(routes!(certs::set_crl))
        .routes(routes!(certs::delete_ca))
        .routes(routes!(tls::reload_tls))
        .routes(routes!(ota::list_artifacts))
        .routes(routes!(ota::signing_key))
        .routes(routes!(ota::create_delta, ota::list_deltas))
        .routes(routes!(ota::get_delta))
        .routes(routes!(ota::delta_content))
        .routes(routes!(ota::get_artifact, ota::delete_artifact))
        .routes(routes!(ota::artifact_content))
        .routes(routes!(ota::create_rollout, ota::list_rollouts))
        .routes(routes!(ota::get_rollout))
        .routes(routes!(ota::rollout_devices))
        .routes(routes!(ota::pause_rollout))
        .routes(routes!(ota::resume_rollout))
        .routes(routes!(ota::cancel_rollout))
        .routes(routes!(pipelines::list_pipelines))
        .routes(routes!(
            pipelines::get_pipeline,
            pipelines::put_pipeline,
            pipelines::delete_pipeline
        ))
        // The console's data routes (docs/console.md).
        .routes(routes!(events::events))
        .routes(routes!(overview::overview))
        .routes(routes!(device_console::device_session))
        .routes(routes!(device_console::device_events))
        .routes(routes!(device_console::device_ota))
        .routes(routes!(retained::list_retained, retained::delete_retained))
        // Profiles and task counts (admin only).
        .routes(routes!(debug::heap_profile))
        .routes(routes!(
            debug::get_heap_profiling,
            debug::set_heap_profiling
        ))
        .routes(routes!(debug::cpu_profile))
        .routes(routes!(debug::tasks))
        .route(
            "/api/v1/devices/import",
            get(import_device_get)
                .patch(import_device_patch)
                .delete(import_device_delete),
        )
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        // Streams its body with its own limit (`IMPORT_BODY_LIMIT`).
        .routes(routes!(import::import_devices))
        // Streams its body to disk with its own limit (`ota.max_artifact_bytes`).
        .routes(routes!(ota::upload_artifact))
        // Reads its body with its own limit (`WRITE_BODY_LIMIT`).
        .routes(routes!(telemetry_bulk::write_telemetry))
        // Streams its body with the pipeline source's limit (`max_body_bytes`).
        .routes(routes!(pipelines::ingest_records))
}

/// The InfluxDB compatible write routes (the token also as `Token` or a Basic password).
pub(crate) fn influx_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(telemetry_bulk::write_influx_v1))
        .routes(routes!(telemetry_bulk::write_influx_v2))
}

/// The whole API as an axum router, with `state` applied: `/healthz`,
/// `/openapi.json` and `/api/v1/login` open, everything else under `/api/v1`
/// behind [`authorize`] (see the [crate documentation](crate)).
pub fn router(state: ApiState) -> Router {
    let protected =
        protected_routes().route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let influx = influx_routes().route_layer(middleware::from_fn_with_state(
        state.clone(),
        authorize_influx,
    ));
    let login = OpenApiRouter::new()
        .routes(routes!(accounts::login))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::openapi_json))
        // Signed per device: no bearer token.
        .routes(routes!(ota::device_download))
        .merge(login)
        .merge(protected)
        .merge(influx)
        .split_for_parts();
    // The console's assets: no auth (documented in `ApiDoc`'s paths).
    let router = router.merge(console::router());
    secure_api_paths(&mut doc);
    let doc = doc.to_json().unwrap_or_else(|error| {
        tracing::error!(%error, "cannot serialize the OpenAPI document");
        String::from("{}")
    });
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(OpenApiJson(Arc::from(doc))))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// 404 in the API's error shape.
async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// 405 in the API's error shape.
async fn method_not_allowed() -> ApiError {
    ApiError::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

// `POST /api/v1/devices/import` takes the path of a device named
// `import`; these keep GET, PATCH and DELETE working for such a device.

/// The device id `import`.
fn import_id() -> Result<DeviceId, ApiError> {
    DeviceId::new("import").map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /api/v1/devices/import`: the device named `import`.
async fn import_device_get(State(state): State<ApiState>) -> Result<Json<Device>, ApiError> {
    devices::read_device(state, import_id()?).await.map(Json)
}

/// `PATCH /api/v1/devices/import`: changes the device named `import`.
async fn import_device_patch(
    State(state): State<ApiState>,
    ApiJson(patch): ApiJson<DevicePatch>,
) -> Result<Json<Device>, ApiError> {
    devices::update_device(state, import_id()?, patch)
        .await
        .map(Json)
}

/// `DELETE /api/v1/devices/import`: deletes the device named `import`.
async fn import_device_delete(State(state): State<ApiState>) -> Result<StatusCode, ApiError> {
    devices::remove_device(state, import_id()?).await
}
