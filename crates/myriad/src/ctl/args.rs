//! The command line of `myriad ctl`: one subcommand per API operation.
//!
//! Values that can be checked without the server (`k=v` pairs, JSON
//! documents) are parsed here, so a typo fails before any request.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// The commands of `myriad ctl`.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Commands that call the platform's HTTP API.
    #[command(flatten)]
    Api(ApiCommand),
    /// Print an Argon2id PHC hash of a password, for `password_hash` in
    /// bulk import files. Needs no server.
    HashPassword(PasswordArgs),
    /// Certificates for trying TLS locally. Needs no server.
    #[command(subcommand)]
    Certs(super::certs::CertsCommand),
    /// OTA updates: development signing keys for update manifests. Needs no server.
    #[command(subcommand)]
    Ota(super::ota::OtaCommand),
}

/// The commands that map 1:1 to API requests (see [`super::request`]).
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Register, inspect, change and remove devices.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Which devices are online.
    #[command(subcommand)]
    Presence(PresenceCommand),
    /// Device shadows: desired and reported state.
    #[command(subcommand)]
    Shadow(ShadowCommand),
    /// Application and admin clients.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Device commands: send, follow, cancel, fan out.
    #[command(subcommand)]
    Commands(super::commands::CommandsCommand),
    /// Device certificates pinned in the registry: add, list, revoke.
    #[command(subcommand)]
    DeviceCerts(super::registry_certs::DeviceCertsCommand),
    /// Certificate authorities whose certificates identify devices.
    #[command(subcommand)]
    Cas(super::registry_certs::CasCommand),
    /// The server's TLS listeners.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Device telemetry: query, latest, export, bulk write.
    #[command(subcommand)]
    Telemetry(super::telemetry::TelemetryCommand),
    /// Data pipelines: state, last error and counters; apply and delete API pipelines.
    #[command(subcommand)]
    Pipelines(super::pipelines::PipelinesCommand),
    /// Operator users (roles, passwords, API tokens) of the API and console.
    #[command(subcommand)]
    Users(super::users::UsersCommand),
    /// The audit log of operator actions, newest first.
    Audit(super::users::AuditArgs),
    /// Profiles and task counts (admin): heap and CPU profiles to standard output.
    #[command(subcommand)]
    Debug(super::debug::DebugCommand),
}

/// `ctl tls ...`
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Read every TLS listener's certificate, key and CAs again (as
    /// SIGHUP does); open connections stay. Fails naming the file when
    /// one does not load (that listener keeps its settings).
    Reload,
}

/// `ctl devices ...`
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Register a device.
    Create(DeviceCreate),
    /// Show one device.
    Get(IdArg),
    /// List devices, filtered, one page or all of them.
    List(DeviceList),
    /// Change a device's name, attributes, groups or enabled state.
    Update(DeviceUpdate),
    /// Remove a device and everything kept for it (credentials, shadow,
    /// presence, MQTT session, retained messages, pending commands).
    Delete(IdArg),
    /// Set a device's MQTT password (its open connection is closed).
    SetPassword(SetPassword),
    /// Close a device's open MQTT connection (it may reconnect at once;
    /// `update --disable` keeps it out).
    Kick(IdArg),
    /// Provision devices in bulk from a CSV or JSON-lines file.
    Import(DeviceImport),
    /// List the device groups with how many devices each has.
    Groups(PageArgs),
}

/// `ctl presence ...`
#[derive(Debug, Subcommand)]
pub enum PresenceCommand {
    /// Show whether one device is online.
    Get(IdArg),
    /// List the ids of online devices.
    List(PageArgs),
    /// Count online and registered devices.
    Count,
}

/// `ctl shadow ...`
#[derive(Debug, Subcommand)]
pub enum ShadowCommand {
    /// Show a device's shadow document.
    Get(IdArg),
    /// Merge a JSON document into the desired state.
    SetDesired(ShadowSetDesired),
    /// Delete a device's shadow.
    Delete(IdArg),
}

/// `ctl apps ...`
#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Register an application (or admin) client.
    Create(AppCreate),
    /// List application clients.
    List,
    /// Show one application client.
    Get(IdArg),
    /// Change an application client's name, ACL, admin flag or password
    /// (its open connections are closed).
    Update(AppUpdate),
    /// Remove an application client.
    Delete(IdArg),
}

/// A single id argument.
#[derive(Debug, Args)]
pub struct IdArg {
    /// The id.
    pub id: String,
}

/// A password given on the command line or read from standard input;
/// one of the two is required.
#[derive(Debug, Clone, Default, Args)]
#[group(id = "password_source", required = true, multiple = false)]
pub struct PasswordArgs {
    /// The password (visible in the process list: prefer --password-stdin).
    #[arg(long)]
    pub password: Option<String>,
    /// Read the password from standard input (a trailing newline is
    /// dropped).
    #[arg(long)]
    pub password_stdin: bool,
}

