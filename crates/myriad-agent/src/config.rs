//! The agent's config file (TOML), as `myriad agent --config` reads it.
//!
//! ```toml
//! slot_a = "/dev/mmcblk0p2"          # or a regular file
//! slot_b = "/dev/mmcblk0p3"
//! state_dir = "/var/lib/myriad-agent"
//! hardware_type = "gw-1"
//! ed25519_keys = ["<64 hex digits>"]  # pinned Ed25519 keys, hex
//! ed25519_key_files = ["/etc/myriad/ed25519.pub"]  # or as SPKI PEM/DER files (`ctl ota keygen`)
//! sm2_roots = ["/etc/myriad/sm2-root.pem"]  # pinned SM2 root CA certificates (PEM or DER)
//! # 1..=16 trust anchors in all (keys + roots); a manifest signed otherwise is REJECTED.
//! self_test = ["/usr/bin/selftest", "--quick"]   # empty or absent: no self-test
//! self_test_timeout_secs = 60        # 1..=3600
//!
//! [provision]                        # used on the first start only (no state yet)
//! slot = "A"
//! version = "1.0.0"
//! size = 12345678                    # the image's bytes in that slot
//! counter = 0                        # its security counter
//!
//! [mqtt]                             # optional: the network mode (`myriad agent` stays connected)
//! host = "broker.example"
//! port = 1883
//! id = "gw-0001"                     # the device id: MQTT client id and user name
//! password = "device-password"    # optional with tls_cert + tls_key
//! # tls_ca = "/etc/myriad/ca.pem"    # TLS: the broker's CA (then port = its TLS port, e.g. 8883)
//! # tls_cert = "/etc/myriad/gw-0001.pem"  tls_key = "/etc/myriad/gw-0001.key"  # mutual TLS
//! api = "https://myriad.example:8080" # HTTP base URL of the signed download URLs
//! download = "http"                  # or "mqtt": chunks over the MQTT connection (no `api` needed)
//! chunk_bytes = 32768                # chunk size over MQTT, 1024..=65536
//! protocol = "auto"                  # "auto" (5.0, falling back to 3.1.1), "5" or "3.1.1"
//! keep_alive_secs = 30               # 5..=3600
//! status_every_secs = 0              # a retained status message on devices/{id}/status (0: none)
//! reconnect_min_ms = 2000            # first reconnect window (full jitter), 1..=reconnect_max_ms
//! reconnect_max_ms = 120000          # largest window, ..=3600000
//!
//! [telemetry]                        # optional, needs [mqtt]: store-and-forward telemetry
//! spool_dir = "/var/lib/myriad-agent/spool"   # default {state_dir}/spool
//! spool_max_bytes = 67108864         # the spool's cap (oldest dropped, counted)
//! spool_segment_bytes = 4194304      # 4 KiB..=256 MiB, at most half the cap
//! replay_records_per_sec = 20        # backlog pace after a reconnect, 1..=10000
//! replay_burst = 40                  # 1..=100000
//! window = 8                         # records awaiting their PUBACK, 1..=256
//! status_every_secs = 60             # a status line in the log (0: none), ..=86400
//! health_every_secs = 0              # health metrics as telemetry points (0: none), ..=86400
//! handed_log = "/tmp/handed.jsonl"   # optional: one JSON line per point handed to the spool
//!
//! [[telemetry.sample]]               # 0..=32 samplers: a command or a file, on a schedule
//! every_secs = 10                    # 1..=86400
//! command = ["/usr/bin/sensors-json"] # stdout: one JSON object of metrics, or {"points":[..]}
//! timeout_secs = 10                  # the command's, 1..=300
//! # or: file = "/sys/class/thermal/thermal_zone0/temp"  metric = "cpu_temp"  scale = 0.001
//!
//! [shadow]                           # optional, needs [mqtt]: shadow sync through two programs
//! apply = ["/usr/local/bin/apply-settings"]   # desired-but-not-reported fields on stdin (JSON)
//! report = ["/usr/local/bin/current-settings"] # stdout: the device's state (a JSON object)
//! report_every_secs = 10             # 1..=86400
//! timeout_secs = 30                  # either program's, 1..=3600
//!
//! [[commands]]                       # optional, needs [mqtt]: 0..=32 command handlers
//! name = "reboot"                    # the command name, 1..=64 bytes of [A-Za-z0-9_.-]
//! command = ["/usr/local/bin/reboot-handler"]  # payload on stdin; see `myriad agent` docs
//! timeout_secs = 30                  # 1..=3600
//! ```

use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use myriad_ota::keygen;
use serde::Deserialize;

use crate::agent::AgentConfig;
use crate::boot::Slot;
use crate::selftest::SelfTest;

/// Most trust anchors (pinned Ed25519 keys, inline or as files, and SM2 roots together).
pub const MAX_KEYS: usize = 16;
/// Largest config file (bytes).
pub const MAX_CONFIG_FILE: u64 = 64 * 1024;

