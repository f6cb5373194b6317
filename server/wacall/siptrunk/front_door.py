"""The front door's calls: a PBX's INVITE becomes a WhatsApp call, bridged in rtpengine, and the call's progress
becomes the INVITE's responses.

One INVITE, in order: 100 Trying at once; the front door's admission (`sipdoor.admission`: trunk, digest, numbers,
codecs); for a trunk with `business_numbers = ["*"]` a sender for the number; then the decision `StartCall` makes,
in the same transaction (`CallService.start`, route "sip", the call's SIP leg recorded with it). Its platform leg is
an `EngineBridgeLeg` facing the PBX as a plain-RTP peer (transcoding G.711↔Opus when the PBX offers no Opus).
Every refusal is a final response from `sipdoor.responses` with a Warning; nothing is written for one.

A placed call is followed in the store: RINGING → 180, CONNECTED → 200 OK with the engine's SDP for the PBX (the
ACK completes it), ENDED before that → the final response `SIP_ENDINGS` names; the 180 and the 200 carry our Contact
and the INVITE's Record-Route (§12.1.1). A BYE from the PBX ends the call (ended by the business); a call that ends
otherwise once answered sends the PBX a BYE, after its ACK, where `SipEndpoint.dialog_target` says (the route set,
else the PBX's Contact; the INVITE's connection while it is open); a CANCEL before the 200 went (487, by the
transaction layer) ends it, even one that crosses the answer. `Call.sip.last_status` keeps the INVITE's final status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypedDict

from wacall.calls.machine import CallOutcome as MachineOutcome
from wacall.calls.machine import CallState
from wacall.calls.record import SipDirection, SipLeg
from wacall.calls.service import CallService, EngineBridgedRoute, MediaSetupFailed
from wacall.clock import Clock
from wacall.fields import InvalidField
from wacall.media.engine_leg import (
    PLAIN_RTP_PEER,
    PLAIN_RTP_PEER_TRANSCODED,
    EngineBridgeLeg,
    EngineBridgeUnavailable,
    PeerMedia,
)
from wacall.permissions import PlatformRefusal, RuleRefusal
from wacall.rules.engine import Reason
from wacall.sip.dialog import Dialog, DialogError
from wacall.sip.message import Request, Response, SipParseError, SipURI, Via, Warning, parse_uri, response_to
from wacall.sipdoor.admission import Admitted, Challenged, FrontDoor
from wacall.sipdoor.responses import SIP_ENDINGS, WARN_CODE, CallOutcome, final_response, platform_refusal
from wacall.sipio.layer import ServerRequest, TransactionTimeout, TransportFailed
from wacall.sipio.transport import SipTransportError, Target
from wacall.siptrunk.endpoint import ALLOWED_METHODS, SipEndpoint
from wacall.upstreams.base import UnknownSender
from wacall_adapters.routes import RoutePlan

__all__ = ["ROUTE_NAME", "EngineLegs", "FrontDoorCalls", "answer_again"]

log = logging.getLogger(__name__)

ROUTE_NAME = "sip"
# How long the engine may take to turn the platform's answer into the PBX's SDP once the user answered.
PEER_ANSWER_WAIT = 10.0
# The Retry-After of a call a shutdown ended before its answer: about a restart's time.
SHUTDOWN_RETRY = timedelta(seconds=10)


class _Ending(TypedDict, total=False):
    reason: Reason | CallOutcome
    next_allowed_at: datetime


EngineLegs = Callable[[str, PeerMedia], EngineBridgeLeg]
"""Builds the platform leg of a front-door call: (the PBX's SDP offer, how the engine faces the PBX)."""


@dataclass(eq=False)
class _Call:
    """One front-door call while it lasts: the PBX's INVITE, our tag, the call, and what the PBX did."""

    server: ServerRequest
    to_tag: str
    leg: SipLeg
    call_id: str = ""
    engine_leg: EngineBridgeLeg | None = None
    dialog: Dialog | None = None
    answer_sdp: str = ""  # the SDP wacall last gave the PBX (the 200's, or a re-INVITE's answer)
    answered_at: float = 0.0  # when the 200 went (the event loop's clock): its ACK is due within 64*T1
    hung_up_by_pbx: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class FrontDoorCalls:
    """Takes the INVITEs `endpoint` receives and turns them into calls through `calls`. `engine_legs` is None when
    there is no media engine: every INVITE that passes admission is then answered 503 saying so."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        calls: CallService,
        *,
        engine_legs: EngineLegs | None,
        clock: Clock,
        nonce_secret: bytes | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.calls = calls
        self.engine_legs = engine_legs
        self.clock = clock
        # Replicas accept each other's nonces when given the same secret (a PBX's retry may reach another one);
        # without one, a random key: never one derived from the trunks' passwords, which a nonce would expose to
        # offline guessing.
        self.door = FrontDoor(
            endpoint.trunks, nonce_secret=nonce_secret or secrets.token_bytes(32), agent=endpoint.agent
        )
        self._active: set[_Call] = set()
        self._closing = False
        endpoint.on_invite = self.invite

    @property
    def active_calls(self) -> int:
        """Front-door calls whose INVITE is not yet over (answered and ended, or refused)."""
        return len(self._active)

    async def close(self) -> None:
        """End the calls still up (the PBX hears BYE, or the refusal a shutdown gives) before the endpoint closes."""
        self._closing = True
        for call in list(self._active):
            if call.call_id:
                with contextlib.suppress(Exception):
                    await self.calls.end(call.call_id, reason="the service is shutting down")
        waiting = [asyncio.ensure_future(c.ended.wait()) for c in self._active]
        if waiting:
            await asyncio.wait(waiting, timeout=2.0)
            for task in waiting:
                task.cancel()

    # --- one INVITE ---------------------------------------------------------------------------------------------

    async def invite(self, server: ServerRequest) -> None:
        """Answer an out-of-dialog INVITE: refuse it, or place the call and follow it to its end."""
        request = server.request
        server.respond(response_to(request, 100))
        to_tag = secrets.token_hex(8)
        try:
            decision = self.door.admit(request, source=server.source.host, now=self.clock.now(), to_tag=to_tag)
        except SipParseError as error:
            self._refuse(server, 400, to_tag, f"BAD_REQUEST: {error}")
            return
        if isinstance(decision, Challenged):
            self._respond(server, decision.response)
            return
        if not isinstance(decision, Admitted):
            log.info("SIP INVITE %s refused: %s", request.call_id, decision.reason.name)
            self._respond(server, decision.response)
            return
        leg = SipLeg(decision.trunk.name, request.call_id, SipDirection.FRONT_DOOR)
        call = _Call(server, to_tag, leg)
        self._active.add(call)
        try:
            await self._place(call, decision)
        except Exception:
            log.exception("SIP call %s failed", request.call_id)
            self._final(call, CallOutcome.MEDIA_SETUP_FAILED)
            if call.call_id:
                await self.calls.end(call.call_id, reason="the SIP leg failed")
        finally:
            self._active.discard(call)
            if call.dialog is not None:
                self.endpoint.unregister_dialog(call.dialog.id)
            call.ended.set()

    async def _place(self, call: _Call, admitted: Admitted) -> None:
        request = call.server.request
        if self.engine_legs is None:
            self._final(call, CallOutcome.MEDIA_ENGINE_UNAVAILABLE)
            return
        if admitted.any_business_number:
            try:
                self.calls.permissions.senders.account_for(admitted.business)
            except UnknownSender:
                detail = f"{admitted.business.e164} has no sender here: configure it under [[senders]]"
                self._final(call, CallOutcome.BUSINESS_NUMBER_NOT_ALLOWED, detail=detail)
                return
        # No Opus from the PBX: rtpengine transcodes its G.711 to the Opus the platform speaks.
        peer = PLAIN_RTP_PEER if "opus" in admitted.codecs else PLAIN_RTP_PEER_TRANSCODED
        engine_legs = self.engine_legs
        offer = request.body.decode("utf-8", "replace")

        def bridged() -> EngineBridgedRoute:
            call.engine_leg = engine_legs(offer, peer)
            return EngineBridgedRoute(call.engine_leg)

        try:
            dialog = Dialog.as_uas(request, call.to_tag)
        except (DialogError, SipParseError) as error:
            self._refuse(call.server, 400, call.to_tag, f"BAD_REQUEST: {error}")
            return
        call.dialog = dialog
        # The connection the INVITE came on stays open for the dialog: the PBX's BYE may come on it, ours goes on it.
        self.endpoint.register_dialog(
            dialog.id, lambda message: self._in_dialog(call, message), connection=call.server.source.connection
        )
        plan = RoutePlan(ROUTE_NAME, bridged, fingerprint=request.call_id)
        if call.server.cancelled.is_set():
            return  # cancelled while it was admitted: 487 went out, nothing was placed
        try:
            record = await self.calls.start(admitted.business.e164, admitted.user.e164, plan, sip=call.leg)
        except RuleRefusal as refusal:
            decision = refusal.decision
            log.info("SIP INVITE %s refused by the rules: %s", request.call_id, decision.reason.name)
            self._final(call, decision.reason, next_allowed_at=decision.next_allowed_at)
            return
        except PlatformRefusal as refused:
            status = self._final(call, platform_refusal(refused.error.reason), detail=str(refused.error) or None)
            # The call was recorded (FAILED) before the platform refused it: find it by its SIP leg.
            latest = await self.calls.list(refused.pair.business, refused.pair.user, None, 1)
            if latest and latest[0].sip is not None and latest[0].sip.call_id == request.call_id:
                call.call_id = latest[0].call_id
                await self._record_status(call, status)
            return
        except MediaSetupFailed as failed:
            call.call_id = failed.call_id
            await self._record_status(call, self._final(call, CallOutcome.MEDIA_SETUP_FAILED))
            return
        except UnknownSender as unknown:
            self._final(call, CallOutcome.BUSINESS_NUMBER_NOT_ALLOWED, detail=str(unknown))
            return
        except InvalidField as invalid:
            self._final(call, CallOutcome.INVALID_NUMBER, detail=str(invalid))
            return
        call.call_id = record.call_id
        cancelled = asyncio.ensure_future(self._end_when_cancelled(call))
        try:
            await self._follow(call)
        finally:
            if call.server.cancelled.is_set():
                # A CANCEL that crossed the answer: the call must still end here, whatever _follow saw.
                await asyncio.gather(cancelled, return_exceptions=True)
                await self._record_status(call, 487)
            else:
                cancelled.cancel()
                await asyncio.gather(cancelled, return_exceptions=True)

    async def _end_when_cancelled(self, call: _Call) -> None:
        """A CANCEL (answered 200, the INVITE 487, by the transaction layer) ends the call before its answer."""
        await call.server.cancelled.wait()
        await self.calls.end(call.call_id, reason="the PBX cancelled the call (CANCEL)")

    async def _follow(self, call: _Call) -> None:
        """The call's progress as the INVITE's responses, then the dialog until the call ends."""
        server = call.server
        ringing = False
        answered = False
        acknowledged: asyncio.Future[None] | None = None
        async for view in self.calls.updates(call.call_id):
            if view.state is CallState.ENDED:
                if not answered:
                    if server.cancelled.is_set():
                        await self._record_status(call, 487)
                        return
                    status = self._final(call, **self._unanswered_ending(view.outcome))
                    await self._record_status(call, status)
                    return
                break
            if view.state is CallState.RINGING and not ringing and not server.answered:
                ringing = True
                # A 180 with a To tag makes an early dialog: Contact and the Record-Route copies too (§12.1.1).
                ringing_response = response_to(
                    server.request, 180, to_tag=call.to_tag, headers=self._dialog_headers(server)
                )
                self._respond(server, ringing_response)
            elif view.state is CallState.CONNECTED and not answered:
                answered = await self._answer(call)
                if not answered:
                    return
                acknowledged = asyncio.ensure_future(self._end_unless_acknowledged(call))
        if acknowledged is not None:
            acknowledged.cancel()
            await asyncio.gather(acknowledged, return_exceptions=True)
        if not call.hung_up_by_pbx:
            await self._send_bye(call)

    def _unanswered_ending(self, outcome: MachineOutcome | None) -> _Ending:
        """How a placed call that ended before our 200 ends for the PBX (it did not CANCEL: that got 487)."""
        if outcome is MachineOutcome.CANCELLED:
            # Ended here, not by the PBX: so that it fails over or retries, never a 487 it did not ask for.
            if self._closing:
                return {"reason": CallOutcome.SHUTTING_DOWN, "next_allowed_at": self.clock.now() + SHUTDOWN_RETRY}
            return {"reason": CallOutcome.ENDED_BY_BUSINESS}
        if outcome is MachineOutcome.ANSWERED:
            return {"reason": CallOutcome.ENDED_AT_ANSWER}  # the user answered and it ended before our 200
        ending = SIP_ENDINGS.get(outcome) if outcome is not None else None
        return {"reason": ending or CallOutcome.PLATFORM_FAILURE}

    async def _end_unless_acknowledged(self, call: _Call) -> None:
        """§13.3.1.4: a 2xx never acknowledged within 64*T1 means the PBX is not in the call: end it (and BYE)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.server.acknowledged.wait(), 64 * self.endpoint.layer.timers.t1)
            return
        log.warning("SIP call %s: the PBX never acknowledged the 200 OK", call.call_id)
        await self.calls.end(call.call_id, reason="the PBX never acknowledged the 200 OK (no ACK)")

    async def _answer(self, call: _Call) -> bool:
        """200 OK with the engine's SDP for the PBX; False when there is none to give (the call is ended)."""
        server = call.server
        assert call.engine_leg is not None
        try:
            sdp = await asyncio.wait_for(call.engine_leg.peer_answer(), PEER_ANSWER_WAIT)
        except (TimeoutError, EngineBridgeUnavailable) as error:
            log.warning("SIP call %s: no SDP for the PBX: %s", call.call_id, error)
            await self.calls.end(call.call_id, reason=f"the media engine gave no SDP for the PBX: {error}")
            await self._record_status(call, self._final(call, CallOutcome.MEDIA_SETUP_FAILED))
            return False
        if server.answered:  # cancelled while the answer was made
            return False
        headers = [
            *self._dialog_headers(server),
            ("Allow", ", ".join(ALLOWED_METHODS)),
            ("Content-Type", "application/sdp"),
        ]
        call.answer_sdp = sdp
        call.answered_at = asyncio.get_running_loop().time()
        ok = response_to(server.request, 200, to_tag=call.to_tag, headers=headers, body=sdp.encode())
        server.respond(ok)
        await self._record_status(call, 200)
        return True

    async def _in_dialog(self, call: _Call, message: ServerRequest | Request | Response) -> None:
        """What the PBX sends inside the call's dialog: BYE ends the call; a re-INVITE or UPDATE (a session-timer
        refresh, a hold) gets 200 with the media wacall already gave, the WhatsApp leg untouched (the platform has
        no renegotiation); a CSeq out of order gets 500 (§12.2.2)."""
        if not isinstance(message, ServerRequest):
            return  # the ACK of our 200 (the transaction layer marked it) or a stray response
        request = message.request
        if call.dialog is not None:
            try:
                call.dialog = call.dialog.receive(request)
            except (DialogError, SipParseError) as error:
                status = error.status_code if isinstance(error, DialogError) else 400
                self.endpoint.refuse(message, status, f"BAD_REQUEST: {error}")
                return
        if request.method == "BYE":
            message.respond(response_to(request, 200))
            call.server.stop_resending()  # the dialog is over: no more 2xx for an ACK that will not come
            call.hung_up_by_pbx = True
            if call.call_id:
                await self.calls.end(call.call_id, reason="the PBX hung up (BYE)")
        elif request.method == "OPTIONS":
            message.respond(response_to(request, 200, headers=[("Allow", ", ".join(ALLOWED_METHODS))]))
        elif request.method in ("INVITE", "UPDATE"):
            self._refresh(call, message)
        else:
            self.endpoint.refuse(
                message,
                405,
                "METHOD_NOT_ALLOWED: inside a call wacall takes BYE, re-INVITE, UPDATE and OPTIONS",
                [("Allow", "INVITE, ACK, BYE, UPDATE, OPTIONS")],
            )

    def _refresh(self, call: _Call, server: ServerRequest) -> None:
        """A re-INVITE or UPDATE: 200 with the SDP already given (its o= version moved on only if the direction the
        offer asks for changed it, RFC 3264 §8), or without a body for an UPDATE that offers nothing."""
        request = server.request
        if not call.answer_sdp:
            # Before our 200 there is nothing to keep (§14.2: a re-INVITE before the first one is answered).
            server.respond(response_to(request, 491, headers=[("Retry-After", "1")]))
            return
        offer = request.body.decode("utf-8", "replace") if request.body else ""
        headers = [*self._dialog_headers(call.server)[-1:], ("Allow", ", ".join(ALLOWED_METHODS))]
        if request.method == "UPDATE" and not offer:
            server.respond(response_to(request, 200, headers=headers))
            return
        call.answer_sdp = answer_again(call.answer_sdp, offer)
        headers.append(("Content-Type", "application/sdp"))
        server.respond(response_to(request, 200, headers=headers, body=call.answer_sdp.encode()))

    async def _send_bye(self, call: _Call) -> None:
        """The call ended on WhatsApp's side (or here): tell the PBX, inside the dialog, once it has ACKed our 200
        (§15: a BYE never goes before the ACK; 64*T1 at most, then the dialog is the PBX's to time out)."""
        if call.dialog is None:
            return
        server = call.server
        layer = self.endpoint.layer
        ack_due = call.answered_at + 64 * layer.timers.t1 - asyncio.get_running_loop().time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.acknowledged.wait(), max(0.0, ack_due))
        server.stop_resending()
        source = server.source
        try:
            target = self.endpoint.dialog_target(call.dialog, transport=source.transport)
        except SipParseError as error:
            log.warning(
                "SIP call %s: the dialog's target is unusable (%s): BYE to the INVITE's source", call.call_id, error
            )
            target = Target(source.transport, source.host, source.port, source.connection)
        try:
            via = Via.parse(layer.via(target.transport, host=self._local_host(server)))
            call.dialog, bye = call.dialog.create_request("BYE", via=via)
            response = await layer.request(bye, target)
            log.info("SIP call %s: BYE to the PBX answered %d", call.call_id, response.status_code)
        except (TransactionTimeout, TransportFailed, SipTransportError, SipParseError) as error:
            # The PBX may still think the call is up: whoever runs it needs to see this.
            log.warning("SIP call %s: BYE to the PBX at %s failed: %s", call.call_id, target, error)

    # --- responses ---------------------------------------------------------------------------------------------------

    def _final(
        self,
        call: _Call,
        reason: Reason | CallOutcome,
        *,
        next_allowed_at: datetime | None = None,
        detail: str | None = None,
    ) -> int:
        """Refuse (or end) the INVITE for `reason` with its Warning (and Retry-After); returns the status the INVITE
        got (487 when a CANCEL came first)."""
        response = final_response(
            call.server.request,
            reason,
            agent=self.endpoint.agent,
            to_tag=call.to_tag,
            now=self.clock.now() if next_allowed_at is not None else None,
            next_allowed_at=next_allowed_at,
            detail=detail,
        )
        self._respond(call.server, response)
        return 487 if call.server.cancelled.is_set() else response.status_code

    def _refuse(self, server: ServerRequest, status: int, to_tag: str, text: str) -> None:
        warning = ("Warning", str(Warning(WARN_CODE, self.endpoint.agent, text)))
        self._respond(server, response_to(server.request, status, to_tag=to_tag, headers=[warning]))

    @staticmethod
    def _respond(server: ServerRequest, response: Response) -> None:
        """Send `response` unless the INVITE already has its final one (a CANCEL got it 487)."""
        if not server.answered:
            server.respond(response)

    async def _record_status(self, call: _Call, status: int) -> None:
        if not call.call_id:
            return
        call.leg = dataclasses.replace(call.leg, last_status=status)
        await self.calls.record_sip_leg(call.call_id, call.leg)

    def _dialog_headers(self, server: ServerRequest) -> list[tuple[str, str]]:
        """What each response making a dialog carries (§12.1.1): every Record-Route of the INVITE, in order, so the
        PBX's requests keep to the proxies that asked; and our Contact."""
        routes = [("Record-Route", value) for value in server.request.headers.get_all("Record-Route")]
        return [*routes, ("Contact", f"<{self._contact(server)}>")]

    def _local_host(self, server: ServerRequest) -> str:
        """The host the PBX reached us at: the transport's address, or the Request-URI's host when we listen on
        every interface (never 0.0.0.0 in a Contact or a Via)."""
        host = self.endpoint.transports.local_address(server.source.transport)[0]
        if host in ("0.0.0.0", "::"):
            with contextlib.suppress(SipParseError):
                uri = parse_uri(server.request.uri)
                if isinstance(uri, SipURI):
                    host = uri.host
        return f"[{host}]" if ":" in host and not host.startswith("[") else host

    def _contact(self, server: ServerRequest) -> str:
        """Our Contact for the dialog: where the PBX reached us."""
        transport = server.source.transport
        port = self.endpoint.transports.local_address(transport)[1]
        scheme = "sips" if transport == "TLS" else "sip"
        suffix = ";transport=tcp" if transport == "TCP" else ""
        return f"{scheme}:wacall@{self._local_host(server)}:{port}{suffix}"


