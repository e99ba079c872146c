"""The running task as its handler sees it: ``current_task()`` and its cancellation flag."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from apalis_client.errors import ApalisError

__all__ = ["TaskCancelled", "TaskContext", "current_task", "running_task"]


class TaskCancelled(ApalisError):
    """Raised by :meth:`TaskContext.raise_if_cancelled` once the task was cancelled."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(f"task {task_id!r} was cancelled: {reason}")
        self.task_id = task_id
        self.reason = reason


@dataclass
class TaskContext:
    """The task a handler is running: id, queue, attempt number and a cancellation flag.

    ``attempt`` counts from 1 (the row's ``attempts`` before this run, plus one). The flag
    is set when an operator cancels the task or its time limit passes; an async handler is
    also cancelled outright, a sync one only learns it here: check :attr:`cancelled`, wait
    on :meth:`wait_cancelled`, or call :meth:`raise_if_cancelled` between steps.
    """

    id: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: str
    _flag: threading.Event = field(default_factory=threading.Event, repr=False)
    _reason: str | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled (by an operator, or by its time limit)."""
        return self._flag.is_set()

    @property
    def cancel_reason(self) -> str | None:
        """Why it was cancelled (``cancelled by operator``, or the timeout message)."""
        return self._reason

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds for cancellation; True if it came (sync handlers)."""
        return self._flag.wait(timeout)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`TaskCancelled` if the task was cancelled; else return."""
        if self._flag.is_set():
            raise TaskCancelled(self.id, self._reason or "cancelled")

    def cancel(self, reason: str) -> None:
        """Set the flag (the worker calls this; the first reason given is kept)."""
        if not self._flag.is_set():
            self._reason = reason
            self._flag.set()


_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("apalis_current_task")


def current_task() -> TaskContext:
    """The task the calling handler is running; RuntimeError outside a handler."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "current_task() was called outside a task handler (no task is running here)"
        ) from None


@contextlib.contextmanager
def running_task(ctx: TaskContext) -> Iterator[TaskContext]:
    """Make ``ctx`` the current task inside the block (in this thread or asyncio task)."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
