"""Shared pieces of the attack benchmarks in bench/attacks/ (not a benchmark
itself: bench/attacks.sh skips files starting with `_`).

- `binary_from_args()`: the `--bin` option (default $MYRIAD_BIN or
  target/release/myriad), made absolute and exported as MYRIAD_BIN so that
  tests/helpers.Broker starts that build.
- `Pinger`: an idle MQTT 3.1.1 client timing PINGREQ -> PINGRESP.
- `pct()`: a percentile of a list of samples.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path


def binary_from_args(description: str) -> Path:
    """Parses `--bin`, exports it as MYRIAD_BIN and returns it absolute."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bin", default=os.environ.get("MYRIAD_BIN", "target/release/myriad"))
    args = parser.parse_args()
    binary = Path(args.bin)
    binary = binary if binary.is_absolute() else (Path.cwd() / binary)
    os.environ["MYRIAD_BIN"] = str(binary)
    return binary


class Pinger:
    """An idle MQTT 3.1.1 client timing PINGREQ -> PINGRESP."""

    def __init__(self, port: int, every_secs: float):
        self.every = every_secs
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = b"pinger"
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        self.sock.sendall(bytes([0x10, len(body)]) + body)
        assert self.sock.recv(4)[:1] == b"\x20", "CONNACK"

    def ping_ms(self) -> float:
        """One round trip in milliseconds."""
        started = time.perf_counter()
        self.sock.sendall(b"\xc0\x00")
        got = b""
        while len(got) < 2:
            chunk = self.sock.recv(2 - len(got))
            if not chunk:
                raise RuntimeError("broker closed the pinger")
            got += chunk
        assert got == b"\xd0\x00", got
        return (time.perf_counter() - started) * 1000

    def sample(self, seconds: float) -> list[float]:
        """Round trips for `seconds`, one every `every_secs`."""
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            out.append(self.ping_ms())
            time.sleep(self.every)
        return out


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, rounded to microseconds."""
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q))], 3)
