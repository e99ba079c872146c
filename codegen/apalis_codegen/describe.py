"""Ask PostgreSQL to describe each statement: parameter types, result columns, nullability."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq

from apalis_codegen import trust
from apalis_codegen.parse import QueryFileError, Statement
from apalis_codegen.paths import schema_files

__all__ = ["Catalog", "apply_schema", "describe", "schema_files"]


@dataclass(frozen=True)
class PgType:
    """A PostgreSQL type as the generator needs it."""

    oid: int
    name: str  # pg_type.typname, e.g. "int4", "_text"
    category: str  # pg_type.typcategory
    element: int  # element type oid for arrays, else 0
    base: int  # base type oid for domains, else 0
    kind: str = "b"  # pg_type.typtype: b base, c composite, d domain, e enum, r range
    schema: str = "pg_catalog"
    comment: str = ""  # COMMENT ON TYPE
    labels: tuple[str, ...] = ()  # an enum's labels, in sort order
    attributes: tuple[tuple[str, int], ...] = ()  # a standalone composite's (name, type oid)


@dataclass(frozen=True)
class Column:
    """One result column of a described statement."""

    name: str
    type_oid: int
    table_oid: int
    attnum: int
    not_null: bool  # from the source table column; False for expressions


@dataclass(frozen=True)
class Table:
    """A user table of the scratch database, for table models."""

    oid: int
    schema: str
    name: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Described:
    """A statement with what the server said about it."""

    statement: Statement
    param_types: tuple[int, ...]
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Catalog:
    """Types and tables of the scratch database, plus every described statement."""

    types: dict[int, PgType]
    tables: dict[int, Table]
    described: tuple[Described, ...]
    table_comments: dict[int, str] = field(default_factory=dict)


def apply_schema(conn: psycopg.Connection[Any], files: Sequence[Path], root: Path) -> None:
    """Run every schema file in order in one transaction; a failing file is named."""
    with conn.transaction():
        for path in files:
            data = path.read_bytes()
            try:
                conn.execute(data)
            except psycopg.Error as exc:
                shown = path.relative_to(root) if path.is_relative_to(root) else path
                line = 1
                position = exc.diag.statement_position
                if position and position.isdigit():
                    text = data.decode("utf-8", "replace")
                    line += text[: int(position) - 1].count("\n")
                raise QueryFileError(
                    f"{shown}:{line}: schema file failed: {_pg_message(exc)}"
                ) from exc


def _pg_message(exc: psycopg.Error) -> str:
    return exc.diag.message_primary or str(exc).strip()


_TYPES = """
SELECT t.oid::int8, t.typname::text, t.typcategory::text, t.typelem::int8, t.typbasetype::int8,
       t.typtype::text, n.nspname::text, coalesce(obj_description(t.oid, 'pg_type'), ''),
       coalesce((SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                   FROM pg_enum AS e WHERE e.enumtypid = t.oid), '{}')
  FROM pg_type AS t JOIN pg_namespace AS n ON n.oid = t.typnamespace
"""
_ATTRIBUTES = """
SELECT t.oid::int8, a.attname::text, a.atttypid::int8
  FROM pg_type AS t
  JOIN pg_class AS c ON c.oid = t.typrelid AND c.relkind = 'c'
  JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY t.oid, a.attnum
"""
_TABLES = """
SELECT c.oid::int8, n.nspname::text, c.relname::text,
       coalesce(obj_description(c.oid, 'pg_class'), '')
  FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg_temp%'
 ORDER BY n.nspname, c.relname
"""
_COLUMNS = """
SELECT attrelid::int8, attname::text, atttypid::int8, attnum::int8, attnotnull
  FROM pg_attribute
 WHERE attnum > 0 AND NOT attisdropped
 ORDER BY attrelid, attnum
"""


def describe(
    conn: psycopg.Connection[Any],
    statements: Sequence[Statement],
    display: dict[Path, str],
    trust_mode: str | None = None,
) -> Catalog:
    """Describe each statement through libpq's prepare/describe; read the catalog it needs.

    ``trust_mode`` is what a capturable call does (``error``, ``warn``, ``off``); ``None``
    takes it from the environment (:func:`apalis_codegen.trust.mode`).
    """
    types = {
        row[0]: PgType(
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], tuple(row[8])
        )
        for row in conn.execute(_TYPES).fetchall()
    }
    attributes: dict[int, list[tuple[str, int]]] = {}
    for oid, name, typid in conn.execute(_ATTRIBUTES).fetchall():
        attributes.setdefault(oid, []).append((name, typid))
    for oid, attrs_of in attributes.items():
        types[oid] = replace(types[oid], attributes=tuple(attrs_of))
    attrs: dict[tuple[int, int], tuple[str, int, bool]] = {}
    by_table: dict[int, list[Column]] = {}
    for relid, attname, typid, attnum, notnull in conn.execute(_COLUMNS).fetchall():
        attrs[(relid, attnum)] = (attname, typid, notnull)
        by_table.setdefault(relid, []).append(Column(attname, typid, relid, attnum, notnull))
    table_rows = conn.execute(_TABLES).fetchall()
    tables = {
        oid: Table(oid, schema, name, tuple(by_table.get(oid, ())))
        for oid, schema, name, _ in table_rows
    }
    table_comments = {oid: comment for oid, _, _, comment in table_rows if comment}

    described = []
    pgconn = conn.pgconn
    for st in statements:
        numbered = st.numbered()
        result = pgconn.prepare(b"", numbered.encode())
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise QueryFileError(_located_error(st, numbered, result, display))
        desc = pgconn.describe_prepared(b"")
        if desc.status != pq.ExecStatus.COMMAND_OK:
            raise QueryFileError(_located_error(st, numbered, desc, display))
        params = tuple(desc.param_type(i) for i in range(desc.nparams))
        # Capturable unqualified calls: refused or reported, as trust_mode says.
        trust.vet(conn, st, display, trust_mode)
        columns = []
        for i in range(desc.nfields):
            name = (desc.fname(i) or b"?").decode()
            table, attnum = desc.ftable(i), desc.ftablecol(i)
            source = attrs.get((table, attnum))
            columns.append(Column(name, desc.ftype(i), table, attnum, bool(source and source[2])))
        described.append(Described(st, params, tuple(columns)))
    return Catalog(types, tables, tuple(described), table_comments)


def _located_error(
    st: Statement, numbered: str, result: pq.abc.PGresult, display: dict[Path, str]
) -> str:
    message = (result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
    position = (result.error_field(pq.DiagnosticField.STATEMENT_POSITION) or b"").decode()
    line = st.line
    if position.isdigit():
        # @param -> $n never adds a newline, so line numbers carry over.
        line += numbered[: int(position) - 1].count("\n")
    where = display.get(st.file, str(st.file))
    return f"{where}:{line}: PostgreSQL rejected query {st.name!r}: {message}"
