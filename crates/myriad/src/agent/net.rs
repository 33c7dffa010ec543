//! The agent's network mode: MQTT (rumqttc, persistent session, 3.1.1) for notifications
//! and reports, HTTP (ureq) for the image download with `Range` resume.
//!
//! After the boot decision the agent connects as its device (client id = user name = the
//! device id), subscribes `$ota/{id}/notify`, publishes the boot's reports (SUCCEEDED /
//! ROLLED_BACK / FAILED of a trial or a discarded install) and `$ota/{id}/get` after each
//! connect. On a notification it reports `DOWNLOADING` (done / total) while it downloads the
//! full image (or the rollout's delta when its base is the running image) into
//! `{state_dir}/download` (a partial file of the same image resumes with a
//! `Range` request), `VERIFYING`, `INSTALLING` ([`Agent::install`] with the notification's
//! manifest), then `REBOOTING`, waits for the broker's acknowledgements and exits 0. A refused
//! manifest or source is reported as the core classifies it (`REJECTED` / `FAILED`), a failed
//! download as `FAILED`; the agent then keeps waiting for the next notification.
//!
//! # Limits
//!
//! | limit | value |
//! |---|---|
//! | notification | [`MAX_NOTIFICATION`] (64 KiB; larger ones are dropped; MQTT packets up to 1 MiB are read) |
//! | download | the notification's `artifact.size`, at most [`MAX_IMAGE_SIZE`]; the signed manifest must agree |
//! | download attempts | 5 per notification, each resuming with `Range`; then FAILED |
//! | report reason | [`MAX_REASON`] bytes (cut at a character boundary) |
//! | queued notifications | [`MAX_QUEUED_NOTES`] (others dropped; `$ota/{id}/get` asks again) |

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use myriad_agent::config::MqttConfig;
use myriad_agent::fs::RealFs;
use myriad_agent::{Agent, AgentError, Report, Source};
use myriad_ota::delta::MAX_IMAGE_SIZE;
use myriad_ota::rollout::DeviceState;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;

/// Largest notification handled (bytes); larger ones are read and dropped.
pub const MAX_NOTIFICATION: usize = 64 * 1024;
/// Largest MQTT packet read (the broker's default `mqtt.max_packet_size`, 1 MiB, and a
/// little room for the header): a larger one breaks the connection in rumqttc, so the
/// notification limit is enforced on payloads below this one.
const MAX_PACKET: usize = 1024 * 1024 + 1024;
/// Longest reason in a report (bytes).
pub const MAX_REASON: usize = 1024;
/// Most notifications waiting while the agent works on one.
pub const MAX_QUEUED_NOTES: usize = 16;
/// Download attempts per notification (each resumes where the last one broke).
const DOWNLOAD_ATTEMPTS: u32 = 5;
/// How long the agent waits for the broker to acknowledge its reports before it "reboots".
const ACK_WAIT: Duration = Duration::from_secs(10);

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
    base_sha256: String,
    size: u64,
    sha256: String,
    url: String,
    manifest: String,
}

#[derive(Debug, Deserialize)]
struct NoticeArtifact {
    size: u64,
    sha256: String,
}

/// The connection: the client, and counts of QoS 1 publishes sent and acknowledged.
struct Link {
    client: Client,
    id: String,
    sent: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
}

