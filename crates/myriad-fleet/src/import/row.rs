//! One row of an import file, whatever its format.

use std::collections::{BTreeMap, BTreeSet};

use super::ImportError;
use crate::credentials::{HashParams, PhcLimits, Secret, check_phc, hash_password};
use crate::registry::{DeviceId, NewDevice};

/// A row as read, before validation, or why it could not be read (with
/// its id if that much was readable).
pub(super) type Parsed = Result<RawRow, (Option<String>, String)>;

/// Where rows come from: CSV records or JSON lines.
pub(super) trait Source {
    /// The next row and its 1-based line number; `None` at the end. `Err`
    /// only for what stops the import (I/O); `imported` goes into that
    /// error.
    fn next_row(&mut self, imported: u64) -> Result<Option<(u64, Parsed)>, ImportError>;
}

/// A row's fields, as read.
#[derive(Debug, Default)]
pub(super) struct RawRow {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) enabled: Option<bool>,
    pub(super) groups: BTreeSet<String>,
    pub(super) attributes: BTreeMap<String, String>,
    pub(super) password: Option<Secret>,
    pub(super) password_hash: Option<String>,
}

impl RawRow {
    /// The device and PHC string the row describes, validated; a plain
    /// password is hashed here (slow).
    pub(super) fn into_new_device(
        self,
        params: &HashParams,
    ) -> Result<(NewDevice, Option<String>), String> {
        let id = DeviceId::new(self.id.as_str()).map_err(|e| format!("id {:?} {e}", self.id))?;
        let new = NewDevice {
            id,
            name: self.name,
            attributes: self.attributes,
            groups: self.groups,
            enabled: self.enabled.unwrap_or(true),
        };
        new.validate().map_err(|e| e.to_string())?;
        let phc = match (self.password, self.password_hash) {
            (Some(_), Some(_)) => {
                return Err("give either password or password_hash, not both".into());
            }
            (None, Some(phc)) => {
                check_phc(&phc, &PhcLimits::default())
                    .map_err(|e| format!("password_hash: {e}"))?;
                Some(phc)
            }
            (Some(password), None) => Some(
                hash_password(password.expose(), params).map_err(|e| format!("password: {e}"))?,
            ),
            (None, None) => None,
        };
        Ok((new, phc))
    }
}
