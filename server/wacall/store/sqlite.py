"""The SQLite backend: one file in WAL mode, every transaction on one dedicated thread with `BEGIN IMMEDIATE`.

One writer at a time (across every process on the file) makes transactions serialisable and issues event cursors
in commit order; `synchronous=FULL` makes a commit durable before it is acknowledged. Group commit: the thread takes
every transaction queued while it was busy and runs them one after another, each in its own savepoint, in one
`BEGIN IMMEDIATE` ... `COMMIT`, so many callers share one fsync and each is answered once the commit holding its
writes is durable. If that thread ever dies, every caller it held and every later one gets a `StoreError` at once.

Reads take snapshots on read-only connections, off the writer's thread. `Store.read` (a decision's few point
lookups) runs on the caller's thread, with no busy wait: if the database is locked it goes to the reader thread
instead. The reads that can be long (`events_after`, `list_calls`, `last_cursor`) always run on the reader thread,
so a large log never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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
from wacall.store.migrations import migrate
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

# The errors of this backend's driver: what the store's metrics count as database failures.
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)

# The most transactions one commit (one fsync) holds: a bound on how long the first of them waits for its answer.
MAX_GROUP_COMMIT = 256
# How long the writer waits for another process's write lock before its BEGIN IMMEDIATE fails.
WRITER_BUSY_TIMEOUT_MS = 5000
# How long a read on the reader thread waits for a lock before failing: in WAL mode only a crashed writer's recovery
# (or another process's exclusive lock) holds readers up. The caller's-thread connection never waits (0).
READER_BUSY_TIMEOUT_MS = 1000


def events_after_query(cursor: int, business: str | None, user: str | None, limit: int) -> tuple[str, tuple[Any, ...]]:
    """`events_after`'s query: a range of `events_by_business` or `events_by_pair` when filtered (migration 7)."""
    clauses: list[str] = ["cursor > ?"]
    params: list[Any] = [cursor]
    if business:
        clauses.append("business = ?")
        params.append(business)
    if user:
        clauses.append("user_number = ?")
        params.append(user)
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)} ORDER BY cursor LIMIT ?"
    return sql, (*params, limit)


def list_calls_query(
    business: str | None, user: str | None, before: tuple[int, str] | None, limit: int
) -> tuple[str, tuple[Any, ...]]:
    """`list_calls`' query, newest first: a business's calls are a range of `calls_by_business` (migration 7)."""
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
    sql = (
        f"SELECT {CALL_COLUMNS} FROM calls WHERE {' AND '.join(clauses)} ORDER BY created_at DESC, call_id DESC LIMIT ?"
    )
    return sql, (*params, limit)


