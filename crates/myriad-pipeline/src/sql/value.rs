//! The values rule expressions compute with: JSON's types plus `Undefined`.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Number, Value};

/// A number: AWS IoT SQL's `Int` and `Decimal` (a 64-bit float here).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Dec(f64),
}

impl Num {
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Dec(d) => d,
        }
    }

    pub(crate) fn into_val<'a>(self) -> Val<'a> {
        match self {
            Num::Int(i) => Val::Int(i),
            Num::Dec(d) if d.is_finite() => Val::Dec(d),
            Num::Dec(_) => Val::Undef,
        }
    }
}

/// A value during evaluation. Arrays and objects stay borrowed from the payload when they
/// come from it.
#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    /// Not a value: a missing field, a function given the wrong types.
    Undef,
    Null,
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(Cow<'a, str>),
    /// An array or an object.
    Json(Cow<'a, Value>),
}

impl<'a> Val<'a> {
    pub(crate) fn from_json(v: &'a Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => n.as_f64().map(Val::Dec).unwrap_or(Val::Undef),
            },
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => Val::Json(Cow::Borrowed(v)),
        }
    }

    /// The JSON form; `None` for `Undefined` (the output key is left out).
    pub(crate) fn into_json(self) -> Option<Value> {
        Some(match self {
            Val::Undef => return None,
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(b),
            Val::Int(i) => Value::Number(i.into()),
            Val::Dec(d) => Value::Number(Number::from_f64(d)?),
            Val::Str(s) => Value::String(s.into_owned()),
            Val::Json(v) => v.into_owned(),
        })
    }

    pub(crate) fn is_undef(&self) -> bool {
        matches!(self, Val::Undef)
    }

    /// AWS's conversion to a number: numbers as they are, strings parsed (an integer literal
    /// as `Int`, anything else as `Decimal`), everything else `None`.
    pub(crate) fn to_num(&self) -> Option<Num> {
        match self {
            Val::Int(i) => Some(Num::Int(*i)),
            Val::Dec(d) => Some(Num::Dec(*d)),
            Val::Str(s) => parse_num(s),
            _ => None,
        }
    }

    /// AWS's conversion to a boolean for AND / OR / NOT: booleans, and the strings "true" and
    /// "false" in any case.
    pub(crate) fn to_bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            Val::Str(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Val::Str(s) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }

    /// The string form used by `cast(x AS String)`, `concat` and `||`: strings as they are,
    /// numbers and booleans printed, null as "null", arrays and objects as JSON text.
    pub(crate) fn to_text(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Val::Undef => return None,
            Val::Null => Cow::Borrowed("null"),
            Val::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Val::Int(i) => Cow::Owned(i.to_string()),
            Val::Dec(d) => Cow::Owned(Number::from_f64(*d)?.to_string()),
            Val::Str(s) => Cow::Borrowed(s.as_ref()),
            Val::Json(v) => Cow::Owned(v.to_string()),
        })
    }

    /// A string argument, without conversion.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The AWS type name (`typeof`).
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Val::Undef => "Undefined",
            Val::Null => "Null",
            Val::Bool(_) => "Boolean",
            Val::Int(_) => "Int",
            Val::Dec(_) => "Decimal",
            Val::Str(_) => "String",
            Val::Json(v) if v.is_array() => "Array",
            Val::Json(_) => "Object",
        }
    }
}

pub(crate) fn parse_num(s: &str) -> Option<Num> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(Num::Int(i));
    }
    // Rust's float parser also takes "inf" and "NaN": only finite numbers count.
    match s.parse::<f64>() {
        Ok(d) if d.is_finite() => Some(Num::Dec(d)),
        _ => None,
    }
}

/// Equality (`=`, `<>`, `IN`, CASE operand): `None` (Undefined) when either side is Undefined;
/// numbers compare by value (a numeric string against a number is converted), values of
/// other different types are unequal.
pub(crate) fn equals(a: &Val<'_>, b: &Val<'_>) -> Option<bool> {
    Some(match (a, b) {
        (Val::Undef, _) | (_, Val::Undef) => return None,
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Json(x), Val::Json(y)) => x == y,
        (Val::Int(x), Val::Int(y)) => x == y,
        _ => match (a.to_num(), b.to_num()) {
            (Some(x), Some(y))
                if matches!(a, Val::Int(_) | Val::Dec(_))
                    || matches!(b, Val::Int(_) | Val::Dec(_)) =>
            {
                num_cmp(x, y) == Some(Ordering::Equal)
            }
            _ => false,
        },
    })
}

/// Ordering (`<`, `<=`, `>`, `>=`, BETWEEN): numbers (numeric strings converted, as AWS converts
/// both operands to Decimal); two strings that are not both numeric compare as text;
/// anything else is Undefined.
pub(crate) fn compare(a: &Val<'_>, b: &Val<'_>) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.to_num(), b.to_num()) {
        return num_cmp(x, y);
    }
    match (a, b) {
        (Val::Str(x), Val::Str(y)) => Some(x.as_ref().cmp(y.as_ref())),
        _ => None,
    }
}

pub(crate) fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        _ => a.as_f64().partial_cmp(&b.as_f64()),
    }
}
