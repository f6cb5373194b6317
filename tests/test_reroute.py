"""A live call moves from one route to another (hold audio → a program or an agent) without touching the platform
leg: real audio measured at the user's phone and at the business side, before and after the switch."""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import Running, duration, eventually, wait_until
from test_media_routes import phone_of, tone_frame
from wacall_client.v1 import calling_pb2 as pb

from wacall.calls.service import CallNotFound, CallNotLive, CallService, RerouteRefused
from wacall.calls.sessions import CallSession, SessionClosed
from wacall.media.counters import MediaCounters
from wacall.media.leg import AudioLeg
from wacall.media.tracks import FRAME_BYTES, AudioSource, FrameHandler, ToneSource, level
from wacall.store import Pair
from wacall_adapters.base import CallLeg, MediaAdapter
from wacall_adapters.registry import plan_route
from wacall_adapters.routes import RoutePlan, ServerFiles


def service_calls(wacall: Running) -> CallService:
    assert wacall.service.calls is not None
    return wacall.service.calls


async def plan(route: pb.Route, directory: Path) -> RoutePlan:
    return await plan_route(route, ServerFiles(media_dir=str(directory), recordings_dir=str(directory)))


def audible_frames(path: Path) -> tuple[int, int]:
    """(frames, audible frames) of a 48 kHz mono WAV recording."""
    with wave.open(str(path), "rb") as recorded:
        pcm = recorded.readframes(recorded.getnframes())
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
    return len(frames), sum(level(f) > 0.05 for f in frames)


async def test_a_live_call_moves_from_an_announcement_to_a_media_stream_program_with_audio_both_ways(
    wacall: Running, tmp_path: Path
) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)  # the user speaks an 880 Hz tone for the whole call
    recording = tmp_path / "before-the-switch.wav"
    announcement = pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(3), record_to=str(recording))
    call = await wacall.start_call(route=pb.Route(announcement=announcement))
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)

    # Before the switch: the user hears the announcement, and the announcement records the user.
    await wait_until(lambda: phone_of(wacall, call), lambda p: p.audible_frames_received > 40, 10)
    await eventually(lambda: recording.exists() and recording.stat().st_size > 60 * FRAME_BYTES, what="recording")
    calls = service_calls(wacall)
    platform_leg = calls.sessions[call.call_id].platform

    rerouted = await calls.reroute(call.call_id, await plan(pb.Route(media_stream=pb.MediaStreamRoute()), tmp_path))
    switched_at = time.monotonic()
    at_switch = await phone_of(wacall, call)
    assert rerouted.route == "media_stream" and rerouted.state.value == "connected"
    assert calls.sessions[call.call_id].platform is platform_leg  # the same leg: nothing renegotiated
    frames, audible = audible_frames(recording)  # the old route closed its recording at the switch
    assert frames >= 50 and audible >= 40

    # Between the switch and the program's first word the user hears silence, not the announcement, and the
    # media never stops flowing (the platform drops calls that go quiet at the packet level).
    await asyncio.sleep(1.0)
    quiet = await phone_of(wacall, call)
    assert quiet.frames_received - at_switch.frames_received >= 35
    assert quiet.audible_frames_received - at_switch.audible_frames_received <= 10
    assert audible_frames(recording)[0] == frames  # nothing recorded after the switch

    # After the switch: a program attaches over CallMedia, talks (300 Hz) and listens.
    received: list[bytes] = []
    outgoing: asyncio.Queue[pb.CallMediaRequest | None] = asyncio.Queue()
    await outgoing.put(pb.CallMediaRequest(call_id=call.call_id, sample_rate=16000))

    async def requests():  # type: ignore[no-untyped-def]
        while (item := await outgoing.get()) is not None:
            yield item

    async def talk() -> None:
        for index in range(10_000):
            await outgoing.put(pb.CallMediaRequest(audio=tone_frame(16000, 300, index)))
            await asyncio.sleep(0.02)

    async def listen() -> list[pb.Call]:
        updates = []
        async for message in wacall.calling.CallMedia(requests()):
            if message.WhichOneof("kind") == "audio":
                received.append(message.audio)
            else:
                updates.append(message.call)
        return updates

    listener = asyncio.create_task(listen())
    talker = asyncio.create_task(talk())
    heard = await wait_until(
        lambda: phone_of(wacall, call), lambda p: p.audible_frames_received > quiet.audible_frames_received + 40, 10
    )
    assert heard.state == "connected"
    await eventually(lambda: sum(level(f) > 0.05 for f in received) > 40, what="the user's voice at the program")

    # The announcement would have hung up 3.5 s after it started; the route it no longer is cannot end the call.
    await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - switched_at)))
    still = await wacall.get_call(call.call_id)
    assert still.state == pb.CALL_STATE_CONNECTED and still.route == "media_stream"
    assert still.platform_call_id == call.platform_call_id

    talker.cancel()
    await asyncio.gather(talker, return_exceptions=True)
    await outgoing.put(pb.CallMediaRequest(hangup=True))
    await outgoing.put(None)
    updates = await asyncio.wait_for(listener, 10)
    assert updates[-1].state == pb.CALL_STATE_ENDED and updates[-1].outcome == pb.CALL_OUTCOME_ANSWERED

    # The event log tells watchers the call moved.
    events = await wacall.calling.ListEvents(pb.ListEventsRequest(page_size=1000))
    routes = [e.call.route for e in events.events if e.HasField("call") and e.call.call_id == call.call_id]
    assert routes[0] == "announcement" and "media_stream" in routes
    await eventually(lambda: not calls.sessions, what="session released")


