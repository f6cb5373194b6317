"""The PBX leg wacall places: one INVITE to a trunk's target, and the dialog it creates (RFC 3261 §13, §15).

`OutboundCall.invite(sdp)` sends an early-offer INVITE (From: the WhatsApp user; To: the target, or the business
number for a user's call; `X-Wacall-Call-Id`; the route's extra headers), answers one 401/407 digest challenge with
the trunk's credentials, logs 180/183, and on a 2xx sends the ACK and keeps the dialog; it returns the PBX's SDP
answer. A final failure, a timeout (no final response, or none within `answer_timeout`: treated as 408, RFC 3261
§8.1.3.1) or a transport failure (503) raises `PbxRefused` with the status. `hangup()` ends the leg whatever its
state: BYE in a dialog (after the ACK, and answering a challenge with the trunk's credentials), CANCEL while the
INVITE is pending, only once that very INVITE had a provisional response (a 2xx that crosses the CANCEL is ACKed and
BYEd once, by the INVITE's owner); a hangup during a digest challenge sends no credentialed INVITE. Inside the
dialog, a BYE from the PBX (routed by the SIP endpoint) is answered 200, then `on_bye` runs; a re-INVITE or UPDATE
(hold, session timers) is answered 200 with our SDP unchanged, since the platform's side cannot be renegotiated.

`last_status` is the leg's last final status (0 before it has one), what a call records of its SIP leg.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from wacall.sip.dialog import Dialog, DialogError
from wacall.sip.digest import DigestAuth
from wacall.sip.message import Headers, NameAddr, Request, Response, SipParseError, SipURI, Via, response_to
from wacall.sipio.layer import (
    ServerRequest,
    TransactionLayer,
    TransactionTimeout,
    TransportFailed,
    cancel_request,
)
from wacall.sipio.transport import SipTransportError, Target
from wacall.siptrunk.endpoint import DialogHandler, DialogId

__all__ = ["DialogHandler", "DialogRouter", "OutboundCall", "PbxRefused", "target_of"]

log = logging.getLogger(__name__)

# Longest wait for the PBX's final response once the INVITE is out (it may ring): then CANCEL, as a 408.
ANSWER_TIMEOUT = 60.0
# The same for a user's call: the platform ends one that is not accepted within about 30 s.
INBOUND_ANSWER_TIMEOUT = 25.0
WACALL_CALL_ID_HEADER = "X-Wacall-Call-Id"
DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}


class PbxRefused(Exception):
    """The PBX leg did not come up: `status` is the final status (408 for a timeout, 503 when the request could not
    be sent, 487 after our own CANCEL; 502 or 488 for a 2xx that cannot carry the call: no dialog, no SDP)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.reason = reason


class DialogRouter(Protocol):
    """Where requests inside a dialog are routed (the SIP endpoint): by dialog id, to a handler."""

    def register_dialog(self, dialog_id: DialogId, handler: DialogHandler) -> None: ...

    def unregister_dialog(self, dialog_id: DialogId) -> None: ...

    def register_invite(self, call_id: str, local_tag: str, handler: Callable[[Response], Awaitable[None]]) -> None:
        """Send `handler` each 2xx to our INVITE that matches no registered dialog (a forking proxy's others)."""

    def unregister_invite(self, call_id: str, local_tag: str) -> None: ...


def target_of(uri: SipURI) -> Target:
    """Where requests for `uri` go: its transport parameter (UDP by default, TLS for sips:), host and port."""
    transport = uri.transport or ("TLS" if uri.scheme == "sips" else "UDP")
    return Target(transport, uri.host, uri.port or DEFAULT_PORTS.get(transport, 5060))


