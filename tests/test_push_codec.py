"""Pure tests of the producer's codec, task model, caps and batch logic (no database)."""

from __future__ import annotations

import dataclasses
import enum
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from psycopg.pq import TransactionStatus
from pydantic import BaseModel, Field
from ulid import ULID

import apalis_client.task
from apalis_client import IdempotencyConflict, InvalidArgument, JsonCodec, Task
from apalis_client._push import (
    Plan,
    batch_of_args,
    batch_of_tasks,
    conflict_error,
    plan_for,
    type_check,
)
from apalis_client.codec import JSON, to_json
from apalis_client.errors import ConnectionFailed, DatabaseError, DuplicateTaskId
from apalis_client.task import _time_digits, new_task_id
from apalis_generated.models import FindConflictsRow


class Email(BaseModel):
    to: str
    retries_left: int = Field(alias="retriesLeft")
    cc: list[str] = []


@dataclasses.dataclass
class Point:
    y: float
    x: float


class Blob(BaseModel):
    name: str
    data: bytes
    parts: list[bytes] = []


class Wrapped(BaseModel):
    inner: Blob


@dataclasses.dataclass
class Packet:
    seq: int
    body: bytes


class Color(enum.Enum):
    RED = "Red"


# Expected bytes written out from serde_json's rules (ryu floats, compact separators,
# UTF-8 kept, only '"', '\\' and control characters escaped), not computed by this code.
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, b"null"),
        (True, b"true"),
        (False, b"false"),
        (0, b"0"),
        (-17, b"-17"),
        (2**64 - 1, b"18446744073709551615"),  # u64::MAX; one more is InvalidArgument
        (-(2**63), b"-9223372036854775808"),
        (1.0, b"1.0"),
        (-0.0, b"-0.0"),
        (0.1, b"0.1"),
        (123456.789, b"123456.789"),
        (1e15, b"1000000000000000.0"),
        (1e16, b"1e16"),
        (1.5e300, b"1.5e300"),
        (1e-5, b"0.00001"),
        (1e-7, b"1e-7"),
        (2.5e-10, b"2.5e-10"),
        ("plain", b'"plain"'),
        ("zoë ☃ 😀", '"zoë ☃ 😀"'.encode()),
        ('q"b\\s/', b'"q\\"b\\\\s/"'),
        ("\n\r\t\b\f\x01\x1f\x7f", b'"\\n\\r\\t\\b\\f\\u0001\\u001f\x7f"'),
        ("see e+5 NaN Infinity", b'"see e+5 NaN Infinity"'),
        ([], b"[]"),
        ([1, "a", None, [2.0]], b'[1,"a",null,[2.0]]'),
        ((1, 2), b"[1,2]"),
        ({}, b"{}"),
        ({"b": 1, "a": {"z": [1e16]}}, b'{"b":1,"a":{"z":[1e16]}}'),
        ({"e+": "e+1", "k": 1e20}, b'{"e+":"e+1","k":1e20}'),
        ({1: "int key"}, b'{"1":"int key"}'),
        # Flat dicts of plain scalars take a shorter path; the bytes must not change.
        (
            {"s": "zoë", "t": True, "f": False, "z": None, "hi": 2**64 - 1, "lo": -(2**63)},
            '{"s":"zoë","t":true,"f":false,"z":null,"hi":18446744073709551615,'
            '"lo":-9223372036854775808}'.encode(),
        ),
        ({"s": "see e+5 NaN -Infinity\n"}, b'{"s":"see e+5 NaN -Infinity\\n"}'),
        (Email(to="a@b.c", retriesLeft=2), b'{"to":"a@b.c","retriesLeft":2,"cc":[]}'),
        (Point(y=1.0, x=2.5), b'{"y":1.0,"x":2.5}'),
        (
            {"when": datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)},
            b'{"when":"2024-05-01T12:00:00Z"}',
        ),
        ({"id": uuid.UUID(int=1)}, b'{"id":"00000000-0000-0000-0000-000000000001"}'),
        (Color.RED, b'"Red"'),
        # serde writes Vec<u8> as an array of numbers, whatever the bytes are
        (b"ab", b"[97,98]"),
        ({"k": b"ab", "n": 1}, b'{"k":[97,98],"n":1}'),
        ([bytearray(b"\x00\xff"), (memoryview(b"\x7f"),)], b"[[0,255],[[127]]]"),
        (
            Blob(name="x", data=b"\xff\x00", parts=[b""]),
            b'{"name":"x","data":[255,0],"parts":[[]]}',
        ),
        (
            Wrapped(inner=Blob(name="y", data=b"a")),
            b'{"inner":{"name":"y","data":[97],"parts":[]}}',
        ),
        (Packet(seq=3, body=b"hi"), b'{"seq":3,"body":[104,105]}'),
    ],
    ids=repr,
)
def test_json_bytes_match_serde_json(value: Any, expected: bytes) -> None:
    assert to_json(value) == expected


