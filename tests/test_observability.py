"""Observability end to end: `/metrics` scraped after real MQTT traffic
(counters move by exactly what the traffic caused), `/readyz`, the token
switch on `/metrics`, the leak watchdog's metrics, W3C trace context
passed through untouched while tracing is off, and JSON log lines."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import pytest

from helpers import V311, V5, Api, Broker, Client, unique, wait_until
from mqtt_raw import RawClient

pytestmark = pytest.mark.myriad_only

TOKEN = "observe-test-token-0123456789"
BROKER_CONFIG = {"api": {"token": TOKEN}, "watchdog": {"interval_secs": 1}}

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def get(port: int, path: str, token: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format -> {(name, labels): value}."""
    out: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not an exposition line: {line!r}"
        labels = frozenset(LABEL_RE.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


class Scrape:
    def __init__(self, port: int):
        status, ctype, text = get(port, "/metrics")
        assert status == 200, text
        assert ctype.startswith("text/plain"), ctype
        self.text = text
        self.samples = parse(text)

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.samples)


def test_message_and_connection_counters_move_with_traffic(broker):
    before = Scrape(broker.api_port)
    sub = Client(broker.port, client_id=unique("osub"), version=V5)
    sub.subscribe("obs/#", qos=1)
    pub = RawClient(broker.port, version=4)
    pub.connect(unique("opub"))
    for _ in range(3):
        pub.publish("obs/zero", b"0123456789", qos=0)
    for _ in range(2):
        pub.publish("obs/one", b"abcdefg", qos=1)
    got = sub.get_many(5)
    assert sorted(m.qos for m in got) == [0, 0, 0, 1, 1]
    mid = Scrape(broker.api_port)
    assert mid("myriad_messages_received_total", qos="0") - before("myriad_messages_received_total", qos="0") == 3
    assert mid("myriad_messages_received_total", qos="1") - before("myriad_messages_received_total", qos="1") == 2
    assert mid("myriad_messages_received_bytes_total", qos="0") - before("myriad_messages_received_bytes_total", qos="0") == 30
    assert mid("myriad_messages_received_bytes_total", qos="1") - before("myriad_messages_received_bytes_total", qos="1") == 14
    assert mid("myriad_messages_sent_total", qos="0") - before("myriad_messages_sent_total", qos="0") == 3
    assert mid("myriad_messages_sent_total", qos="1") - before("myriad_messages_sent_total", qos="1") == 2
    assert mid("myriad_messages_sent_bytes_total", qos="1") - before("myriad_messages_sent_bytes_total", qos="1") == 14
    assert mid("myriad_messages_received_total", qos="2") == before("myriad_messages_received_total", qos="2")
    assert mid("myriad_connections_opened_total") - before("myriad_connections_opened_total") == 2
    assert mid("myriad_connections_current") - before("myriad_connections_current") == 2
    assert mid("myriad_connection_tasks_registered") - before("myriad_connection_tasks_registered") == 2
    assert mid("myriad_subscriptions") - before("myriad_subscriptions") == 1

    sub.disconnect()
    pub.abort()

    def closed_by(reason: str) -> float:
        return Scrape(broker.api_port)("myriad_connections_closed_total", reason=reason)

    assert wait_until(lambda: closed_by("network_loss") - mid("myriad_connections_closed_total", reason="network_loss") == 1)
    after = Scrape(broker.api_port)
    assert after("myriad_connections_closed_total", reason="client_disconnect") - mid(
        "myriad_connections_closed_total", reason="client_disconnect") == 1
    assert after("myriad_connections_current") == before("myriad_connections_current")
    assert wait_until(lambda: Scrape(broker.api_port)("myriad_connection_tasks") == before("myriad_connection_tasks"))


