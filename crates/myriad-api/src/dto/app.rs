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

/// A change to an app client: only the fields given change. `publish` and
/// `subscribe`, when given, replace the lists. Unknown fields are
/// rejected.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateApp {
    /// A new name.
    pub name: Option<String>,
    /// New filters of the topics it may publish to.
    pub publish: Option<Vec<String>>,
    /// New filters it may subscribe within.
    pub subscribe: Option<Vec<String>>,
    /// Whether it may publish and subscribe anywhere.
    pub admin: Option<bool>,
    /// A new MQTT password; stored only as an Argon2id hash.
    #[schema(value_type = Option<String>, format = Password)]
    pub password: Option<Secret>,
}

impl UpdateApp {
    /// `app` with the changes applied and validated, and the new password
    /// (checked) if any.
    pub fn apply(self, app: &AppClient) -> Result<(AppClient, Option<Secret>), ApiError> {
        let mut updated = app.clone();
        if let Some(name) = self.name {
            updated.name = name;
        }
        if let Some(publish) = self.publish {
            updated.publish = publish;
        }
        if let Some(subscribe) = self.subscribe {
            updated.subscribe = subscribe;
        }
        if let Some(admin) = self.admin {
            updated.admin = admin;
        }
        updated.validate()?;
        if let Some(password) = &self.password {
            check_password(password)?;
        }
        Ok((updated, self.password))
    }
}

/// Every app client, in id order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AppList {
    /// The app clients.
    #[schema(value_type = Vec<crate::schema::AppClientDoc>)]
    pub items: Vec<AppClient>,
}
