"""Every RPC, its request built field by field from arbitrary values, over real gRPC against a running service.

Each answer must be OK or a client error (INVALID_ARGUMENT, FAILED_PRECONDITION, ...), never UNKNOWN, INTERNAL,
UNAVAILABLE or DEADLINE_EXCEEDED; a refused request changes nothing (no event, the clock and the simulated user
as they were); and the service stays healthy. Besides arbitrary values of each field's type, the strategies mix in
the values known to have broken it: cursors like "²" or 20 digits, page tokens that decode to huge numbers,
Durations of ±10^15 s, SDP offers without ICE credentials, an audio_file that is not audio; and raw request bytes
that do not parse (corrupt wire format, a string field holding a lone surrogate).

The service runs on its own event loop in a thread so that hypothesis drives plain synchronous gRPC calls.
WACALL_FUZZ_EXAMPLES sets the examples per RPC (default 30); WACALL_FUZZ_REPORT names a JSON file that receives
how many inputs each RPC got and which status codes came back.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import BUSINESS, OTHER_USER, USER, Running, settings_for, start_service, stop_service
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc, contact_center_pb2_grpc
from wacall_client.v1 import contact_center_model_pb2 as model_pb
from wacall_client.v1 import contact_center_pb2 as cc_pb

from wacall.media.leg import AudioLeg

# The service's own thread uses `random` (aiortc, aioice) while hypothesis draws; hypothesis sees the global state
# move and suspects the strategy. Nothing here draws from `random`.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

EXAMPLES = int(os.environ.get("WACALL_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    database=None,
)
C = grpc.StatusCode
CLIENT_ERRORS = {
    C.INVALID_ARGUMENT,
    C.FAILED_PRECONDITION,
    C.NOT_FOUND,
    C.ALREADY_EXISTS,
    C.RESOURCE_EXHAUSTED,
    C.OUT_OF_RANGE,
    C.ABORTED,
    C.PERMISSION_DENIED,
    C.UNAUTHENTICATED,
}
SIM_USER = "+491711234567"  # DE: the user whose simulated behaviour the fuzz changes (nobody calls them)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)

# --- the running service, on its own loop -----------------------------------------------------------------------


@dataclass
class Served:
    running: Running
    loop: asyncio.AbstractEventLoop
    channel: grpc.Channel
    calling: calling_pb2_grpc.CallingServiceStub
    sim: simulator_pb2_grpc.SimulatorServiceStub
    clock: clock_pb2_grpc.ClockServiceStub
    health: health_pb2_grpc.HealthStub
    contact_center: contact_center_pb2_grpc.ContactCenterServiceStub
    files: dict[str, str]
    agent_offer: str
    cursor: int = 0
    last_refusal: str = ""
    codes: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )

    def new_events(self) -> list[pb.Event]:
        reply = self.calling.ListEvents(pb.ListEventsRequest(after_cursor=str(self.cursor), page_size=1000))
        if reply.events:
            self.cursor = int(reply.events[-1].cursor)
        return list(reply.events)

    def quiet(self) -> None:
        """Wait until the webhooks an accepted request set off have been recorded (no new event for a while)."""
        deadline = time.monotonic() + 5
        still = 0
        while still < 3 and time.monotonic() < deadline:
            still = 0 if self.new_events() else still + 1
            time.sleep(0.03)


def _write_files(directory: Path) -> dict[str, str]:
    tone = directory / "tone.wav"
    with wave.open(str(tone), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x10" * 800)
    not_audio = directory / "notes.wav"
    not_audio.write_text("this is not audio\n" * 20)
    empty = directory / "empty.mp3"
    empty.write_bytes(b"")
    return {"tone": str(tone), "not_audio": str(not_audio), "empty": str(empty), "directory": str(directory)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("fuzz")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-service", daemon=True)
    thread.start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)

    async def agent_offer() -> str:
        leg = AudioLeg(name="fuzz agent")
        try:
            return await leg.create_offer()
        finally:
            await leg.close()

    running: Running = run(start_service(settings_for(directory, inbound_route="media_stream")))
    channel = grpc.insecure_channel(running.addresses.grpc)
    served = Served(
        running,
        loop,
        channel,
        calling_pb2_grpc.CallingServiceStub(channel),
        simulator_pb2_grpc.SimulatorServiceStub(channel),
        clock_pb2_grpc.ClockServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
        contact_center_pb2_grpc.ContactCenterServiceStub(channel),
        _write_files(directory),
        run(agent_offer()),
    )
    served.sim.GrantPermission(
        sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER, permanent=True)
    )
    served.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(user_number=USER, on_call=sim_pb.NO_ANSWER, ring_duration=_duration(3600))
    )
    # A queue and an agent the fuzz's ids sometimes name (so that requests get past "not found").
    served.contact_center.PutQueue(model_pb.Queue(queue_id="fuzz_queue"))
    served.contact_center.PutAgent(model_pb.Agent(agent_id="fuzz_agent", queue_ids=["fuzz_queue"]))
    served.quiet()
    try:
        yield served
    finally:
        report = os.environ.get("WACALL_FUZZ_REPORT")
        if report:
            figures = {rpc: {"inputs": sum(c.values()), "codes": dict(c)} for rpc, c in sorted(served.codes.items())}
            Path(report).write_text(json.dumps(figures, indent=2) + "\n")
        end_open_calls(served)
        channel.close()
        run(stop_service(running))
        run(_finish_leftovers())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _finish_leftovers() -> None:
    """Whatever the stopped service's libraries still run (aiortc connecting a leg that was just closed) ends
    before the loop closes."""
    leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


def _duration(seconds: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


# --- strategies: arbitrary values of each field's type, plus the known-nasty ones -------------------------------

NASTY_TEXT = ["", " ", "²", "٣٤٦١٢٣٤٥٦٧٨", "\x00", "a\x00b", "\u202e", "\ufeff", "\U0010ffff", "𝟙𝟚𝟛", "x" * 5000]
texts = st.one_of(st.text(max_size=40), st.sampled_from(NASTY_TEXT), st.text(max_size=2000))
# Optional text fields: often left empty, so that the other fields' checks are reached too.
optional_texts = st.one_of(
    st.just(""), st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=20), texts
)
VALID_NUMBERS = [BUSINESS, USER, OTHER_USER, "447911123456", "+44 7911 123456"]
numbers = st.one_of(
    st.sampled_from(VALID_NUMBERS),
    st.sampled_from([*VALID_NUMBERS, "0044791112345", "+1", "+²4479", "+٣٤٦١٢٣٤٥٦٧٨"]),
    st.from_regex(r"\+?[0-9 ()-]{0,24}", fullmatch=True),
    texts,
)
cursors = st.one_of(
    st.sampled_from(["0", "1", "²", "1" * 20, "9" * 19, "-1", " 1", "0x10", "1e3", "١"]),
    st.integers(-(2**70), 2**70).map(str),
    texts,
)


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


page_tokens = st.one_of(
    st.builds(lambda micros, call_id: _token(f"{micros}:{call_id}".encode()), st.integers(-(2**80), 2**80), texts),
    st.builds(lambda micros: _token(f"{micros}:call_{'0' * 32}".encode()), st.integers(0, 2**80)),
    st.binary(max_size=64).map(_token),
    texts,
)
durations = st.one_of(
    st.builds(_duration, st.integers(-(10**6), 10**6), st.integers(-(10**9), 10**9)),
    st.builds(_duration, INT64, INT32),
    st.sampled_from([10**15, -(10**15), 315_576_000_001, 0, 1, 86400 * 31]).map(_duration),
)
doubles = st.floats(allow_nan=True, allow_infinity=True)
enum_values = st.one_of(st.integers(0, 5), INT32)


def sdp_offers(served: Served) -> st.SearchStrategy[str]:
    offer = served.agent_offer
    lines = offer.split("\r\n")
    without_ice = "\r\n".join(line for line in lines if not line.startswith(("a=ice-ufrag", "a=ice-pwd")))
    return st.one_of(
        st.just(offer),
        st.just(without_ice),
        st.lists(st.sampled_from(lines), max_size=len(lines) + 5).map("\r\n".join),
        st.builds(lambda keep, extra: "\r\n".join([*keep, extra]), st.lists(st.sampled_from(lines)), texts),
        texts,
        st.sampled_from(["v=0", "m=audio", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 opus/48000/2\r\n"]),
    )


def server_paths(served: Served) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([*served.files.values(), "/no/such.wav", "/dev/null", "/proc/self/mem", "/", "a\x00b"]),
        texts,
    )


# --- calling each RPC -------------------------------------------------------------------------------------------


def outcome(served: Served, rpc: str, call: Callable[[], object]) -> tuple[C, object]:
    try:
        response = call()
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        served.codes[rpc][code.name] += 1
        served.last_refusal = error.details() or ""  # type: ignore[attr-defined]
        assert code in CLIENT_ERRORS, f"{rpc}: {code.name} {served.last_refusal}"
        return code, None
    served.codes[rpc]["OK"] += 1
    return C.OK, response


# What the platform refused was sent: the ledger records the attempt (a failed request, a failed call) and what the
# refusal taught (138006: no permission), nothing else.
PLATFORM_REFUSAL_EVENTS = {
    pb.EVENT_KIND_PERMISSION_REQUEST_FAILED,
    pb.EVENT_KIND_CALL_UPDATED,
    pb.EVENT_KIND_PERMISSION_REVOKED,
}


def refused_changes_nothing(served: Served, code: C) -> None:
    if code is C.OK:
        served.quiet()
    elif served.last_refusal.startswith("the platform refused"):
        served.codes["(platform refusals, recorded)"]["events"] += 1
        assert {e.kind for e in served.new_events()} <= PLATFORM_REFUSAL_EVENTS
    else:
        assert served.new_events() == [], f"a refused request changed the ledger: {served.last_refusal}"


def streamed(call: Any, seconds: float = 0.3) -> None:
    """Read a server stream for a moment: a stream that stays open and healthy counts as OK."""
    timer = threading.Timer(seconds, call.cancel)
    timer.start()
    try:
        for _ in call:
            break
    except grpc.RpcError as error:
        if error.code() is not C.CANCELLED:  # type: ignore[attr-defined]
            raise
    finally:
        timer.cancel()
        call.cancel()


def still_healthy(served: Served) -> None:
    reply = served.health.Check(health_pb2.HealthCheckRequest(service="wacall.v1.CallingService"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    permission = served.calling.GetPermission(
        pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER), timeout=5
    )
    assert permission.user_number == USER


def end_open_calls(served: Served) -> None:
    for call in served.calling.ListCalls(pb.ListCallsRequest(page_size=20)).calls:
        if call.state != pb.CALL_STATE_ENDED:
            served.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
    served.quiet()


def pick(values: list[str], index: int) -> str:
    """One of the values the service holds now (the draw stays the same whatever they are: hypothesis replays)."""
    return values[index % len(values)] if values else ""


def known_call_ids(served: Served) -> list[str]:
    return [c.call_id for c in served.calling.ListCalls(pb.ListCallsRequest(page_size=5)).calls]


# --- CallingService ---------------------------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_get_permission(served: Served, data: st.DataObject) -> None:
    request = pb.GetPermissionRequest(
        business_number=data.draw(numbers), user_number=data.draw(numbers), reconcile=data.draw(st.booleans())
    )
    code, _ = outcome(served, "GetPermission", lambda: served.calling.GetPermission(request, timeout=10))
    refused_changes_nothing(served, code)
    still_healthy(served)


templates = st.builds(
    pb.Template,
    name=st.one_of(st.just("call_permission"), texts),
    language=st.one_of(st.just("en"), texts),
    body_parameters=st.lists(texts, max_size=60),
)


@FUZZ
@given(st.data())
def test_request_permission(served: Served, data: st.DataObject) -> None:
    request = pb.RequestPermissionRequest(
        business_number=data.draw(st.one_of(st.just(BUSINESS), numbers)),
        user_number=data.draw(st.one_of(st.just(SIM_USER), numbers)),
        body_text=data.draw(optional_texts),
        idempotency_key=data.draw(optional_texts),
    )
    if data.draw(st.booleans()):
        request.template.CopyFrom(data.draw(templates))
    code, _ = outcome(served, "RequestPermission", lambda: served.calling.RequestPermission(request, timeout=10))
    refused_changes_nothing(served, code)
    still_healthy(served)


@FUZZ
@given(st.data())
def test_watch_events(served: Served, data: st.DataObject) -> None:
    request = pb.WatchEventsRequest(
        business_number=data.draw(st.one_of(st.just(""), numbers)),
        user_number=data.draw(st.one_of(st.just(""), numbers)),
        after_cursor=data.draw(cursors),
        only_new=data.draw(st.booleans()),
    )
    code, _ = outcome(served, "WatchEvents", lambda: streamed(served.calling.WatchEvents(request)))
    refused_changes_nothing(served, code)
    still_healthy(served)


@FUZZ
@given(st.data())
def test_list_events(served: Served, data: st.DataObject) -> None:
    request = pb.ListEventsRequest(
        business_number=data.draw(st.one_of(st.just(""), numbers)),
        user_number=data.draw(st.one_of(st.just(""), numbers)),
        page_size=data.draw(st.one_of(st.integers(-5, 1100), INT32)),
        after_cursor=data.draw(cursors),
    )
    code, _ = outcome(served, "ListEvents", lambda: served.calling.ListEvents(request, timeout=10))
    refused_changes_nothing(served, code)
    still_healthy(served)


def routes(served: Served) -> st.SearchStrategy[pb.Route]:
    announcement = st.builds(
        lambda audio_file, tone_hz, tone, record_to, limit: pb.Route(
            announcement=pb.AnnouncementRoute(
                audio_file=audio_file, tone_hz=tone_hz, tone_duration=tone, record_to=record_to, max_duration=limit
            )
        ),
        st.one_of(st.just(""), server_paths(served)),
        st.one_of(st.just(0.0), st.just(440.0), doubles),
        st.one_of(st.none(), durations),
        st.one_of(st.just(""), server_paths(served), st.just(served.files["directory"] + "/rec.wav")),
        st.one_of(st.none(), durations),
    )
    webrtc = st.builds(
        lambda offer, passthrough, ice: pb.Route(
            webrtc=pb.WebRtcRoute(offer_sdp=offer, passthrough=passthrough, ice_servers=ice)
        ),
        sdp_offers(served),
        st.booleans(),
        st.lists(st.one_of(st.just("stun:127.0.0.1:3478"), st.just("turn:x.example"), texts), max_size=10),
    )
    stream = st.builds(
        lambda limit: pb.Route(media_stream=pb.MediaStreamRoute(max_duration=limit)), st.one_of(st.none(), durations)
    )
    plain = st.sampled_from([pb.Route(), pb.Route(media_stream=pb.MediaStreamRoute())])
    return st.one_of(plain, announcement, webrtc, stream)


@FUZZ
@given(st.data())
def test_start_call(served: Served, data: st.DataObject) -> None:
    request = pb.StartCallRequest(
        business_number=data.draw(st.one_of(st.just(BUSINESS), numbers)),
        user_number=data.draw(st.one_of(st.just(USER), numbers)),
        route=data.draw(routes(served)),
        biz_opaque_callback_data=data.draw(optional_texts),
        idempotency_key=data.draw(optional_texts),
    )
    code, _ = outcome(served, "StartCall", lambda: served.calling.StartCall(request, timeout=20))
    refused_changes_nothing(served, code)
    if code is C.OK:
        end_open_calls(served)
    still_healthy(served)


call_ids = st.one_of(st.just("call_" + "0" * 32), texts)


@FUZZ
@given(st.data())
def test_get_and_end_call(served: Served, data: st.DataObject) -> None:
    call_id = data.draw(st.one_of(st.integers(0, 4).map(lambda i: pick(known_call_ids(served), i)), call_ids))
    code, _ = outcome(served, "GetCall", lambda: served.calling.GetCall(pb.GetCallRequest(call_id=call_id), timeout=10))
    refused_changes_nothing(served, code)
    code, _ = outcome(served, "EndCall", lambda: served.calling.EndCall(pb.EndCallRequest(call_id=call_id), timeout=10))
    refused_changes_nothing(served, code)
    still_healthy(served)


@FUZZ
@given(st.data())
def test_list_calls(served: Served, data: st.DataObject) -> None:
    request = pb.ListCallsRequest(
        business_number=data.draw(st.one_of(st.just(""), numbers)),
        user_number=data.draw(st.one_of(st.just(""), numbers)),
        page_size=data.draw(st.one_of(st.integers(-5, 600), INT32)),
        page_token=data.draw(page_tokens),
    )
    code, _ = outcome(served, "ListCalls", lambda: served.calling.ListCalls(request, timeout=10))
    refused_changes_nothing(served, code)
    still_healthy(served)


def live_user_call(served: Served) -> str:
    """A connected call on the media_stream route (the user calls; the service answers with the inbound route)."""

    def connected() -> str | None:
        # The manual clock stands still: every call has the same created_at, so look at them all.
        calls = served.calling.ListCalls(pb.ListCallsRequest(user_number=OTHER_USER, page_size=500)).calls
        return next((c.call_id for c in calls if c.state == pb.CALL_STATE_CONNECTED), None)

    live = connected()
    if live is not None:
        return live
    deadline = time.monotonic() + 10
    while True:
        try:
            served.sim.PlaceUserCall(sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=OTHER_USER))
            break
        except grpc.RpcError as error:  # the phone has not heard yet that the last call ended
            assert error.code() is C.ALREADY_EXISTS and time.monotonic() < deadline  # type: ignore[attr-defined]
            time.sleep(0.05)
    while (live := connected()) is None:
        assert time.monotonic() < deadline, "the user's call was not answered"
        time.sleep(0.05)
    served.quiet()
    return live


media_requests = st.one_of(
    st.builds(lambda audio: pb.CallMediaRequest(audio=audio), st.binary(max_size=4000)),
    st.builds(lambda call_id, rate: pb.CallMediaRequest(call_id=call_id, sample_rate=rate), call_ids, INT32),
    st.builds(lambda rate: pb.CallMediaRequest(sample_rate=rate), INT32),
    st.just(pb.CallMediaRequest(hangup=False)),
)


@FUZZ
@given(st.data())
def test_call_media(served: Served, data: st.DataObject) -> None:
    live = live_user_call(served)
    first = pb.CallMediaRequest(
        call_id=data.draw(st.one_of(st.just(live), call_ids)),
        sample_rate=data.draw(st.one_of(st.sampled_from([0, 8000, 16000, 24000, 48000]), INT32)),
    )
    if data.draw(st.booleans()):
        first = data.draw(media_requests)
    rest = data.draw(st.lists(media_requests, max_size=8))
    if data.draw(st.integers(0, 9)) == 0:
        rest.append(pb.CallMediaRequest(hangup=True))
    code, _ = outcome(served, "CallMedia", lambda: streamed(served.calling.CallMedia(iter([first, *rest])), 0.4))
    ended = served.calling.GetCall(pb.GetCallRequest(call_id=live)).state == pb.CALL_STATE_ENDED
    if not ended:
        refused_changes_nothing(served, code)
    else:
        served.quiet()
    still_healthy(served)


# --- ContactCenterService ---------------------------------------------------------------------------------------

KNOWN_IDS = ["fuzz_queue", "fuzz_agent", "q1", "a.b-c_d"]
ids = st.one_of(st.sampled_from(KNOWN_IDS), st.from_regex(r"[A-Za-z0-9._-]{0,70}", fullmatch=True), texts)
levels = st.dictionaries(st.one_of(ids, texts), st.one_of(st.integers(-2, 1002), INT32), max_size=40)
optional_durations = st.one_of(st.none(), durations)


def hold_audio(served: Served) -> st.SearchStrategy[model_pb.HoldAudio | None]:
    return st.one_of(
        st.none(),
        st.builds(lambda path: model_pb.HoldAudio(audio_file=path), server_paths(served)),
        st.builds(lambda hz: model_pb.HoldAudio(tone_hz=hz), st.one_of(st.integers(-1, 20001), INT32)),
    )


def queues(served: Served) -> st.SearchStrategy[model_pb.Queue]:
    return st.builds(
        lambda queue_id, name, strategy, skills, ring, wait, wrap, level, missed, overflow, hold: model_pb.Queue(
            queue_id=queue_id,
            name=name,
            strategy=strategy,
            required_skills=skills,
            ring_timeout=ring,
            max_wait=wait,
            wrap_up=wrap,
            service_level=level,
            max_missed_offers=missed,
            overflow_queue_id=overflow,
            hold_audio=hold,
        ),
        st.one_of(st.just("q1"), ids),
        optional_texts,
        enum_values,
        levels,
        optional_durations,
        optional_durations,
        optional_durations,
        optional_durations,
        st.one_of(st.integers(-2, 1002), INT32),
        st.one_of(st.just(""), ids),
        hold_audio(served),
    )


agents = st.builds(
    lambda agent_id, name, skills, queue_ids, penalties, presence, handled: model_pb.Agent(
        agent_id=agent_id,
        name=name,
        skills=skills,
        queue_ids=queue_ids,
        queue_penalties=penalties,
        presence=presence,
        calls_handled=handled,
    ),
    st.one_of(st.just("a1"), ids),
    optional_texts,
    levels,
    st.lists(ids, max_size=70),
    levels,
    enum_values,
    INT32,
)


@FUZZ
@given(st.data())
def test_put_queue(served: Served, data: st.DataObject) -> None:
    queue = data.draw(queues(served))
    code, _ = outcome(served, "PutQueue", lambda: served.contact_center.PutQueue(queue, timeout=10))
    refused_changes_nothing(served, code)
    still_healthy(served)


@FUZZ
@given(agents)
def test_put_agent(served: Served, agent: model_pb.Agent) -> None:
    code, _ = outcome(served, "PutAgent", lambda: served.contact_center.PutAgent(agent, timeout=10))
    refused_changes_nothing(served, code)
    still_healthy(served)


@FUZZ
@given(st.data())
def test_contact_center_reads_and_deletes(served: Served, data: st.DataObject) -> None:
    stub = served.contact_center
    queue_id, agent_id = data.draw(ids), data.draw(ids)
    calls: dict[str, Callable[[], object]] = {
        "GetQueue": lambda: stub.GetQueue(cc_pb.GetQueueRequest(queue_id=queue_id), timeout=10),
        "ListQueues": lambda: stub.ListQueues(cc_pb.ListQueuesRequest(), timeout=10),
        "GetAgent": lambda: stub.GetAgent(cc_pb.GetAgentRequest(agent_id=agent_id), timeout=10),
        "ListAgents": lambda: stub.ListAgents(cc_pb.ListAgentsRequest(queue_id=queue_id), timeout=10),
        "GetQueueStats": lambda: stub.GetQueueStats(cc_pb.GetQueueStatsRequest(queue_id=queue_id), timeout=10),
        # The fuzz's own queue and agent stay (a refusal or a deletion of anything else is fine).
        "DeleteQueue": lambda: stub.DeleteQueue(
            cc_pb.DeleteQueueRequest(queue_id="" if queue_id == "fuzz_queue" else queue_id), timeout=10
        ),
        "DeleteAgent": lambda: stub.DeleteAgent(
            cc_pb.DeleteAgentRequest(agent_id="" if agent_id == "fuzz_agent" else agent_id), timeout=10
        ),
    }
    rpc = data.draw(st.sampled_from(sorted(calls)))
    code, _ = outcome(served, rpc, calls[rpc])
    refused_changes_nothing(served, code)
    still_healthy(served)


R = cc_pb.AgentSessionRequest
session_requests = st.one_of(
    st.builds(lambda agent_id: R(login=R.Login(agent_id=agent_id)), ids),
    st.builds(lambda presence: R(set_presence=R.SetPresence(presence=presence)), enum_values),
    st.builds(lambda offer_id: R(accept=R.Accept(offer_id=offer_id, media_stream=R.MediaStreamMedia())), texts),
    st.builds(
        lambda offer_id, sdp: R(accept=R.Accept(offer_id=offer_id, webrtc=R.WebRtcMedia(offer_sdp=sdp))), texts, texts
    ),
    st.builds(lambda offer_id: R(accept=R.Accept(offer_id=offer_id)), texts),
    st.builds(lambda offer_id: R(decline=R.Decline(offer_id=offer_id)), texts),
    st.builds(lambda call_id: R(hang_up=R.HangUp(call_id=call_id)), call_ids),
    st.just(R(end_wrap_up=R.EndWrapUp())),
    st.just(R()),
)


@FUZZ
@given(st.data())
def test_agent_session(served: Served, data: st.DataObject) -> None:
    first = data.draw(st.one_of(st.just(R(login=R.Login(agent_id="fuzz_agent"))), session_requests))
    rest = data.draw(st.lists(session_requests, max_size=8))
    code, _ = outcome(
        served, "AgentSession", lambda: streamed(served.contact_center.AgentSession(iter([first, *rest])), 0.3)
    )
    refused_changes_nothing(served, code)
    still_healthy(served)
    # However the session went, it has ended: the agent is OFFLINE again, so the next example starts alike.
    agent = served.contact_center.GetAgent(cc_pb.GetAgentRequest(agent_id="fuzz_agent"), timeout=10)
    deadline = time.monotonic() + 5
    while agent.presence != model_pb.AGENT_PRESENCE_OFFLINE and time.monotonic() < deadline:
        time.sleep(0.02)
        agent = served.contact_center.GetAgent(cc_pb.GetAgentRequest(agent_id="fuzz_agent"), timeout=10)
    assert agent.presence == model_pb.AGENT_PRESENCE_OFFLINE
    served.quiet()


# --- SimulatorService -------------------------------------------------------------------------------------------


def behavior_of(served: Served, user: str) -> pb.UserBehavior | None:
    try:
        return served.sim.GetUserBehavior(sim_pb.GetUserBehaviorRequest(user_number=user))
    except grpc.RpcError:
        return None


@FUZZ
@given(st.data())
def test_set_user_behavior(served: Served, data: st.DataObject) -> None:
    user = data.draw(st.one_of(st.just(SIM_USER), texts))
    request = sim_pb.SetUserBehaviorRequest(
        user_number=user,
        on_permission_request=data.draw(enum_values),
        reply_delay=data.draw(durations),
        outdated_client=data.draw(st.booleans()),
        wa_id=data.draw(st.one_of(st.just(""), st.just(SIM_USER[1:]), texts)),
        on_call=data.draw(enum_values),
        ring_duration=data.draw(durations),
        talk_duration=data.draw(durations),
        tone_hz=data.draw(doubles),
        say_file=data.draw(st.one_of(st.just(""), server_paths(served))),
    )
    before = behavior_of(served, user)
    code, _ = outcome(served, "SetUserBehavior", lambda: served.sim.SetUserBehavior(request, timeout=10))
    refused_changes_nothing(served, code)
    if code is not C.OK:
        assert behavior_of(served, user) == before
    still_healthy(served)


@FUZZ
@given(st.data())
def test_simulated_user_actions(served: Served, data: st.DataObject) -> None:
    business = data.draw(st.one_of(st.just(BUSINESS), numbers))
    user = data.draw(st.one_of(st.just(SIM_USER), texts, numbers.filter(lambda n: n not in (USER, OTHER_USER))))
    action = data.draw(
        st.sampled_from(["message", "revoke", "grant", "list", "platform", "user", "restrict", "provision"])
    )
    calls: dict[str, Callable[[], object]] = {
        "message": lambda: served.sim.SendUserMessage(
            sim_pb.SendUserMessageRequest(business_number=business, user_number=user, text=data.draw(texts))
        ),
        "revoke": lambda: served.sim.RevokePermission(
            sim_pb.RevokePermissionRequest(business_number=business, user_number=user)
        ),
        "grant": lambda: served.sim.GrantPermission(
            sim_pb.GrantPermissionRequest(
                business_number=business, user_number=user, permanent=data.draw(st.booleans())
            )
        ),
        "list": lambda: served.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=user, business_number=business)),
        "platform": lambda: served.sim.GetPlatformPermission(
            sim_pb.GetPlatformPermissionRequest(business_number=business, user_number=user)
        ),
        "user": lambda: served.sim.GetUserBehavior(sim_pb.GetUserBehaviorRequest(user_number=user)),
        "restrict": lambda: served.sim.RestrictBusiness(
            sim_pb.RestrictBusinessRequest(
                business_number=data.draw(st.one_of(texts, st.just("+33612345678"))), duration=data.draw(durations)
            )
        ),
        "provision": lambda: served.sim.ProvisionBusiness(sim_pb.ProvisionBusinessRequest(business_number=business)),
    }
    code, _ = outcome(served, f"Simulator.{action}", calls[action])
    refused_changes_nothing(served, code)
    still_healthy(served)


@FUZZ
@given(st.data())
def test_phone_calls(served: Served, data: st.DataObject) -> None:
    known = [c.platform_call_id for c in served.calling.ListCalls(pb.ListCallsRequest(page_size=3)).calls]
    platform_call_id = data.draw(st.one_of(st.integers(0, 2).map(lambda i: pick(known, i)), texts))
    code, _ = outcome(
        served,
        "GetPhoneCall",
        lambda: served.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=platform_call_id)),
    )
    refused_changes_nothing(served, code)
    user = data.draw(st.one_of(texts, numbers.filter(lambda n: n not in (USER, OTHER_USER))))
    code, placed = outcome(
        served,
        "PlaceUserCall",
        lambda: served.sim.PlaceUserCall(
            sim_pb.PlaceUserCallRequest(
                business_number=data.draw(st.one_of(st.just(BUSINESS), numbers)), user_number=user
            )
        ),
    )
    if isinstance(placed, sim_pb.PhoneCall):
        served.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=placed.platform_call_id))
    refused_changes_nothing(served, code)
    hang_up = data.draw(st.one_of(texts, st.just("wacid.SIMNOPE")))
    code, _ = outcome(served, "HangUp", lambda: served.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=hang_up)))
    refused_changes_nothing(served, code)
    still_healthy(served)


# --- ClockService -----------------------------------------------------------------------------------------------


@FUZZ
@given(durations)
def test_clock_advance(served: Served, duration: duration_pb2.Duration) -> None:
    before = served.clock.Now(clock_pb2.NowRequest()).now
    code, _ = outcome(
        served, "Advance", lambda: served.clock.Advance(clock_pb2.AdvanceRequest(duration=duration), timeout=20)
    )
    refused_changes_nothing(served, code)
    if code is not C.OK:
        assert served.clock.Now(clock_pb2.NowRequest()).now == before
    still_healthy(served)


# --- requests that do not parse ---------------------------------------------------------------------------------

UNARY_METHODS: list[tuple[str, Message]] = [
    ("/wacall.v1.CallingService/GetPermission", pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER)),
    ("/wacall.v1.CallingService/RequestPermission", pb.RequestPermissionRequest(business_number=BUSINESS)),
    ("/wacall.v1.CallingService/ListEvents", pb.ListEventsRequest(after_cursor="1")),
    ("/wacall.v1.CallingService/GetPolicy", pb.GetPolicyRequest()),
    ("/wacall.v1.CallingService/StartCall", pb.StartCallRequest(business_number=BUSINESS)),
    ("/wacall.v1.CallingService/GetCall", pb.GetCallRequest(call_id="x")),
    ("/wacall.v1.CallingService/EndCall", pb.EndCallRequest(call_id="x")),
    ("/wacall.v1.CallingService/ListCalls", pb.ListCallsRequest(page_size=1)),
    ("/wacall.sim.v1.SimulatorService/SetUserBehavior", sim_pb.SetUserBehaviorRequest(user_number=SIM_USER)),
    ("/wacall.sim.v1.SimulatorService/GetUserBehavior", sim_pb.GetUserBehaviorRequest(user_number=SIM_USER)),
    ("/wacall.sim.v1.SimulatorService/SendUserMessage", sim_pb.SendUserMessageRequest(business_number=BUSINESS)),
    ("/wacall.sim.v1.SimulatorService/GetPhoneCall", sim_pb.GetPhoneCallRequest(platform_call_id="x")),
    ("/wacall.sim.v1.SimulatorService/HangUp", sim_pb.HangUpRequest(platform_call_id="x")),
    ("/wacall.testing.v1.ClockService/Advance", clock_pb2.AdvanceRequest()),
    ("/wacall.v1.ContactCenterService/PutQueue", model_pb.Queue(queue_id="q1")),
    ("/wacall.v1.ContactCenterService/GetQueue", cc_pb.GetQueueRequest(queue_id="q1")),
    ("/wacall.v1.ContactCenterService/ListQueues", cc_pb.ListQueuesRequest()),
    ("/wacall.v1.ContactCenterService/DeleteQueue", cc_pb.DeleteQueueRequest(queue_id="q1")),
    ("/wacall.v1.ContactCenterService/PutAgent", model_pb.Agent(agent_id="a1")),
    ("/wacall.v1.ContactCenterService/GetAgent", cc_pb.GetAgentRequest(agent_id="a1")),
    ("/wacall.v1.ContactCenterService/ListAgents", cc_pb.ListAgentsRequest(queue_id="q1")),
    ("/wacall.v1.ContactCenterService/DeleteAgent", cc_pb.DeleteAgentRequest(agent_id="a1")),
    ("/wacall.v1.ContactCenterService/GetQueueStats", cc_pb.GetQueueStatsRequest(queue_id="q1")),
]
# Field 1 of every request above that has fields is a string: these bytes make it invalid UTF-8 (a lone surrogate
# encoded as UTF-8 would be, CESU-style) or truncate the wire format.
BROKEN_FIELDS = [b"\x0a\x03\xed\xa0\x80", b"\x0a\x02\xff\xfe", b"\x0a\x05ab", b"\xff\xff\xff\xff", b"\x08"]


def raw_bytes(served: Served) -> st.SearchStrategy[tuple[str, bytes]]:
    return st.tuples(
        st.sampled_from(UNARY_METHODS),
        st.one_of(st.sampled_from(BROKEN_FIELDS), st.binary(max_size=64)),
        st.booleans(),
    ).map(lambda t: (t[0][0], t[0][1].SerializeToString() + t[1] if t[2] else t[1] + t[0][1].SerializeToString()))


@FUZZ
@given(st.data())
def test_requests_that_do_not_parse(served: Served, data: st.DataObject) -> None:
    method, raw = data.draw(raw_bytes(served))
    call = served.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    code, _ = outcome(served, f"raw {method.rsplit('/', 1)[1]}", lambda: call(raw, timeout=20))
    refused_changes_nothing(served, code)
    if code is C.OK:
        end_open_calls(served)
    still_healthy(served)


def test_a_broken_string_is_invalid_argument_on_every_method_including_streams(served: Served) -> None:
    for method, request in UNARY_METHODS:
        if not request.DESCRIPTOR.fields:
            continue  # field 1 is unknown to GetPolicyRequest: skipped, as protobuf does with unknown fields
        call = served.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        raw = request.SerializeToString() + BROKEN_FIELDS[0]
        code, _ = outcome(served, "broken string", lambda call=call, raw=raw: call(raw))  # type: ignore[misc]
        assert code is C.INVALID_ARGUMENT, method
    watch = served.channel.unary_stream("/wacall.v1.CallingService/WatchEvents", None, None)
    with pytest.raises(grpc.RpcError) as caught:
        list(watch(BROKEN_FIELDS[0], timeout=10))
    assert caught.value.code() is C.INVALID_ARGUMENT  # type: ignore[attr-defined]
    for stream in ("/wacall.v1.CallingService/CallMedia", "/wacall.v1.ContactCenterService/AgentSession"):
        media = served.channel.stream_stream(stream, None, None)
        with pytest.raises(grpc.RpcError) as caught:
            list(media(iter([BROKEN_FIELDS[0]]), timeout=10))
        assert caught.value.code() is C.INVALID_ARGUMENT, stream  # type: ignore[attr-defined]
    assert served.new_events() == []
    still_healthy(served)
