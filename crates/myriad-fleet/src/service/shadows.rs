//! Device shadows over MQTT and for the HTTP API.
//!
//! Topics (the device's namespace, see docs/topics.md):
//! - the device publishes `$shadow/{id}/update` (an update request),
//!   `$shadow/{id}/get` and `$shadow/{id}/delete` (empty or
//!   `{"clientToken": ..}`);
//! - the platform answers on `$shadow/{id}/update/accepted`,
//!   `$shadow/{id}/update/rejected`, `$shadow/{id}/get/accepted`,
//!   `$shadow/{id}/get/rejected`, `$shadow/{id}/delete/accepted` (also
//!   after an HTTP delete: the device is told) and
//!   `$shadow/{id}/delete/rejected` (404 when there is no shadow), and publishes `$shadow/{id}/update/delta`
//!   whenever an update leaves `desired` different from `reported`, and
//!   `$shadow/{id}/update/documents` (previous and current) after every
//!   accepted update. All at QoS 1, so a persistent session that is offline
//!   gets the delta when it reconnects.
//!
//! # Store I/O off the event loop
//!
//! Every read and write of the shadow service (MQTT and HTTP alike) goes
//! through one writer thread fed by a bounded queue ([`SHADOW_QUEUE`]
//! jobs; a full queue makes the sender wait, which holds the shadow
//! service's MQTT client and so, through its bounded queue, the devices,
//! never the event loop). The thread takes what is waiting (up to
//! [`SHADOW_BATCH`] jobs), applies the updates one after the other in
//! arrival order (so versions never race and each device's updates keep
//! their order), stores every changed shadow in one commit (one `fsync`),
//! and only then answers: `accepted`, `delta` and `documents` are
//! published after the commit, so an update seen as accepted survives a
//! crash. MQTT requests are pipelined: the service submits the next
//! request while earlier ones wait for their commit, and publishes the
//! answers in request order.
//!
//! # Requests per device
//!
//! Each device may make [`ShadowConfig::requests_per_device`] MQTT requests
//! (`update` and `get` together; default 20/s, bursts of 40); beyond it a
//! request is answered at once on `.../rejected` with code 429 and never
//! reaches the writer, so one device publishing in a loop costs the broker
//! little and holds nobody (AWS IoT's Device Shadow service throttles the
//! same way, with the same code). The HTTP API is not counted here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use myriad_broker::shell::{BrokerHandle, BrokerStopped, internal::InternalClient};
use myriad_broker::trace::trace_properties;
use myriad_mqtt::{ByteString, Properties, Publish, QoS};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::now_ms;
use crate::commands::limits::{KeyedBuckets, RateLimit};
use crate::events::{EventSink, FleetEvent, ShadowChange};
use crate::registry::DeviceId;
use crate::shadow::{
    GetRequest, Shadow, ShadowLimits, UpdateAccepted, UpdateRejected, UpdateRequest,
};
use crate::store::{FleetStore, FleetStoreError};

/// Jobs waiting for the shadow writer thread, at most.
pub const SHADOW_QUEUE: usize = 1024;
/// Jobs applied per commit, at most.
pub const SHADOW_BATCH: usize = 256;
/// MQTT requests submitted and not yet answered, at most.
const PIPELINE: usize = 1024;

/// Devices with a request bucket before idle (refilled) buckets are
/// dropped: the throttle's memory follows the devices active in the last
/// few seconds.
const TRACKED_DEVICES: usize = 4096;

/// The `[shadows]` config table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// MQTT requests (`update` and `get` together) one device may make:
    /// `per_second` sustained, bursts of `burst`; beyond it they are
    /// rejected with code 429. `per_second = 0` turns the limit off.
    pub requests_per_device: RateLimit,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            requests_per_device: RateLimit {
                per_second: 20.0,
                burst: 40,
            },
        }
    }
}

impl ShadowConfig {
    /// Checks the values; `Err` names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        self.requests_per_device
            .validate()
            .map_err(|e| format!("requests_per_device.{e}"))
    }
}

/// One MQTT 5.0 user property (name, value).
type UserProperty = (ByteString, ByteString);

