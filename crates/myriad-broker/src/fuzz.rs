//! The session-engine fuzz harness (feature `fuzz`).
//!
//! Drives the sans-IO [`Broker`] with a [`Scenario`]: low limits and a
//! sequence of [`Op`]s from up to [`CLIENTS`] clients (connect, publish,
//! subscribe, acknowledgements right and wrong, disconnect, network loss,
//! garbage bytes), the clock advancing, and restarts from what the broker
//! recorded for its store. The shell's part is played faithfully: every
//! packet is encoded and decoded with the codec, so the core sees only what
//! a socket could bring it (bytes the codec refuses end the connection as a
//! protocol violation), and timeouts fire when [`Broker::next_timeout`] says.
//!
//! After every step it checks, and panics on a breach:
//! - the core did not panic, and [`Broker::check_consistency`] holds;
//! - every output is for a connection that was accepted and is still open,
//!   encodes in the client's protocol version, fits the client's Maximum
//!   Packet Size (PUBLISH), uses a topic alias the client allowed and a
//!   packet id not in flight, and stays within the client's Receive Maximum;
//! - the connection count matches the open connections, and each open
//!   client's session shows as connected;
//! - counters never go down;
//! - the store accepts every batch of changes, and what it holds equals
//!   [`Broker::durable_state`] (so a restart brings back what was there);
//! - after [`Broker::handle_timeout`], the next timeout lies in the future
//!   (or the shell would spin).
//!
//! The fuzz target `session` (fuzz/fuzz_targets/session.rs) calls [`run`];
//! the test `fuzz_corpus` replays fuzz/corpus/session with it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use myriad_mqtt::{
    Auth, ByteString, ConnAck, Connect, Disconnect, Packet, PacketProperties, PacketType,
    ProtocolVersion, Publish, PublishAck, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscriptionOptions, SubscriptionRequest, UnsubAck, Unsubscribe, Will,
};
use myriad_store::{MemoryStore, MessageRecord, SessionStore, Snapshot};

use crate::config::BrokerConfig;
use crate::core::{Broker, BrokerStats, ConnId, ConnectionLoss, Output};

/// How many clients a scenario drives.
pub const CLIENTS: usize = 4;
/// Operations run per scenario; the rest of a longer input is ignored.
pub const MAX_OPS: usize = 256;
/// Default cap on the levels of a generated deep topic or filter.
///
/// The trees are walked and dropped without recursion (issue 13, section 1),
/// so deep topics are fuzzed by default; the cap keeps each input fast.
/// Change it with [`Options::max_deep_levels`] (the fuzz target reads
/// `MYRIAD_FUZZ_DEEP_LEVELS`).
pub const DEFAULT_DEEP_LEVELS: usize = 3000;
/// Wall-clock time at the start of every run (the store keeps wall-clock times).
const BASE_UNIX_MS: u64 = 1_700_000_000_000;
/// Topic levels valid in names and filters: plain ones, an empty level, `$`
/// levels and the denied prefix.
const LEVELS: [&str; 8] = ["a", "b", "c", "", "$SYS", "deny", "g", "$share"];
/// Levels valid only in filters.
const WILDCARDS: [&str; 2] = ["+", "#"];
/// Levels valid nowhere (1 level in 16 is one of these).
const INVALID: [&str; 3] = ["a+", "#b", "x\0"];
/// Iterations of one clock advance before the harness calls it a spin.
const MAX_TIMEOUTS_PER_ADVANCE: usize = 10_000;

/// What the harness does besides the input.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Most levels of a generated deep topic or filter.
    pub max_deep_levels: usize,
    /// Prints each operation and output to stderr (to read a crash input).
    pub trace: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_deep_levels: DEFAULT_DEEP_LEVELS,
            trace: false,
        }
    }
}

/// One fuzz input: the broker's limits and what the clients do.
#[derive(Debug, Clone, Arbitrary)]
pub struct Scenario {
    /// Configuration, kept low.
    pub limits: Limits,
    /// Operations, in order (at most [`MAX_OPS`] are run).
    pub ops: Vec<Op>,
}

/// Broker limits, each mapped into a small range by [`Limits::config`].
#[derive(Debug, Clone, Arbitrary)]
pub struct Limits {
    /// Receive Maximum of the server: 1 to 4.
    pub receive_maximum: u8,
    /// Queued messages per session: 1 to 8.
    pub max_queued_messages: u8,
    /// Queued bytes per session: 1 to 4096.
    pub max_queued_bytes: u16,
    /// Client topic aliases: 0 to 4.
    pub topic_alias_maximum: u8,
    /// Largest packet the server accepts.
    pub packet_size: PacketSize,
    /// Whether QoS 1 publishers are held while a subscriber's queue is full.
    pub publisher_hold: bool,
    /// Cap on session expiry, in seconds (none: no cap).
    pub max_session_expiry: Option<u16>,
    /// Cap on keep alive, 1 to 256 seconds (none: no cap).
    pub max_keep_alive: Option<u8>,
    /// Whether `deny/#` is in `deny_subscribe`.
    pub deny: bool,
    /// Whether topics of any depth are allowed (else at most 4 levels).
    pub deep_topics: bool,
    /// Subscriptions per client: 1 to 8.
    pub max_subscriptions: u8,
    /// Topic aliases the server assigns: 0 to 4.
    pub outbound_aliases: u8,
    /// Outbound in-flight cap: 1 to 4.
    pub max_inflight: u8,
    /// QoS 0 messages a connection may have unwritten: 1 to 4.
    pub max_outbound_qos0: u8,
}

/// The server's Maximum Packet Size.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum PacketSize {
    /// 64 to 319 bytes.
    Tiny(u8),
    /// 4 KiB.
    Small,
    /// 1 MiB (room for deep topics).
    Large,
}

