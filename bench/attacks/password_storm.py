#!/usr/bin/env python3
"""300 simultaneous wrong-password CONNECTs for one device (issue 13 s.2,
slice "fleet").

Starts a broker (defaults, anonymous off) on 127.0.0.1 port 0, registers one
device over the HTTP API, then opens N (300) MQTT 5.0 connections from
127.0.0.1 at once, each sending CONNECT with the device's id and a wrong
password, while sampling the broker's RSS and thread count from /proc.
Afterwards the real device connects from another address (127.0.0.2) with
the right password. Prints one JSON line:

  {"bench":"attack","name":"password_storm", "attempts", "connacks" (reason ->
   count), "hashed" (0x86 answers: Argon2 ran), "refused" (0x9F/0x88: no
   Argon2), "peak_rss_mb", "peak_threads", "storm_secs",
   "real_device_from_other_address" (CONNACK reason), "ok"}

ok: the real device gets in (0x00), peak RSS under BOUND_MB (256) and
threads under BOUND_THREADS (64). Knobs: N (300).
Usage: .venv/bin/python bench/attacks/password_storm.py --bin target/release/myriad
Finishes in a few seconds (about 30 s against a binary hashing every attempt).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import binary_from_args  # noqa: E402
from helpers import Api, Broker  # noqa: E402
from mqtt_raw import connect_packet, decode_varint  # noqa: E402

N = int(os.environ.get("N", "300"))
BOUND_MB = float(os.environ.get("BOUND_MB", "256"))
BOUND_THREADS = int(os.environ.get("BOUND_THREADS", "64"))
TOKEN = "password-storm-bench-token-01"


def proc_status(pid: int) -> tuple[float, int]:
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def connack(port: int, dev: str, password: bytes, source: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=120, source_address=(source, 0)) as s:
        s.sendall(connect_packet(dev, 5, username=dev, password=password))
        buf = b""
        while True:
            if len(buf) >= 2:
                length, pos = decode_varint(buf, 1)
                if len(buf) >= pos + length:
                    return buf[pos + 1]
            chunk = s.recv(4096)
            if not chunk:
                return -1
            buf += chunk


def main() -> None:
    binary = binary_from_args(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory(prefix="password-storm.") as work:
        broker = Broker(Path(work), {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}).start()
        try:
            pid = broker.proc.pid
            dev, pw = "storm-target-1", "the-right-password-1"
            Api(broker.api_port, TOKEN).ok("POST", "/api/v1/devices",
                                           {"id": dev, "name": "target", "password": pw}, expect=201)
            rss0, threads0 = proc_status(pid)
            results: list[int] = []
            lock = threading.Lock()
            barrier = threading.Barrier(N + 1)

            def one() -> None:
                barrier.wait()
                try:
                    rc = connack(broker.port, dev, b"wrong-guess", "127.0.0.1")
                except OSError:
                    rc = -2
                with lock:
                    results.append(rc)

            workers = [threading.Thread(target=one, daemon=True) for _ in range(N)]
            for w in workers:
                w.start()
            barrier.wait()
            started = time.monotonic()
            peak_rss, peak_threads = rss0, threads0
            while any(w.is_alive() for w in workers):
                rss, threads = proc_status(pid)
                peak_rss, peak_threads = max(peak_rss, rss), max(peak_threads, threads)
                time.sleep(0.005)
            storm_secs = time.monotonic() - started
            real = connack(broker.port, dev, pw.encode(), "127.0.0.2")
        finally:
            broker.stop()
    counts: dict[str, int] = {}
    for rc in results:
        key = f"0x{rc:02x}" if rc >= 0 else str(rc)
        counts[key] = counts.get(key, 0) + 1
    result = {
        "bench": "attack",
        "name": "password_storm",
        "binary": str(binary),
        "attempts": N,
        "connacks": counts,
        "hashed": counts.get("0x86", 0),
        "refused": counts.get("0x9f", 0) + counts.get("0x88", 0),
        "rss_before_mb": round(rss0, 1),
        "peak_rss_mb": round(peak_rss, 1),
        "threads_before": threads0,
        "peak_threads": peak_threads,
        "storm_secs": round(storm_secs, 2),
        "real_device_from_other_address": f"0x{real:02x}" if real >= 0 else real,
        "bound_mb": BOUND_MB,
        "bound_threads": BOUND_THREADS,
    }
    result["ok"] = real == 0 and peak_rss <= BOUND_MB and peak_threads <= BOUND_THREADS
    print(json.dumps(result))


if __name__ == "__main__":
    main()
