"""Refuse statements whose function or operator calls an object in another schema could capture.

The list of calls comes from PostgreSQL itself, not from reading the SQL: with
``debug_print_parse`` on and ``client_min_messages = log`` the server sends the analysed parse
tree of every statement it prepares as a LOG notice. In that tree each call is already
resolved to an OID (``FUNCEXPR :funcid``, ``AGGREF :aggfnoid``, ``WINDOWFUNC :winfnoid``,
``OPEXPR``/``SCALARARRAYOPEXPR``/``DISTINCTEXPR``/``NULLIFEXPR :opno``), with the node's
source position and the types of its arguments. The catalog then says where the object lives
and what it declares.

Why a call can be captured (CVE-2018-1058): PostgreSQL resolves an unqualified function or
operator name over every schema of the search path and takes the *best* match, not the first.
``pg_catalog`` is searched first, so an identical signature elsewhere loses; but an exact-type
overload in ``public`` beats a ``pg_catalog`` candidate that needed a polymorphic or ``"any"``
argument, a variadic expansion or an implicit cast. A call is flagged when it is written
without a schema and any of these holds:

* the object is not in ``pg_catalog`` (found through the search path, so an earlier schema's
  object of the same signature would win);
* it declares a pseudo-type argument (``anyelement``, ``anyarray``, ``anycompatible…``,
  ``"any"``) or is variadic, e.g. ``array_agg``, ``unnest``, ``array_to_string``,
  ``jsonb_build_object``, ``array_length``, ``cardinality``, ``to_jsonb``;
* an argument reached it through an implicit cast, so an overload taking the argument's own
  type matches better;
* (functions) an argument is an untyped string literal or ``$n`` parameter (no ``::type``)
  and the declared type is not ``text``: the resolver would prefer a ``text`` overload;
* (operators) an untyped operand where the operator's two sides differ in type.

Qualifying fixes each: ``pg_catalog.array_agg(x)``, ``x OPERATOR(pg_catalog.=) y``; so does
casting the argument to the exact declared type. Only name-resolved calls are checked; casts
(``::``) go through ``pg_cast``, ``ORDER BY``/``ON CONFLICT`` through operator classes, and
type and table names through the search path with ``pg_catalog`` first, so none of those can
be overloaded this way (as long as no caller puts ``pg_catalog`` explicitly after another
schema in its ``search_path``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import psycopg
from psycopg import pq

from apalis_codegen.parse import QueryFileError, Statement

# "error": refuse (the generator fails, naming file:line); "warn": print and go on. Users' SQL
# gets "warn": whether a capture is possible depends on who may create objects in the schemas
# of the search path where the code runs, which the generator cannot see, and idiomatic SQL
# (an enum compared with `=`, `= ANY(...)`) would otherwise need OPERATOR(pg_catalog.=)
# everywhere. This repository's own run (python -m codegen) refuses: its statements run in
# databases it does not control.
DEFAULT_MODE = "warn"
MODE_VARIABLE = "APALIS_CODEGEN_TRUST"

Node = dict[str, Any]
Value = Union[Node, list[Any], str, None]  # noqa: UP007  (a runtime alias on 3.10)

_TEXT_OID = 25
_UNKNOWN_OID = 705
_IMPLICIT = "2"  # CoercionForm COERCE_IMPLICIT_CAST
_EXPLICIT_CALL = "0"  # CoercionForm COERCE_EXPLICIT_CALL: written as name(...)
_SCHEMA_PREFIX = re.compile(r'\s*(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\s*\.')
_QUALIFIED_OPERATOR = re.compile(r"OPERATOR\s*\(\s*[A-Za-z_\"]", re.IGNORECASE)
# Node kinds whose value type field is named as given; used for the argument types of a call.
_TYPE_FIELD = {
    "VAR": "vartype",
    "CONST": "consttype",
    "PARAM": "paramtype",
    "FUNCEXPR": "funcresulttype",
    "OPEXPR": "opresulttype",
    "NULLIFEXPR": "opresulttype",
    "AGGREF": "aggtype",
    "WINDOWFUNC": "wintype",
    "RELABELTYPE": "resulttype",
    "COERCEVIAIO": "resulttype",
    "ARRAYCOERCEEXPR": "resulttype",
    "COERCETODOMAIN": "resulttype",
    "CONVERTROWTYPEEXPR": "resulttype",
    "FIELDSELECT": "resulttype",
    "CASEEXPR": "casetype",
    "COALESCEEXPR": "coalescetype",
    "MINMAXEXPR": "minmaxtype",
    "ARRAYEXPR": "array_typeid",
    "ROWEXPR": "row_typeid",
    "SQLVALUEFUNCTION": "type",
    "CASETESTEXPR": "typeId",
    "COERCETODOMAINVALUE": "typeId",
}
_BOOL_NODES = ("BOOLEXPR", "NULLTEST", "BOOLEANTEST", "SCALARARRAYOPEXPR", "DISTINCTEXPR")
_COERCIONS = {
    "FUNCEXPR": "funcformat",
    "RELABELTYPE": "relabelformat",
    "COERCEVIAIO": "coerceformat",
    "ARRAYCOERCEEXPR": "coerceformat",
    "COERCETODOMAIN": "coercionformat",
}


@dataclass(frozen=True)
class Call:
    """One resolved function, aggregate, window function or operator call in a statement."""

    file: str
    line: int
    query: str
    kind: str  # "function", "aggregate", "window" or "operator"
    oid: int
    schema: str
    name: str
    declared: tuple[int, ...]  # declared argument type oids (operators: left, right; 0 = none)
    actual: tuple[int, ...]  # the argument types at the call, before any implicit cast
    result: int
    returns_set: bool
    qualified: bool
    reasons: tuple[str, ...] = field(default=())
    untyped: tuple[int, ...] = field(default=())  # positions given an untyped literal or $n
    arg_names: tuple[str | None, ...] = field(default=())  # for arguments given as name => x

    @property
    def capturable(self) -> bool:
        """Whether a same-named object in another schema could take this call over."""
        return bool(self.reasons)

    def describe(self) -> str:
        """``file:line: query 'q' calls ... (why)``, the check's message for this call."""
        what = "operator" if self.kind == "operator" else self.kind
        if self.name == "unnest" and self.kind == "function":
            # unnest(a, b) in FROM is special syntax that only the bare name gets.
            fix = "(ROWS FROM (pg_catalog.unnest(a), pg_catalog.unnest(b), ...) for several arrays)"
        elif self.kind == "operator":
            fix = f"(OPERATOR({self.schema}.{self.name}))"
        else:
            fix = f"({self.schema}.{self.name}(...))"
        return (
            f"{self.file}:{self.line}: query {self.query!r} calls {what} "
            f"{self.schema}.{self.name} unqualified; an object named {self.name!r} in another "
            f"schema could capture it ({'; '.join(self.reasons)}); write it schema-qualified " + fix
        )


