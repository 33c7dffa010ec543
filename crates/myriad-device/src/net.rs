//! The agent's network mode on the device's one MQTT connection ([`myriad_agent::client`]:
//! MQTT 5 with a 3.1.1 fallback, persistent session, full-jitter reconnects), for OTA
//! notifications and reports, the download over HTTP ([`http`], `Range` resume) or over MQTT
//! in chunks ([`chunks`], `[mqtt] download = "mqtt"`), and, with a `[telemetry]` table, the
//! store-and-forward telemetry pump and samplers ([`sample`]), and with `[[commands]]` the
//! command handlers ([`commands`]). One connection, because a
//! second one with the same client id would take the first one's place at the broker.
//!
//! After the boot decision the agent connects as its device (client id = user name = the
//! device id), subscribes `$ota/{id}/notify`, publishes the boot's reports (SUCCEEDED /
//! ROLLED_BACK / FAILED of a trial or a discarded install) and `$ota/{id}/get` after each
//! connect. On a notification it reports `DOWNLOADING` (done / total) while it downloads the
//! full image (or the rollout's delta when its base is the running image) into
//! `{state_dir}/download` (a partial file of the same image resumes), `VERIFYING`,
//! `INSTALLING` ([`Agent::install`] with the notification's manifest), then `REBOOTING`,
//! waits for the broker's acknowledgements and exits 0. A refused manifest or source is
//! reported as the core classifies it (`REJECTED` / `FAILED`), a failed download as `FAILED`;
//! the agent then keeps waiting for the next notification.
//!
//! A notification of a rollout whose final outcome the boot state holds
//! ([`myriad_agent::BootState::outcome`]: confirmed, rolled back, or failed after writing
//! began) is answered with that outcome again, not installed again: the platform notifies a
//! device again until it has its final report, so a report lost to a crash or a broken
//! connection arrives after the next connect. A notification of the image already running
//! is answered SUCCEEDED. A cancel notice (`{"rollout", "cancel": true}`) stops a download
//! of that rollout between two reads (the partial file stays for a later resume) and keeps
//! that rollout from being installed by a late notification.
//!
//! # Limits
//!
//! | limit | value |
//! |---|---|
//! | notification | [`MAX_NOTIFICATION`] (64 KiB; larger ones are dropped; MQTT packets up to 1 MiB are read) |
//! | download | the notification's size, at most [`MAX_IMAGE_SIZE`]; the signed manifest must agree |
//! | HTTP download attempts | [`http::DOWNLOAD_ATTEMPTS`] (5) per notification, each resuming with `Range`; then FAILED |
//! | MQTT chunk tries | [`chunks::CHUNK_TRIES`] (20) in a row without a byte, [`chunks::CHUNK_TIMEOUT`] (10 s) each; then FAILED |
//! | unsynced download bytes | [`partial::SYNC_EVERY`] (8 MiB) |
//! | report reason | [`MAX_REASON`] bytes (cut at a character boundary) |
//! | queued notifications | [`MAX_QUEUED_NOTES`] (others dropped; `$ota/{id}/get` asks again) |

mod chunks;
mod commands;
mod http;
mod link;
mod partial;
mod program;
mod sample;
mod shadow;
mod status;

/// An interval whose late tick is followed by a whole period (no burst of catch-up ticks):
/// what every periodic task of the agent (samplers, health, status, shadow reports) runs on.
fn every(period: std::time::Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Waits for `tick`'s next tick; `false` if `cancel` fires first.
async fn next_tick(tick: &mut tokio::time::Interval, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        _ = tick.tick() => true,
    }
}

use std::collections::HashMap;
use std::fs::File;

use anyhow::{Context, Result};
use base64::Engine;
use myriad_agent::backoff::BackoffConfig;
use myriad_agent::client::{ClientBuilder, ClientConfig, Protocol, TlsConfig};
use myriad_agent::config::{
    CommandHandler, DownloadVia, MqttConfig, MqttProtocol, ShadowSettings, TelemetrySettings,
};
use myriad_agent::fs::RealFs;
use myriad_agent::{Agent, AgentError, Report, Source};
use myriad_ota::delta::MAX_IMAGE_SIZE;
use myriad_ota::rollout::DeviceState;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use link::Link;
use partial::Partial;

