"""Real audio through each route: a gRPC media stream client, an aiortc agent (bridge and passthrough)."""

from __future__ import annotations

import asyncio
import math
import struct
import wave
from pathlib import Path

import av
import grpc
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from conftest import USER, Running, duration, eventually, wait_until
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.media.leg import AudioLeg
from wacall.media.sdp import only_sha256_fingerprint
from wacall.media.tracks import QueueSource, ToneSource, level
from wacall.upstreams.meta import wire as payloads
from wacall_adapters.media_stream import MediaStreamAdapter
from wacall_adapters.webrtc import WebRtcBridgeAdapter


def tone_frame(rate: int, frequency: float, index: int) -> bytes:
    samples = rate // 50
    return struct.pack(
        f"<{samples}h",
        *(int(8000 * math.sin(2 * math.pi * frequency * (index * samples + i) / rate)) for i in range(samples)),
    )


async def phone_of(wacall: Running, call: pb.Call) -> sim_pb.PhoneCall:
    return await wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id))


async def test_media_stream_client_talks_and_listens_at_16_khz(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    call = await wacall.start_call(route=pb.Route(media_stream=pb.MediaStreamRoute()))
    rate = 16000
    received: list[bytes] = []
    updates: list[pb.Call] = []
    outgoing: asyncio.Queue[pb.CallMediaRequest | None] = asyncio.Queue()
    await outgoing.put(pb.CallMediaRequest(call_id=call.call_id, sample_rate=rate))

    async def requests():  # type: ignore[no-untyped-def]
        while (item := await outgoing.get()) is not None:
            yield item

    async def talk() -> None:
        for index in range(150):  # 3 s of a 300 Hz tone, paced in real time
            await outgoing.put(pb.CallMediaRequest(audio=tone_frame(rate, 300, index)))
            await asyncio.sleep(0.02)

    async def listen() -> None:
        async for message in wacall.calling.CallMedia(requests()):
            if message.WhichOneof("kind") == "audio":
                received.append(message.audio)
            else:
                updates.append(message.call)

    listener = asyncio.create_task(listen())
    talker = asyncio.create_task(talk())
    phone = await wait_until(lambda: phone_of(wacall, call), lambda p: p.audible_frames_received > 40, 10)
    assert phone.mean_level_received > 0.05
    await eventually(lambda: sum(level(f) > 0.05 for f in received) > 40, what="audio at the client")
    assert all(len(frame) == rate // 50 * 2 for frame in received)  # 20 ms at the requested rate
    # Stop talking, then hang up and close our side: the stream ends with the call.
    talker.cancel()
    await asyncio.gather(talker, return_exceptions=True)
    await outgoing.put(pb.CallMediaRequest(hangup=True))
    await outgoing.put(None)
    await asyncio.wait_for(listener, 10)
    assert updates[-1].state == pb.CALL_STATE_ENDED and updates[-1].outcome == pb.CALL_OUTCOME_ANSWERED
    assert updates[-1].end_reason == "ended by the media stream client"


async def test_a_media_stream_program_that_catches_up_after_a_stall_does_not_keep_the_lag(wacall: Running) -> None:
    # A program that stalled and then wrote 300 ms at once before going on in real time: the user would hear it
    # 300 ms late for the rest of the call. Within two seconds the backlog is dropped (the oldest frames).
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    call = await wacall.start_call(route=pb.Route(media_stream=pb.MediaStreamRoute()))
    await wait_until(lambda: phone_of(wacall, call), lambda p: p.state == "connected", 10)
    session = wacall.service.calls.session(call.call_id)
    assert session is not None and isinstance(session.adapter, MediaStreamAdapter)
    outgoing = session.adapter.outgoing
    requests: asyncio.Queue[pb.CallMediaRequest | None] = asyncio.Queue()
    await requests.put(pb.CallMediaRequest(call_id=call.call_id))

    async def request_stream():  # type: ignore[no-untyped-def]
        while (item := await requests.get()) is not None:
            yield item

    async def talk() -> None:
        for index in range(15):  # the stall's backlog, written at once
            await requests.put(pb.CallMediaRequest(audio=tone_frame(48000, 300, index)))
        began = asyncio.get_running_loop().time()
        for index in range(15, 500):  # then 20 ms frames in real time
            await requests.put(pb.CallMediaRequest(audio=tone_frame(48000, 300, index)))
            await asyncio.sleep(max(0.0, began + (index - 14) * 0.02 - asyncio.get_running_loop().time()))

    stream = wacall.calling.CallMedia(request_stream())
    talker = asyncio.create_task(talk())
    try:
        await eventually(lambda: outgoing.waiting >= 10, what="the backlog queued")
        # Cut at the end of the first whole window (50 frames taken, 1 s) that the backlog stood through.
        await eventually(lambda: outgoing.dropped >= 10, timeout=5, what="the backlog dropped")
        assert await standing_delay(outgoing) <= 1
        phone = await phone_of(wacall, call)
        assert phone.audible_frames_received > 50  # the program is heard all along
    finally:
        talker.cancel()
        await asyncio.gather(talker, return_exceptions=True)
        stream.cancel()


async def test_call_media_refuses_calls_on_other_routes(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(ring=60)
    call = await wacall.start_call()  # default route: announcement
    stream = wacall.calling.CallMedia(iter([pb.CallMediaRequest(call_id=call.call_id)]))
    with pytest.raises(grpc.aio.AioRpcError) as refused_stream:
        async for _ in stream:
            raise AssertionError("no audio expected")
    assert refused_stream.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "media_stream" in (refused_stream.value.details() or "")


async def test_webrtc_bridge_relays_audio_between_an_aiortc_agent_and_the_user(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    agent = AudioLeg(name="agent", source=ToneSource(300, amplitude=0.3))
    try:
        offer = await agent.create_offer()
        call = await wacall.start_call(route=pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=offer)))
        assert call.route == "webrtc" and "a=fingerprint:sha-256" in call.webrtc_answer_sdp
        await agent.apply_answer(call.webrtc_answer_sdp)
        phone = await wait_until(lambda: phone_of(wacall, call), lambda p: p.audible_frames_received > 40, 10)
        assert phone.mean_level_received > 0.05
        await eventually(lambda: agent.consumer is not None and agent.consumer.audible_frames > 40, what="agent audio")
        ended = await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
        assert ended.outcome == pb.CALL_OUTCOME_ANSWERED
        assert ended.media.audible_frames_received > 40  # the service relayed what it heard
    finally:
        await agent.close()


async def standing_delay(queue: QueueSource, seconds: float = 1.0) -> int:
    """The fewest frames a live queue held over `seconds` of sampling: the delay (in 20 ms frames) that every frame
    through it suffers, whatever jitter adds on top."""
    least = queue.max_frames
    for _ in range(round(seconds / 0.02)):
        least = min(least, queue.waiting)
        await asyncio.sleep(0.02)
    return least


async def test_a_bridged_agent_that_connects_late_hears_the_user_without_a_backlog(wacall: Running) -> None:
    # The user talks from pickup while the agent's softphone takes a second to apply its answer: what the user said
    # meanwhile cannot reach the agent in time, and queued it would lag the whole conversation for good.
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    agent = AudioLeg(name="agent", source=ToneSource(300, amplitude=0.3))
    try:
        call = await wacall.start_call(route=pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=await agent.create_offer())))
        session = wacall.service.calls.session(call.call_id)
        assert session is not None and isinstance(session.adapter, WebRtcBridgeAdapter)
        bridge = session.adapter
        await wait_until(lambda: phone_of(wacall, call), lambda p: p.state == "connected", 10)
        await eventually(lambda: bridge.to_agent.dropped > 25, what="the user's audio arriving before the agent")
        await agent.apply_answer(call.webrtc_answer_sdp)
        await eventually(lambda: agent.consumer is not None and agent.consumer.audible_frames > 25, what="agent audio")
        # Nothing waits in either direction beyond the frame due next: no standing delay through the bridge.
        assert await standing_delay(bridge.to_agent) <= 1
        assert await standing_delay(bridge.to_user) <= 1
        phone = await phone_of(wacall, call)
        assert phone.audible_frames_received > 25  # and the user hears the agent
    finally:
        await agent.close()


