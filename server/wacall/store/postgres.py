"""The PostgreSQL backend: several processes (replicas) on one database, writers side by side.

**Driver: psycopg 3, synchronous connections from a `psycopg_pool.ConnectionPool`.** The `Tx` interface is
synchronous on purpose (a rule decision cannot await the network half way through a transaction), so each
transaction runs `fn` on a worker thread holding one pooled connection, as SQLite's store runs it on its thread; the
pool and the thread pool have the same size. asyncpg is async-only: it would need the `Tx` to become async.

**Isolation: READ COMMITTED, and every read that a decision depends on locks what it read** (strict two-phase
locking: locks are held to the commit, so transactions are serialisable for everything the services read and then
write). A pair's ledger and its call in progress take the pair's lock, idempotency keys the (business, key) lock,
a pause the business's (shared to read it, as every decision of the business does; exclusive to write it),
settings their name's, the router state the router's: transaction-scoped advisory locks on a 64-bit hash of the
name (a collision only makes two unrelated transactions wait for each other). A call read by id is locked `FOR
UPDATE`; reservations are claimed `FOR UPDATE SKIP LOCKED`; expired calls with `UPDATE … RETURNING` (whose re-check
of the row under lock makes the claim exclusive); a key with `INSERT … ON CONFLICT DO NOTHING`. Deadlocks and
serialisation failures roll back and run `fn` again from scratch (base.py allows it), a bounded number of times
with a little jitter.

**Event cursors in commit order without serialising writers: reads stop below the snapshot horizon.** An event's
cursor is `(transaction id << 20) + its index in the transaction`: unique, below 2**63, known at insert (so
`append` returns it), and every transaction's events adjacent. A reader returns only events whose transaction id
is below `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still running when it reads: every
transaction with a smaller id has ended, so no event below the horizon can still appear, and anything that can
still commit has a larger id, hence a larger cursor than anything returned. A reader resuming after its last cursor
therefore never skips a late commit. The price: an event becomes readable once every writing transaction that began
writing before it has ended (a long-running writer anywhere on the cluster delays readers, it never misleads them).
A read that saw committed events held back by the horizon wakes `changes` again shortly, so a watcher re-reads then
instead of at its next poll.

**Notify:** after a transaction that appended events or saved calls commits, its connection runs `NOTIFY
wacall_changes` in a transaction of its own (not inside the transaction: see `_notify_others`). Each store LISTENs
on its own connection, on its own thread, and wakes `changes` (also once after every reconnection, so readers
re-poll whatever they may have missed).

**An unreachable database** is `StoreUnavailable`, never a hang: connecting, checking a connection out of the pool
and every statement have time limits. A connection that broke is discarded and the pool reconnects by itself; a
transaction whose connection broke before its commit is run again on another connection (nothing of it was kept),
while one that broke during its commit is `StoreUnavailable` (its outcome is unknown, the caller retries with its
idempotency key).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from wacall.rules.engine import Ledger, Restriction
from wacall.store.base import (
    CallInProgress,
    ChangeNotifier,
    EventRecord,
    IdempotentResult,
    Pair,
    Replica,
    Reservation,
    Store,
    StoredCall,
    StoreError,
    StoreUnavailable,
    T,
    Tx,
)
from wacall.store.codecs import (
    from_micros,
    ledger_from_json,
    ledger_to_json,
    optional_datetime,
    optional_micros,
    to_micros,
)
from wacall.store.postgres_schema import migrate_postgres
from wacall.store.rows import (
    CALL_COLUMNS,
    EVENT_COLUMNS,
    RESERVATION_COLUMNS,
    reservation_to_row,
    row_to_call,
    row_to_event,
    row_to_reservation,
)

log = logging.getLogger(__name__)

Connection = psycopg.Connection[tuple[Any, ...]]

# URL schemes this backend opens.
POSTGRES_SCHEMES = ("postgresql", "postgres")
# The errors of this backend's driver: what the store's metrics count as database failures.
DRIVER_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, PoolTimeout)
CHANNEL = "wacall_changes"
# Bits of a cursor that number the events of one transaction.
EVENT_INDEX_BITS = 20
# The horizon as a cursor: events of transactions below the oldest one still running.
HORIZON = f"(pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {EVENT_INDEX_BITS})"


@dataclasses.dataclass(frozen=True, slots=True)
class PostgresOptions:
    """Time limits and sizes. Each is short enough that no store call hangs while the database is away."""

    pool_size: int = 4
    connect_timeout_seconds: int = 3
    checkout_timeout_seconds: float = 4.0
    statement_timeout_ms: int = 5000
    reconnect_give_up_seconds: float = 2.0
    # Deadlocks and serialisation failures: how many runs of `fn` in all.
    attempts: int = 10
    # A read held back by the horizon wakes the event watchers again after this long, doubling (up to the maximum)
    # while the horizon stays stuck behind the same old transaction.
    horizon_recheck_seconds: float = 0.02
    horizon_recheck_max_seconds: float = 1.0
    # A store call that holds a connection longer than this is given up: its connection is cut (so its worker is
    # free again) and the caller gets StoreUnavailable. Longer than any one statement (statement_timeout).
    call_limit_seconds: float = 6.0
    # libpq's TCP keepalives and user timeout: a peer that went dark is noticed on every connection.
    keepalive_idle_seconds: int = 5
    keepalive_interval_seconds: int = 2
    keepalive_count: int = 3


class _PostgresTx:
    """One transaction's reads and writes, on one worker thread and one pooled connection."""

    def __init__(self, db: Connection, *, snapshot: bool = False) -> None:
        self._db = db
        # A snapshot read (`Store.read`): REPEATABLE READ, READ ONLY; it decides nothing, so it locks nothing.
        self._snapshot = snapshot
        # Events or calls written: other stores and this process's listeners are told after the commit.
        self.wrote_changes = False
        self._xid: int | None = None
        self._now: datetime | None = None
        self._held: dict[str, bool] = {}  # the advisory locks this transaction holds: name → shared
        self._events = 0

    def _one(self, query: Any, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        return self._db.execute(query, params).fetchone()

    def _lock(self, *name: str, shared: bool = False) -> None:
        # Held until commit or rollback, so taken once per transaction (a shared one may become exclusive); the
        # name's parts are joined with a separator no E.164 number contains. A statement of its own: READ
        # COMMITTED takes each statement's snapshot when it starts, so a read in the lock's own statement would
        # miss what the lock's previous holder committed while this one waited.
        if self._snapshot:
            return
        key = "\x1f".join(name)
        held = self._held.get(key)
        if held is False or (held is True and shared):
            return
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        self._db.execute(f"SELECT {function}(hashtextextended(%s, 0))", (key,))
        self._held[key] = shared

    def _lock_pair(self, pair: Pair) -> None:
        self._lock("pair", pair.business, pair.user)

    def ledger(self, pair: Pair) -> Ledger:
        self._lock_pair(pair)
        row = self._one("SELECT ledger FROM pairs WHERE business = %s AND user_number = %s", (pair.business, pair.user))
        return ledger_from_json(row[0]) if row else Ledger()

    def save_ledger(self, pair: Pair, ledger: Ledger, now: datetime) -> None:
        self._lock_pair(pair)
        self._db.execute(
            "INSERT INTO pairs (business, user_number, ledger, updated_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (business, user_number) DO UPDATE SET ledger = excluded.ledger, "
            "updated_at = excluded.updated_at",
            (pair.business, pair.user, ledger_to_json(ledger), to_micros(now)),
        )

    def append(self, event: EventRecord) -> int:
        if self._xid is None:
            row = self._one("SELECT pg_current_xact_id()::text::bigint")
            assert row is not None
            self._xid = int(row[0])
        if self._events >= 1 << EVENT_INDEX_BITS:
            raise StoreError(f"one transaction appends at most {1 << EVENT_INDEX_BITS} events")
        cursor = (self._xid << EVENT_INDEX_BITS) + self._events
        self._events += 1
        self.wrote_changes = True
        self._db.execute(
            "INSERT INTO events (cursor, xid, business, user_number, kind, source, occurred_at, recorded_at, "
            "state_after, attributes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                cursor,
                self._xid,
                event.pair.business,
                event.pair.user,
                event.kind,
                event.source,
                to_micros(event.occurred_at),
                to_micros(event.recorded_at),
                event.state_after.value,
                json.dumps(dict(event.attributes), sort_keys=True),
            ),
        )
        return cursor

    def claim(self, key: str, now: datetime) -> bool:
        inserted = self._db.execute(
            "INSERT INTO claimed_keys (key, claimed_at) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
            (key, to_micros(now)),
        ).rowcount
        return inserted == 1

    def remember_message(self, message_id: str, pair: Pair, now: datetime) -> None:
        self._db.execute(
            "INSERT INTO messages (message_id, business, user_number, sent_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (message_id) DO NOTHING",
            (message_id, pair.business, pair.user, to_micros(now)),
        )

    def message_pair(self, message_id: str) -> Pair | None:
        row = self._one("SELECT business, user_number FROM messages WHERE message_id = %s", (message_id,))
        return Pair(row[0], row[1]) if row else None

    def message_sent_at(self, message_id: str) -> datetime | None:
        row = self._one("SELECT sent_at FROM messages WHERE message_id = %s", (message_id,))
        return from_micros(row[0]) if row else None

    def remember_alias(self, wa_id: str, user: str) -> None:
        self._db.execute(
            "INSERT INTO aliases (wa_id, user_number) VALUES (%s, %s) "
            "ON CONFLICT (wa_id) DO UPDATE SET user_number = excluded.user_number",
            (wa_id, user),
        )

    def alias(self, wa_id: str) -> str | None:
        row = self._one("SELECT user_number FROM aliases WHERE wa_id = %s", (wa_id,))
        return str(row[0]) if row else None

    def wa_id_of(self, user: str) -> str | None:
        row = self._one("SELECT wa_id FROM aliases WHERE user_number = %s ORDER BY id DESC LIMIT 1", (user,))
        return str(row[0]) if row else None

    def idempotent_result(self, business: str, key: str) -> IdempotentResult | None:
        self._lock("idempotency", business, key)
        row = self._one(
            "SELECT fingerprint, outcome FROM idempotency WHERE business = %s AND key = %s", (business, key)
        )
        return IdempotentResult(business, key, row[0], json.loads(row[1])) if row else None

    def save_idempotent_result(self, result: IdempotentResult, now: datetime) -> None:
        self._lock("idempotency", result.business, result.key)
        self._db.execute(
            "INSERT INTO idempotency (business, key, fingerprint, outcome, created_at) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (business, key) DO UPDATE SET outcome = excluded.outcome",
            (result.business, result.key, result.fingerprint, json.dumps(dict(result.outcome)), to_micros(now)),
        )

    def keep_webhook(self, body: bytes, now: datetime) -> None:
        self._db.execute("INSERT INTO webhooks (received_at, body) VALUES (%s, %s)", (to_micros(now), body))

    def keep_refused_webhook(self, body: bytes, now: datetime, reason: str) -> None:
        self._db.execute(
            "INSERT INTO refused_webhooks (received_at, reason, body) VALUES (%s, %s, %s)",
            (to_micros(now), reason, body),
        )

    def refused_webhooks(self) -> list[tuple[datetime, str, bytes]]:
        rows = self._db.execute("SELECT received_at, reason, body FROM refused_webhooks ORDER BY id").fetchall()
        return [(from_micros(at), str(reason), bytes(body)) for at, reason, body in rows]

    def restriction(self, business: str) -> Restriction | None:
        # Shared: every decision of the business reads its pause, and they must not wait for each other; a write of
        # the pause (exclusive) waits for them, and they for it.
        self._lock("restriction", business, shared=True)
        row = self._one("SELECT until FROM restrictions WHERE business = %s", (business,))
        return Restriction(optional_datetime(row[0])) if row else None

    def save_restriction(self, business: str, restriction: Restriction | None, now: datetime) -> None:
        self._lock("restriction", business)
        if restriction is None:
            self._db.execute("DELETE FROM restrictions WHERE business = %s", (business,))
            return
        self._db.execute(
            "INSERT INTO restrictions (business, until, updated_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (business) DO UPDATE SET until = excluded.until, updated_at = excluded.updated_at",
            (business, optional_micros(restriction.until), to_micros(now)),
        )

    def save_call(self, call: StoredCall) -> None:
        # The pair's lock first, as a decision about the pair takes it: the check below cannot race another store.
        other = self.active_call(call.pair)
        if call.active and other is not None and other.call_id != call.call_id:
            raise CallInProgress(f"{call.pair.business}/{call.pair.user} already has call {other.call_id}")
        self.wrote_changes = True
        try:
            self._db.execute(
                # The owner and its lease are written once; renew_call_leases and claim_expired_calls change them.
                f"INSERT INTO calls ({CALL_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (call_id) DO UPDATE SET platform_call_id = excluded.platform_call_id, "
                "state = excluded.state, active = excluded.active, data = excluded.data",
                (
                    call.call_id,
                    call.platform_call_id,
                    call.pair.business,
                    call.pair.user,
                    call.direction,
                    to_micros(call.created_at),
                    call.state,
                    call.active,
                    json.dumps(dict(call.data), sort_keys=True),
                    call.owner,
                    optional_micros(call.lease_expires_at),
                ),
            )
        except psycopg.errors.UniqueViolation as error:
            # The partial unique index is the backstop of the check above.
            if error.diag.constraint_name == "one_active_call_per_pair":
                raise CallInProgress(f"{call.pair.business}/{call.pair.user} already has a call") from error
            raise

    def _calls(self, where: str, params: tuple[Any, ...], lock: bool = False) -> list[StoredCall]:
        rows = self._db.execute(
            f"SELECT {CALL_COLUMNS} FROM calls WHERE {where} ORDER BY created_at, call_id"
            + (" FOR UPDATE" if lock and not self._snapshot else ""),
            params,
        ).fetchall()
        return [row_to_call(row) for row in rows]

    def _lock_call(self, where: str, params: tuple[Any, ...]) -> StoredCall | None:
        # Lock order: a call's pair, then its row, everywhere (the ledger and `active_call` take the pair's lock, so
        # a transaction that locked the row first and then needed the pair could deadlock with one doing the
        # reverse). A call's pair never changes, so an unlocked look-up of it is enough to know which lock to take.
        if not self._snapshot:
            row = self._one(f"SELECT business, user_number FROM calls WHERE {where}", params)
            if row is None:
                return None
            self._lock_pair(Pair(row[0], row[1]))
        found = self._calls(where, params, lock=True)
        return found[0] if found else None

    def call(self, call_id: str) -> StoredCall | None:
        return self._lock_call("call_id = %s", (call_id,))

    def call_by_platform_id(self, platform_call_id: str) -> StoredCall | None:
        # A webhook that finds no call parks its event; the call's binding takes the parked events. Both hold this
        # lock first, so each sees the other's commit: no event is parked after its call took the parked ones.
        self._lock("platform_call", platform_call_id)
        return self._lock_call("platform_call_id = %s", (platform_call_id,))

    def open_calls(self) -> list[StoredCall]:
        return self._calls("active", ())

    def calls_with_platform_errors(self) -> list[StoredCall]:
        return self._calls(
            "jsonb_typeof(data::jsonb -> 'facts' -> 'error_codes') = 'array' "
            "AND jsonb_array_length(data::jsonb -> 'facts' -> 'error_codes') > 0",
            (),
        )

    def active_call(self, pair: Pair) -> StoredCall | None:
        self._lock_pair(pair)
        found = self._calls("business = %s AND user_number = %s AND active", (pair.business, pair.user))
        return found[0] if found else None

    def store_now(self) -> datetime:
        # The server's clock, shared by every replica (theirs may disagree); once per transaction.
        if self._now is None:
            row = self._one("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
            assert row is not None
            self._now = from_micros(int(row[0]))
        return self._now

    def renew_call_leases(self, owner: str, until: datetime) -> int:
        return self._db.execute(
            "UPDATE calls SET lease_expires_at = %s WHERE owner = %s AND active", (to_micros(until), owner)
        ).rowcount

    def claim_expired_calls(self, *, claimant: str, now: datetime, lease_until: datetime) -> list[StoredCall]:
        # The pairs' locks first (pair before row, as everywhere), in one order so that two claimants cannot
        # deadlock. Another store's concurrent claim locks the same rows first; READ COMMITTED then re-checks the
        # WHERE on the row as that claim left it (owned, lease in the future), so each call is claimed once.
        candidates = self._db.execute(
            "SELECT DISTINCT business, user_number FROM calls WHERE active AND owner != %s "
            "AND (lease_expires_at IS NULL OR lease_expires_at <= %s) ORDER BY business, user_number",
            (claimant, to_micros(now)),
        ).fetchall()
        for business, user in candidates:
            self._lock_pair(Pair(business, user))
        rows = self._db.execute(
            # Only on the pairs locked above: a call that expired since is the next pass's.
            f"UPDATE calls SET owner = %s, lease_expires_at = %s WHERE active AND owner != %s "
            f"AND (lease_expires_at IS NULL OR lease_expires_at <= %s) "
            f"AND (business || chr(31) || user_number) = ANY(%s) RETURNING {CALL_COLUMNS}",
            (claimant, to_micros(lease_until), claimant, to_micros(now), [f"{b}\x1f{u}" for b, u in candidates]),
        ).fetchall()
        return sorted((row_to_call(row) for row in rows), key=lambda c: (c.created_at, c.call_id))

    def save_replica(self, replica: Replica) -> None:
        self._db.execute(
            "INSERT INTO replicas (instance, address, heartbeat_expires_at) VALUES (%s, %s, %s) ON CONFLICT (instance)"
            " DO UPDATE SET address = excluded.address, heartbeat_expires_at = excluded.heartbeat_expires_at",
            (replica.instance, replica.address, to_micros(replica.heartbeat_expires_at)),
        )

    def replica(self, instance: str) -> Replica | None:
        row = self._one("SELECT instance, address, heartbeat_expires_at FROM replicas WHERE instance = %s", (instance,))
        return Replica(row[0], row[1], from_micros(row[2])) if row else None

    def forget_replicas(self, heartbeat_before: datetime) -> int:
        return self._db.execute(
            "DELETE FROM replicas WHERE heartbeat_expires_at < %s", (to_micros(heartbeat_before),)
        ).rowcount

    def park_call_event(self, platform_call_id: str, event: Mapping[str, Any], now: datetime) -> None:
        self._db.execute(
            "INSERT INTO parked_call_events (platform_call_id, parked_at, event) VALUES (%s, %s, %s)",
            (platform_call_id, to_micros(now), json.dumps(dict(event))),
        )

    def take_parked_call_events(self, platform_call_id: str) -> list[Mapping[str, Any]]:
        self._lock("platform_call", platform_call_id)
        rows = self._db.execute(
            "DELETE FROM parked_call_events WHERE platform_call_id = %s RETURNING id, event", (platform_call_id,)
        ).fetchall()
        return [json.loads(event) for _, event in sorted(rows)]

    def save_reservation(self, reservation: Reservation) -> None:
        self._db.execute(
            f"INSERT INTO reservations ({RESERVATION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            reservation_to_row(reservation),
        )

    def reservation_for_key(self, business: str, idempotency_key: str) -> Reservation | None:
        row = self._one(
            f"SELECT {RESERVATION_COLUMNS} FROM reservations WHERE business = %s AND idempotency_key = %s"
            + ("" if self._snapshot else " FOR UPDATE"),
            (business, idempotency_key),
        )
        return row_to_reservation(row) if row else None

    def take_reservation(self, reservation_id: str, claimant: str = "") -> Reservation | None:
        held = " AND claimed_by = %s" if claimant else ""
        row = self._one(
            f"DELETE FROM reservations WHERE reservation_id = %s{held} RETURNING {RESERVATION_COLUMNS}",
            (reservation_id, claimant) if claimant else (reservation_id,),
        )
        return row_to_reservation(row) if row else None

    def claim_reservations(
        self,
        *,
        reserved_before: datetime,
        claims_expire_before: datetime,
        claimant: str,
        now: datetime,
        excluding: frozenset[str] = frozenset(),
    ) -> list[Reservation]:
        # SKIP LOCKED: a reservation another store is claiming or settling right now is its business.
        rows = self._db.execute(
            f"SELECT {RESERVATION_COLUMNS} FROM reservations WHERE reserved_at <= %s "
            "AND (claimed_at IS NULL OR claimed_at <= %s) AND NOT (reservation_id = ANY(%s)) "
            "ORDER BY reserved_at FOR UPDATE SKIP LOCKED",
            (to_micros(reserved_before), to_micros(claims_expire_before), sorted(excluding)),
        ).fetchall()
        claimed = [row_to_reservation(row) for row in rows]
        if claimed:
            self._db.execute(
                "UPDATE reservations SET claimed_by = %s, claimed_at = %s WHERE reservation_id = ANY(%s)",
                (claimant, to_micros(now), [r.reservation_id for r in claimed]),
            )
        return [dataclasses.replace(r, claimed_by=claimant, claimed_at=now) for r in claimed]

    def save_setting(self, name: str, value: str) -> None:
        self._lock("setting", name)
        self._db.execute(
            "INSERT INTO settings (name, value) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def setting(self, name: str) -> str | None:
        self._lock("setting", name)
        row = self._one("SELECT value FROM settings WHERE name = %s", (name,))
        return str(row[0]) if row else None

    def latest_recorded_at(self) -> datetime | None:
        row = self._one("SELECT MAX(recorded_at) FROM events")
        return optional_datetime(row[0] if row else None)

    def router_version(self) -> int:
        self._lock("router")
        row = self._one("SELECT version FROM router_state WHERE id = 1")
        return int(row[0]) if row else 0

    def router_state(self) -> tuple[int, str] | None:
        self._lock("router")
        row = self._one("SELECT version, state FROM router_state WHERE id = 1")
        return (int(row[0]), str(row[1])) if row else None

    def save_router_state(self, state: str) -> int:
        version = self.router_version() + 1
        self._db.execute(
            "INSERT INTO router_state (id, version, state) VALUES (1, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET version = excluded.version, state = excluded.state",
            (version, state),
        )
        return version


# Errors after which the same transaction may simply run again: it was rolled back whole.
_RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


class _RunAgain(Exception):
    """The connection broke before the commit: nothing was kept, run the transaction again on another one."""


class _InFlight:
    """One store call holding a connection, watched by the store's watchdog: past its limit, its connection's
    socket is shut down, so a worker blocked on a database that stopped answering (no RST: a partition, a frozen
    host) gets an error at once instead of after TCP's retries (minutes)."""

    __slots__ = ("cut", "db", "deadline")

    def __init__(self, db: Connection, deadline: float) -> None:
        self.db = db
        self.deadline = deadline
        self.cut = False

    def cut_off(self) -> None:
        self.cut = True
        try:
            fd = self.db.pgconn.socket
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):
            pass  # already closed: the worker has its error


class PostgresStore:
    """A pool of connections to one PostgreSQL database; see the module's docstring for what it locks and why."""

    def __init__(self, url: str, options: PostgresOptions | None = None) -> None:
        self.url = url
        self.options = options = options or PostgresOptions()
        self.changes = ChangeNotifier()
        self._where = redacted(url)
        self._conninfo = url
        self._connect_options: dict[str, Any] = {
            "connect_timeout": options.connect_timeout_seconds,
            "options": f"-c statement_timeout={options.statement_timeout_ms}",
            "application_name": "wacall",
            # The server's statement_timeout cannot fire when the server is unreachable: the client notices a
            # silent peer itself (keepalives while idle, unacknowledged data past tcp_user_timeout while busy).
            "keepalives": 1,
            "keepalives_idle": options.keepalive_idle_seconds,
            "keepalives_interval": options.keepalive_interval_seconds,
            "keepalives_count": options.keepalive_count,
            "tcp_user_timeout": options.statement_timeout_ms + 2000,
        }
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: threading.Thread | None = None
        self._stop_listening = threading.Event()
        self._recheck_pending = False
        self._recheck_delay = options.horizon_recheck_seconds
        self._in_flight: dict[int, _InFlight] = {}
        self._in_flight_lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        try:
            with psycopg.connect(url, autocommit=True, **self._connect_options) as db:
                migrate_postgres(db, self._where)
            self._first_listening: Connection | None = self._listening_connection()
        except psycopg.OperationalError as error:
            raise StoreUnavailable(f"cannot reach the database {self._where}: {error}") from error
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            url,
            kwargs=self._connect_options,
            min_size=options.pool_size,
            max_size=options.pool_size,
            timeout=options.checkout_timeout_seconds,
            # The pool backs off exponentially while it reconnects a slot; giving the slot up soon and growing again
            # on demand (at once) keeps the wait after an outage short.
            reconnect_timeout=options.reconnect_give_up_seconds,
            max_lifetime=3600,
            name="wacall",
            # A connection goes back in a transaction (or in autocommit, after a NOTIFY that failed half way):
            # the pool discards it rather than hand the next transaction a connection that commits per statement.
            reset=_check_reset,
            open=True,
        )
        self._executor = ThreadPoolExecutor(max_workers=options.pool_size, thread_name_prefix="wacall-postgres")
        # `transaction(priority=True)` (lease renewal): its own connection and thread, never behind client traffic.
        self._priority_pool: ConnectionPool[Connection] = ConnectionPool(
            url,
            kwargs=self._connect_options,
            min_size=1,
            max_size=1,
            timeout=options.checkout_timeout_seconds,
            reconnect_timeout=options.reconnect_give_up_seconds,
            max_lifetime=3600,
            name="wacall-priority",
            reset=_check_reset,
            open=True,
        )
        self._priority_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wacall-postgres-priority")
        self._watchdog = threading.Thread(target=self._watch_in_flight, name="wacall-postgres-watchdog", daemon=True)
        self._watchdog.start()
        self._listen_if_running()

    # --- the time limit of a store call ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self, priority: bool = False) -> Iterator[tuple[Connection, _InFlight]]:
        """A pooled connection for one store call, under the call's time limit (see `_InFlight`)."""
        with (self._priority_pool if priority else self._pool).connection() as db:
            watched = _InFlight(db, time.monotonic() + self.options.call_limit_seconds)
            with self._in_flight_lock:
                self._in_flight[id(watched)] = watched
            try:
                yield db, watched
            finally:
                with self._in_flight_lock:
                    del self._in_flight[id(watched)]

    def _watch_in_flight(self) -> None:
        while not self._closed:
            time.sleep(0.25)
            now = time.monotonic()
            # Under the lock: a call that ended meanwhile has handed its connection back, which must not be cut.
            with self._in_flight_lock:
                for watched in self._in_flight.values():
                    if not watched.cut and watched.deadline <= now:
                        log.warning("a store call on %s took too long: cutting its connection", self._where)
                        watched.cut_off()

    def _too_late(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"the database {self._where} did not answer within {self.options.call_limit_seconds:.0f} s: {error}"
        )

    # --- listening -------------------------------------------------------------------------------------------

    def _listen_if_running(self) -> None:
        """Start the LISTEN thread once an event loop is known (the store may be opened outside one)."""
        if self._listener is not None or self._closed:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._listener = threading.Thread(target=self._listen, name="wacall-postgres-listen", daemon=True)
        self._listener.start()

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.changes.notify)
            except RuntimeError:
                pass  # the loop closed meanwhile: nobody is waiting

    def _listening_connection(self) -> Connection:
        db = psycopg.connect(self._conninfo, autocommit=True, **self._connect_options)
        db.execute(f"LISTEN {CHANNEL}")
        return db

    def _listen(self) -> None:
        # The first connection listens since the store opened (notifications wait in it until read); a later one
        # starts with one wake-up for whatever committed while nobody listened.
        db: Connection | None = self._first_listening
        backoff = 0.1
        while not self._stop_listening.is_set():
            try:
                if db is None:
                    db = self._listening_connection()
                    backoff = 0.1
                    self._wake()
                with db:
                    while not self._stop_listening.is_set():
                        for _ in db.notifies(timeout=0.5, stop_after=1):
                            self._wake()
            except psycopg.Error as error:
                if not self._stop_listening.is_set():
                    log.warning("listening for changes on %s failed (%s); reconnecting", self._where, error)
                self._stop_listening.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            db = None

    # --- transactions ----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def _attempt(self, fn: Callable[[Tx], T], priority: bool) -> tuple[T, bool]:
        with self._connection(priority) as (db, watched):
            tx = _PostgresTx(db)
            try:
                result = fn(tx)
            except BaseException as error:
                if db.broken or db.closed:
                    if watched.cut:
                        raise self._too_late(error) from error
                    if isinstance(error, psycopg.OperationalError):
                        raise _RunAgain from error
                    raise
                db.rollback()
                raise
            try:
                db.commit()
            except psycopg.OperationalError as error:
                if isinstance(error, _RETRYABLE) and not watched.cut:
                    raise  # refused at commit: rolled back, so it may run again
                raise StoreUnavailable(
                    f"the database {self._where} went away during a commit: the outcome is unknown; retry"
                ) from error
            if tx.wrote_changes:
                self._notify_others(db)
            return result, tx.wrote_changes

    def _notify_others(self, db: Connection) -> None:
        """Tell the other stores' listeners, after the commit and in a transaction of its own. A NOTIFY inside the
        transaction would be delivered at its commit too, but PostgreSQL serialises the commits of notifying
        transactions under one database-wide lock held through the commit's WAL flush (async.c,
        PreCommit_Notify): every decision of every replica would commit one at a time (measured here: 12 writers,
        ~500 commits/s with it, ~1,700 with it after the commit, ~2,200 without). Lost when the connection breaks
        just after the commit: the others' listeners then catch up at their next poll."""
        try:
            db.autocommit = True
            db.execute(f"NOTIFY {CHANNEL}")
        except psycopg.Error as error:
            log.warning("committed, but could not notify the other stores: %s", error)
        finally:
            # Back to transactions whatever happened: a pooled connection left in autocommit would commit the
            # next transaction statement by statement (its advisory locks released after each one).
            try:
                db.autocommit = False
            except psycopg.Error:
                db.close()  # the pool discards a closed connection

    def _run(self, fn: Callable[[Tx], T], priority: bool = False) -> T:
        self._check_open()
        attempts = self.options.attempts
        for attempt in range(1, attempts + 1):
            try:
                result, wrote_changes = self._attempt(fn, priority)
            except _RETRYABLE as error:
                if attempt == attempts:
                    raise StoreUnavailable(
                        f"the database {self._where} is too busy: {attempts} runs ended in deadlocks or "
                        f"serialisation failures ({error}); retry"
                    ) from error
                time.sleep(random.uniform(0, 0.002 * attempt))
                continue
            except _RunAgain as again:
                if attempt == attempts:
                    raise StoreUnavailable(f"the database {self._where} is unreachable: {again.__cause__}") from again
                continue
            except PoolTimeout as error:
                raise StoreUnavailable(f"the database {self._where} is unreachable: {error}") from error
            except psycopg.OperationalError as error:
                # A statement timeout, an administrator's shutdown, a server that cannot accept connections now.
                raise StoreUnavailable(f"the database {self._where} did not answer in time: {error}") from error
            if wrote_changes:
                # Committed: the caller may have stopped waiting (a cancelled RPC), its commit still wakes listeners.
                self._wake()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        self._listen_if_running()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def transaction(self, fn: Callable[[Tx], T], *, priority: bool = False) -> T:
        if priority:
            self._check_open()
            self._listen_if_running()
            return await asyncio.get_running_loop().run_in_executor(self._priority_executor, self._run, fn, True)
        return await self._on_thread(self._run, fn)

    def _run_snapshot(self, fn: Callable[[Tx], T]) -> T:
        self._check_open()
        attempts = self.options.attempts
        for attempt in range(1, attempts + 1):
            try:
                return self._snapshot_attempt(fn)
            except _RunAgain as again:
                # A pooled connection that died while idle (the server restarted): the read runs on another one.
                if attempt == attempts:
                    raise StoreUnavailable(f"the database {self._where} is unreachable: {again.__cause__}") from again
            except PoolTimeout as error:
                raise StoreUnavailable(f"the database {self._where} is unreachable: {error}") from error
            except psycopg.OperationalError as error:
                raise StoreUnavailable(f"the database {self._where} did not answer in time: {error}") from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _snapshot_attempt(self, fn: Callable[[Tx], T]) -> T:
        with self._connection() as (db, watched):
            try:
                db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return fn(_PostgresTx(db, snapshot=True))
            except psycopg.errors.ReadOnlySqlTransaction as error:
                raise StoreError("a snapshot read wrote: use a transaction") from error
            except psycopg.OperationalError as error:
                if db.broken or db.closed:
                    if watched.cut:
                        raise self._too_late(error) from error
                    raise _RunAgain from error
                raise
            finally:
                if not (db.broken or db.closed):
                    db.rollback()

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """`fn` on one snapshot (REPEATABLE READ, READ ONLY) without locks: it decides nothing, so it need not wait
        for the decisions in progress; it sees every commit acknowledged before it began."""
        return await self._on_thread(self._run_snapshot, fn)

    # --- reads outside transactions ----------------------------------------------------------------------------

    def _read(self, query: Any, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def read(tx: Tx) -> list[tuple[Any, ...]]:
            assert isinstance(tx, _PostgresTx)
            return tx._db.execute(query, params).fetchall()

        return self._run(read)

    def _events_after(self, cursor: int, business: str | None, user: str | None, limit: int) -> list[EventRecord]:
        clauses, params = [f"cursor > %s AND cursor < {HORIZON}"], [cursor]
        if business:
            clauses.append("business = %s")
            params.append(business)  # type: ignore[arg-type]
        if user:
            clauses.append("user_number = %s")
            params.append(user)  # type: ignore[arg-type]
        # The read and its horizon share one statement, hence one snapshot. The second column says whether the
        # newest committed event lies above the horizon (held back until older writers end).
        rows = self._read(
            f"SELECT {EVENT_COLUMNS}, NULL FROM events WHERE {' AND '.join(clauses)} "
            f"UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
            f"(SELECT MAX(cursor) FROM events) >= {HORIZON} ORDER BY 1 NULLS LAST LIMIT %s",
            (*params, limit + 1),
        )
        events = [row_to_event(row[:-1]) for row in rows if row[0] is not None][:limit]
        if len(events) < limit and any(row[0] is None and row[-1] for row in rows):
            self._recheck_soon(moved=bool(events))
        return events

    def _recheck_soon(self, *, moved: bool) -> None:
        """Wake the event watchers (only them) again soon: committed events wait above the horizon. Each recheck
        that finds the horizon still stuck waits twice as long, up to the maximum, so an old transaction left open
        (a psql session, a prepared transaction) costs a few reads per second instead of fifty per watcher."""
        if moved:
            self._recheck_delay = self.options.horizon_recheck_seconds
        if self._recheck_pending or self._loop is None:
            return
        self._recheck_pending = True
        delay = self._recheck_delay
        self._recheck_delay = min(delay * 2, self.options.horizon_recheck_max_seconds)

        def recheck() -> None:
            self._recheck_pending = False
            self.changes.notify_events()

        self._loop.call_soon_threadsafe(self._loop.call_later, delay, recheck)

    async def events_after(
        self, cursor: int, *, business: str | None = None, user: str | None = None, limit: int = 500
    ) -> list[EventRecord]:
        return await self._on_thread(self._events_after, cursor, business, user, limit)

    def _last_cursor(self) -> int:
        rows = self._read(f"SELECT COALESCE(MAX(cursor), 0) FROM events WHERE cursor < {HORIZON}", ())
        return int(rows[0][0])

    async def last_cursor(self) -> int:
        return await self._on_thread(self._last_cursor)

    def _list_calls(
        self, business: str | None, user: str | None, before: tuple[int, str] | None, limit: int
    ) -> list[StoredCall]:
        clauses: list[str] = ["TRUE"]
        params: list[Any] = []
        if business:
            clauses.append("business = %s")
            params.append(business)
        if user:
            clauses.append("user_number = %s")
            params.append(user)
        if before:
            clauses.append("(created_at, call_id) < (%s, %s)")
            params.extend([before[0], before[1]])
        rows = self._read(
            f"SELECT {CALL_COLUMNS} FROM calls WHERE {' AND '.join(clauses)} "
            "ORDER BY created_at DESC, call_id DESC LIMIT %s",
            (*params, limit),
        )
        return [row_to_call(row) for row in rows]

    async def list_calls(
        self, *, business: str | None, user: str | None, before: tuple[int, str] | None, limit: int
    ) -> list[StoredCall]:
        return await self._on_thread(self._list_calls, business, user, before, limit)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_listening.set()
        if self._listener is None and self._first_listening is not None:
            self._first_listening.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shut)

    def _shut(self) -> None:
        self._executor.shutdown(wait=True)
        self._priority_executor.shutdown(wait=True)
        self._pool.close(timeout=5)
        self._priority_pool.close(timeout=5)
        if self._listener is not None:
            self._listener.join(timeout=5)


def _check_reset(db: Connection) -> None:
    if db.autocommit:
        raise psycopg.InterfaceError("a pooled connection came back in autocommit")


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlparse(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def open_postgres(url: str) -> Store:
    """`postgresql://USER[:PASS]@HOST:PORT/DB` (or `postgres://`): migrated to the current schema when opened."""
    parts = urlparse(url)
    if not parts.hostname or not parts.path.strip("/"):
        raise StoreError(f"no host or database in {redacted(url)!r}; use postgresql://USER:PASS@HOST:5432/DB")
    return PostgresStore(url)
