//! Command handlers (`[[commands]]`): the agent subscribes `$commands/{id}/+` on the device's
//! connection when any handler is configured, runs the handler configured for the command's
//! name and replies in the form the command service defines (docs/topics.md, Commands):
//!
//! - MQTT 5.0: the payload as sent; the reply goes to the Response Topic with the Correlation
//!   Data echoed; the command id is the user property `command_id` (else the Correlation
//!   Data, else the Response Topic's last level);
//! - MQTT 3.1.1: the envelope `{"command_id", "name", "reply_topic", "payload"}` (or
//!   `"payload_base64"`); the reply goes to `reply_topic`.
//!
//! The handler gets the payload on stdin (JSON text, or the raw bytes). Each stdout line that
//! is a JSON object with `"status": "in_progress"` is sent at once as a progress reply; when
//! the handler exits 0 the reply is `{"status": "succeeded", "result": <its last other stdout
//! line, as JSON when it parses, else as text>}`; another exit, a timeout (the handler is
//! killed) or a handler that does not start is `{"status": "failed", "result": {"reason",
//! "output"}}`; a command without a handler is `failed` with the reason `no handler`.
//!
//! Commands run one at a time, in arrival order. A command id is recorded
//! ([`myriad_agent::dedup`], `{state_dir}/commands`) before its handler runs, so a command
//! delivered again (the platform's delivery is at least once) is not run or answered again; a
//! crash while a handler runs leaves that command unanswered (the platform times it out)
//! rather than run twice.
//!
//! # Limits
//!
//! | limit | value |
//! |---|---|
//! | handler output read | [`MAX_OUTPUT`] (64 KiB; past it the rest is ignored) |
//! | commands waiting | [`QUEUED_COMMANDS`] (16; more are dropped and counted by the client: the platform's retry delivers them again) |
//! | command ids remembered | [`myriad_agent::dedup::DEFAULT_CAPACITY`] (1,024) |

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use bytes::Bytes;
use myriad_agent::client::{Client, ClientBuilder, Message, Qos};
use myriad_agent::config::CommandHandler;
use myriad_agent::dedup::{DEFAULT_CAPACITY, Dedup};
use myriad_agent::fs::RealFs;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Most bytes of a handler's stdout read.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// Commands waiting for the one running.
pub const QUEUED_COMMANDS: usize = 16;

/// Subscribes `$commands/{id}/+` when there are handlers.
pub(super) fn declare(
    builder: &mut ClientBuilder,
    id: &str,
    handlers: &[CommandHandler],
) -> Result<Option<Receiver<Message>>> {
    if handlers.is_empty() {
        return Ok(None);
    }
    Ok(Some(builder.subscribe(
        &format!("$commands/{id}/+"),
        Qos::AtLeastOnce,
        QUEUED_COMMANDS,
    )?))
}

/// Opens the command-id log and starts the handler task.
pub(super) fn start(
    rt: &Runtime,
    client: Client,
    id: &str,
    handlers: Vec<CommandHandler>,
    state_dir: &std::path::Path,
    rx: Receiver<Message>,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>> {
    let dir = state_dir.join("commands");
    let dedup = Dedup::open(RealFs, &dir, DEFAULT_CAPACITY)
        .with_context(|| format!("command-id log in {}", dir.display()))?;
    let handlers = handlers.into_iter().map(|h| (h.name.clone(), h)).collect();
    Ok(rt.spawn(run(
        client,
        id.to_string(),
        handlers,
        Arc::new(Mutex::new(dedup)),
        rx,
        cancel,
    )))
}

/// A command as received, in either form.
#[derive(Debug, PartialEq)]
struct Request {
    command_id: String,
    name: String,
    reply_topic: String,
    correlation: Option<Bytes>,
    payload: Vec<u8>,
}

/// The request in a message on `$commands/{id}/{name}`; `None` when it is not one.
fn parse_request(id: &str, m: &Message) -> Option<Request> {
    let name = m.topic.strip_prefix(&format!("$commands/{id}/"))?;
    if name.is_empty() || name.contains('/') || name == "reply" || name == "request" {
        return None;
    }
    let reply_prefix = format!("$commands/{id}/reply/");
    let req = if let Some(rt) = &m.response_topic {
        let command_id = m
            .user_properties
            .iter()
            .find(|(k, _)| k == "command_id")
            .map(|(_, v)| v.clone())
            .or_else(|| {
                m.correlation_data
                    .as_ref()
                    .and_then(|c| std::str::from_utf8(c).ok().map(str::to_string))
            })
            .or_else(|| rt.strip_prefix(&reply_prefix).map(str::to_string))?;
        Request {
            command_id,
            name: name.to_string(),
            reply_topic: rt.clone(),
            correlation: m.correlation_data.clone(),
            payload: m.payload.to_vec(),
        }
    } else {
        let env: Value = serde_json::from_slice(&m.payload).ok()?;
        let payload = match (env.get("payload"), env.get("payload_base64")) {
            (Some(p), _) => p.to_string().into_bytes(),
            (None, Some(Value::String(b))) => {
                base64::engine::general_purpose::STANDARD.decode(b).ok()?
            }
            _ => Vec::new(),
        };
        Request {
            command_id: env.get("command_id")?.as_str()?.to_string(),
            name: name.to_string(),
            reply_topic: env.get("reply_topic")?.as_str()?.to_string(),
            correlation: None,
            payload,
        }
    };
    // Replies go only to this device's reply topics.
    if !req.reply_topic.starts_with(&reply_prefix) || req.command_id.is_empty() {
        return None;
    }
    Some(req)
}

async fn run(
    client: Client,
    id: String,
    handlers: HashMap<String, CommandHandler>,
    dedup: Arc<Mutex<Dedup<RealFs>>>,
    mut rx: Receiver<Message>,
    cancel: CancellationToken,
) {
    loop {
        let m = tokio::select! {
            _ = cancel.cancelled() => return,
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let Some(req) = parse_request(&id, &m) else {
            tracing::warn!(topic = m.topic, "not a command, ignored");
            continue;
        };
        let d = dedup.clone();
        let cid = req.command_id.clone();
        let fresh = tokio::task::spawn_blocking(move || {
            d.lock().unwrap_or_else(|p| p.into_inner()).insert(&cid)
        })
        .await;
        match fresh {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::info!(
                    command_id = req.command_id,
                    "command seen already: not run again"
                );
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, command_id = req.command_id, "command id not recorded; running it anyway");
            }
            Err(_) => return,
        }
        tracing::info!(command_id = req.command_id, name = req.name, "command");
        let reply = tokio::select! {
            _ = cancel.cancelled() => return,
            r = handle(&client, &handlers, &req) => r,
        };
        if let Err(e) = client
            .publish_reply(
                req.reply_topic.clone(),
                reply.to_string(),
                req.correlation.clone(),
            )
            .await
        {
            tracing::warn!(error = %e, "command reply not queued");
            return;
        }
    }
}

