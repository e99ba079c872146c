"""What runs inside one benchmark worker process (spawned; see workers.py for the protocol).

Every system does its own setup (imports, connections, registration), then calls
``wait_go()``: that reports "ready" and blocks until the parent starts the clock.
After the system returns, the child reports ("done", index, monotonic end time, count).
Deliberately no ``from __future__ import annotations`` here: the apalis Worker reads
the handler's declared argument type, so annotations must be real objects.
"""

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

QUEUE = "bench"
SAMPLE = "sample"

# Set in the child before the apalis Worker runs, so module-level handlers can report.
_OUT: Any = None
_COUNTER = itertools.count(1)
_LAST = [0]


def _count() -> None:
    # itertools.count is atomic under the GIL, so a thread-pool handler can use it.
    _LAST[0] = next(_COUNTER)


def noop_sync(args: dict[str, Any]) -> None:
    _count()


async def noop_async(args: dict[str, Any]) -> None:
    _count()


def latency_sync(args: dict[str, Any]) -> None:
    t = time.monotonic()
    _OUT.put((SAMPLE, args.get("n"), t))


async def latency_async(args: dict[str, Any]) -> None:
    t = time.monotonic()
    _OUT.put((SAMPLE, args.get("n"), t))


def worker_config(cls: Any, poll_seconds: float | None) -> tuple[Any, dict[str, Any]]:
    """A WorkerConfig with defaults, or with every poll interval set to ``poll_seconds``."""
    base = cls()
    if poll_seconds is None:
        return base, {}
    if dataclasses.is_dataclass(base):
        current = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    elif hasattr(base, "model_dump"):
        current = {name: getattr(base, name) for name in type(base).model_fields}
    else:
        current = dict(vars(base))
    changes: dict[str, Any] = {}
    for name, value in current.items():
        lowered = name.lower()
        if "poll" not in lowered or any(w in lowered for w in ("factor", "multiplier", "jitter")):
            continue
        if isinstance(value, timedelta):
            changes[name] = timedelta(seconds=poll_seconds)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            changes[name] = float(poll_seconds)
    if not changes:
        raise RuntimeError(f"WorkerConfig has no poll interval field among {sorted(current)}")
    if dataclasses.is_dataclass(base) and not isinstance(base, type):
        return dataclasses.replace(base, **changes), changes
    return cls(**{**current, **changes}), changes


# ---- the systems ----------------------------------------------------------------------------


def raw_loop(spec: dict[str, Any], wait_go: Callable[[], bool]) -> int:
    """claim_next(10) then ack (per task, ack_batch, or ack_batch pipelined with the next
    claim), exactly the statements in queries/."""
    if spec.get("tree"):
        _use_tree(spec["tree"])
    import psycopg
    from psycopg.rows import dict_row
    from ulid import ULID

    from apalis_generated import ack as ack_q
    from apalis_generated import keep_alive, lock

    # The generated modules' SQL constants: exactly queries/*.sql, run here without the
    # typed layer on top.
    claim = lock.CLAIM_NEXT_SQL
    ack = ack_q.ACK_SQL
    ack_batch = ack_q.ACK_BATCH_SQL
    worker_id, lease = f"bench-raw-{os.getpid()}", str(ULID())
    ok_result = json.dumps({"Ok": None})
    registration: dict[str, Any] = {
        "worker_id": worker_id,
        "queue": QUEUE,
        "storage_name": "PostgresStorage",
        "layers": "",
        "lease_token": lease,
    }
    # Registration is set-up, not measured: the statement of whichever tree runs.
    register = getattr(keep_alive, "UPSERT_WORKER_SQL", None)
    if register is None:  # a tree from before the 0.6 lifecycle
        register = str(getattr(keep_alive, "REGISTER_WORKER_SQL"))  # noqa: B009 (mypy: absent now)
        registration["orphan_threshold_secs"] = 300.0
    with psycopg.connect(spec["url"], autocommit=True, row_factory=dict_row) as conn:
        registered = conn.execute(register, registration).fetchone()
        if registered is None:
            raise RuntimeError("register_worker returned no row")
        if not wait_go():
            return 0
        deadline = time.monotonic() + spec["timeout"]
        guard = {"queue": QUEUE, "worker_id": worker_id, "lease_token": lease}

        def batch_params(jobs: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                **guard,
                "ids": [j["id"] for j in jobs],
                "attempts": [j["attempts"] for j in jobs],
                "lock_ats": [j["lock_at"] for j in jobs],
                "outcomes": ["Done"] * len(jobs),
                "results": [ok_result] * len(jobs),
            }

        def check(acked: list[Any], jobs: list[dict[str, Any]]) -> None:
            if len(acked) != len(jobs):
                raise RuntimeError(f"stale acks: {len(jobs) - len(acked)}")

        done = 0
        unacked: list[dict[str, Any]] = []  # "pipelined": handled, acked with the next claim
        # At most one claim per task plus the final empty one: the loop cannot spin forever.
        for _ in range(spec["tasks"] + 2):
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw loop: {done} tasks after {spec['timeout']} s")
            if unacked:
                # ack_batch and the next claim in one exchange and one implicit transaction.
                with conn.pipeline():
                    acks = conn.execute(ack_batch, batch_params(unacked))
                    rows = conn.execute(claim, {**guard, "batch": 10})
                check(acks.fetchall(), unacked)
                unacked = []
            else:
                rows = conn.execute(claim, {**guard, "batch": 10})
            jobs = rows.fetchall()
            if not jobs:
                break
            for job in jobs:
                json.loads(job["job"])  # the no-op handler still gets its decoded args
            if spec["ack"] == "pipelined":
                unacked = jobs
            elif spec["ack"] == "batch":
                check(conn.execute(ack_batch, batch_params(jobs)).fetchall(), jobs)
            else:
                for j in jobs:
                    cur = conn.execute(
                        ack,
                        {
                            **guard,
                            "outcome": "Done",
                            "result": ok_result,
                            "id": j["id"],
                            "lock_at": j["lock_at"],
                            "attempts": j["attempts"],
                        },
                    )
                    if cur.rowcount != 1:
                        raise RuntimeError(f"stale ack for {j['id']}")
            done += len(jobs)
        return done


