"""The I/O-free half of migrate and verify_schema: migration files, expected shape, drift.

Shared by ``migrate_async`` and the sync ``migrate`` module generated from it.
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
    translate_error,
)

# One fixed key so every apalis-client process serializes schema changes; taken after the
# Rust crate 0.6 setup's own lock (catalog.sql lock_rust_migrations), which every migrator
# of the schema takes so that a Python migrate and a Rust setup() queue up.
SCHEMA_LOCK_KEY = 0x61_70_61_6C_69_73  # "apalis"
#: Default longest wait (seconds) for a lock during migrate before it fails clearly.
DEFAULT_LOCK_TIMEOUT = 60.0
RUST_JOURNAL = "apalis_diesel_postgres.__diesel_schema_migrations"
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
    superseded: dict[str, list[str]] = expected_shape()["superseded_checksums"]
    for name, checksum in recorded.items():
        if name not in known:
            raise SchemaError(
                f"migration {name} is recorded as applied but this client does not ship it; "
                "the database was migrated by a newer apalis-client"
            )
        if known[name].checksum != checksum and checksum not in superseded.get(name, []):
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
        if key == "source" and _accepted_source(name, row[key]):
            continue
        if row[key] != value:
            shown = "body" if key == "source" else f"{key} {row[key]!r} (expected {value!r})"
            out.append(f"function apalis.{name} differs: {shown}")
    return out


def _accepted_source(name: str, source: object) -> bool:
    """Whether ``source`` is the Rust crate 0.6's own body of ``name`` (same behaviour as ours).

    The Rust setup writes its text over ours and ours over its; recognising its body keeps
    migrate from rewriting the function on every boot of either side.
    """
    if not isinstance(source, str):
        return False
    accepted: list[str] = expected_shape()["accepted_function_sources"].get(name, [])
    return hashlib.sha256(source.encode()).hexdigest() in accepted


def _constraint_problem(name: str, row: Row | None) -> str | None:
    want = expected_shape()["constraints"][name]
    if row is None:
        return f"constraint {name} is missing"
    if not row["validated"]:
        return f"constraint {name} is NOT VALID (rows were never checked against it)"
    if row["deferrable"]:
        return f"constraint {name} is DEFERRABLE (it must be checked at once)"
    if row["definition"] != want:
        return f"constraint {name} differs: {row['definition']!r} (expected {want!r})"
    return None


def _index_problem(name: str, row: Row | None) -> str | None:
    want = expected_shape()["indexes"][name]
    if row is None:
        return f"index {name} is missing"
    if not row["valid"]:
        return f"index {name} is invalid (a failed CREATE INDEX CONCURRENTLY?); rebuild it"
    if not row["ready"]:
        return f"index {name} is not ready for inserts; rebuild it"
    if row["definition"] != want:
        return f"index {name} differs: {row['definition']!r} (expected {want!r})"
    return None


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
    indexes, constraints = by_name(catalog["indexes"]), by_name(catalog["constraints"])
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
        if _index_problem(name, indexes.get(name)) is not None
    ]
    # Only when absent or different: re-adding a right one scans the table under a lock.
    out += [
        relpath
        for name, relpath in shape["repeatable_constraint_files"].items()
        if _constraint_problem(name, constraints.get(name)) is not None
    ]
    return out


def schema_problems(
    catalog: Mapping[str, list[Row]],
    applied: list[Row] | None,
    rust_journal: list[str] | None = None,
) -> list[str]:
    """Name every object missing or different from generation 14, unapplied migrations, and
    a Rust crate 0.6 journal (``rust_journal``: its versions, None when absent) that a Rust
    service's own verify would refuse."""
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
    constraints, indexes = by_name(catalog["constraints"]), by_name(catalog["indexes"])
    for name in shape["constraints"]:
        problem = _constraint_problem(name, constraints.get(name))
        if problem is not None:
            problems.append(problem)
    for name in shape["indexes"]:
        problem = _index_problem(name, indexes.get(name))
        if problem is not None:
            problems.append(problem)
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
    if rust_journal is None:
        problems.append(
            f"the Rust crate's migration journal {RUST_JOURNAL} is missing (a Rust 0.6 "
            "verify_schema refuses the database): run `apalis-client migrate`"
        )
    else:
        missing = [v for v in shape["rust_journal_versions"] if v not in rust_journal]
        if missing:
            problems.append(
                f"the Rust crate's migration journal {RUST_JOURNAL} lacks versions "
                f"{', '.join(missing)} (a Rust 0.6 setup() applies them)"
            )
    return problems


@contextmanager
def _translate(operation: str, lock_timeout: float | None = None) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.LockNotAvailable as exc:
        raise DatabaseError(
            operation,
            f"a lock was not granted within lock_timeout={lock_timeout:g}s: another migrator "
            "(a Rust setup() or another apalis-client migrate) or a long transaction on the "
            "apalis tables holds it; nothing was changed. Retry, or pass a longer "
            f"lock_timeout ({str(exc).strip()})",
        ) from exc
    except psycopg.Error as exc:
        # One boundary: a lost connection is ConnectionFailed, a missing grant PermissionDenied.
        raise translate_error(operation, exc) from exc


def _check_idle(status: psycopg.pq.TransactionStatus, operation: str) -> None:
    if status != psycopg.pq.TransactionStatus.IDLE:
        raise InvalidArgument(
            f"{operation} needs a connection outside any transaction (it runs everything in "
            f"one transaction of its own); connection status is {status.name}"
        )


def _lock_timeout_setting(lock_timeout: float) -> str:
    if not lock_timeout > 0:
        raise InvalidArgument(f"lock_timeout must be positive seconds, got {lock_timeout}")
    return f"{max(1, round(lock_timeout * 1000))}ms"


def _as_rows(found: Mapping[str, Sequence[BaseModel]]) -> dict[str, list[Row]]:
    return {kind: [r.model_dump() for r in rows] for kind, rows in found.items()}


def _has_ledger(catalog: Mapping[str, list[Row]]) -> bool:
    return any(r["name"] == LEDGER for r in catalog["relations"])
