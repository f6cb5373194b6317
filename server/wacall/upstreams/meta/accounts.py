"""A business number's account on Meta's platform: what the Graph API and the webhooks know it by."""

from __future__ import annotations

from dataclasses import dataclass

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
