"""Helpers for the worker tests: push tasks, read rows, run worker subprocesses.

Also the handlers the worker subprocesses import (``worker_support:record``, …):
they talk to the test database named by $APALIS_TEST_RECORD_URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from ulid import ULID

from apalis_client.worker import Worker, WorkerConfig, WorkerStats
from apalis_generated.push import push_tasks

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)


# Timings short enough for tests: quick polls, heartbeats and orphan recovery, a bounded stop.
FAST = WorkerConfig(
    poll_interval=0.02,
    max_poll_interval=0.2,
    heartbeat_interval=0.5,
    orphan_threshold=2.0,
    shutdown_timeout=5.0,
)


def push(
    url: str,
    queue: str,
    payloads: Sequence[Any],
    *,
    max_attempts: int = 5,
    priorities: Sequence[int] | None = None,
    run_at: datetime | None = None,
    raw: bool = False,
) -> list[str]:
    """Push tasks with the generated push statement; returns their ids in order."""
    n = len(payloads)
    ids = [str(ULID()) for _ in range(n)]
    jobs = [p if raw else json.dumps(p).encode() for p in payloads]
    when = run_at or datetime.now(timezone.utc)
    with psycopg.connect(url, autocommit=True) as conn:
        push_tasks(
            conn,
            queue=queue,
            jobs=jobs,
            ids=ids,
            max_attempts=[max_attempts] * n,
            run_ats=[when] * n,
            priorities=list(priorities) if priorities is not None else [0] * n,
            metadata=["{}"] * n,
            idempotency_keys=[None] * n,
        )
    return ids


def rows(url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Run one query, rows as dicts."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def task(url: str, task_id: str) -> dict[str, Any]:
    """The jobs row of one task."""
    (row,) = rows(url, "SELECT * FROM apalis.jobs WHERE id = %s", task_id)
    return row


def statuses(url: str, queue: str) -> dict[str, int]:
    """Count of tasks per status in a queue."""
    found = rows(
        url,
        "SELECT status, count(*)::int AS n FROM apalis.jobs WHERE job_type = %s GROUP BY 1",
        queue,
    )
    return {r["status"]: r["n"] for r in found}


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Background:
    """Run ``worker.run()`` in a thread; ``finish()`` stops it and returns its stats."""

    def __init__(self, worker: Worker, **run_kwargs: Any) -> None:
        self.worker = worker
        self.stats: WorkerStats | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._go, args=(run_kwargs,), daemon=True)
        self.thread.start()
        if not worker.wait_until_ready(15):
            raise AssertionError(f"worker not ready: {self.error!r}")

    def _go(self, kwargs: dict[str, Any]) -> None:
        try:
            self.stats = self.worker.run(**kwargs)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 30) -> WorkerStats:
        self.worker.stop()
        return self.join(timeout)

    def join(self, timeout: float = 30) -> WorkerStats:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError("worker thread did not stop")
        if self.error is not None:
            raise self.error
        if self.stats is None:
            raise AssertionError("worker returned no stats")
        return self.stats


# Short enough that a killed worker's task comes back within a few seconds.
CRASH_FLAGS = (
    "--heartbeat-interval",
    "0.3",
    "--orphan-threshold",
    "1.5",
    "--poll-interval",
    "0.05",
)


def stop(proc: subprocess.Popen[str], sig: signal.Signals = signal.SIGTERM) -> str:
    """Signal a worker process (unless it already ended) and return its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    return out


