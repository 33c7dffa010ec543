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
