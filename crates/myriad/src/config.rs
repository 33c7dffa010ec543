//! The config file: one TOML document whose tables configure each part.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use myriad_broker::BrokerConfig;
use serde::Deserialize;

/// The whole config file. Unknown tables and keys stop start-up.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The MQTT broker.
    pub mqtt: BrokerConfig,
    /// Where sessions, queued messages and retained messages are kept.
    pub store: StoreConfig,
    /// Threads of the network runtime.
    pub runtime: RuntimeConfig,
    /// Who may connect over MQTT.
    pub auth: AuthConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// Cloud-to-device commands: timeouts, retries, rate limits, breakers.
    pub commands: myriad_fleet::commands::CommandsConfig,
    /// Device shadows over MQTT: requests per device.
    pub shadows: myriad_fleet::service::shadows::ShadowConfig,
    /// The device registry: how often `last_seen` is sampled and stored.
    pub devices: DevicesConfig,
    /// Log lines on stderr.
    pub log: LogConfig,
    /// The `/metrics` endpoint.
    pub metrics: MetricsConfig,
    /// The leak watchdog.
    pub watchdog: WatchdogConfig,
    /// Profiling (`/debug`): see docs/observability.md.
    pub debug: DebugConfig,
    /// Distributed tracing (OpenTelemetry over OTLP).
    pub tracing: TracingConfig,
    /// Device telemetry storage (`devices/{id}/telemetry`), in `{store.data_dir}/telemetry`.
    pub telemetry: myriad_fleet::service::telemetry::TelemetryConfig,
    /// Firmware updates: artifact and rollout limits (artifacts in `{store.data_dir}/ota`).
    pub ota: myriad_fleet::service::ota::OtaConfig,
    /// Data pipelines (`[[pipelines]]`): see docs/pipelines.md.
    pub pipelines: Vec<crate::pipelines::PipelineEntry>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[log]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json` (`--log-format` overrides it).
    pub format: LogFormat,
    /// Which lines to write, as a `tracing` filter (e.g. `info`,
    /// `info,myriad_broker=debug`); `MYRIAD_LOG` overrides it. Default `info`.
    pub filter: Option<String>,
}

/// The `[devices]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Seconds between two samples of online devices' activity: each
    /// moves `last_seen` of the devices heard from since the last one and
    /// stores those records in one commit (no write per packet). 1 to
    /// 3600; default 30.
    pub last_seen_flush_secs: u64,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            last_seen_flush_secs: 30,
        }
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether `GET /metrics` needs the API token (off: scrapers send none).
    pub require_token: bool,
}

/// The `[debug]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Switch jemalloc's heap profiler on at start (default off; it is compiled in either way
    /// and `PUT /debug/pprof/heap/active` switches it at run time).
    pub heap_profiling: bool,
}

/// The `[watchdog]` table: see docs/observability.md.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    /// Run the leak watchdog.
    pub enabled: bool,
    /// Seconds between checks.
    pub interval_secs: u64,
    /// Largest tolerated deviation between connection tasks, sessions and
    /// sockets, as a fraction of the larger count.
    pub max_deviation: f64,
    /// Deviations up to this many connections are always tolerated.
    pub slack: u64,
    /// Consecutive checks of growing allocator memory (with connections
    /// not growing) that raise a memory alert.
    pub growth_checks: usize,
    /// Least growth over those checks for a memory alert, in MiB.
    pub growth_min_mib: u64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        let rules = myriad_broker::watchdog::Rules::default();
        WatchdogConfig {
            enabled: true,
            interval_secs: 30,
            max_deviation: rules.max_deviation,
            slack: rules.slack,
            growth_checks: rules.growth_checks,
            growth_min_mib: rules.growth_min_bytes / (1024 * 1024),
        }
    }
}

impl WatchdogConfig {
    /// The rules the watchdog applies.
    pub fn rules(&self) -> myriad_broker::watchdog::Rules {
        myriad_broker::watchdog::Rules {
            max_deviation: self.max_deviation,
            slack: self.slack,
            growth_checks: self.growth_checks,
            growth_min_bytes: self.growth_min_mib.saturating_mul(1024 * 1024),
        }
    }
}