# ---- the server's node text ----------------------------------------------------------------


def _tokens(text: str) -> Iterator[str]:
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "(){}":
            yield ch
            i += 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "(){}":
                j += 2 if text[j] == "\\" else 1
            yield text[i:j]
            i = j


class _Reader:
    def __init__(self, text: str) -> None:
        self.items = list(_tokens(text))
        self.pos = 0

    def peek(self) -> str | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def take(self) -> str:
        tok = self.items[self.pos]
        self.pos += 1
        return tok

    def value(self) -> Value:
        tok = self.take()
        if tok == "{":
            return self.node()
        if tok == "(":
            out: list[Any] = []
            while self.peek() not in (")", None):
                out.append(self.value())
            self.take()
            return out
        return None if tok == "<>" else tok

    def node(self) -> Node:
        node: Node = {"_type": self.take()}
        while self.peek() not in ("}", None):
            key = self.take()
            parts: list[Any] = []
            while self.peek() not in ("}", None) and not str(self.peek()).startswith(":"):
                parts.append(self.value())
            node[key[1:]] = parts[0] if len(parts) == 1 else (parts or None)
        self.take()
        return node


def parse_node_text(text: str) -> Value:
    """Parse PostgreSQL's node output (``nodeToString``) into dicts and lists."""
    start = text.find("{")
    if start < 0:
        return None
    return _Reader(text[start:]).value()


def _walk(value: Any) -> Iterator[Node]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# ---- calls out of a parse tree ---------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    kind: str
    oid: int
    location: int
    args: tuple[Node, ...]
    arg_types: tuple[int, ...]
    result: int
    returns_set: bool
    system: bool = False


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _expr_type(node: Any) -> int:
    if not isinstance(node, dict):
        return 0
    kind = node["_type"]
    if kind in _TYPE_FIELD:
        return _int(node.get(_TYPE_FIELD[kind]))
    if kind in _BOOL_NODES:
        return 16
    if kind in ("COLLATEEXPR", "NAMEDARGEXPR", "TARGETENTRY"):
        return _expr_type(node.get("arg") or node.get("expr"))
    return 0