@pytest.mark.parametrize("raw", [b'{"pre":"encoded"}', bytearray(b"\x00\xff"), memoryview(b"mv")])
def test_raw_bytes_pass_through_unchanged(raw: Any) -> None:
    assert JsonCodec().encode(raw) == bytes(raw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), [float("-inf")], {"x": float("nan")}])
def test_non_finite_floats_are_rejected(bad: Any) -> None:
    with pytest.raises(InvalidArgument, match="non-finite float"):
        to_json(bad)


def test_unserializable_value_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="cannot encode a object as JSON"):
        to_json(object())


def test_lone_surrogate_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="cannot encode a str"):
        to_json("\ud800")


def test_lone_surrogate_in_a_flat_dict_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="cannot encode a dict"):
        to_json({"s": "\ud800"})


@pytest.mark.parametrize("n", [2**64, -(2**63) - 1])
def test_out_of_range_int_in_a_flat_dict_is_rejected(n: int) -> None:
    with pytest.raises(InvalidArgument, match=f"JSON integer {n} is out of range"):
        to_json({"n": n})


def test_a_custom_codec_plugs_in() -> None:
    class Upper:
        def encode(self, value: str, /) -> bytes:
            return value.upper().encode()

    batch = batch_of_args("q", ["abc"], Upper())
    assert batch.jobs == [b"ABC"]


# ---- Task ----------------------------------------------------------------------------------


def test_task_defaults_are_a_rust_producers() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    task: Task[dict[str, int]] = Task(args={"a": 1})
    assert (task.priority, task.max_attempts, task.metadata, task.idempotency_key) == (
        0,
        5,
        {},
        None,
    )
    assert task.run_at.microsecond == 0 and task.run_at.tzinfo is not None
    assert before <= task.run_at <= datetime.now(timezone.utc)
    assert len(task.task_id) == 26 and str(ULID.from_str(task.task_id)) == task.task_id


def test_task_ids_differ() -> None:
    assert Task(args=1).task_id != Task(args=1).task_id


