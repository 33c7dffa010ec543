"""The files source of `[[pipelines]]` (`source = { type = "files", ... }`): JSONL and CSV
files in a watched directory become records with the topic `files/{name}`; whole lines
only (a file may grow), bad lines dead-lettered, the checkpoint survives kill -9, done files
deleted on request, bad source config named."""

from __future__ import annotations

import base64
import json
import signal
import time
from pathlib import Path

import pytest

import test_pipelines
from helpers import broker_kind
from test_pipelines import file_sink, read_lines, refused_startup, toml_str, wait_lines

serve = test_pipelines.serve  # the fixture: `myriad serve` with a config text

pytestmark = [
    pytest.mark.myriad_only,
    pytest.mark.timeout(120),
    pytest.mark.skipif(broker_kind() == "mosquitto", reason="Myriad's pipelines"),
]


def files_pipeline(name: str, sql: str, inbox: Path, out: Path, dead: Path, fmt: str = "jsonl",
                   extra: str = "", in_flight: int = 1000, poll_ms: int = 50) -> str:
    return (
        "[[pipelines]]\n"
        f"name = {toml_str(name)}\n"
        f"sql = {toml_str(sql)}\n"
        "batch = { max_records = 100, max_age_ms = 20 }\n"
        f"in_flight = {in_flight}\n"
        f"source = {{ type = \"files\", dir = {toml_str(str(inbox))}, format = \"{fmt}\", poll_ms = {poll_ms}{extra} }}\n"
        f"sink = {file_sink(out)}\n"
        f"dead_letter = {{ path = {toml_str(str(dead))} }}\n"
    )


def test_jsonl_files_whole_lines_growing_and_new_files(serve, tmp_path):
    inbox, out, dead = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    inbox.mkdir()
    (inbox / "a.jsonl").write_text("".join(json.dumps({"seq": i}) + "\n" for i in range(3)))
    (inbox / "b.jsonl").write_text(json.dumps({"seq": 3}) + "\n" + json.dumps({"seq": 4}) + "\n" + '{"seq":')
    (inbox / ".hidden").write_text(json.dumps({"seq": 99}) + "\n")
    sql = "SELECT payload.seq AS seq, topic(2) AS file FROM 'files/+'"
    serve(files_pipeline("fj", sql, inbox, out, dead))
    got = wait_lines(out, 5)
    assert sorted((r["seq"], r["file"]) for r in got) == [
        (0, "a.jsonl"), (1, "a.jsonl"), (2, "a.jsonl"), (3, "b.jsonl"), (4, "b.jsonl")]
    # The partial last line is read once its newline is written; a grown file and a new one too.
    with open(inbox / "b.jsonl", "a") as f:
        f.write(" 5}\n" + json.dumps({"seq": 6}) + "\n")
    (inbox / "c.jsonl").write_text(json.dumps({"seq": 7}) + "\n")
    got = wait_lines(out, 8)
    time.sleep(0.5)
    assert sorted(r["seq"] for r in read_lines(out)) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert not dead.exists() or dead.read_text() == ""
    # Replaced by a shorter file under the same name: read from its start.
    (inbox / "a.jsonl").write_text(json.dumps({"seq": 8}) + "\n")
    wait_lines(out, 9)
    time.sleep(0.3)
    assert sorted(r["seq"] for r in read_lines(out)) == list(range(9))


def test_csv_rows_become_objects_and_bad_lines_are_dead_lettered(serve, tmp_path):
    inbox, out, dead = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    inbox.mkdir()
    long = "x" * 300
    (inbox / "r.csv").write_text(
        "device,temp,note\n"
        "d1,21.5,\"warm, dry\"\n"
        "d2,19\n"
        f"d3,30,{long}\n"
        "d4,-4,cold\n"
    )
    sql = "SELECT device, temp, note FROM 'files/+' WHERE temp > 0"
    serve(files_pipeline("fc", sql, inbox, out, dead, fmt="csv", extra=", max_line_bytes = 200"))
    letters = wait_lines(dead, 2)
    got = wait_lines(out, 1)
    time.sleep(0.5)
    assert read_lines(out) == [{"device": "d1", "temp": 21.5, "note": "warm, dry"}]
    reasons = sorted(x["reason"] for x in letters)
    assert reasons[0].startswith("csv: 2 fields, the header has 3"), reasons
    assert reasons[1] == "line longer than 200 bytes", reasons
    assert all(x["topic"] == "files/r.csv" for x in letters)
    cut = [x for x in letters if x["reason"].startswith("line longer")][0]
    assert len(base64.b64decode(cut["payload"])) == 200
    assert got


