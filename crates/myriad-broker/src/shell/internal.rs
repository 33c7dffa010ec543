//! In-process MQTT clients: platform services (device shadows, commands)
//! subscribe and receive through the broker's own session engine, without
//! a socket and without encoding a byte.
//!
//! An internal client is an MQTT 5.0 session whose mailbox is read by the
//! service instead of a connection task. Its client identifier starts with
//! [`RESERVED_CLIENT_ID_PREFIX`], which network clients may not claim.

use std::collections::VecDeque;
use std::sync::Arc;

use myriad_mqtt::{
    ByteString, Connect, Packet, PacketProperties, Properties, ProtocolVersion, Publish,
    PublishAck, QoS, SubAck, Subscribe, SubscriptionOptions, SubscriptionRequest,
};
use tokio::sync::mpsc;

use super::link::Link;
use super::{BrokerHandle, BrokerStopped, Event};
use crate::{ConnId, ConnectionLoss};

pub use super::connection::RESERVED_CLIENT_ID_PREFIX;

/// An in-process client attached to a running broker. See the module docs.
#[derive(Debug)]
pub struct InternalClient {
    conn: ConnId,
    link: Arc<Link>,
    events: mpsc::Sender<Event>,
    /// Packets taken from the mailbox and not yet handed out.
    received: VecDeque<Packet>,
    next_packet_id: u16,
    closed: bool,
    /// QoS 0 publications taken from the mailbox and not yet reported to
    /// the core (kept here so a receive cancelled mid-report loses nothing).
    unreported_qos0: usize,
    /// The broker's Receive Maximum (from its CONNACK): QoS 1 publications
    /// [`InternalClient::publish_confirmed_many`] keeps unacknowledged at once.
    server_receive_maximum: u16,
}

/// How a durable internal client connects: see
/// [`BrokerHandle::connect_internal_durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableOptions {
    /// Receive Maximum: at most this many QoS 1 messages are handed out
    /// and not yet acknowledged with [`InternalClient::ack`]; the broker
    /// queues the rest for the session (within `mqtt.max_queued_messages` and `mqtt.max_queued_bytes`).
    /// 0 is taken as 1.
    pub receive_maximum: u16,
    /// Session Expiry Interval in seconds: how long the session (and the
    /// messages queued for it) outlives the client. Above 0, the session is
    /// recorded in the store like a network client's persistent session,
    /// and survives a restart. Capped by `mqtt.max_session_expiry_secs`.
    pub session_expiry_secs: u32,
}

/// A message handed out by [`InternalClient::recv_manual`], not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message (its `dup` flag is set when it is a redelivery).
    pub publish: Publish,
    /// What to pass to [`InternalClient::ack`]; `None` for a QoS 0 message,
    /// which needs no acknowledgement.
    pub packet_id: Option<u16>,
}

impl BrokerHandle {
    /// Attaches an internal client named `$myriad/{name}` (clean session,
    /// no expiry). A previous client of that name is taken over.
    pub async fn connect_internal(&self, name: &str) -> Result<InternalClient, BrokerStopped> {
        self.attach_internal(name, true, u16::MAX, 0).await
    }

    /// Attaches an internal client named `$myriad/{name}` that resumes its
    /// session (clean start false) and keeps it for
    /// `options.session_expiry_secs` after it detaches: QoS 1 messages
    /// routed to it stay queued or in flight until it acknowledges them
    /// ([`InternalClient::recv_manual`], [`InternalClient::ack`]), across
    /// reconnections and, with a store, across restarts. Unacknowledged
    /// messages are redelivered when it reconnects. A previous client of
    /// that name is taken over.
    pub async fn connect_internal_durable(
        &self,
        name: &str,
        options: DurableOptions,
    ) -> Result<InternalClient, BrokerStopped> {
        let receive_maximum = options.receive_maximum.max(1);
        self.attach_internal(name, false, receive_maximum, options.session_expiry_secs)
            .await
    }

