//! The subscription tree: topic filters by level, with `+`, `#` and `$share` groups.
//!
//! Every walk over the tree is a loop with an explicit stack or path, never
//! recursion: a filter's depth is the client's choice (up to what
//! `mqtt.max_topic_levels` admits, and whatever a data dir restored), and a
//! recursive walk of 40,000 levels overflows the thread's stack. Dropping a
//! node is iterative too ([`Node`]'s `Drop`), since the compiler's drop glue
//! would recurse through the children.

use std::cell::Cell;

use myriad_mqtt::SubscriptionOptions;
use smallvec::SmallVec;

use super::SessionId;
use super::deep_drop::{Subtree, drop_children};
use super::small_map::SmallMap;

/// One session's subscription to one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// Options from SUBSCRIBE.
    pub options: SubscriptionOptions,
    /// Subscription identifier (5.0), if given.
    pub id: Option<u32>,
}

/// A subscription that matched a topic, with the session it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    /// The subscribing session.
    pub session: SessionId,
    /// Its subscription.
    pub subscription: Subscription,
    /// Whether it came from a shared group (no retained-as-published rules differ).
    pub shared: bool,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<(SessionId, Subscription)>,
    /// Where the round robin goes on; a `Cell` so matching walks the tree
    /// through shared references.
    next: Cell<usize>,
}

