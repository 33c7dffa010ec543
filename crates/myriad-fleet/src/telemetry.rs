//! Telemetry messages from devices: parsing `devices/{id}/telemetry` payloads into points.
//!
//! Two forms, both JSON objects (or the same shapes in CBOR, see below):
//!
//! * single: `{"temp": 21.5, "on": true, "ts": 1733350000000}` — every key but `ts` is a metric;
//!   `ts` (optional, integer milliseconds since the Unix epoch) defaults to the arrival time;
//! * batch: `{"points": [{"ts": .., "temp": ..}, ..]}` — each element is a single-form object.
//!
//! Numbers are stored as 64-bit floats (integers above 2^53 lose precision), booleans as
//! booleans. A sample (one metric's value at one timestamp) that breaks a rule is refused alone,
//! with a [`Refusal`] reason, and the rest of the message is kept; see [`TelemetryLimits`] for
//! the limits and what one past each does.
//!
//! CBOR: a payload whose first byte is a CBOR map header (major type 5, `0xA0..=0xBF`; a JSON
//! object starts with `{` or whitespace, never such a byte) is decoded as CBOR with the same
//! shapes: text-string keys, integer or float (half, single, double) or boolean values, `ts` an
//! unsigned integer, `points` an array of maps. The decoder walks at most [`CBOR_MAX_DEPTH`]
//! nested containers (deeper, indefinite-length containers, tags, non-text keys or trailing
//! bytes make the whole message [`Refusal::BadJson`]); a NaN or infinite float, a byte string or
//! null value is refused alone ([`Refusal::BadValue`]). Its size is the MQTT packet's, bounded
//! by the broker.

use minicbor::data::Type;
use serde_json::{Map, Number, Value};

/// Most nested CBOR containers (maps, arrays) one message may have: the top map, `points`, a
/// point, and a (refused) container value.
pub const CBOR_MAX_DEPTH: usize = 4;

/// Limits on one telemetry message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryLimits {
    /// Points (timestamps) per message: the batch's elements after this many are refused
    /// ([`Refusal::TooManyPoints`], each of their samples counted).
    pub max_points: usize,
    /// Metrics per point: a point with more is refused whole ([`Refusal::TooManyMetrics`]).
    pub max_metrics: usize,
    /// Bytes of a metric name (names are `[A-Za-z0-9_.:-]`, 1 to this many bytes); a longer or
    /// otherwise invalid name is refused ([`Refusal::BadName`]).
    pub max_name_len: usize,
    /// How far ahead of the arrival time a `ts` may be, in ms; further is refused
    /// ([`Refusal::BadTs`]) so a wrong device clock cannot push a series' window into the future.
    pub max_future_ms: i64,
}

impl Default for TelemetryLimits {
    fn default() -> Self {
        TelemetryLimits {
            max_points: 1_000,
            max_metrics: 64,
            max_name_len: 128,
            max_future_ms: 3_600_000,
        }
    }
}

/// Why a sample (or a whole message) was refused; [`Refusal::as_str`] is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// The payload is not a JSON object (or `points` is not an array of objects).
    BadJson,
    /// The value is not a number or a boolean (strings, null, arrays, objects).
    BadValue,
    /// The value is a number that does not fit a finite 64-bit float.
    NotFinite,
    /// The metric name is empty, too long or has a character outside `[A-Za-z0-9_.:-]`.
    BadName,
    /// `ts` is not an integer >= 0, or is too far in the future.
    BadTs,
    /// The point has more metrics than allowed.
    TooManyMetrics,
    /// The message has more points than allowed.
    TooManyPoints,
    /// The store refused it: older than the series' out-of-order window.
    TooOld,
    /// The store refused it: too many late points buffered for the series.
    OutOfOrderFull,
    /// The store refused it: the metric was stored with another type (number vs boolean).
    KindMismatch,
    /// The store refused it: series limit or key limits.
    Series,
    /// The store could not write it (I/O error, queue closed).
    Store,
    /// Bulk write: the `device` tag names no registered device (`unregistered`: no label value
    /// says "device", so a dashboard never mistakes it for a device id).
    UnknownDevice,
    /// Older than the raw retention (`telemetry.raw_retention_days`).
    Expired,
}

