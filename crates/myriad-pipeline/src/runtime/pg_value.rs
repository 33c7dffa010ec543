//! PostgreSQL values (the binary format of a result column) as JSON, for the PostgreSQL
//! source. Pure functions; every length read from the server's bytes is checked.
//!
//! | column type | JSON |
//! |---|---|
//! | `bool` | `true` / `false` |
//! | `int2`, `int4`, `int8`, `oid` | an integer |
//! | `float4`, `float8` | a number; NaN and infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | `numeric` | a number when it is an integer that fits `i64` or has at most 15 significant digits, else its exact decimal text as a string (`"NaN"` and the infinities as strings) |
//! | `text`, `varchar`, `char(n)`, `name`, `"char"`, enums | a string |
//! | `json`, `jsonb` | the value, nested |
//! | `timestamptz`, `timestamp` | RFC 3339 in UTC (`2026-12-05T12:00:00.123Z`), or unix milliseconds with `timestamps = "ms"`; infinities as `"infinity"` / `"-infinity"` |
//! | `date` | `"YYYY-MM-DD"` |
//! | `bytea` | base64 (standard alphabet, padded) |
//! | `uuid` | the hyphenated lowercase form |
//! | an array of any of these | a JSON array (nested for more dimensions) |
//! | a domain | as its base type |
//!
//! NULL is JSON `null`. Other types (`interval`, `inet`, composites, ranges, ...) stop the
//! pipeline with an error naming the column: cast it in the query (`x::text`).

use base64::Engine;
use serde_json::{Map, Number, Value};
use tokio_postgres::types::{FromSql, Kind, Type};

/// The most dimensions of an array (PostgreSQL's `MAXDIM`).
const MAX_DIMS: usize = 6;
/// The largest display scale of a `numeric` (PostgreSQL's `NUMERIC_DSCALE_MASK`); with a
/// weight of at most `i16::MAX` groups a value's text stays under 150 KB.
const MAX_NUMERIC_DSCALE: usize = 0x3FFF;
/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// How timestamps become JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeFormat {
    /// An RFC 3339 string in UTC.
    #[default]
    Rfc3339,
    /// Unix milliseconds (a number).
    Millis,
}

/// How one column's values are decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoder {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    Json,
    Jsonb,
    Timestamp,
    Date,
    Bytea,
    Uuid,
    /// An array of the element decoder's values.
    Array(Box<Decoder>),
}

/// The decoder for a column of type `ty`, or why there is none.
pub(crate) fn decoder_for(ty: &Type) -> Result<Decoder, String> {
    let mut ty = ty.clone();
    // Domains over domains: bounded (a domain's base is resolved by the server; no cycles).
    for _ in 0..16 {
        let simple = match ty {
            Type::BOOL => Some(Decoder::Bool),
            Type::INT2 => Some(Decoder::Int2),
            Type::INT4 => Some(Decoder::Int4),
            Type::INT8 => Some(Decoder::Int8),
            Type::OID => Some(Decoder::Oid),
            Type::FLOAT4 => Some(Decoder::Float4),
            Type::FLOAT8 => Some(Decoder::Float8),
            Type::NUMERIC => Some(Decoder::Numeric),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::CHAR => {
                Some(Decoder::Text)
            }
            Type::JSON => Some(Decoder::Json),
            Type::JSONB => Some(Decoder::Jsonb),
            Type::TIMESTAMPTZ | Type::TIMESTAMP => Some(Decoder::Timestamp),
            Type::DATE => Some(Decoder::Date),
            Type::BYTEA => Some(Decoder::Bytea),
            Type::UUID => Some(Decoder::Uuid),
            _ => None,
        };
        if let Some(decoder) = simple {
            return Ok(decoder);
        }
        match ty.kind() {
            Kind::Enum(_) => return Ok(Decoder::Text),
            Kind::Domain(base) => ty = base.clone(),
            Kind::Array(element) => {
                let element = decoder_for(element)?;
                if matches!(element, Decoder::Array(_)) {
                    return Err(format!("type {} is not supported", ty.name()));
                }
                return Ok(Decoder::Array(Box::new(element)));
            }
            _ => {
                return Err(format!(
                    "type {} is not supported (cast it in the query, e.g. ::text)",
                    ty.name()
                ));
            }
        }
    }
    Err(format!("type {} is not supported", ty.name()))
}

