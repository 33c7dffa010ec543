"""The PostgreSQL pipeline sink against a real PostgreSQL (tests/pg.py, fixture `postgres`):
typed rows, dead letters for bad types and constraint violations, PostgreSQL stopped and
restarted mid-stream, exactly once across kill -9 of `myriad serve` (idempotency key), bad
sink config named."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from helpers import HOST, Client, broker_kind, unique, wait_until
from test_pipelines import (  # noqa: F401 (serve: the fixture)
    metric, metrics, pipeline_toml, read_lines, refused_startup, serve, toml_str,
)

pytestmark = [
    pytest.mark.myriad_only,
    pytest.mark.timeout(180),
    pytest.mark.skipif(broker_kind() == "mosquitto", reason="Myriad's pipelines"),
]


def pg_sink(url: str, table: str, columns: list[str] | None = None, key: list[str] | None = None) -> str:
    parts = ['type = "postgres"', f"url = {toml_str(url)}", f"table = {toml_str(table)}"]
    if columns is not None:
        parts.append(f"columns = {json.dumps(columns)}")
    if key is not None:
        parts.append(f"key = {json.dumps(key)}")
    return "{ " + ", ".join(parts) + " }"


@pytest.fixture
def db(postgres):
    """A fresh database on the session's server: (url, psycopg connection)."""
    name = unique("db")
    url = postgres.create_db(name)
    with postgres.connect(name) as conn:
        yield url, conn


