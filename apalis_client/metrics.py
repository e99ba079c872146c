"""Prometheus metrics: an observer counting worker events, queue-depth gauges, an HTTP endpoint.

Needs the ``metrics`` extra (``pip install 'apalis-client[metrics]'``). Metric names
(prefix ``apalis_``): ``tasks_claimed_total{queue}``, ``tasks_started_total{queue}``,
``tasks_finished_total{queue,status}``, ``task_duration_seconds{queue,status}`` (histogram),
``stale_acks_total{queue}``, ``lease_lost_total{queue}``, ``reconnects_total{connection}``,
``tasks_in_progress{queue}``, and from the database ``queue_tasks{queue,state}`` (state:
due, scheduled, queued, running) and ``queue_oldest_due_age_seconds{queue}``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import socket
import socketserver
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
from prometheus_client import CollectorRegistry, Gauge, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from apalis_client.errors import ApalisError, InvalidArgument, database_errors
from apalis_client.events import FinalStatus, Observer, TaskRef
from apalis_generated import metrics_async
from apalis_generated.models import QueueDepthRow

__all__ = [
    "DURATION_BUCKETS",
    "MetricsServer",
    "PrometheusObserver",
    "QueueDepthGauges",
    "queue_depth_loop",
    "refresh_queue_depth_async",
    "start_metrics_server",
]

log = logging.getLogger("apalis_client.metrics")

#: Task duration buckets in seconds: 5 ms to 10 minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)
_STATES = ("due", "scheduled", "queued", "running")


@dataclass
class _QueueCounts:
    """Plain counters of one queue, written by the worker's loop thread only."""

    claimed: int = 0
    started: int = 0
    stale: int = 0
    lease_lost: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    # Per final status: per-bucket (not cumulative) counts, the last slot for +Inf, and sum.
    buckets: dict[str, list[int]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)


class PrometheusObserver(Observer, Collector):
    """Counts worker events and serves them from ``registry`` (a fresh one unless given).

    Events only bump plain integers (no lock, no label look-up: a few hundred nanoseconds
    per task); the Prometheus families are built when scraped. Call it from one thread,
    as the worker does (its events all come from its event loop).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._queues: dict[str, _QueueCounts] = {}
        self._reconnects: dict[str, int] = {}
        self.registry.register(self)

    def _q(self, queue: str) -> _QueueCounts:
        found = self._queues.get(queue)
        if found is None:
            found = self._queues[queue] = _QueueCounts()
        return found

    def claimed(self, worker_id: str, queue: str, tasks: Sequence[TaskRef]) -> None:
        """Count claimed tasks."""
        self._q(queue).claimed += len(tasks)

    def started(self, task: TaskRef) -> None:
        """Count a started handler."""
        self._q(task.job_type).started += 1

    def finished(self, task: TaskRef, status: FinalStatus, duration: float) -> None:
        """Count the recorded attempt and observe its duration."""
        q = self._q(task.job_type)
        q.finished[status] = q.finished.get(status, 0) + 1
        counts = q.buckets.get(status)
        if counts is None:
            counts = q.buckets[status] = [0] * (len(DURATION_BUCKETS) + 1)
        counts[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        q.sums[status] = q.sums.get(status, 0.0) + duration

    def stale_ack(self, task: TaskRef, duration: float) -> None:
        """Count a stale ack."""
        self._q(task.job_type).stale += 1

    def lease_lost(self, worker_id: str, queue: str) -> None:
        """Count a lost lease."""
        self._q(queue).lease_lost += 1

    def reconnected(self, worker_id: str, what: str) -> None:
        """Count a reconnection."""
        self._reconnects[what] = self._reconnects.get(what, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """The metric families, built from the counts at scrape time."""
        claimed = CounterMetricFamily("apalis_tasks_claimed", "Tasks claimed.", labels=["queue"])
        started = CounterMetricFamily("apalis_tasks_started", "Handlers started.", labels=["queue"])
        finished = CounterMetricFamily(
            "apalis_tasks_finished",
            "Attempts recorded, by final status (Done, Failed, Killed).",
            labels=["queue", "status"],
        )
        duration = HistogramMetricFamily(
            "apalis_task_duration_seconds",
            "Handler run time of recorded attempts, by final status.",
            labels=["queue", "status"],
        )
        stale = CounterMetricFamily(
            "apalis_stale_acks",
            "Acks that matched no row (cancelled, killed, re-enqueued or taken over).",
            labels=["queue"],
        )
        lost = CounterMetricFamily(
            "apalis_lease_lost", "Registrations taken over by another process.", labels=["queue"]
        )
        in_progress = GaugeMetricFamily(
            "apalis_tasks_in_progress", "Handlers running now.", labels=["queue"]
        )
        reconnects = CounterMetricFamily(
            "apalis_reconnects", "Connections made again.", labels=["connection"]
        )
        for name, q in list(self._queues.items()):
            claimed.add_metric([name], q.claimed)
            started.add_metric([name], q.started)
            stale.add_metric([name], q.stale)
            lost.add_metric([name], q.lease_lost)
            acked = 0
            for status, n in list(q.finished.items()):
                acked += n
                finished.add_metric([name, status], n)
                counts = list(q.buckets.get(status, ()))
                cumulative, total = [], 0
                for bound, c in zip(_BOUNDS, counts, strict=True):
                    total += c
                    cumulative.append((bound, float(total)))
                duration.add_metric([name, status], cumulative, q.sums.get(status, 0.0))
            in_progress.add_metric([name], max(q.started - acked - q.stale, 0))
        for what, n in list(self._reconnects.items()):
            reconnects.add_metric([what], n)
        yield from (claimed, started, finished, duration, stale, lost, in_progress, reconnects)


def _le(bound: float) -> str:
    # The form Prometheus clients print bucket bounds in: 0.005, 1.0, 300.0.
    return repr(float(bound))


_BOUNDS = (*map(_le, DURATION_BUCKETS), "+Inf")


class QueueDepthGauges:
    """Queue-depth gauges in ``registry``, set from ``queue_depth`` rows."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tasks = Gauge(
            "apalis_queue_tasks",
            "Active tasks of a queue by state (due, scheduled, queued, running).",
            ["queue", "state"],
            registry=registry,
        )
        self.oldest_due_age = Gauge(
            "apalis_queue_oldest_due_age_seconds",
            "How long the oldest due waiting task has been due (0 when none).",
            ["queue"],
            registry=registry,
        )

    def update(self, rows: Sequence[QueueDepthRow]) -> None:
        """Set the gauges of each row's queue."""
        for row in rows:
            for state in _STATES:
                self.tasks.labels(row.job_type, state).set(getattr(row, state))
            self.oldest_due_age.labels(row.job_type).set(row.oldest_due_age_secs)