impl Link {
    fn progress(
        &self,
        rollout: &str,
        state: DeviceState,
        done: Option<(u64, u64)>,
        reason: Option<&str>,
    ) {
        let mut body = serde_json::json!({"rollout": rollout, "state": state.as_str()});
        if let Some((done, total)) = done {
            body["done"] = done.into();
            body["total"] = total.into();
        }
        if let Some(r) = reason {
            body["reason"] = cut(r, MAX_REASON).into();
        }
        self.sent.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.client.publish(
            format!("$ota/{}/progress", self.id),
            QoS::AtLeastOnce,
            false,
            body.to_string(),
        ) {
            self.sent.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "progress report not queued");
        }
    }

    fn report(&self, r: &Report) {
        self.progress(&r.rollout, r.state, None, r.reason.as_deref());
    }

    /// Waits until every publish so far is acknowledged (at most [`ACK_WAIT`]).
    fn flush(&self) -> bool {
        let deadline = Instant::now() + ACK_WAIT;
        while self.acked.load(Ordering::SeqCst) < self.sent.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
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

/// Connects and follows notifications until an install asks for the "reboot".
pub fn run(mut agent: Agent<RealFs>, m: &MqttConfig, boot_reports: Vec<Report>) -> Result<()> {
    let mut opts = MqttOptions::new(m.id.clone(), m.host.clone(), m.port);
    opts.set_credentials(m.id.clone(), m.password.clone())
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET, 8 * 1024);
    let (client, mut conn) = Client::new(opts, 64);
    let sent = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(MAX_QUEUED_NOTES);
    let notify = format!("$ota/{}/notify", m.id);
    {
        let (client, sent, acked, notify) =
            (client.clone(), sent.clone(), acked.clone(), notify.clone());
        let get = format!("$ota/{}/get", m.id);
        std::thread::Builder::new()
            .name("agent-mqtt".into())
            .spawn(move || {
                for ev in conn.iter() {
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            tracing::info!("connected");
                            if let Err(e) = client.try_subscribe(notify.clone(), QoS::AtLeastOnce) {
                                tracing::warn!(error = %e, "subscribe not queued");
                            }
                            sent.fetch_add(1, Ordering::SeqCst);
                            if let Err(e) = client.try_publish(get.clone(), QoS::AtLeastOnce, false, Vec::new()) {
                                sent.fetch_sub(1, Ordering::SeqCst);
                                tracing::warn!(error = %e, "get not queued");
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) if p.topic == notify => {
                            if p.payload.len() > MAX_NOTIFICATION {
                                tracing::warn!(bytes = p.payload.len(), "notification too large, dropped");
                            } else if tx.try_send(p.payload.to_vec()).is_err() {
                                tracing::warn!("busy: notification dropped (asked again after the next connect)");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "connection lost, reconnecting");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            })
            .context("starting the MQTT thread")?;
    }
    let link = Link {
        client,
        id: m.id.clone(),
        sent,
        acked,
    };
    // The highest attempt of each rollout this process has finished: a late copy of that
    // notification is not installed again, a retry (a higher attempt) is. A boot outcome
    // (confirmed or rolled back) is final for its rollout.
    let mut finished: HashMap<String, u32> = HashMap::new();
    for r in &boot_reports {
        link.report(r);
        if matches!(r.state, DeviceState::Succeeded | DeviceState::RolledBack) {
            finished.insert(r.rollout.clone(), u32::MAX);
        }
    }
    let http = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .max_redirects(0)
        .build()
        .new_agent();
    loop {
        let payload = next(&rx)?;
        let note: Notice = match serde_json::from_slice(&payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "bad notification, ignored");
                continue;
            }
        };
        if note.cancel
            || finished
                .get(&note.rollout)
                .is_some_and(|&done| note.attempt <= done)
        {
            continue;
        }
        let attempt = note.attempt;
        let (Some(art), Some(url), Some(manifest)) = (&note.artifact, &note.url, &note.manifest)
        else {
            tracing::warn!(rollout = %note.rollout, "notification without artifact, url or manifest, ignored");
            continue;
        };
        if art
            .sha256
            .eq_ignore_ascii_case(&hex(&agent.state().image.sha256))
        {
            tracing::info!(rollout = %note.rollout, "already running this image");
            continue;
        }
        let rollout = note.rollout.clone();
        let active = hex(&agent.state().image.sha256);
        // A delta whose base is the running image is taken instead of the full image.
        let (size, sha256, url, manifest, delta) = match &note.delta {
            Some(d) if d.base_sha256.eq_ignore_ascii_case(&active) => {
                (d.size, &d.sha256, &d.url, &d.manifest, true)
            }
            _ => (art.size, &art.sha256, url, manifest, false),
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
        if let Err(e) = download(
            &http,
            &link,
            &m.api,
            &Wanted { url, size, sha256 },
            &rollout,
            &path,
        ) {
            link.progress(
                &rollout,
                DeviceState::Failed,
                None,
                Some(&format!("download: {e:#}")),
            );
            continue;
        }
        link.progress(&rollout, DeviceState::Verifying, None, None);
        link.progress(&rollout, DeviceState::Installing, None, None);
        let file = File::open(&path).with_context(|| format!("{}", path.display()))?;
        let source = if delta {
            Source::Delta(file)
        } else {
            Source::Full(file)
        };
        tracing::info!(rollout = %rollout, delta, bytes = size, "installing");
        match agent.install(&envelope, &rollout, source) {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(path.with_extension("sha256"));
                link.progress(&rollout, DeviceState::Rebooting, None, None);
                if !link.flush() {
                    tracing::warn!("reports not all acknowledged before the reboot");
                }
                let _ = link.client.disconnect();
                tracing::info!(rollout = %rollout, "installed: rebooting (exit 0)");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, rollout = %rollout, "install refused");
                if matches!(e, AgentError::SourceMismatch { .. }) {
                    let _ = std::fs::remove_file(&path);
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

fn next(rx: &Receiver<Vec<u8>>) -> Result<Vec<u8>> {
    rx.recv().context("the MQTT thread stopped")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What to download: the signed URL (relative to the API base), its size and SHA-256 (hex).
struct Wanted<'a> {
    url: &'a str,
    size: u64,
    sha256: &'a str,
}

/// Downloads the image into `path`, resuming a partial file of the same image (its SHA-256
/// is kept beside it), and reports `DOWNLOADING` about every tenth.
fn download(
    http: &ureq::Agent,
    link: &Link,
    api: &str,
    want: &Wanted<'_>,
    rollout: &str,
    path: &Path,
) -> Result<()> {
    let (url, total, sha256) = (want.url, want.size, want.sha256);
    if total > MAX_IMAGE_SIZE {
        bail!("artifact.size {total} over {MAX_IMAGE_SIZE}");
    }
    if !url.starts_with('/') {
        bail!("url: not a path relative to the API base");
    }
    let meta = path.with_extension("sha256");
    let same = std::fs::read_to_string(&meta).is_ok_and(|s| s == sha256);
    let mut have = if same {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    } else {
        0
    };
    if have > total {
        have = 0;
    }
    if have == 0 {
        File::create(path).with_context(|| format!("{}", path.display()))?;
        std::fs::write(&meta, sha256).with_context(|| format!("{}", meta.display()))?;
    }
    link.progress(rollout, DeviceState::Downloading, Some((have, total)), None);
    if have == total {
        return Ok(());
    }
    let full = format!("{}{}", api.trim_end_matches('/'), url);
    let mut attempt = 1;
    loop {
        match fetch(http, link, &full, path, &mut have, total, rollout) {
            Ok(()) => return Ok(()),
            Err(Fetch::Transport(e)) if attempt < DOWNLOAD_ATTEMPTS => {
                tracing::warn!(error = %format!("{e:#}"), attempt, have, "download broken, resuming");
                std::thread::sleep(Duration::from_millis(500 * attempt as u64));
                attempt += 1;
            }
            Err(Fetch::Transport(e) | Fetch::Final(e)) => return Err(e),
        }
    }
}

/// Why one download attempt stopped.
enum Fetch {
    /// The connection or the body broke: resume with a `Range` request.
    Transport(anyhow::Error),
    /// The server refused, or the disk failed: give up.
    Final(anyhow::Error),
}

/// One GET from `have` (a `Range` request past 0), appending to `path`.
fn fetch(
    http: &ureq::Agent,
    link: &Link,
    full: &str,
    path: &Path,
    have: &mut u64,
    total: u64,
    rollout: &str,
) -> Result<(), Fetch> {
    use std::io::{Seek, SeekFrom};
    let disk =
        |e: std::io::Error| Fetch::Final(anyhow::Error::new(e).context(path.display().to_string()));
    let mut req = http.get(full);
    if *have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req
        .call()
        .map_err(|e| Fetch::Transport(anyhow::Error::new(e).context("GET")))?;
    match resp.status().as_u16() {
        206 if *have > 0 => {}
        200 => *have = 0,
        s => return Err(Fetch::Final(anyhow::anyhow!("HTTP status {s}"))),
    }
    let mut file = OpenOptions::new().write(true).open(path).map_err(disk)?;
    file.set_len(*have).map_err(disk)?;
    file.seek(SeekFrom::Start(*have)).map_err(disk)?;
    let mut body = resp.into_body().into_reader().take(total - *have);
    let mut buf = vec![0u8; 64 * 1024];
    let step = (total / 10).max(1);
    let mut next_report = *have + step;
    loop {
        let n = match body.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                file.sync_all().map_err(disk)?;
                return Err(Fetch::Transport(
                    anyhow::Error::new(e).context("reading the body"),
                ));
            }
        };
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(disk)?;
        *have += n as u64;
        if *have >= next_report || *have == total {
            link.progress(
                rollout,
                DeviceState::Downloading,
                Some((*have, total)),
                None,
            );
            next_report = *have + step;
        }
    }
    file.sync_all().map_err(disk)?;
    if *have != total {
        return Err(Fetch::Transport(anyhow::anyhow!(
            "{have} of {total} bytes received"
        )));
    }
    Ok(())
}