impl Limits {
    /// The configuration these limits stand for.
    pub fn config(&self) -> BrokerConfig {
        BrokerConfig {
            receive_maximum: 1 + u16::from(self.receive_maximum % 4),
            max_queued_messages: 1 + usize::from(self.max_queued_messages % 8),
            max_queued_bytes: 1 + usize::from(self.max_queued_bytes % 4096),
            topic_alias_maximum: u16::from(self.topic_alias_maximum % 5),
            max_packet_size: match self.packet_size {
                PacketSize::Tiny(extra) => 64 + u32::from(extra),
                PacketSize::Small => 4096,
                PacketSize::Large => 1 << 20,
            },
            publisher_hold_ms: if self.publisher_hold { 2000 } else { 0 },
            max_session_expiry_secs: self.max_session_expiry.map_or(u32::MAX, u32::from),
            max_keep_alive_secs: self
                .max_keep_alive
                .map_or(u16::MAX, |secs| 1 + u16::from(secs)),
            deny_subscribe: if self.deny {
                vec!["deny/#".to_owned()]
            } else {
                Vec::new()
            },
            max_topic_levels: if self.deep_topics { 100_000 } else { 4 },
            max_topic_length: if self.deep_topics { 65_535 } else { 64 },
            max_subscriptions_per_client: 1 + usize::from(self.max_subscriptions % 8),
            max_outbound_aliases: u16::from(self.outbound_aliases % 5),
            max_inflight: 1 + u16::from(self.max_inflight % 4),
            max_outbound_qos0: 1 + usize::from(self.max_outbound_qos0 % 4),
            ..BrokerConfig::default()
        }
    }
}

/// One step of a scenario. `client` picks one of [`CLIENTS`] clients; an
/// operation on a client without a connection goes to its last one (the
/// core must ignore it) or, if it never had one, does nothing.
#[derive(Debug, Clone, Arbitrary)]
pub enum Op {
    /// Opens a new connection (dropping the client's current one first).
    Connect(ConnectSpec),
    /// PUBLISH from a client.
    Publish {
        /// Which client.
        client: u8,
        /// What it publishes.
        publish: PublishSpec,
    },
    /// SUBSCRIBE (up to 4 filters).
    Subscribe {
        /// Which client.
        client: u8,
        /// Packet identifier: 1 to 8.
        packet_id: u8,
        /// The filters.
        filters: Vec<FilterSpec>,
        /// Subscription identifier (5.0), 1 and up.
        subscription_id: Option<u16>,
    },
    /// UNSUBSCRIBE (up to 4 filters).
    Unsubscribe {
        /// Which client.
        client: u8,
        /// Packet identifier: 1 to 8.
        packet_id: u8,
        /// The filters.
        filters: Vec<FilterSpec>,
    },
    /// PUBACK, PUBREC, PUBREL or PUBCOMP.
    Ack {
        /// Which client.
        client: u8,
        /// Which one.
        ack: AckSpec,
    },
    /// PINGREQ.
    Ping {
        /// Which client.
        client: u8,
    },
    /// DISCONNECT.
    Disconnect {
        /// Which client.
        client: u8,
        /// Reason 0x04: publish the will.
        with_will: bool,
        /// New Session Expiry Interval (5.0).
        expiry: Option<Expiry>,
    },
    /// A packet a client may not send now.
    Unexpected {
        /// Which client.
        client: u8,
        /// Which packet.
        kind: Unexpected,
    },
    /// Bytes decoded as the shell would, packet by packet (up to 512).
    Garbage {
        /// Which client.
        client: u8,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The shell reports the connection gone.
    Lost {
        /// Which client.
        client: u8,
        /// Why.
        loss: Loss,
    },
    /// Time passes; timeouts fire as they fall due.
    Advance(Advance),
    /// A publication from inside the process ([`Broker::publish`]).
    InternalPublish(PublishSpec),
    /// The broker restarts from what its store holds.
    Restart {
        /// Connections are closed as at shutdown first (else: a crash).
        graceful: bool,
    },
}

/// A CONNECT.
#[derive(Debug, Clone, Arbitrary)]
pub struct ConnectSpec {
    /// Which client.
    pub client: u8,
    /// 0 to 3: a fixed id shared by all clients (so they take each other
    /// over); 4: empty (assigned); 5: the last id the server assigned.
    pub client_id: u8,
    /// MQTT 5.0, else 3.1.1.
    pub v5: bool,
    /// Clean start / clean session.
    pub clean_start: bool,
    /// Keep alive in seconds (0: none).
    pub keep_alive: u8,
    /// Session Expiry Interval (5.0).
    pub session_expiry: Option<Expiry>,
    /// The will.
    pub will: Option<WillSpec>,
    /// Receive Maximum: 1 to 4 (5.0).
    pub receive_maximum: Option<u8>,
    /// Maximum Packet Size: 16 to 65,551 bytes (5.0).
    pub maximum_packet_size: Option<u16>,
    /// Topic Alias Maximum: 0 to 3 (5.0).
    pub topic_alias_maximum: Option<u8>,
    /// Asks for extended authentication (refused).
    pub authentication_method: bool,
}

/// A session expiry or will delay.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Expiry {
    /// 0.
    Zero,
    /// 1 to 256 seconds.
    Secs(u8),
    /// An hour.
    Hour,
    /// 0xFFFFFFFF (sessions: never expire).
    Never,
}

impl Expiry {
    fn secs(self) -> u32 {
        match self {
            Expiry::Zero => 0,
            Expiry::Secs(secs) => 1 + u32::from(secs),
            Expiry::Hour => 3600,
            Expiry::Never => u32::MAX,
        }
    }
}

/// A will.
#[derive(Debug, Clone, Arbitrary)]
pub struct WillSpec {
    /// Its topic.
    pub topic: TopicSpec,
    /// QoS: modulo 3.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Payload.
    pub payload: Payload,
    /// Will Delay Interval (5.0).
    pub delay: Option<Expiry>,
    /// Message Expiry Interval in seconds (5.0).
    pub message_expiry: Option<u8>,
}

