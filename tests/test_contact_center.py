"""The contact centre over gRPC: queues and agents, agent sessions, offers by strategy, ring timeouts on the manual
clock, declines, RING_ALL's one winner, dropped sessions, auto-pause, wrap-up, stats and the event log.

Calls are real: the simulated user's phone answers a business call on the media_stream route (standing in for the
queue route's hold audio), and the test puts the live call in a queue as the route does (`QueueService.enqueue`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from conftest import BUSINESS, OTHER_USER, USER, Running, duration, refused, wait_until
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import contact_center_model_pb2 as m
from wacall_client.v1 import contact_center_pb2 as cc
from wacall_client.v1 import contact_center_pb2_grpc

from wacall.api.contact_center import REFUSAL_STATUS, drive_request
from wacall.queues import router
from wacall.queues.router import CallGone, Presence, Tick
from wacall.queues.service import QueueService
from wacall.queues.sessions import MAX_PENDING_EVENTS, TOO_MANY_PENDING_EVENTS, SessionError
from wacall.store import StoreUnavailable

R = cc.AgentSessionRequest
THIRD_USER = "+491711234567"  # DE


def stub(wacall: Running) -> contact_center_pb2_grpc.ContactCenterServiceStub:
    return contact_center_pb2_grpc.ContactCenterServiceStub(wacall.channel)


def queues_of(wacall: Running) -> QueueService:
    assert wacall.service.queues is not None
    return wacall.service.queues


class Agent:
    """One agent's AgentSession stream, as a softphone holds it. A reader task collects the events (cancelling a
    pending read would cancel the whole stream)."""

    def __init__(self, wacall: Running, agent_id: str) -> None:
        self.agent_id = agent_id
        self._requests: asyncio.Queue[cc.AgentSessionRequest | None] = asyncio.Queue()
        self._requests.put_nowait(R(login=R.Login(agent_id=agent_id)))
        self.call = stub(wacall).AgentSession(self._outgoing(), metadata=wacall.metadata)
        self._received: asyncio.Queue[cc.AgentSessionEvent | BaseException] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _outgoing(self) -> AsyncIterator[cc.AgentSessionRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for event in self.call:
                self._received.put_nowait(event)
            self._received.put_nowait(StopAsyncIteration())
        except BaseException as error:  # the stream's error is the test's to see
            self._received.put_nowait(error)

    def send(self, request: cc.AgentSessionRequest) -> None:
        self._requests.put_nowait(request)

    async def next(self, timeout: float = 10.0) -> cc.AgentSessionEvent:
        item = await asyncio.wait_for(self._received.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def expect(self, kind: str, timeout: float = 10.0) -> cc.AgentSessionEvent:
        event = await self.next(timeout)
        assert event.WhichOneof("kind") == kind, f"{self.agent_id} expected {kind}, got:\n{event}"
        return event

    async def quiet(self, seconds: float = 0.3) -> None:
        """Nothing more arrives for a while."""
        with pytest.raises(TimeoutError):
            event = await self.next(seconds)
            raise AssertionError(f"{self.agent_id} got an unexpected event:\n{event}")

    async def sign_in(self) -> None:
        """Login (AWAY), then AVAILABLE."""
        await self.expect("logged_in")
        assert (await self.expect("presence")).presence.state == m.AGENT_PRESENCE_AWAY
        await self.available()

    async def available(self) -> None:
        self.send(R(set_presence=R.SetPresence(presence=m.AGENT_PRESENCE_AVAILABLE)))
        event = await self.expect("presence")
        assert event.presence.state == m.AGENT_PRESENCE_AVAILABLE

    async def offer(self) -> cc.AgentSessionEvent.Offer:
        return (await self.expect("offer")).offer

    def accept(self, offer_id: str) -> None:
        self.send(R(accept=R.Accept(offer_id=offer_id, media_stream=R.MediaStreamMedia())))

    def decline(self, offer_id: str) -> None:
        self.send(R(decline=R.Decline(offer_id=offer_id)))

    def close(self) -> None:
        self._requests.put_nowait(None)


async def put_queue(wacall: Running, queue_id: str = "sales", **fields: object) -> m.Queue:
    return await stub(wacall).PutQueue(m.Queue(queue_id=queue_id, **fields), metadata=wacall.metadata)  # type: ignore[arg-type]


async def put_agent(wacall: Running, agent_id: str, queue_ids: tuple[str, ...] = ("sales",), **fields: object) -> None:
    await stub(wacall).PutAgent(
        m.Agent(agent_id=agent_id, queue_ids=list(queue_ids), **fields),  # type: ignore[arg-type]
        metadata=wacall.metadata,
    )


async def agent_state(wacall: Running, agent_id: str) -> m.Agent:
    return await stub(wacall).GetAgent(cc.GetAgentRequest(agent_id=agent_id), metadata=wacall.metadata)


async def live_call(wacall: Running, user: str = USER) -> str:
    """A connected call with the user (their phone answers); the route stands in for hold audio."""
    await wacall.grant(user=user, permanent=True)
    await wacall.phone(user=user)
    call = await wacall.start_call(user=user, route=pb.Route(media_stream=pb.MediaStreamRoute()))
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    return call.call_id


async def queued_call(wacall: Running, queue_id: str = "sales", user: str = USER, priority: int = 0) -> str:
    call_id = await live_call(wacall, user)
    await queues_of(wacall).enqueue(call_id, queue_id, priority)
    return call_id


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert next(d for d in status.details if d.Is(info.DESCRIPTOR)).Unpack(info)
    return info


def bad_request_field(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert next(d for d in status.details if d.Is(bad.DESCRIPTOR)).Unpack(bad)
    return bad.field_violations[0].field


async def contact_center_events(wacall: Running, after: str = "") -> list[pb.Event]:
    reply = await wacall.calling.ListEvents(
        pb.ListEventsRequest(after_cursor=after, page_size=1000), metadata=wacall.metadata
    )
    return [e for e in reply.events if e.HasField("contact_center")]


# --- queues and agents ----------------------------------------------------------------------------------------------


async def test_a_queue_is_created_read_listed_replaced_and_deleted_with_the_defaults_the_issue_names(
    wacall: Running,
) -> None:
    created = await put_queue(wacall, name="Sales", required_skills={"spanish": 2}, hold_audio=m.HoldAudio(tone_hz=425))
    assert created.strategy == m.STRATEGY_LONGEST_IDLE  # unset: LONGEST_IDLE
    assert created.ring_timeout.ToTimedelta() == timedelta(seconds=20)  # unset: 20 s
    assert not created.HasField("max_wait")  # unset: no limit
    assert created.wrap_up.ToTimedelta() == timedelta(0)
    # Unset: a declined call rings the same agent again after 10 s, one that rang out after 5 s.
    assert created.decline_delay.ToTimedelta() == timedelta(seconds=10)
    assert created.no_answer_delay.ToTimedelta() == timedelta(seconds=5)
    assert created.hold_audio.tone_hz == 425 and dict(created.required_skills) == {"spanish": 2}
    got = await stub(wacall).GetQueue(cc.GetQueueRequest(queue_id="sales"), metadata=wacall.metadata)
    assert got == created

    replaced = await put_queue(
        wacall,
        strategy=m.STRATEGY_RING_ALL,
        max_wait=duration(300),
        wrap_up=duration(30),
        decline_delay=duration(0),
        no_answer_delay=duration(60),
    )
    assert replaced.strategy == m.STRATEGY_RING_ALL and replaced.max_wait.seconds == 300
    assert (replaced.decline_delay.seconds, replaced.no_answer_delay.seconds) == (0, 60)
    assert replaced.name == "" and not replaced.required_skills  # Put replaces the whole queue
    await put_queue(wacall, "billing", overflow_queue_id="sales")
    listed = await stub(wacall).ListQueues(cc.ListQueuesRequest(), metadata=wacall.metadata)
    assert [q.queue_id for q in listed.queues] == ["billing", "sales"]

    deleted = await stub(wacall).DeleteQueue(cc.DeleteQueueRequest(queue_id="billing"), metadata=wacall.metadata)
    assert deleted.overflow_queue_id == "sales"
    error = await refused(stub(wacall).GetQueue(cc.GetQueueRequest(queue_id="billing"), metadata=wacall.metadata))
    assert error.code() is grpc.StatusCode.NOT_FOUND and error_info(error).reason == "unknown_queue"


async def test_an_agent_is_created_with_skills_and_penalties_and_a_replacement_keeps_its_presence(
    wacall: Running,
) -> None:
    await put_queue(wacall)
    await put_agent(
        wacall, "ann", ("sales", "billing"), name="Ann", skills={"spanish": 3}, queue_penalties={"billing": 2}
    )
    ann = await agent_state(wacall, "ann")
    assert ann.name == "Ann" and dict(ann.skills) == {"spanish": 3}
    assert sorted(ann.queue_ids) == ["billing", "sales"] and dict(ann.queue_penalties) == {"sales": 0, "billing": 2}
    assert ann.presence == m.AGENT_PRESENCE_OFFLINE

    session = Agent(wacall, "ann")
    await session.sign_in()
    await put_agent(wacall, "ann", ("sales",), presence=m.AGENT_PRESENCE_OFFLINE)  # presence is output only
    ann = await agent_state(wacall, "ann")
    assert ann.presence == m.AGENT_PRESENCE_AVAILABLE and list(ann.queue_ids) == ["sales"]
    await put_agent(wacall, "bob", ("billing",))
    by_queue = await stub(wacall).ListAgents(cc.ListAgentsRequest(queue_id="sales"), metadata=wacall.metadata)
    assert [a.agent_id for a in by_queue.agents] == ["ann"]
    every = await stub(wacall).ListAgents(cc.ListAgentsRequest(), metadata=wacall.metadata)
    assert [a.agent_id for a in every.agents] == ["ann", "bob"]
    deleted = await stub(wacall).DeleteAgent(cc.DeleteAgentRequest(agent_id="bob"), metadata=wacall.metadata)
    assert deleted.agent_id == "bob"
    session.close()


BAD_QUEUES = [
    ("queue_id", m.Queue(queue_id="")),
    ("queue_id", m.Queue(queue_id="sales desk")),
    ("queue_id", m.Queue(queue_id="q" * 65)),
    ("strategy", m.Queue(queue_id="q", strategy=99)),  # type: ignore[arg-type]
    ("ring_timeout", m.Queue(queue_id="q", ring_timeout=duration(-5))),
    ("ring_timeout", m.Queue(queue_id="q", ring_timeout=duration(0))),
    ("max_wait", m.Queue(queue_id="q", max_wait=duration(-1))),
    ("wrap_up", m.Queue(queue_id="q", wrap_up=duration(-1))),
    ("wrap_up", m.Queue(queue_id="q", wrap_up=duration_pb2.Duration(seconds=10**15))),
    ("overflow_queue_id", m.Queue(queue_id="q", overflow_queue_id="q")),
    ("overflow_queue_id", m.Queue(queue_id="q", overflow_queue_id="no way")),
    ("required_skills", m.Queue(queue_id="q", required_skills={f"s{i}": 1 for i in range(33)})),
    ("required_skills[spanish]", m.Queue(queue_id="q", required_skills={"spanish": -1})),
    ("max_missed_offers", m.Queue(queue_id="q", max_missed_offers=-1)),
    ("decline_delay", m.Queue(queue_id="q", decline_delay=duration(-1))),
    ("no_answer_delay", m.Queue(queue_id="q", no_answer_delay=duration(7200))),
    ("hold_audio.tone_hz", m.Queue(queue_id="q", hold_audio=m.HoldAudio(tone_hz=0))),
    ("hold_audio.audio_file", m.Queue(queue_id="q", hold_audio=m.HoldAudio(audio_file="/etc/passwd"))),
    ("name", m.Queue(queue_id="q", name="a\x00b")),
]


@pytest.mark.parametrize(("field", "queue"), BAD_QUEUES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_QUEUES)])
async def test_a_bad_queue_field_is_invalid_argument_naming_it_and_changes_nothing(
    wacall: Running, field: str, queue: m.Queue
) -> None:
    error = await refused(stub(wacall).PutQueue(queue, metadata=wacall.metadata))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(error) == field
    assert not (await stub(wacall).ListQueues(cc.ListQueuesRequest(), metadata=wacall.metadata)).queues
    assert await contact_center_events(wacall) == []


BAD_AGENTS = [
    ("agent_id", m.Agent(agent_id="")),
    ("agent_id", m.Agent(agent_id="ann/../bob")),
    ("skills", m.Agent(agent_id="a", skills={f"s{i}": 1 for i in range(33)})),
    ("skills[spanish]", m.Agent(agent_id="a", skills={"spanish": 1001})),
    ("queue_ids[1]", m.Agent(agent_id="a", queue_ids=["sales", "sales"])),
    ("queue_ids[0]", m.Agent(agent_id="a", queue_ids=[""])),
    ("queue_penalties[billing]", m.Agent(agent_id="a", queue_ids=["sales"], queue_penalties={"billing": 1})),
    ("queue_penalties[sales]", m.Agent(agent_id="a", queue_ids=["sales"], queue_penalties={"sales": -1})),
]


@pytest.mark.parametrize(("field", "agent"), BAD_AGENTS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_AGENTS)])
async def test_a_bad_agent_field_is_invalid_argument_naming_it_and_changes_nothing(
    wacall: Running, field: str, agent: m.Agent
) -> None:
    error = await refused(stub(wacall).PutAgent(agent, metadata=wacall.metadata))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(error) == field
    assert not (await stub(wacall).ListAgents(cc.ListAgentsRequest(), metadata=wacall.metadata)).agents
    assert await contact_center_events(wacall) == []


def test_every_refusal_code_the_router_raises_has_a_status() -> None:
    source = (Path(__file__).parent.parent / "server/wacall/queues/router.py").read_text()
    codes = set(re.findall(r'RoutingRefused\(\s*"([a-z_]+)"', source))
    assert len(codes) >= 8 and codes <= set(REFUSAL_STATUS)


async def test_an_overflow_queue_must_exist_and_cannot_be_deleted_while_another_overflows_into_it(
    wacall: Running,
) -> None:
    error = await refused(put_queue(wacall, overflow_queue_id="nowhere"))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION and error_info(error).reason == "unknown_overflow_queue"
    assert not (await stub(wacall).ListQueues(cc.ListQueuesRequest(), metadata=wacall.metadata)).queues
    await put_queue(wacall, "anyone")
    await put_queue(wacall, overflow_queue_id="anyone")
    error = await refused(stub(wacall).DeleteQueue(cc.DeleteQueueRequest(queue_id="anyone"), metadata=wacall.metadata))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION and error_info(error).reason == "queue_in_use"


async def test_too_many_agents_is_resource_exhausted_with_a_quota_failure(
    wacall: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router, "MAX_AGENTS", 2)
    await put_agent(wacall, "ann")
    await put_agent(wacall, "bob")
    error = await refused(put_agent(wacall, "cat"))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and error_info(error).reason == "too_many_agents"
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    quota = error_details_pb2.QuotaFailure()
    assert next(d for d in status.details if d.Is(quota.DESCRIPTOR)).Unpack(quota)
    assert quota.violations[0].subject == "agents"


async def test_a_delete_racing_a_put_of_the_same_id_answers_what_it_deleted_never_unknown(wacall: Running) -> None:
    # Each round: a delete of a queue that does not exist yet races its put; either order is a clear answer.
    for round_number in range(20):
        queue_id = f"q{round_number}"
        put, deleted = await asyncio.gather(
            put_queue(wacall, queue_id),
            stub(wacall).DeleteQueue(cc.DeleteQueueRequest(queue_id=queue_id), metadata=wacall.metadata),
            return_exceptions=True,
        )
        assert isinstance(put, m.Queue), put
        if isinstance(deleted, grpc.aio.AioRpcError):
            assert deleted.code() is grpc.StatusCode.NOT_FOUND, deleted
        else:
            assert isinstance(deleted, m.Queue) and deleted.queue_id == queue_id


async def test_a_queue_with_waiting_calls_and_an_agent_on_a_call_cannot_be_deleted(wacall: Running) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    call_id = await queued_call(wacall)
    error = await refused(stub(wacall).DeleteQueue(cc.DeleteQueueRequest(queue_id="sales"), metadata=wacall.metadata))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION and error_info(error).reason == "queue_in_use"

    ann = Agent(wacall, "ann")
    await ann.sign_in()
    offer = await ann.offer()
    assert offer.call_id == call_id
    ann.accept(offer.offer_id)
    assert (await ann.expect("presence")).presence.state == m.AGENT_PRESENCE_BUSY
    await ann.expect("connected")
    error = await refused(stub(wacall).DeleteAgent(cc.DeleteAgentRequest(agent_id="ann"), metadata=wacall.metadata))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION and error_info(error).reason == "agent_busy"
    ann.close()


# --- sessions and offers --------------------------------------------------------------------------------------------


async def test_login_leaves_the_agent_away_and_no_offer_reaches_it_until_it_is_available(wacall: Running) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann", name="Ann")
    ann = Agent(wacall, "ann")
    logged_in = await ann.expect("logged_in")
    assert logged_in.logged_in.agent.name == "Ann"
    presence = await ann.expect("presence")
    assert (presence.presence.state, presence.presence.why) == (m.AGENT_PRESENCE_AWAY, m.PRESENCE_WHY_LOGGED_IN)
    call_id = await queued_call(wacall)
    await ann.quiet()
    await ann.available()
    offer = await ann.offer()
    assert (offer.call_id, offer.queue_id) == (call_id, "sales")
    assert (offer.customer_number, offer.business_number) == (USER, BUSINESS)
    assert offer.permission.state == pb.PERMISSION_STATE_PERMANENT  # the agent sees it may call back
    assert offer.expires_in.ToTimedelta() == timedelta(seconds=20)
    ann.close()


async def test_an_unknown_agent_cannot_log_in_and_the_first_request_must_be_login(wacall: Running) -> None:
    nobody = Agent(wacall, "nobody")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await nobody.next()
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND and error_info(caught.value).reason == "unknown_agent"

    call = stub(wacall).AgentSession(iter([R(end_wrap_up=R.EndWrapUp())]), metadata=wacall.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await anext(aiter(call))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (m.STRATEGY_LONGEST_IDLE, "cat"),  # available first
        (m.STRATEGY_LINEAR, "bob"),  # put first
        (m.STRATEGY_FEWEST_CALLS, "ann"),  # bob and cat each took a call already
        (m.STRATEGY_ROUND_ROBIN, "ann"),  # the first by agent id, when the queue offered nobody yet
    ],
)
async def test_the_queues_strategy_names_the_agent_offered_the_call(
    wacall: Running, strategy: int, expected: str
) -> None:
    await put_queue(wacall, "warmup", strategy=m.STRATEGY_ROUND_ROBIN)
    await put_queue(wacall, strategy=strategy)
    await put_agent(wacall, "bob", ("sales", "warmup"))
    await put_agent(wacall, "cat", ("sales", "warmup"))
    await put_agent(wacall, "ann", ("sales",))
    agents = {name: Agent(wacall, name) for name in ("cat", "bob", "ann")}
    for name in ("cat", "bob", "ann"):  # available in this order, ten clock seconds apart
        await agents[name].sign_in()
        await wacall.advance(10)
    if strategy == m.STRATEGY_FEWEST_CALLS:
        # One call each for bob and cat, through the warm-up queue (round robin: bob, then cat).
        for user, taker in ((OTHER_USER, "bob"), (THIRD_USER, "cat")):
            call_id = await queued_call(wacall, "warmup", user)
            offer = await agents[taker].offer()
            agents[taker].accept(offer.offer_id)
            await agents[taker].expect("presence")
            await agents[taker].expect("connected")
            await wacall.calling.EndCall(pb.EndCallRequest(call_id=call_id), metadata=wacall.metadata)
            assert (await agents[taker].expect("call_ended")).call_ended.call_id == call_id
            assert (await agents[taker].expect("presence")).presence.state == m.AGENT_PRESENCE_AVAILABLE
    call_id = await queued_call(wacall)
    offer = await agents[expected].offer()
    assert offer.call_id == call_id
    for name, agent in agents.items():
        if name != expected:
            await agent.quiet()
    for agent in agents.values():
        agent.close()


async def test_an_offer_that_rings_out_goes_to_the_next_agent_when_the_clock_passes_the_ring_timeout(
    wacall: Running,
) -> None:
    await put_queue(wacall, strategy=m.STRATEGY_LINEAR, ring_timeout=duration(15))
    await put_agent(wacall, "ann")
    await put_agent(wacall, "bob")
    ann, bob = Agent(wacall, "ann"), Agent(wacall, "bob")
    await ann.sign_in()
    await bob.sign_in()
    call_id = await queued_call(wacall)
    first = await ann.offer()
    await bob.quiet()
    await wacall.advance(14)
    await ann.quiet()  # not yet
    await wacall.advance(1)
    withdrawn = await ann.expect("offer_withdrawn")
    assert (withdrawn.offer_withdrawn.offer_id, withdrawn.offer_withdrawn.why) == (
        first.offer_id,
        m.OFFER_WITHDRAWN_WHY_TIMED_OUT,
    )
    second = await bob.offer()
    assert second.call_id == call_id and second.waited.ToTimedelta() == timedelta(seconds=15)
    assert (await agent_state(wacall, "ann")).missed_offers == 1
    ann.close()
    bob.close()


async def test_a_declined_offer_goes_to_the_next_agent_and_is_not_a_missed_offer(wacall: Running) -> None:
    await put_queue(wacall, strategy=m.STRATEGY_LINEAR, max_missed_offers=1)
    await put_agent(wacall, "ann")
    await put_agent(wacall, "bob")
    ann, bob = Agent(wacall, "ann"), Agent(wacall, "bob")
    await ann.sign_in()
    await bob.sign_in()
    call_id = await queued_call(wacall)
    offer = await ann.offer()
    ann.decline(offer.offer_id)
    assert (await bob.offer()).call_id == call_id
    await ann.quiet()  # neither withdrawn (it declined) nor paused
    ann_now = await agent_state(wacall, "ann")
    assert ann_now.presence == m.AGENT_PRESENCE_AVAILABLE and ann_now.missed_offers == 0
    ann.close()
    bob.close()


async def test_ring_all_offers_every_agent_and_of_two_accepting_at_once_exactly_one_is_connected(
    wacall: Running,
) -> None:
    await put_queue(wacall, strategy=m.STRATEGY_RING_ALL)
    await put_agent(wacall, "ann")
    await put_agent(wacall, "bob")
    ann, bob = Agent(wacall, "ann"), Agent(wacall, "bob")
    await ann.sign_in()
    await bob.sign_in()
    call_id = await queued_call(wacall)
    offers = {"ann": await ann.offer(), "bob": await bob.offer()}
    assert offers["ann"].call_id == offers["bob"].call_id == call_id
    assert offers["ann"].offer_id != offers["bob"].offer_id
    ann.accept(offers["ann"].offer_id)
    bob.accept(offers["bob"].offer_id)

    async def outcome(agent: Agent) -> list[str]:
        kinds = []
        while not kinds or kinds[-1] not in ("connected", "error", "offer_withdrawn"):
            kinds.append((await agent.next()).WhichOneof("kind"))
        return kinds

    results = dict(zip(("ann", "bob"), await asyncio.gather(outcome(ann), outcome(bob)), strict=True))
    winners = [name for name, kinds in results.items() if kinds[-1] == "connected"]
    assert len(winners) == 1, results
    loser = "bob" if winners == ["ann"] else "ann"
    # The loser's offer was withdrawn (answered elsewhere) before its accept ran, or its accept found it gone.
    assert results[loser][-1] in ("offer_withdrawn", "error")
    winner_state = await agent_state(wacall, winners[0])
    assert winner_state.presence == m.AGENT_PRESENCE_BUSY and winner_state.call_id == call_id
    assert (await agent_state(wacall, loser)).presence == m.AGENT_PRESENCE_AVAILABLE
    assigned = [e for e in await contact_center_events(wacall) if e.kind == pb.EVENT_KIND_CALL_ASSIGNED]
    assert [e.contact_center.agent_id for e in assigned] == winners
    ann.close()
    bob.close()


async def test_a_dropped_session_makes_the_agent_offline_and_its_ringing_offer_goes_to_the_next_agent(
    wacall: Running,
) -> None:
    await put_queue(wacall, strategy=m.STRATEGY_LINEAR)
    await put_agent(wacall, "ann")
    await put_agent(wacall, "bob")
    ann, bob = Agent(wacall, "ann"), Agent(wacall, "bob")
    await ann.sign_in()
    await bob.sign_in()
    call_id = await queued_call(wacall)
    await ann.offer()
    ann.call.cancel()  # the connection drops
    assert (await bob.offer()).call_id == call_id
    ann_now = await wait_until(
        lambda: agent_state(wacall, "ann"), lambda a: a.presence == m.AGENT_PRESENCE_OFFLINE, timeout=5
    )
    assert ann_now.call_id == ""
    presence = [
        e.contact_center
        for e in await contact_center_events(wacall)
        if e.kind == pb.EVENT_KIND_AGENT_PRESENCE_CHANGED and e.contact_center.agent_id == "ann"
    ]
    assert (presence[-1].presence, presence[-1].presence_why) == (
        m.AGENT_PRESENCE_OFFLINE,
        m.PRESENCE_WHY_SESSION_ENDED,
    )
    bob.close()


async def test_a_second_login_replaces_the_first_session_which_is_told_and_closed(wacall: Running) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    first = Agent(wacall, "ann")
    await first.sign_in()
    call_id = await queued_call(wacall)
    offer = await first.offer()
    second = Agent(wacall, "ann")
    error = await first.expect("error")
    assert error.error.code == "session_replaced"
    with pytest.raises(StopAsyncIteration):
        await first.next()
    assert (await second.expect("logged_in")).logged_in.agent.presence == m.AGENT_PRESENCE_AVAILABLE
    again = await second.offer()  # the offer still ringing is shown to the new session
    assert (again.offer_id, again.call_id) == (offer.offer_id, call_id)
    second.accept(offer.offer_id)
    await second.expect("presence")
    assert (await second.expect("connected")).connected.call_id == call_id
    second.close()


async def test_a_refused_session_request_is_an_error_event_and_the_session_goes_on(wacall: Running) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    ann = Agent(wacall, "ann")
    await ann.sign_in()
    ann.send(R(accept=R.Accept(offer_id="offer_404", media_stream=R.MediaStreamMedia())))
    assert (await ann.expect("error")).error.code == "offer_gone"
    ann.send(R(set_presence=R.SetPresence(presence=m.AGENT_PRESENCE_BUSY)))
    assert (await ann.expect("error")).error.code == "invalid_argument"
    ann.send(R(accept=R.Accept(offer_id="offer_1")))  # no media
    assert "accept.media" in (await ann.expect("error")).error.message
    ann.send(R(end_wrap_up=R.EndWrapUp()))
    assert (await ann.expect("error")).error.code == "not_wrapping_up"
    ann.send(R(hang_up=R.HangUp(call_id="call_x")))
    assert (await ann.expect("error")).error.code == "not_on_call"
    ann.send(R(login=R.Login(agent_id="bob")))
    assert (await ann.expect("error")).error.code == "already_logged_in"
    ann.send(R())
    assert (await ann.expect("error")).error.code == "invalid_argument"
    ann.send(R(set_presence=R.SetPresence(presence=m.AGENT_PRESENCE_AWAY)))
    assert (await ann.expect("presence")).presence.state == m.AGENT_PRESENCE_AWAY
    ann.close()


async def test_another_agents_offer_cannot_be_accepted_or_declined(wacall: Running) -> None:
    await put_queue(wacall, strategy=m.STRATEGY_LINEAR)
    await put_agent(wacall, "ann")
    await put_agent(wacall, "bob")
    ann, bob = Agent(wacall, "ann"), Agent(wacall, "bob")
    await ann.sign_in()
    await bob.sign_in()
    await queued_call(wacall)
    offer = await ann.offer()
    bob.decline(offer.offer_id)
    assert (await bob.expect("error")).error.code == "offer_gone"
    bob.accept(offer.offer_id)
    assert (await bob.expect("error")).error.code == "offer_gone"
    await ann.quiet()
    ann.close()
    bob.close()


async def test_missed_offers_in_a_row_pause_the_agent_with_a_presence_event(wacall: Running) -> None:
    await put_queue(wacall, ring_timeout=duration(10), max_missed_offers=2)
    await put_agent(wacall, "ann")
    ann = Agent(wacall, "ann")
    await ann.sign_in()
    await queued_call(wacall)
    await ann.offer()
    await wacall.advance(10)
    assert (await ann.expect("offer_withdrawn")).offer_withdrawn.why == m.OFFER_WITHDRAWN_WHY_TIMED_OUT
    await ann.quiet()  # not straight back: the queue's no-answer delay (5 s by default) first
    await wacall.advance(5)
    await ann.offer()  # a new round: the only agent gets the call again
    await wacall.advance(10)
    assert (await ann.expect("offer_withdrawn")).offer_withdrawn.why == m.OFFER_WITHDRAWN_WHY_TIMED_OUT
    paused = await ann.expect("presence")
    assert (paused.presence.state, paused.presence.why) == (m.AGENT_PRESENCE_AWAY, m.PRESENCE_WHY_MISSED_OFFERS)
    await wacall.advance(30)
    await ann.quiet()
    ann.close()


async def test_after_a_call_the_agent_wraps_up_until_it_ends_the_wrap_up_or_the_clock_does(wacall: Running) -> None:
    await put_queue(wacall, wrap_up=duration(30))
    await put_agent(wacall, "ann")
    ann = Agent(wacall, "ann")
    await ann.sign_in()
    for ending in ("end_wrap_up", "clock"):
        call_id = await queued_call(wacall)
        offer = await ann.offer()
        ann.accept(offer.offer_id)
        assert (await ann.expect("presence")).presence.state == m.AGENT_PRESENCE_BUSY
        assert (await ann.expect("connected")).connected.call_id == call_id
        ann.send(R(hang_up=R.HangUp(call_id=call_id)))
        ended = await ann.expect("call_ended")
        assert (ended.call_ended.call_id, ended.call_ended.outcome) == (call_id, pb.CALL_OUTCOME_ANSWERED)
        wrap = await ann.expect("presence")
        assert (wrap.presence.state, wrap.presence.why) == (m.AGENT_PRESENCE_WRAP_UP, m.PRESENCE_WHY_CALL_ENDED)
        assert (await wacall.get_call(call_id)).state == pb.CALL_STATE_ENDED
        if ending == "end_wrap_up":
            ann.send(R(end_wrap_up=R.EndWrapUp()))
        else:
            await wacall.advance(29)
            await ann.quiet()
            await wacall.advance(1)
        back = await ann.expect("presence")
        assert (back.presence.state, back.presence.why) == (m.AGENT_PRESENCE_AVAILABLE, m.PRESENCE_WHY_WRAP_UP_ENDED)
    assert (await agent_state(wacall, "ann")).calls_handled == 2
    ann.close()


async def test_a_caller_who_hangs_up_while_offered_withdraws_the_offer_as_abandoned(wacall: Running) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    ann = Agent(wacall, "ann")
    await ann.sign_in()
    call_id = await queued_call(wacall)
    offer = await ann.offer()
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call_id), metadata=wacall.metadata)
    withdrawn = await ann.expect("offer_withdrawn")
    assert (withdrawn.offer_withdrawn.offer_id, withdrawn.offer_withdrawn.why) == (
        offer.offer_id,
        m.OFFER_WITHDRAWN_WHY_ABANDONED,
    )
    stats = await stub(wacall).GetQueueStats(cc.GetQueueStatsRequest(queue_id="sales"), metadata=wacall.metadata)
    assert (stats.offered, stats.abandoned, stats.waiting) == (1, 1, 0)
    ann.close()


async def test_a_call_that_waits_the_maximum_overflows_and_then_is_ended_with_nowhere_to_go(wacall: Running) -> None:
    await put_queue(wacall, "overflow", max_wait=duration(60))
    await put_queue(wacall, max_wait=duration(30), overflow_queue_id="overflow")
    call_id = await queued_call(wacall)
    await wacall.advance(30)
    overflowed = await wait_until(
        lambda: contact_center_events(wacall),
        lambda events: any(e.kind == pb.EVENT_KIND_CALL_OVERFLOWED for e in events),
    )
    change = next(e for e in overflowed if e.kind == pb.EVENT_KIND_CALL_OVERFLOWED)
    assert (change.contact_center.queue_id, change.contact_center.to_queue_id) == ("sales", "overflow")
    assert (change.business_number, change.user_number) == (BUSINESS, USER)
    await wacall.advance(60)
    # No route installed its closing announcement: the call is ended.
    await wacall.wait_call(call_id, pb.CALL_STATE_ENDED)
    events = await contact_center_events(wacall)
    assert [e.contact_center.queue_id for e in events if e.kind == pb.EVENT_KIND_QUEUE_TIMED_OUT] == ["overflow"]


async def test_a_call_queued_for_a_queue_that_does_not_exist_is_ended_and_evented(wacall: Running) -> None:
    call_id = await live_call(wacall)
    await queues_of(wacall).enqueue(call_id, "nowhere")
    await wacall.wait_call(call_id, pb.CALL_STATE_ENDED)
    events = await contact_center_events(wacall)
    assert [(e.kind, e.contact_center.queue_id) for e in events] == [(pb.EVENT_KIND_QUEUE_MISSING, "nowhere")]


# --- stats and the event log ----------------------------------------------------------------------------------------


async def test_queue_stats_count_waiting_offered_answered_and_the_service_level(wacall: Running) -> None:
    await put_queue(wacall, service_level=duration(30))
    await put_agent(wacall, "ann")
    ann = Agent(wacall, "ann")
    await ann.expect("logged_in")
    await ann.expect("presence")
    await queued_call(wacall)
    await queued_call(wacall, user=OTHER_USER)
    await wacall.advance(40)
    stats = await stub(wacall).GetQueueStats(cc.GetQueueStatsRequest(queue_id="sales"), metadata=wacall.metadata)
    assert (stats.waiting, stats.offered, stats.answered, stats.agents_available) == (2, 2, 0, 0)
    assert stats.longest_wait.ToTimedelta() == timedelta(seconds=40)
    await ann.available()
    offer = await ann.offer()
    ann.accept(offer.offer_id)
    await ann.expect("presence")
    await ann.expect("connected")
    stats = await stub(wacall).GetQueueStats(cc.GetQueueStatsRequest(queue_id="sales"), metadata=wacall.metadata)
    assert (stats.waiting, stats.answered, stats.agents_busy) == (1, 1, 1)
    assert stats.average_wait.ToTimedelta() == timedelta(seconds=40)
    assert stats.service_level == 0.0  # the one call that left the queue waited longer than 30 s
    assert stats.service_level_threshold.ToTimedelta() == timedelta(seconds=30)
    error = await refused(
        stub(wacall).GetQueueStats(cc.GetQueueStatsRequest(queue_id="nope"), metadata=wacall.metadata)
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    ann.close()


async def test_contact_centre_changes_are_in_watch_events_and_a_resumed_watch_misses_nothing(
    wacall: Running,
) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    watch = wacall.calling.WatchEvents(pb.WatchEventsRequest(), metadata=wacall.metadata)
    seen: list[pb.Event] = []

    async def read_until(kind: int) -> None:
        async for event in watch:
            if event.HasField("contact_center"):
                seen.append(event)
            if event.kind == kind:
                return

    await asyncio.wait_for(read_until(pb.EVENT_KIND_AGENT_CHANGED), 10)
    watch.cancel()
    resume_after = seen[-1].cursor
    ann = Agent(wacall, "ann")
    await ann.sign_in()
    call_id = await queued_call(wacall)
    offer = await ann.offer()
    ann.accept(offer.offer_id)
    await ann.expect("presence")
    await ann.expect("connected")

    resumed = wacall.calling.WatchEvents(pb.WatchEventsRequest(after_cursor=resume_after), metadata=wacall.metadata)
    watch = resumed
    await asyncio.wait_for(read_until(pb.EVENT_KIND_CALL_ASSIGNED), 10)
    resumed.cancel()
    kinds = [e.kind for e in seen]
    assert kinds == [
        pb.EVENT_KIND_QUEUE_CHANGED,
        pb.EVENT_KIND_AGENT_CHANGED,
        pb.EVENT_KIND_AGENT_PRESENCE_CHANGED,  # AWAY, logged in
        pb.EVENT_KIND_AGENT_PRESENCE_CHANGED,  # AVAILABLE
        pb.EVENT_KIND_CALL_QUEUED,
        pb.EVENT_KIND_OFFER_MADE,
        pb.EVENT_KIND_AGENT_PRESENCE_CHANGED,  # BUSY
        pb.EVENT_KIND_CALL_ASSIGNED,
    ]
    assert seen[0].contact_center.queue.queue_id == "sales" and seen[1].contact_center.agent.agent_id == "ann"
    assert len({e.cursor for e in seen}) == len(seen)  # nothing repeated across the resume
    queued = seen[4]
    assert (queued.business_number, queued.user_number, queued.contact_center.call_id) == (BUSINESS, USER, call_id)
    assert queued.permission_state == pb.PERMISSION_STATE_PERMANENT
    assert seen[5].contact_center.offer_id == offer.offer_id and seen[5].contact_center.agent_id == "ann"
    ann.close()


async def test_queues_and_agents_survive_a_restart(make_service: Callable[..., Awaitable[Running]]) -> None:
    first = await make_service()
    await put_queue(first, ring_timeout=duration(45))
    await put_agent(first, "ann", skills={"spanish": 1})
    await first.service.stop(grace=0.5)
    second = await make_service()
    queue = await stub(second).GetQueue(cc.GetQueueRequest(queue_id="sales"), metadata=second.metadata)
    assert queue.ring_timeout.seconds == 45
    assert dict((await agent_state(second, "ann")).skills) == {"spanish": 1}


def failing_steps(wacall: Running, monkeypatch: pytest.MonkeyPatch, kind: type, times: int) -> list[object]:
    """Make the contact centre's next `times` steps of `kind` fail as with the database down; returns the list of
    attempts (every step of that kind tried)."""
    queues = queues_of(wacall)
    apply = queues.apply
    attempts: list[object] = []

    async def flaky(event: object, guard: object = None) -> object:
        if isinstance(event, kind):
            attempts.append(event)
            if len(attempts) <= times:
                raise StoreUnavailable("the database cannot be reached")
        return await apply(event, guard)  # type: ignore[arg-type]

    monkeypatch.setattr(queues, "apply", flaky)
    return attempts


async def test_a_failing_timer_step_is_retried_after_a_pause_not_in_a_loop(
    wacall: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put_queue(wacall, ring_timeout=duration(10))
    await put_agent(wacall, "ann")
    ann = Agent(wacall, "ann")
    await ann.sign_in()
    await queued_call(wacall)
    await ann.offer()
    attempts = failing_steps(wacall, monkeypatch, Tick, times=2)
    await wacall.advance(10)
    await asyncio.sleep(0.5)
    assert len(attempts) == 1  # then a pause (1 s, then 2 s), not one attempt after another
    # Once a tick goes through, the ring timeout fires as it should have.
    withdrawn = await ann.expect("offer_withdrawn", timeout=10)
    assert withdrawn.offer_withdrawn.why == m.OFFER_WITHDRAWN_WHY_TIMED_OUT and len(attempts) == 3
    ann.close()


async def test_a_call_end_the_contact_centre_failed_to_record_is_retried_until_the_agent_is_free(
    wacall: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    ann = Agent(wacall, "ann")
    await ann.sign_in()
    call_id = await queued_call(wacall)
    ann.accept((await ann.offer()).offer_id)
    await ann.expect("presence")
    await ann.expect("connected")
    attempts = failing_steps(wacall, monkeypatch, CallGone, times=1)
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call_id), metadata=wacall.metadata)
    assert (await ann.expect("call_ended", timeout=10)).call_ended.call_id == call_id
    assert (await ann.expect("presence")).presence.state == m.AGENT_PRESENCE_AVAILABLE
    assert len(attempts) == 2
    ann.close()


async def test_a_client_that_never_reads_its_events_gets_its_session_closed_not_the_servers_memory_filled(
    wacall: Running,
) -> None:
    await put_agent(wacall, "ann")
    session = await queues_of(wacall).login("ann")
    # A client streaming empty requests, never reading: each is refused with an event.
    for _ in range(3 * MAX_PENDING_EVENTS):
        await drive_request(session, R())
    assert session.overflowed
    events = [event async for event in session.events()]
    assert [type(e) for e in events] == [SessionError] and events[0].code == TOO_MANY_PENDING_EVENTS  # type: ignore[union-attr]
    await session.close()
    assert (await agent_state(wacall, "ann")).presence == m.AGENT_PRESENCE_OFFLINE


def crash(wacall: Running) -> None:
    """What a kill -9 leaves: the service stops without its sessions' agents being signed out."""
    queues_of(wacall).sessions.clear()


