"""The Prometheus-compatible read API (what Grafana's Prometheus data source sends): points
written over MQTT with `ts` in the past, then the exact requests Grafana issues (POST forms to
/api/v1/query_range and /api/v1/query, /api/v1/labels, /api/v1/label/__name__/values,
/api/v1/series with match[], buildinfo), answers checked against values computed here; bad
input answered in Prometheus's error envelope."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from helpers import HOST, V5, Api, Client, unique, wait_until

pytestmark = pytest.mark.myriad_only

TOKEN = "prometheus-test-token-0123456789"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}

STEP_MS = 10_000
N = 30  # points per series: every 10 s for 5 minutes


@pytest.fixture(scope="module")
def api(broker):
    return Api(broker.api_port, TOKEN)


def prom(port: int, method: str, path: str, params: list[tuple[str, str]] | None = None,
         token: str | None = TOKEN) -> tuple[int, dict]:
    """One request as Grafana sends it: GET with a query string, or POST with a form body."""
    form = urllib.parse.urlencode(params or [])
    url = f"http://{HOST}:{port}{path}"
    data = None
    if method == "GET" and form:
        url += "?" + form
    elif method == "POST":
        data = form.encode()
    req = urllib.request.Request(url, data=data, method=method)
    if method == "POST":
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def ok(port, method, path, params=None) -> dict:
    status, body = prom(port, method, path, params)
    assert status == 200 and body["status"] == "success", (path, params, status, body)
    return body["data"]


def bad(port, method, path, params, status=400, kind="bad_data") -> str:
    got, body = prom(port, method, path, params)
    assert got == status, (params, got, body)
    assert body["status"] == "error" and body["errorType"] == kind, body
    return body["error"]


class Fleet:
    """Two devices with `temp` (device i: value 10*i + k at point k) and one with a counter."""

    def __init__(self, broker, api):
        self.port = broker.api_port
        # Whole seconds, 20 minutes back, so the points are well in the past.
        self.base = (int(time.time()) // 60) * 60_000 - 20 * 60_000
        self.devs = []
        for i in range(2):
            dev, pw = api.create_device("pd")
            self.devs.append(dev)
            pts = [{"ts": self.base + k * STEP_MS, "temp": 10 * i + k} for k in range(N)]
            self.publish(broker, dev, pw, pts)
        self.counter, pw = api.create_device("pc")
        # A counter +5 per point, reset at k = 20 (95 -> 5).
        self.publish(broker, self.counter, pw,
                     [{"ts": self.base + k * STEP_MS, "c": 5 * (k if k < 20 else k - 19)} for k in range(N)])
        for dev, metric in [(d, "temp") for d in self.devs] + [(self.counter, "c")]:
            path = f"/api/v1/devices/{dev}/telemetry?metrics={metric}&from={self.base}&to={self.base + N * STEP_MS}"
            assert wait_until(lambda: sum(len(s["points"]) for s in api.ok("GET", path)["series"]) == N, 10)

    @staticmethod
    def publish(broker, dev, pw, points):
        with Client(broker.port, dev, V5, username=dev, password=pw) as c:
            c.publish(f"devices/{dev}/telemetry", json.dumps({"points": points}), qos=1)

    def value(self, i: int, k: int) -> float:
        return 10 * i + k

    def window(self, i: int, t_ms: int, range_ms: int) -> list[float]:
        """Values of device i's temp with t - range < ts <= t."""
        return [self.value(i, k) for k in range(N) if t_ms - range_ms < self.base + k * STEP_MS <= t_ms]


@pytest.fixture(scope="module")
def fleet(broker, api):
    return Fleet(broker, api)


