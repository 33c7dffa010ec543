//! The sans-IO broker core.
//!
//! [`Broker`] holds every session, subscription and retained message and
//! runs the MQTT state machines. It does no I/O and reads no clock: the shell
//! feeds it events with the current time (`handle_*`) and drains what it must
//! send from [`Broker::poll_output`], like quinn-proto's `Connection`.

pub mod activity;
mod audit;
mod backpressure;
pub mod connect;
pub mod console;
mod deep_drop;
mod detach;
pub mod evict;
mod keepalive;
mod limits;
pub mod message;
pub mod observe;
pub mod persist;
mod publish;
pub mod receipts;
pub mod retained;
pub mod session;
mod sessions;
pub mod small_map;
mod subscribe;
mod time;
pub mod tree;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use myriad_mqtt::{ByteString, Disconnect, Packet, ProtocolVersion, ReasonCode, Will};

use crate::config::BrokerConfig;
use crate::hooks::{Acl, OfflineReason, Presence};
use retained::RetainedStore;
use sessions::Sessions;
use time::Ticks;
use tree::SubscriptionTree;

/// Identifies one network connection, chosen by the shell.
pub type ConnId = u64;
/// Identifies one session inside the broker.
pub type SessionId = u64;

/// Something the shell must do for the broker.
///
/// Outputs are drained at once; boxing the packet would cost an allocation each.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Output {
    /// Write this packet to the connection.
    Send(ConnId, Packet),
    /// Close the connection after writing what was queued before this.
    Close(ConnId),
    /// A session went online or offline (only when enabled with
    /// [`Broker::set_presence_events`]).
    Presence(Presence),
    /// A client acknowledged a message under the receipt prefix (only when
    /// enabled with [`Broker::set_delivery_receipts`]).
    Delivered(receipts::DeliveryReceipt),
}

/// Why a connection ended, as the shell saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionLoss {
    /// The peer closed the socket or it failed.
    Network,
    /// Nothing was received for 1.5 times the keep alive.
    KeepAliveTimeout,
    /// The peer sent bytes that did not decode; the shell already answered.
    ProtocolViolation(ReasonCode),
    /// The server is shutting down.
    ServerShutdown,
}

/// Counters the broker keeps about itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BrokerStats {
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH packets handed to the shell for clients.
    pub messages_sent: u64,
    /// Messages dropped because a session's queue was full.
    pub messages_dropped: u64,
    /// Messages dropped because they exceeded a client's Maximum Packet Size.
    pub messages_too_large: u64,
    /// Messages that expired before delivery.
    pub messages_expired: u64,
    /// PUBLISH packets (and wills) refused by a connection's ACL.
    pub publishes_denied: u64,
    /// Subscriptions refused by a connection's ACL.
    pub subscriptions_denied: u64,
    /// QoS 1 PUBLISH packets held unacknowledged while a subscriber's queue was full.
    pub publishes_held: u64,
}

/// What the broker knows about one live connection. Held by the session it
/// is attached to (boxed: offline sessions do without), found by id through
/// the sessions' connection index. Kept small: see the test
/// `idle_session_stays_small`.
#[derive(Debug)]
struct Connection {
    /// The shell's id of the connection.
    id: ConnId,
    /// When the last packet arrived.
    last_seen: Ticks,
    /// What the connection may do, as its authenticator decided (`None`: anything).
    acl: Option<Arc<dyn Acl>>,
    will: Option<Box<Will>>,
    /// Topic aliases in both directions (5.0), allocated on first use.
    aliases: Option<Box<TopicAliases>>,
    /// The client's Maximum Packet Size.
    max_packet_size: u32,
    /// Which of the connection's entries in [`Broker::keep_alive`] is live.
    keep_alive_check: keepalive::CheckMark,
    /// The client's Receive Maximum: our outbound window.
    receive_maximum: u16,
    /// How many topic aliases we may assign: the client's Topic Alias
    /// Maximum, at most `mqtt.max_outbound_aliases`.
    topic_alias_maximum: u16,
    /// Keep alive in force, in seconds (0: none).
    keep_alive: u16,
    protocol: ProtocolVersion,
    /// [`Connection::EXPIRY_WAS_ZERO`] and [`Connection::CLEAN_START`]
    /// (one byte: the struct is full).
    flags: u8,
}

impl Connection {
    /// Session Expiry Interval given in CONNECT was 0 (5.0 forbids raising it at DISCONNECT).
    const EXPIRY_WAS_ZERO: u8 = 1;
    /// The CONNECT's Clean Start (3.1.1: Clean Session) flag.
    const CLEAN_START: u8 = 2;

