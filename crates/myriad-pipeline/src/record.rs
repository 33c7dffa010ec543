//! The record that flows through a pipeline.
//!
//! A [`Record`] carries what a source read (for MQTT: the topic, the payload, the publisher's
//! client id, its QoS, its MQTT 5 user properties and the time the broker received it) and an
//! opaque acknowledgement token `A`: the source's handle for "this record is done" (a packet id
//! and session for MQTT, an offset for a file, a key for PostgreSQL). Stages never look inside
//! it; a sink hands it back to the source once its commit is durable, which is what makes
//! delivery at-least-once.
//!
//! The payload is kept as received ([`Bytes`], shared, never copied) and parsed as JSON at most
//! once, on first use ([`Record::json`]). Before parsing, an iterative scan bounds its nesting to
//! [`MAX_JSON_DEPTH`], so neither the parser nor anything walking the parsed value recurses
//! deeper than that.
//!
//! | bound | value | past it |
//! |---|---|---|
//! | JSON nesting (arrays + objects) | [`MAX_JSON_DEPTH`] = 64 | [`Record::json`] returns [`PayloadError::TooDeep`] |
//! | user properties per record | [`MAX_USER_PROPERTIES`] = 32 | [`UserProperties::push`] returns [`RecordError::TooManyUserProperties`] |
//! | user property bytes (names + values) | [`MAX_USER_PROPERTY_BYTES`] = 8 KiB | [`RecordError::UserPropertiesTooLarge`] |

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;
use thiserror::Error;

/// The deepest nesting of arrays and objects a payload may have to be read as JSON.
pub const MAX_JSON_DEPTH: usize = 64;
/// The most MQTT 5 user properties a record carries.
pub const MAX_USER_PROPERTIES: usize = 32;
/// The most bytes of user property names and values (together) a record carries.
pub const MAX_USER_PROPERTY_BYTES: usize = 8 * 1024;

/// A record could not be built as asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// More than [`MAX_USER_PROPERTIES`] user properties.
    #[error("more than {limit} user properties")]
    TooManyUserProperties {
        /// [`MAX_USER_PROPERTIES`].
        limit: usize,
    },
    /// The user properties' names and values exceed [`MAX_USER_PROPERTY_BYTES`].
    #[error("user properties exceed {limit} bytes")]
    UserPropertiesTooLarge {
        /// [`MAX_USER_PROPERTY_BYTES`].
        limit: usize,
    },
}

/// A payload could not be read as JSON for a reason the record must not be processed past
/// (a payload that is simply not JSON is not an error: [`Record::json`] returns `Ok(None)`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// The payload nests arrays and objects deeper than [`MAX_JSON_DEPTH`].
    #[error("payload JSON nests deeper than {limit} levels")]
    TooDeep {
        /// [`MAX_JSON_DEPTH`].
        limit: usize,
    },
}

/// The MQTT quality of service a record was published with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// QoS 0.
    #[default]
    AtMostOnce,
    /// QoS 1.
    AtLeastOnce,
    /// QoS 2.
    ExactlyOnce,
}

impl QoS {
    /// The QoS as its number (0, 1, 2).
    pub fn as_u8(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
        }
    }
}

/// MQTT 5 user properties (name, value pairs, in order, names may repeat), bounded by
/// [`MAX_USER_PROPERTIES`] and [`MAX_USER_PROPERTY_BYTES`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserProperties {
    pairs: Vec<(String, String)>,
    bytes: usize,
}

impl UserProperties {
    /// No properties.
    pub fn new() -> UserProperties {
        UserProperties::default()
    }

    /// Appends a pair, refusing one that would cross a bound (the set is then unchanged).
    pub fn push(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), RecordError> {
        let (name, value) = (name.into(), value.into());
        if self.pairs.len() >= MAX_USER_PROPERTIES {
            return Err(RecordError::TooManyUserProperties {
                limit: MAX_USER_PROPERTIES,
            });
        }
        let bytes = self.bytes + name.len() + value.len();
        if bytes > MAX_USER_PROPERTY_BYTES {
            return Err(RecordError::UserPropertiesTooLarge {
                limit: MAX_USER_PROPERTY_BYTES,
            });
        }
        self.bytes = bytes;
        self.pairs.push((name, value));
        Ok(())
    }

    /// The first value of the property `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Names and values together, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[derive(Debug)]
enum Parsed {
    NotJson,
    TooDeep,
    Json(Value),
}

/// One record in a pipeline; `A` is the source's opaque acknowledgement token.
#[derive(Debug)]
pub struct Record<A = ()> {
    topic: String,
    payload: Bytes,
    json: OnceLock<Parsed>,
    client_id: String,
    qos: QoS,
    user_properties: UserProperties,
    publish_time_ms: i64,
    ack: A,
}

impl<A: Clone> Clone for Record<A> {
    fn clone(&self) -> Self {
        Record {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            // Parsed again on demand: cloning a parsed value could cost more than parsing.
            json: OnceLock::new(),
            client_id: self.client_id.clone(),
            qos: self.qos,
            user_properties: self.user_properties.clone(),
            publish_time_ms: self.publish_time_ms,
            ack: self.ack.clone(),
        }
    }
}

impl<A> Record<A> {
    /// A record on `topic` with `payload` and the acknowledgement token `ack`; empty client id,
    /// QoS 0, no user properties, publish time 0 until set.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, ack: A) -> Record<A> {
        Record {
            topic: topic.into(),
            payload: payload.into(),
            json: OnceLock::new(),
            client_id: String::new(),
            qos: QoS::AtMostOnce,
            user_properties: UserProperties::new(),
            publish_time_ms: 0,
            ack,
        }
    }

