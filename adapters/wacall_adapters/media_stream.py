"""`media_stream`: a program speaks with the user over the CallMedia gRPC stream (20 ms PCM16 frames both ways).

The service side only buffers: frames from the program go into a latency-aware queue the WhatsApp leg plays from
(`QueueSource`): silence when the program is quiet; before the leg connects only the newest frame is kept; a
backlog that stands for a whole second (a program catching up after a stall) is dropped down to the frame due next;
at most 500 ms wait at once, the oldest dropped beyond that. A program that writes 20 ms frames in real time, or
chunks of up to 500 ms in real time, loses nothing; one that writes ahead of real time loses the oldest audio, so
the user never hears the program later than it speaks. Frames from the user go to every attached listener's
bounded queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from wacall_client.v1 import calling_pb2 as pb

from wacall.fields import positive_duration
from wacall.media.tracks import QueueSource
from wacall_adapters.base import AudioStream, CallLeg, MediaAdapter, stop_task
from wacall_adapters.routes import MAX_CALL_LENGTH, InboundOptions, RoutePlan, RouteSpec, ServerFiles

Listener = Callable[[bytes], None]


class MediaStreamAdapter(MediaAdapter):
    def __init__(self, *, max_duration: timedelta | None = None) -> None:
        self.max_duration = max_duration
        self.outgoing = QueueSource(max_frames=25)
        self._listeners: list[Listener] = []
        self._leg: CallLeg | None = None
        self._timer: asyncio.Task[None] | None = None
        self.is_connected = asyncio.Event()
        self.ended = asyncio.Event()

    async def attach(self, leg: CallLeg) -> None:
        self._leg = leg
        leg.play(self.outgoing)
        leg.listen(self._fan_out)

    def _fan_out(self, frame: bytes) -> None:
        for listener in list(self._listeners):
            listener(frame)

    def audio_stream(self) -> AudioStream:
        return self

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def send(self, frame: bytes) -> None:
        self.outgoing.push(frame)

    async def hangup(self, reason: str) -> None:
        if self._leg is not None:
            await self._leg.hangup(reason)

    async def connected(self) -> None:
        self.is_connected.set()
        if self.max_duration is not None and self._timer is None and self._leg is not None:
            self._timer = asyncio.create_task(self._limit(self._leg, self.max_duration))

    @staticmethod
    async def _limit(leg: CallLeg, limit: timedelta) -> None:
        await asyncio.sleep(limit.total_seconds())
        await leg.hangup("media_stream reached max_duration")

    async def close(self) -> None:
        self.ended.set()
        self._listeners.clear()
        timer, self._timer = self._timer, None
        await stop_task(timer)


# --- the route: `media_stream` in wacall.v1.Route ------------------------------------------------------------------


async def plan(route: pb.MediaStreamRoute, files: ServerFiles) -> RoutePlan:
    limit = (
        positive_duration(route, "max_duration", "max_duration", default=MAX_CALL_LENGTH, maximum=MAX_CALL_LENGTH)
        if route.HasField("max_duration")
        else None
    )
    return RoutePlan("media_stream", lambda: MediaStreamAdapter(max_duration=limit), route.SerializeToString().hex())


def _inbound(options: InboundOptions) -> pb.MediaStreamRoute:
    return pb.MediaStreamRoute()


ROUTE = RouteSpec("media_stream", plan, inbound=_inbound)
