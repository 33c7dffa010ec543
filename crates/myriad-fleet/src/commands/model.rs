//! Commands as stored and reported: ids, priority classes, statuses with
//! their timestamps, payloads and device replies.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Identifies one command: 32 lowercase hex digits, the first 12 the
/// creation time in unix milliseconds, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(String);

impl CommandId {
    /// A new id for a command created at `now_ms`.
    pub fn generate(now_ms: u64) -> CommandId {
        CommandId(time_sorted_id(now_ms))
    }

    /// Parses a stored or requested id (32 hex digits).
    pub fn parse(text: &str) -> Option<CommandId> {
        is_time_sorted_id(text).then(|| CommandId(text.to_ascii_lowercase()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one fan-out batch (same format as [`CommandId`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchId(String);

impl BatchId {
    /// A new id for a batch created at `now_ms`.
    pub fn generate(now_ms: u64) -> BatchId {
        BatchId(time_sorted_id(now_ms))
    }

    /// Parses an id (32 hex digits).
    pub fn parse(text: &str) -> Option<BatchId> {
        is_time_sorted_id(text).then(|| BatchId(text.to_ascii_lowercase()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn time_sorted_id(now_ms: u64) -> String {
    let mut random = [0u8; 10];
    // Without OS randomness the id is still unique enough per millisecond
    // thanks to the counter mixed in below.
    let _ = getrandom::fill(&mut random);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tail = u128::from_be_bytes({
        let mut wide = [0u8; 16];
        wide[6..].copy_from_slice(&random);
        wide
    });
    tail ^= u128::from(count);
    format!(
        "{:012x}{:020x}",
        now_ms & 0xffff_ffff_ffff,
        tail & ((1u128 << 80) - 1)
    )
}

fn is_time_sorted_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The priority class of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Critical: persisted, queued for offline devices until it expires,
    /// retried with backoff, in order per device, alarm on final failure.
    L1,
    /// Normal: not queued for offline devices; a read is answered from the
    /// device's shadow when the device cannot answer.
    L2,
    /// Low: rate limited, refused first under pressure, never queued.
    L3,
}

impl Priority {
    /// Every class, in order.
    pub const ALL: [Priority; 3] = [Priority::L1, Priority::L2, Priority::L3];

    /// `l1`, `l2` or `l3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::L1 => "l1",
            Priority::L2 => "l2",
            Priority::L3 => "l3",
        }
    }

    /// Index into per-class arrays.
    pub fn index(self) -> usize {
        match self {
            Priority::L1 => 0,
            Priority::L2 => 1,
            Priority::L3 => 2,
        }
    }
}

/// Where a command stands. The last four and `succeeded` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Accepted, not yet published to the device.
    Queued,
    /// Published to the device.
    Sent,
    /// The device acknowledged the message (PUBACK).
    Delivered,
    /// The device replied with success (or a read was answered from the shadow).
    Succeeded,
    /// The device replied with an error, or the command could not be sent.
    Failed,
    /// No reply within the command's timeout.
    TimedOut,
    /// Its expiry passed before it could be delivered.
    Expired,
    /// Cancelled by an operator.
    Cancelled,
}

impl CommandStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [CommandStatus; 8] = [
        CommandStatus::Queued,
        CommandStatus::Sent,
        CommandStatus::Delivered,
        CommandStatus::Succeeded,
        CommandStatus::Failed,
        CommandStatus::TimedOut,
        CommandStatus::Expired,
        CommandStatus::Cancelled,
    ];

    /// Whether nothing changes the status any more.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CommandStatus::Queued | CommandStatus::Sent | CommandStatus::Delivered
        )
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Delivered => "delivered",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
            CommandStatus::TimedOut => "timed_out",
            CommandStatus::Expired => "expired",
            CommandStatus::Cancelled => "cancelled",
        }
    }

    /// Index into per-status arrays (see [`CommandStatus::ALL`]).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the device receives: JSON (sent as its UTF-8 text) or raw bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// A JSON value.
    Json(Value),
    /// Opaque bytes.
    Binary(Vec<u8>),
}

impl Payload {
    /// The bytes published to the device.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Payload::Json(value) => value.to_string().into_bytes(),
            Payload::Binary(bytes) => bytes.clone(),
        }
    }