async def test_a_restart_after_a_crash_signs_out_the_agents_whose_sessions_this_process_held(
    make_service: Callable[..., Awaitable[Running]],
) -> None:
    first = await make_service(instance_name="desk")
    await put_queue(first)
    await put_agent(first, "ann")
    ann = Agent(first, "ann")
    await ann.sign_in()
    crash(first)
    await first.service.stop(grace=0.5)
    assert queues_of(first).state.agents["ann"].presence is Presence.AVAILABLE  # what the crash left

    second = await make_service(instance_name="desk")
    assert (await agent_state(second, "ann")).presence == m.AGENT_PRESENCE_OFFLINE
    await queued_call(second)
    assert not queues_of(second).state.offers  # no call rings a session that no longer exists
    ann.close()


async def test_the_agents_of_a_replica_that_stopped_renewing_its_heartbeat_go_offline_on_the_others(
    make_service: Callable[..., Awaitable[Running]],
) -> None:
    lost = await make_service(instance_name="lost", call_lease_seconds=1)
    alive = await make_service(instance_name="alive", call_lease_seconds=1)
    await put_queue(alive)
    for name in ("ann", "bob"):
        await put_agent(alive, name)
    ann, bob = Agent(lost, "ann"), Agent(alive, "bob")
    await ann.sign_in()
    await bob.sign_in()
    crash(lost)
    await lost.service.stop(grace=0.5)
    # One lease with no heartbeat from "lost", and one lease of "alive" reaching the store: a few seconds.
    await wait_until(
        lambda: agent_state(alive, "ann"), lambda agent: agent.presence == m.AGENT_PRESENCE_OFFLINE, timeout=15
    )
    assert (await agent_state(alive, "bob")).presence == m.AGENT_PRESENCE_AVAILABLE
    ann.close()
    bob.close()


async def test_deleting_an_agent_ends_its_session_with_a_reason(wacall: Running) -> None:
    await put_agent(wacall, "ann")
    ann = Agent(wacall, "ann")
    await ann.sign_in()
    await stub(wacall).DeleteAgent(cc.DeleteAgentRequest(agent_id="ann"), metadata=wacall.metadata)
    assert (await ann.expect("error")).error.code == "agent_deleted"
    with pytest.raises(StopAsyncIteration):
        await ann.next()


async def test_with_auth_on_a_session_needs_the_bearer_token_like_every_rpc(
    make_service: Callable[..., Awaitable[Running]],
) -> None:
    wacall = await make_service(auth_token="s3cret-token")
    await put_agent(wacall, "ann")
    anonymous = stub(wacall).AgentSession(iter([R(login=R.Login(agent_id="ann"))]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await anext(aiter(anonymous))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    ann = Agent(wacall, "ann")  # with the running service's metadata: the token
    await ann.sign_in()
    ann.close()
