"""Data pipelines run by `myriad serve` (`[[pipelines]]`): the example rule into a JSONL
file, MQTT republish, dead letters, at-least-once across kill -9, bad config named."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from helpers import API_RE, HOST, Api, Client, broker_kind, myriad_bin, unique, wait_until

pytestmark = [
    pytest.mark.myriad_only,
    pytest.mark.timeout(120),
    pytest.mark.skipif(broker_kind() == "mosquitto", reason="Myriad's pipelines"),
]

LISTEN_RE = re.compile(r"^MQTT listening on 127\.0\.0\.1:(\d+)\s*$")
SQL = "SELECT payload.temp AS t, topic(2) AS device FROM 'devices/+/telemetry' WHERE payload.temp > 30"


def toml_str(s: str) -> str:
    return json.dumps(s)


def pipeline_toml(name: str, sql: str, sink: str, dead: Path, max_age_ms: int = 50, in_flight: int = 1000) -> str:
    return (
        "[[pipelines]]\n"
        f"name = {toml_str(name)}\n"
        f"sql = {toml_str(sql)}\n"
        f"batch = {{ max_records = 500, max_age_ms = {max_age_ms} }}\n"
        f"in_flight = {in_flight}\n"
        f"sink = {sink}\n"
        f"dead_letter = {{ path = {toml_str(str(dead))} }}\n"
    )


def file_sink(path: Path) -> str:
    return f"{{ type = \"file\", path = {toml_str(str(path))}, max_file_bytes = 104857600, keep_files = 10 }}"


class Serve:
    """`myriad serve` with a config text and a data dir; stopped (or killed) by its PID."""

    def __init__(self, workdir: Path, config: str):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "myriad.toml"
        self.config.write_text(
            config + f"\n[store]\ndata_dir = {toml_str(str(workdir / 'data'))}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.api_port: int | None = None
        self.starts = 0

    def start(self) -> "Serve":
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
        log = open(self.workdir / f"serve{self.starts}.log", "wb")
        self.starts += 1
        self.proc = subprocess.Popen(
            [str(myriad_bin()), "serve", "--config", str(self.config), "--listen", f"{HOST}:0",
             "--api-listen", f"{HOST}:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, cwd=self.workdir, env=env,
        )
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                api = API_RE.match(raw.decode(errors="replace"))
                if api:
                    self.api_port = int(api.group(1))
                m = LISTEN_RE.match(raw.decode(errors="replace"))
                if m and not found.is_set():
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        found.wait(20)
        assert self.port is not None, f"no listening line; exit={self.proc.poll()}\n{self.log()}"
        # The pipelines subscribe as the broker starts; give them a moment.
        time.sleep(0.3)
        return self

    def api(self) -> Api:
        token = (self.workdir / "data" / "api-token").read_text().strip()
        assert self.api_port is not None
        return Api(self.api_port, token)

    def log(self) -> str:
        return "\n".join(
            (self.workdir / f"serve{i}.log").read_text(errors="replace")[-4000:] for i in range(self.starts)
        )

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.port = None

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


@pytest.fixture
def serve(tmp_path):
    started: list[Serve] = []

    def make(config: str) -> Serve:
        s = Serve(tmp_path / f"s{len(started)}", config)
        started.append(s)
        return s.start()

    yield make
    for s in started:
        s.stop()


def read_lines(path: Path) -> list[dict]:
    out = []
    rotated = sorted(
        (p for p in path.parent.glob(f"{path.stem}.*{path.suffix}")
         if p.name[len(path.stem) + 1:-len(path.suffix)].isdigit()),
        key=lambda p: -int(p.name[len(path.stem) + 1:-len(path.suffix)]),
    )
    for p in [*rotated, path]:
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            out.append(json.loads(line))
    return out


def metrics(server: "Serve | int") -> list[str]:
    """The `/metrics` lines of a server (a Serve or its API port)."""
    port = server if isinstance(server, int) else server.api_port
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as resp:
        return resp.read().decode().splitlines()


def metric(lines: list[str], name: str, **labels: str) -> float:
    """The value of the first sample of `name` with these labels in `lines`; 0 if none."""
    for line in lines:
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def refused_startup(tmp_path: Path, config: str) -> str:
    """Runs `myriad serve` on `config` (in tmp_path), which must refuse to start: its output."""
    cfg = tmp_path / "myriad.toml"
    cfg.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    p = subprocess.run(
        [str(myriad_bin()), "serve", "--config", str(cfg), "--listen", f"{HOST}:0", "--api-listen", f"{HOST}:0"],
        stdin=subprocess.DEVNULL, capture_output=True, cwd=tmp_path, env=env, timeout=15,
    )
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode != 0
    assert "MQTT listening on" not in out
    return out


def wait_lines(path: Path, n: int, timeout: float = 10) -> list[dict]:
    wait_until(lambda: path.exists() and len(read_lines(path)) >= n, timeout)
    return read_lines(path) if path.exists() else []


def test_example_rule_writes_selected_fields_above_threshold(serve, tmp_path):
    out, dead = tmp_path / "out" / "hot.jsonl", tmp_path / "out" / "hot.dead.jsonl"
    s = serve(pipeline_toml("hot", SQL, file_sink(out), dead))
    # Registered devices publishing their own telemetry (stored, then routed).
    api = s.api()
    devices = [api.create_device("d") for _ in range(3)]
    readings = [(0, 10), (0, 35), (1, 30), (1, 41), (2, 99.5)]
    for i, temp in readings:
        dev, pw = devices[i]
        with Client(s.port, client_id=dev, username=dev, password=pw) as c:
            assert c.publish(f"devices/{dev}/telemetry", json.dumps({"temp": temp, "other": 1}), qos=1) == 0
    with Client(s.port) as c:
        c.publish("elsewhere/d9/telemetry", json.dumps({"temp": 99}), qos=1)
    wait_lines(out, 3)
    time.sleep(0.5)
    got = read_lines(out)
    names = [d for d, _ in devices]
    assert got == [{"t": 35, "device": names[0]}, {"t": 41, "device": names[1]},
                   {"t": 99.5, "device": names[2]}], got
    assert not dead.exists() or dead.read_text() == ""
    lines = metrics(s)
    assert metric(lines, "myriad_pipeline_records_total", pipeline="hot", stage="rule", outcome="passed") == 3
    assert metric(lines, "myriad_pipeline_records_total", pipeline="hot", stage="rule", outcome="filtered") == 2
    assert metric(lines, "myriad_pipeline_records_total", pipeline="hot", stage="sink", outcome="committed") == 3
    assert metric(lines, "myriad_pipeline_batches_total", pipeline="hot") >= 1
    assert metric(lines, "myriad_pipeline_lag_records", pipeline="hot") == 0


SENSORS = SQL.replace("devices/", "sensors/")


def test_mqtt_republish_sink_delivers_to_a_subscriber(serve, tmp_path):
    sink = '{ type = "mqtt", topic = "alerts/${device}" }'
    s = serve(pipeline_toml("alerts", SENSORS, sink, tmp_path / "dead.jsonl"))
    with Client(s.port) as sub, Client(s.port) as pub:
        sub.subscribe("alerts/#", qos=1)
        pub.publish("sensors/pump7/telemetry", json.dumps({"temp": 80}), qos=1)
        pub.publish("sensors/pump8/telemetry", json.dumps({"temp": 20}), qos=1)
        msg = sub.get(timeout=10)
        assert msg.topic == "alerts/pump7"
        assert json.loads(msg.payload) == {"t": 80, "device": "pump7"}
        sub.expect_none(wait=0.7)


def test_mqtt_republish_sink_sends_batches_whole_and_refuses_a_loop(serve, tmp_path):
    # FROM 'sensors/#' matches both the input and the output topic of the second record kind:
    # `sensors/loop/...` outputs would be fed back to the pipeline; they are dead-lettered.
    sql = "SELECT payload.n AS n, topic(2) AS kind FROM 'sensors/#'"
    sink = '{ type = "mqtt", topic = "${kind}/out/${n}" }'
    dead = tmp_path / "dead.jsonl"
    s = serve(pipeline_toml("fanout", sql, sink, dead, max_age_ms=100))
    n = 2000
    with Client(s.port) as sub, Client(s.port) as pub:
        sub.subscribe("alerts/out/#", qos=1)
        sub.subscribe("sensors/out/#", qos=1)
        for i in range(n):
            pub.publish(f"sensors/alerts/{i}", json.dumps({"n": i}), qos=1, wait=False)
        pub.publish("sensors/sensors/x", json.dumps({"n": "looped"}), qos=1)
        got = sub.get_many(n, timeout=30)
        assert sorted(int(m.topic.rsplit("/", 1)[1]) for m in got) == list(range(n))
        assert all(m.topic.startswith("alerts/out/") for m in got)
        letters = wait_lines(dead, 1)
        assert len(letters) == 1, letters
        assert letters[0]["topic"] == "sensors/sensors/x"
        assert "would loop" in letters[0]["reason"], letters[0]
        sub.expect_none(wait=0.5)


def test_failed_evaluation_goes_to_the_dead_letter_file(serve, tmp_path):
    out, dead = tmp_path / "hot.jsonl", tmp_path / "hot.dead.jsonl"
    s = serve(pipeline_toml("dl", SENSORS, file_sink(out), dead))
    deep = '{"temp": 50, "x": ' + "[" * 100 + "]" * 100 + "}"
    with Client(s.port) as c:
        c.publish("sensors/bad/telemetry", deep, qos=1)
        c.publish("sensors/good/telemetry", json.dumps({"temp": 50}), qos=1)
    assert wait_lines(out, 1) == [{"t": 50, "device": "good"}]
    letters = wait_lines(dead, 1)
    assert len(letters) == 1, letters
    letter = letters[0]
    assert letter["topic"] == "sensors/bad/telemetry"
    assert base64.b64decode(letter["payload"]).decode() == deep
    assert "payload" in letter["reason"] and "deep" in letter["reason"].lower(), letter
    assert isinstance(letter["time"], int)


def test_at_least_once_across_kill9(serve, tmp_path):
    out, dead = tmp_path / "all.jsonl", tmp_path / "all.dead.jsonl"
    sql = "SELECT payload.seq AS seq FROM 'data/+/in' WHERE payload.temp > 30"
    s = serve(pipeline_toml("all", sql, file_sink(out), dead, max_age_ms=20, in_flight=200))
    acked_mids: list[int] = []  # appended by paho's thread (list.append is atomic)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("pub"), protocol=mqtt.MQTTv5,
                    reconnect_on_failure=False)
    c.max_inflight_messages_set(20)
    c.max_queued_messages_set(0)
    mids: dict[int, int] = {}

    def on_publish(client, userdata, mid, reason_code, properties):
        if not reason_code.is_failure:
            acked_mids.append(mid)

    c.on_publish = on_publish
    c.connect(HOST, s.port)
    c.loop_start()
    n = 20_000  # more than the run can take in the 1 s before the kill
    killer = threading.Timer(1.0, s.kill9)
    killer.start()
    sent = 0
    for i in range(n):
        if s.proc.poll() is not None:
            break
        info = c.publish(f"data/{i % 50}/in", json.dumps({"temp": 40, "seq": i}), qos=1)
        mids[info.mid] = i
        sent += 1
        while sent - len(acked_mids) >= 20 and s.proc.poll() is None:
            time.sleep(0.001)
    killer.join()
    time.sleep(0.3)
    c.loop_stop()
    c.disconnect()
    acked_now = {mids[m] for m in list(acked_mids)}
    assert s.proc.poll() is not None, "the server was not killed mid-stream"
    assert 0 < len(acked_now) < n, f"acked {len(acked_now)} of {n}: not mid-stream"
    s.start()
    ok = wait_until(lambda: acked_now <= {r["seq"] for r in read_lines(out)} if out.exists() else False, 30, 0.2)
    records = read_lines(out)
    seqs = [r["seq"] for r in records]
    missing = sorted(acked_now - set(seqs))
    dups = len(seqs) - len(set(seqs))
    print(f"sent {sent}, PUBACKed {len(acked_now)}, records {len(seqs)}, duplicates {dups}, missing {len(missing)}")
    assert ok and not missing, f"missing {len(missing)} acknowledged records, e.g. {missing[:10]}\n{s.log()}"


@pytest.mark.parametrize(
    "entry,key",
    [
        ('name = "Bad Name"\nsql = "SELECT * FROM \'a\'"\nsink = { type = "mqtt", topic = "x" }\ndead_letter = { path = "d.jsonl" }\n',
         "pipelines[0].name"),
        ('name = "p"\nsql = "SELEC * FROM \'a\'"\nsink = { type = "mqtt", topic = "x" }\ndead_letter = { path = "d.jsonl" }\n',
         "pipelines[0].sql"),
        ('name = "p"\nsql = "SELECT * FROM \'a\'"\nin_flight = 70000\nsink = { type = "mqtt", topic = "x" }\ndead_letter = { path = "d.jsonl" }\n',
         "pipelines[0].in_flight"),
        ('name = "p"\nsql = "SELECT * FROM \'a\'"\nbatch = { max_records = 0 }\nsink = { type = "mqtt", topic = "x" }\ndead_letter = { path = "d.jsonl" }\n',
         "pipelines[0].batch.max_records"),
        ('name = "p"\nsql = "SELECT * FROM \'a\'"\nsink = { type = "mqtt", topic = "a/+/${x}" }\ndead_letter = { path = "d.jsonl" }\n',
         "pipelines[0].sink.topic"),
        ('name = "p"\nsql = "SELECT * FROM \'a\'"\nsink = { type = "file", path = "o.jsonl", max_file_bytes = 4095 }\ndead_letter = { path = "d.jsonl" }\n',
         "pipelines[0].sink.max_file_bytes"),
        ('name = "p"\nsql = "SELECT * FROM \'a\'"\nsink = { type = "file", path = "o.jsonl" }\ndead_letter = { path = "d.jsonl", keep_files = 1001 }\n',
         "pipelines[0].dead_letter.keep_files"),
        ('name = "p"\nsql = "SELECT * FROM \'a\'"\nsink = { type = "kafka" }\ndead_letter = { path = "d.jsonl" }\n',
         "kafka"),
        ('name = "p"\nsql = "SELECT * FROM \'a\'"\nsink = { type = "mqtt", topic = "x" }\n', "dead_letter"),
        ('name = "p"\nsql = "SELECT * FROM \'a\'"\nsink = { type = "file", path = "o.jsonl" }\ndead_letter = { path = "o.jsonl" }\n',
         "pipelines[0].dead_letter.path"),
        ('name = "p"\nsql = "SELECT * FROM \'a\'"\nsink = { type = "file", path = "o.jsonl" }\ndead_letter = { path = "d.jsonl" }\ndeadline_ms = 99\n',
         "pipelines[0].deadline_ms"),
    ],
    ids=["name", "sql", "in-flight", "batch", "topic-template", "file-bytes", "keep-files", "sink-type",
         "no-dead-letter", "dead-letter-is-sink", "deadline-short"],
)
def test_bad_pipeline_config_stops_startup_naming_the_key(tmp_path, entry, key):
    out = refused_startup(tmp_path, "[[pipelines]]\n" + entry)
    assert key in out, f"error output should name {key!r}: {out!r}"


def test_duplicate_pipeline_names_are_refused(tmp_path):
    one = 'name = "p"\nsql = "SELECT * FROM \'a\'"\nsink = { type = "mqtt", topic = "x" }\n'
    cfg = tmp_path / "myriad.toml"
    cfg.write_text(
        "[[pipelines]]\n" + one + 'dead_letter = { path = "d1.jsonl" }\n'
        "[[pipelines]]\n" + one + 'dead_letter = { path = "d2.jsonl" }\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    p = subprocess.run(
        [str(myriad_bin()), "serve", "--config", str(cfg), "--listen", f"{HOST}:0", "--api-listen", f"{HOST}:0"],
        stdin=subprocess.DEVNULL, capture_output=True, cwd=tmp_path, env=env, timeout=15,
    )
    assert p.returncode != 0
    assert "pipelines[1].name" in p.stderr.decode() + p.stdout.decode()


def test_sigterm_drains_and_a_restart_redelivers_nothing_committed(serve, tmp_path):
    out, dead = tmp_path / "g.jsonl", tmp_path / "g.dead.jsonl"
    s = serve(pipeline_toml("g", SENSORS, file_sink(out), dead))
    with Client(s.port) as c:
        for i in range(200):
            c.publish(f"sensors/s{i % 7}/telemetry", json.dumps({"temp": 31 + i}), qos=1)
    assert len(wait_lines(out, 200)) == 200
    started = time.monotonic()
    assert s.stop() == 0
    assert time.monotonic() - started < 8, "stopping with a pipeline took too long"
    s.start()
    with Client(s.port) as c:
        c.publish("sensors/last/telemetry", json.dumps({"temp": 1000}), qos=1)
    got = wait_lines(out, 201)
    time.sleep(0.5)
    got = read_lines(out)
    assert len(got) == 201, f"{len(got)} records: redelivered after a clean stop"
    assert got[-1] == {"t": 1000, "device": "last"}


def test_sink_outage_past_the_network_queue_limit_loses_nothing(serve, tmp_path):
    """The sink fails (its directory is a file) while 1,500 messages are published: the
    pipeline's source session queues them within the internal limits, not the network
    clients' `mqtt.max_queued_messages` (50 here); when the sink works again all arrive."""
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    out, dead = blocked / "out.jsonl", tmp_path / "out.dead.jsonl"
    sql = "SELECT payload.seq AS seq FROM 'burst/+/in'"
    s = serve("[mqtt]\nmax_queued_messages = 50\n"
              + pipeline_toml("burst", sql, file_sink(out), dead, max_age_ms=20, in_flight=100))
    total = 1500
    with Client(s.port) as c:
        for seq in range(total):
            assert c.publish(f"burst/d{seq % 7}/in", json.dumps({"seq": seq}), qos=1) == 0
    time.sleep(1.0)  # retried writes fail meanwhile
    assert not out.exists()
    blocked.unlink()
    blocked.mkdir()
    got = wait_lines(out, total, timeout=60)
    assert sorted({r["seq"] for r in got}) == list(range(total))
    assert not dead.exists() or dead.read_text() == ""


