"""What a route module declares: a `RouteSpec` (how to check its `wacall.v1.Route` message and build its adapter).
The registry (`registry.py`) collects them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from google.protobuf.message import Message

from wacall_adapters.base import MediaAdapter

# The longest call a route may be asked to last (its max_duration, a tone's length).
MAX_CALL_LENGTH = timedelta(hours=24)


class RouteRefused(Exception):
    """The route names something that is not there or not ready now (a queue, an agent): nothing is recorded.
    `reason` is a stable code (UNKNOWN_QUEUE, AGENT_NOT_READY...), `field` the field inside the route message."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class HoldSound:
    """What a queue's waiting callers hear: a file named in the media directory (checked when played), else a
    tone."""

    audio_file: str = ""
    tone_hz: float = 0.0


class CallQueues(Protocol):
    """The contact centre as the `queue` and `agent` routes see it (the service implements it)."""

    async def hold_sound(self, queue_id: str) -> HoldSound | None:
        """The queue's hold audio; None when there is no such queue."""
        ...

    async def enqueue(self, call_id: str, queue_id: str, priority: int) -> None:
        """The answered call enters the queue (a queue gone by now ends the call, with the reason evented)."""
        ...

    async def check_agent_call(self, agent_id: str) -> None:
        """Raise `RouteRefused` unless the agent could place a call now (signed in, not on a call)."""
        ...

    async def agent_call_started(self, agent_id: str, call_id: str) -> None:
        """The agent's call exists: the agent is BUSY until it ends. Raises when the agent is no longer free."""
        ...


@dataclass(frozen=True, slots=True)
class ServerFiles:
    """What a route is built with: the configured directories server-side files named in a route must lie in
    (--media-dir, --recordings-dir), the contact centre (None: a route needing it is refused), and whether the plan
    answers users' calls from configuration (checked at start-up: a queue it names may be created later)."""

    media_dir: str
    recordings_dir: str
    queues: CallQueues | None = None
    users_calls: bool = False


@dataclass(frozen=True, slots=True)
class SipDial:
    """Where a `sip` route hands the call: a trunk by name, the target URI ("" for the trunk's own), and extra INVITE
    headers (checked: header names and one-line values, none of the headers wacall writes)."""

    trunk: str
    target: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A checked route: what the call records as its route, how to build its adapter (once per call), and what
    distinguishes it from another route of the same kind when an idempotency key is reused.

    `engine_bridge`, when set, is the business peer's SDP offer and says that a media engine may carry the whole
    call: the WhatsApp leg and the peer's leg both in the engine, no audio through the service. Where no engine is
    configured the call runs in process, with the adapter from `factory`.

    `sip`, when set, says the call goes to a PBX on a SIP trunk: its media lives in the engine and the service
    builds its business side (the PBX leg) itself; `factory` is not used."""

    name: str
    factory: Callable[[], MediaAdapter]
    fingerprint: str
    engine_bridge: str | None = None
    sip: SipDial | None = None


@dataclass(frozen=True, slots=True)
class InboundOptions:
    """What configuration says about the route that answers users' calls: the announcement's audio file, and what
    follows the route's name in `--inbound-route NAME:ARGUMENT` (the trunk of `sip:pbx`)."""

    audio_file: str = ""
    argument: str = ""


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One kind of route.

    `build` checks the route's message and returns its plan, or raises InvalidField naming the field inside the
    message (`tone_hz`); a route that passes sets up, so nothing is recorded for one that does not. `inbound`,
    when set, makes the route eligible to answer users' calls: the message it stands for under configuration.
    """

    field: str
    build: Callable[[Any, ServerFiles], Awaitable[RoutePlan]]
    inbound: Callable[[InboundOptions], Message] | None = None
