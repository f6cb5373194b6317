"""Which Meta account sends for a business number, and which number a webhook's phone_number_id is.

`ConfiguredSenders` holds the senders listed in configuration (`--upstream meta`). `ProvisioningSenders` serves
the embedded simulator: any valid business number is provisioned on first use, with a default approved
permission-request template, so the API works with no configuration at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from wacall.numbers import PhoneNumber
from wacall.upstreams.base import Account, UnknownSender
from wacall.upstreams.meta.accounts import meta_part


class MetaSenderDirectory(Protocol):
    """Senders as Meta's webhooks name them: by phone_number_id, signed with an app secret. Every account's
    upstream part is a `MetaAccount`."""

    def account_for(self, business: PhoneNumber) -> Account: ...

    def by_phone_number_id(self, phone_number_id: str) -> Account | None: ...

    def app_secrets(self) -> list[bytes]: ...


class ConfiguredSenders:
    def __init__(self, accounts: Iterable[Account]) -> None:
        self._by_number = {a.business_number: a for a in accounts}
        self._by_id = {meta_part(a).phone_number_id: a for a in self._by_number.values()}

    def account_for(self, business: PhoneNumber) -> Account:
        try:
            return self._by_number[business.e164]
        except KeyError:
            raise UnknownSender(business.e164) from None

    def by_phone_number_id(self, phone_number_id: str) -> Account | None:
        return self._by_id.get(phone_number_id)

    def app_secrets(self) -> list[bytes]:
        return sorted({meta_part(a).app_secret.encode() for a in self._by_number.values()})


class ProvisioningSenders(ConfiguredSenders):
    """Configured senders first; any other number is provisioned through `provision` on first use."""

    def __init__(
        self,
        accounts: Iterable[Account],
        provision: Callable[[PhoneNumber], Account],
        number_of_phone_number_id: Callable[[str], PhoneNumber | None],
        app_secret: str,
    ) -> None:
        super().__init__(accounts)
        self._provision = provision
        self._number_of = number_of_phone_number_id
        self._app_secret = app_secret

    def account_for(self, business: PhoneNumber) -> Account:
        try:
            return super().account_for(business)
        except UnknownSender:
            account = self._provision(business)
            self._by_number[account.business_number] = account
            self._by_id[meta_part(account).phone_number_id] = account
            return account

    def by_phone_number_id(self, phone_number_id: str) -> Account | None:
        known = super().by_phone_number_id(phone_number_id)
        if known is not None:
            return known
        # Provisioned numbers are derived from their id, so they survive a restart.
        number = self._number_of(phone_number_id)
        return self.account_for(number) if number is not None else None

    def app_secrets(self) -> list[bytes]:
        return sorted({*super().app_secrets(), self._app_secret.encode()})

    def replace(
        self, accounts: Iterable[Account], provision: Callable[[PhoneNumber], Account], app_secret: str
    ) -> None:
        """Start over from these accounts, provisioning and secret (a simulator in another process restarted with
        another secret or token): accounts provisioned so far are provisioned again on their next use."""
        super().__init__(accounts)
        self._provision = provision
        self._app_secret = app_secret
