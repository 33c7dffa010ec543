//! Every command's request, from parsed arguments.

use std::path::PathBuf;

use clap::Parser;
use serde_json::json;

use super::*;
use crate::ctl::CtlArgs;
use crate::ctl::args::CtlCommand;
use crate::ctl::password::fill_from_stdin;

#[derive(Debug, Parser)]
struct TestCli {
    #[command(flatten)]
    ctl: CtlArgs,
}

fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
    let argv = std::iter::once("ctl").chain(args.iter().copied());
    TestCli::try_parse_from(argv).map(|cli| cli.ctl)
}

fn command(args: &[&str]) -> ApiCommand {
    match parse(args) {
        Ok(CtlArgs {
            command: CtlCommand::Api(command),
            ..
        }) => command,
        other => panic!("{args:?} parsed to {other:?}"),
    }
}

/// The request of `args`, with `stdin` as standard input.
fn request_with_stdin(args: &[&str], stdin: &str) -> ApiRequest {
    let mut command = command(args);
    fill_from_stdin(&mut command, stdin.as_bytes()).expect("stdin");
    request(&command).unwrap_or_else(|e| panic!("{args:?}: {e:#}"))
}

fn req(args: &[&str]) -> ApiRequest {
    request_with_stdin(args, "")
}

fn req_err(args: &[&str]) -> String {
    format!("{:#}", request(&command(args)).expect_err("should fail"))
}

fn expect(method: Method, path: &str, query: &[(&str, &str)], body: ApiBody) -> ApiRequest {
    ApiRequest {
        method,
        path: path.to_string(),
        query: query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body,
    }
}

fn get(path: &str) -> ApiRequest {
    expect(Method::Get, path, &[], ApiBody::Empty)
}

fn delete(path: &str) -> ApiRequest {
    expect(Method::Delete, path, &[], ApiBody::Empty)
}

fn json_body(method: Method, path: &str, body: serde_json::Value) -> ApiRequest {
    expect(method, path, &[], ApiBody::Json(body))
}

// ---- devices ----

#[test]
fn devices_create_minimal() {
    assert_eq!(
        req(&["devices", "create", "d1"]),
        json_body(
            Method::Post,
            "/api/v1/devices",
            json!({"id": "d1", "name": "", "attributes": {}, "groups": [], "enabled": true})
        )
    );
}

#[test]
fn devices_create_everything() {
    let request = req(&[
        "devices",
        "create",
        "d1",
        "--name",
        "Pump 1",
        "--attr",
        "site=berlin",
        "--attr",
        "eq=a=b",
        "--group",
        "g1",
        "--group",
        "g2",
        "--disabled",
        "--password",
        "pw",
    ]);
    assert_eq!(
        request,
        json_body(
            Method::Post,
            "/api/v1/devices",
            json!({
                "id": "d1",
                "name": "Pump 1",
                "attributes": {"site": "berlin", "eq": "a=b"},
                "groups": ["g1", "g2"],
                "enabled": false,
                "password": "pw",
            })
        )
    );
}

#[test]
fn devices_create_password_from_stdin() {
    let request = request_with_stdin(&["devices", "create", "d1", "--password-stdin"], "pw\n");
    let ApiBody::Json(body) = request.body else {
        panic!("no JSON body");
    };
    assert_eq!(body["password"], "pw");
}

#[test]
fn devices_create_rejects_bad_attributes_and_two_password_sources() {
    assert!(parse(&["devices", "create", "d1", "--attr", "novalue"]).is_err());
    assert!(parse(&["devices", "create", "d1", "--attr", "=v"]).is_err());
    assert!(
        parse(&[
            "devices",
            "create",
            "d1",
            "--password",
            "a",
            "--password-stdin"
        ])
        .is_err()
    );
}

#[test]
fn stdin_password_not_yet_read_is_an_error() {
    let message = req_err(&["devices", "create", "d1", "--password-stdin"]);
    assert!(message.contains("standard input"), "{message}");
}

#[test]
fn devices_get_and_delete_encode_the_id() {
    assert_eq!(req(&["devices", "get", "d1"]), get("/api/v1/devices/d1"));
    assert_eq!(
        req(&["devices", "get", "a b/c"]),
        get("/api/v1/devices/a%20b%2Fc")
    );
    assert_eq!(
        req(&["devices", "delete", "d:1"]),
        delete("/api/v1/devices/d%3A1")
    );
}

#[test]
fn devices_kick_posts_to_disconnect() {
    assert_eq!(
        req(&["devices", "kick", "d:1"]),
        expect(
            Method::Post,
            "/api/v1/devices/d%3A1/disconnect",
            &[],
            ApiBody::Empty
        )
    );
}