/// Why a shadow operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ShadowServiceError {
    /// No registered device has this id.
    #[error("no device {0}")]
    UnknownDevice(String),
    /// The device has no shadow to delete.
    #[error("no shadow exists for {0}")]
    NoShadow(String),
    /// The update was rejected (bad request, version conflict, too large).
    #[error("{}", .0.message)]
    Rejected(UpdateRejected),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] FleetStoreError),
    /// The commit holding this update failed (the update was not stored).
    #[error("store commit failed: {0}")]
    CommitFailed(String),
    /// The writer thread is gone (the service is stopping).
    #[error("the shadow writer stopped")]
    Stopped,
    /// The device made more requests than `requests_per_device` allows.
    #[error("too many requests: retry in {retry_after_ms} ms")]
    TooManyRequests {
        /// When a token is next free.
        retry_after_ms: u64,
    },
    /// A stored shadow does not decode.
    #[error("stored shadow of {device} is corrupt: {message}")]
    Corrupt {
        /// The device.
        device: String,
        /// What went wrong.
        message: String,
    },
}

/// Counters of the shadow writer, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShadowStats {
    /// Updates stored.
    pub updates: u64,
    /// Commits made for them (one per batch).
    pub commits: u64,
}

#[derive(Default)]
struct Counters {
    updates: AtomicU64,
    commits: AtomicU64,
}

type Reply<T> = oneshot::Sender<Result<T, ShadowServiceError>>;

/// Work for the writer thread.
enum Job {
    Update {
        device: DeviceId,
        request: UpdateRequest,
        reply: Reply<UpdateAccepted>,
    },
    Get {
        device: DeviceId,
        reply: Reply<Shadow>,
    },
    Delete {
        device: DeviceId,
        client_token: Option<String>,
        reply: Reply<Option<Value>>,
    },
}

/// An answer held until the batch's commit.
enum Held {
    Update(
        Reply<UpdateAccepted>,
        Result<UpdateAccepted, ShadowServiceError>,
        Option<usize>,
    ),
    Get(Reply<Shadow>, Result<Shadow, ShadowServiceError>),
    Delete(
        Reply<Option<Value>>,
        Result<Option<Value>, ShadowServiceError>,
        Option<usize>,
    ),
}

/// The writer thread's side.
struct Writer {
    store: Arc<FleetStore>,
    limits: ShadowLimits,
    counters: Arc<Counters>,
}

