"""What happens to a routed call's media: the hook the `queue` and `agent` routes install in `QueueService`, and the
media an agent takes a call with."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

from wacall.calls.ownership import CallOwner
from wacall.calls.service import CallNotFound, CallService
from wacall.queues.router import Assigned, Overflowed, QueueGone, QueueTimedOut


@dataclass(frozen=True, slots=True)
class WebRtcAgentMedia:
    """The agent's own WebRTC peer (a browser): the service bridges it to the call and answers its offer."""

    offer_sdp: str


@dataclass(frozen=True, slots=True)
class MediaStreamAgentMedia:
    """The agent's program attaches with `CallMedia` using the call id."""


AgentMedia = WebRtcAgentMedia | MediaStreamAgentMedia


class AgentMediaFailed(Exception):
    """The call's media could not be moved to the agent (a bad SDP offer, the call gone): `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CallActions(Protocol):
    """What happens to a call's media when the router decides about it; installed by the `queue` and `agent` routes.
    Each runs after the decision's transaction committed."""

    async def connect_agent(self, assigned: Assigned, media: AgentMedia) -> str:
        """Move the call from hold audio to the agent; returns the SDP answer for `WebRtcAgentMedia` ("" for a media
        stream). Raises `AgentMediaFailed`."""
        ...

    async def queue_timed_out(self, decision: QueueTimedOut) -> None:
        """The call waited its queue's maximum with nowhere to overflow: the closing announcement, then hang up."""
        ...

    async def queue_gone(self, decision: QueueGone) -> None:
        """The call's queue does not exist: end the call."""
        ...

    async def overflowed(self, decision: Overflowed) -> None:
        """The call moved to another queue (its hold audio may change)."""
        ...


class EndOnly:
    """The actions before a route installs its own: calls that must end are ended; no media moves (an assigned call
    stays on its hold route)."""

    def __init__(self, calls: CallService) -> None:
        self.calls = calls

    async def connect_agent(self, assigned: Assigned, media: AgentMedia) -> str:
        return ""

    async def queue_timed_out(self, decision: QueueTimedOut) -> None:
        await end_call(self.calls, decision.call_id, f"waited the maximum in queue {decision.queue_id}")

    async def queue_gone(self, decision: QueueGone) -> None:
        await end_call(self.calls, decision.call_id, f"no queue {decision.queue_id}")

    async def overflowed(self, decision: Overflowed) -> None:
        return None


class OwnerActions(Protocol):
    """What this replica asks of the replica that owns a call's media (several replicas on one database): the
    agent won the call here, the call's media runs there. Installed by the assembly (`api/replicas.py`)."""

    async def connect_agent(self, owner: CallOwner, assigned: Assigned, media: AgentMedia) -> str:
        """The owner moves the call from hold audio to the agent (`CallActions.connect_agent` there); returns the SDP
        answer ("" for a media stream). Raises `AgentMediaFailed`, also when the owner cannot be reached."""
        ...

    async def end_call(self, owner: CallOwner, call_id: str) -> None:
        """EndCall forwarded to the owner. Raises `CallOwnerUnreachable` when it cannot be reached."""
        ...


async def end_call(calls: CallService, call_id: str, reason: str) -> None:
    """End the call if it still exists (a call already ended is left as it is)."""
    with contextlib.suppress(CallNotFound):
        await calls.end(call_id, reason=reason)
