"""Calls in contact-centre queues over gRPC, with the manual clock and the simulator's phones: the `queue` route's
hold audio heard at the phone (its pitch measured), the move to the agent's media (a `media_stream` program, an
aiortc WebRTC agent) with real audio both ways, maximum wait → overflow → the closing announcement and hang-up, an
abandoned call, an agent's dropped session re-queuing the call, the permission rules on queued and agent-initiated
calls, and users' calls answered by a queue.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from conftest import BUSINESS, OTHER_USER, USER, Running, duration, eventually, refused, wait_until
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from test_contact_center import (
    Agent,
    agent_state,
    bad_request_field,
    contact_center_events,
    put_agent,
    put_queue,
    queues_of,
    stub,
)
from test_media_routes import phone_of, tone_frame
from test_rtpengine import pitch, pitch_at
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import contact_center_model_pb2 as m
from wacall_client.v1 import contact_center_pb2 as cc

from wacall.calls.queue_route import CLOSING_TONE_HZ
from wacall.media.leg import AudioLeg
from wacall.media.tracks import ToneSource, level
from wacall.simulator.phone import PhoneCall
from wacall_adapters.webrtc import AGENT_MEDIA_ENDED

R = cc.AgentSessionRequest
RATE = 16000
HOLD_HZ = 425
USER_HZ = 880
AGENT_HZ = 300


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


async def hears(
    heard: Heard, frequency: float, *, after: int = 0, frames: int = 40, what: str = "", attempts: int = 8
) -> int:
    """Wait until the audible frames after index `after` carry `frequency` (within 5 %), and return the index after
    them. The pitch is the median of 200 ms windows, the first frames skipped (the decoder settling), so a frame the
    decoder concealed does not move it. A switch of route may leave a few frames of the previous audio queued on a
    loaded machine: a measure that does not match yet is taken again 10 frames later, `attempts` times in all."""
    measured = 0.0
    for attempt in range(attempts):
        start = after + 10 * attempt
        await eventually(lambda: len(heard.frames) >= start + frames, what=what or f"{frequency} Hz")  # noqa: B023
        span = heard.frames[start + 5 : start + frames]
        windows = [b"".join(span[i : i + 10]) for i in range(0, len(span) - 9, 10)]
        measured = statistics.median(pitch(window) for window in windows)
        if abs(measured - frequency) < frequency * 0.05:
            return len(heard.frames)
    raise AssertionError(f"{what}: heard {measured:.0f} Hz, not {frequency} Hz")


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
        audible = [f for f in self.received if level(f) > 0.05]
        span = audible[len(audible) // 4 :]  # past the switch and the decoder settling
        windows = [b"".join(span[i : i + 10]) for i in range(0, len(span) - 9, 10)]
        measured = statistics.median(pitch_at(window, RATE) for window in windows)
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
    await hears(ear, HOLD_HZ, what="hold audio")
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
    switched = len(ear.frames)
    program = AgentProgram(wacall, call.call_id)
    try:
        # The agent's voice at the phone, the user's at the program; the same platform leg all along.
        await hears(ear, AGENT_HZ, after=switched + 10, what="the agent at the phone")
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


class Arrivals:
    """When each frame (audible or not) reached the phone: the longest pause in the media, in frames."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, frame: bytes) -> None:
        self.times.append(time.monotonic())

    def longest_pause_frames(self, since: float) -> float:
        times = [t for t in self.times if t >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0) / 0.02


