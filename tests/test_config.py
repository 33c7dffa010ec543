"""The `myriad serve` process: config file, flags and env, bad config, graceful shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from helpers import HOST, LISTEN_RE, V5, myriad_bin, to_toml
from mqtt_raw import RawClient

pytestmark = pytest.mark.myriad_only


class Proc:
    """Run the binary with given args/env; collect stdout/stderr; stop by PID."""

    def __init__(self, args: list[str], env_extra: dict[str, str] | None = None, cwd=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
        # The HTTP API on a free port unless a test says otherwise: the default
        # 8080 may be taken on the machine running the tests.
        if not any(a.startswith("--api-listen") for a in args):
            env["MYRIAD_API_LISTEN"] = f"{HOST}:0"
        env.update(env_extra or {})
        self.p = subprocess.Popen(
            [str(myriad_bin()), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, cwd=cwd,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.port: int | None = None
        self._port_evt = threading.Event()
        threading.Thread(target=self._read, args=(self.p.stdout, self.out, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.p.stderr, self.err, False), daemon=True).start()

    def _read(self, stream, sink, is_stdout):
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            sink.append(line)
            m = LISTEN_RE.match(line)
            if is_stdout and m and self.port is None:
                self.port = int(m.group(1))
                self._port_evt.set()
        if is_stdout:
            self._port_evt.set()

    def wait_port(self, timeout: float = 20) -> int:
        self._port_evt.wait(timeout)
        assert self.port is not None, f"no listening line; exit={self.p.poll()} stdout={self.out} stderr={self.err[-20:]}"
        return self.port

    def wait_exit(self, timeout: float = 15) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"process still running after {timeout}s; stderr={self.err[-20:]}") from None

    def output(self) -> str:
        time.sleep(0.1)
        return "\n".join(self.out + self.err)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)

    def terminate(self, timeout: float = 10) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not exit within {timeout}s of SIGTERM") from None


@pytest.fixture
def proc():
    made: list[Proc] = []

    def make(*args, **kw) -> Proc:
        p = Proc(list(args), **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill()


def write(tmp_path, text: str):
    f = tmp_path / "myriad.toml"
    f.write_text(text)
    return str(f)


def test_sigterm_exits_zero_with_clients_connected(proc, tmp_path):
    p = proc("serve", "--config", write(tmp_path, ""), "--listen", f"{HOST}:0", cwd=tmp_path)
    port = p.wait_port()
    r = RawClient(port, V5)
    r.connect("sigterm-client")
    try:
        assert p.terminate() == 0, p.output()
    finally:
        r.close()
    # exactly one listening line
    assert sum(1 for line in p.out if line.startswith("MQTT listening on")) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_right_after_listening_line_exits_zero(proc, tmp_path, sig):
    """Once the listening line is printed, SIGTERM / Ctrl-C must already be handled gracefully."""
    p = proc("serve", "--config", write(tmp_path, ""), "--listen", f"{HOST}:0", cwd=tmp_path)
    p.wait_port()
    p.p.send_signal(sig)
    assert p.wait_exit() == 0, p.output()


def test_sigint_exits_zero_with_clients_connected(proc, tmp_path):
    p = proc("serve", "--config", write(tmp_path, ""), "--listen", f"{HOST}:0", cwd=tmp_path)
    port = p.wait_port()
    with RawClient(port, V5) as r:
        r.connect("sigint-client")
        p.p.send_signal(signal.SIGINT)
        assert p.wait_exit() == 0, p.output()


def test_empty_config_file_is_valid(proc, tmp_path):
    p = proc("serve", "--config", write(tmp_path, ""), "--listen", f"{HOST}:0", cwd=tmp_path)
    p.wait_port()
    assert p.terminate() == 0


def test_full_config_file_is_valid(proc, tmp_path):
    cfg = {
        "mqtt": {
            "listen": "127.0.0.1:0",
            "max_keep_alive_secs": 65535,
            "max_packet_size": 1048576,
            "receive_maximum": 1024,
            "topic_alias_maximum": 64,
            "max_session_expiry_secs": 4294967295,
            "max_queued_messages": 1000,
            "deny_subscribe": [],
        }
    }
    p = proc("serve", "--config", write(tmp_path, to_toml(cfg)), cwd=tmp_path)
    port = p.wait_port()
    with RawClient(port, V5) as r:
        ack = r.connect("full-config")
        assert ack.props.get("ReceiveMaximum", 65535) == 1024
    assert p.terminate() == 0


def test_listen_from_env(proc, tmp_path):
    p = proc("serve", "--config", write(tmp_path, ""), env_extra={"MYRIAD_LISTEN": f"{HOST}:0"}, cwd=tmp_path)
    p.wait_port()
    assert p.terminate() == 0


def test_config_path_from_env(proc, tmp_path):
    path = write(tmp_path, to_toml({"mqtt": {"max_keep_alive_secs": 7}}))
    p = proc("serve", "--listen", f"{HOST}:0", env_extra={"MYRIAD_CONFIG": path}, cwd=tmp_path)
    port = p.wait_port()
    with RawClient(port, V5) as r:
        ack = r.connect("env-config", keepalive=100)
        assert ack.props.get("ServerKeepAlive") == 7, ack
    assert p.terminate() == 0


def test_listen_flag_overrides_config(proc, tmp_path):
    # the config names a port we never look at; the flag's port 0 must win
    path = write(tmp_path, to_toml({"mqtt": {"listen": "127.0.0.1:1"}}))
    p = proc("serve", "--config", path, "--listen", f"{HOST}:0", cwd=tmp_path)
    assert p.wait_port() != 1
    assert p.terminate() == 0


@pytest.mark.parametrize(
    "text,key",
    [
        ('[mqtt]\nmax_packet_sise = 10\n', "max_packet_sise"),
        ('[mqtt]\nfrobnicate = true\n', "frobnicate"),
        ('[mqtt]\nmax_packet_size = "big"\n', "max_packet_size"),
        ('[mqtt]\nreceive_maximum = -1\n', "receive_maximum"),
        ('[mqtt]\nmax_keep_alive_secs = 70000\n', "max_keep_alive_secs"),
        ('[mqtt]\ndeny_subscribe = "a/#"\n', "deny_subscribe"),
        ('[mqtt]\nlisten = "not an address"\n', "listen"),
        ('[mqtt]\nmax_connections = 0\n', "mqtt.max_connections"),
        ('[mqtt]\nlisten_backlog = 0\n', "mqtt.listen_backlog"),
        ('[mqtt]\nmax_inflight = 0\n', "mqtt.max_inflight"),
        ('[mqtt]\nmax_inflight = 70000\n', "max_inflight"),
        ('[mqtt]\nmax_outbound_qos0 = 0\n', "mqtt.max_outbound_qos0"),
        ('[mqtt]\nmax_queued_bytes = 0\n', "mqtt.max_queued_bytes"),
        ('[mqtt]\ninternal_max_queued_bytes = 0\n', "mqtt.internal_max_queued_bytes"),
        ('[shadows.requests_per_device]\nburst = 0\n', "shadows.requests_per_device.burst"),
        ('[shadows.requests_per_device]\nper_second = -1\n', "shadows.requests_per_device.per_second"),
        ('[shadows]\nrequests_per_minute = 3\n', "requests_per_minute"),
        ('[ota]\nmax_artifacts = 0\n', "ota.max_artifacts"),
        ('[ota]\ndownload_url_ttl_secs = 5\n', "ota.download_url_ttl_secs"),
        ('[ota]\nsigning_key = "/nonexistent/key.pem"\n', "ota.signing_key"),
        ('[ota]\nsigning_chain = "/nonexistent/chain.pem"\n', "ota.signing_chain"),
    ],
    ids=["typo-key", "unknown-key", "string-for-int", "negative", "u16-overflow", "not-a-list", "bad-address",
         "no-connections", "no-backlog", "no-inflight", "inflight-overflow", "no-qos0-outbox", "no-budget", "no-internal-budget",
         "shadow-burst-0", "shadow-rate-negative", "shadow-unknown-key", "ota-artifacts-0", "ota-ttl-short",
         "ota-missing-key", "ota-chain-without-key"],
)
def test_bad_config_stops_startup_naming_the_key(proc, tmp_path, text, key):
    args = ["serve", "--config", write(tmp_path, text)]
    if key != "listen":
        args += ["--listen", f"{HOST}:0"]
    p = proc(*args, cwd=tmp_path)
    code = p.wait_exit(15)
    assert code != 0
    out = p.output()
    assert key in out, f"error output should name {key!r}: {out!r}"
    assert not any(line.startswith("MQTT listening on") for line in p.out)


def test_missing_config_file_fails(proc, tmp_path):
    p = proc("serve", "--config", str(tmp_path / "nope.toml"), "--listen", f"{HOST}:0", cwd=tmp_path)
    assert p.wait_exit(15) != 0
