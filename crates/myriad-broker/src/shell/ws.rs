//! MQTT over WebSocket on a plain or TLS stream: the upgrade, then frames
//! decoded as the socket reports bytes (see [`crate::websocket`] for the
//! framing and why it is not tungstenite).
//!
//! Like [`super::transport::Stream`], nothing waits inside: an idle
//! WebSocket connection holds this struct (at most 136 bytes, boxed; a test
//! checks) and no
//! buffer. Received payload is unmasked in the read chunk and appended to
//! the connection's packet buffer; sent packets get a frame header pushed in
//! front of the batch's chunks (no copy of the payloads).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tracing::debug;

use super::transport::Stream;
use crate::config::{BrokerConfig, ListenerConfig};
use crate::websocket::{self, FrameDecoder, Refusal, Status, close_code};

/// Counter of WebSocket upgrades, labelled `result` (`ok`, `refused`) and,
/// for refusals, `reason` (see [`Refusal::reason`], plus `timeout` and
/// `closed`).
pub const WS_UPGRADES_TOTAL: &str = "myriad_ws_upgrades_total";

/// Counter of connections closed for a frame the server refuses, labelled
/// `reason` (see [`websocket::FrameError::reason`]).
pub const WS_FRAMES_REFUSED_TOTAL: &str = "myriad_ws_frames_refused_total";

/// Counts one refused upgrade.
pub(super) fn count_refused(reason: &'static str) {
    metrics::counter!(WS_UPGRADES_TOTAL, "result" => "refused", "reason" => reason).increment(1);
}

/// Whether `error` is [`WsStream::read_available`] refusing a frame.
pub(super) fn is_frame_error(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<websocket::FrameError>())
}

/// A WebSocket listener's settings.
#[derive(Debug)]
pub struct WsSettings {
    /// The path clients upgrade on.
    path: String,
    /// `ws_max_handshake_bytes`.
    max_request: usize,
    /// `ws_max_frame_size`.
    max_frame: u64,
}

impl WsSettings {
    /// The settings of `listener` under `config`'s limits.
    pub fn new(listener: &ListenerConfig, config: &BrokerConfig) -> WsSettings {
        WsSettings {
            path: listener.ws_path().to_owned(),
            max_request: config.ws_max_handshake_bytes,
            max_frame: config.ws_max_frame_size as u64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the upgrade request.
    Upgrading,
    /// Frames flow both ways.
    Open,
    /// A close frame was received or sent: no more data frames.
    Closed,
}

/// A WebSocket connection on a plain or TLS stream.
pub(super) struct WsStream {
    stream: Stream,
    settings: Arc<WsSettings>,
    decoder: FrameDecoder,
    /// Frames the server owes the client (pongs, the close reply); empty
    /// (unallocated) almost always.
    replies: Vec<u8>,
    phase: Phase,
}

impl WsStream {
    /// A connection on `stream` that has yet to upgrade.
    pub fn new(stream: Stream, settings: Arc<WsSettings>) -> WsStream {
        WsStream {
            stream,
            settings,
            decoder: FrameDecoder::default(),
            replies: Vec::new(),
            phase: Phase::Upgrading,
        }
    }

    /// The stream underneath.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The stream underneath, giving up WebSocket.
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// Whether the upgrade has not finished.
    pub fn is_upgrading(&self) -> bool {
        self.phase == Phase::Upgrading
    }

    /// Completes the TLS handshake (if any) and the upgrade; frames that
    /// followed the request are decoded into `buf`. A refused upgrade is
    /// answered (404, 400, ...), counted and logged, and fails.
    pub async fn establish(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        let mut request = BytesMut::new();
        self.stream.establish(&mut request).await?;
        let max = self.settings.max_request;
        loop {
            let parsed = match websocket::parse_upgrade(&request, &self.settings.path) {
                Ok(Some((_, n))) if n > max => Err(Refusal::too_large(max)),
                Ok(None) if request.len() > max => Err(Refusal::too_large(max)),
                other => other,
            };
            match parsed {
                Ok(Some((upgrade, n))) => {
                    self.stream.write_all(&upgrade.response()).await?;
                    self.phase = Phase::Open;
                    metrics::counter!(WS_UPGRADES_TOTAL, "result" => "ok").increment(1);
                    if request.len() > n {
                        let mut rest = request.split_off(n);
                        let decoded = self.decode(&mut rest, buf);
                        if self.wants_write() {
                            self.flush().await?;
                        }
                        decoded?;
                    }
                    return Ok(());
                }
                Ok(None) => {}
                Err(refusal) => return Err(self.refuse(refusal).await),
            }
            self.stream.readable().await?;
            match self.stream.read_available(&mut request) {
                Ok(0) => {
                    count_refused("closed");
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    count_refused("closed");
                    return Err(e);
                }
            }
        }
    }

    /// Answers a refused upgrade; the error to end the connection with.
    async fn refuse(&mut self, refusal: Refusal) -> io::Error {
        count_refused(refusal.reason);
        debug!(
            status = refusal.status,
            reason = refusal.reason,
            detail = %refusal.detail,
            "WebSocket upgrade refused"
        );
        let _ = self.stream.write_all(&refusal.response()).await;
        self.phase = Phase::Closed;
        io::Error::new(io::ErrorKind::InvalidData, refusal.detail)
    }

    /// Polls for bytes to read; ready at once after a close (the next read
    /// reports the end).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.phase == Phase::Closed {
            return Poll::Ready(Ok(()));
        }
        self.stream.poll_read_ready(cx)
    }

