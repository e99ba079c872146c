"""Task payload codecs: JSON byte-compatible with Rust serde_json by default, or your own."""

from __future__ import annotations

import re
from typing import Any, Protocol, TypeVar

import pydantic_core

from apalis_client.errors import InvalidArgument

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


def to_json(value: Any) -> bytes:
    """Compact JSON bytes exactly as serde_json writes the same value (non-ASCII kept as UTF-8).

    Accepts pydantic models (by alias), dataclasses, dicts, lists, tuples, str, int, float,
    bool, None and whatever else pydantic can serialize (datetime, UUID, Enum, ...). Object
    keys keep their order (insertion order; declaration order for models and dataclasses),
    which is what serde does for structs. NaN and infinities are rejected.
    """
    try:
        out = pydantic_core.to_json(value, by_alias=True, inf_nan_mode="constants")
    except pydantic_core.PydanticSerializationError as exc:
        raise InvalidArgument(f"cannot encode a {type(value).__name__} as JSON: {exc}") from exc
    if b"e+" in out or b"NaN" in out or b"Infinity" in out:
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
