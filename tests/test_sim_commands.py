"""`myriad sim commands`, the command service benchmark (bench/commands.sh),
in a small bounded run: 50 simulated devices (half 5.0, half 3.1.1) answer
commands sent through the HTTP API for a few seconds; the JSON report must
show commands succeeding end to end with real latencies and no failures."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from helpers import HOST, Broker, broker_kind, myriad_bin

TOKEN = "sim-commands-test-token-0123456789"
CONFIG = f"""
[auth]
allow_anonymous = false

[api]
token = "{TOKEN}"

[commands.rate_device]
per_second = 0.0
"""

pytestmark = pytest.mark.skipif(broker_kind() != "myriad", reason="needs Myriad's HTTP API")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("sim_commands"), raw_config=CONFIG).start()
    yield b
    b.stop()


def run_sim(broker: Broker, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    env["MYRIAD_API_TOKEN"] = TOKEN
    out = subprocess.run(
        [str(myriad_bin()), "sim", "--quiet", "--broker", f"{HOST}:{broker.port}",
         "--broker-pid", str(broker.proc.pid), "commands", "--api", f"{HOST}:{broker.api_port}",
         *args],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=90, env=env,
    )
    assert out.returncode == 0, f"sim failed: {out.stderr.decode(errors='replace')}\n{broker.log_tail()}"
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("priority", ["l2", "l1"])
def test_sim_commands_reports_end_to_end_latency(broker, priority):
    r = run_sim(broker, "-n", "50", "--mixed", "--duration", "2", "--window", "8",
                "--priority", priority, "--connect-timeout", "30")
    broker.assert_alive()
    assert r["scenario"] == "commands"
    assert r["devices"] == 50 and r["connected"] == 50 and r["devices_v311"] == 25
    assert r["commands_succeeded"] > 50, r
    assert r["commands_succeeded"] == r["commands_accepted"] == r["commands_sent"], r
    for key in ("commands_failed", "commands_timed_out", "commands_refused", "request_errors",
                "connect_failures", "drops"):
        assert r[key] == 0, (key, r)
    assert r["errors"] == [], r
    assert r["latency_samples"] == r["commands_succeeded"]
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"], r
    assert r["commands_per_sec"] > 0 and r["accept_p50_ms"] > 0
    assert r["broker_cpu_secs"] is not None and r["commands_per_broker_cpu_sec"] > 0
