"""Worker benchmark: apalis-client's Worker beside a raw psycopg loop, procrastinate and pgqueuer.

Usage: .venv/bin/python bench/workers.py [--tasks 10000] [--repeat 3] [--database-url URL]
       [--baseline-ref REF] [--cases KEY,KEY...]

The multi-queue cases (keys ``queues-*``) spread the tasks over three queues: one Worker
serving the three (one Route each), three single-queue Workers on one event loop in one
process, and three processes of one single-queue Worker each; the report adds the first
against the second, paired run by run. ``--cases queues-routes,queues-workers`` runs just those.

With ``--baseline-ref`` the Worker as it was at that git commit (exported with ``git archive``
into a temporary folder) runs beside today's, each "before" row right after its "now" row in
every run, and the report adds their ratios paired run by run.

Each measurement gets a fresh database (created and dropped here), its tasks are
seeded untimed, the worker processes start and finish their own setup, and only
then does the clock start; it stops when the last process has drained the queue
(its loop returned after the final ack) or when the database shows every task
complete, whichever is first (polled every 20 ms). The database is then checked: every
task must have completed exactly once. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import _runners
import psycopg
from _apalis_sql import SEED_INSERT
from psycopg import sql

from apalis_codegen.pgfind import scratch_database

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).resolve().parent / "results"
QUEUE = _runners.QUEUE
# The queues of the multi-queue cases.
QUEUES = [f"{QUEUE}_{i}" for i in range(3)]


class Unavailable(Exception):
    """A system could not be imported, set up or run; its rows print as n/a."""


@dataclass
class Case:
    key: str
    system: str
    label: str
    config: str
    processes: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    case: Case
    values: list[float] = field(default_factory=list)
    error: str | None = None


# ---- databases ------------------------------------------------------------------------------


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.seq = 0

    def drop_leftovers(self) -> None:
        """Drop databases of earlier runs of this script whose process is gone (SIGKILLed)."""
        with psycopg.connect(self.url, autocommit=True) as admin:
            names = [
                r[0]
                for r in admin.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_workers\\_%'"
                )
            ]
            for name in names:
                pid = name.split("_")[2]
                if pid.isdigit() and not _alive(int(pid)):
                    print(f"dropping leftover database {name}")
                    admin.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )

    @contextlib.contextmanager
    def fresh_database(self, tag: str) -> Iterator[str]:
        self.seq += 1
        name = f"bench_workers_{os.getpid()}_{self.seq}_{tag}"
        with scratch_database(self.url, name) as db:
            yield db


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def checkpoint(url: str) -> None:
    """Flush the seeding's dirty pages now, so no run pays for another's checkpoint."""
    with (
        psycopg.connect(url, autocommit=True) as conn,
        contextlib.suppress(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CHECKPOINT")


def migrate_apalis(url: str) -> None:
    from apalis_client import migrate

    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)


def seed_apalis(url: str, n: int) -> None:
    from ulid import ULID

    with psycopg.connect(url) as conn:
        conn.execute(
            SEED_INSERT,
            {"queue": QUEUE, "jobs": [b"{}"] * n, "ids": [str(ULID()) for _ in range(n)]},
        )


def seed_queues(url: str, n: int) -> None:
    """``n`` tasks spread over QUEUES (the first ones get the remainder)."""
    from ulid import ULID

    with psycopg.connect(url) as conn:
        for i, queue in enumerate(QUEUES):
            k = n // len(QUEUES) + (1 if i < n % len(QUEUES) else 0)
            conn.execute(
                SEED_INSERT,
                {"queue": queue, "jobs": [b"{}"] * k, "ids": [str(ULID()) for _ in range(k)]},
            )


def check_queues(url: str, n: int) -> None:
    _check_done_once(url, n, QUEUES)


def check_apalis(url: str, n: int) -> None:
    _check_done_once(url, n, [QUEUE])


def _check_done_once(url: str, n: int, queues: list[str]) -> None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'Done' AND attempts = 1), count(*)"
            " FROM apalis.jobs WHERE job_type = ANY(%s)",
            (queues,),
        ).fetchone()
    if row != (n, n):
        raise Unavailable(f"only {row[0] if row else 0} of {n} tasks Done once")


async def _seed_procrastinate(url: str, n: int) -> None:
    # The App is built in _runners, not here: procrastinate warns about an App in __main__.
    app, noop = _runners.procrastinate_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        # One batch_defer per 1,000 tasks: batch enqueue, and bounded statement size.
        for start in range(0, n, 1000):
            await noop.batch_defer_async(*({} for _ in range(min(1000, n - start))))


def check_procrastinate(url: str, n: int) -> None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FROM procrastinate_jobs"
        ).fetchone()
    if row != (n, n):
        raise Unavailable(f"only {row[0] if row else 0} of {n} tasks succeeded")


async def _seed_pgqueuer(url: str, n: int) -> None:
    from pgqueuer import Queries

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    async with conn:
        queries = Queries.from_psycopg_connection(conn)
        await queries.install()
        for start in range(0, n, 1000):
            k = min(1000, n - start)
            await queries.enqueue(["noop"] * k, [b"{}"] * k, [0] * k)


def check_pgqueuer(url: str, n: int) -> None:
    with psycopg.connect(url) as conn:
        left = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
        logged = conn.execute(
            "SELECT count(DISTINCT job_id) FROM pgqueuer_log WHERE status = 'successful'"
        ).fetchone()
    if left != (0,) or logged != (n,):
        raise Unavailable(f"{left} tasks left in the queue, {logged} logged successful of {n}")


# Cheap "is everything complete?" probes (index-backed where the schema allows).
DONE_SQL = {
    "apalis": "SELECT NOT EXISTS (SELECT 1 FROM apalis.jobs"
    " WHERE status IN ('Pending', 'Queued', 'Running', 'Failed'))",
    "procrastinate": "SELECT NOT EXISTS (SELECT 1 FROM procrastinate_jobs"
    " WHERE status IN ('todo', 'doing'))",
    "pgqueuer": "SELECT NOT EXISTS (SELECT 1 FROM pgqueuer)",
}


class Watcher:
    """Polls the database every 20 ms from the start signal until every task is complete.

    The clock stops at whichever comes first: this sighting, or the last worker
    process returning. Some runners (pgqueuer's drain mode) linger after the
    queue is done; that idle tail is not throughput.
    """

    def __init__(self, url: str, system: str) -> None:
        self.url = url
        self.sql = DONE_SQL["apalis" if system in ("raw", "ours", "ours_queues") else system]
        self.seen_done: float | None = None
        self._go = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._conn = psycopg.connect(self.url, autocommit=True)
        self._thread.start()
        return self

    def begin(self) -> None:
        self._go.set()

    def _run(self) -> None:
        self._go.wait()
        while not self._stop.wait(0.02):
            row = self._conn.execute(self.sql).fetchone()
            if row and row[0]:
                self.seen_done = time.monotonic()
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._go.set()
        self._thread.join(timeout=5)
        self._conn.close()


# ---- processes ------------------------------------------------------------------------------


class Processes:
    """A group of spawned worker processes sharing one go signal and one message queue."""

    def __init__(self, specs: list[dict[str, Any]], setup_timeout: float) -> None:
        self.ctx = mp.get_context("spawn")
        self.out: Any = self.ctx.Queue()
        self.go = self.ctx.Event()
        self.stop = self.ctx.Event()
        self.setup_timeout = setup_timeout
        self.procs = [
            self.ctx.Process(
                target=_runners.child_main,
                args=(
                    {**s, "index": i, "setup_timeout": setup_timeout},
                    self.out,
                    self.go,
                    self.stop,
                ),
                daemon=True,
            )
            for i, s in enumerate(specs)
        ]

    def __enter__(self) -> Processes:
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=10)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self.out.close()
        self.out.cancel_join_thread()

    def message(self, deadline: float) -> tuple[Any, ...]:
        """The next message from any child; raises on a child error, death or the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable("timed out")
            try:
                msg: tuple[Any, ...] = self.out.get(timeout=min(remaining, 0.5))
            except queue_mod.Empty:
                dead = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
                if dead:
                    raise Unavailable(f"worker process died (exit code {dead[0]})") from None
                continue
            if msg[0] == "error":
                if os.environ.get("BENCH_DEBUG"):
                    print(msg[3], file=sys.stderr)
                raise Unavailable(msg[2])
            return msg

    def start(self) -> float:
        """Wait until every child is set up, then start the clock; returns the start time."""
        deadline, ready = time.monotonic() + self.setup_timeout, 0
        while ready < len(self.procs):
            if self.message(deadline)[0] == "ready":
                ready += 1
        t0 = time.monotonic()
        self.go.set()
        return t0

    def finish(self, timeout: float) -> tuple[float, int]:
        """Wait for every child's "done"; returns the last end time and the tasks counted."""
        deadline, count = time.monotonic() + timeout, 0
        ends: list[float] = []
        while len(ends) < len(self.procs):
            msg = self.message(deadline)
            if msg[0] == "done":
                ends.append(msg[2])
                count += msg[3]
        return max(ends), count


# ---- measurements ---------------------------------------------------------------------------


def throughput(server: Server, case: Case, args: argparse.Namespace) -> float:
    n: int = args.tasks
    with server.fresh_database(case.system) as url:
        if case.system in ("raw", "ours"):
            migrate_apalis(url)
            seed_apalis(url, n)
            check: Callable[[str, int], None] = check_apalis
        elif case.system == "ours_queues":
            migrate_apalis(url)
            seed_queues(url, n)
            check = check_queues
        elif case.system == "procrastinate":
            asyncio.run(_seed_procrastinate(url, n))
            check = check_procrastinate
        else:
            asyncio.run(_seed_pgqueuer(url, n))
            check = check_pgqueuer
        checkpoint(url)
        spec = {"system": case.system, "url": url, "tasks": n, "timeout": args.timeout}
        specs = [{**spec, **case.extra} for _ in range(case.processes)]
        with Processes(specs, args.setup_timeout) as procs, Watcher(url, case.system) as watch:
            t0 = procs.start()
            watch.begin()
            t_exit, _ = procs.finish(args.timeout + 10)
        check(url, n)
        t1: float = min(t_exit, watch.seen_done or t_exit)
        if t_exit - t1 > 0.05:
            print(
                f"(last worker exited {t_exit - t1:.2f} s after the last task completed)", end=" "
            )
        return n / (t1 - t0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency(server: Server, case: Case, args: argparse.Namespace) -> tuple[float, float]:
    """Push one task at a time; time from its COMMIT being sent to the receiver's clock."""
    from ulid import ULID

    warmup = 3
    with server.fresh_database("latency") as url:
        migrate_apalis(url)
        spec = {"system": case.system, "url": url, "timeout": args.timeout, **case.extra}
        samples: list[float] = []
        with Processes([spec], args.setup_timeout) as procs, psycopg.connect(url) as pusher:
            procs.start()
            # The first push also waits out the worker's start-up (its first poll finds it).
            for i in range(warmup + args.latency_samples):
                task_id = str(ULID())
                payload = json.dumps({"n": i}).encode()
                pusher.execute(SEED_INSERT, {"queue": QUEUE, "jobs": [payload], "ids": [task_id]})
                t0 = time.monotonic()
                pusher.commit()
                deadline = t0 + (20.0 if i == 0 else 10.0)
                while True:
                    msg = procs.message(deadline)
                    if msg[0] == _runners.SAMPLE and msg[1] in (task_id, i):
                        break
                if i >= warmup:
                    samples.append(msg[2] - t0)
                # Irregular gaps, so pushes never line up with a worker's timers.
                time.sleep(random.uniform(0.01, 0.03))
            if case.system == "ours":
                # Graceful shutdown is the Worker's SIGTERM path.
                for p in procs.procs:
                    if p.pid is not None and p.is_alive():
                        os.kill(p.pid, signal.SIGTERM)
    return percentile(samples, 0.50) * 1000, percentile(samples, 0.99) * 1000


# ---- cases ----------------------------------------------------------------------------------


def baseline_tree(ref: str, into: Path) -> Path:
    """Export the repository at ``ref`` (tracked files only) into ``into``; returns that folder."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", ref],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def with_baselines(cases: list[Case], tree: Path | None, ref: str) -> list[Case]:
    """Each single-process Worker case and the raw pipelined loop, each followed by the same
    case on the code of ``ref`` (the raw loop then runs that tree's claim and ack SQL)."""
    if tree is None:
        return cases
    out: list[Case] = []
    for c in cases:
        out.append(c)
        if c.processes == 1 and (c.system == "ours" or c.extra.get("ack") == "pipelined"):
            out.append(
                Case(
                    f"{c.key}-before",
                    c.system,
                    f"{c.label}, before ({ref})",
                    c.config,
                    c.processes,
                    {**c.extra, "tree": str(tree)},
                )
            )
    return out


def throughput_cases(args: argparse.Namespace) -> list[Case]:
    handler = args.ours_handler
    other = "sync" if handler == "async" else "async"
    cases = [
        Case("raw-each-1", "raw", "raw psycopg claim(10) + ack", "1 process", 1, {"ack": "each"}),
        Case("raw-each-2", "raw", "raw psycopg claim(10) + ack", "2 processes", 2, {"ack": "each"}),
        Case(
            "raw-batch-1",
            "raw",
            "raw psycopg claim(10) + ack_batch",
            "1 process",
            1,
            {"ack": "batch"},
        ),
        Case(
            "raw-batch-2",
            "raw",
            "raw psycopg claim(10) + ack_batch",
            "2 processes",
            2,
            {"ack": "batch"},
        ),
        Case(
            "raw-pipe-1",
            "raw",
            "raw psycopg claim(10) + ack_batch pipelined with the next claim",
            "1 process",
            1,
            {"ack": "pipelined"},
        ),
        Case("proc-1", "procrastinate", "procrastinate", "concurrency 1", 1, {"concurrency": 1}),
        Case("proc-10", "procrastinate", "procrastinate", "concurrency 10", 1, {"concurrency": 10}),
        Case("pgq", "pgqueuer", "pgqueuer", "defaults (1 process)", 1),
        Case(
            "ours-1",
            "ours",
            "apalis-client Worker",
            f"1 process × concurrency {args.ours_concurrency}",
            1,
            {"concurrency": args.ours_concurrency, "handler": handler},
        ),
        Case(
            "ours-4",
            "ours",
            "apalis-client Worker",
            f"4 processes × concurrency {args.ours_concurrency}",
            4,
            {"concurrency": args.ours_concurrency, "handler": handler},
        ),
        Case(
            "ours-1-other",
            "ours",
            "apalis-client Worker",
            f"1 process × concurrency {args.ours_concurrency}, {other} handler",
            1,
            {"concurrency": args.ours_concurrency, "handler": other},
        ),
    ]
    multi = {"concurrency": args.ours_concurrency, "handler": handler, "queues": QUEUES}
    conc = args.ours_concurrency
    cases += [
        Case(
            "queues-routes",
            "ours_queues",
            "apalis-client, 3 queues: one Worker serving all three",
            f"1 process, Worker([Route × 3]), concurrency {conc} each",
            1,
            {**multi, "mode": "routes"},
        ),
        Case(
            "queues-workers",
            "ours_queues",
            "apalis-client, 3 queues: three single-queue Workers",
            f"1 process, 3 Workers on one loop, concurrency {conc} each",
            1,
            {**multi, "mode": "workers"},
        ),
        Case(
            "queues-processes",
            "ours_queues",
            "apalis-client, 3 queues: three single-queue Workers",
            f"3 processes, 1 Worker each, concurrency {conc}",
            3,
            {**multi, "mode": "process"},
        ),
    ]
    chosen = [c for c in cases if _selected(c.system, args)]
    if args.cases:
        chosen = [c for c in chosen if c.key in args.cases]
    return with_baselines(chosen, args.baseline_tree, args.baseline_ref)


def latency_cases(args: argparse.Namespace) -> list[Case]:
    cases = [
        Case("lat-raw", "raw_listen", "raw LISTEN delivery", "psycopg notifies()", 1),
        Case(
            "lat-ours",
            "ours",
            "apalis-client Worker",
            "poll interval 5 s",
            1,
            {
                "concurrency": args.ours_concurrency,
                "handler": args.ours_handler,
                "latency": True,
                "poll_seconds": 5.0,
            },
        ),
    ]
    return [c for c in cases if _selected(c.system, args)]


def _selected(system: str, args: argparse.Namespace) -> bool:
    return not args.only or system.split("_")[0] in args.only


def probe(system: str) -> str | None:
    """Why ``system`` cannot run here (its import fails), or None."""
    try:
        if system == "ours":
            _, WorkerConfig = _runners.apalis_worker_api()
            _runners.worker_config(WorkerConfig, 5.0)
        elif system == "procrastinate":
            import procrastinate  # noqa: F401
        elif system == "pgqueuer":
            import pgqueuer  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ---- report ---------------------------------------------------------------------------------


def fmt_range(values: list[float], digits: int = 0) -> tuple[str, str]:
    med = statistics.median(values)
    return f"{med:,.{digits}f}", f"{min(values):,.{digits}f}–{max(values):,.{digits}f}"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def report(
    args: argparse.Namespace, server_version: str, tp: list[Row], lat: list[tuple[Row, Row]]
) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Worker benchmark",
        "",
        f"{now}; {args.tasks:,} no-op tasks per run; {args.repeat} runs per row "
        f"(median, and min–max); {args.latency_samples} latency samples per run. "
        f"PostgreSQL {server_version} on the same machine; {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}; psycopg {version('psycopg')}, "
        f"procrastinate {version('procrastinate')}, pgqueuer {version('pgqueuer')}, "
        f"apalis-client {version('apalis-client')}.",
        "",
        "## Throughput (end to end: start signal to every task complete in the database, tasks/s)",
        "",
        "| system | configuration | tasks/s (median) | range | × raw loop (1 process) |",
        "|---|---|---:|---:|---:|",
    ]
    base = next((r for r in tp if r.case.key == "raw-each-1" and r.values), None)
    for r in tp:
        if r.error or not r.values:
            na = f"n/a (not available: {r.error or 'not run'})"
            lines.append(f"| {r.case.label} | {r.case.config} | {na} | | |")
            continue
        med, rng = fmt_range(r.values)
        ratio = (
            f"{statistics.median(r.values) / statistics.median(base.values):.2f}" if base else ""
        )
        lines.append(f"| {r.case.label} | {r.case.config} | {med} | {rng} | {ratio} |")
    pairs = [
        (cur, old)
        for cur in tp
        for old in tp
        if old.case.key == f"{cur.case.key}-before" and cur.values and old.values
    ]
    if pairs:
        lines += [
            "",
            f"## The Worker now against the Worker before ({args.baseline_ref}), paired run by run",
            "",
            "| configuration | now / before (median) | range | runs |",
            "|---|---:|---:|---:|",
        ]
        for cur, old in pairs:
            ratios = [a / b for a, b in zip(cur.values, old.values, strict=False)]
            med, rng = fmt_range(ratios, 3)
            lines.append(f"| {cur.case.config} | {med} | {rng} | {len(ratios)} |")
    found = {r.case.key: r for r in tp if r.values and r.case.key.startswith("queues-")}
    routes = found.get("queues-routes")
    against = [
        (found.get("queues-workers"), "three single-queue Workers, same process", ">= 0.9"),
        (found.get("queues-processes"), "three single-queue Worker processes", ""),
    ]
    if routes and any(other for other, _, _ in against):
        lines += [
            "",
            "## Three queues: one Worker serving all three against three single-queue Workers, "
            "paired run by run",
            "",
            "| one Worker ÷ | median | range | runs | target |",
            "|---|---:|---:|---:|---:|",
        ]
        for other, name, target in against:
            if other is None:
                continue
            ratios = [a / b for a, b in zip(routes.values, other.values, strict=False)]
            med, rng = fmt_range(ratios, 3)
            lines.append(f"| {name} | {med} | {rng} | {len(ratios)} | {target} |")
    if lat:
        lines += [
            "",
            "## NOTIFY wake-up latency (push COMMIT sent → handler start / notification "
            "received, ms)",
            "",
            "| receiver | configuration | p50 (median) | p50 range | p99 (median) | p99 range |",
            "|---|---|---:|---:|---:|---:|",
        ]
    for p50, p99 in lat:
        if p50.error or not p50.values:
            na = f"n/a (not available: {p50.error or 'not run'})"
            lines.append(f"| {p50.case.label} | {p50.case.config} | {na} | | | |")
            continue
        m50, r50 = fmt_range(p50.values, 2)
        m99, r99 = fmt_range(p99.values, 2)
        lines.append(f"| {p50.case.label} | {p50.case.config} | {m50} | {r50} | {m99} | {r99} |")
    lines += [
        "",
        "Raw loop: the claim_next and ack / ack_batch statements of queries/*.sql, autocommit, "
        "one psycopg connection per process. procrastinate: App + PsycopgConnector defaults, "
        "async no-op task, run_worker(wait=False). pgqueuer: QueueManager defaults "
        "(batch 10), async no-op entrypoint, drain mode. apalis-client: "
        f"Worker(..., concurrency={args.ours_concurrency}) with WorkerConfig() defaults and an "
        f"{args.ours_handler} no-op handler (unless the row says otherwise; a sync handler "
        "runs in the Worker's thread pool), run(until_idle=True). Tasks are seeded untimed "
        "(apalis: one unnest INSERT; procrastinate: batch_defer; pgqueuer: batch enqueue).",
        "",
    ]
    return "\n".join(lines)


def chart(tp: list[Row], lat: list[tuple[Row, Row]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(9, 8.5), gridspec_kw={"height_ratios": [len(tp) or 1, max(len(lat), 1)]}
    )
    names = [f"{r.case.label}\n{r.case.config}" for r in tp]
    meds = [statistics.median(r.values) if r.values and not r.error else 0.0 for r in tp]
    lo = [
        m - min(r.values) if r.values and not r.error else 0.0
        for m, r in zip(meds, tp, strict=True)
    ]
    hi = [
        max(r.values) - m if r.values and not r.error else 0.0
        for m, r in zip(meds, tp, strict=True)
    ]
    colors = [
        {"raw": "#999999", "ours": "#d62728", "procrastinate": "#1f77b4", "pgqueuer": "#2ca02c"}[
            r.case.system.split("_")[0]
        ]
        for r in tp
    ]
    y = list(range(len(tp)))[::-1]
    ax1.barh(y, meds, xerr=[lo, hi], color=colors, capsize=3)
    ax1.set_yticks(y, names, fontsize=8)
    ax1.set_xlabel("tasks/s (median of runs, bars: min–max)")
    ax1.set_title("End-to-end throughput, no-op tasks")
    for yi, m, h in zip(y, meds, hi, strict=True):
        # Past the error bar's right end, so the figure stays readable.
        ax1.text(m + h, yi, f"  {m:,.0f}" if m else " n/a", va="center", fontsize=8)
    ax1.set_xlim(0, max([m + h for m, h in zip(meds, hi, strict=True)] + [1.0]) * 1.15)
    lnames = [f"{p50.case.label}\n{p50.case.config}" for p50, _ in lat]
    y2 = list(range(len(lat)))[::-1]
    top = 1e-3
    for offset, idx, label in ((0.2, 0, "p50"), (-0.2, 1, "p99")):
        vals = [
            statistics.median(pair[idx].values) if pair[idx].values and not pair[idx].error else 0.0
            for pair in lat
        ]
        ax2.barh([v + offset for v in y2], vals, height=0.4, label=label)
        for yi, v in zip(y2, vals, strict=True):
            ax2.text(v, yi + offset, f" {v:.2f} ms" if v else " n/a", va="center", fontsize=8)
        top = max([top, *vals])
    ax2.set_yticks(y2, lnames, fontsize=8)
    ax2.set_xlim(0, top * 1.2)
    ax2.set_xlabel("ms from push COMMIT to handler start (median of runs)")
    ax2.set_title("NOTIFY wake-up latency")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or DEFAULT_URL)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument("--ours-concurrency", type=int, default=10)
    p.add_argument("--ours-handler", choices=("async", "sync"), default="async")
    p.add_argument("--timeout", type=float, default=300.0, help="per measurement, seconds")
    p.add_argument("--setup-timeout", type=float, default=60.0, help="worker start-up, seconds")
    p.add_argument(
        "--only",
        type=lambda s: set(s.split(",")),
        default=None,
        help="comma list among raw,procrastinate,pgqueuer,ours",
    )
    p.add_argument(
        "--cases",
        type=lambda s: set(s.split(",")),
        default=None,
        help="comma list of throughput case keys to run (e.g. queues-routes,queues-workers); "
        "with it no latency cases run",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--name", default="workers", help="result file names: NAME.md and NAME.png in --out"
    )
    p.add_argument(
        "--baseline-ref",
        default=None,
        help="also run the Worker of this git commit beside today's (e.g. 2ec2ca6)",
    )
    args = p.parse_args(argv)
    args.baseline_tree = None
    if args.tasks < 1 or args.repeat < 1 or args.latency_samples < 1:
        p.error("--tasks, --repeat and --latency-samples must be positive")
    return args


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: children, databases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="apalis-bench-baseline-") as tmp:
        if args.baseline_ref:
            args.baseline_tree = baseline_tree(args.baseline_ref, Path(tmp))
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    server = Server(args.database_url)
    server.drop_leftovers()
    with psycopg.connect(args.database_url) as conn:
        server_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    tp = [Row(c) for c in throughput_cases(args)]
    lat = [(Row(c), Row(c)) for c in latency_cases(args)] if not args.cases else []
    for r in [*tp, *(p for p, _ in lat)]:
        r.error = probe(r.case.system)
    for p50, p99 in lat:
        p99.error = p50.error
    for run in range(1, args.repeat + 1):
        # Every other run in reverse order: no case always goes first (or follows another).
        for r in tp if run % 2 else tp[::-1]:
            if r.error:
                continue
            print(
                f"[run {run}/{args.repeat}] {r.case.label}, {r.case.config} ...",
                end=" ",
                flush=True,
            )
            try:
                r.values.append(throughput(server, r.case, args))
                print(f"{r.values[-1]:,.0f} tasks/s", flush=True)
            except Exception as exc:  # any failure: this row prints n/a, the rest go on
                r.error = str(exc) if isinstance(exc, Unavailable) else _describe(exc)
                print(f"n/a ({exc})", flush=True)
        for p50, p99 in lat:
            if p50.error:
                continue
            print(f"[run {run}/{args.repeat}] latency {p50.case.label} ...", end=" ", flush=True)
            try:
                a, b = latency(server, p50.case, args)
                p50.values.append(a)
                p99.values.append(b)
                print(f"p50 {a:.2f} ms, p99 {b:.2f} ms", flush=True)
            except Exception as exc:
                p50.error = p99.error = str(exc) if isinstance(exc, Unavailable) else _describe(exc)
                print(f"n/a ({exc})", flush=True)
    text = report(args, server_version, tp, lat)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    md, png = args.out / f"{args.name}.md", args.out / f"{args.name}.png"
    md.write_text(text, encoding="utf-8")
    try:
        chart(tp, lat, png)
    except ImportError as exc:  # matplotlib is a bench extra
        print(f"wrote {md} (no plot: {exc})")
        return 0
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
