//! W3C trace context carried in MQTT 5.0 user properties.
//!
//! A PUBLISH may carry the user properties `traceparent` and `tracestate`
//! as defined by the W3C Trace Context recommendation. When a
//! [`PublishTracer`] is installed ([`crate::shell::Hooks::tracer`]), the
//! broker continues that trace: it asks the tracer for the context of its
//! routing span and writes it into the `traceparent` of every copy it
//! delivers, so subscribers continue the same trace. Without a tracer the
//! broker neither parses nor rewrites the properties (no cost).
//!
//! This module is pure: parsing and formatting `traceparent` headers, and
//! reading and writing them in a property list.

use myriad_mqtt::ByteString;

/// The user property naming the parent of a trace.
pub const TRACEPARENT: &str = "traceparent";
/// The user property carrying vendor trace state (passed on unchanged).
pub const TRACESTATE: &str = "tracestate";

/// One W3C `traceparent`: `{version}-{trace-id}-{parent-id}-{flags}`, all
/// lowercase hex (version 00: 2-32-16-2 digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace this span belongs to (never all zeros).
    pub trace_id: [u8; 16],
    /// The span that is the parent of the next one (never all zeros).
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// Why a `traceparent` value was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    /// Not four dash-separated fields of the right lengths.
    #[error("traceparent is not version-traceid-parentid-flags")]
    Shape,
    /// A field holds something other than lowercase hex digits.
    #[error("traceparent holds a non-hex or uppercase digit")]
    Hex,
    /// Version `ff` is forbidden by the specification.
    #[error("traceparent version ff is invalid")]
    Version,
    /// An all-zero trace id or parent id.
    #[error("traceparent has an all-zero id")]
    ZeroId,
}

impl TraceParent {
    /// The sampled flag.
    pub const SAMPLED: u8 = 0x01;

    /// Parses a `traceparent` header value. Versions above 00 are accepted
    /// when they start with the version 00 fields (as the specification
    /// asks of version 00 parsers); their extra fields are ignored.
    pub fn parse(value: &str) -> Result<TraceParent, TraceParentError> {
        let bytes = value.as_bytes();
        if bytes.len() < 55 {
            return Err(TraceParentError::Shape);
        }
        let version = hex_byte(&bytes[0..2])?;
        if version == 0xff {
            return Err(TraceParentError::Version);
        }
        let exact = bytes.len() == 55;
        let extended = version > 0 && bytes.get(55) == Some(&b'-');
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' || !(exact || extended) {
            return Err(TraceParentError::Shape);
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, out) in parent_id.iter_mut().enumerate() {
            *out = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return Err(TraceParentError::ZeroId);
        }
        Ok(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The same trace with `span_id` as the parent of what follows.
    pub fn child(&self, span_id: [u8; 8]) -> TraceParent {
        TraceParent {
            parent_id: span_id,
            ..*self
        }
    }

    /// The header value, always version 00.
    pub fn format(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.parent_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.format())
    }
}

fn hex_digit(c: u8) -> Result<u8, TraceParentError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(TraceParentError::Hex),
    }
}

