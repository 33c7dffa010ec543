//! MQTT over WebSocket (MQTT 3.1.1 §6, 5.0 §6; RFC 6455), sans-IO: the
//! HTTP/1.1 upgrade request and its answer, and the frame decoder and
//! encoder. The shell (`shell::transport`) moves the bytes.
//!
//! Why not tungstenite: its `WebSocket` owns a read buffer (128 KiB by
//! default) and an output buffer per connection and drives blocking-style
//! `Read`/`Write` streams, where this broker's connections are
//! readiness-driven and keep no buffer while idle. MQTT needs little of
//! WebSocket (binary messages, ping/pong, close, no extensions), so the
//! framing here is a small state machine that unmasks payload bytes in place
//! and appends them to the connection's packet buffer as they arrive: a
//! frame is never buffered whole, a packet may span frames and a frame may
//! hold several packets. The upgrade request is parsed with `httparse`, the
//! accept key computed with ring's SHA-1 (already linked for TLS) and
//! `base64`.

use bytes::BytesMut;

/// The GUID RFC 6455 §1.3 appends to the client's key.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Subprotocols a client may ask for, in MQTT's spelling: `mqtt` (3.1.1 and
/// 5.0) and `mqttv3.1` (MQTT 3.1 clients).
pub const SUBPROTOCOLS: &[&str] = &["mqtt", "mqttv3.1"];

/// Most headers an upgrade request may have.
const MAX_HEADERS: usize = 64;

/// A WebSocket upgrade the server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept` for the client's key.
    pub accept: String,
    /// The subprotocol selected (one of [`SUBPROTOCOLS`]).
    pub protocol: &'static str,
}

/// An upgrade request the server refuses, answered with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code.
    pub status: u16,
    /// Short fixed reason, the metric label: `bad_request`, `method`,
    /// `wrong_path`, `not_websocket`, `version`, `bad_key`,
    /// `no_subprotocol`, `too_large`.
    pub reason: &'static str,
    /// What was wrong, for the log and the response body.
    pub detail: String,
}

