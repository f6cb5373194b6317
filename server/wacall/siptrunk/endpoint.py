"""wacall's SIP endpoint: the transports and the transaction layer the front door and the `sip` route share, and the
dispatch of every request that arrives.

An out-of-dialog INVITE goes to the front door (`on_invite`); OPTIONS is answered 200 (a PBX's keep-alive); a
request inside a dialog (a To tag: BYE, re-INVITE...) goes to the handler registered for that dialog, and an
ACK of a 2xx (which matches no transaction) and a 2xx resent to one of our INVITEs go there too; a 2xx to one of
our INVITEs that matches no dialog (a forking proxy's second answer) goes to the handler registered for that INVITE
(Call-ID, our From tag); a request for a dialog nobody registered gets 481 and any other method 405 with Allow.
Every refusal carries a Warning saying why.

Requests wacall sends inside a dialog go where `dialog_target` says (RFC 3261 §12.2.1.1): the first Route entry,
else the peer's Contact, over the connection the dialog came on while it is open; a connection that carries a
registered dialog is never closed for being idle.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable, Sequence

from wacall.sip.dialog import Dialog
from wacall.sip.message import NameAddr, Request, Response, SipParseError, SipURI, Warning, parse_uri, response_to
from wacall.sip.transactions import TimerValues
from wacall.sipdoor.responses import WARN_CODE, CallOutcome, final_response
from wacall.sipdoor.trunks import Trunk
from wacall.sipio.layer import ServerRequest, TransactionLayer
from wacall.sipio.transport import Connection, Source, Target, Transports

__all__ = [
    "ALLOWED_METHODS",
    "DEFAULT_PORTS",
    "DialogHandler",
    "DialogId",
    "ForkHandler",
    "InviteHandler",
    "SipEndpoint",
    "dialog_id_of",
    "target_of_uri",
]

log = logging.getLogger(__name__)

# What the endpoint takes (RFC 3261 §20.5 Allow); CANCEL and ACK are the transaction layer's and the dialogs'.
ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "UPDATE", "OPTIONS")

# The option tags wacall implements (§19.2): none yet (no 100rel, no session timers as UAS).
SUPPORTED: frozenset[str] = frozenset()

DialogId = tuple[str, str, str]
"""(Call-ID, local tag, remote tag): a dialog as `wacall.sip.dialog.Dialog.id` names it."""

DialogHandler = Callable[[ServerRequest | Request | Response], Awaitable[None]]
"""What a dialog's owner is given: a request inside it to answer, the ACK of its 2xx, or a 2xx resent to its INVITE."""

InviteHandler = Callable[[ServerRequest], Awaitable[None]]
"""The front door: takes an out-of-dialog INVITE and answers it."""

ForkHandler = Callable[[Response], Awaitable[None]]
"""The owner of one of our INVITEs, given a 2xx to it that matches no dialog (another branch of a fork answered)."""

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}


def target_of_uri(uri: SipURI, *, transport: str = "UDP") -> Target:
    """Where requests for `uri` go (RFC 3263 without DNS SRV): its transport parameter, TLS for sips:, else
    `transport`; its port, else the transport's default."""
    chosen = uri.transport or ("TLS" if uri.scheme == "sips" else transport)
    return Target(chosen, uri.host.strip("[]"), uri.port or DEFAULT_PORTS.get(chosen, 5060))


def _option_tags(values: Sequence[str]) -> list[str]:
    return [tag.strip().lower() for value in values for tag in value.split(",") if tag.strip()]


def dialog_id_of(message: Request | Response) -> DialogId:
    """The dialog a message received belongs to, from this side's view: a request's To tag is ours, a response's
    From tag is ours."""
    if isinstance(message, Request):
        return (message.call_id, message.to.tag or "", message.from_.tag or "")
    return (message.call_id, message.from_.tag or "", message.to.tag or "")


