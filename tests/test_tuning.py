"""Autovacuum tuning of apalis.jobs: applied on request only, sync and async, and from the CLI."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from conftest import Flavor, Query
from test_ops_cli import run, run_json

from apalis_client.errors import PermissionDenied
from apalis_client.migrate import verify_schema
from apalis_client.tuning import tune_autovacuum
from apalis_client.tuning_async import tune_autovacuum_async

RELOPTIONS = "SELECT reloptions FROM pg_class WHERE oid = 'apalis.jobs'::regclass"
TUNED = {
    "autovacuum_vacuum_scale_factor=0",
    "autovacuum_vacuum_threshold=10000",
    "autovacuum_vacuum_insert_scale_factor=0",
    "autovacuum_vacuum_insert_threshold=10000",
    "autovacuum_analyze_scale_factor=0",
    "autovacuum_analyze_threshold=10000",
    "autovacuum_vacuum_cost_delay=0",
    "vacuum_index_cleanup=on",
}


def _options(query: Query, url: str) -> set[str]:
    ((options,),) = query(url, RELOPTIONS)
    return set(options or [])


def test_a_plain_migrate_leaves_autovacuum_at_the_server_default(
    migrated_db: str, query: Query
) -> None:
    assert _options(query, migrated_db) == set()


def test_tune_autovacuum_sets_the_table_options(
    flavor: Flavor, migrated_db: str, query: Query
) -> None:
    if flavor.name == "sync":
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            tune_autovacuum(conn)
    else:

        async def go() -> None:
            async with await psycopg.AsyncConnection.connect(migrated_db, autocommit=True) as c:
                await tune_autovacuum_async(c)

        asyncio.run(go())
    assert _options(query, migrated_db) == TUNED
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        assert verify_schema(conn).ok  # table options are not part of the contract's shape


def test_tune_autovacuum_inside_a_transaction_is_part_of_it(migrated_db: str, query: Query) -> None:
    with psycopg.connect(migrated_db) as conn:
        tune_autovacuum(conn)
        conn.rollback()
    assert _options(query, migrated_db) == set()


def test_migrate_cli_tunes_autovacuum_on_request(
    capsys: pytest.CaptureFixture[str], empty_db: str, query: Query
) -> None:
    code, out, err = run(capsys, "migrate", "--database-url", empty_db, "--tune-autovacuum")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == (
        "apalis.jobs: autovacuum tuned (vacuum after 10,000 changed rows, unthrottled, "
        "indexes cleaned every time)"
    )
    assert _options(query, empty_db) == TUNED


def test_migrate_cli_json_reports_the_tuning(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    code, doc = run_json(capsys, "migrate", "--database-url", migrated_db, "--tune-autovacuum")
    assert code == 0
    assert isinstance(doc, dict) and doc["autovacuum_tuned"] is True


def test_tuning_without_table_ownership_names_the_privilege(migrated_db: str) -> None:
    role = "apalis_tuning_nobody"
    with psycopg.connect(migrated_db, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT USAGE ON SCHEMA apalis TO {role}")  # so ownership is what lacks
        try:
            with (
                psycopg.connect(f"{migrated_db} user={role}", autocommit=True) as conn,
                pytest.raises(PermissionDenied) as info,
            ):
                tune_autovacuum(conn)
            assert str(info.value).startswith("tune autovacuum")
            assert "owner" in str(info.value)
        finally:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")
