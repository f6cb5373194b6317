"""The transaction layer (RFC 3261 §17) over real transports, and a small user-agent API on it.

It files every transaction under its key (`client_key`, `server_key`), feeds each message received to the
transaction it belongs to, creates a server transaction for each new request and hands it to the TU
(`on_request`), and performs what the transactions ask: send through the transports, start and cancel timers with
`loop.call_later`, end. Timers run in real time: `now` is the event loop's monotonic clock (what `call_later`
counts in), and `TimerValues` (T1, T2, T4) set how long they are, so tests shorten them instead of faking time.
(The machines themselves take `now` as data and are tested against a manual clock in `tests/sip_pair.py`.)

What belongs to no transaction is handled as §17 and §18 say: a response matching no client transaction is dropped,
except a 2xx to INVITE (a retransmission the dialog acknowledges), which goes to `on_stray`, as does an ACK matching
no server transaction (the ACK of a 2xx, end to end). A 2xx the TU sends to an INVITE is resent over UDP until its
ACK comes (§13.3.1.4: the UAS core's duty, not the transaction's), which sets `ServerRequest.acknowledged`, or until
the TU says the dialog is over (`ServerRequest.stop_resending`). For 64*T1 after its 2xx an INVITE stays Accepted (RFC
6026 §7.1): a retransmission of it is absorbed, never handed to the TU as a new request. A CANCEL is answered by the
layer (§9.2): 481 when it matches no INVITE, else 200, and the INVITE, if still unanswered, 487, its
`ServerRequest.cancelled` set.

The UA API: `request()` sends a request in a new client transaction and returns its final response (provisional
ones are reported to a callback), raising `TransactionTimeout` or `TransportFailed`; `request_with_auth()` does the
same answering one 401/407 digest challenge (`DigestAuth.auth_flow`); `abandon()` gives up on a client transaction
(an INVITE whose CANCEL brought no final response, §9.1), its `request()` raising `TransactionAbandoned`;
`ServerRequest.respond()` answers a request.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from wacall.sip.digest import DigestAuth
from wacall.sip.message import MAGIC_COOKIE, Headers, Request, Response, SipParseError, response_to
from wacall.sip.transactions import (
    Action,
    CancelTimer,
    ClientTransaction,
    Deliver,
    Send,
    ServerTransaction,
    StartTimer,
    State,
    Terminated,
    Timer,
    TimerValues,
    client_key,
    server_key,
)
from wacall.sipio.transport import SipTransportError, Source, Target, Transports

__all__ = [
    "RequestHandler",
    "ServerRequest",
    "StrayHandler",
    "TransactionAbandoned",
    "TransactionLayer",
    "TransactionTimeout",
    "TransportFailed",
    "cancel_request",
    "new_branch",
]

log = logging.getLogger(__name__)


class TransactionTimeout(Exception):
    """No final response came before Timer B or F fired (§8.1.3.1: the TU acts as on a 408)."""


class TransactionAbandoned(TransactionTimeout):
    """The TU gave up waiting for the final response (`TransactionLayer.abandon`)."""


class TransportFailed(Exception):
    """The transport could not carry the request (§8.1.3.1: the TU acts as on a 503)."""


def new_branch() -> str:
    """A fresh Via branch with RFC 3261's cookie (§8.1.1.7)."""
    return f"{MAGIC_COOKIE}{secrets.token_hex(10)}"


def cancel_request(invite: Request) -> Request:
    """The CANCEL of `invite` (§9.1): its Request-URI, top Via (same branch), Route, From, To, Call-ID, and CSeq
    number with method CANCEL."""
    headers = invite.headers
    items: list[tuple[str, str]] = [("Via", headers.get_all("Via")[0])]
    items += [("Route", v) for v in headers.get_all("Route")]
    items += [
        ("Max-Forwards", "70"),
        ("From", headers.get("From") or ""),
        ("To", headers.get("To") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.seq} CANCEL"),
    ]
    return Request("CANCEL", invite.uri, Headers(items))


