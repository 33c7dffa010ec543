//! A device, what creates one, and a partial update.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::error::ValidationError;
use super::id::{DeviceId, validate_name};
use super::{
    MAX_ATTRIBUTE_KEY_LEN, MAX_ATTRIBUTE_VALUE_LEN, MAX_ATTRIBUTES, MAX_GROUPS, MAX_ID_LEN,
    MAX_NAME_LEN,
};

/// A registered device, as the API shows it.
///
/// JSON: `{"id":"..","name":"..","attributes":{"k":"v"},"groups":["g"],
/// "enabled":true,"created_at":ms,"updated_at":ms}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The id, also the MQTT client id and username.
    pub id: DeviceId,
    /// A human-readable name; may be empty.
    pub name: String,
    /// Free-form tags (`"site": "berlin"`).
    pub attributes: BTreeMap<String, String>,
    /// Groups the device is in (named like ids).
    pub groups: BTreeSet<String>,
    /// A disabled device may not log in.
    pub enabled: bool,
    /// When it was created (unix ms).
    pub created_at: u64,
    /// When it was last changed (unix ms).
    pub updated_at: u64,
}

impl Device {
    /// Checks every field against the registry's
    /// [limits](super#limits) (the id is valid by construction).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_fields(&self.name, &self.attributes, &self.groups)
    }
}

/// What creates a device. JSON: only `id` is required; `enabled` defaults
/// to `true`; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// The id.
    pub id: DeviceId,
    /// A human-readable name.
    #[serde(default)]
    pub name: String,
    /// Tags.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Groups.
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// Whether the device may log in.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl NewDevice {
    /// An enabled device with no name, tags or groups.
    pub fn new(id: DeviceId) -> Self {
        NewDevice {
            id,
            name: String::new(),
            attributes: BTreeMap::new(),
            groups: BTreeSet::new(),
            enabled: true,
        }
    }

    /// Checks every field against the registry's [limits](super#limits),
    /// and that the id does not start with `app:` (the prefix of
    /// application clients' user names: such a device could never log in).
    pub fn validate(&self) -> Result<(), ValidationError> {
        // The same prefix as `service::auth::APP_USERNAME_PREFIX`.
        if self.id.as_str().starts_with("app:") {
            return Err(ValidationError::Id {
                id: self.id.as_str().to_string(),
                reason: super::IdError::ReservedPrefix,
            });
        }
        validate_fields(&self.name, &self.attributes, &self.groups)
    }

    /// The device this creates at `now` (unix ms), after validation.
    pub fn into_device(self, now: u64) -> Result<Device, ValidationError> {
        self.validate()?;
        Ok(Device {
            id: self.id,
            name: self.name,
            attributes: self.attributes,
            groups: self.groups,
            enabled: self.enabled,
            created_at: now,
            updated_at: now,
        })
    }
}

/// A partial update: absent fields stay as they are.
///
/// `attributes` merges like JSON Merge Patch: `{"site":"x"}` sets `site`,
/// `{"site":null}` removes it, other attributes stay. `groups`, when
/// present, replaces the whole set. Unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicePatch {
    /// A new name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Attributes to set (`Some`) or remove (`None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, Option<String>>>,
    /// The new set of groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<BTreeSet<String>>,
    /// Enable or disable the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl DevicePatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.attributes.is_none()
            && self.groups.is_none()
            && self.enabled.is_none()
    }

    /// `device` with the patch applied and `updated_at = now`, validated as
    /// a whole (so a merge that ends with too many attributes fails).
    pub fn apply(&self, device: &Device, now: u64) -> Result<Device, ValidationError> {
        let mut out = device.clone();
        if let Some(name) = &self.name {
            out.name.clone_from(name);
        }
        if let Some(changes) = &self.attributes {
            for (key, value) in changes {
                match value {
                    Some(value) => {
                        out.attributes.insert(key.clone(), value.clone());
                    }
                    None => {
                        out.attributes.remove(key);
                    }
                }
            }
        }
        if let Some(groups) = &self.groups {
            out.groups.clone_from(groups);
        }
        if let Some(enabled) = self.enabled {
            out.enabled = enabled;
        }
        out.validate()?;
        out.updated_at = now;
        Ok(out)
    }
}

