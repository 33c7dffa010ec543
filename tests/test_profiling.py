"""Heap and CPU profiles on demand and task counts against a real `myriad serve`
(`/debug`, docs/observability.md): profiles parse as pprof and name myriad's own
functions, admin only, one CPU profile at a time, bounded durations."""

from __future__ import annotations

import gzip
import threading
import time
import urllib.error
import urllib.request

import pytest

from helpers import Api, Broker, Client, unique

TOKEN = "profiling-test-token-0123456789"
PASSWORD = "correct-horse-1"


# ---- a minimal protobuf reader: just enough of pprof's Profile message
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        assert shift < 64, "varint too long"


def parse_profile(data: bytes) -> dict[str, list]:
    """The Profile's samples (field 2, raw) and string table (field 6); asserts
    every top-level field is well formed."""
    out: dict[str, list] = {"samples": [], "strings": [], "locations": [], "functions": []}
    names = {2: "samples", 4: "locations", 5: "functions"}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(data, i)
        elif wire == 2:
            n, i = _varint(data, i)
            assert i + n <= len(data), "truncated length-delimited field"
            chunk = data[i:i + n]
            i += n
            if field == 6:
                out["strings"].append(chunk.decode("utf-8"))
            elif field in names:
                out[names[field]].append(chunk)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise AssertionError(f"bad wire type {wire}")
    assert i == len(data)
    return out


def fetch(port: int, path: str, token: str | None = TOKEN, method: str = "GET",
          body: bytes | None = None, timeout: float = 90) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("profiling"), {"api": {"token": TOKEN}}).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


def user_token(api: Api, role: str) -> str:
    name = unique(role)
    api.ok("POST", "/api/v1/users", {"username": name, "role": role, "password": PASSWORD}, expect=201)
    created = api.ok("POST", f"/api/v1/users/{name}/tokens", {"name": "t"}, expect=201)
    return created["token"]


class Load:
    """MQTT publishers and a subscriber on the broker until stopped."""

    def __init__(self, broker: Broker, api: Api, payload: int = 2048, retain: bool = False):
        self.broker, self.stop_flag, self.sent = broker, threading.Event(), 0
        self.login = api.create_app(publish=["load/#"], subscribe=["load/#"])
        self.payload, self.retain = payload, retain
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        user, pw = self.login
        # Four subscribers: the broker's fan-out is most of its work.
        subs = [Client(self.broker.port, client_id=unique("sub"), username=user, password=pw) for _ in range(4)]
        try:
            for sub in subs:
                sub.subscribe("load/#", qos=0)
            with Client(self.broker.port, client_id=unique("pub"), username=user, password=pw) as pub:
                n = 0
                while not self.stop_flag.is_set():
                    pub.publish(f"load/{n % 500}", bytes([n % 251]) * self.payload, qos=0, retain=self.retain)
                    n += 1
                    if n % 200 == 0:
                        for sub in subs:
                            sub.drain(wait=0.0)
                self.sent = n
        finally:
            for sub in subs:
                sub.close()

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=30)


def test_heap_profile_refused_while_off_then_parses_as_pprof(broker, api):
    port = broker.api_port
    assert api.ok("GET", "/debug/pprof/heap/active") == {"active": False}
    status, _, body = fetch(port, "/debug/pprof/heap")
    assert status == 409 and b"heap profiling is off" in body, (status, body)

    assert api.ok("PUT", "/debug/pprof/heap/active", {"active": True}) == {"active": True}
    try:
        # Retained messages stay allocated: the sampler (one sample per ~512 KiB) sees them.
        with Load(broker, api, payload=8192, retain=True) as load:
            time.sleep(3)
        assert load.sent > 100
        status, headers, body = fetch(port, "/debug/pprof/heap")
        assert status == 200, body[:300]
        assert body[:2] == b"\x1f\x8b", "not gzip"
        profile = parse_profile(gzip.decompress(body))
        assert profile["samples"], "no samples"
        assert "inuse_space" in profile["strings"]
        # Symbolised Rust frames of myriad's own crates.
        assert any("myriad" in s for s in profile["strings"]), profile["strings"][:50]
    finally:
        assert api.ok("PUT", "/debug/pprof/heap/active", {"active": False}) == {"active": False}
    status, _, _ = fetch(port, "/debug/pprof/heap")
    assert status == 409


def test_heap_switch_rejects_bad_bodies(broker, api):
    for raw in (b'{"active": "yes"}', b"{}", b"not json"):
        status, body = api.call("PUT", "/debug/pprof/heap/active", raw=raw)
        assert status == 400 and body["status"] == 400, (raw, status, body)


def test_cpu_profile_under_mqtt_load_parses_and_names_myriad(broker, api):
    with Load(broker, api) as load:
        time.sleep(0.5)
        status, headers, body = fetch(broker.api_port, "/debug/pprof/profile?seconds=4")
    assert load.sent > 100
    assert status == 200, body[:300]
    assert body[:2] == b"\x1f\x8b"
    profile = parse_profile(gzip.decompress(body))
    # The broker spends little CPU on this load (the Python clients are the bottleneck) and
    # pprof keeps no samples taken inside libc (syscalls): a few samples, each a whole stack.
    assert len(profile["samples"]) >= 1
    assert "cpu" in profile["strings"]
    assert any("myriad_broker" in s or "myriad_mqtt" in s for s in profile["strings"]), \
        [s for s in profile["strings"] if "myriad" in s][:20]


