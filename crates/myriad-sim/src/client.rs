//! A minimal MQTT client on the project's sans-IO codec.
//!
//! One [`Client`] owns one TCP connection, a read buffer that is only filled
//! when the socket is readable (idle connections keep no buffer), and a write
//! buffer that collects queued packets until [`Client::flush`] sends them in
//! one write. It does not run a task of its own: the scenario that owns it
//! drives reading, writing and keepalive from its own loop, so a simulated
//! connection costs one task.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use myriad_mqtt::{
    ConnAck, Connect, Disconnect, Packet, PacketProperties, Properties, ProtocolVersion, Publish,
    PublishAck, QoS, ReasonCode, Subscribe, SubscriptionOptions, SubscriptionRequest, Will, decode,
    encode,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};

use crate::error::{Result, SimError};

/// Largest packet the simulator accepts from a broker.
pub const MAX_PACKET_SIZE: usize = 16 * 1024 * 1024;

/// How one connection introduces itself.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Protocol version to speak.
    pub version: ProtocolVersion,
    /// Client identifier.
    pub client_id: String,
    /// Keep alive in seconds (0 disables pings).
    pub keep_alive: u16,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Session expiry interval (5.0 only).
    pub session_expiry: Option<u32>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
    /// Will message.
    pub will: Option<Will>,
    /// Local address to bind before connecting (spreads ephemeral ports).
    pub source: Option<IpAddr>,
    /// Bound on TCP connect plus CONNECT/CONNACK.
    pub timeout: Duration,
}

