"""The contact centre as a service: the router's steps applied in store transactions, and their decisions carried out.

`QueueService.apply(event)` runs one `router.step` inside one store transaction at the clock's `now`: it reads the
router state (decoding it only when another writer changed its version), steps, appends an event-log entry for the
change and for every decision, and saves the new state. Two agents accepting one call are serialised there, so
exactly one wins, in one process or many. After the commit each decision goes to whoever acts on it:

* offers, withdrawals and presence changes to the agent's live session (`sessions.AgentSession`);
* what happens to a call's media to the `CallActions` the routes install (`set_call_actions`): an assigned call
  moves from hold audio to the agent, a call that waited its queue's maximum hears the closing announcement and is
  hung up, a call whose queue is gone is ended. Until a route installs its actions, `EndOnly` ends calls that must
  end and moves no media.

Every timer is a deadline in the router state; one task sleeps on the service clock until `next_deadline` and steps
with `Tick` (re-armed after every step, so a manual clock's `advance` wakes it at the deadline; never a polling loop).
A deadline set by another process is seen after this process's next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from wacall.calls.machine import CallOutcome, CallState
from wacall.calls.record import from_stored
from wacall.calls.service import CallNotFound, CallService
from wacall.clock import Clock
from wacall.events import EventKind
from wacall.queues import codec, router
from wacall.queues.actions import CallActions, EndOnly, end_call
from wacall.queues.router import (
    EMPTY,
    AgentCallStarted,
    Assigned,
    CallGone,
    CallQueued,
    Decision,
    DeleteAgent,
    DeleteQueue,
    LogIn,
    Offer,
    OfferMade,
    OfferWithdrawn,
    Overflowed,
    PresenceChanged,
    PutAgent,
    PutQueue,
    QueueGone,
    QueueStats,
    QueueTimedOut,
    RouterState,
    RoutingRefused,
    Step,
    Tick,
)
from wacall.queues.sessions import AgentSession
from wacall.rules import engine
from wacall.rules.engine import PermissionState, Source
from wacall.store import EventRecord, Pair, Store, Tx

if TYPE_CHECKING:
    from wacall.permissions import PermissionService, PermissionView

log = logging.getLogger(__name__)


# --- what an offer shows the agent ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallParties:
    """Who a routed call is between (empty numbers for a call this service does not know)."""

    business_number: str
    customer_number: str
    permission: PermissionView | None


# --- the event log's entries ------------------------------------------------------------------------------------


def _change(**fields: Any) -> dict[str, str]:
    """An event's attributes: its ids readable at a glance, and the whole change as JSON (api/queue_messages maps
    it to `ContactCenterChange`)."""
    shown = {k: v for k, v in fields.items() if k in ("queue_id", "agent_id", "call_id", "offer_id") and v}
    return {**shown, "contact_center": json.dumps({k: v for k, v in fields.items() if v not in ("", None)})}


def _micros(value: timedelta) -> int:
    return value // timedelta(microseconds=1)


def _offer_change(offer: Offer, **more: Any) -> dict[str, str]:
    """An offer's attributes in the event log, with what the entry adds."""
    return _change(
        offer_id=offer.offer_id, call_id=offer.call_id, agent_id=offer.agent_id, queue_id=offer.queue_id, **more
    )


def _decision_entry(decision: Decision) -> tuple[EventKind, str, dict[str, str]]:
    """(kind, the call it is about or "", attributes) of a decision's event-log entry."""
    match decision:
        case OfferMade(offer=offer, waited=waited):
            return (
                EventKind.OFFER_MADE,
                offer.call_id,
                _offer_change(offer, waited=_micros(waited)),
            )
        case OfferWithdrawn(offer=offer, why=why):
            return (
                EventKind.OFFER_WITHDRAWN,
                offer.call_id,
                _offer_change(offer, withdrawn_why=why.value),
            )
        case Assigned():
            return (
                EventKind.CALL_ASSIGNED,
                decision.call_id,
                _change(
                    call_id=decision.call_id,
                    agent_id=decision.agent_id,
                    queue_id=decision.queue_id,
                    offer_id=decision.offer_id,
                    waited=_micros(decision.waited),
                ),
            )
        case Overflowed():
            return (
                EventKind.CALL_OVERFLOWED,
                decision.call_id,
                _change(call_id=decision.call_id, queue_id=decision.from_queue, to_queue_id=decision.to_queue),
            )
        case QueueTimedOut():
            return (
                EventKind.QUEUE_TIMED_OUT,
                decision.call_id,
                _change(call_id=decision.call_id, queue_id=decision.queue_id),
            )
        case QueueGone():
            return (
                EventKind.QUEUE_MISSING,
                decision.call_id,
                _change(call_id=decision.call_id, queue_id=decision.queue_id),
            )
        case PresenceChanged():
            return (
                EventKind.AGENT_PRESENCE_CHANGED,
                "",
                _change(agent_id=decision.agent_id, presence=decision.presence.value, presence_why=decision.why.value),
            )
    raise AssertionError(f"unhandled decision {decision!r}")  # pragma: no cover


