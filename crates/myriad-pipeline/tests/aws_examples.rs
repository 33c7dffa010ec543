//! Table-driven examples after the AWS IoT SQL reference (the expected outputs are written from
//! the semantics the reference gives: Undefined keys left out, strings converted to numbers,
//! WHERE needing true).

use myriad_pipeline::record::Record;
use myriad_pipeline::sql::{EvalContext, Rule};
use serde_json::{Value, json};

struct Case {
    sql: &'static str,
    topic: &'static str,
    payload: &'static str,
    /// `None`: the WHERE clause drops the message.
    want: Option<Value>,
}

fn cases() -> Vec<Case> {
    let c = |sql, topic, payload, want| Case {
        sql,
        topic,
        payload,
        want,
    };
    vec![
        // SELECT clause
        c(
            "SELECT * FROM 'topic/subtopic'",
            "topic/subtopic",
            r#"{"color":"red","temperature":100}"#,
            Some(json!({"color": "red", "temperature": 100})),
        ),
        c(
            "SELECT color AS rgb FROM 'topic/subtopic'",
            "topic/subtopic",
            r#"{"color":"red","temperature":100}"#,
            Some(json!({"rgb": "red"})),
        ),
        c(
            "SELECT color FROM 'topic/subtopic'",
            "topic/subtopic",
            r#"{"color":"red","temperature":100}"#,
            Some(json!({"color": "red"})),
        ),
        c(
            "SELECT *, 15 AS speed FROM 'topic/subtopic'",
            "topic/subtopic",
            r#"{"color":"red"}"#,
            Some(json!({"color": "red", "speed": 15})),
        ),
        // Data types: null is a value, a missing key is Undefined and left out.
        c(
            "SELECT foo, bar FROM 'a'",
            "a",
            r#"{"foo": null}"#,
            Some(json!({"foo": null})),
        ),
        c(
            "SELECT NULL AS n FROM 'topic/subtopic'",
            "topic/subtopic",
            "{}",
            Some(json!({"n": null})),
        ),
        // WHERE clause
        c(
            "SELECT * FROM 'topic/subtopic' WHERE temperature > 50",
            "topic/subtopic",
            r#"{"color":"red","temperature":50}"#,
            None,
        ),
        c(
            "SELECT * FROM 'topic/subtopic' WHERE temperature > 50",
            "topic/subtopic",
            r#"{"color":"red","temperature":51}"#,
            Some(json!({"color": "red", "temperature": 51})),
        ),
        c(
            "SELECT * FROM 'topic/subtopic' WHERE color = 'red' AND temperature > 40",
            "topic/subtopic",
            r#"{"color":"red","temperature":50}"#,
            Some(json!({"color": "red", "temperature": 50})),
        ),
        c(
            "SELECT * FROM 'topic/subtopic' WHERE missing > 50",
            "topic/subtopic",
            r#"{"t":1}"#,
            None,
        ),
        // The issue's example.
        c(
            "SELECT payload.temp AS t, topic(2) AS device, timestamp() AS ts FROM 'devices/+/telemetry' WHERE payload.temp > 30",
            "devices/pump-7/telemetry",
            r#"{"temp": 35}"#,
            Some(json!({"t": 35, "device": "pump-7", "ts": 1_700_000_000_000i64})),
        ),
        c(
            "SELECT payload.temp AS t FROM 'devices/+/telemetry' WHERE payload.temp > 30",
            "devices/pump-7/telemetry",
            r#"{"temp": 30}"#,
            None,
        ),
        // Nested objects and arrays.
        c(
            "SELECT state.desired.color AS c FROM 'a'",
            "a",
            r#"{"state":{"desired":{"color":"red"}}}"#,
            Some(json!({"c": "red"})),
        ),
        c(
            "SELECT get(arr, 1) AS second, arr[0] AS first FROM 'a'",
            "a",
            r#"{"arr":[1,2,3]}"#,
            Some(json!({"second": 2, "first": 1})),
        ),
        c(
            "SELECT get(arr, 3) AS fourth FROM 'a'",
            "a",
            r#"{"arr":[1,2,3]}"#,
            Some(json!({})),
        ),
        // Operators: conversion of numeric strings, Int with Decimal, string booleans.
        c(
            "SELECT 5 + '6' AS a, 5 + 1.5 AS b, 6 - 2 AS c, 5 * 2 AS d, 8 / 2 AS e, 8 % 3 AS f FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": 11, "b": 6.5, "c": 4, "d": 10, "e": 4, "f": 2})),
        ),
        c(
            "SELECT 'true' AND true AS a, 'FALSE' OR false AS b, NOT 'true' AS c, 1 AND true AS d FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": true, "b": false, "c": false})),
        ),
        c(
            "SELECT 5 > '4.5' AS a, 'abc' > 1 AS b FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": true})),
        ),
        // Functions, with the reference's examples.
        c(
            "SELECT abs(5) AS a, abs('-5.123') AS b, abs(true) AS c FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": 5, "b": 5.123})),
        ),
        c(
            "SELECT ceil(1.2) AS a, ceil(-1.2) AS b, floor(1.2) AS c, floor(-1.2) AS d FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": 2, "b": -1, "c": 1, "d": -2})),
        ),
        c(
            "SELECT round(1.2) AS a, round(1.5) AS b, round(1.7) AS c, round(-1.1) AS d, round(-1.5) AS e FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": 1, "b": 2, "c": 2, "d": -1, "e": -2})),
        ),
        c(
            "SELECT mod(8, 3) AS a, mod(-8, 3) AS b FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": 2, "b": -2})),
        ),
        c(
            "SELECT lower('HELLO') AS a, upper('hello') AS b, lower(5) AS c FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": "hello", "b": "HELLO"})),
        ),
        c(
            "SELECT substring('012345', 0) AS a, substring('012345', 2) AS b, substring('012345', 2.745) AS c, substring(123, 2) AS d FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": "012345", "b": "2345", "c": "2345", "d": "3"})),
        ),
        c(
            "SELECT substring('012345', -1) AS a, substring('012345', 1, 3) AS b, substring('012345', -50, 50) AS c, substring('012345', 3, 1) AS d FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": "012345", "b": "12", "c": "012345", "d": ""})),
        ),
        c(
            "SELECT startswith('cat', 'ca') AS a, endswith('cat', 'at') AS b, replace('abcd', 'bc', 'x') AS c, trim('  hi  ') AS d FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": true, "b": true, "c": "axd", "d": "hi"})),
        ),
        c(
            "SELECT concat('hello', ' ', 'world') AS s, concat(arr, arr) AS a FROM 'a'",
            "a",
            r#"{"arr":[1]}"#,
            Some(json!({"s": "hello world", "a": [1, 1]})),
        ),
        c(
            "SELECT cast(true AS Int) AS a, cast('5.5' AS Int) AS b, cast(5 AS String) AS c, cast(1 AS Bool) AS d, cast('true' AS Bool) AS e, cast(2 AS Decimal) AS f FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": 1, "b": 5, "c": "5", "d": true, "e": true, "f": 2.0})),
        ),
        c(
            "SELECT isNull(5) AS a, isNull(null) AS b, isNull(x) AS c, isUndefined(x) AS d, isUndefined(null) AS e FROM 'a'",
            "a",
            "{}",
            Some(json!({"a": false, "b": true, "c": false, "d": true, "e": false})),
        ),
        c(
            "SELECT topic() AS t, topic(1) AS t1, topic(3) AS t3, clientid() AS c FROM 'a/+/c'",
            "a/b/c",
            "{}",
            Some(json!({"t": "a/b/c", "t1": "a", "t3": "c", "c": "client-1"})),
        ),
        c(
            "SELECT encode(*, 'base64') AS raw FROM 'a'",
            "a",
            "hello",
            Some(json!({"raw": "aGVsbG8="})),
        ),
    ]
}

#[test]
fn aws_reference_examples() {
    let ctx = EvalContext::new(1_700_000_000_000);
    for case in cases() {
        let rule = Rule::compile(case.sql).unwrap_or_else(|e| panic!("{}: {e}", case.sql));
        assert!(rule.matches_topic(case.topic), "{}", case.sql);
        let record = Record::new(case.topic, case.payload, ()).with_client_id("client-1");
        let got = rule
            .apply(&record, &ctx)
            .unwrap_or_else(|e| panic!("{}: {e}", case.sql));
        assert_eq!(got, case.want, "{}", case.sql);
    }
}
