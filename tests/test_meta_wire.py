"""upstreams.meta.wire: what the Graph client builds, the simulator reads the same way, and back; and how Meta's
errors become neutral refusals (upstreams.meta.upstream)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from wacall.rules.engine import Reason
from wacall.upstreams.base import (
    PermissionAction,
    PermissionStatus,
    PlatformLimit,
    PlatformPermission,
    SentMessage,
    TemplateRef,
    UpstreamReason,
)
from wacall.upstreams.meta import wire
from wacall.upstreams.meta.graph import GraphError
from wacall.upstreams.meta.upstream import refusal_of

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_an_interactive_request_reads_back_as_sent() -> None:
    read = wire.read_message_request(wire.interactive_permission_request("15551234567", "May we call you?"))
    assert read.product_ok and read.to == "15551234567" and read.type == "interactive"
    assert read.interactive_type == read.interactive_action == wire.PERMISSION_REQUEST
    assert read.body_text == "May we call you?"


def test_a_template_request_reads_back_with_its_parameters() -> None:
    template = TemplateRef("call_me", "en", ("Ana", "tomorrow"))
    read = wire.read_message_request(wire.template_permission_request("15551234567", template))
    assert (read.type, read.template_name, read.template_language) == ("template", "call_me", "en")
    assert read.template_parameters == ("Ana", "tomorrow")


def test_a_request_without_the_product_is_told_apart() -> None:
    body = wire.interactive_permission_request("15551234567", "")
    del body["messaging_product"]
    assert not wire.read_message_request(body).product_ok
    assert wire.read_message_request(wire.interactive_permission_request("1", "")).body_text == ""


def test_calls_requests_read_back_as_sent() -> None:
    connect = wire.read_calls_request(wire.connect_call_request("15551234567", "v=0 offer", "order-7"))
    assert (connect.action, connect.to, connect.session_type, connect.sdp, connect.opaque) == (
        "connect",
        "15551234567",
        "offer",
        "v=0 offer",
        "order-7",
    )
    accept = wire.read_calls_request(wire.call_action_request("wacid.X", "accept", "v=0 answer"))
    assert (accept.action, accept.call_id, accept.session_type, accept.sdp) == (
        "accept",
        "wacid.X",
        "answer",
        "v=0 answer",
    )
    terminate = wire.read_calls_request(wire.call_action_request("wacid.X", "terminate"))
    assert terminate.product_ok and not terminate.has_session and terminate.session_type == ""


def test_answers_read_back() -> None:
    assert wire.read_message_sent(wire.message_sent("+15551234567", "15551234567", "wamid.A")) == SentMessage(
        "wamid.A", "15551234567"
    )
    assert wire.read_call_placed(wire.call_placed("wacid.B")) == "wacid.B"
    with pytest.raises(wire.WireShapeError):
        wire.read_message_sent({"messages": []})
    with pytest.raises(wire.WireShapeError):
        wire.read_call_placed(wire.success())


def test_a_call_permissions_answer_reads_back_as_built() -> None:
    permission = PlatformPermission(
        PermissionStatus.TEMPORARY.value,
        AT,
        {
            PermissionAction.REQUEST.value: (
                False,
                (PlatformLimit("PT24H", 1, 1, AT), PlatformLimit("P7D", 2, 1, None)),
            ),
            PermissionAction.CALL.value: (True, (PlatformLimit("PT24H", 5, 0, None),)),
        },
    )
    assert wire.read_call_permissions(wire.call_permissions_answer(permission)) == permission


def test_an_error_body_reads_back() -> None:
    error = wire.read_error(wire.graph_error(138009, "limit reached", details="try later"))
    assert error is not None and (error.code, error.message, error.details) == (138009, "limit reached", "try later")
    assert wire.read_error(wire.success()) is None


@pytest.mark.parametrize(
    ("code", "reason", "retryable"),
    [
        (138017, Reason.ALREADY_PERMANENT, False),
        (138006, Reason.NO_PERMISSION, False),
        (138009, Reason.REQUEST_LIMIT_REACHED, True),
        (138004, UpstreamReason.CALL_SETUP_FAILED, True),
        (100, UpstreamReason.INVALID_REQUEST, False),
        (424242, UpstreamReason.TRANSIENT, True),
    ],
)
def test_meta_errors_become_neutral_refusals(code: int, reason: object, retryable: bool) -> None:
    refusal = refusal_of(GraphError(400, code, "no", "because"))
    assert refusal.reason == reason and refusal.retryable is retryable
    assert not refusal.may_have_been_sent
    assert refusal.platform_code == str(code)
    assert str(refusal) == str(GraphError(400, code, "no", "because"))
    assert refusal.details == {"details": "because", "http_status": "400"}