def spawn_worker(
    url: str, queue: str, handler: str, *extra: str, record_url: str | None = None
) -> subprocess.Popen[str]:
    """Start ``apalis-client worker`` in a subprocess with this folder importable.

    ``extra`` follows the handler: more ``QUEUE=HANDLER`` routes, then options.

    Handlers record their runs through ``record_url`` (default: ``url``).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, env.get("PYTHONPATH", "")])
    env["APALIS_TEST_RECORD_URL"] = record_url or url
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apalis_client",
            "worker",
            queue,
            handler,
            *extra,
            "--database-url",
            url,
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Proxy:
    """A small TCP proxy in front of the test server, for faults between client and server.

    ``url`` is the database URL through the proxy. ``cut_reply_containing(needle)`` arms it:
    the first server-to-client chunk holding ``needle`` is dropped and that connection closed
    on both sides (the statement committed, its reply never arrives). ``down()`` closes every
    connection and refuses new ones (the server looks unreachable) until ``up()``.
    """

    def __init__(self, url: str) -> None:
        params = conninfo_to_dict(url)
        port = int(params.get("port") or 5432)
        host = str(params.get("host") or "127.0.0.1").split(",")[0]
        # A socket directory (the embedded server) or a TCP host.
        self.target: str | tuple[str, int] = (
            f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
        )
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = make_conninfo(url, host="127.0.0.1", port=self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.needle: bytes | None = None
        self.cut_at: float | None = None
        self.is_down = False
        self.closed = False
        # Connections refused while down: a client's attempts, counted.
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_reply_containing(self, needle: bytes) -> None:
        """Drop the first reply holding ``needle`` and close its connection."""
        with self.lock:
            self.needle, self.cut_at = needle, None

    def down(self) -> None:
        """Close every proxied connection and refuse new ones."""
        with self.lock:
            self.is_down = True
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            self._close(pair)

    def up(self) -> None:
        """Accept and forward connections again."""
        with self.lock:
            self.is_down = False

    def close(self) -> None:
        """Stop the proxy and close every connection."""
        self.closed = True
        self.down()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                refuse = self.is_down
            if refuse:
                client.close()
                with self.lock:
                    self.refused += 1
                continue
            try:
                if isinstance(self.target, str):
                    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    server.connect(self.target)
                else:
                    server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            pair = (client, server)
            with self.lock:
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, server = pair
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [], 0.5)
                with self.lock:
                    if pair not in self.pairs:
                        return
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is server and self._should_cut(data):
                        return
                    (server if src is client else client).sendall(data)
        except (OSError, ValueError):
            # Another thread (a cut or drop) closed the pair: select() then sees fd -1 and
            # raises ValueError, recv/send raise OSError. Either way this pump is done.
            return
        finally:
            with self.lock:
                if pair in self.pairs:
                    self.pairs.remove(pair)
            self._close(pair)

    def _should_cut(self, data: bytes) -> bool:
        with self.lock:
            if self.needle is None or self.needle not in data:
                return False
            self.needle, self.cut_at = None, time.monotonic()
            return True

    @staticmethod
    def _close(pair: tuple[socket.socket, socket.socket]) -> None:
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def ago(seconds: float) -> datetime:
    """A timestamp ``seconds`` in the past (negative: in the future)."""
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)


# --- handlers imported by worker subprocesses ------------------------------------------

_local = threading.local()


def _conn() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None:
        conn = psycopg.connect(os.environ["APALIS_TEST_RECORD_URL"], autocommit=True)
        _local.conn = conn
    return conn


def record(args: dict[str, int]) -> int:
    """Record (task number, worker pid, start, end) in test_runs; the run takes ~2 ms."""
    start = time.time()
    time.sleep(0.002)
    _conn().execute(
        "INSERT INTO test_runs (n, pid, started, ended) VALUES (%s, %s, %s, %s)",
        (args["n"], os.getpid(), start, time.time()),
    )
    return args["n"]


def echo(args: Any) -> Any:
    """Return the arguments as the result."""
    return args


def mark_and_hang(args: dict[str, int]) -> None:
    """Mark the task as started, then hang (the test SIGKILLs this process)."""
    _conn().execute(
        "INSERT INTO test_runs (n, pid, started) VALUES (%s, %s, %s)",
        (args["n"], os.getpid(), time.time()),
    )
    time.sleep(3600)


def slow(args: dict[str, float]) -> str:
    """Mark the start, sleep ``args['seconds']``, succeed."""
    _conn().execute(
        "INSERT INTO test_runs (n, pid, started) VALUES (%s, %s, %s)", (0, os.getpid(), time.time())
    )
    time.sleep(args["seconds"])
    return "finished"


def hang_once(args: dict[str, int]) -> int:
    """Record the run; the first run of a task hangs (the test SIGKILLs it), later ones return."""
    conn = _conn()
    earlier = conn.execute("SELECT count(*) FROM test_runs WHERE n = %s", (args["n"],)).fetchone()
    conn.execute(
        "INSERT INTO test_runs (n, pid, started) VALUES (%s, %s, %s)",
        (args["n"], os.getpid(), time.time()),
    )
    if earlier is None or earlier[0] == 0:
        time.sleep(3600)
    return args["n"]


def sleep_for(args: dict[str, float]) -> int:
    """Record the start of task ``args['n']``, then sleep ``args['seconds']``."""
    _conn().execute(
        "INSERT INTO test_runs (n, pid, started) VALUES (%s, %s, %s)",
        (int(args["n"]), os.getpid(), time.time()),
    )
    time.sleep(args["seconds"])
    return int(args["n"])


CREATE_RUNS = (
    "CREATE TABLE test_runs (n int NOT NULL, pid int NOT NULL, "
    "started float8 NOT NULL, ended float8)"
)


def fail(args: Any) -> None:
    """Always fail (a failed attempt, retried later)."""
    raise ValueError(f"refused {args!r}")