/// The file's fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Slot A's path.
    pub slot_a: PathBuf,
    /// Slot B's path.
    pub slot_b: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The device's hardware type.
    pub hardware_type: String,
    /// Pinned Ed25519 public keys, hex.
    #[serde(default)]
    pub ed25519_keys: Vec<String>,
    /// Pinned Ed25519 public keys as files (SPKI, PEM or DER).
    #[serde(default)]
    pub ed25519_key_files: Vec<PathBuf>,
    /// Pinned SM2 root CA certificates (files, PEM or DER): an SM2-with-SM3 manifest must
    /// carry a chain up to one of them.
    #[serde(default)]
    pub sm2_roots: Vec<PathBuf>,
    /// The self-test command.
    #[serde(default)]
    pub self_test: Vec<String>,
    /// Its timeout in seconds.
    #[serde(default = "default_timeout")]
    pub self_test_timeout_secs: u64,
    /// First-start provisioning.
    pub provision: Option<Provision>,
    /// The network mode's settings.
    pub mqtt: Option<MqttConfig>,
    /// Store-and-forward telemetry (needs `mqtt`).
    pub telemetry: Option<TelemetryFileConfig>,
    /// Command handlers (needs `mqtt`).
    #[serde(default)]
    pub commands: Vec<CommandHandler>,
    /// Shadow sync (needs `mqtt`).
    pub shadow: Option<ShadowSettings>,
}

/// The `[shadow]` table: keep the device's shadow in step through two programs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSettings {
    /// Run with the desired fields that differ from reported (a JSON object on stdin); exit 0
    /// when applied. Its stdout, when a JSON object, is reported; else the fields themselves
    /// are. Empty: deltas are logged, not applied.
    #[serde(default)]
    pub apply: Vec<String>,
    /// Run every `report_every_secs`; its stdout, a JSON object, is the device's state: the
    /// top-level keys that changed since the last run are reported (removed ones as `null`).
    #[serde(default)]
    pub report: Vec<String>,
    /// The report period (seconds), 1 ..= [`MAX_SAMPLE_EVERY_SECS`].
    #[serde(default = "default_report_every")]
    pub report_every_secs: u64,
    /// How long either program may run (seconds), 1 ..= [`MAX_COMMAND_TIMEOUT_SECS`].
    #[serde(default = "default_command_timeout")]
    pub timeout_secs: u64,
}

fn default_report_every() -> u64 {
    10
}

/// The `[shadow]` table of a config file's text, checked; errors name the key.
pub fn parse_shadow(text: &str) -> Result<Option<ShadowSettings>, ConfigError> {
    let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
    let Some(s) = f.shadow else { return Ok(None) };
    if f.mqtt.is_none() {
        return Err(ConfigError("shadow: needs an [mqtt] table".into()));
    }
    if s.apply.is_empty() && s.report.is_empty() {
        return Err(ConfigError(
            "shadow: give apply, report or both (the programs that act and report)".into(),
        ));
    }
    let max = crate::selftest::MAX_SELF_TEST_ARGS;
    for (key, argv) in [("shadow.apply", &s.apply), ("shadow.report", &s.report)] {
        if argv.len() > max || argv.first().is_some_and(String::is_empty) {
            return Err(ConfigError(format!(
                "{key}: 0..={max} arguments, the first a program"
            )));
        }
    }
    if !(1..=MAX_SAMPLE_EVERY_SECS).contains(&s.report_every_secs) {
        return Err(ConfigError(format!(
            "shadow.report_every_secs: 1..={MAX_SAMPLE_EVERY_SECS}"
        )));
    }
    if !(1..=MAX_COMMAND_TIMEOUT_SECS).contains(&s.timeout_secs) {
        return Err(ConfigError(format!(
            "shadow.timeout_secs: 1..={MAX_COMMAND_TIMEOUT_SECS}"
        )));
    }
    Ok(Some(s))
}

/// Most `[[commands]]` handlers.
pub const MAX_COMMAND_HANDLERS: usize = 32;
/// Longest command name (the platform's limit).
pub const MAX_COMMAND_NAME: usize = 64;
/// Longest command handler timeout (seconds).
pub const MAX_COMMAND_TIMEOUT_SECS: u64 = 3600;

/// One `[[commands]]` entry: the executable run for a command name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandHandler {
    /// The command name (`$commands/{id}/{name}`).
    pub name: String,
    /// The program and its arguments; the command's payload goes to its stdin.
    pub command: Vec<String>,
    /// How long it may run (seconds), 1 ..= [`MAX_COMMAND_TIMEOUT_SECS`].
    #[serde(default = "default_command_timeout")]
    pub timeout_secs: u64,
}

fn default_command_timeout() -> u64 {
    30
}

/// The `[[commands]]` handlers of a config file's text, checked; errors name the key.
pub fn parse_commands(text: &str) -> Result<Vec<CommandHandler>, ConfigError> {
    let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
    if f.commands.is_empty() {
        return Ok(Vec::new());
    }
    if f.mqtt.is_none() {
        return Err(ConfigError("commands: needs an [mqtt] table".into()));
    }
    if f.commands.len() > MAX_COMMAND_HANDLERS {
        return Err(ConfigError(format!(
            "commands: at most {MAX_COMMAND_HANDLERS} handlers, {} given",
            f.commands.len()
        )));
    }
    for (i, c) in f.commands.iter().enumerate() {
        let key = format!("commands[{i}]");
        let name_ok = !c.name.is_empty()
            && c.name.len() <= MAX_COMMAND_NAME
            && c.name != "reply"
            && c.name != "request"
            && c.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Err(ConfigError(format!(
                "{key}.name: 1..={MAX_COMMAND_NAME} bytes of [A-Za-z0-9_.-], not reply or request"
            )));
        }
        if f.commands[..i].iter().any(|o| o.name == c.name) {
            return Err(ConfigError(format!("{key}.name: {} twice", c.name)));
        }
        if c.command.is_empty() || c.command.len() > crate::selftest::MAX_SELF_TEST_ARGS {
            return Err(ConfigError(format!(
                "{key}.command: 1..={} arguments",
                crate::selftest::MAX_SELF_TEST_ARGS
            )));
        }
        if !(1..=MAX_COMMAND_TIMEOUT_SECS).contains(&c.timeout_secs) {
            return Err(ConfigError(format!(
                "{key}.timeout_secs: 1..={MAX_COMMAND_TIMEOUT_SECS}"
            )));
        }
    }
    Ok(f.commands)
}

