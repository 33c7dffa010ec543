"""Device identity from X.509 certificates (issue 16).

A TLS listener with `client_certs = "optional"` and no `client_ca` of its own
trusts only what the registry holds: device certificates pinned by SHA-256
fingerprint (self-signed ones included) and registered CAs (with a CRL each).
A certificate names its device by its CN (or a URI SAN, configurable); the
device must be registered and enabled, and the client id must be its id.
Revoking a certificate, changing a CA's CRL or removing the CA closes the live
connection that used it.

Clients: paho-mqtt (3.1.1 and 5.0), mosquitto_pub, raw `ssl` sockets; the API
and `myriad ctl`. Certificates: `myriad ctl certs dev-ca` and openssl.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from helpers import V5, V311, Api, Broker, Client, json_ctl, myriad_bin, unique
from test_tls import (
    context,
    make_certs,
    make_expired_cert,
    metric,
    metric_lines,
    tls_config,
    tls_port,
    tls_socket,
)

TOKEN = "cert-identity-token"
NOT_AUTHORIZED = 0x87
BAD_CLIENT_ID = 0x85


def listener_config(certs: Path, extra: str = "", client_ca: bool = False, anonymous: bool = False) -> str:
    """A TLS listener asking for optional client certificates (trusting only
    the registry unless `client_ca`), anonymous clients off, a known API token."""
    auth = f"[auth]\nallow_anonymous = {'true' if anonymous else 'false'}\n{extra}\n[api]\ntoken = \"{TOKEN}\"\n"
    return tls_config(certs, "optional", extra=auth, client_ca=client_ca)


def self_signed(out: Path, name: str, cn: str, uri: str | None = None, days: int = 30) -> tuple[Path, Path]:
    """A self-signed EC certificate with subject CN `cn` (and a URI SAN)."""
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / f"{name}.pem", out / f"{name}.key"
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN={cn}",
           "-addext", "basicConstraints=critical,CA:FALSE"]
    if uri is not None:
        cmd += ["-addext", f"subjectAltName=URI:{uri}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    return cert, key


def fingerprint(cert: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    return out.strip().split("=", 1)[1].replace(":", "").lower()


def client_context(certs: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = context(certs)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def handshake_refused(port: int, ctx: ssl.SSLContext) -> bool:
    """Whether the server refuses the TLS handshake (TLS 1.3 reports it on the
    first read): a CONNECT after a handshake the server accepted gets a CONNACK
    (a refusal, for this anonymous probe, but an answer)."""
    connect = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05probe"
    try:
        s = tls_socket(port, ctx)
        s.sendall(connect)
        data = s.recv(1)
        s.close()
        return not data
    except (ssl.SSLError, ConnectionError, OSError):
        return True


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """The listener's server certificate (and a CA the listener does not trust by itself)."""
    return make_certs(tmp_path_factory.mktemp("pki") / "server", "cdev1", "cdev2", "ghost")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    """A second CA, registered through the API in some tests."""
    return make_certs(tmp_path_factory.mktemp("pki") / "other", "odev1", "odev2", "odev3", "oghost", "odis")


@pytest.fixture
def cert_broker(broker_factory, pki):
    return broker_factory(raw_config=listener_config(pki))


@pytest.fixture
def api(cert_broker) -> Api:
    return Api(cert_broker.api_port, TOKEN)


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_a_pinned_self_signed_certificate_logs_its_device_in(cert_broker, api, pki, tmp_path, version):
    dev = unique("pin")
    api.ok("POST", "/api/v1/devices", {"id": dev}, expect=201)
    cert, key = self_signed(tmp_path, "d", dev)
    ctx = client_context(pki, cert, key)
    port = tls_port(cert_broker)
    assert handshake_refused(port, ctx), "a certificate nobody registered must not get through TLS"
    added = api.ok("POST", f"/api/v1/devices/{dev}/certificates", {"pem": cert.read_text()}, expect=201)
    assert added["fingerprint"] == fingerprint(cert)
    assert added["device"] == dev and added["status"] == "active" and f"CN={dev}" in added["subject"]
    listed = api.ok("GET", f"/api/v1/devices/{dev}/certificates")["certificates"]
    assert [c["fingerprint"] for c in listed] == [added["fingerprint"]]
    with Client(port, client_id=dev, version=version, tls=ctx) as c:
        assert c.connected
        # It is the device: its own namespace, not another device's.
        assert c.subscribe(f"devices/{dev}/cmd", qos=1) == [1]
        assert c.subscribe(f"devices/{unique('x')}/cmd", qos=1)[0] >= 0x80
    # The client id must be the device id.
    with Client(port, client_id=unique("other"), version=version, tls=ctx, expect_rc=BAD_CLIENT_ID) as c:
        assert not c.connected
    # A user name other than the device's leaves it to the password: refused.
    with Client(port, client_id=dev, username=unique("u"), password="x", version=version, tls=ctx,
                expect_rc=None) as c:
        assert not c.connected
    lines = metric_lines(cert_broker.api_port)
    assert metric(lines, "myriad_certificate_logins_total", result="accepted") >= 1
    assert metric(lines, "myriad_certificate_logins_total", result="refused", reason="client_id") >= 1


