"""The embedded store as a user meets it: state survives a restart, and a
damaged data file stops start-up with an error naming the file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import V5, V311, VERSION_IDS, VERSIONS, Broker, Client, broker_kind, myriad_bin

pytestmark = [
    pytest.mark.myriad_only,
    pytest.mark.skipif(broker_kind() == "mosquitto", reason="Myriad's own store"),
]

pv = pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)


def persistent(version: int) -> dict:
    if version == V5:
        return {"clean": False, "connect_props": {"SessionExpiryInterval": 3600}}
    return {"clean": False}


@pv
def test_sessions_queues_and_retained_survive_a_graceful_restart(tmp_path, uid, version):
    broker = Broker(tmp_path, {}).start()
    try:
        with Client(broker.port, f"{uid}-sub", version, **persistent(version)) as sub:
            sub.subscribe("store/#", qos=1)
        with Client(broker.port, f"{uid}-pub", version) as pub:
            pub.publish("store/retained", b"kept", qos=1, retain=True)
            for i in range(5):
                pub.publish("store/q", f"m{i}".encode(), qos=1)
        assert broker.stop() == 0
        broker.start()
        with Client(broker.port, f"{uid}-sub", version, **persistent(version)) as sub:
            assert sub.session_present
            got = [m.payload for m in sub.get_many(6, timeout=5)]
            assert got == [b"kept"] + [f"m{i}".encode() for i in range(5)]
        with Client(broker.port, f"{uid}-late", version) as late:
            late.subscribe("store/retained", qos=1)
            assert late.get(timeout=5).payload == b"kept"
    finally:
        broker.stop()


def start_expecting_failure(workdir: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    proc = subprocess.run(
        [str(myriad_bin()), "serve", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--data-dir", str(workdir / "data")],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    return proc.returncode, proc.stdout.decode() + proc.stderr.decode()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_data_file_stops_start_up_naming_the_file(tmp_path, uid, damage):
    broker = Broker(tmp_path, {}).start()
    with Client(broker.port, f"{uid}-sub", V311, clean=False) as sub:
        sub.subscribe("x/#", qos=1)
    assert broker.stop() == 0
    data_file = tmp_path / "myriad-data" / "myriad.redb"
    assert data_file.exists()
    target = tmp_path / "data" / "myriad.redb"
    target.parent.mkdir()
    content = data_file.read_bytes()
    if damage == "garbage":
        target.write_bytes(b"\x42" * len(content))
    else:
        target.write_bytes(content[: len(content) // 2])
    code, output = start_expecting_failure(tmp_path)
    assert code != 0, output
    assert str(target) in output, output
    assert "MQTT listening" not in output
    # The damaged file is left as it was, for the operator to inspect or restore.
    assert target.stat().st_size in (len(content), len(content) // 2)
