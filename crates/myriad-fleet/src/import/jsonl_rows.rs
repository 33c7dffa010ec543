//! JSON lines: one device object per line.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read};

use serde::Deserialize;

use super::ImportError;
use super::row::{Parsed, RawRow, Source};
use crate::credentials::Secret;

/// Longest line accepted, in bytes (without its newline).
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// The fields a line may have.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    groups: BTreeSet<String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    password_hash: Option<String>,
}

/// Rows from JSON lines, read one line at a time into a reused buffer.
pub(super) struct JsonRows<R> {
    reader: R,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> JsonRows<R> {
    pub(super) fn new(reader: R) -> Self {
        JsonRows {
            reader,
            line: 0,
            buf: Vec::new(),
        }
    }

    /// Reads the next line into `buf` (at most `MAX_LINE_LEN + 1` bytes);
    /// whether there was one, and whether it was too long (the rest of it
    /// is skipped).
    fn read_line(&mut self) -> std::io::Result<Option<bool>> {
        self.buf.clear();
        let limit = MAX_LINE_LEN as u64 + 2;
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        // The line ended (newline or end of input) within the limit.
        let ended = self.buf.last() == Some(&b'\n') || n < limit as usize;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        if self.buf.len() <= MAX_LINE_LEN {
            return Ok(Some(false));
        }
        // Too long: skip to the end of the line.
        let mut ended = ended;
        let mut skip = Vec::new();
        while !ended {
            skip.clear();
            let n = (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut skip)?;
            ended = n == 0 || skip.last() == Some(&b'\n');
        }
        Ok(Some(true))
    }
}

/// The `id` of a line that did not parse as a row, if it has one.
fn id_of(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("id")?.as_str().map(str::to_string)
}

/// The message of a row that does not parse: serde's own position is
/// within the row (always "line 1"), so only its column is kept; the
/// row's line in the file goes with the error.
fn bad_json(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let what = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => text.as_str(),
    };
    format!("bad JSON row: {what} (column {})", error.column())
}

fn parse(bytes: &[u8]) -> Parsed {
    let text = std::str::from_utf8(bytes).map_err(|e| (None, format!("not UTF-8: {e}")))?;
    let row: JsonRow = serde_json::from_str(text).map_err(|e| (id_of(text), bad_json(&e)))?;
    Ok(RawRow {
        id: row.id,
        name: row.name,
        enabled: row.enabled,
        groups: row.groups,
        attributes: row.attributes,
        password: row.password,
        password_hash: row.password_hash,
    })
}

impl<R: BufRead> Source for JsonRows<R> {
    fn next_row(&mut self, imported: u64) -> Result<Option<(u64, Parsed)>, ImportError> {
        loop {
            let read = self.read_line().map_err(|source| ImportError::Read {
                line: self.line + 1,
                source,
                imported,
            })?;
            let Some(too_long) = read else {
                return Ok(None);
            };
            self.line += 1;
            if too_long {
                let message = format!("line longer than {MAX_LINE_LEN} bytes");
                return Ok(Some((self.line, Err((None, message)))));
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some((self.line, parse(&self.buf))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(input: &[u8]) -> Vec<(u64, Parsed)> {
        let mut source = JsonRows::new(input);
        let mut out = Vec::new();
        while let Some(row) = source.next_row(0).unwrap() {
            out.push(row);
        }
        out
    }

    #[test]
    fn lines_blank_lines_and_errors() {
        let input = b"{\"id\":\"a\",\"groups\":[\"g\"]}\n\n  \r\n{\"id\":\"b\",\"colour\":1}\r\n\xff\n{\"id\":\"c\",\"password\":\"pw\"}";
        let out = rows(input);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].0, 1);
        let a = out[0].1.as_ref().unwrap();
        assert_eq!(a.id, "a");
        assert!(a.groups.contains("g"));
        assert_eq!(out[1].0, 4);
        let (id, message) = out[1].1.as_ref().unwrap_err();
        assert_eq!(id.as_deref(), Some("b"));
        assert!(message.contains("colour"), "{message}");
        assert_eq!(out[2].0, 5);
        assert!(out[2].1.as_ref().unwrap_err().1.contains("UTF-8"));
        assert_eq!(out[3].0, 6);
        let c = out[3].1.as_ref().unwrap();
        assert_eq!(c.password.as_ref().unwrap().expose(), "pw");
        assert!(!format!("{c:?}").contains("pw\""));
    }

    #[test]
    fn an_overlong_line_is_one_bad_row() {
        let mut input = b"{\"id\":\"a\"}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_LEN * 3));
        input.extend(b"\n{\"id\":\"b\"}\n");
        let out = rows(&input);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].0, 2);
        assert!(out[1].1.as_ref().unwrap_err().1.contains("longer"));
        assert_eq!(out[2].0, 3);
        assert_eq!(out[2].1.as_ref().unwrap().id, "b");
        // Exactly the limit is fine.
        let mut input = vec![b' '; MAX_LINE_LEN - 10];
        input.extend(b"{\"id\":\"a\"}");
        let out = rows(&input);
        assert_eq!(out[0].1.as_ref().unwrap().id, "a");
    }
}
