//! The MQTT connection (rumqttc, 3.1.1, persistent session) on a thread of its own: it
//! subscribes after each connect, asks `$ota/{id}/get`, counts acknowledgements, and hands
//! notifications and chunk answers to the agent's loop over bounded channels ([`Inbox`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use myriad_agent::Report;
use myriad_agent::config::{DownloadVia, MqttConfig};
use myriad_ota::rollout::DeviceState;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;

use super::{MAX_NOTIFICATION, MAX_QUEUED_NOTES, MAX_REASON, Notice};

/// Largest MQTT packet read (the broker's default `mqtt.max_packet_size`, 1 MiB, and a
/// little room for the header): a larger one breaks the connection in rumqttc, so the
/// notification limit is enforced on payloads below this one.
const MAX_PACKET: usize = 1024 * 1024 + 1024;
/// Chunk answers waiting for the download loop (more are dropped: the loop asks again).
const QUEUED_CHUNKS: usize = 4;
/// How long the agent waits for the broker to acknowledge its reports before it "reboots".
const ACK_WAIT: Duration = Duration::from_secs(10);

/// The connection: the client, and counts of QoS 1 publishes sent and acknowledged.
pub(super) struct Link {
    client: Client,
    id: String,
    sent: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
}

/// The platform's answer to one `$ota/{id}/chunk/get`.
#[derive(Debug)]
pub(super) enum ChunkAnswer {
    /// `$ota/{id}/chunk/{artifact}/{offset}`: the bytes.
    Data {
        artifact: String,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// `$ota/{id}/chunk/rejected`.
    Rejected {
        artifact: String,
        offset: u64,
        message: String,
    },
}

#[derive(Deserialize)]
struct Rejection {
    #[serde(default)]
    artifact: String,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    message: String,
}

/// What the connection thread received for the agent's loop.
pub(super) struct Inbox {
    notes: Receiver<Vec<u8>>,
    chunks: Receiver<ChunkAnswer>,
    /// Notifications read while a download looked for a cancel notice.
    held: VecDeque<Notice>,
}

impl Inbox {
    /// The next notification (blocks); ones that do not parse are logged and skipped.
    pub(super) fn next(&mut self) -> Result<Notice> {
        if let Some(n) = self.held.pop_front() {
            return Ok(n);
        }
        loop {
            let payload = self.notes.recv().context("the MQTT thread stopped")?;
            if let Some(n) = parse(&payload) {
                return Ok(n);
            }
        }
    }

    /// Whether a cancel notice for `rollout` arrived (it is consumed; other notifications are
    /// kept for [`Inbox::next`], at most [`MAX_QUEUED_NOTES`] besides cancel notices).
    pub(super) fn canceled(&mut self, rollout: &str) -> bool {
        while let Ok(payload) = self.notes.try_recv() {
            if let Some(n) = parse(&payload)
                && (n.cancel || self.held.len() < MAX_QUEUED_NOTES)
            {
                self.held.push_back(n);
            }
        }
        let before = self.held.len();
        self.held.retain(|n| !(n.cancel && n.rollout == rollout));
        self.held.len() != before
    }

    /// The next chunk answer, waiting at most `timeout`.
    pub(super) fn chunk(&self, timeout: Duration) -> Option<ChunkAnswer> {
        self.chunks.recv_timeout(timeout).ok()
    }

    /// Drops chunk answers still queued (late answers of an earlier request).
    pub(super) fn clear_chunks(&self) {
        while self.chunks.try_recv().is_ok() {}
    }
}

fn parse(payload: &[u8]) -> Option<Notice> {
    match serde_json::from_slice(payload) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "bad notification, ignored");
            None
        }
    }
}

