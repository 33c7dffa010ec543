"""MQTT 5.0 properties: CONNACK capabilities, topic aliases both ways, message expiry,
pass-through properties, Receive Maximum flow control, Maximum Packet Size."""

from __future__ import annotations

import time

import pytest

from helpers import V5, V311
from mqtt_raw import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RC_PROTOCOL_ERROR,
    RC_RECEIVE_MAX_EXCEEDED,
    RC_TOPIC_ALIAS_INVALID,
    ack_packet,
    publish_packet,
)

RECEIVE_MAXIMUM = 8
TOPIC_ALIAS_MAXIMUM = 4
MAX_PACKET_SIZE = 16384
BROKER_CONFIG = {
    "mqtt": {
        "receive_maximum": RECEIVE_MAXIMUM,
        "topic_alias_maximum": TOPIC_ALIAS_MAXIMUM,
        "max_packet_size": MAX_PACKET_SIZE,
    }
}

PASS_THROUGH = {
    "PayloadFormatIndicator": 1,
    "ContentType": "application/json; charset=utf-8",
    "ResponseTopic": "replies/for/me",
    "CorrelationData": bytes(range(32)),
    "UserProperty": [("b", "2"), ("a", "1"), ("a", "1"), ("unicode", "ünï©ødé")],
}


# ---------------------------------------------------------------- CONNACK capabilities

def test_connack_capability_properties(port, raw, uid):
    r = raw(port, V5)
    props = r.connect(uid).props
    assert props.get("ReceiveMaximum") == RECEIVE_MAXIMUM
    assert props.get("TopicAliasMaximum") == TOPIC_ALIAS_MAXIMUM
    assert props.get("MaximumPacketSize") == MAX_PACKET_SIZE
    assert "MaximumQoS" not in props, "absent Maximum QoS means QoS 2 is supported"
    assert props.get("RetainAvailable", 1) == 1
    assert props.get("WildcardSubscriptionAvailable", 1) == 1
    assert props.get("SubscriptionIdentifierAvailable", 1) == 1
    assert props.get("SharedSubscriptionAvailable", 1) == 1


def test_connack_capabilities_via_paho(port, client):
    c = client(port, V5)
    assert c.connack_props.get("ReceiveMaximum") == RECEIVE_MAXIMUM
    assert c.connack_props.get("TopicAliasMaximum") == TOPIC_ALIAS_MAXIMUM
    assert c.connack_props.get("MaximumPacketSize") == MAX_PACKET_SIZE


@pytest.mark.myriad_only
def test_default_capabilities(broker_factory, raw, uid):
    b = broker_factory({})
    r = raw(b.port, V5)
    props = r.connect(uid).props
    assert props.get("ReceiveMaximum", 65535) == 1024
    assert props.get("TopicAliasMaximum") == 64
    assert props.get("MaximumPacketSize") == 1048576


# ---------------------------------------------------------------- topic aliases, client -> server

def test_topic_alias_from_client(port, client, uid):
    sub = client(port, V5)
    sub.subscribe(f"{uid}/#", 1)
    pub = client(port, V5)
    pub.publish(f"{uid}/long/topic/name", b"1", qos=1, props={"TopicAlias": 1})
    pub.publish("", b"2", qos=1, props={"TopicAlias": 1})
    pub.publish(f"{uid}/other", b"3", qos=1, props={"TopicAlias": 1})  # remap alias 1
    pub.publish("", b"4", qos=1, props={"TopicAlias": 1})
    got = sub.get_many(4)
    assert [(m.topic, m.payload) for m in got] == [
        (f"{uid}/long/topic/name", b"1"),
        (f"{uid}/long/topic/name", b"2"),
        (f"{uid}/other", b"3"),
        (f"{uid}/other", b"4"),
    ]
    for m in got:
        assert "TopicAlias" not in m.props, "the publisher's alias is not forwarded"


def test_topic_alias_max_value_accepted(port, raw, client, uid):
    sub = client(port, V5)
    sub.subscribe(f"{uid}/max", 1)
    r = raw(port, V5)
    r.connect(uid)
    r.publish(f"{uid}/max", b"a", qos=1, props={"TopicAlias": TOPIC_ALIAS_MAXIMUM})
    r.publish("", b"b", qos=1, props={"TopicAlias": TOPIC_ALIAS_MAXIMUM})
    assert [m.payload for m in sub.get_many(2)] == [b"a", b"b"]


