"""Shadow delete over MQTT, and a version that keeps growing across a
delete (issue 15 item 12).

A device publishes `$shadow/{id}/delete` (AWS IoT shape): the answer comes
on `.../delete/accepted` (`{"version", "timestamp", "clientToken"}`) or
`.../delete/rejected` (`{"code": 404, ..}` when there is no shadow). The
HTTP `DELETE /api/v1/devices/{id}/shadow` notifies the device on
`.../delete/accepted` too. A delete is itself a new version: a client
still holding version N of the deleted shadow gets 409, and the next
shadow starts above N, after a restart as well.
"""

from __future__ import annotations

import json

import pytest

from helpers import VERSION_IDS, VERSIONS, Api, Broker, Client, Msg

TOKEN = "shadow-delete-token-0123456789"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}

pytestmark = [pytest.mark.myriad_only, pytest.mark.timeout(60)]


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


def answer(c: Client, topic: str, timeout: float = 5.0) -> dict:
    """The next message on `topic` (others are skipped)."""
    while True:
        m: Msg = c.get(timeout)
        if m.topic == topic:
            return json.loads(m.payload)


def update(c: Client, dev: str, body: dict) -> dict:
    c.publish(f"$shadow/{dev}/update", json.dumps(body), qos=1)
    while True:
        m = c.get(5)
        if m.topic in (f"$shadow/{dev}/update/accepted", f"$shadow/{dev}/update/rejected"):
            return {"topic": m.topic.rsplit("/", 1)[1], **json.loads(m.payload)}


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_mqtt_delete_accepted_rejected_and_version_keeps_growing(broker, api, version):
    dev, pw = api.create_device("sd")
    with Client(broker.port, dev, version, username=dev, password=pw) as c:
        assert c.subscribe(f"$shadow/{dev}/+/+", qos=1) == [1]
        # No shadow yet: rejected with 404, the token echoed.
        c.publish(f"$shadow/{dev}/delete", json.dumps({"clientToken": "t0"}), qos=1)
        rejected = answer(c, f"$shadow/{dev}/delete/rejected")
        assert rejected["code"] == 404 and rejected["clientToken"] == "t0", rejected
        assert update(c, dev, {"state": {"reported": {"a": 1}}})["version"] == 1
        assert update(c, dev, {"state": {"reported": {"a": 2}, "desired": {"b": 1}}})["version"] == 2
        c.publish(f"$shadow/{dev}/delete", json.dumps({"clientToken": "t1"}), qos=1)
        accepted = answer(c, f"$shadow/{dev}/delete/accepted")
        assert accepted["clientToken"] == "t1" and accepted["version"] == 3, accepted
        assert isinstance(accepted["timestamp"], int)
        # The state is gone.
        shadow = api.ok("GET", f"/api/v1/devices/{dev}/shadow")
        assert shadow["state"] == {} or not any(shadow["state"].values()), shadow
        assert shadow["version"] == 3, shadow
        # A client still holding version 2 of the deleted shadow does not match.
        stale = update(c, dev, {"state": {"reported": {"a": 9}}, "version": 2})
        assert stale["topic"] == "rejected" and stale["code"] == 409, stale
        # The next shadow starts above the deleted one.
        fresh = update(c, dev, {"state": {"reported": {"c": 1}}})
        assert fresh["topic"] == "accepted" and fresh["version"] == 4, fresh
        # Deleting twice: the second finds nothing.
        c.publish(f"$shadow/{dev}/delete", b"", qos=1)
        assert answer(c, f"$shadow/{dev}/delete/accepted")["version"] == 5
        c.publish(f"$shadow/{dev}/delete", b"", qos=1)
        assert answer(c, f"$shadow/{dev}/delete/rejected")["code"] == 404


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_http_delete_notifies_the_device_and_keeps_the_version(broker, api, version):
    dev, pw = api.create_device("sh")
    with Client(broker.port, dev, version, username=dev, password=pw) as c:
        assert c.subscribe(f"$shadow/{dev}/delete/+", qos=1) == [1]
        assert api.ok("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"led": "on"}})["version"] == 1
        assert api.call("DELETE", f"/api/v1/devices/{dev}/shadow")[0] == 204
        notified = answer(c, f"$shadow/{dev}/delete/accepted")
        assert notified["version"] == 2, notified
        status, body = api.call("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"led": "off"}, "version": 1})
        assert status == 409, body
        assert api.ok("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"led": "off"}})["version"] == 3
        assert api.call("DELETE", f"/api/v1/devices/{dev}/shadow")[0] == 204
        assert api.call("DELETE", f"/api/v1/devices/{dev}/shadow")[0] == 404


def test_version_survives_a_restart_after_delete(tmp_path):
    node = tmp_path / "node"
    first = Broker(node, BROKER_CONFIG).start()
    try:
        api = Api(first.api_port, TOKEN)
        dev, _ = api.create_device("sr")
        for i in range(3):
            api.ok("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"n": i}})
        assert api.call("DELETE", f"/api/v1/devices/{dev}/shadow")[0] == 204
    finally:
        first.stop()
    second = Broker(node, BROKER_CONFIG).start()
    try:
        api = Api(second.api_port, TOKEN)
        assert api.ok("GET", f"/api/v1/devices/{dev}/shadow")["version"] == 4
        assert api.call("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"n": 9}, "version": 3})[0] == 409
        assert api.ok("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"n": 9}})["version"] == 5
    finally:
        second.stop()
