"""A fan-out batch interrupted by a restart resumes (issue 15 item 8).

One server with a slow L1 class rate (40 commands a second, burst 1) so a
fan-out to 120 devices of a group takes about 3 s; the server is stopped
(kill -9, or SIGTERM) once 20 targets are handled and well before the
last, then started again on the same data directory. The batch must then
reach `dispatched` with all 120 targets counted, and every target must have
exactly one command of the batch: none lost (the remaining targets get
theirs after the restart) and none doubled (targets handled before the stop
do not get a second command). Two targets are real paho devices (3.1.1 and
5.0) online before and after the restart: each receives the batch's command
under one command id only (an L1 command resent after a restart keeps its
id: delivery is at least once, the id lets devices tell).
"""

from __future__ import annotations

import json
import signal
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from helpers import HOST, V311, V5, Api, Broker, unique, wait_until

TOKEN = "batch-resume-token-0123456789"
TARGETS = 120
CONFIG = f"""
[auth]
allow_anonymous = false

[api]
token = "{TOKEN}"

[commands.rate_l1]
per_second = 40.0
burst = 1
"""

pytestmark = [pytest.mark.myriad_only, pytest.mark.timeout(120)]


class Receiver:
    """A paho device that records the command ids it receives (no reply)."""

    def __init__(self, port: int, dev_id: str, password: str, version: int):
        self.ids: list[str] = []
        self.lock = threading.Lock()
        self.version = version
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev_id,
                             protocol=mqtt.MQTTv5 if version == V5 else mqtt.MQTTv311,
                             reconnect_on_failure=False)
        self.c.username_pw_set(dev_id, password)
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"$commands/{dev_id}/+", 1)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.c.connect(HOST, port, 30)
        self.c.loop_start()
        assert subscribed.wait(5), f"{dev_id} did not subscribe"

    def _on_message(self, client, userdata, msg):
        if self.version == V5:
            command_id = bytes(msg.properties.CorrelationData).decode()
        else:
            command_id = json.loads(msg.payload)["command_id"]
        with self.lock:
            self.ids.append(command_id)

    def distinct(self) -> set[str]:
        with self.lock:
            return set(self.ids)

    def close(self) -> None:
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


def batch(api: Api, batch_id: str) -> dict:
    return api.ok("GET", f"/api/v1/command-batches/{batch_id}")


@pytest.mark.parametrize("stop", ["kill9", "sigterm"])
def test_batch_interrupted_by_a_restart_resumes(tmp_path, stop):
    node = tmp_path / "node"
    first = Broker(node, raw_config=CONFIG).start()
    api = Api(first.api_port, TOKEN)
    group = unique("grp")
    prefix = unique("b")
    devices = [f"{prefix}-{i:04d}" for i in range(TARGETS)]
    online = {devices[5]: V311, devices[TARGETS - 5]: V5}
    for dev_id in devices:
        body = {"id": dev_id, "groups": [group]}
        if dev_id in online:
            body["password"] = "dev-pw-123"
        api.ok("POST", "/api/v1/devices", body, expect=201)
    receivers = [Receiver(first.port, d, "dev-pw-123", v) for d, v in online.items()]
    seen: dict[str, set[str]] = {d: set() for d in online}
    try:
        batch_id = api.ok("POST", "/api/v1/commands",
                          {"group": group, "name": "upgrade", "priority": "l1",
                           "payload": {"to": "2.0"}}, expect=202)["batch_id"]
        assert wait_until(lambda: batch(api, batch_id)["targets"] >= 20, 10, 0.02)
        if stop == "kill9":
            first.proc.kill()  # SIGKILL, our own process
        else:
            first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(timeout=10)
    finally:
        for r, d in zip(receivers, online):
            seen[d] |= r.distinct()
            r.close()
    first.stop()

    second = Broker(node, raw_config=CONFIG).start()
    try:
        api = Api(second.api_port, TOKEN)
        progress = {}

        def done() -> bool:
            nonlocal progress
            progress = batch(api, batch_id)
            return progress["dispatched"]

        assert wait_until(done, 30, 0.1), f"the batch did not resume: {progress}"
        assert progress["targets"] == TARGETS and progress["refused"] == 0, progress
        assert sum(progress["statuses"].values()) == TARGETS, progress
        # Every target has exactly one command of the batch.
        for dev_id in devices:
            page = api.ok("GET", f"/api/v1/devices/{dev_id}/commands?limit=100")
            mine = [c for c in page["items"] if c["batch"] == batch_id]
            assert len(mine) == 1, (dev_id, mine)
        # The online devices get theirs, under one command id each.
        receivers = [Receiver(second.port, d, "dev-pw-123", v) for d, v in online.items()]
        try:
            assert wait_until(lambda: all(r.distinct() for r in receivers), 10)
            time.sleep(1.0)
            for r, d in zip(receivers, online):
                seen[d] |= r.distinct()
                assert len(seen[d]) == 1, (d, seen[d])
        finally:
            for r in receivers:
                r.close()
    finally:
        second.stop()
