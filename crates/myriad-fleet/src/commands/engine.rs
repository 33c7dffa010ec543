//! The command engine: every rule about commands, without I/O.
//!
//! The service feeds it requests, presence changes, delivery receipts,
//! device replies and clock ticks (unix ms); it answers with [`Effect`]s
//! for the service to carry out: publish a command to its device, store
//! and announce a changed command, raise an alarm. Only commands that are
//! not final are kept here; final ones are handed out once and forgotten.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::breaker::{Breaker, BreakerSnapshot};
use super::config::CommandsConfig;
use super::limits::{Bucket, KeyedBuckets};
use super::model::{
    BatchId, Command, CommandId, CommandSpec, CommandStatus, Priority, Reply, ResultSource,
};
use super::queue::DeviceQueues;
use super::restart;

/// Something the service must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish this command to its device (QoS 1).
    Publish(Command),
    /// Store this command and publish its status event.
    Changed(Command),
    /// An L1 command ended without success: publish an alarm.
    Alarm(Command),
}

/// Why a command was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A token bucket is empty.
    #[error("rate limit of {scope} exceeded; retry in {retry_after_ms} ms")]
    RateLimited {
        /// `class l3`, `device d1`, ...
        scope: String,
        /// When a token will be there.
        retry_after_ms: u64,
    },
    /// Too many commands in flight for this class.
    #[error("too many commands in flight for {priority}; retry in {retry_after_ms} ms")]
    Overloaded {
        /// The class refused.
        priority: &'static str,
        /// A suggested wait.
        retry_after_ms: u64,
    },
}

impl Refused {
    /// How long the caller should wait.
    pub fn retry_after_ms(&self) -> u64 {
        match self {
            Refused::RateLimited { retry_after_ms, .. }
            | Refused::Overloaded { retry_after_ms, .. } => *retry_after_ms,
        }
    }
}

/// Where the last reported state of a device comes from (the shadow store).
pub trait ShadowReader {
    /// The `reported` section of the device's shadow, if it has one.
    fn reported(&self, device: &str) -> Option<Value>;
}

/// Progress of one fan-out batch.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct BatchProgress {
    /// Its id.
    pub id: BatchId,
    /// The command's name.
    pub name: String,
    /// Its class.
    pub priority: Priority,
    /// When it was accepted (unix ms).
    pub created_at: u64,
    /// Whether every target has been handled.
    pub dispatched: bool,
    /// Targets handled so far (commands created plus refusals).
    pub targets: u64,
    /// Targets that got no command (unknown device, refused).
    pub refused: u64,
    /// Commands of the batch by current status.
    pub statuses: HashMap<CommandStatus, u64>,
    /// Whether the batch was cancelled: targets not yet handled get no
    /// command, its commands not final were cancelled.
    #[serde(default)]
    pub cancelled: bool,
}

/// Breaker states for the API and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakersSnapshot {
    /// One per class.
    pub classes: HashMap<Priority, BreakerSnapshot>,
    /// Per-device breakers that are not closed and idle.
    pub devices: Vec<DeviceBreaker>,
}

/// One device's breaker for one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceBreaker {
    /// The device.
    pub device: String,
    /// The class.
    pub priority: Priority,
    /// Its state.
    #[serde(flatten)]
    pub breaker: BreakerSnapshot,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Commands not final.
    pub active: usize,
    /// Commands sent and not final.
    pub in_flight: usize,
    /// L1 commands in device queues.
    pub queued_l1: usize,
    /// Devices known online.
    pub online_devices: usize,
}

/// A command that is not final, with its timer.
#[derive(Debug, Clone)]
struct Active {
    command: Command,
    /// When the engine must look at it again.
    wake_at: Option<u64>,
    /// Whether it counts in `in_flight` (sent at least once).
    in_flight: bool,
    /// Whether it holds a call on its breakers (to record or release).
    breaker_call: bool,
    /// When an L1 command not yet delivered is sent again.
    retry_at: Option<u64>,
}

impl Active {
    /// A command just taken on: not sent, no timer, no breaker call.
    fn new(command: Command) -> Active {
        Active {
            command,
            wake_at: None,
            in_flight: false,
            breaker_call: false,
            retry_at: None,
        }
    }
}