def test_retained_queued_and_offline_sessions(broker):
    before = Scrape(broker.api_port)
    topic = f"obsret/{unique()}"
    with Client(broker.port, client_id=unique("ret")) as c:
        c.publish(topic, b"kept", qos=1, retain=True)
    # A persistent 5.0 session goes offline with a subscription: messages queue for it.
    sid = unique("persist")
    s = Client(broker.port, client_id=sid, version=V5, clean=False, connect_props={"SessionExpiryInterval": 300})
    s.subscribe("obsq/#", qos=1)
    s.disconnect()
    with Client(broker.port, client_id=unique("qpub")) as c:
        for i in range(4):
            c.publish("obsq/x", f"m{i}".encode(), qos=1)
    after = Scrape(broker.api_port)
    assert after("myriad_retained_messages") - before("myriad_retained_messages") == 1
    assert after("myriad_sessions_offline_persistent") - before("myriad_sessions_offline_persistent") == 1
    assert after("myriad_queued_messages") - before("myriad_queued_messages") == 4
    assert after("myriad_queued_bytes") - before("myriad_queued_bytes") == 4 * (len("m0") + len("obsq/x"))
    # Retained and queued messages are stored: each commit is timed.
    assert after("myriad_store_commit_duration_seconds_count") >= before("myriad_store_commit_duration_seconds_count") + 2
    assert after("myriad_store_commit_duration_seconds_bucket", le="+Inf") == after(
        "myriad_store_commit_duration_seconds_count")
    # The session comes back: its queue drains into in-flight and acknowledgements.
    s = Client(broker.port, client_id=sid, version=V5, clean=False, connect_props={"SessionExpiryInterval": 300})
    assert len(s.get_many(4)) == 4
    assert wait_until(lambda: Scrape(broker.api_port)("myriad_queued_messages") == before("myriad_queued_messages"))
    s.close()
    with Client(broker.port, client_id=unique("clr")) as c:
        c.publish(topic, b"", qos=1, retain=True)


def test_auth_failures_and_presence_changes(broker):
    api = Api(broker.api_port, TOKEN)
    dev = unique("odev")
    api.ok("POST", "/api/v1/devices", {"id": dev, "name": "metrics", "password": "pw-123456"}, expect=201)
    before = Scrape(broker.api_port)
    with RawClient(broker.port, 5) as raw:
        assert raw.connect(dev, username=dev, password=b"wrong", expect_rc=None).reason == 0x86
    good = Client(broker.port, client_id=dev, username=dev, password="pw-123456")
    assert wait_until(lambda: Scrape(broker.api_port)("myriad_devices_online") - before("myriad_devices_online") == 1)
    good.disconnect()
    assert wait_until(lambda: Scrape(broker.api_port)("myriad_presence_changes_total", to="offline")
                      - before("myriad_presence_changes_total", to="offline") == 1)
    after = Scrape(broker.api_port)
    assert after("myriad_auth_failures_total", reason="bad_credentials") - before(
        "myriad_auth_failures_total", reason="bad_credentials") == 1
    assert after("myriad_auth_accepted_total") - before("myriad_auth_accepted_total") == 1
    assert after("myriad_presence_changes_total", to="online") - before("myriad_presence_changes_total", to="online") == 1
    assert after("myriad_devices_online") == before("myriad_devices_online")
    # Presence events are published by the platform itself, right after the
    # presence change is counted (so the second may still be on its way).
    assert wait_until(lambda: Scrape(broker.api_port)("myriad_messages_internal_total")
                      - before("myriad_messages_internal_total") >= 2)


def test_process_memory_tasks_and_watchdog(broker):
    assert wait_until(lambda: Scrape(broker.api_port)("myriad_watchdog_checks_total") >= 2, timeout=10)
    s = Scrape(broker.api_port)
    assert s("myriad_process_resident_memory_bytes") > 1_000_000
    assert s("myriad_allocator_allocated_bytes") > 0
    assert s("myriad_allocator_resident_bytes") >= s("myriad_allocator_allocated_bytes") * 0.5
    assert s("myriad_runtime_tasks_alive") >= 1
    assert s("myriad_process_open_sockets") >= 2  # at least the two listeners
    for kind in ("task_deviation", "socket_deviation", "memory_growth"):
        assert s("myriad_watchdog_alert", kind=kind) == 0, s.text
    assert "# TYPE myriad_messages_received_total counter" in s.text
    assert "# TYPE myriad_store_commit_duration_seconds histogram" in s.text
    # No label carries a client or device id.
    assert "client_id" not in s.text and "device" not in "".join(
        line for line in s.text.splitlines() if "{" in line and not line.startswith("#"))


def test_readyz_and_healthz(broker):
    status, ctype, text = get(broker.api_port, "/readyz")
    assert status == 200, text
    body = json.loads(text)
    assert body == {"status": "ready",
                    "checks": {"store_open": True, "listeners_bound": True, "cluster_joined": None}}
    status, _, text = get(broker.api_port, "/healthz")
    assert status == 200 and json.loads(text) == {"status": "ok"}


