//! Cloud-to-device commands over MQTT and for the HTTP API: the async
//! shell around the sans-IO [`Engine`].
//!
//! - commands are published (QoS 1) to `$commands/{device}/{name}`: MQTT
//!   5.0 devices get Response Topic `$commands/{device}/reply/{command_id}`,
//!   Correlation Data = the command id and a `command_id` user property;
//!   MQTT 3.1.1 devices get a JSON envelope carrying the id and reply
//!   topic (see [`Command::envelope_v311`]);
//! - the device's PUBACK comes back as a broker delivery receipt
//!   (`delivered`); its reply on the reply topic ends the command;
//! - every status change is stored (batched, see [`log`]) and published
//!   on `$events/commands/{device}/{command_id}`; an L1 command ending
//!   without success raises `$events/alarms/commands/{device}/{command_id}`;
//! - applications may also send commands by publishing a request to
//!   `$commands/request` (answered on their response topic);
//! - presence events (`$events/presence/{id}`) tell the engine which
//!   devices are online: a device coming online gets its queued L1 commands.

pub mod log;
mod request;

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use myriad_broker::core::receipts::DeliveryReceipt;
use myriad_broker::shell::{BrokerHandle, BrokerStopped};
use myriad_mqtt::{PacketProperties, Properties, Publish, QoS};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

pub use request::{CommandRequest, Targets};

use super::now_ms;
use super::presence::PresenceService;
use crate::commands::engine::BreakersSnapshot;
use crate::commands::{
    BatchId, BatchJob, BatchProgress, BatchTargets, Command, CommandId, CommandsConfig, Effect,
    Engine, EngineStats, Refused, Reply, ShadowReader,
};
use crate::events::{CommandChange, EventSink, FleetEvent};
use crate::registry::{DeviceId, DeviceQuery};
use crate::store::{FleetStore, FleetStoreError};
use log::CommandLog;

/// Why a command operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No registered device has this id.
    #[error("device {0} not found")]
    UnknownDevice(String),
    /// No command (or batch) with this id.
    #[error("{0} not found")]
    NotFound(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Refused by a rate limit or under pressure.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The command is final already.
    #[error("command {} is already {}", .0.id, .0.status.as_str())]
    AlreadyFinal(Box<Command>),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] FleetStoreError),
    /// The command log or the broker stopped.
    #[error("the command service stopped")]
    Stopped,
}

/// Reads the `reported` section of shadows from the store.
struct StoreShadows<'a>(&'a FleetStore);

impl ShadowReader for StoreShadows<'_> {
    fn reported(&self, device: &str) -> Option<Value> {
        let id = DeviceId::new(device).ok()?;
        let bytes = self.0.get_shadow(&id).ok()??;
        let document: Value = serde_json::from_slice(&bytes).ok()?;
        document.get("reported").cloned()
    }
}

/// Commands of all devices. See the module docs.
pub struct CommandService {
    engine: Mutex<Engine>,
    store: Arc<FleetStore>,
    broker: BrokerHandle,
    presence: Arc<PresenceService>,
    log: CommandLog,
    /// Wakes the timer task when a deadline may have moved earlier.
    timers: Notify,
    /// Effects of the restart rules, published when the service runs.
    recovered: Mutex<Vec<Effect>>,
    /// Itself, for tasks started from `&self` (fan-outs requested over MQTT).
    this: Weak<CommandService>,
    /// Status changes, live (the console's event bus).
    events: EventSink,
}

impl std::fmt::Debug for CommandService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandService").finish_non_exhaustive()
    }
}

/// The reason the commands of a cancelled batch are cancelled with.
pub const BATCH_CANCELLED: &str = "batch_cancelled";

/// Records a fan-out lets the command log fall behind by at most.
const BATCH_LOG_BACKLOG: u64 = 4_096;
/// Most targets of a fan-out submitted before their records are committed.
const BATCH_CHUNK: usize = 256;
/// Least time between two stored resume points of a fan-out, ms.
const BATCH_CHECKPOINT_MS: u64 = 500;

