"""Device telemetry end to end: paho 3.1.1 and 5.0 devices publish single and batch
`devices/{id}/telemetry` messages; `/metrics` counts the stored samples and the refused ones
by reason, by exactly what each message caused; a bad `[telemetry]` key stops start-up."""

from __future__ import annotations

import json
import time

import pytest

from helpers import V311, V5, Api, Broker, Client, wait_until
from test_observability import Scrape

pytestmark = pytest.mark.myriad_only

TOKEN = "telemetry-test-token-0123456789"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}

POINTS = "myriad_telemetry_points_total"
REFUSED = "myriad_telemetry_points_refused_total"


@pytest.fixture
def api(broker):
    return Api(broker.api_port, TOKEN)


def counts(broker) -> dict[str, float]:
    s = Scrape(broker.api_port)
    out = {"stored": s(POINTS)}
    for reason in ["bad_json", "bad_value", "bad_name", "bad_ts", "too_many_metrics",
                   "too_many_points", "kind_mismatch", "too_old"]:
        out[reason] = s(REFUSED, reason=reason)
    return out


def wait_delta(broker, before: dict[str, float], want: dict[str, float]) -> dict[str, float]:
    """Waits until every counter in `want` moved by exactly that much (others by 0)."""
    last: dict[str, float] = {}

    def done() -> bool:
        nonlocal last
        now = counts(broker)
        last = {k: now[k] - before[k] for k in now}
        return all(last[k] == want.get(k, 0) for k in last)

    wait_until(done, 10)
    return last


@pytest.mark.parametrize("version", [V311, V5])
def test_single_and_batch_are_stored(broker, api, version):
    dev, pw = api.create_device("tm")
    before = counts(broker)
    now = int(time.time() * 1000)
    with Client(broker.port, dev, version, username=dev, password=pw) as c:
        # Arrival time, two metrics.
        assert c.publish(f"devices/{dev}/telemetry", json.dumps({"temp": 21.5, "on": True}), qos=1) == 0
        # Explicit ts.
        c.publish(f"devices/{dev}/telemetry", json.dumps({"temp": 22, "ts": now - 5_000}), qos=1)
        # Batch of three points, four samples.
        batch = {"points": [{"ts": now - 3_000, "temp": 20.0},
                            {"ts": now - 2_000, "temp": 20.5, "hum": 40},
                            {"ts": now - 1_000, "temp": 21.0}]}
        c.publish(f"devices/{dev}/telemetry", json.dumps(batch), qos=1)
        # QoS 0 too.
        c.publish(f"devices/{dev}/telemetry", json.dumps({"temp": 19}), qos=0)
    got = wait_delta(broker, before, {"stored": 8})
    assert got["stored"] == 8, got


def test_bad_values_refused_per_sample_and_counted(broker, api):
    dev, pw = api.create_device("tb")
    before = counts(broker)
    now = int(time.time() * 1000)
    with Client(broker.port, dev, V5, username=dev, password=pw) as c:
        t = f"devices/{dev}/telemetry"
        # One good sample, three bad values, one bad name: the good one is kept.
        c.publish(t, json.dumps({"ok": 1, "s": "x", "z": None, "a": [1], "bad name": 2}), qos=1)
        # Not JSON / not an object / NaN (not JSON either): refused whole, counted once each.
        c.publish(t, b"not json", qos=1)
        c.publish(t, b"[1,2]", qos=1)
        c.publish(t, b'{"v": NaN}', qos=1)
        # Name of 128 bytes stored, 129 refused.
        c.publish(t, json.dumps({"m" * 128: 1, "n" * 129: 1}), qos=1)
        # ts in the future beyond 1 h, and a negative one: their samples refused.
        c.publish(t, json.dumps({"a": 1, "b": 2, "ts": now + 3_700_000}), qos=1)
        c.publish(t, json.dumps({"a": 1, "ts": -1}), qos=1)
        # 64 metrics stored, 65 refused whole.
        c.publish(t, json.dumps({f"k{i}": i for i in range(64)}), qos=1)
        c.publish(t, json.dumps({f"x{i}": i for i in range(65)}), qos=1)
        # 1,000 points stored, the 1,001st refused.
        c.publish(t, json.dumps({"points": [{"ts": now - 2_000_000 + i, "p": i} for i in range(1_001)]}), qos=1)
        # A metric first stored as a number refuses a boolean.
        c.publish(t, json.dumps({"ok": True}), qos=1)
    want = {"stored": 1 + 1 + 64 + 1_000, "bad_value": 3, "bad_name": 2, "bad_json": 3,
            "bad_ts": 3, "too_many_metrics": 65, "too_many_points": 1, "kind_mismatch": 1}
    got = wait_delta(broker, before, want)
    assert got == {k: want.get(k, 0) for k in got}, got


def test_other_devices_topic_is_not_theirs(broker, api):
    """The ACL keeps a device out of another device's telemetry topic: nothing is stored."""
    dev, pw = api.create_device("ta")
    other, _ = api.create_device("to")
    before = counts(broker)
    with Client(broker.port, dev, V311, username=dev, password=pw) as c:
        c.publish(f"devices/{other}/telemetry", json.dumps({"temp": 1}), qos=1)
        c.publish(f"devices/{dev}/telemetry", json.dumps({"temp": 1}), qos=1)
    got = wait_delta(broker, before, {"stored": 1})
    assert got["stored"] == 1, got


