#!/usr/bin/env python3
"""MQTT -> pipeline -> PostgreSQL: sustained messages/s, end-to-end latency at half that rate,
and the server's memory. Prints one JSON object.

Starts its own PostgreSQL (tests/pg.py: Debian's postgresql, a fresh cluster on a free port,
fsync off) and `myriad serve` with one pipeline

    SELECT topic(3) AS device, timestamp() AS ts FROM 'bench/fanin/+'
    sink = { type = "postgres", table = "readings" [, key = ["id"]] }

then `myriad sim fanin` with PUBLISHERS simulated devices (QoS 1, no subscriber) publishing as
fast as their window allows for DURATION s. Rows are counted in PostgreSQL once a second:
the sustained rate is the rows committed between the end of the warm-up (WARMUP s) and the
end of publishing, divided by that time. The second run publishes at half that rate; each
row's latency is `committed - ts`: from the rule evaluating the message (the broker has
received and routed it) to the INSERT/COPY writing the row (`clock_timestamp()` default;
the COMMIT follows within the same batch). p50/p99 over the run after the warm-up.

    python3 bench/pipeline_postgres.py [--bin target/release/myriad] [--publishers 10000]
        [--duration 20] [--key] [--batch 5000]

`--key` adds `id uuid PRIMARY KEY` filled by `newuuid()` and `key = ["id"]`: the staged path
(COPY into the temp table, INSERT ... ON CONFLICT DO NOTHING) at the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pg import Postgres  # noqa: E402

LISTEN_RE = re.compile(r"^MQTT listening on 127\.0\.0\.1:(\d+)\s*$")
API_RE = re.compile(r"^HTTP API listening on 127\.0\.0\.1:(\d+)\s*$")
API_PORT: list[int] = []


def metric_sum(name: str) -> float:
    """The sum of a metric's series on the server's /metrics."""
    import urllib.request

    if not API_PORT:
        return -1
    with urllib.request.urlopen(f"http://127.0.0.1:{API_PORT[0]}/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith(name + "{") or line.startswith(name + " "))


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of `root` and its live children (PostgreSQL's postmaster and backends)."""
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(d) == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def start_serve(binary: Path, workdir: Path, config: str) -> tuple[subprocess.Popen, int]:
    cfg = workdir / "myriad.toml"
    cfg.write_text(config + f'\n[store]\ndata_dir = "{workdir / "data"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    env["RUST_LOG"] = "warn"
    log = open(workdir / "serve.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, cwd=workdir, env=env,
    )
    port = None
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while port is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = LISTEN_RE.match(line.decode(errors="replace"))
        if m:
            port = int(m.group(1))
        a = API_RE.match(line.decode(errors="replace"))
        if a:
            API_PORT[:] = [int(a.group(1))]
    if port is None:
        raise RuntimeError(f"serve did not start: {(workdir / 'serve.log').read_text()[-2000:]}")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    time.sleep(0.5)
    return proc, port


def run_sim(binary: Path, port: int, pid: int, publishers: int, duration: int, window: int,
            rate: int, conn, every: float = 1.0) -> tuple[dict, list[tuple[float, int]]]:
    """Runs `sim fanin`; returns its report and (seconds since start, rows) samples."""
    cmd = [str(binary), "sim", "--broker", f"127.0.0.1:{port}", "--broker-pid", str(pid), "--prefix", "bench",
           "-q", "--mqtt", "5", "fanin", "--publishers", str(publishers), "--subscribers", "0", "--qos", "1",
           "--duration", str(duration), "--window", str(window), "--rate", str(rate), "--drain", "30",
           "--payload", "32"]
    samples: list[tuple[float, int]] = []
    sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    start = time.monotonic()
    while sim.poll() is None:
        samples.append((time.monotonic() - start, conn.execute("SELECT count(*) FROM readings").fetchone()[0]))
        time.sleep(every)
    out, err = sim.communicate()
    report: dict = {}
    for line in out.decode(errors="replace").splitlines()[::-1]:
        try:
            report = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if not report:
        report = {"stdout": out.decode(errors="replace")[-2000:], "stderr": err.decode(errors="replace")[-2000:]}
    return report, samples


def wait_drained(conn, timeout: float = 120) -> int:
    """Waits until the row count stops growing for 2 s; returns it."""
    last, still, deadline = -1, 0.0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        if n == last:
            still += 0.5
            if still >= 2:
                return n
        else:
            still = 0
        last = n
        time.sleep(0.5)
    return last


def connect_phase_end(samples: list[tuple[float, int]]) -> float:
    """The first sample with rows (publishing began after the connections)."""
    for t, n in samples:
        if n > 0:
            return t
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    default_bin = ROOT / "target" / "release" / "myriad"
    if not default_bin.exists():
        default_bin = ROOT / "target" / "ci" / "myriad"
    ap.add_argument("--bin", type=Path, default=default_bin)
    ap.add_argument("--publishers", type=int, default=10_000)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--batch", type=int, default=5000, help="batch.max_records")
    ap.add_argument("--in-flight", type=int, default=65535)
    ap.add_argument("--key", action="store_true")
    ap.add_argument("--queue", type=int, default=100_000, help="mqtt.internal_max_queued_messages (the pipeline's buffer)")
    ap.add_argument("--hold-ms", type=int, default=5000, help="mqtt.publisher_hold_ms (0: off)")
    ap.add_argument("--rate", type=int, default=0, help="msgs/s of all publishers in the first run (0: max)")
    ap.add_argument("--keep", action="store_true", help="keep the server's work dir (logs)")
    ap.add_argument("--latency-rate", type=int, default=0, help="msgs/s for the latency run (default: half)")
    args = ap.parse_args()

    pg = Postgres({"synchronous_commit": "off"}).start()
    work = Path(tempfile.mkdtemp(prefix="myriad-bench-pg-"))
    serve = None
    try:
        url = pg.create_db("bench")
        conn = pg.connect("bench")
        id_col = "id uuid PRIMARY KEY, " if args.key else ""
        conn.execute(f"CREATE TABLE readings ({id_col}device text, ts int8, committed timestamptz DEFAULT clock_timestamp())")
        sql = "SELECT topic(3) AS device, timestamp() AS ts" + (", newuuid() AS id" if args.key else "") + \
              " FROM 'bench/fanin/+'"
        key = ', key = ["id"]' if args.key else ""
        config = (
            # --hold-ms: publisher flow control (a publisher's PUBACK waits while the
            # pipeline's session queue is full: nothing dropped, the publishers' rate is the
            # pipeline's). Without it, what overflows the session queue is dropped ("lost").
            f"[mqtt]\npublisher_hold_ms = {args.hold_ms}\ninternal_max_queued_messages = {args.queue}\ninternal_max_queued_bytes = 268435456\n"
            "[[pipelines]]\nname = \"bench\"\n"
            f"sql = {json.dumps(sql)}\n"
            f"batch = {{ max_records = {args.batch}, max_bytes = 16777216, max_age_ms = 50 }}\n"
            f"in_flight = {args.in_flight}\n"
            f"sink = {{ type = \"postgres\", url = {json.dumps(url)}, table = \"readings\"{key} }}\n"
            f"dead_letter = {{ path = {json.dumps(str(work / 'dead.jsonl'))} }}\n"
        )
        serve, port = start_serve(args.bin, work, config)
        cpu0, pg0, load0 = cpu_seconds(serve.pid), tree_cpu_seconds(pg.proc.pid), os.getloadavg()[0]
        first_rate = max(1, round(args.rate / args.publishers)) if args.rate else 0
        report, samples = run_sim(args.bin, port, serve.pid, args.publishers, args.duration, args.window,
                                  first_rate, conn)
        cpu1, pg1 = cpu_seconds(serve.pid), tree_cpu_seconds(pg.proc.pid)
        total = wait_drained(conn)
        mem = rss_kib(serve.pid)
        t0 = connect_phase_end(samples) + args.warmup
        t1 = t0 + args.duration - args.warmup
        inside = [(t, n) for t, n in samples if t0 <= t <= t1]
        sustained = 0.0
        if len(inside) >= 2:
            (ta, na), (tb, nb) = inside[0], inside[-1]
            sustained = (nb - na) / (tb - ta)
        dead = (work / "dead.jsonl").read_text().count("\n") if (work / "dead.jsonl").exists() else 0
        throughput = {
            "publishers": args.publishers,
            "rows": total,
            "lost": (report.get("acked") or 0) - total,
            "broker_dropped": metric_sum("myriad_messages_dropped_total"),
            "pipeline_retries": metric_sum("myriad_pipeline_retries_total"),
            "sim_acked": report.get("acked", report.get("published")),
            "sustained_rows_per_s": round(sustained),
            "dead_letters": dead,
            "server_cpu_s": round(cpu1 - cpu0, 2),
            "postgres_cpu_s": round(pg1 - pg0, 2),
            "loadavg_1m_before": round(load0, 2),
            "server_rss_mib": round(mem.get("VmRSS", 0) / 1024, 1),
            "server_peak_rss_mib": round(mem.get("VmHWM", 0) / 1024, 1),
            "samples": [(round(t, 1), n) for t, n in samples],
            "sim": {k: v for k, v in report.items() if not isinstance(v, (dict, list))},
        }
        # Latency at half the sustained rate.
        conn.execute("TRUNCATE readings")
        rate = args.latency_rate or max(1, int(sustained / 2))
        per_pub = max(1, round(rate / args.publishers))
        report2, samples2 = run_sim(args.bin, port, serve.pid, args.publishers, args.duration, args.window,
                                    per_pub, conn)
        wait_drained(conn)
        start_ts = conn.execute("SELECT min(ts) FROM readings").fetchone()[0] or 0
        row = conn.execute(
            "SELECT count(*), percentile_disc(0.5) WITHIN GROUP (ORDER BY lat),"
            " percentile_disc(0.99) WITHIN GROUP (ORDER BY lat), max(lat) FROM"
            " (SELECT extract(epoch FROM committed) * 1000 - ts AS lat FROM readings WHERE ts >= %s) l",
            (start_ts + int(args.warmup * 1000),),
        ).fetchone()
        rows2 = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        dur2 = (conn.execute("SELECT max(ts) - min(ts) FROM readings").fetchone()[0] or 1) / 1000
        mem2 = rss_kib(serve.pid)
        latency = {
            "target_rate": per_pub * args.publishers,
            "sim_sent_per_s": report2.get("sent_per_sec"),
            "rows": rows2,
            "lost": (report2.get("acked") or 0) - rows2,
            "rows_per_s_over_ts_span": round(rows2 / dur2),
            "rows_measured": row[0],
            "p50_ms": round(float(row[1]), 2) if row[1] is not None else None,
            "p99_ms": round(float(row[2]), 2) if row[2] is not None else None,
            "max_ms": round(float(row[3]), 2) if row[3] is not None else None,
            "server_rss_mib": round(mem2.get("VmRSS", 0) / 1024, 1),
            "broker_dropped_total": metric_sum("myriad_messages_dropped_total"),
        }
        out = {
            "bench": "pipeline_postgres",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "binary": str(args.bin.relative_to(ROOT) if args.bin.is_relative_to(ROOT) else args.bin),
            "mode": "staged + key (ON CONFLICT)" if args.key else "COPY (no key)",
            "publisher_hold_ms": args.hold_ms,
            "internal_max_queued_messages": args.queue,
            "rate_first_run": first_rate * args.publishers,
            "batch_max_records": args.batch,
            "in_flight": args.in_flight,
            "cores": os.cpu_count(),
            "throughput": throughput,
            "latency_at_half_rate": latency,
        }
        print(json.dumps(out))
        return 0
    finally:
        if serve is not None and serve.poll() is None:
            serve.terminate()
            try:
                serve.wait(15)
            except subprocess.TimeoutExpired:
                serve.kill()
        pg.close()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    sys.exit(main())
