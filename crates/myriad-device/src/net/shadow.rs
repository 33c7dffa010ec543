//! Shadow sync (`[shadow]`): the device's shadow kept in step through two programs, on the
//! one MQTT connection, with [`myriad_agent::shadow::ShadowSync`] doing the protocol (versions,
//! conflicts, offline changes merged) and [`ShadowStore`] keeping the copy in
//! `{state_dir}/shadow` across restarts.
//!
//! - `apply` runs with the desired fields that differ from reported (a JSON object on stdin)
//!   whenever the platform's delta brings some (and after each connect, from the fresh copy);
//!   exit 0 means applied: its stdout, when a JSON object, is reported, else the fields
//!   themselves are. Another exit (or a timeout: the program is killed) reports nothing, so
//!   the delta stays and comes back after the next connect.
//! - `report` runs every `report_every_secs`; its stdout (a JSON object) is the device's
//!   state: the top-level keys that changed since its last run are reported (removed keys as
//!   `null`). Reports made while offline are merged and sent after the next connect.
//!
//! The copy is saved after each change and before anything is published.
//!
//! # Limits
//!
//! | limit | value |
//! |---|---|
//! | program output read | [`MAX_OUTPUT`] (16 KiB: two shadow sections) |
//! | shadow messages waiting | [`QUEUED_MESSAGES`] (16; more are dropped and counted by the client; a `get` after the next connect repairs the copy) |
//! | sections, nesting, saved copy | as [`myriad_agent::shadow`] (8 KiB each, 6 levels, 64 KiB) |

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use myriad_agent::client::{Client, ClientBuilder, ConnState, Message, Qos};
use myriad_agent::config::ShadowSettings;
use myriad_agent::fs::RealFs;
use myriad_agent::shadow::{Action, ShadowStore, ShadowSync};
use serde_json::{Map, Value};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::program::run_program;

/// Most bytes of a program's stdout read.
pub const MAX_OUTPUT: usize = 16 * 1024;
/// Shadow messages waiting to be handled.
pub const QUEUED_MESSAGES: usize = 16;
/// The pause before a patch the platform put off (429, 5xx) is sent again.
const RETRY_PAUSE: Duration = Duration::from_secs(5);

type Object = Map<String, Value>;

/// Subscribes the shadow's answer topics when `[shadow]` is configured.
pub(super) fn declare(
    builder: &mut ClientBuilder,
    id: &str,
    settings: Option<&ShadowSettings>,
) -> Result<Option<Receiver<Message>>> {
    if settings.is_none() {
        return Ok(None);
    }
    Ok(Some(builder.subscribe(
        &format!("$shadow/{id}/+/+"),
        Qos::AtLeastOnce,
        QUEUED_MESSAGES,
    )?))
}

