"""Golden input for codegen's unasync: a module whose sync twin takes the public name."""

# unasync: public

from __future__ import annotations

from typing import Any

import psycopg


async def widget_count_async(conn: psycopg.AsyncConnection[Any]) -> int:
    """How many widgets; the sync twin is :func:`widget_count` in ``widgets``."""
    cur = await conn.execute("SELECT 1")
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])
