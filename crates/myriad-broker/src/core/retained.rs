//! Retained messages, indexed by topic level so wildcard subscriptions find them fast.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::message::Message;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

/// The retained message of every topic that has one.
#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    count: usize,
}

impl RetainedStore {
    /// An empty store.
    pub fn new() -> RetainedStore {
        RetainedStore::default()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no message is retained.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores `message` for its topic, or clears the topic when the payload is empty.
    pub fn set(&mut self, message: Arc<Message>) {
        if message.payload.is_empty() {
            self.clear(&message.topic);
            return;
        }
        let mut node = &mut self.root;
        for level in message.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            self.count += 1;
        }
    }

    /// Removes the retained message of `topic`, if any.
    pub fn clear(&mut self, topic: &str) {
        let levels: Vec<&str> = topic.split('/').collect();
        if clear_at(&mut self.root, &levels) {
            self.count -= 1;
        }
    }

    /// The retained messages whose topics match `filter`, dropping expired ones.
    pub fn matching(&mut self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        let mut expired = Vec::new();
        collect(&self.root, &levels, true, now, &mut out, &mut expired);
        for topic in expired {
            self.clear(&topic);
        }
        out
    }

    /// Every retained message, expired or not, in no particular order. The
    /// walk keeps its own stack: topics may be as deep as a peer makes them.
    pub fn all(&self) -> Vec<Arc<Message>> {
        let mut out = Vec::with_capacity(self.count);
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            out.extend(node.message.clone());
            stack.extend(node.children.values());
        }
        out
    }
}

fn clear_at(node: &mut Node, levels: &[&str]) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return node.message.take().is_some();
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let cleared = clear_at(child, rest);
    if child.message.is_none() && child.children.is_empty() {
        node.children.remove(*first);
    }
    cleared
}

fn collect(
    node: &Node,
    filter: &[&str],
    at_root: bool,
    now: Instant,
    out: &mut Vec<Arc<Message>>,
    expired: &mut Vec<String>,
) {
    let Some((first, rest)) = filter.split_first() else {
        take(node, now, out, expired);
        return;
    };
    match *first {
        "#" => {
            // `#` also matches the parent level itself ("a/#" matches "a").
            if !at_root {
                take(node, now, out, expired);
            }
            for (name, child) in &node.children {
                if at_root && name.starts_with('$') {
                    continue;
                }
                take_subtree(child, now, out, expired);
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if at_root && name.starts_with('$') {
                    continue;
                }
                collect(child, rest, false, now, out, expired);
            }
        }
        level => {
            if let Some(child) = node.children.get(level) {
                collect(child, rest, false, now, out, expired);
            }
        }
    }
}

fn take(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>, expired: &mut Vec<String>) {
    if let Some(message) = &node.message {
        if message.is_expired(now) {
            expired.push(message.topic.to_string());
        } else {
            out.push(message.clone());
        }
    }
}

fn take_subtree(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>, expired: &mut Vec<String>) {
    take(node, now, out, expired);
    for child in node.children.values() {
        take_subtree(child, now, out, expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use myriad_mqtt::{PacketProperties, QoS};
    use std::time::Duration;

    fn message(topic: &str, payload: &'static str, expires_at: Option<Instant>) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PacketProperties::new(),
            expires_at,
            publisher: None,
        })
    }

    fn topics(store: &mut RetainedStore, filter: &str) -> Vec<String> {
        let mut found: Vec<String> = store
            .matching(filter, Instant::now())
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        found.sort();
        found
    }

    #[test]
    fn set_replace_clear_and_match() {
        let mut store = RetainedStore::new();
        store.set(message("a/b", "1", None));
        store.set(message("a/b", "2", None));
        store.set(message("a/c/d", "3", None));
        store.set(message("a", "4", None));
        store.set(message("$SYS/x", "5", None));
        assert_eq!(store.len(), 4);
        assert_eq!(topics(&mut store, "a/+"), vec!["a/b"]);
        assert_eq!(topics(&mut store, "a/#"), vec!["a", "a/b", "a/c/d"]);
        assert_eq!(topics(&mut store, "#"), vec!["a", "a/b", "a/c/d"]);
        assert_eq!(topics(&mut store, "+/x"), Vec::<String>::new());
        assert_eq!(topics(&mut store, "$SYS/#"), vec!["$SYS/x"]);
        let latest = store.matching("a/b", Instant::now());
        assert_eq!(latest[0].payload, Bytes::from_static(b"2"));
        store.set(message("a/b", "", None));
        assert_eq!(topics(&mut store, "a/b"), Vec::<String>::new());
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn expired_messages_are_dropped() {
        let mut store = RetainedStore::new();
        let past = Instant::now() - Duration::from_secs(1);
        store.set(message("x", "old", Some(past)));
        assert!(topics(&mut store, "x").is_empty());
        assert!(store.is_empty());
    }
}
