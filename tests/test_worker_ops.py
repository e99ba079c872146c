"""Low-level worker operations, each test run against the sync and the async twin."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from conftest import Flavor
from worker_support import push, rows, task

from apalis_client import worker_ops as ops
from apalis_client import worker_ops_async as ops_async
from apalis_client.errors import (
    AlreadyRegistered,
    DatabaseError,
    InvalidArgument,
    StaleAcknowledgement,
    WorkerNotRegistered,
)
from apalis_client.worker_logic import HEARTBEAT_TIMEOUT_MESSAGE, Outcome
from apalis_client.worker_ops import Lease


class Ops:
    """Calls ``worker_ops.<name>`` or ``worker_ops_async.<name>_async`` on a fresh connection."""

    def __init__(self, flavor: Flavor, url: str) -> None:
        self.sync = flavor.name == "sync"
        self.url = url

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.sync:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    return getattr(ops, name)(conn, *args, **kwargs)

            async def go() -> Any:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as c:
                    return await getattr(ops_async, f"{name}_async")(c, *args, **kwargs)

            return asyncio.run(go())

        return call


@pytest.fixture
def op(flavor: Flavor, migrated_db: str) -> Ops:
    return Ops(flavor, migrated_db)


def make_silent(url: str, worker_id: str, seconds: int = 3600) -> None:
    rows(
        url,
        "UPDATE apalis.workers SET last_seen = now() - make_interval(secs => %s) "
        "WHERE id = %s RETURNING id",
        seconds,
        worker_id,
    )


def test_register_writes_the_worker_row_with_a_fresh_ulid_lease(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    (row,) = rows(migrated_db, "SELECT * FROM apalis.workers")
    assert (row["id"], row["worker_type"], row["storage_name"]) == ("w1", "q", "PostgresStorage")
    assert row["lease_token"] == lease.lease_token
    assert len(lease.lease_token) == 26 and lease.lease_token.isupper()
    assert row["started_at"] is not None


def test_second_registration_is_refused_while_the_first_is_alive(op: Ops) -> None:
    op.register_worker("q", "w1")
    with pytest.raises(AlreadyRegistered, match="'w1' on queue 'q'"):
        op.register_worker("q", "w1")


def test_registration_takes_over_after_the_threshold_and_the_old_lease_fails(
    op: Ops, migrated_db: str
) -> None:
    first = op.register_worker("q", "w1", orphan_threshold=60)
    make_silent(migrated_db, "w1", 61)
    second = op.register_worker("q", "w1", orphan_threshold=60)
    assert second.lease_token != first.lease_token
    with pytest.raises(WorkerNotRegistered):
        op.heartbeat(first)
    op.heartbeat(second)


def test_registration_reenqueues_the_queues_orphans(op: Ops, migrated_db: str) -> None:
    dead = op.register_worker("q", "dead")
    (tid,) = push(migrated_db, "q", [1])
    op.claim_next(dead, batch=1)
    make_silent(migrated_db, "dead")
    op.register_worker("q", "w2", orphan_threshold=60)
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"], row["lock_by"]) == ("Pending", 1, None)
    assert row["last_result"] == {"Err": HEARTBEAT_TIMEOUT_MESSAGE}


def test_register_inside_a_caller_transaction_leaves_commit_to_the_caller(
    flavor: Flavor, migrated_db: str
) -> None:
    if flavor.name == "sync":
        with psycopg.connect(migrated_db) as conn:
            ops.register_worker(conn, "q", "w1")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            conn.rollback()
    else:

        async def go() -> None:
            async with await psycopg.AsyncConnection.connect(migrated_db) as conn:
                await ops_async.register_worker_async(conn, "q", "w1")
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
                await conn.rollback()

        asyncio.run(go())
    assert rows(migrated_db, "SELECT id FROM apalis.workers") == []


def test_claim_next_takes_tasks_straight_to_running_in_priority_order(
    op: Ops, migrated_db: str
) -> None:
    lease = op.register_worker("q", "w1")
    ids = push(migrated_db, "q", [0, 1, 2], priorities=[0, 5, 1])
    push(migrated_db, "other", [9])
    claimed = op.claim_next(lease, batch=2)
    assert [t.id for t in claimed] == [ids[1], ids[2]]
    for t in claimed:
        assert (t.status, t.lock_by, t.attempts) == ("Running", "w1", 0)
        assert t.lock_at is not None and t.lock_at.microsecond == 0


def test_claim_by_ids_claims_only_the_given_ids(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    ids = push(migrated_db, "q", [0, 1, 2])
    claimed = op.claim_by_ids(lease, [ids[2], "01NOTATASK0000000000000000"], batch=10)
    assert [t.id for t in claimed] == [ids[2]]
    assert task(migrated_db, ids[0])["status"] == "Pending"


def test_lock_task_is_idempotent_for_its_worker_and_refused_to_others(
    op: Ops, migrated_db: str
) -> None:
    mine = op.register_worker("q", "w1")
    other = op.register_worker("q", "w2")
    (tid,) = push(migrated_db, "q", [0])
    first = op.lock_task(mine, tid)
    again = op.lock_task(mine, tid)
    assert first is not None and again is not None
    assert again.lock_at == first.lock_at
    assert op.lock_task(other, tid) is None


def test_ack_success_stores_ok_and_marks_done(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    (tid,) = push(migrated_db, "q", [0])
    (claimed,) = op.claim_next(lease, batch=1)
    op.ack(lease, claimed, Outcome.success({"sent": True}))
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"], row["last_result"]) == (
        "Done",
        1,
        {"Ok": {"sent": True}},
    )
    assert row["done_at"] is not None


def test_ack_failure_is_failed_while_attempts_remain_then_killed(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    (tid,) = push(migrated_db, "q", [0], max_attempts=2)
    (claimed,) = op.claim_next(lease, batch=1)
    op.ack(lease, claimed, Outcome.failure("first"))
    assert (task(migrated_db, tid)["status"], task(migrated_db, tid)["attempts"]) == ("Failed", 1)
    (claimed,) = op.claim_next(lease, batch=1)
    op.ack(lease, claimed, Outcome.failure("second"))
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"], row["last_result"]) == (
        "Killed",
        2,
        {"Err": "second"},
    )


def test_explicit_kill_ends_the_task_with_attempts_left(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    (tid,) = push(migrated_db, "q", [0], max_attempts=5)
    (claimed,) = op.claim_next(lease, batch=1)
    op.ack(lease, claimed, Outcome.kill("poison"))
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"]) == ("Killed", 1)
    assert op.claim_next(lease, batch=1) == []


def test_stale_ack_raises_and_the_newer_outcome_stands(op: Ops, migrated_db: str) -> None:
    slow_worker = op.register_worker("q", "slow")
    (tid,) = push(migrated_db, "q", [0])
    (old_claim,) = op.claim_next(slow_worker, batch=1)
    make_silent(migrated_db, "slow")
    op.reenqueue_orphans("q", orphan_threshold=60)
    fresh = op.register_worker("q", "fresh")
    (new_claim,) = op.claim_next(fresh, batch=1)
    op.ack(fresh, new_claim, Outcome.success("new"))
    with pytest.raises(StaleAcknowledgement, match=tid):
        op.ack(slow_worker, old_claim, Outcome.success("old"))
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"], row["lock_by"], row["last_result"]) == (
        "Done",
        2,
        "fresh",
        {"Ok": "new"},
    )


def test_ack_without_a_lease_is_refused_before_any_sql(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    (tid,) = push(migrated_db, "q", [0])
    (claimed,) = op.claim_next(lease, batch=1)
    with pytest.raises(InvalidArgument, match=r"ack needs the worker's Lease, got None.*UNFENCED"):
        op.ack(None, claimed, Outcome.success("stray"))
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"], row["last_result"]) == ("Running", 0, None)


def test_unfenced_ack_named_explicitly_acks_as_the_task_owner(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    (tid,) = push(migrated_db, "q", [0])
    (claimed,) = op.claim_next(lease, batch=1)
    op.ack(ops.UNFENCED, claimed, Outcome.success("admin"))
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"], row["last_result"]) == ("Done", 1, {"Ok": "admin"})


def test_ack_with_a_forged_lease_token_is_stale(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    (tid,) = push(migrated_db, "q", [0])
    (claimed,) = op.claim_next(lease, batch=1)
    forged = Lease(lease.worker_id, lease.queue, "01AAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(StaleAcknowledgement, match=tid):
        op.ack(forged, claimed, Outcome.success("stray"))
    assert task(migrated_db, tid)["status"] == "Running"


def test_ack_many_without_a_lease_is_refused(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    push(migrated_db, "q", [0])
    (claimed,) = op.claim_next(lease, batch=1)
    with pytest.raises(InvalidArgument, match="ack_many needs the worker's Lease, got None"):
        op.ack_many(None, [(claimed, Outcome.success("stray"))])


@pytest.mark.parametrize("token", ["", None])
def test_a_lease_with_a_blank_token_cannot_be_built(token: object) -> None:
    with pytest.raises(InvalidArgument, match=r"lease_token must be a non-empty str.*UNFENCED"):
        Lease("w1", "q", token)  # type: ignore[arg-type]


def test_duplicate_ack_is_stale(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    push(migrated_db, "q", [0])
    (claimed,) = op.claim_next(lease, batch=1)
    op.ack(lease, claimed, Outcome.success(1))
    with pytest.raises(StaleAcknowledgement):
        op.ack(lease, claimed, Outcome.failure("late"))


def test_ack_many_acks_each_under_its_guard_and_reports_the_stale(
    op: Ops, migrated_db: str
) -> None:
    lease = op.register_worker("q", "w1")
    ids = push(migrated_db, "q", [0, 1, 2], max_attempts=1)
    claimed = op.claim_next(lease, batch=3)
    op.ack(lease, claimed[0], Outcome.success("already"))  # makes the first one stale
    report = op.ack_many(
        lease,
        [
            (claimed[0], Outcome.success("again")),
            (claimed[1], Outcome.success("ok")),
            (claimed[2], Outcome.failure("boom")),
        ],
    )
    assert report.statuses == {ids[1]: "Done", ids[2]: "Killed"}
    assert [t.id for t in report.stale] == [ids[0]]
    assert task(migrated_db, ids[0])["last_result"] == {"Ok": "already"}


def test_ack_and_claim_records_the_acks_and_claims_the_next_tasks(
    op: Ops, migrated_db: str
) -> None:
    lease = op.register_worker("q", "w1")
    ids = push(migrated_db, "q", [0, 1, 2, 3], max_attempts=1)
    first = op.claim_next(lease, batch=2)
    report, claimed = op.ack_and_claim(
        lease, [(first[0], Outcome.success("ok")), (first[1], Outcome.failure("boom"))], batch=5
    )
    assert report.statuses == {ids[0]: "Done", ids[1]: "Killed"}
    assert report.stale == []
    assert [t.id for t in claimed] == ids[2:]
    assert {t.status for t in claimed} == {"Running"}


def test_ack_and_claim_runs_both_in_one_transaction(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    ids = push(migrated_db, "q", [0, 1, 2, 3])
    first = op.claim_next(lease, batch=2)
    op.ack_and_claim(lease, [(t, Outcome.success(None)) for t in first], batch=2)
    # Rows written by one transaction carry its id as xmin.
    xmins = rows(migrated_db, "SELECT DISTINCT xmin::text FROM apalis.jobs WHERE id = ANY(%s)", ids)
    assert len(xmins) == 1


def test_ack_and_claim_with_ids_claims_only_those(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    ids = push(migrated_db, "q", [0, 1, 2])
    (first,) = op.claim_by_ids(lease, [ids[0]], batch=1)
    report, claimed = op.ack_and_claim(lease, [(first, Outcome.success(1))], batch=10, ids=[ids[2]])
    assert report.statuses == {ids[0]: "Done"}
    assert [t.id for t in claimed] == [ids[2]]
    assert task(migrated_db, ids[1])["status"] == "Pending"


def test_ack_and_claim_reports_stale_acks_and_still_claims(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    ids = push(migrated_db, "q", [0, 1])
    (first,) = op.claim_next(lease, batch=1)
    op.ack(lease, first, Outcome.success("already"))
    report, claimed = op.ack_and_claim(lease, [(first, Outcome.success("again"))], batch=1)
    assert [t.id for t in report.stale] == [ids[0]]
    assert [t.id for t in claimed] == [ids[1]]
    assert task(migrated_db, ids[0])["last_result"] == {"Ok": "already"}


def test_ack_and_claim_without_acks_is_a_plain_claim(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    ids = push(migrated_db, "q", [0, 1])
    report, claimed = op.ack_and_claim(lease, [], batch=1)
    assert (report.statuses, report.stale) == ({}, [])
    assert [t.id for t in claimed] == ids[:1]


def test_ack_and_claim_whose_claim_fails_records_no_ack(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    ids = push(migrated_db, "q", [0, 1])
    (first,) = op.claim_next(lease, batch=1)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        # A real server-side failure of the second statement only: claims are refused.
        conn.execute(
            "CREATE FUNCTION refuse_claims() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF OLD.status = 'Pending' THEN RAISE EXCEPTION 'claims refused'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_claims BEFORE UPDATE ON apalis.jobs "
            "FOR EACH ROW EXECUTE FUNCTION refuse_claims()"
        )
    with pytest.raises(DatabaseError, match=r"acknowledge tasks and claim more.*claims refused"):
        op.ack_and_claim(lease, [(first, Outcome.success(1))], batch=1)
    assert [task(migrated_db, i)["status"] for i in ids] == ["Running", "Pending"]


def test_ack_and_claim_rejects_a_batch_below_one_before_any_sql(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    push(migrated_db, "q", [0, 1])
    (first,) = op.claim_next(lease, batch=1)
    with pytest.raises(InvalidArgument, match="batch must be at least 1, got 0"):
        op.ack_and_claim(lease, [(first, Outcome.success(1))], batch=0)
    assert task(migrated_db, first.id)["status"] == "Running"


def test_ack_after_losing_the_lease_is_stale(op: Ops, migrated_db: str) -> None:
    first = op.register_worker("q", "w1", orphan_threshold=60)
    push(migrated_db, "q", [0])
    (claimed,) = op.claim_next(first, batch=1)
    make_silent(migrated_db, "w1")
    # The takeover re-enqueues the orphan; the old holder's ack must not land.
    op.register_worker("q", "w1", orphan_threshold=60)
    with pytest.raises(StaleAcknowledgement):
        op.ack(first, claimed, Outcome.success(1))


def test_reenqueue_kills_an_orphan_at_max_attempts(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    (tid,) = push(migrated_db, "q", [0], max_attempts=1)
    op.claim_next(lease, batch=1)
    make_silent(migrated_db, "w1")
    report = op.reenqueue_orphans("q", orphan_threshold=60)
    assert (report.requeued, report.killed) == ([], [tid])
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"], row["last_result"]) == (
        "Killed",
        1,
        {"Err": HEARTBEAT_TIMEOUT_MESSAGE},
    )


def test_deregister_frees_the_id_at_once(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    assert op.deregister_worker(lease) is True
    assert rows(migrated_db, "SELECT lease_token FROM apalis.workers") == [{"lease_token": None}]
    again = op.register_worker("q", "w1")
    assert op.deregister_worker(lease) is False
    op.heartbeat(again)


def test_heartbeat_without_registration_raises(op: Ops) -> None:
    with pytest.raises(WorkerNotRegistered):
        op.heartbeat(Lease("nobody", "q", "01AAAAAAAAAAAAAAAAAAAAAAAA"))
