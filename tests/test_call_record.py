"""The call record's one codec: the store's row, the event payload and the API's Call agree, and payloads of the
first shape (written before the codec) read back as the Call they stood for."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Running
from wacall_client.v1 import calling_pb2 as pb

from wacall.api.messages import call_message, timestamp
from wacall.calls import record as call_record
from wacall.calls.machine import CallFacts, CallOutcome, CallState, Direction
from wacall.calls.record import CallRecord, PlatformError, SipDirection, SipLeg
from wacall.events import EventKind
from wacall.media.counters import MediaCounters
from wacall.rules.engine import PermissionState, Source
from wacall.store import EventRecord, Pair, Tx, to_micros

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PAIR = Pair("+447911123456", "+34612345678")


def a_record(**changes: object) -> CallRecord:
    facts = CallFacts(
        Direction.BUSINESS_INITIATED,
        T0,
        state=CallState.ENDED,
        answered_at=T0 + timedelta(seconds=3),
        ended_at=T0 + timedelta(seconds=33),
        duration_seconds=30,
        error_codes=(131000,),
        connected_applied=True,
    )
    record = CallRecord(
        "call_" + "a" * 32,
        PAIR,
        facts,
        route="announcement",
        platform_call_id="wacid.ABC",
        opaque="order-7",
        platform_error=PlatformError(131000, "Something went wrong", "details"),
        answer_sdp="v=0\r\n",
        end_reason="ended by the business",
        media=MediaCounters(1500, 1490, 1200, 0.21),
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_a_record_survives_the_row_and_the_event_payload_unchanged() -> None:
    record = a_record()
    assert call_record.from_stored(call_record.to_stored(record)) == record
    assert call_record.decode(json.loads(json.dumps(call_record.encode(record)))) == record


def test_a_sip_leg_survives_the_row_and_the_event_payload_and_maps_to_the_call() -> None:
    record = a_record(route="sip", sip=SipLeg("pbx", "a84b4c76e66710@pbx", SipDirection.FRONT_DOOR, 487))
    assert call_record.from_stored(call_record.to_stored(record)) == record
    assert call_record.from_event_payload(json.loads(json.dumps(call_record.encode(record)))) == record
    message = call_message(record)
    assert message.HasField("sip") and message.route == "sip"
    assert (message.sip.trunk, message.sip.call_id, message.sip.direction, message.sip.last_status) == (
        "pbx",
        "a84b4c76e66710@pbx",
        pb.SIP_DIRECTION_FRONT_DOOR,
        487,
    )
    assert not call_message(a_record()).HasField("sip")


def test_a_row_from_before_sip_legs_reads_back_without_one() -> None:
    stored = call_record.to_stored(a_record())
    old = dataclasses.replace(stored, data={k: v for k, v in stored.data.items() if k != "sip"})
    assert call_record.from_stored(old).sip is None


def test_the_row_indexes_what_the_store_queries() -> None:
    stored = call_record.to_stored(a_record())
    assert (stored.call_id, stored.pair, stored.platform_call_id) == ("call_" + "a" * 32, PAIR, "wacid.ABC")
    assert (stored.direction, stored.state, stored.created_at, stored.active) == (
        "business_initiated",
        "ended",
        T0,
        False,
    )
    live = call_record.to_stored(a_record(facts=CallFacts(Direction.USER_INITIATED, T0)))
    assert live.active and live.state == "dialing" and live.direction == "user_initiated"


def test_a_row_from_before_media_and_answers_were_kept_reads_them_as_empty() -> None:
    stored = call_record.to_stored(a_record())
    data = {k: v for k, v in stored.data.items() if k not in ("media", "answer_sdp", "platform_error", "opaque")}
    old = dataclasses.replace(stored, data=data)
    record = call_record.from_stored(old)
    assert (record.media, record.answer_sdp, record.platform_error, record.opaque) == (MediaCounters(), "", None, "")


def first_shape(record: CallRecord) -> dict[str, object]:
    """A `call_updated` payload as the first versions wrote it (the call as the API showed it, no facts)."""
    facts = record.facts
    error = record.platform_error
    return {
        "call_id": record.call_id,
        "platform_call_id": record.platform_call_id or "",
        "business": record.pair.business,
        "user": record.pair.user,
        "direction": facts.direction.value,
        "state": facts.state.value,
        "outcome": facts.outcome.value if facts.outcome else "",
        "created_at": to_micros(facts.created_at),
        "answered_at": to_micros(facts.answered_at) if facts.answered_at else None,
        "ended_at": to_micros(facts.ended_at) if facts.ended_at else None,
        "duration_seconds": facts.duration_seconds or 0,
        "route": record.route,
        "opaque": record.opaque,
        "platform_error": dataclasses.asdict(error) if error else None,
        "end_reason": record.end_reason,
    }


def first_shape_call(snapshot: dict[str, object]) -> pb.Call:
    """The Call the first versions showed for such a payload."""
    call = pb.Call(
        call_id=str(snapshot["call_id"]),
        platform_call_id=str(snapshot["platform_call_id"]),
        business_number=str(snapshot["business"]),
        user_number=str(snapshot["user"]),
        direction=getattr(pb, f"CALL_DIRECTION_{str(snapshot['direction']).upper()}"),
        state=getattr(pb, f"CALL_STATE_{str(snapshot['state']).upper()}"),
        outcome=getattr(pb, f"CALL_OUTCOME_{str(snapshot['outcome']).upper()}")
        if snapshot["outcome"]
        else pb.CALL_OUTCOME_UNSPECIFIED,
        duration_seconds=int(snapshot["duration_seconds"]),  # type: ignore[call-overload]
        route=str(snapshot["route"]),
        biz_opaque_callback_data=str(snapshot["opaque"]),
        end_reason=str(snapshot["end_reason"]),
    )
    for name, field in (("created_at", "created_at"), ("answered_at", "answered_at"), ("ended_at", "ended_at")):
        if snapshot[name] is not None:
            micros = int(snapshot[name])  # type: ignore[call-overload]
            getattr(call, field).CopyFrom(timestamp(datetime.fromtimestamp(micros / 1e6, UTC)))
    error = snapshot["platform_error"]
    if error:
        call.platform_error.CopyFrom(pb.PlatformError(**error))  # type: ignore[arg-type]
    return call


def ended(outcome: CallOutcome) -> CallFacts:
    base = CallFacts(Direction.BUSINESS_INITIATED, T0, state=CallState.ENDED, ended_at=T0 + timedelta(seconds=40))
    return {
        CallOutcome.ANSWERED: dataclasses.replace(base, answered_at=T0 + timedelta(seconds=5), duration_seconds=35),
        CallOutcome.REJECTED: dataclasses.replace(base, rejected=True),
        CallOutcome.CANCELLED: dataclasses.replace(base, ended_by_business_before_answer=True),
        CallOutcome.FAILED: dataclasses.replace(base, setup_failed=True, error_codes=(138006,)),
        CallOutcome.UNANSWERED: base,
    }[outcome]


@pytest.mark.parametrize(
    "facts",
    [
        CallFacts(Direction.BUSINESS_INITIATED, T0),
        CallFacts(Direction.USER_INITIATED, T0, state=CallState.RINGING),
        CallFacts(Direction.BUSINESS_INITIATED, T0, state=CallState.CONNECTED, answered_at=T0),
        *(ended(outcome) for outcome in CallOutcome),
    ],
    ids=lambda facts: f"{facts.state.value}-{facts.outcome.value if facts.outcome else 'open'}",
)
def test_a_payload_of_the_first_shape_reads_back_as_the_call_it_stood_for(facts: CallFacts) -> None:
    record = a_record(facts=facts, media=MediaCounters(), answer_sdp="")
    snapshot = first_shape(record)
    converted = call_record.from_event_payload(snapshot)
    assert converted.state is facts.state and converted.outcome is facts.outcome
    shown = call_message(converted)
    assert shown.media == pb.MediaStats()  # the first shape kept no counters: the Call shows zeros
    shown.ClearField("media")
    assert shown == first_shape_call(snapshot)


async def test_a_call_event_of_the_first_shape_lists_through_the_api_as_it_always_did(wacall: Running) -> None:
    store = wacall.service.store
    assert store is not None
    record = a_record(facts=ended(CallOutcome.REJECTED), media=MediaCounters(), answer_sdp="")
    snapshot = first_shape(record)

    def write(tx: Tx) -> None:
        attributes = {"call_id": record.call_id, "call": json.dumps(snapshot)}
        tx.append(
            EventRecord(PAIR, EventKind.CALL_UPDATED, Source.BUSINESS.value, T0, T0, PermissionState.NONE, attributes)
        )

    await store.transaction(write)
    listed = await wacall.calling.ListEvents(pb.ListEventsRequest(user_number=PAIR.user), metadata=wacall.metadata)
    [event] = [e for e in listed.events if e.kind == pb.EVENT_KIND_CALL_UPDATED]
    shown = pb.Call()
    shown.CopyFrom(event.call)
    assert shown.media == pb.MediaStats()
    shown.ClearField("media")
    assert shown == first_shape_call(snapshot) and event.call.outcome == pb.CALL_OUTCOME_REJECTED
    assert dict(event.attributes) == {"call_id": record.call_id}
