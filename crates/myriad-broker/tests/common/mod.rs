//! A minimal raw MQTT client for the shell tests, built on our own codec.

#![allow(dead_code)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use myriad_broker::BrokerConfig;
use myriad_broker::shell::{self, BrokerHandle, Hooks, Persistence, ServeError};
use myriad_mqtt::{
    Connect, Packet, PacketProperties, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, SubscriptionRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A broker shell serving on 127.0.0.1, port 0, in a spawned task.
pub struct Server {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Cancelling it stops the run.
    pub shutdown: CancellationToken,
    /// For in-process publishes and snapshots.
    pub handle: BrokerHandle,
    /// The run itself.
    pub task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

/// Starts `shell::run` with `config`, `persistence` and `hooks`.
pub async fn serve(config: BrokerConfig, persistence: Option<Persistence>, hooks: Hooks) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let (handle, events) = shell::channel();
    let task = tokio::spawn(shell::run(
        config,
        persistence,
        hooks,
        listener,
        shutdown.clone(),
        handle.clone(),
        events,
    ));
    Server {
        addr,
        shutdown,
        handle,
        task,
    }
}

impl Server {
    /// Cancels the run and expects it to end cleanly within 10 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        stopped.expect("stops").expect("join").expect("clean stop");
    }
}

/// One client connection.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    protocol: ProtocolVersion,
}

/// A CONNECT for `id` in `protocol` with a session expiry (5.0) / clean session when 0.
pub fn connect_packet(protocol: ProtocolVersion, id: &str, expiry: u32) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 30,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval: protocol.is_v5().then_some(expiry),
            ..Properties::default()
        }
        .into(),
    }
}

impl Client {
    /// Connects (5.0) as `id` and expects a CONNACK.
    pub async fn connect(addr: std::net::SocketAddr, id: &str, expiry: u32) -> Client {
        let (client, answer) =
            Client::open(addr, connect_packet(ProtocolVersion::V5, id, expiry)).await;
        assert!(matches!(answer, Some(Packet::ConnAck(_))));
        client
    }

    /// A client on an open socket that has sent nothing yet.
    pub fn from_stream(stream: TcpStream, protocol: ProtocolVersion) -> Client {
        Client {
            stream,
            buf: BytesMut::new(),
            protocol,
        }
    }

    /// Sends `connect` and returns the client with the server's first answer.
    pub async fn open(addr: std::net::SocketAddr, connect: Connect) -> (Client, Option<Packet>) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut client = Client {
            stream,
            buf: BytesMut::new(),
            protocol: connect.protocol,
        };
        client.send(Packet::Connect(Box::new(connect))).await;
        let answer = client.recv().await;
        (client, answer)
    }

    /// Writes one packet.
    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        myriad_mqtt::encode(&packet, self.protocol, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next packet, or None when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) =
                myriad_mqtt::decode(&mut self.buf, self.protocol, 1 << 20).expect("decode")
            {
                return Some(packet);
            }
            let read =
                tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("server answers within 5 s");
            if read.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// Subscribes to `filter` at `qos` and returns the SUBACK.
    pub async fn subscribe(&mut self, packet_id: u16, filter: &str, qos: QoS) -> Option<Packet> {
        self.send(Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![SubscriptionRequest {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: PacketProperties::new(),
        }))
        .await;
        self.recv().await
    }

    /// Closes the socket without DISCONNECT.
    pub async fn cut(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// A QoS 1 PUBLISH of `payload` to `topic`.
pub fn publish(topic: &str, packet_id: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: if packet_id == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        retain: false,
        topic: topic.into(),
        packet_id,
        payload: Bytes::from_static(payload),
        properties: PacketProperties::new(),
    })
}