def test_fresh_ids_are_canonical_ulids_stamped_now_and_increasing() -> None:
    before = datetime.now(timezone.utc) - timedelta(milliseconds=1)
    ids = [new_task_id() for _ in range(5000)]  # many share a millisecond
    after = datetime.now(timezone.utc) + timedelta(milliseconds=1)
    assert all(str(ULID.from_str(i)) == i for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert before <= ULID.from_str(ids[0]).datetime <= ULID.from_str(ids[-1]).datetime <= after


def test_a_fresh_id_is_the_ulid_of_its_millisecond_and_random_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A later millisecond than now, so the next id counts up from this state.
    ms, random = int(time.time() * 1000) + 60_000, 0xFFFF_FFFF_FFFF_FFFF_FF00
    monkeypatch.setattr(apalis_client.task, "_last", (ms, random, _time_digits(ms)))
    assert new_task_id() == str(ULID.from_int(ms << 80 | (random + 1)))


def test_a_millisecond_whose_count_runs_out_moves_the_id_to_the_next_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ms = int(time.time() * 1000) + 60_000
    monkeypatch.setattr(apalis_client.task, "_last", (ms, (1 << 80) - 1, _time_digits(ms)))
    following = ULID.from_str(new_task_id())
    assert int(following) >> 80 == ms + 1
    assert following > ULID.from_int(ms << 80 | ((1 << 80) - 1))


def test_ids_minted_on_many_threads_are_distinct_and_increase_per_thread() -> None:
    minted: list[list[str]] = [[] for _ in range(4)]

    def mint(out: list[str]) -> None:
        out.extend(new_task_id() for _ in range(5000))

    threads = [threading.Thread(target=mint, args=(out,)) for out in minted]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(out == sorted(out) for out in minted)
    assert len({i for out in minted for i in out}) == 20_000


# Forks in a fresh interpreter: pytest's own process may hold threads, and a child of it that
# failed before os._exit would go on running the suite.
_FORK_SCRIPT = """
import os, time
import apalis_client.task as task
# A state a minute ahead, so parent and child would both count up from it, not from now.
ms = int(time.time() * 1000) + 60_000
task._last = (ms, 7, task._time_digits(ms))
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.close(read)
        os.write(write, " ".join(task.new_task_id() for _ in range(200)).encode())
    finally:
        os._exit(0)
os.close(write)
parents = [task.new_task_id() for _ in range(200)]
with os.fdopen(read, "rb") as pipe:
    child = pipe.read().decode()
os.waitpid(pid, 0)
print(" ".join(parents))
print(child)
"""


def test_a_forked_child_does_not_count_on_from_its_parents_last_id() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    parents, child = (set(line.split()) for line in done.stdout.splitlines())
    assert len(parents) == len(child) == 200
    assert not parents & child


def test_task_id_is_normalized_to_canonical_ulid() -> None:
    u = ULID()
    assert Task(args=1, task_id=str(u).lower()).task_id == str(u)
    assert Task(args=1, task_id=u).task_id == str(u)


def test_run_at_accepts_unix_seconds_and_other_zones() -> None:
    assert Task(args=1, run_at=1_700_000_000).run_at == datetime(
        2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc
    )
    plus2 = timezone(timedelta(hours=2))
    got = Task(args=1, run_at=datetime(2030, 1, 1, 2, 0, tzinfo=plus2)).run_at
    assert got == datetime(2030, 1, 1, tzinfo=timezone.utc) and got.tzinfo == timezone.utc


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"task_id": "not-a-ulid"}, "is not a ULID"),
        ({"task_id": 7}, "task_id must be a ULID or str"),
        ({"priority": True}, "priority must be an int, got bool"),
        ({"priority": "1"}, "priority must be an int, got str"),
        ({"max_attempts": 2**31}, "max_attempts 2147483648 is out of range"),
        ({"run_at": "2024-01-01"}, "run_at must be an aware datetime or unix seconds"),
        ({"run_at": float("nan")}, "run_at nan unix seconds is out of range"),
        ({"idempotency_key": ""}, "idempotency_key must not be empty"),
        ({"idempotency_key": "a\x00b"}, "contains a NUL character"),
        ({"metadata": ["not", "an", "object"]}, "invalid task"),
    ],
)
def test_invalid_task_fields_raise_invalid_argument(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        Task(args=1, **fields)


def test_typed_task_validates_its_args() -> None:
    # mypy rejects a dict for Task[Email]; at run time pydantic validates (and coerces) it.
    loose: Any = {"to": "x", "retriesLeft": 1}
    assert Task[Email](args=loose).args == Email(to="x", retriesLeft=1)
    with pytest.raises(InvalidArgument, match="invalid task"):
        Task[Email](args={"to": "x"})  # type: ignore[arg-type]


def test_a_task_is_immutable() -> None:
    task = Task(args=1)
    with pytest.raises(AttributeError):
        task.priority = 3  # type: ignore[misc]
    task.metadata["added"] = 1  # a copy: the task keeps its own
    assert task.metadata == {}


def test_replace_keeps_the_id_unless_changed_and_checks_the_changes() -> None:
    task = Task(args=1, idempotency_key="k")
    again = task.replace(idempotency_key="k2", priority=4)
    assert (again.task_id, again.idempotency_key, again.priority) == (task.task_id, "k2", 4)
    assert not again.id_given and task.replace(task_id=str(ULID())).id_given
    with pytest.raises(InvalidArgument, match="priority -1 is out of range"):
        task.replace(priority=-1)
    with pytest.raises(InvalidArgument, match="Task has no field 'prio'"):
        task.replace(prio=4)


def test_tasks_built_in_one_second_share_their_defaults_and_keep_no_dict() -> None:
    # What keeps a list of 100,000 tasks small: slots, and one run_at object per second.
    tasks = [Task(args=i) for i in range(3)]
    assert not hasattr(tasks[0], "__dict__")
    if tasks[0].run_at == tasks[-1].run_at:
        assert tasks[0].run_at is tasks[-1].run_at


def test_tasks_compare_by_their_fields() -> None:
    tid = str(ULID())
    assert Task(args=[1], task_id=tid, run_at=0) == Task(args=[1], task_id=tid, run_at=0)
    assert Task(args=[1], task_id=tid, run_at=0) != Task(args=[2], task_id=tid, run_at=0)


def test_typed_task_of_a_dataclass_validates_its_args() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    assert Task[Point](args={"x": 1}).args == Point(x=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="invalid task"):
        Task[Point](args={"x": "one"})  # type: ignore[arg-type]


# ---- batch logic -------------------------------------------------------------------------------


def test_batch_of_args_uses_defaults_and_one_run_at() -> None:
    batch = batch_of_args("q", [1, "a"], JSON)
    assert batch.jobs == [b"1", b'"a"']
    assert batch.max_attempts == [5, 5] and batch.priorities == [0, 0]
    assert batch.metadata == ["{}", "{}"] and batch.idempotency_keys == [None, None]
    assert batch.run_ats[0] == batch.run_ats[1]


def test_batch_metadata_is_compact_json() -> None:
    batch = batch_of_tasks("q", [Task(args=1, metadata={"reason": "t", "n": 7})], JSON)
    assert batch.metadata == ['{"reason":"t","n":7}']


def test_duplicate_ids_in_one_batch_are_rejected() -> None:
    tid = str(ULID())
    with pytest.raises(DuplicateTaskId):
        batch_of_tasks("q", [Task(args=1, task_id=tid), Task(args=2, task_id=tid)], JSON)


def test_non_task_items_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="take Task objects"):
        batch_of_tasks("q", [{"a": 1}], JSON)  # type: ignore[list-item]


