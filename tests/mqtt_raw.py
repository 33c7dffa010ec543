"""A tiny hand-written MQTT 3.1 / 3.1.1 / 5.0 wire codec and a blocking raw-socket client.

Used where paho-mqtt hides the bytes we need to control or inspect: malformed
packets, exact reason codes, DUP flags, packet identifiers, topic aliases and
flow control. Everything here is deliberately simple and explicit.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

# Control packet types
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP = 8, 9, 10, 11, 12, 13
DISCONNECT, AUTH = 14, 15

PACKET_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

# Reason codes used by the tests (MQTT 5.0 section 2.4)
RC_SUCCESS = 0x00
RC_DISCONNECT_WITH_WILL = 0x04
RC_NO_MATCHING_SUBSCRIBERS = 0x10
RC_NO_SUBSCRIPTION_EXISTED = 0x11
RC_UNSPECIFIED = 0x80
RC_MALFORMED = 0x81
RC_PROTOCOL_ERROR = 0x82
RC_IMPL_SPECIFIC = 0x83
RC_UNSUPPORTED_PROTOCOL = 0x84
RC_CLIENT_ID_INVALID = 0x85
RC_NOT_AUTHORIZED = 0x87
RC_KEEP_ALIVE_TIMEOUT = 0x8D
RC_SESSION_TAKEN_OVER = 0x8E
RC_TOPIC_FILTER_INVALID = 0x8F
RC_TOPIC_NAME_INVALID = 0x90
RC_RECEIVE_MAX_EXCEEDED = 0x93
RC_TOPIC_ALIAS_INVALID = 0x94
RC_PACKET_TOO_LARGE = 0x95

# MQTT 3.1.1 CONNACK return codes
V3_ACCEPTED = 0x00
V3_BAD_PROTOCOL_LEVEL = 0x01
V3_IDENTIFIER_REJECTED = 0x02

# Property identifier -> (name, type)
PROPS: dict[int, tuple[str, str]] = {
    0x01: ("PayloadFormatIndicator", "byte"),
    0x02: ("MessageExpiryInterval", "u32"),
    0x03: ("ContentType", "str"),
    0x08: ("ResponseTopic", "str"),
    0x09: ("CorrelationData", "bin"),
    0x0B: ("SubscriptionIdentifier", "varint"),
    0x11: ("SessionExpiryInterval", "u32"),
    0x12: ("AssignedClientIdentifier", "str"),
    0x13: ("ServerKeepAlive", "u16"),
    0x15: ("AuthenticationMethod", "str"),
    0x16: ("AuthenticationData", "bin"),
    0x17: ("RequestProblemInformation", "byte"),
    0x18: ("WillDelayInterval", "u32"),
    0x19: ("RequestResponseInformation", "byte"),
    0x1A: ("ResponseInformation", "str"),
    0x1C: ("ServerReference", "str"),
    0x1F: ("ReasonString", "str"),
    0x21: ("ReceiveMaximum", "u16"),
    0x22: ("TopicAliasMaximum", "u16"),
    0x23: ("TopicAlias", "u16"),
    0x24: ("MaximumQoS", "byte"),
    0x25: ("RetainAvailable", "byte"),
    0x26: ("UserProperty", "pair"),
    0x27: ("MaximumPacketSize", "u32"),
    0x28: ("WildcardSubscriptionAvailable", "byte"),
    0x29: ("SubscriptionIdentifierAvailable", "byte"),
    0x2A: ("SharedSubscriptionAvailable", "byte"),
}
PROP_IDS = {name: pid for pid, (name, _) in PROPS.items()}
MULTI_PROPS = {"UserProperty", "SubscriptionIdentifier"}


# ---------------------------------------------------------------- primitives

def varint(n: int) -> bytes:
    """Variable Byte Integer (remaining length, property lengths, sub ids)."""
    if n < 0 or n > 268_435_455:
        raise ValueError(n)
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def decode_varint(buf: bytes, pos: int = 0) -> tuple[int, int]:
    """Returns (value, new_pos). Raises ValueError on more than 4 bytes."""
    mult, value = 1, 0
    for i in range(4):
        b = buf[pos + i]
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos + i + 1
        mult *= 128
    raise ValueError("variable byte integer longer than 4 bytes")


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def mqtt_str(s: str | bytes) -> bytes:
    """UTF-8 string (or raw bytes, for deliberately broken strings) with a 2-byte length."""
    b = s.encode("utf-8") if isinstance(s, str) else s
    return u16(len(b)) + b


def mqtt_bin(b: bytes) -> bytes:
    return u16(len(b)) + b


def fixed(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | (flags & 0x0F)]) + varint(len(body)) + body


# ---------------------------------------------------------------- properties

def encode_props(props: Any = None) -> bytes:
    """Encode MQTT 5.0 properties with their length prefix.

    ``props`` is a dict {name: value} (UserProperty / SubscriptionIdentifier may be
    lists) or a list of (name_or_id, value) pairs, which allows duplicates and
    a chosen order (for the duplicate-property tests).
    """
    if not props:
        return varint(0)
    items: list[tuple[Any, Any]] = []
    if isinstance(props, dict):
        for k, v in props.items():
            if k in MULTI_PROPS and isinstance(v, list):
                items.extend((k, x) for x in v)
            else:
                items.append((k, v))
    else:
        items = list(props)
    out = bytearray()
    for k, v in items:
        pid = PROP_IDS[k] if isinstance(k, str) else k
        kind = PROPS[pid][1]
        out += varint(pid)
        if kind == "byte":
            out.append(v)
        elif kind == "u16":
            out += u16(v)
        elif kind == "u32":
            out += u32(v)
        elif kind == "varint":
            out += varint(v)
        elif kind == "str":
            out += mqtt_str(v)
        elif kind == "bin":
            out += mqtt_bin(v)
        elif kind == "pair":
            out += mqtt_str(v[0]) + mqtt_str(v[1])
    return varint(len(out)) + bytes(out)


def decode_props(buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
    length, pos = decode_varint(buf, pos)
    end = pos + length
    props: dict[str, Any] = {}
    while pos < end:
        pid, pos = decode_varint(buf, pos)
        if pid not in PROPS:
            raise ValueError(f"unknown property id {pid:#x}")
        name, kind = PROPS[pid]
        if kind == "byte":
            v = buf[pos]
            pos += 1
        elif kind == "u16":
            (v,) = struct.unpack_from(">H", buf, pos)
            pos += 2
        elif kind == "u32":
            (v,) = struct.unpack_from(">I", buf, pos)
            pos += 4
        elif kind == "varint":
            v, pos = decode_varint(buf, pos)
        elif kind in ("str", "bin"):
            (n,) = struct.unpack_from(">H", buf, pos)
            raw = bytes(buf[pos + 2 : pos + 2 + n])
            pos += 2 + n
            v = raw.decode("utf-8") if kind == "str" else raw
        else:  # pair
            (n,) = struct.unpack_from(">H", buf, pos)
            k = bytes(buf[pos + 2 : pos + 2 + n]).decode("utf-8")
            pos += 2 + n
            (n,) = struct.unpack_from(">H", buf, pos)
            val = bytes(buf[pos + 2 : pos + 2 + n]).decode("utf-8")
            pos += 2 + n
            v = (k, val)
        if name in MULTI_PROPS:
            props.setdefault(name, []).append(v)
        elif name in props:
            raise ValueError(f"duplicate property {name}")
        else:
            props[name] = v
    if pos != end:
        raise ValueError("property length mismatch")
    return props, end


# ---------------------------------------------------------------- encoders

@dataclass
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    props: Any = None  # MQTT 5.0 will properties


def connect_packet(
    client_id: str | bytes = "",
    version: int = 5,
    clean: bool = True,
    keepalive: int = 60,
    props: Any = None,
    will: Will | None = None,
    username: str | None = None,
    password: bytes | None = None,
    protocol_name: str | bytes | None = None,
    level: int | None = None,
    reserved_flag: bool = False,
) -> bytes:
    level = version if level is None else level
    if protocol_name is None:
        # MQTT 3.1 (level 3) calls itself "MQIsdp"
        protocol_name = "MQIsdp" if version == 3 else "MQTT"
    flags = 0
    if clean:
        flags |= 0x02
    if will is not None:
        flags |= 0x04 | (will.qos << 3)
        if will.retain:
            flags |= 0x20
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    if reserved_flag:
        flags |= 0x01
    body = mqtt_str(protocol_name) + bytes([level, flags]) + u16(keepalive)
    if version == 5:
        body += encode_props(props)
    body += mqtt_str(client_id)
    if will is not None:
        if version == 5:
            body += encode_props(will.props)
        body += mqtt_str(will.topic) + mqtt_bin(will.payload)
    if username is not None:
        body += mqtt_str(username)
    if password is not None:
        body += mqtt_bin(password)
    return fixed(CONNECT, 0, body)


def publish_packet(
    topic: str | bytes,
    payload: bytes = b"",
    qos: int = 0,
    retain: bool = False,
    pid: int | None = None,
    dup: bool = False,
    version: int = 5,
    props: Any = None,
) -> bytes:
    flags = (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = mqtt_str(topic)
    if qos > 0:
        body += u16(1 if pid is None else pid)
    if version == 5:
        body += encode_props(props)
    body += payload
    return fixed(PUBLISH, flags, body)


def ack_packet(ptype: int, pid: int, version: int = 5, reason: int | None = None, props: Any = None) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP."""
    flags = 0x02 if ptype == PUBREL else 0
    body = u16(pid)
    if version == 5 and (reason not in (None, 0) or props):
        body += bytes([reason or 0]) + encode_props(props)
    return fixed(ptype, flags, body)


