"""The worker's opt-in retention: a background purge of its queue's finished history."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from apalis_client._connection import connect
from apalis_client.admin_async import operator_kills_async, purge_async
from apalis_client.config import WorkerConfig
from apalis_client.errors import ApalisError
from apalis_generated.models import Job

log = logging.getLogger("apalis_client.worker")

# Workers started together should not all purge at the same moment: the first purge waits
# a random part of the interval, at most this long.
_FIRST_PURGE_SPREAD = 30.0


async def retention_loop(
    conninfo: str,
    queue: str,
    config: WorkerConfig,
    *,
    connect_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Purge ``queue`` every ``retention_interval`` seconds until cancelled (own connection,
    opened with ``connect_kwargs``).

    Many workers may run this on one queue: purge batches skip locked rows, so no row is
    deleted twice and no claim waits on a purge longer than one batch. A failed purge is
    logged and tried again at the next interval.
    """
    window = config.retention_window
    if window is None:
        return
    conn: psycopg.AsyncConnection[Any] | None = None
    delay = random.uniform(0, min(config.retention_interval, _FIRST_PURGE_SPREAD))
    try:
        while True:
            await asyncio.sleep(delay)
            delay = config.retention_interval
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = await connect(conninfo, connect_kwargs)
                report = await purge_async(conn, queue, older_than=window)
            except ApalisError as exc:
                log.warning("retention purge of queue %s failed: %s", queue, exc)
                continue
            if report.deleted:
                log.info(
                    "retention: purged %d finished task(s) of queue %s older than %gs "
                    "(%d batch(es), %.2fs)",
                    report.deleted,
                    queue,
                    window,
                    report.batches,
                    report.seconds,
                )
    finally:
        if conn is not None:
            await conn.close()


async def log_operator_kills(
    conn: psycopg.AsyncConnection[Any], worker_id: str, stale: Sequence[Job]
) -> None:
    """After stale acks: say which of the tasks an operator killed while this worker ran them."""
    if not stale:
        return
    try:
        kills = await operator_kills_async(conn, stale)
    except ApalisError as exc:
        log.warning("worker %s: could not look up stale tasks: %s", worker_id, exc)
        return
    for task_id, reason in kills.items():
        log.warning(
            "worker %s: task %s was killed by an operator while it ran (%s); its result "
            "was discarded",
            worker_id,
            task_id,
            reason,
        )