/// A topic name or filter.
#[derive(Debug, Clone, Arbitrary)]
pub enum TopicSpec {
    /// Up to 6 levels from a small alphabet (wildcards included).
    Levels(Vec<u8>),
    /// Many levels: `levels` (capped by [`Options::max_deep_levels`]) empty
    /// levels, then one level from the alphabet.
    Deep {
        /// How many levels.
        levels: u16,
        /// The last level.
        last: u8,
    },
}

/// A topic filter in SUBSCRIBE or UNSUBSCRIBE.
#[derive(Debug, Clone, Arbitrary)]
pub struct FilterSpec {
    /// The filter.
    pub topic: TopicSpec,
    /// Inside `$share/{group}/` (group 0 to 2; 3 is an empty group name).
    pub shared: Option<u8>,
    /// Maximum QoS: modulo 3.
    pub qos: u8,
    /// No Local (5.0).
    pub no_local: bool,
    /// Retain As Published (5.0).
    pub retain_as_published: bool,
    /// Retain Handling: modulo 3 (5.0).
    pub retain_handling: u8,
}

/// A PUBLISH.
#[derive(Debug, Clone, Arbitrary)]
pub struct PublishSpec {
    /// Topic name.
    pub topic: TopicSpec,
    /// QoS: modulo 3.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// DUP flag (QoS 1/2 only).
    pub dup: bool,
    /// Packet identifier: 1 to 8.
    pub packet_id: u8,
    /// Payload.
    pub payload: Payload,
    /// Topic Alias, modulo 6 (0 and above the maximum are invalid) (5.0).
    pub alias: Option<u8>,
    /// Send the alias without the topic (5.0).
    pub alias_only: bool,
    /// Message Expiry Interval in seconds (5.0).
    pub message_expiry: Option<u8>,
    /// Adds user, response-topic and correlation properties (5.0).
    pub properties: bool,
}

/// A payload.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Payload {
    /// No bytes (clears a retained message).
    Empty,
    /// Up to 255 bytes.
    Small(u8),
    /// Up to 65,535 bytes.
    Large(u16),
}

/// A client acknowledgement.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum AckSpec {
    /// The right answer to one of the flows open on the connection (picked
    /// by index), if any.
    Right(u8),
    /// Any acknowledgement with any packet id.
    Wrong {
        /// Which packet.
        kind: AckKind,
        /// Packet identifier (0 cannot be encoded: the op is skipped).
        packet_id: u16,
        /// An error reason code (5.0).
        error: bool,
    },
}

/// The four acknowledgements of QoS 1 and 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum AckKind {
    /// PUBACK.
    PubAck,
    /// PUBREC.
    PubRec,
    /// PUBREL.
    PubRel,
    /// PUBCOMP.
    PubComp,
}

/// Packets a client may not send after CONNECT.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Unexpected {
    /// A second CONNECT.
    Connect,
    /// CONNACK.
    ConnAck,
    /// SUBACK.
    SubAck,
    /// UNSUBACK.
    UnsubAck,
    /// PINGRESP.
    PingResp,
    /// AUTH (5.0 only).
    Auth,
}

/// How a connection ends, as the shell reports it.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Loss {
    /// The socket closed.
    Network,
    /// The shell's own keep-alive timer fired.
    KeepAliveTimeout,
    /// Bytes that did not decode.
    ProtocolViolation,
    /// Shutdown.
    ServerShutdown,
}

/// How far the clock moves.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Advance {
    /// Milliseconds.
    Millis(u16),
    /// Seconds.
    Secs(u16),
    /// Hours.
    Hours(u8),
}

/// Runs the scenario `data` decodes to (as libFuzzer's typed targets do:
/// `arbitrary_take_rest`); input that decodes to none is ignored.
pub fn run(data: &[u8], options: &Options) {
    if let Some(scenario) = scenario(data) {
        run_scenario(&scenario, options);
    }
}

/// The scenario `data` decodes to, if any (to print a crash input).
pub fn scenario(data: &[u8]) -> Option<Scenario> {
    Scenario::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// Runs `scenario`, panicking on the first broken invariant.
pub fn run_scenario(scenario: &Scenario, options: &Options) {
    let mut harness = Harness::new(scenario.limits.config(), *options);
    if options.trace {
        eprintln!("limits: {:?}", scenario.limits.config());
    }
    for (index, op) in scenario.ops.iter().take(MAX_OPS).enumerate() {
        if options.trace {
            eprintln!("op {index}: {op:?}");
        }
        harness.step(op);
    }
    // Let everything that is scheduled happen.
    harness.step(&Op::Advance(Advance::Hours(255)));
}

/// The harness's view of one connection.
#[derive(Debug)]
struct ConnState {
    protocol: ProtocolVersion,
    open: bool,
    /// The client id, once known (given, or assigned in CONNACK).
    client_id: Option<ByteString>,
    /// The client's limits.
    max_packet_size: u32,
    receive_maximum: u16,
    topic_alias_maximum: u16,
    /// Topic aliases the server set, by alias.
    aliases: BTreeMap<u16, ByteString>,
    /// QoS 1/2 flows the server opened, by packet id.
    outbound: BTreeMap<u16, Flow>,
    /// The client's QoS 2 publications the server answered with PUBREC.
    received: BTreeSet<u16>,
    /// Answers the server owes, in order: (packet type, packet id, reason codes).
    owed: VecDeque<(PacketType, u16, usize)>,
}

/// Where a server-to-client QoS 1/2 flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// PUBLISH sent at this QoS.
    Published(QoS),
    /// PUBREL sent.
    Released,
}

struct Harness {
    config: BrokerConfig,
    options: Options,
    broker: Broker,
    store: MemoryStore,
    base: Instant,
    offset: Duration,
    next_conn: ConnId,
    conns: BTreeMap<ConnId, ConnState>,
    /// Each client's latest connection.
    clients: [Option<ConnId>; CLIENTS],
    /// Client ids the server assigned (the latest last).
    assigned: Vec<ByteString>,
    stats: BrokerStats,
}

