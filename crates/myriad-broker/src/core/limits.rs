//! Topic limits: `mqtt.max_topic_levels` and `mqtt.max_topic_length`.
//!
//! Checked wherever a topic or filter enters the broker: PUBLISH (after any
//! alias is resolved), wills at CONNECT, SUBSCRIBE, in-process publishes and
//! records restored from a store. The trees no longer recurse on depth
//! (see [`super::tree`]); the limits bound the memory and time one topic may
//! cost.

use myriad_mqtt::topic::parse_shared;

use crate::config::BrokerConfig;

/// Number of levels of `topic` (a topic name or a filter).
fn levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// Whether the topic name `topic` is within the configured limits.
pub(crate) fn topic_fits(config: &BrokerConfig, topic: &str) -> bool {
    topic.len() <= config.max_topic_length && levels(topic) <= config.max_topic_levels
}

/// Whether the topic filter `filter` is within the configured limits: its
/// whole length (a `$share/{group}/` prefix included), and the levels of the
/// filter proper (the share prefix is not counted).
pub(crate) fn filter_fits(config: &BrokerConfig, filter: &str) -> bool {
    let inner = match parse_shared(filter) {
        Ok(Some(shared)) => shared.filter,
        _ => filter,
    };
    filter.len() <= config.max_topic_length && levels(inner) <= config.max_topic_levels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_length_are_counted_as_documented() {
        let config = BrokerConfig {
            max_topic_levels: 3,
            max_topic_length: 20,
            ..BrokerConfig::default()
        };
        assert!(topic_fits(&config, "a/b/c"));
        assert!(topic_fits(&config, "//"));
        assert!(!topic_fits(&config, "a/b/c/d"));
        assert!(!topic_fits(&config, "///"));
        assert!(!topic_fits(&config, &"x".repeat(21)));
        assert!(topic_fits(&config, &"x".repeat(20)));
        assert!(filter_fits(&config, "$share/g/a/+/#"));
        assert!(!filter_fits(&config, "$share/g/a/+/b/#"));
        assert!(!filter_fits(&config, "$share/group/a/b/cdefgh"));
        assert!(filter_fits(&config, "a/+/#"));
    }
}