    /// Size in bytes as published.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(value) => value.to_string().len(),
            Payload::Binary(bytes) => bytes.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultSource {
    /// The device replied.
    Device,
    /// The device's last reported shadow state (L2 reads the device could not answer).
    Shadow,
}

/// What the caller asks for, before the platform accepts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// The command's name: one topic level of `[A-Za-z0-9_.-]`, not `reply`.
    pub name: String,
    /// What the device receives.
    pub payload: Payload,
    /// Its class.
    pub priority: Priority,
    /// How long the device has to reply once the command is sent, in ms.
    pub timeout_ms: u64,
    /// When it expires (unix ms): after that it is not sent any more.
    pub expires_at: Option<u64>,
    /// Whether it only reads state (L2 reads fall back to the shadow).
    pub read: bool,
}

/// The devices a fan-out batch goes to, as stored with the batch so that
/// it can resume after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchTargets {
    /// These devices, in this order.
    Devices(Vec<String>),
    /// Every device of this group, in id order.
    Group(String),
}

/// What a fan-out batch still has to do, stored until every target is
/// handled: a restart (kill -9 or SIGTERM) resumes it from `handled` /
/// `after`, skipping targets that already have a command of the batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchJob {
    /// The batch.
    pub id: BatchId,
    /// The command every target gets.
    pub spec: CommandSpec,
    /// Its targets.
    pub targets: BatchTargets,
    /// Targets handled (in target order) when this was stored; their
    /// commands were stored before.
    pub handled: u64,
    /// The last group member handled (groups are read in id order).
    pub after: Option<String>,
}

/// Longest command name.
pub const MAX_NAME_LEN: usize = 64;

impl CommandSpec {
    /// Checks the name; `Err` says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(format!(
                "command name must be 1 to {MAX_NAME_LEN} characters"
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(format!(
                "invalid command name {name:?}: use letters, digits, '_', '-' and '.'"
            ));
        }
        if name == "reply" || name == "request" {
            return Err(format!("command name {name:?} is reserved"));
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// A command with its current status and history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Its id.
    pub id: CommandId,
    /// The target device.
    pub device: String,
    /// The command's name.
    pub name: String,
    /// What the device receives.
    pub payload: Payload,
    /// Its class.
    pub priority: Priority,
    /// Reply timeout once sent, in ms.
    pub timeout_ms: u64,
    /// When it expires (unix ms), if ever.
    pub expires_at: Option<u64>,
    /// Whether it only reads state.
    pub read: bool,
    /// The fan-out batch it belongs to, if any.
    pub batch: Option<BatchId>,
    /// Where it stands.
    pub status: CommandStatus,
    /// When it reached each status it went through (unix ms).
    pub timestamps: BTreeMap<CommandStatus, u64>,
    /// Why it failed, timed out, expired or was answered from the shadow.
    pub reason: Option<String>,
    /// The device's result payload (or the shadow's reported state).
    pub result: Option<Value>,
    /// Where the result came from.
    pub source: Option<ResultSource>,
    /// How many times it was published.
    pub attempts: u32,
}

impl Command {
    /// A new command for `device`, queued at `now`.
    pub fn new(
        id: CommandId,
        device: String,
        spec: CommandSpec,
        batch: Option<BatchId>,
        now: u64,
    ) -> Command {
        let mut timestamps = BTreeMap::new();
        timestamps.insert(CommandStatus::Queued, now);
        Command {
            id,
            device,
            name: spec.name,
            payload: spec.payload,
            priority: spec.priority,
            timeout_ms: spec.timeout_ms,
            expires_at: spec.expires_at,
            read: spec.read,
            batch,
            status: CommandStatus::Queued,
            timestamps,
            reason: None,
            result: None,
            source: None,
            attempts: 0,
        }
    }

