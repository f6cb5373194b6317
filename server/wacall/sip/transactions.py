"""RFC 3261 §17 transactions as state tables: client and server, INVITE and non-INVITE.

A transaction consumes inputs (a message received, a timer fired, the TU sending a response) together with `now`,
and returns actions for its owner to perform: send these bytes, deliver this message to the TU, start or cancel a
timer, the transaction ended (or timed out). It never reads a clock, sleeps or touches a socket; the owner runs the
timers and calls `timer_fired` when one is due.

Each kind's whole behaviour is one table below, `(state, input) → (next state, effects)`, read with Figures 5-8 of
RFC 3261. A remote input with no row is absorbed (a stray retransmission); a TU input with no row is a misuse and
raises `TransactionUsageError`. Timers are data too (`TIMER_RULES`, Table 4): on a reliable transport (TCP, TLS) the
retransmission timers are never started and the "wait for retransmissions" timers last zero, so those rows apply at
once (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).

RFC 3261's plain rules apply to a 2xx to INVITE: it ends both INVITE transactions, and the TU (the dialog) acknowledges
and retransmits it (§13.3.1.4, §17.1.1.2).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from wacall.sip.message import Headers, Request, Response, SipParseError, response_to

__all__ = [
    "CancelTimer",
    "ClientTransaction",
    "Deliver",
    "Send",
    "ServerTransaction",
    "StartTimer",
    "State",
    "Terminated",
    "Timer",
    "TimerValues",
    "TransactionUsageError",
    "ack_for_failure",
    "client_key",
    "server_key",
]


class TransactionUsageError(RuntimeError):
    """The TU asked a transaction for something its state does not allow (e.g. a second final response)."""


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class Timer(enum.Enum):
    """RFC 3261 Table 4's timers, and the INVITE server's 200 ms wait before it sends 100 Trying itself."""

    A = "A"  # INVITE request retransmit (UDP)
    B = "B"  # INVITE transaction timeout
    D = "D"  # wait for response retransmits
    E = "E"  # non-INVITE request retransmit (UDP)
    F = "F"  # non-INVITE transaction timeout
    G = "G"  # INVITE response retransmit (UDP)
    H = "H"  # wait for ACK receipt
    I = "I"  # wait for ACK retransmits  # noqa: E741 - RFC 3261's name
    J = "J"  # wait for non-INVITE request retransmits
    K = "K"  # wait for non-INVITE response retransmits
    TRYING = "100 Trying"  # §17.2.1: send 100 Trying if the TU has not answered within 200 ms


@dataclass(frozen=True, slots=True)
class TimerValues:
    """T1 (RTT estimate), T2 (maximum retransmit interval for non-INVITE requests and INVITE responses), T4 (maximum
    time a message stays in the network), in seconds: §17.1.1.1 defaults."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


class OnReliable(enum.Enum):
    """What a timer does on a reliable transport."""

    SAME = "same"  # runs as on UDP
    SKIP = "skip"  # not started: nothing is retransmitted over TCP/TLS
    ZERO = "zero"  # fires at once: no retransmissions to absorb


@dataclass(frozen=True, slots=True)
class TimerRule:
    first: Callable[[TimerValues], float]  # the first interval (over UDP)
    on_reliable: OnReliable


TIMER_RULES: dict[Timer, TimerRule] = {
    Timer.A: TimerRule(lambda t: t.t1, OnReliable.SKIP),
    Timer.B: TimerRule(lambda t: 64 * t.t1, OnReliable.SAME),
    Timer.D: TimerRule(lambda t: max(32.0, 64 * t.t1), OnReliable.ZERO),
    Timer.E: TimerRule(lambda t: t.t1, OnReliable.SKIP),
    Timer.F: TimerRule(lambda t: 64 * t.t1, OnReliable.SAME),
    Timer.G: TimerRule(lambda t: t.t1, OnReliable.SKIP),
    Timer.H: TimerRule(lambda t: 64 * t.t1, OnReliable.SAME),
    Timer.I: TimerRule(lambda t: t.t4, OnReliable.ZERO),
    Timer.J: TimerRule(lambda t: 64 * t.t1, OnReliable.ZERO),
    Timer.K: TimerRule(lambda t: t.t4, OnReliable.ZERO),
    Timer.TRYING: TimerRule(lambda t: 0.2, OnReliable.SAME),
}


