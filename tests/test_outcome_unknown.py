"""A commit whose reply never arrives: ConnectionFailed says the outcome is unknown, and an
idempotency key tells which way it went."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from proxy_support import CuttingProxy

import apalis_client
from apalis_client import ConnectionFailed, IdempotencyConflict, Task
from apalis_client.errors import database_errors

QUEUE = "cut"


def test_commit_cut_before_its_reply_is_outcome_unknown_and_the_key_resolves_it(
    flavor: Any, cutting_proxy: CuttingProxy, migrated_db: str, query: Any
) -> None:
    url = cutting_proxy.url(migrated_db)
    task = Task(args={"charge": 42}, idempotency_key="order-42")

    def sync() -> ConnectionFailed:
        with psycopg.connect(url) as conn:
            apalis_client.push_task_with_conn(conn, QUEUE, task)
            cutting_proxy.cut_on(b"COMMIT")
            with (
                pytest.raises(ConnectionFailed) as info,
                database_errors("push", may_have_committed=True),
            ):
                conn.commit()
        return info.value

    async def run_async() -> ConnectionFailed:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await apalis_client.push_task_with_conn_async(conn, QUEUE, task)
            cutting_proxy.cut_on(b"COMMIT")
            with (
                pytest.raises(ConnectionFailed) as info,
                database_errors("push", may_have_committed=True),
            ):
                await conn.commit()
        return info.value

    error = sync() if flavor.name == "sync" else asyncio.run(run_async())
    assert cutting_proxy.cuts == 1
    assert error.outcome_unknown
    assert "the outcome is unknown" in str(error)
    assert isinstance(error.__cause__, psycopg.OperationalError)
    # The commit did happen; pushing again with the same key says so instead of queueing twice.
    with (
        psycopg.connect(migrated_db, autocommit=True) as conn,
        pytest.raises(IdempotencyConflict) as conflict,
    ):
        apalis_client.push_task_with_conn(conn, QUEUE, task)
    assert conflict.value.keys == ["order-42"]
    assert query(migrated_db, "SELECT count(*) FROM apalis.jobs") == [(1,)]