def _before_implicit_cast(node: Any) -> Any:
    # The expression as written: below any implicit coercions the parser added.
    while isinstance(node, dict):
        fmt_field = _COERCIONS.get(node["_type"])
        if fmt_field is None or str(node.get(fmt_field)) != _IMPLICIT:
            return node
        inner = node.get("arg") if node["_type"] != "FUNCEXPR" else (node.get("args") or [None])[0]
        if inner is None:
            return node
        node = inner
    return node


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _system_unnest(tree: Any) -> set[int]:
    """Locations of ``unnest(a, b, ...)`` in FROM, which the parser expands to calls of
    ``pg_catalog.unnest`` itself (one per array, all at the call's location)."""
    out: set[int] = set()
    for node in _walk(tree):
        if node["_type"] != "RANGETBLENTRY":
            continue
        locations = [
            _int(f.get("funcexpr", {}).get("location"), -1)
            for f in _list(node.get("functions"))
            if isinstance(f, dict) and isinstance(f.get("funcexpr"), dict)
        ]
        out |= {loc for loc in locations if loc >= 0 and locations.count(loc) > 1}
    return out


def _raw_calls(tree: Any) -> list[_Raw]:
    out = []
    expanded = _system_unnest(tree)
    for node in _walk(tree):
        kind = node["_type"]
        if kind == "FUNCEXPR" and str(node.get("funcformat")) == _EXPLICIT_CALL:
            args = tuple(a for a in _list(node.get("args")) if isinstance(a, dict))
            out.append(
                _Raw(
                    "function",
                    _int(node.get("funcid")),
                    _int(node.get("location"), -1),
                    args,
                    tuple(_expr_type(_before_implicit_cast(a)) for a in args),
                    _int(node.get("funcresulttype")),
                    str(node.get("funcretset")) == "true",
                    # Resolved by the parser as pg_catalog.unnest, not by name.
                    system=_int(node.get("location"), -1) in expanded,
                )
            )
        elif kind == "AGGREF":
            entries = [a for a in _list(node.get("args")) if isinstance(a, dict)]
            args = tuple(e.get("expr") or e for e in entries)
            out.append(
                _Raw(
                    "aggregate",
                    _int(node.get("aggfnoid")),
                    _int(node.get("location"), -1),
                    args,
                    tuple(_expr_type(_before_implicit_cast(a)) for a in args),
                    _int(node.get("aggtype")),
                    False,
                )
            )
        elif kind == "WINDOWFUNC":
            args = tuple(a for a in _list(node.get("args")) if isinstance(a, dict))
            out.append(
                _Raw(
                    "window",
                    _int(node.get("winfnoid")),
                    _int(node.get("location"), -1),
                    args,
                    tuple(_expr_type(_before_implicit_cast(a)) for a in args),
                    _int(node.get("wintype")),
                    False,
                )
            )
        elif kind in ("OPEXPR", "DISTINCTEXPR", "NULLIFEXPR", "SCALARARRAYOPEXPR"):
            args = tuple(a for a in _list(node.get("args")) if isinstance(a, dict))
            types = [_expr_type(_before_implicit_cast(a)) for a in args]
            out.append(
                _Raw(
                    "operator",
                    _int(node.get("opno")),
                    _int(node.get("location"), -1),
                    args,
                    tuple(types),
                    _int(node.get("opresulttype"), 16),
                    False,
                )
            )
    return out