def count(conn, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_rows_arrive_with_their_column_types(serve, db, tmp_path):
    url, conn = db
    conn.execute(
        "CREATE TABLE readings (device text NOT NULL, seq int8 NOT NULL, small int2, t float8, f float4,"
        " ok bool, at timestamptz, meta jsonb, raw json, n numeric(10,2), id uuid, label varchar(8),"
        " inserted timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (device, seq))"
    )
    sql = ("SELECT topic(2) AS device, payload.seq AS seq, payload.small AS small, payload.t AS t,"
           " payload.f AS f, payload.ok AS ok, payload.at AS at, payload.meta AS meta, payload.meta AS raw,"
           " payload.n AS n, payload.id AS id, payload.label AS label FROM 'pg/+/in'")
    dead = tmp_path / "dead.jsonl"
    s = serve(pipeline_toml("typed", sql, pg_sink(url, "readings", key=["device", "seq"]), dead))
    u = uuid.uuid4()
    first = {"seq": 1, "small": -7, "t": 21.5, "f": 0.25, "ok": True, "at": 1_764_936_000_123,
             "meta": {"fw": "1.2", "tags": [1, 2]}, "n": 12.34, "id": str(u), "label": "abc"}
    second = {"seq": 2, "small": 7.0, "t": -1, "ok": False, "at": "2026-12-05T13:00:00.5+01:00",
              "n": "99999999.99", "id": u.hex}
    with Client(s.port) as c:
        assert c.publish("pg/dev1/in", json.dumps(first), qos=1) == 0
        assert c.publish("pg/dev2/in", json.dumps(second), qos=1) == 0
    assert wait_until(lambda: count(conn, "readings") == 2, 15), s.log()
    rows = conn.execute(
        "SELECT device, seq, small, t, f, ok, at, meta, raw, n, id, label FROM readings ORDER BY seq"
    ).fetchall()
    assert rows[0] == ("dev1", 1, -7, 21.5, 0.25, True,
                       datetime(2025, 12, 5, 12, 0, 0, 123000, tzinfo=timezone.utc),
                       {"fw": "1.2", "tags": [1, 2]}, {"fw": "1.2", "tags": [1, 2]}, Decimal("12.34"), u, "abc")
    assert rows[1] == ("dev2", 2, 7, -1.0, None, False,
                       datetime(2026, 12, 5, 12, 0, 0, 500000, tzinfo=timezone.utc),
                       None, None, Decimal("99999999.99"), u, None)
    # Columns the output does not name keep their default.
    assert conn.execute("SELECT count(*) FROM readings WHERE inserted IS NOT NULL").fetchone()[0] == 2
    assert not dead.exists() or dead.read_text() == ""
    lines = metrics(s.api_port)
    assert metric(lines, "myriad_pipeline_records_total", pipeline="typed", stage="sink", outcome="committed") == 2
    assert metric(lines, "myriad_pipeline_lag_records", pipeline="typed") == 0


@pytest.mark.parametrize("key", [None, ["device", "seq"]], ids=["copy", "staged-key"])
def test_bad_types_and_constraint_violations_are_dead_lettered_the_rest_committed(serve, db, tmp_path, key):
    url, conn = db
    conn.execute(
        "CREATE TABLE m (device text NOT NULL, seq int4 NOT NULL, t float8 NOT NULL CHECK (t < 100),"
        " UNIQUE (device, seq))"
    )
    sql = "SELECT topic(2) AS device, payload.seq AS seq, payload.t AS t FROM 'pgbad/+/in'"
    dead = tmp_path / "dead.jsonl"
    sink = pg_sink(url, "m", columns=["device", "seq", "t"], key=key)
    # One batch for all (max_age 500 ms): the bad records must not sink the good ones.
    s = serve(pipeline_toml("bad", sql, sink, dead, max_age_ms=500))
    msgs = [
        {"seq": 1, "t": 20},
        {"seq": 2, "t": "hot"},        # not a float8: refused here
        {"seq": 3, "t": 500},          # CHECK violation: refused by the server
        {"seq": 4},                    # t missing: NULL into NOT NULL
        {"seq": 2**40, "t": 1},        # out of int4's range
        {"seq": 6, "t": 99.5},
    ]
    with Client(s.port) as c:
        for m in msgs:
            assert c.publish("pgbad/d/in", json.dumps(m), qos=1) == 0
    assert wait_until(lambda: dead.exists() and len(read_lines(dead)) >= 4, 15), s.log()
    time.sleep(0.3)
    assert conn.execute("SELECT seq, t FROM m ORDER BY seq").fetchall() == [(1, 20.0), (6, 99.5)]
    letters = {json.loads(base64.b64decode(d["payload"]))["seq"]: d["reason"] for d in read_lines(dead)}
    assert sorted(letters) == [2, 3, 4, 2**40], letters
    assert '"t" (double precision)' in letters[2] and "float8" in letters[2], letters[2]
    assert "check constraint" in letters[3] and "23514" in letters[3], letters[3]
    assert "null value" in letters[4] and "23502" in letters[4], letters[4]
    assert '"seq" (integer)' in letters[2**40] and "int4" in letters[2**40], letters[2**40]
    lines = metrics(s.api_port)
    assert metric(lines, "myriad_pipeline_records_total", pipeline="bad", stage="sink", outcome="refused") == 4
    assert metric(lines, "myriad_pipeline_dead_letters_total", pipeline="bad") == 4
    assert metric(lines, "myriad_pipeline_lag_records", pipeline="bad") == 0


def test_an_output_field_without_a_column_is_dead_lettered(serve, db, tmp_path):
    url, conn = db
    conn.execute("CREATE TABLE x (a int4, b text)")
    dead = tmp_path / "dead.jsonl"
    s = serve(pipeline_toml("nocol", "SELECT * FROM 'pgx/in'", pg_sink(url, "x"), dead))
    with Client(s.port) as c:
        c.publish("pgx/in", json.dumps({"a": 1, "b": "one"}), qos=1)
        c.publish("pgx/in", json.dumps({"a": 2, "zzz": 1}), qos=1)
        c.publish("pgx/in", json.dumps({"a": 3}), qos=1)
    assert wait_until(lambda: dead.exists() and len(read_lines(dead)) == 1, 15), s.log()
    assert wait_until(lambda: count(conn, "x") == 2, 5)
    assert conn.execute("SELECT a, b FROM x ORDER BY a").fetchall() == [(1, "one"), (3, None)]
    assert 'no column "zzz"' in read_lines(dead)[0]["reason"]


def publish_stream(port: int, n: int, topic: str, stop_early=None, window: int = 50):
    """Publishes n QoS 1 messages {"seq": i, "temp": 40} with at most `window` unacknowledged;
    returns (sent, set of acknowledged seqs). Stops when `stop_early()` is true."""
    acked: list[int] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("pub"), protocol=mqtt.MQTTv5,
                    reconnect_on_failure=False)
    c.max_inflight_messages_set(window)
    c.max_queued_messages_set(0)
    mids: dict[int, int] = {}

    def on_publish(client, userdata, mid, reason_code, properties):
        if not reason_code.is_failure:
            acked.append(mid)

    c.on_publish = on_publish
    c.connect(HOST, port)
    c.loop_start()
    sent = 0
    for i in range(n):
        if stop_early is not None and stop_early():
            break
        info = c.publish(topic.format(i=i), json.dumps({"temp": 40, "seq": i}), qos=1)
        mids[info.mid] = i
        sent += 1
        while sent - len(acked) >= window and not (stop_early is not None and stop_early()):
            time.sleep(0.0005)
    if stop_early is None:
        wait_until(lambda: len(acked) >= sent, 20)
    time.sleep(0.3)
    c.loop_stop()
    c.disconnect()
    return sent, {mids[m] for m in list(acked)}


