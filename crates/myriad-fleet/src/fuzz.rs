//! Fuzz harness of the telemetry input parsers (feature `fuzz`): the fuzz target
//! `telemetry_payload` in `fuzz/` calls [`telemetry_payload`], and `tests/fuzz_corpus.rs`
//! replays its seed corpus through it, so a plain `cargo test` checks every committed input.
//!
//! The first input byte picks the limits (the defaults, or small ones so that every limit is
//! reached by short inputs) and the line protocol precision; the rest goes through
//!
//! * [`telemetry::parse`], as a device's `devices/{id}/telemetry` payload (JSON single or batch
//!   form, or CBOR when it starts with a map header);
//! * [`lineproto::parse_body`], as an HTTP bulk write body in line protocol;
//! * the JSON bulk write body path of `myriad-api` (`POST /api/v1/telemetry/write` with
//!   `application/json`: an item or an array of `{"device", "points"}` items, each item's points
//!   through [`telemetry::parse_value`] with the bulk limits), mirrored here because the fuzz
//!   crate does not link the HTTP layer.
//!
//! What parses must obey the limits (names valid and at most `max_name_len` bytes, at most
//! `max_metrics` per point or line, at most `max_points` points, `ts` not negative nor beyond
//! `max_future_ms`, numbers finite), and every sample the input holds is either accepted or
//! counted as refused, one entry each: the harness counts them itself from the decoded input and
//! panics (so the fuzzer records the input) when the counts differ.

use serde_json::Value;

use crate::lineproto::{self, Precision};
use crate::registry::DeviceId;
use crate::telemetry::{self, Parsed, ParsedSample, Sample, TelemetryLimits};

/// Arrival time of every input (ms).
pub const NOW: i64 = 1_733_350_000_000;
/// The JSON bulk write's most items and most points per item (`myriad-api`'s
/// `MAX_WRITE_LINES` and `MAX_WRITE_POINTS`).
pub const BULK_MAX: usize = 100_000;

/// Small limits, reached by short inputs.
pub const SMALL_LIMITS: TelemetryLimits = TelemetryLimits {
    max_points: 3,
    max_metrics: 2,
    max_name_len: 6,
    max_future_ms: 1_000,
};

/// Runs one input (see the module docs).
pub fn telemetry_payload(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let limits = if pick & 1 == 0 {
        TelemetryLimits::default()
    } else {
        SMALL_LIMITS
    };
    let precision = [
        Precision::Nanos,
        Precision::Micros,
        Precision::Millis,
        Precision::Seconds,
    ][usize::from((pick >> 1) & 3)];

    // A device's MQTT payload.
    let parsed = telemetry::parse(body, NOW, &limits);
    check_samples(&parsed.samples, &limits, limits.max_points);
    let decoded = if body.first().is_some_and(|b| (0xA0..=0xBF).contains(b)) {
        telemetry::cbor_to_json(body)
    } else {
        serde_json::from_slice::<Value>(body).ok()
    };
    check_counted(&parsed, decoded.as_ref(), &limits);

    // An HTTP bulk write in line protocol.
    let lines = lineproto::parse_body(body, precision, NOW, &limits, |d| DeviceId::new(d).is_ok());
    assert!(lines.lines.len() + lines.errors.len() <= lines.line_count);
    let mut last = 0;
    let mut slots = 0;
    let mut bad = lines.errors.iter().map(|(n, _)| *n).peekable();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if bad.next_if_eq(&n).is_some() {
            continue;
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw)
            .ok()
            .and_then(|text| lineproto::parse_line(text).ok().flatten());
        if let Some(line) = line {
            slots += line.fields.len();
        }
    }
    assert!(bad.next().is_none(), "error line numbers out of order");
    for l in &lines.lines {
        assert!(l.line > last, "line numbers out of order");
        last = l.line;
        assert!(DeviceId::new(&l.device).is_ok());
        assert!(!l.samples.is_empty() && l.samples.len() <= limits.max_metrics);
        check_samples(&l.samples, &limits, 1);
    }
    assert_eq!(
        lines.sample_count() + lines.refused.len(),
        slots,
        "line protocol: every field of a good line is accepted or refused"
    );

    // An HTTP bulk write in JSON.
    if let Ok(doc) = serde_json::from_slice::<Value>(body) {
        bulk_json(doc, &limits);
    }
}

/// The JSON bulk write's parsing (as `myriad-api`'s `parse_json`), checked.
fn bulk_json(doc: Value, limits: &TelemetryLimits) {
    let items = match doc {
        Value::Array(items) => items,
        one @ Value::Object(_) => vec![one],
        _ => return,
    };
    if items.len() > BULK_MAX {
        return;
    }
    let bulk = TelemetryLimits {
        max_points: BULK_MAX,
        ..*limits
    };
    for item in items {
        let Value::Object(mut item) = item else {
            continue;
        };
        if item.len() != 2 {
            continue;
        }
        let (Some(Value::String(device)), Some(points)) =
            (item.remove("device"), item.remove("points"))
        else {
            continue;
        };
        if DeviceId::new(&device).is_err() || !points.is_array() {
            continue;
        }
        let doc = serde_json::json!({ "points": points });
        let parsed = telemetry::parse_value(Some(doc.clone()), NOW, &bulk);
        check_samples(&parsed.samples, &bulk, bulk.max_points);
        check_counted(&parsed, Some(&doc), &bulk);
    }
}