def subscribe_packet(
    filters: list[tuple[str | bytes, int]],
    pid: int = 1,
    version: int = 5,
    props: Any = None,
    flags: int = 0x02,
) -> bytes:
    """``filters`` is a list of (filter, options byte); for 3.1.1 the options byte is the QoS."""
    body = u16(pid)
    if version == 5:
        body += encode_props(props)
    for f, opts in filters:
        body += mqtt_str(f) + bytes([opts])
    return fixed(SUBSCRIBE, flags, body)


def sub_options(qos: int = 0, no_local: bool = False, rap: bool = False, rh: int = 0) -> int:
    return qos | (0x04 if no_local else 0) | (0x08 if rap else 0) | (rh << 4)


def unsubscribe_packet(filters: list[str], pid: int = 1, version: int = 5, props: Any = None) -> bytes:
    body = u16(pid)
    if version == 5:
        body += encode_props(props)
    for f in filters:
        body += mqtt_str(f)
    return fixed(UNSUBSCRIBE, 0x02, body)


def disconnect_packet(version: int = 5, reason: int = 0, props: Any = None) -> bytes:
    if version == 5 and (reason or props):
        return fixed(DISCONNECT, 0, bytes([reason]) + encode_props(props))
    return fixed(DISCONNECT, 0, b"")


