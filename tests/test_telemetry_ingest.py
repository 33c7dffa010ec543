"""Bulk telemetry: InfluxDB line protocol and JSON over HTTP (`/api/v1/telemetry/write` and the
`/write`, `/api/v2/write` compat paths), CBOR payloads over MQTT, streaming CSV/NDJSON export of
more than 100,000 points, the `ctl telemetry` commands, and retention across a restart."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import struct
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from helpers import V5, Api, Broker, Client, json_ctl, myriad_bin, wait_until
from test_observability import Scrape

pytestmark = pytest.mark.myriad_only

TOKEN = "ingest-test-token-0123456789abcdef"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}
DAY = 86_400_000
REFUSED = "myriad_telemetry_points_refused_total"


@pytest.fixture
def api(broker):
    return Api(broker.api_port, TOKEN)


def post(port: int, path: str, body: bytes, ctype: str | None = "text/plain",
         auth: str | None = f"Bearer {TOKEN}", timeout: float = 120) -> tuple[int, object]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    if ctype is not None:
        req.add_header("Content-Type", ctype)
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read()
            return resp.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text) if text else None
        except ValueError:
            return e.code, text.decode(errors="replace")


def get_text(port: int, path: str) -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def series(answer: dict) -> dict[str, list]:
    return {s["metric"]: s["points"] for s in answer["series"]}


def raw(api: Api, dev: str, frm: int, to: int, metrics: str | None = None) -> dict[str, list]:
    q = f"from={frm}&to={to}" + (f"&metrics={metrics}" if metrics else "")
    return series(api.ok("GET", f"/api/v1/devices/{dev}/telemetry?{q}"))


# ------------------------------------------------------------------ line protocol


def test_line_protocol_write_escapes_and_types(broker, api):
    dev, _ = api.create_device("lp")
    now = int(time.time() * 1000) // 1000 * 1000 - 60_000
    body = (
        f"# a comment, then an empty line\n\n"
        f"env,device={dev},room=a\\ b temp=21.5,hum=40i,on=t,up=12u {now * 1_000_000}\n"
        # Escaped '=', ',' and space in a tag value, and a string field with an escaped quote
        # and a comma, space and equals inside: the string is refused alone, the line's other
        # fields are kept.
        f"m2,device={dev},k=a\\=b\\,c\\ d v=1.25,note=\"say \\\"hi\\\", x=y\",flag=FALSE {(now + 1_000) * 1_000_000}\r\n"
        # Escaped comma and space in the measurement parse, but make no metric name.
        f"my\\,m\\ x,device={dev} v=1\n"
    ).encode()
    status, report = post(broker.api_port, "/api/v1/telemetry/write", body)
    assert status == 200, report
    assert report["written"] == 4 + 2 and report["bad_lines"] == 0, report
    assert report["refusals"] == {"bad_name": 1, "bad_value": 1}, report
    got = raw(api, dev, now - 1, now + 10_000)
    assert got == {"env.temp": [[now, 21.5]], "env.hum": [[now, 40.0]], "env.on": [[now, True]],
                   "env.up": [[now, 12.0]], "m2.v": [[now + 1_000, 1.25]], "m2.flag": [[now + 1_000, False]]}, got


def test_line_protocol_metric_names_and_flag(broker, api):
    dev, _ = api.create_device("lq")
    now = int(time.time() * 1000) - 30_000
    body = f"my\\ m,device={dev} a=1 {now}\nok.m,device={dev} a=2,b=true {now}\n".encode()
    status, report = post(broker.api_port, "/api/v1/telemetry/write?precision=ms", body)
    assert status == 200, report
    # "my m.a" has a space: refused by name; "ok.m.a" and "ok.m.b" stored.
    assert (report["written"], report["refusals"]) == (2, {"bad_name": 1}), report
    assert raw(api, dev, now, now + 1) == {"ok.m.a": [[now, 2.0]], "ok.m.b": [[now, True]]}


@pytest.mark.parametrize("precision,scale", [("ns", 1_000_000), ("us", 1_000), ("ms", 1), ("s", None), (None, 1_000_000)])
def test_precisions(broker, api, precision, scale):
    dev, _ = api.create_device("pr")
    now = int(time.time()) * 1000 - 120_000
    ts = now // 1000 if scale is None else now * scale
    q = f"?precision={precision}" if precision else ""
    status, report = post(broker.api_port, f"/api/v1/telemetry/write{q}", f"m,device={dev} x=7 {ts}".encode())
    assert status == 200 and report["written"] == 1, report
    assert raw(api, dev, now - 1, now + 1) == {"m.x": [[now, 7.0]]}


def test_no_timestamp_takes_arrival_time(broker, api):
    dev, _ = api.create_device("na")
    before = int(time.time() * 1000)
    status, _ = post(broker.api_port, "/api/v1/telemetry/write", f"m,device={dev} x=1".encode())
    after = int(time.time() * 1000)
    assert status == 200
    (ts, v), = raw(api, dev, before - 1, after + 1)["m.x"]
    assert before <= ts <= after and v == 1.0


def test_partial_write_keeps_good_lines_and_names_first_bad(broker, api):
    dev, _ = api.create_device("pw")
    now = int(time.time() * 1000) - 60_000
    lines = [
        f"m,device={dev} a=1 {now}",          # 1 good
        f"m,device={dev} a=oops {now + 1}",   # 2 bad value syntax
        f"m,device={dev} a=3 {now + 2}",      # 3 good
        f"m a=4 {now + 3}",                   # 4 no device tag
        f"m,device=nosuchdevice a=5 {now + 4}",  # 5 unknown device
        f"m,device={dev} a=6 {now + 5} junk",  # 6 trailing text
    ]
    before = Scrape(broker.api_port)(REFUSED, reason="unregistered")
    status, report = post(broker.api_port, "/api/v1/telemetry/write?precision=ms", "\n".join(lines).encode())
    assert status == 400, report
    assert report["first_error"]["line"] == 2 and "a" in report["first_error"]["error"], report
    assert report["message"].startswith("partial write: line 2"), report
    assert report["written"] == 2 and report["bad_lines"] == 4, report
    assert report["refusals"] == {"unregistered": 1}, report
    assert raw(api, dev, now, now + 10) == {"m.a": [[now, 1.0], [now + 2, 3.0]]}
    assert Scrape(broker.api_port)(REFUSED, reason="unregistered") == before + 1
    # Only an unknown device: still a bad line, named.
    status, report = post(broker.api_port, "/api/v1/telemetry/write", b"m,device=ghost a=1")
    assert status == 400 and report["first_error"]["line"] == 1, report
    assert "ghost" in report["first_error"]["error"], report


def test_bad_parameters_auth_and_content_type(broker, api):
    dev, _ = api.create_device("bp")
    body = f"m,device={dev} a=1".encode()
    status, err = post(broker.api_port, "/api/v1/telemetry/write?precision=h", body)
    assert status == 400 and "precision" in err["message"], err
    status, err = post(broker.api_port, "/api/v1/telemetry/write", body, ctype="text/csv")
    assert status == 415 and "Content-Type" in err["message"], err
    assert post(broker.api_port, "/api/v1/telemetry/write", body, auth=None)[0] == 401
    assert post(broker.api_port, "/api/v1/telemetry/write", body, auth="Bearer nope")[0] == 401
    # The v1 route takes only Bearer; the compat routes take Token and Basic too.
    assert post(broker.api_port, "/api/v1/telemetry/write", body, auth=f"Token {TOKEN}")[0] == 401


def test_body_and_count_limits(broker, api):
    dev, _ = api.create_device("lim")
    limit = 4 * 1024 * 1024
    head = f"m,device={dev} a=1\n#".encode()
    at_limit = head + b"x" * (limit - len(head))
    assert len(at_limit) == limit
    status, report = post(broker.api_port, "/api/v1/telemetry/write", at_limit)
    assert status == 200 and report["written"] == 1, report
    status, err = post(broker.api_port, "/api/v1/telemetry/write", at_limit + b"x")
    assert status == 413 and "MiB" in err["message"], err
    base = int(time.time() * 1000) - 3 * DAY // 2

    def lines(n: int, fields: str = "a=1") -> bytes:
        return "\n".join(f"n,device={dev} {fields} {base + i}" for i in range(n)).encode()

    # 100,000 lines are fine, 100,001 are refused whole (413, nothing stored).
    status, report = post(broker.api_port, "/api/v1/telemetry/write?precision=ms", lines(100_000))
    assert status == 200 and report["written"] == 100_000, report
    status, err = post(broker.api_port, "/api/v1/telemetry/write?precision=ms",
                       "\n".join(f"o,device={dev} a=1 {base + i}" for i in range(100_001)).encode())
    assert status == 413 and "lines" in err["message"], err
    # 100,000 samples in 50,000 lines fine; 100,002 samples in 50,001 lines refused.
    status, err = post(broker.api_port, "/api/v1/telemetry/write?precision=ms",
                       "\n".join(f"p,device={dev} a=1,b=2 {base + i}" for i in range(50_001)).encode())
    assert status == 413 and "samples" in err["message"], err
    assert raw(api, dev, base - 1, base + 200_000, "o.a,p.a") == {}


def test_influx_compat_paths(broker, api):
    dev, _ = api.create_device("ix")
    now = int(time.time()) - 100
    basic = "Basic " + base64.b64encode(f"telegraf:{TOKEN}".encode()).decode()
    status, body = post(broker.api_port, "/write?db=telegraf&precision=s", f"cpu,device={dev},host=h usage=1.5 {now}".encode(),
                        auth=basic)
    assert (status, body) == (204, None)
    status, body = post(broker.api_port, "/api/v2/write?org=o&bucket=b&precision=ms",
                        f"cpu,device={dev} usage=2.5 {(now + 1) * 1000}".encode(), auth=f"Token {TOKEN}")
    assert (status, body) == (204, None)
    # Telegraf's default: ns, charset in the Content-Type.
    status, body = post(broker.api_port, "/api/v2/write?bucket=b", f"cpu,device={dev} usage=3.5 {(now + 2) * 10**9}".encode(),
                        ctype="text/plain; charset=utf-8", auth=f"Bearer {TOKEN}")
    assert (status, body) == (204, None)
    got = raw(api, dev, now * 1000, (now + 3) * 1000)
    assert got == {"cpu.usage": [[now * 1000, 1.5], [(now + 1) * 1000, 2.5], [(now + 2) * 1000, 3.5]]}
    # A partial write answers 400 with the InfluxDB-like message.
    status, body = post(broker.api_port, "/write", b"cpu usage=1", auth=f"Token {TOKEN}")
    assert status == 400 and "partial write: line 1" in body["message"], body
    for path in ["/write", "/api/v2/write"]:
        assert post(broker.api_port, path, b"x", auth=None)[0] == 401
        assert post(broker.api_port, path, b"x", auth="Token wrong")[0] == 401
        bad = "Basic " + base64.b64encode(b"u:wrong").decode()
        assert post(broker.api_port, path, b"x", auth=bad)[0] == 401


def test_json_bulk(broker, api):
    d1, _ = api.create_device("j1")
    d2, _ = api.create_device("j2")
    now = int(time.time() * 1000) - 60_000
    one = {"device": d1, "points": [{"ts": now, "temp": 1.5, "on": True}, {"ts": now + 1, "temp": 2}]}
    status, report = post(broker.api_port, "/api/v1/telemetry/write", json.dumps(one).encode(), ctype="application/json")
    assert status == 200 and report["written"] == 3, report
    many = [{"device": d2, "points": [{"ts": now, "v": 1, "s": "x"}]},
            {"device": "ghost", "points": [{"ts": now, "v": 1}]},
            {"points": []},
            {"device": d1, "points": [{"ts": now + 2, "temp": 3}]}]
    status, report = post(broker.api_port, "/api/v1/telemetry/write", json.dumps(many).encode(), ctype="application/json")
    assert status == 400, report
    assert report["first_error"]["line"] == 2 and "ghost" in report["first_error"]["error"], report
    assert (report["written"], report["bad_lines"]) == (2, 2), report
    assert report["refusals"] == {"bad_value": 1, "unregistered": 1}, report
    assert raw(api, d1, now, now + 10, "temp") == {"temp": [[now, 1.5], [now + 1, 2.0], [now + 2, 3.0]]}
    assert raw(api, d2, now, now + 10) == {"v": [[now, 1.0]]}
    status, err = post(broker.api_port, "/api/v1/telemetry/write", b"[1", ctype="application/json")
    assert status == 400 and "body" in err["message"], err


# ------------------------------------------------------------------ CBOR over MQTT


def cbor(v) -> bytes:
    """A minimal CBOR encoder (definite lengths) for the test payloads."""
    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        for add, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
            if n < 1 << (8 * struct.calcsize(fmt)):
                return bytes([major << 5 | add]) + struct.pack(fmt, n)
        raise ValueError(n)
    if v is True:
        return b"\xf5"
    if v is False:
        return b"\xf4"
    if isinstance(v, int):
        return head(0, v) if v >= 0 else head(1, -1 - v)
    if isinstance(v, float):
        return b"\xfb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return head(3, len(b)) + b
    if isinstance(v, bytes):
        return head(2, len(v)) + v
    if isinstance(v, list):
        return head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict):
        return head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(v)


def test_cbor_over_mqtt(broker, api):
    dev, pw = api.create_device("cb")
    now = int(time.time() * 1000) - 60_000
    s = Scrape(broker.api_port)
    before = {r: s(REFUSED, reason=r) for r in ["bad_json", "bad_value"]}
    with Client(broker.port, dev, V5, username=dev, password=pw) as c:
        t = f"devices/{dev}/telemetry"
        c.publish(t, cbor({"temp": 21.5, "n": -3, "on": True, "ts": now}), qos=1)
        c.publish(t, cbor({"points": [{"ts": now + 1, "temp": 22.0}, {"ts": now + 2, "temp": 23, "b": b"\x00"}]}), qos=1)
        # Half float 1.5 (0xF9 0x3E00), written by hand.
        c.publish(t, b"\xa2" + cbor("ts") + cbor(now + 3) + cbor("temp") + b"\xf9\x3e\x00", qos=1)
        # Too deep (5 nested containers), indefinite length, trailing garbage: refused whole.
        c.publish(t, b"\xa1\x61a\x81\x81\x81\x81\x01", qos=1)
        c.publish(t, b"\xbf\x61a\x01\xff", qos=1)
        c.publish(t, cbor({"a": 1}) + b"\x00", qos=1)
        # JSON still works on the same topic.
        c.publish(t, json.dumps({"temp": 24, "ts": now + 4}), qos=1)

    def done() -> bool:
        return len(raw(api, dev, now, now + 10).get("temp", [])) == 5

    assert wait_until(done, 10), raw(api, dev, now, now + 10)
    got = raw(api, dev, now, now + 10)
    assert got == {"temp": [[now, 21.5], [now + 1, 22.0], [now + 2, 23.0], [now + 3, 1.5], [now + 4, 24.0]],
                   "n": [[now, -3.0]], "on": [[now, True]]}, got
    s = Scrape(broker.api_port)
    assert wait_until(lambda: Scrape(broker.api_port)(REFUSED, reason="bad_json") - before["bad_json"] == 3, 5)
    assert Scrape(broker.api_port)(REFUSED, reason="bad_value") - before["bad_value"] == 1


# ------------------------------------------------------------------ export


def test_export_csv_and_ndjson_past_the_raw_cap(broker, api):
    dev, _ = api.create_device("ex")
    n = 60_000
    base = int(time.time() * 1000) - 2 * DAY  # spans two days: export crosses a partition
    step = 2
    for part in range(2):
        body = "\n".join(f"e,device={dev} a={i},b={i % 2 == 0} {base + i * step}"
                         for i in range(part * n // 2, (part + 1) * n // 2)).encode()
        status, report = post(broker.api_port, "/api/v1/telemetry/write?precision=ms", body)
        assert status == 200 and report["written"] == n, report
    to = base + n * step
    # 120,000 points: the plain query refuses (its cap is 100,000), the export streams them all.
    status, _ = api.call("GET", f"/api/v1/devices/{dev}/telemetry?from={base}&to={to}")
    assert status == 400
    status, ctype, text = get_text(broker.api_port, f"/api/v1/devices/{dev}/telemetry/export?from={base}&to={to}&format=csv")
    assert status == 200 and ctype.startswith("text/csv"), (status, ctype, text[:200])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["ts", "metric", "value"]
    assert len(rows) == 1 + 2 * n
    a = [r for r in rows[1:] if r[1] == "e.a"]
    assert [int(r[0]) for r in a] == [base + i * step for i in range(n)]
    assert [float(r[2]) for r in a[:3]] == [0.0, 1.0, 2.0]
    assert rows[1 + n][1:] == ["e.b", "true"] and rows[2 + n][2] == "false"
    # Default format and range (from 0), one metric, NDJSON.
    status, ctype, text = get_text(broker.api_port, f"/api/v1/devices/{dev}/telemetry/export?metrics=e.b&format=ndjson")
    assert status == 200 and ctype.startswith("application/x-ndjson"), ctype
    lines = [json.loads(x) for x in text.splitlines()]
    assert len(lines) == n
    assert lines[0] == {"ts": base, "metric": "e.b", "value": True}
    assert lines[-1] == {"ts": base + (n - 1) * step, "metric": "e.b", "value": False}
    # Bad parameters are named; unknown device 404.
    for q, name in [("format=xml", "format"), ("from=x", "from"), ("from=5&to=5", "from"), ("metrics=a%20b", "metrics")]:
        status, _, text = get_text(broker.api_port, f"/api/v1/devices/{dev}/telemetry/export?{q}")
        assert status == 400 and name in text, (q, text)
    assert get_text(broker.api_port, "/api/v1/devices/nosuch/telemetry/export")[0] == 404


# ------------------------------------------------------------------ ctl


def test_ctl_telemetry_commands(broker, api, tmp_path):
    dev, _ = api.create_device("ct")
    ctl = json_ctl(broker.api_port, TOKEN)
    now = int(time.time() * 1000) // 60_000 * 60_000 - 600_000
    f = tmp_path / "points.lp"
    f.write_text("".join(f"c,device={dev} t={i} {now + i * 1000}\n" for i in range(90)))
    r = ctl("telemetry", "write", str(f), "--precision", "ms")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["written"] == 90
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    env |= {"MYRIAD_API": f"http://127.0.0.1:{broker.api_port}", "MYRIAD_API_TOKEN": TOKEN}
    r = subprocess.run([str(myriad_bin()), "ctl", "--output", "json", "telemetry", "write", "-", "--precision", "ms"],
                       input=f"c,device={dev} u=1 {now}\n", capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["written"] == 1, r.stderr
    # A partial write fails the command, naming the line.
    r = subprocess.run([str(myriad_bin()), "ctl", "telemetry", "write", "-", "--precision", "ms"],
                       input=f"c,device={dev} u=2 {now + 1}\nbad\n",
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "line 2" in r.stderr, (r.stdout, r.stderr)
    r = ctl("telemetry", "query", dev, "--metrics", "c.t", "--from", str(now), "--to", str(now + 120_000),
            "--step", "60000", "--agg", "max")
    assert r.returncode == 0, r.stderr
    assert series(json.loads(r.stdout)) == {"c.t": [[now, 59.0], [now + 60_000, 89.0]]}
    r = subprocess.run([str(myriad_bin()), "ctl", "telemetry", "latest", dev], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    table = r.stdout.splitlines()
    assert table[0].split() == ["METRIC", "TS", "VALUE"]
    assert [x.split() for x in table[1:]] == [["c.t", str(now + 89_000), "89.0"], ["c.u", str(now + 1), "2.0"]], table
    r = subprocess.run([str(myriad_bin()), "ctl", "telemetry", "query", dev, "--metrics", "c.u",
                        "--from", str(now), "--to", str(now + 1)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[:2] == ["c.u", str(now)], r.stdout
    out = tmp_path / "export.csv"
    with open(out, "w") as fh:
        r = subprocess.run([str(myriad_bin()), "ctl", "telemetry", "export", dev, "--metrics", "c.t", "--format", "csv"],
                           stdout=fh, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["ts", "metric", "value"] and len(rows) == 91
    assert rows[1] == [str(now), "c.t", "0"]
    r = ctl("telemetry", "latest", "nosuchdevice")
    assert r.returncode == 1 and "nosuchdevice" in r.stderr, r.stderr


# ------------------------------------------------------------------ retention


def block_files(node) -> set[str]:
    return {p.name for p in (node / "myriad-data" / "telemetry").glob("*.blk")}


def block_partitions(node) -> set[int]:
    """Partition starts of the block files (`block-{partition}-{generation}.blk`)."""
    return {int(name[len("block-"):].rsplit("-", 1)[0]) for name in block_files(node)}


def test_retention_across_restart(tmp_path):
    node = tmp_path / "node"
    now = int(time.time() * 1000)
    day = lambda ts: ts // DAY * DAY  # noqa: E731
    old = day(now) - 10 * DAY + 3_600_000      # partition ended ~9 days ago: all gone
    mid = day(now) - 6 * DAY + 3_600_000       # ended ~5 days ago: raw gone, rollups kept
    new = now - 3_600_000                      # an hour ago: kept
    cfg = dict(BROKER_CONFIG, telemetry={"raw_retention_days": 30, "rollup_retention_days": 60})
    b = Broker(node, cfg).start()
    try:
        api = Api(b.api_port, TOKEN)
        dev, _ = api.create_device("rt")
        body = "\n".join(f"r,device={dev} v={v} {ts}" for ts, v in
                         [(old, 1), (old + 60_000, 3), (mid, 10), (mid + 60_000, 20), (mid + 61_000, 40), (new, 7)])
        status, report = post(b.api_port, "/api/v1/telemetry/write?precision=ms", body.encode())
        assert status == 200 and report["written"] == 6, report
    finally:
        b.stop()
    # (The points may still be in the WAL only: the restart seals what it replays, then applies
    # retention.)
    cfg = dict(BROKER_CONFIG, telemetry={"raw_retention_days": 5, "rollup_retention_days": 8})
    b = Broker(node, cfg).start()
    try:
        api = Api(b.api_port, TOKEN)
        assert raw(api, dev, old - DAY, now + 1) == {"r.v": [[new, 7.0]]}
        agg = series(api.ok("GET", f"/api/v1/devices/{dev}/telemetry?from={old - 3_600_000}&to={now}&step=60000&agg=avg"))
        mid_m = mid // 60_000 * 60_000
        assert agg["r.v"] == [[mid_m, 10.0], [mid_m + 60_000, 30.0], [new // 60_000 * 60_000, 7.0]], agg
        # Older than the raw retention: refused at ingest with its reason.
        status, report = post(b.api_port, "/api/v1/telemetry/write?precision=ms",
                              f"r,device={dev} v=1 {now - 5 * DAY - 60_000}\nr,device={dev} v=2 {now - 1000}".encode())
        assert status == 200 and report["written"] == 1 and report["refusals"] == {"expired": 1}, report
        assert Scrape(b.api_port)(REFUSED, reason="expired") == 1
    finally:
        b.stop()
    parts = block_partitions(node)
    assert day(old) not in parts and day(mid) in parts, block_files(node)


def test_retention_per_metric_pattern(tmp_path):
    """`[[telemetry.retention]]` keeps `debug.*` 1 day raw / 2 days rollups while other metrics
    keep the global 30 / 365: after a restart under the rule, the debug series of a day that
    ended over 2 days ago is gone, the one of a day that ended over 1 day ago answers from its
    rollups only, the other metric keeps both days raw; a debug sample older than a day is
    refused as expired while the other metric's sample of the same time is stored."""
    node = tmp_path / "node"
    now = int(time.time() * 1000)
    today = now // DAY * DAY
    old = today - 3 * DAY + 3_600_000       # its day ended 2 days before today began
    mid = today - 2 * DAY + 3_600_000       # its day ended 1 day before today began
    b = Broker(node, BROKER_CONFIG).start()
    try:
        api = Api(b.api_port, TOKEN)
        dev, _ = api.create_device("pm")
        body = "\n".join(f"{m},device={dev} {f}={v} {ts}" for m, f, ts, v in [
            ("debug", "a", old, 1), ("debug", "a", mid, 2), ("debug", "a", mid + 60_000, 4),
            ("env", "temp", old, 10), ("env", "temp", mid, 20)])
        status, report = post(b.api_port, "/api/v1/telemetry/write?precision=ms", body.encode())
        assert status == 200 and report["written"] == 5, report
    finally:
        b.stop()
    cfg = dict(BROKER_CONFIG, telemetry={
        "retention": [{"metrics": "debug.*", "raw_days": 1, "rollup_days": 2}]})
    b = Broker(node, cfg).start()
    try:
        api = Api(b.api_port, TOKEN)
        got = raw(api, dev, old - DAY, now + 1)
        assert got.get("debug.a", []) == [] and got["env.temp"] == [[old, 10.0], [mid, 20.0]], got
        agg = series(api.ok("GET", f"/api/v1/devices/{dev}/telemetry?from={old - DAY}&to={now}"
                                   f"&step=60000&agg=sum&metrics=debug.a"))
        assert agg["debug.a"] == [[mid // 60_000 * 60_000, 2.0], [mid // 60_000 * 60_000 + 60_000, 4.0]], agg
        scrape = Scrape(b.api_port)
        assert scrape("myriad_telemetry_compactions_total", kind="retention") >= 1
        late = now - DAY - 60_000
        status, report = post(b.api_port, "/api/v1/telemetry/write?precision=ms",
                              f"debug,device={dev} a=1 {late}\nenv,device={dev} temp=5 {late}".encode())
        assert status == 200 and report["written"] == 1 and report["refusals"] == {"expired": 1}, report
        stored = {m: p for m, p in raw(api, dev, late, late + 1).items() if p}
        assert stored == {"env.temp": [[late, 5.0]]}, stored
    finally:
        b.stop()


def test_seals_write_small_blocks_that_compaction_merges(tmp_path):
    """With a seal every second, four batches into today's partition (each sealed before the
    next) leave four level 0 block files that one level compaction merges into one, and two
    batches into a day that ended days ago leave two blocks merged whole (it is cold): one file
    per day is left, the compaction counter counts both kinds, the block gauge agrees, and
    every point answers, after a restart too."""
    node = tmp_path / "node"
    now = int(time.time() * 1000)
    today = now // DAY * DAY
    recent = max(today, now - 3_600_000)
    past = today - 3 * DAY + 7_200_000
    cfg = dict(BROKER_CONFIG, telemetry={"seal_interval_secs": 1})
    metric = lambda name, **labels: Scrape(b.api_port)(name, **labels)  # noqa: E731
    b = Broker(node, cfg).start()
    try:
        api = Api(b.api_port, TOKEN)
        dev, _ = api.create_device("cp")
        written = 0
        for i in range(4):
            lines = [f"c,device={dev} v={i * 100 + j} {recent + i * 100 + j}" for j in range(100)]
            if i < 2:
                # Another series: the out-of-order window counts from each series' newest point.
                lines += [f"o,device={dev} v={j} {past + i * 100_000 + j}" for j in range(50)]
            status, report = post(b.api_port, "/api/v1/telemetry/write?precision=ms",
                                  "\n".join(lines).encode())
            assert status == 200, report
            written += report["written"]
            # Sealed (its WAL segment rotated away) before the next batch.
            segments = {p.name for p in (node / "myriad-data" / "telemetry").glob("wal-*.log")}
            assert wait_until(lambda: {p.name for p in (node / "myriad-data" / "telemetry")
                                       .glob("wal-*.log")} != segments, timeout=10)
        assert written == 500
        # The counters move just after the files do.
        assert wait_until(lambda: len(block_files(node)) == 2
                          and metric("myriad_telemetry_compactions_total", kind="cold") == 1
                          and metric("myriad_telemetry_compactions_total", kind="level") == 1,
                          timeout=10), block_files(node)
        assert block_partitions(node) == {past // DAY * DAY, today}
        assert metric("myriad_telemetry_compactions_total", kind="level") == 1
        assert metric("myriad_telemetry_compactions_total", kind="cold") == 1
        assert metric("myriad_telemetry_blocks") == 2
        got = raw(api, dev, past - DAY, now + DAY)
        assert (len(got["c.v"]), len(got["o.v"])) == (400, 100)
    finally:
        b.stop()
    b = Broker(node, cfg).start()
    try:
        api = Api(b.api_port, TOKEN)
        got = raw(api, dev, past - DAY, now + DAY)
        assert (len(got["c.v"]), len(got["o.v"])) == (400, 100)
        assert len(block_files(node)) == 2
    finally:
        b.stop()


def test_sigterm_seals_before_exit(tmp_path):
    """A stop (SIGTERM) waits for the telemetry writer to seal the head into block files: the
    200,000 points are in `block-*.blk` (none left half-written as `.tmp`) when the process has
    exited (sealing them takes long enough that an exit not waiting for it cuts it short), and
    they answer after a restart."""
    node = tmp_path / "node"
    now = int(time.time() * 1000)
    b = Broker(node, BROKER_CONFIG).start()
    try:
        api = Api(b.api_port, TOKEN)
        dev, _ = api.create_device("st")
        for metric in ("a", "b"):
            body = "\n".join(f"s,device={dev} {metric}={i % 97} {now - 200_000 + i * 2}" for i in range(100_000))
            status, report = post(b.api_port, "/api/v1/telemetry/write?precision=ms", body.encode())
            assert status == 200 and report["written"] == 100_000, report
        assert block_files(node) == set(), "sealed before the stop (seal_interval_secs is 600)"
    finally:
        assert b.stop() == 0
    tdir = node / "myriad-data" / "telemetry"
    assert block_files(node), list(tdir.iterdir())
    assert not list(tdir.glob("*.tmp")), list(tdir.iterdir())
    b = Broker(node, BROKER_CONFIG).start()
    try:
        api = Api(b.api_port, TOKEN)
        export = api.call("GET", f"/api/v1/devices/{dev}/telemetry?metrics=s.a&from={now - DAY}&to={now + 1}")
        assert export[0] == 200 and len(export[1]["series"][0]["points"]) == 100_000
    finally:
        b.stop()


def test_bad_retention_config_stops_startup(tmp_path):
    for i, (raw_cfg, key) in enumerate([
        ("[telemetry]\nraw_retention_days = 0\n", "telemetry.raw_retention_days"),
        ("[telemetry]\nraw_retention_days = 10\nrollup_retention_days = 5\n", "telemetry.rollup_retention_days"),
    ]):
        b = Broker(tmp_path / f"b{i}", raw_config=raw_cfg)
        with pytest.raises(RuntimeError):
            b.start()
        assert key in b.log_path.read_text(), b.log_tail()
