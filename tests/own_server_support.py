"""A PostgreSQL server a test starts, crashes and restarts itself (initdb and pg_ctl)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOW_TO_INSTALL = (
    "install PostgreSQL's server binaries (Debian: apt-get install postgresql-15) or put "
    "initdb and pg_ctl on PATH"
)


class NoServerBinaries(RuntimeError):
    """initdb or pg_ctl is missing."""


def _bin_dir() -> Path:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    # Debian keeps them off PATH, one folder per major version: take the newest.
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not found:
        raise NoServerBinaries(f"no initdb found: {HOW_TO_INSTALL}")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnServer:
    """A throwaway cluster on a free TCP port, trust auth, superuser ``postgres``."""

    def __init__(self, workdir: Path) -> None:
        self.bin = _bin_dir()
        self.workdir = workdir
        self.pgdata = workdir / "pgdata"
        self.port = _free_port()
        # initdb and postgres refuse to run as root: run them as an ordinary system user.
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres" if _user_exists("postgres") else "nobody"
            os.chown(workdir, pwd.getpwnam(self.user).pw_uid, -1)

    def _run(self, *argv: str, timeout: float = 120) -> None:
        done = subprocess.run(
            argv,
            user=self.user,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            log = self.log()
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr}\n{log}")

    def init(self) -> None:
        """Create the cluster."""
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections (after crash recovery)."""
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c max_connections=50"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.pgdata),
            "-o",
            opts,
            "-l",
            str(self.workdir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def crash(self) -> None:
        """Stop at once, as a crash does: backends die mid-statement, no checkpoint."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-m", "immediate", "stop")

    def stop(self) -> None:
        """A fast shutdown (the end of the test)."""
        if (self.pgdata / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "stop")

    def url(self, dbname: str = "postgres") -> str:
        """A URL of a database on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        path = self.workdir / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def own_server() -> Iterator[OwnServer]:
    """A started server of our own, stopped and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="apalis-own-pg-") as tmp:
        server = OwnServer(Path(tmp))
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.stop()
