"""CONNECT / CONNACK, client identifiers, keep alive, PING, DISCONNECT (3.1.1 and 5.0)."""

from __future__ import annotations

import time

import pytest

from helpers import V5, V311, VERSION_IDS, VERSIONS, Client
from mqtt_raw import (
    CONNACK,
    DISCONNECT,
    PUBLISH,
    SUBACK,
    PINGREQ_PACKET,
    RC_KEEP_ALIVE_TIMEOUT,
    V3_IDENTIFIER_REJECTED,
    Closed,
    RawClient,
    connect_packet,
    publish_packet,
    subscribe_packet,
)

MAX_KEEP_ALIVE = 10
BROKER_CONFIG = {"mqtt": {"max_keep_alive_secs": MAX_KEEP_ALIVE}}

pv = pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)


@pv
def test_connect_accepted(port, client, version):
    c = client(port, version)
    rc, session_present, _ = c.connack
    assert rc == 0
    assert session_present is False


@pytest.mark.myriad_only
def test_prints_listening_line_once(broker):
    lines = [line for line in broker.stdout_lines if line.startswith("MQTT listening on")]
    assert lines == [f"MQTT listening on 127.0.0.1:{broker.port}"]


@pv
def test_raw_connect_and_ping(port, raw, version):
    r = raw(port, version)
    ack = r.connect("raw-" + str(version) + "-" + str(time.monotonic_ns()))
    assert ack.reason == 0 and ack.session_present is False
    if version == V311:
        assert ack.body == b"\x00\x00", "3.1.1 CONNACK has exactly two bytes"
    r.ping()
    r.ping()


@pv
def test_username_password_accepted_without_auth_config(port, raw, uid, version):
    r = raw(port, version)
    r.connect(uid, username="user", password=b"secret")
    r.ping()


@pv
def test_23_char_client_id_accepted(port, raw, version):
    r = raw(port, version)
    cid = ("0123456789abcdefghijKLM" + str(version))[:23]
    r.connect(cid)
    r.ping()


def test_v5_assigned_client_identifier(port, raw, uid):
    ids = set()
    for _ in range(2):
        r = raw(port, V5)
        ack = r.connect("")
        assigned = ack.props.get("AssignedClientIdentifier")
        assert assigned, f"CONNACK must carry Assigned Client Identifier: {ack!r}"
        ids.add(assigned)
        # the assigned id is usable
        r.subscribe(f"{uid}/x", 1)
        r.publish(f"{uid}/x", b"hi", qos=1)
        assert r.recv_publish().payload == b"hi"
    assert len(ids) == 2, "each client gets a distinct identifier"


def test_v5_assigned_client_identifier_paho(port, client):
    c = client(port, V5, client_id="")
    assert c.connack_props.get("AssignedClientIdentifier")


def test_v311_empty_client_id_with_clean_session_accepted(port, raw, uid):
    r = raw(port, V311)
    r.connect("", clean=True)
    r.subscribe(f"{uid}/e", 1)
    r.publish(f"{uid}/e", b"x", qos=1)
    assert r.recv_publish().payload == b"x"


def test_v311_empty_client_id_with_clean_session_paho(port, client):
    c = client(port, V311, client_id="", clean=True)
    assert c.connack[0] == 0


def test_v311_empty_client_id_without_clean_session_rejected(port, raw):
    r = raw(port, V311)
    ack = r.connect("", clean=False, expect_rc=None)
    assert ack.reason == V3_IDENTIFIER_REJECTED, f"expected CONNACK 0x02, got {ack!r}"
    assert ack.session_present is False
    r.expect_closed()


def test_v5_server_keep_alive_when_client_asks_for_more(port, raw, uid):
    r = raw(port, V5)
    ack = r.connect(uid, keepalive=MAX_KEEP_ALIVE * 6)
    assert ack.props.get("ServerKeepAlive") == MAX_KEEP_ALIVE, ack


def test_v5_server_keep_alive_when_client_asks_for_zero(port, raw, uid):
    r = raw(port, V5)
    ack = r.connect(uid, keepalive=0)
    assert ack.props.get("ServerKeepAlive") == MAX_KEEP_ALIVE, ack