def test_registered_ca_certificates_identify_registered_devices(cert_broker, api, pki, other_ca):
    port = tls_port(cert_broker)
    odev1 = client_context(pki, other_ca / "odev1.pem", other_ca / "odev1.key")
    assert handshake_refused(port, odev1), "the CA is not trusted before it is registered"
    api.ok("POST", "/api/v1/devices", {"id": "odev1"}, expect=201)
    api.ok("POST", "/api/v1/devices", {"id": "odis", "enabled": False}, expect=201)
    ca = api.ok("POST", "/api/v1/cas", {"pem": (other_ca / "ca.pem").read_text()}, expect=201)
    assert ca["fingerprint"] == fingerprint(other_ca / "ca.pem") and ca["has_crl"] is False
    assert [c["fingerprint"] for c in api.ok("GET", "/api/v1/cas")["cas"]] == [ca["fingerprint"]]
    for version in (V311, V5):
        with Client(port, client_id="odev1", version=version, tls=odev1) as c:
            assert c.connected
    # A certificate from the CA for a device the registry does not know, and one for a disabled device.
    for name, reason in (("oghost", "unregistered"), ("odis", "disabled")):
        ctx = client_context(pki, other_ca / f"{name}.pem", other_ca / f"{name}.key")
        with Client(port, client_id=name, version=V5, tls=ctx, expect_rc=NOT_AUTHORIZED) as c:
            assert not c.connected
        assert metric(metric_lines(cert_broker.api_port), "myriad_certificate_logins_total",
                      result="refused", reason=reason) >= 1
    # The listener's own dev-ca devices are still strangers (no client_ca on it).
    assert handshake_refused(port, client_context(pki, pki / "cdev1.pem", pki / "cdev1.key"))
    cert_broker.assert_alive()


def test_with_anonymous_clients_allowed_an_unregistered_name_is_anonymous(broker_factory, pki):
    """As an unknown user name is: let in, kept out of device topics; a
    disabled device's certificate is still refused."""
    broker = broker_factory(raw_config=listener_config(pki, client_ca=True, anonymous=True))
    api = Api(broker.api_port, TOKEN)
    api.ok("POST", "/api/v1/devices", {"id": "cdev2", "enabled": False}, expect=201)
    port = tls_port(broker)
    with Client(port, client_id=unique("anon"), version=V5, tls=context(pki, "ghost")) as c:
        assert c.connected
        assert c.subscribe("devices/cdev1/#", qos=1)[0] >= 0x80
    with Client(port, client_id="cdev2", version=V5, tls=context(pki, "cdev2"), expect_rc=NOT_AUTHORIZED) as c:
        assert not c.connected
    lines = metric_lines(broker.api_port)
    assert metric(lines, "myriad_certificate_logins_total", result="anonymous", reason="unregistered") >= 1
    assert metric(lines, "myriad_certificate_logins_total", result="refused", reason="disabled") >= 1


