//! The body of a shadow update made by an operator.

use myriad_fleet::shadow::UpdateRequest;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;

/// An operator's change to a shadow's `desired` section (the device alone
/// reports `reported`). `{"desired": {"led": "on", "old": null},
/// "version": 3, "clientToken": "t1"}`: objects merge, a `null` value
/// deletes its key, `"desired": null` deletes all of `desired`. With
/// `version`, the update applies only at exactly that shadow version (409
/// otherwise).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShadowPatch {
    /// The change to `desired` (required; `null` deletes it all).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>, required = true)]
    pub desired: Option<Value>,
    /// The version the shadow must be at.
    pub version: Option<u64>,
    /// Echoed in the accepted document (at most 64 bytes).
    #[serde(rename = "clientToken")]
    pub client_token: Option<String>,
}

/// Tells a present `null` (`Some(Value::Null)`) from an absent field
/// (`None`, through `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl ShadowPatch {
    /// The shadow update request this asks for; 400 if `desired` is absent
    /// or not an object or `null`, or the token is invalid.
    pub fn into_request(self) -> Result<UpdateRequest, ApiError> {
        let Some(desired) = self.desired else {
            return Err(ApiError::BadRequest(
                "desired is required (an object to merge, or null to delete it all)".into(),
            ));
        };
        let mut state = Map::new();
        state.insert("desired".into(), desired);
        let mut request = Map::new();
        request.insert("state".into(), Value::Object(state));
        if let Some(version) = self.version {
            request.insert("version".into(), version.into());
        }
        if let Some(token) = self.client_token {
            request.insert("clientToken".into(), token.into());
        }
        UpdateRequest::from_value(Value::Object(request))
            .map_err(|rejected| ApiError::BadRequest(rejected.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myriad_fleet::shadow::SectionUpdate;

    fn parse(json: &str) -> Result<UpdateRequest, ApiError> {
        serde_json::from_str::<ShadowPatch>(json)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?
            .into_request()
    }

    #[test]
    fn absent_null_and_object_differ() {
        assert!(parse("{}").is_err());
        let delete = parse(r#"{"desired":null}"#).expect("valid");
        assert_eq!(delete.desired, SectionUpdate::Delete);
        assert!(delete.reported.is_keep());
        let merge = parse(r#"{"desired":{"a":1},"version":4,"clientToken":"t"}"#).expect("ok");
        assert!(matches!(merge.desired, SectionUpdate::Merge(_)));
        assert_eq!(merge.version, Some(4));
        assert_eq!(merge.client_token.as_deref(), Some("t"));
        assert!(parse(r#"{"desired":[1]}"#).is_err());
        assert!(parse(r#"{"desired":{},"reported":{}}"#).is_err());
    }
}
