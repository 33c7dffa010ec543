//! The config file: one TOML document whose tables configure each part.

use std::path::Path;

use anyhow::{Context, Result, bail};
use myriad_broker::BrokerConfig;
use serde::Deserialize;

/// The whole config file. Unknown tables and keys stop start-up.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The MQTT broker.
    pub mqtt: BrokerConfig,
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
