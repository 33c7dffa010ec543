//! Evictions: the layer above closes a client's connection by client id,
//! and may discard its session and the retained messages of a namespace
//! (an operator's kick, a disabled or deleted device).

use std::time::Instant;

use myriad_mqtt::{ByteString, Disconnect, Packet, ReasonCode};

use super::{Broker, Output};
use crate::hooks::OfflineReason;

/// What to do to one client, by client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The client identifier whose connection (and session) is affected.
    pub client_id: ByteString,
    /// The reason code a 5.0 client gets in the DISCONNECT before its
    /// connection is closed (3.1.1 clients are just closed). Presence
    /// reports [`OfflineReason::Kicked`] with it.
    pub reason: ReasonCode,
    /// Whether the connection's will is published, as after a network
    /// loss (`false`: it is dropped, as for revoked credentials).
    pub publish_will: bool,
    /// Whether the session is removed too: its subscriptions, queued and
    /// unacknowledged messages and any pending will.
    pub discard_session: bool,
    /// Retained messages whose topics match any of these filters are
    /// cleared (as if an empty retained message had been published).
    pub clear_retained: Vec<ByteString>,
}

impl Eviction {
    /// Closes the connection of `client_id` with `reason`; the will is
    /// published, the session kept.
    pub fn disconnect(client_id: impl Into<ByteString>, reason: ReasonCode) -> Eviction {
        Eviction {
            client_id: client_id.into(),
            reason,
            publish_will: true,
            discard_session: false,
            clear_retained: Vec::new(),
        }
    }
}

/// What an [`Eviction`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// A live connection was closed.
    pub disconnected: bool,
    /// A session (online or offline) was removed.
    pub session_discarded: bool,
    /// How many retained messages were cleared.
    pub retained_cleared: usize,
}

impl Broker {
    /// Carries out `eviction` at `now`. Every change is recorded for the
    /// store like any other (the session's removal, the cleared retained
    /// messages).
    pub fn evict(&mut self, now: Instant, eviction: &Eviction) -> Evicted {
        let mut evicted = Evicted::default();
        let session = self.sessions.id_of(&eviction.client_id);
        let live = session
            .and_then(|id| self.sessions.get(id))
            .and_then(|s| s.connection.as_deref())
            .map(|c| (c.id, c.protocol.is_v5()));
        if let Some((conn, v5)) = live {
            if v5 {
                self.send(conn, Packet::Disconnect(Disconnect::new(eviction.reason)));
            }
            self.outputs.push_back(Output::Close(conn));
            self.detach(
                now,
                conn,
                eviction.publish_will,
                OfflineReason::Kicked(eviction.reason),
            );
            evicted.disconnected = true;
        }
        // Detaching may have ended the session already (expiry 0).
        if eviction.discard_session
            && let Some(id) = session.filter(|id| self.sessions.contains(*id))
        {
            // A delayed will is dropped with the session.
            if self.clear_timers(id).is_some() {
                self.record_will(id, None);
            }
            if let Some(removed) = self.sessions.remove(id) {
                self.record_session_end(&removed);
                for filter in removed.subscriptions.keys() {
                    let (group, inner) = super::subscribe::split_filter(filter);
                    self.tree.remove(inner, group, id);
                }
                evicted.session_discarded = true;
            }
        }
        for filter in &eviction.clear_retained {
            for message in self.retained.matching(filter, now) {
                self.retained.clear(&message.topic);
                if self.recording {
                    self.changes.push(myriad_store::Change::DeleteRetained {
                        topic: message.topic.clone(),
                    });
                }
                evicted.retained_cleared += 1;
            }
        }
        evicted
    }
}
