"""The `CallActions` hook the routes install: an accepted call's media moves from hold to the agent.

The actions here are the smallest real ones (an accepted call is rerouted from its hold announcement to a
media_stream route the agent's program attaches to with `CallMedia`); the `queue` route installs its own. Real
audio both ways, measured: the agent hears the user's 880 Hz, the user's phone hears the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from conftest import Running, duration, eventually, wait_until
from test_contact_center import Agent, put_agent, put_queue, queues_of
from test_media_routes import phone_of, tone_frame
from test_rtpengine import pitch_at
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import contact_center_model_pb2 as m
from wacall_client.v1 import contact_center_pb2 as cc

from wacall.calls.service import CallService
from wacall.media.tracks import level
from wacall.queues.actions import AgentMedia, AgentMediaFailed, MediaStreamAgentMedia, end_call
from wacall.queues.router import Assigned, Overflowed, QueueGone, QueueTimedOut
from wacall_adapters.registry import plan_route
from wacall_adapters.routes import ServerFiles

R = cc.AgentSessionRequest
RATE = 16000


class RerouteToMediaStream:
    """Accepted calls move to a media_stream route; a WebRTC agent is refused (these actions bridge no browser)."""

    def __init__(self, calls: CallService, directory: Path) -> None:
        self.calls = calls
        self.files = ServerFiles(media_dir=str(directory), recordings_dir=str(directory))

    async def connect_agent(self, assigned: Assigned, media: AgentMedia) -> str:
        if not isinstance(media, MediaStreamAgentMedia):
            raise AgentMediaFailed("this service bridges no WebRTC agents")
        plan = await plan_route(pb.Route(media_stream=pb.MediaStreamRoute()), self.files)
        await self.calls.reroute(assigned.call_id, plan)
        return ""

    async def queue_timed_out(self, decision: QueueTimedOut) -> None:
        await end_call(self.calls, decision.call_id, "queue timed out")

    async def queue_gone(self, decision: QueueGone) -> None:
        await end_call(self.calls, decision.call_id, "no such queue")

    async def overflowed(self, decision: Overflowed) -> None:
        return None


async def on_hold(wacall: Running) -> pb.Call:
    """A connected call whose user speaks 880 Hz, on a long announcement (hold audio), in queue `sales`."""
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    hold = pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(600), max_duration=duration(600))
    call = await wacall.start_call(route=pb.Route(announcement=hold))
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    await queues_of(wacall).enqueue(call.call_id, "sales")
    return call


async def test_an_accepted_call_moves_from_hold_to_the_agents_media_stream_with_audio_both_ways(
    wacall: Running, tmp_path: Path
) -> None:
    assert wacall.service.calls is not None
    queues_of(wacall).set_call_actions(RerouteToMediaStream(wacall.service.calls, tmp_path))
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    ann = Agent(wacall, "ann")
    await ann.sign_in()
    call = await on_hold(wacall)
    await wait_until(lambda: phone_of(wacall, call), lambda p: p.audible_frames_received > 20, 10)  # hold audio
    offer = await ann.offer()
    ann.accept(offer.offer_id)
    assert (await ann.expect("presence")).presence.state == m.AGENT_PRESENCE_BUSY
    connected = await ann.expect("connected")
    assert connected.connected.call_id == call.call_id
    assert (await wacall.get_call(call.call_id)).route == "media_stream"

    # The agent's program attaches with the call id, talks (300 Hz) and listens.
    before = await phone_of(wacall, call)
    outgoing: asyncio.Queue[pb.CallMediaRequest | None] = asyncio.Queue()
    outgoing.put_nowait(pb.CallMediaRequest(call_id=call.call_id, sample_rate=RATE))
    heard: list[bytes] = []

    async def requests() -> AsyncIterator[pb.CallMediaRequest]:
        while (item := await outgoing.get()) is not None:
            yield item

    async def talk() -> None:
        for index in range(10_000):
            outgoing.put_nowait(pb.CallMediaRequest(audio=tone_frame(RATE, 300, index)))
            await asyncio.sleep(0.02)

    async def listen() -> None:
        async for message in wacall.calling.CallMedia(requests(), metadata=wacall.metadata):
            if message.WhichOneof("kind") == "audio" and level(message.audio) > 0.05:
                heard.append(message.audio)

    listener, talker = asyncio.create_task(listen()), asyncio.create_task(talk())
    await eventually(lambda: len(heard) > 40, what="the user's voice at the agent")
    assert abs(pitch_at(b"".join(heard[-20:]), RATE) - 880) < 30
    await wait_until(
        lambda: phone_of(wacall, call), lambda p: p.audible_frames_received > before.audible_frames_received + 40, 10
    )

    # The agent hangs up from its session: the call ends answered and the agent is free again.
    ann.send(R(hang_up=R.HangUp(call_id=call.call_id)))
    ended = await ann.expect("call_ended")
    assert ended.call_ended.outcome == pb.CALL_OUTCOME_ANSWERED
    assert (await ann.expect("presence")).presence.state == m.AGENT_PRESENCE_AVAILABLE
    talker.cancel()
    outgoing.put_nowait(None)
    await asyncio.gather(talker, listener, return_exceptions=True)
    ann.close()


async def test_media_the_route_cannot_attach_is_an_error_and_the_call_ends(wacall: Running, tmp_path: Path) -> None:
    assert wacall.service.calls is not None
    queues_of(wacall).set_call_actions(RerouteToMediaStream(wacall.service.calls, tmp_path))
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    ann = Agent(wacall, "ann")
    await ann.sign_in()
    call = await on_hold(wacall)
    offer = await ann.offer()
    ann.send(R(accept=R.Accept(offer_id=offer.offer_id, webrtc=R.WebRtcMedia(offer_sdp="v=0\r\n"))))
    assert (await ann.expect("presence")).presence.state == m.AGENT_PRESENCE_BUSY
    error = await ann.expect("error")
    assert error.error.code == "media_failed" and "WebRTC" in error.error.message
    await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert (await ann.expect("call_ended")).call_ended.call_id == call.call_id
    assert (await ann.expect("presence")).presence.state == m.AGENT_PRESENCE_AVAILABLE
    ann.close()
