"""Running handlers: a timed-out or cancelled one frees its slot and its late result is dropped.

Real asyncio tasks and real pool threads; the limits are short so the tests stay fast.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from apalis_client._inflight import InFlight
from apalis_client.cancellation import CANCEL_MESSAGE
from apalis_client.context import TaskContext, current_task, running_task


@dataclass(frozen=True)
class Job:
    id: str
    job_type: str = "q"
    attempts: int = 0
    max_attempts: int = 5


def ctx_for(job: Job) -> TaskContext:
    return TaskContext(job.id, job.job_type, job.attempts + 1, job.max_attempts, "w")


def test_an_async_handler_past_its_limit_is_cancelled_and_its_slot_runs_the_next() -> None:
    async def go() -> tuple[list[str], str, bool, int, int]:
        flight: InFlight[Job] = InFlight(1)

        async def slow(c: TaskContext) -> str:
            with running_task(c):
                await asyncio.sleep(10)
                return "too late"

        job = Job("SLOW")
        c = ctx_for(job)
        task = asyncio.ensure_future(slow(c))
        task.add_done_callback(flight.finished)
        flight.add(task, job, c, 0.2, is_async=True)
        assert flight.free() == 0
        deadline = flight.next_deadline()
        assert deadline is not None
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        expired = flight.expire()
        free_after = flight.free()
        await asyncio.sleep(0)  # the cancelled task's callback runs
        await asyncio.sleep(0)
        return (
            [e.job.id for e, _ in expired],
            expired[0][1],
            task.cancelled() and c.cancelled,
            free_after,
            flight.slots.abandoned,
        )

    ids, message, cancelled, free, abandoned = asyncio.run(go())
    assert ids == ["SLOW"]
    assert message == (
        "task timed out: the handler ran longer than its 0.2s limit and was cancelled"
    )
    assert cancelled
    assert free == 1
    assert abandoned == 0  # the cancelled task finished: no thread or task left behind


def test_a_sync_handler_past_its_limit_frees_its_slot_and_its_late_result_is_discarded() -> None:
    flight: InFlight[Job] = InFlight(1)
    release = threading.Event()
    seen_flag: list[bool] = []

    def stuck(c: TaskContext) -> str:
        with running_task(c):
            release.wait(10)
            seen_flag.append(current_task().cancelled)
            return "late result"

    results: list[object] = []
    with ThreadPoolExecutor(max_workers=flight.pool_size) as pool:
        job = Job("STUCK")
        c = ctx_for(job)
        fut = pool.submit(stuck, c)
        flight.add(fut, job, c, 0.05, is_async=False)
        fut.add_done_callback(lambda f: results.append(flight.finished(f)))
        time.sleep(0.1)
        ((entry, message),) = flight.expire()
        assert entry.job.id == "STUCK"
        assert "its 0.05s limit; its thread could not be stopped" in message
        assert (flight.free(), flight.slots.abandoned) == (1, 1)
        # The freed slot runs the next task while the stuck thread still runs.
        nxt = Job("NEXT")
        fut2 = pool.submit(lambda: "next ran")
        flight.add(fut2, nxt, ctx_for(nxt), None, is_async=False)
        assert fut2.result(timeout=5) == "next ran"
        finished_next = flight.finished(fut2)
        release.set()
        assert fut.result(timeout=5) == "late result"
    assert finished_next is not None and finished_next.job.id == "NEXT"
    assert results == [None]  # the late result is stale: nothing to ack
    assert seen_flag == [True]
    assert (flight.slots.running, flight.slots.abandoned, len(flight)) == (0, 0, 0)


def test_cancel_reaches_only_the_run_it_names() -> None:
    flight: InFlight[Job] = InFlight(2)
    with ThreadPoolExecutor(max_workers=flight.pool_size) as pool:
        release = threading.Event()
        job = Job("A", attempts=2)
        c = ctx_for(job)
        fut = pool.submit(release.wait, 5)
        flight.add(fut, job, c, None, is_async=False)
        assert flight.cancel("A", 1, CANCEL_MESSAGE) is None  # an older run of the same id
        assert flight.cancel("B", 2, CANCEL_MESSAGE) is None
        entry = flight.cancel("A", 2, CANCEL_MESSAGE)
        assert entry is not None and entry.job is job
        assert (c.cancelled, c.cancel_reason) == (True, CANCEL_MESSAGE)
        assert flight.free() == 2
        release.set()
        fut.result(timeout=5)
        assert flight.finished(fut) is None
    assert flight.slots.abandoned == 0


def test_a_handler_finishing_in_time_is_returned_once_and_its_deadline_dropped() -> None:
    now = [100.0]
    flight: InFlight[Job] = InFlight(1, clock=lambda: now[0])
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(lambda: 1)
        fut.result(timeout=5)
        flight.add(fut, Job("A"), ctx_for(Job("A")), 5.0, is_async=False)
        assert flight.next_deadline() == 105.0
        entry = flight.finished(fut)
        assert entry is not None and entry.duration(101.5) == 1.5
        assert flight.finished(fut) is None
        assert flight.next_deadline() is None
        assert flight.expire(200.0) == []
