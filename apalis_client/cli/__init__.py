"""The ``apalis-client`` command line: schema, push, worker, and operator commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from apalis_client.cli import ops, push, schema, worker
from apalis_client.cli._common import EXIT_CODES, exit_code, format_table

DESCRIPTION = """\
Operate apalis job queues on PostgreSQL: set up the schema, push tasks, run a Python
worker, look at queues and tasks, retry or kill them, purge finished history.
Every command takes --database-url (default: $DATABASE_URL); read commands take --json."""


def build_parser() -> argparse.ArgumentParser:
    """The whole parser: every command with its one-line help."""
    from apalis_client import __version__

    parser = argparse.ArgumentParser(
        prog="apalis-client",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"apalis-client {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    schema.register(sub)
    push.register(sub)
    worker.register(sub)
    ops.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.run(args))
    except Exception as exc:
        from apalis_client.cli._common import Failure
        from apalis_client.errors import ApalisError

        if not isinstance(exc, ApalisError | Failure):
            raise
        print(f"apalis-client {args.command}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as shells report it


__all__ = ["build_parser", "format_table", "main"]
