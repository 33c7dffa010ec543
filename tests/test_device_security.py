"""Device layer security (issue 15): a device's client id belongs to its
own login, resumed sessions are held to the new login's ACL, reserved
device ids. Real clients: paho-mqtt 3.1.1 and 5.0 and raw sockets."""

from __future__ import annotations

import json

import pytest

from helpers import V311, V5, Api, Client, unique

TOKEN = "device-security-token-0123456789"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}

# paho reports the 3.1.1 return code 2 (identifier rejected) as 0x85 too.
BAD_CLIENT_ID = {V5: 0x85, V311: 0x85}


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


def session_props(version: int) -> dict | None:
    return {"SessionExpiryInterval": 300} if version == V5 else None


@pytest.mark.parametrize("version", [V5, V311])
def test_app_cannot_take_a_devices_client_id(broker, api, version):
    """Item 1: an app allowed only dash/# connecting with a device's client id
    gets 0x85, neither resumes the device's session (queued command) nor
    kicks the live device off."""
    dev, dev_pw = api.create_device("sensor")
    user, pw = api.create_app(["dash/#"], ["dash/#"])
    admin_user, admin_pw = api.create_app([], [], admin=True)
    d = Client(broker.port, client_id=dev, username=dev, password=dev_pw, version=version, clean=False,
               connect_props=session_props(version))
    assert d.subscribe(f"$commands/{dev}/#", qos=1) in ([1],)
    d.disconnect()
    with Client(broker.port, username=admin_user, password=admin_pw) as admin:
        assert admin.publish(f"$commands/{dev}/unlock", b'{"pin":"1234"}', qos=1) == 0

    # Resume attempt (clean start 0): refused, nothing delivered.
    thief = Client(broker.port, client_id=dev, username=user, password=pw, version=version, clean=False,
                   connect_props=session_props(version), expect_rc=None)
    try:
        assert thief.connack[0] == BAD_CLIENT_ID[version]
        assert not thief.connack[1], "session present for another login"
        thief.expect_none(0.3)
    finally:
        thief.close()

    # The device still gets its command.
    d = Client(broker.port, client_id=dev, username=dev, password=dev_pw, version=version, clean=False,
               connect_props=session_props(version))
    try:
        assert d.session_present
        assert d.get().payload == b'{"pin":"1234"}'
        # Clean start 1 from the app does not kick the device off.
        kicker = Client(broker.port, client_id=dev, username=user, password=pw, version=version, clean=True,
                        expect_rc=None)
        kicker.close()
        assert kicker.connack[0] == BAD_CLIENT_ID[version]
        with pytest.raises(AssertionError):
            d.wait_disconnected(0.5)
        assert d.connected
    finally:
        d.close()


def test_anonymous_client_cannot_take_a_devices_client_id(broker_factory):
    """Item 1 with anonymous access on: an anonymous client (no user name, or
    an unknown one) with a device's client id gets 0x85."""
    token = "anon-security-token-0123456789"
    b = broker_factory({"auth": {"allow_anonymous": True}, "api": {"token": token}})
    api = Api(b.api_port, token)
    dev, dev_pw = api.create_device("sensor")
    d = Client(b.port, client_id=dev, username=dev, password=dev_pw)
    try:
        for version in (V5, V311):
            for username in (None, unique("nobody")):
                c = Client(b.port, client_id=dev, username=username, password="x" if username else None,
                           version=version, clean=version == V5, expect_rc=None)
                c.close()
                assert c.connack[0] == BAD_CLIENT_ID[version], (version, username)
        assert d.connected
        # An anonymous client with its own client id is still let in.
        with Client(b.port, client_id=unique("anon")) as anon:
            assert anon.connected
    finally:
        d.close()


@pytest.mark.parametrize("version", [V5, V311])
def test_resumed_session_is_held_to_the_new_logins_acl(broker, api, version):
    """Item 1: a session built by one login and resumed by another keeps
    only the subscriptions (and queued messages) the new login may have."""
    rich_user, rich_pw = api.create_app([], ["secret/#", "dash/#"])
    poor_user, poor_pw = api.create_app([], ["dash/#"])
    admin_user, admin_pw = api.create_app([], [], admin=True)
    cid = unique("shared")
    rich = Client(broker.port, client_id=cid, username=rich_user, password=rich_pw, version=version,
                  clean=False, connect_props=session_props(version))
    assert rich.subscribe([("secret/#", 1), ("dash/#", 1)]) == [1, 1]
    rich.disconnect()
    with Client(broker.port, username=admin_user, password=admin_pw) as admin:
        assert admin.publish("secret/key", b"queued-secret", qos=1) == 0
        assert admin.publish("dash/a", b"queued-dash", qos=1) == 0
        poor = Client(broker.port, client_id=cid, username=poor_user, password=poor_pw, version=version,
                      clean=False, connect_props=session_props(version))
        try:
            assert poor.session_present
            got = poor.drain(0.5)
            assert [m.payload for m in got] == [b"queued-dash"]
            assert admin.publish("secret/key", b"live-secret", qos=1) in (0, 0x10)
            assert admin.publish("dash/a", b"live-dash", qos=1) == 0
            got = poor.drain(0.5)
            assert [m.payload for m in got] == [b"live-dash"]
        finally:
            poor.close()


def test_device_ids_with_the_app_prefix_are_refused(api):
    """Item 6: `app:` device ids could never log in as devices: 400."""
    status, body = api.call("POST", "/api/v1/devices", {"id": f"app:{unique('x')}", "password": "pw-123456"})
    assert status == 400, body
    assert "app:" in str(body)
    # Other ids with a colon are still fine.
    api.ok("POST", "/api/v1/devices", {"id": f"site:{unique('x')}", "password": "pw-123456"}, expect=201)


