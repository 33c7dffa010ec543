//! The byte stream under one MQTT connection: plain TCP or TLS over TCP
//! ([`Stream`]), carrying MQTT directly or in WebSocket frames
//! ([`super::ws::WsStream`]).
//!
//! Both are driven by the socket's readiness with non-blocking reads and
//! writes, so an idle connection keeps no read buffer and no future state.
//! TLS runs rustls's unbuffered API: the received bytes of an unfinished
//! record and the encrypted records waiting for the socket are in buffers
//! of ours, freed as soon as they are empty, so an idle TLS connection
//! holds only rustls's state (keys, no buffers).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};
use tokio::net::TcpStream;

use super::ws::WsStream;

/// Bytes read from the socket per readiness event.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// Most received TLS bytes held that do not yet make a whole record or
/// handshake message: a 64 KiB handshake message (rustls refuses bigger
/// ones) in full-size records, plus one read. Past it the connection is
/// refused (`malformed`).
pub(super) const MAX_TLS_RECEIVE: usize = 96 * 1024;

/// Encrypted bytes waiting for the socket past which the connection task
/// waits for the socket before encrypting more (rustls's buffered default).
const MAX_TLS_SEND: usize = 64 * 1024;

/// Plaintext encrypted per call: one full TLS record.
const ENCRYPT_CHUNK: usize = 16 * 1024;

/// Room first offered to rustls for one handshake message or record
/// (grown to what it asks for when short).
const RECORD_ROOM: usize = 4096;

/// A record's header and AEAD tag (and TLS 1.3's content type), first
/// offered beside the plaintext.
const RECORD_OVERHEAD: usize = 5 + 16 + 1;

/// Most buffers handed to one `writev` (Linux allows 1024).
const MAX_IOVECS: usize = 64;

/// A connection's byte stream.
pub(super) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: most connections of a plain listener pay nothing).
    Tls(Box<TlsStream>),
}

/// TLS over TCP: the socket, rustls's state machine and our buffers.
pub(super) struct TlsStream {
    tcp: TcpStream,
    tls: UnbufferedServerConnection,
    /// The listener's address (`listener` label of the handshake counter).
    listener: Arc<str>,
    /// Received bytes rustls has not consumed (part of a record or of a
    /// handshake message); unallocated when empty.
    incoming: Vec<u8>,
    /// TLS records to send; unallocated when empty.
    outgoing: Vec<u8>,
    /// How much of `outgoing` the socket took.
    written: usize,
}

