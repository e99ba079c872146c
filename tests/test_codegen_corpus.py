"""A corpus of broken input: every one gets a ``file:line`` message, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from apalis_codegen.main import main as codegen_main

SCHEMA = "CREATE TABLE t (id integer PRIMARY KEY, name text NOT NULL, doc jsonb);\n"

# (id, query file text, line of the message, text the message holds)
CORPUS: list[tuple[str, str, int, str]] = [
    ("empty-header", "-- name:\nSELECT 1 AS x;\n", 1, "malformed header"),
    ("no-command", "-- name: a\nSELECT 1 AS x;\n", 1, "malformed header"),
    ("bare-colon", "\n-- name: a :\nSELECT 1 AS x;\n", 2, "malformed header"),
    ("extra-word", "-- name: a :one more\nSELECT 1 AS x;\n", 1, "malformed header"),
    ("block-no-command", "/* name: a */\nSELECT 1 AS x;\n", 1, "malformed header"),
    ("typo-key", "-- nmae: a :one\nSELECT 1 AS x;\n", 1, "looks like a query header"),
    ("missing-colon", "-- name a :one\nSELECT 1 AS x;\n", 1, "looks like a query header"),
    ("unknown-command", "-- name: a :all\nSELECT 1 AS x;\n", 1, "unknown command ':all'"),
    ("iter-command", "-- name: a :iter\nSELECT 1 AS x;\n", 1, "unknown command ':iter'"),
    ("case-command", "-- name: a :One\nSELECT 1 AS x;\n", 1, "unknown command ':One'"),
    (
        "duplicate",
        "-- name: a :one\nSELECT 1 AS x;\n-- name: a :one\nSELECT 2 AS x;\n",
        3,
        "duplicate query name 'a'",
    ),
    ("no-sql", "-- name: a :one\n-- only a comment\n", 1, "has no SQL"),
    ("symbol-name", "-- name: -- :one\nSELECT 1 AS x;\n", 1, "Python name"),
    ("emoji-name", "-- name: \U0001f4a5 :one\nSELECT 1 AS x;\n", 1, "no letters or digits"),
    (
        "case-collision",
        "-- name: getT :one\nSELECT 1 AS x;\n-- name: GetT :one\nSELECT 1 AS x;\n",
        3,
        "both become the function name 'get_t'",
    ),
    (
        "bad-arg-name",
        "-- name: a :one\nSELECT sqlc.arg('bad name')::int AS x;\n",
        2,
        "is not a valid parameter name",
    ),
    ("syntax", "-- name: a :one\n-- doc\nSELEC 1;\n", 3, 'syntax error at or near "SELEC"'),
    (
        "no-column",
        "-- name: a :many\nSELECT id,\n       nosuch\n  FROM t;\n",
        3,
        'column "nosuch" does not exist',
    ),
    ("unterminated", "-- name: a :one\nSELECT 'abc AS x;\n", 2, "unterminated quoted string"),
    ("gap", "-- name: a :one\nSELECT $2::int AS x;\n", 2, "uses $2 but not $1"),
    (
        "mixed",
        "-- name: a :one\nSELECT * FROM t WHERE id = $1 AND name = @name;\n",
        2,
        "mixes positional $N parameters with named ones",
    ),
    (
        "two-types",
        "-- name: a :one\nSELECT @x::int AS a, @x::text AS b;\n",
        2,
        "parameter @x of query 'a' is used with two types: int4, text",
    ),
    ("one-no-rows", "-- name: a :one\nDELETE FROM t;\n", 2, "is :one but returns no columns"),
    (
        "copy-shape",
        "-- name: a :copyfrom\nUPDATE t SET name = $1;\n",
        2,
        ":copyfrom, which needs the shape",
    ),
    ("batch-no-params", "-- name: a :batchexec\nDELETE FROM t;\n", 2, "takes no parameters"),
    (
        "nullable-unknown",
        "-- name: a :exec\n-- nullable: nope\nDELETE FROM t WHERE id = @id;\n",
        1,
        "'-- nullable: nope' names no parameter",
    ),
    ("type-syntax", "-- name: a :one\n-- type: doc\nSELECT doc FROM t;\n", 1, "'-- type: doc'"),
    (
        "type-not-json",
        "-- name: a :one\n-- type: name = my.Model\nSELECT name FROM t;\n",
        3,
        "applies to json/jsonb values only",
    ),
    ("prepare", "-- name: a :one\n-- prepare: client\nSELECT 1 AS x;\n", 1, "'-- prepare: client'"),
    (
        "duplicate-column",
        "-- name: a :one\nSELECT 1 AS x, 2 AS x;\n",
        2,
        "returns column(s) x more than once",
    ),
    ("unmapped", "-- name: a :one\nSELECT point(1, 2) AS p;\n", 2, "type point has no Python"),
    (
        "field-collision",
        '-- name: a :one\nSELECT 1 AS "a-b", 2 AS a_b;\n',
        2,
        "both become the field 'a_b'",
    ),
]


def _run(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = codegen_main(
        [
            "--queries",
            str(tmp_path / "queries"),
            "--schema",
            str(tmp_path / "schema"),
            "--out",
            str(tmp_path / "out"),
            "--package",
            "corpus",
            "--database-url",
            url,
        ]
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return code, err


@pytest.fixture
def case(tmp_path: Path) -> Path:
    (tmp_path / "queries").mkdir()
    (tmp_path / "schema").mkdir()
    (tmp_path / "schema" / "0001.sql").write_text(SCHEMA)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "line", "needle"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS]
)
def test_broken_query_gets_a_located_message(
    case: Path,
    server_url: str,
    capsys: pytest.CaptureFixture[str],
    text: str,
    line: int,
    needle: str,
) -> None:
    path = case / "queries" / "q.sql"
    path.write_text(text, encoding="utf-8")
    code, err = _run(case, server_url, capsys)
    assert code == 2
    assert f"{path}:{line}:" in err, err
    assert needle in err, err


def test_a_file_that_is_not_utf8_is_located(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = case / "queries" / "q.sql"
    path.write_bytes(b"-- name: a :one\nSELECT '\xff' AS x;\n")
    code, err = _run(case, server_url, capsys)
    assert code == 2 and f"{path}:1: not UTF-8 text" in err


def test_a_reserved_module_name_is_located(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = case / "queries" / "models.sql"
    path.write_text("-- name: a :one\nSELECT 1 AS x;\n")
    code, err = _run(case, server_url, capsys)
    assert code == 2 and f"{path}:1: a query file may not be named models.sql" in err


def test_a_failing_schema_file_is_located(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (case / "schema" / "0002.sql").write_text("CREATE TABLE ok (id int);\n\nCREATE TABLE (;\n")
    (case / "queries" / "q.sql").write_text("-- name: a :one\nSELECT 1 AS x;\n")
    code, err = _run(case, server_url, capsys)
    assert code == 2 and "0002.sql:3: schema file failed: syntax error" in err


def test_an_unreachable_server_is_a_message(case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (case / "queries" / "q.sql").write_text("-- name: a :one\nSELECT 1 AS x;\n")
    code = codegen_main(
        [
            "--queries",
            str(case / "queries"),
            "--schema",
            str(case / "schema"),
            "--out",
            str(case / "out"),
            "--database-url",
            "postgresql://nobody@127.0.0.1:1/x",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot use --database-url" in err and "Traceback" not in err
