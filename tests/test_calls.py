"""Calls through the running service against the simulated phone: control, accounting and the rules they feed."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from conftest import (
    BUSINESS,
    DAY,
    MARGIN,
    OTHER_USER,
    USER,
    Running,
    call_action,
    duration,
    refused,
    request_action,
    wait_until,
)
from wacall_client import error_details
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.media.tracks import level
from wacall.numbers import parse_number
from wacall.simulator.platform import GRAPH_VERSION
from wacall.upstreams.meta.graph import GraphClient, GraphError

STREAM = pb.Route(media_stream=pb.MediaStreamRoute())


async def answered_call(wacall: Running, user: str = USER) -> pb.Call:
    """Place a call the user picks up at once, then hang up from the business side."""
    call = await wacall.start_call(user, route=STREAM)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
    return await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)


async def unanswered_call(wacall: Running, user: str = USER) -> pb.Call:
    call = await wacall.start_call(user, route=STREAM)
    return await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)


async def test_announcement_call_carries_audio_both_ways_and_counts_as_connected(wacall: Running) -> None:
    await wacall.grant()
    await wacall.phone(ring=2, tone_hz=660)
    route = pb.Route(announcement=pb.AnnouncementRoute(tone_hz=440, tone_duration=duration(1.5)))
    call = await wacall.start_call(route=route, biz_opaque_callback_data="order-1522")
    assert call.state == pb.CALL_STATE_DIALING and call.platform_call_id.startswith("wacid.")
    assert call.route == "announcement" and call.direction == pb.CALL_DIRECTION_BUSINESS_INITIATED
    ringing = await wacall.wait_call(call.call_id, pb.CALL_STATE_RINGING)
    assert not ringing.HasField("answered_at")
    answered_at = await wacall.advance(2)  # the phone rings for 2 s of clock time, then the user picks up
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED
    assert ended.answered_at.ToSeconds() == answered_at.timestamp()
    assert ended.end_reason == "announcement finished"
    assert ended.biz_opaque_callback_data == "order-1522"
    # The user's phone heard the announcement, and the service heard the user.
    phone = await wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id))
    assert phone.audible_frames_received >= 40 and phone.mean_level_received > 0.01
    assert ended.media.audible_frames_received >= 20 and ended.media.frames_sent >= 75
    permission = await wacall.permission()
    assert [limit.used for limit in call_action(permission).limits] == [1]


async def test_five_connected_calls_per_24h_then_resource_exhausted_until_the_first_ages_out(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone()
    first = await answered_call(wacall)
    first_answered = first.answered_at.ToSeconds()
    for _ in range(4):
        await wacall.advance(3600)
        await answered_call(wacall)
    permission = await wacall.permission()
    action = call_action(permission)
    assert not action.allowed and action.reason == pb.REASON_CALL_LIMIT_REACHED
    # The first call ages out 24 h after it was answered, plus the boundary margin.
    frees_at = first_answered + DAY + MARGIN
    assert action.next_allowed_at.ToSeconds() == frees_at
    now = (await wacall.now()).timestamp()
    error = await refused(wacall.start_call(route=STREAM))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error_details(error)
    assert details.retry_after is not None and details.retry_after.total_seconds() == frees_at - now
    assert "5 of 5 per 24 h" in details.quota_violations[0].description
    # Nothing was dialled: the refusal came before the platform.
    calls = await wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER))
    assert len(calls.calls) == 5
    await wacall.advance(frees_at - now - 1)
    assert not call_action(await wacall.permission()).allowed
    await wacall.advance(1)
    assert call_action(await wacall.permission()).allowed
    sixth = await answered_call(wacall)
    assert sixth.outcome == pb.CALL_OUTCOME_ANSWERED


async def test_meta_current_policy_allows_more_than_five(make_service) -> None:  # type: ignore[no-untyped-def]
    running: Running = await make_service(policy="meta-current")
    await running.grant(permanent=True)
    await running.phone()
    for _ in range(6):
        await answered_call(running)
    assert [x.used for x in call_action(await running.permission()).limits] == [6]


async def test_two_unanswered_calls_prompt_the_user_and_four_revoke(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(on_call=sim_pb.NO_ANSWER)
    first = await unanswered_call(wacall)
    assert first.outcome == pb.CALL_OUTCOME_UNANSWERED
    assert (await wacall.permission()).consecutive_unanswered_calls == 1
    await unanswered_call(wacall)
    prompted = await wacall.permission()
    assert prompted.user_prompted and prompted.consecutive_unanswered_calls == 2
    assert prompted.state == pb.PERMISSION_STATE_PERMANENT
    await wacall.phone(on_call=sim_pb.DECLINE)  # a declined call counts like an unanswered one
    third = await unanswered_call(wacall)
    assert third.outcome == pb.CALL_OUTCOME_REJECTED
    await unanswered_call(wacall)
    revoked = await wacall.permission()
    assert revoked.state == pb.PERMISSION_STATE_REVOKED
    assert call_action(revoked).reason == pb.REASON_PERMISSION_REVOKED
    events = (await wacall.calling.ListEvents(pb.ListEventsRequest())).events
    revocations = [e for e in events if e.kind == pb.EVENT_KIND_PERMISSION_REVOKED]
    # wacall revoked at the threshold itself; the platform's automatic revoke converges on the same state.
    assert {e.source for e in revocations} <= {pb.EVENT_SOURCE_WACALL_RULE, pb.EVENT_SOURCE_PLATFORM_AUTOMATIC}
    assert revocations[0].source == pb.EVENT_SOURCE_WACALL_RULE
    prompts = [e for e in events if e.kind == pb.EVENT_KIND_USER_PROMPTED]
    assert len(prompts) == 1
    error = await refused(wacall.start_call(route=STREAM))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_connected_call_resets_request_limits_and_the_streak_but_not_the_call_window(
    wacall: Running,
) -> None:
    await wacall.request()
    assert not request_action(await wacall.permission()).allowed
    await wacall.grant()
    await wacall.phone(on_call=sim_pb.NO_ANSWER)
    await unanswered_call(wacall)
    assert (await wacall.permission()).consecutive_unanswered_calls == 1
    await wacall.phone()
    await answered_call(wacall)
    permission = await wacall.permission()
    assert permission.consecutive_unanswered_calls == 0 and not permission.user_prompted
    request = request_action(permission)
    assert request.allowed and [x.used for x in request.limits] == [0, 0]
    assert [x.used for x in call_action(permission).limits] == [1]


async def test_no_second_concurrent_call_to_one_user(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.grant(OTHER_USER, permanent=True)
    await wacall.phone(ring=60)
    await wacall.phone(OTHER_USER, ring=60)
    first = await wacall.start_call(route=STREAM)
    busy = call_action(await wacall.permission())
    assert not busy.allowed and busy.reason == pb.REASON_CALL_IN_PROGRESS
    error = await refused(wacall.start_call(route=STREAM))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert [v.type for v in error_details(error).precondition_violations] == ["CALL_IN_PROGRESS"]
    other = await wacall.start_call(OTHER_USER, route=STREAM)  # another user is fine
    assert other.call_id != first.call_id
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=first.call_id))
    await wacall.wait_call(first.call_id, pb.CALL_STATE_ENDED)
    again = await wacall.start_call(route=STREAM)
    assert again.state == pb.CALL_STATE_DIALING


async def test_concurrent_start_calls_for_one_pair_dial_exactly_once(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(ring=60)
    results = await asyncio.gather(*(wacall.start_call(route=STREAM) for _ in range(10)), return_exceptions=True)
    placed = [r for r in results if isinstance(r, pb.Call)]
    assert len(placed) == 1
    assert {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)} == {grpc.StatusCode.ALREADY_EXISTS}


async def test_ending_before_answer_is_cancelled_and_does_not_count(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(ring=60)
    call = await wacall.start_call(route=STREAM)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_RINGING)
    ended = await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
    assert ended.state == pb.CALL_STATE_ENDED and ended.outcome == pb.CALL_OUTCOME_CANCELLED
    permission = await wacall.permission()
    assert permission.consecutive_unanswered_calls == 0
    assert [x.used for x in call_action(permission).limits] == [0]
    phone = await wait_until(
        lambda: wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id)),
        lambda p: p.state == "ended",
    )
    assert not phone.HasField("answered_at")


async def test_calls_need_a_live_permission(wacall: Running) -> None:
    error = await refused(wacall.start_call(route=STREAM))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [v.type for v in error_details(error).precondition_violations] == ["NO_PERMISSION"]
    await wacall.grant()
    await wacall.advance(7 * DAY)
    expired = await refused(wacall.start_call(route=STREAM))
    assert [v.type for v in error_details(expired).precondition_violations] == ["PERMISSION_EXPIRED"]
    await wacall.grant()
    await wacall.sim.RevokePermission(sim_pb.RevokePermissionRequest(business_number=BUSINESS, user_number=USER))
    revoked = await refused(wacall.start_call(route=STREAM))
    assert [v.type for v in error_details(revoked).precondition_violations] == ["PERMISSION_REVOKED"]
    assert not (await wacall.calling.ListCalls(pb.ListCallsRequest())).calls


async def test_platform_refusal_ends_the_call_failed_and_reconciles_the_permission(wacall: Running) -> None:
    # The platform has a grant wacall never heard of... and then revoked it without telling us (HOOK-6):
    # wacall believes it has a permission, the platform says 138006.
    await wacall.grant(permanent=True)
    platform = wacall.service.platform
    assert platform is not None
    platform.state.ledgers.clear()
    error = await refused(wacall.start_call(route=STREAM))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "138006" in (error.details() or "")
    (failed,) = (await wacall.calling.ListCalls(pb.ListCallsRequest())).calls
    assert failed.state == pb.CALL_STATE_ENDED and failed.outcome == pb.CALL_OUTCOME_FAILED
    assert failed.platform_error.code == 138006
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_REVOKED and permission.consecutive_unanswered_calls == 0


async def test_user_hangs_up_after_talking(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(talk=30)
    call = await wacall.start_call(route=STREAM)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    await wacall.advance(30)
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED and ended.duration_seconds == 30
    assert ended.end_reason.startswith("ended by the platform")


async def test_user_initiated_call_is_answered_grants_callback_permission_and_resets_request_limits(
    wacall: Running,
) -> None:
    await wacall.request()
    assert not request_action(await wacall.permission()).allowed
    await wacall.phone(talk=10)
    phone = await wacall.sim.PlaceUserCall(sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER))
    granted = await wacall.wait_for_state(pb.PERMISSION_STATE_TEMPORARY)
    assert granted.HasField("service_window_expires_at")  # a user's call opens the window too
    calls = await wait_until(
        lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
        lambda r: len(r.calls) == 1 and r.calls[0].state == pb.CALL_STATE_CONNECTED,
    )
    inbound = calls.calls[0]
    assert inbound.direction == pb.CALL_DIRECTION_USER_INITIATED
    assert inbound.platform_call_id == phone.platform_call_id
    heard = await wait_until(
        lambda: wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=phone.platform_call_id)),
        lambda p: p.audible_frames_received > 20,
    )
    assert heard.state == "connected"
    await wacall.advance(10)
    ended = await wacall.wait_call(inbound.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED
    permission = await wacall.permission()
    assert request_action(permission).allowed  # reset by the connected call
    assert [x.used for x in call_action(permission).limits] == [0]  # user-initiated calls do not count
    assert ended.media.audible_frames_received > 20  # and the business side heard the user


async def test_call_updates_stream_through_watch_events_in_order(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone()
    cursor = (await wacall.calling.ListEvents(pb.ListEventsRequest())).events[-1].cursor
    call = await answered_call(wacall)
    states = []
    async for event in wacall.calling.WatchEvents(pb.WatchEventsRequest(after_cursor=cursor)):
        if event.kind == pb.EVENT_KIND_CALL_UPDATED:
            assert event.call.call_id == call.call_id
            states.append(event.call.state)
            if event.call.state == pb.CALL_STATE_ENDED:
                assert event.call.outcome == pb.CALL_OUTCOME_ANSWERED
                break
    assert states == sorted(states) and states[0] == pb.CALL_STATE_DIALING
    assert pb.CALL_STATE_CONNECTED in states


async def test_start_call_is_idempotent(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(ring=60)
    first = await wacall.start_call(route=STREAM, idempotency_key="call-1")
    again = await wacall.start_call(route=STREAM, idempotency_key="call-1")
    assert again.call_id == first.call_id
    assert len((await wacall.calling.ListCalls(pb.ListCallsRequest())).calls) == 1


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"business_number": "nope", "user_number": USER}, "business_number"),
        ({"business_number": BUSINESS, "user_number": ""}, "user_number"),
        (
            {"business_number": BUSINESS, "user_number": USER, "biz_opaque_callback_data": "x" * 513},
            "biz_opaque_callback_data",
        ),
        ({"business_number": BUSINESS, "user_number": USER, "idempotency_key": "k" * 129}, "idempotency_key"),
        (
            {
                "business_number": BUSINESS,
                "user_number": USER,
                "route": pb.Route(announcement=pb.AnnouncementRoute(audio_file="/no/such.wav")),
            },
            "route.announcement.audio_file",
        ),
        (
            {
                "business_number": BUSINESS,
                "user_number": USER,
                "route": pb.Route(announcement=pb.AnnouncementRoute(tone_hz=5)),
            },
            "route.announcement.tone_hz",
        ),
        (
            {
                "business_number": BUSINESS,
                "user_number": USER,
                "route": pb.Route(webrtc=pb.WebRtcRoute(offer_sdp="v=0")),
            },
            "route.webrtc.offer_sdp",
        ),
    ],
)
async def test_start_call_rejects_bad_input_and_dials_nothing(
    wacall: Running, request_fields: dict[str, object], field: str
) -> None:
    await wacall.grant(permanent=True)
    error = await refused(wacall.calling.StartCall(pb.StartCallRequest(**request_fields)))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error_details(error).field_violations] == [field]
    assert not (await wacall.calling.ListCalls(pb.ListCallsRequest())).calls


async def test_get_end_and_list_calls_reject_bad_input(wacall: Running) -> None:
    for rpc in (wacall.calling.GetCall(pb.GetCallRequest()), wacall.calling.EndCall(pb.EndCallRequest())):
        error = await refused(rpc)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    missing = await refused(wacall.calling.GetCall(pb.GetCallRequest(call_id="call_nope")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    bad_page = await refused(wacall.calling.ListCalls(pb.ListCallsRequest(page_token="%%%")))
    assert bad_page.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_size = await refused(wacall.calling.ListCalls(pb.ListCallsRequest(page_size=501)))
    assert bad_size.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_calls_pages_newest_first(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone()
    made = []
    for _ in range(3):
        made.append((await answered_call(wacall)).call_id)
        await wacall.advance(60)
    page1 = await wacall.calling.ListCalls(pb.ListCallsRequest(page_size=2))
    page2 = await wacall.calling.ListCalls(pb.ListCallsRequest(page_size=2, page_token=page1.next_page_token))
    assert [c.call_id for c in [*page1.calls, *page2.calls]] == made[::-1]
    assert page2.next_page_token == ""


async def test_the_whatsapp_leg_is_ice_controlling(wacall: Running) -> None:
    # ICE-1: the platform is ICE-lite and always controlled; our leg must nominate.
    await wacall.grant(permanent=True)
    await wacall.phone()
    call = await wacall.start_call(route=STREAM)
    await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    calls = wacall.service.calls
    assert calls is not None
    leg = calls.sessions[call.call_id].platform
    assert leg is not None and leg.ice_controlling
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))


async def test_the_simulated_platform_refuses_offers_the_real_one_refuses(wacall: Running) -> None:
    # SDP-1: aiortc's raw offer carries sha-384/512 fingerprints too; the platform answers error 100.
    await wacall.grant(permanent=True)
    platform = wacall.service.platform
    assert platform is not None and wacall.addresses.graph is not None
    account = platform.provision(parse_number(BUSINESS))
    raw = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    graph = GraphClient(f"{wacall.addresses.graph}/{GRAPH_VERSION}", backoff=0)
    try:
        raw.addTransceiver("audio", direction="sendrecv")
        await raw.setLocalDescription(await raw.createOffer())
        with pytest.raises(GraphError) as refused_offer:
            await graph.connect_call(account, USER[1:], raw.localDescription.sdp)
        assert refused_offer.value.code == 100 and "Fingerprint algo is not SHA256" in refused_offer.value.details
        no_fingerprint = "\r\n".join(
            line for line in raw.localDescription.sdp.split("\r\n") if not line.startswith("a=fingerprint")
        )
        with pytest.raises(GraphError) as missing:
            await graph.connect_call(account, USER[1:], no_fingerprint)
        assert "No fingerprint found in SDP" in missing.value.details
    finally:
        await graph.close()
        await raw.close()


async def test_a_paused_business_number_can_neither_call_nor_ask_until_the_pause_ends(wacall: Running) -> None:
    # §2.5: a quality pause (account_update ACCOUNT_RESTRICTION) stops calls and permission requests.
    await wacall.grant(OTHER_USER, permanent=True)
    await wacall.phone(OTHER_USER)
    reply = await wacall.sim.RestrictBusiness(
        sim_pb.RestrictBusinessRequest(business_number=BUSINESS, duration=duration(7 * DAY))
    )
    until = reply.restricted_until.ToSeconds()
    paused = await wacall.permission(BUSINESS, OTHER_USER)
    for action in (call_action(paused), request_action(paused)):
        assert action.reason == pb.REASON_BUSINESS_RESTRICTED
    assert call_action(paused).next_allowed_at.ToSeconds() == until
    assert not request_action(paused).HasField("next_allowed_at")  # permanent: nothing to ask for even then
    error = await refused(wacall.start_call(OTHER_USER, route=STREAM))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error_details(error)
    assert [v.type for v in details.precondition_violations] == ["BUSINESS_RESTRICTED"]
    assert (
        details.retry_after is not None
        and details.retry_after.total_seconds() == until - (await wacall.now()).timestamp()
    )
    asked = await refused(wacall.request(BUSINESS, USER))
    assert [v.type for v in error_details(asked).precondition_violations] == ["BUSINESS_RESTRICTED"]
    events = (await wacall.calling.ListEvents(pb.ListEventsRequest(business_number=BUSINESS))).events
    assert events[-1].kind == pb.EVENT_KIND_BUSINESS_RESTRICTION_CHANGED and events[-1].user_number == ""
    # Lifting the pause (or reaching its end) restores both.
    await wacall.sim.RestrictBusiness(sim_pb.RestrictBusinessRequest(business_number=BUSINESS))
    assert call_action(await wacall.permission(BUSINESS, OTHER_USER)).allowed
    assert (await answered_call(wacall, OTHER_USER)).outcome == pb.CALL_OUTCOME_ANSWERED


async def test_a_pause_ends_by_itself_at_its_expiration(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    reply = await wacall.sim.RestrictBusiness(
        sim_pb.RestrictBusinessRequest(business_number=BUSINESS, duration=duration(DAY))
    )
    await wacall.advance(DAY - 1)
    assert call_action(await wacall.permission()).reason == pb.REASON_BUSINESS_RESTRICTED
    now = await wacall.advance(1)
    assert now.timestamp() == reply.restricted_until.ToSeconds()
    assert call_action(await wacall.permission()).allowed


async def test_user_calls_can_be_routed_to_a_media_stream_program(make_service) -> None:  # type: ignore[no-untyped-def]
    running: Running = await make_service(inbound_route="media_stream")
    await running.phone(tone_hz=880)
    phone = await running.sim.PlaceUserCall(sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER))
    # The program learns of the call from the event stream, then attaches to its audio.
    call = None
    async for event in running.calling.WatchEvents(pb.WatchEventsRequest()):
        if event.kind == pb.EVENT_KIND_CALL_UPDATED and event.call.state == pb.CALL_STATE_CONNECTED:
            call = event.call
            break
    assert call is not None and call.route == "media_stream" and call.platform_call_id == phone.platform_call_id
    heard = 0
    async for message in running.calling.CallMedia(iter([pb.CallMediaRequest(call_id=call.call_id)])):
        if message.WhichOneof("kind") == "audio" and level(message.audio) > 0.05:
            heard += 1
            if heard == 25:
                break
    assert heard == 25
    await running.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
