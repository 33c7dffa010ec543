#!/usr/bin/env python3
"""Broker RSS and publisher rate under the outbound-path attacks of issue 13
(s.2 items 2, 3, 6 and s.3 item 1).

Each scenario starts its own broker (--bin, else $MYRIAD_BIN, else
target/release/myriad) on 127.0.0.1 port 0 with a temporary config, runs
one attack, reads the broker's VmRSS (after) and VmHWM (peak) from
/proc/<pid>/status while the attacking clients are still connected, prints
one JSON line, and stops the broker by PID:

- inflight_window: a 5.0 subscriber announcing Receive Maximum 65,535 that
  neither reads nor acknowledges; 70,000 x 10 KB QoS 1 publishes (1.7 GB
  before `mqtt.max_inflight` and the per-session budget);
- fanout_copies: 4 such subscribers x 200 QoS 1 messages of 512 KiB
  (513 MB before: one encoded copy per connection);
- share_groups: 5,000 `$share` groups on one topic (one subscriber that does
  not read) x one 100 KB publish (492 MB before);
- retained_qos0 / retained_qos1: 10,000 retained messages to a QoS 0 `#`
  subscriber, 100,000 to a QoS 1 one that acknowledges each (1,000 and
  66,535 delivered before); `delivered` must equal `retained`;
- stalled_subscriber: an unrelated QoS 1 publisher's rate (one PUBLISH at a
  time, each waiting for its PUBACK) alone (2 s), beside an anonymous `#`
  QoS 1 subscriber with Receive Maximum 1 that never acknowledges (4 s),
  and alone again once it is gone (2 s), same broker, same run; `ratio`
  (beside / mean of alone) must be >= 0.9.

`ok` is true when the broker is alive, its RSS after the attack stays under
`bound_mb` (memory scenarios), every retained message arrived, and the
publisher kept >= 90 % of its rate.

Usage: .venv/bin/python bench/attacks/outbound_memory.py [--bin PATH] [scenario ...]
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from helpers import Broker, myriad_bin, rss_mb  # noqa: E402
from mqtt_raw import PUBACK, PUBLISH, RawClient, publish_packet  # noqa: E402


def stalled(port: int, filters, receive_maximum: int = 65535, client_id: str = "stall") -> RawClient:
    """A 5.0 client that subscribes, then neither reads nor acknowledges."""
    sub = RawClient(port, 5, timeout=30)
    sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sub.connect(client_id, props={"ReceiveMaximum": receive_maximum})
    for start in range(0, len(filters), 500):
        sub.subscribe(filters[start:start + 500])
    return sub


def flood(port: int, topic: str, count: int, size: int, qos: int, retain: bool = False,
          distinct: bool = False) -> None:
    """`count` PUBLISH packets, pipelined; QoS 1: every PUBACK read at the end
    (a reader drains them as they come, so the socket never blocks)."""
    pub = RawClient(port, 5, timeout=60)
    pub.connect(f"flood-{time.monotonic_ns()}")
    body = b"x" * size
    acked = 0
    batch = []
    for i in range(count):
        name = f"{topic}/{i}" if distinct else topic
        pid = (i % 65535) + 1 if qos else None
        batch.append(publish_packet(name, body, qos, retain, pid, False, 5))
        if len(batch) >= 64 or i == count - 1:
            pub.send(b"".join(batch))
            batch.clear()
        # Keep at most ~60,000 unacknowledged (packet ids wrap at 65,535).
        while qos and i + 1 - acked >= 60_000:
            if pub.recv(timeout=60).type == PUBACK:
                acked += 1
    while qos and acked < count:
        if pub.recv(timeout=60).type == PUBACK:
            acked += 1
    if not qos:
        pub.ping(timeout=60)
    pub.disconnect()


def memory(broker: Broker, attack, bound_mb: float) -> dict:
    pid = broker.proc.pid
    base, _ = rss_mb(pid)
    start = time.monotonic()
    keep = attack(broker.port)
    time.sleep(0.5)
    after, peak = rss_mb(pid)
    result = {
        "rss_base_mb": round(base, 1),
        "rss_after_mb": round(after, 1),
        "rss_peak_mb": round(peak, 1),
        "bound_mb": bound_mb,
        "secs": round(time.monotonic() - start, 1),
        "ok": broker.alive() and after < bound_mb,
    }
    for client in keep:
        client.abort()
    return result


def inflight_window(port: int) -> list:
    sub = stalled(port, [("win/t", 1)])
    flood(port, "win/t", 70_000, 10_000, qos=1)
    return [sub]


def fanout_copies(port: int) -> list:
    subs = [stalled(port, [("fan/t", 1)], client_id=f"fan-{i}") for i in range(4)]
    flood(port, "fan/t", 200, 512 * 1024, qos=1)
    return subs


def share_groups(port: int) -> list:
    sub = stalled(port, [(f"$share/g{i}/grp/t", 0) for i in range(5000)])
    flood(port, "grp/t", 1, 100_000, qos=1)
    return [sub]


def retained(broker: Broker, count: int, qos: int) -> dict:
    port = broker.port
    start = time.monotonic()
    flood(port, "ret", count, 16, qos=qos, retain=True, distinct=True)
    sub = RawClient(port, 5, timeout=30)
    sub.connect("ret-sub")
    sub.subscribe([("ret/#", qos)])
    delivered = 0
    while True:
        try:
            p = sub.recv(timeout=3.0)
        except TimeoutError:
            break
        if p.type == PUBLISH:
            delivered += 1
            if p.qos:
                sub.ack(p)
    _, peak = rss_mb(broker.proc.pid)
    sub.abort()
    return {
        "retained": count,
        "delivered": delivered,
        "rss_peak_mb": round(peak, 1),
        "secs": round(time.monotonic() - start, 1),
        "ok": broker.alive() and delivered == count,
    }


def publish_rate(port: int, secs: float, tag: str) -> float:
    """QoS 1 publishes per second, one at a time, each waiting for its PUBACK."""
    pub = RawClient(port, 5, timeout=10)
    pub.connect(f"rate-{tag}")
    n = 0
    end = time.monotonic() + secs
    start = time.monotonic()
    try:
        while time.monotonic() < end:
            pub.publish(f"rate/{tag}", b"m", qos=1)
            n += 1
    except TimeoutError:
        pass
    elapsed = time.monotonic() - start
    pub.abort()
    return n / elapsed


def stalled_subscriber(broker: Broker) -> dict:
    port = broker.port
    # Alone before and after (the mean), so that drift from other load on
    # the machine does not pass for the attack's effect.
    before = publish_rate(port, 2.0, "alone-before")
    sub = stalled(port, [("#", 1)], receive_maximum=1, client_id="")
    beside = publish_rate(port, 4.0, "beside")
    after, peak = rss_mb(broker.proc.pid)
    sub.abort()
    time.sleep(0.2)
    later = publish_rate(port, 2.0, "alone-after")
    alone = (before + later) / 2
    ratio = beside / alone if alone else 0.0
    return {
        "rate_alone_before": round(before),
        "rate_alone_after": round(later),
        "rate_alone": round(alone),
        "rate_beside_stalled": round(beside),
        "ratio": round(ratio, 3),
        "rss_after_mb": round(after, 1),
        "rss_peak_mb": round(peak, 1),
        "ok": broker.alive() and ratio >= 0.9,
    }


SCENARIOS = {
    "inflight_window": ({}, lambda b: memory(b, inflight_window, 150)),
    "fanout_copies": ({}, lambda b: memory(b, fanout_copies, 150)),
    "share_groups": ({"max_subscriptions_per_client": 5000}, lambda b: memory(b, share_groups, 100)),
    "retained_qos0": ({}, lambda b: retained(b, 10_000, 0)),
    "retained_qos1": ({}, lambda b: retained(b, 100_000, 1)),
    "stalled_subscriber": ({}, stalled_subscriber),
}


def run(name: str) -> dict:
    mqtt, scenario = SCENARIOS[name]
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp), {"mqtt": mqtt}).start()
        try:
            result = scenario(broker)
        except Exception as error:  # a scenario that breaks is a result too
            result = {"error": f"{type(error).__name__}: {error}", "ok": False,
                      "alive": broker.alive()}
        finally:
            broker.stop()
    return {"bench": "outbound_memory", "name": name, "binary": str(myriad_bin()), **result}


def main() -> int:
    args = sys.argv[1:]
    if "--bin" in args:
        i = args.index("--bin")
        os.environ["MYRIAD_BIN"] = str(Path(args[i + 1]).resolve())
        del args[i:i + 2]
    names = args or list(SCENARIOS)
    ok = True
    for name in names:
        result = run(name)
        ok &= bool(result.get("ok"))
        print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
