//! `myriad ctl telemetry ...`: query, latest values, export and bulk write of device telemetry.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use super::encode::percent_encode;
use super::request::{API_PREFIX, ApiBody, ApiRequest, Method};
use super::table::Table;

/// Largest line protocol body read from standard input: the server's write limit (4 MiB) plus
/// one byte, so one past the limit reaches the server and gets its 413.
pub const MAX_STDIN_BODY: u64 = 4 * 1024 * 1024 + 1;

/// `ctl telemetry ...`
#[derive(Debug, Subcommand)]
pub enum TelemetryCommand {
    /// Points of a device's metrics, raw or aggregated per --step.
    Query(TelemetryQuery),
    /// The newest point of each of a device's metrics.
    Latest(DeviceArg),
    /// Every raw point of a device in a range, streamed to standard output (CSV or NDJSON).
    Export(TelemetryExport),
    /// Write InfluxDB line protocol (metric `<measurement>.<field>`, device from the `device`
    /// tag) from a file, or `-` for standard input (at most 4 MiB a request).
    Write(TelemetryWrite),
}

/// A device id.
#[derive(Debug, Args)]
pub struct DeviceArg {
    /// The device id.
    pub device: String,
}

/// `ctl telemetry query`
#[derive(Debug, Args)]
pub struct TelemetryQuery {
    /// The device id.
    pub device: String,
    /// Comma-separated metric names (default: all).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Start, unix ms (default: one day before --to).
    #[arg(long)]
    pub from: Option<i64>,
    /// End, unix ms, excluded (default: now plus one hour).
    #[arg(long)]
    pub to: Option<i64>,
    /// Bucket width, ms: aggregate.
    #[arg(long)]
    pub step: Option<i64>,
    /// avg, min, max, sum, count, last or rate (needs --step).
    #[arg(long)]
    pub agg: Option<String>,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// `ts,metric,value` with a header line.
    Csv,
    /// One `{"ts","metric","value"}` object a line.
    Ndjson,
}

/// `ctl telemetry export`
#[derive(Debug, Args)]
pub struct TelemetryExport {
    /// The device id.
    pub device: String,
    /// Comma-separated metric names (default: all).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Start, unix ms (default 0).
    #[arg(long)]
    pub from: Option<i64>,
    /// End, unix ms, excluded (default: now plus one hour).
    #[arg(long)]
    pub to: Option<i64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: ExportFormat,
}

/// `ctl telemetry write`
#[derive(Debug, Args)]
pub struct TelemetryWrite {
    /// Line protocol file, or `-` for standard input.
    pub file: PathBuf,
    /// Unit of the timestamps: ns (default), us, ms or s.
    #[arg(long)]
    pub precision: Option<String>,
    /// The body, once read from standard input (filled in before the request is built).
    #[arg(skip)]
    pub stdin_body: Option<Vec<u8>>,
}

fn telemetry_path(device: &str) -> String {
    format!("{API_PREFIX}/devices/{}/telemetry", percent_encode(device))
}

/// The request of `cmd`.
pub fn request(cmd: &TelemetryCommand) -> Result<ApiRequest> {
    Ok(match cmd {
        TelemetryCommand::Query(q) => ApiRequest::new(Method::Get, telemetry_path(&q.device))
            .param("metrics", q.metrics.as_ref())
            .param("from", q.from)
            .param("to", q.to)
            .param("step", q.step)
            .param("agg", q.agg.as_ref()),
        TelemetryCommand::Latest(d) => {
            ApiRequest::new(Method::Get, format!("{}/latest", telemetry_path(&d.device)))
        }
        TelemetryCommand::Export(e) => {
            let format = match e.format {
                ExportFormat::Csv => "csv",
                ExportFormat::Ndjson => "ndjson",
            };
            ApiRequest::new(Method::Get, format!("{}/export", telemetry_path(&e.device)))
                .param("metrics", e.metrics.as_ref())
                .param("from", e.from)
                .param("to", e.to)
                .param("format", Some(format))
        }
        TelemetryCommand::Write(w) => {
            let mut r = ApiRequest::new(Method::Post, format!("{API_PREFIX}/telemetry/write"))
                .param("precision", w.precision.as_ref());
            r.body = if w.file.as_os_str() == "-" {
                let data = w
                    .stdin_body
                    .clone()
                    .context("the body has not been read from standard input yet")?;
                ApiBody::Bytes {
                    data,
                    content_type: "text/plain",
                }
            } else {
                ApiBody::File {
                    path: w.file.clone(),
                    content_type: "text/plain",
                }
            };
            r
        }
    })
}

