"""This repository's generator run: ``python -m codegen [--check]``.

The generator itself (``apalis-codegen``), plus a repository-only step: the sync
twins of ``apalis_client``'s hand-written ``*_async.py`` modules.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from apalis_codegen.main import main
from apalis_codegen.trust import MODE_VARIABLE

# The package whose hand-written *_async.py modules get generated sync twins (x.py or x_sync.py).
CLIENT = Path("apalis_client")


def sync_twins(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace, bool], list[str]]:
    """Add ``--client`` and return the step writing (or checking) the sync twins."""
    p.add_argument(
        "--client",
        type=Path,
        default=CLIENT,
        help="package whose *_async.py modules get a generated sync twin (x.py or x_sync.py)",
    )

    def step(args: argparse.Namespace, check: bool) -> list[str]:
        from tools import unasync

        try:
            return unasync.check(args.client) if check else unasync.write(args.client)
        except unasync.UnasyncError as exc:
            return [f"sync twins: {exc}"] if check else _fail(exc)

    def command_suffix(args: argparse.Namespace) -> str:
        return "" if args.client == CLIENT else f" --client {args.client}"

    step.command_suffix = command_suffix  # type: ignore[attr-defined]
    return step


def _fail(exc: Exception) -> list[str]:
    print(f"python -m codegen: {exc}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    # This repository's own statements are all schema-qualified: here a capturable call is an
    # error (codegen --check fails naming file:line), not the warning users' SQL gets.
    os.environ.setdefault(MODE_VARIABLE, "error")
    sys.exit(main(prog="python -m codegen", extra=sync_twins))
