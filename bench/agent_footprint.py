#!/usr/bin/env python3
"""Footprint of `myriad agent` (issue 19): resident memory idle and under load, CPU per 1,000
telemetry points, and the stripped binary's size. Starts its own `myriad serve` (loopback,
temporary data dir) and one agent with a sampler that hands it POINTS points per second
(`[[telemetry.sample]]`, a command printing the batch form); prints one JSON line.

    python3 bench/agent_footprint.py                   # MYRIAD_BIN or target/release/myriad
    POINTS=5000 LOAD_SECS=30 python3 bench/agent_footprint.py
    AGENT_BIN=target/device/myriad-agent python3 bench/agent_footprint.py

AGENT_BIN measures the device-only build (`cargo build --profile device -p myriad-device`,
run as `myriad-agent --config ...`) instead of `myriad agent` of the platform binary; the
server is MYRIAD_BIN either way.

Only the processes it started are stopped, by PID."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import HOST, Api, Broker, to_toml  # noqa: E402

BIN = os.environ.get("MYRIAD_BIN", str(ROOT / "target" / "release" / "myriad"))
os.environ["MYRIAD_BIN"] = BIN
AGENT_BIN = os.environ.get("AGENT_BIN")
AGENT_CMD = [AGENT_BIN] if AGENT_BIN else [BIN, "agent"]
POINTS = int(os.environ.get("POINTS", "1000"))
IDLE_SECS = float(os.environ.get("IDLE_SECS", "10"))
LOAD_SECS = float(os.environ.get("LOAD_SECS", "20"))
TOKEN = "footprint-token-0123456789"
KEY = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
SAMPLER = """
import json, sys, time
k = int(sys.argv[1]); base = int(time.time() * 1000)
print(json.dumps({"points": [{"ts": base + i, "v": i} for i in range(k)]}))
"""


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_config(work: Path, broker: Broker, sample: bool) -> Path:
    state = work / "state"
    state.mkdir(exist_ok=True)
    (work / "a.img").write_bytes(b"x" * 4096)
    (work / "b.img").write_bytes(b"")
    cfg: dict = {
        "slot_a": str(work / "a.img"), "slot_b": str(work / "b.img"), "state_dir": str(state),
        "hardware_type": "bench", "ed25519_keys": [KEY],
        "provision": {"slot": "A", "version": "1.0.0", "size": 4096},
        "mqtt": {"host": HOST, "port": broker.port, "id": "footprint-1", "password": "dev-pw-123",
                 "api": f"http://{HOST}:{broker.api_port}"},
    }
    text = to_toml(cfg)
    if sample:
        (work / "sampler.py").write_text(SAMPLER)
        text += (f"\n[telemetry]\nstatus_every_secs = 0\n\n[[telemetry.sample]]\nevery_secs = 1\n"
                 f"command = {json.dumps([sys.executable, str(work / 'sampler.py'), str(POINTS)])}\n")
    path = work / "agent.toml"
    path.write_text(text)
    return path


def run_agent(config: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    return subprocess.Popen([*AGENT_CMD, "--config", str(config)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="myriad-footprint."))
    broker = Broker(tmp / "srv", raw_config=f'[auth]\nallow_anonymous = false\n[api]\ntoken = "{TOKEN}"\n').start()
    procs: list[subprocess.Popen] = []
    try:
        api = Api(broker.api_port, TOKEN)
        api.ok("POST", "/api/v1/devices", {"id": "footprint-1", "password": "dev-pw-123"}, expect=201)
        idle_dir, load_dir = tmp / "idle", tmp / "load"
        idle_dir.mkdir()
        load_dir.mkdir()
        idle = run_agent(agent_config(idle_dir, broker, sample=False))
        procs.append(idle)
        time.sleep(IDLE_SECS)
        idle_status = status(idle.pid)
        idle.kill()
        idle.wait(10)
        load = run_agent(agent_config(load_dir, broker, sample=True))
        procs.append(load)
        time.sleep(3)  # connected, first samples in
        cpu0, t0 = cpu_secs(load.pid), time.monotonic()
        time.sleep(LOAD_SECS)
        cpu1, t1 = cpu_secs(load.pid), time.monotonic()
        load_status = status(load.pid)
        stored = api.ok("GET", "/api/v1/devices/footprint-1/telemetry?metrics=v&from=0")
        points = sum(len(s["points"]) for s in stored["series"])
        stripped = tmp / "myriad.stripped"
        subprocess.run(["strip", "-o", str(stripped), AGENT_CMD[0]], check=True)
        print(json.dumps({
            "bench": "agent_footprint",
            "binary": " ".join(AGENT_CMD),
            "binary_bytes": Path(AGENT_CMD[0]).stat().st_size,
            "binary_stripped_bytes": stripped.stat().st_size,
            "idle_rss_kib": idle_status["VmRSS"],
            "idle_rss_anon_kib": idle_status["RssAnon"],
            "idle_rss_file_kib": idle_status["RssFile"],
            "load_points_per_sec": POINTS,
            "load_rss_kib": load_status["VmRSS"],
            "load_peak_rss_kib": load_status["VmHWM"],
            "load_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
            "cpu_ms_per_1000_points": round(1000 * (cpu1 - cpu0) / max(1.0, POINTS * (t1 - t0) / 1000), 3),
            "points_stored": points,
        }))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