PINGREQ_PACKET = bytes([0xC0, 0x00])


# ---------------------------------------------------------------- decoder

@dataclass
class Packet:
    type: int
    flags: int
    body: bytes
    version: int = 5
    # decoded fields (depending on type)
    reason: int | None = None  # CONNACK return/reason code, ack/DISCONNECT reason
    session_present: bool | None = None
    pid: int | None = None
    topic: str | None = None
    topic_bytes: bytes | None = None
    payload: bytes | None = None
    qos: int = 0
    retain: bool = False
    dup: bool = False
    props: dict[str, Any] = field(default_factory=dict)
    reasons: list[int] = field(default_factory=list)  # SUBACK / UNSUBACK

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.type, f"type{self.type}")

    def __repr__(self) -> str:
        parts = [self.name, f"flags={self.flags:#x}"]
        for k in ("reason", "session_present", "pid", "topic", "qos", "retain", "dup"):
            v = getattr(self, k)
            if v not in (None, False, 0) or (k == "reason" and v == 0):
                parts.append(f"{k}={v!r}")
        if self.payload is not None:
            parts.append(f"payload={self.payload[:40]!r}{'...' if len(self.payload) > 40 else ''}")
        if self.reasons:
            parts.append(f"reasons={[hex(r) for r in self.reasons]}")
        if self.props:
            parts.append(f"props={self.props!r}")
        return "<" + " ".join(parts) + ">"