    /// Reads what the socket has and decodes its frames into `buf`. A
    /// refused frame queues a close frame with its status (written by
    /// [`WsStream::flush`]) and fails with `InvalidData`.
    pub fn read_available(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if self.phase != Phase::Open {
            return Ok(0);
        }
        let mut raw = BytesMut::new();
        let n = self.stream.read_available(&mut raw)?;
        if n == 0 {
            return Ok(0);
        }
        self.decode(&mut raw, buf)?;
        Ok(n)
    }

    /// Decodes `raw` into `buf`, unmasking it in place.
    fn decode(&mut self, raw: &mut [u8], buf: &mut BytesMut) -> io::Result<()> {
        let max = self.settings.max_frame;
        match self.decoder.decode(raw, buf, max, &mut self.replies) {
            Ok(Status::Open) => Ok(()),
            Ok(Status::Closed) => {
                self.phase = Phase::Closed;
                Ok(())
            }
            Err(error) => {
                metrics::counter!(WS_FRAMES_REFUSED_TOTAL, "reason" => error.reason).increment(1);
                debug!(
                    code = error.code,
                    reason = error.reason,
                    "WebSocket frame refused"
                );
                self.replies
                    .extend_from_slice(&websocket::close_frame(error.code));
                self.phase = Phase::Closed;
                Err(io::Error::new(io::ErrorKind::InvalidData, error))
            }
        }
    }

    /// Whether frames (or TLS records) wait to be written.
    pub fn wants_write(&self) -> bool {
        !self.replies.is_empty() || self.stream.wants_write()
    }

    /// Writes the pongs and close frame owed, and what TLS holds.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.replies.is_empty() {
            let replies = std::mem::take(&mut self.replies);
            self.stream.write_all(&replies).await?;
        }
        self.stream.flush().await
    }

    /// Sends `out` as one binary frame.
    pub async fn write_all(&mut self, out: &[u8]) -> io::Result<()> {
        self.check_open()?;
        let mut frame = websocket::binary_header(out.len() as u64);
        frame.extend_from_slice(out);
        self.stream.write_all(&frame).await
    }

    /// Sends `chunks` as one binary frame, emptying it.
    pub async fn write_chunks(&mut self, chunks: &mut VecDeque<Bytes>) -> io::Result<()> {
        self.check_open()?;
        if !self.replies.is_empty() {
            self.flush().await?;
        }
        let len: usize = chunks.iter().map(Bytes::len).sum();
        if len == 0 {
            chunks.clear();
            return Ok(());
        }
        chunks.push_front(Bytes::from(websocket::binary_header(len as u64)));
        self.stream.write_chunks(chunks).await
    }

    /// No data frame may follow a close frame either way.
    fn check_open(&self) -> io::Result<()> {
        match self.phase {
            Phase::Open => Ok(()),
            _ => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Sends a close frame (unless one was exchanged already), then ends
    /// the stream.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        if self.phase == Phase::Open {
            self.replies
                .extend_from_slice(&websocket::close_frame(close_code::NORMAL));
            self.phase = Phase::Closed;
        }
        self.flush().await?;
        self.stream.shutdown().await
    }
}

/// Also used when the connect timeout ends an upgrade.
pub(super) const TIMEOUT_REASON: &str = "timeout";

#[cfg(test)]
mod tests {
    /// An idle WebSocket connection pays this (boxed) beside its stream.
    #[test]
    fn websocket_state_stays_small() {
        let size = std::mem::size_of::<super::WsStream>();
        assert!(size <= 136, "WsStream grew to {size} bytes");
    }
}