#[test]
fn tls_reload_posts_to_the_reload_route() {
    assert_eq!(
        req(&["tls", "reload"]),
        expect(Method::Post, "/api/v1/tls/reload", &[], ApiBody::Empty)
    );
    assert!(parse(&["tls", "reload", "extra"]).is_err());
}

#[test]
fn devices_list_without_filters() {
    assert_eq!(req(&["devices", "list"]), get("/api/v1/devices"));
}

#[test]
fn devices_list_with_every_filter() {
    let request = req(&[
        "devices",
        "list",
        "--prefix",
        "pump-",
        "--name-contains",
        "hall",
        "--attr",
        "site=berlin",
        "--group",
        "g1",
        "--enabled",
        "false",
        "--limit",
        "50",
        "--after",
        "pump-7",
    ]);
    assert_eq!(
        request,
        expect(
            Method::Get,
            "/api/v1/devices",
            &[
                ("id_prefix", "pump-"),
                ("name_contains", "hall"),
                ("attribute", "site=berlin"),
                ("group", "g1"),
                ("enabled", "false"),
                ("limit", "50"),
                ("after", "pump-7"),
            ],
            ApiBody::Empty,
        )
    );
    assert_eq!(
        request.url("http://h:1"),
        "http://h:1/api/v1/devices?id_prefix=pump-&name_contains=hall&attribute=site%3Dberlin\
         &group=g1&enabled=false&limit=50&after=pump-7"
    );
}

#[test]
fn devices_list_all_follows_pages() {
    let all = command(&["devices", "list", "--all", "--limit", "2"]);
    assert!(follows_all_pages(&all));
    assert_eq!(
        request(&all).unwrap(),
        expect(
            Method::Get,
            "/api/v1/devices",
            &[("limit", "2")],
            ApiBody::Empty
        )
    );
    assert!(!follows_all_pages(&command(&["devices", "list"])));
    assert!(!follows_all_pages(&command(&["devices", "get", "d"])));
}

#[test]
fn next_page_replaces_after() {
    let request = req(&["devices", "list", "--after", "a", "--limit", "5"]);
    let next = request.with_param("after", "b");
    assert_eq!(
        next.query,
        vec![
            ("limit".to_string(), "5".to_string()),
            ("after".to_string(), "b".to_string())
        ]
    );
}

#[test]
fn devices_update_every_field() {
    let request = req(&[
        "devices",
        "update",
        "d1",
        "--name",
        "New",
        "--attr",
        "site=paris",
        "--unset-attr",
        "floor",
        "--group",
        "g2",
        "--disable",
    ]);
    assert_eq!(
        request,
        json_body(
            Method::Patch,
            "/api/v1/devices/d1",
            json!({
                "name": "New",
                "attributes": {"site": "paris", "floor": null},
                "groups": ["g2"],
                "enabled": false,
            })
        )
    );
}

#[test]
fn devices_update_single_fields() {
    let body = |args: &[&str]| match req(args).body {
        ApiBody::Json(body) => body,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        body(&["devices", "update", "d1", "--enable"]),
        json!({"enabled": true})
    );
    assert_eq!(
        body(&["devices", "update", "d1", "--unset-attr", "k"]),
        json!({"attributes": {"k": null}})
    );
    assert_eq!(
        body(&["devices", "update", "d1", "--clear-groups"]),
        json!({"groups": []})
    );
    assert_eq!(
        body(&["devices", "update", "d1", "--name", ""]),
        json!({"name": ""})
    );
}

#[test]
fn devices_update_rejects_nothing_and_contradictions() {
    assert!(req_err(&["devices", "update", "d1"]).contains("nothing to update"));
    assert!(
        req_err(&[
            "devices",
            "update",
            "d1",
            "--attr",
            "k=v",
            "--unset-attr",
            "k"
        ])
        .contains("both set")
    );
    assert!(parse(&["devices", "update", "d1", "--enable", "--disable"]).is_err());
    assert!(parse(&["devices", "update", "d1", "--group", "g", "--clear-groups"]).is_err());
}

#[test]
fn devices_set_password() {
    let expected = json_body(
        Method::Put,
        "/api/v1/devices/d1/password",
        json!({"password": "pw"}),
    );
    assert_eq!(
        req(&["devices", "set-password", "d1", "--password", "pw"]),
        expected
    );
    assert_eq!(
        request_with_stdin(
            &["devices", "set-password", "d1", "--password-stdin"],
            "pw\r\n"
        ),
        expected
    );
    assert!(parse(&["devices", "set-password", "d1"]).is_err());
}

