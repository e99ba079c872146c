"""Exact-type overloads planted in ``public`` never take over the client's statements."""

from __future__ import annotations

import psycopg
from capture_support import captured, client_statements, derive_calls, plant, run_each


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
