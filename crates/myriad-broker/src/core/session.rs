//! Per-client session state: subscriptions, the outbound window and queue,
//! and inbound QoS 2 packet identifiers. Pure data; the broker drives it.

use std::collections::VecDeque;
use std::time::Instant;

use myriad_mqtt::{ByteString, PacketType, QoS};

use super::message::Delivery;
use super::small_map::SmallMap;
use super::time::Ticks;
use super::tree::Subscription;
use super::{ConnId, Connection, SessionId};

/// Session expiry interval meaning "never expires" (MQTT 5.0: 0xFFFFFFFF).
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// What became of a delivery offered to a full queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOutcome {
    /// Queued without dropping anything.
    Queued,
    /// Queued after dropping these older messages (oldest first).
    DroppedOldest(Vec<Delivery>),
    /// Not queued, and nothing dropped: the queue is full of messages that
    /// outrank it, or it is larger than the whole byte limit.
    Rejected,
}

/// Where one outbound QoS 1/2 flow stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflightState {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// One outbound QoS 1/2 flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inflight {
    /// Packet identifier of the flow.
    pub packet_id: u16,
    /// The delivery's position in the session's outbound order.
    pub seq: u64,
    /// Its state.
    pub state: InflightState,
}

/// Client identifiers with this prefix belong to in-process clients of the
/// platform (pipelines' sources, the OTA, command and shadow services); a
/// network client claiming one is refused. Their sessions queue within
/// `internal_max_queued_messages` / `internal_max_queued_bytes`.
pub const RESERVED_CLIENT_ID_PREFIX: &str = "$myriad/";

/// Limits on a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most messages queued.
    pub max_messages: usize,
    /// The session's whole byte budget: queued, in-flight and
    /// handed-over-but-unwritten messages (their [`Message::weight`]s) and
    /// the bookkeeping of pending retained deliveries all count against it.
    ///
    /// [`Message::weight`]: super::message::Message::weight
    pub max_bytes: usize,
}

/// What one pending retained delivery costs a session's byte budget: the
/// entry itself (the message is the retained store's, shared).
pub const RETAINED_ENTRY_COST: usize = 64;

/// Messages on their way to one client, and what they cost its budget.
#[derive(Debug, Default)]
pub struct Outbound {
    next_packet_id: u16,
    next_seq: u64,
    /// Unacknowledged QoS 1/2 flows, oldest first. Changed only through
    /// [`Outbound`]'s methods, which keep `in_use` in step.
    inflight: VecDeque<Inflight>,
    /// The packet ids of `inflight` as a bitmap, kept while more than
    /// [`SCAN_LIMIT`] flows are in flight, so allocating an id does not scan
    /// a window of up to 65,535 flows.
    in_use: Option<Box<PacketIdBitmap>>,
    /// Messages waiting for the client to connect or for room in its window.
    /// Changed only through [`Outbound`]'s methods, which keep the counts below in step.
    queue: VecDeque<Delivery>,
    queued_bytes: usize,
    /// How many of `queue` are QoS 0 (a full queue of QoS 1 messages is then
    /// not scanned for one to drop).
    queued_qos0: usize,
    /// Weights of the QoS 1/2 messages in flight and not yet released.
    inflight_bytes: usize,
    /// Weights of the QoS 0 messages handed to the connection and not yet
    /// reported written, oldest first.
    unwritten: VecDeque<usize>,
    unwritten_bytes: usize,
    /// Retained messages a SUBSCRIBE asked for, sent as the client drains
    /// (never dropped for lack of room in the connection's outbox).
    retained: VecDeque<Delivery>,
}

/// In-flight windows up to this size are scanned to allocate a packet id.
const SCAN_LIMIT: usize = 32;

/// One bit per packet identifier (8 KiB).
#[derive(Debug)]
struct PacketIdBitmap([u64; 1024]);

impl PacketIdBitmap {
    fn of<'a>(ids: impl Iterator<Item = &'a Inflight>) -> Box<PacketIdBitmap> {
        let mut bitmap = Box::new(PacketIdBitmap([0; 1024]));
        for flow in ids {
            bitmap.set(flow.packet_id, true);
        }
        bitmap
    }

    fn set(&mut self, id: u16, used: bool) {
        let (word, bit) = (usize::from(id / 64), id % 64);
        if used {
            self.0[word] |= 1 << bit;
        } else {
            self.0[word] &= !(1 << bit);
        }
    }

    fn contains(&self, id: u16) -> bool {
        self.0[usize::from(id / 64)] & (1 << (id % 64)) != 0
    }
}

