//! Tables of the API's documents: device, app and presence lists, single
//! objects as key / value pairs, and the import report.

use anyhow::{Context, Result};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::output::{Rendered, Shape};
use super::table::Table;

const NOT_JSON: &str = "the API answered with something that is not the expected JSON";

/// A page of a list as the tables need it.
#[derive(Deserialize)]
struct Page {
    items: Vec<Value>,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    online: Option<u64>,
}

/// A list answer as a table, with a note on standard error for the next
/// page and the online count.
pub fn list_table(shape: Shape, body: &str) -> Result<Rendered> {
    let page: Page = serde_json::from_str(body).context(NOT_JSON)?;
    let table = match shape {
        Shape::PresenceList => {
            let mut table = Table::new(&["id"]);
            for item in &page.items {
                table.row(vec![text(Some(item))]);
            }
            table
        }
        Shape::AppList => {
            let mut table = Table::new(&["id", "name", "admin", "publish", "subscribe"]);
            for item in &page.items {
                let cells = ["id", "name", "admin", "publish", "subscribe"]
                    .iter()
                    .map(|field| text(item.get(field)))
                    .collect();
                table.row(cells);
            }
            table
        }
        _ => {
            let mut table = Table::new(&["id", "name", "enabled", "groups"]);
            for item in &page.items {
                let cells = ["id", "name", "enabled", "groups"]
                    .iter()
                    .map(|field| text(item.get(field)))
                    .collect();
                table.row(cells);
            }
            table
        }
    };
    let mut notes = Vec::new();
    if let Some(online) = page.online {
        notes.push(format!("{online} online"));
    }
    if let Some(next) = page.next {
        notes.push(format!("more: --after {next} (or --all)"));
    }
    Ok(Rendered {
        stdout: table.render(),
        notes,
        failed: false,
    })
}

/// A cell: strings bare, arrays of strings comma-separated, absent or
/// null empty, anything else as compact JSON.
fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// An object as a two-column table (`FIELD`, `VALUE`) in the server's
/// member order; anything but an object is shown as pretty JSON.
pub fn object_table(body: &str) -> Result<String> {
    match serde_json::from_str::<Ordered>(body) {
        Ok(Ordered(members)) => {
            let mut table = Table::new(&["field", "value"]);
            for (key, value) in members {
                table.row(vec![key, text(Some(&value))]);
            }
            Ok(table.render())
        }
        Err(_) => super::output::pretty(body),
    }
}

/// A JSON object's members in document order.
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Ordered(members))
            }
        }
        deserializer.deserialize_map(OrderedVisitor)
    }
}

/// The import report, `{"imported","failed":[{"line","id","message"}],
/// "truncated_errors"}`.
#[derive(Deserialize)]
struct ImportReport {
    imported: u64,
    #[serde(default)]
    updated: u64,
    #[serde(default)]
    failed: Vec<ImportFailure>,
    #[serde(default)]
    truncated_errors: bool,
}

#[derive(Deserialize)]
struct ImportFailure {
    line: u64,
    #[serde(default)]
    message: String,
}

/// `imported N, failed M`, then `line L: message` per failed row; failed
/// when any row failed.
pub fn import_report(body: &str) -> Result<Rendered> {
    let report: ImportReport = serde_json::from_str(body).context(NOT_JSON)?;
    let mut out = if report.updated > 0 {
        format!(
            "imported {}, updated {}, failed {}\n",
            report.imported,
            report.updated,
            report.failed.len()
        )
    } else {
        format!(
            "imported {}, failed {}\n",
            report.imported,
            report.failed.len()
        )
    };
    for failure in &report.failed {
        let message: String = failure
            .message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        out.push_str(&format!("line {}: {}\n", failure.line, message));
    }
    if report.truncated_errors {
        out.push_str("(more rows failed: the server kept only the first errors)\n");
    }
    Ok(Rendered {
        stdout: out,
        notes: Vec::new(),
        failed: !report.failed.is_empty() || report.truncated_errors,
    })
}
