//! InfluxDB line protocol for bulk telemetry writes (`POST /api/v1/telemetry/write`, `/write`,
//! `/api/v2/write`): a small hand parser, sans-IO.
//!
//! A line is `measurement[,tag=value...] field=value[,field=value...] [timestamp]`. Empty lines
//! and lines starting with `#` are skipped; `\r\n` line ends are accepted. Escapes follow
//! InfluxDB: in the measurement a backslash escapes `,` and space; in tag keys, tag values and
//! field keys it escapes `,`, `=` and space; in a quoted string field value it escapes `"` and
//! `\`. A backslash before any other character is kept as is.
//!
//! Mapping onto the store (whose series are device × metric):
//!
//! * the device is the value of the `device` tag, which every line must have (a line without
//!   one is a bad line); other tags are ignored;
//! * each field is one sample of the metric `<measurement>.<field>` (so `env,device=d1 temp=21`
//!   is metric `env.temp`); a name outside `[A-Za-z0-9_.:-]` or longer than
//!   [`TelemetryLimits::max_name_len`] is refused ([`Refusal::BadName`]);
//! * values: floats, integers (`12i`, and unsigned `12u`, stored as 64-bit floats), booleans
//!   (`t`, `T`, `true`, `True`, `TRUE`, `f`, ... `FALSE`); string fields (`"..."`) are parsed and
//!   refused alone ([`Refusal::BadValue`]), the line's other fields are kept;
//! * the timestamp (optional, default the arrival time) is in the request's [`Precision`]
//!   (default nanoseconds, as InfluxDB) and stored in milliseconds (finer digits are dropped);
//!   a negative one, or one more than [`TelemetryLimits::max_future_ms`] ahead, is refused per
//!   sample ([`Refusal::BadTs`]).
//!
//! A line that does not parse is a [`LineError`]; it contributes nothing, and parsing goes on
//! with the next line (the caller reports the first bad line and keeps the good ones, as
//! InfluxDB's "partial write").

use crate::telemetry::{ParsedSample, Refusal, Sample, TelemetryLimits, valid_metric_name};

/// The unit of line protocol timestamps (`precision=` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Nanoseconds (`ns`, or `n`): the default.
    #[default]
    Nanos,
    /// Microseconds (`us`, or `u`).
    Micros,
    /// Milliseconds (`ms`).
    Millis,
    /// Seconds (`s`).
    Seconds,
}

impl Precision {
    /// Parses a `precision` parameter: `ns`/`n`, `us`/`u`, `ms`, `s`.
    pub fn parse(s: &str) -> Option<Precision> {
        Some(match s {
            "ns" | "n" => Precision::Nanos,
            "us" | "u" => Precision::Micros,
            "ms" => Precision::Millis,
            "s" => Precision::Seconds,
            _ => return None,
        })
    }

    /// `ts` in this unit as milliseconds (rounded down), `None` on overflow.
    pub fn to_ms(self, ts: i64) -> Option<i64> {
        match self {
            Precision::Nanos => Some(ts.div_euclid(1_000_000)),
            Precision::Micros => Some(ts.div_euclid(1_000)),
            Precision::Millis => Some(ts),
            Precision::Seconds => ts.checked_mul(1_000),
        }
    }
}

/// Why a line is bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line is not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// The measurement is empty.
    #[error("missing measurement")]
    NoMeasurement,
    /// A tag is not `key=value` or has an empty key or value.
    #[error("bad tag {0:?}: expected key=value")]
    BadTag(String),
    /// The line has no field set.
    #[error("missing fields")]
    NoFields,
    /// A field is not `key=value`.
    #[error("bad field {0:?}: expected key=value")]
    BadField(String),
    /// A field value is not a number, boolean or quoted string.
    #[error("bad value for field {field:?}: {value:?}")]
    BadValue {
        /// The field key.
        field: String,
        /// The value as written.
        value: String,
    },
    /// A quoted string value has no closing quote.
    #[error("unterminated string in field {0:?}")]
    Unterminated(String),
    /// The timestamp is not an integer (or overflows in milliseconds).
    #[error("bad timestamp {0:?}")]
    BadTimestamp(String),
    /// Something follows the timestamp.
    #[error("unexpected text after the timestamp: {0:?}")]
    Trailing(String),
    /// There is no `device` tag.
    #[error("no device tag (each line needs device=<id>)")]
    NoDevice,
    /// The `device` tag is not a valid device id.
    #[error("device tag {0:?} is not a valid device id")]
    BadDevice(String),
}