def _found(*rows: tuple[str, str | None]) -> list[FindConflictsRow]:
    return [FindConflictsRow(id=i, held_key=k) for i, k in rows]


def test_conflict_error_names_held_keys_in_the_order_given_with_their_holders() -> None:
    batch = batch_of_tasks(
        "q", [Task(args=n, idempotency_key=k) for n, k in enumerate("abc")], JSON
    )
    error = conflict_error(batch, _found(("ID-C", "c"), ("ID-A", "a")))
    assert isinstance(error, IdempotencyConflict)
    assert (error.queue, error.keys, error.existing) == (
        "q",
        ["a", "c"],
        {"a": "ID-A", "c": "ID-C"},
    )


def test_conflict_error_prefers_a_held_key_over_a_taken_id() -> None:
    tid = str(ULID())
    batch = batch_of_tasks("q", [Task(args=1, task_id=tid, idempotency_key="k")], JSON)
    error = conflict_error(batch, _found((tid, None), ("OTHER", "k")))
    assert isinstance(error, IdempotencyConflict) and error.existing == {"k": "OTHER"}


def test_conflict_error_is_a_duplicate_id_when_no_key_is_held() -> None:
    tid = str(ULID())
    batch = batch_of_tasks("q", [Task(args=1), Task(args=2, task_id=tid)], JSON)
    error = conflict_error(batch, _found((tid, None)))
    assert isinstance(error, DuplicateTaskId) and error.task_id == tid


