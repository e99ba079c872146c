"""Periodic tasks: slots, keys, the missed-slot policy, and exactly-once pushes across processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from worker_support import REPO, TESTS_DIR, rows

from apalis_client.errors import InvalidArgument
from apalis_client.periodic import (
    Periodic,
    PeriodicService,
    latest_slot,
    next_slot,
    periodic,
    periodic_of,
    plan_slot,
    slot_key,
)

UTC = timezone.utc


def at(h: int, m: int, s: int = 0, us: int = 0) -> datetime:
    return datetime(2026, 12, 1, h, m, s, us, tzinfo=UTC)


FIVE = Periodic("*/5 * * * *", "reports", {"kind": "r"}, name="five")


def test_the_slot_key_is_name_and_utc_second() -> None:
    berlin = datetime(2026, 12, 1, 22, 5, tzinfo=ZoneInfo("Europe/Berlin"))
    assert slot_key("five", berlin) == "periodic:five:2026-12-01T21:05:00+00:00"


def test_latest_slot_includes_now_when_now_is_a_slot() -> None:
    assert latest_slot(FIVE, at(21, 5)) == at(21, 5)
    assert latest_slot(FIVE, at(21, 9, 59, 999999)) == at(21, 5)
    assert next_slot(FIVE, at(21, 5)) == at(21, 10)


def test_a_schedule_is_read_in_its_time_zone() -> None:
    daily = Periodic("0 9 * * *", "reports", name="nine", tz=ZoneInfo("Europe/Berlin"))
    assert latest_slot(daily, at(12, 0)) == at(8, 0)  # 09:00 in Berlin is 08:00 UTC in winter


def test_a_sixth_field_schedules_seconds() -> None:
    every_second = Periodic("* * * * * *", "ticks")
    assert next_slot(every_second, at(21, 0, 0, 500_000)) == at(21, 0, 1)


def test_after_downtime_only_the_latest_missed_slot_is_pushed() -> None:
    slot, skipped = plan_slot(FIVE, last_pushed=at(20, 0), started=at(20, 0), now=at(21, 7))
    assert (slot, skipped) == (at(21, 5), 12)  # 20:05 … 21:00 skipped


def test_at_start_the_latest_slot_is_pushed_under_the_latest_policy() -> None:
    assert plan_slot(FIVE, last_pushed=None, started=at(21, 7), now=at(21, 7)) == (at(21, 5), 0)


def test_at_start_nothing_old_is_pushed_under_the_skip_policy() -> None:
    skip = Periodic("*/5 * * * *", "reports", name="skip", missed="skip")
    assert plan_slot(skip, last_pushed=None, started=at(21, 7), now=at(21, 7)) == (None, 0)
    # A slot reached after the start is pushed, even when the loop wakes late.
    assert plan_slot(skip, last_pushed=None, started=at(21, 7), now=at(21, 10, 3)) == (
        at(21, 10),
        0,
    )


def test_a_slot_already_handled_is_not_planned_again() -> None:
    assert plan_slot(FIVE, last_pushed=at(21, 5), started=at(21, 0), now=at(21, 9)) == (None, 0)


def test_the_task_of_a_slot_runs_at_the_slot_with_its_key_and_computed_args() -> None:
    p = Periodic("0 * * * *", "reports", lambda slot: {"hour": slot.hour}, name="hourly")
    t = p.task_for(at(21, 0))
    assert (t.run_at, t.idempotency_key, t.args) == (
        at(21, 0),
        "periodic:hourly:2026-12-01T21:00:00+00:00",
        {"hour": 21},
    )


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"schedule": "every 5 minutes"}, "schedule 'every 5 minutes' is not a cron expression"),
        ({"schedule": "61 * * * *"}, "schedule '61 * * * *' is not a cron expression"),
        ({"name": ""}, "periodic name must be a non-empty string"),
        ({"name": "x" * 1100}, "idempotency_key"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"missed": "all"}, "missed must be 'latest' or 'skip', got 'all'"),
    ],
)
def test_an_invalid_periodic_is_refused_when_built(
    kwargs: dict[str, object], fragment: str
) -> None:
    values: dict[str, object] = {"schedule": "* * * * *", "queue": "q", **kwargs}
    with pytest.raises(InvalidArgument) as info:
        Periodic(**values)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_two_schedules_sharing_a_name_on_one_queue_are_refused() -> None:
    a = Periodic("* * * * *", "q")
    b = Periodic("0 * * * *", "q")
    with pytest.raises(InvalidArgument, match="share the name 'q'"):
        PeriodicService("postgresql://unused", [a, b])


def test_the_decorator_attaches_schedules_that_take_the_workers_queue() -> None:
    @periodic("0 3 * * *", args={"full": True}, name="nightly")
    @periodic("*/10 * * * *", queue="elsewhere")
    def handler(args: dict[str, bool]) -> None:
        pass

    found = periodic_of(handler, "backups")
    assert sorted((p.schedule, p.queue, p.key_name) for p in found) == [
        ("*/10 * * * *", "elsewhere", "elsewhere"),
        ("0 3 * * *", "backups", "nightly"),
    ]


def test_two_services_push_a_slot_once_and_the_second_sees_it_pushed(migrated_db: str) -> None:
    clock = [at(21, 7)]

    async def go() -> tuple[int, int, int, int]:
        first = PeriodicService(migrated_db, [FIVE], clock=lambda: clock[0])
        second = PeriodicService(migrated_db, [FIVE], clock=lambda: clock[0])
        upcoming = await first.tick(at(21, 7))
        await second.tick(at(21, 7))
        clock[0] = at(21, 10, 1)
        await second.tick(at(21, 7))
        await first.tick(at(21, 7))
        await first._close()
        await second._close()
        assert upcoming == at(21, 10)
        return (
            first.stats.pushed,
            first.stats.already_pushed,
            second.stats.pushed,
            second.stats.already_pushed,
        )

    assert asyncio.run(go()) == (1, 1, 1, 1)
    found = rows(
        migrated_db, "SELECT run_at, idempotency_key, job FROM apalis.jobs ORDER BY run_at"
    )
    assert [(r["run_at"], r["idempotency_key"]) for r in found] == [
        (at(21, 5), "periodic:five:2026-12-01T21:05:00+00:00"),
        (at(21, 10), "periodic:five:2026-12-01T21:10:00+00:00"),
    ]
    assert json.loads(found[0]["job"]) == {"kind": "r"}


def test_three_processes_push_each_second_of_ten_exactly_once(migrated_db: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, REPO])}
    script = os.path.join(TESTS_DIR, "periodic_support.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, migrated_db, "10"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
    stats = [json.loads(out) for out, _ in outputs]
    found = rows(
        migrated_db,
        "SELECT run_at, idempotency_key FROM apalis.jobs WHERE job_type = 'ticks' ORDER BY run_at",
    )
    slots = [r["run_at"] for r in found]
    # Every second from the first slot to the last, none missing, none twice.
    assert slots == [slots[0] + timedelta(seconds=i) for i in range(len(slots))]
    assert 10 <= len(slots) <= 14
    assert [r["idempotency_key"] for r in found] == [slot_key("tick", s) for s in slots]
    # Each push was made by one process; the others found it pushed.
    assert sum(s["pushed"] for s in stats) == len(slots)
    assert sum(s["already_pushed"] for s in stats) >= len(slots)
    assert sum(s["errors"] for s in stats) == 0
