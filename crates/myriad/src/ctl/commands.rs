//! `myriad ctl commands ...`: send, follow and cancel device commands.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::args::parse_json;
use super::encode::percent_encode;
use super::request::{API_PREFIX, ApiRequest, Method};

/// `ctl commands ...`
#[derive(Debug, Subcommand)]
pub enum CommandsCommand {
    /// Send a command to one device.
    Send(CommandSend),
    /// Show one command with its status history.
    Get(CommandIdArg),
    /// List a device's commands, newest first.
    List(CommandList),
    /// Cancel a command that is not final yet.
    Cancel(CommandIdArg),
    /// Send a command to several devices or a group (returns a batch id).
    Batch(CommandBatch),
    /// Show the progress of a batch.
    BatchStatus(BatchIdArg),
    /// Cancel a batch: targets not yet handled get no command, its open
    /// commands are cancelled.
    BatchCancel(BatchIdArg),
    /// Show the circuit breakers.
    Breakers,
}

/// A priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PriorityArg {
    /// Critical: queued for offline devices, retried, in order.
    L1,
    /// Normal (the default).
    L2,
    /// Low: rate limited, dropped first.
    L3,
}

/// The fields of a command.
#[derive(Debug, Args)]
pub struct CommandFields {
    /// The command's name.
    pub name: String,
    /// A JSON payload.
    #[arg(long, value_name = "JSON", value_parser = parse_json, conflicts_with = "payload_base64")]
    pub payload: Option<Value>,
    /// A binary payload, base64.
    #[arg(long, value_name = "BASE64")]
    pub payload_base64: Option<String>,
    /// The priority class.
    #[arg(long, value_enum)]
    pub priority: Option<PriorityArg>,
    /// Reply timeout once sent, ms.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Expiry, ms from now.
    #[arg(long)]
    pub expires_in_ms: Option<u64>,
    /// The command only reads state (an L2 read falls back to the shadow).
    #[arg(long)]
    pub read: bool,
}

/// `ctl commands send DEVICE NAME ...`
#[derive(Debug, Args)]
pub struct CommandSend {
    /// The device id.
    pub device: String,
    /// The command.
    #[command(flatten)]
    pub fields: CommandFields,
}

/// `ctl commands batch NAME (--device D ... | --group G) ...`
#[derive(Debug, Args)]
pub struct CommandBatch {
    /// A target device (repeat for more).
    #[arg(long = "device", value_name = "ID", required_unless_present = "group")]
    pub devices: Vec<String>,
    /// Every device of this group.
    #[arg(long, conflicts_with = "devices")]
    pub group: Option<String>,
    /// The command.
    #[command(flatten)]
    pub fields: CommandFields,
}

/// A command id.
#[derive(Debug, Args)]
pub struct CommandIdArg {
    /// The command id.
    pub command_id: String,
}

/// A batch id.
#[derive(Debug, Args)]
pub struct BatchIdArg {
    /// The batch id.
    pub batch_id: String,
}

/// `ctl commands list DEVICE ...`
#[derive(Debug, Args)]
pub struct CommandList {
    /// The device id.
    pub device: String,
    /// At most this many.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Only commands older than this command id.
    #[arg(long, value_name = "COMMAND_ID")]
    pub before: Option<String>,
}

fn body(fields: &CommandFields) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("name".into(), json!(fields.name));
    if let Some(payload) = &fields.payload {
        body.insert("payload".into(), payload.clone());
    }
    if let Some(payload) = &fields.payload_base64 {
        body.insert("payload_base64".into(), json!(payload));
    }
    if let Some(priority) = fields.priority {
        let name = match priority {
            PriorityArg::L1 => "l1",
            PriorityArg::L2 => "l2",
            PriorityArg::L3 => "l3",
        };
        body.insert("priority".into(), json!(name));
    }
    if let Some(ms) = fields.timeout_ms {
        body.insert("timeout_ms".into(), json!(ms));
    }
    if let Some(ms) = fields.expires_in_ms {
        body.insert("expires_in_ms".into(), json!(ms));
    }
    if fields.read {
        body.insert("read".into(), json!(true));
    }
    body
}

