"""Interoperability with the Eclipse Mosquitto command-line clients (Debian package
mosquitto-clients): mosquitto_pub / mosquitto_sub, MQTT 3.1, 3.1.1 and 5.0."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from helpers import HOST, V5, V311

if not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")):
    if os.environ.get("CI"):
        raise RuntimeError("mosquitto-clients is not installed (.ci/run installs it)")
    pytest.skip("mosquitto-clients not installed (apt-get install mosquitto-clients)", allow_module_level=True)

VERSIONS = ["mqttv31", "mqttv311", "mqttv5"]
pv = pytest.mark.parametrize("ver", VERSIONS)


def pub(port: int, ver: str, topic: str, *args: str, stdin: bytes | None = None) -> None:
    cmd = ["mosquitto_pub", "-h", HOST, "-p", str(port), "-V", ver, "-t", topic, *args]
    res = subprocess.run(cmd, input=stdin, capture_output=True, timeout=15)
    assert res.returncode == 0, f"{cmd}: rc={res.returncode} {res.stderr!r}"


class Sub:
    """mosquitto_sub in the background with -d, so we know when its SUBACK arrived."""

    def __init__(self, port: int, ver: str, topic: str, *args: str):
        # stdbuf: mosquitto_sub's stdout is block-buffered on a pipe; we read it line by line
        self.cmd = ["stdbuf", "-oL", "mosquitto_sub", "-h", HOST, "-p", str(port), "-V", ver, "-t", topic, "-v", "-d", *args]
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self.subscribed = threading.Event()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        assert self.subscribed.wait(10), f"mosquitto_sub never got a SUBACK: {self.lines}"

    def _read(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.lines.append(line)
            if "received SUBACK" in line:
                self.subscribed.set()
        self.subscribed.set()

    def wait(self, timeout: float = 15) -> tuple[int, list[str]]:
        """Exit code and the message lines ("topic payload")."""
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)
            raise AssertionError(f"mosquitto_sub did not exit: {self.lines}") from None
        self.t.join(5)
        debug = ("Client ", "Subscribed (mid", "Timed out")
        msgs = [line for line in self.lines if line.strip() and not line.startswith(debug)]
        return rc, msgs

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


@pytest.fixture
def subs():
    made: list[Sub] = []

    def make(*a, **kw) -> Sub:
        s = Sub(*a, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()


@pv
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub(port, subs, uid, ver, qos):
    s = subs(port, ver, f"{uid}/m", "-q", str(qos), "-C", "1", "-W", "10")
    pub(port, ver, f"{uid}/m", "-q", str(qos), "-m", f"hello qos{qos}")
    rc, msgs = s.wait()
    assert rc == 0, s.lines
    assert msgs == [f"{uid}/m hello qos{qos}"]


@pv
def test_retained(port, subs, uid, ver):
    pub(port, ver, f"{uid}/r", "-q", "1", "-r", "-m", "kept")
    s = subs(port, ver, f"{uid}/r", "-C", "1", "-W", "10")
    rc, msgs = s.wait()
    assert (rc, msgs) == (0, [f"{uid}/r kept"])
    # clear it with an empty retained message
    pub(port, ver, f"{uid}/r", "-q", "1", "-r", "-n")
    s = subs(port, ver, f"{uid}/r", "-C", "1", "-W", "1")
    rc, msgs = s.wait()
    assert msgs == [], msgs
    assert rc != 0, "timed out with no message"


@pv
def test_retained_only_flag(port, subs, uid, ver):
    """--retained-only with -W: receives the stored message, not live ones."""
    pub(port, ver, f"{uid}/ro", "-r", "-m", "stored")
    s = subs(port, ver, f"{uid}/ro", "--retained-only", "-C", "1", "-W", "10")
    rc, msgs = s.wait()
    assert (rc, msgs) == (0, [f"{uid}/ro stored"])


@pv
def test_count_limit(port, subs, uid, ver):
    s = subs(port, ver, f"{uid}/c", "-q", "1", "-C", "3", "-W", "10")
    pub(port, ver, f"{uid}/c", "-q", "1", "-l", stdin=b"one\ntwo\nthree\nfour\nfive\n")
    rc, msgs = s.wait()
    assert rc == 0
    assert msgs == [f"{uid}/c one", f"{uid}/c two", f"{uid}/c three"]


@pv
def test_timeout_without_messages(port, subs, uid, ver):
    start = time.monotonic()
    s = subs(port, ver, f"{uid}/never", "-C", "1", "-W", "1")
    rc, msgs = s.wait()
    assert msgs == []
    assert rc != 0
    assert time.monotonic() - start < 8


@pv
def test_wildcards(port, subs, uid, ver):
    s = subs(port, ver, f"{uid}/+/temp", "-C", "2", "-W", "10")
    pub(port, ver, f"{uid}/a/temp", "-m", "1")
    pub(port, ver, f"{uid}/a/hum", "-m", "x")
    pub(port, ver, f"{uid}/b/temp", "-m", "2")
    rc, msgs = s.wait()
    assert (rc, msgs) == (0, [f"{uid}/a/temp 1", f"{uid}/b/temp 2"])


def test_every_version_pair(port, subs, uid):
    """One subscriber per version (-V mqttv31, mqttv311, mqttv5); each publisher version reaches all three."""
    for pub_ver in VERSIONS:
        listeners = {ver: subs(port, ver, f"{uid}/all", "-q", "1", "-C", "1", "-W", "10") for ver in VERSIONS}
        pub(port, pub_ver, f"{uid}/all", "-q", "1", "-m", f"from {pub_ver}")
        for ver, s in listeners.items():
            rc, msgs = s.wait()
            assert (rc, msgs) == (0, [f"{uid}/all from {pub_ver}"]), (pub_ver, ver, s.lines)


def test_v31_long_client_id_refused(port, uid):
    """3.1 client identifiers are 1 to 23 bytes: mosquitto_pub reports the refusal."""
    cmd = ["mosquitto_pub", "-h", HOST, "-p", str(port), "-V", "mqttv31", "-i", "x" * 24, "-t", f"{uid}/n", "-m", "x"]
    res = subprocess.run(cmd, capture_output=True, timeout=15)
    assert res.returncode != 0
    assert b"identifier rejected" in res.stderr.lower(), res.stderr


def test_v5_user_property_and_content_type_to_paho(port, client, uid):
    c = client(port, V5)
    c.subscribe(f"{uid}/p", 1)
    pub(port, "mqttv5", f"{uid}/p", "-q", "1", "-m", "{}",
        "-D", "publish", "user-property", "k", "v",
        "-D", "publish", "content-type", "application/json",
        "-D", "publish", "message-expiry-interval", "60")
    m = c.get()
    assert m.payload == b"{}"
    assert m.props.get("UserProperty") == [("k", "v")]
    assert m.props.get("ContentType") == "application/json"
    assert 0 < m.props.get("MessageExpiryInterval", 0) <= 60


def test_v5_properties_printed_by_mosquitto_sub(port, subs, client, uid):
    s = subs(port, "mqttv5", f"{uid}/f", "-C", "1", "-W", "10", "-F", "%t|%p|%P")
    c = client(port, V5)
    c.publish(f"{uid}/f", b"body", qos=1, props={"UserProperty": [("a", "b")]})
    rc, msgs = s.wait()
    assert rc == 0
    assert msgs == [f"{uid}/f|body|a:b"], msgs


def test_paho_v311_to_mosquitto_sub_v5(port, subs, client, uid):
    s = subs(port, "mqttv5", f"{uid}/x", "-q", "2", "-C", "1", "-W", "10")
    c = client(port, V311)
    c.publish(f"{uid}/x", b"cross", qos=2)
    rc, msgs = s.wait()
    assert (rc, msgs) == (0, [f"{uid}/x cross"])


@pv
def test_persistent_session_with_mosquitto_sub(port, subs, uid, ver):
    cid = f"{uid}-persist"
    extra = ["-x", "300"] if ver == "mqttv5" else []
    s = subs(port, ver, f"{uid}/ps", "-q", "1", "-c", "-i", cid, "-C", "1", "-W", "5", *extra)
    pub(port, ver, f"{uid}/ps", "-q", "1", "-m", "first")
    rc, msgs = s.wait()
    assert msgs == [f"{uid}/ps first"]
    # offline now: this one is queued for the session
    pub(port, ver, f"{uid}/ps", "-q", "1", "-m", "queued")
    s = subs(port, ver, f"{uid}/ps", "-q", "1", "-c", "-i", cid, "-C", "1", "-W", "5", *extra)
    rc, msgs = s.wait()
    assert (rc, msgs) == (0, [f"{uid}/ps queued"])
