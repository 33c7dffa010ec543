"""Pipelines: what records carry from MQTT 5 (user properties, the trace context), a span per
batch exported over OTLP (a collector in the test), the file sink's CSV format and rotation
by age, and a dead-letter file whose writes fail (ENOSPC from /dev/full)."""

from __future__ import annotations

import base64
import csv
import json
import os
import time
from pathlib import Path

import pytest

from helpers import V311, Client, wait_until
from test_observability import Collector
from test_pipelines import (
    Serve, file_sink, metric, metrics, pipeline_toml, read_lines, refused_startup, serve,  # noqa: F401
    toml_str, wait_lines,
)

pytestmark = [pytest.mark.myriad_only, pytest.mark.timeout(120)]

SAMPLED = ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")
SAMPLED2 = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")


# --- a minimal OTLP/protobuf reader (ExportTraceServiceRequest -> spans) ---------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, value) of each field of one message, in order (no recursion)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, value


def _any_value(buf: bytes):
    for number, value in _fields(buf):
        if number == 1:
            return value.decode()
        if number in (2, 3):
            return value
    return None


def _span(buf: bytes) -> dict:
    span: dict = {"attributes": {}, "links": [], "parent_span_id": ""}
    for number, value in _fields(buf):
        if number == 1:
            span["trace_id"] = value.hex()
        elif number == 2:
            span["span_id"] = value.hex()
        elif number == 4:
            span["parent_span_id"] = value.hex()
        elif number == 5:
            span["name"] = value.decode()
        elif number == 9:
            kv = dict(_fields(value))
            span["attributes"][kv[1].decode()] = _any_value(kv.get(2, b""))
        elif number == 13:
            link = dict(_fields(value))
            span["links"].append((link[1].hex(), link[2].hex()))
    return span


def otlp_spans(bodies: list[bytes]) -> list[dict]:
    """Every span in OTLP/HTTP protobuf export bodies."""
    spans = []
    for body in bodies:
        for n1, resource_spans in _fields(body):
            if n1 != 1:
                continue
            for n2, scope_spans in _fields(resource_spans):
                if n2 != 2:
                    continue
                for n3, span in _fields(scope_spans):
                    if n3 == 2:
                        spans.append(_span(span))
    return spans


# --- tests ------------------------------------------------------------------------------------

def test_rules_read_mqtt5_user_properties(serve, tmp_path):
    """`get_user_property(name)` sees the publisher's MQTT 5 user properties; a 3.1.1
    message has none (the field is left out)."""
    out, dead = tmp_path / "up.jsonl", tmp_path / "up.dead.jsonl"
    sql = "SELECT payload.t AS t, get_user_property('site') AS site FROM 'up/+/in'"
    s = serve(pipeline_toml("up", sql, file_sink(out), dead))
    with Client(s.port) as c:
        assert c.publish("up/d1/in", json.dumps({"t": 1}), qos=1,
                         props={"UserProperty": [("site", "north"), ("site", "south")]}) == 0
    with Client(s.port, version=V311) as c:
        assert c.publish("up/d2/in", json.dumps({"t": 2}), qos=1) == 0
    assert wait_lines(out, 2) == [{"t": 1, "site": "north"}, {"t": 2}]