def test_topic_alias_above_maximum_disconnects(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid)
    r.send(publish_packet(f"{uid}/x", b"x", qos=0, props={"TopicAlias": TOPIC_ALIAS_MAXIMUM + 1}))
    r.expect_disconnect(RC_TOPIC_ALIAS_INVALID)


def test_topic_alias_zero_disconnects(port, raw, uid):
    """Alias 0 is not permitted [MQTT-3.3.2-8]; the spec names no reason code: 0x94 or 0x82."""
    r = raw(port, V5)
    r.connect(uid)
    r.send(publish_packet(f"{uid}/x", b"x", qos=0, props={"TopicAlias": 0}))
    r.expect_disconnect({RC_TOPIC_ALIAS_INVALID, RC_PROTOCOL_ERROR})


def test_unknown_topic_alias_with_empty_topic_is_protocol_error(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid)
    r.send(publish_packet("", b"x", qos=0, props={"TopicAlias": 2}))
    r.expect_disconnect(RC_PROTOCOL_ERROR)


def test_empty_topic_without_alias_is_protocol_error(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid)
    r.send(publish_packet("", b"x", qos=1, pid=1))
    r.expect_disconnect(RC_PROTOCOL_ERROR)


def test_topic_aliases_do_not_survive_reconnect(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid, clean=False, props={"SessionExpiryInterval": 60})
    r.publish(f"{uid}/x", b"x", qos=1, props={"TopicAlias": 1})
    r.disconnect()
    r2 = raw(port, V5)
    r2.connect(uid, clean=False, props={"SessionExpiryInterval": 60})
    r2.send(publish_packet("", b"x", qos=0, props={"TopicAlias": 1}))
    r2.expect_disconnect(RC_PROTOCOL_ERROR)


# ---------------------------------------------------------------- topic aliases, server -> client

def test_server_topic_aliases_resolve_correctly(port, raw, client, uid):
    r = raw(port, V5)
    r.connect(uid, props={"TopicAliasMaximum": 2})
    r.subscribe(f"{uid}/#", 0)
    pub = client(port, V5)
    topics = [f"{uid}/alpha/aaaaaaaaaaaaaaaaaaaa", f"{uid}/beta/bbbbbbbbbbbbbbbbbbbbb", f"{uid}/gamma/ggggggggggggg"]
    sent = []
    for round_ in range(4):
        for t in topics:
            payload = f"{t}|{round_}".encode()
            pub.publish(t, payload, qos=0)
            sent.append((t, payload))
    aliases: dict[int, str] = {}
    received = []
    for _ in sent:
        p = r.recv_type(PUBLISH)
        alias = p.props.get("TopicAlias")
        if alias is not None:
            assert 1 <= alias <= 2, f"alias {alias} outside the client's Topic Alias Maximum 2"
            if p.topic:
                aliases[alias] = p.topic
            else:
                assert alias in aliases, f"server used alias {alias} before defining it"
        topic = p.topic or aliases[alias]
        received.append((topic, p.payload))
    assert received == sent


def test_no_server_topic_alias_without_client_maximum(port, raw, client, uid):
    r = raw(port, V5)
    r.connect(uid)  # no Topic Alias Maximum property: 0
    r.subscribe(f"{uid}/#", 0)
    pub = client(port, V5)
    for i in range(5):
        pub.publish(f"{uid}/same/topic", str(i).encode(), qos=0)
    for i in range(5):
        p = r.recv_type(PUBLISH)
        assert p.topic == f"{uid}/same/topic"
        assert "TopicAlias" not in p.props


# ---------------------------------------------------------------- message expiry

def test_message_expiry_forwarded_live(port, client, uid):
    sub = client(port, V5)
    sub.subscribe(f"{uid}/e", 1)
    pub = client(port, V5)
    pub.publish(f"{uid}/e", b"x", qos=1, props={"MessageExpiryInterval": 60})
    pub.publish(f"{uid}/e", b"y", qos=1)
    a, b = sub.get_many(2)
    assert 0 < a.props.get("MessageExpiryInterval", -1) <= 60
    assert "MessageExpiryInterval" not in b.props, "no expiry in, no expiry out"


