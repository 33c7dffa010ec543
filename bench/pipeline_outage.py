#!/usr/bin/env python3
"""A pipeline's memory while its sink is down, and that everything arrives once it is back.
Prints one JSON object.

Starts `myriad serve` (MYRIAD_BIN or --bin; default target/release/myriad, else target/ci/myriad)
with one pipeline

    SELECT topic(3) AS device, encode(*, 'base64') AS raw FROM 'bench/fanin/+'
    sink = { type = "http", url = <a webhook in this process>, concurrency = 4 }

and `myriad sim fanin` with PUBLISHERS (default 10,000) simulated devices publishing RATE
messages/s each at QoS 1 (32-byte payloads carrying a per-publisher sequence number, so each
record is unique) for OUTAGE + AFTER seconds. The webhook answers 503 from the first request
until OUTAGE seconds later (the sink is "down": the pipeline retries with backoff, its breaker
opens, the broker queues for the pipeline's session), then 200.

The server's RSS (VmRSS, /proc) is sampled every second. Reported: RSS when the outage began
(all devices connected, publishing), its peak during the outage and the growth between them,
beside the configured buffer (`mqtt.internal_max_queued_messages` / `_bytes`: what the broker
may queue for the pipeline's session, counted as payload + topic + properties per message,
and `in_flight`: what the pipeline holds); and the records that arrived (distinct by device and
payload, duplicates counted apart) against the messages the simulator got a PUBACK for.

    MYRIAD_BIN=target/ci/myriad python3 bench/pipeline_outage.py [--publishers 10000]
        [--rate 1] [--outage 60] [--after 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SQL = "SELECT topic(3) AS device, encode(*, 'base64') AS raw FROM 'bench/fanin/+'"
LISTEN_RE = re.compile(r"^MQTT listening on 127\.0\.0\.1:(\d+)\s*$")
API_RE = re.compile(r"^HTTP API listening on 127\.0\.0\.1:(\d+)\s*$")


class Webhook:
    """The sink: 503 for `outage` seconds from the first request, then 200; keeps what came."""

    def __init__(self, outage: float):
        self.outage = outage
        self.lock = threading.Lock()
        self.first: float | None = None
        self.refused_requests = 0
        self.seen: set[tuple[str, str]] = set()
        self.duplicates = 0
        self.last = 0.0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.monotonic()
                with hook.lock:
                    if hook.first is None:
                        hook.first = now
                    down = now - hook.first < hook.outage
                    if down:
                        hook.refused_requests += 1
                if down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                records = json.loads(raw)
                if isinstance(records, dict):
                    records = [records]
                with hook.lock:
                    for r in records:
                        k = (r["device"], r["raw"])
                        if k in hook.seen:
                            hook.duplicates += 1
                        else:
                            hook.seen.add(k)
                    hook.last = now
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arrived(self) -> int:
        with self.lock:
            return len(self.seen)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


def metric_sum(api_port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{api_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def main() -> int:
    ap = argparse.ArgumentParser()
    default_bin = REPO / "target" / "release" / "myriad"
    if not default_bin.exists():
        default_bin = REPO / "target" / "ci" / "myriad"
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get("MYRIAD_BIN", default_bin)))
    ap.add_argument("--publishers", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=1.0, help="messages/s per publisher")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the sink answers 503")
    ap.add_argument("--after", type=float, default=20.0, help="seconds of publishing after the outage")
    ap.add_argument("--queue", type=int, default=1_000_000, help="mqtt.internal_max_queued_messages")
    ap.add_argument("--queue-bytes", type=int, default=64 << 20, help="mqtt.internal_max_queued_bytes")
    ap.add_argument("--in-flight", type=int, default=5000)
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the last arrival")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="myriad-bench-outage-"))
    hook = Webhook(args.outage)
    config = work / "myriad.toml"
    config.write_text(
        "[mqtt]\n"
        f"internal_max_queued_messages = {args.queue}\ninternal_max_queued_bytes = {args.queue_bytes}\n"
        "[[pipelines]]\nname = \"outage\"\n"
        f"sql = {json.dumps(SQL)}\n"
        "batch = { max_records = 500, max_age_ms = 50 }\n"
        f"in_flight = {args.in_flight}\n"
        f"sink = {{ type = \"http\", url = \"http://{HOST}:{hook.port}/hook\", concurrency = 4 }}\n"
        f"dead_letter = {{ path = {json.dumps(str(work / 'dead.jsonl'))} }}\n"
        f"[store]\ndata_dir = {json.dumps(str(work / 'data'))}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    env["RUST_LOG"] = "warn"
    serve = subprocess.Popen(
        [str(args.bin), "serve", "--config", str(config), "--listen", f"{HOST}:0", "--api-listen", f"{HOST}:0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(work / "serve.log", "wb"), env=env)
    samples: list[tuple[float, int, int]] = []
    stop_sampling = threading.Event()
    try:
        port = api_port = None
        assert serve.stdout is not None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = serve.stdout.readline().decode(errors="replace")
            if not line:
                break
            if m := API_RE.match(line):
                api_port = int(m.group(1))
            if m := LISTEN_RE.match(line):
                port = int(m.group(1))
        if port is None or api_port is None:
            raise RuntimeError(f"serve did not start: {(work / 'serve.log').read_text()[-2000:]}")
        threading.Thread(target=lambda: [None for _ in serve.stdout], daemon=True).start()
        time.sleep(0.5)
        rss_idle = rss_kib(serve.pid)["VmRSS"]
        t0 = time.monotonic()

        def sample() -> None:
            while not stop_sampling.wait(1.0):
                try:
                    samples.append((time.monotonic() - t0, rss_kib(serve.pid)["VmRSS"], hook.arrived()))
                except OSError:
                    return

        threading.Thread(target=sample, daemon=True).start()
        sim = subprocess.Popen(
            [str(args.bin), "sim", "--broker", f"{HOST}:{port}", "--broker-pid", str(serve.pid),
             "--prefix", "bench", "-q", "--mqtt", "5", "fanin", "--publishers", str(args.publishers),
             "--subscribers", "0", "--qos", "1", "--rate", str(args.rate), "--payload", "32",
             "--duration", str(args.outage + args.after), "--drain", "120"],
            stdout=subprocess.PIPE, stderr=open(work / "sim.log", "wb"), stdin=subprocess.DEVNULL, env=env)
        sim_out, _ = sim.communicate(timeout=args.outage + args.after + 600)
        report: dict = {}
        for line in sim_out.decode(errors="replace").splitlines()[::-1]:
            try:
                report = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
        acked = int(report.get("acked") or 0)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and hook.arrived() < acked:
            time.sleep(0.5)
        t_done = time.monotonic() - t0
        time.sleep(2)  # anything late (duplicates)
        stop_sampling.set()
        first = (hook.first - t0) if hook.first is not None else None
        outage = [s for s in samples if first is not None and first <= s[0] <= first + args.outage]
        at_start = outage[0][1] if outage else None
        peak = max((s[1] for s in outage), default=None)
        after = [s for s in samples if first is not None and s[0] > first + args.outage]
        result = {
            "bench": "pipeline_outage",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.release()}",
            "binary": str(args.bin),
            "publishers": args.publishers,
            "rate_per_publisher": args.rate,
            "outage_s": args.outage,
            "published_acked": acked,
            "arrived_distinct": hook.arrived(),
            "duplicates": hook.duplicates,
            "lost": acked - hook.arrived(),
            "seconds_to_last_arrival_after_outage": round(t_done - (first or 0) - args.outage, 1),
            "refused_requests_during_outage": hook.refused_requests,
            "buffer": {
                "internal_max_queued_messages": args.queue,
                "internal_max_queued_bytes": args.queue_bytes,
                "in_flight": args.in_flight,
            },
            "rss_mib": {
                "idle": round(rss_idle / 1024, 1),
                "outage_start": round(at_start / 1024, 1) if at_start else None,
                "outage_peak": round(peak / 1024, 1) if peak else None,
                "growth_during_outage": round((peak - at_start) / 1024, 1) if peak and at_start else None,
                "peak_after": round(max((s[1] for s in after), default=0) / 1024, 1),
                "end": round(samples[-1][1] / 1024, 1) if samples else None,
            },
            "broker_dropped": metric_sum(api_port, "myriad_messages_dropped_total"),
            "pipeline_retries": metric_sum(api_port, "myriad_pipeline_retries_total"),
            "sim": {k: v for k, v in report.items() if not isinstance(v, (dict, list))},
            "samples_s_rssmib_arrived": [(round(t), round(r / 1024), n) for t, r, n in samples[::5]],
        }
        print(json.dumps(result))
        return 0 if result["lost"] <= 0 else 1
    finally:
        stop_sampling.set()
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(20)
            except subprocess.TimeoutExpired:
                serve.kill()
        hook.close()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    sys.exit(main())
