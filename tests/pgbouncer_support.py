"""A real PgBouncer in transaction mode in front of the test server, started by a fixture.

Debian's ``pgbouncer`` package provides the binary (``.ci/run`` installs it when absent). The
fixture writes its own config into a temporary folder, listens on a free loopback port, lets
clients in without a password (``auth_type = trust``) and logs in to the test server with the
credentials of the fixture chain's URL, whichever server that chain found (the local one, a
container or the embedded PostgreSQL). Any database name is forwarded as is (``*``), so the
per-test databases are reachable through it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

HOW_TO_INSTALL = (
    "PgBouncer is needed for these tests and could not be started. Install Debian's package "
    "(`apt-get update && apt-get install -y pgbouncer`, as `.ci/run` does), or put a "
    "`pgbouncer` binary on PATH or in APALIS_TEST_PGBOUNCER."
)

# Small on purpose: a handful of server connections shared by many clients is what makes a
# client's statements land on a server session another client prepared on.
POOL_SIZE = 4


class PgBouncerUnavailable(RuntimeError):
    """PgBouncer is not installed or did not come up; the message says how to fix it."""


def pgbouncer_binary(candidates: Sequence[str | None] | None = None) -> str:
    """The pgbouncer executable: APALIS_TEST_PGBOUNCER, PATH, or Debian's /usr/sbin."""
    if candidates is None:
        candidates = (
            os.environ.get("APALIS_TEST_PGBOUNCER"),
            shutil.which("pgbouncer"),
            "/usr/sbin/pgbouncer",
        )
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise PgBouncerUnavailable(HOW_TO_INSTALL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quote(value: str) -> str:
    # libpq-style value inside pgbouncer's [databases] connect string.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer: where it listens and how to reach a database through it."""

    port: int
    user: str
    password: str | None
    workdir: Path

    def url(self, direct_url: str) -> str:
        """The URL of ``direct_url``'s database, through the pooler."""
        dbname = conninfo_to_dict(direct_url).get("dbname") or "postgres"
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, user=self.user, dbname=str(dbname)
        )

    def admin_url(self) -> str:
        """The URL of PgBouncer's admin console (``SHOW POOLS`` and friends)."""
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, user=self.user, dbname="pgbouncer"
        )

    def log(self) -> str:
        """What PgBouncer logged so far (for failure messages)."""
        path = self.workdir / "pgbouncer.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _config(server_url: str, port: int, workdir: Path) -> tuple[str, str, str | None]:
    params = conninfo_to_dict(server_url)
    user = str(params.get("user") or os.environ.get("PGUSER") or "postgres")
    password = params.get("password")
    target = {
        "host": str(params.get("host") or params.get("hostaddr") or "127.0.0.1"),
        "port": str(params.get("port") or 5432),
        "user": user,
    }
    if password:
        target["password"] = str(password)
    connect = " ".join(f"{k}={_quote(v)}" for k, v in target.items())
    users = workdir / "users.txt"
    users.write_text(f'"{user}" ""\n', encoding="utf-8")
    text = f"""\
[databases]
* = {connect}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
admin_users = {user}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 400
server_lifetime = 3600
server_idle_timeout = 600
"""
    return text, user, str(password) if password else None


def _run_as(server_url: str) -> str:
    # A server reached by a Unix socket (the embedded one) keeps it in a folder only its own
    # system user may enter; over TCP any unprivileged user will do.
    host = str(conninfo_to_dict(server_url).get("host") or "")
    if host.startswith("/") and os.path.isdir(host):
        return pwd.getpwuid(os.stat(host).st_uid).pw_name
    return "nobody"


@contextmanager
def start_pgbouncer(server_url: str) -> Iterator[PgBouncer]:
    """Start PgBouncer in transaction mode in front of ``server_url``'s server; stop it after."""
    binary = pgbouncer_binary()
    with tempfile.TemporaryDirectory(prefix="apalis-pgbouncer-") as tmp:
        workdir = Path(tmp)
        port = _free_port()
        text, user, password = _config(server_url, port, workdir)
        ini = workdir / "pgbouncer.ini"
        ini.write_text(text, encoding="utf-8")
        command = [binary]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root; it drops to this user and must read its files.
            command += ["-u", _run_as(server_url)]
            os.chmod(workdir, 0o755)
            for path in workdir.iterdir():
                os.chmod(path, 0o644)
        command.append(str(ini))
        with open(workdir / "pgbouncer.log", "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        bouncer = PgBouncer(port, user, password, workdir)
        try:
            _wait_ready(proc, bouncer)
            yield bouncer
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], bouncer: PgBouncer) -> None:
    deadline = time.monotonic() + 15
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PgBouncerUnavailable(
                f"pgbouncer exited with status {proc.returncode}: {bouncer.log().strip()}\n"
                + HOW_TO_INSTALL
            )
        try:
            with psycopg.connect(bouncer.admin_url(), autocommit=True, connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
    proc.kill()
    raise PgBouncerUnavailable(f"pgbouncer did not accept connections in 15 s ({last})")


@pytest.fixture(scope="session")
def pgbouncer(server_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the test server (fails, never skips)."""
    try:
        with start_pgbouncer(server_url) as bouncer:
            yield bouncer
    except PgBouncerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def pooled_db(pgbouncer: PgBouncer, migrated_db: str) -> str:
    """URL of a fresh migrated database, reached through PgBouncer in transaction mode."""
    return pgbouncer.url(migrated_db)
