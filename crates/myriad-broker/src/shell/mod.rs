//! The tokio shell around the sans-IO core.
//!
//! - one task per connection ([`connection`]) decodes, forwards packets to
//!   the core task and writes what the core queued for it;
//! - one core task owns the [`Broker`] and turns its outputs into pushes on
//!   the connections' [`link::Link`]s;
//! - [`serve`] accepts connections until the shutdown token is cancelled.

pub mod census;
mod connection;
pub mod internal;
pub mod link;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use myriad_mqtt::{ByteString, Connect, Packet, PacketProperties, Publish, QoS};
use myriad_store::{SessionStore, StoreError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::BrokerConfig;
use crate::core::persist::unix_now;
use crate::core::receipts::DeliveryReceipt;
use crate::core::{Broker, Output};
use crate::hooks::{Acl, Authenticator, Lifecycle, Presence};
use crate::{ConnId, ConnectionLoss};
use link::{Link, Pushed};

/// Events from connection tasks (and the in-process API) to the core task.
///
/// Packets travel unboxed: an event lives only in the channel, and boxing
/// would cost an allocation per packet.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Event {
    /// A connection sent CONNECT.
    Connect {
        conn: ConnId,
        connect: Box<Connect>,
        link: Arc<Link>,
        /// What the authenticator allowed (`None`: no restriction).
        acl: Option<Arc<dyn Acl>>,
    },
    /// A connection sent a packet after CONNECT.
    Packet { conn: ConnId, packet: Packet },
    /// A connection ended.
    Lost { conn: ConnId, loss: ConnectionLoss },
    /// A message published from inside the process.
    Publish(Box<Publish>),
    /// Asks the core for its counters and levels.
    Snapshot(tokio::sync::oneshot::Sender<snapshot::BrokerSnapshot>),
}

/// State every connection task reads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    /// Where connection tasks send what they read.
    pub(crate) events: mpsc::Sender<Event>,
}

impl std::fmt::Debug for dyn Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

/// What the layers above plug into a running broker.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Decides on every network CONNECT (`None`: everyone may connect, with no ACL).
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// Receives every session going online or offline, in order. Unbounded:
    /// the receiver must keep up (one event per connect and disconnect).
    pub lifecycle: Option<mpsc::UnboundedSender<Lifecycle>>,
    /// Continues W3C traces carried by routed messages (`None`: messages
    /// pass untouched and nothing is parsed). See [`crate::trace`].
    pub tracer: Option<Arc<dyn crate::trace::PublishTracer>>,
    /// Receives a [`DeliveryReceipt`] whenever a client acknowledges a
    /// message under the prefix (see [`crate::core::receipts`]).
    pub receipts: Option<ReceiptHook>,
}

/// Where delivery receipts go, and for which topics.
#[derive(Clone, Debug)]
pub struct ReceiptHook {
    /// Topic prefix of the messages to report (e.g. `$commands/`).
    pub prefix: String,
    /// Receives the receipts. Unbounded: one per acknowledged message
    /// under the prefix; the receiver must keep up.
    pub sender: mpsc::UnboundedSender<DeliveryReceipt>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("authenticator", &self.authenticator.is_some())
            .field("lifecycle", &self.lifecycle.is_some())
            .field("tracer", &self.tracer.is_some())
            .field("receipts", &self.receipts.is_some())
            .finish()
    }
}

/// Capacity of the channel from connection tasks to the core task. When it
/// is full, connection tasks stop reading: backpressure reaches publishers.
const EVENT_CAPACITY: usize = 8192;
/// How many events the core handles before it flushes outputs.
const EVENT_BATCH: usize = 256;

/// When the core commits changes to the store (and so when acknowledgements go out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPolicy {
    /// Commit after every event: each acknowledgement waits for its own commit.
    PerEvent,
    /// Commit once per batch: events arriving within `window` of the first
    /// one (up to a batch of 256) share one commit.
    Group {
        /// How long the first event of a batch may wait for company.
        window: Duration,
    },
}

/// The persistent store and how to commit to it.
pub struct Persistence {
    /// Where state is kept.
    pub store: Box<dyn SessionStore>,
    /// When to commit.
    pub policy: CommitPolicy,
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persistence")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}
/// How long shutdown waits for connection tasks to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A handle for publishing into a running broker from the same process.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    events: mpsc::Sender<Event>,
    /// Connection ids for network and in-process clients alike.
    next_conn: Arc<AtomicU64>,
    /// Live connection tasks.
    census: Arc<census::Census>,
}

impl BrokerHandle {
    fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Publishes `publish` as if a client had sent it. Fails only if the broker stopped.
    pub async fn publish(&self, publish: Publish) -> Result<(), BrokerStopped> {
        self.events
            .send(Event::Publish(Box::new(publish)))
            .await
            .map_err(|_| BrokerStopped)
    }

    /// Publishes `payload` on `topic` at QoS 1, not retained, with
    /// `properties`: what the platform's own services send.
    pub async fn publish_at_least_once(
        &self,
        topic: ByteString,
        payload: Bytes,
        properties: PacketProperties,
    ) -> Result<(), BrokerStopped> {
        self.publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: 0,
            payload,
            properties,
        })
        .await
    }
}

