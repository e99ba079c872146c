"""Scale benchmark: the Worker's claim+ack throughput and claim latency as history grows.

Usage: .venv/bin/python bench/scale.py [--sizes 0,1000000,5000000] [--tasks 5000]
       [--repeat 3] [--workers 100000] [--explain] [--database-url URL]

On one server, in one run: a *history* database whose apalis.jobs grows through the
``--sizes`` (finished rows of the worker's own queue, written as a worker leaves them:
inserted Pending, then updated to Done, so each leaves a dead tuple until vacuumed), then
is purged; and a *control* database that stays empty. At each stage, each round measures
both (the order alternating by round): ``--tasks`` tasks pushed untimed, then a Worker
(async no-op handler, concurrency 10) drains them; then ``--latency-samples`` single claims
of 10 are timed. The ratio history/control of the same round is the paired figure.
Purge (``admin.vacuum``) and prune (``admin.prune_workers`` of ``--workers`` stale rows)
report rows/s. ``--explain`` prints EXPLAIN (ANALYZE, BUFFERS) of the claim at each stage.
With ``--churn``, each size is also measured vacuumed with jobs_dequeue_idx as the bulk load
left it, then with that index compacted (REINDEX) and after a churn under tuned and under
default autovacuum. Per stage, the entries read from each index of the history database
show which index the claims walked.
Output: a markdown table on stdout and in bench/results/scale.md, a plot in scale.png.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from _apalis_sql import SEED_INSERT
from ulid import ULID

from apalis_codegen.pgfind import scratch_database

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).resolve().parent / "results"
QUEUE = "bench::Scale"
HISTORY_WORKER = "history-worker"
CHUNK = 250_000

# History as a worker leaves it: pushed Pending, then acked Done (one dead tuple per row
# until vacuum), lock_by/lock_at kept, done_at spread over the last 30 days.
HISTORY_INSERT = """
INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority,
                         metadata)
SELECT '\\x7b7d', %(prefix)s || lpad(i::text, 25, '0'), %(queue)s, 'Pending', 0, 5,
       now() - interval '30 days' + (i %% 2592000) * interval '1 second', 0, '{}'
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
"""
HISTORY_ACK = """
UPDATE apalis.jobs
   SET status = 'Done', attempts = 1, lock_by = %(worker)s,
       lock_at = date_trunc('second', run_at), done_at = run_at + interval '1 second',
       last_result = '{"Ok": null}'
 WHERE id BETWEEN %(prefix)s || lpad(%(first)s::text, 25, '0')
                AND %(prefix)s || lpad(%(last)s::text, 25, '0')
"""
RESET_AUTOVACUUM = """
ALTER TABLE apalis.jobs RESET (
    autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold,
    autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay,
    vacuum_index_cleanup
)
"""
STALE_WORKERS = """
INSERT INTO apalis.workers (id, worker_type, storage_name, last_seen)
SELECT 'stale-' || i, %(queue)s, 'PostgresStorage', now() - interval '1 day'
  FROM generate_series(1, %(n)s) AS i
"""
# The bulk load leaves jobs_dequeue_idx at the size of its largest backlog (VACUUM frees its
# pages for reuse, never returns them): with few live entries on many pages the planner prices
# the index far above a scan of jobs_list_all_idx plus a sort, and claims read every claimable
# row. A queue that ran its history through workers never grew the index like that.
COMPACT_DEQUEUE = "REINDEX INDEX CONCURRENTLY apalis.jobs_dequeue_idx"
VACUUM_RUNNING = """
SELECT count(*) FROM pg_stat_progress_vacuum
 WHERE datname = current_database() AND relid = 'apalis.jobs'::regclass
"""
INDEX_READS = """
SELECT indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes
 WHERE schemaname = 'apalis' AND relname = 'jobs'
"""
TABLE_STATS = """
SELECT n_live_tup, n_dead_tup, pg_total_relation_size('apalis.jobs') AS bytes,
       coalesce(last_autovacuum, last_vacuum) AS vacuumed
  FROM pg_stat_user_tables WHERE schemaname = 'apalis' AND relname = 'jobs'
