"""Split query files into named statements and find their parameters (@name, $N, sqlc.*)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS = (
    "one",
    "many",
    "exec",
    "execrows",
    "execresult",
    "copyfrom",
    "batchexec",
    "batchone",
    "batchmany",
)
# `-- name: x :one` or sqlc's block form `/* name: x :one */`.
_HEADER = re.compile(r"^(?:--\s*name:(?P<rest>.*)|/\*\s*name:(?P<block>.*?)\*/)$")
_HEADER_FULL = re.compile(r"^(?P<name>[^\s:]+)\s+:(?P<command>\w+)\s*$")
# A comment that is shaped like a header but is not one: `-- nam: x :one`, `-- name x :one`.
_HEADER_TYPO = re.compile(
    r"^(?:--|/\*)\s*(?P<key>[A-Za-z_-]+)\s*:?\s*(?P<name>[A-Za-z_][\w]*)\s+:(?P<command>\w+)"
    r"\s*(?:\*/)?$"
)
_DIRECTIVE = re.compile(
    r"^--\s*(?P<key>nullable|not-null|nullable-column|prepare|type):\s*(?P<value>.*)$"
)
PREPARE_VALUES = ("server",)
_IDENT = r"(?:[A-Za-z_][\w$]*|\"[^\"]+\")"
# Parameter forms, matched on the SQL with strings and comments blanked out.
_REF = re.compile(
    r"(?P<slice_in>\bIN\s*\(\s*sqlc\s*\.\s*slice\s*\(\s*(?P<slice_in_arg>'[^']*'|\"[^\"]*\"|"
    r"[A-Za-z_]\w*)\s*\)\s*\))"
    r"|(?P<sqlc>\bsqlc\s*\.\s*(?P<fn>arg|narg|slice|embed)\s*\(\s*"
    r"(?P<arg>'[^']*'|\"[^\"]*\"|[A-Za-z_][\w.]*)\s*\))"
    r"|(?<![\w@])@(?P<at>[A-Za-z_]\w*)"
    r"|(?<![\w$])\$(?P<num>\d+)",
    re.IGNORECASE,
)
_CAST = re.compile(
    r"\s*::\s*(?P<type>double\s+precision|character\s+varying|timestamp\s+with\s+time\s+zone"
    r"|[A-Za-z_][A-Za-z0-9_.]*)(?P<array>\s*\[\])?",
    re.IGNORECASE,
)
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_COMPARE = r"(?:=|<>|!=|<=|>=|<|>|\bI?LIKE\b)"
_BEFORE = re.compile(
    rf"(?P<col>{_IDENT})(?:\s*\.\s*(?P<col2>{_IDENT}))?\s*{_COMPARE}\s*\(?\s*$", re.IGNORECASE
)
_AFTER = re.compile(
    rf"\s*\)?(?:\s*::\s*[\w.]+(?:\s*\[\])?)?\s*{_COMPARE}\s*(?:{_IDENT}\s*\.\s*)?"
    rf"(?P<col>{_IDENT})(?!\s*[.(])",
    re.IGNORECASE,
)
_LIMIT = re.compile(r"\b(?P<kw>LIMIT|OFFSET)\s*\(?\s*$", re.IGNORECASE)
_INSERT = re.compile(
    rf"\bINSERT\s+INTO\s+{_IDENT}(?:\s*\.\s*{_IDENT})?(?:\s+AS\s+{_IDENT})?\s*"
    r"\((?P<cols>[^()]*)\)\s*VALUES\s*",
    re.IGNORECASE,
)
_NOT_COLUMNS = frozenset({"any", "all", "some", "null", "true", "false", "not", "select"})


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
    sql: str  # as written
    params: tuple[str, ...]  # SQL-side names, in placeholder order ($1, $2, ...)
    nullable_params: frozenset[str] = field(default_factory=frozenset)
    nullable_elements: frozenset[str] = field(default_factory=frozenset)
    not_null_columns: frozenset[str] = field(default_factory=frozenset)
    nullable_columns: frozenset[str] = field(default_factory=frozenset)
    server_prepared: bool = False  # `-- prepare: server`: also emit PREPARE / EXECUTE forms
    # The SQL cut at each parameter: text, then the parameter's name (None after the last).
    pieces: tuple[tuple[str, str | None], ...] = ()
    embeds: tuple[str, ...] = ()  # sqlc.embed(x) targets, in order
    type_overrides: Mapping[str, str] = field(default_factory=dict)  # column/param -> type
    header_line: int = 0
    positional: bool = False  # written with $N (names derived as sqlc derives them)

    def shown_param(self, name: str) -> str:
        """How a message names a parameter: ``@name``, or ``$2 (named name)``."""
        if self.positional and name in self.params:
            return f"${self.params.index(name) + 1} (named {name})"
        return f"@{name}"

    def numbered(self) -> str:
        """The SQL with ``$1, $2, ...`` placeholders, for PREPARE / describe."""
        index = {p: i + 1 for i, p in enumerate(self.params)}
        return "".join(
            text + ("" if name is None else f"${index[name]}") for text, name in self.pieces
        )

    def prepared_name(self) -> str:
        """The server-side statement name: the query name and a hash of its SQL.

        A changed statement gets a new name, so a session never runs an old definition.
        """
        digest = hashlib.sha256(self.numbered().encode()).hexdigest()[:8]
        return f"{self.name}_{digest}"

    def pyformat(self, names: Mapping[str, str] | None = None) -> str:
        """The SQL with psycopg ``%(name)s`` placeholders and literal ``%`` doubled."""
        names = names or {}
        return "".join(
            text.replace("%", "%%") + ("" if p is None else f"%({names.get(p, p)})s")
            for text, p in self.pieces
        )


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


def masked(sql: str) -> str:
    """``sql`` with comments blanked and string bodies blanked (quotes kept), same offsets."""
    chars = list(sql)
    for start, end, code in _spans(sql):
        if code:
            continue
        keep_ends = sql[start] in "'\""
        for k in range(start, end):
            if chars[k] == "\n":
                continue
            if keep_ends and k in (start, end - 1) and chars[k] == sql[start]:
                continue
            chars[k] = " "
    return "".join(chars)


def split_statements(sql: str) -> list[tuple[int, str]]:
    """Cut ``sql`` at top-level semicolons: (offset, text) of each non-blank statement."""
    out: list[tuple[int, str]] = []
    blank = masked(sql)
    start = 0
    for i, ch in enumerate(blank):
        if ch == ";":
            out.append((start, sql[start:i]))
            start = i + 1
    out.append((start, sql[start:]))
    return [(off, text) for off, text in out if masked(text).strip()]


def _unquote(arg: str) -> str:
    return arg[1:-1] if arg[:1] in "'\"" and arg[-1:] == arg[:1] else arg


def _column_name(raw: str) -> str:
    return raw[1:-1] if raw.startswith('"') else raw.lower()


def _insert_names(blank: str) -> dict[int, str]:
    """Offsets of ``$N`` written as a whole VALUES item -> the INSERT column at that position."""
    out: dict[int, str] = {}
    for m in _INSERT.finditer(blank):
        columns = [_column_name(c.strip()) for c in m.group("cols").split(",")]
        i = m.end()
        while i < len(blank) and blank[i] == "(":
            depth, item_start, position = 0, i + 1, 0
            j = i
            while j < len(blank):
                ch = blank[j]
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                if (ch == "," and depth == 1) or depth == 0:
                    item = blank[item_start:j]
                    p = re.fullmatch(r"\s*\$(\d+)\s*(?:::.*)?", item, re.DOTALL)
                    if p and position < len(columns):
                        out[item_start + item.index("$")] = columns[position]
                    position += 1
                    item_start = j + 1
                    if depth == 0:
                        break
                j += 1
            i = j + 1
            while i < len(blank) and blank[i] in " \t\r\n,":
                i += 1
    return out


def _context_name(blank: str, start: int, end: int, inserts: dict[int, str]) -> str | None:
    """The name sqlc would give the ``$N`` at ``blank[start:end]``, from what surrounds it."""
    if start in inserts:
        return inserts[start]
    before = blank[max(0, start - 200) : start]
    limit = _LIMIT.search(before)
    if limit:
        return limit.group("kw").lower()
    m = _BEFORE.search(before)
    if m:
        col = m.group("col2") or m.group("col")
        if col.lower() not in _NOT_COLUMNS:
            return _column_name(col)
    a = _AFTER.match(blank, end)
    if a and a.group("col").lower() not in _NOT_COLUMNS:
        return _column_name(a.group("col"))
    return None


@dataclass
class _Params:
    pieces: list[tuple[str, str | None]]
    names: list[str]
    nullable: set[str]
    embeds: list[str]
    casts: dict[str, set[str]]
    positional: bool


def _find_params(sql: str, where: str, query: str) -> _Params:
    blank = masked(sql)
    inserts = _insert_names(blank)
    pieces: list[tuple[str, str | None]] = []
    named: list[str] = []
    positional: dict[int, str | None] = {}
    nullable: set[str] = set()
    embeds: list[str] = []
    casts: dict[str, set[str]] = {}
    refs: list[tuple[int, int, str, str]] = []  # start, end, kind, value
    for m in _REF.finditer(blank):
        if m.group("slice_in"):
            arg = _unquote(sql[m.start("slice_in_arg") : m.end("slice_in_arg")])
            refs.append((m.start(), m.end(), "slice_in", arg))
        elif m.group("sqlc"):
            arg = _unquote(sql[m.start("arg") : m.end("arg")])
            refs.append((m.start(), m.end(), m.group("fn").lower(), arg))
        elif m.group("at"):
            refs.append((m.start(), m.end(), "arg", m.group("at")))
        else:
            number = int(m.group("num"))
            refs.append((m.start(), m.end(), "num", str(number)))
            name = _context_name(blank, m.start(), m.end(), inserts)
            if positional.get(number) is None:
                positional[number] = name
    kinds = {k for _, _, k, _ in refs if k != "embed"}
    if "num" in kinds and kinds - {"num"}:
        raise QueryFileError(
            f"{where}: query {query!r} mixes positional $N parameters with named ones "
            "(@name / sqlc.arg); use one style per statement"
        )
    if positional:
        missing = sorted(set(range(1, max(positional) + 1)) - set(positional))
        if missing:
            raise QueryFileError(
                f"{where}: query {query!r} uses ${max(positional)} but not "
                + ", ".join(f"${n}" for n in missing)
            )
    final: dict[int, str] = {}
    for number in sorted(positional):
        base = positional[number] or f"dollar_{number}"
        name = base if base not in final.values() else f"{base}_{number}"
        final[number] = name
    cursor = 0
    for start, end, kind, value in refs:
        text = sql[cursor:start]
        cursor = end
        if kind == "embed":
            pieces.append((text + f"{value}.*", None))
            embeds.append(value)
            continue
        if not re.fullmatch(r"[A-Za-z_]\w*", value if kind != "num" else "x"):
            raise QueryFileError(
                f"{where}: sqlc.{kind}({value!r}) in query {query!r} is not a valid parameter name"
            )
        name = final[int(value)] if kind == "num" else value
        if kind == "slice_in":
            text += "= ANY("
        if kind == "narg":
            nullable.add(name)
        if kind != "num" and name not in named:
            named.append(name)
        pieces.append((text, name))
        if kind == "slice_in":
            pieces.append((")", None))
        cast = _CAST.match(blank, end)
        if cast:
            written = cast.group("type") + ("[]" if cast.group("array") else "")
            casts.setdefault(name, set()).add(_normalise_type(written))
    pieces.append((sql[cursor:], None))
    names = [final[n] for n in sorted(final)] if final else named
    # Merge runs of text so each piece is "text, then one parameter".
    merged: list[tuple[str, str | None]] = []
    pending = ""
    for text, name in pieces:
        pending += text
        if name is not None:
            merged.append((pending, name))
            pending = ""
    merged.append((pending, None))
    return _Params(merged, names, nullable, embeds, casts, bool(final))


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


def _line_at(text: str, offset: int, first_line: int) -> int:
    return first_line + text[:offset].count("\n")


def parse_file(
    path: Path, display: str | None = None, warnings: list[str] | None = None
) -> list[Statement]:
    """Parse one query file; raises QueryFileError naming ``file:line`` on a bad header.

    Statements without a name header are skipped (as sqlc does); each skip is appended to
    ``warnings`` as a ``file:line`` message.
    """
    shown = display or str(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise QueryFileError(f"{shown}:1: not UTF-8 text ({exc.reason})") from exc
    blocks: list[tuple[int, str, str, int, list[str]]] = []  # header, name, cmd, body line, body
    preamble: list[str] = []
    current: list[str] = preamble
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        header = _HEADER.match(stripped)
        if header:
            rest = (
                header.group("rest") if header.group("rest") is not None else header.group("block")
            )
            full = _HEADER_FULL.match(rest.strip())
            if not full:
                raise QueryFileError(
                    f"{shown}:{number}: malformed header {stripped!r}; "
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
            blocks.append((number, full.group("name"), command, number + 1, current))
            continue
        typo = _HEADER_TYPO.match(stripped)
        if typo and typo.group("key").lower() not in ("nullable", "not-null", "type"):
            raise QueryFileError(
                f"{shown}:{number}: {stripped!r} looks like a query header but is not one; "
                "expected '-- name: <identifier> :<command>'"
            )
        current.append(raw)

    for offset, text in split_statements("\n".join(preamble)):
        line = _line_at("\n".join(preamble), offset + len(text) - len(text.lstrip()), 1)
        _warn(
            warnings,
            f"{shown}:{line}: statement without a '-- name: <identifier> :<command>'"
            " header skipped",
        )

    statements: list[Statement] = []
    seen: dict[str, int] = {}
    for header_line, name, command, body_line, body in blocks:
        if name in seen:
            raise QueryFileError(
                f"{shown}:{header_line}: duplicate query name {name!r} "
                f"(first defined at {shown}:{seen[name]})"
            )
        seen[name] = header_line
        statements.append(
            _statement(path, shown, header_line, name, command, body_line, body, warnings)
        )
    return statements


def _warn(warnings: list[str] | None, message: str) -> None:
    if warnings is not None:
        warnings.append(message)


def _statement(
    path: Path,
    shown: str,
    header_line: int,
    name: str,
    command: str,
    body_line: int,
    body: list[str],
    warnings: list[str] | None,
) -> Statement:
    doc: list[str] = []
    directives: dict[str, list[str]] = {
        "nullable": [],
        "not-null": [],
        "nullable-column": [],
        "prepare": [],
        "type": [],
    }
    i = 0
    while i < len(body) and (body[i].strip().startswith("--") or not body[i].strip()):
        text = body[i].strip()
        i += 1
        if not text:
            continue
        d = _DIRECTIVE.match(text)
        if d:
            key, value = d.group("key"), d.group("value")
            # prepare and type take one value each, checked below; the others list names.
            directives[key].extend(
                [value.strip()] if key in ("prepare", "type") else _split_names(value)
            )
        else:
            doc.append(text[2:].strip())
    first = body_line + i
    rest = "\n".join(body[i:])
    parts = split_statements(rest)
    if not parts:
        raise QueryFileError(f"{shown}:{header_line}: query {name!r} has no SQL")
    _, sql = parts[0]
    sql = sql.rstrip()
    for offset, text in parts[1:]:
        line = _line_at(rest, offset + len(text) - len(text.lstrip()), first)
        _warn(
            warnings,
            f"{shown}:{line}: statement without a '-- name: <identifier> :<command>' header "
            f"skipped (after query {name!r})",
        )
    # Leading blank lines of the SQL do not count: line numbers stay right for messages.
    lead = len(sql) - len(sql.lstrip("\n"))
    first += lead
    sql = sql.lstrip("\n")
    where = f"{shown}:{first}"
    found = _find_params(sql, where, name)
    for param, types in found.casts.items():
        if len(types) > 1:
            label = (
                f"${found.names.index(param) + 1} (named {param})"
                if found.positional
                else f"@{param}"
            )
            raise QueryFileError(
                f"{where}: parameter {label} of query {name!r} is used with two "
                f"types: {', '.join(sorted(types))}"
            )
    params = found.names
    nullable = {n for n in directives["nullable"] if not n.endswith("[]")} | found.nullable
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
    overrides: dict[str, str] = {}
    for value in directives["type"]:
        m = re.fullmatch(r"([A-Za-z_]\w*)\s*=\s*([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)", value)
        if not m:
            raise QueryFileError(
                f"{shown}:{header_line}: '-- type: {value}' on query {name!r}; expected "
                "'-- type: <column or parameter> = <module>.<Type>' (a pydantic model)"
            )
        overrides[m.group(1)] = m.group(2)
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
        pieces=tuple(found.pieces),
        embeds=tuple(found.embeds),
        type_overrides=overrides,
        header_line=header_line,
        positional=found.positional,
    )
