"""One test per bug the generator had on real-world SQL (each failed before the fix)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apalis_codegen.main import main as codegen_main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def case(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "queries").mkdir()
    (tmp_path / "schema").mkdir()
    (tmp_path / "schema" / "0001.sql").write_text(
        "CREATE TABLE t (id integer PRIMARY KEY, name text NOT NULL);\n"
    )
    yield tmp_path
    for mod in [m for m in sys.modules if m.split(".")[0] == "bug_pkg"]:
        del sys.modules[mod]


def _generate(
    case: Path, url: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    args = [
        "--queries",
        str(case / "queries"),
        "--schema",
        str(case / "schema"),
        "--out",
        str(case / "out"),
        "--package",
        "bug_pkg",
        "--database-url",
        url,
        *extra,
    ]
    code = codegen_main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _import(case: Path, module: str) -> Any:
    sys.path.insert(0, str(case / "out"))
    try:
        return importlib.import_module(f"bug_pkg.{module}")
    finally:
        sys.path.remove(str(case / "out"))


def test_positional_parameters_generate_instead_of_crashing(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str], databases: Any
) -> None:
    (case / "queries" / "q.sql").write_text("-- name: GetT :one\nSELECT * FROM t WHERE id = $1;\n")
    code, _, err = _generate(case, server_url, capsys)
    assert code == 0, err
    url = databases.create()
    with psycopg.connect(url) as conn:
        conn.execute((case / "schema" / "0001.sql").read_text())
        conn.execute("INSERT INTO t VALUES (7, 'seven')")
        assert _import(case, "q").get_t(conn, id=7).name == "seven"


def test_query_names_differing_only_in_case_are_refused(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = case / "queries" / "q.sql"
    path.write_text(
        "-- name: countT :one\nSELECT 1 AS n;\n\n-- name: CountT :one\nSELECT 2 AS n;\n"
    )
    code, _, err = _generate(case, server_url, capsys)
    assert code == 2
    assert f"{path}:4: query 'CountT'" in err and "both become the function name 'count_t'" in err


def test_header_typo_is_reported_on_its_own_line(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = case / "queries" / "q.sql"
    path.write_text("-- name: a :one\nSELECT 1 AS x;\n\n-- nam: b :one\nSELECT 2 AS x;\n")
    code, _, err = _generate(case, server_url, capsys)
    assert code == 2
    assert f"{path}:4: '-- nam: b :one' looks like a query header but is not one" in err


def test_statements_without_a_header_are_skipped_with_a_warning(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = case / "queries" / "q.sql"
    path.write_text("SELECT 0;\n\n-- name: a :one\nSELECT 1 AS x;\n")
    code, _, err = _generate(case, server_url, capsys)
    assert code == 0, err
    assert f"warning: {path}:1: statement without a '-- name: <identifier> :<command>'" in err
    assert _import(case, "q").A_SQL.strip() == "SELECT 1 AS x"


def test_a_type_no_query_reads_does_not_block_the_run(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (case / "schema" / "0002.sql").write_text("CREATE TABLE spots (id int, at point);\n")
    (case / "queries" / "q.sql").write_text("-- name: a :many\nSELECT * FROM t;\n")
    code, _, err = _generate(case, server_url, capsys)
    assert code == 0, err


def test_an_unmapped_type_in_a_query_says_where_and_how_to_override(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (case / "schema" / "0002.sql").write_text("CREATE TABLE spots (id int, at point);\n")
    path = case / "queries" / "q.sql"
    path.write_text("-- name: a :many\n-- doc\nSELECT * FROM spots;\n")
    code, _, err = _generate(case, server_url, capsys)
    assert code == 2
    assert f"{path}:3: query 'a', column 'at': type point has no Python mapping" in err
    assert "cast it in the SQL" in err and "-- type:" in err


def test_editing_one_query_marks_only_its_own_output_stale(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("one", "two"):
        (case / "queries" / f"{name}.sql").write_text(f"-- name: {name} :many\nSELECT * FROM t;\n")
    assert _generate(case, server_url, capsys)[0] == 0
    with (case / "queries" / "one.sql").open("a") as f:
        f.write("-- an edit\n")
    args = ["--check", "--queries", str(case / "queries"), "--schema", str(case / "schema")]
    code = codegen_main([*args, "--out", str(case / "out"), "--package", "bug_pkg"])
    err = capsys.readouterr().err
    assert code == 1
    stale = sorted(
        line.split(":")[0].rsplit("/", 1)[-1] for line in err.splitlines() if "stale (" in line
    )
    assert stale == ["models.py", "one.py", "one_async.py"]
    assert "one.sql" in err and "two.py" not in err


def test_messages_are_the_tools_own(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (case / "queries" / "q.sql").write_text("-- name: a :many\nSELECT * FROM t;\n")
    code, out, err = _generate(case, server_url, capsys, "--check")
    assert code == 1
    assert "fix it with: apalis-codegen --queries" in err
    assert "apalis_client" not in out + err and "sync twin" not in out + err


def test_python_dash_m_apalis_codegen_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apalis_codegen", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m apalis_codegen")
    assert "APALIS_CODEGEN_DATABASE_URL" in done.stdout and "--sqlc" in done.stdout


def test_sqlc_config_with_bad_version_is_a_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sqlc.yaml"
    config.write_text("version: '3'\nsql: []\n")
    assert codegen_main(["--sqlc", str(config)]) == 2
    assert f"{config}:1: sqlc config version '3'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        "version: '2'\nsql:\n  - engine: postgresql\n    schema: s.sql\n    queries: q.sql\n"
        "    gen:\n      go:\n        package: pkg\n        out: gen\n",
        '{"version": "1", "packages": [{"name": "pkg", "path": "gen", "schema": "s.sql",'
        ' "queries": "q.sql", "engine": "postgresql"}]}',
    ],
    ids=["v2-yaml", "v1-json"],
)
def test_sqlc_config_v1_and_v2_name_the_package_and_its_folder(
    tmp_path: Path, text: str, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / ("sqlc.json" if text.startswith("{") else "sqlc.yaml")
    config.write_text(text)
    (tmp_path / "s.sql").write_text("CREATE TABLE t (id int NOT NULL);\n")
    (tmp_path / "q.sql").write_text("-- name: ListT :many\nSELECT * FROM t;\n")
    assert codegen_main(["--sqlc", str(config), "--database-url", server_url]) == 0
    assert (tmp_path / "gen" / "pkg" / "q.py").exists()
    assert codegen_main(["--sqlc", str(config), "--check"]) == 0
    assert "fix it with" not in capsys.readouterr().err


def test_type_option_reads_a_jsonb_table_column_as_a_model(
    case: Path, server_url: str, capsys: pytest.CaptureFixture[str], databases: Any
) -> None:
    (case / "schema" / "0002.sql").write_text("CREATE TABLE docs (id int NOT NULL, meta jsonb);\n")
    (case / "queries" / "q.sql").write_text("-- name: docs :many\nSELECT * FROM docs;\n")
    code, _, err = _generate(
        case, server_url, capsys, "--type", "docs.meta=codegen_models.AuthorMeta"
    )
    assert code == 0, err
    from codegen_models import AuthorMeta

    url = databases.create()
    with psycopg.connect(url) as conn:
        conn.execute((case / "schema" / "0002.sql").read_text())
        conn.execute("""INSERT INTO docs VALUES (1, '{"twitter": "@a"}'), (2, NULL)""")
        rows = _import(case, "q").docs(conn)
    assert [r.meta for r in rows] == [AuthorMeta(twitter="@a"), None]


def test_sqlc_config_overrides_read_a_jsonb_column_as_a_model(
    tmp_path: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sqlc.yaml").write_text(
        "version: '2'\n"
        "sql:\n"
        "  - engine: postgresql\n"
        "    schema: s.sql  # a comment\n"
        "    queries: q.sql\n"
        "    gen:\n"
        "      go:\n"
        "        package: pkg\n"
        "        out: gen\n"
        "        overrides:\n"
        "          - column: docs.meta\n"
        '            py_type: "codegen_models.AuthorMeta"\n'
    )
    (tmp_path / "s.sql").write_text("CREATE TABLE docs (id int NOT NULL, meta jsonb);\n")
    (tmp_path / "q.sql").write_text("-- name: ListDocs :many\nSELECT * FROM docs;\n")
    assert codegen_main(["--sqlc", str(tmp_path / "sqlc.yaml"), "--database-url", server_url]) == 0
    models = (tmp_path / "gen" / "pkg" / "models.py").read_text()
    assert "    meta: AuthorMeta | None\n" in models
    assert "from codegen_models import AuthorMeta" in models
