"""Deleting a device removes what the platform keeps for it (issue 15
item 4): its session and queued messages, retained messages under its
namespace, its shadow and its pending commands (cancelled, reason
`device_deleted`). A device created again with the same id starts from
nothing. Real clients: paho-mqtt 3.1.1 and 5.0."""

from __future__ import annotations

import json

import pytest

from helpers import V311, V5, Api, Client, unique, wait_until

TOKEN = "device-delete-token-0123456789"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


def session_props(version: int) -> dict | None:
    return {"SessionExpiryInterval": 3600} if version == V5 else None


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("version", [V5, V311])
def test_a_device_created_again_starts_from_nothing(broker, api, version, online):
    dev = unique("r1")
    api.ok("POST", "/api/v1/devices", {"id": dev, "password": "old-pw-1"}, expect=201)
    admin_user, admin_pw = api.create_app(admin=True, prefix="adm")
    d = Client(broker.port, client_id=dev, username=dev, password="old-pw-1", version=version, clean=False,
               connect_props=session_props(version))
    assert d.subscribe([(f"$commands/{dev}/#", 1), (f"devices/{dev}/#", 1)]) == [1, 1]
    assert d.publish(f"devices/{dev}/secret", b"old-retained", qos=1, retain=True) == 0
    assert d.get().payload == b"old-retained"
    d.disconnect()
    assert wait_until(lambda: api.ok("GET", f"/api/v1/devices/{dev}/presence")["online"] is False)
    with Client(broker.port, username=admin_user, password=admin_pw) as admin:
        # A message queued in the broker session, retained messages in the
        # device's namespace, a shadow and an L1 command queued offline.
        assert admin.publish(f"$commands/{dev}/wipe", b'{"key":"old-secret"}', qos=1) == 0
        assert admin.publish(f"$shadow/{dev}/note", b"old-shadow-retained", qos=1, retain=True) in (0, 0x10)
        assert admin.publish(f"devices/{dev}/a/b", b"old-deep", qos=1, retain=True) in (0, 0x10)
        other = unique("r1other")
        assert admin.publish(f"devices/{other}/keep", b"other-device", qos=1, retain=True) in (0, 0x10)
    api.ok("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"key": "old-secret"}})
    queued = api.ok("POST", f"/api/v1/devices/{dev}/commands",
                    {"name": "wipe", "priority": "l1", "payload": {"key": "old-secret"}}, expect=201)
    assert queued["status"] == "queued", queued
    if online:
        d = Client(broker.port, client_id=dev, username=dev, password="old-pw-1", version=version, clean=False,
                   connect_props=session_props(version))
        d.drain(0.5)
    try:
        api.ok("DELETE", f"/api/v1/devices/{dev}")
        if online:
            d.wait_disconnected(5.0)
    finally:
        d.close()
    command = api.ok("GET", f"/api/v1/commands/{queued['id']}")
    if not online:
        assert (command["status"], command["reason"]) == ("cancelled", "device_deleted"), command

    api.ok("POST", "/api/v1/devices", {"id": dev, "password": "new-pw-1"}, expect=201)
    d = Client(broker.port, client_id=dev, username=dev, password="new-pw-1", version=version, clean=False,
               connect_props=session_props(version))
    try:
        assert not d.session_present, "the deleted device's session survived"
        d.expect_none(0.5)
        assert d.subscribe([(f"$commands/{dev}/#", 1), (f"devices/{dev}/#", 1), (f"$shadow/{dev}/#", 1)]) == [1, 1, 1]
        got = d.drain(0.7)
        assert [(m.topic, m.payload) for m in got] == [], got
    finally:
        d.close()
    shadow = api.ok("GET", f"/api/v1/devices/{dev}/shadow")
    assert "old-secret" not in json.dumps(shadow), shadow
    assert api.ok("GET", f"/api/v1/devices/{dev}/commands")["items"] == [] or all(
        c["status"] == "cancelled" for c in api.ok("GET", f"/api/v1/devices/{dev}/commands")["items"])
    # Another device's retained message is untouched.
    with Client(broker.port, username=admin_user, password=admin_pw) as admin:
        assert admin.subscribe(f"devices/{other}/#", qos=1) == [1]
        assert admin.get().payload == b"other-device"


def test_deleted_session_stays_deleted_after_a_restart(broker_factory):
    """The session's removal and the cleared retained messages are stored:
    after a restart the re-created device still starts from nothing."""
    token = "device-delete-restart-token-0123"
    b = broker_factory({"auth": {"allow_anonymous": False}, "api": {"token": token}})
    api = Api(b.api_port, token)
    dev = unique("r1")
    api.ok("POST", "/api/v1/devices", {"id": dev, "password": "old-pw-1"}, expect=201)
    d = Client(b.port, client_id=dev, username=dev, password="old-pw-1", clean=False,
               connect_props=session_props(V5))
    assert d.subscribe(f"devices/{dev}/#", qos=1) == [1]
    assert d.publish(f"devices/{dev}/secret", b"old-retained", qos=1, retain=True) == 0
    d.get()
    d.disconnect()
    api.ok("DELETE", f"/api/v1/devices/{dev}")
    b.stop()
    b.start()
    api = Api(b.api_port, token)
    api.ok("POST", "/api/v1/devices", {"id": dev, "password": "new-pw-1"}, expect=201)
    d = Client(b.port, client_id=dev, username=dev, password="new-pw-1", clean=False,
               connect_props=session_props(V5))
    try:
        assert not d.session_present
        assert d.subscribe(f"devices/{dev}/#", qos=1) == [1]
        d.expect_none(0.7)
    finally:
        d.close()
