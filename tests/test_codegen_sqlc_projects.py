"""sqlc-shaped projects (authors, booktest, jets, ondeck) generate unchanged and run.

Each project under tests/sqlc_projects/ is written in the shape of the sqlc example of the
same name: an sqlc config (v1 JSON or v2 YAML), a PostgreSQL schema and `$N`-parameter queries
with `-- name:` headers. The generator reads the config as is; the generated packages pass
mypy --strict and every function returns the right rows, sync and async.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from apalis_codegen.main import main as codegen_main
from apalis_codegen.paths import schema_files

PROJECTS = Path(__file__).resolve().parent / "sqlc_projects"
CONFIGS = {
    "authors": "sqlc.yaml",
    "booktest": "sqlc.json",
    "jets": "sqlc.json",
    "ondeck": "sqlc.json",
}


@dataclass
class Generated:
    root: Path  # the copy of tests/sqlc_projects
    packages: dict[str, Path]  # package name -> the folder holding the package


@pytest.fixture(scope="module")
def generated(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    root = tmp_path_factory.mktemp("sqlc") / "projects"
    shutil.copytree(PROJECTS, root)
    packages = {}
    for name, config in CONFIGS.items():
        code = codegen_main(["--sqlc", str(root / name / config), "--database-url", server_url])
        assert code == 0, f"generating {name} failed"
        packages[name] = root / name / "postgresql"
    sys.path[:0] = [str(p) for p in packages.values()]
    try:
        yield Generated(root, packages)
    finally:
        for p in packages.values():
            sys.path.remove(str(p))
        for mod in [m for m in sys.modules if m.split(".")[0] in CONFIGS]:
            del sys.modules[mod]


def test_the_sql_is_used_unchanged(generated: Generated) -> None:
    for name in CONFIGS:
        for src in (PROJECTS / name).rglob("*.sql"):
            copy = generated.root / src.relative_to(PROJECTS)
            assert copy.read_bytes() == src.read_bytes()


def test_generated_packages_pass_mypy_strict(generated: Generated, tmp_path: Path) -> None:
    env = {**os.environ, "MYPYPATH": os.pathsep.join(str(p) for p in generated.packages.values())}
    cmd = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache")]
    for name in CONFIGS:
        cmd += ["-p", name]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


class Runner:
    """Calls generated functions on one database, through the sync or the async module."""

    def __init__(self, flavor: Any, url: str, package: str) -> None:
        self.sync = flavor.name == "sync"
        self.url = url
        self.package = package

    def module(self, name: str) -> ModuleType:
        suffix = "" if self.sync else "_async"
        return importlib.import_module(f"{self.package}.{name}{suffix}")

    def __call__(self, module: str, fn: str, *args: Any, **kw: Any) -> Any:
        target = getattr(self.module(module), fn)
        if self.sync:
            with psycopg.connect(self.url) as conn:
                return target(conn, *args, **kw)

        async def go() -> Any:
            async with await psycopg.AsyncConnection.connect(self.url) as conn:
                return await target(conn, *args, **kw)

        return asyncio.run(go())


def _database(databases: Any, project: str) -> str:
    url: str = databases.create()
    schema = PROJECTS / project / "postgresql"
    files = (
        schema_files(schema / "schema") if (schema / "schema").is_dir() else [schema / "schema.sql"]
    )
    with psycopg.connect(url) as conn:
        for path in files:
            conn.execute(path.read_bytes())
    return url


def test_authors(generated: Generated, flavor: Any, databases: Any) -> None:
    q = Runner(flavor, _database(databases, "authors"), "authors")
    created = q("query", "create_author", name="Brian Kernighan", bio="Co-author of K&R")
    assert (type(created).__name__, created.name, created.bio) == (
        "Author",
        "Brian Kernighan",
        "Co-author of K&R",
    )
    other = q("query", "create_author", name="Alan Donovan", bio=None)
    assert other.bio is None
    assert q("query", "get_author", id=created.id) == created
    assert [a.name for a in q("query", "list_authors")] == ["Alan Donovan", "Brian Kernighan"]
    assert q("query", "update_author_bio", id=other.id, bio="Go") is None
    assert q("query", "get_author", id=other.id).bio == "Go"
    assert q("query", "delete_author", id=created.id) is None
    assert q("query", "get_author", id=created.id) is None


def test_booktest(generated: Generated, flavor: Any, databases: Any) -> None:
    q = Runner(flavor, _database(databases, "booktest"), "booktest")
    models = importlib.import_module("booktest.models")
    author = q("query", "create_author", name="Unknown Master")
    assert q("query", "get_author", author_id=author.author_id) == author
    when = datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    books = [
        q(
            "query",
            "create_book",
            author_id=author.author_id,
            isbn=isbn,
            book_type=kind,
            title=title,
            year=year,
            available=when,
            tags=tags,
        )
        for isbn, kind, title, year, tags in [
            ("1", models.BookType.FICTION, "my book title", 2016, []),
            ("2", models.BookType.FICTION, "the second book", 2016, ["cool", "unique"]),
            ("3", models.BookType.NONFICTION, "the third book", 2001, ["cool"]),
        ]
    ]
    assert books[2].book_type is models.BookType.NONFICTION
    assert books[0].available == when
    assert q("query", "get_book", book_id=books[1].book_id) == books[1]
    q(
        "query",
        "update_book",
        title="changed second title",
        tags=["cool", "disastor"],
        book_id=books[1].book_id,
    )
    q(
        "query",
        "update_book_isbn",
        title="never ever gonna finish, a quatrain",
        tags=["cool"],
        book_id=books[2].book_id,
        isbn="NEW ISBN",
    )
    assert q("query", "get_book", book_id=books[2].book_id).isbn == "NEW ISBN"
    by_year = q("query", "books_by_title_year", title="my book title", year=2016)
    assert [b.book_id for b in by_year] == [books[0].book_id]
    tagged = q("query", "books_by_tags", dollar_1=["cool"])
    assert sorted((b.title, b.name) for b in tagged) == [
        ("changed second title", "Unknown Master"),
        ("never ever gonna finish, a quatrain", "Unknown Master"),
    ]
    assert q("query", "say_hello", dollar_1="world").say_hello == "hello world"
    q("query", "delete_book", book_id=books[0].book_id)
    assert q("query", "get_book", book_id=books[0].book_id) is None


def test_jets(generated: Generated, flavor: Any, databases: Any) -> None:
    url = _database(databases, "jets")
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO pilots VALUES (1, 'Ada'), (2, 'Grace')")
    q = Runner(flavor, url, "jets")
    assert q("query_building", "count_pilots").count == 2
    assert [(p.id, p.name) for p in q("query_building", "list_pilots")] == [
        (1, "Ada"),
        (2, "Grace"),
    ]
    assert q("query_building", "delete_pilot", id=1) is None
    assert q("query_building", "count_pilots").count == 1


def test_ondeck(generated: Generated, flavor: Any, databases: Any) -> None:
    q = Runner(flavor, _database(databases, "ondeck"), "ondeck")
    models = importlib.import_module("ondeck.models")
    city = q("city", "create_city", name="San Francisco", slug="san-francisco")
    assert (type(city).__name__, city.slug) == ("City", "san-francisco")
    assert q("city", "get_city", slug="san-francisco") == city
    venue = q(
        "venue",
        "create_venue",
        slug="the-fillmore",
        name="The Fillmore",
        city=city.slug,
        spotify_playlist="spotify:uri",
        status=models.Status.OP_EN,
        statuses=[models.Status.OP_EN, models.Status.CLO_SED],
        tags=["rock", "punk"],
    )
    got = q("venue", "get_venue", slug="the-fillmore", city=city.slug)
    assert got.id == venue.id
    assert got.status is models.Status.OP_EN
    assert got.statuses == [models.Status.OP_EN, models.Status.CLO_SED]
    assert got.tags == ["rock", "punk"]
    assert [v.slug for v in q("venue", "list_venues", city=city.slug)] == ["the-fillmore"]
    assert q("venue", "update_venue_name", slug="the-fillmore", name="Fillmore").id == venue.id
    counts = q("venue", "venue_count_by_city")
    assert [(c.city, c.count) for c in counts] == [("san-francisco", 1)]
    q("city", "update_city_name", slug="san-francisco", name="SF")
    assert [c.name for c in q("city", "list_cities")] == ["SF"]
    q("venue", "delete_venue", slug="the-fillmore")
    assert q("venue", "get_venue", slug="the-fillmore", city=city.slug) is None
    assert models.Status.__doc__ == "Venues can be either open or closed"
