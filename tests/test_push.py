"""Producer API on real PostgreSQL: the outbox scenarios of the Rust crate, conflicts, caps,
NOTIFY, scheduling and byte-for-byte interop. Every test runs sync and async."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from conftest import Flavor, Query
from psycopg.pq import TransactionStatus
from push_support import MARKER_TABLE, Session
from pydantic import BaseModel, Field
from ulid import ULID

import apalis_client
from apalis_client import (
    AsyncPostgresStorage,
    DatabaseError,
    DuplicateTaskId,
    IdempotencyConflict,
    InvalidArgument,
    PostgresStorage,
    SchemaMissing,
    Task,
)
from apalis_generated import keep_alive, lock

ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")

Open = Callable[..., Session]


@pytest.fixture
def open_session(flavor: Flavor) -> Iterator[Open]:
    opened: list[Session] = []

    def open_(url: str, *, autocommit: bool = False) -> Session:
        s = Session(flavor.name, url, autocommit=autocommit)
        opened.append(s)
        return s

    yield open_
    for s in opened:
        s.close()


@pytest.fixture
def outbox_db(migrated_db: str) -> str:
    """A migrated database with the business table of the Rust outbox test."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(MARKER_TABLE)
    return migrated_db


def count_jobs(query: Query, url: str, queue: str) -> int:
    return int(query(url, f"SELECT count(*) FROM apalis.jobs WHERE job_type = '{queue}'")[0][0])


def count_business(query: Query, url: str, queue: str) -> int:
    sql = f"SELECT count(*) FROM apalis_outbox_test_marker WHERE queue = '{queue}'"
    return int(query(url, sql)[0][0])


def mark(s: Session, key: str, queue: str) -> None:
    s.execute("INSERT INTO apalis_outbox_test_marker (key, queue) VALUES (%s, %s)", (key, queue))


# ---- the four scenarios of outbox_test.rs ---------------------------------------------------