# --- Actions: what the owner of a transaction must do --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send `data` (the serialised `message`) to the transaction's peer."""

    message: Request | Response
    data: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand `message` to the transaction user."""

    message: Request | Response


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call `timer_fired(timer, now)` at `at` (replaces any pending run of the same timer)."""

    timer: Timer
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction is over; forget it. `timed_out`: Timer B, F or H fired (§8.1.3.1: act as on a 408).
    `transport_error`: the transport failed (§8.1.3.1: act as on a 503)."""

    timed_out: bool = False
    transport_error: bool = False


Action = Send | Deliver | StartTimer | CancelTimer | Terminated


# --- Inputs and effects: the vocabulary of the tables --------------------------------------------------------------


class Input(enum.Enum):
    PROVISIONAL = "1xx received"
    SUCCESS = "2xx received"
    FAILURE = "300-699 received"
    REQUEST = "request retransmission received"
    ACK = "ACK received"
    TU_PROVISIONAL = "TU sends 1xx"
    TU_SUCCESS = "TU sends 2xx"
    TU_FAILURE = "TU sends 300-699"
    TRANSPORT_ERROR = "transport error"
    TIMER_A = Timer.A
    TIMER_B = Timer.B
    TIMER_D = Timer.D
    TIMER_E = Timer.E
    TIMER_F = Timer.F
    TIMER_G = Timer.G
    TIMER_H = Timer.H
    TIMER_I = Timer.I
    TIMER_J = Timer.J
    TIMER_K = Timer.K
    TIMER_TRYING = Timer.TRYING


TU_INPUTS = frozenset({Input.TU_PROVISIONAL, Input.TU_SUCCESS, Input.TU_FAILURE})


class Do(enum.Enum):
    DELIVER = "deliver the message to the TU"
    SEND_REQUEST = "send (again) the request"
    SEND_ACK = "send the ACK for this final response"
    SEND_RESPONSE = "send (again) the latest response"
    SEND_TRYING = "send 100 Trying"
    TIME_OUT = "end, timed out"
    FAIL = "end, transport error"
    END = "end"


@dataclass(frozen=True, slots=True)
class Start:
    """Start `timer` at its first interval."""

    timer: Timer


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart `timer` at twice its last interval, capped at T2 when `capped` (§17.1.2.2, §17.2.1); A is not."""

    timer: Timer
    capped: bool = True


@dataclass(frozen=True, slots=True)
class Steady:
    """Restart `timer` at T2 (§17.1.2.2: a non-INVITE request in Proceeding is retransmitted every T2)."""

    timer: Timer


@dataclass(frozen=True, slots=True)
class Cancel:
    timer: Timer


Effect = Do | Start | Backoff | Steady | Cancel
Row = tuple[State, tuple[Effect, ...]]

# A non-INVITE client's final response: stop retransmitting, tell the TU, absorb retransmissions for a while.
_ANSWERED: tuple[Effect, ...] = (Cancel(Timer.E), Cancel(Timer.F), Do.DELIVER, Start(Timer.K))

