"""Calls in contact-centre queues over gRPC, with the manual clock and the simulator's phones: the `queue` route's
hold audio heard at the phone (its pitch measured), the move to the agent's media (a `media_stream` program, an
aiortc WebRTC agent) with real audio both ways, maximum wait → overflow → the closing announcement and hang-up, an
abandoned call, an agent's dropped session re-queuing the call, the permission rules on queued and agent-initiated
calls, and users' calls answered by a queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from conftest import BUSINESS, USER, Running, eventually, refused, wait_until
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from test_contact_center import Agent, agent_state, contact_center_events, put_agent, put_queue, queues_of, stub
from test_media_routes import phone_of, tone_frame
from test_rtpengine import pitch, pitch_at
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import contact_center_model_pb2 as m
from wacall_client.v1 import contact_center_pb2 as cc

from wacall.media.leg import AudioLeg
from wacall.media.tracks import FRAME_BYTES, ToneSource, level
from wacall.simulator.phone import PhoneCall

R = cc.AgentSessionRequest
RATE = 16000
HOLD_HZ = 425
USER_HZ = 880
AGENT_HZ = 300
SECOND_USER = "+447700900456"


# --- measuring audio -----------------------------------------------------------------------------------------------


class Heard:
    """The audible 20 ms frames a leg hears, in order, from the moment it is attached."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def __call__(self, frame: bytes) -> None:
        if level(frame) > 0.05:
            self.frames.append(frame)

    def since(self, index: int) -> bytes:
        return b"".join(self.frames[index:])


async def phone_ear(wacall: Running, platform_call_id: str) -> Heard:
    """What the simulated user's phone hears from now on."""
    platform = wacall.service.platform
    assert platform is not None

    def consumer_ready() -> bool:
        call: PhoneCall | None = platform.calls.get(platform_call_id)
        return call is not None and call.leg is not None and call.leg.consumer is not None

    await eventually(consumer_ready, what="the phone's incoming audio")
    leg = platform.calls[platform_call_id].leg
    assert leg is not None and leg.consumer is not None
    heard = Heard()
    leg.consumer.handlers.append(heard)
    return heard


async def hears(heard: Heard, frequency: float, *, after: int = 0, frames: int = 40, what: str = "") -> int:
    """Wait until `frames` audible frames arrived after index `after`, then check their pitch (within 5 %); the
    index after them."""
    await eventually(lambda: len(heard.frames) >= after + frames, what=what or f"{frequency} Hz")
    # Skip the first frames: the switch from the previous audio, and the decoder settling.
    measured = pitch(heard.since(after + 5)[: (frames - 5) * FRAME_BYTES])
    assert abs(measured - frequency) < frequency * 0.05, f"{what}: heard {measured:.0f} Hz, not {frequency} Hz"
    return len(heard.frames)


# --- a media_stream agent's program --------------------------------------------------------------------------------


