"""The typed task a producer pushes: arguments plus the scheduling fields of apalis.jobs."""

from __future__ import annotations

import os
import threading
import time
from base64 import b32encode
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Final, Generic, NewType, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator
from ulid import ULID

from apalis_client import limits
from apalis_client.errors import InvalidArgument

Args = TypeVar("Args")

TaskId = NewType("TaskId", str)
"""A task id: a ULID in its canonical form (26 characters, upper-case Crockford base32)."""


# RFC 4648 base32 to Crockford's: the same 5-bit groups, another alphabet.
_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)
_RANDOM_BITS: Final = 80
# The last id's (milliseconds, random part): ids minted in one millisecond count up from a
# random start, as python-ulid's ULID() does, so a process's ids sort in the order minted.
_last = (0, 0)
_lock = threading.Lock()


def _forget_last() -> None:
    global _last
    _last = (0, 0)  # a forked child draws its own random start rather than count with its parent


os.register_at_fork(after_in_child=_forget_last)


def new_task_id() -> TaskId:
    """A fresh ULID task id, as a Rust producer mints one: 48 bits of Unix milliseconds, then
    80 bits random (counting up within a millisecond), as 26 upper-case Crockford base32 digits.
    """
    global _last
    ms = time.time_ns() // 1_000_000
    with _lock:
        last_ms, last_random = _last
        if ms <= last_ms:  # the same millisecond (or the clock stepped back): count up
            ms, random = last_ms, last_random + 1
            if random >> _RANDOM_BITS:
                ms, random = ms + 1, int.from_bytes(os.urandom(10), "big")
        else:
            random = int.from_bytes(os.urandom(10), "big")
        _last = (ms, random)
    # 160 bits (32 base32 digits, no padding): 30 zero bits, then the 128-bit ULID, so the
    # last 26 digits are the ULID's. One C call per step: python-ulid's ULID() costs about a
    # microsecond more, and a single push spends only a few dozen of its own.
    value = (ms << _RANDOM_BITS | random).to_bytes(20, "big")
    return TaskId(b32encode(value)[6:].translate(_CROCKFORD).decode())


def check_task_id(value: object) -> TaskId:
    """Return ``value`` (a ULID, or its string in any case) as a canonical task id."""
    if isinstance(value, ULID):
        return TaskId(str(value))
    if not isinstance(value, str):
        raise InvalidArgument(f"task_id must be a ULID or str, got {type(value).__name__}")
    try:
        # Rust workers parse the id as a ulid::Ulid, so anything else would be undecodable.
        return TaskId(str(ULID.from_str(value)))
    except ValueError as exc:
        raise InvalidArgument(f"task_id {value!r} is not a ULID: {exc}") from exc


# The last second's datetime: pushes within one second share one object (datetimes are
# immutable), which saves building it again and 48 bytes a task in a big batch.
_second: tuple[int, datetime] = (0, datetime.fromtimestamp(0, timezone.utc))


def now_whole_seconds() -> datetime:
    """The current UTC time truncated to whole seconds: a Rust producer's default run_at."""
    global _second
    now = int(time.time())
    second = _second
    if second[0] != now:
        second = _second = (now, datetime.fromtimestamp(now, timezone.utc))
    return second[1]


class Task(BaseModel, Generic[Args]):
    """One task to push: ``args`` plus id, schedule, priority, retry budget, metadata and key.

    Defaults are a Rust producer's: a fresh ULID id, run_at now (whole seconds), priority 0,
    max_attempts 5, metadata ``{}``, no idempotency key. Every field is checked when the
    task is built, so an invalid one raises :class:`InvalidArgument` before any SQL runs.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    args: Args
    task_id: TaskId = Field(default_factory=new_task_id)
    run_at: datetime = Field(default_factory=now_whole_seconds)
    priority: int = 0
    max_attempts: int = 5
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    idempotency_key: str | None = None

    def __init__(
        self,
        *,
        args: Args,
        task_id: str | ULID | None = None,
        run_at: datetime | int | float | None = None,
        priority: int = 0,
        max_attempts: int = 5,
        metadata: Mapping[str, JsonValue] | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        # An explicit signature so type checkers infer Args from ``args`` (Task(args=x)).
        data: dict[str, Any] = {
            "args": args,
            "priority": priority,
            "max_attempts": max_attempts,
            "idempotency_key": idempotency_key,
        }
        if task_id is not None:
            data["task_id"] = task_id
        if run_at is not None:
            data["run_at"] = run_at
        if metadata is not None:
            data["metadata"] = metadata
        try:
            super().__init__(**data)
        except ValidationError as exc:
            # Our own checks raise InvalidArgument inside pydantic; surface the first one as is.
            for error in exc.errors():
                cause = error.get("ctx", {}).get("error")
                if isinstance(cause, InvalidArgument):
                    raise cause from None
            raise InvalidArgument(f"invalid task: {exc}") from exc

    @field_validator("task_id", mode="plain")
    @classmethod
    def _task_id(cls, value: object) -> TaskId:
        return check_task_id(value)

    @field_validator("run_at", mode="plain")
    @classmethod
    def _run_at(cls, value: object) -> datetime:
        return limits.check_run_at(value)

    @field_validator("priority", mode="plain")
    @classmethod
    def _priority(cls, value: object) -> int:
        return limits.check_priority(value)

    @field_validator("max_attempts", mode="plain")
    @classmethod
    def _max_attempts(cls, value: object) -> int:
        return limits.check_max_attempts(value)

    @field_validator("idempotency_key", mode="plain")
    @classmethod
    def _idempotency_key(cls, value: object) -> str | None:
        return limits.check_idempotency_key(value)
