"""upstreams.meta.webhook_payloads.parse: pure parsing of webhook bodies (whatsapp-calling.md §6, HOOK-7) into the
domain's inbound items."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from wacall.inbound import (
    BusinessRestriction,
    CallEventItem,
    CallEventKind,
    DeliveryStatus,
    Ignored,
    InboundMessage,
    MessageStatus,
    PermissionReply,
    ReplyTo,
)
from wacall.numbers import InvalidNumber, number_of_wa_id
from wacall.upstreams.meta import wire as payloads
from wacall.upstreams.meta.accounts import MetaAccount
from wacall.upstreams.meta.webhook_payloads import MalformedWebhook, TimeWindow, UntrustedTimestamp, parse

ACCOUNT = MetaAccount(
    business_number="+447911123456",
    phone_number_id="106540352242922",
    waba_id="102290129340398",
    access_token="token",
    app_secret="secret",
)
USER = "34612345678"
T = 1767168000  # 2025-12-31T08:00:00Z
AT = datetime.fromtimestamp(T, UTC)
EXPIRES = T + 7 * 86400


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def reply_body(**reply: Any) -> dict[str, Any]:
    """Meta's §6.5 sample shape, with the call_permission_reply object given."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": ACCOUNT.waba_id,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "447911123456",
                                "phone_number_id": ACCOUNT.phone_number_id,
                            },
                            "contacts": [
                                {"profile": {"name": "John"}, "wa_id": USER, "user_id": "ES.13491208655302741918"}
                            ],
                            "messages": [
                                {
                                    "from": USER,
                                    "from_user_id": "ES.13491208655302741918",
                                    "id": "wamid.HBgLMzQ2MTIzNDU2NzgVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
                                    "timestamp": str(T),
                                    "type": "interactive",
                                    "context": {"from": "447911123456", "id": "wamid.REQUEST"},
                                    "interactive": {"type": "call_permission_reply", "call_permission_reply": reply},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


def message_of(body: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = body["entry"][0]["changes"][0]["value"]["messages"][0]
    return message


def only(body: Any) -> Any:
    items = parse(encode(body))
    assert len(items) == 1, items
    return items[0]


# --- call_permission_reply ----------------------------------------------------------------------------------------


def test_temporary_accept_as_in_metas_sample() -> None:
    body = reply_body(
        response="accept", is_permanent=False, expiration_timestamp=str(EXPIRES), response_source="user_action"
    )
    assert only(body) == PermissionReply(
        business_account=ACCOUNT.phone_number_id,
        user_id=USER,
        message_id=message_of(body)["id"],
        timestamp=AT,
        accepted=True,
        permanent=False,
        expires_at=datetime.fromtimestamp(EXPIRES, UTC),
        automatic=False,
        context_id="wamid.REQUEST",
        via=ReplyTo.REQUEST,
    )


@pytest.mark.parametrize("timestamp", [str(T), T])
def test_message_timestamp_as_string_or_integer(timestamp: str | int) -> None:
    body = reply_body(response="accept", is_permanent=True, response_source="user_action")
    message_of(body)["timestamp"] = timestamp
    reply = only(body)
    assert reply.timestamp == AT
    assert reply.timestamp.tzinfo is not None


@pytest.mark.parametrize("expiration", [str(EXPIRES), EXPIRES])
def test_expiration_timestamp_as_string_or_integer(expiration: str | int) -> None:
    reply = only(reply_body(response="accept", is_permanent=False, expiration_timestamp=expiration))
    assert reply.expires_at == datetime.fromtimestamp(EXPIRES, UTC)


@pytest.mark.parametrize("expiration", [None, ""])
def test_expiration_timestamp_absent_or_empty(expiration: str | None) -> None:
    fields: dict[str, Any] = {"response": "accept", "is_permanent": False}
    if expiration is not None:
        fields["expiration_timestamp"] = expiration
    reply = only(reply_body(**fields))
    assert reply.accepted
    assert not reply.permanent
    assert reply.expires_at is None  # the engine derives approval + 7 d


def test_permanent_accept_has_no_expiry() -> None:
    reply = only(reply_body(response="accept", is_permanent=True, response_source="user_action"))
    assert reply.accepted and reply.permanent
    assert reply.expires_at is None


def test_decline_has_no_is_permanent_and_no_expiry() -> None:
    reply = only(reply_body(response="reject", response_source="user_action"))
    assert not reply.accepted
    assert not reply.permanent
    assert reply.expires_at is None
    assert not reply.automatic
    assert reply.context_id == "wamid.REQUEST"
    assert reply.via is ReplyTo.REQUEST


def test_callback_grant_keeps_the_wacid_context() -> None:
    body = reply_body(
        response="accept", is_permanent=False, expiration_timestamp=str(EXPIRES), response_source="automatic"
    )
    message_of(body)["context"] = {"from": "447911123456", "id": "wacid.HBgLMzQ2MTIzNDU2NzgVAgASGCA"}
    reply = only(body)
    assert reply.automatic
    assert reply.accepted
    assert reply.context_id == "wacid.HBgLMzQ2MTIzNDU2NzgVAgASGCA"
    assert reply.via is ReplyTo.CALLBACK


@pytest.mark.parametrize("context", [None, {}, {"from": "447911123456"}, "not-an-object"])
def test_missing_or_empty_context_is_none(context: Any) -> None:
    body = reply_body(response="reject", response_source="automatic")
    if context is None:
        del message_of(body)["context"]
    else:
        message_of(body)["context"] = context
    reply = only(body)
    assert reply.context_id is None
    assert reply.via is ReplyTo.PROFILE
    assert reply.automatic
    assert not reply.accepted


def test_response_source_defaults_to_user_action() -> None:
    reply = only(reply_body(response="accept", is_permanent=True))
    assert not reply.automatic


@pytest.mark.parametrize(
    ("response", "source", "accepted", "automatic"),
    [
        ("ACCEPT", "AUTOMATIC", True, True),
        ("Accept", "Automatic", True, True),
        ("REJECT", "USER_ACTION", False, False),
        ("Reject", "User_Action", False, False),
    ],
)
def test_enum_case_drift(response: str, source: str, accepted: bool, automatic: bool) -> None:
    reply = only(reply_body(response=response, is_permanent=False, response_source=source))
    assert reply.accepted is accepted
    assert reply.automatic is automatic


def test_status_case_drift() -> None:
    body = payloads.message_status(ACCOUNT, USER, "wamid.X", AT, "FAILED", 131026, "Message undeliverable")
    status = only(body)
    assert isinstance(status, MessageStatus)
    assert status.status is DeliveryStatus.FAILED


def test_user_from_contacts_when_from_is_absent() -> None:
    body = reply_body(response="accept", is_permanent=True)
    del message_of(body)["from"]
    assert only(body).user_id == USER


def test_a_username_only_user_is_ignored_without_dropping_the_rest_of_the_delivery() -> None:
    body = reply_body(response="accept", is_permanent=True)
    del message_of(body)["from"]
    del body["entry"][0]["changes"][0]["value"]["contacts"]
    (item,) = parse(encode(body))
    assert isinstance(item, Ignored) and "username-only" in item.why


@pytest.mark.parametrize("response", ["maybe", "", None])
def test_unknown_response_is_malformed(response: str | None) -> None:
    with pytest.raises(MalformedWebhook):
        parse(encode(reply_body(response=response)))


def test_reply_without_a_reply_object_is_malformed() -> None:
    body = reply_body()
    message_of(body)["interactive"] = {"type": "call_permission_reply"}
    with pytest.raises(MalformedWebhook):
        parse(encode(body))


# --- other messages and statuses ----------------------------------------------------------------------------------


def test_text_message_is_an_inbound_message() -> None:
    body = payloads.text_message(ACCOUNT, USER, "wamid.TEXT", AT, "hello")
    assert only(body) == InboundMessage(ACCOUNT.phone_number_id, USER, "wamid.TEXT", AT, "text")


def test_other_interactive_replies_are_inbound_messages() -> None:
    body = payloads.text_message(ACCOUNT, USER, "wamid.BUTTON", AT, "")
    message_of(body).update(type="interactive", interactive={"type": "button_reply", "button_reply": {"id": "1"}})
    item = only(body)
    assert isinstance(item, InboundMessage)
    assert item.type == "interactive"


def test_failed_status_with_error_codes() -> None:
    body = payloads.message_status(ACCOUNT, USER, "wamid.CPR", AT, "failed", 131026, "Message undeliverable")
    assert only(body) == MessageStatus(
        ACCOUNT.phone_number_id,
        "wamid.CPR",
        USER,
        DeliveryStatus.FAILED,
        AT,
        (131026,),
        "message undeliverable (client too old for call permission requests?)",
    )


def test_a_failure_without_a_code_is_undeliverable_and_an_unknown_status_is_other() -> None:
    failed = payloads.message_status(ACCOUNT, USER, "wamid.CPR", AT, "failed")
    assert (only(failed).status, only(failed).error_codes, only(failed).error_meaning) == (
        DeliveryStatus.FAILED,
        (),
        "undeliverable",
    )
    assert only(payloads.message_status(ACCOUNT, USER, "wamid.CPR", AT, "deleted")).status is DeliveryStatus.OTHER


# --- envelope: several items, other fields ------------------------------------------------------------------------


def test_every_entry_change_message_and_status_is_returned_in_order() -> None:
    text = payloads.text_message(ACCOUNT, USER, "wamid.A", AT, "hello")
    value = text["entry"][0]["changes"][0]["value"]
    value["messages"].append(message_of(reply_body(response="accept", is_permanent=True)) | {"id": "wamid.B"})
    value["statuses"] = [{"id": "wamid.C", "status": "delivered", "timestamp": T, "recipient_id": USER}]
    second_change = copy.deepcopy(text["entry"][0]["changes"][0])
    second_value = second_change["value"]
    second_value["messages"] = [dict(second_value["messages"][0], id="wamid.D")]
    del second_value["statuses"]
    other = MetaAccount("+34911234567", "555666777", "888", "t", "s")
    second_entry = payloads.permission_reply(other, "447911654321", "wamid.E", AT, accept=False)["entry"][0]
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": ACCOUNT.waba_id, "changes": [text["entry"][0]["changes"][0], second_change]}, second_entry],
    }

    items = parse(encode(body))

    assert [type(i).__name__ for i in items] == [
        "InboundMessage",
        "PermissionReply",
        "MessageStatus",
        "InboundMessage",
        "PermissionReply",
    ]
    assert [getattr(i, "message_id", None) for i in items] == ["wamid.A", "wamid.B", "wamid.C", "wamid.D", "wamid.E"]
    assert items[-1].business_account == "555666777"
    assert items[-1].user_id == "447911654321"


@pytest.mark.parametrize("field", ["account_update", "account_settings_update", "message_template_status", "security"])
def test_fields_other_than_messages_are_ignored(field: str) -> None:
    text = payloads.text_message(ACCOUNT, USER, "wamid.A", AT, "hello")
    # Shapes that would not parse as `messages` (no metadata): they must not be read as such.
    other_change = {"field": field, "value": {"event": "whatever", "messages": [{"nonsense": True}]}}
    text["entry"][0]["changes"].insert(0, other_change)
    ignored, message = parse(encode(text))
    assert isinstance(ignored, Ignored)
    assert ignored.field == field
    assert message == InboundMessage(ACCOUNT.phone_number_id, USER, "wamid.A", AT, "text")


def test_empty_deliveries_parse_to_nothing() -> None:
    assert parse(encode({"object": "whatsapp_business_account"})) == []
    assert parse(encode({"object": "whatsapp_business_account", "entry": []})) == []
    assert parse(encode({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": []}]})) == []


# --- malformed ----------------------------------------------------------------------------------------------------


def test_missing_phone_number_id_is_malformed() -> None:
    body = reply_body(response="accept", is_permanent=True)
    del body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"]
    with pytest.raises(MalformedWebhook, match="phone_number_id"):
        parse(encode(body))


def test_missing_metadata_is_malformed() -> None:
    body = reply_body(response="accept", is_permanent=True)
    del body["entry"][0]["changes"][0]["value"]["metadata"]
    with pytest.raises(MalformedWebhook):
        parse(encode(body))


@pytest.mark.parametrize("timestamp", ["yesterday", "", None, "17671680OO", {"seconds": T}, [T]])
def test_bad_message_timestamp_is_malformed(timestamp: Any) -> None:
    body = reply_body(response="accept", is_permanent=True)
    if timestamp is None:
        del message_of(body)["timestamp"]
    else:
        message_of(body)["timestamp"] = timestamp
    with pytest.raises(MalformedWebhook, match="timestamp"):
        parse(encode(body))


@pytest.mark.parametrize("expiration", ["next week", {"at": EXPIRES}])
def test_bad_expiration_timestamp_is_malformed(expiration: Any) -> None:
    with pytest.raises(MalformedWebhook, match="expiration_timestamp"):
        parse(encode(reply_body(response="accept", is_permanent=False, expiration_timestamp=expiration)))


def test_bad_status_timestamp_is_malformed() -> None:
    body = payloads.message_status(ACCOUNT, USER, "wamid.CPR", AT, "failed", 131026)
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["timestamp"] = "soon"
    with pytest.raises(MalformedWebhook, match="timestamp"):
        parse(encode(body))


def test_message_without_id_is_malformed() -> None:
    body = reply_body(response="accept", is_permanent=True)
    del message_of(body)["id"]
    with pytest.raises(MalformedWebhook):
        parse(encode(body))


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b'{"object": "whatsapp_business_account", "entry": [', b"\xff\xfe\x00", b"[]", b"null"]
)
def test_non_json_or_non_object_body_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedWebhook):
        parse(raw)


@pytest.mark.parametrize("obj", ["page", "instagram", "", None, 1])
def test_wrong_object_is_malformed(obj: Any) -> None:
    body = reply_body(response="accept", is_permanent=True)
    body["object"] = obj
    with pytest.raises(MalformedWebhook, match="object"):
        parse(encode(body))


def test_missing_object_is_malformed() -> None:
    body = reply_body(response="accept", is_permanent=True)
    del body["object"]
    with pytest.raises(MalformedWebhook, match="object"):
        parse(encode(body))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(entry={"not": "a list"}),
        lambda b: b["entry"].append("not an object"),
        lambda b: b["entry"][0].update(changes="nope"),
        lambda b: b["entry"][0]["changes"][0].update(value=None),
        lambda b: b["entry"][0]["changes"][0]["value"].update(messages={"id": "x"}),
        lambda b: b["entry"][0]["changes"][0]["value"]["messages"].append(7),
    ],
)
def test_wrong_container_types_are_malformed(mutate: Any) -> None:
    body = reply_body(response="accept", is_permanent=True)
    mutate(body)
    with pytest.raises(MalformedWebhook):
        parse(encode(body))