async def test_webrtc_passthrough_hands_the_agent_offer_to_the_platform_and_relays_no_media(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    agent = AudioLeg(name="agent", source=ToneSource(300, amplitude=0.3))
    try:
        offer = await agent.create_offer()
        call = await wacall.start_call(route=pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=offer, passthrough=True)))
        assert call.route == "webrtc_passthrough"
        answered = await wait_until(lambda: wacall.get_call(call.call_id), lambda c: bool(c.webrtc_answer_sdp))
        await agent.apply_answer(answered.webrtc_answer_sdp)
        phone = await wait_until(lambda: phone_of(wacall, call), lambda p: p.audible_frames_received > 40, 10)
        assert phone.mean_level_received > 0.05
        await eventually(lambda: agent.consumer is not None and agent.consumer.audible_frames > 40, what="agent audio")
        ended = await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
        assert ended.media.frames_received == 0 and ended.media.frames_sent == 0  # no media through the service
    finally:
        await agent.close()


async def test_simulated_client_drops_a_call_that_gets_no_audio(make_service) -> None:  # type: ignore[no-untyped-def]
    # MEDIA-1: an agent that never sends audio (passthrough, recvonly) gets the call dropped by the user's client.
    running: Running = await make_service(sim_no_media_at_start_seconds=1.0)
    await running.grant(permanent=True)
    await running.phone()
    silent = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        silent.addTransceiver("audio", direction="recvonly")
        await silent.setLocalDescription(await silent.createOffer())
        offer = only_sha256_fingerprint(silent.localDescription.sdp)
        call = await running.start_call(route=pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=offer, passthrough=True)))
        answered = await wait_until(lambda: running.get_call(call.call_id), lambda c: bool(c.webrtc_answer_sdp))
        await silent.setRemoteDescription(RTCSessionDescription(answered.webrtc_answer_sdp, "answer"))
        ended = await running.wait_call(call.call_id, pb.CALL_STATE_ENDED)
        assert ended.platform_error.code == 138023  # accepted, but no media
        assert ended.outcome == pb.CALL_OUTCOME_ANSWERED  # the user had picked up: it still counts as connected
    finally:
        await silent.close()