"""


@dataclass
class Stage:
    name: str
    history: int
    tp_hist: list[float] = field(default_factory=list)
    tp_ctl: list[float] = field(default_factory=list)
    lat_hist: list[float] = field(default_factory=list)  # p50 claim ms per round
    lat_ctl: list[float] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)
    settle: float | None = None  # seconds given to autovacuum after the churn
    reads: dict[str, tuple[int, int]] = field(default_factory=dict)  # index: (scans, tuples)

    def ratios(self) -> list[float]:
        return [h / c for h, c in zip(self.tp_hist, self.tp_ctl, strict=True)]

    def lat_ratios(self) -> list[float]:
        return [h / c for h, c in zip(self.lat_hist, self.lat_ctl, strict=True)]


async def _noop(args: Any) -> None:
    return None


def push_tasks(url: str, n: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            SEED_INSERT,
            {"queue": QUEUE, "jobs": [b"{}"] * n, "ids": [str(ULID()) for _ in range(n)]},
        )


def throughput(url: str, n: int, concurrency: int) -> float:
    """Tasks per second a Worker drains ``n`` freshly pushed tasks at (setup not timed)."""
    from apalis_client import Worker, WorkerConfig

    push_tasks(url, n)
    cfg = WorkerConfig(poll_interval=0.01, max_poll_interval=0.05, listen=False)
    worker = Worker(QUEUE, _noop, conninfo=url, concurrency=concurrency, config=cfg)
    started = time.perf_counter()
    stats = worker.run(until_idle=True)
    seconds = time.perf_counter() - started
    if stats.done < n:  # more: the tasks an EXPLAIN left behind
        raise RuntimeError(f"worker finished {stats.done} of {n} tasks")
    return stats.done / seconds


def claim_latency(url: str, samples: int) -> float:
    """Median milliseconds of one claim of 10 (the Worker's statement), over ``samples``."""
    from apalis_client import worker_ops as ops
    from apalis_client.worker_logic import Outcome

    push_tasks(url, samples * 10)
    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        lease = ops.register_worker(conn, QUEUE, f"latency-{os.getpid()}")
        for _ in range(samples):
            t0 = time.perf_counter()
            got = ops.claim_next(conn, lease, batch=10)
            times.append((time.perf_counter() - t0) * 1000)
            ops.ack_many(conn, lease, [(j, Outcome.success(None)) for j in got])
        ops.deregister_worker(conn, lease)
    return statistics.median(times)


def explain_claim(url: str) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the Worker's claim, rolled back."""
    from apalis_client import worker_ops as ops
    from apalis_generated import lock

    push_tasks(url, 10)
    with psycopg.connect(url, autocommit=True) as conn:
        lease = ops.register_worker(conn, QUEUE, f"explain-{os.getpid()}")
        params = {
            "queue": QUEUE,
            "batch": 10,
            "worker_id": lease.worker_id,
            "lease_token": lease.lease_token,
        }
        with conn.transaction(force_rollback=True):
            cur = psycopg.ClientCursor(conn)
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + lock.CLAIM_NEXT_SQL, params)
            plan = "\n".join(str(r[0]) for r in cur.fetchall())
        ops.deregister_worker(conn, lease)
    return plan


def grow_history(url: str, have: int, want: int, prefix: str = "H") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO apalis.workers (id, worker_type, storage_name) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (HISTORY_WORKER, QUEUE, "PostgresStorage"),
        )
        for first in range(have + 1, want + 1, CHUNK):
            last = min(first + CHUNK - 1, want)
            p = {
                "queue": QUEUE,
                "first": first,
                "last": last,
                "worker": HISTORY_WORKER,
                "prefix": prefix,
            }
            conn.execute(HISTORY_INSERT, p)
            conn.execute(HISTORY_ACK, p)
            print(f"  {prefix} history: {last:,} rows", file=sys.stderr, flush=True)


AUTOVACUUM_COUNT = """
SELECT autovacuum_count FROM pg_stat_user_tables WHERE schemaname = 'apalis' AND relname = 'jobs'
"""


