"""A tiny hand-written WebSocket client (RFC 6455) for the MQTT over WebSocket tests.

``WsSocket`` does the HTTP/1.1 upgrade and then behaves like a socket whose
``sendall`` sends one masked binary frame and whose ``recv`` returns the
payload of the server's data frames, so ``mqtt_raw.RawClient.over(ws)`` is a
raw MQTT client over WebSocket. ``send_frame`` / ``recv_frame`` control every
bit of a frame (masking, FIN, opcode, reserved bits) for the framing tests.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class UpgradeRefused(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, head: str, body: bytes):
        super().__init__(f"{status}: {head!r} {body!r}")
        self.status = status
        self.head = head
        self.body = body


def upgrade_request(path: str = "/mqtt", protocols: str | None = "mqtt", key: str | None = None,
                    extra: str = "") -> tuple[bytes, str]:
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode(), key


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """One client frame (masked unless told otherwise)."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class WsSocket:
    """A WebSocket connection with a socket-like face (see the module doc)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()  # raw bytes from the server
        self.data = bytearray()  # data-frame payload not yet returned by recv
        self.protocol: str | None = None
        self.closes: list[int] = []  # close codes the server sent
        self.pongs: list[bytes] = []

    @classmethod
    def connect(cls, port: int, path: str = "/mqtt", protocols: str | None = "mqtt",
                host: str = "127.0.0.1", timeout: float = 5.0, wrap=None) -> "WsSocket":
        """Connects and upgrades; ``wrap`` turns the TCP socket into a TLS one."""
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if wrap is not None:
            sock = wrap(sock)
        ws = cls(sock)
        ws.upgrade(path, protocols)
        return ws

    def upgrade(self, path: str = "/mqtt", protocols: str | None = "mqtt") -> None:
        request, key = upgrade_request(path, protocols)
        self.sock.sendall(request)
        status, head = self.read_response_head()
        if status != 101:
            raise UpgradeRefused(status, head, bytes(self.buf))
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in head.split("\r\n")[1:])}
        assert headers.get("sec-websocket-accept") == accept, head
        self.protocol = headers.get("sec-websocket-protocol")

    def read_response_head(self) -> tuple[int, str]:
        """Reads the HTTP response head; the bytes after it stay in ``buf``."""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError(f"closed during the upgrade after {bytes(self.buf)!r}")
            self.buf += chunk
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        text = head.decode("latin-1")
        return int(text.split(" ", 2)[1]), text

    # -- raw frames
    def send_frame(self, opcode: int, payload: bytes, **kw) -> None:
        self.sock.sendall(frame(opcode, payload, **kw))

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("connection closed by server")
            self.buf += chunk

    def recv_frame(self) -> tuple[bool, int, bytes]:
        """The next server frame: (fin, opcode, payload). Server frames must be unmasked."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames must not be masked"
        assert b0 & 0x70 == 0, "no reserved bits"
        n, pos = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            (n,) = struct.unpack_from(">H", self.buf, 2)
            pos = 4
        elif n == 127:
            self._need(10)
            (n,) = struct.unpack_from(">Q", self.buf, 2)
            pos = 10
        self._need(pos + n)
        payload = bytes(self.buf[pos : pos + n])
        del self.buf[: pos + n]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_close(self) -> int:
        """Reads frames until a close; returns its status code."""
        while True:
            _, opcode, payload = self.recv_frame()
            if opcode == CLOSE:
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005

    # -- socket face (for RawClient)
    def sendall(self, data: bytes) -> None:
        self.send_frame(BINARY, data)

    def recv(self, _n: int = 65536) -> bytes:
        while not self.data:
            try:
                _, opcode, payload = self.recv_frame()
            except ConnectionResetError:
                return b""
            if opcode in (BINARY, CONTINUATION):
                self.data += payload
            elif opcode == PING:
                self.send_frame(PONG, payload)
            elif opcode == PONG:
                self.pongs.append(payload)
            elif opcode == CLOSE:
                self.closes.append(struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005)
                return b""
            else:
                raise AssertionError(f"unexpected opcode {opcode}")
        out = bytes(self.data)
        self.data.clear()
        return out

    def settimeout(self, t: float | None) -> None:
        self.sock.settimeout(t)

    def setsockopt(self, *args) -> None:
        self.sock.setsockopt(*args)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "WsSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
