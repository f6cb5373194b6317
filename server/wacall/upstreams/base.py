"""What the service needs from a WhatsApp platform, whoever runs it (Meta's Graph API, a future Infobip or SIP
upstream), and how that platform says no.

Domain code (permissions, calls) talks to an `Upstream` and catches only `UpstreamRefusal`; it reads the neutral
`reason`, never a platform's own error code, which travels along only for the record (`platform_code`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from wacall.numbers import PhoneNumber
from wacall.rules.engine import Reason


class UpstreamReason(enum.Enum):
    """Why the platform refused, when the refusal is not one of the rules (`engine.Reason`)."""

    INVALID_REQUEST = "invalid_request"  # we sent something the platform cannot read
    NOT_POSSIBLE = "not_possible"  # the account, the user or the template does not allow it
    CAPACITY = "capacity"  # the business number's own rate or concurrency limit
    CALL_SETUP_FAILED = "call_setup_failed"  # the call never got set up: FAILED, counts for nothing
    TRANSIENT = "transient"  # try again later


RefusalReason = Reason | UpstreamReason


class UpstreamRefusal(Exception):
    """The platform refused what we sent. `may_have_been_sent` is True when it may have landed all the same."""

    def __init__(
        self,
        reason: RefusalReason,
        *,
        retryable: bool,
        may_have_been_sent: bool = False,
        platform_code: str = "",
        message: str = "",
        meaning: str = "",
        detail: str = "",
        details: Mapping[str, str] | None = None,
        platform: str = "",
    ) -> None:
        text = f"platform error {platform_code}: {message}" if platform_code else message
        super().__init__(text + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.retryable = retryable
        self.may_have_been_sent = may_have_been_sent
        self.platform_code = platform_code  # the platform's own code, for the record
        self.message = message  # the platform's own words
        self.meaning = meaning  # what the refusal means, in ours
        self.detail = detail
        self.details = dict(details or {})
        self.platform = platform  # who refused (the error domain)

    @property
    def fails_call_setup(self) -> bool:
        return self.reason is UpstreamReason.CALL_SETUP_FAILED


class UpstreamUnavailable(UpstreamRefusal):
    """The platform could not be reached or answered garbage."""

    def __init__(self, message: str, *, may_have_been_sent: bool) -> None:
        super().__init__(
            UpstreamReason.TRANSIENT, retryable=True, may_have_been_sent=may_have_been_sent, message=message
        )


@dataclass(frozen=True, slots=True)
class TemplateRef:
    name: str
    language: str
    body_parameters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SentMessage:
    message_id: str
    user_id: str | None  # the platform's id of the user, when it names one


class PermissionStatus(enum.Enum):
    NONE = "no_permission"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


class PermissionAction(enum.Enum):
    REQUEST = "send_call_permission_request"
    CALL = "start_call"


@dataclass(frozen=True, slots=True)
class PlatformLimit:
    time_period: str
    max_allowed: int
    current_usage: int
    limit_expiration_time: datetime | None

    @property
    def window(self) -> timedelta | None:
        return limit_window(self.time_period)


def limit_window(time_period: str) -> timedelta | None:
    """A limit's period as an ISO-8601 duration (PT24H, P7D, PT90S); None for a form we do not know."""
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", time_period)
    if match is None or not any(match.groups()):
        return None
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


@dataclass(frozen=True, slots=True)
class PlatformPermission:
    """The platform's own view of a pair: the permission, and per action whether it may be taken and its limits."""

    status: str  # a PermissionStatus value, or a status the platform added since
    expires_at: datetime | None
    actions: Mapping[str, tuple[bool, tuple[PlatformLimit, ...]]]

    def action(self, action: PermissionAction) -> tuple[bool, tuple[PlatformLimit, ...]] | None:
        return self.actions.get(action.value)


class CallAction(enum.Enum):
    PRE_ACCEPT = "pre_accept"
    ACCEPT = "accept"
    REJECT = "reject"
    TERMINATE = "terminate"


@dataclass(frozen=True, slots=True)
class Account:
    """A sender account as the domain sees it: the business number, and the approved template a permission request
    goes out with when the user's window is closed (None: the number has none). `upstream` is the platform's own
    part of the account (what it knows the number by, the credentials that speak for it): the domain hands it back
    to the upstream and never reads it."""

    business_number: str  # +E164
    default_template: TemplateRef | None
    upstream: object = field(repr=False)


class Upstream(Protocol):
    """A WhatsApp platform. Every method raises `UpstreamRefusal` (or `UpstreamUnavailable`) and nothing else of
    the platform's."""

    async def send_permission_request_interactive(
        self, account: Account, user_id: str, body_text: str
    ) -> SentMessage: ...

    async def send_permission_request_template(
        self, account: Account, user_id: str, template: TemplateRef
    ) -> SentMessage: ...

    async def call_permissions(self, account: Account, user_id: str) -> PlatformPermission: ...

    async def connect_call(self, account: Account, user_id: str, offer_sdp: str, opaque: str = "") -> str:
        """Place a business-initiated call; returns the platform's call id."""
        ...

    async def call_action(self, account: Account, call_id: str, action: CallAction, answer_sdp: str = "") -> None: ...

    async def close(self) -> None: ...


class UnknownSender(LookupError):
    def __init__(self, business_number: str) -> None:
        super().__init__(
            f"business number {business_number} is not a configured sender: add it under [[senders]] in the "
            "configuration file"
        )
        self.business_number = business_number


class SenderDirectory(Protocol):
    """Which account sends for a business number. Raises `UnknownSender` for a number nobody sends for."""

    def account_for(self, business: PhoneNumber) -> Account: ...
