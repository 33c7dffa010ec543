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
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: true,
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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: "127.0.0.1:8080".to_string(),
            token: None,
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
        if let Err(problem) = config.commands.validate() {
            bail!("invalid value for commands.{problem}");
        }
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
    fn runtime_section() {
        assert_eq!(Config::parse("").expect("empty").runtime.threads, 1);
        let config = Config::parse("[runtime]\nthreads = 0\n").expect("valid");
        assert_eq!(config.runtime.threads, 0);
        let error = Config::parse("[runtime]\nworkers = 2\n").expect_err("unknown key");
        assert!(format!("{error:#}").contains("workers"), "{error:#}");
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