/// Largest notification handled (bytes); larger ones are read and dropped.
pub const MAX_NOTIFICATION: usize = 64 * 1024;
/// Longest reason in a report (bytes).
pub const MAX_REASON: usize = 1024;
/// Most notifications waiting while the agent works on one.
pub const MAX_QUEUED_NOTES: usize = 16;

/// A notification on `$ota/{id}/notify`.
#[derive(Debug, Deserialize)]
struct Notice {
    rollout: String,
    /// Which notification of the rollout this is (a retry comes with a higher one).
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    cancel: bool,
    artifact: Option<NoticeArtifact>,
    url: Option<String>,
    manifest: Option<String>,
    delta: Option<NoticeDelta>,
}

/// A rollout's delta offer: taken when its base is the active image.
#[derive(Debug, Deserialize)]
struct NoticeDelta {
    #[serde(default)]
    id: String,
    base_sha256: String,
    size: u64,
    sha256: String,
    url: String,
    manifest: String,
}

#[derive(Debug, Deserialize)]
struct NoticeArtifact {
    #[serde(default)]
    id: String,
    size: u64,
    sha256: String,
}

/// What to download: the file id (for MQTT chunks), the signed URL (relative to the API
/// base, for HTTP), its size and SHA-256 (hex), and the rollout it is for.
struct Wanted<'a> {
    file: &'a str,
    url: &'a str,
    size: u64,
    sha256: &'a str,
    rollout: &'a str,
}

