"""Will messages: abnormal disconnect, keep-alive timeout, clean DISCONNECT, 5.0 reason 0x04,
Will Delay Interval, will retain and will properties."""

from __future__ import annotations

import time

import pytest

from helpers import V5, V311, VERSION_IDS, VERSIONS
from mqtt_raw import RC_DISCONNECT_WITH_WILL, Will

pv = pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)


def watcher(client, port, uid, version=V5, qos=1):
    w = client(port, version)
    w.subscribe(f"{uid}/will/#", qos)
    return w


@pv
@pytest.mark.parametrize("how", ["rst", "fin"])
def test_will_sent_on_abnormal_disconnect(port, raw, client, uid, version, how):
    w = watcher(client, port, uid, version)
    r = raw(port, version)
    r.connect(f"{uid}-dev", will=Will(f"{uid}/will/dev", b"gone", qos=1))
    r.ping()
    if how == "rst":
        r.abort()
    else:
        r.close()  # TCP close without DISCONNECT is abnormal too
    m = w.get(5)
    assert (m.topic, m.payload, m.qos) == (f"{uid}/will/dev", b"gone", 1)
    w.expect_none(0.3)


@pv
def test_no_will_on_clean_disconnect(port, raw, client, uid, version):
    w = watcher(client, port, uid, version)
    r = raw(port, version)
    r.connect(f"{uid}-dev", will=Will(f"{uid}/will/dev", b"gone", qos=1))
    r.disconnect()
    w.expect_none(1.0)


@pv
def test_no_will_on_clean_disconnect_paho(port, client, uid, version):
    w = watcher(client, port, uid, version)
    c = client(port, version, will={"topic": f"{uid}/will/p", "payload": b"x", "qos": 1})
    c.disconnect()
    w.expect_none(1.0)


@pv
def test_will_sent_on_keep_alive_timeout(port, raw, client, uid, version):
    w = watcher(client, port, uid, version)
    r = raw(port, version)
    r.connect(f"{uid}-idle", keepalive=2, will=Will(f"{uid}/will/idle", b"timeout", qos=1))
    start = time.monotonic()
    m = w.get(8)
    elapsed = time.monotonic() - start
    assert m.payload == b"timeout"
    assert 2.0 <= elapsed <= 5.0, f"will after {elapsed:.2f}s; expected ~3s (1.5 x keep alive 2s)"
    r.expect_closed(2)


@pv
def test_will_retain_flag_stores_retained(port, raw, client, uid, version):
    r = raw(port, version)
    r.connect(f"{uid}-ret", will=Will(f"{uid}/will/status", b"offline", qos=1, retain=True))
    r.abort()
    time.sleep(0.5)
    late = client(port, version)
    late.subscribe(f"{uid}/will/status", 1)
    m = late.get(5)
    assert (m.payload, m.retain) == (b"offline", True)


@pv
@pytest.mark.parametrize("will_qos", [0, 2])
def test_will_qos(port, raw, client, uid, version, will_qos):
    w = watcher(client, port, uid, version, qos=2)
    r = raw(port, version)
    r.connect(f"{uid}-q", will=Will(f"{uid}/will/q", b"q", qos=will_qos))
    r.abort()
    assert w.get(5).qos == will_qos


def test_will_from_paho_client_when_killed(port, client, raw, uid):
    """Mixed: 3.1.1 raw device, 5.0 paho watcher."""
    w = watcher(client, port, uid, V5)
    r = raw(port, V311)
    r.connect(f"{uid}-mix", will=Will(f"{uid}/will/mix", b"bye", qos=0))
    r.abort()
    assert w.get(5).payload == b"bye"


def test_v5_disconnect_with_will_message_reason_sends_will(port, raw, client, uid):
    w = watcher(client, port, uid)
    r = raw(port, V5)
    r.connect(f"{uid}-04", will=Will(f"{uid}/will/04", b"asked", qos=1))
    r.disconnect(reason=RC_DISCONNECT_WITH_WILL)
    assert w.get(5).payload == b"asked"


