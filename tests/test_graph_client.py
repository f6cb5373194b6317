"""wacall.upstreams.meta.graph.GraphClient: request shapes (whatsapp-calling.md §4, §5.1, §5.2), errors (§8), retries.

Most tests run against httpx.MockTransport handlers (in process, no network). The last ones talk HTTP to the
embedded simulator of a running service.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from conftest import BUSINESS, USER, Running

from wacall.numbers import parse_number
from wacall.simulator.platform import GRAPH_VERSION
from wacall.upstreams.base import Account, SentMessage, TemplateRef
from wacall.upstreams.meta.accounts import MetaAccount, meta_part
from wacall.upstreams.meta.graph import GraphClient, GraphError, GraphUnavailable
from wacall.upstreams.meta.upstream import MetaUpstream
from wacall.upstreams.meta.wire import read_call_permissions as parse_call_permissions

BASE = "https://graph.example.test/v23.0"
ACCOUNT = MetaAccount(
    business_number="+447911123456",
    phone_number_id="106540352242922",
    waba_id="102290129340398",
    access_token="EAAG-test-token",
    app_secret="secret",
)
TO = "34612345678"
SENT = {
    "messaging_product": "whatsapp",
    "contacts": [{"input": TO, "wa_id": TO}],
    "messages": [{"id": "wamid.HBgLMzQ2MTIzNDU2NzgVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}],
}
PERMISSIONS = {
    "messaging_product": "whatsapp",
    "permission": {"status": "temporary", "expiration_time": 1745343479},
    "actions": [
        {
            "action_name": "send_call_permission_request",
            "can_perform_action": True,
            "limits": [
                {"time_period": "PT24H", "max_allowed": 1, "current_usage": 0},
                {"time_period": "P7D", "max_allowed": 2, "current_usage": 1},
            ],
        },
        {
            "action_name": "start_call",
            "can_perform_action": False,
            "limits": [
                {
                    "time_period": "PT24H",
                    "max_allowed": 100,
                    "current_usage": 100,
                    "limit_expiration_time": 1745622600,
                }
            ],
        },
    ],
}


def error_body(code: int, message: str, details: str = "", **data: Any) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details, **data},
            "fbtrace_id": "AbCdEf",
        }
    }


Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that answers from a script and keeps every request it saw."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            if isinstance(answer, httpx.RequestError):
                answer.request = request
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    def client(self, **options: Any) -> GraphClient:
        return GraphClient(BASE, backoff=0, transport=httpx.MockTransport(self), **options)

    @property
    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


async def call(recorder: Recorder, fn: Callable[[GraphClient], Any], **options: Any) -> Any:
    client = recorder.client(**options)
    try:
        return await fn(client)
    finally:
        await client.close()


def send_interactive(client: GraphClient) -> Any:
    return client.send_permission_request_interactive(ACCOUNT, TO, "We'd like to call you about order #1522.")


def send_template(client: GraphClient) -> Any:
    return client.send_permission_request_template(ACCOUNT, TO, TemplateRef("call_permission_order", "en"))


def read_permissions(client: GraphClient) -> Any:
    return client.call_permissions(ACCOUNT, TO)


# --- accounts: the domain's, with Meta's part inside ---------------------------------------------------------------


async def test_the_meta_upstream_speaks_with_the_accounts_meta_part_and_refuses_another_platforms() -> None:
    recorder = Recorder(httpx.Response(200, json=SENT))
    upstream = MetaUpstream(recorder.client())
    try:
        sent = await upstream.send_permission_request_interactive(ACCOUNT.account(), TO, "May we call?")
        assert sent.message_id == SENT["messages"][0]["id"]
        (request,) = recorder.requests
        assert request.url.path == f"/v23.0/{ACCOUNT.phone_number_id}/messages"
        assert request.headers["authorization"] == f"Bearer {ACCOUNT.access_token}"
        elsewhere = Account(ACCOUNT.business_number, None, upstream={"platform": "another"})
        with pytest.raises(TypeError, match="not an account on Meta's platform"):
            await upstream.call_permissions(elsewhere, TO)
        assert len(recorder.requests) == 1  # nothing went out for it
    finally:
        await upstream.close()


def test_accounts_do_not_show_their_credentials() -> None:
    account = ACCOUNT.account(TemplateRef("call_permission_request", "en"))
    for shown in (repr(account), repr(ACCOUNT)):
        assert ACCOUNT.access_token not in shown and "app_secret" not in shown
    assert ACCOUNT.phone_number_id in repr(ACCOUNT) and "call_permission_request" in repr(account)


# --- request shapes -----------------------------------------------------------------------------------------------


async def test_interactive_request_shape_as_documented() -> None:
    recorder = Recorder(httpx.Response(200, json=SENT))
    sent = await call(recorder, send_interactive)

    assert sent == SentMessage(SENT["messages"][0]["id"], TO)  # type: ignore[index]
    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/{ACCOUNT.phone_number_id}/messages"
    assert request.headers["Authorization"] == f"Bearer {ACCOUNT.access_token}"
    assert request.headers["Content-Type"] == "application/json"
    assert recorder.bodies == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": TO,
            "type": "interactive",
            "interactive": {
                "type": "call_permission_request",
                "action": {"name": "call_permission_request"},
                "body": {"text": "We'd like to call you about order #1522."},
            },
        }
    ]


async def test_interactive_request_without_body_text_has_no_body() -> None:
    recorder = Recorder(httpx.Response(200, json=SENT))
    await call(recorder, lambda c: c.send_permission_request_interactive(ACCOUNT, TO, ""))
    (body,) = recorder.bodies
    assert body["interactive"] == {"type": "call_permission_request", "action": {"name": "call_permission_request"}}
    assert "header" not in body["interactive"] and "footer" not in body["interactive"]


async def test_template_request_shape_as_documented() -> None:
    recorder = Recorder(httpx.Response(200, json=SENT))
    template = TemplateRef("call_permission_order", "en", ("John", "order #1522"))
    await call(recorder, lambda c: c.send_permission_request_template(ACCOUNT, TO, template))

    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/{ACCOUNT.phone_number_id}/messages"
    assert request.headers["Authorization"] == f"Bearer {ACCOUNT.access_token}"
    assert recorder.bodies == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": TO,
            "type": "template",
            "template": {
                "name": "call_permission_order",
                "language": {"code": "en"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [{"type": "text", "text": "John"}, {"type": "text", "text": "order #1522"}],
                    }
                ],
            },
        }
    ]


async def test_template_request_without_parameters_sends_no_body_component() -> None:
    recorder = Recorder(httpx.Response(200, json=SENT))
    await call(recorder, send_template)
    (body,) = recorder.bodies
    assert body["template"]["name"] == "call_permission_order"
    assert body["template"]["language"] == {"code": "en"}
    # The call_permission_request component needs no parameters: nothing (or an empty list) is sent.
    assert not body["template"].get("components")


async def test_call_permissions_request_and_parse() -> None:
    recorder = Recorder(httpx.Response(200, json=PERMISSIONS))
    permission = await call(recorder, read_permissions)

    (request,) = recorder.requests
    assert request.method == "GET"
    assert request.url.path == f"/v23.0/{ACCOUNT.phone_number_id}/call_permissions"
    assert dict(request.url.params) == {"user_wa_id": TO}
    assert request.headers["Authorization"] == f"Bearer {ACCOUNT.access_token}"
    assert permission.status == "temporary"
    assert permission.expires_at == datetime.fromtimestamp(1745343479, UTC)
    allowed, limits = permission.actions["send_call_permission_request"]
    assert allowed is True
    assert [(x.time_period, x.max_allowed, x.current_usage) for x in limits] == [("PT24H", 1, 0), ("P7D", 2, 1)]
    assert all(x.limit_expiration_time is None for x in limits)
    allowed, (call_limit,) = permission.actions["start_call"]
    assert allowed is False
    assert call_limit.limit_expiration_time == datetime.fromtimestamp(1745622600, UTC)


@pytest.mark.parametrize("name", ["expiration_time", "expiration"])
@pytest.mark.parametrize("value", [1745343479, "1745343479"])
def test_parse_call_permissions_accepts_both_expiration_names(name: str, value: int | str) -> None:
    parsed = parse_call_permissions({"permission": {"status": "temporary", name: value}, "actions": []})
    assert parsed.status == "temporary"
    assert parsed.expires_at == datetime.fromtimestamp(1745343479, UTC)


def test_parse_call_permissions_without_permission_or_expiry() -> None:
    assert parse_call_permissions({"permission": {"status": "permanent"}}).expires_at is None
    empty = parse_call_permissions({})
    assert empty.status == "no_permission"
    assert empty.expires_at is None
    assert empty.actions == {}


# --- errors -------------------------------------------------------------------------------------------------------


async def test_error_body_becomes_graph_error_with_code_and_details() -> None:
    body = error_body(138009, "Call permission request limit reached", "Limit of 1 per 24 hours", next_allowed_at=17)
    recorder = Recorder(httpx.Response(400, json=body))
    with pytest.raises(GraphError) as caught:
        await call(recorder, send_interactive)
    error = caught.value
    assert error.http_status == 400
    assert error.code == 138009
    assert error.message == "Call permission request limit reached"
    assert error.details == "Limit of 1 per 24 hours"
    assert error.error_data["next_allowed_at"] == 17
    assert "138009" in str(error)
    assert len(recorder.requests) == 1


async def test_error_object_in_a_200_is_still_an_error() -> None:
    recorder = Recorder(httpx.Response(200, json=error_body(131047, "Re-engagement message", "24 hours passed")))
    with pytest.raises(GraphError) as caught:
        await call(recorder, send_interactive)
    assert caught.value.code == 131047
    assert caught.value.details == "24 hours passed"


async def test_auth_error_on_a_read_is_not_retried() -> None:
    recorder = Recorder(httpx.Response(401, json=error_body(190, "Invalid OAuth access token")))
    with pytest.raises(GraphError) as caught:
        await call(recorder, read_permissions)
    assert caught.value.code == 190
    assert len(recorder.requests) == 1


async def test_messages_response_without_a_message_id_may_have_been_sent() -> None:
    recorder = Recorder(httpx.Response(200, json={"messaging_product": "whatsapp", "messages": []}))
    with pytest.raises(GraphUnavailable) as caught:
        await call(recorder, send_interactive)
    assert caught.value.maybe_sent is True


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b"[]"), (200, b'"ok"'), (200, b"null"), (200, b"42"), (502, b"[]"), (500, b'"error"')],
)
async def test_non_object_json_body_is_unavailable_not_a_crash(status: int, body: bytes) -> None:
    recorder = Recorder(httpx.Response(status, content=body, headers={"Content-Type": "application/json"}))
    with pytest.raises(GraphUnavailable):
        await call(recorder, read_permissions, read_retries=0)


# --- retries: reads ---------------------------------------------------------------------------------------------


async def test_read_is_retried_on_5xx_then_succeeds() -> None:
    recorder = Recorder(
        httpx.Response(500, json=error_body(1, "An unknown error occurred")),
        httpx.Response(503, text="<html>Service Unavailable</html>"),
        httpx.Response(200, json=PERMISSIONS),
    )
    permission = await call(recorder, read_permissions)
    assert permission.status == "temporary"
    assert len(recorder.requests) == 3
    assert all(r.method == "GET" for r in recorder.requests)


async def test_read_is_retried_on_connect_errors_and_timeouts_then_succeeds() -> None:
    recorder = Recorder(
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.Response(200, json=PERMISSIONS),
    )
    permission = await call(recorder, read_permissions)
    assert permission.status == "temporary"
    assert len(recorder.requests) == 3


async def test_read_gives_up_after_its_retries() -> None:
    recorder = Recorder(httpx.Response(500, json=error_body(2, "Service temporarily unavailable")))
    with pytest.raises(GraphError) as caught:
        await call(recorder, read_permissions, read_retries=2)
    assert caught.value.http_status == 500
    assert len(recorder.requests) == 3

    recorder = Recorder(httpx.ConnectError("connection refused"))
    with pytest.raises(GraphUnavailable):
        await call(recorder, read_permissions, read_retries=2)
    assert len(recorder.requests) == 3


# --- retries: sends (never twice) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("send", [send_interactive, send_template])
async def test_send_is_not_retried_after_a_timeout(send: Callable[[GraphClient], Any]) -> None:
    recorder = Recorder(httpx.ReadTimeout("timed out"), httpx.Response(200, json=SENT))
    with pytest.raises(GraphUnavailable) as caught:
        await call(recorder, send)
    assert caught.value.maybe_sent is True
    assert len(recorder.requests) == 1


async def test_send_is_not_retried_after_the_connection_dropped_mid_request() -> None:
    recorder = Recorder(httpx.RemoteProtocolError("Server disconnected"), httpx.Response(200, json=SENT))
    with pytest.raises(GraphUnavailable) as caught:
        await call(recorder, send_interactive)
    assert caught.value.maybe_sent is True
    assert len(recorder.requests) == 1


async def test_send_is_retried_once_after_a_connect_error() -> None:
    recorder = Recorder(httpx.ConnectError("connection refused"), httpx.Response(200, json=SENT))
    sent = await call(recorder, send_interactive)
    assert sent.message_id == SENT["messages"][0]["id"]  # type: ignore[index]
    assert len(recorder.requests) == 2
    assert recorder.bodies[0] == recorder.bodies[1]


async def test_send_that_cannot_connect_twice_was_not_sent() -> None:
    recorder = Recorder(httpx.ConnectError("connection refused"))
    with pytest.raises(GraphUnavailable) as caught:
        await call(recorder, send_template)
    assert caught.value.maybe_sent is False
    assert len(recorder.requests) == 2


async def test_send_is_not_retried_on_a_5xx_error_object() -> None:
    recorder = Recorder(
        httpx.Response(500, json=error_body(138004, "Connection error")), httpx.Response(200, json=SENT)
    )
    with pytest.raises(GraphError) as caught:
        await call(recorder, send_interactive)
    assert caught.value.http_status == 500
    assert caught.value.code == 138004
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_send_answered_by_a_gateway_error_page_may_have_been_sent(status: int) -> None:
    # A proxy's HTML error page says nothing about whether the platform processed the send: fail closed.
    recorder = Recorder(httpx.Response(status, text="<html>Gateway Timeout</html>"), httpx.Response(200, json=SENT))
    with pytest.raises(GraphUnavailable) as caught:
        await call(recorder, send_interactive)
    assert caught.value.maybe_sent is True
    assert len(recorder.requests) == 1


# --- against the embedded simulator over real HTTP ----------------------------------------------------------------


def simulator_client(running: Running) -> tuple[GraphClient, MetaAccount, TemplateRef | None]:
    """A Graph client, the simulator's account for BUSINESS, and the default template it provisioned with."""
    assert running.addresses.graph is not None
    platform = running.service.platform
    assert platform is not None
    sender = platform.sender(parse_number(BUSINESS))
    return (
        GraphClient(f"{running.addresses.graph}/{GRAPH_VERSION}", backoff=0),
        meta_part(sender),
        sender.default_template,
    )