impl Harness {
    fn new(config: BrokerConfig, options: Options) -> Harness {
        if let Err(error) = config.validate() {
            panic!("the harness built an invalid config: {error}");
        }
        let base = Instant::now();
        // Recording from the start: every change goes to the store.
        let broker = Broker::restore(config.clone(), Snapshot::default(), base, BASE_UNIX_MS);
        Harness {
            config,
            options,
            broker,
            store: MemoryStore::new(),
            base,
            offset: Duration::ZERO,
            next_conn: 1,
            conns: BTreeMap::new(),
            clients: [None; CLIENTS],
            assigned: Vec::new(),
            stats: BrokerStats::default(),
        }
    }

    fn now(&self) -> Instant {
        self.base + self.offset
    }

    fn unix_now(&self) -> u64 {
        BASE_UNIX_MS + u64::try_from(self.offset.as_millis()).unwrap_or(u64::MAX)
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Connect(spec) => self.connect(spec),
            Op::Publish { client, publish } => {
                if let Some(packet) = self.publish_packet(*client, publish) {
                    self.send(*client, packet);
                }
            }
            Op::Subscribe {
                client,
                packet_id,
                filters,
                subscription_id,
            } => {
                let mut subscribe = Subscribe {
                    packet_id: packet_id_of(*packet_id),
                    filters: (filters.iter().take(4))
                        .map(|f| SubscriptionRequest {
                            filter: self.filter(f),
                            options: SubscriptionOptions {
                                qos: qos_of(f.qos),
                                no_local: f.no_local,
                                retain_as_published: f.retain_as_published,
                                retain_handling: match f.retain_handling % 3 {
                                    0 => RetainHandling::SendAtSubscribe,
                                    1 => RetainHandling::SendIfNew,
                                    _ => RetainHandling::DoNotSend,
                                },
                            },
                        })
                        .collect(),
                    properties: PacketProperties::new(),
                };
                if let Some(id) = subscription_id {
                    subscribe
                        .properties
                        .subscription_identifiers
                        .push(1 + u32::from(*id));
                }
                self.send(*client, Packet::Subscribe(subscribe));
            }
            Op::Unsubscribe {
                client,
                packet_id,
                filters,
            } => {
                let unsubscribe = Unsubscribe {
                    packet_id: packet_id_of(*packet_id),
                    filters: filters.iter().take(4).map(|f| self.filter(f)).collect(),
                    properties: PacketProperties::new(),
                };
                self.send(*client, Packet::Unsubscribe(unsubscribe));
            }
            Op::Ack { client, ack } => self.ack(*client, *ack),
            Op::Ping { client } => {
                // A client that pings has read its socket: what the shell
                // handed it is written.
                if let Some(conn) = self.last_conn(*client) {
                    self.broker.handle_written(self.now(), conn, usize::MAX);
                }
                self.send(*client, Packet::PingReq);
            }
            Op::Disconnect {
                client,
                with_will,
                expiry,
            } => {
                let reason = if *with_will {
                    ReasonCode::DisconnectWithWillMessage
                } else {
                    ReasonCode::Success
                };
                let mut disconnect = Disconnect::new(reason);
                if let Some(expiry) = expiry {
                    disconnect.properties.session_expiry_interval = Some(expiry.secs());
                }
                self.send(*client, Packet::Disconnect(disconnect));
            }
            Op::Unexpected { client, kind } => {
                let packet = match kind {
                    Unexpected::Connect => {
                        let protocol = self.protocol_of(*client);
                        Packet::Connect(Box::new(Connect {
                            protocol,
                            clean_start: true,
                            keep_alive: 0,
                            client_id: "again".into(),
                            will: None,
                            username: None,
                            password: None,
                            properties: PacketProperties::new(),
                        }))
                    }
                    Unexpected::ConnAck => Packet::ConnAck(ConnAck {
                        session_present: false,
                        reason_code: ReasonCode::Success,
                        properties: PacketProperties::new(),
                    }),
                    Unexpected::SubAck => Packet::SubAck(SubAck {
                        packet_id: 1,
                        reason_codes: vec![ReasonCode::Success],
                        properties: PacketProperties::new(),
                    }),
                    Unexpected::UnsubAck => Packet::UnsubAck(UnsubAck {
                        packet_id: 1,
                        reason_codes: vec![ReasonCode::Success],
                        properties: PacketProperties::new(),
                    }),
                    Unexpected::PingResp => Packet::PingResp,
                    Unexpected::Auth => Packet::Auth(Auth {
                        reason_code: ReasonCode::ReAuthenticate,
                        properties: PacketProperties::new(),
                    }),
                };
                self.send(*client, packet);
            }
            Op::Garbage { client, bytes } => {
                if let Some(conn) = self.last_conn(*client) {
                    let bytes = &bytes[..bytes.len().min(512)];
                    self.feed(conn, BytesMut::from(bytes));
                }
            }
            Op::Lost { client, loss } => {
                if let Some(conn) = self.last_conn(*client) {
                    let loss = match loss {
                        Loss::Network => ConnectionLoss::Network,
                        Loss::KeepAliveTimeout => ConnectionLoss::KeepAliveTimeout,
                        Loss::ProtocolViolation => {
                            ConnectionLoss::ProtocolViolation(ReasonCode::MalformedPacket)
                        }
                        Loss::ServerShutdown => ConnectionLoss::ServerShutdown,
                    };
                    self.lose(conn, loss);
                }
            }
            Op::Advance(advance) => {
                let by = match advance {
                    Advance::Millis(ms) => Duration::from_millis(u64::from(*ms)),
                    Advance::Secs(secs) => Duration::from_secs(u64::from(*secs)),
                    Advance::Hours(hours) => Duration::from_secs(3600 * u64::from(*hours)),
                };
                self.advance(by);
            }
            Op::InternalPublish(spec) => {
                if let Some(Packet::Publish(mut publish)) = self.publish_packet(0, spec) {
                    // Whatever the codec would refuse from a client is the
                    // caller's to avoid in process; give it a valid topic.
                    if !myriad_mqtt::topic::valid_topic_name(&publish.topic) {
                        publish.topic = "a/internal".into();
                    }
                    publish.properties.topic_alias = None;
                    let now = self.now();
                    self.broker.publish(now, publish);
                    self.settle();
                }
            }
            Op::Restart { graceful } => self.restart(*graceful),
        }
    }

    /// The client's latest connection, open or not.
    fn last_conn(&self, client: u8) -> Option<ConnId> {
        self.clients[usize::from(client) % CLIENTS]
    }

    fn protocol_of(&self, client: u8) -> ProtocolVersion {
        self.last_conn(client)
            .and_then(|conn| self.conns.get(&conn))
            .map_or(ProtocolVersion::V5, |c| c.protocol)
    }

    fn connect(&mut self, spec: &ConnectSpec) {
        let slot = usize::from(spec.client) % CLIENTS;
        if let Some(old) = self.clients[slot]
            && self.conns.get(&old).is_some_and(|c| c.open)
        {
            // The client dropped its old socket for a new one.
            self.lose(old, ConnectionLoss::Network);
        }
        let protocol = if spec.v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        let client_id: ByteString = match spec.client_id % 6 {
            4 => ByteString::new(),
            5 => self.assigned.last().cloned().unwrap_or_default(),
            n => format!("c{n}").into(),
        };
        let mut properties = PacketProperties::new();
        if spec.v5 {
            let props = &mut *properties;
            props.session_expiry_interval = spec.session_expiry.map(Expiry::secs);
            props.receive_maximum = spec.receive_maximum.map(|n| 1 + u16::from(n % 4));
            props.maximum_packet_size = spec.maximum_packet_size.map(|n| 16 + u32::from(n));
            props.topic_alias_maximum = spec.topic_alias_maximum.map(|n| u16::from(n % 4));
            if spec.authentication_method {
                props.authentication_method = Some("SCRAM-SHA-1".into());
            }
            properties.shrink();
        }
        let will = spec.will.as_ref().map(|w| {
            let mut properties = PacketProperties::new();
            if spec.v5 {
                properties.will_delay_interval = w.delay.map(Expiry::secs);
                properties.message_expiry_interval = w.message_expiry.map(u32::from);
                properties.shrink();
            }
            Will {
                topic: self.topic(&w.topic, false),
                payload: payload_of(w.payload),
                qos: qos_of(w.qos),
                retain: w.retain,
                properties,
            }
        });
        let connect = Connect {
            protocol,
            clean_start: spec.clean_start,
            keep_alive: u16::from(spec.keep_alive),
            client_id: client_id.clone(),
            will,
            username: None,
            password: None,
            properties,
        };
        let mut buf = BytesMut::new();
        if myriad_mqtt::encode(&Packet::Connect(Box::new(connect)), protocol, &mut buf).is_err() {
            return;
        }
        let max = self.config.max_packet_size as usize;
        // As the shell reads a CONNECT: the version given is not used for it.
        let connect = match myriad_mqtt::decode(&mut buf, ProtocolVersion::V5, max) {
            Ok(Some(Packet::Connect(connect))) => connect,
            // Refused by the shell: the core never hears of it.
            Ok(_) | Err(_) => return,
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let props = &connect.properties;
        self.conns.insert(
            conn,
            ConnState {
                protocol,
                open: true,
                client_id: (!connect.client_id.is_empty()).then(|| connect.client_id.clone()),
                max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
                receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
                topic_alias_maximum: props.topic_alias_maximum.unwrap_or(0),
                aliases: BTreeMap::new(),
                outbound: BTreeMap::new(),
                received: BTreeSet::new(),
                owed: VecDeque::new(),
            },
        );
        self.clients[slot] = Some(conn);
        let now = self.now();
        let accepted = self.broker.handle_connect(now, conn, *connect);
        self.settle();
        let open = self.conns.get(&conn).is_some_and(|c| c.open);
        assert_eq!(
            accepted, open,
            "handle_connect returned {accepted}, and the connection is open: {open}"
        );
    }

    /// A topic name (`filter`: a filter) from `spec`. Empty levels of
    /// `Levels` make the topic `a`; 1 level in 16 is invalid everywhere, 1 in
    /// 8 of a filter's levels is a wildcard, and 1 in 32 of a name's (invalid).
    fn topic(&self, spec: &TopicSpec, filter: bool) -> ByteString {
        let level = |byte: u8| -> &'static str {
            let byte = usize::from(byte);
            match byte % 16 {
                15 => INVALID[byte / 16 % INVALID.len()],
                13 | 14 if filter || byte % 64 >= 60 => WILDCARDS[byte % 2],
                _ => LEVELS[byte % LEVELS.len()],
            }
        };
        match spec {
            TopicSpec::Levels(levels) if levels.is_empty() => "a".into(),
            TopicSpec::Levels(levels) => (levels.iter().take(6))
                .map(|&byte| level(byte))
                .collect::<Vec<_>>()
                .join("/")
                .into(),
            TopicSpec::Deep { levels, last } => {
                let levels = usize::from(*levels) % (self.options.max_deep_levels + 1);
                let mut topic = "/".repeat(levels);
                topic.push_str(level(*last));
                topic.into()
            }
        }
    }

    fn filter(&self, spec: &FilterSpec) -> ByteString {
        let topic = self.topic(&spec.topic, true);
        match spec.shared {
            None => topic,
            Some(3) => format!("$share//{topic}").into(),
            Some(group) => format!("$share/g{}/{topic}", group % 3).into(),
        }
    }

    fn publish_packet(&self, client: u8, spec: &PublishSpec) -> Option<Packet> {
        let qos = qos_of(spec.qos);
        let v5 = self.protocol_of(client).is_v5();
        let mut publish = Publish {
            dup: spec.dup && qos != QoS::AtMostOnce,
            qos,
            retain: spec.retain,
            topic: self.topic(&spec.topic, false),
            packet_id: if qos == QoS::AtMostOnce {
                0
            } else {
                packet_id_of(spec.packet_id)
            },
            payload: payload_of(spec.payload),
            properties: PacketProperties::new(),
        };
        if v5 {
            if let Some(alias) = spec.alias {
                publish.properties.topic_alias = Some(u16::from(alias % 6));
                if spec.alias_only {
                    publish.topic = ByteString::new();
                }
            }
            publish.properties.message_expiry_interval = spec.message_expiry.map(u32::from);
            if spec.properties {
                let props = &mut *publish.properties;
                props.user_properties.push(("k".into(), "v".into()));
                props.response_topic = Some("reply/to".into());
                props.correlation_data = Some(Bytes::from_static(b"id"));
                props.content_type = Some("text/plain".into());
                props.payload_format_indicator = Some(false);
            }
            publish.properties.shrink();
        }
        Some(Packet::Publish(publish))
    }

    fn ack(&mut self, client: u8, ack: AckSpec) {
        let Some(conn) = self.last_conn(client) else {
            return;
        };
        let v5 = self.conns.get(&conn).is_some_and(|c| c.protocol.is_v5());
        let (kind, packet_id, error) = match ack {
            AckSpec::Right(index) => {
                let Some(state) = self.conns.get(&conn) else {
                    return;
                };
                let mut due: Vec<(AckKind, u16)> = (state.outbound.iter())
                    .map(|(&id, flow)| match flow {
                        Flow::Published(QoS::ExactlyOnce) => (AckKind::PubRec, id),
                        Flow::Published(_) => (AckKind::PubAck, id),
                        Flow::Released => (AckKind::PubComp, id),
                    })
                    .collect();
                due.extend(state.received.iter().map(|&id| (AckKind::PubRel, id)));
                if due.is_empty() {
                    return;
                }
                let (kind, id) = due[usize::from(index) % due.len()];
                (kind, id, false)
            }
            AckSpec::Wrong {
                kind,
                packet_id,
                error,
            } => (kind, packet_id, error && v5),
        };
        let mut ack = PublishAck::success(packet_id);
        if error {
            ack.reason_code = ReasonCode::UnspecifiedError;
        }
        let packet = match kind {
            AckKind::PubAck => Packet::PubAck(ack),
            AckKind::PubRec => Packet::PubRec(ack),
            AckKind::PubRel => Packet::PubRel(ack),
            AckKind::PubComp => Packet::PubComp(ack),
        };
        self.send(client, packet);
    }

    /// Sends `packet` from `client` on its latest connection, through the codec.
    fn send(&mut self, client: u8, packet: Packet) {
        let Some(conn) = self.last_conn(client) else {
            return;
        };
        let Some(protocol) = self.conns.get(&conn).map(|c| c.protocol) else {
            return;
        };
        let mut buf = BytesMut::new();
        if myriad_mqtt::encode(&packet, protocol, &mut buf).is_err() {
            return;
        }
        self.feed(conn, buf);
    }

    /// Decodes `buf` as the shell does and hands each packet to the core; a
    /// decoding error ends the connection.
    fn feed(&mut self, conn: ConnId, mut buf: BytesMut) {
        let Some(protocol) = self.conns.get(&conn).map(|c| c.protocol) else {
            return;
        };
        let max = self.config.max_packet_size as usize;
        loop {
            match myriad_mqtt::decode(&mut buf, protocol, max) {
                Ok(Some(packet)) => {
                    self.client_sent(conn, &packet);
                    let now = self.now();
                    self.broker.handle_packet(now, conn, packet);
                    self.settle();
                }
                Ok(None) => return,
                Err(error) => {
                    self.lose(conn, ConnectionLoss::ProtocolViolation(error.reason_code()));
                    return;
                }
            }
        }
    }

    /// What a packet from a client does to the flows it answers, and the
    /// answer it is owed.
    fn client_sent(&mut self, conn: ConnId, packet: &Packet) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        let owed = match packet {
            Packet::Subscribe(s) => Some((PacketType::SubAck, s.packet_id, s.filters.len())),
            Packet::Unsubscribe(u) => Some((PacketType::UnsubAck, u.packet_id, u.filters.len())),
            Packet::PingReq => Some((PacketType::PingResp, 0, 0)),
            Packet::PubRel(rel) => Some((PacketType::PubComp, rel.packet_id, 0)),
            _ => None,
        };
        if state.open {
            state.owed.extend(owed);
        }
        // The flow this packet ends on the client's side, if any.
        let (packet_id, ends) = match packet {
            Packet::PubAck(ack) => (ack.packet_id, Flow::Published(QoS::AtLeastOnce)),
            Packet::PubRec(rec) if rec.reason_code.is_error() => {
                (rec.packet_id, Flow::Published(QoS::ExactlyOnce))
            }
            Packet::PubComp(comp) => (comp.packet_id, Flow::Released),
            Packet::PubRel(rel) => {
                state.received.remove(&rel.packet_id);
                return;
            }
            _ => return,
        };
        if state.outbound.get(&packet_id) == Some(&ends) {
            state.outbound.remove(&packet_id);
        }
    }

    fn lose(&mut self, conn: ConnId, loss: ConnectionLoss) {
        let now = self.now();
        self.broker.handle_connection_lost(now, conn, loss);
        if let Some(state) = self.conns.get_mut(&conn) {
            state.open = false;
            state.owed.clear();
        }
        self.settle();
    }

    fn advance(&mut self, by: Duration) {
        let target = self.base + self.offset + by;
        for _ in 0..MAX_TIMEOUTS_PER_ADVANCE {
            let Some(due) = self.broker.next_timeout() else {
                break;
            };
            if due > target {
                break;
            }
            let now = due.max(self.now());
            self.offset = now - self.base;
            self.broker.handle_timeout(now);
            self.settle();
            if let Some(next) = self.broker.next_timeout() {
                assert!(
                    next > now,
                    "next_timeout() is not after the handle_timeout that just ran: \
                     the shell would spin ({:?} <= {:?})",
                    next - self.base,
                    self.offset
                );
            }
        }
        if let Some(due) = self.broker.next_timeout() {
            assert!(
                due > target,
                "{MAX_TIMEOUTS_PER_ADVANCE} timeouts in one advance of {by:?}"
            );
        }
        self.offset = target - self.base;
    }

    fn restart(&mut self, graceful: bool) {
        let now = self.now();
        if graceful {
            let open: Vec<ConnId> = (self.conns.iter())
                .filter(|(_, c)| c.open)
                .map(|(&id, _)| id)
                .collect();
            for conn in open {
                self.lose(conn, ConnectionLoss::ServerShutdown);
            }
        }
        let snapshot = match self.store.load() {
            Ok(snapshot) => snapshot,
            Err(error) => panic!("the memory store failed to load: {error}"),
        };
        self.broker = Broker::restore(self.config.clone(), snapshot, now, self.unix_now());
        for state in self.conns.values_mut() {
            state.open = false;
            state.owed.clear();
        }
        self.stats = BrokerStats::default();
        self.settle();
    }

    /// Takes the broker's outputs and changes and checks every invariant.
    fn settle(&mut self) {
        while let Some(output) = self.broker.poll_output() {
            self.check_output(output);
        }
        let changes = self.broker.take_changes();
        if !changes.is_empty()
            && let Err(error) = self.store.commit(&changes)
        {
            panic!("the store refused a batch the broker recorded: {error}\n{changes:#?}");
        }
        if let Err(error) = self.broker.check_consistency() {
            panic!("inconsistent broker: {error}");
        }
        let open: Vec<&ConnState> = self.conns.values().filter(|c| c.open).collect();
        assert_eq!(
            self.broker.connection_count(),
            open.len(),
            "the broker's connection count differs from the connections open"
        );
        for state in open {
            assert!(
                state.owed.is_empty(),
                "the server did not answer {:?}",
                state.owed
            );
            if let Some(client_id) = &state.client_id {
                assert_eq!(
                    self.broker.session_state(client_id),
                    Some(true),
                    "the session of open connection {client_id:?} is not connected"
                );
            }
        }
        let stats = self.broker.stats();
        assert!(
            monotonic(&self.stats, &stats),
            "a counter went down: {:?} -> {stats:?}",
            self.stats
        );
        self.stats = stats;
        let stored = match self.store.load() {
            Ok(snapshot) => describe(&snapshot),
            Err(error) => panic!("the memory store failed to load: {error}"),
        };
        let expected = describe(&self.broker.durable_state());
        if stored != expected {
            let missing: Vec<_> = expected.difference(&stored).collect();
            let extra: Vec<_> = stored.difference(&expected).collect();
            panic!(
                "the store differs from the broker's durable state\n\
                 in the broker, not in the store: {missing:#?}\n\
                 in the store, not in the broker: {extra:#?}"
            );
        }
    }

    fn check_output(&mut self, output: Output) {
        if self.options.trace {
            eprintln!("  at {:?}: {}", self.offset, brief(&output));
        }
        match output {
            Output::Send(conn, packet) => {
                let Some(state) = self.conns.get_mut(&conn) else {
                    panic!("a packet for connection {conn}, never opened: {packet:?}");
                };
                assert!(
                    state.open,
                    "a packet for connection {conn}, already closed: {packet:?}"
                );
                let mut buf = BytesMut::new();
                if let Err(error) = myriad_mqtt::encode(&packet, state.protocol, &mut buf) {
                    panic!("the server sent a packet that does not encode ({error}): {packet:?}");
                }
                let answer = match &packet {
                    Packet::SubAck(a) => {
                        Some((PacketType::SubAck, a.packet_id, a.reason_codes.len()))
                    }
                    Packet::UnsubAck(a) => {
                        Some((PacketType::UnsubAck, a.packet_id, a.reason_codes.len()))
                    }
                    Packet::PingResp => Some((PacketType::PingResp, 0, 0)),
                    Packet::PubComp(c) => Some((PacketType::PubComp, c.packet_id, 0)),
                    _ => None,
                };
                if let Some(answer) = answer {
                    let owed = state.owed.pop_front();
                    assert_eq!(
                        owed,
                        Some(answer),
                        "the server answered {answer:?} where it owed {owed:?}"
                    );
                }
                match packet {
                    Packet::Publish(publish) => check_publish(state, &publish, buf.len()),
                    Packet::PubRel(rel) => {
                        if let Some(flow) = state.outbound.get_mut(&rel.packet_id) {
                            *flow = Flow::Released;
                        }
                    }
                    Packet::PubRec(rec) if !rec.reason_code.is_error() => {
                        state.received.insert(rec.packet_id);
                    }
                    Packet::ConnAck(connack) => {
                        if let Some(id) = &connack.properties.assigned_client_identifier {
                            state.client_id = Some(id.clone());
                            self.assigned.push(id.clone());
                        }
                    }
                    _ => {}
                }
            }
            Output::Close(conn) => {
                let Some(state) = self.conns.get_mut(&conn) else {
                    panic!("close of connection {conn}, never opened");
                };
                state.open = false;
                state.owed.clear();
            }
            Output::Presence(_) | Output::Delivered(_) => {}
        }
    }
}