def _event_entries(
    event: router.Event, before: RouterState, after: RouterState
) -> list[tuple[EventKind, str, dict[str, str]]]:
    """The entries the command itself makes (queue and agent changes, a call queued, an agent's own call)."""
    match event:
        case PutQueue(config=config):
            return [(EventKind.QUEUE_CHANGED, "", _change(queue_id=config.queue_id, queue=codec.queue_json(config)))]
        case DeleteQueue(queue_id=queue_id):
            config = before.queues[queue_id]
            return [
                (
                    EventKind.QUEUE_CHANGED,
                    "",
                    _change(queue_id=queue_id, queue=codec.queue_json(config), deleted=True),
                )
            ]
        case PutAgent(agent_id=agent_id):
            agent = after.agents[agent_id]
            return [(EventKind.AGENT_CHANGED, "", _change(agent_id=agent_id, agent=codec.agent_json(agent)))]
        case DeleteAgent(agent_id=agent_id):
            agent = before.agents[agent_id]
            return [
                (EventKind.AGENT_CHANGED, "", _change(agent_id=agent_id, agent=codec.agent_json(agent), deleted=True))
            ]
        case CallQueued(call_id=call_id, queue_id=queue_id) if call_id in after.waiting or call_id in after.assigned:
            return [(EventKind.CALL_QUEUED, call_id, _change(call_id=call_id, queue_id=queue_id))]
        case AgentCallStarted(agent_id=agent_id, call_id=call_id):
            return [(EventKind.CALL_ASSIGNED, call_id, _change(call_id=call_id, agent_id=agent_id))]
    return []


# --- the service ----------------------------------------------------------------------------------------------------


