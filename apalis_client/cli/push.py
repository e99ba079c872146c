"""``push``: enqueue one task from the shell and print its id."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from apalis_client.cli._common import OK, USAGE, Failure, add_database_url, connect, require_url

if TYPE_CHECKING:
    from apalis_client.task import Task


def _json(what: str, text: str) -> Any:
    def no_constants(name: str) -> None:
        raise Failure(f"{what}: {name} is not JSON", USAGE)

    try:
        return json.loads(text, parse_constant=no_constants)
    except ValueError as exc:
        raise Failure(f"{what} is not valid JSON: {exc}", USAGE) from exc


def read_payload(value: str) -> str:
    """``--json``: the JSON itself, ``@FILE`` for a file's contents, ``-`` for stdin."""
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        path = value[1:]
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError as exc:
            raise Failure(f"--json {value}: cannot read {path!r}: {exc.strerror}", USAGE) from exc
        except UnicodeDecodeError as exc:
            raise Failure(f"--json {value}: {path!r} is not UTF-8 text", USAGE) from exc
    return value


def parse_run_at(text: str) -> datetime | float:
    """``--run-at``: unix seconds, or an ISO 8601 time with an offset (e.g. ``...Z``)."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise Failure(
            f"--run-at {text!r} is neither unix seconds nor an ISO 8601 time", USAGE
        ) from exc
    if when.tzinfo is None:
        raise Failure(f"--run-at {text!r} has no UTC offset (add Z or +HH:MM)", USAGE)
    return when


def task_from_args(args: argparse.Namespace) -> Task[Any]:
    """The task the command line describes (checked like any other task)."""
    from apalis_client.task import Task

    fields: dict[str, Any] = {"args": _json("--json", read_payload(args.json))}
    if args.run_at is not None:
        fields["run_at"] = parse_run_at(args.run_at)
    if args.priority is not None:
        fields["priority"] = args.priority
    if args.max_attempts is not None:
        fields["max_attempts"] = args.max_attempts
    if args.idempotency_key is not None:
        fields["idempotency_key"] = args.idempotency_key
    if args.metadata is not None:
        metadata = _json("--metadata", args.metadata)
        if not isinstance(metadata, dict):
            raise Failure("--metadata must be a JSON object", USAGE)
        fields["metadata"] = metadata
    return Task[Any](**fields)


def _run(args: argparse.Namespace) -> int:
    from apalis_client.producer import push_task_with_conn

    task = task_from_args(args)
    with connect(require_url(args)) as conn:
        print(push_task_with_conn(conn, args.queue, task))
    return OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``push``."""
    p = sub.add_parser(
        "push",
        help="enqueue one task (committed at once) and print its id",
        description="Enqueue one task, JSON payload, committed at once; prints the task id.",
    )
    p.add_argument("queue", help="queue name (the Rust Config::new name / job_type)")
    p.add_argument(
        "--json",
        required=True,
        metavar="JSON|@FILE|-",
        help='task arguments as JSON (e.g. \'{"to": "a"}\'), @FILE to read a file, - to read stdin',
    )
    p.add_argument("--run-at", help="not before: ISO 8601 with offset, or unix seconds")
    p.add_argument("--priority", type=int, help="larger runs sooner (default 0)")
    p.add_argument("--max-attempts", type=int, help="attempts before Killed (default 5)")
    p.add_argument("--idempotency-key", help="a second push with this key is refused")
    p.add_argument("--metadata", help="a JSON object stored with the task (default {})")
    add_database_url(p)
    p.set_defaults(run=_run)
