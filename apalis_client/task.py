"""The typed task a producer pushes: arguments plus the scheduling fields of apalis.jobs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Generic, NewType, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator
from ulid import ULID

from apalis_client import limits
from apalis_client.errors import InvalidArgument

Args = TypeVar("Args")

TaskId = NewType("TaskId", str)
"""A task id: a ULID in its canonical form (26 characters, upper-case Crockford base32)."""


def new_task_id() -> TaskId:
    """A fresh ULID task id, as a Rust producer mints one."""
    return TaskId(str(ULID()))


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


def now_whole_seconds() -> datetime:
    """The current UTC time truncated to whole seconds: a Rust producer's default run_at."""
    return datetime.now(timezone.utc).replace(microsecond=0)


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
