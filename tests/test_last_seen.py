"""`last_seen` moves while a device stays online (issue 15 item 9).

The broker core stamps every connection at each packet; the presence
service samples those stamps every `devices.last_seen_flush_secs` (1 s
here) and stores the records that moved in one commit, so a device that
keeps publishing on one connection sees `last_seen` advance in the API
without reconnecting, and a silent one does not.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from helpers import HOST, VERSION_IDS, VERSIONS, Api, Client, myriad_bin, wait_until

TOKEN = "last-seen-token-0123456789"
BROKER_CONFIG = {
    "auth": {"allow_anonymous": False},
    "api": {"token": TOKEN},
    "devices": {"last_seen_flush_secs": 1},
}

pytestmark = [pytest.mark.myriad_only, pytest.mark.timeout(60)]


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


def presence(api: Api, dev_id: str) -> dict:
    return api.ok("GET", f"/api/v1/devices/{dev_id}/presence")


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_last_seen_advances_while_online(broker, api, version):
    busy, pw = api.create_device("busy")
    quiet, _ = api.create_device("quiet")
    with Client(broker.port, busy, version, username=busy, password=pw) as c, \
            Client(broker.port, quiet, version, username=quiet, password=pw, keepalive=60):
        assert wait_until(lambda: presence(api, busy)["online"] and presence(api, quiet)["online"], 5)
        first = presence(api, busy)
        quiet_first = presence(api, quiet)
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            c.publish(f"devices/{busy}/telemetry", b'{"t": 1}', qos=1)
            time.sleep(0.2)
        moved = {}

        def advanced() -> bool:
            nonlocal moved
            moved = presence(api, busy)
            return moved["last_seen"] >= first["last_seen"] + 2500

        assert wait_until(advanced, 3, 0.1), (first, moved)
        # Same connection: no reconnect, no presence event.
        assert moved["online"] and moved["connection"] == first["connection"], (first, moved)
        assert moved["version"] == first["version"], (first, moved)
        # A device that sent nothing since it connected keeps its last_seen
        # (to within the clock conversion, a millisecond or so).
        quiet_now = presence(api, quiet)["last_seen"]
        assert abs(quiet_now - quiet_first["last_seen"]) < 500, (quiet_first, quiet_now)


@pytest.mark.parametrize("value", [0, 3601])
def test_bad_flush_interval_stops_startup_naming_the_key(tmp_path, value):
    config = tmp_path / "myriad.toml"
    config.write_text(f"[devices]\nlast_seen_flush_secs = {value}\n")
    p = subprocess.run([str(myriad_bin()), "serve", "--config", str(config), "--listen", f"{HOST}:0"],
                       capture_output=True, text=True, timeout=15, cwd=tmp_path)
    assert p.returncode != 0
    assert "devices.last_seen_flush_secs" in p.stdout + p.stderr
