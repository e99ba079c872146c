"""Typed producer handles for one queue: ``PostgresStorage[Args]`` and its async twin."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from apalis_client import limits, producer
from apalis_client.batch import Batch, batch_of_args, batch_of_tasks
from apalis_client.codec import JSON, Codec
from apalis_client.errors import InvalidArgument
from apalis_client.task import Task, TaskId

Args = TypeVar("Args")


class QueueConfig(Protocol):
    """Anything naming a queue, such as :class:`~apalis_client.Config`: it has a ``queue``."""

    @property
    def queue(self) -> str:
        """The queue name (``job_type``)."""
        ...


def queue_name(queue: str | QueueConfig) -> str:
    """The checked queue name of a name or a config."""
    return limits.check_queue(queue if isinstance(queue, str) else queue.queue)


class _Base(Generic[Args]):
    def __init__(self, queue: str | QueueConfig, codec: Codec[Args]) -> None:
        self._queue = queue_name(queue)
        self._codec = codec

    @property
    def queue(self) -> str:
        """The queue this storage pushes to."""
        return self._queue

    def _args(self, args: Args) -> Batch:
        return batch_of_args(self._queue, (args,), self._codec)

    def _tasks(self, tasks: Iterable[Task[Args]]) -> Batch:
        return batch_of_tasks(self._queue, tasks, self._codec)

    def _no_pool(self) -> InvalidArgument:
        return InvalidArgument(
            f"this storage for queue {self._queue!r} has no pool: pass pool=... to push "
            "without a connection, or use the *_with_conn methods"
        )


class PostgresStorage(_Base[Args]):
    """Pushes tasks of type ``Args`` to one queue, on your connection or from a pool.

    ``push_with_conn`` / ``push_task_with_conn`` / ``push_many_with_conn`` join the
    transaction of the connection you pass (the outbox): the task commits or rolls back with
    your business writes, and a failed push (e.g. :class:`IdempotencyConflict`) rolls back only
    itself. ``push`` / ``push_task`` / ``push_many`` take a connection from ``pool`` and
    commit at once. Never commits or closes a connection you pass.
    """

    def __init__(
        self,
        queue: str | QueueConfig,
        *,
        pool: ConnectionPool[Any] | None = None,
        codec: Codec[Args] = JSON,
    ) -> None:
        super().__init__(queue, codec)
        self.pool = pool

    def push_with_conn(self, conn: psycopg.Connection[Any], args: Args) -> TaskId:
        """Push ``args`` with a Rust producer's defaults; returns the new task id."""
        return producer.push_batch(conn, self._args(args))[0]

    def push_task_with_conn(self, conn: psycopg.Connection[Any], task: Task[Args]) -> TaskId:
        """Push a fully specified task; returns its id."""
        return producer.push_batch(conn, self._tasks((task,)))[0]

    def push_many_with_conn(
        self, conn: psycopg.Connection[Any], tasks: Iterable[Task[Args]]
    ) -> list[TaskId]:
        """Push tasks with one INSERT, all or nothing; returns their ids in order."""
        return producer.push_batch(conn, self._tasks(tasks))

    def _push_pooled(self, batch: Batch) -> list[TaskId]:
        if self.pool is None:
            raise self._no_pool()
        with self.pool.connection() as conn:
            # We own this connection: autocommit makes the push its own one-trip unit of work.
            restore = not conn.autocommit
            if restore:
                conn.autocommit = True
            try:
                return producer.push_batch(conn, batch)
            finally:
                if restore:
                    conn.autocommit = False

    def push(self, args: Args) -> TaskId:
        """Push ``args`` on a pooled connection, committed when this returns."""
        return self._push_pooled(self._args(args))[0]

    def push_task(self, task: Task[Args]) -> TaskId:
        """Push a fully specified task on a pooled connection, committed when this returns."""
        return self._push_pooled(self._tasks((task,)))[0]

    def push_many(self, tasks: Iterable[Task[Args]]) -> list[TaskId]:
        """Push tasks on a pooled connection with one INSERT, all or nothing, committed."""
        return self._push_pooled(self._tasks(tasks))


class AsyncPostgresStorage(_Base[Args]):
    """Async twin of :class:`PostgresStorage` (psycopg ``AsyncConnection`` / async pool)."""

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
        return (await producer.push_batch_async(conn, self._args(args)))[0]

    async def push_task_with_conn(
        self, conn: psycopg.AsyncConnection[Any], task: Task[Args]
    ) -> TaskId:
        """Push a fully specified task; returns its id."""
        return (await producer.push_batch_async(conn, self._tasks((task,))))[0]

    async def push_many_with_conn(
        self, conn: psycopg.AsyncConnection[Any], tasks: Iterable[Task[Args]]
    ) -> list[TaskId]:
        """Push tasks with one INSERT, all or nothing; returns their ids in order."""
        return await producer.push_batch_async(conn, self._tasks(tasks))

    async def _push_pooled(self, batch: Batch) -> list[TaskId]:
        if self.pool is None:
            raise self._no_pool()
        async with self.pool.connection() as conn:
            restore = not conn.autocommit
            if restore:
                await conn.set_autocommit(True)
            try:
                return await producer.push_batch_async(conn, batch)
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