impl Outbound {
    /// Nothing in flight or queued.
    pub const EMPTY: Outbound = Outbound {
        next_packet_id: 0,
        next_seq: 0,
        inflight: VecDeque::new(),
        in_use: None,
        queue: VecDeque::new(),
        queued_bytes: 0,
        queued_qos0: 0,
        inflight_bytes: 0,
        unwritten: VecDeque::new(),
        unwritten_bytes: 0,
        retained: VecDeque::new(),
    };

    /// Whether nothing is in flight, queued, unwritten or pending.
    pub fn is_idle(&self) -> bool {
        self.inflight.is_empty()
            && self.queue.is_empty()
            && self.unwritten.is_empty()
            && self.retained.is_empty()
    }

    /// Bytes of the session's budget in use: queued, in flight, unwritten
    /// and pending retained deliveries (see [`QueueLimits::max_bytes`]).
    pub fn used_bytes(&self) -> usize {
        self.queued_bytes + self.held_outside_queue()
    }

    /// The part of [`Outbound::used_bytes`] that is not the queue.
    fn held_outside_queue(&self) -> usize {
        self.inflight_bytes
            + self.unwritten_bytes
            + self.retained.len().saturating_mul(RETAINED_ENTRY_COST)
    }

    /// Bytes of the messages in flight.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight_bytes
    }

    /// QoS 0 messages handed to the connection and not yet written.
    pub fn unwritten_count(&self) -> usize {
        self.unwritten.len()
    }

    /// Records a QoS 0 message of `weight` handed to the connection.
    pub fn record_unwritten(&mut self, weight: usize) {
        self.unwritten.push_back(weight);
        self.unwritten_bytes += weight;
    }

    /// The connection wrote the oldest `count` unwritten QoS 0 messages.
    pub fn written(&mut self, count: usize) {
        for _ in 0..count {
            match self.unwritten.pop_front() {
                Some(weight) => self.unwritten_bytes -= weight,
                None => break,
            }
        }
        if self.unwritten.is_empty() {
            self.unwritten = VecDeque::new();
        }
    }

    /// Forgets what the previous connection had not written (it is gone).
    pub fn connection_gone(&mut self) {
        self.unwritten = VecDeque::new();
        self.unwritten_bytes = 0;
    }

    /// Retained deliveries waiting for room.
    pub fn pending_retained(&self) -> usize {
        self.retained.len()
    }

    /// Adds a retained delivery to send once there is room; false (not
    /// added) when its entry does not fit the budget.
    pub fn add_retained(&mut self, delivery: Delivery, limits: QueueLimits) -> bool {
        if self.used_bytes() + RETAINED_ENTRY_COST > limits.max_bytes {
            return false;
        }
        self.retained.push_back(delivery);
        true
    }

    /// Takes the next pending retained delivery if it may be sent now: the
    /// queue is empty, and the window (QoS 1/2) or the unwritten QoS 0
    /// allowance (`max_unwritten`) has room.
    pub fn next_retained(&mut self, window: u16, max_unwritten: usize) -> Option<Delivery> {
        if !self.queue.is_empty() {
            return None;
        }
        let front = self.retained.front()?;
        let room = if front.qos == QoS::AtMostOnce {
            self.unwritten.len() < max_unwritten
        } else {
            self.inflight.len() < usize::from(window)
        };
        if !room {
            return None;
        }
        let delivery = self.retained.pop_front();
        if self.retained.is_empty() {
            self.retained = VecDeque::new();
        }
        delivery
    }

    /// Drops pending retained deliveries (the session went offline: a
    /// reconnecting client subscribes again, or gets the queue).
    pub fn clear_retained(&mut self) -> usize {
        let count = self.retained.len();
        self.retained = VecDeque::new();
        count
    }

    /// Unacknowledged QoS 1/2 flows, oldest first.
    pub fn inflight(&self) -> &VecDeque<Inflight> {
        &self.inflight
    }

    fn push_flow(&mut self, flow: Inflight) {
        let id = flow.packet_id;
        if let InflightState::Published(delivery) = &flow.state {
            self.inflight_bytes += delivery.message.weight();
        }
        self.inflight.push_back(flow);
        match &mut self.in_use {
            Some(bitmap) => bitmap.set(id, true),
            None if self.inflight.len() > SCAN_LIMIT => {
                self.in_use = Some(PacketIdBitmap::of(self.inflight.iter()));
            }
            None => {}
        }
    }

    fn remove_flow(&mut self, index: usize) {
        let Some(flow) = self.inflight.remove(index) else {
            return;
        };
        if let InflightState::Published(delivery) = &flow.state {
            self.inflight_bytes -= delivery.message.weight();
        }
        if let Some(bitmap) = &mut self.in_use {
            bitmap.set(flow.packet_id, false);
            if self.inflight.is_empty() {
                self.in_use = None;
            }
        }
    }

    /// Drops the flow using `packet_id`, if any (the message is given up).
    pub fn forget(&mut self, packet_id: u16) {
        if let Some(index) = self.position(packet_id) {
            self.remove_flow(index);
        }
    }

    /// Messages waiting for the client to connect or for room in its window.
    pub fn queue(&self) -> &VecDeque<Delivery> {
        &self.queue
    }

    /// Bytes of payload waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Whether the queue is at `limits` (the next message would push one out).
    pub fn is_full(&self, limits: QueueLimits) -> bool {
        self.queue.len() >= limits.max_messages || self.used_bytes() >= limits.max_bytes
    }

    /// Whether the queue is at most half of `limits`.
    pub fn is_half_empty(&self, limits: QueueLimits) -> bool {
        self.queue.len() <= limits.max_messages / 2 && self.used_bytes() <= limits.max_bytes / 2
    }

    /// Appends `delivery` to the queue, keeping it within `limits`: when full,
    /// the oldest QoS 0 message goes first, then the oldest message of any QoS
    /// (a QoS 0 newcomer is refused rather than push out a QoS 1/2 message).
    /// Nothing is dropped for a newcomer that would be refused anyway.
    pub fn enqueue(&mut self, mut delivery: Delivery, limits: QueueLimits) -> QueueOutcome {
        // What is in flight, unwritten or pending shares the budget: the
        // queue gets the rest.
        let limits = QueueLimits {
            max_bytes: limits.max_bytes.saturating_sub(self.held_outside_queue()),
            ..limits
        };
        let weight = delivery.message.weight();
        if weight > limits.max_bytes || limits.max_messages == 0 {
            // It could not be queued even alone.
            return QueueOutcome::Rejected;
        }
        let full = |queue: &Outbound| {
            queue.queue.len() >= limits.max_messages
                || queue.queued_bytes + weight > limits.max_bytes
        };
        if delivery.qos == QoS::AtMostOnce && full(self) {
            // Only QoS 0 messages may make room for it: enough of them?
            let (count, bytes) = (self.queue.iter())
                .filter(|d| d.qos == QoS::AtMostOnce)
                .fold((0, 0), |(n, b), d| (n + 1, b + d.message.weight()));
            if self.queue.len() - count >= limits.max_messages
                || self.queued_bytes - bytes + weight > limits.max_bytes
            {
                return QueueOutcome::Rejected;
            }
        }
        self.assign_seq(&mut delivery);
        let mut dropped = Vec::new();
        while full(self) && !self.queue.is_empty() {
            let victim = if self.queued_qos0 == 0 {
                0
            } else {
                (self.queue.iter())
                    .position(|d| d.qos == QoS::AtMostOnce)
                    .unwrap_or(0)
            };
            if let Some(victim) = self.queue.remove(victim) {
                self.queued_bytes -= victim.message.weight();
                if victim.qos == QoS::AtMostOnce {
                    self.queued_qos0 -= 1;
                }
                dropped.push(victim);
            }
        }
        self.push_queued(delivery);
        if dropped.is_empty() {
            QueueOutcome::Queued
        } else {
            QueueOutcome::DroppedOldest(dropped)
        }
    }

    fn push_queued(&mut self, delivery: Delivery) {
        self.queued_bytes += delivery.message.weight();
        if delivery.qos == QoS::AtMostOnce {
            self.queued_qos0 += 1;
        }
        self.queue.push_back(delivery);
    }

    /// Takes the next queued delivery that may be sent now: QoS 0 while
    /// fewer than `max_unwritten` QoS 0 messages wait to be written, QoS 1/2
    /// while fewer than `window` flows are in flight.
    pub fn next_sendable(&mut self, window: u16, max_unwritten: usize) -> Option<Delivery> {
        let front = self.queue.front()?;
        let room = if front.qos == QoS::AtMostOnce {
            self.unwritten.len() < max_unwritten
        } else {
            self.inflight.len() < usize::from(window)
        };
        if !room {
            return None;
        }
        let delivery = self.queue.pop_front()?;
        self.queued_bytes -= delivery.message.weight();
        if delivery.qos == QoS::AtMostOnce {
            self.queued_qos0 -= 1;
        }
        Some(delivery)
    }

    /// Whether a new QoS 1/2 delivery could be sent straight away.
    pub fn has_room(&self, window: u16) -> bool {
        self.queue.is_empty() && self.inflight.len() < usize::from(window)
    }

    /// Allocates a packet identifier not used by any in-flight flow.
    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                continue;
            }
            let candidate = self.next_packet_id;
            let used = match &self.in_use {
                Some(bitmap) => bitmap.contains(candidate),
                None => self.inflight.iter().any(|f| f.packet_id == candidate),
            };
            if !used {
                return candidate;
            }
        }
    }

    /// Gives `delivery` its place in the outbound order, if it has none yet.
    pub fn assign_seq(&mut self, delivery: &mut Delivery) {
        if delivery.seq == 0 {
            self.next_seq += 1;
            delivery.seq = self.next_seq;
        }
    }

    /// Continues numbering after `seq` (used when a session is restored).
    pub fn resume_seq_after(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// Records a QoS 1/2 PUBLISH as sent.
    pub fn record_sent(&mut self, packet_id: u16, mut delivery: Delivery) {
        self.assign_seq(&mut delivery);
        self.push_flow(Inflight {
            packet_id,
            seq: delivery.seq,
            state: InflightState::Published(delivery),
        });
    }

    /// Drops queued deliveries that have expired at `now`; returns their positions.
    pub fn remove_expired(&mut self, now: Instant) -> Vec<u64> {
        self.remove_queued_if(|d| d.message.is_expired(now))
    }

    /// Removes the queued deliveries `drop` picks; returns their sequence numbers.
    pub fn remove_queued_if(&mut self, mut drop: impl FnMut(&Delivery) -> bool) -> Vec<u64> {
        let mut removed = Vec::new();
        let mut bytes = 0;
        let mut qos0 = 0;
        self.queue.retain(|d| {
            let expired = drop(d);
            if expired {
                removed.push(d.seq);
                bytes += d.message.weight();
                qos0 += usize::from(d.qos == QoS::AtMostOnce);
            }
            !expired
        });
        self.queued_bytes -= bytes;
        self.queued_qos0 -= qos0;
        removed
    }

    /// Puts a restored queued delivery back at the end of the queue (no limits:
    /// it was within them when stored).
    pub fn restore_queued(&mut self, delivery: Delivery) {
        self.push_queued(delivery);
    }

    /// Puts a restored released QoS 2 flow back in flight.
    pub fn restore_released(&mut self, packet_id: u16, seq: u64) {
        self.push_flow(Inflight {
            packet_id,
            seq,
            state: InflightState::Released,
        });
    }

    /// The outbound position of the flow using `packet_id`.
    pub fn seq_of(&self, packet_id: u16) -> Option<u64> {
        self.position(packet_id)
            .map(|index| self.inflight[index].seq)
    }

    fn position(&self, packet_id: u16) -> Option<usize> {
        self.inflight.iter().position(|f| f.packet_id == packet_id)
    }

    /// Whether a flow uses `packet_id` and an acknowledgement of type
    /// `ack` (PUBACK, PUBREC or PUBCOMP) is the wrong one for it: PUBREC or
    /// PUBCOMP for a QoS 1 message, PUBACK for a QoS 2 one, PUBCOMP before
    /// PUBREC. Unknown identifiers are not wrong (a late duplicate).
    pub fn wrong_ack(&self, packet_id: u16, ack: PacketType) -> bool {
        let Some(index) = self.position(packet_id) else {
            return false;
        };
        match (&self.inflight[index].state, ack) {
            (InflightState::Published(d), PacketType::PubAck) => d.qos != QoS::AtLeastOnce,
            (InflightState::Published(d), PacketType::PubRec) => d.qos != QoS::ExactlyOnce,
            (InflightState::Published(_), PacketType::PubComp) => true,
            (InflightState::Released, PacketType::PubAck) => true,
            _ => false,
        }
    }

    /// Handles PUBACK: true if it closed a QoS 1 flow.
    pub fn acknowledge(&mut self, packet_id: u16) -> bool {
        match self.position(packet_id) {
            Some(index)
                if matches!(&self.inflight[index].state,
                    InflightState::Published(d) if d.qos == QoS::AtLeastOnce) =>
            {
                self.remove_flow(index);
                true
            }
            _ => false,
        }
    }

    /// Handles PUBREC. `Some(true)`: send PUBREL; `Some(false)`: the client
    /// refused the message (error code), the flow is over; `None`: unknown id.
    pub fn received(&mut self, packet_id: u16, refused: bool) -> Option<bool> {
        let index = self.position(packet_id)?;
        let flow = &mut self.inflight[index];
        match &flow.state {
            InflightState::Published(d) if d.qos == QoS::ExactlyOnce => {
                if refused {
                    self.remove_flow(index);
                    Some(false)
                } else {
                    self.inflight_bytes -= d.message.weight();
                    flow.state = InflightState::Released;
                    Some(true)
                }
            }
            // A repeated PUBREC for a flow already released: send PUBREL again.
            InflightState::Released => Some(true),
            InflightState::Published(_) => None,
        }
    }

    /// Handles PUBCOMP: true if it closed a QoS 2 flow.
    pub fn complete(&mut self, packet_id: u16) -> bool {
        match self.position(packet_id) {
            Some(index) if self.inflight[index].state == InflightState::Released => {
                self.remove_flow(index);
                true
            }
            _ => false,
        }
    }
}

