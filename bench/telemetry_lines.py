#!/usr/bin/env python3
"""Writes the issue-17 sensor data set as InfluxDB line protocol to an Influx-compatible
`/write` endpoint (InfluxDB 1.x, or Myriad's compat path) and prints one JSON line.

Data (the same model as crates/myriad-tsdb/examples/bench.rs): DEVICES devices x HOURS hours at
exactly 10 s; per step and device one line `sensor,device=dN temp=..,hum=..,bat=..,events=..i ts`
(4 values): temperature 0.1 degC random walk, humidity 0.1 % random walk, battery 0.01 V falling
one step with p = 1/400, an integer event counter (+1..3 with p = 1/20). Timestamps in seconds
(`precision=s`), starting at midnight UTC two days ago. Lines go out BATCH at a time over one
keep-alive HTTP connection; the server's CPU time is read from /proc/PID/stat around the run.

    python3 bench/telemetry_lines.py --url http://127.0.0.1:21896/write?db=bench --pid PID
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import time
import urllib.parse


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="write URL incl. query (db=, precision is added)")
    ap.add_argument("--devices", type=int, default=int(os.environ.get("DEVICES", "1000")))
    ap.add_argument("--hours", type=int, default=int(os.environ.get("HOURS", "24")))
    ap.add_argument("--batch", type=int, default=5000, help="lines per request")
    ap.add_argument("--pid", type=int, help="server PID, for its CPU time")
    ap.add_argument("--token", help="bearer token (Myriad)")
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    url = urllib.parse.urlsplit(args.url)
    query = url.query + ("&" if url.query else "") + "precision=s"
    path = f"{url.path}?{query}"
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"

    rng = random.Random(20261205)
    devs = [[180 + rng.randrange(80), 400 + rng.randrange(200), 400 + rng.randrange(20), 0]
            for _ in range(args.devices)]
    names = [f"d{i}" for i in range(args.devices)]
    start = (int(time.time()) // 86400 - 2) * 86400
    steps = args.hours * 360
    lines: list[str] = []
    values = requests = errors = 0
    gen_secs = 0.0
    cpu0 = cpu_seconds(args.pid)
    t0 = time.monotonic()

    def flush() -> None:
        nonlocal requests, errors, gen_secs
        if not lines:
            return
        body = ("\n".join(lines) + "\n").encode()
        lines.clear()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        requests += 1
        if resp.status not in (200, 204):
            errors += 1
            if errors <= 3:
                print(f"HTTP {resp.status}: {text[:300]!r}", file=sys.stderr)

    for s in range(steps):
        g = time.monotonic()
        ts = start + s * 10
        for name, d in zip(names, devs):
            d[0] += rng.randrange(3) - 1
            d[1] = min(1000, max(0, d[1] + rng.randrange(3) - 1))
            if rng.randrange(400) == 0:
                d[2] -= 1
            if rng.randrange(20) == 0:
                d[3] += 1 + rng.randrange(3)
            lines.append(f"sensor,device={name} temp={d[0] / 10},hum={d[1] / 10},bat={d[2] / 100},events={d[3]}i {ts}")
            values += 4
        gen_secs += time.monotonic() - g
        if len(lines) >= args.batch:
            flush()
    flush()
    wall = time.monotonic() - t0
    cpu1 = cpu_seconds(args.pid)
    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    print(json.dumps({
        "label": args.label, "devices": args.devices, "hours": args.hours, "values": values,
        "requests": requests, "errors": errors, "wall_secs": round(wall, 3),
        "client_generate_secs": round(gen_secs, 3),
        "values_per_sec_wall": round(values / wall) if wall else None,
        "server_cpu_secs": None if server_cpu is None else round(server_cpu, 3),
        "values_per_server_cpu_sec": round(values / server_cpu) if server_cpu else None,
    }))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