/// Checks a PUBLISH the server sends against what the client allowed, and
/// opens its flow.
fn check_publish(state: &mut ConnState, publish: &Publish, len: usize) {
    assert!(
        len <= state.max_packet_size as usize,
        "a PUBLISH of {len} bytes for a client accepting {}",
        state.max_packet_size
    );
    if let Some(alias) = publish.properties.topic_alias {
        assert!(
            state.protocol.is_v5() && alias >= 1 && alias <= state.topic_alias_maximum,
            "topic alias {alias} for a client allowing {}",
            state.topic_alias_maximum
        );
        if publish.topic.is_empty() {
            assert!(
                state.aliases.contains_key(&alias),
                "topic alias {alias} used before it was set"
            );
        } else {
            state.aliases.insert(alias, publish.topic.clone());
        }
    } else {
        assert!(!publish.topic.is_empty(), "a PUBLISH without a topic");
    }
    if publish.qos == QoS::AtMostOnce {
        return;
    }
    let id = publish.packet_id;
    assert!(
        publish.dup || !state.outbound.contains_key(&id),
        "packet id {id} reused while its flow is open"
    );
    state.outbound.insert(id, Flow::Published(publish.qos));
    // Known and left for now: a session resumed with a smaller Receive
    // Maximum gets every unacknowledged message again at once (DUP), past
    // the new window (MQTT-3.3.4-9); only new sends are held to it.
    assert!(
        publish.dup || state.outbound.len() <= usize::from(state.receive_maximum),
        "{} QoS 1/2 flows open for a client with Receive Maximum {}",
        state.outbound.len(),
        state.receive_maximum
    );
}