def raw_listen(spec: dict[str, Any], wait_go: Callable[[], bool]) -> int:
    """Report the arrival time of every `apalis::job::insert` notification, per task id."""
    import psycopg

    stop = spec["stop"]
    with psycopg.connect(spec["url"], autocommit=True) as conn:
        conn.execute('LISTEN "apalis::job::insert"')
        if not wait_go():
            return 0
        deadline = time.monotonic() + spec["timeout"]
        seen = 0
        while not stop.is_set() and time.monotonic() < deadline:
            for note in conn.notifies(timeout=0.2):
                t = time.monotonic()
                payload = json.loads(note.payload)
                for task_id in payload.get("ids") or [payload.get("id")]:
                    _OUT.put((SAMPLE, task_id, t))
                seen += 1
        return seen


def apalis_worker_api() -> tuple[Any, Any]:
    """(Worker, WorkerConfig): from the package root, else from apalis_client.worker."""
    try:
        from apalis_client import Worker, WorkerConfig
    except ImportError:
        from apalis_client.worker import Worker, WorkerConfig
    return Worker, WorkerConfig


def _use_tree(tree: str) -> None:
    """Import apalis_client and apalis_generated from an exported older tree, not this one."""
    import sys

    sys.path[:0] = [tree, os.path.join(tree, "generated")]
    import apalis_client
    import apalis_generated

    for module in (apalis_client, apalis_generated):
        if not os.path.realpath(module.__file__ or "").startswith(os.path.realpath(tree)):
            raise RuntimeError(f"{module.__name__} came from {module.__file__}, not {tree}")


def ours(spec: dict[str, Any], wait_go: Callable[[], bool]) -> int:
    """apalis_client.Worker(...).run(until_idle=True), or run() until SIGTERM for latency.

    With ``spec["tree"]``, the Worker of that exported tree (the code before a change).
    """
    if spec.get("tree"):
        _use_tree(spec["tree"])
    Worker, WorkerConfig = apalis_worker_api()
    latency = spec.get("latency", False)
    if latency:
        handler = latency_async if spec["handler"] == "async" else latency_sync
    else:
        handler = noop_async if spec["handler"] == "async" else noop_sync
    config, _ = worker_config(WorkerConfig, spec.get("poll_seconds"))
    worker = Worker(
        QUEUE, handler, conninfo=spec["url"], concurrency=spec["concurrency"], config=config
    )
    if not wait_go():
        return 0
    stats = worker.run() if latency else worker.run(until_idle=True)
    return int(getattr(stats, "done", _LAST[0]))


