"""A real headless Chromium as the agent of a bridged WebRTC call: its microphone reaches the WhatsApp user, and
the user's voice reaches the browser."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Running, wait_until
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

ASSETS = Path(__file__).parent / "assets"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
async def wacall(make_service: Callable[..., Awaitable[Running]]) -> Running:
    """A service that bridges webrtc calls in a local rtpengine (the default where one is installed)."""
    return await make_service(rtpengine="")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "Chromium and chromedriver are part of the test environment: apt-get install chromium chromium-driver "
        "(make system-deps)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={tmp_path / 'chrome'}",
        # A fake microphone (a periodic beep), no permission prompt, and real host candidates instead of mDNS names
        # (aiortc does not resolve .local).
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


async def in_browser(driver: webdriver.Chrome, script: str, *args: Any) -> Any:
    """Run an async JS expression in the page without blocking the event loop the service runs on."""
    wrapped = f"const done = arguments[arguments.length - 1]; ({script}).then(done, e => done({{error: String(e)}}));"
    result = await asyncio.to_thread(driver.execute_async_script, wrapped, *args)
    if isinstance(result, dict) and "error" in result:
        raise AssertionError(f"browser: {result['error']}")
    return result


async def test_chromium_agent_bridged_to_the_whatsapp_user_hears_and_is_heard(
    wacall: Running, browser: webdriver.Chrome
) -> None:
    app = web.Application()
    app.router.add_static("/", ASSETS)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        await asyncio.to_thread(browser.get, f"http://127.0.0.1:{port}/softphone.html")  # localhost: secure context
        offer = await in_browser(browser, "window.softphone.offer()")
        assert "m=audio" in offer

        await wacall.grant(permanent=True)
        await wacall.phone(tone_hz=880)
        call = await wacall.start_call(route=pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=offer)))
        await in_browser(browser, "window.softphone.answer(arguments[0])", call.webrtc_answer_sdp)

        async def browser_stats() -> dict[str, Any]:
            return await in_browser(browser, "window.softphone.stats()")  # type: ignore[no-any-return]

        stats = await wait_until(
            browser_stats,
            lambda s: (
                s.get("packetsReceived", 0) > 150 and s.get("packetsSent", 0) > 150 and s.get("peakLevel", 0) > 0.05
            ),
            20,
        )
        assert stats["connectionState"] == "connected"
        # The browser's fake microphone beeps about once a second: some of what the user hears is audible.
        phone = await wait_until(
            lambda: wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id)),
            lambda p: p.frames_received > 150 and p.audible_frames_received > 5,
            20,
        )
        assert phone.state == "connected"
        # With rtpengine installed (make test installs it), both legs live there: no audio through wacall.
        assert wacall.service.engines is not None
        assert call.call_id in await wacall.service.engines.engines[0].list_calls()
        ended = await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
        assert ended.outcome == pb.CALL_OUTCOME_ANSWERED
    finally:
        await runner.cleanup()
