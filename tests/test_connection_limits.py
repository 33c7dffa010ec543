"""Connection limits at the accept loop (issue 13): ``mqtt.max_connections``
closes sockets past the cap at once, counting connections still in their
handshake, without disturbing the others; running out of file descriptors
(EMFILE) does not make the accept loop spin, and it recovers once some are
free again.
"""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path

import pytest

from helpers import HOST, V5, V311, Broker, unique, wait_until
from mqtt_raw import Closed, RawClient

pytestmark = pytest.mark.myriad_only

CAP = 4


def closed_by_server(sock: socket.socket, within: float = 2.0) -> bool:
    """True if the server closes ``sock`` (EOF or reset) within ``within`` s."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100.0


@pytest.fixture
def capped(tmp_path):
    b = Broker(
        tmp_path,
        {"mqtt": {"max_connections": CAP}, "store": {"backend": "memory"}, "api": {"enabled": False}},
    ).start()
    yield b
    b.stop()


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_connections_past_the_cap_are_closed_and_the_others_served(capped, version):
    clients = [RawClient(capped.port, version) for _ in range(CAP - 1)]
    for c in clients:
        c.connect(unique("cap"))
    # A socket that never sends CONNECT holds its place too.
    lurker = socket.create_connection((HOST, capped.port))
    time.sleep(0.2)
    extra = [socket.create_connection((HOST, capped.port)) for _ in range(3)]
    for s in extra:
        assert closed_by_server(s), "a connection past mqtt.max_connections is closed at once"
        s.close()
    # Nobody else noticed.
    for c in clients:
        c.ping()
    assert not closed_by_server(lurker, within=0.3)
    # A freed place is taken by the next client.
    clients.pop().disconnect()
    lurker.close()
    late = RawClient(capped.port, version)

    def admitted() -> bool:
        nonlocal late
        try:
            late.connect(unique("late"))
            return True
        except (Closed, TimeoutError, OSError):
            late.close()
            late = RawClient(capped.port, version)
            return False

    assert wait_until(admitted, timeout=5, interval=0.2)
    late.ping()
    for c in clients + [late]:
        c.disconnect()
    capped.assert_alive()
    assert "connection limit reached" in capped.log_tail(200)


def test_running_out_of_file_descriptors_does_not_spin(tmp_path):
    b = Broker(tmp_path, {"store": {"backend": "memory"}, "api": {"enabled": False}}).start()
    try:
        pid = b.proc.pid
        open_fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        # Room for a few connections only; the cap (from the limit at
        # start-up) is far above it, so accept() itself fails with EMFILE.
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds + 4, hard))
        served = []
        for _ in range(3):
            c = RawClient(b.port, V311)
            c.connect(unique("fd"))
            served.append(c)
        # These complete the TCP handshake in the kernel's queue; the broker
        # cannot accept them.
        waiting = [socket.create_connection((HOST, b.port)) for _ in range(10)]
        time.sleep(0.3)
        before = cpu_seconds(pid)
        time.sleep(2.0)
        busy = cpu_seconds(pid) - before
        assert busy < 0.5, f"accept loop spun: {busy:.2f} CPU s in 2 s"
        for c in served:
            c.ping()
        # Free descriptors: the queued connections are taken in.
        for c in served:
            c.disconnect()
        for s in waiting:
            s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (min(4096, hard), hard))
        newcomer = RawClient(b.port, V311)
        newcomer.connect(unique("after"))
        newcomer.ping()
        newcomer.disconnect()
        b.assert_alive()
        assert "accept failed" in b.log_tail(200)
    finally:
        b.stop()