def test_queued_message_expires_and_remaining_is_decremented(port, client, uid):
    sub = client(port, V5, client_id=f"{uid}-s", clean=False, connect_props={"SessionExpiryInterval": 300})
    sub.subscribe(f"{uid}/q", 1)
    sub.disconnect()
    pub = client(port, V5)
    pub.publish(f"{uid}/q", b"short", qos=1, props={"MessageExpiryInterval": 1})
    pub.publish(f"{uid}/q", b"long", qos=1, props={"MessageExpiryInterval": 30})
    pub.publish(f"{uid}/q", b"forever", qos=1)
    time.sleep(2.2)
    sub2 = client(port, V5, client_id=f"{uid}-s", clean=False, connect_props={"SessionExpiryInterval": 300})
    got = sub2.get_many(2)
    sub2.expect_none(0.3)
    assert [m.payload for m in got] == [b"long", b"forever"]
    assert 1 <= got[0].props["MessageExpiryInterval"] <= 28, got[0].props
    assert "MessageExpiryInterval" not in got[1].props


# ---------------------------------------------------------------- pass-through

@pytest.mark.parametrize("qos", [0, 1, 2])
def test_properties_passed_through_unchanged(port, client, uid, qos):
    sub = client(port, V5)
    sub.subscribe(f"{uid}/p", 2)
    pub = client(port, V5)
    pub.publish(f"{uid}/p", b'{"k": 1}', qos=qos, props=PASS_THROUGH)
    m = sub.get()
    for k, v in PASS_THROUGH.items():
        assert m.props.get(k) == v, (k, m.props.get(k))
    assert "TopicAlias" not in m.props and "SubscriptionIdentifier" not in m.props


def test_user_property_order_and_duplicates_raw(port, raw, uid):
    sub = raw(port, V5)
    sub.connect(f"{uid}-s")
    sub.subscribe(f"{uid}/u", 1)
    pub = raw(port, V5)
    pub.connect(f"{uid}-p")
    ups = [("z", "1"), ("a", "2"), ("z", "1"), ("", ""), ("k", "x" * 300)]
    pub.publish(f"{uid}/u", b"x", qos=1, props={"UserProperty": ups})
    p = sub.recv_publish()
    assert p.props.get("UserProperty") == ups


def test_request_response_pattern(port, client, uid):
    responder = client(port, V5)
    responder.subscribe(f"{uid}/req", 1)
    requester = client(port, V5)
    requester.subscribe(f"{uid}/resp/+", 1)
    requester.publish(f"{uid}/req", b"ping", qos=1,
                      props={"ResponseTopic": f"{uid}/resp/1", "CorrelationData": b"id-42"})
    req = responder.get()
    responder.publish(req.props["ResponseTopic"], b"pong", qos=1,
                      props={"CorrelationData": req.props["CorrelationData"]})
    resp = requester.get()
    assert (resp.topic, resp.payload, resp.props.get("CorrelationData")) == (f"{uid}/resp/1", b"pong", b"id-42")


def test_v5_message_with_properties_reaches_v311_subscriber(port, client, uid):
    sub = client(port, V311)
    sub.subscribe(f"{uid}/x", 1)
    pub = client(port, V5)
    pub.publish(f"{uid}/x", b"plain", qos=1, props=PASS_THROUGH)
    m = sub.get()
    assert (m.payload, m.props) == (b"plain", {})


# ---------------------------------------------------------------- Receive Maximum flow control

@pytest.mark.parametrize("qos", [1, 2])
def test_server_respects_client_receive_maximum(port, raw, client, uid, qos):
    r = raw(port, V5)
    r.connect(uid, props={"ReceiveMaximum": 2})
    r.subscribe(f"{uid}/f", qos)
    pub = client(port, V5)
    for i in range(5):
        pub.publish(f"{uid}/f", str(i).encode(), qos=qos)
    first = [r.recv_type(PUBLISH), r.recv_type(PUBLISH)]
    r.expect_nothing(0.5)  # two unacknowledged: the server must wait
    got = list(first)
    # acknowledge one at a time: each completed ack frees exactly one slot
    pending = list(first)
    while len(got) < 5:
        p = pending.pop(0)
        r.ack(p)
        nxt = r.recv_type(PUBLISH)
        got.append(nxt)
        pending.append(nxt)
    for p in pending:
        r.ack(p)
    assert [int(p.payload) for p in got] == list(range(5))
    r.expect_nothing(0.3)