def test_mosquitto_pub_with_a_registered_ca_certificate(cert_broker, api, pki, other_ca):
    if not shutil.which("mosquitto_pub"):
        pytest.skip("mosquitto-clients not installed")
    api.ok("POST", "/api/v1/devices", {"id": "odev2"}, expect=201)
    api.ok("POST", "/api/v1/cas", {"pem": (other_ca / "ca.pem").read_text()}, expect=201)
    port = str(tls_port(cert_broker))
    base = ["mosquitto_pub", "-h", "localhost", "-p", port, "--cafile", str(pki / "ca.pem"), "-q", "1",
            "-m", "hello", "-V", "mqttv311"]
    ok = subprocess.run(base + ["-i", "odev2", "-t", "devices/odev2/telemetry", "--cert",
                                str(other_ca / "odev2.pem"), "--key", str(other_ca / "odev2.key")],
                        capture_output=True, text=True, timeout=20)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(base + ["-i", "oghost", "-t", "devices/oghost/telemetry", "--cert",
                                     str(other_ca / "oghost.pem"), "--key", str(other_ca / "oghost.key")],
                             capture_output=True, text=True, timeout=20)
    assert refused.returncode != 0
    assert "not authori" in (refused.stderr + refused.stdout).lower(), refused


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_revoking_a_pinned_certificate_closes_the_connection_and_refuses_it(cert_broker, api, pki, tmp_path,
                                                                          version):
    dev = unique("rev")
    api.ok("POST", "/api/v1/devices", {"id": dev}, expect=201)
    cert, key = self_signed(tmp_path, "d", dev)
    spare, spare_key = self_signed(tmp_path, "spare", dev)
    added = api.ok("POST", f"/api/v1/devices/{dev}/certificates", {"pem": cert.read_text()}, expect=201)
    api.ok("POST", f"/api/v1/devices/{dev}/certificates", {"pem": spare.read_text()}, expect=201)
    port = tls_port(cert_broker)
    ctx = client_context(pki, cert, key)
    c = Client(port, client_id=dev, version=version, tls=ctx)
    try:
        # Revoking the other certificate leaves this connection alone.
        other = api.ok("DELETE", f"/api/v1/devices/{dev}/certificates/{fingerprint(spare)}")
        assert other["disconnected"] is False and other["certificate"]["status"] == "revoked"
        revoked = api.ok("DELETE", f"/api/v1/devices/{dev}/certificates/{added['fingerprint']}")
        assert revoked["disconnected"] is True
        rc, _ = c.wait_disconnected(5.0)
        if version == V5:
            assert rc == NOT_AUTHORIZED
    finally:
        c.close()
    assert handshake_refused(port, ctx)
    assert handshake_refused(port, client_context(pki, spare, spare_key))
    statuses = {c["fingerprint"]: c["status"] for c in api.ok("GET", f"/api/v1/devices/{dev}/certificates")
                ["certificates"]}
    assert set(statuses.values()) == {"revoked"} and len(statuses) == 2
    # A revoked certificate cannot be registered again.
    status, body = api.call("POST", f"/api/v1/devices/{dev}/certificates", {"pem": cert.read_text()})
    assert status == 409 and "revoked" in body["message"], body


def test_a_revoked_ca_issued_certificate_stays_refused(cert_broker, api, pki, other_ca):
    """Pinning then revoking a certificate a registered CA issued: the CA alone no longer lets it in."""
    api.ok("POST", "/api/v1/devices", {"id": "odev3"}, expect=201)
    api.ok("POST", "/api/v1/cas", {"pem": (other_ca / "ca.pem").read_text()}, expect=201)
    pem = (other_ca / "odev3.pem").read_text()
    fp = api.ok("POST", "/api/v1/devices/odev3/certificates", {"pem": pem}, expect=201)["fingerprint"]
    port = tls_port(cert_broker)
    ctx = client_context(pki, other_ca / "odev3.pem", other_ca / "odev3.key")
    Client(port, client_id="odev3", version=V5, tls=ctx).close()
    api.ok("DELETE", f"/api/v1/devices/odev3/certificates/{fp}")
    with Client(port, client_id="odev3", version=V5, tls=ctx, expect_rc=NOT_AUTHORIZED) as c:
        assert not c.connected
    assert metric(metric_lines(cert_broker.api_port), "myriad_certificate_logins_total",
                  result="refused", reason="revoked") >= 1


