"""Sessions: clean session / clean start, Session Present, session expiry, offline queueing,
redelivery with DUP, client-id takeover."""

from __future__ import annotations

import time

import pytest

from helpers import V5, VERSION_IDS, VERSIONS
from mqtt_raw import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RC_SESSION_TAKEN_OVER,
    ack_packet,
)

MAX_SESSION_EXPIRY = 3600
BROKER_CONFIG = {"mqtt": {"max_session_expiry_secs": MAX_SESSION_EXPIRY}}

pv = pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)


def persistent(version: int, expiry: int = 300) -> dict:
    """Keyword args for a session that outlives the connection, in either version."""
    if version == V5:
        return {"clean": False, "props": {"SessionExpiryInterval": expiry}}
    return {"clean": False}


def persistent_paho(version: int, expiry: int = 300) -> dict:
    if version == V5:
        return {"clean": False, "connect_props": {"SessionExpiryInterval": expiry}}
    return {"clean": False}


@pv
def test_clean_session_never_has_session_present(port, raw, uid, version):
    for _ in range(2):
        r = raw(port, version)
        ack = r.connect(uid, clean=True)
        assert ack.session_present is False
        r.disconnect()


@pv
def test_persistent_session_present_on_reconnect(port, raw, uid, version):
    r = raw(port, version)
    ack = r.connect(uid, **persistent(version))
    assert ack.session_present is False
    r.disconnect()
    r = raw(port, version)
    ack = r.connect(uid, **persistent(version))
    assert ack.session_present is True
    r.disconnect()


@pv
def test_clean_connect_discards_previous_session(port, raw, uid, version):
    r = raw(port, version)
    r.connect(uid, **persistent(version))
    r.subscribe(f"{uid}/s", 1)
    r.disconnect()
    r = raw(port, version)
    ack = r.connect(uid, clean=True, props={"SessionExpiryInterval": 300} if version == V5 else None)
    assert ack.session_present is False
    r.disconnect()
    # the old subscription is gone: a publish now is not queued for the session
    pub = raw(port, version)
    pub.connect(f"{uid}-pub")
    pub.publish(f"{uid}/s", b"x", qos=1)
    r = raw(port, version)
    ack = r.connect(uid, **persistent(version))
    r.expect_nothing(0.5)


@pv
@pytest.mark.parametrize("qos", [1, 2])
def test_offline_messages_queued_and_delivered_in_order(port, client, uid, version, qos):
    sub = client(port, version, client_id=f"{uid}-sub", **persistent_paho(version))
    sub.subscribe(f"{uid}/q", qos)
    sub.disconnect()
    pub = client(port, version)
    for i in range(10):
        pub.publish(f"{uid}/q", str(i).encode(), qos=qos)
    sub2 = client(port, version, client_id=f"{uid}-sub", **persistent_paho(version))
    assert sub2.session_present is True
    got = sub2.get_many(10)
    assert [int(m.payload) for m in got] == list(range(10))
    assert all(m.qos == qos for m in got)
    sub2.expect_none(0.3)


@pv
def test_subscription_survives_reconnect(port, client, uid, version):
    sub = client(port, version, client_id=f"{uid}-sub", **persistent_paho(version))
    sub.subscribe(f"{uid}/live", 1)
    sub.disconnect()
    sub2 = client(port, version, client_id=f"{uid}-sub", **persistent_paho(version))
    assert sub2.session_present
    pub = client(port, version)
    pub.publish(f"{uid}/live", b"after", qos=1)
    assert sub2.get().payload == b"after"


@pv
def test_unacked_qos1_redelivered_with_dup_and_same_id(port, raw, client, uid, version):
    r = raw(port, version)
    r.connect(uid, **persistent(version))
    r.subscribe(f"{uid}/dup", 1)
    pub = client(port, version)
    pub.publish(f"{uid}/dup", b"ack me", qos=1)
    first = r.recv_type(PUBLISH)
    assert not first.dup
    r.abort()  # no PUBACK
    time.sleep(0.2)
    r2 = raw(port, version)
    ack = r2.connect(uid, **persistent(version))
    assert ack.session_present is True
    again = r2.recv_type(PUBLISH)
    assert again.payload == b"ack me"
    assert again.dup is True, "re-sent PUBLISH must have DUP=1"
    assert again.pid == first.pid, "re-sent PUBLISH keeps its packet identifier"
    r2.send(ack_packet(PUBACK, again.pid, version))
    r2.expect_nothing(0.5)
    r2.disconnect()


