"""The HTTP API over TLS (issue 16, `[api.tls]`): urllib / http.client and
`myriad ctl` against it with the dev CA, plain HTTP and a wrong CA refused,
client certificates, SIGHUP reload that keeps keep-alive connections,
a handshake that never finishes, handshake metrics and the expiry gauge,
and bad settings stopping start-up naming the key.

Certificates come from `myriad ctl certs dev-ca`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import HOST, myriad_bin, send_and_read_until_closed, unique
from test_tls import context, make_certs, metric

TOKEN = "api-tls-test-token-0123456789"
API_TLS_RE = re.compile(r"^HTTP API \(tls\) listening on 127\.0\.0\.1:(\d+)\s*$")


def api_tls_config(certs: Path, client_certs: str = "none", extra: str = "") -> str:
    lines = [
        "[api]",
        f'token = "{TOKEN}"',
        "header_timeout_secs = 2",
        "[api.tls]",
        f'cert = "{certs / "server.pem"}"',
        f'key = "{certs / "server.key"}"',
    ]
    if client_certs != "none":
        lines += [f'client_ca = "{certs / "ca.pem"}"', f'client_certs = "{client_certs}"']
    return "\n".join(lines) + "\n" + extra


def api_tls_port(broker) -> int:
    for line in broker.stdout_lines:
        m = API_TLS_RE.match(line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no 'HTTP API (tls) listening' line in {broker.stdout_lines}")


def get(port: int, path: str, ctx: ssl.SSLContext, token: str | None = TOKEN) -> tuple[int, bytes]:
    req = urllib.request.Request(f"https://localhost:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def metric_lines(port: int, certs: Path) -> list[str]:
    status, body = get(port, "/metrics", context(certs))
    assert status == 200, body
    return body.decode().splitlines()


def ctl(port: int, *args: str, cacert: Path | None = None, env_cacert: Path | None = None,
        scheme: str = "https") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    env["MYRIAD_API"] = f"{scheme}://localhost:{port}"
    env["MYRIAD_API_TOKEN"] = TOKEN
    if env_cacert is not None:
        env["MYRIAD_API_CACERT"] = str(env_cacert)
    cmd = [str(myriad_bin()), "ctl"]
    if cacert is not None:
        cmd += ["--cacert", str(cacert)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs") / "pki", "op1")


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("other") / "pki")


@pytest.fixture
def api_broker(broker_factory, certs):
    return broker_factory(raw_config=api_tls_config(certs))


def test_urllib_and_http_client_over_tls(api_broker, certs):
    port = api_tls_port(api_broker)
    assert get(port, "/healthz", context(certs), token=None)[0] == 200
    dev = unique("tlsdev")
    req = urllib.request.Request(
        f"https://localhost:{port}/api/v1/devices", method="POST",
        data=json.dumps({"id": dev}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10, context=context(certs)) as resp:
        assert resp.status in (200, 201)
    status, body = get(port, f"/api/v1/devices/{dev}", context(certs))
    assert status == 200 and json.loads(body)["id"] == dev
    # The token is still checked over TLS.
    assert get(port, "/api/v1/devices", context(certs), token="wrong-token-0123456789")[0] == 401
    # The address also answers to 127.0.0.1 (the dev-ca certificate names it).
    conn = http.client.HTTPSConnection(HOST, port, timeout=10, context=context(certs))
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    conn.close()


def test_ctl_over_https(api_broker, certs, other_certs):
    port = api_tls_port(api_broker)
    dev = unique("ctldev")
    made = ctl(port, "--output", "json", "devices", "create", dev, cacert=certs / "ca.pem")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["id"] == dev
    got = ctl(port, "--output", "json", "devices", "get", dev, env_cacert=certs / "ca.pem")
    assert got.returncode == 0 and json.loads(got.stdout)["id"] == dev, got.stderr
    # Without the CA (public roots only) or with the wrong one: unreachable (exit 2).
    for kwargs in ({}, {"cacert": other_certs / "ca.pem"}):
        refused = ctl(port, "devices", "get", dev, **kwargs)
        assert refused.returncode == 2, (kwargs, refused.stderr)
        assert "cannot reach" in refused.stderr, refused.stderr
    # A file without certificates is named.
    bad = ctl(port, "devices", "get", dev, cacert=certs / "server.key")
    assert bad.returncode != 0 and "--cacert" in bad.stderr, bad.stderr


def test_ctl_plain_http_still_works(broker_factory):
    broker = broker_factory(raw_config=f'[api]\ntoken = "{TOKEN}"\n')
    assert broker.api_port is not None
    listed = ctl(broker.api_port, "--output", "json", "devices", "list", scheme="http")
    assert listed.returncode == 0, listed.stderr


def test_plain_http_and_a_wrong_ca_are_refused(api_broker, certs, other_certs):
    port = api_tls_port(api_broker)
    got = send_and_read_until_closed(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"HTTP/1." not in got and b"ok" not in got, got
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((HOST, port), timeout=5) as raw:
            context(other_certs).wrap_socket(raw, server_hostname="localhost")
    # The API still serves after both.
    assert get(port, "/healthz", context(certs), token=None)[0] == 200


def test_required_client_certificate(broker_factory, certs):
    broker = broker_factory(raw_config=api_tls_config(certs, "require"))
    port = api_tls_port(broker)
    assert get(port, "/healthz", context(certs, "op1"), token=None)[0] == 200
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        get(port, "/healthz", context(certs), token=None)


def test_unfinished_handshake_is_closed(api_broker, certs):
    """A client that starts a handshake and stops is closed after
    `api.header_timeout_secs` (2 s here) and counted as a timeout."""
    port = api_tls_port(api_broker)
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more
        started = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - started < 8
    lines = metric_lines(port, certs)
    assert metric(lines, "myriad_tls_handshakes_total", listener="api", result="failed", reason="timeout") == 1


def test_handshake_metrics_and_certificate_expiry(api_broker, certs):
    port = api_tls_port(api_broker)
    for _ in range(2):
        assert get(port, "/healthz", context(certs), token=None)[0] == 200
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
    lines = metric_lines(port, certs)  # itself a third handshake
    name = "myriad_tls_handshakes_total"
    assert metric(lines, name, listener="api", result="ok") == 3, [x for x in lines if name in x]
    assert metric(lines, name, listener="api", result="failed", reason="malformed") == 1
    expiry = metric(lines, "myriad_tls_certificate_expiry_timestamp_seconds", listener="api")
    assert expiry > time.time() + 86400, [x for x in lines if "expiry" in x]


def test_sighup_reloads_the_api_certificate_and_keeps_connections(broker_factory, certs, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(certs, live)
    broker = broker_factory(raw_config=api_tls_config(live))
    port = api_tls_port(broker)
    old = http.client.HTTPSConnection("localhost", port, timeout=10, context=context(certs))
    try:
        old.request("GET", "/healthz")
        resp = old.getresponse()
        assert resp.status == 200
        resp.read()
        sock = old.sock
        fresh = make_certs(tmp_path / "fresh")
        for name in ("server.pem", "server.key"):
            shutil.copy(fresh / name, live / name)
        broker.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificates reloaded" not in broker.log_tail(200):
            assert time.monotonic() < deadline, broker.log_tail()
            time.sleep(0.1)
        # New connections get the new certificate: the old CA no longer verifies it.
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection((HOST, port), timeout=5) as raw:
                context(certs).wrap_socket(raw, server_hostname="localhost")
        assert get(port, "/healthz", context(fresh), token=None)[0] == 200
        # The keep-alive connection made before the reload still answers, on the same socket.
        old.request("GET", "/api/v1/devices", headers={"Authorization": f"Bearer {TOKEN}"})
        resp = old.getresponse()
        assert resp.status == 200
        resp.read()
        assert old.sock is sock
    finally:
        old.close()
    broker.assert_alive()


@pytest.mark.parametrize(
    "tls_body,key",
    [
        ('cert = "missing.pem"\nkey = "missing.key"\n', "api.tls.cert"),
        ('client_certs = "require"\n', "api.tls.client_ca"),
        ("", "api.tls.key"),
    ],
    ids=["missing-file", "require-without-ca", "bad-key"],
)
def test_bad_api_tls_config_stops_startup_naming_the_key(tmp_path, certs, tls_body, key):
    cfg = tmp_path / "myriad.toml"
    if tls_body.startswith("cert"):
        body = tls_body
    elif tls_body:
        body = f'cert = "{certs / "server.pem"}"\nkey = "{certs / "server.key"}"\n' + tls_body
    else:
        bad_key = tmp_path / "bad.key"
        bad_key.write_text("not a key\n")
        body = f'cert = "{certs / "server.pem"}"\nkey = "{bad_key}"\n'
    cfg.write_text("[api.tls]\n" + body)
    res = subprocess.run(
        [str(myriad_bin()), "serve", "--config", str(cfg), "--listen", f"{HOST}:0", "--api-listen", f"{HOST}:0"],
        cwd=tmp_path, capture_output=True, timeout=20,
    )
    assert res.returncode != 0
    assert key in res.stderr.decode(), res.stderr.decode()[-2000:]