def test_query_range_avg_over_time_as_grafana_posts_it(fleet):
    d = fleet.devs[0]
    start, end, step = fleet.base // 1000 + 60, fleet.base // 1000 + 240, 30
    data = ok(fleet.port, "POST", "/api/v1/query_range", [
        ("query", f'avg_over_time(temp{{device="{d}"}}[1m])'),
        ("start", str(start)), ("end", str(end)), ("step", str(step))])
    assert data["resultType"] == "matrix"
    [series] = data["result"]
    # Functions drop __name__; device and metric stay.
    assert series["metric"] == {"device": d, "metric": "temp"}
    want = []
    for t in range(start, end + 1, step):
        w = fleet.window(0, t * 1000, 60_000)
        want.append((t, sum(w) / len(w)))
    assert [v[0] for v in series["values"]] == [t for t, _ in want]
    assert all(isinstance(v[1], str) for v in series["values"])
    assert [float(v[1]) for v in series["values"]] == pytest.approx([v for _, v in want])
    # The same query by GET, with an RFC 3339 start and a duration step, answers the same.
    rfc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    again = ok(fleet.port, "GET", "/api/v1/query_range", [
        ("query", f'avg_over_time({{device="{d}",metric="temp"}}[1m])'),
        ("start", rfc), ("end", str(end)), ("step", "30s")])
    assert again == data
    # A POST form wins over the query string, as in Prometheus (Go's FormValue).
    status, body = prom(fleet.port, "POST", "/api/v1/query?query=nonsense%7B", [("query", "1+1"), ("time", "5")])
    assert status == 200 and body["data"] == {"resultType": "scalar", "result": [5, "2"]}, body


