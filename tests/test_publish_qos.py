"""QoS 0/1/2 in both directions, for 3.1.1 and 5.0."""

from __future__ import annotations

import pytest

from helpers import V5, V311, VERSION_IDS, VERSIONS
from mqtt_raw import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RC_NO_MATCHING_SUBSCRIBERS,
    ack_packet,
    publish_packet,
)

pv = pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)


@pv
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_delivered_qos_is_min_of_publish_and_subscription(port, client, uid, version, pub_qos, sub_qos):
    sub = client(port, version)
    pub = client(port, version)
    assert sub.subscribe(f"{uid}/q", sub_qos) == [sub_qos]
    pub.publish(f"{uid}/q", f"qos{pub_qos}".encode(), qos=pub_qos)
    m = sub.get()
    assert m.topic == f"{uid}/q"
    assert m.payload == f"qos{pub_qos}".encode()
    assert m.qos == min(pub_qos, sub_qos)
    assert m.retain is False
    sub.expect_none(0.2)


@pv
@pytest.mark.parametrize("qos", [1, 2])
def test_many_messages_arrive_once_and_in_order(port, client, uid, version, qos):
    sub = client(port, version)
    pub = client(port, version)
    sub.subscribe(f"{uid}/seq", qos)
    n = 100
    for i in range(n):
        pub.publish(f"{uid}/seq", str(i).encode(), qos=qos, wait=False)
    got = sub.get_many(n, timeout=15)
    assert [int(m.payload) for m in got] == list(range(n))
    sub.expect_none(0.2)


@pv
def test_large_payload(port, client, uid, version):
    sub = client(port, version)
    pub = client(port, version)
    sub.subscribe(f"{uid}/big", 1)
    payload = bytes(range(256)) * 1024  # 256 KiB
    pub.publish(f"{uid}/big", payload, qos=1)
    assert sub.get(10).payload == payload


@pv
def test_empty_and_binary_payloads(port, client, uid, version):
    sub = client(port, version)
    pub = client(port, version)
    sub.subscribe(f"{uid}/bin", 2)
    pub.publish(f"{uid}/bin", b"", qos=1)
    pub.publish(f"{uid}/bin", bytes(range(256)), qos=2)
    a, b = sub.get_many(2)
    assert a.payload == b""
    assert b.payload == bytes(range(256))


@pv
def test_fan_out_to_many_subscribers(port, client, uid, version):
    subs = [client(port, version) for _ in range(5)]
    for s in subs:
        s.subscribe(f"{uid}/fan", 1)
    pub = client(port, version)
    pub.publish(f"{uid}/fan", b"all", qos=1)
    for s in subs:
        assert s.get().payload == b"all"


@pv
def test_non_matching_subscriber_gets_nothing(port, client, uid, version):
    sub = client(port, version)
    sub.subscribe(f"{uid}/a", 1)
    pub = client(port, version)
    pub.publish(f"{uid}/b", b"x", qos=1)
    sub.expect_none(0.3)


@pv
def test_mixed_versions_interoperate(port, client, uid, version):
    other = V311 if version == V5 else V5
    sub = client(port, other)
    sub.subscribe(f"{uid}/mix", 2)
    pub = client(port, version)
    pub.publish(f"{uid}/mix", b"cross", qos=2)
    m = sub.get()
    assert (m.payload, m.qos) == (b"cross", 2)


@pv
def test_overlapping_subscriptions_deliver_at_max_qos(port, client, uid, version):
    sub = client(port, version)
    sub.subscribe(f"{uid}/#", 0)
    sub.subscribe(f"{uid}/o/x", 2)
    pub = client(port, version)
    pub.publish(f"{uid}/o/x", b"ov", qos=2)
    got = [sub.get()] + sub.drain(0.3)
    assert 1 <= len(got) <= 2
    assert max(m.qos for m in got) == 2


@pv
def test_resubscribe_replaces_qos(port, client, uid, version):
    sub = client(port, version)
    assert sub.subscribe(f"{uid}/r", 0) == [0]
    assert sub.subscribe(f"{uid}/r", 2) == [2]
    pub = client(port, version)
    pub.publish(f"{uid}/r", b"once", qos=2)
    m = sub.get()
    assert m.qos == 2
    sub.expect_none(0.3)  # one subscription, one copy


