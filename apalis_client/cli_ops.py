"""Operator commands: ``queues``, ``tasks``, ``show``, ``retry``, ``kill`` (plain-text tables)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from apalis_client.cli import add_database_url, connect, require_url
from apalis_client.errors import InvalidArgument, database_errors
from apalis_generated import admin
from apalis_generated.models import Job

STATUSES = ("Pending", "Queued", "Running", "Done", "Failed", "Killed")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, with a dashed rule under the headers."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
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


def _ts(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _short(value: Any, width: int = 48) -> str:
    if value is None:
        return "-"
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def _payload(raw: bytes) -> str:
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False, indent=2)
    except (ValueError, UnicodeDecodeError):
        return f"<{len(raw)} bytes, not JSON> {raw[:80]!r}"


def _cmd_queues(args: argparse.Namespace) -> int:
    with connect(require_url(args)) as conn, database_errors("queue stats"):
        stats = admin.queue_stats(conn)
    if not stats:
        print("no tasks in any queue")
        return 0
    now = datetime.now(timezone.utc)
    rows = [
        [
            s.job_type,
            str(s.total),
            str(s.pending),
            str(s.queued),
            str(s.running),
            str(s.done),
            str(s.failed),
            str(s.killed),
            format_age((now - s.oldest_pending_run_at).total_seconds())
            if s.oldest_pending_run_at
            else "-",
        ]
        for s in stats
    ]
    headers = ["QUEUE", "TOTAL", "PENDING", "QUEUED", "RUNNING", "DONE", "FAILED", "KILLED"]
    print(format_table([*headers, "OLDEST PENDING"], rows))
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise InvalidArgument(f"--limit must be at least 1, got {args.limit}")
    with connect(require_url(args)) as conn, database_errors("list tasks"):
        tasks = admin.list_tasks(
            conn, queue=args.queue, status=args.status, limit=args.limit, offset=args.offset
        )
    if not tasks:
        what = f" with status {args.status}" if args.status else ""
        print(f"no tasks in queue {args.queue!r}{what}")
        return 0
    rows = [
        [
            t.id,
            t.status,
            f"{t.attempts}/{t.max_attempts}",
            str(t.priority),
            _ts(t.run_at),
            _ts(t.done_at),
            t.lock_by or "-",
            _short(t.last_result),
        ]
        for t in tasks
    ]
    print(
        format_table(
            ["ID", "STATUS", "ATTEMPTS", "PRIO", "RUN AT", "DONE AT", "LOCK BY", "RESULT"], rows
        )
    )
    return 0


def describe_task(task: Job) -> str:
    """Every column of one task, one per line, payload and JSON pretty-printed."""
    fields = [
        ("id", task.id),
        ("queue", task.job_type),
        ("status", task.status),
        ("attempts", f"{task.attempts}/{task.max_attempts}"),
        ("priority", str(task.priority)),
        ("run_at", _ts(task.run_at)),
        ("lock_by", task.lock_by or "-"),
        ("lock_at", _ts(task.lock_at)),
        ("done_at", _ts(task.done_at)),
        ("idempotency_key", task.idempotency_key or "-"),
        ("metadata", _short(task.metadata, 200)),
        ("last_result", json.dumps(task.last_result, ensure_ascii=False, indent=2)),
        ("payload", _payload(task.job)),
    ]
    lines = []
    for name, value in fields:
        head, *rest = value.splitlines() or [""]
        lines.append(f"{name + ':':<17}{head}")
        lines.extend(" " * 17 + r for r in rest)
    return "\n".join(lines)


def _cmd_show(args: argparse.Namespace) -> int:
    with connect(require_url(args)) as conn, database_errors("find task"):
        task = admin.find_task(conn, id=args.id)
    if task is None:
        print(f"no task {args.id!r}")
        return 1
    print(describe_task(task))
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    with connect(require_url(args)) as conn, database_errors("retry task"):
        task = admin.retry_task(conn, id=args.id)
        if task is None:
            current = admin.find_task(conn, id=args.id)
    if task is None:
        if current is None:
            print(f"no task {args.id!r}")
        else:
            print(f"task {args.id} is {current.status}: only Done, Failed or Killed tasks retry")
        return 1
    print(f"task {task.id} is Pending again (attempts {task.attempts}/{task.max_attempts})")
    return 0


def _cmd_kill(args: argparse.Namespace) -> int:
    with connect(require_url(args)) as conn, database_errors("kill task"):
        task = admin.kill_task(conn, id=args.id, reason=args.reason)
        if task is None:
            current = admin.find_task(conn, id=args.id)
    if task is None:
        if current is None:
            print(f"no task {args.id!r}")
        else:
            print(f"task {args.id} is already {current.status}: nothing to kill")
        return 1
    print(f"task {task.id} killed: {args.reason}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator subcommands."""
    p = sub.add_parser("queues", help="per-queue task counts by status, oldest pending age")
    add_database_url(p)
    p.set_defaults(run=_cmd_queues)

    p = sub.add_parser("tasks", help="list the tasks of a queue, newest first")
    add_database_url(p)
    p.add_argument("queue")
    p.add_argument("--status", choices=STATUSES, default=None)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--offset", type=int, default=0)
    p.set_defaults(run=_cmd_tasks)

    p = sub.add_parser("show", help="every field of one task")
    add_database_url(p)
    p.add_argument("id")
    p.set_defaults(run=_cmd_show)

    p = sub.add_parser("retry", help="put a Done/Failed/Killed task back to Pending")
    add_database_url(p)
    p.add_argument("id")
    p.set_defaults(run=_cmd_retry)

    p = sub.add_parser("kill", help="kill a task that has not finished")
    add_database_url(p)
    p.add_argument("id")
    p.add_argument("--reason", default="killed by an operator (apalis-client kill)")
    p.set_defaults(run=_cmd_kill)
