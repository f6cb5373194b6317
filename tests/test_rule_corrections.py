"""Rule corrections, end to end over gRPC against the simulator with the manual clock (README "The rules").

A callback grant never downgrades; facts adopted from the platform stamp nothing ahead of the webhooks; margins at
the edges of every limit and of the service window; a request nobody answers expires; times keep their microseconds.
Webhooks the simulator cannot be made to send at a chosen moment are built with its Meta-shaped builders, signed with
the app secret and POSTed over real HTTP.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from conftest import (
    BUSINESS,
    DAY,
    HOUR,
    MARGIN,
    MINUTE,
    USER,
    Running,
    call_action,
    refused,
    request_action,
    settings_for,
    start_service,
    stop_service,
    wait_until,
)
from google.protobuf import timestamp_pb2
from legacy_schemas import VERSION_1
from wacall_client import error_details
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.numbers import parse_number
from wacall.rules import engine
from wacall.store import SCHEMA_VERSION, SqliteStore, StoreError, ledger_from_json, ledger_to_json, to_micros
from wacall.upstreams.meta import wire as payloads
from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH, sign

STREAM = pb.Route(media_stream=pb.MediaStreamRoute())
MICROSECOND = 1e-6


# --- helpers ------------------------------------------------------------------------------------------------------


async def deliver(running: Running, body: dict[str, Any]) -> httpx.Response:
    """POST a webhook signed with the app secret, as the platform does."""
    platform = running.service.platform
    assert platform is not None
    raw = json.dumps(body, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(platform.app_secret.encode(), raw)}
    async with httpx.AsyncClient(base_url=f"http://{running.addresses.http}", timeout=10.0) as client:
        return await client.post(WEBHOOK_PATH, content=raw, headers=headers)


async def user_reply(
    running: Running, at: datetime, *, accept: bool, context_id: str | None = None, permanent: bool = False
) -> httpx.Response:
    """A call_permission_reply from USER stamped `at` (no context: from the business profile)."""
    platform = running.service.platform
    assert platform is not None
    account = platform.provision(parse_number(BUSINESS))
    expires = None if permanent or not accept else at + timedelta(days=7)
    body = payloads.permission_reply(
        account,
        USER[1:],
        "wamid.TEST" + uuid.uuid4().hex.upper(),
        at,
        accept=accept,
        permanent=permanent,
        expires_at=expires,
        context_id=context_id,
    )
    response = await deliver(running, body)
    assert response.status_code == 200, response.text
    return response


def platform_grants_silently(running: Running, at: datetime, permanent: bool = True) -> None:
    """The user's grant reached the platform, but its webhook never reached wacall (HOOK-6)."""
    platform = running.service.platform
    assert platform is not None
    expires = None if permanent else at + timedelta(days=7)
    platform._apply(BUSINESS, USER, engine.PermissionGranted(at, permanent, expires, engine.Source.USER_ACTION))


async def events(running: Running) -> list[pb.Event]:
    response = await running.calling.ListEvents(pb.ListEventsRequest(business_number=BUSINESS, user_number=USER))
    return list(response.events)


async def reconcile(running: Running) -> pb.Permission:
    return await running.calling.GetPermission(
        pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER, reconcile=True)
    )


def micros(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1_000


async def hang_up_user_call(running: Running, platform_call_id: str) -> None:
    await running.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=platform_call_id))
    await wait_until(
        lambda: running.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
        lambda r: all(c.state == pb.CALL_STATE_ENDED for c in r.calls),
    )


async def user_calls_and_is_answered(running: Running) -> str:
    """The user calls the business; wacall's inbound route answers. Returns the platform call id."""
    phone = await running.sim.PlaceUserCall(sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER))
    await wait_until(
        lambda: running.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
        lambda r: any(c.platform_call_id == phone.platform_call_id and c.HasField("answered_at") for c in r.calls),
    )
    return phone.platform_call_id


# --- a callback grant never downgrades ----------------------------------------------------------------------------