def test_batch_spans_continue_the_traces_of_their_records_over_otlp(tmp_path):
    """With `tracing.otlp_endpoint`, each batch commit is a `pipeline.batch` span: its parent
    is the broker's `mqtt.route` span of the first sampled record, the other records' route
    spans are links, and it names the pipeline, the sink, the outcome and the record count."""
    collector = Collector()
    out, dead = tmp_path / "tr.jsonl", tmp_path / "tr.dead.jsonl"
    sql = "SELECT payload.seq AS seq FROM 'tr/+/in'"
    config = (
        pipeline_toml("tr", sql, file_sink(out), dead, max_age_ms=60_000).replace(
            "max_records = 500", "max_records = 3")
        + f"[tracing]\notlp_endpoint = {toml_str(f'http://127.0.0.1:{collector.port}')}\n"
        + "service_name = \"myriad-pipeline-test\"\n"
    )
    s = Serve(tmp_path / "s", config).start()
    try:
        with Client(s.port) as c:
            assert c.publish("tr/d1/in", json.dumps({"seq": 1}), qos=1,
                             props={"UserProperty": [("traceparent", f"00-{SAMPLED[0]}-{SAMPLED[1]}-01")]}) == 0
            assert c.publish("tr/d2/in", json.dumps({"seq": 2}), qos=1) == 0
            assert c.publish("tr/d3/in", json.dumps({"seq": 3}), qos=1,
                             props={"UserProperty": [("traceparent", f"00-{SAMPLED2[0]}-{SAMPLED2[1]}-01")]}) == 0
        assert wait_lines(out, 3) == [{"seq": 1}, {"seq": 2}, {"seq": 3}]
    finally:
        assert s.stop() == 0  # flushes the exporter
    try:
        def batch_spans() -> list[dict]:
            return [x for x in otlp_spans([b for _, _, b in collector.received]) if x["name"] == "pipeline.batch"]

        assert wait_until(lambda: batch_spans(), timeout=10), collector.received
        spans = otlp_spans([b for _, _, b in collector.received])
        routes = {x["trace_id"]: x for x in spans if x["name"] == "mqtt.route"}
        assert SAMPLED[0] in routes and SAMPLED2[0] in routes, spans
        (batch,) = batch_spans()
        # Child of the first record's route span, linked to the third's.
        assert batch["trace_id"] == SAMPLED[0], batch
        assert batch["parent_span_id"] == routes[SAMPLED[0]]["span_id"], batch
        assert batch["links"] == [(SAMPLED2[0], routes[SAMPLED2[0]]["span_id"])], batch
        attrs = batch["attributes"]
        assert attrs["myriad.pipeline.name"] == "tr" and attrs["myriad.pipeline.sink"] == "file", attrs
        assert attrs["myriad.pipeline.outcome"] == "committed", attrs
        assert attrs["messaging.batch.message_count"] == 3 and attrs["myriad.pipeline.attempts"] == 1, attrs
    finally:
        collector.close()


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_csv_file_sink_writes_a_header_per_file_and_rotates_by_age(serve, tmp_path):
    """`format = "csv"`: one row per record in the configured `columns` (RFC 4180 quoting,
    missing fields empty), under a header line in every file; `max_file_age_ms` rotates the
    file at the first batch after it has been written for that long."""
    out, dead = tmp_path / "out" / "rows.csv", tmp_path / "rows.dead.jsonl"
    sink = (f"{{ type = \"file\", path = {toml_str(str(out))}, format = \"csv\", "
            "columns = [\"device\", \"t\", \"note\"], max_file_age_ms = 1000 }")
    sql = "SELECT topic(2) AS device, payload.t AS t, payload.note AS note FROM 'csv/+/in'"
    s = serve(pipeline_toml("rows", sql, sink, dead))
    with Client(s.port) as c:
        assert c.publish("csv/d1/in", json.dumps({"t": 21.5, "note": 'say "hi", then go'}), qos=1) == 0
        assert c.publish("csv/d2/in", json.dumps({"t": 3}), qos=1) == 0
    assert wait_until(lambda: out.exists() and len(read_csv(out)) == 3, 10)
    assert read_csv(out) == [["device", "t", "note"], ["d1", "21.5", 'say "hi", then go'], ["d2", "3", ""]]
    time.sleep(1.2)
    with Client(s.port) as c:
        assert c.publish("csv/d3/in", json.dumps({"t": 4, "note": "x"}), qos=1) == 0
    rotated = out.with_name("rows.1.csv")
    assert wait_until(lambda: rotated.exists() and out.exists() and len(read_csv(out)) == 2, 10)
    assert read_csv(rotated) == [["device", "t", "note"], ["d1", "21.5", 'say "hi", then go'], ["d2", "3", ""]]
    assert read_csv(out) == [["device", "t", "note"], ["d3", "4", "x"]]
    # Within the age: no rotation.
    with Client(s.port) as c:
        assert c.publish("csv/d4/in", json.dumps({"t": 5}), qos=1) == 0
    assert wait_until(lambda: len(read_csv(out)) == 3, 10)
    assert not out.with_name("rows.2.csv").exists()


@pytest.mark.parametrize(
    "sink, key",
    [
        ('{ type = "file", path = "o.csv", format = "csv" }', "pipelines[0].sink.columns"),
        ('{ type = "file", path = "o.jsonl", columns = ["a"] }', "pipelines[0].sink.columns"),
        ('{ type = "file", path = "o.csv", format = "csv", columns = ["a", "a"] }', "pipelines[0].sink.columns[1]"),
        ('{ type = "file", path = "o.jsonl", max_file_age_ms = 999 }', "pipelines[0].sink.max_file_age_ms"),
        ('{ type = "file", path = "o.jsonl", max_file_age_ms = 2592000001 }', "pipelines[0].sink.max_file_age_ms"),
        ('{ type = "file", path = "o.csv", format = "xml", columns = ["a"] }', "xml"),
    ],
    ids=["csv-no-columns", "columns-without-csv", "column-twice", "age-short", "age-long", "format"],
)
def test_bad_file_sink_format_or_age_stops_startup_naming_the_key(tmp_path, sink, key):
    entry = f'name = "p"\nsql = "SELECT * FROM \'a\'"\nsink = {sink}\ndead_letter = {{ path = "d.jsonl" }}\n'
    out = refused_startup(tmp_path, "[[pipelines]]\n" + entry)
    assert key in out, f"error output should name {key!r}: {out!r}"