impl Refusal {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [Refusal; 14] = [
        Refusal::BadJson,
        Refusal::BadValue,
        Refusal::NotFinite,
        Refusal::BadName,
        Refusal::BadTs,
        Refusal::TooManyMetrics,
        Refusal::TooManyPoints,
        Refusal::TooOld,
        Refusal::OutOfOrderFull,
        Refusal::KindMismatch,
        Refusal::Series,
        Refusal::Store,
        Refusal::UnknownDevice,
        Refusal::Expired,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadJson => "bad_json",
            Refusal::BadValue => "bad_value",
            Refusal::NotFinite => "not_finite",
            Refusal::BadName => "bad_name",
            Refusal::BadTs => "bad_ts",
            Refusal::TooManyMetrics => "too_many_metrics",
            Refusal::TooManyPoints => "too_many_points",
            Refusal::TooOld => "too_old",
            Refusal::OutOfOrderFull => "out_of_order_full",
            Refusal::KindMismatch => "kind_mismatch",
            Refusal::Series => "series",
            Refusal::Store => "store",
            Refusal::UnknownDevice => "unregistered",
            Refusal::Expired => "expired",
        }
    }
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
}

/// One accepted sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSample {
    /// The metric name (valid).
    pub metric: String,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// The value.
    pub value: Sample,
}

/// What a message parsed into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// Accepted samples, in message order.
    pub samples: Vec<ParsedSample>,
    /// Refused samples (or messages, for [`Refusal::BadJson`]) by reason, one entry each.
    pub refused: Vec<Refusal>,
}

