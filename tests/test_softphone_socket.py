"""The agent page's WebSocket (a JSON mirror of the AgentSession stream) and its customer lookup, through a real
aiohttp client against the running service: sign-in, offers, accept, hang-up, what a malformed message gets, the
socket closing, auth, and the lookup's answers and errors."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from conftest import BUSINESS, USER, Running
from test_contact_center import agent_state, put_agent, put_queue, queued_call
from wacall_client.v1 import contact_center_model_pb2 as m

TOKEN = "s3cret-token"


def http_url(wacall: Running, path: str) -> str:
    return f"http://{wacall.addresses.http}{path}"


class Page:
    """One WebSocket as the page holds it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, request: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(request))

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        message = await self.ws.receive(timeout)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        event: dict[str, Any] = json.loads(message.data)
        return event

    async def expect(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        event = await self.next(timeout)
        assert list(event) == [kind], event
        found: dict[str, Any] = event[kind]
        return found

    async def sign_in(self, agent_id: str, **extra: Any) -> None:
        await self.send({"login": {"agentId": agent_id}, **extra})
        assert (await self.expect("loggedIn"))["agent"]["agentId"] == agent_id
        assert (await self.expect("presence"))["state"] == "AGENT_PRESENCE_AWAY"
        await self.send({"setPresence": {"presence": "AGENT_PRESENCE_AVAILABLE"}})
        assert (await self.expect("presence"))["state"] == "AGENT_PRESENCE_AVAILABLE"


@pytest.fixture
async def pages(wacall: Running) -> AsyncIterator[Callable[[], Awaitable[Page]]]:
    async with aiohttp.ClientSession() as client:

        async def open_page() -> Page:
            return Page(await client.ws_connect(http_url(wacall, "/agent/ws")))

        yield open_page


async def test_an_agent_signs_in_takes_an_offered_call_and_hangs_up_over_the_socket(
    wacall: Running, pages: Callable[[], Awaitable[Page]]
) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann", name="Ann")
    page = await pages()
    await page.sign_in("ann")

    call_id = await queued_call(wacall)
    offer = await page.expect("offer")
    assert offer["callId"] == call_id and offer["queueId"] == "sales"
    assert offer["customerNumber"] == USER and offer["businessNumber"] == BUSINESS
    assert offer["permission"]["state"] == "PERMISSION_STATE_PERMANENT"
    assert offer["expiresIn"] == "20s"  # the default ring timeout, as a JSON Duration

    await page.send({"accept": {"offerId": offer["offerId"], "mediaStream": {}}})
    assert (await page.expect("presence"))["state"] == "AGENT_PRESENCE_BUSY"
    assert (await page.expect("connected"))["callId"] == call_id
    await page.send({"hangUp": {"callId": call_id}})
    ended = await page.expect("callEnded")
    assert ended == {"callId": call_id, "outcome": "CALL_OUTCOME_ANSWERED"}
    assert (await page.expect("presence"))["state"] == "AGENT_PRESENCE_AVAILABLE"  # no wrap-up in this queue


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "invalid_argument"),
        ("[1, 2]", "invalid_argument"),
        ('{"login": {"agentId": "ann"}, "extra": 1}', "invalid_argument"),
        ('{"setPresence": {"presence": "AGENT_PRESENCE_AVAILABLE"}}', "not_logged_in"),
        ('{"login": {"agentId": "no such agent"}}', "invalid_argument"),
        ('{"login": {"agentId": "nobody"}}', "unknown_agent"),
        ('{"setPresence": {}, "token": "x"}', "invalid_argument"),
        # Under the size limit but nested deeper than a JSON parser recurses.
        ("[" * 100_000, "invalid_argument"),
        ('{"a":' * 20_000, "invalid_argument"),
    ],
)
async def test_a_bad_message_before_sign_in_gets_an_error_event_and_the_socket_stays_open(
    wacall: Running, pages: Callable[[], Awaitable[Page]], message: str, code: str
) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    page = await pages()
    await page.ws.send_str(message)
    error = await page.expect("error")
    assert error["code"] == code and error["message"]
    await page.sign_in("ann")  # the same socket still works


