"""Call control: place, follow, reroute and end calls; feed every outcome to the rules ledger; run each call's media.

Decisions and facts are committed before anything is acknowledged (the same store transactions as permissions).
Every change to a call's facts or route is a `CallRecord` saved by `_save`, which also tells the ledger what the
facts teach it and logs the update; the media counters a finished session carried are stored after it closes,
without an event. Media work (platform legs, routes) happens after the commit, on this process's event loop, in
`CallSession`s, and live session state is read there, never inside a transaction. Every path that ends a call
releases its session through `_close_session` (a session closes the routes it lets go on a reroute itself). The
calls this process places and answers are its own, under a lease it renews.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from wacall.calls import machine
from wacall.calls.machine import CallFacts, CallState, Direction
from wacall.calls.ownership import CallOwner, CallOwnerUnreachable
from wacall.calls.record import CallRecord, PlatformError, SipLeg, encode, from_stored, to_stored
from wacall.calls.sessions import CallSession, SessionClosed
from wacall.calls.sip_route import SipBridgedRoute, SipRoutes, SipRouteUnavailable
from wacall.clock import Clock, SystemClock
from wacall.events import EventKind
from wacall.fields import InvalidField
from wacall.inbound import CallEventItem, CallEventKind
from wacall.ingest import Outcome, Skipped
from wacall.media.engine_leg import EngineBridgeLeg, EngineBridgeUnavailable
from wacall.media.platform_leg import PlatformLeg, PlatformLegFactory, WebRtcPlatformLeg
from wacall.media.sdp import SdpType, platform_problems
from wacall.observe import Observer
from wacall.permissions import (
    IdempotencyConflict,
    PermissionService,
    PlatformRefusal,
    RuleRefusal,
)
from wacall.rules import engine
from wacall.store import (
    EventRecord,
    IdempotentResult,
    Pair,
    Replica,
    StoredCall,
    StoreError,
    Tx,
    from_micros,
    optional_datetime,
    optional_micros,
    wait_for_change,
)
from wacall.upstreams.base import Account, CallAction, Upstream, UpstreamRefusal
from wacall_adapters.base import MediaAdapter
from wacall_adapters.routes import RoutePlan

log = logging.getLogger(__name__)

MAX_OPAQUE = 512
MAX_IDEMPOTENCY_KEY = 128
# How long StartCall waits for the platform's answer to an engine-bridged call, so that the call it returns carries
# the agent's SDP answer (the platform answers at once, before the phone rings).
PEER_ANSWER_WAIT = timedelta(seconds=10)
# How often the owner of calls reads them back from the store when nothing woke it: another replica's commits wake
# it only where the store hears them (PostgreSQL's NOTIFY), and the platform fails a call whose SDP answer is applied
# late (138007). MIN_FOLLOW_GAP coalesces the wake-ups of a burst of commits into one read.
FOLLOW_POLL = timedelta(seconds=0.2)
MIN_FOLLOW_GAP = timedelta(seconds=0.02)
# A process whose heartbeat expired this long ago is gone from the replica registry (its calls were ended long since).
FORGET_REPLICAS_AFTER = timedelta(hours=1)

EngineBridges = Callable[[str, str], EngineBridgeLeg]
"""Builds the platform leg of a call bridged in the media engine: (call id, the business peer's SDP offer)."""


class CallNotFound(LookupError):
    pass


class CallProblem(Exception):
    """Something about one call that its caller must hear: which call, and why."""

    def __init__(self, call_id: str, why: str) -> None:
        super().__init__(f"{call_id}: {why}")
        self.call_id = call_id
        self.why = why


class CallNotLive(CallProblem):
    """The call's media is not held by this process: it has ended, or another replica holds it."""


class RerouteRefused(CallProblem):
    """The call cannot move to that route (its media does not pass through the service, or the route cannot take
    a live call); the call goes on as it was."""


class MediaSetupFailed(CallProblem):
    """The call's media could not be set up on our side before it was placed; the call is recorded FAILED."""


class EngineBridgedRoute(MediaAdapter):
    """The business side of a call bridged in the media engine: the peer's leg lives there, beside the user's, so
    there is nothing to attach here; what the route shows is the peer's SDP answer."""

    def __init__(self, leg: EngineBridgeLeg) -> None:
        self.leg = leg

    def answer_sdp(self) -> str:
        return self.leg.peer_answer_now()


class SdpRefused(ValueError):
    """An SDP (the platform's or our own) fails the platform's checks (media/sdp.py): the call cannot carry audio."""

    def __init__(self, whose: str, sdp_type: SdpType, problems: list[str]) -> None:
        super().__init__(f"{whose} SDP {sdp_type} cannot carry the call: {'; '.join(problems)}")


def check_sdp(sdp: str, sdp_type: SdpType, whose: str) -> str:
    """The SDP, if it meets the platform's rules; SdpRefused otherwise."""
    problems = platform_problems(sdp, sdp_type)
    if problems:
        raise SdpRefused(whose, sdp_type, problems)
    return sdp


def _event_from_item(item: CallEventItem) -> machine.CallEvent | None:
    match item.kind:
        case CallEventKind.CONNECT:
            return machine.Connect(item.timestamp)
        case CallEventKind.RINGING:
            return machine.Ringing(item.timestamp)
        case CallEventKind.ACCEPTED:
            return machine.Accepted(item.timestamp)
        case CallEventKind.REJECTED:
            return machine.Rejected(item.timestamp)
        case CallEventKind.TERMINATE:
            return machine.Terminated(
                item.timestamp,
                item.start_time,
                item.end_time,
                item.duration_seconds,
                item.error_codes,
                setup_failed=item.setup_failed,
            )
    return None


def _item_to_json(item: CallEventItem) -> dict[str, Any]:
    data = dataclasses.asdict(item)
    for name in ("timestamp", "start_time", "end_time"):
        data[name] = optional_micros(data[name])
    data["error_codes"] = list(item.error_codes)
    return data


def _item_from_json(data: Mapping[str, Any]) -> CallEventItem:
    return CallEventItem(
        **{
            **data,
            "kind": CallEventKind(data["kind"]),
            "timestamp": from_micros(data["timestamp"]),
            "start_time": optional_datetime(data["start_time"]),
            "end_time": optional_datetime(data["end_time"]),
            "error_codes": tuple(data["error_codes"]),
        }
    )


class CallService:
    def __init__(
        self,
        permissions: PermissionService,
        upstream: Upstream,
        *,
        inbound_route: RoutePlan,
        inbound_routes: Mapping[str, RoutePlan] | None = None,
        platform_legs: PlatformLegFactory = WebRtcPlatformLeg,
        engine_bridges: EngineBridges | None = None,
        sip_routes: SipRoutes | None = None,
        media_timeout: timedelta = timedelta(seconds=20),
        call_lease: timedelta = timedelta(seconds=30),
        wall_clock: Clock | None = None,
        instance_name: str = "",
    ) -> None:
        self.permissions = permissions
        self.store = permissions.store
        self.clock: Clock = permissions.clock
        self.upstream = upstream
        self.inbound_route = inbound_route
        # Business number (E.164) → the route its users' calls take instead of `inbound_route`.
        self.inbound_routes: Mapping[str, RoutePlan] = inbound_routes or {}
        self.platform_legs = platform_legs
        # None: no media engine; a route that could be engine-bridged runs in process.
        self.engine_bridges = engine_bridges
        # The sip route's PBX legs (None: this service has no SIP trunks; a sip route is refused).
        self.sip_routes = sip_routes
        self.media_timeout = media_timeout
        # This process owns the calls it places and answers, and renews its lease on them (on wall time: leases say
        # whether the process is alive, whatever the rules' clock says).
        self.instance = permissions.instance
        # Calls owned by "<instance_name>/<an earlier run>" were left by this process before it restarted.
        self._earlier_runs = f"{instance_name}/" if instance_name else None
        self.call_lease = call_lease
        self.wall_clock: Clock = wall_clock or SystemClock()
        self.observer: Observer = permissions.observer  # the same recorder as the permission decisions'
        # Where other replicas reach this process (its gRPC address), recorded in the replica registry; "" until the
        # gRPC server is up (`advertise`).
        self.advertised_address = ""
        self.sessions: dict[str, CallSession] = {}
        # When the newest lease renewal that committed began (on this process's clock: only the lapse counts),
        # and the calls whose media stopped because no renewal came in time (ended once the store answers).
        self._renewed_at = self.wall_clock.now()
        self._fenced: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    # --- helpers ------------------------------------------------------------------------------------------------

    def spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    def _live(self, record: CallRecord) -> CallRecord:
        """The record with what the live session knows that is not stored yet (media counters, the agent's SDP)."""
        session = self.sessions.get(record.call_id)
        if session is None:
            return record
        return dataclasses.replace(
            record, media=session.counters(), answer_sdp=record.answer_sdp or session.adapter.answer_sdp()
        )

    @staticmethod
    def _record(tx: Tx, call_id: str) -> CallRecord:
        stored = tx.call(call_id)
        assert stored is not None, call_id
        return from_stored(stored)

    def _save(self, tx: Tx, record: CallRecord, now: datetime) -> CallRecord:
        """Save the call, tell the ledger what it must learn from its facts, and log the update."""
        facts, effects = machine.ledger_effects(record.facts)
        ledger = tx.ledger(record.pair)
        for effect in effects:
            ledger = self.permissions.record(tx, record.pair, ledger, effect, now, {"call_id": record.call_id})
        record = dataclasses.replace(record, facts=facts)
        # The owner and lease count when the row is created: this process owns the calls it creates.
        tx.save_call(
            dataclasses.replace(to_stored(record), owner=self.instance, lease_expires_at=self._lease_until(tx))
        )
        source = (
            engine.Source.BUSINESS if record.direction is Direction.BUSINESS_INITIATED else engine.Source.USER_ACTION
        )
        tx.append(
            EventRecord(
                record.pair,
                EventKind.CALL_UPDATED,
                source.value,
                now,
                now,
                engine.effective_state(ledger, now),
                {"call_id": record.call_id, "call": json.dumps(encode(record))},
            )
        )
        return record

    def inbound_route_for(self, business: str) -> RoutePlan:
        """The route that answers users' calls to this business number."""
        return self.inbound_routes.get(business, self.inbound_route)

    # --- placing a call -----------------------------------------------------------------------------------------

    async def start(
        self,
        business_number: str,
        user_number: str,
        route: RoutePlan,
        *,
        opaque: str = "",
        idempotency_key: str = "",
        sip: SipLeg | None = None,
    ) -> CallRecord:
        """Place a business-initiated call on `route`, if the rules allow it (`RuleRefusal` otherwise, nothing
        written). `sip` is the call's SIP leg when a PBX placed it, recorded with the call in the same transaction."""
        business, user = self.permissions.parse_pair(business_number, user_number)
        if len(opaque) > MAX_OPAQUE:
            raise InvalidField("biz_opaque_callback_data", f"at most {MAX_OPAQUE} characters")
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidField("idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY} characters")
        pair = Pair(business.e164, user.e164)
        if route.sip is not None:  # before anything is recorded: the trunk exists, SIP and the engine run
            if self.sip_routes is None:
                raise SipRouteUnavailable("the sip route needs SIP trunks: this service runs without them")
            self.sip_routes.check(route.sip)
        account = None
        if business.region not in self.permissions.policy.denied_business_regions:
            account = self.permissions.senders.account_for(business)
        key = f"call:{idempotency_key}" if idempotency_key else ""
        fingerprint = hashlib.sha256(
            json.dumps([pair.business, pair.user, route.name, opaque, route.fingerprint]).encode()
        ).hexdigest()
        call_id = "call_" + uuid.uuid4().hex

        def reserve(tx: Tx) -> CallRecord:
            now = self.clock.now()
            if key:
                earlier = tx.idempotent_result(pair.business, key)
                if earlier is not None:
                    if earlier.fingerprint != fingerprint:
                        raise IdempotencyConflict("this idempotency_key was used for a different call; use a new key")
                    return self._record(tx, earlier.outcome["call_id"])
            evaluation = self.permissions.evaluate(tx, pair, business, now)
            if not evaluation.call.allowed:
                raise RuleRefusal(evaluation.call, evaluation, pair)
            facts = CallFacts(Direction.BUSINESS_INITIATED, now)
            record = self._save(tx, CallRecord(call_id, pair, facts, route=route.name, opaque=opaque, sip=sip), now)
            if key:
                tx.save_idempotent_result(IdempotentResult(pair.business, key, fingerprint, {"call_id": call_id}), now)
            return record

        try:
            record = await self.store.transaction(reserve)
        except RuleRefusal as refusal:
            self.observer.decision(
                "call", pair.business, pair.user, allowed=False, reason=refusal.decision.reason.value
            )
            raise
        if record.call_id == call_id:  # not an idempotent replay: the rules allowed this call
            self.observer.decision("call", pair.business, pair.user, allowed=True, reason="")
        if record.call_id != call_id:  # an idempotent replay
            return self._live(record)
        assert account is not None
        session = self._new_session(call_id, pair, account, route)
        try:
            offer = session.adapter.passthrough_offer
            if offer is None:
                session.platform = self._platform_leg(session)
                await session.attach_adapter()
                offer = await session.platform.create_offer()
                session.pickup_watch = self.spawn(self._connect_on_first_voice(session))
            # Nothing goes to the platform that it would refuse (the agent's offer was checked by the API).
            check_sdp(offer, "offer", "our")
            platform_call_id = await self.upstream.connect_call(
                account, await self.permissions.platform_wa_id(user), offer, opaque
            )
        except UpstreamRefusal as error:
            await self._fail_setup(call_id, error)
            raise PlatformRefusal(error, pair) from error
        except Exception as error:
            # Media setup on our side (an adapter, aiortc, our own SDP): the call fails before it is placed.
            log.warning("call %s: media setup failed: %s", call_id, error)
            await self._fail_setup(call_id, error)
            raise MediaSetupFailed(call_id, str(error)) from error
        record = await self._bind(call_id, platform_call_id)
        if isinstance(session.adapter, EngineBridgedRoute) and not record.answer_sdp:
            # The call shows the agent's SDP answer, as an in-process bridge's does: it needs the platform's.
            with contextlib.suppress(TimeoutError, EngineBridgeUnavailable):
                await asyncio.wait_for(session.adapter.leg.peer_answer(), PEER_ANSWER_WAIT.total_seconds())
            record = self._live(record)
        return record

    def _new_session(self, call_id: str, pair: Pair, account: Account, route: RoutePlan) -> CallSession:
        async def hangup(reason: str) -> None:
            self.spawn(self.end(call_id, reason=reason))

        adapter: MediaAdapter
        if route.sip is not None and self.sip_routes is not None:
            record = functools.partial(self.record_sip_leg, call_id)
            adapter = self.sip_routes.build(call_id, pair, route.sip, record)
        elif route.engine_bridge is not None and self.engine_bridges is not None:
            adapter = EngineBridgedRoute(self.engine_bridges(call_id, route.engine_bridge))
        else:
            adapter = route.factory()
        session = CallSession(call_id, pair, account, adapter, route.name, hangup)
        self.sessions[call_id] = session
        return session

    def _platform_leg(self, session: CallSession) -> PlatformLeg:
        """The engine's leg for an engine-bridged call, else one from the injected factory (in-process audio)."""
        if isinstance(session.adapter, EngineBridgedRoute | SipBridgedRoute):
            return session.adapter.leg
        return self.platform_legs(f"whatsapp {session.call_id}")

    async def _fail_setup(
        self,
        call_id: str,
        error: Exception,
        *,
        platform_action: CallAction | None = None,
        account: Account | None = None,
    ) -> CallRecord:
        """End the call FAILED with the error as its reason; `platform_action` (terminate, reject) tells the
        platform when the call exists there, through the session's account (`account` when there is no session
        yet). A call that already ended keeps its ending."""
        refusal = error if isinstance(error, UpstreamRefusal) and error.platform_code else None
        code = int(refusal.platform_code) if refusal is not None and refusal.platform_code.isdigit() else None
        platform_error = PlatformError(code, refusal.message, refusal.detail) if refusal is not None else None

        def fail(tx: Tx) -> CallRecord:
            now = self.clock.now()
            record = self._record(tx, call_id)
            if record.ended:
                return record
            record = self._save(
                tx,
                dataclasses.replace(
                    record,
                    facts=machine.apply(record.facts, machine.SetupFailed(now, code, str(error))),
                    platform_error=platform_error,
                    end_reason=f"setup failed: {error}",
                ),
                now,
            )
            if refusal is not None and refusal.reason is engine.Reason.NO_PERMISSION:
                # The platform says there is no permission (HOOK-6): believe it.
                self.permissions.record(
                    tx,
                    record.pair,
                    tx.ledger(record.pair),
                    engine.PermissionRevoked(now, engine.Source.PLATFORM_AUTOMATIC, adopted=True),
                    now,
                    {"reconciled_from": refusal.platform_code, "call_id": call_id},
                )
            return record

        record = await self.store.transaction(fail)
        session = self.sessions.get(call_id)
        acting_for = session.account if session is not None else account
        if platform_action is not None and record.platform_call_id and acting_for is not None:
            try:
                await self.upstream.call_action(acting_for, record.platform_call_id, platform_action)
            except UpstreamRefusal as refused:
                log.info("%s for %s: %s", platform_action.value, call_id, refused)
        await self._close_session(call_id)
        return record

    async def _bind(self, call_id: str, platform_call_id: str) -> CallRecord:
        """Record the platform's call id and apply whatever webhooks already arrived for it."""

        def bind(tx: Tx) -> tuple[CallRecord, list[CallEventItem]]:
            now = self.clock.now()
            record = self._record(tx, call_id)
            record = self._save(tx, dataclasses.replace(record, platform_call_id=platform_call_id), now)
            parked = [_item_from_json(e) for e in tx.take_parked_call_events(platform_call_id)]
            for item in parked:
                record = self._apply_to_call(tx, record, item, now)
            return record, parked

        record, parked = await self.store.transaction(bind)
        for item in parked:
            await self._media_after(record.call_id, item)
        return self._live(record)

    # --- webhooks (inside the ingest transaction) ---------------------------------------------------------------

    def apply_call_event(self, tx: Tx, business: str, item: CallEventItem, now: datetime) -> Outcome:
        """A call's event, in the delivery's transaction (the dispatch table's handler): the media work to run
        once it is committed, or why nothing was applied."""
        if not tx.claim(f"call:{item.call_id}:{item.kind}", now):
            return Skipped.DUPLICATE  # HOOK-1
        stored = tx.call_by_platform_id(item.call_id)
        if stored is None:
            if item.is_user_calling:
                pair = self.permissions.user_pair(tx, business, item.user_id, None)
                if pair is None:
                    return Skipped.UNKNOWN_USER
                superseded = self._end_superseded_call(tx, pair, item, now)
                call_id = "call_" + uuid.uuid4().hex
                record = CallRecord(
                    call_id,
                    pair,
                    CallFacts(Direction.USER_INITIATED, item.timestamp),
                    route=self.inbound_route_for(pair.business).name,
                    platform_call_id=item.call_id,
                    opaque=item.opaque,
                )
                self._save(tx, record, now)
                return lambda: self._answer_user_call_after(superseded, call_id, business, item.sdp)
            # Our own record of this call may not be bound yet (the webhook beat the connect response): keep it.
            tx.park_call_event(item.call_id, _item_to_json(item), now)
            return Skipped.PARKED
        self._apply_to_call(tx, from_stored(stored), item, now)
        return lambda: self._media_after(stored.call_id, item)

    def _end_superseded_call(self, tx: Tx, pair: Pair, item: CallEventItem, now: datetime) -> str | None:
        """The user calls while an earlier call of the pair is still open here (its terminate has not arrived).

        The platform allows one call per pair, so the earlier call is over: it ends now, as the platform would
        end it, and its own terminate, when it comes, still adds its facts. Returns the ended call's id.
        """
        earlier = tx.active_call(pair)
        if earlier is None:
            return None
        record = from_stored(earlier)
        reason = f"superseded: the user called again ({item.call_id}) before this call's terminate arrived"
        facts = machine.apply(record.facts, machine.Terminated(item.timestamp))
        self._save(tx, dataclasses.replace(record, facts=facts, end_reason=reason), now)
        return record.call_id

    async def _answer_user_call_after(
        self, superseded: str | None, call_id: str, business: str, offer_sdp: str
    ) -> None:
        if superseded is not None:
            await self._close_session(superseded)
        await self._answer_user_call(call_id, business, offer_sdp)

    def _apply_to_call(self, tx: Tx, record: CallRecord, item: CallEventItem, now: datetime) -> CallRecord:
        event = _event_from_item(item)
        if event is None:
            return record
        record = dataclasses.replace(record, facts=machine.apply(record.facts, event))
        if item.kind is CallEventKind.CONNECT and item.sdp and item.sdp_type == "answer" and not record.ended:
            record = dataclasses.replace(record, platform_answer_sdp=item.sdp)
        if item.kind is CallEventKind.TERMINATE and not record.end_reason:
            record = dataclasses.replace(
                record,
                end_reason="ended by the platform" + (f": {item.error_message}" if item.error_message else ""),
                platform_error=PlatformError(item.error_codes[0], item.error_message)
                if item.error_codes
                else record.platform_error,
            )
        return self._save(tx, record, now)

    async def _media_after(self, call_id: str, item: CallEventItem) -> None:
        session = self.sessions.get(call_id)
        if session is None:
            return
        if item.kind is CallEventKind.CONNECT and item.sdp and item.sdp_type == "answer":
            await self._take_platform_answer(session, item.sdp)
        elif item.kind is CallEventKind.ACCEPTED:
            await self._connected(session)
        elif item.kind is CallEventKind.TERMINATE:
            await self._close_session(call_id)

    async def _take_platform_answer(self, session: CallSession, sdp: str) -> None:
        """Apply the platform's SDP answer to the call's media, once (the webhook's handler here and the owner
        following the store may both see it)."""
        if session.answer_taken or session.closed:
            return
        session.answer_taken = True
        try:
            check_sdp(sdp, "answer", "the platform's")
            if session.platform is not None:
                # Apply at once: the platform fails calls whose answer is applied late (138007).
                await session.platform.apply_answer(sdp)
            else:
                await session.adapter.platform_answer(sdp)
        except Exception as error:  # aiortc refuses what it cannot apply with ValueError and friends
            log.warning("call %s: the platform's answer cannot be applied: %s", session.call_id, error)
            await self._fail_setup(session.call_id, error, platform_action=CallAction.TERMINATE)

    async def _connect_on_first_voice(self, session: CallSession) -> None:
        """HOOK-3: ACCEPTED often arrives after the media. The user's first audible frame means they picked up."""
        assert session.platform is not None
        if await session.platform.first_audio():
            await self._connected(session)

    async def _connected(self, session: CallSession) -> None:
        if not session.connected and not session.closed:
            session.connected = True
            await self._start_route(session)

    async def _start_route(self, session: CallSession) -> None:
        """Tell the route the user is on the line (at pickup, or at once for a route a connected call moved to)."""
        try:
            await session.adapter.connected()
        except Exception as error:  # e.g. a recording that cannot be opened: the user picked up, so end it
            log.warning("call %s: the route failed after pickup: %s", session.call_id, error)
            self.spawn(self.end(session.call_id, reason=f"the route failed after pickup: {error}"))

    async def _answer_user_call(self, call_id: str, business: str, offer_sdp: str) -> None:
        stored = await self.store.transaction(lambda tx: tx.call(call_id))
        assert stored is not None and stored.platform_call_id
        account = self.permissions.senders.account_for(self.permissions.parse_pair(business, stored.pair.user)[0])
        try:
            # Inside the try: a route that cannot run here (a sip route before the SIP endpoint is up) refuses the
            # call on the platform rather than leaving it ringing.
            session = self._new_session(call_id, stored.pair, account, self.inbound_route_for(stored.pair.business))
            check_sdp(offer_sdp, "offer", "the platform's")
            session.platform = self._platform_leg(session)
            await session.attach_adapter()
            answer = check_sdp(await session.platform.accept_offer(offer_sdp), "answer", "our")
        except Exception as error:  # nothing was sent yet: refuse the call on the platform
            log.warning("cannot answer user call %s: %s", call_id, error)
            await self._fail_setup(call_id, error, platform_action=CallAction.REJECT, account=account)
            return
        try:
            await self.upstream.call_action(account, stored.platform_call_id, CallAction.PRE_ACCEPT, answer)
            await self.upstream.call_action(account, stored.platform_call_id, CallAction.ACCEPT, answer)
        except UpstreamRefusal as error:
            log.warning("could not answer user call %s: %s", call_id, error)
            await self._fail_setup(call_id, error)
            return

        def accepted(tx: Tx) -> None:
            # For a user's call, the business accepting it is the pickup.
            now = self.clock.now()
            record = self._record(tx, call_id)
            self._save(tx, dataclasses.replace(record, facts=machine.apply(record.facts, machine.Accepted(now))), now)

        await self.store.transaction(accepted)
        await self._connected(session)

    # --- the SIP leg ----------------------------------------------------------------------------------------------

    async def record_sip_leg(self, call_id: str, leg: SipLeg) -> CallRecord:
        """Record (or update) the call's SIP leg: its trunk, SIP Call-ID, direction and last final status; a
        `call_updated` event says so, so GetCall and WatchEvents show it. The same leg again changes nothing."""

        def record(tx: Tx) -> CallRecord:
            stored = tx.call(call_id)
            if stored is None:
                raise CallNotFound(call_id)
            current = from_stored(stored)
            if current.sip == leg:
                return current
            return self._save(tx, dataclasses.replace(current, sip=leg), self.clock.now())

        return self._live(await self.store.transaction(record))

    # --- moving a live call -------------------------------------------------------------------------------------

    async def reroute(self, call_id: str, route: RoutePlan) -> CallRecord:
        """Move a live call held by this process to another route (hold audio → an agent, an announcement → a
        program). The platform leg stays as it is: no renegotiation, and the user hears the old route until the
        new one plays. The call's record names the new route once it carries the call."""
        session = self.sessions.get(call_id)
        if session is None or session.closed:
            await self.get(call_id)  # CallNotFound for a call that never existed
            raise CallNotLive(call_id, "the call has ended, or its media is held by another wacall process")
        if session.platform is None:
            raise RerouteRefused(call_id, f"the {session.route_name} route's media does not pass through wacall")
        if isinstance(session.platform, EngineBridgeLeg):
            raise RerouteRefused(
                call_id,
                f"the {session.route_name} call is bridged in rtpengine: the user's media does not pass through "
                "wacall, so no route in this process can take it; only a new call",
            )
        adapter = route.factory()
        if adapter.passthrough_offer is not None:
            await adapter.close()
            raise RerouteRefused(call_id, f"a {route.name} route needs its own offer to the platform: only a new call")
        try:
            await session.reroute(adapter, route.name)
        except SessionClosed:
            raise CallNotLive(call_id, "the call ended while it was being rerouted") from None
        if session.connected:
            await self._start_route(session)

        def record_route(tx: Tx) -> CallRecord:
            record = self._record(tx, call_id)
            if record.ended:  # it ended since: its record keeps the route it ended on
                return record
            return self._save(tx, dataclasses.replace(record, route=route.name), self.clock.now())

        return self._live(await self.store.transaction(record_route))

    # --- ending -------------------------------------------------------------------------------------------------

    async def end(self, call_id: str, *, reason: str = "ended by the business") -> CallRecord:
        """End the call. It finishes even when the caller stops waiting (a cancelled RPC, a media stream client
        that hangs up and goes): once the end is recorded, the platform must hear it and the media must go."""
        ending = asyncio.ensure_future(self._end(call_id, reason))
        self._background.add(ending)
        ending.add_done_callback(self._background.discard)
        return await asyncio.shield(ending)

    async def _end(self, call_id: str, reason: str) -> CallRecord:
        def mark(tx: Tx) -> tuple[CallRecord, bool]:
            now = self.clock.now()
            stored = tx.call(call_id)
            if stored is None:
                raise CallNotFound(call_id)
            record = from_stored(stored)
            if record.ended:
                return record, False
            facts = machine.apply(record.facts, machine.EndedByBusiness(now))
            return self._save(tx, dataclasses.replace(record, facts=facts, end_reason=reason), now), True

        record, changed = await self.store.transaction(mark)
        if changed:
            session = self.sessions.get(call_id)
            if record.platform_call_id:
                try:
                    # Always tell the platform, whether or not this process runs the call's media: billing depends
                    # on it (§7.2).
                    account = session.account if session is not None else self._account_of(record.pair)
                    await self.upstream.call_action(account, record.platform_call_id, CallAction.TERMINATE)
                except UpstreamRefusal as error:
                    log.info("terminate for %s: %s", call_id, error)
            await self._close_session(call_id)
            return await self.get(call_id)  # with the media the call carried
        return record

    async def _close_session(self, call_id: str) -> None:
        session = self.sessions.get(call_id)
        if session is None or session.closed:
            return
        try:
            counters = await session.close()
            answer_sdp = session.adapter.answer_sdp()

            def keep_media(tx: Tx) -> CallRecord | None:
                # What the live session knew is read here, on the event loop, and only stored in the transaction.
                stored = tx.call(call_id)
                if stored is None:
                    return None
                record = from_stored(stored)
                kept = dataclasses.replace(record, media=counters, answer_sdp=record.answer_sdp or answer_sdp)
                tx.save_call(to_stored(kept))
                return kept

            kept = await self.store.transaction(keep_media)
            if kept is not None:
                self.observer.call_ended(kept.route, kept.outcome.value if kept.outcome else "", counters)
        finally:
            # Popped once the media is stored: until then a read still finds the counters in the session.
            self.sessions.pop(call_id, None)

    # --- reads ----------------------------------------------------------------------------------------------------

    async def get(self, call_id: str) -> CallRecord:
        stored = await self.store.transaction(lambda tx: tx.call(call_id))
        if stored is None:
            raise CallNotFound(call_id)
        return self._live(from_stored(stored))

    async def list(
        self, business: str | None, user: str | None, before: tuple[int, str] | None, limit: int
    ) -> list[CallRecord]:
        return [
            self._live(from_stored(s))
            for s in await self.store.list_calls(business=business, user=user, before=before, limit=limit)
        ]

    def session(self, call_id: str) -> CallSession | None:
        return self.sessions.get(call_id)

    async def updates(self, call_id: str) -> AsyncIterator[CallRecord]:
        """The call each time it changes, until it ends."""
        last: tuple[Any, ...] | None = None
        while True:
            ticket = self.store.changes.ticket()
            view = await self.get(call_id)
            key = (view.state, view.outcome, view.facts.answered_at, view.route, view.sip)
            if key != last:
                last = key
                yield view
            if view.state is CallState.ENDED:
                return
            await wait_for_change(ticket, 1.0)

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def start_background(self) -> None:
        """End the calls whose owner is gone (this service before a restart, a process that was killed), then keep
        this process's call leases, end calls whose owner stops renewing, and watch media liveness."""
        await self._end_orphans("the service restarted during the call", earlier_runs=True)
        self._watchdog = asyncio.create_task(self._watch_media())
        self._renewed_at = self.wall_clock.now()
        self.spawn(self._keep_leases())
        self.spawn(self._guard_leases())
        self.spawn(self._follow_held_calls())

    def is_earlier_run(self, instance: str) -> bool:
        """`instance` is this process's name in an earlier run (same instance name, another run): gone."""
        prefix = self._earlier_runs
        return prefix is not None and instance.startswith(prefix) and instance != self.instance

    def _lease_until(self, tx: Tx) -> datetime:
        # On the store's clock, which every replica shares (see `Tx.store_now`), not this process's.
        return tx.store_now() + self.call_lease

    async def _keep_leases(self) -> None:
        """Renew this process's leases three times per lease (two missed renewals still leave it valid), and end
        the calls of any process that stopped renewing: a process sharing the database was killed or cut off.

        Other processes' calls are ended only once this one has reached the store for a whole lease without a
        failure: while the database was unreachable every owner's leases ran out together, and a living owner
        needs its next renewal (within a third of a lease) to say it is alive."""
        reachable_since: datetime | None = self.wall_clock.now()
        while True:
            await self.wall_clock.sleep(self.call_lease / 3)
            started = self.wall_clock.now()
            try:
                # Ahead of client traffic (its own connection and thread on PostgreSQL): a backlog of requests
                # must not cost a living process its leases.
                await self.store.transaction(self._renew, priority=True)
                self._renewed_at = max(self._renewed_at, started)
                reachable_since = reachable_since or self.wall_clock.now()
                await self._end_fenced_calls()
                if self.wall_clock.now() - reachable_since >= self.call_lease:
                    await self._end_orphans("the process holding the call stopped renewing its lease")
                await self._release_calls_ended_elsewhere()
            except StoreError as error:
                if reachable_since is not None:
                    log.warning("renewing call leases failed (%s); trying again every %s", error, self.call_lease / 3)
                reachable_since = None
            except Exception:
                log.exception("renewing call leases failed; trying again")

    async def _guard_leases(self) -> None:
        """Fence this process off its calls when its leases may have run out: a renewal commits a lease of
        `call_lease` from (at the latest) when it began, so once nearly that long has passed since the newest
        renewal began, another replica may claim the calls any moment. The margin (a sixth of a lease) covers a
        claim pass that starts as the lease ends."""
        margin = self.call_lease / 6
        while True:
            lapse = self.wall_clock.now() - self._renewed_at
            if lapse >= self.call_lease - margin:
                await self._fence(self._renewed_at)
                await self.wall_clock.sleep(self.call_lease / 6)
            else:
                await self.wall_clock.sleep(min(self.call_lease - margin - lapse, timedelta(seconds=1)))

    async def _fence(self, renewed_at: datetime) -> None:
        """Stop the media of every call this process holds: it could not renew their leases for (almost) a whole
        lease, so another replica may claim and end them any moment, and two processes must never both run a call.
        The calls are ended in the store once it answers again (`_end_fenced_calls`)."""
        held = [call_id for call_id, session in self.sessions.items() if not session.closed]
        for call_id in held:
            log.warning(
                "call %s: this process has not renewed its lease since %s; stopping its media", call_id, renewed_at
            )
            self._fenced.add(call_id)
            with contextlib.suppress(StoreError):
                await self._close_session(call_id)  # the media stops even when its counters cannot be stored

    async def _end_fenced_calls(self) -> None:
        for call_id in sorted(self._fenced):
            with contextlib.suppress(CallNotFound):
                await self.end(call_id, reason="the process holding the call could not renew its lease")
            self._fenced.discard(call_id)

    def _renew(self, tx: Tx) -> None:
        """Renew this process's call leases and its heartbeat in the replica registry, both until the same time."""
        until = self._lease_until(tx)
        tx.renew_call_leases(self.instance, until)
        if self.advertised_address:
            tx.save_replica(Replica(self.instance, self.advertised_address, until))
            tx.forget_replicas(until - FORGET_REPLICAS_AFTER)

    # --- several replicas: the registry, call owners, and following the store ---------------------------------------

    async def advertise(self, address: str) -> None:
        """Record this process in the replica registry at `address` (the gRPC address other replicas reach it at),
        from now on renewed with its call leases."""
        self.advertised_address = address
        await self.store.transaction(self._renew)

    async def owner_elsewhere(self, call_id: str) -> CallOwner | None:
        """The other process that runs the call's media, when control of the call must go there; None when this
        process answers for the call itself (it holds the call's session, owns it, or the call has ended: the
        store's record answers). CallNotFound for a call that never existed."""
        session = self.sessions.get(call_id)
        if session is not None and not session.closed:
            return None

        def read(tx: Tx) -> CallOwner | None:
            stored = tx.call(call_id)
            if stored is None:
                raise CallNotFound(call_id)
            if not stored.active or not stored.owner or stored.owner == self.instance:
                return None
            replica = tx.replica(stored.owner)
            return CallOwner(
                call_id,
                stored.owner,
                replica.address if replica is not None else "",
                replica.heartbeat_expires_at if replica is not None else None,
                stored.lease_expires_at,
                tx.store_now(),
            )

        return await self.store.transaction(read)

    def owner_unreachable(self, owner: CallOwner, why: str) -> CallOwnerUnreachable:
        """The refusal for control of a call whose owner cannot be reached, with how long until another replica
        takes the call over (the owner's lease, then a pass of the lease keeper: every third of a lease)."""
        return CallOwnerUnreachable(owner, why, owner.takeover_in(self.call_lease / 3))

    async def _follow_held_calls(self) -> None:
        """Act on the calls this process holds as the store records them. A webhook for one of them may land on any
        replica, which applies it in the store; the owner reads the change here and does the media work (apply the
        platform's answer, start the route at pickup, close at the end). When this process ingested the webhook
        itself, the work is done already and nothing happens twice."""
        failing = False
        while True:
            ticket = self.store.changes.ticket()
            try:
                await self._catch_up_held_calls()
                failing = False
            except StoreError as error:
                if not failing:  # once per outage, not five times a second
                    log.warning("reading this process's calls back from the store failed (%s); trying again", error)
                failing = True
            except Exception:
                log.exception("reading this process's calls back from the store failed; trying again")
            await wait_for_change(ticket, FOLLOW_POLL.total_seconds())
            await asyncio.sleep(MIN_FOLLOW_GAP.total_seconds())

    async def _catch_up_held_calls(self) -> None:
        held = {call_id: session for call_id, session in self.sessions.items() if not session.closed}
        if not held:
            return

        def read(tx: Tx) -> dict[str, CallRecord]:
            return {call_id: from_stored(stored) for call_id in held if (stored := tx.call(call_id)) is not None}

        for call_id, record in (await self.store.transaction(read)).items():
            session = held[call_id]
            if session.closed:
                continue
            if record.ended:
                log.info("call %s ended (%s): releasing its media", call_id, record.end_reason or record.outcome)
                await self._close_session(call_id)
                continue
            if record.platform_answer_sdp and not session.answer_taken:
                await self._take_platform_answer(session, record.platform_answer_sdp)
            if record.state is CallState.CONNECTED and not session.connected:
                await self._connected(session)

    async def _release_calls_ended_elsewhere(self) -> None:
        """Close the sessions of calls another process ended: this one stalled past its lease (a long pause, a
        partition from the database) and the call was taken as abandoned. Its media must not run on unrecorded."""
        held = [call_id for call_id, session in self.sessions.items() if not session.closed]
        if not held:
            return

        def ended_elsewhere(tx: Tx) -> list[str]:
            # Another process ends a call only by claiming it: the owner changed. (A call this process is ending
            # itself is inactive before its session closes, and still ours.)
            return [
                call_id
                for call_id in held
                if (stored := tx.call(call_id)) is not None and not stored.active and stored.owner != self.instance
            ]

        for call_id in await self.store.transaction(ended_elsewhere):
            log.warning("call %s was ended by another process while this one held it: releasing its media", call_id)
            await self._close_session(call_id)

    async def _end_orphans(self, reason: str, *, earlier_runs: bool = False) -> None:
        """End every open call whose owner's lease expired (or that has no owner), and with `earlier_runs` those
        this process's earlier runs left (same instance name, another run). Each is claimed and ended in one
        transaction, so exactly one process ends it, however many look; then the platform is told."""

        def left_by_an_earlier_run(stored: StoredCall) -> bool:
            return self.is_earlier_run(stored.owner)

        def claim_and_end(tx: Tx) -> list[CallRecord]:
            now = self.clock.now()
            listed = [s for s in tx.open_calls() if left_by_an_earlier_run(s)] if earlier_runs else []
            # The listing locks nothing: each call is read again under its lock, and left alone when it ended
            # meanwhile (a terminate webhook on another replica), so no concurrent update is overwritten.
            mine_before = [c for s in listed if (c := tx.call(s.call_id)) is not None and c.active]
            expired = tx.claim_expired_calls(
                claimant=self.instance, now=tx.store_now(), lease_until=self._lease_until(tx)
            )
            ended = []
            for stored in {s.call_id: s for s in [*mine_before, *expired]}.values():
                record = from_stored(stored)
                facts = machine.apply(record.facts, machine.EndedByBusiness(now))
                ended.append(self._save(tx, dataclasses.replace(record, facts=facts, end_reason=reason), now))
            return ended

        for record in await self.store.transaction(claim_and_end):
            await self._end_orphan(record)

    def _account_of(self, pair: Pair) -> Account:
        business = self.permissions.parse_pair(pair.business, pair.user)[0]
        return self.permissions.senders.account_for(business)

    async def _end_orphan(self, record: CallRecord) -> None:
        """Tell the platform a call ended here without its media (it may still be up there)."""
        if record.platform_call_id:
            try:
                account = self._account_of(record.pair)
                await self.upstream.call_action(account, record.platform_call_id, CallAction.TERMINATE)
            except Exception as error:
                log.info("terminate of orphan call %s: %s", record.call_id, error)

    async def _watch_media(self) -> None:
        """MEDIA-1: aiortc has no 'disconnected' state. No audio from the user for `media_timeout` → end the call."""
        while True:
            await asyncio.sleep(1.0)
            self._check_media(time.monotonic())

    def _check_media(self, now: float) -> None:
        # Its own function: a loop variable left in the watchdog's frame would keep the last ended call's peer
        # connection (and its encoder's threads) alive.
        for session in list(self.sessions.values()):
            if session.platform is None or session.closed:
                continue
            frames = session.platform.counters().frames_received
            if frames != session.last_frames or not session.connected:
                # A ringing phone may send nothing; the clock starts once the user picked up.
                session.last_frames, session.last_progress = frames, now
            elif now - session.last_progress > self.media_timeout.total_seconds():
                session.last_progress = now
                log.warning("call %s: no media from the user for %s", session.call_id, self.media_timeout)
                self.observer.media_timed_out(session.route_name)
                self.spawn(
                    self.end(
                        session.call_id,
                        reason=f"no media from the user for {self.media_timeout.total_seconds():g} s",
                    )
                )

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for call_id in list(self.sessions):
            await self.end(call_id, reason="the service is shutting down")
        pending = {*self._background, *([self._watchdog] if self._watchdog is not None else [])}
        while pending:
            # Cancelled again until done: a task that loses a cancel (a media helper that swallows its caller's
            # while it stops a track, as a held call's session closes) must not keep the shutdown waiting.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background call task failed", exc_info=task.exception())
