"""Strict error classes (issue 14 section 1), raw packets, 3.1 / 3.1.1 / 5.0.

0x81 Malformed Packet for bytes that cannot be parsed, 0x82 Protocol Error for a
well-formed packet that is not allowed; 3.1 and 3.1.1 have no DISCONNECT from
the server: the connection is just closed.
"""

from __future__ import annotations

import pytest

from helpers import V5, V311
from mqtt_raw import (
    DISCONNECT,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RC_MALFORMED,
    RC_NOT_AUTHORIZED,
    RC_PROTOCOL_ERROR,
    RC_TOPIC_ALIAS_INVALID,
    RawClient,
    ack_packet,
    disconnect_packet,
    fixed,
    mqtt_str,
    publish_packet,
    sub_options,
    u16,
)

V31 = 3
ALL_VERSIONS = [V31, V311, V5]
ALL_IDS = ["v31", "v311", "v5"]
TOPIC_ALIAS_MAXIMUM = 4
BROKER_CONFIG = {"mqtt": {"topic_alias_maximum": TOPIC_ALIAS_MAXIMUM}}

pv = pytest.mark.parametrize("version", ALL_VERSIONS, ids=ALL_IDS)


def cid(uid: str, tag: str) -> str:
    return f"{uid}{tag}"[:23]  # 3.1 client ids are at most 23 bytes


def expect_error(r: RawClient, version: int, reason: int) -> None:
    r.expect_disconnect(reason if version == V5 else None)


def healthy(port: int, uid: str, version: int) -> None:
    with RawClient(port, version) as r:
        r.connect(cid(uid, "ok"))
        r.subscribe(f"{uid}/healthy", 1)
        r.publish(f"{uid}/healthy", b"ok", qos=1)
        assert r.recv_publish().payload == b"ok"


def receiving(raw, port, uid, version, qos) -> tuple[RawClient, int]:
    """A client with one unacknowledged QoS ``qos`` PUBLISH from the server; returns it and the packet id."""
    r = raw(port, version)
    r.connect(cid(uid, "r"))
    r.subscribe(f"{uid}/in", qos)
    p = raw(port, V311)
    p.connect(cid(uid, "p"))
    p.publish(f"{uid}/in", b"m", qos=qos)
    m = r.recv_publish(ack=False)
    assert m.qos == qos
    return r, m.pid


# ---------------------------------------------------------------- wrong acknowledgement type

@pv
@pytest.mark.parametrize(
    "qos,wrong",
    [(1, PUBREC), (1, PUBCOMP), (2, PUBACK), (2, PUBCOMP)],
    ids=["pubrec-for-qos1", "pubcomp-for-qos1", "puback-for-qos2", "pubcomp-before-pubrec"],
)
def test_wrong_ack_type_is_protocol_error(port, raw, uid, version, qos, wrong):
    r, pid = receiving(raw, port, uid, version, qos)
    r.send(ack_packet(wrong, pid, version))
    expect_error(r, version, RC_PROTOCOL_ERROR)
    healthy(port, uid, version)


@pv
def test_puback_after_pubrel_is_protocol_error(port, raw, uid, version):
    r, pid = receiving(raw, port, uid, version, 2)
    r.send(ack_packet(PUBREC, pid, version))
    rel = r.recv_type(PUBREL)
    assert rel.pid == pid
    r.send(ack_packet(PUBACK, pid, version))
    expect_error(r, version, RC_PROTOCOL_ERROR)


@pv
@pytest.mark.parametrize("qos", [1, 2])
def test_right_ack_type_still_fine(port, raw, uid, version, qos):
    r, pid = receiving(raw, port, uid, version, qos)
    if qos == 1:
        r.send(ack_packet(PUBACK, pid, version))
    else:
        r.send(ack_packet(PUBREC, pid, version))
        assert r.recv_type(PUBREL).pid == pid
        r.send(ack_packet(PUBREC, pid, version))  # a repeated PUBREC: PUBREL again
        assert r.recv_type(PUBREL).pid == pid
        r.send(ack_packet(PUBCOMP, pid, version))
    # acknowledgements for ids not in flight (late duplicates) are tolerated
    r.send(ack_packet(PUBACK, 999, version))
    r.ping()


# ---------------------------------------------------------------- PUBLISH from a client

