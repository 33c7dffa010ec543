//! The presence routes.

use axum::http::{Method, StatusCode};
use bytestring::ByteString;
use myriad_broker::hooks::{Lifecycle, Presence};
use myriad_mqtt::ProtocolVersion;
use serde_json::{Value, json};

use crate::support::{Harness, assert_error};

/// Tells the presence service that `id` connected on connection `conn`.
fn connect(h: &Harness, id: &str, conn: u64) {
    let event = h.state.presence.apply(&Lifecycle {
        presence: Presence::Online {
            conn,
            client_id: ByteString::from(id),
            keep_alive: 30,
            protocol: ProtocolVersion::V5,
            session_present: false,
            username: Some(ByteString::from(id)),
        },
        peer: Some("127.0.0.1:40000".parse().expect("address")),
    });
    assert!(event.is_some(), "{id} is registered");
}

#[tokio::test]
async fn a_device_never_seen_is_offline_at_version_0() {
    let h = Harness::new();
    h.create_device("d1").await;
    let reply = h.get("/api/v1/devices/d1/presence").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["device"], "d1");
    assert_eq!(reply.body["online"], false);
    assert_eq!(reply.body["version"], 0);
    assert_eq!(reply.body["last_connected_at"], Value::Null);
    assert_error(
        &h.get("/api/v1/devices/ghost/presence").await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn online_devices_are_listed_and_counted() {
    let h = Harness::new();
    for id in ["d1", "d2", "d3"] {
        h.create_device(id).await;
    }
    let reply = h.get("/api/v1/presence").await;
    assert_eq!(
        reply.body,
        json!({"items": [], "next": null, "online": 0}),
        "{}",
        reply.body
    );
    connect(&h, "d3", 1);
    connect(&h, "d1", 2);

    let reply = h.get("/api/v1/devices/d1/presence").await;
    assert_eq!(reply.body["online"], true);
    assert_eq!(reply.body["version"], 1);
    assert_eq!(reply.body["address"], "127.0.0.1:40000");
    assert_eq!(reply.body["protocol"], 5);

    let first = h.get("/api/v1/presence?limit=1").await;
    assert_eq!(
        first.body,
        json!({"items": ["d1"], "next": "d1", "online": 2})
    );
    let second = h.get("/api/v1/presence?limit=1&after=d1").await;
    assert_eq!(
        second.body,
        json!({"items": ["d3"], "next": null, "online": 2})
    );
    let count = h.get("/api/v1/presence/count").await;
    assert_eq!(count.body, json!({"online": 2, "devices": 3}));

    // Deleting a device forgets its presence.
    let reply = h.call(Method::DELETE, "/api/v1/devices/d3", None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let count = h.get("/api/v1/presence/count").await;
    assert_eq!(count.body, json!({"online": 1, "devices": 2}));

    for query in ["limit=0", "limit=x", "after=a%2Fb"] {
        assert_error(
            &h.get(&format!("/api/v1/presence?{query}")).await,
            StatusCode::BAD_REQUEST,
        );
    }
}
