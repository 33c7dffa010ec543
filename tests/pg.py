"""A real PostgreSQL server for the tests: Debian's `postgresql` package
(/usr/lib/postgresql/<version>/bin; PATH is not used), one cluster per pytest(-xdist)
worker in a fresh temporary directory, on 127.0.0.1 and a free port, trust
authentication for user ``postgres``. Stopped by its PID.

initdb and postgres refuse to run as root: as root the cluster belongs to ``nobody``
and both run as that user (``subprocess`` ``user=``/``group=``).

When PostgreSQL is missing the tests fail with a message saying how to install it
(``.ci/run`` installs it); nothing is skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

PG_ROOT = Path(os.environ.get("MYRIAD_TEST_PG_ROOT", "/usr/lib/postgresql"))
START_TIMEOUT = 30.0


def pg_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and postgres."""
    versions = []
    if PG_ROOT.is_dir():
        for d in PG_ROOT.iterdir():
            b = d / "bin"
            if d.name.isdigit() and (b / "initdb").exists() and (b / "postgres").exists():
                versions.append((int(d.name), b))
    if not versions:
        raise RuntimeError(
            f"PostgreSQL is not installed: no {PG_ROOT}/<version>/bin/initdb. "
            "Install Debian's `postgresql` package (.ci/run does: apt-get install postgresql)."
        )
    return max(versions)[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A PostgreSQL cluster in its own directory; `start()`, `stop()`, `kill9()`, `start()` again."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        # fsync off (an OS crash is not tested; a killed postgres loses nothing with it off);
        # synchronous_commit stays on: a COMMIT that returned survives kill -9 of postgres.
        self.settings = {"fsync": "off", "full_page_writes": "off", "max_connections": "50",
                         "shared_buffers": "64MB", **(settings or {})}
        self.bin = pg_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="myriad-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.sock.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "postgres.log"
        self.user: dict = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            os.chmod(self.root, 0o755)
            for p in (self.root, self.sock):
                os.chown(p, nobody.pw_uid, nobody.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "HOME": str(self.root)}
        self.env = env
        p = subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            capture_output=True, env=env, cwd=self.root, timeout=120, **self.user,
        )
        if p.returncode != 0:
            raise RuntimeError(f"initdb failed ({p.returncode}): {p.stderr.decode(errors='replace')}")

    def url(self, db: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def start(self) -> "Postgres":
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.sock),
             "-h", "127.0.0.1", *[a for k, v in self.settings.items() for a in ("-c", f"{k}={v}")]],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, cwd=self.root, **self.user,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as c:
                    c.execute("SELECT 1")
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready after {START_TIMEOUT} s:\n{self.log()}")
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it takes over 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill9(self) -> None:
        """SIGKILL the postmaster; its backends notice and exit; a restart recovers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        # Backends exit once they see the postmaster gone; wait for the shared memory
        # lock (postmaster.pid) to be free by retrying start() in the caller.

    def connect(self, db: str = "postgres", **kw) -> psycopg.Connection:
        return psycopg.connect(self.url(db), autocommit=True, **kw)

    def create_db(self, name: str) -> str:
        with self.connect() as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
