"""Deep topics never crash the broker; topic, filter and subscription limits (issue 13, sections 1 and 2).

The deep-topic reproductions run against brokers configured with limits high
enough to let the topics in (the default ``max_topic_levels = 128`` refuses
them): the walks over the subscription and retained trees must not recurse
on depth, whatever the limits. Then the limits themselves, with defaults.
"""

from __future__ import annotations

import time

import pytest

from helpers import V5, VERSION_IDS, VERSIONS, Broker, unique, wait_until
from mqtt_raw import (
    CONNACK,
    PUBLISH,
    RC_TOPIC_FILTER_INVALID,
    RC_TOPIC_NAME_INVALID,
    SUBACK,
    RawClient,
    SUBSCRIBE,
    Will,
    connect_packet,
    encode_props,
    fixed,
    mqtt_str,
    u16,
)

pv = pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)

RC_QUOTA_EXCEEDED = 0x97
V3_FAILURE = 0x80

# Limits that let in the deepest topic a packet can carry (65,535 bytes).
HIGH = {"mqtt": {"max_topic_levels": 1_000_000, "max_topic_length": 65535}}


@pytest.fixture(scope="module")
def deep_broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("deep"), HIGH).start()
    yield b
    crashed = not b.alive()
    code = b.stop()
    if crashed:
        pytest.fail(f"broker exited during the module (exit={code})\n{b.log_tail()}")


def subscribe_packet(filters: list[tuple[str, int]], pid: int, version: int = V5) -> bytes:
    """A SUBSCRIBE with many filters, built in linear time."""
    props = encode_props(None) if version == V5 else b""
    body = b"".join(mqtt_str(f) + bytes([opts]) for f, opts in filters)
    return fixed(SUBSCRIBE, 0x02, u16(pid) + props + body)


def still_serving(port: int, version: int = V5) -> None:
    """A new client can connect, subscribe and get its own message."""
    with RawClient(port, version) as r:
        r.connect(unique("alive"))
        topic = unique("alive/")
        r.subscribe(topic, 0)
        r.publish(topic, b"ping")
        assert r.recv_type(PUBLISH).payload == b"ping"


# ---------------------------------------------------------------- section 1: deep topics


@pv
def test_deep_filter_subscribe_then_unsubscribe(deep_broker, version):
    with RawClient(deep_broker.port, version) as r:
        r.connect(unique("deep"))
        filt = "/" * 40_000
        assert r.subscribe(filt, 0).reasons == [0]
        assert r.unsubscribe([filt]).reasons in ([], [0])
        r.ping()
    deep_broker.assert_alive()


@pv
def test_deep_filter_then_disconnect(deep_broker, version):
    r = RawClient(deep_broker.port, version)
    r.connect(unique("deep"))
    assert r.subscribe("/" * 65535, 0).reasons == [0]
    r.disconnect()
    time.sleep(0.2)
    deep_broker.assert_alive()
    still_serving(deep_broker.port)


def test_deep_shared_filter(deep_broker):
    levels = 25_000
    with RawClient(deep_broker.port, V5) as sub, RawClient(deep_broker.port, V5) as pub:
        sub.connect(unique("share"))
        prefix = unique("s")
        assert sub.subscribe(f"$share/g/{prefix}/" + "+/" * levels + "#", 0).reasons == [0]
        pub.connect(unique("pub"))
        pub.publish(f"{prefix}/" + "a/" * levels + "b", b"deep")
        assert sub.recv_type(PUBLISH).payload == b"deep"
        sub.unsubscribe([f"$share/g/{prefix}/" + "+/" * levels + "#"])
    deep_broker.assert_alive()


def test_deep_filter_on_a_multi_threaded_runtime(broker_factory):
    b = broker_factory({**HIGH, "runtime": {"threads": 0}})
    for levels in (10_000, 30_000):
        with RawClient(b.port, V5) as r:
            r.connect(unique("mt"))
            assert r.subscribe("x/" * levels + "#", 0).reasons == [0]
            r.unsubscribe(["x/" * levels + "#"])
            assert r.subscribe("y/" * levels + "#", 0).reasons == [0]
        # ... and the second one goes with the connection.
    time.sleep(0.2)
    b.assert_alive()
    still_serving(b.port)


