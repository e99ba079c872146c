"""Per-call cost of one generated ``:one`` call against the same SQL run directly through psycopg.

Usage: .venv/bin/python bench/generated_call.py [--rounds 20] [--calls 2000] [--database-url URL]

Both sides run in this process on the same connection, with the same SQL text (the
generated module's ``*_SQL`` constant), so they share psycopg's prepared statement and
the server does identical work. Rounds are interleaved (the order of the cases alternates
each round) after an untimed warm-up, so drift in the machine's load hits both sides
alike. Per round the figure is µs per call; the table gives the median and the range
(min–max) over rounds, and the generated/raw ratio of medians with the range of the
per-round paired ratios. A last section times the I/O-free part alone (building the
pydantic model from a fetched row) to show where the difference comes from.

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
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import RowMaker, kwargs_row, tuple_row

import apalis_client
from apalis_generated import admin, admin_async, keep_alive, lock, push
from apalis_generated._runtime import model_rows
from apalis_generated.models import Job

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).parent / "results" / "generated_call.md"
QUEUE = "bench"
WORKER = "bench-worker"
TASK_ID = "01JBENCH0000000000000000AA"
TARGET = 1.10


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    name = f"apalis_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin_conn:
        admin_conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin_conn:
            admin_conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def prepare(url: str) -> None:
    """Schema, one registered worker and one task (metadata and a payload, like a real one)."""
    with psycopg.connect(url, autocommit=True) as conn:
        apalis_client.migrate(conn)
        keep_alive.register_worker(
            conn,
            worker_id=WORKER,
            queue=QUEUE,
            storage_name="PostgresStorage",
            layers="",
            lease_token="bench-token",
            orphan_threshold_secs=300.0,
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


# --- Prototype of the proposed generator change (see the report); NOT the generated code. ---
# What queries.py.j2/models.py.j2 would emit once `SELECT *`/`RETURNING *` are expanded to
# explicit columns at generation time: the column order is then fixed by the SQL text, so
# the row factory needs no per-execute work and the maker unpacks by position.
_JOB_FIELDS_SET: set[str] = set(Job.model_fields)
_new = object.__new__
_set = object.__setattr__


def _make_job(values: Sequence[Any]) -> Job:
    (
        job,
        id_,
        job_type,
        status,
        attempts,
        max_attempts,
        run_at,
        last_result,
        lock_at,
        lock_by,
        done_at,
        priority,
        metadata_,
        idempotency_key,
    ) = values
    row = _new(Job)
    _set(
        row,
        "__dict__",
        {
            "job": job,
            "id": id_,
            "job_type": job_type,
            "status": status,
            "attempts": attempts,
            "max_attempts": max_attempts,
            "run_at": run_at,
            "last_result": last_result,
            "lock_at": lock_at,
            "lock_by": lock_by,
            "done_at": done_at,
            "priority": priority,
            "metadata": metadata_,
            "idempotency_key": idempotency_key,
        },
    )
    _set(row, "__pydantic_fields_set__", _JOB_FIELDS_SET)
    _set(row, "__pydantic_extra__", None)
    _set(row, "__pydantic_private__", None)
    return row


def _job_rows(cursor: Any) -> RowMaker[Job]:
    return _make_job


def proposed_find_task(conn: psycopg.Connection[Any], *, id: str) -> Job | None:
    params: dict[str, Any] = {"id": id}
    with conn.cursor(row_factory=_job_rows) as cur:
        cur.execute(admin.FIND_TASK_SQL, params)
        return cur.fetchone()


@dataclass
class Case:
    name: str
    run: Callable[[int], None]  # runs n calls


@dataclass
class Pair:
    label: str
    generated: Case
    raw: Case


def sync_pairs(conn: psycopg.Connection[Any]) -> list[Pair]:
    find_params = {"id": TASK_ID}
    # The same worker locking its own row again is idempotent (keeps lock_at), so every
    # call does the same UPDATE ... RETURNING of one row.
    lock_params = {"id": TASK_ID, "queue": QUEUE, "worker_id": WORKER, "lease_token": None}

    def gen_find(n: int) -> None:
        for _ in range(n):
            admin.find_task(conn, id=TASK_ID)

    def raw_find(n: int) -> None:
        for _ in range(n):
            conn.execute(admin.FIND_TASK_SQL, find_params).fetchone()

    def proto_find(n: int) -> None:
        for _ in range(n):
            proposed_find_task(conn, id=TASK_ID)

    def gen_lock(n: int) -> None:
        for _ in range(n):
            lock.lock_task(conn, id=TASK_ID, queue=QUEUE, worker_id=WORKER, lease_token=None)

    def raw_lock(n: int) -> None:
        for _ in range(n):
            conn.execute(lock.LOCK_TASK_SQL, lock_params).fetchone()

    return [
        Pair(
            "find_task (SELECT, sync)",
            Case("generated admin.find_task", gen_find),
            Case("raw conn.execute(FIND_TASK_SQL).fetchone()", raw_find),
        ),
        Pair(
            "find_task (SELECT, sync): prototype of the proposed change, not generated",
            Case("prototype find_task", proto_find),
            Case("raw conn.execute(FIND_TASK_SQL).fetchone()", raw_find),
        ),
        Pair(
            "lock_task (UPDATE … RETURNING, sync)",
            Case("generated lock.lock_task", gen_lock),
            Case("raw conn.execute(LOCK_TASK_SQL).fetchone()", raw_lock),
        ),
    ]


def async_pair(aconn: psycopg.AsyncConnection[Any], loop: asyncio.AbstractEventLoop) -> Pair:
    find_params = {"id": TASK_ID}

    async def gen(n: int) -> None:
        for _ in range(n):
            await admin_async.find_task(aconn, id=TASK_ID)

    async def raw(n: int) -> None:
        for _ in range(n):
            await (await aconn.execute(admin_async.FIND_TASK_SQL, find_params)).fetchone()

    def in_loop(fn: Callable[[int], Coroutine[Any, Any, None]]) -> Callable[[int], None]:
        # One run_until_complete per round: the loop's own cost is outside the per-call figure.
        return lambda n: loop.run_until_complete(fn(n))

    return Pair(
        "find_task (SELECT, async)",
        Case("generated admin_async.find_task", in_loop(gen)),
        Case("raw await aconn.execute(FIND_TASK_SQL)", in_loop(raw)),
    )


def measure(pairs: list[Pair], rounds: int, calls: int) -> dict[str, list[float]]:
    """µs/call per round for every case, the cases of each round interleaved."""
    # A raw case shared by two pairs is measured once.
    cases = list({c.name: c for p in pairs for c in (p.generated, p.raw)}.values())
    for c in cases:  # warm-up: prepared statements, caches, branch predictors
        c.run(max(calls // 4, 50))
    out: dict[str, list[float]] = {c.name: [] for c in cases}
    for r in range(rounds):
        order = cases if r % 2 == 0 else list(reversed(cases))
        for c in order:
            t0 = time.perf_counter_ns()
            c.run(calls)
            out[c.name].append((time.perf_counter_ns() - t0) / calls / 1000)
    return out


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
            "prototype: unpacking row maker (factory: no per-execute work)",
            per_call(lambda: _make_job(values)),
        ),
        (
            "for comparison: kwargs_row(Job.model_construct) row maker",
            per_call(lambda: construct_maker(values)),
        ),
        (
            "for comparison: Job.model_validate(row) (full validation)",
            per_call(lambda: Job.model_validate(as_dict)),
        ),
    ]


def fmt_range(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} [{min(xs):.1f}–{max(xs):.1f}]"


def report(
    pairs: list[Pair],
    results: dict[str, list[float]],
    no_io: list[tuple[str, float]],
    args: argparse.Namespace,
    server_version: str,
) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"generated-call benchmark — {when}, {args.rounds} rounds × {args.calls:,} calls,"
        " interleaved, after warm-up; median [min–max] over rounds",
        "",
        f"Python {platform.python_version()}, psycopg {metadata.version('psycopg')},"
        f" pydantic {metadata.version('pydantic')}, PostgreSQL {server_version}"
        " (local, same machine), one connection, autocommit.",
        "",
        "| statement | generated µs/call | raw psycopg µs/call | generated / raw"
        " (ratio of medians) | per-round paired ratio, median [min–max] |",
        "|---|---|---|---|---|",
    ]
    verdicts = []
    for p in pairs:
        g, r = results[p.generated.name], results[p.raw.name]
        paired = [a / b for a, b in zip(g, r, strict=True)]
        ratio = statistics.median(g) / statistics.median(r)
        lines.append(
            f"| {p.label} | {fmt_range(g)} | {fmt_range(r)} | {ratio:.3f}×"
            f" | {statistics.median(paired):.3f}× [{min(paired):.3f}–{max(paired):.3f}] |"
        )
        if "prototype" not in p.label:
            verdicts.append(ratio <= TARGET)
    lines += [
        "",
        "Raw = `conn.execute(<the generated module's *_SQL constant>, params).fetchone()`,"
        " returning a tuple; generated = the typed function returning a pydantic model.",
        "A paired ratio compares the two cases of one round (run back to back), so it is"
        " less sensitive to load from other processes than the ratio of medians.",
        f"Load average (1, 5, 15 min) when the run ended: {load}.",
        f"Target: generated within {round((TARGET - 1) * 100)}% of raw —"
        f" {'met' if all(verdicts) else 'NOT met'} (ratio of medians within target for"
        f" {sum(verdicts)} of {len(verdicts)} generated statements; the prototype row is"
        " not counted).",
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
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--calls", type=int, default=2000)
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
                results = measure(pairs, args.rounds, args.calls)
                no_io = no_io_figures(conn, args.no_io_reps)
            finally:
                loop.run_until_complete(aconn.close())
                loop.close()
    text = report(pairs, results, no_io, args, server_version)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
