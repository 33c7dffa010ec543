#!/usr/bin/env python3
"""Broker RSS under the subscription-side memory attacks of issue 13 (section 2).

Each scenario starts its own broker (target/release/myriad, or $MYRIAD_BIN)
on 127.0.0.1 port 0 with a temporary config, runs one attack, reads the
broker's VmRSS (now) and VmHWM (peak) from /proc/<pid>/status while the
attacking clients are still connected, prints one JSON line, and stops the
broker by PID:

- alias_pinning: 8 connections each set 64 topic aliases with ~1 MB PUBLISH
  packets (the alias map used to keep every packet: 505 MB);
- filter_pinning: 300 SUBSCRIBE packets, each one filter padded with ~1 MB
  of user properties (the session's filters used to keep them: 289 MB);
- repeated_hash: one SUBSCRIBE repeating `#` 20,000 times with 1,000
  retained messages (20 million deliveries: 2.8 GB and an abort);
- subscription_flood: 500,000 subscriptions attempted by one client (203 MB
  before the quota; now 1,000 are granted).

`ok` is true when the broker is alive and its RSS after the attack stays
under `bound_mb`. The peak also counts transient read buffers (1 MB packets
on 8 connections at once) and allocator caches.

Usage: .venv/bin/python bench/attacks/topics_memory.py [scenario ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from helpers import Broker, myriad_bin, rss_mb  # noqa: E402
from mqtt_raw import (  # noqa: E402
    SUBACK,
    SUBSCRIBE,
    RawClient,
    encode_props,
    fixed,
    mqtt_str,
    publish_packet,
    u16,
)

MB = 1024 * 1024


def subscribe_packet(filters: list[tuple[str, int]], pid: int, props=None) -> bytes:
    body = b"".join(mqtt_str(f) + bytes([opts]) for f, opts in filters)
    return fixed(SUBSCRIBE, 0x02, u16(pid) + encode_props(props) + body)


def padding(total: int) -> list[tuple[str, tuple[str, str]]]:
    """User properties of about `total` bytes."""
    chunk = "u" * 60_000
    return [("UserProperty", (f"k{i}", chunk)) for i in range(max(1, total // len(chunk)))]


def alias_pinning(port: int) -> dict:
    clients = []
    payload = b"p" * 1_000_000
    for c in range(8):
        r = RawClient(port, 5, timeout=30)
        r.connect(f"alias-{c}")
        for alias in range(1, 65):
            r.send(publish_packet(f"pin/{c}/{alias}", payload, props={"TopicAlias": alias}))
        clients.append(r)
    for r in clients:
        r.ping(timeout=30)
    return {"clients": clients, "sent_mb": round(8 * 64 * len(payload) / MB)}


def filter_pinning(port: int) -> dict:
    r = RawClient(port, 5, timeout=30)
    r.connect("filters")
    props = padding(1_000_000)
    for i in range(300):
        pid = i + 1
        r.send(subscribe_packet([(f"pad/{i}", 0)], pid, props))
        ack = r.recv_type(SUBACK, timeout=30)
        assert ack.pid == pid and ack.reasons == [0], ack
    return {"clients": [r], "sent_mb": round(300 * 1_000_000 / MB)}


def repeated_hash(port: int) -> dict:
    pub = RawClient(port, 5, timeout=30)
    pub.connect("retainer")
    for i in range(1000):
        pub.publish(f"r/{i}", b"x" * 1000, retain=True)
    pub.ping()
    s = RawClient(port, 5, timeout=60)
    s.connect("hash")
    s.send(subscribe_packet([("#", 0)] * 20_000, 1))
    ack = s.recv_type(SUBACK, timeout=60)
    assert len(ack.reasons) == 20_000
    received = 0
    while True:
        try:
            s.recv(timeout=1.0)
            received += 1
        except TimeoutError:
            break
    return {"clients": [pub, s], "retained_received": received}


def subscription_flood(port: int) -> dict:
    r = RawClient(port, 5, timeout=60)
    r.connect("flood")
    granted = 0
    per_packet = 50_000
    for start in range(0, 500_000, per_packet):
        pid = r.next_pid()
        r.send(subscribe_packet([(f"flood/{i}", 0) for i in range(start, start + per_packet)], pid))
        ack = r.recv_type(SUBACK, timeout=60)
        granted += sum(1 for code in ack.reasons if code < 0x80)
    return {"clients": [r], "granted": granted}


# name -> (attack, broker config, bound on RSS after the attack in MiB)
SCENARIOS = {
    "alias_pinning": (alias_pinning, {"mqtt": {"max_packet_size": 2 * MB}}, 64),
    "filter_pinning": (filter_pinning, {"mqtt": {"max_packet_size": 2 * MB}}, 64),
    "repeated_hash": (repeated_hash, {"mqtt": {"max_outbound_qos0": 5000}}, 64),
    "subscription_flood": (subscription_flood, {"mqtt": {"max_packet_size": 2 * MB}}, 64),
}


def run(name: str) -> dict:
    attack, config, bound = SCENARIOS[name]
    config = {**config, "store": {"backend": "memory"}}
    with tempfile.TemporaryDirectory(prefix=f"topics-{name}-") as tmp:
        broker = Broker(Path(tmp), config).start()
        try:
            idle_rss, _ = rss_mb(broker.proc.pid)
            started = time.monotonic()
            outcome = attack(broker.port)
            seconds = time.monotonic() - started
            time.sleep(0.5)
            rss, peak = rss_mb(broker.proc.pid)
            alive = broker.alive()
            for client in outcome.pop("clients"):
                client.close()
        finally:
            broker.stop()
    return {
        "bench": "attack",
        "name": f"topics_{name}",
        "broker_idle_rss_mb": round(idle_rss, 1),
        "broker_rss_mb": round(rss, 1),
        "broker_peak_rss_mb": round(peak, 1),
        "bound_mb": bound,
        "seconds": round(seconds, 2),
        **outcome,
        "binary": str(myriad_bin()),
        "ok": alive and rss <= bound,
    }


def main() -> int:
    names = sys.argv[1:] or list(SCENARIOS)
    ok = True
    for name in names:
        result = run(name)
        ok &= result["ok"]
        print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