/// The engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: CommandsConfig,
    active: HashMap<CommandId, Active>,
    queues: DeviceQueues,
    online: HashSet<String>,
    timers: BTreeSet<(u64, CommandId)>,
    class_breakers: [Breaker; 3],
    device_breakers: HashMap<(String, Priority), Breaker>,
    class_limits: [Bucket; 3],
    device_limits: KeyedBuckets<String>,
    in_flight: usize,
    batches: HashMap<BatchId, BatchProgress>,
    last_sweep: u64,
}

/// Most finished batches kept in memory.
const MAX_BATCHES: usize = 1_000;
/// How often idle per-device rate limits and breakers are dropped (ms).
const SWEEP_INTERVAL_MS: u64 = 10_000;

impl Engine {
    /// An engine with no commands.
    pub fn new(config: CommandsConfig, now: u64) -> Engine {
        let breaker = Breaker::new(config.breaker_class);
        let limits = [&config.rate_l1, &config.rate_l2, &config.rate_l3];
        Engine {
            class_breakers: [breaker.clone(), breaker.clone(), breaker],
            class_limits: limits.map(|l| Bucket::full(l, now)),
            device_limits: KeyedBuckets::new(config.rate_device),
            config,
            active: HashMap::new(),
            queues: DeviceQueues::new(),
            online: HashSet::new(),
            timers: BTreeSet::new(),
            device_breakers: HashMap::new(),
            in_flight: 0,
            batches: HashMap::new(),
            last_sweep: now,
        }
    }

    /// The settings.
    pub fn config(&self) -> &CommandsConfig {
        &self.config
    }

    /// Takes over commands stored before a restart, applying the restart
    /// rules ([`restart`]); L1 commands are queued again in id order.
    pub fn restore(&mut self, mut commands: Vec<Command>, now: u64) -> Vec<Effect> {
        commands.sort_by(|a, b| a.id.cmp(&b.id));
        let mut effects = Vec::new();
        for mut command in commands {
            let changed = restart::recover(&mut command, now);
            if command.status.is_final() {
                if changed {
                    if command.priority == Priority::L1 {
                        effects.push(Effect::Alarm(command.clone()));
                    }
                    effects.push(Effect::Changed(command));
                }
                continue;
            }
            if changed {
                effects.push(Effect::Changed(command.clone()));
            }
            self.queues.push(&command.device, command.id.clone());
            let id = command.id.clone();
            self.active.insert(id.clone(), Active::new(command));
            self.arm(&id, now);
        }
        effects
    }

    /// Accepts `spec` for `device` at `now`, or refuses it (rate limits,
    /// pressure). Returns the command as accepted (it may already be final:
    /// dropped, failed fast or answered from the shadow) and the effects.
    pub fn submit(
        &mut self,
        device: &str,
        spec: CommandSpec,
        batch: Option<BatchId>,
        now: u64,
        shadows: &dyn ShadowReader,
    ) -> Result<(Command, Vec<Effect>), Refused> {
        let priority = spec.priority;
        self.check_pressure(priority)?;
        self.take_tokens(device, priority, now)?;
        let mut command = Command::new(
            CommandId::generate(now),
            device.to_string(),
            spec,
            batch,
            now,
        );
        if priority == Priority::L1 && command.expires_at.is_none() {
            command.expires_at = Some(now.saturating_add(self.config.l1_default_expiry_ms));
        }
        if let Some(batch) = &command.batch
            && let Some(progress) = self.batches.get_mut(batch)
        {
            progress.targets += 1;
            *progress.statuses.entry(CommandStatus::Queued).or_default() += 1;
        }
        let id = command.id.clone();
        let accepted = command.clone();
        let mut effects = vec![Effect::Changed(command.clone())];
        self.active.insert(id.clone(), Active::new(command));
        match priority {
            Priority::L1 => {
                let head = self.queues.push(device, id.clone());
                if head && self.online.contains(device) {
                    self.try_send(&id, now, &mut effects);
                }
                self.arm(&id, now);
            }
            Priority::L2 | Priority::L3 => {
                if !self.online.contains(device) {
                    self.fail_or_fallback(&id, now, "device_offline", shadows, &mut effects);
                } else if let Err(open) = self.breakers_allow(device, priority, now) {
                    let _ = open;
                    self.fail_or_fallback(&id, now, "breaker_open", shadows, &mut effects);
                } else {
                    self.send(&id, now, &mut effects);
                }
            }
        }
        let command = match self.active.get(&id) {
            Some(active) => active.command.clone(),
            None => last_changed(&effects, &id).unwrap_or(accepted),
        };
        Ok((command, effects))
    }