async def test_a_route_that_cannot_take_the_call_leaves_the_old_route_playing(wacall: Running, tmp_path: Path) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone()
    call = await wacall.start_call(route=pb.Route(announcement=pb.AnnouncementRoute(tone_duration=duration(30))))
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    await wait_until(lambda: phone_of(wacall, call), lambda p: p.audible_frames_received > 20, 10)
    # A file that was there when the route was checked and is gone when it attaches.
    hold = tmp_path / "hold.wav"
    with wave.open(str(hold), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(48000)
        out.writeframes(b"".join(tone_frame(48000, 500, i) for i in range(50)))
    gone = await plan(pb.Route(announcement=pb.AnnouncementRoute(audio_file=hold.name)), tmp_path)
    hold.unlink()
    calls = service_calls(wacall)

    with pytest.raises(FileNotFoundError):
        await calls.reroute(call.call_id, gone)

    before = await phone_of(wacall, call)
    await asyncio.sleep(0.6)
    after = await phone_of(wacall, call)
    assert after.audible_frames_received - before.audible_frames_received >= 20  # the old announcement goes on
    current = await wacall.get_call(call.call_id)
    assert current.state == pb.CALL_STATE_CONNECTED and current.route == "announcement"
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))


async def test_only_a_live_call_whose_media_passes_through_the_service_can_move(
    wacall: Running, tmp_path: Path
) -> None:
    calls = service_calls(wacall)
    stream = await plan(pb.Route(media_stream=pb.MediaStreamRoute()), tmp_path)
    with pytest.raises(CallNotFound):
        await calls.reroute("call_" + "0" * 32, stream)

    await wacall.grant(permanent=True)
    await wacall.phone()
    call = await wacall.start_call(route=pb.Route(media_stream=pb.MediaStreamRoute()))
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    agent = AudioLeg(name="agent")
    try:
        passthrough = await plan(
            pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=await agent.create_offer(), passthrough=True)), tmp_path
        )
        with pytest.raises(RerouteRefused, match="needs its own offer"):
            await calls.reroute(call.call_id, passthrough)
    finally:
        await agent.close()
    assert (await wacall.get_call(call.call_id)).route == "media_stream"

    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
    with pytest.raises(CallNotLive, match="has ended"):
        await calls.reroute(call.call_id, stream)

    # A passthrough call's media runs between the agent and the platform: there is nothing here to move.
    agent = AudioLeg(name="agent")
    try:
        offer = await agent.create_offer()
        direct = await wacall.start_call(route=pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=offer, passthrough=True)))
        answered = await wait_until(lambda: wacall.get_call(direct.call_id), lambda c: bool(c.webrtc_answer_sdp))
        await agent.apply_answer(answered.webrtc_answer_sdp)
        await wacall.wait_call(direct.call_id, pb.CALL_STATE_CONNECTED)
        with pytest.raises(RerouteRefused, match="does not pass through wacall"):
            await calls.reroute(direct.call_id, stream)
        assert (await wacall.get_call(direct.call_id)).route == "webrtc_passthrough"
        await wacall.calling.EndCall(pb.EndCallRequest(call_id=direct.call_id))
    finally:
        await agent.close()


