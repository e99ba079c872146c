"""Cancellation: the notify payload parser, against the real NOTIFY, and the handler's flag."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest
from psycopg import sql
from worker_support import push, task

from apalis_client import worker_ops
from apalis_client.cancellation import (
    CANCEL_CHANNEL,
    CANCEL_MESSAGE,
    CancelRequest,
    parse_cancel_payload,
)
from apalis_client.context import TaskCancelled, TaskContext, current_task, running_task
from apalis_generated import cancel, lock

Q = "cancels"
W = "w-cancel"


def test_the_payload_cancel_task_sends_parses_into_a_request_for_its_worker(
    migrated_db: str,
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        lease = worker_ops.register_worker(conn, Q, W)
        (task_id,) = push(migrated_db, Q, [{"n": 1}])
        (job,) = lock.claim_next(conn, queue=Q, batch=1, worker_id=W, lease_token=lease.lease_token)
        with psycopg.connect(migrated_db, autocommit=True) as listener:
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CANCEL_CHANNEL)))
            row = cancel.cancel_task(conn, id=task_id)
            (note,) = listener.notifies(timeout=2, stop_after=1)
    assert row is not None
    assert note.channel == CANCEL_CHANNEL
    request = parse_cancel_payload(note.payload)
    assert request == CancelRequest(id=task_id, job_type=Q, worker_id=W, attempts=job.attempts)
    assert request.is_for(W, {Q})
    assert not request.is_for("someone-else", {Q})
    assert not request.is_for(W, {"other-queue"})
    assert task(migrated_db, task_id)["last_result"] == {"Err": CANCEL_MESSAGE}


def test_a_cancel_rolled_back_notifies_no_one(migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        lease = worker_ops.register_worker(conn, Q, W)
        (task_id,) = push(migrated_db, Q, [{"n": 1}])
        lock.claim_next(conn, queue=Q, batch=1, worker_id=W, lease_token=lease.lease_token)
    with psycopg.connect(migrated_db, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CANCEL_CHANNEL)))
        with psycopg.connect(migrated_db) as conn:
            assert cancel.cancel_task(conn, id=task_id) is not None
            conn.rollback()
        assert list(listener.notifies(timeout=0.5)) == []
    assert task(migrated_db, task_id)["status"] == "Running"


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[1, 2]",
        '{"id": "A", "job_type": "q", "worker_id": "w"}',
        '{"id": "A", "job_type": "q", "worker_id": null, "attempts": 0}',
        '{"id": "A", "job_type": "q", "worker_id": "w", "attempts": -1}',
        '{"id": "A", "job_type": "q", "worker_id": "w", "attempts": true}',
        '{"id": 7, "job_type": "q", "worker_id": "w", "attempts": 0}',
    ],
)
def test_a_malformed_cancel_payload_is_ignored(payload: str) -> None:
    assert parse_cancel_payload(payload) is None


def ctx(task_id: str = "T1") -> TaskContext:
    return TaskContext(id=task_id, queue=Q, attempt=1, max_attempts=5, worker_id=W)


def test_current_task_outside_a_handler_says_so() -> None:
    with pytest.raises(RuntimeError, match="outside a task handler"):
        current_task()


def test_a_sync_handler_sees_the_flag_set_from_another_thread() -> None:
    seen: list[object] = []
    c = ctx()

    def handler() -> None:
        with running_task(c):
            me = current_task()
            seen.append(me.wait_cancelled(5))
            seen.append(me.cancel_reason)
            try:
                me.raise_if_cancelled()
            except TaskCancelled as exc:
                seen.append(str(exc))

    t = threading.Thread(target=handler)
    t.start()
    c.cancel(CANCEL_MESSAGE)
    c.cancel("a later reason is not kept")
    t.join(5)
    assert seen == [True, CANCEL_MESSAGE, "task 'T1' was cancelled: cancelled by operator"]


def test_each_asyncio_task_sees_its_own_current_task() -> None:
    async def handler(c: TaskContext) -> str:
        with running_task(c):
            await asyncio.sleep(0.01)
            return current_task().id

    async def main() -> list[str]:
        return list(await asyncio.gather(handler(ctx("A")), handler(ctx("B"))))

    assert asyncio.run(main()) == ["A", "B"]


def test_an_uncancelled_task_passes_its_checks() -> None:
    c = ctx()
    assert not c.cancelled
    assert not c.wait_cancelled(0.01)
    c.raise_if_cancelled()
