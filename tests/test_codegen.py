"""The generator on fixture SQL: golden output, typed code that runs, errors, staleness."""

from __future__ import annotations

import asyncio
import difflib
import importlib
import os
import shutil
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.types.json import Jsonb

from apalis_codegen.main import main as codegen_main
from apalis_codegen.render import TEMPLATES
from tools import unasync

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "basic"


def _options(
    case: Path, out: Path, url: str, *extra: str, package: str = "golden_basic"
) -> list[str]:
    return [
        "--queries",
        str(case / "queries"),
        "--schema",
        str(case / "schema"),
        "--out",
        str(out),
        "--package",
        package,
        "--database-url",
        url,
        *extra,
    ]


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    # Headers name sources relative to the working directory, as `python -m codegen` does.
    monkeypatch.chdir(REPO)


@pytest.fixture
def case_copy(tmp_path: Path) -> Path:
    """A writable copy of the golden case (queries, schema, templates)."""
    dst = tmp_path / "case"
    shutil.copytree(GOLDEN / "queries", dst / "queries")
    shutil.copytree(GOLDEN / "schema", dst / "schema")
    shutil.copytree(TEMPLATES, dst / "templates")
    return dst


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = codegen_main(args)
    out, err = capsys.readouterr()
    return code, out, err


# ---- golden output -----------------------------------------------------------------------------