/// Whether `name` is a valid metric name under `limits`.
pub fn valid_metric_name(name: &str, limits: &TelemetryLimits) -> bool {
    !name.is_empty()
        && name.len() <= limits.max_name_len
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Parses one payload that arrived at `arrival_ms`.
pub fn parse(payload: &[u8], arrival_ms: i64, limits: &TelemetryLimits) -> Parsed {
    let decoded = if payload.first().is_some_and(|b| (0xA0..=0xBF).contains(b)) {
        cbor_to_json(payload)
    } else {
        serde_json::from_slice::<Value>(payload).ok()
    };
    parse_value(decoded, arrival_ms, limits)
}

/// Parses an already decoded payload (`None`: it did not decode) as [`parse`] does.
pub fn parse_value(decoded: Option<Value>, arrival_ms: i64, limits: &TelemetryLimits) -> Parsed {
    let mut out = Parsed::default();
    let Some(Value::Object(map)) = decoded else {
        out.refused.push(Refusal::BadJson);
        return out;
    };
    if let Some(points) = map.get("points") {
        let Value::Array(points) = points else {
            out.refused.push(Refusal::BadJson);
            return out;
        };
        for (i, point) in points.iter().enumerate() {
            let Value::Object(point) = point else {
                out.refused.push(Refusal::BadJson);
                continue;
            };
            if i >= limits.max_points {
                let n = point.keys().filter(|k| *k != "ts").count().max(1);
                out.refused
                    .extend(std::iter::repeat_n(Refusal::TooManyPoints, n));
                continue;
            }
            parse_point(point, arrival_ms, limits, &mut out);
        }
    } else {
        parse_point(&map, arrival_ms, limits, &mut out);
    }
    out
}

/// Decodes one CBOR item (the whole payload) into a JSON value; `None` if it is not a single
/// well-formed item within the rules of the module docs.
pub fn cbor_to_json(payload: &[u8]) -> Option<Value> {
    let mut d = minicbor::Decoder::new(payload);
    let v = cbor_item(&mut d, 0)?;
    (d.position() == payload.len()).then_some(v)
}

fn cbor_item(d: &mut minicbor::Decoder<'_>, depth: usize) -> Option<Value> {
    let float = |f: f64| Number::from_f64(f).map_or(Value::Null, Value::Number);
    Some(match d.datatype().ok()? {
        Type::Bool => Value::Bool(d.bool().ok()?),
        Type::Null => {
            d.null().ok()?;
            Value::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::Number(d.u64().ok()?.into()),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 => Value::Number(d.i64().ok()?.into()),
        Type::F16 => float(f64::from(d.f16().ok()?)),
        Type::F32 => float(f64::from(d.f32().ok()?)),
        Type::F64 => float(d.f64().ok()?),
        Type::String => Value::String(d.str().ok()?.to_owned()),
        Type::Bytes => {
            d.bytes().ok()?;
            Value::Null
        }
        Type::Array if depth < CBOR_MAX_DEPTH => {
            let n = d.array().ok()??;
            let mut items = Vec::new();
            for _ in 0..n {
                items.push(cbor_item(d, depth + 1)?);
            }
            Value::Array(items)
        }
        Type::Map if depth < CBOR_MAX_DEPTH => {
            let n = d.map().ok()??;
            let mut map = Map::new();
            for _ in 0..n {
                if d.datatype().ok()? != Type::String {
                    return None;
                }
                let k = d.str().ok()?.to_owned();
                let v = cbor_item(d, depth + 1)?;
                map.insert(k, v);
            }
            Value::Object(map)
        }
        _ => return None,
    })
}

fn parse_point(
    point: &Map<String, Value>,
    arrival_ms: i64,
    limits: &TelemetryLimits,
    out: &mut Parsed,
) {
    let metrics = point.keys().filter(|k| *k != "ts").count();
    let ts = match point.get("ts") {
        None => Some(arrival_ms),
        Some(v) => v
            .as_i64()
            .filter(|&t| t >= 0 && t <= arrival_ms.saturating_add(limits.max_future_ms)),
    };
    let Some(ts) = ts else {
        out.refused
            .extend(std::iter::repeat_n(Refusal::BadTs, metrics.max(1)));
        return;
    };
    if metrics > limits.max_metrics {
        out.refused
            .extend(std::iter::repeat_n(Refusal::TooManyMetrics, metrics));
        return;
    }
    for (name, value) in point {
        if name == "ts" {
            continue;
        }
        if !valid_metric_name(name, limits) {
            out.refused.push(Refusal::BadName);
            continue;
        }
        let value = match value {
            Value::Bool(b) => Sample::Bool(*b),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => Sample::Number(f),
                _ => {
                    out.refused.push(Refusal::NotFinite);
                    continue;
                }
            },
            _ => {
                out.refused.push(Refusal::BadValue);
                continue;
            }
        };
        out.samples.push(ParsedSample {
            metric: name.clone(),
            ts,
            value,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_733_350_000_000;

    fn p(s: &str) -> Parsed {
        parse(s.as_bytes(), NOW, &TelemetryLimits::default())
    }

    #[test]
    fn single_and_batch() {
        let r = p(r#"{"temp": 21.5, "on": true, "n": 3}"#);
        assert!(r.refused.is_empty());
        assert_eq!(r.samples.len(), 3);
        assert!(r.samples.iter().all(|s| s.ts == NOW));
        assert!(r.samples.contains(&ParsedSample {
            metric: "n".into(),
            ts: NOW,
            value: Sample::Number(3.0)
        }));
        let r = p(r#"{"temp": 1, "ts": 1000}"#);
        assert_eq!(r.samples[0].ts, 1000);
        let r = p(r#"{"points":[{"ts":1,"a":1},{"ts":2,"a":2,"b":false},{"a":3}]}"#);
        assert!(r.refused.is_empty());
        let ts: Vec<_> = r.samples.iter().map(|s| s.ts).collect();
        assert_eq!(ts, vec![1, 2, 2, NOW]);
    }

    #[test]
    fn bad_values_refused_alone() {
        // JSON has no NaN or infinity: such a number makes the whole document bad JSON.
        for bad in [
            r#"{"ok": 1, "big": 1e999}"#,
            r#"{"ok": 1, "n": NaN}"#,
            r#"{"i": Infinity}"#,
        ] {
            let r = p(bad);
            assert!(r.samples.is_empty());
            assert_eq!(r.refused, vec![Refusal::BadJson], "{bad}");
        }
        let r = p(r#"{"s": "x", "z": null, "a": [1], "ok": 1}"#);
        assert_eq!(r.samples.len(), 1);
        assert_eq!(r.refused, vec![Refusal::BadValue; 3]);
        for bad in ["[1]", "3", "not json", r#"{"points": 3}"#] {
            assert_eq!(p(bad).refused, vec![Refusal::BadJson], "{bad}");
        }
        let r = p(r#"{"points":[1, {"a":1}]}"#);
        assert_eq!(r.refused, vec![Refusal::BadJson]);
        assert_eq!(r.samples.len(), 1);
    }

    #[test]
    fn ts_rules() {
        for bad in [
            r#"{"a":1,"ts":-1}"#,
            r#"{"a":1,"ts":1.5}"#,
            r#"{"a":1,"ts":"1"}"#,
            &format!(r#"{{"a":1,"ts":{}}}"#, NOW + 3_600_001),
        ] {
            assert_eq!(p(bad).refused, vec![Refusal::BadTs], "{bad}");
        }
        assert_eq!(
            p(&format!(r#"{{"a":1,"ts":{}}}"#, NOW + 3_600_000))
                .samples
                .len(),
            1
        );
    }

    #[test]
    fn limits_at_and_one_past() {
        let l = TelemetryLimits::default();
        let name = |n: usize| "m".repeat(n);
        assert_eq!(
            p(&format!(r#"{{"{}":1}}"#, name(l.max_name_len)))
                .samples
                .len(),
            1
        );
        assert_eq!(
            p(&format!(r#"{{"{}":1}}"#, name(l.max_name_len + 1))).refused,
            vec![Refusal::BadName]
        );
        assert_eq!(
            p(r#"{"a b":1,"":2,"é":3}"#).refused,
            vec![Refusal::BadName; 3]
        );
        let point = |n: usize| {
            let fields: Vec<_> = (0..n).map(|i| format!(r#""m{i}":1"#)).collect();
            format!("{{{}}}", fields.join(","))
        };
        assert_eq!(p(&point(l.max_metrics)).samples.len(), l.max_metrics);
        let r = p(&point(l.max_metrics + 1));
        assert!(r.samples.is_empty());
        assert_eq!(r.refused, vec![Refusal::TooManyMetrics; l.max_metrics + 1]);
        let batch = |n: usize| {
            let pts: Vec<_> = (0..n).map(|i| format!(r#"{{"ts":{i},"a":1}}"#)).collect();
            format!(r#"{{"points":[{}]}}"#, pts.join(","))
        };
        let r = p(&batch(l.max_points));
        assert_eq!((r.samples.len(), r.refused.len()), (l.max_points, 0));
        let r = p(&batch(l.max_points + 1));
        assert_eq!(r.samples.len(), l.max_points);
        assert_eq!(r.refused, vec![Refusal::TooManyPoints]);
    }

    #[test]
    fn cbor_shapes() {
        // {"temp": 21.5, "ts": 1000, "on": true, "n": -3}
        let mut m = vec![0xA4, 0x64, b't', b'e', b'm', b'p', 0xFB];
        m.extend(21.5f64.to_be_bytes());
        m.extend([0x62, b't', b's', 0x19, 0x03, 0xE8]);
        m.extend([0x62, b'o', b'n', 0xF5, 0x61, b'n', 0x22]);
        let r = parse(&m, NOW, &TelemetryLimits::default());
        assert!(r.refused.is_empty(), "{r:?}");
        assert_eq!(r.samples.len(), 3);
        assert!(r.samples.iter().all(|s| s.ts == 1000));
        assert!(r.samples.contains(&ParsedSample {
            metric: "n".into(),
            ts: 1000,
            value: Sample::Number(-3.0)
        }));
        // {"points": [{"ts": 1, "a": 1.5 (half)}, {"a": NaN (half)}]}
        let m = [
            0xA1, 0x66, b'p', b'o', b'i', b'n', b't', b's', 0x82, 0xA2, 0x62, b't', b's', 0x01,
            0x61, b'a', 0xF9, 0x3E, 0x00, 0xA1, 0x61, b'a', 0xF9, 0x7E, 0x00,
        ];
        let r = parse(&m, NOW, &TelemetryLimits::default());
        assert_eq!(r.samples.len(), 1);
        assert_eq!(r.samples[0].value, Sample::Number(1.5));
        assert_eq!(r.refused, vec![Refusal::BadValue]);
    }

    #[test]
    fn cbor_bounds() {
        let bad = |m: &[u8]| parse(m, NOW, &TelemetryLimits::default()).refused;
        // Depth: {"a": [[[[1]]]]} is five containers deep.
        assert_eq!(
            bad(&[0xA1, 0x61, b'a', 0x81, 0x81, 0x81, 0x81, 0x01]),
            vec![Refusal::BadJson]
        );
        // Four deep is decoded; the container value is refused alone.
        assert_eq!(
            bad(&[0xA1, 0x61, b'a', 0x81, 0x81, 0x81, 0x01]),
            vec![Refusal::BadValue]
        );
        // A map claiming 2^64-1 entries, truncated; indefinite length; integer key; trailing byte.
        for m in [
            &[
                0xBB, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x61, b'a', 0x01,
            ][..],
            &[0xBF, 0x61, b'a', 0x01, 0xFF],
            &[0xA1, 0x01, 0x01],
            &[0xA1, 0x61, b'a', 0x01, 0x00],
            &[0xA1, 0x61, b'a'],
        ] {
            assert_eq!(bad(m), vec![Refusal::BadJson], "{m:?}");
        }
    }
}
