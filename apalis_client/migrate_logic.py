"""The I/O-free half of migrate and verify_schema: migration files, expected shape, drift.

Shared by ``migrate_async`` and the ``migrate_sync`` generated from it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import psycopg
from pydantic import BaseModel

from apalis_client._paths import schema_dir
from apalis_client.errors import (
    DatabaseError,
    InvalidArgument,
    MigrationChecksumMismatch,
    SchemaError,
)

# One fixed key so every apalis-client process serializes schema changes.
SCHEMA_LOCK_KEY = 0x61_70_61_6C_69_73  # "apalis"
LEDGER = "apalis_client_migrations"
_MIGRATION_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
_FUNCTION_BODY = re.compile(r"AS \$function\$(.*)\$function\$", re.DOTALL)

Row = dict[str, Any]


@dataclass(frozen=True)
class MigrationFile:
    """One ordered migration file and the checksum recorded when it is applied."""

    filename: str
    text: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's bytes, as recorded in the ledger."""
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass
class MigrationReport:
    """What one ``migrate`` call did."""

    applied: list[str] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)


@dataclass
class SchemaReport:
    """What ``verify_schema`` found: an empty ``problems`` list means generation 14 exactly."""

    problems: list[str]

    @property
    def ok(self) -> bool:
        """True when the schema matches generation 14 and every migration is applied."""
        return not self.problems


def migration_files() -> list[MigrationFile]:
    """Return the ordered migration files shipped with this client."""
    folder = schema_dir()
    return [
        MigrationFile(p.name, p.read_text(encoding="utf-8"))
        for p in sorted(folder.glob("*.sql"))
        if _MIGRATION_NAME.match(p.name)
    ]


@cache
def expected_shape() -> dict[str, Any]:
    """Return the generation-14 catalog this client expects (schema/generation14.json)."""
    shape: dict[str, Any] = json.loads((schema_dir() / "generation14.json").read_text())
    return shape


def _repeatable_text(relpath: str) -> str:
    return (schema_dir() / relpath).read_text(encoding="utf-8")


def _function_body(relpath: str) -> str:
    found = _FUNCTION_BODY.search(_repeatable_text(relpath))
    if found is None:  # a broken shipped file is a packaging bug, not user input
        raise SchemaError(f"{relpath} has no $function$ body")
    return found.group(1)


# ---- pure logic -------------------------------------------------------------------------------


def by_name(rows: list[Row]) -> dict[str, Row]:
    """Index catalog rows by their ``name`` column."""
    return {str(r["name"]): r for r in rows}


def check_known_shape(catalog: Mapping[str, list[Row]]) -> None:
    """Refuse to migrate over an ``apalis`` schema this client does not recognise."""
    relations = {str(r["name"]): str(r["kind"]) for r in catalog["relations"]}
    expected = expected_shape()["columns"]
    problems: list[str] = []
    for table, columns in expected.items():
        if table not in relations:
            continue
        if relations[table] != "r":
            problems.append(
                f"apalis.{table} exists but is not a table (relkind {relations[table]})"
            )
            continue
        have = {
            str(r["column_name"]): str(r["data_type"])
            for r in catalog["columns"]
            if r["table_name"] == table
        }
        for name, spec in columns.items():
            want_type = spec.removesuffix(" NOT NULL")
            if name not in have:
                problems.append(f"apalis.{table}.{name} is missing")
            elif have[name] != want_type:
                problems.append(f"apalis.{table}.{name} is {have[name]}, expected {want_type}")
    if ("jobs" in relations) != ("workers" in relations):
        problems.append("apalis.jobs and apalis.workers must both exist or both be absent")
    if problems:
        raise SchemaError(
            "the database has an `apalis` schema in a shape this client does not know "
            "(neither the Rust crate's generation 10 nor generation 14); refusing to migrate: "
            + "; ".join(problems)
        )


def pending_migrations(files: list[MigrationFile], applied: list[Row]) -> list[MigrationFile]:
    """Return the files still to apply, refusing edited or unknown applied ones."""
    known = {f.filename: f for f in files}
    recorded = {str(r["filename"]): str(r["checksum"]) for r in applied}
    for name, checksum in recorded.items():
        if name not in known:
            raise SchemaError(
                f"migration {name} is recorded as applied but this client does not ship it; "
                "the database was migrated by a newer apalis-client"
            )
        if known[name].checksum != checksum:
            raise MigrationChecksumMismatch(name, checksum, known[name].checksum)
    return [f for f in files if f.filename not in recorded]


