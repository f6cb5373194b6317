"""Several replicas as one service: two `wacall serve` processes on one real PostgreSQL, sharing one standalone
simulator that delivers its webhooks round-robin to both.

The limits hold exactly across replicas, a webhook ingested by one is seen by the other at once, the event stream
read from one replica resumes through events both wrote, a call's control works from any replica (forwarded to the
call's owner, refused with CALL_OWNER_UNREACHABLE when the owner is gone), the owner acts on webhooks that landed
on another replica, a killed owner's calls are ended by another replica after the lease while a living owner's
are never touched, and a restart of PostgreSQL gives clear UNAVAILABLE errors, 503 to webhooks, and recovery
without restarting wacall (a call outliving a lease of outage is ended by its own owner, never by another). The
processes are shared by the module's tests (each test uses its own users); the PostgreSQL restart comes last.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import BUSINESS, duration, wait_until
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from postgres_server import PostgresServer
from test_sim_standalone import Process, free_port, start, webhook_url
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.upstreams.meta import wire
from wacall.upstreams.meta.accounts import MetaAccount
from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, sign

LEASE_SECONDS = 2.0
LEASE_ENDED = "the process holding the call stopped renewing its lease"
FENCED = "the process holding the call could not renew its lease"
DEADLINE = 30.0  # every RPC's deadline: an answer, never a hang


@dataclass
class Replica:
    name: str
    process: Process
    http_port: int

    @property
    def grpc(self) -> str:
        return self.process.field("grpc")

    @property
    def webhooks(self) -> str:
        return webhook_url(self.http_port)


@dataclass
class Cluster:
    tmp: Path
    db: str
    postgres: PostgresServer
    simulator: Process
    a: Replica
    b: Replica
    started: list[Process] = field(default_factory=list)

    def replica(self, name: str, http_port: int | None = None) -> Replica:
        """Another replica on the same database and simulator (not on the simulator's webhook list unless its
        port is one of the list's)."""
        port = http_port or free_port()
        process = start(
            "serve",
            "--grpc-address", "127.0.0.1:0",
            "--http-address", f"127.0.0.1:{port}",
            "--db", self.db,
            "--sim-address", self.simulator.field("grpc"),
            "--rtpengine", "off",
            "--clock", "system",
            "--instance-name", name,
            "--call-lease-seconds", str(LEASE_SECONDS),
            "--media-dir", str(self.tmp),
            "--recordings-dir", str(self.tmp),
            "--log-level", "WARNING",
        )  # fmt: skip
        self.started.append(process)
        return Replica(name, process, port)


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    ports = free_port(), free_port()
    simulator = start(
        "simulate",
        "--grpc-address", "127.0.0.1:0",
        "--http-address", "127.0.0.1:0",
        "--media-dir", str(tmp),
        "--webhook-url", webhook_url(ports[0]),
        "--webhook-url", webhook_url(ports[1]),
        "--log-level", "ERROR",
    )  # fmt: skip
    placeholder = Replica("", simulator, 0)
    running = Cluster(tmp, postgres_server.create_database(), postgres_server, simulator, placeholder, placeholder)
    running.started.append(simulator)
    try:
        running.a = running.replica("replica-a", ports[0])
        running.b = running.replica("replica-b", ports[1])
        yield running
    finally:
        for process in running.started:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()


@dataclass
class Stubs:
    sim: simulator_pb2_grpc.SimulatorServiceStub
    a: calling_pb2_grpc.CallingServiceStub
    b: calling_pb2_grpc.CallingServiceStub


@pytest.fixture
async def stubs(cluster: Cluster) -> AsyncIterator[Stubs]:
    async with (
        grpc.aio.insecure_channel(cluster.simulator.field("grpc")) as sim,
        grpc.aio.insecure_channel(cluster.a.grpc) as a,
        grpc.aio.insecure_channel(cluster.b.grpc) as b,
    ):
        yield Stubs(
            simulator_pb2_grpc.SimulatorServiceStub(sim),
            calling_pb2_grpc.CallingServiceStub(a),
            calling_pb2_grpc.CallingServiceStub(b),
        )


def details(error: grpc.aio.AioRpcError) -> dict[str, object]:
    """The google.rpc details an error carries, by type name."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error
    found: dict[str, object] = {}
    for packed in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                found[kind.__name__] = detail
    return found


async def permission(stub: calling_pb2_grpc.CallingServiceStub, user: str) -> pb.Permission:
    return await stub.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=user), timeout=10)


async def grant(stubs: Stubs, user: str) -> None:
    await stubs.sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=user,
                                                                  permanent=True))  # fmt: skip
    await wait_until(lambda: permission(stubs.a, user), lambda p: p.state == pb.PERMISSION_STATE_PERMANENT)


async def get_call(stub: calling_pb2_grpc.CallingServiceStub, call_id: str) -> pb.Call:
    return await stub.GetCall(pb.GetCallRequest(call_id=call_id), timeout=10)


# --- limits, webhooks and events across replicas ----------------------------------------------------------------------


async def test_a_thousand_permission_requests_for_one_pair_across_both_replicas_send_exactly_one(
    stubs: Stubs,
) -> None:
    user = "+34612340001"
    await stubs.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(user_number=user, on_permission_request=sim_pb.ACCEPT_PERMANENT)
    )
    request = pb.RequestPermissionRequest(business_number=BUSINESS, user_number=user, body_text="May we call you?")

    async def ask(stub: calling_pb2_grpc.CallingServiceStub) -> grpc.StatusCode:
        try:
            await stub.RequestPermission(request, timeout=DEADLINE)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = Counter(await asyncio.gather(*(ask(stubs.a if i % 2 else stubs.b) for i in range(1000))))
    assert codes[grpc.StatusCode.OK] == 1, codes
    # The others are refused by the rules (a request in flight or answered, the limit used), never by an error.
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
                          grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED}, codes  # fmt: skip
    messages = await stubs.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=user))
    assert len(messages.messages) == 1
    events = await stubs.b.ListEvents(
        pb.ListEventsRequest(business_number=BUSINESS, user_number=user, page_size=1000), timeout=DEADLINE
    )
    sent = [e for e in events.events if e.kind == pb.EVENT_KIND_PERMISSION_REQUEST_SENT]
    assert [e.attributes["message_id"] for e in sent] == [messages.messages[0].message_id]

    # The user's acceptance is one webhook, delivered to one replica: whichever saw it first, the other sees it at
    # once (one read, no waiting).
    first = await wait_until(
        lambda: asyncio.gather(permission(stubs.a, user), permission(stubs.b, user)),
        lambda seen: any(p.state == pb.PERMISSION_STATE_PERMANENT for p in seen),
    )
    if first[0].state != pb.PERMISSION_STATE_PERMANENT:
        assert (await permission(stubs.a, user)).state == pb.PERMISSION_STATE_PERMANENT
    else:
        assert (await permission(stubs.b, user)).state == pb.PERMISSION_STATE_PERMANENT


async def test_two_hundred_start_calls_for_one_pair_across_both_replicas_make_exactly_one_call_that_either_ends(
    stubs: Stubs,
) -> None:
    user = "+34612340002"
    await stubs.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(user_number=user, on_call=sim_pb.ANSWER, ring_duration=duration(60))
    )
    await grant(stubs, user)
    assert (await permission(stubs.b, user)).state == pb.PERMISSION_STATE_PERMANENT  # ingested once, seen by both
    route = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(60)))

    async def place(stub: calling_pb2_grpc.CallingServiceStub) -> pb.Call | grpc.StatusCode:
        try:
            return await stub.StartCall(
                pb.StartCallRequest(business_number=BUSINESS, user_number=user, route=route), timeout=DEADLINE
            )
        except grpc.aio.AioRpcError as error:
            return error.code()

    stubs_in_turn = [stubs.a if i % 2 else stubs.b for i in range(200)]
    results = await asyncio.gather(*(place(stub) for stub in stubs_in_turn))
    placed = [(r, stub) for r, stub in zip(results, stubs_in_turn, strict=True) if isinstance(r, pb.Call)]
    refused = Counter(r for r in results if not isinstance(r, pb.Call))
    assert len(placed) == 1, refused
    assert set(refused) <= {grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED}, refused
    call, owner = placed[0]
    listed = await stubs.a.ListCalls(pb.ListCallsRequest(business_number=BUSINESS, user_number=user), timeout=10)
    assert [c.call_id for c in listed.calls] == [call.call_id]

    # Ended through the replica that does not run it: forwarded to the owner, which tells the platform.
    other = stubs.b if owner is stubs.a else stubs.a
    ringing = await wait_until(lambda: get_call(other, call.call_id), lambda c: c.platform_call_id != "")
    ended = await other.EndCall(pb.EndCallRequest(call_id=call.call_id), timeout=DEADLINE)
    assert ended.state == pb.CALL_STATE_ENDED and ended.end_reason == "ended by the business"
    phone = await wait_until(
        lambda: stubs.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=ringing.platform_call_id)),
        lambda p: p.state == "ended",
    )
    assert phone.state == "ended"
    # Ended answers from the store on either replica, the same.
    again = await owner.EndCall(pb.EndCallRequest(call_id=call.call_id), timeout=DEADLINE)
    assert again.state == pb.CALL_STATE_ENDED and again.end_reason == ended.end_reason


async def test_watch_events_on_one_replica_resumes_through_events_both_wrote_missing_and_repeating_nothing(
    stubs: Stubs,
) -> None:
    users = [f"+3461235{index:04d}" for index in range(60)]
    start_at = (await stubs.a.ListEvents(pb.ListEventsRequest(page_size=1000), timeout=DEADLINE)).events
    after = start_at[-1].cursor if start_at else ""
    while True:  # the end of the log so far
        page = await stubs.a.ListEvents(pb.ListEventsRequest(after_cursor=after, page_size=1000), timeout=DEADLINE)
        if not page.events:
            break
        after = page.events[-1].cursor

    async def write(user: str, stub: calling_pb2_grpc.CallingServiceStub) -> None:
        await stub.RequestPermission(
            pb.RequestPermissionRequest(business_number=BUSINESS, user_number=user, body_text="May we call you?"),
            timeout=DEADLINE,
        )

    writing = asyncio.ensure_future(
        asyncio.gather(*(write(user, stubs.a if i % 2 else stubs.b) for i, user in enumerate(users)))
    )
    seen: list[pb.Event] = []
    cursor = after
    for _ in range(2):  # watch, disconnect after 25 events, resume from the last cursor seen
        watch = stubs.a.WatchEvents(pb.WatchEventsRequest(after_cursor=cursor))
        async for event in watch:
            seen.append(event)
            cursor = event.cursor
            if len(seen) % 25 == 0:
                break
        watch.cancel()
    await writing
    watch = stubs.a.WatchEvents(pb.WatchEventsRequest(after_cursor=cursor))
    ours = set(users)
    deadline = time.monotonic() + DEADLINE
    while sum(e.kind == pb.EVENT_KIND_PERMISSION_REQUEST_SENT and e.user_number in ours for e in seen) < len(users):
        event = await asyncio.wait_for(anext(aiter(watch)), deadline - time.monotonic())
        seen.append(event)
    watch.cancel()
    full = await stubs.b.ListEvents(pb.ListEventsRequest(after_cursor=after, page_size=1000), timeout=DEADLINE)
    # The log from the other replica, up to what the watcher reached: the same events, in the same order, once each.
    expected = [e.cursor for e in full.events if int(e.cursor) <= int(seen[-1].cursor)]
    assert [e.cursor for e in seen] == expected
    assert len(set(expected)) == len(expected) and len(expected) >= len(users)


# --- call control from any replica ------------------------------------------------------------------------------------


def tone_pcm(rate: int, seconds: float, hz: float = 440.0) -> bytes:
    samples = int(rate * seconds)
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * n / rate))) for n in range(samples))


async def test_call_media_through_a_replica_that_does_not_own_the_call_is_proxied_both_ways_to_its_owner(
    cluster: Cluster, stubs: Stubs
) -> None:
    # The owner receives no webhooks at all: the simulator delivers to the other two replicas, so the owner acts on
    # its call (the platform's answer, the pickup) from what they write in the store.
    owner = cluster.replica("replica-c")
    user = "+34612340003"
    await stubs.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(
            user_number=user, on_call=sim_pb.ANSWER, ring_duration=duration(0.3), talk_duration=duration(0), tone_hz=330
        )
    )
    await grant(stubs, user)
    async with grpc.aio.insecure_channel(owner.grpc) as channel:
        owners = calling_pb2_grpc.CallingServiceStub(channel)
        call = await owners.StartCall(
            pb.StartCallRequest(business_number=BUSINESS, user_number=user,
                                route=pb.Route(media_stream=pb.MediaStreamRoute())),
            timeout=DEADLINE,
        )  # fmt: skip
        await wait_until(lambda: get_call(stubs.a, call.call_id), lambda c: c.state == pb.CALL_STATE_CONNECTED)

        rate = 16000
        chunk = rate // 50 * 2  # 20 ms of 16-bit mono
        program = tone_pcm(rate, 3.0)
        hung_up = asyncio.Event()

        async def client_messages() -> AsyncIterator[pb.CallMediaRequest]:
            yield pb.CallMediaRequest(call_id=call.call_id, sample_rate=rate)
            for offset in range(0, len(program), chunk):
                yield pb.CallMediaRequest(audio=program[offset : offset + chunk])
                await asyncio.sleep(0.02)
            yield pb.CallMediaRequest(hangup=True)
            hung_up.set()

        heard, updates = 0, []
        stream = stubs.b.CallMedia(client_messages(), timeout=DEADLINE)
        async for response in stream:
            if response.WhichOneof("kind") == "audio":
                heard += len(response.audio)
            else:
                updates.append(response.call)
        assert hung_up.is_set()
        assert heard > rate * 2 * 1.0  # over a second of the user's voice came through the non-owner
        assert updates[-1].state == pb.CALL_STATE_ENDED
        assert updates[-1].end_reason == "ended by the media stream client"
        phone = await wait_until(
            lambda: stubs.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=updates[-1].platform_call_id)),
            lambda p: p.state == "ended",
        )
        assert phone.audible_frames_received > 50  # the program's audio reached the user through the owner
    owner.process.stop()


async def test_the_user_hanging_up_reaches_an_owner_that_receives_no_webhooks_and_it_releases_the_media(
    cluster: Cluster, stubs: Stubs
) -> None:
    owner = cluster.replica("replica-e")  # not on the simulator's webhook list: it learns of the end from the store
    user = "+34612340007"
    await stubs.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(
            user_number=user, on_call=sim_pb.ANSWER, ring_duration=duration(0), talk_duration=duration(0), tone_hz=330
        )
    )
    await grant(stubs, user)
    talking = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(600),
                                                         max_duration=duration(600)))  # fmt: skip
    async with grpc.aio.insecure_channel(owner.grpc) as channel:
        owners = calling_pb2_grpc.CallingServiceStub(channel)
        call = await owners.StartCall(
            pb.StartCallRequest(business_number=BUSINESS, user_number=user, route=talking), timeout=DEADLINE
        )
        live = await wait_until(partial(get_call, owners, call.call_id), lambda c: c.media.frames_received > 25,
                                timeout=20)  # fmt: skip
        await stubs.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=live.platform_call_id))
        # The terminate webhook lands on another replica; the owner closes the call's media and stores what it
        # carried (only the owner knows it), which every replica then reads.
        ended = await wait_until(
            partial(get_call, stubs.a, call.call_id),
            lambda c: c.state == pb.CALL_STATE_ENDED and c.media.frames_received > 0,
            timeout=10,
        )
        assert ended.outcome == pb.CALL_OUTCOME_ANSWERED and ended.end_reason.startswith("ended by the platform")
        assert ended.media.frames_received >= live.media.frames_received
        assert ended.media.frames_sent > 25  # the announcement played until the user hung up
    owner.process.stop()


async def test_a_killed_owners_call_is_refused_until_its_lease_ends_then_ended_while_a_living_owners_call_stays(
    cluster: Cluster, stubs: Stubs
) -> None:
    doomed = cluster.replica("replica-d")
    talking = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(600),
                                                         max_duration=duration(600)))  # fmt: skip
    users = "+34612340004", "+34612340005"
    for user in users:
        await stubs.sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(
                user_number=user,
                on_call=sim_pb.ANSWER,
                ring_duration=duration(0),
                talk_duration=duration(0),
                tone_hz=330,
            )
        )
        await grant(stubs, user)
    async with grpc.aio.insecure_channel(doomed.grpc) as channel:
        dooms = calling_pb2_grpc.CallingServiceStub(channel)
        orphan = await dooms.StartCall(
            pb.StartCallRequest(business_number=BUSINESS, user_number=users[0], route=talking), timeout=DEADLINE
        )
    living = await stubs.a.StartCall(
        pb.StartCallRequest(business_number=BUSINESS, user_number=users[1], route=talking), timeout=DEADLINE
    )
    for started in (orphan, living):
        await wait_until(partial(get_call, stubs.b, started.call_id), lambda c: c.state == pb.CALL_STATE_CONNECTED)

    doomed.process.proc.send_signal(signal.SIGKILL)
    doomed.process.proc.wait(timeout=10)
    killed_at = time.monotonic()
    # Its lease still runs: control of its call is refused, with who holds it and when to retry; nothing changes.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stubs.b.EndCall(pb.EndCallRequest(call_id=orphan.call_id), timeout=DEADLINE)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    found = details(refused.value)
    info, retry = found["ErrorInfo"], found["RetryInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo) and isinstance(retry, error_details_pb2.RetryInfo)
    assert info.reason == "CALL_OWNER_UNREACHABLE" and info.metadata["owner"].startswith("replica-d/")
    assert info.metadata["owner_address"] == doomed.grpc
    assert 0 < retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9 <= 2 * LEASE_SECONDS + 1
    assert (await get_call(stubs.a, orphan.call_id)).state == pb.CALL_STATE_CONNECTED

    ended = await wait_until(
        lambda: get_call(stubs.a, orphan.call_id), lambda c: c.state == pb.CALL_STATE_ENDED, timeout=30
    )
    waited = time.monotonic() - killed_at
    assert ended.end_reason == LEASE_ENDED and waited <= 2 * LEASE_SECONDS + 2, waited
    phone = await wait_until(
        lambda: stubs.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=ended.platform_call_id)),
        lambda p: p.state == "ended",
    )
    assert phone.state == "ended"  # the platform was told

    # The living owner's call goes on across several more lease periods, its audio flowing (the live counters are
    # the owner's; the other replica reads the same state from the store).
    heard = []
    until = time.monotonic() + 3 * LEASE_SECONDS
    while time.monotonic() < until:
        call, seen_elsewhere = await asyncio.gather(
            get_call(stubs.a, living.call_id), get_call(stubs.b, living.call_id)
        )
        for view in (call, seen_elsewhere):
            assert view.state == pb.CALL_STATE_CONNECTED and not view.end_reason, view
        heard.append(call.media.frames_received)
        await asyncio.sleep(0.25)
    assert heard[-1] - heard[0] >= 3 * LEASE_SECONDS * 40
    await stubs.b.EndCall(pb.EndCallRequest(call_id=living.call_id), timeout=DEADLINE)


# --- PostgreSQL restarted under load: the last test of the module ----------------------------------------------------


async def test_a_postgresql_restart_mid_load_gives_unavailable_and_503_then_recovers_losing_nothing_acknowledged(
    cluster: Cluster, stubs: Stubs
) -> None:
    config = await stubs.sim.GetPlatformConfig(sim_pb.GetPlatformConfigRequest())
    # A live call across the outage (3 s, longer than a lease): its owner cannot tell an outage from being cut off
    # alone, so it stops the call's media itself before another replica could take it, and ends it once the
    # database is back; the other replicas (who wait a lease after the database is back before ending anybody's
    # calls) never take it.
    user = "+34612340006"
    await stubs.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(
            user_number=user, on_call=sim_pb.ANSWER, ring_duration=duration(0), talk_duration=duration(0), tone_hz=330
        )
    )
    await grant(stubs, user)
    talking = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(600),
                                                         max_duration=duration(600)))  # fmt: skip
    live = await stubs.a.StartCall(
        pb.StartCallRequest(business_number=BUSINESS, user_number=user, route=talking), timeout=DEADLINE
    )
    await wait_until(partial(get_call, stubs.a, live.call_id), lambda c: c.media.frames_received > 0, timeout=20)
    business = await stubs.sim.ProvisionBusiness(sim_pb.ProvisionBusinessRequest(business_number=BUSINESS))
    account = MetaAccount(BUSINESS, business.phone_number_id, business.waba_id, config.access_token,
                          config.app_secret)  # fmt: skip
    answered: dict[str, str] = {}  # user → the message id an OK answer carried
    codes: Counter[grpc.StatusCode] = Counter()
    longest = 0.0
    phase = "before"
    by_phase: dict[str, Counter[grpc.StatusCode]] = {name: Counter() for name in ("before", "during", "after", "done")}

    async def load(lane: int, stub: calling_pb2_grpc.CallingServiceStub) -> None:
        nonlocal longest
        index = 0
        while phase != "done":
            user = f"+346124{lane:02d}{index:03d}"
            index += 1
            began, asked_while = time.monotonic(), phase
            try:
                sent = await stub.RequestPermission(
                    pb.RequestPermissionRequest(business_number=BUSINESS, user_number=user, body_text="May we?",
                                                idempotency_key=f"restart-{user}"),
                    timeout=10,
                )  # fmt: skip
                answered[user] = sent.message_id
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
                await asyncio.sleep(0.1)
            longest = max(longest, time.monotonic() - began)
            codes[code] += 1
            by_phase[asked_while][code] += 1

    lanes = [asyncio.ensure_future(load(lane, stubs.a if lane % 2 else stubs.b)) for lane in range(6)]
    async with httpx.AsyncClient(timeout=DEADLINE) as http:
        await asyncio.sleep(1.0)
        phase = "during"
        # pg_ctl waits for the server: off the test's event loop, whose clients time their RPCs meanwhile.
        await asyncio.to_thread(cluster.postgres.stop)
        await asyncio.sleep(3.0)
        # A webhook while the database is down: 503 from either replica, so the platform delivers it again later.
        body = json.dumps(wire.text_message(account, "34612499999", "wamid.restart", datetime.now(UTC), "hello"))
        for replica in (cluster.a, cluster.b):
            response = await http.post(
                replica.webhooks,
                content=body.encode(),
                headers={"Content-Type": "application/json",
                         SIGNATURE_HEADER: sign(config.app_secret.encode(), body.encode())},
            )  # fmt: skip
            assert response.status_code == 503, response.text
        await asyncio.to_thread(cluster.postgres.start)
        phase = "after"
        await wait_until(lambda: asyncio.sleep(0.2, by_phase["after"]), lambda c: c[grpc.StatusCode.OK] >= 20,
                         timeout=60)  # fmt: skip
        # Recovered without a restart of wacall: the same webhook is taken now.
        response = await http.post(
            cluster.a.webhooks,
            content=body.encode(),
            headers={"Content-Type": "application/json",
                     SIGNATURE_HEADER: sign(config.app_secret.encode(), body.encode())},
        )  # fmt: skip
        assert response.status_code == 200, response.text
    phase = "done"
    await asyncio.gather(*lanes)
    assert by_phase["before"][grpc.StatusCode.OK] > 0 and by_phase["during"][grpc.StatusCode.UNAVAILABLE] > 0
    # Clear errors only: UNAVAILABLE while the database was down, never UNKNOWN or INTERNAL, never past the deadline.
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert longest < 10, longest
    # Nothing acknowledged is lost: every OK answer's message is in the ledger and was sent by the platform.
    for user, message_id in answered.items():
        events = await stubs.b.ListEvents(pb.ListEventsRequest(business_number=BUSINESS, user_number=user),
                                          timeout=DEADLINE)  # fmt: skip
        sent = [e.attributes["message_id"] for e in events.events if e.kind == pb.EVENT_KIND_PERMISSION_REQUEST_SENT]
        assert sent == [message_id], (user, sent)
    # The owner ended its own call (no other replica took it), and the platform was told.
    ended = await wait_until(
        partial(get_call, stubs.b, live.call_id), lambda c: c.state == pb.CALL_STATE_ENDED, timeout=30
    )
    assert ended.end_reason == FENCED, ended
    phone = await wait_until(
        lambda: stubs.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=ended.platform_call_id)),
        lambda p: p.state == "ended",
    )
    assert phone.state == "ended"
    # Both replicas still serve, unrestarted.
    for replica in (cluster.a, cluster.b):
        assert replica.process.proc.poll() is None
