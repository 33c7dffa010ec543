//! Inbound PUBLISH and acknowledgements, routing, and outbound delivery.

use std::sync::Arc;
use std::time::Instant;

use myriad_mqtt::{ByteString, Packet, PacketType, Publish, PublishAck, QoS, ReasonCode};

use super::backpressure::Routed;
use super::message::{Delivery, Message};
use super::session::{QueueLimits, QueueOutcome, RESERVED_CLIENT_ID_PREFIX, Session};
use super::tree::Matched;
use super::{Broker, ConnId, SessionId};
use super::{detach, limits};
use crate::config::BrokerConfig;

impl Broker {
    /// Handles a packet received on an accepted connection.
    pub fn handle_packet(&mut self, now: Instant, conn: ConnId, packet: Packet) {
        let ticks = self.epoch.ticks(now);
        let Some(connection) = self.connection_mut(conn) else {
            return;
        };
        connection.last_seen = ticks;
        // A well-formed acknowledgement of the wrong type for the flow
        // its packet id names is a protocol error (MQTT 5.0 section 4.13).
        let ack = match &packet {
            Packet::PubAck(a) => Some((PacketType::PubAck, a.packet_id)),
            Packet::PubRec(a) => Some((PacketType::PubRec, a.packet_id)),
            Packet::PubComp(a) => Some((PacketType::PubComp, a.packet_id)),
            _ => None,
        };
        if let Some((ack_type, packet_id)) = ack
            && self.session_of(conn).is_some_and(|id| {
                self.sessions
                    .get(id)
                    .is_some_and(|s| s.outbound().wrong_ack(packet_id, ack_type))
            })
        {
            tracing::debug!(conn, packet_id, ?ack_type, "wrong acknowledgement type");
            self.disconnect_with(now, conn, ReasonCode::ProtocolError);
            return;
        }
        match packet {
            Packet::Publish(publish) => self.handle_publish(now, conn, publish, false),
            Packet::PubAck(ack) => self.close_flow(now, conn, ack.packet_id, QoS::AtLeastOnce),
            Packet::PubRec(rec) => self.handle_pubrec(now, conn, rec),
            Packet::PubRel(rel) => self.handle_pubrel(conn, rel),
            Packet::PubComp(comp) => self.close_flow(now, conn, comp.packet_id, QoS::ExactlyOnce),
            Packet::Subscribe(subscribe) => self.handle_subscribe(now, conn, subscribe),
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(conn, unsubscribe),
            Packet::PingReq => self.send(conn, Packet::PingResp),
            Packet::Disconnect(disconnect) => self.handle_disconnect(now, conn, disconnect),
            // A second CONNECT, AUTH without an agreed method, or a server-only packet.
            Packet::Connect(_)
            | Packet::Auth(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => self.disconnect_with(now, conn, ReasonCode::ProtocolError),
        }
    }

    /// Ends an outbound flow on PUBACK (QoS 1) or PUBCOMP (QoS 2) and sends
    /// what the freed window allows.
    fn close_flow(&mut self, now: Instant, conn: ConnId, packet_id: u16, qos: QoS) {
        let Some(session_id) = self.session_of(conn) else {
            return;
        };
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        let seq = session.outbound().seq_of(packet_id);
        let receipt = match qos {
            QoS::AtLeastOnce => self.receipt_for(conn, session_id, packet_id),
            _ => None,
        };
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let closed = match qos {
            QoS::ExactlyOnce => session.outbound_mut().complete(packet_id),
            _ => session.outbound_mut().acknowledge(packet_id),
        };
        if closed {
            self.emit_receipt(receipt);
            if let Some(seq) = seq {
                self.record_outbound_done(session_id, seq);
            }
            self.pump(now, session_id);
        }
    }

    /// Publishes a message from inside the process (device services, tests).
    /// A topic beyond `mqtt.max_topic_levels` or `mqtt.max_topic_length` is
    /// dropped with a warning, as a client's would be refused.
    pub fn publish(&mut self, now: Instant, publish: Publish) {
        if !limits::topic_fits(&self.config, &publish.topic) {
            tracing::warn!(
                length = publish.topic.len(),
                "in-process publish dropped: topic beyond mqtt.max_topic_levels or mqtt.max_topic_length"
            );
            return;
        }
        self.observe.traffic.messages_internal += 1;
        let message = Message::from_publish(publish, None, now);
        self.publish_message(now, message);
    }

    pub(super) fn session_of(&self, conn: ConnId) -> Option<SessionId> {
        self.sessions.attached(conn).map(|s| s.id)
    }

    /// `stored`: the ingest sink took the message (it counts as a match).
    fn handle_publish(&mut self, now: Instant, conn: ConnId, mut publish: Publish, stored: bool) {
        self.stats.messages_received += 1;
        self.observe.received(&publish);
        let Some(session_id) = self.session_of(conn) else {
            return;
        };
        if !publish.properties.subscription_identifiers.is_empty() {
            // Only a server puts Subscription Identifiers on a PUBLISH
            // (MQTT-3.3.4-6): well formed, but a protocol error.
            self.disconnect_with(now, conn, ReasonCode::ProtocolError);
            return;
        }
        let alias_maximum = self.config.topic_alias_maximum;
        // An empty topic is resolved from an alias, checked when it was set.
        let topic_fits =
            publish.topic.is_empty() || limits::topic_fits(&self.config, &publish.topic);
        let Some(connection) = self.connection_mut(conn) else {
            return;
        };
        let v5 = connection.protocol.is_v5();
        if !topic_fits {
            tracing::debug!(
                conn,
                length = publish.topic.len(),
                "PUBLISH topic beyond mqtt.max_topic_levels or mqtt.max_topic_length"
            );
            self.disconnect_with(now, conn, ReasonCode::TopicNameInvalid);
            return;
        }
        if let Some(alias) = publish.properties.topic_alias {
            if alias == 0 || alias > alias_maximum {
                self.disconnect_with(now, conn, ReasonCode::TopicAliasInvalid);
                return;
            }
            if publish.topic.is_empty() {
                let known = connection
                    .aliases
                    .as_ref()
                    .and_then(|a| a.inbound.get(&alias));
                match known {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        self.disconnect_with(now, conn, ReasonCode::ProtocolError);
                        return;
                    }
                }
            } else {
                // A copy: the packet's topic would pin its whole buffer.
                connection
                    .aliases_mut()
                    .inbound
                    .insert(alias, detach::string(&publish.topic));
            }
        }
        if publish.topic.is_empty() {
            self.disconnect_with(now, conn, ReasonCode::ProtocolError);
            return;
        }
        let packet_id = publish.packet_id;
        let qos = publish.qos;
        // `$SYS/...` is the server's: a client may not publish there (as
        // Mosquitto: 5.0 gets 0x87, 3.1.1 the usual acknowledgement).
        let system = publish.topic == "$SYS" || publish.topic.starts_with("$SYS/");
        if system
            || connection.acl.as_ref().is_some_and(|acl| {
                !acl.may_publish_message(
                    &publish.topic,
                    publish.retain,
                    publish.properties.response_topic.as_deref(),
                )
            })
        {
            self.refuse_publish(conn, v5, qos, packet_id);
            return;
        }
        if qos == QoS::ExactlyOnce {
            let Some(session) = self.sessions.get_mut(session_id) else {
                return;
            };
            if session.inbound_qos2().contains(packet_id) {
                // A resend of a message we already hold: acknowledge, do not route again.
                self.send(conn, Packet::PubRec(PublishAck::success(packet_id)));
                return;
            }
            if session.inbound_qos2().len() >= usize::from(self.config.receive_maximum) {
                self.disconnect_with(now, conn, ReasonCode::ReceiveMaximumExceeded);
                return;
            }
            session.inbound_qos2_mut().insert(packet_id);
            self.record_inbound_qos2(session_id, packet_id, true);
        }
        let message = Message::from_publish(publish, Some(session_id), now);
        let matched = if qos == QoS::AtLeastOnce {
            // Behind what this client already has held, or held itself
            // when a connected subscriber's queue is full (see backpressure).
            let message = if self.is_holding(conn) {
                match self.hold_behind(now, conn, message, packet_id) {
                    Ok(()) => return,
                    Err(message) => message,
                }
            } else {
                message
            };
            match self.route(now, message, Some(session_id)) {
                Routed::To(count) => count,
                Routed::Blocked(message, blocker) => {
                    self.hold(now, conn, message, packet_id, blocker);
                    return;
                }
            }
        } else {
            self.publish_message(now, message)
        };
        let reason_code = if matched == 0 && v5 && !stored {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        self.acknowledge(conn, qos, packet_id, reason_code);
    }

    /// A PUBLISH the shell's ingest sink has stored: handled as any other,
    /// except that a 5.0 client is acknowledged with Success even when no
    /// session subscribes (the sink took it), not 0x10.
    pub fn handle_ingested(&mut self, now: Instant, conn: ConnId, publish: Publish) {
        let ticks = self.epoch.ticks(now);
        let Some(connection) = self.connection_mut(conn) else {
            return;
        };
        connection.last_seen = ticks;
        self.handle_publish(now, conn, publish, true);
    }

    /// A PUBLISH the shell's ingest sink could not store: not routed. A 5.0
    /// client gets 0x80 (Unspecified error) on PUBACK / PUBREC; 3.1.1 has no
    /// way to say so, and acknowledging would tell it the message is kept,
    /// so its connection is closed (it sends the message again). QoS 0:
    /// nothing to answer.
    pub fn refuse_ingested(&mut self, now: Instant, conn: ConnId, qos: QoS, packet_id: u16) {
        self.stats.messages_received += 1;
        if qos == QoS::AtMostOnce {
            return;
        }
        if self.is_v5(conn) {
            self.acknowledge(conn, qos, packet_id, ReasonCode::UnspecifiedError);
        } else {
            self.disconnect_with(now, conn, ReasonCode::UnspecifiedError);
        }
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) for an inbound PUBLISH; nothing for QoS 0.
    pub(super) fn acknowledge(
        &mut self,
        conn: ConnId,
        qos: QoS,
        packet_id: u16,
        reason_code: ReasonCode,
    ) {
        let ack = PublishAck {
            packet_id,
            reason_code,
            properties: Default::default(),
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(conn, Packet::PubAck(ack)),
            QoS::ExactlyOnce => self.send(conn, Packet::PubRec(ack)),
        }
    }

    /// A PUBLISH the connection's ACL forbids is not routed. 5.0 clients get
    /// 0x87 Not Authorized on PUBACK / PUBREC; 3.1.1 has no way to say so,
    /// and the spec (MQTT-3.3.5-2) lets the server acknowledge as usual.
    fn refuse_publish(&mut self, conn: ConnId, v5: bool, qos: QoS, packet_id: u16) {
        self.stats.publishes_denied += 1;
        let reason_code = if v5 {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::Success
        };
        // A 3.1.1 QoS 2 flow still completes: PUBREC now, and the PUBREL of
        // an id the session does not hold is answered with PUBCOMP anyway.
        self.acknowledge(conn, qos, packet_id, reason_code);
    }

    fn handle_pubrec(&mut self, now: Instant, conn: ConnId, rec: PublishAck) {
        let Some(session_id) = self.session_of(conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let seq = session.outbound().seq_of(rec.packet_id).unwrap_or(0);
        match session
            .outbound_mut()
            .received(rec.packet_id, rec.reason_code.is_error())
        {
            Some(true) => {
                self.record_released(session_id, seq, rec.packet_id);
                self.send(conn, Packet::PubRel(PublishAck::success(rec.packet_id)));
            }
            Some(false) => {
                self.record_outbound_done(session_id, seq);
                self.pump(now, session_id);
            }
            None => {
                let mut rel = PublishAck::success(rec.packet_id);
                if self.is_v5(conn) {
                    rel.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                self.send(conn, Packet::PubRel(rel));
            }
        }
    }

    fn handle_pubrel(&mut self, conn: ConnId, rel: PublishAck) {
        let Some(session_id) = self.session_of(conn) else {
            return;
        };
        let known = self.sessions.get_mut(session_id).is_some_and(|s| {
            s.inbound_qos2().contains(rel.packet_id) && s.inbound_qos2_mut().remove(rel.packet_id)
        });
        if known {
            self.record_inbound_qos2(session_id, rel.packet_id, false);
        }
        let mut comp = PublishAck::success(rel.packet_id);
        if !known && self.is_v5(conn) {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        self.send(conn, Packet::PubComp(comp));
    }

    pub(super) fn is_v5(&self, conn: ConnId) -> bool {
        self.connection(conn).is_some_and(|c| c.protocol.is_v5())
    }

    /// Stores (if retained) and routes a message to every matching
    /// subscription. Returns how many sessions it was delivered to.
    pub(super) fn publish_message(&mut self, now: Instant, message: Message) -> usize {
        match self.route(now, message, None) {
            Routed::To(count) => count,
            Routed::Blocked(..) => 0,
        }
    }

    /// [`Broker::publish_message`], except that with `hold_for` (the
    /// publisher's session) a message one of whose connected subscribers has
    /// a full queue is handed back untouched instead (see backpressure).
    pub(super) fn route(
        &mut self,
        now: Instant,
        mut message: Message,
        hold_for: Option<SessionId>,
    ) -> Routed {
        let mut matched = Vec::new();
        if !self.is_topic_denied(&message.topic) {
            let sessions = &self.sessions;
            let is_online =
                |id: SessionId| sessions.get(id).is_some_and(|s| s.connection.is_some());
            self.tree.matches(&message.topic, &is_online, &mut matched);
            if self.filtering_connections > 0 {
                let topic = &message.topic;
                matched.retain(|m| {
                    sessions
                        .get(m.session)
                        .and_then(|s| s.connection.as_deref())
                        .filter(|c| c.filters_deliveries())
                        .and_then(|c| c.acl.as_ref())
                        .is_none_or(|acl| acl.may_receive(topic))
                });
            }
        }
        if let Some(publisher) = hold_for
            && let Some(blocker) = self.blocker(&matched, publisher)
        {
            return Routed::Blocked(message, blocker);
        }
        self.observe.trace(&mut message);
        let message = Arc::new(message);
        if message.retain {
            self.record_retained(&message);
            // The store keeps its own copy: the routed one shares the
            // publisher's read buffer, which a retained message would pin
            // for as long as it is retained.
            let kept = if message.payload.is_empty() {
                message.clone()
            } else {
                Arc::new(detach::message(&message))
            };
            self.retained.set(kept);
        }
        let deliveries = merge_overlapping(&message, matched);
        let count = deliveries.len();
        for (session, delivery) in deliveries {
            self.deliver(now, session, delivery);
        }
        Routed::To(count)
    }

    /// Hands one delivery to a session: sent now if its window allows, queued otherwise.
    pub(super) fn deliver(&mut self, now: Instant, session_id: SessionId, delivery: Delivery) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let limits = queue_limits(&self.config, session);
        let window = session.connection.as_ref().map(|c| c.receive_maximum);
        let outbound = session.outbound();
        let fits_budget = outbound.used_bytes() + delivery.message.weight() <= limits.max_bytes;
        if let Some(window) = window
            && fits_budget
            && (delivery.qos == QoS::AtMostOnce
                && outbound.queue().is_empty()
                && outbound.unwritten_count() < self.config.max_outbound_qos0
                || delivery.qos != QoS::AtMostOnce && outbound.has_room(window))
        {
            self.transmit(now, session_id, delivery);
            return;
        }
        let expires_at = delivery.message.expires_at;
        let outcome = session.outbound_mut().enqueue(delivery, limits);
        let dropped_now = match &outcome {
            QueueOutcome::Queued => 0,
            QueueOutcome::DroppedOldest(dropped) => dropped.len(),
            QueueOutcome::Rejected => 1,
        };
        for _ in 0..dropped_now {
            let dropped = session.count_dropped();
            self.stats.messages_dropped += 1;
            // One line for the first drop and then every 1000th, not one per message.
            if dropped % 1000 == 1 {
                tracing::warn!(
                    client_id = %session.client_id,
                    dropped,
                    queued = session.outbound().queue().len(),
                    queued_bytes = session.outbound().queued_bytes(),
                    "session queue full: dropping oldest QoS 0 first, then oldest"
                );
            }
        }
        if outcome != QueueOutcome::Rejected
            && let Some(at) = expires_at
        {
            self.next_sweep = Some(self.next_sweep.map_or(at, |next| next.min(at)));
        }
        if let QueueOutcome::DroppedOldest(dropped) = &outcome {
            for delivery in dropped {
                self.record_outbound_done(session_id, delivery.seq);
            }
        }
        if outcome != QueueOutcome::Rejected {
            self.record_last_queued(session_id);
        }
    }

    /// Sends queued deliveries of a connected session while its window
    /// allows, then lets publishers held back by its queue go on.
    pub(super) fn pump(&mut self, now: Instant, session_id: SessionId) {
        self.send_queued(now, session_id);
        self.send_retained(now, session_id);
        self.relieve(now, session_id);
    }

    /// The connection `conn` wrote `count` more QoS 0 messages to its
    /// socket (reported by the shell after each write): they no longer
    /// count against the session's budget, and more may be sent.
    pub fn handle_written(&mut self, now: Instant, conn: ConnId, count: usize) {
        let Some(session) = self.sessions.attached_mut(conn) else {
            return;
        };
        if session.outbound().unwritten_count() == 0 {
            return;
        }
        session.outbound_mut().written(count);
        let session_id = session.id;
        self.pump(now, session_id);
    }

    fn send_queued(&mut self, now: Instant, session_id: SessionId) {
        let max_unwritten = self.config.max_outbound_qos0;
        loop {
            let Some(session) = self.sessions.get_mut(session_id) else {
                return;
            };
            let Some(window) = session.connection.as_ref().map(|c| c.receive_maximum) else {
                return;
            };
            if session.outbound().queue().is_empty() {
                return;
            }
            let Some(delivery) = session.outbound_mut().next_sendable(window, max_unwritten) else {
                return;
            };
            self.transmit(now, session_id, delivery);
        }
    }

    /// Sends pending retained deliveries while the connection has room
    /// (after the queue: a SUBSCRIBE's retained messages are paced to the
    /// client, never dropped for want of room).
    fn send_retained(&mut self, now: Instant, session_id: SessionId) {
        let max_unwritten = self.config.max_outbound_qos0;
        loop {
            let Some(session) = self.sessions.get_mut(session_id) else {
                return;
            };
            let Some(window) = session.connection.as_ref().map(|c| c.receive_maximum) else {
                return;
            };
            if session.outbound().pending_retained() == 0 {
                return;
            }
            let Some(delivery) = session.outbound_mut().next_retained(window, max_unwritten) else {
                return;
            };
            self.transmit(now, session_id, delivery);
        }
    }

    /// Queues the retained messages a SUBSCRIBE asked for behind the
    /// session's queue and sends what there is room for now.
    pub(super) fn deliver_retained(
        &mut self,
        now: Instant,
        session_id: SessionId,
        deliveries: Vec<Delivery>,
    ) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let limits = queue_limits(&self.config, session);
        let mut refused = 0u64;
        for delivery in deliveries {
            if !session.outbound_mut().add_retained(delivery, limits) {
                refused += 1;
            }
        }
        if refused > 0 {
            let dropped = session.count_dropped();
            self.stats.messages_dropped += refused;
            tracing::warn!(
                client_id = %session.client_id,
                refused,
                dropped,
                "retained messages beyond the session's byte budget (mqtt.max_queued_bytes) not sent"
            );
        }
        self.pump(now, session_id);
    }

    /// Sends one delivery to the session's connection, allocating a packet id
    /// for QoS 1/2. Expired messages are dropped here.
    fn transmit(&mut self, now: Instant, session_id: SessionId, mut delivery: Delivery) {
        if delivery.message.is_expired(now) {
            self.stats.messages_expired += 1;
            self.record_outbound_done(session_id, delivery.seq);
            return;
        }
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        if session.connection.is_none() {
            return;
        }
        let packet_id = if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            let outbound = session.outbound_mut();
            outbound.assign_seq(&mut delivery);
            outbound.allocate_packet_id()
        };
        let publish = delivery.to_publish(packet_id, false, now);
        if !self.fits(session_id, &publish) {
            // MQTT-3.1.2-25: discard it and behave as if it had been delivered.
            self.stats.messages_too_large += 1;
            self.record_outbound_done(session_id, delivery.seq);
            return;
        }
        if packet_id != 0 {
            self.record_outbound(session_id, &delivery, Some(packet_id));
            if let Some(session) = self.sessions.get_mut(session_id) {
                session.outbound_mut().record_sent(packet_id, delivery);
            }
        } else if let Some(session) = self.sessions.get_mut(session_id) {
            // Counted until the shell reports it written (handle_written).
            session
                .outbound_mut()
                .record_unwritten(delivery.message.weight());
        }
        self.send_publish(session_id, publish);
    }

    /// Whether `publish` fits the Maximum Packet Size of the connection
    /// attached to `session_id` (found through the session: no lookup by
    /// connection id per delivery).
    pub(super) fn fits(&self, session_id: SessionId, publish: &Publish) -> bool {
        let Some(connection) = self
            .sessions
            .get(session_id)
            .and_then(|s| s.connection.as_deref())
        else {
            return false;
        };
        if connection.max_packet_size == u32::MAX {
            return true;
        }
        let packet = Packet::Publish(publish.clone());
        myriad_mqtt::encoded_len(&packet, connection.protocol)
            .is_ok_and(|len| len <= connection.max_packet_size as usize)
    }

    /// Queues a PUBLISH for the connection attached to `session_id`,
    /// replacing its topic by an alias where the client accepts aliases (5.0).
    pub(super) fn send_publish(&mut self, session_id: SessionId, mut publish: Publish) {
        let Some(connection) = self
            .sessions
            .get_mut(session_id)
            .and_then(|s| s.connection.as_deref_mut())
        else {
            return;
        };
        let conn = connection.id;
        if connection.topic_alias_maximum > 0 && connection.protocol.is_v5() {
            let known = (connection.aliases.as_ref())
                .and_then(|a| a.outbound.get(&publish.topic))
                .copied();
            match known {
                Some(alias) => {
                    publish.properties.topic_alias = Some(alias);
                    publish.topic = ByteString::new();
                }
                None => {
                    let used = connection.aliases.as_ref().map_or(0, |a| a.outbound.len());
                    if used < usize::from(connection.topic_alias_maximum) {
                        let alias = u16::try_from(used + 1).unwrap_or(u16::MAX);
                        // A copy: the message's topic shares the publisher's packet.
                        connection
                            .aliases_mut()
                            .outbound
                            .insert(detach::string(&publish.topic), alias);
                        publish.properties.topic_alias = Some(alias);
                    }
                }
            }
        }
        self.stats.messages_sent += 1;
        self.observe.sent(&publish);
        self.send(conn, Packet::Publish(publish));
    }
}

/// Turns the matched subscriptions into one delivery per session for ordinary
/// subscriptions (highest QoS, every subscription identifier) and one per
/// shared-group pick. No Local subscriptions skip the publisher.
fn merge_overlapping(
    message: &Arc<Message>,
    mut matched: Vec<Matched>,
) -> Vec<(SessionId, Delivery)> {
    matched.retain(|m| !(m.subscription.options.no_local && Some(m.session) == message.publisher));
    matched.sort_by_key(|m| (m.shared, m.session));
    let mut out: Vec<(SessionId, Delivery)> = Vec::with_capacity(matched.len());
    for m in matched {
        let options = m.subscription.options;
        let qos = message.qos.min(options.qos);
        let retain = options.retain_as_published && message.retain;
        if !m.shared
            && let Some((session, delivery)) = out.last_mut()
            && *session == m.session
        {
            delivery.qos = delivery.qos.max(qos);
            delivery.retain |= retain;
            delivery.subscription_ids.extend(m.subscription.id);
            continue;
        }
        out.push((
            m.session,
            Delivery {
                message: message.clone(),
                qos,
                retain,
                subscription_ids: m.subscription.id.into_iter().collect(),
                seq: 0,
            },
        ));
    }
    out
}

/// The limits on `session`'s queue: the platform's own clients
/// ([`RESERVED_CLIENT_ID_PREFIX`]) get `internal_max_queued_*`, every other
/// session `max_queued_*`.
pub(super) fn queue_limits(config: &BrokerConfig, session: &Session) -> QueueLimits {
    if session.client_id.starts_with(RESERVED_CLIENT_ID_PREFIX) {
        QueueLimits {
            max_messages: config.internal_max_queued_messages,
            max_bytes: config.internal_max_queued_bytes,
        }
    } else {
        QueueLimits {
            max_messages: config.max_queued_messages,
            max_bytes: config.max_queued_bytes,
        }
    }
}