/// The request of a `commands` subcommand.
pub fn request(cmd: &CommandsCommand) -> ApiRequest {
    let command_path = |id: &str| format!("{API_PREFIX}/commands/{}", percent_encode(id));
    match cmd {
        CommandsCommand::Send(send) => ApiRequest::new(
            Method::Post,
            format!(
                "{API_PREFIX}/devices/{}/commands",
                percent_encode(&send.device)
            ),
        )
        .json(Value::Object(body(&send.fields))),
        CommandsCommand::Get(arg) => ApiRequest::new(Method::Get, command_path(&arg.command_id)),
        CommandsCommand::Cancel(arg) => {
            ApiRequest::new(Method::Delete, command_path(&arg.command_id))
        }
        CommandsCommand::List(list) => ApiRequest::new(
            Method::Get,
            format!(
                "{API_PREFIX}/devices/{}/commands",
                percent_encode(&list.device)
            ),
        )
        .param("limit", list.limit)
        .param("before", list.before.as_deref()),
        CommandsCommand::Batch(batch) => {
            let mut body = body(&batch.fields);
            match &batch.group {
                Some(group) => body.insert("group".into(), json!(group)),
                None => body.insert("devices".into(), json!(batch.devices)),
            };
            ApiRequest::new(Method::Post, format!("{API_PREFIX}/commands"))
                .json(Value::Object(body))
        }
        CommandsCommand::BatchStatus(arg) => ApiRequest::new(
            Method::Get,
            format!(
                "{API_PREFIX}/command-batches/{}",
                percent_encode(&arg.batch_id)
            ),
        ),
        CommandsCommand::BatchCancel(arg) => ApiRequest::new(
            Method::Delete,
            format!(
                "{API_PREFIX}/command-batches/{}",
                percent_encode(&arg.batch_id)
            ),
        ),
        CommandsCommand::Breakers => {
            ApiRequest::new(Method::Get, format!("{API_PREFIX}/commands/breakers"))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::ctl::request::ApiBody;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: CommandsCommand,
    }

    fn parse(args: &[&str]) -> ApiRequest {
        let cli = Cli::try_parse_from(std::iter::once("commands").chain(args.iter().copied()))
            .expect("parses");
        request(&cli.cmd)
    }

    #[test]
    fn send_builds_the_body() {
        let r = parse(&[
            "send",
            "d 1",
            "reboot",
            "--payload",
            "{\"a\":1}",
            "--priority",
            "l1",
            "--timeout-ms",
            "500",
            "--read",
        ]);
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.path, "/api/v1/devices/d%201/commands");
        assert_eq!(
            r.body,
            ApiBody::Json(
                json!({"name": "reboot", "payload": {"a": 1}, "priority": "l1", "timeout_ms": 500, "read": true})
            )
        );
    }

    #[test]
    fn batch_targets_and_other_routes() {
        let r = parse(&["batch", "ping", "--group", "lab"]);
        assert_eq!(r.path, "/api/v1/commands");
        assert_eq!(
            r.body,
            ApiBody::Json(json!({"name": "ping", "group": "lab"}))
        );
        let r = parse(&["batch", "ping", "--device", "a", "--device", "b"]);
        assert_eq!(
            r.body,
            ApiBody::Json(json!({"name": "ping", "devices": ["a", "b"]}))
        );
        assert!(
            Cli::try_parse_from(["commands", "batch", "ping"]).is_err(),
            "needs targets"
        );
        assert_eq!(parse(&["cancel", "abc"]).method, Method::Delete);
        assert_eq!(parse(&["get", "abc"]).path, "/api/v1/commands/abc");
        assert_eq!(
            parse(&["batch-status", "b1"]).path,
            "/api/v1/command-batches/b1"
        );
        assert_eq!(parse(&["breakers"]).path, "/api/v1/commands/breakers");
        let r = parse(&["list", "d1", "--limit", "5"]);
        assert_eq!(r.query, vec![("limit".to_string(), "5".to_string())]);
        assert!(Cli::try_parse_from(["commands", "send", "d", "x", "--payload", "{bad"]).is_err());
    }
}