    fn check_pressure(&self, priority: Priority) -> Result<(), Refused> {
        let max = self.config.max_in_flight;
        let limit = match priority {
            Priority::L1 => return Ok(()),
            Priority::L2 => max,
            Priority::L3 => ((max as f64) * self.config.l3_pressure) as usize,
        };
        if self.in_flight >= limit {
            return Err(Refused::Overloaded {
                priority: priority.as_str(),
                retry_after_ms: 1_000,
            });
        }
        Ok(())
    }

    fn take_tokens(&mut self, device: &str, priority: Priority, now: u64) -> Result<(), Refused> {
        let limit = match priority {
            Priority::L1 => self.config.rate_l1,
            Priority::L2 => self.config.rate_l2,
            Priority::L3 => self.config.rate_l3,
        };
        let bucket = &mut self.class_limits[priority.index()];
        if let Err(wait) = bucket.try_take(&limit, now) {
            return Err(Refused::RateLimited {
                scope: format!("class {}", priority.as_str()),
                retry_after_ms: wait,
            });
        }
        let key = device.to_string();
        if let Err(wait) = self.device_limits.try_take(&key, now) {
            self.class_limits[priority.index()].give_back(&limit);
            return Err(Refused::RateLimited {
                scope: format!("device {device}"),
                retry_after_ms: wait,
            });
        }
        Ok(())
    }

    /// Checks (without taking a probe) that the class and device breakers let a call through.
    fn breakers_allow(&self, device: &str, priority: Priority, now: u64) -> Result<(), u64> {
        let class = &self.class_breakers[priority.index()];
        if !class.would_allow(now) {
            return Err(class.snapshot(now).retry_at.unwrap_or(now));
        }
        if priority != Priority::L3
            && let Some(b) = self.device_breakers.get(&(device.to_string(), priority))
            && !b.would_allow(now)
        {
            return Err(b.snapshot(now).retry_at.unwrap_or(now));
        }
        Ok(())
    }

    fn device_breaker(&mut self, device: &str, priority: Priority) -> &mut Breaker {
        let config = self.config.breaker_device;
        self.device_breakers
            .entry((device.to_string(), priority))
            .or_insert_with(|| Breaker::new(config))
    }

    /// Sends an L1 head if its breakers allow; otherwise it waits.
    fn try_send(&mut self, id: &CommandId, now: u64, effects: &mut Vec<Effect>) {
        let Some(active) = self.active.get(id) else {
            return;
        };
        let device = active.command.device.clone();
        match self.breakers_allow(&device, Priority::L1, now) {
            Ok(()) => self.send(id, now, effects),
            Err(retry_at) => {
                if let Some(active) = self.active.get_mut(id) {
                    active.retry_at = Some(retry_at.max(now + 1));
                }
            }
        }
    }