def test_status_api_and_ctl_show_state_errors_and_counters(serve, tmp_path):
    """`GET /api/v1/pipelines[/{name}]` and `myriad ctl pipelines status`: a sink that fails
    shows as `retrying` with its error, retries and lag; once it works, `running` with every
    record committed and nothing in flight; an unknown name is a 404 naming it."""
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    out, dead = blocked / "out.jsonl", tmp_path / "st.dead.jsonl"
    sql = "SELECT payload.seq AS seq FROM 'st/+/in'"
    s = serve(pipeline_toml("st", sql, file_sink(out), dead, max_age_ms=20, in_flight=100))
    api = s.api()
    with Client(s.port) as c:
        for seq in range(20):
            assert c.publish(f"st/d{seq}/in", json.dumps({"seq": seq}), qos=1) == 0

    def status() -> dict:
        return api.ok("GET", "/api/v1/pipelines/st")

    wait_until(lambda: status()["retries"] >= 2, 15)
    st = status()
    assert st["state"] == "retrying" and st["sink"] == "file" and st["source"] == "st/+/in", st
    assert "file sink write" in st["last_error"] and st["last_error_ms"] > 0, st
    assert st["records"]["received"] == 20 and st["records"]["committed"] == 0 and st["lag"] == 20, st
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    ctl = [str(myriad_bin()), "ctl", "--api", f"http://{HOST}:{s.api_port}",
           "--token-file", str(s.workdir / "data" / "api-token"), "pipelines", "status"]
    table = subprocess.run(ctl, capture_output=True, text=True, timeout=30, env=env)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.startswith("NAME") and "LAST ERROR" in header, table.stdout
    assert row.split()[:4] == ["st", "retrying", "st/+/in", "file"], table.stdout

    blocked.unlink()
    blocked.mkdir()
    wait_until(lambda: status()["records"]["committed"] == 20, 15)
    st = status()
    assert st["state"] == "running" and st["lag"] == 0 and st["last_commit_ms"] >= st["last_error_ms"], st
    listed = api.ok("GET", "/api/v1/pipelines")["pipelines"]
    assert [p["name"] for p in listed] == ["st"]
    one = subprocess.run([*ctl, "st"], capture_output=True, text=True, timeout=30, env=env)
    assert one.returncode == 0 and json.loads(one.stdout)["records"]["committed"] == 20, one.stdout
    missing = subprocess.run([*ctl, "nope"], capture_output=True, text=True, timeout=30, env=env)
    assert missing.returncode == 1 and "nope" in missing.stderr, missing.stderr


