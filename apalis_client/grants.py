"""The GRANT statements for the producer, worker, operator and migrator roles, for given names.

The statements are templates in ``queries/grants/`` (shipped in the wheel as
``apalis_client/grant_templates``); this module only fills in quoted role and database names.
Apply the migrator's first, run ``apalis-client migrate`` as the migrator, then apply the rest
as the migrator (the owner of the apalis objects). docs/security.md explains each grant.
"""

from __future__ import annotations

import unicodedata
from importlib import resources
from pathlib import Path
from typing import Final

from apalis_client.errors import InvalidArgument

# Apply order: the migrator must exist as owner before the others can be granted anything.
ROLES: Final = ("migrator", "producer", "worker", "operator")
MAX_IDENTIFIER_BYTES: Final = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names


def templates_dir() -> Path:
    """The folder of grant templates: packaged in a wheel, the repo's in a checkout."""
    packaged = Path(str(resources.files("apalis_client"))) / "grant_templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "queries" / "grants"


def quote_identifier(what: str, name: object) -> str:
    """``name`` as a double-quoted SQL identifier; InvalidArgument if it cannot be one."""
    if not isinstance(name, str):
        raise InvalidArgument(f"{what} must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidArgument(f"{what} must not be empty")
    if "\x00" in name:
        raise InvalidArgument(f"{what} {name!r} contains a NUL character")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        # Legal inside a quoted identifier, but a newline or tab in a role name is a typo
        # or an attack on whoever reads the printed script, never a role someone meant.
        raise InvalidArgument(f"{what} {name!r} contains a control character")
    size = len(name.encode("utf-8"))
    if size > MAX_IDENTIFIER_BYTES:
        raise InvalidArgument(
            f"{what} {name!r} is {size} bytes; PostgreSQL names are at most "
            f"{MAX_IDENTIFIER_BYTES} bytes"
        )
    return '"' + name.replace('"', '""') + '"'


def _template(role: str) -> str:
    return (templates_dir() / f"{role}.sql").read_text(encoding="utf-8")


def _fill(text: str, role_name: str, database: str | None) -> str:
    filled = text.replace("{role}", quote_identifier("role name", role_name))
    if "{database}" in filled:
        if database is None:
            raise InvalidArgument(
                "the migrator's grant names the database: pass database= (the database the "
                "apalis schema lives in)"
            )
        filled = filled.replace("{database}", quote_identifier("database name", database))
    return filled


def _template_statements(role: str) -> list[str]:
    # Split the template, not the filled text: a quoted name may hold ';' or '--'.
    code = "\n".join(
        line for line in _template(role).splitlines() if not line.lstrip().startswith("--")
    )
    return [" ".join(part.split()) + ";" for part in code.split(";") if part.strip()]


def _names(**names: str | None) -> dict[str, str]:
    given = {role: name for role, name in names.items() if name is not None}
    if not given:
        raise InvalidArgument("name at least one role: producer, worker, operator or migrator")
    return given


def grants_script(
    *,
    producer: str | None = None,
    worker: str | None = None,
    operator: str | None = None,
    migrator: str | None = None,
    database: str | None = None,
) -> str:
    """The grants for the named roles as one commented SQL script (what the CLI prints)."""
    names = _names(producer=producer, worker=worker, operator=operator, migrator=migrator)
    return "\n".join(
        _fill(_template(role), names[role], database).rstrip() + "\n"
        for role in ROLES
        if role in names
    )


def grant_statements(
    *,
    producer: str | None = None,
    worker: str | None = None,
    operator: str | None = None,
    migrator: str | None = None,
    database: str | None = None,
) -> list[str]:
    """The grants for the named roles, one statement per item, in apply order."""
    names = _names(producer=producer, worker=worker, operator=operator, migrator=migrator)
    return [
        _fill(statement, names[role], database)
        for role in ROLES
        if role in names
        for statement in _template_statements(role)
    ]


def print_grants(
    *,
    producer: str | None = None,
    worker: str | None = None,
    operator: str | None = None,
    migrator: str | None = None,
    database: str | None = None,
) -> int:
    """What ``apalis-client grants`` runs: print the script to stdout; returns the exit status."""
    print(
        grants_script(
            producer=producer,
            worker=worker,
            operator=operator,
            migrator=migrator,
            database=database,
        ),
        end="",
    )
    return 0
