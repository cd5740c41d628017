"""Real Redis and PostgreSQL servers for tests, each started in a temporary directory on a free
loopback port and stopped at the end of the session.

Use from a test module with `pytest_plugins = ("tests.services",)`; tests then take the
`redis_server` / `postgres_server` fixtures and should carry `pytestmark = pytest.mark.services`.
The fixtures skip, with the reason, only when the Debian binaries are missing (`.ci/run` installs
`redis-server` and `postgresql`). PostgreSQL refuses to run as root: under root the cluster is
created and run as the `postgres` system user (which the Debian package creates) via `runuser`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smartapp.ops.demo import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not come up within {timeout:g} s")


# -- Redis ----------------------------------------------------------------------------------------
@dataclass
class RedisServer:
    """A throwaway Redis without persistence; `stop()`/`start()` restart it on the same port."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def start_redis(workdir: Path) -> RedisServer:
    server = RedisServer(free_port(), workdir)
    server.start()
    return server


@pytest.fixture(scope="session", name="redis_server")
def _redis_server_fixture() -> Iterator[RedisServer]:
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (Debian package redis-server; see .ci/run)")
    workdir = Path(tempfile.mkdtemp(prefix="pb-redis-"))
    server = start_redis(workdir)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


# -- PostgreSQL -----------------------------------------------------------------------------------
@dataclass
class PostgresServer:
    """A throwaway cluster; `url(db)` gives a SQLAlchemy URL, `stop()`/`start()` restart it."""

    bindir: Path
    datadir: Path
    port: int
    as_user: tuple[str, ...]
    process: subprocess.Popen[bytes] | None = None
    superuser: str = "peerbridge"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], check=True, stdout=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *self.as_user,
                str(self.bindir / "postgres"),
                "-D",
                str(self.datadir),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.datadir),
                # A test cluster: durability is not the point, speed is.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, self.process)
        self._wait_accepting()

    def _wait_accepting(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self._dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _dsn(self, database: str) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "stop")
            self.process.wait(timeout=30)
        self.process = None

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_postgres(workdir: Path) -> PostgresServer:
    bindir = _postgres_bin()
    if bindir is None:
        raise FileNotFoundError("initdb")
    datadir = workdir / "data"
    as_user: tuple[str, ...] = ()
    if os.geteuid() == 0:
        # postgres will not run as root; the Debian package's `postgres` user owns the cluster.
        shutil.chown(workdir, "postgres", "postgres")
        as_user = ("runuser", "-u", "postgres", "--")
    server = PostgresServer(bindir, datadir, free_port(), as_user)
    server._run(
        str(bindir / "initdb"),
        "-D",
        str(datadir),
        "-U",
        server.superuser,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-sync",
    )
    server.start()
    return server


@pytest.fixture(scope="session", name="postgres_server")
def _postgres_server_fixture() -> Iterator[PostgresServer]:
    if _postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; see .ci/run)")
    workdir = Path(tempfile.mkdtemp(prefix="pb-postgres-"))
    os.chmod(workdir, 0o755)
    server = start_postgres(workdir)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)
