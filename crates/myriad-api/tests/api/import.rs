//! `POST /api/v1/devices/import`.

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, header};
use myriad_fleet::credentials::verify_password;
use myriad_fleet::registry::DeviceId;

use crate::support::{Harness, TOKEN, assert_error};

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("valid id")
}

/// A body sent in small chunks, as a streamed upload arrives.
fn chunked(text: &'static str) -> Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = text
        .as_bytes()
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn csv_with_a_bad_row_reports_its_line() {
    let h = Harness::new();
    h.create_device("taken").await;
    let csv = "id,name,enabled,groups,attributes,password\n\
               pump-1,Pump 1,true,plant-a;pumps,site=berlin;floor=2,s3cret\n\
               bad/id,Broken,,,,\n\
               pump-2,Pump 2,false,,,\n\
               taken,Again,,,,\n";
    let reply = h
        .call_raw(
            Method::POST,
            "/api/v1/devices/import?format=csv",
            "text/csv",
            chunked(csv),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["imported"], 2, "{}", reply.body);
    assert_eq!(reply.body["truncated_errors"], false);
    let failed = reply.body["failed"].as_array().expect("failed");
    assert_eq!(failed.len(), 2, "{}", reply.body);
    assert_eq!(failed[0]["line"], 3);
    assert!(failed[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(failed[1]["line"], 5);
    assert_eq!(failed[1]["id"], "taken");

    let store = &h.state.store;
    let pump = store
        .get_device(&id("pump-1"))
        .expect("read")
        .expect("pump-1");
    assert_eq!(pump.attributes["floor"], "2");
    assert!(pump.groups.contains("pumps"));
    let phc = store
        .get_credential("pump-1")
        .expect("read")
        .expect("a password");
    assert!(verify_password(&phc, "s3cret").expect("verifies"));
    let pump2 = store
        .get_device(&id("pump-2"))
        .expect("read")
        .expect("pump-2");
    assert!(!pump2.enabled);
}

#[tokio::test]
async fn jsonl_with_a_bad_row_reports_its_line() {
    let h = Harness::new();
    let jsonl = "{\"id\":\"d1\",\"name\":\"One\",\"groups\":[\"g\"]}\n\
                 \n\
                 {\"id\":\"d2\",\"nmae\":\"typo\"}\n\
                 {\"id\":\"d3\",\"attributes\":{\"site\":\"muc\"},\"password\":\"pw\"}\n";
    let reply = h
        .call_raw(
            Method::POST,
            "/api/v1/devices/import?format=jsonl",
            "application/x-ndjson",
            chunked(jsonl),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["imported"], 2, "{}", reply.body);
    let failed = reply.body["failed"].as_array().expect("failed");
    assert_eq!(failed.len(), 1, "{}", reply.body);
    assert_eq!(failed[0]["line"], 3);
    let message = failed[0]["message"].as_str().expect("message");
    assert!(message.contains("nmae"), "{message}");

    let list = h.get("/api/v1/devices").await;
    let ids: Vec<_> = list.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(ids, [serde_json::json!("d1"), serde_json::json!("d3")]);
    assert!(h.state.store.get_credential("d3").expect("read").is_some());
}

#[tokio::test]
async fn bad_formats_headers_and_sizes() {
    let h = Harness::new();
    for uri in [
        "/api/v1/devices/import",
        "/api/v1/devices/import?format=xml",
    ] {
        let reply = h.call_raw(Method::POST, uri, "text/csv", "id\nd1\n").await;
        assert_error(&reply, StatusCode::BAD_REQUEST);
    }
    let reply = h
        .call_raw(
            Method::POST,
            "/api/v1/devices/import?format=csv",
            "text/csv",
            "id,colour\nd1,red\n",
        )
        .await;
    let message = assert_error(&reply, StatusCode::BAD_REQUEST);
    assert!(message.contains("colour"), "{message}");

    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/devices/import?format=csv")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_LENGTH, (600u64 << 20).to_string())
        .body(Body::from("id\nd1\n"))
        .expect("request");
    assert_error(&h.send(request).await, StatusCode::PAYLOAD_TOO_LARGE);

    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/devices/import?format=csv")
        .body(Body::from("id\nd1\n"))
        .expect("request");
    assert_error(&h.send(request).await, StatusCode::UNAUTHORIZED);
    assert_eq!(h.state.store.count_devices().expect("count"), 0);
}