async def test_a_bad_message_after_sign_in_is_refused_and_changes_nothing(
    wacall: Running, pages: Callable[[], Awaitable[Page]]
) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    page = await pages()
    await page.sign_in("ann")
    for message, code in (
        ("{", "invalid_argument"),
        ('{"setPresence": {"presence": "AGENT_PRESENCE_BUSY"}}', "invalid_argument"),
        ('{"accept": {"offerId": "offer-x"}}', "invalid_argument"),  # no media
        ('{"accept": {"offerId": "offer-x", "mediaStream": {}}}', "offer_gone"),
        ('{"hangUp": {"callId": "call-x"}}', "not_on_call"),
        ('{"login": {"agentId": "ann"}}', "already_logged_in"),
        ("{}", "invalid_argument"),
        ("[" * 100_000, "invalid_argument"),
    ):
        await page.ws.send_str(message)
        assert (await page.expect("error"))["code"] == code, message
    await page.ws.send_bytes(b"\x00\x01")
    assert (await page.expect("error"))["code"] == "invalid_argument"
    assert (await agent_state(wacall, "ann")).presence == m.AGENT_PRESENCE_AVAILABLE


async def test_closing_the_socket_signs_the_agent_out_and_passes_its_offer_on(
    wacall: Running, pages: Callable[[], Awaitable[Page]]
) -> None:
    await put_queue(wacall, strategy=m.STRATEGY_LINEAR)
    await put_agent(wacall, "ann")
    await put_agent(wacall, "bob")
    ann, bob = await pages(), await pages()
    await ann.sign_in("ann")
    await bob.sign_in("bob")
    call_id = await queued_call(wacall)
    offer = await ann.expect("offer")  # LINEAR: by agent id
    await ann.ws.close()
    assert (await bob.expect("offer"))["callId"] == call_id
    ann_now = await agent_state(wacall, "ann")
    assert ann_now.presence == m.AGENT_PRESENCE_OFFLINE
    assert offer["offerId"]


async def test_a_second_sign_in_closes_the_first_socket_with_session_replaced(
    wacall: Running, pages: Callable[[], Awaitable[Page]]
) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    first, second = await pages(), await pages()
    await first.sign_in("ann")
    await second.send({"login": {"agentId": "ann"}})
    assert (await second.expect("loggedIn"))["agent"]["agentId"] == "ann"
    assert (await first.expect("error"))["code"] == "session_replaced"
    closed = await first.ws.receive(10)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert (await agent_state(wacall, "ann")).presence == m.AGENT_PRESENCE_AVAILABLE  # the new session's


async def test_with_auth_on_the_socket_wants_the_token_beside_login(
    make_service: Callable[..., Awaitable[Running]],
) -> None:
    wacall = await make_service(auth_token=TOKEN)
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    async with aiohttp.ClientSession() as client:
        page = Page(await client.ws_connect(http_url(wacall, "/agent/ws")))
        for token in (None, "wrong", 42):
            await page.send({"login": {"agentId": "ann"}, **({"token": token} if token is not None else {})})
            assert (await page.expect("error"))["code"] == "unauthenticated"
        await page.sign_in("ann", token=TOKEN)


# --- the customer lookup ------------------------------------------------------------------------------------------


async def lookup(
    client: aiohttp.ClientSession, wacall: Running, method: str, body: object, token: str = ""
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, str) else json.dumps(body)
    async with client.post(http_url(wacall, f"/agent/api/{method}"), data=data, headers=headers) as response:
        return response.status, await response.json()