def account_update(value: dict[str, Any], time: object = 1767168000) -> bytes:
    return json.dumps(
        {"object": "whatsapp_business_account",
         "entry": [{"id": "WABA", "time": time, "changes": [{"field": "account_update", "value": value}]}]}
    ).encode()  # fmt: skip


def test_account_restriction_of_business_initiated_calling_is_a_pause_until_its_expiration() -> None:
    (item,) = parse(account_update({
        "phone_number": "447911123456", "event": "ACCOUNT_RESTRICTION",
        "restriction_info": [
            {"restriction_type": "RESTRICTED_USER_INITIATED_CALLING", "expiration": 1767200000},
            {"restriction_type": "RESTRICTED_BUSINESS_INITIATED_CALLING", "expiration": "1767772800"},
        ],
    }))  # fmt: skip
    assert isinstance(item, BusinessRestriction)
    assert item.restricted and item.display_number == "447911123456"
    assert item.until == datetime.fromtimestamp(1767772800, UTC)
    assert item.timestamp == datetime.fromtimestamp(1767168000, UTC)


def test_account_restriction_without_a_business_initiated_entry_lifts_the_pause() -> None:
    (item,) = parse(account_update({
        "phone_number": "447911123456", "event": "ACCOUNT_RESTRICTION",
        "restriction_info": [{"restriction_type": "RESTRICTED_USER_INITIATED_CALLING_CALL_BUTTON_HIDDEN"}],
    }))  # fmt: skip
    assert isinstance(item, BusinessRestriction) and not item.restricted and item.until is None


