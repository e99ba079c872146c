"""Per-call cost of one generated ``:one`` call against the same SQL run directly through psycopg.

Usage: .venv/bin/python bench/generated_call.py [--calls 20000] [--database-url URL]

Both sides run in this process on the same connection, with the same SQL text (the
generated module's ``*_SQL`` constant), so they share psycopg's prepared statement and
the server does identical work. The two sides alternate call by call (the order flips
each time) after an untimed warm-up, so drift in the machine's load hits both alike; the
table gives the median and the p10–p90 spread of µs per call, and the ratio of medians.
A last section times the I/O-free part alone (building the pydantic model from a fetched
row) to show where the difference comes from.

The database is a scratch one created (and dropped) on the server at --database-url.
Writes run with synchronous_commit off, so a WAL flush per call does not drown the
client-side difference being measured (both sides alike).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import kwargs_row, tuple_row

import apalis_client
from apalis_codegen.pgfind import scratch_database
from apalis_generated import admin, admin_async, keep_alive, lock, push
from apalis_generated._runtime import model_rows
from apalis_generated.models import Job

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).parent / "results" / "generated_call.md"
QUEUE = "bench"
WORKER = "bench-worker"
TASK_ID = "01JBENCH0000000000000000AA"
TARGET = 1.10


def prepare(url: str) -> None:
    """Schema, one registered worker and one task (metadata and a payload, like a real one)."""
    with psycopg.connect(url, autocommit=True) as conn:
        apalis_client.migrate(conn)
        keep_alive.upsert_worker(
            conn,
            worker_id=WORKER,
            queue=QUEUE,
            storage_name="PostgresStorage",
            layers="",
            lease_token="bench-token",
        )
        push.push_tasks(
            conn,
            queue=QUEUE,
            jobs=[b'{"to": "someone@example.com", "subject": "hello"}'],
            ids=[TASK_ID],
            max_attempts=[5],
            run_ats=[datetime.now(timezone.utc)],
            priorities=[0],
            metadata=['{"trace_id": "abc123"}'],
            idempotency_keys=["bench-key"],
        )


One = Callable[[], object]


@dataclass
class Pair:
    label: str
    samples: Callable[[int], tuple[list[float], list[float]]]  # n calls each: (gen, raw) µs


def alternate(gen: One, raw: One, n: int) -> tuple[list[float], list[float]]:
    """Time ``n`` calls of each side, alternating call by call (the order flips each time),
    so any drift in the machine's load hits both sides alike."""
    g: list[float] = []
    r: list[float] = []
    clock = time.perf_counter_ns
    for i in range(n):
        first, second, first_out, second_out = (gen, raw, g, r) if i % 2 else (raw, gen, r, g)
        t0 = clock()
        first()
        t1 = clock()
        second()
        t2 = clock()
        first_out.append((t1 - t0) / 1000)
        second_out.append((t2 - t1) / 1000)
    return g, r


def sync_pairs(conn: psycopg.Connection[Any]) -> list[Pair]:
    find_params = {"id": TASK_ID}
    # The same worker locking its own row again is idempotent (keeps lock_at), so every
    # call does the same UPDATE ... RETURNING of one row.
    lock_params = {"id": TASK_ID, "queue": QUEUE, "worker_id": WORKER, "lease_token": None}

    def gen_find() -> object:
        return admin.find_task(conn, id=TASK_ID)

    def raw_find() -> object:
        return conn.execute(admin.FIND_TASK_SQL, find_params).fetchone()

    def gen_lock() -> object:
        return lock.lock_task(conn, id=TASK_ID, queue=QUEUE, worker_id=WORKER, lease_token=None)

    def raw_lock() -> object:
        return conn.execute(lock.LOCK_TASK_SQL, lock_params).fetchone()

    return [
        Pair("find_task (SELECT, sync)", lambda n: alternate(gen_find, raw_find, n)),
        Pair("lock_task (UPDATE … RETURNING, sync)", lambda n: alternate(gen_lock, raw_lock, n)),
    ]


def async_pair(aconn: psycopg.AsyncConnection[Any], loop: asyncio.AbstractEventLoop) -> Pair:
    find_params = {"id": TASK_ID}

    async def run(n: int) -> tuple[list[float], list[float]]:
        # The same alternation as `alternate`, inside one coroutine: no event-loop entry
        # per call on either side.
        g: list[float] = []
        r: list[float] = []
        clock = time.perf_counter_ns
        for i in range(n):
            t0 = clock()
            if i % 2:
                await admin_async.find_task(aconn, id=TASK_ID)
                t1 = clock()
                await (await aconn.execute(admin_async.FIND_TASK_SQL, find_params)).fetchone()
                t2 = clock()
                g.append((t1 - t0) / 1000)
                r.append((t2 - t1) / 1000)
            else:
                await (await aconn.execute(admin_async.FIND_TASK_SQL, find_params)).fetchone()
                t1 = clock()
                await admin_async.find_task(aconn, id=TASK_ID)
                t2 = clock()
                r.append((t1 - t0) / 1000)
                g.append((t2 - t1) / 1000)
        return g, r

    return Pair("find_task (SELECT, async)", lambda n: loop.run_until_complete(run(n)))


