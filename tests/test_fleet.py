"""The device layer end to end: registry credentials at CONNECT, the device
ACL, presence and device shadows, with real MQTT clients (paho-mqtt and raw
sockets, 3.1.1 and 5.0) and real HTTP requests to the API."""

from __future__ import annotations

import json
import time

import pytest

from helpers import V311, V5, Api, Client, unique, wait_until
from mqtt_raw import RawClient

TOKEN = "fleet-test-token-0123456789"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}

# CONNACK codes: (5.0 reason, 3.1.1 return code)
OK = (0x00, 0)
BAD_CREDENTIALS = (0x86, 4)
NOT_AUTHORIZED = (0x87, 5)
BAD_CLIENT_ID = (0x85, 2)


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


@pytest.fixture
def device(api):
    """Registers a device with a password; returns (id, password)."""

    def make(password: str = "s3cret-pw", **fields) -> tuple[str, str]:
        dev_id = unique("dev")
        api.ok("POST", "/api/v1/devices", {"id": dev_id, "name": "test device", "password": password, **fields},
               expect=201)
        return dev_id, password

    return make


@pytest.fixture
def admin(api, broker):
    """An admin application client connected over MQTT 5.0."""
    app_id = unique("ops")
    api.ok("POST", "/api/v1/apps", {"id": app_id, "name": "ops", "admin": True, "password": "admin-pw-1"},
           expect=201)
    c = Client(broker.port, client_id=unique("ops"), username=f"app:{app_id}", password="admin-pw-1")
    yield c
    c.close()


def raw_connack(port: int, version: int, client_id: str, username: str | None, password: bytes | None) -> int:
    with RawClient(port, version) as raw:
        kw = {}
        if username is not None:
            kw["username"] = username
        if password is not None:
            kw["password"] = password
        return raw.connect(client_id, expect_rc=None, **kw).reason


@pytest.mark.parametrize("version", [V5, V311])
def test_credentials_are_checked_at_connect(broker, device, version):
    idx = 0 if version == V5 else 1
    dev, pw = device()
    assert raw_connack(broker.port, version, dev, dev, pw.encode()) == OK[idx]
    assert raw_connack(broker.port, version, dev, dev, b"wrong") == BAD_CREDENTIALS[idx]
    assert raw_connack(broker.port, version, dev, unique("nobody"), pw.encode()) == BAD_CREDENTIALS[idx]
    # A device's client identifier must be its id.
    assert raw_connack(broker.port, version, unique("other"), dev, pw.encode()) == BAD_CLIENT_ID[idx]
    # Anonymous clients are refused when auth.allow_anonymous is off.
    assert raw_connack(broker.port, version, unique("anon"), None, None) == NOT_AUTHORIZED[idx]


def test_passwords_are_stored_hashed_and_can_be_changed(broker, api, device):
    dev, pw = device()
    status, body = api.call("GET", f"/api/v1/devices/{dev}")
    assert status == 200 and pw not in json.dumps(body)
    data = (broker.workdir / "myriad-data" / "fleet.redb").read_bytes()
    assert pw.encode() not in data, "the clear password is in the store"
    assert b"$argon2id$" in data
    api.ok("PUT", f"/api/v1/devices/{dev}/password", {"password": "new-password-2"}, expect=204)
    assert raw_connack(broker.port, V5, dev, dev, pw.encode()) == BAD_CREDENTIALS[0]
    assert raw_connack(broker.port, V5, dev, dev, b"new-password-2") == OK[0]


@pytest.mark.parametrize("version", [V5, V311])
def test_disabled_devices_are_refused(broker, api, device, version):
    idx = 0 if version == V5 else 1
    dev, pw = device()
    assert raw_connack(broker.port, version, dev, dev, pw.encode()) == OK[idx]
    api.ok("PATCH", f"/api/v1/devices/{dev}", {"enabled": False})
    assert raw_connack(broker.port, version, dev, dev, pw.encode()) == NOT_AUTHORIZED[idx]
    api.ok("PATCH", f"/api/v1/devices/{dev}", {"enabled": True})
    assert raw_connack(broker.port, version, dev, dev, pw.encode()) == OK[idx]


