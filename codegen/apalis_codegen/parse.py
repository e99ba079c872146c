"""Split query files into named statements and turn ``@param`` into placeholders."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS = ("one", "many", "exec", "execrows")
_HEADER = re.compile(r"^--\s*name:\s*(?P<rest>.*)$")
_HEADER_FULL = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s+:(?P<command>\w+)\s*$")
_DIRECTIVE = re.compile(
    r"^--\s*(?P<key>nullable|not-null|nullable-column|prepare):\s*(?P<value>.*)$"
)
PREPARE_VALUES = ("server",)
_PARAM = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")
_CAST = re.compile(
    r"\s*::\s*(?P<type>double\s+precision|character\s+varying|timestamp\s+with\s+time\s+zone"
    r"|[A-Za-z_][A-Za-z0-9_.]*)(?P<array>\s*\[\])?",
    re.IGNORECASE,
)
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


class QueryFileError(Exception):
    """A query file is malformed; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class Statement:
    """One named statement of a query file, ready to describe and render."""

    name: str
    command: str
    file: Path
    line: int  # 1-based line of the first SQL line in ``file``
    doc: str
    sql: str  # as written, with @params
    params: tuple[str, ...]  # in order of first use
    nullable_params: frozenset[str] = field(default_factory=frozenset)
    nullable_elements: frozenset[str] = field(default_factory=frozenset)
    not_null_columns: frozenset[str] = field(default_factory=frozenset)
    nullable_columns: frozenset[str] = field(default_factory=frozenset)
    server_prepared: bool = False  # `-- prepare: server`: also emit PREPARE / EXECUTE forms

    def numbered(self) -> str:
        """The SQL with ``$1, $2, ...`` placeholders, for PREPARE / describe."""
        index = {p: i + 1 for i, p in enumerate(self.params)}
        return _rewrite(self.sql, lambda name: f"${index[name]}", escape_percent=False)

    def prepared_name(self) -> str:
        """The server-side statement name: the query name and a hash of its SQL.

        A changed statement gets a new name, so a session never runs an old definition.
        """
        digest = hashlib.sha256(self.numbered().encode()).hexdigest()[:8]
        return f"{self.name}_{digest}"

    def pyformat(self) -> str:
        """The SQL with psycopg ``%(name)s`` placeholders and literal ``%`` doubled."""
        return _rewrite(self.sql, lambda name: f"%({name})s", escape_percent=True)


def _spans(sql: str) -> list[tuple[int, int, bool]]:
    """Cut ``sql`` into (start, end, is_code) spans: strings, identifiers, comments aren't code."""
    out: list[tuple[int, int, bool]] = []
    i, n, start = 0, len(sql), 0

    def close(end: int, code: bool) -> None:
        if end > start:
            out.append((start, end, code))

    while i < n:
        ch = sql[i]
        end = -1
        if ch == "'" or ch == '"':
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            end = min(j + 1, n)
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            end = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            end = n if j < 0 else j + 2
        elif ch == "$":
            m = _DOLLAR_TAG.match(sql, i)
            if m and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
                j = sql.find(m.group(0), m.end())
                end = n if j < 0 else j + len(m.group(0))
        if end >= 0:
            close(i, True)
            out.append((i, end, False))
            i = start = end
            continue
        i += 1
    close(n, True)
    return out


def _rewrite(sql: str, make: Callable[[str], str], *, escape_percent: bool) -> str:
    parts: list[str] = []
    for start, end, code in _spans(sql):
        chunk = sql[start:end]
        if escape_percent:
            chunk = chunk.replace("%", "%%")
        if code:
            chunk = _PARAM.sub(lambda m: make(m.group(1)), chunk)
        parts.append(chunk)
    return "".join(parts)


def _params_and_casts(sql: str) -> tuple[list[str], dict[str, set[str]]]:
    names: list[str] = []
    casts: dict[str, set[str]] = {}
    for start, end, code in _spans(sql):
        if not code:
            continue
        chunk = sql[start:end]
        for m in _PARAM.finditer(chunk):
            name = m.group(1)
            if name not in names:
                names.append(name)
            cast = _CAST.match(chunk, m.end())
            if cast:
                written = cast.group("type") + ("[]" if cast.group("array") else "")
                casts.setdefault(name, set()).add(_normalise_type(written))
    return names, casts


_TYPE_ALIASES = {
    "int": "int4",
    "integer": "int4",
    "bigint": "int8",
    "smallint": "int2",
    "float8": "float8",
    "double precision": "float8",
    "real": "float4",
    "boolean": "bool",
    "varchar": "text",
    "character varying": "text",
    "timestamp with time zone": "timestamptz",
}