impl Writer {
    fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(SHADOW_BATCH);
        while let Some(first) = jobs.blocking_recv() {
            batch.push(first);
            while batch.len() < SHADOW_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.apply(&mut batch);
        }
    }

    /// Applies `batch` in order: updates, gets and deletes against the
    /// working copies, one commit, then the answers.
    fn apply(&self, batch: &mut Vec<Job>) {
        let mut working: HashMap<DeviceId, Shadow> = HashMap::new();
        let mut writes: Vec<(DeviceId, Vec<u8>)> = Vec::new();
        let mut held: Vec<Held> = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Update {
                    device,
                    request,
                    reply,
                } => {
                    let outcome = self.update(&mut working, &device, request);
                    let slot = match &outcome {
                        Ok(_) => match working.get(&device).map(serde_json::to_vec) {
                            Some(Ok(bytes)) => {
                                writes.push((device.clone(), bytes));
                                Some(writes.len() - 1)
                            }
                            _ => None,
                        },
                        Err(_) => None,
                    };
                    held.push(Held::Update(reply, outcome, slot));
                }
                Job::Get { device, reply } => {
                    let outcome = self.shadow(&mut working, &device).cloned();
                    held.push(Held::Get(reply, outcome));
                }
                Job::Delete {
                    device,
                    client_token,
                    reply,
                } => {
                    let outcome = self
                        .shadow(&mut working, &device)
                        .map(|shadow| shadow.delete(client_token.as_deref(), now_ms()));
                    let slot = match &outcome {
                        Ok(Some(_)) => match working.get(&device).map(serde_json::to_vec) {
                            Some(Ok(bytes)) => {
                                writes.push((device.clone(), bytes));
                                Some(writes.len() - 1)
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    held.push(Held::Delete(reply, outcome, slot));
                }
            }
        }
        self.commit(&mut writes, &mut held);
    }

    /// Stores `writes` in one commit, then sends the `held` answers.
    fn commit(&self, writes: &mut Vec<(DeviceId, Vec<u8>)>, held: &mut Vec<Held>) {
        let result = if writes.is_empty() {
            Ok(Vec::new())
        } else {
            self.store.put_shadows(writes)
        };
        if !writes.is_empty() && result.is_ok() {
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            self.counters
                .updates
                .fetch_add(writes.len() as u64, Ordering::Relaxed);
        }
        for answer in held.drain(..) {
            match answer {
                Held::Get(reply, outcome) => {
                    let outcome = match (&result, outcome) {
                        (Err(error), Ok(_)) => {
                            Err(ShadowServiceError::CommitFailed(error.to_string()))
                        }
                        (_, outcome) => outcome,
                    };
                    let _ = reply.send(outcome);
                }
                Held::Delete(reply, outcome, slot) => {
                    let outcome = match (&result, slot, outcome) {
                        (Err(error), _, Ok(Some(_))) => {
                            Err(ShadowServiceError::CommitFailed(error.to_string()))
                        }
                        (Ok(stored), Some(i), Ok(Some(document))) => {
                            if stored.get(i).copied().unwrap_or(false) {
                                Ok(Some(document))
                            } else {
                                Err(ShadowServiceError::UnknownDevice(
                                    writes[i].0.as_str().to_string(),
                                ))
                            }
                        }
                        (_, _, outcome) => outcome,
                    };
                    let _ = reply.send(outcome);
                }
                Held::Update(reply, outcome, slot) => {
                    let outcome = match (&result, slot, outcome) {
                        (Err(error), _, Ok(_)) => {
                            Err(ShadowServiceError::CommitFailed(error.to_string()))
                        }
                        (Ok(stored), Some(i), Ok(accepted)) => {
                            if stored.get(i).copied().unwrap_or(false) {
                                Ok(accepted)
                            } else {
                                Err(ShadowServiceError::UnknownDevice(
                                    writes[i].0.as_str().to_string(),
                                ))
                            }
                        }
                        (_, _, outcome) => outcome,
                    };
                    let _ = reply.send(outcome);
                }
            }
        }
        writes.clear();
    }

    fn update(
        &self,
        working: &mut HashMap<DeviceId, Shadow>,
        device: &DeviceId,
        request: UpdateRequest,
    ) -> Result<UpdateAccepted, ShadowServiceError> {
        let limits = self.limits;
        let shadow = self.shadow(working, device)?;
        shadow
            .apply_request(request, now_ms(), &limits)
            .map_err(ShadowServiceError::Rejected)
    }

    /// The working copy of `device`'s shadow, loaded on first use.
    fn shadow<'w>(
        &self,
        working: &'w mut HashMap<DeviceId, Shadow>,
        device: &DeviceId,
    ) -> Result<&'w mut Shadow, ShadowServiceError> {
        if !working.contains_key(device) {
            self.require_device(device)?;
            let shadow = load(&self.store, device)?;
            working.insert(device.clone(), shadow);
        }
        working
            .get_mut(device)
            .ok_or_else(|| ShadowServiceError::UnknownDevice(device.as_str().to_string()))
    }

    fn require_device(&self, device: &DeviceId) -> Result<(), ShadowServiceError> {
        require_device(&self.store, device)
    }
}

fn require_device(store: &FleetStore, device: &DeviceId) -> Result<(), ShadowServiceError> {
    match store.get_device(device)? {
        Some(_) => Ok(()),
        None => Err(ShadowServiceError::UnknownDevice(
            device.as_str().to_string(),
        )),
    }
}

fn load(store: &FleetStore, device: &DeviceId) -> Result<Shadow, ShadowServiceError> {
    match store.get_shadow(device)? {
        None => Ok(Shadow::new()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| ShadowServiceError::Corrupt {
            device: device.as_str().to_string(),
            message: e.to_string(),
        }),
    }
}

