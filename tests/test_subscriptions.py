"""Subscriptions: wildcards, $-topics, shared subscriptions, 5.0 subscription options,
subscription identifiers, unsubscribe and the deny list."""

from __future__ import annotations

import collections
import time

import pytest

from helpers import V5, V311, VERSION_IDS, VERSIONS
from mqtt_raw import RC_NO_SUBSCRIPTION_EXISTED, sub_options, subscribe_packet

BROKER_CONFIG = {"mqtt": {"deny_subscribe": ["denied/#", "secret"]}}

pv = pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)

# (filter, topic, matches) relative to a unique prefix P
WILDCARD_CASES = [
    ("P/a/b", "P/a/b", True),
    ("P/a/b", "P/a/c", False),
    ("P/a/B", "P/a/b", False),  # case sensitive
    ("P/a/+", "P/a/b", True),
    ("P/a/+", "P/a/b/c", False),
    ("P/a/+", "P/a", False),
    ("P/a/+", "P/a/", True),  # empty last level
    ("P/+/c", "P/b/c", True),
    ("P/+/c", "P//c", True),  # empty middle level
    ("P/a/#", "P/a", True),  # '#' includes the parent level
    ("P/a/#", "P/a/b/c/d", True),
    ("P/a/#", "P/ab", False),
    ("P/+/#", "P/x", True),
    ("P/+/+", "P/x", False),
    ("P/a/b/", "P/a/b", False),  # trailing slash is an extra empty level
    ("P/#", "P/any/thing", True),
]


@pv
def test_wildcard_matching(port, client, uid, version):
    subs = []
    for f, _, _ in WILDCARD_CASES:
        c = client(port, version)
        assert c.subscribe(f.replace("P", uid, 1), 1) == [1]
        subs.append(c)
    pub = client(port, version)
    topics = sorted({t for _, t, _ in WILDCARD_CASES})
    for t in topics:
        pub.publish(t.replace("P", uid, 1), t.encode(), qos=1)
    received = {}
    for c, (f, _, _) in zip(subs, WILDCARD_CASES):
        expected = {t for t in topics if topic_matches(f, t)}
        received[f] = c.get_many(len(expected), timeout=5) if expected else []
    time.sleep(0.3)  # let any wrongly routed message arrive
    for c, (f, _, _) in zip(subs, WILDCARD_CASES):
        got = received[f] + c.drain(0.0)
        expected = {t for t in topics if topic_matches(f, t)}
        assert sorted(m.payload.decode() for m in got) == sorted(expected), f"filter {f}"


def topic_matches(flt: str, topic: str) -> bool:
    """Reference matcher (no $ rules: none of the table topics start with $)."""
    fl, tl = flt.split("/"), topic.split("/")
    for i, part in enumerate(fl):
        if part == "#":
            return True
        if i >= len(tl):
            return False
        if part != "+" and part != tl[i]:
            return False
    return len(fl) == len(tl)


def test_reference_matcher_agrees_with_table():
    for f, t, want in WILDCARD_CASES:
        assert topic_matches(f, t) == want, (f, t)


@pv
def test_root_wildcards_do_not_match_dollar_topics(broker_factory, client, version):
    port = broker_factory({}).port  # own broker: no retained messages of other tests, no deny list
    hash_all = client(port, version)
    hash_all.subscribe("#", 1)
    plus = client(port, version)
    plus.subscribe("+/sys/x", 1)
    plus_hash = client(port, version)
    plus_hash.subscribe("+/#", 1)
    dollar = client(port, version)
    dollar.subscribe("$test/#", 1)
    dollar_plus = client(port, version)
    dollar_plus.subscribe("$test/+/x", 1)
    pub = client(port, version)
    pub.publish("$test/sys/x", b"dollar", qos=1)
    pub.publish("norm/sys/x", b"normal", qos=1)
    for c in (hash_all, plus, plus_hash):
        got = [m.topic for m in c.get_many(1)] + [m.topic for m in c.drain(0.3)]
        assert got == ["norm/sys/x"], got
    assert dollar.get().topic == "$test/sys/x"
    assert dollar_plus.get().topic == "$test/sys/x"
    dollar.expect_none(0.1)


