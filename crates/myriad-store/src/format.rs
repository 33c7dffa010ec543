//! The format byte every redb file of the platform carries in its `meta`
//! table, checked when the file is opened (shared by the broker's store and
//! the device layer's `fleet.redb`).

use redb::{ReadableTable, TableDefinition, WriteTransaction};

/// The table holding the format entry.
const META: TableDefinition<'static, &'static [u8], &'static [u8]> = TableDefinition::new("meta");

/// Key of the format entry in the `meta` table.
const FORMAT_KEY: &[u8] = b"format";

/// Why a file's format could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The storage engine failed.
    #[error(transparent)]
    Engine(#[from] redb::Error),
    /// The file was written in a format this build does not read.
    #[error("unknown format {found:?}")]
    Unknown {
        /// The format entry found.
        found: Vec<u8>,
    },
}

/// Writes `format` into a new file's `meta` table, or checks that an
/// existing file has it.
pub fn ensure_format(txn: &WriteTransaction, format: u8) -> Result<(), FormatError> {
    let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
    let found = meta
        .get(FORMAT_KEY)
        .map_err(redb::Error::from)?
        .map(|v| v.value().to_vec());
    match found.as_deref() {
        None => {
            meta.insert(FORMAT_KEY, [format].as_slice())
                .map_err(redb::Error::from)?;
            Ok(())
        }
        Some(found) if found == [format] => Ok(()),
        Some(found) => Err(FormatError::Unknown {
            found: found.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_gets_the_format_and_another_format_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = redb::Database::create(dir.path().join("t.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        ensure_format(&txn, 1).expect("written");
        ensure_format(&txn, 1).expect("same format accepted");
        match ensure_format(&txn, 2) {
            Err(FormatError::Unknown { found }) => assert_eq!(found, vec![1]),
            other => panic!("expected an unknown format, got {other:?}"),
        }
    }
}
