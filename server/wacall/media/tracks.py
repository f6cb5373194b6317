"""Audio plumbing: one paced outgoing track with swappable sources, and consumers for incoming tracks.

MEDIA-1: the platform drops a call that receives no audio for 20 s at start. `PacedAudioTrack` therefore yields a
20 ms frame on a wall-clock schedule from the moment it is attached, silence until a real source is set, and its
`recv()` never waits on a source. Swapping sources needs no renegotiation (SDP-6).

Audio inside wacall is PCM16 mono at 48 kHz in 20 ms frames (960 samples, 1920 bytes).
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import math
import struct
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
FRAME_BYTES = FRAME_SAMPLES * 2
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
SILENCE = bytes(FRAME_BYTES)
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class AudioSource(Protocol):
    def next_frame(self) -> bytes | None:
        """The next 20 ms of PCM16 mono 48 kHz, or None if nothing is ready (the track sends silence)."""
        ...

    @property
    def finished(self) -> bool: ...


class Silence:
    finished = False

    def next_frame(self) -> bytes | None:
        return None


class ToneSource:
    """A sine tone, optionally limited to `seconds`."""

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3, seconds: float | None = None) -> None:
        self.frequency = frequency
        self.amplitude = amplitude
        self._limit = None if seconds is None else round(seconds / FRAME_SECONDS)
        self._sent = 0
        self._phase = 0

    @property
    def finished(self) -> bool:
        return self._limit is not None and self._sent >= self._limit

    def next_frame(self) -> bytes | None:
        if self.finished:
            return None
        step = 2 * math.pi * self.frequency / SAMPLE_RATE
        peak = int(32767 * self.amplitude)
        samples = [int(peak * math.sin(step * (self._phase + i))) for i in range(FRAME_SAMPLES)]
        self._phase += FRAME_SAMPLES
        self._sent += 1
        return struct.pack(f"<{FRAME_SAMPLES}h", *samples)


class BufferSource:
    """Plays fixed PCM once (a decoded file)."""

    def __init__(self, pcm: bytes) -> None:
        self._frames = collections.deque(
            pcm[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\0") for i in range(0, len(pcm), FRAME_BYTES)
        )

    @property
    def finished(self) -> bool:
        return not self._frames

    def next_frame(self) -> bytes | None:
        return self._frames.popleft() if self._frames else None


class QueueSource:
    """Frames pushed by another leg or a program, taken one every 20 ms by a paced track. A frame that waits here is
    delay the listener hears for the rest of the call, so the queue keeps only what can still be heard in time:

    - Before the track takes its first frame (the leg is not connected yet) only the newest frame is kept: the
      listener hears the speaker from the moment the leg connects, not the stale audio of the moments before.
    - Producer and track run at the same rate, so a burst (packets held up and then delivered together, a program
      catching up) would stay queued for good. A queue that never held fewer than `target_frames` when a frame was
      taken, over the last `window_frames` taken, holds that surplus as standing delay: its oldest frames go. A
      queue that empties now and then (a program writing 100 ms chunks in real time, network jitter) is untouched.
    - At most `max_frames` wait at once (a producer far ahead of real time): the oldest go.

    Every frame dropped is counted in `dropped`."""

    def __init__(self, max_frames: int = 10, *, target_frames: int = 1, window_frames: int = 50) -> None:
        self._frames: collections.deque[bytes] = collections.deque(maxlen=max_frames)
        self.max_frames = max_frames
        self.target_frames = target_frames
        self.window_frames = window_frames
        self.dropped = 0
        self.closed = False
        self.started = False  # the track has taken a frame: its leg is connected
        self._taken_in_window = 0
        self._least_in_window = max_frames  # the fewest frames waiting when one was taken, this window

    @property
    def finished(self) -> bool:
        return self.closed and not self._frames

    @property
    def waiting(self) -> int:
        """Frames queued now (each one 20 ms of delay)."""
        return len(self._frames)

    def push(self, frame: bytes) -> None:
        if not self.started and self._frames:
            self.dropped += len(self._frames)  # nobody could hear these in time
            self._frames.clear()
        elif len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)

    def next_frame(self) -> bytes | None:
        self.started = True
        self._least_in_window = min(self._least_in_window, len(self._frames))
        self._taken_in_window += 1
        if self._taken_in_window == self.window_frames:
            self._drop_standing_delay()
        return self._frames.popleft() if self._frames else None

    def _drop_standing_delay(self) -> None:
        surplus = self._least_in_window - self.target_frames
        for _ in range(max(0, surplus)):
            self._frames.popleft()
            self.dropped += 1
        self._taken_in_window = 0
        self._least_in_window = self.max_frames


def decode_file(path: str) -> bytes:
    """Decode any audio file PyAV reads (WAV, OGG, MP3...) to PCM16 mono 48 kHz."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    out = bytearray()
    with av.open(path) as container:
        for frame in container.decode(audio=0):
            for converted in resampler.resample(frame):
                out.extend(bytes(converted.planes[0])[: converted.samples * 2])
        for converted in resampler.resample(None):
            out.extend(bytes(converted.planes[0])[: converted.samples * 2])
    return bytes(out)


