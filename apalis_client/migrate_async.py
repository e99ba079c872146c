"""Apply schema/ migrations and reconcile drift, or verify the shape, on a psycopg connection.

Import them from :mod:`apalis_client.migrate` (or :mod:`apalis_client`).
"""

# unasync: the source of migrate_sync.py, which `python -m codegen` writes from it.

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from pydantic import BaseModel

from apalis_client.migrate_logic import (
    SCHEMA_LOCK_KEY,
    MigrationReport,
    Row,
    SchemaReport,
    _as_rows,
    _check_idle,
    _has_ledger,
    _repeatable_text,
    _translate,
    check_known_shape,
    drifted_files,
    migration_files,
    pending_migrations,
    schema_problems,
)
from apalis_generated import catalog_async as catalog_q_async


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


async def migrate_async(conn: psycopg.AsyncConnection[Any]) -> MigrationReport:
    """Bring the database to generation 14: apply pending migrations, then reconcile drift.

    Serialized across processes by a session advisory lock; all changes of one
    call commit together or not at all. The connection must not be inside a
    transaction; its autocommit setting is restored afterwards.
    """
    _check_idle(conn.info.transaction_status, "migrate")
    report = MigrationReport()
    autocommit = conn.autocommit
    with _translate("migrate"):
        await conn.set_autocommit(True)
        try:
            await catalog_q_async.lock_schema(conn, key=SCHEMA_LOCK_KEY)
            try:
                async with conn.transaction():
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
                await catalog_q_async.unlock_schema(conn, key=SCHEMA_LOCK_KEY)
        finally:
            await conn.set_autocommit(autocommit)
    return report


async def verify_schema_async(conn: psycopg.AsyncConnection[Any]) -> SchemaReport:
    """Compare the database with generation 14 and name every difference."""
    with _translate("verify_schema"):
        catalog = await _read_catalog_async(conn)
        return SchemaReport(schema_problems(catalog, await _read_applied_async(conn, catalog)))
