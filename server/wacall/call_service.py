"""Call control: place, follow and end calls; feed every outcome to the rules ledger; run each call's media.

Decisions and facts are committed before anything is acknowledged (the same store transactions as permissions).
Media work (aiortc, adapters) happens after the commit, on this process's event loop, and every path that ends a
call releases its session: `_finish` is the one place that closes a leg and an adapter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from wacall import calls, engine
from wacall.calls import CallFacts, CallOutcome, CallState, Direction
from wacall.clock import Clock
from wacall.events import EventKind
from wacall.inbound import CallEventItem, CallEventKind
from wacall.ingest import Outcome, Skipped
from wacall.media.leg import AudioLeg
from wacall.media.sdp import SdpType, platform_problems
from wacall.media.tracks import AudioSource, FrameHandler
from wacall.permissions import (
    IdempotencyConflict,
    InvalidField,
    PermissionService,
    PlatformRefusal,
    RuleRefusal,
)
from wacall.store import (
    EventRecord,
    IdempotentResult,
    Pair,
    StoredCall,
    Tx,
    from_micros,
    optional_datetime,
    optional_micros,
    to_micros,
)
from wacall.upstreams.base import Account, CallAction, Upstream, UpstreamRefusal
from wacall_adapters.base import MediaAdapter

log = logging.getLogger(__name__)

MAX_OPAQUE = 512
MAX_IDEMPOTENCY_KEY = 128
AdapterFactory = Callable[[], MediaAdapter]


class CallNotFound(LookupError):
    pass


class MediaSetupFailed(Exception):
    """The call's media could not be set up on our side before it was placed; the call is recorded FAILED."""

    def __init__(self, call_id: str, why: str) -> None:
        super().__init__(f"{call_id}: {why}")
        self.call_id = call_id
        self.why = why


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


@dataclass(frozen=True, slots=True)
class MediaCounters:
    frames_sent: int = 0
    frames_received: int = 0
    audible_frames_received: int = 0
    mean_level_received: float = 0.0


@dataclass(frozen=True, slots=True)
class CallView:
    """A call as the API shows it."""

    call_id: str
    pair: Pair
    direction: Direction
    facts: CallFacts
    route: str
    platform_call_id: str | None
    opaque: str
    platform_error: Mapping[str, Any] | None
    answer_sdp: str
    end_reason: str
    media: MediaCounters

    @property
    def state(self) -> CallState:
        return self.facts.state

    @property
    def outcome(self) -> CallOutcome | None:
        return self.facts.outcome


# --- facts ⇄ JSON ------------------------------------------------------------------------------------------------


def _facts_to_json(facts: CallFacts) -> dict[str, Any]:

    return {
        "direction": facts.direction.value,
        "created_at": to_micros(facts.created_at),
        "state": facts.state.value,
        "answered_at": optional_micros(facts.answered_at),
        "ended_at": optional_micros(facts.ended_at),
        "duration_seconds": facts.duration_seconds,
        "rejected": facts.rejected,
        "ended_by_business_before_answer": facts.ended_by_business_before_answer,
        "setup_failed": facts.setup_failed,
        "error_codes": list(facts.error_codes),
        "error_detail": facts.error_detail,
        "connected_applied": facts.connected_applied,
        "unanswered_applied": facts.unanswered_applied,
        "window_applied": facts.window_applied,
    }


def _facts_from_json(data: Mapping[str, Any]) -> CallFacts:

    return CallFacts(
        direction=Direction(data["direction"]),
        created_at=from_micros(data["created_at"]),
        state=CallState(data["state"]),
        answered_at=optional_datetime(data["answered_at"]),
        ended_at=optional_datetime(data["ended_at"]),
        duration_seconds=data["duration_seconds"],
        rejected=data["rejected"],
        ended_by_business_before_answer=data["ended_by_business_before_answer"],
        setup_failed=data["setup_failed"],
        error_codes=tuple(data["error_codes"]),
        error_detail=data["error_detail"],
        connected_applied=data["connected_applied"],
        unanswered_applied=data["unanswered_applied"],
        window_applied=data.get("window_applied", False),
    )


