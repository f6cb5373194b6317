"""Webhook ingress end to end: real HTTP POSTs to /webhooks/whatsapp, signed for real, effects read over gRPC.

whatsapp-calling.md §6 (envelope, handshake, X-Hub-Signature-256, delivery semantics, call_permission_reply) and
pitfalls.md HOOK-1..HOOK-8. Every body is built with the simulator's Meta-shaped builders; timestamps come from the
service's manual clock (whole Unix seconds, as in webhooks).
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import BUSINESS, DAY, HOUR, OTHER_USER, USER, Running, call_action, duration, wait_until
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.config import ConfigError, load_settings
from wacall.numbers import parse_number
from wacall.upstreams.meta import wire as payloads
from wacall.upstreams.meta.accounts import MetaAccount
from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH, sign

# --- helpers ------------------------------------------------------------------------------------------------------


def account_of(running: Running, business: str = BUSINESS) -> MetaAccount:
    platform = running.service.platform
    assert platform is not None, "these tests need the embedded simulator (upstream=sim)"
    return platform.provision(parse_number(business))


def app_secret(running: Running) -> bytes:
    platform = running.service.platform
    assert platform is not None
    return platform.app_secret.encode()


def digits(number: str) -> str:
    return number.lstrip("+")


def wamid() -> str:
    return "wamid.TEST" + uuid.uuid4().hex.upper()


def unix(value: datetime) -> int:
    return int(value.timestamp())


def encode(body: dict[str, Any]) -> bytes:
    """Compact JSON, as the platform sends it."""
    return json.dumps(body, separators=(",", ":")).encode()


def first_message(body: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = body["entry"][0]["changes"][0]["value"]["messages"][0]
    return message


def reply_of(body: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = first_message(body)["interactive"]["call_permission_reply"]
    return reply


async def post_raw(running: Running, raw: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://{running.addresses.http}", timeout=10.0) as client:
        return await client.post(
            WEBHOOK_PATH, content=raw, headers={"Content-Type": "application/json", **(headers or {})}
        )


async def deliver(running: Running, body: dict[str, Any] | bytes) -> httpx.Response:
    """POST `body` signed with the app secret over exactly the bytes sent."""
    raw = body if isinstance(body, bytes) else encode(body)
    return await post_raw(running, raw, {SIGNATURE_HEADER: sign(app_secret(running), raw)})


async def delivered(running: Running, body: dict[str, Any] | bytes) -> dict[str, Any]:
    response = await deliver(running, body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def events_of(running: Running, business: str = BUSINESS, user: str = USER) -> list[pb.Event]:
    reply = await running.calling.ListEvents(
        pb.ListEventsRequest(business_number=business, user_number=user, page_size=1000), metadata=running.metadata
    )
    return list(reply.events)


async def all_events(running: Running) -> list[pb.Event]:
    reply = await running.calling.ListEvents(pb.ListEventsRequest(page_size=1000), metadata=running.metadata)
    return list(reply.events)


def request_action(permission: pb.Permission) -> pb.ActionStatus:
    (action,) = [a for a in permission.actions if a.action == pb.ACTION_SEND_PERMISSION_REQUEST]
    return action


def grant(
    running: Running,
    at: datetime,
    *,
    user: str = USER,
    permanent: bool = False,
    expires_at: datetime | None = None,
    context_id: str | None = None,
    automatic: bool = False,
    message_id: str | None = None,
) -> dict[str, Any]:
    return payloads.permission_reply(
        account_of(running),
        digits(user),
        message_id or wamid(),
        at,
        accept=True,
        permanent=permanent,
        expires_at=expires_at if expires_at is not None or permanent else at + timedelta(days=7),
        automatic=automatic,
        context_id=context_id,
    )


def reject(
    running: Running,
    at: datetime,
    *,
    user: str = USER,
    context_id: str | None = None,
    automatic: bool = False,
    message_id: str | None = None,
) -> dict[str, Any]:
    return payloads.permission_reply(
        account_of(running),
        digits(user),
        message_id or wamid(),
        at,
        accept=False,
        automatic=automatic,
        context_id=context_id,
    )


# --- GET verification handshake (§6.2) ----------------------------------------------------------------------------


async def handshake(running: Running, params: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://{running.addresses.http}", timeout=10.0) as client:
        return await client.get(WEBHOOK_PATH, params=params)


async def test_handshake_echoes_the_raw_challenge_as_plain_text(make_service: Any) -> None:
    running: Running = await make_service(webhook_verify_token="meatyhamhock")
    response = await handshake(
        running, {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "meatyhamhock"}
    )
    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")


async def test_handshake_refuses_wrong_token_wrong_mode_and_missing_parameters(make_service: Any) -> None:
    running: Running = await make_service(webhook_verify_token="meatyhamhock")
    for params in (
        {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "wrong"},
        {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "meatyhamhoc"},
        {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": ""},
        {"hub.mode": "subscribe", "hub.challenge": "1158201444"},
        {"hub.mode": "unsubscribe", "hub.challenge": "1158201444", "hub.verify_token": "meatyhamhock"},
        {"hub.challenge": "1158201444", "hub.verify_token": "meatyhamhock"},
        {},
    ):
        response = await handshake(running, params)
        assert response.status_code == 403, params
        assert "1158201444" not in response.text


async def test_handshake_refused_when_no_verify_token_is_configured(wacall: Running) -> None:
    for params in (
        {"hub.mode": "subscribe", "hub.challenge": "42", "hub.verify_token": ""},
        {"hub.mode": "subscribe", "hub.challenge": "42", "hub.verify_token": "anything"},
        {"hub.mode": "subscribe", "hub.challenge": "42"},
    ):
        response = await handshake(wacall, params)
        assert response.status_code == 403, params


# --- valid signed deliveries: call_permission_reply (§6.5) --------------------------------------------------------


async def test_temporary_grant_with_string_expiration_timestamp(wacall: Running) -> None:
    now = await wacall.now()
    # Differs from approval + 7 d on purpose: the platform's expiration_timestamp wins.
    expires = now + timedelta(days=6, hours=3)
    body = grant(wacall, now, expires_at=expires, context_id=wamid())
    assert reply_of(body)["expiration_timestamp"] == str(unix(expires))

    result = await delivered(wacall, body)

    assert result["applied"] == 1
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_TEMPORARY
    assert permission.expires_at.ToSeconds() == unix(expires)
    assert permission.updated_at.ToSeconds() == unix(now)
    (event,) = await events_of(wacall)
    assert event.kind == pb.EVENT_KIND_PERMISSION_GRANTED
    assert event.source == pb.EVENT_SOURCE_USER_ACTION
    assert event.permission_state == pb.PERMISSION_STATE_TEMPORARY
    assert event.occurred_at.ToSeconds() == unix(now)
    assert event.attributes["is_permanent"] == "false"
    assert event.attributes["message_id"] == first_message(body)["id"]
    assert event.attributes["via"] == "request"


async def test_temporary_grant_with_integer_expiration_timestamp(wacall: Running) -> None:
    now = await wacall.now()
    expires = now + timedelta(days=5)
    body = grant(wacall, now, expires_at=expires)
    reply_of(body)["expiration_timestamp"] = unix(expires)
    first_message(body)["timestamp"] = unix(now)  # older samples: integers everywhere

    await delivered(wacall, body)

    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_TEMPORARY
    assert permission.expires_at.ToSeconds() == unix(expires)


async def test_temporary_grant_expires_with_the_clock(wacall: Running) -> None:
    now = await wacall.now()
    await delivered(wacall, grant(wacall, now, expires_at=now + timedelta(days=7)))
    await wacall.advance(7 * DAY - 1)
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_TEMPORARY
    await wacall.advance(1)
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_EXPIRED


async def test_permanent_grant(wacall: Running) -> None:
    now = await wacall.now()
    body = grant(wacall, now, permanent=True, context_id=wamid())
    assert "expiration_timestamp" not in reply_of(body)

    await delivered(wacall, body)

    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_PERMANENT
    assert not permission.HasField("expires_at")
    assert request_action(permission).reason == pb.REASON_ALREADY_PERMANENT
    (event,) = await events_of(wacall)
    assert event.kind == pb.EVENT_KIND_PERMISSION_GRANTED
    assert event.attributes["is_permanent"] == "true"
    assert event.permission_state == pb.PERMISSION_STATE_PERMANENT


async def test_reject_with_context_is_a_declined_request(wacall: Running) -> None:
    now = await wacall.now()
    request_id = wamid()
    await delivered(wacall, reject(wacall, now, context_id=request_id))

    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_REJECTED
    (event,) = await events_of(wacall)
    assert event.kind == pb.EVENT_KIND_PERMISSION_REJECTED
    assert event.source == pb.EVENT_SOURCE_USER_ACTION
    assert event.permission_state == pb.PERMISSION_STATE_REJECTED
    assert event.attributes["context_id"] == request_id


async def test_reject_without_context_is_a_revoke_from_the_profile(wacall: Running) -> None:
    granted_at = await wacall.now()
    await delivered(wacall, grant(wacall, granted_at))
    revoked_at = await wacall.advance(60)

    await delivered(wacall, reject(wacall, revoked_at))

    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_REVOKED
    assert permission.updated_at.ToSeconds() == unix(revoked_at)
    granted, revoked = await events_of(wacall)
    assert granted.kind == pb.EVENT_KIND_PERMISSION_GRANTED
    assert revoked.kind == pb.EVENT_KIND_PERMISSION_REVOKED
    assert revoked.source == pb.EVENT_SOURCE_USER_ACTION
    assert revoked.permission_state == pb.PERMISSION_STATE_REVOKED
    assert revoked.attributes["via"] == "profile"


async def test_automatic_reject_without_context_is_a_platform_revoke(wacall: Running) -> None:
    granted_at = await wacall.now()
    await delivered(wacall, grant(wacall, granted_at, permanent=True))
    revoked_at = await wacall.advance(HOUR)

    await delivered(wacall, reject(wacall, revoked_at, automatic=True))

    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_REVOKED
    revoked = (await events_of(wacall))[-1]
    assert revoked.kind == pb.EVENT_KIND_PERMISSION_REVOKED
    assert revoked.source == pb.EVENT_SOURCE_PLATFORM_AUTOMATIC
    assert revoked.occurred_at.ToSeconds() == unix(revoked_at)


async def test_automatic_accept_with_wacid_context_is_a_callback_grant(wacall: Running) -> None:
    now = await wacall.now()
    expires = now + timedelta(days=7)
    call_id = "wacid.HBgLMTIwMTU1NTAxMjMVAgASGCA" + uuid.uuid4().hex.upper()
    await delivered(wacall, grant(wacall, now, expires_at=expires, automatic=True, context_id=call_id))

    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_TEMPORARY
    assert permission.expires_at.ToSeconds() == unix(expires)
    (event,) = await events_of(wacall)
    assert event.kind == pb.EVENT_KIND_PERMISSION_GRANTED
    assert event.source == pb.EVENT_SOURCE_PLATFORM_AUTOMATIC
    assert event.attributes["via"] == "callback"
    assert event.attributes["context_id"] == call_id


async def test_reply_is_matched_to_the_request_it_answers_even_when_wa_id_differs(wacall: Running) -> None:
    # HOOK-8: the wa_id in the reply (Brazil without the extra 9) is not the number the business asked.
    sent = await wacall.request(BUSINESS, OTHER_USER)
    now = await wacall.advance(10)
    body = grant(wacall, now, user="+551187654321", context_id=sent.message_id)
    assert first_message(body)["from"] == "551187654321"

    assert (await delivered(wacall, body))["applied"] == 1

    assert (await wacall.permission(BUSINESS, OTHER_USER)).state == pb.PERMISSION_STATE_TEMPORARY
    granted = (await events_of(wacall, BUSINESS, OTHER_USER))[-1]
    assert granted.kind == pb.EVENT_KIND_PERMISSION_GRANTED
    assert granted.attributes["context_id"] == sent.message_id


# --- inbound messages open the customer-service window (§3) -------------------------------------------------------


async def test_inbound_text_message_opens_the_service_window(wacall: Running) -> None:
    before = await wacall.permission()
    assert not before.HasField("service_window_expires_at")
    assert request_action(before).channel == pb.CHANNEL_TEMPLATE

    written_at = await wacall.advance(30)
    body = payloads.text_message(account_of(wacall), digits(USER), wamid(), written_at, "hi, call me later")
    await delivered(wacall, body)

    permission = await wacall.permission()
    assert permission.service_window_expires_at.ToSeconds() == unix(written_at) + 24 * HOUR
    assert request_action(permission).channel == pb.CHANNEL_INTERACTIVE
    assert permission.state == pb.PERMISSION_STATE_NONE  # a message grants nothing
    (event,) = await events_of(wacall)
    assert event.kind == pb.EVENT_KIND_USER_MESSAGE_RECEIVED
    assert event.occurred_at.ToSeconds() == unix(written_at)

    await wacall.advance(24 * HOUR)
    closed = await wacall.permission()
    assert not closed.HasField("service_window_expires_at")
    assert request_action(closed).channel == pb.CHANNEL_TEMPLATE


# --- signature (§6.3, HOOK-5) and malformed deliveries: rejected, nothing stored ----------------------------------


async def assert_nothing_stored(running: Running) -> None:
    assert await all_events(running) == []
    permission = await running.permission()
    assert permission.state == pb.PERMISSION_STATE_NONE
    assert not permission.HasField("service_window_expires_at")


async def test_wrong_signature_is_refused_and_nothing_changes(wacall: Running) -> None:
    now = await wacall.now()
    await delivered(wacall, grant(wacall, now, permanent=True))
    events_before = await all_events(wacall)

    forged = encode(reject(wacall, await wacall.advance(10), message_id="wamid.FORGED"))
    for key in (b"not-the-app-secret", app_secret(wacall) + b"x", b""):
        response = await post_raw(wacall, forged, {SIGNATURE_HEADER: sign(key, forged)})
        assert response.status_code == 401
    # A well-formed header with garbage hex, and the right digest without its "sha256=" prefix.
    for header in ("sha256=" + "0" * 64, sign(app_secret(wacall), forged).removeprefix("sha256=")):
        response = await post_raw(wacall, forged, {SIGNATURE_HEADER: header})
        assert response.status_code == 401

    assert (await wacall.permission()).state == pb.PERMISSION_STATE_PERMANENT
    assert await all_events(wacall) == events_before
    # The refused deliveries did not claim the message id: the genuine delivery still applies.
    assert (await delivered(wacall, forged))["applied"] == 1
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_REVOKED


async def test_missing_signature_is_refused(wacall: Running) -> None:
    raw = encode(grant(wacall, await wacall.now()))
    response = await post_raw(wacall, raw)
    assert response.status_code == 401
    # The legacy SHA-1 header alone is not enough.
    response = await post_raw(wacall, raw, {"X-Hub-Signature": "sha1=0123456789abcdef0123456789abcdef01234567"})
    assert response.status_code == 401
    await assert_nothing_stored(wacall)


async def test_signature_over_different_bytes_is_refused(wacall: Running) -> None:
    body = grant(wacall, await wacall.now())
    signed_over = encode(body)
    signature = sign(app_secret(wacall), signed_over)
    for sent in (
        json.dumps(body, indent=2).encode(),  # same JSON, different whitespace
        json.dumps(body).encode(),
        json.dumps(body, separators=(",", ":"), sort_keys=True).encode(),  # same JSON, different key order
        signed_over + b"\n",
    ):
        assert sent != signed_over
        response = await post_raw(wacall, sent, {SIGNATURE_HEADER: signature})
        assert response.status_code == 401
    await assert_nothing_stored(wacall)


async def test_signature_is_checked_over_the_raw_bytes_whatever_their_formatting(wacall: Running) -> None:
    # HOOK-5: a valid delivery must not be refused because it is not compact JSON.
    body = grant(wacall, await wacall.now())
    raw = json.dumps(body, indent=4).encode()
    response = await deliver(wacall, raw)
    assert response.status_code == 200
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_TEMPORARY


async def test_malformed_json_with_a_valid_signature_is_400_and_nothing_stored(wacall: Running) -> None:
    good = encode(grant(wacall, await wacall.now()))
    for raw in (good[:-7], b"not json at all", b"", b"\xff\xfe\x00garbage", b"[]", b"null"):
        response = await deliver(wacall, raw)
        assert response.status_code == 400, raw
    await assert_nothing_stored(wacall)


async def test_wrong_object_is_400(wacall: Running) -> None:
    body = grant(wacall, await wacall.now())
    for value in ("page", "instagram", None):
        body["object"] = value
        response = await deliver(wacall, body)
        assert response.status_code == 400
    del body["object"]
    assert (await deliver(wacall, body)).status_code == 400
    await assert_nothing_stored(wacall)


async def test_one_malformed_message_refuses_the_whole_delivery(wacall: Running) -> None:
    now = await wacall.now()
    body = grant(wacall, now)
    bad = dict(first_message(body), id=wamid(), timestamp="yesterday")
    body["entry"][0]["changes"][0]["value"]["messages"].append(bad)
    response = await deliver(wacall, body)
    assert response.status_code == 400
    await assert_nothing_stored(wacall)


async def test_oversized_body_is_413(make_service: Any) -> None:
    running: Running = await make_service(max_webhook_bytes=2048)
    now = await running.now()
    big = encode(payloads.text_message(account_of(running), digits(USER), wamid(), now, "x" * 4000))
    assert len(big) > 2048

    response = await deliver(running, big)
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    # No Content-Length (chunked transfer): the limit still holds while reading.
    async with httpx.AsyncClient(base_url=f"http://{running.addresses.http}", timeout=10.0) as client:
        response = await client.post(
            WEBHOOK_PATH,
            content=chunks(),
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(app_secret(running), big)},
        )
    assert response.status_code == 413
    await assert_nothing_stored(running)

    # A delivery under the limit is fine.
    small = encode(payloads.text_message(account_of(running), digits(USER), wamid(), now, "hello"))
    assert len(small) <= 2048
    assert (await deliver(running, small)).status_code == 200
    assert (await running.permission()).HasField("service_window_expires_at")


# --- delivery semantics: duplicates (HOOK-1) ----------------------------------------------------------------------


async def test_duplicate_delivered_sequentially_is_applied_once(wacall: Running) -> None:
    now = await wacall.now()
    body = grant(wacall, now, expires_at=now + timedelta(days=7))
    first = await delivered(wacall, body)
    after_first = await wacall.permission()

    await wacall.advance(HOUR)
    second = await delivered(wacall, body)

    assert first == {"applied": 1, "duplicates": 0, "ignored": 0}
    assert second == {"applied": 0, "duplicates": 1, "ignored": 0}
    (event,) = await events_of(wacall)
    assert event.kind == pb.EVENT_KIND_PERMISSION_GRANTED
    permission = await wacall.permission()
    assert permission.state == after_first.state == pb.PERMISSION_STATE_TEMPORARY
    assert permission.expires_at == after_first.expires_at
    assert permission.updated_at == after_first.updated_at
    assert permission.consecutive_unanswered_calls == after_first.consecutive_unanswered_calls == 0


async def test_late_duplicate_of_an_older_reply_changes_nothing(wacall: Running) -> None:
    rejected_at = await wacall.now()
    decline = reject(wacall, rejected_at, context_id=wamid())
    await delivered(wacall, decline)
    granted_at = await wacall.advance(HOUR)
    await delivered(wacall, grant(wacall, granted_at, context_id=wamid()))

    # Meta's queue recovery redelivers the old decline a day later.
    await wacall.advance(DAY)
    assert (await delivered(wacall, decline))["duplicates"] == 1

    assert (await wacall.permission()).state == pb.PERMISSION_STATE_TEMPORARY
    kinds = [e.kind for e in await events_of(wacall)]
    assert kinds == [pb.EVENT_KIND_PERMISSION_REJECTED, pb.EVENT_KIND_PERMISSION_GRANTED]


async def test_duplicate_delivered_concurrently_is_applied_once(wacall: Running) -> None:
    now = await wacall.now()
    raw = encode(grant(wacall, now, permanent=True))
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(app_secret(wacall), raw)}
    async with httpx.AsyncClient(base_url=f"http://{wacall.addresses.http}", timeout=10.0) as client:
        responses = await asyncio.gather(*(client.post(WEBHOOK_PATH, content=raw, headers=headers) for _ in range(8)))

    assert [r.status_code for r in responses] == [200] * 8
    results = [r.json() for r in responses]
    assert sum(r["applied"] for r in results) == 1
    assert sum(r["duplicates"] for r in results) == 7
    (event,) = await events_of(wacall)
    assert event.kind == pb.EVENT_KIND_PERMISSION_GRANTED
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_PERMANENT


async def test_duplicate_inbound_message_counts_once(wacall: Running) -> None:
    written_at = await wacall.now()
    body = payloads.text_message(account_of(wacall), digits(USER), wamid(), written_at, "hello")
    results = await asyncio.gather(deliver(wacall, body), deliver(wacall, body), deliver(wacall, body))
    assert all(r.status_code == 200 for r in results)
    assert [e.kind for e in await events_of(wacall)] == [pb.EVENT_KIND_USER_MESSAGE_RECEIVED]
    permission = await wacall.permission()
    assert permission.service_window_expires_at.ToSeconds() == unix(written_at) + 24 * HOUR


# --- delivery semantics: out of order (HOOK-2) --------------------------------------------------------------------


async def test_older_reject_delivered_after_a_newer_grant_is_recorded_as_stale(wacall: Running) -> None:
    t1 = await wacall.now()
    t2 = await wacall.advance(120)
    older_reject = reject(wacall, t1, context_id=wamid())
    newer_grant = grant(wacall, t2, expires_at=t2 + timedelta(days=7), context_id=wamid())

    await delivered(wacall, newer_grant)
    await delivered(wacall, older_reject)

    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_TEMPORARY
    assert permission.expires_at.ToSeconds() == unix(t2 + timedelta(days=7))
    assert permission.updated_at.ToSeconds() == unix(t2)
    granted, late = await events_of(wacall)
    assert granted.kind == pb.EVENT_KIND_PERMISSION_GRANTED
    assert "stale" not in granted.attributes
    assert late.kind == pb.EVENT_KIND_PERMISSION_REJECTED
    assert late.attributes["stale"] == "true"
    assert late.occurred_at.ToSeconds() == unix(t1)
    assert late.permission_state == pb.PERMISSION_STATE_TEMPORARY


async def test_older_automatic_revoke_delivered_late_does_not_undo_a_newer_grant(wacall: Running) -> None:
    t1 = await wacall.now()
    t2 = await wacall.advance(5)
    await delivered(wacall, grant(wacall, t2, permanent=True))
    await delivered(wacall, reject(wacall, t1, automatic=True))

    assert (await wacall.permission()).state == pb.PERMISSION_STATE_PERMANENT
    late = (await events_of(wacall))[-1]
    assert late.kind == pb.EVENT_KIND_PERMISSION_REVOKED
    assert late.attributes["stale"] == "true"


async def test_changes_in_the_same_second_apply_in_arrival_order(wacall: Running) -> None:
    t = await wacall.now()
    await delivered(wacall, grant(wacall, t, context_id=wamid()))
    await delivered(wacall, reject(wacall, t, context_id=wamid()))
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_REJECTED
    await delivered(wacall, grant(wacall, t, permanent=True, context_id=wamid()))
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_PERMANENT
    assert all("stale" not in e.attributes for e in await events_of(wacall))


async def test_older_grant_delivered_after_a_newer_revoke_stays_revoked(wacall: Running) -> None:
    t1 = await wacall.now()
    t2 = await wacall.advance(60)
    await delivered(wacall, reject(wacall, t2))  # profile revoke at t2
    await delivered(wacall, grant(wacall, t1, permanent=True))  # a grant from t1 arrives late

    assert (await wacall.permission()).state == pb.PERMISSION_STATE_REVOKED
    assert (await events_of(wacall))[-1].attributes["stale"] == "true"


# --- several items in one delivery (§6.1) -------------------------------------------------------------------------


async def test_several_entries_changes_and_messages_in_one_delivery_are_all_applied(wacall: Running) -> None:
    account = account_of(wacall)
    now = await wacall.now()
    # Entry 1: one change carrying a text message and, a second later, a permanent grant from USER.
    entry_one = payloads.text_message(account, digits(USER), wamid(), now, "hello")
    entry_one_value = entry_one["entry"][0]["changes"][0]["value"]
    entry_one_value["messages"].append(first_message(grant(wacall, now + timedelta(seconds=1), permanent=True)))
    # Entry 2: two changes: a decline from OTHER_USER, then a text from OTHER_USER; plus a change of a field that
    # carries no messages (account_update), to skip.
    decline = reject(wacall, now, user=OTHER_USER, context_id=wamid())
    text = payloads.text_message(account, digits(OTHER_USER), wamid(), now, "no thanks, but write to me")
    account_change = {
        "field": "account_update",
        "value": {"phone_number": account.business_number[1:], "event": "ACCOUNT_VIOLATION"},
    }
    entry_two = {
        "id": account.waba_id,
        "changes": [decline["entry"][0]["changes"][0], text["entry"][0]["changes"][0], account_change],
    }
    body = {"object": "whatsapp_business_account", "entry": [entry_one["entry"][0], entry_two]}

    result = await delivered(wacall, body)

    assert result == {"applied": 4, "duplicates": 0, "ignored": 1}
    mine = await wacall.permission(BUSINESS, USER)
    assert mine.state == pb.PERMISSION_STATE_PERMANENT
    assert mine.service_window_expires_at.ToSeconds() == unix(now) + 24 * HOUR
    other = await wacall.permission(BUSINESS, OTHER_USER)
    assert other.state == pb.PERMISSION_STATE_REJECTED
    assert request_action(other).channel == pb.CHANNEL_INTERACTIVE
    assert [e.kind for e in await events_of(wacall, BUSINESS, USER)] == [
        pb.EVENT_KIND_USER_MESSAGE_RECEIVED,
        pb.EVENT_KIND_PERMISSION_GRANTED,
    ]
    assert [e.kind for e in await events_of(wacall, BUSINESS, OTHER_USER)] == [
        pb.EVENT_KIND_PERMISSION_REJECTED,
        pb.EVENT_KIND_USER_MESSAGE_RECEIVED,
    ]


# --- unknown business ---------------------------------------------------------------------------------------------


async def test_unknown_phone_number_id_is_acknowledged_and_ignored(wacall: Running) -> None:
    now = await wacall.now()
    for phone_number_id in ("987654321098765", "106540352242922", "not-a-number"):
        body = grant(wacall, now, permanent=True)
        body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = phone_number_id
        result = await delivered(wacall, body)
        assert result == {"applied": 0, "duplicates": 0, "ignored": 1}
    await assert_nothing_stored(wacall)


# --- message status webhooks: an undeliverable permission request (§1.3, 131026) ---------------------------------


async def test_failed_status_of_our_permission_request_is_recorded(wacall: Running) -> None:
    sent = await wacall.request()
    listed = await wacall.sim.ListMessages(
        sim_pb.ListMessagesRequest(user_number=USER, business_number=BUSINESS), metadata=wacall.metadata
    )
    (message,) = listed.messages
    assert message.message_id == sent.message_id

    failed_at = await wacall.advance(3)
    body = payloads.message_status(
        account_of(wacall), digits(USER), message.message_id, failed_at, "failed", 131026, "Message undeliverable"
    )
    assert (await delivered(wacall, body))["applied"] == 1

    events = await events_of(wacall)
    failures = [e for e in events if e.kind == pb.EVENT_KIND_PERMISSION_REQUEST_FAILED]
    (failure,) = failures
    assert failure.attributes["platform_error"] == "131026"
    assert failure.attributes["message_id"] == message.message_id
    assert failure.source == pb.EVENT_SOURCE_PLATFORM_AUTOMATIC
    assert failure.occurred_at.ToSeconds() == unix(failed_at)

    # Redelivered: recorded once.
    assert (await delivered(wacall, body))["applied"] == 0
    again = await events_of(wacall)
    assert [e for e in again if e.kind == pb.EVENT_KIND_PERMISSION_REQUEST_FAILED] == failures


async def test_statuses_that_are_not_failures_of_our_requests_are_ignored(wacall: Running) -> None:
    sent = await wacall.request()
    account = account_of(wacall)
    now = await wacall.advance(1)
    events_before = await events_of(wacall)
    for body in (
        payloads.message_status(account, digits(USER), sent.message_id, now, "sent"),
        payloads.message_status(account, digits(USER), sent.message_id, now, "delivered"),
        payloads.message_status(account, digits(USER), sent.message_id, now, "read"),
        # A failure of some other message (not a permission request of ours).
        payloads.message_status(account, digits(USER), wamid(), now, "failed", 131026, "Message undeliverable"),
    ):
        result = await delivered(wacall, body)
        assert result["applied"] == 0
        assert result["ignored"] == 1
    assert await events_of(wacall) == events_before


# --- hostile and unusual values: 400, nothing applied, the body kept for audit -----------------------------------


async def refused_bodies(running: Running) -> list[tuple[datetime, str, bytes]]:
    store = running.service.store
    assert store is not None
    return await store.transaction(lambda tx: tx.refused_webhooks())


async def assert_refused(running: Running, raw: bytes, reason: str) -> None:
    """A signed delivery gets 400 naming the reason, changes nothing, and is kept as refused."""
    events_before = await all_events(running)
    permission_before = await running.permission()
    response = await deliver(running, raw)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]
    assert await all_events(running) == events_before
    assert await running.permission() == permission_before
    kept = await refused_bodies(running)
    assert kept[-1][2] == raw and reason in kept[-1][1]


async def test_is_permanent_as_a_string_is_refused_and_grants_nothing(wacall: Running) -> None:
    body = grant(wacall, await wacall.now(), permanent=True)
    reply_of(body)["is_permanent"] = "false"
    await assert_refused(wacall, encode(body), "is_permanent must be true or false")
    await assert_nothing_stored(wacall)


async def test_a_text_stamped_in_year_9999_is_refused_and_the_pair_stays_readable(wacall: Running) -> None:
    body = payloads.text_message(account_of(wacall), digits(USER), wamid(), await wacall.now(), "hi")
    first_message(body)["timestamp"] = "253402300799"
    await assert_refused(wacall, encode(body), "not an instant the service can store")
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_NONE


async def test_a_grant_stamped_in_year_5138_is_refused_and_later_revokes_are_not_stale(wacall: Running) -> None:
    now = await wacall.now()
    future = grant(wacall, now, permanent=True)
    first_message(future)["timestamp"] = "99999999999"
    await assert_refused(wacall, encode(future), "ahead of the service's clock")
    await delivered(wacall, grant(wacall, now, permanent=True))
    await delivered(wacall, reject(wacall, await wacall.advance(60)))
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_REVOKED
    assert all("stale" not in e.attributes for e in await events_of(wacall))


async def test_timestamps_inside_the_skew_and_the_retry_window_apply_and_outside_are_refused(wacall: Running) -> None:
    now = await wacall.now()
    text = payloads.text_message
    account = account_of(wacall)
    assert (await delivered(wacall, text(account, digits(USER), wamid(), now + timedelta(minutes=4), "a")))[
        "applied"
    ] == 1
    assert (await delivered(wacall, text(account, digits(USER), wamid(), now - timedelta(days=7), "b")))["applied"] == 1
    await assert_refused(wacall, encode(text(account, digits(USER), wamid(), now + timedelta(minutes=6), "c")), "ahead")
    await assert_refused(wacall, encode(text(account, digits(USER), wamid(), now - timedelta(days=9), "d")), "older")


async def test_the_skew_and_the_age_bound_are_configuration(make_service: Any) -> None:
    running: Running = await make_service(webhook_max_clock_skew_seconds=10, webhook_max_age_seconds=3600)
    now = await running.now()
    account = account_of(running)
    for at in (now + timedelta(seconds=11), now - timedelta(seconds=3601)):
        body = encode(payloads.text_message(account, digits(USER), wamid(), at, "x"))
        assert (await deliver(running, body)).status_code == 400
    body = encode(payloads.text_message(account, digits(USER), wamid(), now + timedelta(seconds=10), "y"))
    assert (await deliver(running, body)).status_code == 200


def hostile_bodies(running: Running, now: datetime) -> list[tuple[str, bytes, str]]:
    """(what, signed body, part of the reason) for values found by fuzzing that used to get HTTP 500."""
    account = account_of(running)
    text = encode(payloads.text_message(account, digits(USER), "wamid.HOSTILE", now, "hi"))
    stamp = str(unix(now)).encode()
    terminate = payloads.envelope(account, "calls", {
        "calls": [{"id": "wacid.HOSTILE", "to": digits(USER), "from": digits(BUSINESS), "event": "terminate",
                   "direction": "BUSINESS_INITIATED", "timestamp": str(unix(now)), "duration": 10}],
        "errors": [{"code": 138021, "message": "no media"}],
    })  # fmt: skip
    bad_code = copy.deepcopy(terminate)
    bad_code["entry"][0]["changes"][0]["value"]["errors"][0]["code"] = "x"
    bad_duration = copy.deepcopy(terminate)
    bad_duration["entry"][0]["changes"][0]["value"]["calls"][0]["duration"] = "10s"
    return [
        ("milliseconds", text.replace(b'"' + stamp + b'"', b"1000000000000"), "timestamp"),
        ("negative", text.replace(b'"' + stamp + b'"', b"-1"), "timestamp"),
        ("infinity", text.replace(b'"' + stamp + b'"', b"Infinity"), "Infinity"),
        ("nan", text.replace(b'"' + stamp + b'"', b"NaN"), "NaN"),
        ("huge", text.replace(b'"' + stamp + b'"', b"1" + b"0" * 400), "timestamp"),
        ("error code", encode(bad_code), "code"),
        ("duration", encode(bad_duration), "duration"),
        ("deep", b'{"object":"whatsapp_business_account","entry":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
        ("surrogate", text.replace(b"wamid.HOSTILE", b"wamid.\\ud800"), "surrogate"),
        ("not an object", text.replace(b'"metadata":{', b'"metadata":["x"],"m":{'), "metadata"),
        ("array body", b"[1, 2]", "object"),
    ]


async def test_hostile_values_are_400_and_change_nothing(wacall: Running) -> None:
    now = await wacall.now()
    await delivered(wacall, grant(wacall, now, permanent=True))
    for what, raw, reason in hostile_bodies(wacall, now):
        try:
            await assert_refused(wacall, raw, reason)
        except AssertionError as failure:
            raise AssertionError(f"{what}: {failure}") from None
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_PERMANENT


# --- the applied count --------------------------------------------------------------------------------------------


async def test_applied_counts_only_applied_call_items_not_parked_ones_or_duplicates(wacall: Running) -> None:
    now = await wacall.now()
    # A terminate for a call wacall does not know (yet): parked until our record of it is bound.
    body = payloads.envelope(account_of(wacall), "calls", {
        "calls": [{"id": "wacid.UNKNOWN", "to": digits(USER), "from": digits(BUSINESS), "event": "terminate",
                   "direction": "BUSINESS_INITIATED", "timestamp": str(unix(now)), "status": "COMPLETED"}],
    })  # fmt: skip
    assert await delivered(wacall, body) == {"applied": 0, "duplicates": 0, "ignored": 1}
    assert await delivered(wacall, body) == {"applied": 0, "duplicates": 1, "ignored": 0}


# --- the shapes of the platform's calling docs --------------------------------------------------------------------


async def test_a_permission_reply_without_a_message_type_is_applied_as_a_reply(wacall: Running) -> None:
    body = grant(wacall, await wacall.now(), permanent=True)
    del first_message(body)["type"]  # as in every example of the platform's calling docs
    assert (await delivered(wacall, body))["applied"] == 1
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_PERMANENT
    assert not permission.HasField("service_window_expires_at")  # a reply is not a message opening the window
    assert [e.kind for e in await events_of(wacall)] == [pb.EVENT_KIND_PERMISSION_GRANTED]


async def test_an_account_level_update_without_a_number_does_not_refuse_the_delivery(wacall: Running) -> None:
    body = grant(wacall, await wacall.now(), permanent=True)
    body["entry"].append({
        "id": account_of(wacall).waba_id, "time": unix(await wacall.now()),
        "changes": [{"field": "account_update", "value": {
            "event": "ACCOUNT_RESTRICTION",
            "restriction_info": [{"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": 1}],
        }}],
    })  # fmt: skip
    assert await delivered(wacall, body) == {"applied": 1, "duplicates": 0, "ignored": 1}
    assert (await wacall.permission()).state == pb.PERMISSION_STATE_PERMANENT


async def test_a_messaging_restriction_does_not_lift_the_calling_pause(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.sim.RestrictBusiness(sim_pb.RestrictBusinessRequest(business_number=BUSINESS, duration=duration(DAY)))
    messaging = payloads.account_restriction(account_of(wacall), await wacall.now(), None)
    value = messaging["entry"][0]["changes"][0]["value"]
    value["restriction_info"] = [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1}]
    assert await delivered(wacall, messaging) == {"applied": 0, "duplicates": 0, "ignored": 1}
    assert call_action(await wacall.permission()).reason == pb.REASON_BUSINESS_RESTRICTED
    # An event about calling still lifts it.
    assert (await delivered(wacall, payloads.account_restriction(account_of(wacall), await wacall.now(), None)))[
        "applied"
    ] == 1
    assert call_action(await wacall.permission()).allowed


async def test_a_user_connect_without_direction_is_answered(wacall: Running, monkeypatch: Any) -> None:
    # The shape of the platform's user-initiated-calls page: no `direction`, a session with an SDP offer.
    built = payloads.call_event

    def without_direction(*args: Any, **kwargs: Any) -> dict[str, Any]:
        body = built(*args, **kwargs)
        for call in body["entry"][0]["changes"][0]["value"]["calls"]:
            call.pop("direction", None)
        return body

    monkeypatch.setattr(payloads, "call_event", without_direction)
    await wacall.phone(talk=0)
    phone = await wacall.sim.PlaceUserCall(sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER))
    calls = await wait_until(
        lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
        lambda r: len(r.calls) == 1 and r.calls[0].state == pb.CALL_STATE_CONNECTED,
    )
    assert calls.calls[0].direction == pb.CALL_DIRECTION_USER_INITIATED
    assert calls.calls[0].platform_call_id == phone.platform_call_id


async def test_a_user_calling_again_before_the_terminate_ends_the_open_call(wacall: Running, monkeypatch: Any) -> None:
    platform = wacall.service.platform
    assert platform is not None
    held: list[dict[str, Any]] = []
    send = platform._deliver

    async def hold_terminates(account: Any, body: dict[str, Any]) -> None:
        calls = body["entry"][0]["changes"][0]["value"].get("calls", [])
        if any(call.get("event") == "terminate" for call in calls):
            held.append(body)  # the platform's terminate is late
            return
        await send(account, body)

    monkeypatch.setattr(platform, "_deliver", hold_terminates)
    await wacall.phone(talk=0)
    first = await wacall.sim.PlaceUserCall(sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER))
    listed = await wait_until(
        lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
        lambda r: len(r.calls) == 1 and r.calls[0].state == pb.CALL_STATE_CONNECTED,
    )
    earlier = listed.calls[0]
    await wacall.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=first.platform_call_id))
    await wait_until(lambda: asyncio.sleep(0, held), lambda h: len(h) == 1)
    second = await wacall.sim.PlaceUserCall(sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER))
    listed = await wait_until(
        lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
        lambda r: (
            {(c.platform_call_id, c.state) for c in r.calls}
            == {(first.platform_call_id, pb.CALL_STATE_ENDED), (second.platform_call_id, pb.CALL_STATE_CONNECTED)}
        ),
    )
    (latest,) = [c for c in listed.calls if c.platform_call_id == second.platform_call_id]
    (ended,) = [c for c in listed.calls if c.platform_call_id == first.platform_call_id]
    assert ended.call_id == earlier.call_id
    assert ended.state == pb.CALL_STATE_ENDED and ended.end_reason.startswith("superseded")
    # The late terminate, when it comes, is absorbed by the ended call and leaves the new one alone.
    assert (await delivered(wacall, held[0]))["applied"] == 1
    assert (await wacall.get_call(latest.call_id)).state == pb.CALL_STATE_CONNECTED
    assert (await wacall.get_call(earlier.call_id)).outcome == pb.CALL_OUTCOME_ANSWERED


# --- the platform's wa_id forms (HOOK-8) --------------------------------------------------------------------------

MEXICAN_USER = "+525512345678"  # Mexico City mobile; its wa_id keeps the legacy "1": 5215512345678
WA_ID_FORMS = [
    (MEXICAN_USER, "5215512345678"),
    ("+5511987654321", "551187654321"),  # São Paulo mobile, wa_id from before the ninth digit
    ("+5491123456789", "5491123456789"),  # Buenos Aires mobile: the wa_id is its E.164 form
]


async def test_grants_from_each_wa_id_form_land_on_the_e164_number(wacall: Running) -> None:
    now = await wacall.now()
    for number, wa_id in WA_ID_FORMS:
        body = payloads.permission_reply(account_of(wacall), wa_id, wamid(), now, accept=True, permanent=True)
        assert (await delivered(wacall, body))["applied"] == 1, number
        permission = await wacall.permission(BUSINESS, number)
        assert permission.state == pb.PERMISSION_STATE_PERMANENT, number
        assert permission.user_number == number


async def test_wacall_names_a_user_to_the_platform_by_the_wa_id_it_gave(wacall: Running) -> None:
    body = payloads.text_message(account_of(wacall), "5215512345678", wamid(), await wacall.now(), "hola")
    await delivered(wacall, body)
    permissions = wacall.service.permissions
    assert permissions is not None
    assert await permissions.platform_wa_id(parse_number(MEXICAN_USER)) == "5215512345678"
    assert await permissions.platform_wa_id(parse_number(USER)) == digits(USER)


async def test_a_mexican_users_call_is_answered_and_they_can_be_asked_and_called(wacall: Running) -> None:
    await wacall.sim.SetUserBehavior(
        sim_pb.SetUserBehaviorRequest(
            user_number=MEXICAN_USER, wa_id="5215512345678", on_permission_request=sim_pb.ACCEPT_PERMANENT
        )
    )
    phone = await wacall.sim.PlaceUserCall(
        sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=MEXICAN_USER)
    )
    calls = await wait_until(
        lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=MEXICAN_USER)),
        lambda r: len(r.calls) == 1 and r.calls[0].state == pb.CALL_STATE_CONNECTED,
    )
    assert calls.calls[0].platform_call_id == phone.platform_call_id
    assert (await wacall.permission(BUSINESS, MEXICAN_USER)).state == pb.PERMISSION_STATE_TEMPORARY
    await wacall.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=phone.platform_call_id))
    await wacall.wait_call(calls.calls[0].call_id, pb.CALL_STATE_ENDED)
    # Asked under its wa_id, the user answers "always": the grant lands on the E.164 number.
    await wacall.request(BUSINESS, MEXICAN_USER)
    await wacall.wait_for_state(pb.PERMISSION_STATE_PERMANENT, user=MEXICAN_USER)


# --- the HTTP server: slow, idle and surplus connections are closed ----------------------------------------------

CLOSE_BOUND = 10.0  # generous: the limits under test are fractions of a second


async def open_socket(running: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = running.addresses.http.rpartition(":")
    return await asyncio.open_connection(host, int(port))


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection (fails if it is still open after the bound)."""
    return await asyncio.wait_for(reader.read(), CLOSE_BOUND)


