"""The permission loop: read a pair, send a request, take in webhooks. Composes engine, store and platform client.

Every decision is taken inside one store transaction (read ledger → engine → append events → save), and committed
before anybody is answered. Network calls to the platform happen between transactions, never inside one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from wacall.clock import Clock
from wacall.events import EventKind, describe, grant_expiry, permission_event
from wacall.fields import InvalidField
from wacall.inbound import (
    BusinessRestriction,
    DeliveryStatus,
    InboundMessage,
    MessageStatus,
    PermissionReply,
    ReplyTo,
)
from wacall.ingest import Outcome, Skipped
from wacall.numbers import PhoneNumber, number_of_wa_id, parse_number
from wacall.observe import NOT_OBSERVED, Observer
from wacall.rules import engine
from wacall.rules.engine import (
    ActionDecision,
    Channel,
    Evaluation,
    Ledger,
    LedgerEvent,
    PermissionState,
    Reason,
    Source,
)
from wacall.rules.policy import Policy
from wacall.store import EventRecord, IdempotentResult, Pair, Reservation, Store, Tx, wait_for_change
from wacall.upstreams.base import (
    Account,
    PermissionAction,
    PermissionStatus,
    PlatformPermission,
    SenderDirectory,
    SentMessage,
    TemplateRef,
    UnknownSender,
    Upstream,
    UpstreamRefusal,
)

log = logging.getLogger(__name__)

MAX_BODY_TEXT = 1024
MAX_IDEMPOTENCY_KEY = 128
MAX_TEMPLATE_PARAMETERS = 50


class RuleRefusal(Exception):
    """The rules forbid the action now. Carries the engine's decision (reason, limits, next_allowed_at)."""

    def __init__(self, decision: ActionDecision, evaluation: Evaluation, pair: Pair) -> None:
        super().__init__(decision.reason.value)
        self.decision = decision
        self.evaluation = evaluation
        self.pair = pair


class PlatformRefusal(Exception):
    """The platform refused what we sent, or could not be reached."""

    def __init__(self, error: UpstreamRefusal, pair: Pair) -> None:
        super().__init__(str(error))
        self.error = error
        self.pair = pair


class IdempotencyConflict(Exception):
    pass


class RequestInFlight(IdempotencyConflict):
    """A request with this key is being sent, or settled, right now; retry with the same key after `retry_at`."""

    def __init__(self, retry_at: datetime) -> None:
        super().__init__(
            "a request with this idempotency_key is still in flight; retry with the same key to learn its outcome"
        )
        self.retry_at = retry_at


class RequestOutcomeUnknown(Exception):
    """The key's request may have reached the user (its outcome was never learnt): it stays counted, and this key
    never sends again."""

    def __init__(self, pair: Pair, outcome: Mapping[str, str]) -> None:
        super().__init__(
            "the request with this idempotency_key may have been sent (its outcome could not be learnt); it is "
            "counted against the limits and will not be sent again under this key"
        )
        self.pair = pair
        self.outcome = dict(outcome)


@dataclass(frozen=True, slots=True)
class _Unsettled:
    """A key's reservation whose sender is gone, claimed by the caller that found it."""

    reservation: Reservation


# Unsettled reservations are settled this many at a time (each asks the platform once).
RECOVERY_BATCH = 16
# Recovery passes run at least this far apart, whatever the grace period.
MIN_RECOVERY_PERIOD = timedelta(seconds=1)


def platform_counted_none(platform: PlatformPermission, reserved_at: datetime, now: datetime, skew: timedelta) -> bool:
    """True when the platform's own count proves a request reserved at `reserved_at` never reached it: a request
    limit's window that holds `reserved_at` on either clock (give or take `skew`) counts no request at all."""
    _, limits = platform.action(PermissionAction.REQUEST) or (False, ())
    for limit in limits:
        window = limit.window
        if window is not None and now - window + skew < reserved_at and limit.current_usage == 0:
            return True
    return False


@dataclass(frozen=True, slots=True)
class PermissionView:
    pair: Pair
    evaluation: Evaluation
    updated_at: datetime | None
    policy: Policy


@dataclass(frozen=True, slots=True)
class RequestResult:
    message_id: str
    channel: Channel
    view: PermissionView
    replayed: bool


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