/// One client's session, connected or not.
///
/// Kept small (see the test `idle_session_stays_small`): the attached
/// connection and everything only sessions with traffic in flight need live
/// out of line, allocated on first use.
#[derive(Debug)]
pub struct Session {
    /// Internal identifier.
    pub id: SessionId,
    /// The client identifier (also the key of the broker's client-id index).
    pub client_id: ByteString,
    /// Subscriptions by full filter (including any `$share/{group}/` prefix).
    pub subscriptions: SmallMap<ByteString, Subscription>,
    /// The connection currently attached, if any.
    pub(super) connection: Option<Box<Connection>>,
    /// Outbound flows and queue, inbound QoS 2 ids, delayed will; `None`
    /// while all of them are empty.
    flows: Option<Box<Flows>>,
    /// When the session expires while disconnected ([`Ticks::NEVER`]: it
    /// does not, or it is connected).
    expires_at: Ticks,
    /// Session Expiry Interval in seconds ([`NEVER_EXPIRES`] for never).
    pub expiry_interval: u32,
    /// Whether the store holds a record of this session.
    pub persisted: bool,
}

/// The parts of a session that idle sessions do without.
#[derive(Debug, Default)]
struct Flows {
    /// Outbound flows and queue.
    outbound: Outbound,
    /// Packet identifiers of inbound QoS 2 messages awaiting PUBREL.
    inbound_qos2: PacketIds,
    /// Messages dropped from the queue since the session began.
    dropped_messages: u64,
    /// When its delayed will is due, if one is pending.
    will_due: Option<Instant>,
}

