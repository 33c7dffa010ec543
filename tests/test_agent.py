"""`myriad agent` (issue 18, the device agent's core): first-start provisioning, the boot
decision once (trial boot with a real self-test command, confirm or roll back, an interrupted
install discarded, a restart during the trial rolled back), damaged state files named, bad
config keys named. The state files are written here in the agent's format (docs in
crates/myriad-agent/src/state_file.rs) to put the device in each phase."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from helpers import agent_command, myriad_bin, to_toml

pytestmark = pytest.mark.myriad_only

# A valid Ed25519 public key (nothing is signed or verified here).
KEY = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
OLD = bytes(range(256)) * 400
NEW = bytes(reversed(range(256))) * 410


def run_agent(cfg: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    return subprocess.run(
        [str(myriad_bin()), "agent", "--config", str(cfg)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=env,
    )


def setup(tmp_path: Path, test_cmd: list[str], provision: bool = True, **extra) -> Path:
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "a.img").write_bytes(OLD)
    (tmp_path / "b.img").write_bytes(NEW)
    cfg: dict = {
        "slot_a": str(tmp_path / "a.img"),
        "slot_b": str(tmp_path / "b.img"),
        "state_dir": str(tmp_path / "state"),
        "hardware_type": "gw-1",
        "ed25519_keys": [KEY],
        "self_test": test_cmd,
        "self_test_timeout_secs": 10,
        **extra,
    }
    if provision:
        cfg["provision"] = {"slot": "A", "version": "1.0", "size": len(OLD), "counter": 3}
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(cfg))
    return path


def image(version: str, data: bytes) -> dict:
    return {"version": version, "size": len(data), "sha256": list(hashlib.sha256(data).digest())}


def write_state(state_dir: Path, seq: int, state: dict) -> None:
    payload = json.dumps(state).encode()
    head = b"MYRAGSTA" + struct.pack("<IQI", 1, seq, len(payload)) + payload
    (state_dir / f"state.{seq % 2}").write_bytes(head + hashlib.sha256(head).digest())


def pending_state(phase: str) -> dict:
    return {
        "active": "A", "image": image("1.0", OLD), "counter": 3,
        "pending": {"slot": "B", "image": image("2.0", NEW), "counter": 4,
                    "rollout": "r1", "phase": phase},
    }


def outcome(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_first_start_provisions_and_boots_normally(tmp_path):
    cfg = setup(tmp_path, [])
    (tmp_path / "state").rmdir()  # created by the agent
    out = outcome(run_agent(cfg))
    assert out == {"decision": "normal", "active": "A", "version": "1.0", "counter": 3,
                   "reports": []}
    assert (tmp_path / "state" / "state.1").exists()
    # The second start reads the state, not [provision].
    out = outcome(run_agent(cfg))
    assert out["version"] == "1.0"


def test_no_state_and_no_provision_is_an_error(tmp_path):
    proc = run_agent(setup(tmp_path, [], provision=False))
    assert proc.returncode != 0
    assert "provision" in proc.stderr


@pytest.mark.parametrize("test_cmd,decision,active,version,states", [
    (["sh", "-c", "exit 0"], "normal", "B", "2.0", ["SUCCEEDED"]),
    (["sh", "-c", "exit 1"], "rolled_back", "A", "1.0", ["ROLLED_BACK"]),
])
def test_installed_update_runs_its_self_test(tmp_path, test_cmd, decision, active, version,
                                             states):
    cfg = setup(tmp_path, test_cmd, provision=False)
    write_state(tmp_path / "state", 7, pending_state("Installed"))
    out = outcome(run_agent(cfg))
    assert (out["decision"], out["active"], out["version"]) == (decision, active, version)
    assert [r["state"] for r in out["reports"]] == states
    assert out["counter"] == (4 if active == "B" else 3)
    # A restart now: nothing pending, same slot.
    again = outcome(run_agent(cfg))
    assert (again["decision"], again["active"]) == ("normal", active)


def test_self_test_timeout_rolls_back(tmp_path):
    cfg = setup(tmp_path, ["sleep", "30"], provision=False, self_test_timeout_secs=1)
    write_state(tmp_path / "state", 1, pending_state("Installed"))
    out = outcome(run_agent(cfg, timeout=20))
    assert out["decision"] == "rolled_back"
    assert "timed out" in out["reports"][-1]["reason"]


def test_trial_slot_changed_since_install_rolls_back_without_running_the_test(tmp_path):
    marker = tmp_path / "ran"
    cfg = setup(tmp_path, ["touch", str(marker)], provision=False)
    write_state(tmp_path / "state", 1, pending_state("Installed"))
    (tmp_path / "b.img").write_bytes(b"X" + NEW[1:])
    out = outcome(run_agent(cfg))
    assert (out["decision"], out["active"]) == ("rolled_back", "A")
    assert "hash" in out["reports"][-1]["reason"]
    assert not marker.exists()


@pytest.mark.parametrize("phase,decision,state", [
    ("Installing", "discarded", "FAILED"),
    ("Trial", "rolled_back", "ROLLED_BACK"),
])
def test_interrupted_phases(tmp_path, phase, decision, state):
    cfg = setup(tmp_path, ["sh", "-c", "exit 0"], provision=False)
    write_state(tmp_path / "state", 1, pending_state(phase))
    out = outcome(run_agent(cfg))
    assert (out["decision"], out["active"], out["version"]) == (decision, "A", "1.0")
    assert [r["state"] for r in out["reports"]] == [state]


def test_damaged_state_files(tmp_path):
    cfg = setup(tmp_path, [], provision=False)
    sd = tmp_path / "state"
    write_state(sd, 4, pending_state("Installing"))
    write_state(sd, 5, pending_state("Installed"))
    # The newest (seq 5, state.1) damaged: the older one is used and the damaged one named.
    raw = bytearray((sd / "state.1").read_bytes())
    raw[40] ^= 1
    (sd / "state.1").write_bytes(bytes(raw))
    proc = run_agent(cfg)
    out = outcome(proc)
    assert out["decision"] == "discarded"
    assert "state.1" in proc.stderr
    # Both damaged: the agent refuses to start, naming both files.
    (sd / "state.0").write_bytes(b"MYRAGSTA")
    (sd / "state.1").write_bytes(bytes(100))
    proc = run_agent(cfg)
    assert proc.returncode != 0
    assert "state.0" in proc.stderr and "state.1" in proc.stderr


@pytest.mark.parametrize("extra,named", [
    ({"colour": "red"}, "colour"),
    ({"self_test_timeout_secs": 3601}, "self_test_timeout"),
    ({"ed25519_keys": ["00"]}, "ed25519_keys[0]"),
    ({"self_test": ["x"] * 65}, "self_test"),
])
def test_bad_config_is_named(tmp_path, extra, named):
    proc = run_agent(setup(tmp_path, [], **extra))
    assert proc.returncode != 0
    assert named in proc.stderr, proc.stderr


def test_config_file_one_past_the_limit(tmp_path):
    cfg = setup(tmp_path, [])
    text = cfg.read_text()
    cfg.write_text(text + "#" * (64 * 1024 - len(text.encode()) - 1) + "\n")
    assert run_agent(cfg).returncode == 0
    cfg.write_text(cfg.read_text() + "#")
    proc = run_agent(cfg)
    assert proc.returncode != 0 and "larger than 65536" in proc.stderr


def test_device_binary_and_subcommand_decide_alike(tmp_path):
    """`myriad-agent` (the device-only build, crates/myriad-device) and `myriad agent` run the
    same program: the same boot decision from the same state, the same error for the same bad
    config, and a version line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    outs = []
    for name, command in [("sub", [str(myriad_bin()), "agent"]), ("dev", agent_command())]:
        d = tmp_path / name
        d.mkdir()
        cfg = setup(d, ["sh", "-c", "exit 1"], provision=False)
        write_state(d / "state", 7, pending_state("Installed"))
        done = subprocess.run([*command, "--config", str(cfg)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30, env=env)
        outs.append(outcome(done))
        bad = setup(d, [], mqtt={"host": "127.0.0.1", "id": "d1", "password": "p",
                                 "api": "http://127.0.0.1:1", "status_every_secs": 86401})
        done = subprocess.run([*command, "--config", str(bad)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30, env=env)
        assert done.returncode != 0 and "mqtt.status_every_secs" in done.stderr, done.stderr
    assert outs[0] == outs[1]
    assert outs[0]["decision"] == "rolled_back" and outs[0]["reports"][0]["state"] == "ROLLED_BACK"
    version = subprocess.run([*agent_command(), "--version"], capture_output=True, text=True,
                             timeout=30, env=env)
    assert version.returncode == 0 and version.stdout.startswith("myriad-agent "), version.stdout