@pv
def test_unacked_qos2_publish_redelivered_with_dup(port, raw, client, uid, version):
    r = raw(port, version)
    r.connect(uid, **persistent(version))
    r.subscribe(f"{uid}/dup2", 2)
    pub = client(port, version)
    pub.publish(f"{uid}/dup2", b"two", qos=2)
    first = r.recv_type(PUBLISH)
    r.abort()  # no PUBREC
    time.sleep(0.2)
    r2 = raw(port, version)
    r2.connect(uid, **persistent(version))
    again = r2.recv_type(PUBLISH)
    assert (again.payload, again.dup, again.pid, again.qos) == (b"two", True, first.pid, 2)
    r2.ack(again)
    r2.expect_nothing(0.5)


@pv
def test_qos2_pubrel_resent_after_reconnect(port, raw, client, uid, version):
    r = raw(port, version)
    r.connect(uid, **persistent(version))
    r.subscribe(f"{uid}/rel", 2)
    pub = client(port, version)
    pub.publish(f"{uid}/rel", b"half", qos=2)
    p = r.recv_type(PUBLISH)
    r.send(ack_packet(PUBREC, p.pid, version))
    assert r.recv_type(PUBREL).pid == p.pid
    r.abort()  # no PUBCOMP
    time.sleep(0.2)
    r2 = raw(port, version)
    r2.connect(uid, **persistent(version))
    rel = r2.recv(5)
    assert rel.type == PUBREL and rel.pid == p.pid, f"expected PUBREL re-sent, got {rel!r}"
    r2.send(ack_packet(PUBCOMP, p.pid, version))
    r2.expect_nothing(0.5)


@pv
def test_inbound_qos2_state_survives_reconnect(port, raw, client, uid, version):
    """Client sent PUBLISH QoS2, got PUBREC, reconnects, sends PUBREL: gets PUBCOMP; delivered once."""
    sub = client(port, version)
    sub.subscribe(f"{uid}/in2", 2)
    r = raw(port, version)
    r.connect(uid, **persistent(version))
    r.publish(f"{uid}/in2", b"in", qos=2, pid=11, wait=False)
    assert r.recv_type(PUBREC).pid == 11
    r.abort()
    time.sleep(0.2)
    r2 = raw(port, version)
    r2.connect(uid, **persistent(version))
    r2.send(ack_packet(PUBREL, 11, version))
    assert r2.recv_type(PUBCOMP).pid == 11
    assert sub.get().payload == b"in"
    sub.expect_none(0.5)


@pv
def test_takeover_closes_old_connection(port, client, raw, uid, version):
    old = raw(port, version)
    old.connect(uid)
    new = raw(port, version)
    ack = new.connect(uid)
    assert ack.reason == 0
    seen = old.expect_closed(5)
    if version == V5:
        assert [p.reason for p in seen if p.name == "DISCONNECT"] == [RC_SESSION_TAKEN_OVER], seen
    else:
        assert seen == []
    new.ping()


def test_v5_takeover_paho_sees_session_taken_over(port, client, uid):
    old = client(port, V5, client_id=uid)
    new = client(port, V5, client_id=uid)
    rc, _props = old.wait_disconnected(5)
    assert rc == RC_SESSION_TAKEN_OVER
    assert new.connected


@pv
def test_takeover_keeps_persistent_session(port, raw, client, uid, version):
    old = raw(port, version)
    old.connect(uid, **persistent(version))
    old.subscribe(f"{uid}/t", 1)
    new = raw(port, version)
    ack = new.connect(uid, **persistent(version))
    assert ack.session_present is True
    old.expect_closed(5)
    pub = client(port, version)
    pub.publish(f"{uid}/t", b"to new", qos=1)
    assert new.recv_publish().payload == b"to new"


def test_v5_session_expiry_zero_ends_session_at_disconnect(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid, clean=False)  # no Session Expiry Interval property = 0
    r.subscribe(f"{uid}/x", 1)
    r.disconnect()
    r = raw(port, V5)
    ack = r.connect(uid, clean=False)
    assert ack.session_present is False