async def test_a_webrtc_agent_takes_a_queued_call_and_audio_flows_both_ways_without_a_pause_at_the_phone(
    wacall: Running,
) -> None:
    await put_queue(wacall, hold_audio=m.HoldAudio(tone_hz=HOLD_HZ))
    await put_agent(wacall, "bob")
    call = await queue_call(wacall)
    ear = await phone_ear(wacall, call.platform_call_id)
    arrivals = Arrivals()
    platform = wacall.service.platform
    assert platform is not None
    leg = platform.calls[call.platform_call_id].leg
    assert leg is not None and leg.consumer is not None
    leg.consumer.handlers.append(arrivals)
    await hears(ear, HOLD_HZ, what="hold audio")

    bob = await signed_in(wacall, "bob")
    offer = await bob.offer()
    agent_ear = Heard()
    agent = AudioLeg(name="agent", source=ToneSource(AGENT_HZ, amplitude=0.3), handlers=[agent_ear])
    try:
        accepted_at = time.monotonic()
        bob.send(
            R(accept=R.Accept(offer_id=offer.offer_id, webrtc=R.WebRtcMedia(offer_sdp=await agent.create_offer())))
        )
        connected = (await until(bob, "connected")).connected
        assert connected.call_id == call.call_id and "a=fingerprint:sha-256" in connected.webrtc_answer_sdp
        switched = len(ear.frames)
        await agent.apply_answer(connected.webrtc_answer_sdp)

        await hears(ear, AGENT_HZ, after=switched + 10, what="the WebRTC agent at the phone")
        await hears(agent_ear, USER_HZ, what="the user at the WebRTC agent")
        rerouted = await wacall.get_call(call.call_id)
        assert rerouted.route == "webrtc" and rerouted.platform_call_id == call.platform_call_id
        # The media reaching the phone never paused for more than a few frames across the move.
        pause = arrivals.longest_pause_frames(accepted_at)
        print(f"longest pause at the phone across the move to a WebRTC agent: {pause:.1f} frames")
        assert pause < 10, f"the phone heard nothing for {pause:.1f} frames"
        # Hung up from the page while its audio still runs (closing the audio first would end the call itself).
        bob.send(R(hang_up=R.HangUp(call_id=call.call_id)))
        ended = (await until(bob, "call_ended")).call_ended
    finally:
        await agent.close()
    assert ended.call_id == call.call_id and ended.outcome == pb.CALL_OUTCOME_ANSWERED
    assert (await wacall.get_call(call.call_id)).end_reason == "hung up by the agent"
    bob.close()


async def test_a_webrtc_agent_whose_media_goes_away_mid_call_ends_the_call_instead_of_leaving_silence(
    wacall: Running,
) -> None:
    # The agent's tab is closed or reloaded during the call: its peer connection closes.
    await put_queue(wacall, hold_audio=m.HoldAudio(tone_hz=HOLD_HZ))
    await put_agent(wacall, "bob")
    call = await queue_call(wacall)
    bob = await signed_in(wacall, "bob")
    offer = await bob.offer()
    agent = AudioLeg(name="agent", source=ToneSource(AGENT_HZ, amplitude=0.3), handlers=[Heard()])
    try:
        bob.send(
            R(accept=R.Accept(offer_id=offer.offer_id, webrtc=R.WebRtcMedia(offer_sdp=await agent.create_offer())))
        )
        connected = (await until(bob, "connected")).connected
        await agent.apply_answer(connected.webrtc_answer_sdp)
        ear = await phone_ear(wacall, call.platform_call_id)
        await hears(ear, AGENT_HZ, what="the WebRTC agent at the phone")
    finally:
        await agent.close()
    ended = (await until(bob, "call_ended")).call_ended
    assert ended.call_id == call.call_id and ended.outcome == pb.CALL_OUTCOME_ANSWERED
    assert (await wacall.get_call(call.call_id)).end_reason == AGENT_MEDIA_ENDED
    # Still signed in: the agent is free for the next call.
    assert (await until(bob, "presence")).presence.state == m.AGENT_PRESENCE_AVAILABLE
    bob.close()


