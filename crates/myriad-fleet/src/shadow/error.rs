//! Why a shadow request is refused, and the `*/rejected` document sent back.

use serde_json::{Map, Value, json};

use super::request::MAX_CLIENT_TOKEN_BYTES;

/// Which half of a shadow document a request or error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    /// `state.desired`: what the application wants the device to be.
    Desired,
    /// `state.reported`: what the device says it is.
    Reported,
}

impl Section {
    /// The JSON key of this section (`"desired"` or `"reported"`).
    pub fn key(self) -> &'static str {
        match self {
            Section::Desired => "desired",
            Section::Reported => "reported",
        }
    }
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// Every reason a shadow request can be refused.
///
/// [`ShadowError::code`] maps each one to the HTTP-like status code that AWS
/// IoT uses in its `*/rejected` messages (400, 409, 413).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShadowError {
    /// The payload is not valid JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The payload is JSON but not an object.
    #[error("the request must be a JSON object")]
    NotAnObject,
    /// An update request has no `state` key.
    #[error("missing required node: state")]
    MissingState,
    /// `state` is present but not an object.
    #[error("state must be an object")]
    StateNotObject,
    /// `state` contains a key other than `desired` and `reported`.
    #[error("state may contain only desired and reported, found {0:?}")]
    UnknownStateKey(String),
    /// `state.desired` or `state.reported` is neither an object nor `null`.
    #[error("state.{0} must be an object or null")]
    SectionNotObject(Section),
    /// `clientToken` is present but not a string.
    #[error("clientToken must be a string")]
    ClientTokenNotString,
    /// `clientToken` is longer than [`MAX_CLIENT_TOKEN_BYTES`].
    #[error("clientToken is {len} bytes, the maximum is {MAX_CLIENT_TOKEN_BYTES}")]
    ClientTokenTooLong {
        /// Length of the token sent, in bytes.
        len: usize,
    },
    /// `version` is present but not a non-negative integer.
    #[error("version must be a non-negative integer")]
    VersionNotInteger,
    /// A section sent nests deeper than
    /// [`ShadowLimits::max_depth`](super::ShadowLimits::max_depth) levels
    /// (objects and arrays each add a level).
    #[error("state.{section} is nested more than {max} levels deep")]
    TooDeep {
        /// The section that is too deep.
        section: Section,
        /// The configured maximum.
        max: usize,
    },
    /// The request payload is larger than
    /// [`ShadowLimits::max_request_bytes`](super::ShadowLimits::max_request_bytes).
    #[error("the request is {size} bytes, the maximum is {max}")]
    RequestTooLarge {
        /// Size of the request, in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A section after the update would be larger than its limit
    /// ([`ShadowLimits::max_desired_bytes`](super::ShadowLimits::max_desired_bytes),
    /// [`ShadowLimits::max_reported_bytes`](super::ShadowLimits::max_reported_bytes)).
    #[error("state.{section} would be {size} bytes after the update, the maximum is {max}")]
    DocumentTooLarge {
        /// The section that would be too large.
        section: Section,
        /// Serialized size of the section after the update, in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The request names a `version` other than the shadow's current one.
    #[error(
        "version conflict: the request expects version {expected}, the shadow is at version {current}"
    )]
    VersionConflict {
        /// The version named in the request.
        expected: u64,
        /// The shadow's current version.
        current: u64,
    },
    /// The shadow's version is `u64::MAX` and cannot be incremented.
    #[error("version conflict: the shadow version can no longer be incremented")]
    VersionExhausted,
}

impl ShadowError {
    /// The HTTP-like status code of this error: 400 (malformed request),
    /// 409 (version conflict) or 413 (too large).
    pub fn code(&self) -> u16 {
        match self {
            ShadowError::VersionConflict { .. } | ShadowError::VersionExhausted => 409,
            ShadowError::RequestTooLarge { .. } | ShadowError::DocumentTooLarge { .. } => 413,
            _ => 400,
        }
    }
}

/// A refused shadow request: the contents of an AWS-style `update/rejected`
/// (or `get/rejected`) message.
///
/// A rejected update leaves the shadow unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shadow request rejected ({code}): {message}")]
pub struct UpdateRejected {
    /// HTTP-like status code: 400, 409 or 413.
    pub code: u16,
    /// Human-readable reason.
    pub message: String,
    /// The request's `clientToken`, when it had a valid one.
    pub client_token: Option<String>,
    /// The structured reason, for callers that want to match on it.
    pub reason: ShadowError,
}

impl UpdateRejected {
    /// Builds the rejection for `reason`, echoing `client_token`.
    pub fn new(reason: ShadowError, client_token: Option<String>) -> Self {
        UpdateRejected {
            code: reason.code(),
            message: reason.to_string(),
            client_token,
            reason,
        }
    }

    /// The `*/rejected` JSON document:
    /// `{"code": 409, "message": "...", "clientToken": "...", "timestamp": now_ms}`
    /// (`clientToken` only when known; `timestamp` in unix milliseconds).
    pub fn to_json(&self, now_ms: u64) -> Value {
        let mut doc = Map::new();
        doc.insert("code".into(), json!(self.code));
        doc.insert("message".into(), json!(self.message));
        if let Some(token) = &self.client_token {
            doc.insert("clientToken".into(), json!(token));
        }
        doc.insert("timestamp".into(), json!(now_ms));
        Value::Object(doc)
    }
}

impl From<ShadowError> for UpdateRejected {
    fn from(reason: ShadowError) -> Self {
        UpdateRejected::new(reason, None)
    }
}
