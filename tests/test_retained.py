"""Retained messages: set, replace, clear, delivery on subscribe (incl. wildcards), expiry."""

from __future__ import annotations

import time

import pytest

from helpers import V5, VERSION_IDS, VERSIONS

pv = pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)


@pv
def test_retained_delivered_on_subscribe(port, client, uid, version):
    pub = client(port, version)
    pub.publish(f"{uid}/r", b"kept", qos=1, retain=True)
    sub = client(port, version)
    sub.subscribe(f"{uid}/r", 1)
    m = sub.get()
    assert (m.topic, m.payload, m.retain, m.qos) == (f"{uid}/r", b"kept", True, 1)
    sub.expect_none(0.2)


@pv
def test_retained_replaced_by_newer(port, client, uid, version):
    pub = client(port, version)
    pub.publish(f"{uid}/r", b"old", qos=1, retain=True)
    pub.publish(f"{uid}/r", b"new", qos=1, retain=True)
    sub = client(port, version)
    sub.subscribe(f"{uid}/r", 1)
    assert sub.get().payload == b"new"
    sub.expect_none(0.3)


@pv
def test_empty_retained_payload_clears(port, client, uid, version):
    pub = client(port, version)
    pub.publish(f"{uid}/r", b"soon gone", qos=1, retain=True)
    live = client(port, version)
    live.subscribe(f"{uid}/r", 1)
    assert live.get().payload == b"soon gone"
    pub.publish(f"{uid}/r", b"", qos=1, retain=True)
    # the clearing message itself is delivered to current subscribers like any other
    m = live.get()
    assert m.payload == b""
    late = client(port, version)
    late.subscribe(f"{uid}/r", 1)
    late.expect_none(0.5)


@pv
def test_clear_of_unknown_topic_is_harmless(port, client, uid, version):
    pub = client(port, version)
    pub.publish(f"{uid}/never", b"", qos=1, retain=True)
    sub = client(port, version)
    sub.subscribe(f"{uid}/never", 1)
    sub.expect_none(0.3)


@pv
def test_retained_on_wildcard_subscribe(port, client, uid, version):
    pub = client(port, version)
    topics = [f"{uid}/house/kitchen/temp", f"{uid}/house/hall/temp", f"{uid}/house/hall/hum", f"{uid}/garden"]
    for i, t in enumerate(topics):
        pub.publish(t, str(i).encode(), qos=1, retain=True)

    plus = client(port, version)
    plus.subscribe(f"{uid}/house/+/temp", 1)
    got = {m.topic for m in plus.get_many(2)}
    assert got == {topics[0], topics[1]}
    plus.expect_none(0.3)

    hash_ = client(port, version)
    hash_.subscribe(f"{uid}/#", 1)
    msgs = hash_.get_many(4)
    assert {m.topic: m.payload for m in msgs} == {t: str(i).encode() for i, t in enumerate(topics)}
    assert all(m.retain for m in msgs)
    hash_.expect_none(0.3)


@pv
def test_retained_flag_set_on_subscribe_delivery_and_clear_on_live(port, client, uid, version):
    pub = client(port, version)
    pub.publish(f"{uid}/f", b"first", qos=1, retain=True)
    sub = client(port, version)
    sub.subscribe(f"{uid}/f", 1)
    m = sub.get()
    assert m.retain is True, "retained message sent because of a new subscription has RETAIN=1"
    pub.publish(f"{uid}/f", b"second", qos=1, retain=True)
    m = sub.get()
    assert m.payload == b"second"
    assert m.retain is False, "message to an established subscription has RETAIN=0 (5.0: unless Retain As Published)"


@pv
def test_retained_qos_is_downgraded_to_subscription(port, client, uid, version):
    pub = client(port, version)
    pub.publish(f"{uid}/q", b"q2", qos=2, retain=True)
    s0 = client(port, version)
    s0.subscribe(f"{uid}/q", 0)
    assert s0.get().qos == 0
    s2 = client(port, version)
    s2.subscribe(f"{uid}/q", 2)
    assert s2.get().qos == 2


@pv
def test_retained_qos0_stored(port, client, uid, version):
    pub = client(port, version)
    pub.publish(f"{uid}/z", b"zero", qos=0, retain=True)
    time.sleep(0.2)
    sub = client(port, version)
    sub.subscribe(f"{uid}/z", 2)
    m = sub.get()
    assert (m.payload, m.qos, m.retain) == (b"zero", 0, True)


@pv
def test_resubscribe_sends_retained_again(port, client, uid, version):
    """3.1.1: retained messages are sent on every SUBSCRIBE; 5.0 default Retain Handling 0 likewise."""
    pub = client(port, version)
    pub.publish(f"{uid}/again", b"r", qos=1, retain=True)
    sub = client(port, version)
    sub.subscribe(f"{uid}/again", 1)
    assert sub.get().payload == b"r"
    sub.subscribe(f"{uid}/again", 1)
    m = sub.get()
    assert m.payload == b"r" and m.retain


@pv
def test_retained_survives_publisher_disconnect(port, client, uid, version):
    pub = client(port, version)
    pub.publish(f"{uid}/p", b"stays", qos=1, retain=True)
    pub.disconnect()
    sub = client(port, version)
    sub.subscribe(f"{uid}/p", 1)
    assert sub.get().payload == b"stays"


def test_v5_retained_message_expires(port, client, uid):
    pub = client(port, V5)
    pub.publish(f"{uid}/exp", b"short", qos=1, retain=True, props={"MessageExpiryInterval": 1})
    pub.publish(f"{uid}/keep", b"long", qos=1, retain=True, props={"MessageExpiryInterval": 60})
    time.sleep(2.2)
    sub = client(port, V5)
    sub.subscribe(f"{uid}/+", 1)
    m = sub.get()
    assert m.topic == f"{uid}/keep"
    sub.expect_none(0.3)


def test_v5_retained_expiry_is_decremented(port, client, uid):
    pub = client(port, V5)
    pub.publish(f"{uid}/dec", b"x", qos=1, retain=True, props={"MessageExpiryInterval": 30})
    time.sleep(1.5)
    sub = client(port, V5)
    sub.subscribe(f"{uid}/dec", 1)
    m = sub.get()
    exp = m.props.get("MessageExpiryInterval")
    assert exp is not None, "Message Expiry Interval must be forwarded"
    assert 1 <= exp <= 29, f"expiry must be decremented by the time held: {exp}"


def test_v5_retained_properties_kept(port, client, uid):
    pub = client(port, V5)
    props = {
        "ContentType": "text/plain",
        "UserProperty": [("k", "v"), ("k", "v2")],
        "ResponseTopic": f"{uid}/resp",
        "CorrelationData": b"\x00\x01",
        "PayloadFormatIndicator": 1,
    }
    pub.publish(f"{uid}/props", b"hello", qos=1, retain=True, props=props)
    sub = client(port, V5)
    sub.subscribe(f"{uid}/props", 1)
    m = sub.get()
    for k, v in props.items():
        assert m.props.get(k) == v, (k, m.props)