    async fn attach_internal(
        &self,
        name: &str,
        clean_start: bool,
        receive_maximum: u16,
        session_expiry: u32,
    ) -> Result<InternalClient, BrokerStopped> {
        let conn = self.next_conn_id();
        let client_id: ByteString = format!("{RESERVED_CLIENT_ID_PREFIX}{name}").into();
        let link = Arc::new(Link::internal(conn, client_id.clone()));
        let properties = Properties {
            receive_maximum: Some(receive_maximum),
            session_expiry_interval: (session_expiry > 0).then_some(session_expiry),
            ..Properties::default()
        };
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start,
            keep_alive: 0,
            client_id,
            will: None,
            username: None,
            password: None,
            properties: properties.into(),
        };
        self.events
            .send(Event::Connect {
                conn,
                connect: Box::new(connect),
                link: link.clone(),
                acl: None,
            })
            .await
            .map_err(|_| BrokerStopped)?;
        let mut client = InternalClient {
            conn,
            link,
            events: self.events.clone(),
            received: VecDeque::new(),
            next_packet_id: 1,
            closed: false,
            unreported_qos0: 0,
            server_receive_maximum: u16::MAX,
        };
        match client.next_packet().await {
            Some(Packet::ConnAck(connack)) if !connack.reason_code.is_error() => {
                client.server_receive_maximum = (connack.properties.get())
                    .and_then(|p| p.receive_maximum)
                    .unwrap_or(u16::MAX)
                    .max(1);
                Ok(client)
            }
            _ => Err(BrokerStopped),
        }
    }
}

