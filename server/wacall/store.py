"""The durable ledger: per-pair derived state plus an append-only event log, behind one small interface.

A `Store` runs a function inside one serialisable transaction (`await store.transaction(fn)`); the function gets a
`Tx` to read and write. Everything a decision needs (read the pair, decide with the engine, append events, save
the pair, remember the idempotency key or webhook id) happens inside one call, so limits hold under any number of
concurrent callers, and the commit happens before anybody is answered.

SQLite runs every transaction on one dedicated thread with `BEGIN IMMEDIATE` (WAL mode); a PostgreSQL store can
keep the same `Tx` shape with `SELECT ... FOR UPDATE` on the pair row.
"""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import json
import sqlite3
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

from wacall.engine import Ledger, PermissionState, Restriction
from wacall.policy import SEED

# A ledger stored before requests expired is read with the platform's request lifetime (§1.3).
LEGACY_REQUEST_LIFETIME = SEED.request_lifetime

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pair:
    business: str  # +E164
    user: str  # +E164


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One line of the audit log. `cursor` is assigned by the store."""

    pair: Pair
    kind: str
    source: str
    occurred_at: datetime
    recorded_at: datetime
    state_after: PermissionState
    attributes: Mapping[str, str] = field(default_factory=dict)
    cursor: int = 0


@dataclass(frozen=True, slots=True)
class IdempotentResult:
    business: str
    key: str
    fingerprint: str  # what was asked, so a reused key with different content is refused
    outcome: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Reservation:
    """A permission request whose limits are consumed but whose send is not settled yet.

    Written in the transaction that consumes the limits and removed in the one that settles the send, so a process
    killed in between leaves a record that recovery can find (with or without an idempotency key)."""

    reservation_id: str
    pair: Pair
    reserved_at: datetime  # also the request's time in the ledger's request_times
    channel: str
    state_before: PermissionState  # what a withdrawn request falls back to
    idempotency_key: str = ""
    fingerprint: str = ""
    # Who is settling it now (a recovery pass in some process), and since when.
    claimed_by: str = ""
    claimed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredCall:
    """A call row: identity, route and the call's facts as JSON (the call service owns their meaning)."""

    call_id: str
    pair: Pair
    direction: str
    created_at: datetime
    state: str
    data: Mapping[str, Any]
    platform_call_id: str | None = None
    active: bool = True


class Tx(Protocol):
    def ledger(self, pair: Pair) -> Ledger: ...

    def save_ledger(self, pair: Pair, ledger: Ledger, now: datetime) -> None: ...

    def append(self, event: EventRecord) -> int: ...

    def claim(self, key: str, now: datetime) -> bool:
        """Remember `key` (a webhook message id, say); False if it was already claimed."""
        ...

    def remember_message(self, message_id: str, pair: Pair, now: datetime) -> None:
        """Remember which pair one of our messages (a permission request) went to."""
        ...

    def message_pair(self, message_id: str) -> Pair | None: ...

    def message_sent_at(self, message_id: str) -> datetime | None:
        """When one of our messages (a permission request) was sent, if it is one of ours."""
        ...

    def remember_alias(self, wa_id: str, user: str) -> None:
        """The platform's wa_id for a user differs from the number we hold (HOOK-8): map it to our user."""
        ...

    def alias(self, wa_id: str) -> str | None: ...

    def idempotent_result(self, business: str, key: str) -> IdempotentResult | None: ...

    def save_idempotent_result(self, result: IdempotentResult, now: datetime) -> None: ...

    def keep_webhook(self, body: bytes, now: datetime) -> None:
        """Keep a verified webhook body as received, for audit and replay."""
        ...

    def save_call(self, call: StoredCall) -> None: ...

    def restriction(self, business: str) -> Restriction | None:
        """The business number's calling pause, if one is recorded (it may have ended already)."""
        ...

    def save_restriction(self, business: str, restriction: Restriction | None, now: datetime) -> None: ...

    def call(self, call_id: str) -> StoredCall | None: ...

    def call_by_platform_id(self, platform_call_id: str) -> StoredCall | None: ...

    def open_calls(self) -> list[StoredCall]:
        """Every call that has not ended."""
        ...

    def calls_with_platform_errors(self) -> list[StoredCall]:
        """Every call whose facts record at least one platform error code."""
        ...

    def active_call(self, pair: Pair) -> StoredCall | None:
        """The pair's call that has not ended, if any (at most one: the platform allows one)."""
        ...

    def park_call_event(self, platform_call_id: str, event: Mapping[str, Any], now: datetime) -> None:
        """Keep an event for a call id we do not know yet (its webhook beat our own record of it)."""
        ...

    def take_parked_call_events(self, platform_call_id: str) -> list[Mapping[str, Any]]: ...

    def save_reservation(self, reservation: Reservation) -> None: ...

    def reservation_for_key(self, business: str, idempotency_key: str) -> Reservation | None: ...

    def take_reservation(self, reservation_id: str, claimant: str = "") -> Reservation | None:
        """Remove and return the reservation; with `claimant`, only if that claimant holds it."""
        ...

    def claim_reservations(
        self,
        *,
        reserved_before: datetime,
        claims_expire_before: datetime,
        claimant: str,
        now: datetime,
        excluding: frozenset[str] = frozenset(),
    ) -> list[Reservation]:
        """Claim every reservation made at or before `reserved_before` that nobody holds (or whose claim was made at
        or before `claims_expire_before`), except `excluding`; returns what was claimed."""
        ...

    def save_setting(self, name: str, value: str) -> None:
        """Keep one small named value (e.g. the manual clock's position) across restarts."""
        ...

    def setting(self, name: str) -> str | None: ...

    def latest_recorded_at(self) -> datetime | None:
        """When the newest event was recorded (None: no events yet)."""
        ...

    def keep_refused_webhook(self, body: bytes, now: datetime, reason: str) -> None:
        """Keep a signed delivery that was refused (malformed, or timestamps that cannot be trusted), for audit."""
        ...

    def refused_webhooks(self) -> list[tuple[datetime, str, bytes]]:
        """Every refused delivery kept: (received at, reason, body), oldest first."""
        ...

    def wa_id_of(self, user: str) -> str | None:
        """The wa_id the platform last gave for one of our users, when it differs from the number (HOOK-8)."""
        ...