impl CommandService {
    /// Loads the commands that were not final at the last stop and applies
    /// the restart rules (see [`crate::commands::restart`]).
    pub fn start(
        config: CommandsConfig,
        store: Arc<FleetStore>,
        broker: BrokerHandle,
        presence: Arc<PresenceService>,
    ) -> Result<Arc<CommandService>, CommandError> {
        let now = now_ms();
        let mut engine = Engine::new(config, now);
        let stored = store.active_commands()?;
        let count = stored.len();
        let recovered = engine.restore(stored, now);
        if count > 0 {
            info!(
                commands = count,
                changed = recovered.len(),
                "commands recovered after a restart"
            );
        }
        let log = CommandLog::start(store.clone()).map_err(|_| CommandError::Stopped)?;
        Ok(Arc::new_cyclic(|this| CommandService {
            engine: Mutex::new(engine),
            store,
            broker,
            presence,
            log,
            timers: Notify::new(),
            recovered: Mutex::new(recovered),
            this: this.clone(),
            events: EventSink::default(),
        }))
    }

    /// Where status changes are reported live (the console's event bus).
    pub fn events(&self) -> &EventSink {
        &self.events
    }

    fn self_arc(&self) -> Option<Arc<CommandService>> {
        self.this.upgrade()
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings.
    pub fn config(&self) -> CommandsConfig {
        self.engine().config().clone()
    }

    /// Brings the engine's view of `device` in line with the presence
    /// service (the presence event on MQTT may still be on its way).
    async fn sync_presence(&self, device: &DeviceId) {
        let online = self.presence.is_online(device);
        let effects = {
            let mut engine = self.engine();
            match (online, engine.is_online(device.as_str())) {
                (true, false) => engine.device_online(device.as_str(), now_ms()),
                (false, true) => {
                    engine.device_offline(device.as_str());
                    Vec::new()
                }
                _ => Vec::new(),
            }
        };
        self.apply(effects).await;
    }

    /// Sends a command to one registered device. An accepted L1 command is
    /// stored before this returns.
    pub async fn submit(
        &self,
        device: &DeviceId,
        request: CommandRequest,
    ) -> Result<Command, CommandError> {
        if self.store.get_device(device)?.is_none() {
            return Err(CommandError::UnknownDevice(device.as_str().to_string()));
        }
        let config = self.config();
        let spec = request.into_spec(&config, now_ms())?;
        let durable = spec.priority == crate::commands::Priority::L1;
        self.sync_presence(device).await;
        let (command, effects) = {
            let shadows = StoreShadows(&self.store);
            self.engine()
                .submit(device.as_str(), spec, None, now_ms(), &shadows)?
        };
        let seq = self.apply(effects).await;
        self.timers.notify_one();
        if durable && !self.log.committed(seq).await {
            return Err(CommandError::Stopped);
        }
        Ok(command)
    }

    /// Starts a fan-out to `targets`; returns at once with the batch,
    /// whose progress [`CommandService::batch`] reports. The targets are
    /// read page by page into a bounded queue and submitted at the pace
    /// the rate limits allow, so memory stays bounded for any group size.
    /// The batch (its command, targets and a resume point) is stored
    /// until every target is handled: a restart resumes it (see
    /// `CommandService::resume_batches`).
    pub fn submit_batch(
        self: &Arc<Self>,
        targets: Targets,
        request: CommandRequest,
    ) -> Result<BatchProgress, CommandError> {
        let config = self.config();
        let now = now_ms();
        let spec = request.into_spec(&config, now)?;
        targets.validate()?;
        let progress = BatchProgress {
            id: BatchId::generate(now),
            name: spec.name.clone(),
            priority: spec.priority,
            created_at: now,
            dispatched: false,
            targets: 0,
            refused: 0,
            statuses: Default::default(),
            cancelled: false,
        };
        let job = BatchJob {
            id: progress.id.clone(),
            spec,
            targets: match targets {
                Targets::Devices(devices) => BatchTargets::Devices(
                    devices
                        .into_iter()
                        .map(|d| d.as_str().to_string())
                        .collect(),
                ),
                Targets::Group(group) => BatchTargets::Group(group),
            },
            handled: 0,
            after: None,
        };
        self.engine().batch_started(progress.clone());
        let sender = self.clone();
        let first = progress.clone();
        tokio::spawn(async move {
            // Stored off the event loop (a commit waits for the disk), before
            // the first command of the batch is submitted.
            sender.store_checkpoint(first, Some(job.clone())).await;
            sender.start_dispatch(job, false);
        });
        Ok(progress)
    }

    /// Starts the reader and the sender of `job` from its resume point.
    fn start_dispatch(self: Arc<Self>, job: BatchJob, resumed: bool) {
        let (tx, rx) = mpsc::channel::<(u64, DeviceId)>(self.config().batch_buffer);
        let reader = self.clone();
        let targets = job.targets.clone();
        let (handled, after) = (job.handled, job.after.clone());
        tokio::spawn(async move { reader.read_targets(targets, handled, after, tx).await });
        tokio::spawn(async move { self.dispatch_batch(job, rx, resumed).await });
    }

    /// Resumes the batches a stop (kill -9 or SIGTERM) interrupted: their
    /// counters are rebuilt from the commands stored for them, and the
    /// targets from the stored resume point on get their command unless
    /// they already have one of the batch.
    async fn resume_batches(self: &Arc<Self>) {
        let store = self.store.clone();
        let jobs = match tokio::task::spawn_blocking(move || store.batch_jobs()).await {
            Ok(Ok(jobs)) => jobs,
            Ok(Err(error)) => {
                warn!(%error, "cannot read the batches to resume");
                return;
            }
            Err(_) => return,
        };
        for job in jobs {
            let store = self.store.clone();
            let id = job.id.clone();
            let read = tokio::task::spawn_blocking(move || {
                Ok::<_, FleetStoreError>((
                    store.get_batch(&id)?,
                    store.batch_command_statuses(&id)?,
                ))
            })
            .await;
            let (stored, commands) = match read {
                Ok(Ok(found)) => found,
                Ok(Err(error)) => {
                    warn!(%error, batch = %job.id, "cannot resume a batch");
                    continue;
                }
                Err(_) => continue,
            };
            if stored.as_ref().is_some_and(|p| p.cancelled) {
                // Cancelled while a resume point was being stored.
                if let Some(progress) = stored {
                    self.store_checkpoint(progress, None).await;
                }
                continue;
            }
            let mut progress = stored.unwrap_or_else(|| BatchProgress {
                id: job.id.clone(),
                name: job.spec.name.clone(),
                priority: job.spec.priority,
                created_at: now_ms(),
                dispatched: false,
                targets: 0,
                refused: 0,
                statuses: Default::default(),
                cancelled: false,
            });
            {
                let mut engine = self.engine();
                progress.dispatched = false;
                progress.targets = progress.refused + commands.len() as u64;
                progress.statuses.clear();
                for (command, status) in commands {
                    let status = engine.get(&command).map_or(status, |c| c.status);
                    *progress.statuses.entry(status).or_default() += 1;
                }
                engine.batch_started(progress.clone());
            }
            info!(batch = %job.id, targets = progress.targets, "resuming a fan-out batch");
            self.clone().start_dispatch(job, true);
        }
    }

    /// Stores a batch's progress and what it still has to do, on the
    /// blocking pool.
    async fn store_checkpoint(&self, progress: BatchProgress, job: Option<BatchJob>) {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || {
            store.put_batch_checkpoint(&progress, job.as_ref())
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "cannot store a batch"),
            Err(_) => warn!("the batch store task failed"),
        }
    }

