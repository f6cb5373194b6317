"""A business number's account on Meta's platform: what the Graph API and the webhooks know it by."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wacall.numbers import InvalidNumber, parse_number
from wacall.upstreams.base import TemplateRef


@dataclass(frozen=True, slots=True)
class SenderAccount:
    """The domain reads `business_number` and `default_template` (`upstreams.base.Account`); the ids, token and
    secret are Meta's own."""

    business_number: str  # +E164
    phone_number_id: str
    waba_id: str
    access_token: str
    app_secret: str
    default_template: TemplateRef | None = None


class InvalidSenderConfig(ValueError):
    pass


def sender_from_config(item: Mapping[str, Any], where: str) -> SenderAccount:
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
    return SenderAccount(
        number.e164,
        str(item["phone_number_id"]),
        str(item["waba_id"]),
        str(item["access_token"]),
        str(item["app_secret"]),
        default,
    )