def test_csv_columns_at_the_limit_start_and_one_past_is_refused(tmp_path):
    def entry(n: int) -> str:
        columns = ", ".join(f'"c{i}"' for i in range(n))
        return ('[[pipelines]]\nname = "p"\nsql = "SELECT * FROM \'a\'"\n'
                f'sink = {{ type = "file", path = "o.csv", format = "csv", columns = [{columns}] }}\n'
                'dead_letter = { path = "d.jsonl" }\n')

    out = refused_startup(tmp_path, entry(257))
    assert "pipelines[0].sink.columns" in out and "256" in out, out
    s = Serve(tmp_path / "ok", entry(256)).start()
    assert s.stop() == 0


def deep_payload(seq: int) -> str:
    return '{"seq": %d, "x": %s1%s}' % (seq, "[" * 100, "]" * 100)


def test_dead_letter_writes_failing_with_enospc_lose_nothing(tmp_path):
    """The dead-letter file is a symlink to /dev/full (every write fails with ENOSPC): the
    pipeline retries (counted, shown in the status), acknowledges nothing from the first
    dead letter on (a restart while the fault holds gets the same messages again), and once
    the file is writable every failed record is dead-lettered and the records behind them
    reach the sink."""
    out, dead = tmp_path / "df.jsonl", tmp_path / "dl" / "dead.jsonl"
    dead.parent.mkdir()
    os.symlink("/dev/full", dead)
    sql = "SELECT payload.seq AS seq FROM 'df/+/in'"
    s = Serve(tmp_path / "s", pipeline_toml("df", sql, file_sink(out), dead, max_age_ms=20, in_flight=100)).start()
    try:
        with Client(s.port) as c:
            for seq in range(5):
                assert c.publish(f"df/d{seq}/in", json.dumps({"seq": seq}), qos=1) == 0
        assert wait_lines(out, 5) == [{"seq": n} for n in range(5)]
        # Three records that fail the rule (JSON nested past 64 levels), then two good ones.
        with Client(s.port) as c:
            for seq in range(5, 8):
                assert c.publish(f"df/d{seq}/in", deep_payload(seq), qos=1) == 0
            for seq in range(8, 10):
                assert c.publish(f"df/d{seq}/in", json.dumps({"seq": seq}), qos=1) == 0
        api = s.api()

        def status() -> dict:
            return api.ok("GET", "/api/v1/pipelines/df")

        assert wait_until(lambda: status()["retries"] >= 3 and status()["lag"] == 5, 15), status()
        st = status()
        assert st["state"] == "retrying", st
        assert "dead-letter write" in st["last_error"] and "No space left on device" in st["last_error"], st
        # Nothing past the failing dead letter is acknowledged or committed.
        assert st["lag"] == 5 and st["records"]["committed"] == 5 and st["dead_letters"] == 0, st
        assert metric(metrics(s), "myriad_pipeline_retries_total", pipeline="df") >= 3
        assert len(read_lines(out)) == 5

        # A restart while the fault holds: the five come back (they were never acknowledged).
        assert s.stop() == 0
        s.start()
        api = s.api()
        assert wait_until(lambda: status()["retries"] >= 1 and status()["lag"] == 5, 15), status()
        st = status()
        assert st["records"]["received"] == 5 and st["records"]["committed"] == 0, st

        # The fault goes away: everything is dead-lettered or committed, once.
        dead.unlink()
        assert wait_until(lambda: status()["lag"] == 0, 15), status()
        letters = read_lines(dead)
        assert [json.loads(base64.b64decode(x["payload"]))["seq"] for x in letters] == [5, 6, 7], letters
        assert all(x["reason"].startswith("rule: payload") for x in letters), letters
        assert read_lines(out) == [{"seq": n} for n in (0, 1, 2, 3, 4, 8, 9)]
        st = status()
        assert st["state"] == "running" and st["dead_letters"] == 3, st
    finally:
        s.stop()
