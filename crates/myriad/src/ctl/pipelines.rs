//! `myriad ctl pipelines status [NAME]`: the pipelines' state, last error and counters
//! (`GET /api/v1/pipelines[/{name}]`); the list as a table, one pipeline as JSON.
//! `myriad ctl pipelines apply FILE NAME` (`PUT /api/v1/pipelines/{name}`, the file a
//! `[[pipelines]]` entry as JSON or TOML) and `myriad ctl pipelines delete NAME`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::Value;

use super::encode::percent_encode;
use super::request::{API_PREFIX, ApiRequest, Method};
use super::table::Table;

/// `ctl pipelines ...`
#[derive(Debug, Subcommand)]
pub enum PipelinesCommand {
    /// Every pipeline's state and counters (a table), or one pipeline's (JSON).
    Status {
        /// One pipeline's name.
        name: Option<String>,
    },
    /// Creates or replaces a pipeline from a file: one `[[pipelines]]` entry as JSON
    /// (`.json`) or TOML (any other name; the entry's keys at the top level).
    Apply {
        /// The definition.
        file: PathBuf,
        /// The pipeline's name.
        name: String,
    },
    /// Stops and deletes a pipeline defined over the API.
    Delete {
        /// The pipeline's name.
        name: String,
    },
}

/// The most bytes of a definition file read.
const MAX_DEFINITION_BYTES: u64 = 1024 * 1024;

/// A definition file as JSON: `.json` as it is, anything else read as TOML.
fn definition(path: &Path) -> Result<Value> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_DEFINITION_BYTES {
        bail!(
            "{}: larger than {MAX_DEFINITION_BYTES} bytes",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_definition(path, &text)
}

fn parse_definition(path: &Path, text: &str) -> Result<Value> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        serde_json::from_str(text).with_context(|| format!("{}: not JSON", path.display()))
    } else {
        let table: toml::Table =
            toml::from_str(text).with_context(|| format!("{}: not TOML", path.display()))?;
        serde_json::to_value(table).with_context(|| format!("{}: not JSON", path.display()))
    }
}

fn pipeline_path(name: &str) -> String {
    format!("{API_PREFIX}/pipelines/{}", percent_encode(name))
}

/// The request for `command` (`apply` reads its file).
pub fn request(command: &PipelinesCommand) -> Result<ApiRequest> {
    Ok(match command {
        PipelinesCommand::Apply { file, name } => {
            ApiRequest::new(Method::Put, pipeline_path(name)).json(definition(file)?)
        }
        PipelinesCommand::Delete { name } => ApiRequest::new(Method::Delete, pipeline_path(name)),
        PipelinesCommand::Status { name: None } => {
            ApiRequest::new(Method::Get, format!("{API_PREFIX}/pipelines"))
        }
        PipelinesCommand::Status { name: Some(name) } => {
            ApiRequest::new(Method::Get, pipeline_path(name))
        }
    })
}

/// The columns of the list table and where each value is in a pipeline's JSON.
const COLUMNS: [(&str, &[&str]); 10] = [
    ("name", &["name"]),
    ("state", &["state"]),
    ("source", &["source"]),
    ("sink", &["sink"]),
    ("received", &["records", "received"]),
    ("committed", &["records", "committed"]),
    ("dead letters", &["dead_letters"]),
    ("retries", &["retries"]),
    ("lag", &["lag"]),
    ("last error", &["last_error"]),
];

/// `{"pipelines":[...]}` as a table, one row per pipeline.
pub fn table(body: &str) -> Result<String> {
    let list: Value = serde_json::from_str(body).context("the API answered with invalid JSON")?;
    let mut table = Table::new(&COLUMNS.map(|(header, _)| header));
    for pipeline in list["pipelines"].as_array().into_iter().flatten() {
        let cells = COLUMNS
            .iter()
            .map(|(_, path)| {
                let value = path.iter().fold(pipeline, |v, key| &v[*key]);
                match value {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            })
            .collect();
        table.row(cells);
    }
    Ok(table.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_becomes_one_row_per_pipeline() {
        let body = r#"{"pipelines":[{"name":"hot","state":"retrying","source":"a/+/t","sink":"file",
            "records":{"received":7,"committed":5},"dead_letters":1,"retries":2,"lag":2,
            "last_error":"file sink write: No such file"},
            {"name":"cold","state":"running","source":"b/#","sink":"mqtt","records":{},
            "dead_letters":0,"retries":0,"lag":0,"last_error":null}]}"#;
        let text = table(body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].ends_with("LAST ERROR"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("hot") && lines[1].contains("retrying"),
            "{text}"
        );
        assert!(lines[1].contains("file sink write: No such file"), "{text}");
        assert!(
            lines[2].starts_with("cold") && lines[2].contains("running"),
            "{text}"
        );
        assert!(table("not json").is_err());
    }

    #[test]
    fn a_toml_definition_becomes_the_same_json() {
        let toml = "sql = \"SELECT * FROM 'a/#'\"\n[sink]\ntype = \"file\"\npath = \"out.jsonl\"\n";
        let json =
            r#"{"sql": "SELECT * FROM 'a/#'", "sink": {"type": "file", "path": "out.jsonl"}}"#;
        let from_toml = parse_definition(Path::new("p.toml"), toml).unwrap();
        let from_json = parse_definition(Path::new("p.JSON"), json).unwrap();
        assert_eq!(from_toml, from_json);
        assert!(parse_definition(Path::new("p.json"), toml).is_err());
    }

    #[test]
    fn names_are_percent_encoded() {
        let request = request(&PipelinesCommand::Status {
            name: Some("a/b".into()),
        })
        .unwrap();
        assert_eq!(request.path, "/api/v1/pipelines/a%2Fb");
    }
}