def ours_queues(spec: dict[str, Any], wait_go: Callable[[], bool]) -> int:
    """Several queues (``spec["queues"]`` names) in one process, or one queue per process.

    ``mode``: "routes" (one Worker, one Route per queue), "workers" (one single-queue Worker
    per queue, run together on one event loop) or "process" (this process serves the
    queue of its index only).
    """
    from apalis_client.worker import Route

    Worker, WorkerConfig = apalis_worker_api()
    handler = noop_async if spec["handler"] == "async" else noop_sync
    config, _ = worker_config(WorkerConfig, spec.get("poll_seconds"))
    url, conc, queues = spec["url"], spec["concurrency"], spec["queues"]
    if spec["mode"] == "routes":
        routes = [Route(q, handler, concurrency=conc) for q in queues]
        workers = [Worker(routes, conninfo=url, config=config)]
    elif spec["mode"] == "workers":
        workers = [
            Worker(q, handler, conninfo=url, concurrency=conc, config=config) for q in queues
        ]
    else:
        q = queues[spec["index"]]
        workers = [Worker(q, handler, conninfo=url, concurrency=conc, config=config)]
    if not wait_go():
        return 0

    async def run_all() -> int:
        stats = await asyncio.gather(*(w.run_async(until_idle=True) for w in workers))
        return sum(int(s.done) for s in stats)

    return asyncio.run(run_all())


def procrastinate_app(url: str) -> tuple[Any, Any]:
    """A procrastinate App on ``url`` (connector defaults) with the no-op task registered."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    async def noop() -> None:
        _count()

    # Called, not used as a decorator: without the bench extras mypy sees `app` as Any, and
    # an Any decorator fails --strict (CI checks bench/ without them).
    return app, app.task(name="noop", queue=QUEUE)(noop)


async def procrastinate_worker(spec: dict[str, Any], wait_go: Callable[[], bool]) -> int:
    app, _ = procrastinate_app(spec["url"])
    async with app.open_async():
        if not await asyncio.to_thread(wait_go):
            return 0
        await asyncio.wait_for(
            app.run_worker_async(
                queues=[QUEUE],
                concurrency=spec["concurrency"],
                wait=False,
                install_signal_handlers=False,
            ),
            spec["timeout"],
        )
    return _LAST[0]


async def pgqueuer_worker(spec: dict[str, Any], wait_go: Callable[[], bool]) -> int:
    import psycopg
    from pgqueuer import Job, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    conn = await psycopg.AsyncConnection.connect(spec["url"], autocommit=True)
    async with conn:
        qm = QueueManager(Queries.from_psycopg_connection(conn))

        async def noop(job: Job) -> None:
            _count()

        qm.entrypoint("noop")(noop)  # called, not decorated: see procrastinate_app

        if not await asyncio.to_thread(wait_go):
            return 0
        # Defaults (batch_size 10, no concurrency cap); drain exits once the queue is empty.
        await asyncio.wait_for(qm.run(mode=QueueExecutionMode.drain), spec["timeout"])
    return _LAST[0]


SYSTEMS: dict[str, Callable[[dict[str, Any], Callable[[], bool]], Any]] = {
    "raw": raw_loop,
    "raw_listen": raw_listen,
    "ours": ours,
    "ours_queues": ours_queues,
    "procrastinate": procrastinate_worker,
    "pgqueuer": pgqueuer_worker,
}


def _exit_with_parent(parent: int) -> None:
    # If the benchmark itself dies (even by SIGKILL), its workers must not linger:
    # ask for a graceful stop first, then leave for good.
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5.0)
    os._exit(1)


def child_main(spec: dict[str, Any], out: Any, go: Any, stop: Any) -> None:
    """Entry point of a spawned worker process."""
    global _OUT
    _OUT = out
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    # Errors only: a worker's routine "SIGTERM received, stopping" is expected here.
    logging.basicConfig(level=logging.ERROR, format="%(processName)s %(name)s: %(message)s")
    index = spec["index"]
    spec = {**spec, "stop": stop}

    def wait_go() -> bool:
        out.put(("ready", index))
        return bool(go.wait(spec["setup_timeout"]))

    try:
        run = SYSTEMS[spec["system"]]
        result = run(spec, wait_go)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        out.put(("done", index, time.monotonic(), int(result)))
    except BaseException as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        out.put(("error", index, detail.splitlines()[-1][:300], traceback.format_exc()))
    finally:
        # Let the queue's feeder thread flush before the process ends.
        out.close()
        out.join_thread()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
