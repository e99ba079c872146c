"""The caps of CONTRACT.md and the checks that enforce them before any SQL runs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Final

from apalis_client.errors import InvalidArgument

MAX_QUEUE_NAME_BYTES: Final = 255
MAX_PAYLOAD_BYTES: Final = 1024 * 1024
MAX_METADATA_BYTES: Final = 8 * 1024
MAX_IDEMPOTENCY_KEY_BYTES: Final = 1024
# The columns are int4.
MAX_INT4: Final = 2**31 - 1
# A Rust producer holds run_at as u64 seconds since the epoch, so nothing before 1970 can come
# from one; Python's datetime ends at year 9999, well inside PostgreSQL's timestamptz range.
MIN_RUN_AT: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_RUN_AT: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
MIN_RUN_AT_SECONDS: Final = 0
MAX_RUN_AT_SECONDS: Final = int(MAX_RUN_AT.timestamp())
# serde_json's default recursion limit is 128: a document whose arrays/objects nest 128 deep
# is refused ("recursion limit exceeded"), 127 is read. A Rust worker decodes payloads with it.
SERDE_RECURSION_LIMIT: Final = 128
MAX_PAYLOAD_DEPTH: Final = SERDE_RECURSION_LIMIT - 1
# serde_json reads integers as i64 or u64; anything outside both cannot be a Rust integer.
MIN_JSON_INT: Final = -(2**63)
MAX_JSON_INT: Final = 2**64 - 1


def _show(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _utf8(what: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{what} {_show(value)} is not valid UTF-8: {exc.reason}") from exc


def _text(what: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str, got {type(value).__name__}")
    size = len(_utf8(what, value))
    if size > limit:
        raise InvalidArgument(f"{what} {_show(value)} is {size} bytes; the limit is {limit} bytes")
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; say so here rather than as a driver error.
        raise InvalidArgument(f"{what} {_show(value)} contains a NUL character")
    return value


def check_queue(queue: object) -> str:
    """Return ``queue`` if it is a valid queue name: non-empty, at most 255 UTF-8 bytes."""
    name = _text("queue name", queue, MAX_QUEUE_NAME_BYTES)
    if not name:
        raise InvalidArgument("queue name must not be empty")
    return name


def check_worker_id(worker_id: object) -> str:
    """Return ``worker_id`` if it is valid: non-empty, at most 255 UTF-8 bytes (as a queue name)."""
    name = _text("worker id", worker_id, MAX_QUEUE_NAME_BYTES)
    if not name:
        raise InvalidArgument("worker id must not be empty")
    return name


def check_idempotency_key(key: object) -> str | None:
    """Return ``key`` if it is None or a non-empty str of at most 1024 UTF-8 bytes."""
    if key is None:
        return None
    checked = _text("idempotency_key", key, MAX_IDEMPOTENCY_KEY_BYTES)
    if not checked:
        raise InvalidArgument("idempotency_key must not be empty (use None for no key)")
    return checked


def check_payload(payload: bytes) -> bytes:
    """Return ``payload`` if it is at most 1 MiB."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidArgument(
            f"encoded payload is {len(payload)} bytes; "
            f"the limit is {MAX_PAYLOAD_BYTES} bytes (1 MiB)"
        )
    return payload


def check_metadata_json(text: str) -> str:
    """Return serialized metadata ``text`` if it is at most 8 KiB and jsonb can store it."""
    size = len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"metadata is {size} bytes serialized; the limit is {MAX_METADATA_BYTES} bytes (8 KiB)"
        )
    if "\\u0000" in text:
        raise InvalidArgument("metadata contains a NUL character, which jsonb cannot store")
    return check_json_depth(text, "metadata")


def _int(what: str, value: object) -> int:
    # bool is an int subclass; True as a priority is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{what} must be an int, got {type(value).__name__}")
    return value


def check_priority(priority: object) -> int:
    """Return ``priority`` if it is an int in 0..2**31-1 (larger runs sooner)."""
    value = _int("priority", priority)
    if not 0 <= value <= MAX_INT4:
        raise InvalidArgument(
            f"priority {value} is out of range: it must be >= 0 and <= {MAX_INT4}"
        )
    return value


def check_max_attempts(max_attempts: object) -> int:
    """Return ``max_attempts`` if it is an int in 1..2**31-1."""
    value = _int("max_attempts", max_attempts)
    if not 1 <= value <= MAX_INT4:
        raise InvalidArgument(
            f"max_attempts {value} is out of range: it must be >= 1 and <= {MAX_INT4}"
        )
    return value


def check_run_at(run_at: object) -> datetime:
    """Return ``run_at`` as an aware UTC datetime; accepts aware datetimes and unix seconds."""
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise InvalidArgument(
                f"run_at {run_at.isoformat()} is a naive datetime; pass an aware one "
                "(e.g. datetime.now(timezone.utc)) or unix seconds"
            )
        try:
            when = run_at.astimezone(timezone.utc)
        except OverflowError:
            # Within a day of year 1 or 9999, the UTC instant is outside what datetime holds.
            raise InvalidArgument(
                f"run_at {run_at.isoformat()} is out of range: it must be between "
                f"{MIN_RUN_AT.isoformat()} and {MAX_RUN_AT.isoformat()}"
            ) from None
        if not MIN_RUN_AT <= when <= MAX_RUN_AT:
            raise InvalidArgument(
                f"run_at {when.isoformat()} is out of range: it must be between "
                f"{MIN_RUN_AT.isoformat()} and {MAX_RUN_AT.isoformat()}"
            )
        return when
    if isinstance(run_at, (int, float)) and not isinstance(run_at, bool):
        if not MIN_RUN_AT_SECONDS <= run_at <= MAX_RUN_AT_SECONDS:  # also rejects NaN
            raise InvalidArgument(
                f"run_at {run_at} unix seconds is out of range: it must be between "
                f"{MIN_RUN_AT_SECONDS} and {MAX_RUN_AT_SECONDS}"
            )
        return datetime.fromtimestamp(run_at, timezone.utc)
    raise InvalidArgument(
        f"run_at must be an aware datetime or unix seconds, got {type(run_at).__name__}"
    )


def too_deep(depth: int) -> InvalidArgument:
    """The error for a payload whose arrays/objects nest ``depth`` levels deep."""
    return InvalidArgument(
        f"payload nests arrays/objects {depth} levels deep; the limit is {MAX_PAYLOAD_DEPTH} "
        f"(a Rust serde_json decoder refuses {SERDE_RECURSION_LIMIT} or more: its recursion limit)"
    )


def check_json_int(value: int) -> int:
    """Return ``value`` if a Rust serde_json decoder can read it: within i64 or u64."""
    if not MIN_JSON_INT <= value <= MAX_JSON_INT:
        raise InvalidArgument(
            f"JSON integer {value} is out of range: serde_json reads integers between "
            f"{MIN_JSON_INT} (i64::MIN) and {MAX_JSON_INT} (u64::MAX)"
        )
    return value


def check_json_depth(text: str, what: str = "metadata") -> str:
    """Return serialized JSON ``text`` if its arrays/objects nest less than serde_json's limit."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > MAX_PAYLOAD_DEPTH:
        raise InvalidArgument(
            f"{what} nests arrays/objects {deepest} levels deep; the limit is "
            f"{MAX_PAYLOAD_DEPTH} (a Rust serde_json decoder refuses {SERDE_RECURSION_LIMIT} "
            "or more: its recursion limit)"
        )
    return text