# ---------------------------------------------------------------- raw protocol flows

@pv
def test_qos1_inbound_puback(port, raw, uid, version):
    r = raw(port, version)
    r.connect(uid)
    r.send(publish_packet(f"{uid}/p1", b"x", qos=1, pid=4242, version=version))
    ack = r.recv_type(PUBACK)
    assert ack.pid == 4242


@pv
def test_qos2_inbound_is_exactly_once_even_with_duplicate_publish(port, raw, client, uid, version):
    sub = client(port, version)
    sub.subscribe(f"{uid}/eo", 2)
    r = raw(port, version)
    r.connect(uid)
    r.send(publish_packet(f"{uid}/eo", b"once", qos=2, pid=7, version=version))
    assert r.recv_type(PUBREC).pid == 7
    # the client did not see the PUBREC, so it re-sends the PUBLISH with DUP
    r.send(publish_packet(f"{uid}/eo", b"once", qos=2, pid=7, dup=True, version=version))
    assert r.recv_type(PUBREC).pid == 7
    r.send(ack_packet(PUBREL, 7, version))
    assert r.recv_type(PUBCOMP).pid == 7
    assert sub.get().payload == b"once"
    sub.expect_none(0.5)
    # the packet id is free again: a new message with id 7 is a new message
    r.publish(f"{uid}/eo", b"again", qos=2, pid=7)
    assert sub.get().payload == b"again"


@pv
def test_qos2_pubrel_for_unknown_id_gets_pubcomp(port, raw, uid, version):
    r = raw(port, version)
    r.connect(uid)
    r.send(ack_packet(PUBREL, 999, version))
    comp = r.recv_type(PUBCOMP)
    assert comp.pid == 999
    if version == V5:
        assert comp.reason in (0x00, 0x92), comp  # 0x92 Packet Identifier not found


@pv
def test_qos1_outbound_has_packet_id_and_expects_puback(port, raw, client, uid, version):
    r = raw(port, version)
    r.connect(uid)
    r.subscribe(f"{uid}/o1", 1)
    pub = client(port, version)
    pub.publish(f"{uid}/o1", b"a", qos=1)
    p = r.recv_type(PUBLISH)
    assert p.qos == 1 and p.pid and p.pid > 0 and not p.dup
    r.send(ack_packet(PUBACK, p.pid, version))
    pub.publish(f"{uid}/o1", b"b", qos=1)
    p2 = r.recv_type(PUBLISH)
    assert p2.payload == b"b" and p2.pid > 0
    r.send(ack_packet(PUBACK, p2.pid, version))
    r.ping()


@pv
def test_qos2_outbound_flow(port, raw, client, uid, version):
    r = raw(port, version)
    r.connect(uid)
    r.subscribe(f"{uid}/o2", 2)
    pub = client(port, version)
    pub.publish(f"{uid}/o2", b"two", qos=2)
    p = r.recv_type(PUBLISH)
    assert p.qos == 2 and p.pid > 0 and p.payload == b"two"
    r.send(ack_packet(PUBREC, p.pid, version))
    rel = r.recv_type(PUBREL)
    assert rel.pid == p.pid
    assert rel.flags == 0x02, "PUBREL fixed header flags are 0010"
    r.send(ack_packet(PUBCOMP, p.pid, version))
    r.ping()


def test_v5_puback_reason_when_nobody_subscribed(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid)
    r.send(publish_packet(f"{uid}/nobody", b"x", qos=1, pid=3, version=V5))
    ack = r.recv_type(PUBACK)
    assert ack.reason in (0x00, RC_NO_MATCHING_SUBSCRIBERS), ack


def test_v5_pubrec_reason_when_nobody_subscribed(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid)
    r.send(publish_packet(f"{uid}/nobody2", b"x", qos=2, pid=3, version=V5))
    rec = r.recv_type(PUBREC)
    assert rec.reason in (0x00, RC_NO_MATCHING_SUBSCRIBERS), rec
    r.send(ack_packet(PUBREL, 3, V5))
    assert r.recv_type(PUBCOMP).pid == 3


@pv
def test_qos0_publish_gets_no_ack(port, raw, uid, version):
    r = raw(port, version)
    r.connect(uid)
    r.send(publish_packet(f"{uid}/q0", b"x", qos=0, version=version))
    r.expect_nothing(0.3)
    r.ping()
