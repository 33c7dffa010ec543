"""Store-and-forward telemetry through `myriad agent` (issue 19): real `myriad serve` and
`myriad agent` processes, the agent's sampler (`[[telemetry.sample]]`) running a command that
records every point it produced, and the agent's `handed_log` recording every point it made
durable in its spool. The agent reaches the broker through a TCP proxy in the test (so the
broker can restart on another port, and the proxy can cut, refuse and delay connections).

Scenarios: (a) sampled points (and the health points) arrive in the telemetry store; (b) the broker is stopped and
restarted on the same data directory: the points sampled meanwhile arrive after, in order,
once; (c) the agent is killed with SIGKILL at random moments: every point it handed over is
in the store, once, and nothing the sampler did not produce; (d) the proxy cuts, refuses and
delays connections; (e) the spool's cap is hit while offline: the dropped points are counted
in the agent's status line and the rest arrive."""

from __future__ import annotations

import json
import random
import re
import sys
import time
from pathlib import Path

import pytest

from helpers import Api, Broker, Proxy, wait_until
from test_ota_e2e import CONFIG, TOKEN, AgentProc, pinned_key

pytestmark = pytest.mark.myriad_only

# The sampler: prints K points in the batch form, each with its own timestamp and the next
# counter value, and appends "ts n" per point to DIR/produced first.
SAMPLER = r'''
import json, os, sys, time
d, k = sys.argv[1], int(sys.argv[2])
try:
    n = int(open(os.path.join(d, "counter")).read())
except (OSError, ValueError):
    n = 0
base = int(time.time() * 1000)
points = []
with open(os.path.join(d, "produced"), "a") as f:
    for i in range(k):
        n += 1
        points.append({"ts": base + i, "n": n})
        f.write(f"{base + i} {n}\n")
with open(os.path.join(d, "counter"), "w") as f:
    f.write(str(n))
print(json.dumps({"points": points}))
'''

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def server(tmp_path):
    """A broker of the test's own (the restart test stops and starts it)."""
    b = Broker(tmp_path / "broker", raw_config=CONFIG).start()
    yield b
    b.stop()


