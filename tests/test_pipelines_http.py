"""The HTTP webhook sink of `[[pipelines]]` against a webhook server in the test (Python's
http.server in a thread) that fails on demand: batches arrive as JSON arrays with an
Idempotency-Key; 500s then recovery lose nothing and count retries; a 400 dead-letters the
records with the status and the body; the circuit breaker opens (fails fast) and closes;
the per-sink concurrency limit holds; a hanging server times out; a proxy that delays and
cuts connections loses nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import HOST, Client, Proxy, broker_kind, wait_until
import test_pipelines
from test_pipelines import metric, metrics, pipeline_toml, read_lines, refused_startup

serve = test_pipelines.serve  # the fixture: `myriad serve` with a config text

pytestmark = [
    pytest.mark.myriad_only,
    pytest.mark.timeout(120),
    pytest.mark.skipif(broker_kind() == "mosquitto", reason="Myriad's pipelines"),
]

SQL = "SELECT payload.seq AS seq, topic(2) AS device FROM 'sensors/+/data'"


class Webhook:
    """A webhook server: records what it accepted; `script` holds statuses to answer before
    accepting (popped one per request), `fail_all` answers 500 to everything, `hang` sleeps
    that long before answering, `delay` per request; counts requests in flight."""

    def __init__(self, port: int = 0):
        self.lock = threading.Lock()
        self.records: list[dict] = []
        self.keys: list[str | None] = []
        self.bodies: list[object] = []
        self.requests = 0
        self.script: list[tuple[int, bytes]] = []
        self.fail_all = False
        self.hang = 0.0
        self.delay = 0.0
        self.refuse_if = None  # record -> bool: answer 400 for a body holding such a record
        self.endless = False  # accept, then answer 200 with a body that never ends
        self.in_flight = 0
        self.max_in_flight = 0
        self.conns: list[socket.socket] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with hook.lock:
                    hook.conns.append(self.connection)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with hook.lock:
                    hook.requests += 1
                    hook.in_flight += 1
                    hook.max_in_flight = max(hook.max_in_flight, hook.in_flight)
                    scripted = hook.script.pop(0) if hook.script else None
                try:
                    if hook.hang:
                        time.sleep(hook.hang)
                    if hook.delay:
                        time.sleep(hook.delay)
                    body = json.loads(raw)
                    items = body if isinstance(body, list) else [body]
                    if scripted is None and hook.fail_all:
                        scripted = (500, b"down")
                    if scripted is None and hook.refuse_if and any(hook.refuse_if(r) for r in items):
                        scripted = (400, b"bad field\nvalue " + b"x" * 1000)
                    if scripted is not None:
                        status, text = scripted
                    else:
                        with hook.lock:
                            hook.records.extend(items)
                            hook.bodies.append(body)
                            hook.keys.append(self.headers.get("Idempotency-Key"))
                        status, text = 200, b"ok"
                finally:
                    with hook.lock:
                        hook.in_flight -= 1
                if hook.endless and status == 200:
                    # 64 KiB + 1 at once, then a trickle for up to 30 s: the sink must stop
                    # reading at its limit rather than wait for the end.
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 30))
                    self.end_headers()
                    try:
                        self.wfile.write(b"x" * (64 * 1024 + 1))
                        for _ in range(150):
                            time.sleep(0.2)
                            self.wfile.write(b"x" * 1024)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

        self.server = ThreadingHTTPServer((HOST, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def url(self, port: int | None = None) -> str:
        return f"http://{HOST}:{port or self.port}/hook"

    def seqs(self) -> list[int]:
        with self.lock:
            return [r["seq"] for r in self.records]

    def close(self):
        """Stops listening and closes the kept-alive connections too."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def hook():
    h = Webhook()
    yield h
    h.close()


