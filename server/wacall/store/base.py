"""The store's interface: the records it keeps, and what every backend must guarantee.

A `Store` runs a function inside one transaction (`await store.transaction(fn)`); the function gets a `Tx` to read
and write. Everything a decision needs (read the pair, decide with the engine, append events, save the pair,
remember the idempotency key or webhook id) happens inside one call, so limits hold under any number of concurrent
callers and processes, and the commit happens before anybody is answered. A function that only reads and decides
nothing may run in a read-only snapshot instead (`await store.read(fn)`), which takes no write lock.

Every backend guarantees, and `tests/test_store_contract.py` checks:

- **Atomicity.** A transaction's writes commit together, or (when `fn` raises) none of them do.
- **Isolation.** Transactions are serialisable: each one reads and writes as if it ran alone, in some order, across
  every process sharing the database. The services rely on it for every read-then-write: a pair's ledger (per pair),
  a business's pause and idempotency keys (per business), a claimed webhook key, a reservation or call claimed by
  one process only, the one call in progress per pair. SQLite gets it from one writer at a time (`BEGIN
  IMMEDIATE`); PostgreSQL runs writers side by side and locks what a transaction reads before it decides (the
  pair's, the business's, the key's advisory lock; `FOR UPDATE` on rows), held until the commit.
- **Durability.** When `transaction` returns, the commit survives a crash or a power loss.
- **Commit-ordered cursors** (see `Store.events_after`): a reader that resumes after the last cursor it saw never
  misses an event, however late the event's transaction committed.
- **Notify on commit** (see `Store.changes`): listeners are woken after a commit that wrote events or calls, never
  before it and never for a rollback.

`fn` runs synchronously and must not wait on the network. A backend may run it again from scratch (a retried
serialisation failure), so `fn` has no effects outside the `Tx` that a second run would repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from wacall.rules.engine import Ledger, PermissionState, Restriction

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pair:
    business: str  # +E164
    user: str  # +E164


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One line of the audit log. `cursor` is assigned by the store when the event is appended."""

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
    """A call row: identity, route and the call's facts as JSON (the call service owns their meaning).

    `owner` is the process that runs the call's media and `lease_expires_at` (a time on the store's clock,
    `Tx.store_now`) how long that owner is known to be alive: it renews the lease while it runs, and once the lease
    has expired any process may claim the call and end it. Both are written when the row is created; afterwards
    only `Tx.renew_call_leases` and `Tx.claim_expired_calls` change them (`save_call` leaves them as they are)."""

    call_id: str
    pair: Pair
    direction: str
    created_at: datetime
    state: str
    data: Mapping[str, Any]
    platform_call_id: str | None = None
    active: bool = True
    owner: str = ""  # "": stored before calls had owners, as good as expired
    lease_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Replica:
    """One process among those sharing the database, as it recorded itself: its instance (the name its calls' `owner`
    holds), the gRPC address other processes reach it at, and until when it is known to be alive (wall time). It
    saves this with every renewal of its call leases, so a replica that forwards a call's control to the call's
    owner knows where to send it, and whether anybody is still there."""

    instance: str
    address: str
    heartbeat_expires_at: datetime


class StoreError(RuntimeError):
    """The store cannot be opened or used (a bad URL, a database from a newer wacall, a closed store)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached in time (down, restarting, unreachable, or not answering). Nothing is known to
    have been written; the caller may retry (gRPC: UNAVAILABLE with RetryInfo; webhooks: 503, the platform retries)."""


class CallInProgress(StoreError):
    """A second active call for a pair: the platform allows one call at a time per pair (138003), and so do we."""


class ChangeNotifier:
    """Wakes every waiting listener once per notification. Take a `ticket()` before reading, then wait on it: a
    commit between the read and the wait has already set it, so nothing slips through."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._events = asyncio.Event()

    def ticket(self) -> asyncio.Event:
        return self._event

    def events_ticket(self) -> asyncio.Event:
        """A ticket for watchers of the event log only: set by every notification and by `notify_events`."""
        return self._events

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()
        self.notify_events()

    def notify_events(self) -> None:
        """Wake the event watchers only (events wait to become readable; nothing else changed)."""
        self._events.set()
        self._events = asyncio.Event()


async def wait_for_change(ticket: asyncio.Event, seconds: float) -> None:
    """Return once `ticket` is set or `seconds` have passed, whichever comes first. A cancel is never lost: on
    Python 3.11, `asyncio.wait_for` returns normally when the cancel lands as the ticket is set, and a polling loop
    cancelled that way runs on, so a shutdown waiting for it never ends."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await ticket.wait()


