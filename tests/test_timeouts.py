"""Time limits: which applies, the stored wording, the deadline tracker, handler options."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from apalis_client.errors import InvalidArgument
from apalis_client.handler_options import handler_options, options_of, resolve
from apalis_client.retry import DEFAULT_RETRY, ConstantBackoff
from apalis_client.timeouts import (
    Deadlines,
    ThreadSlots,
    check_timeout,
    effective_timeout,
    timeout_message,
)


def test_a_handler_limit_wins_over_the_worker_default() -> None:
    assert effective_timeout(2.0, 10.0) == 2.0
    assert effective_timeout(None, 10.0) == 10.0
    assert effective_timeout(None, None) is None


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan, "5", True])
def test_a_limit_must_be_positive_finite_seconds(bad: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_timeout("timeout", bad)  # type: ignore[arg-type]
    assert f"got {bad!r}" in str(info.value)


def test_the_async_message_names_the_limit_and_the_cancellation() -> None:
    assert timeout_message(1.5, is_async=True) == (
        "task timed out: the handler ran longer than its 1.5s limit and was cancelled"
    )


def test_the_sync_message_names_the_limit_and_the_discarded_result() -> None:
    text = timeout_message(30, is_async=False)
    assert "its 30s limit" in text
    assert "slot was freed" in text
    assert "later result is discarded" in text


def test_deadlines_expire_in_order_and_skip_discarded_keys() -> None:
    d: Deadlines[str] = Deadlines()
    d.add("a", started=100.0, limit=5)
    d.add("b", started=100.0, limit=1)
    d.add("c", started=100.0, limit=3)
    d.add("none", started=100.0, limit=None)
    assert len(d) == 3
    assert d.next_at() == 101.0
    d.discard("b")
    assert d.next_at() == 103.0
    assert d.expired(102.9) == []
    assert d.expired(105.0) == ["c", "a"]
    assert d.next_at() is None
    assert len(d) == 0


def test_a_key_added_again_keeps_only_its_latest_deadline() -> None:
    d: Deadlines[int] = Deadlines()
    d.add(1, started=0.0, limit=1)
    d.add(1, started=5.0, limit=1)
    assert d.expired(2.0) == []
    assert d.expired(6.0) == [1]


def test_handler_options_attach_to_the_function_and_resolve_over_worker_defaults() -> None:
    @handler_options(timeout=2, retry=5)
    def slow(args: dict[str, int]) -> None:
        pass

    def plain(args: dict[str, int]) -> None:
        pass

    assert options_of(slow).timeout == 2.0
    own = resolve(slow, worker_timeout=30, worker_retry=None)
    assert own.timeout == 2.0
    assert own.retry == ConstantBackoff(5.0)
    inherited = resolve(plain, worker_timeout=30, worker_retry=None)
    assert inherited.timeout == 30.0
    assert inherited.retry is DEFAULT_RETRY


def test_handler_options_check_values_when_decorating() -> None:
    with pytest.raises(InvalidArgument, match="timeout must be a finite number of seconds > 0"):
        handler_options(timeout=-3)


def test_a_timed_out_thread_frees_its_slot_while_spare_threads_remain() -> None:
    slots = ThreadSlots(concurrency=2)
    assert slots.pool_size == 4
    slots.start()
    slots.start()
    assert slots.free() == 0
    slots.abandon()  # timed out: its thread still runs the handler
    assert slots.free() == 1
    slots.start()
    slots.abandon()
    slots.start()
    slots.abandon()  # a third abandoned thread: one more than the two spare
    assert (slots.running, slots.abandoned, slots.free()) == (1, 3, 0)
    slots.abandoned_returned()
    assert slots.free() == 1


def test_a_real_pool_sized_by_thread_slots_runs_the_next_task_beside_a_stuck_one() -> None:
    slots = ThreadSlots(concurrency=1)
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=slots.pool_size) as pool:
        slots.start()
        stuck = pool.submit(release.wait, 10)
        slots.abandon()  # its limit passed; the thread cannot be stopped
        assert slots.free() == 1
        slots.start()
        nxt = pool.submit(lambda: "next task ran")
        assert nxt.result(timeout=5) == "next task ran"
        release.set()
        assert stuck.result(timeout=5) is True
