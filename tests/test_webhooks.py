"""Webhook ingress end to end: real HTTP POSTs to /webhooks/whatsapp, signed for real, effects read over gRPC.

whatsapp-calling.md §6 (envelope, handshake, X-Hub-Signature-256, delivery semantics, call_permission_reply) and
pitfalls.md HOOK-1..HOOK-8. Every body is built with the simulator's Meta-shaped builders; timestamps come from the
service's manual clock (whole Unix seconds, as in webhooks).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
from conftest import BUSINESS, DAY, HOUR, OTHER_USER, USER, Running
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.graph import SenderAccount
from wacall.numbers import parse_number
from wacall.simulator import payloads
from wacall.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH, sign

# --- helpers ------------------------------------------------------------------------------------------------------


def account_of(running: Running, business: str = BUSINESS) -> SenderAccount:
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