@dataclass(eq=False)
class ServerRequest:
    """A request the TU is asked to answer, and the server transaction that carries its responses."""

    request: Request
    source: Source
    _layer: TransactionLayer
    _transaction: ServerTransaction
    # Set when a CANCEL for this INVITE came before its final response (the layer has answered 487).
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when the ACK of this INVITE's 2xx came (§13.3.1.4); until then, over UDP, the layer resends the 2xx.
    acknowledged: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def answered(self) -> bool:
        """A final response was sent (or the transaction is over)."""
        return self._transaction.state not in (State.TRYING, State.PROCEEDING)

    def respond(self, response: Response) -> None:
        """Send `response` through the transaction (retransmitted over UDP as §17.2 says). A second final response
        raises `TransactionUsageError`."""
        layer = self._layer
        layer._perform(self._transaction, self._transaction.respond(response, layer.now()))
        if self.request.method == "INVITE" and 200 <= response.status_code < 300:
            layer._await_ack(self, response)
            layer._accept(self)

    def stop_resending(self) -> None:
        """Stop resending this INVITE's 2xx (the dialog is over: a BYE went or came); `acknowledged` stays as is."""
        self._layer._forget_2xx(self)


RequestHandler = Callable[[ServerRequest], Awaitable[None] | None]
StrayHandler = Callable[[Request | Response, Source], None]


@dataclass(eq=False)
class _Unacknowledged:
    """A 2xx to INVITE waiting for its ACK: the UAS core resends it over UDP, T1 doubling up to T2, for 64*T1."""

    server: ServerRequest
    response: Response
    deadline: float
    interval: float
    handle: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Client:
    transaction: ClientTransaction
    target: Target
    final: asyncio.Future[Response]
    on_provisional: Callable[[Response], None] | None


