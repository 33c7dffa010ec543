//! The app client routes.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{Harness, assert_error};

#[tokio::test]
async fn create_list_get_delete() {
    let h = Harness::new();
    let body = json!({"id": "dashboard", "name": "Dashboard",
        "subscribe": ["devices/+/telemetry", "$events/#"], "publish": ["$commands/+/reboot"],
        "password": "s3cret"});
    let reply = h.call(Method::POST, "/api/v1/apps", Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let created = reply.body;
    assert_eq!(created["id"], "dashboard");
    assert_eq!(created["admin"], false);
    assert!(created.get("password").is_none());
    let phc = h
        .state
        .store
        .get_credential("dashboard")
        .expect("read")
        .expect("a credential");
    assert!(
        phc.starts_with("$argon2id$") && !phc.contains("s3cret"),
        "{phc}"
    );

    let body = json!({"id": "ops", "admin": true, "password": "pw"});
    let reply = h.call(Method::POST, "/api/v1/apps", Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);

    let list = h.get("/api/v1/apps").await;
    assert_eq!(list.status, StatusCode::OK);
    let ids: Vec<_> = list.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(ids, [json!("dashboard"), json!("ops")]);

    let reply = h.get("/api/v1/apps/dashboard").await;
    assert_eq!(reply.body, created);

    let reply = h.call(Method::DELETE, "/api/v1/apps/dashboard", None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_error(
        &h.get("/api/v1/apps/dashboard").await,
        StatusCode::NOT_FOUND,
    );
    assert_error(
        &h.call(Method::DELETE, "/api/v1/apps/dashboard", None).await,
        StatusCode::NOT_FOUND,
    );
    assert_eq!(
        h.state.store.get_credential("dashboard").expect("read"),
        None
    );
}

#[tokio::test]
async fn conflicts_and_bad_bodies() {
    let h = Harness::new();
    h.create_device("d1").await;
    let body = json!({"id": "ops", "password": "pw"});
    let reply = h
        .call(Method::POST, "/api/v1/apps", Some(body.clone()))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_error(
        &h.call(Method::POST, "/api/v1/apps", Some(body)).await,
        StatusCode::CONFLICT,
    );
    // Device and app ids share one namespace.
    let reply = h
        .call(
            Method::POST,
            "/api/v1/apps",
            Some(json!({"id": "d1", "password": "pw"})),
        )
        .await;
    assert_error(&reply, StatusCode::CONFLICT);
    assert!(
        h.state
            .store
            .get_app(&"d1".parse().expect("id"))
            .expect("read")
            .is_none()
    );
    let reply = h
        .call(Method::POST, "/api/v1/devices", Some(json!({"id": "ops"})))
        .await;
    assert_error(&reply, StatusCode::CONFLICT);

    for body in [
        json!({"id": "x"}),
        json!({"id": "x", "password": ""}),
        json!({"id": "x", "password": "pw", "subscribe": ["a/#/b"]}),
        json!({"id": "x", "password": "pw", "publish": ["$share/g/t"]}),
        json!({"id": "x y", "password": "pw"}),
        json!({"id": "x", "password": "pw", "extra": 1}),
    ] {
        let reply = h
            .call(Method::POST, "/api/v1/apps", Some(body.clone()))
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST);
    }
    assert_error(&h.get("/api/v1/apps/x%20y").await, StatusCode::BAD_REQUEST);
}
