"""Queue configuration: which queue, and the worker timing that goes with it."""

from __future__ import annotations

from dataclasses import dataclass, field

from apalis_client import limits
from apalis_client.errors import InvalidArgument


@dataclass(frozen=True)
class WorkerConfig:
    """Timing and batching of a :class:`Worker`; the defaults are the Rust runtime's.

    - ``poll_interval``: delay between polls right after work was found (100 ms); each
      empty poll doubles it up to ``max_poll_interval`` (5 s). With ``listen`` on, polling
      is only the fallback (and what finds delayed tasks once due).
    - ``heartbeat_interval``: seconds between heartbeats, each followed by the stale sweep
      (30 s).
    - ``orphan_threshold``: a worker silent this long is dead; its tasks are re-enqueued
      and its id may be taken over (300 s). After this worker could not reach the database
      for more than half of it, it skips the sweep for one threshold so that its peers can
      heartbeat first.
    - ``batch_size``: most tasks claimed per statement; None means the free slots, at
      most 10 (the Rust claim batch).
    - ``shutdown_timeout``: on stop, how long in-flight tasks may still run before they
      are acked as failed (30 s).
    - ``listen``: wake up on ``LISTEN apalis::job::insert`` instead of waiting for a poll.
    - ``retention_window``: opt-in purge; None (default) keeps history forever. Else every
      ``retention_interval`` seconds (1 h) the worker deletes its queue's finished tasks
      older than this many seconds, in batches that skip locked rows (safe with many
      workers: no row is deleted twice, no claim waits longer than one batch).
    """

    poll_interval: float = 0.1
    max_poll_interval: float = 5.0
    heartbeat_interval: float = 30.0
    orphan_threshold: float = 300.0
    batch_size: int | None = None
    shutdown_timeout: float = 30.0
    listen: bool = True
    retention_window: float | None = None
    retention_interval: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("poll_interval", "max_poll_interval", "heartbeat_interval"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name} must be positive, got {getattr(self, name)}")
        if self.orphan_threshold <= self.heartbeat_interval:
            raise InvalidArgument(
                f"orphan_threshold ({self.orphan_threshold}s) must exceed heartbeat_interval "
                f"({self.heartbeat_interval}s), or live workers would look dead"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidArgument(f"batch_size must be at least 1, got {self.batch_size}")
        if self.shutdown_timeout < 0:
            raise InvalidArgument(f"shutdown_timeout must be >= 0, got {self.shutdown_timeout}")
        if self.retention_window is not None and self.retention_window < 0:
            raise InvalidArgument(f"retention_window must be >= 0, got {self.retention_window}")
        if self.retention_interval <= 0:
            raise InvalidArgument(
                f"retention_interval must be positive, got {self.retention_interval}"
            )


@dataclass(frozen=True)
class Config:
    """One queue and how workers run it: the Python side of the Rust crate's ``Config``.

    ``Config::new("emails")`` in Rust is ``Config("emails")`` here; its worker settings map
    to :class:`WorkerConfig` (``keep_alive`` → ``heartbeat_interval``, ``buffer_size`` →
    ``batch_size``, ``poll_interval``, ``reenqueue_orphaned_after`` → ``orphan_threshold``),
    with the same defaults. ``PostgresStorage``, ``AsyncPostgresStorage`` and ``Worker``
    take a ``Config`` wherever they take a queue name.
    """

    queue: str
    worker: WorkerConfig = field(default_factory=WorkerConfig)

    def __post_init__(self) -> None:
        limits.check_queue(self.queue)