def parse_packet(first: int, body: bytes, version: int) -> Packet:
    ptype, flags = first >> 4, first & 0x0F
    p = Packet(ptype, flags, body, version)
    v5 = version == 5
    if ptype == CONNACK:
        p.session_present = bool(body[0] & 0x01)
        p.reason = body[1]
        if v5 and len(body) > 2:
            p.props, _ = decode_props(body, 2)
    elif ptype == PUBLISH:
        p.qos = (flags >> 1) & 0x03
        p.retain = bool(flags & 0x01)
        p.dup = bool(flags & 0x08)
        (n,) = struct.unpack_from(">H", body, 0)
        p.topic_bytes = bytes(body[2 : 2 + n])
        p.topic = p.topic_bytes.decode("utf-8", errors="replace")
        pos = 2 + n
        if p.qos > 0:
            (p.pid,) = struct.unpack_from(">H", body, pos)
            pos += 2
        if v5:
            p.props, pos = decode_props(body, pos)
        p.payload = bytes(body[pos:])
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        (p.pid,) = struct.unpack_from(">H", body, 0)
        p.reason = 0
        if v5 and len(body) > 2:
            p.reason = body[2]
            if len(body) > 3:
                p.props, _ = decode_props(body, 3)
    elif ptype in (SUBACK, UNSUBACK):
        (p.pid,) = struct.unpack_from(">H", body, 0)
        pos = 2
        if v5:
            p.props, pos = decode_props(body, pos)
        p.reasons = list(body[pos:])
    elif ptype == DISCONNECT:
        p.reason = 0
        if v5 and len(body) >= 1:
            p.reason = body[0]
            if len(body) > 1:
                p.props, _ = decode_props(body, 1)
    elif ptype == AUTH:
        p.reason = body[0] if body else 0
    return p


class Closed(Exception):
    """The server closed the connection."""


