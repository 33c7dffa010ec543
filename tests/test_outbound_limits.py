"""The broker's outbound path under attack (issue 13, s.2 and s.3): what a
subscriber can make the server hold for it stays within its session's byte
budget, payloads are stored once, retained delivery on SUBSCRIBE paces
itself instead of dropping, and a stalled subscriber holds no publisher.

Every test here fails against the broker before these limits (see the
commit message for what each one saw there)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from helpers import Broker, unique, rss_mb
from mqtt_raw import PUBACK, PUBLISH, RawClient, publish_packet

pytestmark = [pytest.mark.myriad_only, pytest.mark.timeout(60)]

MB = 1024 * 1024


@pytest.fixture
def fresh(tmp_path):
    started: list[Broker] = []

    def make(mqtt: dict | None = None) -> Broker:
        b = Broker(tmp_path / f"b{len(started)}", {"mqtt": mqtt or {}}).start()
        started.append(b)
        return b

    yield make
    for b in started:
        assert b.alive(), b.log_tail()
        b.stop()


def stalled_subscriber(port: int, filters, receive_maximum: int = 65535, qos: int = 1,
                       props: dict | None = None) -> RawClient:
    """A 5.0 client that subscribes and then neither reads nor acknowledges."""
    sub = RawClient(port, 5, timeout=10)
    sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sub.connect(unique("stall"), props={"ReceiveMaximum": receive_maximum})
    if isinstance(filters, str):
        filters = [(filters, qos)]
    sub.subscribe(filters, props=props)
    return sub


def flood(port: int, topic: str, count: int, size: int, qos: int) -> None:
    """Publishes `count` messages of `size` bytes, pipelined (QoS 1: waits
    for every PUBACK at the end)."""
    pub = RawClient(port, 5, timeout=30)
    pub.connect(unique("flood"))
    body = b"x" * size
    for i in range(count):
        pid = (i % 65535) + 1 if qos else None
        pub.send(publish_packet(topic, body, qos, False, pid, False, 5))
    if qos:
        acked = 0
        while acked < count:
            if pub.recv(timeout=30).type == PUBACK:
                acked += 1
    else:
        pub.ping(timeout=30)
    pub.disconnect()


def count_publishes(sub: RawClient, ack: bool, idle: float = 1.0) -> int:
    """Reads PUBLISH packets until none comes for `idle` seconds."""
    n = 0
    while True:
        try:
            p = sub.recv(timeout=idle)
        except TimeoutError:
            return n
        if p.type == PUBLISH:
            n += 1
            if ack:
                sub.ack(p)


def test_outbound_window_is_capped_by_max_inflight(fresh):
    """A subscriber announcing Receive Maximum 65,535 and never
    acknowledging gets at most mqtt.max_inflight (here 32, as in EMQX)
    messages in flight; the rest wait in its queue."""
    broker = fresh({"max_inflight": 32})
    topic = unique("inflight")
    sub = RawClient(broker.port, 5)
    sub.connect(unique("sub"), props={"ReceiveMaximum": 65535})
    sub.subscribe(topic, qos=1)
    flood(broker.port, topic, 200, 100, qos=1)
    got = count_publishes(sub, ack=False)
    assert got == 32, f"{got} messages in flight at once (max_inflight is 32)"
    sub.close()


def test_by_default_the_clients_receive_maximum_decides(fresh):
    """With the default mqtt.max_inflight (65,535) the window is the
    client's Receive Maximum: 100 announced, 100 in flight, no more."""
    broker = fresh()
    topic = unique("inflight-rm")
    sub = RawClient(broker.port, 5)
    sub.connect(unique("sub"), props={"ReceiveMaximum": 100})
    sub.subscribe(topic, qos=1)
    flood(broker.port, topic, 300, 10, qos=1)
    assert count_publishes(sub, ack=False) == 100
    sub.close()


def test_max_inflight_is_configurable(fresh):
    broker = fresh({"max_inflight": 5})
    topic = unique("inflight5")
    sub = RawClient(broker.port, 5)
    sub.connect(unique("sub"), props={"ReceiveMaximum": 100})
    sub.subscribe(topic, qos=1)
    flood(broker.port, topic, 20, 10, qos=1)
    assert count_publishes(sub, ack=False) == 5


def test_unacknowledged_window_stays_in_the_byte_budget(fresh):
    """Issue repro, scaled: QoS 1 messages of 10 KB to a 5.0 subscriber
    with Receive Maximum 65,535 that neither reads nor acknowledges. They
    used to be held all (in flight + an encoded copy each): 6,000 x 10 KB
    made the broker grow by well over 100 MB."""
    broker = fresh()
    topic = unique("budget")
    sub = stalled_subscriber(broker.port, topic)
    before, _ = rss_mb(broker.proc.pid)
    flood(broker.port, topic, 6000, 10_000, qos=1)
    after, _ = rss_mb(broker.proc.pid)
    assert after - before < 45, f"broker grew {after - before:.0f} MiB for one stalled subscriber"
    sub.close()