def test_account_updates_that_are_not_about_a_numbers_calling_are_ignored_not_refused() -> None:
    (violation,) = parse(account_update({"event": "ACCOUNT_VIOLATION", "phone_number": "447911123456"}))
    assert isinstance(violation, Ignored)
    # An account-level messaging restriction names no number: the delivery is acknowledged, not retried forever.
    (account_level,) = parse(account_update({
        "event": "ACCOUNT_RESTRICTION",
        "restriction_info": [{"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": 1767772800}],
    }))  # fmt: skip
    assert isinstance(account_level, Ignored)
    (no_number,) = parse(account_update({"event": "ACCOUNT_RESTRICTION", "restriction_info": []}))
    assert isinstance(no_number, Ignored)


def test_a_messaging_restriction_of_the_number_does_not_touch_the_calling_pause() -> None:
    (item,) = parse(account_update({
        "phone_number": "447911123456", "event": "ACCOUNT_RESTRICTION",
        "restriction_info": [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1767772800}],
    }))  # fmt: skip
    assert isinstance(item, Ignored) and "do not concern calling" in item.why


def test_a_restriction_event_listing_nothing_lifts_the_pause() -> None:
    (item,) = parse(account_update({"phone_number": "447911123456", "event": "ACCOUNT_RESTRICTION",
                                    "restriction_info": []}))  # fmt: skip
    assert isinstance(item, BusinessRestriction) and not item.restricted