_MIRRORED = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive", "sendrecv": "sendrecv"}


def answer_again(given: str, offer: str) -> str:
    """The answer to a new offer in a dialog whose media do not change: the SDP `given` before, its direction the
    mirror of the one `offer` asks for (a hold: sendonly → recvonly); when that changes anything, its o= version one
    higher (RFC 3264 §8), else exactly as it was. An empty `offer` (a re-INVITE without SDP) gets `given`."""
    asked = "sendrecv"
    for line in offer.splitlines():
        if line.startswith("a=") and line[2:].strip() in _MIRRORED:
            asked = line[2:].strip()
    wanted = _MIRRORED[asked]
    lines = given.split("\r\n") if "\r\n" in given else given.split("\n")
    changed = False
    out: list[str] = []
    placed = False
    for line in lines:
        if line.startswith("a=") and line[2:].strip() in _MIRRORED:
            changed = changed or line[2:].strip() != wanted
            line, placed = f"a={wanted}", True
        out.append(line)
    if not placed and wanted != "sendrecv":
        # No direction written means sendrecv: say the new one in the (last) media section.
        end = len(out) - 1 if out and out[-1] == "" else len(out)
        out.insert(end, f"a={wanted}")
        changed = True
    if changed:
        for index, line in enumerate(out):
            if line.startswith("o="):
                fields = line.split(" ")
                if len(fields) >= 6 and fields[2].isdigit():
                    fields[2] = str(int(fields[2]) + 1)
                    out[index] = " ".join(fields)
                break
    return ("\r\n" if "\r\n" in given else "\n").join(out)