def test_records_past_their_deadline_go_to_the_dead_letter_file(serve, tmp_path):
    """`deadline_ms`: while the sink fails, a batch older than the deadline goes to the
    dead-letter file with the reason and the sink's error, and is acknowledged (no lag); the
    records after the sink works again are committed."""
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    out, dead = blocked / "out.jsonl", tmp_path / "dl.dead.jsonl"
    sql = "SELECT payload.seq AS seq FROM 'dl/+/in'"
    s = serve(pipeline_toml("dl", sql, file_sink(out), dead, max_age_ms=20) + "deadline_ms = 500\n")
    with Client(s.port) as c:
        for seq in range(10):
            assert c.publish(f"dl/d{seq}/in", json.dumps({"seq": seq}), qos=1) == 0
    letters = wait_lines(dead, 10, timeout=15)
    assert sorted(json.loads(base64.b64decode(x["payload"]))["seq"] for x in letters) == list(range(10))
    assert all(x["reason"].startswith("deadline: not committed within 500 ms (file sink write:")
               for x in letters), letters[0]
    api = s.api()
    wait_until(lambda: api.ok("GET", "/api/v1/pipelines/dl")["lag"] == 0, 10)
    blocked.unlink()
    blocked.mkdir()
    with Client(s.port) as c:
        assert c.publish("dl/d1/in", json.dumps({"seq": 100}), qos=1) == 0
    assert wait_lines(out, 1) == [{"seq": 100}]
    assert len(read_lines(dead)) == 10
