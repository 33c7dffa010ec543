//! The tokio shell around the sans-IO core.
//!
//! - one task per connection ([`connection`]) decodes, forwards packets to
//!   the core task and writes what the core queued for it;
//! - one core task owns the [`Broker`] and turns its outputs into pushes on
//!   the connections' [`link::Link`]s;
//! - [`serve`] accepts connections until the shutdown token is cancelled;
//! - store commits run on the blocking pool ([`commit`]), never on the
//!   event loop.

mod activity;
pub mod census;
pub mod client_trust;
mod commit;
mod connection;
mod console;
#[cfg(feature = "fault-injection")]
mod fault;
mod ingest;
pub mod internal;
pub mod link;
mod listen;
pub mod snapshot;
pub mod tls;
mod transport;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use myriad_mqtt::{ByteString, Connect, Packet, PacketProperties, Publish, PublishAck, QoS};
use myriad_store::{SessionStore, StoreError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::BrokerConfig;
use crate::core::evict::{Evicted, Eviction};
use crate::core::persist::unix_now;
use crate::core::receipts::DeliveryReceipt;
use crate::core::{Broker, Output};
use crate::hooks::{Acl, Authenticator, IngestSink, Lifecycle, Presence};
use crate::{ConnId, ConnectionLoss};
use commit::{CommitFailure, Deferred, Durability};
use link::{Link, Pushed};
use listen::Acceptor;
pub use listen::{BindError, BoundListener, Listeners, bind_all};

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
    /// An in-process client acknowledged these QoS 1 messages (one event for
    /// many PUBACKs: under load each event waits its turn on the channel).
    Acks { conn: ConnId, packet_ids: Vec<u16> },
    /// A PUBLISH the [`IngestSink`] has stored.
    Ingested { conn: ConnId, publish: Box<Publish> },
    /// The [`IngestSink`] refused a PUBLISH the connection sent: it is
    /// answered with an error (5.0) or a disconnect (3.1.1), not routed.
    IngestRefused {
        conn: ConnId,
        qos: QoS,
        packet_id: u16,
    },
    /// A connection ended.
    Lost { conn: ConnId, loss: ConnectionLoss },
    /// A connection wrote (or handed to its in-process client) `qos0` QoS 0
    /// publications to its socket.
    Written { conn: ConnId, qos0: usize },
    /// A message published from inside the process.
    Publish(Box<Publish>),
    /// Asks the core for its counters and levels.
    Snapshot(tokio::sync::oneshot::Sender<snapshot::BrokerSnapshot>),
    /// Closes a client's connection (and maybe more) by client id.
    Evict(Box<Eviction>, tokio::sync::oneshot::Sender<Evicted>),
    /// Asks the core which connections were heard from since a moment.
    Activity(
        Option<std::time::Instant>,
        tokio::sync::oneshot::Sender<Vec<crate::core::activity::Activity>>,
    ),
    /// A query of the operators' console.
    Console(console::Query),
}

/// State every connection task reads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    /// Takes each device's own messages on its ingest topic before routing.
    pub(crate) ingest: Option<Arc<dyn IngestSink>>,
    /// Where connection tasks send what they read.
    pub(crate) events: mpsc::Sender<Event>,
}

impl std::fmt::Debug for dyn IngestSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IngestSink")
    }
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
    /// Takes what a client publishes to its own ingest topic before it is
    /// routed; the publisher's acknowledgement waits for it (see
    /// [`IngestSink`]). `None`: nothing is intercepted.
    pub ingest: Option<Arc<dyn IngestSink>>,
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
            .field("ingest", &self.ingest.is_some())
            .finish()
    }
}

/// Capacity of the channel from connection tasks to the core task. When it
/// is full, connection tasks stop reading: backpressure reaches publishers.
const EVENT_CAPACITY: usize = 8192;
/// How many events the core handles before it flushes outputs.
const EVENT_BATCH: usize = 256;