/// The broker is no longer running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the broker has stopped")]
pub struct BrokerStopped;

/// Serves MQTT on `listener` until `shutdown` is cancelled, then says goodbye
/// to every client (5.0: DISCONNECT Server shutting down) and returns.
/// State lives in memory only.
pub async fn serve(
    config: BrokerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (handle, events) = channel();
    run(
        config,
        None,
        Hooks::default(),
        listener,
        shutdown,
        handle,
        events,
    )
    .await
}

/// Why the broker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be read at start-up.
    #[error("cannot load the store: {0}")]
    Load(#[source] StoreError),
    /// A commit failed: acknowledgements can no longer be backed, so the broker stops.
    #[error("store commit failed, stopping: {0}")]
    Commit(#[source] StoreError),
}

/// A handle and the receiving end it feeds, for [`run`].
pub fn channel() -> (BrokerHandle, EventReceiver) {
    let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
    let handle = BrokerHandle {
        events: tx,
        next_conn: Arc::new(AtomicU64::new(1)),
        census: Arc::default(),
    };
    (handle, EventReceiver(rx))
}

/// The core task's end of the event channel.
#[derive(Debug)]
pub struct EventReceiver(mpsc::Receiver<Event>);

/// Like [`serve`], with a [`BrokerHandle`] made by [`channel`] beforehand so
/// other services can publish into the broker, and optionally a store: state
/// is restored from it, and every batch of changes is committed to it before
/// the batch's packets (acknowledgements among them) are sent.
pub async fn run(
    config: BrokerConfig,
    persistence: Option<Persistence>,
    hooks: Hooks,
    listener: TcpListener,
    shutdown: CancellationToken,
    handle: BrokerHandle,
    events: EventReceiver,
) -> Result<(), ServeError> {
    let shared = Arc::new(Shared {
        config: config.clone(),
        authenticator: hooks.authenticator,
        events: handle.events.clone(),
    });
    let (mut broker, persistence) = match persistence {
        Some(mut persistence) => {
            let snapshot = persistence.store.load().map_err(ServeError::Load)?;
            let broker = Broker::restore(
                config.clone(),
                snapshot,
                std::time::Instant::now(),
                unix_now(),
            );
            info!(
                sessions = broker.session_count(),
                retained = broker.retained_count(),
                "state restored"
            );
            (broker, Some(persistence))
        }
        None => (Broker::new(config.clone()), None),
    };
    broker.set_presence_events(hooks.lifecycle.is_some());
    broker.set_tracer(hooks.tracer);
    broker.set_delivery_receipts(hooks.receipts.as_ref().map(|r| r.prefix.clone()));
    let receipts = hooks.receipts.map(|r| r.sender);
    let core_shutdown = shutdown.clone();
    let core = tokio::spawn(run_core(
        broker,
        persistence,
        events.0,
        config,
        hooks.lifecycle,
        receipts,
        core_shutdown,
    ));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        if core.is_finished() {
            break;
        }
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = handle.next_conn_id();
        let task = handle.census.task();
        tracker.spawn(connection::run(
            task,
            stream,
            peer,
            conn,
            shared.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("connections still open after the shutdown grace period");
    }
    drop(handle);
    core.abort();
    let outcome = match core.await {
        Ok(outcome) => outcome,
        Err(_) => Ok(()),
    };
    info!("broker stopped");
    outcome
}

/// The core task: applies events to the broker, commits what they changed,
/// then dispatches the outputs.
async fn run_core(
    mut broker: Broker,
    mut persistence: Option<Persistence>,
    mut events: mpsc::Receiver<Event>,
    config: BrokerConfig,
    lifecycle: Option<mpsc::UnboundedSender<Lifecycle>>,
    receipts: Option<mpsc::UnboundedSender<DeliveryReceipt>>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut links = Links {
        live: ConnMap::default(),
        departed: ConnMap::default(),
        lifecycle,
        dropped_qos0: 0,
        shutting_down: false,
        receipts,
    };
    let mut woken: Vec<Waker> = Vec::new();
    loop {
        let deadline = broker.next_timeout();
        tokio::select! {
            event = events.recv() => {
                // None: every sender is gone, the broker is shutting down.
                let Some(event) = event else {
                    return Ok(());
                };
                let now = std::time::Instant::now();
                apply(&mut broker, &mut links, event, now);
                let policy = persistence.as_ref().map(|p| p.policy);
                match policy {
                    Some(CommitPolicy::PerEvent) => {}
                    Some(CommitPolicy::Group { window }) if !window.is_zero() => {
                        gather(&mut broker, &mut links, &mut events, now + window).await;
                    }
                    _ => {
                        for _ in 1..EVENT_BATCH {
                            match events.try_recv() {
                                Ok(event) => apply(&mut broker, &mut links, event, now),
                                Err(_) => break,
                            }
                        }
                    }
                }
            }
            _ = sleep_until_some(deadline) => broker.handle_timeout(std::time::Instant::now()),
            _ = shutdown.cancelled(), if !links.shutting_down => links.shut_down(),
        }
        if let Some(persistence) = persistence.as_mut() {
            let changes = broker.take_changes();
            if !changes.is_empty()
                && let Err(error) = snapshot::timed_commit(&mut *persistence.store, &changes)
            {
                error!(%error, "store commit failed; stopping the broker");
                shutdown.cancel();
                links.shut_down();
                return Err(ServeError::Commit(error));
            }
        }
        dispatch(&mut broker, &mut links, &mut woken, &config);
    }
}

/// Applies further events until the batch is full or `until` passes, so they
/// share one commit. It waits only while the batch holds changes to commit:
/// traffic that writes nothing durable (QoS 0, pings) is not delayed.
async fn gather(
    broker: &mut Broker,
    links: &mut Links,
    events: &mut mpsc::Receiver<Event>,
    until: std::time::Instant,
) {
    let deadline = tokio::time::Instant::from_std(until);
    for _ in 1..EVENT_BATCH {
        let event = match events.try_recv() {
            Ok(event) => event,
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) if !broker.has_changes() => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(event)) => event,
                    Ok(None) | Err(_) => return,
                }
            }
        };
        apply(broker, links, event, std::time::Instant::now());
    }
}