def test_a_new_crl_and_removing_the_ca_close_the_connections_they_revoke(broker_factory, pki, tmp_path):
    ca_dir = make_certs(tmp_path / "ca2", "crl1", "crl2", "crl3")
    broker = broker_factory(raw_config=listener_config(pki))
    api = Api(broker.api_port, TOKEN)
    for dev in ("crl1", "crl2", "crl3"):
        api.ok("POST", "/api/v1/devices", {"id": dev}, expect=201)
    ca = api.ok("POST", "/api/v1/cas", {"pem": (ca_dir / "ca.pem").read_text()}, expect=201)["fingerprint"]
    port = tls_port(broker)
    ctxs = {d: client_context(pki, ca_dir / f"{d}.pem", ca_dir / f"{d}.key") for d in ("crl1", "crl2", "crl3")}
    clients = {d: Client(port, client_id=d, version=V5, tls=ctxs[d]) for d in ("crl1", "crl2")}
    try:
        crl = tmp_path / "crl.pem"
        subprocess.run([str(myriad_bin()), "ctl", "certs", "revoke", "--ca-dir", str(ca_dir), "--cert",
                        str(ca_dir / "crl1.pem"), "--out", str(crl)], check=True, capture_output=True, timeout=30)
        changed = api.ok("PUT", f"/api/v1/cas/{ca}/crl", {"crl": crl.read_text()})
        assert changed["disconnected"] == 1 and changed["ca"]["has_crl"] and changed["ca"]["crl_revoked"] == 1
        rc, _ = clients["crl1"].wait_disconnected(5.0)
        assert rc == NOT_AUTHORIZED
        assert clients["crl2"].connected
        assert handshake_refused(port, ctxs["crl1"])
        Client(port, client_id="crl3", version=V311, tls=ctxs["crl3"]).close()
        removed = api.ok("DELETE", f"/api/v1/cas/{ca}")
        assert removed["disconnected"] == 1
        rc, _ = clients["crl2"].wait_disconnected(5.0)
        assert rc == NOT_AUTHORIZED
        assert handshake_refused(port, ctxs["crl3"])
    finally:
        for c in clients.values():
            c.close()
    broker.assert_alive()


