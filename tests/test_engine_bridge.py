"""The `webrtc` bridge through rtpengine: the WhatsApp leg and the agent's leg both live in the media engine, and no
audio passes through wacall. Real audio both ways between the simulator's phone (an aiortc peer) and an aiortc
agent, rtpengine's own counters and session count, every way such a call ends, and the settings that choose the
bridge."""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from aiortc import RTCPeerConnection
from conftest import BUSINESS, USER, Running, eventually, refused, settings_for, wait_until
from test_media_routes import phone_of
from test_process import ServeProcess
from test_reroute import plan, service_calls
from test_rtpengine import Heard, pitch
from test_sdp import platform_of
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.calls.service import EngineBridgedRoute, RerouteRefused
from wacall.config import ConfigError, load_settings
from wacall.media.engine_leg import EngineBridgeLeg
from wacall.media.engine_process import free_udp_port
from wacall.media.leg import AudioLeg
from wacall.media.platform_leg import WebRtcPlatformLeg
from wacall.media.rtpengine import NgClient
from wacall.media.tracks import ToneSource

Agent = Callable[[Running], Awaitable[tuple[pb.Call, Heard]]]


@pytest.fixture
async def wacall(make_service: Callable[..., Awaitable[Running]]) -> Running:
    """A service that bridges webrtc calls in a local rtpengine (the default where one is installed)."""
    return await make_service(rtpengine="")


def engine_of(wacall: Running) -> NgClient:
    pool = wacall.service.engines
    assert pool is not None, "the service runs no media engine"
    return pool.engines[0]


@pytest.fixture
async def agents() -> AsyncIterator[Agent]:
    """Start a `webrtc` call from an aiortc agent that says a 300 Hz tone; the agent's legs close at teardown."""
    legs: list[AudioLeg] = []

    async def call_from_an_agent(wacall: Running) -> tuple[pb.Call, Heard]:
        heard = Heard()
        agent = AudioLeg(name="agent", source=ToneSource(300, amplitude=0.3), handlers=[heard])
        legs.append(agent)
        offer = await agent.create_offer()
        call = await wacall.start_call(route=pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=offer)))
        assert call.route == "webrtc" and "a=fingerprint:sha-256" in call.webrtc_answer_sdp
        await agent.apply_answer(call.webrtc_answer_sdp)
        return call, heard

    yield call_from_an_agent
    for leg in legs:
        await leg.close()


def peer_connections() -> int:
    gc.collect()
    return sum(isinstance(o, RTCPeerConnection) and o.connectionState != "closed" for o in gc.get_objects())


async def test_a_webrtc_call_is_relayed_by_rtpengine_with_audio_both_ways_and_none_through_wacall(
    wacall: Running, agents: Agent
) -> None:
    engine = engine_of(wacall)
    sessions_before = await engine.session_count()
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    call, heard_by_agent = await agents(wacall)

    # The user's phone hears the agent, and the agent hears the user's 880 Hz tone at its pitch.
    phone = await wait_until(lambda: phone_of(wacall, call), lambda p: p.audible_frames_received > 40, 10)
    assert phone.mean_level_received > 0.05
    await eventually(lambda: len(heard_by_agent.frames) > 40, what="the user's voice at the agent")
    assert pitch(b"".join(heard_by_agent.frames[-40:])) == pytest.approx(880, rel=0.03)

    # Both legs live in the engine: one call there, two parties, counters growing from each.
    session = service_calls(wacall).sessions[call.call_id]
    assert isinstance(session.platform, EngineBridgeLeg) and isinstance(session.adapter, EngineBridgedRoute)
    assert await engine.session_count() == sessions_before + 1
    first = await engine.query(call.call_id)
    await wait_until(
        lambda: engine.query(call.call_id),
        lambda later: all(later.rtp_packets_from(tag) >= first.rtp_packets_from(tag) + 25 for tag in later.tags),
        5,
    )
    assert set(first.tags) == {"business", "whatsapp"}
    # The only peer connections in this process are the phone's and the agent's: wacall holds none for the call.
    assert peer_connections() == 2

    connected = await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    assert connected.media.frames_received > 0
    ended = await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED
    assert ended.media.audible_frames_received > 40 and ended.media.frames_sent > 40  # rtpengine's counts
    assert ended.webrtc_answer_sdp == call.webrtc_answer_sdp
    assert await engine.session_count() == sessions_before
    assert call.call_id not in await engine.list_calls()


async def test_the_engine_session_goes_when_the_user_hangs_up(wacall: Running, agents: Agent) -> None:
    engine = engine_of(wacall)
    sessions_before = await engine.session_count()
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    call, heard_by_agent = await agents(wacall)
    await eventually(lambda: len(heard_by_agent.frames) > 20, what="the user's voice at the agent")
    await wacall.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id))
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED and ended.end_reason.startswith("ended by the platform")
    await eventually(lambda: not service_calls(wacall).sessions, what="the session released")
    assert await engine.session_count() == sessions_before


async def test_the_engine_session_goes_when_the_platform_refuses_the_call(wacall: Running) -> None:
    engine = engine_of(wacall)
    sessions_before = await engine.session_count()
    await wacall.grant(permanent=True)
    # The platform revokes the permission and its webhook is lost: wacall still allows the call, the platform not.
    platform = platform_of(wacall)
    webhook_url, platform.webhook_url = platform.webhook_url, ""
    await wacall.sim.RevokePermission(sim_pb.RevokePermissionRequest(business_number=BUSINESS, user_number=USER))
    await platform.settle()
    platform.webhook_url = webhook_url
    agent = AudioLeg(name="agent")
    try:
        offer = await agent.create_offer()
        error = await refused(wacall.start_call(route=pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=offer))))
    finally:
        await agent.close()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not service_calls(wacall).sessions
    assert await engine.session_count() == sessions_before


