//! Bodies of the app client routes.

use myriad_fleet::credentials::Secret;
use myriad_fleet::registry::{AppClient, AppId, NewAppClient, ValidationError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::device::check_password;
use crate::error::ApiError;

/// What creates an app client: the registry's fields plus a required
/// password. Unknown fields are rejected.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApp {
    /// The id (same rules and namespace as device ids); the client logs in
    /// to MQTT as `app:{id}`.
    pub id: String,
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
    /// The MQTT password; stored only as an Argon2id hash.
    #[schema(value_type = String, format = Password)]
    pub password: Secret,
}

impl CreateApp {
    /// The validated app client and its password.
    pub fn into_parts(self) -> Result<(NewAppClient, Secret), ApiError> {
        let id = AppId::new(self.id.as_str()).map_err(|reason| ValidationError::Id {
            id: self.id.clone(),
            reason,
        })?;
        let new = NewAppClient {
            id,
            name: self.name,
            publish: self.publish,
            subscribe: self.subscribe,
            admin: self.admin,
        };
        // Validates name and filters (the time does not matter here).
        new.clone().into_app(0)?;
        check_password(&self.password)?;
        Ok((new, self.password))
    }
}

/// Every app client, in id order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AppList {
    /// The app clients.
    #[schema(value_type = Vec<crate::schema::AppClientDoc>)]
    pub items: Vec<AppClient>,
}