def test_bad_pem_gets_a_400_naming_what_is_wrong(cert_broker, api, pki, other_ca, tmp_path):
    dev = unique("bad")
    api.ok("POST", "/api/v1/devices", {"id": dev}, expect=201)
    mine, _ = self_signed(tmp_path, "mine", dev)
    theirs, _ = self_signed(tmp_path, "theirs", unique("someone"))
    expired = make_expired_cert(pki, "cdev1", tmp_path / "expired")
    crl = tmp_path / "crl.pem"
    subprocess.run([str(myriad_bin()), "ctl", "certs", "revoke", "--ca-dir", str(pki), "--cert",
                    str(pki / "cdev1.pem"), "--out", str(crl)], check=True, capture_output=True, timeout=30)
    cert_path = f"/api/v1/devices/{dev}/certificates"
    cases = [
        (cert_path, {"pem": "hello"}, "not a PEM CERTIFICATE"),
        (cert_path, {"pem": mine.read_text() + mine.read_text()}, "2 PEM blocks"),
        (cert_path, {"pem": (pki / "cdev1.key").read_text()}, "PRIVATE KEY"),
        (cert_path, {"pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "not valid DER"),
        (cert_path, {"pem": (other_ca / "ca.pem").read_text()}, "CA certificate"),
        (cert_path, {"pem": theirs.read_text()}, "names device"),
        (cert_path, {"pem": expired.read_text()}, "expired"),
        (cert_path, {"pem": "x" * (64 * 1024 + 1)}, "longer than 65536 bytes"),
        ("/api/v1/cas", {"pem": mine.read_text()}, "not a CA certificate"),
        ("/api/v1/cas", {"pem": (other_ca / "ca.pem").read_text(), "crl": crl.read_text()},
         "signature does not verify"),  # dev-ca CAs share their subject: the signature tells them apart
        ("/api/v1/cas", {"pem": (other_ca / "ca.pem").read_text(), "crl": mine.read_text()}, "X509 CRL"),
        (f"/api/v1/devices/{dev}/certificates/abc", None, "64 hex digits"),
    ]
    for path, body, needle in cases:
        method = "DELETE" if body is None else "POST"
        status, answer = api.call(method, path, body)
        assert status == 400, (path, needle, status, answer)
        assert needle in answer["message"], (needle, answer)
    # Nothing was stored by the refusals.
    assert api.ok("GET", cert_path)["certificates"] == []
    assert api.ok("GET", "/api/v1/cas")["cas"] == []
    status, _ = api.call("POST", f"/api/v1/devices/{unique('nope')}/certificates", {"pem": mine.read_text()})
    assert status == 404
    status, _ = api.call("DELETE", f"/api/v1/cas/{'0' * 64}")
    assert status == 404
    cert_broker.assert_alive()


def test_ctl_registers_lists_and_revokes(cert_broker, api, pki, other_ca, tmp_path):
    ctl = json_ctl(cert_broker.api_port, TOKEN)

    dev = unique("ctl")
    api.ok("POST", "/api/v1/devices", {"id": dev}, expect=201)
    cert, key = self_signed(tmp_path, "d", dev)
    added = ctl("device-certs", "add", dev, str(cert))
    assert added.returncode == 0, added.stderr
    fp = json.loads(added.stdout)["fingerprint"]
    assert fp == fingerprint(cert)
    listed = ctl("device-certs", "list", dev)
    assert [c["fingerprint"] for c in json.loads(listed.stdout)["certificates"]] == [fp]
    with Client(tls_port(cert_broker), client_id=dev, version=V5, tls=client_context(pki, cert, key)) as c:
        assert c.connected
        revoked = ctl("device-certs", "revoke", dev, fp)
        assert revoked.returncode == 0 and json.loads(revoked.stdout)["disconnected"] is True, revoked
    bad = ctl("device-certs", "add", dev, str(pki / "cdev1.key"))
    assert bad.returncode != 0 and "PRIVATE KEY" in bad.stderr, bad
    ca = ctl("cas", "add", str(other_ca / "ca.pem"))
    assert ca.returncode == 0, ca.stderr
    ca_fp = json.loads(ca.stdout)["fingerprint"]
    assert [c["fingerprint"] for c in json.loads(ctl("cas", "list").stdout)["cas"]] == [ca_fp]
    assert json.loads(ctl("cas", "set-crl", ca_fp, "--remove").stdout)["ca"]["has_crl"] is False
    assert ctl("cas", "delete", ca_fp).returncode == 0
    assert json.loads(ctl("cas", "list").stdout)["cas"] == []


def test_san_uri_identity(broker_factory, pki, tmp_path):
    broker = broker_factory(raw_config=listener_config(pki, extra='certificate_identity = "san_uri"'))
    api = Api(broker.api_port, TOKEN)
    dev = unique("san")
    api.ok("POST", "/api/v1/devices", {"id": dev}, expect=201)
    by_uri, key = self_signed(tmp_path, "uri", "any-name", uri=f"urn:myriad:device:{dev}")
    cn_only, _ = self_signed(tmp_path, "cn", dev)
    status, body = api.call("POST", f"/api/v1/devices/{dev}/certificates", {"pem": cn_only.read_text()})
    assert status == 400 and "URI SAN" in body["message"], body
    api.ok("POST", f"/api/v1/devices/{dev}/certificates", {"pem": by_uri.read_text()}, expect=201)
    with Client(tls_port(broker), client_id=dev, version=V5, tls=client_context(pki, by_uri, key)) as c:
        assert c.connected


def test_bad_identity_config_stops_startup_naming_the_key(tmp_path, pki):
    for extra, key in (('certificate_identity = "email"', "certificate_identity"),
                       ('certificate_uri_prefix = ""', "auth.certificate_uri_prefix")):
        cfg = tmp_path / "myriad.toml"
        cfg.write_text(listener_config(pki, extra=extra))
        proc = subprocess.run([str(myriad_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
                               "--api-listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0
        assert key in proc.stderr, proc.stderr


def test_registrations_survive_a_kill9_restart_and_the_listener_ca_still_works(pki, other_ca, tmp_path):
    """The registry's CAs and pins are loaded at start, after a kill -9 too; a
    listener's own client_ca identifies devices beside them."""
    node = tmp_path / "node"
    config = listener_config(pki, client_ca=True)
    first = Broker(node, raw_config=config).start()
    try:
        api = Api(first.api_port, TOKEN)
        dev = unique("keep")
        for d in (dev, "odev1", "cdev2"):
            api.ok("POST", "/api/v1/devices", {"id": d}, expect=201)
        cert, key = self_signed(tmp_path, "d", dev)
        api.ok("POST", f"/api/v1/devices/{dev}/certificates", {"pem": cert.read_text()}, expect=201)
        api.ok("POST", "/api/v1/cas", {"pem": (other_ca / "ca.pem").read_text()}, expect=201)
        first.proc.kill()  # SIGKILL, our own process
        first.proc.wait(timeout=10)
    finally:
        first.stop()
    second = Broker(node, raw_config=config).start()
    try:
        port = tls_port(second)
        with Client(port, client_id=dev, version=V5, tls=client_context(pki, cert, key)) as c:
            assert c.connected
        with Client(port, client_id="odev1", version=V5,
                    tls=client_context(pki, other_ca / "odev1.pem", other_ca / "odev1.key")) as c:
            assert c.connected
        with Client(port, client_id="cdev2", version=V311, tls=context(pki, "cdev2")) as c:
            assert c.connected
    finally:
        second.stop()
