"""The call record: everything wacall keeps about one call, and its one JSON codec.

The same JSON is the store's row (`StoredCall.data`, beside the columns the store indexes) and the payload of
every `call_updated` event, and `api/messages.call_message` maps the record to the API's `Call`. A field is added
here once and reaches all three.

Rows written by earlier versions lack some keys (a call that never had an answer SDP, media counters from before
they were kept): `decode` reads a missing optional key as its empty value. Identity (`call_id`, the pair, the
platform's call id) is read from the store's columns when a row is decoded, since older rows do not repeat it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from wacall.calls.machine import CallFacts, CallOutcome, CallState, Direction
from wacall.media.counters import MediaCounters
from wacall.store import Pair, StoredCall, from_micros, optional_datetime, optional_micros, to_micros


@dataclass(frozen=True, slots=True)
class PlatformError:
    """The platform's own error for a call that failed there, for the record (its code is the platform's)."""

    code: int | None
    message: str = ""
    details: str = ""


class SipDirection(enum.Enum):
    """Which way a call's SIP leg was set up."""

    FRONT_DOOR = "front_door"  # a PBX's INVITE to wacall's front door
    SIP_ROUTE = "sip_route"  # wacall's INVITE to a trunk once the user answered (StartCall, route sip)
    INBOUND = "inbound"  # a user's call handed to a trunk


@dataclass(frozen=True, slots=True)
class SipLeg:
    """The PBX side of a call with a SIP leg: its trunk, the SIP Call-ID, the direction, and the last final status
    the PBX leg got or gave (0 before it has one)."""

    trunk: str
    call_id: str
    direction: SipDirection
    last_status: int = 0


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    pair: Pair
    facts: CallFacts
    route: str = ""
    platform_call_id: str | None = None
    opaque: str = ""
    platform_error: PlatformError | None = None
    answer_sdp: str = ""
    end_reason: str = ""
    media: MediaCounters = field(default_factory=MediaCounters)
    sip: SipLeg | None = None
    # The platform's SDP answer to our offer (a business call), kept so that the call's owner applies it even when
    # the webhook that carried it landed on another replica.
    platform_answer_sdp: str = ""

    @property
    def direction(self) -> Direction:
        return self.facts.direction

    @property
    def state(self) -> CallState:
        return self.facts.state

    @property
    def outcome(self) -> CallOutcome | None:
        return self.facts.outcome

    @property
    def created_at(self) -> datetime:
        return self.facts.created_at

    @property
    def ended(self) -> bool:
        return self.facts.state is CallState.ENDED


# --- facts ---------------------------------------------------------------------------------------------------------


def _facts_to_json(facts: CallFacts) -> dict[str, Any]:
    return {
        "direction": facts.direction.value,
        "created_at": to_micros(facts.created_at),
        "state": facts.state.value,
        "answered_at": optional_micros(facts.answered_at),
        "ended_at": optional_micros(facts.ended_at),
        "duration_seconds": facts.duration_seconds,
        "rejected": facts.rejected,
        "ended_by_business_before_answer": facts.ended_by_business_before_answer,
        "setup_failed": facts.setup_failed,
        "error_codes": list(facts.error_codes),
        "error_detail": facts.error_detail,
        "connected_applied": facts.connected_applied,
        "unanswered_applied": facts.unanswered_applied,
        "window_applied": facts.window_applied,
    }


def _facts_from_json(data: Mapping[str, Any]) -> CallFacts:
    return CallFacts(
        direction=Direction(data["direction"]),
        created_at=from_micros(data["created_at"]),
        state=CallState(data["state"]),
        answered_at=optional_datetime(data["answered_at"]),
        ended_at=optional_datetime(data["ended_at"]),
        duration_seconds=data["duration_seconds"],
        rejected=data["rejected"],
        ended_by_business_before_answer=data["ended_by_business_before_answer"],
        setup_failed=data["setup_failed"],
        error_codes=tuple(data["error_codes"]),
        error_detail=data["error_detail"],
        connected_applied=data["connected_applied"],
        unanswered_applied=data["unanswered_applied"],
        window_applied=data.get("window_applied", False),
    )


# --- the record ----------------------------------------------------------------------------------------------------


