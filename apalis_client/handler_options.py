"""Per-handler settings (time limit, retry policy) attached to the handler function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from apalis_client.retry import RetryPolicy, as_policy
from apalis_client.timeouts import check_timeout, effective_timeout

__all__ = ["HandlerOptions", "ResolvedOptions", "handler_options", "options_of", "resolve"]

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__apalis_handler_options__"


@dataclass(frozen=True)
class HandlerOptions:
    """What a handler asks for; None leaves the Worker's default in place."""

    timeout: float | None = None
    retry: RetryPolicy | None = None


@dataclass(frozen=True)
class ResolvedOptions:
    """What a task of this handler runs under: its limit (None: none) and retry policy."""

    timeout: float | None
    retry: RetryPolicy


def handler_options(
    *,
    timeout: float | None = None,
    retry: RetryPolicy | Callable[[int], float] | float | None = None,
) -> Callable[[F], F]:
    """Decorate a handler with its own ``timeout`` (seconds) and/or ``retry`` policy.

    ``retry`` takes a policy, a callable ``attempt -> seconds`` or constant seconds.
    Values are checked here, at import time, not when the first task fails.
    """
    options = HandlerOptions(
        timeout=check_timeout("timeout", timeout),
        retry=None if retry is None else as_policy(retry),
    )

    def attach(func: F) -> F:
        setattr(func, _ATTR, options)
        return func

    return attach


def options_of(handler: Callable[..., Any]) -> HandlerOptions:
    """The options a handler was decorated with (all None if it was not)."""
    found = getattr(handler, _ATTR, None)
    return found if isinstance(found, HandlerOptions) else HandlerOptions()


def resolve(
    handler: Callable[..., Any],
    *,
    worker_timeout: float | None = None,
    worker_retry: RetryPolicy | Callable[[int], float] | float | None = None,
) -> ResolvedOptions:
    """The handler's options over the Worker's defaults (then the library's)."""
    own = options_of(handler)
    return ResolvedOptions(
        timeout=effective_timeout(own.timeout, check_timeout("timeout", worker_timeout)),
        retry=own.retry if own.retry is not None else as_policy(worker_retry),
    )