    /// Sets the publisher's client id.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Record<A> {
        self.client_id = client_id.into();
        self
    }

    /// Sets the QoS.
    pub fn with_qos(mut self, qos: QoS) -> Record<A> {
        self.qos = qos;
        self
    }

    /// Sets the publish time (unix milliseconds).
    pub fn with_publish_time_ms(mut self, ms: i64) -> Record<A> {
        self.publish_time_ms = ms;
        self
    }

    /// Sets the user properties.
    pub fn with_user_properties(mut self, properties: UserProperties) -> Record<A> {
        self.user_properties = properties;
        self
    }

    /// The topic the record was published on.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The payload as received.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The publisher's client id (empty when the source has none).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The QoS it was published with.
    pub fn qos(&self) -> QoS {
        self.qos
    }

    /// Its MQTT 5 user properties.
    pub fn user_properties(&self) -> &UserProperties {
        &self.user_properties
    }

    /// When the broker received it (unix milliseconds).
    pub fn publish_time_ms(&self) -> i64 {
        self.publish_time_ms
    }

    /// The acknowledgement token.
    pub fn ack(&self) -> &A {
        &self.ack
    }

    /// Gives up the record for its acknowledgement token (a sink that committed it).
    pub fn into_ack(self) -> A {
        self.ack
    }

    /// The same record with its token mapped (a stage that wraps the source's token).
    pub fn map_ack<B>(self, f: impl FnOnce(A) -> B) -> Record<B> {
        Record {
            topic: self.topic,
            payload: self.payload,
            json: self.json,
            client_id: self.client_id,
            qos: self.qos,
            user_properties: self.user_properties,
            publish_time_ms: self.publish_time_ms,
            ack: f(self.ack),
        }
    }

    /// The payload parsed as JSON, parsed on the first call and kept: `Ok(None)` when it is not
    /// JSON, [`PayloadError::TooDeep`] when it nests deeper than [`MAX_JSON_DEPTH`].
    pub fn json(&self) -> Result<Option<&Value>, PayloadError> {
        match self.json.get_or_init(|| parse(&self.payload)) {
            Parsed::NotJson => Ok(None),
            Parsed::TooDeep => Err(PayloadError::TooDeep {
                limit: MAX_JSON_DEPTH,
            }),
            Parsed::Json(v) => Ok(Some(v)),
        }
    }
}

fn parse(payload: &[u8]) -> Parsed {
    if json_depth_exceeds(payload, MAX_JSON_DEPTH) {
        return Parsed::TooDeep;
    }
    match serde_json::from_slice(payload) {
        Ok(v) => Parsed::Json(v),
        Err(_) => Parsed::NotJson,
    }
}

/// Whether `bytes`, read as JSON text, opens more than `limit` arrays/objects at once (an
/// iterative scan that skips strings; it does not validate the JSON).
pub fn json_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazily_parsed_json() {
        let r = Record::new("a/b", &b"{\"t\": 1}"[..], 7u32)
            .with_client_id("dev")
            .with_qos(QoS::AtLeastOnce)
            .with_publish_time_ms(5);
        assert_eq!(r.json().unwrap().unwrap()["t"], 1);
        assert_eq!(r.client_id(), "dev");
        assert_eq!(r.qos().as_u8(), 1);
        assert_eq!(r.publish_time_ms(), 5);
        let r2 = r.clone().map_ack(|a| a + 1);
        assert_eq!(*r2.ack(), 8);
        assert_eq!(r.into_ack(), 7);
        let r = Record::new("a", &b"not json"[..], ());
        assert_eq!(r.json(), Ok(None));
    }

    #[test]
    fn json_depth_at_the_limit_and_one_past() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let r = Record::new("a", nested(MAX_JSON_DEPTH), ());
        assert!(r.json().unwrap().is_some());
        let r = Record::new("a", nested(MAX_JSON_DEPTH + 1), ());
        assert_eq!(
            r.json(),
            Err(PayloadError::TooDeep {
                limit: MAX_JSON_DEPTH
            })
        );
        // Brackets inside strings do not count.
        let s = format!("{{\"k\": \"{}\"}}", "[{".repeat(500));
        assert!(Record::new("a", s, ()).json().unwrap().is_some());
        let s = r#"{"k": "\"[[[["}"#;
        assert!(!json_depth_exceeds(s.as_bytes(), 1));
    }

    #[test]
    fn user_properties_bounds_and_one_past() {
        let mut p = UserProperties::new();
        for i in 0..MAX_USER_PROPERTIES {
            p.push(format!("k{i}"), "v").unwrap();
        }
        assert_eq!(
            p.push("x", "y"),
            Err(RecordError::TooManyUserProperties {
                limit: MAX_USER_PROPERTIES
            })
        );
        assert_eq!(p.len(), MAX_USER_PROPERTIES);
        assert_eq!(p.get("k3"), Some("v"));

        let mut p = UserProperties::new();
        p.push("k", "v".repeat(MAX_USER_PROPERTY_BYTES - 1))
            .unwrap();
        assert_eq!(p.bytes(), MAX_USER_PROPERTY_BYTES);
        assert_eq!(
            p.push("", "v"),
            Err(RecordError::UserPropertiesTooLarge {
                limit: MAX_USER_PROPERTY_BYTES
            })
        );
        assert_eq!(p.iter().count(), 1);
        assert!(!p.is_empty());
    }
}
