//! Activity: when each live connection last sent a packet, for the layer
//! above to sample (a device's `last_seen`) without a write per packet.
//!
//! The core already stamps every connection with the moment of its last
//! packet (keep alive needs it); [`Broker::activity`] reads those stamps
//! for the connections heard from since a given moment. One call walks
//! every session once: callers sample on a timer, not per packet.

use std::time::Instant;

use myriad_mqtt::ByteString;

use super::{Broker, ConnId};

/// One live connection and when it last sent a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// The client identifier of its session.
    pub client_id: ByteString,
    /// The shell's id of the connection.
    pub conn: ConnId,
    /// When its last packet arrived.
    pub last_seen: Instant,
}

impl Broker {
    /// The live connections whose last packet arrived after `since`
    /// (every live connection for `None`), in no particular order.
    /// O(sessions): meant for a periodic sample.
    pub fn activity(&self, since: Option<Instant>) -> Vec<Activity> {
        let since = since.map(|at| self.epoch.ticks(at));
        self.sessions
            .values()
            .filter_map(|session| {
                let connection = session.connection.as_deref()?;
                if since.is_some_and(|since| connection.last_seen <= since) {
                    return None;
                }
                Some(Activity {
                    client_id: session.client_id.clone(),
                    conn: connection.id,
                    last_seen: self.epoch.instant(connection.last_seen),
                })
            })
            .collect()
    }
}