fn hex_byte(pair: &[u8]) -> Result<u8, TraceParentError> {
    match pair {
        [hi, lo] => Ok(hex_digit(*hi)? << 4 | hex_digit(*lo)?),
        _ => Err(TraceParentError::Shape),
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// The valid `traceparent` among `properties`, if any (the first one; an
/// invalid value counts as none, as the specification asks).
pub fn find_traceparent(properties: &[(ByteString, ByteString)]) -> Option<TraceParent> {
    properties
        .iter()
        .find(|(k, _)| &**k == TRACEPARENT)
        .and_then(|(_, v)| TraceParent::parse(v).ok())
}

/// The `tracestate` among `properties`, if any.
pub fn find_tracestate(properties: &[(ByteString, ByteString)]) -> Option<&str> {
    properties
        .iter()
        .find(|(k, _)| &**k == TRACESTATE)
        .map(|(_, v)| &**v)
}

/// The `traceparent` and `tracestate` entries of `properties`, to carry a
/// trace into a message published in response (empty, without allocating,
/// when there are none).
pub fn trace_properties(properties: &[(ByteString, ByteString)]) -> Vec<(ByteString, ByteString)> {
    properties
        .iter()
        .filter(|(k, _)| &**k == TRACEPARENT || &**k == TRACESTATE)
        .cloned()
        .collect()
}

/// Sets `traceparent` in `properties` to `context`: replaces the first one
/// (dropping any others) or appends one. Other properties keep their order.
pub fn set_traceparent(properties: &mut Vec<(ByteString, ByteString)>, context: &TraceParent) {
    let value: ByteString = context.format().into();
    let mut seen = false;
    properties.retain_mut(|(k, v)| {
        if &**k != TRACEPARENT {
            return true;
        }
        if seen {
            return false;
        }
        seen = true;
        *v = value.clone();
        true
    });
    if !seen {
        properties.push((TRACEPARENT.into(), value));
    }
}

/// Continues traces through the broker. Called on the broker's core task
/// for every routed PUBLISH, so it must be quick and must not block.
pub trait PublishTracer: Send + Sync + 'static {
    /// A message on `topic` is being routed; `parent` is the valid
    /// `traceparent` it carries and `state` its `tracestate`. Returns the
    /// context the delivered copies carry (same trace, the broker's span
    /// as parent), or `None` to leave the message untouched (not sampled).
    fn route(
        &self,
        topic: &str,
        parent: Option<&TraceParent>,
        state: Option<&str>,
    ) -> Option<TraceParent>;
}

impl std::fmt::Debug for dyn PublishTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublishTracer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_spec_example() {
        let tp = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.trace_id[15], 0x36);
        assert_eq!(
            tp.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(tp.sampled());
        assert_eq!(tp.format(), EXAMPLE);
    }

    #[test]
    fn rejects_malformed_values() {
        use TraceParentError::*;
        let cases = [
            ("", Shape),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
                Shape,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                Shape,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Shape,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                Hex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                Hex,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Version,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ZeroId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ZeroId,
            ),
        ];
        for (value, error) in cases {
            assert_eq!(TraceParent::parse(value), Err(error), "{value:?}");
        }
    }

    #[test]
    fn a_future_version_with_more_fields_is_read_as_version_00() {
        let value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        let tp = TraceParent::parse(value).expect("future version");
        assert!(!tp.sampled());
        assert!(tp.format().starts_with("00-4bf92f"));
    }

    #[test]
    fn child_keeps_trace_and_flags() {
        let tp = TraceParent::parse(EXAMPLE).expect("valid");
        let child = tp.child([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(child.trace_id, tp.trace_id);
        assert_eq!(child.flags, tp.flags);
        assert_eq!(
            child.format(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
    }

    #[test]
    fn properties_are_found_and_replaced_in_place() {
        let mut props: Vec<(ByteString, ByteString)> = vec![
            ("a".into(), "1".into()),
            (TRACEPARENT.into(), "garbage".into()),
            (TRACESTATE.into(), "k=v".into()),
            (TRACEPARENT.into(), EXAMPLE.into()),
        ];
        // The first traceparent is invalid: none is found.
        assert_eq!(find_traceparent(&props), None);
        assert_eq!(find_tracestate(&props), Some("k=v"));
        let tp = TraceParent::parse(EXAMPLE).expect("valid");
        let child = tp.child([9; 8]);
        set_traceparent(&mut props, &child);
        assert_eq!(props.len(), 3);
        assert_eq!(&*props[0].0, "a");
        assert_eq!(&*props[1].0, TRACEPARENT);
        assert_eq!(find_traceparent(&props), Some(child));
        let mut empty = Vec::new();
        set_traceparent(&mut empty, &tp);
        assert_eq!(find_traceparent(&empty), Some(tp));
        let carried = trace_properties(&props);
        assert_eq!(carried.len(), 2);
        assert_eq!(&*carried[0].0, TRACEPARENT);
        assert_eq!(&*carried[1].0, TRACESTATE);
        assert!(trace_properties(&props[..1]).is_empty());
    }
}