@pytest.mark.parametrize(
    "info",
    [["RESTRICTED_BUSINESS_INITIATED_CALLING"], [{"restriction_type": 7}], {"restriction_type": "x"}],
)
def test_a_restriction_with_wrong_types_is_malformed(info: Any) -> None:
    with pytest.raises(MalformedWebhook, match="restriction"):
        parse(
            account_update({"phone_number": "447911123456", "event": "ACCOUNT_RESTRICTION", "restriction_info": info})
        )


# --- the shapes of the platform's calling docs --------------------------------------------------------------------


def test_a_permission_reply_without_a_message_type_is_recognised_by_its_interactive_type() -> None:
    body = reply_body(response="reject", response_source="automatic")
    del message_of(body)["type"]
    del message_of(body)["context"]
    reply = only(body)
    assert isinstance(reply, PermissionReply)
    assert not reply.accepted and reply.automatic and reply.context_id is None


def call_body(call: dict[str, Any]) -> dict[str, Any]:
    return payloads.envelope(ACCOUNT, "calls", {"calls": [call]})


def test_a_connect_without_direction_that_offers_sdp_is_a_user_calling() -> None:
    (item,) = parse(encode(call_body({
        "id": "wacid.USER", "from": USER, "to": "447911123456", "event": "connect", "timestamp": str(T),
        "session": {"sdp_type": "offer", "sdp": "v=0\r\n"},
    })))  # fmt: skip
    assert item == CallEventItem(
        business_account=ACCOUNT.phone_number_id,
        call_id="wacid.USER",
        kind=CallEventKind.CONNECT,
        timestamp=AT,
        user_id=USER,
        is_user_calling=True,
        sdp="v=0\r\n",
        sdp_type="offer",
    )


