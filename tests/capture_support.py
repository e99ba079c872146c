"""Plant, in ``public``, exact-type overloads of every function and operator a set of statements
calls, then see which of them PostgreSQL would pick instead of the trusted ones.

The list of calls is derived, never written by hand: :func:`apalis_codegen.trust.calls` reads
each statement's analysed parse tree from the server, so a new query is covered the day it is
added. For every call this plants an object of the same name in ``public`` taking exactly the
argument types at the call (and, where the call passes an untyped literal or parameter, a
``text`` variant too, the type the resolver prefers for those), whose body raises
``apalis capture probe: ... ran``. A planted object that ties with ``pg_catalog``'s loses
(``pg_catalog`` is searched first); one that is a better match wins, which is the capture.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq, sql

from apalis_codegen import trust
from apalis_codegen.main import Options, parse_all
from apalis_codegen.parse import Statement

REPO = Path(__file__).resolve().parent.parent
PROBE = "apalis capture probe"
_PROBE_FUNCTION = "CREATE FUNCTION public.{}({}) RETURNS {} LANGUAGE plpgsql AS {}"
_PROBE_AGGREGATE = "CREATE AGGREGATE public.{}({}) (SFUNC = public.{}, STYPE = {})"
_OPERATOR_NAME = re.compile(r"^[+\-*/<>=~!@#%^&|`?]+$")


def client_statements() -> tuple[list[Statement], dict[Path, str]]:
    """Every statement in the repository's ``queries/``."""
    options = Options(REPO / "queries", REPO / "schema", REPO / "generated", "apalis_generated")
    statements, display, _ = parse_all(options)
    return statements, {p: f"queries/{p.name}" for p in display}


def derive_calls(
    conn: psycopg.Connection[Any], statements: Sequence[Statement], display: dict[Path, str]
) -> list[trust.Call]:
    """Every call of every statement, as PostgreSQL resolved it (flagged or not)."""
    return [c for st in statements for c in trust.calls(conn, st, display)]


@dataclass(frozen=True)
class Signature:
    """One object to plant: kind, name, exact argument types, result, argument names."""

    kind: str
    name: str
    args: tuple[int, ...]
    result: int
    returns_set: bool
    arg_names: tuple[str | None, ...]


def signatures(calls: Iterable[trust.Call]) -> list[Signature]:
    """The distinct overloads to plant for ``calls``: the exact types, plus text variants."""
    text = 25
    out: dict[Signature, None] = {}
    for c in calls:
        if c.kind == "window":
            continue  # none in the client's statements; a window probe needs C support code
        variants = [c.actual]
        for i in c.untyped:
            if i < len(c.actual) and c.arg_names[i] is None and c.actual[i] != text:
                variants.append((*c.actual[:i], text, *c.actual[i + 1 :]))
        if c.kind == "operator":
            variants = [(c.declared[0], *v[-1:]) if c.declared[0] == 0 else v for v in variants]
        for v in variants:
            out[Signature(c.kind, c.name, v, c.result, c.returns_set, c.arg_names)] = None
    return list(out)


def _type_names(conn: psycopg.Connection[Any], oids: Iterable[int]) -> dict[int, tuple[str, str]]:
    rows = conn.execute(
        "SELECT t.oid::int8, pg_catalog.format_type(t.oid, NULL), t.typtype::text"
        "  FROM pg_catalog.pg_type AS t WHERE t.oid = ANY (%s)",
        (sorted(set(oids)),),
    ).fetchall()
    return {oid: (name, kind) for oid, name, kind in rows}


def _raise_body(label: str) -> sql.Composed:
    return sql.SQL("BEGIN RAISE EXCEPTION '{} %', {}; END").format(
        sql.SQL(PROBE), sql.Literal(label + " ran")
    )


