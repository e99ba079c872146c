"""The I/O-free half of the storages: the queue they push to and how they shape a batch.

Shared by ``storage_async`` and the ``storage_sync`` generated from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from apalis_client import limits
from apalis_client.batch import Batch, batch_of_args, batch_of_tasks
from apalis_client.codec import Codec
from apalis_client.errors import InvalidArgument
from apalis_client.task import Task

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


class StorageBase(Generic[Args]):
    """What a storage knows without a connection: its queue and codec, and its batches."""

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
