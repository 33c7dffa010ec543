"""`myriad agent`'s network mode beyond the plain HTTP update (issue 18): the download over
MQTT chunks for devices without HTTP, SM2-signed manifests verified against a pinned SM2 root
(and refused under another root), a boot outcome lost before the platform got it sent again
from the saved state, and a rollout canceled while the agent downloads (the agent stops, the
partial file serves the next rollout)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import time

import pytest

from helpers import HOST, Api, Broker, Client, myriad_bin, unique, wait_until
from test_ota_e2e import CONFIG, HW, TOKEN, AgentProc, pinned_key

pytestmark = pytest.mark.myriad_only


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("ota-agent-net"), raw_config=CONFIG).start()
    yield b
    b.stop()


def add_device(api: Api, prefix: str) -> str:
    dev_id = unique(prefix)
    api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    return dev_id


def upload(api: Api, version: str, image: bytes) -> dict:
    status, art = api.call("POST", f"/api/v1/ota/artifacts?version={version}&hardware_type={HW}", raw=image)
    assert status == 201, art
    return art


def rollout_of(api: Api, rollout_id: str) -> dict:
    return api.ok("GET", f"/api/v1/ota/rollouts/{rollout_id}")


def counts(rollout: dict) -> dict:
    return {k: v for k, v in rollout["counts"].items() if v}


def log(agent: AgentProc, n: int) -> str:
    return (agent.dir / f"agent.{n}.log").read_bytes().decode(errors="replace")


def test_agent_downloads_over_mqtt_chunks(tmp_path, broker):
    api = Api(broker.api_port, TOKEN)
    image1, image2 = os.urandom(60_000), os.urandom(150_000)
    art = upload(api, "7.0.0", image2)
    dev_id = add_device(api, "chunks")
    user, password = api.create_app(admin=True)
    watch = Client(broker.port, username=user, password=password)
    # No HTTP base URL at all: the agent can only fetch over MQTT.
    agent = AgentProc(tmp_path, dev_id, broker, pinned_key(api), image1, ["sh", "-c", "exit 0"],
                      mqtt={"api": None, "download": "mqtt", "chunk_bytes": 16384})
    try:
        watch.subscribe(f"$ota/{dev_id}/chunk/get", 0)
        agent.start()
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]}},
                         expect=201)
        assert agent.proc.wait(60) == 0, log(agent, 1)
        assert (agent.dir / "b.img").read_bytes() == image2
        asked = [json.loads(m.payload) for m in watch.drain(0.5)]
        offsets = sorted({a["offset"] for a in asked})
        assert offsets == list(range(0, len(image2), 16384)), offsets
        assert all(a["artifact"] == art["id"] and a["length"] <= 16384 for a in asked), asked
        assert len(offsets) == math.ceil(len(image2) / 16384)
        agent.start()
        assert wait_until(lambda: rollout_of(api, rollout["id"])["status"] == "COMPLETED", 30, 0.1)
        assert rollout_of(api, rollout["id"])["counts"].get("SUCCEEDED") == 1
        assert agent.outcome(2)["version"] == "7.0.0" and agent.active_bytes() == image2
    finally:
        watch.close()
        agent.stop()


def test_a_boot_outcome_lost_before_the_platform_got_it_is_sent_again(tmp_path, broker):
    api = Api(broker.api_port, TOKEN)
    image1, image2 = os.urandom(50_000), os.urandom(70_000)
    art = upload(api, "8.0.0", image2)
    dev_id = add_device(api, "lost")
    agent = AgentProc(tmp_path, dev_id, broker, pinned_key(api), image1, ["sh", "-c", "exit 0"])
    try:
        agent.start()
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]},
                                                          "max_retries": 0}, expect=201)
        assert agent.proc.wait(30) == 0, log(agent, 1)
        # The "reboot" confirms the image, but the broker cannot be reached: the SUCCEEDED
        # report never leaves the device before it dies.
        with socket.socket() as s:
            s.bind((HOST, 0))
            closed = s.getsockname()[1]
        good = agent.cfg.read_text()
        agent.cfg.write_text(good.replace(f"port = {broker.port}", f"port = {closed}"))
        agent.start()
        assert wait_until(lambda: '"decision"' in log(agent, 2), 15), log(agent, 2)
        assert agent.outcome(2)["decision"] == "normal" and agent.outcome(2)["version"] == "8.0.0"
        agent.stop()
        assert rollout_of(api, rollout["id"])["counts"].get("REBOOTING") == 1
        # Next start: nothing left to boot; the platform notifies again, the saved outcome answers.
        agent.cfg.write_text(good)
        agent.start()
        assert wait_until(lambda: rollout_of(api, rollout["id"])["status"] == "COMPLETED", 30, 0.1), \
            rollout_of(api, rollout["id"])
        assert rollout_of(api, rollout["id"])["counts"].get("SUCCEEDED") == 1
        assert agent.outcome(3)["reports"] == [] and "saved outcome" in log(agent, 3)
        assert agent.active_bytes() == image2
    finally:
        agent.stop()


def test_cancel_stops_a_download_and_the_partial_file_serves_the_next_rollout(tmp_path, broker):
    api = Api(broker.api_port, TOKEN)
    image1, image2 = os.urandom(40_000), os.urandom(400_000)
    art = upload(api, "9.0.0", image2)
    dev_id = add_device(api, "cancel")
    agent = AgentProc(tmp_path, dev_id, broker, pinned_key(api), image1, ["sh", "-c", "exit 0"])
    try:
        agent.start()
        slow = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]},
                                                       "max_bytes_per_second": 40_000}, expect=201)
        part = agent.dir / "state" / "download"
        assert wait_until(lambda: part.exists() and part.stat().st_size >= 60_000, 20), "download under way"
        canceled = api.ok("POST", f"/api/v1/ota/rollouts/{slow['id']}/cancel")
        assert canceled["counts"].get("CANCELED") == 1, canceled
        assert wait_until(lambda: "canceled during the download" in log(agent, 1), 10), log(agent, 1)
        have = part.stat().st_size
        time.sleep(1)
        assert part.stat().st_size == have < len(image2), "the download stopped"
        assert agent.proc.poll() is None, "the agent keeps running"
        assert (agent.dir / "b.img").read_bytes() == b"", "nothing written to the inactive slot"
        assert counts(rollout_of(api, slow["id"])) == {"CANCELED": 1}
        # A new rollout of the same image resumes from the partial file.
        fast = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]}},
                      expect=201)
        assert agent.proc.wait(30) == 0, log(agent, 1)
        assert (agent.dir / "b.img").read_bytes() == image2
        agent.start()
        assert wait_until(lambda: rollout_of(api, fast["id"])["status"] == "COMPLETED", 30, 0.1)
        assert counts(rollout_of(api, slow["id"])) == {"CANCELED": 1}
    finally:
        agent.stop()


def keygen_sm2(out) -> None:
    done = subprocess.run([str(myriad_bin()), "ctl", "ota", "keygen", "--out", str(out), "--algorithm", "sm2"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr


def test_sm2_signed_rollout_verified_against_the_pinned_root(tmp_path):
    keys, other = tmp_path / "keys", tmp_path / "other"
    keygen_sm2(keys)
    keygen_sm2(other)
    config = CONFIG + f'signing_key = "{keys / "sm2-leaf.key"}"\nsigning_chain = "{keys / "sm2-chain.pem"}"\n'
    b = Broker(tmp_path / "srv", raw_config=config).start()
    agents: list[AgentProc] = []
    try:
        api = Api(b.api_port, TOKEN)
        assert api.ok("GET", "/api/v1/ota/signing-key")["algorithm"] == "sm2"
        image1, image2 = os.urandom(50_000), os.urandom(80_000)
        art = upload(api, "2.0.0", image2)
        good, wrong = add_device(api, "sm2ok"), add_device(api, "sm2bad")
        for dev_id, root in ((good, keys), (wrong, other)):
            agents.append(AgentProc(tmp_path, dev_id, b, None, image1, ["sh", "-c", "exit 0"],
                                    extra={"sm2_roots": [str(root / "sm2-root.pem")]}))
        for a in agents:
            a.start()
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [good, wrong]},
                                                          "max_retries": 0}, expect=201)
        assert agents[0].proc.wait(30) == 0, log(agents[0], 1)
        agents[0].start()
        assert wait_until(lambda: rollout_of(api, rollout["id"])["status"] == "COMPLETED", 30, 0.1), \
            rollout_of(api, rollout["id"])
        assert counts(rollout_of(api, rollout["id"])) == {"SUCCEEDED": 1, "REJECTED": 1}
        assert agents[0].outcome(2)["version"] == "2.0.0" and agents[0].active_bytes() == image2
        rejected = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices?state=REJECTED")
        assert wrong in json.dumps(rejected) and "chain" in json.dumps(rejected), rejected
        assert agents[1].proc.poll() is None and (agents[1].dir / "b.img").read_bytes() == b""
    finally:
        for a in agents:
            a.stop()
        b.stop()