impl Refusal {
    fn new(status: u16, reason: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason,
            detail: detail.into(),
        }
    }

    /// The refusal for a request longer than `max` bytes.
    pub fn too_large(max: usize) -> Refusal {
        Refusal::new(
            431,
            "too_large",
            format!("upgrade request longer than {max} bytes"),
        )
    }

    /// The HTTP response: status line, `Connection: close` and the detail as body.
    pub fn response(&self) -> Vec<u8> {
        let text = match self.status {
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let body = format!("{}\n", self.detail);
        let extra = if self.status == 426 {
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {text}\r\n{extra}Connection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` response.
    pub fn response(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
            self.accept, self.protocol
        )
        .into_bytes()
    }
}

/// Parses the upgrade request at the front of `input`. `Ok(None)` while the
/// header is incomplete; `Ok(Some((upgrade, n)))` when the first `n` bytes
/// were a request the server accepts for `path` (bytes after them are
/// already WebSocket frames).
pub fn parse_upgrade(input: &[u8], path: &str) -> Result<Option<(Upgrade, usize)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                "too_large",
                format!("more than {MAX_HEADERS} headers"),
            ));
        }
        Err(error) => {
            return Err(Refusal::new(
                400,
                "bad_request",
                format!("not an HTTP/1.1 request: {error}"),
            ));
        }
    };
    if request.version != Some(1) {
        return Err(Refusal::new(400, "bad_request", "HTTP/1.1 required"));
    }
    if request.method != Some("GET") {
        return Err(Refusal::new(405, "method", "only GET upgrades"));
    }
    let target = request.path.unwrap_or("");
    let requested = target.split_once('?').map_or(target, |(p, _)| p);
    if requested != path {
        return Err(Refusal::new(
            404,
            "wrong_path",
            format!("no MQTT endpoint at {requested:?} (it is at {path:?})"),
        ));
    }
    let values = |name: &'static str| header_values(request.headers, name);
    let websocket = values("upgrade").any(|v| v.eq_ignore_ascii_case("websocket"));
    let upgrade = values("connection").any(|v| v.eq_ignore_ascii_case("upgrade"));
    if !websocket || !upgrade {
        return Err(Refusal::new(
            426,
            "not_websocket",
            "a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade) is required",
        ));
    }
    if !values("sec-websocket-version").any(|v| v == "13") {
        return Err(Refusal::new(
            426,
            "version",
            "Sec-WebSocket-Version 13 is required",
        ));
    }
    let mut keys = values("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if key_is_valid(key) => key,
        _ => {
            return Err(Refusal::new(
                400,
                "bad_key",
                "Sec-WebSocket-Key must be one base64 encoded 16-byte value",
            ));
        }
    };
    // The client's order is its preference.
    let Some(protocol) = values("sec-websocket-protocol")
        .find_map(|offered| SUBPROTOCOLS.iter().copied().find(|p| *p == offered))
    else {
        return Err(Refusal::new(
            400,
            "no_subprotocol",
            "Sec-WebSocket-Protocol must offer mqtt (or mqttv3.1)",
        ));
    };
    Ok(Some((
        Upgrade {
            accept: accept_key(key),
            protocol,
        },
        consumed,
    )))
}

/// The comma-separated values of every header called `name`, trimmed.
fn header_values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether `key` is base64 of 16 bytes (RFC 6455 §4.1).
fn key_is_valid(key: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|raw| raw.len() == 16)
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    let mut input = Vec::with_capacity(key.len() + ACCEPT_GUID.len());
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(ACCEPT_GUID);
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Close status codes (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Data of a type the endpoint does not accept (text frames).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A message (here: a frame) too big to process.
    pub const TOO_BIG: u16 = 1009;
}

/// A frame the server refuses: the connection is closed with `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("WebSocket close {code}: {reason}")]
pub struct FrameError {
    /// The close status sent.
    pub code: u16,
    /// Short fixed reason, the metric label: `too_large`, `text`,
    /// `unmasked`, `control_frame`, `reserved_bits`, `opcode`,
    /// `continuation`, `close_payload`.
    pub reason: &'static str,
}

impl FrameError {
    const fn protocol(reason: &'static str) -> FrameError {
        FrameError {
            code: close_code::PROTOCOL_ERROR,
            reason,
        }
    }
}

/// Whether the peer is still talking after a decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Keep reading.
    Open,
    /// The peer sent a close frame; the reply is queued. Bytes after it
    /// were ignored.
    Closed,
}

/// Decodes client frames, appending binary payload to the packet buffer as
/// it arrives. Holds at most a partial frame header, the unmasking position
/// and a control frame's payload (≤ 125 bytes, freed once handled).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Header bytes of the frame being started (2 to 14).
    header: [u8; 14],
    header_len: u8,
    /// Opcode of the frame whose payload is being read.
    opcode: u8,
    /// Unmasking position in `mask`.
    mask_offset: u8,
    /// Inside a fragmented binary message (its first frame had FIN clear).
    fragmented: bool,
    mask: [u8; 4],
    /// Payload bytes of the current frame still to come (0: a header is next).
    remaining: u64,
    /// Payload of the control frame being read.
    control: Vec<u8>,
}

impl FrameDecoder {
    /// Decodes `input` (unmasking it in place): binary payload is appended
    /// to `out`, pongs and the close reply to `replies`. Frames whose
    /// payload exceeds `max_payload` are refused.
    pub fn decode(
        &mut self,
        mut input: &mut [u8],
        out: &mut BytesMut,
        max_payload: u64,
        replies: &mut Vec<u8>,
    ) -> Result<Status, FrameError> {
        while !input.is_empty() {
            if self.remaining == 0 {
                let taken = self.take_header(input, max_payload)?;
                input = &mut input[taken..];
                if self.header_len == 0 && self.remaining == 0 {
                    // A complete header with an empty payload.
                    if self.end_frame(replies)? == Status::Closed {
                        return Ok(Status::Closed);
                    }
                }
                continue;
            }
            let take = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(input.len());
            let (chunk, rest) = std::mem::take(&mut input).split_at_mut(take);
            input = rest;
            unmask(chunk, self.mask, usize::from(self.mask_offset));
            self.mask_offset = ((usize::from(self.mask_offset) + take) % 4) as u8;
            if self.opcode >= CLOSE {
                self.control.extend_from_slice(chunk);
            } else {
                out.extend_from_slice(chunk);
            }
            self.remaining -= take as u64;
            if self.remaining == 0 && self.end_frame(replies)? == Status::Closed {
                return Ok(Status::Closed);
            }
        }
        Ok(Status::Open)
    }

