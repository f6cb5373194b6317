"""The `sip` route's business side: a call handed to a PBX on a SIP trunk, its media bridged in rtpengine.

`SipRoutes` is what the call service asks: whether a route can run here (`check`: the trunk exists, the SIP endpoint
listens, a media engine runs), and the business side of one call (`build`). That side, `SipBridgedRoute`, holds the
call's platform leg (`EngineSipLeg`, both legs in the engine) and the PBX leg (`OutboundCall`):

- a business call (`StartCall` with `route { sip {...} }`): when the user picks up (`connected`), an INVITE to the
  target (From: the user; To: the target) through `EngineSipLeg.bridge`. A PBX that refuses or does not answer ends
  the call (still answered: the user picked up);
- a user's call (`--inbound-route sip:<trunk>`): the platform's offer makes the leg dial the trunk's target (From:
  the user; To: the business number) while the call is being answered; a PBX that refuses, or rings past
  `inbound_answer_timeout` (then its INVITE is cancelled, as a 408), fails the answer, and the service rejects the
  call on the platform before the platform would end it unanswered.

Either way the call's record gets its SIP leg (trunk, SIP Call-ID, direction, last final status) as it changes, a
BYE from the PBX ends the WhatsApp call, and the end of the call (either side) ends the PBX leg: BYE, or CANCEL
while it rings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wacall.calls.record import SipDirection, SipLeg
from wacall.fields import InvalidField
from wacall.media.engine_sip_legs import EngineSipLeg
from wacall.sip.digest import DigestAuth
from wacall.sip.message import SipURI
from wacall.sipdoor.trunks import Trunk
from wacall.siptrunk.endpoint import SipEndpoint
from wacall.siptrunk.outbound import ANSWER_TIMEOUT, INBOUND_ANSWER_TIMEOUT, OutboundCall, PbxRefused, target_of
from wacall.store import Pair
from wacall_adapters.base import CallLeg, MediaAdapter
from wacall_adapters.routes import SipDial

if TYPE_CHECKING:  # only the engine legs speak the ng protocol; this module hands them the pool
    from wacall.media.rtpengine import EnginePool, NgClient

__all__ = ["SipBridgedRoute", "SipRouteUnavailable", "SipRoutes"]

log = logging.getLogger(__name__)

RecordSipLeg = Callable[[SipLeg], Awaitable[object]]
"""Records the call's SIP leg (the call service's `record_sip_leg` for one call)."""


class SipRouteUnavailable(Exception):
    """This wacall cannot run a `sip` route: no SIP endpoint, or no media engine. Nothing is recorded."""


def check_target_on_trunk(target: SipURI, trunk: Trunk) -> None:
    """InvalidField on `route.sip.target` unless `target` is on the trunk's own host, port and transport: a route
    picks the user (a queue, an extension) at the trunk's PBX, never another host, since the trunk's credentials
    answer the challenges of whatever the INVITE reaches (and wacall would INVITE any host a client names)."""
    mine, trunks = target_of(target), target_of(trunk.target)
    if (mine.transport, mine.host.lower(), mine.port) != (trunks.transport, trunks.host.lower(), trunks.port):
        where = f"{trunks.host}:{trunks.port} over {trunks.transport}"
        raise InvalidField("route.sip.target", f"must name a user at the trunk's PBX ({where}), not another host")


@dataclass
class SipRoutes:
    """The trunks, the SIP endpoint and the media engines a `sip` route needs (either may be missing: `check`
    says so). `answer_timeout` is how long a PBX may ring on a business call before its leg is cancelled as a 408,
    `inbound_answer_timeout` the same on a user's call (shorter: the platform ends one not accepted in about 30 s)."""

    trunks: Sequence[Trunk]
    engines: EnginePool[NgClient] | None
    endpoint: SipEndpoint | None = None
    answer_timeout: float = ANSWER_TIMEOUT
    inbound_answer_timeout: float = INBOUND_ANSWER_TIMEOUT

    def trunk(self, name: str) -> Trunk:
        """The trunk named `name`; InvalidField on `trunk` when there is none."""
        for trunk in self.trunks:
            if trunk.name == name:
                return trunk
        known = ", ".join(t.name for t in self.trunks) or "none configured"
        raise InvalidField("trunk", f"no [[sip_trunks]] entry is named {name!r} (trunks: {known})")

    def check(self, dial: SipDial) -> None:
        """Raises what stops `dial` from running here: InvalidField for an unknown trunk or a target off the trunk's
        host, else SipRouteUnavailable without the SIP endpoint or a media engine."""
        try:
            trunk = self.trunk(dial.trunk)
        except InvalidField as problem:
            raise problem.within("route.sip.") from None
        if dial.target:
            check_target_on_trunk(SipURI.parse(dial.target), trunk)
        if self.endpoint is None:
            raise SipRouteUnavailable("the sip route needs wacall's SIP endpoint: start wacall with --sip-address")
        if self.engines is None:
            raise SipRouteUnavailable(
                "the sip route needs a media engine (rtpengine): install rtpengine-daemon or give --rtpengine"
            )

    def build(self, call_id: str, pair: Pair, dial: SipDial, record: RecordSipLeg) -> SipBridgedRoute:
        """The business side of call `call_id` between `pair`, going where `dial` says (checked with `check`)."""
        self.check(dial)
        assert self.endpoint is not None and self.engines is not None
        trunk = self.trunk(dial.trunk)
        return SipBridgedRoute(
            call_id=call_id,
            pair=pair,
            trunk=trunk,
            target=SipURI.parse(dial.target) if dial.target else trunk.target,
            headers=dial.headers,
            endpoint=self.endpoint,
            engines=self.engines,
            record=record,
            answer_timeout=self.answer_timeout,
            inbound_answer_timeout=self.inbound_answer_timeout,
        )


