"""The I/O-free rules of the worker runtime: results, errors, backoff, NOTIFY payloads, handlers.

Everything here is plain functions and small value types so the sync and async
shells (``worker_ops``) and the runner (``worker``) share one copy of the rules.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError, to_jsonable_python

#: The channel the ``notify_workers`` trigger publishes on.
NOTIFY_CHANNEL = "apalis::job::insert"
#: ``{"Err": message}`` is cut to this many UTF-8 bytes (then the marker is appended).
MAX_ERROR_BYTES = 8 * 1024
TRUNCATION_MARKER = "…[truncated]"
#: The largest batch a Rust worker claims at once; the runner claims no more per statement.
MAX_CLAIM_BATCH = 10
#: What the Rust backend writes into ``apalis.workers.storage_name``; the Python worker uses
#: the same storage, so it says the same.
STORAGE_NAME = "PostgresStorage"
#: The message the stale sweep and a takeover write (kept here for callers that compare
#: results); the Rust crate writes the same.
HEARTBEAT_TIMEOUT_MESSAGE = "Re-enqueued due to worker heartbeat timeout."
#: The message a release (graceful stop) and a reconciliation write on a charged row.
RELEASE_MESSAGE = "Re-enqueued because the worker released its registration."
#: Most rows (and most stale workers) one stale sweep recovers, as in the Rust crate.
SWEEP_ROW_LIMIT = 1000

OutcomeStatus = Literal["Done", "Failed", "Killed"]


@dataclass(frozen=True)
class Outcome:
    """What to record for a finished attempt: a status and the ``last_result`` JSON.

    ``Failed`` becomes ``Killed`` in the database once the task's attempts run
    out (the ack statement decides, so the rule lives in one place).
    """

    status: OutcomeStatus
    result: Any

    @classmethod
    def success(cls, value: Any = None) -> Outcome:
        """A successful attempt: status Done, ``{"Ok": value}`` (value made JSON-compatible)."""
        return cls("Done", success_result(value))

    @classmethod
    def failure(cls, message: str) -> Outcome:
        """A failed attempt, retried while attempts remain: ``{"Err": message}`` (capped)."""
        return cls("Failed", error_result(message))

    @classmethod
    def kill(cls, message: str) -> Outcome:
        """Give up on the task now, whatever attempts remain: status Killed, ``{"Err": ...}``."""
        return cls("Killed", error_result(message))

    def result_json(self) -> str:
        """The ``last_result`` as JSON text (the form ``ack_batch`` takes)."""
        return json.dumps(self.result, ensure_ascii=False, separators=(",", ":"))


def truncate_message(message: str, limit: int = MAX_ERROR_BYTES) -> str:
    """Cut ``message`` to ``limit`` UTF-8 bytes on a character boundary, marking the cut."""
    raw = message.encode("utf-8")
    if len(raw) <= limit:
        return message
    # errors="ignore" drops a multi-byte character split by the cut.
    return raw[:limit].decode("utf-8", errors="ignore") + TRUNCATION_MARKER


def error_result(message: str) -> dict[str, str]:
    """``{"Err": message}`` with the contract's 8 KiB cap."""
    return {"Err": truncate_message(message)}


def success_result(value: Any) -> dict[str, Any]:
    """``{"Ok": value}`` with ``value`` converted to plain JSON (pydantic models, dates…).

    Raises TypeError when the value has no JSON form.
    """
    try:
        plain = to_jsonable_python(value)
    except PydanticSerializationError as exc:
        raise TypeError(f"handler returned a value with no JSON form: {exc}") from exc
    return {"Ok": plain}


def exception_message(exc: BaseException) -> str:
    """The text stored for a handler exception: ``TypeName: message``."""
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def outcome_for_exception(exc: BaseException) -> Outcome:
    """A handler exception is a failed attempt (retried while attempts remain)."""
    return Outcome.failure(exception_message(exc))


def outcome_for_return(value: Any) -> Outcome:
    """A handler's return value is a success, unless it cannot be stored as JSON."""
    try:
        return Outcome.success(value)
    except TypeError as exc:
        # Retrying would produce the same unserializable value: fail the attempt clearly.
        return Outcome.failure(str(exc))


@dataclass(frozen=True)
class InsertEvent:
    """A parsed ``apalis::job::insert`` notification."""

    job_type: str
    ids: tuple[str, ...]


