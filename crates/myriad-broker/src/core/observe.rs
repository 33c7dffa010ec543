//! What the core counts about its traffic, the levels it can report, and
//! the trace-context carry for routed messages.
//!
//! Counters are plain integers bumped on the core's own thread (no atomics
//! on the hot path); the shell copies them out on request
//! ([`crate::shell::BrokerHandle::snapshot`]).

use std::sync::Arc;

use myriad_mqtt::{Publish, QoS};

use super::Broker;
use super::message::Message;
use crate::hooks::OfflineReason;
use crate::trace::{PublishTracer, find_traceparent, find_tracestate, set_traceparent};

/// Why a connection closed, as a metric label (a coarse view of [`OfflineReason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client sent DISCONNECT (with or without asking for its will).
    ClientDisconnect,
    /// The socket closed or failed without DISCONNECT.
    NetworkLoss,
    /// The keep alive ran out.
    KeepAliveTimeout,
    /// The client broke the protocol.
    ProtocolError,
    /// Another connection took the session over.
    TakenOver,
    /// The server shut down.
    ServerShutdown,
    /// The layer above closed the connection (a kick, revoked credentials).
    Kicked,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::ClientDisconnect,
        CloseReason::NetworkLoss,
        CloseReason::KeepAliveTimeout,
        CloseReason::ProtocolError,
        CloseReason::TakenOver,
        CloseReason::ServerShutdown,
        CloseReason::Kicked,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect => "client_disconnect",
            CloseReason::NetworkLoss => "network_loss",
            CloseReason::KeepAliveTimeout => "keep_alive_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TakenOver => "taken_over",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::Kicked => "kicked",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<OfflineReason> for CloseReason {
    fn from(reason: OfflineReason) -> Self {
        match reason {
            OfflineReason::ClientDisconnect | OfflineReason::ClientDisconnectWithWill => {
                CloseReason::ClientDisconnect
            }
            OfflineReason::NetworkLoss => CloseReason::NetworkLoss,
            OfflineReason::KeepAliveTimeout => CloseReason::KeepAliveTimeout,
            OfflineReason::ProtocolError(_) => CloseReason::ProtocolError,
            OfflineReason::TakenOver => CloseReason::TakenOver,
            OfflineReason::ServerShutdown => CloseReason::ServerShutdown,
            OfflineReason::Kicked(_) => CloseReason::Kicked,
        }
    }
}

/// Traffic counters, by QoS (index 0, 1, 2) where it applies.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Connections accepted (CONNACK success), network and in-process.
    pub connections_opened: u64,
    /// Connections closed, by [`CloseReason`] (index = position in [`CloseReason::ALL`]).
    pub connections_closed: [u64; 7],
    /// PUBLISH packets received from clients, by QoS.
    pub messages_in: [u64; 3],
    /// Payload bytes of those, by QoS.
    pub bytes_in: [u64; 3],
    /// PUBLISH packets sent to clients, by QoS.
    pub messages_out: [u64; 3],
    /// Payload bytes of those, by QoS.
    pub bytes_out: [u64; 3],
    /// Messages published from inside the process (device services).
    pub messages_internal: u64,
    /// Routed messages whose trace context was continued.
    pub traces_continued: u64,
}

impl Traffic {
    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.connections_closed[reason.index()]
    }
}

/// Levels the core can report, computed on request (one pass over sessions).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// Sessions with a connection (network and in-process).
    pub sessions_online: u64,
    /// Sessions kept without a connection (persistent, offline).
    pub sessions_offline: u64,
    /// Retained messages.
    pub retained: u64,
    /// Subscriptions across all sessions.
    pub subscriptions: u64,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: u64,
    /// Messages waiting in session queues.
    pub queued: u64,
    /// Bytes (payload + topic) waiting in session queues.
    pub queued_bytes: u64,
}

/// The core's observability state: counters and the optional tracer.
#[derive(Debug, Default)]
pub(crate) struct Observe {
    pub(crate) traffic: Traffic,
    pub(crate) tracer: Option<Arc<dyn PublishTracer>>,
}

fn qos_index(qos: QoS) -> usize {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

impl Observe {
    pub(crate) fn opened(&mut self) {
        self.traffic.connections_opened += 1;
    }

    pub(crate) fn closed(&mut self, reason: OfflineReason) {
        self.traffic.connections_closed[CloseReason::from(reason).index()] += 1;
    }

    pub(crate) fn received(&mut self, publish: &Publish) {
        let q = qos_index(publish.qos);
        self.traffic.messages_in[q] += 1;
        self.traffic.bytes_in[q] += publish.payload.len() as u64;
    }

    pub(crate) fn sent(&mut self, publish: &Publish) {
        let q = qos_index(publish.qos);
        self.traffic.messages_out[q] += 1;
        self.traffic.bytes_out[q] += publish.payload.len() as u64;
    }

    /// Asks the tracer (if any) for the context the copies of `message`
    /// carry, and writes it into the message's `traceparent`.
    pub(crate) fn trace(&mut self, message: &mut Message) {
        let Some(tracer) = &self.tracer else {
            return;
        };
        let props = &message.properties.user_properties;
        let parent = find_traceparent(props);
        let child = tracer.route(&message.topic, parent.as_ref(), find_tracestate(props));
        if let Some(child) = child {
            set_traceparent(&mut message.properties.user_properties, &child);
            self.traffic.traces_continued += 1;
        }
    }
}

impl Broker {
    /// Traffic counters so far.
    pub fn traffic(&self) -> Traffic {
        self.observe.traffic
    }

    /// Current levels: sessions, retained, in-flight and queued messages.
    /// Walks every session: call it per scrape, not per message.
    pub fn levels(&self) -> Levels {
        let mut levels = Levels {
            sessions_online: self.sessions.connection_count() as u64,
            retained: self.retained.len() as u64,
            subscriptions: self.tree.len() as u64,
            ..Levels::default()
        };
        for session in self.sessions.values() {
            if session.connection.is_none() {
                levels.sessions_offline += 1;
            }
            let outbound = session.outbound();
            levels.inflight += outbound.inflight().len() as u64;
            levels.queued += outbound.queue().len() as u64;
            levels.queued_bytes += outbound.queued_bytes() as u64;
        }
        levels
    }

    /// Installs the tracer that continues W3C traces carried by routed
    /// messages (see [`crate::trace`]). Without one, nothing is parsed.
    pub fn set_tracer(&mut self, tracer: Option<Arc<dyn PublishTracer>>) {
        self.observe.tracer = tracer;
    }
}