    /// The flags of a CONNECT.
    fn flags(expiry_was_zero: bool, clean_start: bool) -> u8 {
        (if expiry_was_zero {
            Self::EXPIRY_WAS_ZERO
        } else {
            0
        }) | (if clean_start { Self::CLEAN_START } else { 0 })
    }

    /// Whether the Session Expiry Interval given in CONNECT was 0.
    fn connect_expiry_was_zero(&self) -> bool {
        self.flags & Self::EXPIRY_WAS_ZERO != 0
    }

    /// Whether CONNECT had Clean Start (Clean Session) set.
    fn clean_start(&self) -> bool {
        self.flags & Self::CLEAN_START != 0
    }

    /// Whether the connection's ACL withholds topics at delivery
    /// ([`Acl::filters_deliveries`]). Not a field: `Connection` is full.
    fn filters_deliveries(&self) -> bool {
        self.acl.as_ref().is_some_and(|a| a.filters_deliveries())
    }

    /// The connection's topic aliases, allocating them on first use.
    fn aliases_mut(&mut self) -> &mut TopicAliases {
        self.aliases.get_or_insert_with(Box::default)
    }
}

/// One connection's topic aliases. Kept out of line: most clients use none,
/// and two empty maps inline would cost every connection 96 bytes.
#[derive(Debug, Default)]
struct TopicAliases {
    /// Aliases the client set, by alias.
    inbound: HashMap<u16, ByteString>,
    /// Aliases the broker assigned, by topic.
    outbound: HashMap<ByteString, u16>,
}

/// The broker state machine. See the module documentation.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    /// Every session, with the indexes by client id and by connection.
    sessions: Sessions,
    tree: SubscriptionTree,
    retained: RetainedStore,
    /// Delayed wills by due time.
    wills_due: BTreeSet<(Instant, SessionId)>,
    pending_wills: HashMap<SessionId, Box<Will>>,
    /// Offline sessions by expiry time.
    expiries: BTreeSet<(Ticks, SessionId)>,
    /// Keep alive checks of the connections.
    keep_alive: keepalive::KeepAliveChecks,
    /// What compact moments ([`time::Ticks`]) count from.
    epoch: time::Epoch,
    outputs: VecDeque<Output>,
    next_assigned_id: u64,
    stats: BrokerStats,
    /// When the next queued message expires (time to sweep queues).
    next_sweep: Option<Instant>,
    /// Whether changes are recorded for a store.
    recording: bool,
    changes: Vec<myriad_store::Change>,
    clock: persist::Clock,
    /// Whether [`Output::Presence`] events are produced.
    presence_events: bool,
    /// Traffic counters and the trace-context carry.
    observe: observe::Observe,
    /// QoS 1 publications held back while a subscriber's queue is full.
    backpressure: backpressure::Backpressure,
    /// Connections whose ACL withholds topics at delivery (when 0, routing
    /// skips the check).
    filtering_connections: usize,
    /// Topic prefix of messages whose acknowledgement is reported
    /// ([`Output::Delivered`]); `None`: no receipts.
    receipt_prefix: Option<String>,
}

impl Broker {
    /// A broker with no sessions that records nothing for a store.
    pub fn new(config: BrokerConfig) -> Broker {
        Broker {
            config,
            sessions: Sessions::new(),
            tree: SubscriptionTree::new(),
            retained: RetainedStore::new(),
            wills_due: BTreeSet::new(),
            pending_wills: HashMap::new(),
            expiries: BTreeSet::new(),
            keep_alive: keepalive::KeepAliveChecks::default(),
            epoch: time::Epoch::new(Instant::now()),
            outputs: VecDeque::new(),
            next_assigned_id: 1,
            stats: BrokerStats::default(),
            next_sweep: None,
            recording: false,
            changes: Vec::new(),
            clock: persist::Clock::new(Instant::now(), persist::unix_now()),
            presence_events: false,
            observe: observe::Observe::default(),
            backpressure: backpressure::Backpressure::default(),
            receipt_prefix: None,
            filtering_connections: 0,
        }
    }

    /// Turns [`Output::Presence`] events on or off (off by default).
    pub fn set_presence_events(&mut self, enabled: bool) {
        self.presence_events = enabled;
    }

