//! Command routes (no device connected: the broker side is a dropped channel).

use axum::http::{Method, StatusCode, header};
use serde_json::json;

use crate::support::{Harness, assert_error};

#[tokio::test]
async fn send_read_list_and_cancel() {
    let h = Harness::new();
    h.create_device("d1").await;
    let reply = h
        .call(
            Method::POST,
            "/api/v1/devices/d1/commands",
            Some(json!({"name": "reboot", "priority": "l1", "payload": {"delay": 1}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["status"], "queued", "offline L1 waits");
    assert!(reply.body["timestamps"]["queued"].is_u64());
    let id = reply.body["id"].as_str().expect("id").to_string();
    let got = h.get(&format!("/api/v1/commands/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["name"], "reboot");
    // An offline L3 command is dropped at once.
    let dropped = h
        .call(
            Method::POST,
            "/api/v1/devices/d1/commands",
            Some(json!({"name": "blink", "priority": "l3"})),
        )
        .await;
    assert_eq!(dropped.body["status"], "failed");
    assert_eq!(dropped.body["reason"], "device_offline");
    let cancelled = h
        .call(Method::DELETE, &format!("/api/v1/commands/{id}"), None)
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    let again = h
        .call(Method::DELETE, &format!("/api/v1/commands/{id}"), None)
        .await;
    assert_error(&again, StatusCode::CONFLICT);
    let mut listed = h.get("/api/v1/devices/d1/commands").await;
    for _ in 0..50 {
        if listed.body["items"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        listed = h.get("/api/v1/devices/d1/commands").await;
    }
    let items = listed.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{}", listed.body);
    assert_eq!(items[0]["name"], "blink", "newest first");
    assert_eq!(items[1]["status"], "cancelled");
}

#[tokio::test]
async fn errors_are_clear() {
    let h = Harness::new();
    h.create_device("d1").await;
    let reply = h
        .call(
            Method::POST,
            "/api/v1/devices/nope/commands",
            Some(json!({"name": "x"})),
        )
        .await;
    assert!(assert_error(&reply, StatusCode::NOT_FOUND).contains("nope"));
    let reply = h
        .call(
            Method::POST,
            "/api/v1/devices/d1/commands",
            Some(json!({"name": "a/b"})),
        )
        .await;
    assert!(assert_error(&reply, StatusCode::BAD_REQUEST).contains("name"));
    let reply = h
        .call(
            Method::POST,
            "/api/v1/devices/d1/commands",
            Some(json!({"name": "x", "priority": "l9"})),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST);
    let reply = h.get("/api/v1/commands/0123").await;
    assert_error(&reply, StatusCode::BAD_REQUEST);
    let reply = h.get(&format!("/api/v1/commands/{}", "0".repeat(32))).await;
    assert_error(&reply, StatusCode::NOT_FOUND);
    let reply = h
        .call(Method::POST, "/api/v1/commands", Some(json!({"name": "x"})))
        .await;
    assert!(assert_error(&reply, StatusCode::BAD_REQUEST).contains("devices or group"));
}

#[tokio::test]
async fn device_rate_limit_answers_429_with_retry_after() {
    let h = Harness::new();
    h.create_device("d1").await;
    // The default device limit is a burst of 20 at 10/s.
    let mut refused = None;
    for _ in 0..25 {
        let reply = h
            .call(
                Method::POST,
                "/api/v1/devices/d1/commands",
                Some(json!({"name": "x"})),
            )
            .await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(reply);
            break;
        }
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let reply = refused.expect("refused within 25 calls");
    assert!(assert_error(&reply, StatusCode::TOO_MANY_REQUESTS).contains("device d1"));
    assert_eq!(
        reply
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
}

#[tokio::test]
async fn batches_and_breakers() {
    let h = Harness::new();
    h.create_device("d1").await;
    h.create_device("d2").await;
    let reply = h
        .call(
            Method::POST,
            "/api/v1/commands",
            Some(json!({"devices": ["d1", "d2", "ghost"], "name": "ping", "priority": "l3"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let batch = reply.body["batch_id"].as_str().expect("batch").to_string();
    let mut progress = h.get(&format!("/api/v1/command-batches/{batch}")).await;
    for _ in 0..100 {
        if progress.body["dispatched"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        progress = h.get(&format!("/api/v1/command-batches/{batch}")).await;
    }
    assert_eq!(progress.body["dispatched"], true, "{}", progress.body);
    assert_eq!(progress.body["targets"], 3);
    assert_eq!(progress.body["refused"], 1, "ghost is not a device");
    assert_eq!(progress.body["statuses"]["failed"], 2, "offline L3 dropped");
    let breakers = h.get("/api/v1/commands/breakers").await;
    assert_eq!(breakers.status, StatusCode::OK);
    assert_eq!(breakers.body["classes"]["l1"]["state"], "closed");
}