@pytest.mark.parametrize("case_name", ["basic", "constructs"])
def test_golden_output_matches_expected_files(
    case_name: str,
    server_url: str,
    tmp_path: Path,
    in_repo: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    golden = GOLDEN.parent / case_name
    package = f"golden_{case_name}"
    case = golden.relative_to(REPO)
    out = tmp_path / "out"
    code, _, err = _run(_options(case, out, server_url, package=package), capsys)
    assert code == 0, err
    expected_dir = golden / "expected" / package
    produced = {p.name: p.read_text() for p in (out / package).glob("*.py")}
    expected = {p.name: p.read_text() for p in expected_dir.glob("*.py")}
    if os.environ.get("APALIS_UPDATE_GOLDEN"):
        shutil.rmtree(expected_dir, ignore_errors=True)
        shutil.copytree(out / package, expected_dir)
        expected = produced
    assert sorted(produced) == sorted(expected)
    for name in sorted(expected):
        diff = "".join(
            difflib.unified_diff(
                expected[name].splitlines(True), produced[name].splitlines(True), name, name
            )
        )
        assert not diff, f"{name} differs from its golden copy (APALIS_UPDATE_GOLDEN=1):\n{diff}"


def test_generation_is_deterministic(
    server_url: str, tmp_path: Path, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    case = GOLDEN.relative_to(REPO)
    for run in ("a", "b"):
        assert _run(_options(case, tmp_path / run, server_url), capsys)[0] == 0
    a = {p.name: p.read_bytes() for p in (tmp_path / "a" / "golden_basic").iterdir()}
    b = {p.name: p.read_bytes() for p in (tmp_path / "b" / "golden_basic").iterdir()}
    assert a == b


# ---- the generated code runs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden() -> Iterator[dict[str, ModuleType]]:
    sys.path.insert(0, str(GOLDEN / "expected"))
    try:
        yield {
            name: importlib.import_module(f"golden_basic.{name}")
            for name in ("models", "items", "items_async", "variants", "variants_async")
        }
    finally:
        sys.path.remove(str(GOLDEN / "expected"))


@pytest.fixture
def shop_db(databases: Any) -> str:
    url: str = databases.create()
    with psycopg.connect(url) as conn:
        for path in sorted((GOLDEN / "schema").glob("*.sql")):
            conn.execute(path.read_bytes())
    return url


def _call(
    flavor: Any, mods: dict[str, ModuleType], url: str, module: str, fn: str, **kw: Any
) -> Any:
    if flavor.name == "sync":
        with psycopg.connect(url) as conn:
            return getattr(mods[module], fn)(conn, **kw)

    async def go() -> Any:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await getattr(mods[f"{module}_async"], fn)(conn, **kw)

    return asyncio.run(go())


def _add(flavor: Any, mods: dict[str, ModuleType], url: str, item_id: int, **over: Any) -> None:
    values: dict[str, Any] = {
        "id": item_id,
        "name": f"item {item_id}",
        "price": Decimal("9.50"),
        "tags": ["a", None],
        "attrs": {"size": [1, 2], "ok": True},
        "available_on": None,
        "ref": UUID(int=item_id),
        "picture": None,
    }
    values.update(over)
    assert _call(flavor, mods, url, "items", "add_item", **values) is None


def test_one_returns_the_table_model_with_python_types(
    flavor: Any, golden: dict[str, ModuleType], shop_db: str
) -> None:
    _add(flavor, golden, shop_db, 1)
    item = _call(flavor, golden, shop_db, "items", "get_item", id=1)
    assert type(item).__name__ == "Item"
    assert item.price == Decimal("9.50")
    assert item.tags == ["a", None]
    assert item.attrs == {"size": [1, 2], "ok": True}
    assert item.ref == UUID(int=1)
    assert item.created_at.tzinfo is not None
    assert item.active is True


def test_server_prepared_pair_inserts_what_the_function_would(
    golden: dict[str, ModuleType], shop_db: str
) -> None:
    items = golden["items"]
    with psycopg.connect(shop_db) as conn:
        conn.execute(items.ADD_ITEM_PREPARE_SQL)
        with psycopg.ClientCursor(conn) as cur:  # client-side binding: one simple message
            cur.execute(
                items.ADD_ITEM_EXECUTE_SQL,
                {
                    "id": 7,
                    "name": "item 7",
                    "price": Decimal("1.25"),
                    "tags": ["x", None],
                    "attrs": Jsonb({"k": 1}),
                    "available_on": None,
                    "ref": UUID(int=7),
                    "picture": b"\x00\xff",
                },
            )
        names = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
        item = items.get_item(conn, id=7)
    assert names == [(items.ADD_ITEM_PREPARED_NAME,)]
    assert item is not None
    assert (item.price, item.tags, item.attrs, item.picture) == (
        Decimal("1.25"),
        ["x", None],
        {"k": 1},
        b"\x00\xff",
    )


def test_one_returns_none_when_no_row(
    flavor: Any, golden: dict[str, ModuleType], shop_db: str
) -> None:
    assert _call(flavor, golden, shop_db, "items", "get_item", id=404) is None


def test_many_takes_named_and_array_params(
    flavor: Any, golden: dict[str, ModuleType], shop_db: str
) -> None:
    for i, price in ((1, "5"), (2, "50"), (3, "7")):
        _add(flavor, golden, shop_db, i, price=Decimal(price))
    rows = _call(
        flavor, golden, shop_db, "items", "list_items", max_price=Decimal("10"), ids=[1, 2, 3]
    )
    assert sorted(r.id for r in rows) == [1, 3]
    assert type(rows[0]).__name__ == "ListItemsRow"


def test_execrows_returns_the_affected_row_count(
    flavor: Any, golden: dict[str, ModuleType], shop_db: str
) -> None:
    for i in (1, 2):
        _add(flavor, golden, shop_db, i)
    future = datetime.now(timezone.utc) + timedelta(days=1)
    assert _call(flavor, golden, shop_db, "items", "deactivate_older_than", cutoff=future) == 2
    assert _call(flavor, golden, shop_db, "items", "deactivate_older_than", cutoff=future) == 0


def test_nullable_param_override_accepts_none(
    flavor: Any, golden: dict[str, ModuleType], shop_db: str
) -> None:
    _add(flavor, golden, shop_db, 1, picture=None, tags=[None])
    item = _call(flavor, golden, shop_db, "items", "get_item", id=1)
    assert item.picture is None and item.tags == [None]


def test_literal_percent_survives_placeholders(
    flavor: Any, golden: dict[str, ModuleType], shop_db: str
) -> None:
    _add(flavor, golden, shop_db, 1, name="50% off")
    rows = _call(flavor, golden, shop_db, "items", "percent_off", pattern="%\\% off")
    assert [(r.id, r.label) for r in rows] == [(1, "10%")]


def test_enum_and_domain_columns_map_to_str(
    flavor: Any, golden: dict[str, ModuleType], shop_db: str
) -> None:
    _add(flavor, golden, shop_db, 1)
    with psycopg.connect(shop_db) as conn:
        conn.execute("INSERT INTO shop.variants VALUES (1, 'red', 'SKU-1')")
    rows = _call(flavor, golden, shop_db, "variants", "variants_of", item_id=1)
    assert [(type(r).__name__, r.colour, r.sku) for r in rows] == [("Variant", "red", "SKU-1")]
    row = _call(flavor, golden, shop_db, "items", "item_name", item_id=1, colour="red")
    assert (row.sku, row.name) == ("SKU-1", "item 1")


def _optional(model: Any, field: str) -> bool:
    return "None" in str(model.model_fields[field].annotation)


def test_not_null_columns_are_required_and_expressions_optional(
    golden: dict[str, ModuleType],
) -> None:
    models = golden["models"]
    assert not _optional(models.Item, "name") and not _optional(models.Item, "created_at")
    assert _optional(models.Item, "tags") and _optional(models.Item, "picture")
    assert not _optional(models.ListItemsRow, "price")
    assert _optional(models.PercentOffRow, "discounted") and _optional(
        models.PercentOffRow, "label"
    )


def test_column_overrides_change_nullability(golden: dict[str, ModuleType]) -> None:
    models = golden["models"]
    assert not _optional(models.PriceSummaryRow, "n")  # -- not-null: n
    assert _optional(models.PriceSummaryRow, "top")
    assert _optional(models.ItemNameRow, "name")  # -- nullable-column: name
    assert not _optional(models.ItemNameRow, "sku")


def test_params_are_keyword_only_and_docstring_comes_from_the_comment(
    golden: dict[str, ModuleType],
) -> None:
    import inspect

    sig = inspect.signature(golden["items"].list_items)
    kinds = {name: p.kind for name, p in sig.parameters.items()}
    assert kinds == {
        "conn": inspect.Parameter.POSITIONAL_OR_KEYWORD,
        "max_price": inspect.Parameter.KEYWORD_ONLY,
        "ids": inspect.Parameter.KEYWORD_ONLY,
    }
    assert golden["items"].list_items.__doc__.startswith("Items cheaper than @max_price")
    assert inspect.iscoroutinefunction(golden["items_async"].list_items)


# ---- errors ------------------------------------------------------------------------------------


def _write_query(case: Path, text: str) -> Path:
    path = case / "queries" / "items.sql"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            "-- name: a :one\nSELECT 1 AS x;\n-- name: a :one\nSELECT 2 AS x;\n",
            3,
            "duplicate query name 'a'",
        ),
        ("-- name: a :all\nSELECT 1 AS x;\n", 1, "unknown command ':all'"),
        ("-- name: \nSELECT 1 AS x;\n", 1, "malformed header"),
        (
            "-- name: a :many\nSELECT * FROM shop.items\n WHERE id = @x::int8 OR name = @x::text\n",
            2,
            "parameter @x of query 'a' is used with two types: int8, text",
        ),
    ],
    ids=["duplicate-name", "unknown-command", "malformed", "two-types"],
)
def test_bad_header_is_reported_with_file_and_line(
    text: str,
    line: int,
    needle: str,
    case_copy: Path,
    server_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _write_query(case_copy, text)
    code, _, err = _run(_options(case_copy, tmp_path / "out", server_url), capsys)
    assert code == 2
    assert f"{path}:{line}:" in err
    assert needle in err


def test_rejected_sql_reports_postgres_message_file_and_line(
    case_copy: Path, server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_query(
        case_copy, "-- name: broken :many\n-- doc\nSELECT id,\n       nosuch\n  FROM shop.items;\n"
    )
    code, _, err = _run(_options(case_copy, tmp_path / "out", server_url), capsys)
    assert code == 2
    assert f"{path}:4: PostgreSQL rejected query 'broken'" in err
    assert 'column "nosuch" does not exist' in err


def test_unmapped_type_names_query_and_column(
    case_copy: Path, server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_query(case_copy, "-- name: where_is :one\nSELECT point(1, 2) AS spot;\n")
    code, _, err = _run(_options(case_copy, tmp_path / "out", server_url), capsys)
    assert code == 2
    assert "query 'where_is', column 'spot': type point has no Python mapping" in err


def test_unmapped_param_type_names_query_and_parameter(
    case_copy: Path, server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_query(case_copy, "-- name: near :exec\nSELECT @p::point;\n")
    code, _, err = _run(_options(case_copy, tmp_path / "out", server_url), capsys)
    assert code == 2
    assert "query 'near', parameter @p: type point has no Python mapping" in err


def test_one_without_columns_is_an_error(
    case_copy: Path, server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_query(case_copy, "-- name: nothing :one\nDELETE FROM shop.items;\n")
    code, _, err = _run(_options(case_copy, tmp_path / "out", server_url), capsys)
    assert code == 2
    assert "is :one but returns no columns" in err


@pytest.mark.parametrize("value", ["client", "", "server, client"])
def test_unknown_prepare_value_names_the_query(
    case_copy: Path,
    server_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    value: str,
) -> None:
    _write_query(case_copy, f"-- name: one_item :one\n-- prepare: {value}\nSELECT 1 AS x;\n")
    code, _, err = _run(_options(case_copy, tmp_path / "out", server_url), capsys)
    assert code == 2
    assert f"'-- prepare: {value}' on query 'one_item'; the only value is 'server'" in err


# ---- staleness ---------------------------------------------------------------------------------


def _generate(case: Path, url: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    args = _options(case, case / "out", url, "--templates", str(case / "templates"))
    code, _, err = _run(args, capsys)
    assert code == 0, err
    return args


def _check_offline(case: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = [
        "--check",
        "--queries",
        str(case / "queries"),
        "--schema",
        str(case / "schema"),
        "--out",
        str(case / "out"),
        "--package",
        "golden_basic",
        "--templates",
        str(case / "templates"),
    ]
    code, _, err = _run(args, capsys)
    return code, err


@pytest.mark.parametrize(
    ("edit", "stale"),
    [
        ("queries/items.sql", "items.py"),
        ("schema/0001_shop.sql", "models.py"),
        ("templates/queries.py.j2", "variants_async.py"),
    ],
    ids=["query", "schema", "template"],
)
def test_editing_an_input_makes_check_fail_until_regenerated(
    edit: str, stale: str, case_copy: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _generate(case_copy, server_url, capsys)
    assert _check_offline(case_copy, capsys)[0] == 0
    with (case_copy / edit).open("a") as f:
        f.write("\n-- an edit\n")
    code, err = _check_offline(case_copy, capsys)
    assert code == 1
    assert f"golden_basic/{stale}: stale" in err
    assert "fix it with: apalis-codegen" in err
    _generate(case_copy, server_url, capsys)
    assert _check_offline(case_copy, capsys)[0] == 0


def test_check_flags_generated_files_whose_source_is_gone(
    case_copy: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _generate(case_copy, server_url, capsys)
    (case_copy / "queries" / "variants.sql").unlink()
    code, err = _check_offline(case_copy, capsys)
    assert code == 1
    assert "golden_basic/variants.py: generated, but its source is gone" in err
    _generate(case_copy, server_url, capsys)
    assert not (case_copy / "out" / "golden_basic" / "variants.py").exists()


def test_online_check_prints_a_diff_of_a_hand_edit(
    case_copy: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _generate(case_copy, server_url, capsys)
    target = case_copy / "out" / "golden_basic" / "items.py"
    target.write_text(target.read_text().replace("ORDER BY created_at DESC", "ORDER BY 1"))
    code, _, err = _run([*args, "--check"], capsys)
    assert code == 1
    assert "- ORDER BY 1" in err and "+ ORDER BY created_at DESC" in err


def test_repository_generated_code_is_fresh(
    server_url: str, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(["--check", "--database-url", server_url], capsys)
    assert code == 0, err
    assert "up to date" in out


# ---- unasync: sync twins of the client's hand-written async modules ------------------------------

UNASYNC = Path(__file__).resolve().parent / "golden" / "unasync"


def test_unasync_output_matches_its_golden_copy(in_repo: None) -> None:
    source = UNASYNC / "things_async.py"
    produced = unasync.to_sync(
        source.read_text(),
        source,
        UNASYNC / "things_sync.py",
        "tests/golden/unasync/things_async.py",
    )
    expected = (UNASYNC / "things_sync.py").read_text()
    diff = "".join(
        difflib.unified_diff(expected.splitlines(True), produced.splitlines(True), "golden", "now")
    )
    assert not diff, f"things_sync.py differs from its golden copy:\n{diff}"


def test_unasync_golden_twins_behave_alike(migrated_db: str) -> None:
    sys.path.insert(0, str(UNASYNC))
    try:
        things = importlib.import_module("things_sync")
        things_async = importlib.import_module("things_async")
    finally:
        sys.path.remove(str(UNASYNC))

    async def run_async() -> tuple[int, list[Any], int, int]:
        async with await psycopg.AsyncConnection.connect(migrated_db) as conn:
            return (
                await things_async.count_async(conn),
                await things_async.rows_async(conn),
                await things_async.guarded_async(conn),
                await things_async.doubled_async(conn),
            )

    with psycopg.connect(migrated_db) as conn:
        sync = (things.count(conn), things.rows(conn), things.guarded(conn), things.doubled(conn))
    assert sync == asyncio.run(run_async()) == (1, [(1,), 1], 2, 3)


@pytest.fixture
def client_copy(tmp_path: Path) -> Path:
    """A package holding one hand-written async module and its generated twin."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copy(UNASYNC / "things_async.py", pkg / "things_async.py")
    assert unasync.write(pkg) == [f"wrote {pkg / 'things_sync.py'}"]
    assert unasync.check(pkg) == []
    return pkg


def test_unasync_check_flags_a_twin_whose_source_changed(client_copy: Path) -> None:
    source = client_copy / "things_async.py"
    source.write_text(source.read_text().replace("SELECT 1", "SELECT 2"))
    (problem,) = unasync.check(client_copy)
    assert problem.endswith("things_sync.py: stale (" + str(source) + " changed since)")


def test_unasync_check_flags_a_hand_edited_twin(client_copy: Path) -> None:
    twin = client_copy / "things_sync.py"
    twin.write_text(twin.read_text().replace("return -1", "return -2"))
    (problem,) = unasync.check(client_copy)
    assert problem.endswith("things_sync.py: edited by hand (differs from a regeneration)")


def test_unasync_check_flags_a_missing_twin(client_copy: Path) -> None:
    (client_copy / "things_sync.py").unlink()
    (problem,) = unasync.check(client_copy)
    assert "things_sync.py: missing" in problem


def test_unasync_flags_and_removes_a_twin_whose_source_is_gone(client_copy: Path) -> None:
    (client_copy / "things_async.py").unlink()
    (problem,) = unasync.check(client_copy)
    assert problem.endswith(
        "things_sync.py: generated, but its source "
        + str(client_copy / "things_async.py")
        + " is gone"
    )
    assert unasync.write(client_copy) == [
        f"removed {client_copy / 'things_sync.py'} (its source is gone)"
    ]
    assert not (client_copy / "things_sync.py").exists()


def test_unasync_leaves_a_hand_written_sync_module_alone(client_copy: Path) -> None:
    # Only files carrying the generator's header are its to check or remove.
    (client_copy / "manual_sync.py").write_text('"""Written by hand."""\n')
    assert unasync.check(client_copy) == []
    assert unasync.write(client_copy) == []
    assert (client_copy / "manual_sync.py").exists()


def test_unasync_names_the_line_of_an_async_it_cannot_rewrite(client_copy: Path) -> None:
    source = client_copy / "things_async.py"
    source.write_text(source.read_text() + "\nasync = 1\n")
    with pytest.raises(unasync.UnasyncError, match=r"things_async.py:\d+: 'async' before '='"):
        unasync.write(client_copy)


def test_repository_sync_twins_are_fresh(in_repo: None) -> None:
    assert unasync.check(Path("apalis_client")) == []


def _repo_tool(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    # This repository's `python -m codegen`: the generator plus the sync-twin step.
    sys.path.insert(0, str(REPO))
    try:
        repo_main = importlib.import_module("codegen.__main__")
    finally:
        sys.path.remove(str(REPO))
    code = codegen_main(args, prog="python -m codegen", extra=repo_main.sync_twins)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_command_fails_on_a_stale_sync_twin(
    client_copy: Path, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _repo_tool(["--check", "--client", str(client_copy)], capsys)
    assert code == 0 and "up to date" in out
    source = client_copy / "things_async.py"
    source.write_text(source.read_text().replace("SELECT 1", "SELECT 2"))
    code, _, err = _repo_tool(["--check", "--client", str(client_copy)], capsys)
    assert code == 1
    assert "things_sync.py: stale" in err and "generated code is stale" in err
    assert f"--client {client_copy}" in err  # the printed fix regenerates the same package


def test_repository_tool_writes_the_sync_twins_beside_the_generated_code(
    client_copy: Path, case_copy: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (client_copy / "things_sync.py").unlink()
    args = _options(case_copy, case_copy / "out", server_url, "--client", str(client_copy))
    code, out, err = _repo_tool(args, capsys)
    assert code == 0, err
    assert f"wrote {client_copy / 'things_sync.py'}" in out
    assert (case_copy / "out" / "golden_basic" / "items.py").exists()