def test_qos0_not_limited_by_receive_maximum(port, raw, client, uid):
    r = raw(port, V5)
    r.connect(uid, props={"ReceiveMaximum": 1})
    r.subscribe(f"{uid}/z", 1)
    pub = client(port, V5)
    pub.publish(f"{uid}/z", b"q1", qos=1)
    p = r.recv_type(PUBLISH)  # now the one slot is taken
    for i in range(3):
        pub.publish(f"{uid}/z", str(i).encode(), qos=0)
    zeros = [r.recv_type(PUBLISH) for _ in range(3)]
    assert [z.qos for z in zeros] == [0, 0, 0]
    r.ack(p)


def test_client_exceeding_server_receive_maximum_is_disconnected(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid)
    # QoS 2 PUBLISHes stay unacknowledged (no PUBCOMP) until we send PUBREL
    for pid in range(1, RECEIVE_MAXIMUM + 1):
        r.send(publish_packet(f"{uid}/rm", b"x", qos=2, pid=pid))
        assert r.recv_type(PUBREC).pid == pid
    r.send(publish_packet(f"{uid}/rm", b"x", qos=2, pid=RECEIVE_MAXIMUM + 1))
    r.expect_disconnect(RC_RECEIVE_MAX_EXCEEDED)


def test_client_within_server_receive_maximum_is_fine(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid)
    for pid in range(1, RECEIVE_MAXIMUM + 1):
        r.send(publish_packet(f"{uid}/rm", b"x", qos=2, pid=pid))
        assert r.recv_type(PUBREC).pid == pid
    for pid in range(1, RECEIVE_MAXIMUM + 1):
        r.send(ack_packet(PUBREL, pid))
        assert r.recv_type(PUBCOMP).pid == pid
    r.send(publish_packet(f"{uid}/rm", b"x", qos=1, pid=100))
    assert r.recv_type(PUBACK).pid == 100


# ---------------------------------------------------------------- Maximum Packet Size

def test_server_drops_messages_larger_than_client_maximum(port, raw, client, uid):
    r = raw(port, V5)
    r.connect(uid, props={"MaximumPacketSize": 512})
    r.subscribe(f"{uid}/m", 1)
    pub = client(port, V5)
    pub.publish(f"{uid}/m", b"x" * 1000, qos=1)
    pub.publish(f"{uid}/m", b"small", qos=1)
    p = r.recv_publish()
    assert p.payload == b"small", "the too-large message is discarded, not sent"
    r.expect_nothing(0.3)
    r.ping()


def test_packet_at_exact_maximum_accepted(port, raw, client, uid):
    sub = client(port, V5)
    sub.subscribe(f"{uid}/exact", 1)
    r = raw(port, V5)
    r.connect(uid)
    topic = f"{uid}/exact"
    # size = 1 (header) + len(varint(remaining)) + remaining; remaining = 2+len(topic)+2+1+payload
    overhead = 2 + len(topic) + 2 + 1
    payload_len = MAX_PACKET_SIZE - 1 - 2 - overhead  # remaining length < 16384 needs 2 bytes
    pkt = publish_packet(topic, b"e" * payload_len, qos=1, pid=5)
    assert len(pkt) == MAX_PACKET_SIZE
    r.send(pkt)
    assert r.recv_type(PUBACK).pid == 5
    assert len(sub.get().payload) == payload_len


def test_packet_over_maximum_disconnected_with_0x95(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid)
    r.send(publish_packet(f"{uid}/big", b"b" * MAX_PACKET_SIZE, qos=0))
    r.expect_disconnect(0x95)


def test_v311_packet_over_maximum_closed(port, raw, uid):
    r = raw(port, V311)
    r.connect(uid)
    r.send(publish_packet(f"{uid}/big", b"b" * MAX_PACKET_SIZE, qos=0, version=V311))
    r.expect_disconnect(None)
