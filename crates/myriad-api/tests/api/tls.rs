//! `POST /api/v1/tls/reload`: runs the server's reloader once and reports
//! each listener, or names the file that did not load.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use myriad_api::TlsReloadOutcome;
use myriad_broker::shell::tls::TlsSetupError;
use serde_json::json;

use crate::support::{Harness, assert_error};

/// A harness whose reloader answers `outcomes()` and counts its calls.
fn harness(outcomes: fn() -> Vec<TlsReloadOutcome>) -> (Harness, Arc<AtomicUsize>) {
    let mut h = Harness::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    h.state.tls_reload = Arc::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        outcomes()
    });
    (h, calls)
}

fn ok(listener: &str) -> TlsReloadOutcome {
    TlsReloadOutcome {
        listener: listener.into(),
        result: Ok(()),
    }
}

#[tokio::test]
async fn every_listener_reloaded_is_listed() {
    let (h, calls) = harness(|| vec![ok("127.0.0.1:8883"), ok("api")]);
    let reply = h.call(Method::POST, "/api/v1/tls/reload", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.body,
        json!({"listeners": [
            {"listener": "127.0.0.1:8883", "reloaded": true},
            {"listener": "api", "reloaded": true},
        ]})
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_file_that_does_not_load_is_named() {
    let (h, _) = harness(|| {
        vec![
            ok("127.0.0.1:8883"),
            TlsReloadOutcome {
                listener: "api".into(),
                result: Err(TlsSetupError::File {
                    what: "cert",
                    path: PathBuf::from("/etc/myriad/api.pem"),
                    reason: "no CERTIFICATE block in the file".into(),
                }),
            },
        ]
    });
    let reply = h.call(Method::POST, "/api/v1/tls/reload", None).await;
    let message = assert_error(&reply, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        message,
        "TLS reload failed for listener api: cert /etc/myriad/api.pem: no CERTIFICATE block \
         in the file; the settings in force stay there (reloaded: 127.0.0.1:8883)"
    );
}

#[tokio::test]
async fn the_token_is_required_and_get_is_refused() {
    let (h, calls) = harness(Vec::new);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/tls/reload")
        .body(Body::empty())
        .expect("request");
    assert_error(&h.send(request).await, StatusCode::UNAUTHORIZED);
    assert_error(
        &h.get("/api/v1/tls/reload").await,
        StatusCode::METHOD_NOT_ALLOWED,
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let reply = h.call(Method::POST, "/api/v1/tls/reload", None).await;
    assert_eq!(reply.body, json!({"listeners": []}));
}
