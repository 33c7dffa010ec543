//! Turning API answers into what `myriad ctl` prints: the shape of each
//! command's answer, and its rendering as JSON or as a table. Everything
//! here is pure: bodies in, text out.

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::args::{ApiCommand, AppsCommand, DevicesCommand, PresenceCommand, ShadowCommand};
use super::lists;
use super::telemetry::TelemetryCommand;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The server's JSON exactly, one document.
    Json,
    /// A table (key / value for single objects).
    Table,
}

/// What a command's successful answer looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One JSON object (a device, a shadow, a count...).
    Object,
    /// A page of devices, `{"items":[Device..],"next":..}`.
    DeviceList,
    /// A page of online device ids, `{"items":["id"..],"next":..,"online":n}`.
    PresenceList,
    /// Application clients, `{"items":[App..]}`.
    AppList,
    /// A bulk import report.
    Import,
    /// Nothing (`204 No Content`); a body, if any, is shown as an object.
    NoContent,
    /// A telemetry query answer (table: metric, ts, value).
    TelemetryQuery,
    /// A telemetry latest answer (table: metric, ts, value).
    TelemetryLatest,
    /// `{"pipelines":[..]}` (table: one row per pipeline).
    PipelineList,
}

/// The shape of `command`'s answer.
pub fn shape(command: &ApiCommand) -> Shape {
    match command {
        ApiCommand::Devices(cmd) => match cmd {
            DevicesCommand::List(_) => Shape::DeviceList,
            DevicesCommand::Import(_) => Shape::Import,
            DevicesCommand::Delete(_) | DevicesCommand::SetPassword(_) => Shape::NoContent,
            DevicesCommand::Create(_)
            | DevicesCommand::Groups(_)
            | DevicesCommand::Get(_)
            | DevicesCommand::Update(_)
            | DevicesCommand::Kick(_) => Shape::Object,
        },
        ApiCommand::Presence(PresenceCommand::List(_)) => Shape::PresenceList,
        ApiCommand::Presence(_) => Shape::Object,
        ApiCommand::Shadow(ShadowCommand::Delete(_)) => Shape::NoContent,
        ApiCommand::Shadow(_) => Shape::Object,
        ApiCommand::Apps(AppsCommand::List) => Shape::AppList,
        ApiCommand::Apps(AppsCommand::Delete(_)) => Shape::NoContent,
        ApiCommand::Apps(_) => Shape::Object,
        ApiCommand::Commands(_)
        | ApiCommand::DeviceCerts(_)
        | ApiCommand::Cas(_)
        | ApiCommand::Tls(_) => Shape::Object,
        ApiCommand::Telemetry(TelemetryCommand::Query(_)) => Shape::TelemetryQuery,
        ApiCommand::Telemetry(TelemetryCommand::Latest(_)) => Shape::TelemetryLatest,
        ApiCommand::Telemetry(_) => Shape::Object,
        ApiCommand::Pipelines(super::pipelines::PipelinesCommand::Status { name: None }) => {
            Shape::PipelineList
        }
        ApiCommand::Pipelines(super::pipelines::PipelinesCommand::Delete { .. }) => {
            Shape::NoContent
        }
        ApiCommand::Pipelines(_) => Shape::Object,
        ApiCommand::Users(cmd) if super::users::no_content(cmd) => Shape::NoContent,
        ApiCommand::Users(_) | ApiCommand::Audit(_) | ApiCommand::Debug(_) => Shape::Object,
    }
}

/// What to print.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// For standard output.
    pub stdout: String,
    /// Hints for standard error (e.g. how to get the next page).
    pub notes: Vec<String>,
    /// Whether the command failed although the request succeeded (an
    /// import with failed rows).
    pub failed: bool,
}

impl Rendered {
    fn out(stdout: String) -> Self {
        Rendered {
            stdout,
            ..Rendered::default()
        }
    }
}

/// Renders the answer bodies of a command: one body, or one per page for
/// `--all` (merged into one document).
pub fn render(shape: Shape, format: Option<OutputFormat>, bodies: &[String]) -> Result<Rendered> {
    let merged;
    let body = match bodies {
        [] => "",
        [one] => one.as_str(),
        pages => {
            merged = merge_pages(pages)?;
            merged.as_str()
        }
    };
    match shape {
        Shape::NoContent if body.trim().is_empty() => Ok(Rendered::default()),
        Shape::Object | Shape::NoContent => match format {
            Some(OutputFormat::Json) => Ok(Rendered::out(exact(body))),
            Some(OutputFormat::Table) => Ok(Rendered::out(lists::object_table(body)?)),
            None => Ok(Rendered::out(pretty(body)?)),
        },
        Shape::DeviceList | Shape::PresenceList | Shape::AppList => match format {
            Some(OutputFormat::Json) => Ok(Rendered::out(exact(body))),
            _ => lists::list_table(shape, body),
        },
        Shape::PipelineList => match format {
            Some(OutputFormat::Json) => Ok(Rendered::out(exact(body))),
            _ => Ok(Rendered::out(super::pipelines::table(body)?)),
        },
        Shape::TelemetryQuery | Shape::TelemetryLatest => match format {
            Some(OutputFormat::Json) => Ok(Rendered::out(exact(body))),
            _ if shape == Shape::TelemetryQuery => {
                Ok(Rendered::out(super::telemetry::query_table(body)?))
            }
            _ => Ok(Rendered::out(super::telemetry::latest_table(body)?)),
        },
        Shape::Import => {
            let mut rendered = lists::import_report(body)?;
            if format == Some(OutputFormat::Json) {
                rendered.stdout = exact(body);
            }
            Ok(rendered)
        }
    }
}

/// The body as received, ending in a newline.
fn exact(body: &str) -> String {
    let mut out = body.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The body re-indented, members in the server's order.
pub fn pretty(body: &str) -> Result<String> {
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::pretty(&mut out);
    serde_transcode::transcode(&mut deserializer, &mut serializer)
        .and_then(|()| deserializer.end())
        .context("the API answered with something that is not JSON")?;
    let mut text = String::from_utf8(out).context("the API answered with invalid UTF-8")?;
    text.push('\n');
    Ok(text)
}

/// One page of a paged list.
#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    online: Option<Value>,
}

/// The `next` cursor of a page body.
pub fn page_next(body: &str) -> Result<Option<String>> {
    let page: RawPage = serde_json::from_str(body)
        .context("the API answered a list request with something that is not a page")?;
    Ok(page.next)
}

/// Several pages as one: every item in order, `next: null`, and the
/// last page's `online` count where pages have one.
fn merge_pages(pages: &[String]) -> Result<String> {
    let mut items: Vec<&RawValue> = Vec::new();
    let mut online = None;
    for body in pages {
        let page: RawPage = serde_json::from_str(body)
            .context("the API answered a list request with something that is not a page")?;
        items.extend(page.items);
        online = page.online.or(online);
    }
    let mut out = String::from("{\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item.get());
    }
    out.push_str("],\"next\":null");
    if let Some(online) = online {
        out.push_str(",\"online\":");
        out.push_str(&online.to_string());
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
#[path = "output_tests.rs"]
mod tests;
