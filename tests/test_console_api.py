"""The web console's data routes (issue 21) against a real `myriad serve`: live events over
Server-Sent Events (read with a raw HTTP client), the overview, a device's session, recent
events and OTA state, and the retained message browser, with real paho-mqtt clients."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time

import pytest

from helpers import HOST, Api, Broker, Client, unique, wait_until

pytestmark = [pytest.mark.myriad_only, pytest.mark.timeout(90)]

TOKEN = "console-api-test-token-0123"
CONFIG = f"""
[auth]
allow_anonymous = true

[api]
token = "{TOKEN}"
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("console"), raw_config=CONFIG).start()
    yield b
    b.stop()


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


class Sse:
    """`GET /api/v1/events` read with http.client: events (name, JSON data) and comment lines
    go to queues from a reader thread."""

    def __init__(self, port: int, query: str = "", token: str = TOKEN):
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)
        self.conn.request("GET", "/api/v1/events" + query, headers={"Authorization": f"Bearer {token}"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}
        self.events: queue.Queue[tuple[str, object]] = queue.Queue()
        self.comments: queue.Queue[str] = queue.Queue()
        self.ended = threading.Event()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.body = json.loads(self.resp.read() or b"null")

    def _read(self) -> None:
        buf = b""
        name, data = None, []
        try:
            while True:
                chunk = self.resp.read1(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode().rstrip("\r")
                    if line == "":
                        if data:
                            self.events.put((name or "message", json.loads("\n".join(data))))
                        name, data = None, []
                    elif line.startswith(":"):
                        self.comments.put(line[1:].strip())
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass
        finally:
            self.ended.set()

    def next(self, pred=lambda name, data: True, timeout: float = 10.0) -> tuple[str, dict]:
        """The first event matching `pred` within `timeout` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no matching event in time")
            try:
                name, data = self.events.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError("no matching event in time") from None
            if pred(name, data):
                return name, data

    def collect(self, wait: float) -> list[tuple[str, dict]]:
        """Every event arriving within `wait` seconds."""
        out = []
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                out.append(self.events.get(timeout=remaining))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        try:
            if self.conn.sock is not None:
                self.conn.sock.shutdown(2)
        except OSError:
            pass
        self.conn.close()


def device(api: Api, prefix: str = "con") -> tuple[str, str]:
    return api.create_device(prefix, "console-pw-1")


def connect_device(broker: Broker, dev_id: str, pw: str, **kw) -> Client:
    return Client(broker.port, client_id=dev_id, username=dev_id, password=pw, **kw)


# ------------------------------------------------------------------ events


def test_presence_events_arrive_when_a_device_connects_and_disconnects(broker, api):
    dev_id, pw = device(api)
    stream = Sse(broker.api_port, "?types=presence")
    try:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        time.sleep(0.2)  # the stream is subscribed before the device connects
        dev = connect_device(broker, dev_id, pw)
        name, data = stream.next(lambda n, d: d.get("device") == dev_id)
        assert name == "presence"
        assert data["online"] is True and data["reason"] is None
        assert abs(data["at_ms"] - time.time() * 1000) < 10_000
        dev.c.disconnect()
        name, data = stream.next(lambda n, d: d.get("device") == dev_id)
        assert (name, data["online"], data["reason"]) == ("presence", False, "client_disconnect")
        assert all(n == "presence" for n, _ in stream.collect(0.3))
    finally:
        stream.close()


def test_device_filter_only_streams_that_device(broker, api):
    (a, pa), (b, pb) = device(api, "fa"), device(api, "fb")
    stream = Sse(broker.api_port, f"?device={a}")
    try:
        time.sleep(0.2)
        cb = connect_device(broker, b, pb)
        ca = connect_device(broker, a, pa)
        api.ok("PATCH", f"/api/v1/devices/{b}/shadow", {"desired": {"x": 1}})
        api.ok("PATCH", f"/api/v1/devices/{a}/shadow", {"desired": {"x": 2}})
        stream.next(lambda n, d: n == "shadow")
        seen = stream.collect(0.5)
        cb.c.disconnect()
        ca.c.disconnect()
        seen += stream.collect(1.0)
        assert seen, "the device's own events arrive"
        # Only `a`'s events, and no overview or rollout events (they belong to no device).
        assert all(d.get("device") == a for _, d in seen), seen
        assert {n for n, _ in seen} <= {"presence", "shadow"}
    finally:
        stream.close()


def test_command_status_events_follow_the_command(broker, api):
    dev_id, pw = device(api, "cmd")
    dev = connect_device(broker, dev_id, pw)
    dev.subscribe(f"$commands/{dev_id}/+", 1)
    stream = Sse(broker.api_port, f"?types=command&device={dev_id}")
    try:
        time.sleep(0.2)
        cmd = api.ok("POST", f"/api/v1/devices/{dev_id}/commands", {"name": "reboot", "payload": {}}, expect=201)
        msg = dev.get(timeout=5)
        assert msg.topic == f"$commands/{dev_id}/reboot"
        reply = msg.props.get("ResponseTopic")
        corr = msg.props.get("CorrelationData")
        dev.publish(reply, json.dumps({"status": "succeeded"}), qos=1, props={"CorrelationData": corr})
        statuses = []
        while "succeeded" not in statuses:
            name, data = stream.next(timeout=10)
            assert name == "command"
            assert (data["id"], data["device"]) == (cmd["id"], dev_id)
            statuses.append(data["status"])
        assert statuses[-1] == "succeeded"
        assert "delivered" in statuses or "sent" in statuses, statuses
        done = api.ok("GET", f"/api/v1/commands/{cmd['id']}")
        assert done["status"] == "succeeded"
    finally:
        stream.close()
        dev.c.disconnect()


def test_shadow_events_carry_the_new_version(broker, api):
    dev_id, _ = device(api, "shd")
    stream = Sse(broker.api_port, "?types=shadow")
    try:
        time.sleep(0.2)
        doc = api.ok("PATCH", f"/api/v1/devices/{dev_id}/shadow", {"desired": {"led": "on"}})
        name, data = stream.next(lambda n, d: d.get("device") == dev_id)
        assert name == "shadow" and data["version"] == doc["version"]
        api.ok("PATCH", f"/api/v1/devices/{dev_id}/shadow", {"desired": {"led": "off"}})
        _, data = stream.next(lambda n, d: d.get("device") == dev_id)
        assert data["version"] == doc["version"] + 1
        api.ok("DELETE", f"/api/v1/devices/{dev_id}/shadow", expect=204)
        _, data = stream.next(lambda n, d: d.get("device") == dev_id)
        assert data["version"] == doc["version"] + 2
    finally:
        stream.close()


def test_bad_event_queries_are_refused(broker, api):
    for query, word in [("?types=presence,bogus", "bogus"), ("?device=a%2Fb", "device")]:
        stream = Sse(broker.api_port, query)
        assert stream.status == 400, query
        assert stream.body["status"] == 400 and word in stream.body["message"], stream.body
    stream = Sse(broker.api_port, "", token="wrong")
    assert stream.status == 401


def test_stream_cap_and_shutdown_ends_streams(tmp_path):
    b = Broker(tmp_path, raw_config=CONFIG + "max_event_streams = 2\n").start()
    streams = []
    try:
        streams = [Sse(b.api_port) for _ in range(2)]
        assert [s.status for s in streams] == [200, 200]
        past = Sse(b.api_port)
        assert past.status == 503
        assert past.body["status"] == 503
        assert "api.max_event_streams = 2" in past.body["message"]
        # A closed stream gives its place back.
        streams[0].close()
        again = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            again = Sse(b.api_port)
            if again.status == 200:
                break
            time.sleep(0.1)
        assert again is not None and again.status == 200
        streams.append(again)
        # Graceful shutdown is not held up by open streams: they end, the server exits.
        started = time.monotonic()
        code = b.stop()
        assert not b.killed, "the server had to be killed: an open stream held up shutdown"
        assert code == 0
        assert time.monotonic() - started < 8
        assert streams[1].ended.wait(5) and again.ended.wait(5)
    finally:
        for s in streams:
            s.close()
        b.stop()


@pytest.mark.parametrize("value", [0, 100001])
def test_a_bad_max_event_streams_stops_startup_naming_it(tmp_path, value):
    b = Broker(tmp_path, raw_config=CONFIG + f"max_event_streams = {value}\n")
    with pytest.raises(RuntimeError):
        b.start()
    assert not b.alive() and b.proc.returncode != 0
    assert "invalid value for api.max_event_streams" in b.log_path.read_text()


# ------------------------------------------------------------------ overview


def test_overview_moves_when_clients_connect_and_publish(broker, api):
    stream = Sse(broker.api_port, "?types=overview")
    before = api.ok("GET", "/api/v1/overview")
    assert set(before["now"]) >= {"connections", "sessions", "online_devices", "registered_devices",
                                  "messages_in_per_sec", "messages_out_per_sec", "dropped_total",
                                  "dropped_per_sec", "store_commit_p99_ms", "watchdog_alerts"}
    dev_id, pw = device(api, "ov")
    dev = connect_device(broker, dev_id, pw)
    others = [Client(broker.port) for _ in range(3)]
    sink = Client(broker.port)
    topic = unique("ov/load")
    sink.subscribe(topic + "/#", 0)
    stop = threading.Event()

    def load():
        n = 0
        while not stop.is_set():
            others[0].publish(topic + "/x", b"1", qos=0, wait=False)
            n += 1
            if n % 50 == 0:  # retained QoS 1: a store commit each
                others[1].publish(f"{topic}/r/{n}", b"kept", qos=1, retain=True, wait=False)
            time.sleep(0.002)

    threading.Thread(target=load, daemon=True).start()
    try:
        _, sample = stream.next(lambda n, d: n == "overview", timeout=12)
        assert set(sample) == {"at_ms", "connections", "sessions", "messages_in_per_sec",
                               "messages_out_per_sec", "dropped_per_sec", "store_commit_p99_ms"}
        last = {}

        def moved():
            nonlocal last
            last = api.ok("GET", "/api/v1/overview")
            now = last["now"]
            return (len(last["history"]) > len(before["history"])
                    and now["connections"] >= before["now"]["connections"] + 5
                    and now["messages_in_per_sec"] > 10 and now["messages_out_per_sec"] > 10)

        assert wait_until(moved, 15, 0.5), last["now"]
        now = last["now"]
        assert now["online_devices"] >= 1 and now["registered_devices"] >= 1
        history = last["history"]
        assert len(history) <= 720
        assert [h["at_ms"] for h in history] == sorted(h["at_ms"] for h in history)
        assert history[-1]["messages_in_per_sec"] > 10
        assert any(h["store_commit_p99_ms"] > 0 for h in history[-2:]), history[-2:]
        recent = last["recent_presence"]
        assert recent[0]["device"] == dev_id and recent[0]["online"] is True, recent[:3]
        assert len(recent) <= 50
    finally:
        stop.set()
        stream.close()
        for c in others + [sink, dev]:
            c.c.disconnect()


# ------------------------------------------------------------------ device pages


def test_session_view_of_an_offline_persistent_session(broker, api):
    dev_id, pw = device(api, "ses")
    assert api.call("GET", f"/api/v1/devices/{dev_id}/session")[0] == 404
    dev = connect_device(broker, dev_id, pw, clean=False, connect_props={"SessionExpiryInterval": 3600})
    dev.subscribe(f"$shadow/{dev_id}/update/delta", 1)
    dev.subscribe(f"$commands/{dev_id}/+", 1)
    live = api.ok("GET", f"/api/v1/devices/{dev_id}/session")
    assert live["connected"] is True and live["protocol"] == 5 and live["clean_start"] is False
    dev.c.disconnect()
    assert wait_until(lambda: not api.ok("GET", f"/api/v1/devices/{dev_id}/session")["connected"], 5)
    for i in range(3):
        api.ok("PATCH", f"/api/v1/devices/{dev_id}/shadow", {"desired": {"n": i}})
    view = {}

    def queued():
        nonlocal view
        view = api.ok("GET", f"/api/v1/devices/{dev_id}/session")
        return view["queued_messages"] >= 3

    assert wait_until(queued, 5), view
    assert view["connected"] is False and view["client_id"] == dev_id
    assert view["expiry_secs"] == 3600 and view["protocol"] == 5 and view["clean_start"] is None
    assert view["queued_bytes"] > 3 * len(f"$shadow/{dev_id}/update/delta")
    assert view["inflight"] == 0
    assert view["subscriptions"] == [
        {"filter": f"$commands/{dev_id}/+", "qos": 1},
        {"filter": f"$shadow/{dev_id}/update/delta", "qos": 1},
    ]
    assert view["subscriptions_truncated"] is False
    # The queued deltas are delivered when it comes back.
    back = connect_device(broker, dev_id, pw, clean=False, connect_props={"SessionExpiryInterval": 3600})
    assert len(back.get_many(3, timeout=5)) == 3
    assert wait_until(lambda: api.ok("GET", f"/api/v1/devices/{dev_id}/session")["queued_messages"] == 0, 5)
    back.c.disconnect()
    assert api.call("GET", "/api/v1/devices/a%2Fb/session")[0] == 400


def test_device_events_ring(broker, api):
    dev_id, pw = device(api, "evt")
    assert api.ok("GET", f"/api/v1/devices/{dev_id}/events") == {"items": []}
    dev = connect_device(broker, dev_id, pw)
    api.ok("PATCH", f"/api/v1/devices/{dev_id}/shadow", {"desired": {"a": 1}})
    dev.c.disconnect()
    items = []

    def three():
        nonlocal items
        items = api.ok("GET", f"/api/v1/devices/{dev_id}/events")["items"]
        return len(items) >= 3

    assert wait_until(three, 5), items
    assert [i["kind"] for i in items[:3]] == ["presence", "shadow", "presence"], items
    assert items[0]["detail"] == "offline (client_disconnect)"
    assert items[1]["detail"] == "shadow version 1"
    assert items[2]["detail"] == "online"
    assert [i["at_ms"] for i in items] == sorted((i["at_ms"] for i in items), reverse=True)
    assert len(api.ok("GET", f"/api/v1/devices/{dev_id}/events?limit=1")["items"]) == 1
    # The ring keeps 50 per device: more is refused, as is nonsense.
    assert len(api.ok("GET", f"/api/v1/devices/{dev_id}/events?limit=50")["items"]) == len(items)
    for bad in ["51", "0", "x"]:
        status, body = api.call("GET", f"/api/v1/devices/{dev_id}/events?limit={bad}")
        assert status == 400 and "limit" in body["message"], (bad, body)
    for _ in range(60):
        api.ok("PATCH", f"/api/v1/devices/{dev_id}/shadow", {"desired": {"a": _}})
    assert wait_until(lambda: api.ok("GET", f"/api/v1/devices/{dev_id}/events")["items"][0]["detail"]
                      == "shadow version 61", 5)
    assert len(api.ok("GET", f"/api/v1/devices/{dev_id}/events")["items"]) == 50
    assert api.call("GET", f"/api/v1/devices/{unique('none')}/events")[0] == 404

    # A deleted device's history goes with it, even events still on their way (its
    # connection is closed as it is deleted): the same id created again starts empty.
    again = connect_device(broker, dev_id, pw)
    assert wait_until(lambda: api.ok("GET", f"/api/v1/devices/{dev_id}/events")["items"][0]["detail"]
                      == "online", 5)
    api.ok("DELETE", f"/api/v1/devices/{dev_id}", expect=204)
    assert again.disconnects.get(timeout=5)
    api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": pw}, expect=201)
    time.sleep(0.5)
    assert api.ok("GET", f"/api/v1/devices/{dev_id}/events") == {"items": []}


def test_device_ota_state_and_rollout_events(broker, api):
    dev_id, pw = device(api, "ota")
    assert api.ok("GET", f"/api/v1/devices/{dev_id}/ota") == {}
    status, body = api.call("GET", f"/api/v1/devices/{unique('none')}/ota")
    assert status == 404 and body["status"] == 404
    version = unique("v")
    art = api.ok("POST", f"/api/v1/ota/artifacts?version={version}&hardware_type=board-c",
                 raw=b"firmware image " * 100, expect=201)
    dev = connect_device(broker, dev_id, pw)
    dev.subscribe(f"$ota/{dev_id}/notify", 1)
    stream = Sse(broker.api_port, "?types=rollout,ota")
    try:
        time.sleep(0.2)
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]}},
                         expect=201)
        note = json.loads(dev.get(timeout=10).payload)
        assert note["rollout"] == rollout["id"]
        _, ota = stream.next(lambda n, d: n == "ota" and d["device"] == dev_id)
        assert (ota["rollout"], ota["state"], ota["version"]) == (rollout["id"], "NOTIFIED", version)
        mid = api.ok("GET", f"/api/v1/devices/{dev_id}/ota")
        assert (mid["rollout"], mid["state"]) == (rollout["id"], "NOTIFIED")
        assert "installed_version" not in mid
        for state in ["DOWNLOADING", "VERIFYING", "INSTALLING", "REBOOTING", "SUCCEEDED"]:
            report = {"rollout": rollout["id"], "state": state}
            if state == "DOWNLOADING":
                report.update(done=art["size"], total=art["size"])
            dev.publish(f"$ota/{dev_id}/progress", json.dumps(report), qos=1)
        _, done = stream.next(lambda n, d: n == "rollout" and d["id"] == rollout["id"]
                              and d["state"] == "COMPLETED", timeout=15)
        assert done["counts"]["SUCCEEDED"] == 1, done
        state = {}

        def finished():
            nonlocal state
            state = api.ok("GET", f"/api/v1/devices/{dev_id}/ota")
            return state.get("state") == "SUCCEEDED"

        assert wait_until(finished, 10), state
        assert state["installed_version"] == version and state["rollout"] == rollout["id"]
        assert state["updated_ms"] <= time.time() * 1000 + 1000
        kinds = [i["kind"] for i in api.ok("GET", f"/api/v1/devices/{dev_id}/events")["items"]]
        assert "ota" in kinds and "presence" in kinds, kinds
    finally:
        stream.close()
        dev.c.disconnect()


# ------------------------------------------------------------------ retained


def test_retained_list_by_prefix_with_paging_and_delete(broker, api):
    base = unique("ret")
    pub = Client(broker.port)
    topics = [f"{base}/a", f"{base}/b/1", f"{base}/b/2", f"{base}/c", f"{base}x/other"]
    for t in topics:
        pub.publish(t, f"value of {t}", qos=1, retain=True)
    binary = bytes(range(256)) * 2
    pub.publish(f"{base}/d", binary, qos=0, retain=True)
    assert wait_until(lambda: len(api.ok("GET", f"/api/v1/retained?prefix={base}/")["items"]) == 5, 5)
    page = api.ok("GET", f"/api/v1/retained?prefix={base}/&limit=2")
    assert [i["topic"] for i in page["items"]] == [f"{base}/a", f"{base}/b/1"]
    assert page["next"] == f"{base}/b/1"
    first = page["items"][0]
    assert first == {"topic": f"{base}/a", "qos": 1, "bytes": len(f"value of {base}/a"),
                     "payload_utf8": f"value of {base}/a"}
    page = api.ok("GET", f"/api/v1/retained?prefix={base}/&limit=2&after={page['next']}")
    assert [i["topic"] for i in page["items"]] == [f"{base}/b/2", f"{base}/c"]
    page = api.ok("GET", f"/api/v1/retained?prefix={base}/&limit=2&after={page['next']}")
    assert [i["topic"] for i in page["items"]] == [f"{base}/d"] and page["next"] is None
    shown = page["items"][0]
    assert shown["bytes"] == 512 and "payload_utf8" not in shown
    import base64
    assert base64.b64decode(shown["payload_base64"]) == binary[:192]
    # A string prefix, not a filter: `{base}x/other` matches `{base}` only.
    assert len(api.ok("GET", f"/api/v1/retained?prefix={base}")["items"]) == 6
    # Delete one: 204, then 404; a new subscriber no longer gets it.
    assert api.call("DELETE", f"/api/v1/retained?topic={base}/b/1")[0] == 204
    status, body = api.call("DELETE", f"/api/v1/retained?topic={base}/b/1")
    assert status == 404 and body["status"] == 404
    sub = Client(broker.port)
    sub.subscribe(f"{base}/b/#", 1)
    got = sub.drain(1.0)
    assert [m.topic for m in got] == [f"{base}/b/2"], [m.topic for m in got]
    # Wildcards are plain characters in `topic`.
    assert api.call("DELETE", f"/api/v1/retained?topic={base}/%23")[0] == 404
    # Limits and bad input.
    for query in ["limit=1001", "limit=0", "limit=x"]:
        status, body = api.call("GET", f"/api/v1/retained?{query}")
        assert status == 400 and "limit" in body["message"], (query, body)
    assert len(api.ok("GET", "/api/v1/retained?limit=1000")["items"]) <= 1000
    status, body = api.call("DELETE", "/api/v1/retained")
    assert status == 400 and body["message"] == "topic is required"
    for name in ["prefix", "after"]:
        status, body = api.call("GET", f"/api/v1/retained?{name}={'a' * 16385}")
        assert status == 400 and body["message"] == f"{name} is longer than 16384 bytes", body
    assert api.call("GET", f"/api/v1/retained?prefix={'a' * 16384}")[0] == 200
    status, body = api.call("DELETE", f"/api/v1/retained?topic={'t' * 16385}")
    assert status == 400 and body["message"] == "topic is longer than 16384 bytes"
    for c in (pub, sub):
        c.c.disconnect()


def test_routes_are_in_the_openapi_document(broker, api):
    paths = api.ok("GET", "/openapi.json", token=None)["paths"]
    for path in ["/api/v1/events", "/api/v1/overview", "/api/v1/devices/{id}/session",
                 "/api/v1/devices/{id}/events", "/api/v1/devices/{id}/ota", "/api/v1/retained"]:
        assert path in paths, path
    assert "delete" in paths["/api/v1/retained"]


def test_retained_delete_persists_and_quiet_streams_get_keep_alives(tmp_path):
    b = Broker(tmp_path, raw_config=CONFIG).start()
    try:
        api = Api(b.api_port, TOKEN)
        stream = Sse(b.api_port, "?types=rollout")
        pub = Client(b.port)
        pub.publish("keep/me", b"1", qos=1, retain=True)
        pub.publish("drop/me", b"2", qos=1, retain=True)
        pub.c.disconnect()
        assert api.call("DELETE", "/api/v1/retained?topic=drop/me")[0] == 204
        # Nothing happens on a rollout stream: a keep-alive comment comes every 15 s.
        comment = stream.comments.get(timeout=17)
        assert comment == "keep-alive"
        assert stream.events.empty()
        stream.close()
    finally:
        assert b.stop() == 0
    b = Broker(tmp_path, raw_config=CONFIG).start()
    try:
        api = Api(b.api_port, TOKEN)
        topics = [i["topic"] for i in api.ok("GET", "/api/v1/retained")["items"]]
        assert "keep/me" in topics and "drop/me" not in topics, topics
    finally:
        b.stop()
