"""The generator's capture check: calls another schema's overload could take over are refused."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apalis_codegen import trust
from apalis_codegen.main import main as codegen_main
from apalis_codegen.parse import Statement, parse_file

HERE = Path(__file__).resolve().parent
CAPTURE = HERE / "fixtures" / "capture"
SHOP_SCHEMA = HERE / "golden" / "basic" / "schema"


def _case(tmp_path: Path, query_file: str) -> list[str]:
    (tmp_path / "queries").mkdir()
    shutil.copy(CAPTURE / query_file, tmp_path / "queries" / query_file)
    return [
        "--queries",
        str(tmp_path / "queries"),
        "--schema",
        str(SHOP_SCHEMA),
        "--out",
        str(tmp_path / "out"),
        "--package",
        "capture_case",
    ]


def test_generator_refuses_an_unqualified_polymorphic_call_naming_file_and_line(
    tmp_path: Path,
    server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(trust.MODE_VARIABLE, "error")
    args = [*_case(tmp_path, "unqualified.sql"), "--database-url", server_url]
    assert codegen_main(args) == 2
    err = capsys.readouterr().err
    assert "unqualified.sql:5: query 'item_names' calls aggregate pg_catalog.array_agg" in err
    assert "polymorphic" in err
    assert "pg_catalog.array_agg(...)" in err
    assert not (tmp_path / "out" / "capture_case").exists()


def test_codegen_check_fails_on_an_unqualified_polymorphic_call(
    tmp_path: Path,
    server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(trust.MODE_VARIABLE, "error")
    args = [*_case(tmp_path, "unqualified.sql"), "--database-url", server_url, "--check"]
    assert codegen_main(args) != 0
    assert "unqualified.sql:5:" in capsys.readouterr().err


def test_generator_accepts_the_schema_qualified_statement(
    tmp_path: Path,
    server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(trust.MODE_VARIABLE, "error")
    assert codegen_main([*_case(tmp_path, "qualified.sql"), "--database-url", server_url]) == 0
    assert "capture" not in capsys.readouterr().err
    assert (tmp_path / "out" / "capture_case" / "qualified.py").exists()


def test_warn_mode_reports_the_call_and_still_generates(
    tmp_path: Path,
    server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(trust.MODE_VARIABLE, "warn")
    assert codegen_main([*_case(tmp_path, "unqualified.sql"), "--database-url", server_url]) == 0
    assert "warning: " in capsys.readouterr().err


def test_trust_option_refuses_even_where_the_environment_says_warn(
    tmp_path: Path,
    server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(trust.MODE_VARIABLE, "warn")
    args = [*_case(tmp_path, "unqualified.sql"), "--database-url", server_url, "--trust", "error"]
    assert codegen_main(args) == 2
    assert "unqualified.sql:5: query 'item_names' calls aggregate" in capsys.readouterr().err
    assert not (tmp_path / "out" / "capture_case").exists()


def test_users_sql_is_reported_not_refused_by_default(
    tmp_path: Path,
    server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(trust.MODE_VARIABLE, raising=False)
    assert codegen_main([*_case(tmp_path, "unqualified.sql"), "--database-url", server_url]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "unqualified.sql:5:" in err
    assert (tmp_path / "out" / "capture_case" / "unqualified.py").exists()


def test_trust_off_neither_reports_nor_refuses(
    tmp_path: Path,
    server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(trust.MODE_VARIABLE, "error")
    args = [*_case(tmp_path, "unqualified.sql"), "--database-url", server_url, "--trust", "off"]
    assert codegen_main(args) == 0
    assert "unqualified.sql" not in capsys.readouterr().err


@pytest.fixture
def shop_conn(empty_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute((SHOP_SCHEMA / "0001_shop.sql").read_bytes())
        yield conn


def _statement(sql: str, tmp: Path) -> Statement:
    # Through the real parser, so placeholders are cut the way the generator cuts them.
    path = tmp / "q.sql"
    path.write_text(f"-- name: q :many\n{sql};\n", encoding="utf-8")
    (statement,) = parse_file(path)
    return statement


def _flagged(conn: psycopg.Connection[Any], sql: str, tmp: Path) -> list[str]:
    calls = trust.calls(conn, _statement(sql, tmp))
    return [f"{c.schema}.{c.name}" for c in calls if c.capturable]


@pytest.mark.parametrize(
    ("sql", "flagged"),
    [
        ("SELECT array_to_string(tags, ',') FROM shop.items", ["pg_catalog.array_to_string"]),
        ("SELECT cardinality(tags) FROM shop.items", ["pg_catalog.cardinality"]),
        ("SELECT to_jsonb(name) FROM shop.items", ["pg_catalog.to_jsonb"]),
        ("SELECT jsonb_build_object('a', name) FROM shop.items", ["pg_catalog.jsonb_build_object"]),
        ("SELECT x FROM unnest(@a::int4[]) AS x", ["pg_catalog.unnest"]),
        # unnest(a, b) in FROM is expanded by the parser into pg_catalog.unnest calls.
        ("SELECT * FROM unnest(@a::int4[], @b::text[]) AS t(a, b)", []),
        # An untyped parameter is resolved by the candidates: a text overload would win.
        ("SELECT pg_advisory_lock(@key)", ["pg_catalog.pg_advisory_lock"]),
        ("SELECT pg_advisory_lock(@key::int8)", []),
        ("SELECT abs(id::int4) + 1 FROM shop.items", []),
        # An implicit cast (varchar -> text, int4 -> float8): an exact overload matches better.
        ("SELECT lower(name) FROM shop.items", []),
        ("SELECT id FROM shop.items WHERE name = @name", []),
        ("SELECT lower(name::varchar) FROM shop.items", ["pg_catalog.lower"]),
        ("SELECT id FROM shop.items WHERE ratio = 1", ["pg_catalog.="]),
        ("SELECT id FROM shop.items WHERE id = 1::int4", []),
        ("SELECT pg_catalog.array_to_string(tags, ',') FROM shop.items", []),
        ("SELECT id FROM shop.items WHERE id OPERATOR(pg_catalog.=) 1::int4", []),
        ("SELECT x FROM ROWS FROM (pg_catalog.unnest(@a::int4[])) AS x", []),
    ],
)
def test_capture_rule(
    shop_conn: psycopg.Connection[Any], sql: str, flagged: list[str], tmp_path: Path
) -> None:
    assert _flagged(shop_conn, sql, tmp_path) == flagged


def test_the_repository_codegen_refuses_a_capturable_call(tmp_path: Path, server_url: str) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    shutil.copytree(repo / "queries", tmp_path / "queries")
    with (tmp_path / "queries" / "admin.sql").open("a", encoding="utf-8") as f:
        f.write("\n-- name: bad_agg :one\nSELECT array_to_string(ARRAY['a'], ',') AS s;\n")
    env = {k: v for k, v in os.environ.items() if k != trust.MODE_VARIABLE}
    argv = ["--queries", str(tmp_path / "queries"), "--schema", str(repo / "schema")]
    argv += ["--out", str(tmp_path / "out"), "--package", "apalis_generated"]
    done = subprocess.run(
        [sys.executable, "-m", "codegen", *argv, "--database-url", server_url],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "admin.sql:" in done.stderr and "pg_catalog.array_to_string" in done.stderr
    assert "Traceback" not in done.stderr
