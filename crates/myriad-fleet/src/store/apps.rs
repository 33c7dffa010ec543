//! Application clients.

use redb::ReadableTable;

use super::error::{FileName, FleetStoreError};
use super::tables::{APPS, APPS_NAME, Tables, read_table};
use super::{FleetStore, codec, has_key};
use crate::registry::{AppClient, AppId, NewAppClient};

/// Reads and decodes one app client from any table handle.
pub(super) fn get_app_in(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    file: &FileName,
    id: &str,
) -> Result<Option<AppClient>, FleetStoreError> {
    let key = id.as_bytes();
    let Some(guard) = table.get(key).map_err(|e| file.engine(e))? else {
        return Ok(None);
    };
    codec::decode_app(key, guard.value())
        .map(Some)
        .map_err(|why| file.corrupt(APPS_NAME, key, why))
}

/// Writes `app`, refusing an id that a device uses.
fn put_in(
    tables: &mut Tables<'_>,
    file: &FileName,
    app: &AppClient,
) -> Result<(), FleetStoreError> {
    app.validate()?;
    let key = app.id.as_str().as_bytes();
    if has_key(&tables.devices, key, file)? {
        return Err(FleetStoreError::IdTaken {
            id: app.id.to_string(),
            by: "a device",
        });
    }
    let value = codec::encode_app(app).map_err(FleetStoreError::Encode)?;
    tables
        .apps
        .insert(key, value.as_slice())
        .map_err(|e| file.engine(e))?;
    Ok(())
}

impl FleetStore {
    /// Creates an app client at `now`. Fails with
    /// [`FleetStoreError::AppExists`] or [`FleetStoreError::IdTaken`] (a
    /// device has the id).
    pub fn create_app(&self, new: &NewAppClient, now: u64) -> Result<AppClient, FleetStoreError> {
        let app = new.clone().into_app(now)?;
        let file = &self.file;
        self.write(|tables| {
            if has_key(&tables.apps, app.id.as_str().as_bytes(), file)? {
                return Err(FleetStoreError::AppExists(app.id.clone()));
            }
            put_in(tables, file, &app)
        })?;
        Ok(app)
    }

    /// Creates or replaces an app client. Fails with
    /// [`FleetStoreError::IdTaken`] if a device has the id.
    pub fn put_app(&self, app: &AppClient) -> Result<(), FleetStoreError> {
        let file = &self.file;
        self.write(|tables| put_in(tables, file, app))
    }

    /// The app client `id`, if it exists.
    pub fn get_app(&self, id: &AppId) -> Result<Option<AppClient>, FleetStoreError> {
        self.read(|txn| get_app_in(&read_table(txn, APPS, &self.file)?, &self.file, id.as_str()))
    }

    /// Every app client, in id order (there are few).
    pub fn list_apps(&self) -> Result<Vec<AppClient>, FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let table = read_table(txn, APPS, file)?;
            let mut apps = Vec::new();
            for row in table.iter().map_err(|e| file.engine(e))? {
                let (key, value) = row.map_err(|e| file.engine(e))?;
                let app = codec::decode_app(key.value(), value.value())
                    .map_err(|why| file.corrupt(APPS_NAME, key.value(), why))?;
                apps.push(app);
            }
            Ok(apps)
        })
    }

    /// Deletes app client `id` and its credential; returns it.
    pub fn delete_app(&self, id: &AppId) -> Result<AppClient, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let app = get_app_in(&tables.apps, file, id.as_str())?
                .ok_or_else(|| FleetStoreError::AppNotFound(id.clone()))?;
            let key = id.as_str().as_bytes();
            tables.apps.remove(key).map_err(|e| file.engine(e))?;
            tables.credentials.remove(key).map_err(|e| file.engine(e))?;
            Ok(app)
        })
    }
}