    /// Feeds the batch's devices into `tx` (bounded: waits for the sender)
    /// with their position, from position `handled` (a list) or after
    /// device `after` (a group, read in id order).
    async fn read_targets(
        self: Arc<Self>,
        targets: BatchTargets,
        handled: u64,
        after: Option<String>,
        tx: mpsc::Sender<(u64, DeviceId)>,
    ) {
        match targets {
            BatchTargets::Devices(devices) => {
                for (position, device) in devices.into_iter().enumerate().skip(handled as usize) {
                    let Ok(device) = DeviceId::new(device) else {
                        continue;
                    };
                    if tx.send((position as u64, device)).await.is_err() {
                        return;
                    }
                }
            }
            BatchTargets::Group(group) => {
                let mut after = after.and_then(|a| DeviceId::new(a).ok());
                let mut position = handled;
                loop {
                    let query = DeviceQuery {
                        group: Some(group.clone()),
                        limit: 500,
                        after: after.take(),
                        ..DeviceQuery::default()
                    };
                    let store = self.store.clone();
                    let page =
                        tokio::task::spawn_blocking(move || store.list_devices(&query)).await;
                    let page = match page {
                        Ok(Ok(page)) => page,
                        Ok(Err(error)) => {
                            warn!(%error, "cannot read the devices of a batch");
                            return;
                        }
                        Err(_) => return,
                    };
                    for device in page.items {
                        if tx.send((position, device.id)).await.is_err() {
                            return;
                        }
                        position += 1;
                    }
                    match page.next {
                        Some(next) => after = Some(next),
                        None => return,
                    }
                }
            }
        }
    }