/// Most `[[telemetry.sample]]` entries.
pub const MAX_SAMPLERS: usize = 32;
/// Longest sampling period (seconds).
pub const MAX_SAMPLE_EVERY_SECS: u64 = 86_400;
/// Longest sampler command timeout (seconds).
pub const MAX_SAMPLE_TIMEOUT_SECS: u64 = 300;
/// Largest sampler command output or file read (bytes).
pub const MAX_SAMPLE_OUTPUT: usize = 64 * 1024;

/// The `[telemetry]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFileConfig {
    /// The spool's directory (default `{state_dir}/spool`).
    pub spool_dir: Option<PathBuf>,
    /// The spool's cap (bytes).
    #[serde(default = "default_spool_max")]
    pub spool_max_bytes: u64,
    /// A spool segment's size (bytes).
    #[serde(default = "default_spool_segment")]
    pub spool_segment_bytes: u64,
    /// The backlog's pace after a reconnect (records a second).
    #[serde(default = "default_replay_rate")]
    pub replay_records_per_sec: u32,
    /// The pace's bucket (records).
    #[serde(default = "default_replay_burst")]
    pub replay_burst: u32,
    /// Records published and awaiting their PUBACK, at most.
    #[serde(default = "default_window")]
    pub window: usize,
    /// A status line in the log every this many seconds (0: none).
    #[serde(default = "default_status_every")]
    pub status_every_secs: u64,
    /// Health metrics (uptime, memory, spool, security counter) as telemetry points every this
    /// many seconds (0: none).
    #[serde(default)]
    pub health_every_secs: u64,
    /// A file the agent appends one JSON line to per point once it is durable in the spool
    /// (`{"ts":..,"metrics":{..}}`): for audits and tests.
    pub handed_log: Option<PathBuf>,
    /// The samplers.
    #[serde(default)]
    pub sample: Vec<SampleConfig>,
}

/// One `[[telemetry.sample]]`: a command or a file read every `every_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// The period (seconds), 1 ..= [`MAX_SAMPLE_EVERY_SECS`].
    pub every_secs: u64,
    /// A command whose stdout is one JSON object of metrics (`{"temp": 20.5}`) or the batch
    /// form (`{"points":[{"ts":..,"temp":..}]}`).
    #[serde(default)]
    pub command: Vec<String>,
    /// The command's timeout (seconds), 1 ..= [`MAX_SAMPLE_TIMEOUT_SECS`].
    #[serde(default = "default_sample_timeout")]
    pub timeout_secs: u64,
    /// A file holding one number (instead of `command`).
    pub file: Option<PathBuf>,
    /// The metric name of `file`'s number.
    pub metric: Option<String>,
    /// `file`'s number is multiplied by this.
    #[serde(default = "default_scale")]
    pub scale: f64,
}

fn default_spool_max() -> u64 {
    64 * 1024 * 1024
}
fn default_spool_segment() -> u64 {
    4 * 1024 * 1024
}
fn default_replay_rate() -> u32 {
    20
}
fn default_replay_burst() -> u32 {
    40
}
fn default_window() -> usize {
    8
}
fn default_status_every() -> u64 {
    60
}
fn default_sample_timeout() -> u64 {
    10
}
fn default_scale() -> f64 {
    1.0
}

/// The `[telemetry]` table, checked, with the spool directory resolved.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// The spool's directory.
    pub spool_dir: PathBuf,
    /// The spool's sizes.
    pub spool: crate::spool::SpoolConfig,
    /// The backlog's pace.
    pub replay: crate::replay::ReplayConfig,
    /// Records in flight.
    pub window: usize,
    /// Status line period (0: none).
    pub status_every_secs: u64,
    /// Health metrics period (0: none).
    pub health_every_secs: u64,
    /// See [`TelemetryFileConfig::handed_log`].
    pub handed_log: Option<PathBuf>,
    /// The samplers.
    pub samplers: Vec<SampleConfig>,
}

