//! The console's in-process queries ([`BrokerHandle::session`],
//! [`BrokerHandle::retained`], [`BrokerHandle::delete_retained`]), answered
//! by the core task through the broker's event channel (see
//! [`crate::core::console`]).

use std::time::Instant;

use tokio::sync::oneshot;

use super::{BrokerHandle, BrokerStopped, Event};
use crate::core::Broker;
use crate::core::console::{RetainedPage, SessionView};

/// A console query for the core task.
#[derive(Debug)]
pub(crate) enum Query {
    /// One session.
    Session {
        client_id: String,
        max_subscriptions: usize,
        reply: oneshot::Sender<Option<SessionView>>,
    },
    /// A page of retained messages.
    Retained {
        prefix: String,
        after: Option<String>,
        limit: usize,
        reply: oneshot::Sender<RetainedPage>,
    },
    /// Deletes one retained message.
    DeleteRetained {
        topic: String,
        reply: oneshot::Sender<bool>,
    },
}

/// Answers `query` on the core task.
pub(super) fn answer(broker: &mut Broker, query: Query, now: Instant) {
    match query {
        Query::Session {
            client_id,
            max_subscriptions,
            reply,
        } => {
            let _ = reply.send(broker.session_view(&client_id, max_subscriptions));
        }
        Query::Retained {
            prefix,
            after,
            limit,
            reply,
        } => {
            let _ = reply.send(broker.retained_page(&prefix, after.as_deref(), limit, now));
        }
        Query::DeleteRetained { topic, reply } => {
            let _ = reply.send(broker.delete_retained(&topic));
        }
    }
}

impl BrokerHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Query,
    ) -> Result<T, BrokerStopped> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Console(make(reply)))
            .await
            .map_err(|_| BrokerStopped)?;
        answer.await.map_err(|_| BrokerStopped)
    }

    /// The session the broker holds for `client_id` (`None`: none), listing
    /// at most `max_subscriptions` subscriptions.
    pub async fn session(
        &self,
        client_id: &str,
        max_subscriptions: usize,
    ) -> Result<Option<SessionView>, BrokerStopped> {
        let client_id = client_id.to_owned();
        self.ask(|reply| Query::Session {
            client_id,
            max_subscriptions,
            reply,
        })
        .await
    }

    /// Up to `limit` retained messages whose topics start with `prefix`, after
    /// the topic `after`, in topic order (see [`Broker::retained_page`]).
    pub async fn retained(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RetainedPage, BrokerStopped> {
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        self.ask(|reply| Query::Retained {
            prefix,
            after,
            limit,
            reply,
        })
        .await
    }

    /// Deletes the retained message of exactly `topic` as an empty retained
    /// PUBLISH would (stored with the core's next commit); whether there was one.
    pub async fn delete_retained(&self, topic: &str) -> Result<bool, BrokerStopped> {
        let topic = topic.to_owned();
        self.ask(|reply| Query::DeleteRetained { topic, reply })
            .await
    }
}