def parse_tree(conn: psycopg.Connection[Any], sql: str) -> list[Value]:
    """The analysed parse tree(s) PostgreSQL builds for ``sql`` (prepared, never run)."""
    trees: list[str] = []

    def keep(diag: psycopg.errors.Diagnostic) -> None:
        # Read inside the callback: the notice's result is freed once it returns.
        if (diag.message_primary or "").startswith("parse tree"):
            trees.append(diag.message_detail or "")

    conn.add_notice_handler(keep)
    pgconn = conn.pgconn
    try:
        for setting in (b"SET debug_print_parse = on", b"SET client_min_messages = log"):
            pgconn.exec_(setting)
        result = pgconn.prepare(b"", sql.encode())
        if result.status != pq.ExecStatus.COMMAND_OK:
            message = (result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
            raise QueryFileError(f"PostgreSQL rejected the statement: {message}")
    finally:
        pgconn.exec_(b"RESET client_min_messages")
        pgconn.exec_(b"RESET debug_print_parse")
        conn.remove_notice_handler(keep)
    return [parse_node_text(t) for t in trees]


# ---- judging each call -----------------------------------------------------------------------

_FUNCTIONS = """
SELECT p.oid::int8, n.nspname::text, p.proname::text, p.proargtypes::oid[]::int8[],
       p.provariadic::int8 <> 0,
       coalesce(bool_or(t.typtype = 'p'), false)
  FROM pg_catalog.pg_proc AS p
  JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
  LEFT JOIN pg_catalog.pg_type AS t ON t.oid = ANY (p.proargtypes)
 WHERE p.oid = ANY (%s)
 GROUP BY p.oid, n.nspname, p.proname, p.proargtypes, p.provariadic
"""
_OPERATORS = """
SELECT o.oid::int8, n.nspname::text, o.oprname::text, o.oprleft::int8, o.oprright::int8,
       coalesce(bool_or(t.typtype = 'p'), false)
  FROM pg_catalog.pg_operator AS o
  JOIN pg_catalog.pg_namespace AS n ON n.oid = o.oprnamespace
  LEFT JOIN pg_catalog.pg_type AS t ON t.oid IN (o.oprleft, o.oprright)
 WHERE o.oid = ANY (%s)
 GROUP BY o.oid, n.nspname, o.oprname, o.oprleft, o.oprright
"""


def _untyped(sql: str, node: Any) -> bool:
    """Whether ``node`` is a string literal or ``$n`` written without a ``::type`` after it."""
    if not isinstance(node, dict) or node["_type"] not in ("CONST", "PARAM"):
        return False
    loc = _int(node.get("location"), -1)
    if loc < 0 or loc >= len(sql):
        return False
    if node["_type"] == "PARAM":
        m = re.compile(r"\$\d+").match(sql, loc)
        end = m.end() if m else loc
    elif sql[loc] in "'Ee":
        start = sql.find("'", loc)
        j = start + 1
        while j < len(sql):
            if sql[j] == "'":
                if j + 1 < len(sql) and sql[j + 1] == "'":
                    j += 2
                    continue
                break
            j += 1
        end = j + 1
    elif sql.startswith(("NULL", "null"), loc):
        end = loc + 4
    else:
        return False  # a number: typed by its form
    return not sql[end:].lstrip().startswith("::")


def _positions(args: Sequence[Node]) -> list[tuple[int, Any]]:
    """(declared position, expression) of each argument; named ones carry their position."""
    out = []
    for i, arg in enumerate(args):
        if arg.get("_type") == "NAMEDARGEXPR":
            out.append((_int(arg.get("argnumber"), i), arg.get("arg")))
        else:
            out.append((i, arg))
    return out


def untyped_positions(sql: str, args: Sequence[Node]) -> list[int]:
    """Declared positions whose argument is an untyped literal or ``$n``."""
    return [i for i, a in _positions(args) if _untyped(sql, a)]


def _qualified(sql: str, kind: str, location: int) -> bool:
    if location < 0:
        return False
    if kind == "operator":
        return bool(_QUALIFIED_OPERATOR.match(sql, location))
    return bool(_SCHEMA_PREFIX.match(sql, location))


def _reasons(
    raw: _Raw,
    sql: str,
    schema: str,
    declared: tuple[int, ...],
    variadic: bool,
    pseudo: bool,
) -> list[str]:
    reasons: list[str] = []
    if schema != "pg_catalog":
        reasons.append(f"it lives in schema {schema!r}, found through the search_path")
    if pseudo:
        reasons.append('it takes a polymorphic or "any" argument')
    if variadic:
        reasons.append("it is variadic")
    implicit = [a for a in raw.args if _before_implicit_cast(a) is not a]
    if implicit:
        reasons.append("an argument reaches it through an implicit cast")
    untyped = [i for i, a in _positions(raw.args) if _untyped(sql, a)]
    if raw.kind != "operator" and any(
        i >= len(declared) or declared[i] != _TEXT_OID for i in untyped
    ):
        reasons.append("an untyped literal or parameter is resolved against a non-text argument")
    if untyped and raw.kind == "operator":
        left, right = (*declared, 0, 0)[:2]
        if left != 0 and left != right:
            reasons.append("an untyped operand meets an operator whose sides differ in type")
    return reasons


def _line_of(st: Statement, numbered: str, location: int) -> int:
    # @param -> $n never adds a newline, so line numbers carry over.
    return st.line + (numbered[:location].count("\n") if location >= 0 else 0)


def calls(
    conn: psycopg.Connection[Any], st: Statement, display: dict[Path, str] | None = None
) -> list[Call]:
    """Every function/aggregate/window/operator call of ``st``, resolved, each judged."""
    numbered = st.numbered()
    raws = [r for tree in parse_tree(conn, numbered) for r in _raw_calls(tree)]
    proc_oids = sorted({r.oid for r in raws if r.kind != "operator"})
    op_oids = sorted({r.oid for r in raws if r.kind == "operator"})
    procs = {row[0]: row[1:] for row in conn.execute(_FUNCTIONS, (proc_oids,)).fetchall()}
    ops = {row[0]: row[1:] for row in conn.execute(_OPERATORS, (op_oids,)).fetchall()}
    where = (display or {}).get(st.file, str(st.file))
    out: list[Call] = []
    seen: set[tuple[int, str, int, tuple[int, ...]]] = set()
    for raw in raws:
        if raw.kind == "operator":
            schema, name, left, right, pseudo = ops[raw.oid]
            declared: tuple[int, ...] = (left, right)
            variadic = False
        else:
            schema, name, argtypes, variadic, pseudo = procs[raw.oid]
            declared = tuple(argtypes)
        key = (raw.location, raw.kind, raw.oid, raw.arg_types)
        if key in seen:
            continue
        seen.add(key)
        qualified = raw.system or _qualified(numbered, raw.kind, raw.location)
        reasons = (
            () if qualified else tuple(_reasons(raw, numbered, schema, declared, variadic, pseudo))
        )
        out.append(
            Call(
                file=where,
                line=_line_of(st, numbered, raw.location),
                query=st.name,
                kind=raw.kind,
                oid=raw.oid,
                schema=schema,
                name=name,
                declared=declared,
                actual=tuple(
                    a if a not in (0, _UNKNOWN_OID) else d
                    for a, d in zip(
                        raw.arg_types, (*declared, *(0,) * len(raw.arg_types)), strict=False
                    )
                ),
                result=raw.result,
                returns_set=raw.returns_set,
                qualified=qualified,
                reasons=reasons,
                untyped=tuple(untyped_positions(numbered, raw.args)),
                arg_names=tuple(
                    str(a["name"]) if a.get("_type") == "NAMEDARGEXPR" else None for a in raw.args
                ),
            )
        )
    return sorted(out, key=lambda c: (c.file, c.line, c.name))


def mode() -> str:
    """``error`` or ``warn``, from APALIS_CODEGEN_TRUST (default :data:`DEFAULT_MODE`)."""
    value = os.environ.get(MODE_VARIABLE, DEFAULT_MODE).strip().lower()
    if value not in ("error", "warn", "off"):
        raise QueryFileError(f"{MODE_VARIABLE}={value!r}: expected error, warn or off")
    return value


def vet(
    conn: psycopg.Connection[Any],
    st: Statement,
    display: dict[Path, str],
    how: str | None = None,
) -> list[Call]:
    """The generator's hook: refuse (or, in warn mode, report) ``st``'s capturable calls.

    ``how`` is ``error``, ``warn`` or ``off`` (the ``--trust`` option); ``None`` reads
    :data:`MODE_VARIABLE`.
    """
    how = how or mode()
    if how == "off":
        return []
    found = [c for c in calls(conn, st, display) if c.capturable]
    messages = list(dict.fromkeys(c.describe() for c in found))
    if messages and how == "error":
        raise QueryFileError("\n".join(messages))
    for message in messages:
        print(f"codegen: warning: {message}", file=sys.stderr)
    return found


def capturable_calls(
    conn: psycopg.Connection[Any], statements: Sequence[Statement], display: dict[Path, str]
) -> list[Call]:
    """The flagged calls of many statements, in file and line order (for reports and tests)."""
    return [c for st in statements for c in calls(conn, st, display) if c.capturable]