/// The checks shared by [`Device`], [`NewDevice`] and [`DevicePatch`].
fn validate_fields(
    name: &str,
    attributes: &BTreeMap<String, String>,
    groups: &BTreeSet<String>,
) -> Result<(), ValidationError> {
    if name.len() > MAX_NAME_LEN {
        return Err(ValidationError::NameTooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(ValidationError::TooManyAttributes {
            count: attributes.len(),
            max: MAX_ATTRIBUTES,
        });
    }
    for (key, value) in attributes {
        validate_name(key, MAX_ATTRIBUTE_KEY_LEN).map_err(|reason| {
            ValidationError::AttributeKey {
                key: key.clone(),
                reason,
            }
        })?;
        let bad_value = |reason: String| ValidationError::AttributeValue {
            key: key.clone(),
            reason,
        };
        if value.len() > MAX_ATTRIBUTE_VALUE_LEN {
            return Err(bad_value(format!(
                "is {} bytes long, at most {MAX_ATTRIBUTE_VALUE_LEN} allowed",
                value.len()
            )));
        }
        if let Some(ch) = value.chars().find(|c| c.is_control()) {
            return Err(bad_value(format!("holds control character {ch:?}")));
        }
    }
    if groups.len() > MAX_GROUPS {
        return Err(ValidationError::TooManyGroups {
            count: groups.len(),
            max: MAX_GROUPS,
        });
    }
    for group in groups {
        validate_name(group, MAX_ID_LEN).map_err(|reason| ValidationError::Group {
            group: group.clone(),
            reason,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::IdError;

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn new_device_json_defaults_and_rejects_unknown_fields() {
        let new: NewDevice = serde_json::from_str(r#"{"id":"d1"}"#).unwrap();
        assert_eq!(new, NewDevice::new(id("d1")));
        let err = serde_json::from_str::<NewDevice>(r#"{"id":"d1","nmae":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
    }

    #[test]
    fn device_json_field_names() {
        let mut new = NewDevice::new(id("d1"));
        new.attributes.insert("site".into(), "berlin".into());
        new.groups.insert("g1".into());
        let device = new.into_device(5).unwrap();
        let json = serde_json::to_value(&device).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"d1","name":"","attributes":{"site":"berlin"},
                "groups":["g1"],"enabled":true,"created_at":5,"updated_at":5})
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut new = NewDevice::new(id("d1"));
        new.name = "n".repeat(257);
        assert!(matches!(
            new.validate(),
            Err(ValidationError::NameTooLong { len: 257, .. })
        ));
        let mut new = NewDevice::new(id("d1"));
        for i in 0..65 {
            new.attributes.insert(format!("k{i}"), String::new());
        }
        assert!(matches!(
            new.validate(),
            Err(ValidationError::TooManyAttributes { count: 65, .. })
        ));
        let mut new = NewDevice::new(id("d1"));
        new.attributes.insert("bad key".into(), "v".into());
        assert_eq!(
            new.validate(),
            Err(ValidationError::AttributeKey {
                key: "bad key".into(),
                reason: IdError::BadChar { ch: ' ', at: 3 }
            })
        );
        let mut new = NewDevice::new(id("d1"));
        new.attributes.insert("k".into(), "v".repeat(257));
        assert!(matches!(
            new.validate(),
            Err(ValidationError::AttributeValue { .. })
        ));
        let mut new = NewDevice::new(id("d1"));
        new.attributes.insert("k".into(), "a\nb".into());
        assert!(new.validate().is_err());
        let mut new = NewDevice::new(id("d1"));
        new.groups.insert("a/b".into());
        let err = new.validate().unwrap_err();
        assert!(err.to_string().starts_with("group \"a/b\""), "{err}");
    }

    #[test]
    fn patch_merges_attributes_and_replaces_groups() {
        let mut new = NewDevice::new(id("d1"));
        new.attributes.insert("a".into(), "1".into());
        new.attributes.insert("b".into(), "2".into());
        new.groups.insert("old".into());
        let device = new.into_device(1).unwrap();
        let patch: DevicePatch = serde_json::from_str(
            r#"{"name":"N","attributes":{"a":null,"c":"3"},"groups":["new"],"enabled":false}"#,
        )
        .unwrap();
        let out = patch.apply(&device, 9).unwrap();
        assert_eq!(out.name, "N");
        assert_eq!(
            out.attributes.into_iter().collect::<Vec<_>>(),
            vec![("b".into(), "2".into()), ("c".into(), "3".into())]
        );
        assert_eq!(out.groups, BTreeSet::from(["new".to_string()]));
        assert!(!out.enabled);
        assert_eq!((out.created_at, out.updated_at), (1, 9));
        assert!(DevicePatch::default().is_empty());
    }

    #[test]
    fn patch_result_is_validated() {
        let device = NewDevice::new(id("d1")).into_device(1).unwrap();
        let patch = DevicePatch {
            groups: Some(BTreeSet::from(["#".to_string()])),
            ..DevicePatch::default()
        };
        assert!(matches!(
            patch.apply(&device, 2),
            Err(ValidationError::Group { .. })
        ));
    }
}
