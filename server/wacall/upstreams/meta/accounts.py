"""A business number's account on Meta's platform: what the Graph API and the webhooks know it by."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wacall.numbers import InvalidNumber, parse_number
from wacall.upstreams.base import Account, TemplateRef


@dataclass(frozen=True, slots=True)
class MetaAccount:
    """A business number as Meta's platform knows it: its ids, and the token and app secret that speak for it. The
    `upstream` part of the number's `Account`; only Meta's upstream, its webhooks and the simulator read it."""

    business_number: str  # +E164: the number these ids belong to (the webhooks display it)
    phone_number_id: str
    waba_id: str
    access_token: str = field(repr=False)
    app_secret: str = field(repr=False)

    def account(self, default_template: TemplateRef | None = None) -> Account:
        """The account as the domain sees it, with this as its upstream part."""
        return Account(self.business_number, default_template, self)


def meta_part(account: Account) -> MetaAccount:
    """What Meta knows the account's number by; TypeError for an account of another platform."""
    if not isinstance(account.upstream, MetaAccount):
        raise TypeError(f"{account.business_number} is not an account on Meta's platform")
    return account.upstream


class InvalidSenderConfig(ValueError):
    pass


def sender_from_config(item: Mapping[str, Any], where: str) -> Account:
    """A `[[senders]]` entry of the configuration file: a Meta business number's ids and secrets."""
    required = ("business_number", "phone_number_id", "waba_id", "access_token", "app_secret")
    missing = [k for k in required if not item.get(k)]
    if missing:
        raise InvalidSenderConfig(f"{where} is missing {', '.join(missing)}")
    try:
        number = parse_number(str(item["business_number"]), f"{where}.business_number")
    except InvalidNumber as exc:
        raise InvalidSenderConfig(str(exc)) from None
    template = item.get("default_template")
    default = None
    if template is not None:
        if not isinstance(template, Mapping) or not template.get("name") or not template.get("language"):
            raise InvalidSenderConfig(f"{where}.default_template needs name and language")
        default = TemplateRef(
            str(template["name"]), str(template["language"]), tuple(str(p) for p in template.get("body_parameters", ()))
        )
    meta = MetaAccount(
        number.e164,
        str(item["phone_number_id"]),
        str(item["waba_id"]),
        str(item["access_token"]),
        str(item["app_secret"]),
    )
    return meta.account(default)