/// A field value as written.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A float.
    Float(f64),
    /// An `i` integer.
    Int(i64),
    /// A `u` integer.
    UInt(u64),
    /// A boolean.
    Bool(bool),
    /// A quoted string (unescaped).
    Str(String),
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The measurement (unescaped).
    pub measurement: String,
    /// Tags in order (unescaped).
    pub tags: Vec<(String, String)>,
    /// Fields in order (keys unescaped).
    pub fields: Vec<(String, FieldValue)>,
    /// The timestamp as written (unit: the request's precision).
    pub ts: Option<i64>,
}

/// Splits `s` at the first unescaped byte in `stops` (outside quotes when `quotes`); returns the
/// part before and the rest starting at the stop byte.
fn split_unescaped<'a>(s: &'a str, stops: &[u8], quotes: bool) -> (&'a str, &'a str) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_quote = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            i += 2;
            continue;
        }
        if quotes && c == b'"' {
            in_quote = !in_quote;
        } else if !in_quote && stops.contains(&c) {
            return (&s[..i], &s[i..]);
        }
        i += 1;
    }
    (s, "")
}

/// Removes backslashes before the bytes in `escapable`.
fn unescape(s: &str, escapable: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&n) = chars.peek()
            && escapable.contains(&n)
        {
            out.push(n);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

const KEY_ESC: &[char] = &[',', '=', ' '];

fn parse_value(field: &str, raw: &str) -> Result<FieldValue, LineError> {
    let bad = || LineError::BadValue {
        field: field.to_owned(),
        value: raw.to_owned(),
    };
    if let Some(rest) = raw.strip_prefix('"') {
        let inner = rest
            .strip_suffix('"')
            .filter(|i| !i.ends_with('\\') || i.ends_with("\\\\"))
            .ok_or_else(|| LineError::Unterminated(field.to_owned()))?;
        return Ok(FieldValue::Str(unescape(inner, &['"', '\\'])));
    }
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Bool(false)),
        _ => {}
    }
    if let Some(n) = raw.strip_suffix('i') {
        return n.parse().map(FieldValue::Int).map_err(|_| bad());
    }
    if let Some(n) = raw.strip_suffix('u') {
        return n.parse().map(FieldValue::UInt).map_err(|_| bad());
    }
    // Rust's float parser also takes "inf" and "NaN": line protocol has neither.
    if raw.is_empty()
        || !raw
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return Err(bad());
    }
    raw.parse::<f64>().map(FieldValue::Float).map_err(|_| bad())
}

/// Parses one line (without its line end); `Ok(None)` for an empty or comment line.
pub fn parse_line(line: &str) -> Result<Option<Line>, LineError> {
    let line = line.trim_start_matches([' ', '\t']);
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (series, rest) = split_unescaped(line, b" ", false);
    let (measurement, mut tags_raw) = split_unescaped(series, b",", false);
    let measurement = unescape(measurement, &[',', ' ']);
    if measurement.is_empty() {
        return Err(LineError::NoMeasurement);
    }
    let mut tags = Vec::new();
    while let Some(t) = tags_raw.strip_prefix(',') {
        let (tag, after) = split_unescaped(t, b",", false);
        tags_raw = after;
        let (k, v) = split_unescaped(tag, b"=", false);
        let v = v.strip_prefix('=').unwrap_or("");
        if k.is_empty() || v.is_empty() {
            return Err(LineError::BadTag(tag.to_owned()));
        }
        tags.push((unescape(k, KEY_ESC), unescape(v, KEY_ESC)));
    }
    let rest = rest.trim_start_matches(' ');
    let (fields_raw, ts_raw) = split_unescaped(rest, b" ", true);
    if fields_raw.is_empty() {
        return Err(LineError::NoFields);
    }
    let mut fields = Vec::new();
    let mut f = fields_raw;
    loop {
        let (field, after) = split_unescaped(f, b",", true);
        let (k, v) = split_unescaped(field, b"=", false);
        let Some(v) = v.strip_prefix('=').filter(|_| !k.is_empty()) else {
            return Err(LineError::BadField(field.to_owned()));
        };
        let key = unescape(k, KEY_ESC);
        let value = parse_value(&key, v)?;
        fields.push((key, value));
        match after.strip_prefix(',') {
            Some(next) => f = next,
            None => break,
        }
    }
    let ts_raw = ts_raw.trim_matches(' ');
    let ts = if ts_raw.is_empty() {
        None
    } else {
        let (t, trailing) = split_unescaped(ts_raw, b" ", false);
        if !trailing.trim().is_empty() {
            return Err(LineError::Trailing(trailing.trim().to_owned()));
        }
        Some(
            t.parse::<i64>()
                .map_err(|_| LineError::BadTimestamp(t.to_owned()))?,
        )
    };
    Ok(Some(Line {
        measurement,
        tags,
        fields,
        ts,
    }))
}

