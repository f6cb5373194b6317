"""How the SQL backends' rows read back as records: the column lists, in the order the `row_to_*` functions read
them, and those functions. SQLite and PostgreSQL store the same columns with the same codecs (`codecs.py`)."""

from __future__ import annotations

import json
from typing import Any

from wacall.rules.engine import PermissionState
from wacall.store.base import EventRecord, Pair, Reservation, StoredCall
from wacall.store.codecs import from_micros, optional_datetime, optional_micros, to_micros

EVENT_COLUMNS = "cursor, business, user_number, kind, source, occurred_at, recorded_at, state_after, attributes"
CALL_COLUMNS = (
    "call_id, platform_call_id, business, user_number, direction, created_at, state, active, data, owner, "
    "lease_expires_at"
)
RESERVATION_COLUMNS = (
    "reservation_id, business, user_number, reserved_at, channel, state_before, idempotency_key, fingerprint, "
    "claimed_by, claimed_at"
)


def row_to_reservation(row: tuple[Any, ...]) -> Reservation:
    reservation_id, business, user, reserved_at, channel, state_before, key, fingerprint, claimed_by, claimed_at = row
    return Reservation(
        reservation_id=reservation_id,
        pair=Pair(business, user),
        reserved_at=from_micros(reserved_at),
        channel=channel,
        state_before=PermissionState(state_before),
        idempotency_key=key,
        fingerprint=fingerprint,
        claimed_by=claimed_by,
        claimed_at=optional_datetime(claimed_at),
    )


def row_to_call(row: tuple[Any, ...]) -> StoredCall:
    call_id, platform_call_id, business, user, direction, created_at, state, active, data, owner, lease_expires_at = row
    return StoredCall(
        call_id=call_id,
        pair=Pair(business, user),
        direction=direction,
        created_at=from_micros(created_at),
        state=state,
        data=json.loads(data),
        platform_call_id=platform_call_id,
        active=bool(active),
        owner=owner,
        lease_expires_at=optional_datetime(lease_expires_at),
    )


def row_to_event(row: tuple[Any, ...]) -> EventRecord:
    cursor, business, user, kind, source, occurred_at, recorded_at, state_after, attributes = row
    return EventRecord(
        pair=Pair(business, user),
        kind=kind,
        source=source,
        occurred_at=from_micros(occurred_at),
        recorded_at=from_micros(recorded_at),
        state_after=PermissionState(state_after),
        attributes=json.loads(attributes),
        cursor=cursor,
    )


def reservation_to_row(reservation: Reservation) -> tuple[Any, ...]:
    """The reservation as `RESERVATION_COLUMNS`' values: the inverse of `row_to_reservation`."""
    return (
        reservation.reservation_id,
        reservation.pair.business,
        reservation.pair.user,
        to_micros(reservation.reserved_at),
        reservation.channel,
        reservation.state_before.value,
        reservation.idempotency_key,
        reservation.fingerprint,
        reservation.claimed_by,
        optional_micros(reservation.claimed_at),
    )
