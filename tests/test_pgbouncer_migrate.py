"""Concurrent ``migrate`` runs through a real PgBouncer in transaction mode: no session state."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
from pgbouncer_support import POOL_SIZE, PgBouncer

import apalis_client
from apalis_client import MigrationReport
from apalis_client.migrate_logic import migration_files

MIGRATORS = 8


def _migrate_all_at_once(url: str, flavor: str) -> list[MigrationReport | BaseException]:
    barrier = threading.Barrier(MIGRATORS)
    results: list[MigrationReport | BaseException] = []
    lock = threading.Lock()

    def sync() -> MigrationReport:
        # The documented settings for a transaction pooler: no server-side prepared statements.
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            barrier.wait(30)
            return apalis_client.migrate(conn)

    async def run_async() -> MigrationReport:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, prepare_threshold=None
        ) as conn:
            barrier.wait(30)
            return await apalis_client.migrate_async(conn)

    def one() -> None:
        try:
            result: MigrationReport | BaseException = (
                sync() if flavor == "sync" else asyncio.run(run_async())
            )
        except BaseException as exc:
            result = exc
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one) for _ in range(MIGRATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a migrate hung behind the pooler"
    return results


def test_eight_concurrent_migrates_through_pgbouncer_apply_each_migration_once(
    flavor: Any, pgbouncer: PgBouncer, empty_db: str, query: Any
) -> None:
    assert MIGRATORS > POOL_SIZE  # migrators share server connections, one transaction each
    results = _migrate_all_at_once(pgbouncer.url(empty_db), flavor.name)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    reports = [r for r in results if isinstance(r, MigrationReport)]
    files = [f.filename for f in migration_files()]
    # One of them applied every migration; the others found nothing left to do.
    assert sorted(len(r.applied) for r in reports) == [0] * (MIGRATORS - 1) + [len(files)]
    # ... and nothing to repair: the first one's repeatable objects were already in place.
    assert [r.reconciled for r in reports if not r.applied] == [[]] * (MIGRATORS - 1)
    with psycopg.connect(empty_db) as conn:
        assert apalis_client.verify_schema(conn).ok
    assert query(
        empty_db,
        "SELECT filename, count(*)::int FROM apalis.apalis_client_migrations "
        "GROUP BY filename ORDER BY filename",
    ) == [(f, 1) for f in files]
    assert query(
        empty_db,
        "SELECT count(*)::int, count(DISTINCT version)::int "
        "FROM apalis_diesel_postgres.__diesel_schema_migrations",
    ) == [(14, 14)]
