"""What the services report as they act, for the operations surface (metrics and logs) to record.

The services call an `Observer` and know nothing of Prometheus or log formats; the assembly hands them the one that
records (`wacall.operations.Operations`), and tests or tools that need nothing get `NOT_OBSERVED`.
"""

from __future__ import annotations

from typing import Protocol

from wacall.media.counters import MediaCounters


class Observer(Protocol):
    def decision(self, action: str, business: str, user: str, *, allowed: bool, reason: str) -> None:
        """The rules allowed or refused a limit-consuming `action` ("request", "call") for the pair; `reason` is
        the refusal reason's value ("" when allowed)."""
        ...

    def call_ended(self, route: str, outcome: str, media: MediaCounters) -> None:
        """A call whose media ran in this process let go of it: its route, its outcome ("" while the call was
        left open, e.g. at shutdown) and the frames it carried."""
        ...

    def media_timed_out(self, route: str) -> None:
        """A call is being ended because the user's audio stopped (MEDIA-1)."""
        ...


class _NotObserved:
    def decision(self, action: str, business: str, user: str, *, allowed: bool, reason: str) -> None:
        pass

    def call_ended(self, route: str, outcome: str, media: MediaCounters) -> None:
        pass

    def media_timed_out(self, route: str) -> None:
        pass


NOT_OBSERVED: Observer = _NotObserved()
