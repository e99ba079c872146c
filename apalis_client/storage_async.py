"""``AsyncPostgresStorage[Args]``: a typed producer handle for one queue.

In two forms: the sync module is written by codegen's unasync from the ``*_async`` one.
"""

# unasync: public

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from apalis_client._push import Batch, QueueConfig, StorageBase
from apalis_client.codec import JSON, Codec
from apalis_client.producer_async import push_batch_async, push_job_async
from apalis_client.task import Task, TaskId

__all__ = ["AsyncPostgresStorage", "QueueConfig"]

Args = TypeVar("Args")


class AsyncPostgresStorage(StorageBase[Args]):
    """Pushes tasks of type ``Args`` to one queue, on your ``AsyncConnection`` or from a pool.

    ``push_with_conn`` / ``push_task_with_conn`` / ``push_many_with_conn`` join the
    transaction of the connection you pass (the outbox): the task commits or rolls back with
    your business writes. A conflict (:class:`IdempotencyConflict`, :class:`DuplicateTaskId`)
    writes nothing and leaves your transaction usable; any other failure aborts it (see
    :mod:`apalis_client.producer_async`). ``push`` / ``push_task`` / ``push_many`` take a
    connection from ``pool`` (``AsyncConnectionPool``) and commit at once.

    Arguments that are not of the storage's type (``AsyncPostgresStorage[SendEmail]`` given
    ``42`` or a dict) raise :class:`InvalidArgument` before any SQL. Never commits or closes a
    connection you pass.
    """

    def __init__(
        self,
        queue: str | QueueConfig,
        *,
        pool: AsyncConnectionPool[Any] | None = None,
        codec: Codec[Args] = JSON,
    ) -> None:
        super().__init__(queue, codec)
        self.pool = pool

    async def push_with_conn(self, conn: psycopg.AsyncConnection[Any], args: Args) -> TaskId:
        """Push ``args`` with a Rust producer's defaults; returns the new task id."""
        return await push_job_async(conn, self._queue, self._codec.encode(self._checked(args)))

    async def push_task_with_conn(
        self, conn: psycopg.AsyncConnection[Any], task: Task[Args]
    ) -> TaskId:
        """Push a fully specified task; returns its id."""
        return (await push_batch_async(conn, self._tasks((task,))))[0]

    async def push_many_with_conn(
        self, conn: psycopg.AsyncConnection[Any], tasks: Iterable[Task[Args]]
    ) -> list[TaskId]:
        """Push tasks with one INSERT, all or nothing; returns their ids in order."""
        return await push_batch_async(conn, self._tasks(tasks))

    async def _push_pooled(self, batch: Batch) -> list[TaskId]:
        if self.pool is None:
            raise self._no_pool()
        async with self.pool.connection() as conn:
            # We own this connection: autocommit makes the push its own one-trip unit of work.
            restore = not conn.autocommit
            if restore:
                await conn.set_autocommit(True)
            try:
                return await push_batch_async(conn, batch)
            finally:
                if restore:
                    await conn.set_autocommit(False)

    async def push(self, args: Args) -> TaskId:
        """Push ``args`` on a pooled connection, committed when this returns."""
        return (await self._push_pooled(self._args(args)))[0]

    async def push_task(self, task: Task[Args]) -> TaskId:
        """Push a fully specified task on a pooled connection, committed when this returns."""
        return (await self._push_pooled(self._tasks((task,))))[0]

    async def push_many(self, tasks: Iterable[Task[Args]]) -> list[TaskId]:
        """Push tasks on a pooled connection with one INSERT, all or nothing, committed."""
        return await self._push_pooled(self._tasks(tasks))