@pv
def test_retained_dollar_topic_not_sent_to_root_wildcard(broker_factory, client, version):
    port = broker_factory({}).port
    pub = client(port, version)
    pub.publish("$state/a", b"d", qos=1, retain=True)
    pub.publish("state/a", b"n", qos=1, retain=True)
    c = client(port, version)
    c.subscribe("#", 1)
    got = [c.get()] + c.drain(0.3)
    assert [m.topic for m in got] == ["state/a"]
    d = client(port, version)
    d.subscribe("$state/+", 1)
    assert d.get().topic == "$state/a"


# ---------------------------------------------------------------- shared subscriptions

@pv
def test_shared_subscription_load_balanced(port, client, uid, version):
    members = [client(port, version) for _ in range(2)]
    for m in members:
        assert m.subscribe(f"$share/g1/{uid}/work", 1) == [1]
    normal = client(port, version)
    normal.subscribe(f"{uid}/work", 1)
    pub = client(port, version)
    n = 20
    for i in range(n):
        pub.publish(f"{uid}/work", str(i).encode(), qos=1)
    assert len(normal.get_many(n)) == n
    got = [m.drain(1.0) for m in members]
    counts = [len(g) for g in got]
    payloads = [m.payload for g in got for m in g]
    assert sorted(payloads, key=int) == [str(i).encode() for i in range(n)], (
        f"each message goes to exactly one group member; counts={counts}"
    )
    assert all(c > 0 for c in counts), f"load must be spread over members: {counts}"
    for g in got:
        assert all(m.topic == f"{uid}/work" for m in g), "the shared message keeps its real topic"


@pv
def test_two_share_groups_each_get_every_message(port, client, uid, version):
    g1 = client(port, version)
    g1.subscribe(f"$share/a/{uid}/t", 1)
    g2 = client(port, version)
    g2.subscribe(f"$share/b/{uid}/t", 1)
    pub = client(port, version)
    for i in range(5):
        pub.publish(f"{uid}/t", str(i).encode(), qos=1)
    assert len(g1.get_many(5)) == 5
    assert len(g2.get_many(5)) == 5


@pv
def test_shared_subscription_with_wildcard(port, client, uid, version):
    m = client(port, version)
    m.subscribe(f"$share/w/{uid}/+/temp", 1)
    pub = client(port, version)
    pub.publish(f"{uid}/k/temp", b"1", qos=1)
    pub.publish(f"{uid}/k/hum", b"2", qos=1)
    assert m.get().topic == f"{uid}/k/temp"
    m.expect_none(0.3)


@pv
def test_shared_group_member_leaving(port, client, uid, version):
    a = client(port, version)
    b = client(port, version)
    a.subscribe(f"$share/g/{uid}/l", 1)
    b.subscribe(f"$share/g/{uid}/l", 1)
    a.disconnect()
    pub = client(port, version)
    for i in range(6):
        pub.publish(f"{uid}/l", str(i).encode(), qos=1)
    assert len(b.get_many(6)) == 6


@pv
def test_unsubscribe_shared(port, client, uid, version):
    a = client(port, version)
    a.subscribe(f"$share/g/{uid}/u", 1)
    a.unsubscribe(f"$share/g/{uid}/u")
    pub = client(port, version)
    pub.publish(f"{uid}/u", b"x", qos=1)
    a.expect_none(0.4)


def test_v5_retained_not_sent_on_shared_subscribe(port, client, uid):
    pub = client(port, V5)
    pub.publish(f"{uid}/rs", b"ret", qos=1, retain=True)
    m = client(port, V5)
    m.subscribe(f"$share/g/{uid}/rs", 1)
    m.expect_none(0.5)


# ---------------------------------------------------------------- 5.0 subscription options

def test_v5_no_local(port, client, uid):
    me = client(port, V5)
    me.subscribe(f"{uid}/nl", 1, no_local=True)
    me.publish(f"{uid}/nl", b"mine", qos=1)
    other = client(port, V5)
    other.publish(f"{uid}/nl", b"theirs", qos=1)
    got = [me.get()] + me.drain(0.3)
    assert [m.payload for m in got] == [b"theirs"]


def test_v5_without_no_local_gets_own_messages(port, client, uid):
    me = client(port, V5)
    me.subscribe(f"{uid}/own", 1)
    me.publish(f"{uid}/own", b"mine", qos=1)
    assert me.get().payload == b"mine"