# Figure 5.
INVITE_CLIENT: dict[tuple[State, Input], Row] = {
    (State.CALLING, Input.TIMER_A): (State.CALLING, (Do.SEND_REQUEST, Backoff(Timer.A, capped=False))),
    (State.CALLING, Input.TIMER_B): (State.TERMINATED, (Do.TIME_OUT,)),
    (State.CALLING, Input.PROVISIONAL): (State.PROCEEDING, (Cancel(Timer.A), Cancel(Timer.B), Do.DELIVER)),
    (State.CALLING, Input.SUCCESS): (State.TERMINATED, (Do.DELIVER, Do.END)),
    (State.CALLING, Input.FAILURE): (
        State.COMPLETED,
        (Cancel(Timer.A), Cancel(Timer.B), Do.SEND_ACK, Do.DELIVER, Start(Timer.D)),
    ),
    (State.CALLING, Input.TRANSPORT_ERROR): (State.TERMINATED, (Do.FAIL,)),
    (State.PROCEEDING, Input.PROVISIONAL): (State.PROCEEDING, (Do.DELIVER,)),
    (State.PROCEEDING, Input.SUCCESS): (State.TERMINATED, (Do.DELIVER, Do.END)),
    (State.PROCEEDING, Input.FAILURE): (State.COMPLETED, (Do.SEND_ACK, Do.DELIVER, Start(Timer.D))),
    (State.PROCEEDING, Input.TRANSPORT_ERROR): (State.TERMINATED, (Do.FAIL,)),
    # A retransmitted final response means our ACK was lost: ACK again, but the TU heard it once.
    (State.COMPLETED, Input.FAILURE): (State.COMPLETED, (Do.SEND_ACK,)),
    (State.COMPLETED, Input.TRANSPORT_ERROR): (State.TERMINATED, (Do.FAIL,)),
    (State.COMPLETED, Input.TIMER_D): (State.TERMINATED, (Do.END,)),
}

# Figure 6.
NON_INVITE_CLIENT: dict[tuple[State, Input], Row] = {
    (State.TRYING, Input.TIMER_E): (State.TRYING, (Do.SEND_REQUEST, Backoff(Timer.E))),
    (State.TRYING, Input.TIMER_F): (State.TERMINATED, (Do.TIME_OUT,)),
    (State.TRYING, Input.PROVISIONAL): (State.PROCEEDING, (Do.DELIVER,)),
    (State.TRYING, Input.SUCCESS): (State.COMPLETED, _ANSWERED),
    (State.TRYING, Input.FAILURE): (State.COMPLETED, _ANSWERED),
    (State.TRYING, Input.TRANSPORT_ERROR): (State.TERMINATED, (Do.FAIL,)),
    (State.PROCEEDING, Input.TIMER_E): (State.PROCEEDING, (Do.SEND_REQUEST, Steady(Timer.E))),
    (State.PROCEEDING, Input.TIMER_F): (State.TERMINATED, (Do.TIME_OUT,)),
    (State.PROCEEDING, Input.PROVISIONAL): (State.PROCEEDING, (Do.DELIVER,)),
    (State.PROCEEDING, Input.SUCCESS): (State.COMPLETED, _ANSWERED),
    (State.PROCEEDING, Input.FAILURE): (State.COMPLETED, _ANSWERED),
    (State.PROCEEDING, Input.TRANSPORT_ERROR): (State.TERMINATED, (Do.FAIL,)),
    (State.COMPLETED, Input.TIMER_K): (State.TERMINATED, (Do.END,)),
}

# Figure 7. The TU's 2xx ends the transaction: the TU retransmits it until the ACK comes (§13.3.1.4).
INVITE_SERVER: dict[tuple[State, Input], Row] = {
    (State.PROCEEDING, Input.TIMER_TRYING): (State.PROCEEDING, (Do.SEND_TRYING,)),
    (State.PROCEEDING, Input.REQUEST): (State.PROCEEDING, (Do.SEND_RESPONSE,)),
    (State.PROCEEDING, Input.TU_PROVISIONAL): (State.PROCEEDING, (Cancel(Timer.TRYING), Do.SEND_RESPONSE)),
    (State.PROCEEDING, Input.TU_SUCCESS): (State.TERMINATED, (Cancel(Timer.TRYING), Do.SEND_RESPONSE, Do.END)),
    (State.PROCEEDING, Input.TU_FAILURE): (
        State.COMPLETED,
        (Cancel(Timer.TRYING), Do.SEND_RESPONSE, Start(Timer.G), Start(Timer.H)),
    ),
    (State.PROCEEDING, Input.TRANSPORT_ERROR): (State.TERMINATED, (Do.FAIL,)),
    (State.COMPLETED, Input.REQUEST): (State.COMPLETED, (Do.SEND_RESPONSE,)),
    (State.COMPLETED, Input.TIMER_G): (State.COMPLETED, (Do.SEND_RESPONSE, Backoff(Timer.G))),
    (State.COMPLETED, Input.TIMER_H): (State.TERMINATED, (Do.TIME_OUT,)),
    (State.COMPLETED, Input.ACK): (State.CONFIRMED, (Cancel(Timer.G), Cancel(Timer.H), Start(Timer.I))),
    (State.COMPLETED, Input.TRANSPORT_ERROR): (State.TERMINATED, (Do.FAIL,)),
    (State.CONFIRMED, Input.TIMER_I): (State.TERMINATED, (Do.END,)),
}

