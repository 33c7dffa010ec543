"""Cloud-to-device commands end to end: real paho devices (3.1.1 and 5.0)
answer commands sent through the HTTP API; statuses, classes, breakers,
rate limits, and a kill -9 with commands in flight."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers import HOST, V311, V5, Api, Broker, Client, unique, wait_until

TOKEN = "commands-test-token-0123456789"
CONFIG = f"""
[auth]
allow_anonymous = false

[api]
token = "{TOKEN}"

[commands]
default_timeout_ms = 1500
retry_initial_ms = 300
retry_max_ms = 1000

[commands.rate_l3]
per_second = 0.5
burst = 3

[commands.rate_device]
per_second = 1000.0
burst = 1000

[commands.breaker_device]
consecutive_failures = 3
cool_down_ms = 1000
half_open_probes = 1
"""
FINAL = {"succeeded", "failed", "timed_out", "expired", "cancelled"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("commands"), raw_config=CONFIG).start()
    yield b
    b.stop()


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


class Device:
    """A paho device that answers commands: mode "ok", "error" or "silent"
    (acknowledges the PUBLISH but never replies)."""

    def __init__(self, port: int, dev_id: str, password: str, version: int, mode: str = "ok"):
        self.id = dev_id
        self.version = version
        self.mode = mode
        self.received: list[tuple[str, bytes, dict]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev_id,
                             protocol=mqtt.MQTTv5 if version == V5 else mqtt.MQTTv311,
                             reconnect_on_failure=False)
        self.c.username_pw_set(dev_id, password)
        self.c.on_message = self._on_message
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.connect(HOST, port, 30)
        self.c.loop_start()
        assert self.connected.wait(5), "device did not connect"
        self.c.subscribe(f"$commands/{dev_id}/+", 1)
        assert self.subscribed.wait(5), "device did not subscribe"

    def _on_message(self, client, userdata, msg):
        props = {}
        if self.version == V5 and msg.properties is not None:
            props = {"ResponseTopic": getattr(msg.properties, "ResponseTopic", None),
                     "CorrelationData": getattr(msg.properties, "CorrelationData", None),
                     "UserProperty": getattr(msg.properties, "UserProperty", None)}
        with self.lock:
            self.received.append((msg.topic, msg.payload, props))
        if self.mode == "silent":
            return
        body = {"status": "succeeded" if self.mode == "ok" else "failed",
                "result": {"echo": msg.topic.rsplit("/", 1)[-1], "by": self.id}}
        if self.version == V5:
            p = Properties(PacketTypes.PUBLISH)
            p.CorrelationData = props["CorrelationData"]
            client.publish(props["ResponseTopic"], json.dumps(body), 1, properties=p)
        else:
            envelope = json.loads(msg.payload)
            client.publish(envelope["reply_topic"], json.dumps(body), 1)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def register(api: Api) -> tuple[str, str]:
    dev_id = unique("cmd")
    api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    return dev_id, "dev-pw-123"


def wait_online(api: Api, dev_id: str, online: bool = True) -> None:
    assert wait_until(lambda: api.ok("GET", f"/api/v1/devices/{dev_id}/presence")["online"] == online, 5)


def send(api: Api, dev_id: str, **body) -> dict:
    return api.ok("POST", f"/api/v1/devices/{dev_id}/commands", body, expect=201)


def wait_status(api: Api, command_id: str, statuses: set[str], timeout: float = 6.0) -> dict:
    last = {}

    def check():
        nonlocal last
        last = api.ok("GET", f"/api/v1/commands/{command_id}")
        return last["status"] in statuses

    assert wait_until(check, timeout, 0.05), f"command stayed {last.get('status')}: {last}"
    return last


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_success_with_status_history_and_events(broker, api, version):
    dev_id, pw = register(api)
    watcher = Client(broker.port, username="app:" + make_admin(api), password="admin-pw-1")
    watcher.subscribe(f"$events/commands/{dev_id}/#", 1)
    dev = Device(broker.port, dev_id, pw, version)
    try:
        wait_online(api, dev_id)
        cmd = send(api, dev_id, name="reboot", payload={"delay": 2})
        done = wait_status(api, cmd["id"], FINAL)
        assert done["status"] == "succeeded", done
        assert done["result"] == {"echo": "reboot", "by": dev_id}
        assert done["source"] == "device"
        stamps = done["timestamps"]
        assert set(stamps) == {"queued", "sent", "delivered", "succeeded"}, stamps
        assert stamps["queued"] <= stamps["sent"] <= stamps["delivered"] <= stamps["succeeded"]
        topic, payload, props = dev.received[0]
        assert topic == f"$commands/{dev_id}/reboot"
        if version == V5:
            assert json.loads(payload) == {"delay": 2}
            assert props["ResponseTopic"] == f"$commands/{dev_id}/reply/{cmd['id']}"
            assert props["CorrelationData"] == cmd["id"].encode()
        else:
            envelope = json.loads(payload)
            assert envelope["command_id"] == cmd["id"] and envelope["payload"] == {"delay": 2}
        events = [json.loads(m.payload)["status"] for m in watcher.get_many(4, timeout=5)]
        assert events == ["queued", "sent", "delivered", "succeeded"], events
    finally:
        dev.close()
        watcher.close()


_admin: dict[str, str] = {}


def make_admin(api: Api) -> str:
    if "id" not in _admin:
        app_id = unique("ops")
        api.ok("POST", "/api/v1/apps", {"id": app_id, "admin": True, "password": "admin-pw-1"}, expect=201)
        _admin["id"] = app_id
    return _admin["id"]


def test_device_error_and_timeout(broker, api):
    dev_id, pw = register(api)
    dev = Device(broker.port, dev_id, pw, V5, mode="error")
    try:
        wait_online(api, dev_id)
        failed = wait_status(api, send(api, dev_id, name="selftest")["id"], FINAL)
        assert (failed["status"], failed["reason"]) == ("failed", "device_error")
        assert failed["result"]["echo"] == "selftest"
        dev.mode = "silent"
        started = time.monotonic()
        timed = wait_status(api, send(api, dev_id, name="slow", timeout_ms=800)["id"], FINAL)
        assert timed["status"] == "timed_out", timed
        assert "delivered" in timed["timestamps"], "the PUBACK was seen"
        assert 0.7 < time.monotonic() - started < 4
    finally:
        dev.close()


def test_offline_l1_is_queued_then_delivered_in_order_on_reconnect(broker, api):
    dev_id, pw = register(api)
    first = send(api, dev_id, name="one", priority="l1")
    second = send(api, dev_id, name="two", priority="l1")
    assert first["status"] == second["status"] == "queued"
    time.sleep(0.5)
    assert api.ok("GET", f"/api/v1/commands/{first['id']}")["status"] == "queued"
    dev = Device(broker.port, dev_id, pw, V311)
    try:
        a = wait_status(api, first["id"], FINAL)
        b = wait_status(api, second["id"], FINAL)
        assert a["status"] == b["status"] == "succeeded"
        names = [t.rsplit("/", 1)[-1] for t, _, _ in dev.received]
        assert names.index("one") < names.index("two"), names
        assert a["timestamps"]["succeeded"] <= b["timestamps"]["sent"], "next sent after the previous ended"
    finally:
        dev.close()


def test_offline_l2_read_from_shadow_l2_fails_and_l3_dropped(broker, api):
    dev_id, pw = register(api)
    c = Client(broker.port, client_id=dev_id, username=dev_id, password=pw)
    c.publish(f"$shadow/{dev_id}/update", json.dumps({"state": {"reported": {"temp": 21}}}), qos=1)
    assert wait_until(lambda: api.ok("GET", f"/api/v1/devices/{dev_id}/shadow")["state"].get("reported"), 5)
    c.close()
    wait_online(api, dev_id, False)
    read = send(api, dev_id, name="get_temp", read=True)
    assert read["status"] == "succeeded" and read["source"] == "shadow", read
    assert read["result"] == {"temp": 21}
    assert read["reason"] == "device_offline"
    write = send(api, dev_id, name="set_temp", payload=22)
    assert (write["status"], write["reason"]) == ("failed", "device_offline")
    low = send(api, dev_id, name="blink", priority="l3")
    assert (low["status"], low["reason"]) == ("failed", "device_offline")
    assert "sent" not in low["timestamps"], "never sent"


def breaker_of(api: Api, dev_id: str) -> str:
    devices = api.ok("GET", "/api/v1/commands/breakers")["devices"]
    states = [d["state"] for d in devices if d["device"] == dev_id and d["priority"] == "l2"]
    return states[0] if states else "closed"


def test_breaker_opens_fails_fast_and_recovers_through_half_open(broker, api):
    dev_id, pw = register(api)
    dev = Device(broker.port, dev_id, pw, V5, mode="error")
    try:
        wait_online(api, dev_id)
        for _ in range(3):
            assert wait_status(api, send(api, dev_id, name="x")["id"], FINAL)["status"] == "failed"
        assert breaker_of(api, dev_id) == "open"
        before = len(dev.received)
        fast = send(api, dev_id, name="x")
        assert (fast["status"], fast["reason"]) == ("failed", "breaker_open")
        read = send(api, dev_id, name="x", read=True)
        assert read["source"] == "shadow", "an L2 read is answered from the shadow"
        assert len(dev.received) == before, "nothing reached the device"
        dev.mode = "ok"
        time.sleep(1.1)
        assert breaker_of(api, dev_id) == "half_open"
        probe = send(api, dev_id, name="x")
        assert probe["status"] == "sent"
        assert wait_status(api, probe["id"], FINAL)["status"] == "succeeded"
        assert breaker_of(api, dev_id) == "closed"
        assert wait_status(api, send(api, dev_id, name="x")["id"], FINAL)["status"] == "succeeded"
    finally:
        dev.close()


def test_l3_rate_limit_answers_429_with_retry_after(broker, api):
    dev_id, pw = register(api)
    dev = Device(broker.port, dev_id, pw, V5)
    try:
        wait_online(api, dev_id)
        refused = None
        for _ in range(6):
            req = urllib.request.Request(f"http://{HOST}:{broker.api_port}/api/v1/devices/{dev_id}/commands",
                                         data=json.dumps({"name": "blink", "priority": "l3"}).encode(),
                                         method="POST")
            req.add_header("Content-Type", "application/json")
            req.add_header("Authorization", f"Bearer {TOKEN}")
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    assert resp.status == 201
            except urllib.error.HTTPError as e:
                refused = (e.code, e.headers.get("Retry-After"), json.loads(e.read()))
                break
        assert refused is not None, "six L3 commands at once exceed a burst of 3"
        code, retry_after, body = refused
        assert code == 429 and int(retry_after) >= 1, refused
        assert "class l3" in body["message"]
        # L2 is not limited by the L3 bucket.
        assert send(api, dev_id, name="other")["status"] in {"sent", "delivered", "succeeded"}
    finally:
        dev.close()


def test_kill9_leaves_no_command_stuck(tmp_path):
    first = Broker(tmp_path / "node", raw_config=CONFIG).start()
    api = Api(first.api_port, TOKEN)
    dev_id, pw = register(api)
    offline_id, _ = register(api)
    dev = Device(first.port, dev_id, pw, V5, mode="silent")
    try:
        wait_online(api, dev_id)
        l1 = send(api, dev_id, name="critical", priority="l1", timeout_ms=60_000)
        l2 = send(api, dev_id, name="normal", timeout_ms=60_000)
        queued = send(api, offline_id, name="later", priority="l1")
        wait_status(api, l1["id"], {"delivered"})
        wait_status(api, l2["id"], {"delivered"})
        time.sleep(0.3)  # let the command log commit
    finally:
        dev.close()
    first.proc.kill()  # SIGKILL, our own process
    first.proc.wait(timeout=10)
    first.stop()
    second = Broker(tmp_path / "node", raw_config=CONFIG).start()
    try:
        api = Api(second.api_port, TOKEN)
        after = {k: api.ok("GET", f"/api/v1/commands/{c['id']}") for k, c in
                 {"l1": l1, "l2": l2, "queued": queued}.items()}
        assert (after["l2"]["status"], after["l2"]["reason"]) == ("failed", "server_restart"), after["l2"]
        assert after["l1"]["status"] == "queued" and after["l1"]["reason"] == "server_restart", after["l1"]
        assert after["queued"]["status"] == "queued"
        dev = Device(second.port, dev_id, pw, V311)
        try:
            done = wait_status(api, l1["id"], FINAL)
            assert done["status"] == "succeeded" and done["attempts"] >= 2, done
        finally:
            dev.close()
    finally:
        second.stop()


def test_ctl_commands_send_get_cancel_and_batch(broker, api):
    import subprocess

    from helpers import myriad_bin

    def ctl(*args: str) -> dict:
        env = {"MYRIAD_API_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([str(myriad_bin()), "ctl", "--api", f"http://{HOST}:{broker.api_port}",
                               "--output", "json", *args], capture_output=True, text=True, timeout=30, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    dev_id, _ = register(api)
    sent = ctl("commands", "send", dev_id, "later", "--priority", "l1", "--payload", '{"n": 1}')
    assert sent["status"] == "queued"
    assert ctl("commands", "get", sent["id"])["name"] == "later"
    assert ctl("commands", "cancel", sent["id"])["status"] == "cancelled"
    listed = ctl("commands", "list", dev_id)
    assert [c["id"] for c in listed["items"]] == [sent["id"]]
    batch = ctl("commands", "batch", "ping", "--device", dev_id, "--priority", "l2")
    assert wait_until(lambda: ctl("commands", "batch-status", batch["batch_id"])["dispatched"], 5)
    assert "l1" in ctl("commands", "breakers")["classes"]
