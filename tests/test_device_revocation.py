"""Revocation reaches live connections (issue 15 item 2): disabling,
deleting or changing the password of a device closes its open connection
(5.0: DISCONNECT with a reason code), presence records `disabled` /
`kicked`; `POST /api/v1/devices/{id}/disconnect` and `myriad ctl devices
kick` close it on demand. Real clients: paho-mqtt 3.1.1 and 5.0."""

from __future__ import annotations

import json

import pytest

from helpers import V5, V311, Api, Client, json_ctl, unique

TOKEN = "device-revocation-token-0123456789"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}

# What each operation does: the API call, the 5.0 DISCONNECT reason, the
# presence reason, whether the device's will is published.
NOT_AUTHORIZED = 0x87
ADMINISTRATIVE_ACTION = 0x98


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


def revoke(api: Api, action: str, dev: str) -> None:
    if action == "disable":
        api.ok("PATCH", f"/api/v1/devices/{dev}", {"enabled": False})
    elif action == "password":
        api.ok("PUT", f"/api/v1/devices/{dev}/password", {"password": "dev-pw-2"})
    elif action == "delete":
        api.ok("DELETE", f"/api/v1/devices/{dev}")
    elif action == "kick":
        body = api.ok("POST", f"/api/v1/devices/{dev}/disconnect")
        assert body == {"device": dev, "disconnected": True}, body
    else:
        raise AssertionError(action)


EXPECTED = {
    # action: (5.0 reason code, presence reason, will published)
    "disable": (NOT_AUTHORIZED, "disabled", False),
    "delete": (NOT_AUTHORIZED, "disabled", False),
    "password": (ADMINISTRATIVE_ACTION, "kicked", True),
    "kick": (ADMINISTRATIVE_ACTION, "kicked", True),
}


@pytest.mark.parametrize("version", [V5, V311])
@pytest.mark.parametrize("action", ["disable", "password", "delete", "kick"])
def test_revocation_closes_the_live_connection(broker, api, version, action):
    dev, pw = api.create_device("rv")
    admin_user, admin_pw = api.create_app(admin=True, prefix="adm")
    code, presence_reason, will_published = EXPECTED[action]
    with Client(broker.port, username=admin_user, password=admin_pw) as admin:
        assert admin.subscribe([(f"$events/presence/{dev}", 1), (f"devices/{dev}/#", 1)]) == [1, 1]
        d = Client(broker.port, client_id=dev, username=dev, password=pw, version=version,
                   will={"topic": f"devices/{dev}/status", "payload": b"gone", "qos": 1})
        try:
            assert d.subscribe(f"$commands/{dev}/#", qos=1) == [1]
            online = json.loads(admin.get().payload)
            assert online["online"] is True
            revoke(api, action, dev)
            rc, _ = d.wait_disconnected(5.0)
            if version == V5:
                assert rc == code, (action, hex(rc))
            # The device no longer receives commands or publishes.
            assert not d.connected
            got = admin.drain(1.0)
            events = [json.loads(m.payload) for m in got if m.topic == f"$events/presence/{dev}"]
            wills = [m.payload for m in got if m.topic == f"devices/{dev}/status"]
            assert [(e["online"], e["reason"]) for e in events] == [(False, presence_reason)], events
            assert wills == ([b"gone"] if will_published else []), (action, wills)
        finally:
            d.close()
    if action != "delete":
        presence = api.ok("GET", f"/api/v1/devices/{dev}/presence")
        assert presence["online"] is False and presence["disconnect_reason"] == presence_reason, presence
    # What the device may do now.
    again = {"disable": (pw, NOT_AUTHORIZED), "password": (pw, 0x86), "delete": (pw, 0x86), "kick": (pw, 0)}
    password, rc = again[action]
    c = Client(broker.port, client_id=dev, username=dev, password=password, version=version, expect_rc=None)
    c.close()
    assert c.connack[0] == rc, (action, c.connack)
    if action == "password":
        with Client(broker.port, client_id=dev, username=dev, password="dev-pw-2", version=version) as c:
            assert c.connected


def test_kick_of_an_offline_or_unknown_device(api):
    dev, _ = api.create_device("rv")
    assert api.ok("POST", f"/api/v1/devices/{dev}/disconnect") == {"device": dev, "disconnected": False}
    status, body = api.call("POST", f"/api/v1/devices/{unique('nope')}/disconnect")
    assert status == 404, body


def test_kick_from_ctl(broker, api):
    dev, pw = api.create_device("rv")
    ctl = json_ctl(broker.api_port, TOKEN)

    d = Client(broker.port, client_id=dev, username=dev, password=pw)
    try:
        proc = ctl("devices", "kick", dev)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"device": dev, "disconnected": True}
        rc, _ = d.wait_disconnected(5.0)
        assert rc == ADMINISTRATIVE_ACTION
    finally:
        d.close()
    proc = ctl("devices", "kick", dev)
    assert proc.returncode == 0 and json.loads(proc.stdout)["disconnected"] is False, proc
    assert ctl("devices", "kick", unique("nope")).returncode != 0


def test_openapi_documents_the_disconnect_route(api):
    doc = api.ok("GET", "/openapi.json")
    assert "post" in doc["paths"]["/api/v1/devices/{id}/disconnect"]


@pytest.mark.parametrize("version", [V5, V311])
def test_takeover_by_the_same_device_is_recorded(broker, api, version):
    """Item 11: the same device connecting again while its connection is
    open: the online event says `takeover`, the record keeps it."""
    dev, pw = api.create_device("rv")
    admin_user, admin_pw = api.create_app(admin=True, prefix="adm")
    with Client(broker.port, username=admin_user, password=admin_pw) as admin:
        assert admin.subscribe(f"$events/presence/{dev}", qos=1) == [1]
        first = Client(broker.port, client_id=dev, username=dev, password=pw, version=version)
        try:
            event = json.loads(admin.get().payload)
            assert (event["online"], event["reason"]) == (True, None)
            second = Client(broker.port, client_id=dev, username=dev, password=pw, version=version)
            try:
                first.wait_disconnected(5.0)
                event = json.loads(admin.get().payload)
                assert (event["online"], event["reason"]) == (True, "takeover"), event
                admin.expect_none(0.3)
                record = api.ok("GET", f"/api/v1/devices/{dev}/presence")
                assert record["online"] is True and record["disconnect_reason"] == "takeover", record
                assert record["last_disconnected_at"] is not None
            finally:
                second.close()
        finally:
            first.close()
