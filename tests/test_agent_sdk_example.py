"""The device SDK's example firmware (`crates/myriad-agent/examples/sensor.rs`, built by
`cargo test` into `target/ci/examples/sensor`) against a real `myriad serve`: its temperature
points reach the telemetry store, the command `set_interval` is answered through the command
service, and a desired `interval_ms` in the shadow is applied and reported back."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import HOST, Api, Broker, myriad_bin, wait_until
from test_ota_e2e import CONFIG, TOKEN

pytestmark = pytest.mark.myriad_only


def example_bin() -> Path:
    # Beside the binary under test: target/<profile>/examples/sensor.
    path = myriad_bin().resolve().parent / "examples" / "sensor"
    assert path.exists(), f"{path} missing: build it with `cargo test -p myriad-agent` (or --example sensor)"
    return path


def test_example_firmware_sends_telemetry_answers_commands_and_syncs_its_shadow(tmp_path):
    broker = Broker(tmp_path / "srv", raw_config=CONFIG).start()
    api = Api(broker.api_port, TOKEN)
    api.ok("POST", "/api/v1/devices", {"id": "sensor-1", "password": "dev-pw-123"}, expect=201)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    proc = subprocess.Popen([str(example_bin()), HOST, str(broker.port), "sensor-1", "dev-pw-123",
                             str(tmp_path / "spool")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sensor.log", "wb"), env=env)
    try:
        def points() -> int:
            doc = api.ok("GET", "/api/v1/devices/sensor-1/telemetry?metrics=temp&from=0")
            return sum(len(s["points"]) for s in doc["series"])

        assert wait_until(lambda: points() >= 3, 20, 0.2), (tmp_path / "sensor.log").read_text()
        cmd = api.ok("POST", "/api/v1/devices/sensor-1/commands",
                     {"name": "set_interval", "payload": {"ms": 200}, "timeout_ms": 10000}, expect=201)
        done = {}

        def finished():
            nonlocal done
            done = api.ok("GET", f"/api/v1/commands/{cmd['id']}")
            return done["status"] in ("succeeded", "failed", "timed_out")

        assert wait_until(finished, 15, 0.2), done
        assert done["status"] == "succeeded" and done["result"] == {"interval_ms": 200}, done
        before = points()
        time.sleep(2)
        assert points() - before >= 6, "200 ms period: about 10 points in 2 s"
        api.ok("PATCH", "/api/v1/devices/sensor-1/shadow", {"desired": {"interval_ms": 1000}})
        assert wait_until(lambda: api.ok("GET", "/api/v1/devices/sensor-1/shadow")["state"]
                          .get("reported", {}).get("interval_ms") == 1000, 15, 0.2)
        assert "delta" not in api.ok("GET", "/api/v1/devices/sensor-1/shadow")["state"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        broker.stop()
