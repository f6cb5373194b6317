"""The permission rules, driven through the running service over gRPC with the simulator and the manual clock."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conftest import (
    BUSINESS,
    DAY,
    HOUR,
    MARGIN,
    MINUTE,
    OTHER_USER,
    US_BUSINESS,
    USER,
    Running,
    call_action,
    refused,
    request_action,
    wait_until,
)
from wacall_client import error_details
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.rules import engine
from wacall.upstreams.meta.accounts import MetaAccount


async def test_new_pair_has_no_permission_and_may_be_asked_by_template(wacall: Running) -> None:
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_NONE
    assert permission.business_number == BUSINESS and permission.user_number == USER
    request = request_action(permission)
    assert request.allowed and request.reason == pb.REASON_ALLOWED
    assert request.channel == pb.CHANNEL_TEMPLATE
    assert [(limit.window.seconds, limit.max_allowed, limit.used) for limit in request.limits] == [
        (DAY, 1, 0),
        (7 * DAY, 2, 0),
    ]
    call = call_action(permission)
    assert not call.allowed and call.reason == pb.REASON_NO_PERMISSION
    assert not call.HasField("next_allowed_at")
    assert permission.policy == "seed@2"


async def test_numbers_are_accepted_with_or_without_plus_and_returned_canonical(wacall: Running) -> None:
    permission = await wacall.permission("447911123456", "+34 612 34 56 78")
    assert (permission.business_number, permission.user_number) == (BUSINESS, USER)


async def test_request_while_window_closed_goes_as_default_template(wacall: Running) -> None:
    sent = await wacall.request()
    assert sent.channel == pb.CHANNEL_TEMPLATE
    assert sent.permission.state == pb.PERMISSION_STATE_REQUESTED
    messages = await wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))
    assert [(m.type, m.template_name, m.message_id) for m in messages.messages] == [
        (sim_pb.MESSAGE_TYPE_TEMPLATE, "call_permission_request", sent.message_id)
    ]


async def test_request_while_window_open_goes_as_interactive_with_body(wacall: Running) -> None:
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    permission = await wacall.permission()
    now = await wacall.now()
    assert permission.service_window_expires_at.ToSeconds() == now.timestamp() + DAY
    assert request_action(permission).channel == pb.CHANNEL_INTERACTIVE
    sent = await wacall.request(body_text="May we call you about order #1522?")
    assert sent.channel == pb.CHANNEL_INTERACTIVE
    messages = await wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))
    assert messages.messages[0].type == sim_pb.MESSAGE_TYPE_INTERACTIVE
    assert messages.messages[0].body_text == "May we call you about order #1522?"


async def test_window_closes_24h_after_the_last_user_message(wacall: Running) -> None:
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    await wacall.advance(DAY - MINUTE)
    assert request_action(await wacall.permission()).channel == pb.CHANNEL_INTERACTIVE
    # Within the window margin (60 s) the sender's template is preferred: an interactive request could arrive late.
    await wacall.advance(1)
    permission = await wacall.permission()
    assert permission.HasField("service_window_expires_at")
    assert request_action(permission).channel == pb.CHANNEL_TEMPLATE
    await wacall.advance(MINUTE - 1)
    permission = await wacall.permission()
    assert not permission.HasField("service_window_expires_at")
    assert request_action(permission).channel == pb.CHANNEL_TEMPLATE


async def test_caller_template_is_used_with_its_parameters(wacall: Running) -> None:
    sent = await wacall.request(
        template=pb.Template(name="call_permission_request", language="en", body_parameters=["Ana", "order 7"])
    )
    assert sent.channel == pb.CHANNEL_TEMPLATE
    message = (await wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))).messages[0]
    assert list(message.template_body_parameters) == ["Ana", "order 7"]


async def test_accept_temporary_grants_seven_days_then_expires(wacall: Running) -> None:
    await wacall.behave(USER, sim_pb.ACCEPT_TEMPORARY)
    await wacall.request()
    granted = await wacall.wait_for_state(pb.PERMISSION_STATE_TEMPORARY)
    now = await wacall.now()
    assert granted.expires_at.ToSeconds() == now.timestamp() + 7 * DAY
    assert call_action(granted).allowed
    await wacall.advance(7 * DAY - 1)
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_TEMPORARY
    await wacall.advance(1)
    expired = await wacall.permission()
    assert expired.state == pb.PERMISSION_STATE_EXPIRED
    assert call_action(expired).reason == pb.REASON_PERMISSION_EXPIRED
    assert not call_action(expired).HasField("next_allowed_at")


async def test_accept_permanent_never_expires_and_blocks_further_requests(wacall: Running) -> None:
    await wacall.behave(USER, sim_pb.ACCEPT_PERMANENT)
    await wacall.request()
    await wacall.wait_for_state(pb.PERMISSION_STATE_PERMANENT)
    await wacall.advance(400 * DAY)
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_PERMANENT
    assert not permission.HasField("expires_at")
    assert call_action(permission).allowed
    request = request_action(permission)
    assert request.reason == pb.REASON_ALREADY_PERMANENT and not request.HasField("next_allowed_at")
    error = await refused(wacall.request())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error_details(error)
    assert [v.type for v in details.precondition_violations] == ["ALREADY_PERMANENT"]


async def test_user_reject_leaves_no_permission_and_a_later_accept_grants(wacall: Running) -> None:
    await wacall.behave(USER, sim_pb.REJECT)
    await wacall.request()
    rejected = await wacall.wait_for_state(pb.PERMISSION_STATE_REJECTED)
    assert call_action(rejected).reason == pb.REASON_PERMISSION_REJECTED
    # A decline is not final: the user can still grant from the business profile.
    await wacall.sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER))
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_TEMPORARY


async def test_ignored_request_stays_requested_and_counts(wacall: Running) -> None:
    await wacall.behave(USER, sim_pb.IGNORE)
    await wacall.request()
    await wacall.advance(HOUR)
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_REQUESTED
    assert [limit.used for limit in request_action(permission).limits] == [1, 1]


async def test_second_request_within_24h_is_resource_exhausted_with_retry_info(wacall: Running) -> None:
    first = await wacall.request()
    sent_at = first.permission.actions[0].limits[0].resets_at.ToSeconds() - DAY - MARGIN
    await wacall.advance(5 * HOUR)
    error = await refused(wacall.request())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error_details(error)
    assert details.retry_after is not None and details.retry_after.total_seconds() == DAY - 5 * HOUR + MARGIN
    assert len(details.quota_violations) == 1 and "1 of 1 per 24 h" in details.quota_violations[0].description
    permission = await wacall.permission()
    request = request_action(permission)
    assert request.reason == pb.REASON_REQUEST_LIMIT_REACHED
    assert request.next_allowed_at.ToSeconds() == sent_at + DAY + MARGIN
    # Nothing was sent the second time.
    assert len((await wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))).messages) == 1


async def test_third_request_within_7_days_waits_for_the_oldest_to_age_out(wacall: Running) -> None:
    start = (await wacall.now()).timestamp()
    await wacall.request()
    await wacall.advance(DAY + MARGIN)  # the 24 h window frees once the margin has passed too
    await wacall.request()
    await wacall.advance(DAY + MARGIN)
    permission = await wacall.permission()
    request = request_action(permission)
    assert not request.allowed and request.reason == pb.REASON_REQUEST_LIMIT_REACHED
    assert [limit.used for limit in request.limits] == [0, 2]
    assert request.next_allowed_at.ToSeconds() == start + 7 * DAY + MARGIN
    await wacall.advance(5 * DAY - MARGIN - 1)
    assert not request_action(await wacall.permission()).allowed
    await wacall.advance(1)
    assert request_action(await wacall.permission()).allowed
    third = await wacall.request()
    assert third.message_id


async def test_next_allowed_at_is_the_latest_over_blocking_windows(wacall: Running) -> None:
    start = (await wacall.now()).timestamp()
    await wacall.request()
    await wacall.advance(6 * DAY)
    await wacall.request()  # now both windows are full: 24 h frees at +7d, 7 d frees at start+7d
    request = request_action(await wacall.permission())
    assert [limit.used for limit in request.limits] == [1, 2]
    assert request.next_allowed_at.ToSeconds() == start + 7 * DAY + MARGIN


async def test_revoke_from_profile_removes_permission(wacall: Running) -> None:
    await wacall.sim.GrantPermission(
        sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER, permanent=True)
    )
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_PERMANENT
    await wacall.sim.RevokePermission(sim_pb.RevokePermissionRequest(business_number=BUSINESS, user_number=USER))
    revoked = await wacall.permission()
    assert revoked.state == pb.PERMISSION_STATE_REVOKED
    assert call_action(revoked).reason == pb.REASON_PERMISSION_REVOKED
    assert request_action(revoked).allowed


async def test_regrant_after_revoke_restores_calls(wacall: Running) -> None:
    await wacall.sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER))
    await wacall.sim.RevokePermission(sim_pb.RevokePermissionRequest(business_number=BUSINESS, user_number=USER))
    await wacall.advance(60)
    await wacall.sim.GrantPermission(
        sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER, permanent=True)
    )
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_PERMANENT and call_action(permission).allowed


async def test_business_number_from_denied_country_is_refused_before_sending(wacall: Running) -> None:
    permission = await wacall.permission(US_BUSINESS, USER)
    assert request_action(permission).reason == pb.REASON_COUNTRY_UNSUPPORTED
    assert call_action(permission).reason == pb.REASON_COUNTRY_UNSUPPORTED
    assert not request_action(permission).HasField("next_allowed_at")
    error = await refused(wacall.request(US_BUSINESS, USER))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [v.type for v in error_details(error).precondition_violations] == ["COUNTRY_UNSUPPORTED"]
    assert "country" in (error.details() or "")
    assert not (await wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))).messages


async def test_pairs_are_independent(wacall: Running) -> None:
    await wacall.request(BUSINESS, USER)
    other = await wacall.permission(BUSINESS, OTHER_USER)
    assert request_action(other).allowed and other.state == pb.PERMISSION_STATE_NONE


async def test_concurrent_requests_for_one_pair_send_exactly_one(wacall: Running) -> None:
    results = await asyncio.gather(*(wacall.request() for _ in range(20)), return_exceptions=True)
    successes = [r for r in results if isinstance(r, pb.RequestPermissionResponse)]
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(successes) == 1 and len(failures) == 19
    assert {f.code() for f in failures} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    messages = (await wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))).messages
    assert len(messages) == 1


async def test_concurrent_requests_under_sandbox_policy_stop_exactly_at_the_daily_limit(make_service) -> None:  # type: ignore[no-untyped-def]
    running = await make_service(policy="sandbox")
    results = await asyncio.gather(*(running.request() for _ in range(40)), return_exceptions=True)
    assert sum(isinstance(r, pb.RequestPermissionResponse) for r in results) == 25
    messages = (await running.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))).messages
    assert len(messages) == 25


async def test_same_idempotency_key_never_sends_twice(wacall: Running) -> None:
    first = await wacall.request(idempotency_key="order-1522")
    again = await wacall.request(idempotency_key="order-1522")
    assert again.replayed and not first.replayed
    assert again.message_id == first.message_id and again.channel == first.channel
    assert len((await wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))).messages) == 1


async def test_idempotency_key_reused_for_a_different_request_is_invalid(wacall: Running) -> None:
    await wacall.request(idempotency_key="k1")
    error = await refused(wacall.request(BUSINESS, OTHER_USER, idempotency_key="k1"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error_details(error).field_violations] == ["idempotency_key"]


async def test_platform_refusal_does_not_consume_the_limit(wacall: Running) -> None:
    # An unknown template is refused by the platform (132001): nothing was sent, so nothing counts.
    error = await refused(wacall.request(template=pb.Template(name="no_such_template", language="en")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "132001" in (error.details() or "")
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_NONE
    assert request_action(permission).allowed and [x.used for x in request_action(permission).limits] == [0, 0]
    events = await wacall.calling.ListEvents(pb.ListEventsRequest(business_number=BUSINESS, user_number=USER))
    assert [e.kind for e in events.events] == [pb.EVENT_KIND_PERMISSION_REQUEST_FAILED]
    assert events.events[0].attributes["platform_error"] == "132001"


async def test_window_closed_and_no_template_is_refused_with_what_to_do(make_service) -> None:  # type: ignore[no-untyped-def]
    # The simulator provisions senders with a default template; a configured sender without one shows the refusal.
    meta = MetaAccount(BUSINESS, "1" + BUSINESS[1:], "2" + BUSINESS[1:], "configured-token", "configured")
    sender = meta.account(default_template=None)
    running = await make_service(senders=(sender,))
    permission = await running.permission()
    assert request_action(permission).reason == pb.REASON_NO_TEMPLATE_FOR_CLOSED_WINDOW
    error = await refused(running.request())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [v.type for v in error_details(error).precondition_violations] == ["NO_TEMPLATE"]
    assert "template" in (error.details() or "")
    # Opening the window makes the interactive channel available.
    await running.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    assert (await running.request()).channel == pb.CHANNEL_INTERACTIVE


async def test_policy_overrides_change_the_limits(make_service) -> None:  # type: ignore[no-untyped-def]
    running = await make_service(
        policy_overrides={"request_limits": [{"window_seconds": 3600, "max_allowed": 2}]},
    )
    await running.request()
    await running.request()
    request = request_action(await running.permission())
    now = (await running.now()).timestamp()
    assert not request.allowed and request.next_allowed_at.ToSeconds() == now + 3600 + MARGIN
    policy = await running.calling.GetPolicy(pb.GetPolicyRequest())
    assert policy.name == "seed+custom"
    assert [(x.window.seconds, x.max_allowed) for x in policy.permission_request_limits] == [(3600, 2)]


@pytest.mark.parametrize(
    ("preset", "calls", "prompt", "revoke", "requests"),
    [("seed", 5, 2, 4, (1, 2)), ("meta-current", 100, 2, 4, (1, 2)), ("sandbox", 100, 5, 10, (25, 100))],
)
async def test_get_policy_reports_each_preset(make_service, preset, calls, prompt, revoke, requests) -> None:  # type: ignore[no-untyped-def]
    running = await make_service(policy=preset)
    policy = await running.calling.GetPolicy(pb.GetPolicyRequest())
    assert policy.name == preset
    assert [x.max_allowed for x in policy.connected_call_limits] == [calls]
    assert (policy.prompt_after_unanswered, policy.revoke_after_unanswered) == (prompt, revoke)
    assert tuple(x.max_allowed for x in policy.permission_request_limits) == requests
    assert sorted(policy.denied_business_regions) == ["CA", "EG", "NG", "TR", "US", "VN"]


async def test_user_answering_later_is_delivered_when_the_clock_reaches_it(wacall: Running) -> None:
    await wacall.behave(USER, sim_pb.ACCEPT_TEMPORARY, delay_seconds=2 * HOUR)
    await wacall.request()
    await wacall.advance(HOUR)
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_REQUESTED
    answered_at = await wacall.advance(HOUR)
    # Advance returns once whatever fell due has been delivered and committed.
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_TEMPORARY
    assert permission.expires_at.ToSeconds() == answered_at.timestamp() + 7 * DAY


async def test_outdated_client_request_failure_is_audited_and_still_counts(wacall: Running) -> None:
    await wacall.sim.SetUserBehavior(sim_pb.SetUserBehaviorRequest(user_number=USER, outdated_client=True))
    sent = await wacall.request()

    async def events() -> pb.ListEventsResponse:
        return await wacall.calling.ListEvents(pb.ListEventsRequest(user_number=USER))

    failure = (await wait_until(events, lambda r: len(r.events) == 2)).events[1]
    assert failure.kind == pb.EVENT_KIND_PERMISSION_REQUEST_FAILED
    assert failure.attributes["platform_error"] == "131026" and failure.attributes["message_id"] == sent.message_id
    # Fail closed: the platform may have counted it, so wacall does too.
    assert [x.used for x in request_action(await wacall.permission()).limits] == [1, 1]


async def test_reply_from_a_wa_id_that_differs_from_the_number_lands_on_the_right_pair(wacall: Running) -> None:
    # Brazilian mobiles: WhatsApp may know +55 11 98765-4321 as 551187654321 (no mobile 9) (HOOK-8).
    await wacall.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(
            user_number=OTHER_USER, on_permission_request=sim_pb.ACCEPT_TEMPORARY, wa_id="551187654321"
        )
    )
    await wacall.request(BUSINESS, OTHER_USER)
    granted = await wacall.wait_for_state(pb.PERMISSION_STATE_TEMPORARY, user=OTHER_USER)
    assert granted.user_number == OTHER_USER
    # Later messages from that wa_id open the window of the same pair.
    await wacall.sim.SendUserMessage(
        sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=OTHER_USER, text="hi")
    )
    assert (await wacall.permission(BUSINESS, OTHER_USER)).HasField("service_window_expires_at")
    events = await wacall.calling.ListEvents(pb.ListEventsRequest())
    assert {e.user_number for e in events.events} == {OTHER_USER} and len(events.events) == 3


async def test_reconcile_adopts_a_grant_the_platform_knows_and_we_missed(wacall: Running) -> None:
    platform = wacall.service.platform
    assert platform is not None
    # The user granted permanently, but the webhook never reached us.
    now = await wacall.now()
    platform._apply(BUSINESS, USER, engine.PermissionGranted(now, True, None, engine.Source.USER_ACTION))
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_NONE
    reconciled = await wacall.calling.GetPermission(
        pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER, reconcile=True)
    )
    assert reconciled.state == pb.PERMISSION_STATE_PERMANENT
    events = (await wacall.calling.ListEvents(pb.ListEventsRequest())).events
    assert events[-1].kind == pb.EVENT_KIND_PERMISSION_GRANTED
    assert events[-1].source == pb.EVENT_SOURCE_PLATFORM_AUTOMATIC
    assert events[-1].attributes["reconciled_from"] == "call_permissions"


async def test_reconcile_applies_a_revocation_the_platform_never_announced(wacall: Running) -> None:
    await wacall.sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER))
    platform = wacall.service.platform
    assert platform is not None
    platform.state.ledgers.clear()  # revoked on the platform, silently (HOOK-6)
    reconciled = await wacall.calling.GetPermission(
        pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER, reconcile=True)
    )
    assert reconciled.state == pb.PERMISSION_STATE_REVOKED
    # Nothing changes when both sides agree.
    again = await wacall.calling.GetPermission(
        pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER, reconcile=True)
    )
    assert again.state == pb.PERMISSION_STATE_REVOKED
    assert len((await wacall.calling.ListEvents(pb.ListEventsRequest())).events) == 2