def test_v5_session_expires_after_interval(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid, clean=False, props={"SessionExpiryInterval": 1})
    r.disconnect()
    time.sleep(2.2)
    r = raw(port, V5)
    ack = r.connect(uid, clean=False, props={"SessionExpiryInterval": 1})
    assert ack.session_present is False


def test_v5_session_kept_within_interval(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid, clean=False, props={"SessionExpiryInterval": 5})
    r.disconnect()
    time.sleep(1.0)
    r = raw(port, V5)
    ack = r.connect(uid, clean=False, props={"SessionExpiryInterval": 5})
    assert ack.session_present is True


def test_v5_disconnect_can_shorten_session_expiry(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid, clean=False, props={"SessionExpiryInterval": 300})
    r.disconnect(props={"SessionExpiryInterval": 0})
    r = raw(port, V5)
    ack = r.connect(uid, clean=False, props={"SessionExpiryInterval": 300})
    assert ack.session_present is False


def test_v5_disconnect_cannot_set_expiry_when_connect_had_zero(port, raw, uid):
    """Setting a non-zero Session Expiry in DISCONNECT after 0 in CONNECT is a Protocol Error."""
    r = raw(port, V5)
    r.connect(uid, clean=False)
    r.send(b"\xe0\x07\x00\x05\x11\x00\x00\x00\x3c")  # DISCONNECT rc 0, SessionExpiryInterval=60
    try:
        seen = r.expect_closed(3)
    except AssertionError:
        seen = []
    assert all(p.name == "DISCONNECT" and p.reason == 0x82 for p in seen), seen
    r = raw(port, V5)
    ack = r.connect(uid, clean=False)
    assert ack.session_present is False


@pytest.mark.myriad_only
def test_v5_session_expiry_capped_by_server(port, raw, uid):
    r = raw(port, V5)
    ack = r.connect(uid, clean=False, props={"SessionExpiryInterval": MAX_SESSION_EXPIRY * 10})
    assert ack.props.get("SessionExpiryInterval") == MAX_SESSION_EXPIRY, ack


def test_v5_session_expiry_within_cap_absent_or_echoed(port, raw, uid):
    r = raw(port, V5)
    ack = r.connect(uid, clean=False, props={"SessionExpiryInterval": 60})
    assert ack.props.get("SessionExpiryInterval", 60) == 60, ack


@pv
def test_qos0_while_connected_not_redelivered(port, raw, client, uid, version):
    r = raw(port, version)
    r.connect(uid, **persistent(version))
    r.subscribe(f"{uid}/z", 0)
    pub = client(port, version)
    pub.publish(f"{uid}/z", b"zero", qos=0)
    assert r.recv_type(PUBLISH).payload == b"zero"
    r.abort()
    time.sleep(0.2)
    r2 = raw(port, version)
    r2.connect(uid, **persistent(version))
    r2.expect_nothing(0.5)


@pytest.mark.myriad_only
@pv
def test_offline_queue_is_bounded(broker_factory, raw, uid, version):
    b = broker_factory({"mqtt": {"max_queued_messages": 5}})
    r = raw(b.port, version)
    r.connect(uid, **persistent(version))
    r.subscribe(f"{uid}/b", 1)
    r.disconnect()
    pub = raw(b.port, version)
    pub.connect(f"{uid}-pub")
    for i in range(30):
        pub.publish(f"{uid}/b", str(i).encode(), qos=1)
    r2 = raw(b.port, version)
    r2.connect(uid, **persistent(version))
    got = []
    while True:
        try:
            got.append(r2.recv_publish(timeout=0.7))
        except TimeoutError:
            break
    assert 1 <= len(got) <= 5, f"queue of 5 delivered {len(got)} messages"
    b.assert_alive()


@pv
def test_many_offline_sessions_do_not_interfere(port, client, uid, version):
    subs = []
    for i in range(5):
        s = client(port, version, client_id=f"{uid}-{i}", **persistent_paho(version))
        s.subscribe(f"{uid}/only/{i}", 1)
        s.disconnect()
        subs.append(s)
    pub = client(port, version)
    for i in range(5):
        pub.publish(f"{uid}/only/{i}", str(i).encode(), qos=1)
    for i in range(5):
        s = client(port, version, client_id=f"{uid}-{i}", **persistent_paho(version))
        m = s.get()
        assert m.payload == str(i).encode()
        s.expect_none(0.1)
