//! What the operators' console asks the core: one session as the broker
//! holds it ([`Broker::session_view`]), a page of retained messages
//! ([`Broker::retained_page`]) and deleting one ([`Broker::delete_retained`]).
//!
//! Answers are bounded: a session lists at most the subscriptions asked for
//! (with a flag when it has more), a retained page at most its limit (read
//! from the retained store's topic index, so a page costs the same in a store
//! of any size).

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
    /// and sort after `after`, in topic order (expired ones left out), read
    /// from the retained topic index: O(log n + limit) whatever the store holds.
    pub fn retained_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now: Instant,
    ) -> RetainedPage {
        let (items, more) = self.retained.page(prefix, after, limit, now);
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
