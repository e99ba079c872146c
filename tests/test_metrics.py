"""The Prometheus exporter: counters from worker events and depth gauges, scraped over HTTP."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_events import Ref, feed
from worker_support import push

from apalis_client import worker_ops
from apalis_client.errors import InvalidArgument
from apalis_client.events import Fanout, StatsObserver
from apalis_client.metrics import (
    MetricsServer,
    PrometheusObserver,
    QueueDepthGauges,
    queue_depth_loop,
    refresh_queue_depth_async,
    start_metrics_server,
)
from apalis_client.worker import WorkerStats
from apalis_generated import lock


@pytest.fixture
def served() -> Iterator[tuple[PrometheusObserver, MetricsServer]]:
    obs = PrometheusObserver()
    server = start_metrics_server(0, obs.registry, addr="127.0.0.1")
    yield obs, server
    server.stop()


def scrape(server: MetricsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_scraped_counters_match_the_workerstats_of_the_same_events(
    served: tuple[PrometheusObserver, MetricsServer],
) -> None:
    obs, server = served
    stats = StatsObserver()
    feed(Fanout([stats, obs]))
    run = WorkerStats(**stats.worker_stats_fields())  # type: ignore[arg-type]
    m = scrape(server)
    q = (("queue", "q"),)
    assert m[("apalis_tasks_claimed_total", q)] == run.claimed
    for status, count in (("Done", run.done), ("Failed", run.failed), ("Killed", run.killed)):
        labels = (("queue", "q"), ("status", status))
        assert m[("apalis_tasks_finished_total", labels)] == count
        assert m[("apalis_task_duration_seconds_count", labels)] == count
    assert m[("apalis_stale_acks_total", q)] == run.stale
    assert m[("apalis_lease_lost_total", q)] == 1
    assert m[("apalis_reconnects_total", (("connection", "heartbeat"),))] == 1
    assert m[("apalis_tasks_started_total", q)] == 5
    assert m[("apalis_tasks_in_progress", q)] == 0
    done = (("queue", "q"), ("status", "Done"))
    assert m[("apalis_task_duration_seconds_sum", done)] == pytest.approx(0.04)
    bucket = "apalis_task_duration_seconds_bucket"
    assert m[(bucket, (("le", "0.01"), *done))] == 0
    assert m[(bucket, (("le", "0.025"), *done))] == 2


def test_queue_depth_gauges_show_the_database_after_a_refresh(migrated_db: str) -> None:
    registry = CollectorRegistry()
    gauges = QueueDepthGauges(registry)
    server = start_metrics_server(0, registry, addr="127.0.0.1")
    try:
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        push(migrated_db, "mail", [{"n": 1}, {"n": 2}, {"n": 3}])
        push(migrated_db, "mail", [{"n": 4}], run_at=later)
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            lease = worker_ops.register_worker(conn, "mail", "w")
            lock.claim_next(
                conn, queue="mail", batch=1, worker_id="w", lease_token=lease.lease_token
            )

        async def refresh() -> None:
            async with await psycopg.AsyncConnection.connect(migrated_db, autocommit=True) as c:
                await refresh_queue_depth_async(c, ["mail"], gauges)

        asyncio.run(refresh())
        m = scrape(server)
    finally:
        server.stop()
    states = {
        state: m[("apalis_queue_tasks", (("queue", "mail"), ("state", state)))]
        for state in ("due", "scheduled", "queued", "running")
    }
    assert states == {"due": 2, "scheduled": 1, "queued": 0, "running": 1}
    assert m[("apalis_queue_oldest_due_age_seconds", (("queue", "mail"),))] >= 0


def test_the_depth_loop_refreshes_until_cancelled(migrated_db: str) -> None:
    registry = CollectorRegistry()
    gauges = QueueDepthGauges(registry)
    push(migrated_db, "mail", [{"n": 1}])

    async def go() -> float | None:
        loop = asyncio.ensure_future(queue_depth_loop(migrated_db, ["mail"], gauges, interval=0.05))
        await asyncio.sleep(0.3)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
        return registry.get_sample_value("apalis_queue_tasks", {"queue": "mail", "state": "due"})

    assert asyncio.run(go()) == 1


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InvalidArgument, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            start_metrics_server(port, CollectorRegistry(), addr="127.0.0.1")


def test_an_invalid_port_is_refused_before_binding() -> None:
    with pytest.raises(InvalidArgument, match="from 0 to 65535, got 70000"):
        start_metrics_server(70000, CollectorRegistry())


def test_in_progress_counts_handlers_started_and_not_yet_recorded() -> None:
    obs = PrometheusObserver()
    obs.started(Ref("A"))
    obs.started(Ref("B"))
    obs.finished(Ref("A"), "Done", 0.5)
    assert obs.registry.get_sample_value("apalis_tasks_in_progress", {"queue": "q"}) == 1
    assert (
        obs.registry.get_sample_value(
            "apalis_task_duration_seconds_bucket", {"queue": "q", "status": "Done", "le": "+Inf"}
        )
        == 1
    )