async def test_a_client_stalling_in_the_request_line_is_disconnected(make_service: Any) -> None:
    running: Running = await make_service(http_header_timeout_seconds=0.3, http_idle_timeout_seconds=60)
    reader, writer = await open_socket(running)
    writer.write(b"POST /webhooks/whats")
    await writer.drain()
    assert await closed_by_server(reader) == b""
    writer.close()
    assert (await delivered(running, grant(running, await running.now())))["applied"] == 1


async def test_a_client_stalling_in_the_body_is_answered_408_and_disconnected(make_service: Any) -> None:
    running: Running = await make_service(http_body_timeout_seconds=0.3)
    reader, writer = await open_socket(running)
    writer.write(b'POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"object"')
    await writer.drain()
    answer = await closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()
    assert await all_events(running) == []


async def test_an_idle_keep_alive_connection_is_closed(make_service: Any) -> None:
    running: Running = await make_service(http_idle_timeout_seconds=0.3, http_header_timeout_seconds=60)
    # Never sends anything.
    silent_reader, silent = await open_socket(running)
    # Sends one complete request, then stays idle on the kept-alive connection.
    reader, writer = await open_socket(running)
    writer.write(b"GET /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 403")  # answered, then closed once idle
    assert await closed_by_server(silent_reader) == b""
    writer.close()
    silent.close()


