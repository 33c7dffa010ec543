"""The PostgreSQL sink over TLS (`sslmode=require`): against a real PostgreSQL with `ssl = on`
and a certificate from `myriad ctl certs dev-ca`. The sink verifies the server's certificate
(the CA from `ca_file`) and its name; without the CA it refuses the server and retries."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import Client, myriad_bin, unique, wait_until
from pg import Postgres
from test_pipelines import (  # noqa: F401 (serve: the fixture)
    metric,
    metrics,
    pipeline_toml,
    refused_startup,
    serve,
    toml_str,
)

SQL = "SELECT payload.seq AS seq, topic(2) AS device FROM 'pgtls/+/in'"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("devca")
    subprocess.run([str(myriad_bin()), "ctl", "certs", "dev-ca", "--out", str(out)],
                   check=True, capture_output=True, timeout=30)
    return out


@pytest.fixture(scope="module")
def tls_postgres(certs):
    """A PostgreSQL server with ssl = on (server.pem / server.key of the dev CA)."""
    pg = Postgres()
    for name in ("server.pem", "server.key"):
        shutil.copy(certs / name, pg.root / name)
        os.chmod(pg.root / name, 0o600)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(pg.root / name, nobody.pw_uid, nobody.pw_gid)
    pg.settings.update({"ssl": "on", "ssl_cert_file": str(pg.root / "server.pem"),
                        "ssl_key_file": str(pg.root / "server.key")})
    pg.start()
    yield pg
    pg.close()


def tls_sink(url: str, ca_file: Path | None) -> str:
    parts = ['type = "postgres"', f"url = {toml_str(url + '?sslmode=require')}", 'table = "t"',
             'key = ["seq", "device"]']
    if ca_file is not None:
        parts.append(f"ca_file = {toml_str(str(ca_file))}")
    return "{ " + ", ".join(parts) + " }"


def new_table(pg: Postgres) -> tuple[str, str]:
    name = unique("db")
    url = pg.create_db(name)
    with pg.connect(name) as conn:
        conn.execute("CREATE TABLE t (seq int8, device text, PRIMARY KEY (seq, device))")
    return name, url


def test_rows_arrive_over_verified_tls(serve, tls_postgres, certs, tmp_path):
    name, url = new_table(tls_postgres)
    s = serve(pipeline_toml("tls", SQL, tls_sink(url, certs / "ca.pem"), tmp_path / "dead.jsonl"))
    n = 200
    with Client(s.port) as c:
        for i in range(n):
            c.publish(f"pgtls/d{i % 7}/in", json.dumps({"seq": i}), qos=1, wait=False)
        c.publish("pgtls/last/in", json.dumps({"seq": n}), qos=1)
    with tls_postgres.connect(name) as conn:
        assert wait_until(lambda: conn.execute("SELECT count(*) FROM t").fetchone()[0] == n + 1, 30, 0.2)
        # The sink's own session is encrypted.
        rows = conn.execute(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = 'myriad-pipeline'").fetchall()
    assert rows and all(ssl for (ssl,) in rows), rows


def test_an_unverifiable_server_is_refused_and_retried(serve, tls_postgres, tmp_path):
    name, url = new_table(tls_postgres)
    # No ca_file: the dev CA is not among the Mozilla roots.
    s = serve(pipeline_toml("untrusted", SQL, tls_sink(url, None), tmp_path / "dead.jsonl"))
    with Client(s.port) as c:
        c.publish("pgtls/d1/in", json.dumps({"seq": 1}), qos=1)
    assert wait_until(
        lambda: metric(metrics(s.api_port), "myriad_pipeline_retries_total", pipeline="untrusted") >= 2, 20, 0.2)
    assert "certificate" in s.log().lower(), s.log()[-3000:]
    with tls_postgres.connect(name) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    assert not (tmp_path / "dead.jsonl").exists()


@pytest.mark.parametrize("url_tail, ca, key", [
    ("", "ca.pem", "pipelines[0].sink.ca_file"),  # a CA without sslmode=require
    ("?sslmode=require", "missing.pem", "pipelines[0].sink.ca_file"),
    ("?sslmode=require", "server.key", "pipelines[0].sink.ca_file"),  # no certificate in it
])
def test_bad_tls_settings_stop_startup_naming_the_key(tmp_path, certs, url_tail, ca, key):
    sink = ('{ type = "postgres", url = ' + toml_str(f"postgres://u@127.0.0.1:1/db{url_tail}")
            + f', table = "t", ca_file = {toml_str(str(certs / ca))} }}')
    out = refused_startup(tmp_path, pipeline_toml("bad", SQL, sink, tmp_path / "dead.jsonl"))
    assert f"invalid value for {key}" in out, out
