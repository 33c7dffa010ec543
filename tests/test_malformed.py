"""Malformed and protocol-violating packets over raw sockets.

5.0: the server answers with DISCONNECT carrying the right reason code, then closes
(errors inside CONNECT: CONNACK with the reason, or just a close where the spec says MAY).
3.1.1: the server just closes. Either way it keeps serving other clients.
"""

from __future__ import annotations

import random

import pytest

from helpers import V5, V311, VERSION_IDS, VERSIONS
from mqtt_raw import (
    CONNACK,
    DISCONNECT,
    PUBREL,
    RC_MALFORMED,
    RC_PACKET_TOO_LARGE,
    RC_PROTOCOL_ERROR,
    RC_TOPIC_FILTER_INVALID,
    RC_TOPIC_NAME_INVALID,
    SUBACK,
    Closed,
    RawClient,
    Will,
    connect_packet,
    encode_props,
    fixed,
    mqtt_str,
    publish_packet,
    subscribe_packet,
    u16,
    unsubscribe_packet,
    varint,
)

MAX_PACKET_SIZE = 4096
BROKER_CONFIG = {"mqtt": {"max_packet_size": MAX_PACKET_SIZE}}

pv = pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)


@pytest.fixture
def healthy(broker):
    """Call after the bad client: a new client still connects, publishes and receives."""

    def check(version: int = V5) -> None:
        broker.assert_alive()
        with RawClient(broker.port, version) as r:
            r.connect(f"healthy-{version}-{random.randrange(1 << 30)}")
            r.subscribe("healthy/check", 1)
            r.publish("healthy/check", b"ok", qos=1)
            assert r.recv_publish().payload == b"ok"

    return check


def connected(raw, port, uid, version) -> RawClient:
    r = raw(port, version)
    r.connect(uid)
    return r


def expect_error(r: RawClient, version: int, reason) -> None:
    r.expect_disconnect(reason if version == V5 else None)


# ---------------------------------------------------------------- fixed header