    /// Moves to `status` at `now`; a final command never changes (returns false).
    pub fn set_status(&mut self, status: CommandStatus, now: u64, reason: Option<&str>) -> bool {
        if self.status.is_final() {
            return false;
        }
        self.status = status;
        self.timestamps.insert(status, now);
        if let Some(reason) = reason {
            self.reason = Some(reason.to_string());
        }
        true
    }

    /// Whether its expiry has passed at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The topic it is published on: `$commands/{device}/{name}`.
    pub fn topic(&self) -> String {
        format!("$commands/{}/{}", self.device, self.name)
    }

    /// The topic the device replies on: `$commands/{device}/reply/{id}`.
    pub fn reply_topic(&self) -> String {
        format!("$commands/{}/reply/{}", self.device, self.id)
    }

    /// The payload a 3.1.1 device receives: the command wrapped with its id
    /// (3.1.1 has no correlation data), `{"command_id", "name", "payload"}`
    /// for JSON or `"payload_base64"` for bytes.
    pub fn envelope_v311(&self) -> Vec<u8> {
        let mut body = serde_json::Map::new();
        body.insert("command_id".into(), Value::from(self.id.as_str()));
        body.insert("name".into(), Value::from(self.name.as_str()));
        body.insert("reply_topic".into(), Value::from(self.reply_topic()));
        match &self.payload {
            Payload::Json(value) => {
                body.insert("payload".into(), value.clone());
            }
            Payload::Binary(bytes) => {
                use base64::Engine as _;
                let text = base64::engine::general_purpose::STANDARD.encode(bytes);
                body.insert("payload_base64".into(), Value::from(text));
            }
        }
        Value::Object(body).to_string().into_bytes()
    }
}

/// A device's reply, parsed from its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Whether the device reports success (meaningless while `in_progress`).
    pub success: bool,
    /// The device reports progress, not an outcome: the command stays open.
    pub in_progress: bool,
    /// The result it sent (for a progress report: the whole report).
    pub result: Option<Value>,
}

/// What a reply's `"status"` says, compared without regard to case.
fn reply_status(status: &str) -> Option<(bool, bool)> {
    let status = status.to_ascii_lowercase();
    match status.as_str() {
        "succeeded" | "success" | "ok" | "done" => Some((true, false)),
        "failed" | "failure" | "fail" | "error" | "rejected" => Some((false, false)),
        "in_progress" | "in-progress" | "progress" | "running" => Some((true, true)),
        _ => None,
    }
}