impl Flows {
    /// Whether nothing is held (the box can go).
    fn is_idle(&self) -> bool {
        self.outbound.is_idle() && self.inbound_qos2.is_empty() && self.will_due.is_none()
    }
}

/// What a session without flows reads.
static NO_OUTBOUND: Outbound = Outbound::EMPTY;
static NO_PACKET_IDS: PacketIds = PacketIds(Vec::new());

/// A set of packet identifiers: a sorted vector, 24 bytes when empty (a hash
/// set is 48) and dense when not. It holds at most the server's Receive
/// Maximum entries, so inserting into the middle stays cheap.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PacketIds(Vec<u16>);

impl PacketIds {
    /// Whether `id` is in the set.
    pub fn contains(&self, id: u16) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    /// Adds `id`; returns false if it was there already.
    pub fn insert(&mut self, id: u16) -> bool {
        match self.0.binary_search(&id) {
            Ok(_) => false,
            Err(index) => {
                self.0.insert(index, id);
                true
            }
        }
    }

    /// Removes `id`; returns whether it was there.
    pub fn remove(&mut self, id: u16) -> bool {
        match self.0.binary_search(&id) {
            Ok(index) => {
                self.0.remove(index);
                if self.0.is_empty() {
                    // An idle session keeps no buffer.
                    self.0 = Vec::new();
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Number of identifiers held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The identifiers, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().copied()
    }
}

impl Extend<u16> for PacketIds {
    fn extend<I: IntoIterator<Item = u16>>(&mut self, ids: I) {
        for id in ids {
            self.insert(id);
        }
    }
}

impl Session {
    /// A fresh session.
    pub fn new(id: SessionId, client_id: ByteString, expiry_interval: u32) -> Session {
        Session {
            id,
            client_id,
            subscriptions: SmallMap::new(),
            connection: None,
            flows: None,
            expires_at: Ticks::NEVER,
            expiry_interval,
            persisted: false,
        }
    }

    /// The id of the connection currently attached, if any.
    pub fn conn(&self) -> Option<ConnId> {
        self.connection.as_ref().map(|c| c.id)
    }

    fn flows_mut(&mut self) -> &mut Flows {
        self.flows.get_or_insert_with(Box::default)
    }

    /// Outbound flows and queue.
    pub fn outbound(&self) -> &Outbound {
        self.flows.as_ref().map_or(&NO_OUTBOUND, |f| &f.outbound)
    }

    /// Outbound flows and queue, mutably (allocated on first use).
    pub fn outbound_mut(&mut self) -> &mut Outbound {
        &mut self.flows_mut().outbound
    }

    /// Packet identifiers of inbound QoS 2 messages awaiting PUBREL.
    pub fn inbound_qos2(&self) -> &PacketIds {
        self.flows
            .as_ref()
            .map_or(&NO_PACKET_IDS, |f| &f.inbound_qos2)
    }

    /// Inbound QoS 2 packet identifiers, mutably (allocated on first use).
    pub fn inbound_qos2_mut(&mut self) -> &mut PacketIds {
        &mut self.flows_mut().inbound_qos2
    }

    /// Counts a message dropped from the queue; returns the count so far.
    pub fn count_dropped(&mut self) -> u64 {
        let flows = self.flows_mut();
        flows.dropped_messages += 1;
        flows.dropped_messages
    }

    /// When its delayed will is due, if one is pending.
    pub fn will_due(&self) -> Option<Instant> {
        self.flows.as_ref().and_then(|f| f.will_due)
    }

    /// Sets or clears the delayed will's due time.
    pub fn set_will_due(&mut self, due: Option<Instant>) {
        match due {
            Some(_) => self.flows_mut().will_due = due,
            None => {
                if let Some(flows) = &mut self.flows {
                    flows.will_due = None;
                }
            }
        }
    }

    /// When the session expires while disconnected, if it is scheduled to.
    pub(super) fn expires_at(&self) -> Option<Ticks> {
        (self.expires_at != Ticks::NEVER).then_some(self.expires_at)
    }

    /// Schedules or clears the session's expiry.
    pub(super) fn set_expires_at(&mut self, at: Option<Ticks>) {
        self.expires_at = at.unwrap_or(Ticks::NEVER);
    }

    /// Its connection went (or a new one came): what the old one had not
    /// written is gone with it.
    pub fn connection_gone(&mut self) {
        if let Some(flows) = &mut self.flows {
            flows.outbound.connection_gone();
        }
    }

    /// Frees the out-of-line flows if nothing is in them. Numbering of
    /// outbound messages starts over, which is safe: no record of an earlier
    /// one is left in flight or queued.
    pub fn tidy(&mut self) {
        if self.flows.as_ref().is_some_and(|f| f.is_idle()) {
            self.flows = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_session_stays_small() {
        // Every session is one of these (a 96-byte allocation), every
        // connection one more (64 bytes); a million idle devices hold a
        // million of each. Grow them only with a reason.
        let session = std::mem::size_of::<Session>();
        assert!(session <= 96, "Session grew to {session} bytes");
        let connection = std::mem::size_of::<Connection>();
        assert!(connection <= 64, "Connection grew to {connection} bytes");
    }

    #[test]
    fn flows_are_allocated_on_use_and_given_back_when_idle() {
        let mut session = Session::new(1, "c".into(), 0);
        assert!(session.outbound().is_idle() && session.inbound_qos2().is_empty());
        assert!(session.flows.is_none());
        session.set_will_due(None);
        assert!(
            session.flows.is_none(),
            "clearing nothing allocates nothing"
        );
        session
            .outbound_mut()
            .record_sent(7, delivery(QoS::AtLeastOnce, "m"));
        session.inbound_qos2_mut().insert(3);
        session.tidy();
        assert!(session.flows.is_some(), "flows in use are kept");
        assert!(session.outbound_mut().acknowledge(7));
        session.tidy();
        assert!(session.flows.is_some(), "an inbound QoS 2 id is still held");
        assert!(session.inbound_qos2_mut().remove(3));
        session.tidy();
        assert!(session.flows.is_none());
        assert_eq!(session.outbound().inflight().len(), 0);
    }

    #[test]
    fn packet_ids_stay_unique_in_a_large_window_across_wrap_arounds() {
        let mut out = Outbound::default();
        let mut live = std::collections::HashSet::new();
        for round in 0..100_000usize {
            let id = out.allocate_packet_id();
            assert_ne!(id, 0);
            assert!(live.insert(id), "packet id {id} allocated twice");
            out.record_sent(id, delivery(QoS::AtLeastOnce, "m"));
            if live.len() > 500 {
                // Acknowledge out of order, so old ids stay in flight across wraps.
                let index = (round * 7919) % out.inflight().len();
                let victim = out.inflight()[index].packet_id;
                assert!(out.acknowledge(victim));
                live.remove(&victim);
            }
        }
        assert!(out.in_use.is_some());
        for id in live.drain() {
            assert!(out.acknowledge(id));
        }
        assert!(out.inflight().is_empty() && out.in_use.is_none());
    }

    #[test]
    fn packet_ids_behave_as_a_set() {
        let mut ids = PacketIds::default();
        assert!(ids.insert(7));
        assert!(ids.insert(3));
        assert!(!ids.insert(7));
        assert!(ids.contains(3) && ids.contains(7) && !ids.contains(5));
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec![3, 7]);
        assert!(ids.remove(3));
        assert!(!ids.remove(3));
        assert_eq!(ids.len(), 1);
        assert!(ids.remove(7));
        assert!(ids.is_empty());
    }
    use crate::core::message::Message;
    use bytes::Bytes;
    use myriad_mqtt::PacketProperties;
    use std::sync::Arc;

    fn delivery(qos: QoS, body: &'static str) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from_static(body.as_bytes()),
                qos,
                retain: false,
                properties: PacketProperties::new(),
                expires_at: None,
                publisher: None,
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            seq: 0,
        }
    }

    const LIMITS: QueueLimits = QueueLimits {
        max_messages: 3,
        max_bytes: 1000,
    };

    #[test]
    fn full_queue_drops_qos0_first_then_oldest() {
        let mut out = Outbound::default();
        out.enqueue(delivery(QoS::AtLeastOnce, "a"), LIMITS);
        out.enqueue(delivery(QoS::AtMostOnce, "b"), LIMITS);
        out.enqueue(delivery(QoS::AtLeastOnce, "c"), LIMITS);
        match out.enqueue(delivery(QoS::AtLeastOnce, "d"), LIMITS) {
            QueueOutcome::DroppedOldest(d) => assert_eq!(d[0].message.payload, "b"),
            other => panic!("unexpected {other:?}"),
        }
        match out.enqueue(delivery(QoS::ExactlyOnce, "e"), LIMITS) {
            QueueOutcome::DroppedOldest(d) => assert_eq!(d[0].message.payload, "a"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            out.enqueue(delivery(QoS::AtMostOnce, "f"), LIMITS),
            QueueOutcome::Rejected
        );
        let bodies: Vec<_> = out
            .queue
            .iter()
            .map(|d| d.message.payload.clone())
            .collect();
        assert_eq!(bodies, vec!["c", "d", "e"]);
    }

    #[test]
    fn byte_limit_is_enforced() {
        let mut out = Outbound::default();
        let limits = QueueLimits {
            max_messages: 100,
            max_bytes: 5,
        };
        assert_eq!(
            out.enqueue(delivery(QoS::AtLeastOnce, "abc"), limits),
            QueueOutcome::Queued
        );
        assert!(matches!(
            out.enqueue(delivery(QoS::AtLeastOnce, "xyz"), limits),
            QueueOutcome::DroppedOldest(_)
        ));
        assert_eq!(out.queued_bytes(), 4);
        assert_eq!(
            out.enqueue(delivery(QoS::AtLeastOnce, "too long"), limits),
            QueueOutcome::Rejected
        );
        assert_eq!(
            out.queue().len(),
            1,
            "a message that cannot fit evicts nothing"
        );
    }

    /// Found by the session fuzz target: a message needing several evictions
    /// reported only the last one (the store kept the others, and a restart
    /// brought them back), and one larger than the byte limit emptied the
    /// queue before it was refused itself.
    #[test]
    fn every_evicted_message_is_reported_and_a_refused_one_evicts_nothing() {
        let limits = QueueLimits {
            max_messages: 100,
            max_bytes: 8,
        };
        let mut out = Outbound::default();
        for body in ["a", "b", "c"] {
            assert_eq!(
                out.enqueue(delivery(QoS::AtLeastOnce, body), limits),
                QueueOutcome::Queued
            );
        }
        match out.enqueue(delivery(QoS::AtLeastOnce, "defg"), limits) {
            QueueOutcome::DroppedOldest(dropped) => {
                let bodies: Vec<_> = dropped.iter().map(|d| d.message.payload.clone()).collect();
                assert_eq!(bodies, vec!["a", "b"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            out.enqueue(delivery(QoS::AtLeastOnce, "far too long"), limits),
            QueueOutcome::Rejected
        );
        assert_eq!(out.queue().len(), 2);
        // A QoS 0 newcomer that QoS 0 evictions cannot make room for evicts none.
        let mut out = Outbound::default();
        out.enqueue(delivery(QoS::AtMostOnce, "a"), limits);
        out.enqueue(delivery(QoS::AtLeastOnce, "bcd"), limits);
        assert_eq!(
            out.enqueue(delivery(QoS::AtMostOnce, "efghi"), limits),
            QueueOutcome::Rejected
        );
        assert_eq!(out.queue().len(), 2);
        assert_eq!(out.queued_bytes(), 2 + 4);
    }

    #[test]
    fn window_limits_qos1_but_not_qos0() {
        let mut out = Outbound::default();
        out.enqueue(delivery(QoS::AtLeastOnce, "a"), LIMITS);
        let first = out.next_sendable(1, 8).expect("room for one");
        let id = out.allocate_packet_id();
        out.record_sent(id, first);
        out.enqueue(delivery(QoS::AtLeastOnce, "b"), LIMITS);
        assert!(out.next_sendable(1, 8).is_none());
        assert!(out.acknowledge(id));
        assert!(!out.acknowledge(id));
        assert!(out.next_sendable(1, 8).is_some());
    }

    #[test]
    fn qos2_flow_and_packet_ids_skip_in_use() {
        let mut out = Outbound::default();
        let id = out.allocate_packet_id();
        out.record_sent(id, delivery(QoS::ExactlyOnce, "x"));
        assert_eq!(out.received(id, false), Some(true));
        assert_eq!(out.received(id, false), Some(true));
        assert!(!out.acknowledge(id));
        assert!(out.complete(id));
        assert!(!out.complete(id));
        out.record_sent(2, delivery(QoS::AtLeastOnce, "y"));
        out.next_packet_id = 1;
        assert_eq!(out.allocate_packet_id(), 3);
        out.next_packet_id = u16::MAX;
        assert_eq!(out.allocate_packet_id(), 1);
    }
}