impl InternalClient {
    /// Subscribes to `filter` with at most `qos` (QoS 2 is granted as 1: an
    /// in-process reader needs no exactly-once handshake) and waits for the
    /// broker to confirm, so messages published afterwards are received.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), BrokerStopped> {
        let packet_id = self.packet_id();
        let subscribe = Subscribe {
            packet_id,
            filters: vec![SubscriptionRequest {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos: qos.min(QoS::AtLeastOnce),
                    ..SubscriptionOptions::default()
                },
            }],
            properties: PacketProperties::new(),
        };
        self.send(Packet::Subscribe(subscribe)).await?;
        // Hold back publications that arrive before the SUBACK.
        let mut held = VecDeque::new();
        let outcome = loop {
            match self.next_packet().await {
                Some(Packet::SubAck(SubAck { packet_id: id, .. })) if id == packet_id => {
                    break Ok(());
                }
                Some(packet) => held.push_back(packet),
                None => break Err(BrokerStopped),
            }
        };
        held.append(&mut self.received);
        self.received = held;
        outcome
    }

    /// The next message for one of this client's subscriptions; `None` once
    /// the broker closed the client. QoS 1 messages are acknowledged as
    /// they are handed out.
    pub async fn recv(&mut self) -> Option<Publish> {
        loop {
            match self.next_packet().await? {
                Packet::Publish(publish) => {
                    if publish.qos != QoS::AtMostOnce {
                        let ack = Packet::PubAck(PublishAck::success(publish.packet_id));
                        self.send(ack).await.ok()?;
                    }
                    return Some(publish);
                }
                // SUBACKs of earlier subscriptions, PINGRESPs and the like.
                _ => continue,
            }
        }
    }

    /// The next message for one of this client's subscriptions, not
    /// acknowledged: a QoS 1 message stays in flight (and counts against
    /// the Receive Maximum) until [`InternalClient::ack`] is called with its
    /// packet id. `None` once the broker closed the client.
    pub async fn recv_manual(&mut self) -> Option<Delivery> {
        loop {
            match self.next_packet().await? {
                Packet::Publish(publish) => {
                    let packet_id = (publish.qos != QoS::AtMostOnce).then_some(publish.packet_id);
                    return Some(Delivery { publish, packet_id });
                }
                _ => continue,
            }
        }
    }

    /// Acknowledges (PUBACK) the QoS 1 message handed out by
    /// [`InternalClient::recv_manual`] with `packet_id`: the broker forgets it
    /// and may hand out the next one.
    pub async fn ack(&mut self, packet_id: u16) -> Result<(), BrokerStopped> {
        self.send(Packet::PubAck(PublishAck::success(packet_id)))
            .await
    }

    /// Acknowledges many messages handed out by [`InternalClient::recv_manual`]
    /// at once, in this order: one event on the broker's channel instead of one
    /// per message (a busy broker's channel makes each event wait its turn).
    pub async fn ack_many(&mut self, packet_ids: Vec<u16>) -> Result<(), BrokerStopped> {
        if packet_ids.is_empty() {
            return Ok(());
        }
        self.events
            .send(Event::Acks {
                conn: self.conn,
                packet_ids,
            })
            .await
            .map_err(|_| BrokerStopped)
    }

    /// Publishes `publish` as this client (QoS 0 or 1; a QoS 1 message gets
    /// a packet id here and its PUBACK is skipped by [`InternalClient::recv`]).
    pub async fn publish(&mut self, mut publish: Publish) -> Result<(), BrokerStopped> {
        if publish.qos != QoS::AtMostOnce {
            publish.qos = QoS::AtLeastOnce;
            publish.packet_id = self.packet_id();
        }
        self.send(Packet::Publish(publish)).await
    }

    /// Publishes `publish` at QoS 1 as this client and waits for the
    /// broker's PUBACK, which comes once the message is as durable as the
    /// store says (other packets arriving meanwhile are kept for
    /// [`InternalClient::recv`] / [`InternalClient::recv_manual`]).
    pub async fn publish_confirmed(
        &mut self,
        mut publish: Publish,
    ) -> Result<PublishAck, BrokerStopped> {
        publish.qos = QoS::AtLeastOnce;
        let packet_id = self.packet_id();
        publish.packet_id = packet_id;
        self.send(Packet::Publish(publish)).await?;
        let mut held = VecDeque::new();
        let outcome = loop {
            match self.next_packet().await {
                Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => break Ok(ack),
                Some(packet) => held.push_back(packet),
                None => break Err(BrokerStopped),
            }
        };
        held.append(&mut self.received);
        self.received = held;
        outcome
    }

    /// Publishes each of `publishes` at QoS 1 as this client and waits for
    /// every PUBACK: the acknowledgements, in the order given. Up to the
    /// broker's Receive Maximum are outstanding at once (one store commit
    /// covers many), instead of one commit's wait per message as with
    /// [`InternalClient::publish_confirmed`]. Other packets arriving
    /// meanwhile are kept for [`InternalClient::recv`].
    pub async fn publish_confirmed_many(
        &mut self,
        publishes: Vec<Publish>,
    ) -> Result<Vec<PublishAck>, BrokerStopped> {
        let window = usize::from(self.server_receive_maximum);
        let mut acks: Vec<Option<PublishAck>> = vec![None; publishes.len()];
        let mut publishes = publishes.into_iter().enumerate().peekable();
        let mut held = VecDeque::new();
        let outcome = loop {
            // Packet id -> position of the publications of this round.
            let mut waiting = std::collections::HashMap::with_capacity(window.min(acks.len()));
            while waiting.len() < window {
                let Some((index, mut publish)) = publishes.next() else {
                    break;
                };
                publish.qos = QoS::AtLeastOnce;
                publish.packet_id = self.packet_id();
                waiting.insert(publish.packet_id, index);
                if self.send(Packet::Publish(publish)).await.is_err() {
                    return Err(BrokerStopped);
                }
            }
            if waiting.is_empty() {
                break Ok(());
            }
            while !waiting.is_empty() {
                match self.next_packet().await {
                    Some(Packet::PubAck(ack)) if waiting.contains_key(&ack.packet_id) => {
                        if let Some(index) = waiting.remove(&ack.packet_id) {
                            acks[index] = Some(ack);
                        }
                    }
                    Some(packet) => held.push_back(packet),
                    None => return Err(BrokerStopped),
                }
            }
        };
        held.append(&mut self.received);
        self.received = held;
        outcome?;
        Ok(acks.into_iter().flatten().collect())
    }

    /// Detaches the client from the broker.
    pub async fn disconnect(mut self) {
        self.closed = true;
        let _ = self
            .events
            .send(Event::Lost {
                conn: self.conn,
                loss: ConnectionLoss::Network,
            })
            .await;
    }

    async fn send(&self, packet: Packet) -> Result<(), BrokerStopped> {
        self.events
            .send(Event::Packet {
                conn: self.conn,
                packet,
            })
            .await
            .map_err(|_| BrokerStopped)
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    /// The next packet the broker sent this client, waiting for one.
    async fn next_packet(&mut self) -> Option<Packet> {
        loop {
            if self.unreported_qos0 > 0 {
                // Handed over: the core may send more. Cancel-safe: a send
                // cancelled before it completes sent nothing, and the count
                // stays for the next call.
                let qos0 = self.unreported_qos0;
                let _ = self
                    .events
                    .send(Event::Written {
                        conn: self.conn,
                        qos0,
                    })
                    .await;
                self.unreported_qos0 = 0;
            }
            if let Some(packet) = self.received.pop_front() {
                return Some(packet);
            }
            if self.closed {
                return None;
            }
            self.link.woken().await;
            let (packets, qos0, closing) = self.link.take_packets();
            self.received.extend(packets);
            self.closed = closing;
            self.unreported_qos0 += qos0;
        }
    }
}

impl Drop for InternalClient {
    fn drop(&mut self) {
        if !self.closed {
            // Best effort: a full channel leaves the session to the broker's shutdown.
            let _ = self.events.try_send(Event::Lost {
                conn: self.conn,
                loss: ConnectionLoss::Network,
            });
        }
    }
}