impl ConnectOptions {
    /// Defaults for a client id: 5.0, keepalive 60 s, clean start, 10 s timeout.
    pub fn new(client_id: impl Into<String>, version: ProtocolVersion) -> ConnectOptions {
        ConnectOptions {
            version,
            client_id: client_id.into(),
            keep_alive: 60,
            clean_start: true,
            session_expiry: None,
            username: None,
            password: None,
            will: None,
            source: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One MQTT connection.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    version: ProtocolVersion,
    rbuf: BytesMut,
    wbuf: BytesMut,
    pending: VecDeque<Packet>,
    read_chunk: usize,
    keep_alive: Option<Duration>,
    last_write: Instant,
    next_id: u16,
    server_receive_maximum: u16,
}

impl Client {
    /// Opens a TCP connection to `addr`, sends CONNECT and waits for CONNACK.
    ///
    /// A refused CONNACK is returned as [`SimError::Refused`].
    pub async fn connect(addr: SocketAddr, options: &ConnectOptions) -> Result<(Client, ConnAck)> {
        match timeout(options.timeout, Client::connect_inner(addr, options)).await {
            Ok(result) => result,
            Err(_) => Err(SimError::Timeout("CONNACK")),
        }
    }

    async fn connect_inner(
        addr: SocketAddr,
        options: &ConnectOptions,
    ) -> Result<(Client, ConnAck)> {
        let io = |source| SimError::Io { addr, source };
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(io)?;
        if let Some(source) = options.source {
            socket.bind(SocketAddr::new(source, 0)).map_err(io)?;
        }
        let stream = socket.connect(addr).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let mut client = Client {
            stream,
            addr,
            version: options.version,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            pending: VecDeque::new(),
            read_chunk: 4096,
            keep_alive: None,
            last_write: Instant::now(),
            next_id: 0,
            server_receive_maximum: u16::MAX,
        };
        let mut properties = Properties::default();
        if options.version.is_v5() {
            properties.session_expiry_interval = options.session_expiry;
        }
        let connect = Connect {
            protocol: options.version,
            clean_start: options.clean_start,
            keep_alive: options.keep_alive,
            client_id: options.client_id.as_str().into(),
            will: options.will.clone(),
            username: options.username.as_deref().map(Into::into),
            password: options.password.clone(),
            properties: properties.into(),
        };
        client.queue(&Packet::Connect(Box::new(connect)))?;
        client.flush().await?;
        let connack = match client.recv().await? {
            Packet::ConnAck(connack) => connack,
            other => return Err(SimError::Unexpected(other.packet_type())),
        };
        if connack.reason_code.is_error() {
            return Err(SimError::Refused(connack.reason_code));
        }
        let keep_alive = connack
            .properties
            .server_keep_alive
            .unwrap_or(options.keep_alive);
        client.keep_alive = (keep_alive > 0).then(|| Duration::from_secs(keep_alive.into()));
        if let Some(max) = connack.properties.receive_maximum {
            client.server_receive_maximum = max;
        }
        client.rbuf = BytesMut::new();
        Ok((client, connack))
    }

    /// The protocol version of this connection.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker's Receive Maximum (65,535 when it sent none).
    pub fn server_receive_maximum(&self) -> u16 {
        self.server_receive_maximum
    }

    /// Sets how many bytes are reserved per read (larger for busy subscribers).
    pub fn set_read_chunk(&mut self, bytes: usize) {
        self.read_chunk = bytes.max(64);
    }

    /// A fresh non-zero packet identifier (wraps; the caller keeps ids in
    /// flight below 65,535 so none is reused while open).
    pub fn next_packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    /// Encodes `packet` into the write buffer (sent by [`Client::flush`]).
    pub fn queue(&mut self, packet: &Packet) -> Result<()> {
        encode(packet, self.version, &mut self.wbuf)?;
        Ok(())
    }

    /// Queues a PUBLISH.
    pub fn queue_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        packet_id: u16,
        payload: Bytes,
    ) -> Result<()> {
        self.queue(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            payload,
            properties: PacketProperties::new(),
        }))
    }

    /// Bytes waiting in the write buffer.
    pub fn queued_bytes(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes everything queued in one go.
    pub async fn flush(&mut self) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let addr = self.addr;
        self.stream
            .write_all_buf(&mut self.wbuf)
            .await
            .map_err(|source| SimError::Io { addr, source })?;
        self.last_write = Instant::now();
        if self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// The next whole packet already received, without waiting.
    pub fn poll_packet(&mut self) -> Result<Option<Packet>> {
        if let Some(packet) = self.pending.pop_front() {
            return Ok(Some(packet));
        }
        Ok(decode(&mut self.rbuf, self.version, MAX_PACKET_SIZE)?)
    }

    /// Waits until the socket has data and reads it into the buffer.
    ///
    /// Cancel safe: dropping the future loses no data, so it can sit in a
    /// `select!`. Fails with [`SimError::Closed`] at end of stream.
    pub async fn fill(&mut self) -> Result<usize> {
        let addr = self.addr;
        loop {
            self.stream
                .readable()
                .await
                .map_err(|source| SimError::Io { addr, source })?;
            if self.rbuf.capacity() - self.rbuf.len() < 512 {
                self.rbuf.reserve(self.read_chunk);
            }
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Err(SimError::Closed),
                Ok(n) => return Ok(n),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(source) => return Err(SimError::Io { addr, source }),
            }
        }
    }

    /// Waits for the next packet.
    pub async fn recv(&mut self) -> Result<Packet> {
        loop {
            if let Some(packet) = self.poll_packet()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    /// Releases the read buffer when nothing is left in it (idle connections).
    pub fn shrink(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    /// When the next PINGREQ is due (far in the future without keepalive).
    pub fn ping_deadline(&self) -> Instant {
        match self.keep_alive {
            Some(keep_alive) => self.last_write + keep_alive,
            None => self.last_write + Duration::from_secs(86_400 * 365),
        }
    }

    /// Queues a PINGREQ if one is due.
    pub fn queue_ping_if_due(&mut self) -> Result<bool> {
        if self.keep_alive.is_some() && Instant::now() >= self.ping_deadline() {
            self.queue(&Packet::PingReq)?;
            // Count the ping as sent now so the deadline moves even before flush.
            self.last_write = Instant::now();
            return Ok(true);
        }
        Ok(false)
    }

    /// Subscribes to `filters` and waits for SUBACK (within `wait`).
    ///
    /// Packets other than SUBACK and PINGRESP that arrive meanwhile are kept
    /// for [`Client::poll_packet`].
    pub async fn subscribe(&mut self, filters: &[(String, QoS)], wait: Duration) -> Result<()> {
        let packet_id = self.next_packet_id();
        let subscribe = Subscribe {
            packet_id,
            filters: filters
                .iter()
                .map(|(filter, qos)| SubscriptionRequest {
                    filter: filter.as_str().into(),
                    options: SubscriptionOptions {
                        qos: *qos,
                        ..SubscriptionOptions::default()
                    },
                })
                .collect(),
            properties: PacketProperties::new(),
        };
        self.queue(&Packet::Subscribe(subscribe))?;
        self.flush().await?;
        let deadline = Instant::now() + wait;
        let mut held = VecDeque::new();
        let result = loop {
            let packet = match tokio::time::timeout_at(deadline, self.recv()).await {
                Ok(packet) => packet?,
                Err(_) => break Err(SimError::Timeout("SUBACK")),
            };
            match packet {
                Packet::SubAck(ack) if ack.packet_id == packet_id => {
                    let refused = filters
                        .iter()
                        .zip(ack.reason_codes.iter())
                        .find(|(_, code)| code.is_error());
                    break match refused {
                        Some(((filter, _), code)) => Err(SimError::SubscribeRefused {
                            filter: filter.clone(),
                            code: *code,
                        }),
                        None => Ok(()),
                    };
                }
                Packet::PingResp => {}
                other => held.push_back(other),
            }
        };
        held.extend(self.pending.drain(..));
        self.pending = held;
        result
    }

    /// Answers the broker's side of QoS flows and pings for a packet just received.
    ///
    /// Returns the packet back when it is an application message or an
    /// acknowledgement the caller must account for; PINGRESP is consumed.
    pub fn auto_reply(&mut self, packet: Packet) -> Result<Option<Packet>> {
        match packet {
            Packet::PingResp => Ok(None),
            Packet::PubRel(ack) => {
                self.queue(&Packet::PubComp(PublishAck::success(ack.packet_id)))?;
                Ok(Some(Packet::PubRel(ack)))
            }
            Packet::PubRec(ack) => {
                if !ack.reason_code.is_error() {
                    self.queue(&Packet::PubRel(PublishAck::success(ack.packet_id)))?;
                }
                Ok(Some(Packet::PubRec(ack)))
            }
            Packet::Publish(publish) => {
                match publish.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        self.queue(&Packet::PubAck(PublishAck::success(publish.packet_id)))?
                    }
                    QoS::ExactlyOnce => {
                        self.queue(&Packet::PubRec(PublishAck::success(publish.packet_id)))?
                    }
                }
                Ok(Some(Packet::Publish(publish)))
            }
            Packet::Disconnect(_) => Err(SimError::Closed),
            Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Auth(_) => Err(SimError::Unexpected(packet.packet_type())),
            other => Ok(Some(other)),
        }
    }

    /// Sends DISCONNECT and waits briefly for the broker to close first, so
    /// the TIME_WAIT state lands on the broker's side rather than on our ports.
    pub async fn disconnect(mut self) {
        let packet = Packet::Disconnect(Disconnect::new(ReasonCode::Success));
        if self.queue(&packet).is_ok() && self.flush().await.is_ok() {
            let _ = timeout(Duration::from_secs(2), async {
                while self.fill().await.is_ok() {
                    self.rbuf.clear();
                }
            })
            .await;
        }
    }

    /// Drops the connection at once with a TCP reset (no DISCONNECT, no
    /// TIME_WAIT), the way a device that loses power or network looks.
    pub fn abort(self) {
        let _ = self.stream.set_zero_linger();
        drop(self);
    }
}