def test_deep_retained_cleared_and_expired(deep_broker):
    topic = "/" * 45_000 + unique("r")
    with RawClient(deep_broker.port, V5) as r:
        r.connect(unique("ret"))
        r.publish(topic, b"kept", qos=1, retain=True)
        r.publish(topic, b"", qos=1, retain=True)  # cleared
        r.publish(topic, b"short", qos=1, retain=True, props={"MessageExpiryInterval": 1})
        time.sleep(1.5)
        # Expired when a subscription looks for it.
        assert r.subscribe(topic, 0).reasons == [0]
        r.expect_nothing(0.3)
    deep_broker.assert_alive()
    still_serving(deep_broker.port)


def test_deep_subscription_of_an_expiring_persistent_session(deep_broker):
    r = RawClient(deep_broker.port, V5)
    r.connect(unique("exp"), clean=True, props={"SessionExpiryInterval": 1})
    assert r.subscribe("/" * 40_000, 1).reasons == [1]
    r.disconnect()
    time.sleep(2.0)
    deep_broker.assert_alive()
    still_serving(deep_broker.port)


def test_restart_with_deep_records_in_the_data_dir(tmp_path):
    """A data dir written with high limits comes up with the defaults: the
    records they refuse are logged and skipped, everything else is served."""
    workdir = tmp_path / "node"
    first = Broker(workdir, HIGH).start()
    try:
        with RawClient(first.port, V5) as r:
            r.connect("keeper", clean=True, props={"SessionExpiryInterval": 3600})
            assert r.subscribe([("/" * 40_000, 1), ("ok/#", 1)]).reasons == [1, 1]
            r.publish("/" * 45_000, b"deep", qos=1, retain=True)
            r.publish("ok/retained", b"kept", qos=1, retain=True)
            r.recv_publish()  # its own ok/retained
            r.ping()  # the PUBACK is handled and committed
    finally:
        assert first.stop() == 0

    second = Broker(workdir, {}).start()
    try:
        assert wait_until(lambda: "not restored" in second.log_path.read_text(errors="replace"), 5), (
            second.log_tail()
        )
        with RawClient(second.port, V5) as r:
            ack = r.connect("keeper", clean=False, props={"SessionExpiryInterval": 3600})
            assert ack.session_present
            with RawClient(second.port, V5) as pub:
                pub.connect(unique("pub"))
                pub.publish("ok/live", b"live", qos=1)
            assert r.recv_publish().payload == b"live"
        with RawClient(second.port, V5) as s:
            s.connect(unique("s"))
            s.subscribe("#", 0)
            got = s.recv_type(PUBLISH)
            assert (got.topic, got.payload) == ("ok/retained", b"kept")
            s.expect_nothing(0.3)
        second.assert_alive()
    finally:
        assert second.stop() == 0


# ---------------------------------------------------------------- the limits, with defaults


@pv
def test_deep_filter_with_defaults_is_refused_and_nothing_breaks(port, version):
    """The issue's repro against the default config: the filter is refused
    (0x8F / 0x80) instead of being walked, and the broker stays up."""
    with RawClient(port, version) as r:
        r.connect(unique("deep"))
        filt = "/" * 40_000
        refused = RC_TOPIC_FILTER_INVALID if version == V5 else V3_FAILURE
        assert r.subscribe([(filt, 0), ("$share/g/" + "/" * 25_000, 0)]).reasons == [refused, refused]
        r.unsubscribe([filt])
        r.ping()
        r.disconnect()
    still_serving(port, version)


@pv
def test_deep_retained_with_defaults_is_refused(port, version):
    with RawClient(port, version) as r:
        r.connect(unique("deep"))
        r.publish("/" * 45_000, b"deep", qos=1, retain=True, wait=False)
        r.expect_disconnect(RC_TOPIC_NAME_INVALID if version == V5 else None)
    still_serving(port, version)


@pv
def test_publish_beyond_max_topic_levels(port, version):
    with RawClient(port, version) as r:
        r.connect(unique("p"))
        r.publish("a/" * 128 + "b", b"too deep")
        r.expect_disconnect(RC_TOPIC_NAME_INVALID if version == V5 else None)


@pv
def test_publish_beyond_max_topic_length(port, version):
    with RawClient(port, version) as r:
        r.connect(unique("p"))
        r.publish("x" * 4097, b"too long", qos=1, wait=False)
        r.expect_disconnect(RC_TOPIC_NAME_INVALID if version == V5 else None)


