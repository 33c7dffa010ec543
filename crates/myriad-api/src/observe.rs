//! `GET /metrics` (Prometheus text exposition) and `GET /readyz`
//! (readiness), served next to the API by [`observed_router`].
//!
//! What they report comes from an [`Observability`] source the binary
//! provides: this crate knows nothing of where the numbers come from.
//! Neither route is part of the OpenAPI document (they are for scrapers
//! and orchestrators, not API clients).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::Extension;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde::Serialize;

use crate::auth::require_token;
use crate::routes::router;
use crate::state::ApiState;

/// A boxed future, for the object-safe [`Observability`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the platform is ready to serve, part by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// The stores are open and the broker's core is running.
    pub store_open: bool,
    /// Every configured listener is bound.
    pub listeners_bound: bool,
    /// Whether this node joined its cluster (`None`: not clustered).
    pub cluster_joined: Option<bool>,
}

impl Readiness {
    /// Ready when every part is.
    pub fn is_ready(&self) -> bool {
        self.store_open && self.listeners_bound && self.cluster_joined.unwrap_or(true)
    }
}

/// Where `/metrics` and `/readyz` get their answers.
pub trait Observability: Send + Sync + 'static {
    /// Every metric in the Prometheus text exposition format.
    fn render_metrics(&self) -> BoxFuture<'_, String>;
    /// Readiness now.
    fn readiness(&self) -> Readiness;
}

/// How the observability routes are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObserveOptions {
    /// Whether `/metrics` needs the API's bearer token (off by default:
    /// Prometheus scrapers usually send none; bind the API to a private
    /// address or turn this on).
    pub metrics_require_token: bool,
}

/// `/readyz`'s body.
#[derive(Debug, Serialize)]
struct ReadyBody {
    status: &'static str,
    checks: Readiness,
}

type Source = Arc<dyn Observability>;

/// `GET /metrics`.
async fn metrics(Extension(source): Extension<Source>) -> impl IntoResponse {
    let text = source.render_metrics().await;
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], text)
}

/// `GET /readyz`: 200 when ready, 503 otherwise, with every check.
async fn readyz(Extension(source): Extension<Source>) -> impl IntoResponse {
    let checks = source.readiness();
    let (status, word) = if checks.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (
        status,
        Json(ReadyBody {
            status: word,
            checks,
        }),
    )
}

/// The API's [`router`] plus `/metrics` and `/readyz` answered by `source`.
pub fn observed_router(state: ApiState, source: Source, options: ObserveOptions) -> Router {
    let mut metrics_route = Router::new().route("/metrics", get(metrics));
    if options.metrics_require_token {
        metrics_route =
            metrics_route.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    }
    let observe = metrics_route
        .route("/readyz", get(readyz))
        .layer(Extension(source));
    // Merged first so the API's fallback (404 in its error shape) stays.
    observe.merge(router(state))
}
