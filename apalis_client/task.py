"""The typed task a producer pushes: arguments plus the scheduling fields of apalis.jobs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar, Final, Generic, NewType, TypeVar

from pydantic import ConfigDict, JsonValue, PydanticUserError, TypeAdapter, ValidationError
from ulid import ULID

from apalis_client import limits
from apalis_client.errors import InvalidArgument

Args = TypeVar("Args")

TaskId = NewType("TaskId", str)
"""A task id: a ULID in its canonical form (26 characters, upper-case Crockford base32)."""


# Crockford's base32 two digits at a time: ten bits index one of 1,024 pairs. (base64's
# b32encode is written in Python, a loop over 5-byte chunks, and cost most of a push's own
# time on Python 3.11.)
_DIGITS: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS: Final = tuple(a + b for a in _DIGITS for b in _DIGITS)
_RANDOM_BITS: Final = 80
_RANDOM_MAX: Final = (1 << _RANDOM_BITS) - 1
# The last id's (milliseconds, random part, the 10 digits of those milliseconds): ids minted in
# one millisecond count up from a random start, as python-ulid's ULID() does, so a process's
# ids sort in the order minted, and share their time digits.
_last = (0, 0, "")
_lock = threading.Lock()


def _forget_last() -> None:
    global _last
    # A forked child draws its own random start rather than count on with its parent.
    _last = (0, 0, "")


os.register_at_fork(after_in_child=_forget_last)


def _time_digits(ms: int) -> str:
    # 48 bits as 10 digits (50 bits, the first two zero).
    p = _PAIRS
    return (
        p[ms >> 40]
        + p[(ms >> 30) & 1023]
        + p[(ms >> 20) & 1023]
        + p[(ms >> 10) & 1023]
        + p[ms & 1023]
    )


def new_task_id() -> TaskId:
    """A fresh ULID task id, as a Rust producer mints one: 48 bits of Unix milliseconds, then
    80 bits random (counting up within a millisecond), as 26 upper-case Crockford base32 digits.
    """
    global _last
    ms = time.time_ns() // 1_000_000
    with _lock:
        last_ms, last_random, prefix = _last
        if ms <= last_ms and last_random < _RANDOM_MAX:
            # The same millisecond (or the clock stepped back): count up.
            ms, random = last_ms, last_random + 1
        else:
            if ms <= last_ms:  # the count ran out: borrow the next millisecond
                ms = last_ms + 1
            random = int.from_bytes(os.urandom(10), "big")
            prefix = _time_digits(ms)
        _last = (ms, random, prefix)
    p = _PAIRS
    return TaskId(
        prefix
        + p[random >> 70]
        + p[(random >> 60) & 1023]
        + p[(random >> 50) & 1023]
        + p[(random >> 40) & 1023]
        + p[(random >> 30) & 1023]
        + p[(random >> 20) & 1023]
        + p[(random >> 10) & 1023]
        + p[random & 1023]
    )


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


_UNSET: Any = object()
_METADATA: TypeAdapter[dict[str, JsonValue]] = TypeAdapter(dict[str, JsonValue])
# Task[X] -> its subclass checking args as X, made once per X.
_TYPED: dict[object, type[Task[Any]]] = {}


def _args_adapter(tp: Any) -> TypeAdapter[Any] | None:
    """A validator for arguments of type ``tp``, or None to take any value as given."""
    if tp is Any or isinstance(tp, TypeVar):
        return None
    try:
        return TypeAdapter(tp, config=ConfigDict(arbitrary_types_allowed=True))
    except PydanticUserError:
        # Models, dataclasses and TypedDicts carry their own config and refuse another.
        return TypeAdapter(tp)


class Task(Generic[Args]):
    """One task to push: ``args`` plus id, schedule, priority, retry budget, metadata and key.

    Defaults are a Rust producer's: a fresh ULID id, run_at now (whole seconds), priority 0,
    max_attempts 5, metadata ``{}``, no idempotency key. Every field is checked when the
    task is built, so an invalid one raises :class:`InvalidArgument` before any SQL runs.
    ``Task[X](args=...)`` also validates ``args`` as an ``X`` (pydantic, so a dict becomes a
    model). Immutable: :meth:`replace` makes a changed copy.

    A slotted object of a few dozen bytes beside its id and arguments, the defaults shared
    rather than copied, so a list of 100,000 tasks costs little more than their arguments.
    """

    __slots__ = (
        "_args",
        "_id_given",
        "_idempotency_key",
        "_max_attempts",
        "_metadata",
        "_priority",
        "_run_at",
        "_task_id",
    )
    _adapter: ClassVar[TypeAdapter[Any] | None] = None

    _args: Args
    _task_id: TaskId
    _id_given: bool
    _run_at: datetime
    _priority: int
    _max_attempts: int
    _metadata: dict[str, JsonValue] | None
    _idempotency_key: str | None

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
        adapter = self._adapter
        if adapter is not None:
            try:
                args = adapter.validate_python(args)
            except ValidationError as exc:
                raise InvalidArgument(f"invalid task: {exc}") from None
        self._args = args
        if task_id is None:
            self._task_id = new_task_id()
            self._id_given = False
        else:
            self._task_id = check_task_id(task_id)
            self._id_given = True
        self._run_at = now_whole_seconds() if run_at is None else limits.check_run_at(run_at)
        # The common values skip their checks: they are known to pass.
        self._priority = (
            0 if priority == 0 and type(priority) is int else limits.check_priority(priority)
        )
        self._max_attempts = (
            5
            if max_attempts == 5 and type(max_attempts) is int
            else limits.check_max_attempts(max_attempts)
        )
        self._metadata = None if metadata is None else _metadata(metadata)
        self._idempotency_key = (
            None if idempotency_key is None else limits.check_idempotency_key(idempotency_key)
        )

    def __class_getitem__(cls, item: Any) -> Any:
        # Task[X] is a subclass that validates args as X, as a pydantic generic model's was.
        if cls is not Task:
            raise TypeError(f"{cls.__name__} is already parametrized")
        typed = _TYPED.get(item)
        if typed is None:
            adapter = _args_adapter(item)
            if adapter is None:
                return cls
            name = getattr(item, "__name__", None) or repr(item)
            typed = type(f"Task[{name}]", (cls,), {"__slots__": (), "_adapter": adapter})
            _TYPED[item] = typed
        return typed

    @property
    def args(self) -> Args:
        """The task's arguments, encoded by the storage's codec when pushed."""
        return self._args

    @property
    def task_id(self) -> TaskId:
        """The task's id: the one given, else a fresh ULID."""
        return self._task_id

    @property
    def run_at(self) -> datetime:
        """When the task becomes claimable (aware, UTC)."""
        return self._run_at

    @property
    def priority(self) -> int:
        """Larger runs sooner among tasks due at once (0..2**31-1)."""
        return self._priority

    @property
    def max_attempts(self) -> int:
        """How many attempts the task gets (1..2**31-1)."""
        return self._max_attempts

    @property
    def metadata(self) -> dict[str, JsonValue]:
        """The task's metadata (a copy: the task is immutable)."""
        return {} if self._metadata is None else dict(self._metadata)

    @property
    def idempotency_key(self) -> str | None:
        """The key that makes a second push of it on the queue a conflict, or None."""
        return self._idempotency_key

    @property
    def id_given(self) -> bool:
        """Whether the id came from the caller (it may then be taken) rather than minted."""
        return self._id_given

    def replace(self, **changes: Any) -> Task[Args]:
        """A copy of this task with ``changes`` (keyword arguments as for the constructor),
        checked as a new task is. The id stays unless changed."""
        fields: dict[str, Any] = {
            "args": self._args,
            "task_id": self._task_id if self._id_given else _UNSET,
            "run_at": self._run_at,
            "priority": self._priority,
            "max_attempts": self._max_attempts,
            "metadata": self._metadata,
            "idempotency_key": self._idempotency_key,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise InvalidArgument(f"Task has no field {sorted(unknown)[0]!r}")
        fields.update(changes)
        if fields["task_id"] is _UNSET:
            fields["task_id"] = self._task_id
            copy = type(self)(**fields)
            copy._id_given = False  # still the minted one
            return copy
        return type(self)(**fields)

    def _fields(self) -> tuple[Any, ...]:
        return (
            self._args,
            self._task_id,
            self._run_at,
            self._priority,
            self._max_attempts,
            self._metadata or None,
            self._idempotency_key,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Task(args={self._args!r}, task_id={self._task_id!r}, run_at={self._run_at!r}, "
            f"priority={self._priority}, max_attempts={self._max_attempts}, "
            f"metadata={self.metadata!r}, idempotency_key={self._idempotency_key!r})"
        )


def _metadata(metadata: object) -> dict[str, JsonValue] | None:
    # None for empty: the tasks without metadata share no dict at all.
    if type(metadata) is dict and not metadata:
        return None
    try:
        checked = _METADATA.validate_python(metadata)
    except ValidationError as exc:
        raise InvalidArgument(f"invalid task: metadata: {exc}") from None
    return checked or None
