//! [`BrokerHandle::activity`]: the core's per-connection activity stamps,
//! read through the broker's event channel (see [`crate::core::activity`]).

use std::time::Instant;

use super::{BrokerHandle, BrokerStopped, Event};
use crate::core::activity::Activity;

impl BrokerHandle {
    /// The live connections heard from after `since` (all of them for
    /// `None`) and when each sent its last packet. One walk over the
    /// sessions in the core task: call it on a timer.
    pub async fn activity(&self, since: Option<Instant>) -> Result<Vec<Activity>, BrokerStopped> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.events
            .send(Event::Activity(since, reply))
            .await
            .map_err(|_| BrokerStopped)?;
        done.await.map_err(|_| BrokerStopped)
    }
}