/// Why a download stopped.
enum Stop {
    /// A cancel notice for its rollout arrived.
    Canceled,
    /// It failed (reported FAILED).
    Failed(anyhow::Error),
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The device's one MQTT connection ([`myriad_agent::client`]) with the OTA subscriptions,
/// and the telemetry pump and samplers when configured. The OTA loop runs on the calling
/// thread; the connection, the pump and the samplers are tasks of a small tokio runtime, all
/// bound to one cancellation token.
struct Device {
    rt: tokio::runtime::Runtime,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Device {
    /// Keeps the tasks a service started; when it could not start, stops the others and
    /// returns its error.
    fn add(mut self, started: Result<Vec<tokio::task::JoinHandle<()>>>) -> Result<Device> {
        match started {
            Ok(tasks) => {
                self.tasks.extend(tasks);
                Ok(self)
            }
            Err(e) => {
                self.shutdown();
                Err(e)
            }
        }
    }

    /// Stops every task (the connection sends DISCONNECT) and waits a little for them.
    fn shutdown(self) {
        self.cancel.cancel();
        let tasks = self.tasks;
        self.rt.block_on(async move {
            let all = async move {
                for t in tasks {
                    let _ = t.await;
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), all).await;
        });
        self.rt.shutdown_timeout(std::time::Duration::from_secs(1));
    }
}

fn client_config(m: &MqttConfig) -> ClientConfig {
    let mut c = ClientConfig::new(m.host.clone(), m.port, m.id.clone());
    c.credentials = m.password.clone().map(|p| (m.id.clone(), p));
    c.tls = m.tls_ca.clone().map(|ca| TlsConfig {
        ca_file: ca,
        client_cert: m.tls_cert.clone(),
        client_key: m.tls_key.clone(),
    });
    c.protocol = match m.protocol {
        MqttProtocol::Auto => Protocol::Auto,
        MqttProtocol::V5 => Protocol::V5,
        MqttProtocol::V311 => Protocol::V311,
    };
    c.keep_alive_secs = m.keep_alive_secs;
    c.backoff = BackoffConfig {
        base_ms: m.reconnect_min_ms,
        cap_ms: m.reconnect_max_ms,
        ..BackoffConfig::default()
    };
    c
}

/// Connects and follows notifications until an install asks for the "reboot".
pub fn run(
    agent: Agent<RealFs>,
    m: &MqttConfig,
    boot_reports: Vec<Report>,
    telemetry: Option<TelemetrySettings>,
    handlers: Vec<CommandHandler>,
    shadow_settings: Option<ShadowSettings>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .thread_name("agent-net")
        .enable_all()
        .build()
        .context("starting the agent's runtime")?;
    let cancel = CancellationToken::new();
    let mut builder = ClientBuilder::new(client_config(m));
    let inbox = link::declare(&mut builder, m, rt.handle())?;
    let command_rx = commands::declare(&mut builder, &m.id, &handlers)?;
    let shadow_rx = shadow::declare(&mut builder, &m.id, shadow_settings.as_ref())?;
    let (client, conn_task) = {
        let _guard = rt.enter();
        builder.start(cancel.clone())?
    };
    let mut device = Device {
        rt,
        cancel,
        tasks: vec![conn_task],
    };
    if let Some(t) = telemetry {
        let counter = agent.state().counter;
        let started = sample::start(
            &device.rt,
            client.clone(),
            &m.id,
            t,
            counter,
            device.cancel.clone(),
        );
        device = device.add(started)?;
    }
    let state_dir = agent.config().state_dir.clone();
    if let Some(rx) = command_rx {
        let started = commands::start(
            &device.rt,
            client.clone(),
            &m.id,
            handlers,
            &state_dir,
            rx,
            device.cancel.clone(),
        );
        device = device.add(started.map(|task| vec![task]))?;
    }
    if let (Some(rx), Some(settings)) = (shadow_rx, shadow_settings) {
        let started = shadow::start(
            &device.rt,
            client.clone(),
            &m.id,
            settings,
            &state_dir,
            rx,
            device.cancel.clone(),
        );
        device = device.add(started.map(|task| vec![task]))?;
    }
    let firmware = status::Firmware {
        version: agent.state().image.version.clone(),
        counter: agent.state().counter,
        slot: agent.state().active.name(),
    };
    device.tasks.extend(status::start(
        &device.rt,
        client.clone(),
        &m.id,
        m.status_every_secs,
        firmware,
        agent.config().state_dir.clone(),
        device.cancel.clone(),
    ));
    let link = link::link(client, m, device.rt.handle());
    let r = ota(agent, m, boot_reports, &link, inbox);
    device.shutdown();
    r
}

/// The OTA loop: follows notifications until an install asks for the "reboot".
fn ota(
    mut agent: Agent<RealFs>,
    m: &MqttConfig,
    boot_reports: Vec<Report>,
    link: &Link,
    mut inbox: link::Inbox,
) -> Result<()> {
    // The highest attempt of each rollout this process has finished: a late copy of that
    // notification is not installed again, a retry (a higher attempt) is.
    let mut finished: HashMap<String, u32> = HashMap::new();
    for r in &boot_reports {
        link.report(r);
    }
    let http = http::client();
    loop {
        let note = inbox.next()?;
        if note.cancel {
            finished.insert(note.rollout, u32::MAX);
            continue;
        }
        if finished
            .get(&note.rollout)
            .is_some_and(|&done| note.attempt <= done)
        {
            continue;
        }
        // A final outcome saved in the boot state: the platform did not get it; send it again.
        if let Some(outcome) = agent.state().outcome(&note.rollout)
            && outcome.state != DeviceState::Failed
        {
            tracing::info!(rollout = %note.rollout, state = outcome.state.as_str(), "reporting the saved outcome again");
            link.report(&outcome.clone());
            finished.insert(note.rollout, u32::MAX);
            continue;
        }
        let attempt = note.attempt;
        let (Some(art), Some(url), Some(manifest)) = (&note.artifact, &note.url, &note.manifest)
        else {
            tracing::warn!(rollout = %note.rollout, "notification without artifact, url or manifest, ignored");
            continue;
        };
        let rollout = note.rollout.clone();
        let active = hex(&agent.state().image.sha256);
        if art.sha256.eq_ignore_ascii_case(&active) {
            tracing::info!(rollout = %rollout, "already running this image");
            link.progress(&rollout, DeviceState::Succeeded, None, None);
            finished.insert(rollout, u32::MAX);
            continue;
        }
        // A delta whose base is the running image is taken instead of the full image.
        let (want, manifest, delta) = match &note.delta {
            Some(d) if d.base_sha256.eq_ignore_ascii_case(&active) => (
                Wanted {
                    file: &d.id,
                    url: &d.url,
                    size: d.size,
                    sha256: &d.sha256,
                    rollout: &rollout,
                },
                &d.manifest,
                true,
            ),
            _ => (
                Wanted {
                    file: &art.id,
                    url,
                    size: art.size,
                    sha256: &art.sha256,
                    rollout: &rollout,
                },
                manifest,
                false,
            ),
        };
        let envelope = match base64::engine::general_purpose::STANDARD.decode(manifest) {
            Ok(b) => b,
            Err(e) => {
                link.progress(
                    &rollout,
                    DeviceState::Rejected,
                    None,
                    Some(&format!("manifest: not base64: {e}")),
                );
                finished.insert(rollout, attempt);
                continue;
            }
        };
        let path = agent.config().state_dir.join("download");
        match download(&http, link, &mut inbox, m, &want, &path) {
            Ok(()) => {}
            Err(Stop::Canceled) => {
                tracing::info!(rollout = %rollout, "canceled during the download");
                finished.insert(rollout, u32::MAX);
                continue;
            }
            Err(Stop::Failed(e)) => {
                link.progress(
                    &rollout,
                    DeviceState::Failed,
                    None,
                    Some(&format!("download: {e:#}")),
                );
                continue;
            }
        }
        link.progress(&rollout, DeviceState::Verifying, None, None);
        link.progress(&rollout, DeviceState::Installing, None, None);
        let file = File::open(&path).with_context(|| format!("{}", path.display()))?;
        let source = if delta {
            Source::Delta(file)
        } else {
            Source::Full(file)
        };
        tracing::info!(rollout = %rollout, delta, bytes = want.size, "installing");
        match agent.install(&envelope, &rollout, source) {
            Ok(()) => {
                partial::remove(&path);
                link.progress(&rollout, DeviceState::Rebooting, None, None);
                if !link.flush() {
                    tracing::warn!("reports not all acknowledged before the reboot");
                }
                tracing::info!(rollout = %rollout, "installed: rebooting (exit 0)");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, rollout = %rollout, "install refused");
                if matches!(e, AgentError::SourceMismatch { .. }) {
                    partial::remove(&path);
                }
                let queued = agent.take_reports();
                if queued.is_empty() {
                    link.progress(&rollout, DeviceState::Failed, None, Some(&e.to_string()));
                }
                for r in &queued {
                    link.report(r);
                }
                finished.insert(rollout, attempt);
            }
        }
    }
}

/// Downloads `want` into `path` the configured way, reporting `DOWNLOADING` as it goes.
fn download(
    http: &ureq::Agent,
    link: &Link,
    inbox: &mut link::Inbox,
    m: &MqttConfig,
    want: &Wanted<'_>,
    path: &std::path::Path,
) -> Result<(), Stop> {
    if want.size > MAX_IMAGE_SIZE {
        return Err(Stop::Failed(anyhow::anyhow!(
            "size {} over {MAX_IMAGE_SIZE}",
            want.size
        )));
    }
    let mut part = Partial::open(path, want.sha256, want.size).map_err(Stop::Failed)?;
    link.progress(
        want.rollout,
        DeviceState::Downloading,
        Some((part.have, part.total)),
        None,
    );
    if part.complete() {
        return Ok(());
    }
    match (m.download, &m.api) {
        (DownloadVia::Http, Some(api)) => http::download(http, link, inbox, api, want, &mut part),
        _ => chunks::download(link, inbox, want.file, m.chunk_bytes, want, &mut part),
    }
}