class Device:
    """A device registered on the broker, its agent (through a proxy) and its files."""

    def __init__(self, tmp_path: Path, broker: Broker, points_per_sample: int = 3, telemetry: dict | None = None):
        self.broker = broker
        self.api = Api(broker.api_port, TOKEN)
        self.id = f"tel-{random.randrange(1 << 30):x}"
        self.api.ok("POST", "/api/v1/devices", {"id": self.id, "password": "dev-pw-123"}, expect=201)
        self.proxy = Proxy(broker.port)
        self.files = tmp_path / "files"
        self.files.mkdir()
        script = tmp_path / "sampler.py"
        script.write_text(SAMPLER)
        self.handed = self.files / "handed.jsonl"
        tel = {
            "status_every_secs": 1,
            "handed_log": str(self.handed),
            "replay_records_per_sec": 50,
            "sample": [{"every_secs": 1, "command": [sys.executable, str(script), str(self.files), str(points_per_sample)]}],
        }
        tel.update(telemetry or {})
        self.start_ms = int(time.time() * 1000)
        self.agent = AgentProc(tmp_path, self.id, broker, pinned_key(self.api), b"image-1" * 100, [],
                               mqtt={"port": self.proxy.port, "reconnect_min_ms": 100, "reconnect_max_ms": 1000,
                                     "keep_alive_secs": 5},
                               extra={"telemetry": tel})

    def produced(self) -> dict[int, int]:
        out = {}
        path = self.files / "produced"
        if path.exists():
            for line in path.read_text().splitlines():
                ts, n = line.split()
                out[int(ts)] = int(n)
        return out

    def handed_over(self) -> dict[int, int]:
        out = {}
        if self.handed.exists():
            for line in self.handed.read_text().splitlines():
                if line.strip():
                    p = json.loads(line)
                    out[p["ts"]] = int(p["metrics"]["n"])
        return out

    def stored(self) -> list[tuple[int, int]]:
        api = Api(self.broker.api_port, TOKEN)
        to = int(time.time() * 1000) + 60_000
        r = api.ok("GET", f"/api/v1/devices/{self.id}/telemetry?metrics=n&from={self.start_ms - 1000}&to={to}")
        pts = [s["points"] for s in r["series"] if s["metric"] == "n"]
        return [(int(ts), int(v)) for ts, v in (pts[0] if pts else [])]

    def log(self) -> str:
        return "".join(ANSI.sub("", p.read_text(errors="replace")) for p in sorted(self.agent.dir.glob("agent.*.log")))

    def status(self) -> dict[str, int]:
        lines = [ln for ln in self.log().splitlines() if "telemetry status" in ln]
        if not lines:
            return {}
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}

    def check_store(self, timeout: float, dropped_ok: bool = False) -> list[tuple[int, int]]:
        """Waits until every point handed over is stored (or, with drops, until the spool is
        empty); then checks order, uniqueness and that every stored point was produced."""
        def done() -> bool:
            stored = {ts for ts, _ in self.stored()}
            if dropped_ok:
                return self.status().get("pending", 1) == 0 and bool(stored)
            return set(self.handed_over()) <= stored
        ok = wait_until(done, timeout, 0.5)
        stored = self.stored()
        handed = self.handed_over()
        assert ok, (f"missing {sorted(set(handed) - {ts for ts, _ in stored})[:10]} of {len(handed)}",
                    self.log()[-3000:])
        ts = [t for t, _ in stored]
        assert ts == sorted(ts) and len(ts) == len(set(ts))
        values = [v for _, v in stored]
        assert values == sorted(values) and len(values) == len(set(values)), "points out of order or twice"
        produced = self.produced()
        for t, v in stored:
            assert produced.get(t) == v, f"stored point {t}={v} the sampler did not produce"
        for t, v in handed.items():
            assert produced.get(t) == v
        return stored

    def close(self) -> None:
        self.agent.stop()
        self.proxy.close()


@pytest.fixture
def device(tmp_path, server, request):
    d = Device(tmp_path, server, **getattr(request, "param", {}))
    yield d
    d.close()


@pytest.mark.parametrize("device", [{"telemetry": {"health_every_secs": 1}}], indirect=True)
def test_sampled_points_arrive_in_the_store(device):
    device.agent.start()
    assert wait_until(lambda: len(device.handed_over()) >= 9, 20), device.log()[-2000:]
    stored = device.check_store(20)
    assert len(stored) >= 9
    assert wait_until(lambda: device.status().get("acked", 0) >= 3, 10), device.log()[-2000:]
    s = device.status()
    assert s["dropped_points"] == 0 and s["sent"] >= s["acked"] >= 3
    assert "version=V5" in device.log()
    # The health points (the agent's built-in sampler) arrive too.
    latest = Api(device.broker.api_port, TOKEN).ok("GET", f"/api/v1/devices/{device.id}/telemetry/latest")["metrics"]
    assert latest["mem.available_bytes"]["value"] > 0 and latest["fw.counter"]["value"] == 0, latest
    assert "agent.uptime_s" in latest and "spool.pending_records" in latest, latest


def test_broker_restart_points_spooled_and_sent_after(device, server):
    broker = server
    device.agent.start()
    assert wait_until(lambda: len(device.stored()) >= 6, 20), device.log()[-2000:]
    broker.stop()
    handed_before = len(device.handed_over())
    time.sleep(5)
    offline = len(device.handed_over()) - handed_before
    assert offline >= 9, "the sampler kept handing points over while the broker was down"
    assert device.status().get("pending", 0) >= 3
    broker.start()
    device.proxy.target_port = broker.port
    device.api = Api(broker.api_port, TOKEN)
    stored = device.check_store(30)
    assert len(stored) >= handed_before + offline


