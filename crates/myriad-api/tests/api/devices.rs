//! The device routes.

use axum::http::{Method, StatusCode};
use myriad_fleet::registry::DeviceId;
use serde_json::{Value, json};

use crate::support::{Harness, assert_error};

#[tokio::test]
async fn create_get_patch_delete() {
    let h = Harness::new();
    let reply = h
        .call(
            Method::POST,
            "/api/v1/devices",
            Some(
                json!({"id": "pump-1", "name": "Pump 1", "attributes": {"site": "berlin"},
                "groups": ["pumps"], "enabled": true}),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let created = reply.body;
    assert_eq!(created["id"], "pump-1");
    assert_eq!(created["attributes"], json!({"site": "berlin"}));
    assert_eq!(created["groups"], json!(["pumps"]));
    assert!(created["created_at"].as_u64().is_some_and(|t| t > 0));

    let reply = h.get("/api/v1/devices/pump-1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, created);

    let reply = h
        .call(
            Method::PATCH,
            "/api/v1/devices/pump-1",
            Some(
                json!({"name": "Pump one", "attributes": {"site": null, "floor": "2"},
                "enabled": false}),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["name"], "Pump one");
    assert_eq!(reply.body["attributes"], json!({"floor": "2"}));
    assert_eq!(reply.body["enabled"], false);
    assert_eq!(reply.body["created_at"], created["created_at"]);
    assert_eq!(h.get("/api/v1/devices/pump-1").await.body, reply.body);

    let reply = h.call(Method::DELETE, "/api/v1/devices/pump-1", None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.body, Value::Null);
    assert_error(
        &h.get("/api/v1/devices/pump-1").await,
        StatusCode::NOT_FOUND,
    );
    let reply = h.call(Method::DELETE, "/api/v1/devices/pump-1", None).await;
    assert_error(&reply, StatusCode::NOT_FOUND);
    let reply = h
        .call(
            Method::PATCH,
            "/api/v1/devices/pump-1",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_taken_id_is_a_conflict() {
    let h = Harness::new();
    h.create_device("d1").await;
    for body in [json!({"id": "d1"}), json!({"id": "d1", "password": "pw"})] {
        let reply = h.call(Method::POST, "/api/v1/devices", Some(body)).await;
        let message = assert_error(&reply, StatusCode::CONFLICT);
        assert!(message.contains("d1"), "{message}");
    }
}

#[tokio::test]
async fn bad_bodies_are_400_in_the_error_shape() {
    let h = Harness::new();
    let reply = h
        .call_raw(
            Method::POST,
            "/api/v1/devices",
            "application/json",
            "{\"id\": ",
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST);
    for body in [
        json!({"id": "d1", "nmae": "typo"}),
        json!({"id": 7}),
        json!({"name": "no id"}),
        json!({"id": "a/b"}),
        json!({"id": "d1", "groups": ["#"]}),
        json!({"id": "d1", "name": "n".repeat(300)}),
        json!({"id": "d1", "password": ""}),
        json!({"id": "d1", "password": "p".repeat(2000)}),
    ] {
        let reply = h
            .call(Method::POST, "/api/v1/devices", Some(body.clone()))
            .await;
        let message = assert_error(&reply, StatusCode::BAD_REQUEST);
        assert!(!message.is_empty(), "{body}");
    }
    let message = assert_error(
        &h.call(Method::POST, "/api/v1/devices", Some(json!({"id": "a/b"})))
            .await,
        StatusCode::BAD_REQUEST,
    );
    assert!(message.contains("'/'"), "{message}");
    h.create_device("d1").await;
    let reply = h
        .call(
            Method::PATCH,
            "/api/v1/devices/d1",
            Some(json!({"enabled": "no"})),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST);
    assert_error(
        &h.get("/api/v1/devices/bad%20id").await,
        StatusCode::BAD_REQUEST,
    );
    // Nothing was created by the bad requests.
    let list = h.get("/api/v1/devices").await;
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_body_over_one_mib_is_413() {
    let h = Harness::new();
    let body = format!("{{\"id\":\"d1\",\"name\":\"{}\"}}", "x".repeat(1024 * 1024));
    let reply = h
        .call_raw(Method::POST, "/api/v1/devices", "application/json", body)
        .await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE);
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn list_pages_and_filters() {
    let h = Harness::new();
    for (id, group, site, enabled) in [
        ("a-1", "g1", "ber", true),
        ("a-2", "g1", "muc", true),
        ("a-3", "g2", "ber", false),
        ("b-1", "g1", "ber", true),
        ("b-2", "g2", "ber", true),
    ] {
        let body = json!({"id": id, "name": format!("Name {id}"), "groups": [group],
            "attributes": {"site": site}, "enabled": enabled});
        let reply = h.call(Method::POST, "/api/v1/devices", Some(body)).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let first = h.get("/api/v1/devices?limit=3").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(ids(&first.body), ["a-1", "a-2", "a-3"]);
    assert_eq!(first.body["next"], "a-3");
    let second = h.get("/api/v1/devices?limit=3&after=a-3").await;
    assert_eq!(ids(&second.body), ["b-1", "b-2"]);
    assert_eq!(second.body["next"], Value::Null);

    let all = h.get("/api/v1/devices").await;
    assert_eq!(ids(&all.body).len(), 5);
    for (query, expected) in [
        ("id_prefix=b-", vec!["b-1", "b-2"]),
        ("name_contains=Name%20a-", vec!["a-1", "a-2", "a-3"]),
        ("attribute=site=muc", vec!["a-2"]),
        ("group=g2", vec!["a-3", "b-2"]),
        ("enabled=false", vec!["a-3"]),
        (
            "group=g1&attribute=site%3Dber&enabled=true",
            vec!["a-1", "b-1"],
        ),
        (
            "id_prefix=&group=&limit=",
            vec!["a-1", "a-2", "a-3", "b-1", "b-2"],
        ),
    ] {
        let reply = h.get(&format!("/api/v1/devices?{query}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.body);
        assert_eq!(ids(&reply.body), expected, "{query}");
    }
}

#[tokio::test]
async fn bad_queries_are_400() {
    let h = Harness::new();
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "enabled=maybe",
        "attribute=site",
        "after=a%2Fb",
    ] {
        let reply = h.get(&format!("/api/v1/devices?{query}")).await;
        let message = assert_error(&reply, StatusCode::BAD_REQUEST);
        assert!(!message.is_empty(), "{query}");
    }
    let message = assert_error(
        &h.get("/api/v1/devices?limit=0").await,
        StatusCode::BAD_REQUEST,
    );
    assert!(message.contains("limit"), "{message}");
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("valid id")
}

#[tokio::test]
async fn passwords_are_stored_as_argon2_hashes() {
    let h = Harness::new();
    let reply = h
        .call(
            Method::POST,
            "/api/v1/devices",
            Some(json!({"id": "d1", "password": "hunter2"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert!(reply.body.get("password").is_none());
    let store = &h.state.store;
    let first = store
        .get_credential("d1")
        .expect("read")
        .expect("a credential");
    assert!(first.starts_with("$argon2id$"), "{first}");
    assert!(!first.contains("hunter2"));

    let reply = h
        .call(
            Method::PUT,
            "/api/v1/devices/d1/password",
            Some(json!({"password": "correct horse"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let second = store
        .get_credential("d1")
        .expect("read")
        .expect("a credential");
    assert!(second.starts_with("$argon2id$"));
    assert_ne!(first, second);
    assert!(
        myriad_fleet::credentials::verify_password(&second, "correct horse").expect("verifies")
    );

    h.create_device("d2").await;
    assert_eq!(store.get_credential("d2").expect("read"), None);
    for (uri, body, status) in [
        (
            "/api/v1/devices/nope/password",
            json!({"password": "x"}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/devices/d1/password",
            json!({"password": ""}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/devices/d1/password",
            json!({"pass": "x"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert_error(&h.call(Method::PUT, uri, Some(body)).await, status);
    }

    let reply = h.call(Method::DELETE, "/api/v1/devices/d1", None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(store.get_credential("d1").expect("read"), None);
    assert_eq!(store.get_device(&id("d1")).expect("read"), None);
}

#[tokio::test]
async fn a_device_named_import_is_reachable() {
    let h = Harness::new();
    h.create_device("import").await;
    let reply = h.get("/api/v1/devices/import").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["id"], "import");
    let reply = h.get("/api/v1/devices/import/presence").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = h
        .call(
            Method::PATCH,
            "/api/v1/devices/import",
            Some(json!({"name": "I"})),
        )
        .await;
    assert_eq!(reply.body["name"], "I");
    let reply = h.call(Method::DELETE, "/api/v1/devices/import", None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_error(
        &h.get("/api/v1/devices/import").await,
        StatusCode::NOT_FOUND,
    );
}