def test_repeated_failures_are_throttled_per_device(broker, device):
    dev, pw = device()
    for _ in range(5):
        assert raw_connack(broker.port, V5, dev, dev, b"guess") == BAD_CREDENTIALS[0]
    # Now even the right password is refused without being checked (0x9F Connection rate exceeded).
    assert raw_connack(broker.port, V5, dev, dev, pw.encode()) == 0x9F
    assert raw_connack(broker.port, V311, dev, dev, pw.encode()) == 3


def test_v5_device_is_held_to_its_namespace(broker, device, admin):
    dev, pw = device()
    other, _ = device()
    assert admin.subscribe("devices/#", qos=1) == [1]
    c = Client(broker.port, client_id=dev, username=dev, password=pw)
    try:
        # Outside its namespace: 0x87 on SUBACK and PUBACK, nothing routed.
        assert c.subscribe("#", qos=1) == [0x87]
        assert c.subscribe(f"devices/{other}/#", qos=1) == [0x87]
        assert c.subscribe("$events/presence/+", qos=1) == [0x87]
        assert c.publish(f"devices/{other}/telemetry", b"spoof", qos=1) == 0x87
        admin.expect_none(0.3)
        # Inside it: granted and delivered.
        assert c.subscribe(f"$shadow/{dev}/#", qos=1) == [1]
        assert c.publish(f"devices/{dev}/telemetry", b'{"t":1}', qos=1) == 0
        got = admin.get()
        assert (got.topic, got.payload) == (f"devices/{dev}/telemetry", b'{"t":1}')
    finally:
        c.close()


def test_v311_device_outside_its_namespace_gets_failure_and_silent_drop(broker, device, admin):
    dev, pw = device()
    assert admin.subscribe("devices/#", qos=1) == [1]
    with RawClient(broker.port, V311) as raw:
        raw.connect(dev, username=dev, password=pw.encode())
        suback = raw.subscribe("devices/#", qos=1)
        assert suback.reasons == [0x80]
        # 3.1.1 cannot say "not authorized" on PUBACK: acknowledged, not routed.
        raw.publish("devices/someone-else/telemetry", b"x", qos=1)
        admin.expect_none(0.3)
        raw.publish(f"devices/{dev}/telemetry", b"y", qos=1)
        assert admin.get().payload == b"y"


def test_app_clients_get_their_configured_acl(broker, api, device):
    app_id = unique("dash")
    api.ok("POST", "/api/v1/apps", {"id": app_id, "name": "dashboard", "publish": ["$commands/#"],
                                    "subscribe": ["devices/+/telemetry"], "admin": False,
                                    "password": "dash-pw-1"}, expect=201)
    c = Client(broker.port, client_id=unique("dash"), username=f"app:{app_id}", password="dash-pw-1")
    try:
        assert c.subscribe("devices/+/telemetry", qos=1) == [1]
        assert c.subscribe("$shadow/#", qos=1) == [0x87]
        assert c.publish("devices/x/telemetry", b"no", qos=1) == 0x87
    finally:
        c.close()
    bad = raw_connack(broker.port, V5, unique("dash"), f"app:{app_id}", b"wrong")
    assert bad == BAD_CREDENTIALS[0]


def presence_events(admin, n: int, timeout: float = 10.0) -> list[dict]:
    return [json.loads(m.payload) for m in admin.get_many(n, timeout)]


def test_presence_online_offline_with_versions_and_queries(broker, api, device, admin):
    dev, pw = device()
    assert admin.subscribe(f"$events/presence/{dev}", qos=1) == [1]
    assert api.ok("GET", f"/api/v1/devices/{dev}/presence")["online"] is False
    before = api.ok("GET", "/api/v1/presence/count")["online"]
    c = Client(broker.port, client_id=dev, username=dev, password=pw, keepalive=30)
    (online,) = presence_events(admin, 1)
    assert online["device"] == dev and online["online"] is True and online["reason"] is None
    assert online["address"].startswith("127.0.0.1:")
    record = api.ok("GET", f"/api/v1/devices/{dev}/presence")
    assert record["online"] is True and record["version"] == online["version"]
    assert api.ok("GET", "/api/v1/presence/count")["online"] == before + 1
    listed = api.ok("GET", f"/api/v1/presence?limit=1000")["items"]
    assert dev in listed
    c.disconnect()
    (offline,) = presence_events(admin, 1)
    assert offline["online"] is False and offline["reason"] == "client_disconnect"
    assert offline["version"] == online["version"] + 1
    assert api.ok("GET", f"/api/v1/devices/{dev}/presence")["online"] is False
    assert dev not in api.ok("GET", "/api/v1/presence?limit=1000")["items"]