    /// Submits one command per device read from `rx`, waiting (not
    /// refusing) when a rate limit or the in-flight cap says so, or while
    /// the command log has more than [`BATCH_LOG_BACKLOG`] records to store.
    ///
    /// Targets are taken in chunks of up to [`BATCH_CHUNK`]: a chunk's
    /// command records are committed before any of its commands is
    /// published, so a device never gets a command the store does not
    /// know (a resumed batch would send it another). The resume point is
    /// stored at most every [`BATCH_CHECKPOINT_MS`], after the records of
    /// the targets it covers are committed; a resumed batch looks up each
    /// target past it and skips those that have a command of the batch.
    async fn dispatch_batch(
        self: Arc<Self>,
        mut job: BatchJob,
        mut rx: mpsc::Receiver<(u64, DeviceId)>,
        resumed: bool,
    ) {
        let batch = job.id.clone();
        let spec = job.spec.clone();
        let mut last_checkpoint = std::time::Instant::now();
        let mut chunk = Vec::with_capacity(BATCH_CHUNK);
        loop {
            chunk.clear();
            match rx.recv().await {
                Some(first) => chunk.push(first),
                None => break,
            }
            while chunk.len() < BATCH_CHUNK {
                match rx.try_recv() {
                    Ok(next) => chunk.push(next),
                    Err(_) => break,
                }
            }
            if !self.log.wait_backlog(BATCH_LOG_BACKLOG).await {
                return;
            }
            let mut effects = Vec::new();
            for (position, device) in chunk.drain(..) {
                job.handled = position + 1;
                if let BatchTargets::Group(_) = job.targets {
                    job.after = Some(device.as_str().to_string());
                }
                if resumed
                    && matches!(
                        self.store.batch_command(&batch, device.as_str()),
                        Ok(Some(_))
                    )
                {
                    continue;
                }
                let exists = matches!(self.store.get_device(&device), Ok(Some(_)));
                if !exists {
                    self.engine().batch_refused(&batch);
                    continue;
                }
                self.sync_presence(&device).await;
                loop {
                    let outcome = {
                        let shadows = StoreShadows(&self.store);
                        let mut engine = self.engine();
                        // Checked under the same lock as the submit: a
                        // cancel sweeps every command submitted before it.
                        if engine.batch_cancelled(&batch) {
                            break;
                        }
                        engine.submit(
                            device.as_str(),
                            spec.clone(),
                            Some(batch.clone()),
                            now_ms(),
                            &shadows,
                        )
                    };
                    match outcome {
                        Ok((_, more)) => {
                            effects.extend(more);
                            break;
                        }
                        Err(Refused::RateLimited { scope, .. }) if scope.starts_with("device") => {
                            // One device over its own limit does not hold up the batch.
                            self.engine().batch_refused(&batch);
                            break;
                        }
                        Err(refused) => {
                            // What the chunk has so far goes out before the wait.
                            if !self.apply_durable(std::mem::take(&mut effects)).await {
                                return;
                            }
                            let wait = refused.retry_after_ms().clamp(1, 1_000);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                    }
                }
            }
            if !self.apply_durable(effects).await {
                return;
            }
            self.timers.notify_one();
            if self.engine().batch_cancelled(&batch) {
                // [`CommandService::cancel_batch`] stored the batch without its job.
                return;
            }
            if last_checkpoint.elapsed() >= Duration::from_millis(BATCH_CHECKPOINT_MS) {
                last_checkpoint = std::time::Instant::now();
                let progress = self.engine().batch(&batch).cloned();
                if let Some(progress) = progress
                    && self.log.committed(self.log.last_seq()).await
                {
                    self.store_checkpoint(progress, Some(job.clone())).await;
                }
            }
        }
        let progress = {
            let mut engine = self.engine();
            if engine.batch_cancelled(&batch) {
                return;
            }
            engine.batch_dispatched(&batch);
            engine.batch(&batch).cloned()
        };
        if let Some(progress) = progress
            && self.log.committed(self.log.last_seq()).await
        {
            self.store_checkpoint(progress, None).await;
        }
    }

    /// Carries out `effects`, storing their command records before any
    /// command is published (see [`CommandService::dispatch_batch`]);
    /// false if the command log stopped.
    async fn apply_durable(&self, effects: Vec<Effect>) -> bool {
        if !effects.iter().any(|e| matches!(e, Effect::Publish(_))) {
            self.apply(effects).await;
            return true;
        }
        let (changes, rest): (Vec<Effect>, Vec<Effect>) = effects
            .into_iter()
            .partition(|e| matches!(e, Effect::Changed(_)));
        let seq = self.apply(changes).await;
        if !self.log.committed(seq).await {
            return false;
        }
        self.apply(rest).await;
        true
    }

    /// The command `id` as it stands now.
    pub fn get(&self, id: &CommandId) -> Result<Option<Command>, CommandError> {
        if let Some(command) = self.engine().get(id) {
            return Ok(Some(command.clone()));
        }
        if let Some(command) = self.log.pending(id) {
            return Ok(Some(command));
        }
        Ok(self.store.get_command(id)?)
    }

    /// Commands of `device`, newest first, older than `before`.
    pub fn list_for_device(
        &self,
        device: &DeviceId,
        before: Option<&CommandId>,
        limit: usize,
    ) -> Result<Vec<Command>, CommandError> {
        let stored = self
            .store
            .list_device_commands(device.as_str(), before, limit)?;
        let engine = self.engine();
        Ok(stored
            .into_iter()
            .map(|c| match engine.get(&c.id) {
                Some(live) => live.clone(),
                None => self.log.pending(&c.id).unwrap_or(c),
            })
            .collect())
    }

    /// Cancels a command that is not final.
    pub async fn cancel(&self, id: &CommandId) -> Result<Command, CommandError> {
        let cancelled = self.engine().cancel(id, now_ms());
        match cancelled {
            Some((command, effects)) => {
                self.apply(effects).await;
                self.timers.notify_one();
                Ok(command)
            }
            None => match self.get(id)? {
                Some(command) => Err(CommandError::AlreadyFinal(Box::new(command))),
                None => Err(CommandError::NotFound(format!("command {id}"))),
            },
        }
    }

    /// Cancels every command of `device` that is not final with `reason`
    /// (a deleted device); returns how many were cancelled.
    pub async fn cancel_device(&self, device: &DeviceId, reason: &str) -> usize {
        let effects = self
            .engine()
            .cancel_device(device.as_str(), reason, now_ms());
        let cancelled = effects
            .iter()
            .filter(|e| matches!(e, Effect::Changed(_)))
            .count();
        let seq = self.apply(effects).await;
        // Stored before the caller reports the device gone.
        if seq > 0 {
            self.log.committed(seq).await;
        }
        self.timers.notify_one();
        cancelled
    }

    /// Cancels batch `id` (`DELETE` on a batch): its targets not yet
    /// handled get no command, and its commands not final become
    /// `cancelled` with reason `batch_cancelled` (stored before this
    /// returns). The batch stays readable, marked `cancelled`, and is not
    /// resumed after a restart.
    pub async fn cancel_batch(&self, id: &BatchId) -> Result<BatchProgress, CommandError> {
        let Some(progress) = self.batch(id)? else {
            return Err(CommandError::NotFound(format!("batch {id}")));
        };
        let effects = {
            let mut engine = self.engine();
            if engine.batch(id).is_none() {
                engine.batch_started(progress);
            }
            engine.cancel_batch(id, BATCH_CANCELLED, now_ms())
        };
        let seq = self.apply(effects).await;
        if seq > 0 && !self.log.committed(seq).await {
            return Err(CommandError::Stopped);
        }
        self.timers.notify_one();
        let progress = self
            .engine()
            .batch(id)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("batch {id}")))?;
        self.store_checkpoint(progress.clone(), None).await;
        Ok(progress)
    }

    /// Progress of batch `id`.
    pub fn batch(&self, id: &BatchId) -> Result<Option<BatchProgress>, CommandError> {
        if let Some(progress) = self.engine().batch(id) {
            return Ok(Some(progress.clone()));
        }
        Ok(self.store.get_batch(id)?)
    }

    /// Breaker states now (for the API and metrics).
    pub fn breakers(&self) -> BreakersSnapshot {
        self.engine().breakers(now_ms())
    }

    /// Counters for metrics.
    pub fn stats(&self) -> EngineStats {
        self.engine().stats()
    }

    /// Carries out effects; returns the log sequence of the last stored record.
    async fn apply(&self, effects: Vec<Effect>) -> u64 {
        let mut seq = 0;
        for effect in effects {
            let outcome = match effect {
                Effect::Changed(command) => {
                    crate::metrics::command_changed(&command);
                    let change = self.events.is_listened().then(|| CommandChange {
                        id: command.id.to_string(),
                        device: command.device.clone(),
                        status: command.status.as_str().to_owned(),
                        at_ms: command
                            .timestamps
                            .get(&command.status)
                            .copied()
                            .unwrap_or_else(now_ms),
                    });
                    let event = event_body(&command);
                    let topic = format!("$events/commands/{}/{}", command.device, command.id);
                    seq = self.log.write(command);
                    if let Some(change) = change {
                        self.events.emit(|| FleetEvent::Command(change));
                    }
                    self.publish(topic, event, PacketProperties::new()).await
                }
                Effect::Publish(command) => self.publish_command(&command).await,
                Effect::Alarm(command) => {
                    let topic =
                        format!("$events/alarms/commands/{}/{}", command.device, command.id);
                    let body = json!({
                        "alarm": "command_failed",
                        "device": command.device,
                        "command_id": command.id,
                        "name": command.name,
                        "status": command.status,
                        "reason": command.reason,
                        "at": now_ms(),
                    });
                    self.publish(
                        topic,
                        Bytes::from(body.to_string()),
                        PacketProperties::new(),
                    )
                    .await
                }
            };
            if outcome.is_err() {
                break;
            }
        }
        seq
    }

    async fn publish_command(&self, command: &Command) -> Result<(), BrokerStopped> {
        let v311 = DeviceId::new(command.device.as_str())
            .ok()
            .and_then(|id| self.presence.get(&id))
            .is_some_and(|p| p.protocol == 4);
        let payload = if v311 {
            command.envelope_v311()
        } else {
            command.payload.to_bytes()
        };
        let properties = Properties {
            response_topic: Some(command.reply_topic().into()),
            correlation_data: Some(Bytes::copy_from_slice(command.id.as_str().as_bytes())),
            user_properties: vec![("command_id".into(), command.id.as_str().into())],
            message_expiry_interval: command.expires_at.map(|at| {
                (at.saturating_sub(now_ms()) / 1000).clamp(1, u64::from(u32::MAX)) as u32
            }),
            ..Properties::default()
        };
        self.publish(command.topic(), Bytes::from(payload), properties.into())
            .await
    }

    async fn publish(
        &self,
        topic: String,
        payload: Bytes,
        properties: PacketProperties,
    ) -> Result<(), BrokerStopped> {
        self.broker
            .publish_at_least_once(topic.into(), payload, properties)
            .await
    }

    /// Runs the service until the broker stops: replies, presence, app
    /// requests, delivery receipts and timers.
    pub async fn run(
        self: Arc<Self>,
        mut receipts: mpsc::UnboundedReceiver<DeliveryReceipt>,
    ) -> Result<(), BrokerStopped> {
        let mut client = self.broker.connect_internal("commands").await?;
        client
            .subscribe("$commands/+/reply/#", QoS::AtLeastOnce)
            .await?;
        client
            .subscribe("$events/presence/+", QoS::AtLeastOnce)
            .await?;
        client
            .subscribe("$commands/request", QoS::AtLeastOnce)
            .await?;
        let recovered =
            std::mem::take(&mut *self.recovered.lock().unwrap_or_else(|e| e.into_inner()));
        self.apply(recovered).await;
        self.seed_online().await;
        self.resume_batches().await;
        let timer = self.clone();
        tokio::spawn(async move { timer.run_timers().await });
        let receiver = self.clone();
        tokio::spawn(async move {
            while let Some(receipt) = receipts.recv().await {
                receiver.on_receipt(receipt).await;
            }
        });
        while let Some(publish) = client.recv().await {
            self.handle(publish).await;
        }
        Ok(())
    }

    /// Marks devices the presence service knows as online (and sends
    /// their queued L1 commands).
    async fn seed_online(&self) {
        let mut after: Option<DeviceId> = None;
        loop {
            let page = self.presence.list_online(after.as_ref(), 1_000);
            let now = now_ms();
            let mut effects = Vec::new();
            {
                let mut engine = self.engine();
                for device in &page.items {
                    effects.extend(engine.device_online(device.as_str(), now));
                }
            }
            self.apply(effects).await;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }

    async fn run_timers(self: Arc<Self>) {
        loop {
            let deadline = self.engine().next_deadline();
            let wait = match deadline {
                Some(at) => Duration::from_millis(at.saturating_sub(now_ms())),
                None => Duration::from_secs(3_600),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.timers.notified() => continue,
            }
            let effects = {
                let shadows = StoreShadows(&self.store);
                self.engine().tick(now_ms(), &shadows)
            };
            self.apply(effects).await;
        }
    }

    async fn on_receipt(&self, receipt: DeliveryReceipt) {
        let Some(id) = receipt
            .correlation_data
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(CommandId::parse)
        else {
            return;
        };
        let effects = self.engine().delivered(&id, &receipt.client_id, now_ms());
        self.apply(effects).await;
    }

    /// Handles one message of the internal client's subscriptions.
    async fn handle(&self, publish: Publish) {
        let topic = publish.topic.to_string();
        let parts: Vec<&str> = topic.split('/').collect();
        match parts.as_slice() {
            ["$commands", device, "reply", id] => {
                let Some(id) = CommandId::parse(id) else {
                    return;
                };
                let reply = Reply::parse(&publish.payload);
                let effects = self.engine().replied(&id, device, reply, now_ms());
                self.apply(effects).await;
                self.timers.notify_one();
            }
            ["$events", "presence", device] => {
                let online = serde_json::from_slice::<Value>(&publish.payload)
                    .ok()
                    .and_then(|v| v.get("online").and_then(Value::as_bool));
                match online {
                    Some(true) => {
                        let effects = self.engine().device_online(device, now_ms());
                        self.apply(effects).await;
                        self.timers.notify_one();
                    }
                    Some(false) => self.engine().device_offline(device),
                    None => {}
                }
            }
            ["$commands", "request"] => self.handle_request(publish).await,
            _ => {}
        }
    }
}

/// The status event of `command` (everything but the payload).
fn event_body(command: &Command) -> Bytes {
    let mut body = serde_json::to_value(command).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        map.remove("payload");
    }
    Bytes::from(body.to_string())
}