/// One topic level. Most nodes have one child or one subscriber (a device's
/// own topics), so the maps are small-vector maps and shared groups, rare,
/// live out of line.
#[derive(Default)]
struct Node {
    children: SmallMap<Box<str>, Node>,
    subscribers: SmallMap<SessionId, Subscription>,
    shared: Option<Box<SmallMap<Box<str>, SharedGroup>>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_none()
    }

    /// Whether the node stays when its child on a removal path goes.
    fn keeps_without_one_child(&self) -> bool {
        !self.subscribers.is_empty() || self.shared.is_some() || self.children.len() > 1
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

/// Every subscription of every session, indexed for matching by topic.
#[derive(Default)]
pub struct SubscriptionTree {
    root: Node,
    count: usize,
}

impl std::fmt::Debug for SubscriptionTree {
    /// The size only: printing the nodes would walk a tree of any depth.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl SubscriptionTree {
    /// An empty tree.
    pub fn new() -> SubscriptionTree {
        SubscriptionTree::default()
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the tree holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces `session`'s subscription to `filter` (in share `group`
    /// when given). Returns true if it replaced an existing one.
    pub fn insert(
        &mut self,
        filter: &str,
        group: Option<&str>,
        session: SessionId,
        subscription: Subscription,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_or_default(level.into());
        }
        let replaced = match group {
            None => node.subscribers.insert(session, subscription).is_some(),
            Some(group) => {
                let groups = node.shared.get_or_insert_with(Box::default);
                let group = groups.get_or_default(group.into());
                match group.members.iter_mut().find(|(s, _)| *s == session) {
                    Some(member) => {
                        member.1 = subscription;
                        true
                    }
                    None => {
                        group.members.push((session, subscription));
                        false
                    }
                }
            }
        };
        if !replaced {
            self.count += 1;
        }
        replaced
    }

    /// Removes `session`'s subscription to `filter`. Returns true if there was one.
    ///
    /// Nodes left empty are pruned: the walk down notes the deepest node that
    /// keeps something besides the path, and the emptied chain below it is
    /// cut off there in one go (a second walk, not a recursion back up).
    pub fn remove(&mut self, filter: &str, group: Option<&str>, session: SessionId) -> bool {
        let mut node = &mut self.root;
        // Depth of the node whose child on the path goes if the leaf empties.
        let mut cut = 0;
        for (depth, level) in filter.split('/').enumerate() {
            if depth > 0 && node.keeps_without_one_child() {
                cut = depth;
            }
            match node.children.get_mut(level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        let removed = remove_here(node, group, session);
        if removed {
            self.count -= 1;
        }
        if node.is_empty() {
            let mut levels = filter.split('/');
            let mut node = &mut self.root;
            for level in levels.by_ref().take(cut) {
                match node.children.get_mut(level) {
                    Some(child) => node = child,
                    None => return removed,
                }
            }
            if let Some(level) = levels.next() {
                node.children.remove(level);
            }
        }
        removed
    }

    /// Appends to `out` every subscription matching `topic`. For each shared
    /// group one member is chosen round-robin, preferring members for which
    /// `is_online` is true.
    pub fn matches(
        &self,
        topic: &str,
        is_online: &dyn Fn(SessionId) -> bool,
        out: &mut Vec<Matched>,
    ) {
        let dollar = topic.starts_with('$');
        // Topics of up to STACK_LEVELS levels (nearly all) are split on the stack.
        let mut stack = [""; STACK_LEVELS];
        let mut count = 0;
        for level in topic.split('/') {
            if count == STACK_LEVELS {
                let levels: Vec<&str> = topic.split('/').collect();
                collect(&self.root, &levels, dollar, is_online, out);
                return;
            }
            stack[count] = level;
            count += 1;
        }
        collect(&self.root, &stack[..count], dollar, is_online, out);
    }
}

/// Topic levels split without allocating when matching.
const STACK_LEVELS: usize = 16;

/// Removes `session` from `node`'s own subscribers (or its share `group`).
fn remove_here(node: &mut Node, group: Option<&str>, session: SessionId) -> bool {
    match group {
        None => node.subscribers.remove(&session).is_some(),
        Some(name) => {
            let Some(groups) = node.shared.as_mut() else {
                return false;
            };
            let Some(shared) = groups.get_mut(name) else {
                return false;
            };
            let before = shared.members.len();
            shared.members.retain(|(s, _)| *s != session);
            let removed = shared.members.len() != before;
            if shared.members.is_empty() {
                groups.remove(name);
                if groups.is_empty() {
                    node.shared = None;
                }
            }
            removed
        }
    }
}

/// Depth-first walk over the nodes matching `levels`, in the order a
/// recursive walk would take (a level's own child before its `+` sibling), so
/// overlapping subscriptions come out in a stable order. Each node popped
/// pushes at most two, so the stack holds at most one entry per level plus
/// one: inline for topics that were split on the stack.
fn collect(
    root: &Node,
    levels: &[&str],
    dollar_topic: bool,
    is_online: &dyn Fn(SessionId) -> bool,
    out: &mut Vec<Matched>,
) {
    let mut pending: SmallVec<[(&Node, usize); STACK_LEVELS + 1]> = SmallVec::new();
    pending.push((root, 0));
    while let Some((node, depth)) = pending.pop() {
        // A wildcard at the first level never matches a `$` topic (MQTT-4.7.2-1).
        let wildcards_allowed = depth > 0 || !dollar_topic;
        if wildcards_allowed && let Some(hash) = node.children.get("#") {
            take_all(hash, is_online, out);
        }
        let Some(level) = levels.get(depth) else {
            take_all(node, is_online, out);
            continue;
        };
        if wildcards_allowed && let Some(plus) = node.children.get("+") {
            pending.push((plus, depth + 1));
        }
        if let Some(child) = node.children.get(*level) {
            pending.push((child, depth + 1));
        }
    }
}

fn take_all(node: &Node, is_online: &dyn Fn(SessionId) -> bool, out: &mut Vec<Matched>) {
    out.extend(
        node.subscribers
            .iter()
            .map(|(session, subscription)| Matched {
                session: *session,
                subscription: *subscription,
                shared: false,
            }),
    );
    for (_, group) in node.shared.iter().flat_map(|groups| groups.iter()) {
        if let Some((session, subscription)) = pick_member(group, is_online) {
            out.push(Matched {
                session,
                subscription,
                shared: true,
            });
        }
    }
}

fn pick_member(
    group: &SharedGroup,
    is_online: &dyn Fn(SessionId) -> bool,
) -> Option<(SessionId, Subscription)> {
    let len = group.members.len();
    if len == 0 {
        return None;
    }
    let start = group.next.get() % len;
    let chosen = (0..len)
        .map(|offset| (start + offset) % len)
        .find(|&index| is_online(group.members[index].0))
        .unwrap_or(start);
    group.next.set(chosen + 1);
    Some(group.members[chosen])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use myriad_mqtt::QoS;

    fn sub(qos: QoS) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            id: None,
        }
    }

    fn sessions(tree: &mut SubscriptionTree, topic: &str) -> Vec<SessionId> {
        let mut out = Vec::new();
        tree.matches(topic, &|_| true, &mut out);
        let mut ids: Vec<SessionId> = out.iter().map(|m| m.session).collect();
        ids.sort();
        ids
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut tree = SubscriptionTree::new();
        tree.insert("a/b", None, 1, sub(QoS::AtMostOnce));
        tree.insert("a/+", None, 2, sub(QoS::AtMostOnce));
        tree.insert("a/#", None, 3, sub(QoS::AtMostOnce));
        tree.insert("#", None, 4, sub(QoS::AtMostOnce));
        tree.insert("+/b", None, 5, sub(QoS::AtMostOnce));
        tree.insert("$SYS/#", None, 6, sub(QoS::AtMostOnce));
        assert_eq!(sessions(&mut tree, "a/b"), vec![1, 2, 3, 4, 5]);
        assert_eq!(sessions(&mut tree, "a"), vec![3, 4]);
        assert_eq!(sessions(&mut tree, "a/b/c"), vec![3, 4]);
        assert_eq!(sessions(&mut tree, "$SYS/b"), vec![6]);
        assert_eq!(tree.len(), 6);
    }

    #[test]
    fn deep_topics_match_past_the_stack_split() {
        let mut tree = SubscriptionTree::new();
        let deep: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let topic = deep.join("/");
        tree.insert(&topic, None, 1, sub(QoS::AtMostOnce));
        tree.insert("0/1/#", None, 2, sub(QoS::AtMostOnce));
        tree.insert(
            &format!("{}/+", deep[..39].join("/")),
            None,
            3,
            sub(QoS::AtMostOnce),
        );
        assert_eq!(sessions(&mut tree, &topic), vec![1, 2, 3]);
        assert_eq!(sessions(&mut tree, &deep[..16].join("/")), vec![2]);
    }

    #[test]
    fn remove_prunes_and_reports() {
        let mut tree = SubscriptionTree::new();
        assert!(!tree.insert("a/b/c", None, 1, sub(QoS::AtMostOnce)));
        assert!(tree.insert("a/b/c", None, 1, sub(QoS::AtLeastOnce)));
        assert_eq!(tree.len(), 1);
        assert!(tree.remove("a/b/c", None, 1));
        assert!(!tree.remove("a/b/c", None, 1));
        assert!(tree.root.is_empty());
        assert!(tree.is_empty());
    }

    #[test]
    fn shared_groups_round_robin_and_prefer_online() {
        let mut tree = SubscriptionTree::new();
        tree.insert("t/+", Some("g"), 1, sub(QoS::AtMostOnce));
        tree.insert("t/+", Some("g"), 2, sub(QoS::AtMostOnce));
        let mut picks = Vec::new();
        for _ in 0..4 {
            picks.extend(sessions(&mut tree, "t/x"));
        }
        assert_eq!(picks, vec![1, 2, 1, 2]);
        let mut out = Vec::new();
        for _ in 0..3 {
            tree.matches("t/x", &|s| s == 2, &mut out);
        }
        assert!(out.iter().all(|m| m.session == 2 && m.shared));
    }

    /// Runs `f` on a thread with a 256 KiB stack: a walk that recursed once
    /// per level would overflow it within a few thousand levels.
    pub(crate) fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("no stack overflow or panic");
    }

    /// A topic of `levels` levels, each one character.
    pub(crate) fn deep(levels: usize, last: &str) -> String {
        let mut topic = "a/".repeat(levels - 1);
        topic.push_str(last);
        topic
    }

    #[test]
    fn walks_of_200_000_levels_do_not_recurse() {
        on_small_stack(|| {
            let mut tree = SubscriptionTree::new();
            let filter = deep(200_000, "b");
            let wild = deep(200_000, "+");
            let hash = deep(200_000, "#");
            tree.insert(&filter, None, 1, sub(QoS::AtMostOnce));
            tree.insert(&wild, None, 2, sub(QoS::AtMostOnce));
            tree.insert(&hash, Some("g"), 3, sub(QoS::AtMostOnce));
            tree.insert(&deep(200_000, "c"), None, 4, sub(QoS::AtMostOnce));
            assert_eq!(sessions(&mut tree, &filter), vec![1, 2, 3]);
            assert!(tree.remove(&filter, None, 1));
            assert!(!tree.remove(&filter, None, 1));
            assert!(tree.remove(&hash, Some("g"), 3));
            assert_eq!(sessions(&mut tree, &filter), vec![2]);
            assert!(tree.remove(&wild, None, 2));
            assert_eq!(tree.len(), 1);
            // The rest is dropped with the tree, a chain of 200,000 nodes.
        });
    }

    #[test]
    fn dropping_a_deep_chain_does_not_recurse() {
        on_small_stack(|| {
            let mut tree = SubscriptionTree::new();
            tree.insert(&deep(200_000, "x"), None, 1, sub(QoS::AtMostOnce));
            drop(tree);
        });
    }

    #[test]
    fn removal_prunes_only_the_emptied_chain() {
        let mut tree = SubscriptionTree::new();
        tree.insert("a/b/c/d", None, 1, sub(QoS::AtMostOnce));
        tree.insert("a/b", None, 2, sub(QoS::AtMostOnce));
        tree.insert("a/x/y", None, 3, sub(QoS::AtMostOnce));
        assert!(tree.remove("a/b/c/d", None, 1));
        let b = tree
            .root
            .children
            .get("a")
            .and_then(|a| a.children.get("b"));
        assert!(
            b.is_some_and(|b| b.children.is_empty()),
            "c/d pruned, b kept"
        );
        assert!(tree.remove("a/b", None, 2));
        let a = tree.root.children.get("a").expect("a kept for x/y");
        assert_eq!(a.children.len(), 1);
        assert!(tree.remove("a/x/y", None, 3));
        assert!(tree.root.is_empty());
    }
}
