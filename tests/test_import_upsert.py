"""Bulk import through `myriad ctl devices import` (issue 15 item 15):
`--upsert` updates devices that exist instead of failing their rows, and
every bad row is reported with its line in the file (a quoted CSV field
may span lines; a JSON row's message carries no misleading "line 1" of
its own). An upsert that changes a connected device's password closes its
connection, as the single-device route does.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import HOST, V5, VERSION_IDS, VERSIONS, Api, Client, myriad_bin, unique

TOKEN = "import-upsert-token-0123456789"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}

pytestmark = [pytest.mark.myriad_only, pytest.mark.timeout(90)]


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


@pytest.fixture
def ctl(broker):
    def run(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
        env["MYRIAD_API"] = f"http://{HOST}:{broker.api_port}"
        env["MYRIAD_API_TOKEN"] = TOKEN
        return subprocess.run([str(myriad_bin()), "ctl", *args], capture_output=True, text=True,
                              env=env, timeout=60)

    return run


def test_upsert_updates_existing_devices_and_reports_lines(tmp_path, api, ctl):
    p = unique("u")
    first = tmp_path / "first.csv"
    first.write_text(f"id,name,groups\n{p}-1,One,g1\n{p}-2,Two,g1\n")
    out = ctl("devices", "import", str(first))
    assert out.returncode == 0 and out.stdout.startswith("imported 2, failed 0"), out
    created = api.ok("GET", f"/api/v1/devices/{p}-1")
    second = tmp_path / "second.csv"
    # Line 3 is a quoted field spanning two lines; line 5 is bad.
    second.write_text(
        "id,name,groups\n"
        f"{p}-1,Renamed,g2\n"
        f'{p}-3,"two\nlines",g1\n'
        f'"{p} 4",Bad,g1\n'
        f"{p}-2,Two again,g1;g3\n"
    )
    plain = ctl("devices", "import", str(second))
    assert plain.returncode != 0, plain
    lines = plain.stdout.splitlines()
    assert lines[0] == "imported 1, failed 3", plain.stdout
    assert lines[1].startswith("line 2: ") and "already exists" in lines[1], lines
    assert lines[2].startswith("line 5: ") and "' '" in lines[2], lines
    assert lines[3].startswith("line 6: ") and "already exists" in lines[3], lines
    upsert = ctl("devices", "import", "--upsert", str(second))
    lines = upsert.stdout.splitlines()
    # -3 exists since the plain run: updated like the others.
    assert lines[0] == "imported 0, updated 3, failed 1", upsert.stdout
    assert lines[1].startswith("line 5: "), lines
    assert upsert.returncode != 0  # a row failed
    renamed = api.ok("GET", f"/api/v1/devices/{p}-1")
    assert renamed["name"] == "Renamed" and renamed["groups"] == ["g2"], renamed
    assert renamed["created_at"] == created["created_at"], (created, renamed)
    assert api.ok("GET", f"/api/v1/devices/{p}-2")["groups"] == ["g1", "g3"]


def test_jsonl_errors_name_the_file_line_only(tmp_path, ctl):
    p = unique("j")
    f = tmp_path / "rows.jsonl"
    f.write_text(f'{{"id":"{p}-1"}}\n\n{{"id":"{p}-2","nope":1}}\n{{"id": }}\n')
    out = ctl("devices", "import", str(f))
    lines = out.stdout.splitlines()
    assert lines[0] == "imported 1, failed 2", out.stdout
    assert lines[1].startswith("line 3: bad JSON row: unknown field `nope`"), lines
    assert lines[2].startswith("line 4: bad JSON row:"), lines
    for line in lines[1:]:
        assert "at line 1" not in line and "(column " in line, line
    again = ctl("devices", "import", "--upsert", str(f))
    assert again.stdout.splitlines()[0] == "imported 0, updated 1, failed 2", again.stdout


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_upsert_with_a_new_password_closes_the_live_connection(tmp_path, broker, api, ctl, version):
    dev, pw = api.create_device("up")
    hashed = subprocess.run([str(myriad_bin()), "ctl", "hash-password", "--password", "other-pw-9"],
                            capture_output=True, text=True, timeout=30).stdout.strip()
    f = tmp_path / "pw.csv"
    f.write_text(f'id,password_hash\n{dev},"{hashed}"\n')
    c = Client(broker.port, client_id=dev, username=dev, password=pw, version=version)
    try:
        out = ctl("devices", "import", "--upsert", str(f))
        assert out.returncode == 0 and out.stdout.startswith("imported 0, updated 1, failed 0"), out
        rc, _ = c.wait_disconnected(5.0)
        if version == V5:
            assert rc == 0x98, hex(rc)
        with Client(broker.port, client_id=dev, username=dev, password="other-pw-9", version=version):
            pass
    finally:
        c.close()