impl Stream {
    /// A TLS connection on `tcp` with `config`, accepted by the listener
    /// `listener` (its address, for the handshake counter); the handshake
    /// runs in [`Stream::establish`].
    pub fn tls(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
        listener: Arc<str>,
    ) -> io::Result<Stream> {
        let tls = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Stream::Tls(Box::new(TlsStream {
            tcp,
            tls,
            listener,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            written: 0,
        })))
    }

    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(tcp) => tcp,
            Stream::Tls(tls) => &tls.tcp,
        }
    }

    /// The socket underneath, giving up TLS (for lingering after close).
    pub fn into_tcp(self) -> TcpStream {
        match self {
            Stream::Tcp(tcp) => tcp,
            Stream::Tls(tls) => tls.tcp,
        }
    }

    /// Completes the TLS handshake (nothing for plain TCP). Application data
    /// that came with the handshake's last flight is appended to `buf`.
    pub async fn establish(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        let Stream::Tls(stream) = self else {
            return Ok(());
        };
        let outcome = stream.handshake(buf).await;
        super::tls::count_handshake(&stream.listener, outcome.as_ref().map(|_| ()));
        outcome
    }

    /// Counts a TLS handshake that did not finish in time (nothing for
    /// plain TCP).
    pub fn count_handshake_timeout(&self) {
        if let Stream::Tls(stream) = self {
            let timeout = io::Error::from(io::ErrorKind::TimedOut);
            super::tls::count_handshake(&stream.listener, Err(&timeout));
        }
    }

    /// Whether a TLS handshake was started and has not finished.
    pub fn is_handshaking(&self) -> bool {
        matches!(self, Stream::Tls(stream) if stream.tls.is_handshaking())
    }

    /// The certificate chain the TLS client presented and the handshake
    /// verified (end entity first); empty without TLS or a certificate.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        match self {
            Stream::Tls(stream) => stream.tls.peer_certificates().unwrap_or(&[]),
            Stream::Tcp(_) => &[],
        }
    }

    /// Polls for bytes to read (or end of stream). Plaintext is never left
    /// inside rustls (each read takes it all), so the socket decides.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_read_ready(cx)
    }

    /// Waits until the socket is readable.
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp().readable().await
    }

    /// Reads what the socket has, appending the plaintext to `buf` (a read
    /// that completes no TLS record appends nothing). `Ok(0)` only at end of
    /// stream; `WouldBlock` when nothing was there.
    pub fn read_available(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => read_plain(tcp, buf),
            Stream::Tls(stream) => stream.read_available(buf),
        }
    }

    /// Whether bytes wait to be written that no caller asked for (TLS
    /// alerts, key updates, close notifications).
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Tls(stream) => stream.wants_write(),
        }
    }

    /// Writes whatever [`Stream::wants_write`] reported.
    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(_) => Ok(()),
            Stream::Tls(stream) => stream.flush().await,
        }
    }

    /// Writes `out` whole.
    pub async fn write_all(&mut self, out: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(tcp) => write_all_plain(tcp, out).await,
            Stream::Tls(stream) => {
                stream.encrypt(out).await?;
                stream.flush().await
            }
        }
    }

    /// Writes `chunks` whole (vectored on plain TCP), emptying it.
    pub async fn write_chunks(&mut self, chunks: &mut VecDeque<Bytes>) -> io::Result<()> {
        match self {
            Stream::Tcp(tcp) => write_chunks_plain(tcp, chunks).await,
            Stream::Tls(stream) => {
                while let Some(chunk) = chunks.pop_front() {
                    stream.encrypt(&chunk).await?;
                }
                stream.flush().await
            }
        }
    }

    /// Ends our direction: a TLS close notification, then a TCP FIN.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if let Stream::Tls(stream) = self {
            stream.queue_close_notify()?;
            stream.flush().await?;
        }
        match self {
            Stream::Tcp(tcp) => tcp.shutdown().await,
            Stream::Tls(stream) => stream.tcp.shutdown().await,
        }
    }
}

/// What a connection reads MQTT from and writes it to.
pub(super) enum Transport {
    /// MQTT directly on the stream.
    Direct(Stream),
    /// MQTT in WebSocket frames (boxed: plain listeners pay nothing).
    Ws(Box<WsStream>),
}

impl From<Stream> for Transport {
    fn from(stream: Stream) -> Transport {
        Transport::Direct(stream)
    }
}

impl Transport {
    /// The socket underneath, giving up TLS and WebSocket (for lingering
    /// after close).
    pub fn into_tcp(self) -> TcpStream {
        match self {
            Transport::Direct(stream) => stream.into_tcp(),
            Transport::Ws(ws) => ws.into_stream().into_tcp(),
        }
    }

    /// Completes the TLS handshake and the WebSocket upgrade, if any.
    /// MQTT bytes that came with them are appended to `buf`.
    pub async fn establish(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        match self {
            Transport::Direct(stream) => stream.establish(buf).await,
            Transport::Ws(ws) => ws.establish(buf).await,
        }
    }

    /// Whether a TLS handshake was started and has not finished.
    pub fn is_handshaking(&self) -> bool {
        match self {
            Transport::Direct(stream) => stream.is_handshaking(),
            Transport::Ws(ws) => ws.stream().is_handshaking(),
        }
    }