    /// Moves header bytes from `input` into `header`; when the header is
    /// whole, checks it and starts the frame (`header_len` back to 0).
    /// Returns how many bytes it took.
    fn take_header(&mut self, input: &[u8], max_payload: u64) -> Result<usize, FrameError> {
        let mut taken = 0;
        loop {
            let have = usize::from(self.header_len);
            let need = header_length(&self.header[..have]);
            if have == need {
                break;
            }
            let Some(&byte) = input.get(taken) else {
                return Ok(taken);
            };
            self.header[have] = byte;
            self.header_len += 1;
            taken += 1;
            if self.header_len == 2 {
                self.check_first_bytes()?;
            }
        }
        self.start_frame(max_payload)?;
        Ok(taken)
    }

    /// Checks what the first two header bytes say (before any length bytes
    /// are waited for).
    fn check_first_bytes(&self) -> Result<(), FrameError> {
        let [b0, b1, ..] = self.header;
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return Err(FrameError::protocol("reserved_bits"));
        }
        if b1 & 0x80 == 0 {
            // RFC 6455 §5.1: a server closes on an unmasked client frame.
            return Err(FrameError::protocol("unmasked"));
        }
        match opcode {
            TEXT => Err(FrameError {
                code: close_code::UNSUPPORTED_DATA,
                reason: "text",
            }),
            BINARY if self.fragmented => Err(FrameError::protocol("continuation")),
            CONTINUATION if !self.fragmented => Err(FrameError::protocol("continuation")),
            BINARY | CONTINUATION => Ok(()),
            CLOSE | PING | PONG if !fin || b1 & 0x7F > 125 => {
                Err(FrameError::protocol("control_frame"))
            }
            CLOSE | PING | PONG => Ok(()),
            _ => Err(FrameError::protocol("opcode")),
        }
    }

    /// The header is whole: read the length and mask, start the payload.
    fn start_frame(&mut self, max_payload: u64) -> Result<(), FrameError> {
        let [b0, b1, ..] = self.header;
        let (length, mask_at) = match b1 & 0x7F {
            126 => (
                u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                4,
            ),
            127 => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&self.header[2..10]);
                (u64::from_be_bytes(raw), 10)
            }
            short => (u64::from(short), 2),
        };
        if length >> 63 != 0 {
            return Err(FrameError::protocol("length"));
        }
        self.opcode = b0 & 0x0F;
        if self.opcode < CLOSE {
            if length > max_payload {
                return Err(FrameError {
                    code: close_code::TOO_BIG,
                    reason: "too_large",
                });
            }
            self.fragmented = b0 & 0x80 == 0;
        } else {
            self.control.clear();
        }
        self.mask
            .copy_from_slice(&self.header[mask_at..mask_at + 4]);
        self.mask_offset = 0;
        self.remaining = length;
        self.header_len = 0;
        Ok(())
    }

    /// The current frame's payload is complete: act on control frames.
    fn end_frame(&mut self, replies: &mut Vec<u8>) -> Result<Status, FrameError> {
        match self.opcode {
            PING => {
                let payload = std::mem::take(&mut self.control);
                replies.extend_from_slice(&frame_header(PONG, payload.len() as u64));
                replies.extend_from_slice(&payload);
            }
            PONG => self.control = Vec::new(),
            CLOSE => {
                let payload = std::mem::take(&mut self.control);
                let code = match payload.as_slice() {
                    [] => close_code::NORMAL,
                    [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
                    [_] => return Err(FrameError::protocol("close_payload")),
                };
                // RFC 6455 §7.4: codes an endpoint may send (1005, 1006 and
                // 1015 only name local conditions).
                if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                    return Err(FrameError::protocol("close_payload"));
                }
                replies.extend_from_slice(&close_frame(code));
                return Ok(Status::Closed);
            }
            _ => {}
        }
        Ok(Status::Open)
    }
}