/// The `[tracing]` table. Off by default: without `otlp_endpoint` no span
/// is exported and MQTT messages pass untouched.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// OTLP/HTTP collector base URL, e.g. `http://127.0.0.1:4318` (spans go
    /// to `{endpoint}/v1/traces`). Unset: tracing export is off.
    pub otlp_endpoint: Option<String>,
    /// Fraction (0 to 1) of messages without a `traceparent` that start a
    /// sampled trace. Messages with one follow its sampled flag.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sample_ratio: 0.0,
            service_name: "myriad".to_string(),
        }
    }
}

/// The `[auth]` table. Devices and application clients registered through
/// the API log in with their credentials; this decides about the others.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Let clients without a user name connect (kept out of the device and
    /// platform namespaces). On by default so `myriad serve` works out of
    /// the box; turn it off in production.
    pub allow_anonymous: bool,
    /// Argon2 password verifications running at once (on the blocking
    /// pool; each takes ~19 MiB and tens of ms of CPU). Default 4, at
    /// least 1, at most 1024.
    pub max_concurrent_password_checks: usize,
    /// Logins waiting for a password-check slot; a login arriving when
    /// this many wait is refused at once with CONNACK 0x88 Server
    /// unavailable (3.1.1: 0x03), not counted as a failure. Default 64,
    /// at most 100,000 (0: refuse whenever every slot is busy).
    pub password_check_queue: usize,
    /// Where a TLS client certificate names its device: `cn` (the subject
    /// common name, the default) or `san_uri` (a URI subject alternative
    /// name starting with `certificate_uri_prefix`, less the prefix).
    pub certificate_identity: CertificateIdentityKind,
    /// The URI prefix for `certificate_identity = "san_uri"`. Default
    /// `urn:myriad:device:`; not empty, at most 256 bytes.
    pub certificate_uri_prefix: String,
}

/// `auth.certificate_identity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateIdentityKind {
    /// The subject CN.
    #[default]
    Cn,
    /// A URI SAN with the configured prefix.
    SanUri,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let checks = myriad_fleet::service::auth::PasswordChecks::default();
        AuthConfig {
            allow_anonymous: true,
            max_concurrent_password_checks: checks.max_concurrent,
            password_check_queue: checks.max_queued,
            certificate_identity: CertificateIdentityKind::Cn,
            certificate_uri_prefix: myriad_fleet::certs::identity::DEFAULT_URI_PREFIX.to_owned(),
        }
    }
}

impl AuthConfig {
    /// Where certificates name their device.
    pub fn certificate_identity(&self) -> myriad_fleet::certs::CertificateIdentity {
        match self.certificate_identity {
            CertificateIdentityKind::Cn => myriad_fleet::certs::CertificateIdentity::CommonName,
            CertificateIdentityKind::SanUri => myriad_fleet::certs::CertificateIdentity::SanUri {
                prefix: self.certificate_uri_prefix.clone(),
            },
        }
    }

    /// The bounds on password verification.
    pub fn password_checks(&self) -> myriad_fleet::service::auth::PasswordChecks {
        myriad_fleet::service::auth::PasswordChecks {
            max_concurrent: self.max_concurrent_password_checks,
            max_queued: self.password_check_queue,
        }
    }
}