def _normalise_type(name: str) -> str:
    name = " ".join(name.lower().split())
    array = name.endswith("[]")
    base = name[:-2].strip() if array else name
    base = base.removeprefix("pg_catalog.")
    base = _TYPE_ALIASES.get(base, base)
    return base + ("[]" if array else "")


def _split_names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_file(path: Path, display: str | None = None) -> list[Statement]:
    """Parse one query file; raises QueryFileError naming ``file:line`` on a bad header."""
    shown = display or str(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[tuple[int, str, str, list[str]]] = []  # header line, name, command, body
    current: list[str] | None = None
    for number, raw in enumerate(lines, start=1):
        header = _HEADER.match(raw.strip())
        if header:
            full = _HEADER_FULL.match(header.group("rest").strip())
            if not full:
                raise QueryFileError(
                    f"{shown}:{number}: malformed header {raw.strip()!r}; "
                    "expected '-- name: <identifier> :<command>'"
                )
            command = full.group("command")
            if command not in COMMANDS:
                raise QueryFileError(
                    f"{shown}:{number}: unknown command ':{command}' for query "
                    f"{full.group('name')!r}; expected one of "
                    + ", ".join(f":{c}" for c in COMMANDS)
                )
            current = []
            blocks.append((number, full.group("name"), command, current))
            continue
        if current is None:
            stripped = raw.strip()
            if stripped and not stripped.startswith("--"):
                raise QueryFileError(
                    f"{shown}:{number}: SQL before any '-- name: <identifier> :<command>' header"
                )
            continue
        current.append(raw)

    statements: list[Statement] = []
    seen: dict[str, int] = {}
    for header_line, name, command, body in blocks:
        if name in seen:
            raise QueryFileError(
                f"{shown}:{header_line}: duplicate query name {name!r} "
                f"(first defined at {shown}:{seen[name]})"
            )
        seen[name] = header_line
        statements.append(_statement(path, shown, header_line, name, command, body))
    return statements


def _statement(
    path: Path, shown: str, header_line: int, name: str, command: str, body: list[str]
) -> Statement:
    doc: list[str] = []
    directives: dict[str, list[str]] = {
        "nullable": [],
        "not-null": [],
        "nullable-column": [],
        "prepare": [],
    }
    i = 0
    while i < len(body) and body[i].strip().startswith("--"):
        text = body[i].strip()
        d = _DIRECTIVE.match(text)
        if d:
            key, value = d.group("key"), d.group("value")
            # prepare takes one word, checked below; the others list names.
            directives[key].extend([value.strip()] if key == "prepare" else _split_names(value))
        else:
            doc.append(text[2:].strip())
        i += 1
    while i < len(body) and not body[i].strip():
        i += 1
    sql_lines = body[i:]
    while sql_lines and not sql_lines[-1].strip():
        sql_lines.pop()
    sql = "\n".join(sql_lines).rstrip()
    sql = sql[:-1].rstrip() if sql.endswith(";") else sql
    first = header_line + 1 + i
    if not sql:
        raise QueryFileError(f"{shown}:{header_line}: query {name!r} has no SQL")
    params, casts = _params_and_casts(sql)
    for param, types in casts.items():
        if len(types) > 1:
            raise QueryFileError(
                f"{shown}:{first}: parameter @{param} of query {name!r} is used with two "
                f"types: {', '.join(sorted(types))}"
            )
    nullable = {n for n in directives["nullable"] if not n.endswith("[]")}
    elements = {n[:-2] for n in directives["nullable"] if n.endswith("[]")}
    for p in nullable | elements:
        if p not in params:
            raise QueryFileError(
                f"{shown}:{header_line}: '-- nullable: {p}' names no parameter of query "
                f"{name!r} (parameters: {', '.join(params) or 'none'})"
            )
    for value in directives["prepare"]:
        if value not in PREPARE_VALUES:
            raise QueryFileError(
                f"{shown}:{header_line}: '-- prepare: {value}' on query {name!r}; the only "
                "value is 'server' (a PREPARE / EXECUTE pair for one-message use)"
            )
    return Statement(
        name=name,
        command=command,
        file=path,
        line=first,
        doc="\n".join(doc).strip(),
        sql=sql,
        params=tuple(params),
        nullable_params=frozenset(nullable),
        nullable_elements=frozenset(elements),
        not_null_columns=frozenset(directives["not-null"]),
        nullable_columns=frozenset(directives["nullable-column"]),
        server_prepared=bool(directives["prepare"]),
    )
