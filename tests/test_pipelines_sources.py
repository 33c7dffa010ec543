"""Pipeline sources beyond MQTT: a PostgreSQL query streamed through a cursor (20,000 typed
rows, run once and `finished`), a PostgreSQL table followed by its key (new rows picked up;
kill -9 of the server mid-stream loses nothing and, into a keyed PostgreSQL sink, duplicates
nothing), the telemetry store read as a range and followed, and bad source config named.
Real PostgreSQL (tests/pg.py), real devices publishing telemetry over MQTT."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone

import pytest

from helpers import V5, Client, broker_kind, wait_until
from test_pipelines import (  # noqa: F401 (serve: the fixture)
    Serve, file_sink, metric, metrics, pipeline_toml, read_lines, refused_startup, serve, toml_str,
)
from test_observability import Scrape
from test_pipelines_postgres import count, db, pg_sink  # noqa: F401 (db: the fixture)

pytestmark = [
    pytest.mark.myriad_only,
    pytest.mark.timeout(240),
    pytest.mark.skipif(broker_kind() == "mosquitto", reason="Myriad's pipelines"),
]


def pg_source(url: str, **kw) -> str:
    parts = ['type = "postgres"', f"url = {toml_str(url)}"]
    for k, v in kw.items():
        parts.append(f"{k} = {json.dumps(v)}")
    return "{ " + ", ".join(parts) + " }"


def with_source(toml: str, source: str) -> str:
    return toml + f"source = {source}\n"


def status(s: Serve, name: str) -> dict:
    return s.api().ok("GET", f"/api/v1/pipelines/{name}")


TYPED = """
CREATE TYPE mood AS ENUM ('calm', 'hot');
CREATE TABLE typed (
  id int8 PRIMARY KEY, i2 int2, i4 int4, f4 float4, f8 float8, n numeric(14,3), big numeric,
  t text, vc varchar(10), ok bool, at timestamptz, d date, j jsonb, js json, raw bytea, u uuid,
  arr int4[], m mood, nothing text);
INSERT INTO typed
SELECT g, (g % 30000)::int2, g * 3, g / 4.0, g / 8.0, g * 1.5 + 0.125, 12345678901234567890.5,
       'row ' || g, 'v' || (g % 100), g % 2 = 0,
       timestamptz '2026-12-05 12:00:00.123+00' + g * interval '1 second', date '2026-01-01' + (g % 300),
       jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g % 3)), json_build_array(g),
       decode(lpad(to_hex(g), 8, '0'), 'hex'), md5(g::text)::uuid, ARRAY[g, NULL, -g],
       CASE WHEN g % 3 = 0 THEN 'hot' ELSE 'calm' END::mood, NULL