async def test_a_permanent_user_who_calls_the_business_stays_permanent(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(talk=0)
    platform_call_id = await user_calls_and_is_answered(wacall)
    await hang_up_user_call(wacall, platform_call_id)
    # The platform's automatic temporary grant arrived and was absorbed: nothing was lowered.
    callback = [e for e in await events(wacall) if e.attributes.get("via") == "callback"]
    assert len(callback) == 1 and callback[0].attributes["absorbed"] == "true"
    assert callback[0].permission_state == pb.PERMISSION_STATE_PERMANENT

    await wacall.advance(8 * DAY)
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_PERMANENT and not permission.HasField("expires_at")
    assert call_action(permission).allowed
    assert request_action(permission).reason == pb.REASON_ALREADY_PERMANENT
    error = await refused(wacall.request())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [v.type for v in error_details(error).precondition_violations] == ["ALREADY_PERMANENT"]
    # The platform agrees: still permanent there too.
    platform = await wacall.sim.GetPlatformPermission(
        sim_pb.GetPlatformPermissionRequest(business_number=BUSINESS, user_number=USER)
    )
    assert platform.status == "permanent"
    await wacall.phone()
    call = await wacall.start_call(route=STREAM)
    connected = await wacall.wait_call(call.call_id, pb.CALL_STATE_CONNECTED)
    assert connected.HasField("answered_at")
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))


async def test_a_callback_grant_extends_a_temporary_grant_that_would_expire_sooner(wacall: Running) -> None:
    await wacall.grant()
    granted_at = await wacall.now()
    await wacall.advance(2 * DAY)
    platform_call_id = await user_calls_and_is_answered(wacall)
    called_at = await wacall.now()
    await hang_up_user_call(wacall, platform_call_id)
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_TEMPORARY
    assert permission.expires_at.ToDatetime(UTC) == called_at + timedelta(days=7) > granted_at + timedelta(days=7)


# --- adopted facts stamp nothing ahead of the webhooks -------------------------------------------------------------


async def test_an_earlier_user_revoke_still_in_flight_beats_a_grant_adopted_by_reconcile(wacall: Running) -> None:
    await wacall.grant()  # the last real change, at t0
    t0 = await wacall.now()
    upgraded_at = await wacall.advance(10)
    platform_grants_silently(wacall, upgraded_at)  # t0 + 10: permanent on the platform, never told
    await wacall.advance(20)
    adopted = await reconcile(wacall)  # t0 + 30
    assert adopted.state == pb.PERMISSION_STATE_PERMANENT
    assert adopted.updated_at.ToDatetime(UTC) == t0  # the ordering mark did not move
    assert (await events(wacall))[-1].attributes["adopted"] == "true"
    # The user revoked at t0 + 20; that webhook arrives only now.
    await user_reply(wacall, t0 + timedelta(seconds=20), accept=False)
    revoked = await wacall.permission()
    assert revoked.state == pb.PERMISSION_STATE_REVOKED
    assert not call_action(revoked).allowed
    assert "stale" not in (await events(wacall))[-1].attributes


async def test_a_webhook_older_than_the_last_real_change_stays_stale_after_an_adoption(wacall: Running) -> None:
    t0 = await wacall.now()
    await wacall.advance(10)
    await wacall.grant()  # the last real change, at t0 + 10
    platform_grants_silently(wacall, await wacall.advance(10))
    await wacall.advance(10)
    assert (await reconcile(wacall)).state == pb.PERMISSION_STATE_PERMANENT
    await user_reply(wacall, t0 + timedelta(seconds=5), accept=False)
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_PERMANENT
    assert (await events(wacall))[-1].attributes["stale"] == "true"


async def test_a_grant_adopted_by_reconcile_leaves_the_unanswered_streak_intact(wacall: Running) -> None:
    await wacall.grant()
    await wacall.phone(on_call=sim_pb.NO_ANSWER)
    call = await wacall.start_call(route=STREAM)
    await wacall.advance(60)  # the phone rings out
    await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert (await wacall.permission()).consecutive_unanswered_calls == 1
    platform_grants_silently(wacall, await wacall.now())
    adopted = await reconcile(wacall)
    assert adopted.state == pb.PERMISSION_STATE_PERMANENT
    assert adopted.consecutive_unanswered_calls == 1


async def test_a_permanent_grant_adopted_from_138017_yields_to_an_earlier_revoke(wacall: Running) -> None:
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    t0 = await wacall.now()
    platform_grants_silently(wacall, await wacall.advance(10))
    await wacall.advance(20)
    error = await refused(wacall.request())  # the platform refuses with 138017: wacall adopts the permanent grant
    assert "138017" in (error.details() or "")
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_PERMANENT
    adopted = (await events(wacall))[-1]
    assert (adopted.attributes["reconciled_from"], adopted.attributes["adopted"]) == ("138017", "true")
    await user_reply(wacall, t0 + timedelta(seconds=15), accept=False)
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_REVOKED