def test_agent_killed_at_random_moments_loses_and_repeats_nothing(device):
    rng = random.Random(19)
    for _ in range(5):
        device.agent.start()
        time.sleep(rng.uniform(0.8, 3.0))
        device.agent.proc.kill()
        device.agent.proc.wait(10)
    device.agent.start()
    assert wait_until(lambda: len(device.handed_over()) >= 15, 20)
    stored = device.check_store(40)
    assert len(stored) >= 15


def test_proxy_cuts_refuses_and_delays(device):
    device.agent.start()
    rng = random.Random(7)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        what = rng.choice(["cut", "refuse", "delay", "pass"])
        if what == "cut":
            device.proxy.cut()
        elif what == "refuse":
            device.proxy.refuse = True
            device.proxy.cut()
        elif what == "delay":
            device.proxy.delay = 0.3
        time.sleep(rng.uniform(0.5, 2.0))
        device.proxy.refuse = False
        device.proxy.delay = 0.0
    assert device.proxy.accepted >= 2
    stored = device.check_store(40)
    assert len(stored) >= 30


@pytest.mark.parametrize("device", [{"points_per_sample": 60, "telemetry": {
    "spool_max_bytes": 8192, "spool_segment_bytes": 4096}}], indirect=True)
def test_spool_cap_while_offline_drops_counted_rest_arrives(device):
    device.proxy.refuse = True
    device.agent.start()
    assert wait_until(lambda: device.status().get("dropped_points", 0) > 0, 30), device.log()[-2000:]
    device.proxy.refuse = False
    stored = device.check_store(40, dropped_ok=True)
    s = device.status()
    handed = device.handed_over()
    stored_ts = {ts for ts, _ in stored}
    # The sampler keeps handing points over (60 a second): those newer than the newest stored
    # point may still be on their way, so only the older ones count as missing.
    missing = {ts for ts in handed if ts <= max(stored_ts)} - stored_ts
    assert s["dropped_points"] > 0
    # What is missing is what was dropped: the oldest points, and no more than counted.
    assert 0 < len(missing) <= s["dropped_points"], (len(missing), s)
    assert max(missing) < min(stored_ts & set(handed))


def test_mutual_tls_with_a_client_certificate_and_no_password(tmp_path):
    """(f) The device logs in with its client certificate over TLS (no password in the
    agent's config): its sampled points arrive."""
    from test_tls import make_certs, tls_config, tls_port

    dev = f"tls-{random.randrange(1 << 30):x}"
    certs = make_certs(tmp_path / "certs", dev)
    b = Broker(tmp_path / "broker", raw_config=CONFIG + tls_config(certs, "optional")).start()
    try:
        api = Api(b.api_port, TOKEN)
        api.ok("POST", "/api/v1/devices", {"id": dev, "password": "dev-pw-123"}, expect=201)
        script = tmp_path / "sampler.py"
        script.write_text(SAMPLER)
        files = tmp_path / "files"
        files.mkdir()
        agent = AgentProc(tmp_path, dev, b, pinned_key(api), b"image-1" * 100, [],
                          mqtt={"port": tls_port(b), "password": None, "tls_ca": str(certs / "ca.pem"),
                                "tls_cert": str(certs / f"{dev}.pem"), "tls_key": str(certs / f"{dev}.key")},
                          extra={"telemetry": {"sample": [{"every_secs": 1, "command": [
                              sys.executable, str(script), str(files), "2"]}]}})
        start = int(time.time() * 1000)
        try:
            agent.start()

            def stored() -> int:
                r = api.ok("GET", f"/api/v1/devices/{dev}/telemetry?metrics=n&from={start - 1000}&to={start + 600_000}")
                return sum(len(s["points"]) for s in r["series"])
            assert wait_until(lambda: stored() >= 4, 20), ANSI.sub("", (agent.dir / "agent.1.log").read_text(errors="replace"))[-2000:]
        finally:
            agent.stop()
    finally:
        b.stop()