class RawClient:
    """Blocking raw-socket MQTT client: send bytes, read whole packets."""

    def __init__(self, port: int, version: int = 5, host: str = "127.0.0.1", timeout: float = 5.0):
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed = False
        self._next_pid = 1
        self.connack: Packet | None = None
        # PUBLISH packets that arrived while we waited for an acknowledgement
        self.stashed: list[Packet] = []

    @classmethod
    def over(cls, sock: socket.socket, version: int = 5) -> "RawClient":
        """A raw client on an already connected socket (a TLS one, say)."""
        self = cls.__new__(cls)
        self.version = version
        self.sock = sock
        self.buf = bytearray()
        self.closed = False
        self._next_pid = 1
        self.connack = None
        self.stashed = []
        return self

    # -- plumbing
    def next_pid(self) -> int:
        pid = self._next_pid
        self._next_pid = pid % 65535 + 1
        return pid

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no packet from server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout as e:
            raise TimeoutError("no packet from server in time") from e
        except (ConnectionResetError, BrokenPipeError) as e:
            self.closed = True
            raise Closed(str(e)) from e
        if not chunk:
            self.closed = True
            raise Closed("connection closed by server")
        self.buf += chunk

    def recv(self, timeout: float = 5.0) -> Packet:
        """Next whole packet. Raises TimeoutError, or Closed if the server closed first."""
        if self.stashed:
            return self.stashed.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                try:
                    length, pos = decode_varint(self.buf, 1)
                except IndexError:
                    length = None
                if length is not None and len(self.buf) >= pos + length:
                    first = self.buf[0]
                    body = bytes(self.buf[pos : pos + length])
                    del self.buf[: pos + length]
                    return parse_packet(first, body, self.version)
            self._fill(deadline)

    def recv_type(self, ptype: int, timeout: float = 5.0) -> Packet:
        p = self.recv(timeout)
        assert p.type == ptype, f"expected {PACKET_NAMES[ptype]}, got {p!r}"
        return p

    def _recv_ack(self, ptype: int, timeout: float = 5.0) -> Packet:
        """Like recv_type, but PUBLISH packets arriving first are kept for later recv() calls."""
        deadline = time.monotonic() + timeout
        held: list[Packet] = []
        try:
            while True:
                if self.stashed and self.stashed[0].type == ptype:
                    return self.stashed.pop(0)
                if self.stashed and self.stashed[0].type == PUBLISH:
                    held.append(self.stashed.pop(0))
                    continue
                p = self.recv(max(0.0, deadline - time.monotonic()))
                if p.type == PUBLISH and ptype != PUBLISH:
                    held.append(p)
                    continue
                assert p.type == ptype, f"expected {PACKET_NAMES[ptype]}, got {p!r}"
                return p
        finally:
            self.stashed[:0] = held

    def expect_nothing(self, wait: float = 0.5) -> None:
        """Assert that no packet arrives within ``wait`` seconds (a close also fails)."""
        try:
            p = self.recv(wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected packet {p!r}")

    def expect_closed(self, timeout: float = 5.0) -> list[Packet]:
        """Wait until the server closes the connection; returns packets seen before the close."""
        seen: list[Packet] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                seen.append(self.recv(max(0.0, deadline - time.monotonic())))
            except Closed:
                return seen
            except TimeoutError as e:
                raise AssertionError(f"server did not close the connection within {timeout}s; saw {seen}") from e

    def expect_disconnect(self, reason: int | set[int] | None, timeout: float = 5.0) -> Packet | None:
        """For 5.0: a DISCONNECT with ``reason`` then a close. For 3.1.1 (reason None): just a close."""
        seen = self.expect_closed(timeout)
        if reason is None:
            assert not [p for p in seen if p.type != PUBLISH], f"3.1.1 server must just close, got {seen}"
            return None
        reasons = {reason} if isinstance(reason, int) else set(reason)
        discs = [p for p in seen if p.type == DISCONNECT]
        assert discs, f"expected DISCONNECT {sorted(hex(r) for r in reasons)} before close, got {seen}"
        assert discs[-1].reason in reasons, (
            f"expected DISCONNECT reason in {[hex(r) for r in sorted(reasons)]}, got {discs[-1]!r}"
        )
        return discs[-1]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def abort(self) -> None:
        """Abnormal close: RST the connection without a DISCONNECT."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- convenience
    def connect(self, client_id: str | bytes = "", clean: bool = True, keepalive: int = 60,
                props: Any = None, will: Will | None = None, expect_rc: int | None = 0,
                **kw: Any) -> Packet:
        self.send(connect_packet(client_id, self.version, clean, keepalive, props, will, **kw))
        p = self.recv_type(CONNACK)
        self.connack = p
        if expect_rc is not None:
            assert p.reason == expect_rc, f"CONNACK {p!r}"
        return p

    def subscribe(self, filters: list[tuple[str, int]] | str, qos: int = 0, props: Any = None) -> Packet:
        if isinstance(filters, str):
            filters = [(filters, qos)]
        pid = self.next_pid()
        self.send(subscribe_packet(filters, pid, self.version, props))
        p = self._recv_ack(SUBACK)
        assert p.pid == pid
        return p

    def unsubscribe(self, filters: list[str]) -> Packet:
        pid = self.next_pid()
        self.send(unsubscribe_packet(filters, pid, self.version))
        p = self._recv_ack(UNSUBACK)
        assert p.pid == pid
        return p

    def publish(self, topic: str | bytes, payload: bytes = b"", qos: int = 0, retain: bool = False,
                props: Any = None, pid: int | None = None, dup: bool = False, wait: bool = True) -> int | None:
        """Publish; with ``wait`` completes the QoS 1/2 handshake. Returns the packet id."""
        if qos > 0 and pid is None:
            pid = self.next_pid()
        self.send(publish_packet(topic, payload, qos, retain, pid, dup, self.version, props))
        if wait and qos == 1:
            ack = self._recv_ack(PUBACK)
            assert ack.pid == pid
        elif wait and qos == 2:
            rec = self._recv_ack(PUBREC)
            assert rec.pid == pid
            self.send(ack_packet(PUBREL, pid, self.version))
            comp = self._recv_ack(PUBCOMP)
            assert comp.pid == pid
        return pid

    def ack(self, p: Packet) -> None:
        """Acknowledge an incoming QoS 1/2 PUBLISH (QoS 2: full PUBREC/PUBREL/PUBCOMP exchange)."""
        if p.qos == 1:
            self.send(ack_packet(PUBACK, p.pid, self.version))
        elif p.qos == 2:
            self.send(ack_packet(PUBREC, p.pid, self.version))
            rel = self._recv_ack(PUBREL)
            assert rel.pid == p.pid and rel.flags == 0x02, rel
            self.send(ack_packet(PUBCOMP, p.pid, self.version))

    def recv_publish(self, timeout: float = 5.0, ack: bool = True) -> Packet:
        p = self.recv_type(PUBLISH, timeout)
        if ack:
            self.ack(p)
        return p

    def disconnect(self, reason: int = 0, props: Any = None) -> None:
        try:
            self.send(disconnect_packet(self.version, reason, props))
        except OSError:
            pass
        self.close()

    def ping(self, timeout: float = 5.0) -> None:
        self.send(PINGREQ_PACKET)
        self.recv_type(PINGRESP, timeout)