class QueueService:
    """The contact centre: one router state in the store, stepped one event per transaction (see the module)."""

    def __init__(self, store: Store, clock: Clock, permissions: PermissionService, calls: CallService) -> None:
        self.store = store
        self.clock = clock
        self.permissions = permissions
        self.calls = calls
        self.actions: CallActions = EndOnly(calls)
        # The live session of each agent signed in to this process.
        self.sessions: dict[str, AgentSession] = {}
        # The state as of its version, from this process's last read or step.
        self._cache: tuple[int, RouterState] = (0, EMPTY)
        # Steps of this process run one at a time, so their decisions reach sessions in commit order.
        self._lock = asyncio.Lock()
        self._rearm = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._followed: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the stored state and start the timer task."""
        await self.read()
        self._timer = asyncio.create_task(self._run_timers(), name="queue-timers")
        for call_id in [*self._cache[1].waiting, *self._cache[1].assigned]:
            self._follow(call_id)

    async def close(self) -> None:
        """End every session of this process (their agents go OFFLINE) and stop the timer."""
        for session in list(self.sessions.values()):
            await session.close()
        self._closing = True
        pending = {t for t in (self._timer, *self._followed.values(), *self._background) if t is not None}
        while pending:
            # Cancelled again until done: a cancel that lands as `asyncio.wait_for` returns (a call's updates wait
            # with a timeout) can be lost on Python 3.11.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)

    def set_call_actions(self, actions: CallActions) -> None:
        """Install what happens to calls' media (the `queue`/`agent` routes do)."""
        self.actions = actions

    # --- reads ----------------------------------------------------------------------------------------------------

    @property
    def state(self) -> RouterState:
        """The state as of this process's last read or step (another process may have stepped since)."""
        return self._cache[1]

    def _current(self, tx: Tx) -> tuple[int, RouterState]:
        version = tx.router_version()
        cached_version, cached = self._cache
        if version == cached_version:
            return version, cached
        stored = tx.router_state()
        if stored is None:
            return 0, EMPTY
        return stored[0], codec.decode(json.loads(stored[1]))

    async def read(self) -> RouterState:
        """The state as committed now."""
        version, state = await self.store.transaction(self._current)
        self._cache = (version, state)
        return state

    async def stats(self, queue_id: str) -> QueueStats:
        state = await self.read()
        if queue_id not in state.queues:
            raise RoutingRefused("unknown_queue", f"no queue {queue_id!r}")
        return router.queue_stats(state, queue_id, self.clock.now())

    async def parties(self, call_id: str) -> CallParties:
        """The numbers of a routed call and the customer's permission summary (what an offer shows)."""
        stored = await self.store.transaction(lambda tx: tx.call(call_id))
        if stored is None:
            return CallParties("", "", None)
        pair = stored.pair
        try:
            view = await self.permissions.get(pair.business, pair.user)
        except Exception:  # the offer still goes out, without the summary (the agent can look the number up)
            log.exception("permission summary for call %s", call_id)
            view = None
        return CallParties(pair.business, pair.user, view)

    # --- the step -------------------------------------------------------------------------------------------------

    async def apply(self, event: router.Event, guard: Callable[[RouterState], None] | None = None) -> Step:
        """Step the router with `event` in one transaction at the clock's `now` and carry the decisions out after
        the commit. Raises `RoutingRefused` (nothing written) for a command the router cannot carry out, or that
        `guard` refuses when it sees the state the step starts from (inside the transaction)."""
        async with self._lock:

            def run(tx: Tx) -> tuple[int, RouterState, Step]:
                now = self.clock.now()
                _, before = self._current(tx)
                if guard is not None:
                    guard(before)
                step = router.step(before, event, now)
                self._log(tx, event, before, step, now)
                version = tx.save_router_state(json.dumps(codec.encode(step.state)))
                return version, before, step

            version, before, step = await self.store.transaction(run)
            self._cache = (version, step.state)
            self._rearm.set()
            self._deliver(step.decisions, event, before)
        return step

    def _log(self, tx: Tx, event: router.Event, before: RouterState, step: Step, now: datetime) -> None:
        pairs: dict[str, Pair] = {}

        def pair_of(call_id: str) -> Pair:
            if call_id not in pairs:
                stored = tx.call(call_id) if call_id else None
                pairs[call_id] = stored.pair if stored is not None else Pair("", "")
            return pairs[call_id]

        entries = [
            (kind, call_id, attributes, Source.BUSINESS)
            for kind, call_id, attributes in _event_entries(event, before, step.state)
        ]
        entries += [(*_decision_entry(d), Source.WACALL_RULE) for d in step.decisions]
        for kind, call_id, attributes, source in entries:
            pair = pair_of(call_id)
            state = engine.effective_state(tx.ledger(pair), now) if pair.user else PermissionState.NONE
            tx.append(EventRecord(pair, kind, source.value, now, now, state, attributes))

    def _deliver(self, decisions: tuple[Decision, ...], event: router.Event, before: RouterState) -> None:
        """Hand each decision to whoever acts on it (synchronously for sessions, so their order is commit order)."""
        if isinstance(event, DeleteAgent) and event.agent_id in self.sessions:
            self.sessions.pop(event.agent_id).end_with("agent_deleted", f"agent {event.agent_id!r} was deleted")
        if isinstance(event, CallGone) and event.call_id in before.assigned:
            agent_id = before.assigned[event.call_id].agent_id
            session = self.sessions.get(agent_id)
            if session is not None:
                session.call_ended(event.call_id)
        for decision in decisions:
            match decision:
                case OfferMade(offer=offer) | OfferWithdrawn(offer=offer):
                    session = self.sessions.get(offer.agent_id)
                    if session is not None:
                        session.decided(decision)
                case PresenceChanged(agent_id=agent_id):
                    session = self.sessions.get(agent_id)
                    if session is not None:
                        session.decided(decision)
                case QueueTimedOut():
                    self._spawn(self.actions.queue_timed_out(decision))
                case QueueGone():
                    self._spawn(self.actions.queue_gone(decision))
                case Overflowed():
                    self._spawn(self.actions.overflowed(decision))
                case Assigned():
                    pass  # the accepting session connects the agent's media (it holds the media the agent chose)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    # --- the timers -------------------------------------------------------------------------------------------------

    async def _run_timers(self) -> None:
        while True:
            self._rearm.clear()
            deadline = router.next_deadline(self.state)
            rearmed = asyncio.ensure_future(self._rearm.wait())
            waits: list[asyncio.Future[Any]] = [rearmed]
            if deadline is not None:
                waits.append(asyncio.ensure_future(self.clock.sleep(deadline - self.clock.now())))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            if deadline is not None and self.clock.now() >= deadline:
                try:
                    await self.apply(Tick())
                except Exception:  # a failed tick (the store unavailable) is retried at the next wake
                    log.exception("queue timers: a tick failed")

    # --- calls ------------------------------------------------------------------------------------------------------

    async def enqueue(self, call_id: str, queue_id: str, priority: int = 0) -> Step:
        """The call enters the queue (its customer hears hold audio). A queue that does not exist ends the call
        (`QueueGone` to the call actions). Raises `RoutingRefused` when the call is already routed."""
        step = await self.apply(CallQueued(call_id, queue_id, priority))
        self._follow(call_id)
        return step

    async def call_gone(self, call_id: str) -> Step:
        """The call ended: withdrawn from its queue (abandoned), or its agent's call is over. Harmless for a call
        the router does not hold."""
        return await self.apply(CallGone(call_id))

    async def agent_call_started(self, agent_id: str, call_id: str) -> Step:
        """The agent placed a call itself: BUSY for its duration. Raises `RoutingRefused` when it cannot."""
        step = await self.apply(AgentCallStarted(agent_id, call_id))
        self._follow(call_id)
        return step

    def _follow(self, call_id: str) -> None:
        """Watch a routed call: when it ends (either side, any route), the router hears `CallGone`."""
        if call_id in self._followed:
            return
        task = asyncio.create_task(self._until_ended(call_id), name=f"queue-follow-{call_id}")
        self._followed[call_id] = task
        task.add_done_callback(lambda _: self._followed.pop(call_id, None))
        task.add_done_callback(_log_failure)

    async def _until_ended(self, call_id: str) -> None:
        try:
            async for record in self.calls.updates(call_id):
                if record.state is CallState.ENDED:
                    break
                if self._closing:
                    return
        except CallNotFound:
            return  # not a call of this service: whoever queued it says when it is gone
        await self.call_gone(call_id)

    async def end_call(self, call_id: str, reason: str) -> None:
        """End a routed call (an agent hung up): the call service ends it, and the router hears it is gone."""
        await end_call(self.calls, call_id, reason)
        await self.call_gone(call_id)

    async def call_outcome(self, call_id: str) -> CallOutcome | None:
        """The call's outcome as recorded (None while unknown)."""
        stored = await self.store.transaction(lambda tx: tx.call(call_id))
        return from_stored(stored).outcome if stored is not None else None

    # --- sessions ---------------------------------------------------------------------------------------------------

    async def login(self, agent_id: str) -> AgentSession:
        """Open the agent's session: OFFLINE becomes AWAY; an older session of the agent is ended (replaced).
        Raises `RoutingRefused` (unknown_agent)."""
        session = AgentSession(self, agent_id)
        async with self._lock:
            older = self.sessions.get(agent_id)
            self.sessions[agent_id] = session
        try:
            await self.apply(LogIn(agent_id))
        except BaseException:
            if self.sessions.get(agent_id) is session:
                if older is not None:
                    self.sessions[agent_id] = older
                else:
                    del self.sessions[agent_id]
            raise
        if older is not None:
            older.replaced()
        session.logged_in(self.state)
        return session

    def forget(self, session: AgentSession) -> bool:
        """The session ended: True if it was its agent's live session (the agent goes OFFLINE then)."""
        if self.sessions.get(session.agent_id) is session:
            del self.sessions[session.agent_id]
            return True
        return False


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("contact centre: %s failed", task.get_name(), exc_info=task.exception())
