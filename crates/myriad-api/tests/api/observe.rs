//! `/metrics` and `/readyz` from `observed_router`, over a fake source.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use myriad_api::{
    BoxFuture, Observability, ObserveOptions, PROMETHEUS_CONTENT_TYPE, Readiness, observed_router,
};
use tower::ServiceExt;

use crate::support::{Harness, TOKEN};

struct Fake {
    listeners: AtomicBool,
}

impl Observability for Fake {
    fn render_metrics(&self) -> BoxFuture<'_, String> {
        Box::pin(async { "# TYPE x_total counter\nx_total 3\n".to_string() })
    }
    fn readiness(&self) -> Readiness {
        Readiness {
            store_open: true,
            listeners_bound: self.listeners.load(Ordering::Relaxed),
            cluster_joined: None,
        }
    }
}

async fn get(router: axum::Router, uri: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut request = Request::builder().uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = router
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, content_type, String::from_utf8_lossy(&bytes).into())
}

#[tokio::test]
async fn readyz_follows_the_checks() {
    let harness = Harness::new();
    let fake = Arc::new(Fake {
        listeners: AtomicBool::new(false),
    });
    let router = observed_router(
        harness.state.clone(),
        fake.clone(),
        ObserveOptions::default(),
    );
    let (status, _, body) = get(router.clone(), "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["listeners_bound"], false);
    assert_eq!(body["checks"]["store_open"], true);
    fake.listeners.store(true, Ordering::Relaxed);
    let (status, _, body) = get(router.clone(), "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The API itself is still there, with its own 404s.
    let (status, _, _) = get(router.clone(), "/api/v1/devices", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(router, "/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_are_open_unless_the_token_is_required() {
    let harness = Harness::new();
    let fake = Arc::new(Fake {
        listeners: AtomicBool::new(true),
    });
    let open = observed_router(
        harness.state.clone(),
        fake.clone(),
        ObserveOptions::default(),
    );
    let (status, content_type, body) = get(open, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, PROMETHEUS_CONTENT_TYPE);
    assert!(body.contains("x_total 3"), "{body}");
    let options = ObserveOptions {
        metrics_require_token: true,
    };
    let closed = observed_router(harness.state.clone(), fake, options);
    assert_eq!(
        get(closed.clone(), "/metrics", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(closed.clone(), "/metrics", Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(closed.clone(), "/metrics", Some(TOKEN)).await.0,
        StatusCode::OK
    );
    // Readiness never needs the token.
    assert_eq!(get(closed, "/readyz", None).await.0, StatusCode::OK);
}
