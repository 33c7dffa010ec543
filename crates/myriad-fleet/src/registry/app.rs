//! Application and admin clients: back-end services that connect over MQTT
//! with their own credentials and get wider ACLs than devices (see
//! [`crate::acl`]).

use serde::{Deserialize, Serialize};

use myriad_mqtt::topic::valid_topic_filter;

use super::error::ValidationError;
use super::id::AppId;
use super::{MAX_APP_FILTERS, MAX_FILTER_LEN, MAX_NAME_LEN};

/// A registered application client.
///
/// JSON: `{"id":"..","name":"..","publish":["f"],"subscribe":["f"],
/// "admin":false,"created_at":ms}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppClient {
    /// The id, also its MQTT username (shares the namespace of device ids).
    pub id: AppId,
    /// A human-readable name.
    pub name: String,
    /// Filters of the topics it may publish to.
    pub publish: Vec<String>,
    /// Filters it may subscribe within.
    pub subscribe: Vec<String>,
    /// An admin client may publish and subscribe anywhere; its lists are
    /// ignored.
    pub admin: bool,
    /// When it was created (unix ms).
    pub created_at: u64,
}

impl AppClient {
    /// Checks the name and the filters.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_app(&self.name, &self.publish, &self.subscribe)
    }
}

/// What creates an application client. JSON: only `id` is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAppClient {
    /// The id.
    pub id: AppId,
    /// A human-readable name.
    #[serde(default)]
    pub name: String,
    /// Filters of the topics it may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Filters it may subscribe within.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Whether it may publish and subscribe anywhere.
    #[serde(default)]
    pub admin: bool,
}

impl NewAppClient {
    /// The client this creates at `now` (unix ms), after validation.
    pub fn into_app(self, now: u64) -> Result<AppClient, ValidationError> {
        validate_app(&self.name, &self.publish, &self.subscribe)?;
        Ok(AppClient {
            id: self.id,
            name: self.name,
            publish: self.publish,
            subscribe: self.subscribe,
            admin: self.admin,
            created_at: now,
        })
    }
}

fn validate_app(
    name: &str,
    publish: &[String],
    subscribe: &[String],
) -> Result<(), ValidationError> {
    if name.len() > MAX_NAME_LEN {
        return Err(ValidationError::NameTooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    validate_filters("publish", publish)?;
    validate_filters("subscribe", subscribe)
}

fn validate_filters(list: &'static str, filters: &[String]) -> Result<(), ValidationError> {
    if filters.len() > MAX_APP_FILTERS {
        return Err(ValidationError::TooManyFilters {
            list,
            count: filters.len(),
            max: MAX_APP_FILTERS,
        });
    }
    for filter in filters {
        let bad = |reason| ValidationError::Filter {
            list,
            filter: filter.clone(),
            reason,
        };
        if filter.len() > MAX_FILTER_LEN {
            return Err(bad("is too long"));
        }
        if !valid_topic_filter(filter) {
            return Err(bad("is not a valid MQTT topic filter"));
        }
        if filter == "$share" || filter.starts_with("$share/") {
            return Err(bad(
                "is a shared subscription; grant the inner filter instead",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(publish: &[&str], subscribe: &[&str]) -> NewAppClient {
        NewAppClient {
            id: AppId::new("dashboard").unwrap(),
            name: "Dashboard".into(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            admin: false,
        }
    }

    #[test]
    fn filters_are_validated() {
        assert!(
            app(
                &["$commands/+/reboot"],
                &["devices/+/telemetry", "$events/#"]
            )
            .into_app(1)
            .is_ok()
        );
        let err = app(&["a/#/b"], &[]).into_app(1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "publish: filter \"a/#/b\" is not a valid MQTT topic filter"
        );
        assert!(app(&[], &["$share/g/a"]).into_app(1).is_err());
        assert!(app(&[], &[""]).into_app(1).is_err());
        let many: Vec<String> = (0..65).map(|i| format!("t/{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            app(&refs, &[]).into_app(1),
            Err(ValidationError::TooManyFilters { count: 65, .. })
        ));
    }

    #[test]
    fn json_shape() {
        let new: NewAppClient = serde_json::from_str(r#"{"id":"ops","admin":true}"#).unwrap();
        let client = new.into_app(7).unwrap();
        assert_eq!(
            serde_json::to_value(&client).unwrap(),
            serde_json::json!({"id":"ops","name":"","publish":[],"subscribe":[],
                "admin":true,"created_at":7})
        );
    }
}