def test_a_silent_device_is_offline_within_one_and_a_half_keep_alives(broker, api, device, admin):
    dev, pw = device()
    assert admin.subscribe(f"$events/presence/{dev}", qos=1) == [1]
    raw = RawClient(broker.port, V311)
    try:
        raw.connect(dev, keepalive=2, username=dev, password=pw.encode())
        presence_events(admin, 1)
        last_packet = time.monotonic()
        # The socket stays open but nothing more is sent: a cut cable.
        msg = admin.get(timeout=6.0)
        went_offline = time.monotonic() - last_packet
        event = json.loads(msg.payload)
        assert event["online"] is False and event["reason"] == "keep_alive_timeout"
        assert 2.5 <= went_offline <= 4.0, f"offline after {went_offline:.2f}s (keep alive 2s)"
    finally:
        raw.abort()


def test_a_dropped_socket_goes_offline_at_once_and_takeover_keeps_it_online(broker, api, device, admin):
    dev, pw = device()
    assert admin.subscribe(f"$events/presence/{dev}", qos=1) == [1]
    first = RawClient(broker.port, V5)
    first.connect(dev, username=dev, password=pw.encode())
    assert presence_events(admin, 1)[0]["online"] is True
    # A second connection takes the session over: online again, never offline in between.
    second = RawClient(broker.port, V5)
    second.connect(dev, username=dev, password=pw.encode())
    (again,) = presence_events(admin, 1)
    assert again["online"] is True
    admin.expect_none(0.5)
    assert api.ok("GET", f"/api/v1/devices/{dev}/presence")["online"] is True
    second.abort()
    (gone,) = presence_events(admin, 1)
    assert gone["online"] is False and gone["reason"] == "network_loss"
    assert gone["version"] == again["version"] + 1
    first.close()


def shadow_client(broker, dev: str, pw: str, version: int = V5, **kw) -> Client:
    c = Client(broker.port, client_id=dev, username=dev, password=pw, version=version, **kw)
    assert c.subscribe(f"$shadow/{dev}/#", qos=1) == [1]
    return c