def _function_problems(name: str, row: Row | None) -> list[str]:
    shape = expected_shape()
    want = shape["functions"][name]
    if row is None:
        return [f"function apalis.{name} is missing"]
    out = []
    checks = {
        "arguments": want["arguments"],
        "result": want["result"],
        **shape["function_settings"],
        "source": _function_body(want["file"]),
    }
    for key, value in checks.items():
        if row[key] != value:
            shown = "body" if key == "source" else f"{key} {row[key]!r} (expected {value!r})"
            out.append(f"function apalis.{name} differs: {shown}")
    return out


def _trigger_problems(name: str, row: Row | None) -> list[str]:
    want = expected_shape()["triggers"][name]
    if row is None:
        return [f"trigger {name} on apalis.jobs is missing"]
    return [
        f"trigger {name} differs: {key} {row[key]!r} (expected {value!r})"
        for key, value in want.items()
        if key != "file" and row[key] != value
    ]


def drifted_files(catalog: Mapping[str, list[Row]]) -> list[str]:
    """Return the repeatable files to re-apply: functions, then trigger, then indexes."""
    shape = expected_shape()
    functions, triggers = by_name(catalog["functions"]), by_name(catalog["triggers"])
    indexes = by_name(catalog["indexes"])
    out = [
        want["file"]
        for name, want in shape["functions"].items()
        if _function_problems(name, functions.get(name))
    ]
    out += [
        want["file"]
        for name, want in shape["triggers"].items()
        if _trigger_problems(name, triggers.get(name))
    ]
    out += [
        relpath
        for name, relpath in shape["repeatable_index_files"].items()
        if name not in indexes or indexes[name]["definition"] != shape["indexes"][name]
    ]
    return out


def schema_problems(catalog: Mapping[str, list[Row]], applied: list[Row] | None) -> list[str]:
    """Name every object missing or different from generation 14, and unapplied migrations."""
    shape = expected_shape()
    problems: list[str] = []
    relations = {str(r["name"]): str(r["kind"]) for r in catalog["relations"]}
    for name, kind in shape["relations"].items():
        if name not in relations:
            problems.append(f"relation apalis.{name} is missing")
        elif relations[name] != kind:
            problems.append(
                f"relation apalis.{name} has relkind {relations[name]}, expected {kind}"
            )
    for table, columns in shape["columns"].items():
        have = {
            str(r["column_name"]): f"{r['data_type']}{' NOT NULL' if r['not_null'] else ''}"
            for r in catalog["columns"]
            if r["table_name"] == table
        }
        for name, spec in columns.items():
            if have.get(name) != spec and table in relations:
                problems.append(
                    f"column apalis.{table}.{name} is {have.get(name)!r}, expected {spec!r}"
                )
    for kind in ("constraints", "indexes"):
        have_defs = {n: str(r["definition"]) for n, r in by_name(catalog[kind]).items()}
        for name, definition in shape[kind].items():
            if name not in have_defs:
                problems.append(
                    f"{kind[:-1] if kind == 'constraints' else 'index'} {name} is missing"
                )
            elif have_defs[name] != definition:
                problems.append(
                    f"{'constraint' if kind == 'constraints' else 'index'} {name} differs: "
                    f"{have_defs[name]!r} (expected {definition!r})"
                )
    functions, triggers = by_name(catalog["functions"]), by_name(catalog["triggers"])
    for name in shape["functions"]:
        problems += _function_problems(name, functions.get(name))
    for name in shape["triggers"]:
        problems += _trigger_problems(name, triggers.get(name))
    if applied is None:
        problems.append("no apalis-client migrations recorded: run `apalis-client migrate`")
    else:
        try:
            pending = pending_migrations(migration_files(), applied)
        except SchemaError as exc:
            problems.append(str(exc))
        else:
            problems += [f"migration {f.filename} is not applied" for f in pending]
    return problems


@contextmanager
def _translate(operation: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise DatabaseError(operation, str(exc).strip() or type(exc).__name__) from exc


def _check_idle(status: psycopg.pq.TransactionStatus, operation: str) -> None:
    if status != psycopg.pq.TransactionStatus.IDLE:
        raise InvalidArgument(
            f"{operation} needs a connection outside any transaction (it takes a session "
            f"advisory lock and runs its own transaction); connection status is {status.name}"
        )


def _as_rows(found: Mapping[str, Sequence[BaseModel]]) -> dict[str, list[Row]]:
    return {kind: [r.model_dump() for r in rows] for kind, rows in found.items()}


def _has_ledger(catalog: Mapping[str, list[Row]]) -> bool:
    return any(r["name"] == LEDGER for r in catalog["relations"])