def http_sink(url: str, **extra) -> str:
    def val(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")

    fields = {"url": url, **extra}
    return "{ type = \"http\", " + ", ".join(f"{k} = {val(v)}" for k, v in fields.items()) + " }"


def publish(s, seqs) -> None:
    with Client(s.port) as c:
        for i in seqs:
            c.publish(f"sensors/d{i % 5}/data", json.dumps({"seq": i}), qos=1)


def test_batches_arrive_as_json_arrays_with_an_idempotency_key(serve, hook, tmp_path):
    s = serve(pipeline_toml("h1", SQL, http_sink(hook.url(), key=["device", "seq"]), tmp_path / "dead.jsonl",
                            max_age_ms=100))
    publish(s, range(30))
    assert wait_until(lambda: len(hook.seqs()) >= 30, 10)
    assert sorted(hook.seqs()) == list(range(30))
    assert wait_until(lambda: metric(metrics(s), "myriad_pipeline_records_total", pipeline="h1", stage="sink",
                                     outcome="committed") == 30, 5)
    assert all(isinstance(b, list) for b in hook.bodies)
    assert len(hook.bodies) < 30, "records were not batched"
    assert all(k is not None and len(k) == 32 for k in hook.keys), hook.keys
    assert {"seq": 3, "device": "d3"} in hook.records
    lines = metrics(s)
    assert metric(lines, "myriad_pipeline_http_requests_total", pipeline="h1", outcome="ok") == len(hook.bodies)
    assert metric(lines, "myriad_pipeline_breaker_open", pipeline="h1") == 0


def test_per_record_requests_carry_the_record_key(serve, hook, tmp_path):
    s = serve(pipeline_toml("h2", SQL, http_sink(hook.url(), per_record=True, key=["device", "seq"]),
                            tmp_path / "dead.jsonl"))
    publish(s, range(10))
    assert wait_until(lambda: len(hook.seqs()) >= 10, 10)
    assert all(isinstance(b, dict) for b in hook.bodies)
    with hook.lock:
        pairs = list(zip(hook.bodies, hook.keys))
    for body, key in pairs:
        assert key == json.dumps([body["device"], body["seq"]], separators=(",", ":"))


def test_500s_then_recovery_all_arrive_and_retries_are_counted(serve, hook, tmp_path):
    hook.script = [(500, b"oops")] * 4 + [(503, b"busy"), (429, b"slow down"), (408, b"timeout")]
    sink = http_sink(hook.url(), retry={"min_ms": 20, "max_ms": 100, "attempts": 3},
                     breaker={"failures": 100, "cooldown_ms": 100})
    dead = tmp_path / "dead.jsonl"
    s = serve(pipeline_toml("h3", SQL, sink, dead))
    publish(s, range(50))
    assert wait_until(lambda: len(set(hook.seqs())) >= 50, 20)
    assert set(hook.seqs()) == set(range(50))
    assert not dead.exists(), "5xx, 408 and 429 are transient, not refusals"
    assert wait_until(lambda: metric(metrics(s), "myriad_pipeline_records_total", pipeline="h3", stage="sink",
                                     outcome="committed") == 50, 5)
    lines = metrics(s)
    assert metric(lines, "myriad_pipeline_sink_retries_total", pipeline="h3") >= 4
    assert metric(lines, "myriad_pipeline_http_requests_total", pipeline="h3", outcome="failed") == 7
    # 7 failures at 3 attempts per write: the worker retried the batch too.
    assert metric(lines, "myriad_pipeline_retries_total", pipeline="h3") >= 2


def test_400_dead_letters_the_records_with_status_and_body(serve, hook, tmp_path):
    hook.refuse_if = lambda r: r["seq"] == 13
    dead = tmp_path / "dead.jsonl"
    s = serve(pipeline_toml("h4", SQL, http_sink(hook.url(), per_record=True), dead))
    publish(s, range(20))
    assert wait_until(lambda: len(hook.seqs()) >= 19 and dead.exists() and dead.read_text().strip() != "", 10)
    assert sorted(hook.seqs()) == [i for i in range(20) if i != 13]
    letters = read_lines(dead)
    assert len(letters) == 1, letters
    assert wait_until(lambda: metric(metrics(s), "myriad_pipeline_records_total", pipeline="h4", stage="sink",
                                     outcome="committed") == 19, 5)
    reason = letters[0]["reason"]
    assert "HTTP 400" in reason and "bad field value" in reason, reason
    assert len(reason) < 400, "the body quoted in the reason is bounded"
    assert letters[0]["topic"] == "sensors/d3/data"
    lines = metrics(s)
    assert metric(lines, "myriad_pipeline_records_total", pipeline="h4", stage="sink", outcome="refused") == 1
    assert metric(lines, "myriad_pipeline_sink_retries_total", pipeline="h4") == 0, "a 400 is not retried"


def test_breaker_opens_fails_fast_and_closes(serve, hook, tmp_path):
    hook.fail_all = True
    sink = http_sink(hook.url(), retry={"min_ms": 10, "max_ms": 20, "attempts": 2},
                     breaker={"failures": 3, "cooldown_ms": 1500})
    s = serve(pipeline_toml("h5", SQL, sink, tmp_path / "dead.jsonl"))
    publish(s, range(10))
    assert wait_until(lambda: metric(metrics(s), "myriad_pipeline_breaker_open", pipeline="h5") == 1, 10)
    assert "circuit breaker open" in s.log()
    # Open: requests fail fast without reaching the server; after the cool-down one probe.
    seen = hook.requests
    time.sleep(1.0)
    assert hook.requests - seen <= 1, f"{hook.requests - seen} requests reached the server while open"
    hook.fail_all = False
    assert wait_until(lambda: set(hook.seqs()) == set(range(10)), 15)
    assert wait_until(lambda: metric(metrics(s), "myriad_pipeline_breaker_open", pipeline="h5") == 0, 5)
    assert "circuit breaker closed" in s.log()
    lines = metrics(s)
    assert metric(lines, "myriad_pipeline_breaker_opened_total", pipeline="h5") >= 1


def test_concurrency_limit_is_respected(serve, hook, tmp_path):
    hook.delay = 0.1
    sink = http_sink(hook.url(), per_record=True, concurrency=3)
    s = serve(pipeline_toml("h6", SQL, sink, tmp_path / "dead.jsonl", max_age_ms=200))
    publish(s, range(30))
    assert wait_until(lambda: len(hook.seqs()) >= 30, 20)
    assert hook.max_in_flight == 3, f"max in flight {hook.max_in_flight}"


def test_a_hanging_server_times_out_and_the_retry_delivers(serve, hook, tmp_path):
    hook.hang = 3.0
    sink = http_sink(hook.url(), timeout_ms=300, retry={"min_ms": 50, "max_ms": 200, "attempts": 2})
    s = serve(pipeline_toml("h7", SQL, sink, tmp_path / "dead.jsonl"))
    publish(s, range(5))
    assert wait_until(lambda: "no answer within 300 ms" in s.log(), 10), s.log()
    assert hook.seqs() == []
    hook.hang = 0.0
    # The hanging requests did reach the handler; it records them after the hang, so the
    # server may see a record twice (at least once).
    assert wait_until(lambda: set(hook.seqs()) >= set(range(5)), 20)


def test_a_proxy_that_delays_and_cuts_connections_loses_nothing(serve, hook, tmp_path):
    proxy = Proxy(hook.port)
    try:
        sink = http_sink(hook.url(proxy.port), per_record=True, concurrency=4, timeout_ms=1000,
                         retry={"min_ms": 20, "max_ms": 200, "attempts": 5}, key=["device", "seq"],
                         breaker={"failures": 50, "cooldown_ms": 200})
        s = serve(pipeline_toml("h8", SQL, sink, tmp_path / "dead.jsonl"))
        with Client(s.port) as c:
            for i in range(300):
                c.publish(f"sensors/d{i % 5}/data", json.dumps({"seq": i}), qos=1)
                if i % 60 == 30:
                    proxy.cut()
                proxy.delay = 0.02 if (i // 60) % 2 else 0.0
                if i % 100 == 50:
                    proxy.refuse = True
                    time.sleep(0.2)
                    proxy.refuse = False
        proxy.delay = 0.0
        assert wait_until(lambda: set(hook.seqs()) == set(range(300)), 30), len(set(hook.seqs()))
        assert not (tmp_path / "dead.jsonl").exists()
        assert proxy.accepted >= 2
    finally:
        proxy.close()


def test_webhook_server_stopped_and_restarted_mid_stream_loses_nothing(serve, hook, tmp_path):
    sink = http_sink(hook.url(), timeout_ms=1000, retry={"min_ms": 20, "max_ms": 200, "attempts": 3},
                     breaker={"failures": 3, "cooldown_ms": 300})
    s = serve(pipeline_toml("h9", SQL, sink, tmp_path / "dead.jsonl"))
    publish(s, range(50))
    assert wait_until(lambda: set(hook.seqs()) == set(range(50)), 10)
    port = hook.port
    hook.close()  # connections refused from here on
    publish(s, range(50, 100))
    assert wait_until(lambda: "circuit breaker open" in s.log(), 10), s.log()
    time.sleep(0.5)
    back = Webhook(port)
    try:
        assert wait_until(lambda: set(back.seqs()) >= set(range(50, 100)), 20), sorted(set(back.seqs()))
        assert wait_until(lambda: "circuit breaker closed" in s.log(), 5)
        assert not (tmp_path / "dead.jsonl").exists()
    finally:
        back.close()


@pytest.mark.parametrize(
    "sink,key",
    [
        ('{ type = "http", url = "ftp://127.0.0.1/x" }', "pipelines[0].sink.url"),
        ('{ type = "http", url = "http://127.0.0.1:1/x", method = "GET" }', "pipelines[0].sink.method"),
        ('{ type = "http", url = "http://127.0.0.1:1/x", concurrency = 257 }', "pipelines[0].sink.concurrency"),
        ('{ type = "http", url = "http://127.0.0.1:1/x", timeout_ms = 0 }', "pipelines[0].sink.timeout_ms"),
        ('{ type = "http", url = "http://127.0.0.1:1/x", retry = { min_ms = 500, max_ms = 100 } }',
         "pipelines[0].sink.retry.max_ms"),
        ('{ type = "http", url = "http://127.0.0.1:1/x", breaker = { failures = 0 } }',
         "pipelines[0].sink.breaker.failures"),
        ('{ type = "http", url = "http://127.0.0.1:1/x", headers = { "bad name" = "v" } }',
         "pipelines[0].sink.headers.bad name"),
        ('{ type = "http", url = "http://127.0.0.1:1/x", key = ["a", "a"] }', "pipelines[0].sink.key"),
        ('{ type = "http", url = "http://127.0.0.1:1/x", retries = 3 }', "retries"),
    ],
    ids=["url", "method", "concurrency", "timeout", "retry-max", "breaker", "header", "key", "unknown"],
)
def test_bad_http_sink_config_stops_startup_naming_the_key(tmp_path, sink, key):
    out = refused_startup(tmp_path, pipeline_toml("p", "SELECT * FROM 'a'", sink, tmp_path / "d.jsonl"))
    assert key in out, f"error output should name {key!r}: {out!r}"


def test_a_response_body_past_the_read_limit_is_not_waited_for(serve, hook, tmp_path):
    """The server accepts the batch, then sends a 1 GiB body: 64 KiB + 1 at once, the rest a
    trickle. The sink reads its 64 KiB (`MAX_RESPONSE_BYTES`) and commits, long before the
    request timeout (60 s) or the body's end."""
    hook.endless = True
    s = serve(pipeline_toml("h9", SQL, http_sink(hook.url(), timeout_ms=60000), tmp_path / "d.jsonl",
                            max_age_ms=20))
    started = time.monotonic()
    with Client(s.port) as c:
        for seq in range(5):
            assert c.publish(f"sensors/d{seq}/data", json.dumps({"seq": seq}), qos=1) == 0
    assert wait_until(lambda: metric(metrics(s), "myriad_pipeline_records_total", pipeline="h9", stage="sink",
                                     outcome="committed") == 5, 20)
    assert time.monotonic() - started < 20
    assert sorted(hook.seqs()) == list(range(5))
