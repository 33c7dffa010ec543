//! `myriad ctl pipelines status [NAME]`: the pipelines' state, last error and counters
//! (`GET /api/v1/pipelines[/{name}]`); the list as a table, one pipeline as JSON.

use anyhow::{Context, Result};
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
}

/// The request for `command`.
pub fn request(command: &PipelinesCommand) -> ApiRequest {
    match command {
        PipelinesCommand::Status { name: None } => {
            ApiRequest::new(Method::Get, format!("{API_PREFIX}/pipelines"))
        }
        PipelinesCommand::Status { name: Some(name) } => ApiRequest::new(
            Method::Get,
            format!("{API_PREFIX}/pipelines/{}", percent_encode(name)),
        ),
    }
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
    fn names_are_percent_encoded() {
        let request = request(&PipelinesCommand::Status {
            name: Some("a/b".into()),
        });
        assert_eq!(request.path, "/api/v1/pipelines/a%2Fb");
    }
}
