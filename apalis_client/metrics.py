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
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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


class PrometheusObserver(Observer):
    """Counts worker events into ``registry`` (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.claimed_total = Counter(
            "apalis_tasks_claimed", "Tasks claimed.", ["queue"], registry=r
        )
        self.started_total = Counter(
            "apalis_tasks_started", "Handlers started.", ["queue"], registry=r
        )
        self.finished_total = Counter(
            "apalis_tasks_finished",
            "Attempts recorded, by final status (Done, Failed, Killed).",
            ["queue", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "apalis_task_duration_seconds",
            "Handler run time of recorded attempts, by final status.",
            ["queue", "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.stale_total = Counter(
            "apalis_stale_acks",
            "Acks that matched no row (cancelled, killed, re-enqueued or taken over).",
            ["queue"],
            registry=r,
        )
        self.lease_lost_total = Counter(
            "apalis_lease_lost",
            "Registrations taken over by another process.",
            ["queue"],
            registry=r,
        )
        self.reconnects_total = Counter(
            "apalis_reconnects", "Connections made again.", ["connection"], registry=r
        )
        self.in_progress = Gauge(
            "apalis_tasks_in_progress", "Handlers running now.", ["queue"], registry=r
        )
        # Label lookups cost a lock and a dict probe each: cache the children per queue.
        self._per_queue: dict[str, tuple[Any, Any, Any]] = {}
        self._per_status: dict[tuple[str, str], tuple[Any, Any]] = {}

    def _queue(self, queue: str) -> tuple[Any, Any, Any]:
        found = self._per_queue.get(queue)
        if found is None:
            found = (
                self.claimed_total.labels(queue),
                self.started_total.labels(queue),
                self.in_progress.labels(queue),
            )
            self._per_queue[queue] = found
        return found

    def _status(self, queue: str, status: str) -> tuple[Any, Any]:
        key = (queue, status)
        found = self._per_status.get(key)
        if found is None:
            found = (
                self.finished_total.labels(queue, status),
                self.duration.labels(queue, status),
            )
            self._per_status[key] = found
        return found

    def claimed(self, worker_id: str, queue: str, tasks: Sequence[TaskRef]) -> None:
        """Count claimed tasks."""
        self._queue(queue)[0].inc(len(tasks))

    def started(self, task: TaskRef) -> None:
        """Count a started handler."""
        _, started, running = self._queue(task.job_type)
        started.inc()
        running.inc()

    def finished(self, task: TaskRef, status: FinalStatus, duration: float) -> None:
        """Count the recorded attempt and observe its duration."""
        counter, histogram = self._status(task.job_type, status)
        counter.inc()
        histogram.observe(duration)
        self._queue(task.job_type)[2].dec()

    def stale_ack(self, task: TaskRef, duration: float) -> None:
        """Count a stale ack."""
        self.stale_total.labels(task.job_type).inc()
        self._queue(task.job_type)[2].dec()

    def lease_lost(self, worker_id: str, queue: str) -> None:
        """Count a lost lease."""
        self.lease_lost_total.labels(queue).inc()

    def reconnected(self, worker_id: str, what: str) -> None:
        """Count a reconnection."""
        self.reconnects_total.labels(what).inc()


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
    conninfo: str, queues: Sequence[str], gauges: QueueDepthGauges, *, interval: float = 15.0
) -> None:
    """Refresh the gauges every ``interval`` seconds until cancelled (a background service).

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
                        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
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


def start_metrics_server(
    port: int, registry: CollectorRegistry, *, addr: str = "0.0.0.0"
) -> MetricsServer:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgument(f"metrics port must be an integer from 0 to 65535, got {port!r}")
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise InvalidArgument(f"cannot serve metrics on {addr}:{port}: {exc.strerror}") from exc
    return MetricsServer(server, thread)
