//! CONNECT, DISCONNECT, connection loss, wills and session expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use myriad_mqtt::{
    ByteString, ConnAck, Connect, Disconnect, Packet, PacketProperties, Properties,
    ProtocolVersion, Publish, PublishAck, ReasonCode, Will,
};

use super::message::Message;
use super::session::{InflightState, NEVER_EXPIRES};
use super::{Broker, ConnId, Connection, ConnectionLoss, Output, SessionId};
use super::{detach, limits};
use crate::config::BrokerConfig;
use crate::hooks::{Acl, OfflineReason, Presence};

/// The longest client identifier an MQTT 3.1 client may use, in bytes.
pub const MAX_V31_CLIENT_ID_BYTES: usize = 23;

/// The keep alive the server enforces for `connect`, in seconds (0: none).
///
/// A 5.0 client asking for more than `max_keep_alive_secs`, or for none while
/// a cap is configured, gets the cap (sent back as Server Keep Alive). A
/// 3.1.1 client cannot be told, so its own value stands.
pub fn negotiated_keep_alive(config: &BrokerConfig, connect: &Connect) -> u16 {
    let asked = connect.keep_alive;
    let cap = config.max_keep_alive_secs;
    if connect.protocol.is_v5() && (asked > cap || (asked == 0 && cap < u16::MAX)) {
        cap
    } else {
        asked
    }
}