def _event_from_item(item: CallEventItem) -> calls.CallEvent | None:
    match item.kind:
        case CallEventKind.CONNECT:
            return calls.Connect(item.timestamp)
        case CallEventKind.RINGING:
            return calls.Ringing(item.timestamp)
        case CallEventKind.ACCEPTED:
            return calls.Accepted(item.timestamp)
        case CallEventKind.REJECTED:
            return calls.Rejected(item.timestamp)
        case CallEventKind.TERMINATE:
            return calls.Terminated(
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


# --- sessions: the live media of one call ------------------------------------------------------------------------


@dataclass
class CallSession:
    call_id: str
    pair: Pair
    account: Account
    adapter: MediaAdapter
    leg: AudioLeg | None = None
    connected: bool = False
    closed: bool = False
    last_frames: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    pickup_watch: asyncio.Task[Any] | None = None

    def counters(self) -> MediaCounters:
        if self.leg is None:
            return MediaCounters()
        consumer = self.leg.consumer
        return MediaCounters(
            frames_sent=self.leg.outgoing.frames_sent,
            frames_received=consumer.frames if consumer else 0,
            audible_frames_received=consumer.audible_frames if consumer else 0,
            mean_level_received=consumer.mean_level if consumer else 0.0,
        )


class _Leg:
    """What an adapter sees of a call (wacall_adapters.base.CallLeg)."""

    def __init__(self, service: CallService, session: CallSession) -> None:
        self.call_id = session.call_id
        self._service = service
        self._session = session

    def play(self, source: AudioSource) -> None:
        if self._session.leg is not None:
            self._session.leg.set_source(source)

    def listen(self, handler: FrameHandler) -> None:
        if self._session.leg is not None:
            self._session.leg.handlers.append(handler)
            if self._session.leg.consumer is not None:
                self._session.leg.consumer.handlers.append(handler)

    async def hangup(self, reason: str) -> None:
        self._service.spawn(self._service.end(self.call_id, reason=reason))


class CallService:
    def __init__(
        self,
        permissions: PermissionService,
        upstream: Upstream,
        *,
        inbound_route: AdapterFactory,
        inbound_route_name: str = "announcement",
        media_timeout: timedelta = timedelta(seconds=20),
    ) -> None:
        self.permissions = permissions
        self.store = permissions.store
        self.clock: Clock = permissions.clock
        self.upstream = upstream
        self.inbound_route = inbound_route
        self.inbound_route_name = inbound_route_name
        self.media_timeout = media_timeout
        self.sessions: dict[str, CallSession] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    # --- helpers ------------------------------------------------------------------------------------------------

    def spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    def _view(self, stored: StoredCall) -> CallView:
        data = stored.data
        session = self.sessions.get(stored.call_id)
        media = session.counters() if session is not None else MediaCounters(**data.get("media", {}))
        answer = data.get("answer_sdp", "")
        if session is not None and not answer:
            answer = session.adapter.answer_sdp()
        return CallView(
            call_id=stored.call_id,
            pair=stored.pair,
            direction=Direction(stored.direction),
            facts=_facts_from_json(data["facts"]),
            route=data.get("route", ""),
            platform_call_id=stored.platform_call_id,
            opaque=data.get("opaque", ""),
            platform_error=data.get("platform_error"),
            answer_sdp=answer,
            end_reason=data.get("end_reason", ""),
            media=media,
        )

    def _save(self, tx: Tx, stored: StoredCall, facts: CallFacts, now: datetime, **data: Any) -> StoredCall:
        """Save the call with new facts, tell the ledger what it must learn, and log the update."""
        facts, effects = calls.ledger_effects(facts)
        ledger = tx.ledger(stored.pair)
        for effect in effects:
            ledger = self.permissions.record(tx, stored.pair, ledger, effect, now, {"call_id": stored.call_id})
        merged = {**stored.data, **data, "facts": _facts_to_json(facts)}
        if facts.state is CallState.ENDED and "media" not in data:
            session = self.sessions.get(stored.call_id)
            if session is not None:
                merged["media"] = _counters_dict(session.counters())
        updated = StoredCall(
            call_id=stored.call_id,
            pair=stored.pair,
            direction=stored.direction,
            created_at=stored.created_at,
            state=facts.state.value,
            data=merged,
            platform_call_id=data.get("platform_call_id", stored.platform_call_id),
            active=facts.state is not CallState.ENDED,
        )
        tx.save_call(updated)
        view = self._view(updated)
        tx.append(
            EventRecord(
                stored.pair,
                EventKind.CALL_UPDATED,
                engine.Source.BUSINESS.value
                if facts.direction is Direction.BUSINESS_INITIATED
                else engine.Source.USER_ACTION.value,
                now,
                now,
                engine.effective_state(ledger, now),
                {"call_id": stored.call_id, "call": json.dumps(call_snapshot(view))},
            )
        )
        return updated

    # --- placing a call -----------------------------------------------------------------------------------------

    async def start(
        self,
        business_number: str,
        user_number: str,
        route: AdapterFactory,
        route_name: str,
        *,
        opaque: str = "",
        idempotency_key: str = "",
        fingerprint_extra: str = "",
    ) -> CallView:
        business, user = self.permissions.parse_pair(business_number, user_number)
        if len(opaque) > MAX_OPAQUE:
            raise InvalidField("biz_opaque_callback_data", f"at most {MAX_OPAQUE} characters")
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidField("idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY} characters")
        pair = Pair(business.e164, user.e164)
        account = None
        if business.region not in self.permissions.policy.denied_business_regions:
            account = self.permissions.senders.account_for(business)
        key = f"call:{idempotency_key}" if idempotency_key else ""
        fingerprint = hashlib.sha256(
            json.dumps([pair.business, pair.user, route_name, opaque, fingerprint_extra]).encode()
        ).hexdigest()
        call_id = "call_" + uuid.uuid4().hex

        def reserve(tx: Tx) -> StoredCall:
            now = self.clock.now()
            if key:
                earlier = tx.idempotent_result(pair.business, key)
                if earlier is not None:
                    if earlier.fingerprint != fingerprint:
                        raise IdempotencyConflict("this idempotency_key was used for a different call; use a new key")
                    found = tx.call(earlier.outcome["call_id"])
                    assert found is not None
                    return found
            evaluation = self.permissions.evaluate(tx, pair, business, now)
            if not evaluation.call.allowed:
                raise RuleRefusal(evaluation.call, evaluation, pair)
            facts = CallFacts(Direction.BUSINESS_INITIATED, now)
            stored = StoredCall(call_id, pair, Direction.BUSINESS_INITIATED.value, now, facts.state.value, {})
            stored = self._save(tx, stored, facts, now, route=route_name, opaque=opaque)
            if key:
                tx.save_idempotent_result(IdempotentResult(pair.business, key, fingerprint, {"call_id": call_id}), now)
            return stored

        stored = await self.store.transaction(reserve)
        self.permissions.changes.notify()
        if stored.call_id != call_id:  # an idempotent replay
            return self._view(stored)
        assert account is not None
        adapter = route()
        session = CallSession(call_id, pair, account, adapter)
        self.sessions[call_id] = session
        try:
            offer = adapter.passthrough_offer
            if offer is None:
                session.leg = AudioLeg(name=f"whatsapp {call_id}")
                await adapter.attach(_Leg(self, session))
                offer = await session.leg.create_offer()
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
        return await self._bind(call_id, platform_call_id)

    async def _fail_setup(
        self, call_id: str, error: Exception, *, platform_action: CallAction | None = None
    ) -> CallView:
        """End the call FAILED with the error as its reason; `platform_action` (terminate, reject) tells the
        platform when the call exists there. A call that already ended keeps its ending."""
        refusal = error if isinstance(error, UpstreamRefusal) and error.platform_code else None
        code = int(refusal.platform_code) if refusal is not None and refusal.platform_code.isdigit() else None
        error_detail = (
            {"code": code, "message": refusal.message, "details": refusal.detail} if refusal is not None else None
        )

        def fail(tx: Tx) -> StoredCall:
            now = self.clock.now()
            stored = tx.call(call_id)
            assert stored is not None
            if _facts_from_json(stored.data["facts"]).state is CallState.ENDED:
                return stored
            facts = calls.apply(_facts_from_json(stored.data["facts"]), calls.SetupFailed(now, code, str(error)))
            stored = self._save(
                tx, stored, facts, now, platform_error=error_detail, end_reason=f"setup failed: {error}"
            )
            if refusal is not None and refusal.reason is engine.Reason.NO_PERMISSION:
                # The platform says there is no permission (HOOK-6): believe it.
                self.permissions.record(
                    tx,
                    stored.pair,
                    tx.ledger(stored.pair),
                    engine.PermissionRevoked(now, engine.Source.PLATFORM_AUTOMATIC, adopted=True),
                    now,
                    {"reconciled_from": refusal.platform_code, "call_id": call_id},
                )
            return stored

        stored = await self.store.transaction(fail)
        self.permissions.changes.notify()
        session = self.sessions.get(call_id)
        if platform_action is not None and stored.platform_call_id and session is not None:
            try:
                await self.upstream.call_action(session.account, stored.platform_call_id, platform_action)
            except UpstreamRefusal as refused:
                log.info("%s for %s: %s", platform_action.value, call_id, refused)
        await self._close_session(call_id)
        return self._view(stored)

    async def _bind(self, call_id: str, platform_call_id: str) -> CallView:
        """Record the platform's call id and apply whatever webhooks already arrived for it."""

        def bind(tx: Tx) -> tuple[StoredCall, list[CallEventItem]]:
            now = self.clock.now()
            stored = tx.call(call_id)
            assert stored is not None
            stored = self._save(
                tx, stored, _facts_from_json(stored.data["facts"]), now, platform_call_id=platform_call_id
            )
            parked = [_item_from_json(e) for e in tx.take_parked_call_events(platform_call_id)]
            for item in parked:
                stored = self._apply_to_call(tx, stored, item, now)
            return stored, parked

        stored, parked = await self.store.transaction(bind)
        self.permissions.changes.notify()
        for item in parked:
            await self._media_after(stored.call_id, item)
        return self._view(stored)

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
                facts = CallFacts(Direction.USER_INITIATED, item.timestamp)
                stored = StoredCall(
                    call_id,
                    pair,
                    Direction.USER_INITIATED.value,
                    item.timestamp,
                    facts.state.value,
                    {},
                    platform_call_id=item.call_id,
                )
                stored = self._save(
                    tx,
                    stored,
                    facts,
                    now,
                    route=self.inbound_route_name,
                    platform_call_id=item.call_id,
                    opaque=item.opaque,
                )
                return lambda: self._answer_user_call_after(superseded, stored.call_id, business, item.sdp)
            # Our own record of this call may not be bound yet (the webhook beat the connect response): keep it.
            tx.park_call_event(item.call_id, _item_to_json(item), now)
            return Skipped.PARKED
        self._apply_to_call(tx, stored, item, now)
        return lambda: self._media_after(stored.call_id, item)

    def _end_superseded_call(self, tx: Tx, pair: Pair, item: CallEventItem, now: datetime) -> str | None:
        """The user calls while an earlier call of the pair is still open here (its terminate has not arrived).

        The platform allows one call per pair, so the earlier call is over: it ends now, as the platform would
        end it, and its own terminate, when it comes, still adds its facts. Returns the ended call's id.
        """
        earlier = tx.active_call(pair)
        if earlier is None:
            return None
        facts = calls.apply(_facts_from_json(earlier.data["facts"]), calls.Terminated(item.timestamp))
        reason = f"superseded: the user called again ({item.call_id}) before this call's terminate arrived"
        self._save(tx, earlier, facts, now, end_reason=reason)
        return earlier.call_id

    async def _answer_user_call_after(
        self, superseded: str | None, call_id: str, business: str, offer_sdp: str
    ) -> None:
        if superseded is not None:
            await self._close_session(superseded)
        await self._answer_user_call(call_id, business, offer_sdp)

    def _apply_to_call(self, tx: Tx, stored: StoredCall, item: CallEventItem, now: datetime) -> StoredCall:
        event = _event_from_item(item)
        if event is None:
            return stored
        facts = calls.apply(_facts_from_json(stored.data["facts"]), event)
        extra: dict[str, Any] = {}
        if item.kind is CallEventKind.TERMINATE and not stored.data.get("end_reason"):
            extra["end_reason"] = "ended by the platform" + (f": {item.error_message}" if item.error_message else "")
            if item.error_codes:
                extra["platform_error"] = {"code": item.error_codes[0], "message": item.error_message, "details": ""}
        return self._save(tx, stored, facts, now, **extra)

    async def _media_after(self, call_id: str, item: CallEventItem) -> None:
        session = self.sessions.get(call_id)
        if session is None:
            return
        if item.kind is CallEventKind.CONNECT and item.sdp and item.sdp_type == "answer":
            try:
                check_sdp(item.sdp, "answer", "the platform's")
                if session.leg is not None:
                    # Apply at once: the platform fails calls whose answer is applied late (138007).
                    await session.leg.apply_answer(item.sdp)
                else:
                    await session.adapter.platform_answer(item.sdp)
            except Exception as error:  # aiortc refuses what it cannot apply with ValueError and friends
                log.warning("call %s: the platform's answer cannot be applied: %s", call_id, error)
                await self._fail_setup(call_id, error, platform_action=CallAction.TERMINATE)
        elif item.kind is CallEventKind.ACCEPTED:
            await self._connected(session)
        elif item.kind is CallEventKind.TERMINATE:
            await self._close_session(call_id)

    async def _connect_on_first_voice(self, session: CallSession) -> None:
        """HOOK-3: ACCEPTED often arrives after the media. The user's first audible frame means they picked up."""
        assert session.leg is not None
        await session.leg.remote_track
        consumer = session.leg.consumer
        if consumer is not None:
            await consumer.first_frame
            await self._connected(session)

    async def _connected(self, session: CallSession) -> None:
        if not session.connected and not session.closed:
            session.connected = True
            try:
                await session.adapter.connected()
            except Exception as error:  # e.g. a recording that cannot be opened: the user picked up, so end it
                log.warning("call %s: the route failed after pickup: %s", session.call_id, error)
                self.spawn(self.end(session.call_id, reason=f"the route failed after pickup: {error}"))

    async def _answer_user_call(self, call_id: str, business: str, offer_sdp: str) -> None:
        stored = await self.store.transaction(lambda tx: tx.call(call_id))
        assert stored is not None and stored.platform_call_id
        account = self.permissions.senders.account_for(self.permissions.parse_pair(business, stored.pair.user)[0])
        session = CallSession(call_id, stored.pair, account, self.inbound_route())
        self.sessions[call_id] = session
        try:
            check_sdp(offer_sdp, "offer", "the platform's")
            session.leg = AudioLeg(name=f"whatsapp {call_id}")
            await session.adapter.attach(_Leg(self, session))
            answer = check_sdp(await session.leg.accept_offer(offer_sdp), "answer", "our")
        except Exception as error:  # nothing was sent yet: refuse the call on the platform
            log.warning("cannot answer user call %s: %s", call_id, error)
            await self._fail_setup(call_id, error, platform_action=CallAction.REJECT)
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
            current = tx.call(call_id)
            assert current is not None
            self._save(tx, current, calls.apply(_facts_from_json(current.data["facts"]), calls.Accepted(now)), now)

        await self.store.transaction(accepted)
        self.permissions.changes.notify()
        await self._connected(session)

    # --- ending -------------------------------------------------------------------------------------------------

    async def end(self, call_id: str, *, reason: str = "ended by the business") -> CallView:
        """End the call. It finishes even when the caller stops waiting (a cancelled RPC, a media stream client
        that hangs up and goes): once the end is recorded, the platform must hear it and the media must go."""
        ending = asyncio.ensure_future(self._end(call_id, reason))
        self._background.add(ending)
        ending.add_done_callback(self._background.discard)
        return await asyncio.shield(ending)

    async def _end(self, call_id: str, reason: str) -> CallView:
        def mark(tx: Tx) -> tuple[StoredCall, bool]:
            now = self.clock.now()
            stored = tx.call(call_id)
            if stored is None:
                raise CallNotFound(call_id)
            facts = _facts_from_json(stored.data["facts"])
            if facts.state is CallState.ENDED:
                return stored, False
            stored = self._save(tx, stored, calls.apply(facts, calls.EndedByBusiness(now)), now, end_reason=reason)
            return stored, True

        stored, changed = await self.store.transaction(mark)
        if changed:
            self.permissions.changes.notify()
            session = self.sessions.get(call_id)
            if stored.platform_call_id and session is not None:
                try:
                    # Always tell the platform: billing depends on it (§7.2).
                    await self.upstream.call_action(session.account, stored.platform_call_id, CallAction.TERMINATE)
                except UpstreamRefusal as error:
                    log.info("terminate for %s: %s", call_id, error)
            await self._close_session(call_id)
        return self._view(stored)

    async def _close_session(self, call_id: str) -> None:
        session = self.sessions.get(call_id)
        if session is None or session.closed:
            return
        session.closed = True
        if session.pickup_watch is not None:
            session.pickup_watch.cancel()
        counters = session.counters()
        try:
            await session.adapter.close()
        except Exception:  # the leg and the session are released whatever the route did
            log.exception("call %s: closing the route failed", call_id)
        finally:
            if session.leg is not None:
                await session.leg.close()
            self.sessions.pop(call_id, None)

        def keep_media(tx: Tx) -> None:
            stored = tx.call(call_id)
            if stored is not None:
                tx.save_call(
                    StoredCall(
                        stored.call_id,
                        stored.pair,
                        stored.direction,
                        stored.created_at,
                        stored.state,
                        {
                            **stored.data,
                            "media": _counters_dict(counters),
                            "answer_sdp": stored.data.get("answer_sdp") or session.adapter.answer_sdp(),
                        },
                        stored.platform_call_id,
                        stored.active,
                    )
                )

        await self.store.transaction(keep_media)

    # --- reads ----------------------------------------------------------------------------------------------------

    async def get(self, call_id: str) -> CallView:
        stored = await self.store.transaction(lambda tx: tx.call(call_id))
        if stored is None:
            raise CallNotFound(call_id)
        return self._view(stored)

    async def list(
        self, business: str | None, user: str | None, before: tuple[int, str] | None, limit: int
    ) -> list[CallView]:
        return [
            self._view(s) for s in await self.store.list_calls(business=business, user=user, before=before, limit=limit)
        ]

    def session(self, call_id: str) -> CallSession | None:
        return self.sessions.get(call_id)

    async def updates(self, call_id: str) -> AsyncIterator[CallView]:
        """The call each time it changes, until it ends."""
        last: tuple[Any, ...] | None = None
        while True:
            ticket = self.permissions.changes.ticket()
            view = await self.get(call_id)
            key = (view.state, view.outcome, view.facts.answered_at)
            if key != last:
                last = key
                yield view
            if view.state is CallState.ENDED:
                return
            try:
                await asyncio.wait_for(ticket.wait(), 1.0)
            except TimeoutError:
                pass

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def start_background(self) -> None:
        """End calls a previous process left open (their media died with it), then watch media liveness."""

        for stored in await self.store.transaction(lambda tx: tx.open_calls()):
            if stored.call_id not in self.sessions:
                await self._end_orphan(stored)
        self._watchdog = asyncio.create_task(self._watch_media())

    async def _end_orphan(self, stored: StoredCall) -> None:
        def mark(tx: Tx) -> None:
            now = self.clock.now()
            facts = calls.apply(_facts_from_json(stored.data["facts"]), calls.EndedByBusiness(now))
            self._save(tx, stored, facts, now, end_reason="the service restarted during the call")

        await self.store.transaction(mark)
        if stored.platform_call_id:
            try:
                business = self.permissions.parse_pair(stored.pair.business, stored.pair.user)[0]
                account = self.permissions.senders.account_for(business)
                await self.upstream.call_action(account, stored.platform_call_id, CallAction.TERMINATE)
            except Exception as error:
                log.info("terminate of orphan call %s: %s", stored.call_id, error)

    async def _watch_media(self) -> None:
        """MEDIA-1: aiortc has no 'disconnected' state. No audio from the user for `media_timeout` → end the call."""
        while True:
            await asyncio.sleep(1.0)
            self._check_media(time.monotonic())

    def _check_media(self, now: float) -> None:
        # Its own function: a loop variable left in the watchdog's frame would keep the last ended call's peer
        # connection (and its encoder's threads) alive.
        for session in list(self.sessions.values()):
            if session.leg is None or session.closed:
                continue
            frames = session.leg.consumer.frames if session.leg.consumer else 0
            if frames != session.last_frames or not session.connected:
                # A ringing phone may send nothing; the clock starts once the user picked up.
                session.last_frames, session.last_progress = frames, now
            elif now - session.last_progress > self.media_timeout.total_seconds():
                session.last_progress = now
                log.warning("call %s: no media from the user for %s", session.call_id, self.media_timeout)
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
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, self._watchdog or _done(), return_exceptions=True)


async def _done() -> None:
    return None


def _counters_dict(counters: MediaCounters) -> dict[str, Any]:
    return dataclasses.asdict(counters)


def call_snapshot(view: CallView) -> dict[str, Any]:
    """The call as JSON for the event log (WatchEvents rebuilds the Call message from it)."""
    facts = view.facts
    return {
        "call_id": view.call_id,
        "platform_call_id": view.platform_call_id or "",
        "business": view.pair.business,
        "user": view.pair.user,
        "direction": view.direction.value,
        "state": facts.state.value,
        "outcome": facts.outcome.value if facts.outcome else "",
        "created_at": to_micros(facts.created_at),
        "answered_at": optional_micros(facts.answered_at),
        "ended_at": optional_micros(facts.ended_at),
        "duration_seconds": facts.duration_seconds or 0,
        "route": view.route,
        "opaque": view.opaque,
        "platform_error": dict(view.platform_error) if view.platform_error else None,
        "end_reason": view.end_reason,
    }


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background call task failed", exc_info=task.exception())
