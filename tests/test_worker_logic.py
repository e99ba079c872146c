"""The I/O-free rules of the worker: results, truncation, backoff, NOTIFY payloads, handlers."""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import pydantic
import pytest

from apalis_client.worker import WorkerConfig
from apalis_client.worker_logic import (
    MAX_ERROR_BYTES,
    TRUNCATION_MARKER,
    Backoff,
    InsertEvent,
    Outcome,
    acks_go_first,
    claim_size,
    exception_message,
    inspect_handler,
    outcome_for_exception,
    outcome_for_return,
    parse_notify_payload,
    truncate_message,
)


class Email(pydantic.BaseModel):
    to: str
    n: int


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_success_result_wraps_value_in_ok() -> None:
    assert Outcome.success({"a": 1}) == Outcome("Done", {"Ok": {"a": 1}})


def test_success_result_of_none_is_ok_null() -> None:
    assert Outcome.success(None).result_json() == '{"Ok":null}'


def test_success_result_converts_models_and_dates_to_json() -> None:
    value = {"e": Email(to="a", n=1), "d": datetime.date(2024, 5, 1), "p": Point(1, 2)}
    assert Outcome.success(value).result == {
        "Ok": {"e": {"to": "a", "n": 1}, "d": "2024-05-01", "p": {"x": 1, "y": 2}}
    }


def test_unserializable_return_value_is_a_failed_attempt() -> None:
    outcome = outcome_for_return(object())
    assert outcome.status == "Failed"
    assert "no JSON form" in outcome.result["Err"]


def test_exception_becomes_err_with_type_and_message() -> None:
    outcome = outcome_for_exception(ValueError("bad input"))
    assert outcome == Outcome("Failed", {"Err": "ValueError: bad input"})


def test_exception_without_message_is_its_type_name() -> None:
    assert exception_message(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_kill_outcome_is_killed_with_err() -> None:
    assert Outcome.kill("nope") == Outcome("Killed", {"Err": "nope"})


def test_short_message_is_not_truncated() -> None:
    assert truncate_message("x" * MAX_ERROR_BYTES) == "x" * MAX_ERROR_BYTES


def test_long_message_is_cut_to_8_kib_with_marker() -> None:
    cut = truncate_message("y" * 20_000)
    assert cut == "y" * 8192 + TRUNCATION_MARKER
    assert TRUNCATION_MARKER == "…[truncated]"


def test_truncation_never_splits_a_multibyte_character() -> None:
    cut = truncate_message("a" + "é" * 5000)  # 1 + 10000 bytes; byte 8192 splits an é
    body = cut.removesuffix(TRUNCATION_MARKER)
    assert len(body.encode()) <= MAX_ERROR_BYTES
    assert body == "a" + "é" * 4095


def test_failure_outcome_applies_the_cap() -> None:
    outcome = Outcome.failure("z" * 9000)
    assert outcome.result["Err"].endswith(TRUNCATION_MARKER)
    assert json.loads(outcome.result_json()) == outcome.result


def test_notify_payload_with_ids() -> None:
    event = parse_notify_payload('{"job_type": "emails", "ids": ["01A", "01B"]}')
    assert event == InsertEvent("emails", ("01A", "01B"))


def test_notify_payload_older_single_id_form() -> None:
    assert parse_notify_payload('{"job_type": "emails", "id": "01A"}') == InsertEvent(
        "emails", ("01A",)
    )


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        "[]",
        '{"ids": ["x"]}',
        '{"job_type": 1, "id": "x"}',
        '{"job_type": "q"}',
        '{"job_type": "q", "ids": [1]}',
    ],
)
def test_unknown_notify_payloads_are_ignored(payload: str) -> None:
    assert parse_notify_payload(payload) is None


def test_backoff_doubles_while_idle_up_to_cap_and_resets() -> None:
    b = Backoff(0.1, 0.5)
    assert [b.idle() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert b.reset() == 0.1
    assert b.idle() == 0.1


def test_backoff_cap_below_base_uses_base() -> None:
    b = Backoff(5.0, 1.0)
    assert [b.idle(), b.idle()] == [5.0, 5.0]


def test_acks_ride_with_a_full_claim() -> None:
    assert not acks_go_first(free=10, full=10, in_flight=0, completed=10)
    assert not acks_go_first(free=10, full=10, in_flight=30, completed=5)


def test_acks_go_first_while_a_claim_would_be_short_and_handlers_still_run() -> None:
    assert acks_go_first(free=9, full=10, in_flight=1, completed=9)
    assert acks_go_first(free=4, full=10, in_flight=6, completed=4)
    assert acks_go_first(free=0, full=1, in_flight=1, completed=1)


def test_acks_wait_for_the_claim_when_nothing_is_running_or_nothing_to_ack() -> None:
    assert not acks_go_first(free=2, full=10, in_flight=0, completed=2)
    assert not acks_go_first(free=2, full=10, in_flight=8, completed=0)


def test_claim_size_is_free_slots_capped_at_ten() -> None:
    assert claim_size(concurrency=50, in_flight=0, batch_size=None) == 10
    assert claim_size(concurrency=4, in_flight=1, batch_size=None) == 3
    assert claim_size(concurrency=4, in_flight=4, batch_size=None) == 0
    assert claim_size(concurrency=50, in_flight=0, batch_size=25) == 25


def test_handler_type_comes_from_the_annotation() -> None:
    def handle(email: Email) -> None:
        return None

    spec = inspect_handler(handle)
    assert spec.arg_type is Email
    assert not spec.is_async
    assert spec.decode(b'{"to": "x", "n": 3}') == Email(to="x", n=3)


def test_async_handler_is_detected() -> None:
    async def handle(p: Point) -> None:
        return None

    spec = inspect_handler(handle)
    assert spec.is_async
    assert spec.decode(b'{"x": 1, "y": 2}') == Point(1, 2)


def test_unannotated_handler_gets_plain_json() -> None:
    spec = inspect_handler(lambda args: args)
    assert spec.arg_type is Any
    assert spec.decode(b'[1, "a", null]') == [1, "a", None]


def test_payload_that_does_not_decode_raises_a_readable_error() -> None:
    def handle(email: Email) -> None:
        return None

    with pytest.raises(ValueError, match=r"do not decode as Email: n: .*payload starts"):
        inspect_handler(handle).decode(b'{"to": "x", "n": "many"}')


def test_non_json_payload_raises_a_readable_error() -> None:
    with pytest.raises(ValueError, match="do not decode as int"):
        inspect_handler(_int_handler).decode(b"\x00\x01")


def _int_handler(n: int) -> int:
    return n


def test_handler_needing_two_arguments_is_refused() -> None:
    def handle(a: int, b: int) -> None:
        return None

    with pytest.raises(TypeError, match="exactly one required positional parameter"):
        inspect_handler(handle)


def test_callable_object_handler_uses_its_call_annotation() -> None:
    class Handler:
        async def __call__(self, e: Email) -> str:
            return e.to

    spec = inspect_handler(Handler())
    assert spec.arg_type is Email
    assert spec.is_async


def test_worker_config_defaults_are_the_rust_runtime_ones() -> None:
    c = WorkerConfig()
    assert (c.poll_interval, c.heartbeat_interval, c.orphan_threshold) == (0.1, 30.0, 300.0)
    assert (c.max_poll_interval, c.batch_size, c.listen) == (5.0, None, True)


def test_worker_config_refuses_threshold_not_above_heartbeat() -> None:
    from apalis_client.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="orphan_threshold"):
        WorkerConfig(heartbeat_interval=5, orphan_threshold=5)
