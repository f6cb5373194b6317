"""What a call's platform leg carried, as plain numbers: kept in the call record, shown in the API's MediaStats."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MediaCounters:
    """Frames to the user, frames from the user, and how loud those were (0..1)."""

    frames_sent: int = 0
    frames_received: int = 0
    audible_frames_received: int = 0
    mean_level_received: float = 0.0