class AgentProgram:
    """An agent's program on CallMedia: talks a tone at 16 kHz and keeps what it hears."""

    def __init__(self, wacall: Running, call_id: str, tone_hz: float = AGENT_HZ) -> None:
        self.received: list[bytes] = []
        self.updates: list[pb.Call] = []
        self._outgoing: asyncio.Queue[pb.CallMediaRequest | None] = asyncio.Queue()
        self._outgoing.put_nowait(pb.CallMediaRequest(call_id=call_id, sample_rate=RATE))
        self._listener = asyncio.create_task(self._listen(wacall))
        self._talker = asyncio.create_task(self._talk(tone_hz))

    async def _requests(self) -> AsyncIterator[pb.CallMediaRequest]:
        while (item := await self._outgoing.get()) is not None:
            yield item

    async def _talk(self, tone_hz: float) -> None:
        for index in range(100_000):
            await self._outgoing.put(pb.CallMediaRequest(audio=tone_frame(RATE, tone_hz, index)))
            await asyncio.sleep(0.02)

    async def _listen(self, wacall: Running) -> None:
        async for message in wacall.calling.CallMedia(self._requests(), metadata=wacall.metadata):
            if message.WhichOneof("kind") == "audio":
                self.received.append(message.audio)
            else:
                self.updates.append(message.call)

    async def hears(self, frequency: float) -> None:
        await eventually(lambda: sum(level(f) > 0.05 for f in self.received) > 40, what="the user at the program")
        audible = b"".join(f for f in self.received if level(f) > 0.05)
        measured = pitch_at(audible[len(audible) // 2 :], RATE)
        assert abs(measured - frequency) < frequency * 0.05, f"the program heard {measured:.0f} Hz"

    async def stop(self) -> None:
        """Leave the call's audio (the call goes on)."""
        self._talker.cancel()
        self._listener.cancel()
        await asyncio.gather(self._talker, self._listener, return_exceptions=True)


# --- helpers ---------------------------------------------------------------------------------------------------------


def precondition(error: grpc.aio.AioRpcError) -> error_details_pb2.PreconditionFailure.Violation:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    failure = error_details_pb2.PreconditionFailure()
    assert next(d for d in status.details if d.Is(failure.DESCRIPTOR)).Unpack(failure)
    return failure.violations[0]


async def queue_call(wacall: Running, queue_id: str = "sales", user: str = USER, priority: int = 0) -> pb.Call:
    """A business call through the queue route, answered by the user's phone (which speaks 880 Hz)."""
    await wacall.grant(user=user, permanent=True)
    await wacall.phone(user=user, tone_hz=USER_HZ)
    call = await wacall.start_call(user=user, route=pb.Route(queue=pb.QueueRoute(queue_id=queue_id, priority=priority)))
    assert call.route == "queue"
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    return call


async def waiting(wacall: Running, queue_id: str = "sales") -> int:
    stats = await stub(wacall).GetQueueStats(cc.GetQueueStatsRequest(queue_id=queue_id), metadata=wacall.metadata)
    return stats.waiting


async def until(agent: Agent, kind: str) -> cc.AgentSessionEvent:
    """The agent's next event of `kind`, past presence changes (BUSY at an accept, wrap-up...)."""
    while (event := await agent.next()).WhichOneof("kind") != kind:
        assert event.WhichOneof("kind") == "presence", f"{agent.agent_id} expected {kind}, got:\n{event}"
    return event


async def signed_in(wacall: Running, agent_id: str) -> Agent:
    agent = Agent(wacall, agent_id)
    await agent.sign_in()
    return agent


# --- hold audio, then the agent ------------------------------------------------------------------------------------


async def test_a_queued_caller_hears_hold_audio_then_a_media_stream_agent_with_audio_both_ways(
    wacall: Running,
) -> None:
    await put_queue(wacall, hold_audio=m.HoldAudio(tone_hz=HOLD_HZ))
    await put_agent(wacall, "ann")
    call = await queue_call(wacall)
    ear = await phone_ear(wacall, call.platform_call_id)

    # Waiting: the queue's hold tone at the phone, and the call in the queue.
    heard = await hears(ear, HOLD_HZ, what="hold audio")
    await eventually(lambda: call.call_id in queues_of(wacall).state.waiting, what="the call queued")
    assert await waiting(wacall) == 1
    platform_leg = wacall.service.calls.sessions[call.call_id].platform  # type: ignore[union-attr]

    # An agent signs in, is offered the call, and takes it with its program.
    ann = await signed_in(wacall, "ann")
    offer = await ann.offer()
    assert offer.call_id == call.call_id and offer.customer_number == USER and offer.queue_id == "sales"
    before = await phone_of(wacall, call)
    ann.accept(offer.offer_id)
    connected = (await until(ann, "connected")).connected
    assert connected.call_id == call.call_id and connected.webrtc_answer_sdp == ""
    program = AgentProgram(wacall, call.call_id)
    try:
        # The agent's voice at the phone, the user's at the program; the same platform leg all along.
        await hears(ear, AGENT_HZ, after=heard + 50, what="the agent at the phone")
        await program.hears(USER_HZ)
        rerouted = await wacall.get_call(call.call_id)
        assert rerouted.route == "media_stream" and rerouted.state == pb.CALL_STATE_CONNECTED
        assert wacall.service.calls.sessions[call.call_id].platform is platform_leg  # type: ignore[union-attr]
        # The media never stopped: at least as many frames reached the phone as 20 ms steps went by, less a few.
        after_one_second = await wait_until(
            lambda: phone_of(wacall, call), lambda p: p.frames_received >= before.frames_received + 50, 10
        )
        assert after_one_second.state == "connected"
    finally:
        await program.stop()
    assert await waiting(wacall) == 0
    ann.close()
