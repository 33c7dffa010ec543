//! Pipelines defined over the HTTP API: table `pipelines`, name -> [`StoredPipeline`] (less
//! its name): the version byte, then postcard of the definition as JSON text and when it
//! was stored. The definition stays JSON (the shape of a `[[pipelines]]` entry, whose
//! tagged enums postcard cannot read back); the binary checks it again at every start.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::FleetStore;
use super::codec::{decode, encode};
use super::tables::Def;

/// Pipeline name -> stored definition.
const PIPELINES: Def = TableDefinition::new("pipelines");
/// See [`PIPELINES`].
const PIPELINES_NAME: &str = "pipelines";

/// A pipeline defined over the API, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPipeline {
    /// Its name (the key).
    pub name: String,
    /// Its definition: a JSON object with the fields of a `[[pipelines]]` entry.
    pub definition: String,
    /// When it was stored (unix ms).
    pub updated_at: u64,
}

#[derive(Serialize, Deserialize)]
struct PipelineV1 {
    definition: String,
    updated_at: u64,
}

impl FleetStore {
    /// Stores (creates or replaces) pipeline `pipeline.name`.
    pub fn put_pipeline(&self, pipeline: &StoredPipeline) -> Result<(), super::FleetStoreError> {
        let file = &self.file;
        let value = encode(&PipelineV1 {
            definition: pipeline.definition.clone(),
            updated_at: pipeline.updated_at,
        })
        .map_err(super::FleetStoreError::Encode)?;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        {
            let mut table = txn.open_table(PIPELINES).map_err(|e| file.engine(e))?;
            table
                .insert(pipeline.name.as_bytes(), value.as_slice())
                .map_err(|e| file.engine(e))?;
        }
        txn.commit().map_err(|e| file.engine(e))
    }

    /// Deletes pipeline `name`; whether it was stored.
    pub fn delete_pipeline(&self, name: &str) -> Result<bool, super::FleetStoreError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| file.engine(e))?;
        let existed = {
            let mut table = txn.open_table(PIPELINES).map_err(|e| file.engine(e))?;
            let removed = table.remove(name.as_bytes()).map_err(|e| file.engine(e))?;
            removed.is_some()
        };
        txn.commit().map_err(|e| file.engine(e))?;
        Ok(existed)
    }

    /// Every stored pipeline, in name order.
    pub fn list_pipelines(&self) -> Result<Vec<StoredPipeline>, super::FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let table = match txn.open_table(PIPELINES) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(file.engine(e)),
            };
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| file.engine(e))? {
                let (key, value) = row.map_err(|e| file.engine(e))?;
                let corrupt = |why: String| file.corrupt(PIPELINES_NAME, key.value(), why);
                let name = std::str::from_utf8(key.value())
                    .map_err(|_| corrupt("key is not UTF-8".into()))?
                    .to_owned();
                let stored: PipelineV1 = decode(value.value()).map_err(corrupt)?;
                out.push(StoredPipeline {
                    name,
                    definition: stored.definition,
                    updated_at: stored.updated_at,
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_are_stored_listed_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = FleetStore::open(dir.path()).unwrap();
        assert!(store.list_pipelines().unwrap().is_empty());
        let p = |name: &str, at| StoredPipeline {
            name: name.into(),
            definition: format!("{{\"sql\":\"{name}\"}}"),
            updated_at: at,
        };
        store.put_pipeline(&p("b", 1)).unwrap();
        store.put_pipeline(&p("a", 2)).unwrap();
        store.put_pipeline(&p("b", 3)).unwrap();
        drop(store);
        let store = FleetStore::open(dir.path()).unwrap();
        assert_eq!(store.list_pipelines().unwrap(), vec![p("a", 2), p("b", 3)]);
        assert!(store.delete_pipeline("a").unwrap());
        assert!(!store.delete_pipeline("a").unwrap());
        assert_eq!(store.list_pipelines().unwrap(), vec![p("b", 3)]);
    }
}
