"""Background services of a worker (heartbeat, sweep, purge, periodic, LISTEN): one list.

Each service is a coroutine function that runs until cancelled. A :class:`ServiceGroup`
starts them all, restarts one that raises (after its ``restart_delay``), reports one
marked ``critical`` that fails to the group's ``on_failure`` instead, and stops them all
together: cancelled, then awaited, none left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

log = logging.getLogger("apalis_client.worker")

__all__ = ["Service", "ServiceGroup"]


@dataclass(frozen=True)
class Service:
    """A named background loop.

    - ``run``: the loop; returning ends the service (no restart), raising restarts it.
    - ``restart_delay``: seconds before a restart after an exception (None: no restart).
    - ``critical``: an exception ends it and calls the group's ``on_failure`` (e.g. the
      heartbeat's lost lease: the worker must stop claiming).
    """

    name: str
    run: Callable[[], Awaitable[None]]
    restart_delay: float | None = 1.0
    critical: bool = False


@dataclass
class ServiceGroup:
    """Starts, supervises and stops a list of services together."""

    services: Sequence[Service]
    on_failure: Callable[[Service, BaseException], None] | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [s.name for s in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"service names must be unique, got {dupes} more than once")

    @property
    def running(self) -> list[str]:
        """Names of the services whose loop has not ended."""
        return [t.get_name() for t in self._tasks if not t.done()]

    def start(self) -> None:
        """Start every service on the running loop (once)."""
        if self._tasks:
            raise RuntimeError("the services were started already")
        for svc in self.services:
            self._tasks.append(asyncio.create_task(self._supervise(svc), name=svc.name))

    async def _supervise(self, svc: Service) -> None:
        while True:
            try:
                await svc.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if svc.critical or svc.restart_delay is None:
                    log.error("service %s failed: %s", svc.name, exc, exc_info=True)
                    self.failures[svc.name] = exc
                    if self.on_failure is not None:
                        self.on_failure(svc, exc)
                    return
                self.restarts[svc.name] = self.restarts.get(svc.name, 0) + 1
                log.error(
                    "service %s failed: %s; restarting in %gs",
                    svc.name,
                    exc,
                    svc.restart_delay,
                    exc_info=True,
                )
                await asyncio.sleep(svc.restart_delay)

    async def stop(self) -> None:
        """Cancel every service and wait until each has finished its cleanup."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> ServiceGroup:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