def autovacuums(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(AUTOVACUUM_COUNT).fetchone()
    return int(row[0]) if row else 0


def churn_and_settle(url: str, rows: int, prefix: str, wait: float | None, limit: float) -> float:
    """``rows`` tasks pushed and finished (a day of traffic), then time for autovacuum.

    ``wait=None``: wait until an autovacuum of apalis.jobs has finished (at most ``limit``
    seconds) and return how long that took; else wait ``wait`` seconds.
    """
    grow_history(url, 0, rows, prefix)
    if wait is not None:
        time.sleep(wait)
        return wait
    return settle(url, rows // 10, limit)


def settle(url: str, dead: int, limit: float) -> float:
    """Seconds until an autovacuum counted from now has finished, none is running and at
    most ``dead`` dead rows are left (at most ``limit``).

    Counted from now: a vacuum that started while the rows were being written (past the tuned
    threshold of 10,000) does not clean what came after.
    """
    before = autovacuums(url)
    started = time.perf_counter()
    while time.perf_counter() - started < limit and (
        autovacuums(url) == before or table_stats(url).get("dead", 0) > dead or vacuum_running(url)
    ):
        time.sleep(1.0)
    return time.perf_counter() - started


def vacuum_running(url: str) -> bool:
    """Whether a vacuum of apalis.jobs is under way (a measurement would share the CPU)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(VACUUM_RUNNING).fetchone()
    return bool(row and row[0])


def index_reads(url: str) -> dict[str, tuple[int, int]]:
    """Scans and index entries read so far, per index of apalis.jobs."""
    with psycopg.connect(url, autocommit=True) as conn:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_stat_force_next_flush()")
        return {r[0]: (r[1], r[2]) for r in conn.execute(INDEX_READS)}


def table_stats(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(TABLE_STATS).fetchone()
    if row is None:
        return {}
    return {"live": row[0], "dead": row[1], "mb": row[2] / 1e6, "vacuumed": row[3]}


def measure(stage: Stage, hist: str, ctl: str, args: argparse.Namespace) -> None:
    # The control holds the rows of every earlier round, which autovacuum's next ANALYZE
    # would see; without it the planner may read a worker's whole history in each ack.
    for url in (ctl, hist) if stage.history == 0 else (ctl,):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE apalis.jobs")
    stage.table = table_stats(hist)
    reads = index_reads(hist)
    for r in range(args.repeat):
        order = [(hist, True), (ctl, False)] if r % 2 == 0 else [(ctl, False), (hist, True)]
        for url, is_hist in order:
            tp = throughput(url, args.tasks, args.concurrency)
            lat = claim_latency(url, args.latency_samples)
            (stage.tp_hist if is_hist else stage.tp_ctl).append(tp)
            (stage.lat_hist if is_hist else stage.lat_ctl).append(lat)
        print(
            f"  {stage.name} round {r + 1}: {stage.tp_hist[-1]:,.0f} vs {stage.tp_ctl[-1]:,.0f}"
            f" tasks/s, claim {stage.lat_hist[-1]:.2f} vs {stage.lat_ctl[-1]:.2f} ms",
            file=sys.stderr,
            flush=True,
        )
    time.sleep(0.6)  # the statistics of the last backend reach shared memory
    after = index_reads(hist)
    stage.reads = {
        name: (
            after[name][0] - reads.get(name, (0, 0))[0],
            after[name][1] - reads.get(name, (0, 0))[1],
        )
        for name in after
    }
    if args.explain:
        print(f"\nEXPLAIN of the claim, {stage.name}:\n{explain_claim(hist)}\n", flush=True)


def rng(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    return f"{med:,.{digits}f} [{min(values):,.{digits}f}–{max(values):,.{digits}f}]"


def report(
    stages: list[Stage], purge: tuple[int, float], prune: tuple[int, float], args: Any
) -> str:
    lines = [
        f"# bench/scale.py, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"{args.tasks:,} tasks per measurement, {args.repeat} paired rounds, Worker concurrency "
        f"{args.concurrency}, async no-op handler; claim latency: median of "
        f"{args.latency_samples} claims of 10. Median [min–max]; ratio = history / empty "
        "control in the same round.",
        "",
        "| stage | rows in apalis.jobs (live / dead) | tasks/s with history | tasks/s empty "
        "| paired ratio | claim ms with history | claim ms empty | claim ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        t = s.table
        rows = f"{t.get('live', 0):,} / {t.get('dead', 0):,}" if t else "-"
        name = s.name if s.settle is None else f"{s.name} ({s.settle:.0f} s after)"
        lines.append(
            f"| {name} | {rows} | {rng(s.tp_hist)} | {rng(s.tp_ctl)} | {rng(s.ratios(), 2)} "
            f"| {rng(s.lat_hist, 2)} | {rng(s.lat_ctl, 2)} | {rng(s.lat_ratios(), 2)} |"
        )
    lines += [
        "",
        "Index entries read in the history database per stage (top 3; scans, entries):",
        "",
    ]
    for s in stages:
        top = sorted(s.reads.items(), key=lambda kv: -kv[1][1])[:3]
        lines.append(
            f"- {s.name}: " + ", ".join(f"{n} {sc:,} scans, {tu:,} entries" for n, (sc, tu) in top)
        )
    lines += [
        "",
        f"Purge (admin.vacuum, batches of 10,000): {purge[0]:,} rows in {purge[1]:.1f} s = "
        f"{purge[0] / purge[1] if purge[1] else 0:,.0f} rows/s.",
        f"Prune (admin.prune_workers, batches of 1,000): {prune[0]:,} rows in {prune[1]:.2f} s "
        f"= {prune[0] / prune[1] if prune[1] else 0:,.0f} rows/s.",
    ]
    return "\n".join(lines) + "\n"


def chart(stages: list[Stage], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed)", file=sys.stderr)
        return
    # Stage names are long: horizontal bars, names wrapped on the shared y axis.
    names = [textwrap.fill(s.name, 28) for s in stages]
    rows = range(len(stages))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.9 * len(stages)), sharey=True)
    for ax, series, title in (
        (a, [s.ratios() for s in stages], "claim+ack throughput, history / empty"),
        (b, [s.lat_ratios() for s in stages], "claim latency, history / empty"),
    ):
        med = [statistics.median(v) for v in series]
        lo = [m - min(v) for m, v in zip(med, series, strict=True)]
        hi = [max(v) - m for m, v in zip(med, series, strict=True)]
        ax.barh(rows, med, xerr=[lo, hi], capsize=4, color="#4a7fb5")
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.set_title(title, fontsize=10)
    a.set_yticks(list(rows), names, fontsize=8)
    a.invert_yaxis()
    a.axvline(0.9, color="red", linewidth=0.8, linestyle="--")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}", file=sys.stderr)


@contextlib.contextmanager
def databases(url: str) -> Iterator[tuple[str, str]]:
    from apalis_client import migrate

    pid = os.getpid()
    with (
        scratch_database(url, f"bench_scale_{pid}_history") as hist,
        scratch_database(url, f"bench_scale_{pid}_control") as ctl,
    ):
        for db in (hist, ctl):
            with psycopg.connect(db, autocommit=True) as conn:
                migrate(conn)
        yield hist, ctl


@contextlib.contextmanager
def autovacuum_on(url: str, enable: bool) -> Iterator[None]:
    """Autovacuum on for the run: the churn stages measure what it does."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
        if row is not None and row[0] == "on":
            yield
            return
        if not enable:
            raise SystemExit(
                "this server runs with autovacuum = off, so no table is ever vacuumed on its own;"
                " pass --enable-autovacuum (superuser: ALTER SYSTEM, reset afterwards)"
            )
        conn.execute("ALTER SYSTEM SET autovacuum = on")
        conn.execute("SELECT pg_reload_conf()")
        print("autovacuum turned on for the run (ALTER SYSTEM)", file=sys.stderr)
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET autovacuum")
            conn.execute("SELECT pg_reload_conf()")


def label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M history"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k history"
    return f"{n} history"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    p.add_argument("--sizes", default="0,1000000,5000000", help="finished rows per stage")
    p.add_argument("--tasks", type=int, default=5000, help="tasks per measurement")
    p.add_argument("--repeat", type=int, default=3, help="paired rounds per stage")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument("--workers", type=int, default=100_000, help="stale worker rows to prune")
    p.add_argument("--explain", action="store_true", help="EXPLAIN the claim at each stage")
    p.add_argument(
        "--churn",
        type=int,
        default=200_000,
        help="at each size, tasks pushed and finished after the history settled, before the "
        "measurement, once with PostgreSQL's default autovacuum and once tuned (0: neither)",
    )
    p.add_argument(
        "--skip-fresh",
        action="store_true",
        help="do not measure right after writing the history (its dead tuples not vacuumed "
        "yet: slow at millions of rows), only the settled-and-churned stages",
    )
    p.add_argument(
        "--settle-limit", type=float, default=600.0, help="seconds to wait for autovacuum"
    )
    p.add_argument(
        "--enable-autovacuum",
        action="store_true",
        help="if the server runs with autovacuum = off (some CI images do), turn it on with "
        "ALTER SYSTEM for the run and reset it afterwards (superuser)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",")})
    stages: list[Stage] = []
    with (
        autovacuum_on(args.database_url, args.enable_autovacuum),
        databases(args.database_url) as (hist, ctl),
    ):
        from apalis_client import admin
        from apalis_client.tuning import tune_autovacuum

        have = 0
        prefixes = iter("CDEFGJKMNP")  # one id prefix per churn
        for size in sizes:
            grow_history(hist, have, size)
            have = size
            with psycopg.connect(hist, autocommit=True) as conn:
                conn.execute("CHECKPOINT")
            if size == 0 or not args.skip_fresh:
                stage = Stage(label(size), size)
                measure(stage, hist, ctl, args)
                stages.append(stage)
            if not args.churn or not size:
                continue
            # Settled history (vacuumed, as autovacuum eventually leaves it), measured with
            # jobs_dequeue_idx as the load left it, then compacted; then a day's churn: tuned
            # autovacuum first, timing how long it takes to catch up; then the default
            # settings, given the same time.
            with psycopg.connect(hist, autocommit=True) as conn:
                conn.execute("VACUUM (ANALYZE) apalis.jobs")
            settled = Stage(f"{label(size)}, vacuumed, dequeue index as loaded", size)
            measure(settled, hist, ctl, args)
            stages.append(settled)
            with psycopg.connect(hist, autocommit=True) as conn:
                conn.execute(COMPACT_DEQUEUE)
                tune_autovacuum(conn)
            took = churn_and_settle(hist, args.churn, next(prefixes), None, args.settle_limit)
            tuned = Stage(f"{label(size)} + {args.churn // 1000}k churn, autovacuum tuned", size)
            tuned.settle = took
            measure(tuned, hist, ctl, args)
            stages.append(tuned)
            with psycopg.connect(hist, autocommit=True) as conn:
                conn.execute(RESET_AUTOVACUUM)
                conn.execute("VACUUM (ANALYZE) apalis.jobs")
            churn_and_settle(hist, args.churn, next(prefixes), took, args.settle_limit)
            default = Stage(
                f"{label(size)} + {args.churn // 1000}k churn, default autovacuum", size
            )
            default.settle = took
            measure(default, hist, ctl, args)
            stages.append(default)
        with psycopg.connect(hist, autocommit=True) as conn:
            tune_autovacuum(conn)
            done = admin.vacuum(conn, QUEUE)
        purge = (done.deleted, done.seconds)
        # Measured once autovacuum (tuned) has cleaned up after the purge: right after it, a
        # vacuum of millions of deleted rows shares the CPU with the measurement.
        after = Stage("after purge, autovacuum tuned", 0)
        after.settle = settle(hist, 10_000, args.settle_limit)
        measure(after, hist, ctl, args)
        stages.append(after)
        with psycopg.connect(hist, autocommit=True) as conn:
            conn.execute(STALE_WORKERS, {"queue": QUEUE, "n": args.workers})
            pruned = admin.prune_workers(conn, QUEUE, stale_for=3600)
        prune = (pruned.deleted, pruned.seconds)
    text = report(stages, purge, prune, args)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.md").write_text(text, encoding="utf-8")
    chart(stages, args.out / "scale.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