/// A column's raw bytes as the server sent them (binary format), or NULL.
pub(crate) struct Raw<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> Result<Raw<'a>, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn fixed<const N: usize>(raw: &[u8], what: &str) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("{what}: {} bytes, expected {N}", raw.len()))
}

fn float(x: f64) -> Value {
    if x.is_nan() {
        Value::from("NaN")
    } else if x.is_infinite() {
        Value::from(if x > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

fn text(raw: &[u8]) -> Result<String, String> {
    String::from_utf8(raw.to_vec()).map_err(|_| "text: not UTF-8".to_owned())
}

/// `raw` (a non-NULL value in binary format) as JSON.
pub(crate) fn decode(decoder: &Decoder, raw: &[u8], times: TimeFormat) -> Result<Value, String> {
    Ok(match decoder {
        Decoder::Bool => Value::Bool(fixed::<1>(raw, "bool")?[0] != 0),
        Decoder::Int2 => Value::from(i16::from_be_bytes(fixed(raw, "int2")?)),
        Decoder::Int4 => Value::from(i32::from_be_bytes(fixed(raw, "int4")?)),
        Decoder::Int8 => Value::from(i64::from_be_bytes(fixed(raw, "int8")?)),
        Decoder::Oid => Value::from(u32::from_be_bytes(fixed(raw, "oid")?)),
        Decoder::Float4 => float(f64::from(f32::from_be_bytes(fixed(raw, "float4")?))),
        Decoder::Float8 => float(f64::from_be_bytes(fixed(raw, "float8")?)),
        Decoder::Numeric => numeric_json(&numeric_text(raw)?),
        Decoder::Text => Value::String(text(raw)?),
        Decoder::Json => serde_json::from_slice(raw).map_err(|e| format!("json: {e}"))?,
        Decoder::Jsonb => match raw.split_first() {
            Some((1, rest)) => serde_json::from_slice(rest).map_err(|e| format!("jsonb: {e}"))?,
            _ => return Err("jsonb: unknown version".to_owned()),
        },
        Decoder::Timestamp => timestamp(i64::from_be_bytes(fixed(raw, "timestamp")?), times),
        Decoder::Date => date(i32::from_be_bytes(fixed(raw, "date")?)),
        Decoder::Bytea => Value::from(base64::engine::general_purpose::STANDARD.encode(raw)),
        Decoder::Uuid => Value::from(uuid(&fixed::<16>(raw, "uuid")?)),
        Decoder::Array(element) => array(element, raw, times)?,
    })
}

fn uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Year, month, day of `days` since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn date(days: i32) -> Value {
    match days {
        i32::MAX => Value::from("infinity"),
        i32::MIN => Value::from("-infinity"),
        _ => {
            let (y, m, d) = civil_from_days(i64::from(days) + PG_EPOCH_DAYS);
            Value::from(format!("{y:04}-{m:02}-{d:02}"))
        }
    }
}

/// Microseconds since 2000-01-01 UTC as JSON.
fn timestamp(us: i64, times: TimeFormat) -> Value {
    match us {
        i64::MAX => return Value::from("infinity"),
        i64::MIN => return Value::from("-infinity"),
        _ => {}
    }
    // PostgreSQL's range (4713 BC to 294276 AD) is far inside i64 microseconds.
    let unix_us = us.saturating_add(PG_EPOCH_US);
    if times == TimeFormat::Millis {
        return Value::from(unix_us.div_euclid(1000));
    }
    let days = unix_us.div_euclid(86_400_000_000);
    let in_day = unix_us.rem_euclid(86_400_000_000);
    let (y, mo, d) = civil_from_days(days);
    let secs = in_day / 1_000_000;
    let frac = in_day % 1_000_000;
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let fraction = if frac == 0 {
        String::new()
    } else if frac % 1000 == 0 {
        format!(".{:03}", frac / 1000)
    } else {
        format!(".{frac:06}")
    };
    Value::from(format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}Z"
    ))
}

/// A `numeric`'s exact decimal text (`-12.30`, `NaN`, `Infinity`).
fn numeric_text(raw: &[u8]) -> Result<String, String> {
    let header = raw.get(..8).ok_or("numeric: short")?;
    let word = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let (ndigits, weight, sign, dscale) = (
        usize::from(word(0)),
        i64::from(word(2) as i16),
        word(4),
        usize::from(word(6)),
    );
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".to_owned()),
        0xD000 => return Ok("Infinity".to_owned()),
        0xF000 => return Ok("-Infinity".to_owned()),
        _ => return Err("numeric: bad sign".to_owned()),
    }
    let body = &raw[8..];
    if body.len() != ndigits * 2 || dscale > MAX_NUMERIC_DSCALE {
        return Err("numeric: bad length".to_owned());
    }
    let digits: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    if digits.iter().any(|&d| d > 9999) {
        return Err("numeric: bad digit".to_owned());
    }
    let group = |i: i64| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                out.push_str(&group(i).to_string());
            } else {
                out.push_str(&format!("{:04}", group(i)));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", group(i)));
            i += 1;
        }
        fraction.truncate(dscale);
        out.push_str(&fraction);
    }
    Ok(out)
}