@pytest.mark.parametrize("version", [V5, V311])
def test_trace_context_passes_untouched_when_tracing_is_off(broker, version):
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    sub = Client(broker.port, client_id=unique("tsub"), version=V5)
    sub.subscribe("trace/#", qos=0)
    with Client(broker.port, client_id=unique("tpub"), version=V5) as pub:
        pub.publish("trace/a", b"x", qos=1, props={"UserProperty": [("traceparent", tp), ("tracestate", "k=v")]})
    m = sub.get()
    assert m.props.get("UserProperty") == [("traceparent", tp), ("tracestate", "k=v")]
    sub.close()


def test_metrics_token_switch_and_json_logs(tmp_path):
    b = Broker(tmp_path / "b", {"api": {"token": TOKEN}, "metrics": {"require_token": True},
                                "log": {"format": "json"}, "store": {"backend": "memory"}}).start()
    try:
        assert get(b.api_port, "/metrics")[0] == 401
        status, _, text = get(b.api_port, "/metrics", token=TOKEN)
        assert status == 200 and "myriad_connections_current" in text
        assert get(b.api_port, "/readyz")[0] == 200
    finally:
        b.stop()
    lines = [line for line in b.log_path.read_text().splitlines() if line.strip()]
    assert lines, "no log lines"
    records = [json.loads(line) for line in lines]
    assert any(r.get("fields", {}).get("message") == "MQTT listener bound" for r in records), records
    assert all("level" in r and "timestamp" in r for r in records)


def test_bad_observability_config_names_the_key(tmp_path):
    b = Broker(tmp_path / "bad", {"tracing": {"sample_ratio": 2.0}})
    with pytest.raises(RuntimeError):
        b.start()
    assert "tracing.sample_ratio" in b.log_path.read_text()


