//! Parsing and validating shadow requests (`update` and `get`).

use serde_json::{Map, Value};

use super::error::{Section, ShadowError, UpdateRejected};

/// Longest accepted `clientToken`, in bytes (as AWS IoT).
pub const MAX_CLIENT_TOKEN_BYTES: usize = 64;

/// Size and shape limits applied to shadow requests and documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowLimits {
    /// Largest serialized `desired` object after an update (metadata not
    /// counted), in bytes. An update that would make it larger is rejected
    /// with code 413. Default 8192. Separate from `reported`, so a device
    /// near its own limit never blocks an operator's desired update.
    pub max_desired_bytes: usize,
    /// Largest serialized `reported` object after an update, in bytes, as
    /// for `max_desired_bytes`. Default 8192.
    pub max_reported_bytes: usize,
    /// Deepest nesting inside `state.desired` / `state.reported` of a
    /// request: a key directly in the section is at level 1, and every object
    /// or array value adds a level. Exceeding it rejects the update with
    /// code 400. Default 6.
    pub max_depth: usize,
    /// Largest request payload, in bytes. Exceeding it rejects the request
    /// with code 413 before it is parsed. Default 16384.
    pub max_request_bytes: usize,
}

impl Default for ShadowLimits {
    fn default() -> Self {
        ShadowLimits {
            max_desired_bytes: 8192,
            max_reported_bytes: 8192,
            max_depth: 6,
            max_request_bytes: 16384,
        }
    }
}

/// What an update request does to one section (`desired` or `reported`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SectionUpdate {
    /// The section is absent from the request: leave it as it is.
    #[default]
    Keep,
    /// The section is `null`: delete all of it.
    Delete,
    /// The section is an object: merge it in (`null` values delete keys).
    Merge(Map<String, Value>),
}

impl SectionUpdate {
    /// Whether the request mentions this section at all.
    pub fn is_keep(&self) -> bool {
        matches!(self, SectionUpdate::Keep)
    }
}

/// A structurally valid update request:
/// `{"state": {"desired": {..}|null, "reported": {..}|null}, "version": N, "clientToken": ".."}`.
///
/// Depth, version and document-size checks happen when the request is
/// applied ([`Shadow::apply_request`](super::Shadow::apply_request)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateRequest {
    /// The change to `desired`.
    pub desired: SectionUpdate,
    /// The change to `reported`.
    pub reported: SectionUpdate,
    /// Optimistic-locking version: when set, the update applies only if the
    /// shadow is at exactly this version (409 otherwise).
    pub version: Option<u64>,
    /// Opaque token echoed in every response to this request.
    pub client_token: Option<String>,
}

impl UpdateRequest {
    /// Parses an update request payload.
    ///
    /// Rejects with 413 a payload larger than `limits.max_request_bytes`, and
    /// with 400 invalid JSON, a missing or non-object `state`, a key in
    /// `state` other than `desired`/`reported`, a section that is neither an
    /// object nor `null`, a non-integer `version`, and a `clientToken` that
    /// is not a string or is longer than [`MAX_CLIENT_TOKEN_BYTES`]. Other
    /// top-level keys are ignored.
    pub fn parse(bytes: &[u8], limits: &ShadowLimits) -> Result<Self, UpdateRejected> {
        check_request_size(bytes.len(), limits)?;
        Self::from_value(parse_json(bytes)?)
    }

    /// Validates an update request that is already a JSON value (no size
    /// check: see [`UpdateRequest::parse`] for the rules).
    pub fn from_value(value: Value) -> Result<Self, UpdateRejected> {
        let Value::Object(mut request) = value else {
            return Err(ShadowError::NotAnObject.into());
        };
        let client_token = take_client_token(&mut request)?;
        let reject = |reason: ShadowError| UpdateRejected::new(reason, client_token.clone());

        let version = match request.remove("version") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| reject(ShadowError::VersionNotInteger))?,
            ),
        };
        let state = match request.remove("state") {
            None => return Err(reject(ShadowError::MissingState)),
            Some(Value::Object(state)) => state,
            Some(_) => return Err(reject(ShadowError::StateNotObject)),
        };
        let mut desired = SectionUpdate::Keep;
        let mut reported = SectionUpdate::Keep;
        for (key, value) in state {
            let section = match key.as_str() {
                "desired" => Section::Desired,
                "reported" => Section::Reported,
                _ => return Err(reject(ShadowError::UnknownStateKey(key))),
            };
            let update = match value {
                Value::Null => SectionUpdate::Delete,
                Value::Object(map) => SectionUpdate::Merge(map),
                _ => return Err(reject(ShadowError::SectionNotObject(section))),
            };
            match section {
                Section::Desired => desired = update,
                Section::Reported => reported = update,
            }
        }
        Ok(UpdateRequest {
            desired,
            reported,
            version,
            client_token,
        })
    }

    /// The update for `section`.
    pub fn section(&self, section: Section) -> &SectionUpdate {
        match section {
            Section::Desired => &self.desired,
            Section::Reported => &self.reported,
        }
    }
}