async def test_the_lookup_shows_a_customers_permission_limits_and_next_allowed_time(wacall: Running) -> None:
    async with aiohttp.ClientSession() as client:
        status, none = await lookup(client, wacall, "GetPermission", {"businessNumber": BUSINESS, "userNumber": USER})
        assert status == 200 and none["state"] == "PERMISSION_STATE_NONE"
        call_action = next(a for a in none["actions"] if a["action"] == "ACTION_START_CALL")
        assert call_action.get("allowed", False) is False

        await wacall.grant(permanent=False)
        status, granted = await lookup(
            client, wacall, "GetPermission", {"businessNumber": BUSINESS, "userNumber": USER}
        )
        assert status == 200 and granted["state"] == "PERMISSION_STATE_TEMPORARY" and granted["expiresAt"]
        actions = {a["action"]: a for a in granted["actions"]}
        assert actions["ACTION_START_CALL"]["allowed"] is True
        assert actions["ACTION_START_CALL"]["limits"]  # the call limits the policy counts against
        # The same answer as the gRPC API gives.
        assert granted["updatedAt"] == (await wacall.permission()).updated_at.ToJsonString()


async def test_the_lookup_asks_a_customer_for_permission(wacall: Running) -> None:
    async with aiohttp.ClientSession() as client:
        status, sent = await lookup(
            client,
            wacall,
            "RequestPermission",
            {"businessNumber": BUSINESS, "userNumber": USER, "bodyText": "May we call you?", "idempotencyKey": "k1"},
        )
        assert status == 200 and sent["messageId"].startswith("wamid.")
        assert sent["permission"]["state"] == "PERMISSION_STATE_REQUESTED"
        # The rules apply as over gRPC: another request at once is refused with the reason and when to retry.
        status, refused = await lookup(
            client, wacall, "RequestPermission", {"businessNumber": BUSINESS, "userNumber": USER, "bodyText": "again?"}
        )
        assert status == 429 and refused["code"] == "RESOURCE_EXHAUSTED"
        detail_types = [detail["@type"] for detail in refused["status"]["details"]]
        assert "type.googleapis.com/google.rpc.RetryInfo" in detail_types, refused


@pytest.mark.parametrize(
    ("method", "body", "status", "code"),
    [
        ("GetPermission", "{not json", 400, "INVALID_ARGUMENT"),
        ("GetPermission", {"businessNumber": BUSINESS, "userNumber": USER, "bogus": 1}, 400, "INVALID_ARGUMENT"),
        ("GetPermission", {"businessNumber": BUSINESS, "userNumber": "12"}, 400, "INVALID_ARGUMENT"),
        # A call back the permission rules refuse (no permission yet).
        ("StartCall", {"businessNumber": BUSINESS, "userNumber": USER}, 409, "FAILED_PRECONDITION"),
        ("EndCall", {"callId": "x"}, 404, "NOT_FOUND"),
        ("GetPermission", "x" * 100_000, 413, "INVALID_ARGUMENT"),
    ],
)
async def test_a_bad_lookup_gets_a_clear_error(
    wacall: Running, method: str, body: object, status: int, code: str
) -> None:
    async with aiohttp.ClientSession() as client:
        got_status, error = await lookup(client, wacall, method, body)
        assert (got_status, error["code"]) == (status, code) and error["message"]


