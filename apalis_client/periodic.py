"""Periodic tasks: cron schedules pushed once per slot, however many workers run them.

``Periodic("*/5 * * * *", "reports", {"kind": "hourly"}, name="reports")`` describes a task
pushed to ``reports`` at every slot of the schedule (cron syntax as ``croniter`` reads it:
five fields, an optional sixth for seconds, ``@hourly`` and friends; evaluated in ``tz``,
UTC by default). Each slot is pushed with ``run_at`` = the slot time and the idempotency
key ``periodic:<name>:<slot time, UTC ISO 8601>``, so when several workers run the same
schedule the unique key lets exactly one push through and the others get a conflict.

Missed slots (the service was down, or fell behind) follow ``missed``:

- ``"latest"`` (default): only the most recent slot that is due is pushed, once; older
  missed slots are skipped (counted in ``PeriodicStats.skipped``). At start the service
  therefore pushes the latest slot at or before now unless it was pushed already.
- ``"skip"``: nothing due before the service started is pushed; a slot reached late while
  running is still pushed (the latest one).

The key only dedupes while its row exists: keep the queue's retention window longer than
one interval of the schedule, or a restart may push the latest slot a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Literal, TypeVar

import psycopg
from croniter import croniter

from apalis_client import limits
from apalis_client.codec import JSON, Codec
from apalis_client.errors import ApalisError, IdempotencyConflict, InvalidArgument
from apalis_client.producer_async import push_task_with_conn_async
from apalis_client.task import Task

__all__ = [
    "Missed",
    "Periodic",
    "PeriodicService",
    "PeriodicStats",
    "latest_slot",
    "next_slot",
    "periodic",
    "periodic_of",
    "plan_slot",
    "run_periodic",
    "slot_key",
]

log = logging.getLogger("apalis_client.periodic")

Missed = Literal["latest", "skip"]
F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__apalis_periodic__"
_TICK = timedelta(microseconds=1)
# Counting the skipped slots of a long downtime on a per-second schedule would take long.
_MAX_COUNTED = 10_000


@dataclass(frozen=True)
class Periodic:
    """A schedule, the queue and arguments it pushes, and how it treats missed slots.

    ``args`` is the payload, or a callable ``slot -> payload`` (the slot is an aware UTC
    datetime). ``name`` (default: the queue) names the schedule in idempotency keys: two
    schedules on one queue need different names. Checked when built: a bad expression,
    queue, name, ``max_attempts`` or ``priority`` raises InvalidArgument.
    """

    schedule: str
    queue: str
    args: Any = None
    name: str | None = None
    tz: tzinfo = timezone.utc
    max_attempts: int = 5
    priority: int = 0
    missed: Missed = "latest"

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, str) or not croniter.is_valid(self.schedule):
            raise InvalidArgument(
                f"schedule {self.schedule!r} is not a cron expression croniter accepts "
                "(five fields, an optional sixth for seconds, or @hourly/@daily/...)"
            )
        limits.check_queue(self.queue)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise InvalidArgument(f"periodic name must be a non-empty string, got {self.name!r}")
        # The longest key this schedule will produce must fit the idempotency key cap.
        limits.check_idempotency_key(slot_key(self.key_name, datetime(9999, 12, 31, 23, 59, 59)))
        limits.check_max_attempts(self.max_attempts)
        limits.check_priority(self.priority)
        if self.missed not in ("latest", "skip"):
            raise InvalidArgument(f"missed must be 'latest' or 'skip', got {self.missed!r}")

    @property
    def key_name(self) -> str:
        """The name used in idempotency keys."""
        return self.name if self.name is not None else self.queue

    def args_for(self, slot: datetime) -> Any:
        """The payload for ``slot``."""
        return self.args(slot) if callable(self.args) else self.args

    def task_for(self, slot: datetime) -> Task[Any]:
        """The task pushed for ``slot``: run_at the slot, keyed by :func:`slot_key`."""
        return Task(
            args=self.args_for(slot),
            run_at=slot,
            idempotency_key=slot_key(self.key_name, slot),
            max_attempts=self.max_attempts,
            priority=self.priority,
        )


def slot_key(name: str, slot: datetime) -> str:
    """``periodic:<name>:<slot>``, the slot in UTC to the second (``...T21:05:00+00:00``)."""
    when = slot.astimezone(timezone.utc) if slot.tzinfo else slot.replace(tzinfo=timezone.utc)
    return f"periodic:{name}:{when.isoformat(timespec='seconds')}"


def latest_slot(p: Periodic, now: datetime) -> datetime:
    """The latest slot at or before ``now``, as an aware UTC datetime."""
    # croniter's get_prev is strictly before its base: one microsecond on includes ``now``.
    prev = croniter(p.schedule, (now + _TICK).astimezone(p.tz)).get_prev(datetime)
    return prev.astimezone(timezone.utc)


def next_slot(p: Periodic, now: datetime) -> datetime:
    """The first slot strictly after ``now``, as an aware UTC datetime."""
    nxt = croniter(p.schedule, now.astimezone(p.tz)).get_next(datetime)
    return nxt.astimezone(timezone.utc)


def _slots_between(p: Periodic, after: datetime, before: datetime) -> int:
    it = croniter(p.schedule, after.astimezone(p.tz))
    n = 0
    while n < _MAX_COUNTED and it.get_next(datetime).astimezone(timezone.utc) < before:
        n += 1
    return n


def plan_slot(
    p: Periodic, *, last_pushed: datetime | None, started: datetime, now: datetime
) -> tuple[datetime | None, int]:
    """Which slot to push now (None: none) and how many missed slots that skips.

    ``last_pushed`` is the latest slot this service handled (pushed, or found pushed by
    another worker); ``started`` is when the service started.
    """
    latest = latest_slot(p, now)
    if last_pushed is not None and latest <= last_pushed:
        return None, 0
    if p.missed == "skip" and latest < started:
        return None, 0
    skipped = 0 if last_pushed is None else _slots_between(p, last_pushed, latest)
    return latest, skipped


def periodic(
    schedule: str,
    *,
    args: Any = None,
    queue: str | None = None,
    name: str | None = None,
    tz: tzinfo = timezone.utc,
    max_attempts: int = 5,
    priority: int = 0,
    missed: Missed = "latest",
) -> Callable[[F], F]:
    """Decorate a handler with a schedule; the Worker serving it pushes its slots.

    Without ``queue`` the schedule pushes to the queue the Worker runs the handler on.
    The expression and the other values are checked here, at import time.
    """
    # A placeholder queue lets every value be checked now; periodic_of fills the real one.
    spec = Periodic(schedule, queue or "_", args, name, tz, max_attempts, priority, missed)

    def attach(func: F) -> F:
        found: list[tuple[Periodic, bool]] = list(getattr(func, _ATTR, ()))
        found.append((spec, queue is None))
        setattr(func, _ATTR, tuple(found))
        return func

    return attach


def periodic_of(handler: Callable[..., Any], queue: str) -> list[Periodic]:
    """The schedules a handler was decorated with, those without a queue on ``queue``."""
    out = []
    for spec, needs_queue in getattr(handler, _ATTR, ()):
        out.append(replace(spec, queue=queue) if needs_queue else spec)
    return out


def _unique(periodics: Iterable[Periodic]) -> list[Periodic]:
    """The schedules once each (an equal one given twice counts once); a name clash refused."""
    seen: dict[tuple[str, str], Periodic] = {}
    for p in periodics:
        key = (p.queue, p.key_name)
        if key in seen and seen[key] != p:
            raise InvalidArgument(
                f"two periodic schedules on queue {p.queue!r} share the name {p.key_name!r} "
                f"({seen[key].schedule!r} and {p.schedule!r}): give each a distinct name="
            )
        seen[key] = p
    return list(seen.values())


@dataclass
class PeriodicStats:
    """What a periodic service did: slots pushed by it, found pushed by another, skipped."""

    pushed: int = 0
    already_pushed: int = 0
    skipped: int = 0
    errors: int = 0
    pushed_keys: list[str] = field(default_factory=list)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class PeriodicService:
    """Pushes the slots of ``periodics`` through the producer API, until cancelled.

    One autocommit connection (opened with ``connect_kwargs``); a failed push is logged,
    the connection made again, and the slot tried again at the next turn (or replaced by a
    later one, under "latest").
    """

    def __init__(
        self,
        conninfo: str,
        periodics: Iterable[Periodic],
        *,
        codec: Codec[Any] = JSON,
        clock: Callable[[], datetime] = _utcnow,
        retry_delay: float = 1.0,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.periodics = _unique(periodics)
        self.conninfo = conninfo
        self.connect_kwargs: dict[str, Any] = dict(connect_kwargs or {})
        self.codec = codec
        self.clock = clock
        self.retry_delay = retry_delay
        self.stats = PeriodicStats()
        # Keyed by (queue, name): unique per service, and hashable whatever the args are.
        self._last: dict[tuple[str, str], datetime] = {}
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, **self.connect_kwargs
                )
            except psycopg.OperationalError as exc:
                raise ApalisError(f"periodic: connect failed: {exc}") from exc
            self._conn = conn
        return conn

    async def _push(self, p: Periodic, slot: datetime) -> None:
        conn = await self._connection()
        task = p.task_for(slot)
        try:
            await push_task_with_conn_async(conn, p.queue, task, codec=self.codec)
        except IdempotencyConflict:
            self.stats.already_pushed += 1
            return
        self.stats.pushed += 1
        if task.idempotency_key is not None and len(self.stats.pushed_keys) < 1000:
            self.stats.pushed_keys.append(task.idempotency_key)
        log.info("periodic %s: pushed slot %s to queue %s", p.key_name, slot, p.queue)

    async def tick(self, started: datetime) -> datetime | None:
        """Push what is due now; return the time of the next slot (None: no schedules)."""
        now = self.clock()
        for p in self.periodics:
            key = (p.queue, p.key_name)
            slot, skipped = plan_slot(p, last_pushed=self._last.get(key), started=started, now=now)
            if slot is None:
                continue
            await self._push(p, slot)
            self._last[key] = slot
            if skipped:
                self.stats.skipped += skipped
                log.warning(
                    "periodic %s: skipped %d missed slot(s) before %s (policy %s)",
                    p.key_name,
                    skipped,
                    slot,
                    p.missed,
                )
        return min((next_slot(p, now) for p in self.periodics), default=None)

    async def run(self) -> None:
        """Push every slot when it comes due, until cancelled."""
        started = self.clock()
        try:
            while True:
                try:
                    upcoming = await self.tick(started)
                except (ApalisError, psycopg.Error) as exc:
                    self.stats.errors += 1
                    log.error("periodic: push failed: %s; retrying in %gs", exc, self.retry_delay)
                    await self._close()
                    await asyncio.sleep(self.retry_delay)
                    continue
                if upcoming is None:
                    return
                # A few ms past the slot: a timer waking early would find it not yet due.
                wait = (upcoming - self.clock()).total_seconds() + 0.005
                await asyncio.sleep(max(wait, 0.0))
        finally:
            await self._close()

    async def _close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def run_periodic(
    conninfo: str,
    periodics: Iterable[Periodic],
    *,
    stop: asyncio.Event | None = None,
    codec: Codec[Any] = JSON,
) -> PeriodicStats:
    """Run a :class:`PeriodicService` until ``stop`` is set (forever without one)."""
    service = PeriodicService(conninfo, periodics, codec=codec)
    runner = asyncio.ensure_future(service.run())
    if stop is None:
        await runner
        return service.stats
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([runner, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (runner, waiter):
            t.cancel()
        for t in (runner, waiter):
            with contextlib.suppress(asyncio.CancelledError):
                await t
    return service.stats