/// The `[api]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the HTTP API.
    pub enabled: bool,
    /// Address of the HTTP API.
    pub listen: String,
    /// The operators' bearer token. When unset (and `MYRIAD_API_TOKEN` is
    /// not given), a random one is generated at start and written to
    /// `{store.data_dir}/api-token`.
    pub token: Option<String>,
    /// HTTP connections kept at once. At the cap a new connection evicts
    /// the quietest one without a request in flight (or is closed at once
    /// if every connection has one). Default 1,024, between 1 and 100,000.
    pub max_connections: usize,
    /// Seconds a request head may take from its first byte (slowloris).
    /// Default 10, between 1 and 3,600.
    pub header_timeout_secs: u64,
    /// Seconds a connection without a request in flight may stay quiet
    /// (keep-alive). Default 60, between 1 and 3,600.
    pub idle_timeout_secs: u64,
    /// Seconds a request body may stall without data before the request
    /// fails and the connection is closed. Default 30, between 1 and 3,600.
    pub body_timeout_secs: u64,
    /// Server-Sent Event streams (`GET /api/v1/events`) open at once; one
    /// more is refused with 503. Default 256, between 1 and 100,000; in
    /// force at most `api.max_connections - 1` (see [`ApiConfig::event_streams`]).
    pub max_event_streams: usize,
    /// Serve the API over TLS instead of plain HTTP (`[api.tls]`; absent:
    /// plain HTTP). See docs/tls.md.
    pub tls: Option<ApiTlsConfig>,
    /// How long an operator's login session lasts, seconds. Default 43,200
    /// (12 h), between 60 and 2,592,000 (30 days).
    pub session_ttl_secs: u64,
    /// Most entries kept in the audit log (the oldest are trimmed). Default
    /// 100,000, between 100 and 10,000,000.
    pub audit_max_entries: u64,
    /// Failed logins in a row that lock a user name out (1 s, doubling per
    /// further failure up to 15 min); an address is locked after four
    /// times as many. Default 5, between 1 and 100.
    pub login_max_failures: u32,
}

/// The `[api.tls]` table: the API's certificate and, optionally, the CAs
/// operators' client certificates are checked against. The same keys, and
/// the same loading and SIGHUP reload, as a `tls` MQTT listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// PEM file with the server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the server's private key: PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
    /// PEM bundle of the CAs whose client certificates are accepted
    /// (required unless `client_certs` is `none`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// PEM file of revocation lists from the client CAs (with `client_ca`).
    #[serde(default)]
    pub client_crl: Option<PathBuf>,
    /// Whether clients present certificates: `none` (the default),
    /// `optional` (verified when presented) or `require`.
    #[serde(default)]
    pub client_certs: myriad_broker::config::ClientCertPolicy,
}

impl ApiTlsConfig {
    /// The equivalent TLS listener entry (for the broker's TLS loader).
    pub fn listener(&self, listen: &str) -> myriad_broker::config::ListenerConfig {
        myriad_broker::config::ListenerConfig {
            kind: myriad_broker::config::ListenerKind::Tls,
            listen: listen.to_string(),
            path: None,
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
            client_ca: self.client_ca.clone(),
            client_crl: self.client_crl.clone(),
            client_certs: self.client_certs,
        }
    }

    fn validate(&self) -> Result<()> {
        use myriad_broker::config::ClientCertPolicy;
        if self.client_certs != ClientCertPolicy::None && self.client_ca.is_none() {
            bail!(
                "invalid value for api.tls.client_ca: client_certs = optional or require needs the CAs to verify against"
            );
        }
        if self.client_crl.is_some() && self.client_ca.is_none() {
            bail!("invalid value for api.tls.client_crl: needs client_ca");
        }
        Ok(())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        let limits = myriad_api::HttpLimits::default();
        ApiConfig {
            enabled: true,
            listen: "127.0.0.1:8080".to_string(),
            token: None,
            max_connections: limits.max_connections,
            header_timeout_secs: limits.header_timeout.as_secs(),
            idle_timeout_secs: limits.idle_timeout.as_secs(),
            body_timeout_secs: limits.body_timeout.as_secs(),
            max_event_streams: myriad_api::console::DEFAULT_MAX_EVENT_STREAMS,
            tls: None,
            session_ttl_secs: 12 * 3600,
            audit_max_entries: 100_000,
            login_max_failures: 5,
        }
    }
}

impl ApiConfig {
    /// The operator accounts' settings (`hash_params`: Argon2 costs of new passwords).
    pub fn operators(
        &self,
        hash_params: myriad_fleet::credentials::HashParams,
    ) -> myriad_fleet::operators::OperatorsConfig {
        let defaults = myriad_fleet::operators::LoginLimits::default();
        myriad_fleet::operators::OperatorsConfig {
            session_ttl_ms: self.session_ttl_secs.saturating_mul(1000),
            audit_max_entries: self.audit_max_entries,
            login: myriad_fleet::operators::LoginLimits {
                max_failures: self.login_max_failures,
                max_failures_per_ip: self.login_max_failures.saturating_mul(4),
                ..defaults
            },
            hash_params,
            max_sessions: myriad_fleet::operators::MAX_SESSIONS,
        }
    }