class SipBridgedRoute(MediaAdapter):
    """A call's business side on a PBX (see the module's docstring); `leg` is the call's platform leg."""

    def __init__(
        self,
        *,
        call_id: str,
        pair: Pair,
        trunk: Trunk,
        target: SipURI,
        headers: Sequence[tuple[str, str]],
        endpoint: SipEndpoint,
        engines: EnginePool[NgClient],
        record: RecordSipLeg,
        answer_timeout: float,
        inbound_answer_timeout: float,
    ) -> None:
        self.call_id = call_id
        self.pair = pair
        self.trunk = trunk
        self.target = target
        self.headers = tuple(headers)
        self.endpoint = endpoint
        self.record = record
        self.answer_timeout = answer_timeout
        self.inbound_answer_timeout = inbound_answer_timeout
        self.leg = EngineSipLeg(engines, call_id, trunk.codecs, self._answer_users_call)
        self.outbound: OutboundCall | None = None
        self.direction = SipDirection.SIP_ROUTE
        self._view: CallLeg | None = None
        self._bridging: asyncio.Task[None] | None = None
        self._closed = False

    async def attach(self, leg: CallLeg) -> None:
        self._view = leg

    def _outbound(self, callee: str, direction: SipDirection) -> OutboundCall:
        auth = None
        if self.trunk.username is not None:
            auth = DigestAuth(self.trunk.username, self.trunk.password or "")
        outbound = OutboundCall(
            self.endpoint.layer,
            self.endpoint,
            target=self.target,
            caller=self.pair.user,
            callee=callee,
            wacall_call_id=self.call_id,
            headers=self.headers if direction is SipDirection.SIP_ROUTE else (),
            auth=auth,
            on_bye=self._pbx_hung_up,
            on_early_answer=self.leg.early_answer if direction is SipDirection.SIP_ROUTE else None,
            answer_timeout=self.answer_timeout if direction is SipDirection.SIP_ROUTE else self.inbound_answer_timeout,
        )
        self.outbound = outbound
        self.direction = direction
        return outbound

    async def _record(self, status: int = 0) -> None:
        outbound = self.outbound
        assert outbound is not None
        try:
            await self.record(SipLeg(self.trunk.name, outbound.call_id, self.direction, status))
        except Exception:  # the call goes on (or ends) whatever its record of the SIP leg says
            log.exception("call %s: the SIP leg could not be recorded", self.call_id)

    async def _invite(self, outbound: OutboundCall, sdp: str) -> str:
        """The leg is recorded once its INVITE is on its way (never for a PBX that was not contacted), then with
        the PBX's real final status (a 200 that crossed our CANCEL stays a 200)."""
        inviting = outbound.start(sdp)  # PbxRefused when the call already ended: nothing recorded
        await self._record()
        try:
            answer = await asyncio.shield(inviting)
        except PbxRefused as refused:
            await self._record(outbound.last_status or refused.status)
            raise
        await self._record(outbound.last_status)
        return answer

    # --- a user's call: the PBX answers it ------------------------------------------------------------------------

    async def _answer_users_call(self, sdp: str) -> str:
        """The engine's offer for the PBX; the PBX's answer (PbxRefused when it does not answer)."""
        callee = f"sip:{self.pair.business}@{self.target.host}"
        return await self._invite(self._outbound(callee, SipDirection.INBOUND), sdp)

    # --- a business call: the PBX is invited once the user picked up ----------------------------------------------

    async def connected(self) -> None:
        if self.outbound is not None or self._closed:
            return  # a user's call: the PBX answered before the platform was
        self._bridging = asyncio.create_task(self._bridge(), name=f"wacall-sip-route {self.call_id}")

    async def _bridge(self) -> None:
        if self._closed:  # the call ended before this task ran: no PBX is invited
            return
        outbound = self._outbound(str(self.target), SipDirection.SIP_ROUTE)
        try:
            await self.leg.bridge(lambda sdp: self._invite(outbound, sdp))
        except PbxRefused as refused:
            await self._hangup(f"the PBX did not take the call: {refused}")
        except Exception as error:  # the engine cannot carry it (EngineBridgeUnavailable), or anything unforeseen
            log.warning("call %s: the PBX leg cannot be bridged: %s", self.call_id, error, exc_info=True)
            await outbound.hangup()
            await self._hangup(f"the PBX leg could not be bridged: {error}")

    async def _pbx_hung_up(self) -> None:
        await self._hangup("the PBX hung up (BYE)")

    async def _hangup(self, reason: str) -> None:
        if self._view is not None and not self._closed:
            await self._view.hangup(reason)

    async def close(self) -> None:
        self._closed = True
        if self.outbound is not None:
            await self.outbound.hangup()  # BYE, or CANCEL while it rings
        if self._bridging is not None and self._bridging is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._bridging