def write_wav(path: Path, frequency: float, seconds: float, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        count = int(rate * seconds)
        out.writeframes(
            struct.pack(f"<{count}h", *(int(9000 * math.sin(2 * math.pi * frequency * i / rate)) for i in range(count)))
        )


def write_ogg(path: Path, frequency: float, seconds: float) -> None:
    container = av.open(str(path), "w", format="ogg")
    stream = container.add_stream("libopus", rate=48000)
    stream.layout = "mono"  # type: ignore[union-attr]
    total = int(48000 * seconds)
    for start in range(0, total, 960):
        pcm = struct.pack("<960h", *(int(9000 * math.sin(2 * math.pi * frequency * (start + i) / 48000))
                                     for i in range(960)))  # fmt: skip
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(pcm)
        frame.sample_rate, frame.pts = 48000, start
        for packet in stream.encode(frame):  # type: ignore[union-attr]
            container.mux(packet)
    for packet in stream.encode(None):  # type: ignore[union-attr]
        container.mux(packet)
    container.close()


async def test_announcement_plays_a_wav_file_and_records_the_user_saying_an_ogg_file(
    wacall: Running, tmp_path: Path
) -> None:
    announcement, user_voice, recording = tmp_path / "reminder.wav", tmp_path / "user.ogg", tmp_path / "user.wav"
    write_wav(announcement, 500, 1.5)
    write_ogg(user_voice, 660, 3.0)
    await wacall.grant(permanent=True)
    await wacall.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(user_number=USER, say_file=str(user_voice), ring_duration=duration(0))
    )
    route = pb.Route(announcement=pb.AnnouncementRoute(audio_file=str(announcement), record_to=str(recording)))
    call = await wacall.start_call(route=route)
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED and ended.end_reason == "announcement finished"
    phone = await phone_of(wacall, call)
    assert phone.audible_frames_received >= 50  # most of the 1.5 s file (75 frames) reached the user
    with wave.open(str(recording), "rb") as recorded:
        assert (recorded.getframerate(), recorded.getnchannels(), recorded.getsampwidth()) == (48000, 1, 2)
        pcm = recorded.readframes(recorded.getnframes())
    frames = [pcm[i : i + 1920] for i in range(0, len(pcm) - 1919, 1920)]
    assert len(frames) >= 50 and sum(level(f) > 0.05 for f in frames) >= 40  # the user's voice, recorded


async def test_announcement_starts_on_the_users_voice_when_accepted_never_comes(
    wacall: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HOOK-3: ACCEPTED may arrive late or not at all; the user's first audible frame means they picked up.
    real_status = payloads.call_status

    def without_accepted(account, user_digits, call, status, at):  # type: ignore[no-untyped-def]
        body = real_status(account, user_digits, call, status, at)
        if status == "ACCEPTED":
            body["entry"][0]["changes"][0]["value"]["statuses"] = []
        return body

    monkeypatch.setattr(payloads, "call_status", without_accepted)
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=880)
    route = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(1)))
    call = await wacall.start_call(route=route)
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.end_reason == "announcement finished"
    # Ended by us before any ACCEPTED: CANCELLED until the platform's terminate brings start_time, then ANSWERED.
    answered = await wait_until(lambda: wacall.get_call(call.call_id), lambda c: c.outcome == pb.CALL_OUTCOME_ANSWERED)
    assert answered.HasField("answered_at")
    phone = await phone_of(wacall, call)
    assert phone.audible_frames_received >= 30


async def test_a_recording_that_cannot_be_opened_at_pickup_ends_the_call_with_the_reason(
    wacall: Running, tmp_path: Path
) -> None:
    # Checked when the call is placed (the directory existed), but gone by the time the user picks up: the
    # route fails after pickup, and the call ends at once with the reason instead of going on without it.
    folder = tmp_path / "recordings"
    folder.mkdir()
    await wacall.grant(permanent=True)
    await wacall.phone(ring=2)
    route = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440, record_to=str(folder / "user.wav")))
    call = await wacall.start_call(route=route)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_RINGING)
    folder.rmdir()
    folder.write_text("a file where the folder was")
    await wacall.advance(2)
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.end_reason.startswith("the route failed after pickup: ")
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED  # the user did pick up: the platform counts it
    await wait_until(lambda: phone_of(wacall, call), lambda p: p.state == "ended")
    await eventually(lambda: not wacall.service.calls.sessions, what="session released")  # type: ignore[union-attr]