def test_response_topic_is_authorised_against_the_requester(broker, api):
    """Item 3: the platform publishes the answer to a `$commands/request` only
    to a Response Topic the requesting client may publish to itself."""
    dev, _ = api.create_device("sensor")
    other, _ = api.create_device("sensor")
    user, pw = api.create_app(["$commands/request", "dash/replies/#"], ["dash/#"])
    admin_user, admin_pw = api.create_app([], [], admin=True)
    with Client(broker.port, username=admin_user, password=admin_pw) as admin, \
            Client(broker.port, username=user, password=pw) as app:
        assert admin.subscribe([(f"devices/{other}/#", 1), (f"$shadow/{other}/#", 1),
                                (f"$commands/{other}/#", 1)]) == [1, 1, 1]
        request = json.dumps({"device": dev, "name": "reboot"})
        for topic in (f"devices/{other}/telemetry", f"$shadow/{other}/update/delta",
                      f"$commands/{other}/reboot", f"$commands/{other}/reply/123"):
            rc = app.publish("$commands/request", request, qos=1,
                             props={"ResponseTopic": topic, "CorrelationData": b"c1"})
            assert rc == 0x87, (topic, rc)
        admin.expect_none(0.5)
        status, body = api.call("GET", f"/api/v1/devices/{dev}/commands")
        assert status == 200 and not (body.get("items") if isinstance(body, dict) else body), body
        # A Response Topic the app may publish to works.
        assert app.subscribe("dash/replies/#", qos=1) == [1]
        assert app.publish("$commands/request", request, qos=1,
                           props={"ResponseTopic": "dash/replies/1", "CorrelationData": b"c2"}) == 0
        answer = app.get()
        assert answer.topic == "dash/replies/1" and json.loads(answer.payload)["name"] == "reboot"


@pytest.mark.parametrize("version", [V5, V311])
def test_anonymous_clients_read_no_device_data_by_default(broker_factory, version):
    """Item 5: with the default `auth.allow_anonymous = true`, an anonymous `#`
    (or `+/+/telemetry`) subscriber gets neither live nor retained device
    messages; other topics still work for it."""
    token = "anon-default-token-0123456789"
    b = broker_factory({"api": {"token": token}})
    api = Api(b.api_port, token)
    dev, dev_pw = api.create_device("sensor")
    with Client(b.port, client_id=dev, username=dev, password=dev_pw, version=version) as d:
        assert d.publish(f"devices/{dev}/secret", b"retained-secret", qos=1, retain=True) in (0, 0x10)
        with Client(b.port, version=version) as anon, Client(b.port, version=version) as pub:
            assert anon.subscribe([("#", 1), ("+/+/telemetry", 1)]) == [1, 1]
            assert d.publish(f"devices/{dev}/telemetry", b'{"t":1}', qos=1) in (0, 0x10)
            assert pub.publish("lobby/x", b"public", qos=1) == 0
            got = anon.drain(0.7)
            assert [(m.topic, m.payload) for m in got] == [("lobby/x", b"public")]
        # Queued for an offline anonymous session and resumed: still nothing.
        cid = unique("anon")
        props = {"SessionExpiryInterval": 300} if version == V5 else None
        anon = Client(b.port, client_id=cid, version=version, clean=False, connect_props=props)
        assert anon.subscribe("devices/#", qos=1) == ([0x87] if version == V5 else [0x80])
        assert anon.subscribe("#", qos=1) == [1]
        anon.disconnect()
        assert d.publish(f"devices/{dev}/telemetry", b"{\"t\":2}", qos=1) in (0, 0x10)
        anon = Client(b.port, client_id=cid, version=version, clean=False, connect_props=props)
        try:
            assert anon.session_present
            anon.expect_none(0.5)
        finally:
            anon.close()


@pytest.mark.parametrize("version", [V5, V311])
def test_retain_is_refused_on_platform_request_topics(broker, api, version):
    """Item 7: a retained request would be re-applied at every restart: the
    retain flag is refused on `$shadow/{id}/update|get`, `$commands/request`
    and `$commands/{id}/reply/...` (5.0: PUBACK 0x87), nothing is retained."""
    dev, dev_pw = api.create_device("sensor")
    admin_user, admin_pw = api.create_app([], [], admin=True)
    with Client(broker.port, client_id=dev, username=dev, password=dev_pw, version=version) as d, \
            Client(broker.port, username=admin_user, password=admin_pw, version=version) as admin:
        topics = [f"$shadow/{dev}/update", f"$shadow/{dev}/get", f"$commands/{dev}/reply/1"]
        for topic in topics:
            rc = d.publish(topic, b'{"state":{"reported":{"x":1}}}', qos=1, retain=True)
            assert rc == (0x87 if version == V5 else 0), topic
        rc = admin.publish("$commands/request", json.dumps({"device": dev, "name": "n"}), qos=1, retain=True)
        assert rc == (0x87 if version == V5 else 0)
        # Without retain the same device request is fine.
        assert d.publish(f"$shadow/{dev}/update", b'{"state":{"reported":{"x":2}}}', qos=1) in (0, 0x10)
    with Client(broker.port, username=admin_user, password=admin_pw) as watcher:
        assert watcher.subscribe([(t, 1) for t in topics + ["$commands/request"]]) == [1, 1, 1, 1]
        watcher.expect_none(0.5)
    shadow = api.ok("GET", f"/api/v1/devices/{dev}/shadow")
    assert "x" in json.dumps(shadow) and '"x": 1' not in json.dumps(shadow)