def test_cpu_flamegraph_is_svg(broker, api):
    with Load(broker, api):
        status, headers, body = fetch(broker.api_port, "/debug/pprof/profile?seconds=1&format=flamegraph")
    assert status == 200 and headers["content-type"] == "image/svg+xml"
    assert b"<svg" in body[:2000] and b"myriad" in body


def test_second_concurrent_cpu_profile_is_refused(broker, api):
    first: dict = {}

    def run() -> None:
        first["status"], _, first["body"] = fetch(broker.api_port, "/debug/pprof/profile?seconds=3")

    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.0)
    status, _, body = fetch(broker.api_port, "/debug/pprof/profile?seconds=1")
    t.join(timeout=30)
    assert status == 409 and b"already running" in body, (status, body)
    assert first["status"] == 200
    # Once the first ended, the next one runs.
    status, _, _ = fetch(broker.api_port, "/debug/pprof/profile?seconds=1")
    assert status == 200


@pytest.mark.parametrize("query", ["seconds=0", "seconds=61", "seconds=-1", "seconds=abc", "format=png"])
def test_cpu_profile_bad_query_is_400(broker, api, query):
    started = time.monotonic()
    status, body = api.call("GET", f"/debug/pprof/profile?{query}")
    assert status == 400 and body["status"] == 400, (query, status, body)
    assert time.monotonic() - started < 5


def test_tasks_counts_connections_beside_sessions(broker, api):
    user, pw = api.create_app(subscribe=["t/#"])
    clients = [Client(broker.port, client_id=unique("c"), username=user, password=pw) for _ in range(3)]
    try:
        counts = api.ok("GET", "/debug/tasks")
        assert counts["connection_tasks"] >= 3 and counts["connection_tasks_registered"] >= 3
        assert counts["sessions_online"] >= 3
        assert counts["services"].get("HTTP API") == 1, counts["services"]
        assert counts["runtime_tasks_alive"] >= counts["connection_tasks"]
        before = counts["connection_tasks"]
    finally:
        for c in clients:
            c.close()
    time.sleep(0.5)
    assert api.ok("GET", "/debug/tasks")["connection_tasks"] <= before - 3


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_non_admins_are_refused(broker, api, role):
    token = user_token(api, role)
    for method, path, body in [
        ("GET", "/debug/pprof/heap", None),
        ("GET", "/debug/pprof/heap/active", None),
        ("PUT", "/debug/pprof/heap/active", b'{"active": true}'),
        ("GET", "/debug/pprof/profile?seconds=1", None),
        ("GET", "/debug/tasks", None),
    ]:
        status, _, answer = fetch(broker.api_port, path, token=token, method=method, body=body)
        assert status == 403, (role, method, path, status, answer)
        status, _, _ = fetch(broker.api_port, path, token=None, method=method, body=body)
        assert status == 401, (method, path, status)
    assert api.ok("GET", "/debug/pprof/heap/active") == {"active": False}


def test_debug_routes_are_in_the_openapi_document(broker, api):
    doc = api.ok("GET", "/openapi.json", token=None)
    for path in ("/debug/pprof/heap", "/debug/pprof/heap/active", "/debug/pprof/profile", "/debug/tasks"):
        assert path in doc["paths"], path
    assert doc["paths"]["/debug/tasks"]["get"]["security"]


def test_ctl_debug_heap_writes_a_pprof_file(broker, api, tmp_path):
    import os
    import subprocess

    from helpers import myriad_bin

    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    env["MYRIAD_API"] = f"http://127.0.0.1:{broker.api_port}"
    env["MYRIAD_API_TOKEN"] = TOKEN

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(myriad_bin()), "ctl", *args], capture_output=True, env=env, timeout=60)

    off = ctl("debug", "heap")
    assert off.returncode != 0 and b"heap profiling is off" in off.stderr, off
    assert ctl("debug", "heap-profiling", "on").returncode == 0
    try:
        done = ctl("debug", "heap")
        assert done.returncode == 0, done.stderr
        profile = parse_profile(gzip.decompress(done.stdout))
        assert "inuse_space" in profile["strings"]
    finally:
        assert ctl("debug", "heap-profiling", "off").returncode == 0
    tasks = ctl("--output", "json", "debug", "tasks")
    assert tasks.returncode == 0 and b"connection_tasks" in tasks.stdout, tasks


def test_heap_profiling_on_from_the_config(tmp_path):
    b = Broker(tmp_path / "on", {"api": {"token": TOKEN}, "debug": {"heap_profiling": True}}).start()
    try:
        api = Api(b.api_port, TOKEN)
        assert api.ok("GET", "/debug/pprof/heap/active") == {"active": True}
        # Something kept allocated to sample (one sample per ~512 KiB): start-up alone may not
        # reach a sample (the test once found none on a loaded machine).
        with Load(b, api, payload=8192, retain=True) as load:
            time.sleep(2)
        assert load.sent > 50
        status, _, body = fetch(b.api_port, "/debug/pprof/heap")
        assert status == 200 and parse_profile(gzip.decompress(body))["samples"]
    finally:
        b.stop()


def test_bad_debug_key_stops_start_up_naming_it(tmp_path):
    import subprocess

    from helpers import myriad_bin

    cfg = tmp_path / "bad.toml"
    cfg.write_text('[debug]\nheap_profilng = true\n')
    done = subprocess.run([str(myriad_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
                           "--api-listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "heap_profilng" in done.stderr, done.stderr[-500:]
