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

Several replicas on one database behave as one contact centre. The router state is shared; what stays in one
process is agents' live sessions and calls' media (a call's owner, `calls/ownership.py`). Every replica follows the
decisions committed by the others in the event log, in commit order (each entry carries the router version its step
saved, so a replica skips the versions it stepped and delivered itself, and resumes from the cursor it took at
start-up: nothing twice, nothing lost): offers, withdrawals and presence reach the agents whose sessions it holds,
and what happens to a call's media is done by the replica that owns the call. Another replica's step re-arms this
one's timer with the state it left; several replicas stepping `Tick` at one deadline find the work done by the
first. An agent who accepts here a call whose media another replica owns has it connected there (`OwnerActions`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from wacall.calls.machine import CallOutcome, CallState
from wacall.calls.ownership import CallOwner, CallOwnerUnreachable
from wacall.calls.record import from_stored
from wacall.calls.service import CallNotFound, CallService
from wacall.clock import Clock
from wacall.events import EventKind
from wacall.queues import codec, router
from wacall.queues.actions import AgentMedia, AgentMediaFailed, CallActions, EndOnly, OwnerActions, end_call
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
    Presence,
    PresenceChanged,
    PresenceWhy,
    PutAgent,
    PutQueue,
    QueueGone,
    QueueStats,
    QueueTimedOut,
    RouterState,
    RoutingRefused,
    SessionsGone,
    Step,
    Tick,
    WithdrawnWhy,
)
from wacall.queues.sessions import AgentSession
from wacall.rules import engine
from wacall.rules.engine import PermissionState, Source
from wacall.store import (
    EventRecord,
    Pair,
    Replica,
    Store,
    StoreError,
    Tx,
    from_micros,
    to_micros,
    wait_for_change,
)

if TYPE_CHECKING:
    from wacall.permissions import PermissionService, PermissionView

log = logging.getLogger(__name__)

_MediaDecision = TypeVar("_MediaDecision", QueueTimedOut, QueueGone, Overflowed)

# How often a replica reads other replicas' decisions when nothing woke it (SQLite hears no other process's commits;
# PostgreSQL's NOTIFY wakes it at once). The log is read a page at a time.
FOLLOW_POLL = timedelta(seconds=0.2)
FOLLOW_PAGE = 500


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
    """An offer's attributes in the event log, with what the entry adds (its expiry too: another replica shows the
    offer to the agent from this entry)."""
    return _change(
        offer_id=offer.offer_id,
        call_id=offer.call_id,
        agent_id=offer.agent_id,
        queue_id=offer.queue_id,
        expires_at=to_micros(offer.expires_at),
        **more,
    )


def _decision_entry(decision: Decision, before: RouterState) -> tuple[EventKind, str, dict[str, str]]:
    """(kind, the call it is about or "", attributes) of a decision's event-log entry. Each holds what a replica
    that did not step needs to act on it (`_deliver_followed` reads it back)."""
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
            agent = before.agents.get(decision.agent_id)
            ended = agent.call_id if agent is not None and decision.why is PresenceWhy.CALL_ENDED else ""
            return (
                EventKind.AGENT_PRESENCE_CHANGED,
                "",
                _change(
                    agent_id=decision.agent_id,
                    presence=decision.presence.value,
                    presence_why=decision.why.value,
                    call_over=ended,  # the call whose end freed the agent: its session hears `call_ended` first
                ),
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
        # What other replicas do for calls whose media they own (None: this process reaches no other replica).
        self.owners: OwnerActions | None = None
        # The live session of each agent signed in to this process.
        self.sessions: dict[str, AgentSession] = {}
        # The state as of its version, from this process's last read or step.
        self._cache: tuple[int, RouterState] = (0, EMPTY)
        # Steps of this process run one at a time, so their decisions reach sessions in commit order.
        self._lock = asyncio.Lock()
        self._rearm = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # The routed calls whose end the router must hear of (`_follow`), watched by one task in one transaction per
        # wake: a task per call would cost the store a transaction per waiting call at every wake.
        self._followed: set[str] = set()
        self._follow_more = asyncio.Event()
        self._closing = False
        # Following other replicas' decisions: the last event-log cursor read, the newest router version seen, and
        # the versions this process stepped (and delivered) that the log has not shown it yet.
        self._cursor = 0
        self._seen_version = 0
        self._own: deque[int] = deque()
        self._follower: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the stored state, start the timer task, and follow other replicas' decisions from now on."""
        self._cursor = await self.store.last_cursor()  # before the state: a step between the two is followed
        await self.read()
        self._seen_version = self._cache[0]
        # This process has no session yet: the agents its earlier runs held sessions for have none any more.
        await self._end_sessions_gone(self._sessions_left_here(self.state))
        self._timer = asyncio.create_task(self._run_timers(), name="queue-timers")
        self._follower = asyncio.create_task(self._follow_decisions(), name="queue-follow-replicas")
        self._spawn(self._watch_session_holders())
        for call_id in [*self._cache[1].waiting, *self._cache[1].assigned]:
            self._follow(call_id)

    async def close(self) -> None:
        """End every session of this process (their agents go OFFLINE) and stop the timer."""
        for session in list(self.sessions.values()):
            await session.close()
        self._closing = True
        tasks = (self._timer, self._follower, *self._background)
        pending = {t for t in tasks if t is not None}
        while pending:
            # Cancelled again until done: a task that loses a cancel (an await in a library that swallows one
            # landing as it completes) must not keep the shutdown waiting.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)

    def set_call_actions(self, actions: CallActions) -> None:
        """Install what happens to calls' media (the `queue`/`agent` routes do)."""
        self.actions = actions

    def set_owner_actions(self, owners: OwnerActions) -> None:
        """Install how this replica reaches the owners of calls whose media runs elsewhere (the assembly does)."""
        self.owners = owners

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
        if version >= self._cache[0]:  # a step that committed after this read may have cached a newer state
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

            def run(tx: Tx) -> tuple[int, RouterState, Step, bool]:
                now = self.clock.now()
                version, before = self._current(tx)
                if guard is not None:
                    guard(before)
                step = router.step(before, event, now)
                if not step.decisions and step.state == before and not _event_entries(event, before, step.state):
                    # Nothing changed (another replica's tick at the same deadline did the work): nothing written.
                    return version, before, step, False
                self._log(tx, event, before, step, now, version + 1)
                return tx.save_router_state(json.dumps(codec.encode(step.state))), before, step, True

            version, before, step, saved = await self.store.transaction(run)
            self._cache = (version, step.state)
            if saved:
                self._own.append(version)
                if version != self._seen_version + 1:
                    # Another replica stepped since this one last looked: its decisions reach sessions first.
                    await self._catch_up_quietly()
                self._seen_version = max(self._seen_version, version)
            self._rearm.set()
            self._deliver(step.decisions, event, before)
        return step

    def _log(self, tx: Tx, event: router.Event, before: RouterState, step: Step, now: datetime, version: int) -> None:
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
        entries += [(*_decision_entry(d, before), Source.WACALL_RULE) for d in step.decisions]
        for kind, call_id, attributes, source in entries:
            # The router version the step saves: other replicas follow the log by it (`_catch_up`).
            change = {**json.loads(attributes["contact_center"]), "router_version": version}
            attributes = {**attributes, "contact_center": json.dumps(change)}
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
                    self._spawn(self._where_media_runs(decision.call_id, self.actions.queue_timed_out, decision))
                case QueueGone():
                    self._spawn(self._where_media_runs(decision.call_id, self.actions.queue_gone, decision))
                case Overflowed():
                    self._spawn(self._where_media_runs(decision.call_id, self.actions.overflowed, decision))
                case Assigned():
                    pass  # the accepting session connects the agent's media (it holds the media the agent chose)

    async def _where_media_runs(
        self, call_id: str, act: Callable[[_MediaDecision], Coroutine[Any, Any, None]], decision: _MediaDecision
    ) -> None:
        """Carry out a decision about a call's media here, unless another replica owns the call: that one reads the
        decision in the log and carries it out (`_deliver_followed`)."""
        if await self._owner_elsewhere(call_id) is None:
            await act(decision)

    async def _owner_elsewhere(self, call_id: str) -> CallOwner | None:
        try:
            return await self.calls.owner_elsewhere(call_id)
        except CallNotFound:
            return None  # not a call of this service: the actions here decide (EndOnly ends nothing)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    # --- sessions whose process is gone ----------------------------------------------------------------------------

    def _sessions_left_here(self, state: RouterState) -> frozenset[str]:
        """The instances of signed-in agents' sessions that this process held in an earlier run (or that were
        recorded before sessions carried their instance)."""
        holders = {a.session_instance for a in state.agents.values() if a.presence is not Presence.OFFLINE}
        return frozenset(i for i in holders if i == "" or self.calls.is_earlier_run(i))

    async def _end_sessions_gone(self, instances: frozenset[str]) -> None:
        if instances:
            log.warning("agents' sessions held by %s are gone with it: their agents go offline", sorted(instances))
            await self.apply(SessionsGone(instances))

    async def _watch_session_holders(self) -> None:
        """Every third of a call lease, put OFFLINE the agents whose session's process stopped renewing its
        heartbeat in the replica registry (killed, crashed, powered off). Only after reaching the store for a whole
        lease: an outage of the database expires every heartbeat at once, and the living renew theirs soon after."""
        wall = self.calls.wall_clock
        reached_since: datetime | None = None
        while True:
            await wall.sleep(self.calls.call_lease / 3)
            try:
                state = await self.read()
                holders = {
                    a.session_instance
                    for a in state.agents.values()
                    if a.presence is not Presence.OFFLINE and a.session_instance not in ("", self.calls.instance)
                }
                store_now, replicas = await self.store.transaction(partial(_replicas, holders=holders))
            except StoreError:
                reached_since = None
                continue
            now = wall.now()
            if reached_since is None:
                reached_since = now
            if now - reached_since < self.calls.call_lease:
                continue
            gone = frozenset(
                instance
                for instance, replica in replicas.items()
                if replica is None or replica.heartbeat_expires_at <= store_now or self.calls.is_earlier_run(instance)
            )
            try:
                await self._end_sessions_gone(gone)
            except StoreError:
                reached_since = None

    # --- the timers -------------------------------------------------------------------------------------------------

    async def _run_timers(self) -> None:
        failures = 0
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
                    failures = 0
                except Exception:
                    # Retried after a pause: the deadline stays past, so retrying at once would spin.
                    log.exception("queue timers: a tick failed")
                    await self.calls.wall_clock.sleep(_backoff(failures))
                    failures += 1

    # --- other replicas' decisions ------------------------------------------------------------------------------

    async def _follow_decisions(self) -> None:
        """Act on the decisions other replicas commit, woken by the store's notifications (another process's commit
        too, where the store hears it) and reading the log a few times a second otherwise."""
        failing = False
        while True:
            ticket = self.store.changes.ticket()
            try:
                async with self._lock:
                    if await self._catch_up():
                        # The state they left: a deadline another replica set re-arms this one's timer.
                        self._cache = await self.store.transaction(self._current)
                        self._rearm.set()
                failing = False
            except StoreError as error:
                if not failing:  # once per outage
                    log.warning("following other replicas' queue decisions failed (%s); trying again", error)
                failing = True
            except Exception:
                log.exception("following other replicas' queue decisions failed; trying again")
            await wait_for_change(ticket, FOLLOW_POLL.total_seconds())

    async def _catch_up(self) -> bool:
        """Deliver, in commit order, the router decisions other replicas logged after the cursor (the lock held);
        True when there were any. The log's cursors follow the router versions (a step holds the router state's
        lock until it commits), so the versions this process stepped itself come up in order and are skipped."""
        followed = False
        while True:
            records = await self.store.events_after(self._cursor, limit=FOLLOW_PAGE)
            for record in records:
                self._cursor = record.cursor
                entry = _router_entry(record)
                if entry is None:
                    continue
                version, change = entry
                while self._own and self._own[0] < version:
                    self._own.popleft()
                if self._own and self._own[0] == version:
                    continue  # stepped here: delivered after its commit
                self._seen_version = max(self._seen_version, version)
                followed = True
                self._deliver_followed(EventKind(record.kind), change)
            if len(records) < FOLLOW_PAGE:
                return followed

    async def _catch_up_quietly(self) -> None:
        """`_catch_up` after a step of this process committed: a failure to read is left to the follower, which
        delivers what was missed in its next pass (the step itself stands)."""
        try:
            await self._catch_up()
        except Exception as error:
            log.warning("reading other replicas' queue decisions before this step's failed (%s)", error)

    def _deliver_followed(self, kind: EventKind, change: Mapping[str, Any]) -> None:
        """Another replica's decision (as its log entry has it) to whoever acts on it here: the agent's session if
        this process holds it, the call's media if this process owns it."""
        agent_id: str = change.get("agent_id", "")
        call_id: str = change.get("call_id", "")
        session = self.sessions.get(agent_id) if agent_id else None
        match kind:
            case EventKind.OFFER_MADE | EventKind.OFFER_WITHDRAWN if session is not None:
                expires_at = from_micros(change["expires_at"]) if "expires_at" in change else self.clock.now()
                offer = Offer(change["offer_id"], call_id, agent_id, change.get("queue_id", ""), expires_at)
                if kind is EventKind.OFFER_MADE:
                    session.decided(OfferMade(offer, timedelta(microseconds=change.get("waited", 0))))
                else:
                    session.decided(OfferWithdrawn(offer, WithdrawnWhy(change["withdrawn_why"])))
            case EventKind.AGENT_PRESENCE_CHANGED if session is not None:
                if change.get("call_over"):
                    session.call_ended(change["call_over"])
                session.decided(
                    PresenceChanged(agent_id, Presence(change["presence"]), PresenceWhy(change["presence_why"]))
                )
            case EventKind.AGENT_CHANGED if session is not None and change.get("deleted"):
                self.sessions.pop(agent_id).end_with("agent_deleted", f"agent {agent_id!r} was deleted")
            case EventKind.CALL_QUEUED | EventKind.CALL_ASSIGNED:
                self._follow(call_id)  # any replica steps CallGone when it ends, its owner or not
            case EventKind.QUEUE_TIMED_OUT | EventKind.QUEUE_MISSING | EventKind.CALL_OVERFLOWED:
                if self.calls.session(call_id) is None:
                    return  # its media is not here: its owner acts on it
                queue_id: str = change.get("queue_id", "")
                if kind is EventKind.QUEUE_TIMED_OUT:
                    self._spawn(self.actions.queue_timed_out(QueueTimedOut(call_id, queue_id)))
                elif kind is EventKind.QUEUE_MISSING:
                    self._spawn(self.actions.queue_gone(QueueGone(call_id, queue_id)))
                else:
                    self._spawn(self.actions.overflowed(Overflowed(call_id, queue_id, change.get("to_queue_id", ""))))

    # --- the agent's media, where the call's media runs ---------------------------------------------------------

    async def connect_agent(self, assigned: Assigned, media: AgentMedia) -> str:
        """Move the assigned call's media to the agent, in the process that owns the call: here, or forwarded to
        the replica that does. Returns the SDP answer ("" for a media stream); raises `AgentMediaFailed` (also when
        the owner cannot be reached)."""
        owner = await self._owner_elsewhere(assigned.call_id)
        if owner is None:
            return await self.actions.connect_agent(assigned, media)
        if self.owners is None:
            raise AgentMediaFailed(
                f"call {assigned.call_id} is run by wacall instance {owner.instance}, which this process cannot reach"
            )
        return await self.owners.connect_agent(owner, assigned, media)

    async def connect_agent_here(self, assigned: Assigned, media: AgentMedia) -> str:
        """Another replica's agent won a call whose media runs here: move it to the agent, if the router did
        assign it so and this process does hold the call. Raises `AgentMediaFailed`."""
        assignment = (await self.read()).assigned.get(assigned.call_id)
        if assignment is None or assignment.agent_id != assigned.agent_id:
            raise AgentMediaFailed(f"call {assigned.call_id} is not assigned to agent {assigned.agent_id!r}")
        if self.calls.session(assigned.call_id) is None:
            raise AgentMediaFailed(f"call {assigned.call_id}'s media is not held by this process")
        return await self.actions.connect_agent(assigned, media)

    # --- calls ------------------------------------------------------------------------------------------------------

    async def enqueue(self, call_id: str, queue_id: str, priority: int = 0) -> Step:
        """The call enters the queue (its customer hears hold audio). A queue that does not exist ends the call
        (`QueueGone` to the call actions). Raises `RoutingRefused` when the call is already routed."""
        step = await self.apply(CallQueued(call_id, queue_id, priority))
        self._follow(call_id)
        return step

    async def call_gone(self, call_id: str, *, answered: bool = True) -> Step:
        """The call ended: withdrawn from its queue (abandoned), or its agent's call is over (see `CallGone` for
        `answered`). Harmless for a call the router does not hold."""
        return await self.apply(CallGone(call_id, answered))

    async def agent_call_started(self, agent_id: str, call_id: str) -> Step:
        """The agent placed a call itself: BUSY for its duration. Raises `RoutingRefused` when it cannot."""
        step = await self.apply(AgentCallStarted(agent_id, call_id))
        self._follow(call_id)
        return step

    def _follow(self, call_id: str) -> None:
        """Watch a routed call: when it ends (either side, any route), the router hears `CallGone`."""
        if call_id not in self._followed:
            self._followed.add(call_id)
            self._follow_more.set()
            if self._watcher is None:
                self._watcher = asyncio.create_task(self._watch_call_ends(), name="queue-call-ends")
                self._background.add(self._watcher)

    async def _watch_call_ends(self) -> None:
        """Look up every followed call in one transaction whenever the store changes (at least once a second), and
        step `CallGone` for those that ended."""
        failures = 0
        while True:
            self._follow_more.clear()
            ticket = self.store.changes.ticket()
            if self._followed:
                try:
                    ended = await self.store.transaction(partial(_ended_calls, call_ids=tuple(self._followed)))
                    failures = 0
                except Exception as error:
                    log.warning("watching routed calls' ends failed (%s); trying again", error)
                    await self.calls.wall_clock.sleep(_backoff(failures))
                    failures += 1
                    continue
                for call_id, answered in ended.items():
                    self._followed.discard(call_id)
                    if answered is not None:  # None: not a call of this service, whoever queued it says when
                        self._spawn(self._call_ended(call_id, answered))
            wakes = [asyncio.ensure_future(ticket.wait()), asyncio.ensure_future(self._follow_more.wait())]
            try:
                await asyncio.wait(wakes, timeout=FOLLOW_CALLS_POLL, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wake in wakes:
                    wake.cancel()

    async def _call_ended(self, call_id: str, answered: bool) -> None:
        failures = 0
        while True:
            try:
                await self.call_gone(call_id, answered=answered)
                return
            except Exception as error:
                # Until it commits: the router would keep the call, and its agent BUSY, until a restart.
                log.warning(
                    "call %s ended, but the contact centre could not record it (%s): trying again", call_id, error
                )
                await self.calls.wall_clock.sleep(_backoff(failures))
                failures += 1

    async def end_call(self, call_id: str, reason: str) -> None:
        """End a routed call (an agent hung up), and the router hears it is gone. A call another replica owns is
        ended there (EndCall forwarded to the owner); one whose owner cannot be reached is ended in the store here,
        which the owner, if it is still running, reads and releases the media (`CallService` follows its calls)."""
        owner = await self._owner_elsewhere(call_id)
        try:
            if owner is not None and self.owners is not None:
                await self.owners.end_call(owner, call_id)
            else:
                await end_call(self.calls, call_id, reason)
        except CallOwnerUnreachable as unreachable:
            log.warning("call %s: ending it here (%s)", call_id, unreachable)
            await end_call(self.calls, call_id, reason)
        outcome = await self.call_outcome(call_id)
        await self.call_gone(call_id, answered=outcome in (None, CallOutcome.ANSWERED))

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
            await self.apply(LogIn(agent_id, self.calls.instance))
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


def _router_entry(record: EventRecord) -> tuple[int, Mapping[str, Any]] | None:
    """(the router version, the change) of a router step's log entry; None for any other event."""
    stored = record.attributes.get("contact_center")
    if stored is None:
        return None
    change: Mapping[str, Any] = json.loads(stored)
    version = change.get("router_version")
    return (version, change) if isinstance(version, int) else None


RETRY_FIRST = timedelta(seconds=1)
RETRY_MOST = timedelta(seconds=30)


def _backoff(failures: int) -> timedelta:
    """The pause after `failures` failures in a row of a step that must happen: 1 s, doubling, at most 30 s."""
    doubled: timedelta = RETRY_FIRST * (1 << min(failures, 10))
    return min(doubled, RETRY_MOST)


# How often the followed calls are looked up when the store reports no change (another process's commit, say).
FOLLOW_CALLS_POLL = 1.0


def _ended_calls(tx: Tx, call_ids: tuple[str, ...]) -> dict[str, bool | None]:
    """Of `call_ids`, those that ended → whether they were answered; None for one the store does not know."""
    ended: dict[str, bool | None] = {}
    for call_id in call_ids:
        stored = tx.call(call_id)
        if stored is None:
            ended[call_id] = None
            continue
        record = from_stored(stored)
        if record.state is CallState.ENDED:
            ended[call_id] = record.outcome is CallOutcome.ANSWERED
    return ended


def _replicas(tx: Tx, holders: set[str]) -> tuple[datetime, dict[str, Replica | None]]:
    """The store's time (heartbeats are on its clock, which every replica shares) and each instance's entry in the
    replica registry (None: it never recorded itself, or was forgotten)."""
    return tx.store_now(), {instance: tx.replica(instance) for instance in holders}


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("contact centre: %s failed", task.get_name(), exc_info=task.exception())
