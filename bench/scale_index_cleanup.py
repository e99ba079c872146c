"""Tuned autovacuum with and without vacuum_index_cleanup = on, on a large apalis.jobs.

Usage: .venv/bin/python bench/scale_index_cleanup.py [--history 5000000] [--repeat 9]
       [--tasks 5000] [--enable-autovacuum] [--database-url URL]

Three databases on one server: two copies of the same history (bench/scale.py's, vacuumed,
analyzed, jobs_dequeue_idx compacted, ``migrate --tune-autovacuum``'s settings), one of them
with ``vacuum_index_cleanup`` set back to ``auto`` (PostgreSQL's default: a vacuum that finds
dead rows on under 2% of the pages skips the indexes); and an empty control. Each round drains
``--tasks`` tasks with the Worker in each, the order rotating by round, so autovacuum keeps
running on both copies as it would under load. Prints throughput, the ratio of each copy to
the control in the same round and of the two copies, median [min–max].
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator

import psycopg
from psycopg import sql
from scale import (
    COMPACT_DEQUEUE,
    DEFAULT_URL,
    autovacuum_on,
    grow_history,
    index_reads,
    rng,
    throughput,
)


@contextlib.contextmanager
def database(server: str, name: str, template: str | None = None) -> Iterator[str]:
    with psycopg.connect(server, autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(query)
    try:
        yield psycopg.conninfo.make_conninfo(server, dbname=name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    p.add_argument("--history", type=int, default=5_000_000)
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--enable-autovacuum", action="store_true")
    args = p.parse_args(argv)
    from apalis_client import migrate
    from apalis_client.tuning import tune_autovacuum

    pid = os.getpid()
    server = args.database_url
    with contextlib.ExitStack() as stack:
        stack.enter_context(autovacuum_on(server, args.enable_autovacuum))
        on = stack.enter_context(database(server, f"cleanup_{pid}_on"))
        ctl = stack.enter_context(database(server, f"cleanup_{pid}_control"))
        for db in (on, ctl):
            with psycopg.connect(db, autocommit=True) as conn:
                migrate(conn)
        grow_history(on, 0, args.history)
        with psycopg.connect(on, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) apalis.jobs")
            conn.execute(COMPACT_DEQUEUE)
            tune_autovacuum(conn)
            conn.execute("CHECKPOINT")
        auto = stack.enter_context(database(server, f"cleanup_{pid}_auto", f"cleanup_{pid}_on"))
        with psycopg.connect(auto, autocommit=True) as conn:
            conn.execute("ALTER TABLE apalis.jobs SET (vacuum_index_cleanup = auto)")
            conn.execute("ANALYZE apalis.jobs")
        names = {on: "index cleanup on", auto: "index cleanup auto", ctl: "empty control"}
        tp: dict[str, list[float]] = {u: [] for u in names}
        reads = {u: index_reads(u) for u in (on, auto)}
        order = [on, auto, ctl]
        for r in range(args.repeat):
            with psycopg.connect(ctl, autocommit=True) as conn:
                conn.execute("ANALYZE apalis.jobs")
            for url in order[r % 3 :] + order[: r % 3]:
                tp[url].append(throughput(url, args.tasks, args.concurrency))
            print(
                f"  round {r + 1}: " + ", ".join(f"{names[u]} {tp[u][-1]:,.0f}" for u in order),
                file=sys.stderr,
                flush=True,
            )
        time.sleep(0.6)
        after = {u: index_reads(u) for u in (on, auto)}
    ratio = {
        "on / control": [a / c for a, c in zip(tp[on], tp[ctl], strict=True)],
        "auto / control": [a / c for a, c in zip(tp[auto], tp[ctl], strict=True)],
        "on / auto": [a / c for a, c in zip(tp[on], tp[auto], strict=True)],
    }
    print(f"\n{args.history:,} finished rows, {args.tasks:,} tasks a round, {args.repeat} rounds")
    for u, name in names.items():
        print(f"{name}: {rng(tp[u])} tasks/s")
    for k, v in ratio.items():
        print(f"{k}: {rng(v, 2)}")
    for u in (on, auto):
        d = {
            n: (after[u][n][0] - reads[u][n][0], after[u][n][1] - reads[u][n][1]) for n in after[u]
        }
        s, t = d["jobs_dequeue_idx"]
        print(
            f"{names[u]}: jobs_dequeue_idx {t:,} entries in {s:,} scans "
            f"({t / max(s, 1):.0f} a scan)"
        )
    print(
        f"median ratios: {', '.join(f'{k} {statistics.median(v):.2f}' for k, v in ratio.items())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
