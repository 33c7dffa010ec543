#!/usr/bin/env python3
"""Active-series memory of a running `myriad serve`, measured from outside (issue 17 target: 1M
active series, 100k devices x 10 metrics, with open chunks in <= 1 GiB RSS).

Registers DEVICES devices (one JSON-lines import, no passwords), reads the server's VmRSS, writes
POINTS points of 10 metrics for every device over the line-protocol API (10,000 lines of 10 fields
per request), reads VmRSS again and prints one JSON line: RSS before/after and bytes per series.

    python3 bench/telemetry_series_memory.py --api 127.0.0.1:21894 --token T --pid PID
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time

METRICS = 10


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--points", type=int, default=3)
    args = ap.parse_args()
    host, port = args.api.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    auth = {"Authorization": f"Bearer {args.token}"}

    t0 = time.monotonic()
    body = "".join(json.dumps({"id": f"m{i}"}) + "\n" for i in range(args.devices)).encode()
    conn.request("POST", "/api/v1/devices/import?format=jsonl", body=body,
                 headers={**auth, "Content-Type": "application/x-ndjson"})
    resp = conn.getresponse()
    report = json.loads(resp.read())
    if resp.status != 200 or report.get("imported") != args.devices:
        print(f"import failed: {resp.status} {str(report)[:300]}", file=sys.stderr)
        return 1
    import_secs = time.monotonic() - t0
    time.sleep(1)
    before = rss(args.pid)

    start = int(time.time()) - 3600
    lines: list[str] = []
    written = errors = 0
    t1 = time.monotonic()

    def flush() -> None:
        nonlocal written, errors
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        lines.clear()
        conn.request("POST", "/api/v1/telemetry/write?precision=s", body=data,
                     headers={**auth, "Content-Type": "text/plain"})
        r = conn.getresponse()
        out = r.read()
        if r.status != 200:
            errors += 1
            if errors <= 3:
                print(f"HTTP {r.status}: {out[:300]!r}", file=sys.stderr)
        else:
            written += json.loads(out)["written"]

    for p in range(args.points):
        ts = start + p * 10
        for i in range(args.devices):
            fields = ",".join(f"v{m}={(i * 7 + m * 3 + p) % 1000 / 10}" for m in range(METRICS))
            lines.append(f"s,device=m{i} {fields} {ts}")
            if len(lines) >= 10_000:
                flush()
    flush()
    write_secs = time.monotonic() - t1
    time.sleep(2)
    after = rss(args.pid)
    series = args.devices * METRICS
    print(json.dumps({
        "bench": "telemetry_series_memory", "devices": args.devices, "series": series,
        "points_per_series": args.points, "samples_written": written, "errors": errors,
        "import_secs": round(import_secs, 1), "write_secs": round(write_secs, 1),
        "rss_before": before, "rss_after": after,
        "rss_after_mib": round(after / 2**20, 1),
        "bytes_per_series": round((after - before) / series, 1),
    }))
    return 1 if errors or written != series * args.points else 0


if __name__ == "__main__":
    sys.exit(main())
