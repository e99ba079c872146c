"""Fixtures: a real PostgreSQL for every test, per-test databases, sync/async flavours."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from pgbouncer_support import pgbouncer, pooled_db  # noqa: F401  (fixtures)
from proxy_support import cutting_proxy  # noqa: F401  (fixture)
from psycopg.conninfo import make_conninfo

import apalis_client
from apalis_codegen.pgfind import NoDatabaseError, find_postgres

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin URL of a reachable server (APALIS_TEST_PREFER=embedded forces PostgreSQL 18)."""
    try:
        with find_postgres(prefer=os.environ.get("APALIS_TEST_PREFER")) as server:
            yield server.url
    except NoDatabaseError as exc:
        pytest.fail(str(exc), pytrace=False)


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server_url, autocommit=True)


class Databases:
    """Creates throwaway databases on the test server and drops them afterwards."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.created: list[str] = []

    def create(self, template: str | None = None) -> str:
        name = f"apalis_t_{uuid.uuid4().hex[:12]}"
        with _admin(self.server_url) as conn:
            tpl = (
                psycopg.sql.SQL(" TEMPLATE {}").format(psycopg.sql.Identifier(template))
                if template
                else psycopg.sql.SQL("")
            )
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {}{}").format(psycopg.sql.Identifier(name), tpl)
            )
        self.created.append(name)
        return make_conninfo(self.server_url, dbname=name)

    def drop_all(self) -> None:
        with _admin(self.server_url) as conn:
            for name in self.created:
                conn.execute(
                    psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        psycopg.sql.Identifier(name)
                    )
                )


@pytest.fixture(scope="session")
def template_name(server_url: str) -> Iterator[str]:
    """A migrated database cloned for each test (CREATE DATABASE ... TEMPLATE)."""
    dbs = Databases(server_url)
    url = dbs.create()
    with psycopg.connect(url, autocommit=True) as conn:
        apalis_client.migrate(conn)
    yield dbs.created[0]
    dbs.drop_all()


@pytest.fixture
def databases(server_url: str) -> Iterator[Databases]:
    dbs = Databases(server_url)
    yield dbs
    dbs.drop_all()


@pytest.fixture
def empty_db(databases: Databases) -> str:
    """URL of a fresh database with no apalis schema."""
    return databases.create()


@pytest.fixture
def migrated_db(databases: Databases, template_name: str) -> str:
    """URL of a fresh database already at generation 14."""
    return databases.create(template=template_name)


def run_sql_file(url: str, name: str) -> None:
    """Run a fixture SQL file (several statements) in one transaction."""
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        text = f.read()
    with psycopg.connect(url) as conn:
        conn.execute(text.encode())


class Flavor:
    """Runs the sync or the async twin of an API with the same test code."""

    def __init__(self, name: str) -> None:
        self.name = name

    def migrate(self, url: str) -> apalis_client.MigrationReport:
        if self.name == "sync":
            with psycopg.connect(url, autocommit=True) as conn:
                return apalis_client.migrate(conn)

        async def go() -> apalis_client.MigrationReport:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                return await apalis_client.migrate_async(conn)

        return asyncio.run(go())

    def verify(self, url: str) -> apalis_client.SchemaReport:
        if self.name == "sync":
            with psycopg.connect(url, autocommit=True) as conn:
                return apalis_client.verify_schema(conn)

        async def go() -> apalis_client.SchemaReport:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                return await apalis_client.verify_schema_async(conn)

        return asyncio.run(go())


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> Flavor:
    return Flavor(str(request.param))


@pytest.fixture
def runs_db(migrated_db: str) -> str:
    """A migrated database with the ``runs`` table the worker_support handlers record into."""
    from worker_support import CREATE_RUNS

    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(CREATE_RUNS.encode())
    return migrated_db


@pytest.fixture
def record_db(databases: Databases) -> str:
    """A database of its own holding the ``runs`` table, for tests that terminate the queue
    database's backends: the recorder is never cut, so every recorded run is a real one."""
    from worker_support import CREATE_RUNS

    url = databases.create()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CREATE_RUNS.encode())
    return url


Query = Callable[[str, str], list[tuple[Any, ...]]]


@pytest.fixture
def query() -> Query:
    def run(url: str, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as conn:
            return conn.execute(sql.encode()).fetchall()

    return run