def replies(c: Client, suffix: str, n: int = 1, timeout: float = 5.0) -> list[dict]:
    """The next n messages on topics ending with suffix (others are skipped)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        m = c.get(timeout=max(0.05, deadline - time.monotonic()))
        if m.topic.endswith(suffix):
            out.append(json.loads(m.payload))
    return out


@pytest.mark.parametrize("version", [V5, V311])
def test_shadow_update_get_and_delta_over_mqtt_and_http(broker, api, device, version):
    dev, pw = device()
    c = shadow_client(broker, dev, pw, version)
    try:
        c.publish(f"$shadow/{dev}/update", json.dumps(
            {"state": {"reported": {"temp": 20, "mode": "auto", "net": {"rssi": -70, "ssid": "a"}}},
             "clientToken": "t1"}), qos=1)
        (acc,) = replies(c, "/update/accepted")
        assert acc["version"] == 1 and acc["clientToken"] == "t1"
        assert acc["state"]["reported"]["temp"] == 20
        # The operator sets desired over HTTP: the device gets the delta (nested paths kept).
        doc = api.ok("PATCH", f"/api/v1/devices/{dev}/shadow",
                     {"desired": {"temp": 22, "mode": "auto", "net": {"ssid": "b"}}})
        assert doc["version"] == 2
        (delta,) = replies(c, "/update/delta")
        assert delta["state"] == {"temp": 22, "net": {"ssid": "b"}}
        assert delta["version"] == 2
        # The device reports; null deletes a key.
        c.publish(f"$shadow/{dev}/update", json.dumps(
            {"state": {"reported": {"temp": 22, "net": {"ssid": "b", "rssi": None}}}}), qos=1)
        replies(c, "/update/accepted")
        shadow = api.ok("GET", f"/api/v1/devices/{dev}/shadow")
        assert shadow["version"] == 3
        assert shadow["state"]["reported"] == {"temp": 22, "mode": "auto", "net": {"ssid": "b"}}
        assert "delta" not in shadow["state"]
        # get over MQTT echoes the client token.
        c.publish(f"$shadow/{dev}/get", json.dumps({"clientToken": "g1"}), qos=1)
        (got,) = replies(c, "/get/accepted")
        assert got["version"] == 3 and got["clientToken"] == "g1"
        assert got["state"]["desired"]["temp"] == 22
    finally:
        c.close()


def test_shadow_version_conflicts_and_bad_requests_are_rejected(broker, api, device):
    dev, pw = device()
    c = shadow_client(broker, dev, pw)
    try:
        c.publish(f"$shadow/{dev}/update", json.dumps({"state": {"reported": {"a": 1}}}), qos=1)
        replies(c, "/update/accepted")
        c.publish(f"$shadow/{dev}/update", json.dumps(
            {"state": {"reported": {"a": 2}}, "version": 7, "clientToken": "stale"}), qos=1)
        (rej,) = replies(c, "/update/rejected")
        assert rej["code"] == 409 and rej["clientToken"] == "stale"
        c.publish(f"$shadow/{dev}/update", b"{not json", qos=1)
        (bad,) = replies(c, "/update/rejected")
        assert bad["code"] == 400
        deep = {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}
        c.publish(f"$shadow/{dev}/update", json.dumps({"state": {"reported": deep}}), qos=1)
        (too_deep,) = replies(c, "/update/rejected")
        assert too_deep["code"] == 400 and "deep" in too_deep["message"].lower()
        big = {"blob": "x" * 9000}
        c.publish(f"$shadow/{dev}/update", json.dumps({"state": {"reported": big}}), qos=1)
        (too_big,) = replies(c, "/update/rejected")
        assert too_big["code"] == 413
        # Over HTTP: a stale version is 409 with a message; the shadow is unchanged.
        status, body = api.call("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"a": 5}, "version": 99})
        assert status == 409 and body["status"] == 409 and body["message"]
        assert api.ok("GET", f"/api/v1/devices/{dev}/shadow")["version"] == 1
    finally:
        c.close()


@pytest.mark.parametrize("version", [V5, V311])
def test_a_device_near_its_reported_limit_does_not_block_operator_updates(broker, api, device, version):
    """desired and reported have 8 KiB each (issue 15 item 13): a device that
    fills reported still gets the operator's desired change, and its own next
    report past 8 KiB names the section."""
    dev, pw = device()
    c = shadow_client(broker, dev, pw, version)
    try:
        c.publish(f"$shadow/{dev}/update", json.dumps({"state": {"reported": {"blob": "r" * 8000}}}), qos=1)
        replies(c, "/update/accepted")
        doc = api.ok("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"blob": "d" * 8000}})
        assert doc["version"] == 2
        (delta,) = replies(c, "/update/delta")
        assert delta["state"]["blob"] == "d" * 8000
        c.publish(f"$shadow/{dev}/update", json.dumps({"state": {"reported": {"more": "x" * 400}}}), qos=1)
        (rej,) = replies(c, "/update/rejected")
        assert rej["code"] == 413 and "reported" in rej["message"], rej
        status, body = api.call("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"more": "y" * 400}})
        assert status == 413 and "desired" in body["message"], body
        assert api.ok("GET", f"/api/v1/devices/{dev}/shadow")["version"] == 2
    finally:
        c.close()


def test_a_persistent_session_gets_the_delta_set_while_it_was_offline(broker, api, device):
    dev, pw = device()
    c = shadow_client(broker, dev, pw, V5, clean=False, connect_props={"SessionExpiryInterval": 600})
    c.disconnect()
    api.ok("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"fw": "2.0"}})
    back = Client(broker.port, client_id=dev, username=dev, password=pw, clean=False,
                  connect_props={"SessionExpiryInterval": 600})
    try:
        (delta,) = replies(back, "/update/delta")
        assert delta["state"] == {"fw": "2.0"}
    finally:
        back.close()


def test_shadows_and_registry_survive_a_restart(broker_factory):
    b = broker_factory(BROKER_CONFIG)
    api = Api(b.api_port, TOKEN)
    dev = unique("dev")
    api.ok("POST", "/api/v1/devices", {"id": dev, "name": "keeper", "password": "pw-restart-1"}, expect=201)
    api.ok("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"led": "on"}})
    b.stop()
    b.start()
    api = Api(b.api_port, TOKEN)
    assert api.ok("GET", f"/api/v1/devices/{dev}")["name"] == "keeper"
    shadow = api.ok("GET", f"/api/v1/devices/{dev}/shadow")
    assert shadow["version"] == 1 and shadow["state"]["desired"] == {"led": "on"}
    assert raw_connack(b.port, V5, dev, dev, b"pw-restart-1") == 0


def test_api_errors_are_json_with_status_and_message(broker, api):
    status, body = api.call("GET", "/api/v1/devices", token=None)
    assert status == 401 and body["status"] == 401 and body["message"]
    status, body = api.call("GET", "/api/v1/devices", token="wrong-token-0123456789")
    assert status == 401
    status, body = api.call("GET", "/api/v1/devices/no-such-device")
    assert status == 404 and body["status"] == 404
    status, body = api.call("POST", "/api/v1/devices", raw=b"{broken")
    assert status == 400 and body["status"] == 400 and body["message"]
    status, body = api.call("POST", "/api/v1/devices", {"id": "bad/id", "name": "x"})
    assert status == 400 and "id" in body["message"]
    status, body = api.call("GET", "/api/v1/devices?limit=0")
    assert status == 400
    dev = unique("dev")
    api.ok("POST", "/api/v1/devices", {"id": dev, "name": "x"}, expect=201)
    status, body = api.call("POST", "/api/v1/devices", {"id": dev, "name": "x"})
    assert status == 409 and body["status"] == 409
    status, spec = api.call("GET", "/openapi.json", token=None)
    assert status == 200 and "/api/v1/devices" in spec["paths"]


def test_device_search_and_paging(broker, api):
    prefix = unique("pg")
    for i in range(25):
        api.ok("POST", "/api/v1/devices", {"id": f"{prefix}-{i:02d}", "name": f"sensor {i}",
                                           "attributes": {"floor": str(i % 3)},
                                           "groups": ["even" if i % 2 == 0 else "odd"]}, expect=201)
    seen, after = [], None
    while True:
        q = f"/api/v1/devices?id_prefix={prefix}&limit=10" + (f"&after={after}" if after else "")
        page = api.ok("GET", q)
        seen += [d["id"] for d in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [f"{prefix}-{i:02d}" for i in range(25)]
    floor1 = api.ok("GET", f"/api/v1/devices?id_prefix={prefix}&attribute=floor=1&limit=100")["items"]
    assert [d["id"] for d in floor1] == [f"{prefix}-{i:02d}" for i in range(25) if i % 3 == 1]
    odd = api.ok("GET", f"/api/v1/devices?id_prefix={prefix}&group=odd&limit=100")["items"]
    assert len(odd) == 12


def test_with_anonymous_access_unknown_users_are_anonymous_but_devices_still_need_their_password(broker_factory):
    b = broker_factory({"api": {"token": TOKEN}})
    api = Api(b.api_port, TOKEN)
    dev = unique("dev")
    api.ok("POST", "/api/v1/devices", {"id": dev, "name": "x", "password": "right-pw-1"}, expect=201)
    assert raw_connack(b.port, V5, dev, dev, b"wrong") == BAD_CREDENTIALS[0]
    with RawClient(b.port, V5) as raw:
        raw.connect(unique("guest"), username="some-user", password=b"whatever")
        # Anonymous clients stay out of the device and platform namespaces.
        assert raw.subscribe(f"$shadow/{dev}/#", qos=1).reasons == [0x87]
        assert raw.subscribe(f"devices/{dev}/#", qos=1).reasons == [0x87]
        assert raw.subscribe("plain/topic", qos=1).reasons == [1]