/// A numeric's text as JSON: a number when that is exact enough, else the string.
fn numeric_json(text: &str) -> Value {
    if let Ok(n) = text.parse::<i64>() {
        return Value::from(n);
    }
    let significant = text
        .bytes()
        .filter(u8::is_ascii_digit)
        .skip_while(|&b| b == b'0')
        .count();
    if significant <= 15
        && let Ok(x) = text.parse::<f64>()
        && x.is_finite()
    {
        return float(x);
    }
    Value::from(text)
}

/// A binary array (`ndim`, flags, element oid, `ndim` × (length, lower bound), elements each
/// a length (-1: NULL) and its bytes) as nested JSON arrays.
fn array(element: &Decoder, raw: &[u8], times: TimeFormat) -> Result<Value, String> {
    let mut at = 0usize;
    let int = |at: &mut usize| -> Result<i32, String> {
        let b = raw.get(*at..*at + 4).ok_or("array: short")?;
        *at += 4;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let ndim = usize::try_from(int(&mut at)?).map_err(|_| "array: bad dimensions")?;
    if ndim > MAX_DIMS {
        return Err("array: too many dimensions".to_owned());
    }
    int(&mut at)?; // has nulls
    int(&mut at)?; // element oid
    let mut dims = Vec::with_capacity(ndim);
    let mut total: usize = usize::from(ndim > 0);
    for _ in 0..ndim {
        let len = usize::try_from(int(&mut at)?).map_err(|_| "array: bad length")?;
        int(&mut at)?; // lower bound
        total = total.checked_mul(len).ok_or("array: too large")?;
        dims.push(len);
    }
    // Each element takes at least its 4-byte length: no allocation beyond what was sent.
    if total > raw.len().saturating_sub(at) / 4 {
        return Err("array: short".to_owned());
    }
    let mut values = Vec::with_capacity(total);
    for _ in 0..total {
        let len = int(&mut at)?;
        if len < 0 {
            values.push(Value::Null);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| "array: bad element")?;
        let bytes = raw.get(at..at + len).ok_or("array: short")?;
        at += len;
        values.push(decode(element, bytes, times)?);
    }
    if at != raw.len() {
        return Err("array: trailing bytes".to_owned());
    }
    // Nest from the innermost dimension out (iterative).
    for &len in dims.iter().skip(1).rev() {
        let mut nested = Vec::with_capacity(values.len() / len.max(1));
        let mut rest = values.into_iter();
        loop {
            let chunk: Vec<Value> = rest.by_ref().take(len).collect();
            if chunk.is_empty() {
                break;
            }
            nested.push(Value::Array(chunk));
        }
        values = nested;
    }
    Ok(Value::Array(values))
}

/// One row as a JSON object: `names[i]` -> the column's value (`None`: NULL).
pub(crate) fn row_object(
    names: &[String],
    decoders: &[Decoder],
    values: &[Option<&[u8]>],
    times: TimeFormat,
) -> Result<Map<String, Value>, String> {
    let mut object = Map::new();
    for ((name, decoder), raw) in names.iter().zip(decoders).zip(values) {
        let value = match raw {
            None => Value::Null,
            Some(raw) => {
                decode(decoder, raw, times).map_err(|e| format!("column {name:?}: {e}"))?
            }
        };
        object.insert(name.clone(), value);
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn numeric(ndigits: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits.len() as u16, weight as u16, sign, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in ndigits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn scalars() {
        let t = TimeFormat::Rfc3339;
        assert_eq!(decode(&Decoder::Bool, &[1], t).unwrap(), json!(true));
        assert_eq!(
            decode(&Decoder::Int2, &(-7i16).to_be_bytes(), t).unwrap(),
            json!(-7)
        );
        assert_eq!(
            decode(&Decoder::Int8, &(1i64 << 40).to_be_bytes(), t).unwrap(),
            json!(1i64 << 40)
        );
        assert_eq!(
            decode(&Decoder::Float8, &21.5f64.to_be_bytes(), t).unwrap(),
            json!(21.5)
        );
        assert_eq!(
            decode(&Decoder::Float4, &f32::NAN.to_be_bytes(), t).unwrap(),
            json!("NaN")
        );
        assert_eq!(
            decode(&Decoder::Float8, &f64::NEG_INFINITY.to_be_bytes(), t).unwrap(),
            json!("-Infinity")
        );
        assert_eq!(
            decode(&Decoder::Text, "é".as_bytes(), t).unwrap(),
            json!("é")
        );
        assert!(decode(&Decoder::Text, &[0xff], t).is_err());
        assert!(
            decode(&Decoder::Int4, &[0, 1], t)
                .unwrap_err()
                .contains("expected 4")
        );
        assert_eq!(
            decode(&Decoder::Bytea, b"\x00\xffab", t).unwrap(),
            json!("AP9hYg==")
        );
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7,
        ];
        assert_eq!(
            decode(&Decoder::Uuid, &u, t).unwrap(),
            json!("12345678-9abc-def0-0001-020304050607")
        );
        assert_eq!(
            decode(&Decoder::Jsonb, b"\x01{\"a\":[1,{\"b\":null}]}", t).unwrap(),
            json!({"a": [1, {"b": null}]})
        );
        assert!(decode(&Decoder::Jsonb, b"\x02{}", t).is_err());
        assert_eq!(decode(&Decoder::Json, b"[true]", t).unwrap(), json!([true]));
    }

    #[test]
    fn times_and_dates() {
        // 2025-12-05T12:00:00.123Z in microseconds since 2000-01-01.
        let unix_ms = 1_764_936_000_123i64;
        let us = unix_ms * 1000 - PG_EPOCH_US;
        let raw = us.to_be_bytes();
        assert_eq!(
            decode(&Decoder::Timestamp, &raw, TimeFormat::Rfc3339).unwrap(),
            json!("2025-12-05T12:00:00.123Z")
        );
        assert_eq!(
            decode(&Decoder::Timestamp, &raw, TimeFormat::Millis).unwrap(),
            json!(unix_ms)
        );
        assert_eq!(
            timestamp(1, TimeFormat::Rfc3339),
            json!("2000-01-01T00:00:00.000001Z")
        );
        assert_eq!(
            timestamp(-1_000_000, TimeFormat::Rfc3339),
            json!("1999-12-31T23:59:59Z")
        );
        assert_eq!(timestamp(i64::MAX, TimeFormat::Millis), json!("infinity"));
        assert_eq!(date(0), json!("2000-01-01"));
        assert_eq!(date(-1), json!("1999-12-31"));
        assert_eq!(date(366 + 31 + 27), json!("2001-02-28"));
        assert_eq!(date(366 + 31 + 28), json!("2001-03-01"));
        assert_eq!(date(i32::MIN), json!("-infinity"));
    }

    #[test]
    fn numerics_exact_text_and_json() {
        // 12.30 (dscale 2): weight 0, digits [12, 3000].
        assert_eq!(
            numeric_text(&numeric(&[12, 3000], 0, 0, 2)).unwrap(),
            "12.30"
        );
        // -0.0005: weight -1, digits [5], dscale 4.
        assert_eq!(
            numeric_text(&numeric(&[5], -1, 0x4000, 4)).unwrap(),
            "-0.0005"
        );
        // 10000200 (weight 1: 1000 | 0200... ): digits [1000, 200].
        assert_eq!(
            numeric_text(&numeric(&[1000, 200], 1, 0, 0)).unwrap(),
            "10000200"
        );
        // 1e8 stored as [1] weight 2: 1 0000 0000.
        assert_eq!(numeric_text(&numeric(&[1], 2, 0, 0)).unwrap(), "100000000");
        assert_eq!(numeric_text(&numeric(&[], 0, 0, 0)).unwrap(), "0");
        assert_eq!(numeric_text(&numeric(&[], 0, 0xC000, 0)).unwrap(), "NaN");
        assert!(numeric_text(&numeric(&[12], 0, 0, 0)[..9]).is_err());
        assert!(numeric_text(&numeric(&[10000], 0, 0, 0)).is_err());
        assert!(numeric_text(&numeric(&[1], 0, 0, 0x4000)).is_err());
        assert_eq!(
            numeric_text(&numeric(&[1], i16::MAX, 0, 0)).unwrap().len(),
            4 * 32_767 + 1
        );
        assert_eq!(numeric_json("12.30"), json!(12.3));
        assert_eq!(numeric_json("-9223372036854775808"), json!(i64::MIN));
        assert_eq!(
            numeric_json("12345678901234567.5"),
            json!("12345678901234567.5")
        );
        assert_eq!(numeric_json("0.000000000000001"), json!(1e-15));
        assert_eq!(numeric_json("NaN"), json!("NaN"));
    }

    fn int4_array(dims: &[i32], elements: &[Option<i32>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(dims.len() as i32).to_be_bytes());
        v.extend_from_slice(&1i32.to_be_bytes());
        v.extend_from_slice(&23i32.to_be_bytes());
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
            v.extend_from_slice(&1i32.to_be_bytes());
        }
        for e in elements {
            match e {
                Some(x) => {
                    v.extend_from_slice(&4i32.to_be_bytes());
                    v.extend_from_slice(&x.to_be_bytes());
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v
    }

    #[test]
    fn arrays_nest_and_lengths_are_checked() {
        let d = Decoder::Array(Box::new(Decoder::Int4));
        let t = TimeFormat::Rfc3339;
        assert_eq!(decode(&d, &int4_array(&[], &[]), t).unwrap(), json!([]));
        assert_eq!(
            decode(&d, &int4_array(&[3], &[Some(1), None, Some(3)]), t).unwrap(),
            json!([1, null, 3])
        );
        let six: Vec<_> = (1..=6).map(Some).collect();
        assert_eq!(
            decode(&d, &int4_array(&[2, 3], &six), t).unwrap(),
            json!([[1, 2, 3], [4, 5, 6]])
        );
        // Claims a billion elements with a few bytes: refused before allocating.
        let lying = int4_array(&[1_000_000_000], &[Some(1)]);
        assert!(decode(&d, &lying, t).unwrap_err().contains("short"));
        assert!(decode(&d, &int4_array(&[1], &[Some(1), Some(2)]), t).is_err());
        assert!(decode(&d, &int4_array(&[1; 7], &[Some(1)]), t).is_err());
    }

    #[test]
    fn types_map_to_decoders() {
        assert_eq!(decoder_for(&Type::INT8).unwrap(), Decoder::Int8);
        assert_eq!(decoder_for(&Type::VARCHAR).unwrap(), Decoder::Text);
        assert_eq!(
            decoder_for(&Type::TEXT_ARRAY).unwrap(),
            Decoder::Array(Box::new(Decoder::Text))
        );
        assert!(
            decoder_for(&Type::INTERVAL)
                .unwrap_err()
                .contains("interval")
        );
        assert!(decoder_for(&Type::INET).is_err());
    }

    #[test]
    fn rows_become_objects_naming_the_bad_column() {
        let names = vec!["id".to_owned(), "note".to_owned()];
        let decoders = vec![Decoder::Int4, Decoder::Text];
        let one = 1i32.to_be_bytes();
        let row = row_object(&names, &decoders, &[Some(&one), None], TimeFormat::Rfc3339).unwrap();
        assert_eq!(Value::Object(row), json!({"id": 1, "note": null}));
        let bad = row_object(
            &names,
            &decoders,
            &[Some(&one[..2]), None],
            TimeFormat::Rfc3339,
        );
        assert!(bad.unwrap_err().contains("column \"id\""));
    }
}
