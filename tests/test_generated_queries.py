"""Every statement of queries/ through the generated layer, sync and async, on real PostgreSQL.

Each test runs one generated function in the flavour under test (``Gen``) and asserts the
lifecycle semantics of CONTRACT.md. Setup goes through the sync generated functions where
one exists (push, register, claim, ack) and through direct SQL only for states the
lifecycle cannot reach quickly (an aged heartbeat, an exhausted row, a finished row).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pydantic
import pytest
from conftest import Flavor
from psycopg.conninfo import make_conninfo
from test_migrate import CONSTRAINTS, INDEXES
from ulid import ULID

from apalis_generated import ack, admin, keep_alive, lock, push
from apalis_generated.models import (
    AckBatchRow,
    AppliedMigrationsRow,
    ColumnsRow,
    ConstraintsRow,
    FunctionsRow,
    IndexesRow,
    Job,
    LockRegistrationRow,
    QueueStatsRow,
    ReadQueueStatsSnapshotRow,
    RecoverTasksRow,
    RelationsRow,
    TriggersRow,
    Worker,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = os.path.join(ROOT, "queries")
Q = "q"
W = "w1"
HEARTBEAT_MESSAGE = {"Err": "Re-enqueued due to worker heartbeat timeout."}


# --- running a generated function in the flavour under test -----------------------------


class Gen:
    """One connection of the chosen flavour; ``g("lock", "claim_next", ...)`` runs
    ``apalis_generated.lock.claim_next`` (sync) or ``apalis_generated.lock_async.claim_next``
    (async, on a private event loop) on it."""

    def __init__(self, flavor: Flavor, url: str, *, autocommit: bool = True) -> None:
        self.flavor = flavor.name
        self._sync: psycopg.Connection[Any] | None = None
        self._async: psycopg.AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if self.flavor == "sync":
            self._sync = psycopg.connect(url, autocommit=autocommit)
        else:
            self._loop = asyncio.new_event_loop()
            self._async = self._run(psycopg.AsyncConnection.connect(url, autocommit=autocommit))

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return self._loop.run_until_complete(coro)

    def __call__(self, module: str, name: str, **params: Any) -> Any:
        if self._sync is not None:
            fn = getattr(importlib.import_module(f"apalis_generated.{module}"), name)
            return fn(self._sync, **params)
        fn = getattr(importlib.import_module(f"apalis_generated.{module}_async"), name)
        return self._run(fn(self._async, **params))

    def scalar(self, statement: str) -> Any:
        """One value of a plain statement on this connection (inside its transaction)."""
        if self._sync is not None:
            row = self._sync.execute(statement.encode()).fetchone()
        else:
            assert self._async is not None
            cur = self._run(self._async.execute(statement.encode()))
            row = self._run(cur.fetchone())
        assert row is not None
        return row[0]

    def rollback(self) -> None:
        if self._sync is not None:
            self._sync.rollback()
        else:
            assert self._async is not None
            self._run(self._async.rollback())

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
        if self._loop is not None:
            assert self._async is not None
            self._run(self._async.close())
            self._loop.close()

    def __enter__(self) -> Gen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call(flavor: Flavor, module: str, name: str, url: str, **params: Any) -> Any:
    """Run one generated function on a fresh autocommit connection of ``flavor``."""
    with Gen(flavor, url) as g:
        return g(module, name, **params)


# --- setup helpers (sync generated functions, or direct SQL for unreachable states) -----


def sql(
    url: str, text: str, params: tuple[Any, ...] | dict[str, Any] = ()
) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(text.encode(), params)
        return cur.fetchall() if cur.description else []


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class T:
    """A task to seed; run_at defaults to a minute ago so it is due on the server."""

    id: str = field(default_factory=lambda: str(ULID()))
    payload: bytes = b'{"n": 1}'
    max_attempts: int = 5
    run_at: datetime = field(default_factory=lambda: now() - timedelta(minutes=1))
    priority: int = 0
    metadata: str = "{}"
    key: str | None = None


def push_args(queue: str, tasks: list[T]) -> dict[str, Any]:
    return {
        "queue": queue,
        "jobs": [t.payload for t in tasks],
        "ids": [t.id for t in tasks],
        "max_attempts": [t.max_attempts for t in tasks],
        "run_ats": [t.run_at for t in tasks],
        "priorities": [t.priority for t in tasks],
        "metadata": [t.metadata for t in tasks],
        "idempotency_keys": [t.key for t in tasks],
    }


def seed(url: str, *tasks: T, queue: str = Q) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        push.push_tasks(conn, **push_args(queue, list(tasks)))
    return [t.id for t in tasks]


def register(url: str, worker: str = W, queue: str = Q) -> str:
    token = str(ULID())
    with psycopg.connect(url, autocommit=True) as conn:
        row = keep_alive.upsert_worker(
            conn,
            worker_id=worker,
            queue=queue,
            storage_name="PostgresStorage",
            layers="",
            lease_token=token,
        )
    assert row is not None
    return token


def claim(url: str, worker: str = W, queue: str = Q, batch: int = 10) -> list[Job]:
    with psycopg.connect(url, autocommit=True) as conn:
        return lock.claim_next(conn, queue=queue, batch=batch, worker_id=worker, lease_token=None)


def find(url: str, task_id: str) -> Job:
    with psycopg.connect(url, autocommit=True) as conn:
        job = admin.find_task(conn, id=task_id)
    assert job is not None
    return job


def ack_sync(url: str, job: Job, outcome: str, result: Any = None, worker: str = W) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        assert job.lock_at is not None
        return ack.ack(
            conn,
            outcome=outcome,
            result=result if result is not None else {"Ok": None},
            id=job.id,
            queue=job.job_type,
            worker_id=worker,
            lock_at=job.lock_at,
            attempts=job.attempts,
            lease_token=None,
        )


def claimed_task(url: str, *, max_attempts: int = 5) -> tuple[Job, str]:
    """One task claimed by worker W (registered with the returned lease token)."""
    token = register(url)
    seed(url, T(max_attempts=max_attempts))
    (job,) = claim(url)
    return job, token


def age_worker(url: str, worker: str = W, queue: str = Q) -> None:
    sql(
        url,
        "UPDATE apalis.workers SET last_seen = now() - interval '1 hour'"
        " WHERE id = %s AND worker_type = %s",
        (worker, queue),
    )


def statement_names() -> list[tuple[str, str]]:
    """(file stem, statement name) of every ``-- name:`` header in queries/."""
    found = []
    for fname in sorted(os.listdir(QUERIES)):
        if fname.endswith(".sql"):
            with open(os.path.join(QUERIES, fname), encoding="utf-8") as f:
                for m in re.finditer(r"^-- name: (\w+) :\w+", f.read(), re.MULTILINE):
                    found.append((fname[:-4], m.group(1)))
    return found


# --- the generated layer as a whole --------------------------------------------------------


def test_every_statement_has_sync_and_async_functions_with_the_same_parameters() -> None:
    names = statement_names()
    assert len(names) >= 28
    for module, name in names:
        sync_fn = getattr(importlib.import_module(f"apalis_generated.{module}"), name)
        async_fn = getattr(importlib.import_module(f"apalis_generated.{module}_async"), name)
        assert not inspect.iscoroutinefunction(sync_fn)
        assert inspect.iscoroutinefunction(async_fn)
        sync_sig, async_sig = inspect.signature(sync_fn), inspect.signature(async_fn)
        assert list(sync_sig.parameters.values())[1:] == list(async_sig.parameters.values())[1:]
        assert sync_sig.return_annotation == async_sig.return_annotation


def test_every_statement_is_exercised_by_this_module() -> None:
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    # Every generated call here is spelled g("file", "name", ...) or
    # call(flavor, "file", "name", ...).
    called = set(re.findall(r'(?:\bg|\bcall)\(\s*(?:flavor,\s*)?"(\w+)",\s*"(\w+)"', source))
    missing = [f"{m}.{n}" for m, n in statement_names() if (m, n) not in called]
    assert missing == []


def test_generated_calls_leave_the_transaction_to_the_caller(
    flavor: Flavor, migrated_db: str
) -> None:
    with Gen(flavor, migrated_db, autocommit=False) as g:
        g("push", "push_tasks", **push_args(Q, [T(id="A")]))
        assert g("admin", "find_task", id="A") is not None
        assert sql(migrated_db, "SELECT id FROM apalis.jobs") == []
        g.rollback()
        assert g("admin", "find_task", id="A") is None


# --- push ----------------------------------------------------------------------------------


def test_push_tasks_inserts_pending_rows_with_the_given_fields(
    flavor: Flavor, migrated_db: str
) -> None:
    run_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    task = T(payload=b"\x00\x01raw", max_attempts=3, run_at=run_at, priority=7, metadata='{"a": 1}')
    assert call(flavor, "push", "push_tasks", migrated_db, **push_args(Q, [task, T()])) == 2
    job = find(migrated_db, task.id)
    assert (job.job, job.job_type, job.status, job.attempts, job.max_attempts) == (
        b"\x00\x01raw",
        Q,
        "Pending",
        0,
        3,
    )
    assert (job.run_at, job.priority, job.metadata, job.idempotency_key) == (
        run_at,
        7,
        {"a": 1},
        None,
    )
    assert (job.last_result, job.lock_at, job.lock_by, job.done_at) == (None, None, None, None)


def test_push_tasks_with_a_colliding_key_fails_and_inserts_nothing(
    flavor: Flavor, migrated_db: str
) -> None:
    seed(migrated_db, T(id="OLD", key="k1"))
    batch = [T(id="A", key="k1"), T(id="B", key="k2"), T(id="C")]
    with pytest.raises(psycopg.errors.UniqueViolation):
        call(flavor, "push", "push_tasks", migrated_db, **push_args(Q, batch))
    assert sql(migrated_db, "SELECT id FROM apalis.jobs ORDER BY id") == [("OLD",)]


def one_task_args(task: T, queue: str = Q) -> dict[str, object]:
    return {
        "job": task.payload,
        "id": task.id,
        "queue": queue,
        "max_attempts": task.max_attempts,
        "run_at": task.run_at,
        "priority": task.priority,
        "metadata": task.metadata,
        "idempotency_key": task.key,
    }


def test_push_task_inserts_one_pending_row_and_counts_it(flavor: Flavor, migrated_db: str) -> None:
    run_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    task = T(payload=b"{}", max_attempts=2, run_at=run_at, priority=4, metadata='{"n": 7}')
    assert call(flavor, "push", "push_task", migrated_db, **one_task_args(task)) == 1
    job = find(migrated_db, task.id)
    assert (job.status, job.attempts, job.max_attempts, job.run_at, job.priority) == (
        "Pending",
        0,
        2,
        run_at,
        4,
    )
    assert job.metadata == {"n": 7}


def test_push_args_writes_a_rust_producers_defaults_and_counts_zero_for_a_taken_id(
    flavor: Flavor, migrated_db: str
) -> None:
    run_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    args = {"job": b"[1]", "id": "NEW", "queue": Q, "run_at": run_at}
    assert call(flavor, "push", "push_args", migrated_db, **args) == 1
    job = find(migrated_db, "NEW")
    assert (job.status, job.attempts, job.max_attempts, job.priority, job.metadata) == (
        "Pending",
        0,
        5,
        0,
        {},
    )
    assert (job.run_at, job.idempotency_key, job.job) == (run_at, None, b"[1]")
    assert call(flavor, "push", "push_args", migrated_db, **args) == 0


def test_push_task_with_a_colliding_key_counts_zero_and_inserts_nothing(
    flavor: Flavor, migrated_db: str
) -> None:
    seed(migrated_db, T(id="OLD", key="k1"))
    args = one_task_args(T(id="NEW", key="k1"))
    assert call(flavor, "push", "push_task", migrated_db, **args) == 0
    assert sql(migrated_db, "SELECT id FROM apalis.jobs") == [("OLD",)]


def test_push_task_with_a_taken_id_counts_zero_without_raising(
    flavor: Flavor, migrated_db: str
) -> None:
    seed(migrated_db, T(id="OLD"))
    assert call(flavor, "push", "push_task", migrated_db, **one_task_args(T(id="OLD"))) == 0
    assert sql(migrated_db, "SELECT count(*) FROM apalis.jobs") == [(1,)]


def test_find_conflicts_lists_the_holders_of_the_ids_and_the_queues_keys(
    flavor: Flavor, migrated_db: str
) -> None:
    seed(migrated_db, T(id="OLD", key="k1"), T(id="TAKEN"), T(id="UNRELATED", key="k3"))
    seed(migrated_db, T(id="ELSEWHERE", key="k2"), queue="other")
    rows = call(
        flavor,
        "push",
        "find_conflicts",
        migrated_db,
        ids=["TAKEN", "NEW"],
        queue=Q,
        keys=["k1", "k2"],
    )
    assert sorted((r.id, r.held_key) for r in rows) == [("OLD", "k1"), ("TAKEN", None)]


def test_push_tasks_uniform_gives_every_row_the_shared_columns(
    flavor: Flavor, migrated_db: str
) -> None:
    run_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    inserted = call(
        flavor,
        "push",
        "push_tasks_uniform",
        migrated_db,
        queue=Q,
        max_attempts=3,
        run_at=run_at,
        priority=2,
        metadata='{"n": 1}',
        jobs=[b'"a"', b'"b"'],
        ids=["A", "B"],
        idempotency_keys=[None, None],
    )
    assert inserted == 2
    rows = [find(migrated_db, i) for i in ("A", "B")]
    assert [(r.job, r.status, r.attempts, r.idempotency_key) for r in rows] == [
        (b'"a"', "Pending", 0, None),
        (b'"b"', "Pending", 0, None),
    ]
    assert {(r.max_attempts, r.run_at, r.priority, json.dumps(r.metadata)) for r in rows} == {
        (3, run_at, 2, '{"n": 1}')
    }


def test_push_tasks_idempotency_keys_are_per_queue(flavor: Flavor, migrated_db: str) -> None:
    seed(migrated_db, T(key="k1"), queue="other")
    assert call(flavor, "push", "push_tasks", migrated_db, **push_args(Q, [T(key="k1")])) == 1


def test_push_tasks_with_a_duplicate_id_fails_and_inserts_nothing(
    flavor: Flavor, migrated_db: str
) -> None:
    seed(migrated_db, T(id="A"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        call(flavor, "push", "push_tasks", migrated_db, **push_args(Q, [T(id="B"), T(id="A")]))
    assert sql(migrated_db, "SELECT id FROM apalis.jobs") == [("A",)]


def test_push_tasks_notifies_listeners_of_the_due_tasks_once_per_statement(
    flavor: Flavor, migrated_db: str
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as listener:
        listener.execute('LISTEN "apalis::job::insert"')
        later = now() + timedelta(hours=1)
        tasks = [T(id="A"), T(id="B"), T(id="LATER", run_at=later)]
        call(flavor, "push", "push_tasks", migrated_db, **push_args(Q, tasks))
        got = [json.loads(n.payload) for n in listener.notifies(timeout=1.0)]
    assert got == [{"job_type": Q, "ids": ["A", "B"]}]


# --- find / row types ------------------------------------------------------------------


def test_find_task_returns_a_job_model_with_python_types(flavor: Flavor, migrated_db: str) -> None:
    job, _ = claimed_task(migrated_db)
    assert ack_sync(migrated_db, job, "Done", {"Ok": {"x": [1, 2]}}) == 1
    seed(migrated_db, T(id="M", metadata='{"trace": "abc"}'))
    done = call(flavor, "admin", "find_task", migrated_db, id=job.id)
    assert type(done) is Job
    assert type(done.job) is bytes
    assert done.last_result == {"Ok": {"x": [1, 2]}}
    for ts in (done.run_at, done.lock_at, done.done_at):
        assert isinstance(ts, datetime)
        assert ts.utcoffset() is not None
    assert isinstance(done.attempts, int)
    assert call(flavor, "admin", "find_task", migrated_db, id="M").metadata == {"trace": "abc"}


def test_find_task_of_an_unknown_id_returns_none(flavor: Flavor, migrated_db: str) -> None:
    assert call(flavor, "admin", "find_task", migrated_db, id="NOPE") is None


def test_rows_are_immutable(flavor: Flavor, migrated_db: str) -> None:
    (task_id,) = seed(migrated_db, T())
    job = call(flavor, "admin", "find_task", migrated_db, id=task_id)
    with pytest.raises(pydantic.ValidationError):
        job.status = "Done"


# --- claim ---------------------------------------------------------------------------------


def ordered_tasks() -> tuple[list[T], list[str]]:
    """Tasks pushed out of order, and their claim order (priority DESC, run_at, id)."""
    early = now() - timedelta(minutes=10)
    tasks = [
        T(id="A", priority=0, run_at=early),
        T(id="B", priority=5, run_at=now() - timedelta(minutes=1)),
        T(id="C", priority=5, run_at=now() - timedelta(minutes=5)),
        T(id="0", priority=0, run_at=early),
        T(id="E", priority=1, run_at=now() - timedelta(minutes=1)),
    ]
    return tasks, ["C", "B", "E", "0", "A"]


def test_sqlc_rejected_claim_statements_generate_and_run(flavor: Flavor, migrated_db: str) -> None:
    # The two statements sqlc 1.31 rejects ("column reference is ambiguous"/"not found"):
    # a claim CTE with UPDATE ... FROM next_jobs ... RETURNING and an outer ORDER BY priority.
    for stmt in (lock.CLAIM_NEXT_SQL, lock.CLAIM_BY_IDS_SQL):
        assert "FROM next_jobs" in stmt
        assert "RETURNING j.*" in stmt
        assert stmt.rstrip().endswith("ORDER BY priority DESC, run_at ASC, id")
    register(migrated_db)
    seed(migrated_db, T(id="X", priority=1), T(id="Y", priority=2), T(id="Z"))
    by_ids = call(
        flavor,
        "lock",
        "claim_by_ids",
        migrated_db,
        ids=["X", "Z"],
        queue=Q,
        batch=5,
        worker_id=W,
        lease_token=None,
    )
    assert [j.id for j in by_ids] == ["X", "Z"]
    nxt = call(
        flavor, "lock", "claim_next", migrated_db, queue=Q, batch=5, worker_id=W, lease_token=None
    )
    assert [j.id for j in nxt] == ["Y"]
    assert all(type(j) is Job for j in [*by_ids, *nxt])


def test_claim_next_returns_tasks_by_priority_desc_then_run_at_then_id(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    tasks, order = ordered_tasks()
    seed(migrated_db, *tasks)
    jobs = call(
        flavor, "lock", "claim_next", migrated_db, queue=Q, batch=10, worker_id=W, lease_token=None
    )
    assert [j.id for j in jobs] == order


def test_claim_next_with_a_small_batch_takes_the_first_tasks_in_claim_order(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    tasks, order = ordered_tasks()
    seed(migrated_db, *tasks)
    jobs = call(
        flavor, "lock", "claim_next", migrated_db, queue=Q, batch=2, worker_id=W, lease_token=None
    )
    assert [j.id for j in jobs] == order[:2]
    pending = sql(migrated_db, "SELECT id FROM apalis.jobs WHERE status = 'Pending' ORDER BY id")
    assert [r[0] for r in pending] == sorted(order[2:])


def test_claim_next_moves_straight_to_running_with_whole_second_lock_and_no_done_at(
    flavor: Flavor, migrated_db: str
) -> None:
    # A Failed task carries done_at from its ack; claiming it again must clear it.
    job, _ = claimed_task(migrated_db)
    assert ack_sync(migrated_db, job, "Failed", {"Err": "boom"}) == 1
    assert find(migrated_db, job.id).done_at is not None
    (again,) = call(
        flavor, "lock", "claim_next", migrated_db, queue=Q, batch=10, worker_id=W, lease_token=None
    )
    assert (again.id, again.status, again.lock_by, again.done_at) == (job.id, "Running", W, None)
    assert again.lock_at is not None
    assert again.lock_at.microsecond == 0
    assert abs(again.lock_at - now()) < timedelta(seconds=30)
    assert find(migrated_db, job.id) == again


def _not_due(url: str, task_id: str) -> None:
    sql(url, "UPDATE apalis.jobs SET run_at = now() + interval '1 hour' WHERE id = %s", (task_id,))


def _exhausted_pending(url: str, task_id: str) -> None:
    sql(url, "UPDATE apalis.jobs SET attempts = max_attempts WHERE id = %s", (task_id,))


def _exhausted_failed(url: str, task_id: str) -> None:
    sql(
        url,
        "UPDATE apalis.jobs SET status = 'Failed', attempts = max_attempts, done_at = now()"
        " WHERE id = %s",
        (task_id,),
    )


def _other_queue(url: str, task_id: str) -> None:
    sql(url, "UPDATE apalis.jobs SET job_type = 'other' WHERE id = %s", (task_id,))


def _done(url: str, task_id: str) -> None:
    sql(url, "UPDATE apalis.jobs SET status = 'Done', done_at = now() WHERE id = %s", (task_id,))


def _killed(url: str, task_id: str) -> None:
    sql(url, "UPDATE apalis.jobs SET status = 'Killed', done_at = now() WHERE id = %s", (task_id,))


def _held_by_another_worker(url: str, task_id: str) -> None:
    register(url, "w2")
    assert [j.id for j in claim(url, "w2")] == [task_id]


UNCLAIMABLE: dict[str, Callable[[str, str], None]] = {
    "not_yet_due": _not_due,
    "exhausted_pending": _exhausted_pending,
    "exhausted_failed": _exhausted_failed,
    "other_queue": _other_queue,
    "done": _done,
    "killed": _killed,
    "held_by_another_worker": _held_by_another_worker,
}


@pytest.mark.parametrize("state", list(UNCLAIMABLE))
def test_claim_next_leaves_unclaimable_tasks_alone(
    flavor: Flavor, migrated_db: str, state: str
) -> None:
    register(migrated_db)
    (task_id,) = seed(migrated_db, T())
    UNCLAIMABLE[state](migrated_db, task_id)
    before = find(migrated_db, task_id)
    assert (
        call(
            flavor,
            "lock",
            "claim_next",
            migrated_db,
            queue=Q,
            batch=10,
            worker_id=W,
            lease_token=None,
        )
        == []
    )
    assert find(migrated_db, task_id) == before


def test_claim_next_skips_rows_locked_by_another_transaction(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    seed(migrated_db, T(id="A", priority=9), T(id="B"))
    # A lock_timeout turns a wrongly blocking claim into an error instead of a hang.
    url = make_conninfo(migrated_db, options="-c lock_timeout=5000")
    with psycopg.connect(migrated_db) as holder:
        holder.execute("SELECT 1 FROM apalis.jobs WHERE id = 'A' FOR UPDATE")
        jobs = call(
            flavor, "lock", "claim_next", url, queue=Q, batch=10, worker_id=W, lease_token=None
        )
        assert [j.id for j in jobs] == ["B"]
        holder.rollback()
    assert find(migrated_db, "A").status == "Pending"


def test_claim_next_by_an_unregistered_worker_claims_nothing(
    flavor: Flavor, migrated_db: str
) -> None:
    (task_id,) = seed(migrated_db, T())
    args = {"queue": Q, "batch": 10, "worker_id": "ghost", "lease_token": None}
    assert call(flavor, "lock", "claim_next", migrated_db, **args) == []
    assert find(migrated_db, task_id).status == "Pending"


def test_claim_next_with_a_replaced_lease_token_claims_nothing(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    (task_id,) = seed(migrated_db, T())
    args = {"queue": Q, "batch": 10, "worker_id": W, "lease_token": "NOT-OURS"}
    assert call(flavor, "lock", "claim_next", migrated_db, **args) == []
    assert find(migrated_db, task_id).status == "Pending"


def test_claim_next_waits_for_a_takeover_holding_the_worker_row(migrated_db: str) -> None:
    # The worker guard: a claim takes the worker row FOR KEY SHARE, so a takeover or
    # release holding it FOR UPDATE orders the claim after it.
    token = register(migrated_db)
    seed(migrated_db, T())
    with psycopg.connect(migrated_db) as holder:
        holder.execute("SELECT 1 FROM apalis.workers WHERE id = %s FOR UPDATE", (W,))
        with psycopg.connect(migrated_db, autocommit=True) as probe:
            probe.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                lock.claim_next(probe, queue=Q, batch=1, worker_id=W, lease_token=token)
        holder.rollback()


# --- claim_by_ids --------------------------------------------------------------------------


def test_claim_by_ids_claims_only_listed_claimable_tasks_in_claim_order(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    seed(migrated_db, T(id="A"), T(id="B", priority=3), T(id="C"), T(id="D"))
    jobs = call(
        flavor,
        "lock",
        "claim_by_ids",
        migrated_db,
        ids=["A", "B", "D"],
        queue=Q,
        batch=10,
        worker_id=W,
        lease_token=None,
    )
    assert [j.id for j in jobs] == ["B", "A", "D"]
    assert {j.status for j in jobs} == {"Running"}
    assert find(migrated_db, "C").status == "Pending"


def test_claim_by_ids_ignores_unknown_taken_not_due_and_foreign_ids(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    register(migrated_db, "w2")
    seed(migrated_db, T(id="TAKEN"), T(id="LATER", run_at=now() + timedelta(hours=1)))
    assert [j.id for j in claim(migrated_db, "w2")] == ["TAKEN"]
    seed(migrated_db, T(id="OK"))
    seed(migrated_db, T(id="FOREIGN"), queue="other")
    ids = ["OK", "TAKEN", "LATER", "FOREIGN", "UNKNOWN"]
    jobs = call(
        flavor,
        "lock",
        "claim_by_ids",
        migrated_db,
        ids=ids,
        queue=Q,
        batch=10,
        worker_id=W,
        lease_token=None,
    )
    assert [j.id for j in jobs] == ["OK"]
    assert find(migrated_db, "TAKEN").lock_by == "w2"


def test_claim_by_ids_respects_the_batch_limit(flavor: Flavor, migrated_db: str) -> None:
    register(migrated_db)
    seed(migrated_db, T(id="A"), T(id="B"), T(id="C"))
    jobs = call(
        flavor,
        "lock",
        "claim_by_ids",
        migrated_db,
        ids=["C", "B", "A"],
        queue=Q,
        batch=2,
        worker_id=W,
        lease_token=None,
    )
    assert [j.id for j in jobs] == ["A", "B"]


# --- lock_task -----------------------------------------------------------------------------


def test_lock_task_locks_a_pending_task_to_running(flavor: Flavor, migrated_db: str) -> None:
    register(migrated_db)
    (task_id,) = seed(migrated_db, T())
    job = call(
        flavor, "lock", "lock_task", migrated_db, id=task_id, queue=Q, worker_id=W, lease_token=None
    )
    assert type(job) is Job
    assert (job.status, job.lock_by, job.done_at) == ("Running", W, None)
    assert job.lock_at is not None
    assert job.lock_at.microsecond == 0


def test_lock_task_is_idempotent_for_the_same_worker_and_keeps_lock_at(
    flavor: Flavor, migrated_db: str
) -> None:
    job, _ = claimed_task(migrated_db)
    # An older lock_at than "now truncated" proves the second lock did not rewrite it.
    old = sql(
        migrated_db,
        "UPDATE apalis.jobs SET lock_at = date_trunc('second', now()) - interval '1 hour'"
        " WHERE id = %s RETURNING lock_at",
        (job.id,),
    )[0][0]
    again = call(
        flavor, "lock", "lock_task", migrated_db, id=job.id, queue=Q, worker_id=W, lease_token=None
    )
    assert (again.status, again.lock_by, again.lock_at, again.attempts) == ("Running", W, old, 0)


def test_lock_task_refuses_a_task_held_by_another_worker(flavor: Flavor, migrated_db: str) -> None:
    job, _ = claimed_task(migrated_db)
    register(migrated_db, "w2")
    before = find(migrated_db, job.id)
    assert (
        call(
            flavor,
            "lock",
            "lock_task",
            migrated_db,
            id=job.id,
            queue=Q,
            worker_id="w2",
            lease_token=None,
        )
        is None
    )
    assert find(migrated_db, job.id) == before


@pytest.mark.parametrize(
    "state", ["done", "killed", "exhausted_pending", "exhausted_failed", "other_queue"]
)
def test_lock_task_refuses_finished_exhausted_or_foreign_tasks(
    flavor: Flavor, migrated_db: str, state: str
) -> None:
    register(migrated_db)
    (task_id,) = seed(migrated_db, T())
    UNCLAIMABLE[state](migrated_db, task_id)
    before = find(migrated_db, task_id)
    assert (
        call(
            flavor,
            "lock",
            "lock_task",
            migrated_db,
            id=task_id,
            queue=Q,
            worker_id=W,
            lease_token=None,
        )
        is None
    )
    assert find(migrated_db, task_id) == before


def test_lock_task_leaves_a_task_that_is_not_yet_due(flavor: Flavor, migrated_db: str) -> None:
    register(migrated_db)
    (task_id,) = seed(migrated_db, T(run_at=now() + timedelta(hours=1)))
    job = call(
        flavor, "lock", "lock_task", migrated_db, id=task_id, queue=Q, worker_id=W, lease_token=None
    )
    assert job is None
    assert find(migrated_db, task_id).status == "Pending"


# --- ack -----------------------------------------------------------------------------------


def ack_args(job: Job, token: str | None, **over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "outcome": "Done",
        "result": {"Ok": 1},
        "id": job.id,
        "queue": job.job_type,
        "worker_id": W,
        "lock_at": job.lock_at,
        "attempts": job.attempts,
        "lease_token": token,
    }
    args.update(over)
    return args


def test_ack_done_records_result_attempt_and_done_at(flavor: Flavor, migrated_db: str) -> None:
    job, token = claimed_task(migrated_db)
    result = {"Ok": {"sent": True}}
    assert call(flavor, "ack", "ack", migrated_db, **ack_args(job, token, result=result)) == 1
    done = find(migrated_db, job.id)
    assert (done.status, done.attempts, done.last_result) == ("Done", 1, result)
    assert done.done_at is not None


def test_ack_failed_with_attempts_left_is_failed_and_claimable_again(
    flavor: Flavor, migrated_db: str
) -> None:
    job, token = claimed_task(migrated_db, max_attempts=2)
    args = ack_args(job, token, outcome="Failed", result={"Err": "boom"})
    assert call(flavor, "ack", "ack", migrated_db, **args) == 1
    failed = find(migrated_db, job.id)
    assert (failed.status, failed.attempts, failed.last_result) == ("Failed", 1, {"Err": "boom"})
    assert [j.id for j in claim(migrated_db)] == [job.id]


def test_ack_failed_at_the_attempt_limit_is_killed(flavor: Flavor, migrated_db: str) -> None:
    job, token = claimed_task(migrated_db, max_attempts=1)
    args = ack_args(job, token, outcome="Failed", result={"Err": "boom"})
    assert call(flavor, "ack", "ack", migrated_db, **args) == 1
    killed = find(migrated_db, job.id)
    assert (killed.status, killed.attempts, killed.last_result) == ("Killed", 1, {"Err": "boom"})


def test_ack_killed_is_killed_with_attempts_left(flavor: Flavor, migrated_db: str) -> None:
    job, token = claimed_task(migrated_db, max_attempts=5)
    args = ack_args(job, token, outcome="Killed", result={"Err": "abort"})
    assert call(flavor, "ack", "ack", migrated_db, **args) == 1
    killed = find(migrated_db, job.id)
    assert (killed.status, killed.attempts) == ("Killed", 1)
    assert claim(migrated_db) == []


STALE_ACKS: dict[str, dict[str, Any]] = {
    "wrong_lock_at": {"lock_at_shift": timedelta(seconds=-1)},
    "wrong_attempts": {"attempts": 1},
    "lease_token_mismatch": {"lease_token": "NOT-THE-TOKEN"},
    "another_worker": {"worker_id": "w2"},
    "another_queue": {"queue": "other"},
}


@pytest.mark.parametrize("cause", list(STALE_ACKS))
def test_stale_ack_updates_nothing_and_leaves_the_row_unchanged(
    flavor: Flavor, migrated_db: str, cause: str
) -> None:
    job, token = claimed_task(migrated_db)
    over = dict(STALE_ACKS[cause])
    shift = over.pop("lock_at_shift", None)
    if shift is not None:
        assert job.lock_at is not None
        over["lock_at"] = job.lock_at + shift
    before = find(migrated_db, job.id)
    assert call(flavor, "ack", "ack", migrated_db, **ack_args(job, token, **over)) == 0
    assert find(migrated_db, job.id) == before


def test_second_ack_of_the_same_claim_is_stale(flavor: Flavor, migrated_db: str) -> None:
    job, token = claimed_task(migrated_db)
    assert call(flavor, "ack", "ack", migrated_db, **ack_args(job, token)) == 1
    after_first = find(migrated_db, job.id)
    args = ack_args(job, token, outcome="Failed", result={"Err": "late"})
    assert call(flavor, "ack", "ack", migrated_db, **args) == 0
    assert find(migrated_db, job.id) == after_first


def test_ack_accepts_a_queued_claim(flavor: Flavor, migrated_db: str) -> None:
    # apalis.get_jobs (a Rust worker's buffer) claims to Queued; the ack takes it from there.
    token = register(migrated_db)
    (task_id,) = seed(migrated_db, T())
    assert sql(migrated_db, "SELECT status FROM apalis.get_jobs(%s, %s, 1)", (W, Q)) == [
        ("Queued",)
    ]
    job = find(migrated_db, task_id)
    assert call(flavor, "ack", "ack", migrated_db, **ack_args(job, token)) == 1
    done = find(migrated_db, task_id)
    assert (done.status, done.attempts, done.lock_by) == ("Done", 1, W)


def test_ack_without_a_lease_token_skips_the_lease_check(flavor: Flavor, migrated_db: str) -> None:
    job, _ = claimed_task(migrated_db)
    assert call(flavor, "ack", "ack", migrated_db, **ack_args(job, None)) == 1
    assert find(migrated_db, job.id).status == "Done"


# --- ack_batch -----------------------------------------------------------------------------


def batch_args(jobs: list[Job], outcomes: list[str], token: str | None) -> dict[str, Any]:
    return {
        "ids": [j.id for j in jobs],
        "attempts": [j.attempts for j in jobs],
        "lock_ats": [j.lock_at for j in jobs],
        "outcomes": outcomes,
        "results": ['{"Ok": null}' if o == "Done" else '{"Err": "e"}' for o in outcomes],
        "delays": [0.0] * len(jobs),
        "queue": Q,
        "worker_id": W,
        "lease_token": token,
    }


def test_ack_batch_returns_only_the_fresh_ids(flavor: Flavor, migrated_db: str) -> None:
    token = register(migrated_db)
    seed(migrated_db, T(id="A"), T(id="B"), T(id="C"))
    a, b, c = claim(migrated_db)
    assert b.lock_at is not None
    stale_b = b.model_copy(update={"lock_at": b.lock_at - timedelta(seconds=1)})
    stale_c = c.model_copy(update={"attempts": 3})
    before = [find(migrated_db, "B"), find(migrated_db, "C")]
    args = batch_args([a, stale_b, stale_c], ["Done", "Done", "Done"], token)
    rows = call(flavor, "ack", "ack_batch", migrated_db, **args)
    assert [(r.id, r.status, r.run_at) for r in rows] == [("A", "Done", a.run_at)]
    assert type(rows[0]) is AckBatchRow
    assert [find(migrated_db, "B"), find(migrated_db, "C")] == before


def test_ack_batch_applies_each_rows_outcome_and_the_attempt_limit(
    flavor: Flavor, migrated_db: str
) -> None:
    token = register(migrated_db)
    seed(migrated_db, T(id="A"), T(id="B", max_attempts=1), T(id="C"), T(id="D"))
    jobs = claim(migrated_db)
    args = batch_args(jobs, ["Done", "Failed", "Failed", "Killed"], token)
    rows = call(flavor, "ack", "ack_batch", migrated_db, **args)
    assert sorted((r.id, r.status) for r in rows) == [
        ("A", "Done"),
        ("B", "Killed"),
        ("C", "Failed"),
        ("D", "Killed"),
    ]
    assert find(migrated_db, "C").last_result == {"Err": "e"}
    assert find(migrated_db, "C").attempts == 1


def test_ack_batch_with_a_lease_token_mismatch_acks_nothing(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    seed(migrated_db, T(id="A"), T(id="B"))
    jobs = claim(migrated_db)
    args = batch_args(jobs, ["Done", "Done"], "NOT-THE-TOKEN")
    assert call(flavor, "ack", "ack_batch", migrated_db, **args) == []
    assert {find(migrated_db, j.id).status for j in jobs} == {"Running"}


def test_ack_batch_without_a_lease_token_skips_the_lease_check(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    seed(migrated_db, T(id="A"))
    args = batch_args(claim(migrated_db), ["Done"], None)
    rows = call(flavor, "ack", "ack_batch", migrated_db, **args)
    assert [(r.id, r.status) for r in rows] == [("A", "Done")]


# --- registration: try_register_lock / lock_registration / upsert_worker / untokened ------


def upsert_args(token: str, worker: str = W) -> dict[str, Any]:
    return {
        "worker_id": worker,
        "queue": Q,
        "storage_name": "PostgresStorage",
        "layers": "retry",
        "lease_token": token,
    }


def decide_args(token: str, worker: str = W, threshold: float = 300.0) -> dict[str, Any]:
    return {
        "worker_id": worker,
        "queue": Q,
        "lease_token": token,
        "orphan_threshold_secs": threshold,
    }


def worker_row(url: str, worker: str = W) -> tuple[Any, ...]:
    return sql(
        url,
        "SELECT lease_token, last_seen, started_at FROM apalis.workers"
        " WHERE id = %s AND worker_type = %s",
        (worker, Q),
    )[0]


def test_upsert_worker_creates_a_row_with_the_lease_and_times(
    flavor: Flavor, migrated_db: str
) -> None:
    row = call(flavor, "keep_alive", "upsert_worker", migrated_db, **upsert_args("T1"))
    assert type(row) is Worker
    assert (row.id, row.worker_type, row.storage_name, row.layers, row.lease_token) == (
        W,
        Q,
        "PostgresStorage",
        "retry",
        "T1",
    )
    assert row.started_at is not None
    assert row.last_seen.utcoffset() is not None
    assert abs(row.last_seen - now()) < timedelta(seconds=30)


def test_upsert_worker_over_an_existing_row_keeps_started_at(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    sql(migrated_db, "UPDATE apalis.workers SET started_at = '2020-01-01Z'")
    row = call(flavor, "keep_alive", "upsert_worker", migrated_db, **upsert_args("T2"))
    assert row.lease_token == "T2"
    assert row.started_at == datetime(2020, 1, 1, tzinfo=timezone.utc)


def test_try_register_lock_is_false_while_another_session_registers_the_id(
    flavor: Flavor, migrated_db: str
) -> None:
    with psycopg.connect(migrated_db) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", (W, Q))
        row = call(flavor, "keep_alive", "try_register_lock", migrated_db, worker_id=W, queue=Q)
        assert row.got is False
        holder.rollback()
    row = call(flavor, "keep_alive", "try_register_lock", migrated_db, worker_id=W, queue=Q)
    assert row.got is True


def test_lock_registration_of_an_unknown_id_returns_none(flavor: Flavor, migrated_db: str) -> None:
    assert call(flavor, "keep_alive", "lock_registration", migrated_db, **decide_args("T")) is None


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("ours", (True, False)),
        ("fresh_other", (False, True)),
        ("fresh_untokened", (False, True)),
        ("stale_other", (True, True)),
        ("released", (True, True)),
    ],
)
def test_lock_registration_allows_only_our_token_or_a_stale_row(
    flavor: Flavor, migrated_db: str, state: str, expected: tuple[bool, bool]
) -> None:
    token = register(migrated_db)
    if state == "fresh_untokened":
        sql(migrated_db, "UPDATE apalis.workers SET lease_token = NULL")
    if state == "stale_other":
        age_worker(migrated_db)
    if state == "released":
        sql(
            migrated_db, "UPDATE apalis.workers SET lease_token = NULL, last_seen = to_timestamp(0)"
        )
    mine = token if state == "ours" else "NEW"
    row = call(flavor, "keep_alive", "lock_registration", migrated_db, **decide_args(mine))
    assert type(row) is LockRegistrationRow
    assert (row.allowed, row.taken_over) == expected


def test_register_untokened_inserts_a_row_without_a_token(flavor: Flavor, migrated_db: str) -> None:
    args = {"worker_id": W, "queue": Q, "storage_name": "PostgresStorage", "layers": "admin"}
    row = call(flavor, "keep_alive", "register_untokened", migrated_db, **args)
    assert (row.id, row.lease_token, row.layers) == (W, None, "admin")


def test_register_untokened_refreshes_a_token_free_row_and_leaves_a_tokened_one(
    flavor: Flavor, migrated_db: str
) -> None:
    args = {"worker_id": W, "queue": Q, "storage_name": "PostgresStorage", "layers": "admin"}
    call(flavor, "keep_alive", "register_untokened", migrated_db, **args)
    age_worker(migrated_db)
    assert call(flavor, "keep_alive", "register_untokened", migrated_db, **args) is not None
    assert abs(worker_row(migrated_db)[1] - now()) < timedelta(seconds=30)
    register(migrated_db, "w2")
    before = worker_row(migrated_db, "w2")
    args["worker_id"] = "w2"
    assert call(flavor, "keep_alive", "register_untokened", migrated_db, **args) is None
    assert worker_row(migrated_db, "w2") == before


# --- heartbeat / lock_own_worker / clear_registration -------------------------------------


def test_heartbeat_refreshes_last_seen(flavor: Flavor, migrated_db: str) -> None:
    token = register(migrated_db)
    age_worker(migrated_db)
    n = call(
        flavor, "keep_alive", "heartbeat", migrated_db, worker_id=W, queue=Q, lease_token=token
    )
    assert n == 1
    assert abs(worker_row(migrated_db)[1] - now()) < timedelta(seconds=30)


def test_heartbeat_with_a_wrong_token_updates_nothing(flavor: Flavor, migrated_db: str) -> None:
    register(migrated_db)
    age_worker(migrated_db)
    before = worker_row(migrated_db)
    n = call(flavor, "keep_alive", "heartbeat", migrated_db, worker_id=W, queue=Q, lease_token="X")
    assert n == 0
    assert worker_row(migrated_db) == before


def test_lock_own_worker_finds_only_our_lease(flavor: Flavor, migrated_db: str) -> None:
    token = register(migrated_db)
    args = {"worker_id": W, "queue": Q}
    assert call(flavor, "keep_alive", "lock_own_worker", migrated_db, **args, lease_token=token)
    assert (
        call(flavor, "keep_alive", "lock_own_worker", migrated_db, **args, lease_token="X") is None
    )


def test_clear_registration_clears_the_lease_sets_the_epoch_and_keeps_the_row(
    flavor: Flavor, migrated_db: str
) -> None:
    token = register(migrated_db)
    args = {"worker_id": W, "queue": Q, "lease_token": token}
    assert call(flavor, "keep_alive", "clear_registration", migrated_db, **args) == 1
    lease_token, last_seen, _ = worker_row(migrated_db)
    assert (lease_token, last_seen) == (None, datetime(1970, 1, 1, tzinfo=timezone.utc))


def test_clear_registration_with_a_wrong_token_updates_nothing(
    flavor: Flavor, migrated_db: str
) -> None:
    token = register(migrated_db)
    args = {"worker_id": W, "queue": Q, "lease_token": "X"}
    assert call(flavor, "keep_alive", "clear_registration", migrated_db, **args) == 0
    assert worker_row(migrated_db)[0] == token


# --- lock_stale_workers / recover_tasks ---------------------------------------------------


def stale(flavor: Flavor, url: str) -> list[str]:
    rows = call(
        flavor, "reenqueue", "lock_stale_workers", url, queue=Q, orphan_threshold_secs=300.0
    )
    return [r.id for r in rows]


def recover(flavor: Flavor, url: str, **over: Any) -> Any:
    args: dict[str, Any] = {
        "skip_locked": True,
        "queue": Q,
        "workers": [W],
        "keep": [],
        "row_limit": 1000,
        "charge_queued": True,
        "message": HEARTBEAT_MESSAGE["Err"],
    }
    args.update(over)
    return call(flavor, "reenqueue", "recover_tasks", url, **args)


def test_lock_stale_workers_names_only_stale_workers_that_own_an_active_row(
    flavor: Flavor, migrated_db: str
) -> None:
    claimed_task(migrated_db)
    register(migrated_db, "idle")
    age_worker(migrated_db, "idle")
    assert stale(flavor, migrated_db) == []
    age_worker(migrated_db)
    assert stale(flavor, migrated_db) == [W]


def test_recover_tasks_returns_a_task_to_pending_with_the_owner_cleared(
    flavor: Flavor, migrated_db: str
) -> None:
    job, _ = claimed_task(migrated_db)
    rows = recover(flavor, migrated_db)
    assert rows == [RecoverTasksRow.model_construct(id=job.id, status="Pending", attempts=1)]
    assert type(rows[0]) is RecoverTasksRow
    back = find(migrated_db, job.id)
    assert (back.status, back.attempts) == ("Pending", 1)
    assert (back.lock_by, back.lock_at, back.done_at) == (None, None, None)
    assert back.last_result == HEARTBEAT_MESSAGE


def test_recover_tasks_keeps_an_existing_last_result(flavor: Flavor, migrated_db: str) -> None:
    job, _ = claimed_task(migrated_db)
    assert ack_sync(migrated_db, job, "Failed", {"Err": "first try"}) == 1
    assert [j.id for j in claim(migrated_db)] == [job.id]
    assert [r.status for r in recover(flavor, migrated_db)] == ["Pending"]
    back = find(migrated_db, job.id)
    assert (back.attempts, back.last_result) == (2, {"Err": "first try"})


def test_recover_tasks_kills_at_the_attempt_limit_and_clears_the_owner(
    flavor: Flavor, migrated_db: str
) -> None:
    job, _ = claimed_task(migrated_db, max_attempts=2)
    assert ack_sync(migrated_db, job, "Failed", {"Err": "first try"}) == 1
    assert [j.id for j in claim(migrated_db)] == [job.id]
    rows = recover(flavor, migrated_db)
    assert [(r.id, r.status, r.attempts) for r in rows] == [(job.id, "Killed", 2)]
    killed = find(migrated_db, job.id)
    assert (killed.status, killed.attempts, killed.last_result) == ("Killed", 2, HEARTBEAT_MESSAGE)
    assert (killed.lock_by, killed.lock_at) == (None, None)
    assert killed.done_at is not None
    assert claim(migrated_db) == []


def test_recover_tasks_without_charge_queued_returns_a_queued_row_unchanged_but_its_owner(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    (task_id,) = seed(migrated_db, T())
    assert sql(migrated_db, "SELECT status FROM apalis.get_jobs(%s, %s, 5)", (W, Q)) == [
        ("Queued",)
    ]
    rows = recover(flavor, migrated_db, charge_queued=False, message="released")
    assert [(r.id, r.status, r.attempts) for r in rows] == [(task_id, "Pending", 0)]
    back = find(migrated_db, task_id)
    assert (back.last_result, back.lock_by, back.lock_at) == (None, None, None)


def test_recover_tasks_with_charge_queued_charges_a_queued_row(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    seed(migrated_db, T())
    sql(migrated_db, "SELECT status FROM apalis.get_jobs(%s, %s, 5)", (W, Q))
    assert [(r.status, r.attempts) for r in recover(flavor, migrated_db)] == [("Pending", 1)]


def test_recover_tasks_caps_the_rows_and_spares_the_kept_ids(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    seed(migrated_db, T(id="A"), T(id="B"), T(id="C"))
    assert len(claim(migrated_db)) == 3
    assert [r.id for r in recover(flavor, migrated_db, row_limit=1, keep=["A"])] == ["B"]
    assert [r.id for r in recover(flavor, migrated_db, row_limit=None, keep=["A"])] == ["C"]
    assert find(migrated_db, "A").status == "Running"


def test_recover_tasks_skip_locked_passes_over_a_locked_row(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    seed(migrated_db, T(id="A"), T(id="B"))
    assert len(claim(migrated_db)) == 2
    with psycopg.connect(migrated_db) as holder:
        holder.execute("SELECT 1 FROM apalis.jobs WHERE id = 'A' FOR UPDATE")
        assert [r.id for r in recover(flavor, migrated_db)] == ["B"]
        holder.rollback()


def test_recover_tasks_leaves_other_queues_and_workers_alone(
    flavor: Flavor, migrated_db: str
) -> None:
    job, _ = claimed_task(migrated_db)
    before = find(migrated_db, job.id)
    assert recover(flavor, migrated_db, workers=["w2"]) == []
    assert recover(flavor, migrated_db, queue="other") == []
    assert find(migrated_db, job.id) == before


# --- admin: list / stats / snapshot / retry / kill -------------------------------------


def list_fixture(url: str) -> None:
    """Two done tasks (D1 before D2) and three unfinished ones (P2 and P3 share a run_at)."""
    base = now() - timedelta(hours=1)
    seed(
        url,
        T(id="D1"),
        T(id="D2"),
        T(id="P1", run_at=base),
        T(id="P2", run_at=base + timedelta(minutes=5)),
        T(id="P3", run_at=base + timedelta(minutes=5)),
    )
    seed(url, T(id="X1"), queue="other")
    sql(
        url,
        "UPDATE apalis.jobs SET status = 'Done', done_at = now() - interval '2 min'"
        " WHERE id = 'D1'",
    )
    sql(
        url,
        "UPDATE apalis.jobs SET status = 'Done', done_at = now() - interval '1 min'"
        " WHERE id = 'D2'",
    )


def test_list_tasks_puts_unfinished_first_then_newest(flavor: Flavor, migrated_db: str) -> None:
    list_fixture(migrated_db)
    jobs = call(
        flavor, "admin", "list_tasks", migrated_db, queue=Q, status=None, limit=100, offset=0
    )
    assert [j.id for j in jobs] == ["P3", "P2", "P1", "D2", "D1"]
    assert all(type(j) is Job for j in jobs)


def test_list_tasks_filters_by_status(flavor: Flavor, migrated_db: str) -> None:
    list_fixture(migrated_db)
    jobs = call(
        flavor, "admin", "list_tasks", migrated_db, queue=Q, status="Done", limit=100, offset=0
    )
    assert [j.id for j in jobs] == ["D2", "D1"]


def test_list_tasks_pages_with_limit_and_offset(flavor: Flavor, migrated_db: str) -> None:
    list_fixture(migrated_db)
    pages = [
        [
            j.id
            for j in call(
                flavor, "admin", "list_tasks", migrated_db, queue=Q, status=None, limit=2, offset=o
            )
        ]
        for o in (0, 2, 4)
    ]
    assert pages == [["P3", "P2"], ["P1", "D2"], ["D1"]]


def stats_fixture(url: str) -> datetime:
    """Queue q: 2 Pending, 1 Running, 1 Done, 1 Failed, 1 Killed; queue other: 1 Pending.
    Returns the run_at of the oldest Pending task of q."""
    token = register(url)
    oldest = now() - timedelta(hours=2)
    seed(url, T(id="P1", run_at=oldest), T(id="P2"))
    seed(url, *(T(id=i, priority=5) for i in ("R", "D", "F", "K")))
    seed(url, T(id="O"), queue="other")
    jobs = claim(url, batch=4)
    assert sorted(j.id for j in jobs) == ["D", "F", "K", "R"]
    by_id = {j.id: j for j in jobs}
    with psycopg.connect(url, autocommit=True) as conn:
        acked = ack.ack_batch(
            conn, **batch_args([by_id[i] for i in "DFK"], ["Done", "Failed", "Killed"], token)
        )
    assert len(acked) == 3
    return oldest


def test_queue_stats_counts_tasks_by_status_per_queue(flavor: Flavor, migrated_db: str) -> None:
    oldest = stats_fixture(migrated_db)
    rows = call(flavor, "admin", "queue_stats", migrated_db)
    assert all(type(r) is QueueStatsRow for r in rows)
    assert [r.model_dump() for r in rows] == [
        {
            "job_type": "other",
            "total": 1,
            "pending": 1,
            "queued": 0,
            "running": 0,
            "done": 0,
            "failed": 0,
            "killed": 0,
            "oldest_pending_run_at": rows[0].oldest_pending_run_at,
        },
        {
            "job_type": Q,
            "total": 6,
            "pending": 2,
            "queued": 0,
            "running": 1,
            "done": 1,
            "failed": 1,
            "killed": 1,
            "oldest_pending_run_at": oldest,
        },
    ]


def test_read_queue_stats_snapshot_before_any_refresh_fails(
    flavor: Flavor, migrated_db: str
) -> None:
    # The view is created WITH NO DATA: reading it needs one plain refresh first.
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        call(flavor, "admin", "read_queue_stats_snapshot", migrated_db)


def test_refresh_queue_stats_snapshot_then_read_reports_per_queue_counts(
    flavor: Flavor, migrated_db: str
) -> None:
    stats_fixture(migrated_db)
    with Gen(flavor, migrated_db) as g:
        assert g("admin", "refresh_queue_stats_snapshot") is None
        rows = g("admin", "read_queue_stats_snapshot")
    assert all(type(r) is ReadQueueStatsSnapshotRow for r in rows)
    assert [r.job_type for r in rows] == ["other", Q]
    q = rows[1]
    counts = (q.total_jobs, q.pending_jobs, q.running_jobs, q.done_jobs, q.failed_jobs)
    assert counts == (6, 2, 1, 1, 1)
    assert (q.killed_jobs, q.queued_jobs, q.active_jobs) == (1, 0, 3)
    assert q.snapshot_at is not None
    assert q.most_recent_done_at is not None


def test_refresh_queue_stats_snapshot_concurrently_updates_a_populated_snapshot(
    flavor: Flavor, migrated_db: str
) -> None:
    seed(migrated_db, T())
    with Gen(flavor, migrated_db) as g:
        g("admin", "refresh_queue_stats_snapshot")
        seed(migrated_db, T(), T())
        assert g("admin", "refresh_queue_stats_snapshot_concurrently") is None
        rows = g("admin", "read_queue_stats_snapshot")
    assert [(r.job_type, r.total_jobs) for r in rows] == [(Q, 3)]


def test_refresh_queue_stats_snapshot_concurrently_needs_a_populated_snapshot(
    flavor: Flavor, migrated_db: str
) -> None:
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        call(flavor, "admin", "refresh_queue_stats_snapshot_concurrently", migrated_db)


def test_retry_task_puts_a_killed_task_back_with_one_more_attempt(
    flavor: Flavor, migrated_db: str
) -> None:
    job, _ = claimed_task(migrated_db, max_attempts=1)
    assert ack_sync(migrated_db, job, "Failed", {"Err": "boom"}) == 1
    assert find(migrated_db, job.id).status == "Killed"
    back = call(flavor, "admin", "retry_task", migrated_db, id=job.id)
    assert type(back) is Job
    assert (back.status, back.attempts, back.max_attempts) == ("Pending", 1, 2)
    assert (back.lock_by, back.lock_at, back.done_at) == (None, None, None)
    assert [j.id for j in claim(migrated_db)] == [job.id]


def test_retry_task_keeps_max_attempts_when_attempts_are_left(
    flavor: Flavor, migrated_db: str
) -> None:
    job, _ = claimed_task(migrated_db, max_attempts=5)
    assert ack_sync(migrated_db, job, "Done") == 1
    back = call(flavor, "admin", "retry_task", migrated_db, id=job.id)
    assert (back.status, back.attempts, back.max_attempts) == ("Pending", 1, 5)


def test_retry_task_refuses_an_unfinished_task(flavor: Flavor, migrated_db: str) -> None:
    job, _ = claimed_task(migrated_db)
    (pending,) = seed(migrated_db, T())
    assert call(flavor, "admin", "retry_task", migrated_db, id=job.id) is None
    assert call(flavor, "admin", "retry_task", migrated_db, id=pending) is None
    assert find(migrated_db, job.id).status == "Running"


def test_kill_task_kills_an_unfinished_task_with_the_reason(
    flavor: Flavor, migrated_db: str
) -> None:
    (task_id,) = seed(migrated_db, T())
    killed = call(flavor, "admin", "kill_task", migrated_db, reason="operator", id=task_id)
    assert type(killed) is Job
    assert (killed.status, killed.last_result) == ("Killed", {"Err": "operator"})
    assert killed.done_at is not None
    assert claim(migrated_db) == []


def test_kill_task_makes_the_running_workers_ack_stale(flavor: Flavor, migrated_db: str) -> None:
    job, token = claimed_task(migrated_db)
    assert call(flavor, "admin", "kill_task", migrated_db, reason="stop", id=job.id) is not None
    assert call(flavor, "ack", "ack", migrated_db, **ack_args(job, token)) == 0
    assert find(migrated_db, job.id).status == "Killed"


def test_kill_task_refuses_a_finished_task(flavor: Flavor, migrated_db: str) -> None:
    job, _ = claimed_task(migrated_db)
    assert ack_sync(migrated_db, job, "Done", {"Ok": 1}) == 1
    before = find(migrated_db, job.id)
    assert call(flavor, "admin", "kill_task", migrated_db, reason="late", id=job.id) is None
    assert find(migrated_db, job.id) == before


def test_find_tasks_returns_the_existing_ones_in_id_order(flavor: Flavor, migrated_db: str) -> None:
    a, b = sorted(seed(migrated_db, T(), T()))
    rows = call(flavor, "admin", "find_tasks", migrated_db, ids=[b, str(ULID()), a])
    assert [r.id for r in rows] == [a, b] and all(type(r) is Job for r in rows)


def test_retry_tasks_retries_one_status_of_one_queue_and_clears_results(
    flavor: Flavor, migrated_db: str
) -> None:
    job, _ = claimed_task(migrated_db)
    assert ack_sync(migrated_db, job, "Done", {"Ok": 1}) == 1
    seed(migrated_db, T())
    assert call(flavor, "admin", "retry_tasks", migrated_db, queue=Q, status="Pending") == 0
    assert call(flavor, "admin", "retry_tasks", migrated_db, queue=Q, status="Done") == 1
    back = find(migrated_db, job.id)
    assert (back.status, back.last_result, back.lock_by) == ("Pending", None, None)


def test_kill_tasks_kills_one_unfinished_status_of_one_queue(
    flavor: Flavor, migrated_db: str
) -> None:
    ids = seed(migrated_db, T(), T())
    seed(migrated_db, T(), queue="other")
    assert (
        call(flavor, "admin", "kill_tasks", migrated_db, queue=Q, status="Pending", reason="x") == 2
    )
    assert [find(migrated_db, i).last_result for i in ids] == [{"Err": "x"}] * 2
    assert (
        call(flavor, "admin", "kill_tasks", migrated_db, queue=Q, status="Killed", reason="y") == 0
    )


# --- retention, workers, wait ------------------------------------------------------------


EPOCH = datetime(1, 1, 1, tzinfo=timezone.utc)


def test_retention_cutoff_is_the_server_clock_minus_the_window(
    flavor: Flavor, migrated_db: str
) -> None:
    row = call(flavor, "retention", "retention_cutoff", migrated_db, window_secs=3600.0)
    assert abs((now() - timedelta(hours=1) - row.cutoff).total_seconds()) < 60


def test_purge_batch_deletes_old_terminal_rows_oldest_first_up_to_the_batch(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    seed(migrated_db, T(), T(), T())
    jobs = claim(migrated_db)
    for age, job in zip((3, 2, 1), jobs, strict=True):  # hours since done
        assert ack_sync(migrated_db, job, "Done") == 1
        sql(migrated_db, "UPDATE apalis.jobs SET done_at = now() - make_interval(hours => %s)"
            " WHERE id = %s", (age, job.id))  # fmt: skip
    (pending,) = seed(migrated_db, T(run_at=now() - timedelta(hours=5)))
    cut = now() - timedelta(minutes=90)
    first = call(flavor, "retention", "purge_batch", migrated_db, queue=Q, after=EPOCH,
                 cutoff=cut, batch=1)  # fmt: skip
    assert first.deleted == 1 and first.last_at is not None
    left = {r[0] for r in sql(migrated_db, "SELECT id FROM apalis.jobs")}
    assert jobs[0].id not in left  # the oldest went first
    rest = call(flavor, "retention", "purge_batch", migrated_db, queue=Q, after=first.last_at,
                cutoff=cut, batch=10)  # fmt: skip
    assert rest.deleted == 1
    left = {r[0] for r in sql(migrated_db, "SELECT id FROM apalis.jobs")}
    assert left == {jobs[2].id, pending}


def test_purge_batch_undated_deletes_terminal_rows_without_done_at_by_run_at(
    flavor: Flavor, migrated_db: str
) -> None:
    (old, new) = seed(migrated_db, T(run_at=now() - timedelta(hours=3)), T())
    sql(migrated_db, "UPDATE apalis.jobs SET status = 'Killed', done_at = NULL")
    done = call(flavor, "retention", "purge_batch_undated", migrated_db, queue=Q, after=EPOCH,
                cutoff=now() - timedelta(hours=1), batch=10)  # fmt: skip
    assert done.deleted == 1 and done.last_at is not None
    assert [r[0] for r in sql(migrated_db, "SELECT id FROM apalis.jobs")] == [new]
    assert old not in {r[0] for r in sql(migrated_db, "SELECT id FROM apalis.jobs")}


def test_list_workers_and_prune_workers_batch(flavor: Flavor, migrated_db: str) -> None:
    register(migrated_db)
    register(migrated_db, worker="idle")
    age_worker(migrated_db)
    age_worker(migrated_db, worker="idle")
    seed(migrated_db, T())
    claim(migrated_db)  # W holds a task: it is named and kept
    rows = call(flavor, "workers", "list_workers", migrated_db, queue=Q)
    assert {(r.id, r.active_tasks, r.registered) for r in rows} == {(W, 1, True), ("idle", 0, True)}
    everyone = call(flavor, "workers", "list_workers", migrated_db, queue=None)
    assert [r.id for r in everyone] == [r.id for r in rows]  # seen_secs_ago moves on
    cut = now() - timedelta(minutes=30)
    assert call(flavor, "workers", "prune_workers_batch", migrated_db, queue=Q, cutoff=cut,
                batch=10) == 1  # fmt: skip
    assert [r[0] for r in sql(migrated_db, "SELECT id FROM apalis.workers")] == [W]


def test_poll_tasks_says_which_tasks_are_finished(flavor: Flavor, migrated_db: str) -> None:
    job, _ = claimed_task(migrated_db, max_attempts=1)
    assert ack_sync(migrated_db, job, "Failed", {"Err": "x"}) == 1  # Killed at the limit
    (pending,) = seed(migrated_db, T())
    rows = call(flavor, "wait", "poll_tasks", migrated_db, ids=[job.id, pending, str(ULID())])
    got = {r.id: (r.status, r.finished) for r in rows}
    assert got == {job.id: ("Killed", True), pending: ("Pending", False)}


# --- catalog ---------------------------------------------------------------------------------


def test_migration_locks_are_held_until_the_transaction_ends(
    flavor: Flavor, migrated_db: str
) -> None:
    key = 4242

    def others_get_them() -> tuple[bool, bool]:
        # The probing connection closes right away, which drops its locks again.
        ours, rusts = sql(
            migrated_db,
            "SELECT pg_try_advisory_lock(%s), "
            "pg_try_advisory_lock(hashtext('apalis_diesel_postgres'), hashtext('migrations'))",
            (key,),
        )[0]
        return bool(ours), bool(rusts)

    with Gen(flavor, migrated_db, autocommit=False) as g:
        assert g("catalog", "set_lock_timeout", timeout="5s") is None
        assert g("catalog", "lock_rust_migrations") is None
        assert g("catalog", "lock_schema", key=key) is None
        assert others_get_them() == (False, False)
        g.rollback()
        assert others_get_them() == (True, True)


def test_pin_search_path_lasts_until_the_transaction_ends(flavor: Flavor, migrated_db: str) -> None:
    with Gen(flavor, migrated_db, autocommit=False) as g:
        before = g.scalar("SHOW search_path")
        assert g("catalog", "pin_search_path") is None
        assert g.scalar("SHOW search_path") == "pg_catalog, pg_temp"
        g.rollback()
        assert g.scalar("SHOW search_path") == before != "pg_catalog, pg_temp"


def test_rust_journal_present_and_versions(flavor: Flavor, migrated_db: str) -> None:
    assert call(flavor, "catalog", "rust_journal_present", migrated_db).present is True
    versions = [r.version for r in call(flavor, "catalog", "rust_journal_versions", migrated_db)]
    assert (len(versions), versions[0], versions[-1]) == (14, "00000000000000", "20260914000000")
    sql(migrated_db, "DROP SCHEMA apalis_diesel_postgres CASCADE")
    assert call(flavor, "catalog", "rust_journal_present", migrated_db).present is False


def test_relations_lists_the_apalis_tables_and_the_snapshot_view(
    flavor: Flavor, migrated_db: str
) -> None:
    rows = call(flavor, "catalog", "relations", migrated_db)
    assert all(type(r) is RelationsRow for r in rows)
    assert {r.name: r.kind for r in rows} == {
        "apalis_client_migrations": "r",
        "jobs": "r",
        "queue_stats_snapshot": "m",
        "workers": "r",
    }


def test_record_migration_is_listed_by_applied_migrations(flavor: Flavor, migrated_db: str) -> None:
    with Gen(flavor, migrated_db) as g:
        before = g("catalog", "applied_migrations")
        assert g("catalog", "record_migration", filename="0000_zz_test.sql", checksum="abc") is None
        after = g("catalog", "applied_migrations")
    assert all(type(r) is AppliedMigrationsRow for r in after)
    assert [r.filename for r in before] == [
        "0001_base.sql",
        "0002_generation14.sql",
        "0003_rust_journal.sql",
    ]
    assert (after[0].filename, after[0].checksum) == ("0000_zz_test.sql", "abc")
    assert after[1:] == before


def test_columns_reports_types_nullability_and_defaults(flavor: Flavor, migrated_db: str) -> None:
    rows = call(flavor, "catalog", "columns", migrated_db)
    assert all(type(r) is ColumnsRow for r in rows)
    jobs = {r.column_name: r for r in rows if r.table_name == "jobs"}
    assert list(jobs) == [
        "job",
        "id",
        "job_type",
        "status",
        "attempts",
        "max_attempts",
        "run_at",
        "last_result",
        "lock_at",
        "lock_by",
        "done_at",
        "priority",
        "metadata",
        "idempotency_key",
    ]
    status = jobs["status"]
    assert (status.data_type, status.not_null, status.column_default) == (
        "text",
        True,
        "'Pending'::text",
    )
    lock_at = jobs["lock_at"]
    assert (lock_at.data_type, lock_at.not_null, lock_at.column_default) == (
        "timestamp with time zone",
        False,
        None,
    )
    assert {r.table_name for r in rows} == {"jobs", "workers", "queue_stats_snapshot"}


def test_constraints_print_the_generation14_definitions(flavor: Flavor, migrated_db: str) -> None:
    rows = call(flavor, "catalog", "constraints", migrated_db)
    assert all(type(r) is ConstraintsRow for r in rows)
    found = {r.name: r.definition for r in rows}
    assert found == {**CONSTRAINTS, "workers_pkey": "PRIMARY KEY (id, worker_type)"}


def test_indexes_print_the_generation14_definitions(flavor: Flavor, migrated_db: str) -> None:
    rows = call(flavor, "catalog", "indexes", migrated_db)
    assert all(type(r) is IndexesRow for r in rows)
    found = {r.name: r.definition for r in rows}
    assert {name: found.get(name) for name in INDEXES} == INDEXES
    assert "queue_stats_snapshot_job_type_idx" in found


def test_functions_report_signature_and_pinned_settings(flavor: Flavor, migrated_db: str) -> None:
    rows = call(flavor, "catalog", "functions", migrated_db)
    assert all(type(r) is FunctionsRow for r in rows)
    by_name = {r.name: r for r in rows}
    assert sorted(by_name) == ["get_jobs", "notify_new_jobs"]
    get_jobs = by_name["get_jobs"]
    assert get_jobs.arguments == "worker_id text, v_job_type text, v_job_count integer DEFAULT 5"
    assert get_jobs.result == "SETOF apalis.jobs"
    for r in rows:
        assert (r.config, r.security_definer, r.volatility, r.language) == (
            "search_path=pg_catalog, apalis, pg_temp",
            False,
            "v",
            "plpgsql",
        )
        assert r.source.strip() != ""


def test_triggers_report_the_notify_workers_shape(flavor: Flavor, migrated_db: str) -> None:
    rows = call(flavor, "catalog", "triggers", migrated_db)
    assert all(type(r) is TriggersRow for r in rows)
    assert [r.model_dump() for r in rows] == [
        {
            "name": "notify_workers",
            "type": 4,
            "enabled": "O",
            "no_when": True,
            "nargs": 0,
            "new_table": "new_jobs",
            "function": "apalis.notify_new_jobs",
        }
    ]


def test_claims_refuse_a_worker_whose_lease_was_taken_over(
    flavor: Flavor, migrated_db: str
) -> None:
    old_token = register(migrated_db)
    seed(migrated_db, T(id="A"))
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("UPDATE apalis.workers SET lease_token = 'someone-else' WHERE id = %s", (W,))
    common = {"queue": Q, "worker_id": W, "lease_token": old_token}
    assert call(flavor, "lock", "claim_next", migrated_db, batch=10, **common) == []
    assert call(flavor, "lock", "claim_by_ids", migrated_db, ids=["A"], batch=10, **common) == []
    assert call(flavor, "lock", "lock_task", migrated_db, id="A", **common) is None
    assert find(migrated_db, "A").status == "Pending"
    fresh = {**common, "lease_token": "someone-else"}
    assert [j.id for j in call(flavor, "lock", "claim_next", migrated_db, batch=10, **fresh)] == [
        "A"
    ]


# --- retry backoff, cancellation, queue depth (issue 16) ---


def backoff_ack(
    flavor: Flavor, url: str, jobs: list[Job], outcomes: list[str], delays: list[float], token: str
) -> list[Any]:
    return list(
        call(
            flavor,
            "ack",
            "ack_batch",
            url,
            worker_id=W,
            queue=Q,
            lease_token=token,
            ids=[j.id for j in jobs],
            attempts=[j.attempts for j in jobs],
            lock_ats=[j.lock_at for j in jobs],
            outcomes=outcomes,
            results=[json.dumps({"Err": "boom"}) for _ in jobs],
            delays=delays,
        )
    )


def test_ack_batch_delays_moves_run_at_of_a_retryable_failure_by_its_delay(
    flavor: Flavor, migrated_db: str
) -> None:
    token = register(migrated_db)
    seed(migrated_db, T(id="A"), T(id="B"))
    a, b = claim(migrated_db)
    before_b = find(migrated_db, "B").run_at
    rows = backoff_ack(flavor, migrated_db, [a, b], ["Failed", "Done"], [90.0, 90.0], token)
    assert {r.id: r.status for r in rows} == {"A": "Failed", "B": "Done"}
    failed, done = find(migrated_db, "A"), find(migrated_db, "B")
    assert failed.done_at is not None
    assert failed.run_at - failed.done_at == timedelta(seconds=90)
    assert (failed.attempts, failed.last_result, failed.lock_by) == (1, {"Err": "boom"}, W)
    assert done.run_at == before_b  # only a retryable failure waits
    # Not claimable before its run_at (the Rust-shaped claim: tests/test_retry_schedule.py).
    assert claim(migrated_db) == []


def test_ack_batch_delays_kills_at_the_limit_and_leaves_run_at(
    flavor: Flavor, migrated_db: str
) -> None:
    job, token = claimed_task(migrated_db, max_attempts=1)
    (row,) = backoff_ack(flavor, migrated_db, [job], ["Failed"], [600.0], token)
    assert row.status == "Killed"
    assert find(migrated_db, job.id).run_at == job.run_at


def test_ack_batch_delays_under_another_lease_token_acks_nothing(
    flavor: Flavor, migrated_db: str
) -> None:
    job, _ = claimed_task(migrated_db)
    assert backoff_ack(flavor, migrated_db, [job], ["Failed"], [1.0], "not-our-token") == []
    assert find(migrated_db, job.id).status == "Running"


def test_cancel_task_kills_a_running_task_and_notifies_its_worker(
    flavor: Flavor, migrated_db: str
) -> None:
    job, token = claimed_task(migrated_db)
    with psycopg.connect(migrated_db, autocommit=True) as listener:
        listener.execute('LISTEN "apalis_client::cancel"')
        row = call(flavor, "cancel", "cancel_task", migrated_db, id=job.id)
        notes = list(listener.notifies(timeout=2, stop_after=1))
    assert (row.id, row.previous_status, row.notified, row.lock_by) == (job.id, "Running", True, W)
    assert [json.loads(n.payload) for n in notes] == [
        {"id": job.id, "job_type": Q, "worker_id": W, "attempts": 0}
    ]
    after = find(migrated_db, job.id)
    assert (after.status, after.attempts, after.last_result) == (
        "Killed",
        0,
        {"Err": "cancelled by operator"},
    )
    # The worker's late ack is stale: the operator's outcome stays.
    assert backoff_ack(flavor, migrated_db, [job], ["Done"], [0.0], token) == []


def test_notify_probe_sends_its_payload_on_the_channel(flavor: Flavor, migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as listener:
        listener.execute('LISTEN "apalis_client::cancel"')
        call(
            flavor,
            "cancel",
            "notify_probe",
            migrated_db,
            channel="apalis_client::cancel",
            payload="probe:x",
        )
        notes = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.payload for n in notes] == ["probe:x"]


def test_cancel_task_of_a_pending_task_kills_it_without_a_notify(
    flavor: Flavor, migrated_db: str
) -> None:
    seed(migrated_db, T(id="A"))
    row = call(flavor, "cancel", "cancel_task", migrated_db, id="A")
    assert (row.previous_status, row.notified) == ("Pending", False)
    assert find(migrated_db, "A").status == "Killed"


def test_cancel_task_of_a_finished_or_unknown_task_returns_nothing(
    flavor: Flavor, migrated_db: str
) -> None:
    job, _ = claimed_task(migrated_db)
    ack_sync(migrated_db, job, "Done")
    assert call(flavor, "cancel", "cancel_task", migrated_db, id=job.id) is None
    assert call(flavor, "cancel", "cancel_task", migrated_db, id="NOPE") is None
    assert find(migrated_db, job.id).status == "Done"


def test_lost_claims_returns_only_the_tasks_the_worker_no_longer_holds(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    seed(migrated_db, T(id="A"), T(id="B"), T(id="C"))
    a, b, c = claim(migrated_db)
    call(flavor, "cancel", "cancel_task", migrated_db, id="B")
    sql(migrated_db, "DELETE FROM apalis.jobs WHERE id = 'C'")
    rows = call(
        flavor,
        "cancel",
        "lost_claims",
        migrated_db,
        ids=["A", "B", "C"],
        attempts=[a.attempts, b.attempts, c.attempts],
        queue=Q,
        worker_id=W,
    )
    assert sorted((r.id, r.status, r.last_result) for r in rows) == [
        ("B", "Killed", {"Err": "cancelled by operator"}),
        ("C", None, None),
    ]


def test_queue_depth_counts_active_rows_by_state_for_the_asked_queues(
    flavor: Flavor, migrated_db: str
) -> None:
    register(migrated_db)
    later = now() + timedelta(hours=1)
    seed(migrated_db, T(id="A"), T(id="B"), T(id="C"), T(id="D", run_at=later))
    seed(migrated_db, T(id="O"), queue="other")
    (first, _) = claim(migrated_db, batch=2)
    ack_sync(migrated_db, first, "Done")
    rows = call(flavor, "metrics", "queue_depth", migrated_db, queues=[Q, "empty"])
    assert [(r.job_type, r.due, r.scheduled, r.queued, r.running) for r in rows] == [
        ("empty", 0, 0, 0, 0),
        (Q, 1, 1, 0, 1),
    ]
    assert rows[0].oldest_due_age_secs == 0
    assert 50 <= rows[1].oldest_due_age_secs <= 3600  # T() is due since a minute ago
