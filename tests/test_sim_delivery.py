"""How the simulator delivers its webhooks to several URLs: round-robin, a failed delivery tried on the next URL at
once, a refused one (4xx) not tried elsewhere. Real HTTP to real aiohttp receivers that check the signature."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from conftest import BUSINESS, USER

from wacall.clock import ManualClock
from wacall.numbers import parse_number
from wacall.rules.policy import load_policy
from wacall.simulator.platform import SimulatedPlatform
from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH


@dataclass
class Receiver:
    name: str
    secret: bytes
    status: int = 200
    url: str = ""
    hits: list[str] = field(default_factory=list)  # shared between receivers: who was tried, in order

    async def receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        expected = "sha256=" + hmac.new(self.secret, raw, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected)
        self.hits.append(self.name)
        return web.Response(status=self.status, text=self.name)


@pytest.fixture
async def platform() -> AsyncIterator[SimulatedPlatform]:
    simulated = SimulatedPlatform(ManualClock(), load_policy("seed", {}))
    yield simulated
    await simulated.close()


@pytest.fixture
async def receivers(platform: SimulatedPlatform) -> AsyncIterator[tuple[Receiver, Receiver]]:
    hits: list[str] = []
    pair = (
        Receiver("a", platform.app_secret.encode(), hits=hits),
        Receiver("b", platform.app_secret.encode(), hits=hits),
    )
    runners = []
    for receiver in pair:
        app = web.Application()
        app.router.add_post(WEBHOOK_PATH, receiver.receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}{WEBHOOK_PATH}"
        runners.append(runner)
    platform.webhook_urls = [pair[0].url, pair[1].url]
    yield pair
    for runner in runners:
        await runner.cleanup()


async def deliver_messages(platform: SimulatedPlatform, count: int) -> None:
    for _ in range(count):
        # Returns once the delivery is acknowledged (or given up).
        await platform.user_sends_message(parse_number(BUSINESS), parse_number(USER), "hi")


async def test_deliveries_take_turns_across_the_urls(
    platform: SimulatedPlatform, receivers: tuple[Receiver, Receiver]
) -> None:
    await deliver_messages(platform, 4)
    assert receivers[0].hits == ["a", "b", "a", "b"]


async def test_a_failed_delivery_is_tried_on_the_next_url_at_once(
    platform: SimulatedPlatform, receivers: tuple[Receiver, Receiver]
) -> None:
    receivers[0].status = 503
    await deliver_messages(platform, 2)
    # a's turn: a fails, b takes it; b's turn: b takes it. No delivery waits for a backoff while b is up.
    assert receivers[0].hits == ["a", "b", "b"]


async def test_a_delivery_every_url_fails_is_retried_round_after_round(
    platform: SimulatedPlatform, receivers: tuple[Receiver, Receiver]
) -> None:
    receivers[0].status = receivers[1].status = 503
    await deliver_messages(platform, 1)
    assert receivers[0].hits == ["a", "b"] * 6  # six rounds with backoff between them, then given up


async def test_a_refused_delivery_is_not_tried_elsewhere(
    platform: SimulatedPlatform, receivers: tuple[Receiver, Receiver]
) -> None:
    receivers[0].status = 400
    await deliver_messages(platform, 3)
    assert receivers[0].hits == ["a", "b", "a"]
