//! The OpenAPI document.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use myriad_fleet::presence::PresenceRecord;
use myriad_fleet::registry::{AppId, DeviceId, NewAppClient, NewDevice, Page};
use myriad_fleet::shadow::Shadow;
use serde_json::Value;

use crate::support::Harness;

async fn document() -> Value {
    let h = Harness::new();
    let reply = h.get("/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body
}

#[tokio::test]
async fn every_route_is_documented() {
    let doc = document().await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{}",
        doc["openapi"]
    );
    let expected = [
        ("/healthz", "get"),
        ("/openapi.json", "get"),
        ("/api/v1/devices", "post"),
        ("/api/v1/devices", "get"),
        ("/api/v1/devices/{id}", "get"),
        ("/api/v1/devices/{id}", "patch"),
        ("/api/v1/devices/{id}", "delete"),
        ("/api/v1/devices/{id}/password", "put"),
        ("/api/v1/devices/{id}/disconnect", "post"),
        ("/api/v1/devices/{id}/presence", "get"),
        ("/api/v1/presence", "get"),
        ("/api/v1/presence/count", "get"),
        ("/api/v1/devices/{id}/telemetry", "get"),
        ("/api/v1/devices/{id}/telemetry/latest", "get"),
        ("/api/v1/telemetry", "get"),
        ("/api/v1/query_range", "get"),
        ("/api/v1/query_range", "post"),
        ("/api/v1/query", "get"),
        ("/api/v1/query", "post"),
        ("/api/v1/series", "get"),
        ("/api/v1/series", "post"),
        ("/api/v1/labels", "get"),
        ("/api/v1/labels", "post"),
        ("/api/v1/label/{name}/values", "get"),
        ("/api/v1/status/buildinfo", "get"),
        ("/api/v1/metadata", "get"),
        ("/api/v1/devices/{id}/telemetry/export", "get"),
        ("/api/v1/telemetry/write", "post"),
        ("/write", "post"),
        ("/api/v2/write", "post"),
        ("/api/v1/devices/{id}/shadow", "get"),
        ("/api/v1/devices/{id}/shadow", "patch"),
        ("/api/v1/devices/{id}/shadow", "delete"),
        ("/api/v1/apps", "post"),
        ("/api/v1/apps", "get"),
        ("/api/v1/apps/{id}", "get"),
        ("/api/v1/apps/{id}", "patch"),
        ("/api/v1/apps/{id}", "delete"),
        ("/api/v1/groups", "get"),
        ("/api/v1/devices/{id}/certificates", "post"),
        ("/api/v1/devices/{id}/certificates", "get"),
        ("/api/v1/devices/{id}/certificates/{fingerprint}", "delete"),
        ("/api/v1/cas", "post"),
        ("/api/v1/cas", "get"),
        ("/api/v1/cas/{fingerprint}/crl", "put"),
        ("/api/v1/cas/{fingerprint}", "delete"),
        ("/api/v1/devices/import", "post"),
        ("/api/v1/devices/{id}/commands", "post"),
        ("/api/v1/devices/{id}/commands", "get"),
        ("/api/v1/commands", "post"),
        ("/api/v1/commands/breakers", "get"),
        ("/api/v1/commands/{command_id}", "get"),
        ("/api/v1/commands/{command_id}", "delete"),
        ("/api/v1/command-batches/{batch_id}", "get"),
        ("/api/v1/command-batches/{batch_id}", "delete"),
        ("/api/v1/tls/reload", "post"),
        ("/api/v1/ota/artifacts", "post"),
        ("/api/v1/ota/artifacts", "get"),
        ("/api/v1/ota/signing-key", "get"),
        ("/api/v1/ota/deltas", "post"),
        ("/api/v1/ota/deltas", "get"),
        ("/api/v1/ota/deltas/{id}", "get"),
        ("/api/v1/ota/deltas/{id}/content", "get"),
        ("/api/v1/ota/artifacts/{id}", "get"),
        ("/api/v1/ota/artifacts/{id}", "delete"),
        ("/api/v1/ota/artifacts/{id}/content", "get"),
        ("/api/v1/ota/rollouts", "post"),
        ("/api/v1/ota/rollouts", "get"),
        ("/api/v1/ota/rollouts/{id}", "get"),
        ("/api/v1/ota/rollouts/{id}/devices", "get"),
        ("/api/v1/ota/rollouts/{id}/pause", "post"),
        ("/api/v1/ota/rollouts/{id}/resume", "post"),
        ("/api/v1/ota/rollouts/{id}/cancel", "post"),
        ("/api/v1/pipelines", "get"),
        ("/api/v1/pipelines/{name}", "get"),
        ("/api/v1/pipelines/{name}", "put"),
        ("/api/v1/pipelines/{name}", "delete"),
        ("/api/v1/pipelines/{name}/records", "post"),
        ("/api/v1/events", "get"),
        ("/api/v1/overview", "get"),
        ("/api/v1/devices/{id}/session", "get"),
        ("/api/v1/devices/{id}/events", "get"),
        ("/api/v1/devices/{id}/ota", "get"),
        ("/api/v1/retained", "get"),
        ("/api/v1/retained", "delete"),
        ("/ota/v1/download/{artifact}", "get"),
        ("/", "get"),
        ("/console/", "get"),
        ("/console/{path}", "get"),
        ("/debug/pprof/heap", "get"),
        ("/debug/pprof/heap/active", "get"),
        ("/debug/pprof/heap/active", "put"),
        ("/debug/pprof/profile", "get"),
        ("/debug/tasks", "get"),
        ("/api/v1/login", "post"),
        ("/api/v1/session", "get"),
        ("/api/v1/logout", "post"),
        ("/api/v1/users", "get"),
        ("/api/v1/users", "post"),
        ("/api/v1/users/{name}", "get"),
        ("/api/v1/users/{name}", "patch"),
        ("/api/v1/users/{name}", "delete"),
        ("/api/v1/users/{name}/password", "put"),
        ("/api/v1/users/{name}/tokens", "get"),
        ("/api/v1/users/{name}/tokens", "post"),
        ("/api/v1/users/{name}/tokens/{id}", "delete"),
        ("/api/v1/audit", "get"),
    ];
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((path.clone(), method.clone()));
        }
    }
    for (path, method) in expected {
        assert!(
            documented.remove(&(path.to_string(), method.to_string())),
            "{method} {path} is missing"
        );
        let operation = &doc["paths"][path][method];
        let secured = operation["security"][0].get("bearer").is_some();
        // Everything under /api/v1 but the login itself, and /debug, needs a token or session.
        assert_eq!(
            secured,
            (path.starts_with("/api/v1") && path != "/api/v1/login") || path.starts_with("/debug/"),
            "{method} {path}"
        );
        if secured {
            assert!(operation["responses"]["401"].is_object(), "{method} {path}");
        }
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty())
        );
    }
    assert!(documented.is_empty(), "not expected: {documented:?}");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// The property names of schema `name`.
