"""An in-memory pair of SIP user agents for tests: each a transaction layer over the sans-IO core, exchanging bytes
through lists instead of sockets, with timers run against a manual `now`.

`Agent` matches what it receives to its transactions (RFC 3261 §17.1.3, §17.2.3), hands the rest to its TU list
(`received`), and records what it sent (`sent`). `Pair.flush` moves bytes between the two until both are quiet;
`Pair.advance` moves time and fires the timers that fall due, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from wacall.sip.message import Request, Response, StreamFramer, parse_datagram
from wacall.sip.transactions import (
    Action,
    CancelTimer,
    ClientTransaction,
    Deliver,
    Send,
    ServerTransaction,
    StartTimer,
    Terminated,
    Timer,
    client_key,
    server_key,
)

Transaction = ClientTransaction | ServerTransaction


@dataclass
class Agent:
    name: str
    reliable: bool
    outbox: list[bytes] = field(default_factory=list)
    sent: list[Request | Response] = field(default_factory=list)
    received: list[Request | Response] = field(default_factory=list)  # what reached the TU
    clients: dict[tuple[str, str], ClientTransaction] = field(default_factory=dict)
    servers: dict[tuple[str, ...], ServerTransaction] = field(default_factory=dict)
    ended: list[tuple[Transaction, Terminated]] = field(default_factory=list)
    timers: dict[tuple[int, Timer], tuple[float, Transaction]] = field(default_factory=dict)
    framer: StreamFramer = field(default_factory=StreamFramer)

    def send_request(self, request: Request, now: float) -> ClientTransaction:
        """Start a client transaction for `request` (the TU sending it)."""
        transaction = ClientTransaction(request, reliable=self.reliable)
        self.clients[transaction.key] = transaction
        self.perform(transaction, transaction.start(now))
        return transaction

    def send_stateless(self, message: Request | Response) -> None:
        """Send outside any transaction: the ACK for a 2xx, a retransmitted 2xx (the TU's, §13.3.1.4)."""
        self.sent.append(message)
        self.outbox.append(message.serialize())

    def respond(self, request: Request, response: Response, now: float) -> None:
        """The TU answers `request` through its server transaction."""
        transaction = self.servers[server_key(request)]
        self.perform(transaction, transaction.respond(response, now))

    def receive(self, data: bytes, now: float) -> None:
        messages = self.framer.feed(data) if self.reliable else [parse_datagram(data)]
        for message in messages:
            self._dispatch(message, now)

    def _dispatch(self, message: Request | Response, now: float) -> None:
        if isinstance(message, Response):
            client = self.clients.get(client_key(message))
            if client is None:
                self.received.append(message)  # a 2xx retransmission: the dialog's business
            else:
                self.perform(client, client.response_received(message, now))
            return
        server = self.servers.get(server_key(message))
        if server is not None:
            self.perform(server, server.request_received(message, now))
        elif message.method == "ACK":
            self.received.append(message)  # the ACK of a 2xx: end to end, no transaction
        else:
            server = ServerTransaction(message, reliable=self.reliable)
            self.servers[server.key] = server
            self.perform(server, server.start(now))

    def perform(self, transaction: Transaction, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.sent.append(action.message)
                self.outbox.append(action.data)
            elif isinstance(action, Deliver):
                self.received.append(action.message)
            elif isinstance(action, StartTimer):
                self.timers[(id(transaction), action.timer)] = (action.at, transaction)
            elif isinstance(action, CancelTimer):
                self.timers.pop((id(transaction), action.timer), None)
            elif isinstance(action, Terminated):
                self.ended.append((transaction, action))
                if isinstance(transaction, ClientTransaction):
                    self.clients.pop(transaction.key, None)
                else:
                    self.servers.pop(transaction.key, None)

    def next_timer(self) -> float | None:
        return min((at for at, _ in self.timers.values()), default=None)

    def fire_due(self, now: float) -> bool:
        """Fire the earliest timer due at `now`; False if none is due."""
        due = sorted(
            ((at, timer, transaction) for (_, timer), (at, transaction) in self.timers.items() if at <= now),
            key=lambda item: item[0],
        )
        if not due:
            return False
        at, timer, transaction = due[0]
        del self.timers[(id(transaction), timer)]
        self.perform(transaction, transaction.timer_fired(timer, at))
        return True


class Pair:
    """A UAC and a UAS joined by an in-memory link; `drop` decides which datagrams the link loses."""

    def __init__(self, *, reliable: bool = False) -> None:
        self.uac = Agent("uac", reliable)
        self.uas = Agent("uas", reliable)
        self.now = 0.0
        self.drop: Callable[[Agent, bytes], bool] = lambda sender, data: False

    def flush(self) -> None:
        """Deliver everything in flight, both ways, until both sides are quiet."""
        while self.uac.outbox or self.uas.outbox:
            for sender, receiver in ((self.uac, self.uas), (self.uas, self.uac)):
                pending, sender.outbox = sender.outbox, []
                for data in pending:
                    if not self.drop(sender, data):
                        receiver.receive(data, self.now)

    def advance(self, until: float) -> None:
        """Move time to `until`, firing every timer due on the way (each at its own time) and flushing after each."""
        while True:
            times = [t for t in (self.uac.next_timer(), self.uas.next_timer()) if t is not None and t <= until]
            if not times:
                break
            self.now = max(self.now, min(times))
            for agent in (self.uac, self.uas):
                while agent.fire_due(self.now):
                    pass
            self.flush()
        self.now = until