    /// Publishes the command (its breakers allow it).
    fn send(&mut self, id: &CommandId, now: u64, effects: &mut Vec<Effect>) {
        let Some(active) = self.active.get(id) else {
            return;
        };
        let (device, priority, needs_call) = (
            active.command.device.clone(),
            active.command.priority,
            !active.breaker_call,
        );
        if needs_call {
            let _ = self.class_breakers[priority.index()].try_call(now);
            if priority != Priority::L3 {
                let _ = self.device_breaker(&device, priority).try_call(now);
            }
        }
        let initial = self.config.retry_initial_ms;
        let max = self.config.retry_max_ms;
        let Some(active) = self.active.get_mut(id) else {
            return;
        };
        active.breaker_call = true;
        if !active.in_flight {
            active.in_flight = true;
            self.in_flight += 1;
        }
        let old = active.command.status;
        active.command.attempts += 1;
        active.command.status = CommandStatus::Sent;
        active.command.timestamps.insert(CommandStatus::Sent, now);
        if priority == Priority::L1 {
            let shift = active.command.attempts.saturating_sub(1).min(20);
            let wait = initial.saturating_mul(1u64 << shift).min(max);
            active.retry_at = Some(now + wait);
        }
        let command = active.command.clone();
        self.count_transition(&command, old);
        effects.push(Effect::Changed(command.clone()));
        effects.push(Effect::Publish(command));
        self.arm(id, now);
    }

    /// L2 reads are answered from the shadow; everything else fails.
    fn fail_or_fallback(
        &mut self,
        id: &CommandId,
        now: u64,
        reason: &str,
        shadows: &dyn ShadowReader,
        effects: &mut Vec<Effect>,
    ) {
        let Some(active) = self.active.get(id) else {
            return;
        };
        let command = &active.command;
        if command.priority == Priority::L2 && command.read {
            let reported = shadows.reported(&command.device);
            self.finish(
                id,
                now,
                CommandStatus::Succeeded,
                Some(reason),
                |c| {
                    c.result = Some(reported.unwrap_or(Value::Null));
                    c.source = Some(ResultSource::Shadow);
                },
                effects,
            );
        } else {
            self.finish(
                id,
                now,
                CommandStatus::Failed,
                Some(reason),
                |_| {},
                effects,
            );
        }
    }

    /// Moves a command to a final status, releases what it held and sends
    /// the next L1 command of its device.
    fn finish(
        &mut self,
        id: &CommandId,
        now: u64,
        status: CommandStatus,
        reason: Option<&str>,
        update: impl FnOnce(&mut Command),
        effects: &mut Vec<Effect>,
    ) {
        let Some(mut active) = self.active.remove(id) else {
            return;
        };
        if let Some(at) = active.wake_at.take() {
            self.timers.remove(&(at, id.clone()));
        }
        if active.in_flight {
            self.in_flight -= 1;
        }
        let old = active.command.status;
        let mut command = active.command;
        command.set_status(status, now, reason);
        update(&mut command);
        if active.breaker_call {
            let outcome = match status {
                CommandStatus::Succeeded => Some(true),
                CommandStatus::Failed | CommandStatus::TimedOut => Some(false),
                _ => None,
            };
            self.record_breakers(&command.device, command.priority, now, outcome);
        }
        self.count_transition(&command, old);
        if command.priority == Priority::L1 {
            if status != CommandStatus::Succeeded && status != CommandStatus::Cancelled {
                effects.push(Effect::Alarm(command.clone()));
            }
            let next = self.queues.remove(&command.device, id);
            effects.push(Effect::Changed(command.clone()));
            if let Some(next) = next
                && self.online.contains(&command.device)
            {
                self.try_send(&next, now, effects);
                self.arm(&next, now);
            }
        } else {
            effects.push(Effect::Changed(command));
        }
    }

    fn record_breakers(
        &mut self,
        device: &str,
        priority: Priority,
        now: u64,
        outcome: Option<bool>,
    ) {
        let class = &mut self.class_breakers[priority.index()];
        match outcome {
            Some(success) => class.record(now, success),
            None => class.release(),
        }
        if priority != Priority::L3 {
            let breaker = self.device_breaker(device, priority);
            match outcome {
                Some(success) => breaker.record(now, success),
                None => breaker.release(),
            }
        }
    }

    fn count_transition(&mut self, command: &Command, old: CommandStatus) {
        let Some(batch) = &command.batch else {
            return;
        };
        let Some(progress) = self.batches.get_mut(batch) else {
            return;
        };
        if old != command.status {
            if let Some(count) = progress.statuses.get_mut(&old) {
                *count = count.saturating_sub(1);
            }
            *progress.statuses.entry(command.status).or_default() += 1;
        }
    }

