"""`myriad agent`'s status message (issue 19, `[mqtt] status_every_secs`): retained, QoS 1, on
`devices/{id}/status`, after each connect and on its period, with uptime, the running
firmware (version, security counter, slot), free memory and free disk. A subscriber that
arrives later gets the last one at once (retained); a bad value is named."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from helpers import Api, Broker, Client, agent_command, to_toml, wait_until
from test_ota_e2e import CONFIG, TOKEN, AgentProc, pinned_key

pytestmark = pytest.mark.myriad_only


def test_status_message_is_retained_and_periodic(tmp_path):
    broker = Broker(tmp_path / "srv", raw_config=CONFIG).start()
    api = Api(broker.api_port, TOKEN)
    dev = "status-1"
    api.ok("POST", "/api/v1/devices", {"id": dev, "password": "dev-pw-123"}, expect=201)
    agent = AgentProc(tmp_path, dev, broker, pinned_key(api), b"x" * 1000, ["sh", "-c", "exit 0"],
                      mqtt={"status_every_secs": 1})
    user, password = api.create_app(admin=True)
    watch = None
    try:
        agent.start()
        time.sleep(2.5)
        # A subscriber arriving now gets the retained message at once, then the periodic ones.
        watch = Client(broker.port, username=user, password=password)
        watch.subscribe(f"devices/{dev}/status", 1)
        raw = []
        assert wait_until(lambda: raw.extend(watch.drain(0.2)) or len(raw) >= 3, 10), raw
        assert raw[0].retain, "the last status, kept by the broker, comes first"
        messages = [json.loads(m.payload) for m in raw]
        first = messages[0]
        assert first["online"] is True and first["firmware"] == {"version": "1.0.0", "counter": 0, "slot": "A"}, first
        assert first["disk_free_bytes"] > 0 and first["mem_available_bytes"] > 0, first
        ups = [m["uptime_s"] for m in messages]
        assert ups == sorted(ups) and ups[-1] > ups[0], ups
        assert all(abs(m["ts"] - time.time() * 1000) < 60_000 for m in messages)
    finally:
        if watch is not None:
            watch.close()
        agent.stop()
        broker.stop()


def test_bad_status_period_is_named(tmp_path):
    cfg = {"slot_a": str(tmp_path / "a"), "slot_b": str(tmp_path / "b"), "state_dir": str(tmp_path / "s"),
           "hardware_type": "hw", "ed25519_keys": ["ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"],
           "mqtt": {"host": "127.0.0.1", "id": "d1", "password": "p", "api": "http://127.0.0.1:1",
                    "status_every_secs": 86401}}
    (tmp_path / "agent.toml").write_text(to_toml(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    done = subprocess.run([*agent_command(), "--config", str(tmp_path / "agent.toml")],
                          capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and "mqtt.status_every_secs" in done.stderr, done.stderr