def start_again(postgres) -> None:
    """Starts PostgreSQL again; after a kill -9 its old backends may hold the port for a moment."""
    deadline = time.monotonic() + 30
    while True:
        try:
            postgres.start()
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_postgres_stopped_mid_stream_then_restarted_everything_arrives(serve, postgres, tmp_path, how):
    name = unique("db")
    url = postgres.create_db(name)
    with postgres.connect(name) as conn:
        conn.execute("CREATE TABLE s (seq int8, device text, PRIMARY KEY (seq, device))")
    sql = "SELECT payload.seq AS seq, topic(2) AS device FROM 'pgs/+/in'"
    dead = tmp_path / "dead.jsonl"
    # Each row committed: a COMMIT that returned is durable (synchronous_commit on), so
    # nothing acknowledged is lost even when PostgreSQL is killed.
    # in_flight above n: the broker never has to queue (and past its queue limit drop) for
    # the pipeline's session while PostgreSQL is away; every loss would be the sink's.
    s = serve(pipeline_toml("outage", sql, pg_sink(url, "s", key=["seq", "device"]), dead, max_age_ms=20, in_flight=5000))
    n = 3000
    # The first half goes in (and mostly through) while PostgreSQL runs; it is stopped, the
    # second half is published during the outage (so the sink must fail and retry, however
    # fast the first half went through), then it comes back.
    first, first_acked = publish_stream(s.port, n // 2, "pgs/d{i}/in")
    postgres.kill9() if how == "kill9" else postgres.stop()
    down = time.monotonic()
    second, second_acked = publish_stream(s.port, n // 2, "pgs/e{i}/in")
    time.sleep(max(0.0, 2.0 - (time.monotonic() - down)))
    start_again(postgres)
    print(f"PostgreSQL down for {time.monotonic() - down:.1f} s")
    assert first + second == n and len(first_acked) + len(second_acked) == n
    with postgres.connect(name) as conn:
        ok = wait_until(lambda: count(conn, "s") == n, 60, 0.2)
        got = count(conn, "s")
    dropped = metric(metrics(s.api_port), "myriad_messages_dropped_total", reason="queue_full")
    assert ok, f"{got} of {n} rows, {dropped} dropped by the broker\n{s.log()}"
    assert not dead.exists() or dead.read_text() == ""
    lines = metrics(s.api_port)
    assert metric(lines, "myriad_messages_dropped_total", reason="queue_full") == 0
    retries = metric(lines, "myriad_pipeline_retries_total", pipeline="outage")
    print(f"retries {retries}")
    assert retries >= 1, "the outage was not retried"
    assert metric(lines, "myriad_pipeline_lag_records", pipeline="outage") == 0


def test_kill9_of_the_server_every_acknowledged_message_exactly_once(serve, db, tmp_path):
    url, conn = db
    conn.execute("CREATE TABLE k (device text, seq int8, temp float8, PRIMARY KEY (device, seq))")
    sql = "SELECT topic(2) AS device, payload.seq AS seq, payload.temp AS temp FROM 'pgk/+/in'"
    dead = tmp_path / "dead.jsonl"
    s = serve(pipeline_toml("once", sql, pg_sink(url, "k", key=["device", "seq"]), dead,
                            max_age_ms=20, in_flight=5000))
    expected: set[tuple[str, int]] = set()
    for round_ in range(3):
        n = 20_000
        killer = threading.Timer(1.0, s.kill9)
        killer.start()
        proc = s.proc
        sent, acked = publish_stream(s.port, n, f"pgk/r{round_}/in", stop_early=lambda: proc.poll() is not None,
                                     window=20)
        killer.join()
        assert proc.poll() is not None, "the server was not killed mid-stream"
        assert 0 < len(acked) < n, f"acked {len(acked)} of {n}: not mid-stream"
        expected |= {(f"r{round_}", i) for i in acked}
        rows_at_kill = count(conn, "k")
        s.start()
        ok = wait_until(
            lambda: expected <= set(conn.execute("SELECT device, seq FROM k").fetchall()), 60, 0.2)
        rows = conn.execute("SELECT device, seq FROM k").fetchall()
        missing = expected - set(rows)
        # What the restarted server's source received is what the broker redelivered;
        # those already in the table were skipped by ON CONFLICT (committed, not acknowledged).
        redelivered = metric(metrics(s.api_port), "myriad_pipeline_records_total", pipeline="once",
                             stage="source", outcome="received")
        skipped = int(redelivered) - (len(rows) - rows_at_kill)
        print(f"round {round_}: sent {sent}, PUBACKed {len(acked)}, rows {len(rows)}, missing {len(missing)},"
              f" redelivered {int(redelivered)}, already committed {skipped}")
        assert ok and not missing, f"missing {len(missing)}, e.g. {sorted(missing)[:5]}\n{s.log()}"
    # Exactly once: the key made every redelivery a no-op (no unique violations either).
    assert count(conn, "k") == conn.execute("SELECT count(DISTINCT (device, seq)) FROM k").fetchone()[0]
    assert not dead.exists() or dead.read_text() == "", read_lines(dead)[:3]
    # Nothing that was never sent.
    assert conn.execute("SELECT count(*) FROM k WHERE device NOT IN ('r0', 'r1', 'r2') OR seq >= 20000").fetchone()[0] == 0


@pytest.mark.parametrize(
    "sink,key",
    [
        ('{ type = "postgres", url = "postgres://u@127.0.0.1:1/db", table = "' + "t" * 64 + '" }',
         "pipelines[0].sink.table"),
        ('{ type = "postgres", url = "postgres://u@127.0.0.1:1/db", table = "" }', "pipelines[0].sink.table"),
        ('{ type = "postgres", url = "mysql://u@h/db", table = "t" }', "pipelines[0].sink.url"),
        ('{ type = "postgres", url = "postgres://u@h/db", table = "t", columns = ["a", "a"] }',
         "pipelines[0].sink.columns[1]"),
        ('{ type = "postgres", url = "postgres://u@h/db", table = "t", columns = ["a"], key = ["b"] }',
         "pipelines[0].sink.key[0]"),
        ('{ type = "postgres", url = "postgres://u@h/db", table = "t", columns = ["' + "c" * 64 + '"] }',
         "pipelines[0].sink.columns[0]"),
        ('{ type = "postgres", url = "postgres://u@h/db", table = "t", columns = ['
         + ", ".join(f'"c{i}"' for i in range(1601)) + "] }", "pipelines[0].sink.columns"),
        ('{ type = "postgres", url = "postgres://u@h/db" }', "table"),
    ],
    ids=["table-64-bytes", "table-empty", "url-scheme", "columns-twice", "key-not-a-column",
         "column-64-bytes", "columns-1601", "no-table"],
)
def test_bad_postgres_sink_config_stops_startup_naming_the_key(tmp_path, sink, key):
    out = refused_startup(
        tmp_path,
        "[[pipelines]]\nname = \"p\"\nsql = \"SELECT * FROM 'a'\"\n"
        f"sink = {sink}\ndead_letter = {{ path = \"d.jsonl\" }}\n",
    )
    assert key in out, f"error output should name {key!r}: {out!r}"
    assert "postgres://u@h" not in out or "url" not in key


def test_missing_database_or_key_index_is_retried_not_dead_lettered(serve, postgres, tmp_path):
    """Not a record's fault (no database yet, no unique index for the key): the batch is
    retried with backoff and arrives once the database is fixed; nothing is dead-lettered."""
    name = unique("later")
    url = postgres.url(name)
    dead = tmp_path / "dead.jsonl"
    sql = "SELECT payload.seq AS seq FROM 'pgl/+/in'"
    s = serve(pipeline_toml("later", sql, pg_sink(url, "r", key=["seq"]), dead, max_age_ms=20))
    with Client(s.port) as c:
        for i in range(5):
            assert c.publish(f"pgl/d{i}/in", json.dumps({"seq": i}), qos=1) == 0

    def retries() -> float:
        return metric(metrics(s.api_port), "myriad_pipeline_retries_total", pipeline="later")

    assert wait_until(lambda: retries() >= 1, 10), s.log()
    postgres.create_db(name)
    with postgres.connect(name) as conn:
        conn.execute("CREATE TABLE r (seq int8)")  # no unique index: ON CONFLICT (seq) fails
        before = retries()
        assert wait_until(lambda: retries() >= before + 2, 15), s.log()
        assert count(conn, "r") == 0
        assert "no unique or exclusion constraint" in s.log()
        conn.execute("CREATE UNIQUE INDEX ON r (seq)")
        assert wait_until(lambda: count(conn, "r") == 5, 15), s.log()
        assert sorted(r[0] for r in conn.execute("SELECT seq FROM r")) == [0, 1, 2, 3, 4]
    assert not dead.exists() or dead.read_text() == ""
    assert metric(metrics(s.api_port), "myriad_pipeline_lag_records", pipeline="later") == 0