class SipEndpoint:
    """The SIP side of wacall: listens (UDP and TCP on one address, TLS on another), runs the transaction layer,
    knows the trunks, and hands each request to whoever answers it. `agent` is the host wacall names itself in
    Warning headers."""

    def __init__(self, trunks: Sequence[Trunk], *, agent: str, timers: TimerValues | None = None) -> None:
        self.trunks = tuple(trunks)
        # A warn-agent is a hostport (§20.43): an IPv6 literal goes in brackets.
        self.agent = f"[{agent}]" if ":" in agent and not agent.startswith("[") else agent
        self.timers = timers
        # Set by the front door; until then (or without one) an INVITE gets 503.
        self.on_invite: InviteHandler | None = None
        self._dialogs: dict[DialogId, DialogHandler] = {}
        # The connection each dialog came on (stream transports): held open, and reused for its requests.
        self._dialog_connections: dict[DialogId, Connection] = {}
        self._invites: dict[tuple[str, str], ForkHandler] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: Transports | None = None
        self._layer: TransactionLayer | None = None

    @property
    def layer(self) -> TransactionLayer:
        """The transaction layer (the `sip` route sends its INVITEs through it)."""
        if self._layer is None:
            raise RuntimeError("the SIP endpoint is not started")
        return self._layer

    @property
    def transports(self) -> Transports:
        return self.layer.transports

    async def start(
        self, address: tuple[str, int] | None, tls: tuple[str, int, ssl.SSLContext] | None = None
    ) -> dict[str, tuple[str, int]]:
        """Listen for UDP and TCP on `address` and for TLS on `tls` (host, port, server context); returns the bound
        address of each transport. Raises OSError when an address cannot be bound (nothing stays open)."""
        transports = Transports(warn_agent=self.agent)
        self._transports = transports
        self._layer = TransactionLayer(transports, self._request, on_stray=self._stray, timers=self.timers)
        self._layer.cancelled_response = self._request_terminated
        try:
            if address is not None:
                await transports.listen(*address)
            if tls is not None:
                await transports.listen_tls(*tls)
        except BaseException:
            await self._layer.close()
            self._layer = None
            raise
        return {name: transports.local_address(name) for name in sorted(transports.listening)}

    async def close(self) -> None:
        """Stop listening, end every transaction and the tasks the endpoint runs."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._layer is not None:
            await self._layer.close()
        for connection in self._dialog_connections.values():
            connection.release()
        self._dialog_connections.clear()
        self._dialogs.clear()
        self._invites.clear()

    # --- what can be observed (leak checks, benchmarks) -----------------------------------------------------------

    @property
    def transaction_count(self) -> int:
        return self._layer.transaction_count if self._layer is not None else 0

    @property
    def dialog_count(self) -> int:
        return len(self._dialogs)

    @property
    def connection_count(self) -> int:
        return self._transports.connection_count if self._transports is not None else 0

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    # --- dialogs ----------------------------------------------------------------------------------------------------

    def register_dialog(
        self, dialog_id: DialogId, handler: DialogHandler, *, connection: Connection | None = None
    ) -> None:
        """Send what arrives inside dialog `dialog_id` to `handler` until it is unregistered. `connection` is the
        stream connection the dialog was made over: it stays open, however quiet, until the dialog is unregistered,
        and `dialog_target` sends the dialog's requests over it while it is open."""
        self._dialogs[dialog_id] = handler
        previous = self._dialog_connections.pop(dialog_id, None)
        if previous is not None:
            previous.release()
        if connection is not None:
            connection.hold()
            self._dialog_connections[dialog_id] = connection

    def unregister_dialog(self, dialog_id: DialogId) -> None:
        self._dialogs.pop(dialog_id, None)
        connection = self._dialog_connections.pop(dialog_id, None)
        if connection is not None:
            connection.release()

    def dialog_target(self, dialog: Dialog, *, transport: str) -> Target:
        """Where a request (BYE, re-INVITE, the ACK of a 2xx) inside `dialog` goes (§12.2.1.1, RFC 3263): to the
        first Route entry if the route set has one, else to the remote target (the peer's Contact), over the URI's
        transport (`transport` when it names none: the one the dialog was made over). While the connection the
        dialog was registered with is open and of that transport, the request goes over it. Raises `SipParseError`
        when that URI is not a SIP URI wacall can send to."""
        uri = NameAddr.parse(dialog.route_set[0]).uri if dialog.route_set else parse_uri(dialog.remote_target)
        if not isinstance(uri, SipURI):
            raise SipParseError(f"cannot send to {uri}: not a sip: or sips: URI")
        try:
            target = target_of_uri(uri, transport=transport)
        except ValueError as error:  # a transport wacall does not speak (sctp, ws...)
            raise SipParseError(f"cannot send to {uri}: {error}") from None
        connection = self._dialog_connections.get(dialog.id)
        if connection is not None and connection.is_open and connection.transport_name == target.transport:
            return Target(target.transport, target.host, target.port, connection)
        return target

    def register_invite(self, call_id: str, local_tag: str, handler: ForkHandler) -> None:
        """Send `handler` each 2xx to our INVITE (Call-ID `call_id`, From tag `local_tag`) that matches no registered
        dialog, until `unregister_invite`: a forking proxy's further answers, each a dialog of its own to ACK and
        end (§13.2.2.4)."""
        self._invites[(call_id, local_tag)] = handler

    def unregister_invite(self, call_id: str, local_tag: str) -> None:
        self._invites.pop((call_id, local_tag), None)

    # --- dispatch ---------------------------------------------------------------------------------------------------

    def refuse(self, server: ServerRequest, status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer `server` with `status` and a Warning saying `text`."""
        warning = ("Warning", str(Warning(WARN_CODE, self.agent, text)))
        tag = server.request.to.tag or secrets.token_hex(6)
        server.respond(response_to(server.request, status, to_tag=tag, headers=[warning, *headers]))

    def _request_terminated(self, invite: Request, to_tag: str) -> Response:
        return final_response(invite, CallOutcome.CANCELLED, agent=self.agent, to_tag=to_tag)

    async def _request(self, server: ServerRequest) -> None:
        request = server.request
        unsupported = [tag for tag in _option_tags(request.headers.get_all("Require")) if tag not in SUPPORTED]
        if unsupported and request.method not in ("ACK", "CANCEL"):
            # §8.2.2.3: a request that requires an extension we do not have is refused, naming what is missing.
            response = final_response(
                request,
                CallOutcome.EXTENSION_UNSUPPORTED,
                agent=self.agent,
                to_tag=request.to.tag or secrets.token_hex(6),
            )
            headers = response.headers.with_header("Unsupported", ", ".join(unsupported))
            server.respond(Response(response.status_code, response.reason, headers, response.body))
            return
        if request.to.tag:
            handler = self._dialogs.get(dialog_id_of(request))
            if handler is None:
                self.refuse(server, 481, "DIALOG_UNKNOWN: no call here has this Call-ID and these tags")
                return
            await handler(server)
            return
        if request.method == "INVITE":
            if self.on_invite is None:
                self.refuse(server, 503, "SIP_UNAVAILABLE: this wacall takes no calls over SIP")
                return
            await self.on_invite(server)
        elif request.method == "OPTIONS":
            allow = ("Allow", ", ".join(ALLOWED_METHODS))
            server.respond(
                response_to(request, 200, to_tag=secrets.token_hex(6), headers=[allow, ("Accept", "application/sdp")])
            )
        elif request.method in ALLOWED_METHODS:
            # BYE outside any dialog (§15): there is no call to end.
            self.refuse(server, 481, f"DIALOG_UNKNOWN: {request.method} must be sent inside a call's dialog")
        else:
            allow = ("Allow", ", ".join(ALLOWED_METHODS))
            self.refuse(server, 405, f"METHOD_NOT_ALLOWED: wacall takes {', '.join(ALLOWED_METHODS)}", [allow])

    def _stray(self, message: Request | Response, source: Source) -> None:
        """An ACK of a 2xx (end to end, no transaction) or a 2xx resent to one of our INVITEs: its dialog's; a 2xx of
        a dialog nobody registered: its INVITE's owner's."""
        try:
            dialog_id = dialog_id_of(message)
        except ValueError:  # a header the dialog needs does not parse: not ours
            return
        handler = self._dialogs.get(dialog_id)
        if handler is not None:
            self._spawn(handler(message))
            return
        if isinstance(message, Response):
            fork = self._invites.get(dialog_id[:2])
            if fork is not None:
                self._spawn(fork(message))

    def _spawn(self, awaitable: Awaitable[None]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP dialog handler failed", exc_info=task.exception())
