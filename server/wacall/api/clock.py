"""wacall.testing.v1.ClockService: move the manual clock (serve --clock manual)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from wacall_client.testing.v1 import clock_pb2 as pb
from wacall_client.testing.v1 import clock_pb2_grpc

from wacall.api.errors import Context, abort_bad_request, duration_value
from wacall.api.messages import timestamp
from wacall.clock import ManualClock
from wacall.store import Store, Tx, from_micros, to_micros

MAX_ADVANCE = timedelta(days=3650)
# The manual clock's position, kept in the store so that a restart resumes the same simulated time.
POSITION_SETTING = "manual_clock_position"


async def restore_position(clock: ManualClock, store: Store) -> None:
    """Resume the clock where the last run left it: its saved position, or, if later (a run killed during an
    Advance, a database older than saved positions), when the newest event was recorded. Never backwards."""

    def read(tx: Tx) -> list[datetime]:
        saved = tx.setting(POSITION_SETTING)
        latest = tx.latest_recorded_at()
        return [*([from_micros(int(saved))] if saved else []), *([latest] if latest else [])]

    known = await store.transaction(read)
    if known:
        clock.restore(max(known))


async def save_position(store: Store, position: datetime) -> None:
    await store.transaction(lambda tx: tx.save_setting(POSITION_SETTING, str(to_micros(position))))


class ClockServicer(clock_pb2_grpc.ClockServiceServicer):
    def __init__(
        self,
        clock: ManualClock,
        settle: Callable[[], Awaitable[None]],
        save_position: Callable[[datetime], Awaitable[None]],
    ) -> None:
        """`settle` waits for what became due to be delivered; `save_position` keeps the clock's position (the
        service's store, the standalone simulator's state file) before an Advance is answered."""
        self.clock = clock
        self.settle = settle
        self.save_position = save_position
        # One advance at a time: interleaved advances would wake sleepers out of time order.
        self._lock = asyncio.Lock()

    async def Now(self, request: pb.NowRequest, context: Context) -> pb.NowResponse:
        return pb.NowResponse(now=timestamp(self.clock.now()))

    async def Advance(self, request: pb.AdvanceRequest, context: Context) -> pb.NowResponse:
        delta = await duration_value(context, request.duration, "duration")
        if delta < timedelta(0):
            await abort_bad_request(context, "duration", "the clock only moves forward")
        if delta > MAX_ADVANCE:
            await abort_bad_request(context, "duration", "at most 3650 days at a time")
        async with self._lock:
            now = await self.clock.advance(delta)
            # Kept before the answer: a restart after an acknowledged Advance resumes from here.
            await self.save_position(now)
            # Whatever became due (simulated users answering, say) has been delivered when Advance returns.
            await self.settle()
        return pb.NowResponse(now=timestamp(now))