def measure(pairs: list[Pair], calls: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per-call µs of both sides of every pair, after an untimed warm-up."""
    for p in pairs:  # warm-up: prepared statements, caches
        p.samples(max(calls // 10, 50))
    return {p.label: p.samples(calls) for p in pairs}


def no_io_figures(conn: psycopg.Connection[Any], reps: int) -> list[tuple[str, float]]:
    """ns per call of the client-side row steps alone, on one result fetched once."""
    cur = conn.execute(admin.FIND_TASK_SQL, {"id": TASK_ID})
    values = cur.fetchone()
    assert values is not None
    names = [d.name for d in cur.description or []]
    as_dict = dict(zip(names, values, strict=True))
    generated_factory = model_rows(Job)
    generated_maker = generated_factory(cur)
    construct_maker = kwargs_row(Job.model_construct)(cur)

    def per_call(fn: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                fn()
            best = min(best, (time.perf_counter_ns() - t0) / reps)
        return best

    return [
        ("raw: tuple_row factory, once per execute", per_call(lambda: tuple_row(cur))),
        ("raw: tuple row (what fetchone returns)", per_call(lambda: tuple(values))),
        (
            "generated: model_rows(Job) factory, once per execute (reads 14 column names)",
            per_call(lambda: generated_factory(cur)),
        ),
        ("generated: row maker, one Job per row", per_call(lambda: generated_maker(values))),
        (
            "for comparison: kwargs_row(Job.model_construct) row maker",
            per_call(lambda: construct_maker(values)),
        ),
        (
            "for comparison: Job.model_validate(row) (full validation)",
            per_call(lambda: Job.model_validate(as_dict)),
        ),
    ]


def fmt(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=10)
    return f"{statistics.median(xs):.1f} [{q[0]:.1f}–{q[-1]:.1f}]"


def report(
    results: dict[str, tuple[list[float], list[float]]],
    no_io: list[tuple[str, float]],
    args: argparse.Namespace,
    server_version: str,
) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"generated-call benchmark — {when}, {args.calls:,} calls per side, alternating call"
        " by call, after warm-up; median [p10–p90] µs per call",
        "",
        f"Python {platform.python_version()}, psycopg {metadata.version('psycopg')},"
        f" pydantic {metadata.version('pydantic')}, PostgreSQL {server_version}"
        " (local, same machine), one connection, autocommit.",
        "",
        "| statement | generated µs/call | raw psycopg µs/call | generated / raw (medians) |",
        "|---|---|---|---|",
    ]
    verdicts = []
    for label, (g, r) in results.items():
        ratio = statistics.median(g) / statistics.median(r)
        lines.append(f"| {label} | {fmt(g)} | {fmt(r)} | {ratio:.3f}× |")
        verdicts.append(ratio <= TARGET)
    lines += [
        "",
        "Raw = `conn.execute(<the generated module's *_SQL constant>, params).fetchone()`,"
        " returning a tuple; generated = the typed function returning a pydantic model.",
        f"Load average (1, 5, 15 min) when the run ended: {load}.",
        f"Target: generated within {round((TARGET - 1) * 100)}% of raw —"
        f" {'met' if all(verdicts) else 'NOT met'} ({sum(verdicts)} of {len(verdicts)}).",
        "",
        "No I/O: the client-side row steps alone (one Job row, 14 columns; best of 5 × "
        f"{args.no_io_reps:,})",
        "",
        "| step | ns |",
        "|---|---|",
    ]
    lines += [f"| {name} | {ns:,.0f} |" for name, ns in no_io]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--no-io-reps", type=int, default=50_000)
    p.add_argument(
        "--database-url",
        default=os.environ.get("APALIS_TEST_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
        or DEFAULT_URL,
    )
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    args = p.parse_args()

    with scratch_database(args.database_url) as url:
        prepare(url)
        loop = asyncio.new_event_loop()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = off")
            server_version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            aconn = loop.run_until_complete(psycopg.AsyncConnection.connect(url, autocommit=True))
            try:
                pairs = [*sync_pairs(conn), async_pair(aconn, loop)]
                results = measure(pairs, args.calls)
                no_io = no_io_figures(conn, args.no_io_reps)
            finally:
                loop.run_until_complete(aconn.close())
                loop.close()
    text = report(results, no_io, args, server_version)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
