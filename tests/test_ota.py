"""OTA updates through the real binary (issue 18): firmware artifacts uploaded over HTTP
(streamed, hashed, downloadable with Range), rollouts in waves to paho devices that follow
`$ota/{id}/notify` and report on `$ota/{id}/progress`, operator actions, bad input, and a
kill -9 in the middle of a rollout."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from helpers import HOST, Api, Broker, unique, wait_until

TOKEN = "ota-test-token-0123456789"
MAX_ARTIFACT = 1 << 20
CONFIG = f"""
[auth]
allow_anonymous = false

[api]
token = "{TOKEN}"

[ota]
max_artifact_bytes = {MAX_ARTIFACT}
max_artifacts = 20
"""
STEPS = ["DOWNLOADING", "VERIFYING", "INSTALLING", "REBOOTING", "SUCCEEDED"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("ota"), raw_config=CONFIG).start()
    yield b
    b.stop()


@pytest.fixture
def api(broker) -> Api:
    api = Api(broker.api_port, TOKEN)
    api.data_dir = broker.workdir / "myriad-data"
    return api


def fields(buf: bytes) -> dict[int, list]:
    """The fields of one protobuf message (varints and length-delimited only), by number."""
    out: dict[int, list] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.setdefault(number, []).append(varint())
        elif wire == 2:
            n = varint()
            out.setdefault(number, []).append(buf[i:i + n])
            i += n
        else:
            raise ValueError(f"wire type {wire}")
    return out


def upload(api: Api, image: bytes, version: str = "1.0.0", hardware: str = "board-a") -> tuple[int, object]:
    return api.call("POST", f"/api/v1/ota/artifacts?version={version}&hardware_type={hardware}&notes=first",
                    raw=image)


def download(api: Api, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(api.base + path, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}


class Device:
    """A paho device that follows update notifications: reports every step up to
    SUCCEEDED, or FAILED (mode "fail"), or nothing (mode "silent")."""

    def __init__(self, port: int, dev_id: str, password: str, mode: str = "ok", clean: bool = True):
        self.id = dev_id
        self.mode = mode
        self.notes: list[dict] = []
        self.other: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev_id, protocol=mqtt.MQTTv5,
                             reconnect_on_failure=False)
        self.c.username_pw_set(dev_id, password)
        self.c.on_message = self._on_message
        connected, subscribed = threading.Event(), threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: connected.set()
        self.c.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        props = None
        if not clean:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.c.connect(HOST, port, 30, clean_start=clean, properties=props)
        self.c.loop_start()
        assert connected.wait(5), "device did not connect"
        self.c.subscribe(f"$ota/{dev_id}/notify", 1)
        assert subscribed.wait(5), "device did not subscribe"

    def _on_message(self, client, userdata, msg):
        if not msg.topic.endswith("/notify"):
            with self.lock:
                self.other.append((msg.topic, msg.payload))
            return
        note = json.loads(msg.payload)
        with self.lock:
            self.notes.append(note)
        if self.mode == "silent" or note.get("cancel"):
            return
        steps = STEPS if self.mode == "ok" else ["DOWNLOADING", "FAILED"]
        for state in steps:
            body = {"rollout": note["rollout"], "state": state}
            if state == "DOWNLOADING":
                body.update(done=note["artifact"]["size"], total=note["artifact"]["size"])
            if state == "FAILED":
                body["reason"] = "flash write error"
            client.publish(f"$ota/{self.id}/progress", json.dumps(body), 1)

    def ask(self) -> None:
        """Asks for pending updates, as an agent does after each connect."""
        self.c.publish(f"$ota/{self.id}/get", b"", 1)

    def notified(self) -> list[dict]:
        with self.lock:
            return list(self.notes)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def devices_in_group(api: Api, group: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        dev_id = f"{group}-{i:02d}"
        api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123", "groups": [group]}, expect=201)
        ids.append(dev_id)
    return ids


def wait_rollout(api: Api, rollout: str, pred, timeout: float = 15.0) -> dict:
    last = {}

    def check():
        nonlocal last
        last = api.ok("GET", f"/api/v1/ota/rollouts/{rollout}")
        return pred(last)

    assert wait_until(check, timeout, 0.05), f"rollout stayed {last}"
    return last


def test_artifacts_upload_list_download_delete(api):
    image = os.urandom(300_000)
    status, art = upload(api, image)
    assert status == 201, art
    assert art["size"] == len(image) and art["sha256"] == hashlib.sha256(image).hexdigest()
    assert (art["version"], art["hardware_type"], art["notes"]) == ("1.0.0", "board-a", "first")
    assert art in api.ok("GET", "/api/v1/ota/artifacts")["artifacts"]
    assert api.ok("GET", f"/api/v1/ota/artifacts/{art['id']}") == art

    status, body, _ = download(api, f"/api/v1/ota/artifacts/{art['id']}/content")
    assert status == 200 and body == image
    # A broken download resumes with a Range request.
    status, body, headers = download(api, f"/api/v1/ota/artifacts/{art['id']}/content",
                                     {"Range": "bytes=100000-"})
    assert status == 206 and body == image[100000:], headers
    assert headers["content-range"] == f"bytes 100000-{len(image) - 1}/{len(image)}"
    status, _, _ = download(api, f"/api/v1/ota/artifacts/{art['id']}/content", {"Range": "bytes=999999-"})
    assert status == 416
    status, _, _ = download(api, f"/api/v1/ota/artifacts/{art['id']}/content", {"Authorization": "Bearer nope"})
    assert status == 401

    api.ok("DELETE", f"/api/v1/ota/artifacts/{art['id']}", expect=204)
    assert api.call("GET", f"/api/v1/ota/artifacts/{art['id']}")[0] == 404
    assert download(api, f"/api/v1/ota/artifacts/{art['id']}/content")[0] == 404
    assert api.call("DELETE", f"/api/v1/ota/artifacts/{art['id']}")[0] == 404


@pytest.mark.parametrize("query,body,status,names", [
    ("version=1.0&hardware_type=a%2Fb", b"x", 400, "hardware_type"),
    ("version=&hardware_type=a", b"x", 400, "version"),
    ("version=" + "9" * 65 + "&hardware_type=a", b"x", 400, "version"),
    ("version=1&hardware_type=a&notes=" + "n" * 4097, b"x", 400, "notes"),
    ("version=1&hardware_type=a", b"", 400, "empty"),
    ("hardware_type=a", b"x", 400, "version"),
    ("version=1&hardware_type=a&colour=red", b"x", 400, "colour"),
])
def test_bad_uploads_are_refused_by_name(api, query, body, status, names):
    before = api.ok("GET", "/api/v1/ota/artifacts")["artifacts"]
    got, answer = api.call("POST", f"/api/v1/ota/artifacts?{query}", raw=body)
    assert got == status and names in answer["message"], answer
    assert api.ok("GET", "/api/v1/ota/artifacts")["artifacts"] == before, "nothing stored"


def test_oversize_uploads_are_refused_streamed_or_declared(api):
    import http.client

    before = api.ok("GET", "/api/v1/ota/artifacts")["artifacts"]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
    path = "/api/v1/ota/artifacts?version=9&hardware_type=a"
    # Chunked, no length: the server counts as it streams and stops one byte past the limit.
    conn = http.client.HTTPConnection(HOST, api.base.rsplit(":", 1)[1], timeout=30)
    chunks = [b"z" * 65536] * (MAX_ARTIFACT // 65536) + [b"z"]
    conn.request("POST", path, body=iter(chunks), headers=headers, encode_chunked=True)
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    assert resp.status == 413 and "max_artifact_bytes" in answer["message"], answer
    conn.close()
    # Declared too large: refused before a byte of the body is read.
    conn = http.client.HTTPConnection(HOST, api.base.rsplit(":", 1)[1], timeout=30)
    conn.putrequest("POST", path)
    for name, value in {**headers, "Content-Length": str(MAX_ARTIFACT + 1)}.items():
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    assert resp.status == 413 and "max_artifact_bytes" in answer["message"], answer
    conn.close()
    # Exactly at the limit is fine.
    status, art = upload(api, b"q" * MAX_ARTIFACT, version="9")
    assert status == 201 and art["size"] == MAX_ARTIFACT
    api.ok("DELETE", f"/api/v1/ota/artifacts/{art['id']}", expect=204)
    assert api.ok("GET", "/api/v1/ota/artifacts")["artifacts"] == before
    assert not [p for p in os.listdir(api.data_dir / "ota" / "artifacts") if p.endswith(".partial")]


def test_deltas_are_built_in_the_background_and_cached(api):
    import random

    rng = random.Random(7)
    old = bytes(rng.getrandbits(8) for _ in range(200_000))
    new = bytearray(old)
    for _ in range(50):  # scattered small edits, as between two firmware builds
        at = rng.randrange(len(new) - 100)
        new[at:at + 20] = bytes(rng.getrandbits(8) for _ in range(20))
    new = bytes(new[:150_000]) + b"appended section" * 100 + bytes(new[150_000:])
    _, base = upload(api, old, version="10.0.0", hardware="board-d")
    _, target = upload(api, new, version="10.1.0", hardware="board-d")
    _, other = upload(api, b"other board", version="10.1.0", hardware="board-e")
    status, delta = api.call("POST", "/api/v1/ota/deltas", {"from": base["id"], "to": target["id"]})
    assert status == 202 and delta["id"] == f"{base['id']}-{target['id']}", delta
    assert delta["status"] in ("QUEUED", "RUNNING")
    last = {}

    def done():
        nonlocal last
        last = api.ok("GET", f"/api/v1/ota/deltas/{delta['id']}")
        return last["status"] in ("DONE", "FAILED")

    assert wait_until(done, 60, 0.1), last
    assert last["status"] == "DONE" and last["phase"] == "done", last
    assert last["codec"] in ("xz", "zstd") and 0 < last["size"] < len(new) // 10, last
    status, patch, _ = download(api, f"/api/v1/ota/deltas/{delta['id']}/content")
    assert status == 200 and patch.startswith(b"MYRDELTA") and len(patch) == last["size"]
    assert hashlib.sha256(patch).hexdigest() == last["sha256"]
    # Cached: asking again answers at once with the same delta.
    status, again = api.call("POST", "/api/v1/ota/deltas", {"from": base["id"], "to": target["id"]})
    assert status == 200 and again == last
    assert last in api.ok("GET", "/api/v1/ota/deltas")["deltas"]
    for body, says in [
        ({"from": base["id"], "to": other["id"]}, "hardware type"),
        ({"from": base["id"], "to": base["id"]}, "same"),
        ({"from": "a0000000000000000", "to": target["id"]}, "not found"),
        ({"from": base["id"]}, "to"),
    ]:
        status, answer = api.call("POST", "/api/v1/ota/deltas", body)
        assert status in (400, 422) and says in answer["message"], (body, answer)
    assert api.call("GET", "/api/v1/ota/deltas/x-y")[0] == 404
    # Deleting an artifact deletes its deltas.
    api.ok("DELETE", f"/api/v1/ota/artifacts/{target['id']}", expect=204)
    assert api.call("GET", f"/api/v1/ota/deltas/{delta['id']}")[0] == 404
    assert download(api, f"/api/v1/ota/deltas/{delta['id']}/content")[0] == 404


def test_a_rollout_offers_its_delta(broker, api):
    import base64

    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    old = os.urandom(60_000)
    new = old[:30_000] + b"new code" * 50 + old[30_000:]
    _, base = upload(api, old, version="11.0.0", hardware="board-f")
    _, target = upload(api, new, version="11.1.0", hardware="board-f")
    dev_id = unique("delta")
    api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    body = {"artifact": target["id"], "targets": {"devices": [dev_id]}, "delta_from": base["id"]}
    status, answer = api.call("POST", "/api/v1/ota/rollouts", body)
    assert status == 409 and "not built" in answer["message"], answer
    delta = api.ok("POST", "/api/v1/ota/deltas", {"from": base["id"], "to": target["id"]}, expect=(200, 202))
    assert wait_until(lambda: api.ok("GET", f"/api/v1/ota/deltas/{delta['id']}")["status"] == "DONE", 60, 0.1)
    delta = api.ok("GET", f"/api/v1/ota/deltas/{delta['id']}")
    device = Device(broker.port, dev_id, "dev-pw-123", mode="silent")
    try:
        rollout = api.ok("POST", "/api/v1/ota/rollouts", body, expect=201)
        assert rollout["delta"] == delta["id"]
        assert wait_until(lambda: device.notified(), 5)
        offer = device.notified()[0]["delta"]
        assert (offer["id"], offer["size"], offer["sha256"]) == (delta["id"], delta["size"], delta["sha256"])
        assert offer["base_sha256"] == base["sha256"]
        with urllib.request.urlopen(api.base + offer["url"], timeout=30) as resp:
            patch = resp.read()
        assert hashlib.sha256(patch).hexdigest() == delta["sha256"] and patch.startswith(b"MYRDELTA")
        public = load_pem_public_key(api.ok("GET", "/api/v1/ota/signing-key")["pem"].encode())
        envelope = fields(base64.b64decode(offer["manifest"]))
        public.verify(envelope[3][0], envelope[1][0])
        manifest = fields(envelope[1][0])
        assert manifest[2] == [b"11.0.0"] and manifest[5] == [delta["size"]]
        assert manifest[6] == [bytes.fromhex(base["sha256"])] and manifest[8] == [bytes.fromhex(delta["sha256"])]
        assert manifest[7] == [bytes.fromhex(target["sha256"])]
        # The base stays while the rollout offers its delta.
        status, answer = api.call("DELETE", f"/api/v1/ota/artifacts/{base['id']}")
        assert status == 409 and rollout["id"] in answer["message"]
    finally:
        device.close()
    api.ok("POST", f"/api/v1/ota/rollouts/{rollout['id']}/cancel")


def test_a_rollout_in_waves_to_real_devices(broker, api):
    group = unique("fleet")
    ids = devices_in_group(api, group, 6)
    _, art = upload(api, os.urandom(50_000), version="2.0.0")
    devices = [Device(broker.port, d, "dev-pw-123", mode="fail" if d == ids[5] else "ok") for d in ids]
    try:
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {
            "name": "spring", "artifact": art["id"], "targets": {"group": group},
            "waves": {"count": [2]}, "max_retries": 0,
        }, expect=201)
        assert rollout["status"] == "RUNNING" and rollout["devices"] == 6
        assert rollout["targets"] == {"group": group}
        # An artifact in use stays.
        status, answer = api.call("DELETE", f"/api/v1/ota/artifacts/{art['id']}")
        assert status == 409 and rollout["id"] in answer["message"], answer
        done = wait_rollout(api, rollout["id"], lambda r: r["status"] == "COMPLETED")
        assert done["counts"]["SUCCEEDED"] == 5 and done["counts"]["FAILED"] == 1, done
        assert done["waves_started"] == 2
        for device in devices:
            notes = device.notified()
            assert len(notes) == 1, (device.id, notes)
            note = notes[0]
            assert note["rollout"] == rollout["id"] and note["attempt"] == 1
            assert note["artifact"] == {k: art[k] for k in ("id", "version", "hardware_type", "size", "sha256")}
            assert note["url"].startswith(f"/ota/v1/download/{art['id']}?device={device.id}&expires="), note
        page = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices?state=FAILED")
        assert page["total"] == 1 and page["devices"][0]["device"] == ids[5]
        assert page["devices"][0]["reason"] == "flash write error"
        page = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices?limit=2&offset=1")
        assert [d["device"] for d in page["devices"]] == ids[1:3] and page["total"] == 6
        ok = page["devices"][0]
        assert (ok["state"], ok["attempts"], ok["done"], ok["total"]) == ("SUCCEEDED", 1, 50_000, 50_000)
        # A finished rollout keeps no artifact.
        api.ok("DELETE", f"/api/v1/ota/artifacts/{art['id']}", expect=204)
    finally:
        for device in devices:
            device.close()


def test_the_first_wave_goes_first(broker, api):
    group = unique("waves")
    ids = devices_in_group(api, group, 4)
    _, art = upload(api, b"firmware", version="3.0.0")
    devices = [Device(broker.port, d, "dev-pw-123", mode="silent") for d in ids]
    try:
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {
            "artifact": art["id"], "targets": {"devices": ids}, "waves": {"percent": [25]},
        }, expect=201)
        assert rollout["targets"] == {"devices": 4}
        assert wait_until(lambda: devices[0].notified(), 5)
        time.sleep(1.5)
        assert [bool(d.notified()) for d in devices] == [True, False, False, False], "wave 2 waits for wave 1"
        # Pause holds the next wave; resume releases it.
        paused = api.ok("POST", f"/api/v1/ota/rollouts/{rollout['id']}/pause")
        assert paused["status"] == "PAUSED"
        assert api.call("POST", f"/api/v1/ota/rollouts/{rollout['id']}/pause")[0] == 409
        for state in STEPS:
            devices[0].c.publish(f"$ota/{ids[0]}/progress", json.dumps({"rollout": rollout["id"], "state": state}), 1)
        wait_rollout(api, rollout["id"], lambda r: r["counts"]["SUCCEEDED"] == 1)
        time.sleep(1.5)
        assert not any(d.notified() for d in devices[1:]), "paused: no new wave"
        api.ok("POST", f"/api/v1/ota/rollouts/{rollout['id']}/resume")
        assert wait_until(lambda: all(d.notified() for d in devices), 5)
        # Cancel tells the notified devices.
        canceled = api.ok("POST", f"/api/v1/ota/rollouts/{rollout['id']}/cancel")
        assert canceled["status"] == "CANCELED" and canceled["counts"]["CANCELED"] == 3, canceled
        assert wait_until(lambda: all(len(d.notified()) == 2 for d in devices[1:]), 5)
        assert devices[1].notified()[1] == {"rollout": rollout["id"], "cancel": True}
        assert api.call("POST", f"/api/v1/ota/rollouts/{rollout['id']}/resume")[0] == 409
    finally:
        for device in devices:
            device.close()


def test_notifications_carry_a_signed_manifest(broker, api):
    import base64

    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = api.ok("GET", "/api/v1/ota/signing-key")
    assert key["algorithm"] == "ed25519"
    public = load_pem_public_key(key["pem"].encode())
    dev_id = unique("sig")
    api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    image = os.urandom(5000)
    status, art = api.call("POST", "/api/v1/ota/artifacts?version=8.1.0&hardware_type=board-s&security_counter=42",
                           raw=image)
    assert status == 201 and art["security_counter"] == 42
    device = Device(broker.port, dev_id, "dev-pw-123", mode="silent")
    try:
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]}},
                         expect=201)
        assert wait_until(lambda: device.notified(), 5)
        envelope = fields(base64.b64decode(device.notified()[0]["manifest"]))
        manifest_bytes, algorithm, signature = envelope[1][0], envelope[2][0], envelope[3][0]
        assert algorithm == 1  # ED25519
        public.verify(signature, manifest_bytes)  # raises if the signature is bad
        manifest = fields(manifest_bytes)
        assert manifest[1] == [b"8.1.0"] and manifest[3] == [b"board-s"]
        assert manifest[4] == [len(image)] and manifest[7] == [hashlib.sha256(image).digest()]
        assert manifest[9] == [42]
        flipped = bytearray(manifest_bytes)
        flipped[0] ^= 1
        with pytest.raises(Exception):
            public.verify(signature, bytes(flipped))
    finally:
        device.close()
    api.ok("POST", f"/api/v1/ota/rollouts/{rollout['id']}/cancel")


def test_a_configured_sm2_key_signs_with_its_chain(tmp_path):
    import base64
    import subprocess

    from helpers import myriad_bin

    keys = tmp_path / "keys"
    done = subprocess.run([str(myriad_bin()), "ctl", "ota", "keygen", "--out", str(keys), "--algorithm", "sm2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    config = CONFIG + f'signing_key = "{keys / "sm2-leaf.key"}"\nsigning_chain = "{keys / "sm2-chain.pem"}"\n'
    b = Broker(tmp_path / "node", raw_config=config).start()
    try:
        api = Api(b.api_port, TOKEN)
        key = api.ok("GET", "/api/v1/ota/signing-key")
        assert key["algorithm"] == "sm2" and key["pem"].count("BEGIN CERTIFICATE") >= 2
        dev_id = unique("sm2")
        api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
        _, art = upload(api, b"sm2 firmware")
        device = Device(b.port, dev_id, "dev-pw-123", mode="silent")
        try:
            api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]}},
                   expect=201)
            assert wait_until(lambda: device.notified(), 5)
            envelope = fields(base64.b64decode(device.notified()[0]["manifest"]))
            assert envelope[2] == [2] and len(envelope[3][0]) == 64  # SM2_SM3, r || s
            assert len(envelope[4]) >= 2, "the chain rides along, leaf first"
        finally:
            device.close()
    finally:
        b.stop()


def test_devices_download_with_their_signed_url(broker, api):
    import urllib.parse

    ids = [unique("dl") for _ in range(2)]
    for dev_id in ids:
        api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    image = os.urandom(120_000)
    _, art = upload(api, image, version="6.0.0")
    device = Device(broker.port, ids[0], "dev-pw-123", mode="silent")
    try:
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": ids[:1]}},
                         expect=201)
        assert wait_until(lambda: device.notified(), 5)
        url = device.notified()[0]["url"]
    finally:
        device.close()

    def fetch(path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
        req = urllib.request.Request(api.base + path, headers=headers or {})  # no bearer token
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as e:
            return e.code, e.read(), {}

    status, body, _ = fetch(url)
    assert status == 200 and hashlib.sha256(body).hexdigest() == art["sha256"]
    status, body, headers = fetch(url, {"Range": "bytes=70000-"})
    assert status == 206 and body == image[70000:] and headers["content-range"].endswith(f"/{len(image)}")
    path, _, query = url.partition("?")
    q = dict(urllib.parse.parse_qsl(query))
    forged = [
        {**q, "sig": q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")},  # one hex digit changed
        {**q, "device": ids[1]},  # another device
        {**q, "expires": str(int(q["expires"]) + 1)},  # a longer life
        {**q, "expires": "1", "sig": q["sig"]},  # long expired
        {**q, "sig": "zz"},
    ]
    for bad in forged:
        status, body, _ = fetch(path + "?" + urllib.parse.urlencode(bad))
        assert status == 403 and b"not valid" in body, (bad, body)
    assert fetch(path + "?device=x")[0] == 400
    # A disabled device's URL stops working.
    api.ok("PATCH", f"/api/v1/devices/{ids[0]}", {"enabled": False})
    assert fetch(url)[0] == 403
    api.ok("PATCH", f"/api/v1/devices/{ids[0]}", {"enabled": True})
    assert fetch(url)[0] == 200
    api.ok("POST", f"/api/v1/ota/rollouts/{rollout['id']}/cancel")


def test_mqtt_chunks_and_the_bandwidth_cap(broker, api):
    ids = [unique("chunk") for _ in range(2)]
    for dev_id in ids:
        api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    image = os.urandom(200_000)
    _, art = upload(api, image, version="7.0.0")
    rate = 100_000
    device = Device(broker.port, ids[0], "dev-pw-123", mode="silent")
    stranger = Device(broker.port, ids[1], "dev-pw-123", mode="silent")
    try:
        for d in (device, stranger):
            d.c.subscribe([(f"$ota/{d.id}/chunk/+/+", 1), (f"$ota/{d.id}/chunk/rejected", 1)])
        time.sleep(0.3)
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {
            "artifact": art["id"], "targets": {"devices": ids[:1]}, "max_bytes_per_second": rate,
        }, expect=201)
        assert rollout["max_bytes_per_second"] == rate
        assert wait_until(lambda: device.notified(), 5)

        def ask(d: Device, **body) -> tuple[str, bytes]:
            with d.lock:
                d.other.clear()
            d.c.publish(f"$ota/{d.id}/chunk/get", json.dumps(body), 1)
            assert wait_until(lambda: d.other, 10), body
            with d.lock:
                return d.other[0]

        started = time.monotonic()
        got = b""
        while len(got) < len(image):
            topic, chunk = ask(device, artifact=art["id"], offset=len(got), length=65536)
            assert topic == f"$ota/{device.id}/chunk/{art['id']}/{len(got)}", topic
            got += chunk
        elapsed = time.monotonic() - started
        assert got == image
        # 200 kB at 100 kB/s with one second of burst cannot take less than about a second.
        assert elapsed >= 0.8, elapsed
        refusals = [
            (device, {"artifact": art["id"], "offset": 0, "length": 0}, "length"),
            (device, {"artifact": art["id"], "offset": 0, "length": 65537}, "length"),
            (device, {"artifact": art["id"], "offset": len(image), "length": 10}, "offset"),
            (device, {"artifact": "a0000000000000000", "offset": 0, "length": 10}, "no update"),
            (stranger, {"artifact": art["id"], "offset": 0, "length": 10}, "no update"),
        ]
        for d, body, says in refusals:
            topic, payload = ask(d, **body)
            assert topic == f"$ota/{d.id}/chunk/rejected" and says in json.loads(payload)["message"], (body, payload)
        # The cap holds for HTTP downloads of the same rollout too.
        started = time.monotonic()
        with urllib.request.urlopen(api.base + device.notified()[0]["url"], timeout=30) as resp:
            assert resp.read() == image
        assert time.monotonic() - started >= 0.8
    finally:
        device.close()
        stranger.close()
    api.ok("POST", f"/api/v1/ota/rollouts/{rollout['id']}/cancel")
    status, answer = api.call("POST", "/api/v1/ota/rollouts", {
        "artifact": art["id"], "targets": {"devices": ids[:1]}, "max_bytes_per_second": 1023})
    assert status == 400 and "max_bytes_per_second" in answer["message"]


def test_bad_rollouts_and_reports_are_refused(broker, api):
    dev_id = unique("otabad")
    api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    _, art = upload(api, b"fw", version="4.0.0")
    cases = [
        ({"artifact": "a0000000000000000", "targets": {"devices": [dev_id]}}, "artifact"),
        ({"artifact": art["id"], "targets": {"devices": [dev_id], "group": "g"}}, "targets"),
        ({"artifact": art["id"], "targets": {"devices": ["nobody-here"]}}, "nobody-here"),
        ({"artifact": art["id"], "targets": {"devices": []}}, "no devices"),
        ({"artifact": art["id"], "targets": {"devices": [dev_id, dev_id]}}, "twice"),
        ({"artifact": art["id"], "targets": {"group": unique("empty")}}, "no devices"),
        ({"artifact": art["id"], "targets": {"devices": [dev_id]}, "waves": {"percent": [60, 50]}}, "waves"),
        ({"artifact": art["id"], "targets": {"devices": [dev_id]}, "max_retries": 11}, "max_retries"),
        ({"artifact": art["id"], "targets": {"devices": [dev_id]}, "advance_percent": 0}, "advance_percent"),
        ({"artifact": art["id"], "targets": {"devices": [dev_id]}, "in_progress_timeout_secs": 0},
         "in_progress_timeout_ms"),
        ({"artifact": art["id"], "targets": {"devices": [dev_id]}, "in_progress_timeout_secs": 2**63},
         "in_progress_timeout_secs"),
        ({"artifact": art["id"], "targets": {"devices": [dev_id]}, "name": "n" * 129}, "name"),
        ({"artifact": art["id"], "targets": {"devices": [dev_id]}, "colour": 1}, "colour"),
    ]
    before = len(api.ok("GET", "/api/v1/ota/rollouts")["rollouts"])
    for body, names in cases:
        status, answer = api.call("POST", "/api/v1/ota/rollouts", body)
        assert status in (400, 422) and names in answer["message"], (body, answer)
    assert len(api.ok("GET", "/api/v1/ota/rollouts")["rollouts"]) == before
    assert api.call("GET", "/api/v1/ota/rollouts/r0000000000000000")[0] == 404
    status, answer = api.call("GET", "/api/v1/ota/rollouts/r0000000000000000/devices?state=SLEEPING")
    assert status == 400 and "state" in answer["message"]

    # Hostile progress reports: garbage, oversize, unknown rollout, a device not in it.
    device = Device(broker.port, dev_id, "dev-pw-123", mode="silent")
    try:
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": art["id"], "targets": {"devices": [dev_id]}},
                         expect=201)
        assert wait_until(lambda: device.notified(), 5)
        for payload in [b"\xff\x00", b"{}", json.dumps({"rollout": rollout["id"], "state": "SUCCEEDED",
                                                        "pad": "x" * 5000}).encode(),
                        json.dumps({"rollout": "r0000000000000000", "state": "SUCCEEDED"}).encode(),
                        json.dumps({"rollout": rollout["id"], "state": "QUEUED"}).encode(),
                        json.dumps({"rollout": rollout["id"], "state": "DOWNLOADING", "done": 5, "total": 1}).encode()]:
            device.c.publish(f"$ota/{dev_id}/progress", payload, 1)
        time.sleep(1.0)
        now = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}")
        assert now["counts"]["NOTIFIED"] == 1 and now["status"] == "RUNNING", now
        broker.assert_alive()
    finally:
        device.close()
    api.ok("POST", f"/api/v1/ota/rollouts/{rollout['id']}/cancel")


def test_kill9_mid_rollout_resumes(tmp_path):
    first = Broker(tmp_path / "node", raw_config=CONFIG).start()
    api = Api(first.api_port, TOKEN)
    ids = [unique("k9") for _ in range(3)]
    for dev_id in ids:
        api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
    _, art = upload(api, os.urandom(10_000), version="5.0.0")
    working = Device(first.port, ids[0], "dev-pw-123", mode="silent", clean=False)
    # ids[1] has a persistent session and is offline when notified; ids[2] never connected.
    offline = Device(first.port, ids[1], "dev-pw-123", mode="silent", clean=False)
    offline.close()
    try:
        rollout = api.ok("POST", "/api/v1/ota/rollouts", {
            "artifact": art["id"], "targets": {"devices": ids}, "max_retries": 1,
        }, expect=201)
        assert wait_until(lambda: working.notified(), 5)
        working.c.publish(f"$ota/{ids[0]}/progress",
                          json.dumps({"rollout": rollout["id"], "state": "DOWNLOADING", "done": 10, "total": 99}), 1)
        wait_rollout(api, rollout["id"], lambda r: r["counts"]["DOWNLOADING"] == 1)
        before = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices")
    finally:
        working.close()
    first.proc.kill()  # SIGKILL, our own process
    first.proc.wait(timeout=10)
    first.stop()
    second = Broker(tmp_path / "node", raw_config=CONFIG).start()
    try:
        api = Api(second.api_port, TOKEN)
        after = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices")
        assert after == before
        assert api.ok("GET", f"/api/v1/ota/artifacts/{art['id']}")["sha256"] == art["sha256"]
        # The persistent session gets the notification queued while it was offline; the
        # device that never connected asks for it; the one downloading goes on.
        back = [Device(second.port, d, "dev-pw-123", clean=False) for d in ids]
        try:
            back[2].ask()
            for state in STEPS[1:]:
                back[0].c.publish(f"$ota/{ids[0]}/progress",
                                  json.dumps({"rollout": rollout["id"], "state": state}), 1)
            done = wait_rollout(api, rollout["id"], lambda r: r["status"] == "COMPLETED", timeout=10)
            assert done["counts"]["SUCCEEDED"] == 3, done
            assert [n["attempt"] for n in back[1].notified()][:1] == [1]
        finally:
            for device in back:
                device.close()
        # Settled (finished, every device final): its planner leaves memory, its devices are
        # read from the store.
        assert wait_until(lambda: ota_gauge(second.api_port, "myriad_ota_rollouts", "live") == 0, 5)
        assert ota_gauge(second.api_port, "myriad_ota_rollout_devices_in_memory") == 0
        assert ota_gauge(second.api_port, "myriad_ota_rollouts", "settled") == 1
        settled = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices")
        assert [d["state"] for d in settled["devices"]] == ["SUCCEEDED"] * 3 and settled["total"] == 3, settled
        page = api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices?state=SUCCEEDED&offset=1&limit=1")
        assert page["total"] == 3 and page["devices"] == settled["devices"][1:2], page
        status, body = api.call("POST", f"/api/v1/ota/rollouts/{rollout['id']}/cancel")
        assert status == 409 and "COMPLETED" in json.dumps(body), body
    finally:
        second.stop()
    # After a restart it is restored as settled: same answers, nothing in memory.
    third = Broker(tmp_path / "node", raw_config=CONFIG).start()
    try:
        api = Api(third.api_port, TOKEN)
        assert api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}")["counts"]["SUCCEEDED"] == 3
        assert api.ok("GET", f"/api/v1/ota/rollouts/{rollout['id']}/devices") == settled
        assert rollout["id"] in json.dumps(api.ok("GET", "/api/v1/ota/rollouts"))
        assert ota_gauge(third.api_port, "myriad_ota_rollouts", "live") == 0
        assert ota_gauge(third.api_port, "myriad_ota_rollouts", "settled") == 1
    finally:
        third.stop()


def ota_gauge(api_port: int, name: str, state: str | None = None) -> float:
    text = urllib.request.urlopen(f"http://{HOST}:{api_port}/metrics", timeout=10).read().decode()
    labels = f'{{state="{state}"}}' if state else ""
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_ctl_ota_commands(broker, api, tmp_path):
    from helpers import json_ctl

    ctl = json_ctl(broker.api_port, TOKEN)
    image = tmp_path / "fw.bin"
    image.write_bytes(os.urandom(300_000))
    done = ctl("ota", "upload", str(image), "--version", "12.0.0", "--hardware-type", "board-c",
               "--notes", "from ctl", "--security-counter", "7")
    assert done.returncode == 0, done.stderr
    art = json.loads(done.stdout)
    assert art["size"] == 300_000 and art["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert (art["notes"], art["security_counter"]) == ("from ctl", 7)
    assert art in json.loads(ctl("ota", "artifacts", "list").stdout)["artifacts"]
    assert json.loads(ctl("ota", "artifacts", "get", art["id"]).stdout) == art

    image.write_bytes(image.read_bytes()[:100_000] + b"patched" + image.read_bytes()[100_000:])
    art2 = json.loads(ctl("ota", "upload", str(image), "--version", "12.1.0", "--hardware-type", "board-c").stdout)
    delta = json.loads(ctl("ota", "deltas", "create", art["id"], art2["id"]).stdout)
    assert delta["id"] == f"{art['id']}-{art2['id']}"
    assert wait_until(lambda: json.loads(ctl("ota", "deltas", "get", delta["id"]).stdout)["status"] == "DONE", 60, 0.2)
    assert any(d["id"] == delta["id"] for d in json.loads(ctl("ota", "deltas", "list").stdout)["deltas"])

    group = unique("ctlg")
    devices_in_group(api, group, 3)
    done = ctl("ota", "rollouts", "create", art2["id"], "--group", group, "--wave-percents", "34",
               "--max-retries", "1", "--delta-from", art["id"], "--name", "from ctl")
    assert done.returncode == 0, done.stderr
    rollout = json.loads(done.stdout)
    assert (rollout["name"], rollout["devices"], rollout["delta"]) == ("from ctl", 3, delta["id"])
    page = json.loads(ctl("ota", "rollouts", "devices", rollout["id"], "--state", "QUEUED").stdout)
    assert page["total"] == json.loads(ctl("ota", "rollouts", "get", rollout["id"]).stdout)["counts"]["QUEUED"]
    assert json.loads(ctl("ota", "rollouts", "pause", rollout["id"]).stdout)["status"] == "PAUSED"
    assert json.loads(ctl("ota", "rollouts", "resume", rollout["id"]).stdout)["status"] == "RUNNING"
    assert json.loads(ctl("ota", "rollouts", "cancel", rollout["id"]).stdout)["status"] == "CANCELED"
    assert any(r["id"] == rollout["id"] for r in json.loads(ctl("ota", "rollouts", "list").stdout)["rollouts"])
    # Bad arguments and refusals: a clear error and exit code 1.
    bad = ctl("ota", "rollouts", "create", art2["id"], "--group", group, "--device", "x")
    assert bad.returncode == 1 and "exactly one of --device, --group, --attribute" in bad.stderr
    bad = ctl("ota", "rollouts", "create", art2["id"], "--attribute", "novalue")
    assert bad.returncode == 1 and "key=value" in bad.stderr
    bad = ctl("ota", "upload", str(image), "--version", "bad/version", "--hardware-type", "board-c")
    assert bad.returncode == 1 and "version" in bad.stderr
    assert ctl("ota", "artifacts", "delete", art2["id"]).returncode == 0
    assert ctl("ota", "artifacts", "get", art2["id"]).returncode == 1
    # Refused from its headers (larger than ota.max_artifact_bytes): the server's answer, not
    # a broken connection (exit 2, "unreachable").
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(MAX_ARTIFACT + 1))
    bad = ctl("ota", "upload", str(big), "--version", "13.0.0", "--hardware-type", "board-c")
    assert bad.returncode == 1 and "max_artifact_bytes" in bad.stderr, (bad.returncode, bad.stderr)
    big.write_bytes(os.urandom(MAX_ARTIFACT))
    done = ctl("ota", "upload", str(big), "--version", "13.0.0", "--hardware-type", "board-c")
    assert done.returncode == 0 and json.loads(done.stdout)["size"] == MAX_ARTIFACT, done.stderr


def test_upload_and_rollout_admission_limits(tmp_path):
    import http.client

    config = CONFIG.replace("max_artifacts = 20", "max_artifacts = 2\nconcurrent_uploads = 1\nmax_active_rollouts = 1")
    b = Broker(tmp_path / "node", raw_config=config).start()
    try:
        api = Api(b.api_port, TOKEN)
        # One upload at a time: a second one while the first streams gets 429 and nothing is stored.
        slow = http.client.HTTPConnection(HOST, b.api_port, timeout=30)
        slow.putrequest("POST", "/api/v1/ota/artifacts?version=1&hardware_type=a")
        for name, value in {"Authorization": f"Bearer {TOKEN}", "Content-Length": "100000"}.items():
            slow.putheader(name, value)
        slow.endheaders()
        slow.send(b"x" * 50_000)
        time.sleep(0.5)
        status, answer = upload(api, b"second", version="2")
        assert status == 429 and "concurrent_uploads" in answer["message"], answer
        slow.send(b"x" * 50_000)
        resp = slow.getresponse()
        first = json.loads(resp.read())
        assert resp.status == 201 and first["size"] == 100_000, first
        slow.close()
        status, second = upload(api, b"second", version="2")
        assert status == 201
        # At most max_artifacts stored.
        status, answer = upload(api, b"third", version="3")
        assert status == 409 and "max_artifacts" in answer["message"], answer
        # At most max_active_rollouts not finished.
        ids = [unique("adm") for _ in range(2)]
        for dev_id in ids:
            api.ok("POST", "/api/v1/devices", {"id": dev_id, "password": "dev-pw-123"}, expect=201)
        one = api.ok("POST", "/api/v1/ota/rollouts", {"artifact": first["id"], "targets": {"devices": ids[:1]}},
                     expect=201)
        status, answer = api.call("POST", "/api/v1/ota/rollouts",
                                  {"artifact": second["id"], "targets": {"devices": ids[1:]}})
        assert status == 409 and "max_active_rollouts" in answer["message"], answer
        api.ok("POST", f"/api/v1/ota/rollouts/{one['id']}/cancel")
        api.ok("POST", "/api/v1/ota/rollouts", {"artifact": second["id"], "targets": {"devices": ids[1:]}},
               expect=201)
    finally:
        b.stop()
