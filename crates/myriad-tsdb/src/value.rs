//! Point values and their kinds.

/// The type of a series' values; fixed by the series' first point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// 64-bit IEEE floats (XOR-encoded in chunks).
    F64,
    /// 64-bit signed integers (delta-of-delta encoded in chunks).
    I64,
    /// Booleans (one bit each in chunks).
    Bool,
}

impl ValueKind {
    /// The one-byte tag used in chunk headers and WAL records.
    pub fn tag(self) -> u8 {
        match self {
            ValueKind::F64 => 0,
            ValueKind::I64 => 1,
            ValueKind::Bool => 2,
        }
    }

    /// The kind for a tag, or `None` for an unknown tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(ValueKind::F64),
            1 => Some(ValueKind::I64),
            2 => Some(ValueKind::Bool),
            _ => None,
        }
    }
}

/// One value of a point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A float.
    F64(f64),
    /// An integer.
    I64(i64),
    /// A boolean.
    Bool(bool),
}

impl Value {
    /// This value's kind.
    pub fn kind(&self) -> ValueKind {
        match self {
            Value::F64(_) => ValueKind::F64,
            Value::I64(_) => ValueKind::I64,
            Value::Bool(_) => ValueKind::Bool,
        }
    }

    /// Bit-exact equality (so NaN payloads and -0.0 compare as stored).
    pub fn bits_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::F64(a), Value::F64(b)) => a.to_bits() == b.to_bits(),
            (Value::I64(a), Value::I64(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            _ => false,
        }
    }
}

/// A timestamp in milliseconds since the Unix epoch and a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Milliseconds since the Unix epoch (the caller's clock; the engine has none).
    pub ts: i64,
    /// The value.
    pub value: Value,
}
