"""The ``push`` command: enqueue one task from the shell and print its id."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from apalis_client.cli import add_database_url, connect, require_url
from apalis_client.errors import InvalidArgument
from apalis_client.producer import push_task_with_conn
from apalis_client.task import Task


def _json(what: str, text: str) -> Any:
    def no_constants(name: str) -> None:
        raise InvalidArgument(f"{what}: {name} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constants)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from exc


def parse_run_at(text: str) -> datetime | float:
    """``--run-at``: unix seconds, or an ISO 8601 time with an offset (e.g. ``...Z``)."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InvalidArgument(
            f"--run-at {text!r} is neither unix seconds nor an ISO 8601 time"
        ) from exc


def task_from_args(args: argparse.Namespace) -> Task[Any]:
    """The task the command line describes (checked like any other task)."""
    fields: dict[str, Any] = {"args": _json("--json", args.json)}
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
            raise InvalidArgument("--metadata must be a JSON object")
        fields["metadata"] = metadata
    return Task[Any](**fields)


def _run(args: argparse.Namespace) -> int:
    task = task_from_args(args)
    with connect(require_url(args)) as conn:
        print(push_task_with_conn(conn, args.queue, task))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``push`` subcommand."""
    p = sub.add_parser(
        "push",
        help="enqueue one task (committed at once) and print its id",
        description="Enqueue one task, JSON payload, committed at once; prints the task id.",
    )
    p.add_argument("queue", help="queue name (the Rust Config::new name / job_type)")
    p.add_argument("--json", required=True, help='task arguments as JSON, e.g. \'{"to": "a"}\'')
    p.add_argument("--run-at", help="not before: ISO 8601 with offset, or unix seconds")
    p.add_argument("--priority", type=int, help="larger runs sooner (default 0)")
    p.add_argument("--max-attempts", type=int, help="attempts before Killed (default 5)")
    p.add_argument("--idempotency-key", help="a second push with this key is refused")
    p.add_argument("--metadata", help="a JSON object stored with the task (default {})")
    add_database_url(p)
    p.set_defaults(run=_run)
