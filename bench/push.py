"""Producer benchmark: apalis-client's push beside raw psycopg, pgqueuer and procrastinate.

One run, one fresh database, every case interleaved run by run (so drift hits them alike);
each figure is the median and range (min–max) over the runs. Not a timed test.

    .venv/bin/python bench/push.py [--url URL] [--runs 11] [--single 1000] [--batch 5000]
                                      [--batch-reps 3] [--rss-tasks 100000]

With no --url it uses $APALIS_BENCH_DATABASE_URL, else $APALIS_TEST_DATABASE_URL, else a
throwaway PostgreSQL (as the tests do). Writes bench/results/push.md and push.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from ulid import ULID

import apalis_client
from apalis_client import Task, push_many_with_conn, push_with_conn
from apalis_client.task import new_task_id
from apalis_client.task import now_whole_seconds as now
from apalis_codegen.pgfind import scratch_database
from apalis_generated import push as gen

QUEUE = "bench-push"
RESULTS = Path(__file__).resolve().parent / "results"
ARGS = {"to": "user@example.com", "subject": "Welcome", "n": 1}

# The statements a hand-written producer would run: one row, and the unnest batch.
INSERT_ONE = """
INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority,
                         metadata)
VALUES (%s, %s, %s, 'Pending', 0, 5, %s, 0, '{}'::jsonb)
"""
INSERT_ONE_ON_CONFLICT = INSERT_ONE.rstrip() + " ON CONFLICT DO NOTHING"
INSERT_UNNEST = """
INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority,
                         metadata)
SELECT t.job, t.id, %(queue)s, 'Pending', 0, 5, t.run_at, 0, '{}'::jsonb
  FROM unnest(%(jobs)s::bytea[], %(ids)s::text[], %(run_ats)s::timestamptz[])
       AS t(job, id, run_at)
"""
INSERT_UNNEST_KEYED = """
INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority,
                         metadata, idempotency_key)
SELECT t.job, t.id, %(queue)s, 'Pending', 0, 5, %(run_at)s, 0, '{}'::jsonb, t.key
  FROM unnest(%(jobs)s::bytea[], %(ids)s::text[], %(keys)s::text[]) AS t(job, id, key)
