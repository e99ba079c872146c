"""``worker QUEUE module:function`` (or ``QUEUE=module:function ...``): run a Python worker."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from apalis_client.cli._common import (
    LEASE_LOST,
    OK,
    USAGE,
    Failure,
    add_database_url,
    parse_duration,
    require_url,
)


def load_handler(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` (the current directory is importable, as with uvicorn)."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise Failure(f"handler must be given as module:function, got {spec!r}", USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise Failure(f"cannot import handler module {module_name!r}: {exc}", USAGE) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise Failure(f"module {module_name!r} has no attribute {attr!r}", USAGE) from exc
    if not callable(target):
        raise Failure(f"{spec!r} is not callable", USAGE)
    return target  # type: ignore[no-any-return]


def parse_routes(targets: list[str]) -> list[tuple[str, str]]:
    """``QUEUE HANDLER`` (one queue) or ``QUEUE=HANDLER ...`` (several), as (queue, handler)."""
    if targets and all("=" in t for t in targets):
        pairs = [tuple(t.split("=", 1)) for t in targets]
        for queue, spec in pairs:
            if not queue or not spec:
                raise Failure(f"a route must be QUEUE=module:function, got {queue}={spec}", USAGE)
        return [(q, h) for q, h in pairs]
    if len(targets) == 2 and "=" not in targets[0]:
        return [(targets[0], targets[1])]
    raise Failure(
        "give QUEUE module:function for one queue, or QUEUE=module:function for each of "
        f"several queues; got {' '.join(targets)!r}",
        USAGE,
    )


def parse_concurrency(values: list[str], queues: list[str]) -> tuple[int, dict[str, int]]:
    """``--concurrency N`` (every queue) and ``--concurrency QUEUE=N`` (one queue)."""
    default, per_queue = 1, {}
    for value in values:
        queue, sep, number = value.rpartition("=")
        try:
            n = int(number)
        except ValueError:
            n = 0
        if n < 1:
            raise Failure(
                f"--concurrency must be N or QUEUE=N with N a whole number of at least 1, "
                f"got {value!r}",
                USAGE,
            )
        if not sep:
            default = n
        elif queue not in queues:
            raise Failure(
                f"--concurrency {value}: queue {queue!r} is not served (serving "
                f"{', '.join(queues)})",
                USAGE,
            )
        else:
            per_queue[queue] = n
    return default, per_queue


def _run(args: argparse.Namespace) -> int:
    import logging

    from apalis_client.worker import Route, Worker, WorkerConfig

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in (
            "poll_interval",
            "max_poll_interval",
            "heartbeat_interval",
            "orphan_threshold",
            "batch_size",
            "shutdown_timeout",
            "retention_window",
            "retention_interval",
        )
        if getattr(args, name) is not None
    }
    config = WorkerConfig(listen=not args.no_listen, **overrides)
    pairs = parse_routes(args.routes)
    default, per_queue = parse_concurrency(args.concurrency or [], [q for q, _ in pairs])
    try:
        routes = [Route(q, load_handler(h), concurrency=per_queue.get(q)) for q, h in pairs]
        worker = Worker(
            routes if len(routes) > 1 else routes[0].name,
            None if len(routes) > 1 else routes[0].handler,
            conninfo=require_url(args),
            concurrency=per_queue.get(pairs[0][0], default) if len(routes) == 1 else default,
            worker_id=args.worker_id,
            config=config,
            retry=args.retry_delay,
            timeout=args.timeout,
            connect_kwargs={"prepare_threshold": None} if args.no_prepare else None,
            listen_conninfo=args.listen_database_url,
            metrics_port=args.metrics_port,
        )
    except TypeError as exc:  # the handler's signature does not fit
        raise Failure(str(exc), USAGE) from exc
    stats = worker.run(until_idle=args.until_idle, max_tasks=args.max_tasks)
    print(
        f"worker {stats.worker_id}: {stats.done} done, {stats.failed} failed, "
        f"{stats.killed} killed, {stats.stale} stale in {stats.seconds:.1f}s",
        flush=True,
    )
    if len(stats.queues) > 1:
        for queue, part in stats.queues.items():
            print(
                f"  queue {queue}: {part.done} done, {part.failed} failed, {part.killed} killed, "
                f"{part.stale} stale",
                flush=True,
            )
    return LEASE_LOST if stats.lease_lost else OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``worker``."""
    p = sub.add_parser(
        "worker",
        help="run a Python worker for one or more queues (SIGTERM/SIGINT stop it gracefully)",
        description="Claim and run the tasks of QUEUE with HANDLER (module:function): "
        "'worker emails mymod:send'. One process serves several queues, each with its own "
        "handler, registration and slots, over one LISTEN connection: "
        "'worker emails=mymod:send reports=mymod:build --concurrency 4 "
        "--concurrency reports=1'. The first SIGTERM/SIGINT stops claiming, lets in-flight "
        "tasks finish and deregisters every queue; a second one exits at once. Exit status "
        "3: a lease was taken over. Give the routes together, the options before or after "
        "them.",
    )
    add_database_url(p)
    p.add_argument(
        "routes",
        nargs="+",
        metavar="ROUTE",
        help="QUEUE HANDLER: one queue (apalis job_type) and its handler as "
        "module:function; or QUEUE=HANDLER once for each of several queues",
    )
    p.add_argument(
        "--concurrency",
        action="append",
        default=None,
        metavar="N|QUEUE=N",
        help="tasks run at once: N for every queue (default 1), QUEUE=N for one; repeatable",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at http://0.0.0.0:PORT/metrics (needs the metrics "
        "extra); default: none",
    )
    p.add_argument("--worker-id", default=None, help="worker id (default: py-HOST-PID-N)")
    p.add_argument("--poll-interval", type=float, default=None, help="seconds (default 0.1)")
    p.add_argument("--max-poll-interval", type=float, default=None, help="seconds (default 5)")
    p.add_argument("--heartbeat-interval", type=float, default=None, help="seconds (default 30)")
    p.add_argument("--orphan-threshold", type=float, default=None, help="seconds (default 300)")
    p.add_argument("--batch-size", type=int, default=None, help="max tasks per claim")
    p.add_argument("--shutdown-timeout", type=float, default=None, help="seconds (default 30)")
    p.add_argument(
        "--retention-window",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="purge this queue's finished tasks older than this (e.g. 7d); default: keep all",
    )
    p.add_argument(
        "--retention-interval",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="how often the retention purge runs (default 1h)",
    )
    p.add_argument("--no-listen", action="store_true", help="poll only, no LISTEN/NOTIFY")
    p.add_argument(
        "--listen-database-url",
        default=None,
        metavar="URL",
        help="LISTEN here instead (PostgreSQL directly, when --database-url is a pooler)",
    )
    p.add_argument(
        "--no-prepare",
        action="store_true",
        help="no server-side prepared statements (PgBouncer in transaction mode)",
    )
    p.add_argument(
        "--timeout",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="time limit of one handler run (default: none)",
    )
    p.add_argument(
        "--retry-delay",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="constant wait before a failed task is retried (default: exponential backoff "
        "1s, 2s, 4s ... up to 5m, with jitter)",
    )
    p.add_argument("--until-idle", action="store_true", help="exit once nothing is claimable")
    p.add_argument("--max-tasks", type=int, default=None, help="exit after this many tasks")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=_run)