def audio_problem(path: str) -> str | None:
    """Why `decode_file` cannot play this file (not a media file, no audio stream, undecodable), or None. Reads
    only the start of the file: cheap enough to check a request before anything happens."""
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                return "the file has no audio stream"
            for _ in container.decode(audio=0):
                return None
            return "the file's audio stream holds no sound"
    except (av.FFmpegError, OSError, ValueError, UnicodeError) as error:
        return f"not an audio file this service can decode ({type(error).__name__})"


def level(frame: bytes) -> float:
    """RMS level of a PCM16 frame, 0..1."""
    count = len(frame) // 2
    if not count:
        return 0.0
    samples = struct.unpack(f"<{count}h", frame[: count * 2])
    return math.sqrt(sum(s * s for s in samples) / count) / 32768.0


class PacedAudioTrack(MediaStreamTrack):
    """An outgoing audio track that always delivers 20 ms frames in real time, from a swappable source."""

    kind = "audio"

    def __init__(self, source: AudioSource | None = None) -> None:
        super().__init__()
        self.source: AudioSource = source or Silence()
        self._start: float | None = None
        self._pts = 0
        self.frames_sent = 0
        self.audible_frames_sent = 0

    def set_source(self, source: AudioSource) -> None:
        self.source = source

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        pcm = self.source.next_frame()
        if pcm is not None:
            self.audible_frames_sent += 1
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(pcm or SILENCE)
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = TIME_BASE
        self.frames_sent += 1
        return frame


FrameHandler = Callable[[bytes], None]
Unsubscribe = Callable[[], None]  # undoes a subscription (a listener added to a leg or a stream)


class TrackConsumer:
    """Reads an incoming track to its end (MEDIA-4: every remote track needs a consumer), converts each frame to
    PCM16 mono 48 kHz, measures it and hands it to the handlers."""

    def __init__(self, track: MediaStreamTrack, *handlers: FrameHandler) -> None:
        self.track = track
        self.handlers = list(handlers)
        self.frames = 0
        self.audible_frames = 0
        self.peak_level = 0.0
        self._level_sum = 0.0
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._pending = bytearray()
        self.task = asyncio.create_task(self._run(), name="wacall-track-consumer")
        self.first_frame_at: float | None = None
        self.first_frame = asyncio.get_running_loop().create_future()

    @property
    def mean_level(self) -> float:
        return self._level_sum / self.frames if self.frames else 0.0

    def _frames_of(self, frame: av.AudioFrame) -> Iterator[bytes]:
        for converted in self._resampler.resample(frame):
            self._pending.extend(bytes(converted.planes[0])[: converted.samples * 2])
        while len(self._pending) >= FRAME_BYTES:
            chunk = bytes(self._pending[:FRAME_BYTES])
            del self._pending[:FRAME_BYTES]
            yield chunk

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                for pcm in self._frames_of(frame):  # type: ignore[arg-type]
                    value = level(pcm)
                    self.frames += 1
                    self._level_sum += value
                    self.peak_level = max(self.peak_level, value)
                    if value > 0.01:
                        self.audible_frames += 1
                        if self.first_frame_at is None:
                            self.first_frame_at = time.monotonic()
                            if not self.first_frame.done():
                                self.first_frame.set_result(self.first_frame_at)
                    for handler in self.handlers:
                        handler(pcm)
        except MediaStreamError:
            pass

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


class PcmResampler:
    """PCM16 mono from one sample rate to another, in any chunk sizes (identity when the rates match)."""

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self.source_rate = source_rate
        self.target_rate = target_rate
        self._resampler = (
            None if source_rate == target_rate else av.AudioResampler(format="s16", layout="mono", rate=target_rate)
        )
        self._pts = 0

    def convert(self, pcm: bytes) -> bytes:
        if self._resampler is None or not pcm:
            return pcm
        samples = len(pcm) // 2
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(pcm[: samples * 2])
        frame.sample_rate = self.source_rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.source_rate)
        self._pts += samples
        return b"".join(bytes(f.planes[0])[: f.samples * 2] for f in self._resampler.resample(frame))


class Framer:
    """Cuts a byte stream into fixed 20 ms frames."""

    def __init__(self, frame_bytes: int = FRAME_BYTES) -> None:
        self.frame_bytes = frame_bytes
        self._pending = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        self._pending.extend(data)
        frames = []
        while len(self._pending) >= self.frame_bytes:
            frames.append(bytes(self._pending[: self.frame_bytes]))
            del self._pending[: self.frame_bytes]
        return frames
