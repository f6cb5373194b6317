"""The embedded WhatsApp platform: Meta-shaped Graph endpoints on loopback, simulated users, signed webhooks.

It enforces the rules as the platform would, with the same engine and policy as the service but a ledger of its
own (the platform's view), so a client that ignores the rules gets the platform's real error codes (138009,
138017, 138013, 131047, 132001). Users answer permission requests as scripted by SetUserBehavior; their answers
reach the service as HTTP webhooks signed with the app secret, retried until acknowledged.

State (provisioned senders, users, the platform ledger, sent messages) is kept in a JSON file when a path is
given, so a restarted service finds the platform as it left it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from wacall.clock import Clock
from wacall.media.leg import AudioLeg
from wacall.media.sdp import platform_problems
from wacall.numbers import InvalidNumber, PhoneNumber, parse_number
from wacall.rules import engine
from wacall.rules.engine import Ledger, PermissionState, Source
from wacall.rules.policy import Policy
from wacall.simulator.phone import DEFAULT_RING, OnCall, PhoneCall, new_wacid, voice
from wacall.store import from_micros, ledger_from_json, ledger_to_json, to_micros
from wacall.upstreams.base import (
    Account,
    PermissionAction,
    PermissionStatus,
    PlatformLimit,
    PlatformPermission,
    TemplateRef,
)
from wacall.upstreams.meta import wire
from wacall.upstreams.meta.accounts import MetaAccount, meta_part
from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

GRAPH_VERSION = "v23.0"
DEFAULT_TEMPLATE = TemplateRef("call_permission_request", "en")
PHONE_NUMBER_ID_PREFIX = "1"


# Answers that end a delivery once every URL of its group gave one: the service read the body and refused it for
# good. Any other answer (401 from a replica with a stale secret, 404, 408, 429, 5xx) or none is worth another URL
# and another round.
FINAL_STATUSES = frozenset({400, 403, 413})
_MAX_RETRY_PAUSE = 30.0


class _Outcome(enum.Enum):
    ACKNOWLEDGED = "acknowledged"
    REFUSED = "refused"
    FAILED = "failed"


class OnPermissionRequest(enum.Enum):
    ACCEPT_TEMPORARY = "accept_temporary"
    ACCEPT_PERMANENT = "accept_permanent"
    REJECT = "reject"
    IGNORE = "ignore"


@dataclass
class SimUser:
    number: str
    on_permission_request: OnPermissionRequest = OnPermissionRequest.IGNORE
    reply_delay: timedelta = timedelta(0)
    outdated_client: bool = False
    wa_id: str = ""  # the platform's id for the user when it differs from the number's digits
    on_call: OnCall = OnCall.ANSWER
    ring_duration: timedelta = DEFAULT_RING
    talk_duration: timedelta = timedelta(0)  # 0: until the business hangs up
    tone_hz: float = 880.0
    say_file: str = ""


@dataclass
class SimMessage:
    message_id: str
    business: str
    user: str
    type: str  # interactive | template
    sent_at: datetime
    body_text: str = ""
    template: TemplateRef | None = None
    user_response: str = "pending"


@dataclass
class PlatformState:
    users: dict[str, SimUser] = field(default_factory=dict)
    ledgers: dict[tuple[str, str], Ledger] = field(default_factory=dict)
    messages: list[SimMessage] = field(default_factory=list)
    templates: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # waba → {(name, language)}
    restrictions: dict[str, datetime] = field(default_factory=dict)  # business → paused until


class GraphFailure(Exception):
    def __init__(self, http_status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.body = wire.graph_error(code, message, **extra)


def phone_number_id_for(number: PhoneNumber) -> str:
    return PHONE_NUMBER_ID_PREFIX + number.digits


def number_for_phone_number_id(phone_number_id: str) -> PhoneNumber | None:
    if not phone_number_id.startswith(PHONE_NUMBER_ID_PREFIX) or not phone_number_id[1:].isdigit():
        return None
    try:
        return parse_number(phone_number_id[len(PHONE_NUMBER_ID_PREFIX) :])
    except InvalidNumber:
        return None


def provisioned_account(business: PhoneNumber, access_token: str, app_secret: str) -> MetaAccount:
    """The account the simulator provisions for a number: its ids derive from the number alone, so a service using
    a simulator in another process (and every replica of it) names the same account without asking."""
    return MetaAccount(
        business_number=business.e164,
        phone_number_id=phone_number_id_for(business),
        waba_id="2" + business.digits,
        access_token=access_token,
        app_secret=app_secret,
    )


class SimulatedPlatform:
    def __init__(
        self,
        clock: Clock,
        policy: Policy,
        *,
        app_secret: str | None = None,
        state_path: Path | None = None,
        no_media_at_start: timedelta = timedelta(seconds=20),
        no_media_mid_call: timedelta = timedelta(seconds=30),
    ) -> None:
        self.clock = clock
        # The platform applies its rules exactly: wacall's safety margins are wacall's, not the platform's.
        self.policy = policy.without_margins()
        # MEDIA-1: the user's client drops a call that gets no audio for 20 s at start or 30 s mid-call.
        self.no_media_at_start = no_media_at_start
        self.no_media_mid_call = no_media_mid_call
        self.app_secret = app_secret or secrets.token_hex(16)
        self.access_token = "sim-token-" + secrets.token_hex(8)
        self.state_path = state_path
        self.state = PlatformState()
        # Deliveries go round-robin over a group of URLs: replicas of one service on one database. A business number
        # routed here uses its own group; any other, the default group `webhook_urls`. A failed delivery is tried on
        # the group's next URL at once.
        self.webhook_urls: list[str] = []
        self.webhook_routes: dict[str, list[str]] = {}
        # A URL that failed is skipped this long while the group has another; a delivery nobody took is retried
        # in the background, backing off from `retry_backoff`, for `retry_horizon`.
        self.url_cooldown = timedelta(seconds=5)
        self.retry_backoff = timedelta(seconds=0.5)
        self.retry_horizon = timedelta(minutes=10)
        self._failed_until: dict[str, float] = {}
        # The token the platform's webhook verification handshake presents (shared with services that use it).
        self.webhook_verify_token = ""
        # Where its Graph endpoints are served, version included (set by whoever serves `routes()`).
        self.graph_base_url: str | None = None
        self._next_url: dict[str, int] = {}  # by group: a routed business number, or "" for the default group
        # One idle connection kept: deliveries may overlap, but the simulator holds no pool of idle sockets. A short
        # connect timeout, so a replica whose address blackholes costs a second, not a whole turn.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=1.0), limits=httpx.Limits(max_keepalive_connections=1)
        )
        self._pending: set[asyncio.Task[None]] = set()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._accounts: dict[str, MetaAccount] = {}
        self._default_templates: dict[str, TemplateRef | None] = {}  # by number: a registered sender's own default
        self._provisioned: set[str] = set()  # numbers provisioned by the platform (not registered senders)
        # The clock's position in the state file, if it holds one (read by _load).
        self.saved_clock_position: datetime | None = None
        self.calls: dict[str, PhoneCall] = {}
        self._load()

    # --- senders ------------------------------------------------------------------------------------------------

    def provision(self, business: PhoneNumber) -> MetaAccount:
        """What the platform knows a business number by, created on first use (with the default template
        approved for it)."""
        account = self._accounts.get(business.e164)
        if account is None:
            account = provisioned_account(business, self.access_token, self.app_secret)
            self._accounts[business.e164] = account
            self._default_templates[business.e164] = DEFAULT_TEMPLATE
            self._provisioned.add(business.e164)
            templates = self.state.templates.setdefault(account.waba_id, set())
            templates.add((DEFAULT_TEMPLATE.name, DEFAULT_TEMPLATE.language))
            self._save()
        return account

    def default_template_of(self, account: MetaAccount) -> TemplateRef | None:
        """The template a permission request falls back on for the account: its own when registered with one."""
        return self._default_templates.get(account.business_number, DEFAULT_TEMPLATE)

    def set_credentials(self, app_secret: str, access_token: str) -> None:
        """Sign webhooks with `app_secret` and accept `access_token` from now on; the accounts provisioned so far
        carry them too (a registered sender keeps its own)."""
        self.app_secret, self.access_token = app_secret, access_token
        for number in self._provisioned:
            self._accounts[number] = provisioned_account(parse_number(number), access_token, app_secret)
        self._save()

    @property
    def webhook_url(self) -> str | None:
        return self.webhook_urls[0] if self.webhook_urls else None

    @webhook_url.setter
    def webhook_url(self, url: str | None) -> None:
        self.webhook_urls = [url] if url else []

    def accounts(self) -> list[MetaAccount]:
        """The business accounts provisioned or registered so far, by number."""
        return [self._accounts[number] for number in sorted(self._accounts)]

    def templates_of(self, account: MetaAccount) -> list[TemplateRef]:
        """The templates approved for the account's WABA, sorted."""
        return [TemplateRef(name, language) for name, language in sorted(self.state.templates.get(account.waba_id, ()))]

    def approve_template(self, account: MetaAccount, template: TemplateRef) -> None:
        self.state.templates.setdefault(account.waba_id, set()).add((template.name, template.language))
        self._save()

    def sender(self, business: PhoneNumber) -> Account:
        """A number nobody configured, as the service's sender directory sees it: provisioned on first use, with
        the approved default template."""
        return self.provision(business).account(DEFAULT_TEMPLATE)

    def register(self, account: Account) -> None:
        """Accept a sender from configuration as it is (its token, its default template or none)."""
        meta = meta_part(account)
        self._accounts[account.business_number] = meta
        self._default_templates[account.business_number] = account.default_template
        self._provisioned.discard(account.business_number)
        if account.default_template is not None:
            template = account.default_template
            self.state.templates.setdefault(meta.waba_id, set()).add((template.name, template.language))

    def _account_by_id(self, phone_number_id: str) -> MetaAccount:
        for account in self._accounts.values():
            if account.phone_number_id == phone_number_id:
                return account
        number = number_for_phone_number_id(phone_number_id)
        if number is None:
            raise GraphFailure(400, 100, f"Unsupported post request. Object with ID '{phone_number_id}' does not exist")
        return self.provision(number)

    # --- users --------------------------------------------------------------------------------------------------

    def user(self, number: str) -> SimUser:
        return self.state.users.setdefault(number, SimUser(number))

    def set_behavior(self, behavior: SimUser) -> SimUser:
        """Replace a user's behaviour as a whole."""
        self.state.users[behavior.number] = behavior
        self._save()
        return behavior

    def wa_id(self, user: PhoneNumber) -> str:
        known = self.state.users.get(user.e164)
        return known.wa_id if known is not None and known.wa_id else user.digits

    def _number_of_wa_id(self, wa_id: str) -> PhoneNumber:
        for user in self.state.users.values():
            if user.wa_id and user.wa_id == wa_id:
                return parse_number(user.number)
        return parse_number(wa_id, "user_wa_id")

    def restriction(self, business: str) -> engine.Restriction | None:
        until = self.state.restrictions.get(business)
        return engine.Restriction(until) if until is not None else None

    async def restrict_business(self, business: PhoneNumber, duration: timedelta) -> datetime | None:
        """Pause business-initiated calling for the number (0: lift), and tell the service (account_update)."""
        account = self.provision(business)
        now = self.clock.now()
        until = now + duration if duration > timedelta(0) else None
        if until is None:
            self.state.restrictions.pop(business.e164, None)
        else:
            self.state.restrictions[business.e164] = until
        self._save()
        await self._deliver(account, wire.account_restriction(account, now, until))
        return until

    def ledger(self, business: str, user: str) -> Ledger:
        return self.state.ledgers.get((business, user), Ledger())

    def _apply(self, business: str, user: str, event: engine.LedgerEvent) -> None:
        applied = engine.apply(self.ledger(business, user), event, self.policy)
        self.state.ledgers[(business, user)] = engine.prune(applied.ledger, self.clock.now(), self.policy)
        self._save()

    def messages_for(self, user: str, business: str | None) -> list[SimMessage]:
        return [m for m in self.state.messages if m.user == user and (business is None or m.business == business)]

    # --- the user's side: these deliver a signed webhook and return once the service acknowledged it -----------

    async def user_sends_message(self, business: PhoneNumber, user: PhoneNumber, text: str) -> str:
        account = self.provision(business)
        now = self.clock.now()
        message_id = _wamid()
        self._apply(business.e164, user.e164, engine.UserMessage(now))
        await self._deliver(account, wire.text_message(account, self.wa_id(user), message_id, now, text))
        return message_id

    async def user_grants(self, business: PhoneNumber, user: PhoneNumber, permanent: bool) -> Ledger:
        account = self.provision(business)
        now = self.clock.now()
        expires = None if permanent else now + self.policy.temporary_grant_lifetime
        self._apply(business.e164, user.e164, engine.PermissionGranted(now, permanent, expires, Source.USER_ACTION))
        await self._deliver(
            account,
            wire.permission_reply(
                account, self.wa_id(user), _wamid(), now, accept=True, permanent=permanent, expires_at=expires
            ),
        )
        return self.ledger(business.e164, user.e164)

    async def user_revokes(self, business: PhoneNumber, user: PhoneNumber) -> Ledger:
        account = self.provision(business)
        now = self.clock.now()
        self._apply(business.e164, user.e164, engine.PermissionRevoked(now, Source.USER_ACTION))
        # UNCERTAIN whether Meta notifies a profile revoke; the simulator sends a reject with no context.
        await self._deliver(account, wire.permission_reply(account, self.wa_id(user), _wamid(), now, accept=False))
        return self.ledger(business.e164, user.e164)

    # --- Graph endpoints ----------------------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> None:
        tokens = {self.access_token} | {a.access_token for a in self._accounts.values()}
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in tokens:
            raise GraphFailure(401, 190, "Invalid OAuth access token - Cannot parse access token")

    def send_message(self, phone_number_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        account = self._account_by_id(phone_number_id)
        request = wire.read_message_request(body)
        if not request.product_ok:
            raise GraphFailure(400, 100, "(#100) The parameter messaging_product is required.")
        try:
            user = self._number_of_wa_id(request.to)  # the platform takes its own wa_ids too
        except InvalidNumber as exc:
            raise GraphFailure(400, 100, f"(#100) Invalid parameter: {exc.why}") from None
        kind = request.type
        now = self.clock.now()
        business = parse_number(account.business_number)
        ledger = self.ledger(account.business_number, user.e164)
        if kind == "interactive":
            if (
                request.interactive_type != wire.PERMISSION_REQUEST
                or request.interactive_action != wire.PERMISSION_REQUEST
            ):
                raise GraphFailure(
                    400, 100, "(#100) The simulator accepts only call_permission_request interactive messages"
                )
            message = SimMessage(
                _wamid(),
                account.business_number,
                user.e164,
                "interactive",
                now,
                body_text=request.body_text,
            )
            window_open = engine.service_window_expires_at(ledger, now, self.policy) is not None
            if not window_open:
                raise GraphFailure(
                    400,
                    131047,
                    "Re-engagement message",
                    details=(
                        "Message failed to send because more than 24 hours have passed since the customer last "
                        "replied to this number."
                    ),
                )
        elif kind == "template":
            name, language = request.template_name, request.template_language
            if (name, language) not in self.state.templates.get(account.waba_id, set()):
                raise GraphFailure(
                    404,
                    132001,
                    "(#132001) Template name does not exist in the translation",
                    details=f"template name ({name}) does not exist in {language}",
                )
            parameters = request.template_parameters
            message = SimMessage(
                _wamid(),
                account.business_number,
                user.e164,
                "template",
                now,
                template=TemplateRef(name, language, parameters),
            )
        else:
            raise GraphFailure(400, 100, f"(#100) Param type must be one of interactive, template; got {kind!r}")
        decision = engine.evaluate(
            ledger,
            now,
            self.policy,
            business_region=business.region,
            template_available=True,
            restriction=self.restriction(account.business_number),
        ).request
        if decision.reason is engine.Reason.BUSINESS_RESTRICTED:
            raise GraphFailure(400, 138014, "Business-initiated calling is temporarily disabled for this number")
        if decision.reason is engine.Reason.COUNTRY_UNSUPPORTED:
            raise GraphFailure(400, 138013, "Business-initiated calling is not available for this business number")
        if decision.reason is engine.Reason.ALREADY_PERMANENT:
            raise GraphFailure(
                400, 138017, "Call permission request not allowed: the user has granted a permanent permission"
            )
        if decision.reason is engine.Reason.REQUEST_LIMIT_REACHED:
            raise GraphFailure(
                400,
                138009,
                "Call permission request limit reached",
                error_data={
                    "next_allowed_at": int(decision.next_allowed_at.timestamp()) if decision.next_allowed_at else None
                },
            )
        self._apply(account.business_number, user.e164, engine.RequestSent(now))
        self.state.messages.append(message)
        self._save()
        self._schedule_reaction(account, user, message)
        return wire.message_sent(str(body.get("to")), self.wa_id(user), message.message_id)

    def call_permissions(self, phone_number_id: str, user_wa_id: str) -> dict[str, Any]:
        account = self._account_by_id(phone_number_id)
        try:
            user = self._number_of_wa_id(user_wa_id)
        except InvalidNumber as exc:
            raise GraphFailure(400, 100, f"(#100) Invalid parameter user_wa_id: {exc.why}") from None
        now = self.clock.now()
        business = parse_number(account.business_number)
        evaluation = engine.evaluate(
            self.ledger(account.business_number, user.e164),
            now,
            self.policy,
            business_region=business.region,
            template_available=True,
        )
        status = {
            PermissionState.TEMPORARY: PermissionStatus.TEMPORARY,
            PermissionState.PERMANENT: PermissionStatus.PERMANENT,
        }.get(evaluation.state, PermissionStatus.NONE)

        def limits(decision: engine.ActionDecision) -> tuple[PlatformLimit, ...]:
            return tuple(
                PlatformLimit(
                    _iso_period(usage.window),
                    usage.max_allowed,
                    usage.used,
                    usage.resets_at if usage.used >= usage.max_allowed else None,
                )
                for usage in decision.limits
            )

        return wire.call_permissions_answer(
            PlatformPermission(
                status.value,
                evaluation.expires_at if status is PermissionStatus.TEMPORARY else None,
                {
                    PermissionAction.REQUEST.value: (evaluation.request.allowed, limits(evaluation.request)),
                    PermissionAction.CALL.value: (evaluation.call.allowed, limits(evaluation.call)),
                },
            )
        )

    def add_template(self, waba_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name, language = str(body.get("name", "")), str(body.get("language", ""))
        components = body.get("components") or []
        if not name or not language:
            raise GraphFailure(400, 100, "(#100) name and language are required")
        if body.get("category") not in ("UTILITY", "MARKETING"):
            raise GraphFailure(400, 100, "(#100) category must be UTILITY or MARKETING")
        types = {str(c.get("type", "")).lower() for c in components if isinstance(c, Mapping)}
        if "body" not in types or "call_permission_request" not in types:
            raise GraphFailure(
                400,
                100,
                "(#100) a call permission request template needs a BODY and a call_permission_request component",
            )
        self.state.templates.setdefault(waba_id, set()).add((name, language))
        self._save()
        return {"id": str(uuid.uuid4().int)[:15], "status": "APPROVED", "category": body["category"]}

    def routes(self) -> list[web.RouteDef]:
        def handler(fn: Any) -> Any:
            async def wrapped(request: web.Request) -> web.StreamResponse:
                try:
                    self._authorize(request)
                    return web.json_response(await fn(request))
                except GraphFailure as failure:
                    return web.json_response(failure.body, status=failure.http_status)

            return wrapped

        async def messages(request: web.Request) -> dict[str, Any]:
            try:
                body = await request.json()
            except ValueError:
                raise GraphFailure(400, 100, "(#100) the body is not JSON") from None
            return self.send_message(request.match_info["id"], body)

        async def permissions(request: web.Request) -> dict[str, Any]:
            return self.call_permissions(request.match_info["id"], request.query.get("user_wa_id", ""))

        async def call_actions(request: web.Request) -> dict[str, Any]:
            try:
                body = await request.json()
            except ValueError:
                raise GraphFailure(400, 100, "(#100) the body is not JSON") from None
            return await self.call_action(request.match_info["id"], body)

        async def templates(request: web.Request) -> dict[str, Any]:
            return self.add_template(request.match_info["id"], await request.json())

        return [
            web.post("/{version}/{id}/messages", handler(messages)),
            web.get("/{version}/{id}/call_permissions", handler(permissions)),
            web.post("/{version}/{id}/message_templates", handler(templates)),
            web.post("/{version}/{id}/calls", handler(call_actions)),
        ]

    # --- calls ----------------------------------------------------------------------------------------------------

    def active_call(self, business: str, user: str) -> PhoneCall | None:
        return next(
            (c for c in self.calls.values() if c.business == business and c.user == user and c.state != "ended"),
            None,
        )

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def call_action(self, phone_number_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        account = self._account_by_id(phone_number_id)
        request = wire.read_calls_request(body)
        action = request.action
        if not request.product_ok:
            raise GraphFailure(400, 100, "(#100) The parameter messaging_product is required.")
        if action == "connect":
            return await self._connect(account, request)
        call = self.calls.get(request.call_id)
        if call is None or call.business != account.business_number:
            raise GraphFailure(400, 100, f"(#100) Invalid parameter: unknown call_id {body.get('call_id')!r}")
        if call.state == "ended":
            raise GraphFailure(400, 100, "(#100) Invalid parameter: the call has already ended")
        if action in ("pre_accept", "accept"):
            if call.direction != "USER_INITIATED":
                raise GraphFailure(400, 100, f"(#100) {action} applies only to user-initiated calls")
            if not request.has_session or request.session_type != "answer":
                raise GraphFailure(400, 100, '(#100) session with sdp_type "answer" is required')
            problems = platform_problems(request.sdp, "answer")
            if problems:
                raise GraphFailure(400, 100, "(#100) Invalid parameter", details="; ".join(problems))
            assert call.leg is not None
            if call.leg.pc.remoteDescription is None:
                await call.leg.apply_answer(request.sdp)
            if action == "accept":
                call.answered.set()
            return wire.success()
        if action in ("terminate", "reject"):
            self._spawn(self._end(account, call, by_business=True))
            return wire.success()
        raise GraphFailure(400, 100, f"(#100) Invalid action {action!r}")

    async def _connect(self, account: MetaAccount, request: wire.CallsRequest) -> dict[str, Any]:
        try:
            user = self._number_of_wa_id(request.to)
        except InvalidNumber as exc:
            raise GraphFailure(400, 100, f"(#100) Invalid parameter to: {exc.why}") from None
        if not request.has_session or request.session_type != "offer" or not request.sdp:
            raise GraphFailure(400, 100, '(#100) session with sdp_type "offer" and an sdp is required')
        offer = request.sdp
        problems = platform_problems(offer, "offer")
        if problems:
            raise GraphFailure(400, 100, "(#100) Invalid parameter", details="; ".join(problems))
        now = self.clock.now()
        business = parse_number(account.business_number)
        active = self.active_call(account.business_number, user.e164)
        evaluation = engine.evaluate(
            self.ledger(account.business_number, user.e164),
            now,
            self.policy,
            business_region=business.region,
            template_available=True,
            call_in_progress=active is not None,
            restriction=self.restriction(account.business_number),
        )
        reason = evaluation.call.reason
        if reason is engine.Reason.BUSINESS_RESTRICTED:
            raise GraphFailure(400, 138014, "Business-initiated calling is temporarily disabled for this number")
        if reason is engine.Reason.COUNTRY_UNSUPPORTED:
            raise GraphFailure(400, 138013, "Business-initiated calling is not available for this business number")
        if reason is engine.Reason.CALL_IN_PROGRESS:
            raise GraphFailure(400, 138003, "Duplicate call: there is already a call with this user")
        if reason is engine.Reason.CALL_LIMIT_REACHED:
            next_at = evaluation.call.next_allowed_at
            raise GraphFailure(
                400,
                138012,
                "Business-initiated call limit reached for this user",
                error_data={"next_allowed_at": int(next_at.timestamp()) if next_at else None},
            )
        if not evaluation.call.allowed:
            raise GraphFailure(401, 138006, "No approved call permission from the recipient")
        call = PhoneCall(
            new_wacid(),
            account.business_number,
            user.e164,
            "BUSINESS_INITIATED",
            now,
            opaque=request.opaque,
        )
        self.calls[call.platform_call_id] = call
        call.task = asyncio.create_task(self._ring(account, user, call, offer))
        return wire.call_placed(call.platform_call_id)

    async def _ring(self, account: MetaAccount, user: PhoneNumber, call: PhoneCall, offer: str) -> None:
        behavior = self.user(user.e164)
        call.leg = AudioLeg(name=f"sim phone {call.platform_call_id}")
        answer = await call.leg.accept_offer(offer)
        self._spawn(self._drop_without_media(account, call))
        await self._deliver(
            account,
            wire.call_event(
                account, self.wa_id(user), call, "connect", self.clock.now(), sdp=answer, sdp_type="answer"
            ),
        )
        await self._deliver(account, wire.call_status(account, self.wa_id(user), call, "RINGING", self.clock.now()))
        await self.clock.sleep(behavior.ring_duration)
        now = self.clock.now()
        if behavior.on_call is OnCall.ANSWER:
            call.state, call.answered_at = "connected", now
            call.leg.set_source(voice(behavior.tone_hz, behavior.say_file))
            self._apply(call.business, call.user, engine.CallConnected(now, True))
            await self._deliver(account, wire.call_status(account, self.wa_id(user), call, "ACCEPTED", now))
            if behavior.talk_duration > timedelta(0):
                await self.clock.sleep(behavior.talk_duration)
                await self._end(account, call, by_business=False)
            return
        if behavior.on_call is OnCall.DECLINE:
            await self._deliver(account, wire.call_status(account, self.wa_id(user), call, "REJECTED", now))
        await self._end(account, call, by_business=False)

    async def _drop_without_media(self, account: MetaAccount, call: PhoneCall) -> None:
        """The user's client hangs up when the business sends no audio (real time, like the media itself)."""
        loop = asyncio.get_running_loop()
        started = last_progress = loop.time()
        frames = 0
        while call.state != "ended":
            await asyncio.sleep(0.25)
            consumer = call.leg.consumer if call.leg is not None else None
            received = consumer.frames if consumer is not None else 0
            now = loop.time()
            if received != frames:
                frames, last_progress = received, now
            elif frames == 0 and now - started > self.no_media_at_start.total_seconds():
                code, why = (138023, "Accepted but no media") if call.answered_at else (138021, "Media receive timeout")
                await self._end(account, call, by_business=False, error=(code, why))
            elif frames and now - last_progress > self.no_media_mid_call.total_seconds():
                await self._end(account, call, by_business=False, error=(138021, "Media receive timeout"))

    async def _end(
        self, account: MetaAccount, call: PhoneCall, *, by_business: bool, error: tuple[int, str] | None = None
    ) -> None:
        if call.state == "ended":
            return
        if call.task is not None and call.task is not asyncio.current_task():
            call.task.cancel()
        now = self.clock.now()
        answered = call.answered_at is not None
        call.state, call.ended_at = "ended", now
        await call.close()
        user = parse_number(call.user)
        revoked_now = False
        if call.direction == "BUSINESS_INITIATED" and not answered and not by_business:
            # Unanswered or declined: the streak grows, and the platform revokes at its threshold.
            before = engine.effective_state(self.ledger(call.business, call.user), now)
            self._apply(call.business, call.user, engine.CallUnanswered(now))
            after = engine.effective_state(self.ledger(call.business, call.user), now)
            revoked_now = after is PermissionState.REVOKED and before is not PermissionState.REVOKED
        elif answered and call.answered_at is not None and call.direction == "USER_INITIATED":
            self._apply(call.business, call.user, engine.CallConnected(call.answered_at, False))
        await self._deliver(
            account,
            wire.call_event(
                account,
                self.wa_id(user),
                call,
                "terminate",
                now,
                status="FAILED" if error or not answered else "COMPLETED",
                error=error,
            ),
        )
        if revoked_now:
            # The platform's own automatic revocation, after the call that crossed the threshold.
            await self._deliver(
                account, wire.permission_reply(account, self.wa_id(user), _wamid(), now, accept=False, automatic=True)
            )

    async def place_user_call(self, business: PhoneNumber, user: PhoneNumber) -> PhoneCall:
        """The user calls the business: a user-initiated call, which also yields a callback permission."""
        account = self.provision(business)
        now = self.clock.now()
        behavior = self.user(user.e164)
        call = PhoneCall(new_wacid(), business.e164, user.e164, "USER_INITIATED", now)
        self.calls[call.platform_call_id] = call
        call.leg = AudioLeg(
            name=f"sim phone {call.platform_call_id}", source=voice(behavior.tone_hz, behavior.say_file)
        )
        offer = await call.leg.create_offer()
        self._spawn(self._drop_without_media(account, call))
        # Callback permission (enabled on simulated numbers): the user's call grants a temporary permission. It is
        # sent whatever the pair holds; the shared engine never lets it lower a permanent one or shorten a grant.
        expires = now + self.policy.temporary_grant_lifetime
        self._apply(business.e164, user.e164, engine.UserMessage(now))
        self._apply(business.e164, user.e164, engine.PermissionGranted(now, False, expires, Source.PLATFORM_AUTOMATIC))
        await self._deliver(
            account, wire.call_event(account, self.wa_id(user), call, "connect", now, sdp=offer, sdp_type="offer")
        )
        await self._deliver(
            account,
            wire.permission_reply(
                account,
                self.wa_id(user),
                _wamid(),
                now,
                accept=True,
                expires_at=expires,
                automatic=True,
                context_id=call.platform_call_id,
            ),
        )
        call.task = asyncio.create_task(self._wait_for_business(account, call, behavior))
        return call

    async def _wait_for_business(self, account: MetaAccount, call: PhoneCall, behavior: SimUser) -> None:
        answered = asyncio.ensure_future(call.answered.wait())
        timeout = asyncio.ensure_future(self.clock.sleep(timedelta(seconds=60)))
        try:
            done, _ = await asyncio.wait({answered, timeout}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when the user hangs up first (this task is cancelled): neither waiter may outlive the call.
            answered.cancel()
            timeout.cancel()
        if answered not in done:
            await self._end(account, call, by_business=False)
            return
        call.state, call.answered_at = "connected", self.clock.now()
        if behavior.talk_duration > timedelta(0):
            await self.clock.sleep(behavior.talk_duration)
            await self._end(account, call, by_business=False)

    async def user_hangs_up(self, call: PhoneCall) -> None:
        await self._end(self.provision(parse_number(call.business)), call, by_business=False)

    # --- reactions and delivery ---------------------------------------------------------------------------------

    def _schedule_reaction(self, account: MetaAccount, user: PhoneNumber, message: SimMessage) -> None:
        behavior = self.user(user.e164)
        task = asyncio.create_task(
            self._react(
                account, user, message, behavior.on_permission_request, behavior.reply_delay, behavior.outdated_client
            )
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _react(
        self,
        account: MetaAccount,
        user: PhoneNumber,
        message: SimMessage,
        response: OnPermissionRequest,
        delay: timedelta,
        outdated: bool,
    ) -> None:
        if outdated:
            message.user_response = "undeliverable"
            await self._deliver(
                account,
                wire.message_status(
                    account,
                    self.wa_id(user),
                    message.message_id,
                    self.clock.now(),
                    "failed",
                    131026,
                    "Message undeliverable",
                ),
            )
            return
        if response is OnPermissionRequest.IGNORE:
            message.user_response = "ignored"
            self._save()
            return
        await self.clock.sleep(delay)
        now = self.clock.now()
        business = message.business
        if now >= message.sent_at + self.policy.request_lifetime:
            # The request died unanswered (§1.3): there is nothing left for the user to answer.
            message.user_response = "expired"
            self._save()
            return
        if response is OnPermissionRequest.REJECT:
            self._apply(business, user.e164, engine.PermissionRejected(now, Source.USER_ACTION))
            body = wire.permission_reply(
                account, self.wa_id(user), _wamid(), now, accept=False, context_id=message.message_id
            )
        else:
            permanent = response is OnPermissionRequest.ACCEPT_PERMANENT
            expires = None if permanent else now + self.policy.temporary_grant_lifetime
            self._apply(business, user.e164, engine.PermissionGranted(now, permanent, expires, Source.USER_ACTION))
            body = wire.permission_reply(
                account,
                self.wa_id(user),
                _wamid(),
                now,
                accept=True,
                permanent=permanent,
                expires_at=expires,
                context_id=message.message_id,
            )
        message.user_response = response.value
        self._save()
        await self._deliver(account, body)

    def webhook_urls_for(self, business: str) -> list[str]:
        """The URLs a business number's webhooks go to: its own group (`webhook_routes`), else the default one."""
        return list(self.webhook_routes.get(business) or self.webhook_urls)

    async def _deliver(self, account: MetaAccount, body: dict[str, Any]) -> None:
        """POST a signed webhook until a service of the business number's group acknowledges it (at least once, like
        the platform). Returns after the first round over the group; a delivery nobody took is tried again in the
        background, with backoff, for `retry_horizon` (services restart; the platform keeps trying)."""
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            group = account.business_number if account.business_number in self.webhook_routes else ""
            urls = self.webhook_urls_for(account.business_number)
            if not urls:
                log.warning("simulator has no webhook URL for %s; dropping a delivery", account.business_number)
                return
            raw = json.dumps(body, separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.app_secret.encode(), raw)}
            # Round-robin inside the group: each delivery starts at the next URL, so replicas behind no load balancer
            # share the load.
            first = self._next_url.get(group, 0) % len(urls)
            self._next_url[group] = first + 1
            ordered = urls[first:] + urls[:first]
            if not await self._round(ordered, raw, headers):
                self._spawn(self._keep_trying(ordered, raw, headers))
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _round(self, urls: list[str], raw: bytes, headers: dict[str, str]) -> bool:
        """One attempt on each URL in turn, skipping those that failed moments ago (unless all did): True when the
        delivery is done with, acknowledged or refused for good by every URL of the group."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        ready = [url for url in urls if self._failed_until.get(url, 0.0) <= now] or urls
        refused = 0
        for url in ready:
            outcome = await self._post(url, raw, headers)
            if outcome is _Outcome.ACKNOWLEDGED:
                self._failed_until.pop(url, None)
                return True
            if outcome is _Outcome.REFUSED:
                refused += 1
            else:
                self._failed_until[url] = loop.time() + self.url_cooldown.total_seconds()
        return refused == len(urls)

    async def _keep_trying(self, urls: list[str], raw: bytes, headers: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.retry_horizon.total_seconds()
        pause = self.retry_backoff.total_seconds()
        while loop.time() + pause <= give_up_at:
            await asyncio.sleep(pause)
            if await self._round(urls, raw, headers):
                return
            pause = min(pause * 2, _MAX_RETRY_PAUSE)
        log.warning("webhook delivery to %s given up after %s", ", ".join(urls), self.retry_horizon)

    async def _post(self, url: str, raw: bytes, headers: dict[str, str]) -> _Outcome:
        """One delivery attempt to one URL."""
        try:
            response = await self._http.post(url, content=raw, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("webhook delivery to %s failed (%s), retrying", url, exc or type(exc).__name__)
            return _Outcome.FAILED
        if response.status_code < 300:
            return _Outcome.ACKNOWLEDGED
        log.warning("webhook delivery to %s got HTTP %s: %s", url, response.status_code, response.text[:200])
        return _Outcome.REFUSED if response.status_code in FINAL_STATUSES else _Outcome.FAILED

    async def settle(self) -> None:
        """Wait for every delivery that is due (not those sleeping on the clock) to finish."""
        for _ in range(3):
            await asyncio.sleep(0)
            while self._in_flight:
                await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def close(self) -> None:
        for call in self.calls.values():
            if call.task is not None:
                call.task.cancel()
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, *(c.task for c in self.calls.values() if c.task), return_exceptions=True)
        for call in self.calls.values():
            await call.close()
        await self._http.aclose()

    # --- persistence --------------------------------------------------------------------------------------------

    async def save(self) -> None:
        """Write the state file now (the clock's position included); it is otherwise written as the state changes."""
        self._save()

    def _save(self) -> None:
        if self.state_path is None:
            return
        data = {
            "app_secret": self.app_secret,
            "access_token": self.access_token,
            "users": [
                {
                    "number": u.number,
                    "on_permission_request": u.on_permission_request.value,
                    "reply_delay_us": u.reply_delay // timedelta(microseconds=1),
                    "outdated_client": u.outdated_client,
                    "wa_id": u.wa_id,
                    "on_call": u.on_call.value,
                    "ring_us": u.ring_duration // timedelta(microseconds=1),
                    "talk_us": u.talk_duration // timedelta(microseconds=1),
                    "tone_hz": u.tone_hz,
                    "say_file": u.say_file,
                }
                for u in self.state.users.values()
            ],
            "ledgers": [[b, u, ledger_to_json(ledger)] for (b, u), ledger in self.state.ledgers.items()],
            "messages": [
                {
                    **dataclasses.asdict(m),
                    "sent_at": to_micros(m.sent_at),
                    "template": dataclasses.asdict(m.template) if m.template else None,
                }
                for m in self.state.messages[-5000:]
            ],
            "templates": {waba: sorted(pairs) for waba, pairs in self.state.templates.items()},
            # Numbers provisioned (on use or by ProvisionBusiness): their ids derive from the number alone.
            "provisioned": sorted(self._provisioned),
            "restrictions": {b: to_micros(until) for b, until in self.state.restrictions.items()},
            # Where the clock stood: a standalone simulator on a manual clock resumes there.
            "clock_us": to_micros(self.clock.now()),
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state_path)

    def _load(self) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.state_path.exists():
            return
        data = json.loads(self.state_path.read_text())
        self.app_secret = data["app_secret"]
        self.access_token = data["access_token"]
        for u in data["users"]:
            self.state.users[u["number"]] = SimUser(
                u["number"],
                OnPermissionRequest(u["on_permission_request"]),
                timedelta(microseconds=u["reply_delay_us"]),
                u["outdated_client"],
                u.get("wa_id", ""),
                OnCall(u.get("on_call", "answer")),
                timedelta(microseconds=u.get("ring_us", DEFAULT_RING // timedelta(microseconds=1))),
                timedelta(microseconds=u.get("talk_us", 0)),
                u.get("tone_hz", 880.0),
                u.get("say_file", ""),
            )
        self.state.ledgers = {(b, u): ledger_from_json(text) for b, u, text in data["ledgers"]}
        for m in data["messages"]:
            template = m.pop("template")
            m["sent_at"] = from_micros(m["sent_at"])
            self.state.messages.append(
                SimMessage(
                    **m,
                    template=TemplateRef(template["name"], template["language"], tuple(template["body_parameters"]))
                    if template
                    else None,
                )
            )
        self.state.templates = {waba: {tuple(p) for p in pairs} for waba, pairs in data["templates"].items()}
        self.state.restrictions = {b: from_micros(t) for b, t in data.get("restrictions", {}).items()}
        self.saved_clock_position = from_micros(data["clock_us"]) if "clock_us" in data else None
        for number in data.get("provisioned", ()):
            business = parse_number(number)
            self._accounts[business.e164] = provisioned_account(business, self.access_token, self.app_secret)
            self._default_templates[business.e164] = DEFAULT_TEMPLATE
            self._provisioned.add(business.e164)


def _wamid() -> str:
    return "wamid.SIM" + uuid.uuid4().hex.upper()


def _iso_period(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 86400 == 0 and seconds > 86400:
        return f"P{seconds // 86400}D"
    if seconds % 3600 == 0:
        return f"PT{seconds // 3600}H"
    return f"PT{seconds}S"
