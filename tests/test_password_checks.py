"""Password checks are bounded (issue 13 s.2): a storm of simultaneous
wrong-password CONNECTs for one device is cut at the throttle's failure
limit (attempts in flight count) instead of running Argon2 for each, the
verifications that do run are bounded by `auth.max_concurrent_password_checks`
with a bounded queue (`auth.password_check_queue`, overflow refused with
0x88 Server unavailable), and the lockout is keyed by (user name, source
address): the real device from its own address still gets in while the
attacker's address is locked out.

Clients use several loopback source addresses (127.0.0.1, 127.0.0.2, ...).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from helpers import Api, unique
from mqtt_raw import CONNACK, connect_packet, decode_varint

TOKEN = "password-checks-token-0123456789"
BROKER_CONFIG = {
    "auth": {"allow_anonymous": False, "max_concurrent_password_checks": 2, "password_check_queue": 2},
    "api": {"token": TOKEN},
}

OK = 0x00
BAD_CREDENTIALS = 0x86
SERVER_UNAVAILABLE = 0x88
RATE_EXCEEDED = 0x9F


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


def new_device(api: Api, password: str = "right-password-1") -> tuple[str, str]:
    dev = unique("dev")
    api.ok("POST", "/api/v1/devices", {"id": dev, "name": "d", "password": password}, expect=201)
    return dev, password


def raw_connack(port: int, dev: str, password: bytes, source: str, timeout: float = 30.0) -> int:
    """One MQTT 5.0 CONNECT from `source`; the CONNACK reason (-1: closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(connect_packet(dev, 5, username=dev, password=password))
        buf = b""
        while True:
            if len(buf) >= 2:
                length, pos = decode_varint(buf, 1)
                if len(buf) >= pos + length:
                    assert buf[0] >> 4 == CONNACK, buf
                    return buf[pos + 1]
            chunk = s.recv(4096)
            if not chunk:
                return -1
            buf += chunk


def paho_connack(port: int, dev: str, password: str, source: str, timeout: float = 20.0) -> int:
    """CONNECT with paho-mqtt (5.0) bound to `source`; the CONNACK reason code."""
    got: list[int] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev, protocol=mqtt.MQTTv5,
                    reconnect_on_failure=False)
    c.username_pw_set(dev, password)

    def on_connect(client, userdata, flags, reason_code, properties):
        got.append(reason_code.value)
        done.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.connect("127.0.0.1", port, keepalive=30, bind_address=source)
    c.loop_start()
    try:
        assert done.wait(timeout), "no CONNACK"
    finally:
        c.disconnect()
        c.loop_stop()
    assert got, "closed without CONNACK"
    return got[0]


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def storm(port: int, dev: str, n: int, source: str, pid: int) -> tuple[list[int], int]:
    """`n` simultaneous wrong-password CONNECTs; their reasons and the peak thread count."""
    results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(n + 1)

    def one() -> None:
        start.wait()
        try:
            rc = raw_connack(port, dev, b"wrong-guess", source)
        except OSError:
            rc = -2
        with lock:
            results.append(rc)

    workers = [threading.Thread(target=one) for _ in range(n)]
    for w in workers:
        w.start()
    start.wait()
    peak = 0
    while any(w.is_alive() for w in workers):
        peak = max(peak, threads_of(pid))
        time.sleep(0.005)
    for w in workers:
        w.join()
    return results, peak


def test_a_wrong_password_storm_is_cut_at_the_limit_and_the_real_device_gets_in(broker, api):
    dev, pw = new_device(api)
    before = threads_of(broker.proc.pid)
    results, peak = storm(broker.port, dev, 300, "127.0.0.1", broker.proc.pid)
    counts = {rc: results.count(rc) for rc in set(results)}
    # At most max_failures (5) attempts of (dev, 127.0.0.1) are checked; the
    # rest are refused without Argon2.
    assert counts.get(RATE_EXCEEDED, 0) >= 295 - counts.get(SERVER_UNAVAILABLE, 0), counts
    assert counts.get(BAD_CREDENTIALS, 0) <= 5, counts
    assert counts.get(OK, 0) == 0, counts
    # No thread per attempt: the blocking pool runs at most 2 checks.
    assert peak - before <= 8, f"threads {before} -> peak {peak}"
    # Guesses refused as "busy" (0x88) do not count; a few more sequential
    # guesses reach the limit and lock (dev, 127.0.0.1) out.
    for _ in range(5):
        if raw_connack(broker.port, dev, b"wrong-guess", "127.0.0.1") == RATE_EXCEEDED:
            break
    # The attacker's address is locked out, even with the right password...
    assert paho_connack(broker.port, dev, pw, "127.0.0.1") == RATE_EXCEEDED
    # ...but the real device, from its own address, gets in.
    assert paho_connack(broker.port, dev, pw, "127.0.0.2") == OK
    # And a wrong guess from a third address is checked, not locked out.
    assert paho_connack(broker.port, dev, "wrong-again", "127.0.0.3") == BAD_CREDENTIALS
    broker.assert_alive()


def test_checks_beyond_the_queue_are_refused_server_unavailable(broker, api):
    # 24 devices, one wrong guess each from its own address, all at once:
    # 2 slots + 2 queued are checked, the others are refused with 0x88.
    devices = [new_device(api) for _ in range(24)]
    results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(len(devices))

    def one(i: int, dev: str) -> None:
        start.wait()
        rc = raw_connack(broker.port, dev, b"wrong-guess", f"127.0.1.{i + 1}")
        with lock:
            results.append(rc)

    workers = [threading.Thread(target=one, args=(i, d)) for i, (d, _) in enumerate(devices)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    counts = {rc: results.count(rc) for rc in set(results)}
    assert len(results) == 24
    assert counts.get(SERVER_UNAVAILABLE, 0) >= 8, counts
    assert counts.get(BAD_CREDENTIALS, 0) >= 4, counts
    assert set(counts) <= {SERVER_UNAVAILABLE, BAD_CREDENTIALS}, counts
    # A refusal for load is not a failure: each device still gets in at once.
    dev, pw = devices[0]
    assert paho_connack(broker.port, dev, pw, "127.0.2.1") == OK
    broker.assert_alive()