class PermissionService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        policy: Policy,
        senders: SenderDirectory,
        upstream: Upstream,
        reservation_grace: timedelta = timedelta(seconds=60),
        instance: str = "",
        observer: Observer = NOT_OBSERVED,
    ) -> None:
        self.store = store
        self.observer = observer  # told every limit-consuming decision (metrics, logs)
        self.clock = clock
        self.policy = policy
        self.senders = senders
        self.upstream = upstream
        # Longer than any send can take: an older unsettled reservation has no live sender.
        self.reservation_grace = reservation_grace
        # This process (its name and this run), as a claimant of reservations to settle and the owner of calls;
        # and the reservations it is sending right now.
        self.instance = instance or uuid.uuid4().hex
        self._in_flight: set[str] = set()

    # --- helpers ------------------------------------------------------------------------------------------------

    def parse_pair(self, business_number: str, user_number: str) -> tuple[PhoneNumber, PhoneNumber]:
        return parse_number(business_number, "business_number"), parse_number(user_number, "user_number")

    async def platform_wa_id(self, user: PhoneNumber) -> str:
        """How to name the user to the platform: the wa_id it gave us for them (HOOK-8), else the number's digits."""
        known = await self.store.read(lambda tx: tx.wa_id_of(user.e164))
        return known or user.digits

    def _template_available(self, business: PhoneNumber, given: TemplateRef | None) -> bool:
        if given is not None:
            return True
        if business.region in self.policy.denied_business_regions:
            return False
        return self.senders.account_for(business).default_template is not None

    def evaluate(
        self,
        tx: Tx,
        pair: Pair,
        business: PhoneNumber,
        now: datetime,
        template: TemplateRef | None = None,
        ledger: Ledger | None = None,
    ) -> Evaluation:
        """The one evaluation of a pair: every input the rules take (a call in progress, the business number's
        restriction, whether a template is available), read in `tx`. GetPermission, RequestPermission and StartCall
        all decide through it, so what one reports the others act on. `ledger` is the pair's ledger when the caller
        holds it already (read or just updated in `tx`)."""
        return engine.evaluate(
            tx.ledger(pair) if ledger is None else ledger,
            now,
            self.policy,
            business_region=business.region,
            template_available=self._template_available(business, template),
            call_in_progress=tx.active_call(pair) is not None,
            restriction=tx.restriction(pair.business),
        )

    def record(
        self,
        tx: Tx,
        pair: Pair,
        ledger: Ledger,
        event: LedgerEvent,
        now: datetime,
        extra: Mapping[str, str] | None = None,
    ) -> Ledger:
        """Apply one event (and what the rules derive from it) and append it all to the log."""
        event = self._with_request_sent_at(tx, event, extra)
        applied = engine.apply(ledger, event, self.policy)
        ledger = applied.ledger
        for item in (event, *applied.derived):
            kind, source, attributes = describe(item)
            if item is event and extra:
                attributes.update(extra)
            if item is event:
                # Why the event changed less than it says (see engine.Applied).
                for flag, raised in (
                    ("stale", applied.stale),
                    ("request_expired", applied.request_expired),
                    ("absorbed", applied.absorbed),
                ):
                    if raised:
                        attributes[flag] = "true"
            at = item.sent_at if isinstance(item, engine.RequestWithdrawn) else item.at
            expiry = grant_expiry(item, ledger)
            if expiry:
                attributes["expires_at"] = _iso(expiry)
            tx.append(permission_event(pair, kind, source, at, now, ledger, attributes))
        tx.save_ledger(pair, engine.prune(ledger, now, self.policy), now)
        return ledger

    @staticmethod
    def _with_request_sent_at(tx: Tx, event: LedgerEvent, extra: Mapping[str, str] | None) -> LedgerEvent:
        """A reply to one of our requests learns when that request was sent (a dead request's grant is ignored)."""
        context_id = (extra or {}).get("context_id")
        if not context_id or not isinstance(event, engine.PermissionGranted | engine.PermissionRejected):
            return event
        sent_at = tx.message_sent_at(context_id)
        return event if sent_at is None else dataclasses.replace(event, request_sent_at=sent_at)

    def _view(
        self, tx: Tx, pair: Pair, business: PhoneNumber, now: datetime, ledger: Ledger | None = None
    ) -> PermissionView:
        ledger = tx.ledger(pair) if ledger is None else ledger
        evaluation = self.evaluate(tx, pair, business, now, ledger=ledger)
        return PermissionView(pair, evaluation, ledger.state_changed_at, self.policy)

    # --- reads --------------------------------------------------------------------------------------------------

    async def get(self, business_number: str, user_number: str) -> PermissionView:
        business, user = self.parse_pair(business_number, user_number)
        pair = Pair(business.e164, user.e164)
        # Decides nothing and writes nothing: a snapshot, not the write lock (what a transaction would answer).
        return await self.store.read(lambda tx: self._view(tx, pair, business, self.clock.now()))

    async def reconcile(self, business_number: str, user_number: str) -> PermissionView:
        """Align the ledger's permission with the platform's own view (GET call_permissions).

        Only the permission itself is corrected (the platform is the authority on grants); usage counters are
        compared and a disagreement is logged, since the platform may count writers we never see (RULE-2).
        """
        business, user = self.parse_pair(business_number, user_number)
        pair = Pair(business.e164, user.e164)
        if business.region in self.policy.denied_business_regions:
            return await self.get(business_number, user_number)
        account = self.senders.account_for(business)
        try:
            platform = await self.upstream.call_permissions(account, user.digits)
        except UpstreamRefusal as error:
            raise PlatformRefusal(error, pair) from error

        def align(tx: Tx) -> Ledger:
            now = self.clock.now()
            ledger = tx.ledger(pair)
            ours = engine.effective_state(ledger, now)
            attributes = {"reconciled_from": "call_permissions"}
            # Adopted: learnt now, not stamped by the platform, so webhooks still in flight keep their order.
            if platform.status == PermissionStatus.PERMANENT.value and ours is not PermissionState.PERMANENT:
                event: LedgerEvent = engine.PermissionGranted(now, True, None, Source.PLATFORM_AUTOMATIC, adopted=True)
            elif platform.status == PermissionStatus.TEMPORARY.value and (
                ours is not PermissionState.TEMPORARY or ledger.expires_at != platform.expires_at
            ):
                event = engine.PermissionGranted(
                    now, False, platform.expires_at, Source.PLATFORM_AUTOMATIC, adopted=True
                )
            elif platform.status == PermissionStatus.NONE.value and engine.has_permission(ours):
                event = engine.PermissionRevoked(now, Source.PLATFORM_AUTOMATIC, adopted=True)
            else:
                return ledger
            return self.record(tx, pair, ledger, event, now, attributes)

        await self.store.transaction(align)
        view = await self.get(business_number, user_number)
        for action, ours in ((PermissionAction.REQUEST, view.evaluation.request),
                             (PermissionAction.CALL, view.evaluation.call)):  # fmt: skip
            allowed, _ = platform.action(action) or (ours.allowed, ())
            if allowed != ours.allowed:
                log.warning("platform and ledger disagree on %s for %s/%s: platform %s, ledger %s", action,
                            pair.business, pair.user, allowed, ours.allowed)  # fmt: skip
        return view

    # --- permission requests ------------------------------------------------------------------------------------

    async def request(
        self,
        business_number: str,
        user_number: str,
        *,
        body_text: str = "",
        template: TemplateRef | None = None,
        idempotency_key: str = "",
    ) -> RequestResult:
        business, user = self.parse_pair(business_number, user_number)
        if len(body_text) > MAX_BODY_TEXT:
            raise InvalidField("body_text", f"at most {MAX_BODY_TEXT} characters (got {len(body_text)})")
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidField("idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY} characters")
        if template is not None:
            if not template.name.strip():
                raise InvalidField("template.name", "required when a template is given")
            if not template.language.strip():
                raise InvalidField("template.language", "required when a template is given, e.g. 'en'")
            if len(template.body_parameters) > MAX_TEMPLATE_PARAMETERS:
                raise InvalidField("template.body_parameters", f"at most {MAX_TEMPLATE_PARAMETERS} values")
        pair = Pair(business.e164, user.e164)
        fingerprint = hashlib.sha256(
            json.dumps(
                [
                    pair.business,
                    pair.user,
                    body_text,
                    template and [template.name, template.language, list(template.body_parameters)],
                ]
            ).encode()
        ).hexdigest()

        account: Account | None = None
        if business.region not in self.policy.denied_business_regions:
            account = self.senders.account_for(business)

        reservation_id = uuid.uuid4().hex

        def reserve(tx: Tx) -> Reservation | RequestResult | _Unsettled:
            now = self.clock.now()
            if idempotency_key:
                earlier = tx.idempotent_result(pair.business, idempotency_key)
                if earlier is not None:
                    if earlier.fingerprint != fingerprint:
                        raise IdempotencyConflict(
                            "this idempotency_key was used for a different request; use a new key"
                        )
                    status = earlier.outcome.get("status")
                    if status == "sent":
                        return RequestResult(
                            earlier.outcome["message_id"],
                            Channel(earlier.outcome["channel"]),
                            self._view(tx, pair, business, now),
                            replayed=True,
                        )
                    if status == "unknown":
                        raise RequestOutcomeUnknown(pair, earlier.outcome)
                    if status == "pending":
                        unsettled = tx.reservation_for_key(pair.business, idempotency_key)
                        if unsettled is None:
                            # Left pending by a version that kept no reservation record; its may-have-been-sent
                            # event was recorded then, and it stays counted.
                            raise RequestOutcomeUnknown(pair, earlier.outcome)
                        if not self._settleable(unsettled, now):
                            raise RequestInFlight(self._settle_by(unsettled))
                        # Its sender is gone: this caller settles it, then answers with the outcome.
                        tx.take_reservation(unsettled.reservation_id)
                        claimed = dataclasses.replace(unsettled, claimed_by=self.instance, claimed_at=now)
                        tx.save_reservation(claimed)
                        return _Unsettled(claimed)
            ledger = tx.ledger(pair)
            evaluation = self.evaluate(tx, pair, business, now, template, ledger)
            decision = evaluation.request
            if not decision.allowed:
                raise RuleRefusal(decision, evaluation, pair)
            assert decision.channel is not None
            # Consume the limits now, before the send: concurrent callers see the reservation (fail closed).
            reserved = engine.apply(ledger, engine.RequestSent(now), self.policy).ledger
            tx.save_ledger(pair, engine.prune(reserved, now, self.policy), now)
            # The record recovery finds if this process dies before the send is settled.
            reservation = Reservation(
                reservation_id, pair, now, decision.channel.value, ledger.state, idempotency_key, fingerprint
            )
            tx.save_reservation(reservation)
            if idempotency_key:
                tx.save_idempotent_result(
                    IdempotentResult(pair.business, idempotency_key, fingerprint, {"status": "pending"}), now
                )
            # Before the commit, so no recovery pass of this process can claim it (it sees it once committed).
            self._in_flight.add(reservation.reservation_id)
            return reservation

        for _ in range(2):
            try:
                reserved = await self.store.transaction(reserve)
            except RuleRefusal as refusal:
                self._in_flight.discard(reservation_id)
                self.observer.decision(
                    "request", pair.business, pair.user, allowed=False, reason=refusal.decision.reason.value
                )
                raise
            except BaseException:
                self._in_flight.discard(reservation_id)
                raise
            if isinstance(reserved, _Unsettled):
                await self._settle_unsettled(reserved.reservation)
                continue  # the key now holds a settled outcome
            break
        else:  # pragma: no cover - a settled key never reads as unsettled again
            raise RequestInFlight(self.clock.now() + self.reservation_grace)
        if isinstance(reserved, RequestResult):
            return reserved
        self.observer.decision("request", pair.business, pair.user, allowed=True, reason="")
        assert account is not None
        try:
            return await self._send_reserved(reserved, business, user, account, body_text, template)
        finally:
            # Settled, or left for recovery (outcome unknown, or the caller went away mid-send).
            self._in_flight.discard(reserved.reservation_id)

    async def _send_reserved(
        self,
        reservation: Reservation,
        business: PhoneNumber,
        user: PhoneNumber,
        account: Account,
        body_text: str,
        template: TemplateRef | None,
    ) -> RequestResult:
        channel = Channel(reservation.channel)
        try:
            if channel is Channel.INTERACTIVE:
                sent = await self.upstream.send_permission_request_interactive(
                    account, await self.platform_wa_id(user), body_text
                )
            else:
                chosen = template or account.default_template
                assert chosen is not None
                sent = await self.upstream.send_permission_request_template(
                    account, await self.platform_wa_id(user), chosen
                )
        except UpstreamRefusal as error:
            await self._settle_failed_request(reservation, business, error)
            raise PlatformRefusal(error, reservation.pair) from error
        view = await self._settle_sent_request(reservation, business, sent)
        return RequestResult(sent.message_id, channel, view, replayed=False)

    def _settleable(self, reservation: Reservation, now: datetime) -> bool:
        """Old enough that no live sender can still be waiting on it (its send would have timed out), not being
        sent by this process, and not held by a live recovery pass."""
        if reservation.reservation_id in self._in_flight:
            return False
        horizon = now - self.reservation_grace
        return reservation.reserved_at <= horizon and (
            reservation.claimed_at is None or reservation.claimed_at <= horizon
        )

    def _settle_by(self, reservation: Reservation) -> datetime:
        return max(filter(None, (reservation.reserved_at, reservation.claimed_at))) + self.reservation_grace

    async def _settle_sent_request(
        self, reservation: Reservation, business: PhoneNumber, sent: SentMessage
    ) -> PermissionView:
        pair, sent_at, channel = reservation.pair, reservation.reserved_at, Channel(reservation.channel)
        idempotency_key, fingerprint = reservation.idempotency_key, reservation.fingerprint

        def settle(tx: Tx) -> PermissionView:
            now = self.clock.now()
            ledger = tx.ledger(pair)
            released = sent_at not in ledger.request_times and (
                ledger.last_connected_at is None or ledger.last_connected_at < sent_at
            )
            if tx.take_reservation(reservation.reservation_id) is None and released:
                # A recovery pass released it while the send was still on its way (a send slower than the grace
                # period): it did go out, so it counts again.
                ledger = engine.apply(ledger, engine.RequestSent(sent_at), self.policy).ledger
                tx.save_ledger(pair, engine.prune(ledger, now, self.policy), now)
            # The reservation already applied the request to the ledger; this records that it went out.
            tx.append(
                permission_event(
                    pair,
                    EventKind.PERMISSION_REQUEST_SENT,
                    Source.BUSINESS,
                    sent_at,
                    now,
                    ledger,
                    {"message_id": sent.message_id, "channel": channel.value},
                )
            )
            tx.remember_message(sent.message_id, pair, sent_at)
            if sent.user_id and sent.user_id != pair.user[1:]:
                tx.remember_alias(sent.user_id, pair.user)
            if idempotency_key:
                tx.save_idempotent_result(
                    IdempotentResult(
                        pair.business,
                        idempotency_key,
                        fingerprint,
                        {"status": "sent", "message_id": sent.message_id, "channel": channel.value},
                    ),
                    now,
                )
            return self._view(tx, pair, business, now, ledger)

        return await self.store.transaction(settle)

    async def _settle_failed_request(
        self, reservation: Reservation, business: PhoneNumber, error: UpstreamRefusal
    ) -> PermissionView | None:
        pair, sent_at, channel = reservation.pair, reservation.reserved_at, Channel(reservation.channel)
        state_before, idempotency_key, fingerprint = (
            reservation.state_before,
            reservation.idempotency_key,
            reservation.fingerprint,
        )
        if error.may_have_been_sent:
            # It may have reached the user (a timeout, an unreadable answer): the reservation stays, counted, and
            # recovery settles it once the platform has had time to count it.
            return None

        def settle(tx: Tx) -> PermissionView:
            now = self.clock.now()
            tx.take_reservation(reservation.reservation_id)
            ledger = tx.ledger(pair)
            attributes = {"channel": channel.value, "error": str(error)}
            if error.platform_code:
                attributes["platform_error"] = error.platform_code
            ledger = self.record(tx, pair, ledger, engine.RequestWithdrawn(sent_at, state_before), now, attributes)
            if error.reason is Reason.ALREADY_PERMANENT:
                # The platform knows of a permanent grant we missed (HOOK-6): reconcile.
                ledger = self.record(
                    tx,
                    pair,
                    ledger,
                    engine.PermissionGranted(now, True, None, Source.PLATFORM_AUTOMATIC, adopted=True),
                    now,
                    {"reconciled_from": error.platform_code},
                )
            if idempotency_key:
                tx.save_idempotent_result(
                    IdempotentResult(pair.business, idempotency_key, fingerprint, {"status": "failed"}), now
                )
            return self._view(tx, pair, business, now, ledger)

        return await self.store.transaction(settle)

    # --- recovery of unsettled requests ---------------------------------------------------------------------------

    async def recover_reservations(self) -> int:
        """Settle every reservation whose sender is gone (killed, timed out, cancelled); returns how many.

        Safe with several processes on one database: each reservation is claimed in a transaction first, and only
        reservations older than the grace period (longer than any send can take) are claimed."""

        def claim(tx: Tx) -> list[Reservation]:
            now = self.clock.now()
            horizon = now - self.reservation_grace
            return tx.claim_reservations(
                reserved_before=horizon,
                claims_expire_before=horizon,
                claimant=self.instance,
                now=now,
                excluding=frozenset(self._in_flight),
            )

        claimed = await self.store.transaction(claim)
        for start in range(0, len(claimed), RECOVERY_BATCH):
            await asyncio.gather(*(self._settle_unsettled(r) for r in claimed[start : start + RECOVERY_BATCH]))
        return len(claimed)

    async def keep_recovering(self) -> None:
        """Recover at start-up, then once per grace period (sends that timed out, callers that went away)."""
        while True:
            try:
                settled = await self.recover_reservations()
                if settled:
                    log.info("settled %d permission request(s) left unsettled", settled)
            except Exception:
                log.exception("settling unsettled permission requests failed; trying again later")
            await self.clock.sleep(max(self.reservation_grace, MIN_RECOVERY_PERIOD))

    async def _settle_unsettled(self, reservation: Reservation) -> None:
        """Ask the platform whether the request reached it, and record the answer (or, when it cannot tell, that
        the request may have been sent: it stays counted, fail closed). Needs our claim on the reservation."""
        proved_unsent, evidence = await self._platform_evidence(reservation)
        pair = reservation.pair

        def settle(tx: Tx) -> None:
            now = self.clock.now()
            if tx.take_reservation(reservation.reservation_id, self.instance) is None:
                return  # settled meanwhile by its sender or by another claimant
            ledger = tx.ledger(pair)
            attributes = {"channel": reservation.channel, "settled_by": "recovery", **evidence}
            if proved_unsent:
                attributes["outcome"] = "not_sent"
                self.record(
                    tx, pair, ledger, engine.RequestWithdrawn(reservation.reserved_at, reservation.state_before),
                    now, attributes,
                )  # fmt: skip
                outcome: dict[str, str] = {"status": "failed"}
            else:
                attributes.update(outcome="unknown", may_have_been_sent="true", counted="true")
                tx.append(
                    permission_event(
                        pair,
                        EventKind.PERMISSION_REQUEST_FAILED,
                        Source.BUSINESS,
                        reservation.reserved_at,
                        now,
                        ledger,
                        attributes,
                    )
                )
                outcome = {
                    "status": "unknown",
                    "channel": reservation.channel,
                    "reserved_at": _iso(reservation.reserved_at),
                    "settled_at": _iso(now),
                }
            if reservation.idempotency_key:
                tx.save_idempotent_result(
                    IdempotentResult(pair.business, reservation.idempotency_key, reservation.fingerprint, outcome),
                    now,
                )

        await self.store.transaction(settle)

    async def _platform_evidence(self, reservation: Reservation) -> tuple[bool, dict[str, str]]:
        """(proved not sent, what the platform said). Only the platform's usage count can prove anything: the
        Graph API has no lookup of a sent message, and a count above zero may be another writer's (RULE-2)."""
        try:
            business = parse_number(reservation.pair.business, "business_number")
            user = parse_number(reservation.pair.user, "user_number")
            account = self.senders.account_for(business)
            platform = await self.upstream.call_permissions(account, user.digits)
        except (ValueError, UnknownSender, UpstreamRefusal) as error:
            return False, {"platform_check": f"could not ask the platform: {error}"}
        if platform_counted_none(platform, reservation.reserved_at, self.clock.now(), self.reservation_grace):
            return True, {"platform_check": "the platform counts no request in a window that holds it"}
        return False, {"platform_check": "the platform's count cannot rule it out"}

    # --- webhooks -----------------------------------------------------------------------------------------------

    @staticmethod
    def user_pair(tx: Tx, business: str, wa_id: str, context_id: str | None) -> Pair | None:
        """The pair a webhook item is about: by the request it answers first, then by the user's identity."""
        if context_id:
            replied_to = tx.message_pair(context_id)
            if replied_to is not None and replied_to.business == business:
                return replied_to
        user = tx.alias(wa_id)
        if user is None:
            try:
                number = number_of_wa_id(wa_id, "from")
            except ValueError:
                log.warning("webhook with unusable user id %r ignored", wa_id)
                return None
            user = number.e164
            if wa_id != number.digits:
                # A legacy form (Mexico's 521, Brazil without the ninth digit): the platform's key for the user.
                tx.remember_alias(wa_id, user)
        return Pair(business, user)

    @staticmethod
    def _ledger_event(item: PermissionReply | InboundMessage) -> tuple[LedgerEvent, dict[str, str]] | None:
        match item:
            case PermissionReply(accepted=True, automatic=automatic, permanent=permanent, expires_at=expires_at):
                source = Source.PLATFORM_AUTOMATIC if automatic else Source.USER_ACTION
                return engine.PermissionGranted(item.timestamp, permanent, None if permanent else expires_at, source), {
                    "message_id": item.message_id,
                    "via": item.via.value,
                    "context_id": item.context_id or "",
                }
            case PermissionReply(accepted=False, automatic=True):
                return engine.PermissionRevoked(item.timestamp, Source.PLATFORM_AUTOMATIC), {
                    "message_id": item.message_id,
                    "via": "automatic_revocation",
                }
            case PermissionReply(accepted=False):
                if item.context_id is None:
                    # A reject with no request behind it is a revoke from the business profile.
                    return engine.PermissionRevoked(item.timestamp, Source.USER_ACTION), {
                        "message_id": item.message_id,
                        "via": ReplyTo.PROFILE.value,
                    }
                return engine.PermissionRejected(item.timestamp, Source.USER_ACTION), {
                    "message_id": item.message_id,
                    "context_id": item.context_id,
                }
            case InboundMessage():
                return engine.UserMessage(item.timestamp), {"message_id": item.message_id, "type": item.type}
        return None

    # The dispatch table's handlers (ingest.Dispatcher): each applies one item inside the delivery's transaction.

    def apply_restriction(self, tx: Tx, business: str, item: BusinessRestriction, now: datetime) -> Outcome:
        """The business number's calling pause, set or lifted."""
        restriction = engine.Restriction(item.until) if item.restricted else None
        tx.save_restriction(business, restriction, now)
        tx.append(
            EventRecord(
                Pair(business, ""),
                EventKind.BUSINESS_RESTRICTION_CHANGED,
                Source.PLATFORM_AUTOMATIC.value,
                item.timestamp or now,
                now,
                PermissionState.NONE,
                {"restricted": str(item.restricted).lower(), "until": _iso(item.until)},
            )
        )
        return None

    def apply_message_status(self, tx: Tx, business: str, item: MessageStatus, now: datetime) -> Outcome:
        """Only a failed permission request of ours matters (131026: client too old). It stays counted."""
        sent_to = tx.message_pair(item.message_id)
        if (
            item.status is not DeliveryStatus.FAILED
            or sent_to is None
            or not tx.claim(f"status:{item.message_id}:failed", now)
        ):
            return Skipped.IGNORED
        codes = ",".join(str(c) for c in item.error_codes)
        tx.append(
            permission_event(
                sent_to,
                EventKind.PERMISSION_REQUEST_FAILED,
                Source.PLATFORM_AUTOMATIC,
                item.timestamp,
                now,
                tx.ledger(sent_to),
                {"message_id": item.message_id, "platform_error": codes, "meaning": item.error_meaning},
            )
        )
        return None

    def apply_user_message(
        self, tx: Tx, business: str, item: PermissionReply | InboundMessage, now: datetime
    ) -> Outcome:
        """A permission reply, or any message from the user (it opens the service window), once per message id."""
        context_id = item.context_id if isinstance(item, PermissionReply) else None
        pair = self.user_pair(tx, business, item.user_id, context_id)
        if pair is None:
            return Skipped.IGNORED
        if not tx.claim(f"message:{item.message_id}", now):
            return Skipped.DUPLICATE
        converted = self._ledger_event(item)
        if converted is None:
            return Skipped.IGNORED
        event, attributes = converted
        self.record(tx, pair, tx.ledger(pair), event, now, attributes)
        return None

    # --- events -------------------------------------------------------------------------------------------------

    async def watch(
        self, after: int, business: str | None, user: str | None, poll: timedelta = timedelta(seconds=1)
    ) -> AsyncIterator[EventRecord]:
        """Every event after `after`, then new ones as they are committed. Never repeats, never skips."""
        cursor = after
        while True:
            ticket = self.store.changes.events_ticket()
            batch = await self.store.events_after(cursor, business=business, user=user)
            for record in batch:
                cursor = record.cursor
                yield record
            if not batch:
                # The poll also picks up writers in other processes sharing the database.
                await wait_for_change(ticket, poll.total_seconds())