class Collector:
    """A minimal OTLP/HTTP collector on loopback: keeps every POSTed body."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received: list[tuple[str, str, bytes]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                received.append((self.path, self.headers.get("Content-Type", ""), self.rfile.read(n)))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def body(self) -> bytes:
        return b"".join(body for _, _, body in self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def traceparent_of(m) -> tuple[str, str, str]:
    props = dict(m.props.get("UserProperty", []))
    version, trace_id, parent_id, flags = props["traceparent"].split("-")
    assert version == "00"
    return trace_id, parent_id, flags


def test_one_trace_through_broker_and_shadow_service_exported_over_otlp(tmp_path):
    collector = Collector()
    b = Broker(tmp_path / "otel", {
        "api": {"token": TOKEN},
        "store": {"backend": "memory"},
        "tracing": {"otlp_endpoint": f"http://127.0.0.1:{collector.port}", "service_name": "myriad-test"},
    }).start()
    plain = ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")
    shadow = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    try:
        # Broker only: publisher -> mqtt.route -> subscriber.
        sub = Client(b.port, client_id=unique("tsub"))
        sub.subscribe("tr/#", qos=1)
        with Client(b.port, client_id=unique("tpub")) as pub:
            pub.publish("tr/x", b"1", qos=1,
                        props={"UserProperty": [("traceparent", f"00-{plain[0]}-{plain[1]}-01")]})
        trace_id, route_span, flags = traceparent_of(sub.get())
        assert trace_id == plain[0] and flags == "01"
        assert route_span != plain[1]
        sub.close()

        # Through the device layer: update -> shadow service -> accepted.
        api = Api(b.api_port, TOKEN)
        dev = unique("tdev")
        api.ok("POST", "/api/v1/devices", {"id": dev, "name": "t", "password": "pw-123456"}, expect=201)
        d = Client(b.port, client_id=dev, username=dev, password="pw-123456")
        d.subscribe(f"$shadow/{dev}/update/accepted", qos=1)
        d.publish(f"$shadow/{dev}/update", json.dumps({"state": {"reported": {"t": 21}}}), qos=1,
                  props={"UserProperty": [("traceparent", f"00-{shadow[0]}-{shadow[1]}-01"),
                                          ("tracestate", "vendor=x")]})
        accepted = d.get()
        assert json.loads(accepted.payload)["state"]["reported"] == {"t": 21}
        trace_id2, reply_span, _ = traceparent_of(accepted)
        assert trace_id2 == shadow[0]
        assert reply_span != shadow[1]
        assert dict(accepted.props["UserProperty"])["tracestate"] == "vendor=x"
        d.close()
    finally:
        b.stop()  # flushes the batch exporter
    try:
        assert wait_until(lambda: bytes.fromhex(shadow[0]) in collector.body(), timeout=10), collector.received
        assert all(path == "/v1/traces" and ctype == "application/x-protobuf" for path, ctype, _ in collector.received)
        body = collector.body()
        # OTLP protobuf carries ids as raw bytes: each span and its parent are there.
        for hex_id in (plain[0], plain[1], route_span, shadow[0], shadow[1], reply_span):
            assert bytes.fromhex(hex_id) in body, hex_id
        assert b"mqtt.route" in body and b"myriad-test" in body
        # Two spans in the device-layer trace: the update's route span and the reply's.
        assert body.count(bytes.fromhex(shadow[0])) >= 2
    finally:
        collector.close()


def test_command_counts_by_class_and_status(broker):
    from test_commands import Device, send, wait_online, wait_status

    api = Api(broker.api_port, TOKEN)
    dev = unique("cdev")
    api.ok("POST", "/api/v1/devices", {"id": dev, "password": "dev-pw-123"}, expect=201)
    before = Scrape(broker.api_port)
    device = Device(broker.port, dev, "dev-pw-123", V5)
    try:
        wait_online(api, dev)
        cmd = send(api, dev, name="reboot", payload={"delay": 1}, priority="l2")
        done = wait_status(api, cmd["id"], {"succeeded", "failed", "timed_out"})
        assert done["status"] == "succeeded", done
    finally:
        device.close()
    after = Scrape(broker.api_port)
    for status in ("queued", "sent", "delivered", "succeeded"):
        key = ("myriad_commands_total", {"class": "l2", "status": status})
        assert after(key[0], **key[1]) - before(key[0], **key[1]) == 1, status
    assert after("myriad_commands_total", **{"class": "l2", "status": "failed"}) == before(
        "myriad_commands_total", **{"class": "l2", "status": "failed"})
    assert after("myriad_command_duration_seconds_count", **{"class": "l2"}) - before(
        "myriad_command_duration_seconds_count", **{"class": "l2"}) == 1
    for cls in ("l1", "l2", "l3"):
        assert after.has("myriad_command_breaker_state")
        assert after("myriad_command_breaker_state", **{"class": cls}) == 0
    assert after("myriad_commands_active") == 0


def test_connection_log_lines_carry_client_id_and_peer(tmp_path):
    b = Broker(tmp_path / "logs", {"store": {"backend": "memory"},
                                   "log": {"format": "json", "filter": "info,myriad_broker=debug"}}).start()
    ids = [unique("log"), unique("log")]
    try:
        c = Client(b.port, client_id=ids[0])
        c.disconnect()
        raw = RawClient(b.port, version=5)
        raw.connect(ids[1])
        raw.abort()
        with RawClient(b.port, version=5) as refused:  # reserved id: refused before a session exists
            refused.connect("$myriad/nope", expect_rc=None)

        def lines() -> list[dict]:
            out = []
            for line in b.log_path.read_text().splitlines():
                if line.strip():
                    out.append(json.loads(line))
            return out

        def connection_lines() -> list[dict]:
            return [r for r in lines() if r.get("target", "").startswith("myriad_broker::shell::connection")]

        ended = {"connection lost", "connection closed by the server"}
        assert wait_until(lambda: set(ids) <= {r["fields"].get("client_id") for r in connection_lines()
                                               if r["fields"].get("message") in ended})
    finally:
        b.stop()
    records = connection_lines()
    messages = {r["fields"]["message"] for r in records}
    assert {"connected", "connection lost", "reserved client id refused"} <= messages, messages
    for r in records:
        fields = r["fields"]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", fields.get("peer", "")), r
        if fields["message"] not in ("no CONNECT in time", "first packet was not CONNECT",
                                     "connection failed before CONNECT", "bad CONNECT"):
            assert fields.get("client_id"), r
    seen = {r["fields"].get("client_id") for r in records}
    assert set(ids) <= seen, seen