class _SqliteTx:
    """One transaction's reads and writes, on the store's thread."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        # Events or calls written: listeners are notified once this transaction commits.
        self.wrote_changes = False

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
        self.wrote_changes = True
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
        if call.active:
            # Checked here rather than read from the unique index's error: the index is the backstop.
            other = self.active_call(call.pair)
            if other is not None and other.call_id != call.call_id:
                raise CallInProgress(f"{call.pair.business}/{call.pair.user} already has call {other.call_id}")
        self.wrote_changes = True
        self._db.execute(
            # The owner and its lease are written once; renew_call_leases and claim_expired_calls change them.
            f"INSERT INTO calls ({CALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_id)"
            " DO UPDATE SET platform_call_id = excluded.platform_call_id, state = excluded.state,"
            " active = excluded.active, data = excluded.data",
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
                call.owner,
                optional_micros(call.lease_expires_at),
            ),
        )

    def _calls(self, where: str, params: tuple[Any, ...]) -> list[StoredCall]:
        rows = self._db.execute(
            f"SELECT {CALL_COLUMNS} FROM calls WHERE {where} ORDER BY created_at, call_id", params
        ).fetchall()
        return [row_to_call(row) for row in rows]

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

    def store_now(self) -> datetime:
        return datetime.now(UTC)

    def renew_call_leases(self, owner: str, until: datetime) -> int:
        return self._db.execute(
            "UPDATE calls SET lease_expires_at = ? WHERE owner = ? AND active = 1", (to_micros(until), owner)
        ).rowcount

    def claim_expired_calls(self, *, claimant: str, now: datetime, lease_until: datetime) -> list[StoredCall]:
        rows = self._db.execute(
            f"UPDATE calls SET owner = ?, lease_expires_at = ? WHERE active = 1 AND owner != ? "
            f"AND (lease_expires_at IS NULL OR lease_expires_at <= ?) RETURNING {CALL_COLUMNS}",
            (claimant, to_micros(lease_until), claimant, to_micros(now)),
        ).fetchall()
        return sorted((row_to_call(row) for row in rows), key=lambda c: (c.created_at, c.call_id))

    def save_replica(self, replica: Replica) -> None:
        self._db.execute(
            "INSERT INTO replicas (instance, address, heartbeat_expires_at) VALUES (?, ?, ?) ON CONFLICT (instance)"
            " DO UPDATE SET address = excluded.address, heartbeat_expires_at = excluded.heartbeat_expires_at",
            (replica.instance, replica.address, to_micros(replica.heartbeat_expires_at)),
        )

    def replica(self, instance: str) -> Replica | None:
        row = self._db.execute(
            "SELECT instance, address, heartbeat_expires_at FROM replicas WHERE instance = ?", (instance,)
        ).fetchone()
        return Replica(row[0], row[1], from_micros(row[2])) if row else None

    def forget_replicas(self, heartbeat_before: datetime) -> int:
        return self._db.execute(
            "DELETE FROM replicas WHERE heartbeat_expires_at < ?", (to_micros(heartbeat_before),)
        ).rowcount

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
            reservation_to_row(reservation),
        )

    def reservation_for_key(self, business: str, idempotency_key: str) -> Reservation | None:
        row = self._db.execute(
            f"SELECT {RESERVATION_COLUMNS} FROM reservations WHERE business = ? AND idempotency_key = ?",
            (business, idempotency_key),
        ).fetchone()
        return row_to_reservation(row) if row else None

    def take_reservation(self, reservation_id: str, claimant: str = "") -> Reservation | None:
        held = " AND claimed_by = ?" if claimant else ""
        row = self._db.execute(
            f"DELETE FROM reservations WHERE reservation_id = ?{held} RETURNING {RESERVATION_COLUMNS}",
            (reservation_id, claimant) if claimant else (reservation_id,),
        ).fetchone()
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
        rows = self._db.execute(
            f"SELECT {RESERVATION_COLUMNS} FROM reservations WHERE reserved_at <= ? "
            "AND (claimed_at IS NULL OR claimed_at <= ?) ORDER BY reserved_at",
            (to_micros(reserved_before), to_micros(claims_expire_before)),
        ).fetchall()
        claimed = []
        for row in rows:
            reservation = row_to_reservation(row)
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

    def router_version(self) -> int:
        row = self._db.execute("SELECT version FROM router_state WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def router_state(self) -> tuple[int, str] | None:
        row = self._db.execute("SELECT version, state FROM router_state WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def save_router_state(self, state: str) -> int:
        version = self.router_version() + 1
        self._db.execute(
            "INSERT INTO router_state (id, version, state) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET version = excluded.version, state = excluded.state",
            (version, state),
        )
        return version

    def keep_refused_webhook(self, body: bytes, now: datetime, reason: str) -> None:
        self._db.execute(
            "INSERT INTO refused_webhooks (received_at, reason, body) VALUES (?, ?, ?)",
            (to_micros(now), reason, body),
        )

    def refused_webhooks(self) -> list[tuple[datetime, str, bytes]]:
        rows = self._db.execute("SELECT received_at, reason, body FROM refused_webhooks ORDER BY id").fetchall()
        return [(from_micros(at), str(reason), bytes(body)) for at, reason, body in rows]

    def wa_id_of(self, user: str) -> str | None:
        row = self._db.execute(
            "SELECT wa_id FROM aliases WHERE user_number = ? ORDER BY rowid DESC LIMIT 1", (user,)
        ).fetchone()
        return str(row[0]) if row else None


def _switch_to_wal(db: sqlite3.Connection, patience: float = 10.0) -> None:
    """Put the database in WAL mode. Switching a database that is still in rollback-journal mode needs it alone for
    a moment, and SQLite answers BUSY at once, without its busy handler, when another process opening it at the same
    time holds a lock: try again until it is free."""
    deadline = time.monotonic() + patience
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@dataclass(slots=True)
class _Queued:
    """One caller's `transaction(fn)`, waiting for the store's thread."""

    fn: Callable[[Tx], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    # Set on the store's thread, delivered on the caller's loop once the batch holding it is committed.
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Stop:
    """Close the connection once the transactions queued before this are done, then resolve `closed`."""

    loop: asyncio.AbstractEventLoop | None = None
    closed: asyncio.Future[None] | None = None

    def done(self) -> None:
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self._resolve)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting

    def _resolve(self) -> None:
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)


def _deliver(batch: list[_Queued]) -> None:
    """On a caller's loop: answer every caller of one committed (or failed) batch. One answer that cannot be
    delivered never keeps the others from theirs."""
    for job in batch:
        if job.future.done():
            continue  # the caller stopped waiting; its commit stands
        try:
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.result)
        except BaseException as error:  # whatever it is, the caller gets an answer
            log.exception("a transaction's answer could not be delivered")
            if not job.future.done():
                job.future.set_exception(StoreError(f"the transaction's answer could not be delivered: {error!r}"))


def _as_raisable(error: BaseException) -> BaseException:
    """What a caller awaiting a future can be given: a future refuses StopIteration (it would end the caller's
    coroutine silently), so, as a coroutine does, it becomes a RuntimeError."""
    if isinstance(error, StopIteration | StopAsyncIteration):
        wrapped = RuntimeError(f"a transaction's function raised {type(error).__name__}")
        wrapped.__cause__ = error
        return wrapped
    return error


def _own_copy(error: BaseException) -> BaseException:
    """A copy of an error shared by a whole group (a failed COMMIT), for one caller: raising one instance in every
    caller would chain each caller's traceback onto the others'."""
    try:
        own = copy.copy(error)
    except Exception:  # an exception type that cannot be copied: wrap it instead
        own = StoreError(f"the commit failed: {error!r}")
    # The copy has no traceback of its own yet; the shared original, never raised again, keeps the one it had.
    own.__cause__ = error
    return own


class SqliteStore:
    """SQLite in WAL mode. Writes: every transaction on one thread, serialised, and grouped into one commit (one
    fsync) with whatever other transactions queued meanwhile. Reads: each one snapshot on a read-only connection;
    `read` on the caller's thread unless the database is locked, the others on a reader thread."""

    def __init__(self, path: Path, max_group: int = MAX_GROUP_COMMIT) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_group = max_group
        self.changes = ChangeNotifier()
        # Commits (each one fsync) made so far, each holding one or more transactions: what group commit saves.
        self.commits = 0
        self._closed = False
        self._queue: queue.SimpleQueue[_Queued | _Stop] = queue.SimpleQueue()
        # Why the writer thread died, once it has: from then on every transaction fails at once.
        self._failure: BaseException | None = None
        # Held while queueing, and while the dying writer records its failure: no job slips in behind a dead thread.
        self._submit_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # The caller's-thread read connection serves one read at a time; a read that finds it in use goes to the
        # reader thread rather than wait on a lock with the event loop stopped.
        self._read_lock = threading.Lock()
        self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="wacall-sqlite-reader")
        self._thread_reader: sqlite3.Connection | None = None  # opened on the reader thread, used only there
        opened: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(opened,), name="wacall-sqlite", daemon=True)
        self._thread.start()
        opened.result()
        try:
            self._reader = self._open_reader(busy_timeout_ms=0)
        except BaseException:
            self._queue.put(_Stop())
            self._thread.join()
            self._reader_thread.shutdown()
            raise

    # --- the store's thread: writes --------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            _switch_to_wal(db)
            # FULL: a commit survives power loss before we acknowledge it.
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA busy_timeout={WRITER_BUSY_TIMEOUT_MS:d}")
            migrate(db, str(self.path))
        except BaseException:
            db.close()
            raise
        return db

    def _serve(self, opened: Future[None]) -> None:
        try:
            db = self._open()
        except BaseException as error:
            opened.set_exception(error)
            return
        self._db = db
        opened.set_result(None)
        stop: _Stop | None = None
        try:
            while stop is None:
                first = self._queue.get()
                if isinstance(first, _Stop):
                    stop = first
                    break
                batch = [first]
                # Whatever queued while the last commit was being fsynced joins this one: one fsync for all.
                while len(batch) < self.max_group:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(job, _Stop):
                        stop = job  # after this batch
                        break
                    batch.append(job)
                # A caller that has already stopped waiting (a cancelled RPC) gets nothing run: a job cancelled
                # after this check commits, as any job already running does.
                batch = [job for job in batch if not job.future.cancelled()]
                if not batch:
                    continue
                try:
                    self._commit_group(db, batch)
                except BaseException as error:  # the thread dies: nobody may be left waiting
                    log.exception("the SQLite writer failed; the store refuses every transaction from now on")
                    self._fail(batch, error)
                    return
        finally:
            self._db = None
            try:
                db.close()
            finally:
                if stop is not None:
                    stop.done()

    def _fail(self, batch: list[_Queued], error: BaseException) -> None:
        """The writer thread is dying: answer its batch and everything queued, and refuse every later call."""
        failure = StoreError(f"the store's writer failed: {error!r}")
        failure.__cause__ = error
        with self._submit_lock:
            self._failure = failure
        waiting: list[_Queued] = list(batch)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _Stop):
                job.done()
            else:
                waiting.append(job)
        for job in waiting:
            job.error = _own_copy(failure)
        self._answer(waiting, wrote_changes=False)

    def _commit_group(self, db: sqlite3.Connection, batch: list[_Queued]) -> None:
        """Run each queued function in its own savepoint of one transaction, commit once, then answer them all.

        A function that raises rolls back to its savepoint only and its caller gets the exception; the others'
        writes commit. The functions still run one after another, so transactions stay serialisable."""
        wrote_changes = False
        try:
            db.execute("BEGIN IMMEDIATE")
            for job in batch:
                db.execute("SAVEPOINT fn")
                tx = _SqliteTx(db)
                try:
                    job.result = job.fn(tx)
                except BaseException as error:
                    job.error = _as_raisable(error)
                    db.execute("ROLLBACK TO fn")
                else:
                    wrote_changes |= tx.wrote_changes
                db.execute("RELEASE fn")
            db.execute("COMMIT")
            self.commits += 1
        except BaseException as error:
            # BEGIN or COMMIT failed (a busy database, a full disk): nothing of the batch is kept. Each caller gets
            # its own copy of the error before a failing ROLLBACK (the connection is unusable) ends the thread.
            wrote_changes = False
            for job in batch:
                if job.error is None:
                    job.error = _own_copy(error)
            if db.in_transaction:
                db.execute("ROLLBACK")
        self._answer(batch, wrote_changes)

    def _answer(self, batch: list[_Queued], wrote_changes: bool) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Queued]] = {}
        for job in batch:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            # Scheduled from this thread once committed: a caller that stopped waiting (a cancelled RPC) does not
            # hold back the others, and its commit still wakes the listeners (once per batch).
            try:
                loop.call_soon_threadsafe(_deliver, jobs)
                if wrote_changes:
                    loop.call_soon_threadsafe(self.changes.notify)
            except RuntimeError:
                continue  # that loop is closed: nobody is left to answer

    async def transaction(self, fn: Callable[[Tx], T], *, priority: bool = False) -> T:
        # One writer thread, whose batches commit in milliseconds: no separate path for `priority`.
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        job = _Queued(fn, loop, loop.create_future())
        with self._submit_lock:
            if self._failure is not None:
                raise _own_copy(self._failure)
            self._queue.put(job)
        result: T = await job.future
        return result

    # --- the read connection: on the caller's thread -----------------------------------------------------------

    def _open_reader(self, busy_timeout_ms: int) -> sqlite3.Connection:
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # A reader in WAL mode waits for no writer; query_only makes a write in a read fail instead of commit.
            reader.execute("PRAGMA query_only=ON")
            reader.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
        except BaseException:
            reader.close()
            raise
        return reader

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    @staticmethod
    def _in_snapshot(reader: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one read transaction: every query it makes sees one snapshot."""
        reader.execute("BEGIN")
        try:
            return fn(reader)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode == sqlite3.SQLITE_READONLY:
                raise StoreError("a read tried to write: writes belong in a transaction") from error
            raise
        finally:
            reader.execute("COMMIT")

    def _snapshot_on_reader_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # Runs on the reader thread only: its connection is that thread's alone, so it needs no lock.
        self._check_open()
        if self._thread_reader is None:
            self._thread_reader = self._open_reader(busy_timeout_ms=READER_BUSY_TIMEOUT_MS)
        return self._in_snapshot(self._thread_reader, fn)

    async def _snapshot_off_loop(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader_thread, self._snapshot_on_reader_thread, fn)
        except RuntimeError as error:
            if self._closed:  # the reader thread was shut down by close()
                raise StoreError("the store is closed") from error
            raise

    async def read(self, fn: Callable[[Tx], T]) -> T:
        # On the caller's thread, with no thread hop: a WAL reader does not wait for the writer, and a decision's
        # reads are a few index lookups. A locked database (another process's exclusive lock, a crashed writer's
        # recovery) answers BUSY at once on this connection; the reader thread then waits for it, not the loop.
        self._check_open()
        if self._read_lock.acquire(blocking=False):
            try:
                reader = self._reader
                if reader is None:
                    raise StoreError("the store is closed")
                return self._in_snapshot(reader, lambda db: fn(_SqliteTx(db)))
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
            finally:
                self._read_lock.release()
        return await self._snapshot_off_loop(lambda db: fn(_SqliteTx(db)))

    async def events_after(
        self, cursor: int, *, business: str | None = None, user: str | None = None, limit: int = 500
    ) -> list[EventRecord]:
        sql, params = events_after_query(cursor, business, user, limit)
        rows = await self._snapshot_off_loop(lambda reader: reader.execute(sql, params).fetchall())
        return [row_to_event(row) for row in rows]

    async def list_calls(
        self, *, business: str | None, user: str | None, before: tuple[int, str] | None, limit: int
    ) -> list[StoredCall]:
        sql, params = list_calls_query(business, user, before, limit)
        rows = await self._snapshot_off_loop(lambda reader: reader.execute(sql, params).fetchall())
        return [row_to_call(row) for row in rows]

    async def last_cursor(self) -> int:
        return await self._snapshot_off_loop(
            lambda reader: int(reader.execute("SELECT COALESCE(MAX(cursor), 0) FROM events").fetchone()[0])
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        loop = asyncio.get_running_loop()
        # Reads already running finish; then the reader thread's connection closes on that thread.
        await loop.run_in_executor(self._reader_thread, self._close_thread_reader)
        self._reader_thread.shutdown(wait=False)
        stop = _Stop(loop, loop.create_future())
        with self._submit_lock:
            if self._failure is not None:
                return  # the writer thread is gone and has closed its connection
            self._queue.put(stop)  # after the transactions already queued
        assert stop.closed is not None
        await stop.closed

    def _close_thread_reader(self) -> None:
        if self._thread_reader is not None:
            self._thread_reader.close()
            self._thread_reader = None


def sqlite_path(url: str) -> Path:
    """The file of `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`."""
    path = urlparse(url).path
    path = path[1:] if path.startswith("/") else path
    if not path:
        raise StoreError(f"no database file in {url!r}; use sqlite:///var/wacall.db")
    return Path(path)


def open_sqlite(url: str) -> Store:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`."""
    return SqliteStore(sqlite_path(url))