# --- the session's rules, on an in-memory platform leg --------------------------------------------------------------


class MemoryPlatformLeg:
    """A platform leg that keeps what it was told: the source playing, and the listeners frames go to."""

    def __init__(self) -> None:
        self.playing: object = None
        self.listeners: list[FrameHandler] = []
        self.closed = False

    async def create_offer(self) -> str:
        return "offer"

    async def accept_offer(self, sdp: str) -> str:
        return "answer"

    async def apply_answer(self, sdp: str) -> None:
        return None

    def play(self, source: AudioSource) -> None:
        self.playing = source

    def listen(self, handler: FrameHandler) -> Callable[[], None]:
        self.listeners.append(handler)
        return lambda: self.listeners.remove(handler)

    async def first_audio(self) -> bool:
        return False

    def counters(self) -> MediaCounters:
        return MediaCounters()

    async def close(self) -> None:
        self.closed = True

    def user_says(self, frame: bytes) -> None:
        for listener in list(self.listeners):
            listener(frame)


class KeepsTalking(MediaAdapter):
    """A route that goes on using its CallLeg after it was let go (as a careless adapter might)."""

    def __init__(self, name: str, fail_attach: bool = False) -> None:
        self.name, self.fail_attach = name, fail_attach
        self.source = ToneSource(440)
        self.heard: list[bytes] = []
        self.leg: CallLeg | None = None
        self.closed = False

    async def attach(self, leg: CallLeg) -> None:
        self.leg = leg
        leg.play(self.source)
        leg.listen(self.heard.append)
        if self.fail_attach:
            raise RuntimeError(f"{self.name} cannot attach")

    async def close(self) -> None:
        self.closed = True


def memory_session(route: MediaAdapter, hangups: list[str]) -> tuple[CallSession, MemoryPlatformLeg]:
    async def hangup(reason: str) -> None:
        hangups.append(reason)

    platform = MemoryPlatformLeg()
    account = SimpleNamespace(business_number="+14155550100", default_template=None)
    session = CallSession("call_x", Pair("+14155550100", "+14155550101"), account, route, "a", hangup)
    session.platform = platform
    return session, platform


async def test_a_route_that_was_let_go_no_longer_reaches_the_call() -> None:
    hangups: list[str] = []
    first, second = KeepsTalking("first"), KeepsTalking("second")
    session, platform = memory_session(first, hangups)
    await session.attach_adapter()
    platform.user_says(b"1")

    await session.reroute(second, "second")
    platform.user_says(b"2")
    assert first.closed and not second.closed and session.adapter is second
    assert platform.playing is second.source
    assert first.heard == [b"1"] and second.heard == [b"2"]
    assert first.leg is not None
    first.leg.play(ToneSource(900))  # the old route plays and hangs up after it was let go: nothing happens
    await first.leg.hangup("the old route finished")
    assert platform.playing is second.source and hangups == []
    assert second.leg is not None
    await second.leg.hangup("the new route finished")
    assert hangups == ["the new route finished"]


async def test_a_route_that_fails_to_attach_is_closed_and_the_old_route_plays_again() -> None:
    hangups: list[str] = []
    first, broken = KeepsTalking("first"), KeepsTalking("broken", fail_attach=True)
    session, platform = memory_session(first, hangups)
    await session.attach_adapter()

    with pytest.raises(RuntimeError, match="broken cannot attach"):
        await session.reroute(broken, "broken")
    platform.user_says(b"1")
    assert broken.closed and not first.closed and session.adapter is first and session.route_name == "a"
    assert platform.playing is first.source  # what the broken route played during its attach is gone
    assert first.heard == [b"1"] and broken.heard == []
    assert first.leg is not None
    await first.leg.hangup("done")
    assert hangups == ["done"]


async def test_a_call_that_ends_while_a_route_attaches_releases_the_new_route() -> None:
    first = KeepsTalking("first")
    session, platform = memory_session(first, [])
    await session.attach_adapter()

    class EndsTheCallWhileAttaching(KeepsTalking):
        async def attach(self, leg: CallLeg) -> None:
            await super().attach(leg)
            await session.close()

    late = EndsTheCallWhileAttaching("late")
    with pytest.raises(SessionClosed):
        await session.reroute(late, "late")
    assert first.closed and late.closed and platform.closed and platform.listeners == []