async fn sleep_until_some(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn apply(broker: &mut Broker, links: &mut Links, event: Event, now: std::time::Instant) {
    match event {
        Event::Connect {
            conn,
            connect,
            link,
            acl,
        } => {
            if links.shutting_down {
                link.shut_down();
            }
            links.live.insert(conn, link);
            if broker.handle_connect(now, conn, *connect)
                && let Some(acl) = acl
            {
                broker.set_acl(conn, acl);
            }
        }
        Event::Packet { conn, packet } => broker.handle_packet(now, conn, packet),
        Event::Lost { conn, loss } => {
            links.depart(conn);
            broker.handle_connection_lost(now, conn, loss);
        }
        Event::Publish(publish) => broker.publish(now, *publish),
        Event::Snapshot(reply) => {
            let _ = reply.send(snapshot::take(broker, links));
        }
    }
}

fn dispatch(broker: &mut Broker, links: &mut Links, woken: &mut Vec<Waker>, config: &BrokerConfig) {
    while let Some(output) = broker.poll_output() {
        match output {
            Output::Send(conn, packet) => {
                if let Some(link) = links.live.get(&conn) {
                    match link.push(packet, config.max_outbound_qos0) {
                        Pushed::Queued(waker) => woken.extend(waker),
                        Pushed::DroppedQos0 => links.dropped_qos0 += 1,
                        Pushed::Added | Pushed::Closed => {}
                    }
                }
            }
            Output::Close(conn) => {
                if let Some(link) = links.depart(conn) {
                    woken.extend(link.close());
                }
            }
            Output::Presence(presence) => links.announce(presence),
            Output::Delivered(receipt) => {
                if let Some(receipts) = &links.receipts
                    && receipts.send(receipt).is_err()
                {
                    links.receipts = None;
                }
            }
        }
    }
    links.departed.clear();
    // Woken after the whole batch is queued, so each task writes it in one go.
    for waker in woken.drain(..) {
        waker.wake();
    }
}

/// Links by connection id. Looked up once per packet sent, so hashed with
/// foldhash (randomly seeded per process) rather than SipHash.
type ConnMap = HashMap<ConnId, Arc<Link>, foldhash::fast::RandomState>;

/// The core task's view of the connections.
struct Links {
    /// Connections that may still be written to.
    live: ConnMap,
    /// Connections that ended during this batch: their presence events may
    /// still need the peer address.
    departed: ConnMap,
    lifecycle: Option<mpsc::UnboundedSender<Lifecycle>>,
    /// QoS 0 messages dropped because a connection fell too far behind.
    dropped_qos0: u64,
    /// The server is shutting down: every connection, present and arriving,
    /// is told to say goodbye.
    shutting_down: bool,
    /// Where delivery receipts go.
    receipts: Option<mpsc::UnboundedSender<DeliveryReceipt>>,
}

impl Links {
    /// Tells every connection the server is shutting down.
    fn shut_down(&mut self) {
        self.shutting_down = true;
        for link in self.live.values() {
            link.shut_down();
        }
    }

    /// Stops writing to `conn`; keeps its details until the batch is dispatched.
    fn depart(&mut self, conn: ConnId) -> Option<Arc<Link>> {
        let link = self.live.remove(&conn)?;
        if self.lifecycle.is_some() {
            self.departed.insert(conn, link.clone());
        }
        Some(link)
    }

    /// Sends a presence event to the lifecycle channel with the peer's details.
    fn announce(&mut self, presence: Presence) {
        let Some(lifecycle) = &self.lifecycle else {
            return;
        };
        let conn = presence.conn();
        let link = self.live.get(&conn).or_else(|| self.departed.get(&conn));
        let event = Lifecycle {
            peer: link.and_then(|l| l.peer()),
            presence,
        };
        if lifecycle.send(event).is_err() {
            // The receiver is gone: stop producing events nobody reads.
            self.lifecycle = None;
        }
    }
}
