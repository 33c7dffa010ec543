//! Which of a connection's PUBLISHes go to the [`IngestSink`] before the
//! core sees them: those to the one topic the sink named for the client at
//! CONNECT, by name or through a Topic Alias the client set to it.

use std::sync::Mutex;

use myriad_mqtt::Publish;

use crate::hooks::IngestSink;

/// A connection's ingest topic and the Topic Aliases it set to that topic.
#[derive(Debug)]
pub(crate) struct IngestRoute {
    topic: Box<str>,
    /// Aliases (1 to the broker's `topic_alias_maximum`) that currently
    /// stand for `topic`; at most that many. Only the connection's task
    /// touches it: the lock is never contended.
    aliases: Mutex<Vec<u16>>,
}

impl IngestRoute {
    /// The route for `topic`.
    pub(crate) fn new(topic: String) -> IngestRoute {
        IngestRoute {
            topic: topic.into_boxed_str(),
            aliases: Mutex::new(Vec::new()),
        }
    }

    /// The topic whose messages go to the sink.
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether `publish` goes to the sink, keeping track of the aliases the
    /// client sets. A packet the core will refuse as malformed (an alias
    /// out of range, Subscription Identifiers) never goes to the sink: the
    /// core disconnects its sender.
    pub(crate) fn takes(&self, publish: &Publish, alias_maximum: u16) -> bool {
        if !publish.properties.subscription_identifiers.is_empty() {
            return false;
        }
        let alias = publish.properties.topic_alias;
        if alias.is_some_and(|a| a == 0 || a > alias_maximum) {
            return false;
        }
        let Ok(mut aliases) = self.aliases.lock() else {
            return false;
        };
        if publish.topic.is_empty() {
            return alias.is_some_and(|a| aliases.contains(&a));
        }
        let ours = *publish.topic == *self.topic;
        if let Some(a) = alias {
            let known = aliases.iter().position(|&x| x == a);
            match (ours, known) {
                (true, None) => aliases.push(a),
                (false, Some(i)) => {
                    aliases.swap_remove(i);
                }
                _ => {}
            }
        }
        ours
    }
}

/// The sink and the route of one connection, when it has both.
pub(crate) type Ingest<'a> = Option<(&'a dyn IngestSink, &'a IngestRoute)>;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use myriad_mqtt::{PacketProperties, QoS};

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        let mut p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: 1,
            payload: Bytes::from_static(b"{}"),
            properties: PacketProperties::new(),
        };
        p.properties.topic_alias = alias;
        p
    }

    #[test]
    fn follows_the_topic_and_its_aliases() {
        let route = IngestRoute::new("devices/d1/telemetry".into());
        assert!(route.takes(&publish("devices/d1/telemetry", None), 64));
        assert!(!route.takes(&publish("devices/d1/state", None), 64));
        assert!(!route.takes(&publish("", Some(3)), 64), "alias not set yet");
        assert!(route.takes(&publish("devices/d1/telemetry", Some(3)), 64));
        assert!(route.takes(&publish("", Some(3)), 64));
        assert!(!route.takes(&publish("", Some(4)), 64));
        // Alias 3 now stands for another topic.
        assert!(!route.takes(&publish("devices/d1/state", Some(3)), 64));
        assert!(!route.takes(&publish("", Some(3)), 64));
        // Out of range: the core refuses the packet, the sink never sees it.
        assert!(!route.takes(&publish("devices/d1/telemetry", Some(65)), 64));
        assert!(!route.takes(&publish("devices/d1/telemetry", Some(0)), 64));
        let mut with_ids = publish("devices/d1/telemetry", None);
        with_ids.properties.subscription_identifiers.push(1);
        assert!(!route.takes(&with_ids, 64));
    }
}
