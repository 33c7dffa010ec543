"""MQTT over TLS, Myriad beside Mosquitto in the same run (issue 16):

- bytes per idle TLS connection: RSS growth of the broker after N clients
  completed a TLS 1.3 handshake and an MQTT 3.1.1 CONNECT, divided by N;
- handshakes per broker CPU second: full TLS handshakes (no resumption) plus
  CONNECT/CONNACK, counted against the broker's own CPU time.

Each broker gets certificates from `myriad ctl certs dev-ca` (ECDSA P-256),
listens on a free loopback port and is stopped by PID. Prints one JSON line
per broker.

    .venv/bin/python bench/tls.py [--bin target/release/myriad] [--conns 2000] [--handshakes 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
CONNECT = bytes([0x10, 0x10]) + b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x04"  # + 4-byte client id


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("broker did not listen in time")


def start_myriad(binary: Path, certs: Path, work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = work / "myriad.toml"
    cfg.write_text(
        "[mqtt]\nlisten = \"\"\nmax_connections = 100000\n"
        f"[[mqtt.listeners]]\nkind = \"tls\"\nlisten = \"{HOST}:{port}\"\n"
        f"cert = \"{certs / 'server.pem'}\"\nkey = \"{certs / 'server.key'}\"\n"
        "[api]\nenabled = false\n"
        f"[store]\ndata_dir = \"{work / 'data'}\"\n"
    )
    proc = subprocess.Popen([str(binary), "serve", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(work / "myriad.log", "wb"))
    wait_port(port, proc)
    return proc, port


def start_mosquitto(certs: Path, work: Path) -> tuple[subprocess.Popen, int] | None:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        return None
    port = free_port()
    cfg = work / "mosquitto.conf"
    cfg.write_text(
        f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n"
        f"certfile {certs / 'server.pem'}\nkeyfile {certs / 'server.key'}\n"
        # As root Mosquitto would drop to its own user, which cannot read the 0600 key.
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen([binary, "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=open(work / "mosquitto.log", "wb"))
    wait_port(port, proc)
    return proc, port


def tls_client(port: int, ctx: ssl.SSLContext, index: int) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall(CONNECT + f"{index % 65536:04x}".encode())
    connack = s.recv(4)
    if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
        raise RuntimeError(f"CONNACK {connack!r}")
    return s


def measure(name: str, proc: subprocess.Popen, port: int, ctx: ssl.SSLContext, conns: int, handshakes: int) -> dict:
    # Handshakes per broker CPU second: connect, CONNECT, CONNACK, close.
    tls_client(port, ctx, 0).close()
    cpu_before, started = cpu_secs(proc.pid), time.monotonic()
    for i in range(handshakes):
        tls_client(port, ctx, i).close()
    cpu = cpu_secs(proc.pid) - cpu_before
    wall = time.monotonic() - started
    time.sleep(1)
    # Idle memory: hold `conns` connections open.
    before = rss_bytes(proc.pid)
    held = [tls_client(port, ctx, i) for i in range(conns)]
    time.sleep(2)
    after = rss_bytes(proc.pid)
    for s in held:
        s.close()
    return {
        "broker": name,
        "conns": conns,
        "bytes_per_idle_tls_conn": round((after - before) / conns),
        "handshakes": handshakes,
        "handshake_wall_secs": round(wall, 3),
        "broker_cpu_secs": round(cpu, 3),
        "handshakes_per_broker_cpu_sec": round(handshakes / cpu) if cpu > 0 else None,
        "tls_version": "TLSv1.3",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=os.environ.get("MYRIAD_BIN", "target/release/myriad"))
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--handshakes", type=int, default=1000)
    args = parser.parse_args()
    binary = Path(args.bin).resolve()
    with tempfile.TemporaryDirectory(prefix="myriad-tls-bench.") as tmp:
        work = Path(tmp)
        certs = work / "certs"
        subprocess.run([str(binary), "ctl", "certs", "dev-ca", "--out", str(certs)], check=True, capture_output=True)
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        for name, start in [("myriad", lambda: start_myriad(binary, certs, work)), ("mosquitto", lambda: start_mosquitto(certs, work))]:
            started = start()
            if started is None:
                print(json.dumps({"broker": name, "skipped": "not installed"}))
                continue
            proc, port = started
            try:
                print(json.dumps(measure(name, proc, port, ctx, args.conns, args.handshakes)), flush=True)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


if __name__ == "__main__":
    sys.exit(main())
