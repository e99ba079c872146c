"""Start-up while the database restarts: a lost connection or an unreachable server during
registration is retried until the worker registers or is stopped; other errors fail fast."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from worker_support import Proxy, push, rows, spawn_worker, statuses, wait_for

from apalis_client import worker_ops as ops
from apalis_client.errors import AlreadyRegistered, PermissionDenied, SchemaMissing
from apalis_client.worker import Route, Worker, WorkerConfig, WorkerStats
from apalis_client.worker_ops_logic import new_lease_token

RETRY_LINE = "could not register on queue"


class Output:
    """Collects a worker process's output lines as they come (stdout and stderr merged)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def text(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self.thread.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def runs_per_task(url: str) -> dict[int, int]:
    found = rows(url, "SELECT n, count(*)::int AS runs FROM test_runs GROUP BY n ORDER BY n")
    return {r["n"]: r["runs"] for r in found}


def registered(url: str, worker_id: str) -> bool:
    found = rows(
        url,
        "SELECT 1 FROM apalis.workers WHERE id = %s AND lease_token IS NOT NULL",
        worker_id,
    )
    return bool(found)


def run_in_thread(worker: Worker) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``worker.run()`` in a thread; the dict gets its ``stats`` or ``error``."""
    result: dict[str, Any] = {}

    def go() -> None:
        try:
            result["stats"] = worker.run()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result


@pytest.fixture
def proxy(runs_db: str) -> Iterator[Proxy]:
    p = Proxy(runs_db)
    yield p
    p.close()


# --- retried: terminated connections, an unreachable server ---------------------------------


def test_connections_terminated_during_start_up_still_register_and_run_each_task_once(
    migrated_db: str, record_db: str
) -> None:
    n = 50
    push(migrated_db, "boot", [{"n": i} for i in range(n)])
    dbname = conninfo_to_dict(migrated_db)["dbname"]
    proc = spawn_worker(
        migrated_db,
        "boot",
        "worker_support:record",
        *("--worker-id", "boot-1", "--poll-interval", "0.05", "--concurrency", "2"),
        record_url=record_db,
    )
    out = Output(proc)
    try:
        # Every backend of the queue database is terminated, again and again, until the
        # worker has had to retry its start-up three times.
        deadline = time.monotonic() + 60
        with psycopg.connect(record_db, autocommit=True) as killer:
            while out.count(RETRY_LINE) < 3:
                assert proc.poll() is None, out.text()
                assert time.monotonic() < deadline, out.text()
                killer.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND backend_type = 'client backend'",
                    (dbname,),
                )
                time.sleep(0.005)
        wait_for(lambda: registered(migrated_db, "boot-1"), 30, "the worker to register")
        wait_for(lambda: statuses(migrated_db, "boot") == {"Done": n}, 60, "every task Done")
    finally:
        code = out.stop()
    assert code == 0, out.text()
    runs = runs_per_task(record_db)
    assert sorted(runs) == list(range(n))
    assert {k: v for k, v in runs.items() if v != 1} == {}


def test_a_worker_started_while_the_server_is_unreachable_registers_once_it_is_back(
    runs_db: str, proxy: Proxy
) -> None:
    n = 20
    push(runs_db, "late", [{"n": i} for i in range(n)])
    proxy.down()
    proc = spawn_worker(
        proxy.url,
        "late",
        "worker_support:record",
        *("--worker-id", "late-1", "--poll-interval", "0.05", "--max-poll-interval", "0.5"),
        record_url=runs_db,
    )
    out = Output(proc)
    try:
        wait_for(lambda: proxy.refused >= 3, 30, "three refused connection attempts")
        assert proc.poll() is None, out.text()  # still retrying, not exited
        assert not registered(runs_db, "late-1")
        proxy.up()
        wait_for(lambda: registered(runs_db, "late-1"), 30, "the worker to register")
        wait_for(lambda: statuses(runs_db, "late") == {"Done": n}, 60, "every task Done")
    finally:
        code = out.stop()
    assert code == 0, out.text()
    assert out.count(RETRY_LINE) >= 1, out.text()
    assert runs_per_task(runs_db) == {i: 1 for i in range(n)}


def test_stop_during_the_start_up_retry_ends_the_run_without_waiting_out_the_backoff(
    runs_db: str, proxy: Proxy
) -> None:
    proxy.down()
    # The backoff after the first failure is a minute: only an interrupted wait ends sooner.
    config = WorkerConfig(poll_interval=60.0, max_poll_interval=60.0)
    worker = Worker("stopq", lambda n: n, conninfo=proxy.url, worker_id="stop-1", config=config)
    thread, result = run_in_thread(worker)
    wait_for(lambda: proxy.refused >= 1, 30, "a refused connection attempt")
    worker.stop()
    thread.join(30)
    assert not thread.is_alive(), "run() was still waiting out the start-up backoff"
    assert "error" not in result, result
    stats: WorkerStats = result["stats"]
    assert (stats.claimed, stats.acked) == (0, 0)
    assert not worker.wait_until_ready(0)
    assert rows(runs_db, "SELECT id FROM apalis.workers WHERE id = 'stop-1'") == []


def test_sigterm_during_the_start_up_retry_exits_cleanly(runs_db: str, proxy: Proxy) -> None:
    proxy.down()
    proc = spawn_worker(
        proxy.url,
        "stopq",
        "worker_support:record",
        *("--poll-interval", "60", "--max-poll-interval", "60"),
        record_url=runs_db,
    )
    out = Output(proc)
    wait_for(lambda: proxy.refused >= 1, 30, "a refused connection attempt")
    wait_for(lambda: out.count(RETRY_LINE) >= 1, 30, "the retry warning")
    code = out.stop()  # within 60 s: the backoff alone would take as long
    assert code == 0, out.text()
    assert "stopped before registering on queue stopq" in out.text()


def test_a_queue_that_fails_to_start_ends_the_start_up_retries_of_the_others(
    runs_db: str, proxy: Proxy
) -> None:
    with psycopg.connect(runs_db, autocommit=True) as conn:
        live = ops.register_worker(conn, "reports", "m5")  # a live peer of the same id
    # The registration reply of queue emails is cut (its row: id m5, worker_type emails):
    # that lane would wait a minute before its retry.
    proxy.cut_reply_containing(b"\x00\x00\x00\x02m5\x00\x00\x00\x06emails")
    config = WorkerConfig(poll_interval=60.0, max_poll_interval=60.0)
    routes = [Route("emails", abs), Route("reports", abs)]
    worker = Worker(routes, conninfo=proxy.url, worker_id="m5", config=config)
    thread, result = run_in_thread(worker)
    thread.join(30)
    assert not thread.is_alive(), "a lane went on retrying after another failed to start"
    assert proxy.cut_at is not None, "the registration reply of emails was never cut"
    assert isinstance(result.get("error"), AlreadyRegistered), result
    found = rows(runs_db, "SELECT worker_type, lease_token FROM apalis.workers WHERE id = 'm5'")
    # emails retried no more: its one attempt was cut and rolled back, nothing to release.
    assert {r["worker_type"]: r["lease_token"] for r in found} == {"reports": live.lease_token}


def test_a_registration_whose_reconciliation_reply_is_lost_is_retried_under_its_own_lease(
    runs_db: str, proxy: Proxy
) -> None:
    # The registration commits, then the reply of the reconciliation that follows it is cut
    # (the row of lock_own_worker: one column, our 11-byte id). The row now holds a token
    # the retry must present again: under a fresh one it would be refused as a live row.
    proxy.cut_reply_containing(b"\x00\x01\x00\x00\x00\x0b" + b"lostreply-1")
    n = 5
    push(runs_db, "lost", [{"n": i} for i in range(n)])
    proc = spawn_worker(
        proxy.url,
        "lost",
        "worker_support:record",
        *("--worker-id", "lostreply-1", "--poll-interval", "0.05"),
        record_url=runs_db,
    )
    out = Output(proc)
    try:
        wait_for(lambda: statuses(runs_db, "lost") == {"Done": n}, 60, "every task Done")
    finally:
        code = out.stop()
    assert proxy.cut_at is not None, "the reconciliation reply was never cut"
    assert code == 0, out.text()
    assert out.count("could not register on queue lost: reconcile claims failed") == 1, out.text()
    assert runs_per_task(runs_db) == {i: 1 for i in range(n)}


def test_a_listen_connection_lost_before_its_probe_arrives_is_no_pooler_warning(
    runs_db: str, proxy: Proxy
) -> None:
    # The probe notification itself is cut on its way to the LISTEN connection: that
    # connection is gone, not behind a transaction pooler, and LISTEN is set up again.
    proxy.cut_reply_containing(b"probe:listenprobe-1:")
    proc = spawn_worker(
        proxy.url,
        "probeq",
        "worker_support:record",
        *("--worker-id", "listenprobe-1", "--max-poll-interval", "0.5"),
        record_url=runs_db,
    )
    out = Output(proc)
    try:
        wait_for(lambda: out.count("listening on") >= 1, 30, "LISTEN to be set up again")
        # Past the 1 s the cut probe's timer would have waited before warning.
        time.sleep(1.5)
    finally:
        code = out.stop()
    assert proxy.cut_at is not None, "the probe was never cut"
    assert code == 0, out.text()
    assert out.count("LISTEN connection lost") == 1, out.text()
    assert "heard no probe notification" not in out.text()


# --- not retried: errors a restart does not fix ---------------------------------------------


def test_a_missing_schema_at_start_up_still_fails_fast(empty_db: str) -> None:
    worker = Worker("q", lambda n: n, conninfo=empty_db)
    thread, result = run_in_thread(worker)
    thread.join(60)
    assert not thread.is_alive(), "a missing schema was retried"
    assert isinstance(result.get("error"), SchemaMissing), result


def test_a_missing_schema_at_start_up_still_exits_with_status_4(empty_db: str) -> None:
    proc = spawn_worker(empty_db, "q", "worker_support:record")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    assert "apalis schema is missing" in out
    assert RETRY_LINE not in out


def test_a_role_without_grants_at_start_up_still_fails_fast_with_permission_denied(
    migrated_db: str, server_url: str
) -> None:
    role = f"apalis_nogrants_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        worker = Worker("q", lambda n: n, conninfo=make_conninfo(migrated_db, user=role))
        thread, result = run_in_thread(worker)
        thread.join(60)
        assert not thread.is_alive(), "PermissionDenied was retried"
        assert isinstance(result.get("error"), PermissionDenied), result
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_live_registration_of_the_same_id_still_fails_fast(runs_db: str) -> None:
    with psycopg.connect(runs_db, autocommit=True) as conn:
        ops.register_worker(conn, "q", "taken-1")
    worker = Worker("q", lambda n: n, conninfo=runs_db, worker_id="taken-1")
    thread, result = run_in_thread(worker)
    thread.join(60)
    assert not thread.is_alive(), "a taken registration was retried"
    assert isinstance(result.get("error"), AlreadyRegistered), result


# --- the lease token a retry presents -------------------------------------------------------


def test_a_registration_retried_with_its_own_token_refreshes_the_row_it_committed(
    runs_db: str,
) -> None:
    token = new_lease_token()
    with psycopg.connect(runs_db, autocommit=True) as conn:
        # The first attempt committed; its reply is never used, as if it had been lost.
        ops.register_worker(conn, "q", "retry-1", lease_token=token)
        lease = ops.register_worker(conn, "q", "retry-1", lease_token=token)
    assert lease.lease_token == token
    found = rows(runs_db, "SELECT lease_token FROM apalis.workers WHERE id = 'retry-1'")
    assert found == [{"lease_token": token}]


def test_a_registration_retried_with_a_fresh_token_is_refused_by_the_row_it_committed(
    runs_db: str,
) -> None:
    with psycopg.connect(runs_db, autocommit=True) as conn:
        ops.register_worker(conn, "q", "retry-2", lease_token=new_lease_token())
        with pytest.raises(AlreadyRegistered):
            ops.register_worker(conn, "q", "retry-2")
