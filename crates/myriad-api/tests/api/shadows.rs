//! The shadow routes.

use axum::http::{Method, StatusCode};
use myriad_fleet::registry::DeviceId;
use myriad_fleet::shadow::UpdateRequest;
use serde_json::{Value, json};

use crate::support::{Harness, assert_error};

const SHADOW: &str = "/api/v1/devices/d1/shadow";

/// The device reports `reported` (over MQTT in real life).
async fn report(h: &Harness, reported: Value) {
    let request =
        UpdateRequest::from_value(json!({"state": {"reported": reported}})).expect("valid request");
    let id = DeviceId::new("d1").expect("id");
    h.state
        .shadows
        .update(&id, request)
        .await
        .expect("accepted");
}

#[tokio::test]
async fn desired_set_by_patch_shows_a_delta_against_reported() {
    let h = Harness::new();
    h.create_device("d1").await;
    let reply = h.get(SHADOW).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["state"], json!({"desired": {}, "reported": {}}));
    assert_eq!(reply.body["version"], 0);

    let reply = h
        .call(
            Method::PATCH,
            SHADOW,
            Some(json!({"desired": {"led": "on", "fan": 2}, "clientToken": "t-1"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.body["state"]["desired"],
        json!({"led": "on", "fan": 2})
    );
    assert_eq!(reply.body["version"], 1);
    assert_eq!(reply.body["clientToken"], "t-1");

    report(&h, json!({"led": "off", "fan": 2})).await;
    let reply = h.get(SHADOW).await;
    assert_eq!(reply.body["version"], 2);
    assert_eq!(reply.body["state"]["delta"], json!({"led": "on"}));
    assert_eq!(
        reply.body["state"]["reported"],
        json!({"led": "off", "fan": 2})
    );
    assert!(reply.body["metadata"]["desired"]["led"]["timestamp"].is_u64());
}

#[tokio::test]
async fn a_version_conflict_is_409() {
    let h = Harness::new();
    h.create_device("d1").await;
    let ok = h
        .call(
            Method::PATCH,
            SHADOW,
            Some(json!({"desired": {"a": 1}, "version": 0})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let stale = h
        .call(
            Method::PATCH,
            SHADOW,
            Some(json!({"desired": {"a": 2}, "version": 0})),
        )
        .await;
    let message = assert_error(&stale, StatusCode::CONFLICT);
    assert!(message.to_lowercase().contains("version"), "{message}");
    assert_eq!(
        h.get(SHADOW).await.body["state"]["desired"],
        json!({"a": 1})
    );
}

#[tokio::test]
async fn null_deletes_a_key_and_a_null_desired_deletes_all() {
    let h = Harness::new();
    h.create_device("d1").await;
    let body = json!({"desired": {"a": 1, "b": {"c": 2, "d": 3}}});
    assert_eq!(
        h.call(Method::PATCH, SHADOW, Some(body)).await.status,
        StatusCode::OK
    );
    let body = json!({"desired": {"a": null, "b": {"c": null}}});
    let reply = h.call(Method::PATCH, SHADOW, Some(body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        h.get(SHADOW).await.body["state"]["desired"],
        json!({"b": {"d": 3}})
    );
    let reply = h
        .call(Method::PATCH, SHADOW, Some(json!({"desired": null})))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(h.get(SHADOW).await.body["state"]["desired"], json!({}));
}

#[tokio::test]
async fn bad_updates_and_unknown_devices() {
    let h = Harness::new();
    h.create_device("d1").await;
    for body in [
        json!({}),
        json!({"desired": [1]}),
        json!({"desired": {}, "reported": {"a": 1}}),
        json!({"desired": {"a": 1}, "version": -1}),
        json!({"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}),
    ] {
        let reply = h.call(Method::PATCH, SHADOW, Some(body.clone())).await;
        assert_error(&reply, StatusCode::BAD_REQUEST);
    }
    let big = json!({"desired": {"blob": "x".repeat(10_000)}});
    assert_error(
        &h.call(Method::PATCH, SHADOW, Some(big)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    let ghost = "/api/v1/devices/ghost/shadow";
    assert_error(&h.get(ghost).await, StatusCode::NOT_FOUND);
    assert_error(
        &h.call(Method::PATCH, ghost, Some(json!({"desired": {"a": 1}})))
            .await,
        StatusCode::NOT_FOUND,
    );
    assert_error(
        &h.call(Method::DELETE, ghost, None).await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn delete_empties_the_shadow_and_keeps_its_version_growing() {
    let h = Harness::new();
    h.create_device("d1").await;
    assert_error(
        &h.call(Method::DELETE, SHADOW, None).await,
        StatusCode::NOT_FOUND,
    );
    let body = json!({"desired": {"a": 1}});
    assert_eq!(
        h.call(Method::PATCH, SHADOW, Some(body)).await.status,
        StatusCode::OK
    );
    let reply = h.call(Method::DELETE, SHADOW, None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = h.get(SHADOW).await;
    // The deletion is itself a version (issue 15 item 12): 1 -> 2.
    assert_eq!(reply.body["version"], 2);
    assert_eq!(reply.body["state"]["desired"], json!({}));
    assert_error(
        &h.call(Method::DELETE, SHADOW, None).await,
        StatusCode::NOT_FOUND,
    );
}