def test_commit_persists_the_task_and_the_business_row(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    queue = f"apalis-outbox-commit-{ULID()}"
    s = open_session(outbox_db)
    with s.transaction():
        mark(s, f"marker-{queue}", queue)
        returned = s.push(queue, "payload")
    assert count_jobs(query, outbox_db, queue) == 1
    assert count_business(query, outbox_db, queue) == 1
    stored = query(outbox_db, f"SELECT id FROM apalis.jobs WHERE job_type = '{queue}'")
    assert stored == [(returned,)]


def test_rollback_leaves_neither_the_task_nor_the_business_row(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    queue = f"apalis-outbox-rollback-{ULID()}"
    s = open_session(outbox_db)
    pushed: list[str] = []

    class ForcedRollback(Exception):
        pass

    with pytest.raises(ForcedRollback), s.transaction():
        mark(s, f"marker-{queue}", queue)
        pushed.append(s.push(queue, "payload"))  # the push itself succeeds...
        raise ForcedRollback  # ...and the outer rollback is the only reason nothing stays
    assert len(pushed) == 1
    assert count_jobs(query, outbox_db, queue) == 0
    assert count_business(query, outbox_db, queue) == 0


def test_fully_populated_task_is_stored_as_given(
    migrated_db: str, open_session: Open, query: Query
) -> None:
    queue = f"apalis-outbox-custom-{ULID()}"
    preassigned = str(ULID())
    run_at_secs = int(time.time()) + 3600
    key = f"idem-{queue}"
    task = Task[str](
        args="payload",
        task_id=preassigned,
        run_at=run_at_secs,
        idempotency_key=key,
        max_attempts=9,
        priority=5,
        metadata={"reason": "test", "n": 7},
    )
    s = open_session(migrated_db, autocommit=True)
    returned = s.push_task(queue, task)
    rows = query(
        migrated_db,
        "SELECT id, priority, max_attempts, extract(epoch FROM run_at)::bigint, metadata, "
        f"idempotency_key FROM apalis.jobs WHERE job_type = '{queue}'",
    )
    assert returned == preassigned
    assert rows == [(preassigned, 5, 9, run_at_secs, {"reason": "test", "n": 7}, key)]


def test_idempotency_conflict_rolls_back_only_the_push(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    queue = f"apalis-outbox-conflict-{ULID()}"
    idem = f"idem-{queue}"
    s = open_session(outbox_db)
    with s.transaction():
        seed = s.push_task(queue, Task(args="payload-1", idempotency_key=idem))
    with s.transaction():
        mark(s, f"marker-{queue}", queue)
        with pytest.raises(IdempotencyConflict) as caught:
            s.push_task(queue, Task(args="payload-2", idempotency_key=idem))
    assert (caught.value.queue, caught.value.keys) == (queue, [idem])
    assert count_business(query, outbox_db, queue) == 1
    stored = query(outbox_db, f"SELECT id, job FROM apalis.jobs WHERE job_type = '{queue}'")
    assert stored == [(seed, b'"payload-1"')]


# ---- conflicts and failures -------------------------------------------------------------------


@pytest.mark.parametrize("in_transaction", [True, False], ids=["in-transaction", "autocommit"])
def test_batch_with_one_colliding_key_inserts_nothing(
    migrated_db: str, open_session: Open, query: Query, in_transaction: bool
) -> None:
    queue = "batch-conflict"
    s = open_session(migrated_db, autocommit=True)
    s.push_task(queue, Task(args=0, idempotency_key="b"))
    batch: list[Task[int]] = [
        Task(args=i, idempotency_key=k) for i, k in enumerate(["a", "b", "c"], 1)
    ]
    with pytest.raises(IdempotencyConflict) as caught:
        if in_transaction:
            with s.transaction():
                s.push_many(queue, batch)
        else:
            s.push_many(queue, batch)
    assert caught.value.keys == ["b"]
    assert query(migrated_db, "SELECT idempotency_key FROM apalis.jobs") == [("b",)]


def test_conflicting_batch_leaves_the_transaction_usable(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(outbox_db)
    s.push_task("q", Task(args=0, idempotency_key="b"))
    with pytest.raises(IdempotencyConflict):
        s.push_many("q", [Task(args=1, idempotency_key="a"), Task(args=2, idempotency_key="b")])
    mark(s, "after", "q")
    s.commit()
    assert count_business(query, outbox_db, "q") == 1
    assert query(outbox_db, "SELECT idempotency_key FROM apalis.jobs") == [("b",)]


def test_batch_of_tasks_with_their_own_columns_stores_each_as_given(
    migrated_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(migrated_db, autocommit=True)
    soon = datetime(2030, 1, 1, tzinfo=timezone.utc)
    ids = s.push_many(
        "q",
        [
            Task(args=1, priority=3, max_attempts=2, run_at=soon, metadata={"a": 1}),
            Task(args=2),
        ],
    )
    rows = query(
        migrated_db,
        "SELECT id, priority, max_attempts, extract(epoch FROM run_at)::bigint, metadata "
        "FROM apalis.jobs ORDER BY job",
    )
    assert rows[0] == (ids[0], 3, 2, int(soon.timestamp()), {"a": 1})
    assert rows[1][:3] == (ids[1], 0, 5)
    assert rows[1][3] < int(soon.timestamp())
    assert rows[1][4] == {}


def test_a_batch_of_differing_rows_stores_every_column_exactly(
    migrated_db: str, open_session: Open, query: Query
) -> None:
    # The batch's arrays go in PostgreSQL's binary format, written by apalis_client itself:
    # NULL and non-ASCII keys, an empty payload, microseconds, the epoch, int4's maximum.
    s = open_session(migrated_db, autocommit=True)
    given: list[tuple[bytes, str | None, datetime, int, int, dict[str, Any]]] = [
        (b"", None, datetime(1970, 1, 1, tzinfo=timezone.utc), 2**31 - 1, 1, {}),
        (
            b"\x00\xff",
            "schlüssel-ключ-鍵",
            datetime(2030, 5, 6, 7, 8, 9, 123456, timezone.utc),
            0,
            5,
            {"é": [1, None]},
        ),
        (
            b'{"a":1}',
            None,
            datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc),
            7,
            2**31 - 1,
            {},
        ),
    ]
    tasks = [
        Task(args=job, idempotency_key=key, run_at=run_at, priority=p, max_attempts=m, metadata=md)
        for job, key, run_at, p, m, md in given
    ]
    ids = s.push_many("q", tasks)
    rows = query(
        migrated_db,
        "SELECT job, idempotency_key, run_at, priority, max_attempts, metadata, id "
        "FROM apalis.jobs ORDER BY id",
    )
    assert rows == [(*g, i) for g, i in zip(given, ids, strict=True)]


def test_a_batch_on_a_connection_binding_parameters_client_side_is_stored_alike(
    migrated_db: str, query: Query
) -> None:
    # A ClientCursor sends text literals: psycopg's own list dumpers take the batch's arrays.
    tasks: list[Task[Any]] = [
        Task(args=1, idempotency_key="k", priority=2),
        Task(args=b"x", run_at=0),
    ]
    with psycopg.connect(migrated_db, autocommit=True, cursor_factory=psycopg.ClientCursor) as c:
        ids = apalis_client.push_many_with_conn(c, "q", tasks)
    rows = query(
        migrated_db, "SELECT id, job, idempotency_key, priority FROM apalis.jobs ORDER BY id"
    )
    assert rows == [(ids[0], b"1", "k", 2), (ids[1], b"x", None, 0)]


def test_duplicate_keys_inside_one_batch_are_a_conflict(
    migrated_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(migrated_db, autocommit=True)
    with pytest.raises(IdempotencyConflict) as caught:
        s.push_many("q", [Task(args=1, idempotency_key="k"), Task(args=2, idempotency_key="k")])
    assert caught.value.keys == ["k"]
    assert count_jobs(query, migrated_db, "q") == 0


def test_duplicate_task_id_in_a_transaction_leaves_it_usable(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(outbox_db)
    taken = s.push("q", "first")
    s.commit()
    with s.transaction():
        mark(s, "before", "q")
        with pytest.raises(DuplicateTaskId) as caught:
            s.push_task("q", Task(args="second", task_id=taken))
        mark(s, "after", "q")
    assert caught.value.task_id == taken
    assert count_business(query, outbox_db, "q") == 2
    assert query(outbox_db, "SELECT id, job FROM apalis.jobs") == [(taken, b'"first"')]


def test_a_fresh_id_found_taken_is_a_duplicate_id_and_leaves_the_transaction_usable(
    outbox_db: str, open_session: Open, query: Query, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Start the id generator from a known (millisecond, random) pair, so the next fresh id is
    # known and can be taken first: the single push's INSERT then writes no row.
    ms, random = int(time.time() * 1000) + 60_000, 41
    last = (ms, random, apalis_client.task._time_digits(ms))
    monkeypatch.setattr(apalis_client.task, "_last", last)
    taken = str(ULID.from_int(ms << 80 | (random + 1)))
    with psycopg.connect(outbox_db, autocommit=True) as conn:
        conn.execute("INSERT INTO apalis.jobs (job, id, job_type) VALUES ('1', %s, 'q')", (taken,))
    s = open_session(outbox_db)
    with s.transaction():
        mark(s, "before", "q")
        with pytest.raises(DuplicateTaskId) as caught:
            s.push("q", "second")
        mark(s, "after", "q")
    assert caught.value.task_id == taken
    assert count_business(query, outbox_db, "q") == 2
    assert count_jobs(query, outbox_db, "q") == 1


def test_missing_schema_says_to_migrate_and_aborts_the_callers_transaction(
    empty_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(empty_db)
    s.execute("CREATE TABLE t (x int)")
    with pytest.raises(SchemaMissing, match=r"apalis-client migrate.*now aborted: roll it back"):
        s.push("q", {"a": 1})
    assert s.status == TransactionStatus.INERROR
    s.rollback()
    assert query(empty_db, "SELECT to_regclass('t')") == [(None,)]


def test_missing_schema_in_a_transaction_the_push_opened_rolls_it_back(
    empty_db: str, open_session: Open
) -> None:
    s = open_session(empty_db)
    with pytest.raises(SchemaMissing, match="apalis-client migrate"):
        s.push("q", {"a": 1})
    assert s.status == TransactionStatus.IDLE


def test_push_on_an_aborted_transaction_is_refused_without_sql(
    migrated_db: str, open_session: Open
) -> None:
    s = open_session(migrated_db)
    with pytest.raises(psycopg.errors.DivisionByZero):
        s.execute("SELECT 1/0")
    with pytest.raises(InvalidArgument, match="aborted"):
        s.push("q", 1)
    assert s.status == TransactionStatus.INERROR


def test_concurrent_pushes_of_one_key_yield_exactly_one_row(
    migrated_db: str, flavor: Flavor, query: Query
) -> None:
    outcomes: list[str] = []
    n = 8

    def classify(exc: BaseException | None) -> str:
        return "ok" if exc is None else type(exc).__name__

    if flavor.name == "sync":
        barrier = threading.Barrier(n)
        lock_ = threading.Lock()

        def one() -> None:
            with psycopg.connect(migrated_db, autocommit=True) as conn:
                barrier.wait()
                try:
                    apalis_client.push_task_with_conn(
                        conn, "q", Task(args=1, idempotency_key="once")
                    )
                    result = classify(None)
                except IdempotencyConflict as exc:
                    result = classify(exc)
            with lock_:
                outcomes.append(result)

        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:

        async def one_async(conn: psycopg.AsyncConnection[Any]) -> str:
            try:
                await apalis_client.push_task_with_conn_async(
                    conn, "q", Task(args=1, idempotency_key="once")
                )
                return classify(None)
            except IdempotencyConflict as exc:
                return classify(exc)

        async def go() -> list[str]:
            conns = [
                await psycopg.AsyncConnection.connect(migrated_db, autocommit=True)
                for _ in range(n)
            ]
            try:
                return list(await asyncio.gather(*(one_async(c) for c in conns)))
            finally:
                for c in conns:
                    await c.close()

        outcomes = asyncio.run(go())
    assert sorted(outcomes) == ["IdempotencyConflict"] * (n - 1) + ["ok"]
    assert count_jobs(query, migrated_db, "q") == 1


# ---- no subtransactions -------------------------------------------------------------------------


def _xid32(s: Session) -> int:
    """The caller's transaction id as rows carry it in xmin (32 bits)."""
    ((full,),) = s.execute("SELECT pg_current_xact_id()::text")
    return int(full) % 2**32


def _xmins(query: Query, url: str, queue: str) -> set[int]:
    sql = f"SELECT DISTINCT xmin::text FROM apalis.jobs WHERE job_type = '{queue}'"
    return {int(x) for (x,) in query(url, sql)}


def test_a_thousand_pushes_in_one_transaction_use_no_subtransaction_and_commit_together(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    # A row written inside a subtransaction carries the subtransaction's own xid in xmin; a
    # savepoint per push would leave a thousand distinct ones.
    s = open_session(outbox_db)
    with s.transaction():
        top = _xid32(s)
        mark(s, "outbox", "many")
        ids = [s.push("many", n) for n in range(500)]
        ids += [s.push_task("many", Task(args=n, idempotency_key=f"k{n}")) for n in range(500)]
        assert count_jobs(query, outbox_db, "many") == 0  # nothing visible before the commit
    assert count_jobs(query, outbox_db, "many") == 1000
    assert count_business(query, outbox_db, "many") == 1
    assert _xmins(query, outbox_db, "many") == {top}
    assert len(set(ids)) == 1000


def test_a_keyed_batch_in_a_transaction_uses_one_subtransaction_and_a_fresh_one_none(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(outbox_db)
    s.push_task("b", Task(args=0, idempotency_key="taken"))
    s.commit()

    def xmins(where: str) -> set[int]:
        sql = f"SELECT DISTINCT xmin::text FROM apalis.jobs WHERE job_type = 'b' AND {where}"
        return {int(x) for (x,) in query(outbox_db, sql)}

    with s.transaction():
        top = _xid32(s)
        s.push_many("b", [Task(args=n, idempotency_key=f"a{n}") for n in range(50)])
        with pytest.raises(IdempotencyConflict):
            s.push_many(
                "b", [Task(args=1, idempotency_key="x"), Task(args=2, idempotency_key="taken")]
            )
        s.push_task("b", Task(args=3, idempotency_key="single"))
        s.push_many("b", [Task(args=n) for n in range(50)])  # fresh ids, no keys: no savepoint
        mark(s, "after", "b")
    assert count_jobs(query, outbox_db, "b") == 1 + 50 + 1 + 50
    keyed_batch = xmins("idempotency_key LIKE 'a%'")
    assert len(keyed_batch) == 1 and keyed_batch != {top}  # one savepoint for the whole batch
    assert xmins("idempotency_key IS NULL OR idempotency_key = 'single'") == {top}
    assert count_business(query, outbox_db, "b") == 1


# ---- the existing task --------------------------------------------------------------------------


def test_conflict_names_the_task_that_holds_the_key(outbox_db: str, open_session: Open) -> None:
    s = open_session(outbox_db)
    holder = s.push_task("q", Task(args=1, idempotency_key="order-42"))
    s.commit()
    with s.transaction():
        with pytest.raises(IdempotencyConflict) as caught:
            s.push_task("q", Task(args=2, idempotency_key="order-42"))
        mark(s, "still usable", "q")
    assert caught.value.existing == {"order-42": holder}
    assert f"'order-42' already queued as {holder}" in str(caught.value)


def test_batch_conflict_names_each_existing_task_in_the_order_given(
    migrated_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(migrated_db, autocommit=True)
    b = s.push_task("q", Task(args=1, idempotency_key="b"))
    d = s.push_task("q", Task(args=2, idempotency_key="d"))
    s.push_task("other", Task(args=3, idempotency_key="a"))  # the same key on another queue
    batch = [Task(args=n, idempotency_key=k) for n, k in enumerate("dabc")]
    with pytest.raises(IdempotencyConflict) as caught:
        s.push_many("q", batch)
    assert caught.value.keys == ["d", "b"]
    assert caught.value.existing == {"d": d, "b": b}
    assert str(caught.value) == (
        f"idempotency conflict on queue 'q': keys 'd' already queued as {d}, "
        f"'b' already queued as {b}; the whole batch was undone"
    )
    assert count_jobs(query, migrated_db, "q") == 2


def test_a_key_pushed_earlier_in_the_same_transaction_is_a_conflict(
    migrated_db: str, open_session: Open
) -> None:
    s = open_session(migrated_db)
    with s.transaction():
        first = s.push_task("q", Task(args=1, idempotency_key="k"))
        with pytest.raises(IdempotencyConflict) as caught:
            s.push_many("q", [Task(args=2), Task(args=3, idempotency_key="k")])
    assert caught.value.existing == {"k": first}


def test_duplicate_id_in_a_batch_undoes_its_rows_and_leaves_the_transaction_usable(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(outbox_db)
    taken = s.push("q", "first")
    s.commit()
    with s.transaction():
        with pytest.raises(DuplicateTaskId) as caught:
            s.push_many("q", [Task(args="new"), Task(args="dup", task_id=taken)])
        mark(s, "after", "q")
    assert caught.value.task_id == taken
    assert count_business(query, outbox_db, "q") == 1
    assert query(outbox_db, "SELECT id, job FROM apalis.jobs") == [(taken, b'"first"')]


# ---- a failure that is no conflict aborts the caller's transaction ------------------------------


def test_statement_timeout_during_a_push_aborts_the_transaction_and_writes_nothing(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    # Another transaction holds the key uncommitted, so our INSERT waits on it until the
    # statement timeout cancels it.
    with psycopg.connect(outbox_db) as blocker:
        apalis_client.push_task_with_conn(blocker, "q", Task(args=0, idempotency_key="k"))
        s = open_session(outbox_db)
        with s.transaction():
            mark(s, "business", "q")
            s.execute("SET LOCAL statement_timeout = '200ms'")
            with pytest.raises(DatabaseError) as caught:
                s.push_task("q", Task(args=1, idempotency_key="k"))
            assert s.status == TransactionStatus.INERROR
            message = str(caught.value)
            assert "statement timeout" in message and "now aborted: roll it back" in message
            with pytest.raises(InvalidArgument, match="aborted"):
                s.push("q", 2)  # refused without SQL, the transaction being dead
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                mark(s, "more business", "q")
        blocker.rollback()
    assert count_business(query, outbox_db, "q") == 0
    assert count_jobs(query, outbox_db, "q") == 0


# ---- the storage's type -------------------------------------------------------------------------


class Email(BaseModel):
    to: str


@pytest.mark.parametrize("wrong", [42, {"to": "a"}], ids=["int", "dict"])
def test_storage_refuses_arguments_not_of_its_type_before_any_sql(
    migrated_db: str, flavor: Flavor, query: Query, wrong: Any
) -> None:
    got = type(wrong).__name__
    message = rf"PostgresStorage\[Email\] for queue 'emails' takes Email arguments, got {got}"
    with psycopg.connect(migrated_db) as conn:
        if flavor.name == "sync":
            storage = PostgresStorage[Email]("emails")
            with pytest.raises(InvalidArgument, match=message):
                storage.push_with_conn(conn, wrong)
            with pytest.raises(InvalidArgument, match=message):
                storage.push_many_with_conn(conn, [Task(args=Email(to="a")), Task(args=wrong)])
        else:
            astorage = AsyncPostgresStorage[Email]("emails")

            async def go() -> None:
                async with await psycopg.AsyncConnection.connect(migrated_db) as aconn:
                    with pytest.raises(InvalidArgument, match="Async" + message):
                        await astorage.push_with_conn(aconn, wrong)
                    with pytest.raises(InvalidArgument, match="Async" + message):
                        await astorage.push_task_with_conn(aconn, Task(args=wrong))
                    assert aconn.info.transaction_status == TransactionStatus.IDLE

            asyncio.run(go())
        assert conn.info.transaction_status == TransactionStatus.IDLE
    assert query(migrated_db, "SELECT count(*) FROM apalis.jobs") == [(0,)]


def test_storage_of_a_subclass_checks_its_declared_type(migrated_db: str) -> None:
    class Emails(PostgresStorage[Email]):
        pass

    with psycopg.connect(migrated_db) as conn:
        with pytest.raises(InvalidArgument, match="Emails\\[Email\\]"):
            Emails("emails").push_with_conn(conn, 42)  # type: ignore[arg-type]
        Emails("emails").push_with_conn(conn, Email(to="a"))
        conn.commit()


# ---- caps: rejected, nothing written, no SQL sent ---------------------------------------------


def _cap_cases() -> list[Any]:
    def case(make: Callable[[], tuple[str, Task[Any]]], match: str, id: str) -> Any:
        return pytest.param(make, match, id=id)

    return [
        case(lambda: ("q" * 256, Task(args=1)), "256 bytes; the limit is 255 bytes", "queue-256"),
        case(lambda: ("é" * 128, Task(args=1)), "256 bytes; the limit is 255", "queue-utf8-256"),
        case(lambda: ("", Task(args=1)), "queue name must not be empty", "queue-empty"),
        case(
            lambda: ("q", Task(args=b"x" * (1024 * 1024 + 1))),
            "payload is 1048577 bytes; the limit is 1048576 bytes",
            "payload-1MiB+1",
        ),
        case(
            lambda: ("q", Task(args="x" * (1024 * 1024))),
            "payload is 1048578 bytes; the limit is 1048576",
            "json-payload-over-1MiB",
        ),
        case(
            lambda: ("q", Task(args=1, metadata={"m": "x" * 8192})),
            "metadata is 8200 bytes serialized; the limit is 8192",
            "metadata-over-8KiB",
        ),
        case(
            lambda: ("q", Task(args=1, idempotency_key="k" * 1025)),
            "is 1025 bytes; the limit is 1024",
            "key-1025",
        ),
        case(lambda: ("q", Task(args=1, priority=-1)), "priority -1 is out of range", "priority"),
        case(lambda: ("q", Task(args=1, max_attempts=0)), "max_attempts 0 is out of range", "max"),
        case(
            lambda: ("q", Task(args=1, run_at=datetime(2030, 1, 1))),
            "run_at 2030-01-01T00:00:00 is a naive datetime",
            "naive-run-at",
        ),
        case(
            lambda: ("q", Task(args=1, run_at=-1)),
            "run_at -1 unix seconds is out of range: it must be between 0 and",
            "run-at-before-1970",
        ),
        case(
            lambda: ("q", Task(args=1, run_at=10**12)),
            "run_at 1000000000000 unix seconds is out of range",
            "run-at-after-9999",
        ),
        case(lambda: ("q", Task(args=float("nan"))), "non-finite float", "nan-payload"),
    ]


@pytest.mark.parametrize(("make", "match"), _cap_cases())
def test_every_cap_is_rejected_before_any_sql(
    migrated_db: str,
    open_session: Open,
    query: Query,
    make: Callable[[], tuple[str, Task[Any]]],
    match: str,
) -> None:
    s = open_session(migrated_db)  # not autocommit: any statement would open a transaction
    with pytest.raises(InvalidArgument, match=re.escape(match)):
        queue, task = make()
        s.push_task(queue, task)
    assert s.status == TransactionStatus.IDLE
    assert query(migrated_db, "SELECT count(*) FROM apalis.jobs") == [(0,)]


def test_values_exactly_at_each_cap_are_accepted(
    migrated_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(migrated_db, autocommit=True)
    queue = "q" * 255
    s.push_task(
        queue,
        Task(
            args=b"x" * (1024 * 1024),
            metadata={"m": "x" * (8192 - 8)},  # {"m":"…"} is 8 bytes around the value
            idempotency_key="k" * 1024,
            priority=2**31 - 1,
            max_attempts=1,
            run_at=0,
        ),
    )
    rows = query(migrated_db, "SELECT length(job), length(metadata::text) FROM apalis.jobs")
    assert rows == [(1024 * 1024, 8192 + 1)]  # jsonb prints a space after the colon


# ---- NOTIFY, scheduling ---------------------------------------------------------------------


def test_notify_is_sent_for_committed_pushes_only(migrated_db: str, open_session: Open) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as listener:
        listener.execute(b'LISTEN "apalis::job::insert"')
        s = open_session(migrated_db)
        s.push("notified", "rolled back")
        s.rollback()
        committed = [s.push("notified", "one"), s.push("notified", "two")]
        committed += s.push_many("notified", [Task(args=3), Task(args=4)])
        s.commit()
        payloads = [
            json.loads(n.payload)
            for n in listener.notifies(timeout=2.0, stop_after=3)
            if n.channel == "apalis::job::insert"
        ]
    assert all(set(p) == {"job_type", "ids"} for p in payloads)
    assert all(p["job_type"] == "notified" for p in payloads)
    assert [i for p in payloads for i in p["ids"]] == committed


def test_a_collided_batch_notifies_no_one(migrated_db: str, open_session: Open) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as listener:
        listener.execute(b'LISTEN "apalis::job::insert"')
        s = open_session(migrated_db)
        taken = s.push_task("notified", Task(args=0, idempotency_key="taken"))
        with pytest.raises(IdempotencyConflict):
            s.push_many(
                "notified",
                [Task(args=1, idempotency_key="new"), Task(args=2, idempotency_key="taken")],
            )
        after = s.push("notified", 3)
        s.commit()
        payloads = [
            json.loads(n.payload)
            for n in listener.notifies(timeout=1.0)
            if n.channel == "apalis::job::insert"
        ]
    assert [i for p in payloads for i in p["ids"]] == [taken, after]


def test_future_run_at_is_not_claimable_before_it(migrated_db: str, open_session: Open) -> None:
    s = open_session(migrated_db, autocommit=True)
    later = s.push_task(
        "sched", Task(args="later", run_at=datetime.now(timezone.utc) + timedelta(hours=1))
    )
    due = s.push("sched", "now")
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        keep_alive.upsert_worker(
            conn,
            worker_id="w1",
            queue="sched",
            storage_name="PostgresStorage",
            layers="",
            lease_token=str(ULID()),
        )
        claimed = lock.claim_next(conn, queue="sched", batch=10, worker_id="w1", lease_token=None)
        again = lock.claim_next(conn, queue="sched", batch=10, worker_id="w1", lease_token=None)
    assert [j.id for j in claimed] == [due]
    assert again == []
    assert later not in [j.id for j in claimed]


# ---- interop: what a Rust producer writes -----------------------------------------------------


class SendEmail(BaseModel):
    to: str
    subject: str
    attempts_left: int = Field(alias="attemptsLeft")
    ratio: float
    tags: list[str]


def test_stored_row_is_what_a_rust_producer_writes(
    migrated_db: str, open_session: Open, query: Query
) -> None:
    args = SendEmail(
        to="zoë@example.com", subject='Hi "there"\n', attemptsLeft=3, ratio=1.0, tags=[]
    )
    s = open_session(migrated_db, autocommit=True)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    task_id = s.push("emails", args)
    after = datetime.now(timezone.utc)
    (row,) = query(
        migrated_db,
        "SELECT job, id, job_type, status, attempts, max_attempts, run_at, last_result, lock_at, "
        "lock_by, done_at, priority, metadata, metadata::text, idempotency_key FROM apalis.jobs",
    )
    (job, id_, job_type, status, attempts, max_attempts, run_at, last_result, lock_at, lock_by,
     done_at, priority, metadata, metadata_text, key) = row  # fmt: skip
    # serde_json of the same Rust struct (#[serde(rename = "attemptsLeft")]): compact,
    # declaration order, non-ASCII as UTF-8, 1.0 kept as a float.
    assert (
        job
        == (
            '{"to":"zoë@example.com","subject":"Hi \\"there\\"\\n","attemptsLeft":3,'
            '"ratio":1.0,"tags":[]}'
        ).encode()
    )
    assert id_ == task_id and ULID_RE.match(id_) and str(ULID.from_str(id_)) == id_
    assert (job_type, status, attempts, max_attempts, priority) == ("emails", "Pending", 0, 5, 0)
    assert run_at.microsecond == 0 and before <= run_at <= after
    assert (last_result, lock_at, lock_by, done_at, key) == (None, None, None, None, None)
    assert (metadata, metadata_text) == ({}, "{}")


# ---- other entry points -----------------------------------------------------------------------


def test_push_inside_the_callers_pipeline_joins_its_transaction(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(outbox_db)
    with s.pipeline():
        mark(s, "piped", "q")
        task_id = s.push("q", {"n": 1})
    s.commit()
    assert query(outbox_db, "SELECT id FROM apalis.jobs") == [(task_id,)]
    assert count_business(query, outbox_db, "q") == 1


def test_failed_push_inside_the_callers_pipeline_leaves_the_transaction_usable(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(outbox_db)
    taken = s.push("q", "first")
    s.commit()
    with s.pipeline():
        mark(s, "before", "q")
        with pytest.raises(DuplicateTaskId):
            s.push_task("q", Task(args="second", task_id=taken))
        mark(s, "after", "q")
    s.commit()
    assert count_business(query, outbox_db, "q") == 2
    assert count_jobs(query, outbox_db, "q") == 1


def test_failed_push_opening_the_transaction_inside_the_callers_pipeline_leaves_it_usable(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(outbox_db)
    taken = s.push("q", "first")
    s.commit()
    with s.pipeline():
        with pytest.raises(DuplicateTaskId):
            s.push_task("q", Task(args="second", task_id=taken))
        mark(s, "after", "q")
    s.commit()
    assert count_business(query, outbox_db, "q") == 1
    assert count_jobs(query, outbox_db, "q") == 1


def test_push_on_an_idle_non_autocommit_connection_opens_the_callers_transaction(
    migrated_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(migrated_db)
    s.push("q", 1)
    assert s.status == TransactionStatus.INTRANS
    s.rollback()
    assert count_jobs(query, migrated_db, "q") == 0


def test_conflict_in_a_transaction_the_push_opened_ends_it_and_leaves_the_connection_usable(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(outbox_db)
    seed = s.push_task("q", Task(args=1, idempotency_key="k"))
    s.commit()
    with pytest.raises(IdempotencyConflict):
        s.push_task("q", Task(args=2, idempotency_key="k"))
    assert s.status == TransactionStatus.IDLE
    mark(s, "after", "q")
    s.commit()
    assert count_business(query, outbox_db, "q") == 1
    assert query(outbox_db, "SELECT id FROM apalis.jobs") == [(seed,)]


def test_duplicate_id_in_a_transaction_the_push_opened_ends_it_and_leaves_the_connection_usable(
    outbox_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(outbox_db)
    taken = s.push("q", "first")
    s.commit()
    with pytest.raises(DuplicateTaskId):
        s.push_task("q", Task(args="second", task_id=taken))
    assert s.status == TransactionStatus.IDLE
    mark(s, "after", "q")
    s.commit()
    assert count_business(query, outbox_db, "q") == 1
    assert query(outbox_db, "SELECT id, job FROM apalis.jobs") == [(taken, b'"first"')]


def test_colliding_batch_in_a_transaction_the_push_opened_inserts_nothing(
    migrated_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(migrated_db)
    s.push_task("q", Task(args=0, idempotency_key="b"))
    s.commit()
    with pytest.raises(IdempotencyConflict) as caught:
        s.push_many("q", [Task(args=1, idempotency_key="a"), Task(args=2, idempotency_key="b")])
    assert caught.value.keys == ["b"]
    assert s.status == TransactionStatus.IDLE
    assert query(migrated_db, "SELECT idempotency_key FROM apalis.jobs") == [("b",)]


# ---- on the wire ------------------------------------------------------------------------------


def _sent(exchanges: list[list[str]]) -> list[str]:
    return [line for exchange in exchanges for line in exchange if line.startswith("F")]


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
def test_push_in_a_transaction_is_one_round_trip_without_a_savepoint(
    migrated_db: str, open_session: Open, keyed: bool
) -> None:
    s = open_session(migrated_db)
    s.execute("SELECT 1")  # the caller's transaction is open
    with s.wire() as exchanges:
        for n in range(8):  # past psycopg's prepare_threshold: prepared or not, one trip
            s.push_task("q", Task(args=n, idempotency_key=f"k{n}" if keyed else None))
    pushes = [e for e in exchanges if any("\tExecute\t" in line for line in e)]
    assert len(pushes) == 8
    assert len(exchanges) <= 9  # and psycopg's own Parse, once, when it prepares the INSERT
    sent = "\n".join(_sent(exchanges))
    assert "SAVEPOINT" not in sent and "PREPARE" not in sent and "EXECUTE " not in sent
    assert s.status == TransactionStatus.INTRANS


def test_push_on_a_connection_without_prepared_statements_prepares_nothing(
    migrated_db: str, open_session: Open, query: Query
) -> None:
    s = open_session(migrated_db)
    s.connection.prepare_threshold = None  # psycopg's setting for PgBouncer-style poolers
    s.execute("SELECT 1")
    with s.wire() as exchanges:
        for n in range(8):
            s.push("q", {"n": n})
    assert len(exchanges) == 8  # nothing prepared: every push parses, in its one trip
    assert s.execute("SELECT name FROM pg_prepared_statements") == []
    s.commit()
    assert count_jobs(query, migrated_db, "q") == 8


def test_push_that_opens_the_transaction_sends_no_savepoint(
    migrated_db: str, open_session: Open
) -> None:
    s = open_session(migrated_db)
    with s.wire() as exchanges:
        s.push("q", {"n": 1})
    sent = _sent(exchanges)
    assert any("BEGIN" in line for line in sent)
    assert any("INSERT INTO apalis.jobs" in line for line in sent)
    assert not any("SAVEPOINT" in line for line in sent)
    assert s.status == TransactionStatus.INTRANS


def test_module_level_functions_push_to_the_named_queue(migrated_db: str, flavor: Flavor) -> None:
    from apalis_client import push_many_with_conn, push_task_with_conn, push_with_conn

    if flavor.name == "sync":
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            ids: list[str] = [
                push_with_conn(conn, "m", 1),
                push_task_with_conn(conn, "m", Task(args=2)),
            ]
            ids += push_many_with_conn(conn, "m", [Task(args=3)])
            rows = conn.execute(b"SELECT id, job FROM apalis.jobs ORDER BY job").fetchall()
    else:

        async def go() -> tuple[list[str], list[tuple[Any, ...]]]:
            async with await psycopg.AsyncConnection.connect(migrated_db, autocommit=True) as c:
                got = [
                    await apalis_client.push_with_conn_async(c, "m", 1),
                    await apalis_client.push_task_with_conn_async(c, "m", Task(args=2)),
                ]
                got += await apalis_client.push_many_with_conn_async(c, "m", [Task(args=3)])
                cur = await c.execute(b"SELECT id, job FROM apalis.jobs ORDER BY job")
                return list(got), await cur.fetchall()

        ids, rows = asyncio.run(go())
    assert rows == [(ids[0], b"1"), (ids[1], b"2"), (ids[2], b"3")]


def test_pool_backed_push_commits_and_restores_the_connection(
    migrated_db: str, flavor: Flavor, query: Query
) -> None:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    if flavor.name == "sync":
        with ConnectionPool(migrated_db, min_size=1, max_size=1, open=True) as pool:
            storage = PostgresStorage[dict[str, int]]("pooled", pool=pool)
            ids: list[str] = [storage.push({"n": 1}), storage.push_task(Task(args={"n": 2}))]
            ids += storage.push_many([Task(args={"n": 3})])
            with pool.connection() as conn:
                autocommit = conn.autocommit
    else:

        async def go() -> tuple[list[str], bool]:
            async with AsyncConnectionPool(migrated_db, min_size=1, max_size=1, open=False) as pool:
                astorage = AsyncPostgresStorage[dict[str, int]]("pooled", pool=pool)
                got = [await astorage.push({"n": 1}), await astorage.push_task(Task(args={"n": 2}))]
                got += await astorage.push_many([Task(args={"n": 3})])
                async with pool.connection() as conn:
                    return list(got), conn.autocommit

        ids, autocommit = asyncio.run(go())
    assert autocommit is False
    assert query(migrated_db, "SELECT id FROM apalis.jobs ORDER BY job") == [(i,) for i in ids]


def test_storage_without_pool_says_how_to_push(flavor: Flavor) -> None:
    with pytest.raises(InvalidArgument, match="no pool"):
        if flavor.name == "sync":
            PostgresStorage[int]("q").push(1)
        else:
            asyncio.run(AsyncPostgresStorage[int]("q").push(1))
