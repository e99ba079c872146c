"""Workers through a real PgBouncer in transaction mode: no prepared statements, LISTEN direct."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from worker_support import Background, push, rows

from apalis_client.worker import Worker, WorkerConfig

NO_PREPARE = {"prepare_threshold": None}
CFG = WorkerConfig(
    poll_interval=0.05,
    max_poll_interval=0.5,
    heartbeat_interval=0.5,
    orphan_threshold=5.0,
    shutdown_timeout=10.0,
)


def test_three_workers_through_the_pooler_run_every_task_exactly_once(
    pooled_db: str, migrated_db: str
) -> None:
    push(migrated_db, "q", list(range(3000)))
    runs: list[int] = []
    lock = threading.Lock()

    def handle(n: int) -> int:
        with lock:
            runs.append(n)
        return n

    workers = [
        Worker(
            "q", handle, conninfo=pooled_db, concurrency=4, config=CFG, connect_kwargs=NO_PREPARE
        )
        for _ in range(3)
    ]
    threads = [threading.Thread(target=w.run, kwargs={"until_idle": True}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    (counts,) = rows(
        migrated_db,
        "SELECT count(*) FILTER (WHERE status = 'Done') AS done, "
        "count(*) FILTER (WHERE attempts <> 1) AS retried FROM apalis.jobs WHERE job_type = 'q'",
    )
    assert (counts["done"], counts["retried"]) == (3000, 0)
    assert sorted(runs) == list(range(3000))


def test_listen_through_the_pooler_warns_and_says_not_listening(
    pooled_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="apalis_client.worker"):
        bg = Background(
            Worker("q", lambda _: None, conninfo=pooled_db, config=CFG, connect_kwargs=NO_PREPARE)
        )
        bg.finish()
    text = [r.getMessage() for r in caplog.records]
    assert any("heard no probe notification" in m and "listen_conninfo" in m for m in text)
    assert not any(" listening on " in m for m in text)


def test_a_direct_listen_conninfo_wakes_a_pooled_worker(
    pooled_db: str, migrated_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    slow = WorkerConfig(poll_interval=30.0, max_poll_interval=30.0, heartbeat_interval=1.0)
    done = threading.Event()

    def handle(_: Any) -> None:
        done.set()

    with caplog.at_level(logging.INFO, logger="apalis_client.worker"):
        w = Worker(
            "q",
            handle,
            conninfo=pooled_db,
            config=slow,
            connect_kwargs=NO_PREPARE,
            listen_conninfo=migrated_db,
        )
        bg = Background(w)
        time.sleep(0.3)  # past the first (empty) poll; the next one is 30 s away
        sent = time.monotonic()
        push(migrated_db, "q", ["x"])
        woke = done.wait(5)
        elapsed = time.monotonic() - sent
        bg.finish()
    assert woke and elapsed < 2.0
    text = [r.getMessage() for r in caplog.records]
    assert any(" listening on " in m for m in text)
    assert not any("heard no probe notification" in m for m in text)