#[test]
fn devices_import_format_from_extension_or_flag() {
    let file = |path: &str, content_type| ApiBody::File {
        path: PathBuf::from(path),
        content_type,
    };
    assert_eq!(
        req(&["devices", "import", "fleet.CSV"]),
        expect(
            Method::Post,
            "/api/v1/devices/import",
            &[("format", "csv")],
            file("fleet.CSV", "text/csv")
        )
    );
    assert_eq!(
        req(&["devices", "import", "fleet.ndjson"]).query,
        vec![("format".to_string(), "jsonl".to_string())]
    );
    assert_eq!(
        req(&["devices", "import", "fleet.txt", "--format", "jsonl"]),
        expect(
            Method::Post,
            "/api/v1/devices/import",
            &[("format", "jsonl")],
            file("fleet.txt", "application/x-ndjson")
        )
    );
    assert!(req_err(&["devices", "import", "fleet"]).contains("--format"));
}

// ---- presence ----

#[test]
fn presence_requests() {
    assert_eq!(
        req(&["presence", "get", "d1"]),
        get("/api/v1/devices/d1/presence")
    );
    assert_eq!(req(&["presence", "list"]), get("/api/v1/presence"));
    assert_eq!(
        req(&["presence", "list", "--after", "d9", "--limit", "100"]),
        expect(
            Method::Get,
            "/api/v1/presence",
            &[("limit", "100"), ("after", "d9")],
            ApiBody::Empty
        )
    );
    assert!(follows_all_pages(&command(&["presence", "list", "--all"])));
    assert_eq!(req(&["presence", "count"]), get("/api/v1/presence/count"));
}

// ---- shadow ----

#[test]
fn shadow_requests() {
    assert_eq!(
        req(&["shadow", "get", "d1"]),
        get("/api/v1/devices/d1/shadow")
    );
    assert_eq!(
        req(&["shadow", "delete", "d1"]),
        delete("/api/v1/devices/d1/shadow")
    );
    assert_eq!(
        req(&["shadow", "set-desired", "d1", r#"{"led":"on","fan":null}"#]),
        json_body(
            Method::Patch,
            "/api/v1/devices/d1/shadow",
            json!({"desired": {"led": "on", "fan": null}})
        )
    );
    assert_eq!(
        req(&[
            "shadow",
            "set-desired",
            "d1",
            "{}",
            "--version",
            "7",
            "--client-token",
            "t-1"
        ]),
        json_body(
            Method::Patch,
            "/api/v1/devices/d1/shadow",
            json!({"desired": {}, "version": 7, "clientToken": "t-1"})
        )
    );
    assert!(parse(&["shadow", "set-desired", "d1", "{not json"]).is_err());
}

// ---- apps ----

#[test]
fn apps_requests() {
    assert_eq!(
        req(&[
            "apps",
            "create",
            "backend",
            "--name",
            "Back end",
            "--publish",
            "cmd/#",
            "--subscribe",
            "devices/+/telemetry",
            "--subscribe",
            "$events/#",
            "--password",
            "pw",
        ]),
        json_body(
            Method::Post,
            "/api/v1/apps",
            json!({
                "id": "backend",
                "name": "Back end",
                "publish": ["cmd/#"],
                "subscribe": ["devices/+/telemetry", "$events/#"],
                "admin": false,
                "password": "pw",
            })
        )
    );
    assert_eq!(
        request_with_stdin(
            &["apps", "create", "ops", "--admin", "--password-stdin"],
            "pw"
        ),
        json_body(
            Method::Post,
            "/api/v1/apps",
            json!({
                "id": "ops", "name": "", "publish": [], "subscribe": [],
                "admin": true, "password": "pw",
            })
        )
    );
    assert!(parse(&["apps", "create", "ops"]).is_err());
    assert_eq!(req(&["apps", "list"]), get("/api/v1/apps"));
    assert_eq!(req(&["apps", "get", "ops"]), get("/api/v1/apps/ops"));
    assert_eq!(req(&["apps", "delete", "ops"]), delete("/api/v1/apps/ops"));
}

// ---- global options and URLs ----

#[test]
fn global_options_go_before_or_after_the_command() {
    let args = parse(&[
        "--api",
        "http://a:1",
        "devices",
        "list",
        "--output",
        "json",
        "--token",
        "t",
    ])
    .unwrap();
    assert_eq!(args.global.api, "http://a:1");
    assert_eq!(
        args.global.output,
        Some(crate::ctl::output::OutputFormat::Json)
    );
    assert_eq!(args.global.token.as_deref(), Some("t"));
}

#[test]
fn hash_password_is_not_an_api_command() {
    let args = parse(&["hash-password", "--password", "pw"]).unwrap();
    assert!(matches!(args.command, CtlCommand::HashPassword(_)));
    assert!(parse(&["hash-password"]).is_err());
}

#[test]
fn urls_join_base_and_path() {
    let request = get("/api/v1/devices");
    assert_eq!(request.url("http://h:8080"), "http://h:8080/api/v1/devices");
    assert_eq!(
        request.url("http://h:8080/"),
        "http://h:8080/api/v1/devices"
    );
    assert_eq!(
        request.url("https://h/platform/"),
        "https://h/platform/api/v1/devices"
    );
}