impl Reply {
    /// Parses a reply payload: a JSON object whose `"status"` is, in any
    /// case, `"succeeded"` / `"ok"` (success), `"failed"` / `"error"`
    /// (failure), with an optional `"result"`; or `"in_progress"` (as AWS
    /// IoT Jobs' IN_PROGRESS): a progress report (`"progress"`,
    /// `"statusDetails"`, ..) that leaves the command open, kept whole as
    /// its current result. Any other payload, an unknown status included,
    /// is a success whose result is the payload itself (JSON if it parses,
    /// else its text, else base64).
    pub fn parse(payload: &[u8]) -> Reply {
        let parsed = serde_json::from_slice::<Value>(payload).ok();
        if let Some(Value::Object(map)) = &parsed
            && let Some(Value::String(status)) = map.get("status")
            && let Some((success, in_progress)) = reply_status(status)
        {
            let result = if in_progress {
                parsed.clone()
            } else {
                map.get("result").cloned()
            };
            return Reply {
                success,
                in_progress,
                result,
            };
        }
        let result = match parsed {
            Some(value) => Some(value),
            None if payload.is_empty() => None,
            None => Some(match std::str::from_utf8(payload) {
                Ok(text) => Value::from(text),
                Err(_) => {
                    use base64::Engine as _;
                    serde_json::json!({
                        "base64": base64::engine::general_purpose::STANDARD.encode(payload)
                    })
                }
            }),
        };
        Reply {
            success: true,
            in_progress: false,
            result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_parse() {
        let a = CommandId::generate(1_000);
        let b = CommandId::generate(2_000);
        assert!(a < b);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(CommandId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(CommandId::parse("nope"), None);
        assert_ne!(CommandId::generate(5), CommandId::generate(5));
    }

    #[test]
    fn replies_are_read_without_regard_to_case() {
        let failed = Reply::parse(br#"{"status":"FAILED","result":{"code":3}}"#);
        assert!(!failed.success && !failed.in_progress);
        assert_eq!(failed.result, Some(serde_json::json!({"code": 3})));
        let ok = Reply::parse(br#"{"status":"Succeeded"}"#);
        assert!(ok.success && !ok.in_progress);
        let progress = Reply::parse(br#"{"status":"in_progress","progress":30}"#);
        assert!(progress.in_progress);
        assert_eq!(
            progress.result,
            Some(serde_json::json!({"status": "in_progress", "progress": 30}))
        );
        let odd = Reply::parse(br#"{"status":"weird","x":1}"#);
        assert!(odd.success && !odd.in_progress);
        assert_eq!(
            odd.result,
            Some(serde_json::json!({"status": "weird", "x": 1}))
        );
    }

    #[test]
    fn final_statuses() {
        use CommandStatus::*;
        let finals: Vec<_> = CommandStatus::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            vec![&Succeeded, &Failed, &TimedOut, &Expired, &Cancelled]
        );
        for (i, s) in CommandStatus::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
    }

    fn spec(name: &str) -> CommandSpec {
        CommandSpec {
            name: name.into(),
            payload: Payload::Json(Value::Null),
            priority: Priority::L2,
            timeout_ms: 1000,
            expires_at: None,
            read: false,
        }
    }

    #[test]
    fn names_are_one_topic_level() {
        assert!(spec("reboot").validate().is_ok());
        assert!(spec("set.led-1_x").validate().is_ok());
        for bad in ["", "a/b", "a+", "#", "reply", "x y", &"a".repeat(65)] {
            assert!(spec(bad).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_final_command_never_changes() {
        let mut c = Command::new(CommandId::generate(1), "d".into(), spec("x"), None, 1);
        assert!(c.set_status(CommandStatus::Sent, 2, None));
        assert!(c.set_status(CommandStatus::Failed, 3, Some("boom")));
        assert!(!c.set_status(CommandStatus::Succeeded, 4, None));
        assert_eq!(c.status, CommandStatus::Failed);
        assert_eq!(c.timestamps.get(&CommandStatus::Sent), Some(&2));
        assert_eq!(c.reason.as_deref(), Some("boom"));
    }

    #[test]
    fn replies() {
        let r = Reply::parse(br#"{"status":"failed","result":{"code":7}}"#);
        assert!(!r.success);
        assert_eq!(r.result, Some(serde_json::json!({"code": 7})));
        let r = Reply::parse(br#"{"status":"ok"}"#);
        assert!(r.success && r.result.is_none());
        assert_eq!(Reply::parse(b"42").result, Some(Value::from(42)));
        assert_eq!(
            Reply::parse(b"hi there").result,
            Some(Value::from("hi there"))
        );
        assert!(Reply::parse(&[0xff, 0x00]).result.is_some());
    }

    #[test]
    fn v311_envelope_carries_the_id() {
        let mut s = spec("x");
        s.payload = Payload::Binary(vec![1, 2, 3]);
        let c = Command::new(CommandId::generate(1), "dev1".into(), s, None, 1);
        let v: Value = serde_json::from_slice(&c.envelope_v311()).expect("json");
        assert_eq!(v["command_id"], c.id.as_str());
        assert_eq!(v["payload_base64"], "AQID");
        assert_eq!(v["reply_topic"], format!("$commands/dev1/reply/{}", c.id));
    }
}
