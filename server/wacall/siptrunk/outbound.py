"""The PBX leg wacall places: one INVITE to a trunk's target, and the dialog it creates (RFC 3261 §13, §15).

`OutboundCall.invite(sdp)` sends an early-offer INVITE (From: the WhatsApp user; To: the target, or the business
number for a user's call; `X-Wacall-Call-Id`; the route's extra headers), answers one 401/407 digest challenge with
the trunk's credentials, logs 180/183, and on a 2xx sends the ACK and keeps the dialog; it returns the PBX's SDP
answer. A final failure, a timeout (no final response, or none within `answer_timeout`: treated as 408, RFC 3261
§8.1.3.1) or a transport failure (503) raises `PbxRefused` with the status. `hangup()` ends the leg whatever its
state: BYE in a dialog, CANCEL while the INVITE is pending (a 2xx that crosses the CANCEL is ACKed and BYEd). A BYE
from the PBX arrives through the dialog router (the SIP endpoint) and is answered 200, then `on_bye` runs.

`last_status` is the leg's last final status (0 before it has one), what a call records of its SIP leg.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        """`caller` is the From user (the WhatsApp user's number), `callee` the To URI. `headers` must be checked
        already (no CR/LF, nothing the leg writes itself)."""
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
        self.answer_timeout = answer_timeout
        self.host = self._advertised_host()
        self.call_id = f"{secrets.token_hex(12)}@{self.host}"
        self.last_status = 0
        self.dialog: Dialog | None = None
        self._pending: Request | None = None  # the INVITE in flight (the last one, after a challenge)
        self._provisional = asyncio.Event()
        self._inviting: asyncio.Task[Response] | None = None
        self._ended = False

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
        """Place the leg with our SDP offer; the PBX's SDP answer once it answered 2xx (ACK sent). PbxRefused else."""
        if self._ended:
            raise PbxRefused(487, "the call ended before the PBX was invited")
        self._inviting = asyncio.ensure_future(self._send_invite(self._invite(sdp)))
        try:
            response = await asyncio.wait_for(asyncio.shield(self._inviting), self.answer_timeout)
        except TimeoutError:
            log.info("SIP leg %s: no final response within %g s: CANCEL", self.call_id, self.answer_timeout)
            await self._cancel()
            self.last_status = 408
            raise PbxRefused(408, "Request Timeout (no answer from the PBX)") from None
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
        """The INVITE, and once more with credentials after one digest challenge."""
        flow = self.auth.auth_flow(invite) if self.auth is not None else None
        outgoing = next(flow) if flow is not None else invite
        while True:
            self._pending = outgoing
            response = await self.layer.request(outgoing, self.target, on_provisional=self._provisional_received)
            if flow is None:
                return response
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return response

    def _provisional_received(self, response: Response) -> None:
        self._provisional.set()
        if response.status_code > 100:
            log.info("SIP leg %s: %d %s", self.call_id, response.status_code, response.reason)

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
        self.dialog = dialog
        await self._send_ack(dialog, invite.cseq.seq)
        self.router.register_dialog(dialog.id, self._in_dialog)
        if self._ended:  # hung up while the 2xx was on its way: it is ours to end
            await self._bye()
            raise PbxRefused(487, "the call ended while the PBX answered")
        content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/sdp" or not response.body:
            await self.hangup()
            self.last_status = 488
            raise PbxRefused(488, "Not Acceptable Here (the PBX answered without SDP)")
        return response.body.decode(errors="replace")

    async def _send_ack(self, dialog: Dialog, seq: int) -> None:
        target = self._dialog_target(dialog)
        ack = dialog.ack(seq, via=self._via(target.transport))
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
        """End the leg: BYE in a dialog, CANCEL while the INVITE is pending; nothing when it never started or
        already ended. Never raises."""
        if self._ended:
            return
        self._ended = True
        if self.dialog is not None:
            await self._bye()
        elif self._inviting is not None and not self._inviting.done():
            await self._cancel()

    async def _cancel(self) -> None:
        invite = self._pending
        if invite is None:
            return
        self._ended = True
        with contextlib.suppress(asyncio.TimeoutError):
            # §9.1: a CANCEL only after a provisional response; the INVITE's own timers bound the wait.
            await asyncio.wait_for(self._provisional.wait(), 4.0)
        try:
            await self.layer.request(cancel_request(invite), self.target)
        except (TransactionTimeout, TransportFailed, SipTransportError) as error:
            log.info("SIP leg %s: CANCEL got no answer: %s", self.call_id, error)
        inviting = self._inviting
        if inviting is None:
            return
        try:
            response = await asyncio.wait_for(asyncio.shield(inviting), 32.0)
        except (TimeoutError, TransactionTimeout, TransportFailed, SipTransportError):
            return
        if 200 <= response.status_code < 300:  # the 2xx crossed our CANCEL: acknowledge it, then end it (§9.1)
            with contextlib.suppress(PbxRefused):
                await self._established(response)
        elif not self.last_status:
            self.last_status = response.status_code

    async def _bye(self) -> None:
        dialog = self.dialog
        if dialog is None:
            return
        self.router.unregister_dialog(dialog.id)
        target = self._dialog_target(dialog)
        dialog, bye = dialog.create_request("BYE", via=self._via(target.transport))
        self.dialog = None
        try:
            response = await self.layer.request(bye, target)
            log.info("SIP leg %s: BYE answered %d", self.call_id, response.status_code)
        except (TransactionTimeout, TransportFailed, SipTransportError) as error:
            log.info("SIP leg %s: BYE got no answer: %s", self.call_id, error)

    async def _in_dialog(self, message: ServerRequest | Request | Response) -> None:
        """What the PBX sends inside the dialog: BYE ends the leg (and the call, through `on_bye`); a resent 2xx
        means our ACK was lost, so it is sent again."""
        dialog = self.dialog
        if isinstance(message, Response):
            invite = self._pending
            if dialog is not None and invite is not None and message.cseq.method == "INVITE":
                await self._send_ack(dialog, message.cseq.seq)
            return
        if isinstance(message, Request):
            return  # an ACK: we never answer an INVITE inside this dialog with a 2xx
        server = message
        request = server.request
        if dialog is None:
            server.respond(response_to(request, 481))
            return
        try:
            self.dialog = dialog.receive(request)
        except DialogError as error:
            server.respond(response_to(request, error.status_code))
            return
        if request.method == "BYE":
            server.respond(response_to(request, 200))
            self.router.unregister_dialog(dialog.id)
            self.dialog = None
            self._ended = True
            if self.on_bye is not None:
                await self.on_bye()
        elif request.method == "ACK":
            return
        elif request.method in ("OPTIONS", "INFO", "UPDATE"):
            server.respond(response_to(request, 200))
        else:
            # A re-INVITE would change media the platform cannot renegotiate: refused, the call goes on as it was.
            server.respond(response_to(request, 488 if request.method == "INVITE" else 501))


def _host_in_uri(host: str) -> str:
    return f"[{host}]" if ":" in host else host