/// The `[telemetry]` table of a config file's text, if any, checked; errors name the key.
pub fn parse_telemetry(text: &str) -> Result<Option<TelemetrySettings>, ConfigError> {
    let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
    let Some(t) = f.telemetry else {
        return Ok(None);
    };
    if f.mqtt.is_none() {
        return Err(ConfigError("telemetry: needs an [mqtt] table".into()));
    }
    let spool = crate::spool::SpoolConfig {
        max_total_bytes: t.spool_max_bytes,
        segment_bytes: t.spool_segment_bytes,
        max_record_bytes: crate::spool::MAX_RECORD_BYTES.min(
            u32::try_from(
                t.spool_segment_bytes
                    .saturating_sub(crate::spool::SEGMENT_HEADER + crate::spool::FRAME_HEADER),
            )
            .unwrap_or(u32::MAX),
        ),
    };
    spool.validate().map_err(|e| {
        let e = e.to_string();
        let key = if e.contains("max_total_bytes") {
            "telemetry.spool_max_bytes"
        } else {
            "telemetry.spool_segment_bytes"
        };
        ConfigError(format!("{key}: {e}"))
    })?;
    let replay = crate::replay::ReplayConfig {
        records_per_sec: t.replay_records_per_sec,
        burst: t.replay_burst,
        ..Default::default()
    };
    replay.validate().map_err(|e| {
        let key = if e.0.contains("burst") {
            "telemetry.replay_burst"
        } else {
            "telemetry.replay_records_per_sec"
        };
        ConfigError(format!("{key}: {e}"))
    })?;
    if !(1..=256).contains(&t.window) {
        return Err(ConfigError("telemetry.window: 1..=256".into()));
    }
    if t.status_every_secs > MAX_SAMPLE_EVERY_SECS {
        return Err(ConfigError(format!(
            "telemetry.status_every_secs: 0..={MAX_SAMPLE_EVERY_SECS}"
        )));
    }
    if t.health_every_secs > MAX_SAMPLE_EVERY_SECS {
        return Err(ConfigError(format!(
            "telemetry.health_every_secs: 0..={MAX_SAMPLE_EVERY_SECS}"
        )));
    }
    if t.sample.len() > MAX_SAMPLERS {
        return Err(ConfigError(format!(
            "telemetry.sample: at most {MAX_SAMPLERS} samplers, {} given",
            t.sample.len()
        )));
    }
    for (i, s) in t.sample.iter().enumerate() {
        let key = format!("telemetry.sample[{i}]");
        if !(1..=MAX_SAMPLE_EVERY_SECS).contains(&s.every_secs) {
            return Err(ConfigError(format!(
                "{key}.every_secs: 1..={MAX_SAMPLE_EVERY_SECS}"
            )));
        }
        if !(1..=MAX_SAMPLE_TIMEOUT_SECS).contains(&s.timeout_secs) {
            return Err(ConfigError(format!(
                "{key}.timeout_secs: 1..={MAX_SAMPLE_TIMEOUT_SECS}"
            )));
        }
        match (s.command.is_empty(), &s.file) {
            (true, None) | (false, Some(_)) => {
                return Err(ConfigError(format!("{key}: give either command or file")));
            }
            (true, Some(_)) => {
                let ok = s.metric.as_deref().is_some_and(|m| {
                    !m.is_empty()
                        && m.len() <= crate::spool::MAX_METRIC_NAME
                        && m != "ts"
                        && m.bytes().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-')
                        })
                });
                if !ok {
                    return Err(ConfigError(format!(
                        "{key}.metric: needed with file, 1..=128 bytes of [A-Za-z0-9_.:-], not ts"
                    )));
                }
                if !s.scale.is_finite() {
                    return Err(ConfigError(format!("{key}.scale: not a finite number")));
                }
            }
            (false, None) => {
                if s.command.len() > crate::selftest::MAX_SELF_TEST_ARGS {
                    return Err(ConfigError(format!(
                        "{key}.command: at most {} arguments",
                        crate::selftest::MAX_SELF_TEST_ARGS
                    )));
                }
                if s.metric.is_some() {
                    return Err(ConfigError(format!(
                        "{key}.metric: only with file (a command names its metrics)"
                    )));
                }
            }
        }
    }
    Ok(Some(TelemetrySettings {
        spool_dir: t.spool_dir.unwrap_or_else(|| f.state_dir.join("spool")),
        spool,
        replay,
        window: t.window,
        status_every_secs: t.status_every_secs,
        health_every_secs: t.health_every_secs,
        handed_log: t.handed_log,
        samplers: t.sample,
    }))
}

/// Where and as whom the agent connects (the `[mqtt]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// The broker's host name or address.
    pub host: String,
    /// The broker's MQTT port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The device id: the MQTT client id and user name.
    pub id: String,
    /// The device's password (optional with a client certificate, `tls_cert`).
    #[serde(default)]
    pub password: Option<String>,
    /// TLS: the CA certificates (PEM) the broker's certificate must chain to; set, the
    /// connection is TLS (`port` is then the broker's TLS port, often 8883).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// TLS: the device's client certificate (PEM), for mutual TLS (with `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The HTTP base URL the notifications' download URLs are relative to (needed when
    /// `download` is `http`).
    #[serde(default)]
    pub api: Option<String>,
    /// How images and patches are downloaded.
    #[serde(default)]
    pub download: DownloadVia,
    /// Bytes asked per chunk when downloading over MQTT.
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: u32,
    /// The MQTT version: `"auto"` (5.0, falling back to 3.1.1), `"5"` or `"3.1.1"`.
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// Keep alive (seconds), 5..=3600.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    /// A status message (retained, QoS 1) on `devices/{id}/status` every this many seconds
    /// and after each connect (0: none), ..= [`MAX_SAMPLE_EVERY_SECS`].
    #[serde(default)]
    pub status_every_secs: u64,
    /// The first reconnect window (ms; full jitter, doubling).
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// The largest reconnect window (ms).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
}

/// `[mqtt] protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum MqttProtocol {
    /// 5.0, falling back to 3.1.1 when the broker refuses it.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// 5.0 only.
    #[serde(rename = "5")]
    V5,
    /// 3.1.1 only.
    #[serde(rename = "3.1.1")]
    V311,
}

fn default_keep_alive() -> u16 {
    30
}
fn default_reconnect_min() -> u64 {
    2_000
}
fn default_reconnect_max() -> u64 {
    120_000
}

/// How the agent downloads (`[mqtt] download`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadVia {
    /// HTTP `GET` of the signed URL, resumed with `Range` (the default).
    #[default]
    Http,
    /// `$ota/{id}/chunk/get` requests over the MQTT connection, for devices without HTTP.
    Mqtt,
}