async def refresh_queue_depth_async(
    conn: psycopg.AsyncConnection[Any], queues: Sequence[str], gauges: QueueDepthGauges
) -> list[QueueDepthRow]:
    """Read the depth of ``queues`` (one statement over active rows) and set the gauges."""
    with database_errors("read queue depth"):
        rows = await metrics_async.queue_depth(conn, queues=list(queues))
    gauges.update(rows)
    return rows


async def queue_depth_loop(
    conninfo: str,
    queues: Sequence[str],
    gauges: QueueDepthGauges,
    *,
    interval: float = 15.0,
    connect_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Refresh the gauges every ``interval`` seconds until cancelled (a background service;
    its own connection, opened with ``connect_kwargs``).

    A failed refresh is logged and the connection made again at the next turn.
    """
    if interval <= 0:
        raise InvalidArgument(f"interval must be positive, got {interval}")
    conn: psycopg.AsyncConnection[Any] | None = None
    try:
        while True:
            try:
                if conn is None or conn.closed or conn.broken:
                    with database_errors("connect for queue depth"):
                        conn = await psycopg.AsyncConnection.connect(
                            conninfo, autocommit=True, **(connect_kwargs or {})
                        )
                await refresh_queue_depth_async(conn, queues, gauges)
            except ApalisError as exc:
                log.warning("queue depth refresh failed: %s", exc)
            await asyncio.sleep(interval)
    finally:
        if conn is not None:
            await conn.close()


@dataclass
class MetricsServer:
    """The running HTTP endpoint; :meth:`stop` shuts it down."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen when started with port 0)."""
        return int(self.server.server_port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# How often the endpoint's thread checks for a stop: the most a worker's run waits for it.
_STOP_POLL = 0.05


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (the worker logs through ``logging``, not stderr)."""


def start_metrics_server(
    port: int, registry: CollectorRegistry, *, addr: str = "0.0.0.0"
) -> MetricsServer:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread.

    The thread checks for :meth:`MetricsServer.stop` every 50 ms (the standard library's
    default is 500 ms, which a worker's run would wait out at every stop).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgument(f"metrics port must be an integer from 0 to 65535, got {port!r}")
    server_class = _Server6 if ":" in addr else _Server
    try:
        server = make_server(
            addr, port, make_wsgi_app(registry), server_class, handler_class=_Quiet
        )
    except OSError as exc:
        raise InvalidArgument(f"cannot serve metrics on {addr}:{port}: {exc.strerror}") from exc
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _STOP_POLL},
        name="apalis-metrics",
        daemon=True,
    )
    thread.start()
    return MetricsServer(server, thread)
