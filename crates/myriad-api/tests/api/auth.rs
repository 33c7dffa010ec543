//! The bearer token, open routes, and errors for unknown routes.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};

use crate::support::{Harness, assert_error};

fn request(uri: &str, authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(Method::GET).uri(uri);
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    builder.body(Body::empty()).expect("request")
}

#[tokio::test]
async fn api_routes_need_the_right_bearer_token() {
    let h = Harness::new();
    for authorization in [
        None,
        Some("Bearer wrong-token"),
        Some("Bearer test-token-and-more"),
        Some("Basic test-token"),
        Some("test-token"),
    ] {
        for uri in ["/api/v1/devices", "/api/v1/apps", "/api/v1/presence/count"] {
            let reply = h.send(request(uri, authorization)).await;
            let message = assert_error(&reply, StatusCode::UNAUTHORIZED);
            assert!(message.contains("bearer token"), "{message}");
            assert_eq!(
                reply
                    .headers
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.as_bytes()),
                Some(&b"Bearer"[..])
            );
        }
    }
    let reply = h
        .send(request("/api/v1/devices", Some("Bearer test-token")))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn a_token_is_checked_before_the_body() {
    let h = Harness::new();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/devices")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("not json"))
        .expect("request");
    assert_error(&h.send(request).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_empty_configured_token_refuses_everything() {
    let mut h = Harness::new();
    h.state.token = String::new();
    let reply = h.send(request("/api/v1/devices", Some("Bearer "))).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn healthz_and_openapi_are_open() {
    let h = Harness::new();
    let reply = h.send(request("/healthz", None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, serde_json::json!({"status": "ok"}));
    let reply = h.send(request("/openapi.json", None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let h = Harness::new();
    assert_error(&h.get("/api/v1/nothing").await, StatusCode::NOT_FOUND);
    assert_error(&h.get("/nothing").await, StatusCode::NOT_FOUND);
    let reply = h.call(Method::PUT, "/api/v1/devices", None).await;
    assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED);
}