/// A `get` request: `{"clientToken": ".."}`, or an empty payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetRequest {
    /// Opaque token echoed in the response.
    pub client_token: Option<String>,
}

impl GetRequest {
    /// Parses a get request payload. An empty (or all-whitespace) payload is
    /// a request without a token; otherwise it must be a JSON object whose
    /// optional `clientToken` is a string of at most
    /// [`MAX_CLIENT_TOKEN_BYTES`] bytes (400 otherwise; 413 when larger than
    /// `limits.max_request_bytes`). Other keys are ignored.
    pub fn parse(bytes: &[u8], limits: &ShadowLimits) -> Result<Self, UpdateRejected> {
        check_request_size(bytes.len(), limits)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(GetRequest::default());
        }
        let Value::Object(mut request) = parse_json(bytes)? else {
            return Err(ShadowError::NotAnObject.into());
        };
        Ok(GetRequest {
            client_token: take_client_token(&mut request)?,
        })
    }
}

fn check_request_size(size: usize, limits: &ShadowLimits) -> Result<(), UpdateRejected> {
    if size > limits.max_request_bytes {
        return Err(ShadowError::RequestTooLarge {
            size,
            max: limits.max_request_bytes,
        }
        .into());
    }
    Ok(())
}

fn parse_json(bytes: &[u8]) -> Result<Value, UpdateRejected> {
    serde_json::from_slice(bytes).map_err(|e| ShadowError::InvalidJson(e.to_string()).into())
}

/// Removes and validates `clientToken`; on error the token is not echoed.
fn take_client_token(request: &mut Map<String, Value>) -> Result<Option<String>, UpdateRejected> {
    match request.remove("clientToken") {
        None => Ok(None),
        Some(Value::String(token)) if token.len() > MAX_CLIENT_TOKEN_BYTES => {
            Err(ShadowError::ClientTokenTooLong { len: token.len() }.into())
        }
        Some(Value::String(token)) => Ok(Some(token)),
        Some(_) => Err(ShadowError::ClientTokenNotString.into()),
    }
}

/// Whether `section` nests deeper than `max` levels (see
/// [`ShadowLimits::max_depth`]). Stops descending past `max`, so it is
/// cheap and bounded even on deep values.
pub(crate) fn exceeds_depth(section: &Map<String, Value>, max: usize) -> bool {
    fn container_deeper<'a>(
        mut children: impl Iterator<Item = &'a Value>,
        remaining: usize,
    ) -> bool {
        match remaining.checked_sub(1) {
            None => true,
            Some(rest) => children.any(|child| deeper(child, rest)),
        }
    }
    fn deeper(value: &Value, remaining: usize) -> bool {
        match value {
            Value::Object(map) => container_deeper(map.values(), remaining),
            Value::Array(items) => container_deeper(items.iter(), remaining),
            _ => false,
        }
    }
    // The section object itself is level 1.
    container_deeper(section.values(), max)
}

