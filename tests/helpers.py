"""Test helpers: start/stop the broker under test, and a small synchronous paho-mqtt wrapper.

The broker is the Myriad binary (MYRIAD_BIN, default target/release/myriad).
For checking the tests themselves, MYRIAD_TEST_BROKER=mosquitto runs them
against a local /usr/sbin/mosquitto instead (tests marked ``myriad_only`` are
skipped then).
"""

from __future__ import annotations

import atexit
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
LISTEN_RE = re.compile(r"^MQTT listening on 127\.0\.0\.1:(\d+)\s*$")
API_RE = re.compile(r"^HTTP API (?:\(tls\) )?listening on 127\.0\.0\.1:(\d+)\s*$")
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

V311 = 4
V5 = 5
VERSIONS = [V311, V5]
VERSION_IDS = ["v311", "v5"]


def broker_kind() -> str:
    return os.environ.get("MYRIAD_TEST_BROKER", "myriad")


def myriad_bin() -> Path:
    p = Path(os.environ.get("MYRIAD_BIN", "target/release/myriad"))
    return p if p.is_absolute() else REPO_ROOT / p


def agent_command() -> list[str]:
    """The device agent as the device-only binary `myriad-agent` beside MYRIAD_BIN (what
    `cargo build` makes from crates/myriad-device; MYRIAD_AGENT_BIN names another). The
    platform binary's `myriad agent` runs the same code: tests/test_agent.py covers it."""
    named = os.environ.get("MYRIAD_AGENT_BIN")
    p = Path(named) if named else myriad_bin().with_name("myriad-agent")
    p = p if p.is_absolute() else REPO_ROOT / p
    if not p.exists():
        raise FileNotFoundError(f"{p}: build the device agent (cargo build -p myriad-device) "
                                "or set MYRIAD_AGENT_BIN")
    return [str(p)]


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def wait_until(pred, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# ------------------------------------------------------------------ config

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # a sub-table, written inline
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(config: dict[str, Any]) -> str:
    """Write a {table: {key: value}} dict (top-level scalars allowed) as TOML."""
    lines: list[str] = []
    for k, v in config.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for table, values in config.items():
        if isinstance(values, dict):
            lines.append(f"\n[{table}]")
            for k, v in values.items():
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def merge_config(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------ broker process

_RUNNING: set["Broker"] = set()


@atexit.register
def _stop_leftover_brokers() -> None:
    """Last resort (e.g. a test run aborted mid-module): stop every broker we started, by PID."""
    for b in list(_RUNNING):
        try:
            b.stop()
        except Exception:
            pass


class Broker:
    """A broker process started for a test module (or a single test)."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None, raw_config: str | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config or {}
        self.raw_config = raw_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.api_port: int | None = None
        self.stdout_lines: list[str] = []
        self.log_path = self.workdir / "broker.log"
        self.host = HOST
        self._reader: threading.Thread | None = None

    @property
    def mqttv(self) -> str:
        return broker_kind()

    # ---- start
    def start(self) -> "Broker":
        if broker_kind() == "mosquitto":
            return self._start_mosquitto()
        binary = myriad_bin()
        if not binary.exists():
            raise RuntimeError(
                f"broker binary {binary} not found: run `cargo build --release` first or set MYRIAD_BIN"
            )
        cfg = self.workdir / "myriad.toml"
        cfg.write_text(self.raw_config if self.raw_config is not None else to_toml(self.config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
        env.setdefault("RUST_BACKTRACE", "1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(cfg), "--listen", f"{HOST}:0", "--api-listen", f"{HOST}:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=self.workdir,
            env=env,
        )
        port_q: queue.Queue[int | None] = queue.Queue()

        def reader() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            found = False
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                self.stdout_lines.append(line)
                api = API_RE.match(line)
                if api:
                    self.api_port = int(api.group(1))
                m = LISTEN_RE.match(line)
                if m and not found:
                    found = True
                    port_q.put(int(m.group(1)))
            if not found:
                port_q.put(None)

        _RUNNING.add(self)
        self._reader = threading.Thread(target=reader, daemon=True)
        self._reader.start()
        try:
            port = port_q.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            port = None
        if port is None:
            self.stop()
            raise RuntimeError(
                f"broker did not print 'MQTT listening on 127.0.0.1:PORT' within {STARTUP_TIMEOUT}s "
                f"(exit={self.proc.returncode}); stdout={self.stdout_lines[-10:]}\n{self.log_tail()}"
            )
        self.port = port
        return self

    def _start_mosquitto(self) -> "Broker":
        mqtt_cfg = self.config.get("mqtt", {})
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        lines = [f"listener {port} {HOST}", "allow_anonymous true", "persistence false"]
        if "max_keep_alive_secs" in mqtt_cfg:
            lines.append(f"max_keepalive {mqtt_cfg['max_keep_alive_secs']}")
        if "max_packet_size" in mqtt_cfg:
            lines.append(f"max_packet_size {mqtt_cfg['max_packet_size']}")
        if "receive_maximum" in mqtt_cfg:
            lines.append(f"max_inflight_messages {mqtt_cfg['receive_maximum']}")
        if "topic_alias_maximum" in mqtt_cfg:
            lines.append(f"max_topic_alias {mqtt_cfg['topic_alias_maximum']}")
        if "max_queued_messages" in mqtt_cfg:
            lines.append(f"max_queued_messages {mqtt_cfg['max_queued_messages']}")
        cfg = self.workdir / "mosquitto.conf"
        cfg.write_text("\n".join(lines) + "\n")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["/usr/sbin/mosquitto", "-c", str(cfg)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        _RUNNING.add(self)

        def up() -> bool:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                return True
            except OSError:
                return False

        if not wait_until(up, 10):
            self.stop()
            raise RuntimeError(f"mosquitto did not start\n{self.log_tail()}")
        self.port = port
        return self

    # ---- state
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def assert_alive(self) -> None:
        assert self.alive(), f"broker process died (exit={self.proc.returncode if self.proc else None})\n{self.log_tail()}"

    # ---- stop: SIGTERM, wait, then SIGKILL, always by our own PID
    def stop(self) -> int | None:
        if self.proc is None:
            return None
        _RUNNING.discard(self)
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
                self.killed = True
        if self._reader is not None:
            self._reader.join(timeout=2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        try:
            self._log.close()
        except Exception:
            pass
        return self.proc.returncode

    killed = False


# ------------------------------------------------------------------ paho wrapper

@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    props: dict[str, Any] = field(default_factory=dict)
    received_at: float = 0.0


def props_to_dict(props: Properties | None) -> dict[str, Any]:
    if props is None:
        return {}
    out: dict[str, Any] = {}
    for name in props.names:
        key = name.replace(" ", "")
        if hasattr(props, key):
            out[key] = getattr(props, key)
    return out


def make_props(packet_type: int, values: dict[str, Any] | None) -> Properties | None:
    if not values:
        return None
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


def rc_value(rc: Any) -> int:
    if isinstance(rc, ReasonCode):
        return rc.value
    return int(rc)


class Client:
    """Synchronous wrapper around a paho-mqtt 2.x client (CallbackAPIVersion.VERSION2).

    Received messages go into a queue; ``get``/``get_many``/``expect_none`` wait
    with a timeout. Automatic reconnects are off so a dropped connection stays
    dropped (important for takeover tests).
    """

    def __init__(
        self,
        port: int,
        client_id: str | None = None,
        version: int = V5,
        clean: bool = True,
        keepalive: int = 30,
        will: dict[str, Any] | None = None,
        connect_props: dict[str, Any] | None = None,
        username: str | None = None,
        password: str | None = None,
        connect: bool = True,
        expect_rc: int | None = 0,
        tls: Any = None,
        transport: str = "tcp",
        ws_path: str = "/mqtt",
    ):
        """``tls``: an ``ssl.SSLContext`` to connect over TLS with;
        ``transport="websockets"``: MQTT over WebSocket on ``ws_path``."""
        self.port = port
        self.version = version
        self.client_id = unique("c") if client_id is None else client_id
        self.clean = clean
        self.keepalive = keepalive
        self.connect_props = connect_props
        self.messages: queue.Queue[Msg] = queue.Queue()
        self.disconnects: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self._cond = threading.Condition()
        self._connacks: list[tuple[int, bool, dict[str, Any]]] = []
        self._subacks: dict[int, tuple[list[int], dict[str, Any]]] = {}
        self._unsubacks: dict[int, list[int]] = {}
        self._pubacks: dict[int, int] = {}
        self.connected = False
        kwargs: dict[str, Any] = {}
        if version == V311:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if version == V5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
            transport=transport,
            **kwargs,
        )
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path)
        self.c.max_inflight_messages_set(8)  # stay within any server Receive Maximum the tests configure
        self.c.max_queued_messages_set(0)
        if username is not None:
            self.c.username_pw_set(username, password)
        if tls is not None:
            self.c.tls_set_context(tls)
        if will:
            self.c.will_set(
                will["topic"], will.get("payload", b""), will.get("qos", 0), will.get("retain", False),
                make_props(PacketTypes.WILLMESSAGE, will.get("props")) if version == V5 else None,
            )
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = self._on_disconnect
        self.connack: tuple[int, bool, dict[str, Any]] | None = None
        if connect:
            self.connect(expect_rc=expect_rc)

    # ---- callbacks (paho thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            rc = rc_value(reason_code)
            self._connacks.append((rc, bool(flags.session_present), props_to_dict(properties)))
            self.connected = rc == 0
            self._cond.notify_all()

    def _on_message(self, client, userdata, message):
        self.messages.put(
            Msg(
                topic=message.topic,
                payload=message.payload,
                qos=message.qos,
                retain=bool(message.retain),
                dup=bool(message.dup),
                props=props_to_dict(getattr(message, "properties", None)),
                received_at=time.monotonic(),
            )
        )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._subacks[mid] = ([rc_value(r) for r in reason_codes], props_to_dict(properties))
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._unsubacks[mid] = [rc_value(r) for r in (reason_codes or [])]
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self._pubacks[mid] = rc_value(reason_code)
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.connected = False
            self.disconnects.put((rc_value(reason_code), props_to_dict(properties)))
            self._cond.notify_all()

    def _wait(self, pred, timeout: float, what: str):
        with self._cond:
            if not self._cond.wait_for(pred, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what} (client {self.client_id})")

    # ---- operations
    def connect(self, expect_rc: int | None = 0, timeout: float = 5.0) -> tuple[int, bool, dict[str, Any]]:
        """Connect and wait for CONNACK. Returns (reason code, session present, CONNACK properties)."""
        n = len(self._connacks)
        kw: dict[str, Any] = {}
        if self.version == V5:
            kw["clean_start"] = self.clean
            kw["properties"] = make_props(PacketTypes.CONNECT, self.connect_props)
        self.c.connect(HOST, self.port, self.keepalive, **kw)
        self.c.loop_start()
        self._wait(lambda: len(self._connacks) > n, timeout, "CONNACK")
        self.connack = self._connacks[-1]
        if expect_rc is not None:
            assert self.connack[0] == expect_rc, f"CONNACK reason {self.connack[0]:#x}, expected {expect_rc:#x}"
        return self.connack

    @property
    def session_present(self) -> bool:
        assert self.connack is not None
        return self.connack[1]

    @property
    def connack_props(self) -> dict[str, Any]:
        assert self.connack is not None
        return self.connack[2]

    def subscribe(
        self,
        topic: str | list[tuple[str, int]],
        qos: int = 0,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        props: dict[str, Any] | None = None,
        timeout: float = 5.0,
    ) -> list[int]:
        """Subscribe and wait for SUBACK; returns the reason codes / granted QoS list."""
        p = make_props(PacketTypes.SUBSCRIBE, props) if self.version == V5 else None
        if isinstance(topic, list):
            if self.version == V5:
                arg = [(t, SubscribeOptions(qos=q)) for t, q in topic]
            else:
                arg = topic
            rc, mid = self.c.subscribe(arg, properties=p)
        elif self.version == V5:
            opts = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=retain_as_published,
                                    retainHandling=retain_handling)
            rc, mid = self.c.subscribe(topic, options=opts, properties=p)
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        self._wait(lambda: mid in self._subacks, timeout, f"SUBACK for {topic}")
        return self._subacks[mid][0]

    def unsubscribe(self, topic: str | list[str], timeout: float = 5.0) -> list[int]:
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        self._wait(lambda: mid in self._unsubacks, timeout, f"UNSUBACK for {topic}")
        return self._unsubacks[mid]

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        props: dict[str, Any] | None = None,
        wait: bool = True,
        timeout: float = 5.0,
    ) -> int:
        """Publish; with ``wait`` blocks until PUBACK/PUBCOMP (QoS>0). Returns the v5 reason code (0 otherwise)."""
        p = make_props(PacketTypes.PUBLISH, props) if self.version == V5 else None
        info = self.c.publish(topic, payload, qos, retain, p)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        if wait:
            if qos == 0:
                info.wait_for_publish(timeout)
                return 0
            self._wait(lambda: info.mid in self._pubacks, timeout, f"ack of publish to {topic}")
            return self._pubacks[info.mid]
        return 0

    def get(self, timeout: float = 5.0) -> Msg:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message for client {self.client_id} within {timeout}s") from None

    def get_many(self, n: int, timeout: float = 5.0) -> list[Msg]:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            remaining = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(0.0, remaining)))
            except queue.Empty:
                raise AssertionError(
                    f"client {self.client_id} got {len(out)} of {n} messages within {timeout}s: "
                    f"{[(m.topic, m.payload[:20]) for m in out]}"
                ) from None
        return out

    def drain(self, wait: float = 0.5) -> list[Msg]:
        """Everything that arrives within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        out = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                out.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                break
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def expect_none(self, wait: float = 0.5) -> None:
        got = self.drain(wait)
        assert not got, f"unexpected messages for {self.client_id}: {[(m.topic, m.payload[:30]) for m in got]}"

    def wait_disconnected(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        """Wait until the server drops us; returns (reason code, properties) as paho reports them."""
        try:
            return self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"client {self.client_id} was not disconnected within {timeout}s") from None

    def disconnect(self, reason: int | None = None, props: dict[str, Any] | None = None) -> None:
        """Clean DISCONNECT (v5: with an optional reason code and properties)."""
        if self.connected:
            kw: dict[str, Any] = {}
            if self.version == V5:
                if reason is not None:
                    kw["reasoncode"] = ReasonCode(PacketTypes.DISCONNECT, identifier=reason)
                if props:
                    kw["properties"] = make_props(PacketTypes.DISCONNECT, props)
            self.c.disconnect(**kw)
            with self._cond:
                self._cond.wait_for(lambda: not self.connected, 5)
        self.c.loop_stop()

    def close(self) -> None:
        """Best-effort cleanup (used by fixtures)."""
        try:
            if self.connected:
                self.disconnect()
            else:
                self.c.loop_stop()
        except Exception:
            pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def v5_opts(version: int, **props: Any) -> dict[str, Any] | None:
    """Properties only for 5.0 clients."""
    return props if version == V5 else None


class ApiError(Exception):
    """An HTTP error answer from the API: status and parsed JSON body."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Api:
    """A tiny JSON client of the HTTP API (urllib only)."""

    def __init__(self, port: int, token: str | None):
        self.base = f"http://{HOST}:{port}"
        self.token = token

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             token: str | None = "default", timeout: float = 60.0) -> tuple[int, Any]:
        import json
        import urllib.error
        import urllib.request

        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        tok = self.token if token == "default" else token
        if tok is not None:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read()
                return resp.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                parsed = json.loads(text) if text else None
            except ValueError:
                parsed = text.decode(errors="replace")
            return e.code, parsed

    def ok(self, method: str, path: str, body: Any = None, expect: int | tuple[int, ...] = (200, 201, 204),
           **kw: Any) -> Any:
        status, data = self.call(method, path, body, **kw)
        allowed = (expect,) if isinstance(expect, int) else expect
        if status not in allowed:
            raise ApiError(status, data)
        return data

    def create_device(self, prefix: str = "dev", password: str = "dev-pw-1") -> tuple[str, str]:
        """Registers a device with a unique id; returns (id, password), its MQTT login."""
        dev_id = unique(prefix)
        self.ok("POST", "/api/v1/devices", {"id": dev_id, "password": password}, expect=201)
        return dev_id, password

    def create_app(self, publish: list[str] | None = None, subscribe: list[str] | None = None,
                   admin: bool = False, prefix: str = "app", password: str = "app-pw-1") -> tuple[str, str]:
        """Registers an app client with a unique id; returns its MQTT login ("app:{id}", password)."""
        app_id = unique(prefix)
        self.ok("POST", "/api/v1/apps", {"id": app_id, "publish": publish or [], "subscribe": subscribe or [],
                                         "admin": admin, "password": password}, expect=201)
        return f"app:{app_id}", password


def json_ctl(api_port: int, token: str):
    """A function running `myriad ctl --output json ARGS...` against the API on
    `api_port` with `token` (no other MYRIAD_* settings leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    env["MYRIAD_API"] = f"http://127.0.0.1:{api_port}"
    env["MYRIAD_API_TOKEN"] = token

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(myriad_bin()), "ctl", "--output", "json", *args], capture_output=True,
                              text=True, env=env, timeout=60)

    return ctl


def send_and_read_until_closed(port: int, payload: bytes) -> bytes:
    """Sends `payload` on a plain TCP connection and returns everything the
    server wrote until it closed (a reset counts as closed)."""
    got = b""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(payload)
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
    return got


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


# ------------------------------------------------------------------ TCP proxy

class Proxy:
    """A TCP proxy on a fixed local port to a target port (e.g. the broker's current one): `cut()` closes every
    connection, `refuse` closes new ones at once, `delay` holds every chunk that long."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.refuse = False
        self.delay = 0.0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopped = False
        self.accepted = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            if self.refuse:
                c.close()
                continue
            try:
                u = socket.create_connection((HOST, self.target_port), timeout=2)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            a.settimeout(None)
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if self.delay:
                    time.sleep(self.delay)
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.stopped = True
        self.cut()
        self.thread.join(2)
        self.sock.close()