async def test_connections_beyond_the_cap_are_refused_and_normal_deliveries_still_work(make_service: Any) -> None:
    running: Running = await make_service(http_max_connections=2)
    held = [await open_socket(running) for _ in range(2)]
    guard = running.service.http_guard
    assert guard is not None
    await wait_until(lambda: asyncio.sleep(0, len(guard.open)), lambda n: n == 2)
    reader, writer = await open_socket(running)
    shed = await closed_by_server(reader)
    assert shed.startswith(b"HTTP/1.1 503") and guard.shed == 1
    writer.close()
    for _, held_writer in held:
        held_writer.close()
    await wait_until(lambda: asyncio.sleep(0, len(guard.open)), lambda n: n == 0)
    assert (await delivered(running, grant(running, await running.now(), permanent=True)))["applied"] == 1
    assert (await running.permission()).state == pb.PERMISSION_STATE_PERMANENT


async def test_deliveries_on_one_kept_alive_connection_all_apply(make_service: Any) -> None:
    running: Running = await make_service(http_header_timeout_seconds=0.5, http_idle_timeout_seconds=5)
    async with httpx.AsyncClient(base_url=f"http://{running.addresses.http}", timeout=10.0) as client:
        for _ in range(3):
            raw = encode(payloads.text_message(account_of(running), digits(USER), wamid(), await running.now(), "x"))
            response = await client.post(
                WEBHOOK_PATH, content=raw, headers={SIGNATURE_HEADER: sign(app_secret(running), raw)}
            )
            assert response.json()["applied"] == 1
            await asyncio.sleep(0.6)  # longer than the header timeout: idle time between requests is not counted
    assert len(await all_events(running)) == 3


@pytest.mark.parametrize(
    "name", ["http_header_timeout_seconds", "http_idle_timeout_seconds", "http_max_connections",
             "webhook_max_clock_skew_seconds", "webhook_max_age_seconds"],
)  # fmt: skip
def test_webhook_limits_must_be_positive(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(None, {name: 0}, environ={})


async def test_a_client_trickling_its_headers_is_disconnected(make_service: Any) -> None:
    running: Running = await make_service(http_header_timeout_seconds=0.5, http_idle_timeout_seconds=60)
    reader, writer = await open_socket(running)
    request = b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000

    async def trickle() -> None:
        for byte in request:  # one byte at a time, each well inside the timeout: the whole is not
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                return  # closed by the server
            await asyncio.sleep(0.05)

    sending = asyncio.ensure_future(trickle())
    try:
        assert await closed_by_server(reader) == b""
    finally:
        sending.cancel()
        writer.close()
    guard = running.service.http_guard
    assert guard is not None and guard.timed_out == 1