    /// See [`Stream::peer_certificates`].
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        match self {
            Transport::Direct(stream) => stream.peer_certificates(),
            Transport::Ws(ws) => ws.stream().peer_certificates(),
        }
    }

    /// Counts a TLS handshake that did not finish in time (nothing
    /// without TLS).
    pub fn count_handshake_timeout(&self) {
        match self {
            Transport::Direct(stream) => stream.count_handshake_timeout(),
            Transport::Ws(ws) => ws.stream().count_handshake_timeout(),
        }
    }

    /// Whether a WebSocket upgrade is still to finish.
    pub fn is_upgrading(&self) -> bool {
        matches!(self, Transport::Ws(ws) if ws.is_upgrading())
    }

    /// Polls for bytes to read (or end of stream).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Direct(stream) => stream.poll_read_ready(cx),
            Transport::Ws(ws) => ws.poll_read_ready(cx),
        }
    }

    /// Waits until there is something to read.
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Reads what the socket has, appending the MQTT bytes to `buf`.
    /// `Ok(0)` only at end of stream (or after a WebSocket close);
    /// `WouldBlock` when nothing was there.
    pub fn read_available(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Direct(stream) => stream.read_available(buf),
            Transport::Ws(ws) => ws.read_available(buf),
        }
    }

    /// Whether bytes wait to be written that no caller asked for (TLS
    /// alerts, WebSocket pongs and close frames).
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Direct(stream) => stream.wants_write(),
            Transport::Ws(ws) => ws.wants_write(),
        }
    }

    /// Writes whatever [`Transport::wants_write`] reported.
    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Direct(stream) => stream.flush().await,
            Transport::Ws(ws) => ws.flush().await,
        }
    }

    /// Writes `out` whole (one WebSocket frame on a WebSocket).
    pub async fn write_all(&mut self, out: &[u8]) -> io::Result<()> {
        match self {
            Transport::Direct(stream) => stream.write_all(out).await,
            Transport::Ws(ws) => ws.write_all(out).await,
        }
    }

    /// Writes `chunks` whole (one WebSocket frame on a WebSocket), emptying it.
    pub async fn write_chunks(&mut self, chunks: &mut VecDeque<Bytes>) -> io::Result<()> {
        match self {
            Transport::Direct(stream) => stream.write_chunks(chunks).await,
            Transport::Ws(ws) => ws.write_chunks(chunks).await,
        }
    }

    /// Ends our direction: a WebSocket close frame, a TLS close
    /// notification, then a TCP FIN.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Direct(stream) => stream.shutdown().await,
            Transport::Ws(ws) => ws.shutdown().await,
        }
    }
}

impl TlsStream {
    /// Whether there is a TLS error or close notification (or anything
    /// else rustls queued) waiting in `outgoing`.
    fn wants_write(&self) -> bool {
        self.written < self.outgoing.len()
    }

