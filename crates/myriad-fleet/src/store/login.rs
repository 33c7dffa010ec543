//! What the broker's authenticate hook needs, in one read.

use std::fmt;

use super::FleetStore;
use super::apps::get_app_in;
use super::devices_get;
use super::error::FleetStoreError;
use super::records::get_credential_in;
use super::tables::{APPS, CREDENTIALS, DEVICES, read_table};
use crate::acl::Principal;
use crate::registry::{DeviceId, MAX_ID_LEN, validate_name};

/// Who a login name is, whether it may log in, and its password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginRecord {
    /// The device or app client, with its ACL.
    pub principal: Principal,
    /// `false` for a disabled device (app clients are always enabled).
    pub enabled: bool,
    /// The PHC string, `None` if no password is set (password logins fail).
    pub password_hash: Option<String>,
}

impl fmt::Debug for LoginRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRecord")
            .field("principal", &self.principal)
            .field("enabled", &self.enabled)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl FleetStore {
    /// Looks up a login name (MQTT username) among devices, then app
    /// clients, with its credential, in one consistent read. `None` if no
    /// principal has that name (including names that are not valid ids).
    pub fn login_record(&self, username: &str) -> Result<Option<LoginRecord>, FleetStoreError> {
        if validate_name(username, MAX_ID_LEN).is_err() {
            return Ok(None);
        }
        let file = &self.file;
        self.read(|txn| {
            let devices = read_table(txn, DEVICES, file)?;
            let found = match DeviceId::new(username) {
                Ok(id) => {
                    devices_get(&devices, file, &id)?.map(|d| (Principal::Device(d.id), d.enabled))
                }
                Err(_) => None,
            };
            let found = match found {
                Some(found) => Some(found),
                None => {
                    let apps = read_table(txn, APPS, file)?;
                    get_app_in(&apps, file, username)?.map(|app| (Principal::from_app(&app), true))
                }
            };
            let Some((principal, enabled)) = found else {
                return Ok(None);
            };
            let credentials = read_table(txn, CREDENTIALS, file)?;
            let password_hash = get_credential_in(&credentials, file, username)?;
            Ok(Some(LoginRecord {
                principal,
                enabled,
                password_hash,
            }))
        })
    }
}