/// How long the header starting with `have` is (2 until the second byte says more).
fn header_length(have: &[u8]) -> usize {
    let Some(&b1) = have.get(1) else {
        return 2;
    };
    let length_bytes = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask_bytes = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + length_bytes + mask_bytes
}

/// XORs `data` with `mask`, starting at `offset` in the mask.
fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) % 4];
    }
}

/// The header of an unmasked, final server frame of `opcode` carrying `len`
/// payload bytes (2, 4 or 10 bytes).
pub fn frame_header(opcode: u8, len: u64) -> Vec<u8> {
    let first = 0x80 | opcode;
    match len {
        0..=125 => vec![first, len as u8],
        126..=0xFFFF => {
            let [hi, lo] = (len as u16).to_be_bytes();
            vec![first, 126, hi, lo]
        }
        _ => {
            let mut header = vec![first, 127];
            header.extend_from_slice(&len.to_be_bytes());
            header
        }
    }
}

/// The header of a binary server frame carrying `len` bytes.
pub fn binary_header(len: u64) -> Vec<u8> {
    frame_header(BINARY, len)
}

/// A close frame with status `code`.
pub fn close_frame(code: u16) -> [u8; 4] {
    let [hi, lo] = code.to_be_bytes();
    [0x80 | CLOSE, 2, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = frame_header(0, payload.len() as u64);
        frame[0] = first;
        frame[1] |= 0x80;
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        frame
    }

    fn decode_all(
        decoder: &mut FrameDecoder,
        mut bytes: Vec<u8>,
        step: usize,
    ) -> (Result<Status, FrameError>, BytesMut, Vec<u8>) {
        let mut out = BytesMut::new();
        let mut replies = Vec::new();
        let mut status = Ok(Status::Open);
        for chunk in bytes.chunks_mut(step) {
            status = decoder.decode(chunk, &mut out, 1 << 20, &mut replies);
            if status != Ok(Status::Open) {
                break;
            }
        }
        (status, out, replies)
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn request(path: &str, protocols: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn upgrade_selects_the_first_mqtt_subprotocol_offered() {
        let req = request("/mqtt?x=1", "chat, mqttv3.1, mqtt");
        let (upgrade, n) = parse_upgrade(&req, "/mqtt").unwrap().unwrap();
        assert_eq!(n, req.len());
        assert_eq!(upgrade.protocol, "mqttv3.1");
        assert!(
            parse_upgrade(&req[..req.len() - 2], "/mqtt")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn upgrade_refusals_name_their_reason() {
        let reason = |req: &[u8]| parse_upgrade(req, "/mqtt").unwrap_err().reason;
        assert_eq!(reason(&request("/other", "mqtt")), "wrong_path");
        assert_eq!(reason(&request("/mqtt", "chat")), "no_subprotocol");
        assert_eq!(reason(b"\x10\x10\x00\x04MQTT\x05"), "bad_request");
        assert_eq!(reason(b"POST /mqtt HTTP/1.1\r\n\r\n"), "method");
        assert_eq!(
            reason(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n"),
            "not_websocket"
        );
        let no_key = String::from_utf8(request("/mqtt", "mqtt"))
            .unwrap()
            .replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert_eq!(reason(no_key.as_bytes()), "bad_key");
        assert!(
            Refusal::too_large(10)
                .response()
                .starts_with(b"HTTP/1.1 431 ")
        );
    }

    #[test]
    fn a_packet_split_over_frames_and_frames_split_over_reads() {
        let packet: Vec<u8> = (0..=255u8).collect();
        let mut bytes = client_frame(BINARY, &packet[..100]);
        bytes.extend(client_frame(CONTINUATION, &packet[100..101]));
        bytes.extend(client_frame(0x80 | PING, b"hi"));
        bytes.extend(client_frame(0x80 | CONTINUATION, &packet[101..]));
        for step in [1, 3, 7, 1000] {
            let mut decoder = FrameDecoder::default();
            let (status, out, replies) = decode_all(&mut decoder, bytes.clone(), step);
            assert_eq!(status, Ok(Status::Open));
            assert_eq!(&out[..], &packet[..], "step {step}");
            assert_eq!(replies, [0x8A, 2, b'h', b'i']);
        }
    }

    #[test]
    fn close_is_answered_with_its_code() {
        let mut bytes = client_frame(0x80 | BINARY, b"ab");
        bytes.extend(client_frame(0x80 | CLOSE, &1001u16.to_be_bytes()));
        bytes.extend(client_frame(0x80 | BINARY, b"after"));
        let (status, out, replies) = decode_all(&mut FrameDecoder::default(), bytes, 1000);
        assert_eq!(status, Ok(Status::Closed));
        assert_eq!(&out[..], b"ab");
        assert_eq!(replies, close_frame(1001));
    }

    #[test]
    fn bad_frames_are_refused() {
        let check = |bytes: Vec<u8>, reason: &'static str, code: u16| {
            let (status, _, _) = decode_all(&mut FrameDecoder::default(), bytes, 1000);
            assert_eq!(status, Err(FrameError { code, reason }));
        };
        check(client_frame(0x80 | TEXT, b"x"), "text", 1003);
        check(vec![0x82, 0x01, b'x'], "unmasked", 1002);
        check(client_frame(PING, b"x"), "control_frame", 1002);
        check(
            client_frame(0x80 | CONTINUATION, b"x"),
            "continuation",
            1002,
        );
        check(client_frame(0xC0 | BINARY, b"x"), "reserved_bits", 1002);
        check(client_frame(0x83, b"x"), "opcode", 1002);
        check(
            client_frame(0x80 | CLOSE, &1005u16.to_be_bytes()),
            "close_payload",
            1002,
        );
        check(client_frame(0x80 | CLOSE, b"x"), "close_payload", 1002);
        let mut big = vec![0x82, 0xFF];
        big.extend_from_slice(&(2u64 << 20).to_be_bytes());
        big.extend_from_slice(&MASK);
        check(big, "too_large", 1009);
    }

    proptest::proptest! {
        /// Any bytes: no panic, and whatever is appended never exceeds the input.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), step in 1usize..64) {
            let len = bytes.len();
            let (_, out, _) = decode_all(&mut FrameDecoder::default(), bytes, step);
            proptest::prop_assert!(out.len() <= len);
        }

        /// Valid messages, each split into fragments, read in any chunking:
        /// the payloads come out whole and in order.
        #[test]
        fn fragmented_messages_in_any_chunking(
            messages in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..4),
                1..5,
            ),
            step in 1usize..100,
        ) {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for fragments in &messages {
                for (i, fragment) in fragments.iter().enumerate() {
                    let opcode = if i == 0 { BINARY } else { CONTINUATION };
                    let fin = if i + 1 == fragments.len() { 0x80 } else { 0 };
                    bytes.extend(client_frame(fin | opcode, fragment));
                    expected.extend_from_slice(fragment);
                }
            }
            let (status, out, replies) = decode_all(&mut FrameDecoder::default(), bytes, step);
            proptest::prop_assert_eq!(status, Ok(Status::Open));
            proptest::prop_assert_eq!(&out[..], &expected[..]);
            proptest::prop_assert!(replies.is_empty());
        }
    }

    #[test]
    fn server_headers_use_the_shortest_length() {
        assert_eq!(binary_header(5), [0x82, 5]);
        assert_eq!(binary_header(300), [0x82, 126, 1, 44]);
        assert_eq!(binary_header(70_000)[..2], [0x82, 127]);
    }
}
