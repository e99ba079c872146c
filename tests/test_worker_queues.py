"""One Worker serving several queues (routes): each by its own handler, one LISTEN, one stop."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import signal
import socket
import sys
import time
import urllib.request
from typing import Any

import psycopg
import pytest
from worker_support import (
    CRASH_FLAGS,
    FAST,
    TESTS_DIR,
    Background,
    push,
    rows,
    spawn_worker,
    statuses,
    stop,
    task,
    wait_for,
)

from apalis_client import AlreadyRegistered, InvalidArgument, Route
from apalis_client import worker_ops as ops
from apalis_client.cli import main
from apalis_client.periodic import Periodic
from apalis_client.worker import Worker, WorkerConfig

# Polls so rare that only a notification can start a task within the tests' waits.
NOTIFY_ONLY = WorkerConfig(poll_interval=60, max_poll_interval=60, heartbeat_interval=30)
QUEUES = ("emails", "reports", "thumbs")
TASKS = 1_000


def registrations(url: str, worker_id: str) -> dict[str, Any]:
    found = rows(
        url,
        "SELECT worker_type, lease_token FROM apalis.workers WHERE id = %s ORDER BY 1",
        worker_id,
    )
    return {r["worker_type"]: r["lease_token"] for r in found}


def is_done(url: str, task_id: str) -> bool:
    return bool(task(url, task_id)["status"] == "Done")


def test_one_worker_serving_three_queues_runs_each_task_once_by_its_queues_handler(
    migrated_db: str,
) -> None:
    ids = {q: push(migrated_db, q, list(range(TASKS))) for q in QUEUES}
    ran: dict[str, list[int]] = {q: [] for q in QUEUES}

    def send(n: int) -> str:  # thread pool
        ran["emails"].append(n)
        return f"sent {n}"

    async def build(n: int) -> str:  # asyncio
        await asyncio.sleep(0)
        ran["reports"].append(n)
        return f"built {n}"

    def thumb(n: int) -> str:
        ran["thumbs"].append(n)
        return f"thumb {n}"

    w = Worker(
        [Route("emails", send, concurrency=8), Route("reports", build, concurrency=16), Route("thumbs", thumb, concurrency=2)],  # noqa: E501
        conninfo=migrated_db,
        worker_id="multi-1",
        config=FAST,
    )  # fmt: skip
    stats = w.run(until_idle=True)

    assert (stats.claimed, stats.done, stats.failed, stats.stale) == (3 * TASKS, 3 * TASKS, 0, 0)
    assert {q: s.done for q, s in stats.queues.items()} == dict.fromkeys(QUEUES, TASKS)
    assert {q: sorted(ns) for q, ns in ran.items()} == {q: list(range(TASKS)) for q in QUEUES}
    verb = {"emails": "sent", "reports": "built", "thumbs": "thumb"}
    for q in QUEUES:
        found = rows(
            migrated_db,
            "SELECT id, status, attempts, last_result, lock_by FROM apalis.jobs "
            "WHERE job_type = %s",
            q,
        )
        by_id = {r["id"]: r for r in found}
        assert len(by_id) == TASKS
        for n, tid in enumerate(ids[q]):
            r = by_id[tid]
            assert (r["status"], r["attempts"], r["lock_by"]) == ("Done", 1, "multi-1")
            assert r["last_result"] == {"Ok": f"{verb[q]} {n}"}


def test_each_queue_registers_under_the_worker_id_and_a_stop_releases_them_all(
    migrated_db: str,
) -> None:
    w = Worker(
        [Route(q, lambda n: n) for q in QUEUES], conninfo=migrated_db, worker_id="m2", config=FAST
    )
    bg = Background(w)
    try:
        held = registrations(migrated_db, "m2")
        assert sorted(held) == sorted(QUEUES)
        assert all(token is not None for token in held.values())
    finally:
        bg.finish()
    assert registrations(migrated_db, "m2") == dict.fromkeys(QUEUES)


def test_a_notification_on_each_queue_wakes_its_route(migrated_db: str) -> None:
    seen: list[tuple[str, int]] = []

    def route(queue: str) -> Route:
        async def handle(n: int) -> int:
            seen.append((queue, n))
            return n

        return Route(queue, handle)

    w = Worker([route(q) for q in QUEUES], conninfo=migrated_db, config=NOTIFY_ONLY)
    bg = Background(w)
    try:
        time.sleep(0.2)  # past each lane's first poll: from here only a NOTIFY wakes it
        for i, q in enumerate(QUEUES):
            (tid,) = push(migrated_db, q, [i])
            wait_for(functools.partial(is_done, migrated_db, tid), 10, f"queue {q} woken")
    finally:
        bg.finish()
    assert seen == [(q, i) for i, q in enumerate(QUEUES)]


def test_a_queue_already_registered_elsewhere_refuses_the_run_and_releases_the_others(
    migrated_db: str,
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        live = ops.register_worker(conn, "reports", "m4")  # a live peer of the same id
    w = Worker([Route(q, abs) for q in QUEUES], conninfo=migrated_db, worker_id="m4", config=FAST)
    with pytest.raises(AlreadyRegistered, match="reports"):
        w.run(until_idle=True)
    assert registrations(migrated_db, "m4") == {
        "emails": None,
        "reports": live.lease_token,
        "thumbs": None,
    }


def test_routes_take_the_workers_concurrency_and_config_unless_they_set_their_own(
    migrated_db: str,
) -> None:
    own = WorkerConfig(batch_size=3)
    w = Worker(
        [Route("a", abs), Route("b", abs, concurrency=7, config=own)],
        conninfo=migrated_db,
        concurrency=4,
        config=FAST,
    )
    assert [(s.queue, s.concurrency, s.config) for s in w._served] == [
        ("a", 4, FAST),
        ("b", 7, own),
    ]
    assert w.queues == ("a", "b")


def test_retention_purges_only_the_queue_whose_route_configures_it(migrated_db: str) -> None:
    for q in ("a", "b"):
        push(migrated_db, q, [1, 2, 3])
    Worker([Route("a", abs), Route("b", abs)], conninfo=migrated_db, config=FAST).run(
        until_idle=True
    )
    purging = dataclasses.replace(FAST, retention_window=0.0, retention_interval=0.2)
    w = Worker(
        [Route("a", abs, config=purging), Route("b", abs)], conninfo=migrated_db, config=FAST
    )
    bg = Background(w)
    try:
        wait_for(lambda: statuses(migrated_db, "a") == {}, 10, "queue a purged")
        time.sleep(0.5)  # two more purge intervals of queue a
    finally:
        bg.finish()
    assert statuses(migrated_db, "b") == {"Done": 3}


def test_a_routes_periodic_schedules_join_the_workers() -> None:
    every = Periodic("* * * * *", "a", name="every")
    nightly = Periodic("0 3 * * *", "b", name="nightly")
    w = Worker(
        [Route("a", abs, periodic=[every]), Route("b", abs)],
        conninfo="postgresql://nowhere.invalid/x",
        periodic=[nightly],
    )
    assert w.periodic == [nightly, every]


def test_max_tasks_counts_the_tasks_of_every_queue_together(migrated_db: str) -> None:
    for q in QUEUES:
        push(migrated_db, q, list(range(20)))
    w = Worker([Route(q, abs, concurrency=4) for q in QUEUES], conninfo=migrated_db, config=FAST)
    stats = w.run(max_tasks=25)
    assert (stats.claimed, stats.done) == (25, 25)
    done = sum(statuses(migrated_db, q).get("Done", 0) for q in QUEUES)
    assert done == 25


def test_a_lost_lease_on_one_queue_stops_every_queue_and_releases_the_others(
    migrated_db: str,
) -> None:
    w = Worker([Route(q, abs) for q in QUEUES], conninfo=migrated_db, worker_id="m3", config=FAST)
    bg = Background(w)
    with psycopg.connect(migrated_db) as conn:
        conn.execute(
            b"UPDATE apalis.workers SET last_seen = now() - interval '1 hour' "
            b"WHERE worker_type = 'reports'"
        )
        taker = ops.register_worker(conn, "reports", "m3", orphan_threshold=FAST.orphan_threshold)
        conn.commit()
    stats = bg.join(timeout=10)
    assert stats.lease_lost
    assert stats.queues["reports"].lease_lost and not stats.queues["emails"].lease_lost
    assert registrations(migrated_db, "m3") == {
        "emails": None,
        "reports": taker.lease_token,
        "thumbs": None,
    }


def test_cancel_reaches_a_running_task_on_the_second_queue(migrated_db: str) -> None:
    from apalis_client.admin import cancel

    started: list[int] = []
    stopped: list[int] = []

    async def hang(n: int) -> None:
        started.append(n)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append(n)
            raise

    w = Worker([Route("emails", abs), Route("reports", hang)], conninfo=migrated_db, config=FAST)
    bg = Background(w)
    try:
        (tid,) = push(migrated_db, "reports", [5])
        wait_for(lambda: started == [5], 10, "the task to start")
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            cancel(conn, tid)
        wait_for(lambda: stopped == [5], 5, "the handler to be cancelled")
    finally:
        stats = bg.finish(timeout=10)
    row = task(migrated_db, tid)
    assert (row["status"], row["last_result"]) == ("Killed", {"Err": "cancelled by operator"})
    assert stats.queues["reports"].acked == 0  # the cancellation is the record, no ack over it


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([], "at least one Route"),
        ([Route("a", abs), Route("a", abs)], "queue 'a' is routed twice"),
        (["a"], "must be Route(queue, handler)"),
    ],
)
def test_bad_routes_are_refused_before_any_connection(routes: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        Worker(routes, conninfo="postgresql://nowhere.invalid/x")


def test_a_handler_beside_routes_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="each route names its own handler"):
        Worker([Route("a", abs)], abs, conninfo="postgresql://nowhere.invalid/x")


def test_a_route_refuses_zero_concurrency_naming_its_queue() -> None:
    with pytest.raises(InvalidArgument, match=r"concurrency of queue 'a' must be .* got 0"):
        Route("a", abs, concurrency=0)


def test_a_single_queue_without_a_handler_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="needs a handler for queue 'a'"):
        Worker("a", conninfo="postgresql://nowhere.invalid/x")


# --- the command line ------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_worker_command_serves_several_queues_each_with_its_handler(
    capsys: pytest.CaptureFixture[str], migrated_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(TESTS_DIR)
    a = push(migrated_db, "a", [{"x": 1}] * 3)
    b = push(migrated_db, "b", [{"x": 2}] * 2)
    code, out, _ = cli(
        capsys,
        "worker", "a=worker_support:echo", "b=worker_support:fail", "--until-idle",
        "--concurrency", "2", "--concurrency", "b=1", "--worker-id", "cli-m",
        "--database-url", migrated_db,
    )  # fmt: skip
    assert code == 0
    assert "queue a: 3 done, 0 failed" in out
    assert "queue b: 0 done, 2 failed" in out
    assert [task(migrated_db, t)["last_result"] for t in a] == [{"Ok": {"x": 1}}] * 3
    assert all(task(migrated_db, t)["status"] == "Failed" for t in b)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a=worker_support:echo", "b"], "or QUEUE=module:function for each of several"),
        (["a", "worker_support:echo", "x"], "or QUEUE=module:function for each of several"),
        (["a=", "b=worker_support:echo"], "a route must be QUEUE=module:function, got a="),
        (["a=worker_support:echo", "--concurrency", "c=2"], "queue 'c' is not served"),
        (["a", "worker_support:echo", "--concurrency", "a=0"], "got 'a=0'"),
    ],
)
def test_bad_worker_routes_or_concurrency_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.syspath_prepend(TESTS_DIR)
    code, out, err = cli(capsys, "worker", *argv, "--database-url", "postgresql://nowhere/x")
    assert (code, out) == (2, "")
    assert message in err


# --- real processes ---------------------------------------------------------------------------


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:  # not serving yet
        return ""


def test_the_worker_command_serves_each_queues_counters_on_its_metrics_port(
    runs_db: str,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = spawn_worker(
        runs_db, "a=worker_support:echo", "b=worker_support:echo", "--metrics-port", str(port)
    )
    try:
        push(runs_db, "a", [1, 2, 3])
        push(runs_db, "b", [4, 5])
        wait_for(
            lambda: statuses(runs_db, "a") == {"Done": 3} and statuses(runs_db, "b") == {"Done": 2},
            20,
            "every task Done",
        )
        lines = ('{queue="a",status="Done"} 3.0', '{queue="b",status="Done"} 2.0')
        wait_for(
            lambda: all(f"apalis_tasks_finished_total{x}" in scrape(port) for x in lines),
            10,
            "both queues' counters on the endpoint",
        )
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out


def runs_per_task(url: str) -> dict[int, int]:
    found = rows(url, "SELECT n, count(*)::int AS runs FROM test_runs GROUP BY n ORDER BY n")
    return {r["n"]: r["runs"] for r in found}


def test_a_sigkilled_multi_queue_worker_restarted_under_its_id_recovers_every_queue(
    runs_db: str,
) -> None:
    # Four tasks per queue, numbered apart so each run says which queue it was.
    first_n = {"emails": 0, "reports": 100, "thumbs": 200}
    for q, base in first_n.items():
        push(runs_db, q, [{"n": base + i} for i in range(4)])
    routes = [f"{q}=worker_support:hang_once" for q in QUEUES]
    args = ("--worker-id", "multi-fixed", "--concurrency", "4", *CRASH_FLAGS)
    first = spawn_worker(runs_db, *routes, *args)
    try:
        wait_for(lambda: len(runs_per_task(runs_db)) == 12, 30, "all twelve tasks to start")
    finally:
        stop(first, signal.SIGKILL)
    assert {q: statuses(runs_db, q) for q in QUEUES} == {key: {"Running": 4} for key in QUEUES}
    time.sleep(2.0)  # past the 1.5 s threshold: the old registrations are stale
    second = spawn_worker(runs_db, *routes, *args)
    try:
        wait_for(
            lambda: all(statuses(runs_db, q) == {"Done": 4} for q in QUEUES),
            30,
            "every task of every queue Done",
        )
    finally:
        out = stop(second)
    assert second.returncode == 0, out
    expected = {base + i: 2 for base in first_n.values() for i in range(4)}
    assert runs_per_task(runs_db) == expected
    assert rows(runs_db, "SELECT DISTINCT attempts, lock_by FROM apalis.jobs") == [
        {"attempts": 2, "lock_by": "multi-fixed"}
    ]
    assert registrations(runs_db, "multi-fixed") == dict.fromkeys(QUEUES)
    for q in QUEUES:
        assert f"queue {q}: 4 done" in out


def ignore(args: Any) -> None:
    """Takes any payload (the periodic one is null)."""


def test_every_connection_of_the_worker_takes_its_connect_kwargs(migrated_db: str) -> None:
    cfg = dataclasses.replace(FAST, retention_window=3600.0, retention_interval=0.1)
    w = Worker(
        [Route("a", ignore, periodic=[Periodic("* * * * * *", "a", name="tick")]), Route("b", abs)],
        conninfo=migrated_db,
        config=cfg,
        metrics_port=0,
        connect_kwargs={"application_name": "apalis-kw"},
    )

    def names() -> list[str]:
        found = rows(
            migrated_db,
            "SELECT application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        return [r["application_name"] for r in found]

    bg = Background(w)
    try:
        # Two claim and two heartbeat connections, LISTEN, periodic, two retention purges
        # and the queue-depth gauges: nine at least, every one named by connect_kwargs.
        wait_for(lambda: len(names()) >= 9, 10, "every background connection")
        assert set(names()) == {"apalis-kw"}
    finally:
        bg.finish()


def test_metrics_without_prometheus_client_installed_is_refused_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(InvalidArgument, match=r"pip install 'apalis-client\[metrics\]'"):
        Worker("a", abs, conninfo="postgresql://nowhere.invalid/x", metrics_port=9100)
