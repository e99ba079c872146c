"""Worker events: the fan-out, and the stats observer counting what WorkerStats reports."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import pytest

from apalis_client.events import (
    MAX_STALE_IDS,
    Fanout,
    FinalStatus,
    Observer,
    StatsObserver,
    TaskRef,
    combine,
)
from apalis_client.worker import WorkerStats


@dataclass(frozen=True)
class Ref:
    id: str
    job_type: str = "q"
    attempts: int = 0
    max_attempts: int = 5


class Recorder(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def started(self, task: TaskRef) -> None:
        self.seen.append(("started", task.id))

    def finished(self, task: TaskRef, status: FinalStatus, duration: float) -> None:
        self.seen.append(("finished", status))


class Broken(Observer):
    def started(self, task: TaskRef) -> None:
        raise RuntimeError("observer bug")


def test_a_failing_observer_is_logged_and_the_others_still_see_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, last = Recorder(), Recorder()
    fan = Fanout([first, Broken(), last])
    with caplog.at_level(logging.ERROR, logger="apalis_client.events"):
        fan.started(Ref("A"))
        fan.finished(Ref("A"), "Done", 0.1)
    assert first.seen == last.seen == [("started", "A"), ("finished", "Done")]
    assert "failed on started" in caplog.text
    assert "observer bug" in caplog.text


def test_combine_passes_a_single_observer_through_and_fans_out_several() -> None:
    one = Recorder()
    assert combine([one]) is one
    both = combine([one, Recorder()])
    assert isinstance(both, Fanout)
    assert len(both.observers) == 2


def test_the_base_observer_ignores_every_event() -> None:
    obs = Observer()
    obs.claimed("w", "q", [Ref("A")])
    obs.started(Ref("A"))
    obs.finished(Ref("A"), "Done", 0.0)
    obs.stale_ack(Ref("A"), 0.0)
    obs.lease_lost("w", "q")
    obs.reconnected("w", "main")


def test_the_stats_observer_counts_every_workerstats_field_but_the_runs_own() -> None:
    stats = StatsObserver()
    produced = set(stats.worker_stats_fields())
    declared = {f.name for f in dataclasses.fields(WorkerStats)}
    assert produced == declared - {"seconds", "worker_id", "queues"}  # the run's own


def feed(obs: Observer) -> None:
    obs.claimed("w", "q", [Ref("A"), Ref("B"), Ref("C"), Ref("D"), Ref("E")])
    for name, status in (("A", "Done"), ("B", "Done"), ("C", "Failed"), ("D", "Killed")):
        obs.started(Ref(name))
        obs.finished(Ref(name), status, 0.02)  # type: ignore[arg-type]
    obs.started(Ref("E"))
    obs.stale_ack(Ref("E"), 1.5)
    obs.lease_lost("w", "q")
    obs.reconnected("w", "heartbeat")


def test_the_stats_observer_builds_the_workerstats_of_a_run() -> None:
    stats = StatsObserver()
    feed(stats)
    built = WorkerStats(**stats.worker_stats_fields(), worker_id="w")  # type: ignore[arg-type]
    assert (built.claimed, built.done, built.failed, built.killed, built.stale) == (5, 2, 1, 1, 1)
    assert built.acked == 4
    assert built.lease_lost is True
    assert built.stale_ids == ["E"]
    assert stats.reconnects == 1


def test_the_stats_observer_keeps_the_first_stale_ids_and_counts_them_all() -> None:
    stats = StatsObserver()
    for i in range(MAX_STALE_IDS + 5):
        stats.stale_ack(Ref(f"T{i}"), 0.0)
    assert stats.stale == MAX_STALE_IDS + 5
    assert len(stats.stale_ids) == MAX_STALE_IDS
    assert stats.stale_ids[0] == "T0"