def test_a_connect_without_direction_that_answers_is_not_a_user_calling() -> None:
    (item,) = parse(encode(call_body({
        "id": "wacid.BIZ", "from": "447911123456", "to": USER, "event": "connect", "timestamp": str(T),
        "session": {"sdp_type": "answer", "sdp": "v=0\r\n"},
    })))  # fmt: skip
    assert not item.is_user_calling and item.user_id == USER


@pytest.mark.parametrize(
    ("codes", "setup_failed"),
    [((138019,), True), ((138004, 138021), True), ((138021,), False), ((), False)],
)
def test_a_terminate_says_whether_the_call_ever_got_set_up(codes: tuple[int, ...], setup_failed: bool) -> None:
    # Meta's setup codes (§6.6) are read here; the domain sees only the verdict and keeps the codes for the record.
    (item,) = parse(encode(payloads.envelope(ACCOUNT, "calls", {
        "calls": [{"id": "wacid.X", "to": USER, "event": "terminate", "timestamp": T, "status": "FAILED"}],
        "errors": [{"code": code, "message": "m"} for code in codes],
    })))  # fmt: skip
    assert isinstance(item, CallEventItem)
    assert (item.kind, item.error_codes, item.setup_failed) == (CallEventKind.TERMINATE, codes, setup_failed)


@pytest.mark.parametrize(
    ("status", "kind"),
    [("RINGING", CallEventKind.RINGING), ("accepted", CallEventKind.ACCEPTED), ("REJECTED", CallEventKind.REJECTED),
     ("ON_HOLD", CallEventKind.UNKNOWN)],
)  # fmt: skip
def test_call_statuses_are_call_events_of_their_kind(status: str, kind: CallEventKind) -> None:
    body = payloads.envelope(ACCOUNT, "calls", {"statuses": [
        {"id": "wacid.X", "type": "call", "status": status, "timestamp": str(T), "recipient_id": USER,
         "biz_opaque_callback_data": "ticket-7"},
    ]})  # fmt: skip
    assert only(body) == CallEventItem(ACCOUNT.phone_number_id, "wacid.X", kind, AT, USER, opaque="ticket-7")


