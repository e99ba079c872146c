"""The psycopg boundary: lost connections, unknown outcomes, cleanups that fail, bad inputs."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

import apalis_client
from apalis_client import ConnectionFailed, InvalidArgument, Task
from apalis_client.codec import to_json
from apalis_client.errors import (
    DatabaseError,
    cleanup_after,
    connection_lost,
    database_errors,
    translate_error,
)
from apalis_client.limits import MAX_PAYLOAD_DEPTH, check_metadata_json, check_run_at


def _terminate(
    server_url: str, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))


# ---- lost and terminated connections ---------------------------------------------------------


def test_a_terminated_backend_is_connection_failed(
    flavor: Any, server_url: str, migrated_db: str
) -> None:
    def sync() -> BaseException:
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            _terminate(server_url, conn)
            with pytest.raises(ConnectionFailed) as info, database_errors("find task"):
                conn.execute("SELECT 1")
            return info.value

    async def run_async() -> BaseException:
        async with await psycopg.AsyncConnection.connect(migrated_db, autocommit=True) as conn:
            _terminate(server_url, conn)
            with pytest.raises(ConnectionFailed) as info, database_errors("find task"):
                await conn.execute("SELECT 1")
            return info.value

    error = sync() if flavor.name == "sync" else asyncio.run(run_async())
    assert str(error).startswith("find task failed: ")
    assert isinstance(error.__cause__, psycopg.OperationalError)
    assert not error.outcome_unknown  # type: ignore[attr-defined]


def test_a_push_whose_connection_was_terminated_is_connection_failed(
    server_url: str, migrated_db: str
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        _terminate(server_url, conn)
        with pytest.raises(apalis_client.ApalisError) as info:
            apalis_client.push_with_conn(conn, "q", {"a": 1})
    assert isinstance(info.value, ConnectionFailed)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert info.value.outcome_unknown  # an autocommit INSERT may have committed unanswered


def test_a_push_that_opened_the_transaction_on_a_terminated_connection_is_connection_failed(
    flavor: Any, server_url: str, migrated_db: str
) -> None:
    # The push opens the caller's transaction and, failing, rolls it back: that rollback
    # fails on the dead connection too, and must not hide the push's own error.
    def sync() -> BaseException:
        with psycopg.connect(migrated_db) as conn:
            _terminate(server_url, conn)
            with pytest.raises(apalis_client.ApalisError) as info:
                apalis_client.push_with_conn(conn, "q", {"a": 1})
            return info.value

    async def run_async() -> BaseException:
        async with await psycopg.AsyncConnection.connect(migrated_db) as conn:
            _terminate(server_url, conn)
            with pytest.raises(apalis_client.ApalisError) as info:
                await apalis_client.push_with_conn_async(conn, "q", {"a": 1})
            return info.value

    error = sync() if flavor.name == "sync" else asyncio.run(run_async())
    assert isinstance(error, ConnectionFailed)
    assert not error.outcome_unknown  # nothing commits before the caller's COMMIT
    assert str(error).startswith("push failed: terminating connection due to administrator")


def test_a_push_in_the_callers_pipeline_on_a_terminated_connection_is_connection_failed(
    server_url: str, migrated_db: str
) -> None:
    # The push first syncs the caller's queued statements: that is where the loss shows.
    with (
        psycopg.connect(migrated_db, autocommit=True) as conn,
        pytest.raises(psycopg.OperationalError),  # the caller's own pipeline exit
        conn.pipeline(),
    ):
        conn.execute("SELECT 1")
        _terminate(server_url, conn)
        with pytest.raises(apalis_client.ApalisError) as info:
            apalis_client.push_with_conn(conn, "q", {"a": 1})
    assert isinstance(info.value, ConnectionFailed)
    assert not info.value.outcome_unknown  # the push's INSERT was never sent
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (pg_errors.AdminShutdown, "57P01"),
        (pg_errors.CrashShutdown, "57P02"),
        (pg_errors.CannotConnectNow, "57P03"),
    ],
)
def test_shutdown_sqlstates_are_connection_failed(error: type[psycopg.Error], state: str) -> None:
    exc = error("terminating connection due to administrator command")
    assert exc.sqlstate == state
    assert connection_lost(exc)
    translated = translate_error("acknowledge task", exc)
    assert type(translated) is ConnectionFailed
    assert str(translated) == (
        "acknowledge task failed: terminating connection due to administrator command"
    )


def test_a_lost_connection_where_a_commit_may_have_happened_says_the_outcome_is_unknown() -> None:
    exc = psycopg.OperationalError("server closed the connection unexpectedly")
    translated = translate_error("push", exc, may_have_committed=True)
    assert isinstance(translated, ConnectionFailed)
    assert translated.outcome_unknown
    message = str(translated)
    assert message.startswith("push failed: server closed the connection unexpectedly; ")
    assert "the outcome is unknown" in message
    assert "idempotency keys" in message
    assert "IdempotencyConflict" in message


def test_an_ordinary_error_is_not_a_connection_loss(migrated_db: str) -> None:
    with (
        psycopg.connect(migrated_db, autocommit=True) as conn,
        pytest.raises(DatabaseError) as info,
        database_errors("list tasks"),
    ):
        conn.execute("SELECT 1/0")
    assert not isinstance(info.value, ConnectionFailed)
    assert str(info.value) == "list tasks failed: division by zero"


# ---- a failed cleanup never hides the original error ----------------------------------------


def test_a_failed_rollback_keeps_the_original_error(
    flavor: Any, server_url: str, migrated_db: str
) -> None:
    def sync() -> BaseException:
        with psycopg.connect(migrated_db) as conn:
            conn.execute("SELECT 1")  # a transaction is open: the cleanup would roll it back
            _terminate(server_url, conn)
            try:
                conn.execute("SELECT 2")
            except psycopg.Error as exc:
                with cleanup_after(exc, "rollback"):
                    conn.rollback()
                return translate_error("push", exc, may_have_committed=False)
        raise AssertionError("the statement on a terminated connection succeeded")

    async def run_async() -> BaseException:
        async with await psycopg.AsyncConnection.connect(migrated_db) as conn:
            await conn.execute("SELECT 1")
            _terminate(server_url, conn)
            try:
                await conn.execute("SELECT 2")
            except psycopg.Error as exc:
                with cleanup_after(exc, "rollback"):
                    await conn.rollback()
                return translate_error("push", exc, may_have_committed=False)
        raise AssertionError("the statement on a terminated connection succeeded")

    error = sync() if flavor.name == "sync" else asyncio.run(run_async())
    assert isinstance(error, ConnectionFailed)


def test_cleanup_after_records_the_cleanup_error_on_the_original() -> None:
    original = psycopg.OperationalError("consuming input failed")
    with cleanup_after(original, "rollback"):
        raise psycopg.OperationalError("the connection is closed")
    recorded = getattr(original, "cleanup_errors")  # noqa: B009  (set at run time)
    assert [str(e) for e in recorded] == ["the connection is closed"]
    notes = getattr(original, "__notes__", None)
    if notes is not None:  # Python 3.11+
        assert notes == [
            "rollback afterwards also failed: OperationalError: the connection is closed"
        ]


# ---- inputs refused before any SQL -----------------------------------------------------------


def test_run_at_past_year_9999_in_utc_is_invalid_argument() -> None:
    late = datetime.fromisoformat("9999-12-31T23:00:00-14:00")
    with pytest.raises(InvalidArgument) as info:
        check_run_at(late)
    assert str(info.value) == (
        "run_at 9999-12-31T23:00:00-14:00 is out of range: it must be between "
        "1970-01-01T00:00:00+00:00 and 9999-12-31T23:59:59+00:00"
    )


def test_run_at_before_year_1_in_utc_is_invalid_argument() -> None:
    early = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=14)))
    with pytest.raises(
        InvalidArgument, match=r"^run_at 0001-01-01T00:30:00\+14:00 is out of range"
    ):
        check_run_at(early)


def test_task_with_an_overflowing_run_at_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="is out of range"):
        Task(args={}, run_at=datetime.fromisoformat("9999-12-31T23:00:00-14:00"))


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_payload_at_serde_json_depth_limit_is_encoded() -> None:
    assert to_json(_nested(MAX_PAYLOAD_DEPTH)) == b"[" * 127 + b"0" + b"]" * 127


def test_payload_nested_past_serde_json_recursion_limit_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as info:
        to_json({"deep": _nested(200)})
    assert str(info.value) == (
        "payload nests arrays/objects 128 levels deep; the limit is 127 (a Rust serde_json "
        "decoder refuses 128 or more: its recursion limit)"
    )


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_payload_integer_outside_i64_and_u64_is_invalid_argument(value: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        to_json({"n": [1, value]})
    assert str(info.value) == (
        f"JSON integer {value} is out of range: serde_json reads integers between "
        "-9223372036854775808 (i64::MIN) and 18446744073709551615 (u64::MAX)"
    )


def test_payload_integers_at_the_i64_and_u64_ends_are_encoded() -> None:
    assert to_json([2**64 - 1, -(2**63)]) == b"[18446744073709551615,-9223372036854775808]"


def test_metadata_nested_past_the_limit_is_invalid_argument() -> None:
    text = '{"a":' * 128 + "1" + "}" * 128
    with pytest.raises(InvalidArgument, match=r"^metadata nests arrays/objects 128 levels deep"):
        check_metadata_json(text)


def test_too_deep_payload_push_runs_no_sql(migrated_db: str, query: Any) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        with pytest.raises(InvalidArgument, match="levels deep"):
            apalis_client.push_with_conn(conn, "q", _nested(500))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert query(migrated_db, "SELECT count(*) FROM apalis.jobs") == [(0,)]
