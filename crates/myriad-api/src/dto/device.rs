//! Bodies and query strings of the device routes.

use std::collections::{BTreeMap, BTreeSet};

use myriad_fleet::credentials::Secret;
use myriad_fleet::registry::{DeviceId, DeviceQuery, NewDevice, ValidationError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{non_empty, parse_limit};
use crate::error::ApiError;

/// What creates a device: the registry's fields plus an optional password.
/// Only `id` is required; `enabled` defaults to `true`; unknown fields are
/// rejected.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDevice {
    /// The id, also its MQTT client id and user name: 1 to 128 bytes of
    /// `[A-Za-z0-9_.:-]`.
    pub id: String,
    /// A human-readable name (at most 256 bytes).
    #[serde(default)]
    pub name: String,
    /// Free-form tags.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Groups the device is in (named like ids).
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// Whether the device may log in.
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub enabled: bool,
    /// The MQTT password; stored only as an Argon2id hash.
    #[schema(value_type = Option<String>, format = Password)]
    pub password: Option<Secret>,
}

fn yes() -> bool {
    true
}

impl CreateDevice {
    /// The validated device and the password (non-empty), if any.
    pub fn into_parts(self) -> Result<(NewDevice, Option<Secret>), ApiError> {
        let id = DeviceId::new(self.id.as_str()).map_err(|reason| ValidationError::Id {
            id: self.id.clone(),
            reason,
        })?;
        let new = NewDevice {
            id,
            name: self.name,
            attributes: self.attributes,
            groups: self.groups,
            enabled: self.enabled,
        };
        new.validate()?;
        if let Some(password) = &self.password {
            check_password(password)?;
        }
        Ok((new, self.password))
    }
}

/// A new password: `{"password": ".."}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordBody {
    /// The new MQTT password; stored only as an Argon2id hash.
    #[schema(value_type = String, format = Password)]
    pub password: Secret,
}

/// The answer to `POST /api/v1/devices/{id}/disconnect`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Disconnected {
    /// The device id.
    pub device: String,
    /// Whether an open connection was closed (false: the device was offline).
    pub disconnected: bool,
}

/// Refuses an empty password (an empty one is never what an operator
/// means); the length limit is checked when hashing.
pub(crate) fn check_password(password: &Secret) -> Result<(), ApiError> {
    if password.expose().is_empty() {
        return Err(ApiError::BadRequest("password is empty".into()));
    }
    Ok(())
}

/// The device search. Every given criterion must hold; empty values count
/// as absent.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeviceListParams {
    /// Only ids starting with this.
    pub id_prefix: Option<String>,
    /// Only devices whose name contains this (case-sensitive).
    pub name_contains: Option<String>,
    /// Only devices with this attribute, as `key=value`.
    #[param(example = "site=berlin")]
    pub attribute: Option<String>,
    /// Only devices in this group.
    pub group: Option<String>,
    /// Only enabled (`true`) or disabled (`false`) devices.
    #[param(value_type = Option<bool>)]
    pub enabled: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
}

impl DeviceListParams {
    /// The store query these parameters ask for; 400 if one is invalid.
    pub fn into_query(self) -> Result<DeviceQuery, ApiError> {
        let limit = parse_limit(self.limit.as_deref())?;
        let attribute = match non_empty(self.attribute) {
            None => None,
            Some(pair) => match pair.split_once('=') {
                Some((key, value)) if !key.is_empty() => Some((key.to_string(), value.to_string())),
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "attribute must be key=value, got {pair:?}"
                    )));
                }
            },
        };
        let enabled = match non_empty(self.enabled).as_deref() {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "enabled must be true or false, got {other:?}"
                )));
            }
        };
        let after = match non_empty(self.after) {
            None => None,
            Some(after) => Some(DeviceId::new(after.as_str()).map_err(|reason| {
                ApiError::BadRequest(format!("after: device id {after:?} {reason}"))
            })?),
        };
        Ok(DeviceQuery {
            id_prefix: non_empty(self.id_prefix),
            name_contains: non_empty(self.name_contains),
            attribute,
            group: non_empty(self.group),
            enabled,
            limit,
            after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let params = DeviceListParams {
            id_prefix: Some("".into()),
            attribute: Some("site=a=b".into()),
            enabled: Some("false".into()),
            limit: Some("5".into()),
            after: Some("d-1".into()),
            ..DeviceListParams::default()
        };
        let query = params.into_query().expect("valid");
        assert_eq!(query.id_prefix, None);
        assert_eq!(query.attribute, Some(("site".into(), "a=b".into())));
        assert_eq!(query.enabled, Some(false));
        assert_eq!(query.limit, 5);
        assert_eq!(query.after.as_ref().map(|a| a.as_str()), Some("d-1"));
        for bad in [
            DeviceListParams {
                attribute: Some("site".into()),
                ..DeviceListParams::default()
            },
            DeviceListParams {
                enabled: Some("yes".into()),
                ..DeviceListParams::default()
            },
            DeviceListParams {
                after: Some("a/b".into()),
                ..DeviceListParams::default()
            },
        ] {
            assert!(bad.into_query().is_err());
        }
    }

    #[test]
    fn create_body_validates() {
        let body: CreateDevice =
            serde_json::from_str(r#"{"id":"d1","password":"pw"}"#).expect("parses");
        let (new, password) = body.into_parts().expect("valid");
        assert!(new.enabled);
        assert_eq!(password.map(|p| p.expose().to_string()), Some("pw".into()));
        let body: CreateDevice = serde_json::from_str(r#"{"id":"a b"}"#).expect("parses");
        assert!(matches!(body.into_parts(), Err(ApiError::BadRequest(_))));
        let body: CreateDevice =
            serde_json::from_str(r#"{"id":"d1","password":""}"#).expect("parses");
        assert!(matches!(body.into_parts(), Err(ApiError::BadRequest(_))));
        assert!(serde_json::from_str::<CreateDevice>(r#"{"id":"d1","x":1}"#).is_err());
    }
}

/// The query string of `GET /api/v1/groups`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct GroupListParams {
    /// Most groups in the page (1..=1000, default 100).
    pub limit: Option<String>,
    /// Groups after this one (the previous page's `next`).
    pub after: Option<String>,
}

/// One device group and how many devices are in it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupCount {
    /// The group's name.
    pub group: String,
    /// Devices in the group.
    pub devices: u64,
}

/// One page of device groups, in name order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupPage {
    /// The groups.
    pub items: Vec<GroupCount>,
    /// The cursor for the next page (`after`), absent on the last page.
    pub next: Option<String>,
}
