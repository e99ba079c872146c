"""Observer cost: what the events of one task cost with no observer, stats, stats+Prometheus.

Usage: .venv/bin/python bench/observer_cost.py [--tasks 100000] [--repeat 7]
       [--worker-rate 5000] [--out bench/results/observer_cost.md]

Per task the worker will emit ``claimed`` (one per batch of 10), ``started`` and ``finished``.
Each round times the three setups back to back on the same fake rows (paired, order rotated
per round) and prints the median and range of microseconds per task, and that cost as a share
of a task's time at ``--worker-rate`` tasks/s (take it from ``bench/workers.py``): the issue
asks for observer + metrics to cost at most 5 %.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from apalis_client.events import Fanout, Observer, StatsObserver, combine
from apalis_client.metrics import PrometheusObserver


@dataclass(frozen=True)
class Row:
    id: str
    job_type: str
    attempts: int = 0
    max_attempts: int = 5


def emit(obs: Observer | None, rows: list[Row]) -> float:
    start = time.perf_counter()
    if obs is None:
        for i in range(0, len(rows), 10):
            for _ in rows[i : i + 10]:
                pass
    else:
        for i in range(0, len(rows), 10):
            batch = rows[i : i + 10]
            obs.claimed("w", "q", batch)
            for r in batch:
                obs.started(r)
                obs.finished(r, "Done", 0.001)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--worker-rate", type=float, default=5000.0, help="tasks/s of the Worker")
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "observer_cost.md"
    )
    args = p.parse_args()
    rows = [Row(f"T{i:08d}", "q") for i in range(args.tasks)]
    setups: dict[str, Observer | None] = {
        "none": None,
        "stats": combine([StatsObserver()]),
        "stats+prometheus": Fanout([StatsObserver(), PrometheusObserver()]),
    }
    times: dict[str, list[float]] = {k: [] for k in setups}
    names = list(setups)
    for r in range(args.repeat):
        for name in names[r % 3 :] + names[: r % 3]:
            times[name].append(emit(setups[name], rows) / args.tasks * 1e6)
    base = statistics.median(times["none"])
    budget = 1e6 / args.worker_rate
    command = " ".join(["bench/observer_cost.py", *sys.argv[1:]])
    lines = [
        "# Observer cost",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; Python {platform.python_version()}; "
        f"`{command}`. {args.tasks} tasks x {args.repeat} paired rounds; a task takes "
        f"{budget:.0f} us at {args.worker_rate:g} tasks/s. The cost column is the median "
        "minus the median with no observer.",
        "",
        "| observer | cost, us/task | us/task range (raw) | share of a task |",
        "|---|---:|---:|---:|",
    ]
    for name, values in times.items():
        med = statistics.median(values) - (0 if name == "none" else base)
        lines.append(
            f"| {name} | {med:.2f} | {min(values):.2f}-{max(values):.2f} | "
            f"{(med / budget * 100) if name != 'none' else 0:.2f} % |"
        )
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