/// When the core commits changes to the store (and so when acknowledgements
/// go out). Either way commits run off the event loop, one at a time, while
/// the core goes on with later events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPolicy {
    /// Every event's changes are one commit: each acknowledgement waits for its own.
    PerEvent,
    /// Changes made within `window` of the first one (or while the previous
    /// commit runs; 256 events start it early) share one commit.
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
/// How long shutdown waits for the core task to commit what is left.
const CORE_STOP_GRACE: Duration = Duration::from_secs(10);

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

impl BrokerHandle {
    /// Carries out `eviction` in the core (close the connection of a
    /// client id with a reason code; maybe discard its session and clear
    /// retained messages) and says what it did. The changes go to the
    /// store with the core's next commit.
    pub async fn evict(&self, eviction: Eviction) -> Result<Evicted, BrokerStopped> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.events
            .send(Event::Evict(Box::new(eviction), reply))
            .await
            .map_err(|_| BrokerStopped)?;
        done.await.map_err(|_| BrokerStopped)
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
    listener: impl Into<Listeners>,
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
    /// An essential task panicked (a bug): the broker cannot go on.
    #[error("the {task} panicked: {message}")]
    Panicked {
        /// Which task.
        task: &'static str,
        /// The panic's message.
        message: String,
    },
}

impl ServeError {
    /// The error for `task` ending with `error` (a panic, or cancelled).
    fn from_join(task: &'static str, error: JoinError) -> ServeError {
        let message = match error.try_into_panic() {
            Ok(payload) => panic_message(payload.as_ref()),
            Err(error) => error.to_string(),
        };
        ServeError::Panicked { task, message }
    }
}

/// The text a panic was raised with.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Binds the plain MQTT listener to `config.listen` with a listen queue of
/// `config.listen_backlog` (see [`bind_all`] for every listener).
pub async fn bind(config: &BrokerConfig) -> std::io::Result<TcpListener> {
    listen::bind(&config.listen, config.listen_backlog).await
}

