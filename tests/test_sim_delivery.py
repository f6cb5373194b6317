"""How the simulator delivers its webhooks to several URLs: round-robin inside a business number's group, a failed
delivery tried on the next URL at once and again in the background, refused for good only when every URL of the
group refused it (400, 403, 413). Real HTTP to real aiohttp receivers that check the signature."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from aiohttp import web
from conftest import BUSINESS, USER, wait_until

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
    simulated.retry_backoff = timedelta(seconds=0.05)  # the background retries, quick enough for a test
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


async def deliver_messages(platform: SimulatedPlatform, count: int, business: str = BUSINESS) -> None:
    for _ in range(count):
        # Returns once the delivery is acknowledged, or after a first round over the URLs.
        await platform.user_sends_message(parse_number(business), parse_number(USER), "hi")


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


@pytest.mark.parametrize("status", [401, 404, 408, 429, 500, 503])
async def test_a_transient_or_one_replicas_refusal_moves_on_to_the_next_url(
    platform: SimulatedPlatform, receivers: tuple[Receiver, Receiver], status: int
) -> None:
    # 408 is wacall's own answer to a slow body; 401/404 come from one misconfigured replica: not the platform's
    # reason to lose the webhook.
    receivers[0].status = status
    await deliver_messages(platform, 1)
    assert receivers[0].hits == ["a", "b"]


async def test_a_url_that_just_failed_is_skipped_while_the_group_has_another(
    platform: SimulatedPlatform, receivers: tuple[Receiver, Receiver]
) -> None:
    receivers[0].status = 503
    await deliver_messages(platform, 3)
    # The third delivery starts at a's turn, but a failed moments ago: it goes straight to b.
    assert receivers[0].hits == ["a", "b", "b", "b"]


async def test_a_delivery_nobody_takes_is_retried_in_the_background_until_one_comes_back(
    platform: SimulatedPlatform, receivers: tuple[Receiver, Receiver]
) -> None:
    receivers[0].status = receivers[1].status = 503
    await deliver_messages(platform, 1)
    # The call returned after one round (settle, and so ClockService.Advance, waits for no more)...
    assert receivers[0].hits == ["a", "b"]
    await platform.settle()
    assert receivers[0].hits == ["a", "b"]
    # ...and the platform keeps trying: the service is back after a restart, and gets the webhook.
    await asyncio.sleep(0.3)
    assert len(receivers[0].hits) > 2
    receivers[1].status = 200
    down_until = len(receivers[0].hits)

    async def hits() -> list[str]:
        return receivers[0].hits[down_until:]

    await wait_until(hits, lambda since: "b" in since)
    acknowledged = len(receivers[0].hits)
    await asyncio.sleep(0.3)
    assert len(receivers[0].hits) == acknowledged  # acknowledged: no more tries


async def test_a_refusal_is_final_only_once_every_url_of_the_group_refused(
    platform: SimulatedPlatform, receivers: tuple[Receiver, Receiver]
) -> None:
    receivers[0].status = 400
    await deliver_messages(platform, 2)
    assert receivers[0].hits == ["a", "b", "b"]  # a refused; b took it
    receivers[0].hits.clear()
    receivers[0].status = receivers[1].status = 403
    await deliver_messages(platform, 1)
    await asyncio.sleep(0.3)
    assert sorted(receivers[0].hits) == ["a", "b"]  # both refused it for good: not retried


async def test_a_routed_business_number_uses_its_own_group_and_no_other(
    platform: SimulatedPlatform, receivers: tuple[Receiver, Receiver]
) -> None:
    # Two stacks on two databases: each business number's webhooks go only to its own stack.
    platform.webhook_urls = [receivers[0].url]
    platform.webhook_routes = {BUSINESS: [receivers[1].url]}
    await deliver_messages(platform, 3)
    await deliver_messages(platform, 2, business="+447911123457")
    assert receivers[0].hits == ["b", "b", "b", "a", "a"]
    receivers[1].status = 503
    await deliver_messages(platform, 1)
    assert receivers[0].hits[5:] == ["b"]  # b is down: the routed number's webhook does not go to a


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A URL whose TCP connect never completes: a listener whose accept queue is full (as a killed pod's address)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fillers.append(filler)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}{WEBHOOK_PATH}"
    for sock in (*fillers, listener):
        sock.close()


async def test_a_replica_whose_address_blackholes_costs_about_a_second(
    platform: SimulatedPlatform, receivers: tuple[Receiver, Receiver], blackhole: str
) -> None:
    platform.webhook_urls = [blackhole, receivers[1].url]
    started = time.monotonic()
    await deliver_messages(platform, 1)
    # The connect timeout, not the whole 10 s request timeout, before the next URL takes it.
    assert receivers[0].hits == ["b"]
    assert time.monotonic() - started < 5.0


async def test_provisioned_accounts_and_their_templates_are_kept_in_the_state_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "sim.json"
    first = SimulatedPlatform(ManualClock(), load_policy("seed", {}), state_path=state)
    first.provision(parse_number(BUSINESS))
    await first.close()
    again = SimulatedPlatform(ManualClock(), load_policy("seed", {}), state_path=state)
    try:
        assert [a.business_number for a in again.accounts()] == [BUSINESS]
        assert again.accounts()[0].app_secret == again.app_secret == first.app_secret
    finally:
        await again.close()