# The expressions the DDL stored (constraints, column defaults, index expressions and
# predicates, the view's query) as PostgreSQL's node trees: every function, aggregate and
# operator in them is there as the object it was bound to when the DDL ran. (pg_depend does
# not record dependencies on built-ins, so it cannot tell.)
_STORED_EXPRESSIONS = """
SELECT k.conbin::text FROM pg_catalog.pg_constraint AS k
  JOIN pg_catalog.pg_namespace AS n ON n.oid = k.connamespace
 WHERE n.nspname = ANY (%(schemas)s) AND k.conbin IS NOT NULL
UNION ALL
SELECT a.adbin::text FROM pg_catalog.pg_attrdef AS a
  JOIN pg_catalog.pg_class AS c ON c.oid = a.adrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s)
UNION ALL
SELECT pg_catalog.concat(i.indexprs::text, ' ', i.indpred::text) FROM pg_catalog.pg_index AS i
  JOIN pg_catalog.pg_class AS c ON c.oid = i.indrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s)
UNION ALL
SELECT r.ev_action::text FROM pg_catalog.pg_rewrite AS r
  JOIN pg_catalog.pg_class AS c ON c.oid = r.ev_class
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s)
"""
_BOUND_OBJECTS = """
SELECT CASE WHEN p.prokind = 'a' THEN 'aggregate' ELSE 'function' END, n.nspname::text,
       p.proname::text, p.proargtypes::pg_catalog.oid[]::int8[], p.prorettype::int8,
       p.proretset, p.prokind::text
  FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
 WHERE p.oid = ANY (%(functions)s::pg_catalog.oid[])
UNION ALL
SELECT 'operator', n.nspname::text, o.oprname::text, ARRAY[o.oprleft, o.oprright]::int8[],
       o.oprresult::int8, false, 'o'
  FROM pg_catalog.pg_operator AS o JOIN pg_catalog.pg_namespace AS n ON n.oid = o.oprnamespace
 WHERE o.oid = ANY (%(operators)s::pg_catalog.oid[])
"""
_FUNCTION_REF = re.compile(r":(?:funcid|aggfnoid|winfnoid) (\d+)")
_OPERATOR_REF = re.compile(r":opno (\d+)")
APALIS_SCHEMAS = ["apalis", "apalis_diesel_postgres"]


@dataclass(frozen=True)
class Bound:
    """A function or operator an apalis object was bound to when the DDL ran."""

    kind: str
    schema: str
    name: str
    args: tuple[int, ...]
    result: int
    returns_set: bool
    prokind: str


def schema_dependencies(conn: psycopg.Connection[Any]) -> list[Bound]:
    """Every function, aggregate and operator the stored apalis expressions are bound to."""
    trees = [
        str(r[0])
        for r in conn.execute(_STORED_EXPRESSIONS, {"schemas": APALIS_SCHEMAS}).fetchall()
        if r[0]
    ]
    functions = sorted({int(m) for t in trees for m in _FUNCTION_REF.findall(t)})
    operators = sorted({int(m) for t in trees for m in _OPERATOR_REF.findall(t)})
    rows = conn.execute(_BOUND_OBJECTS, {"functions": functions, "operators": operators})
    return [
        Bound(kind, schema, name, tuple(a for a in args if a), result, retset, prokind)
        for kind, schema, name, args, result, retset, prokind in rows.fetchall()
    ]


def ddl_signatures(bound: Iterable[Bound]) -> list[Signature]:
    """Exact-type overloads of what the DDL binds from pg_catalog (window functions aside)."""
    return [
        Signature(b.kind, b.name, b.args, b.result, b.returns_set, ())
        for b in bound
        if b.schema == "pg_catalog" and b.prokind != "w"
    ]


def plant(conn: psycopg.Connection[Any], calls: Iterable[trust.Call]) -> list[str]:
    """Create the overloads in ``public``; returns what was planted (``kind name(types)``)."""
    return plant_signatures(conn, signatures(calls))


