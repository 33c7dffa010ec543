"""MQTT over WebSocket: bytes per idle connection, Myriad beside Mosquitto in the same run (issue 16).

For each listener kind (tcp as the baseline, ws, wss) the broker's RSS growth
after N clients upgraded (ws, wss: TLS 1.3 first), sent an MQTT 3.1.1
CONNECT in a masked binary frame and got their CONNACK, divided by N.
Mosquitto (apt `mosquitto`, `protocol websockets` listeners) is measured the
same way when installed. Each broker listens on free loopback ports and is
stopped by PID. Prints one JSON line per broker and kind (a fresh broker process each).

    .venv/bin/python bench/ws.py [--bin target/release/myriad] [--conns 1000] [--mosquitto-conns 300]
"""

from __future__ import annotations

import argparse
import base64
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

sys.path.insert(0, str(Path(__file__).parent))
from tls import CONNECT, HOST, free_port, rss_bytes, wait_port  # noqa: E402


def masked_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes([0x82, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def client(kind: str, port: int, ctx: ssl.SSLContext, index: int) -> socket.socket:
    s: socket.socket = socket.create_connection((HOST, port), timeout=10)
    if kind == "wss":
        s = ctx.wrap_socket(s, server_hostname="localhost")
    connect = CONNECT + f"{index % 65536:04x}".encode()
    if kind == "tcp":
        s.sendall(connect)
        if s.recv(4)[:1] != b"\x20":
            raise RuntimeError("no CONNACK")
        return s
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n".encode()
        + masked_frame(connect)
    )
    got = b""
    while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 6:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed: {got!r}")
        got += chunk
    head, rest = got.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101") or rest[2:3] != b"\x20":
        raise RuntimeError(f"upgrade or CONNACK failed: {got!r}")
    return s


def measure(broker: str, kind: str, pid: int, port: int, ctx: ssl.SSLContext, conns: int) -> dict:
    client(kind, port, ctx, 0).close()
    time.sleep(0.5)
    before = rss_bytes(pid)
    held = [client(kind, port, ctx, i) for i in range(conns)]
    time.sleep(2)
    after = rss_bytes(pid)
    for s in held:
        s.close()
    return {"broker": broker, "kind": kind, "conns": conns, "bytes_per_idle_conn": round((after - before) / conns)}


def start(cmd: list[str], work: Path, name: str, ports: list[int]) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "wb"))
    for port in ports:
        wait_port(port, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=os.environ.get("MYRIAD_BIN", "target/release/myriad"))
    parser.add_argument("--conns", type=int, default=1000)
    parser.add_argument("--mosquitto-conns", type=int, default=300,
                        help="Mosquitto 2.0.11's websockets listener (libwebsockets) stalled here with"
                             " about 700 upgrades in a row on a fresh process, closing earlier ones")
    args = parser.parse_args()
    binary = Path(args.bin).resolve()
    with tempfile.TemporaryDirectory(prefix="myriad-ws-bench.") as tmp:
        work = Path(tmp)
        certs = work / "certs"
        subprocess.run([str(binary), "ctl", "certs", "dev-ca", "--out", str(certs)], check=True, capture_output=True)
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        kinds = ["tcp", "ws", "wss"]
        mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        # A fresh broker per kind: memory freed by one kind's clients would
        # otherwise be reused by the next and hide its cost.
        for kind in kinds:
            ports = {k: free_port() for k in kinds}
            cfg = work / "myriad.toml"
            cfg.write_text(
                f"[mqtt]\nlisten = \"{HOST}:{ports['tcp']}\"\nmax_connections = 100000\n"
                f"[[mqtt.listeners]]\nkind = \"ws\"\nlisten = \"{HOST}:{ports['ws']}\"\n"
                f"[[mqtt.listeners]]\nkind = \"wss\"\nlisten = \"{HOST}:{ports['wss']}\"\n"
                f"cert = \"{certs / 'server.pem'}\"\nkey = \"{certs / 'server.key'}\"\n"
                "[api]\nenabled = false\n"
                f"[store]\ndata_dir = \"{work / 'data'}\"\n"
            )
            proc = start([str(binary), "serve", "--config", str(cfg)], work, "myriad", list(ports.values()))
            try:
                print(json.dumps(measure("myriad", kind, proc.pid, ports[kind], ctx, args.conns)), flush=True)
            finally:
                stop(proc)
        if mosquitto is None:
            print(json.dumps({"broker": "mosquitto", "skipped": "not installed"}))
            return
        for kind in kinds:
            ports = {k: free_port() for k in kinds}
            conf = work / "mosquitto.conf"
            conf.write_text(
                "allow_anonymous true\npersistence false\nper_listener_settings false\n"
                f"listener {ports['tcp']} {HOST}\n"
                f"listener {ports['ws']} {HOST}\nprotocol websockets\n"
                f"listener {ports['wss']} {HOST}\nprotocol websockets\n"
                f"certfile {certs / 'server.pem'}\nkeyfile {certs / 'server.key'}\n"
                + ("user root\n" if os.geteuid() == 0 else "")
            )
            proc = start([mosquitto, "-c", str(conf)], work, "mosquitto", list(ports.values()))
            try:
                print(json.dumps(measure("mosquitto", kind, proc.pid, ports[kind], ctx, args.mosquitto_conns)), flush=True)
            finally:
                stop(proc)

if __name__ == "__main__":
    sys.exit(main())
