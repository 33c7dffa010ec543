"""Crash safety: kill -9 the broker at random points while QoS 1 and QoS 2
traffic flows to offline persistent sessions, restart it on the same data
directory, and check that every message whose PUBACK/PUBCOMP the publisher
received is delivered, and that QoS 2 messages are delivered exactly once.
The same for device telemetry: every QoS 1 `devices/{id}/telemetry` message
acknowledged before a kill -9 is in the telemetry store after the restart.

The publishers reconnect only once the broker listens again. paho-mqtt 2.x
resets its in-flight state at every reconnect *attempt*, before it opens the
socket (Client.reconnect -> _messages_reconnect_reset), so a refused attempt
followed by a successful one turns a QoS 2 flow that was waiting for PUBCOMP
(PUBREL already processed by the server) back into a brand-new PUBLISH. The
server then rightly routes it as a new message, and the test would blame the
broker for a client-side duplicate. Reconnecting only when the server is up
keeps every attempt a successful one.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from helpers import HOST, Api, broker_kind, myriad_bin, to_toml, unique, wait_until

pytestmark = [
    pytest.mark.myriad_only,
    pytest.mark.timeout(180),
    pytest.mark.skipif(broker_kind() == "mosquitto", reason="Myriad's own store"),
]

LISTEN_RE = re.compile(r"MQTT listening on [0-9.]+:(\d+)")
ROUNDS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`myriad serve` on a fixed port and data directory, killed and restarted at will."""

    def __init__(self, workdir: Path, port: int, store: dict, extra: dict | None = None, api_port: int = 0):
        self.workdir = workdir
        self.port = port
        self.api_port = api_port
        self.config = workdir / "myriad.toml"
        self.config.write_text(
            to_toml({"mqtt": {"max_queued_messages": 1_000_000}, "store": store, **(extra or {})})
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
        env["MYRIAD_LOG"] = os.environ.get("CRASH_BROKER_LOG", "info")
        log = open(self.workdir / f"broker{self.starts}.log", "wb")
        self.starts += 1
        self.proc = subprocess.Popen(
            [str(myriad_bin()), "serve", "--config", str(self.config), "--listen", f"{HOST}:{self.port}", "--api-listen", f"{HOST}:{self.api_port}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=self.workdir,
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if LISTEN_RE.search(line):
                return
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"broker did not start: exit={self.proc.poll()} log={self.log_tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self) -> str:
        logs = sorted(self.workdir.glob("broker*.log"))
        return logs[-1].read_text(errors="replace")[-3000:] if logs else ""


def make_client(client_id: str, version: int) -> mqtt.Client:
    protocol = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
    kwargs = {"clean_session": False} if version == 4 else {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
    c.reconnect_delay_set(min_delay=0.05, max_delay=0.3)
    c.max_inflight_messages_set(20)
    c.max_queued_messages_set(0)
    return c


def connect(c: mqtt.Client, port: int, version: int) -> None:
    if version == 5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect(HOST, port, keepalive=30, clean_start=False, properties=props)
    else:
        c.connect(HOST, port, keepalive=30)


class Publisher:
    """Publishes numbered messages until told to stop; remembers which completed.

    Runs its own network loop and reconnects only when `server_up` is set
    (see the module docstring).
    """

    def __init__(self, name: str, version: int, qos: int, port: int, server_up: threading.Event,
                 topic: str | None = None, payload=None, password: str | None = None):
        self.name, self.qos = name, qos
        self.topic = topic or f"crash/{name}"
        self.payload = payload or (lambda seq: f"{name}:{seq}")
        self.server_up = server_up
        self.client = make_client(name, version)
        if password is not None:
            self.client.username_pw_set(name, password)
        self.lock = threading.Lock()
        self.mid_to_seq: dict[int, int] = {}
        self.completed_mids: set[int] = set()
        self.sent = 0
        self.running = True
        self.closed = False
        self.client.on_publish = self._on_publish
        connect(self.client, port, version)
        self.network = threading.Thread(target=self._network, daemon=True)
        self.network.start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            self.completed_mids.add(mid)

    def _network(self) -> None:
        while not self.closed:
            rc = self.client.loop(timeout=0.05)
            if rc == mqtt.MQTT_ERR_SUCCESS or self.closed:
                continue
            self.server_up.wait(timeout=30)
            try:
                self.client.reconnect()
            except OSError:
                time.sleep(0.05)

    def _run(self) -> None:
        while self.running and self.sent < 60_000:
            with self.lock:
                in_flight = self.sent - len(self.completed_mids)
            if in_flight > 200:
                time.sleep(0.005)
                continue
            seq = self.sent
            info = self.client.publish(self.topic, self.payload(seq), qos=self.qos)
            with self.lock:
                self.mid_to_seq[info.mid] = seq
            self.sent += 1
            time.sleep(0.001)

    def stop_publishing(self) -> None:
        self.running = False
        self.thread.join(timeout=10)

    def acknowledged(self) -> set[int]:
        with self.lock:
            return {self.mid_to_seq[m] for m in self.completed_mids if m in self.mid_to_seq}

    def all_completed(self) -> bool:
        with self.lock:
            return len(self.completed_mids) >= self.sent

    def close(self) -> None:
        self.closed = True
        self.client.disconnect()
        self.network.join(timeout=10)


# A delivery pause longer than this ends collecting even before every expected
# message is in (fsync latency on a loaded machine can stall the broker for seconds).
STALL_LIMIT = 15.0


def collect(client_id: str, version: int, port: int, expected: int, quiet: float = 2.0) -> list[str]:
    """Resumes a persistent session and gathers payloads: once `expected` of them are in,
    until nothing more arrives for `quiet` s (to catch duplicates); before that, until
    nothing arrives for STALL_LIMIT s."""
    received: list[str] = []
    last = [time.monotonic()]
    c = make_client(client_id, version)

    def on_message(client, userdata, message):
        received.append(message.payload.decode())
        last[0] = time.monotonic()

    c.on_message = on_message
    connect(c, port, version)
    c.loop_start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        idle = time.monotonic() - last[0]
        if idle >= (quiet if len(received) >= expected else STALL_LIMIT):
            break
        time.sleep(0.1)
    c.disconnect()
    c.loop_stop()
    return received


def subscribe_offline(client_id: str, version: int, qos: int, port: int) -> None:
    c = make_client(client_id, version)
    granted = []
    c.on_subscribe = lambda client, userdata, mid, codes, props: granted.extend(codes)
    connect(c, port, version)
    c.loop_start()
    c.subscribe("crash/#", qos=qos)
    assert wait_until(lambda: granted, timeout=5), "no SUBACK"
    c.disconnect()
    c.loop_stop()


def kill_rounds(server: Server, server_up: threading.Event, rng: random.Random) -> None:
    """ROUNDS times: traffic for a random while, kill -9, a short pause, restart."""
    for _ in range(ROUNDS):
        time.sleep(rng.uniform(0.3, 1.2))
        server_up.clear()
        server.kill9()
        time.sleep(rng.uniform(0.05, 0.3))
        server.start()
        server_up.set()


@pytest.mark.parametrize("store", [{"fsync": True, "commit": "per_ack"}, {"fsync": True, "commit": "group"}], ids=["per_ack", "group"])
def test_kill9_loses_no_acknowledged_message(tmp_path, store):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261123")))
    port = free_port()
    server = Server(tmp_path, port, store)
    server.start()
    tag = unique("c")
    sub2, sub1 = f"{tag}-sub-qos2", f"{tag}-sub-qos1"
    try:
        subscribe_offline(sub2, 5, 2, port)
        subscribe_offline(sub1, 4, 1, port)
        server_up = threading.Event()
        server_up.set()
        pub2 = Publisher(f"{tag}-pub-qos2", 5, 2, port, server_up)
        pub1 = Publisher(f"{tag}-pub-qos1", 4, 1, port, server_up)
        kill_rounds(server, server_up, rng)
        time.sleep(0.5)
        for p in (pub1, pub2):
            p.stop_publishing()
        assert wait_until(lambda: pub1.all_completed() and pub2.all_completed(), timeout=30), (
            f"publishers still waiting: qos1 {pub1.sent - len(pub1.completed_mids)}, "
            f"qos2 {pub2.sent - len(pub2.completed_mids)}"
        )
        acked2, acked1 = pub2.acknowledged(), pub1.acknowledged()
        assert len(acked2) > 50 and len(acked1) > 50, "too little traffic to mean anything"
        pub1.close()
        pub2.close()

        # Both subscribers take crash/#: each is owed both publishers' messages.
        owed = len(acked1) + len(acked2)
        got2 = collect(sub2, 5, port, owed)
        got1 = collect(sub1, 4, port, owed)
        qos2_counts = Counter(m for m in got2 if m.startswith(pub2.name + ":"))
        missing2 = [s for s in acked2 if qos2_counts[f"{pub2.name}:{s}"] == 0]
        duplicated2 = {m: n for m, n in qos2_counts.items() if n > 1}
        assert not missing2, f"{len(missing2)} acknowledged QoS 2 messages lost, e.g. {sorted(missing2)[:10]}"
        assert not duplicated2, f"QoS 2 messages delivered more than once: {list(duplicated2.items())[:10]}"
        qos1_seen = set(got1)
        missing1 = [s for s in acked1 if f"{pub1.name}:{s}" not in qos1_seen]
        assert not missing1, f"{len(missing1)} acknowledged QoS 1 messages lost, e.g. {sorted(missing1)[:10]}"
        print(
            f"rounds={ROUNDS} qos2_acked={len(acked2)} qos1_acked={len(acked1)} "
            f"qos2_delivered={sum(qos2_counts.values())} qos1_delivered={len(got1)}"
        )
    finally:
        server.stop()


def test_kill9_loses_no_acknowledged_telemetry(tmp_path):
    """A device publishes numbered QoS 1 telemetry points (`seq` = n at `ts` = base + n s) while
    the broker is killed with SIGKILL three times; every point whose PUBACK the device got is in
    the store afterwards, with its value."""
    import json

    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261205")))
    port, api_port = free_port(), free_port()
    token = "crash-telemetry-token-0123456789"
    server = Server(tmp_path, port, {"fsync": True, "commit": "group"},
                    {"auth": {"allow_anonymous": False}, "api": {"token": token}}, api_port)
    server.start()
    api = Api(api_port, token)
    device, password = api.create_device("crash-tm")
    base = int(time.time() * 1000) - 3_600_000
    try:
        server_up = threading.Event()
        server_up.set()
        pub = Publisher(device, 4, 1, port, server_up, topic=f"devices/{device}/telemetry",
                        payload=lambda seq: json.dumps({"ts": base + seq * 10, "seq": seq}),
                        password=password)
        kill_rounds(server, server_up, rng)
        time.sleep(0.5)
        pub.stop_publishing()
        assert wait_until(pub.all_completed, timeout=30), f"still waiting: {pub.sent - len(pub.completed_mids)}"
        acked = pub.acknowledged()
        assert len(acked) > 50, "too little traffic to mean anything"
        pub.close()
        # Once more, so that the points come back from the WAL (not from a running writer).
        server.kill9()
        server.start()
        answer = api.ok("GET", f"/api/v1/devices/{device}/telemetry?metrics=seq&from={base}&to={base + 10 * pub.sent}")
        stored = {int(ts): v for ts, v in answer["series"][0]["points"]} if answer["series"] else {}
        missing = [s for s in acked if stored.get(base + s * 10) != s]
        assert not missing, f"{len(missing)} acknowledged telemetry points lost, e.g. {sorted(missing)[:10]}"
        print(f"rounds={ROUNDS} telemetry_acked={len(acked)} stored={len(stored)}")
    finally:
        server.stop()