def plant_signatures(conn: psycopg.Connection[Any], wanted: Iterable[Signature]) -> list[str]:
    """Create these overloads in ``public`` (each kind, name and argument types once)."""
    seen: set[tuple[str, str, tuple[int, ...]]] = set()
    sigs = []
    for s in wanted:
        if (s.kind, s.name, s.args) not in seen:
            seen.add((s.kind, s.name, s.args))
            sigs.append(s)
    types = _type_names(conn, [t for s in sigs for t in (*s.args, s.result) if t])
    planted: list[str] = []
    for n, s in enumerate(sigs):
        if any(types.get(t, ("", "p"))[1] == "p" for t in s.args) or (
            types.get(s.result, ("", "p"))[1] == "p" and types[s.result][0] != "void"
        ):
            continue  # a pseudo-type cannot be declared by a plain plpgsql object
        arg_types = [types[t][0] for t in s.args]
        result = types[s.result][0]
        label = f"{s.kind} public.{s.name}({', '.join(arg_types)})"
        body = _raise_body(label)
        with conn.transaction():
            if s.kind == "function":
                params = sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(t))
                    if name
                    else sql.SQL(t)
                    for t, name in zip(
                        arg_types, s.arg_names or (None,) * len(arg_types), strict=False
                    )
                )
                conn.execute(
                    sql.SQL(
                        "CREATE FUNCTION public.{}({}) RETURNS {}{} LANGUAGE plpgsql AS {}"
                    ).format(
                        sql.Identifier(s.name),
                        params,
                        sql.SQL("SETOF " if s.returns_set else ""),
                        sql.SQL(result),
                        sql.Literal(body.as_string(conn)),
                    )
                )
            elif s.kind == "aggregate":
                helper = sql.Identifier(f"apalis_probe_sfunc_{n}")
                conn.execute(
                    sql.SQL(
                        "CREATE FUNCTION public.{}({}) RETURNS {} LANGUAGE plpgsql AS {}"
                    ).format(
                        helper,
                        sql.SQL(", ").join(sql.SQL(t) for t in [result, *arg_types]),
                        sql.SQL(result),
                        sql.Literal(body.as_string(conn)),
                    )
                )
                conn.execute(
                    sql.SQL(
                        "CREATE AGGREGATE public.{}({}) (SFUNC = public.{}, STYPE = {})"
                    ).format(
                        sql.Identifier(s.name),
                        sql.SQL(", ".join(arg_types) or "*"),
                        helper,
                        sql.SQL(result),
                    )
                )
            else:
                if not _OPERATOR_NAME.match(s.name) or len(s.args) not in (1, 2):
                    continue
                helper = sql.Identifier(f"apalis_probe_op_{n}")
                conn.execute(
                    sql.SQL(
                        "CREATE FUNCTION public.{}({}) RETURNS {} LANGUAGE plpgsql AS {}"
                    ).format(
                        helper,
                        sql.SQL(", ").join(sql.SQL(t) for t in arg_types),
                        sql.SQL(result),
                        sql.Literal(body.as_string(conn)),
                    )
                )
                sides = (
                    f"LEFTARG = {arg_types[0]}, RIGHTARG = {arg_types[1]}"
                    if len(arg_types) == 2
                    else f"RIGHTARG = {arg_types[0]}"
                )
                conn.execute(
                    sql.SQL("CREATE OPERATOR public.{} ({}, FUNCTION = public.{})").format(
                        sql.SQL(s.name), sql.SQL(sides), helper
                    )
                )
        planted.append(label)
    return planted


def captured(
    conn: psycopg.Connection[Any], statements: Sequence[Statement], display: dict[Path, str]
) -> list[trust.Call]:
    """Calls that now resolve to an object outside ``pg_catalog``: the planted ones won."""
    return [c for c in derive_calls(conn, statements, display) if c.schema != "pg_catalog"]


def run_each(conn: psycopg.Connection[Any], statements: Sequence[Statement]) -> dict[str, str]:
    """Run each statement once with NULL parameters, rolled back; the probe errors by query."""
    ran: dict[str, str] = {}
    pgconn = conn.pgconn
    for st in statements:
        pgconn.exec_(b"BEGIN")
        try:
            result = pgconn.exec_params(st.numbered().encode(), [None] * len(st.params))
            message = (result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
            if result.status == pq.ExecStatus.FATAL_ERROR and PROBE in message:
                ran[st.name] = message
        finally:
            pgconn.exec_(b"ROLLBACK")
    return ran
