"""MQTT 3.1 (protocol name "MQIsdp", level 3) over raw sockets (issue 14 section 2).

3.1 is 3.1.1 on the wire except for the CONNECT protocol name and level, the
client identifier rules (1 to 23 bytes, else CONNACK return code 2 and a
close) and the CONNACK's first byte (reserved in 3.1: always 0).
"""

from __future__ import annotations

import pytest

from helpers import V5, V311
from mqtt_raw import (
    CONNACK,
    PUBACK,
    V3_BAD_PROTOCOL_LEVEL,
    V3_IDENTIFIER_REJECTED,
    RawClient,
    Will,
    ack_packet,
    connect_packet,
)

V31 = 3


def test_connect_packet_names_mqisdp():
    pkt = connect_packet("c", V31)
    assert pkt[2:10] == b"\x00\x06MQIsdp" and pkt[10] == 3, pkt


def test_v31_connect_accepted(port, raw, uid):
    r = raw(port, V31)
    ack = r.connect(uid)
    assert ack.body == b"\x00\x00", f"3.1 CONNACK is two bytes, return code 0: {ack}"
    r.ping()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_v31_publish_subscribe(port, raw, uid, qos):
    sub = raw(port, V31)
    sub.connect(f"{uid}s")
    suback = sub.subscribe(f"{uid}/t", qos)
    assert suback.reasons == [qos]
    pub = raw(port, V31)
    pub.connect(f"{uid}p")
    pub.publish(f"{uid}/t", b"hello 3.1", qos=qos)
    m = sub.recv_publish()
    assert (m.topic, m.payload, m.qos) == (f"{uid}/t", b"hello 3.1", qos)
    unsuback = sub.unsubscribe([f"{uid}/t"])
    assert unsuback.body == unsuback.body[:2], unsuback
    sub.disconnect()


@pytest.mark.parametrize("other", [V311, V5])
def test_v31_interoperates_with_other_versions(port, raw, uid, other):
    sub = raw(port, other)
    sub.connect(f"{uid}s")
    sub.subscribe(f"{uid}/x", 1)
    pub = raw(port, V31)
    pub.connect(f"{uid}p")
    pub.publish(f"{uid}/x", b"from 3.1", qos=1)
    assert sub.recv_publish().payload == b"from 3.1"
    # and the other way round
    sub31 = raw(port, V31)
    sub31.connect(f"{uid}t")
    sub31.subscribe(f"{uid}/y", 2)
    sub.publish(f"{uid}/y", b"to 3.1", qos=2)
    m = sub31.recv_publish()
    assert (m.payload, m.qos) == (b"to 3.1", 2)


def test_v31_will(port, raw, uid):
    sub = raw(port, V31)
    sub.connect(f"{uid}s")
    sub.subscribe(f"{uid}/will", 1)
    dying = raw(port, V31)
    dying.connect(f"{uid}d", will=Will(f"{uid}/will", b"gone", qos=1))
    dying.abort()
    assert sub.recv_publish().payload == b"gone"


def test_v31_session_present_byte_is_zero(port, raw, uid):
    """3.1 has no session present flag (the byte is reserved): 0 even when a session resumes."""
    cid = f"{uid}k"
    r = raw(port, V31)
    r.connect(cid, clean=False)
    r.subscribe(f"{uid}/q", 1)
    r.disconnect()
    r = raw(port, V31)
    ack = r.connect(cid, clean=False)
    assert ack.body == b"\x00\x00", ack
    # the session did resume: the subscription is still there
    p = raw(port, V311)
    p.connect(f"{uid}p")
    p.publish(f"{uid}/q", b"kept", qos=1)
    assert r.recv_publish().payload == b"kept"
    r.send(connect_packet(cid, V31, clean=True))  # second CONNECT: protocol violation
    r.expect_closed()
    r = raw(port, V31)
    r.connect(cid, clean=True)


@pytest.mark.parametrize(
    "client_id",
    ["", "x" * 24, "y" * 64],
    ids=["empty", "24-bytes", "64-bytes"],
)
@pytest.mark.parametrize("clean", [True, False], ids=["clean", "persistent"])
def test_v31_client_id_rejected(port, raw, client_id, clean):
    r = raw(port, V31)
    r.send(connect_packet(client_id, V31, clean=clean))
    seen = r.expect_closed()
    assert len(seen) == 1 and seen[0].type == CONNACK, seen
    assert seen[0].body == bytes([0, V3_IDENTIFIER_REJECTED]), seen


@pytest.mark.parametrize("client_id", ["a", "z" * 23], ids=["1-byte", "23-bytes"])
def test_v31_client_id_limits_accepted(port, raw, client_id):
    r = raw(port, V31)
    r.connect(client_id)
    r.ping()
    r.disconnect()


def test_v311_long_client_id_still_accepted(port, raw):
    r = raw(port, V311)
    r.connect("q" * 64)
    r.ping()


@pytest.mark.parametrize(
    "name,level",
    [("MQIsdp", 4), ("MQIsdp", 5), ("MQTT", 3), ("MQIsdp", 2)],
    ids=["MQIsdp-level4", "MQIsdp-level5", "MQTT-level3", "MQIsdp-level2"],
)
def test_name_and_level_must_match(port, raw, name, level):
    """A known protocol name with a level it does not go with: return code 1, then close."""
    r = raw(port, V311)
    r.send(connect_packet("mismatch", V311, protocol_name=name, level=level))
    seen = r.expect_closed()
    assert len(seen) == 1 and seen[0].type == CONNACK, seen
    assert seen[0].body == bytes([0, V3_BAD_PROTOCOL_LEVEL]), seen


def test_v31_password_without_username(port, raw):
    r = raw(port, V31)
    r.send(connect_packet("pw31", V31, password=b"secret"))
    assert r.expect_closed() == []


def test_v31_auth_packet_is_refused(port, raw, uid):
    r = raw(port, V31)
    r.connect(uid)
    r.send(b"\xf0\x00")
    assert [p for p in r.expect_closed() if p.type != PUBACK] == []


def test_v31_qos1_ack_is_plain(port, raw, uid):
    r = raw(port, V31)
    r.connect(uid)
    r.subscribe(f"{uid}/a", 1)
    r.publish(f"{uid}/a", b"m", qos=1)
    m = r.recv_publish(ack=False)
    assert m.qos == 1
    r.send(ack_packet(PUBACK, m.pid, V31))
    r.ping()