/// Shadows of all devices. See the module docs.
pub struct ShadowService {
    store: Arc<FleetStore>,
    broker: BrokerHandle,
    limits: ShadowLimits,
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    /// Per-device request buckets for MQTT requests.
    throttle: Mutex<KeyedBuckets<DeviceId>>,
    /// New versions, live (the console's event bus).
    events: EventSink,
}

impl ShadowService {
    /// A service over `store`, publishing through `broker`; starts its
    /// writer thread (it ends when the service is dropped).
    pub fn new(
        store: Arc<FleetStore>,
        broker: BrokerHandle,
        limits: ShadowLimits,
    ) -> ShadowService {
        let (jobs, rx) = mpsc::channel(SHADOW_QUEUE);
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            store: store.clone(),
            limits,
            counters: counters.clone(),
        };
        if let Err(error) = std::thread::Builder::new()
            .name("shadow-writer".into())
            .spawn(move || writer.run(rx))
        {
            // Without a writer every request fails with `Stopped`.
            warn!(%error, "cannot start the shadow writer thread");
        }
        ShadowService {
            store,
            broker,
            limits,
            jobs,
            counters,
            throttle: Mutex::new(KeyedBuckets::new(
                ShadowConfig::default().requests_per_device,
            )),
            events: EventSink::default(),
        }
    }

    /// Where new shadow versions are reported live (the console's event bus).
    pub fn events(&self) -> &EventSink {
        &self.events
    }

    /// Reports that `device`'s shadow is now at `version`.
    fn emit(&self, device: &DeviceId, version: u64) {
        self.events.emit(|| {
            FleetEvent::Shadow(ShadowChange {
                device: device.to_string(),
                version,
                at_ms: now_ms(),
            })
        });
    }

    /// Reports a deletion (its document carries the new version).
    fn emit_deleted(&self, device: &DeviceId, document: &Value) {
        if let Some(version) = document.get("version").and_then(Value::as_u64) {
            self.emit(device, version);
        }
    }

    /// The same service with `config` applied.
    pub fn with_config(self, config: ShadowConfig) -> ShadowService {
        ShadowService {
            throttle: Mutex::new(KeyedBuckets::new(config.requests_per_device)),
            ..self
        }
    }

    /// Takes one of `device`'s request tokens at `now` (unix ms).
    fn admit(&self, device: &DeviceId, now: u64) -> Result<(), ShadowServiceError> {
        let mut throttle = self
            .throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if throttle.len() >= TRACKED_DEVICES {
            throttle.retain_recent(now);
        }
        throttle
            .try_take(device, now)
            .map_err(|retry_after_ms| ShadowServiceError::TooManyRequests { retry_after_ms })
    }

    /// Counters of the writer.
    pub fn stats(&self) -> ShadowStats {
        ShadowStats {
            updates: self.counters.updates.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
        }
    }

    /// The stored shadow of `device` (a new, empty one if it has none yet).
    /// Reads the store directly: call it off the event loop (the HTTP API
    /// does, on the blocking pool).
    pub fn get(&self, device: &DeviceId) -> Result<Shadow, ShadowServiceError> {
        require_device(&self.store, device)?;
        load(&self.store, device)
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Job,
    ) -> oneshot::Receiver<Result<T, ShadowServiceError>> {
        let (tx, rx) = oneshot::channel();
        // A send error drops `tx`: the receiver then reports `Stopped`.
        let _ = self.jobs.send(make(tx)).await;
        rx
    }

    /// Applies `request` to the shadow of `device`, stores it and publishes
    /// the accepted document, the delta and the documents.
    pub async fn update(
        &self,
        device: &DeviceId,
        request: UpdateRequest,
    ) -> Result<UpdateAccepted, ShadowServiceError> {
        let device = device.clone();
        let rx = self
            .submit(|reply| Job::Update {
                device: device.clone(),
                request,
                reply,
            })
            .await;
        let accepted = rx.await.map_err(|_| ShadowServiceError::Stopped)??;
        self.announce(&device, &accepted, &[]).await;
        Ok(accepted)
    }

    /// Deletes the shadow of `device` (see [`Shadow::delete`]: the version
    /// stays and grows by one) and tells the device on
    /// `$shadow/{id}/delete/accepted`; `None` if it had no shadow.
    pub async fn delete(&self, device: &DeviceId) -> Result<Option<Value>, ShadowServiceError> {
        let id = device.clone();
        let rx = self
            .submit(|reply| Job::Delete {
                device: id,
                client_token: None,
                reply,
            })
            .await;
        let deleted = rx.await.map_err(|_| ShadowServiceError::Stopped)??;
        if let Some(document) = &deleted {
            self.emit_deleted(device, document);
            let topic = format!("$shadow/{}/delete/accepted", device.as_str());
            let _ = self.send_traced(&topic, document, &[]).await;
        }
        Ok(deleted)
    }

    /// Publishes what an accepted update tells the device and applications.
    async fn announce(&self, device: &DeviceId, accepted: &UpdateAccepted, trace: &[UserProperty]) {
        self.emit(device, accepted.version);
        let base = format!("$shadow/{}/update", device.as_str());
        let _ = self
            .send_traced(&format!("{base}/accepted"), &accepted.accepted, trace)
            .await;
        if let Some(delta) = &accepted.delta {
            let _ = self
                .send_traced(&format!("{base}/delta"), delta, trace)
                .await;
        }
        let _ = self
            .send_traced(&format!("{base}/documents"), &accepted.documents, trace)
            .await;
    }

    /// Publishes `body` on `topic` with the `trace` user properties.
    async fn send_traced(
        &self,
        topic: &str,
        body: &Value,
        trace: &[UserProperty],
    ) -> Result<(), BrokerStopped> {
        let properties = Properties {
            user_properties: trace.to_vec(),
            ..Properties::default()
        };
        self.broker
            .publish_at_least_once(
                topic.into(),
                Bytes::from(body.to_string()),
                properties.into(),
            )
            .await
    }

    /// Answers `$shadow/+/update` and `$shadow/+/get` until the broker stops.
    pub async fn run(self: Arc<Self>) -> Result<(), BrokerStopped> {
        let mut client: InternalClient = self.broker.connect_internal("shadow").await?;
        client
            .subscribe("$shadow/+/update", QoS::AtLeastOnce)
            .await?;
        client.subscribe("$shadow/+/get", QoS::AtLeastOnce).await?;
        client
            .subscribe("$shadow/+/delete", QoS::AtLeastOnce)
            .await?;
        // Requests are submitted here and answered, in order, by the
        // answering loop once their commit is done.
        let (pending_tx, mut pending_rx) = mpsc::channel::<Pending>(PIPELINE);
        let answers = async {
            while let Some(pending) = pending_rx.recv().await {
                self.answer(pending).await?;
            }
            Ok::<(), BrokerStopped>(())
        };
        let requests = async {
            while let Some(publish) = client.recv().await {
                if let Some(pending) = self.submit_request(&publish).await
                    && pending_tx.send(pending).await.is_err()
                {
                    break;
                }
            }
            drop(pending_tx);
            Ok::<(), BrokerStopped>(())
        };
        let (answered, _) = tokio::join!(answers, requests);
        answered
    }

    /// Parses one request from a device and hands it to the writer.
    async fn submit_request(&self, publish: &Publish) -> Option<Pending> {
        let mut parts = publish.topic.split('/');
        let (Some("$shadow"), Some(id), Some(action), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let device = DeviceId::new(id).ok()?;
        let trace = trace_properties(&publish.properties.user_properties);
        let action = match action {
            "update" => "update",
            "get" => "get",
            "delete" => "delete",
            _ => return None,
        };
        let waiting = match self.admit(&device, now_ms()).map(|()| action) {
            Err(throttled) => Waiting::Failed(throttled),
            Ok("update") => match UpdateRequest::parse(&publish.payload, &self.limits) {
                Ok(request) => Waiting::Update(
                    self.submit(|reply| Job::Update {
                        device: device.clone(),
                        request,
                        reply,
                    })
                    .await,
                ),
                Err(rejected) => Waiting::Failed(ShadowServiceError::Rejected(rejected)),
            },
            Ok("delete") => match GetRequest::parse(&publish.payload, &self.limits) {
                Ok(request) => Waiting::Delete(
                    self.submit(|reply| Job::Delete {
                        device: device.clone(),
                        client_token: request.client_token,
                        reply,
                    })
                    .await,
                ),
                Err(rejected) => Waiting::Failed(ShadowServiceError::Rejected(rejected)),
            },
            Ok(_get) => match GetRequest::parse(&publish.payload, &self.limits) {
                Ok(request) => Waiting::Get(
                    request.client_token,
                    self.submit(|reply| Job::Get {
                        device: device.clone(),
                        reply,
                    })
                    .await,
                ),
                Err(rejected) => Waiting::Failed(ShadowServiceError::Rejected(rejected)),
            },
        };
        Some(Pending {
            device,
            action,
            payload: publish.payload.clone(),
            trace,
            waiting,
        })
    }

    /// Publishes the answer to one request once the writer has it.
    async fn answer(&self, pending: Pending) -> Result<(), BrokerStopped> {
        let Pending {
            device,
            action,
            payload,
            trace,
            waiting,
        } = pending;
        let id = device.as_str();
        let base = format!("$shadow/{id}/{action}");
        let outcome = match waiting {
            Waiting::Update(rx) => match rx.await {
                Ok(Ok(accepted)) => {
                    self.announce(&device, &accepted, &trace).await;
                    return Ok(());
                }
                Ok(Err(error)) => Err(error),
                Err(_) => Err(ShadowServiceError::Stopped),
            },
            Waiting::Get(token, rx) => match rx.await {
                Ok(Ok(shadow)) => Ok(shadow.get_document(token.as_deref(), now_ms())),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(ShadowServiceError::Stopped),
            },
            Waiting::Delete(rx) => match rx.await {
                Ok(Ok(Some(document))) => {
                    self.emit_deleted(&device, &document);
                    Ok(document)
                }
                Ok(Ok(None)) => Err(ShadowServiceError::NoShadow(id.to_string())),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(ShadowServiceError::Stopped),
            },
            Waiting::Failed(error) => Err(error),
        };
        match outcome {
            Ok(document) => {
                self.send_traced(&format!("{base}/accepted"), &document, &trace)
                    .await
            }
            Err(error) => {
                let body = rejection(&error, &payload, now_ms());
                if !matches!(
                    error,
                    ShadowServiceError::Rejected(_)
                        | ShadowServiceError::UnknownDevice(_)
                        | ShadowServiceError::NoShadow(_)
                        | ShadowServiceError::TooManyRequests { .. }
                ) {
                    warn!(%error, device = id, "shadow request failed");
                }
                self.send_traced(&format!("{base}/rejected"), &body, &trace)
                    .await
            }
        }
    }
}

