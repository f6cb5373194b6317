"""Proto messages from the service's objects (a call in the event log is the call record's JSON). Pure mapping."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from wacall_client.v1 import calling_pb2 as pb

from wacall.api.queue_messages import change_message
from wacall.calls import record as call_record
from wacall.calls.machine import CallOutcome, CallState, Direction
from wacall.calls.record import CallRecord, SipDirection
from wacall.errors import REASONS
from wacall.events import EventKind
from wacall.permissions import PermissionView
from wacall.rules import engine
from wacall.rules.engine import ActionDecision
from wacall.rules.policy import Policy, WindowLimit
from wacall.store import EventRecord

STATE = {s: getattr(pb, f"PERMISSION_STATE_{s.name}") for s in engine.PermissionState}
REASON = {r: getattr(pb, f"REASON_{r.name}") for r in engine.Reason}
ACTION = {a: getattr(pb, f"ACTION_{a.name}") for a in engine.Action}
CHANNEL = {c: getattr(pb, f"CHANNEL_{c.name}") for c in engine.Channel}
SOURCE = {s.value: getattr(pb, f"EVENT_SOURCE_{s.name}") for s in engine.Source}
# Keyed by the stored string: a kind this version does not know reads as unspecified.
EVENT_KIND: Mapping[str, pb.EventKind] = {kind: getattr(pb, f"EVENT_KIND_{kind.name}") for kind in EventKind}


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """As `Timestamp.FromDatetime` (a naive time is UTC), by integer arithmetic: a Permission carries a dozen."""
    if value is None:
        return None
    since = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - EPOCH
    return timestamp_pb2.Timestamp(seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000)


def duration(value: timedelta) -> duration_pb2.Duration:
    # timedelta normalises to days, seconds in [0, 86400) and microseconds in [0, 10**6); a Duration's nanos take
    # the sign of its seconds.
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    seconds, nanos = divmod(abs(micros), 1_000_000)
    sign = -1 if micros < 0 else 1
    return duration_pb2.Duration(seconds=sign * seconds, nanos=sign * nanos * 1000)


def action_detail(decision: ActionDecision) -> str:
    if decision.allowed:
        return "allowed now"
    advice = REASONS[decision.reason].advice
    if decision.next_allowed_at:
        return f"{advice}; next allowed at {decision.next_allowed_at.isoformat()}"
    return advice


def action_status(decision: ActionDecision) -> pb.ActionStatus:
    return pb.ActionStatus(
        action=ACTION[decision.action],
        allowed=decision.allowed,
        reason=REASON[decision.reason],
        next_allowed_at=timestamp(decision.next_allowed_at),
        limits=[
            pb.Limit(
                window=duration(u.window), max_allowed=u.max_allowed, used=u.used, resets_at=timestamp(u.resets_at)
            )
            for u in decision.limits
        ],
        channel=CHANNEL[decision.channel] if decision.channel else pb.CHANNEL_UNSPECIFIED,
        detail=action_detail(decision),
    )


def view_message(view: PermissionView) -> pb.Permission:
    """The Permission message: the one place a permission view's fields are written for the API."""
    evaluation = view.evaluation
    return pb.Permission(
        business_number=view.pair.business,
        user_number=view.pair.user,
        state=STATE[evaluation.state],
        expires_at=timestamp(evaluation.expires_at),
        consecutive_unanswered_calls=evaluation.consecutive_unanswered,
        user_prompted=evaluation.user_prompted,
        service_window_expires_at=timestamp(evaluation.service_window_expires_at),
        actions=[action_status(d) for d in evaluation.actions],
        updated_at=timestamp(view.updated_at),
        policy=view.policy.label,
    )


CALL_STATE = {s: getattr(pb, f"CALL_STATE_{s.name}") for s in CallState}
CALL_OUTCOME = {o: getattr(pb, f"CALL_OUTCOME_{o.name}") for o in CallOutcome}
CALL_DIRECTION = {d: getattr(pb, f"CALL_DIRECTION_{d.name}") for d in Direction}
SIP_DIRECTION = {d: getattr(pb, f"SIP_DIRECTION_{d.name}") for d in SipDirection}


def call_message(call: CallRecord) -> pb.Call:
    facts = call.facts
    error = call.platform_error
    return pb.Call(
        call_id=call.call_id,
        platform_call_id=call.platform_call_id or "",
        business_number=call.pair.business,
        user_number=call.pair.user,
        direction=CALL_DIRECTION[call.direction],
        state=CALL_STATE[facts.state],
        outcome=CALL_OUTCOME[facts.outcome] if facts.outcome else pb.CALL_OUTCOME_UNSPECIFIED,
        created_at=timestamp(facts.created_at),
        answered_at=timestamp(facts.answered_at),
        ended_at=timestamp(facts.ended_at),
        duration_seconds=facts.duration_seconds or 0,
        route=call.route,
        platform_error=pb.PlatformError(code=error.code or 0, message=error.message, details=error.details)
        if error is not None
        else None,
        biz_opaque_callback_data=call.opaque,
        webrtc_answer_sdp=call.answer_sdp,
        media=pb.MediaStats(
            frames_sent=call.media.frames_sent,
            frames_received=call.media.frames_received,
            audible_frames_received=call.media.audible_frames_received,
            mean_level_received=call.media.mean_level_received,
        ),
        end_reason=call.end_reason,
        sip=pb.SipCall(
            trunk=call.sip.trunk,
            call_id=call.sip.call_id,
            direction=SIP_DIRECTION[call.sip.direction],
            last_status=call.sip.last_status,
        )
        if call.sip is not None
        else None,
    )


def event_message(record: EventRecord) -> pb.Event:
    attributes = dict(record.attributes)
    snapshot = attributes.pop("call", None)
    change = attributes.pop("contact_center", None)
    return pb.Event(
        cursor=str(record.cursor),
        kind=EVENT_KIND.get(record.kind, pb.EVENT_KIND_UNSPECIFIED),
        business_number=record.pair.business,
        user_number=record.pair.user,
        occurred_at=timestamp(record.occurred_at),
        recorded_at=timestamp(record.recorded_at),
        source=SOURCE.get(record.source, pb.EVENT_SOURCE_UNSPECIFIED),
        permission_state=STATE[record.state_after],
        attributes=attributes,
        call=call_message(call_record.from_event_payload(json.loads(snapshot))) if snapshot else None,
        contact_center=change_message(change) if change else None,
    )


def limit_message(limit: WindowLimit) -> pb.Limit:
    return pb.Limit(window=duration(limit.window), max_allowed=limit.max_allowed)


def policy_message(policy: Policy) -> pb.Policy:
    return pb.Policy(
        name=policy.name,
        version=policy.version,
        source=policy.source,
        permission_request_limits=[limit_message(x) for x in policy.request_limits],
        connected_call_limits=[limit_message(x) for x in policy.connected_call_limits],
        temporary_grant_lifetime=duration(policy.temporary_grant_lifetime),
        prompt_after_unanswered=policy.prompt_after_unanswered,
        revoke_after_unanswered=policy.revoke_after_unanswered,
        service_window=duration(policy.service_window),
        denied_business_regions=sorted(policy.denied_business_regions),
        request_lifetime=duration(policy.request_lifetime),
        boundary_margin=duration(policy.boundary_margin),
        window_margin=duration(policy.window_margin),
    )