def test_a_call_event_of_a_kind_not_known_changes_nothing() -> None:
    (item,) = parse(encode(call_body({"id": "wacid.X", "to": USER, "event": "transfer", "timestamp": T})))
    assert isinstance(item, CallEventItem) and item.kind is CallEventKind.UNKNOWN


# --- hostile and unusual values: refused with a message naming the field, never coerced ---------------------------


@pytest.mark.parametrize("value", ["false", "true", 0, 1, "", [], {}])
def test_is_permanent_must_be_a_boolean_never_a_truthy_value(value: Any) -> None:
    with pytest.raises(MalformedWebhook, match="is_permanent"):
        parse(encode(reply_body(response="accept", is_permanent=value)))


@pytest.mark.parametrize(
    "timestamp",
    [
        1000000000000,
        253402300799,
        -1,
        "-1",
        10**30,
        "1e9",
        1767168000.0,
        True,
        "\u00b2",
        "１７６７１６８０００",
        " 1767168000",
    ],
)
def test_timestamps_that_are_not_storable_unix_seconds_are_malformed(timestamp: Any) -> None:
    body = reply_body(response="accept", is_permanent=True)
    message_of(body)["timestamp"] = timestamp
    with pytest.raises(MalformedWebhook, match="timestamp"):
        parse(encode(body))


@pytest.mark.parametrize("constant", ["Infinity", "-Infinity", "NaN"])
def test_json_constants_that_are_not_numbers_are_malformed(constant: str) -> None:
    raw = encode(reply_body(response="accept", is_permanent=True)).replace(f'"{T}"'.encode(), constant.encode())
    with pytest.raises(MalformedWebhook, match="not a JSON number"):
        parse(raw)


WINDOW = TimeWindow(AT, timedelta(minutes=5), timedelta(days=8), timedelta(days=366))


def test_timestamps_inside_the_window_are_accepted() -> None:
    for at in (T + 300, T - 8 * 86400, T):
        body = reply_body(response="accept", is_permanent=True)
        message_of(body)["timestamp"] = str(at)
        assert parse(encode(body), WINDOW)[0].timestamp == datetime.fromtimestamp(at, UTC)


@pytest.mark.parametrize("at", [T + 301, T + 365 * 86400, 99_999_999_999, T - 8 * 86400 - 1, 0])
def test_timestamps_ahead_of_the_skew_or_older_than_retries_are_untrusted(at: int) -> None:
    body = reply_body(response="accept", is_permanent=True)
    message_of(body)["timestamp"] = str(at)
    with pytest.raises(UntrustedTimestamp, match=r"messages\[\]\.timestamp"):
        parse(encode(body), WINDOW)


def test_an_expiration_too_far_ahead_is_untrusted() -> None:
    body = reply_body(response="accept", is_permanent=False, expiration_timestamp=str(T + 367 * 86400))
    with pytest.raises(UntrustedTimestamp, match="expiration_timestamp"):
        parse(encode(body), WINDOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [("duration", "10s"), ("duration", -1), ("duration", 1.5), ("duration", 2**31), ("duration", True)],
)
def test_non_numeric_call_numbers_are_malformed(field: str, value: Any) -> None:
    body = call_body({"id": "wacid.X", "to": USER, "event": "terminate", "timestamp": T, field: value})
    with pytest.raises(MalformedWebhook, match=field):
        parse(encode(body))


@pytest.mark.parametrize("code", ["x", "138021", 1.5, None, -5, 10**20, [1]])
def test_non_numeric_error_codes_are_malformed(code: Any) -> None:
    call = payloads.envelope(ACCOUNT, "calls", {
        "calls": [{"id": "wacid.X", "to": USER, "event": "terminate", "timestamp": T}],
        "errors": [{"code": code, "message": "Connect timeout"}],
    })  # fmt: skip
    status = payloads.message_status(ACCOUNT, USER, "wamid.CPR", AT, "failed", 131026)
    status["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"][0]["code"] = code
    for body in (call, status):
        with pytest.raises(MalformedWebhook, match="code"):
            parse(encode(body))


