"""The I/O-free half of the storages: their queue, the type of their arguments, their batches.

Shared by ``storage_async`` and the ``storage`` generated from it.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Literal, Protocol, TypeVar, Union, get_args, get_origin

from apalis_client import limits
from apalis_client._push import Batch, batch_of_args, batch_of_tasks
from apalis_client.codec import Codec
from apalis_client.errors import InvalidArgument
from apalis_client.task import Task

Args = TypeVar("Args")

Check = Callable[[object], bool]


class QueueConfig(Protocol):
    """Anything naming a queue, such as :class:`~apalis_client.Config`: it has a ``queue``."""

    @property
    def queue(self) -> str:
        """The queue name (``job_type``)."""
        ...


def queue_name(queue: str | QueueConfig) -> str:
    """The checked queue name of a name or a config."""
    return limits.check_queue(queue if isinstance(queue, str) else queue.queue)


def type_check(tp: object) -> Check | None:
    """An ``isinstance``-style check for values of the type ``tp``, or None to accept all.

    Classes are checked by ``isinstance`` (a generic alias such as ``dict[str, int]`` by its
    class only: contents are the codec's business), unions member by member; ``float``
    accepts an ``int`` as type checkers do. ``Any``, type variables and forms with no class
    (``Literal``, ``Annotated``, ...) accept everything.
    """
    if tp is Any:
        return None
    if tp is None:
        tp = type(None)
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        checks = [type_check(member) for member in get_args(tp)]
        if any(c is None for c in checks):
            return None
        return lambda value: any(c(value) for c in checks if c is not None)
    if origin is Literal:
        return None
    cls = origin if origin is not None else tp
    if not isinstance(cls, type) or cls is object:
        return None
    if cls is float:
        return lambda value: isinstance(value, (int, float))
    return lambda value: isinstance(value, cls)


def _name(tp: object) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


class StorageBase(Generic[Args]):
    """What a storage knows without a connection: its queue and codec, and its batches."""

    def __init__(self, queue: str | QueueConfig, codec: Codec[Args]) -> None:
        self._queue = queue_name(queue)
        self._codec = codec
        self._check: tuple[Check | None, str] | None = None

    @property
    def queue(self) -> str:
        """The queue this storage pushes to."""
        return self._queue

    def _args_type(self) -> object:
        # `PostgresStorage[SendEmail](...)` records its alias on the instance once __init__
        # returns; a subclass `class Emails(PostgresStorage[SendEmail])` in its bases.
        alias = getattr(self, "__orig_class__", None)
        if alias is not None:
            return get_args(alias)[0]
        for klass in type(self).__mro__:
            for base in getattr(klass, "__orig_bases__", ()):
                origin = get_origin(base)
                if isinstance(origin, type) and issubclass(origin, StorageBase):
                    (arg,) = get_args(base)
                    if not isinstance(arg, TypeVar):
                        return arg
        return Any

    def _checked(self, value: Args) -> Args:
        if self._check is None:
            tp = self._args_type()
            self._check = (type_check(tp), _name(tp))
        check, name = self._check
        if check is not None and not check(value):
            raise InvalidArgument(
                f"{type(self).__name__}[{name}] for queue {self._queue!r} takes {name} "
                f"arguments, got {type(value).__name__}: {_short(value)}"
            )
        return value

    def _args(self, args: Args) -> Batch:
        return batch_of_args(self._queue, (self._checked(args),), self._codec)

    def _tasks(self, tasks: Iterable[Task[Args]]) -> Batch:
        return batch_of_tasks(self._queue, self._checked_tasks(tasks), self._codec)

    def _checked_tasks(self, tasks: Iterable[Task[Args]]) -> Iterator[Task[Args]]:
        for task in tasks:
            if isinstance(task, Task):
                self._checked(task.args)
            yield task

    def _no_pool(self) -> InvalidArgument:
        return InvalidArgument(
            f"this storage for queue {self._queue!r} has no pool: pass pool=... to push "
            "without a connection, or use the *_with_conn methods"
        )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"