    /// Drives the handshake to its end (see [`Stream::establish`]).
    async fn handshake(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        while self.tls.is_handshaking() {
            if self.wants_write() {
                self.flush().await?;
                continue;
            }
            self.tcp.readable().await?;
            match self.read_available(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // The alert saying why is queued in `outgoing`: send it.
                    let _ = self.flush().await;
                    return Err(e);
                }
            }
        }
        // Session tickets (TLS 1.3) follow the handshake.
        self.flush().await
    }

    /// Reads one chunk from the socket and hands rustls all the records it
    /// completes, appending their plaintext to `buf`. Bytes of an
    /// unfinished record (or handshake message) stay in `incoming`, which
    /// is freed once empty.
    fn read_available(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.tcp.try_read(&mut chunk)?;
        if n == 0 {
            return Ok(0);
        }
        if self.incoming.len() + n > MAX_TLS_RECEIVE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                TlsReceiveError::TooLarge {
                    held: self.incoming.len() + n,
                },
            ));
        }
        self.incoming.extend_from_slice(&chunk[..n]);
        let outcome = self.process(Some(buf));
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        outcome.map(|()| n)
    }

    /// Runs rustls over `incoming` until it needs more bytes: plaintext goes
    /// to `buf` (`None`: none may come, see [`TlsStream::encrypt`]), TLS
    /// messages rustls wants sent go to `outgoing`. On a TLS error, the
    /// alert rustls queued for it is put in `outgoing` too.
    fn process(&mut self, mut buf: Option<&mut BytesMut>) -> io::Result<()> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            let mut blocked = false;
            let mut failure = None;
            match state {
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                match buf.as_deref_mut() {
                                    Some(buf) => buf.extend_from_slice(record.payload),
                                    None => {
                                        failure = Some(io::Error::other(
                                            TlsReceiveError::UnexpectedPlaintext,
                                        ));
                                        break;
                                    }
                                }
                            }
                            Err(e) => {
                                failure = Some(io::Error::new(io::ErrorKind::InvalidData, e));
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.outgoing, RECORD_ROOM, |out| encode.encode(out))?;
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // Sent by the next flush, in order with the rest of `outgoing`.
                    transmit.done();
                }
                Ok(ConnectionState::PeerClosed) => {}
                Ok(
                    ConnectionState::Closed
                    | ConnectionState::BlockedHandshake
                    | ConnectionState::WriteTraffic(_),
                ) => blocked = true,
                Ok(_) => {
                    // Early data (never enabled) or a state a later rustls adds.
                    failure = Some(io::Error::other(TlsReceiveError::UnexpectedState));
                }
                Err(e) => failure = Some(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            self.incoming.drain(..discard);
            if let Some(failure) = failure {
                self.queue_alerts();
                return Err(failure);
            }
            if blocked {
                return Ok(());
            }
        }
    }

    /// After a TLS error: moves the alert rustls queued for it to `outgoing`.
    fn queue_alerts(&mut self) {
        loop {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if encode_into(&mut self.outgoing, RECORD_ROOM, |out| encode.encode(out))
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
            self.incoming.drain(..discard);
        }
    }

    /// Encrypts `plaintext` into `outgoing`, sending records whenever
    /// [`MAX_TLS_SEND`] bytes wait there.
    async fn encrypt(&mut self, plaintext: &[u8]) -> io::Result<()> {
        for piece in plaintext.chunks(ENCRYPT_CHUNK) {
            if self.outgoing.len() - self.written >= MAX_TLS_SEND {
                self.flush().await?;
            }
            self.with_write_traffic(|traffic, out| {
                encode_into(out, piece.len() + RECORD_OVERHEAD, |spare| {
                    traffic.encrypt(piece, spare)
                })
            })?;
        }
        Ok(())
    }

    /// Queues a close notification (nothing while handshaking).
    fn queue_close_notify(&mut self) -> io::Result<()> {
        if self.tls.is_handshaking() {
            return Ok(());
        }
        self.with_write_traffic(|traffic, out| {
            encode_into(out, RECORD_OVERHEAD, |spare| {
                traffic.queue_close_notify(spare)
            })
        })
    }

    /// Brings rustls to its `WriteTraffic` state (queueing what it has to
    /// send first, such as a key update) and calls `write` there.
    fn with_write_traffic(
        &mut self,
        write: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut write = Some(write);
        loop {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            let mut finished = false;
            let mut failure = None;
            match state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    if let Some(write) = write.take() {
                        write(&mut traffic, &mut self.outgoing)?;
                    }
                    finished = true;
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.outgoing, RECORD_ROOM, |out| encode.encode(out))?;
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                Ok(ConnectionState::PeerClosed) => {}
                Ok(ConnectionState::Closed) => {
                    failure = Some(io::Error::from(io::ErrorKind::BrokenPipe));
                }
                Ok(_) => failure = Some(io::Error::other(TlsReceiveError::UnexpectedState)),
                Err(e) => failure = Some(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            self.incoming.drain(..discard);
            if let Some(failure) = failure {
                return Err(failure);
            }
            if finished {
                return Ok(());
            }
        }
    }

    /// Writes every TLS record waiting in `outgoing`, then frees it.
    async fn flush(&mut self) -> io::Result<()> {
        while self.wants_write() {
            self.tcp.writable().await?;
            match self.tcp.try_write(&self.outgoing[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.written = 0;
        Ok(())
    }
}

/// Appends what `encode` writes to `out`, growing `out` to the size rustls
/// asks for when the first guess is too small.
fn encode_into<E>(
    out: &mut Vec<u8>,
    mut room: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()>
where
    E: Into<EncodeFailure>,
{
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]).map_err(Into::into) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(EncodeFailure::Room(required)) if required > room => room = required,
            Err(failure) => {
                out.truncate(start);
                return Err(io::Error::other(failure.into_error()));
            }
        }
    }
}

/// Why rustls could not write into our buffer.
enum EncodeFailure {
    /// It needs this many bytes of room.
    Room(usize),
    /// Anything else.
    Other(String),
}

impl EncodeFailure {
    fn into_error(self) -> TlsReceiveError {
        match self {
            EncodeFailure::Room(required) => {
                TlsReceiveError::Encode(format!("{required} bytes of room needed"))
            }
            EncodeFailure::Other(why) => TlsReceiveError::Encode(why),
        }
    }
}

impl From<EncodeError> for EncodeFailure {
    fn from(error: EncodeError) -> EncodeFailure {
        match error {
            EncodeError::InsufficientSize(size) => EncodeFailure::Room(size.required_size),
            other => EncodeFailure::Other(other.to_string()),
        }
    }
}

impl From<EncryptError> for EncodeFailure {
    fn from(error: EncryptError) -> EncodeFailure {
        match error {
            EncryptError::InsufficientSize(size) => EncodeFailure::Room(size.required_size),
            other => EncodeFailure::Other(other.to_string()),
        }
    }
}