class Store(Protocol):
    async def transaction(self, fn: Callable[[Tx], T]) -> T: ...

    async def events_after(
        self, cursor: int, *, business: str | None = None, user: str | None = None, limit: int = 500
    ) -> list[EventRecord]: ...

    async def last_cursor(self) -> int: ...

    async def list_calls(
        self, *, business: str | None, user: str | None, before: tuple[int, str] | None, limit: int
    ) -> list[StoredCall]: ...

    async def close(self) -> None: ...


class StoreError(RuntimeError):
    pass


# --- serialisation ------------------------------------------------------------------------------------------------


def to_micros(value: datetime) -> int:
    return calendar.timegm(value.utctimetuple()) * 1_000_000 + value.microsecond


def from_micros(value: int) -> datetime:
    seconds, micros = divmod(value, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


def optional_micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def optional_datetime(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def ledger_to_json(ledger: Ledger) -> str:
    return json.dumps(
        {
            "state": ledger.state.value,
            "expires_at": optional_micros(ledger.expires_at),
            "state_changed_at": optional_micros(ledger.state_changed_at),
            "request_times": [to_micros(t) for t in ledger.request_times],
            "connected_call_times": [to_micros(t) for t in ledger.connected_call_times],
            "consecutive_unanswered": ledger.consecutive_unanswered,
            "last_connected_at": optional_micros(ledger.last_connected_at),
            "last_user_message_at": optional_micros(ledger.last_user_message_at),
            "request_expiries": [to_micros(t) for t in ledger.request_expiries],
            "state_before_request": ledger.state_before_request.value,
        },
        separators=(",", ":"),
    )


def ledger_from_json(text: str) -> Ledger:
    data: dict[str, Any] = json.loads(text)
    state = PermissionState(data["state"])
    if "request_expiries" in data:
        request_expiries = tuple(from_micros(t) for t in data["request_expiries"])
    else:
        # Written before requests expired: a REQUESTED pair's request lives the platform's 7 days from its last send.
        last_sent = data["request_times"][-1:] if state is PermissionState.REQUESTED else []
        request_expiries = tuple(from_micros(t) + LEGACY_REQUEST_LIFETIME for t in last_sent)
    return Ledger(
        state=state,
        expires_at=optional_datetime(data["expires_at"]),
        state_changed_at=optional_datetime(data["state_changed_at"]),
        request_times=tuple(from_micros(t) for t in data["request_times"]),
        connected_call_times=tuple(from_micros(t) for t in data["connected_call_times"]),
        consecutive_unanswered=data["consecutive_unanswered"],
        last_connected_at=optional_datetime(data["last_connected_at"]),
        last_user_message_at=optional_datetime(data["last_user_message_at"]),
        request_expiries=request_expiries,
        state_before_request=PermissionState(data.get("state_before_request", PermissionState.NONE.value)),
    )


# --- SQLite -------------------------------------------------------------------------------------------------------

# PRAGMA user_version of the schema below. Every time column holds microseconds since the epoch (UTC); version 0
# (databases from before the version was kept) used the same tables and units as version 1.
# Version 2: the user's column is `user_number` (`user` is a reserved word in PostgreSQL, where `WHERE user = ?`
# silently compares with the current role).
SCHEMA_VERSION = 2

# Tables that named the user's column `user` before version 2.
_USER_COLUMN_TABLES = ("pairs", "events", "messages", "aliases", "calls", "reservations")


def _rename_user_columns(db: sqlite3.Connection) -> None:
    """Version 0/1 → 2, in place (SQLite renames the column in its indexes too)."""
    for table in _USER_COLUMN_TABLES:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if "user" in columns:
            db.execute(f'ALTER TABLE {table} RENAME COLUMN "user" TO user_number')


SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    business TEXT NOT NULL,
    user_number TEXT NOT NULL,
    ledger TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (business, user_number)
);
CREATE TABLE IF NOT EXISTS events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    business TEXT NOT NULL,
    user_number TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    state_after TEXT NOT NULL,
    attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_pair ON events (business, user_number, cursor);
CREATE TABLE IF NOT EXISTS claimed_keys (
    key TEXT PRIMARY KEY,
    claimed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    business TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (business, key)
);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    business TEXT NOT NULL,
    user_number TEXT NOT NULL,
    sent_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS aliases (
    wa_id TEXT PRIMARY KEY,
    user_number TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    platform_call_id TEXT UNIQUE,
    business TEXT NOT NULL,
    user_number TEXT NOT NULL,
    direction TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    active INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_pair ON calls (business, user_number, created_at);
-- The platform allows one call at a time between a business number and a user (138003): so do we.
CREATE UNIQUE INDEX IF NOT EXISTS one_active_call_per_pair ON calls (business, user_number) WHERE active = 1;
CREATE TABLE IF NOT EXISTS parked_call_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    platform_call_id TEXT NOT NULL,
    parked_at INTEGER NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS restrictions (
    business TEXT PRIMARY KEY,
    until INTEGER,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT PRIMARY KEY,
    business TEXT NOT NULL,
    user_number TEXT NOT NULL,
    reserved_at INTEGER NOT NULL,
    channel TEXT NOT NULL,
    state_before TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    claimed_at INTEGER
);
CREATE INDEX IF NOT EXISTS reservations_by_time ON reservations (reserved_at);
CREATE INDEX IF NOT EXISTS reservations_by_key ON reservations (business, idempotency_key);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def ledger(self, pair: Pair) -> Ledger:
        row = self._db.execute(
            "SELECT ledger FROM pairs WHERE business = ? AND user_number = ?", (pair.business, pair.user)
        ).fetchone()
        return ledger_from_json(row[0]) if row else Ledger()

    def save_ledger(self, pair: Pair, ledger: Ledger, now: datetime) -> None:
        self._db.execute(
            "INSERT INTO pairs (business, user_number, ledger, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (business, user_number) DO UPDATE SET ledger = excluded.ledger, "
            "updated_at = excluded.updated_at",
            (pair.business, pair.user, ledger_to_json(ledger), to_micros(now)),
        )

    def append(self, event: EventRecord) -> int:
        cursor = self._db.execute(
            "INSERT INTO events (business, user_number, kind, source, occurred_at, recorded_at, state_after, "
            "attributes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.pair.business,
                event.pair.user,
                event.kind,
                event.source,
                to_micros(event.occurred_at),
                to_micros(event.recorded_at),
                event.state_after.value,
                json.dumps(dict(event.attributes), sort_keys=True),
            ),
        ).lastrowid
        assert cursor is not None
        return cursor

    def claim(self, key: str, now: datetime) -> bool:
        inserted = self._db.execute(
            "INSERT INTO claimed_keys (key, claimed_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (key, to_micros(now)),
        ).rowcount
        return inserted == 1

    def remember_message(self, message_id: str, pair: Pair, now: datetime) -> None:
        self._db.execute(
            "INSERT INTO messages (message_id, business, user_number, sent_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (message_id) DO NOTHING",
            (message_id, pair.business, pair.user, to_micros(now)),
        )

    def message_pair(self, message_id: str) -> Pair | None:
        row = self._db.execute(
            "SELECT business, user_number FROM messages WHERE message_id = ?", (message_id,)
        ).fetchone()
        return Pair(row[0], row[1]) if row else None

    def message_sent_at(self, message_id: str) -> datetime | None:
        row = self._db.execute("SELECT sent_at FROM messages WHERE message_id = ?", (message_id,)).fetchone()
        return from_micros(row[0]) if row else None

    def remember_alias(self, wa_id: str, user: str) -> None:
        self._db.execute(
            "INSERT INTO aliases (wa_id, user_number) VALUES (?, ?) "
            "ON CONFLICT (wa_id) DO UPDATE SET user_number = excluded.user_number",
            (wa_id, user),
        )

    def alias(self, wa_id: str) -> str | None:
        row = self._db.execute("SELECT user_number FROM aliases WHERE wa_id = ?", (wa_id,)).fetchone()
        return str(row[0]) if row else None

    def idempotent_result(self, business: str, key: str) -> IdempotentResult | None:
        row = self._db.execute(
            "SELECT fingerprint, outcome FROM idempotency WHERE business = ? AND key = ?", (business, key)
        ).fetchone()
        return IdempotentResult(business, key, row[0], json.loads(row[1])) if row else None

    def save_idempotent_result(self, result: IdempotentResult, now: datetime) -> None:
        self._db.execute(
            "INSERT INTO idempotency (business, key, fingerprint, outcome, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (business, key) DO UPDATE SET outcome = excluded.outcome",
            (result.business, result.key, result.fingerprint, json.dumps(dict(result.outcome)), to_micros(now)),
        )

    def keep_webhook(self, body: bytes, now: datetime) -> None:
        self._db.execute("INSERT INTO webhooks (received_at, body) VALUES (?, ?)", (to_micros(now), body))

    def restriction(self, business: str) -> Restriction | None:
        row = self._db.execute("SELECT until FROM restrictions WHERE business = ?", (business,)).fetchone()
        return Restriction(optional_datetime(row[0])) if row else None

    def save_restriction(self, business: str, restriction: Restriction | None, now: datetime) -> None:
        if restriction is None:
            self._db.execute("DELETE FROM restrictions WHERE business = ?", (business,))
            return
        self._db.execute(
            "INSERT INTO restrictions (business, until, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (business) DO UPDATE SET until = excluded.until, updated_at = excluded.updated_at",
            (business, optional_micros(restriction.until), to_micros(now)),
        )

    def save_call(self, call: StoredCall) -> None:
        self._db.execute(
            "INSERT INTO calls (call_id, platform_call_id, business, user_number, direction, created_at, state, "
            "active, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_id) DO UPDATE SET"
            " platform_call_id = excluded.platform_call_id, state = excluded.state, active = excluded.active,"
            " data = excluded.data",
            (
                call.call_id,
                call.platform_call_id,
                call.pair.business,
                call.pair.user,
                call.direction,
                to_micros(call.created_at),
                call.state,
                int(call.active),
                json.dumps(dict(call.data), sort_keys=True),
            ),
        )

    def _calls(self, where: str, params: tuple[Any, ...]) -> list[StoredCall]:
        rows = self._db.execute(
            "SELECT call_id, platform_call_id, business, user_number, direction, created_at, state, active, data "
            "FROM calls "
            f"WHERE {where}",
            params,
        ).fetchall()
        return [_row_to_call(row) for row in rows]

    def call(self, call_id: str) -> StoredCall | None:
        found = self._calls("call_id = ?", (call_id,))
        return found[0] if found else None

    def call_by_platform_id(self, platform_call_id: str) -> StoredCall | None:
        found = self._calls("platform_call_id = ?", (platform_call_id,))
        return found[0] if found else None

    def open_calls(self) -> list[StoredCall]:
        return self._calls("active = 1", ())

    def calls_with_platform_errors(self) -> list[StoredCall]:
        return self._calls("json_array_length(data, '$.facts.error_codes') > 0", ())

    def active_call(self, pair: Pair) -> StoredCall | None:
        found = self._calls("business = ? AND user_number = ? AND active = 1", (pair.business, pair.user))
        return found[0] if found else None

    def park_call_event(self, platform_call_id: str, event: Mapping[str, Any], now: datetime) -> None:
        self._db.execute(
            "INSERT INTO parked_call_events (platform_call_id, parked_at, event) VALUES (?, ?, ?)",
            (platform_call_id, to_micros(now), json.dumps(dict(event))),
        )

    def take_parked_call_events(self, platform_call_id: str) -> list[Mapping[str, Any]]:
        rows = self._db.execute(
            "DELETE FROM parked_call_events WHERE platform_call_id = ? RETURNING id, event", (platform_call_id,)
        ).fetchall()
        return [json.loads(event) for _, event in sorted(rows)]

    def save_reservation(self, reservation: Reservation) -> None:
        self._db.execute(
            f"INSERT INTO reservations ({RESERVATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
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
            ),
        )

    def reservation_for_key(self, business: str, idempotency_key: str) -> Reservation | None:
        row = self._db.execute(
            f"SELECT {RESERVATION_COLUMNS} FROM reservations WHERE business = ? AND idempotency_key = ?",
            (business, idempotency_key),
        ).fetchone()
        return _row_to_reservation(row) if row else None

    def take_reservation(self, reservation_id: str, claimant: str = "") -> Reservation | None:
        held = " AND claimed_by = ?" if claimant else ""
        row = self._db.execute(
            f"DELETE FROM reservations WHERE reservation_id = ?{held} RETURNING {RESERVATION_COLUMNS}",
            (reservation_id, claimant) if claimant else (reservation_id,),
        ).fetchone()
        return _row_to_reservation(row) if row else None

    def claim_reservations(
        self,
        *,
        reserved_before: datetime,
        claims_expire_before: datetime,
        claimant: str,
        now: datetime,
        excluding: frozenset[str] = frozenset(),
    ) -> list[Reservation]:
        rows = self._db.execute(
            f"SELECT {RESERVATION_COLUMNS} FROM reservations WHERE reserved_at <= ? "
            "AND (claimed_at IS NULL OR claimed_at <= ?) ORDER BY reserved_at",
            (to_micros(reserved_before), to_micros(claims_expire_before)),
        ).fetchall()
        claimed = []
        for row in rows:
            reservation = _row_to_reservation(row)
            if reservation.reservation_id in excluding:
                continue
            self._db.execute(
                "UPDATE reservations SET claimed_by = ?, claimed_at = ? WHERE reservation_id = ?",
                (claimant, to_micros(now), reservation.reservation_id),
            )
            claimed.append(dataclasses.replace(reservation, claimed_by=claimant, claimed_at=now))
        return claimed

    def save_setting(self, name: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def setting(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def latest_recorded_at(self) -> datetime | None:
        row = self._db.execute("SELECT MAX(recorded_at) FROM events").fetchone()
        return optional_datetime(row[0])

    # Created on first use: refused deliveries are rare, and the table stays apart from the ledger's schema.
    _REFUSED_WEBHOOKS = (
        "CREATE TABLE IF NOT EXISTS refused_webhooks ("
        "id INTEGER PRIMARY KEY AUTOINCREMENT, received_at INTEGER NOT NULL, reason TEXT NOT NULL, body BLOB NOT NULL)"
    )

    def keep_refused_webhook(self, body: bytes, now: datetime, reason: str) -> None:
        self._db.execute(self._REFUSED_WEBHOOKS)
        self._db.execute(
            "INSERT INTO refused_webhooks (received_at, reason, body) VALUES (?, ?, ?)",
            (to_micros(now), reason, body),
        )

    def refused_webhooks(self) -> list[tuple[datetime, str, bytes]]:
        self._db.execute(self._REFUSED_WEBHOOKS)
        rows = self._db.execute("SELECT received_at, reason, body FROM refused_webhooks ORDER BY id").fetchall()
        return [(from_micros(at), str(reason), bytes(body)) for at, reason, body in rows]

    def wa_id_of(self, user: str) -> str | None:
        row = self._db.execute(
            "SELECT wa_id FROM aliases WHERE user_number = ? ORDER BY rowid DESC LIMIT 1", (user,)
        ).fetchone()
        return str(row[0]) if row else None


RESERVATION_COLUMNS = (
    "reservation_id, business, user_number, reserved_at, channel, state_before, idempotency_key, fingerprint, "
    "claimed_by, claimed_at"
)


def _row_to_reservation(row: tuple[Any, ...]) -> Reservation:
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


def _row_to_call(row: tuple[Any, ...]) -> StoredCall:
    call_id, platform_call_id, business, user, direction, created_at, state, active, data = row
    return StoredCall(
        call_id=call_id,
        pair=Pair(business, user),
        direction=direction,
        created_at=from_micros(created_at),
        state=state,
        data=json.loads(data),
        platform_call_id=platform_call_id,
        active=bool(active),
    )


def _row_to_event(row: tuple[Any, ...]) -> EventRecord:
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


class SqliteStore:
    """SQLite in WAL mode; all access on one thread, so each transaction is serialised and atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wacall-sqlite")
        self._thread_db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        try:
            self._executor.submit(self._open).result()
        except BaseException:
            self._executor.shutdown(wait=True)
            raise

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives power loss before we acknowledge it.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise StoreError(
                f"{self.path} has schema version {version}; this wacall reads up to {SCHEMA_VERSION}: upgrade wacall"
            )
        if version < 2:
            # One transaction: another process opening the same file waits, then finds the columns renamed.
            db.execute("BEGIN IMMEDIATE")
            _rename_user_columns(db)
            db.execute("COMMIT")
        db.executescript(SCHEMA)
        if version < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._thread_db = db

    def _run(self, fn: Callable[[Tx], T]) -> T:
        db = self._thread_db
        if db is None:
            raise StoreError("the store is closed")
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(_SqliteTx(db))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def transaction(self, fn: Callable[[Tx], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn)

    def _events_after(self, cursor: int, business: str | None, user: str | None, limit: int) -> list[EventRecord]:
        assert self._thread_db is not None
        clauses, params = ["cursor > ?"], [cursor]
        if business:
            clauses.append("business = ?")
            params.append(business)  # type: ignore[arg-type]
        if user:
            clauses.append("user_number = ?")
            params.append(user)  # type: ignore[arg-type]
        rows = self._thread_db.execute(
            "SELECT cursor, business, user_number, kind, source, occurred_at, recorded_at, state_after, attributes "
            f"FROM events WHERE {' AND '.join(clauses)} ORDER BY cursor LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [_row_to_event(row) for row in rows]

    async def events_after(
        self, cursor: int, *, business: str | None = None, user: str | None = None, limit: int = 500
    ) -> list[EventRecord]:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._events_after, cursor, business, user, limit
        )

    async def list_calls(
        self, *, business: str | None, user: str | None, before: tuple[int, str] | None, limit: int
    ) -> list[StoredCall]:
        """Newest first; `before` is the (created_at micros, call_id) of the last call of the previous page."""

        def read() -> list[StoredCall]:
            clauses: list[str] = ["1 = 1"]
            params: list[Any] = []
            if business:
                clauses.append("business = ?")
                params.append(business)
            if user:
                clauses.append("user_number = ?")
                params.append(user)
            if before:
                clauses.append("(created_at, call_id) < (?, ?)")
                params.extend([before[0], before[1]])
            assert self._thread_db is not None
            rows = self._thread_db.execute(
                "SELECT call_id, platform_call_id, business, user_number, direction, created_at, state, active, data "
                f"FROM calls WHERE {' AND '.join(clauses)} ORDER BY created_at DESC, call_id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [_row_to_call(row) for row in rows]

        return await asyncio.get_running_loop().run_in_executor(self._executor, read)

    async def last_cursor(self) -> int:
        def read() -> int:
            assert self._thread_db is not None
            row = self._thread_db.execute("SELECT COALESCE(MAX(cursor), 0) FROM events").fetchone()
            return int(row[0])

        return await asyncio.get_running_loop().run_in_executor(self._executor, read)

    async def close(self) -> None:
        def shut() -> None:
            if self._thread_db is not None:
                self._thread_db.close()
                self._thread_db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


def open_store(url: str) -> Store:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        if not path:
            raise StoreError(f"no database file in {url!r}; use sqlite:///var/wacall.db")
        return SqliteStore(Path(path))
    if parsed.scheme in ("postgres", "postgresql"):
        raise StoreError("PostgreSQL is not supported yet; use sqlite:///var/wacall.db")
    raise StoreError(f"unsupported database URL {url!r}; use sqlite:///var/wacall.db")