fn monotonic(before: &BrokerStats, after: &BrokerStats) -> bool {
    let pairs = [
        (before.messages_received, after.messages_received),
        (before.messages_sent, after.messages_sent),
        (before.messages_dropped, after.messages_dropped),
        (before.messages_too_large, after.messages_too_large),
        (before.messages_expired, after.messages_expired),
        (before.publishes_denied, after.publishes_denied),
        (before.subscriptions_denied, after.subscriptions_denied),
        (before.publishes_held, after.publishes_held),
    ];
    pairs.iter().all(|(b, a)| a >= b)
}

/// A store snapshot as a set of lines, without time stamps or order, for
/// comparing the store with [`Broker::durable_state`]. Retained messages
/// with an expiry are left out: an expired one is dropped from memory when
/// met, and from the store at the next start.
fn describe(snapshot: &Snapshot) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for session in &snapshot.sessions {
        let id = &session.record.client_id;
        lines.insert(format!(
            "session {id} expiry {}",
            session.record.expiry_interval
        ));
        for sub in &session.subscriptions {
            lines.insert(format!(
                "subscription {id} {} {:?} {:?}",
                short(&sub.filter),
                sub.options,
                sub.id
            ));
        }
        for (seq, record) in &session.outbound {
            lines.insert(format!(
                "outbound {id} #{seq} {:?} {:?} retain={} ids={:?} {}",
                record.state,
                record.qos,
                record.retain,
                record.subscription_ids,
                record.message.as_ref().map_or_else(String::new, message),
            ));
        }
        for packet_id in &session.inbound_qos2 {
            lines.insert(format!("inbound {id} {packet_id}"));
        }
        if let Some((_, will)) = &session.will {
            lines.insert(format!("will {id} {}", message(will)));
        }
    }
    for retained in &snapshot.retained {
        if retained.expires_at.is_none() {
            lines.insert(format!("retained {}", message(retained)));
        }
    }
    lines
}

