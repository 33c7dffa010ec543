//! The OTA side of the device's one MQTT connection ([`myriad_agent::client`], shared with the
//! telemetry pump): `$ota/{id}/notify` and the chunk answers are subscribed on the SDK client
//! (made again after each connect, `$ota/{id}/get` published after each connect), forwarded
//! to the agent's blocking loop over bounded channels ([`Inbox`]); reports are QoS 1 publishes
//! whose PUBACKs [`Link::flush`] waits for.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

use anyhow::{Context, Result};
use myriad_agent::Report;
use myriad_agent::client::{Client, ClientBuilder, Delivery, Message, Qos};
use myriad_agent::config::{DownloadVia, MqttConfig};
use myriad_ota::rollout::DeviceState;
use serde::Deserialize;
use tokio::runtime::Handle;
use tokio::sync::mpsc::Receiver as AsyncReceiver;

use super::{MAX_NOTIFICATION, MAX_QUEUED_NOTES, MAX_REASON, Notice};

/// Chunk answers waiting for the download loop (more are dropped: the loop asks again).
const QUEUED_CHUNKS: usize = 4;
/// How long the agent waits for the broker to acknowledge its reports before it "reboots".
const ACK_WAIT: Duration = Duration::from_secs(10);

/// The OTA side of the connection: the SDK client and the reports awaiting their PUBACK.
pub(super) struct Link {
    client: Client,
    rt: Handle,
    id: String,
    pending: Mutex<Vec<Delivery>>,
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
    /// kept for [`Inbox::next`], at most [`MAX_QUEUED_NOTES`]: more are dropped, and
    /// `$ota/{id}/get` after the next connect asks for them again).
    pub(super) fn canceled(&mut self, rollout: &str) -> bool {
        let mut found = false;
        while let Ok(payload) = self.notes.try_recv() {
            let Some(n) = parse(&payload) else { continue };
            if n.cancel && n.rollout == rollout {
                found = true;
            } else if self.held.len() < MAX_QUEUED_NOTES {
                self.held.push_back(n);
            }
        }
        let before = self.held.len();
        self.held.retain(|n| !(n.cancel && n.rollout == rollout));
        found || self.held.len() != before
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
    /// Publishes a progress report (QoS 1, awaited by [`Link::flush`]).
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
        match self.client.publish_blocking(
            format!("$ota/{}/progress", self.id),
            body.to_string(),
            Qos::AtLeastOnce,
        ) {
            Ok(d) => {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                // Settled reports need not be kept.
                pending.retain_mut(|d| d.is_pending());
                pending.push(d);
            }
            Err(e) => tracing::warn!(error = %e, "progress report not queued"),
        }
    }

    /// Publishes a report of the agent's core.
    pub(super) fn report(&self, r: &Report) {
        self.progress(&r.rollout, r.state, None, r.reason.as_deref());
    }

    /// Asks for one chunk (QoS 0: an answer that does not come is asked for again).
    pub(super) fn request_chunk(&self, file: &str, offset: u64, length: u32) {
        let body = serde_json::json!({"artifact": file, "offset": offset, "length": length});
        if let Err(e) = self.client.try_publish(
            format!("$ota/{}/chunk/get", self.id),
            body.to_string(),
            Qos::AtMostOnce,
        ) {
            tracing::warn!(error = %e, "chunk request not queued");
        }
    }

    /// Waits until every report so far is acknowledged (at most [`ACK_WAIT`]).
    pub(super) fn flush(&self) -> bool {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        // The timer is made inside the runtime (block_on's future runs in its context).
        self.rt.block_on(async {
            tokio::time::timeout(ACK_WAIT, async {
                let mut ok = true;
                for d in pending {
                    ok &= d.await.is_ok();
                }
                ok
            })
            .await
            .unwrap_or(false)
        })
    }
}

/// Declares the OTA subscriptions on the device's connection (before it starts): returns the
/// [`Inbox`] and a function making the [`Link`] once the client runs.
pub(super) fn declare(builder: &mut ClientBuilder, m: &MqttConfig, rt: &Handle) -> Result<Inbox> {
    let notify = format!("$ota/{}/notify", m.id);
    let notes_rx = builder.subscribe(&notify, Qos::AtLeastOnce, MAX_QUEUED_NOTES)?;
    builder.publish_on_connect(&format!("$ota/{}/get", m.id), Vec::new(), Qos::AtLeastOnce);
    let (notes_tx, notes) = mpsc::sync_channel::<Vec<u8>>(MAX_QUEUED_NOTES);
    let (chunks_tx, chunks) = mpsc::sync_channel::<ChunkAnswer>(QUEUED_CHUNKS);
    rt.spawn(forward_notes(notes_rx, notes_tx));
    if m.download == DownloadVia::Mqtt {
        let prefix = format!("$ota/{}/chunk/", m.id);
        for filter in [format!("{prefix}+/+"), format!("{prefix}rejected")] {
            let rx = builder.subscribe(&filter, Qos::AtLeastOnce, QUEUED_CHUNKS)?;
            rt.spawn(forward_chunks(rx, prefix.clone(), chunks_tx.clone()));
        }
    }
    Ok(Inbox {
        notes,
        chunks,
        held: VecDeque::new(),
    })
}

/// The [`Link`] on a started client.
pub(super) fn link(client: Client, m: &MqttConfig, rt: &Handle) -> Link {
    Link {
        client,
        rt: rt.clone(),
        id: m.id.clone(),
        pending: Mutex::new(Vec::new()),
    }
}

async fn forward_notes(mut rx: AsyncReceiver<Message>, tx: SyncSender<Vec<u8>>) {
    while let Some(m) = rx.recv().await {
        if m.payload.len() > MAX_NOTIFICATION {
            tracing::warn!(bytes = m.payload.len(), "notification too large, dropped");
        } else if tx.try_send(m.payload.to_vec()).is_err() {
            tracing::warn!("busy: notification dropped (asked again after the next connect)");
        }
    }
}

async fn forward_chunks(
    mut rx: AsyncReceiver<Message>,
    prefix: String,
    tx: SyncSender<ChunkAnswer>,
) {
    while let Some(m) = rx.recv().await {
        if let Some(rest) = m.topic.strip_prefix(&prefix)
            && let Some(answer) = chunk_answer(rest, &m.payload)
            && tx.try_send(answer).is_err()
        {
            tracing::debug!("chunk answer dropped (not awaited)");
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
