"""MQTT over WebSocket (issue 16): `ws` and `wss` listeners, MQTT spec §6.

Clients: paho-mqtt's websockets transport (3.1.1 and 5.0), MQTT.js in Node
(tests/node, protocol 4 and 5), and a raw WebSocket client written here
(tests/ws_raw.py) for the framing edge cases and hostile input. Every hostile
case checks that a plain TCP client is still served afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

import mqtt_raw as raw
from helpers import HOST, V5, V311, Client, myriad_bin, send_and_read_until_closed, unique
from mqtt_raw import RawClient
from test_tls import context, make_certs, metric, metric_lines
from ws_raw import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, UpgradeRefused, WsSocket, frame, upgrade_request

LISTEN_RE = re.compile(r"^MQTT \((ws|wss)\) listening on 127\.0\.0\.1:(\d+)\s*$")
NODE_DIR = Path(__file__).parent / "node"

MAX_FRAME = 65536
MAX_HANDSHAKE = 1024


def ws_config(certs: Path) -> str:
    return f"""[mqtt]
connect_timeout_secs = 2
ws_max_frame_size = {MAX_FRAME}
ws_max_handshake_bytes = {MAX_HANDSHAKE}
[[mqtt.listeners]]
kind = "ws"
listen = "127.0.0.1:0"
[[mqtt.listeners]]
kind = "wss"
listen = "127.0.0.1:0"
cert = "{certs / "server.pem"}"
key = "{certs / "server.key"}"
[[mqtt.listeners]]
kind = "ws"
listen = "127.0.0.1:0"
path = "/custom/path"
"""


def ws_ports(broker, kind: str) -> list[int]:
    ports = [int(m.group(2)) for m in map(LISTEN_RE.match, broker.stdout_lines) if m and m.group(1) == kind]
    assert ports, broker.stdout_lines
    return ports


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs") / "pki")


@pytest.fixture(scope="module")
def wsb(tmp_path_factory, certs):
    """One broker for the module: tcp, ws, wss and a ws listener on another path."""
    from helpers import Broker

    b = Broker(tmp_path_factory.mktemp("wsbroker"), raw_config=ws_config(certs)).start()
    b.ws, b.ws_custom = ws_ports(b, "ws")
    (b.wss,) = ws_ports(b, "wss")
    yield b
    b.stop()


def ws_connect(wsb, certs, kind: str, **kw) -> WsSocket:
    if kind == "ws":
        return WsSocket.connect(wsb.ws, **kw)
    ctx = context(certs)
    return WsSocket.connect(wsb.wss, wrap=lambda s: ctx.wrap_socket(s, server_hostname="localhost"), **kw)


def still_served(wsb) -> None:
    """A plain TCP client still gets its own messages back."""
    topic = unique("calm")
    with Client(wsb.port, version=V5) as c:
        c.subscribe(topic, 1)
        c.publish(topic, b"still fine", qos=1)
        assert c.get().payload == b"still fine"
    wsb.assert_alive()


def wait_metric(wsb, name: str, at_least: float, **labels: str) -> float:
    deadline = time.monotonic() + 10
    while True:
        value = metric(metric_lines(wsb.api_port), name, **labels)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


# ---- real clients -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ws", "wss"])
@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_paho_websocket_and_tcp_clients_exchange_both_ways(wsb, certs, kind, version):
    port, tls = (wsb.ws, None) if kind == "ws" else (wsb.wss, context(certs))
    to_ws, to_tcp = unique("to-ws"), unique("to-tcp")
    web = Client(port, version=version, transport="websockets", tls=tls)
    tcp = Client(wsb.port, version=version)
    try:
        web.subscribe(to_ws, 1)
        tcp.subscribe(to_tcp, 1)
        tcp.publish(to_ws, b"tcp -> " + kind.encode(), qos=1)
        assert web.get().payload == b"tcp -> " + kind.encode()
        web.publish(to_tcp, b"from " + kind.encode(), qos=1)
        assert tcp.get().payload == b"from " + kind.encode()
        # Several packets per read and large messages both ways.
        for i in range(50):
            tcp.publish(to_ws, str(i).encode(), qos=0)
        assert [m.payload for m in web.get_many(50)] == [str(i).encode() for i in range(50)]
        big = os.urandom(300 * 1024)  # server frames have no size limit
        tcp.publish(to_ws, big, qos=1)
        assert web.get(timeout=10).payload == big
        near = os.urandom(MAX_FRAME - 100)  # one client frame just under ws_max_frame_size
        web.publish(to_tcp, near, qos=1)
        assert tcp.get(timeout=10).payload == near
    finally:
        web.close()
        tcp.close()


def test_paho_on_a_configured_path(wsb):
    topic = unique("path")
    with Client(wsb.ws_custom, version=V5, transport="websockets", ws_path="/custom/path") as c:
        c.subscribe(topic, 0)
        c.publish(topic, b"custom", qos=0)
        assert c.get().payload == b"custom"


def node_ready() -> bool:
    return shutil.which("node") is not None and (NODE_DIR / "node_modules" / "mqtt").is_dir()


@pytest.fixture(scope="module")
def node():
    if not node_ready():
        if os.environ.get("CI"):
            pytest.fail("node and tests/node/node_modules are required in CI (.ci/run installs them)")
        pytest.skip("node or MQTT.js missing: cd tests/node && npm ci")
    return shutil.which("node")


@pytest.mark.parametrize("kind", ["ws", "wss"])
@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_mqttjs_and_tcp_clients_exchange_both_ways(wsb, certs, node, kind, version):
    to_js, from_js = unique("to-js"), unique("from-js")
    host = "127.0.0.1" if kind == "ws" else "localhost"
    port = wsb.ws if kind == "ws" else wsb.wss
    opts = {"url": f"{kind}://{host}:{port}/mqtt", "version": version, "sub": to_js, "pub": from_js,
            "payload": f"hello from MQTT.js over {kind}"}
    if kind == "wss":
        opts["ca"] = str(certs / "ca.pem")
    tcp = Client(wsb.port, version=V5 if version == 5 else V311)
    proc = subprocess.Popen([node, str(NODE_DIR / "mqttjs_client.js"), json.dumps(opts)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=NODE_DIR)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(json.loads(line)) for line in proc.stdout], daemon=True).start()

    def event() -> dict:
        try:
            return lines.get(timeout=15)
        except queue.Empty:
            raise AssertionError(f"MQTT.js said nothing; stderr: {proc.stderr.read1(4096)!r}")

    try:
        tcp.subscribe(from_js, 1)
        ready = event()
        assert ready["event"] == "ready" and ready["granted"] == [1], ready
        tcp.publish(to_js, b"hello from tcp", qos=1)
        got = event()
        assert got["event"] == "message" and base64.b64decode(got["payload"]) == b"hello from tcp", got
        assert tcp.get(timeout=10).payload == opts["payload"].encode()
        assert event()["event"] == "published"
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tcp.close()


# ---- framing (raw WebSocket client) ----------------------------------------------------


@pytest.mark.parametrize("kind", ["ws", "wss"])
def test_one_packet_split_across_many_frames(wsb, certs, kind):
    """A CONNECT in one-byte fragments of one message (a ping between them),
    then a PUBLISH spread over several whole binary messages."""
    with ws_connect(wsb, certs, kind) as ws:
        assert ws.protocol == "mqtt"
        connect = raw.connect_packet(unique("frag"), version=5)
        for i, byte in enumerate(connect):
            first, last = i == 0, i == len(connect) - 1
            ws.send_frame(BINARY if first else CONTINUATION, bytes([byte]), fin=last)
            if i == 3:
                ws.send_frame(PING, b"mid-message")
        c = RawClient.over(ws, V5)
        assert c.recv_type(raw.CONNACK).reason == 0
        assert ws.pongs == [b"mid-message"] or ws.recv_frame() == (True, PONG, b"mid-message")
        topic = unique("spread")
        c.subscribe(topic, 1)
        publish = raw.publish_packet(topic, b"x" * 1000, qos=1, pid=7)
        for start in range(0, len(publish), 97):
            ws.send_frame(BINARY, publish[start : start + 97])
        got = [c.recv(), c.recv()]
        assert sorted(p.type for p in got) == [raw.PUBLISH, raw.PUBACK], got
        assert [p for p in got if p.type == raw.PUBLISH][0].payload == b"x" * 1000
    still_served(wsb)


def test_many_packets_in_one_frame(wsb):
    topic = unique("batch")
    packets = (
        raw.connect_packet(unique("many"), version=V311)
        + raw.subscribe_packet([(topic, 0)], pid=1, version=V311)
        + b"".join(raw.publish_packet(topic, f"m{i}".encode(), version=V311) for i in range(20))
        + bytes([0xC0, 0x00])  # PINGREQ
    )
    with WsSocket.connect(wsb.ws) as ws:
        ws.send_frame(BINARY, packets)
        c = RawClient.over(ws, V311)
        assert c.recv_type(raw.CONNACK).reason == 0
        assert c.recv_type(raw.SUBACK)
        assert [c.recv_type(raw.PUBLISH).payload for _ in range(20)] == [f"m{i}".encode() for i in range(20)]
        c.recv_type(raw.PINGRESP)
    assert wait_metric(wsb, "myriad_ws_upgrades_total", 1, result="ok") >= 1


def test_mqttv31_subprotocol_for_mqtt_3_1_clients(wsb):
    with WsSocket.connect(wsb.ws, protocols="mqttv3.1") as ws:
        assert ws.protocol == "mqttv3.1"
        c = RawClient.over(ws, 3)
        c.connect(unique("v31"))
    with WsSocket.connect(wsb.ws, protocols="chat, mqtt, mqttv3.1") as ws:
        assert ws.protocol == "mqtt"  # the client's first choice that is MQTT


def test_ping_pong_and_close_handshake(wsb):
    with WsSocket.connect(wsb.ws) as ws:
        c = RawClient.over(ws, V5)
        c.connect(unique("pp"))
        ws.send_frame(PING, b"are you there")
        assert ws.recv_frame() == (True, PONG, b"are you there")
        ws.send_frame(PONG, b"unsolicited")  # ignored
        ws.send_frame(CLOSE, struct.pack(">H", 1000) + b"bye")
        assert ws.recv_close() == 1000
        ws.sock.settimeout(5)
        assert ws.sock.recv(1) == b""


def test_server_initiated_close_sends_a_close_frame(wsb):
    """A session taken over: DISCONNECT 0x8E, then a close frame, then the end."""
    client_id = unique("taken")
    with WsSocket.connect(wsb.ws) as ws:
        first = RawClient.over(ws, V5)
        first.connect(client_id)
        with Client(wsb.port, client_id=client_id, version=V5):
            first.expect_disconnect(raw.RC_SESSION_TAKEN_OVER)
            assert ws.closes == [1000]


# ---- hostile input -------------------------------------------------------------------


def refused_status(port: int, payload: bytes) -> tuple[int, bytes]:
    """Sends `payload`, returns the HTTP status and what followed, after the server closed."""
    got = send_and_read_until_closed(port, payload)
    assert got.startswith(b"HTTP/1.1 "), got
    return int(got.split(b" ")[1]), got


@pytest.mark.parametrize(
    "payload,status,reason",
    [
        (upgrade_request("/elsewhere")[0], 404, "wrong_path"),
        (upgrade_request(protocols=None)[0], 400, "no_subprotocol"),
        (upgrade_request(protocols="chat, wamp")[0], 400, "no_subprotocol"),
        (bytes.fromhex("101000044d5154540502003c000003636964"), 400, "bad_request"),
        (b"\x00\xff" + os.urandom(2000), 400, "bad_request"),
        (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", 426, "not_websocket"),
        (upgrade_request(extra="X-Pad: " + "a" * MAX_HANDSHAKE + "\r\n")[0], 431, "too_large"),
        (b"GET /mqtt HTTP/1.1\r\n" + b"X: " + b"b" * 4000, 431, "too_large"),
    ],
    ids=["wrong-path", "no-subprotocol", "other-subprotocols", "mqtt-connect", "garbage", "plain-http",
         "header-too-large", "endless-header"],
)
def test_refused_upgrades(wsb, payload, status, reason):
    name = "myriad_ws_upgrades_total"
    before = metric(metric_lines(wsb.api_port), name, result="refused", reason=reason)
    got, response = refused_status(wsb.ws, payload)
    assert got == status, response
    assert wait_metric(wsb, name, before + 1, result="refused", reason=reason) == before + 1
    still_served(wsb)


def test_paho_without_the_mqtt_subprotocol_is_refused(wsb):
    """paho always offers `mqtt`; a raw upgrade on the wss port with only
    other subprotocols is refused the same way."""
    with pytest.raises(UpgradeRefused) as refused:
        WsSocket.connect(wsb.ws, protocols="soap")
    assert refused.value.status == 400 and b"mqtt" in refused.value.body


def test_unfinished_upgrade_is_closed_at_the_connect_timeout(wsb):
    name = "myriad_ws_upgrades_total"
    before = metric(metric_lines(wsb.api_port), name, result="refused", reason="timeout")
    with socket.create_connection((HOST, wsb.ws), timeout=10) as s:
        s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: slow")  # and nothing more
        started = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - started < 8
    assert wait_metric(wsb, name, before + 1, result="refused", reason="timeout") == before + 1
    # A connection upgraded but silent is held to the same timeout.
    with WsSocket.connect(wsb.ws) as ws:
        ws.sock.settimeout(10)
        assert ws.sock.recv(1) == b""
    still_served(wsb)


@pytest.mark.parametrize(
    "bad,code,reason",
    [
        (frame(BINARY, b"\xc0\x00", masked=False), 1002, "unmasked"),
        (frame(TEXT, b"hello"), 1003, "text"),
        (frame(PING, b"half a ping", fin=False), 1002, "control_frame"),
        (frame(PING, b"p" * 126), 1002, "control_frame"),
        (frame(BINARY, b"\xc0\x00", rsv=4), 1002, "reserved_bits"),
        (frame(CONTINUATION, b"\xc0\x00"), 1002, "continuation"),
        (frame(0x3, b""), 1002, "opcode"),
        (bytes([0x82, 0xFF]) + struct.pack(">Q", MAX_FRAME + 1) + os.urandom(4), 1009, "too_large"),
    ],
    ids=["unmasked", "text", "fragmented-ping", "long-ping", "reserved-bits", "stray-continuation",
         "unknown-opcode", "oversized"],
)
def test_bad_frames_close_the_connection(wsb, bad, code, reason):
    name = "myriad_ws_frames_refused_total"
    before = metric(metric_lines(wsb.api_port), name, reason=reason)
    topic = unique("will")
    with Client(wsb.port, version=V5) as watcher:
        watcher.subscribe(topic, 1)
        with WsSocket.connect(wsb.ws) as ws:
            c = RawClient.over(ws, V5)
            c.connect(unique("bad"), will=raw.Will(topic, b"gone"))
            ws.sock.sendall(bad)
            assert ws.recv_close() == code
            ws.sock.settimeout(5)
            try:
                assert ws.sock.recv(1) == b""
            except ConnectionResetError:
                pass
        # The connection ended without DISCONNECT: its will is published.
        assert watcher.get().payload == b"gone"
    assert wait_metric(wsb, name, before + 1, reason=reason) == before + 1
    still_served(wsb)


def test_paho_packet_larger_than_the_frame_limit(wsb):
    """paho sends a packet as one frame: beyond ws_max_frame_size it is closed with 1009."""
    name = "myriad_ws_frames_refused_total"
    before = metric(metric_lines(wsb.api_port), name, reason="too_large")
    c = Client(wsb.ws, version=V5, transport="websockets")
    try:
        c.c.publish(unique("big"), os.urandom(MAX_FRAME + 1), qos=0)
        c.wait_disconnected(timeout=10)
    finally:
        c.close()
    assert wait_metric(wsb, name, before + 1, reason="too_large") == before + 1
    still_served(wsb)


# ---- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,key",
    [
        ('[[mqtt.listeners]]\nkind = "tcp"\nlisten = "127.0.0.1:0"\npath = "/mqtt"\n', "mqtt.listeners.path"),
        ('[[mqtt.listeners]]\nkind = "ws"\nlisten = "127.0.0.1:0"\npath = "mqtt"\n', "mqtt.listeners.path"),
        ('[[mqtt.listeners]]\nkind = "wss"\nlisten = "127.0.0.1:0"\n', "mqtt.listeners.cert"),
        ('[[mqtt.listeners]]\nkind = "ws"\nlisten = "127.0.0.1:0"\ncert = "c.pem"\n', "mqtt.listeners.kind"),
        ("[mqtt]\nws_max_frame_size = 10\n", "mqtt.ws_max_frame_size"),
        ("[mqtt]\nws_max_handshake_bytes = 100\n", "mqtt.ws_max_handshake_bytes"),
    ],
    ids=["path-on-tcp", "relative-path", "wss-without-cert", "ws-with-cert", "tiny-frames", "tiny-handshake"],
)
def test_bad_websocket_config_stops_startup_naming_the_key(tmp_path, body, key):
    cfg = tmp_path / "myriad.toml"
    cfg.write_text(body)
    res = subprocess.run(
        [str(myriad_bin()), "serve", "--config", str(cfg), "--listen", f"{HOST}:0", "--api-listen", f"{HOST}:0"],
        cwd=tmp_path, capture_output=True, timeout=20,
    )
    assert res.returncode != 0
    assert key in res.stderr.decode(), res.stderr.decode()[-2000:]
