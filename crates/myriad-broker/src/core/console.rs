//! What the operators' console asks the core: one session as the broker
//! holds it ([`Broker::session_view`]), a page of retained messages
//! ([`Broker::retained_page`]) and deleting one ([`Broker::delete_retained`]).
//!
//! Answers are bounded: a session lists at most the subscriptions asked for
//! (with a flag when it has more), a retained page at most its limit.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

use myriad_mqtt::{ByteString, QoS};

use super::Broker;
use super::message::Message;

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionView {
    /// The filter as subscribed (with any `$share/{group}/` prefix).
    pub filter: ByteString,
    /// Its maximum QoS.
    pub qos: QoS,
}

/// A session as the broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// Whether a connection is attached.
    pub connected: bool,
    /// The client identifier.
    pub client_id: ByteString,
    /// The attached connection's protocol level (3, 4 or 5), if connected.
    pub protocol: Option<u8>,
    /// The attached connection's Clean Start flag, if connected.
    pub clean_start: Option<bool>,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// Messages waiting in its queue.
    pub queued_messages: usize,
    /// Bytes (payload and topic) waiting in its queue.
    pub queued_bytes: usize,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Its subscriptions in filter order, at most the number asked for.
    pub subscriptions: Vec<SubscriptionView>,
    /// Whether it has more subscriptions than listed.
    pub subscriptions_truncated: bool,
}

/// A page of retained messages.
#[derive(Debug, Clone, Default)]
pub struct RetainedPage {
    /// In topic order.
    pub items: Vec<Arc<Message>>,
    /// Whether more messages follow the last one.
    pub more: bool,
}

impl Broker {
    /// The session of `client_id`, listing at most `max_subscriptions`
    /// subscriptions; `None` when the broker holds no session for it.
    pub fn session_view(&self, client_id: &str, max_subscriptions: usize) -> Option<SessionView> {
        let session = self.sessions.get(self.sessions.id_of(client_id)?)?;
        let connection = session.connection.as_deref();
        let outbound = session.outbound();
        let mut subscriptions: Vec<SubscriptionView> = session
            .subscriptions
            .iter()
            .map(|(filter, subscription)| SubscriptionView {
                filter: filter.clone(),
                qos: subscription.options.qos,
            })
            .collect();
        subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
        let subscriptions_truncated = subscriptions.len() > max_subscriptions;
        subscriptions.truncate(max_subscriptions);
        Some(SessionView {
            connected: connection.is_some(),
            client_id: session.client_id.clone(),
            protocol: connection.map(|c| c.protocol.level()),
            clean_start: connection.map(|c| c.clean_start()),
            expiry_secs: session.expiry_interval,
            queued_messages: outbound.queue().len(),
            queued_bytes: outbound.queued_bytes(),
            inflight: outbound.inflight().len(),
            subscriptions,
            subscriptions_truncated,
        })
    }

    /// Up to `limit` retained messages whose topics start with `prefix`
    /// and sort after `after`, in topic order (expired ones left out). Walks
    /// only the subtree under the prefix's complete levels, keeping `limit`
    /// candidates at a time.
    pub fn retained_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now: Instant,
    ) -> RetainedPage {
        let mut heap: BinaryHeap<ByTopic> = BinaryHeap::new();
        let keep = limit.saturating_add(1);
        self.retained.visit_prefix(prefix, |message| {
            if !message.topic.starts_with(prefix)
                || after.is_some_and(|after| &*message.topic <= after)
                || message.is_expired(now)
            {
                return;
            }
            if heap.len() < keep {
                heap.push(ByTopic(message.clone()));
            } else if heap
                .peek()
                .is_some_and(|largest| message.topic < largest.0.topic)
            {
                heap.pop();
                heap.push(ByTopic(message.clone()));
            }
        });
        let mut items: Vec<Arc<Message>> =
            heap.into_sorted_vec().into_iter().map(|m| m.0).collect();
        let more = items.len() > limit;
        items.truncate(limit);
        RetainedPage { items, more }
    }

    /// Deletes the retained message of exactly `topic` (wildcards are plain
    /// characters here), as an empty retained PUBLISH would, recorded for the
    /// store. Returns whether there was one.
    pub fn delete_retained(&mut self, topic: &str) -> bool {
        if !self.retained.contains(topic) {
            return false;
        }
        self.retained.clear(topic);
        if self.recording {
            self.changes.push(myriad_store::Change::DeleteRetained {
                topic: ByteString::from(topic),
            });
        }
        true
    }
}

/// Orders retained messages by topic (a max-heap keeps the largest on top).
struct ByTopic(Arc<Message>);

impl PartialEq for ByTopic {
    fn eq(&self, other: &Self) -> bool {
        self.0.topic == other.0.topic
    }
}

impl Eq for ByTopic {}

impl PartialOrd for ByTopic {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByTopic {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.topic.cmp(&other.0.topic)
    }
}
