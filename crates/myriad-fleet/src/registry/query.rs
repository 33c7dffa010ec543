//! Device searches and cursor paging.

use serde::{Deserialize, Serialize};

use super::device::Device;
use super::error::ValidationError;
use super::id::DeviceId;

/// Page size when none is given.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// Largest page size.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// A device search. Every given criterion must hold; results come in id
/// order, starting after the cursor `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQuery {
    /// Only ids starting with this (an index range scan, not a filter).
    pub id_prefix: Option<String>,
    /// Only devices whose name contains this (case-sensitive).
    pub name_contains: Option<String>,
    /// Only devices with this attribute set to this value.
    pub attribute: Option<(String, String)>,
    /// Only devices in this group.
    pub group: Option<String>,
    /// Only enabled (`Some(true)`) or disabled (`Some(false)`) devices.
    pub enabled: Option<bool>,
    /// Page size, 1..=[`MAX_PAGE_LIMIT`].
    pub limit: u32,
    /// Cursor: start after this id (the `next` of the previous page).
    pub after: Option<DeviceId>,
}

impl Default for DeviceQuery {
    /// Everything, first page of [`DEFAULT_PAGE_LIMIT`].
    fn default() -> Self {
        DeviceQuery {
            id_prefix: None,
            name_contains: None,
            attribute: None,
            group: None,
            enabled: None,
            limit: DEFAULT_PAGE_LIMIT,
            after: None,
        }
    }
}

impl DeviceQuery {
    /// Checks the page size.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.limit == 0 || self.limit > MAX_PAGE_LIMIT {
            return Err(ValidationError::Limit {
                limit: self.limit,
                max: MAX_PAGE_LIMIT,
            });
        }
        Ok(())
    }

    /// Whether `device` meets every criterion (the cursor aside).
    pub fn matches(&self, device: &Device) -> bool {
        if let Some(prefix) = &self.id_prefix
            && !device.id.as_str().starts_with(prefix.as_str())
        {
            return false;
        }
        if let Some(part) = &self.name_contains
            && !device.name.contains(part.as_str())
        {
            return false;
        }
        if let Some((key, value)) = &self.attribute
            && device.attributes.get(key) != Some(value)
        {
            return false;
        }
        if let Some(group) = &self.group
            && !device.groups.contains(group)
        {
            return false;
        }
        if let Some(enabled) = self.enabled
            && device.enabled != enabled
        {
            return false;
        }
        true
    }
}

/// One page of results. When `next` is `Some`, there may be more: ask again
/// with `after = next`. A page can hold fewer than `limit` items (even none)
/// while `next` is `Some`, when the search stopped to bound its work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The results, in id order.
    pub items: Vec<T>,
    /// The cursor for the next page, `None` on the last page.
    pub next: Option<DeviceId>,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page {
            items: Vec::new(),
            next: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NewDevice;

    #[test]
    fn limit_range() {
        let mut q = DeviceQuery::default();
        assert_eq!(q.limit, 100);
        assert!(q.validate().is_ok());
        q.limit = 0;
        assert!(q.validate().is_err());
        q.limit = 1001;
        assert!(q.validate().is_err());
        q.limit = 1000;
        assert!(q.validate().is_ok());
    }

    #[test]
    fn every_criterion_must_hold() {
        let mut new = NewDevice::new(DeviceId::new("sensor-7").unwrap());
        new.name = "Boiler room".into();
        new.attributes.insert("site".into(), "ber".into());
        new.groups.insert("heating".into());
        let d = new.into_device(0).unwrap();
        let all = DeviceQuery {
            id_prefix: Some("sensor-".into()),
            name_contains: Some("Boiler".into()),
            attribute: Some(("site".into(), "ber".into())),
            group: Some("heating".into()),
            enabled: Some(true),
            ..DeviceQuery::default()
        };
        assert!(all.matches(&d));
        for q in [
            DeviceQuery {
                id_prefix: Some("sensor-8".into()),
                ..all.clone()
            },
            DeviceQuery {
                name_contains: Some("boiler".into()),
                ..all.clone()
            },
            DeviceQuery {
                attribute: Some(("site".into(), "muc".into())),
                ..all.clone()
            },
            DeviceQuery {
                group: Some("cooling".into()),
                ..all.clone()
            },
            DeviceQuery {
                enabled: Some(false),
                ..all.clone()
            },
        ] {
            assert!(!q.matches(&d), "{q:?}");
        }
    }
}