class TransactionLayer:
    """Runs client and server transactions over `transports` (it becomes their message handler)."""

    def __init__(
        self,
        transports: Transports,
        on_request: RequestHandler,
        *,
        on_stray: StrayHandler | None = None,
        timers: TimerValues | None = None,
    ) -> None:
        self.transports = transports
        transports.on_message = self._received
        self.on_request = on_request
        self.on_stray = on_stray
        self.timers = timers if timers is not None else TimerValues()
        # The 487 a CANCEL gets its INVITE (§9.2): the TU may say why in its own words (a Warning).
        self.cancelled_response: Callable[[Request, str], Response] = _request_terminated
        self._loop = asyncio.get_running_loop()
        self.now: Callable[[], float] = self._loop.time
        self._clients: dict[tuple[str, str], _Client] = {}
        self._servers: dict[tuple[str, ...], ServerRequest] = {}
        self._timers: dict[tuple[int, Timer], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # 2xx responses to INVITE awaiting their ACK, by (Call-ID, CSeq number): the ACK carries both (§13.2.2.4).
        self._unacknowledged: dict[tuple[str, int], _Unacknowledged] = {}
        # INVITEs answered 2xx, by server key, for 64*T1 (RFC 6026's Accepted state): their retransmissions are
        # absorbed.
        self._accepted: dict[tuple[str, ...], asyncio.TimerHandle] = {}
        # Client transactions to abandon if still without a final response, by client key.
        self._abandoning: dict[tuple[str, str], asyncio.TimerHandle] = {}

    @property
    def transaction_count(self) -> int:
        """Transactions alive (in any state short of Terminated)."""
        return len(self._clients) + len(self._servers)

    def via(self, transport: str, *, host: str | None = None) -> str:
        """A top Via for a new request sent over `transport` from this endpoint: its listening address as sent-by
        (or `host`), a fresh branch, and `rport` asked for (RFC 3581). An endpoint that does not listen for TLS names
        its TCP address: responses come back over the connection the request goes on anyway (§18.2.2)."""
        listening = self.transports.listening
        chosen = transport if transport in listening or transport != "TLS" else "TCP"
        local_host, port = self.transports.local_address(chosen)
        return f"SIP/2.0/{transport} {host or local_host}:{port};branch={new_branch()};rport"

    # --- The UA API -----------------------------------------------------------------------------------------------

    async def request(
        self, request: Request, target: Target, *, on_provisional: Callable[[Response], None] | None = None
    ) -> Response:
        """Send `request` to `target` in a new client transaction and return its final response (for an INVITE, the
        first 2xx or the failure); each provisional response is passed to `on_provisional` first."""
        transaction = ClientTransaction(request, reliable=target.transport != "UDP", timers=self.timers)
        if transaction.key in self._clients:
            raise ValueError(f"a client transaction with branch {transaction.key[0]!r} is already running")
        client = _Client(transaction, target, self._loop.create_future(), on_provisional)
        self._clients[transaction.key] = client
        self._perform(transaction, transaction.start(self.now()))
        return await client.final

    async def request_with_auth(
        self,
        request: Request,
        target: Target,
        auth: DigestAuth,
        *,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> Response:
        """`request`, sent again with credentials if answered 401 or 407 with a challenge `auth` can answer (a new
        transaction, CSeq one higher). Returns the last final response."""
        flow = auth.auth_flow(request)
        outgoing = next(flow)
        while True:
            response = await self.request(outgoing, target, on_provisional=on_provisional)
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return response

    def abandon(self, request: Request, *, after: float = 0.0) -> None:
        """Give up on the client transaction that sent `request` if it has no final response `after` seconds from
        now (at once by default): its timers stop, it is forgotten, and its `request()` raises
        `TransactionAbandoned`. §9.1: an INVITE whose CANCEL got no final response is abandoned 64*T1 after the
        CANCEL was sent. Nothing happens for a transaction already over."""
        key = client_key(request)
        if (previous := self._abandoning.pop(key, None)) is not None:
            previous.cancel()
        client = self._clients.get(key)
        if client is None:
            return
        if after > 0:
            self._abandoning[key] = self._loop.call_later(after, self._abandon_now, key, client)
        else:
            self._abandon_now(key, client)

    def _abandon_now(self, key: tuple[str, str], client: _Client) -> None:
        self._abandoning.pop(key, None)
        if self._clients.get(key) is not client:
            return
        del self._clients[key]
        for timer in Timer:
            if (handle := self._timers.pop((id(client.transaction), timer), None)) is not None:
                handle.cancel()
        if not client.final.done():
            client.final.set_exception(TransactionAbandoned(f"no final response from {client.target}: abandoned"))

    async def send_stateless(self, message: Request | Response, target: Target) -> None:
        """Send outside any transaction: the ACK of a 2xx, a 2xx the TU retransmits (§13.3.1.4). Raises
        `SipTransportError` if it cannot be sent."""
        await self.transports.send(message.serialize(), target)

    async def close(self) -> None:
        """Stop every timer, fail every pending request with `TransportFailed`, close the transports."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for waiting in self._unacknowledged.values():
            if waiting.handle is not None:
                waiting.handle.cancel()
        self._unacknowledged.clear()
        for handle in [*self._accepted.values(), *self._abandoning.values()]:
            handle.cancel()
        self._accepted.clear()
        self._abandoning.clear()
        for client in self._clients.values():
            if not client.final.done():
                client.final.set_exception(TransportFailed("the transaction layer was closed"))
        self._clients.clear()
        self._servers.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self.transports.close()

    # --- Receiving ------------------------------------------------------------------------------------------------

    def _received(self, message: Request | Response, source: Source) -> None:
        try:
            if isinstance(message, Response):
                self._response(message, source)
            else:
                self._request(message, source)
        except SipParseError as error:
            # A message the transport accepted whose Via or CSeq cannot be matched (a branch missing, say).
            log.info("SIP message from %s:%d dropped: %s", source.host, source.port, error)

    def _response(self, response: Response, source: Source) -> None:
        branch = response.top_via.branch
        client = self._clients.get((branch or "", response.cseq.method))
        if client is not None:
            transaction = client.transaction
            self._perform(transaction, transaction.response_received(response, self.now()))
        elif response.cseq.method == "INVITE" and 200 <= response.status_code < 300:
            self._stray(response, source)
        else:
            log.debug("SIP response matching no transaction dropped (§17.1.3): %s", response.status_code)

    def _request(self, request: Request, source: Source) -> None:
        now = self.now()
        key = server_key(request)
        existing = self._servers.get(key)
        if existing is not None:
            self._perform(existing._transaction, existing._transaction.request_received(request, now))
            return
        if request.method == "INVITE" and key in self._accepted:
            log.debug("SIP INVITE %s resent after its 2xx: absorbed (RFC 6026)", request.call_id)
            return
        if request.method == "ACK":
            waiting = self._unacknowledged.pop((request.call_id, request.cseq.seq), None)
            if waiting is not None:
                if waiting.handle is not None:
                    waiting.handle.cancel()
                waiting.server.acknowledged.set()
            self._stray(request, source)
            return
        transaction = ServerTransaction(request, reliable=source.reliable, timers=self.timers)
        server = ServerRequest(request, source, self, transaction)
        self._servers[transaction.key] = server
        self._perform(transaction, transaction.start(now))

    def _stray(self, message: Request | Response, source: Source) -> None:
        if self.on_stray is None:
            return
        try:
            self.on_stray(message, source)
        except Exception:
            log.exception("SIP stray-message handler failed")

    def _await_ack(self, server: ServerRequest, response: Response) -> None:
        """§13.3.1.4: the 2xx to an INVITE is the UAS core's to resend (over UDP) until its ACK comes, for 64*T1."""
        key = (response.call_id, response.cseq.seq)
        if (previous := self._unacknowledged.pop(key, None)) is not None and previous.handle is not None:
            previous.handle.cancel()
        waiting = _Unacknowledged(server, response, self.now() + 64 * self.timers.t1, self.timers.t1)
        self._unacknowledged[key] = waiting
        delay = waiting.interval if not server.source.reliable else 64 * self.timers.t1
        waiting.handle = self._loop.call_later(delay, self._resend_2xx, key, waiting)

    def _accept(self, server: ServerRequest) -> None:
        key = server._transaction.key
        if (previous := self._accepted.pop(key, None)) is not None:
            previous.cancel()
        self._accepted[key] = self._loop.call_later(64 * self.timers.t1, self._accepted.pop, key, None)

    def _forget_2xx(self, server: ServerRequest) -> None:
        for key, waiting in list(self._unacknowledged.items()):
            if waiting.server is server:
                del self._unacknowledged[key]
                if waiting.handle is not None:
                    waiting.handle.cancel()

    def _resend_2xx(self, key: tuple[str, int], waiting: _Unacknowledged) -> None:
        if self._unacknowledged.get(key) is not waiting:
            return
        if self.now() >= waiting.deadline or waiting.server.source.reliable:
            # No ACK: the session is the TU's to end (with a BYE); `acknowledged` stays unset.
            del self._unacknowledged[key]
            log.info("SIP 2xx to INVITE %s never acknowledged", key[0])
            return
        self._spawn(self._send_quietly(self.transports.send_response(waiting.response, waiting.server.source)))
        waiting.interval = min(2 * waiting.interval, self.timers.t2)
        waiting.handle = self._loop.call_later(waiting.interval, self._resend_2xx, key, waiting)

    async def _send_quietly(self, sending: Awaitable[None]) -> None:
        try:
            await sending
        except SipTransportError as error:
            log.info("SIP send failed: %s", error)

    def _cancel(self, server: ServerRequest) -> None:
        """§9.2: answer a CANCEL, and the INVITE it cancels with 487 if that is still unanswered."""
        cancel = server.request
        invite = self._servers.get(server_key(cancel, cancelled=True))
        if invite is None or invite.request.method != "INVITE":
            server.respond(response_to(cancel, 481, to_tag=secrets.token_hex(6)))
            return
        server.respond(response_to(cancel, 200, to_tag=_to_tag(invite)))
        if not invite.answered:
            invite.respond(self.cancelled_response(invite.request, _to_tag(invite)))
            invite.cancelled.set()

    # --- Performing what the transactions ask -----------------------------------------------------------------------

    def _perform(self, transaction: ClientTransaction | ServerTransaction, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send_later(transaction, action)
            elif isinstance(action, Deliver):
                self._deliver(transaction, action.message)
            elif isinstance(action, StartTimer):
                key = (id(transaction), action.timer)
                if (old := self._timers.pop(key, None)) is not None:
                    old.cancel()
                delay = max(0.0, action.at - self.now())
                self._timers[key] = self._loop.call_later(delay, self._fire, transaction, action.timer, action.at)
            elif isinstance(action, CancelTimer):
                if (handle := self._timers.pop((id(transaction), action.timer), None)) is not None:
                    handle.cancel()
            elif isinstance(action, Terminated):
                self._terminated(transaction, action)

    def _fire(self, transaction: ClientTransaction | ServerTransaction, timer: Timer, at: float) -> None:
        self._timers.pop((id(transaction), timer), None)
        self._perform(transaction, transaction.timer_fired(timer, max(at, self.now())))

    def _send_later(self, transaction: ClientTransaction | ServerTransaction, send: Send) -> None:
        # Where it goes is read now: the transaction may end (and be forgotten) before the send runs.
        if isinstance(transaction, ClientTransaction):
            client = self._clients.get(transaction.key)
            if client is not None:
                self._spawn(self._send(transaction, self.transports.send(send.data, client.target)))
            return
        server = self._servers.get(transaction.key)
        if server is not None and isinstance(send.message, Response):
            self._spawn(self._send(transaction, self.transports.send_response(send.message, server.source)))

    async def _send(self, transaction: ClientTransaction | ServerTransaction, sending: Awaitable[None]) -> None:
        try:
            await sending
        except SipTransportError as error:
            log.info("SIP send failed: %s", error)
            self._perform(transaction, transaction.transport_error(self.now()))

    def _deliver(self, transaction: ClientTransaction | ServerTransaction, message: Request | Response) -> None:
        if isinstance(transaction, ClientTransaction):
            assert isinstance(message, Response)
            client = self._clients.get(transaction.key)
            if client is None:
                return
            if message.status_code < 200:
                if client.on_provisional is not None:
                    try:
                        client.on_provisional(message)
                    except Exception:
                        log.exception("SIP provisional-response callback failed")
            elif not client.final.done():
                client.final.set_result(message)
            return
        server = self._servers.get(transaction.key)
        if server is None:
            return
        # After the transaction's own actions are performed, so the TU's answer finds its timers in place.
        if server.request.method == "CANCEL":
            self._loop.call_soon(self._cancel, server)
        else:
            self._loop.call_soon(self._hand_to_tu, server)

    def _hand_to_tu(self, server: ServerRequest) -> None:
        try:
            result = self.on_request(server)
        except Exception:
            log.exception("SIP request handler failed")
            self._answer_failure(server)
            return
        if inspect.isawaitable(result):
            self._spawn(self._await_tu(server, result))

    async def _await_tu(self, server: ServerRequest, result: Awaitable[None]) -> None:
        try:
            await result
        except Exception:
            log.exception("SIP request handler failed")
            self._answer_failure(server)

    def _answer_failure(self, server: ServerRequest) -> None:
        if not server.answered and server.request.method != "ACK":
            server.respond(response_to(server.request, 500, to_tag=secrets.token_hex(6)))

    def _terminated(self, transaction: ClientTransaction | ServerTransaction, end: Terminated) -> None:
        for timer in Timer:
            if (handle := self._timers.pop((id(transaction), timer), None)) is not None:
                handle.cancel()
        if isinstance(transaction, ClientTransaction):
            client = self._clients.pop(transaction.key, None)
            if (abandoning := self._abandoning.pop(transaction.key, None)) is not None:
                abandoning.cancel()
            if client is not None and not client.final.done():
                if end.transport_error:
                    client.final.set_exception(TransportFailed(f"could not send to {client.target}"))
                else:
                    client.final.set_exception(TransactionTimeout(f"no final response from {client.target}"))
        else:
            self._servers.pop(transaction.key, None)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _request_terminated(invite: Request, to_tag: str) -> Response:
    return response_to(invite, 487, to_tag=to_tag)


def _to_tag(server: ServerRequest) -> str:
    """The To tag of the responses already sent for `server`'s request, or a new one."""
    last = server._transaction.last_response
    tag = last.to.tag if last is not None else None
    return tag or secrets.token_hex(6)