class OutboundCall:
    """One INVITE to `target` and the dialog it creates (see the module's docstring)."""

    def __init__(
        self,
        layer: TransactionLayer,
        router: DialogRouter,
        *,
        target: SipURI,
        caller: str,
        callee: str,
        wacall_call_id: str,
        headers: Sequence[tuple[str, str]] = (),
        auth: DigestAuth | None = None,
        on_bye: Callable[[], Awaitable[None]] | None = None,
        on_early_answer: Callable[[str], Awaitable[None]] | None = None,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        """`caller` is the From user (the WhatsApp user's number), `callee` the To URI. `headers` must be checked
        already (no CR/LF, nothing the leg writes itself). `on_early_answer` is given the SDP of the first
        provisional response that carries one (a 183 with early media)."""
        self.layer = layer
        self.router = router
        self.target_uri = target
        self.target = target_of(target)
        self.caller = caller
        self.callee = callee
        self.wacall_call_id = wacall_call_id
        self.extra_headers = tuple(headers)
        self.auth = auth
        self.on_bye = on_bye
        self.on_early_answer = on_early_answer
        self.answer_timeout = answer_timeout
        self.host = self._advertised_host()
        self.call_id = f"{secrets.token_hex(12)}@{self.host}"
        self.last_status = 0
        self.dialog: Dialog | None = None
        self._pending: Request | None = None  # the INVITE in flight (the last one, after a challenge)
        self._round: _Round | None = None
        self._inviting: asyncio.Future[str] | None = None
        self._acknowledged = asyncio.Event()  # the 2xx's ACK is out: a BYE may follow
        self._offer = b""  # our SDP as the PBX has it
        self._answer = b""  # the PBX's SDP answer
        self._ended = False
        self._early_answered = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._local_tag = ""
        self._remote_tag: str | None = None  # the To tag of the 2xx that made our dialog
        self._forks: set[DialogId] = set()  # the other dialogs a forking proxy made, ACKed and ended

    def _local_transport(self) -> str:
        listening = self.layer.transports.listening
        return self.target.transport if self.target.transport in listening else "UDP"

    def _advertised_host(self) -> str:
        """The address the PBX must reach us at (From, Contact, Via): the listening one, or, when the endpoint
        listens on every interface, the local address the system routes toward the target from."""
        host = self.layer.transports.local_address(self._local_transport())[0]
        if host not in ("0.0.0.0", "::", ""):
            return host
        family = socket.AF_INET6 if ":" in self.target.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((self.target.host, self.target.port))  # sends nothing: only picks a route
                return str(probe.getsockname()[0])
            except OSError:
                return socket.gethostname()

    def _via(self, transport: str) -> Via:
        return Via.parse(self.layer.via(transport, host=_host_in_uri(self.host)))

    def _contact(self) -> str:
        transport = self._local_transport()
        port = self.layer.transports.local_address(transport)[1]
        suffix = "" if transport == "UDP" else f";transport={transport.lower()}"
        return f"<sip:wacall@{_host_in_uri(self.host)}:{port}{suffix}>"

    def _invite(self, sdp: str) -> Request:
        items: list[tuple[str, str]] = [
            ("Via", str(self._via(self.target.transport))),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.caller}@{_host_in_uri(self.host)}>;tag={secrets.token_hex(6)}"),
            ("To", f"<{self.callee}>"),
            ("Call-ID", self.call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", self._contact()),
            (WACALL_CALL_ID_HEADER, self.wacall_call_id),
            *self.extra_headers,
            ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"),
            ("Content-Type", "application/sdp"),
        ]
        return Request("INVITE", str(self.target_uri), Headers(items), sdp.encode())

    # --- placing the leg --------------------------------------------------------------------------------------------

    async def invite(self, sdp: str) -> str:
        """Place the leg with our SDP offer; the PBX's SDP answer once it answered 2xx (ACK sent). PbxRefused else.

        One task owns the INVITE's outcome whoever waits for it (this call, or `hangup` while it rings), so a 2xx
        that crosses our CANCEL is acknowledged and ended exactly once."""
        return await asyncio.shield(self.start(sdp))

    def start(self, sdp: str) -> asyncio.Future[str]:
        """What `invite` awaits, started now: the INVITE goes out as soon as the loop runs it. PbxRefused (487) at
        once when the leg already ended; nothing is sent then."""
        if self._ended:
            raise PbxRefused(487, "the call ended before the PBX was invited")
        if self._inviting is not None:
            return self._inviting
        self._offer = sdp.encode()
        invite = self._invite(sdp)
        self._local_tag = invite.from_.tag or ""
        self.router.register_invite(self.call_id, self._local_tag, self._forked)
        self._inviting = asyncio.ensure_future(self._place(invite))
        self._inviting.add_done_callback(self._settled)
        return self._inviting

    def _settled(self, inviting: asyncio.Future[str]) -> None:
        if inviting.cancelled() or inviting.exception() is not None:
            self.router.unregister_invite(self.call_id, self._local_tag)  # no dialog: no fork to end either

    async def _place(self, invite: Request) -> str:
        if self._ended:  # hung up before this task first ran: the INVITE never goes out
            raise PbxRefused(487, "the call ended before the PBX was invited")
        rounds = asyncio.ensure_future(self._send_invite(invite))
        try:
            response = await asyncio.wait_for(asyncio.shield(rounds), self.answer_timeout)
        except TimeoutError:
            log.info("SIP leg %s: no final response within %g s: CANCEL", self.call_id, self.answer_timeout)
            self._ended = True
            await self._cancel_round()
            try:
                crossing: Response | None = await asyncio.wait_for(asyncio.shield(rounds), self._give_up_after())
            except (TimeoutError, TransactionTimeout, TransportFailed, SipTransportError):
                crossing = None
            if crossing is not None and 200 <= crossing.status_code < 300:
                self.last_status = crossing.status_code
                with contextlib.suppress(PbxRefused):
                    await self._established(crossing)
            self.last_status = 408
            raise PbxRefused(
                408, f"Request Timeout (no answer from the PBX within {self.answer_timeout:g} s)"
            ) from None
        except TransactionTimeout:
            self.last_status = 408
            raise PbxRefused(408, "Request Timeout (no final response)") from None
        except (TransportFailed, SipTransportError) as error:
            self.last_status = 503
            raise PbxRefused(503, f"Service Unavailable ({error})") from None
        self.last_status = response.status_code
        if not 200 <= response.status_code < 300:
            raise PbxRefused(response.status_code, response.reason)
        return await self._established(response)

    async def _send_invite(self, invite: Request) -> Response:
        """The INVITE, and once more with credentials after one digest challenge, unless the call ended
        meanwhile (then the challenge is the outcome). Each round is a transaction of its own (`_Round`)."""
        flow = self.auth.auth_flow(invite) if self.auth is not None else None
        outgoing = next(flow) if flow is not None else invite
        while True:
            current = _Round(outgoing, self._early)
            self._round = current
            self._pending = outgoing
            try:
                response = await self.layer.request(outgoing, self.target, on_provisional=current.provisional)
            finally:
                current.answered = True
                current.heard.set()  # nothing to CANCEL any more: wakes a waiting hangup
            if flow is None:
                return response
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return response
            if self._ended:  # hung up during the challenge: the credentialed INVITE is never sent
                return response

    def _early(self, response: Response) -> None:
        """A provisional response: the first one with SDP (a 183's early answer) goes to `on_early_answer`."""
        if self._early_answered or self.on_early_answer is None or self._ended or not _has_sdp(response):
            return
        self._early_answered = True
        task = asyncio.ensure_future(self._apply_early(self.on_early_answer, response.body.decode(errors="replace")))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply_early(self, apply: Callable[[str], Awaitable[None]], sdp: str) -> None:
        try:
            await apply(sdp)
        except Exception as error:  # early media is a nicety: the call goes on toward the final answer
            log.warning("SIP leg %s: the early answer could not be applied: %s", self.call_id, error)

    async def _established(self, response: Response) -> str:
        invite = self._pending
        assert invite is not None
        try:
            dialog = Dialog.as_uac(invite, response)
        except (DialogError, SipParseError) as error:
            # A 2xx we cannot make a dialog of (no Contact, no To tag): without a dialog there is nowhere to send
            # its ACK; the PBX stops resending it after 64*T1 and ends its side (§13.3.1.4).
            self.last_status = 502
            raise PbxRefused(502, f"Bad Gateway (the PBX's 2xx cannot make a dialog: {error})") from None
        # Registered before any await: a BYE from the PBX finds the dialog, and a hangup now BYEs it after the ACK.
        self.dialog = dialog
        self._remote_tag = dialog.remote_tag
        self.router.register_dialog(dialog.id, self._in_dialog)
        await self._send_ack(dialog, invite.cseq.seq)
        self._acknowledged.set()
        if self._ended:  # hung up while the 2xx was on its way: it is ours to end
            await self._bye()
            raise PbxRefused(487, "the call ended while the PBX answered")
        if not _has_sdp(response):
            self._ended = True
            await self._bye()
            self.last_status = 488
            raise PbxRefused(488, "Not Acceptable Here (the PBX answered without SDP)")
        self._answer = response.body
        return response.body.decode(errors="replace")

    def _credentials(self) -> list[tuple[str, str]]:
        """The INVITE's credentials, which its 2xx's ACK carries too (RFC 3261 §22.1)."""
        invite = self._pending
        if invite is None:
            return []
        return [(name, value) for name, value in invite.headers if name in ("Authorization", "Proxy-Authorization")]

    async def _send_ack(self, dialog: Dialog, seq: int) -> None:
        target = self._dialog_target(dialog)
        try:
            ack = dialog.ack(seq, via=self._via(target.transport), headers=self._credentials())
        except (SipParseError, ValueError) as error:  # a route set our own parser cannot build a request on
            log.warning("SIP leg %s: ACK cannot be built: %s", self.call_id, error)
            return
        try:
            await self.layer.send_stateless(ack, target)
        except SipTransportError as error:
            log.info("SIP leg %s: ACK not sent: %s", self.call_id, error)

    def _dialog_target(self, dialog: Dialog) -> Target:
        """Where requests inside the dialog go: the first route if any, else the PBX's Contact (§12.2.1.1)."""
        try:
            uri = NameAddr.parse(dialog.route_set[0]).uri if dialog.route_set else SipURI.parse(dialog.remote_target)
            if isinstance(uri, SipURI):
                return target_of(uri)
        except SipParseError:
            pass
        return self.target

    # --- ending the leg ---------------------------------------------------------------------------------------------

    async def hangup(self) -> None:
        """End the leg: BYE in a dialog, CANCEL while the INVITE is pending (then wait, at most 64*T1, for the
        INVITE's outcome: a 2xx crossing the CANCEL is ACKed and BYEd by the INVITE's owner); nothing when it
        never started or already ended. Never raises."""
        if self._ended:
            return
        self._ended = True
        inviting = self._inviting
        if inviting is not None and not inviting.done():
            await self._cancel(inviting)
        elif self.dialog is not None:
            await self._bye()

    def _give_up_after(self) -> float:
        return 64 * self.layer.timers.t1

    async def _cancel(self, inviting: asyncio.Future[str]) -> None:
        """CANCEL the INVITE in flight, then wait (at most 64*T1) for its owner to settle its outcome."""
        await self._cancel_round()
        with contextlib.suppress(TimeoutError, PbxRefused):
            await asyncio.wait_for(asyncio.shield(inviting), self._give_up_after())

    async def _cancel_round(self) -> None:
        """CANCEL the current INVITE round once it had a provisional response (§9.1: never before) and while it
        has no final response; waits at most 64*T1 for that provisional."""
        current = self._round
        if current is None or current.cancelled:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(current.heard.wait(), self._give_up_after())
        if current.provisional_seen and not current.answered and not current.cancelled:
            current.cancelled = True
            # §9.1: an INVITE whose CANCEL brings no final response is given up 64*T1 after the CANCEL.
            self.layer.abandon(current.invite, after=self._give_up_after())
            try:
                await self.layer.request(cancel_request(current.invite), self.target)
            except (TransactionTimeout, TransportFailed, SipTransportError) as error:
                log.info("SIP leg %s: CANCEL got no answer: %s", self.call_id, error)

    async def _bye(self) -> None:
        dialog = self.dialog
        if dialog is None:
            return
        self.dialog = None
        self.router.unregister_dialog(dialog.id)
        self.router.unregister_invite(self.call_id, self._local_tag)
        # §15: never BYE before the ACK of the 2xx is out.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._acknowledged.wait(), self._give_up_after())
        await self._send_bye(dialog)

    async def _forked(self, response: Response) -> None:
        """A 2xx to our INVITE that matches no registered dialog: a forking proxy's other branch answered (§13.2.2.4:
        each 2xx is a dialog of its own; ours is the first), or our own 2xx resent before its dialog was registered.
        Another branch's dialog is ACKed and ended with a BYE, once."""
        if response.cseq.method != "INVITE" or not 200 <= response.status_code < 300:
            return
        inviting = self._inviting
        if inviting is not None and not inviting.done():
            # The first 2xx may still be on its way to becoming our dialog: wait until it is (or is not).
            with contextlib.suppress(TimeoutError, PbxRefused):
                await asyncio.wait_for(asyncio.shield(inviting), self._give_up_after())
        invite = self._pending
        if invite is None or response.to.tag == self._remote_tag:
            if self.dialog is not None and invite is not None:
                await self._send_ack(self.dialog, response.cseq.seq)
            return
        try:
            other = Dialog.as_uac(invite, response)
        except (DialogError, SipParseError) as error:
            log.info("SIP leg %s: a forked 2xx cannot make a dialog: %s", self.call_id, error)
            return
        await self._send_ack(other, response.cseq.seq)
        if other.id in self._forks:
            return  # a resent 2xx of a branch already ended: the ACK was all it needed
        self._forks.add(other.id)
        log.info("SIP leg %s: another branch answered (To tag %s): ACK and BYE", self.call_id, other.remote_tag)
        await self._send_bye(other)

    async def _send_bye(self, dialog: Dialog) -> None:
        target = self._dialog_target(dialog)
        try:
            dialog, bye = dialog.create_request("BYE", via=self._via(target.transport))
        except (SipParseError, ValueError) as error:  # a route set our own parser cannot build a request on
            log.warning("SIP leg %s: BYE cannot be built: %s", self.call_id, error)
            return
        try:
            if self.auth is not None:  # a PBX may challenge the BYE as it did the INVITE
                response = await self.layer.request_with_auth(bye, target, self.auth)
            else:
                response = await self.layer.request(bye, target)
            log.info("SIP leg %s: BYE answered %d", self.call_id, response.status_code)
        except (TransactionTimeout, TransportFailed, SipTransportError) as error:
            log.info("SIP leg %s: BYE got no answer: %s", self.call_id, error)

    async def _in_dialog(self, message: ServerRequest | Request | Response) -> None:
        """What the PBX sends inside the dialog: BYE ends the leg (and the call, through `on_bye`); a re-INVITE or
        an UPDATE is answered with the SDP the PBX already has (the platform's side cannot be renegotiated); a
        resent 2xx means our ACK was lost, so it is sent again."""
        dialog = self.dialog
        if isinstance(message, Response):
            invite = self._pending
            if dialog is not None and invite is not None and message.cseq.method == "INVITE":
                await self._send_ack(dialog, message.cseq.seq)
            return
        if isinstance(message, Request):
            return  # an ACK of our 2xx to a re-INVITE: nothing to do
        server = message
        request = server.request
        if dialog is None:
            server.respond(response_to(request, 481))
            return
        try:
            received = dialog.receive(request)
        except DialogError as error:
            server.respond(response_to(request, error.status_code))
            return
        if request.method == "BYE":
            self.dialog = received
            server.respond(response_to(request, 200))
            self.router.unregister_dialog(dialog.id)
            self.router.unregister_invite(self.call_id, self._local_tag)
            self.dialog = None
            self._ended = True
            if self.on_bye is not None:
                await self.on_bye()
        elif request.method == "ACK":
            return
        elif request.method in ("INVITE", "UPDATE"):
            self.dialog = received  # its target refresh stands: the answer is a 2xx
            self._answer_session_refresh(server)
        else:
            self.dialog = received
            server.respond(response_to(request, 200 if request.method in ("OPTIONS", "INFO") else 501))

    def _answer_session_refresh(self, server: ServerRequest) -> None:
        """A re-INVITE or UPDATE (hold, a session timer's refresh): 200 with our SDP as the PBX has it, unchanged
        and with the same o= version (RFC 3264 §8), whatever it offers: the platform's side stays as it is."""
        request = server.request
        headers = [("Contact", self._contact()), ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE")]
        has_offer = bool(request.body)
        if request.method == "INVITE" or has_offer:
            headers.append(("Content-Type", "application/sdp"))
            server.respond(response_to(request, 200, headers=headers, body=self._offer))
        else:
            server.respond(response_to(request, 200, headers=headers))


@dataclasses.dataclass(eq=False)
class _Round:
    """One INVITE transaction of the leg (the first, or the one with credentials): whether it had a provisional
    response (only then may it be cancelled, §9.1) and whether its final response came."""

    invite: Request
    on_provisional: Callable[[Response], None]
    provisional_seen: bool = False
    answered: bool = False
    cancelled: bool = False
    heard: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def provisional(self, response: Response) -> None:
        self.provisional_seen = True
        self.heard.set()
        self.on_provisional(response)
        if response.status_code > 100:
            log.info("SIP INVITE %s: %d %s", self.invite.call_id, response.status_code, response.reason)


def _has_sdp(response: Response) -> bool:
    content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return content_type == "application/sdp" and bool(response.body)


def _host_in_uri(host: str) -> str:
    return f"[{host}]" if ":" in host else host
