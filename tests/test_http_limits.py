"""HTTP API limits (issue 13 s.2): a connection cap (`api.max_connections`;
at the cap the quietest connection without a request in flight is evicted)
and header, idle and body timeouts (`api.header_timeout_secs`,
`api.idle_timeout_secs`, `api.body_timeout_secs`). Idle sockets can no
longer use up the file descriptors: the API keeps answering and MQTT
clients keep connecting. Small limits here so the tests are quick."""

from __future__ import annotations

import os
import socket
import time

from helpers import Api, Client, unique

TOKEN = "http-limits-token-0123456789"
CAP = 8
BROKER_CONFIG = {
    "api": {"token": TOKEN, "max_connections": CAP, "header_timeout_secs": 2, "idle_timeout_secs": 3,
            "body_timeout_secs": 2},
}


def is_closed(s: socket.socket) -> bool:
    """Whether the peer closed `s` (EOF or reset); never blocks."""
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    finally:
        s.setblocking(True)


def wait_closed(s: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes `s` (reading and dropping any response), None if it does not."""
    started = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - started < timeout:
        try:
            if s.recv(65536) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except ConnectionError:
            return time.monotonic() - started
    return None


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_sockets_beyond_the_cap_are_closed_and_everyone_else_is_served(broker):
    socks = [socket.create_connection(("127.0.0.1", broker.api_port)) for _ in range(200)]
    try:
        time.sleep(0.5)
        still_open = [s for s in socks if not is_closed(s)]
        assert len(still_open) <= CAP, f"{len(still_open)} idle sockets kept (cap {CAP})"
        assert open_fds(broker.proc.pid) < 100
        # A normal request is answered (it evicts an idle socket)...
        status, _ = Api(broker.api_port, TOKEN).call("GET", "/api/v1/devices?limit=1")
        assert status == 200
        # ...and MQTT clients still connect.
        with Client(broker.port, client_id=unique("mqtt")) as c:
            assert c.connected
    finally:
        for s in socks:
            s.close()
    broker.assert_alive()


def test_slowloris_is_cut_off_after_the_header_timeout(broker):
    s = socket.create_connection(("127.0.0.1", broker.api_port))
    try:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
        started = time.monotonic()
        closed_after = None
        for byte in head:  # one byte every 0.25 s: 13 s for the whole head
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            if is_closed(s):
                closed_after = time.monotonic() - started
                break
            time.sleep(0.25)
        assert closed_after is not None, "a head sent one byte at a time was never cut off"
        assert closed_after < 5, closed_after
    finally:
        s.close()


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(broker):
    s = socket.create_connection(("127.0.0.1", broker.api_port))
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        after = wait_closed(s, 10)
        assert after is not None, "idle keep-alive connection never closed"
        assert 1.5 < after < 6, after
    finally:
        s.close()


def test_a_stalled_body_fails_after_the_body_timeout(broker):
    s = socket.create_connection(("127.0.0.1", broker.api_port))
    try:
        s.sendall(b"POST /api/v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\": \"")
        after = wait_closed(s, 10)
        assert after is not None, "a stalled body held the connection"
        assert after < 5, after
    finally:
        s.close()
    broker.assert_alive()