/// Length of `value` serialized as compact JSON, without building the text.
pub(crate) fn serialized_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        // Cannot happen for JSON values; count it as too large to be safe.
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> ShadowLimits {
        ShadowLimits::default()
    }

    fn parse_err(payload: &[u8]) -> UpdateRejected {
        match UpdateRequest::parse(payload, &limits()) {
            Ok(request) => panic!("expected a rejection, parsed {request:?}"),
            Err(rejected) => rejected,
        }
    }

    #[test]
    fn parses_full_request() {
        let request = UpdateRequest::parse(
            br#"{"state":{"desired":{"a":1},"reported":null},"version":3,"clientToken":"t1"}"#,
            &limits(),
        )
        .expect("valid request");
        assert_eq!(
            request,
            UpdateRequest {
                desired: SectionUpdate::Merge(Map::from_iter([("a".to_owned(), json!(1))])),
                reported: SectionUpdate::Delete,
                version: Some(3),
                client_token: Some("t1".into()),
            }
        );
    }

    #[test]
    fn sections_are_optional() {
        let request = UpdateRequest::parse(br#"{"state":{}}"#, &limits()).expect("valid");
        assert_eq!(request, UpdateRequest::default());
    }

    #[test]
    fn malformed_requests_are_400() {
        let cases: &[(&[u8], &str)] = &[
            (b"{not json", "invalid JSON"),
            (b"", "invalid JSON"),
            (b"[1,2]", "the request must be a JSON object"),
            (br#"{"version":1}"#, "missing required node: state"),
            (br#"{"state":[]}"#, "state must be an object"),
            (br#"{"state":5}"#, "state must be an object"),
            (br#"{"state":null}"#, "state must be an object"),
            (
                br#"{"state":{"desired":5}}"#,
                "state.desired must be an object or null",
            ),
            (
                br#"{"state":{"reported":[1]}}"#,
                "state.reported must be an object or null",
            ),
            (
                br#"{"state":{"delta":{}}}"#,
                "state may contain only desired and reported",
            ),
            (
                br#"{"state":{},"version":-1}"#,
                "version must be a non-negative integer",
            ),
            (
                br#"{"state":{},"version":"1"}"#,
                "version must be a non-negative integer",
            ),
            (
                br#"{"state":{},"version":1.5}"#,
                "version must be a non-negative integer",
            ),
            (
                br#"{"state":{},"clientToken":5}"#,
                "clientToken must be a string",
            ),
        ];
        for (payload, message) in cases {
            let rejected = parse_err(payload);
            assert_eq!(rejected.code, 400, "{}", String::from_utf8_lossy(payload));
            assert!(
                rejected.message.starts_with(message),
                "{}: {:?}",
                String::from_utf8_lossy(payload),
                rejected.message
            );
        }
    }

    #[test]
    fn client_token_longer_than_64_bytes_is_400() {
        let ok = format!(r#"{{"state":{{}},"clientToken":"{}"}}"#, "x".repeat(64));
        assert!(UpdateRequest::parse(ok.as_bytes(), &limits()).is_ok());
        let long = format!(r#"{{"state":{{}},"clientToken":"{}"}}"#, "x".repeat(65));
        let rejected = parse_err(long.as_bytes());
        assert_eq!(rejected.code, 400);
        assert_eq!(
            rejected.message,
            "clientToken is 65 bytes, the maximum is 64"
        );
        assert_eq!(rejected.client_token, None);
    }

    #[test]
    fn valid_client_token_is_echoed_in_parse_rejections() {
        let rejected = parse_err(br#"{"clientToken":"abc","state":{"desired":"x"}}"#);
        assert_eq!(rejected.client_token.as_deref(), Some("abc"));
        assert_eq!(
            rejected.to_json(77),
            json!({
                "code": 400,
                "message": "state.desired must be an object or null",
                "clientToken": "abc",
                "timestamp": 77
            })
        );
    }

    #[test]
    fn oversized_request_is_413_before_parsing() {
        let small = ShadowLimits {
            max_request_bytes: 10,
            ..limits()
        };
        let rejected =
            UpdateRequest::parse(br#"{"state":{"desired":{}}}"#, &small).expect_err("too large");
        assert_eq!(rejected.code, 413);
        assert_eq!(
            rejected.message,
            "the request is 24 bytes, the maximum is 10"
        );
        assert_eq!(
            rejected.reason,
            ShadowError::RequestTooLarge { size: 24, max: 10 }
        );
    }

    #[test]
    fn get_request_parsing() {
        assert_eq!(GetRequest::parse(b"", &limits()), Ok(GetRequest::default()));
        assert_eq!(
            GetRequest::parse(b" \n", &limits()),
            Ok(GetRequest::default())
        );
        assert_eq!(
            GetRequest::parse(b"{}", &limits()),
            Ok(GetRequest::default())
        );
        assert_eq!(
            GetRequest::parse(br#"{"clientToken":"g1"}"#, &limits()),
            Ok(GetRequest {
                client_token: Some("g1".into())
            })
        );
        for bad in [&b"nope"[..], b"[]", br#"{"clientToken":1}"#] {
            let rejected = GetRequest::parse(bad, &limits()).expect_err("invalid");
            assert_eq!(rejected.code, 400);
        }
    }

    #[test]
    fn depth_counts_objects_and_arrays() {
        let section = |v: Value| match v {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        };
        assert!(exceeds_depth(&section(json!({"a": 1})), 0));
        assert!(!exceeds_depth(&section(json!({"a": 1})), 1));
        assert!(exceeds_depth(&section(json!({"a": {"b": 1}})), 1));
        assert!(!exceeds_depth(&section(json!({"a": {"b": 1}})), 2));
        assert!(exceeds_depth(&section(json!({"a": [1]})), 1));
        assert!(!exceeds_depth(&section(json!({"a": [1]})), 2));
        assert!(exceeds_depth(&section(json!({"a": [[1]]})), 2));
        // Empty containers still count as a level.
        assert!(exceeds_depth(&section(json!({"a": {}})), 1));
    }

    #[test]
    fn serialized_len_matches_to_vec() {
        let value = json!({"a": [1, "two", {"three": null}], "b": 2.5});
        let expected = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(0);
        assert_eq!(serialized_len(&value), expected);
    }
}