async def test_a_lookup_whose_body_arrives_in_several_segments_is_read_whole(wacall: Running) -> None:
    # As a large call back offer does over a real network or a proxy: the body is not all buffered at once.
    body = json.dumps({"businessNumber": BUSINESS, "userNumber": USER}).encode()
    host, port = wacall.addresses.http.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = (
            f"POST /agent/api/GetPermission HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body[len(body) // 2 :])
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.split()[1] == b"200", response
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["state"] == "PERMISSION_STATE_NONE"


async def test_with_auth_on_the_lookup_wants_the_bearer_token(make_service: Callable[..., Awaitable[Running]]) -> None:
    wacall = await make_service(auth_token=TOKEN)
    request = {"businessNumber": BUSINESS, "userNumber": USER}
    async with aiohttp.ClientSession() as client:
        assert (await lookup(client, wacall, "GetPermission", request))[0] == 401
        assert (await lookup(client, wacall, "GetPermission", request, token="wrong"))[0] == 401
        status, permission = await lookup(client, wacall, "GetPermission", request, token=TOKEN)
        assert status == 200 and permission["state"] == "PERMISSION_STATE_NONE"


async def test_the_page_and_its_files_are_served_from_the_package(wacall: Running) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(http_url(wacall, "/agent"), allow_redirects=False) as response:
            assert response.status == 308 and response.headers["Location"] == "/agent/"
        async with client.get(http_url(wacall, "/agent/")) as response:
            page = await response.text()
            assert response.status == 200 and "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert '<label for="agent-id"' in page and 'aria-live="assertive"' in page
        for asset, kind in (("softphone.js", "javascript"), ("softphone.css", "text/css")):
            assert f"/agent/static/{asset}" in page
            async with client.get(http_url(wacall, f"/agent/static/{asset}")) as response:
                assert response.status == 200 and kind in response.headers["Content-Type"]
        async with client.get(http_url(wacall, "/agent/static/../../app.py")) as response:
            assert response.status in (403, 404)


async def test_only_the_services_own_page_may_open_the_socket_from_a_browser(wacall: Running) -> None:
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(http_url(wacall, "/agent/ws"), origin="https://elsewhere.example")
        assert refused.value.status == 403
        page = Page(await client.ws_connect(http_url(wacall, "/agent/ws"), origin=http_url(wacall, "")))
        await page.send({"setPresence": {}})
        assert (await page.expect("error"))["code"] == "not_logged_in"


async def test_a_plain_request_to_the_socket_is_a_client_error(wacall: Running) -> None:
    # No upgrade: not a WebSocket, answered as the client's mistake, never a 5xx.
    async with aiohttp.ClientSession() as client, client.get(http_url(wacall, "/agent/ws")) as response:
        assert 400 <= response.status < 500


async def test_nothing_a_page_sends_before_sign_in_closes_the_socket_or_escapes_as_an_exception(
    wacall: Running, pages: Callable[[], Awaitable[Page]]
) -> None:
    # Random JSON of every shape, built around the request kinds: each gets exactly one error event.
    await put_agent(wacall, "ann")
    generator = random.Random(9)
    kinds = ["login", "setPresence", "accept", "decline", "hangUp", "endWrapUp", "token", "agentId", "webrtc", ""]

    def value(depth: int) -> object:
        choice = generator.randrange(7 if depth < 3 else 5)
        if choice == 0:
            return generator.choice([None, True, False])
        if choice == 1:
            return generator.choice([0, -1, 2**63, 1.5, float("1e308")])
        if choice == 2:
            return generator.choice(["", "ann", "x" * 300, "AGENT_PRESENCE_AVAILABLE", "\u0000", "💬"])
        if choice in (3, 4):
            return generator.choice(kinds)
        if choice == 5:
            return [value(depth + 1) for _ in range(generator.randrange(3))]
        return {generator.choice(kinds): value(depth + 1) for _ in range(generator.randrange(1, 3))}

    page = await pages()
    for _ in range(300):
        message = value(0)
        if isinstance(message, dict) and message.get("login") == {"agentId": "ann"}:
            continue  # the one valid sign-in
        await page.ws.send_str(json.dumps(message))
        event = await page.expect("error")
        assert event["code"] in {"invalid_argument", "not_logged_in", "unknown_agent", "unauthenticated"}, message
    await page.sign_in("ann")


async def test_stopping_the_service_closes_the_agents_sockets_at_once(
    wacall: Running, pages: Callable[[], Awaitable[Page]]
) -> None:
    await put_queue(wacall)
    await put_agent(wacall, "ann")
    signed_in, not_yet = await pages(), await pages()
    await signed_in.sign_in("ann")
    # Open sockets must not hold the HTTP server's shutdown until its timeout.
    await asyncio.wait_for(wacall.service.stop(), 10)
    for page in (signed_in, not_yet):
        closed = await page.ws.receive(5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), closed
