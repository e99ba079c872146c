"""Pushes of every kind through a real PgBouncer in transaction mode (prepare_threshold=None)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
from pgbouncer_support import PgBouncer, PgBouncerUnavailable, pgbouncer_binary, start_pgbouncer

from apalis_client import (
    IdempotencyConflict,
    Task,
    push_many_with_conn,
    push_many_with_conn_async,
    push_task_with_conn,
    push_task_with_conn_async,
    push_with_conn,
    push_with_conn_async,
)

QUEUE = "bounced"
CLIENTS = 8
ROUNDS = 25
# Per round each client pushes: 1 autocommit single, 1 keyed single, 1 in a transaction,
# a uniform batch of 3, a keyed batch of 3, a batch of 2 with different priorities.
PER_ROUND = 1 + 1 + 1 + 3 + 3 + 2


def _connect(url: str, *, autocommit: bool) -> psycopg.Connection[Any]:
    # The documented settings for a transaction pooler: no server-side prepared statements.
    return psycopg.connect(url, autocommit=autocommit, prepare_threshold=None)


async def _aconnect(url: str, *, autocommit: bool) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=autocommit, prepare_threshold=None)


def _count(direct_url: str, sql: str = "SELECT count(*) FROM apalis.jobs") -> int:
    with psycopg.connect(direct_url) as conn:
        row = conn.execute(sql.encode()).fetchone()
        assert row is not None
        return int(row[0])


def _round_sync(url: str, client: int, rnd: int) -> int:
    tag = f"c{client}r{rnd}"
    pushed = 0
    with _connect(url, autocommit=True) as conn:
        push_with_conn(conn, QUEUE, {"tag": tag, "kind": "single"})
        push_task_with_conn(conn, QUEUE, Task(args={"tag": tag}, idempotency_key=f"{tag}:single"))
        push_many_with_conn(conn, QUEUE, [Task(args={"tag": tag, "i": i}) for i in range(3)])
        push_many_with_conn(
            conn,
            QUEUE,
            [Task(args={"tag": tag}, idempotency_key=f"{tag}:batch{i}") for i in range(3)],
        )
        push_many_with_conn(conn, QUEUE, [Task(args={"tag": tag}, priority=p) for p in (1, 7)])
        pushed += 1 + 1 + 3 + 3 + 2
    with _connect(url, autocommit=False) as conn:
        push_with_conn(conn, QUEUE, {"tag": tag, "kind": "in-transaction"})
        conn.commit()
        pushed += 1
    return pushed


async def _round_async(url: str, client: int, rnd: int) -> int:
    tag = f"c{client}r{rnd}"
    pushed = 0
    async with await _aconnect(url, autocommit=True) as conn:
        await push_with_conn_async(conn, QUEUE, {"tag": tag, "kind": "single"})
        await push_task_with_conn_async(
            conn, QUEUE, Task(args={"tag": tag}, idempotency_key=f"{tag}:single")
        )
        await push_many_with_conn_async(
            conn, QUEUE, [Task(args={"tag": tag, "i": i}) for i in range(3)]
        )
        await push_many_with_conn_async(
            conn,
            QUEUE,
            [Task(args={"tag": tag}, idempotency_key=f"{tag}:batch{i}") for i in range(3)],
        )
        await push_many_with_conn_async(
            conn, QUEUE, [Task(args={"tag": tag}, priority=p) for p in (1, 7)]
        )
        pushed += 1 + 1 + 3 + 3 + 2
    async with await _aconnect(url, autocommit=False) as conn:
        await push_with_conn_async(conn, QUEUE, {"tag": tag, "kind": "in-transaction"})
        await conn.commit()
        pushed += 1
    return pushed


def test_pgbouncer_runs_in_transaction_mode(pgbouncer: PgBouncer) -> None:
    with psycopg.connect(pgbouncer.admin_url(), autocommit=True) as admin:
        cur = admin.execute("SHOW CONFIG")
        names = [d.name for d in cur.description or ()]
        config = {row[names.index("key")]: row[names.index("value")] for row in cur.fetchall()}
    assert config["pool_mode"] == "transaction"
    assert int(config["default_pool_size"]) < CLIENTS


def test_pushes_of_every_kind_succeed_through_pgbouncer_under_concurrency(
    flavor: Any, pooled_db: str, migrated_db: str
) -> None:
    errors: list[BaseException] = []
    totals: list[int] = []
    if flavor.name == "sync":

        def client(n: int) -> None:
            try:
                totals.append(sum(_round_sync(pooled_db, n, r) for r in range(ROUNDS)))
            except BaseException as exc:  # collected and re-raised below, with the others
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:

        async def aclient(n: int) -> int:
            total = 0
            for r in range(ROUNDS):
                total += await _round_async(pooled_db, n, r)
            return total

        async def everyone() -> list[int | BaseException]:
            return await asyncio.gather(
                *(aclient(n) for n in range(CLIENTS)), return_exceptions=True
            )

        for result in asyncio.run(everyone()):
            if isinstance(result, BaseException):
                errors.append(result)
            else:
                totals.append(result)

    assert errors == []
    expected = CLIENTS * ROUNDS * PER_ROUND
    assert sum(totals) == expected
    assert _count(migrated_db) == expected
    assert _count(migrated_db, "SELECT count(DISTINCT id) FROM apalis.jobs") == expected


def test_keyed_conflict_through_pgbouncer_leaves_the_transaction_usable(
    flavor: Any, pooled_db: str, migrated_db: str
) -> None:
    def sync() -> None:
        with _connect(pooled_db, autocommit=False) as conn:
            push_task_with_conn(conn, QUEUE, Task(args={}, idempotency_key="k"))
            with pytest.raises(IdempotencyConflict):
                push_task_with_conn(conn, QUEUE, Task(args={}, idempotency_key="k"))
            push_with_conn(conn, QUEUE, {"after": "conflict"})
            conn.commit()

    async def run_async() -> None:
        async with await _aconnect(pooled_db, autocommit=False) as conn:
            await push_task_with_conn_async(conn, QUEUE, Task(args={}, idempotency_key="k"))
            with pytest.raises(IdempotencyConflict):
                await push_task_with_conn_async(conn, QUEUE, Task(args={}, idempotency_key="k"))
            await push_with_conn_async(conn, QUEUE, {"after": "conflict"})
            await conn.commit()

    if flavor.name == "sync":
        sync()
    else:
        asyncio.run(run_async())
    assert _count(migrated_db) == 2


def test_a_missing_pgbouncer_fails_with_how_to_install_it() -> None:
    with pytest.raises(PgBouncerUnavailable) as info:
        pgbouncer_binary(["/nonexistent/pgbouncer", None])
    assert "apt-get update && apt-get install -y pgbouncer" in str(info.value)


def test_a_pgbouncer_that_does_not_come_up_fails_with_its_log_and_how_to_install_it(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real process that exits at once, as a broken or wrong binary would.
    monkeypatch.setenv("APALIS_TEST_PGBOUNCER", "/bin/false")
    with pytest.raises(PgBouncerUnavailable) as info, start_pgbouncer(server_url):
        pass
    assert str(info.value).startswith("pgbouncer exited with status 1")
    assert "apt-get install -y pgbouncer" in str(info.value)
