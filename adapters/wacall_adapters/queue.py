"""`queue`: the caller waits in a contact-centre queue, hearing its hold audio, until an agent takes the call.

The route's adapter is the hold: once the user is on the line (picked up, or a user's call accepted) it plays the
queue's hold audio, a file from the media directory looped or a tone, and puts the call in the queue. It stays the
call's route until the contact centre moves the call on (`CallService.reroute` to the agent's media, or the closing
announcement) or the call ends; what it plays then no longer reaches the user.
"""

from __future__ import annotations

import asyncio
import logging
import re

from wacall_client.v1 import calling_pb2 as pb

from wacall.fields import InvalidField
from wacall.media.tracks import FRAME_BYTES, AudioSource, ToneSource, decode_file
from wacall_adapters.announcement import audio_file_in
from wacall_adapters.base import CallLeg, MediaAdapter
from wacall_adapters.routes import (
    CallQueues,
    HoldSound,
    InboundOptions,
    RoutePlan,
    RouteRefused,
    RouteSpec,
    ServerFiles,
)

log = logging.getLogger(__name__)

# The router's ids: 1 to 64 letters, digits, '.', '_' or '-'.
IDENTIFIER = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_PRIORITY = 1000
DEFAULT_HOLD_TONE_HZ = 440.0
HOLD_AMPLITUDE = 0.3


def contact_centre(files: ServerFiles) -> CallQueues:
    if files.queues is None:
        raise RouteRefused("CONTACT_CENTRE_UNAVAILABLE", "", "this service runs without its contact centre")
    return files.queues


def identifier(value: str, field: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        shown = value if len(value) <= 80 else value[:79] + "…"
        raise InvalidField(field, f"1 to 64 letters, digits, '.', '_' or '-' (got {shown!r})")
    return value


class LoopSource:
    """Fixed PCM played over and over (hold music): never finished."""

    finished = False

    def __init__(self, pcm: bytes) -> None:
        self._frames = [
            pcm[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\0") for i in range(0, len(pcm), FRAME_BYTES)
        ] or [bytes(FRAME_BYTES)]
        self._next = 0

    def next_frame(self) -> bytes | None:
        frame = self._frames[self._next]
        self._next = (self._next + 1) % len(self._frames)
        return frame


async def hold_source(sound: HoldSound, media_dir: str) -> AudioSource:
    """What the caller hears for `sound`: the file looped, or the tone. A file that cannot be played (removed or
    replaced since the queue was put) falls back to the tone, with a warning: a caller on hold never hears
    nothing."""
    if sound.audio_file:
        try:
            path = await audio_file_in(sound.audio_file, "hold_audio.audio_file", media_dir)
            return LoopSource(await asyncio.get_running_loop().run_in_executor(None, decode_file, path))
        except (InvalidField, OSError, ValueError) as problem:
            log.warning("hold audio %s cannot be played (%s): a tone instead", sound.audio_file, problem)
    return ToneSource(sound.tone_hz or DEFAULT_HOLD_TONE_HZ, amplitude=HOLD_AMPLITUDE)


class HoldAdapter(MediaAdapter):
    """Hold audio, and the call put in its queue once the user is on the line."""

    def __init__(self, *, queue_id: str, priority: int, media_dir: str, queues: CallQueues) -> None:
        self.queue_id = queue_id
        self.priority = priority
        self.media_dir = media_dir
        self.queues = queues
        self._leg: CallLeg | None = None
        self._enqueued = False

    async def attach(self, leg: CallLeg) -> None:
        self._leg = leg

    async def connected(self) -> None:
        if self._leg is None or self._enqueued:
            return
        self._enqueued = True
        # The queue's hold audio as it is now (a queue may be put again while calls wait); a queue gone since the
        # call was placed is the contact centre's to report, so the caller hears the default tone meanwhile.
        await self.hold(await self.queues.hold_sound(self.queue_id) or HoldSound())
        await self.queues.enqueue(self._leg.call_id, self.queue_id, self.priority)

    async def hold(self, sound: HoldSound) -> None:
        """Play `sound` from now on (the call overflowed into a queue with other hold audio)."""
        if self._leg is not None:
            self._leg.play(await hold_source(sound, self.media_dir))


# --- the route: `queue` in wacall.v1.Route -------------------------------------------------------------------------


async def plan(route: pb.QueueRoute, files: ServerFiles) -> RoutePlan:
    queue_id = identifier(route.queue_id, "queue_id")
    if not -MAX_PRIORITY <= route.priority <= MAX_PRIORITY:
        raise InvalidField("priority", f"-{MAX_PRIORITY} to {MAX_PRIORITY} (got {route.priority})")
    queues = contact_centre(files)
    if not files.users_calls:  # a business call: the queue exists now, and its hold audio can be played
        sound = await queues.hold_sound(queue_id)
        if sound is None:
            raise RouteRefused(
                "UNKNOWN_QUEUE", "queue_id", f"no queue {queue_id!r}: create it with ContactCenterService.PutQueue"
            )
        if sound.audio_file:
            try:
                await audio_file_in(sound.audio_file, "hold_audio.audio_file", files.media_dir)
            except InvalidField as problem:
                raise RouteRefused(
                    "HOLD_AUDIO_UNUSABLE", "queue_id", f"queue {queue_id!r}'s hold audio: {problem.why}"
                ) from None
    priority, media_dir = route.priority, files.media_dir
    return RoutePlan(
        "queue",
        lambda: HoldAdapter(queue_id=queue_id, priority=priority, media_dir=media_dir, queues=queues),
        route.SerializeToString().hex(),
    )


def _inbound(options: InboundOptions) -> pb.QueueRoute:
    return pb.QueueRoute(queue_id=options.argument)


ROUTE = RouteSpec("queue", plan, inbound=_inbound)