    /// When the command must be looked at next, re-armed.
    fn arm(&mut self, id: &CommandId, now: u64) {
        let Some(active) = self.active.get_mut(id) else {
            return;
        };
        if let Some(at) = active.wake_at.take() {
            self.timers.remove(&(at, id.clone()));
        }
        let c = &active.command;
        let sent_at = c
            .timestamps
            .get(&CommandStatus::Sent)
            .copied()
            .unwrap_or(now);
        let wake = match (c.priority, c.status) {
            (Priority::L1, CommandStatus::Queued) => min_some(c.expires_at, active.retry_at),
            (Priority::L1, CommandStatus::Sent) => min_some(c.expires_at, active.retry_at),
            (Priority::L1, CommandStatus::Delivered) => {
                let delivered = c
                    .timestamps
                    .get(&CommandStatus::Delivered)
                    .copied()
                    .unwrap_or(now);
                Some(delivered.saturating_add(c.timeout_ms))
            }
            (_, CommandStatus::Sent | CommandStatus::Delivered) => {
                Some(sent_at.saturating_add(c.timeout_ms))
            }
            _ => None,
        };
        if let Some(at) = wake {
            active.wake_at = Some(at);
            self.timers.insert((at, id.clone()));
        }
    }

    /// The earliest time [`Engine::tick`] has work (unix ms): a timer, or
    /// the next sweep of idle per-device limits and breakers while there
    /// are any (a fan-out to offline devices leaves no timer but one bucket
    /// per device).
    pub fn next_deadline(&self) -> Option<u64> {
        let timer = self.timers.first().map(|(at, _)| *at);
        let sweep = (!self.device_limits.is_empty() || !self.device_breakers.is_empty())
            .then_some(self.last_sweep + SWEEP_INTERVAL_MS);
        match (timer, sweep) {
            (Some(timer), Some(sweep)) => Some(timer.min(sweep)),
            (timer, sweep) => timer.or(sweep),
        }
    }

