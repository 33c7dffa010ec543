"""`myriad sim telemetry`, the telemetry ingest benchmark (bench/telemetry.sh), in a small
bounded run: 50 registered devices publish sensor readings to `devices/{id}/telemetry` for two
seconds, single and batch form; the JSON report must show every value sent acknowledged and
stored (read back from `/metrics` by the simulator, and here from the query API)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from helpers import HOST, Api, Broker, broker_kind, myriad_bin

TOKEN = "sim-telemetry-test-token-0123456789"
CONFIG = f"""
[auth]
allow_anonymous = false

[api]
token = "{TOKEN}"
"""

pytestmark = pytest.mark.skipif(broker_kind() != "myriad", reason="needs Myriad's HTTP API")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("sim_telemetry"), raw_config=CONFIG).start()
    yield b
    b.stop()


def run_sim(broker: Broker, prefix: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    env["MYRIAD_API_TOKEN"] = TOKEN
    out = subprocess.run(
        [str(myriad_bin()), "sim", "--quiet", "--prefix", prefix, "--broker", f"{HOST}:{broker.port}",
         "--broker-pid", str(broker.proc.pid), "telemetry", "--api", f"{HOST}:{broker.api_port}",
         *args],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=90, env=env,
    )
    assert out.returncode == 0, f"sim failed: {out.stderr.decode(errors='replace')}\n{broker.log_tail()}"
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("batch", [1, 10])
def test_sim_telemetry_stores_every_value_sent(broker, batch):
    prefix = f"simtm{batch}"
    r = run_sim(broker, prefix, "-n", "50", "--duration", "2", "--interval", "0.2",
                "--batch", str(batch), "--connect-timeout", "30")
    broker.assert_alive()
    assert r["scenario"] == "telemetry"
    assert r["devices"] == 50 and r["connected"] == 50, r
    assert r["messages_sent"] >= 50 * 5, r
    assert r["messages_acked"] == r["messages_sent"], r
    assert r["values_sent"] == r["messages_sent"] * batch * 4, r
    assert r["values_stored"] == r["values_sent"], r
    assert r["errors"] == [] and r["drops"] == 0 and r["connect_failures"] == 0, r
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"], r
    assert r["broker_cpu_us_per_value"] > 0, r
    # One device's values are readable: four metrics, quantised as sent.
    latest = Api(broker.api_port, TOKEN).ok("GET", f"/api/v1/devices/{prefix}-t0/telemetry/latest")
    assert set(latest["metrics"]) == {"temp", "hum", "bat", "events"}, latest
    temp = latest["metrics"]["temp"]["value"]
    assert abs(temp * 10 - round(temp * 10)) < 1e-9, temp