def parse_notify_payload(payload: str) -> InsertEvent | None:
    """Parse both payload forms (``{"job_type", "ids": [...]}`` and ``{"job_type", "id"}``).

    Returns None for anything else, so a stray NOTIFY never stops a worker.
    """
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    job_type = data.get("job_type")
    if not isinstance(job_type, str):
        return None
    ids = data.get("ids")
    if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        return InsertEvent(job_type, tuple(ids))
    one = data.get("id")
    if isinstance(one, str):
        return InsertEvent(job_type, (one,))
    return None


@dataclass
class Backoff:
    """Idle polling delay: ``base`` after work was found, doubling while idle, up to ``cap``."""

    base: float
    cap: float
    current: float = 0.0

    def __post_init__(self) -> None:
        self.cap = max(self.cap, self.base)
        self.current = self.base

    def reset(self) -> float:
        """Work was found: poll again soon."""
        self.current = self.base
        return self.current

    def idle(self) -> float:
        """Nothing was claimable: return the delay to wait now, and lengthen the next one."""
        delay = self.current
        self.current = min(self.current * 2, self.cap)
        return delay


def claim_size(*, concurrency: int, in_flight: int, batch_size: int | None) -> int:
    """How many tasks to claim now: the free slots, capped by ``batch_size`` (default 10)."""
    cap = batch_size if batch_size is not None else MAX_CLAIM_BATCH
    return max(0, min(concurrency - in_flight, cap))


def acks_go_first(*, free: int, full: int, in_flight: int, completed: int) -> bool:
    """Whether to send the waiting acks on their own before claiming, not with the claim.

    The acks ride with the next claim (one round trip) when that claim takes a full batch.
    While handlers are still running and the claim would be smaller, the acks go first:
    the running handlers finish meanwhile and join a fuller claim. Thread-pool handlers
    finish a few at a time, so without this they would be claimed for in twos and fives.
    """
    return in_flight > 0 and completed > 0 and free < full


@dataclass(frozen=True)
class HandlerSpec:
    """What the runner needs to know about a handler: how to decode its argument, sync or async."""

    func: Callable[..., Any]
    arg_type: Any
    is_async: bool
    adapter: TypeAdapter[Any]

    def decode(self, payload: bytes) -> Any:
        """Decode the task's JSON bytes into the handler's declared argument type.

        Raises ValueError with a readable message when the payload does not fit.
        """
        try:
            return self.adapter.validate_json(payload)
        except pydantic.ValidationError as exc:
            raise ValueError(
                f"task arguments do not decode as {type_name(self.arg_type)}: "
                f"{_short_errors(exc)}; payload starts {payload[:200]!r}"
            ) from exc


def type_name(tp: Any) -> str:
    """A readable name for a type annotation."""
    if tp is Any:
        return "Any"
    if isinstance(tp, type):
        return tp.__qualname__
    return str(tp).replace("typing.", "")


def _short_errors(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {err.get('msg', '')}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def inspect_handler(handler: Callable[..., Any]) -> HandlerSpec:
    """Find the handler's argument type (its first parameter's annotation) and its kind.

    The handler takes the decoded task arguments as its one required parameter;
    an unannotated parameter receives the plain JSON value.
    """
    if not callable(handler):
        raise TypeError(f"handler must be callable, got {handler!r}")
    target = inspect.unwrap(handler)
    call = target if inspect.isroutine(target) else getattr(target, "__call__", target)  # noqa: B004
    try:
        sig = inspect.signature(handler)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot read the signature of handler {handler!r}: {exc}") from exc
    params: Sequence[inspect.Parameter] = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    required_others = [
        p
        for p in list(sig.parameters.values())[1:]
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if not params or required_others:
        raise TypeError(
            f"handler {getattr(handler, '__qualname__', handler)!r} must take exactly one "
            "required positional parameter (the task arguments)"
        )
    first = params[0]
    arg_type: Any = Any
    if first.annotation is not first.empty:
        try:
            hints = typing.get_type_hints(call, include_extras=True)
        except Exception:  # a forward reference that does not resolve: fall back to raw
            hints = {}
        arg_type = hints.get(first.name, first.annotation)
        if isinstance(arg_type, str):
            raise TypeError(
                f"cannot resolve the annotation {arg_type!r} of handler parameter {first.name!r}"
            )
    is_async = any(inspect.iscoroutinefunction(f) for f in (handler, target, call))
    return HandlerSpec(
        func=handler, arg_type=arg_type, is_async=is_async, adapter=TypeAdapter(arg_type)
    )