# Figure 8.
NON_INVITE_SERVER: dict[tuple[State, Input], Row] = {
    (State.TRYING, Input.TU_PROVISIONAL): (State.PROCEEDING, (Do.SEND_RESPONSE,)),
    (State.TRYING, Input.TU_SUCCESS): (State.COMPLETED, (Do.SEND_RESPONSE, Start(Timer.J))),
    (State.TRYING, Input.TU_FAILURE): (State.COMPLETED, (Do.SEND_RESPONSE, Start(Timer.J))),
    (State.PROCEEDING, Input.REQUEST): (State.PROCEEDING, (Do.SEND_RESPONSE,)),
    (State.PROCEEDING, Input.TU_PROVISIONAL): (State.PROCEEDING, (Do.SEND_RESPONSE,)),
    (State.PROCEEDING, Input.TU_SUCCESS): (State.COMPLETED, (Do.SEND_RESPONSE, Start(Timer.J))),
    (State.PROCEEDING, Input.TU_FAILURE): (State.COMPLETED, (Do.SEND_RESPONSE, Start(Timer.J))),
    (State.PROCEEDING, Input.TRANSPORT_ERROR): (State.TERMINATED, (Do.FAIL,)),
    (State.COMPLETED, Input.REQUEST): (State.COMPLETED, (Do.SEND_RESPONSE,)),
    (State.COMPLETED, Input.TIMER_J): (State.TERMINATED, (Do.END,)),
    (State.COMPLETED, Input.TRANSPORT_ERROR): (State.TERMINATED, (Do.FAIL,)),
}

# Where each kind starts and what it does first (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
START: dict[tuple[bool, bool], Row] = {
    # (client?, INVITE?)
    (True, True): (State.CALLING, (Do.SEND_REQUEST, Start(Timer.A), Start(Timer.B))),
    (True, False): (State.TRYING, (Do.SEND_REQUEST, Start(Timer.E), Start(Timer.F))),
    (False, True): (State.PROCEEDING, (Do.DELIVER, Start(Timer.TRYING))),
    (False, False): (State.TRYING, (Do.DELIVER,)),
}


# --- Matching (§17.1.3, §17.2.3) -----------------------------------------------------------------------------------


def client_key(message: Request | Response) -> tuple[str, str]:
    """The client transaction a response belongs to (§17.1.3): top Via branch and CSeq method. Works on the request
    too, so a transaction can be filed under it."""
    branch = message.top_via.branch
    if branch is None:
        raise SipParseError("top Via without a branch")
    return branch, message.cseq.method


