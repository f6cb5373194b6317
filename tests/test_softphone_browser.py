"""The agent page in a real headless Chromium: two agents signed in on two pages, a call offered to the right one by
the queue's strategy, the first declining and the second accepting with the browser's own WebRTC audio, hang-up from
the page, wrap-up ended from the page, and the customer panel's lookup. Screenshots of each step are kept under
tests/artifacts/softphone/ (git-ignored) to look at after a run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from conftest import BUSINESS, USER, Running, duration, wait_until
from selenium import webdriver
from selenium.webdriver.common.by import By
from test_browser import browser, in_browser  # noqa: F401  (the Chromium fixture, shared)
from test_contact_center import agent_state, put_agent, put_queue
from test_queue_calls import HOLD_HZ, USER_HZ, hears, phone_ear
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import contact_center_model_pb2 as m

ARTIFACTS = Path(__file__).parent / "artifacts" / "softphone"


class AgentPage:
    """One agent's page in its own browser window. Selenium drives one window at a time: every use takes the lock."""

    lock = asyncio.Lock()

    def __init__(self, driver: webdriver.Chrome, handle: str, name: str) -> None:
        self.driver = driver
        self.handle = handle
        self.name = name

    async def run(self, action: Callable[[webdriver.Chrome], Any]) -> Any:
        async with self.lock:

            def in_window() -> Any:
                self.driver.switch_to.window(self.handle)
                return action(self.driver)

            return await asyncio.to_thread(in_window)

    async def script(self, script: str, *args: Any) -> Any:
        async with self.lock:
            await asyncio.to_thread(self.driver.switch_to.window, self.handle)
            return await in_browser(self.driver, script, *args)

    async def click(self, selector: str) -> None:
        await self.run(lambda d: d.find_element(By.CSS_SELECTOR, selector).click())

    async def text(self, selector: str) -> str:
        return str(await self.run(lambda d: d.find_element(By.CSS_SELECTOR, selector).text))

    async def shown(self, selector: str) -> bool:
        return bool(await self.run(lambda d: any(e.is_displayed() for e in d.find_elements(By.CSS_SELECTOR, selector))))

    async def wait_text(self, selector: str, wanted: str, timeout: float = 15.0) -> str:
        return await wait_until(lambda: self.text(selector), lambda text: wanted in text, timeout)

    async def wait_shown(self, selector: str, timeout: float = 15.0) -> None:
        await wait_until(lambda: self.shown(selector), bool, timeout)

    async def screenshot(self, step: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await self.run(lambda d: d.save_screenshot(str(ARTIFACTS / f"{step}-{self.name}.png")))

    async def sign_in(self, agent_id: str) -> None:
        await self.run(lambda d: d.find_element(By.ID, "agent-id").send_keys(agent_id))
        await self.click("#sign-in-button")
        await self.wait_text("#presence", "Away")
        await self.click("input[name=presence][value=AGENT_PRESENCE_AVAILABLE]")
        await self.wait_text("#presence", "Available")


async def open_pages(wacall: Running, driver: webdriver.Chrome, names: tuple[str, ...]) -> list[AgentPage]:
    url = f"http://{wacall.addresses.http}/agent/"  # localhost: a secure context, so getUserMedia works
    pages = []
    for index, name in enumerate(names):
        if index:
            await asyncio.to_thread(driver.switch_to.new_window, "window")
        await asyncio.to_thread(driver.set_window_size, 1000, 1300)
        await asyncio.to_thread(driver.get, url)
        pages.append(AgentPage(driver, driver.current_window_handle, name))
    return pages


async def page_stats(page: AgentPage) -> dict[str, Any]:
    return await page.script("window.agentPage.stats()")  # type: ignore[no-any-return]


async def test_two_agents_in_chromium_a_users_call_declined_by_one_taken_by_the_other_with_audio_both_ways(
    make_service: Callable[..., Awaitable[Running]],
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    wacall = await make_service(inbound_route="queue:support")  # users' calls wait in queue "support"
    # LONGEST_IDLE: the agent free the longest gets the call. Ann is put first (LINEAR would pick her) but Bob has
    # been available 5 s longer, so the call goes to Bob first.
    await put_queue(
        wacall,
        "support",
        strategy=m.STRATEGY_LONGEST_IDLE,
        wrap_up=duration(60),
        hold_audio=m.HoldAudio(tone_hz=HOLD_HZ),
    )
    await put_agent(wacall, "ann", ("support",), name="Ann")
    await put_agent(wacall, "bob", ("support",), name="Bob")
    ann, bob = await open_pages(wacall, browser, ("ann", "bob"))
    await bob.sign_in("bob")
    await wacall.advance(5)
    await ann.sign_in("ann")
    await ann.screenshot("1-signed-in")

    # The simulated user calls the business; their phone speaks 880 Hz, and hears the hold tone while waiting.
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=USER_HZ)
    phone_call = await wacall.sim.PlaceUserCall(
        sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER), metadata=wacall.metadata
    )
    ear = await phone_ear(wacall, phone_call.platform_call_id)
    await hears(ear, HOLD_HZ, what="hold audio")

    offer_card = "li.offer"
    await bob.wait_shown(offer_card)
    call_id = await bob.run(lambda d: d.find_element(By.CSS_SELECTOR, offer_card).get_attribute("data-call-id"))
    offer_text = await bob.text(offer_card)
    assert USER in offer_text and "Queue support" in offer_text and "Granted (permanent)" in offer_text
    assert "s to answer" in offer_text  # the ring timer
    assert not await ann.run(lambda d: d.find_elements(By.CSS_SELECTOR, offer_card))
    await bob.screenshot("2-offered")

    await bob.click("li.offer button.decline")
    await ann.wait_shown(f"li.offer[data-call-id='{call_id}']")
    await wait_until(lambda: bob.run(lambda d: d.find_elements(By.CSS_SELECTOR, offer_card)), lambda found: not found)
    await ann.screenshot("3-offered-after-decline")

    await ann.click("li.offer button.accept")
    await ann.wait_shown("#call-panel")
    assert USER in await ann.text("#call-title")
    assert (await agent_state(wacall, "ann")).presence == m.AGENT_PRESENCE_BUSY

    # The user's voice in the page: WebRTC packets in, and the Web Audio analyser hears 880 Hz.
    stats = await wait_until(
        lambda: page_stats(ann),
        lambda s: s.get("packetsReceived", 0) > 100 and s.get("peakLevel", 0) > 0.05 and s.get("remoteHz", 0) > 0,
        20,
    )
    assert stats["connectionState"] == "connected"
    assert abs(stats["remoteHz"] - USER_HZ) < USER_HZ * 0.05, stats
    # The page's microphone (Chromium's fake device beeps about once a second) at the phone: the simulator reports
    # audible frames again once the hold tone has stopped; muting the page silences them.
    heard = await phone_of(wacall, phone_call.platform_call_id)
    await wait_until(
        lambda: phone_of(wacall, phone_call.platform_call_id),
        lambda p: p.audible_frames_received >= heard.audible_frames_received + 10,
        20,
    )
    assert (await wacall.get_call(call_id)).route == "webrtc"  # the hold route is gone: what it hears is the page
    await ann.click("#mute")
    assert await ann.run(lambda d: d.find_element(By.ID, "mute").get_attribute("aria-pressed")) == "true"
    await asyncio.sleep(0.5)  # what was on its way when the button was pressed
    muted = await phone_of(wacall, phone_call.platform_call_id)
    await asyncio.sleep(3)  # three of the fake microphone's beeps would have come through
    still = await phone_of(wacall, phone_call.platform_call_id)
    assert still.frames_received > muted.frames_received + 50  # the call goes on...
    assert still.audible_frames_received == muted.audible_frames_received  # ...in silence
    await ann.screenshot("4-on-call-muted")
    await ann.click("#mute")

    await ann.click("#hang-up")
    await ann.wait_shown("#wrap-up-panel")
    await ann.wait_text("#presence", "Wrapping up")
    assert not await ann.shown("#call-panel")
    ended = await wacall.get_call(call_id)
    assert ended.state == pb.CALL_STATE_ENDED and ended.outcome == pb.CALL_OUTCOME_ANSWERED
    await wait_until(lambda: phone_of(wacall, phone_call.platform_call_id), lambda p: p.state == "ended")
    await ann.screenshot("5-wrap-up")

    await ann.click("#end-wrap-up")
    await ann.wait_text("#presence", "Available")
    assert (await agent_state(wacall, "ann")).presence == m.AGENT_PRESENCE_AVAILABLE
    assert (await agent_state(wacall, "bob")).presence == m.AGENT_PRESENCE_AVAILABLE

    # The customer panel: the number looked up through the page.
    await ann.run(lambda d: d.find_element(By.ID, "customer-number").clear())
    await ann.run(lambda d: d.find_element(By.ID, "customer-number").send_keys(USER))
    await ann.run(lambda d: d.find_element(By.CSS_SELECTOR, "#lookup button[type=submit]").click())
    await ann.wait_text("#customer-state", "Granted (permanent)")
    assert await ann.shown("#customer-actions")
    await ann.screenshot("6-customer")