async def test_a_stream_dropped_while_its_accept_moves_the_media_still_hands_the_call_to_the_agent(
    wacall: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put_queue(wacall, hold_audio=m.HoldAudio(tone_hz=HOLD_HZ))
    await put_agent(wacall, "ann")
    queues = queues_of(wacall)
    connect_agent = queues.connect_agent
    release = asyncio.Event()

    async def slow(*args: Any) -> str:  # an agent's media that takes a while to attach (a WebRTC offer, say)
        await release.wait()
        return await connect_agent(*args)

    monkeypatch.setattr(queues, "connect_agent", slow)
    call = await queue_call(wacall)
    ann = await signed_in(wacall, "ann")
    ann.accept((await ann.offer()).offer_id)
    await eventually(lambda: call.call_id in queues.state.assigned, what="the accept committed")
    ann.call.cancel()  # the agent's client drops mid-accept
    await eventually(lambda: "ann" not in queues.sessions, what="the session closed")
    release.set()
    # The call went to the agent's media, not back to hold audio in no queue with no one to take it.
    await wait_until(lambda: wacall.get_call(call.call_id), lambda moved: moved.route == "media_stream")


async def test_waiting_calls_cost_the_store_no_transaction_each_while_nothing_happens(wacall: Running) -> None:
    # The contact centre watches its calls' ends in one transaction per wake, not one per call per wake: idle, the
    # store's transactions do not grow with the number of waiting calls.
    await put_queue(wacall, hold_audio=m.HoldAudio(tone_hz=HOLD_HZ))
    queues = queues_of(wacall)
    store = wacall.service.store
    assert store is not None
    transaction = store.transaction
    count = 0
    users: list[str] = []

    async def counted(fn: Any) -> Any:
        nonlocal count
        count += 1
        return await transaction(fn)

    async def idle_transactions(waiting: int) -> int:
        nonlocal count
        while len(users) < waiting:
            users.append(f"+3461234{5600 + len(users)}")
            await queue_call(wacall, user=users[-1])
        await eventually(lambda: len(queues.state.waiting) == waiting, what="the calls queued")
        await asyncio.sleep(1.0)  # the phones' answers settle
        count = 0
        await asyncio.sleep(3.0)
        return count

    store.transaction = counted  # type: ignore[method-assign]
    try:
        few = await idle_transactions(2)
        many = await idle_transactions(8)
    finally:
        store.transaction = transaction  # type: ignore[method-assign]
    print(f"store transactions in 3 s idle: {few} with 2 calls waiting, {many} with 8")
    assert many - few < 6, (few, many)  # a transaction per call per second would add at least 18


async def test_an_agent_media_that_cannot_be_attached_ends_the_call_with_the_reason(wacall: Running) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    call = await queue_call(wacall)
    ann = await signed_in(wacall, "ann")
    offer = await ann.offer()
    ann.send(R(accept=R.Accept(offer_id=offer.offer_id, webrtc=R.WebRtcMedia(offer_sdp="v=0\r\n"))))
    error = (await until(ann, "error")).error
    assert error.code == "media_failed" and "SDP offer" in error.message
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.end_reason.startswith("the agent's media failed")
    assert (await until(ann, "call_ended")).call_ended.call_id == call.call_id
    ann.close()


# --- maximum wait, abandoned calls, dropped sessions ----------------------------------------------------------------


async def test_a_caller_waiting_the_maximum_overflows_then_hears_the_closing_announcement_and_is_hung_up(
    wacall: Running,
) -> None:
    await put_queue(wacall, "billing", hold_audio=m.HoldAudio(tone_hz=500), max_wait=duration(120))
    await put_queue(
        wacall, "sales", hold_audio=m.HoldAudio(tone_hz=HOLD_HZ), max_wait=duration(60), overflow_queue_id="billing"
    )
    call = await queue_call(wacall)
    ear = await phone_ear(wacall, call.platform_call_id)
    await hears(ear, HOLD_HZ, what="the first queue's hold audio")

    await wacall.advance(59)
    assert await waiting(wacall, "sales") == 1  # not yet
    await wacall.advance(2)
    await wait_until(lambda: waiting(wacall, "billing"), lambda n: n == 1)
    assert await waiting(wacall, "sales") == 0
    mark = len(ear.frames)
    await hears(ear, 500, after=mark + 10, what="the overflow queue's hold audio")

    await wacall.advance(121)
    mark = len(ear.frames)
    await hears(ear, CLOSING_TONE_HZ, after=mark + 10, frames=30, what="the closing announcement")
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED and ended.end_reason == "announcement finished"
    kinds = [e.kind for e in await contact_center_events(wacall)]
    assert pb.EVENT_KIND_CALL_OVERFLOWED in kinds and pb.EVENT_KIND_QUEUE_TIMED_OUT in kinds
    assert await waiting(wacall, "billing") == 0


async def test_a_caller_who_hangs_up_while_waiting_is_abandoned_and_offered_to_no_one(wacall: Running) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    call = await queue_call(wacall)
    await wait_until(lambda: waiting(wacall), lambda n: n == 1)
    await wacall.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id), metadata=wacall.metadata)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    stats = await wait_until(
        lambda: stub(wacall).GetQueueStats(cc.GetQueueStatsRequest(queue_id="sales"), metadata=wacall.metadata),
        lambda s: s.abandoned == 1,
    )
    assert stats.waiting == 0
    ann = await signed_in(wacall, "ann")
    await ann.quiet()
    ann.close()


