"""OTA end to end (issue 18): `myriad serve` with a rollout of a second image to four real
`myriad agent` processes in network mode (MQTT notifications and reports, HTTP download
into the inactive slot, verified against the server's pinned signing key). Each agent exits
0 after REBOOTING; restarted (the "reboot"), it runs its self-test and confirms (three
devices) or rolls back (one, whose self-test fails). The rollout completes with 3 SUCCEEDED
and 1 ROLLED_BACK, and every device's active slot holds the image it should run."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from helpers import HOST, Api, Broker, Client, agent_command, to_toml, unique, wait_until

pytestmark = pytest.mark.myriad_only

TOKEN = "ota-e2e-token-0123456789"
CONFIG = f"""
[auth]
allow_anonymous = false

[api]
token = "{TOKEN}"

[ota]
max_artifact_bytes = 1048576
max_artifacts = 20
"""
HW = "board-e2e"


class AgentProc:
    """One device: its slot files, config and the running `myriad agent` process."""

    def __init__(self, root: Path, dev_id: str, broker: Broker, key_hex: str | None, image1: bytes,
                 self_test: list[str], api: str | None = None, mqtt: dict | None = None, extra: dict | None = None):
        """`mqtt` and `extra` change keys of the `[mqtt]` table and of the top level (None
        removes a key)."""
        self.id = dev_id
        self.dir = root / dev_id
        (self.dir / "state").mkdir(parents=True)
        (self.dir / "a.img").write_bytes(image1)
        (self.dir / "b.img").write_bytes(b"")
        cfg = {
            "slot_a": str(self.dir / "a.img"),
            "slot_b": str(self.dir / "b.img"),
            "state_dir": str(self.dir / "state"),
            "hardware_type": HW,
            "ed25519_keys": [key_hex],
            "self_test": self_test,
            "self_test_timeout_secs": 10,
            "provision": {"slot": "A", "version": "1.0.0", "size": len(image1), "counter": 0},
            "mqtt": {"host": HOST, "port": broker.port, "id": dev_id, "password": "dev-pw-123",
                     "api": api or f"http://{HOST}:{broker.api_port}"},
        }
        for table, changes in ((cfg["mqtt"], mqtt or {}), (cfg, extra or {})):
            for k, v in changes.items():
                if v is None:
                    table.pop(k, None)
                else:
                    table[k] = v
        if key_hex is None:
            del cfg["ed25519_keys"]
        self.config = cfg
        self.cfg = self.dir / "agent.toml"
        self.cfg.write_text(to_toml(cfg))
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
        env["RUST_LOG"] = "info"
        self.starts += 1
        self.log = open(self.dir / f"agent.{self.starts}.log", "wb")
        self.proc = subprocess.Popen([*agent_command(), "--config", str(self.cfg)],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def outcome(self, n: int) -> dict:
        lines = (self.dir / f"agent.{n}.log").read_bytes().decode(errors="replace").splitlines()
        return json.loads(next(line for line in lines if line.startswith("{\"")))

    def active_bytes(self) -> bytes:
        slot = self.outcome(self.starts)["active"]
        return (self.dir / f"{slot.lower()}.img").read_bytes()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("ota-e2e"), raw_config=CONFIG).start()
    yield b
    b.stop()


def pinned_key(api: Api) -> str:
    pem = api.ok("GET", "/api/v1/ota/signing-key")
    assert pem["algorithm"] == "ed25519"
    return load_pem_public_key(pem["pem"].encode()).public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def test_rollout_to_real_agents_confirms_and_rolls_back(tmp_path, broker):
    agents: list[AgentProc] = []
    try:
        api = Api(broker.api_port, TOKEN)
        image1 = os.urandom(200_000)
        image2 = os.urandom(260_000)
        arts = []
        for version, image in (("1.0.0", image1), ("2.0.0", image2)):
            status, art = api.call("POST", f"/api/v1/ota/artifacts?version={version}&hardware_type={HW}", raw=image)
            assert status == 201, art
            arts.append(art)
        key_hex = pinned_key(api)
        group = unique("e2e")
        ids = [f"{group}-{i}" for i in range(4)]
        for dev_id in ids:
            api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123", "groups": [group]},
                   expect=201)
        failing = ids[3]
        for dev_id in ids:
            test_cmd = ["sh", "-c", "exit 3"] if dev_id == failing else ["sh", "-c", "exit 0"]
            agents.append(AgentProc(tmp_path, dev_id, broker, key_hex, image1, test_cmd))
        for a in agents:
            a.start()
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {
            "name": "e2e", "artifact": arts[1]["id"], "targets": {"group": group}, "max_retries": 0,
        }, expect=201)
        # Each agent downloads, installs, reports REBOOTING and exits 0: "reboot" it.
        deadline = time.monotonic() + 60
        while any(a.starts < 2 for a in agents) and time.monotonic() < deadline:
            for a in agents:
                if a.starts == 1 and a.proc.poll() is not None:
                    assert a.proc.returncode == 0, (a.id, (a.dir / "agent.1.log").read_text())
                    a.start()
            time.sleep(0.05)
        assert all(a.starts == 2 for a in agents), [(a.id, a.starts) for a in agents]
        last = {}

        def completed():
            nonlocal last
            last = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}")
            return last["status"] == "COMPLETED"

        assert wait_until(completed, 60, 0.1), last
        assert last["counts"].get("SUCCEEDED") == 3 and last["counts"].get("ROLLED_BACK") == 1, last
        for a in agents:
            out = a.outcome(2)
            if a.id == failing:
                assert out["decision"] == "rolled_back" and out["version"] == "1.0.0", out
                assert out["active"] == "A" and a.active_bytes() == image1
            else:
                assert out["decision"] == "normal" and out["version"] == "2.0.0", out
                assert out["active"] == "B" and a.active_bytes() == image2
            assert [r["state"] for r in out["reports"]][-1] in ("SUCCEEDED", "ROLLED_BACK"), out
        rolled = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices?state=ROLLED_BACK")
        assert failing in json.dumps(rolled), rolled
        # Restarted agents stay connected and install nothing again.
        time.sleep(0.5)
        assert all(a.proc.poll() is None for a in agents), [(a.id, a.proc.returncode) for a in agents]
    finally:
        for a in agents:
            a.stop()


def test_agent_resumes_a_partial_download_and_bounds_notifications(tmp_path, broker):
    api = Api(broker.api_port, TOKEN)
    image1, image2 = os.urandom(100_000), os.urandom(300_000)
    _, art = api.call("POST", f"/api/v1/ota/artifacts?version=3.0.0&hardware_type={HW}", raw=image2)
    dev_id = unique("resume")
    api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    user, password = api.create_app(admin=True)
    agent = AgentProc(tmp_path, dev_id, broker, pinned_key(api), image1, ["sh", "-c", "exit 0"])
    watch = Client(broker.port, username=user, password=password)
    try:
        watch.subscribe(f"$ota/{dev_id}/progress", 1)
        agent.start()
        assert wait_until(lambda: b"connected" in (agent.dir / "agent.1.log").read_bytes(), 10), "agent connected"
        time.sleep(0.3)

        def fake(rollout: str, size: int) -> bytes:
            note = {"rollout": rollout, "attempt": 1, "url": "/ota/v1/download/nope", "manifest": "AAAA",
                    "artifact": {"id": "nope", "version": "9", "hardware_type": HW, "size": 10, "sha256": "00" * 32},
                    "pad": ""}
            body = json.dumps(note).encode()
            note["pad"] = "x" * (size - len(body))
            body = json.dumps(note).encode()
            assert len(body) == size
            return body

        # One byte past the 64 KiB notification limit: dropped, nothing reported.
        watch.publish(f"$ota/{dev_id}/notify", fake("r-past", 65536 + 1), qos=1)
        watch.expect_none(1.0)
        assert b"notification too large" in (agent.dir / "agent.1.log").read_bytes()
        # At the limit: handled (its download is refused: FAILED).
        watch.publish(f"$ota/{dev_id}/notify", fake("r-at", 65536), qos=1)
        msg = json.loads(watch.get(10).payload)
        while msg["state"] == "DOWNLOADING":
            msg = json.loads(watch.get(10).payload)
        assert (msg["rollout"], msg["state"]) == ("r-at", "FAILED") and "download" in msg["reason"], msg
        assert agent.proc.poll() is None
        # A partial download of the image: the agent asks for the rest only.
        state = agent.dir / "state"
        (state / "download").write_bytes(image2[:120_000])
        (state / "download.sha256").write_text(hashlib.sha256(image2).hexdigest())
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]}},
                         expect=201)
        first = json.loads(watch.get(10).payload)
        assert first["rollout"] == rollout["id"] and first["state"] == "DOWNLOADING", first
        assert (first["done"], first["total"]) == (120_000, len(image2)), first
        assert agent.proc.wait(30) == 0
        assert (agent.dir / "b.img").read_bytes() == image2
        states = [json.loads(m.payload)["state"] for m in watch.drain(0.5)]
        assert states[-3:] == ["VERIFYING", "INSTALLING", "REBOOTING"], states
        assert not (state / "download").exists()
        agent.start()
        assert wait_until(lambda: api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}")["status"] == "COMPLETED",
                          30, 0.1)
        assert agent.outcome(2)["version"] == "3.0.0"
    finally:
        watch.close()
        agent.stop()


class CuttingProxy:
    """An HTTP proxy in front of the API that sends the first response's head and only
    `cut` bytes of its body, then closes the connection (a dropped download)."""

    def __init__(self, api_port: int, cut: int, stall: bool = False):
        self.requests: list[dict[str, str]] = []
        self.release = threading.Event()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline(8192).decode()
                headers = {}
                while (h := self.rfile.readline(8192).decode().strip()):
                    k, v = h.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                proxy.requests.append({"line": line.strip(), **headers})
                method, path, _ = line.split(" ", 2)
                conn = http.client.HTTPConnection(HOST, api_port, timeout=30)
                fwd = {k: v for k, v in headers.items() if k == "range"}
                conn.request(method, path, headers=fwd)
                resp = conn.getresponse()
                body = resp.read()
                head = f"HTTP/1.1 {resp.status} {resp.reason}\r\n"
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding"):
                        head += f"{k}: {v}\r\n"
                head += f"Content-Length: {len(body)}\r\n" if resp.getheader("content-length") is None else ""
                head += "Connection: close\r\n\r\n"
                self.wfile.write(head.encode())
                first = len(proxy.requests) == 1
                self.wfile.write(body[:cut] if first else body)
                self.wfile.flush()
                if first and stall:
                    proxy.release.wait(30)
                conn.close()

        self.server = socketserver.ThreadingTCPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_agent_resumes_a_download_broken_mid_body(tmp_path, broker):
    api = Api(broker.api_port, TOKEN)
    image1, image2 = os.urandom(50_000), os.urandom(400_000)
    _, art = api.call("POST", f"/api/v1/ota/artifacts?version=4.0.0&hardware_type={HW}", raw=image2)
    dev_id = unique("broken")
    api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    proxy = CuttingProxy(broker.api_port, cut=150_000)
    agent = AgentProc(tmp_path, dev_id, broker, pinned_key(api), image1, ["sh", "-c", "exit 0"],
                      api=f"http://{HOST}:{proxy.port}")
    try:
        agent.start()
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]}},
                         expect=201)
        assert agent.proc.wait(30) == 0, (agent.dir / "agent.1.log").read_text()
        assert (agent.dir / "b.img").read_bytes() == image2
        assert len(proxy.requests) == 2, proxy.requests
        assert "range" not in proxy.requests[0], proxy.requests
        start = int(proxy.requests[1]["range"].removeprefix("bytes=").rstrip("-"))
        assert 0 < start <= 150_000, proxy.requests
        assert b"download broken, resuming" in (agent.dir / "agent.1.log").read_bytes()
        agent.start()
        assert wait_until(lambda: api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}")["status"] == "COMPLETED",
                          30, 0.1)
    finally:
        agent.stop()
        proxy.close()


def test_agent_takes_the_delta_when_it_runs_the_base(tmp_path, broker):
    import random

    api = Api(broker.api_port, TOKEN)
    rng = random.Random(18)
    old = bytes(rng.getrandbits(8) for _ in range(200_000))
    new = bytearray(old)
    for _ in range(30):
        at = rng.randrange(len(new) - 100)
        new[at:at + 16] = bytes(rng.getrandbits(8) for _ in range(16))
    new = bytes(new) + b"new section" * 50
    _, base = api.call("POST", f"/api/v1/ota/artifacts?version=5.0.0&hardware_type={HW}", raw=old)
    _, target = api.call("POST", f"/api/v1/ota/artifacts?version=5.1.0&hardware_type={HW}", raw=new)
    delta = api.ok("POST", "/api/v1/ota/deltas", {"from": base["id"], "to": target["id"]}, expect=(200, 202))
    assert wait_until(lambda: api.ok("GET", f"/api/v1/ota/deltas/{delta['id']}")["status"] == "DONE", 60, 0.1)
    delta = api.ok("GET", f"/api/v1/ota/deltas/{delta['id']}")
    dev_id = unique("delta")
    api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    user, password = api.create_app(admin=True)
    watch = Client(broker.port, username=user, password=password)
    agent = AgentProc(tmp_path, dev_id, broker, pinned_key(api), old, ["sh", "-c", "exit 0"])
    try:
        watch.subscribe(f"$ota/{dev_id}/progress", 1)
        agent.start()
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": target["id"], "targets": {"devices": [dev_id]},
                                                          "delta_from": base["id"]}, expect=201)
        assert agent.proc.wait(30) == 0, (agent.dir / "agent.1.log").read_text()
        reports = [json.loads(m.payload) for m in watch.drain(0.5)]
        totals = {r["total"] for r in reports if r["state"] == "DOWNLOADING"}
        assert totals == {delta["size"]} and delta["size"] < len(new) // 4, (totals, delta)
        assert (agent.dir / "b.img").read_bytes() == new
        agent.start()
        assert wait_until(lambda: api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}")["status"] == "COMPLETED",
                          30, 0.1)
        assert agent.outcome(2)["version"] == "5.1.0" and agent.active_bytes() == new
    finally:
        watch.close()
        agent.stop()


def test_agent_killed_mid_download_resumes_after_restart(tmp_path, broker):
    api = Api(broker.api_port, TOKEN)
    image1, image2 = os.urandom(50_000), os.urandom(400_000)
    _, art = api.call("POST", f"/api/v1/ota/artifacts?version=6.0.0&hardware_type={HW}", raw=image2)
    dev_id = unique("killed")
    api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    proxy = CuttingProxy(broker.api_port, cut=200_000, stall=True)
    agent = AgentProc(tmp_path, dev_id, broker, pinned_key(api), image1, ["sh", "-c", "exit 0"],
                      api=f"http://{HOST}:{proxy.port}")
    try:
        agent.start()
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]}},
                         expect=201)
        part = agent.dir / "state" / "download"
        assert wait_until(lambda: part.exists() and part.stat().st_size >= 100_000, 15), "download started"
        agent.proc.kill()  # power cut in the middle of the download
        agent.proc.wait(10)
        proxy.release.set()
        have = part.stat().st_size
        agent.start()  # asks again ($ota/{id}/get) and resumes the partial file
        assert agent.proc.wait(30) == 0, (agent.dir / "agent.2.log").read_text()
        assert (agent.dir / "b.img").read_bytes() == image2
        ranged = [r for r in proxy.requests if "range" in r]
        assert ranged and ranged[-1]["range"] == f"bytes={have}-", (have, proxy.requests)
        agent.start()
        assert wait_until(lambda: api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}")["status"] == "COMPLETED",
                          30, 0.1)
        assert agent.outcome(3)["version"] == "6.0.0" and agent.active_bytes() == image2
    finally:
        agent.stop()
        proxy.close()


class FlippingProxy:
    """An HTTP proxy in front of the API that flips one byte in the middle of every body
    (a corrupted download)."""

    def __init__(self, api_port: int):
        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline(8192).decode()
                headers = {}
                while (h := self.rfile.readline(8192).decode().strip()):
                    k, v = h.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                method, path, _ = line.split(" ", 2)
                conn = http.client.HTTPConnection(HOST, api_port, timeout=30)
                conn.request(method, path, headers={k: v for k, v in headers.items() if k == "range"})
                resp = conn.getresponse()
                body = bytearray(resp.read())
                if body:
                    body[len(body) // 2] ^= 0x40
                head = f"HTTP/1.1 {resp.status} {resp.reason}\r\n"
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        head += f"{k}: {v}\r\n"
                head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                self.wfile.write(head.encode() + bytes(body))
                self.wfile.flush()
                conn.close()

        self.server = socketserver.ThreadingTCPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.timeout(240)
def test_delta_rollout_to_twenty_agents_with_kills_corruption_and_a_failing_self_test(tmp_path, broker):
    """The issue's end-to-end case: 20 agents running the base get a delta rollout; two are
    killed (SIGKILL) mid-download and restarted, one gets every download corrupted, one fails
    its self-test. Every final state and every slot's bytes are checked."""
    import random

    api = Api(broker.api_port, TOKEN)
    rng = random.Random(20)
    old = bytes(rng.getrandbits(8) for _ in range(300_000))
    new = bytearray(old)
    for _ in range(40):
        at = rng.randrange(len(new) - 100)
        new[at:at + 16] = bytes(rng.getrandbits(8) for _ in range(16))
    new = bytes(new) + b"release 2" * 100
    _, base = api.call("POST", f"/api/v1/ota/artifacts?version=6.0.0&hardware_type={HW}", raw=old)
    _, target = api.call("POST", f"/api/v1/ota/artifacts?version=6.1.0&hardware_type={HW}", raw=new)
    delta = api.ok("POST", "/api/v1/ota/deltas", {"from": base["id"], "to": target["id"]}, expect=(200, 202))
    assert wait_until(lambda: api.ok("GET", f"/api/v1/ota/deltas/{delta['id']}")["status"] == "DONE", 60, 0.1)
    key_hex = pinned_key(api)
    group = unique("twenty")
    ids = [f"{group}-{i:02d}" for i in range(20)]
    for dev_id in ids:
        api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123", "groups": [group]}, expect=201)
    killed, corrupted, failing = set(ids[15:17]), ids[17], ids[18]
    stalls = {d: CuttingProxy(broker.api_port, cut=1000, stall=True) for d in killed}
    flipper = FlippingProxy(broker.api_port)
    agents: dict[str, AgentProc] = {}
    try:
        for dev_id in ids:
            api_url = None
            if dev_id in stalls:
                api_url = f"http://{HOST}:{stalls[dev_id].port}"
            elif dev_id == corrupted:
                api_url = f"http://{HOST}:{flipper.port}"
            test_cmd = ["sh", "-c", "exit 4"] if dev_id == failing else ["sh", "-c", "exit 0"]
            agents[dev_id] = AgentProc(tmp_path, dev_id, broker, key_hex, old, test_cmd, api=api_url)
            agents[dev_id].start()
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {
            "name": "twenty", "artifact": target["id"], "targets": {"group": group},
            "delta_from": base["id"], "waves": {"percent": [25]}, "max_retries": 1,
        }, expect=201)
        # The stalled agents are killed once their download has started (the proxy holds it).
        deadline = time.monotonic() + 60
        restarted = set()
        last = {}
        while time.monotonic() < deadline:
            for dev_id in killed - restarted:
                if stalls[dev_id].requests:
                    agents[dev_id].stop()  # SIGKILL mid-download
                    agents[dev_id].start()
                    restarted.add(dev_id)
            for a in agents.values():
                if a.proc.poll() is not None:
                    assert a.proc.returncode == 0, (a.id, (a.dir / f"agent.{a.starts}.log").read_text()[-2000:])
                    a.start()  # the "reboot"
            last = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}")
            if last["status"] == "COMPLETED":
                break
            time.sleep(0.1)
        left = [(d["device"], d["state"], d["attempts"]) for d in api.ok(
            "GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices?limit=100")["devices"] if d["state"] not in ("SUCCEEDED",)]
        assert last["status"] == "COMPLETED", ({k: v for k, v in last["counts"].items() if v}, left, restarted)
        counts = {k: v for k, v in last["counts"].items() if v}
        assert counts == {"SUCCEEDED": 18, "FAILED": 1, "ROLLED_BACK": 1}, counts
        page = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices?limit=100")
        states = {d["device"]: d for d in page["devices"]}
        # Retried once (max_retries 1), corrupted again: FAILED for good.
        assert states[corrupted]["state"] == "FAILED" and states[corrupted]["attempts"] == 2, states[corrupted]
        assert states[failing]["state"] == "ROLLED_BACK", states[failing]
        time.sleep(0.5)  # let the last restarts print their boot line
        for dev_id, a in agents.items():
            slots = {s: (a.dir / f"{s}.img").read_bytes() for s in ("a", "b")}
            active = a.outcome(a.starts)["active"].lower()
            if dev_id in (corrupted, failing):
                assert active == "a" and slots["a"] == old, dev_id
            else:
                assert active == "b" and slots["b"] == new and slots["a"] == old, dev_id
        for dev_id in killed:
            assert agents[dev_id].starts >= 2, (dev_id, agents[dev_id].starts)  # killed, then started again
    finally:
        for a in agents.values():
            a.stop()
        for proxy in stalls.values():
            proxy.close()
        flipper.close()
