"""What the heap profiler costs when off (issue 22): MQTT throughput of one `myriad serve`
binary under three jemalloc settings, alternated round by round:

- `inactive` (the default): the profiler compiled in and enabled (`prof:true`) but not
  sampling (`prof_active:false`), switchable at run time;
- `disabled`: `_RJEM_MALLOC_CONF=prof:false`, the profiler off for the whole process (the
  nearest to a build without it that one binary gives; jemalloc is still built with
  `--enable-prof`);
- `active`: `_RJEM_MALLOC_CONF=prof_active:true`, sampling one allocation per 512 KiB.

Load: `myriad sim p2p` (QoS 1, 256-byte payloads, 4 publisher/subscriber pairs) for
`--seconds` per round. Reports, per setting, the median of messages per broker CPU second
(the number least disturbed by other work on shared cores) and of delivered messages per
second. Each broker listens on a free loopback port, uses the memory store, and is stopped
by PID.

    .venv/bin/python bench/profiling_off_cost.py [--bin target/ci/myriad] [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
SETTINGS = {"inactive": None, "disabled": "prof:false", "active": "prof_active:true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def round_once(binary: str, conf: str | None, seconds: int) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.toml"
        cfg.write_text('[store]\nbackend = "memory"\n[api]\nenabled = false\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MYRIAD_", "_RJEM_"))}
        if conf is not None:
            env["_RJEM_MALLOC_CONF"] = conf
        proc = subprocess.Popen([binary, "serve", "--config", str(cfg), "--listen", f"{HOST}:{port}"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tmp)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            assert "MQTT listening" in line, line
            time.sleep(0.3)
            done = subprocess.run(
                [binary, "sim", "--quiet", "--broker", f"{HOST}:{port}", "--broker-pid", str(proc.pid),
                 "p2p", "--publishers", "4", "--duration", str(seconds), "--payload", "256"],
                capture_output=True, text=True, timeout=seconds + 60)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            assert result["lost"] == 0 and not result["errors"], result
            return result
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default="target/ci/myriad")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    args.bin = str(Path(args.bin).resolve())
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, conf in SETTINGS.items():
            runs[name].append(round_once(args.bin, conf, args.seconds))
    base = statistics.median(r["msgs_per_broker_cpu_sec"] for r in runs["disabled"])
    for name, results in runs.items():
        per_cpu = statistics.median(r["msgs_per_broker_cpu_sec"] for r in results)
        print(json.dumps({
            "setting": name,
            "rounds": len(results),
            "msgs_per_broker_cpu_sec": round(per_cpu),
            "delivered_per_sec": round(statistics.median(r["delivered_per_sec"] for r in results)),
            "vs_disabled_pct": round(100.0 * (per_cpu / base - 1.0), 1),
            "rss_peak_mib": round(max(r["broker_rss_peak"] for r in results) / 2**20, 1),
        }))


if __name__ == "__main__":
    main()
