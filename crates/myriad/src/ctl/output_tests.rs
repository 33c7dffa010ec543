//! Rendering of answers: JSON as received, pretty JSON, tables, pages,
//! the import report.

use super::*;

fn one(body: &str) -> Vec<String> {
    vec![body.to_string()]
}

fn stdout(shape: Shape, format: Option<OutputFormat>, body: &str) -> String {
    render(shape, format, &one(body)).unwrap().stdout
}

const DEVICE: &str = r#"{"id":"d1","name":"Pump","attributes":{"site":"b"},"groups":["g1","g2"],"enabled":true,"created_at":1,"updated_at":2}"#;

#[test]
fn json_output_is_the_body_as_received() {
    for shape in [
        Shape::Object,
        Shape::DeviceList,
        Shape::AppList,
        Shape::PresenceList,
    ] {
        let body = r#"{"z":1,  "a":[ ]}"#;
        assert_eq!(
            stdout(shape, Some(OutputFormat::Json), body),
            format!("{body}\n")
        );
    }
    assert_eq!(
        stdout(Shape::Object, Some(OutputFormat::Json), "{}\n"),
        "{}\n"
    );
}

#[test]
fn single_objects_default_to_pretty_json_in_server_order() {
    assert_eq!(
        stdout(Shape::Object, None, r#"{"z":1,"a":{"y":true,"b":null}}"#),
        "{\n  \"z\": 1,\n  \"a\": {\n    \"y\": true,\n    \"b\": null\n  }\n}\n"
    );
}

#[test]
fn objects_as_tables_are_field_value_pairs() {
    assert_eq!(
        stdout(Shape::Object, Some(OutputFormat::Table), DEVICE),
        "FIELD       VALUE\n\
         id          d1\n\
         name        Pump\n\
         attributes  {\"site\":\"b\"}\n\
         groups      g1,g2\n\
         enabled     true\n\
         created_at  1\n\
         updated_at  2\n"
    );
    // Not an object: pretty JSON.
    assert_eq!(
        stdout(Shape::Object, Some(OutputFormat::Table), "[1]"),
        "[\n  1\n]\n"
    );
}

#[test]
fn invalid_json_is_an_error_not_a_panic() {
    assert!(render(Shape::Object, None, &one("<html>")).is_err());
    assert!(render(Shape::DeviceList, None, &one("{\"items\":3}")).is_err());
    assert!(render(Shape::Import, None, &one("")).is_err());
}

#[test]
fn device_list_table() {
    let body = format!(
        r#"{{"items":[{DEVICE},{{"id":"device-22","name":"","groups":[],"enabled":false}}],"next":null}}"#
    );
    let rendered = render(Shape::DeviceList, None, &one(&body)).unwrap();
    assert_eq!(
        rendered.stdout,
        "ID         NAME  ENABLED  GROUPS\n\
         d1         Pump  true     g1,g2\n\
         device-22        false\n"
    );
    assert!(rendered.notes.is_empty());
    // `--output table` is the same.
    assert_eq!(
        stdout(Shape::DeviceList, Some(OutputFormat::Table), &body),
        rendered.stdout
    );
}

#[test]
fn list_with_a_next_page_says_how_to_get_it() {
    let rendered = render(
        Shape::DeviceList,
        None,
        &one(r#"{"items":[{"id":"a","name":"x","enabled":true,"groups":[]}],"next":"a"}"#),
    )
    .unwrap();
    assert_eq!(
        rendered.notes,
        vec!["more: --after a (or --all)".to_string()]
    );
}

#[test]
fn presence_list_table_and_online_note() {
    let rendered = render(
        Shape::PresenceList,
        None,
        &one(r#"{"items":["d1","d2"],"next":null,"online":2}"#),
    )
    .unwrap();
    assert_eq!(rendered.stdout, "ID\nd1\nd2\n");
    assert_eq!(rendered.notes, vec!["2 online".to_string()]);
}

#[test]
fn app_list_table() {
    let body = r##"{"items":[{"id":"ops","name":"Ops","publish":[],"subscribe":["#"],"admin":true,"created_at":1},{"id":"be","name":"","publish":["a/b","c/#"],"subscribe":[],"admin":false,"created_at":2}]}"##;
    assert_eq!(
        stdout(Shape::AppList, None, body),
        "ID   NAME  ADMIN  PUBLISH  SUBSCRIBE\n\
         ops  Ops   true            #\n\
         be         false  a/b,c/#\n"
    );
}

#[test]
fn pages_merge_into_one_document() {
    let pages = vec![
        r#"{"items":[{"id":"a","z":1}],"next":"a"}"#.to_string(),
        r#"{"items":[{"id":"b","z":2}],"next":"b"}"#.to_string(),
        r#"{"items":[],"next":null}"#.to_string(),
    ];
    let rendered = render(Shape::DeviceList, Some(OutputFormat::Json), &pages).unwrap();
    assert_eq!(
        rendered.stdout,
        "{\"items\":[{\"id\":\"a\",\"z\":1},{\"id\":\"b\",\"z\":2}],\"next\":null}\n"
    );
    let table = render(Shape::DeviceList, None, &pages).unwrap();
    assert_eq!(table.stdout, "ID  NAME  ENABLED  GROUPS\na\nb\n");
    assert!(table.notes.is_empty());

    let presence = vec![
        r#"{"items":["a"],"next":"a","online":3}"#.to_string(),
        r#"{"items":["b","c"],"next":null,"online":3}"#.to_string(),
    ];
    let rendered = render(Shape::PresenceList, Some(OutputFormat::Json), &presence).unwrap();
    assert_eq!(
        rendered.stdout,
        "{\"items\":[\"a\",\"b\",\"c\"],\"next\":null,\"online\":3}\n"
    );
}

#[test]
fn page_cursor() {
    assert_eq!(
        page_next(r#"{"items":[],"next":"x"}"#).unwrap().as_deref(),
        Some("x")
    );
    assert_eq!(page_next(r#"{"items":[],"next":null}"#).unwrap(), None);
    assert_eq!(page_next(r#"{"items":[]}"#).unwrap(), None);
    assert!(page_next("[]").is_err());
}

#[test]
fn no_content_prints_nothing_or_the_body() {
    assert_eq!(
        render(Shape::NoContent, None, &one("")).unwrap(),
        Rendered::default()
    );
    assert_eq!(
        render(Shape::NoContent, Some(OutputFormat::Json), &one("")).unwrap(),
        Rendered::default()
    );
    assert_eq!(
        stdout(Shape::NoContent, None, r#"{"ok":true}"#),
        "{\n  \"ok\": true\n}\n"
    );
}

#[test]
fn import_report_lists_failures_and_fails() {
    let body = r#"{"imported":2,"failed":[{"line":3,"id":"d3","message":"id exists"},{"line":5,"id":null,"message":"bad\nrow"}],"truncated_errors":false}"#;
    let rendered = render(Shape::Import, None, &one(body)).unwrap();
    assert_eq!(
        rendered.stdout,
        "imported 2, failed 2\nline 3: id exists\nline 5: bad row\n"
    );
    assert!(rendered.failed);

    let json = render(Shape::Import, Some(OutputFormat::Json), &one(body)).unwrap();
    assert_eq!(json.stdout, format!("{body}\n"));
    assert!(json.failed);
}

#[test]
fn import_report_success_and_truncation() {
    let ok = render(
        Shape::Import,
        None,
        &one(r#"{"imported":10,"failed":[],"truncated_errors":false}"#),
    )
    .unwrap();
    assert_eq!(ok.stdout, "imported 10, failed 0\n");
    assert!(!ok.failed);

    let truncated = render(
        Shape::Import,
        None,
        &one(r#"{"imported":0,"failed":[{"line":1,"id":null,"message":"m"}],"truncated_errors":true}"#),
    )
    .unwrap();
    assert!(
        truncated
            .stdout
            .starts_with("imported 0, failed 1\nline 1: m\n(")
    );
    assert!(truncated.failed);
}