async def test_a_revocation_adopted_from_138006_does_not_move_the_ordering_mark(wacall: Running) -> None:
    await wacall.grant()
    granted_at = await wacall.now()
    platform = wacall.service.platform
    assert platform is not None
    platform.state.ledgers.clear()  # revoked on the platform, silently
    await wacall.advance(30)
    error = await refused(wacall.start_call(route=STREAM))
    assert "138006" in (error.details() or "")
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_REVOKED
    assert permission.updated_at.ToDatetime(UTC) == granted_at
    revocation = [e for e in await events(wacall) if e.kind == pb.EVENT_KIND_PERMISSION_REVOKED][-1]
    assert (revocation.attributes["reconciled_from"], revocation.attributes["adopted"]) == ("138006", "true")


# --- margins at the edges -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "lifetime_days"), [("seed", 7), ("meta-current", 7), ("sandbox", 7)], ids=["seed", "meta", "sandbox"]
)
async def test_get_policy_reports_both_margins_and_the_request_lifetime(make_service, preset, lifetime_days) -> None:  # type: ignore[no-untyped-def]
    running: Running = await make_service(policy=preset)
    policy = await running.calling.GetPolicy(pb.GetPolicyRequest())
    assert policy.boundary_margin.ToTimedelta() == timedelta(seconds=MARGIN)
    assert policy.window_margin.ToTimedelta() == timedelta(minutes=1)
    assert policy.request_lifetime.ToTimedelta() == timedelta(days=lifetime_days)


async def test_margins_are_overridable_from_configuration(make_service) -> None:  # type: ignore[no-untyped-def]
    running: Running = await make_service(
        policy_overrides={"boundary_margin_seconds": 0.5, "window_margin_seconds": 0, "request_lifetime_seconds": 3600}
    )
    policy = await running.calling.GetPolicy(pb.GetPolicyRequest())
    assert (policy.boundary_margin.ToTimedelta(), policy.window_margin.ToTimedelta()) == (
        timedelta(milliseconds=500),
        timedelta(0),
    )
    assert policy.request_lifetime.ToTimedelta() == timedelta(hours=1) and policy.name == "seed+custom"
    sent = await running.request()
    resets_at = request_action(sent.permission).limits[0].resets_at.ToDatetime(UTC)
    assert resets_at == await running.now() + timedelta(days=1, milliseconds=500)


async def test_a_request_is_allowed_exactly_at_next_allowed_at_and_not_a_microsecond_before(wacall: Running) -> None:
    sent_at = await wacall.now()
    await wacall.request()
    await wacall.advance(HOUR)
    blocked = request_action(await wacall.permission())
    next_allowed_at = blocked.next_allowed_at.ToDatetime(UTC)
    assert next_allowed_at == sent_at + timedelta(days=1, seconds=MARGIN)
    assert blocked.limits[0].resets_at.ToDatetime(UTC) == next_allowed_at
    await wacall.advance((next_allowed_at - await wacall.now()).total_seconds() - MICROSECOND)
    assert not request_action(await wacall.permission()).allowed
    error = await refused(wacall.request())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details(error).retry_after
    assert retry is not None and retry == timedelta(microseconds=1)
    await wacall.advance(MICROSECOND)
    assert await wacall.now() == next_allowed_at
    assert request_action(await wacall.permission()).allowed
    # The platform freed it 2 s earlier, so it accepts the request.
    assert (await wacall.request()).message_id


async def test_a_call_is_allowed_exactly_at_next_allowed_at_and_not_a_microsecond_before(make_service) -> None:  # type: ignore[no-untyped-def]
    running: Running = await make_service(
        policy_overrides={"connected_call_limits": [{"window_seconds": 3600, "max_allowed": 1}]}
    )
    await running.grant(permanent=True)
    await running.phone()
    first = await running.start_call(route=STREAM)
    await running.wait_call(first.call_id, pb.CALL_STATE_CONNECTED)
    await running.calling.EndCall(pb.EndCallRequest(call_id=first.call_id))
    answered = (await running.wait_call(first.call_id, pb.CALL_STATE_ENDED)).answered_at.ToDatetime(UTC)
    blocked = call_action(await running.permission())
    assert blocked.next_allowed_at.ToDatetime(UTC) == answered + timedelta(hours=1, seconds=MARGIN)
    await running.advance((blocked.next_allowed_at.ToDatetime(UTC) - await running.now()).total_seconds() - MICROSECOND)
    error = await refused(running.start_call(route=STREAM))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await running.advance(MICROSECOND)
    second = await running.start_call(route=STREAM)
    assert (await running.wait_call(second.call_id, pb.CALL_STATE_CONNECTED)).HasField("answered_at")
    await running.calling.EndCall(pb.EndCallRequest(call_id=second.call_id))


