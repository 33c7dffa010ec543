//! Fuzz harness (feature `fuzz`), shared by the fuzz target `rule_sql` and the tests.

use crate::record::Record;
use crate::sql::{EvalContext, Rule, RuleLimits};

/// Splits `data` at the first NUL byte into SQL text and a payload, compiles the SQL (with a
/// small output bound) and, when it compiles, evaluates it on the payload. It must neither panic
/// nor overflow the stack, whatever the bytes.
pub fn rule_sql(data: &[u8]) {
    let (sql, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{\"a\": 1, \"s\": \"x\", \"arr\": [1, 2]}"[..]),
    };
    let Ok(sql) = std::str::from_utf8(sql) else {
        return;
    };
    let limits = RuleLimits {
        max_output_bytes: 4096,
    };
    if let Ok(rule) = Rule::compile_with(sql, limits) {
        let record = Record::new("devices/d1/telemetry", payload.to_vec(), ()).with_client_id("d1");
        let _ = rule.matches_topic(record.topic());
        let _ = rule.apply(&record, &EvalContext::new(0).with_random(1));
    }
}

/// Seed inputs for the `rule_sql` corpus: (name, bytes), SQL then NUL then payload.
pub fn rule_sql_seeds() -> Vec<(String, Vec<u8>)> {
    let rules: &[(&str, &str, &str)] = &[
        ("star", "SELECT * FROM '#'", r#"{"a": 1, "b": [1, 2]}"#),
        (
            "issue",
            "SELECT payload.temp AS t, topic(2) AS device, timestamp() AS ts FROM 'devices/+/telemetry' WHERE payload.temp > 30",
            r#"{"temp": 31.5}"#,
        ),
        (
            "functions",
            "SELECT abs(a), ceil(b), round(c), mod(a, 3), lower(s), concat(s, '-', a), substring(s, 1, 3), replace(s, 'x', 'yy'), coalesce(m, a), typeof(arr), get(arr, 1), encode(*, 'base64') AS raw, newuuid() AS id FROM '#'",
            r#"{"a": -7, "b": 1.2, "c": 2.5, "s": "xAx", "arr": [1, {"k": 2}]}"#,
        ),
        (
            "case",
            "SELECT CASE WHEN a > 1 THEN 'hi' WHEN a IS NULL THEN 'n' ELSE cast(a AS String) END AS v, a IN (1, 2, 3) AS i, a BETWEEN 0 AND 5 AS b FROM \"x/#\" WHERE NOT (a = 4) OR s || 't' = 'xt'",
            r#"{"a": 2, "s": "x"}"#,
        ),
        (
            "nested",
            "SELECT ((((a + 1) * 2) - 3) / 4) % 5 AS v, payload.o.p[0].q AS w FROM 'a'",
            r#"{"a": 9, "o": {"p": [{"q": true}]}}"#,
        ),
        (
            "not-json",
            "SELECT payload AS p, encode(*, 'base64') AS b FROM '+/+'",
            "\u{1}binary\u{0}",
        ),
    ];
    rules
        .iter()
        .map(|(name, sql, payload)| {
            let mut bytes = sql.as_bytes().to_vec();
            bytes.push(0);
            bytes.extend_from_slice(payload.as_bytes());
            (name.to_string(), bytes)
        })
        .collect()
}
