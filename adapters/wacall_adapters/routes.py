"""What a route module declares: a `RouteSpec` (how to check its `wacall.v1.Route` message and build its adapter).
The registry (`registry.py`) collects them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf.message import Message

from wacall_adapters.base import MediaAdapter

# The longest call a route may be asked to last (its max_duration, a tone's length).
MAX_CALL_LENGTH = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class ServerFiles:
    """The configured directories server-side files named in a route must lie in (--media-dir, --recordings-dir)."""

    media_dir: str
    recordings_dir: str


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
