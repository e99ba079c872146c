"""Golden input for codegen's unasync: every rewrite it makes, once."""

# unasync: this comment speaks of the async source only and is dropped.

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg


async def count_async(conn: psycopg.AsyncConnection[Any]) -> int:
    """Count rows; see :func:`rows_async` for the rows themselves."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT 1")
        row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def rows_async(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
    """Every row, read with an async for loop and an async comprehension."""
    out = []
    async with psycopg.AsyncClientCursor(conn) as cur:
        await cur.execute("SELECT 1")
        async for row in cur:
            out.append(row)
    return out + [r async for r in _stream_async(conn)]


async def _stream_async(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[Any]:
    # count_async is awaited here: the comment's names are rewritten too.
    yield await count_async(conn)


async def guarded_async(conn: psycopg.AsyncConnection[Any]) -> int:
    """A sync context around an async one stays two statements."""
    with contextlib.suppress(psycopg.Error):
        async with conn.transaction():
            return (await count_async(conn)) + 1
    return -1


async def doubled_async(conn: psycopg.AsyncConnection[Any]) -> int:
    """Parentheses that group more than the await stay; a call's stay too."""
    return (await count_async(conn) or 0) * 2 + int(await count_async(conn))
