//! OTA records: firmware artifacts, rollouts and each rollout's devices.
//!
//! | table | key | value |
//! |---|---|---|
//! | `ota_artifacts` | artifact id | [`ArtifactRecord`] |
//! | `ota_rollouts` | rollout id | [`StoredRollout`] (the planner's [`RolloutRecord`] and what the operator named) |
//! | `ota_deltas` | delta id (`{from}-{to}`) | [`DeltaRecord`] |
//! | `ota_rollout_devices` | rollout id, `0x00`, device index (u32 big-endian) | device id and its [`DeviceRecord`] |
//!
//! Values are a version byte and postcard, written and read by the registry's own codec
//! (`store/codec.rs`). A rollout and the device records
//! that changed with it are written in one transaction, so a restart sees them agree.

use redb::{ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use myriad_ota::rollout::{DeviceRecord, RolloutRecord};

use super::codec;
use super::error::FileName;
use super::tables::Def;
use super::{FleetStore, FleetStoreError};

const ARTIFACTS: Def = TableDefinition::new("ota_artifacts");
const ROLLOUTS: Def = TableDefinition::new("ota_rollouts");
const ROLLOUT_DEVICES: Def = TableDefinition::new("ota_rollout_devices");
const DELTAS: Def = TableDefinition::new("ota_deltas");

/// A stored firmware image: its file lives in the OTA directory under its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// The artifact's id (also its file name).
    pub id: String,
    /// The firmware version the image installs.
    pub version: String,
    /// The hardware type the image is built for.
    pub hardware_type: String,
    /// Free text for operators.
    pub notes: String,
    /// Bytes of the image.
    pub size: u64,
    /// SHA-256 of the image.
    pub sha256: [u8; 32],
    /// Anti-rollback counter the manifest carries: a device refuses an image whose counter is
    /// below the one it runs.
    pub security_counter: u64,
    /// Uploaded at (milliseconds since the epoch).
    pub created_ms: u64,
}

/// Where a delta patch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaStatus {
    /// Waiting for the delta worker.
    Queued,
    /// Being built.
    Running,
    /// Built; its file is in the OTA directory.
    Done,
    /// Could not be built (see the record's error).
    Failed,
}

impl DeltaStatus {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DeltaStatus::Queued => "QUEUED",
            DeltaStatus::Running => "RUNNING",
            DeltaStatus::Done => "DONE",
            DeltaStatus::Failed => "FAILED",
        }
    }
}

/// A delta patch between two stored artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRecord {
    /// `{from}-{to}`.
    pub id: String,
    /// The base artifact (what devices run).
    pub from: String,
    /// The target artifact.
    pub to: String,
    /// Where it is.
    pub status: DeltaStatus,
    /// What the worker is doing (`queued`, `reading`, `diffing`, `writing`, `done`).
    pub phase: String,
    /// Bytes of the patch (when done).
    pub size: u64,
    /// SHA-256 of the patch (when done).
    pub sha256: [u8; 32],
    /// `xz` or `zstd` (when done).
    pub codec: String,
    /// Why it failed.
    pub error: String,
    /// Asked for at (milliseconds since the epoch).
    pub created_ms: u64,
    /// Finished at (milliseconds since the epoch; 0 while not finished).
    pub finished_ms: u64,
}

/// A delta a rollout offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutDelta {
    /// The delta's id (`{from}-{to}`).
    pub id: String,
    /// SHA-256 of the base image it applies to.
    pub base_sha256: [u8; 32],
    /// Bytes of the patch.
    pub size: u64,
    /// SHA-256 of the patch.
    pub sha256: [u8; 32],
    /// Its signed manifest (base, patch and target hashes).
    pub manifest: Vec<u8>,
}

/// Which devices a rollout targets, as the operator said it (the planner holds the resolved
/// list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutTarget {
    /// An explicit list of device ids.
    Devices,
    /// Every device of a group when the rollout was created.
    Group(String),
    /// Every device with an attribute value when the rollout was created.
    Attribute {
        /// Attribute key.
        key: String,
        /// Attribute value.
        value: String,
    },
}