fn message(record: &MessageRecord) -> String {
    format!(
        "{} {:?} retain={} payload={}B props={:?} expires={}",
        short(&record.topic),
        record.qos,
        record.retain,
        record.payload.len(),
        record.properties,
        record.expires_at.is_some()
    )
}

/// A topic shortened for messages (deep ones are long), still telling
/// topics apart by length and ending.
fn short(topic: &str) -> String {
    if topic.len() <= 64 {
        return topic.to_owned();
    }
    let tail: String = topic
        .chars()
        .rev()
        .take(16)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("<{} bytes ...{tail}>", topic.len())
}

fn qos_of(n: u8) -> QoS {
    match n % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn packet_id_of(n: u8) -> u16 {
    1 + u16::from(n % 8)
}

fn payload_of(payload: Payload) -> Bytes {
    let len = match payload {
        Payload::Empty => 0,
        Payload::Small(n) => usize::from(n),
        Payload::Large(n) => usize::from(n),
    };
    Bytes::from(vec![b'p'; len])
}

/// One line about an output, payloads and empty properties left out.
fn brief(output: &Output) -> String {
    match output {
        Output::Send(conn, Packet::Publish(p)) => format!(
            "conn {conn} <- PUBLISH {} qos={:?} id={} dup={} retain={} {}B alias={:?}",
            short(&p.topic),
            p.qos,
            p.packet_id,
            p.dup,
            p.retain,
            p.payload.len(),
            p.properties.topic_alias
        ),
        Output::Send(conn, Packet::SubAck(a)) => {
            format!("conn {conn} <- SUBACK {} {:?}", a.packet_id, a.reason_codes)
        }
        Output::Send(conn, Packet::UnsubAck(a)) => {
            format!(
                "conn {conn} <- UNSUBACK {} {:?}",
                a.packet_id, a.reason_codes
            )
        }
        Output::Send(conn, Packet::ConnAck(a)) => format!(
            "conn {conn} <- CONNACK {:?} present={} assigned={:?}",
            a.reason_code, a.session_present, a.properties.assigned_client_identifier
        ),
        Output::Send(conn, Packet::PubAck(a)) => {
            format!("conn {conn} <- PUBACK {} {:?}", a.packet_id, a.reason_code)
        }
        Output::Send(conn, Packet::PubRec(a)) => {
            format!("conn {conn} <- PUBREC {} {:?}", a.packet_id, a.reason_code)
        }
        Output::Send(conn, Packet::PubRel(a)) => {
            format!("conn {conn} <- PUBREL {} {:?}", a.packet_id, a.reason_code)
        }
        Output::Send(conn, Packet::PubComp(a)) => {
            format!("conn {conn} <- PUBCOMP {} {:?}", a.packet_id, a.reason_code)
        }
        Output::Send(conn, Packet::Disconnect(d)) => {
            format!("conn {conn} <- DISCONNECT {:?}", d.reason_code)
        }
        Output::Send(conn, packet) => format!("conn {conn} <- {:?}", packet.packet_type()),
        other => format!("{other:?}"),
    }
}
