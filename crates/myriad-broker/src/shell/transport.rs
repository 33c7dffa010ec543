//! The byte stream under one MQTT connection: plain TCP or TLS over TCP
//! ([`Stream`]), carrying MQTT directly or in WebSocket frames
//! ([`super::ws::WsStream`]).
//!
//! Both are driven by the socket's readiness with non-blocking reads and
//! writes, so an idle connection keeps no read buffer and no future state:
//! TLS decrypts straight into the connection's packet buffer, and its
//! records are written from rustls's own buffer.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use rustls::ServerConnection;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use super::ws::WsStream;

/// Bytes read from the socket per readiness event.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// Most buffers handed to one `writev` (Linux allows 1024).
const MAX_IOVECS: usize = 64;

/// A connection's byte stream.
pub(super) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: most connections of a plain listener pay nothing).
    Tls(Box<TlsStream>),
}

/// TLS over TCP: the socket and rustls's state machine.
pub(super) struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
}

impl Stream {
    /// A TLS connection on `tcp` with `config`; the handshake runs in
    /// [`Stream::establish`].
    pub fn tls(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Stream> {
        let tls = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Stream::Tls(Box::new(TlsStream { tcp, tls })))
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
        super::tls::count_handshake(outcome.as_ref().map(|_| ()));
        outcome
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
            Stream::Tls(stream) => stream.tls.wants_write(),
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
            stream.tls.send_close_notify();
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
    /// Drives the handshake to its end (see [`Stream::establish`]).
    async fn handshake(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        while self.tls.is_handshaking() {
            if self.tls.wants_write() {
                self.flush().await?;
                continue;
            }
            self.tcp.readable().await?;
            match self.read_available(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // rustls has queued an alert saying why: send it.
                    let _ = self.flush().await;
                    return Err(e);
                }
            }
        }
        // Session tickets (TLS 1.3) follow the handshake.
        self.flush().await
    }

    /// Reads one chunk from the socket into rustls and takes out all the
    /// plaintext it yields.
    fn read_available(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.tcp.try_read(&mut chunk)?;
        if n == 0 {
            return Ok(0);
        }
        let mut input = &chunk[..n];
        while !input.is_empty() {
            self.tls.read_tls(&mut input)?;
            let state = self
                .tls
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let plaintext = state.plaintext_bytes_to_read();
            if plaintext > 0 {
                let start = buf.len();
                buf.resize(start + plaintext, 0);
                self.tls.reader().read_exact(&mut buf[start..])?;
            }
            if state.peer_has_closed() && input.is_empty() {
                break;
            }
        }
        Ok(n)
    }

    /// Hands `plaintext` to rustls, sending records whenever its buffer
    /// (64 KiB by default) is full; some records may still wait in it.
    async fn encrypt(&mut self, plaintext: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < plaintext.len() {
            let accepted = self.tls.writer().write(&plaintext[written..])?;
            match accepted {
                0 => self.flush().await?,
                n => written += n,
            }
        }
        Ok(())
    }

    /// Writes every TLS record rustls holds.
    async fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tcp.writable().await?;
            match self.tls.write_tls(&mut TryWriter(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `io::Write` over a non-blocking socket: `WouldBlock` when it is full.
struct TryWriter<'a>(&'a TcpStream);

impl Write for TryWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.try_write(data)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
