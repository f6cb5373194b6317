"""wacall.testing.v1.ClockService: move the manual clock (serve --clock manual)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

from wacall_client.testing.v1 import clock_pb2 as pb
from wacall_client.testing.v1 import clock_pb2_grpc

from wacall.api_errors import Context, abort_bad_request, duration_value
from wacall.api_messages import timestamp
from wacall.clock import ManualClock

MAX_ADVANCE = timedelta(days=3650)


class ClockServicer(clock_pb2_grpc.ClockServiceServicer):
    def __init__(self, clock: ManualClock, settle: Callable[[], Awaitable[None]]) -> None:
        self.clock = clock
        self.settle = settle
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
            # Whatever became due (simulated users answering, say) has been delivered when Advance returns.
            await self.settle()
        return pb.NowResponse(now=timestamp(now))
