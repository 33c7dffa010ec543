//! Retained messages, indexed by topic level so wildcard subscriptions find them fast.
//!
//! As in the subscription tree, every walk is a loop over an explicit stack
//! or path and dropping a node is iterative: a topic's depth is the
//! publisher's choice.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use super::deep_drop::{Subtree, drop_children};
use myriad_mqtt::ByteString;

use super::message::Message;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    /// Whether the node stays when its child on a removal path goes.
    fn keeps_without_one_child(&self) -> bool {
        self.message.is_some() || self.children.len() > 1
    }
}

impl Subtree for Node {
    fn take_children(&mut self) -> impl Iterator<Item = Node> {
        std::mem::take(&mut self.children).into_values()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop_children(self);
    }
}

/// The retained message of every topic that has one.
#[derive(Default)]
pub struct RetainedStore {
    root: Node,
    count: usize,
    /// Every topic with a message, in topic order (for paging through them:
    /// [`RetainedStore::page`]). Shares each message's topic buffer.
    topics: BTreeSet<ByteString>,
}

impl std::fmt::Debug for RetainedStore {
    /// The size only: printing the nodes would walk a tree of any depth.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetainedStore")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
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
        let topic = message.topic.clone();
        if node.message.replace(message).is_none() {
            self.count += 1;
            self.topics.insert(topic);
        }
    }

    /// Removes the retained message of `topic`, if any, and the nodes left
    /// empty (cut off below the deepest node that keeps something else).
    pub fn clear(&mut self, topic: &str) {
        let mut node = &mut self.root;
        let mut cut = 0;
        for (depth, level) in topic.split('/').enumerate() {
            if depth > 0 && node.keeps_without_one_child() {
                cut = depth;
            }
            match node.children.get_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        if node.message.take().is_none() {
            return;
        }
        self.count -= 1;
        self.topics.remove(topic);
        if !node.children.is_empty() {
            return;
        }
        let mut levels = topic.split('/');
        let mut node = &mut self.root;
        for level in levels.by_ref().take(cut) {
            match node.children.get_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        if let Some(level) = levels.next() {
            node.children.remove(level);
        }
    }

    /// The retained messages whose topics match `filter`, dropping expired ones.
    pub fn matching(&mut self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        let mut expired = Vec::new();
        collect(&self.root, &levels, now, &mut out, &mut expired);
        for topic in expired {
            self.clear(&topic);
        }
        out
    }

    /// The retained message of exactly `topic` (wildcards are plain characters here).
    pub fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// Whether `topic` (taken literally) has a retained message.
    pub fn contains(&self, topic: &str) -> bool {
        self.get(topic).is_some()
    }

    /// Up to `limit` messages whose topics start with `prefix` (a string
    /// prefix, not a filter) and sort after `after`, in topic order, skipping
    /// expired ones; and whether more follow. Reads the topic index from the
    /// first candidate on: O(log n + limit x depth), whatever the store holds.
    pub fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now: Instant,
    ) -> (Vec<Arc<Message>>, bool) {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut items = Vec::new();
        let range = self.topics.range::<str, _>((start, Bound::Unbounded));
        for topic in range.take_while(|topic| topic.starts_with(prefix)) {
            let Some(message) = self.get(topic) else {
                continue;
            };
            if message.is_expired(now) {
                continue;
            }
            if items.len() == limit {
                return (items, true);
            }
            items.push(message.clone());
        }
        (items, false)
    }

    /// Topics in the index (equal to [`RetainedStore::len`]; for the audit).
    pub fn indexed(&self) -> usize {
        self.topics.len()
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

/// Depth-first walk over the nodes matching `filter`, on a heap stack.
fn collect(
    root: &Node,
    filter: &[&str],
    now: Instant,
    out: &mut Vec<Arc<Message>>,
    expired: &mut Vec<String>,
) {
    let mut pending: Vec<(&Node, usize)> = vec![(root, 0)];
    while let Some((node, depth)) = pending.pop() {
        let at_root = depth == 0;
        let Some(level) = filter.get(depth) else {
            take(node, now, out, expired);
            continue;
        };
        match *level {
            "#" => {
                // `#` also matches the parent level itself ("a/#" matches "a").
                if !at_root {
                    take(node, now, out, expired);
                }
                for (name, child) in &node.children {
                    // Wildcards at the first level skip `$` topics (MQTT-4.7.2-1).
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
                    pending.push((child, depth + 1));
                }
            }
            level => {
                if let Some(child) = node.children.get(level) {
                    pending.push((child, depth + 1));
                }
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

/// Every message at or below `top`, on a heap stack.
fn take_subtree(top: &Node, now: Instant, out: &mut Vec<Arc<Message>>, expired: &mut Vec<String>) {
    let mut pending = vec![top];
    while let Some(node) = pending.pop() {
        take(node, now, out, expired);
        pending.extend(node.children.values());
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

    #[test]
    fn walks_of_200_000_levels_do_not_recurse() {
        use crate::core::tree::tests::{deep, on_small_stack};
        on_small_stack(|| {
            let mut store = RetainedStore::new();
            let topic = deep(200_000, "b");
            store.set(message(&topic, "1", None));
            store.set(message(&deep(200_000, "c"), "2", None));
            assert_eq!(store.len(), 2);
            assert_eq!(store.matching(&deep(200_000, "+"), Instant::now()).len(), 2);
            assert_eq!(store.matching("#", Instant::now()).len(), 2);
            assert_eq!(store.matching(&deep(100_000, "#"), Instant::now()).len(), 2);
            // Cleared by an empty retained message.
            store.set(message(&topic, "", None));
            assert_eq!(store.len(), 1);
            // Expired when found.
            let past = Instant::now() - Duration::from_secs(1);
            store.set(message(&topic, "old", Some(past)));
            assert_eq!(store.matching(&topic, Instant::now()).len(), 0);
            assert_eq!(store.len(), 1);
            // The other chain goes with the store.
        });
    }

    #[test]
    fn clearing_prunes_only_the_emptied_chain() {
        let mut store = RetainedStore::new();
        store.set(message("a/b/c/d", "1", None));
        store.set(message("a/b", "2", None));
        store.set(message("a/x", "3", None));
        store.clear("a/b/c/d");
        let b = store
            .root
            .children
            .get("a")
            .and_then(|a| a.children.get("b"));
        assert!(b.is_some_and(|b| b.children.is_empty() && b.message.is_some()));
        store.clear("a/b");
        store.clear("a/x");
        assert!(store.root.children.is_empty());
        assert!(store.is_empty());
    }
}