def test_bad_telemetry_key_stops_startup(tmp_path):
    b = Broker(tmp_path / "b", raw_config="[telemetry]\nenabld = true\n")
    with pytest.raises(RuntimeError):
        b.start()
    assert "enabld" in b.log_path.read_text(), b.log_tail()
    b = Broker(tmp_path / "c", raw_config="[telemetry]\nseal_interval_secs = 0\n")
    with pytest.raises(RuntimeError):
        b.start()
    assert "telemetry.seal_interval_secs" in b.log_path.read_text(), b.log_tail()


# ------------------------------------------------------------------ queries over HTTP


def series_of(answer: dict) -> dict[str, list]:
    return {s["metric"]: s["points"] for s in answer["series"]}


@pytest.mark.parametrize("version", [V311, V5])
def test_api_raw_and_averages(broker, api, version):
    dev, pw = api.create_device("tq")
    base = (int(time.time() * 1000) // 60_000) * 60_000 - 600_000
    with Client(broker.port, dev, version, username=dev, password=pw) as c:
        t = f"devices/{dev}/telemetry"
        # Single messages: 10, 20 in the first minute; 30 in the second.
        c.publish(t, json.dumps({"temp": 10, "ts": base + 1_000}), qos=1)
        c.publish(t, json.dumps({"temp": 20, "ts": base + 2_000, "on": True}), qos=1)
        batch = {"points": [{"ts": base + 61_000, "temp": 30}, {"ts": base + 62_000, "temp": 50, "on": False}]}
        c.publish(t, json.dumps(batch), qos=1)

    def raw() -> dict:
        return api.ok("GET", f"/api/v1/devices/{dev}/telemetry?from={base}&to={base + 120_000}")

    assert wait_until(lambda: len(series_of(raw()).get("temp", [])) == 4, 10), raw()
    got = series_of(raw())
    assert got["temp"] == [[base + 1_000, 10.0], [base + 2_000, 20.0], [base + 61_000, 30.0], [base + 62_000, 50.0]]
    assert got["on"] == [[base + 2_000, True], [base + 62_000, False]]
    only = api.ok("GET", f"/api/v1/devices/{dev}/telemetry?metrics=temp&from={base}&to={base + 60_000}")
    assert series_of(only) == {"temp": [[base + 1_000, 10.0], [base + 2_000, 20.0]]}
    avg = api.ok("GET", f"/api/v1/devices/{dev}/telemetry?metrics=temp&from={base}&to={base + 120_000}&step=60000")
    assert avg["agg"] == "avg" and avg["step"] == 60_000
    assert series_of(avg) == {"temp": [[base, 15.0], [base + 60_000, 40.0]]}
    # Buckets are aligned to multiples of step.
    mx = api.ok("GET", f"/api/v1/devices/{dev}/telemetry?metrics=temp&from={base}&to={base + 120_000}&step=60000&agg=max")
    assert mx["agg"] == "max"
    assert series_of(mx) == {"temp": [[base, 20.0], [base + 60_000, 50.0]]}
    latest = api.ok("GET", f"/api/v1/devices/{dev}/telemetry/latest")
    assert latest["metrics"] == {"temp": {"ts": base + 62_000, "value": 50.0},
                                 "on": {"ts": base + 62_000, "value": False}}


def test_api_bad_parameters_are_named(broker, api):
    dev, _ = api.create_device("tp")
    path = f"/api/v1/devices/{dev}/telemetry"
    for query, name in [
        ("from=abc", "from"), ("to=1.5", "to"), ("from=10&to=10", "from"),
        ("step=0", "step"), ("step=x", "step"), ("agg=median&step=1000", "agg"),
        ("agg=avg", "step"), ("metrics=a%20b", "metrics"),
        ("metrics=" + ",".join(f"m{i}" for i in range(65)), "metrics"),
        ("from=0&to=100000000&step=1000", "step"),
    ]:
        status, body = api.call("GET", f"{path}?{query}")
        assert status == 400, (query, status, body)
        assert name in json.dumps(body), (query, body)
    # At the limits: 64 metrics and exactly 100,000 buckets ((to - from) / step + 1) are fine.
    api.ok("GET", f"{path}?metrics=" + ",".join(f"m{i}" for i in range(64)))
    api.ok("GET", f"{path}?from=0&to=99999999&step=1000")
    assert api.call("GET", "/api/v1/devices/nosuchdev/telemetry")[0] == 404
    assert api.call("GET", "/api/v1/devices/nosuchdev/telemetry/latest")[0] == 404


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill9"])
def test_data_survives_restart_and_kill(tmp_path, kill):
    node = tmp_path / "node"
    b = Broker(node, BROKER_CONFIG).start()
    try:
        api = Api(b.api_port, TOKEN)
        dev, pw = api.create_device("tr")
        now = int(time.time() * 1000)
        with Client(b.port, dev, V5, username=dev, password=pw) as c:
            for i in range(50):
                c.publish(f"devices/{dev}/telemetry", json.dumps({"v": i, "ts": now - 100_000 + i}), qos=1)
        # Acknowledged at QoS 1 and counted as stored by the writer (in the WAL).
        assert wait_until(lambda: Scrape(b.api_port)(POINTS) == 50, 10)
    finally:
        if kill:
            b.proc.kill()
            b.proc.wait(timeout=10)
        b.stop()
    b = Broker(node, BROKER_CONFIG).start()
    try:
        api = Api(b.api_port, TOKEN)
        got = api.ok("GET", f"/api/v1/devices/{dev}/telemetry?from={now - 200_000}&to={now}")
        assert series_of(got) == {"v": [[now - 100_000 + i, float(i)] for i in range(50)]}
        assert api.ok("GET", f"/api/v1/devices/{dev}/telemetry/latest")["metrics"]["v"]["value"] == 49.0
    finally:
        b.stop()