@pv
def test_topics_at_the_limits_pass(port, version):
    with RawClient(port, version) as r:
        r.connect(unique("p"))
        for topic in ("a/" * 127 + "b", "x" * 4096):
            r.subscribe(topic, 0)
            r.publish(topic, b"ok")
            assert r.recv_type(PUBLISH).payload == b"ok"


@pv
def test_filter_beyond_the_limits_is_refused_and_the_connection_stays(port, version):
    with RawClient(port, version) as r:
        r.connect(unique("s"))
        ack = r.subscribe([("a/" * 128 + "#", 0), ("ok/#", 0), ("y" * 4097, 0)])
        refused = RC_TOPIC_FILTER_INVALID if version == V5 else V3_FAILURE
        assert ack.reasons == [refused, 0, refused]
        r.ping()


@pv
def test_will_beyond_the_limits_refuses_the_connect(port, version):
    with RawClient(port, version) as r:
        r.send(connect_packet(unique("w"), version, will=Will("a/" * 200 + "b", b"bye")))
        seen = r.expect_closed()
        if version == V5:
            assert [p.type for p in seen] == [CONNACK] and seen[0].reason == RC_TOPIC_NAME_INVALID
        else:
            assert seen == []


# ---------------------------------------------------------------- section 2: one SUBSCRIBE, many copies


def test_repeated_hash_filter_sends_each_retained_message_once(broker_factory):
    """20,000 x `#` in one 80 KB SUBSCRIBE with 1,000 retained messages: one
    subscription, 20,000 reason codes, each retained message once (it was
    20 million deliveries and an abort)."""
    b = broker_factory({"mqtt": {"max_outbound_qos0": 5000}, "store": {"backend": "memory"}})
    with RawClient(b.port, V5) as pub:
        pub.connect(unique("pub"))
        for i in range(1000):
            pub.publish(f"r/{i}", b"x" * 100, retain=True)
        pub.ping()  # the broker has handled every publish before it answers
    with RawClient(b.port, V5, timeout=20) as s:
        s.connect(unique("s"))
        s.send(subscribe_packet([("#", 0)] * 20_000, pid=1))
        ack = s.recv_type(SUBACK, timeout=20)
        assert ack.reasons == [0] * 20_000
        topics = set()
        while True:
            try:
                p = s.recv(timeout=1.0)
            except TimeoutError:
                break
            assert p.type == PUBLISH and p.retain
            assert p.topic not in topics, f"{p.topic} sent twice"
            topics.add(p.topic)
        assert len(topics) == 1000
    b.assert_alive()


@pv
def test_subscriptions_beyond_the_quota_are_refused(broker_factory, version):
    """500,000 subscriptions attempted from one client: the first 1,000 (the
    default quota) are granted, every other one refused, the client stays."""
    b = broker_factory({})
    refused = RC_QUOTA_EXCEEDED if version == V5 else V3_FAILURE
    with RawClient(b.port, version, timeout=30) as r:
        r.connect(unique("q"))
        per_packet = 50_000
        granted = 0
        for start in range(0, 500_000, per_packet):
            pid = r.next_pid()
            r.send(subscribe_packet([(f"q/{i}", 0) for i in range(start, start + per_packet)], pid, version))
            ack = r.recv_type(SUBACK, timeout=30)
            assert ack.pid == pid
            granted += sum(1 for code in ack.reasons if code == 0)
            assert all(code in (0, refused) for code in ack.reasons)
            assert len(ack.reasons) == per_packet
        assert granted == 1000
        # Re-subscribing a held filter at the quota is still fine.
        assert r.subscribe("q/0", 1).reasons == [1]
        r.ping()
    b.assert_alive()


@pytest.mark.parametrize(
    "key,value",
    [
        ("max_topic_levels", 0),
        ("max_topic_length", 70000),
        ("max_subscriptions_per_client", 0),
        ("max_outbound_aliases", 70000),
    ],
)
def test_bad_limits_stop_startup_naming_the_key(tmp_path, key, value):
    b = Broker(tmp_path / "bad", {"mqtt": {key: value}})
    with pytest.raises(RuntimeError):
        b.start()
    log = b.log_path.read_text(errors="replace")
    assert key in log.split("Stack backtrace")[0], log[:500]