FROM generate_series(0, 19999) g;
"""


def test_a_query_of_20000_rows_arrives_whole_with_its_types_and_runs_once(serve, db, tmp_path):
    url, conn = db
    conn.execute(TYPED)
    out, dead = tmp_path / "rows.jsonl", tmp_path / "dead.jsonl"
    toml = with_source(
        pipeline_toml("dump", "SELECT * FROM 'postgres/query'", file_sink(out), dead, in_flight=500),
        pg_source(url, query="SELECT * FROM typed ORDER BY id", fetch_rows=700),
    )
    s = serve(toml)
    assert wait_until(lambda: status(s, "dump")["state"] == "finished", 60), (status(s, "dump"), s.log())
    rows = read_lines(out)
    assert len(rows) == 20_000, len(rows)
    assert [r["id"] for r in rows] == list(range(20_000))
    by_id = {r["id"]: r for r in rows}
    g = 7
    assert by_id[g] == {
        "id": 7, "i2": 7, "i4": 21, "f4": 1.75, "f8": 0.875, "n": 10.625, "big": "12345678901234567890.5",
        "t": "row 7", "vc": "v7", "ok": False, "at": "2026-12-05T12:00:07.123Z", "d": "2026-01-08",
        "j": {"g": 7, "tags": ["a", 1]}, "js": [7], "raw": base64.b64encode(bytes.fromhex("00000007")).decode(),
        "u": str(conn.execute("SELECT md5('7')::uuid").fetchone()[0]), "arr": [7, None, -7], "m": "calm",
        "nothing": None,
    }, by_id[g]
    assert by_id[19999]["at"] == "2026-12-05T17:33:19.123Z" and by_id[19998]["ok"] is True
    assert not dead.exists() or dead.read_text() == ""
    st = status(s, "dump")
    assert st["records"]["received"] == 20_000 and st["records"]["committed"] == 20_000 and st["lag"] == 0, st
    assert st["restarts"] == 0, st
    # Not run again: not while it stays up, not after a restart (the checkpoint says it ran).
    time.sleep(1.5)
    s.stop()
    s.start()
    assert wait_until(lambda: status(s, "dump")["state"] == "finished", 15), status(s, "dump")
    time.sleep(0.5)
    assert len(read_lines(out)) == 20_000
    assert status(s, "dump")["records"]["received"] == 0


def test_a_followed_table_picks_up_new_rows_in_key_order(serve, db, tmp_path):
    url, conn = db
    conn.execute("CREATE TABLE ev (id bigserial PRIMARY KEY, device text, v float8, at timestamptz, secret text)")
    conn.execute("INSERT INTO ev (device, v, at, secret) SELECT 'd' || g, g, now(), 's' FROM generate_series(1, 5) g")
    out, dead = tmp_path / "ev.jsonl", tmp_path / "dead.jsonl"
    sql = "SELECT payload.id AS id, payload.device AS device, payload.v AS v, payload.at AS at FROM 'postgres/ev'"
    toml = with_source(
        pipeline_toml("follow", sql, file_sink(out), dead),
        pg_source(url, table="ev", key="id", columns=["id", "device", "v", "at"], poll_ms=50, fetch_rows=2,
                  timestamps="ms"),
    )
    s = serve(toml)
    assert wait_until(lambda: out.exists() and len(read_lines(out)) == 5, 15), s.log()
    conn.execute("INSERT INTO ev (device, v, at) VALUES ('late', 6.5, '2026-12-05T12:00:00.250Z'), ('later', 7, NULL)")
    assert wait_until(lambda: len(read_lines(out)) == 7, 15), s.log()
    rows = read_lines(out)
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[5] == {"id": 6, "device": "late", "v": 6.5, "at": 1_796_472_000_250}
    assert rows[6]["at"] is None and "secret" not in rows[0]
    assert status(s, "follow")["state"] == "running"
    cp = s.workdir / "data" / "pipelines" / "follow.checkpoint"
    assert wait_until(lambda: cp.exists() and json.loads(cp.read_text()).get("last_value") == 7, 5), \
        cp.read_text() if cp.exists() else "no checkpoint"
    # A stop and a start: nothing read twice, new rows still picked up.
    s.stop()
    conn.execute("INSERT INTO ev (device, v) VALUES ('while-down', 8)")
    s.start()
    assert wait_until(lambda: len(read_lines(out)) == 8, 15), s.log()
    time.sleep(0.3)
    assert [r["id"] for r in read_lines(out)] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_row_size_limit_and_unsupported_types(serve, db, tmp_path):
    """max_row_bytes: a row of exactly that many bytes of JSON passes, one byte more is
    dead-lettered (the rest go on); a column of a type not read here is an error naming it."""
    url, conn = db
    conn.execute("CREATE TABLE big (id int4 PRIMARY KEY, t text)")
    # {"id":1,"t":"..."} is 15 bytes plus the text.
    conn.execute("INSERT INTO big VALUES (1, repeat('a', 85)), (2, repeat('b', 86)), (3, 'c')")
    out, dead = tmp_path / "big.jsonl", tmp_path / "dead.jsonl"
    odd_out, odd_dead = tmp_path / "odd.jsonl", tmp_path / "odd.dead.jsonl"
    toml = with_source(
        pipeline_toml("big", "SELECT * FROM 'postgres/big'", file_sink(out), dead),
        pg_source(url, table="big", key="id", poll_ms=50, max_row_bytes=100),
    ) + with_source(
        pipeline_toml("odd", "SELECT * FROM 'postgres/query'", file_sink(odd_out), odd_dead),
        pg_source(url, query="SELECT 1 AS fine, interval '1 day' AS span"),
    )
    s = serve(toml)
    assert wait_until(lambda: out.exists() and len(read_lines(out)) == 2, 15), s.log()
    assert [(r["id"], len(r["t"])) for r in read_lines(out)] == [(1, 85), (3, 1)]
    assert wait_until(lambda: dead.exists() and len(read_lines(dead)) == 1, 5)
    letter = read_lines(dead)[0]
    assert "101 bytes" in letter["reason"] and "max_row_bytes (100)" in letter["reason"], letter
    assert json.loads(base64.b64decode(letter["payload"])) == {"key": 2}
    assert wait_until(lambda: "span" in (status(s, "odd")["last_error"] or ""), 15), status(s, "odd")
    st = status(s, "odd")
    assert "interval" in st["last_error"] and "::text" in st["last_error"], st
    assert not odd_out.exists() or odd_out.read_text() == ""


@pytest.mark.parametrize("mode", ["follow", "query"])
def test_kill9_mid_stream_then_restart_every_row_exactly_once(serve, db, tmp_path, mode):
    url, conn = db
    # Enough rows that the kill lands mid-stream even when the test process is descheduled on a
    # loaded machine (30,000 were once all copied before the check saw 3,000).
    n = 150_000
    conn.execute("CREATE TABLE src (id int8 PRIMARY KEY, v float8)")
    conn.execute(f"INSERT INTO src SELECT g, g / 2.0 FROM generate_series(0, {n - 1}) g")
    conn.execute("CREATE TABLE dst (id int8 PRIMARY KEY, v float8)")
    dead = tmp_path / "dead.jsonl"
    if mode == "follow":
        source = pg_source(url, table="src", key="id", fetch_rows=500, poll_ms=50)
        sql = "SELECT payload.id AS id, payload.v AS v FROM 'postgres/src'"
    else:
        source = pg_source(url, query="SELECT id, v FROM src ORDER BY id", fetch_rows=500)
        sql = "SELECT payload.id AS id, payload.v AS v FROM 'postgres/query'"
    # Small batches: the copy takes a few seconds, long enough to kill it in the middle.
    toml = with_source(
        pipeline_toml("copy", sql, pg_sink(url, "dst", key=["id"]), dead, max_age_ms=20, in_flight=200)
        .replace("max_records = 500", "max_records = 50"),
        source,
    )
    s = serve(toml)
    assert wait_until(lambda: count(conn, "dst") >= 3000, 60), s.log()
    s.kill9()
    at_kill = count(conn, "dst")
    assert at_kill < n, "not killed mid-stream"
    checkpoint_path = s.workdir / "data" / "pipelines" / "copy.checkpoint"
    checkpoint = json.loads(checkpoint_path.read_text()) if checkpoint_path.exists() else {}
    s.start()
    assert wait_until(lambda: count(conn, "dst") == n, 120), (count(conn, "dst"), s.log())
    assert wait_until(lambda: status(s, "copy")["lag"] == 0, 10)
    rows = conn.execute("SELECT count(*), count(DISTINCT id), min(id), max(id), sum(v) FROM dst").fetchone()
    assert rows == (n, n, 0, n - 1, sum(i / 2.0 for i in range(n))), rows
    received = status(s, "copy")["records"]["received"]
    print(f"{mode}: rows at kill {at_kill}, checkpoint {checkpoint}, received after restart {received}")
    if mode == "follow":
        # Only the tail after the checkpoint is read again, and the checkpoint was never
        # ahead of what the sink had committed.
        done = checkpoint.get("last_value", -1) + 1
        assert done <= at_kill, (done, at_kill)
        assert received == n - done, (received, n, done)
    else:
        # The query runs again from its first row (the sink's key skips what it has), then
        # is finished.
        assert received == n, received
        assert wait_until(lambda: status(s, "copy")["state"] == "finished", 15), status(s, "copy")
    assert not dead.exists() or dead.read_text() == ""


TELEMETRY_ROWS = "SELECT topic(2) AS device, payload.metric AS metric, payload.ts AS ts, payload.value AS v" \
    " FROM 'devices/+/telemetry'"
HOT = "SELECT payload.temp AS t, topic(2) AS device, payload.ts AS ts FROM 'devices/+/telemetry' WHERE payload.temp > 30"


def telemetry_source(devices: list[str], **kw) -> str:
    parts = ['type = "telemetry"', f"devices = {json.dumps(devices)}"]
    for k, v in kw.items():
        parts.append(f"{k} = {json.dumps(v)}")
    return "{ " + ", ".join(parts) + " }"


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def publish_points(port: int, dev: str, pw: str, points: list[dict]) -> None:
    with Client(port, dev, V5, username=dev, password=pw) as c:
        assert c.publish(f"devices/{dev}/telemetry", json.dumps({"points": points}), qos=1) == 0


def test_telemetry_range_and_follow_from_points_published_over_mqtt(serve, tmp_path):
    s = serve("")
    api = s.api()
    d1, pw1 = api.create_device("tel")
    d2, pw2 = api.create_device("tel")
    base = int(time.time() * 1000) - 60_000
    publish_points(s.port, d1, pw1, [{"ts": base + i * 1000, "temp": 20 + i, "hum": 50 - i} for i in range(10)])
    publish_points(s.port, d2, pw2, [{"ts": base + 3500, "temp": 35.5}])
    assert wait_until(lambda: Scrape(s.api_port)("myriad_telemetry_points_total") >= 21, 10), s.log()
    s.stop()

    rows, hot, follow = tmp_path / "range.jsonl", tmp_path / "hot.jsonl", tmp_path / "follow.jsonl"
    # The range: temp only, [base + 2 s, base + 8 s) of d1, all of d2's temp.
    toml = with_source(
        pipeline_toml("range", TELEMETRY_ROWS, file_sink(rows), tmp_path / "d1.jsonl"),
        telemetry_source([d1, d2], metrics=["temp"], **{"from": base + 2000, "to": rfc3339(base + 8000)}),
    ) + with_source(
        # The rule written for MQTT telemetry, on stored points (every metric, RFC 3339 from).
        pipeline_toml("hot", HOT, file_sink(hot), tmp_path / "d2.jsonl"),
        telemetry_source([d1, d2], **{"from": "1970-01-01T00:00:00Z"}),
    ) + with_source(
        pipeline_toml("follow", TELEMETRY_ROWS, file_sink(follow), tmp_path / "d3.jsonl"),
        telemetry_source([d1], follow=True, poll_ms=50),
    )
    s.config.write_text(toml + s.config.read_text())
    s.start()
    for name in ("range", "hot"):
        assert wait_until(lambda: status(s, name)["state"] == "finished", 20), (status(s, name), s.log())
    got = read_lines(rows)
    assert sorted((r["device"], r["ts"], r["v"]) for r in got) == sorted(
        [(d1, base + i * 1000, 20 + i) for i in range(2, 8)] + [(d2, base + 3500, 35.5)]
    ), got
    assert {r["metric"] for r in got} == {"temp"}
    assert sorted((r["device"], r["t"]) for r in read_lines(hot)) == [(d2, 35.5)]
    # Follow: everything of d1 (both metrics), then what arrives.
    assert wait_until(lambda: follow.exists() and len(read_lines(follow)) == 20, 15), s.log()
    # New points (now: a point older than the store's sealed blocks is refused as too old).
    now = int(time.time() * 1000)
    publish_points(s.port, d1, pw1, [{"ts": now, "temp": 40}, {"ts": now + 1, "volt": 3.3}])
    assert wait_until(lambda: len(read_lines(follow)) == 22, 15), s.log()
    tail = read_lines(follow)[20:]
    assert sorted((r["metric"], r["ts"], r["v"]) for r in tail) == [("temp", now, 40), ("volt", now + 1, 3.3)]
    assert status(s, "follow")["state"] == "running"
    # kill -9 and back: the finished ranges stay finished, follow reads nothing again.
    time.sleep(0.5)  # the checkpoint is written within 200 ms of the last record done
    s.kill9()
    s.start()
    later = int(time.time() * 1000)
    publish_points(s.port, d1, pw1, [{"ts": later, "temp": 41}])
    assert wait_until(lambda: len(read_lines(follow)) == 23, 15), s.log()
    time.sleep(0.3)
    assert read_lines(follow)[22]["ts"] == later
    assert len(read_lines(rows)) == 7
    for name in ("range", "hot"):
        assert status(s, name)["state"] == "finished" and status(s, name)["records"]["received"] == 0


BAD_SOURCES = [
    ('{ type = "postgres", url = "postgres://u@h/db", query = "SELECT 1", fetch_rows = 0 }', "source.fetch_rows"),
    ('{ type = "postgres", url = "postgres://u@h/db", query = "SELECT 1", fetch_rows = 10001 }', "source.fetch_rows"),
    ('{ type = "postgres", url = "postgres://u@h/db", table = "t", key = "id", poll_ms = 9 }', "source.poll_ms"),
    ('{ type = "postgres", url = "postgres://u@h/db", query = "SELECT 1", max_row_bytes = 16777217 }',
     "source.max_row_bytes"),
    ('{ type = "postgres", url = "postgres://u@h/db", query = "' + "x" * 65537 + '" }', "source.query"),
    ('{ type = "postgres", url = "postgres://u@h/db", query = "SELECT 1", table = "t", key = "id" }',
     "source.query"),
    ('{ type = "postgres", url = "postgres://u@h/db", table = "t" }', "source.key"),
    ('{ type = "postgres", url = "postgres://u@h/db", table = "a/b", key = "id" }', "source.table"),
    ('{ type = "postgres", url = "postgres://u@h/db", table = "t", key = "id", columns = ["a", "a"] }',
     "source.columns[1]"),
    ('{ type = "postgres", url = "mysql://u@h/db", query = "SELECT 1" }', "source.url"),
    ('{ type = "postgres", url = "postgres://u@h/db", query = "SELECT 1", timestamps = "iso" }',
     "unknown variant `iso`, expected `rfc3339` or `ms`"),
    ('{ type = "telemetry", devices = [] }', "source.devices"),
    ('{ type = "telemetry", devices = [' + ", ".join(f'"d{i}"' for i in range(1001)) + "] }", "source.devices"),
    ('{ type = "telemetry", devices = ["a+b"] }', "source.devices[0]"),
    ('{ type = "telemetry", devices = ["d"], metrics = ["bad name"] }', "source.metrics[0]"),
    ('{ type = "telemetry", devices = ["d"], from = "yesterday" }', "source.from"),
    ('{ type = "telemetry", devices = ["d"], follow = true, to = 5 }', "source.to"),
    ('{ type = "telemetry", devices = ["d"], from = 10, to = 10 }', "source.to"),
]


@pytest.mark.parametrize("source,key", BAD_SOURCES, ids=[
    "fetch-0", "fetch-10001", "poll-9", "row-16MiB+1", "query-64KiB+1", "query-and-table", "table-no-key",
    "table-slash", "columns-twice", "url", "timestamps", "devices-none", "devices-1001", "device-plus",
    "metric-name", "from-text", "follow-to", "to-not-after-from"])
def test_bad_source_config_stops_startup_naming_the_key(tmp_path, source, key):
    out = refused_startup(
        tmp_path,
        "[[pipelines]]\nname = \"p\"\nsql = \"SELECT * FROM 'a'\"\n"
        f"sink = {{ type = \"file\", path = \"o.jsonl\" }}\ndead_letter = {{ path = \"d.jsonl\" }}\n"
        f"source = {source}\n",
    )
    # Range and shape errors name the key; a value of the wrong kind is the TOML parser's error
    # at the source's line.
    want = key if " " in key else f"pipelines[0].{key}"
    assert want in out, f"error output should name {want!r}: {out[-2000:]!r}"


def test_a_telemetry_source_needs_the_telemetry_store(tmp_path):
    out = refused_startup(
        tmp_path,
        "[telemetry]\nenabled = false\n[[pipelines]]\nname = \"p\"\nsql = \"SELECT * FROM 'a'\"\n"
        "sink = { type = \"file\", path = \"o.jsonl\" }\ndead_letter = { path = \"d.jsonl\" }\n"
        "source = { type = \"telemetry\", devices = [\"d\"] }\n",
    )
    assert "pipelines[0].source.type" in out and "telemetry.enabled" in out, out[-2000:]
