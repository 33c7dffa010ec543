#!/usr/bin/env python3
"""PING round trip of an idle client while other clients do persistent QoS 1
traffic (issue 13, slice "shell").

Store commits (redb, fsync) used to run on the broker's event loop: on the
default one-thread runtime every connection, an idle client's PINGREQ
included, waited for each commit. This starts a broker (embedded store,
fsync, group commit: the defaults) on 127.0.0.1 port 0, measures an idle
client's PING round trips alone, then again while `myriad sim p2p --qos 1
--persistent-subscribers` keeps every delivery going through the store, and
prints one JSON line:

  {"bench":"attack","name":"shell_commit_ping", "idle_p50_ms", "idle_p99_ms",
   "loaded_p50_ms", "loaded_p99_ms", "acked_per_sec", "broker_peak_rss_mb", "bound_mb",
   "bound_p50_ms", "bound_p99_ms", "ok"}

ok: the loaded p50 stays under bound_p50_ms (BOUND_P50_MS, 1 ms: no commit
in the way) and p99 under bound_p99_ms (BOUND_P99_MS, 10 ms: what queueing
behind other clients' packets costs on a busy 2-core machine; with STORE=memory,
no commits at all, it is about the same), and the broker's peak RSS under
bound_mb. Run it with MYRIAD_BIN=<older binary>
for the "before" figure. Knobs: PAIRS (16), WINDOW (32), SECS (8),
PING_EVERY_MS (5), STORE (embedded; "memory" gives the floor without any
commit). Finishes in about SECS + 10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Pinger, pct  # noqa: E402
from helpers import Broker, myriad_bin, rss_mb  # noqa: E402

PAIRS = int(os.environ.get("PAIRS", "16"))
WINDOW = int(os.environ.get("WINDOW", "32"))
SECS = float(os.environ.get("SECS", "8"))
PING_EVERY = float(os.environ.get("PING_EVERY_MS", "5")) / 1000
BOUND_P50_MS = float(os.environ.get("BOUND_P50_MS", "1"))
BOUND_P99_MS = float(os.environ.get("BOUND_P99_MS", "10"))
BOUND_MB = float(os.environ.get("BOUND_MB", "256"))
STORE = os.environ.get("STORE", "embedded")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="shell-commit-ping.") as work:
        os.environ["MYRIAD_BIN"] = str(myriad_bin())
        config = {"api": {"enabled": False}, "store": {"backend": STORE}}
        broker = Broker(Path(work), config).start()
        try:
            pinger = Pinger(broker.port, PING_EVERY)
            pinger.sample(0.5)  # warm up
            idle = pinger.sample(3.0)
            sim = subprocess.Popen(
                [str(myriad_bin()), "sim", "--broker", f"127.0.0.1:{broker.port}", "--broker-pid",
                 str(broker.proc.pid), "-q", "p2p", "--pairs", str(PAIRS), "--qos", "1",
                 "--window", str(WINDOW), "--duration", str(SECS), "--persistent-subscribers"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            time.sleep(1.5)  # connected and publishing
            loaded = pinger.sample(max(1.0, SECS - 2.5))
            out, _ = sim.communicate(timeout=SECS + 60)
            report = json.loads(out.strip().splitlines()[-1])
            _, peak = rss_mb(broker.proc.pid)
        finally:
            broker.stop()
    acked = round(report["acked"] / max(report["publish_secs"], 1e-9))
    result = {
        "bench": "attack",
        "name": "shell_commit_ping",
        "store": STORE,
        "binary": str(myriad_bin()),
        "idle_p50_ms": pct(idle, 0.5),
        "idle_p99_ms": pct(idle, 0.99),
        "loaded_p50_ms": pct(loaded, 0.5),
        "loaded_p99_ms": pct(loaded, 0.99),
        "loaded_max_ms": round(max(loaded), 3),
        "pings": len(loaded),
        "acked_per_sec": acked,
        "lost": report.get("lost"),
        "broker_peak_rss_mb": round(peak, 1),
        "bound_mb": BOUND_MB,
        "bound_p50_ms": BOUND_P50_MS,
        "bound_p99_ms": BOUND_P99_MS,
    }
    result["ok"] = (
        result["loaded_p50_ms"] <= BOUND_P50_MS and result["loaded_p99_ms"] <= BOUND_P99_MS and peak <= BOUND_MB
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