class Tx(Protocol):
    """Reads and writes inside one transaction (see the module's docstring for what a backend guarantees)."""

    def ledger(self, pair: Pair) -> Ledger:
        """The pair's ledger (an empty one if the pair was never written)."""
        ...

    def save_ledger(self, pair: Pair, ledger: Ledger, now: datetime) -> None: ...

    def append(self, event: EventRecord) -> int:
        """Add an event to the log; returns its cursor (the event's own `cursor` field is ignored)."""
        ...

    def claim(self, key: str, now: datetime) -> bool:
        """Remember `key` (a webhook message id, say); False if it was already claimed."""
        ...

    def remember_message(self, message_id: str, pair: Pair, now: datetime) -> None:
        """Remember which pair one of our messages (a permission request) went to, and when (the first time wins)."""
        ...

    def message_pair(self, message_id: str) -> Pair | None: ...

    def message_sent_at(self, message_id: str) -> datetime | None:
        """When one of our messages (a permission request) was sent, if it is one of ours."""
        ...

    def remember_alias(self, wa_id: str, user: str) -> None:
        """The platform's wa_id for a user differs from the number we hold (HOOK-8): map it to our user."""
        ...

    def alias(self, wa_id: str) -> str | None: ...

    def wa_id_of(self, user: str) -> str | None:
        """The wa_id the platform last gave for one of our users, when it differs from the number (HOOK-8)."""
        ...

    def idempotent_result(self, business: str, key: str) -> IdempotentResult | None: ...

    def save_idempotent_result(self, result: IdempotentResult, now: datetime) -> None:
        """Keep the outcome for (business, key); a later save replaces the outcome, never the fingerprint."""
        ...

    def keep_webhook(self, body: bytes, now: datetime) -> None:
        """Keep a verified webhook body as received, for audit and replay."""
        ...

    def keep_refused_webhook(self, body: bytes, now: datetime, reason: str) -> None:
        """Keep a signed delivery that was refused (malformed, or timestamps that cannot be trusted), for audit."""
        ...

    def refused_webhooks(self) -> list[tuple[datetime, str, bytes]]:
        """Every refused delivery kept: (received at, reason, body), oldest first."""
        ...

    def restriction(self, business: str) -> Restriction | None:
        """The business number's calling pause, if one is recorded (it may have ended already)."""
        ...

    def save_restriction(self, business: str, restriction: Restriction | None, now: datetime) -> None:
        """Record the business's pause; None removes it."""
        ...

    def save_call(self, call: StoredCall) -> None:
        """Create or update the call. At most one active call per pair: saving a second one raises `CallInProgress`
        (and the transaction rolls back). An update leaves `owner` and `lease_expires_at` as they are."""
        ...

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

    def store_now(self) -> datetime:
        """The store's clock, the one clock every process sharing the database agrees on: leases and heartbeats
        are written as `store_now() + lease` and expire when `store_now()` passes them, never by a process's own
        clock (a replica whose clock runs ahead would otherwise take a living owner's calls). PostgreSQL: the
        server's `clock_timestamp()`, read once per transaction; SQLite: this machine's wall clock (every process
        on a SQLite database runs on the machine that holds it, so that is the database's clock there)."""
        ...

    def renew_call_leases(self, owner: str, until: datetime) -> int:
        """Extend the lease of every open call `owner` holds to `until` (store time); returns how many."""
        ...

    def claim_expired_calls(self, *, claimant: str, now: datetime, lease_until: datetime) -> list[StoredCall]:
        """Take over every open call whose owner's lease expired at or before `now` (store time: `store_now()`, so
        every claimant decides "expired" on the same clock), or that has no owner, other than the claimant's own:
        from now on `claimant` owns them, with a lease until `lease_until`, so no other process claims them too.
        Returns them as claimed, oldest first."""
        ...

    def save_replica(self, replica: Replica) -> None:
        """Record (or renew) a process in the replica registry: its address and heartbeat replace any earlier ones."""
        ...

    def replica(self, instance: str) -> Replica | None:
        """The process recorded under `instance` (a call's `owner`), if it ever recorded itself."""
        ...

    def forget_replicas(self, heartbeat_before: datetime) -> int:
        """Remove the processes whose heartbeat expired before `heartbeat_before` (each run records itself anew, so
        the registry would otherwise keep every run ever); returns how many."""
        ...

    def park_call_event(self, platform_call_id: str, event: Mapping[str, Any], now: datetime) -> None:
        """Keep an event for a call id we do not know yet (its webhook beat our own record of it)."""
        ...

    def take_parked_call_events(self, platform_call_id: str) -> list[Mapping[str, Any]]:
        """Remove and return the call id's parked events, in the order they were parked."""
        ...

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
        or before `claims_expire_before`), except `excluding`; returns what was claimed, oldest first."""
        ...

    def save_setting(self, name: str, value: str) -> None:
        """Keep one small named value (e.g. the manual clock's position) across restarts."""
        ...

    def setting(self, name: str) -> str | None: ...

    def latest_recorded_at(self) -> datetime | None:
        """When the newest event was recorded (None: no events yet)."""
        ...

    def router_version(self) -> int:
        """The version of the contact centre's router state (0: never saved). Every save increments it, so a reader
        that holds the state of a version need not read the state again while the version is unchanged."""
        ...

    def router_state(self) -> tuple[int, str] | None:
        """The router state as saved (its version and the JSON `wacall.queues.codec` wrote); None: never saved."""
        ...

    def save_router_state(self, state: str) -> int:
        """Replace the router state with `state` (the codec's JSON); returns its new version."""
        ...


class Store(Protocol):
    """The durable ledger. Every method may be called concurrently from one event loop, and several stores (in one
    process or many) may share one database."""

    @property
    def changes(self) -> ChangeNotifier:
        """Notified after every commit of this store that wrote events (`Tx.append`) or calls (`Tx.save_call`),
        once the commit is durable and visible to every reader; never before it, never for a rollback, and even
        when the caller of `transaction` has stopped waiting. Commits made by other processes on the same database
        may go unnotified (SQLite), so listeners also poll; a backend that can hear them (PostgreSQL's
        `LISTEN`/`NOTIFY`) notifies for them too."""
        ...

    async def transaction(self, fn: Callable[[Tx], T], *, priority: bool = False) -> T:
        """Run `fn` in one atomic, serialisable transaction and commit before returning its result. If `fn` raises,
        nothing it wrote is kept and the exception propagates. `priority`: small, periodic work that must not queue
        behind client traffic (lease renewal); PostgreSQL runs it on a connection and thread of its own."""
        ...

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn`, which only reads, against one consistent snapshot of committed data and return its result.

        `fn` sees exactly what a `transaction` starting at that moment would see: every commit acknowledged before
        `read` was called, nothing uncommitted, and one snapshot for all of its reads (never half of a concurrent
        commit). It takes no write lock and need not wait for writers. A write in `fn` raises `StoreError` and changes
        nothing. For answers that decide nothing (GetPermission); a decision that
        writes (consumes a limit) reads in its own `transaction`. SQLite: a read-only connection in WAL mode;
        PostgreSQL: a `READ ONLY` transaction at `REPEATABLE READ`."""
        ...

    async def events_after(
        self, cursor: int, *, business: str | None = None, user: str | None = None, limit: int = 500
    ) -> list[EventRecord]:
        """Committed events with a cursor above `cursor`, of `business` and `user` when given, in cursor order, at
        most `limit`.

        A cursor is a positive integer below 2**63 that the store gives each event when it is appended. Cursors
        are unique and issued in commit order: once a reader can see an event, every event with a smaller cursor
        is visible too, and any event committed afterwards gets a larger cursor. So a reader that has read every
        event up to cursor N (page after page, filtered or not) and resumes after N never skips an event, even
        one whose transaction started before a later-numbered one and committed after it.

        SQLite gives this for free: one writer at a time, so cursors (AUTOINCREMENT) are issued in commit order. A
        backend whose writers run side by side must not take cursors from a sequence (numbers are handed out at
        insert time, not at commit: a reader could see 6 before 5 commits). PostgreSQL's cursor is the appending
        transaction's id shifted left by 20 bits plus the event's index in it, and a read returns only events of
        transactions below the snapshot's horizon (`pg_snapshot_xmin`: every transaction with a smaller id has
        ended). Whatever can still commit has a larger id, hence a larger cursor than anything returned, so
        writers never wait for each other's commits; an event becomes readable once the writers that began
        before it have ended."""
        ...

    async def last_cursor(self) -> int:
        """The newest committed event's cursor (0: none yet). Reading `events_after` it later yields exactly the
        events committed since."""
        ...

    async def list_calls(
        self, *, business: str | None, user: str | None, before: tuple[int, str] | None, limit: int
    ) -> list[StoredCall]:
        """Calls, newest first by (created_at, call_id); `before` is the (created_at in microseconds since the
        epoch, call_id) of the last call of the previous page."""
        ...

    async def close(self) -> None:
        """Release the database; the store cannot be used afterwards."""
        ...
