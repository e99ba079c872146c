"""One producer API surface for push tests, backed by a sync or an async psycopg connection.

A test body written against ``Session`` runs unchanged in both flavours: the async flavour
drives a real ``AsyncConnection`` and ``AsyncPostgresStorage`` on a private event loop.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Coroutine, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg.pq import TransactionStatus

from apalis_client import AsyncPostgresStorage, PostgresStorage, Task, TaskId

T = TypeVar("T")

MARKER_TABLE = "CREATE TABLE apalis_outbox_test_marker (key TEXT PRIMARY KEY, queue TEXT NOT NULL)"


class Session:
    """A connection of one flavour with the push API on it."""

    def __init__(self, flavor: str, url: str, *, autocommit: bool) -> None:
        self.flavor = flavor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync: psycopg.Connection[Any] | None = None
        self._async: psycopg.AsyncConnection[Any] | None = None
        if flavor == "sync":
            self._sync = psycopg.connect(url, autocommit=autocommit)
        else:
            self._loop = asyncio.new_event_loop()
            self._async = self.run(psycopg.AsyncConnection.connect(url, autocommit=autocommit))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return self._loop.run_until_complete(coro)

    @property
    def sync_conn(self) -> psycopg.Connection[Any]:
        assert self._sync is not None
        return self._sync

    @property
    def async_conn(self) -> psycopg.AsyncConnection[Any]:
        assert self._async is not None
        return self._async

    @property
    def connection(self) -> psycopg.Connection[Any] | psycopg.AsyncConnection[Any]:
        """The connection of whichever flavour, for attributes both share."""
        conn = self._sync or self._async
        assert conn is not None
        return conn

    @property
    def status(self) -> TransactionStatus:
        conn = self._sync or self._async
        assert conn is not None
        return conn.info.transaction_status

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if self._sync is not None:
            cur = self._sync.execute(sql.encode(), params)
            return cur.fetchall() if cur.description else []

        async def go() -> list[tuple[Any, ...]]:
            acur = await self.async_conn.execute(sql.encode(), params)
            return await acur.fetchall() if acur.description else []

        return self.run(go())

    def push(self, queue: str, args: Any) -> TaskId:
        if self._sync is not None:
            return PostgresStorage[Any](queue).push_with_conn(self._sync, args)
        return self.run(AsyncPostgresStorage[Any](queue).push_with_conn(self.async_conn, args))

    def push_task(self, queue: str, task: Task[Any]) -> TaskId:
        if self._sync is not None:
            return PostgresStorage[Any](queue).push_task_with_conn(self._sync, task)
        storage = AsyncPostgresStorage[Any](queue)
        return self.run(storage.push_task_with_conn(self.async_conn, task))

    def push_many(self, queue: str, tasks: Iterable[Task[Any]]) -> list[TaskId]:
        if self._sync is not None:
            return PostgresStorage[Any](queue).push_many_with_conn(self._sync, tasks)
        storage = AsyncPostgresStorage[Any](queue)
        return self.run(storage.push_many_with_conn(self.async_conn, tasks))

    def commit(self) -> None:
        if self._sync is not None:
            self._sync.commit()
        else:
            self.run(self.async_conn.commit())

    def rollback(self) -> None:
        if self._sync is not None:
            self._sync.rollback()
        else:
            self.run(self.async_conn.rollback())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """``with conn.transaction():`` of either flavour; an exception rolls it back."""
        if self._sync is not None:
            with self._sync.transaction():
                yield
            return
        tx = self.async_conn.transaction()
        self.run(tx.__aenter__())
        try:
            yield
        except BaseException as exc:
            if not self.run(tx.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self.run(tx.__aexit__(None, None, None))

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        """``with conn.pipeline():`` of either flavour."""
        if self._sync is not None:
            with self._sync.pipeline():
                yield
            return
        cm = self.async_conn.pipeline()
        self.run(cm.__aenter__())
        try:
            yield
        except BaseException as exc:
            self.run(cm.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        else:
            self.run(cm.__aexit__(None, None, None))

    @contextmanager
    def wire(self) -> Iterator[list[list[str]]]:
        """Record what crosses the wire, as exchanges: runs of messages one way.

        Yields a list filled on exit with one entry per burst of frontend messages (F lines
        of libpq's trace) followed by the backend's answer (B lines): a round trip each.
        """
        conn = self._sync or self._async
        assert conn is not None
        exchanges: list[list[str]] = []
        with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            try:
                yield exchanges
            finally:
                conn.pgconn.untrace()
            trace.seek(0)
            messages: list[str] = []
            for line in trace.read().splitlines():
                if line[:2] in ("F\t", "B\t") or not messages:
                    messages.append(line)
                else:  # a message whose text spans lines (a multi-line statement)
                    messages[-1] += "\n" + line
        for line in messages:
            if line.startswith("F") and (not exchanges or exchanges[-1][-1].startswith("B")):
                exchanges.append([])
            if exchanges:
                exchanges[-1].append(line)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
        if self._async is not None:
            self.run(self._async.close())
        if self._loop is not None:
            self._loop.close()
