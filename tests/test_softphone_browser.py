"""The agent page in a real headless Chromium: two agents signed in on two pages, a call offered to the right one by
the queue's strategy, the first declining and the second accepting with the browser's own WebRTC audio, hang-up from
the page, wrap-up ended from the page, and the customer panel's lookup. Screenshots of each step are kept under
tests/artifacts/softphone/ (git-ignored) to look at after a run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import USER, Running, duration, wait_until
from selenium import webdriver
from selenium.webdriver.common.by import By
from test_browser import browser, in_browser  # noqa: F401  (the Chromium fixture, shared)
from test_contact_center import agent_state, put_agent, put_queue, queued_call
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
        return bool(await self.run(lambda d: d.find_element(By.CSS_SELECTOR, selector).is_displayed()))

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


async def test_two_agents_in_chromium_one_declines_the_other_takes_the_call_hangs_up_and_ends_wrap_up(
    wacall: Running,
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    # LONGEST_IDLE: the agent free the longest gets the call. Ann is put first (LINEAR would pick her) but Bob has
    # been available 5 s longer, so the call goes to Bob first.
    await put_queue(wacall, "support", strategy=m.STRATEGY_LONGEST_IDLE, wrap_up=duration(60))
    await put_agent(wacall, "ann", ("support",), name="Ann")
    await put_agent(wacall, "bob", ("support",), name="Bob")
    ann, bob = await open_pages(wacall, browser, ("ann", "bob"))
    await bob.sign_in("bob")
    await wacall.advance(5)
    await ann.sign_in("ann")
    await ann.screenshot("1-signed-in")

    call_id = await queued_call(wacall, "support")
    await bob.wait_shown(f"li.offer[data-call-id='{call_id}']")
    offer_text = await bob.text("li.offer")
    assert USER in offer_text and "Queue support" in offer_text and "Granted (permanent)" in offer_text
    assert "s to answer" in offer_text  # the ring timer
    assert not await ann.run(lambda d: d.find_elements(By.CSS_SELECTOR, "li.offer"))
    await bob.screenshot("2-offered")

    await bob.click("li.offer button.decline")
    await ann.wait_shown(f"li.offer[data-call-id='{call_id}']")
    await wait_until(lambda: bob.run(lambda d: d.find_elements(By.CSS_SELECTOR, "li.offer")), lambda found: not found)
    await ann.screenshot("3-offered-after-decline")

    await ann.click("li.offer button.accept")
    await ann.wait_shown("#call-panel")
    assert USER in await ann.text("#call-title")
    assert (await agent_state(wacall, "ann")).presence == m.AGENT_PRESENCE_BUSY
    await ann.click("#mute")
    assert await ann.run(lambda d: d.find_element(By.ID, "mute").get_attribute("aria-pressed")) == "true"
    await ann.click("#mute")
    await ann.screenshot("4-on-call")

    await ann.click("#hang-up")
    await ann.wait_shown("#wrap-up-panel")
    await ann.wait_text("#presence", "Wrapping up")
    assert not await ann.shown("#call-panel")
    ended = await wacall.get_call(call_id)
    assert ended.outcome != 0
    await ann.screenshot("5-wrap-up")

    await ann.click("#end-wrap-up")
    await ann.wait_text("#presence", "Available")
    assert (await agent_state(wacall, "ann")).presence == m.AGENT_PRESENCE_AVAILABLE
    assert (await agent_state(wacall, "bob")).presence == m.AGENT_PRESENCE_AVAILABLE

    # The customer panel: the number looked up through the page, its next allowed time shown as local time.
    await ann.run(lambda d: d.find_element(By.ID, "customer-number").clear())
    await ann.run(lambda d: d.find_element(By.ID, "customer-number").send_keys(USER))
    await ann.run(lambda d: d.find_element(By.CSS_SELECTOR, "#lookup button[type=submit]").click())
    await ann.wait_text("#customer-state", "Granted (permanent)")
    assert await ann.shown("#customer-actions")
    await ann.screenshot("6-customer")
