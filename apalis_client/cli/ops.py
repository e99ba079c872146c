"""Operator commands: queues, tasks, show, retry, kill, workers, purge, prune, wait."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from apalis_client.cli._common import (
    NO,
    OK,
    USAGE,
    Failure,
    add_database_url,
    add_json,
    connect,
    count,
    format_age,
    format_table,
    parse_duration,
    print_json,
    require_url,
    short_json,
    timestamp,
)

if TYPE_CHECKING:
    from apalis_generated.models import Job

STATUS_HELP = "Pending, Queued, Running, Done, Failed or Killed (any case)"


def _payload(raw: bytes) -> str:
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False, indent=2)
    except (ValueError, UnicodeDecodeError):
        return f"<{len(raw)} bytes, not JSON> {raw[:80]!r}"


def _queues(args: argparse.Namespace) -> int:
    from apalis_client import admin

    with connect(require_url(args)) as conn:
        stats = admin.queue_stats(conn)
    if args.as_json:
        print_json(stats)
        return OK
    if not stats:
        print("no tasks in any queue")
        return OK
    now = datetime.now(timezone.utc)
    rows = [
        [
            s.job_type,
            *(str(n) for n in (s.total, s.pending, s.queued, s.running, s.done, s.failed)),
            str(s.killed),
            format_age((now - s.oldest_pending_run_at).total_seconds())
            if s.oldest_pending_run_at
            else "-",
        ]
        for s in stats
    ]
    headers = ["QUEUE", "TOTAL", "PENDING", "QUEUED", "RUNNING", "DONE", "FAILED", "KILLED"]
    print(format_table([*headers, "OLDEST PENDING"], rows))
    return OK


def _tasks(args: argparse.Namespace) -> int:
    from apalis_client import admin

    status = admin.canonical_status(args.status) if args.status else None
    with connect(require_url(args)) as conn:
        tasks = admin.list_tasks(
            conn, args.queue, status=status, limit=args.limit, offset=args.offset
        )
    if args.as_json:
        print_json(tasks)
        return OK
    if not tasks:
        what = f" with status {status}" if status else ""
        print(f"no tasks in queue {args.queue!r}{what}")
        return OK
    rows = [
        [
            t.id,
            t.status,
            f"{t.attempts}/{t.max_attempts}",
            str(t.priority),
            timestamp(t.run_at),
            timestamp(t.done_at),
            t.lock_by or "-",
            short_json(t.last_result),
        ]
        for t in tasks
    ]
    headers = ["ID", "STATUS", "ATTEMPTS", "PRIO", "RUN AT", "DONE AT", "LOCK BY", "RESULT"]
    print(format_table(headers, rows))
    return OK


def describe_task(task: Job) -> str:
    """Every column of one task, one per line, payload and JSON pretty-printed."""
    fields = [
        ("id", task.id),
        ("queue", task.job_type),
        ("status", task.status),
        ("attempts", f"{task.attempts}/{task.max_attempts}"),
        ("priority", str(task.priority)),
        ("run_at", timestamp(task.run_at)),
        ("lock_by", task.lock_by or "-"),
        ("lock_at", timestamp(task.lock_at)),
        ("done_at", timestamp(task.done_at)),
        ("idempotency_key", task.idempotency_key or "-"),
        ("metadata", short_json(task.metadata, 200)),
        ("last_result", json.dumps(task.last_result, ensure_ascii=False, indent=2)),
        ("payload", _payload(task.job)),
    ]
    lines = []
    for name, value in fields:
        head, *rest = value.splitlines() or [""]
        lines.append(f"{name + ':':<17}{head}")
        lines.extend(" " * 17 + r for r in rest)
    return "\n".join(lines)


def _show(args: argparse.Namespace) -> int:
    from apalis_client import admin
    from apalis_client.admin_logic import canonical_ids

    (task_id,) = canonical_ids(args.id)  # a bad id is refused before connecting
    with connect(require_url(args)) as conn:
        task = admin.find_task(conn, task_id)
    if args.as_json:
        print_json(task)
    else:
        print(describe_task(task))
    return OK


def _bulk(args: argparse.Namespace, verb: str) -> tuple[str, str] | None:
    """``--queue Q --status S`` for a bulk action, or None for ids; never both or neither."""
    from apalis_client.admin_logic import canonical_ids

    if args.ids and (args.queue or args.status):
        raise Failure(f"{verb}: give task ids or --queue with --status, not both", USAGE)
    if args.ids:
        args.ids = canonical_ids(args.ids)  # a bad id is refused before connecting
        return None
    if not (args.queue and args.status):
        raise Failure(f"{verb}: give task ids, or --queue and --status for a bulk {verb}", USAGE)
    return args.queue, args.status


def _retry(args: argparse.Namespace) -> int:
    from apalis_client import admin

    bulk = _bulk(args, "retry")
    if bulk is not None:
        status = admin.canonical_status(bulk[1], allowed=admin.RETRYABLE, what="--status")
    with connect(require_url(args)) as conn:
        if bulk is not None:
            n = admin.retry_tasks(conn, bulk[0], status)
            if args.as_json:
                print_json({"queue": bulk[0], "status": status, "retried": n})
            else:
                print(f"{n} {status} task(s) of queue {bulk[0]!r} are Pending again")
            return OK
        done = [admin.retry_task(conn, i) for i in args.ids]
    if args.as_json:
        print_json(done)
    for task in [] if args.as_json else done:
        print(
            f"task {task.id} is Pending again (attempts {task.attempts}/{task.max_attempts}); "
            "its old result was cleared"
        )
    return OK


def _cancel(args: argparse.Namespace) -> int:
    from apalis_client import admin

    with connect(require_url(args)) as conn:
        done = [admin.cancel(conn, i) for i in args.ids]
    if args.as_json:
        print_json(done)
    for task in [] if args.as_json else done:
        print(f"task {task.id} cancelled")
    return OK


def _kill(args: argparse.Namespace) -> int:
    from apalis_client import admin

    bulk = _bulk(args, "kill")
    if bulk is not None:
        status = admin.canonical_status(bulk[1], allowed=admin.KILLABLE, what="--status")
    with connect(require_url(args)) as conn:
        if bulk is not None:
            n = admin.kill_tasks(conn, bulk[0], status, reason=args.reason)
            if args.as_json:
                print_json({"queue": bulk[0], "status": status, "killed": n})
            else:
                print(f"{n} {status} task(s) of queue {bulk[0]!r} killed: {args.reason}")
            return OK
        done = [admin.kill_task(conn, i, reason=args.reason) for i in args.ids]
    if args.as_json:
        print_json(done)
    for task in [] if args.as_json else done:
        print(f"task {task.id} killed: {args.reason}")
    return OK


def _workers(args: argparse.Namespace) -> int:
    from apalis_client import admin

    with connect(require_url(args)) as conn:
        workers = admin.list_workers(conn, args.queue)
    if args.as_json:
        print_json(workers)
        return OK
    if not workers:
        print(f"no workers of queue {args.queue!r}" if args.queue else "no workers")
        return OK
    rows = [
        [
            w.worker_type,
            w.id,
            "yes" if w.registered else "no",
            format_age(w.seen_secs_ago) + " ago",
            timestamp(w.started_at),
            str(w.active_tasks),
            w.storage_name,
        ]
        for w in workers
    ]
    headers = ["QUEUE", "WORKER", "REGISTERED", "LAST SEEN", "STARTED", "ACTIVE", "STORAGE"]
    print(format_table(headers, rows))
    return OK


def _purge(args: argparse.Namespace) -> int:
    from apalis_client import admin

    if args.all == (args.older_than is not None):
        raise Failure("purge: give --older-than DURATION, or --all for every finished task", USAGE)
    window = 0.0 if args.all else float(args.older_than)
    with connect(require_url(args)) as conn:
        report = admin.purge(conn, args.queue, older_than=window, batch=args.batch)
    if args.as_json:
        print_json(
            {
                "queue": args.queue,
                "deleted": report.deleted,
                "batches": report.batches,
                "cutoff": report.cutoff,
                "seconds": report.seconds,
            }
        )
        return OK
    what = "every finished task" if args.all else f"finished before {timestamp(report.cutoff)}"
    print(
        f"purged {report.deleted} task(s) of queue {args.queue!r} ({what}) in "
        f"{report.batches} batch(es), {report.seconds:.2f}s"
    )
    return OK


def _prune(args: argparse.Namespace) -> int:
    from apalis_client import admin
    from apalis_client.admin_logic import check_prune

    check_prune(args.stale_for, args.orphan_threshold)
    with connect(require_url(args)) as conn:
        report = admin.prune_workers(
            conn,
            args.queue,
            stale_for=args.stale_for,
            orphan_threshold=args.orphan_threshold,
        )
    if args.as_json:
        print_json({"queue": args.queue, "deleted": report.deleted, "cutoff": report.cutoff})
        return OK
    print(
        f"pruned {report.deleted} worker row(s) of queue {args.queue!r} unseen since "
        f"{timestamp(report.cutoff)} and named by no task"
    )
    return OK


def _wait(args: argparse.Namespace) -> int:
    from apalis_client import admin
    from apalis_client.admin_logic import canonical_ids

    ids = canonical_ids(args.ids)  # a bad id is refused before connecting
    with connect(require_url(args)) as conn:
        states = admin.wait_for(conn, ids, timeout=args.timeout)
    if args.as_json:
        print_json(list(states.values()))
    else:
        for s in states.values():
            print(f"{s.id}  {s.status}  {short_json(s.last_result, 200)}")
    return OK if all(s.status == "Done" for s in states.values()) else NO


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator commands."""
    p = sub.add_parser("queues", help="per-queue task counts by status, oldest pending age")
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_queues)

    p = sub.add_parser("tasks", help="list the tasks of a queue, unfinished first, then newest")
    p.add_argument("queue")
    p.add_argument("--status", help=STATUS_HELP)
    p.add_argument("--limit", type=count(1), default=20, help="rows to show (default 20)")
    p.add_argument("--offset", type=count(0), default=0, help="rows to skip (default 0)")
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_tasks)

    p = sub.add_parser("show", help="every field of one task (id in any case)")
    p.add_argument("id")
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_show)

    p = sub.add_parser(
        "retry",
        help="put Done/Failed/Killed tasks back to Pending (by id, or by --queue and --status)",
        description="Put tasks back to Pending, claimable now, with their old result cleared; "
        "a task out of attempts gets one more. Give ids, or --queue and --status for all "
        "tasks of a queue in that status.",
    )
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--queue", help="bulk: the queue")
    p.add_argument("--status", help="bulk: Done, Failed or Killed (any case)")
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_retry)

    p = sub.add_parser(
        "kill",
        help="kill unfinished tasks (by id, or by --queue and --status)",
        description="Kill tasks that have not finished: never claimed again, result "
        '{"Err": REASON}. A worker running one keeps running it and reports the kill when '
        "it finishes. Give ids, or --queue and --status for all tasks of a queue in that "
        "status.",
    )
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--queue", help="bulk: the queue")
    p.add_argument("--status", help="bulk: Pending, Queued, Running or Failed (any case)")
    p.add_argument("--reason", default="killed by an operator (apalis-client kill)")
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_kill)

    p = sub.add_parser(
        "cancel",
        help="cancel unfinished tasks by id, stopping the handler that runs one",
        description='Cancel tasks: Killed with {"Err": "cancelled by operator"}. A worker '
        "running one is told within a second: an async handler is cancelled, a sync one "
        "sees current_task().cancelled.",
    )
    p.add_argument("ids", nargs="+", metavar="ID")
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_cancel)

    p = sub.add_parser("workers", help="worker rows: registered, last heartbeat, active tasks")
    p.add_argument("queue", nargs="?", help="only this queue's workers")
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_workers)

    p = sub.add_parser(
        "purge",
        help="delete a queue's finished tasks older than a window (or --all)",
        description="Delete the queue's finished tasks (Done, Killed, Failed out of attempts) "
        "that finished before now minus --older-than, in batches that skip locked rows: "
        "safe while workers run.",
    )
    p.add_argument("queue")
    p.add_argument(
        "--older-than", type=parse_duration, metavar="DURATION", help="e.g. 7d, 12h, 3600"
    )
    p.add_argument("--all", action="store_true", help="every finished task, whatever its age")
    p.add_argument("--batch", type=count(1), default=10_000, help="rows per transaction")
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_purge)

    p = sub.add_parser(
        "prune",
        help="delete a queue's stale worker rows that no task names",
        description="Delete the queue's worker rows unseen for --stale-for (never less than "
        "--orphan-threshold) that no task names as its owner.",
    )
    p.add_argument("queue")
    p.add_argument(
        "--stale-for", type=parse_duration, default=3600.0, metavar="DURATION",
        help="unseen at least this long (default 1h)",
    )  # fmt: skip
    p.add_argument(
        "--orphan-threshold", type=parse_duration, default=300.0, metavar="DURATION",
        help="the workers' orphan threshold (default 300s), the floor for --stale-for",
    )  # fmt: skip
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_prune)

    p = sub.add_parser(
        "wait",
        help="wait until tasks finish; exit 0 when all are Done",
        description="Wait until every task is finished for good (Done, Killed, or Failed out "
        "of attempts), polling from 100 ms to 2 s. Exit 0 when all are Done, 1 when one "
        "ended otherwise or is not found, 5 on --timeout.",
    )
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument(
        "--timeout", type=parse_duration, default=None, metavar="DURATION",
        help="give up after this long (default: wait forever)",
    )  # fmt: skip
    add_database_url(p)
    add_json(p)
    p.set_defaults(run=_wait)
