"""The event log's kinds: the strings it stores never change, and each reaches the API as its own EventKind."""

from __future__ import annotations

from conftest import BUSINESS, USER, Running
from wacall_client.v1 import calling_pb2 as pb

from wacall.events import EventKind
from wacall.rules.engine import PermissionState, Source
from wacall.store import EventRecord, Pair, Tx

# What the log has stored since the first version, and what the API shows for each.
STORED_KINDS = {
    "permission_request_sent": pb.EVENT_KIND_PERMISSION_REQUEST_SENT,
    "permission_request_failed": pb.EVENT_KIND_PERMISSION_REQUEST_FAILED,
    "permission_granted": pb.EVENT_KIND_PERMISSION_GRANTED,
    "permission_rejected": pb.EVENT_KIND_PERMISSION_REJECTED,
    "permission_revoked": pb.EVENT_KIND_PERMISSION_REVOKED,
    "user_message_received": pb.EVENT_KIND_USER_MESSAGE_RECEIVED,
    "call_connected": pb.EVENT_KIND_CALL_CONNECTED,
    "call_unanswered": pb.EVENT_KIND_CALL_UNANSWERED,
    "user_prompted": pb.EVENT_KIND_USER_PROMPTED,
    "call_updated": pb.EVENT_KIND_CALL_UPDATED,
    "business_restriction_changed": pb.EVENT_KIND_BUSINESS_RESTRICTION_CHANGED,
    "queue_changed": pb.EVENT_KIND_QUEUE_CHANGED,
    "agent_changed": pb.EVENT_KIND_AGENT_CHANGED,
    "agent_presence_changed": pb.EVENT_KIND_AGENT_PRESENCE_CHANGED,
    "call_queued": pb.EVENT_KIND_CALL_QUEUED,
    "offer_made": pb.EVENT_KIND_OFFER_MADE,
    "offer_withdrawn": pb.EVENT_KIND_OFFER_WITHDRAWN,
    "call_assigned": pb.EVENT_KIND_CALL_ASSIGNED,
    "call_overflowed": pb.EVENT_KIND_CALL_OVERFLOWED,
    "queue_timed_out": pb.EVENT_KIND_QUEUE_TIMED_OUT,
    "queue_missing": pb.EVENT_KIND_QUEUE_MISSING,
}


def test_every_kind_is_stored_as_it_always_was() -> None:
    assert {kind.value for kind in EventKind} == set(STORED_KINDS)


def test_the_api_has_one_kind_for_each_kind_of_the_log() -> None:
    in_the_api = {value for name, value in pb.EventKind.items() if value != pb.EVENT_KIND_UNSPECIFIED}
    assert set(STORED_KINDS.values()) == in_the_api


async def test_events_stored_as_plain_strings_list_with_their_kinds(wacall: Running) -> None:
    # Rows as an earlier version wrote them (plain strings), and one kind this version does not know.
    store = wacall.service.store
    assert store is not None
    now = await wacall.now()
    written = [*STORED_KINDS, "kind_from_a_later_version"]

    def write(tx: Tx) -> None:
        for kind in written:
            tx.append(
                EventRecord(Pair(BUSINESS, USER), kind, Source.BUSINESS.value, now, now, PermissionState.NONE, {})
            )

    await store.transaction(write)
    listed = await wacall.calling.ListEvents(
        pb.ListEventsRequest(business_number=BUSINESS, user_number=USER, page_size=100), metadata=wacall.metadata
    )
    assert [e.kind for e in listed.events] == [*STORED_KINDS.values(), pb.EVENT_KIND_UNSPECIFIED]