    /// Runs every timer due at `now`: reply timeouts, L1 resends and expiries.
    pub fn tick(&mut self, now: u64, shadows: &dyn ShadowReader) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some((at, id)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id.clone()));
            if let Some(active) = self.active.get_mut(&id) {
                active.wake_at = None;
            }
            self.wake(&id, now, shadows, &mut effects);
        }
        if now.saturating_sub(self.last_sweep) >= SWEEP_INTERVAL_MS {
            self.last_sweep = now;
            self.device_limits.retain_recent(now);
            self.device_breakers.retain(|_, b| !b.is_idle(now));
        }
        effects
    }

    fn wake(
        &mut self,
        id: &CommandId,
        now: u64,
        shadows: &dyn ShadowReader,
        effects: &mut Vec<Effect>,
    ) {
        let Some(active) = self.active.get(id) else {
            return;
        };
        let c = &active.command;
        let (priority, status, device) = (c.priority, c.status, c.device.clone());
        let expired = c.is_expired(now);
        let attempts_left = self.config.max_attempts == 0 || c.attempts < self.config.max_attempts;
        let retry_due = active.retry_at.is_some_and(|at| at <= now);
        match (priority, status) {
            (Priority::L1, CommandStatus::Queued | CommandStatus::Sent) if expired => {
                self.finish(
                    id,
                    now,
                    CommandStatus::Expired,
                    Some("expired"),
                    |_| {},
                    effects,
                );
            }
            (Priority::L1, CommandStatus::Sent) if retry_due && !attempts_left => {
                self.finish(
                    id,
                    now,
                    CommandStatus::Failed,
                    Some("not_delivered"),
                    |_| {},
                    effects,
                );
            }
            (Priority::L1, CommandStatus::Queued | CommandStatus::Sent) => {
                if retry_due {
                    if let Some(active) = self.active.get_mut(id) {
                        active.retry_at = None;
                    }
                    let head = self.queues.is_head(&device, id);
                    if head && self.online.contains(&device) {
                        self.try_send(id, now, effects);
                    } else if status == CommandStatus::Sent {
                        // Offline now: it waits for the device, sent again on reconnect.
                        if let Some(active) = self.active.get_mut(id) {
                            active.retry_at = None;
                        }
                    }
                }
                self.arm(id, now);
            }
            (Priority::L1, CommandStatus::Delivered) => {
                self.finish(
                    id,
                    now,
                    CommandStatus::TimedOut,
                    Some("no_reply"),
                    |_| {},
                    effects,
                );
            }
            (_, CommandStatus::Sent | CommandStatus::Delivered) => {
                let read =
                    priority == Priority::L2 && self.active.get(id).is_some_and(|a| a.command.read);
                if read {
                    self.fail_or_fallback(id, now, "timed_out", shadows, effects);
                } else {
                    self.finish(
                        id,
                        now,
                        CommandStatus::TimedOut,
                        Some("no_reply"),
                        |_| {},
                        effects,
                    );
                }
            }
            _ => self.arm(id, now),
        }
    }

    /// A device went online: its queued L1 head (or an unacknowledged one) is sent.
    pub fn device_online(&mut self, device: &str, now: u64) -> Vec<Effect> {
        self.online.insert(device.to_string());
        let mut effects = Vec::new();
        if let Some(head) = self.queues.head(device).cloned() {
            let undelivered = self.active.get(&head).is_some_and(|a| {
                matches!(
                    a.command.status,
                    CommandStatus::Queued | CommandStatus::Sent
                )
            });
            if undelivered {
                self.try_send(&head, now, &mut effects);
                self.arm(&head, now);
            }
        }
        effects
    }

    /// A device went offline.
    pub fn device_offline(&mut self, device: &str) {
        self.online.remove(device);
    }

    /// Whether the engine takes `device` as online.
    pub fn is_online(&self, device: &str) -> bool {
        self.online.contains(device)
    }

    /// The device acknowledged the command (PUBACK).
    pub fn delivered(&mut self, id: &CommandId, device: &str, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(active) = self.active.get_mut(id) else {
            return effects;
        };
        if active.command.device != device || active.command.status != CommandStatus::Sent {
            return effects;
        }
        active.retry_at = None;
        active.command.status = CommandStatus::Delivered;
        active
            .command
            .timestamps
            .insert(CommandStatus::Delivered, now);
        let command = active.command.clone();
        self.count_transition(&command, CommandStatus::Sent);
        effects.push(Effect::Changed(command));
        self.arm(id, now);
        effects
    }

    /// The device replied to the command.
    pub fn replied(&mut self, id: &CommandId, device: &str, reply: Reply, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(active) = self.active.get(id) else {
            return effects;
        };
        if active.command.device != device || active.command.status == CommandStatus::Queued {
            return effects;
        }
        if active.command.status == CommandStatus::Sent {
            // The reply proves delivery even if the receipt is still on its way.
            let mut delivered = self.delivered(id, device, now);
            effects.append(&mut delivered);
        }
        if reply.in_progress {
            // A progress report: the command stays open, its report is
            // its current result (published with the status event).
            if let Some(active) = self.active.get_mut(id) {
                active.command.result = reply.result;
                active.command.source = Some(ResultSource::Device);
                effects.push(Effect::Changed(active.command.clone()));
            }
            return effects;
        }
        let status = if reply.success {
            CommandStatus::Succeeded
        } else {
            CommandStatus::Failed
        };
        let reason = (!reply.success).then_some("device_error");
        self.finish(
            id,
            now,
            status,
            reason,
            |c| {
                c.result = reply.result;
                c.source = Some(ResultSource::Device);
            },
            &mut effects,
        );
        effects
    }

    /// Cancels a command that is not final; `None` if the engine does not hold it.
    pub fn cancel(&mut self, id: &CommandId, now: u64) -> Option<(Command, Vec<Effect>)> {
        self.active.get(id)?;
        let mut effects = Vec::new();
        self.finish(
            id,
            now,
            CommandStatus::Cancelled,
            Some("cancelled"),
            |_| {},
            &mut effects,
        );
        let command = last_changed(&effects, id)?;
        Some((command, effects))
    }

    /// Cancels every command of `device` that is not final (queued ones
    /// included) with `reason`, in id order. The device is taken offline
    /// first, so no queued command is sent while the others are cancelled.
    pub fn cancel_device(&mut self, device: &str, reason: &str, now: u64) -> Vec<Effect> {
        self.device_offline(device);
        self.cancel_where(|command| command.device == device, reason, now)
    }

    /// Cancels batch `batch`: marks it cancelled (no more of its targets
    /// are submitted) and cancels its commands that are not final with
    /// `reason`, in id order. The caller follows the batch already
    /// ([`Engine::batch_started`]).
    pub fn cancel_batch(&mut self, batch: &BatchId, reason: &str, now: u64) -> Vec<Effect> {
        if let Some(progress) = self.batches.get_mut(batch) {
            progress.cancelled = true;
        }
        self.cancel_where(|command| command.batch.as_ref() == Some(batch), reason, now)
    }

    /// Cancels every command that is not final and that `selects` picks,
    /// with `reason`, in id order.
    fn cancel_where(
        &mut self,
        selects: impl Fn(&Command) -> bool,
        reason: &str,
        now: u64,
    ) -> Vec<Effect> {
        let mut ids: Vec<CommandId> = self
            .active
            .iter()
            .filter(|(_, a)| selects(&a.command))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        let mut effects = Vec::new();
        for id in ids {
            self.finish(
                &id,
                now,
                CommandStatus::Cancelled,
                Some(reason),
                |_| {},
                &mut effects,
            );
        }
        effects
    }

    /// Whether batch `batch` was cancelled.
    pub fn batch_cancelled(&self, batch: &BatchId) -> bool {
        self.batches.get(batch).is_some_and(|b| b.cancelled)
    }

    /// The command, if it is not final.
    pub fn get(&self, id: &CommandId) -> Option<&Command> {
        self.active.get(id).map(|a| &a.command)
    }

    /// Starts following a fan-out batch.
    pub fn batch_started(&mut self, progress: BatchProgress) {
        if self.batches.len() >= MAX_BATCHES {
            let oldest = self
                .batches
                .values()
                .filter(|b| b.dispatched)
                .map(|b| b.id.clone())
                .min();
            if let Some(oldest) = oldest {
                self.batches.remove(&oldest);
            }
        }
        self.batches.insert(progress.id.clone(), progress);
    }

    /// A target of the batch got no command.
    pub fn batch_refused(&mut self, batch: &BatchId) {
        if let Some(progress) = self.batches.get_mut(batch) {
            progress.targets += 1;
            progress.refused += 1;
        }
    }

    /// Every target of the batch was handled.
    pub fn batch_dispatched(&mut self, batch: &BatchId) {
        if let Some(progress) = self.batches.get_mut(batch) {
            progress.dispatched = true;
        }
    }

    /// Progress of a batch this engine follows.
    pub fn batch(&self, batch: &BatchId) -> Option<&BatchProgress> {
        self.batches.get(batch)
    }

    /// Breaker states at `now`.
    pub fn breakers(&self, now: u64) -> BreakersSnapshot {
        let classes = Priority::ALL
            .iter()
            .map(|p| (*p, self.class_breakers[p.index()].snapshot(now)))
            .collect();
        let mut devices: Vec<DeviceBreaker> = self
            .device_breakers
            .iter()
            .map(|((device, priority), b)| DeviceBreaker {
                device: device.clone(),
                priority: *priority,
                breaker: b.snapshot(now),
            })
            .filter(|d| {
                d.breaker.state != super::breaker::BreakerState::Closed
                    || d.breaker.window_failures > 0
            })
            .collect();
        devices.sort_by(|a, b| (&a.device, a.priority).cmp(&(&b.device, b.priority)));
        BreakersSnapshot { classes, devices }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            active: self.active.len(),
            in_flight: self.in_flight,
            queued_l1: self.queues.len(),
            online_devices: self.online.len(),
        }
    }
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The last stored version of `id` among `effects`.
fn last_changed(effects: &[Effect], id: &CommandId) -> Option<Command> {
    effects.iter().rev().find_map(|e| match e {
        Effect::Changed(c) if &c.id == id => Some(c.clone()),
        _ => None,
    })
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
