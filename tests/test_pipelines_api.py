"""Pipelines over the HTTP API (`PUT`/`DELETE /api/v1/pipelines/{name}`, `myriad ctl
pipelines apply|delete`) and the HTTP sources: NDJSON bodies POSTed to
`/api/v1/pipelines/{name}/records` (backpressure, answered once committed) and a URL polled
with GET from a server in the test."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import HOST, Client, broker_kind, myriad_bin, wait_until
import test_pipelines
from test_pipelines import file_sink, metric, metrics, pipeline_toml, read_lines, wait_lines

serve = test_pipelines.serve  # the fixture: `myriad serve` with a config text

pytestmark = [
    pytest.mark.myriad_only,
    pytest.mark.timeout(120),
    pytest.mark.skipif(broker_kind() == "mosquitto", reason="Myriad's pipelines"),
]


def definition(tmp: Path, name: str, sql: str, source: dict | None = None, in_flight: int = 1000,
               max_age_ms: int = 20, sink: dict | None = None) -> dict:
    d = {
        "sql": sql,
        "batch": {"max_records": 500, "max_age_ms": max_age_ms},
        "in_flight": in_flight,
        "sink": sink or {"type": "file", "path": str(tmp / f"{name}.jsonl")},
        "dead_letter": {"path": str(tmp / f"{name}.dead.jsonl")},
    }
    if source is not None:
        d["source"] = source
    return d


def post_lines(port: int, token: str, name: str, body: bytes | list[bytes], timeout: float = 60,
               headers: dict | None = None) -> tuple[int, dict]:
    """POSTs `body` (bytes with a Content-Length, or chunks sent chunked) to the records
    route; (status, parsed JSON answer)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson", **(headers or {})}
        if isinstance(body, list):
            conn.putrequest("POST", f"/api/v1/pipelines/{name}/records")
            for k, v in {**hdrs, "Transfer-Encoding": "chunked"}.items():
                conn.putheader(k, v)
            conn.endheaders()
            for chunk in body:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request("POST", f"/api/v1/pipelines/{name}/records", body=body, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read()
        return resp.status, (json.loads(text) if text else {})
    finally:
        conn.close()


def ctl(s, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    cmd = [str(myriad_bin()), "ctl", "--api", f"http://{HOST}:{s.api_port}",
           "--token-file", str(s.workdir / "data" / "api-token"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)


def token(s) -> str:
    return (s.workdir / "data" / "api-token").read_text().strip()


def test_api_pipeline_flows_survives_a_restart_and_stops_when_deleted(serve, tmp_path):
    """A pipeline put over the API runs (MQTT -> file), is listed with origin `api`, is
    started again after a restart (stored), and once deleted takes no more messages."""
    s = serve("")
    api = s.api()
    out = tmp_path / "ap.jsonl"
    d = definition(tmp_path, "ap", "SELECT payload.seq AS seq FROM 'ap/+/in'")
    st = api.ok("PUT", "/api/v1/pipelines/ap", d, expect=201)
    assert st["name"] == "ap" and st["origin"] == "api" and st["sink"] == "file", st
    wait_until(lambda: api.ok("GET", "/api/v1/pipelines/ap")["state"] == "running", 10)
    with Client(s.port) as c:
        for seq in range(5):
            assert c.publish(f"ap/d{seq}/in", json.dumps({"seq": seq}), qos=1) == 0
    assert sorted(r["seq"] for r in wait_lines(out, 5)) == list(range(5))
    listed = api.ok("GET", "/api/v1/pipelines")["pipelines"]
    assert [(p["name"], p["origin"]) for p in listed] == [("ap", "api")]

    s.stop()
    s.start()
    api = s.api()
    assert [p["name"] for p in api.ok("GET", "/api/v1/pipelines")["pipelines"]] == ["ap"]
    wait_until(lambda: api.ok("GET", "/api/v1/pipelines/ap")["state"] == "running", 10)
    with Client(s.port) as c:
        for seq in range(5, 8):
            assert c.publish(f"ap/d{seq}/in", json.dumps({"seq": seq}), qos=1) == 0
    assert sorted(r["seq"] for r in wait_lines(out, 8)) == list(range(8))

    assert api.call("DELETE", "/api/v1/pipelines/ap")[0] == 204
    assert api.call("GET", "/api/v1/pipelines/ap")[0] == 404
    assert api.ok("GET", "/api/v1/pipelines")["pipelines"] == []
    with Client(s.port) as c:
        assert c.publish("ap/d9/in", json.dumps({"seq": 9}), qos=1) == 0
    time.sleep(0.5)
    assert len(read_lines(out)) == 8
    # Deleted for good: not back after a restart.
    s.stop()
    s.start()
    assert s.api().ok("GET", "/api/v1/pipelines")["pipelines"] == []


def test_replacing_an_api_pipeline_drains_the_old_one(serve, tmp_path):
    """PUT on an existing API pipeline answers 200 and the new rule applies."""
    s = serve("")
    api = s.api()
    out = tmp_path / "rp.jsonl"
    api.ok("PUT", "/api/v1/pipelines/rp", definition(tmp_path, "rp", "SELECT payload.v AS a FROM 'rp/in'"),
           expect=201)
    wait_until(lambda: api.ok("GET", "/api/v1/pipelines/rp")["state"] == "running", 10)
    with Client(s.port) as c:
        assert c.publish("rp/in", json.dumps({"v": 1}), qos=1) == 0
    wait_lines(out, 1)
    status, body = api.call("PUT", "/api/v1/pipelines/rp",
                            definition(tmp_path, "rp", "SELECT payload.v AS b FROM 'rp/in'"))
    assert status == 200 and body["origin"] == "api", body
    wait_until(lambda: api.ok("GET", "/api/v1/pipelines/rp")["state"] == "running", 10)
    with Client(s.port) as c:
        assert c.publish("rp/in", json.dumps({"v": 2}), qos=1) == 0
    assert wait_lines(out, 2) == [{"a": 1}, {"b": 2}]


CONFIG_SQL = "SELECT * FROM 'cfg/#'"


@pytest.mark.parametrize("change, status, needle", [
    (lambda d: d.pop("sink"), 400, "missing field `sink`"),
    (lambda d: d.update(sql="SELECT FROM"), 400, "invalid value for sql"),
    (lambda d: d.update(batch={"max_records": 0}), 400, "invalid value for batch.max_records"),
    (lambda d: d.update(in_flight=70000), 400, "invalid value for in_flight"),
    (lambda d: d.update(source={"type": "http_poll", "url": "ftp://x/y"}), 400, "invalid value for source.url"),
    (lambda d: d.update(source={"type": "http_poll", "url": "http://127.0.0.1:9/", "interval_ms": 1}), 400,
     "invalid value for source.interval_ms"),
    (lambda d: d.update(source={"type": "http", "max_line_bytes": 0}), 400, "invalid value for source.max_line_bytes"),
    (lambda d: d.update(source={"type": "http", "max_body_bytes": (1 << 30) + 1}), 400,
     "invalid value for source.max_body_bytes"),
    (lambda d: d.update(source={"type": "http"}), 400, "invalid value for sql"),  # FROM misses http/bad
    (lambda d: d.update(color="red"), 400, "unknown field `color`"),
    (lambda d: d.update(name="other"), 400, "invalid value for name"),
    (lambda d: d.update(dead_letter={"path": str(Path("/tmp") / "x.jsonl"), "keep_files": 5000}), 400,
     "invalid value for dead_letter.keep_files"),
])
def test_invalid_definitions_are_refused_naming_the_field(serve, tmp_path, change, status, needle):
    s = serve("")
    api = s.api()
    d = definition(tmp_path, "bad", "SELECT * FROM 'x/#'")
    change(d)
    got, body = api.call("PUT", "/api/v1/pipelines/bad", d)
    assert got == status and needle in body["message"], body
    assert api.ok("GET", "/api/v1/pipelines")["pipelines"] == []


def test_config_pipelines_are_read_only_and_files_are_not_shared(serve, tmp_path):
    cfg_out = tmp_path / "cfg.jsonl"
    s = serve(pipeline_toml("cfg", CONFIG_SQL, file_sink(cfg_out), tmp_path / "cfg.dead.jsonl"))
    api = s.api()
    got, body = api.call("PUT", "/api/v1/pipelines/cfg", definition(tmp_path, "cfg2", CONFIG_SQL))
    assert got == 409 and "config file" in body["message"], body
    got, body = api.call("DELETE", "/api/v1/pipelines/cfg")
    assert got == 409 and "config file" in body["message"], body
    got, body = api.call("DELETE", "/api/v1/pipelines/nope")
    assert got == 404 and "nope" in body["message"], body
    # The config pipeline's sink file is taken.
    d = definition(tmp_path, "x", CONFIG_SQL, sink={"type": "file", "path": str(cfg_out)})
    got, body = api.call("PUT", "/api/v1/pipelines/x", d)
    assert got == 409 and "invalid value for sink.path" in body["message"], body
    got, body = api.call("PUT", "/api/v1/pipelines/Bad", definition(tmp_path, "y", CONFIG_SQL))
    assert got == 400 and "invalid value for name" in body["message"], body
    # The JSON body limit (1 MiB), one past it.
    big = definition(tmp_path, "z", CONFIG_SQL)
    big["sql"] = "x" * (1024 * 1024)
    got, _ = api.call("PUT", "/api/v1/pipelines/z", big)
    assert got == 413
    listed = api.ok("GET", "/api/v1/pipelines")["pipelines"]
    assert [(p["name"], p["origin"]) for p in listed] == [("cfg", "config")]


def test_ctl_apply_toml_and_json_then_delete(serve, tmp_path):
    s = serve("")
    out = tmp_path / "ctl.jsonl"
    toml_file = tmp_path / "p.toml"
    toml_file.write_text(
        "sql = \"SELECT payload.v AS v FROM 'ctl/in'\"\n"
        "batch = { max_age_ms = 20 }\n"
        f"sink = {file_sink(out)}\n"
        f"dead_letter = {{ path = {json.dumps(str(tmp_path / 'ctl.dead.jsonl'))} }}\n"
    )
    done = ctl(s, "pipelines", "apply", str(toml_file), "viactl")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["origin"] == "api"
    api = s.api()
    wait_until(lambda: api.ok("GET", "/api/v1/pipelines/viactl")["state"] == "running", 10)
    with Client(s.port) as c:
        assert c.publish("ctl/in", json.dumps({"v": 7}), qos=1) == 0
    assert wait_lines(out, 1) == [{"v": 7}]
    json_file = tmp_path / "p.json"
    json_file.write_text(json.dumps({**definition(tmp_path, "ctl", "SELECT payload.v AS w FROM 'ctl/in'")}))
    done = ctl(s, "pipelines", "apply", str(json_file), "viactl")
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sql": "SELECT * FROM 'a'"}))
    refused = ctl(s, "pipelines", "apply", str(bad), "viactl2")
    assert refused.returncode != 0 and "missing field" in refused.stderr, refused.stderr
    done = ctl(s, "pipelines", "delete", "viactl")
    assert done.returncode == 0, done.stderr
    assert api.ok("GET", "/api/v1/pipelines")["pipelines"] == []
    missing = ctl(s, "pipelines", "delete", "viactl")
    assert missing.returncode != 0 and "viactl" in missing.stderr


def http_source(s, tmp_path: Path, name: str, in_flight: int = 1000, source: dict | None = None,
                sink: dict | None = None) -> Path:
    api = s.api()
    d = definition(tmp_path, name, f"SELECT * FROM 'http/{name}'", source=source or {"type": "http"},
                   in_flight=in_flight, sink=sink)
    api.ok("PUT", f"/api/v1/pipelines/{name}", d, expect=201)
    wait_until(lambda: api.ok("GET", f"/api/v1/pipelines/{name}")["state"] == "running", 10)
    return tmp_path / f"{name}.jsonl"


def test_posted_10000_lines_arrive_whole_before_the_answer(serve, tmp_path):
    s = serve("")
    out = http_source(s, tmp_path, "ing", in_flight=500)
    body = b"".join(b'{"seq": %d, "pad": "%s"}\n' % (i, b"x" * 50) for i in range(10_000))
    status, report = post_lines(s.api_port, token(s), "ing", body)
    assert status == 200 and report == {"accepted": 10_000, "dead_lettered": 0}, report
    # Answered after the commit: everything is in the file already.
    got = read_lines(out)
    assert sorted(r["seq"] for r in got) == list(range(10_000))
    # Chunked, lines cut across chunks, CRLF, a last line without its newline.
    chunks = [b'{"seq": 10000}\r\n{"se', b'q": 10001}\n\n{"seq"', b': 10002}']
    status, report = post_lines(s.api_port, token(s), "ing", chunks)
    assert status == 200 and report == {"accepted": 3, "dead_lettered": 0}, report
    assert sorted(r["seq"] for r in read_lines(out))[-3:] == [10000, 10001, 10002]
    st = s.api().ok("GET", "/api/v1/pipelines/ing")
    assert st["records"]["received"] == 10_003 and st["lag"] == 0, st


def test_oversize_lines_and_bodies(serve, tmp_path):
    """A line one past `max_line_bytes` is dead-lettered (the rest goes on); a line that is
    not JSON too; a body one past `max_body_bytes` is a 413, declared or chunked."""
    s = serve("")
    out = http_source(s, tmp_path, "lim", source={"type": "http", "max_line_bytes": 100, "max_body_bytes": 1000})
    at_limit = b'{"v": "%s"}' % (b"a" * 91)
    assert len(at_limit) == 100
    past = b'{"v": "%s"}' % (b"b" * 92)
    body = at_limit + b"\n" + past + b"\nnot json\n" + b'{"v": 1}\n'
    status, report = post_lines(s.api_port, token(s), "lim", body)
    assert status == 200 and report == {"accepted": 2, "dead_lettered": 2}, report
    assert [r["v"] for r in read_lines(out)] == ["a" * 91, 1]
    dead = read_lines(tmp_path / "lim.dead.jsonl")
    assert len(dead) == 2 and "max_line_bytes" in dead[0]["reason"], dead
    exact = b"\n".join([b'{"v": 2}'] * 111) + b"\n"  # 999 bytes
    assert len(exact) == 999
    assert post_lines(s.api_port, token(s), "lim", exact + b"\n")[0] == 200  # 1000: at the limit
    status, report = post_lines(s.api_port, token(s), "lim", exact + b"\n\n")
    assert status == 413 and "max_body_bytes" in report["message"], report
    status, report = post_lines(s.api_port, token(s), "lim", [exact, b"\n\n"])
    assert status == 413 and "max_body_bytes" in report["message"], report
    # Not an http source, unknown pipeline.
    s.api().ok("PUT", "/api/v1/pipelines/mq", definition(tmp_path, "mq", "SELECT * FROM 'mq/#'"), expect=201)
    status, report = post_lines(s.api_port, token(s), "mq", b"{}\n")
    assert status == 409 and "not http" in report["message"], report
    assert post_lines(s.api_port, token(s), "nope", b"{}\n")[0] == 404
    assert post_lines(s.api_port, "wrong-token-wrong-token", "lim", b"{}\n")[0] == 401


def test_a_stopped_sink_holds_the_post_without_reading_the_body(serve, tmp_path):
    """With the sink failing, the pipeline takes at most `in_flight` lines: the POST does not
    complete and the rest of the body stays unread; once the sink works, it completes with
    every line committed."""
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    s = serve("")
    http_source(s, tmp_path, "slow", in_flight=10,
                sink={"type": "file", "path": str(blocked / "out.jsonl")})
    api = s.api()
    body = b"".join(b'{"seq": %d}\n' % i for i in range(2000))
    result: dict = {}

    def post() -> None:
        result["answer"] = post_lines(s.api_port, token(s), "slow", body, timeout=90)

    t = threading.Thread(target=post, daemon=True)
    t.start()
    wait_until(lambda: api.ok("GET", "/api/v1/pipelines/slow")["retries"] >= 3, 15)
    time.sleep(1.0)
    st = api.ok("GET", "/api/v1/pipelines/slow")
    assert "answer" not in result and t.is_alive()
    assert st["state"] == "retrying" and st["records"]["committed"] == 0, st
    # The window is the bound: no more than in_flight lines taken from the body.
    assert st["records"]["received"] == 10 and st["lag"] == 10, st
    blocked.unlink()
    blocked.mkdir()
    t.join(60)
    assert result["answer"] == (200, {"accepted": 2000, "dead_lettered": 0}), result
    assert sorted(r["seq"] for r in read_lines(blocked / "out.jsonl")) == list(range(2000))


def test_deleting_the_pipeline_fails_a_waiting_post_with_503(serve, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    s = serve("")
    http_source(s, tmp_path, "gone", in_flight=5, sink={"type": "file", "path": str(blocked / "o.jsonl")})
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(
        answer=post_lines(s.api_port, token(s), "gone", b'{"a": 1}\n' * 100, timeout=60)), daemon=True)
    t.start()
    api = s.api()
    wait_until(lambda: api.ok("GET", "/api/v1/pipelines/gone")["retries"] >= 1, 15)
    assert api.call("DELETE", "/api/v1/pipelines/gone")[0] == 204
    t.join(30)
    status, body = result["answer"]
    assert status == 503 and "send the body again" in body["message"], result


class Feed:
    """A server for the polling source: answers each GET with the next scripted
    (status, body); once the script is done, 200 with an empty array. Records the
    Authorization header of each request."""

    def __init__(self):
        self.lock = threading.Lock()
        self.script: list[tuple[int, bytes]] = []
        self.auth: list[str | None] = []
        feed = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with feed.lock:
                    feed.auth.append(self.headers.get("Authorization"))
                    status, body = feed.script.pop(0) if feed.script else (200, b"[]")
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_http_poll_reads_arrays_and_lines_and_retries_failures(serve, tmp_path):
    feed = Feed()
    try:
        feed.script = [
            (200, json.dumps([{"seq": 0}, {"seq": 1}]).encode()),
            (500, b"down"),
            (200, b'{"seq": 2}\n{"seq": 3}\n'),
            (200, b"[" + b"0" * 5000 + b"]"),  # past max_response_bytes (4096): a failed poll
            (200, b"not json at all ["),  # NDJSON of one line that is not JSON: dead-lettered
            (200, json.dumps([{"seq": 4}]).encode()),
        ]
        s = serve("")
        source = {"type": "http_poll", "url": f"http://{HOST}:{feed.port}/feed", "interval_ms": 50,
                  "headers": {"Authorization": "Bearer feed-token"}, "max_response_bytes": 4096}
        out = http_source(s, tmp_path, "poll", source=source)
        got = wait_lines(out, 5, timeout=20)
        assert sorted(r["seq"] for r in got) == [0, 1, 2, 3, 4]
        st = s.api().ok("GET", "/api/v1/pipelines/poll")
        assert st["retries"] >= 2 and st["dead_letters"] == 1, st
        assert "max_response_bytes" in st["last_error"] or "500" in st["last_error"], st
        lines = metrics(s)
        assert metric(lines, "myriad_pipeline_poll_requests_total", pipeline="poll", outcome="failed") == 2
        assert metric(lines, "myriad_pipeline_poll_requests_total", pipeline="poll", outcome="ok") >= 4
        with feed.lock:
            assert set(feed.auth) == {"Bearer feed-token"}
    finally:
        feed.close()


def test_a_stored_pipeline_whose_name_the_config_file_took_is_skipped(serve, tmp_path):
    """At start-up the config file wins: a stored API pipeline of the same name is logged
    and not started (the server starts); once the config entry is gone it runs again."""
    s = serve("")
    api = s.api()
    api.ok("PUT", "/api/v1/pipelines/dup", definition(tmp_path, "dup", "SELECT * FROM 'dup/#'"), expect=201)
    s.stop()
    plain = s.config.read_text()
    s.config.write_text(pipeline_toml("dup", CONFIG_SQL, file_sink(tmp_path / "cfg.jsonl"),
                                      tmp_path / "cfg.dead.jsonl") + plain)
    s.start()
    listed = s.api().ok("GET", "/api/v1/pipelines")["pipelines"]
    assert [(p["name"], p["origin"]) for p in listed] == [("dup", "config")]
    assert "does not start" in s.log()
    s.stop()
    s.config.write_text(plain)
    s.start()
    listed = s.api().ok("GET", "/api/v1/pipelines")["pipelines"]
    assert [(p["name"], p["origin"]) for p in listed] == [("dup", "api")]


def test_a_config_file_pipeline_takes_posted_records_too(serve, tmp_path):
    out = tmp_path / "cf.jsonl"
    s = serve(pipeline_toml("cf", "SELECT payload.v AS v FROM 'http/cf'", file_sink(out),
                            tmp_path / "cf.dead.jsonl") + 'source = { type = "http" }\n')
    status, report = post_lines(s.api_port, token(s), "cf", b'{"v": 1}\n{"v": 2}\n')
    assert status == 200 and report == {"accepted": 2, "dead_lettered": 0}, report
    assert read_lines(out) == [{"v": 1}, {"v": 2}]


@pytest.mark.parametrize("source, key", [
    ('{ type = "http", max_body_bytes = 0 }', "pipelines[0].source.max_body_bytes"),
    ('{ type = "http_poll", url = "http://127.0.0.1:9/x", max_response_bytes = 268435457 }',
     "pipelines[0].source.max_response_bytes"),
    ('{ type = "http_poll", url = "http://127.0.0.1:9/x", headers = { "Bad Name" = "x" } }',
     "pipelines[0].source.headers.Bad Name"),
])
def test_bad_http_source_config_stops_startup_naming_the_key(tmp_path, source, key):
    toml = pipeline_toml("h", "SELECT * FROM 'http/h'", file_sink(tmp_path / "h.jsonl"),
                         tmp_path / "h.dead.jsonl") + f"source = {source}\n"
    out = test_pipelines.refused_startup(tmp_path, toml)
    assert f"invalid value for {key}" in out, out