def encode(record: CallRecord) -> dict[str, Any]:
    """The record as JSON-ready data: the store's row and the event payload."""
    error = record.platform_error
    return {
        "call_id": record.call_id,
        "business": record.pair.business,
        "user": record.pair.user,
        "platform_call_id": record.platform_call_id,
        "facts": _facts_to_json(record.facts),
        "route": record.route,
        "opaque": record.opaque,
        "platform_error": dataclasses.asdict(error) if error is not None else None,
        "answer_sdp": record.answer_sdp,
        "end_reason": record.end_reason,
        "media": dataclasses.asdict(record.media),
        "sip": _sip_to_json(record.sip),
        "platform_answer_sdp": record.platform_answer_sdp,
    }


def _sip_to_json(leg: SipLeg | None) -> dict[str, Any] | None:
    if leg is None:
        return None
    return {
        "trunk": leg.trunk,
        "call_id": leg.call_id,
        "direction": leg.direction.value,
        "last_status": leg.last_status,
    }


def _sip_from_json(data: Mapping[str, Any] | None) -> SipLeg | None:
    if not data:
        return None
    return SipLeg(data["trunk"], data["call_id"], SipDirection(data["direction"]), data.get("last_status", 0))


def decode(data: Mapping[str, Any]) -> CallRecord:
    error = data.get("platform_error")
    return CallRecord(
        call_id=data["call_id"],
        pair=Pair(data["business"], data["user"]),
        facts=_facts_from_json(data["facts"]),
        route=data.get("route", ""),
        platform_call_id=data.get("platform_call_id") or None,
        opaque=data.get("opaque", ""),
        platform_error=PlatformError(error["code"], error.get("message", ""), error.get("details", ""))
        if error
        else None,
        answer_sdp=data.get("answer_sdp", ""),
        end_reason=data.get("end_reason", ""),
        media=MediaCounters(**data.get("media", {})),
        sip=_sip_from_json(data.get("sip")),
        platform_answer_sdp=data.get("platform_answer_sdp", ""),
    )


def to_stored(record: CallRecord) -> StoredCall:
    """The row the store keeps: the columns it indexes and the encoded record."""
    return StoredCall(
        call_id=record.call_id,
        pair=record.pair,
        direction=record.direction.value,
        created_at=record.created_at,
        state=record.state.value,
        data=encode(record),
        platform_call_id=record.platform_call_id,
        active=not record.ended,
    )


def from_stored(stored: StoredCall) -> CallRecord:
    identity = {
        "call_id": stored.call_id,
        "business": stored.pair.business,
        "user": stored.pair.user,
        "platform_call_id": stored.platform_call_id,
    }
    return decode({**stored.data, **identity})


# --- event payloads written before the record had one codec --------------------------------------------------------

_FLAG_OF_OUTCOME = {
    CallOutcome.REJECTED.value: "rejected",
    CallOutcome.CANCELLED.value: "ended_by_business_before_answer",
    CallOutcome.FAILED.value: "setup_failed",
}


def from_event_payload(data: Mapping[str, Any]) -> CallRecord:
    """The call a `call_updated` event carries. The event log is append-only history, so payloads of the first
    shape (no facts) stay as they were written and are read through `from_snapshot_v1`."""
    return decode(data if "facts" in data else from_snapshot_v1(data))


def from_snapshot_v1(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The record's JSON for a `call_updated` payload of the first shape (the call as the API showed it, without
    its facts). The facts are rebuilt so that they read back the same state and outcome: the flag the outcome
    stood for is set, and the ledger counts as told, since these events are history."""
    error = snapshot.get("platform_error")
    facts = {
        "direction": snapshot["direction"],
        "created_at": snapshot["created_at"],
        "state": snapshot["state"],
        "answered_at": snapshot["answered_at"],
        "ended_at": snapshot["ended_at"],
        "duration_seconds": snapshot["duration_seconds"] or None,
        "rejected": False,
        "ended_by_business_before_answer": False,
        "setup_failed": False,
        "error_codes": [error["code"]] if error and error.get("code") is not None else [],
        "error_detail": "",
        "connected_applied": True,
        "unanswered_applied": True,
        "window_applied": True,
    }
    flag = _FLAG_OF_OUTCOME.get(snapshot["outcome"])
    if flag is not None:
        facts[flag] = True
    return {
        "call_id": snapshot["call_id"],
        "business": snapshot["business"],
        "user": snapshot["user"],
        "platform_call_id": snapshot["platform_call_id"] or None,
        "facts": facts,
        "route": snapshot["route"],
        "opaque": snapshot["opaque"],
        "platform_error": error,
        "answer_sdp": "",
        "end_reason": snapshot["end_reason"],
        "media": {},
    }