def test_json_nested_a_thousand_deep_is_malformed() -> None:
    raw = b'{"object": "whatsapp_business_account", "entry": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(MalformedWebhook, match="nested"):
        parse(raw)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: message_of(b).update(id="wamid.\ud800"),
        lambda b: message_of(b).update({"\udfff": 1}),
        lambda b: b["entry"][0].update(id="\udbff"),
    ],
)
def test_a_lone_surrogate_anywhere_is_malformed(mutate: Any) -> None:
    body = reply_body(response="accept", is_permanent=True)
    mutate(body)
    raw = json.dumps(body).encode()  # ensure_ascii writes the surrogate as a \u escape, as a fuzzer would
    with pytest.raises(MalformedWebhook, match="surrogate"):
        parse(raw)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: message_of(b).update(id=12345), "messages\\[\\].id"),
        (lambda b: message_of(b).update({"from": 34612345678}), "from"),
        (lambda b: message_of(b).update(type=["interactive"]), "type"),
        (lambda b: message_of(b)["context"].update(id={"id": "wamid.X"}), "context.id"),
        (lambda b: reply_of(b).update(response_source=1), "response_source"),
        (lambda b: reply_of(b).update(response=True), "response"),
        (
            lambda b: b["entry"][0]["changes"][0]["value"]["metadata"].update(phone_number_id=106540352242922),
            "phone_number_id",
        ),
        (lambda b: b["entry"][0]["changes"][0]["value"].update(contacts=["34612345678"]), "contacts"),
        (lambda b: b["entry"][0]["changes"][0]["value"].update(metadata=["106540352242922"]), "metadata"),
    ],
)
def test_wrong_types_are_refused_not_coerced(mutate: Any, field: str) -> None:
    body = reply_body(response="accept", is_permanent=True)
    if field == "contacts":
        del message_of(body)["from"]
    mutate(body)
    with pytest.raises(MalformedWebhook, match=field):
        parse(encode(body))


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"id": 7}, "calls\\[\\].id"),
        ({"event": 1}, "event"),
        ({"direction": ["USER_INITIATED"]}, "direction"),
        ({"session": "v=0"}, "session"),
        ({"session": {"sdp": 1, "sdp_type": "offer"}}, "sdp"),
        ({"biz_opaque_callback_data": {"a": 1}}, "biz_opaque_callback_data"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"to": 34612345678}, "to"),
    ],
)
def test_wrong_types_in_calls_are_refused(call: dict[str, Any], field: str) -> None:
    base = {"id": "wacid.X", "to": USER, "from": "447911123456", "event": "connect", "timestamp": T}
    with pytest.raises(MalformedWebhook, match=field):
        parse(encode(call_body(base | call)))


def reply_of(body: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = message_of(body)["interactive"]["call_permission_reply"]
    return reply


# --- the platform's wa_id forms (HOOK-8) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wa_id", "e164"),
    [
        ("5215512345678", "+525512345678"),  # Mexico: the legacy mobile "1" is not part of E.164
        ("525512345678", "+525512345678"),
        ("5491123456789", "+5491123456789"),  # Argentina: the mobile "9" is part of E.164
        ("541123456789", "+541123456789"),  # ...and without it, a Buenos Aires landline: left alone
        ("551187654321", "+5511987654321"),  # Brazil: a mobile from before the ninth digit
        ("5511987654321", "+5511987654321"),
        ("553133334444", "+553133334444"),  # a Brazilian landline (starts 2-5): no ninth digit
        ("34612345678", "+34612345678"),
    ],
)
def test_wa_id_forms_map_to_e164(wa_id: str, e164: str) -> None:
    assert number_of_wa_id(wa_id).e164 == e164


@pytest.mark.parametrize("wa_id", ["5219912345", "52155123456789", "5511", "not-a-number", ""])
def test_wa_ids_that_are_no_number_are_refused(wa_id: str) -> None:
    with pytest.raises(InvalidNumber):
        number_of_wa_id(wa_id)


def test_a_field_wacall_does_not_read_is_ignored_whatever_its_value() -> None:
    text = payloads.text_message(ACCOUNT, USER, "wamid.A", AT, "hello")
    text["entry"][0]["changes"].insert(0, {"field": "security", "value": "not an object"})
    ignored, message = parse(encode(text))
    assert isinstance(ignored, Ignored) and isinstance(message, InboundMessage)