async def test_simulator_refuses_interactive_request_while_the_window_is_closed(wacall: Running) -> None:
    client, account, _ = simulator_client(wacall)
    try:
        with pytest.raises(GraphError) as caught:
            await client.send_permission_request_interactive(account, parse_number(USER).digits, "May we call?")
        assert caught.value.code == 131047
        assert caught.value.http_status == 400
        assert caught.value.details
    finally:
        await client.close()


async def test_simulator_refuses_a_second_template_request_within_24_hours(wacall: Running) -> None:
    client, account, template = simulator_client(wacall)
    user = parse_number(USER).digits
    try:
        assert template is not None
        first = await client.send_permission_request_template(account, user, template)
        assert first.message_id.startswith("wamid.")
        assert first.user_id == user

        permission = await client.call_permissions(account, user)
        assert permission.status == "no_permission"
        allowed, limits = permission.actions["send_call_permission_request"]
        assert allowed is False
        assert any(x.current_usage == x.max_allowed == 1 and x.limit_expiration_time for x in limits)

        await wacall.advance(23 * 3600)
        with pytest.raises(GraphError) as caught:
            await client.send_permission_request_template(account, user, template)
        assert caught.value.code == 138009
    finally:
        await client.close()


async def test_simulator_refuses_an_unknown_template(wacall: Running) -> None:
    client, account, _ = simulator_client(wacall)
    try:
        with pytest.raises(GraphError) as caught:
            await client.send_permission_request_template(
                account, parse_number(USER).digits, TemplateRef("no_such_template", "en")
            )
        assert caught.value.code == 132001
    finally:
        await client.close()


async def test_simulator_refuses_a_wrong_access_token(wacall: Running) -> None:
    client, account, _ = simulator_client(wacall)
    wrong = dataclasses.replace(account, access_token="not-the-token")
    try:
        with pytest.raises(GraphError) as caught:
            await client.call_permissions(wrong, parse_number(USER).digits)
        assert caught.value.code == 190
        assert caught.value.http_status == 401
        with pytest.raises(GraphError) as caught:
            await client.send_permission_request_template(wrong, parse_number(USER).digits, TemplateRef("x", "en"))
        assert caught.value.code == 190
    finally:
        await client.close()