async def test_the_template_is_preferred_in_the_last_minute_of_the_service_window(wacall: Running) -> None:
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    await wacall.advance(DAY - MINUTE)
    assert request_action(await wacall.permission()).channel == pb.CHANNEL_INTERACTIVE
    await wacall.advance(MICROSECOND)
    permission = await wacall.permission()
    assert permission.HasField("service_window_expires_at")
    assert request_action(permission).channel == pb.CHANNEL_TEMPLATE
    sent = await wacall.request()
    assert sent.channel == pb.CHANNEL_TEMPLATE
    messages = (await wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))).messages
    assert [m.type for m in messages] == [sim_pb.MESSAGE_TYPE_TEMPLATE]


# --- a request nobody answers expires -----------------------------------------------------------------------------


async def test_an_unanswered_request_expires_after_7_days_and_the_pair_reads_none_again(wacall: Running) -> None:
    await wacall.request()
    sent_at = await wacall.now()
    await wacall.advance(7 * DAY - MICROSECOND)
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_REQUESTED
    await wacall.advance(MICROSECOND)
    assert await wacall.now() == sent_at + timedelta(days=7)
    expired = await wacall.permission()
    assert expired.state == pb.PERMISSION_STATE_NONE
    assert call_action(expired).reason == pb.REASON_NO_PERMISSION


async def test_an_expired_request_leaves_a_declined_pair_rejected(wacall: Running) -> None:
    await wacall.behave(USER, sim_pb.REJECT)
    await wacall.request()
    await wacall.wait_for_state(pb.PERMISSION_STATE_REJECTED)
    await wacall.advance(DAY + MARGIN)
    await wacall.behave(USER, sim_pb.IGNORE)
    await wacall.request()
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_REQUESTED
    await wacall.advance(7 * DAY)
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_REJECTED
    assert call_action(permission).reason == pb.REASON_PERMISSION_REJECTED


async def test_a_grant_replying_to_a_dead_request_is_recorded_and_not_applied(wacall: Running) -> None:
    sent = await wacall.request()
    sent_at = await wacall.now()
    await wacall.advance(7 * DAY)
    await user_reply(wacall, sent_at + timedelta(days=7), accept=True, context_id=sent.message_id)
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_NONE and not call_action(permission).allowed
    reply = (await events(wacall))[-1]
    assert reply.kind == pb.EVENT_KIND_PERMISSION_GRANTED
    assert (reply.attributes["request_expired"], reply.attributes["context_id"]) == ("true", sent.message_id)


async def test_a_grant_replying_to_a_live_request_in_its_last_second_is_applied(wacall: Running) -> None:
    sent = await wacall.request()
    sent_at = await wacall.now()
    await wacall.advance(7 * DAY - 1)
    await user_reply(wacall, sent_at + timedelta(days=7, seconds=-1), accept=True, context_id=sent.message_id)
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_TEMPORARY and call_action(permission).allowed
    assert "request_expired" not in (await events(wacall))[-1].attributes


async def test_a_decline_replying_to_a_dead_request_still_applies(wacall: Running) -> None:
    await wacall.grant()
    sent = await wacall.request()  # allowed while the temporary grant is live
    sent_at = await wacall.now()
    await wacall.advance(7 * DAY + HOUR)
    await user_reply(wacall, sent_at + timedelta(days=7, hours=1), accept=False, context_id=sent.message_id)
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_REJECTED
    assert (await events(wacall))[-1].attributes["request_expired"] == "true"


async def test_a_simulated_user_cannot_answer_a_request_after_it_died(wacall: Running) -> None:
    await wacall.behave(USER, sim_pb.ACCEPT_TEMPORARY, delay_seconds=8 * DAY)
    await wacall.request()
    await wacall.advance(8 * DAY)
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_NONE
    messages = (await wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number=USER))).messages
    assert [m.user_response for m in messages] == ["expired"]


# --- times keep their microseconds ----------------------------------------------------------------------------------