    /// Event streams allowed at once: `max_event_streams`, but fewer than
    /// `max_connections` (at least 1), so streams never hold every
    /// connection and an operator can always get in.
    pub fn event_streams(&self) -> usize {
        self.max_event_streams
            .min(self.max_connections.saturating_sub(1))
            .max(1)
    }

    /// The HTTP server's limits.
    pub fn limits(&self) -> myriad_api::HttpLimits {
        myriad_api::HttpLimits {
            max_connections: self.max_connections,
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
        }
    }
}

/// The `[runtime]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads serving connections: 1 (the default) runs one event loop,
    /// which keeps packets from different connections in arrival order; 0
    /// uses one thread per core; any other number that many threads.
    pub threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { threads: 1 }
    }
}

/// Which store keeps the broker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// The embedded database in `data_dir` (the default; no server needed).
    Embedded,
    /// Memory only: nothing survives a restart.
    Memory,
}

/// When acknowledgements wait for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitMode {
    /// One commit per acknowledgement.
    PerAck,
    /// Acknowledgements arriving within `group_window_ms` share one commit.
    Group,
}

/// The `[store]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `embedded` or `memory`.
    pub backend: StoreBackend,
    /// Directory of the embedded database (relative to the working directory).
    pub data_dir: PathBuf,
    /// Whether each commit is synced to disk before acknowledgements go out.
    pub fsync: bool,
    /// `group` or `per_ack`.
    pub commit: CommitMode,
    /// How long a group commit waits for more acknowledgements, in milliseconds.
    pub group_window_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            data_dir: PathBuf::from("myriad-data"),
            fsync: true,
            commit: CommitMode::Group,
            group_window_ms: 2,
        }
    }
}

impl StoreConfig {
    /// The group commit window.
    pub fn group_window(&self) -> Duration {
        Duration::from_millis(self.group_window_ms)
    }
}

