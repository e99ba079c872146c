"""Background services: started from one list, supervised, stopped together."""

from __future__ import annotations

import asyncio
import logging

import pytest

from apalis_client._services import Service, ServiceGroup


def test_every_service_starts_and_all_stop_together_running_their_cleanup() -> None:
    events: list[str] = []

    def looping(name: str) -> Service:
        async def run() -> None:
            events.append(f"{name} started")
            try:
                await asyncio.Event().wait()
            finally:
                events.append(f"{name} cleaned up")

        return Service(name, run)

    async def go() -> list[str]:
        group = ServiceGroup([looping("heartbeat"), looping("listen"), looping("purge")])
        async with group:
            await asyncio.sleep(0.01)
            running = group.running
        assert group.running == []
        return running

    assert asyncio.run(go()) == ["heartbeat", "listen", "purge"]
    assert sorted(events) == sorted(
        f"{n} {what}"
        for n in ("heartbeat", "listen", "purge")
        for what in ("started", "cleaned up")
    )


def test_a_failing_service_is_restarted_after_its_delay(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"lost {calls}")
        await asyncio.Event().wait()

    async def go() -> ServiceGroup:
        group = ServiceGroup([Service("sweep", flaky, restart_delay=0.01)])
        async with group:
            await asyncio.sleep(0.2)
            assert group.running == ["sweep"]
        return group

    with caplog.at_level(logging.ERROR, logger="apalis_client.worker"):
        group = asyncio.run(go())
    assert calls == 3
    assert group.restarts == {"sweep": 2}
    assert "service sweep failed: lost 1; restarting in 0.01s" in caplog.text


def test_a_critical_service_that_fails_is_reported_and_not_restarted() -> None:
    reported: list[tuple[str, str]] = []

    async def heartbeat() -> None:
        raise PermissionError("lease lost")

    async def other() -> None:
        await asyncio.Event().wait()

    async def go() -> ServiceGroup:
        group = ServiceGroup(
            [Service("heartbeat", heartbeat, critical=True), Service("listen", other)],
            on_failure=lambda svc, exc: reported.append((svc.name, str(exc))),
        )
        async with group:
            await asyncio.sleep(0.05)
            assert group.running == ["listen"]
        return group

    group = asyncio.run(go())
    assert reported == [("heartbeat", "lease lost")]
    assert isinstance(group.failures["heartbeat"], PermissionError)


def test_a_service_that_returns_ends_without_a_restart() -> None:
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    async def go() -> None:
        async with ServiceGroup([Service("migrate-once", once)]) as group:
            await asyncio.sleep(0.05)
            assert group.running == []

    asyncio.run(go())
    assert runs == 1


def test_two_services_with_one_name_are_refused() -> None:
    async def run() -> None:
        return None

    with pytest.raises(ValueError, match=r"unique, got \['heartbeat'\]"):
        ServiceGroup([Service("heartbeat", run), Service("heartbeat", run)])
