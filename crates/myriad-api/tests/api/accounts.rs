//! Operator accounts through the router: a damaged stored user is skipped
//! at start-up, sessions need the CSRF token for changes, roles come from
//! the policy table, and changes are audited.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use myriad_fleet::credentials::HashParams;
use myriad_fleet::operators::{Operators, OperatorsConfig, Role};
use serde_json::json;

use crate::support::{Harness, Reply, assert_error};

fn config() -> OperatorsConfig {
    OperatorsConfig {
        hash_params: HashParams::INSECURE_FAST,
        ..OperatorsConfig::default()
    }
}

/// A request with the session cookie and, if given, the CSRF header.
fn with_cookie(
    method: Method,
    uri: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<serde_json::Value>,
) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::COOKIE, cookie);
    if let Some(csrf) = csrf {
        builder = builder.header("x-csrf-token", csrf);
    }
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    }
    .expect("request")
}

async fn login(h: &Harness, username: &str, password: &str) -> (Reply, String) {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"username": username, "password": password}).to_string(),
        ))
        .expect("request");
    let reply = h.send(request).await;
    let cookie = reply
        .headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_owned();
    (reply, cookie)
}

#[tokio::test]
async fn a_damaged_stored_user_is_skipped_at_start_up() {
    let mut h = Harness::new();
    h.state
        .operators
        .create_user("good", Role::Admin, "password-1", 1)
        .expect("create");
    h.state
        .store
        .put_raw_operator_user("bad", &[1, 0xff, 0xff, 0xff])
        .expect("raw");
    h.state
        .store
        .put_raw_operator_user("worse", &[9])
        .expect("raw");
    // "Restart": the accounts loaded again from the same store.
    h.state.operators = Arc::new(Operators::open(h.state.store.clone(), config()).expect("open"));
    let users = h.call(Method::GET, "/api/v1/users", None).await;
    assert_eq!(users.status, StatusCode::OK);
    let names: Vec<_> = users.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|u| u["username"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, vec!["good"]);
    let (reply, cookie) = login(&h, "good", "password-1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(cookie.starts_with("myriad_session="));
}

#[tokio::test]
async fn cookie_sessions_need_csrf_and_roles_are_enforced() {
    let h = Harness::new();
    for (name, role) in [("vera", "viewer"), ("otto", "operator")] {
        let created = h
            .call(
                Method::POST,
                "/api/v1/users",
                Some(json!({"username": name, "role": role, "password": "password-1"})),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    }
    let (wrong, _) = login(&h, "otto", "password-2").await;
    assert_eq!(
        assert_error(&wrong, StatusCode::UNAUTHORIZED),
        "wrong username or password"
    );
    let (reply, otto) = login(&h, "otto", "password-1").await;
    let csrf = reply.body["csrf_token"].as_str().expect("csrf").to_owned();
    let body = || Some(json!({"id": "d1"}));
    let refused = h
        .send(with_cookie(
            Method::POST,
            "/api/v1/devices",
            &otto,
            None,
            body(),
        ))
        .await;
    assert_eq!(
        assert_error(&refused, StatusCode::FORBIDDEN),
        "missing or wrong CSRF token"
    );
    let created = h
        .send(with_cookie(
            Method::POST,
            "/api/v1/devices",
            &otto,
            Some(&csrf),
            body(),
        ))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let (reply, vera) = login(&h, "vera", "password-1").await;
    let vera_csrf = reply.body["csrf_token"].as_str().expect("csrf").to_owned();
    let refused = h
        .send(with_cookie(
            Method::DELETE,
            "/api/v1/devices/d1",
            &vera,
            Some(&vera_csrf),
            None,
        ))
        .await;
    assert_eq!(
        assert_error(&refused, StatusCode::FORBIDDEN),
        "role viewer may not DELETE /api/v1/devices/d1"
    );
    let read = h
        .send(with_cookie(
            Method::GET,
            "/api/v1/devices/d1",
            &vera,
            None,
            None,
        ))
        .await;
    assert_eq!(read.status, StatusCode::OK);
    // Audited: the refused and the accepted changes, newest first.
    let audit = h.call(Method::GET, "/api/v1/audit?limit=3", None).await;
    let got: Vec<_> = audit.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_owned(),
                e["method"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("vera".into(), "DELETE".into(), 403),
            ("vera".into(), "POST".into(), 200),
            ("otto".into(), "POST".into(), 201),
        ]
    );
}
