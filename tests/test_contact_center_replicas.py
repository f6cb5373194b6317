"""Queues and agents across replicas: an agent whose session is on one replica is offered, and takes, a call whose
media another replica owns. The router state is shared; each replica follows the others' decisions in the event log
and acts on what it holds (agents' sessions, calls' media); an accept for a call owned elsewhere has its media moved
by the owner (`wacall.internal.v1.ReplicaService`).

Two services in this process on one SQLite file (each with its own embedded simulator: the owner's platform places
the call and its phone is measured); two on one real PostgreSQL for the race between agents on two replicas; and two
`wacall serve` processes on PostgreSQL sharing a standalone simulator, an agent on one taking the other's call.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from conftest import (
    BUSINESS,
    OTHER_USER,
    USER,
    Running,
    duration,
    eventually,
    refused,
    settings_for,
    start_service,
    stop_service,
    wait_until,
)
from google.protobuf.duration_pb2 import Duration
from postgres_server import PostgresServer
from test_contact_center import Agent, contact_center_events, put_agent, put_queue, queues_of
from test_queue_calls import AGENT_HZ, HOLD_HZ, USER_HZ, Heard, hears, phone_ear, queue_call, until
from test_rtpengine import pitch_at
from test_sim_standalone import free_port, start, webhook_url
from wacall_client.internal.v1 import replicas_pb2 as rp
from wacall_client.internal.v1 import replicas_pb2_grpc
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc, contact_center_pb2_grpc
from wacall_client.v1 import contact_center_model_pb2 as m
from wacall_client.v1 import contact_center_pb2 as cc

from wacall.calls.queue_route import CLOSING_TONE_HZ
from wacall.media.leg import AudioLeg
from wacall.media.tracks import ToneSource
from wacall.queues import service as service_module
from wacall.store import Pair, Tx

R = cc.AgentSessionRequest
TOKEN = "a-token-both-replicas-know"


async def two_replicas(tmp_path: Path, db: str) -> tuple[Running, Running]:
    a = await start_service(settings_for(tmp_path, db=db, auth_token=TOKEN, instance_name="a"))
    try:
        b = await start_service(
            settings_for(tmp_path, db=db, auth_token=TOKEN, instance_name="b", sim_state=str(tmp_path / "b.json"))
        )
    except BaseException:
        await stop_service(a)
        raise
    return a, b


async def stop_replicas(a: Running, b: Running) -> None:
    # a first: the loop's default executor is the last started service's (b's), which a's store still uses to close.
    await stop_service(a)
    await stop_service(b)


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Running, Running]]:
    """Replica `a` places the calls (it owns their media); agents sign in on `b`."""
    a, b = await two_replicas(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")
    try:
        yield a, b
    finally:
        await stop_replicas(a, b)


async def signed_in(replica: Running, agent_id: str) -> Agent:
    agent = Agent(replica, agent_id)
    await agent.sign_in()
    return agent


def media_holder(replica: Running, call_id: str) -> bool:
    assert replica.service.calls is not None
    return call_id in replica.service.calls.sessions


async def test_an_offer_made_on_the_owner_reaches_an_agent_on_the_other_replica_who_takes_the_call_over_webrtc(
    replicas: tuple[Running, Running],
) -> None:
    a, b = replicas
    await put_queue(a, hold_audio=m.HoldAudio(tone_hz=HOLD_HZ))
    await put_agent(b, "bob")
    bob = await signed_in(b, "bob")
    call = await queue_call(a)  # enqueued on a, where its media runs
    ear = await phone_ear(a, call.platform_call_id)
    await hears(ear, HOLD_HZ, what="hold audio")

    offer = await bob.offer()
    assert (offer.call_id, offer.queue_id) == (call.call_id, "sales")
    assert offer.customer_number == call.user_number and offer.expires_in.ToTimedelta() > timedelta(0)

    agent_ear = Heard()
    agent = AudioLeg(name="agent", source=ToneSource(AGENT_HZ, amplitude=0.3), handlers=[agent_ear])
    try:
        bob.send(
            R(accept=R.Accept(offer_id=offer.offer_id, webrtc=R.WebRtcMedia(offer_sdp=await agent.create_offer())))
        )
        connected = (await until(bob, "connected")).connected
        assert connected.call_id == call.call_id and "a=fingerprint:sha-256" in connected.webrtc_answer_sdp
        switched = len(ear.frames)
        await agent.apply_answer(connected.webrtc_answer_sdp)
        # The customer hears the agent and the agent the customer, through the owner's bridge.
        await hears(ear, AGENT_HZ, after=switched + 10, what="the agent on b at the phone on a")
        await hears(agent_ear, USER_HZ, what="the user at the agent")
        assert media_holder(a, call.call_id) and not media_holder(b, call.call_id)
        assert (await b.get_call(call.call_id)).route == "webrtc"
    finally:
        await agent.close()

    # The agent hangs up on b: the owner ends the call (the forwarded EndCall) and the agent is free again.
    bob.send(R(hang_up=R.HangUp(call_id=call.call_id)))
    ended = (await until(bob, "call_ended")).call_ended
    assert ended.call_id == call.call_id and ended.outcome == pb.CALL_OUTCOME_ANSWERED
    assert (await bob.expect("presence")).presence.state == m.AGENT_PRESENCE_AVAILABLE
    # The owner lets the media go once it has the end (the router may tell the agent first).
    await eventually(lambda: not media_holder(a, call.call_id), what="the owner releasing the call's media")
    phone_call = sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id)
    phone = await wait_until(lambda: a.sim.GetPhoneCall(phone_call, metadata=a.metadata), lambda p: p.state == "ended")
    assert phone.state == "ended"
    await bob.quiet()  # nothing twice: every decision reached the session once
    bob.close()


async def test_a_media_stream_agent_on_the_other_replica_gets_the_call_and_the_owner_moves_it_only_for_that_agent(
    replicas: tuple[Running, Running],
) -> None:
    a, b = replicas
    await put_queue(a, hold_audio=m.HoldAudio(tone_hz=HOLD_HZ))
    await put_agent(a, "ann")
    ann = await signed_in(b, "ann")
    call = await queue_call(a)
    offer = await ann.offer()
    ann.accept(offer.offer_id)
    connected = (await until(ann, "connected")).connected
    assert connected.call_id == call.call_id and connected.webrtc_answer_sdp == ""
    assert (await a.get_call(call.call_id)).route == "media_stream" and media_holder(a, call.call_id)
    # The owner moves a call's media only to the agent the router assigned it to: a forged request changes nothing.
    internal = replicas_pb2_grpc.ReplicaServiceStub(a.channel)
    forged = rp.ConnectAgentRequest(call_id=call.call_id, agent_id="mallory", media_stream=rp.MediaStreamMedia())
    error = await refused(internal.ConnectAgent(forged, metadata=a.metadata))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "not assigned" in (error.details() or "")
    assert (await refused(internal.ConnectAgent(forged))).code() == grpc.StatusCode.UNAUTHENTICATED
    for malformed in (
        rp.ConnectAgentRequest(call_id=call.call_id, agent_id="ann"),  # no media
        rp.ConnectAgentRequest(agent_id="ann", media_stream=rp.MediaStreamMedia()),  # no call
        rp.ConnectAgentRequest(call_id=call.call_id, agent_id="ann\x00", media_stream=rp.MediaStreamMedia()),
        rp.ConnectAgentRequest(
            call_id=call.call_id, agent_id="ann", media_stream=rp.MediaStreamMedia(), waited=Duration(seconds=10**15)
        ),
    ):
        error = await refused(internal.ConnectAgent(malformed, metadata=a.metadata))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (malformed, error)
    assert (await a.get_call(call.call_id)).route == "media_stream"
    ann.close()


async def test_a_maximum_wait_expiring_on_the_other_replicas_timer_overflows_and_closes_the_call_on_the_owner(
    replicas: tuple[Running, Running],
) -> None:
    a, b = replicas
    await put_queue(a, "billing", hold_audio=m.HoldAudio(tone_hz=500), max_wait=duration(120))
    await put_queue(a, hold_audio=m.HoldAudio(tone_hz=HOLD_HZ), max_wait=duration(60), overflow_queue_id="billing")
    call = await queue_call(a)
    ear = await phone_ear(a, call.platform_call_id)
    await hears(ear, HOLD_HZ, what="hold audio")
    # b learns the deadline a set from a's step in the log; only b's clock moves past it.
    await wait_until(lambda: asyncio.sleep(0.05, queues_of(b).state.waiting), lambda w: call.call_id in w)
    entered = queues_of(b).state.waiting[call.call_id].entered_at
    behind = (entered - await b.now()).total_seconds()
    await b.advance(max(behind, 0) + 61)
    mark = len(ear.frames)
    await hears(ear, 500, after=mark + 10, what="the overflow queue's hold audio, played on a")
    await b.advance(121)
    mark = len(ear.frames)
    await hears(ear, CLOSING_TONE_HZ, after=mark + 10, frames=30, what="the closing announcement on a")
    ended = await a.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.end_reason == "announcement finished"
    await wait_until(queues_of(a).read, lambda state: state.waiting == {})


async def test_a_call_abandoned_on_the_owner_withdraws_its_offer_from_the_agent_on_the_other_replica(
    replicas: tuple[Running, Running],
) -> None:
    a, b = replicas
    await put_queue(a)
    await put_agent(a, "ann")
    ann = await signed_in(b, "ann")
    call = await queue_call(a)
    offer = await ann.offer()
    await a.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id), metadata=a.metadata)
    withdrawn = (await until(ann, "offer_withdrawn")).offer_withdrawn
    assert withdrawn.offer_id == offer.offer_id and withdrawn.why == m.OFFER_WITHDRAWN_WHY_ABANDONED
    await ann.quiet()
    ann.close()


async def test_two_agents_on_two_replicas_on_postgresql_accepting_one_ring_all_call_exactly_one_wins(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    a, b = await two_replicas(tmp_path, postgres_server.create_database())
    try:
        await put_queue(a, strategy=m.STRATEGY_RING_ALL, hold_audio=m.HoldAudio(tone_hz=HOLD_HZ))
        await put_agent(a, "ann")
        await put_agent(a, "bob")
        ann, bob = await signed_in(a, "ann"), await signed_in(b, "bob")
        call = await queue_call(a)
        offers = await asyncio.gather(ann.offer(), bob.offer())
        ann.accept(offers[0].offer_id)
        bob.accept(offers[1].offer_id)
        outcomes = {}
        for agent in (ann, bob):
            while (event := await agent.next()).WhichOneof("kind") not in ("connected", "error"):
                pass
            outcomes[agent.agent_id] = event
        kinds = sorted(event.WhichOneof("kind") for event in outcomes.values())
        assert kinds == ["connected", "error"], outcomes
        loser = next(event for event in outcomes.values() if event.WhichOneof("kind") == "error")
        assert loser.error.code == "offer_gone"
        winner = next(name for name, event in outcomes.items() if event.WhichOneof("kind") == "connected")
        assert outcomes[winner].connected.call_id == call.call_id
        # The media moved on the owner whichever replica won; the router holds one assignment.
        assert (await a.get_call(call.call_id)).route == "media_stream" and media_holder(a, call.call_id)
        assert (await queues_of(b).read()).assigned[call.call_id].agent_id == winner
        ann.close()
        bob.close()
    finally:
        await stop_replicas(a, b)


async def test_an_accept_whose_call_owner_cannot_be_reached_fails_the_agents_media_and_the_call_is_ended(
    replicas: tuple[Running, Running],
) -> None:
    a, b = replicas
    await put_queue(a)
    await put_agent(a, "ann")
    ann = await signed_in(b, "ann")
    # A call left by a replica that never registered an address (its media, if anywhere, is out of reach).
    await a.grant(permanent=True)
    await a.phone(ring=600)
    template = await a.wait_call((await a.start_call()).call_id, pb.CALL_STATE_RINGING)
    ghost = "call_" + "f" * 32
    lease = datetime.now(UTC) + timedelta(seconds=60)

    def left_by_a_ghost(tx: Tx) -> None:
        stored = tx.call(template.call_id)
        assert stored is not None
        tx.save_call(dataclasses.replace(stored, call_id=ghost, pair=Pair(stored.pair.business, OTHER_USER),
                                         platform_call_id=None, owner="ghost/1", lease_expires_at=lease))  # fmt: skip

    assert b.service.store is not None
    await b.service.store.transaction(left_by_a_ghost)
    await queues_of(b).enqueue(ghost, "sales")
    offer = await ann.offer()
    ann.accept(offer.offer_id)
    error = (await until(ann, "error")).error
    assert error.code == "media_failed" and "ghost/1" in error.message
    # Ended, not queued again: no replica can carry media the owner holds (no renegotiation with the platform).
    ended = await b.wait_call(ghost, pb.CALL_STATE_ENDED)
    assert ended.end_reason.startswith("the agent's media failed")
    assert (await until(ann, "call_ended")).call_ended.call_id == ghost
    assert ghost not in (await queues_of(a).read()).waiting
    ann.close()


async def test_both_replicas_ticking_at_one_ring_timeout_withdraw_the_offer_once_and_offer_the_call_on(
    replicas: tuple[Running, Running],
) -> None:
    a, b = replicas
    await put_queue(a, ring_timeout=duration(20))
    await put_agent(a, "ann")
    ann = await signed_in(b, "ann")
    # Both clocks at one time, so both timers reach the deadline.
    behind = (await a.now() - await b.now()).total_seconds()
    await (b.advance(behind) if behind > 0 else a.advance(-behind))
    call_id = "call_" + "1" * 32  # a call no service knows: the router alone is exercised
    await queues_of(a).enqueue(call_id, "sales")
    offer = await ann.offer()
    await put_agent(b, "bob")
    bob = await signed_in(a, "bob")
    await asyncio.gather(a.advance(21), b.advance(21))
    withdrawn = (await until(ann, "offer_withdrawn")).offer_withdrawn
    assert withdrawn.offer_id == offer.offer_id and withdrawn.why == m.OFFER_WITHDRAWN_WHY_TIMED_OUT
    assert (await bob.offer()).call_id == call_id
    await ann.quiet()
    await bob.quiet()
    timed_out = [
        e
        for e in await contact_center_events(b)
        if e.kind == pb.EVENT_KIND_OFFER_WITHDRAWN and e.contact_center.offer_id == offer.offer_id
    ]
    assert len(timed_out) == 1
    ann.close()
    bob.close()


async def test_a_step_that_finds_another_replicas_step_unseen_delivers_that_one_first(
    replicas: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas
    await put_queue(a)
    await put_agent(a, "ann")
    ann = await signed_in(b, "ann")
    # SQLite tells b nothing of a's commits: with its polling slowed, b has not read a's offer when ann steps.
    monkeypatch.setattr(service_module, "FOLLOW_POLL", timedelta(seconds=60))
    await asyncio.sleep(0.5)  # b's follower now waits a minute, or for b's own next commit
    await queues_of(a).enqueue("call_" + "2" * 32, "sales")
    ann.send(R(set_presence=R.SetPresence(presence=m.AGENT_PRESENCE_AWAY)))
    # In commit order: a's offer, then what ann's own step did with it.
    offer = await ann.offer()
    withdrawn = (await ann.expect("offer_withdrawn")).offer_withdrawn
    assert withdrawn.offer_id == offer.offer_id and withdrawn.why == m.OFFER_WITHDRAWN_WHY_AGENT_OFFLINE
    assert (await ann.expect("presence")).presence.state == m.AGENT_PRESENCE_AWAY
    await ann.quiet()
    ann.close()


# --- two `wacall serve` processes on PostgreSQL, one standalone simulator ---------------------------------------------


RPC = 30.0  # every RPC's deadline in the process test: an answer or a failure, never a hang


class Session:
    """An agent's AgentSession stream on one replica's gRPC address."""

    def __init__(self, channel: grpc.aio.Channel, agent_id: str) -> None:
        self._requests: asyncio.Queue[cc.AgentSessionRequest | None] = asyncio.Queue()
        self._requests.put_nowait(R(login=R.Login(agent_id=agent_id)))
        self._call = contact_center_pb2_grpc.ContactCenterServiceStub(channel).AgentSession(self._outgoing())

    async def _outgoing(self) -> AsyncIterator[cc.AgentSessionRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    def send(self, request: cc.AgentSessionRequest) -> None:
        self._requests.put_nowait(request)

    async def until(self, kind: str) -> cc.AgentSessionEvent:
        while True:
            event = await asyncio.wait_for(self._call.read(), 30)
            assert event is not grpc.aio.EOF, f"the session ended before {kind}"
            assert isinstance(event, cc.AgentSessionEvent)
            assert event.WhichOneof("kind") != "error", event
            if event.WhichOneof("kind") == kind:
                return event

    def close(self) -> None:
        self._requests.put_nowait(None)


async def test_two_serve_processes_an_agent_on_one_takes_a_call_the_other_placed_and_hears_the_customer(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    ports = free_port(), free_port()
    simulator = start("simulate", "--grpc-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0",
                      "--media-dir", str(tmp_path), "--webhook-url", webhook_url(ports[0]),
                      "--webhook-url", webhook_url(ports[1]), "--log-level", "ERROR")  # fmt: skip
    started = [simulator]
    try:
        db = postgres_server.create_database()
        for name, port in zip(("replica-a", "replica-b"), ports, strict=True):
            started.append(start("serve", "--grpc-address", "127.0.0.1:0", "--http-address", f"127.0.0.1:{port}",
                                 "--db", db, "--sim-address", simulator.field("grpc"), "--rtpengine", "off",
                                 "--clock", "system", "--instance-name", name, "--media-dir", str(tmp_path),
                                 "--recordings-dir", str(tmp_path), "--log-level", "ERROR"))  # fmt: skip
        a_address, b_address = started[1].field("grpc"), started[2].field("grpc")
        async with (
            grpc.aio.insecure_channel(simulator.field("grpc")) as sim_channel,
            grpc.aio.insecure_channel(a_address) as a,
            grpc.aio.insecure_channel(b_address) as b,
        ):
            sim = simulator_pb2_grpc.SimulatorServiceStub(sim_channel)
            calls_a, calls_b = calling_pb2_grpc.CallingServiceStub(a), calling_pb2_grpc.CallingServiceStub(b)
            centre_a = contact_center_pb2_grpc.ContactCenterServiceStub(a)
            await centre_a.PutQueue(m.Queue(queue_id="sales", hold_audio=m.HoldAudio(tone_hz=HOLD_HZ)), timeout=RPC)
            await centre_a.PutAgent(m.Agent(agent_id="ann", queue_ids=["sales"]), timeout=RPC)
            ann = Session(b, "ann")
            await ann.until("logged_in")
            ann.send(R(set_presence=R.SetPresence(presence=m.AGENT_PRESENCE_AVAILABLE)))
            behaviour = sim_pb.SetUserBehaviorRequest(
                user_number=USER, on_call=sim_pb.ANSWER, ring_duration=duration(0.3), tone_hz=USER_HZ
            )
            await sim.SetUserBehavior(behaviour, timeout=RPC)
            await sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER,
                                                                    permanent=True), timeout=RPC)  # fmt: skip
            await wait_until(
                lambda: calls_a.GetPermission(
                    pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER), timeout=RPC
                ),
                lambda p: p.state == pb.PERMISSION_STATE_PERMANENT,
            )
            queued = pb.Route(queue=pb.QueueRoute(queue_id="sales"))
            start_call = pb.StartCallRequest(business_number=BUSINESS, user_number=USER, route=queued)
            call = await calls_a.StartCall(start_call, timeout=RPC)
            offer = (await ann.until("offer")).offer
            assert offer.call_id == call.call_id
            ann.send(R(accept=R.Accept(offer_id=offer.offer_id, media_stream=R.MediaStreamMedia())))
            assert (await ann.until("connected")).connected.call_id == call.call_id

            # The agent's program on b's CallMedia (forwarded to a, the owner) hears the customer's 880 Hz.
            rate, heard = 16000, Heard()

            async def listen() -> AsyncIterator[pb.CallMediaRequest]:
                yield pb.CallMediaRequest(call_id=call.call_id, sample_rate=rate)
                await asyncio.sleep(30)

            async for message in calls_b.CallMedia(listen(), timeout=30):
                if message.WhichOneof("kind") == "audio":
                    heard(message.audio)
                if len(heard.frames) >= 60:
                    break
            assert abs(pitch_at(heard.since(20), rate) - USER_HZ) < USER_HZ * 0.05

            ann.send(R(hang_up=R.HangUp(call_id=call.call_id)))
            ended = (await ann.until("call_ended")).call_ended
            assert ended.call_id == call.call_id and ended.outcome == pb.CALL_OUTCOME_ANSWERED
            record = await calls_a.GetCall(pb.GetCallRequest(call_id=call.call_id), timeout=RPC)
            assert record.state == pb.CALL_STATE_ENDED and record.route == "media_stream"
            ann.close()
    finally:
        for process in started:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()
