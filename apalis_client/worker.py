"""The worker runner: claim, run, ack, heartbeat and recover the tasks of one or more queues.

One asyncio loop drives every run. Each queue served is a lane with its own claim
connection, registration, slots and acks; an ``async def`` handler runs as up to
``concurrency`` asyncio tasks, a plain function in a thread pool of ``concurrency``
threads. The database work (claims, batched acks, heartbeats) happens on the loop,
through ``worker_ops``; one LISTEN connection wakes every lane.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from apalis_client import limits
from apalis_client import worker_ops_async as ops
from apalis_client._connection import connect
from apalis_client._retention import log_operator_kills, retention_loop
from apalis_client._services import Service, ServiceGroup
from apalis_client.cancellation import CANCEL_CHANNEL, CANCEL_MESSAGE, parse_cancel_payload
from apalis_client.config import Config, WorkerConfig
from apalis_client.context import TaskContext, running_task
from apalis_client.errors import ApalisError, ConnectionFailed, InvalidArgument, WorkerNotRegistered
from apalis_client.events import MAX_STALE_IDS, Observer, StatsObserver, combine
from apalis_client.handler_options import ResolvedOptions, resolve
from apalis_client.periodic import Periodic, PeriodicService, periodic_of
from apalis_client.retry import RetryPolicy, ack_delay
from apalis_client.route import Route
from apalis_client.tasklog import log_failure, log_finished
from apalis_client.timeouts import timeout_message
from apalis_client.worker_logic import (
    NOTIFY_CHANNEL,
    Backoff,
    HandlerSpec,
    Outcome,
    acks_go_first,
    claim_size,
    inspect_handler,
    outcome_for_exception,
    outcome_for_return,
    parse_notify_payload,
)
from apalis_client.worker_ops import Job, Lease
from apalis_client.worker_ops_logic import new_lease_token

log = logging.getLogger("apalis_client.worker")
# A library logs to its users' handlers only: without any configured, failures are not
# printed to stderr by logging's last-resort handler (the CLI configures logging).
log.addHandler(logging.NullHandler())

__all__ = ["Route", "Worker", "WorkerConfig", "WorkerStats"]

_instance_numbers = itertools.count(1)
# Past this many pending notified ids, a lane polls instead of claiming by id.
_MAX_NOTIFIED = 1000


@dataclass(frozen=True)
class _Result:
    """What a handler call produced: the outcome, the exception behind a failure, its time."""

    outcome: Outcome
    exc: BaseException | None
    duration: float


# A running handler: an asyncio task (async handlers) or a thread pool future (sync ones).
_Running = asyncio.Future[_Result] | concurrent.futures.Future[_Result]


@dataclass
class WorkerStats:
    """What one ``run`` did: counts by final status, stale acks (first 1,000 ids kept).

    The counts are the sums over the queues served; ``queues`` has each queue's own.
    """

    claimed: int = 0
    done: int = 0
    failed: int = 0
    killed: int = 0
    stale: int = 0
    lease_lost: bool = False
    seconds: float = 0.0
    worker_id: str = ""
    stale_ids: list[str] = field(default_factory=list)
    queues: dict[str, WorkerStats] = field(default_factory=dict)

    @property
    def acked(self) -> int:
        """Tasks whose outcome was recorded (Done, Failed or Killed)."""
        return self.done + self.failed + self.killed


def _stats_of(observer: StatsObserver, worker_id: str, seconds: float) -> WorkerStats:
    fields: dict[str, Any] = observer.worker_stats_fields()
    return WorkerStats(**fields, worker_id=worker_id, seconds=seconds)


def _total(worker_id: str, seconds: float, parts: Mapping[str, WorkerStats]) -> WorkerStats:
    total = WorkerStats(worker_id=worker_id, seconds=seconds, queues=dict(parts))
    for part in parts.values():
        total.claimed += part.claimed
        total.done += part.done
        total.failed += part.failed
        total.killed += part.killed
        total.stale += part.stale
        total.lease_lost = total.lease_lost or part.lease_lost
        room = MAX_STALE_IDS - len(total.stale_ids)
        total.stale_ids.extend(part.stale_ids[: max(room, 0)])
    return total


@dataclass(frozen=True)
class _Served:
    """One queue as a run serves it: the route with the Worker's defaults filled in."""

    queue: str
    handler: Callable[..., Any]
    spec: HandlerSpec
    options: ResolvedOptions
    concurrency: int
    config: WorkerConfig