async def phone_of(wacall: Running, platform_call_id: str) -> sim_pb.PhoneCall:
    return await wacall.sim.GetPhoneCall(
        sim_pb.GetPhoneCallRequest(platform_call_id=platform_call_id), metadata=wacall.metadata
    )


async def test_an_agent_calls_a_customer_back_from_the_page_with_audio_both_ways(
    wacall: Running,
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    await put_queue(wacall, "support")
    await put_agent(wacall, "ann", ("support",), name="Ann")
    (ann,) = await open_pages(wacall, browser, ("ann",))
    await ann.sign_in("ann")
    await ann.run(lambda d: d.find_element(By.ID, "business-number").send_keys(BUSINESS))
    await ann.run(lambda d: d.find_element(By.ID, "customer-number").send_keys(USER))

    # Without permission the page says so and offers to ask: call back stays disabled.
    await ann.click("#lookup button[type=submit]")
    await ann.wait_text("#customer-state", "No permission")
    assert await ann.run(lambda d: d.find_element(By.ID, "call-back").get_attribute("disabled")) == "true"

    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=USER_HZ)
    await ann.click("#lookup button[type=submit]")
    await ann.wait_text("#customer-state", "Granted (permanent)")
    await ann.click("#call-back")
    await ann.wait_shown("#call-panel")
    call_id = await ann.run(lambda d: d.find_element(By.ID, "call-panel").get_attribute("data-call-id"))
    call = await wacall.wait_call(call_id, pb.CALL_STATE_CONNECTED)
    assert call.route == "agent" and call.user_number == USER
    assert (await agent_state(wacall, "ann")).presence == m.AGENT_PRESENCE_BUSY

    stats = await wait_until(
        lambda: page_stats(ann),
        lambda s: s.get("packetsReceived", 0) > 100 and s.get("remoteHz", 0) > 0,
        20,
    )
    assert abs(stats["remoteHz"] - USER_HZ) < USER_HZ * 0.05, stats
    await wait_until(lambda: phone_of(wacall, call.platform_call_id), lambda p: p.audible_frames_received > 10, 20)
    await ann.screenshot("7-call-back")

    await ann.click("#hang-up")
    await ann.wait_text("#presence", "Available")  # a call the agent placed belongs to no queue: no wrap-up
    assert not await ann.shown("#call-panel")
    ended = await wacall.get_call(call_id)
    assert ended.state == pb.CALL_STATE_ENDED and ended.outcome == pb.CALL_OUTCOME_ANSWERED