fn failed(reason: &str, output: Option<Value>) -> Value {
    json!({"status": "failed", "result": {"reason": reason, "output": output}})
}

/// Runs the handler; returns the final reply (progress replies are published on the way).
async fn handle(
    client: &Client,
    handlers: &HashMap<String, CommandHandler>,
    req: &Request,
) -> Value {
    let Some(h) = handlers.get(&req.name) else {
        return failed(&format!("no handler for {}", req.name), None);
    };
    let mut child = match tokio::process::Command::new(&h.command[0])
        .args(&h.command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(&format!("handler did not start: {e}"), None),
    };
    let mut stdin = child.stdin.take();
    let payload = req.payload.clone();
    let feed = async move {
        if let Some(s) = stdin.as_mut() {
            // A handler that does not read its stdin is fine.
            let _ = s.write_all(&payload).await;
        }
        drop(stdin);
    };
    let Some(stdout) = child.stdout.take() else {
        return failed("handler has no stdout", None);
    };
    let mut last: Option<Value> = None;
    let read = async {
        let mut lines = tokio::io::BufReader::new(stdout.take(MAX_OUTPUT as u64)).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_string()));
            let progress = v
                .get("status")
                .and_then(Value::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case("in_progress"));
            if progress {
                if let Err(e) = client
                    .publish_reply(
                        req.reply_topic.clone(),
                        v.to_string(),
                        req.correlation.clone(),
                    )
                    .await
                {
                    tracing::warn!(error = %e, "progress reply not queued");
                }
            } else {
                last = Some(v);
            }
        }
        child.wait().await
    };
    let run = async {
        let (_, status) = tokio::join!(feed, read);
        status
    };
    match tokio::time::timeout(Duration::from_secs(h.timeout_secs), run).await {
        Err(_) => failed(&format!("timed out after {} s", h.timeout_secs), None),
        Ok(Err(e)) => failed(&format!("handler: {e}"), None),
        Ok(Ok(status)) if status.success() => {
            json!({"status": "succeeded", "result": last.unwrap_or(Value::Null)})
        }
        Ok(Ok(status)) => failed(&format!("handler exited with {status}"), last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &[u8]) -> Message {
        Message {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }
    }

    #[test]
    fn both_forms_parse_and_foreign_reply_topics_are_refused() {
        let mut m = msg("$commands/d1/reboot", b"{\"delay\":1}");
        m.response_topic = Some("$commands/d1/reply/c7".into());
        m.correlation_data = Some(Bytes::from_static(b"c7"));
        let r = parse_request("d1", &m).unwrap();
        assert_eq!(
            (r.command_id.as_str(), r.name.as_str(), r.payload.as_slice()),
            ("c7", "reboot", &b"{\"delay\":1}"[..])
        );
        m.user_properties = vec![("command_id".into(), "c8".into())];
        assert_eq!(parse_request("d1", &m).unwrap().command_id, "c8");
        m.response_topic = Some("$commands/d2/reply/c7".into());
        assert!(parse_request("d1", &m).is_none());
        let env = json!({"command_id": "c9", "name": "reboot",
            "reply_topic": "$commands/d1/reply/c9", "payload": {"delay": 2}});
        let r = parse_request(
            "d1",
            &msg("$commands/d1/reboot", env.to_string().as_bytes()),
        )
        .unwrap();
        assert_eq!(
            (r.command_id.as_str(), r.payload.as_slice()),
            ("c9", &b"{\"delay\":2}"[..])
        );
        let env = json!({"command_id": "c9", "reply_topic": "$commands/d1/reply/c9",
            "payload_base64": "AAE="});
        let r = parse_request("d1", &msg("$commands/d1/x", env.to_string().as_bytes())).unwrap();
        assert_eq!(r.payload, vec![0, 1]);
        assert!(parse_request("d1", &msg("$commands/d1/reply", b"{}")).is_none());
        assert!(parse_request("d1", &msg("$commands/d1/x", b"not json")).is_none());
    }
}
