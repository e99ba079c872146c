"""What every command shares: the database option, exit codes, errors, tables and JSON out.

Only the standard library is imported here: ``apalis-client --help`` must not pay for
psycopg or pydantic. Commands import what they need when they run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

# Exit codes, documented in the top-level --help.
OK = 0
NO = 1  # the answer is "no": task not found, not in a state for it, verify found drift
USAGE = 2  # a bad argument (argparse uses 2 as well)
LEASE_LOST = 3  # worker: another process took the registration over
DATABASE = 4  # cannot connect, schema missing, a statement failed
TIMEOUT = 5  # wait: tasks still unfinished when --timeout ran out

EXIT_CODES = f"""\
exit status:
  {OK}  success
  {NO}  no: task not found, not in a state for it, wait ended not Done, verify found drift
  {USAGE}  bad arguments or values (nothing was written)
  {LEASE_LOST}  worker: another process took the worker's registration over
  {DATABASE}  database error: cannot connect, schema missing, a statement failed
  {TIMEOUT}  wait: tasks still unfinished when --timeout ran out

Errors go to stderr; results to stdout (--json: one JSON document)."""


class Failure(Exception):
    """A command's "no" (or worse), with the exit status to leave with."""

    def __init__(self, message: str, code: int = NO) -> None:
        super().__init__(message)
        self.code = code


def add_database_url(parser: argparse.ArgumentParser) -> None:
    """Give a subcommand the shared ``--database-url`` option (default: $DATABASE_URL)."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL URL (default: $DATABASE_URL)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    """Give a read command ``--json``: its result as one JSON document on stdout."""
    parser.add_argument(
        "--json", action="store_true", dest="as_json", help="print the result as JSON"
    )


def require_url(args: argparse.Namespace) -> str:
    """The database URL of a subcommand, or a clear error when none was given."""
    url: str | None = args.database_url
    if not url:
        raise Failure("no database: pass --database-url or set DATABASE_URL", USAGE)
    return url


def connect(url: str) -> psycopg.Connection[Any]:
    """Open an autocommit connection, turning connection failures into a clear error."""
    import psycopg

    from apalis_client.errors import ConnectionFailed

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.ProgrammingError as exc:  # not a URL nor a key=value string
        raise Failure(f"--database-url is not a PostgreSQL URL: {str(exc).strip()}", USAGE) from exc
    except psycopg.OperationalError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConnectionFailed("connect", f"cannot connect to {redact(url)}: {detail}") from exc


def redact(url: str) -> str:
    """The URL with its password masked: never echo one to a terminal or a log."""
    import psycopg

    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    if info.get("password"):
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


def exit_code(exc: BaseException) -> int:
    """The exit status for an error a command raised."""
    from apalis_client import errors

    if isinstance(exc, Failure):
        return exc.code
    if isinstance(exc, errors.InvalidArgument | errors.IdempotencyConflict):
        return USAGE
    if isinstance(exc, errors.DuplicateTaskId):
        return USAGE
    if isinstance(exc, errors.TaskNotFound | errors.TaskStateConflict):
        return NO
    if isinstance(exc, errors.WaitTimeout):
        return TIMEOUT
    return DATABASE


# -- output ---------------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: wide (CJK, emoji) characters 2, combining marks 0."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns (by display width) two spaces apart, a dashed rule under the headers."""
    widths = [display_width(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], display_width(cell))
    lines = ["  ".join(_pad(h, w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def format_age(seconds: float) -> str:
    """A short human duration: ``45s``, ``3m12s``, ``2h05m``, ``3d04h``; future as ``in 5s``."""
    if seconds < 0:
        return "in " + format_age(-seconds)
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def timestamp(value: datetime | None) -> str:
    """An aware timestamp in UTC, to the second, ISO 8601 with ``Z``; ``-`` for none."""
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def short_json(value: Any, width: int = 48) -> str:
    """Compact JSON cut to ``width`` display columns (``…`` marks a cut); ``-`` for None."""
    if value is None:
        return "-"
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if display_width(text) <= width:
        return text
    out = ""
    for ch in text:
        if display_width(out + ch) > width - 1:
            break
        out += ch
    return out + "…"


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return raw.hex()
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump()
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return {name: getattr(value, name) for name in fields}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def print_json(value: Any) -> None:
    """One JSON document on stdout: rows as objects, times as UTC ISO 8601, payloads as JSON."""
    sys.stdout.write(json.dumps(value, default=_default, ensure_ascii=False, indent=2) + "\n")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    body = text.strip().lower()
    scale = 1
    if body and body[-1] in units:
        scale = units[body[-1]]
        body = body[:-1]
    try:
        value = float(body) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (e.g. 90, 90s, 15m, 12h, 7d)"
        ) from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"duration must be 0 or more, got {text!r}")
    return value


def count(minimum: int) -> Any:
    """An argparse type: an integer of at least ``minimum``, refused before any SQL runs."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    return parse