/// Smallest chunk asked for over MQTT (bytes).
pub const MIN_CHUNK_BYTES: u32 = 1024;
/// Largest chunk asked for over MQTT (bytes; the platform's limit).
pub const MAX_CHUNK_BYTES: u32 = 64 * 1024;

fn default_chunk_bytes() -> u32 {
    32 * 1024
}

fn default_port() -> u16 {
    1883
}

/// Most bytes of a device id (as the platform allows).
pub const MAX_DEVICE_ID: usize = 128;

fn default_timeout() -> u64 {
    60
}

/// What the first start records as the confirmed image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    /// The slot holding it.
    pub slot: Slot,
    /// Its version.
    pub version: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its security counter.
    #[serde(default)]
    pub counter: u64,
}

/// A config that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("agent config: {0}")]
pub struct ConfigError(pub String);

/// Parses and checks a config file's text.
pub fn parse(text: &str) -> Result<(AgentConfig, Option<Provision>), ConfigError> {
    let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
    let anchors = f.ed25519_keys.len() + f.ed25519_key_files.len() + f.sm2_roots.len();
    if anchors == 0 || anchors > MAX_KEYS {
        return Err(ConfigError(format!(
            "ed25519_keys, ed25519_key_files, sm2_roots: 1..={MAX_KEYS} trust anchors in all, \
             {anchors} given"
        )));
    }
    let mut keys = Vec::new();
    for (i, k) in f.ed25519_keys.iter().enumerate() {
        let bytes =
            hex32(k).ok_or_else(|| ConfigError(format!("ed25519_keys[{i}]: not 64 hex digits")))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| ConfigError(format!("ed25519_keys[{i}]: not an Ed25519 public key")))?;
        keys.push(key);
    }
    for (i, path) in f.ed25519_key_files.iter().enumerate() {
        let name = format!("ed25519_key_files[{i}]");
        let bytes = read_bounded(&name, path)?;
        let key = keygen::load_ed25519_verifying_key(&bytes)
            .map_err(|e| ConfigError(format!("{name}: {}: {e}", path.display())))?;
        keys.push(key);
    }
    let mut sm2_roots = Vec::new();
    for (i, path) in f.sm2_roots.iter().enumerate() {
        let name = format!("sm2_roots[{i}]");
        let bytes = read_bounded(&name, path)?;
        let certs = keygen::load_certificates(&bytes)
            .map_err(|e| ConfigError(format!("{name}: {}: {e}", path.display())))?;
        if certs.len() != 1 {
            return Err(ConfigError(format!(
                "{name}: {}: {} certificates, give one root per entry",
                path.display(),
                certs.len()
            )));
        }
        sm2_roots.extend(certs);
    }
    if f.slot_a == f.slot_b {
        return Err(ConfigError("slot_b: the same path as slot_a".into()));
    }
    if f.hardware_type.is_empty() {
        return Err(ConfigError("hardware_type: empty".into()));
    }
    let self_test = SelfTest::new(f.self_test, Duration::from_secs(f.self_test_timeout_secs))
        .map_err(|e| ConfigError(e.to_string()))?;
    Ok((
        AgentConfig {
            slot_a: f.slot_a,
            slot_b: f.slot_b,
            state_dir: f.state_dir,
            hardware_type: f.hardware_type,
            ed25519_keys: keys,
            sm2_roots,
            self_test,
        },
        f.provision,
    ))
}

/// The `[mqtt]` table of a config file's text, if any, checked (id 1..=[`MAX_DEVICE_ID`]
/// bytes without MQTT wildcards or `/`, `api` an `http://` or `https://` URL).
pub fn parse_mqtt(text: &str) -> Result<Option<MqttConfig>, ConfigError> {
    let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
    let Some(m) = f.mqtt else { return Ok(None) };
    if m.id.is_empty() || m.id.len() > MAX_DEVICE_ID || m.id.contains(['/', '+', '#']) {
        return Err(ConfigError(format!(
            "mqtt.id: 1..={MAX_DEVICE_ID} bytes without '/', '+' or '#'"
        )));
    }
    if m.host.is_empty() {
        return Err(ConfigError("mqtt.host: empty".into()));
    }
    match (&m.api, m.download) {
        (Some(api), _) if !(api.starts_with("http://") || api.starts_with("https://")) => {
            return Err(ConfigError(
                "mqtt.api: not an http:// or https:// URL".into(),
            ));
        }
        (None, DownloadVia::Http) => {
            return Err(ConfigError(
                "mqtt.api: needed when mqtt.download is \"http\" (the default)".into(),
            ));
        }
        _ => {}
    }
    if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&m.chunk_bytes) {
        return Err(ConfigError(format!(
            "mqtt.chunk_bytes: {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES}"
        )));
    }
    if m.tls_cert.is_some() != m.tls_key.is_some() {
        return Err(ConfigError(
            "mqtt.tls_cert, mqtt.tls_key: give both or neither".into(),
        ));
    }
    if m.tls_cert.is_some() && m.tls_ca.is_none() {
        return Err(ConfigError("mqtt.tls_ca: needed with mqtt.tls_cert".into()));
    }
    if m.password.is_none() && m.tls_cert.is_none() {
        return Err(ConfigError(
            "mqtt.password: needed unless the device logs in with a client certificate (mqtt.tls_cert)"
                .into(),
        ));
    }
    if m.status_every_secs > MAX_SAMPLE_EVERY_SECS {
        return Err(ConfigError(format!(
            "mqtt.status_every_secs: 0..={MAX_SAMPLE_EVERY_SECS}"
        )));
    }
    if !(5..=3600).contains(&m.keep_alive_secs) {
        return Err(ConfigError("mqtt.keep_alive_secs: 5..=3600".into()));
    }
    if m.reconnect_max_ms == 0 || m.reconnect_max_ms > crate::backoff::MAX_CAP_MS {
        return Err(ConfigError(format!(
            "mqtt.reconnect_max_ms: 1..={}",
            crate::backoff::MAX_CAP_MS
        )));
    }
    if m.reconnect_min_ms == 0 || m.reconnect_min_ms > m.reconnect_max_ms {
        return Err(ConfigError(
            "mqtt.reconnect_min_ms: 1..=mqtt.reconnect_max_ms".into(),
        ));
    }
    Ok(Some(m))
}