    /// Restricts what the client on `conn` may publish and subscribe to
    /// (call right after [`Broker::handle_connect`] accepted it).
    pub fn set_acl(&mut self, conn: ConnId, acl: Arc<dyn Acl>) {
        if let Some(connection) = self.connection_mut(conn) {
            let before = connection.filters_deliveries();
            connection.acl = Some(acl);
            let after = connection.filters_deliveries();
            self.filtering_connections =
                self.filtering_connections - usize::from(before) + usize::from(after);
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The next thing the shell must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> BrokerStats {
        self.stats
    }

    /// Number of sessions (connected or not).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of attached connections.
    pub fn connection_count(&self) -> usize {
        self.sessions.connection_count()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// Number of subscriptions across all sessions.
    pub fn subscription_count(&self) -> usize {
        self.tree.len()
    }

    /// Whether a session exists for `client_id`, and whether it is connected.
    pub fn session_state(&self, client_id: &str) -> Option<bool> {
        let id = self.sessions.id_of(client_id)?;
        self.sessions.get(id).map(|s| s.connection.is_some())
    }

    /// When [`Broker::handle_timeout`] must next be called, if ever.
    pub fn next_timeout(&self) -> Option<Instant> {
        let will = self.wills_due.first().map(|(at, _)| *at);
        let expiry = self.expiries.first().map(|(at, _)| self.epoch.instant(*at));
        let keep_alive = self.next_keep_alive_check();
        let held = self.next_hold_deadline();
        [will, expiry, keep_alive, self.next_sweep, held]
            .into_iter()
            .flatten()
            .min()
    }

    /// Closes connections silent past their keep alive, publishes delayed
    /// wills and ends expired sessions that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.check_keep_alives(now);
        self.release_overdue(now);
        while let Some(&(at, session)) = self.wills_due.first() {
            if at > now {
                break;
            }
            self.wills_due.remove(&(at, session));
            if let Some(s) = self.sessions.get_mut(session) {
                s.set_will_due(None);
            }
            if let Some(will) = self.pending_wills.remove(&session) {
                self.record_will(session, None);
                self.publish_will(now, session, *will);
            }
        }
        let ticks = self.epoch.ticks(now);
        while let Some(&(at, session)) = self.expiries.first() {
            if at > ticks {
                break;
            }
            self.expiries.remove(&(at, session));
            self.end_session(now, session);
        }
        if self.next_sweep.is_some_and(|at| at <= now) {
            self.sweep_expired_messages(now);
        }
    }

    /// Removes expired messages from every session's queue, and sets the next
    /// sweep to the earliest expiry still queued.
    fn sweep_expired_messages(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        let mut removed: Vec<(SessionId, u64)> = Vec::new();
        for session in self.sessions.values_mut() {
            if session.outbound().queue().is_empty() {
                continue;
            }
            for seq in session.outbound_mut().remove_expired(now) {
                removed.push((session.id, seq));
            }
            let earliest = session
                .outbound()
                .queue()
                .iter()
                .filter_map(|d| d.message.expires_at)
                .min();
            next = match (next, earliest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.stats.messages_expired += removed.len() as u64;
        for (session, seq) in removed {
            self.record_outbound_done(session, seq);
        }
        self.next_sweep = next;
    }

    /// The live connection `conn`.
    fn connection(&self, conn: ConnId) -> Option<&Connection> {
        self.sessions.attached(conn)?.connection.as_deref()
    }

    /// The live connection `conn`, mutably.
    fn connection_mut(&mut self, conn: ConnId) -> Option<&mut Connection> {
        self.sessions.attached_mut(conn)?.connection.as_deref_mut()
    }

    fn send(&mut self, conn: ConnId, packet: Packet) {
        self.outputs.push_back(Output::Send(conn, packet));
    }

    /// Closes `conn` because of `reason`: a 5.0 client first gets DISCONNECT.
    /// The session is detached as after a network loss (the will is published).
    fn disconnect_with(&mut self, now: Instant, conn: ConnId, reason: ReasonCode) {
        if let Some(c) = self.connection(conn)
            && c.protocol.is_v5()
        {
            self.send(conn, Packet::Disconnect(Disconnect::new(reason)));
        }
        self.outputs.push_back(Output::Close(conn));
        let offline = match reason {
            ReasonCode::ServerShuttingDown => OfflineReason::ServerShutdown,
            ReasonCode::KeepAliveTimeout => OfflineReason::KeepAliveTimeout,
            other => OfflineReason::ProtocolError(other),
        };
        self.detach(now, conn, true, offline);
    }
}

#[cfg(test)]
mod tests;
