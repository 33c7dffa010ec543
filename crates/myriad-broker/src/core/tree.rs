//! The subscription tree: topic filters by level, with `+`, `#` and `$share` groups.

use myriad_mqtt::SubscriptionOptions;

use super::SessionId;
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

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(SessionId, Subscription)>,
    next: usize,
}

/// One topic level. Most nodes have one child or one subscriber (a device's
/// own topics), so the maps are small-vector maps and shared groups, rare,
/// live out of line.
#[derive(Debug, Default)]
struct Node {
    children: SmallMap<Box<str>, Node>,
    subscribers: SmallMap<SessionId, Subscription>,
    shared: Option<Box<SmallMap<Box<str>, SharedGroup>>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_none()
    }
}

/// Every subscription of every session, indexed for matching by topic.
#[derive(Debug, Default)]
pub struct SubscriptionTree {
    root: Node,
    count: usize,
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
    pub fn remove(&mut self, filter: &str, group: Option<&str>, session: SessionId) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, group, session);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Appends to `out` every subscription matching `topic`. For each shared
    /// group one member is chosen round-robin, preferring members for which
    /// `is_online` is true.
    pub fn matches(
        &mut self,
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
                collect(&mut self.root, &levels, dollar, is_online, out);
                return;
            }
            stack[count] = level;
            count += 1;
        }
        collect(&mut self.root, &stack[..count], dollar, is_online, out);
    }
}

/// Topic levels split without allocating when matching.
const STACK_LEVELS: usize = 16;

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, session: SessionId) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
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
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove_at(child, rest, group, session);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn collect(
    node: &mut Node,
    levels: &[&str],
    dollar_topic: bool,
    is_online: &dyn Fn(SessionId) -> bool,
    out: &mut Vec<Matched>,
) {
    // A wildcard at the first level never matches a `$` topic (MQTT-4.7.2-1).
    let wildcards_allowed = !dollar_topic;
    if wildcards_allowed && let Some(hash) = node.children.get_mut("#") {
        take_all(hash, is_online, out);
    }
    let Some((first, rest)) = levels.split_first() else {
        take_all(node, is_online, out);
        return;
    };
    if let Some(child) = node.children.get_mut(*first) {
        collect(child, rest, false, is_online, out);
    }
    if wildcards_allowed && let Some(plus) = node.children.get_mut("+") {
        collect(plus, rest, false, is_online, out);
    }
}

fn take_all(node: &mut Node, is_online: &dyn Fn(SessionId) -> bool, out: &mut Vec<Matched>) {
    out.extend(
        node.subscribers
            .iter()
            .map(|(session, subscription)| Matched {
                session: *session,
                subscription: *subscription,
                shared: false,
            }),
    );
    for group in node
        .shared
        .iter_mut()
        .flat_map(|groups| groups.values_mut())
    {
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
    group: &mut SharedGroup,
    is_online: &dyn Fn(SessionId) -> bool,
) -> Option<(SessionId, Subscription)> {
    let len = group.members.len();
    if len == 0 {
        return None;
    }
    let start = group.next % len;
    let chosen = (0..len)
        .map(|offset| (start + offset) % len)
        .find(|&index| is_online(group.members[index].0))
        .unwrap_or(start);
    group.next = chosen + 1;
    Some(group.members[chosen])
}

#[cfg(test)]
mod tests {
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
}