def test_v5_disconnect_with_will_message_reason_paho(port, client, uid):
    w = watcher(client, port, uid)
    c = client(port, V5, will={"topic": f"{uid}/will/p4", "payload": b"p4", "qos": 1})
    c.disconnect(reason=RC_DISCONNECT_WITH_WILL)
    assert w.get(5).payload == b"p4"


def test_v5_will_properties_passed_through(port, raw, client, uid):
    w = watcher(client, port, uid)
    props = {
        "ContentType": "application/json",
        "ResponseTopic": f"{uid}/reply",
        "CorrelationData": b"\x01\x02\x03",
        "PayloadFormatIndicator": 1,
        "UserProperty": [("device", "d1"), ("reason", "lost")],
    }
    r = raw(port, V5)
    r.connect(f"{uid}-props", will=Will(f"{uid}/will/props", b'{"up":false}', qos=1, props=props))
    r.abort()
    m = w.get(5)
    for k, v in props.items():
        assert m.props.get(k) == v, (k, m.props)


def test_v5_will_delay_interval(port, raw, client, uid):
    w = watcher(client, port, uid)
    r = raw(port, V5)
    r.connect(
        f"{uid}-delay",
        props={"SessionExpiryInterval": 30},
        will=Will(f"{uid}/will/delay", b"late", qos=1, props={"WillDelayInterval": 2}),
    )
    r.abort()
    start = time.monotonic()
    w.expect_none(1.2)
    m = w.get(5)
    elapsed = time.monotonic() - start
    assert m.payload == b"late"
    assert 1.5 <= elapsed <= 4.5, f"will after {elapsed:.2f}s, delay was 2s"


def test_v5_will_delay_cancelled_by_reconnect(port, raw, client, uid):
    w = watcher(client, port, uid)
    r = raw(port, V5)
    will = Will(f"{uid}/will/cancel", b"should not", qos=1, props={"WillDelayInterval": 2})
    r.connect(f"{uid}-cancel", props={"SessionExpiryInterval": 30}, will=will)
    r.abort()
    time.sleep(0.5)
    r2 = raw(port, V5)
    ack = r2.connect(f"{uid}-cancel", clean=False, props={"SessionExpiryInterval": 30})
    assert ack.session_present is True
    w.expect_none(3.0)
    r2.disconnect()


def test_v5_will_sent_when_session_expires_before_delay(port, raw, client, uid):
    w = watcher(client, port, uid)
    r = raw(port, V5)
    r.connect(
        f"{uid}-sx",
        props={"SessionExpiryInterval": 1},
        will=Will(f"{uid}/will/sx", b"session over", qos=1, props={"WillDelayInterval": 60}),
    )
    r.abort()
    start = time.monotonic()
    m = w.get(5)
    elapsed = time.monotonic() - start
    assert m.payload == b"session over"
    assert elapsed <= 3.5, f"will after {elapsed:.2f}s; the session expired after 1s"


def test_v5_will_delay_zero_is_immediate(port, raw, client, uid):
    w = watcher(client, port, uid)
    r = raw(port, V5)
    r.connect(f"{uid}-z", props={"SessionExpiryInterval": 30},
              will=Will(f"{uid}/will/z", b"now", qos=1, props={"WillDelayInterval": 0}))
    r.abort()
    start = time.monotonic()
    assert w.get(3).payload == b"now"
    assert time.monotonic() - start < 1.5


@pv
def test_will_not_sent_twice(port, raw, client, uid, version):
    w = watcher(client, port, uid, version)
    r = raw(port, version)
    r.connect(f"{uid}-once", will=Will(f"{uid}/will/once", b"1", qos=1))
    r.abort()
    assert w.get(5).payload == b"1"
    w.expect_none(1.0)