@pv
def test_bad_remaining_length(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    r.send(b"\x30\xff\xff\xff\xff\xff")
    expect_error(r, version, RC_MALFORMED)
    healthy(version)


def test_bad_remaining_length_before_connect(port, raw, healthy):
    r = raw(port, V5)
    r.send(b"\x10\xff\xff\xff\xff\xff")
    seen = r.expect_closed()
    assert not [p for p in seen if p.type == CONNACK and p.reason == 0], seen
    healthy()


RESERVED_FLAG_PACKETS = {
    "subscribe-flags-0000": lambda v: subscribe_packet([("a/b", 0)], 1, v, flags=0x00),
    "unsubscribe-flags-0000": lambda v: fixed(10, 0x00, unsubscribe_packet(["a/b"], 1, v)[2:]),
    "pubrel-flags-0000": lambda v: fixed(PUBREL, 0x00, u16(1)),
    "pingreq-flags-0001": lambda v: b"\xc1\x00",
    "disconnect-flags-0001": lambda v: b"\xe1\x00",
    "publish-qos0-dup": lambda v: publish_packet("a/b", b"x", qos=0, dup=True, version=v),
    "reserved-packet-type-0": lambda v: b"\x00\x00",
}


@pv
@pytest.mark.parametrize("name", list(RESERVED_FLAG_PACKETS))
def test_reserved_flags(port, raw, uid, healthy, version, name):
    r = connected(raw, port, uid, version)
    r.send(RESERVED_FLAG_PACKETS[name](version))
    expect_error(r, version, RC_MALFORMED)
    healthy(version)


@pv
def test_publish_qos3(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    pkt = bytearray(publish_packet("a/b", b"x", qos=1, pid=1, version=version))
    pkt[0] = 0x36  # QoS bits 11
    r.send(bytes(pkt))
    expect_error(r, version, RC_MALFORMED)
    healthy(version)


# ---------------------------------------------------------------- topic names

@pv
@pytest.mark.parametrize("topic", ["a/+/b", "a/#", "+", "#"])
def test_wildcard_in_publish_topic(port, raw, uid, healthy, version, topic):
    r = connected(raw, port, uid, version)
    r.send(publish_packet(topic, b"x", qos=0, version=version))
    expect_error(r, version, RC_TOPIC_NAME_INVALID)
    healthy(version)


@pv
@pytest.mark.parametrize(
    "topic",
    [b"a/\xff\xfe", b"a/\xc3", b"a/\xed\xa0\x80", b"a/\xc0\xaf"],
    ids=["invalid-bytes", "truncated-sequence", "utf16-surrogate", "overlong"],
)
def test_invalid_utf8_in_topic(port, raw, uid, healthy, version, topic):
    r = connected(raw, port, uid, version)
    r.send(publish_packet(topic, b"x", qos=1, pid=1, version=version))
    expect_error(r, version, RC_MALFORMED)
    healthy(version)


@pv
def test_null_character_in_topic(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    r.send(publish_packet(b"a/\x00b", b"x", qos=0, version=version))
    # A UTF-8 string containing U+0000 is a Malformed Packet (5.0 section 1.5.4)
    expect_error(r, version, RC_MALFORMED)
    healthy(version)


def test_v311_empty_publish_topic(port, raw, uid, healthy):
    r = connected(raw, port, uid, V311)
    r.send(publish_packet("", b"x", qos=0, version=V311))
    expect_error(r, V311, None)
    healthy(V311)


@pv
def test_invalid_utf8_in_subscribe_filter(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    r.send(subscribe_packet([(b"a/\xff", 1)], 1, version))
    expect_error(r, version, RC_MALFORMED)
    healthy(version)


@pv
@pytest.mark.parametrize("flt", ["a/#/b", "a+", "#/a", "a/b#"])
def test_invalid_topic_filter(port, raw, uid, healthy, version, flt):
    """An invalid filter is refused: SUBACK failure code for it, or DISCONNECT 0x8F/0x81/0x82 (5.0) / close (3.1.1)."""
    r = connected(raw, port, uid, version)
    r.send(subscribe_packet([(flt, 1)], 1, version))
    try:
        first = r.recv(3)
    except Closed:
        assert version == V311, "5.0: a DISCONNECT with the reason comes before the close"
        first = None
    if first is not None and first.type == SUBACK:
        assert first.reasons == [0x80 if version == V311 else RC_TOPIC_FILTER_INVALID] or (
            version == V5 and first.reasons == [0x80]
        ), first
    elif first is not None:
        assert version == V5 and first.type == DISCONNECT, first
        assert first.reason in (RC_TOPIC_FILTER_INVALID, RC_MALFORMED, RC_PROTOCOL_ERROR), first
        r.expect_closed()
    healthy(version)


# ---------------------------------------------------------------- packet identifiers, payloads

@pv
@pytest.mark.parametrize("qos", [1, 2])
def test_packet_id_zero_on_publish(port, raw, uid, healthy, version, qos):
    r = connected(raw, port, uid, version)
    r.send(publish_packet("a/b", b"x", qos=qos, pid=0, version=version))
    expect_error(r, version, RC_PROTOCOL_ERROR)
    healthy(version)


@pv
def test_packet_id_zero_on_subscribe(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    r.send(subscribe_packet([("a/b", 1)], 0, version))
    expect_error(r, version, RC_PROTOCOL_ERROR)
    healthy(version)


@pv
def test_subscribe_with_no_filters(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    r.send(subscribe_packet([], 1, version))
    expect_error(r, version, RC_PROTOCOL_ERROR)
    healthy(version)


@pv
def test_unsubscribe_with_no_filters(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    r.send(unsubscribe_packet([], 1, version))
    expect_error(r, version, RC_PROTOCOL_ERROR)
    healthy(version)


@pv
def test_subscribe_qos3(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    r.send(subscribe_packet([("a/b", 3)], 1, version))
    expect_error(r, version, RC_MALFORMED)
    healthy(version)


@pv
def test_string_length_past_end_of_packet(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    # PUBLISH whose topic length (200) runs past the 6-byte remaining length
    r.send(b"\x30\x06\x00\xc8abcd")
    expect_error(r, version, RC_MALFORMED)
    healthy(version)


# ---------------------------------------------------------------- properties (5.0)

@pytest.mark.parametrize(
    "props",
    [
        [("PayloadFormatIndicator", 1), ("PayloadFormatIndicator", 1)],
        [("ContentType", "a"), ("ContentType", "b")],
        [("MessageExpiryInterval", 5), ("MessageExpiryInterval", 5)],
        [("ResponseTopic", "r/1"), ("ResponseTopic", "r/2")],
    ],
    ids=["payload-format", "content-type", "message-expiry", "response-topic"],
)
def test_duplicate_property(port, raw, uid, healthy, props):
    r = connected(raw, port, uid, V5)
    r.send(publish_packet("a/b", b"x", qos=1, pid=1, props=props))
    r.expect_disconnect(RC_PROTOCOL_ERROR)
    healthy()


def test_duplicate_property_in_connect(port, raw, healthy):
    r = raw(port, V5)
    r.send(connect_packet("dup-connect", props=[("SessionExpiryInterval", 1), ("SessionExpiryInterval", 2)]))
    seen = r.expect_closed()
    assert all(p.type == CONNACK and p.reason == RC_PROTOCOL_ERROR for p in seen), seen
    healthy()


def test_unknown_property_identifier(port, raw, uid, healthy):
    r = connected(raw, port, uid, V5)
    body = mqtt_str("a/b") + u16(1) + varint(2) + b"\x7f\x00" + b"x"
    r.send(fixed(3, 0x02, body))
    r.expect_disconnect(RC_MALFORMED)
    healthy()


def test_property_not_valid_for_packet(port, raw, uid, healthy):
    """An identifier not valid for the packet type is a Malformed Packet (5.0 section 2.2.2.2)."""
    r = connected(raw, port, uid, V5)
    r.send(publish_packet("a/b", b"x", qos=1, pid=1, props={"SessionExpiryInterval": 10}))
    r.expect_disconnect(RC_MALFORMED)
    healthy()


def test_property_length_past_end(port, raw, uid, healthy):
    r = connected(raw, port, uid, V5)
    body = mqtt_str("a/b") + varint(50) + b"\x01\x01"
    r.send(fixed(3, 0x00, body))
    r.expect_disconnect(RC_MALFORMED)
    healthy()


def test_payload_format_indicator_out_of_range(port, raw, uid, healthy):
    r = connected(raw, port, uid, V5)
    r.send(publish_packet("a/b", b"x", qos=0, props={"PayloadFormatIndicator": 2}))
    r.expect_disconnect({RC_PROTOCOL_ERROR, RC_MALFORMED})
    healthy()


def test_properties_encoder_sanity():
    assert encode_props(None) == b"\x00"
    assert encode_props({"TopicAlias": 1}) == b"\x03\x23\x00\x01"


# ---------------------------------------------------------------- packet size

@pv
def test_packet_larger_than_max_packet_size(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    r.send(publish_packet("a/big", b"b" * (MAX_PACKET_SIZE + 10), qos=1, pid=1, version=version))
    expect_error(r, version, RC_PACKET_TOO_LARGE)
    healthy(version)


@pv
def test_oversize_rejected_from_header_alone(port, raw, uid, healthy, version):
    """The remaining length already says too large: no need to wait for the body."""
    r = connected(raw, port, uid, version)
    r.send(b"\x30" + varint(10_000_000) + mqtt_str("a/b"))
    expect_error(r, version, RC_PACKET_TOO_LARGE)
    healthy(version)


@pv
def test_oversize_connect(port, raw, healthy, version):
    r = raw(port, version)
    r.send(connect_packet("big-connect", version, will=None, username="u" * 100,
                          password=b"p" * (MAX_PACKET_SIZE + 100)))
    seen = r.expect_closed()
    if version == V5:
        assert all(p.type == CONNACK and p.reason == RC_PACKET_TOO_LARGE for p in seen), seen
    else:
        assert seen == [], seen
    healthy(version)


# ---------------------------------------------------------------- CONNECT sequence

@pv
def test_second_connect(port, raw, uid, healthy, version):
    r = connected(raw, port, uid, version)
    r.send(connect_packet(uid, version))
    expect_error(r, version, RC_PROTOCOL_ERROR)
    healthy(version)


@pv
@pytest.mark.parametrize(
    "first",
    [b"\xc0\x00", publish_packet("a/b", b"x", qos=0, version=V311), subscribe_packet([("a/b", 0)], 1, V311),
     b"\xe0\x00"],
    ids=["pingreq", "publish", "subscribe", "disconnect"],
)
def test_first_packet_not_connect(port, raw, healthy, version, first):
    r = raw(port, version)
    r.send(first)
    seen = r.expect_closed()
    assert seen == [], f"server must close without answering: {seen}"
    healthy(version)


@pv
def test_connect_reserved_flag(port, raw, healthy, version):
    r = raw(port, version)
    r.send(connect_packet("reserved-flag", version, reserved_flag=True))
    seen = r.expect_closed()
    if version == V5:
        # the server MAY send CONNACK 0x81 before closing
        assert all(p.type == CONNACK and p.reason == RC_MALFORMED for p in seen), seen
    else:
        assert seen == [], f"3.1.1: close without CONNACK, got {seen}"
    healthy(version)


@pv
def test_connect_will_qos3(port, raw, healthy, version):
    pkt = bytearray(connect_packet("will-qos3", version, will=Will("w/t", b"x", qos=1)))
    flags_at = 2 + 2 + 4 + 1  # fixed header (2, short packet) + name length + "MQTT" + level
    pkt[flags_at] |= 0x18
    r = raw(port, version)
    r.send(bytes(pkt))
    seen = r.expect_closed()
    if version == V5:
        assert all(p.type == CONNACK and p.reason == RC_MALFORMED for p in seen), seen
    else:
        assert seen == []
    healthy(version)


def test_v311_password_without_username(port, raw, healthy):
    r = raw(port, V311)
    r.send(connect_packet("pw-only", V311, password=b"secret"))
    assert r.expect_closed() == []
    healthy(V311)


def test_v5_password_without_username_allowed(port, raw):
    r = raw(port, V5)
    r.send(connect_packet("pw-only-5", V5, password=b"secret"))
    ack = r.recv_type(CONNACK)
    assert ack.reason == 0


def _connack_reason(p) -> tuple[str, int]:
    """('v311'|'v5', reason) from a CONNACK's body length."""
    return ("v311" if len(p.body) == 2 else "v5", p.body[1])


@pytest.mark.parametrize("level", [6, 7, 0x7F], ids=["level6", "level7", "level127"])
def test_unknown_future_protocol_level(port, raw, healthy, level):
    """A level above 5: CONNACK 'unsupported protocol version' (0x84 in the 5.0 format, 0x01 in the 3.1.1 format)."""
    r = raw(port, V5)
    r.send(connect_packet("future", V5, level=level))
    seen = r.expect_closed()
    assert len(seen) == 1 and seen[0].type == CONNACK, seen
    fmt, reason = _connack_reason(seen[0])
    assert (fmt, reason) in {("v5", 0x84), ("v311", 0x01)}, (fmt, hex(reason))
    healthy()


@pytest.mark.parametrize(
    "name,level",
    [("MQTT", 3), ("MQTT", 2), ("MQIsdp", 4)],
    ids=["MQTT-level3", "MQTT-level2", "MQIsdp-level4"],
)
def test_old_protocol_level_gets_v311_connack_0x01(port, raw, healthy, name, level):
    r = raw(port, V311)
    r.send(connect_packet("old", V311, protocol_name=name, level=level))
    seen = r.expect_closed()
    assert len(seen) == 1 and seen[0].type == CONNACK, seen
    assert seen[0].body == b"\x00\x01", f"expected CONNACK 0x01 (unacceptable protocol level): {seen}"
    healthy(V311)


def test_unknown_protocol_name(port, raw, healthy):
    r = raw(port, V311)
    r.send(connect_packet("bad-name", V311, protocol_name="MQTX"))
    seen = r.expect_closed()
    # the spec lets the server close (3.1.1) or answer "unsupported protocol" first
    for p in seen:
        assert p.type == CONNACK and p.body[1] in (0x01, 0x84), seen
    healthy(V311)


# ---------------------------------------------------------------- other packets

def test_v5_auth_without_authentication_method(port, raw, uid, healthy):
    r = connected(raw, port, uid, V5)
    r.send(fixed(15, 0, b"\x18" + encode_props(None)))  # AUTH, reason 0x18 Continue authentication
    r.expect_disconnect(RC_PROTOCOL_ERROR)
    healthy()


def test_v311_auth_packet_type(port, raw, uid, healthy):
    r = connected(raw, port, uid, V311)
    r.send(b"\xf0\x00")
    expect_error(r, V311, None)
    healthy(V311)


def test_server_sent_packet_types_from_client(port, raw, uid, healthy):
    """CONNACK / SUBACK / PINGRESP from a client are protocol errors."""
    for pkt in (b"\x20\x03\x00\x00\x00", b"\x90\x04\x00\x01\x00\x00", b"\xd0\x00"):
        r = connected(raw, port, uid, V5)
        r.send(pkt)
        r.expect_disconnect({RC_PROTOCOL_ERROR, RC_MALFORMED})
    healthy()


@pv
def test_random_garbage_after_connect(port, raw, uid, healthy, version):
    rng = random.Random(1234 + version)
    for i in range(5):
        r = connected(raw, port, f"{uid}-{i}", version)
        try:
            r.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        except OSError:
            pass
        try:
            r.expect_closed(2)
        except AssertionError:
            pass  # garbage can be a valid-looking packet header waiting for more bytes
        r.close()
    healthy(version)


@pv
def test_random_garbage_before_connect(port, raw, healthy, version):
    rng = random.Random(99 + version)
    for _ in range(5):
        r = raw(port, version)
        try:
            r.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        except OSError:
            pass
        r.close()
    healthy(version)


@pv
def test_bystander_unaffected(port, raw, uid, version):
    """A connected client keeps working while another one sends bad packets."""
    by = connected(raw, port, f"{uid}-by", version)
    by.subscribe(f"{uid}/by", 1)
    for bad in (b"\x30\xff\xff\xff\xff\xff", b"\x00\x00", b"\xc1\x00"):
        r = connected(raw, port, f"{uid}-bad", version)
        r.send(bad)
        r.expect_closed()
    pub = connected(raw, port, f"{uid}-pub", version)
    pub.publish(f"{uid}/by", b"still here", qos=1)
    assert by.recv_publish().payload == b"still here"
