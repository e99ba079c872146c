"""Apply schema/ migrations, reconcile drifted objects, and verify the generation-14 shape.

In two forms: the sync module is written by codegen's unasync from the ``*_async`` one. The
checks and plans they share, I/O-free, are in ``migrate_logic``.
"""

# unasync: public

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from pydantic import BaseModel

from apalis_client.migrate_logic import (
    DEFAULT_LOCK_TIMEOUT,
    SCHEMA_LOCK_KEY,
    MigrationFile,
    MigrationReport,
    Row,
    SchemaReport,
    _as_rows,
    _check_idle,
    _has_ledger,
    _lock_timeout_setting,
    _repeatable_text,
    _translate,
    check_known_shape,
    drifted_files,
    migration_files,
    pending_migrations,
    schema_problems,
)
from apalis_generated import catalog_async as catalog_q_async

__all__ = [
    "MigrationFile",
    "MigrationReport",
    "SchemaReport",
    "migrate_async",
    "verify_schema_async",
]


async def _read_catalog_async(conn: psycopg.AsyncConnection[Any]) -> dict[str, list[Row]]:
    q = catalog_q_async
    found: dict[str, Sequence[BaseModel]] = {
        "relations": await q.relations(conn),
        "columns": await q.columns(conn),
        "constraints": await q.constraints(conn),
        "indexes": await q.indexes(conn),
        "functions": await q.functions(conn),
        "triggers": await q.triggers(conn),
    }
    return _as_rows(found)


async def _read_applied_async(
    conn: psycopg.AsyncConnection[Any], catalog: Mapping[str, list[Row]]
) -> list[Row] | None:
    if not _has_ledger(catalog):
        return None
    return [r.model_dump() for r in await catalog_q_async.applied_migrations(conn)]


async def _read_rust_journal_async(conn: psycopg.AsyncConnection[Any]) -> list[str] | None:
    present = await catalog_q_async.rust_journal_present(conn)
    if present is None or not present.present:
        return None
    return [r.version for r in await catalog_q_async.rust_journal_versions(conn)]


async def migrate_async(
    conn: psycopg.AsyncConnection[Any], *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> MigrationReport:
    """Bring the database to generation 14: apply pending migrations, then reconcile drift.

    Everything happens in one transaction, under the Rust crate 0.6 setup's
    transaction-scoped advisory lock and this client's own, so a Python migrate and a
    Rust ``setup()`` starting together queue up instead of colliding; all changes commit
    together or not at all. A lock (those, or a table lock the DDL needs) not granted
    within ``lock_timeout`` seconds fails with a clear error instead of hanging. Only
    what is absent or different is (re)created: the Rust crate's own function bodies are
    kept, and the Rust 0.6 migration journal is written when it is missing. The
    transaction pins ``search_path`` to ``pg_catalog, pg_temp`` (``SET LOCAL``), so the
    DDL binds no function or operator another role created, whatever the session's path.
    The connection must not be inside a transaction; its autocommit setting is restored.
    """
    _check_idle(conn.info.transaction_status, "migrate")
    timeout = _lock_timeout_setting(lock_timeout)
    report = MigrationReport()
    autocommit = conn.autocommit
    with _translate("migrate", lock_timeout):
        await conn.set_autocommit(True)
        try:
            async with conn.transaction():
                # First: every later statement, the DDL included, resolves in pg_catalog.
                await catalog_q_async.pin_search_path(conn)
                await catalog_q_async.set_lock_timeout(conn, timeout=timeout)
                await catalog_q_async.lock_rust_migrations(conn)
                await catalog_q_async.lock_schema(conn, key=SCHEMA_LOCK_KEY)
                catalog = await _read_catalog_async(conn)
                check_known_shape(catalog)
                applied = await _read_applied_async(conn, catalog) or []
                for f in pending_migrations(migration_files(), applied):
                    await conn.execute(f.text.encode())
                    await catalog_q_async.record_migration(
                        conn, filename=f.filename, checksum=f.checksum
                    )
                    report.applied.append(f.filename)
                for relpath in drifted_files(await _read_catalog_async(conn)):
                    await conn.execute(_repeatable_text(relpath).encode())
                    report.reconciled.append(relpath)
        finally:
            await conn.set_autocommit(autocommit)
    return report


async def verify_schema_async(conn: psycopg.AsyncConnection[Any]) -> SchemaReport:
    """Compare the database with generation 14 and name every difference."""
    with _translate("verify_schema"):
        catalog = await _read_catalog_async(conn)
        applied = await _read_applied_async(conn, catalog)
        journal = await _read_rust_journal_async(conn)
        return SchemaReport(schema_problems(catalog, applied, journal))
