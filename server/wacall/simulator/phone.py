"""The simulated user's phone: a real aiortc peer that rings, answers or not, talks and listens.

Meta's side of a call, as the business sees it: `POST /calls connect` with our offer → a `connect` webhook with the
phone's answer, `RINGING`, then `ACCEPTED` + audio, or `REJECTED`, or nothing; finally `terminate` (with
`start_time`/`duration` only if picked up). The phone records what it hears, so tests can prove audio crossed.
Ringing and talking follow the service clock (manual in tests); audio runs in real time.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from wacall.media.leg import AudioLeg
from wacall.media.tracks import AudioSource, BufferSource, Silence, ToneSource, decode_file


class OnCall(enum.Enum):
    ANSWER = "answer"
    NO_ANSWER = "no_answer"
    DECLINE = "decline"


@dataclass
class PhoneCall:
    platform_call_id: str
    business: str
    user: str
    direction: str  # BUSINESS_INITIATED | USER_INITIATED
    started_at: datetime
    opaque: str = ""
    state: str = "ringing"  # ringing | connected | ended
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    leg: AudioLeg | None = None
    task: asyncio.Task[None] | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    # Kept after the leg closes.
    frames_received: int = 0
    audible_frames_received: int = 0
    mean_level_received: float = 0.0
    frames_sent: int = 0

    def refresh_stats(self) -> None:
        if self.leg is None:
            return
        consumer = self.leg.consumer
        if consumer is not None:
            self.frames_received = consumer.frames
            self.audible_frames_received = consumer.audible_frames
            self.mean_level_received = consumer.mean_level
        self.frames_sent = self.leg.outgoing.audible_frames_sent

    async def close(self) -> None:
        """Close the phone's leg and let it go: ended calls stay listed (GetPhoneCall), and a closed peer
        connection still holds its Opus encoder, whose native threads live as long as the encoder (MEDIA-3)."""
        self.refresh_stats()
        leg, self.leg = self.leg, None
        if leg is not None:
            await leg.close()


def new_wacid() -> str:
    return "wacid.SIM" + uuid.uuid4().hex.upper()


def voice(tone_hz: float, say_file: str = "") -> AudioSource:
    """What the simulated user says: a file, a tone, or silence."""
    if say_file:
        return BufferSource(decode_file(say_file))
    return Silence() if tone_hz < 0 else ToneSource(tone_hz or 880.0, amplitude=0.25)


DEFAULT_RING = timedelta(seconds=3)