class Worker:
    """Runs ``handler`` for the tasks of ``queue``, or each route's handler for its queue.

    ``Worker("emails", send, conninfo=...)`` serves one queue;
    ``Worker([Route("emails", send, concurrency=10), Route("reports", build)], conninfo=...)``
    serves several, each with its own handler and slots (see :class:`Route`; what a route
    leaves unset comes from the Worker's ``concurrency``, ``config``, ``retry`` and
    ``timeout``). Each queue is registered, heartbeated, swept, reconciled and released
    under ``(worker_id, queue)`` as a Rust 0.6 worker of that queue would be, with its own
    claim connection; one LISTEN connection wakes them all. When one queue's registration
    is taken over (the id runs twice), every queue stops claiming.

    ``handler`` takes one argument, the task's JSON payload decoded into the type its
    first parameter is annotated with (a pydantic model, a dataclass, ``dict``, …;
    unannotated means the plain JSON value). Its return value is stored as
    ``{"Ok": value}``; an exception as ``{"Err": "Type: message"}`` (a failed attempt,
    retried while attempts remain). A payload that does not decode is a failed attempt
    too, ``{"Err": "<decode error>"}`` (Killed once attempts run out), as in the Rust crate.

    The worker registers as a Rust 0.6 worker does (stale sweep, then registration), and
    on every stop (normal end, SIGTERM/SIGINT, ``until_idle``, ``max_tasks``, or a crash
    of its own loop) it acks what finished and then releases its registration: what it
    still holds goes back to Pending and the id can be registered again at once. A lost
    connection or an unreachable server while it starts (sweep, registration,
    reconciliation) is retried like a reconnect until it registers or is stopped; other
    errors are raised at once. After registering and after every reconnect it reconciles:
    claims in its name that it is not running (a claim whose reply was lost) are handed back.

    ``retry`` is the backoff of a failed attempt that will be retried (a policy, a callable
    ``attempt -> seconds`` or constant seconds; default
    :data:`~apalis_client.retry.DEFAULT_RETRY`); ``timeout`` the default time limit of
    a handler in seconds (default none). ``@handler_options`` on the handler wins over both.

    ``connect_kwargs`` go to every connection the worker opens (behind PgBouncer in
    transaction mode: ``{"prepare_threshold": None}``); ``listen_conninfo`` is where the
    LISTEN connection goes instead of ``conninfo`` (PostgreSQL directly, since a
    transaction pooler does not deliver notifications). After LISTEN the worker sends
    itself a probe notification and warns when it does not arrive within a second.

    ``periodic`` (and ``@periodic`` on a handler) are pushed once per slot however many
    workers run them. ``observers`` get the worker's events; ``metrics_port`` serves
    Prometheus metrics (task counters, a duration histogram, queue-depth gauges) at
    ``/metrics`` on that port while the worker runs (0: a free port; needs the
    ``metrics`` extra).

    ``worker.run()`` blocks; ``await worker.run_async()`` runs inside a running loop;
    ``worker.stop()`` (any thread) asks for a graceful stop. ``run(until_idle=True)`` ends
    once every queue is idle; ``max_tasks`` counts the tasks of all queues together.
    """

    def __init__(
        self,
        queue: str | Config | Sequence[Route],
        handler: Callable[..., Any] | None = None,
        *,
        conninfo: str,
        concurrency: int = 1,
        worker_id: str | None = None,
        config: WorkerConfig | None = None,
        retry: RetryPolicy | Callable[[int], float] | float | None = None,
        timeout: float | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
        listen_conninfo: str | None = None,
        periodic: Sequence[Periodic] = (),
        observers: Sequence[Observer] = (),
        metrics_port: int | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgument(f"concurrency must be at least 1, got {concurrency!r}")
        routes = _routes(queue, handler, config)
        self.config = config or WorkerConfig()
        served = [_serve(r, self.config, concurrency, retry, timeout) for r in routes]
        self._served: tuple[_Served, ...] = tuple(served)
        first = served[0]
        #: The queues served, in the order given.
        self.queues: tuple[str, ...] = tuple(s.queue for s in served)
        # The first (in the single-queue form, the only) queue's settings, as before routes.
        self.queue = first.queue
        self.handler = first.handler
        self.spec: HandlerSpec = first.spec
        self.options: ResolvedOptions = first.options
        self.concurrency = first.concurrency
        if len(served) == 1:
            self.config = first.config
        self.conninfo = conninfo
        self.connect_kwargs: dict[str, Any] = dict(connect_kwargs or {})
        if "autocommit" in self.connect_kwargs:
            raise InvalidArgument(
                "connect_kwargs may not set autocommit: the worker's connections are always "
                "autocommit"
            )
        self.listen_conninfo = listen_conninfo
        # Periodic tasks: given here, on a route, or declared on a handler with @periodic.
        self.periodic: list[Periodic] = list(periodic)
        for r, s in zip(routes, served, strict=True):
            self.periodic += [*r.periodic, *periodic_of(s.handler, s.queue)]
        self.observers: list[Observer] = list(observers)
        if metrics_port is not None and (
            isinstance(metrics_port, bool)
            or not isinstance(metrics_port, int)
            or not 0 <= metrics_port <= 65535
        ):
            raise InvalidArgument(
                f"metrics_port must be an integer from 0 to 65535, got {metrics_port!r}"
            )
        if metrics_port is not None:
            try:
                import prometheus_client  # noqa: F401
            except ImportError as exc:
                raise InvalidArgument(
                    f"metrics_port={metrics_port} needs prometheus_client: "
                    "pip install 'apalis-client[metrics]'"
                ) from exc
        self.metrics_port = metrics_port
        #: The metrics endpoint while a run serves one (its ``port`` is the bound one).
        self.metrics_server: Any = None
        self.worker_id = worker_id or (
            f"py-{socket.gethostname()}-{os.getpid()}-{next(_instance_numbers)}"
        )
        self._ready = threading.Event()
        self._stop_requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakes: list[asyncio.Event] = []
        self._signals = 0

    def run(self, *, until_idle: bool = False, max_tasks: int | None = None) -> WorkerStats:
        """Run until stopped (signal or :meth:`stop`), idle (``until_idle``) or ``max_tasks``."""
        return asyncio.run(self.run_async(until_idle=until_idle, max_tasks=max_tasks))

    async def run_async(
        self, *, until_idle: bool = False, max_tasks: int | None = None
    ) -> WorkerStats:
        """The same as :meth:`run`, inside the caller's running event loop."""
        if max_tasks is not None and max_tasks < 0:
            raise InvalidArgument(f"max_tasks must be >= 0, got {max_tasks}")
        loop = asyncio.get_running_loop()
        self._ready.clear()
        run = _Run(self, until_idle=until_idle, max_tasks=max_tasks)
        self._wakes = [lane.wake for lane in run.lanes]
        self._loop = loop
        installed = self._install_signal_handlers(loop)
        try:
            return await run.main()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._loop = None

    def stop(self) -> None:
        """Ask the worker to stop claiming, finish in-flight tasks, ack them and release."""
        self._stop_requested.set()
        loop, wakes = self._loop, list(self._wakes)
        if loop is not None and wakes:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_set_all, wakes)

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Block until the worker is registered (and listening, if enabled); False on timeout."""
        return self._ready.wait(timeout)

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        if threading.current_thread() is not threading.main_thread():
            return []
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not on this platform/loop
                continue
            installed.append(sig)
        return installed

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning(
                "worker %s: %s received, stopping gracefully (send it again to exit now)",
                self.worker_id,
                sig.name,
            )
            self.stop()
            return
        log.error("worker %s: second %s, exiting now", self.worker_id, sig.name)
        # In-flight tasks stay Running; the orphan re-enqueue gives them back later.
        os._exit(128 + int(sig))


def _set_all(events: Sequence[asyncio.Event]) -> None:
    for event in events:
        event.set()


def _routes(
    queue: str | Config | Sequence[Route],
    handler: Callable[..., Any] | None,
    config: WorkerConfig | None,
) -> list[Route]:
    """The routes of either constructor form, checked: one queue and handler, or routes."""
    if isinstance(queue, str | Config):
        if handler is None:
            name = queue.queue if isinstance(queue, Config) else queue
            raise InvalidArgument(
                f"Worker({name!r}, handler) needs a handler for queue {name!r} "
                "(or pass a list of Route(queue, handler) for several queues)"
            )
        if isinstance(queue, Config) and config is not None:
            raise InvalidArgument(
                f"Worker got both a Config for queue {queue.queue!r} and config=...: put "
                "the timing in Config(worker=...) or pass the queue name with config="
            )
        if isinstance(queue, str):
            limits.check_queue(queue)
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        return [Route(queue, handler, config=config)]
    if handler is not None:
        raise InvalidArgument(
            "Worker(routes, handler): with a list of Route each route names its own handler; "
            "pass no handler"
        )
    routes = list(queue)
    if not routes:
        raise InvalidArgument("Worker needs at least one Route, got an empty list")
    seen: set[str] = set()
    for r in routes:
        if not isinstance(r, Route):
            raise InvalidArgument(f"Worker routes must be Route(queue, handler), got {r!r}")
        if r.name in seen:
            raise InvalidArgument(
                f"queue {r.name!r} is routed twice: one Worker serves a queue with one handler"
            )
        seen.add(r.name)
    return routes


def _serve(
    route: Route,
    config: WorkerConfig | None,
    concurrency: int,
    retry: RetryPolicy | Callable[[int], float] | float | None,
    timeout: float | None,
) -> _Served:
    return _Served(
        queue=route.name,
        handler=route.handler,
        spec=inspect_handler(route.handler),
        # The handler's @handler_options over the route's, over the Worker's defaults.
        options=resolve(
            route.handler,
            worker_timeout=route.timeout if route.timeout is not None else timeout,
            worker_retry=route.retry if route.retry is not None else retry,
        ),
        concurrency=route.concurrency or concurrency,
        config=route.config or config or WorkerConfig(),
    )


class _Run:
    """The state of one ``Worker.run_async`` call: its lanes and what they share."""

    def __init__(self, worker: Worker, *, until_idle: bool, max_tasks: int | None) -> None:
        self.w = worker
        self.until_idle = until_idle
        self.max_tasks = max_tasks
        self.prom: Any = None
        if worker.metrics_port is not None:
            from apalis_client.metrics import PrometheusObserver

            self.prom = PrometheusObserver()
        shared = [*worker.observers, *([self.prom] if self.prom is not None else [])]
        self.lanes = [_Lane(self, served, shared) for served in worker._served]
        self.by_queue = {lane.queue: lane for lane in self.lanes}
        self.lease_lost = False
        # Set when one lane's loop failed: the others stop claiming and drain too.
        self.failed = False
        # Set when one lane could not register for good: the others retry no more.
        self.start_failed = False
        # Claim slots taken by claims in flight, so lanes together stay within max_tasks.
        self.reserved = 0
        # Set when the LISTEN probe did not come back: notifications are not delivered.
        self.listen_warning = False

    def claimed(self) -> int:
        return sum(lane.stats.claimed_count for lane in self.lanes)

    def stopping(self) -> bool:
        return self.w._stop_requested.is_set() or self.lease_lost or self.failed

    def wake_all(self) -> None:
        _set_all([lane.wake for lane in self.lanes])

    async def main(self) -> WorkerStats:
        started = time.monotonic()
        group: ServiceGroup | None = None
        server: Any = None
        try:
            if self.prom is not None:
                from apalis_client.metrics import start_metrics_server

                server = start_metrics_server(self.w.metrics_port or 0, self.prom.registry)
                self.w.metrics_server = server
                log.info("worker %s: metrics on port %d", self.w.worker_id, server.port)
            await self._register()
            if any(lane.lease is None for lane in self.lanes):
                return self._stats(started)  # stopped while start-up was being retried
            listening = asyncio.Event() if self.w.config.listen else None
            group = ServiceGroup(self._services(listening))
            group.start()
            if listening is not None:
                # Tasks pushed after wait_until_ready() returns must wake us.
                await listening.wait()
            self.w._ready.set()
            for lane in self.lanes:
                log.info(
                    "worker %s running on queue %s (concurrency %d, %s handler)",
                    self.w.worker_id,
                    lane.queue,
                    lane.s.concurrency,
                    "async" if lane.s.spec.is_async else "thread",
                )
            await self._work()
        finally:
            if group is not None:
                await group.stop()
            # Each lane releases on its own connection: together, not one after another.
            ends = await asyncio.gather(
                *(lane.finish() for lane in self.lanes), return_exceptions=True
            )
            for lane, end in zip(self.lanes, ends, strict=True):
                if isinstance(end, Exception):
                    log.error(
                        "worker %s: stopping queue %s failed: %s", self.w.worker_id, lane.queue, end
                    )
            if server is not None:
                server.stop()
        return self._stats(started)

    def _stats(self, started: float) -> WorkerStats:
        seconds = time.monotonic() - started
        parts = {
            lane.queue: _stats_of(lane.stats, self.w.worker_id, seconds) for lane in self.lanes
        }
        if len(self.lanes) > 1:
            log.info(
                "worker %s stopped: %s",
                self.w.worker_id,
                ", ".join(f"{q} {s.done} done" for q, s in parts.items()),
            )
        return _total(self.w.worker_id, seconds, parts)

    async def _register(self) -> None:
        """Register every lane, concurrently: each is three round trips of its own connection.

        A lane that fails for good (not a connection problem) ends the start-up: the others
        finish the attempt under way (never cut off mid-commit) but retry no more, and the
        first error is raised; the lanes that did register are released afterwards.
        """

        async def one(lane: _Lane) -> None:
            try:
                await lane.register()
            except BaseException:
                self.start_failed = True
                self.wake_all()
                raise

        outcomes = await asyncio.gather(*(one(lane) for lane in self.lanes), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _work(self) -> None:
        """Run every lane until it ends; one that fails stops the others, then re-raises."""
        tasks = [asyncio.ensure_future(lane.work()) for lane in self.lanes]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(not t.cancelled() and t.exception() is not None for t in done):
                self.failed = True
                self.wake_all()
                await asyncio.wait(tasks)
            for t in tasks:
                t.result()  # the first failure, re-raised
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t

    def _services(self, listening: asyncio.Event | None) -> list[Service]:
        """The background jobs of this run: per queue, then shared by every queue."""
        w = self.w
        out: list[Service] = []
        for lane in self.lanes:
            out.append(Service(f"heartbeat {lane.queue}", lane.heartbeat_loop))
            cfg = lane.s.config
            if cfg.retention_window is not None:
                out.append(Service(f"retention {lane.queue}", lane.retention))
        out.append(Service("lost claims", self._lost_claims_loop))
        if w.periodic:
            periodic = PeriodicService(w.conninfo, w.periodic, connect_kwargs=w.connect_kwargs)
            out.append(Service("periodic", periodic.run))
        if self.prom is not None:
            out.append(Service("queue depth", self._queue_depth))
        if listening is not None:
            out.append(Service("listen", lambda: self._listen_loop(listening)))
        return out

    async def _queue_depth(self) -> None:
        from apalis_client.metrics import QueueDepthGauges, queue_depth_loop

        gauges = QueueDepthGauges(self.prom.registry)
        await queue_depth_loop(
            self.w.conninfo, self.w.queues, gauges, connect_kwargs=self.w.connect_kwargs
        )

    async def _lost_claims_loop(self) -> None:
        """Every second, the polling fallback of cancellation: drop tasks no longer ours."""
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                await asyncio.sleep(1.0)
                for lane in self.lanes:
                    running = list(lane.in_flight.values())
                    if not running or lane.lease is None:
                        continue
                    try:
                        if conn is None or conn.closed or conn.broken:
                            conn = await connect(self.w.conninfo, self.w.connect_kwargs)
                        lost = await ops.lost_claims_async(conn, lane.lease, running)
                    except ApalisError as exc:
                        log.error("worker %s: lost-claims check failed: %s", self.w.worker_id, exc)
                        continue
                    claimed_at = {job.id: job.attempts for job in running}
                    for task_id in lost:
                        # The attempts of this run: a later claim of the same id is not hit.
                        lane.cancel(
                            task_id,
                            claimed_at[task_id],
                            "the task is no longer held by this worker",
                        )
        finally:
            if conn is not None:
                await conn.close()

    async def _probe_listen(self, probe: str, listening: asyncio.Event) -> None:
        """Notify ``probe`` from the claim connection; warn if LISTEN has not heard it in 1 s.

        A transaction pooler (PgBouncer in transaction mode) runs LISTEN on whichever
        server connection it lends, then hands that connection to others: nothing is
        delivered, and the worker would only find tasks by polling.
        """
        try:
            conn = await connect(self.w.conninfo, self.w.connect_kwargs)
            try:
                await ops.notify_probe_async(conn, CANCEL_CHANNEL, probe)
            finally:
                await conn.close()
            await asyncio.sleep(1.0)
        except ApalisError as exc:
            log.warning("worker %s: could not probe LISTEN: %s", self.w.worker_id, exc)
        self.listen_warning = True
        log.warning(
            "worker %s: LISTEN on %s heard no probe notification within 1s: it probably goes "
            "through a transaction pooler (PgBouncer in transaction mode), which does not "
            "deliver notifications; the worker polls instead. Pass listen_conninfo= (CLI: "
            "--listen-database-url) with a direct PostgreSQL connection string",
            self.w.worker_id,
            NOTIFY_CHANNEL,
        )
        listening.set()

    async def _listen_loop(self, listening: asyncio.Event) -> None:
        """One LISTEN connection for every lane: inserts wake the lane of their queue."""
        conn: psycopg.AsyncConnection[Any] | None = None
        probe_timer: asyncio.Future[None] | None = None
        queues = set(self.by_queue)
        try:
            while True:
                try:
                    conn = await connect(
                        self.w.listen_conninfo or self.w.conninfo, self.w.connect_kwargs
                    )
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CANCEL_CHANNEL)))
                    probe = f"probe:{self.w.worker_id}:{time.monotonic_ns()}"
                    probe_timer = asyncio.ensure_future(self._probe_listen(probe, listening))
                    async for note in conn.notifies():
                        if note.channel == CANCEL_CHANNEL:
                            if note.payload == probe:
                                probe_timer.cancel()
                                self.listen_warning = False
                                log.info(
                                    "worker %s listening on %s", self.w.worker_id, NOTIFY_CHANNEL
                                )
                                listening.set()
                                continue
                            req = parse_cancel_payload(note.payload)
                            if req is not None and req.is_for(self.w.worker_id, queues):
                                self.by_queue[req.job_type].cancel(
                                    req.id, req.attempts, CANCEL_MESSAGE
                                )
                            continue
                        event = parse_notify_payload(note.payload)
                        lane = self.by_queue.get(event.job_type) if event is not None else None
                        if lane is not None and event is not None:
                            lane.notify(event.ids)
                except (ApalisError, psycopg.Error) as exc:
                    # Polling keeps the worker going meanwhile.
                    log.error("worker %s: LISTEN connection lost: %s", self.w.worker_id, exc)
                    if probe_timer is not None:
                        # Its probe died with the connection: no pooler warning for that.
                        probe_timer.cancel()
                    listening.set()
                    if conn is not None:
                        await conn.close()
                    await asyncio.sleep(min(self.w.config.max_poll_interval, 5.0))
        finally:
            if probe_timer is not None:
                probe_timer.cancel()
            listening.set()  # a LISTEN that ends never holds up the start
            if conn is not None:
                await conn.close()


class _Lane:
    """One queue of a run: its registration, claim connection, slots and acks."""

    def __init__(self, run: _Run, served: _Served, observers: Sequence[Observer]) -> None:
        self.run = run
        self.w = run.w
        self.s = served
        self.queue = served.queue
        self.cfg = served.config
        self.stats = StatsObserver()
        self.observer: Observer = combine([self.stats, *observers])
        self.durations: dict[str, float] = {}
        self.wake = asyncio.Event()
        self.in_flight: dict[_Running, Job] = {}
        # Thread pool handlers that finished, handed to the loop in bursts: one loop wake-up
        # for however many finish meanwhile, not one asyncio future and wake-up per task.
        self.thread_done: collections.deque[concurrent.futures.Future[_Result]] = (
            collections.deque()
        )
        self.handoff_pending = False
        self.loop = asyncio.get_running_loop()
        self.completed: list[tuple[Job, Outcome]] = []
        # The retry backoff of each completion (by task id), drawn once when it finished.
        self.delays: dict[str, float] = {}
        # Sync handlers with a time limit: when each is due (monotonic). Past it, the task
        # is recorded failed and its slot freed; the thread runs on, its result discarded.
        self.deadlines: dict[concurrent.futures.Future[_Result], float] = {}
        self.abandoned = 0
        # What each running handler sees as current_task(), with its cancellation flag.
        self.contexts: dict[_Running, TaskContext] = {}
        self.notified: dict[str, None] = {}
        self.lease_lost = False
        self.executor: ThreadPoolExecutor | None = None
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.lease: Lease | None = None
        self.poll_now = False
        # Set when the claim connection was replaced: claims made on the old one may have
        # committed unseen, so the lane reconciles before it claims again.
        self.reconcile_due = False
        # The post-outage rule (see _note_heartbeat): once this worker could not reach the
        # database for long, the stale sweep waits one orphan threshold after the outage
        # ended, so its peers get that long to heartbeat again. outage_seen is set by a
        # failed exchange; sweep_hold_until (monotonic) by the next successful heartbeat.
        self.outage_seen = False
        self.sweep_hold_until = 0.0
        self.last_heartbeat = time.monotonic()
        self.cancelled = 0
        # Drawn once per run and presented by every registration attempt: a retry after a
        # lost reply finds a committed row holding it and refreshes it as its own, where a
        # fresh token would be refused (a fresh row of another token is never taken over).
        self.lease_token = new_lease_token()

    def _db(self) -> tuple[psycopg.AsyncConnection[Any], Lease]:
        if self.conn is None or self.lease is None:
            raise RuntimeError("the worker is not registered")
        return self.conn, self.lease

    def notify(self, ids: Sequence[str]) -> None:
        """A LISTEN wake-up for this queue: claim these ids next (or poll, past a flood)."""
        if len(self.notified) < _MAX_NOTIFIED:
            for task_id in ids:
                self.notified[task_id] = None
        else:
            # A flood of inserts: a plain poll finds them more cheaply.
            self.notified.clear()
            self.poll_now = True
        self.wake.set()

    # -- lifecycle -------------------------------------------------------------------------

    def _error_backoff(self) -> Backoff:
        """The delays between attempts after a database error: at start-up and in the loop."""
        return Backoff(self.cfg.poll_interval, max(self.cfg.max_poll_interval, 5.0))

    async def register(self) -> None:
        """Connect, register (stale sweep first) and hand back claims left in our name.

        A lost connection or an unreachable server (ConnectionFailed) is retried, as the
        running loop reconnects, until registered or stopped; any other error is raised.
        Stopped meanwhile (or another lane failed to start), it returns unregistered
        (``lease`` None).
        """
        backoff = self._error_backoff()
        while True:
            try:
                await self._register_once()
                break
            except ConnectionFailed as exc:
                self.lease = None
                if self.conn is not None:
                    await self.conn.close()
                    self.conn = None
                delay = backoff.idle()
                log.warning(
                    "worker %s: could not register on queue %s: %s; retrying in %.1fs",
                    self.w.worker_id,
                    self.queue,
                    exc,
                    delay,
                )
                if await self._gives_up_within(delay):
                    log.info(
                        "worker %s: %s before registering on queue %s",
                        self.w.worker_id,
                        "stopped" if self.w._stop_requested.is_set() else "another queue failed",
                        self.queue,
                    )
                    return
        if not self.s.spec.is_async:
            # Spare threads so that a timed-out handler, which cannot be stopped, does
            # not keep its slot: the next task gets a fresh thread.
            spare = self.s.concurrency if self.s.options.timeout is not None else 0
            self.executor = ThreadPoolExecutor(
                max_workers=self.s.concurrency + spare, thread_name_prefix=f"apalis-{self.queue}"
            )

    async def _register_once(self) -> None:
        self.conn = await connect(self.w.conninfo, self.w.connect_kwargs)
        self.lease = await ops.register_worker_async(
            self.conn,
            self.queue,
            self.w.worker_id,
            orphan_threshold=self.cfg.orphan_threshold,
            lease_token=self.lease_token,
        )
        await ops.reconcile_worker_async(self.conn, self.lease, [])

    async def _gives_up_within(self, delay: float) -> bool:
        """Wait ``delay`` seconds, or less when woken (stop() sets every lane's wake).

        True when the start-up is over: stop was asked for, or another lane failed to start.
        """

        def over() -> bool:
            return self.w._stop_requested.is_set() or self.run.start_failed

        self.wake.clear()
        if over():
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake.wait(), delay)
        return over()

    async def work(self) -> None:
        """Claim and run until told to stop (or idle), then drain: acks in, the rest given up."""
        try:
            await self._claim_loop()
            await self._drain()
        except BaseException:
            # The loop itself failed: ack what finished; the rest is released at the end.
            log.exception(
                "worker %s: the worker loop of queue %s failed", self.w.worker_id, self.queue
            )
            await self._flush_acks_logged()
            raise

    async def finish(self) -> None:
        """Release the registration (unless lost) and close the claim connection."""
        if self.executor is not None:
            # Threads still running a timed-out handler are abandoned, not joined.
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.conn is not None:
            if self.lease is not None and not self.lease_lost:
                await self._reconnect_if_broken()
                try:
                    await ops.release_worker_async(self.conn, self.lease)
                except ApalisError as exc:
                    # What it still holds is handed back by the stale sweep later.
                    log.warning(
                        "worker %s: could not release queue %s: %s",
                        self.w.worker_id,
                        self.queue,
                        exc,
                    )
            await self.conn.close()
        s = self.stats
        log.info(
            "worker %s stopped on queue %s: %d done, %d failed, %d killed, %d stale",
            self.w.worker_id,
            self.queue,
            s.done,
            s.failed,
            s.killed,
            s.stale,
        )

    async def retention(self) -> None:
        await retention_loop(
            self.w.conninfo, self.queue, self.cfg, connect_kwargs=self.w.connect_kwargs
        )

    # -- claiming --------------------------------------------------------------------------

    def _should_stop_claiming(self) -> bool:
        if self.run.stopping():
            return True
        limit = self.run.max_tasks
        return limit is not None and self.run.claimed() >= limit

    def _free_slots(self) -> int:
        free = claim_size(
            concurrency=self.s.concurrency,
            in_flight=len(self.in_flight),
            batch_size=self.cfg.batch_size,
        )
        limit = self.run.max_tasks
        if limit is not None:
            free = min(free, limit - self.run.claimed() - self.run.reserved)
        return max(free, 0)

    async def _claim_loop(self) -> None:
        backoff = Backoff(self.cfg.poll_interval, self.cfg.max_poll_interval)
        next_poll = 0.0  # poll at once
        errors = self._error_backoff()
        while True:
            if self.in_flight and self.completed:
                # One loop turn lets completions already queued join this ack batch.
                await asyncio.sleep(0)
            self.wake.clear()
            try:
                if self.reconcile_due:
                    await self._reconcile()
                if self._should_stop_claiming():
                    await self._flush_acks()
                    return
                free = self._free_slots()
                if acks_go_first(
                    free=free,
                    full=self._full_claim(),
                    in_flight=len(self.in_flight),
                    completed=len(self.completed),
                ):
                    await self._flush_acks()  # running handlers finish meanwhile
                    free = self._free_slots()
                if free > 0 and self.notified:
                    ids = list(self.notified)[:100]
                    for i in ids:
                        del self.notified[i]
                    claimed = await self._claim(ids, free)
                    if claimed:
                        backoff.reset()
                    if len(claimed) == free:
                        next_poll = 0.0  # the batch was full: more may be waiting
                    continue
                if self.poll_now:
                    self.poll_now = False
                    next_poll = 0.0
                if free > 0 and time.monotonic() >= next_poll:
                    claimed = await self._claim(None, free)
                    if len(claimed) == free:
                        next_poll = 0.0
                        backoff.reset()
                        continue
                    if claimed or self.in_flight:
                        # Not idle while tasks run: keep the base rate (and notice idleness
                        # promptly under until_idle).
                        next_poll = time.monotonic() + backoff.reset()
                    else:
                        if (
                            self.run.until_idle
                            and not self.in_flight
                            and not self.completed
                            and not self.notified
                        ):
                            log.info("worker %s: queue %s is idle", self.w.worker_id, self.queue)
                            return
                        next_poll = time.monotonic() + backoff.idle()
                else:
                    await self._flush_acks()  # no claim for them to ride with
                errors.reset()
            except ApalisError as exc:
                delay = errors.idle()
                log.error(
                    "worker %s: %s; retrying in %.1fs", self.w.worker_id, exc, delay, exc_info=True
                )
                await asyncio.sleep(delay)
                await self._reconnect_if_broken()
                continue
            if self.completed:
                continue
            timeout = None
            if self._free_slots() > 0:
                timeout = max(0.0, next_poll - time.monotonic())
            due = self._expire()
            if self.completed:
                continue
            if due is not None:
                until_due = max(0.0, due - time.monotonic())
                timeout = until_due if timeout is None else min(timeout, until_due)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    def _full_claim(self) -> int:
        return claim_size(
            concurrency=self.s.concurrency, in_flight=0, batch_size=self.cfg.batch_size
        )

    async def _claim(self, ids: list[str] | None, free: int) -> list[Job]:
        conn, lease = self._db()
        # Completions waiting for their ack go with the claim: one round trip, one commit.
        self.run.reserved += free
        try:
            with self._taking_completions() as done:
                report, claimed = await ops.ack_and_claim_async(
                    conn, lease, done, batch=free, ids=ids, delays=self._delays_of(done)
                )
        finally:
            self.run.reserved -= free
        self._forget_delays(done)
        self._count_acks(report, done)
        await log_operator_kills(conn, lease.worker_id, report.stale)
        if claimed:
            log.debug("worker %s claimed %d task(s)", self.w.worker_id, len(claimed))
        if claimed:
            self.observer.claimed(self.w.worker_id, self.queue, claimed)
        for job in claimed:
            self._dispatch(job)
        if self.run.max_tasks is not None and len(self.run.lanes) > 1:
            self.run.wake_all()  # the slots this claim reserved are free again elsewhere
        return claimed

    def _dispatch(self, job: Job) -> None:
        spec = self.s.spec
        try:
            args = spec.decode(job.job)
        except ValueError as exc:
            # A failed attempt, as a Rust worker records it (Killed once attempts run out).
            self._complete(job, Outcome.failure(str(exc)), exc, 0.0)
            return
        limit = self.s.options.timeout
        self.observer.started(job)
        ctx = TaskContext(
            id=job.id,
            queue=job.job_type,
            attempt=job.attempts + 1,
            max_attempts=job.max_attempts,
            worker_id=self.w.worker_id,
        )
        if spec.is_async:
            with running_task(ctx):  # the asyncio task copies the context at creation
                task = asyncio.ensure_future(_call_async(spec, args, limit))
            self.in_flight[task] = job
            self.contexts[task] = ctx
            task.add_done_callback(self._on_done)
        else:
            if self.executor is None:
                raise RuntimeError("a sync handler needs the worker's thread pool")
            future = self.executor.submit(_call_sync, spec, args, ctx)
            self.in_flight[future] = job
            self.contexts[future] = ctx
            if limit is not None:
                self.deadlines[future] = time.monotonic() + limit
            future.add_done_callback(self._on_thread_done)

    def _on_thread_done(self, future: concurrent.futures.Future[_Result]) -> None:
        """In the pool thread that ran the handler: queue the result and wake the loop once."""
        self.thread_done.append(future)
        if self.handoff_pending:
            return  # the loop has yet to take the queue, this result with it
        self.handoff_pending = True
        with contextlib.suppress(RuntimeError):  # the run is over and its loop closed
            self.loop.call_soon_threadsafe(self._take_thread_done)

    def _take_thread_done(self) -> None:
        # Cleared before taking: a result queued after this line schedules the next call.
        self.handoff_pending = False
        while self.thread_done:
            self._on_done(self.thread_done.popleft())

    def _on_done(self, fut: _Running) -> None:
        if isinstance(fut, concurrent.futures.Future):
            self.deadlines.pop(fut, None)
        self.contexts.pop(fut, None)
        job = self.in_flight.pop(fut, None)
        if job is None:
            # Already recorded (timed out, or given up at shutdown): a stale late result.
            if isinstance(fut, concurrent.futures.Future) and self.abandoned:
                self.abandoned -= 1
            log.info("a late result of an abandoned handler was discarded")
            return
        if fut.cancelled():
            outcome = Outcome.failure("task cancelled: the worker shut down before it finished")
            self._complete(job, outcome, None, 0.0)
        else:
            exc = fut.exception()
            if exc is not None:
                self._complete(job, outcome_for_exception(exc), exc, 0.0)
            else:
                result = fut.result()
                self._complete(job, result.outcome, result.exc, result.duration)
        self.wake.set()

    def cancel(self, task_id: str, attempts: int | None, reason: str) -> bool:
        """Stop running a task this worker no longer holds (an operator cancelled it).

        The row already says what happened (Killed, "cancelled by operator"), so nothing is
        acked: an async handler is cancelled, a sync one told through current_task() and
        its slot freed, its late result discarded.
        """
        for fut, job in list(self.in_flight.items()):
            if job.id != task_id or (attempts is not None and job.attempts != attempts):
                continue
            del self.in_flight[fut]
            ctx = self.contexts.pop(fut, None)
            if ctx is not None:
                ctx.cancel(reason)
            if isinstance(fut, concurrent.futures.Future):
                self.deadlines.pop(fut, None)
                if not fut.cancel():
                    self.abandoned += 1
            else:
                fut.cancel()
            log.warning("task %s on queue %s stopped: %s", job.id, job.job_type, reason)
            self.cancelled += 1
            self.wake.set()
            return True
        return False

    def _expire(self) -> float | None:
        """Record the sync handlers past their limit as failed; the next deadline, if any."""
        if not self.deadlines:
            return None
        now = time.monotonic()
        limit = self.s.options.timeout or 0.0
        for fut, due in list(self.deadlines.items()):
            if due > now:
                continue
            del self.deadlines[fut]
            job = self.in_flight.pop(fut, None)
            if job is None:
                continue
            self.abandoned += 1
            message = timeout_message(limit, is_async=False)
            ctx = self.contexts.pop(fut, None)
            if ctx is not None:
                ctx.cancel(message)
            self._complete(job, Outcome.failure(message), None, limit)
        return min(self.deadlines.values(), default=None)

    async def _flush_acks(self) -> None:
        if not self.completed:
            return
        conn, lease = self._db()
        with self._taking_completions() as done:
            report = await ops.ack_many_async(conn, lease, done, delays=self._delays_of(done))
        self._forget_delays(done)
        self._count_acks(report, done)
        await log_operator_kills(conn, lease.worker_id, report.stale)

    def _delays_of(self, done: list[tuple[Job, Outcome]]) -> list[float]:
        return [self.delays.get(job.id, 0.0) for job, _ in done]

    def _forget_delays(self, done: list[tuple[Job, Outcome]]) -> None:
        for job, _ in done:
            self.delays.pop(job.id, None)

    def _complete(
        self, job: Job, outcome: Outcome, exc: BaseException | None, duration: float
    ) -> None:
        """Queue one outcome for its ack: its retry backoff drawn, a failure logged."""
        delay = ack_delay(
            self.s.options.retry,
            status=outcome.status,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
        )
        if outcome.status != "Done":
            retryable = outcome.status == "Failed" and job.attempts + 1 < job.max_attempts
            if delay:
                self.delays[job.id] = delay
            log_failure(job, exc, _err_text(outcome), retry_in=delay if retryable else None)
        log_finished(job, outcome.status, duration)
        self.durations[job.id] = duration
        self.completed.append((job, outcome))

    @contextlib.contextmanager
    def _taking_completions(self) -> Iterator[list[tuple[Job, Outcome]]]:
        """The completions to ack now; if acking them fails, they go back for the next try.

        Taken before awaiting, so completions arriving meanwhile wait for the next exchange.
        """
        done, self.completed = self.completed, []
        try:
            yield done
        except BaseException:
            self.completed = done + self.completed
            raise

    def _count_acks(self, report: ops.AckReport, done: list[tuple[Job, Outcome]]) -> None:
        for job, _ in done:
            duration = self.durations.pop(job.id, 0.0)
            status = report.statuses.get(job.id)
            if status is None:
                self.observer.stale_ack(job, duration)
            else:
                self.observer.finished(job, status, duration)  # type: ignore[arg-type]

    async def _drain(self) -> None:
        """Let in-flight tasks finish (up to shutdown_timeout), ack everything, give up the rest."""
        deadline = time.monotonic() + self.cfg.shutdown_timeout
        if self.in_flight:
            log.info(
                "worker %s: waiting up to %.1fs for %d in-flight task(s)",
                self.w.worker_id,
                self.cfg.shutdown_timeout,
                len(self.in_flight),
            )
        while self.in_flight and time.monotonic() < deadline:
            self.wake.clear()
            due = self._expire()
            await self._flush_acks_logged()
            wait = max(0.0, deadline - time.monotonic())
            if due is not None:
                wait = min(wait, max(0.0, due - time.monotonic()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)
        for fut, job in list(self.in_flight.items()):
            del self.in_flight[fut]
            fut.cancel()
            log.warning("task %s did not finish within the shutdown timeout", job.id)
            message = (
                f"task interrupted: the worker shut down and the task did not finish "
                f"within {self.cfg.shutdown_timeout:g}s"
            )
            self._complete(job, Outcome.failure(message), None, self.cfg.shutdown_timeout)
        await self._flush_acks_logged()

    async def _flush_acks_logged(self) -> None:
        try:
            await self._flush_acks()
        except ApalisError as exc:
            # Unacked tasks stay Running; the orphan re-enqueue gives them back.
            log.error("worker %s: could not ack at shutdown: %s", self.w.worker_id, exc)
            await self._reconnect_if_broken()

    async def _reconnect_if_broken(self) -> None:
        if self.conn is not None and not self.conn.closed and not self.conn.broken:
            return
        self.outage_seen = True
        try:
            self.conn = await connect(self.w.conninfo, self.w.connect_kwargs)
            log.info("worker %s: reconnected", self.w.worker_id)
            self.observer.reconnected(self.w.worker_id, "claim connection")
        except ConnectionFailed as exc:
            log.error("worker %s: reconnect failed: %s", self.w.worker_id, exc)
            return
        self.reconcile_due = True

    async def _reconcile(self) -> None:
        """Hand back the claims in our name we are not running (claimed on a lost connection).

        What runs and what waits for its ack is kept; so is nothing else.
        """
        conn, lease = self._db()
        keep = [job.id for job in self.in_flight.values()]
        keep += [job.id for job, _ in self.completed]
        try:
            await ops.reconcile_worker_async(conn, lease, keep)
        except WorkerNotRegistered:
            self._lose_lease(lease)
            return
        self.reconcile_due = False

    def _lose_lease(self, lease: Lease) -> None:
        log.error(
            "worker %s: lease lost (another process took over the registration); stopping claiming",
            lease.worker_id,
        )
        self.lease_lost = True
        self.run.lease_lost = True
        self.observer.lease_lost(lease.worker_id, lease.queue)
        self.run.wake_all()  # the id runs twice: every queue stops claiming

    def _note_heartbeat(self, lease: Lease) -> None:
        """A heartbeat succeeded: start the sweep hold if the database was out of reach.

        Out of reach means a failed heartbeat or claim since the last good heartbeat, or a
        gap since then longer than half the orphan threshold (a partition that made the
        statements hang rather than fail). Peers were as cut off as we were, so their
        heartbeats are as old as ours: sweeping now would re-run tasks they still run.
        """
        now = time.monotonic()
        gap, self.last_heartbeat = now - self.last_heartbeat, now
        long_gap = gap > max(self.cfg.orphan_threshold / 2, 2 * self.cfg.heartbeat_interval)
        if not (self.outage_seen or long_gap):
            return
        self.outage_seen = False
        self.sweep_hold_until = now + self.cfg.orphan_threshold
        log.warning(
            "worker %s: the database was out of reach (%.1fs since the last heartbeat); no "
            "stale sweep for %gs so that other workers can heartbeat first",
            lease.worker_id,
            gap,
            self.cfg.orphan_threshold,
        )

    def _may_sweep(self) -> bool:
        """The post-outage rule: no stale sweep until peers have had a threshold to heartbeat."""
        return time.monotonic() >= self.sweep_hold_until

    # -- background ------------------------------------------------------------------------

    async def heartbeat_loop(self) -> None:
        """Heartbeat, then the stale sweep of this queue, every heartbeat_interval."""
        _, lease = self._db()
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                await asyncio.sleep(self.cfg.heartbeat_interval)
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = await connect(self.w.conninfo, self.w.connect_kwargs)
                    await ops.heartbeat_async(conn, lease)
                except WorkerNotRegistered:
                    self._lose_lease(lease)
                    return
                except ApalisError as exc:
                    self.outage_seen = True
                    log.error("worker %s: heartbeat failed: %s", lease.worker_id, exc)
                    continue
                self._note_heartbeat(lease)
                if not self._may_sweep():
                    continue
                try:
                    await ops.reenqueue_orphans_async(
                        conn, lease.queue, orphan_threshold=self.cfg.orphan_threshold
                    )
                except ApalisError as exc:
                    log.error("worker %s: stale sweep failed: %s", lease.worker_id, exc)
        finally:
            if conn is not None:
                await conn.close()


def _err_text(outcome: Outcome) -> str:
    result = outcome.result
    if isinstance(result, dict) and "Err" in result:
        return str(result["Err"])
    return str(result)


def _call_sync(spec: HandlerSpec, args: Any, ctx: TaskContext) -> _Result:
    started = time.monotonic()
    try:
        with running_task(ctx):
            value = spec.func(args)
    except Exception as exc:
        return _Result(outcome_for_exception(exc), exc, time.monotonic() - started)
    return _Result(outcome_for_return(value), None, time.monotonic() - started)


async def _call_async(spec: HandlerSpec, args: Any, limit: float | None) -> _Result:
    started = time.monotonic()
    try:
        if limit is None:
            value = await spec.func(args)
        else:
            value = await asyncio.wait_for(spec.func(args), limit)
    except TimeoutError:
        if limit is None:
            raise
        return _Result(
            Outcome.failure(timeout_message(limit, is_async=True)), None, time.monotonic() - started
        )
    except Exception as exc:
        return _Result(outcome_for_exception(exc), exc, time.monotonic() - started)
    return _Result(outcome_for_return(value), None, time.monotonic() - started)