def test_v5_server_keep_alive_absent_or_equal_when_within_limit(port, raw, uid):
    r = raw(port, V5)
    ack = r.connect(uid, keepalive=5)
    assert ack.props.get("ServerKeepAlive", 5) == 5, ack


def test_v5_paho_adopts_server_keep_alive(port, client):
    c = client(port, V5, keepalive=600)
    assert c.connack_props.get("ServerKeepAlive") == MAX_KEEP_ALIVE


@pv
def test_keep_alive_timeout_closes_connection(port, raw, uid, version):
    """No packet within 1.5 x keep alive: the server closes the connection."""
    r = raw(port, version)
    r.connect(uid, keepalive=1)
    start = time.monotonic()
    seen = r.expect_closed(timeout=6)
    elapsed = time.monotonic() - start
    assert elapsed >= 0.9, f"closed too early ({elapsed:.2f}s) for keep alive 1s"
    assert elapsed <= 4.0, f"closed too late ({elapsed:.2f}s) for keep alive 1s (1.5x rule)"
    for p in seen:
        assert p.type == DISCONNECT and version == V5 and p.reason == RC_KEEP_ALIVE_TIMEOUT, seen


@pv
def test_keep_alive_pings_keep_connection_open(port, raw, uid, version):
    r = raw(port, version)
    r.connect(uid, keepalive=1)
    for _ in range(6):
        time.sleep(0.5)
        r.ping()


@pv
def test_keep_alive_zero_means_no_timeout(port, raw, uid, version):
    """Keep alive 0 turns the mechanism off (3.1.1), or gets a server keep alive (5.0): either way not 1.5s."""
    r = raw(port, version)
    r.connect(uid, keepalive=0)
    time.sleep(2.0)
    r.ping()


@pv
def test_disconnect_closes_connection(port, raw, uid, version):
    r = raw(port, version)
    r.connect(uid)
    r.send(b"\xe0\x00")
    assert r.expect_closed(3) == []


@pv
def test_many_concurrent_connections(port, version, uid):
    clients = [RawClient(port, version) for _ in range(50)]
    try:
        for i, c in enumerate(clients):
            c.send(connect_packet(f"{uid}-{i}", version))
        for c in clients:
            ack = c.recv()
            assert ack.type == CONNACK and ack.reason == 0
        for c in clients:
            c.send(PINGREQ_PACKET)
        for c in clients:
            assert c.recv().name == "PINGRESP"
    finally:
        for c in clients:
            c.close()


@pv
def test_paho_round_trip(port, client, uid, version):
    a = client(port, version)
    b = client(port, version)
    assert b.subscribe(f"{uid}/hello", 1) == [1]
    a.publish(f"{uid}/hello", b"world", qos=1)
    m = b.get()
    assert (m.topic, m.payload, m.qos) == (f"{uid}/hello", b"world", 1)


def test_half_open_client_does_not_block_others(port, raw, client, uid):
    """A client that sends half a CONNECT and stalls must not stop others from connecting."""
    stalled = raw(port, V5)
    stalled.send(b"\x10\x20\x00\x04MQ")
    c = client(port, V5)
    assert c.connack[0] == 0
    with pytest.raises((Closed, TimeoutError)):
        stalled.recv(0.2)


def test_client_wrapper_reports_connack(port):
    c = Client(port, version=V5)
    try:
        assert c.connack[0] == 0
    finally:
        c.close()


@pv
def test_packets_pipelined_behind_connect_are_handled(port, uid, version):
    """CONNECT, SUBSCRIBE and PUBLISH in one write: every one is answered,
    without the client having to send anything more."""
    with RawClient(port, version) as c:
        c.send(
            connect_packet(uid, version, True, 60, None, None)
            + subscribe_packet([("pipe/t", 0)], 1, version, None)
            + publish_packet("pipe/t", b"hello", 0, False, None, False, version, None)
        )
        assert c.recv_type(CONNACK, timeout=3).reason == 0
        assert c.recv_type(SUBACK, timeout=3).pid == 1
        assert c.recv_type(PUBLISH, timeout=3).payload == b"hello"
