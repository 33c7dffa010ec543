#!/usr/bin/env python3
"""PING round trip of an idle client alone, then while one device hammers its
shadow (issue 13 s.3, slice "fleet").

Shadow writes used to run synchronous redb commits (fsync) on the event
loop, so every client's packets waited for each one. This starts a broker
(embedded store, fsync: the defaults) on 127.0.0.1 port 0, registers one
device over the HTTP API, measures an idle MQTT 3.1.1 client's PING round
trips alone, then again while the device publishes
`$shadow/{id}/update` at QoS 1 back to back (WINDOW updates unanswered at
most), and prints one JSON line:

  {"bench":"attack","name":"shadow_ping", "idle_p50_ms", "idle_p99_ms",
   "loaded_p50_ms", "loaded_p99_ms", "p99_ratio", "updates_accepted_per_sec",
   "broker_peak_rss_mb", "ok"}

ok: loaded p99 within 2x the idle p99 (RATIO, 2) or under FLOOR_MS (1 ms:
on loopback an idle p99 of a few tenths of a millisecond doubles from
scheduling noise alone). Knobs: SECS (6), WINDOW (64), PING_EVERY_MS (5),
RATE (updates/s the device offers at most; 0, the default: as fast as the
window allows), LIMIT (the broker's shadows.requests_per_device.per_second;
unset: its default, 20/s; 0: no limit, to measure the writer itself).
updates_answered_per_sec counts accepted and rejected (429) answers.
Usage: .venv/bin/python bench/attacks/shadow_ping.py --bin target/release/myriad
Finishes in about SECS + 8 s.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from _common import Pinger, binary_from_args, pct  # noqa: E402
from helpers import Api, Broker, rss_mb  # noqa: E402

SECS = float(os.environ.get("SECS", "6"))
WINDOW = int(os.environ.get("WINDOW", "64"))
PING_EVERY = float(os.environ.get("PING_EVERY_MS", "5")) / 1000
RATIO = float(os.environ.get("RATIO", "2"))
FLOOR_MS = float(os.environ.get("FLOOR_MS", "1"))
RATE = float(os.environ.get("RATE", "0"))
LIMIT = os.environ.get("LIMIT")  # shadows.requests_per_device.per_second; unset: the default
TOKEN = "shadow-ping-bench-token-0123"


class Hammer:
    """The device: shadow updates back to back, WINDOW unanswered at most."""

    def __init__(self, port: int, dev: str, pw: str):
        self.dev = dev
        self.accepted = 0
        self.rejected = 0
        self.counters = None  # shared (accepted, rejected) values when in a child process
        self.sent = 0
        self.cond = threading.Condition()
        self.stop = threading.Event()
        subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev, protocol=mqtt.MQTTv5,
                             reconnect_on_failure=False)
        self.c.max_inflight_messages_set(WINDOW)
        self.c.max_queued_messages_set(0)
        self.c.username_pw_set(dev, pw)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()
        self.c.subscribe(f"$shadow/{dev}/update/+", qos=0)
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client, userdata, message):
        with self.cond:
            if message.topic.endswith("/accepted"):
                self.accepted += 1
            elif message.topic.endswith("/rejected"):
                self.rejected += 1
            if self.counters is not None:
                self.counters[0].value, self.counters[1].value = self.accepted, self.rejected
            self.cond.notify_all()

    def answered(self) -> int:
        return self.accepted + self.rejected

    def run(self) -> None:
        topic = f"$shadow/{self.dev}/update"
        started = time.monotonic()
        while not self.stop.is_set():
            if RATE > 0:
                ahead = self.sent / RATE - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            with self.cond:
                while self.sent - self.answered() >= WINDOW and not self.stop.is_set():
                    self.cond.wait(0.1)
            payload = json.dumps({"state": {"reported": {"n": self.sent, "temp": 20 + self.sent % 7}}})
            self.c.publish(topic, payload, qos=1)
            self.sent += 1

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def hammer_process(port, dev, pw, accepted, rejected, stop) -> None:
    """The device, in a child process: hammers until `stop`, counting answers into the shared values."""
    hammer = Hammer(port, dev, pw)
    hammer.stop = stop
    hammer.counters = (accepted, rejected)
    hammer.run()
    hammer.close()


def main() -> None:
    binary = binary_from_args(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory(prefix="shadow-ping.") as work:
        config = {"api": {"token": TOKEN}}
        if LIMIT is not None:
            config["shadows"] = {"requests_per_device": {"per_second": float(LIMIT)}}
        broker = Broker(Path(work), config).start()
        try:
            api = Api(broker.api_port, TOKEN)
            dev, pw = "hammer-1", "hammer-password-1"
            api.ok("POST", "/api/v1/devices", {"id": dev, "name": "hammer", "password": pw}, expect=201)
            pinger = Pinger(broker.port, PING_EVERY)
            pinger.sample(0.5)  # warm up
            idle = pinger.sample(3.0)
            # The device runs in a process of its own: in this one its paho
            # thread would hold the GIL while the pinger waits, and the
            # pinger would time Python, not the broker.
            ctx = multiprocessing.get_context("fork")
            accepted, rejected = ctx.Value("q", 0), ctx.Value("q", 0)
            stop = ctx.Event()
            child = ctx.Process(target=hammer_process, args=(broker.port, dev, pw, accepted, rejected, stop))
            child.start()
            time.sleep(1.0)
            started, before, answered_before = time.monotonic(), accepted.value, accepted.value + rejected.value
            loaded = pinger.sample(SECS)
            elapsed = time.monotonic() - started
            rate = (accepted.value - before) / elapsed
            answered_rate = (accepted.value + rejected.value - answered_before) / elapsed
            stop.set()
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
            _, peak = rss_mb(broker.proc.pid)
        finally:
            broker.stop()
    result = {
        "bench": "attack",
        "name": "shadow_ping",
        "binary": str(binary),
        "idle_p50_ms": pct(idle, 0.5),
        "idle_p99_ms": pct(idle, 0.99),
        "loaded_p50_ms": pct(loaded, 0.5),
        "loaded_p99_ms": pct(loaded, 0.99),
        "loaded_max_ms": round(max(loaded), 3),
        "pings": len(loaded),
        "updates_accepted_per_sec": round(rate),
        "updates_answered_per_sec": round(answered_rate),
        "device_limit_per_sec": LIMIT,
        "rate_cap": RATE,
        "broker_peak_rss_mb": round(peak, 1),
    }
    result["p99_ratio"] = round(result["loaded_p99_ms"] / max(result["idle_p99_ms"], 1e-9), 2)
    result["ok"] = result["loaded_p99_ms"] <= max(RATIO * result["idle_p99_ms"], FLOOR_MS)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