def test_checkpoint_survives_kill9_and_done_files_are_deleted(serve, tmp_path):
    inbox, out, dead = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    inbox.mkdir()
    # Enough lines that the kill lands mid-stream even when the test process is descheduled
    # for a second or two on a loaded machine (60,000 lines were once all done first).
    per_file = 100_000
    total = 3 * per_file
    for part in range(3):
        (inbox / f"p{part}.jsonl").write_text(
            "".join(json.dumps({"seq": i}) + "\n" for i in range(part * per_file, (part + 1) * per_file)))
    sql = "SELECT payload.seq AS seq FROM 'files/+'"
    s = serve(files_pipeline("fk", sql, inbox, out, dead, in_flight=200))
    wait_until_some = time.monotonic() + 20
    while time.monotonic() < wait_until_some and (not out.exists() or out.stat().st_size < 200_000):
        time.sleep(0.005)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(10)
    first = len(read_lines(out))
    assert 10000 <= first < total, first
    # What the checkpoint says is done: per file, the byte offset of the first line not done.
    checkpoint = s.workdir / "data" / "pipelines" / "fk.checkpoint"
    offsets = json.loads(checkpoint.read_text()) if checkpoint.exists() else {}

    # The byte offset just past each line in its file.
    line_end: list[int] = []
    for seq in range(total):
        start = 0 if seq % per_file == 0 else line_end[-1]
        line_end.append(start + len(json.dumps({"seq": seq}) + "\n"))

    def done(seq: int) -> bool:
        return line_end[seq] <= offsets.get(f"p{seq // per_file}.jsonl", 0)

    s.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len({r["seq"] for r in read_lines(out)}) < total:
        time.sleep(0.2)
    seqs = [r["seq"] for r in read_lines(out)]
    assert sorted(set(seqs)) == list(range(total))
    # The restart reads again exactly what the checkpoint did not cover: no line it covers
    # repeats, and the checkpoint covered some of the first run (it is written every 200 ms).
    before_kill = set(seqs[:first])
    repeated = [seq for seq in seqs[first:] if seq in before_kill]
    print(f"killed after {first} lines; {len(repeated)} read again; checkpoint {offsets}")
    assert offsets, "no checkpoint written before the kill"
    assert not [seq for seq in repeated if done(seq)], "lines the checkpoint covers were read again"
    assert len(repeated) < first, (len(repeated), first)
    s.stop()
    # Again with delete_done: every file goes once all of it is done.
    out2 = tmp_path / "out2.jsonl"
    inbox2 = tmp_path / "in2"
    inbox2.mkdir()
    for part in range(2):
        (inbox2 / f"q{part}.jsonl").write_text(json.dumps({"seq": part}) + "\n")
    serve(files_pipeline("fd", sql, inbox2, out2, tmp_path / "dead2.jsonl", extra=", delete_done = true"))
    assert sorted(r["seq"] for r in wait_lines(out2, 2)) == [0, 1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(inbox2.iterdir()):
        time.sleep(0.05)
    assert list(inbox2.iterdir()) == []


@pytest.mark.parametrize("poll_ms,fmt,extra,key", [
    (5, "jsonl", "", "pipelines[0].source.poll_ms"),
    (3_600_001, "jsonl", "", "pipelines[0].source.poll_ms"),
    (50, "jsonl", ", max_line_bytes = 0", "pipelines[0].source.max_line_bytes"),
    (50, "jsonl", ", max_line_bytes = 16777217", "pipelines[0].source.max_line_bytes"),
    (50, "xml", "", "xml"),
], ids=["poll-short", "poll-long", "line-bytes-0", "line-bytes-over", "format"])
def test_bad_files_source_config_is_named(tmp_path, poll_ms, fmt, extra, key):
    text = files_pipeline("p", "SELECT * FROM 'files/+'", tmp_path, tmp_path / "o.jsonl",
                          tmp_path / "d.jsonl", fmt=fmt, extra=extra, poll_ms=poll_ms)
    out = refused_startup(tmp_path, text)
    assert key in out, out
