"""Worker features bench: observers + metrics against a plain Worker, and NOTIFY wake-up p50
through PgBouncer (claims pooled, LISTEN direct) against a direct worker. Paired run by run.

Usage: .venv/bin/python bench/worker_features.py --database-url URL [--pooled-url URL]
       [--tasks 5000] [--repeat 5] [--wakeups 50] [--out bench/results/worker_features.md]

URL is a migrated database (``apalis-client migrate``); ``--pooled-url`` the same database
through PgBouncer in transaction mode (without it the wake-up case is skipped). Each round runs
both setups of a case back to back, order alternating, on fresh queue names; the table gives
the median and range of each and of the ratio taken round by round. Targets (issue 16/12):
observers+metrics >= 0.95x plain throughput; pooled wake-up p50 <= 2x direct. The table is
printed and written (markdown) to ``--out``.

"Plain" is a Worker with no observer of the user's (it still counts its WorkerStats through
its own StatsObserver); "observers + metrics" adds a user StatsObserver and the Prometheus
exporter (``metrics_port=0``: counters, histogram, queue-depth gauges and the HTTP endpoint),
so every event goes through a fan-out of three.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
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
    med = statistics.median(values)
    return f"| {name} | {med:,.3f} | {min(values):,.3f}–{max(values):,.3f} | {unit} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url", required=True)
    p.add_argument("--pooled-url", default=None)
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--wakeups", type=int, default=50)
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "worker_features.md",
    )
    args = p.parse_args()
    url = args.database_url
    command = " ".join(["bench/worker_features.py", *sys.argv[1:]])
    lines = [
        "# Worker features benchmark",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {args.tasks:,} no-op tasks (async, "
        f"concurrency 10) per measurement; {args.repeat} paired rounds, order alternating; "
        f"Python {platform.python_version()}; `{command}`",
        "",
        "| case | median | range | unit |",
        "|---|---:|---:|---|",
    ]

    def out(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    for line in lines:
        print(line)
    plain, observed = paired(
        args.repeat,
        lambda: throughput(url, args.tasks),
        lambda: throughput(url, args.tasks, observers=[StatsObserver()], metrics_port=0),
    )
    out(row("plain Worker", plain, "tasks/s"))
    out(row("observers + metrics", observed, "tasks/s"))
    out(
        row(
            "ratio observed/plain, round by round (target >= 0.95)",
            [o / q for o, q in zip(observed, plain, strict=True)],
            "x",
        )
    )
    if args.pooled_url is None:
        out("")
        out("Wake-up through PgBouncer: not run (no --pooled-url).")
        _write(args.out, lines)
        return
    direct, pooled = paired(
        args.repeat,
        lambda: wakeup_p50(url, args.wakeups),
        lambda: wakeup_p50(
            args.pooled_url,
            args.wakeups,
            connect_kwargs={"prepare_threshold": None},
            listen_conninfo=url,
        ),
    )
    out(row("wake-up p50, direct worker", [d * 1000 for d in direct], "ms"))
    out(row("wake-up p50, pooled + direct LISTEN", [x * 1000 for x in pooled], "ms"))
    out(
        row(
            "ratio pooled/direct (target <= 2)",
            [x / d for x, d in zip(pooled, direct, strict=True)],
            "x",
        )
    )
    _write(args.out, lines)


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