/// Loads the saved copy (or starts an empty one) and starts the sync task.
pub(super) fn start(
    rt: &Runtime,
    client: Client,
    id: &str,
    settings: ShadowSettings,
    state_dir: &Path,
    rx: Receiver<Message>,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>> {
    let store = ShadowStore::new(&state_dir.join("shadow"));
    let sync = match store.load(&RealFs, id) {
        Ok(Some(sync)) => sync,
        Ok(None) => ShadowSync::new(id)?,
        Err(e) => {
            tracing::warn!(error = %e, "saved shadow copy unusable, starting empty (the platform's copy is read at connect)");
            ShadowSync::new(id)?
        }
    };
    let task = Task {
        client,
        settings,
        store,
        sync,
        last_state: None,
    };
    Ok(rt.spawn(task.run(rx, cancel)))
}

struct Task {
    client: Client,
    settings: ShadowSettings,
    store: ShadowStore,
    sync: ShadowSync,
    /// The `report` program's last output.
    last_state: Option<Object>,
}

impl Task {
    async fn run(mut self, mut rx: Receiver<Message>, cancel: CancellationToken) {
        let mut state = self.client.watch_state();
        let mut epoch = 0;
        let mut report_tick = super::every(Duration::from_secs(self.settings.report_every_secs));
        let mut retry: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let actions = tokio::select! {
                () = cancel.cancelled() => return,
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = *state.borrow_and_update();
                    match now {
                        ConnState::Up { epoch: e, .. } if e != epoch => {
                            epoch = e;
                            self.sync.on_connected(rand_nonce())
                        }
                        ConnState::Down => {
                            self.sync.on_disconnected();
                            Vec::new()
                        }
                        _ => Vec::new(),
                    }
                }
                m = rx.recv() => {
                    let Some(m) = m else { return };
                    match self.sync.on_message(&m.topic, &m.payload) {
                        Ok(actions) => actions,
                        Err(e) => {
                            tracing::warn!(topic = %m.topic, error = %e, "shadow message ignored");
                            Vec::new()
                        }
                    }
                }
                _ = report_tick.tick(), if !self.settings.report.is_empty() => {
                    self.report_state().await
                }
                () = async { if let Some(r) = retry.as_mut() { r.await } }, if retry.is_some() => {
                    retry = None;
                    self.sync.flush()
                }
            };
            if self.act(actions).await {
                retry = Some(Box::pin(tokio::time::sleep(RETRY_PAUSE)));
            }
        }
    }

    /// Carries out `actions` (and what applying a delta leads to); true when a put-off patch
    /// waits for a retry.
    async fn act(&mut self, actions: Vec<Action>) -> bool {
        let mut queue = std::collections::VecDeque::from(actions);
        let mut retry = false;
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Publish { topic, payload } => {
                    // Saved before it leaves: a crash resends what the copy says is waiting.
                    self.save();
                    if let Err(e) = self.client.publish(topic, payload, Qos::AtLeastOnce).await {
                        tracing::warn!(error = %e, "shadow publish not queued");
                    }
                }
                Action::Apply(fields) => queue.extend(self.apply(fields).await),
                Action::Rejected {
                    code,
                    message,
                    kept,
                } => {
                    tracing::warn!(code, message = %message, kept, "shadow request refused");
                    retry |= kept;
                }
            }
        }
        self.save();
        retry
    }

    fn save(&mut self) {
        if self.sync.is_dirty()
            && let Err(e) = self.store.save(&RealFs, &mut self.sync)
        {
            tracing::warn!(error = %e, "shadow copy not saved");
        }
    }

    /// Runs `apply` with `fields`; the actions of reporting what it applied.
    async fn apply(&mut self, fields: Object) -> Vec<Action> {
        if self.settings.apply.is_empty() {
            let fields = Value::Object(fields).to_string();
            tracing::info!(fields = %fields, "shadow delta (no [shadow] apply program)");
            return Vec::new();
        }
        let input = Value::Object(fields.clone()).to_string();
        let out = match run_program(
            &self.settings.apply,
            Some(input.into_bytes()),
            self.settings.timeout_secs,
            MAX_OUTPUT,
        )
        .await
        {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "shadow apply failed; the delta stays");
                return Vec::new();
            }
        };
        let patch = match serde_json::from_slice::<Value>(&out) {
            Ok(Value::Object(o)) if !o.is_empty() => o,
            _ => fields,
        };
        self.report(patch)
    }

    /// Runs `report` and reports the top-level keys that changed since its last run.
    async fn report_state(&mut self) -> Vec<Action> {
        let out = match run_program(
            &self.settings.report,
            None,
            self.settings.timeout_secs,
            MAX_OUTPUT,
        )
        .await
        {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "shadow report program failed");
                return Vec::new();
            }
        };
        let state = match serde_json::from_slice::<Value>(&out) {
            Ok(Value::Object(o)) => o,
            _ => {
                tracing::warn!("shadow report program: stdout is not a JSON object");
                return Vec::new();
            }
        };
        let patch = changed_keys(self.last_state.as_ref(), &state);
        self.last_state = Some(state);
        if patch.is_empty() {
            return Vec::new();
        }
        self.report(patch)
    }

    fn report(&mut self, patch: Object) -> Vec<Action> {
        match self.sync.report(patch) {
            Ok(actions) => actions,
            Err(e) => {
                tracing::warn!(error = %e, "shadow report refused");
                Vec::new()
            }
        }
    }
}

/// The top-level keys of `now` that differ from `before` (all of them without a `before`),
/// and `null` for the keys `now` no longer has.
fn changed_keys(before: Option<&Object>, now: &Object) -> Object {
    let mut patch = Object::new();
    for (k, v) in now {
        if before.and_then(|b| b.get(k)) != Some(v) {
            patch.insert(k.clone(), v.clone());
        }
    }
    if let Some(before) = before {
        for k in before.keys() {
            if !now.contains_key(k) {
                patch.insert(k.clone(), Value::Null);
            }
        }
    }
    patch
}

fn rand_nonce() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn changed_keys_reports_changes_and_removals() {
        let a = obj(json!({"fw": "1.0", "temp": 20, "mode": "eco"}));
        assert_eq!(changed_keys(None, &a), a);
        let b = obj(json!({"fw": "1.0", "temp": 21, "fan": true}));
        assert_eq!(
            Value::Object(changed_keys(Some(&a), &b)),
            json!({"temp": 21, "fan": true, "mode": null})
        );
        assert!(changed_keys(Some(&b), &b).is_empty());
    }
}
