"""The API surface: bad input on every RPC, auth, event streams with cursors, health."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import grpc
import pytest
from conftest import BUSINESS, OTHER_USER, USER, Running
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from wacall_client import error_details
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.testing.v1 import clock_pb2
from wacall_client.v1 import calling_pb2 as pb

from wacall.media.leg import AudioLeg

BAD_NUMBERS = ["", "abc", "+1", "+999123456789", "+44 7911 12345x", "0044"]


async def expect_bad_request(call: object, field: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert [v.field for v in error_details(error).field_violations] == [field]
    assert field in (error.details() or "")
    return error


@pytest.mark.parametrize("number", BAD_NUMBERS)
async def test_get_permission_rejects_bad_numbers(wacall: Running, number: str) -> None:
    await expect_bad_request(wacall.permission(number, USER), "business_number")
    await expect_bad_request(wacall.permission(BUSINESS, number), "user_number")


@pytest.mark.parametrize("number", BAD_NUMBERS)
async def test_request_permission_rejects_bad_numbers_and_sends_nothing(wacall: Running, number: str) -> None:
    await expect_bad_request(wacall.request(number, USER), "business_number")
    await expect_bad_request(wacall.request(BUSINESS, number), "user_number")
    events = await wacall.calling.ListEvents(pb.ListEventsRequest())
    assert not events.events


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"body_text": "x" * 1025}, "body_text"),
        ({"idempotency_key": "k" * 129}, "idempotency_key"),
        ({"template": pb.Template(name="", language="en")}, "template.name"),
        ({"template": pb.Template(name="t", language="")}, "template.language"),
        ({"template": pb.Template(name="t", language="en", body_parameters=["p"] * 51)}, "template.body_parameters"),
    ],
)
async def test_request_permission_rejects_bad_fields_and_changes_nothing(
    wacall: Running, fields: dict[str, object], bad_field: str
) -> None:
    await expect_bad_request(wacall.request(**fields), bad_field)
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_NONE
    assert [limit.used for limit in permission.actions[0].limits] == [0, 0]


async def test_watch_and_list_events_reject_bad_filters_and_cursors(wacall: Running) -> None:
    await expect_bad_request(wacall.calling.ListEvents(pb.ListEventsRequest(user_number="nope")), "user_number")
    await expect_bad_request(wacall.calling.ListEvents(pb.ListEventsRequest(after_cursor="x9")), "after_cursor")
    await expect_bad_request(wacall.calling.ListEvents(pb.ListEventsRequest(page_size=5000)), "page_size")
    stream = wacall.calling.WatchEvents(pb.WatchEventsRequest(business_number="12"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_simulator_and_clock_reject_bad_input(wacall: Running) -> None:
    await expect_bad_request(wacall.sim.SetUserBehavior(sim_pb.SetUserBehaviorRequest(user_number="x")), "user_number")
    await expect_bad_request(
        wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number="1", user_number=USER)),
        "business_number",
    )
    await expect_bad_request(
        wacall.sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number="")),
        "user_number",
    )
    await expect_bad_request(wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number="")), "user_number")
    negative = clock_pb2.AdvanceRequest()
    negative.duration.seconds = -5
    before = await wacall.now()
    await expect_bad_request(wacall.clock.Advance(negative), "duration")
    assert await wacall.now() == before


async def test_watch_events_resumes_after_a_cursor_without_gaps_or_repeats(wacall: Running) -> None:
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    await wacall.request()
    first_two: list[pb.Event] = []
    async for event in wacall.calling.WatchEvents(pb.WatchEventsRequest()):
        first_two.append(event)
        if len(first_two) == 2:
            break
    assert [e.kind for e in first_two] == [pb.EVENT_KIND_USER_MESSAGE_RECEIVED, pb.EVENT_KIND_PERMISSION_REQUEST_SENT]

    # More events happen while nobody watches, then more while the resumed stream is open.
    await wacall.sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER))
    resumed: list[pb.Event] = []

    async def follow() -> None:
        async for event in wacall.calling.WatchEvents(pb.WatchEventsRequest(after_cursor=first_two[-1].cursor)):
            resumed.append(event)
            if len(resumed) == 3:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    await wacall.sim.RevokePermission(sim_pb.RevokePermissionRequest(business_number=BUSINESS, user_number=USER))
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    await asyncio.wait_for(follower, 5)
    assert [e.kind for e in resumed] == [
        pb.EVENT_KIND_PERMISSION_GRANTED,
        pb.EVENT_KIND_PERMISSION_REVOKED,
        pb.EVENT_KIND_USER_MESSAGE_RECEIVED,
    ]
    cursors = [int(e.cursor) for e in first_two + resumed]
    assert cursors == sorted(set(cursors)) and cursors == list(range(cursors[0], cursors[0] + 5))
    assert resumed[0].source == pb.EVENT_SOURCE_USER_ACTION
    assert resumed[0].permission_state == pb.PERMISSION_STATE_TEMPORARY
    assert resumed[1].permission_state == pb.PERMISSION_STATE_REVOKED


async def test_watch_events_filters_by_pair(wacall: Running) -> None:
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=OTHER_USER))
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    async for event in wacall.calling.WatchEvents(pb.WatchEventsRequest(user_number="34612345678")):
        assert event.user_number == USER
        break


async def test_list_events_pages_with_cursors(wacall: Running) -> None:
    for _ in range(5):
        await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    page1 = await wacall.calling.ListEvents(pb.ListEventsRequest(page_size=3))
    page2 = await wacall.calling.ListEvents(pb.ListEventsRequest(page_size=3, after_cursor=page1.next_cursor))
    assert len(page1.events) == 3 and len(page2.events) == 2 and page2.next_cursor == ""
    assert len({e.cursor for e in [*page1.events, *page2.events]}) == 5


async def test_auth_token_required_when_configured(make_service) -> None:  # type: ignore[no-untyped-def]
    running: Running = await make_service(auth_token="s3cret")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await running.calling.GetPermission(
            pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER),
            metadata=(("authorization", "Bearer nope"),),
        )
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stream = running.calling.WatchEvents(pb.WatchEventsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in stream:
            pass
    assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    permission = await running.permission()  # carries the right token
    assert permission.state == pb.PERMISSION_STATE_NONE
    # Health checks stay open for load balancers.
    health = health_pb2_grpc.HealthStub(running.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="wacall.v1.CallingService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_reports_serving(wacall: Running) -> None:
    health = health_pb2_grpc.HealthStub(wacall.channel)
    for service in ("", "wacall.v1.CallingService", "wacall.sim.v1.SimulatorService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- inputs that used to end in UNKNOWN, each by name ------------------------------------------------------------


async def test_after_cursor_with_a_superscript_digit_is_invalid_argument(wacall: Running) -> None:
    # str.isdigit() accepts "²"; int() does not.
    await expect_bad_request(wacall.calling.ListEvents(pb.ListEventsRequest(after_cursor="²")), "after_cursor")


async def test_after_cursor_of_twenty_digits_is_invalid_argument(wacall: Running) -> None:
    # Beyond SQLite's 64-bit INTEGER.
    await expect_bad_request(wacall.calling.ListEvents(pb.ListEventsRequest(after_cursor="1" * 20)), "after_cursor")
    stream = wacall.calling.WatchEvents(pb.WatchEventsRequest(after_cursor="9" * 20))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "raw", [b"99999999999999999999999:call_" + b"0" * 32, b"-5:call_x", b"\xff\xfe", b"12:", b"garbage"]
)
async def test_page_token_decoding_to_a_huge_number_or_garbage_is_invalid_argument(wacall: Running, raw: bytes) -> None:
    token = base64.urlsafe_b64encode(raw).decode()
    await expect_bad_request(wacall.calling.ListCalls(pb.ListCallsRequest(page_token=token)), "page_token")


@pytest.mark.parametrize("seconds", [10**15, -(10**15)])
async def test_durations_of_ten_to_the_fifteen_seconds_are_invalid_argument(wacall: Running, seconds: int) -> None:
    huge = duration_pb2.Duration(seconds=seconds)
    before = await wacall.now()
    await expect_bad_request(wacall.clock.Advance(clock_pb2.AdvanceRequest(duration=huge)), "duration")
    assert await wacall.now() == before
    await expect_bad_request(
        wacall.sim.SetUserBehavior(sim_pb.SetUserBehaviorRequest(user_number=USER, ring_duration=huge)),
        "ring_duration",
    )
    await expect_bad_request(
        wacall.sim.RestrictBusiness(sim_pb.RestrictBusinessRequest(business_number=BUSINESS, duration=huge)),
        "duration",
    )
    await wacall.grant(permanent=True)
    stream = pb.Route(media_stream=pb.MediaStreamRoute(max_duration=huge))
    await expect_bad_request(wacall.start_call(route=stream), "route.media_stream.max_duration")
    tone = pb.Route(announcement=pb.AnnouncementRoute(tone_duration=huge))
    await expect_bad_request(wacall.start_call(route=tone), "route.announcement.tone_duration")
    assert not (await wacall.calling.ListCalls(pb.ListCallsRequest())).calls


async def test_webrtc_offer_without_ice_credentials_is_invalid_argument_and_dials_nothing(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    agent = AudioLeg(name="agent")
    try:
        offer = await agent.create_offer()
    finally:
        await agent.close()
    without_ice = "".join(
        line + "\r\n" for line in offer.split("\r\n")[:-1] if not line.startswith(("a=ice-ufrag", "a=ice-pwd"))
    )
    for passthrough in (False, True):
        route = pb.Route(webrtc=pb.WebRtcRoute(offer_sdp=without_ice, passthrough=passthrough))
        error = await expect_bad_request(wacall.start_call(route=route), "route.webrtc.offer_sdp")
        assert "ICE credentials" in (error.details() or "")
    assert not (await wacall.calling.ListCalls(pb.ListCallsRequest())).calls


async def test_announcement_file_that_is_not_audio_is_refused_before_the_call_is_placed(
    wacall: Running, tmp_path: Path
) -> None:
    await wacall.grant(permanent=True)
    not_audio = tmp_path / "greeting.wav"
    not_audio.write_text("this is a text file\n" * 50)
    route = pb.Route(announcement=pb.AnnouncementRoute(audio_file=str(not_audio)))
    error = await expect_bad_request(wacall.start_call(route=route), "route.announcement.audio_file")
    assert "not an audio file" in (error.details() or "")
    assert not (await wacall.calling.ListCalls(pb.ListCallsRequest())).calls
    phone_calls = await wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))
    assert not phone_calls.messages


async def test_text_with_nul_or_beyond_its_length_is_invalid_argument(wacall: Running) -> None:
    await expect_bad_request(wacall.calling.GetCall(pb.GetCallRequest(call_id="call_\x00")), "call_id")
    await expect_bad_request(wacall.permission("+44\x007911123456", USER), "business_number")
    await expect_bad_request(wacall.permission("4" * 100_000, USER), "business_number")
    await expect_bad_request(wacall.request(body_text="hello\x00"), "body_text")
    await expect_bad_request(wacall.request(template=pb.Template(name="t\x00", language="en")), "template.name")
    await expect_bad_request(wacall.calling.GetCall(pb.GetCallRequest(call_id="c" * 129)), "call_id")
    events = await wacall.calling.ListEvents(pb.ListEventsRequest())
    assert not events.events


async def test_a_request_that_does_not_parse_is_invalid_argument(wacall: Running) -> None:
    # A string field holding a lone surrogate (encoded CESU-style: not UTF-8), and a truncated wire format.
    for raw in (b"\x0a\x03\xed\xa0\x80", b"\x0a\x05ab"):
        get_call = wacall.channel.unary_unary("/wacall.v1.CallingService/GetCall")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_call(raw)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in error_details(caught.value).field_violations] == ["request"]
    health = health_pb2_grpc.HealthStub(wacall.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