impl Link {
    /// Publishes a progress report (QoS 1, counted for [`Link::flush`]).
    pub(super) fn progress(
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
            body["reason"] = super::cut(r, MAX_REASON).into();
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

    /// Publishes a report of the agent's core.
    pub(super) fn report(&self, r: &Report) {
        self.progress(&r.rollout, r.state, None, r.reason.as_deref());
    }

    /// Asks for one chunk (QoS 0: an answer that does not come is asked for again).
    pub(super) fn request_chunk(&self, file: &str, offset: u64, length: u32) {
        let body = serde_json::json!({"artifact": file, "offset": offset, "length": length});
        if let Err(e) = self.client.publish(
            format!("$ota/{}/chunk/get", self.id),
            QoS::AtMostOnce,
            false,
            body.to_string(),
        ) {
            tracing::warn!(error = %e, "chunk request not queued");
        }
    }

    /// Waits until every publish so far is acknowledged (at most [`ACK_WAIT`]).
    pub(super) fn flush(&self) -> bool {
        let deadline = Instant::now() + ACK_WAIT;
        while self.acked.load(Ordering::SeqCst) < self.sent.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Disconnects (before the "reboot").
    pub(super) fn disconnect(&self) {
        let _ = self.client.disconnect();
    }
}

/// Connects as the device (client id = user name = the device id) and starts the thread.
pub(super) fn connect(m: &MqttConfig) -> Result<(Link, Inbox)> {
    let mut opts = MqttOptions::new(m.id.clone(), m.host.clone(), m.port);
    opts.set_credentials(m.id.clone(), m.password.clone())
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET, 8 * 1024);
    let (client, conn) = Client::new(opts, 64);
    let sent = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let (notes_tx, notes) = mpsc::sync_channel::<Vec<u8>>(MAX_QUEUED_NOTES);
    let (chunks_tx, chunks) = mpsc::sync_channel::<ChunkAnswer>(QUEUED_CHUNKS);
    let link = Link {
        client: client.clone(),
        id: m.id.clone(),
        sent: sent.clone(),
        acked: acked.clone(),
    };
    let thread = ConnThread {
        client,
        id: m.id.clone(),
        chunks_wanted: m.download == DownloadVia::Mqtt,
        sent,
        acked,
        notes: notes_tx,
        chunks: chunks_tx,
    };
    std::thread::Builder::new()
        .name("agent-mqtt".into())
        .spawn(move || thread.run(conn))
        .context("starting the MQTT thread")?;
    let inbox = Inbox {
        notes,
        chunks,
        held: VecDeque::new(),
    };
    Ok((link, inbox))
}

/// The connection thread's side.
struct ConnThread {
    client: Client,
    id: String,
    chunks_wanted: bool,
    sent: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
    notes: SyncSender<Vec<u8>>,
    chunks: SyncSender<ChunkAnswer>,
}

impl ConnThread {
    fn run(self, mut conn: rumqttc::Connection) {
        let notify = format!("$ota/{}/notify", self.id);
        let chunk_prefix = format!("$ota/{}/chunk/", self.id);
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!("connected");
                    self.on_connect(&notify, &chunk_prefix);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    self.acked.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == notify => {
                    if p.payload.len() > MAX_NOTIFICATION {
                        tracing::warn!(bytes = p.payload.len(), "notification too large, dropped");
                    } else if self.notes.try_send(p.payload.to_vec()).is_err() {
                        tracing::warn!(
                            "busy: notification dropped (asked again after the next connect)"
                        );
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(rest) = p.topic.strip_prefix(&chunk_prefix)
                        && let Some(answer) = chunk_answer(rest, &p.payload)
                        && self.chunks.try_send(answer).is_err()
                    {
                        tracing::debug!("chunk answer dropped (not awaited)");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "connection lost, reconnecting");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn on_connect(&self, notify: &str, chunk_prefix: &str) {
        let mut filters = vec![notify.to_string()];
        if self.chunks_wanted {
            filters.push(format!("{chunk_prefix}+/+"));
            filters.push(format!("{chunk_prefix}rejected"));
        }
        for filter in filters {
            if let Err(e) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                tracing::warn!(error = %e, "subscribe not queued");
            }
        }
        self.sent.fetch_add(1, Ordering::SeqCst);
        let get = format!("$ota/{}/get", self.id);
        if let Err(e) = self
            .client
            .try_publish(get, QoS::AtLeastOnce, false, Vec::new())
        {
            self.sent.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "get not queued");
        }
    }
}

/// A chunk answer from the topic's part after `$ota/{id}/chunk/`.
fn chunk_answer(rest: &str, payload: &[u8]) -> Option<ChunkAnswer> {
    if rest == "rejected" {
        let r: Rejection = serde_json::from_slice(payload).ok()?;
        return Some(ChunkAnswer::Rejected {
            artifact: r.artifact,
            offset: r.offset,
            message: super::cut(&r.message, MAX_REASON).to_string(),
        });
    }
    let (artifact, offset) = rest.split_once('/')?;
    Some(ChunkAnswer::Data {
        artifact: artifact.to_string(),
        offset: offset.parse().ok()?,
        bytes: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_topics_parse() {
        match chunk_answer("a1/4096", b"xyz") {
            Some(ChunkAnswer::Data {
                artifact,
                offset,
                bytes,
            }) => assert_eq!(
                (artifact.as_str(), offset, bytes.as_slice()),
                ("a1", 4096, &b"xyz"[..])
            ),
            other => panic!("{other:?}"),
        }
        match chunk_answer(
            "rejected",
            br#"{"artifact":"a1","offset":7,"message":"busy"}"#,
        ) {
            Some(ChunkAnswer::Rejected {
                message, offset, ..
            }) => {
                assert_eq!((message.as_str(), offset), ("busy", 7))
            }
            other => panic!("{other:?}"),
        }
        assert!(chunk_answer("a1/x", b"").is_none());
        assert!(chunk_answer("get", b"").is_none());
        assert!(chunk_answer("rejected", b"not json").is_none());
    }
}