/// How many network connections may be open at once: `max_connections`,
/// lowered to what the process's open-file limit leaves room for after a
/// reserve (a tenth of the limit plus 32) for the store, the HTTP API and
/// the runtime. Past the limit `accept` would fail with EMFILE while every
/// other part of the process is starved of descriptors too.
pub fn connection_cap(max_connections: usize) -> usize {
    match open_file_limit() {
        Some(limit) => {
            let room = limit.saturating_sub(limit / 10 + 32).max(1);
            max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => max_connections,
    }
}

/// The soft limit on open files of this process (Linux: /proc/self/limits).
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
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
    listeners: impl Into<Listeners>,
    shutdown: CancellationToken,
    handle: BrokerHandle,
    events: EventReceiver,
) -> Result<(), ServeError> {
    let listeners = listeners.into();
    let shared = Arc::new(Shared {
        config: config.clone(),
        authenticator: hooks.authenticator,
        ingest: hooks.ingest,
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
    let stop = CancellationToken::new();
    let mut core = tokio::spawn(run_core(
        broker,
        persistence.map(Durability::new),
        events.0,
        config.clone(),
        hooks.lifecycle,
        receipts,
        shutdown.clone(),
        stop.clone(),
    ));
    let cap = connection_cap(config.max_connections);
    if cap < config.max_connections {
        info!(
            max_connections = config.max_connections,
            cap, "mqtt.max_connections lowered to what the open-file limit leaves room for"
        );
    }
    let tracker = TaskTracker::new();
    let accepting = listeners.accept_all(&Acceptor {
        handle: handle.clone(),
        shared: shared.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        cap,
    });
    let failed = tokio::select! {
        _ = shutdown.cancelled() => None,
        // A core that ends before shutdown failed (a panic, a commit):
        // stop at once rather than at the next connection.
        ended = &mut core => Some(ended),
    };
    // Every listener stops accepting (and is closed) before goodbyes.
    shutdown.cancel();
    accepting.join_all().await;
    if let Some(ended) = failed {
        // Connections cannot be served without the core: say nothing more,
        // the process is expected to end (and be restarted). `shutdown`
        // was cancelled above, which also ends every connection task.
        let outcome = match ended {
            Ok(Ok(())) => Err(ServeError::Panicked {
                task: "core task",
                message: "stopped unexpectedly".to_owned(),
            }),
            Ok(Err(error)) => Err(error),
            Err(error) => Err(ServeError::from_join("core task", error)),
        };
        if let Err(error) = &outcome {
            error!(%error, "broker core failed; stopping");
        }
        return outcome;
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("connections still open after the shutdown grace period");
    }
    drop(handle);
    // The core commits what is left, then ends.
    stop.cancel();
    let outcome = match tokio::time::timeout(CORE_STOP_GRACE, &mut core).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => Err(ServeError::from_join("core task", error)),
        Err(_) => {
            warn!("the core task did not stop in time");
            core.abort();
            Ok(())
        }
    };
    info!("broker stopped");
    outcome
}

/// The core task: applies events to the broker and hands their changes to
/// the store's commits ([`commit`]); outputs go out at once, or once the
/// changes before them are durable.
#[allow(clippy::too_many_arguments)]
async fn run_core(
    mut broker: Broker,
    mut durability: Option<Durability>,
    mut events: mpsc::Receiver<Event>,
    config: BrokerConfig,
    lifecycle: Option<mpsc::UnboundedSender<Lifecycle>>,
    receipts: Option<mpsc::UnboundedSender<DeliveryReceipt>>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let mut links = Links {
        live: ConnMap::default(),
        departed: ConnMap::default(),
        lifecycle,
        dropped_qos0: 0,
        shutting_down: false,
        receipts,
    };
    let mut out = Outbound {
        woken: Vec::new(),
        released: Vec::new(),
        max_qos0: config.max_outbound_qos0,
    };
    let per_event = durability.as_ref().is_some_and(Durability::per_event);
    loop {
        let timeout = broker.next_timeout();
        let commit_due = durability.as_ref().and_then(Durability::due);
        let wake_at = match (timeout, commit_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let room = durability.as_ref().is_none_or(Durability::has_room);
        tokio::select! {
            event = events.recv(), if room => {
                // None: every sender is gone, the broker is shutting down.
                let Some(event) = event else {
                    return finish(&mut broker, &mut links, durability.as_mut(), &mut out, &shutdown).await;
                };
                let now = std::time::Instant::now();
                apply(&mut broker, &mut links, event, now);
                let mut applied = 1;
                while applied < EVENT_BATCH {
                    if per_event {
                        settle(&mut broker, &mut links, durability.as_mut(), &mut out, 1, now);
                    }
                    match events.try_recv() {
                        Ok(event) => apply(&mut broker, &mut links, event, now),
                        Err(_) => break,
                    }
                    applied += 1;
                }
                settle(&mut broker, &mut links, durability.as_mut(), &mut out, applied, now);
            }
            done = commit_done(durability.as_mut()) => {
                if let Some(d) = durability.as_mut()
                    && let Err(failure) = d.committed(done, &mut out.released)
                {
                    return Err(commit_failed(&mut links, &shutdown, failure));
                }
                out.send_released(&mut links);
            }
            _ = sleep_until_some(wake_at) => {
                let now = std::time::Instant::now();
                if timeout.is_some_and(|at| at <= now) {
                    broker.handle_timeout(now);
                    settle(&mut broker, &mut links, durability.as_mut(), &mut out, 0, now);
                }
            }
            _ = shutdown.cancelled(), if !links.shutting_down => {
                links.shut_down();
                let now = std::time::Instant::now();
                settle(&mut broker, &mut links, durability.as_mut(), &mut out, 0, now);
            }
            // Polled only once shutting down (run() stops the core after
            // the shutdown grace): one token less to poll per batch.
            _ = stop.cancelled(), if links.shutting_down => {
                // What connections sent before they ended is applied and committed.
                let now = std::time::Instant::now();
                while let Ok(event) = events.try_recv() {
                    apply(&mut broker, &mut links, event, now);
                }
                settle(&mut broker, &mut links, durability.as_mut(), &mut out, 0, now);
                return finish(&mut broker, &mut links, durability.as_mut(), &mut out, &shutdown).await;
            }
        }
        if let Some(d) = durability.as_mut() {
            d.start_if_due(std::time::Instant::now());
        }
        out.wake();
    }
}

/// Waits for the running commit, if there is a store.
async fn commit_done(durability: Option<&mut Durability>) -> Result<commit::Finished, JoinError> {
    match durability {
        Some(durability) => durability.commit_done().await,
        None => std::future::pending().await,
    }
}

/// Ends the core after a failed commit: nothing held goes out, every
/// connection is told the server is going away.
fn commit_failed(
    links: &mut Links,
    shutdown: &CancellationToken,
    failure: CommitFailure,
) -> ServeError {
    shutdown.cancel();
    links.shut_down();
    match failure {
        CommitFailure::Store(error) => {
            error!(%error, "store commit failed; stopping the broker");
            ServeError::Commit(error)
        }
        CommitFailure::Task(error) => {
            let error = ServeError::from_join("store commit task", error);
            error!(%error, "store commit failed; stopping the broker");
            error
        }
    }
}

/// Commits what is left and sends what that releases: the core's last act.
async fn finish(
    broker: &mut Broker,
    links: &mut Links,
    mut durability: Option<&mut Durability>,
    out: &mut Outbound,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    let now = std::time::Instant::now();
    settle(broker, links, durability.as_deref_mut(), out, 0, now);
    if let Some(d) = durability
        && let Err(failure) = d.flush(&mut out.released).await
    {
        return Err(commit_failed(links, shutdown, failure));
    }
    out.send_released(links);
    out.wake();
    Ok(())
}

async fn sleep_until_some(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn apply(broker: &mut Broker, links: &mut Links, event: Event, now: std::time::Instant) {
    #[cfg(feature = "fault-injection")]
    fault::inspect(&event);
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
            broker.handle_connect_as(now, conn, *connect, acl);
        }
        Event::Packet { conn, packet } => broker.handle_packet(now, conn, packet),
        Event::Acks { conn, packet_ids } => {
            for packet_id in packet_ids {
                broker.handle_packet(now, conn, Packet::PubAck(PublishAck::success(packet_id)));
            }
        }
        Event::Ingested { conn, publish } => broker.handle_ingested(now, conn, *publish),
        Event::IngestRefused {
            conn,
            qos,
            packet_id,
        } => broker.refuse_ingested(now, conn, qos, packet_id),
        Event::Lost { conn, loss } => {
            links.depart(conn);
            broker.handle_connection_lost(now, conn, loss);
        }
        Event::Written { conn, qos0 } => broker.handle_written(now, conn, qos0),
        Event::Publish(publish) => broker.publish(now, *publish),
        Event::Snapshot(reply) => {
            let _ = reply.send(snapshot::take(broker, links));
        }
        Event::Evict(eviction, reply) => {
            let _ = reply.send(broker.evict(now, &eviction));
        }
        Event::Activity(since, reply) => {
            let _ = reply.send(broker.activity(since));
        }
        Event::Console(query) => console::answer(broker, query, now),
    }
}

/// What the core task is about to hand to connection tasks.
struct Outbound {
    /// Connection tasks to wake once the batch is queued, so each writes
    /// its share in one go.
    woken: Vec<Waker>,
    /// Outputs a commit released, to send.
    released: Vec<Deferred>,
    /// QoS 0 packets a connection may have waiting.
    max_qos0: usize,
}

impl Outbound {
    /// Carries out one held output now.
    fn send(&mut self, links: &mut Links, deferred: Deferred) {
        match deferred {
            Deferred::Send(conn, packet) => self.push(links, conn, packet),
            Deferred::Close(conn) => self.close(links, conn),
            Deferred::Lifecycle(event) => links.announce(event),
            Deferred::Delivered(receipt) => links.deliver(receipt),
        }
    }

    /// Carries out one output of the core now (nothing is held).
    fn output(&mut self, links: &mut Links, output: Output) {
        match output {
            Output::Send(conn, packet) => self.push(links, conn, packet),
            Output::Close(conn) => self.close(links, conn),
            Output::Presence(presence) => {
                if let Some(event) = links.lifecycle_event(presence) {
                    links.announce(event);
                }
            }
            Output::Delivered(receipt) => links.deliver(receipt),
        }
    }

    fn push(&mut self, links: &mut Links, conn: ConnId, packet: Packet) {
        if let Some(link) = links.live.get(&conn) {
            match link.push(packet, self.max_qos0) {
                Pushed::Queued(waker) => self.woken.extend(waker),
                Pushed::DroppedQos0 => links.dropped_qos0 += 1,
                Pushed::Added | Pushed::Closed => {}
            }
        }
    }

    fn close(&mut self, links: &mut Links, conn: ConnId) {
        if let Some(link) = links.depart(conn) {
            self.woken.extend(link.close());
        }
    }

    /// Sends what the last commit released.
    fn send_released(&mut self, links: &mut Links) {
        let mut released = std::mem::take(&mut self.released);
        for deferred in released.drain(..) {
            self.send(links, deferred);
        }
        // Keeps the allocation for the next release.
        self.released = released;
    }

    /// Wakes the connection tasks that have something to write.
    fn wake(&mut self) {
        for waker in self.woken.drain(..) {
            waker.wake();
        }
    }
}

/// Takes what the last `events` events (applied at `now`) changed and
/// produced: changes go to the store's next commit; each output goes out
/// now or waits for the changes before it to be durable.
fn settle(
    broker: &mut Broker,
    links: &mut Links,
    mut durability: Option<&mut Durability>,
    out: &mut Outbound,
    events: usize,
    now: std::time::Instant,
) {
    if let Some(d) = durability.as_deref_mut() {
        let changes = broker.take_changes();
        d.record(changes, events, now);
    }
    while let Some(output) = broker.poll_output() {
        let Some(d) = durability.as_deref_mut().filter(|d| d.pending()) else {
            // Nothing waits for a commit: straight out, as without a store.
            out.output(links, output);
            continue;
        };
        let deferred = match output {
            Output::Send(conn, packet) => Deferred::Send(conn, packet),
            Output::Close(conn) => Deferred::Close(conn),
            // The peer is looked up now: the link may be gone by the time
            // the event is released.
            Output::Presence(presence) => match links.lifecycle_event(presence) {
                Some(event) => Deferred::Lifecycle(event),
                None => continue,
            },
            Output::Delivered(receipt) => Deferred::Delivered(receipt),
        };
        if let Some(deferred) = d.hold(deferred) {
            out.send(links, deferred);
        }
    }
    links.departed.clear();
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

    /// The lifecycle event for `presence`, with the peer's details
    /// (`None`: nobody listens).
    fn lifecycle_event(&self, presence: Presence) -> Option<Lifecycle> {
        self.lifecycle.as_ref()?;
        let conn = presence.conn();
        let link = self.live.get(&conn).or_else(|| self.departed.get(&conn));
        Some(Lifecycle {
            peer: link.and_then(|l| l.peer()),
            presence,
        })
    }

    /// Sends a delivery receipt to its hook.
    fn deliver(&mut self, receipt: DeliveryReceipt) {
        if let Some(receipts) = &self.receipts
            && receipts.send(receipt).is_err()
        {
            self.receipts = None;
        }
    }

    /// Sends a presence event to the lifecycle channel.
    fn announce(&mut self, event: Lifecycle) {
        let Some(lifecycle) = &self.lifecycle else {
            return;
        };
        if lifecycle.send(event).is_err() {
            // The receiver is gone: stop producing events nobody reads.
            self.lifecycle = None;
        }
    }
}