/// What went wrong on a TLS connection outside rustls's own errors.
#[derive(Debug, thiserror::Error)]
pub(super) enum TlsReceiveError {
    /// The peer sent more than [`MAX_TLS_RECEIVE`] bytes that do not yet
    /// make up a whole record or handshake message.
    #[error("{held} received TLS bytes without a complete message (at most {MAX_TLS_RECEIVE})")]
    TooLarge {
        /// Bytes that would have been held.
        held: usize,
    },
    /// Application data arrived where none can be taken.
    #[error("TLS application data where none was expected")]
    UnexpectedPlaintext,
    /// rustls reached a state this connection does not use (early data).
    #[error("unexpected TLS connection state")]
    UnexpectedState,
    /// rustls could not encode or encrypt into our buffer.
    #[error("TLS encoding failed: {0}")]
    Encode(String),
}

/// Reads what the socket has into `buf` without awaiting. The chunk buffer is
/// on the stack of this plain function, never in the task's state.
fn read_plain(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = stream.try_read(&mut chunk)?;
    if buf.is_empty() {
        *buf = BytesMut::from(&chunk[..n]);
    } else {
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(n)
}

/// Writes `out` with as few syscalls as the socket allows.
async fn write_all_plain(stream: &TcpStream, out: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < out.len() {
        stream.writable().await?;
        match stream.try_write(&out[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `chunks` (headers and shared payloads as they are) with vectored
/// writes, emptying it.
async fn write_chunks_plain(stream: &TcpStream, chunks: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !chunks.is_empty() {
        stream.writable().await?;
        match write_some(stream, chunks) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                while n > 0 {
                    let Some(front) = chunks.front_mut() else {
                        break;
                    };
                    if n >= front.len() {
                        n -= front.len();
                        chunks.pop_front();
                    } else {
                        front.advance(n);
                        n = 0;
                    }
                }
                while chunks.front().is_some_and(Bytes::is_empty) {
                    chunks.pop_front();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One vectored write of the front of `chunks`.
fn write_some(stream: &TcpStream, chunks: &VecDeque<Bytes>) -> io::Result<usize> {
    if chunks.len() == 1 {
        return chunks.front().map_or(Ok(0), |only| stream.try_write(only));
    }
    let slices: Vec<IoSlice<'_>> = chunks
        .iter()
        .take(MAX_IOVECS)
        .map(|chunk| IoSlice::new(chunk))
        .collect();
    stream.try_write_vectored(&slices)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    use super::*;

    /// A server configuration with a self-signed `localhost` certificate and
    /// a client configuration trusting it.
    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server configuration");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("trust anchor");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Plaintext bigger than one TLS record, and than `MAX_TLS_SEND`.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// After a handshake, a 40 KB request and a 200 KB answer (several
    /// records each way, several flushes of the send buffer), an idle TLS
    /// connection holds neither a receive nor a send buffer.
    #[tokio::test]
    async fn an_idle_tls_connection_keeps_no_buffer() {
        let (server_config, client_config) = configs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let request = pattern(40_000, 1);
        let reply = pattern(4 * MAX_TLS_SEND - 123, 2);
        let (done, idle) = std::sync::mpsc::channel::<()>();
        let client = {
            let request = request.clone();
            let reply_len = reply.len();
            std::thread::spawn(move || {
                let name = ServerName::try_from("localhost").expect("name");
                let conn = rustls::ClientConnection::new(client_config, name).expect("client");
                let tcp = std::net::TcpStream::connect(address).expect("connect");
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                tls.write_all(&request).expect("request");
                let mut got = vec![0; reply_len];
                tls.read_exact(&mut got).expect("reply");
                // Stay connected (and quiet) while the server looks at itself.
                let _ = idle.recv();
                got
            })
        };
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut stream = Stream::tls(tcp, server_config, Arc::from("test")).expect("tls");
        let mut buf = BytesMut::new();
        stream.establish(&mut buf).await.expect("handshake");
        while buf.len() < request.len() {
            stream.readable().await.expect("readable");
            match stream.read_available(&mut buf) {
                Ok(0) => panic!("closed after {} bytes", buf.len()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        assert_eq!(&buf[..], &request[..]);
        stream.write_all(&reply).await.expect("write");
        assert!(!stream.wants_write());
        let Stream::Tls(tls) = &stream else {
            panic!("not TLS")
        };
        assert_eq!((tls.incoming.capacity(), tls.outgoing.capacity()), (0, 0));
        done.send(()).expect("client waiting");
        assert!(client.join().expect("client thread") == reply);
    }
}
