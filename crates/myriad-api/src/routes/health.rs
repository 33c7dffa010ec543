//! `GET /healthz` and `GET /openapi.json` (no auth).

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::http::header;
use axum::response::IntoResponse;

use crate::dto::Health;

/// The OpenAPI document, serialized once when the router is built.
#[derive(Clone)]
pub(crate) struct OpenApiJson(pub Arc<str>);

/// Liveness: the server answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The server is up", body = Health))
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// This API's OpenAPI 3 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
pub(crate) async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.to_string(),
    )
}