/// Reads the body of `ctl telemetry write -` from `input` (at most [`MAX_STDIN_BODY`] bytes).
pub fn fill_from_stdin(cmd: &mut TelemetryCommand, input: impl std::io::Read) -> Result<()> {
    if let TelemetryCommand::Write(w) = cmd
        && w.file.as_os_str() == "-"
    {
        use std::io::Read as _;
        let mut data = Vec::new();
        input
            .take(MAX_STDIN_BODY)
            .read_to_end(&mut data)
            .context("reading line protocol from standard input")?;
        w.stdin_body = Some(data);
    }
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `METRIC TS VALUE` rows of a query answer (`{"series": [{"metric", "points": [[ts, v]]}]}`).
pub fn query_table(body: &str) -> Result<String> {
    let doc: Value = serde_json::from_str(body).context("the API answer is not JSON")?;
    let mut table = Table::new(&["metric", "ts", "value"]);
    for s in doc["series"].as_array().into_iter().flatten() {
        let metric = cell(&s["metric"]);
        for p in s["points"].as_array().into_iter().flatten() {
            table.row(vec![metric.clone(), cell(&p[0]), cell(&p[1])]);
        }
    }
    Ok(table.render())
}

/// `METRIC TS VALUE` rows of a latest answer (`{"metrics": {"m": {"ts", "value"}}}`).
pub fn latest_table(body: &str) -> Result<String> {
    let doc: Value = serde_json::from_str(body).context("the API answer is not JSON")?;
    let mut table = Table::new(&["metric", "ts", "value"]);
    for (metric, p) in doc["metrics"].as_object().into_iter().flatten() {
        table.row(vec![metric.clone(), cell(&p["ts"]), cell(&p["value"])]);
    }
    Ok(table.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let r = request(&TelemetryCommand::Query(TelemetryQuery {
            device: "d 1".into(),
            metrics: Some("a,b".into()),
            from: Some(5),
            to: None,
            step: Some(60_000),
            agg: Some("max".into()),
        }))
        .unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(
            r.url("http://h"),
            "http://h/api/v1/devices/d%201/telemetry?metrics=a%2Cb&from=5&step=60000&agg=max"
        );
        let mut w = TelemetryCommand::Write(TelemetryWrite {
            file: "-".into(),
            precision: Some("ms".into()),
            stdin_body: None,
        });
        assert!(request(&w).is_err());
        fill_from_stdin(&mut w, &b"m,device=d x=1"[..]).unwrap();
        let r = request(&w).unwrap();
        assert_eq!(
            r.url("http://h"),
            "http://h/api/v1/telemetry/write?precision=ms"
        );
        assert_eq!(
            r.body,
            ApiBody::Bytes {
                data: b"m,device=d x=1".to_vec(),
                content_type: "text/plain"
            }
        );
    }

    #[test]
    fn tables() {
        let t = query_table(r#"{"series":[{"metric":"a","points":[[1,2.5],[2,true]]}]}"#).unwrap();
        assert_eq!(t, "METRIC  TS  VALUE\na       1   2.5\na       2   true\n");
        let t = latest_table(r#"{"metrics":{"a":{"ts":1,"value":3}}}"#).unwrap();
        assert_eq!(t, "METRIC  TS  VALUE\na       1   3\n");
    }
}
