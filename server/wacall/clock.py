"""Injected time. Rule logic takes `now` from a Clock; tests and demos drive a ManualClock."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, delay: timedelta) -> None:
        """Wait `delay` of this clock's time."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, delay: timedelta) -> None:
        await asyncio.sleep(max(delay.total_seconds(), 0.0))


class ManualClock:
    """Time that moves only when told to. Sleepers wake, in deadline order, when `advance` passes their deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        # Whole seconds: webhook timestamps have no finer resolution.
        self._now = start or datetime.now(UTC).replace(microsecond=0)
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        return self._now

    def restore(self, position: datetime) -> None:
        """Resume where a previous run left off (at start-up, before anything sleeps on this clock)."""
        if self._sleepers:
            raise RuntimeError("restore the manual clock before anything sleeps on it")
        self._now = position

    async def sleep(self, delay: timedelta) -> None:
        if delay <= timedelta(0):
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + delay, next(self._order), future))
        await future

    async def advance(self, delta: timedelta) -> datetime:
        """Move forward by `delta`, stopping at each sleeper's deadline so work runs at the time it was due."""
        if delta < timedelta(0):
            raise ValueError("the manual clock only moves forward")
        target = self._now + delta
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            # Let the woken task run (and possibly schedule more sleeps) before time moves on.
            for _ in range(5):
                await asyncio.sleep(0)
        self._now = target
        return self._now