def test_range_functions_and_selectors(fleet):
    d0, d1 = fleet.devs
    t = fleet.base // 1000 + 200
    params = lambda q: [("query", q), ("start", str(t)), ("end", str(t)), ("step", "15")]  # noqa: E731
    one = lambda q: ok(fleet.port, "POST", "/api/v1/query_range", params(q))["result"]  # noqa: E731
    for fn, f in [("min_over_time", min), ("max_over_time", max), ("sum_over_time", sum),
                  ("count_over_time", len), ("last_over_time", lambda w: w[-1])]:
        [s] = one(f'{fn}(temp{{device="{d1}"}}[45s])')
        assert float(s["values"][0][1]) == f(fleet.window(1, t * 1000, 45_000)), fn
    # last_over_time keeps the metric name, as in Prometheus.
    [s] = one(f'last_over_time(temp{{device="{d1}"}}[45s])')
    assert s["metric"]["__name__"] == "temp"
    # Instant selector: the newest point within 5 minutes, reported at t.
    [s] = one(f'temp{{device="{d0}"}}')
    assert s["values"] == [[t, str(fleet.value(0, (t * 1000 - fleet.base) // STEP_MS))]]
    # Regex and negative matchers over both devices.
    got = one(f'temp{{device=~"{d0}|{d1}"}}')
    assert sorted(s["metric"]["device"] for s in got) == sorted([d0, d1])
    got = one(f'temp{{device=~"{d0}|{d1}",device!="{d0}"}}')
    assert [s["metric"]["device"] for s in got] == [d1]
    # Aggregation across devices, and grouped by device.
    [s] = one(f'avg(last_over_time(temp{{device=~"{d0}|{d1}"}}[1m]))')
    k = (t * 1000 - fleet.base) // STEP_MS
    assert s["metric"] == {} and float(s["values"][0][1]) == (fleet.value(0, k) + fleet.value(1, k)) / 2
    by = one(f'max by (device) (max_over_time(temp{{device=~"{d0}|{d1}"}}[1m]))')
    assert {s["metric"]["device"]: float(s["values"][0][1]) for s in by} == {d0: fleet.value(0, k), d1: fleet.value(1, k)}
    assert all(set(s["metric"]) == {"device"} for s in by)


def test_rate_and_increase_of_a_counter(fleet):
    # At the 10th point (+5 every 10 s, samples aligned with the window end): 0.5/s.
    t = (fleet.base + 10 * STEP_MS) // 1000
    data = ok(fleet.port, "GET", "/api/v1/query", [
        ("query", f'rate(c{{device="{fleet.counter}"}}[1m])'), ("time", str(t))])
    assert data["resultType"] == "vector"
    [s] = data["result"]
    assert s["metric"] == {"device": fleet.counter, "metric": "c"}
    assert s["value"][0] == t and float(s["value"][1]) == pytest.approx(0.5)
    # Across the reset at point 20 (95 -> 5): the increase still counts 5 per point.
    t = (fleet.base + 22 * STEP_MS) // 1000
    [s] = ok(fleet.port, "GET", "/api/v1/query", [
        ("query", f'increase(c{{device="{fleet.counter}"}}[1m])'), ("time", str(t))])["result"]
    assert float(s["value"][1]) == pytest.approx(30.0)


def test_instant_queries(fleet):
    d = fleet.devs[1]
    t = fleet.base // 1000 + 95
    data = ok(fleet.port, "POST", "/api/v1/query", [("query", f'temp{{device="{d}"}}'), ("time", f"{t}.5")])
    assert data["resultType"] == "vector"
    [s] = data["result"]
    assert s["metric"] == {"__name__": "temp", "device": d, "metric": "temp"}
    assert s["value"] == [t + 0.5, str(fleet.value(1, 9))]
    # Past the 5 minute lookback: nothing.
    late = fleet.base // 1000 + N * 10 + 400
    assert ok(fleet.port, "GET", "/api/v1/query", [("query", f'temp{{device="{d}"}}'), ("time", str(late))])["result"] == []
    # Grafana's health check.
    data = ok(fleet.port, "GET", "/api/v1/query", [("query", "1+1"), ("time", "1700000000")])
    assert data == {"resultType": "scalar", "result": [1700000000, "2"]}
    # A bare range selector answers the raw points of the window.
    data = ok(fleet.port, "GET", "/api/v1/query", [("query", f'temp{{device="{d}"}}[30s]'), ("time", str(t))])
    assert data["resultType"] == "matrix"
    assert data["result"][0]["values"] == [[(fleet.base + k * STEP_MS) // 1000, str(fleet.value(1, k))] for k in (7, 8, 9)]


def test_labels_values_series_and_buildinfo(fleet):
    d0, d1 = fleet.devs
    names = ok(fleet.port, "POST", "/api/v1/labels", [("start", "0"), ("end", str(int(time.time())))])
    assert {"__name__", "device", "metric"} <= set(names)
    assert names == sorted(names)
    metrics = ok(fleet.port, "GET", "/api/v1/label/__name__/values")
    assert {"temp", "c"} <= set(metrics)
    devices = ok(fleet.port, "GET", "/api/v1/label/device/values")
    assert {d0, d1, fleet.counter} <= set(devices)
    # Narrowed by match[].
    assert ok(fleet.port, "GET", "/api/v1/label/device/values", [("match[]", f'temp{{device="{d0}"}}')]) == [d0]
    series = ok(fleet.port, "POST", "/api/v1/series", [
        ("match[]", f'{{device="{d0}"}}'), ("match[]", f'c{{device="{fleet.counter}"}}'),
        ("start", str(fleet.base // 1000)), ("end", str(int(time.time())))])
    assert sorted(series, key=lambda s: s["device"]) == sorted([
        {"__name__": "temp", "device": d0, "metric": "temp"},
        {"__name__": "c", "device": fleet.counter, "metric": "c"}], key=lambda s: s["device"])
    # start/end keep the series with data in the window (both ends included, seconds).
    first, last = fleet.base // 1000, (fleet.base + (N - 1) * STEP_MS) // 1000
    def in_window(start: int, end: int) -> list[str]:
        found = ok(fleet.port, "GET", "/api/v1/series",
                   [("match[]", "temp"), ("start", str(start)), ("end", str(end))])
        return sorted(s["device"] for s in found)
    assert in_window(first, first) == sorted([d0, d1])
    assert in_window(last, last + 3600) == sorted([d0, d1])
    assert in_window(first - 3600, first - 1) == []
    assert in_window(last + 1, last + 3600) == []
    assert ok(fleet.port, "GET", "/api/v1/label/device/values",
              [("match[]", "temp"), ("start", str(last + 1))]) == []
    info = ok(fleet.port, "GET", "/api/v1/status/buildinfo")
    assert info["version"].count(".") == 2 and info["application"] == "myriad"
    assert ok(fleet.port, "GET", "/api/v1/metadata") == {}


# ------------------------------------------------------------------ device labels


@pytest.fixture(scope="module")
def labelled(broker, api):
    """Three devices registered over the HTTP API with groups and attributes: a0 in groups
    (g, h) at site s1 with `fw-version`, a1 in g at s2, a2 in no group at s1; `temp` = 1, 2, 4
    at one time, 10 minutes back."""
    g, h, s1, s2 = unique("lg"), unique("lh"), unique("ls"), unique("ls")
    t_ms = (int(time.time()) // 60) * 60_000 - 10 * 60_000
    spec = [([g, h], {"site": s1, "fw-version": "1.2"}, 1), ([g], {"site": s2}, 2), ([], {"site": s1}, 4)]
    devs = []
    for groups, attrs, value in spec:
        dev = unique("la")
        api.ok("POST", "/api/v1/devices", {"id": dev, "password": "dev-pw-1", "groups": groups,
                                           "attributes": attrs}, expect=201)
        Fleet.publish(broker, dev, "dev-pw-1", [{"ts": t_ms, "temp": value}])
        devs.append(dev)
    for dev in devs:
        path = f"/api/v1/devices/{dev}/telemetry?metrics=temp&from={t_ms}&to={t_ms + 1}"
        assert wait_until(lambda: sum(len(s["points"]) for s in api.ok("GET", path)["series"]) == 1, 10)
    return {"g": g, "h": h, "s1": s1, "s2": s2, "t": t_ms // 1000, "devs": devs}


def at(port: int, query: str, t: int) -> list[dict]:
    """query_range at one step, as Grafana POSTs it: [{metric, value}]."""
    data = ok(port, "POST", "/api/v1/query_range", [
        ("query", query), ("start", str(t)), ("end", str(t)), ("step", "15")])
    return [{"metric": s["metric"], "value": float(s["values"][0][1])} for s in data["result"]]


def test_device_groups_and_attributes_are_labels(broker, labelled):
    p, L = broker.api_port, labelled
    a0, a1, a2 = L["devs"]
    g, h, s1, s2, t = L["g"], L["h"], L["s1"], L["s2"], L["t"]
    # Labels on a series: groups sorted and comma-joined, attribute keys as label names
    # (fw-version -> fw_version); a device in no group has no group label.
    [s] = at(p, f'temp{{device="{a0}"}}', t)
    assert s["metric"] == {"__name__": "temp", "device": a0, "metric": "temp",
                           "group": ",".join(sorted([g, h])), "site": s1, "fw_version": "1.2"}
    [s] = at(p, f'temp{{device="{a2}"}}', t)
    assert s["metric"] == {"__name__": "temp", "device": a2, "metric": "temp", "site": s1}

    def devices(query: str) -> list[str]:
        return sorted(s["metric"]["device"] for s in at(p, query, t))
    # = and =~ select a device when one of its groups matches; != and !~ when none does.
    assert devices(f'temp{{group="{g}"}}') == sorted([a0, a1])
    assert devices(f'temp{{group="{h}"}}') == [a0]
    assert devices(f'temp{{group=~"{h}|nosuch"}}') == [a0]
    assert devices(f'temp{{site=~"{s1}|{s2}",group!="{h}"}}') == sorted([a1, a2])
    assert devices(f'temp{{site=~"{s1}|{s2}",group!~"{g}"}}') == [a2]
    assert devices(f'{{site="{s1}"}}') == sorted([a0, a2])
    # Aggregations by attribute and by group.
    by_site = {s["metric"]["site"]: s["value"] for s in at(p, f'sum by (site) (temp{{group="{g}"}})', t)}
    assert by_site == {s1: 1.0, s2: 2.0}
    by_site = {s["metric"]["site"]: s["value"] for s in at(p, f'sum by (site) (temp{{site=~"{s1}|{s2}"}})', t)}
    assert by_site == {s1: 5.0, s2: 2.0}
    by_group = {s["metric"]["group"]: s["value"] for s in at(p, f'avg by (group) (temp{{group="{g}"}})', t)}
    assert by_group == {g: 2.0, ",".join(sorted([g, h])): 1.0}
    # The label APIs list them (Grafana's label browser sends start/end).
    window = [("start", str(t - 60)), ("end", str(t + 60))]
    assert {s1, s2} <= set(ok(p, "GET", "/api/v1/label/site/values", window))
    assert {g, h} <= set(ok(p, "GET", "/api/v1/label/group/values", window))
    assert {"group", "site", "fw_version"} <= set(ok(p, "POST", "/api/v1/labels", window))
    assert ok(p, "GET", "/api/v1/label/site/values", [("match[]", f'temp{{group="{h}"}}')]) == [s1]
    series = ok(p, "POST", "/api/v1/series", [("match[]", f'{{group="{g}"}}')] + window)
    assert sorted((x["device"], x["site"]) for x in series) == sorted([(a0, s1), (a1, s2)])
    # A registry change shows in the next query: a2 joins g, a1 moves to s1.
    Api(p, TOKEN).ok("PATCH", f"/api/v1/devices/{a2}", {"groups": [g]})
    Api(p, TOKEN).ok("PATCH", f"/api/v1/devices/{a1}", {"attributes": {"site": s1}})
    assert devices(f'temp{{group="{g}"}}') == sorted([a0, a1, a2])
    [s] = at(p, f'sum by (site) (temp{{group="{g}"}})', t)
    assert s == {"metric": {"site": s1}, "value": 7.0}


def test_label_apis_without_match_honour_start_end(broker, api, labelled):
    """A device with points only 3 hours back: a window after them leaves out its metric, its
    device id and its attribute's label name; a window around them keeps them."""
    p = broker.api_port
    key, metric = unique("oldkey"), unique("oldmetric")
    dev = unique("old")
    api.ok("POST", "/api/v1/devices", {"id": dev, "password": "dev-pw-1", "groups": [unique("og")],
                                       "attributes": {key: "v"}}, expect=201)
    old_ms = int(time.time()) * 1000 - 3 * 3_600_000
    Fleet.publish(broker, dev, "dev-pw-1", [{"ts": old_ms, metric: 1}])
    path = f"/api/v1/devices/{dev}/telemetry?metrics={metric}&from={old_ms}&to={old_ms + 1}"
    assert wait_until(lambda: sum(len(s["points"]) for s in api.ok("GET", path)["series"]) == 1, 10)
    recent = [("start", str(labelled["t"] - 60)), ("end", str(int(time.time())))]
    around = [("start", str(old_ms // 1000 - 60)), ("end", str(old_ms // 1000 + 60))]
    assert metric not in ok(p, "GET", "/api/v1/label/__name__/values", recent)
    assert dev not in ok(p, "GET", "/api/v1/label/device/values", recent)
    assert key not in ok(p, "POST", "/api/v1/labels", recent)
    assert "temp" in ok(p, "GET", "/api/v1/label/__name__/values", recent)
    assert ok(p, "GET", "/api/v1/label/__name__/values", around) == [metric]
    assert ok(p, "GET", "/api/v1/label/device/values", around) == [dev]
    assert key in ok(p, "GET", "/api/v1/labels", around)
    assert ok(p, "GET", f"/api/v1/label/{key}/values", around) == ["v"]
    assert ok(p, "GET", f"/api/v1/label/{key}/values", recent) == []
    # Without start/end: every series, old ones included.
    assert metric in ok(p, "GET", "/api/v1/label/__name__/values")


def test_bad_input_answers_the_error_envelope(fleet):
    p = fleet.port
    rng = lambda q, start="0", end="60", step="15": [  # noqa: E731
        ("query", q), ("start", start), ("end", end), ("step", step)]
    assert "parse error" in bad(p, "POST", "/api/v1/query_range", rng("temp{"))
    assert "histogram_quantile" in bad(p, "POST", "/api/v1/query_range", rng("histogram_quantile(0.9, temp)"))
    assert "not supported" in bad(p, "GET", "/api/v1/query", [("query", "temp * temp")])
    assert "query" in bad(p, "POST", "/api/v1/query_range", [("start", "0"), ("end", "1"), ("step", "1")])
    # Steps: (end - start) / step = 11,000 is fine, 11,001 is refused with Prometheus's message.
    ok(p, "POST", "/api/v1/query_range", rng("temp", "0", "11000", "1"))
    assert bad(p, "POST", "/api/v1/query_range", rng("temp", "0", "11001", "1")).startswith(
        "exceeded maximum resolution of 11,000 points per timeseries")
    assert "step" in bad(p, "POST", "/api/v1/query_range", rng("temp", step="soon"))
    assert "step" in bad(p, "POST", "/api/v1/query_range", rng("temp", step="0"))
    assert "end" in bad(p, "POST", "/api/v1/query_range", rng("temp", start="100", end="50"))
    assert "start" in bad(p, "POST", "/api/v1/query_range", rng("temp", start="yesterday"))
    assert "time" in bad(p, "GET", "/api/v1/query", [("query", "temp"), ("time", "noon")])
    # Query text: 8 KiB accepted, one byte more refused.
    ok(p, "POST", "/api/v1/query", [("query", "temp" + " " * (8192 - 4)), ("time", "0")])
    assert "8192" in bad(p, "POST", "/api/v1/query", [("query", "temp" + " " * (8192 - 3)), ("time", "0")])
    # match[]: 64 accepted, 65 refused; series needs one.
    sel = ("match[]", f'{{device="{fleet.devs[0]}"}}')
    ok(p, "POST", "/api/v1/series", [sel] * 64)
    assert "match[]" in bad(p, "POST", "/api/v1/series", [sel] * 65)
    assert "match[]" in bad(p, "GET", "/api/v1/series", [])
    assert "match[]" in bad(p, "GET", "/api/v1/series", [("match[]", "rate(temp[1m])")])
    # Parameters per request: 256 accepted, 257 refused.
    base = [("query", "1+1"), ("time", "0")]
    ok(p, "POST", "/api/v1/query", base + [("x", "1")] * 254)
    assert "256 parameters" in bad(p, "POST", "/api/v1/query", base + [("x", "1")] * 255)
    # A POST body that is not a form.
    req = urllib.request.Request(f"http://{HOST}:{p}/api/v1/query", data=b'{"query": "1"}', method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and "x-www-form-urlencoded" in json.loads(e.value.read())["error"]
    # The bearer token is required like everywhere under /api/v1.
    assert prom(p, "GET", "/api/v1/labels", token=None)[0] == 401
    assert prom(p, "GET", "/api/v1/labels", token="wrong")[0] == 401


def test_telemetry_disabled_is_503(broker_factory):
    b = broker_factory({**BROKER_CONFIG, "telemetry": {"enabled": False}})
    got = bad(b.api_port, "GET", "/api/v1/query", [("query", "1+1")], status=503, kind="unavailable")
    assert "telemetry" in got


# ------------------------------------------------------------------ many devices, native API


@pytest.fixture(scope="module")
def group_fleet(broker, api):
    """Three devices in a unique group (two of them with site=<unique>), `temp` in two buckets of
    a minute: device i has i+1 and i+3 in the first minute, 10*(i+1) in the second."""
    group, site = unique("g"), unique("s")
    base = (int(time.time()) // 60) * 60_000 - 30 * 60_000
    devs = []
    for i in range(3):
        dev = unique("gd")
        attrs = {"site": site} if i < 2 else {"site": "elsewhere"}
        api.ok("POST", "/api/v1/devices", {"id": dev, "password": "dev-pw-1", "groups": [group],
                                           "attributes": attrs}, expect=201)
        Fleet.publish(broker, dev, "dev-pw-1", [
            {"ts": base + 1_000, "temp": i + 1}, {"ts": base + 2_000, "temp": i + 3},
            {"ts": base + 61_000, "temp": 10 * (i + 1)}])
        devs.append(dev)
    for dev in devs:
        path = f"/api/v1/devices/{dev}/telemetry?metrics=temp&from={base}&to={base + 120_000}"
        assert wait_until(lambda: sum(len(s["points"]) for s in api.ok("GET", path)["series"]) == 3, 10)
    return group, site, base, devs


def test_many_devices_per_device_and_combined(api, group_fleet):
    group, site, base, devs = group_fleet
    rng = f"metrics=temp&from={base}&to={base + 120_000}&step=60000"
    got = api.ok("GET", f"/api/v1/telemetry?group={group}&{rng}")
    assert got["devices"] == 3 and got["group_by"] == "device" and got["agg"] == "avg"
    per = {s["device"]: s["points"] for s in got["series"]}
    assert per == {d: [[base, i + 2.0], [base + 60_000, 10.0 * (i + 1)]] for i, d in enumerate(devs)}
    # By attribute: the two devices at `site`.
    got = api.ok("GET", f"/api/v1/telemetry?attr.site={site}&{rng}&agg=max")
    assert sorted(s["device"] for s in got["series"]) == sorted(devs[:2])
    assert {s["device"]: s["points"][0][1] for s in got["series"]} == {devs[0]: 3.0, devs[1]: 4.0}
    # Named devices, raw points.
    got = api.ok("GET", f"/api/v1/telemetry?devices={devs[0]},{devs[2]}&metrics=temp&from={base}&to={base + 120_000}")
    assert {s["device"]: len(s["points"]) for s in got["series"]} == {devs[0]: 3, devs[2]: 3}
    # Combined across devices per bucket: the avg of the devices' avgs, and the max.
    got = api.ok("GET", f"/api/v1/telemetry?group={group}&{rng}&group_by=none")
    assert got["combine"] == "avg"
    assert got["series"] == [{"metric": "temp", "devices": 3,
                              "points": [[base, 3.0, 3], [base + 60_000, 20.0, 3]]}]
    # combine applies to the per-device bucket values (`agg`, avg by default).
    got = api.ok("GET", f"/api/v1/telemetry?group={group}&{rng}&combine=max")
    assert got["series"][0]["points"] == [[base, 4.0, 3], [base + 60_000, 30.0, 3]]
    got = api.ok("GET", f"/api/v1/telemetry?group={group}&{rng}&combine=max&agg=max")
    assert got["series"][0]["points"] == [[base, 5.0, 3], [base + 60_000, 30.0, 3]]


def test_many_devices_bad_parameters_are_named(api, group_fleet):
    group, _, base, devs = group_fleet
    for query, name in [
        ("metrics=temp", "devices"),
        (f"devices={devs[0]}&group={group}", "devices"),
        ("attr.a=1&attr.b=2", "attr"),
        (f"group={group}&group_by=site", "group_by"),
        (f"group={group}&combine=median&step=1000", "combine"),
        (f"group={group}&combine=avg", "step"),
        (f"group={group}&group_by=device&combine=avg&step=1000", "combine"),
        (f"group={group}&step=0", "step"),
        (f"group={group}&frm=1", "frm"),
        ("devices=" + ",".join(f"d{i}" for i in range(10_001)), "devices"),
    ]:
        status, body = api.call("GET", f"/api/v1/telemetry?{query}")
        assert status == 400, (query, status, body)
        assert name in body["message"], (query, body)
    # 10,000 named devices are accepted.
    api.ok("GET", "/api/v1/telemetry?metrics=temp&devices=" + ",".join(f"d{i}" for i in range(10_000)))


def test_series_limit_is_an_execution_error(broker_factory):
    """One device with 10,001 metrics: a selector matching 10,000 series answers, one matching
    all 10,001 is 422 `execution`."""
    b = broker_factory(BROKER_CONFIG)
    api = Api(b.api_port, TOKEN)
    dev, pw = api.create_device("many")
    ts = int(time.time() * 1000) - 60_000
    names = [f"m{i}" for i in range(10_001)]
    with Client(b.port, dev, V5, username=dev, password=pw) as c:
        for i in range(0, len(names), 64):
            c.publish(f"devices/{dev}/telemetry", json.dumps({"ts": ts, **{n: 1 for n in names[i:i + 64]}}), qos=1)
    assert wait_until(lambda: len(ok(b.api_port, "GET", "/api/v1/label/__name__/values")) == 10_001, 20)
    t = str(ts // 1000 + 1)
    got = ok(b.api_port, "GET", "/api/v1/query", [("query", f'{{device="{dev}",metric!="m0"}}'), ("time", t)])
    assert len(got["result"]) == 10_000
    err = bad(b.api_port, "GET", "/api/v1/query", [("query", f'{{device="{dev}"}}'), ("time", t)],
              status=422, kind="execution")
    assert "10000 series" in err