/// A device's request handed to the writer, waiting for its answer.
struct Pending {
    device: DeviceId,
    action: &'static str,
    payload: Bytes,
    trace: Vec<UserProperty>,
    waiting: Waiting,
}

enum Waiting {
    Update(oneshot::Receiver<Result<UpdateAccepted, ShadowServiceError>>),
    Get(
        Option<String>,
        oneshot::Receiver<Result<Shadow, ShadowServiceError>>,
    ),
    Delete(oneshot::Receiver<Result<Option<Value>, ShadowServiceError>>),
    Failed(ShadowServiceError),
}

/// The `rejected` body for `error`, echoing the request's client token when it has one.
fn rejection(error: &ShadowServiceError, payload: &[u8], now: u64) -> Value {
    match error {
        ShadowServiceError::Rejected(rejected) => rejected.to_json(now),
        other => {
            let code = match other {
                ShadowServiceError::UnknownDevice(_) | ShadowServiceError::NoShadow(_) => 404,
                ShadowServiceError::TooManyRequests { .. } => 429,
                _ => 500,
            };
            let token = serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v.get("clientToken").cloned());
            let mut body = json!({"code": code, "message": other.to_string(), "timestamp": now});
            if let (Some(token), Some(map)) = (token, body.as_object_mut()) {
                map.insert("clientToken".into(), token);
            }
            body
        }
    }
}