def server_key(request: Request, *, cancelled: bool = False) -> tuple[str, ...]:
    """The server transaction a request belongs to (§17.2.3): branch + sent-by + method, with ACK matching its
    INVITE; `cancelled=True` on a CANCEL gives the key of the INVITE it cancels (§9.2).

    A branch without RFC 3261's cookie falls back to RFC 2543 matching (Request-URI, tags, Call-ID, CSeq, top Via).
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" or (cancelled and request.method == "CANCEL") else request.method
    if via.has_magic_cookie:
        return (str(via.branch), via.sent_by.lower(), method)
    to_tag = "" if request.method in ("ACK",) else (request.to.tag or "")
    return (
        request.uri,
        to_tag,
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.seq),
        str(via),
        method,
    )


# --- The machines --------------------------------------------------------------------------------------------------


class _Transaction:
    """The engine shared by every kind: apply a table row's effects."""

    table: dict[tuple[State, Input], Row]

    def __init__(self, request: Request, *, reliable: bool, timers: TimerValues) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.state: State = State.TERMINATED  # set by _begin
        self.last_response: Response | None = None
        self._request_bytes = request.serialize()
        self._response_bytes = b""
        self._intervals: dict[Timer, float] = {}
        self._deadlines: dict[Timer, float] = {}
        self._ack: Request | None = None

    @property
    def pending_timers(self) -> dict[Timer, float]:
        """The timers running now and when each is due."""
        return dict(self._deadlines)

    def timer_fired(self, timer: Timer, now: float) -> list[Action]:
        """Timer `timer` is due. A timer that is no longer running (cancelled, or already handled) does nothing."""
        if self._deadlines.get(timer) is None:
            return []
        del self._deadlines[timer]
        return self._apply(Input(timer), now, None)

    def transport_error(self, now: float) -> list[Action]:
        """The transport could not send a message of this transaction (§17.1.4, §17.2.4)."""
        return self._apply(Input.TRANSPORT_ERROR, now, None)

    def _begin(self, client: bool, now: float) -> list[Action]:
        state, effects = START[(client, self.request.method == "INVITE")]
        self.state = state
        actions: list[Action] = []
        self._run(effects, now, self.request, actions)
        return actions

    def _apply(self, kind: Input, now: float, message: Request | Response | None) -> list[Action]:
        row = self.table.get((self.state, kind))
        if row is None:
            if kind in TU_INPUTS:
                raise TransactionUsageError(f"cannot {kind.value} in state {self.state.value}")
            return []
        if isinstance(message, Response) and kind in TU_INPUTS:
            self.last_response = message
            self._response_bytes = message.serialize()
        self.state, effects = row
        actions: list[Action] = []
        self._run(effects, now, message, actions)
        return actions

    def _run(
        self, effects: tuple[Effect, ...], now: float, message: Request | Response | None, out: list[Action]
    ) -> None:
        immediate: list[Timer] = []
        for effect in effects:
            if isinstance(effect, Do):
                self._do(effect, message, out)
            elif isinstance(effect, Cancel):
                if self._deadlines.pop(effect.timer, None) is not None:
                    out.append(CancelTimer(effect.timer))
            else:
                rule = TIMER_RULES[effect.timer]
                if self.reliable and rule.on_reliable is OnReliable.SKIP:
                    continue
                if self.reliable and rule.on_reliable is OnReliable.ZERO:
                    immediate.append(effect.timer)
                    continue
                if isinstance(effect, Start):
                    interval = rule.first(self.timers)
                elif isinstance(effect, Backoff):
                    interval = 2 * self._intervals[effect.timer]
                    if effect.capped:
                        interval = min(interval, self.timers.t2)
                else:
                    interval = self.timers.t2
                self._intervals[effect.timer] = interval
                self._deadlines[effect.timer] = now + interval
                out.append(StartTimer(effect.timer, now + interval))
        if self.state is State.TERMINATED:
            # Whatever still runs is cancelled before the end is announced: Terminated is always the last action.
            ends = [action for action in out if isinstance(action, Terminated)]
            out[:] = [action for action in out if not isinstance(action, Terminated)]
            for timer in list(self._deadlines):
                del self._deadlines[timer]
                out.append(CancelTimer(timer))
            out.extend(ends)
        # A zero-length timer (reliable transport) fires now: its row applies straight away.
        for timer in immediate:
            out.extend(self._apply(Input(timer), now, None))

    def _do(self, effect: Do, message: Request | Response | None, out: list[Action]) -> None:
        if effect is Do.DELIVER:
            assert message is not None
            out.append(Deliver(message))
        elif effect is Do.SEND_REQUEST:
            out.append(Send(self.request, self._request_bytes))
        elif effect is Do.SEND_RESPONSE:
            if self.last_response is not None:
                out.append(Send(self.last_response, self._response_bytes))
        elif effect is Do.SEND_ACK:
            assert isinstance(message, Response)
            ack = self._ack_for(message)
            out.append(Send(ack, ack.serialize()))
        elif effect is Do.SEND_TRYING:
            trying = response_to(self.request, 100)
            self.last_response = trying
            self._response_bytes = trying.serialize()
            out.append(Send(trying, self._response_bytes))
        elif effect is Do.TIME_OUT:
            out.append(Terminated(timed_out=True))
        elif effect is Do.FAIL:
            out.append(Terminated(transport_error=True))
        else:
            out.append(Terminated())

    def _ack_for(self, response: Response) -> Request:
        # Cached: the same final response retransmitted is acknowledged with the same bytes.
        if self._ack is None or self._ack.headers.get("To") != response.headers.get("To"):
            self._ack = ack_for_failure(self.request, response)
        return self._ack