impl Config {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("bad config file {}", path.display()))
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = match toml::from_str(text) {
            Ok(config) => config,
            Err(error) => bail!("{}", error.to_string().trim_end()),
        };
        config.mqtt.validate()?;
        if config.api.token.as_deref().is_some_and(|t| t.len() < 16) {
            bail!("invalid value for api.token: use at least 16 characters");
        }
        if let Some(filter) = &config.log.filter
            && let Err(error) = tracing_subscriber::EnvFilter::try_new(filter)
        {
            bail!("invalid value for log.filter: {error}");
        }
        let ratio = config.tracing.sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            bail!("invalid value for tracing.sample_ratio: between 0 and 1");
        }
        if let Some(endpoint) = &config.tracing.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            bail!("invalid value for tracing.otlp_endpoint: an http:// or https:// URL");
        }
        if !(1..=3600).contains(&config.devices.last_seen_flush_secs) {
            bail!("invalid value for devices.last_seen_flush_secs: between 1 and 3600 seconds");
        }
        if config.watchdog.interval_secs == 0 {
            bail!("invalid value for watchdog.interval_secs: at least 1");
        }
        let deviation = config.watchdog.max_deviation;
        if !(deviation > 0.0 && deviation <= 1.0) {
            bail!("invalid value for watchdog.max_deviation: above 0, at most 1");
        }
        if let Err(problem) = config.commands.validate() {
            bail!("invalid value for commands.{problem}");
        }
        if let Err(problem) = config.ota.validate() {
            bail!("invalid value for ota.{problem}");
        }
        if let Err(problem) = config.shadows.validate() {
            bail!("invalid value for shadows.{problem}");
        }
        if let Err(problem) = config.telemetry.validate() {
            bail!("invalid value for telemetry.{problem}");
        }
        if !(1..=100_000).contains(&config.api.max_connections) {
            bail!("invalid value for api.max_connections: between 1 and 100000");
        }
        if !(1..=100_000).contains(&config.api.max_event_streams) {
            bail!("invalid value for api.max_event_streams: between 1 and 100000");
        }
        for (key, value) in [
            ("header_timeout_secs", config.api.header_timeout_secs),
            ("idle_timeout_secs", config.api.idle_timeout_secs),
            ("body_timeout_secs", config.api.body_timeout_secs),
        ] {
            if !(1..=3600).contains(&value) {
                bail!("invalid value for api.{key}: between 1 and 3600 seconds");
            }
        }
        if let Some(tls) = &config.api.tls {
            tls.validate()?;
        }
        if !(60..=2_592_000).contains(&config.api.session_ttl_secs) {
            bail!("invalid value for api.session_ttl_secs: between 60 and 2592000 seconds");
        }
        if !(100..=10_000_000).contains(&config.api.audit_max_entries) {
            bail!("invalid value for api.audit_max_entries: between 100 and 10000000");
        }
        if !(1..=100).contains(&config.api.login_max_failures) {
            bail!("invalid value for api.login_max_failures: between 1 and 100");
        }
        if !(1..=1024).contains(&config.auth.max_concurrent_password_checks) {
            bail!("invalid value for auth.max_concurrent_password_checks: between 1 and 1024");
        }
        if config.auth.password_check_queue > 100_000 {
            bail!("invalid value for auth.password_check_queue: at most 100000");
        }
        if config.auth.certificate_uri_prefix.is_empty()
            || config.auth.certificate_uri_prefix.len() > 256
        {
            bail!("invalid value for auth.certificate_uri_prefix: 1 to 256 bytes");
        }
        crate::pipelines::build(
            &config.pipelines,
            &config.store.data_dir,
            config.telemetry.enabled,
        )?;
        if config.store.group_window_ms > 1000 {
            bail!(
                "invalid value for store.group_window_ms: at most 1000 (a window is milliseconds)"
            );
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_empty() {
        let config = Config::parse("").expect("empty config is valid");
        assert_eq!(config.mqtt, BrokerConfig::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let error = Config::parse("[mqtt]\nmax_keepalive = 5\n").expect_err("unknown key");
        assert!(format!("{error:#}").contains("max_keepalive"), "{error:#}");
        let error = Config::parse("[mqt]\n").expect_err("unknown table");
        assert!(format!("{error:#}").contains("mqt"), "{error:#}");
    }

    #[test]
    fn telemetry_table() {
        let config = Config::parse("").expect("empty");
        assert!(config.telemetry.enabled);
        assert_eq!(config.telemetry.seal_interval_secs, 600);
        let config = Config::parse("[telemetry]\nenabled = false\nseal_interval_secs = 86400\n")
            .expect("valid");
        assert!(!config.telemetry.enabled);
        let error = Config::parse("[telemetry]\nenabld = true\n").expect_err("unknown key");
        assert!(format!("{error:#}").contains("enabld"), "{error:#}");
        assert_eq!(
            (
                config.telemetry.raw_retention_days,
                config.telemetry.rollup_retention_days
            ),
            (30, 365)
        );
        let config =
            Config::parse("[telemetry]\nraw_retention_days = 2\nrollup_retention_days = 2\n")
                .expect("valid");
        assert_eq!(config.telemetry.raw_retention_days, 2);
        for (bad, key) in [
            ("raw_retention_days = 0", "telemetry.raw_retention_days"),
            ("raw_retention_days = 36501", "telemetry.raw_retention_days"),
            (
                "raw_retention_days = 10\nrollup_retention_days = 9",
                "telemetry.rollup_retention_days",
            ),
            (
                "rollup_retention_days = 36501",
                "telemetry.rollup_retention_days",
            ),
        ] {
            let error = Config::parse(&format!("[telemetry]\n{bad}\n")).expect_err(bad);
            assert!(format!("{error:#}").contains(key), "{bad}: {error:#}");
        }
        // Retention per metric pattern.
        let config = Config::parse(
            "[[telemetry.retention]]\nmetrics = \"debug.*\"\nraw_days = 2\nrollup_days = 7\n",
        )
        .expect("valid");
        assert_eq!(config.telemetry.retention.len(), 1);
        assert_eq!(config.telemetry.retention[0].metrics, "debug.*");
        for (bad, key) in [
            (
                "metrics = \"\"\nraw_days = 1\nrollup_days = 1",
                "telemetry.retention[0].metrics",
            ),
            (
                "metrics = \"a\"\nraw_days = 3\nrollup_days = 2",
                "telemetry.retention[0].rollup_days",
            ),
            ("metrics = \"a\"\nraw_days = 1", "rollup_days"),
            (
                "metrics = \"a\"\nraw_days = 1\nrollup_days = 1\nraw = 2",
                "raw",
            ),
        ] {
            let error = Config::parse(&format!("[[telemetry.retention]]\n{bad}\n")).expect_err(bad);
            assert!(format!("{error:#}").contains(key), "{bad}: {error:#}");
        }
        for bad in [0, 86_401] {
            let error = Config::parse(&format!("[telemetry]\nseal_interval_secs = {bad}\n"))
                .expect_err("out of range");
            assert!(
                format!("{error:#}").contains("telemetry.seal_interval_secs"),
                "{error:#}"
            );
        }
    }

    #[test]
    fn out_of_range_value_is_named() {
        let error = Config::parse("[mqtt]\nreceive_maximum = 0\n").expect_err("zero");
        assert!(
            format!("{error:#}").contains("mqtt.receive_maximum"),
            "{error:#}"
        );
        let error = Config::parse("[mqtt]\nmax_packet_size = -1\n").expect_err("negative");
        assert!(
            format!("{error:#}").contains("max_packet_size"),
            "{error:#}"
        );
        let error = Config::parse("[mqtt]\ndeny_subscribe = [\"a/#/b\"]\n").expect_err("filter");
        assert!(format!("{error:#}").contains("deny_subscribe"), "{error:#}");
    }

    #[test]
    fn store_section() {
        assert_eq!(
            Config::parse("").expect("empty").store,
            StoreConfig::default()
        );
        let config = Config::parse(
            "[store]\nbackend = \"memory\"\ncommit = \"per_ack\"\nfsync = false\ndata_dir = \"/tmp/x\"\n",
        )
        .expect("valid");
        assert_eq!(config.store.backend, StoreBackend::Memory);
        assert_eq!(config.store.commit, CommitMode::PerAck);
        assert!(!config.store.fsync);
        let error = Config::parse("[store]\nbackend = \"sled\"\n").expect_err("unknown backend");
        assert!(format!("{error:#}").contains("backend"), "{error:#}");
        let error = Config::parse("[store]\ngroup_window_ms = 5000\n").expect_err("window");
        assert!(
            format!("{error:#}").contains("store.group_window_ms"),
            "{error:#}"
        );
    }

    #[test]
    fn commands_section() {
        let config = Config::parse(
            "[commands]\ndefault_timeout_ms = 500\n[commands.rate_l3]\nper_second = 2.0\nburst = 3\n[commands.breaker_device]\nconsecutive_failures = 2\n",
        )
        .expect("valid");
        assert_eq!(config.commands.default_timeout_ms, 500);
        assert_eq!(config.commands.rate_l3.burst, 3);
        assert_eq!(config.commands.breaker_device.consecutive_failures, 2);
        assert_eq!(
            config.commands.breaker_device.cool_down_ms, 10_000,
            "other keys default"
        );
        let error = Config::parse("[commands]\ntimeout = 5\n").expect_err("unknown key");
        assert!(format!("{error:#}").contains("timeout"), "{error:#}");
        let error = Config::parse("[commands.rate_l1]\nrate = 5\n").expect_err("unknown key");
        assert!(format!("{error:#}").contains("rate"), "{error:#}");
        let error =
            Config::parse("[commands.breaker_class]\nfailure_rate = 2.0\n").expect_err("range");
        assert!(
            format!("{error:#}").contains("commands.breaker_class.failure_rate"),
            "{error:#}"
        );
        let error = Config::parse("[commands]\nmax_in_flight = 0\n").expect_err("zero");
        assert!(
            format!("{error:#}").contains("commands.max_in_flight"),
            "{error:#}"
        );
    }

    #[test]
    fn password_check_bounds() {
        let config = Config::parse("").expect("empty");
        assert_eq!(config.auth.max_concurrent_password_checks, 4);
        assert_eq!(config.auth.password_check_queue, 64);
        for (text, key) in [
            (
                "[auth]\nmax_concurrent_password_checks = 0\n",
                "auth.max_concurrent_password_checks",
            ),
            (
                "[auth]\npassword_check_queue = 1000000\n",
                "auth.password_check_queue",
            ),
            ("[api]\nmax_connections = 0\n", "api.max_connections"),
            ("[api]\nmax_event_streams = 0\n", "api.max_event_streams"),
            (
                "[api]\nmax_event_streams = 100001\n",
                "api.max_event_streams",
            ),
            (
                "[api]\nheader_timeout_secs = 0\n",
                "api.header_timeout_secs",
            ),
            (
                "[api]\nidle_timeout_secs = 99999\n",
                "api.idle_timeout_secs",
            ),
            ("[api]\nbody_timeout_secs = 0\n", "api.body_timeout_secs"),
            ("[api]\nsession_ttl_secs = 59\n", "api.session_ttl_secs"),
            ("[api]\naudit_max_entries = 99\n", "api.audit_max_entries"),
            ("[api]\nlogin_max_failures = 0\n", "api.login_max_failures"),
            (
                "[api.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_certs = \"require\"\n",
                "api.tls.client_ca",
            ),
            (
                "[api.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_crl = \"r.pem\"\n",
                "api.tls.client_crl",
            ),
        ] {
            let error = Config::parse(text).expect_err(text);
            assert!(format!("{error:#}").contains(key), "{text}: {error:#}");
        }
    }

    #[test]
    fn runtime_section() {
        assert_eq!(Config::parse("").expect("empty").runtime.threads, 1);
        let config = Config::parse("[runtime]\nthreads = 0\n").expect("valid");
        assert_eq!(config.runtime.threads, 0);
        let error = Config::parse("[runtime]\nworkers = 2\n").expect_err("unknown key");
        assert!(format!("{error:#}").contains("workers"), "{error:#}");
    }

    #[test]
    fn observability_sections() {
        let config = Config::parse("").expect("empty");
        assert_eq!(config.log.format, LogFormat::Text);
        assert!(!config.metrics.require_token);
        assert!(config.watchdog.enabled);
        assert_eq!(
            config.watchdog.rules(),
            myriad_broker::watchdog::Rules::default()
        );
        assert_eq!(config.tracing.otlp_endpoint, None);
        let config = Config::parse(
            "[log]\nformat = \"json\"\n[metrics]\nrequire_token = true\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.25\n[watchdog]\ninterval_secs = 5\n",
        )
        .expect("valid");
        assert_eq!(config.log.format, LogFormat::Json);
        assert!(config.metrics.require_token);
        assert_eq!(config.tracing.sample_ratio, 0.25);
        assert_eq!(config.watchdog.interval_secs, 5);
        for (text, key) in [
            ("[log]\nformat = \"xml\"\n", "format"),
            ("[tracing]\nsample_ratio = 1.5\n", "tracing.sample_ratio"),
            (
                "[tracing]\notlp_endpoint = \"127.0.0.1:4317\"\n",
                "tracing.otlp_endpoint",
            ),
            ("[tracing]\nendpoint = \"x\"\n", "endpoint"),
            ("[watchdog]\ninterval_secs = 0\n", "watchdog.interval_secs"),
            (
                "[watchdog]\nmax_deviation = 0.0\n",
                "watchdog.max_deviation",
            ),
            ("[metrics]\ntoken = true\n", "token"),
            ("[log]\nfilter = \"info,[\"\n", "log.filter"),
        ] {
            let error = Config::parse(text).expect_err(text);
            assert!(format!("{error:#}").contains(key), "{text}: {error:#}");
        }
    }

    #[test]
    fn values_are_read() {
        let config = Config::parse(
            "[mqtt]\nlisten = \"127.0.0.1:1\"\nmax_keep_alive_secs = 60\ndeny_subscribe = [\"test/nosubscribe\"]\n",
        )
        .expect("valid");
        assert_eq!(config.mqtt.listen, "127.0.0.1:1");
        assert_eq!(config.mqtt.max_keep_alive_secs, 60);
        assert_eq!(
            config.mqtt.deny_subscribe,
            vec!["test/nosubscribe".to_owned()]
        );
    }
}