/// Like [`PasswordArgs`], but the password may be left out.
#[derive(Debug, Clone, Default, Args)]
#[group(id = "optional_password_source", required = false, multiple = false)]
pub struct OptionalPasswordArgs {
    /// An initial MQTT password (visible in the process list: prefer
    /// --password-stdin).
    #[arg(long)]
    pub password: Option<String>,
    /// Read the initial password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `ctl devices create`
#[derive(Debug, Args)]
pub struct DeviceCreate {
    /// The device id, also its MQTT client id and username.
    pub id: String,
    /// A human-readable name.
    #[arg(long)]
    pub name: Option<String>,
    /// An attribute, `key=value`; repeat for more.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub attrs: Vec<(String, String)>,
    /// A group to put the device in; repeat for more.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Create the device disabled (it may not log in).
    #[arg(long)]
    pub disabled: bool,
    /// Password options.
    #[command(flatten)]
    pub password: OptionalPasswordArgs,
}

/// Paging options shared by the list commands.
#[derive(Debug, Clone, Default, Args)]
pub struct PageArgs {
    /// Page size (the server caps it).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start after this id (the `next` of the previous page).
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
    /// Follow `next` until the last page and print everything.
    #[arg(long)]
    pub all: bool,
}

/// `ctl devices list`
#[derive(Debug, Args)]
pub struct DeviceList {
    /// Only ids starting with this prefix.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only names containing this string.
    #[arg(long)]
    pub name_contains: Option<String>,
    /// Only devices with this attribute, `key=value`.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub attr: Option<(String, String)>,
    /// Only devices in this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Only enabled (`true`) or disabled (`false`) devices.
    #[arg(long, value_name = "true|false")]
    pub enabled: Option<bool>,
    /// Paging.
    #[command(flatten)]
    pub page: PageArgs,
}

/// `ctl devices update`
#[derive(Debug, Args)]
pub struct DeviceUpdate {
    /// The device id.
    pub id: String,
    /// A new name.
    #[arg(long)]
    pub name: Option<String>,
    /// Set an attribute, `key=value`; repeat for more. Other attributes
    /// stay.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub attrs: Vec<(String, String)>,
    /// Remove an attribute; repeat for more.
    #[arg(long = "unset-attr", value_name = "KEY")]
    pub unset_attrs: Vec<String>,
    /// The new groups: when given, they replace all current groups.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Remove the device from all groups.
    #[arg(long, conflicts_with = "groups")]
    pub clear_groups: bool,
    /// Enable the device.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable the device (it may no longer log in).
    #[arg(long)]
    pub disable: bool,
}

/// `ctl devices set-password`
#[derive(Debug, Args)]
pub struct SetPassword {
    /// The device id.
    pub id: String,
    /// The new password.
    #[command(flatten)]
    pub password: PasswordArgs,
}

/// Formats of bulk import files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl ImportFormat {
    /// The name used in the `format` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportFormat::Csv => "csv",
            ImportFormat::Jsonl => "jsonl",
        }
    }

    /// The `Content-Type` of a file of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            ImportFormat::Csv => "text/csv",
            ImportFormat::Jsonl => "application/x-ndjson",
        }
    }
}

/// `ctl devices import`
#[derive(Debug, Args)]
pub struct DeviceImport {
    /// The file to import; it is streamed, not loaded into memory.
    pub file: PathBuf,
    /// The file's format; by default from its extension (`.csv`, `.jsonl`
    /// or `.ndjson`).
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,
    /// Update devices that exist already (their name, attributes, groups
    /// and enabled state become the row's; the password only when the row
    /// gives one) instead of reporting their rows as failed.
    #[arg(long)]
    pub upsert: bool,
}

/// `ctl shadow set-desired`
#[derive(Debug, Args)]
pub struct ShadowSetDesired {
    /// The device id.
    pub id: String,
    /// The desired state to merge, a JSON document (`null` members remove
    /// keys).
    #[arg(value_name = "JSON", value_parser = parse_json)]
    pub desired: serde_json::Value,
    /// Apply only if the shadow is at this version.
    #[arg(long)]
    pub version: Option<u64>,
    /// A token echoed in the response and on the shadow topics.
    #[arg(long)]
    pub client_token: Option<String>,
}

/// `ctl apps create`
#[derive(Debug, Args)]
pub struct AppCreate {
    /// The client id, also its MQTT username.
    pub id: String,
    /// A human-readable name.
    #[arg(long)]
    pub name: Option<String>,
    /// A topic filter the client may publish to; repeat for more.
    #[arg(long = "publish", value_name = "FILTER")]
    pub publish: Vec<String>,
    /// A topic filter the client may subscribe within; repeat for more.
    #[arg(long = "subscribe", value_name = "FILTER")]
    pub subscribe: Vec<String>,
    /// An admin client may publish and subscribe anywhere.
    #[arg(long)]
    pub admin: bool,
    /// The client's MQTT password.
    #[command(flatten)]
    pub password: PasswordArgs,
}

/// `ctl apps update`
#[derive(Debug, Args)]
pub struct AppUpdate {
    /// The client id.
    pub id: String,
    /// A new name.
    #[arg(long)]
    pub name: Option<String>,
    /// A topic filter the client may publish to; repeat for more. When
    /// given, the filters replace the current ones.
    #[arg(long = "publish", value_name = "FILTER")]
    pub publish: Vec<String>,
    /// Remove every publish filter.
    #[arg(long, conflicts_with = "publish")]
    pub clear_publish: bool,
    /// A topic filter the client may subscribe within; repeat for more.
    /// When given, the filters replace the current ones.
    #[arg(long = "subscribe", value_name = "FILTER")]
    pub subscribe: Vec<String>,
    /// Remove every subscribe filter.
    #[arg(long, conflicts_with = "subscribe")]
    pub clear_subscribe: bool,
    /// Make it an admin client.
    #[arg(long, conflicts_with = "no_admin")]
    pub admin: bool,
    /// Make it an ordinary app client.
    #[arg(long)]
    pub no_admin: bool,
    /// A new MQTT password.
    #[command(flatten)]
    pub password: OptionalPasswordArgs,
}

/// Parses `key=value` (split at the first `=`; the key may not be empty).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Parses a JSON document.
pub fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}