/// Accepted samples obey the limits; at most `points` distinct timestamps.
fn check_samples(samples: &[ParsedSample], limits: &TelemetryLimits, points: usize) {
    assert!(samples.len() <= points.saturating_mul(limits.max_metrics));
    for s in samples {
        assert!(
            telemetry::valid_metric_name(&s.metric, limits),
            "{:?}",
            s.metric
        );
        assert!(s.metric.len() <= limits.max_name_len);
        assert!(
            s.ts >= 0 && s.ts <= NOW + limits.max_future_ms,
            "ts {}",
            s.ts
        );
        if let Sample::Number(f) = s.value {
            assert!(f.is_finite());
        }
    }
}

/// Every sample slot of the decoded message is accepted or refused, one entry each.
fn check_counted(parsed: &Parsed, decoded: Option<&Value>, limits: &TelemetryLimits) {
    let metrics = |p: &serde_json::Map<String, Value>| p.keys().filter(|k| *k != "ts").count();
    let slots = match decoded {
        Some(Value::Object(map)) => match map.get("points") {
            None => {
                // A point with a bad ts or too many metrics is refused once per metric, at least
                // once; otherwise each metric is one sample.
                let n = metrics(map);
                if n == 0 {
                    usize::from(bad_ts(map, limits))
                } else {
                    n
                }
            }
            Some(Value::Array(points)) => points
                .iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(p) if i >= limits.max_points => metrics(p).max(1),
                    Value::Object(p) if bad_ts(p, limits) => metrics(p).max(1),
                    Value::Object(p) => metrics(p),
                    _ => 1,
                })
                .sum(),
            Some(_) => 1,
        },
        _ => 1,
    };
    assert_eq!(
        parsed.samples.len() + parsed.refused.len(),
        slots,
        "every sample is accepted or counted refused: {parsed:?}"
    );
}

fn bad_ts(point: &serde_json::Map<String, Value>, limits: &TelemetryLimits) -> bool {
    point.get("ts").is_some_and(|v| {
        v.as_i64()
            .is_none_or(|t| t < 0 || t > NOW.saturating_add(limits.max_future_ms))
    })
}

/// Seeds: payloads of every form, line protocol bodies and JSON bulk bodies, some at a limit.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, pick: u8, body: &[u8]| {
        let mut v = vec![pick];
        v.extend_from_slice(body);
        seeds.push((name.to_owned(), v));
    };
    add(
        "json-single",
        0,
        br#"{"temp": 21.5, "on": true, "ts": 1733350000000}"#,
    );
    add(
        "json-batch",
        0,
        br#"{"points": [{"ts": 1, "a": 1}, {"ts": 2, "a": 2, "b": false}, {"a": 3}, 7]}"#,
    );
    add(
        "json-small-limits",
        1,
        br#"{"points": [{"ts": 1, "abcdef": 1, "abcdefg": 2}, {"a": 1, "b": 2, "c": 3}, {"ts": -1, "x": 1}, {"y": 1}, {"z": 2}]}"#,
    );
    add(
        "json-bad-values",
        0,
        br#"{"s": "x", "z": null, "arr": [1], "o": {}, "big": 1e308, "n": -0.0, "ts": 1733350001000}"#,
    );
    // CBOR: {"temp": 21.5, "ts": 1000, "on": true, "n": -3}
    let mut cbor = vec![0xA4, 0x64, b't', b'e', b'm', b'p', 0xFB];
    cbor.extend(21.5f64.to_be_bytes());
    cbor.extend([0x62, b't', b's', 0x19, 0x03, 0xE8]);
    cbor.extend([0x62, b'o', b'n', 0xF5, 0x61, b'n', 0x22]);
    add("cbor-single", 0, &cbor);
    add(
        "cbor-batch-half",
        0,
        &[
            0xA1, 0x66, b'p', b'o', b'i', b'n', b't', b's', 0x82, 0xA2, 0x62, b't', b's', 0x01,
            0x61, b'a', 0xF9, 0x3E, 0x00, 0xA1, 0x61, b'a', 0xF9, 0x7E, 0x00,
        ],
    );
    add(
        "lineproto",
        0,
        b"env,device=d1,room=a temp=21.5,n=3i,u=4u,on=t,s=\"x y\" 1700000000000000000\n\
          # comment\n\nenv temp=2\nenv,device=d2 t=2i\r\nbad line\n",
    );
    add(
        "lineproto-escapes-ms",
        4,
        br#"my\ m\,x,device=d\ 1,k\=y=v\,w f\ 1=1,s="a \"q\" \\ b",z=FALSE 1733350000000"#,
    );
    add(
        "lineproto-small-limits-s",
        7,
        b"m,device=d1 a=1,b=2,c=3 1733350000\nlongname,device=d1 x=1\nm,device=d1 a=1 -5\n",
    );
    add(
        "bulk-json",
        0,
        br#"[{"device": "d1", "points": [{"ts": 1733350000000, "temp": 1}]}, {"device": "", "points": []}, {"device": "d2", "points": 3}, {"device": "d3", "points": [{"a": true}], "x": 1}]"#,
    );
    seeds
}
