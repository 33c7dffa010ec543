"""`myriad ctl` against a running server: everyday operations and bulk
provisioning of 100,000 devices, checked through the API and over MQTT."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from helpers import V5, Api, myriad_bin, unique
from mqtt_raw import RawClient

TOKEN = "ctl-test-token-0123456789"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}


@pytest.fixture
def ctl(broker):
    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
        env["MYRIAD_API"] = f"http://127.0.0.1:{broker.api_port}"
        env["MYRIAD_API_TOKEN"] = TOKEN
        proc = subprocess.run([str(myriad_bin()), "ctl", *args], input=stdin, capture_output=True, text=True,
                              env=env, timeout=300)
        if check:
            assert proc.returncode == 0, f"ctl {args} exited {proc.returncode}: {proc.stderr}"
        return proc

    return run


def test_device_lifecycle_through_ctl(ctl, broker):
    dev = unique("dev")
    created = json.loads(ctl("--output", "json", "devices", "create", dev, "--name", "boiler", "--attr", "site=north",
                             "--group", "heating", "--password-stdin", stdin="ctl-pw-123\n").stdout)
    assert created["id"] == dev and created["attributes"] == {"site": "north"} and created["groups"] == ["heating"]
    with RawClient(broker.port, V5) as raw:
        assert raw.connect(dev, username=dev, password=b"ctl-pw-123").reason == 0
    got = json.loads(ctl("--output", "json", "devices", "get", dev).stdout)
    assert got["name"] == "boiler"
    listed = ctl("devices", "list", "--prefix", dev, "--all").stdout
    assert dev in listed and "boiler" in listed
    updated = json.loads(ctl("--output", "json", "devices", "update", dev, "--name", "boiler 2", "--disable").stdout)
    assert updated["name"] == "boiler 2" and updated["enabled"] is False
    with RawClient(broker.port, V5) as raw:
        assert raw.connect(dev, expect_rc=None, username=dev, password=b"ctl-pw-123").reason == 0x87
    ctl("shadow", "set-desired", dev, '{"setpoint": 21}')
    shadow = json.loads(ctl("--output", "json", "shadow", "get", dev).stdout)
    assert shadow["state"]["desired"] == {"setpoint": 21} and shadow["state"]["delta"] == {"setpoint": 21}
    count = json.loads(ctl("--output", "json", "presence", "count").stdout)
    assert count["devices"] >= 1
    ctl("devices", "delete", dev)
    missing = ctl("devices", "get", dev, check=False)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_ctl_reports_api_errors_and_unreachable_servers(ctl, broker):
    bad = ctl("devices", "create", "bad/id", check=False)
    assert bad.returncode == 1 and "400" in bad.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    proc = subprocess.run([str(myriad_bin()), "ctl", "--api", "http://127.0.0.1:9", "--token", TOKEN,
                           "devices", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "127.0.0.1:9" in proc.stderr


def test_app_client_from_ctl_logs_in_with_its_acl(ctl, broker):
    app = unique("app")
    ctl("apps", "create", app, "--name", "dash", "--subscribe", "devices/+/telemetry", "--password", "app-pw-1234")
    with RawClient(broker.port, V5) as raw:
        raw.connect(unique("dash"), username=f"app:{app}", password=b"app-pw-1234")
        assert raw.subscribe("devices/+/telemetry", qos=1).reasons == [1]
        assert raw.subscribe("$shadow/#", qos=1).reasons == [0x87]


def test_bulk_import_of_100000_devices(ctl, broker, tmp_path):
    prefix = unique("bulk")
    phc = ctl("hash-password", "--password", "bulk-pw-1").stdout.strip()
    assert phc.startswith("$argon2id$")
    path = tmp_path / "devices.jsonl"
    with open(path, "w") as f:
        for i in range(100_000):
            row = {"id": f"{prefix}-{i:06d}", "name": f"meter {i}", "groups": ["meters"]}
            if i % 1000 == 0:
                row["password_hash"] = phc
            f.write(json.dumps(row) + "\n")
        f.write('{"id": "bad/id", "name": "x"}\n')          # line 100001
        f.write("not json\n")                               # line 100002
    started = time.monotonic()
    proc = ctl("devices", "import", str(path), check=False)
    elapsed = time.monotonic() - started
    print(f"imported 100,000 devices in {elapsed:.2f}s")
    assert proc.returncode == 1, "bad rows make the command fail"
    assert "imported 100000, failed 2" in proc.stdout
    assert "line 100001" in proc.stdout and "line 100002" in proc.stdout
    assert elapsed < 60
    api = Api(broker.api_port, TOKEN)
    page = api.ok("GET", f"/api/v1/devices?id_prefix={prefix}-09999&limit=100")
    assert [d["id"] for d in page["items"]] == [f"{prefix}-{i:06d}" for i in range(99990, 100000)]
    # A provisioned device with a hash logs in with the matching password.
    dev = f"{prefix}-{5000:06d}"
    with RawClient(broker.port, V5) as raw:
        assert raw.connect(dev, username=dev, password=b"bulk-pw-1").reason == 0