"""
SAVEPOINT = b"SAVEPOINT s"
RELEASE = b"RELEASE SAVEPOINT s"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _row() -> tuple[bytes, str, str, datetime]:
    return json.dumps(ARGS, separators=(",", ":")).encode(), str(ULID()), QUEUE, _now()


# ---- single task per transaction ------------------------------------------------------------
# Every case runs on a connection of its own (autocommit, or psycopg's default where the first
# statement opens a transaction), so no case inherits another's backend state.

Conn = psycopg.Connection[Any]
Case = Callable[[Conn], None]


def apalis_in_transaction(conn: Conn) -> None:
    # BEGIN, the push (one INSERT ... ON CONFLICT DO NOTHING, no savepoint), COMMIT
    with conn.transaction():
        push_with_conn(conn, QUEUE, ARGS)


def apalis_opens_transaction(conn: Conn) -> None:
    # psycopg's implicit BEGIN, the push, COMMIT
    push_with_conn(conn, QUEUE, ARGS)
    conn.commit()


def raw_3_trips(conn: Conn) -> None:
    conn.execute(b"BEGIN")
    conn.execute(INSERT_ONE, _row())
    conn.execute(b"COMMIT")


def raw_on_conflict(conn: Conn) -> None:
    # The push's own statement, raw: ON CONFLICT DO NOTHING is what keeps a collision from
    # aborting the caller's transaction without a savepoint; the server pays for it
    # (speculative insertion), whoever sends it.
    conn.execute(b"BEGIN")
    conn.execute(INSERT_ONE_ON_CONFLICT, _row())
    conn.execute(b"COMMIT")


def raw_like_push(conn: Conn) -> None:
    # The strictest baseline: the push's own statement in the same `conn.transaction()`, with
    # the push's id and timestamp minting and json.dumps, so only the wrapper differs.
    with conn.transaction():
        conn.execute(
            INSERT_ONE_ON_CONFLICT,
            (json.dumps(ARGS, separators=(",", ":")).encode(), new_task_id(), QUEUE, now()),
        )


def raw_pipelined(conn: Conn) -> None:
    with conn.pipeline():
        conn.execute(b"BEGIN")
        conn.execute(INSERT_ONE, _row())
        conn.execute(b"COMMIT")


def raw_result_before_commit(conn: Conn) -> None:
    # What any API that reports the INSERT's outcome before the caller commits needs.
    with conn.pipeline():
        conn.execute(b"BEGIN")
        if conn.execute(INSERT_ONE + " RETURNING id", _row()).fetchone() is None:
            raise RuntimeError("no row")  # fetchone flushed BEGIN+INSERT; COMMIT is trip 2
        conn.execute(b"COMMIT")


def raw_savepoint(conn: Conn) -> None:
    # The push before issue 13: a savepoint (a subtransaction) around each INSERT.
    conn.execute(b"BEGIN")
    conn.execute(SAVEPOINT)
    conn.execute(INSERT_ONE, _row())
    conn.execute(RELEASE)
    conn.execute(b"COMMIT")


IN_TX = "apalis push_with_conn in `with conn.transaction()` (3 RT)"
OPENS_TX = "apalis push_with_conn + conn.commit(), the push opens the transaction (3 RT)"
RAW_3RT = "raw VALUES: BEGIN / INSERT / COMMIT (3 RT)"
RAW_PIPELINED = "raw VALUES: pipelined (1 RT)"
RAW_SAME = "raw, the push's statement (VALUES ... ON CONFLICT DO NOTHING): BEGIN / INSERT / COMMIT"
RAW_LIKE = "raw, the push's statement in `conn.transaction()`, with the push's id minting"
# name, case, autocommit connection?
SINGLE: list[tuple[str, Case, bool]] = [
    (IN_TX, apalis_in_transaction, True),
    (OPENS_TX, apalis_opens_transaction, False),
    (RAW_3RT, raw_3_trips, True),
    (RAW_PIPELINED, raw_pipelined, True),
    (RAW_SAME, raw_on_conflict, True),
    (RAW_LIKE, raw_like_push, True),
    ("raw VALUES: result read before COMMIT (2 RT)", raw_result_before_commit, True),
    ("raw VALUES: with SAVEPOINT / RELEASE (5 RT)", raw_savepoint, True),
]


# ---- batches ----------------------------------------------------------------------------------


BatchCase = Callable[[psycopg.Connection[Any], list[Task[Any]], list[Any]], None]


def batch_apalis(conn: psycopg.Connection[Any], tasks: list[Task[Any]], args: list[Any]) -> None:
    ids = push_many_with_conn(conn, QUEUE, tasks)
    assert len(ids) == len(tasks)


def batch_apalis_in_transaction(
    conn: psycopg.Connection[Any], tasks: list[Task[Any]], args: list[Any]
) -> None:
    with conn.transaction():
        push_many_with_conn(conn, QUEUE, tasks)


def batch_raw(conn: psycopg.Connection[Any], tasks: list[Task[Any]], args: list[Any]) -> None:
    run_at = _now()
    conn.execute(
        INSERT_UNNEST,
        {
            "queue": QUEUE,
            "jobs": [json.dumps(a, separators=(",", ":")).encode() for a in args],
            "ids": [t.task_id for t in tasks],
            "run_ats": [run_at] * len(args),
        },
    )


def batch_raw_same_statement(
    conn: psycopg.Connection[Any], tasks: list[Task[Any]], args: list[Any]
) -> None:
    # The statement push_many_with_conn picks for a batch of plain arguments.
    conn.execute(
        gen.PUSH_TASKS_UNIFORM_SQL,
        {
            "queue": QUEUE,
            "max_attempts": 5,
            "run_at": _now(),
            "priority": 0,
            "metadata": "{}",
            "jobs": [json.dumps(a, separators=(",", ":")).encode() for a in args],
            "ids": [t.task_id for t in tasks],
            "idempotency_keys": [None] * len(tasks),
        },
    )


def _keyed(tasks: list[Task[Any]]) -> list[Task[Any]]:
    return [t.replace(idempotency_key=t.task_id) for t in tasks]


def batch_apalis_keyed_in_transaction(
    conn: psycopg.Connection[Any], tasks: list[Task[Any]], args: list[Any]
) -> None:
    # One savepoint around the batch's INSERT: a collision would undo the batch only.
    with conn.transaction():
        push_many_with_conn(conn, QUEUE, tasks)


def batch_raw_keyed_savepoint(
    conn: psycopg.Connection[Any], tasks: list[Task[Any]], args: list[Any]
) -> None:
    # The same done raw: SAVEPOINT, the plain INSERT, RELEASE, pipelined in one round trip.
    with conn.transaction(), conn.pipeline():
        conn.execute(SAVEPOINT)
        conn.execute(
            INSERT_UNNEST_KEYED,
            {
                "queue": QUEUE,
                "run_at": _now(),
                "jobs": [json.dumps(a, separators=(",", ":")).encode() for a in args],
                "ids": [t.task_id for t in tasks],
                "keys": [t.idempotency_key for t in tasks],
            },
        )
        conn.execute(RELEASE)


# Competitors' event loops and connections, closed before the database is dropped.
CLOSERS: list[Callable[[], None]] = []


def batch_pgqueuer(url: str, n: int) -> Callable[[], None] | None:
    try:
        from pgqueuer import Queries
    except ImportError:
        return None

    async def setup() -> Any:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        queries = Queries.from_psycopg_connection(conn)
        await queries.install()
        return conn, queries

    loop = asyncio.new_event_loop()
    conn, queries = loop.run_until_complete(setup())

    def close() -> None:
        loop.run_until_complete(conn.close())
        loop.close()

    CLOSERS.append(close)
    payloads = [json.dumps(ARGS).encode()] * n

    def run() -> None:
        loop.run_until_complete(queries.enqueue(["noop"] * n, payloads, [0] * n))

    return run


def batch_procrastinate(url: str, n: int) -> Callable[[], None] | None:
    try:
        import procrastinate
    except ImportError:
        return None
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    # Called, not used as a decorator: without the bench extras mypy sees `app` as Any, and
    # an Any decorator fails --strict (CI checks bench/ without them).
    async def noop(**kwargs: Any) -> None:
        return None

    task = app.task(name="noop", queue=QUEUE)(noop)

    loop = asyncio.new_event_loop()

    async def setup() -> None:
        await app.open_async()
        await app.schema_manager.apply_schema_async()

    loop.run_until_complete(setup())

    def close() -> None:
        loop.run_until_complete(app.close_async())
        loop.close()

    CLOSERS.append(close)

    def run() -> None:
        jobs: list[dict[str, Any]] = [dict(ARGS) for _ in range(n)]
        loop.run_until_complete(task.batch_defer_async(*jobs))

    return run


KEYED_BATCH = "apalis push_many_with_conn, {n} keyed tasks, in a transaction (1 savepoint)"
RAW_KEYED_SAVEPOINT = "raw keyed unnest INSERT, {n} rows, in a SAVEPOINT, pipelined"


# ---- peak memory of one big push_many ----------------------------------------------------------
# RSS does not depend on the machine's load, so these figures hold from a single run.

RSS_MODES = {
    "streamed": "tasks from a generator, no key",
    "streamed-keyed": "tasks from a generator, each with an idempotency key",
    "list": "a list of Task objects built first (the list itself included), no key",
    "list-keyed": "a list of Task objects built first, each with a key",
}


def _peak_mib() -> float:
    """This process's own peak RSS in MiB.

    Linux's VmHWM, not getrusage's ru_maxrss: the latter survives exec, so a child spawned
    by a big parent (this script, after its batch runs) reports the parent's RSS instead.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_child(mode: str, url: str, n: int) -> int:
    """Run one push_many of ``n`` tasks in this process and print its peak RSS in MiB."""
    keyed = mode.endswith("keyed")

    def tasks() -> Iterator[Task[Any]]:
        for i in range(n):
            yield Task(args=dict(ARGS, n=i), idempotency_key=f"rss-{i}" if keyed else None)

    with psycopg.connect(url, autocommit=True) as conn:
        batch = tasks() if mode.startswith("streamed") else list(tasks())
        ids = push_many_with_conn(conn, QUEUE, batch)
        if len(ids) != n:
            raise RuntimeError(f"pushed {len(ids)} of {n}")
        conn.execute(b"TRUNCATE apalis.jobs")
    print(_peak_mib())
    return 0