def ack_for_failure(invite: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300-699 `response` (§17.1.1.3): the INVITE's Request-URI,
    Call-ID, From, top Via and Route headers, the response's To (with its tag), the CSeq number with method ACK."""
    headers = invite.headers
    items: list[tuple[str, str]] = [("Via", headers.get_all("Via")[0])]
    items += [("Route", v) for v in headers.get_all("Route")]
    items += [
        ("Max-Forwards", "70"),
        ("From", headers.get("From") or ""),
        ("To", response.headers.get("To") or ""),
        ("Call-ID", headers.get("Call-ID") or ""),
        ("CSeq", f"{invite.cseq.seq} ACK"),
    ]
    return Request("ACK", invite.uri, Headers(items))


class ClientTransaction(_Transaction):
    """A client transaction (§17.1): sends `request`, retransmits it over UDP, matches its responses.

    Create it, then `start(now)`; feed it `response_received` for every response whose `client_key` is its key, and
    `timer_fired` when a timer it started is due.
    """

    def __init__(self, request: Request, *, reliable: bool, timers: TimerValues = TimerValues()) -> None:
        if request.method == "ACK":
            raise TransactionUsageError("an ACK is sent without a transaction (§17.1.1.3, §13.2.2.4)")
        super().__init__(request, reliable=reliable, timers=timers)
        self.table = INVITE_CLIENT if request.method == "INVITE" else NON_INVITE_CLIENT
        self.key = client_key(request)

    def start(self, now: float) -> list[Action]:
        """Send the request and start the timers."""
        return self._begin(True, now)

    def response_received(self, response: Response, now: float) -> list[Action]:
        code = response.status_code
        kind = Input.PROVISIONAL if code < 200 else Input.SUCCESS if code < 300 else Input.FAILURE
        return self._apply(kind, now, response)


class ServerTransaction(_Transaction):
    """A server transaction (§17.2): delivers `request` to the TU, sends and retransmits the TU's responses, absorbs
    request retransmissions, and (INVITE) waits for the ACK of a non-2xx final response.

    Create it from the first request, then `start(now)`; feed it `request_received` for every request whose
    `server_key` is its key (retransmissions, and the ACK), `respond` for each response of the TU.
    """

    def __init__(self, request: Request, *, reliable: bool, timers: TimerValues = TimerValues()) -> None:
        if request.method == "ACK":
            raise TransactionUsageError("an ACK does not create a server transaction (§17.2.3)")
        super().__init__(request, reliable=reliable, timers=timers)
        self.table = INVITE_SERVER if request.method == "INVITE" else NON_INVITE_SERVER
        self.key = server_key(request)

    def start(self, now: float) -> list[Action]:
        """Deliver the request to the TU (and, for INVITE, arm the 100 Trying timer)."""
        return self._begin(False, now)

    def request_received(self, request: Request, now: float) -> list[Action]:
        return self._apply(Input.ACK if request.method == "ACK" else Input.REQUEST, now, request)

    def respond(self, response: Response, now: float) -> list[Action]:
        """The TU sends `response` through this transaction."""
        if response.cseq.method != self.request.method:
            raise TransactionUsageError(f"a response to {response.cseq.method} sent on a {self.request.method}")
        code = response.status_code
        kind = Input.TU_PROVISIONAL if code < 200 else Input.TU_SUCCESS if code < 300 else Input.TU_FAILURE
        return self._apply(kind, now, response)
