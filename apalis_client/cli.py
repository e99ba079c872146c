"""The ``apalis-client`` command: migrate, verify, and a self-contained demo."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from apalis_client.errors import ApalisError, ConnectionFailed, InvalidArgument
from apalis_client.migrate import migrate, verify_schema


def connect(url: str) -> psycopg.Connection[Any]:
    """Open an autocommit connection, turning connection failures into a clear error."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConnectionFailed("connect", f"cannot connect to {_redact(url)}: {detail}") from exc


def _redact(url: str) -> str:
    # Never echo a password back to a terminal or a log.
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    if info.get("password"):
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


@contextlib.contextmanager
def database_or_throwaway(url: str | None) -> Iterator[str]:
    """``url`` itself, or (none configured) a throwaway server found as the tests find one."""
    if url:
        yield url
        return
    from apalis_codegen.pgfind import find_postgres

    with find_postgres() as server:
        print(f"using a throwaway PostgreSQL ({server.source})")
        yield server.url


def _cmd_migrate(url: str) -> int:
    with connect(url) as conn:
        report = migrate(conn)
    print(f"applied: {', '.join(report.applied) or 'nothing (up to date)'}")
    print(f"reconciled: {', '.join(report.reconciled) or 'nothing drifted'}")
    return 0


def _cmd_verify(url: str) -> int:
    with connect(url) as conn:
        report = verify_schema(conn)
    if report.ok:
        print("schema OK: generation 14, every migration applied")
        return 0
    for problem in report.problems:
        print(f"- {problem}")
    return 1


def _cmd_demo(url: str | None) -> int:
    with database_or_throwaway(url) as db, connect(db) as conn:
        report = migrate(conn)
        print(
            f"migrate: applied {report.applied or 'nothing'}; "
            f"reconciled {report.reconciled or 'nothing'}"
        )
        verified = verify_schema(conn)
        print("verify:", "OK (generation 14)" if verified.ok else verified.problems)
        from apalis_client.migrate_sync import _read_catalog

        catalog = _read_catalog(conn)
        for kind in ("relations", "constraints", "indexes", "functions", "triggers"):
            names = ", ".join(str(r["name"]) for r in catalog[kind])
            print(f"{kind:>11}: {names}")
    return 0 if verified.ok else 1


# Other modules add their own subcommands: each exposes ``register(sub)``
# (sub: argparse._SubParsersAction) and sets ``run=`` on the parsers it adds.
_COMMAND_MODULES: tuple[str, ...] = (
    "apalis_client.cli_worker",
    "apalis_client.cli_ops",
    "apalis_client.cli_push",
)


def add_database_url(parser: argparse.ArgumentParser) -> None:
    """Give a subcommand the shared ``--database-url`` option (default: $DATABASE_URL)."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL URL (default: $DATABASE_URL)",
    )


def require_url(args: argparse.Namespace) -> str:
    """The database URL of a subcommand, or a clear error when none was given."""
    url: str | None = args.database_url
    if not url:
        raise InvalidArgument("no database: pass --database-url or set DATABASE_URL")
    return url


def _register_builtin(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, text, run in (
        (
            "migrate",
            "apply schema migrations and repair drift",
            lambda a: _cmd_migrate(require_url(a)),
        ),
        ("verify", "report what differs from generation 14", lambda a: _cmd_verify(require_url(a))),
        (
            "demo",
            "migrate, verify and show the schema (throwaway PostgreSQL if none given)",
            lambda a: _cmd_demo(a.database_url),
        ),
    ):
        p = sub.add_parser(name, help=text)
        add_database_url(p)
        p.set_defaults(run=run)
    p = sub.add_parser(
        "codegen",
        help="regenerate typed Python from SQL files (python -m codegen; --help for options)",
        add_help=False,
    )
    p.set_defaults(run=lambda a: _cmd_codegen([]))


def _cmd_codegen(argv: list[str]) -> int:
    try:
        from apalis_codegen.main import main as codegen_main
    except ImportError as exc:  # jinja2 is the optional `codegen` extra
        raise InvalidArgument(
            f"the generator needs the codegen extra: pip install 'apalis-client[codegen]' ({exc})"
        ) from exc
    return codegen_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    import importlib

    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["codegen"]:
        # The generator has its own option parser; hand it everything after the word.
        try:
            return _cmd_codegen(arguments[1:])
        except ApalisError as exc:
            print(f"apalis-client codegen: {exc}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="apalis-client", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _register_builtin(sub)
    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    args = parser.parse_args(arguments)
    try:
        return int(args.run(args))
    except ApalisError as exc:
        print(f"apalis-client {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