fn properties(doc: &Value, name: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {name}"))
        .keys()
        .cloned()
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().expect("object").keys().cloned().collect()
}

#[tokio::test]
async fn schema_mirrors_match_the_fleet_types() {
    let doc = document().await;
    let id = DeviceId::new("d1").expect("id");
    let device = NewDevice::new(id.clone()).into_device(1).expect("device");
    let app = NewAppClient {
        id: AppId::new("a1").expect("id"),
        name: String::new(),
        publish: vec![],
        subscribe: vec![],
        admin: false,
    }
    .into_app(1)
    .expect("app");
    let page = Page {
        items: vec![device.clone()],
        next: None,
    };
    for (name, value) in [
        ("Device", serde_json::to_value(&device)),
        ("AppClient", serde_json::to_value(&app)),
        (
            "PresenceRecord",
            serde_json::to_value(PresenceRecord::new(id)),
        ),
        ("DevicePage", serde_json::to_value(&page)),
    ] {
        assert_eq!(
            properties(&doc, name),
            keys(&value.expect("json")),
            "{name}"
        );
    }
    let shadow = Shadow::new().get_document(Some("t"), 5);
    assert_eq!(properties(&doc, "ShadowDocument"), keys(&shadow));
    let patch = properties(&doc, "DevicePatch");
    assert_eq!(
        patch,
        ["attributes", "enabled", "groups", "name"]
            .map(String::from)
            .into()
    );
    for name in [
        "ErrorBody",
        "CreateDevice",
        "PasswordBody",
        "ShadowPatch",
        "CreateApp",
        "AppList",
        "OnlinePage",
        "PresenceCount",
        "Health",
        "ImportReport",
        "RowError",
    ] {
        assert!(!properties(&doc, name).is_empty(), "{name}");
    }
}
