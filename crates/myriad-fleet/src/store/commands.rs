//! Command records, their per-device index, the set of commands not yet
//! final, and fan-out batches.
//!
//! | table | key | value |
//! |---|---|---|
//! | `commands` | command id | version byte + JSON [`Command`] |
//! | `commands_by_device` | device id, `0x00`, command id | empty |
//! | `commands_active` | command id (not final) | empty |
//! | `command_batches` | batch id | version byte + JSON [`BatchProgress`] |
//! | `command_batch_jobs` | batch id (not yet dispatched) | version byte + JSON [`BatchJob`] |
//! | `commands_by_batch` | batch id, `0x00`, device id | command id |
//!
//! Commands are stored as JSON (not postcard like the registry) because
//! payloads and results are arbitrary JSON values, which postcard cannot
//! read back. Writes come in batches: one transaction, one `fsync`, for
//! all the status changes gathered by the service's writer.

use redb::{ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::FileName;
use super::tables::Def;
use super::{FleetStore, FleetStoreError};
use crate::commands::{BatchId, BatchJob, BatchProgress, Command, CommandId, CommandStatus};

const COMMANDS: Def = TableDefinition::new("commands");
const BY_DEVICE: Def = TableDefinition::new("commands_by_device");
const ACTIVE: Def = TableDefinition::new("commands_active");
const BATCHES: Def = TableDefinition::new("command_batches");
const BATCH_JOBS: Def = TableDefinition::new("command_batch_jobs");
const BY_BATCH: Def = TableDefinition::new("commands_by_batch");
const V1: u8 = 1;

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FleetStoreError> {
    let mut bytes = vec![V1];
    serde_json::to_writer(&mut bytes, value).map_err(|e| FleetStoreError::Encode(e.to_string()))?;
    Ok(bytes)
}

fn decode<T: DeserializeOwned>(
    file: &FileName,
    table: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, FleetStoreError> {
    match value.split_first() {
        Some((&V1, rest)) => {
            serde_json::from_slice(rest).map_err(|e| file.corrupt(table, key, e.to_string()))
        }
        Some((version, _)) => Err(file.corrupt(table, key, format!("unknown version {version}"))),
        None => Err(file.corrupt(table, key, "empty value".into())),
    }
}

fn device_key(device: &str, id: &CommandId) -> Vec<u8> {
    let mut key = Vec::with_capacity(device.len() + 33);
    key.extend_from_slice(device.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

fn batch_key(batch: &BatchId, device: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(device.len() + 33);
    key.extend_from_slice(batch.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(device.as_bytes());
    key
}

impl FleetStore {
    /// Stores `commands` (new or changed) in one transaction, keeping the
    /// per-device index and the set of commands not yet final.
    pub fn put_commands(&self, commands: &[Command]) -> Result<(), FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        {
            let mut records = txn.open_table(COMMANDS).map_err(|e| file.engine(e))?;
            let mut by_device = txn.open_table(BY_DEVICE).map_err(|e| file.engine(e))?;
            let mut active = txn.open_table(ACTIVE).map_err(|e| file.engine(e))?;
            let mut by_batch = txn.open_table(BY_BATCH).map_err(|e| file.engine(e))?;
            for command in commands {
                if let Some(batch) = &command.batch {
                    let index = batch_key(batch, &command.device);
                    by_batch
                        .insert(index.as_slice(), command.id.as_str().as_bytes())
                        .map_err(|e| file.engine(e))?;
                }
                let key = command.id.as_str().as_bytes();
                let value = encode(command)?;
                records
                    .insert(key, value.as_slice())
                    .map_err(|e| file.engine(e))?;
                let index = device_key(&command.device, &command.id);
                by_device
                    .insert(index.as_slice(), [].as_slice())
                    .map_err(|e| file.engine(e))?;
                if command.status.is_final() {
                    active.remove(key).map_err(|e| file.engine(e))?;
                } else {
                    active
                        .insert(key, [].as_slice())
                        .map_err(|e| file.engine(e))?;
                }
            }
        }
        txn.commit().map_err(|e| file.engine(e))
    }

    /// The command `id`, if stored.
    pub fn get_command(&self, id: &CommandId) -> Result<Option<Command>, FleetStoreError> {
        self.read(|txn| {
            let table = match txn.open_table(COMMANDS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(self.file.engine(e)),
            };
            let key = id.as_str().as_bytes();
            match table.get(key).map_err(|e| self.file.engine(e))? {
                Some(value) => decode(&self.file, "commands", key, value.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Commands of `device`, newest first, older than `before` if given;
    /// at most `limit`.
    pub fn list_device_commands(
        &self,
        device: &str,
        before: Option<&CommandId>,
        limit: usize,
    ) -> Result<Vec<Command>, FleetStoreError> {
        self.read(|txn| {
            let (index, records) = match (txn.open_table(BY_DEVICE), txn.open_table(COMMANDS)) {
                (Ok(index), Ok(records)) => (index, records),
                (Err(redb::TableError::TableDoesNotExist(_)), _)
                | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
                (Err(e), _) | (_, Err(e)) => return Err(self.file.engine(e)),
            };
            let mut start = device.as_bytes().to_vec();
            start.push(0);
            let mut end = device.as_bytes().to_vec();
            end.push(1);
            let end = match before {
                Some(before) => device_key(device, before),
                None => end,
            };
            let mut out = Vec::new();
            let range = index
                .range(start.as_slice()..end.as_slice())
                .map_err(|e| self.file.engine(e))?;
            for entry in range.rev() {
                if out.len() >= limit {
                    break;
                }
                let (key, _) = entry.map_err(|e| self.file.engine(e))?;
                let id = &key.value()[device.len() + 1..];
                if let Some(value) = records.get(id).map_err(|e| self.file.engine(e))? {
                    out.push(decode(&self.file, "commands", id, value.value())?);
                }
            }
            Ok(out)
        })
    }

    /// Every stored command that is not final (for recovery at start).
    pub fn active_commands(&self) -> Result<Vec<Command>, FleetStoreError> {
        self.read(|txn| {
            let (active, records) = match (txn.open_table(ACTIVE), txn.open_table(COMMANDS)) {
                (Ok(active), Ok(records)) => (active, records),
                (Err(redb::TableError::TableDoesNotExist(_)), _)
                | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
                (Err(e), _) | (_, Err(e)) => return Err(self.file.engine(e)),
            };
            let mut out = Vec::new();
            for entry in active.iter().map_err(|e| self.file.engine(e))? {
                let (key, _) = entry.map_err(|e| self.file.engine(e))?;
                if let Some(value) = records.get(key.value()).map_err(|e| self.file.engine(e))? {
                    out.push(decode(&self.file, "commands", key.value(), value.value())?);
                }
            }
            Ok(out)
        })
    }

    /// Stores the progress of a batch.
    pub fn put_batch(&self, batch: &BatchProgress) -> Result<(), FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        {
            let mut table = txn.open_table(BATCHES).map_err(|e| file.engine(e))?;
            let value = encode(batch)?;
            table
                .insert(batch.id.as_str().as_bytes(), value.as_slice())
                .map_err(|e| file.engine(e))?;
        }
        txn.commit().map_err(|e| file.engine(e))
    }

    /// Stores the progress of a batch together with what it still has to
    /// do (`None` once every target is handled: the job is removed), in
    /// one transaction.
    pub fn put_batch_checkpoint(
        &self,
        batch: &BatchProgress,
        job: Option<&BatchJob>,
    ) -> Result<(), FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        {
            let mut table = txn.open_table(BATCHES).map_err(|e| file.engine(e))?;
            let value = encode(batch)?;
            let key = batch.id.as_str().as_bytes();
            table
                .insert(key, value.as_slice())
                .map_err(|e| file.engine(e))?;
            let mut jobs = txn.open_table(BATCH_JOBS).map_err(|e| file.engine(e))?;
            match job {
                Some(job) => {
                    let value = encode(job)?;
                    jobs.insert(key, value.as_slice())
                        .map_err(|e| file.engine(e))?;
                }
                None => {
                    jobs.remove(key).map_err(|e| file.engine(e))?;
                }
            }
        }
        txn.commit().map_err(|e| file.engine(e))
    }

    /// Every batch not yet dispatched (for resuming at start).
    pub fn batch_jobs(&self) -> Result<Vec<BatchJob>, FleetStoreError> {
        self.read(|txn| {
            let table = match txn.open_table(BATCH_JOBS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(self.file.engine(e)),
            };
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| self.file.engine(e))? {
                let (key, value) = entry.map_err(|e| self.file.engine(e))?;
                out.push(decode(
                    &self.file,
                    "command_batch_jobs",
                    key.value(),
                    value.value(),
                )?);
            }
            Ok(out)
        })
    }

    /// The command of batch `batch` for `device`, if one is stored.
    pub fn batch_command(
        &self,
        batch: &BatchId,
        device: &str,
    ) -> Result<Option<CommandId>, FleetStoreError> {
        self.read(|txn| {
            let table = match txn.open_table(BY_BATCH) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(self.file.engine(e)),
            };
            let key = batch_key(batch, device);
            match table.get(key.as_slice()).map_err(|e| self.file.engine(e))? {
                Some(value) => Ok(std::str::from_utf8(value.value())
                    .ok()
                    .and_then(CommandId::parse)),
                None => Ok(None),
            }
        })
    }

    /// The id and stored status of every command of batch `batch`.
    pub fn batch_command_statuses(
        &self,
        batch: &BatchId,
    ) -> Result<Vec<(CommandId, CommandStatus)>, FleetStoreError> {
        self.read(|txn| {
            let (index, records) = match (txn.open_table(BY_BATCH), txn.open_table(COMMANDS)) {
                (Ok(index), Ok(records)) => (index, records),
                (Err(redb::TableError::TableDoesNotExist(_)), _)
                | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
                (Err(e), _) | (_, Err(e)) => return Err(self.file.engine(e)),
            };
            let mut start = batch.as_str().as_bytes().to_vec();
            start.push(0);
            let mut end = batch.as_str().as_bytes().to_vec();
            end.push(1);
            let mut out = Vec::new();
            let range = index
                .range(start.as_slice()..end.as_slice())
                .map_err(|e| self.file.engine(e))?;
            for entry in range {
                let (_, id) = entry.map_err(|e| self.file.engine(e))?;
                let id = id.value();
                if let Some(value) = records.get(id).map_err(|e| self.file.engine(e))? {
                    let command: Command = decode(&self.file, "commands", id, value.value())?;
                    out.push((command.id, command.status));
                }
            }
            Ok(out)
        })
    }

    /// The stored progress of batch `id`.
    pub fn get_batch(&self, id: &BatchId) -> Result<Option<BatchProgress>, FleetStoreError> {
        self.read(|txn| {
            let table = match txn.open_table(BATCHES) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(self.file.engine(e)),
            };
            let key = id.as_str().as_bytes();
            match table.get(key).map_err(|e| self.file.engine(e))? {
                Some(value) => decode(&self.file, "command_batches", key, value.value()).map(Some),
                None => Ok(None),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{CommandSpec, CommandStatus, Payload, Priority};

    fn command(device: &str, at: u64) -> Command {
        let spec = CommandSpec {
            name: "x".into(),
            payload: Payload::Json(serde_json::json!({"a": [1, 2]})),
            priority: Priority::L1,
            timeout_ms: 5,
            expires_at: None,
            read: false,
        };
        Command::new(CommandId::generate(at), device.into(), spec, None, at)
    }

    #[test]
    fn commands_round_trip_with_index_and_active_set() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = FleetStore::open(dir.path()).expect("open");
        assert!(store.active_commands().expect("empty").is_empty());
        let a = command("d1", 1);
        let mut b = command("d1", 2);
        let c = command("d10", 3);
        store
            .put_commands(&[a.clone(), b.clone(), c.clone()])
            .expect("put");
        assert_eq!(store.get_command(&a.id).expect("get"), Some(a.clone()));
        let listed = store.list_device_commands("d1", None, 10).expect("list");
        assert_eq!(
            listed,
            vec![b.clone(), a.clone()],
            "newest first, d10 apart"
        );
        let older = store
            .list_device_commands("d1", Some(&b.id), 10)
            .expect("page");
        assert_eq!(older, vec![a.clone()]);
        b.set_status(CommandStatus::Succeeded, 9, None);
        store
            .put_commands(std::slice::from_ref(&b))
            .expect("update");
        let mut active: Vec<_> = store
            .active_commands()
            .expect("active")
            .into_iter()
            .map(|c| c.id)
            .collect();
        active.sort();
        assert_eq!(active, vec![a.id.clone(), c.id.clone()]);
        drop(store);
        let store = FleetStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.get_command(&b.id).expect("get").map(|c| c.status),
            Some(CommandStatus::Succeeded)
        );
    }

    #[test]
    fn batch_index_and_jobs_round_trip() {
        use crate::commands::{BatchTargets, CommandSpec, Payload, Priority};
        let dir = tempfile::tempdir().expect("tmp");
        let store = FleetStore::open(dir.path()).expect("open");
        let batch = BatchId::generate(1);
        let mut a = command("d1", 2);
        a.batch = Some(batch.clone());
        let mut b = command("d2", 3);
        b.batch = Some(batch.clone());
        b.set_status(CommandStatus::Cancelled, 4, Some("x"));
        store.put_commands(&[a.clone(), b.clone()]).expect("put");
        assert_eq!(
            store.batch_command(&batch, "d1").expect("get"),
            Some(a.id.clone())
        );
        assert_eq!(store.batch_command(&batch, "d3").expect("get"), None);
        let mut statuses = store.batch_command_statuses(&batch).expect("statuses");
        statuses.sort();
        assert_eq!(
            statuses,
            vec![
                (a.id.clone(), CommandStatus::Queued),
                (b.id.clone(), CommandStatus::Cancelled)
            ]
        );
        let progress = BatchProgress {
            id: batch.clone(),
            name: "x".into(),
            priority: Priority::L1,
            created_at: 1,
            dispatched: false,
            targets: 2,
            refused: 0,
            statuses: Default::default(),
            cancelled: false,
        };
        let job = BatchJob {
            id: batch.clone(),
            spec: CommandSpec {
                name: "x".into(),
                payload: Payload::Json(serde_json::json!({"k": 1})),
                priority: Priority::L1,
                timeout_ms: 5,
                expires_at: None,
                read: false,
            },
            targets: BatchTargets::Group("g".into()),
            handled: 2,
            after: Some("d2".into()),
        };
        store
            .put_batch_checkpoint(&progress, Some(&job))
            .expect("checkpoint");
        drop(store);
        let store = FleetStore::open(dir.path()).expect("reopen");
        assert_eq!(store.batch_jobs().expect("jobs"), vec![job]);
        assert_eq!(
            store.get_batch(&batch).expect("batch"),
            Some(progress.clone())
        );
        store.put_batch_checkpoint(&progress, None).expect("done");
        assert!(store.batch_jobs().expect("jobs").is_empty());
    }
}
