"""A server the test started itself crashes and restarts under a push loop: callers see only
ConnectionFailed, pushes resume, and every task is in the table exactly once."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from own_server_support import NoServerBinaries, OwnServer, own_server

import apalis_client
from apalis_client import ApalisError, ConnectionFailed, IdempotencyConflict, Task
from apalis_client.errors import database_errors

QUEUE = "crash"
BEFORE, AFTER = 30, 30  # units confirmed before the crash, and after the restart


@pytest.fixture(scope="module")
def server() -> Iterator[OwnServer]:
    try:
        with own_server() as started:
            with psycopg.connect(started.url(), autocommit=True) as conn:
                apalis_client.migrate(conn)
            yield started
    except NoServerBinaries as exc:
        pytest.fail(str(exc), pytrace=False)


@dataclass
class Ledger:
    """What the push loop saw, by idempotency key (``tag-unit-i``)."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    confirmed: list[str] = field(default_factory=list)  # the push (and commit) returned
    unknown: list[list[str]] = field(default_factory=list)  # ConnectionFailed, outcome unknown
    refused: list[list[str]] = field(default_factory=list)  # failed before any commit
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.confirmed)

    def failed(self, keys: list[str], exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)
            if isinstance(exc, ConnectionFailed) and exc.outcome_unknown:
                self.unknown.append(keys)
            else:
                self.refused.append(keys)


def _tasks(tag: str, mode: str, unit: int) -> list[Task[Any]]:
    size = {"autocommit": 1, "transaction": 2, "batch": 5}[mode]
    return [
        Task(args={"unit": unit, "i": i}, idempotency_key=f"{tag}-{unit}-{i}") for i in range(size)
    ]


def _push_sync(conn: psycopg.Connection[Any], mode: str, tasks: list[Task[Any]]) -> None:
    if mode == "autocommit":
        apalis_client.push_task_with_conn(conn, QUEUE, tasks[0])
    elif mode == "batch":
        apalis_client.push_many_with_conn(conn, QUEUE, tasks)
    else:  # the first push opens the caller's transaction, the second joins it
        for task in tasks:
            apalis_client.push_task_with_conn(conn, QUEUE, task)
        with database_errors("commit", may_have_committed=True):  # the caller's own commit
            conn.commit()


async def _push_async(
    conn: psycopg.AsyncConnection[Any], mode: str, tasks: list[Task[Any]]
) -> None:
    if mode == "autocommit":
        await apalis_client.push_task_with_conn_async(conn, QUEUE, tasks[0])
    elif mode == "batch":
        await apalis_client.push_many_with_conn_async(conn, QUEUE, tasks)
    else:
        for task in tasks:
            await apalis_client.push_task_with_conn_async(conn, QUEUE, task)
        with database_errors("commit", may_have_committed=True):
            await conn.commit()


def _loop_sync(url: str, mode: str, stop: threading.Event, ledger: Ledger) -> None:
    conn: psycopg.Connection[Any] | None = None
    unit = 0
    while not stop.is_set():
        if conn is None:
            try:  # the test's own reconnect, not the client's: its errors are not counted
                conn = psycopg.connect(url, autocommit=mode != "transaction", connect_timeout=2)
            except psycopg.OperationalError:
                time.sleep(0.02)
                continue
        tasks, unit = _tasks(ledger.tag, mode, unit), unit + 1
        keys = [str(t.idempotency_key) for t in tasks]
        try:
            _push_sync(conn, mode, tasks)
        except Exception as exc:
            ledger.failed(keys, exc)
            conn.close()
            conn = None
            continue
        with ledger.lock:
            ledger.confirmed.extend(keys)
    if conn is not None:
        conn.close()


async def _loop_async(url: str, mode: str, stop: threading.Event, ledger: Ledger) -> None:
    conn: psycopg.AsyncConnection[Any] | None = None
    unit = 0
    while not stop.is_set():
        if conn is None:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    url, autocommit=mode != "transaction", connect_timeout=2
                )
            except psycopg.OperationalError:
                await asyncio.sleep(0.02)
                continue
        tasks, unit = _tasks(ledger.tag, mode, unit), unit + 1
        keys = [str(t.idempotency_key) for t in tasks]
        try:
            await _push_async(conn, mode, tasks)
        except Exception as exc:
            ledger.failed(keys, exc)
            await conn.close()
            conn = None
            continue
        with ledger.lock:
            ledger.confirmed.extend(keys)
    if conn is not None:
        await conn.close()