async def test_the_watchdog_ends_an_engine_bridged_call_whose_user_sends_nothing(
    make_service: Callable[..., Awaitable[Running]], agents: Agent
) -> None:
    # The phone goes away and its terminate is lost: rtpengine counts no more packets from the user.
    wacall = await make_service(media_timeout_seconds=1.5, rtpengine="")
    engine = engine_of(wacall)
    sessions_before = await engine.session_count()
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    call, heard_by_agent = await agents(wacall)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    await eventually(lambda: len(heard_by_agent.frames) > 20, what="the user's voice at the agent")
    platform = platform_of(wacall)
    webhook_url, platform.webhook_url = platform.webhook_url, ""
    await wacall.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id))
    await platform.settle()
    platform.webhook_url = webhook_url
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED, timeout=15)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED
    assert ended.end_reason == "no media from the user for 1.5 s"
    await eventually(lambda: not service_calls(wacall).sessions, what="the session released")
    assert await engine.session_count() == sessions_before


async def test_a_quiet_user_keeps_the_call_and_counts_no_audible_frames(wacall: Running, agents: Agent) -> None:
    # Silence still arrives as packets (the watchdog sees media), but none of them counts as audible.
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=-1)
    call, _ = await agents(wacall)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    live = await wait_until(lambda: wacall.get_call(call.call_id), lambda c: c.media.frames_received > 50, 10)
    assert live.media.audible_frames_received == 0
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))


async def test_an_engine_bridged_call_cannot_move_to_a_route_in_the_service(
    wacall: Running, agents: Agent, tmp_path: Path
) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    call, heard_by_agent = await agents(wacall)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    stream = await plan(pb.Route(media_stream=pb.MediaStreamRoute()), tmp_path)
    with pytest.raises(RerouteRefused, match="bridged in rtpengine"):
        await service_calls(wacall).reroute(call.call_id, stream)
    # The call goes on as it was.
    heard = len(heard_by_agent.frames)
    await eventually(lambda: len(heard_by_agent.frames) > heard + 20, what="the user's voice still at the agent")
    assert (await wacall.get_call(call.call_id)).route == "webrtc"
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))


async def test_with_rtpengine_off_the_bridge_runs_in_process(
    make_service: Callable[..., Awaitable[Running]], agents: Agent
) -> None:
    wacall = await make_service(rtpengine="off")
    assert wacall.service.engines is None and wacall.service.local_engine is None
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    call, heard_by_agent = await agents(wacall)
    await eventually(lambda: len(heard_by_agent.frames) > 40, what="the user's voice at the agent")
    assert isinstance(service_calls(wacall).sessions[call.call_id].platform, WebRtcPlatformLeg)
    assert peer_connections() == 4  # the phone, our WhatsApp leg, our agent leg, the agent
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))


async def test_a_dead_external_engine_refuses_the_call_with_a_precondition_not_unknown(
    make_service: Callable[..., Awaitable[Running]],
) -> None:
    silent = free_udp_port("127.0.0.1")  # nothing answers there
    wacall = await make_service(rtpengine=f"127.0.0.1:{silent}")
    assert wacall.service.local_engine is None
    await wacall.grant(permanent=True)
    agent = AudioLeg(name="agent")
    try:
        offer = await agent.create_offer()
        error = await refused(wacall.start_call(route=pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=offer))))
    finally:
        await agent.close()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "rtpengine" in (error.details() or "")
    calls = await wacall.calling.ListCalls(pb.ListCallsRequest())
    assert [c.outcome for c in calls.calls] == [pb.CALL_OUTCOME_FAILED]
    assert not service_calls(wacall).sessions


async def test_an_engine_address_that_is_not_host_and_port_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'rtpengine\.example' is not host:port"):
        load_settings(None, {"rtpengine": "127.0.0.1:2223,rtpengine.example", "db": settings_for(tmp_path).db}, {})
    assert load_settings(None, {"rtpengine": "off"}, {}).rtpengine == "off"


def rtpengine_children(pid: int) -> list[int]:
    children = (Path(f"/proc/{pid}/task/{pid}/children")).read_text().split()
    return [int(c) for c in children if Path(f"/proc/{c}/comm").read_text().strip() == "rtpengine"]


def running(pid: int) -> bool:
    """Alive: an exited process the init process has not reaped yet (a zombie, "Z") counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_serve_runs_a_local_rtpengine_that_goes_even_when_wacall_is_killed(tmp_path: Path) -> None:
    stopped = ServeProcess(tmp_path / "stopped")
    try:
        [engine] = rtpengine_children(stopped.proc.pid)
    finally:
        assert stopped.stop() == 0
    assert not running(engine)  # stopped with the service

    killed = ServeProcess(tmp_path / "killed")
    try:
        [engine] = rtpengine_children(killed.proc.pid)
    finally:
        killed.proc.send_signal(signal.SIGKILL)  # no graceful stop: the kernel tells rtpengine its parent died
        killed.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while running(engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(engine), "rtpengine outlived the wacall that started it"


def test_serve_with_rtpengine_off_runs_no_engine(tmp_path: Path) -> None:
    process = ServeProcess(tmp_path, "--rtpengine", "off")
    try:
        assert rtpengine_children(process.proc.pid) == []
    finally:
        assert process.stop() == 0