class FinishesTheOldRoute(KeepsTalking):
    """The next route, while it attaches, watches the old one finish and hang up."""

    def __init__(self, old: KeepsTalking, fail_attach: bool) -> None:
        super().__init__("next", fail_attach)
        self.old = old

    async def attach(self, leg: CallLeg) -> None:
        assert self.old.leg is not None
        await self.old.leg.hangup("the old route finished")  # the old route is suspended: its hang-up waits
        await super().attach(leg)


@pytest.mark.parametrize(("next_fails", "hung_up"), [(True, ["the old route finished"]), (False, [])])
async def test_a_hang_up_asked_during_a_reroute_happens_only_if_the_old_route_carries_on(
    next_fails: bool, hung_up: list[str]
) -> None:
    hangups: list[str] = []
    first = KeepsTalking("first")
    session, _ = memory_session(first, hangups)
    await session.attach_adapter()
    following = FinishesTheOldRoute(first, fail_attach=next_fails)
    if next_fails:
        with pytest.raises(RuntimeError):
            await session.reroute(following, "next")
    else:
        await session.reroute(following, "next")
    assert hangups == hung_up


async def test_two_reroutes_at_once_take_turns_and_leave_one_route_listening() -> None:
    first, third = KeepsTalking("first"), KeepsTalking("third")
    session, platform = memory_session(first, [])
    await session.attach_adapter()

    class SlowToAttach(KeepsTalking):
        async def attach(self, leg: CallLeg) -> None:
            await asyncio.sleep(0.05)
            await super().attach(leg)

    slow = SlowToAttach("slow")
    await asyncio.gather(session.reroute(slow, "slow"), session.reroute(third, "third"))
    assert session.adapter is third and session.route_name == "third"
    assert first.closed and slow.closed and not third.closed
    assert len(platform.listeners) == 1
    platform.user_says(b"1")
    assert third.heard == [b"1"] and slow.heard == []


async def test_a_route_that_was_let_go_hears_nothing_even_if_it_listens_again() -> None:
    first, second = KeepsTalking("first"), KeepsTalking("second")
    session, platform = memory_session(first, [])
    await session.attach_adapter()
    await session.reroute(second, "second")
    assert first.leg is not None
    unsubscribe = first.leg.listen(first.heard.append)
    platform.user_says(b"1")
    unsubscribe()
    assert first.heard == [] and len(platform.listeners) == 1


async def test_a_call_that_ends_while_the_old_route_closes_reports_the_reroute_as_ended() -> None:
    session_box: list[CallSession] = []

    class EndsTheCallWhileClosing(KeepsTalking):
        async def close(self) -> None:
            await super().close()
            await session_box[0].close()

    first, second = EndsTheCallWhileClosing("first"), KeepsTalking("second")
    session, platform = memory_session(first, [])
    session_box.append(session)
    await session.attach_adapter()
    with pytest.raises(SessionClosed):
        await session.reroute(second, "second")
    assert first.closed and second.closed and platform.closed and platform.listeners == []


async def test_a_media_stream_program_is_let_go_when_its_call_moves_to_another_route(
    wacall: Running, tmp_path: Path
) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    call = await wacall.start_call(route=pb.Route(media_stream=pb.MediaStreamRoute()))
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    requests: asyncio.Queue[pb.CallMediaRequest | None] = asyncio.Queue()
    await requests.put(pb.CallMediaRequest(call_id=call.call_id))

    async def outgoing():  # type: ignore[no-untyped-def]
        while (item := await requests.get()) is not None:
            yield item

    heard: list[bytes] = []
    updates: list[pb.Call] = []

    async def program() -> None:
        async for message in wacall.calling.CallMedia(outgoing()):
            if message.WhichOneof("kind") == "audio":
                heard.append(message.audio)
            else:
                updates.append(message.call)

    stream = asyncio.create_task(program())
    await eventually(lambda: sum(level(f) > 0.05 for f in heard) > 20, what="the user at the program")
    hold = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=500, tone_duration=duration(30)))
    await service_calls(wacall).reroute(call.call_id, await plan(hold, tmp_path))

    await asyncio.wait_for(stream, 10)  # the stream ends by itself: it no longer carries the call
    assert updates[-1].route == "announcement" and updates[-1].state == pb.CALL_STATE_CONNECTED
    before = await phone_of(wacall, call)
    await asyncio.sleep(0.5)
    after = await phone_of(wacall, call)
    assert after.audible_frames_received - before.audible_frames_received >= 15  # the hold tone plays
    await requests.put(None)
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
