"""Task payload codecs: JSON byte-compatible with Rust serde_json by default, or your own."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Protocol, TypeVar

import pydantic_core
from pydantic import BaseModel

from apalis_client.errors import InvalidArgument
from apalis_client.limits import (
    MAX_JSON_INT,
    MAX_PAYLOAD_DEPTH,
    MIN_JSON_INT,
    check_json_int,
    too_deep,
)

T_contra = TypeVar("T_contra", contravariant=True)

# A JSON string token, or what pydantic writes differently from serde_json outside strings:
# pydantic prints 1e16 as `1e+16` where serde_json (ryu) prints `1e16`, and with
# inf_nan_mode="constants" a non-finite float shows up as a bare NaN / Infinity token.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|(e\+)|(NaN|-?Infinity)')


class Codec(Protocol[T_contra]):
    """Turns task arguments into the bytes stored in ``apalis.jobs.job``."""

    def encode(self, value: T_contra, /) -> bytes:
        """Encode ``value``; raise :class:`~apalis_client.errors.InvalidArgument` if it cannot."""
        ...


def _fix(match: re.Match[bytes]) -> bytes:
    if match.group(2) is not None:
        raise InvalidArgument(
            "cannot encode a non-finite float (NaN or infinity) as JSON: serde_json would "
            "write null, which a Rust f64 field does not accept"
        )
    return b"e" if match.group(1) is not None else match.group(0)


_BYTES = (bytes, bytearray, memoryview)
_LEAVES = frozenset({str, int, float, bool, type(None)})


def _inspect(value: Any) -> bool:
    """Whether bytes sit anywhere inside ``value`` (dicts, lists, tuples, models, dataclasses).

    On the way it refuses what a Rust serde_json decoder would: arrays/objects nested past its
    recursion limit and integers outside i64/u64, so the push fails before any SQL.
    """
    # Dispatch on the exact type first: payloads are mostly flat dicts of scalars, and this
    # walk runs for every task of a batch.
    found = False
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is int:
            if not MIN_JSON_INT <= item <= MAX_JSON_INT:
                check_json_int(item)
            continue
        if kind in _LEAVES:
            continue
        children: Any
        if kind is dict:
            children = item.values()
        elif kind is list or kind is tuple:
            children = item
        elif isinstance(item, _BYTES):
            found = True  # written as an array of numbers: one level more
            children = ()
        elif isinstance(item, BaseModel):
            children = item.__dict__.values()
        elif isinstance(item, (dict, list, tuple)):
            children = item.values() if isinstance(item, dict) else item
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            children = [getattr(item, f.name) for f in dataclasses.fields(item)]
        elif isinstance(item, int) and not isinstance(item, bool):
            check_json_int(item)  # an IntEnum or other int subclass, written as the number
            continue
        else:
            continue
        depth += 1
        if depth > MAX_PAYLOAD_DEPTH:
            raise too_deep(depth)
        stack.extend((child, depth) for child in children)
    return found


_FLAT_LEAVES = frozenset({str, bool, type(None)})


def _flat(value: dict[Any, Any]) -> bool:
    """Whether ``value`` holds only str, bool, None and i64/u64-range ints: the usual payload,
    which pydantic writes exactly as serde_json does, with nothing to check or rewrite."""
    for item in value.values():
        kind = type(item)
        if kind is int:
            if not MIN_JSON_INT <= item <= MAX_JSON_INT:
                return False
        elif kind not in _FLAT_LEAVES:
            return False
    return True


def _bytes_as_arrays(value: Any) -> Any:
    """``value`` with every bytes object turned into a list of ints, as serde writes Vec<u8>."""
    if isinstance(value, _BYTES):
        return list(bytes(value))
    if isinstance(value, BaseModel):
        return _bytes_as_arrays(value.model_dump(mode="python", by_alias=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _bytes_as_arrays(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _bytes_as_arrays(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bytes_as_arrays(v) for v in value]
    return value


def to_json(value: Any) -> bytes:
    """Compact JSON bytes exactly as serde_json writes the same value (non-ASCII kept as UTF-8).

    Accepts pydantic models (by alias), dataclasses, dicts, lists, tuples, str, int, float,
    bool, None and whatever else pydantic can serialize (datetime, UUID, Enum, ...). Object
    keys keep their order (insertion order; declaration order for models and dataclasses),
    which is what serde does for structs. Bytes inside the value become arrays of numbers,
    serde's form of ``Vec<u8>`` (pydantic alone would write them as a string). NaN and
    infinities are rejected, and so is what serde_json would refuse to read back: nesting
    of 128 arrays/objects or more, integers outside i64/u64.
    """
    # A flat dict of plain scalars (the usual payload) has nothing to find or rewrite.
    flat = type(value) is dict and _flat(value)
    if not flat and _inspect(value):
        value = _bytes_as_arrays(value)
    try:
        out = pydantic_core.to_json(value, by_alias=True, inf_nan_mode="constants")
    except pydantic_core.PydanticSerializationError as exc:
        raise InvalidArgument(f"cannot encode a {type(value).__name__} as JSON: {exc}") from exc
    if not flat and (b"e+" in out or b"NaN" in out or b"Infinity" in out):
        out = _TOKENS.sub(_fix, out)
    return out


class JsonCodec:
    """The default codec: serde_json-compatible JSON; ``bytes`` pass through unchanged.

    Passing ``bytes`` (or ``bytearray`` / ``memoryview``) stores them as they are, for
    payloads you encoded yourself.
    """

    def encode(self, value: object, /) -> bytes:
        """Encode ``value`` as JSON bytes, or return raw bytes unchanged."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        return to_json(value)


JSON: JsonCodec = JsonCodec()
"""The shared default codec instance."""
