"""Exact-type overloads planted in ``public`` never take over the client's statements."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from capture_support import (
    PROBE,
    captured,
    client_statements,
    ddl_signatures,
    derive_calls,
    plant,
    plant_signatures,
    run_each,
    schema_dependencies,
    signatures,
)
from psycopg.conninfo import make_conninfo

import apalis_client
from apalis_client.cli import main


def test_derived_calls_cover_every_statement_with_a_call(migrated_db: str) -> None:
    statements, display = client_statements()
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        calls = derive_calls(conn, statements, display)
    names = {c.name for c in calls}
    # The list comes from the server: these are there because the statements use them.
    assert {"unnest", "count", "jsonb_build_object", "array_to_string", "="} <= names


def test_planted_overloads_in_public_never_run(migrated_db: str) -> None:
    statements, display = client_statements()
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        planted = plant(conn, derive_calls(conn, statements, display))
        assert planted, "nothing was planted"
        taken = captured(conn, statements, display)
        ran = run_each(conn, statements)
    report = "\n".join(
        sorted({f"{c.file}:{c.line}: {c.query}: {c.kind} {c.name} -> {c.schema}" for c in taken})
        + [f"ran: {q}: {m}" for q, m in sorted(ran.items())]
    )
    assert not taken and not ran, f"planted objects captured these calls:\n{report}"


# ---- migrate and the command line, with the overloads planted -------------------------------


def _planted_everywhere(conn: psycopg.Connection[Any], reference_db: str) -> list[str]:
    """Plant overloads of what the client's statements call and of what the DDL binds."""
    statements, display = client_statements()
    with psycopg.connect(reference_db, autocommit=True) as ref:
        wanted = signatures(derive_calls(ref, statements, display))
        wanted += ddl_signatures(schema_dependencies(ref))
    return plant_signatures(conn, wanted)


def test_migrate_binds_no_planted_object_even_with_public_first_on_the_path(
    empty_db: str, migrated_db: str
) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        planted = _planted_everywhere(conn, migrated_db)
    assert any(p.startswith("operator public.=(text, text)") for p in planted), planted
    assert any(p.startswith("function public.now()") for p in planted), planted
    # A session that lists public before pg_catalog would pick these over the built-ins.
    hostile = make_conninfo(empty_db, options="-c search_path=public,pg_catalog")
    with psycopg.connect(hostile, autocommit=True) as conn:
        report = apalis_client.migrate(conn)
        assert report.applied
        assert not apalis_client.migrate(conn).applied  # and again: reads and reconciles
    with psycopg.connect(empty_db, autocommit=True) as conn:
        bound = schema_dependencies(conn)
        assert apalis_client.verify_schema(conn).ok
    assert bound, "no stored expression was read"
    assert {b.schema for b in bound} == {"pg_catalog"}, [
        b for b in bound if b.schema != "pg_catalog"
    ]


def test_every_cli_command_runs_no_planted_object(
    migrated_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        assert _planted_everywhere(conn, migrated_db)
    url = ("--database-url", migrated_db)

    def run(*argv: str, expect: int = 0) -> str:
        code = main([*argv, *url])
        out = capsys.readouterr()
        assert PROBE not in out.out + out.err, out
        assert code == expect, (argv, out)
        return out.out

    run("migrate")
    run("verify")
    first = run("push", "capq", "--json", '{"n": 1}').strip()
    second = run("push", "capq", "--json", '{"n": 2}', "--idempotency-key", "k2").strip()
    run("push", "capq", "--json", '{"n": 2}', "--idempotency-key", "k2", expect=2)
    run("queues")
    run("tasks", "capq")
    run("show", first)
    run("worker", "capq", "worker_support:echo", "--until-idle", "--poll-interval", "0.05")
    run("wait", first, second, "--timeout", "10s")
    run("workers")
    run("retry", first)
    run("kill", first, "--reason", "planted")
    run("cancel", second, expect=1)  # Done already: not in a state to cancel
    run("purge", "capq", "--all")
    run("prune", "capq")
    assert run("tasks", "capq", "--json").strip() == "[]"
