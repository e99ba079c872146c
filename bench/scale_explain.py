"""EXPLAIN (ANALYZE, BUFFERS) of the Worker's per-task statements, custom and generic plans.

Usage: .venv/bin/python bench/scale_explain.py URL [URL ...] [--history N] [--only NAMES]

For each database (one holding apalis.jobs with history, one empty, say): 10 tasks are
pushed and claimed for real by a registered worker, then each statement the Worker runs
per batch or per sweep is explained with those values inside a rolled-back transaction,
once as a custom plan (the first five executions of a prepared statement) and once as the
generic plan psycopg's prepared statement switches to after that (``plan_cache_mode``
forced each way). Prints, per statement and mode, the plan's index use and buffer counts.
``--history N`` first writes N finished rows the way bench/scale.py does (and VACUUM
ANALYZE) into a scratch database of its own, dropped afterwards, next to an empty one.
This is the analysis behind the "History and retention" section of the README.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
from scale import DEFAULT_URL, QUEUE, grow_history, push_tasks

STATEMENTS = ("claim_next", "ack_batch", "lock_stale_workers", "recover_tasks", "lost_claims")
PARAM = re.compile(r"%\((\w+)\)s")


def positional(sql: str) -> tuple[str, list[str]]:
    """``sql`` with its ``%(name)s`` placeholders as ``$n`` and the names in order."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return PARAM.sub(number, sql), names


def explain(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any], mode: str) -> str:
    """EXPLAIN ANALYZE of a prepared ``sql`` under ``plan_cache_mode = mode``, rolled back."""
    text, names = positional(sql)
    with conn.transaction(force_rollback=True):
        conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        conn.execute("DEALLOCATE ALL")
        conn.execute(f"PREPARE stmt AS {text}")
        cur = psycopg.ClientCursor(conn)
        args = ", ".join(["%s"] * len(names))
        cur.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, SETTINGS) EXECUTE stmt({args})",
            [params[n] for n in names],
        )
        plan = "\n".join(str(r[0]) for r in cur.fetchall())
        conn.execute("DEALLOCATE stmt")
    return plan


def cases(conn: psycopg.Connection[Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(name, sql, params) of each statement, with 10 tasks claimed by a live worker."""
    from apalis_client import worker_ops as ops
    from apalis_client.worker_logic import Outcome
    from apalis_client.worker_ops_logic import _ack_batch_params, _release_params, _sweep_params
    from apalis_generated import ack, cancel, lock, reenqueue

    lease = ops.register_worker(conn, QUEUE, f"explain-{os.getpid()}")
    try:
        push_tasks(conn.info.dsn, 20)
        held = ops.claim_next(conn, lease, batch=10)
        if len(held) != 10:
            raise RuntimeError(f"claimed {len(held)} of 10 tasks")
        claim = {
            "queue": QUEUE,
            "batch": 10,
            "worker_id": lease.worker_id,
            "lease_token": lease.lease_token,
        }
        yield "claim_next", lock.CLAIM_NEXT_SQL, claim
        items = [(t, Outcome.success(None)) for t in held]
        yield "ack_batch", ack.ACK_BATCH_SQL, _ack_batch_params(lease, items)
        sweep = {"queue": QUEUE, "orphan_threshold_secs": 30.0}
        yield "lock_stale_workers", reenqueue.LOCK_STALE_WORKERS_SQL, sweep
        yield (
            "recover_tasks",
            reenqueue.RECOVER_TASKS_SQL,
            _release_params(lease, keep=[t.id for t in held]),
        )
        yield (
            "recover_tasks (sweep)",
            reenqueue.RECOVER_TASKS_SQL,
            _sweep_params(QUEUE, ["history-worker", "nobody"]),
        )
        lost = {
            "ids": [t.id for t in held],
            "attempts": [t.attempts for t in held],
            "queue": QUEUE,
            "worker_id": lease.worker_id,
        }
        yield "lost_claims", cancel.LOST_CLAIMS_SQL, lost
        ops.ack_many(conn, lease, items)
    finally:
        ops.deregister_worker(conn, lease)


SCAN = re.compile(r"(Index Only Scan|Index Scan|Bitmap Index Scan|Seq Scan)\S*( using (\S+))?")


def summary(plan: str) -> str:
    """The scans (index named) with their rows, and the top-level buffers and times."""
    out = []
    for line in plan.splitlines():
        if SCAN.search(line) or "Buffers:" in line or " Time:" in line or "Rows Removed" in line:
            out.append(line)
    return "\n".join(out)


def run(url: str, only: set[str] | None, full: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        size = conn.execute("SELECT count(*) FROM apalis.jobs").fetchone()
        print(f"\n##### {conn.info.dbname}: {size[0] if size else 0:,} rows in apalis.jobs")
        for name, sql, params in cases(conn):
            if only and name.split(" ")[0] not in only:
                continue
            for mode in ("force_custom_plan", "force_generic_plan"):
                plan = explain(conn, sql, params, mode)
                print(f"\n=== {name}, {mode.removeprefix('force_')}")
                print(plan if full else summary(plan))


@contextlib.contextmanager
def with_history(server: str, rows: int) -> Iterator[list[str]]:
    from apalis_client import migrate
    from apalis_codegen.pgfind import scratch_database

    pid = os.getpid()
    with (
        scratch_database(server, f"scale_explain_{pid}_history") as hist,
        scratch_database(server, f"scale_explain_{pid}_empty") as empty,
    ):
        for db in (hist, empty):
            with psycopg.connect(db, autocommit=True) as conn:
                migrate(conn)
        grow_history(hist, 0, rows)
        with psycopg.connect(hist, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) apalis.jobs")
        yield [hist, empty]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("urls", nargs="*", help="databases to explain in (default: --history)")
    p.add_argument("--history", type=int, default=0, help="finished rows in a scratch database")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    p.add_argument("--only", default="", help=f"comma-separated, of {', '.join(STATEMENTS)}")
    p.add_argument("--full", action="store_true", help="whole plans, not the summary")
    args = p.parse_args(argv)
    only = {s for s in args.only.split(",") if s} or None
    with contextlib.ExitStack() as stack:
        urls = args.urls or stack.enter_context(with_history(args.database_url, args.history))
        for url in urls:
            run(url, only, args.full)
    return 0


if __name__ == "__main__":
    sys.exit(main())
