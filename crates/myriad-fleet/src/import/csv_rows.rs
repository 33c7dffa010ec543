//! CSV with a header row.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use super::ImportError;
use super::row::{Parsed, RawRow, Source};
use crate::credentials::Secret;

/// The columns a file may have, in the order of [`Cols`].
const COLUMNS: [&str; 7] = [
    "id",
    "name",
    "enabled",
    "groups",
    "attributes",
    "password",
    "password_hash",
];

/// Index of each of [`COLUMNS`] in the file, if present.
type Cols = [Option<usize>; 7];

/// Rows from CSV records.
pub(super) struct CsvRows<R> {
    reader: csv::Reader<R>,
    cols: Cols,
    record: csv::StringRecord,
}

impl<R: BufRead> CsvRows<R> {
    /// Reads and checks the header row.
    pub(super) fn new(reader: R) -> Result<Self, ImportError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(reader);
        let headers = reader
            .headers()
            .map_err(|e| ImportError::Header(e.to_string()))?;
        let mut cols: Cols = [None; 7];
        for (index, name) in headers.iter().enumerate() {
            let name = name.trim_start_matches('\u{feff}');
            let Some(col) = COLUMNS.iter().position(|c| *c == name) else {
                return Err(ImportError::Header(format!(
                    "unknown column {name:?} (known: {})",
                    COLUMNS.join(", ")
                )));
            };
            if cols[col].replace(index).is_some() {
                return Err(ImportError::Header(format!("column {name:?} given twice")));
            }
        }
        if cols[0].is_none() {
            return Err(ImportError::Header("no \"id\" column".into()));
        }
        Ok(CsvRows {
            reader,
            cols,
            record: csv::StringRecord::new(),
        })
    }

    fn field(&self, col: usize) -> &str {
        self.cols[col]
            .and_then(|i| self.record.get(i))
            .unwrap_or("")
    }

    fn parse(&self) -> Parsed {
        let id = self.field(0).to_string();
        let fail = |message: String| (Some(id.clone()), message);
        let enabled = match self.field(2).to_ascii_lowercase().as_str() {
            "" => None,
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            other => return Err(fail(format!("enabled: {other:?} is not true or false"))),
        };
        let groups: BTreeSet<String> = self
            .field(3)
            .split(';')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        let mut attributes = BTreeMap::new();
        for pair in self
            .field(4)
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(fail(format!("attribute {pair:?} is not key=value")));
            };
            let key = key.trim().to_string();
            if attributes
                .insert(key.clone(), value.trim().to_string())
                .is_some()
            {
                return Err(fail(format!("attribute {key:?} given twice")));
            }
        }
        let optional = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(RawRow {
            name: self.field(1).to_string(),
            enabled,
            groups,
            attributes,
            password: optional(self.field(5)).map(Secret::new),
            password_hash: optional(self.field(6)),
            id,
        })
    }
}

impl<R: BufRead> Source for CsvRows<R> {
    fn next_row(&mut self, imported: u64) -> Result<Option<(u64, Parsed)>, ImportError> {
        match self.reader.read_record(&mut self.record) {
            Ok(false) => Ok(None),
            Ok(true) => {
                let line = self.record.position().map_or(0, csv::Position::line);
                Ok(Some((line, self.parse())))
            }
            Err(err) => {
                let line = err.position().map_or(0, csv::Position::line);
                match err.into_kind() {
                    csv::ErrorKind::Io(source) => Err(ImportError::Read {
                        line,
                        source,
                        imported,
                    }),
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => Ok(Some((
                        line,
                        Err((None, format!("{len} fields, the header has {expected_len}"))),
                    ))),
                    csv::ErrorKind::Utf8 { err, .. } => {
                        Ok(Some((line, Err((None, format!("not UTF-8: {err}"))))))
                    }
                    other => Ok(Some((line, Err((None, format!("bad CSV row: {other:?}")))))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(input: &str) -> Vec<(u64, Parsed)> {
        let mut source = CsvRows::new(input.as_bytes()).unwrap();
        let mut out = Vec::new();
        while let Some(row) = source.next_row(0).unwrap() {
            out.push(row);
        }
        out
    }

    #[test]
    fn columns_in_any_order_and_field_syntax() {
        let out = rows(
            "attributes,id,groups,enabled\n\
             site=ber; floor = 2 ,a, g1;g2;,no\n\
             ,b,,\n\
             x,c,,\n\
             k=1;k=2,d,,\n\
             ,e,,maybe\n\
             ,f\n\
             \"eq=a=b\",\"g\nh\",,\n",
        );
        assert_eq!(out.len(), 7);
        let a = out[0].1.as_ref().unwrap();
        assert_eq!(out[0].0, 2);
        assert_eq!(a.id, "a");
        assert_eq!(a.enabled, Some(false));
        assert_eq!(a.groups.iter().collect::<Vec<_>>(), ["g1", "g2"]);
        assert_eq!(a.attributes["site"], "ber");
        assert_eq!(a.attributes["floor"], "2");
        let b = out[1].1.as_ref().unwrap();
        assert_eq!(
            (b.enabled, b.groups.len(), b.attributes.len()),
            (None, 0, 0)
        );
        assert!(out[2].1.as_ref().unwrap_err().1.contains("key=value"));
        assert!(out[3].1.as_ref().unwrap_err().1.contains("twice"));
        let (id, message) = out[4].1.as_ref().unwrap_err();
        assert_eq!(id.as_deref(), Some("e"));
        assert!(message.contains("maybe"));
        assert_eq!(out[5].0, 7);
        assert!(out[5].1.as_ref().unwrap_err().1.contains("2 fields"));
        // A quoted newline: the row starts on line 8; `=` in a value.
        assert_eq!(out[6].0, 8);
        let g = out[6].1.as_ref().unwrap();
        assert_eq!(g.id, "g\nh");
        assert_eq!(g.attributes["eq"], "a=b");
    }

    #[test]
    fn bad_headers_stop_before_any_row() {
        for (input, want) in [
            ("id,nmae\n", "unknown column \"nmae\""),
            ("id,name,id\n", "given twice"),
            ("name\n", "no \"id\""),
        ] {
            match CsvRows::new(input.as_bytes()) {
                Err(ImportError::Header(message)) => assert!(message.contains(want), "{message}"),
                _ => panic!("{input:?} should fail"),
            }
        }
        assert!(CsvRows::new("\u{feff}id\n".as_bytes()).is_ok());
    }
}
