"""A simulator running in another process (`wacall simulate`), as a service using it sees it.

`fetch_platform_config` asks it over gRPC for what an embedded simulator hands over in process: the Graph base URL,
the app secret its webhooks are signed with, and its accounts. Numbers nobody provisioned yet are derived locally
(`provisioned_account`) exactly as the simulator derives them on first use, so every replica names the same account
without a round trip, and the simulator provisions it when the first Graph request names it.

`SimulatorLink` keeps that view current: a simulator restarted with another app secret or token (no --sim-state,
another --app-secret) makes the Graph refuse the service's token and the service refuse the simulator's
signatures; either one makes the link ask again (at most once per `min_interval`) and hand the new configuration
on, so the service recovers without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import grpc
from wacall_client.sim.v1 import simulator_pb2 as pb
from wacall_client.sim.v1 import simulator_pb2_grpc

from wacall.numbers import InvalidNumber, PhoneNumber, parse_number
from wacall.simulator.platform import DEFAULT_TEMPLATE, GRAPH_VERSION, provisioned_account
from wacall.upstreams.base import Account, TemplateRef
from wacall.upstreams.meta.webhooks import WEBHOOK_PATH

log = logging.getLogger(__name__)

# How long `wacall serve` waits for a simulator started beside it (a compose file starts both at once).
DEFAULT_WAIT = timedelta(seconds=10)
_ATTEMPT_TIMEOUT = 2.0
_RETRY_PAUSE = 0.5
# Answers that mean "nobody is there yet": worth another try until the wait is over.
_NOT_YET = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class SimulatorUnreachable(Exception):
    """No simulator answered at the address in time, or what answered is not a usable simulator."""


@dataclass(frozen=True)
class RemotePlatform:
    """What a service needs of a simulator in another process."""

    address: str
    graph_root: str  # the Graph base URL without its version
    app_secret: str
    access_token: str
    accounts: tuple[Account, ...]
    webhook_verify_token: str = ""
    # Every URL the simulator delivers webhooks to: its default group and every business number's own.
    webhook_urls: tuple[str, ...] = ()

    def provision(self, business: PhoneNumber) -> Account:
        """The account the simulator gives the number on first use (the same on every replica)."""
        return provisioned_account(business, self.access_token, self.app_secret).account(DEFAULT_TEMPLATE)


def remote_platform(address: str, config: pb.PlatformConfig) -> RemotePlatform:
    """The simulator's answer checked and turned into accounts; SimulatorUnreachable when it cannot be used."""
    suffix = f"/{GRAPH_VERSION}"
    if not config.graph_base_url.endswith(suffix):
        raise SimulatorUnreachable(
            f"the simulator at {address} serves Graph at {config.graph_base_url!r}; this service speaks {GRAPH_VERSION}"
        )
    if not config.app_secret or not config.access_token:
        raise SimulatorUnreachable(f"the simulator at {address} gave no app secret or access token")
    accounts = []
    for item in config.accounts:
        try:
            business = parse_number(item.business_number, "business_number")
        except InvalidNumber as error:
            raise SimulatorUnreachable(f"the simulator at {address} lists a bad account: {error}") from None
        account = provisioned_account(business, config.access_token, config.app_secret)
        if (item.phone_number_id, item.waba_id) != (account.phone_number_id, account.waba_id):
            raise SimulatorUnreachable(
                f"the simulator at {address} knows {business.e164} by ids this service does not derive: "
                f"{item.phone_number_id}/{item.waba_id}"
            )
        default = TemplateRef(item.default_template_name, item.default_template_language)
        accounts.append(account.account(default if item.default_template_name else None))
    return RemotePlatform(
        address=address,
        graph_root=config.graph_base_url.removesuffix(suffix),
        app_secret=config.app_secret,
        access_token=config.access_token,
        accounts=tuple(accounts),
        webhook_verify_token=config.webhook_verify_token,
        webhook_urls=(*config.webhook_urls, *(url for route in config.webhook_routes for url in route.urls)),
    )


async def fetch_platform_config(address: str, wait: timedelta = DEFAULT_WAIT, token: str = "") -> RemotePlatform:
    """Asks the simulator at `address` (its gRPC address, sending `token` as a bearer token when given) for its
    configuration, trying again while nothing answers, for up to `wait`; SimulatorUnreachable with what to do when
    it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait.total_seconds()
    last = ""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = simulator_pb2_grpc.SimulatorServiceStub(channel)
        while True:
            try:
                config = await stub.GetPlatformConfig(
                    pb.GetPlatformConfigRequest(), timeout=_ATTEMPT_TIMEOUT, metadata=metadata
                )
                return remote_platform(address, config)
            except grpc.aio.AioRpcError as error:
                if error.code() not in _NOT_YET:
                    raise SimulatorUnreachable(
                        f"the service at {address} is not a usable simulator: {error.code().name}: {error.details()}"
                    ) from None
                last = error.details() or error.code().name
            if loop.time() + _RETRY_PAUSE > deadline:
                raise SimulatorUnreachable(
                    f"no simulator answered at {address} within {wait.total_seconds():g} s ({last}): start one with "
                    f"wacall simulate --grpc-address {address} --webhook-url http://HOST:PORT{WEBHOOK_PATH}, or leave "
                    "--sim-address empty for the embedded simulator"
                )
            await asyncio.sleep(_RETRY_PAUSE)


class SimulatorLink:
    """A service's view of a simulator in another process, asked again when it may have changed."""

    def __init__(
        self,
        current: RemotePlatform,
        on_change: Callable[[RemotePlatform], None],
        *,
        token: str = "",
        min_interval: timedelta = timedelta(seconds=5),
        wait: timedelta = timedelta(seconds=2),
    ) -> None:
        self.current = current
        self._on_change = on_change
        self._token = token
        self._min_interval = min_interval.total_seconds()
        self._wait = wait
        self._last_asked: float | None = None
        self._task: asyncio.Task[None] | None = None

    def suspect(self) -> None:
        """The simulator refused this service's token, or signed a webhook with a secret it does not know: ask it
        for its configuration again, in the background, unless that was done moments ago."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done():
            return
        if self._last_asked is not None and loop.time() - self._last_asked < self._min_interval:
            return
        self._last_asked = loop.time()
        self._task = loop.create_task(self._refresh())

    async def _refresh(self) -> None:
        address = self.current.address
        try:
            fresh = await fetch_platform_config(address, self._wait, self._token)
        except SimulatorUnreachable as error:
            log.warning("could not ask the simulator again for its configuration: %s", error)
            return
        if (fresh.app_secret, fresh.access_token) == (self.current.app_secret, self.current.access_token):
            return
        log.warning(
            "the simulator at %s changed its app secret or access token (restarted?): using the new ones", address
        )
        self.current = fresh
        self._on_change(fresh)

    async def settled(self) -> None:
        """Waits for a refresh under way to finish."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def webhook_url_listed(config_urls: list[str], port: int) -> bool:
    """Whether one of the simulator's webhook URLs can be this service's: its path, and the port it listens on (the
    host is whatever name the simulator reaches it by)."""
    for url in config_urls:
        parts = urlsplit(url)
        try:
            listed_port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            continue
        if parts.path == WEBHOOK_PATH and listed_port == port:
            return True
    return False
