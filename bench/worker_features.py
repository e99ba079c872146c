"""Worker features bench: observers + metrics against a plain Worker, and NOTIFY wake-up p50
through PgBouncer (claims pooled, LISTEN direct) against a direct worker. Paired run by run.

Usage: .venv/bin/python bench/worker_features.py --database-url URL
       [--pooled-url URL | --pgbouncer] [--only throughput|wakeup] [--tasks 5000] [--repeat 5]
       [--wakeups 50] [--markdown PATH]

URL is a migrated database (``apalis-client migrate``); ``--pooled-url`` the same database
through PgBouncer in transaction mode, or ``--pgbouncer`` to start one (Debian's package, as
the test fixture does, pool of 4) in front of URL's server for the run (without either the
wake-up case is skipped). ``--markdown`` also writes the table there. Each round runs
both setups of a case back to back, order alternating, on fresh queue names; the table gives
the median and range of each and of the ratio taken round by round. Targets (issue 16/12):
observers+metrics >= 0.95x plain throughput; pooled wake-up p50 <= 2x direct.

"Plain" is a Worker with no observer of the user's (it still counts its WorkerStats through
its own StatsObserver); "observers + metrics" adds a user StatsObserver and the Prometheus
exporter (``metrics_port=0``: counters, histogram, queue-depth gauges and the HTTP endpoint),
so every event goes through a fan-out of three.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg

from apalis_client import Task, push_many_with_conn
from apalis_client.events import StatsObserver
from apalis_client.worker import Worker, WorkerConfig

CFG = WorkerConfig(poll_interval=0.05, max_poll_interval=0.5)


def seed(url: str, queue: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, n, 1000):
            push_many_with_conn(
                conn, queue, [Task(args=i) for i in range(start, min(n, start + 1000))]
            )


async def _noop(n: int) -> int:
    return n


def throughput(url: str, n: int, **kwargs: Any) -> float:
    queue = f"b{uuid.uuid4().hex[:10]}"
    seed(url, queue, n)
    w = Worker(queue, _noop, conninfo=url, concurrency=10, config=CFG, **kwargs)
    started = time.monotonic()
    stats = w.run(until_idle=True)
    elapsed = time.monotonic() - started
    if stats.done != n:
        raise SystemExit(f"{queue}: {stats.done} of {n} done")
    return n / elapsed


def wakeup_p50(url: str, samples: int, **kwargs: Any) -> float:
    queue = f"w{uuid.uuid4().hex[:10]}"
    got = threading.Event()
    slow = WorkerConfig(poll_interval=30.0, max_poll_interval=30.0)

    def handle(_: Any) -> None:
        got.set()

    w = Worker(queue, handle, conninfo=url, config=slow, **kwargs)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    if not w.wait_until_ready(15):
        raise SystemExit("worker not ready")
    lat: list[float] = []
    direct = kwargs.get("listen_conninfo") or url
    with psycopg.connect(direct, autocommit=True) as conn:
        time.sleep(0.3)
        for i in range(samples):
            got.clear()
            sent = time.monotonic()
            push_many_with_conn(conn, queue, [Task(args=i)])
            if not got.wait(10):
                raise SystemExit("no wake-up within 10 s")
            lat.append(time.monotonic() - sent)
            time.sleep(0.02)
    w.stop()
    t.join(30)
    return statistics.median(lat)


def paired(
    repeat: int, a: Callable[[], float], b: Callable[[], float]
) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for r in range(repeat):
        if r % 2 == 0:
            xs.append(a())
            ys.append(b())
        else:
            ys.append(b())
            xs.append(a())
        print(f"round {r + 1}/{repeat}: {xs[-1]:,.1f} / {ys[-1]:,.1f}", flush=True)
    return xs, ys


def row(name: str, values: list[float], unit: str) -> str:
    return (
        f"| {name} | {statistics.median(values):.3f} | "
        f"{min(values):.3f}–{max(values):.3f} | {unit} | {len(values)} |"
    )


@contextlib.contextmanager
def pooled_url(args: argparse.Namespace) -> Iterator[str | None]:
    """--pooled-url as given, or the URL of a PgBouncer started for the run (--pgbouncer)."""
    if not args.pgbouncer:
        yield args.pooled_url
        return
    # The test suite's fixture code, so the bench's pooler is configured as the tests' is.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from pgbouncer_support import start_pgbouncer

    with start_pgbouncer(args.database_url) as bouncer:
        yield bouncer.url(args.database_url)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url", required=True)
    p.add_argument("--pooled-url", default=None)
    p.add_argument("--pgbouncer", action="store_true", help="start a PgBouncer for the run")
    p.add_argument("--only", choices=("throughput", "wakeup"), default=None)
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--wakeups", type=int, default=50)
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args()
    url = args.database_url
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"{started}; `{' '.join(['bench/worker_features.py', *sys.argv[1:]])}`; "
        f"{args.tasks:,} no-op tasks (async, concurrency 10) per throughput measurement; "
        f"{args.repeat} paired runs (median, min–max; order alternating run by run); "
        f"Python {platform.python_version()}.",
        "",
        "| case | median | range | unit | runs |",
        "|---|---:|---:|---|---:|",
    ]

    def show(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    for line in lines:
        print(line)
    if args.only in (None, "throughput"):
        plain, observed = paired(
            args.repeat,
            lambda: throughput(url, args.tasks),
            lambda: throughput(url, args.tasks, observers=[StatsObserver()], metrics_port=0),
        )
        show(row("plain Worker", plain, "tasks/s"))
        show(row("observers + metrics", observed, "tasks/s"))
        show(
            row(
                "ratio observed/plain (target >= 0.95)",
                [o / q for o, q in zip(observed, plain, strict=True)],
                "x",
            )
        )
    if args.only in (None, "wakeup"):
        with pooled_url(args) as pooled_at:
            if pooled_at is None:
                show("wake-up through PgBouncer: skipped (no --pooled-url or --pgbouncer)")
            else:
                direct, pooled = paired(
                    args.repeat,
                    lambda: wakeup_p50(url, args.wakeups),
                    lambda: wakeup_p50(
                        pooled_at,
                        args.wakeups,
                        connect_kwargs={"prepare_threshold": None},
                        listen_conninfo=url,
                    ),
                )
                show(row("wake-up p50, direct worker", [d * 1000 for d in direct], "ms"))
                show(
                    row(
                        "wake-up p50, claims through PgBouncer + direct LISTEN",
                        [x * 1000 for x in pooled],
                        "ms",
                    )
                )
                show(
                    row(
                        "ratio pooled/direct (target <= 2)",
                        [x / d for x, d in zip(pooled, direct, strict=True)],
                        "x",
                    )
                )
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as out:
            out.write("# Worker features bench\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
