"""MQTT over TLS (issue 16): several listeners in one process, TLS 1.2 and 1.3,
ALPN, client certificates (optional / required, CRL), certificate reload on
SIGHUP without dropping connections, and hostile input on the TLS port.

Certificates come from `myriad ctl certs dev-ca` (the command the README shows);
clients are paho-mqtt (3.1.1 and 5.0), mosquitto_pub/mosquitto_sub and raw
`ssl` sockets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from helpers import HOST, V5, V311, Api, Client, myriad_bin, unique
from mqtt_raw import RawClient

TLS_RE = re.compile(r"^MQTT \(tls\) listening on 127\.0\.0\.1:(\d+)\s*$")


def make_certs(out: Path, *devices: str) -> Path:
    cmd = [str(myriad_bin()), "ctl", "certs", "dev-ca", "--out", str(out)]
    for device in devices:
        cmd += ["--device", device]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    return out


# The TLS listener's configured address: its `listener` label in the metrics.
LISTEN = "127.0.0.1:0"


def tls_config(certs: Path, client_certs: str = "none", extra: str = "", crl: Path | None = None,
               client_ca: bool = True) -> str:
    """A broker config with one TLS listener using the dev-ca server certificate;
    with client certificates asked for, its CA is the listener's `client_ca`
    (unless `client_ca` is false: then only the registry's CAs and pins count)."""
    lines = [
        "[mqtt]",
        "connect_timeout_secs = 2",
        "[[mqtt.listeners]]",
        'kind = "tls"',
        f'listen = "{LISTEN}"',
        f'cert = "{certs / "server.pem"}"',
        f'key = "{certs / "server.key"}"',
    ]
    if client_certs != "none":
        lines.append(f'client_certs = "{client_certs}"')
        if client_ca:
            lines.append(f'client_ca = "{certs / "ca.pem"}"')
    if crl is not None:
        lines.append(f'client_crl = "{crl}"')
    return "\n".join(lines) + "\n" + extra


def tls_port(broker) -> int:
    for line in broker.stdout_lines:
        m = TLS_RE.match(line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no TLS listening line in {broker.stdout_lines}")


def context(certs: Path, device: str | None = None, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if device is not None:
        ctx.load_cert_chain(str(certs / f"{device}.pem"), str(certs / f"{device}.key"))
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def tls_socket(port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=server_hostname)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs") / "pki", "dev1", "dev2")


@pytest.fixture
def tls_broker(broker_factory, certs):
    """A broker with its plain listener and a TLS listener (client certificates optional)."""
    return broker_factory(raw_config=tls_config(certs, "optional"))


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_paho_over_tls_reaches_plain_subscribers(tls_broker, certs, version):
    topic = unique("tls")
    plain = Client(tls_broker.port, version=version)
    secure_sub = Client(tls_port(tls_broker), version=version, tls=context(certs))
    try:
        plain.subscribe(topic, 1)
        secure_sub.subscribe(topic, 1)
        secure = Client(tls_port(tls_broker), version=version, tls=context(certs))
        try:
            secure.publish(topic, b"over tls", qos=1)
            assert plain.get().payload == b"over tls"
            assert secure_sub.get().payload == b"over tls"
        finally:
            secure.close()
    finally:
        plain.close()
        secure_sub.close()


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_tls_versions_and_alpn(tls_broker, certs, tls_version):
    ctx = context(certs, version=tls_version)
    ctx.set_alpn_protocols(["mqtt"])
    with tls_socket(tls_port(tls_broker), ctx) as s:
        assert s.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[tls_version]
        assert s.selected_alpn_protocol() == "mqtt"
        r = RawClient.over(s, V5)
        r.connect(unique("c"))
        r.close()


def test_alpn_without_mqtt_is_refused(tls_broker, certs):
    ctx = context(certs)
    ctx.set_alpn_protocols(["h2"])
    with pytest.raises(ssl.SSLError, match="NO_APPLICATION_PROTOCOL|no application protocol"):
        tls_socket(tls_port(tls_broker), ctx).close()


def test_mosquitto_clients_over_tls_and_mutual_tls(tls_broker, certs):
    if not shutil.which("mosquitto_pub"):
        pytest.skip("mosquitto-clients not installed")
    port = str(tls_port(tls_broker))
    topic = unique("mosq")
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "localhost", "-p", port, "--cafile", str(certs / "ca.pem"),
         "-t", topic, "-C", "2", "-W", "10", "-V", "mqttv5"],
        stdout=subprocess.PIPE,
    )
    try:
        time.sleep(0.5)  # let the subscription land
        base = ["mosquitto_pub", "-h", "localhost", "-p", port, "--cafile", str(certs / "ca.pem"), "-t", topic, "-q", "1"]
        subprocess.run(base + ["-m", "server-auth"], check=True, timeout=10)
        subprocess.run(
            base + ["--cert", str(certs / "dev1.pem"), "--key", str(certs / "dev1.key"), "-m", "mutual"],
            check=True, timeout=10,
        )
        out, _ = sub.communicate(timeout=10)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert out.decode().split() == ["server-auth", "mutual"]


def test_required_client_certificate(broker_factory, certs, tmp_path):
    broker = broker_factory(raw_config=tls_config(certs, "require"))
    port = tls_port(broker)
    # Without a certificate: the handshake fails (TLS 1.3 reports it on first read).
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        s = tls_socket(port, context(certs))
        s.sendall(b"\x10\x00")
        if not s.recv(1):
            raise ConnectionResetError("closed")
    # A certificate from another CA: refused too.
    other = make_certs(tmp_path / "other", "dev1")
    stranger = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    stranger.load_cert_chain(str(other / "dev1.pem"), str(other / "dev1.key"))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        s = tls_socket(port, stranger)
        s.sendall(b"\x10\x00")
        if not s.recv(1):
            raise ConnectionResetError("closed")
    # The device's own certificate: in.
    c = Client(port, version=V5, tls=context(certs, "dev1"))
    c.close()
    broker.assert_alive()


def test_revoked_client_certificate_is_refused(broker_factory, certs, tmp_path):
    """A CRL from the CA revoking dev2: dev2 is refused, dev1 still gets in."""
    crl = tmp_path / "crl.pem"
    subprocess.run(
        [str(myriad_bin()), "ctl", "certs", "revoke", "--ca-dir", str(certs), "--cert", str(certs / "dev2.pem"),
         "--out", str(crl)],
        check=True, capture_output=True, timeout=30,
    )
    broker = broker_factory(raw_config=tls_config(certs, "require", crl=crl))
    port = tls_port(broker)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        s = tls_socket(port, context(certs, "dev2"))
        s.sendall(b"\x10\x00")
        if not s.recv(1):
            raise ConnectionResetError("closed")
    Client(port, version=V5, tls=context(certs, "dev1")).close()


def make_expired_cert(certs: Path, device: str, out: Path) -> Path:
    """A client certificate for `device` from the right CA whose validity ended
    in 2020 (`openssl ca` sets both dates; `ctl certs dev-ca` cannot)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.txt").write_text("")
    (out / "serial").write_text("1000\n")
    (out / "ca.cnf").write_text(
        "[ca]\ndefault_ca = dev\n[dev]\ndatabase = index.txt\nserial = serial\nnew_certs_dir = .\n"
        "default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n"
        "[client]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n"
    )
    run = dict(check=True, capture_output=True, timeout=30, cwd=out)
    subprocess.run(["openssl", "req", "-new", "-key", str(certs / f"{device}.key"), "-subj", f"/CN={device}",
                    "-out", "req.csr"], **run)
    subprocess.run(["openssl", "ca", "-batch", "-config", "ca.cnf", "-cert", str(certs / "ca.pem"),
                    "-keyfile", str(certs / "ca.key"), "-in", "req.csr", "-out", "expired.pem",
                    "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", "-extensions", "client",
                    "-notext"], **run)
    return out / "expired.pem"


def test_expired_client_certificate_is_refused(broker_factory, certs, tmp_path):
    """dev1's key with a certificate from the right CA that expired in 2020:
    the handshake fails and is counted; the valid certificate still gets in."""
    expired = make_expired_cert(certs, "dev1", tmp_path / "expired")
    broker = broker_factory(raw_config=tls_config(certs, "require"))
    port = tls_port(broker)
    stale = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    stale.load_cert_chain(str(expired), str(certs / "dev1.key"))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        s = tls_socket(port, stale)
        s.sendall(b"\x10\x00")
        if not s.recv(1):
            raise ConnectionResetError("closed")
    Client(port, version=V5, tls=context(certs, "dev1")).close()
    wait_for_handshakes(broker.api_port, 1, result="failed", reason="client_certificate")
    broker.assert_alive()


def test_plain_mqtt_and_garbage_on_the_tls_port(tls_broker, certs):
    """A plaintext CONNECT or random bytes on the TLS port get the connection
    closed; the broker and its other clients are untouched."""
    port = tls_port(tls_broker)
    topic = unique("calm")
    watcher = Client(tls_broker.port, version=V5)
    try:
        watcher.subscribe(topic, 0)
        for junk in [bytes.fromhex("101000044d5154540502003c000003636964"), os.urandom(4096), b"\x16\x03\x01\xff\xff" + b"\x00" * 64]:
            with socket.create_connection((HOST, port), timeout=5) as s:
                s.sendall(junk)
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass  # an alert, then end of stream
                except ConnectionResetError:
                    pass
        Client(port, version=V5, tls=context(certs)).publish(topic, b"still fine", qos=0)
        assert watcher.get().payload == b"still fine"
    finally:
        watcher.close()
    tls_broker.assert_alive()


def test_unfinished_handshake_is_closed_at_the_connect_timeout(tls_broker):
    """A client that opens a TLS connection and never finishes the handshake
    is closed after `connect_timeout_secs` (2 s here)."""
    with socket.create_connection((HOST, tls_port(tls_broker)), timeout=10) as s:
        s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more
        started = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - started < 8


def test_sighup_with_a_broken_file_keeps_the_old_certificates(broker_factory, certs, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(certs, live)
    broker = broker_factory(raw_config=tls_config(live))
    (live / "server.key").write_text("not a key\n")
    broker.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "TLS reload failed" not in broker.log_tail(200):
        assert time.monotonic() < deadline, broker.log_tail()
        time.sleep(0.1)
    Client(tls_port(broker), version=V311, tls=context(certs)).close()


RELOAD_TOKEN = "tls-reload-test-token-0123456789"


def ctl_tls_reload(api_port: int, token: str = RELOAD_TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    return subprocess.run(
        [str(myriad_bin()), "ctl", "--api", f"http://{HOST}:{api_port}", "--token", token, "--output", "json",
         "tls", "reload"],
        capture_output=True, text=True, timeout=30, env=env,
    )


@pytest.mark.parametrize("trigger", ["sighup", "api"])
def test_reload_swaps_the_certificate_and_keeps_connections(broker_factory, certs, tmp_path, trigger):
    """SIGHUP, or `myriad ctl tls reload` (POST /api/v1/tls/reload), reads the
    new files: new connections get the new certificate, the connection made
    before stays up and keeps receiving."""
    live = tmp_path / "live"
    shutil.copytree(certs, live)
    broker = broker_factory(raw_config=tls_config(live, extra=f'[api]\ntoken = "{RELOAD_TOKEN}"\n'))
    port = tls_port(broker)
    topic = unique("reload")
    old = Client(port, version=V5, tls=context(certs))
    try:
        old.subscribe(topic, 1)
        fresh = make_certs(tmp_path / "fresh")
        for name in ("server.pem", "server.key"):
            shutil.copy(fresh / name, live / name)
        if trigger == "sighup":
            broker.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "TLS certificates reloaded" not in broker.log_tail(200):
                assert time.monotonic() < deadline, broker.log_tail()
                time.sleep(0.1)
        else:
            assert Api(broker.api_port, None).call("POST", "/api/v1/tls/reload")[0] == 401
            done = ctl_tls_reload(broker.api_port)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout) == {"listeners": [{"listener": LISTEN, "reloaded": True}]}
        # New connections see the new certificate: the old CA no longer verifies it.
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_socket(port, context(certs)).close()
        newcomer = Client(port, version=V5, tls=context(fresh))
        try:
            newcomer.publish(topic, b"after reload", qos=1)
            # The connection made before the reload still works.
            assert old.get().payload == b"after reload"
        finally:
            newcomer.close()
    finally:
        old.close()
    broker.assert_alive()


def test_api_reload_with_a_broken_file_names_it_and_keeps_the_old_certificate(broker_factory, certs, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(certs, live)
    broker = broker_factory(raw_config=tls_config(live, extra=f'[api]\ntoken = "{RELOAD_TOKEN}"\n'))
    (live / "server.pem").write_text("not a certificate\n")
    status, body = Api(broker.api_port, RELOAD_TOKEN).call("POST", "/api/v1/tls/reload")
    assert status == 500, body
    assert str(live / "server.pem") in body["message"], body
    assert body["message"].startswith(f"TLS reload failed for listener {LISTEN}: cert "), body
    done = ctl_tls_reload(broker.api_port)
    assert done.returncode == 1
    assert str(live / "server.pem") in done.stderr, done.stderr
    # The certificate in force stays: the original CA still verifies new connections.
    Client(tls_port(broker), version=V311, tls=context(certs)).close()
    broker.assert_alive()


@pytest.mark.parametrize(
    "body,key",
    [
        ('kind = "tls"\nlisten = "127.0.0.1:0"\nkey = "k.pem"\n', "mqtt.listeners.cert"),
        ('kind = "tls"\nlisten = "127.0.0.1:0"\ncert = "c.pem"\n', "mqtt.listeners.key"),
        ('kind = "tcp"\nlisten = "127.0.0.1:0"\ncert = "c.pem"\n', "mqtt.listeners.kind"),
        ('kind = "quic"\nlisten = "127.0.0.1:0"\n', "kind"),
        ('kind = "tls"\nlisten = "127.0.0.1:0"\ncert = "missing.pem"\nkey = "missing.key"\n', "mqtt.listeners[0]"),
        ('kind = "tls"\nlisten = "127.0.0.1:0"\ncert = "c.pem"\nkey = "k.pem"\nclient_crl = "crl.pem"\n',
         "mqtt.listeners.client_crl"),
        ('kind = "tcp"\nlisten = ""\n', "mqtt.listeners.listen"),
    ],
    ids=["no-cert", "no-key", "tcp-with-cert", "unknown-kind", "missing-file",
         "crl-without-ca", "empty-listen"],
)
def test_bad_listener_config_stops_startup_naming_the_key(tmp_path, body, key):
    cfg = tmp_path / "myriad.toml"
    cfg.write_text("[[mqtt.listeners]]\n" + body)
    res = subprocess.run(
        [str(myriad_bin()), "serve", "--config", str(cfg), "--listen", f"{HOST}:0", "--api-listen", f"{HOST}:0"],
        cwd=tmp_path, capture_output=True, timeout=20,
    )
    assert res.returncode != 0
    assert key in res.stderr.decode(), res.stderr.decode()[-2000:]


def test_bad_pem_names_the_file(tmp_path, certs):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    cfg = tmp_path / "myriad.toml"
    cfg.write_text(
        f'[[mqtt.listeners]]\nkind = "tls"\nlisten = "127.0.0.1:0"\ncert = "{bad}"\nkey = "{certs / "server.key"}"\n'
    )
    res = subprocess.run(
        [str(myriad_bin()), "serve", "--config", str(cfg), "--listen", f"{HOST}:0", "--api-listen", f"{HOST}:0"],
        cwd=tmp_path, capture_output=True, timeout=20,
    )
    assert res.returncode != 0
    err = res.stderr.decode()
    assert "mqtt.listeners[0]" in err and "cert" in err and str(bad) in err, err[-2000:]


HANDSHAKES = "myriad_tls_handshakes_total"


def wait_for_handshakes(api_port: int, expected: float, **labels: str) -> list[str]:
    """Reads /metrics (for up to 10 s) until the TLS listener's handshake
    counter with `labels` is `expected`; asserts it and returns the lines."""
    deadline = time.monotonic() + 10
    while True:
        lines = metric_lines(api_port)
        got = metric(lines, HANDSHAKES, listener=LISTEN, **labels)
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == expected, [line for line in lines if HANDSHAKES in line]
    return lines


def metric_lines(api_port: int) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=10) as resp:
        return resp.read().decode().splitlines()


def metric(lines: list[str], name: str, **labels: str) -> float:
    """The value of `name` whose labels include `labels` (0 if absent)."""
    for line in lines:
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_handshake_metrics_and_certificate_expiry(broker_factory, certs, tmp_path):
    broker = broker_factory(raw_config=tls_config(certs, "require"))
    port = tls_port(broker)
    Client(port, version=V5, tls=context(certs, "dev1")).close()
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # no client certificate
        s = tls_socket(port, context(certs))
        s.sendall(b"\x10\x00")
        if not s.recv(1):
            raise ConnectionResetError("closed")
    with socket.create_connection((HOST, port), timeout=5) as s:  # not TLS at all
        s.sendall(bytes.fromhex("101000044d5154540502003c000003636964"))
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
    name = "myriad_tls_handshakes_total"
    deadline = time.monotonic() + 10
    while True:
        lines = metric_lines(broker.api_port)
        got = (
            metric(lines, name, listener=LISTEN, result="ok"),
            metric(lines, name, listener=LISTEN, result="failed", reason="client_certificate"),
            metric(lines, name, listener=LISTEN, result="failed", reason="malformed"),
        )
        if got == (1, 1, 1) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == (1, 1, 1), [line for line in lines if name in line]
    # Every MQTT handshake counted carries the listener's address, as the expiry gauge does.
    counted = [x for x in lines if x.startswith(name + "{")]
    assert counted and all(f'listener="{LISTEN}"' in x for x in counted), counted
    expiry = metric(lines, "myriad_tls_certificate_expiry_timestamp_seconds", listener=LISTEN)
    assert expiry > time.time() + 86400, [line for line in lines if "expiry" in line]


def test_messages_larger_than_the_tls_send_buffer(tls_broker, certs):
    """A 300 KiB message to a TLS subscriber passes rustls's 64 KiB send
    buffer several times over: it arrives whole."""
    topic = unique("big")
    payload = os.urandom(300 * 1024)
    sub = Client(tls_port(tls_broker), version=V5, tls=context(certs))
    pub = Client(tls_port(tls_broker), version=V311, tls=context(certs))
    try:
        sub.subscribe(topic, 1)
        pub.publish(topic, payload, qos=1)
        assert sub.get(timeout=10).payload == payload
    finally:
        pub.close()
        sub.close()


# rustls refuses a handshake message whose body is longer than this (its
# MAX_HANDSHAKE_SIZE, 0xffff): docs/limits.md "TLS connections".
MAX_HANDSHAKE_BODY = 0xFFFF
# Received TLS bytes the broker holds without a whole record or handshake
# message (MAX_TLS_RECEIVE in shell/transport.rs).
MAX_TLS_RECEIVE = 96 * 1024


def client_hello(body_len: int) -> bytes:
    """A TLS 1.3 ClientHello (x25519, ECDSA P-256 signatures) whose body is
    exactly `body_len` bytes, filled up with a padding extension."""

    def ext(kind: int, data: bytes) -> bytes:
        return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data

    extensions = (
        ext(43, b"\x02\x03\x04")  # supported_versions: TLS 1.3
        + ext(10, b"\x00\x02\x00\x1d")  # supported_groups: x25519
        + ext(13, b"\x00\x04\x04\x03\x08\x04")  # signature_algorithms
        + ext(51, b"\x00\x24\x00\x1d\x00\x20" + os.urandom(32))  # key_share: x25519
    )
    head = b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32) + b"\x00\x06\x13\x01\x13\x02\x13\x03" + b"\x01\x00"
    pad = body_len - len(head) - 2 - len(extensions) - 4
    assert 0 <= pad
    extensions += ext(21, bytes(pad))  # padding
    body = head + len(extensions).to_bytes(2, "big") + extensions
    assert len(body) == body_len
    return b"\x01" + body_len.to_bytes(3, "big") + body


def records(message: bytes, size: int = 16384) -> bytes:
    """`message` as TLS handshake records of at most `size` bytes each."""
    out = b""
    for at in range(0, len(message), size):
        part = message[at : at + size]
        out += b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
    return out


def first_record_type(port: int, data: bytes) -> tuple[int | None, float]:
    """Sends `data` on a fresh connection; returns the content type of the
    first record the broker answers with (None: closed without one) and
    how long the answer took."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        started = time.monotonic()
        try:
            s.sendall(data)
            head = s.recv(5)
        except (ConnectionResetError, BrokenPipeError):
            head = b""
        return (head[0] if head else None), time.monotonic() - started


def test_handshake_message_size_limit(tls_broker, certs):
    """A ClientHello of exactly 64 KiB - 1 body bytes (rustls's limit) gets a
    ServerHello. One of 64 KiB and one of 64 KiB + 1 are refused as soon as
    the broker reads their length: closed without an answer (rustls sends
    no alert for it), well before the 2 s connect timeout, and counted as
    malformed; the broker goes on serving others."""
    port = tls_port(tls_broker)
    answer, _ = first_record_type(port, records(client_hello(MAX_HANDSHAKE_BODY)))
    assert answer == 0x16  # a handshake record: the ServerHello
    for body_len in (MAX_HANDSHAKE_BODY + 1, 64 * 1024 + 1):
        answer, took = first_record_type(port, records(client_hello(body_len)))
        assert (answer, took < 1.5) == (None, True), (body_len, answer, took)
    Client(port, version=V5, tls=context(certs)).close()
    lines = wait_for_handshakes(tls_broker.api_port, 2, result="failed", reason="malformed")
    assert metric(lines, HANDSHAKES, listener=LISTEN, result="ok") == 1
    tls_broker.assert_alive()


def test_received_bytes_without_a_whole_message_are_bounded(tls_broker, certs):
    """A ClientHello trickled in 1-byte records: the broker holds up to
    MAX_TLS_RECEIVE bytes of it and waits; one byte more and it closes the
    connection (counted as malformed) and goes on serving others."""
    port = tls_port(tls_broker)
    trickle = records(client_hello(MAX_HANDSHAKE_BODY), size=1)[:MAX_TLS_RECEIVE + 1]
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(trickle[:MAX_TLS_RECEIVE])
        s.settimeout(0.7)
        with pytest.raises(socket.timeout):  # at the limit: still waiting for the rest
            s.recv(1)
        s.settimeout(5)
        s.sendall(trickle[MAX_TLS_RECEIVE:])
        try:
            assert s.recv(1) == b""  # one past: closed, no answer
        except ConnectionResetError:
            pass
    Client(port, version=V5, tls=context(certs)).close()
    wait_for_handshakes(tls_broker.api_port, 1, result="failed", reason="malformed")
    tls_broker.assert_alive()
