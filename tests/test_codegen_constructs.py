"""The golden 'constructs' case runs: each construct's generated code, sync and async.

tests/golden/constructs/ holds one query file per construct (positional parameters, sqlc's
macros, the batch and copy commands, types, names) beside the generated package; these tests
call the committed expected output against a real server.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from collections.abc import Iterator
from datetime import datetime, time, timedelta, timezone
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from psycopg.types.range import Range

CASE = Path(__file__).resolve().parent / "golden" / "constructs"
PACKAGE = "golden_constructs"


@pytest.fixture(scope="module")
def pkg() -> Iterator[dict[str, ModuleType]]:
    sys.path.insert(0, str(CASE / "expected"))
    try:
        names = ["models", "positional", "macros", "commands", "types", "names"]
        mods = {}
        for name in names:
            mods[name] = importlib.import_module(f"{PACKAGE}.{name}")
            if name != "models":
                mods[f"{name}_async"] = importlib.import_module(f"{PACKAGE}.{name}_async")
        yield mods
    finally:
        sys.path.remove(str(CASE / "expected"))


@pytest.fixture
def db(databases: Any) -> str:
    url: str = databases.create()
    with psycopg.connect(url) as conn:
        for path in sorted((CASE / "schema").glob("*.sql")):
            conn.execute(path.read_bytes())
    return url


@pytest.fixture
def q(flavor: Any, pkg: dict[str, ModuleType], db: str) -> Any:
    def call(module: str, fn: str, *args: Any, **kw: Any) -> Any:
        if flavor.name == "sync":
            with psycopg.connect(db) as conn:
                return getattr(pkg[module], fn)(conn, *args, **kw)

        async def go() -> Any:
            async with await psycopg.AsyncConnection.connect(db) as conn:
                return await getattr(pkg[f"{module}_async"], fn)(conn, *args, **kw)

        return asyncio.run(go())

    return call


def _seed(q: Any) -> tuple[int, int]:
    a = q("positional", "create_author", name="Ann", bio=None).id
    b = q("positional", "create_author", name="Bob", bio="b").id
    q("macros", "add_book", author_id=a, title="first light")
    q("macros", "add_book", author_id=b, title="second sight")
    return a, b


# ---- positional parameters ------------------------------------------------------------------


def test_positional_parameters_are_named_from_their_context(pkg: dict[str, ModuleType]) -> None:
    def params(fn: str) -> list[str]:
        return list(inspect.signature(getattr(pkg["positional"], fn)).parameters)[1:]

    assert params("get_author") == ["id"]  # compared column
    assert params("create_author") == ["name", "bio"]  # INSERT column list
    assert params("rename_author") == ["id", "name"]  # in $N order
    assert params("page_authors") == ["limit", "offset"]
    assert params("authors_in") == ["dollar_1"]  # no context: the documented fallback
    assert params("author_or_book") == ["id", "id_2"]
    assert params("authors_after") == ["id"]  # `$1 < id`


def test_positional_statements_return_the_right_rows(q: Any) -> None:
    a, b = _seed(q)
    assert q("positional", "get_author", id=a).name == "Ann"
    assert q("positional", "rename_author", id=b, name="Bo") == 1
    assert [r.name for r in q("positional", "page_authors", limit=1, offset=1)] == ["Bo"]
    assert [r.id for r in q("positional", "authors_in", dollar_1=[b, 999])] == [b]
    assert [r.id for r in q("positional", "author_or_book", id=a, id_2=-1)] == [a]
    assert [r.id for r in q("positional", "authors_after", id=a)] == [b]


# ---- sqlc macros, block headers, skipped statements -------------------------------------------


def test_sqlc_arg_narg_and_slice(q: Any) -> None:
    a, b = _seed(q)
    assert [r.id for r in q("macros", "by_name", author_name="Ann")] == [a]
    assert q("macros", "set_bio", id=a, bio=None) == 1
    assert q("positional", "get_author", id=a).bio is None
    assert [r.id for r in q("macros", "some_authors", ids=[a, b, 0])] == [a, b]


def test_sqlc_embed_nests_table_models(q: Any, pkg: dict[str, ModuleType]) -> None:
    a, _ = _seed(q)
    rows = q("macros", "books_with_authors")
    assert [(type(r.books).__name__, type(r.authors).__name__) for r in rows] == [
        ("Book", "Authors"),
        ("Book", "Authors"),
    ]
    assert (rows[0].books.title, rows[0].authors.id, rows[0].authors.name) == (
        "first light",
        a,
        "Ann",
    )
    assert rows[0].shown == "first light"


def test_block_comment_header_names_a_query(q: Any) -> None:
    _seed(q)
    assert q("macros", "count_books").n == 2


@pytest.mark.parametrize("fn", ["search", "search_tight"])
def test_text_search_operator_is_not_a_parameter(
    q: Any, pkg: dict[str, ModuleType], fn: str
) -> None:
    assert list(inspect.signature(getattr(pkg["macros"], fn)).parameters) == ["conn", "q"]
    _seed(q)
    assert len(q("macros", fn, q="second")) == 1


def test_a_statement_without_a_header_is_not_generated(pkg: dict[str, ModuleType]) -> None:
    assert "'skipped'" not in pkg["macros"].ADD_BOOK_SQL


# ---- commands -----------------------------------------------------------------------------------


def test_execresult_reports_count_and_tag(q: Any) -> None:
    a, _ = _seed(q)
    result = q("commands", "delete_books_of", author_id=a)
    assert (result.rowcount, result.status) == (1, "DELETE 1")


def test_copyfrom_copies_every_row(q: Any, pkg: dict[str, ModuleType]) -> None:
    Params = pkg["models"].CopyAuthorsParams
    rows = [Params("Cy", None, {"k": [1]}), Params("Di", "d", None)]
    assert q("commands", "copy_authors", rows) == 2
    got = {r.name: (r.bio, r.meta) for r in q("positional", "page_authors", limit=9, offset=0)}
    assert got == {"Cy": (None, {"k": [1]}), "Di": ("d", None)}


def test_batch_commands_run_every_set_of_parameters(q: Any, pkg: dict[str, ModuleType]) -> None:
    models = pkg["models"]
    a, b = _seed(q)
    assert (
        q(
            "commands",
            "batch_rename",
            [models.BatchRenameParams(a, "A"), models.BatchRenameParams(b, "B")],
        )
        is None
    )
    got = q("commands", "batch_get", [models.BatchGetParams(b), models.BatchGetParams(-1)])
    assert [None if r is None else r.name for r in got] == ["B", None]
    books = q("commands", "batch_books", [models.BatchBooksParams(a), models.BatchBooksParams(-1)])
    assert [[r.title for r in rows] for rows in books] == [["first light"], []]
    assert q("commands", "batch_get", []) == []


# ---- types --------------------------------------------------------------------------------------


def test_enums_are_enum_classes_and_arrays_decode(q: Any, pkg: dict[str, ModuleType]) -> None:
    Mood = pkg["models"].Mood
    assert Mood.__doc__ == "How someone feels."
    assert [m.value for m in Mood] == ["happy", "sad", "so-so"]
    q("types", "add_person", id=1, mood=Mood.SO_SO, moods=[Mood.HAPPY, Mood.SO_SO], past=None)
    row = q("types", "get_person", id=1)
    assert row.mood is Mood.SO_SO
    assert row.moods == [Mood.HAPPY, Mood.SO_SO]
    assert row.past is None


def test_more_types_round_trip(q: Any, pkg: dict[str, ModuleType]) -> None:
    when = datetime(2024, 5, 6, 7, 8, tzinfo=timezone.utc)
    values: dict[str, Any] = {
        "addr": IPv4Interface("10.1.2.3/24"),
        "net": IPv4Network("10.0.0.0/8"),
        "span": timedelta(hours=5),
        "at": time(12, 30),
        "at_tz": time(12, 30, tzinfo=timezone(timedelta(hours=2))),
        "ids": Range(1, 5),
        "period": Range(when, when + timedelta(days=1)),
        "attrs": {"a": "1", "b": None, 'q"t': "x,y"},
        "path": "top.middle.leaf",
        "flags": "1010",
        "doc": None,  # xml: mapped to str, but this server may lack libxml to parse one
        "pair": pkg["models"].Pair(a=1, b='x, "y"'),
        "data": [1, "two"],
    }
    q("types", "add_kinds", id=1, **values)
    row = q("types", "get_kinds", id=1)
    assert {k: getattr(row, k) for k in values} == values
    assert type(row.pair).__name__ == "Pair"


def test_a_composite_with_null_fields_round_trips(q: Any, pkg: dict[str, ModuleType]) -> None:
    pair = pkg["models"].Pair(a=None, b="")
    columns = "addr net span at at_tz ids period attrs path flags doc data"
    q("types", "add_kinds", id=3, pair=pair, **dict.fromkeys(columns.split()))
    assert q("types", "get_kinds", id=3).pair == pair


def test_none_is_sql_null_for_json(q: Any) -> None:
    columns = "addr net span at at_tz ids period attrs path flags doc pair data"
    nones = dict.fromkeys(columns.split())
    q("types", "add_kinds", id=2, **nones)
    assert q("types", "data_is_null", id=2).sql_null is True


def test_type_override_reads_jsonb_as_a_pydantic_model(q: Any) -> None:
    from codegen_models import AuthorMeta

    a, _ = _seed(q)
    q("types", "set_meta", id=a, meta=AuthorMeta(twitter="@ann", tags=["x"]))
    row = q("types", "get_meta", id=a)
    assert row.meta == AuthorMeta(twitter="@ann", tags=["x"])
    q("types", "set_meta", id=a, meta=None)
    assert q("types", "get_meta", id=a).meta is None


# ---- names --------------------------------------------------------------------------------------


def test_unusable_sql_names_become_python_names(q: Any, pkg: dict[str, ModuleType]) -> None:
    XVenue = pkg["models"].XVenue
    assert list(XVenue.model_fields) == [
        "id",
        "from_",
        "model_config_",
        "json_",
        "rows",
        "Name",
        "name",
    ]
    q(
        "names",
        "add_venue",
        id=1,
        from_="f",
        model_config="m",
        json="j",
        rows=3,
        upper="U",
        lower="l",
    )
    row = q("names", "get_venue", id=1)
    assert (row.from_, row.model_config_, row.json_, row.rows, row.Name, row.name) == (
        "f",
        "m",
        "j",
        3,
        "U",
        "l",
    )


def test_parameters_named_like_the_signature_are_renamed(q: Any) -> None:
    row = q("names", "signature", conn_="c", params_="p")
    assert (row.conn, row.params) == ("c", "p")


def test_a_lookalike_shape_gets_its_own_row(q: Any, pkg: dict[str, ModuleType]) -> None:
    row = q("names", "lookalike")
    assert type(row).__name__ == "LookalikeRow"
    assert "None" in str(type(row).model_fields["name"].annotation)
    assert (row.id, row.name) == (1, None)


def test_tables_and_queries_do_not_shadow_each_other(pkg: dict[str, ModuleType]) -> None:
    models = pkg["models"]
    assert (models.Author.__doc__, models.Authors.__doc__) == (
        "A row of ``public.author``.",
        "A row of ``public.authors``.",
    )
    assert models.Campus.__name__ == "Campus"
    names = pkg["names"]
    assert names.User is models.User  # the table model, not the query
    assert inspect.isfunction(names.user) and inspect.isfunction(names.any)
    assert names.Any is Any


def test_queries_named_like_imports_run(q: Any) -> None:
    assert q("names", "user", id=1) is None
    assert q("names", "any") == []
    assert q("names", "singles") == []