/// A rollout as stored: what the operator asked for and the planner's rollout-wide record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRollout {
    /// The rollout's id.
    pub id: String,
    /// The operator's name for it.
    pub name: String,
    /// The artifact it installs.
    pub artifact: String,
    /// How its devices were chosen.
    pub target: RolloutTarget,
    /// Download bandwidth cap over all its devices (bytes per second), if any.
    pub max_bytes_per_second: Option<u64>,
    /// The signed manifest every device of the rollout gets (an encoded
    /// `myriad.ota.v1.SignedManifest`).
    pub manifest: Vec<u8>,
    /// The delta offered beside the full image, for devices running its base.
    pub delta: Option<RolloutDelta>,
    /// The planner's record (spec, status, waves started).
    pub planner: RolloutRecord,
}

/// A stored rollout with its devices (id and record) in index order.
pub type LoadedRollout = (StoredRollout, Vec<(String, DeviceRecord)>);

/// [`codec::encode`] with the store's error.
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FleetStoreError> {
    codec::encode(value).map_err(FleetStoreError::Encode)
}

/// [`codec::decode`], naming the table and key of a record that does not decode.
fn decode<T: DeserializeOwned>(
    file: &FileName,
    table: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, FleetStoreError> {
    codec::decode(value).map_err(|reason| file.corrupt(table, key, reason))
}

fn device_key(rollout: &str, index: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(rollout.len() + 5);
    key.extend_from_slice(rollout.as_bytes());
    key.push(0);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Opens `def` for reading; a table never written reads as empty (`None`).
macro_rules! read_table {
    ($store:expr, $txn:expr, $def:expr) => {
        match $txn.open_table($def) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err($store.file.engine(e)),
        }
    };
}

impl FleetStore {
    /// Stores `value` under `key` in `def` (new or changed), in one transaction.
    fn put_record<T: Serialize>(
        &self,
        def: Def,
        key: &str,
        value: &T,
    ) -> Result<(), FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        {
            let mut table = txn.open_table(def).map_err(|e| file.engine(e))?;
            let value = encode(value)?;
            table
                .insert(key.as_bytes(), value.as_slice())
                .map_err(|e| file.engine(e))?;
        }
        txn.commit().map_err(|e| file.engine(e))
    }

    /// The record under `key` in `def` (named `name` in errors), if stored.
    fn get_record<T: DeserializeOwned>(
        &self,
        def: Def,
        name: &'static str,
        key: &str,
    ) -> Result<Option<T>, FleetStoreError> {
        self.read(|txn| {
            let Some(table) = read_table!(self, txn, def) else {
                return Ok(None);
            };
            match table.get(key.as_bytes()).map_err(|e| self.file.engine(e))? {
                Some(value) => decode(&self.file, name, key.as_bytes(), value.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Every record of `def` (named `name` in errors), in key order.
    fn list_records<T: DeserializeOwned>(
        &self,
        def: Def,
        name: &'static str,
    ) -> Result<Vec<T>, FleetStoreError> {
        self.read(|txn| {
            let Some(table) = read_table!(self, txn, def) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| self.file.engine(e))? {
                let (key, value) = row.map_err(|e| self.file.engine(e))?;
                out.push(decode(&self.file, name, key.value(), value.value())?);
            }
            Ok(out)
        })
    }

    /// Stores `artifact` (new or changed).
    pub fn put_artifact(&self, artifact: &ArtifactRecord) -> Result<(), FleetStoreError> {
        self.put_record(ARTIFACTS, &artifact.id, artifact)
    }

    /// The artifact `id`, if stored.
    pub fn get_artifact(&self, id: &str) -> Result<Option<ArtifactRecord>, FleetStoreError> {
        self.get_record(ARTIFACTS, "ota_artifacts", id)
    }

    /// Every artifact, in id order.
    pub fn list_artifacts(&self) -> Result<Vec<ArtifactRecord>, FleetStoreError> {
        self.list_records(ARTIFACTS, "ota_artifacts")
    }

    /// Deletes artifact `id` unless a rollout that has not finished uses it; returns the
    /// deleted record, `Ok(None)` if there was none, or [`FleetStoreError::ArtifactInUse`].
    pub fn delete_artifact(&self, id: &str) -> Result<Option<ArtifactRecord>, FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        let deleted = {
            let rollouts = txn.open_table(ROLLOUTS).map_err(|e| file.engine(e))?;
            for row in rollouts.iter().map_err(|e| file.engine(e))? {
                let (key, value) = row.map_err(|e| file.engine(e))?;
                let rollout: StoredRollout =
                    decode(file, "ota_rollouts", key.value(), value.value())?;
                let offers_delta_from = rollout
                    .delta
                    .as_ref()
                    .is_some_and(|d| d.id.split('-').next() == Some(id));
                if (rollout.artifact == id || offers_delta_from)
                    && !rollout.planner.status.is_finished()
                {
                    return Err(FleetStoreError::ArtifactInUse {
                        artifact: id.to_owned(),
                        rollout: rollout.id,
                    });
                }
            }
            let mut table = txn.open_table(ARTIFACTS).map_err(|e| file.engine(e))?;
            let removed = table.remove(id.as_bytes()).map_err(|e| file.engine(e))?;
            match removed {
                Some(value) => Some(decode(file, "ota_artifacts", id.as_bytes(), value.value())?),
                None => None,
            }
        };
        txn.commit().map_err(|e| file.engine(e))?;
        Ok(deleted)
    }

    /// Stores `delta` (new or changed).
    pub fn put_delta(&self, delta: &DeltaRecord) -> Result<(), FleetStoreError> {
        self.put_record(DELTAS, &delta.id, delta)
    }

    /// The delta `id`, if stored.
    pub fn get_delta(&self, id: &str) -> Result<Option<DeltaRecord>, FleetStoreError> {
        self.get_record(DELTAS, "ota_deltas", id)
    }

    /// Every delta, in id order.
    pub fn list_deltas(&self) -> Result<Vec<DeltaRecord>, FleetStoreError> {
        self.list_records(DELTAS, "ota_deltas")
    }

    /// Deletes the delta records `ids`.
    pub fn delete_deltas(&self, ids: &[String]) -> Result<(), FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        {
            let mut table = txn.open_table(DELTAS).map_err(|e| file.engine(e))?;
            for id in ids {
                table.remove(id.as_bytes()).map_err(|e| file.engine(e))?;
            }
        }
        txn.commit().map_err(|e| file.engine(e))
    }

    /// Stores `rollout` and the device records `devices` (index, device id, record) in one
    /// transaction.
    pub fn put_rollout(
        &self,
        rollout: &StoredRollout,
        devices: &[(u32, &str, &DeviceRecord)],
    ) -> Result<(), FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        {
            let mut rollouts = txn.open_table(ROLLOUTS).map_err(|e| file.engine(e))?;
            let mut records = txn
                .open_table(ROLLOUT_DEVICES)
                .map_err(|e| file.engine(e))?;
            let value = encode(rollout)?;
            rollouts
                .insert(rollout.id.as_bytes(), value.as_slice())
                .map_err(|e| file.engine(e))?;
            for &(index, device, record) in devices {
                let value = encode(&(device, record))?;
                records
                    .insert(device_key(&rollout.id, index).as_slice(), value.as_slice())
                    .map_err(|e| file.engine(e))?;
            }
        }
        txn.commit().map_err(|e| file.engine(e))
    }

    /// Every stored rollout with its devices in index order.
    /// A record that does not decode fails with [`FleetStoreError::Corrupt`] naming it.
    pub fn load_rollouts(&self) -> Result<Vec<LoadedRollout>, FleetStoreError> {
        self.load_rollout_records()?
            .into_iter()
            .map(|rollout| {
                let devices = self.load_rollout_devices(&rollout.id)?;
                Ok((rollout, devices))
            })
            .collect()
    }

    /// Every stored rollout record (without its devices), in id order.
    pub fn load_rollout_records(&self) -> Result<Vec<StoredRollout>, FleetStoreError> {
        self.read(|txn| {
            let Some(rollouts) = read_table!(self, txn, ROLLOUTS) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for row in rollouts.iter().map_err(|e| self.file.engine(e))? {
                let (key, value) = row.map_err(|e| self.file.engine(e))?;
                out.push(decode(
                    &self.file,
                    "ota_rollouts",
                    key.value(),
                    value.value(),
                )?);
            }
            Ok(out)
        })
    }

    /// The devices of rollout `id` in index order (empty for an unknown rollout).
    pub fn load_rollout_devices(
        &self,
        id: &str,
    ) -> Result<Vec<(String, DeviceRecord)>, FleetStoreError> {
        self.read(|txn| {
            let Some(devices) = read_table!(self, txn, ROLLOUT_DEVICES) else {
                return Ok(Vec::new());
            };
            let mut records = Vec::new();
            let start = device_key(id, 0);
            let end = device_key(id, u32::MAX);
            for row in devices
                .range(start.as_slice()..=end.as_slice())
                .map_err(|e| self.file.engine(e))?
            {
                let (key, value) = row.map_err(|e| self.file.engine(e))?;
                let expected = device_key(id, records.len() as u32);
                if key.value() != expected.as_slice() {
                    return Err(self.file.corrupt(
                        "ota_rollout_devices",
                        key.value(),
                        "device index out of sequence".into(),
                    ));
                }
                records.push(decode(
                    &self.file,
                    "ota_rollout_devices",
                    key.value(),
                    value.value(),
                )?);
            }
            Ok(records)
        })
    }
}

#[cfg(test)]
mod tests {
    use myriad_ota::rollout::{Rollout, RolloutSpec, RolloutStatus};

    use super::*;

    fn artifact(id: &str) -> ArtifactRecord {
        ArtifactRecord {
            id: id.into(),
            version: "1.2.3".into(),
            hardware_type: "rpi4".into(),
            notes: String::new(),
            size: 42,
            sha256: [7; 32],
            security_counter: 3,
            created_ms: 5,
        }
    }

    #[test]
    fn artifacts_and_rollouts_round_trip_and_in_use_artifacts_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = FleetStore::open(dir.path()).unwrap();
        assert_eq!(store.list_artifacts().unwrap(), vec![]);
        assert_eq!(store.load_rollouts().unwrap(), vec![]);
        store.put_artifact(&artifact("a1")).unwrap();
        store.put_artifact(&artifact("a2")).unwrap();
        assert_eq!(store.get_artifact("a1").unwrap(), Some(artifact("a1")));
        assert_eq!(store.list_artifacts().unwrap().len(), 2);

        let ids: Vec<String> = (0..3).map(|i| format!("d{i}")).collect();
        let mut planner = Rollout::new(RolloutSpec::default(), ids, 9).unwrap();
        planner.tick(10, 1);
        let mut stored = StoredRollout {
            id: "r1".into(),
            name: "first".into(),
            artifact: "a1".into(),
            target: RolloutTarget::Group("field".into()),
            max_bytes_per_second: Some(1000),
            manifest: vec![1, 2, 3],
            delta: None,
            planner: planner.record().clone(),
        };
        let devices: Vec<_> = (0..planner.len())
            .map(|i| (i, planner.device_id(i), planner.device(i)))
            .collect();
        store.put_rollout(&stored, &devices).unwrap();
        let loaded = store.load_rollouts().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].0, stored);
        let expected: Vec<_> = planner
            .devices()
            .map(|(id, r)| (id.to_owned(), r.clone()))
            .collect();
        assert_eq!(loaded[0].1, expected);

        assert!(matches!(
            store.delete_artifact("a1"),
            Err(FleetStoreError::ArtifactInUse { .. })
        ));
        assert_eq!(store.delete_artifact("a2").unwrap(), Some(artifact("a2")));
        assert_eq!(store.delete_artifact("a2").unwrap(), None);
        stored.planner.status = RolloutStatus::Canceled;
        store.put_rollout(&stored, &[]).unwrap();
        assert_eq!(
            store.delete_artifact("a1").unwrap(),
            Some(artifact("a1")),
            "a finished rollout keeps no artifact"
        );
    }
}
