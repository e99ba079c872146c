"""Route: one queue a multi-queue Worker serves, with its handler and concurrency."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from apalis_client import limits
from apalis_client.config import Config, WorkerConfig
from apalis_client.errors import InvalidArgument
from apalis_client.periodic import Periodic
from apalis_client.retry import RetryPolicy

__all__ = ["Route"]


@dataclass(frozen=True)
class Route:
    """One queue of a :class:`~apalis_client.worker.Worker` serving several.

    ``Worker([Route("emails", send, concurrency=10), Route("reports", build)], conninfo=...)``
    runs each queue with its own handler, slots (``concurrency``), timing (``config``, a
    :class:`WorkerConfig`; ``queue`` may also be a :class:`Config` carrying one),
    ``retry``, ``timeout`` and ``periodic`` schedules. What a route leaves as None comes
    from the Worker's arguments of the same name. Whether the worker listens is the
    Worker's ``config.listen``: every route shares its one LISTEN connection.
    """

    queue: str | Config
    handler: Callable[..., Any]
    concurrency: int | None = None
    config: WorkerConfig | None = None
    retry: RetryPolicy | Callable[[int], float] | float | None = None
    timeout: float | None = None
    periodic: Sequence[Periodic] = ()

    def __post_init__(self) -> None:
        queue = self.queue
        if isinstance(queue, Config):
            if self.config is not None:
                raise InvalidArgument(
                    f"Route got both a Config for queue {queue.queue!r} and config=...: put "
                    "the timing in Config(worker=...) or pass the queue name with config="
                )
            object.__setattr__(self, "config", queue.worker)
            object.__setattr__(self, "queue", queue.queue)
        limits.check_queue(self.name)
        if self.concurrency is not None and (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or self.concurrency < 1
        ):
            raise InvalidArgument(
                f"concurrency of queue {self.name!r} must be an integer of at least 1, "
                f"got {self.concurrency!r}"
            )
        if not callable(self.handler):
            raise InvalidArgument(
                f"the handler of queue {self.name!r} must be callable, got {self.handler!r}"
            )
        object.__setattr__(self, "periodic", tuple(self.periodic))

    @property
    def name(self) -> str:
        """The queue name (``queue`` itself, or the name of the Config given)."""
        queue = self.queue
        return queue.queue if isinstance(queue, Config) else queue