def peak_rss(db: str, mode: str, n: int) -> float:
    """The peak RSS (MiB) of a fresh process running one push_many of ``n`` tasks."""
    import subprocess

    cmd = [sys.executable, __file__, "--rss-child", mode, db, "--rss-tasks", str(n)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1])


# ---- harness ----------------------------------------------------------------------------------


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """A fresh database on the server of ``url`` (or a throwaway server), dropped afterwards."""
    if url is None:
        from apalis_codegen.pgfind import find_postgres

        with find_postgres() as server, database(server.url) as db:
            yield db
        return
    with scratch_database(url) as db:
        yield db


def summary(rates: list[float]) -> tuple[float, float, float]:
    return statistics.median(rates), min(rates), max(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--single", type=int, default=1000, help="transactions per run")
    parser.add_argument("--batch", type=int, default=5000, help="tasks per batch")
    parser.add_argument("--batch-reps", type=int, default=3, help="batches per case and run")
    parser.add_argument(
        "--rss-tasks",
        type=int,
        default=100_000,
        help="tasks in the one push_many whose peak RSS is measured (0: skip)",
    )
    parser.add_argument("--rss-child", nargs=2, metavar=("MODE", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--synchronous-commit",
        default=None,
        help="set synchronous_commit for the benchmark sessions (e.g. off: no fsync wait)",
    )
    a = parser.parse_args(argv)
    if a.rss_child:
        return rss_child(a.rss_child[0], a.rss_child[1], a.rss_tasks)
    url = (
        a.url
        or os.environ.get("APALIS_BENCH_DATABASE_URL")
        or os.environ.get("APALIS_TEST_DATABASE_URL")
    )
    with database(url) as db:
        with psycopg.connect(db, autocommit=True) as conn:
            apalis_client.migrate(conn)
        options = f"-c synchronous_commit={a.synchronous_commit}" if a.synchronous_commit else ""
        ac = psycopg.connect(db, autocommit=True, options=options)
        own = {
            name: psycopg.connect(db, autocommit=auto, options=options) for name, _, auto in SINGLE
        }
        single: dict[str, list[float]] = {name: [] for name, _, _ in SINGLE}
        for _ in range(40):  # warm up prepared statements and the table
            for name, fn, _ in SINGLE:
                fn(own[name])
        # Cases take turns in chunks of 10 transactions, so a burst of load from elsewhere on
        # the machine lands on all of them rather than on whichever case was running; the turn
        # starts one case later each round, so no case always follows the same one.
        chunk = 10
        for _ in range(a.runs):
            spent = dict.fromkeys(single, 0.0)
            for turn in range(max(1, a.single // chunk)):
                start = turn % len(SINGLE)
                for name, fn, _ in SINGLE[start:] + SINGLE[:start]:
                    conn = own[name]
                    t0 = time.perf_counter()
                    for _ in range(chunk):
                        fn(conn)
                    spent[name] += time.perf_counter() - t0
            for name in single:
                single[name].append(max(1, a.single // chunk) * chunk / spent[name])
            ac.execute(b"TRUNCATE apalis.jobs")
        for conn in own.values():
            conn.close()

        n = a.batch
        batch: dict[str, list[float]] = {}
        cases: list[tuple[str, Callable[[], None]]] = []
        tasks_box: list[list[Task[Any]]] = [[], []]  # plain, keyed
        args = [dict(ARGS, n=i) for i in range(n)]

        def on_batch(fn: BatchCase, keyed: bool = False) -> Callable[[], None]:
            return lambda: fn(ac, tasks_box[keyed], args)

        batch_cases: list[tuple[str, BatchCase]] = [
            (f"apalis push_many_with_conn, {n} tasks, autocommit", batch_apalis),
            (
                f"apalis push_many_with_conn, {n} tasks, in a transaction",
                batch_apalis_in_transaction,
            ),
            (f"raw unnest INSERT, {n} rows", batch_raw),
            (f"raw, same statement as apalis, {n} rows", batch_raw_same_statement),
        ]
        cases += [(name, on_batch(fn)) for name, fn in batch_cases]
        cases += [
            (KEYED_BATCH.format(n=n), on_batch(batch_apalis_keyed_in_transaction, keyed=True)),
            (RAW_KEYED_SAVEPOINT.format(n=n), on_batch(batch_raw_keyed_savepoint, keyed=True)),
        ]
        for name, make in (
            (f"pgqueuer Queries.enqueue, {n} jobs", batch_pgqueuer),
            (f"procrastinate batch_defer_async, {n} jobs", batch_procrastinate),
        ):
            try:
                run = make(db, n)
            except Exception as exc:  # a competitor that fails to set up is reported, not fatal
                print(f"skipping {name}: {exc!r}", file=sys.stderr)
                run = None
            if run is not None:
                cases.append((name, run))
        for name, _ in cases:
            batch[name] = []
        for _ in range(a.runs):
            # One batch is a single ~0.2 s sample, at the mercy of one slow disk flush: each
            # run times --batch-reps batches per case, the cases taking turns.
            spent = dict.fromkeys(batch, 0.0)
            for _ in range(a.batch_reps):
                for name, run in cases:
                    # Fresh Task objects (fresh ids), built outside the clock like raw's rows.
                    tasks_box[0] = [Task(args=x) for x in args]
                    tasks_box[1] = [Task(args=x, idempotency_key=str(ULID())) for x in args]
                    t0 = time.perf_counter()
                    run()
                    spent[name] += time.perf_counter() - t0
                    ac.execute(b"TRUNCATE apalis.jobs")
            for name in batch:
                batch[name].append(a.batch_reps * n / spent[name])
        for close in CLOSERS:
            close()
        ac.close()
        rss = {mode: peak_rss(db, mode, a.rss_tasks) for mode in RSS_MODES} if a.rss_tasks else {}

    lines = [
        f"push benchmark — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {a.runs} runs, "
        f"median [min–max], synchronous_commit={a.synchronous_commit or 'server default'}",
        "",
        "| case | per second |",
        "|---|---|",
    ]
    for table, unit in ((single, "tx/s"), (batch, "rows/s")):
        for name, rates in table.items():
            med, lo, hi = summary(rates)
            lines.append(f"| {name} | {med:,.0f} [{lo:,.0f}–{hi:,.0f}] {unit} |")

    def paired(table: dict[str, list[float]], ours: str, base: str) -> str:
        # Run by run: both cases ran interleaved in the same run, so a slow spell of the
        # machine divides out; the spread of these ratios is the honest error bar.
        ratios = [x / y for x, y in zip(table[ours], table[base], strict=True)]
        return f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}–{max(ratios):.2f}]"

    apalis_batch = f"apalis push_many_with_conn, {n} tasks, autocommit"
    lines += [
        "",
        "ratios, run by run (median [min–max]):",
        f"- push_with_conn in a transaction / raw VALUES BEGIN/INSERT/COMMIT (3 RT; target "
        f">= 0.95): {paired(single, IN_TX, RAW_3RT)}",
        f"- push_with_conn in a transaction / raw, the push's statement, BEGIN/INSERT/COMMIT: "
        f"{paired(single, IN_TX, RAW_SAME)}",
        f"- push_with_conn in a transaction / the same raw in conn.transaction(), the push's "
        f"id minting (the wrapper alone): {paired(single, IN_TX, RAW_LIKE)}",
        f"- push_with_conn in a transaction / raw VALUES pipelined (1 RT; target >= 0.9): "
        f"{paired(single, IN_TX, RAW_PIPELINED)}",
        f"- push_with_conn + commit, push opens the transaction / raw BEGIN/INSERT/COMMIT "
        f"(target >= 0.95): {paired(single, OPENS_TX, RAW_3RT)}",
        f"- push_with_conn + commit, push opens the transaction / raw VALUES pipelined (1 RT): "
        f"{paired(single, OPENS_TX, RAW_PIPELINED)}",
        f"- push_many_with_conn / raw unnest INSERT (target >= 1.0): "
        f"{paired(batch, apalis_batch, f'raw unnest INSERT, {n} rows')}",
        f"- push_many_with_conn / raw, same statement: "
        f"{paired(batch, apalis_batch, f'raw, same statement as apalis, {n} rows')}",
        f"- keyed push_many in a transaction / the same raw, one SAVEPOINT pipelined: "
        f"{paired(batch, KEYED_BATCH.format(n=n), RAW_KEYED_SAVEPOINT.format(n=n))}",
    ]
    if rss:
        lines += [
            "",
            f"peak RSS of one push_many of {a.rss_tasks:,} tasks (a fresh process each; "
            "target < 150 MiB):",
        ]
        lines += [f"- {RSS_MODES[mode]}: {mib:.0f} MiB" for mode, mib in rss.items()]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "push.md").write_text(text + "\n", encoding="utf-8")
    if not a.no_plot:
        plot(single, batch)
    return 0


def plot(single: dict[str, list[float]], batch: dict[str, list[float]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(2, 1, figsize=(10, 8))
    for ax, table, unit in ((axes[0], single, "transactions/s"), (axes[1], batch, "rows/s")):
        names = list(table)
        med = [statistics.median(table[k]) for k in names]
        err = [
            [m - min(table[k]) for m, k in zip(med, names, strict=True)],
            [max(table[k]) - m for m, k in zip(med, names, strict=True)],
        ]
        colors = ["tab:blue" if k.startswith("apalis") else "tab:gray" for k in names]
        ax.barh(names, med, xerr=err, color=colors)
        ax.invert_yaxis()
        ax.set_xlabel(f"{unit} (median, bars = min–max)")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "push.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