/// The samples one good line gave.
#[derive(Debug, Clone, PartialEq)]
pub struct LineSamples {
    /// 1-based line number.
    pub line: usize,
    /// The `device` tag.
    pub device: String,
    /// Accepted samples.
    pub samples: Vec<ParsedSample>,
}

/// What a body parsed into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedLines {
    /// Good lines with their samples.
    pub lines: Vec<LineSamples>,
    /// Samples of good lines refused by rule, one entry each.
    pub refused: Vec<Refusal>,
    /// Bad lines: 1-based number and why, in order.
    pub errors: Vec<(usize, LineError)>,
    /// Non-empty, non-comment lines seen.
    pub line_count: usize,
}

impl ParsedLines {
    /// Accepted samples in all lines.
    pub fn sample_count(&self) -> usize {
        self.lines.iter().map(|l| l.samples.len()).sum()
    }
}

/// Parses a line protocol body that arrived at `arrival_ms` (see the module docs); `device_ok`
/// validates a `device` tag's syntax.
pub fn parse_body(
    body: &[u8],
    precision: Precision,
    arrival_ms: i64,
    limits: &TelemetryLimits,
    device_ok: impl Fn(&str) -> bool,
) -> ParsedLines {
    let mut out = ParsedLines::default();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = std::str::from_utf8(raw) else {
            out.line_count += 1;
            out.errors.push((n, LineError::NotUtf8));
            continue;
        };
        let line = match parse_line(text) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                out.line_count += 1;
                out.errors.push((n, e));
                continue;
            }
        };
        out.line_count += 1;
        let Some((_, device)) = line.tags.iter().find(|(k, _)| k == "device") else {
            out.errors.push((n, LineError::NoDevice));
            continue;
        };
        if !device_ok(device) {
            out.errors.push((n, LineError::BadDevice(device.clone())));
            continue;
        }
        let ts = match line.ts {
            None => Some(arrival_ms),
            Some(t) => match precision.to_ms(t) {
                Some(ms) => Some(ms)
                    .filter(|&ms| ms >= 0 && ms <= arrival_ms.saturating_add(limits.max_future_ms)),
                None => {
                    out.errors.push((n, LineError::BadTimestamp(t.to_string())));
                    continue;
                }
            },
        };
        let Some(ts) = ts else {
            out.refused
                .extend(std::iter::repeat_n(Refusal::BadTs, line.fields.len()));
            continue;
        };
        if line.fields.len() > limits.max_metrics {
            out.refused.extend(std::iter::repeat_n(
                Refusal::TooManyMetrics,
                line.fields.len(),
            ));
            continue;
        }
        let mut samples = Vec::with_capacity(line.fields.len());
        for (key, value) in line.fields {
            let metric = format!("{}.{}", line.measurement, key);
            if !valid_metric_name(&metric, limits) {
                out.refused.push(Refusal::BadName);
                continue;
            }
            let value = match value {
                FieldValue::Float(f) if f.is_finite() => Sample::Number(f),
                FieldValue::Float(_) => {
                    out.refused.push(Refusal::NotFinite);
                    continue;
                }
                FieldValue::Int(i) => Sample::Number(i as f64),
                FieldValue::UInt(u) => Sample::Number(u as f64),
                FieldValue::Bool(b) => Sample::Bool(b),
                FieldValue::Str(_) => {
                    out.refused.push(Refusal::BadValue);
                    continue;
                }
            };
            samples.push(ParsedSample { metric, ts, value });
        }
        if !samples.is_empty() {
            out.lines.push(LineSamples {
                line: n,
                device: device.clone(),
                samples,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_733_350_000_000;

    fn body(s: &str, p: Precision) -> ParsedLines {
        parse_body(s.as_bytes(), p, NOW, &TelemetryLimits::default(), |d| {
            !d.is_empty()
        })
    }

    #[test]
    fn basic_line_and_types() {
        let l = parse_line(
            r#"env,device=d1,room=a temp=21.5,n=3i,u=4u,on=t,s="x y" 1700000000000000000"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(l.measurement, "env");
        assert_eq!(l.tags[0], ("device".into(), "d1".into()));
        assert_eq!(
            l.fields,
            vec![
                ("temp".into(), FieldValue::Float(21.5)),
                ("n".into(), FieldValue::Int(3)),
                ("u".into(), FieldValue::UInt(4)),
                ("on".into(), FieldValue::Bool(true)),
                ("s".into(), FieldValue::Str("x y".into())),
            ]
        );
        assert_eq!(l.ts, Some(1_700_000_000_000_000_000));
        assert_eq!(parse_line("").unwrap(), None);
        assert_eq!(parse_line("# comment").unwrap(), None);
    }

    #[test]
    fn escapes() {
        let l = parse_line(r#"my\ m\,x,device=d\ 1,k\=y=v\,w f\ 1=1,s="a \"q\" \\ b",z=FALSE"#)
            .unwrap()
            .unwrap();
        assert_eq!(l.measurement, "my m,x");
        assert_eq!(l.tags[0].1, "d 1");
        assert_eq!(l.tags[1], ("k=y".into(), "v,w".into()));
        assert_eq!(l.fields[0].0, "f 1");
        assert_eq!(l.fields[1].1, FieldValue::Str(r#"a "q" \ b"#.into()));
        assert_eq!(l.fields[2].1, FieldValue::Bool(false));
        // A comma and a space inside a quoted string do not split.
        let l = parse_line(r#"m,device=d s="a, b=c d",x=1 5"#)
            .unwrap()
            .unwrap();
        assert_eq!(l.fields.len(), 2);
        assert_eq!(l.ts, Some(5));
    }

    #[test]
    fn bad_lines() {
        for (line, want) in [
            ("m,device=d1", LineError::NoFields),
            (",device=d1 a=1", LineError::NoMeasurement),
            ("m,device a=1", LineError::BadTag("device".into())),
            ("m,device=d1 a", LineError::BadField("a".into())),
            (
                "m,device=d1 a=x",
                LineError::BadValue {
                    field: "a".into(),
                    value: "x".into(),
                },
            ),
            (
                "m,device=d1 a=1.5i",
                LineError::BadValue {
                    field: "a".into(),
                    value: "1.5i".into(),
                },
            ),
            (
                "m,device=d1 a=NaN",
                LineError::BadValue {
                    field: "a".into(),
                    value: "NaN".into(),
                },
            ),
            (r#"m,device=d1 a="x"#, LineError::Unterminated("a".into())),
            ("m,device=d1 a=1 12x", LineError::BadTimestamp("12x".into())),
            ("m,device=d1 a=1 1 2", LineError::Trailing("2".into())),
        ] {
            assert_eq!(parse_line(line), Err(want), "{line}");
        }
    }

    #[test]
    fn body_mapping_precision_and_partial() {
        let text = "env,device=d1 temp=1,on=true 1700000000000000000\n\
                    \n# c\n\
                    env temp=2\n\
                    env,device=d2 s=\"x\",t=2i\r\n\
                    bad line\n";
        let r = body(text, Precision::Nanos);
        assert_eq!(r.line_count, 4);
        assert_eq!(r.errors.len(), 2);
        assert_eq!(r.errors[0], (4, LineError::NoDevice));
        assert_eq!(r.errors[1].0, 6);
        assert_eq!(r.refused, vec![Refusal::BadValue]);
        assert_eq!(r.lines.len(), 2);
        assert_eq!(r.lines[0].samples[0].metric, "env.temp");
        assert_eq!(r.lines[0].samples[0].ts, 1_700_000_000_000);
        assert_eq!(r.lines[1].device, "d2");
        assert_eq!(r.lines[1].samples[0].ts, NOW);
        for (p, ts) in [
            (Precision::Micros, "1700000000000000"),
            (Precision::Millis, "1700000000000"),
            (Precision::Seconds, "1700000000"),
        ] {
            let r = body(&format!("m,device=d x=1 {ts}"), p);
            assert_eq!(r.lines[0].samples[0].ts, 1_700_000_000_000, "{p:?}");
        }
        let r = body(&format!("m,device=d x=1 {}", i64::MAX), Precision::Seconds);
        assert_eq!(r.errors.len(), 1);
        let r = body("m,device=d x=1 -5", Precision::Millis);
        assert_eq!(r.refused, vec![Refusal::BadTs]);
        let r = body("m\\ x,device=d y=1", Precision::Millis);
        assert_eq!(r.refused, vec![Refusal::BadName]);
        assert_eq!(Precision::parse("us"), Some(Precision::Micros));
        assert_eq!(Precision::parse("h"), None);
    }

    proptest::proptest! {
        /// Nothing a client sends makes the parser panic; every line is good or a bad line.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let r = parse_body(&body, Precision::Nanos, NOW, &TelemetryLimits::default(), |_| true);
            proptest::prop_assert!(r.lines.len() + r.errors.len() <= r.line_count);
            // The CBOR path of MQTT payloads, on the same bytes behind a map header.
            let mut cbor = vec![0xA3];
            cbor.extend_from_slice(&body);
            let _ = crate::telemetry::parse(&cbor, NOW, &TelemetryLimits::default());
        }

        /// Line-protocol-like text (the interesting bytes, often) never panics either.
        #[test]
        fn line_like_text_never_panics(line in "[a-z,= \\\"0-9.tiéu#-]{0,80}") {
            let _ = parse_line(&line);
            let _ = crate::telemetry::cbor_to_json(line.as_bytes());
        }
    }
}
