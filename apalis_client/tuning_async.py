"""Optional table settings for large queues: autovacuum tuned for ``apalis.jobs``.

In two forms: the sync module is written by tools/unasync.py from this ``_async`` one.
"""

# unasync: public

from __future__ import annotations

from typing import Any

import psycopg

from apalis_client._paths import schema_dir
from apalis_client.errors import database_errors

AUTOVACUUM_FILE = "tuning/autovacuum.sql"


def autovacuum_statement() -> str:
    """The ``ALTER TABLE apalis.jobs SET (autovacuum_...)`` statement, as shipped."""
    return (schema_dir() / AUTOVACUUM_FILE).read_text(encoding="utf-8")


async def tune_autovacuum_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """Make autovacuum keep ``apalis.jobs`` free of dead rows whatever its size.

    Vacuums after 10,000 changed rows instead of 20% of the table, unthrottled, its indexes
    included every time (see ``schema/tuning/autovacuum.sql``). Needs ownership of the table
    (the migrator's role).
    Takes a SHARE UPDATE EXCLUSIVE lock for an instant; claims and pushes go on.
    Never commits a transaction you hold open: inside one, it is part of it.
    """
    with database_errors("tune autovacuum"):
        await conn.execute(autovacuum_statement().encode())