def test_conflict_error_with_nothing_found_says_what_was_inserted() -> None:
    batch = batch_of_args("q", [1, 2], JSON)
    error = conflict_error(batch, [])
    assert isinstance(error, DatabaseError)
    assert "INSERT of 2 task(s) collided" in str(error) and "nothing was written" in str(error)


def test_idempotency_conflict_without_holders_still_names_its_keys() -> None:
    error = IdempotencyConflict("q", [f"k{n}" for n in range(12)])
    assert error.existing == {}
    assert str(error).startswith("idempotency conflict on queue 'q': keys 'k0' already taken")
    assert "and 2 more; the whole batch was undone" in str(error)


class _Model(BaseModel):
    to: str


@pytest.mark.parametrize(
    ("tp", "ok", "wrong"),
    [
        (_Model, _Model(to="a"), {"to": "a"}),
        (int, 1, "1"),
        (float, 1, "1.0"),
        (dict[str, int], {"a": 1}, [("a", 1)]),
        (int | None, None, 1.5),
        (str | _Model, "x", 42),
    ],
    ids=repr,
)
def test_type_check_accepts_its_type_and_refuses_others(tp: Any, ok: Any, wrong: Any) -> None:
    check = type_check(tp)
    assert check is not None and check(ok) and not check(wrong)


@pytest.mark.parametrize("tp", [Any, object], ids=repr)
def test_type_check_of_an_open_type_accepts_everything(tp: Any) -> None:
    assert type_check(tp) is None


def test_a_batch_sharing_its_columns_goes_as_uniform_params() -> None:
    batch = batch_of_args("q", [1, 2], JSON)
    assert batch.uniform() == {
        "queue": "q",
        "max_attempts": 5,
        "run_at": batch.run_ats[0],
        "priority": 0,
        "metadata": "{}",
        "jobs": [b"1", b"2"],
        "ids": batch.ids,
        "idempotency_keys": [None, None],
    }


@pytest.mark.parametrize(
    "second",
    [
        {"priority": 1},
        {"max_attempts": 4},
        {"metadata": {"a": 1}},
        {"run_at": datetime(2030, 1, 1, tzinfo=timezone.utc)},
    ],
    ids=repr,
)
def test_a_batch_whose_rows_differ_has_no_uniform_params(second: dict[str, Any]) -> None:
    first = Task(args=1, run_at=datetime(2029, 1, 1, tzinfo=timezone.utc))
    other = Task(args=2, **{"run_at": first.run_at, **second})
    assert batch_of_tasks("q", [first, other], JSON).uniform() is None


@pytest.mark.parametrize(
    ("status", "autocommit", "plan"),
    [
        (TransactionStatus.IDLE, True, Plan.AUTOCOMMIT),
        (TransactionStatus.INTRANS, True, Plan.IN_TRANSACTION),
        (TransactionStatus.INTRANS, False, Plan.IN_TRANSACTION),
        (TransactionStatus.IDLE, False, Plan.OPENS_TRANSACTION),
        (TransactionStatus.ACTIVE, False, Plan.SYNC_FIRST),
    ],
)
def test_plan_follows_connection_state(
    status: TransactionStatus, autocommit: bool, plan: Plan
) -> None:
    assert plan_for(status, autocommit) is plan


def test_only_a_batch_with_a_key_or_a_chosen_id_may_collide() -> None:
    assert not batch_of_args("q", [1, 2], JSON).may_collide
    assert not batch_of_tasks("q", [Task(args=1), Task(args=2)], JSON).may_collide
    assert batch_of_tasks("q", [Task(args=1), Task(args=2, idempotency_key="k")], JSON).may_collide
    assert batch_of_tasks("q", [Task(args=1, task_id=str(ULID()))], JSON).may_collide


def test_plan_refuses_an_aborted_transaction() -> None:
    with pytest.raises(InvalidArgument, match="roll it back"):
        plan_for(TransactionStatus.INERROR, False)


def test_plan_calls_a_broken_connection_a_connection_failure() -> None:
    with pytest.raises(ConnectionFailed, match="broken or closed; open a new one") as info:
        plan_for(TransactionStatus.UNKNOWN, False)
    assert not info.value.outcome_unknown