@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_with_subscription_identifier_is_protocol_error(port, raw, uid, qos):
    r = raw(port, V5)
    r.connect(cid(uid, "s"))
    r.send(publish_packet(f"{uid}/sid", b"x", qos=qos, pid=1, props={"SubscriptionIdentifier": [3]}))
    r.expect_disconnect(RC_PROTOCOL_ERROR)
    healthy(port, uid, V5)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_topic_alias_above_maximum(port, raw, uid, qos):
    r = raw(port, V5)
    ack = r.connect(cid(uid, "a"))
    assert ack.props["TopicAliasMaximum"] == TOPIC_ALIAS_MAXIMUM
    r.send(publish_packet(f"{uid}/alias", b"x", qos=qos, pid=1, props={"TopicAlias": TOPIC_ALIAS_MAXIMUM + 1}))
    r.expect_disconnect(RC_TOPIC_ALIAS_INVALID)
    healthy(port, uid, V5)


@pv
@pytest.mark.parametrize("topic", ["$SYS/broker/uptime", "$SYS", "$SYS/x/y"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_to_sys_is_refused(port, raw, uid, version, topic, qos):
    """5.0: PUBACK/PUBREC 0x87; 3.x: acknowledged as usual (as Mosquitto); never delivered."""
    watcher = raw(port, V5)
    watcher.connect(cid(uid, "w"))
    watcher.subscribe([("$SYS/#", sub_options(2)), ("$SYS", sub_options(2))])
    r = raw(port, version)
    r.connect(cid(uid, "y"))
    r.send(publish_packet(topic, b"fake", qos=qos, pid=7, version=version))
    if qos:
        ack = r.recv_type(PUBACK if qos == 1 else PUBREC)
        assert ack.pid == 7
        assert ack.reason == (RC_NOT_AUTHORIZED if version == V5 else 0), ack
        if qos == 2:
            r.send(ack_packet(PUBREL, 7, version))
            assert r.recv_type(PUBCOMP).pid == 7
    r.ping()
    watcher.expect_nothing(0.3)


# ---------------------------------------------------------------- packet types only a server sends

@pv
@pytest.mark.parametrize(
    "pkt",
    [b"\x20\x02\x00\x00", b"\x90\x03\x00\x01\x00", b"\xb0\x02\x00\x01", b"\xd0\x00"],
    ids=["connack", "suback", "unsuback", "pingresp"],
)
def test_server_only_packet_types(port, raw, uid, version, pkt):
    r = raw(port, version)
    r.connect(cid(uid, "t"))
    if version == V5:
        # 5.0 CONNACK / SUBACK / UNSUBACK carry a property length
        pkt = {0x20: b"\x20\x03\x00\x00\x00", 0x90: b"\x90\x04\x00\x01\x00\x00",
               0xB0: b"\xb0\x04\x00\x01\x00\x00"}.get(pkt[0], pkt)
    r.send(pkt)
    expect_error(r, version, RC_PROTOCOL_ERROR)
    healthy(port, uid, version)


# ---------------------------------------------------------------- DISCONNECT reason codes

SERVER_ONLY_DISCONNECT = [0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2]


@pytest.mark.parametrize("reason", SERVER_ONLY_DISCONNECT, ids=[hex(r) for r in SERVER_ONLY_DISCONNECT])
def test_client_disconnect_with_server_only_reason_is_malformed(port, raw, uid, reason):
    r = raw(port, V5)
    r.connect(cid(uid, "d"))
    r.send(disconnect_packet(V5, reason))
    r.expect_disconnect(RC_MALFORMED)
    healthy(port, uid, V5)


@pytest.mark.parametrize("reason", [0x00, 0x04, 0x80, 0x83, 0x98])
def test_client_disconnect_with_client_reason_closes_quietly(port, raw, uid, reason):
    r = raw(port, V5)
    r.connect(cid(uid, "e"))
    r.send(disconnect_packet(V5, reason))
    assert [p for p in r.expect_closed() if p.type == DISCONNECT] == []


# ---------------------------------------------------------------- Variable Byte Integers

@pv
def test_remaining_length_fifth_byte_is_malformed_at_once(port, raw, uid, version):
    """Four continuation bytes: malformed without waiting for a fifth."""
    r = raw(port, version)
    r.connect(cid(uid, "v"))
    r.send(b"\x30\x80\x80\x80\x80")
    expect_error(r, version, RC_MALFORMED)


def test_property_length_fifth_byte_is_malformed(port, raw, uid):
    r = raw(port, V5)
    r.connect(cid(uid, "q"))
    body = mqtt_str(f"{uid}/p") + b"\x80\x80\x80\x80\x01"
    r.send(fixed(PUBLISH, 0, body))
    r.expect_disconnect(RC_MALFORMED)


def test_subscription_identifier_fifth_byte_is_malformed(port, raw, uid):
    r = raw(port, V5)
    r.connect(cid(uid, "i"))
    props = b"\x0b\x80\x80\x80\x80\x01"
    body = u16(1) + bytes([len(props)]) + props + mqtt_str(f"{uid}/f") + b"\x00"
    r.send(fixed(8, 0x02, body))
    r.expect_disconnect(RC_MALFORMED)


# ---------------------------------------------------------------- RETAIN on live delivery

def test_live_delivery_clears_retain_without_retain_as_published(port, raw, uid):
    plain = raw(port, V5)
    plain.connect(cid(uid, "l"))
    plain.subscribe([(f"{uid}/ret", sub_options(1))])
    rap = raw(port, V5)
    rap.connect(cid(uid, "m"))
    rap.subscribe([(f"{uid}/ret", sub_options(1, rap=True))])
    old = raw(port, V311)
    old.connect(cid(uid, "o"))
    old.subscribe(f"{uid}/ret", 1)
    pub = raw(port, V5)
    pub.connect(cid(uid, "n"))
    pub.publish(f"{uid}/ret", b"live", qos=1, retain=True)
    assert plain.recv_publish().retain is False  # MQTT-3.3.1-12
    assert rap.recv_publish().retain is True  # MQTT-3.3.1-13
    assert old.recv_publish().retain is False  # 3.1.1: MQTT-3.3.1-9
    # retained-on-subscribe keeps RETAIN 1, whatever Retain As Published says
    late = raw(port, V5)
    late.connect(cid(uid, "k"))
    late.subscribe([(f"{uid}/ret", sub_options(1))])
    assert late.recv_publish().retain is True
    pub.publish(f"{uid}/ret", b"", qos=1, retain=True)


# ---------------------------------------------------------------- control characters

CONTROL = ["\x01", "\x1f", "\x7f", "\u0080", "\u009f"]
CONTROL_IDS = ["U+0001", "U+001F", "U+007F", "U+0080", "U+009F"]
pc = pytest.mark.parametrize("ch", CONTROL, ids=CONTROL_IDS)


@pv
@pc
@pytest.mark.parametrize("where", ["publish", "subscribe", "unsubscribe"])
def test_control_character_in_topic_is_malformed(port, raw, uid, version, ch, where):
    from mqtt_raw import subscribe_packet, unsubscribe_packet

    r = raw(port, version)
    r.connect(cid(uid, "c"))
    topic = f"{uid}/a{ch}b"
    pkt = {
        "publish": lambda: publish_packet(topic, b"x", qos=1, pid=1, version=version),
        "subscribe": lambda: subscribe_packet([(topic, 0)], 1, version),
        "unsubscribe": lambda: unsubscribe_packet([topic], 1, version),
    }[where]()
    r.send(pkt)
    expect_error(r, version, RC_MALFORMED)
    healthy(port, uid, version)


@pv
@pc
@pytest.mark.parametrize("field", ["client_id", "username", "will_topic"])
def test_control_character_in_connect_is_malformed(port, raw, uid, version, ch, field):
    from mqtt_raw import CONNACK, Will, connect_packet

    kw: dict = {"client_id": cid(uid, "u")}
    if field == "client_id":
        kw["client_id"] = f"c{ch}{uid}"[:20]
    elif field == "username":
        kw["username"] = f"user{ch}"
        kw["password"] = b"pw"
    else:
        kw["will"] = Will(f"{uid}/w{ch}", b"x")
    r = raw(port, version)
    r.send(connect_packet(version=version, **kw))
    seen = r.expect_closed()
    if version == V5:
        assert all(p.type == CONNACK and p.reason == RC_MALFORMED for p in seen), seen
    else:
        assert seen == [], f"3.x: close without CONNACK, got {seen}"
    healthy(port, uid, version)


@pv
def test_other_non_ascii_still_accepted(port, raw, uid, version):
    r = raw(port, version)
    r.connect(cid(uid, "é"))
    r.subscribe(f"{uid}/température/\u00a0/€", 1)
    r.publish(f"{uid}/température/\u00a0/€", b"ok", qos=1)
    assert r.recv_publish().topic == f"{uid}/température/\u00a0/€"


# ---------------------------------------------------------------- keep alive cap

def test_keep_alive_zero_gets_the_cap(broker_factory, raw):
    """max_keep_alive_secs set: a 5.0 client asking for 0 is told the cap and reaped on it; 3.1.1 keeps 0."""
    b = broker_factory({"mqtt": {"max_keep_alive_secs": 1}})
    r = raw(b.port, V5)
    ack = r.connect("ka-zero-5", keepalive=0)
    assert ack.props.get("ServerKeepAlive") == 1, ack
    r.expect_disconnect(0x8D, timeout=4)
    old = raw(b.port, V311)
    old.connect("ka-zero-311", keepalive=0)
    old.expect_nothing(2.0)
    old.ping()


# ---------------------------------------------------------------- CONNECT refusals close the connection

def _closed_promptly(r: RawClient) -> list:
    """The server closes within a second (no waiting for the client to go away)."""
    return r.expect_closed(timeout=1.0)


def _connect_with_name(name_field: bytes, level: int, version: int) -> bytes:
    from mqtt_raw import CONNECT

    body = name_field + bytes([level, 0x02]) + u16(60)
    if version == V5:
        body += b"\x00"  # property length
    return fixed(CONNECT, 0, body + mqtt_str("namelen"))


NAME_LENGTH_CASES = {
    # the length field does not match the name that follows
    "short-by-one": lambda name: u16(len(name) - 1) + name,
    "long-by-one": lambda name: u16(len(name) + 1) + name,
    "zero": lambda name: u16(0) + name,
    "past-the-packet": lambda name: u16(0x7FFF) + name,
}


@pv
@pytest.mark.parametrize("case", list(NAME_LENGTH_CASES))
def test_connect_wrong_protocol_name_length_closes(port, raw, version, case):
    """A protocol name length that does not fit the name: the connection is closed at once,
    at most after a CONNACK refusing the protocol (3.x return code 1, 5.0 0x84 or 0x81)."""
    name = b"MQIsdp" if version == V31 else b"MQTT"
    r = raw(port, version)
    r.send(_connect_with_name(NAME_LENGTH_CASES[case](name), version, version))
    seen = _closed_promptly(r)
    from mqtt_raw import CONNACK

    assert all(p.type == CONNACK and p.body[1] in (0x01, 0x81, 0x84) for p in seen), seen


@pv
@pytest.mark.parametrize("name", [b"MQTX", b"mqtt", b"MQIsdP", b"MQTT\x00", b""], ids=["MQTX", "lower", "MQIsdP", "nul", "empty"])
def test_connect_wrong_protocol_name_closes(port, raw, version, name):
    r = raw(port, version)
    r.send(_connect_with_name(u16(len(name)) + name, version, version))
    seen = _closed_promptly(r)
    from mqtt_raw import CONNACK

    assert all(p.type == CONNACK and p.body[1] in (0x01, 0x81, 0x84) for p in seen), seen


@pv
def test_connect_reserved_flag_closes_at_once(port, raw, version):
    from mqtt_raw import connect_packet

    r = raw(port, version)
    r.send(connect_packet("reserved", version, reserved_flag=True))
    seen = _closed_promptly(r)
    assert all(p.body[1] == RC_MALFORMED for p in seen) if version == V5 else seen == [], seen


# (version, CONNECT arguments, expected return code / 5.0 reason)
REFUSALS = {
    "v31-id-24-bytes": (V31, {"client_id": "x" * 24}, 0x02),
    "v31-empty-id": (V31, {"client_id": ""}, 0x02),
    "v311-empty-id-persistent": (V311, {"client_id": "", "clean": False}, 0x02),
    "v31-reserved-id": (V31, {"client_id": "$myriad/x"}, 0x02),
    "v311-reserved-id": (V311, {"client_id": "$myriad/x"}, 0x02),
    "v5-reserved-id": (V5, {"client_id": "$myriad/x"}, 0x85),
    "v311-level-3": (V311, {"client_id": "lvl", "level": 3}, 0x01),
    "v31-level-4": (V31, {"client_id": "lvl", "level": 4}, 0x01),
    "v311-level-2": (V311, {"client_id": "lvl", "level": 2}, 0x01),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_nonzero_connack_is_followed_by_close(port, raw, case):
    """MQTT-3.2.2-5 / MQTT-3.2.2-7: after a CONNACK with a non-zero code the server closes,
    and nothing the client sends afterwards is answered."""
    from mqtt_raw import CONNACK, PINGREQ_PACKET, connect_packet

    version, kwargs, code = REFUSALS[case]
    r = raw(port, version)
    r.send(connect_packet(version=version, **kwargs) + PINGREQ_PACKET)
    seen = _closed_promptly(r)
    assert len(seen) == 1 and seen[0].type == CONNACK, seen
    assert seen[0].body[1] == code, seen


@pv
def test_pubrel_for_unknown_id_gets_pubcomp_not_an_error(port, raw, uid, version):
    """Packet ids are per direction: a client PUBREL names one of the client's own QoS 2
    messages. One for an id it never published (here: the id of the server's QoS 2
    delivery still awaiting PUBREC) gets PUBCOMP (5.0: 0x92), and that delivery goes on."""
    r, pid = receiving(raw, port, uid, version, 2)
    r.send(ack_packet(PUBREL, pid, version))
    comp = r.recv_type(PUBCOMP)
    assert comp.pid == pid
    if version == V5:
        assert comp.reason == 0x92, comp
    r.send(ack_packet(PUBREC, pid, version))
    assert r.recv_type(PUBREL).pid == pid
    r.send(ack_packet(PUBCOMP, pid, version))
    r.ping()
