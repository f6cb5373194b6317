"""`announcement`: play a file or a tone to the user, optionally record the user, hang up at the end.

Playback starts when the user picks up (so the start is not lost to ringing); silence flows before that. The call
ends a moment after the audio finishes, or at `max_duration` connected, whichever comes first.
"""

from __future__ import annotations

import asyncio
import os
import wave
from datetime import timedelta
from pathlib import Path

from wacall_client.v1 import calling_pb2 as pb

from wacall.fields import InvalidField, positive_duration, server_file
from wacall.media.tracks import (
    FRAME_SECONDS,
    SAMPLE_RATE,
    AudioSource,
    BufferSource,
    ToneSource,
    audio_problem,
    decode_file,
)
from wacall_adapters.base import CallLeg, MediaAdapter, stop_task
from wacall_adapters.routes import MAX_CALL_LENGTH, InboundOptions, RoutePlan, RouteSpec, ServerFiles

TAIL_SECONDS = 0.5
MAX_PATH = 4096
MAX_TONE = timedelta(hours=1)


class AnnouncementAdapter(MediaAdapter):
    def __init__(
        self,
        *,
        audio_file: str = "",
        tone_hz: float = 440.0,
        tone_seconds: float = 5.0,
        record_to: str = "",
        max_duration: timedelta = timedelta(minutes=5),
    ) -> None:
        self.audio_file = audio_file
        self.tone_hz = tone_hz
        self.tone_seconds = tone_seconds
        self.record_to = record_to
        self.max_duration = max_duration
        self._leg: CallLeg | None = None
        self._source: AudioSource | None = None
        self._recording: wave.Wave_write | None = None
        self._task: asyncio.Task[None] | None = None

    def _load(self) -> AudioSource:
        if self.audio_file:
            return BufferSource(decode_file(self.audio_file))
        return ToneSource(self.tone_hz, seconds=self.tone_seconds)

    async def attach(self, leg: CallLeg) -> None:
        self._leg = leg
        # Decode before the call connects: a bad file fails the call setup, not the user's ear.
        self._source = await asyncio.get_running_loop().run_in_executor(None, self._load)

    def _record(self, frame: bytes) -> None:
        if self._recording is not None:
            self._recording.writeframes(frame)

    async def connected(self) -> None:
        if self._leg is None or self._source is None or self._task is not None:
            return
        if self.record_to:
            Path(self.record_to).parent.mkdir(parents=True, exist_ok=True)
            recording = wave.open(self.record_to, "wb")  # noqa: SIM115 - closed in close()
            recording.setnchannels(1)
            recording.setsampwidth(2)
            recording.setframerate(SAMPLE_RATE)
            self._recording = recording
            self._leg.listen(self._record)
        self._leg.play(self._source)
        self._task = asyncio.create_task(self._hang_up_when_done(self._leg, self._source))

    async def _hang_up_when_done(self, leg: CallLeg, source: AudioSource) -> None:
        waited = 0.0
        while not source.finished and waited < self.max_duration.total_seconds():
            await asyncio.sleep(FRAME_SECONDS * 5)
            waited += FRAME_SECONDS * 5
        await asyncio.sleep(TAIL_SECONDS)
        await leg.hangup("announcement finished" if source.finished else "announcement reached max_duration")

    async def close(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        if self._recording is not None:
            self._recording.close()
            self._recording = None


# --- the route: `announcement` in wacall.v1.Route ------------------------------------------------------------------


async def audio_file_in(name: str, field: str, media_dir: str) -> str:
    """The real path of a decodable audio file inside `media_dir`. Decoding is tried now, so a bad file fails
    before the call is placed, not when the user picks up."""
    path = server_file(name, field, media_dir, max_chars=MAX_PATH)
    if not os.path.isfile(path):
        raise InvalidField(field, f"no such file on the server: {name} (in {media_dir})")
    problem = await asyncio.get_running_loop().run_in_executor(None, audio_problem, path)
    if problem is not None:
        raise InvalidField(field, f"{name}: {problem}")
    return path


def recording_file_in(name: str, field: str, recordings_dir: str) -> str:
    """The real path of a file this service can write inside `recordings_dir`."""
    path = server_file(name, field, recordings_dir, max_chars=MAX_PATH)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise InvalidField(field, "its directory does not exist")
    if os.path.isdir(path) or not os.access(directory, os.W_OK):
        raise InvalidField(field, "not a file this service can write")
    return path


async def plan(route: pb.AnnouncementRoute, files: ServerFiles) -> RoutePlan:
    audio_file = await audio_file_in(route.audio_file, "audio_file", files.media_dir) if route.audio_file else ""
    if route.tone_hz and not 20 <= route.tone_hz <= 20000:
        raise InvalidField("tone_hz", "between 20 and 20000 Hz")
    tone = positive_duration(
        route, "tone_duration", "tone_duration", default=timedelta(seconds=5), maximum=MAX_CALL_LENGTH
    )
    if tone > MAX_TONE:
        raise InvalidField("tone_duration", "at most 1 h")
    limit = positive_duration(
        route, "max_duration", "max_duration", default=timedelta(minutes=5), maximum=MAX_CALL_LENGTH
    )
    record_to = recording_file_in(route.record_to, "record_to", files.recordings_dir) if route.record_to else ""
    tone_hz = route.tone_hz or 440.0
    return RoutePlan(
        "announcement",
        lambda: AnnouncementAdapter(
            audio_file=audio_file,
            tone_hz=tone_hz,
            tone_seconds=tone.total_seconds(),
            record_to=record_to,
            max_duration=limit,
        ),
        route.SerializeToString().hex(),
    )


def _inbound(options: InboundOptions) -> pb.AnnouncementRoute:
    return pb.AnnouncementRoute(audio_file=options.audio_file)


ROUTE = RouteSpec("announcement", plan, inbound=_inbound)