def test_unwritten_qos0_counts_against_the_byte_budget(fresh):
    """QoS 0 messages handed to a connection that does not read used to be
    held up to 1,000 encoded packets whatever their size (500 x 200 KB:
    100 MB); they now count against max_queued_bytes (16 MiB)."""
    broker = fresh()
    topic = unique("qos0")
    sub = stalled_subscriber(broker.port, topic, qos=0)
    before, _ = rss_mb(broker.proc.pid)
    flood(broker.port, topic, 500, 200_000, qos=0)
    time.sleep(0.5)
    after, _ = rss_mb(broker.proc.pid)
    assert after - before < 50, f"broker grew {after - before:.0f} MiB for one slow QoS 0 subscriber"
    sub.close()


def test_payload_is_stored_once_for_every_subscriber(fresh):
    """Issue repro, scaled: 4 stalled subscribers x 100 QoS 1 messages of
    512 KiB. Each connection's outbox used to hold its own encoded copy
    (the issue measured 513 MB for 200 messages)."""
    broker = fresh()
    topic = unique("shared")
    subs = [stalled_subscriber(broker.port, topic) for _ in range(4)]
    before, _ = rss_mb(broker.proc.pid)
    flood(broker.port, topic, 100, 512 * 1024, qos=1)
    after, _ = rss_mb(broker.proc.pid)
    assert after - before < 100, f"broker grew {after - before:.0f} MiB"
    for s in subs:
        s.close()


def test_share_groups_do_not_copy_the_payload(fresh):
    """Issue repro: 5,000 $share groups on one topic and one 100 KB publish
    (492 MB before: one encoded copy per group)."""
    broker = fresh({"max_subscriptions_per_client": 5000})
    topic = unique("groups")
    sub = RawClient(broker.port, 5, timeout=30)
    sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sub.connect(unique("groups-sub"))
    for start in range(0, 5000, 500):
        sub.subscribe([(f"$share/g{i}/{topic}", 0) for i in range(start, start + 500)])
    before, _ = rss_mb(broker.proc.pid)
    flood(broker.port, topic, 1, 100_000, qos=1)
    time.sleep(0.5)
    after, peak = rss_mb(broker.proc.pid)
    assert after - before < 100, f"broker grew {after - before:.0f} MiB"
    assert peak < 250, f"broker peaked at {peak:.0f} MiB"
    sub.close()


def publish_retained(port: int, prefix: str, count: int) -> None:
    pub = RawClient(port, 5, timeout=30)
    pub.connect(unique("ret-pub"))
    for i in range(count):
        pub.send(publish_packet(f"{prefix}/{i}", b"r%d" % i, 0, True, None, False, 5))
    pub.ping(timeout=30)
    pub.disconnect()


def test_qos0_subscriber_gets_every_retained_message(fresh):
    """Issue repro: a QoS 0 `#` subscriber got 1,000 of 10,000 retained
    messages (the outbox limit dropped the rest)."""
    broker = fresh()
    prefix = unique("ret0")
    publish_retained(broker.port, prefix, 10_000)
    sub = RawClient(broker.port, 5, timeout=10)
    sub.connect(unique("ret0-sub"))
    sub.subscribe(f"{prefix}/#", qos=0)
    got = count_publishes(sub, ack=False, idle=2.0)
    assert got == 10_000


def test_qos1_subscriber_gets_every_retained_message(fresh):
    """Issue repro, scaled: a QoS 1 subscriber got its window plus its queue
    (65,535 + 1,000 of 100,000); here a window of 100 and 5,000 retained."""
    broker = fresh()
    prefix = unique("ret1")
    pub = RawClient(broker.port, 5, timeout=30)
    pub.connect(unique("ret1-pub"))
    for i in range(5_000):
        pub.send(publish_packet(f"{prefix}/{i}", b"q%d" % i, 1, True, i % 65535 + 1, False, 5))
    acked = 0
    while acked < 5_000:
        if pub.recv(timeout=30).type == PUBACK:
            acked += 1
    sub = RawClient(broker.port, 5, timeout=10)
    sub.connect(unique("ret1-sub"), props={"ReceiveMaximum": 100})
    sub.subscribe(f"{prefix}/#", qos=1)
    got = count_publishes(sub, ack=True, idle=2.0)
    assert got == 5_000


def test_stalled_subscriber_holds_no_publisher(fresh):
    """Issue repro: an anonymous client subscribes `#` at QoS 1 with
    Receive Maximum 1 and never acknowledges; an unrelated QoS 1 publisher
    used to drop to one message per 5 s once that client's queue was full
    (publisher_hold_ms). Now it is a slow consumer whose queue drops."""
    broker = fresh()
    sub = stalled_subscriber(broker.port, "#", receive_maximum=1)
    pub = RawClient(broker.port, 5, timeout=10)
    pub.connect(unique("pub"))
    topic = unique("unrelated")
    start = time.monotonic()
    for _ in range(3_000):
        pub.publish(topic, b"m", qos=1)
    elapsed = time.monotonic() - start
    assert elapsed < 15, f"3,000 QoS 1 publishes took {elapsed:.1f} s beside a stalled subscriber"
    sub.close()
    pub.disconnect()
