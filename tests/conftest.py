"""Fixtures: one broker process per test module (config from the module's
``BROKER_CONFIG`` dict), fresh brokers on demand, and client factories that
clean up after themselves.

The fixtures build nothing: they run the binary at MYRIAD_BIN (default
target/release/myriad relative to the repo root) as
``myriad serve --config <tmp>/myriad.toml --listen 127.0.0.1:0`` and read the
port from its ``MQTT listening on 127.0.0.1:PORT`` line. They stop it by PID:
SIGTERM, wait, SIGKILL if needed.
"""

from __future__ import annotations

import pytest

from helpers import Broker, Client, broker_kind, unique
from mqtt_raw import RawClient


def pytest_configure(config):
    config.addinivalue_line("markers", "myriad_only: Myriad-specific behaviour")


def pytest_collection_modifyitems(config, items):
    if broker_kind() == "mosquitto":
        skip = pytest.mark.skip(reason="Myriad-specific; not checked against mosquitto")
        for item in items:
            if "myriad_only" in item.keywords:
                item.add_marker(skip)


def pytest_report_header(config):
    from helpers import myriad_bin

    if broker_kind() == "mosquitto":
        return "broker under test: /usr/sbin/mosquitto (MYRIAD_TEST_BROKER=mosquitto)"
    return f"broker under test: {myriad_bin()}"


@pytest.fixture(scope="module")
def broker(request, tmp_path_factory):
    """The module's broker, configured by the module-level ``BROKER_CONFIG`` dict."""
    config = getattr(request.module, "BROKER_CONFIG", {})
    b = Broker(tmp_path_factory.mktemp("broker"), config).start()
    yield b
    crashed = not b.alive()
    code = b.stop()
    if crashed:
        pytest.fail(f"broker exited during the module (exit={code})\n{b.log_tail()}")


@pytest.fixture
def port(broker):
    return broker.port


@pytest.fixture(autouse=True)
def _broker_still_alive(request):
    """After each test that used the module broker, check it did not crash."""
    yield
    if "broker" in request.fixturenames:
        b = request.getfixturevalue("broker")
        b.assert_alive()


@pytest.fixture
def broker_factory(tmp_path):
    """Start extra brokers with their own config: ``broker_factory({"mqtt": {...}})``."""
    started: list[Broker] = []

    def make(config: dict | None = None, raw_config: str | None = None) -> Broker:
        b = Broker(tmp_path / f"broker{len(started)}", config or {}, raw_config=raw_config)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def fresh_broker(broker_factory, request):
    """A broker of its own for one test (same config as the module's)."""
    return broker_factory(getattr(request.module, "BROKER_CONFIG", {}))


@pytest.fixture
def uid():
    """A unique prefix for topics and client ids (the module broker is shared by its tests)."""
    return unique("t")


@pytest.fixture
def client(request):
    """Factory of connected paho clients: ``client(port, version=5, **kw)``; all closed after the test."""
    made: list[Client] = []

    def make(port: int, version: int = 5, **kw) -> Client:
        c = Client(port, version=version, connect=False, **{k: v for k, v in kw.items() if k not in ("connect", "expect_rc")})
        made.append(c)
        if kw.get("connect", True):
            c.connect(expect_rc=kw.get("expect_rc", 0))
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def raw():
    """Factory of raw-socket clients: ``raw(port, version=5)``; all closed after the test."""
    made: list[RawClient] = []

    def make(port: int, version: int = 5) -> RawClient:
        r = RawClient(port, version)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (tests/pg.py), one per xdist worker, stopped by PID at the end."""
    from pg import Postgres

    pg = Postgres().start()
    yield pg
    pg.close()