impl Broker {
    /// Handles the CONNECT that opened `conn`. Returns true if the connection
    /// was accepted (CONNACK success queued), false if it was refused (CONNACK
    /// with an error and a close queued).
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, connect: Connect) -> bool {
        self.handle_connect_as(now, conn, connect, None)
    }

    /// [`Broker::handle_connect`] for a client restricted by `acl` (`None`:
    /// anything). The ACL is in force before anything is delivered: a
    /// resumed session loses the subscriptions `acl` does not allow, and
    /// the queued or unacknowledged messages it could not subscribe to
    /// (the session may have been built under another login's rights).
    pub fn handle_connect_as(
        &mut self,
        now: Instant,
        conn: ConnId,
        connect: Connect,
        acl: Option<Arc<dyn Acl>>,
    ) -> bool {
        let v5 = connect.protocol.is_v5();
        let mut connack_properties = Properties::default();

        if connect.properties.authentication_method.is_some() {
            self.refuse(conn, ReasonCode::BadAuthenticationMethod);
            return false;
        }
        if let Some(will) = &connect.will
            && !limits::topic_fits(&self.config, &will.topic)
        {
            // 5.0 has a code for it (0x90: "not malformed, but not accepted
            // by this Server"); 3.1.1 has none, and is closed as for a will
            // topic the protocol itself rejects.
            tracing::debug!(
                conn,
                length = will.topic.len(),
                "will topic beyond mqtt.max_topic_levels or mqtt.max_topic_length"
            );
            if v5 {
                self.refuse(conn, ReasonCode::TopicNameInvalid);
            } else {
                self.outputs.push_back(Output::Close(conn));
            }
            return false;
        }
        // 3.1 (MQTT 3.1 section 3.1): a client identifier of 1 to 23 bytes,
        // else return code 2 (identifier rejected).
        if connect.protocol == ProtocolVersion::V31
            && !(1..=MAX_V31_CLIENT_ID_BYTES).contains(&connect.client_id.len())
        {
            self.refuse(conn, ReasonCode::ClientIdentifierNotValid);
            return false;
        }
        let client_id = if connect.client_id.is_empty() {
            if !v5 && !connect.clean_start {
                self.refuse(conn, ReasonCode::ClientIdentifierNotValid);
                return false;
            }
            let assigned = self.assign_client_id();
            if v5 {
                connack_properties.assigned_client_identifier = Some(assigned.clone());
            }
            assigned
        } else {
            // Its own small allocation: a slice of the CONNECT would keep the
            // whole packet (password included) alive as long as the session.
            detached(&connect.client_id)
        };

        let asked_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            NEVER_EXPIRES
        };
        let expiry = asked_expiry.min(self.config.max_session_expiry_secs);
        if v5 && expiry != asked_expiry {
            connack_properties.session_expiry_interval = Some(expiry);
        }

        // Take over a connection that holds this client id.
        let existing = self.sessions.id_of(&client_id);
        if let Some(session_id) = existing {
            let old_conn = self.sessions.get(session_id).and_then(|s| s.conn());
            if let Some(old_conn) = old_conn {
                self.take_over(now, old_conn, connect.clean_start);
            }
        }

        // Resume or start the session.
        let session_present = match existing {
            Some(session_id) if !connect.clean_start && self.sessions.contains(session_id) => {
                self.cancel_timers(session_id);
                true
            }
            Some(session_id) => {
                self.end_session(now, session_id);
                false
            }
            None => false,
        };
        let session_id = match existing {
            Some(id) if session_present => id,
            // The session keeps the one copy of the client id.
            _ => self.sessions.insert(client_id, expiry),
        };
        let keep_alive = negotiated_keep_alive(&self.config, &connect);
        let client_properties = &connect.properties;
        let connection = Connection {
            id: conn,
            last_seen: self.epoch.ticks(now),
            acl,
            // Copied out: the will lives as long as the connection, and
            // would pin the CONNECT's buffer (password included).
            will: connect.will.map(|will| Box::new(detach::will(will))),
            aliases: None,
            max_packet_size: client_properties.maximum_packet_size.unwrap_or(u32::MAX),
            keep_alive_check: 0,
            // The outbound window: the client's Receive Maximum, at most
            // `mqtt.max_inflight` (a client announcing 65,535 and never
            // acknowledging holds no more than that).
            receive_maximum: (client_properties.receive_maximum.unwrap_or(u16::MAX))
                .min(self.config.max_inflight),
            topic_alias_maximum: (client_properties.topic_alias_maximum.unwrap_or(0))
                .min(self.config.max_outbound_aliases),
            keep_alive,
            protocol: connect.protocol,
            flags: Connection::flags(asked_expiry == 0, connect.clean_start),
        };
        self.filtering_connections += usize::from(connection.filters_deliveries());
        self.sessions.attach(session_id, Box::new(connection));
        let Some(session) = self.sessions.get_mut(session_id) else {
            return false;
        };
        session.expiry_interval = expiry;
        if expiry > 0 {
            self.record_session(session_id);
        } else if session.persisted {
            // Resumed with expiry 0: the session now ends with this connection.
            session.persisted = false;
            let client_id = session.client_id.clone();
            if self.recording {
                self.changes
                    .push(myriad_store::Change::DeleteSession { client_id });
            }
        }

        if v5 {
            if keep_alive != connect.keep_alive {
                connack_properties.server_keep_alive = Some(keep_alive);
            }
            self.announce_capabilities(&mut connack_properties);
        }
        self.watch_keep_alive(now, conn);
        self.send(
            conn,
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code: ReasonCode::Success,
                properties: connack_properties.into(),
            }),
        );
        if self.presence_events
            && let Some(session) = self.sessions.get(session_id)
        {
            // A copy: a clone would give the session's client id a shared
            // header for as long as the session lives.
            let client_id = detached(&session.client_id);
            self.outputs.push_back(Output::Presence(Presence::Online {
                conn,
                client_id,
                keep_alive,
                protocol: connect.protocol,
                session_present,
                username: connect.username.as_ref().map(detach::string),
            }));
        }
        if session_present {
            self.recheck_resumed(conn, session_id);
            self.resend_inflight(now, conn, session_id);
        }
        self.pump(now, session_id);
        self.observe.opened();
        true
    }

    /// Holds a resumed session to the ACL of the connection now attached:
    /// drops the subscriptions it does not allow and the queued or in-flight
    /// messages on topics it could not subscribe to.
    fn recheck_resumed(&mut self, conn: ConnId, session_id: SessionId) {
        let Some(acl) = self.connection(conn).and_then(|c| c.acl.clone()) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let refused: Vec<ByteString> = session
            .subscriptions
            .keys()
            .filter(|filter| !acl.may_subscribe(super::subscribe::split_filter(filter).1))
            .cloned()
            .collect();
        let denied = |topic: &str| !acl.may_subscribe(topic);
        let mut done = session
            .outbound_mut()
            .remove_queued_if(|d| denied(&d.message.topic));
        let stale: Vec<u16> = session
            .outbound()
            .inflight()
            .iter()
            .filter(|flow| match &flow.state {
                InflightState::Published(delivery) => denied(&delivery.message.topic),
                InflightState::Released => false,
            })
            .map(|flow| flow.packet_id)
            .collect();
        for packet_id in stale {
            if let Some(seq) = session.outbound().seq_of(packet_id) {
                done.push(seq);
            }
            session.outbound_mut().forget(packet_id);
        }
        for filter in &refused {
            session.subscriptions.remove(filter);
        }
        for filter in &refused {
            let (group, inner) = super::subscribe::split_filter(filter);
            self.tree.remove(inner, group, session_id);
            self.record_subscription(session_id, filter, None);
        }
        if !refused.is_empty() || !done.is_empty() {
            tracing::debug!(
                conn,
                subscriptions = refused.len(),
                messages = done.len(),
                "resumed session held to the new login's ACL"
            );
            self.stats.subscriptions_denied += refused.len() as u64;
        }
        for seq in done {
            self.record_outbound_done(session_id, seq);
        }
    }

    /// Handles a DISCONNECT from the client.
    pub(super) fn handle_disconnect(&mut self, now: Instant, conn: ConnId, disconnect: Disconnect) {
        let Some(connection) = self.connection(conn) else {
            return;
        };
        if !disconnect.reason_code.client_may_disconnect_with() {
            // A code only a server may send: treated as malformed (as the
            // reason code byte is the one thing wrong with the packet).
            self.disconnect_with(now, conn, ReasonCode::MalformedPacket);
            return;
        }
        if let Some(new_expiry) = disconnect.properties.session_expiry_interval {
            if connection.connect_expiry_was_zero() && new_expiry != 0 {
                self.disconnect_with(now, conn, ReasonCode::ProtocolError);
                return;
            }
            let capped = new_expiry.min(self.config.max_session_expiry_secs);
            if let Some(s) = self.sessions.attached_mut(conn) {
                s.expiry_interval = capped;
            }
        }
        let send_will = disconnect.reason_code == ReasonCode::DisconnectWithWillMessage;
        self.outputs.push_back(Output::Close(conn));
        let reason = if send_will {
            OfflineReason::ClientDisconnectWithWill
        } else {
            OfflineReason::ClientDisconnect
        };
        self.detach(now, conn, send_will, reason);
    }

    /// Handles the end of `conn` seen by the shell (socket closed, keep alive
    /// expired, undecodable bytes). The will is published.
    pub fn handle_connection_lost(&mut self, now: Instant, conn: ConnId, loss: ConnectionLoss) {
        if self.sessions.attached(conn).is_none() {
            return;
        }
        let publish_will = loss != ConnectionLoss::ServerShutdown;
        let reason = match loss {
            ConnectionLoss::Network => OfflineReason::NetworkLoss,
            ConnectionLoss::KeepAliveTimeout => OfflineReason::KeepAliveTimeout,
            ConnectionLoss::ProtocolViolation(code) => OfflineReason::ProtocolError(code),
            ConnectionLoss::ServerShutdown => OfflineReason::ServerShutdown,
        };
        self.detach(now, conn, publish_will, reason);
    }

    fn refuse(&mut self, conn: ConnId, reason: ReasonCode) {
        self.send(
            conn,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: reason,
                properties: PacketProperties::new(),
            }),
        );
        self.outputs.push_back(Output::Close(conn));
    }

    fn assign_client_id(&mut self) -> myriad_mqtt::ByteString {
        loop {
            let candidate = format!("myriad-{:012x}", self.next_assigned_id);
            self.next_assigned_id += 1;
            if self.sessions.id_of(&candidate).is_none() {
                return candidate.into();
            }
        }
    }

    fn announce_capabilities(&self, properties: &mut Properties) {
        let config = &self.config;
        properties.receive_maximum = Some(config.receive_maximum);
        properties.maximum_packet_size = Some(config.max_packet_size);
        properties.topic_alias_maximum = Some(config.topic_alias_maximum);
        properties.retain_available = Some(true);
        properties.wildcard_subscription_available = Some(true);
        properties.subscription_identifier_available = Some(true);
        properties.shared_subscription_available = Some(true);
    }

    /// Closes the connection holding a client id another connection now claims.
    fn take_over(&mut self, now: Instant, old_conn: ConnId, clean_start: bool) {
        if let Some(old) = self.connection(old_conn)
            && old.protocol.is_v5()
        {
            self.send(
                old_conn,
                Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver)),
            );
        }
        self.outputs.push_back(Output::Close(old_conn));
        // A delayed will is not sent if the session is resumed before the delay ends.
        let delayed = self
            .connection(old_conn)
            .and_then(|c| c.will.as_ref())
            .is_some_and(|w| w.properties.will_delay_interval.unwrap_or(0) > 0);
        let publish_will = clean_start || !delayed;
        self.detach(now, old_conn, publish_will, OfflineReason::TakenOver);
    }

    /// Separates `conn` from its session; keeps, schedules or ends the session.
    pub(super) fn detach(
        &mut self,
        now: Instant,
        conn: ConnId,
        publish_will: bool,
        reason: OfflineReason,
    ) {
        let Some((session_id, connection)) = self.sessions.detach(conn) else {
            return;
        };
        self.filtering_connections = self
            .filtering_connections
            .saturating_sub(usize::from(connection.filters_deliveries()));
        self.observe.closed(reason);
        self.forget_connection(now, conn, session_id);
        // Its keep alive entry is skipped when it comes up.
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        if self.presence_events {
            self.outputs.push_back(Output::Presence(Presence::Offline {
                conn,
                client_id: detached(&session.client_id),
                reason,
            }));
        }
        let expiry = session.expiry_interval;
        let will = connection.will.filter(|_| publish_will);
        if let Some(will) = will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            if delay == 0 || expiry == 0 {
                self.publish_will(now, session_id, *will);
            } else {
                let due = now + Duration::from_secs(u64::from(delay.min(expiry)));
                session.set_will_due(Some(due));
                self.wills_due.insert((due, session_id));
                self.record_will(session_id, Some((due, &will)));
                self.pending_wills.insert(session_id, will);
            }
        }
        if expiry == 0 {
            self.end_session(now, session_id);
            return;
        }
        if expiry != NEVER_EXPIRES {
            let at = self
                .epoch
                .ticks(now)
                .after(Duration::from_secs(u64::from(expiry)));
            if let Some(session) = self.sessions.get_mut(session_id) {
                session.set_expires_at(Some(at));
            }
            self.expiries.insert((at, session_id));
        }
        self.record_session(session_id);
    }

    /// Stops a session's expiry and delayed-will timers; returns the pending will, if any.
    pub(super) fn clear_timers(&mut self, session_id: SessionId) -> Option<Box<Will>> {
        let session = self.sessions.get_mut(session_id)?;
        if let Some(at) = session.expires_at() {
            session.set_expires_at(None);
            self.expiries.remove(&(at, session_id));
        }
        if let Some(at) = session.will_due() {
            session.set_will_due(None);
            self.wills_due.remove(&(at, session_id));
        }
        self.pending_wills.remove(&session_id)
    }

    /// On resume: the session neither expires nor sends its delayed will.
    fn cancel_timers(&mut self, session_id: SessionId) {
        if self.clear_timers(session_id).is_some() {
            self.record_will(session_id, None);
        }
    }

    /// Removes a session: its subscriptions, queue and timers. A pending
    /// delayed will is published now (the session ended first).
    pub(super) fn end_session(&mut self, now: Instant, session_id: SessionId) {
        let will = self.clear_timers(session_id);
        if let Some(session) = self.sessions.remove(session_id) {
            self.record_session_end(&session);
            for filter in session.subscriptions.keys() {
                let (group, inner) = super::subscribe::split_filter(filter);
                self.tree.remove(inner, group, session_id);
            }
        }
        if let Some(will) = will {
            self.publish_will(now, session_id, *will);
        }
    }

    pub(super) fn publish_will(&mut self, now: Instant, session_id: SessionId, will: Will) {
        let publish = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            packet_id: 0,
            payload: will.payload,
            properties: will.properties,
        };
        let mut message = Message::from_publish(publish, Some(session_id), now);
        if let Some(props) = message.properties.get_mut() {
            props.will_delay_interval = None;
            message.properties.shrink();
        }
        self.publish_message(now, message);
    }

    /// On session resume: PUBLISH again with DUP every unacknowledged message,
    /// PUBREL again every released QoS 2 flow, in their original order.
    fn resend_inflight(&mut self, now: Instant, conn: ConnId, session_id: SessionId) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        let packets: Vec<Packet> = session
            .outbound()
            .inflight()
            .iter()
            .map(|flow| match &flow.state {
                InflightState::Published(delivery) => {
                    Packet::Publish(delivery.to_publish(flow.packet_id, true, now))
                }
                InflightState::Released => Packet::PubRel(PublishAck::success(flow.packet_id)),
            })
            .collect();
        for packet in packets {
            match packet {
                // The client may now accept smaller packets than when the
                // message was first sent: discard it as if delivered (MQTT-3.1.2-25).
                Packet::Publish(publish) if !self.fits(session_id, &publish) => {
                    self.stats.messages_too_large += 1;
                    let mut seq = None;
                    if let Some(session) = self.sessions.get_mut(session_id) {
                        seq = session.outbound().seq_of(publish.packet_id);
                        session.outbound_mut().forget(publish.packet_id);
                    }
                    if let Some(seq) = seq {
                        self.record_outbound_done(session_id, seq);
                    }
                }
                Packet::Publish(publish) => self.send_publish(session_id, publish),
                other => self.send(conn, other),
            }
        }
    }
}

/// A copy of `text` in its own allocation, sharing nothing with the packet
/// it was decoded from.
pub(crate) fn detached(text: &myriad_mqtt::ByteString) -> myriad_mqtt::ByteString {
    myriad_mqtt::ByteString::from(text.to_string())
}
