"""Operator actions of issue 15 item 14, through the API and `myriad ctl`:

- an app client is updated in place (`PATCH /api/v1/apps/{id}`, `myriad ctl
  apps update`): a password change or an ACL change closes its live
  connections (5.0 DISCONNECT 0x98; the rights of a connection are fixed at
  CONNECT, so it reconnects and gets the new ones), and deleting it closes
  them with 0x87;
- device groups are listed with their sizes (`GET /api/v1/groups`, `myriad
  ctl devices groups`), page by page;
- a fan-out batch is cancelled (`DELETE /api/v1/command-batches/{id}`,
  `myriad ctl commands batch-cancel`): targets not yet handled get no
  command, its open commands become `cancelled` (`batch_cancelled`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from helpers import HOST, VERSION_IDS, VERSIONS, V5, Api, Client, myriad_bin, unique, wait_until

TOKEN = "apps-groups-batches-token-0123456789"
BROKER_CONFIG = {
    "auth": {"allow_anonymous": False},
    "api": {"token": TOKEN},
    # A slow L1 class so a batch is still being dispatched when cancelled.
    "commands.rate_l1": {"per_second": 5.0, "burst": 1},
}
ADMINISTRATIVE_ACTION = 0x98
NOT_AUTHORIZED = 0x87

pytestmark = [pytest.mark.myriad_only, pytest.mark.timeout(90)]


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


@pytest.fixture
def ctl(broker):
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
        env["MYRIAD_API"] = f"http://{HOST}:{broker.api_port}"
        env["MYRIAD_API_TOKEN"] = TOKEN
        proc = subprocess.run([str(myriad_bin()), "ctl", *args], capture_output=True, text=True,
                              env=env, timeout=60)
        if check:
            assert proc.returncode == 0, f"ctl {args} exited {proc.returncode}: {proc.stderr}"
        return proc

    return run


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_app_password_change_closes_connections_and_new_password_works(broker, api, version):
    user, pw = api.create_app(subscribe=["dash/#"], publish=["dash/#"])
    app_id = user.removeprefix("app:")
    c1 = Client(broker.port, version=version, username=user, password=pw)
    c2 = Client(broker.port, version=version, username=user, password=pw)
    try:
        api.ok("PATCH", f"/api/v1/apps/{app_id}", {"password": "new-app-pw-2"})
        for c in (c1, c2):
            rc, _ = c.wait_disconnected(5.0)
            if version == V5:
                assert rc == ADMINISTRATIVE_ACTION, hex(rc)
        old = Client(broker.port, version=version, username=user, password=pw, expect_rc=None)
        assert old.connack[0] != 0
        old.close()
        with Client(broker.port, version=version, username=user, password="new-app-pw-2") as ok:
            assert ok.subscribe("dash/x", qos=1) == [1]
    finally:
        c1.close()
        c2.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_app_acl_change_through_ctl_reconnects_with_new_rights(broker, api, ctl, version):
    user, pw = api.create_app(subscribe=["dash/#"], publish=["dash/#"])
    app_id = user.removeprefix("app:")
    c = Client(broker.port, version=version, username=user, password=pw)
    try:
        refused = c.subscribe("plant/#", qos=1)
        assert refused[0] >= 0x80, refused
        out = ctl("apps", "update", app_id, "--subscribe", "dash/#", "--subscribe", "plant/#",
                  "--output", "json")
        assert json.loads(out.stdout)["subscribe"] == ["dash/#", "plant/#"], out.stdout
        rc, _ = c.wait_disconnected(5.0)
        if version == V5:
            assert rc == ADMINISTRATIVE_ACTION, hex(rc)
        with Client(broker.port, version=version, username=user, password=pw) as again:
            assert again.subscribe("plant/#", qos=1) == [1]
        assert api.ok("GET", f"/api/v1/apps/{app_id}")["subscribe"] == ["dash/#", "plant/#"]
    finally:
        c.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_app_delete_closes_connections(broker, api, version):
    user, pw = api.create_app(subscribe=["dash/#"])
    app_id = user.removeprefix("app:")
    c = Client(broker.port, version=version, username=user, password=pw)
    try:
        assert api.call("DELETE", f"/api/v1/apps/{app_id}")[0] == 204
        rc, _ = c.wait_disconnected(5.0)
        if version == V5:
            assert rc == NOT_AUTHORIZED, hex(rc)
    finally:
        c.close()


def test_app_update_rejects_bad_fields(broker, api):
    user, _ = api.create_app()
    app_id = user.removeprefix("app:")
    assert api.call("PATCH", f"/api/v1/apps/{app_id}", {"subscribe": ["a/#/b"]})[0] == 400
    assert api.call("PATCH", f"/api/v1/apps/{app_id}", {"frobnicate": 1})[0] == 400
    assert api.call("PATCH", f"/api/v1/apps/{app_id}", {"password": ""})[0] == 400
    assert api.call("PATCH", "/api/v1/apps/no-such-app", {"name": "x"})[0] == 404


def test_groups_are_listed_with_sizes(broker, api, ctl):
    base = unique("g")
    groups = {f"{base}-a": 3, f"{base}-b": 1}
    for i in range(3):
        body = {"id": unique("gd"), "groups": [f"{base}-a"] + ([f"{base}-b"] if i == 0 else [])}
        api.ok("POST", "/api/v1/devices", body, expect=201)
    page = api.ok("GET", "/api/v1/groups?limit=1000")
    mine = {g["group"]: g["devices"] for g in page["items"] if g["group"].startswith(base)}
    assert mine == groups, page
    first = api.ok("GET", f"/api/v1/groups?limit=1&after={base}")
    assert [g["group"] for g in first["items"]] == [f"{base}-a"] and first["next"] == f"{base}-a", first
    second = api.ok("GET", f"/api/v1/groups?limit=1&after={first['next']}")
    assert second["items"][0] == {"group": f"{base}-b", "devices": 1}, second
    out = ctl("devices", "groups", "--limit", "1000", "--output", "json")
    listed = {g["group"]: g["devices"] for g in json.loads(out.stdout)["items"]}
    assert {k: v for k, v in listed.items() if k.startswith(base)} == groups
    assert api.call("GET", "/api/v1/groups?limit=0")[0] == 400


def test_batch_cancel_stops_dispatch_and_cancels_open_commands(broker, api, ctl):
    group = unique("bc")
    devices = [f"{group}-{i:03d}" for i in range(40)]
    for dev in devices:
        api.ok("POST", "/api/v1/devices", {"id": dev, "groups": [group]}, expect=201)
    batch_id = api.ok("POST", "/api/v1/commands", {"group": group, "name": "reboot", "priority": "l1"},
                      expect=202)["batch_id"]
    assert wait_until(lambda: api.ok("GET", f"/api/v1/command-batches/{batch_id}")["targets"] >= 3, 10)
    out = ctl("commands", "batch-cancel", batch_id, "--output", "json")
    cancelled = json.loads(out.stdout)
    assert cancelled["cancelled"] is True and cancelled["dispatched"] is False, cancelled
    assert cancelled["targets"] < len(devices), cancelled
    time.sleep(1.5)  # at 5 a second the batch would have gone on
    after = api.ok("GET", f"/api/v1/command-batches/{batch_id}")
    assert after["targets"] == cancelled["targets"], (cancelled, after)
    assert after["statuses"].get("cancelled") == after["targets"], after
    with_command = 0
    for dev in devices:
        mine = [c for c in api.ok("GET", f"/api/v1/devices/{dev}/commands")["items"] if c["batch"] == batch_id]
        assert len(mine) <= 1, mine
        for c in mine:
            with_command += 1
            assert (c["status"], c["reason"]) == ("cancelled", "batch_cancelled"), c
    assert with_command == after["targets"]
    assert api.call("DELETE", "/api/v1/command-batches/" + "0" * 32)[0] == 404
