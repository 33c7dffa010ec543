//! The OpenAPI document's frame: info, tags, the bearer security scheme
//! ([`ApiDoc`]), and the 401/500 answers every `/api/v1` operation shares
//! ([`secure_api_paths`], applied once the routes have added their paths).

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as OpenApiDoc, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::dto::ErrorBody;
use crate::routes::console;

/// The name of the security scheme in the document.
const BEARER: &str = "bearer";

/// The document's frame; the paths come from the routes (utoipa-axum).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Myriad API",
        description = "Devices, credentials, presence, shadows, app clients and bulk import \
                       of a Myriad IoT platform. Every `/api/v1` route but login needs \
                       `Authorization: Bearer {token}` (the bootstrap token or a user's \
                       `myr_` API token) or the `myriad_session` cookie (then state-changing \
                       requests need `X-CSRF-Token`). Errors are \
                       `{\"status\": <u16>, \"message\": \"..\"}`. Timestamps are unix ms."
    ),
    components(schemas(ErrorBody)),
    paths(console::root, console::index, console::asset),
    modifiers(&SecuredApi),
    tags(
        (name = "health", description = "Liveness and this document"),
        (name = "console", description = "The web console's embedded assets (no auth; data comes from the API)"),
        (name = "accounts", description = "Operator accounts: login sessions (cookie + CSRF token), users and roles, API tokens, the audit log"),
        (name = "devices", description = "The device registry and credentials"),
        (name = "presence", description = "Who is online"),
        (name = "pipelines", description = "Data pipelines: state and counters, pipelines defined over the API, records streamed in"),
        (name = "telemetry", description = "Device telemetry: raw and aggregated points, latest values"),
        (name = "shadows", description = "Device shadows: desired and reported state"),
        (name = "apps", description = "Application clients"),
        (name = "commands", description = "Cloud-to-device commands: send, fan out, follow, cancel; breakers"),
        (name = "certificates", description = "Device certificates (pinned by fingerprint) and the CAs whose certificates identify devices"),
        (name = "tls", description = "TLS listeners: reload certificates, keys and CAs"),
        (name = "console", description = "The web console's data: live events (SSE), overview, a device's session, events and OTA state, retained messages"),
        (name = "ota", description = "Firmware updates: artifacts (upload, download with Range) and rollouts in waves"),
        (name = "debug", description = "Heap and CPU profiles on demand (pprof), live task counts; admin only"),
    )
)]
pub(crate) struct ApiDoc;

/// Adds the bearer security scheme.
struct SecuredApi;

impl Modify for SecuredApi {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Gives every `/api/v1` operation of `openapi` the bearer security
/// requirement and the 401 and 500 answers.
pub(crate) fn secure_api_paths(openapi: &mut OpenApiDoc) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        if !(path.starts_with("/api/v1") || path.starts_with("/debug/")) || path == "/api/v1/login"
        {
            continue;
        }
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            secure(operation);
        }
    }
}

/// Marks `operation` as needing the bearer token.
fn secure(operation: &mut Operation) {
    operation
        .security
        .get_or_insert_with(Vec::new)
        .push(SecurityRequirement::new::<_, [&str; 0], &str>(BEARER, []));
    for (status, description) in [
        ("401", "Missing or wrong bearer token"),
        ("500", "The store failed"),
    ] {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| error_response(description));
    }
}

/// A response carrying an [`ErrorBody`].
fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    let content = Content::new(Some(Ref::from_schema_name("ErrorBody")));
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content("application/json", content)
            .build(),
    )
}