async def test_an_agent_whose_session_drops_while_offered_passes_the_call_to_another_who_gets_the_audio(
    wacall: Running,
) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    await put_agent(wacall, "bob")
    ann = await signed_in(wacall, "ann")
    call = await queue_call(wacall)
    assert (await ann.offer()).call_id == call.call_id
    bob = await signed_in(wacall, "bob")
    await bob.quiet()  # the call is ringing for ann
    ann.close()  # ann's softphone goes away: OFFLINE, and the call goes to the next agent
    offer = await bob.offer()
    assert offer.call_id == call.call_id
    assert (await agent_state(wacall, "ann")).presence == m.AGENT_PRESENCE_OFFLINE
    ear = await phone_ear(wacall, call.platform_call_id)
    bob.accept(offer.offer_id)
    await until(bob, "connected")
    mark = len(ear.frames)
    program = AgentProgram(wacall, call.call_id)
    try:
        await hears(ear, AGENT_HZ, after=mark + 10, what="bob at the phone")
        await program.hears(USER_HZ)
    finally:
        await program.stop()
    bob.close()


# --- the permission rules, and routes that name nothing ---------------------------------------------------------


async def test_a_business_call_through_a_queue_obeys_the_permission_rules(wacall: Running) -> None:
    await put_queue(wacall)
    await wacall.phone(tone_hz=USER_HZ)
    error = await refused(wacall.start_call(route=pb.Route(queue=pb.QueueRoute(queue_id="sales"))))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION  # no permission to call this user
    assert not (await wacall.calling.ListCalls(pb.ListCallsRequest(), metadata=wacall.metadata)).calls
    assert await waiting(wacall) == 0
    assert pb.EVENT_KIND_CALL_QUEUED not in [e.kind for e in await contact_center_events(wacall)]

    call = await queue_call(wacall)  # with permission
    await wait_until(lambda: waiting(wacall), lambda n: n == 1)
    assert (await wacall.get_call(call.call_id)).route == "queue"


async def test_a_queue_route_naming_no_queue_or_with_bad_fields_is_refused_and_nothing_is_recorded(
    wacall: Running,
) -> None:
    await wacall.grant(permanent=True)
    error = await refused(wacall.start_call(route=pb.Route(queue=pb.QueueRoute(queue_id="nowhere"))))
    assert error.code() is grpc.StatusCode.NOT_FOUND and "no queue 'nowhere'" in (error.details() or "")
    violation = precondition(error)
    assert violation.type == "UNKNOWN_QUEUE" and violation.subject == "route.queue.queue_id"
    for route, field in (
        (pb.QueueRoute(queue_id="no spaces"), "route.queue.queue_id"),
        (pb.QueueRoute(queue_id=""), "route.queue.queue_id"),
        (pb.QueueRoute(queue_id="sales", priority=5000), "route.queue.priority"),
    ):
        error = await refused(wacall.start_call(route=pb.Route(queue=route)))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and bad_request_field(error) == field
    assert not (await wacall.calling.ListCalls(pb.ListCallsRequest(), metadata=wacall.metadata)).calls


# --- agent-initiated calls -----------------------------------------------------------------------------------------


async def test_an_agent_places_a_call_within_the_permission_rules_and_is_busy_for_its_duration(
    wacall: Running,
) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    await put_agent(wacall, "bob")
    ann = await signed_in(wacall, "ann")
    await wacall.phone(tone_hz=USER_HZ)
    by_ann = pb.Route(agent=pb.AgentRoute(agent_id="ann"))

    # Refused by the rules (no permission): nothing recorded, ann as she was.
    error = await refused(wacall.start_call(route=by_ann))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert (await agent_state(wacall, "ann")).presence == m.AGENT_PRESENCE_AVAILABLE
    assert not (await wacall.calling.ListCalls(pb.ListCallsRequest(), metadata=wacall.metadata)).calls
    await ann.quiet()

    # An agent who is not signed in cannot place calls; one that does not exist is not found.
    await wacall.grant(permanent=True)
    error = await refused(wacall.start_call(route=pb.Route(agent=pb.AgentRoute(agent_id="bob"))))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION and precondition(error).type == "AGENT_NOT_READY"
    error = await refused(wacall.start_call(route=pb.Route(agent=pb.AgentRoute(agent_id="nobody"))))
    assert error.code() is grpc.StatusCode.NOT_FOUND and precondition(error).subject == "route.agent.agent_id"

    # Allowed: ann is BUSY for the call, and talks with the user through her program.
    call = await wacall.start_call(route=by_ann)
    assert call.route == "agent"
    busy = (await ann.expect("presence")).presence
    assert busy.state == m.AGENT_PRESENCE_BUSY
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    ear = await phone_ear(wacall, call.platform_call_id)
    program = AgentProgram(wacall, call.call_id)
    try:
        await hears(ear, AGENT_HZ, after=5, what="ann at the phone")
        await program.hears(USER_HZ)
        # A caller in ann's queue is not offered to her while she is on her own call.
        await queue_call(wacall, user=OTHER_USER)
        await ann.quiet()
    finally:
        await program.stop()
    ann.send(R(hang_up=R.HangUp(call_id=call.call_id)))
    assert (await until(ann, "call_ended")).call_ended.call_id == call.call_id
    assert (await wacall.get_call(call.call_id)).end_reason == "hung up by the agent"
    # Free again, she is offered the waiting caller.
    assert (await until(ann, "offer")).offer.customer_number == OTHER_USER
    ann.close()