/// A key or certificate file of at most [`keygen::MAX_KEY_FILE`] bytes; the error names the
/// config key.
fn read_bounded(name: &str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(keygen::MAX_KEY_FILE as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| ConfigError(format!("{name}: {}: {e}", path.display())))?;
    if bytes.len() > keygen::MAX_KEY_FILE {
        return Err(ConfigError(format!(
            "{name}: {}: larger than {} bytes",
            path.display(),
            keygen::MAX_KEY_FILE
        )));
    }
    Ok(bytes)
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_hex() -> String {
        let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn text(extra: &str) -> String {
        format!(
            "slot_a = \"/a\"\nslot_b = \"/b\"\nstate_dir = \"/s\"\nhardware_type = \"gw\"\n\
             ed25519_keys = [\"{}\"]\n{extra}",
            key_hex()
        )
    }

    #[test]
    fn parses_and_names_bad_keys() {
        let (c, p) = parse(&text(
            "self_test = [\"sh\", \"-c\", \"true\"]\n[provision]\nslot = \"B\"\nversion = \"1\"\nsize = 10\n",
        ))
        .unwrap();
        assert_eq!(c.self_test.argv().len(), 3);
        assert_eq!(c.self_test.timeout(), Duration::from_secs(60));
        assert_eq!(
            c.ed25519_keys[0].as_bytes(),
            ed25519_dalek::SigningKey::from_bytes(&[7; 32])
                .verifying_key()
                .as_bytes()
        );
        let p = p.unwrap();
        assert_eq!((p.slot, p.size, p.counter), (Slot::B, 10, 0));
        assert!(parse_mqtt(&text("")).unwrap().is_none());
        let net = "[mqtt]\nhost = \"h\"\nid = \"d1\"\npassword = \"p\"\napi = \"http://h:1\"\n";
        let m = parse_mqtt(&text(net)).unwrap().unwrap();
        assert_eq!((m.port, m.id.as_str()), (1883, "d1"));
        assert!(parse(&text(net)).is_ok());
        let long = net.replace("d1", &"d".repeat(MAX_DEVICE_ID + 1));
        let e = parse_mqtt(&text(&long)).unwrap_err().to_string();
        assert!(e.contains("mqtt.id"), "{e}");
        let ok = net.replace("d1", &"d".repeat(MAX_DEVICE_ID));
        assert!(parse_mqtt(&text(&ok)).is_ok());
        let e = parse_mqtt(&text(&net.replace("http://", "ftp://")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.api"), "{e}");
        let no_api = net.replace("api = \"http://h:1\"\n", "");
        let e = parse_mqtt(&text(&no_api)).unwrap_err().to_string();
        assert!(e.contains("mqtt.api"), "{e}");
        let m = parse_mqtt(&text(&format!("{no_api}download = \"mqtt\"\n")))
            .unwrap()
            .unwrap();
        assert_eq!((m.download, m.chunk_bytes), (DownloadVia::Mqtt, 32 * 1024));
        for (bytes, ok) in [(1023, false), (1024, true), (65536, true), (65537, false)] {
            let r = parse_mqtt(&text(&format!("{net}chunk_bytes = {bytes}\n")));
            assert_eq!(r.is_ok(), ok, "{bytes}");
            if let Err(e) = r {
                assert!(e.to_string().contains("mqtt.chunk_bytes"), "{e}");
            }
        }
        let e = parse_mqtt(&text(&format!("{net}download = \"ftp\"\n")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("download"), "{e}");
        let same = text("").replace("slot_b = \"/b\"", "slot_b = \"/a\"");
        assert!(parse(&same).unwrap_err().to_string().contains("slot_b"));
        let e = parse(&text("colour = 1\n")).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let e = parse(&text("self_test_timeout_secs = 3601\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("self_test_timeout"), "{e}");
        let bad = text("").replace(&key_hex(), "zz");
        assert!(
            parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("ed25519_keys[0]")
        );
        let many = text("").replace(
            &format!("[\"{}\"]", key_hex()),
            &format!(
                "[{}]",
                vec![format!("\"{}\"", key_hex()); MAX_KEYS + 1].join(",")
            ),
        );
        assert!(
            parse(&many)
                .unwrap_err()
                .to_string()
                .contains("ed25519_keys")
        );
    }

    #[test]
    fn telemetry_table_is_checked_and_names_the_key() {
        let net = "[mqtt]\nhost = \"h\"\nid = \"d1\"\npassword = \"p\"\napi = \"http://h:1\"\n";
        assert!(parse_telemetry(&text(net)).unwrap().is_none());
        let t = parse_telemetry(&text(&format!("{net}[telemetry]\n")))
            .unwrap()
            .unwrap();
        assert_eq!(t.spool_dir, PathBuf::from("/s/spool"));
        assert_eq!((t.window, t.status_every_secs), (8, 60));
        assert_eq!(t.spool.max_total_bytes, 64 * 1024 * 1024);
        // Without [mqtt]: refused, naming the table.
        let e = parse_telemetry(&text("[telemetry]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("telemetry"), "{e}");
        let with = |body: &str| parse_telemetry(&text(&format!("{net}[telemetry]\n{body}\n")));
        let named = |body: &str, key: &str| {
            let e = with(body).unwrap_err().to_string();
            assert!(e.contains(key), "{body}: {e}");
        };
        named("colour = 1", "colour");
        named(
            "spool_max_bytes = 8191\nspool_segment_bytes = 4096",
            "telemetry.spool_max_bytes",
        );
        assert!(with("spool_max_bytes = 8192\nspool_segment_bytes = 4096").is_ok());
        named(
            "spool_segment_bytes = 4095",
            "telemetry.spool_segment_bytes",
        );
        named(
            "replay_records_per_sec = 10001",
            "telemetry.replay_records_per_sec",
        );
        assert!(with("replay_records_per_sec = 10000").is_ok());
        named("replay_burst = 100001", "telemetry.replay_burst");
        named("window = 257", "telemetry.window");
        assert!(with("window = 256").is_ok());
        named("status_every_secs = 86401", "telemetry.status_every_secs");
        named("health_every_secs = 86401", "telemetry.health_every_secs");
        assert!(with("health_every_secs = 86400").is_ok());
        let cmd = "[[telemetry.sample]]\nevery_secs = 10\ncommand = [\"x\"]";
        let t = with(cmd).unwrap().unwrap();
        assert_eq!(t.samplers[0].timeout_secs, 10);
        named(
            &cmd.replace("10", "86401"),
            "telemetry.sample[0].every_secs",
        );
        assert!(with(&cmd.replace("10", "86400")).is_ok());
        named(
            &format!("{cmd}\ntimeout_secs = 301"),
            "telemetry.sample[0].timeout_secs",
        );
        named(&format!("{cmd}\nfile = \"/f\""), "telemetry.sample[0]");
        named(
            &format!("{cmd}\nmetric = \"m\""),
            "telemetry.sample[0].metric",
        );
        named(&format!("{cmd}\nshape = 1"), "shape");
        let file = "[[telemetry.sample]]\nevery_secs = 1\nfile = \"/f\"";
        named(file, "telemetry.sample[0].metric");
        named(
            &format!("{file}\nmetric = \"ts\""),
            "telemetry.sample[0].metric",
        );
        let t = with(&format!("{file}\nmetric = \"cpu_temp\"\nscale = 0.001"))
            .unwrap()
            .unwrap();
        assert_eq!(t.samplers[0].scale, 0.001);
        let many = vec![cmd; MAX_SAMPLERS + 1].join("\n");
        named(&many, "telemetry.sample");
        assert!(with(&vec![cmd; MAX_SAMPLERS].join("\n")).is_ok());
        // [mqtt] additions.
        for (extra, key, ok) in [
            ("keep_alive_secs = 4", "mqtt.keep_alive_secs", false),
            ("keep_alive_secs = 5", "", true),
            ("status_every_secs = 86400", "", true),
            ("status_every_secs = 86401", "mqtt.status_every_secs", false),
            ("reconnect_max_ms = 3600001", "mqtt.reconnect_max_ms", false),
            ("reconnect_max_ms = 3600000", "", true),
            ("reconnect_min_ms = 0", "mqtt.reconnect_min_ms", false),
            ("reconnect_min_ms = 120001", "mqtt.reconnect_min_ms", false),
            ("protocol = \"3.1.1\"", "", true),
            ("protocol = \"4\"", "protocol", false),
            ("tls_cert = \"/c\"", "mqtt.tls_cert", false),
            ("tls_cert = \"/c\"\ntls_key = \"/k\"", "mqtt.tls_ca", false),
            (
                "tls_ca = \"/a\"\ntls_cert = \"/c\"\ntls_key = \"/k\"",
                "",
                true,
            ),
        ] {
            let r = parse_mqtt(&text(&format!("{net}{extra}\n")));
            assert_eq!(r.is_ok(), ok, "{extra}");
            if let Err(e) = r {
                assert!(e.to_string().contains(key), "{extra}: {e}");
            }
        }
        let no_pw = net.replace("password = \"p\"\n", "");
        let e = parse_mqtt(&text(&no_pw)).unwrap_err().to_string();
        assert!(e.contains("mqtt.password"), "{e}");
        let mtls = format!("{no_pw}tls_ca = \"/a\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\n");
        assert!(
            parse_mqtt(&text(&mtls))
                .unwrap()
                .unwrap()
                .password
                .is_none()
        );
    }

    #[test]
    fn command_handlers_are_checked_and_named() {
        let net = "[mqtt]\nhost = \"h\"\nid = \"d1\"\npassword = \"p\"\napi = \"http://h:1\"\n";
        assert!(parse_commands(&text(net)).unwrap().is_empty());
        let one = "[[commands]]\nname = \"reboot\"\ncommand = [\"x\"]\n";
        let h = parse_commands(&text(&format!("{net}{one}"))).unwrap();
        assert_eq!((h[0].name.as_str(), h[0].timeout_secs), ("reboot", 30));
        let e = parse_commands(&text(one)).unwrap_err().to_string();
        assert!(e.contains("commands"), "{e}");
        let named = |body: &str, key: &str| {
            let e = parse_commands(&text(&format!("{net}{body}")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{body}: {e}");
        };
        named(&one.replace("reboot", "reply"), "commands[0].name");
        named(&one.replace("reboot", "a/b"), "commands[0].name");
        named(
            &one.replace("reboot", &"a".repeat(MAX_COMMAND_NAME + 1)),
            "commands[0].name",
        );
        assert!(
            parse_commands(&text(&format!(
                "{net}{}",
                one.replace("reboot", &"a".repeat(MAX_COMMAND_NAME))
            )))
            .is_ok()
        );
        named(&format!("{one}{one}"), "commands[1].name");
        named(&one.replace("[\"x\"]", "[]"), "commands[0].command");
        named(
            &format!("{one}timeout_secs = 3601\n"),
            "commands[0].timeout_secs",
        );
        named(&format!("{one}colour = 1\n"), "colour");
        let many: String = (0..=MAX_COMMAND_HANDLERS)
            .map(|i| one.replace("reboot", &format!("c{i}")))
            .collect();
        named(&many, "commands");
        let max: String = (0..MAX_COMMAND_HANDLERS)
            .map(|i| one.replace("reboot", &format!("c{i}")))
            .collect();
        assert!(parse_commands(&text(&format!("{net}{max}"))).is_ok());
    }

    #[test]
    fn key_files_and_sm2_roots_are_loaded_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let chain = myriad_ota::keygen::sm2_dev_chain(&[1; 32], 1_700_000_000).unwrap();
        let root = dir.path().join("root.pem");
        std::fs::write(&root, &chain.root_pem).unwrap();
        let chain_file = dir.path().join("chain.pem");
        std::fs::write(&chain_file, &chain.chain_pem).unwrap();
        let pair = myriad_ota::keygen::ed25519_dev_keypair(&[2; 32]).unwrap();
        let public = dir.path().join("ed25519.pub");
        std::fs::write(&public, &pair.public_pem).unwrap();
        let base = text("").replace(&format!("ed25519_keys = [\"{}\"]\n", key_hex()), "");
        let with = |extra: &str| format!("{base}{extra}\n");
        // SM2 root alone, and an Ed25519 key file alone, are enough.
        let (c, _) = parse(&with(&format!("sm2_roots = [{:?}]", root))).unwrap();
        assert_eq!((c.sm2_roots.len(), c.ed25519_keys.len()), (1, 0));
        let (c, _) = parse(&with(&format!("ed25519_key_files = [{:?}]", public))).unwrap();
        assert_eq!(c.ed25519_keys.len(), 1);
        // No anchor at all; too many.
        let e = parse(&base).unwrap_err().to_string();
        assert!(e.contains("sm2_roots") && e.contains("0 given"), "{e}");
        let many = vec![format!("{root:?}"); MAX_KEYS + 1].join(",");
        let e = parse(&with(&format!("sm2_roots = [{many}]")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("17 given"), "{e}");
        let ok = vec![format!("{root:?}"); MAX_KEYS].join(",");
        assert!(parse(&with(&format!("sm2_roots = [{ok}]"))).is_ok());
        // Bad files are named by key and path.
        let e = parse(&with(&format!("sm2_roots = [{:?}]", chain_file)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sm2_roots[0]") && e.contains("2 certificates"),
            "{e}"
        );
        let e = parse(&with(&format!("sm2_roots = [{:?}]", public)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sm2_roots[0]"), "{e}");
        let e = parse(&with(&format!("ed25519_key_files = [{:?}]", root)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ed25519_key_files[0]"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = parse(&with(&format!("sm2_roots = [{missing:?}]")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sm2_roots[0]") && e.contains("missing.pem"),
            "{e}"
        );
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'x'; myriad_ota::keygen::MAX_KEY_FILE + 1]).unwrap();
        let e = parse(&with(&format!("sm2_roots = [{big:?}]")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn shadow_table_is_checked_by_key() {
        let net = "[mqtt]\nhost = \"h\"\nid = \"d1\"\npassword = \"p\"\napi = \"http://h:1\"\n";
        assert!(parse_shadow(&text(net)).unwrap().is_none());
        let ok = format!("{net}[shadow]\napply = [\"/bin/true\"]\n");
        let s = parse_shadow(&text(&ok)).unwrap().unwrap();
        assert_eq!((s.report_every_secs, s.timeout_secs), (10, 30));
        let no_mqtt = text("[shadow]\napply = [\"/bin/true\"]\n");
        assert!(
            parse_shadow(&no_mqtt)
                .unwrap_err()
                .to_string()
                .contains("[mqtt]")
        );
        for (extra, key) in [
            ("", "give apply, report"),
            (
                "report = [\"x\"]\nreport_every_secs = 0\n",
                "shadow.report_every_secs",
            ),
            (
                "report = [\"x\"]\nreport_every_secs = 86401\n",
                "shadow.report_every_secs",
            ),
            (
                "report = [\"x\"]\ntimeout_secs = 3601\n",
                "shadow.timeout_secs",
            ),
            ("apply = [\"\"]\n", "shadow.apply"),
            ("report = [\"x\"]\ncolour = 1\n", "colour"),
        ] {
            let e = parse_shadow(&text(&format!("{net}[shadow]\n{extra}")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let args = vec!["\"a\""; crate::selftest::MAX_SELF_TEST_ARGS + 1].join(",");
        let e = parse_shadow(&text(&format!("{net}[shadow]\nreport = [{args}]\n")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("shadow.report"), "{e}");
        let args = vec!["\"a\""; crate::selftest::MAX_SELF_TEST_ARGS].join(",");
        assert!(parse_shadow(&text(&format!("{net}[shadow]\nreport = [{args}]\n"))).is_ok());
    }
}