async def test_times_keep_their_microseconds_in_the_ledger_the_audit_log_and_after_a_restart(tmp_path: Path) -> None:
    running = await start_service(settings_for(tmp_path))
    try:
        await running.advance(0.123456)
        sent_at = await running.now()
        assert sent_at.microsecond == 123456
        sent = await running.request()
        assert micros(request_action(sent.permission).limits[0].resets_at) == to_micros(
            sent_at + timedelta(days=1, seconds=MARGIN)
        )
        (event,) = await events(running)
        assert micros(event.occurred_at) == micros(event.recorded_at) == to_micros(sent_at)
    finally:
        await stop_service(running)
    again = await start_service(settings_for(tmp_path))
    try:
        (event,) = await events(again)
        assert event.occurred_at.nanos == 123_456_000
        limits = request_action(await again.permission()).limits
        assert limits[0].resets_at.nanos == 123_456_000
    finally:
        await stop_service(again)


async def test_a_request_sent_after_a_connected_call_in_the_same_second_still_counts(wacall: Running) -> None:
    await wacall.grant()
    await wacall.advance(0.25)
    platform_call_id = await user_calls_and_is_answered(wacall)  # answered at .25
    await wacall.advance(0.5)
    sent = await wacall.request()  # at .75, after the call: it counts
    assert [x.used for x in request_action(sent.permission).limits] == [1, 1]
    await hang_up_user_call(wacall, platform_call_id)
    assert [x.used for x in request_action(await wacall.permission()).limits] == [1, 1]


async def test_a_request_sent_before_a_connected_call_in_the_same_second_is_reset(wacall: Running) -> None:
    await wacall.grant()
    await wacall.advance(0.25)
    await wacall.request()  # at .25
    await wacall.advance(0.5)
    platform_call_id = await user_calls_and_is_answered(wacall)  # answered at .75, after the request: reset
    assert [x.used for x in request_action(await wacall.permission()).limits] == [0, 0]
    await hang_up_user_call(wacall, platform_call_id)
    assert request_action(await wacall.permission()).allowed


# --- databases from earlier versions -------------------------------------------------------------------------------


def _legacy_database(path: Path, requested_at: datetime) -> None:
    """A database as earlier versions wrote it: no schema version, ledgers without request expiries, and the user's
    column named `user` (renamed `user_number` in version 2)."""
    db = sqlite3.connect(path)
    db.executescript(VERSION_1)
    ledger = {
        "state": "requested",
        "expires_at": None,
        "state_changed_at": None,
        "request_times": [to_micros(requested_at)],
        "connected_call_times": [],
        "consecutive_unanswered": 0,
        "last_connected_at": None,
        "last_user_message_at": None,
    }
    db.execute(
        "INSERT INTO pairs (business, user, ledger, updated_at) VALUES (?, ?, ?, ?)",
        (BUSINESS, USER, json.dumps(ledger), to_micros(requested_at)),
    )
    db.execute(
        "INSERT INTO events (business, user, kind, source, occurred_at, recorded_at, state_after, attributes) "
        "VALUES (?, ?, 'permission_request_sent', 'business', ?, ?, 'requested', '{}')",
        (BUSINESS, USER, to_micros(requested_at), to_micros(requested_at)),
    )
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()


async def test_a_database_from_an_earlier_version_opens_and_reads_correctly(make_service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    probe: Running = await make_service(db=f"sqlite:///{tmp_path / 'probe.db'}")
    now = await probe.now()
    requested_at = now - timedelta(hours=3, microseconds=-250_000)
    path = tmp_path / "legacy.db"
    _legacy_database(path, requested_at)
    running: Running = await make_service(db=f"sqlite:///{path}")
    (event,) = await events(running)
    assert micros(event.occurred_at) == to_micros(requested_at)
    permission = await running.permission()
    # Still asked (a legacy request lives 7 days from its send), still counted, to the microsecond.
    assert permission.state == pb.PERMISSION_STATE_REQUESTED
    request = request_action(permission)
    assert [x.used for x in request.limits] == [1, 1]
    assert micros(request.next_allowed_at) == to_micros(requested_at + timedelta(days=1, seconds=MARGIN))
    migrated = sqlite3.connect(path)
    assert migrated.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    tables = [row[0] for row in migrated.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        columns = {row[1] for row in migrated.execute(f"PRAGMA table_info({table})")}
        assert "user" not in columns, table  # a reserved word in PostgreSQL


def test_a_database_from_a_later_version_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore(path)


def test_a_ledger_keeps_its_request_expiries_and_earlier_state_through_the_store() -> None:
    at = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC)
    ledger = engine.Ledger(
        state=engine.PermissionState.REQUESTED,
        request_times=(at,),
        request_expiries=(at + timedelta(days=7),),
        state_before_request=engine.PermissionState.REJECTED,
    )
    assert ledger_from_json(ledger_to_json(ledger)) == ledger