def _wait(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _crash_under_loop(server: OwnServer, url: str, flavor: str, mode: str) -> Ledger:
    ledger, stop = Ledger(), threading.Event()
    if flavor == "sync":
        target: Any = lambda: _loop_sync(url, mode, stop, ledger)  # noqa: E731
    else:
        target = lambda: asyncio.run(_loop_async(url, mode, stop, ledger))  # noqa: E731
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        _wait(lambda: ledger.count() >= BEFORE, 60, "pushes before the crash")
        server.crash()
        time.sleep(0.3)  # the loop meets the dead server, then keeps trying to reconnect
        server.start()
        restarted = ledger.count()
        _wait(lambda: ledger.count() >= restarted + AFTER, 60, "pushes after the restart")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    return ledger


def _stored(url: str, tag: str) -> list[str]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT idempotency_key FROM apalis.jobs WHERE idempotency_key LIKE %s",
            (f"{tag}-%",),
        ).fetchall()
    return [str(r[0]) for r in found]


@pytest.mark.parametrize("mode", ["autocommit", "transaction", "batch"])
def test_pushes_through_a_server_crash_see_only_connection_failed_and_lose_nothing(
    server: OwnServer, flavor: Any, mode: str
) -> None:
    url = server.url()
    ledger = _crash_under_loop(server, url, flavor.name, mode)

    assert ledger.errors, "the crash was never seen by a push"
    assert all(isinstance(e, ConnectionFailed) for e in ledger.errors), ledger.errors
    assert all(isinstance(e.__cause__, psycopg.Error) for e in ledger.errors)
    assert all(
        "outcome is unknown" in str(e)
        for e in ledger.errors
        if isinstance(e, ConnectionFailed) and e.outcome_unknown
    )
    stored = _stored(url, ledger.tag)
    assert len(stored) == len(set(stored))  # no task twice
    assert set(ledger.confirmed) <= set(stored)  # nothing that returned was lost
    refused = {k for keys in ledger.refused for k in keys}
    assert not refused & set(stored)  # a push said to have failed did not commit
    unknown = {k for keys in ledger.unknown for k in keys}
    assert set(stored) <= set(ledger.confirmed) | unknown


def test_an_outcome_unknown_push_is_resolved_by_pushing_its_key_again(
    server: OwnServer, flavor: Any
) -> None:
    url = server.url()
    ledger = _crash_under_loop(server, url, flavor.name, "autocommit")
    # An autocommit push cut off by the crash cannot know whether it committed.
    assert ledger.unknown, ledger.errors
    stored_before = set(_stored(url, ledger.tag))
    resolved: dict[str, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for (key,) in ledger.unknown:
            unit, i = (int(part) for part in key.split("-")[1:])
            task = Task(args={"unit": unit, "i": i}, idempotency_key=key)
            try:
                apalis_client.push_task_with_conn(conn, QUEUE, task)
                resolved[key] = "pushed now"
            except IdempotencyConflict as exc:
                assert list(exc.existing) == [key]  # it names the task holding the key
                resolved[key] = "was committed"
    assert all((resolved[k] == "was committed") == (k in stored_before) for k in resolved)
    stored = _stored(url, ledger.tag)
    assert len(stored) == len(set(stored))
    assert set(ledger.confirmed) | set(resolved) <= set(stored)


def test_a_push_on_a_crashed_servers_connection_is_outcome_unknown_connection_failed(
    server: OwnServer, flavor: Any
) -> None:
    # The first statement on a connection whose server died: never a raw psycopg error.
    errors: list[BaseException] = []

    def sync() -> None:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            server.crash()
            for _ in range(2):
                with pytest.raises(ApalisError) as info:
                    apalis_client.push_with_conn(conn, QUEUE, {"n": 1})
                errors.append(info.value)

    async def run_async() -> None:
        async with await psycopg.AsyncConnection.connect(server.url(), autocommit=True) as conn:
            server.crash()
            for _ in range(2):
                with pytest.raises(ApalisError) as info:
                    await apalis_client.push_with_conn_async(conn, QUEUE, {"n": 1})
                errors.append(info.value)

    try:
        sync() if flavor.name == "sync" else asyncio.run(run_async())
    finally:
        server.start()
    first, second = errors
    assert isinstance(first, ConnectionFailed) and first.outcome_unknown
    assert isinstance(first.__cause__, psycopg.OperationalError)
    # The connection is now known to be broken: the next push sends nothing, and says so.
    assert isinstance(second, ConnectionFailed) and not second.outcome_unknown
    assert "the connection is broken or closed; open a new one" in str(second)