async def test_an_agent_places_a_call_from_a_webrtc_softphone_and_hears_the_user(wacall: Running) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    ann = await signed_in(wacall, "ann")
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=USER_HZ)
    agent_ear = Heard()
    agent = AudioLeg(name="agent", source=ToneSource(AGENT_HZ, amplitude=0.3), handlers=[agent_ear])
    try:
        offer_sdp = await agent.create_offer()
        call = await wacall.start_call(route=pb.Route(agent=pb.AgentRoute(agent_id="ann", offer_sdp=offer_sdp)))
        assert call.route == "agent" and "a=fingerprint:sha-256" in call.webrtc_answer_sdp
        await agent.apply_answer(call.webrtc_answer_sdp)
        assert (await ann.expect("presence")).presence.state == m.AGENT_PRESENCE_BUSY
        await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
        ear = await phone_ear(wacall, call.platform_call_id)
        await hears(ear, AGENT_HZ, after=5, what="ann's softphone at the phone")
        await hears(agent_ear, USER_HZ, what="the user at ann's softphone")
    finally:
        await agent.close()
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), metadata=wacall.metadata)
    assert (await until(ann, "call_ended")).call_ended.outcome == pb.CALL_OUTCOME_ANSWERED
    ann.close()


# --- users' calls ---------------------------------------------------------------------------------------------------


async def user_call(wacall: Running) -> tuple[sim_pb.PhoneCall, pb.Call]:
    await wacall.phone(tone_hz=USER_HZ)
    phone = await wacall.sim.PlaceUserCall(
        sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER), metadata=wacall.metadata
    )
    calls = await wait_until(
        lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER), metadata=wacall.metadata),
        lambda r: len(r.calls) == 1,
    )
    return phone, calls.calls[0]


async def test_a_users_call_to_a_queue_is_answered_at_once_and_taken_by_an_agent(make_service: Any) -> None:
    wacall: Running = await make_service(inbound_route="queue:sales")
    await put_queue(wacall, hold_audio=m.HoldAudio(tone_hz=HOLD_HZ))  # created after the start: found at the call
    await put_agent(wacall, "ann")
    phone, call = await user_call(wacall)
    assert call.route == "queue" and call.direction == pb.CALL_DIRECTION_USER_INITIATED
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    ear = await phone_ear(wacall, phone.platform_call_id)
    await hears(ear, HOLD_HZ, what="hold audio on a user's call")
    await wait_until(lambda: waiting(wacall), lambda n: n == 1)

    ann = await signed_in(wacall, "ann")
    offer = await ann.offer()
    assert offer.call_id == call.call_id and offer.customer_number == USER and offer.business_number == BUSINESS
    ann.accept(offer.offer_id)
    await until(ann, "connected")
    mark = len(ear.frames)
    program = AgentProgram(wacall, call.call_id)
    try:
        await hears(ear, AGENT_HZ, after=mark + 10, what="ann at the phone")
        await program.hears(USER_HZ)
    finally:
        await program.stop()
    ann.close()


async def test_a_users_call_to_a_business_number_whose_queue_does_not_exist_is_ended_with_the_reason_evented(
    make_service: Any,
) -> None:
    # The announcement answers other business numbers; this one's users' calls go to a queue nobody created.
    wacall: Running = await make_service(inbound_routes=((BUSINESS, "queue:nowhere"),))
    _, call = await user_call(wacall)
    assert call.route == "queue"
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.end_reason == "no queue 'nowhere'"
    missing = [e for e in await contact_center_events(wacall) if e.kind == pb.EVENT_KIND_QUEUE_MISSING]
    assert len(missing) == 1 and missing[0].contact_center.call_id == call.call_id