@pytest.mark.parametrize("rap", [False, True], ids=["rap0", "rap1"])
def test_v5_retain_as_published(port, client, uid, rap):
    sub = client(port, V5)
    sub.subscribe(f"{uid}/rap", 1, retain_as_published=rap)
    pub = client(port, V5)
    pub.publish(f"{uid}/rap", b"r", qos=1, retain=True)
    pub.publish(f"{uid}/rap", b"n", qos=1, retain=False)
    a, b = sub.get_many(2)
    assert (a.payload, a.retain) == (b"r", rap)
    assert (b.payload, b.retain) == (b"n", False)


def test_v5_retain_handling_0_sends_on_every_subscribe(port, client, uid):
    client(port, V5).publish(f"{uid}/rh", b"r", qos=1, retain=True)
    sub = client(port, V5)
    sub.subscribe(f"{uid}/rh", 1, retain_handling=0)
    assert sub.get().payload == b"r"
    sub.subscribe(f"{uid}/rh", 1, retain_handling=0)
    assert sub.get().payload == b"r"


def test_v5_retain_handling_1_sends_only_for_new_subscription(port, client, uid):
    client(port, V5).publish(f"{uid}/rh1", b"r", qos=1, retain=True)
    sub = client(port, V5)
    sub.subscribe(f"{uid}/rh1", 1, retain_handling=1)
    m = sub.get()
    assert (m.payload, m.retain) == (b"r", True)
    sub.subscribe(f"{uid}/rh1", 1, retain_handling=1)
    sub.expect_none(0.5)


def test_v5_retain_handling_2_never_sends(port, client, uid):
    client(port, V5).publish(f"{uid}/rh2", b"r", qos=1, retain=True)
    sub = client(port, V5)
    sub.subscribe(f"{uid}/rh2", 1, retain_handling=2)
    sub.expect_none(0.5)
    # live messages still arrive
    client(port, V5).publish(f"{uid}/rh2", b"live", qos=1)
    assert sub.get().payload == b"live"


def test_v5_raw_subscription_options_byte(port, raw, client, uid):
    """Options byte with no-local + RAP + retain handling 2 is accepted as-is."""
    r = raw(port, V5)
    r.connect(uid)
    ack = r.subscribe([(f"{uid}/ob", sub_options(qos=2, no_local=True, rap=True, rh=2))])
    assert ack.reasons == [2]


def test_v5_reserved_subscription_option_bits_rejected(port, raw, uid):
    """Bits 6-7 of the options byte are reserved: Malformed Packet."""
    r = raw(port, V5)
    r.connect(uid)
    r.send(subscribe_packet([(f"{uid}/bad", 0xC1)], 1, V5))
    r.expect_disconnect({0x81})


# ---------------------------------------------------------------- subscription identifiers

def test_v5_subscription_identifier_on_delivery(port, client, uid):
    sub = client(port, V5)
    sub.subscribe(f"{uid}/sid/a", 1, props={"SubscriptionIdentifier": 5})
    sub.subscribe(f"{uid}/sid/+", 1, props={"SubscriptionIdentifier": 7})
    plain = client(port, V5)
    plain.subscribe(f"{uid}/sid/a", 1)
    pub = client(port, V5)
    pub.publish(f"{uid}/sid/a", b"both", qos=1)
    pub.publish(f"{uid}/sid/b", b"one", qos=1)
    got = sub.drain(1.0)
    ids_for = collections.defaultdict(set)
    for m in got:
        ids_for[m.payload].update(m.props.get("SubscriptionIdentifier", []))
    assert ids_for[b"both"] == {5, 7}
    assert ids_for[b"one"] == {7}
    pm = plain.get()
    assert "SubscriptionIdentifier" not in pm.props


def test_v5_subscription_identifier_on_retained_delivery(port, client, uid):
    client(port, V5).publish(f"{uid}/sidr", b"r", qos=1, retain=True)
    sub = client(port, V5)
    sub.subscribe(f"{uid}/sidr", 1, props={"SubscriptionIdentifier": 268435455})
    m = sub.get()
    assert m.props.get("SubscriptionIdentifier") == [268435455]


def test_v5_subscription_identifier_zero_is_protocol_error(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid)
    r.send(subscribe_packet([(f"{uid}/z", 1)], 1, V5, props={"SubscriptionIdentifier": 0}))
    r.expect_disconnect({0x82})


def test_v5_subscription_identifier_updated_on_resubscribe(port, client, uid):
    sub = client(port, V5)
    sub.subscribe(f"{uid}/re", 1, props={"SubscriptionIdentifier": 1})
    sub.subscribe(f"{uid}/re", 1, props={"SubscriptionIdentifier": 2})
    client(port, V5).publish(f"{uid}/re", b"x", qos=1)
    m = sub.get()
    assert m.props.get("SubscriptionIdentifier") == [2]
    sub.expect_none(0.3)


# ---------------------------------------------------------------- unsubscribe

@pv
def test_unsubscribe_stops_delivery(port, client, uid, version):
    sub = client(port, version)
    sub.subscribe(f"{uid}/un", 1)
    rcs = sub.unsubscribe(f"{uid}/un")
    if version == V5:
        assert rcs == [0]
    client(port, version).publish(f"{uid}/un", b"x", qos=1)
    sub.expect_none(0.4)


def test_v5_unsubscribe_unknown_filter_reason(port, raw, uid):
    r = raw(port, V5)
    r.connect(uid)
    r.subscribe(f"{uid}/known", 1)
    ack = r.unsubscribe([f"{uid}/known", f"{uid}/unknown"])
    assert ack.reasons == [0x00, RC_NO_SUBSCRIPTION_EXISTED]


def test_v311_unsuback_has_no_payload(port, raw, uid):
    r = raw(port, V311)
    r.connect(uid)
    r.subscribe(f"{uid}/x", 1)
    ack = r.unsubscribe([f"{uid}/x"])
    assert ack.body == ack.pid.to_bytes(2, "big")


@pv
def test_multiple_filters_in_one_subscribe(port, raw, client, uid, version):
    r = raw(port, version)
    r.connect(uid)
    ack = r.subscribe([(f"{uid}/m0", 0), (f"{uid}/m1", 1), (f"{uid}/m2", 2)])
    assert ack.reasons == [0, 1, 2]
    pub = client(port, version)
    for i in range(3):
        pub.publish(f"{uid}/m{i}", b"x", qos=2)
    qos = sorted(r.recv_publish().qos for _ in range(3))
    assert qos == [0, 1, 2]


# ---------------------------------------------------------------- deny list (config)

@pytest.mark.myriad_only
@pv
def test_denied_filter_refused(port, raw, client, uid, version):
    r = raw(port, version)
    r.connect(uid)
    ack = r.subscribe([(f"{uid}/fine", 1), ("denied/#", 1), ("secret", 0)])
    refused = 0x80  # the config deny list answers Unspecified error in both versions
    assert ack.reasons == [1, refused, refused]
    pub = client(port, version)
    pub.publish("denied/x", b"no", qos=1)
    pub.publish("secret", b"no", qos=1)
    pub.publish(f"{uid}/fine", b"yes", qos=1)
    p = r.recv_publish()
    assert p.payload == b"yes"
    r.expect_nothing(0.4)


@pytest.mark.myriad_only
@pv
def test_denied_filter_paho(port, client, version):
    c = client(port, version)
    assert c.subscribe("denied/#", 1) == [0x80]


@pytest.mark.myriad_only
@pv
@pytest.mark.parametrize("flt", ["denied/x", "denied/+/y", "$share/g/denied/x"])
def test_filters_inside_a_denied_one_refused(port, client, version, flt):
    """A narrower filter must not bypass the deny list."""
    c = client(port, version)
    assert c.subscribe(flt, 1) == [0x80]


@pytest.mark.myriad_only
@pv
@pytest.mark.parametrize("flt", ["#", "+/x"])
def test_wider_filters_granted_but_denied_topics_withheld(port, client, uid, version, flt):
    """A wider filter is granted (as a read ACL would), yet never carries denied topics."""
    c = client(port, version)
    assert c.subscribe(flt, 1) == [1]
    pub = client(port, version)
    pub.publish("denied/x", b"no", qos=1)
    pub.publish("secret", b"no", qos=1)
    pub.publish(f"{uid}/x", b"yes", qos=1)
    got = [m.payload for m in c.drain(0.5) if m.topic in ("denied/x", "secret", f"{uid}/x")]
    assert got == [b"yes"]


@pytest.mark.myriad_only
@pv
def test_publishing_to_denied_topic_still_allowed(port, raw, client, uid, version):
    """The deny list is about SUBSCRIBE only; a publish to such a topic is accepted."""
    r = raw(port, version)
    r.connect(uid)
    r.publish("denied/pub", b"x", qos=1)
    r.ping()
