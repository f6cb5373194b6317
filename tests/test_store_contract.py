"""What every store backend must do, checked through the `Store`/`Tx` interface alone (wacall/store/base.py).

Each test runs once per backend (`BACKENDS` below: SQLite on a real file, and a real PostgreSQL server on loopback,
a fresh database per test). `backend.open()` gives another
store on the same database, as a second process would have: claims, cursors and isolation are checked across
stores, with transactions made to overlap on purpose rather than by luck.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from wacall.rules.engine import Ledger, PermissionState, Restriction
from wacall.store import (
    CallInProgress,
    EventRecord,
    IdempotentResult,
    Pair,
    Replica,
    Reservation,
    Store,
    StoredCall,
    StoreError,
    Tx,
    open_store,
    to_micros,
)

# Backend name → the URL of a fresh database for one test (each `open()`: another store on that database).
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "sqlite": lambda request, tmp: f"sqlite:///{tmp / 'contract.db'}",
    "postgresql": lambda request, tmp: request.getfixturevalue("postgres_server").create_database(),
}

AT = datetime(2026, 12, 1, 12, 0, 0, 123_456, tzinfo=UTC)
BUSINESS = "+447911123456"
OTHER_BUSINESS = "+447911123457"
PAIR = Pair(BUSINESS, "+34612345678")
OTHER_PAIR = Pair(BUSINESS, "+5511987654321")
ELSEWHERE = Pair(OTHER_BUSINESS, "+34612345678")


@dataclass
class Backend:
    name: str
    url: str
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        store = open_store(self.url)
        self.opened.append(store)
        return store


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opened = Backend(request.param, BACKENDS[request.param](request, tmp_path))
    yield opened
    for store in opened.opened:
        await store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def event(
    pair: Pair = PAIR, kind: str = "permission_request_sent", at: datetime = AT, **attributes: str
) -> EventRecord:
    return EventRecord(pair, kind, "business", at - timedelta(seconds=1), at, PermissionState.REQUESTED, attributes)


def call(
    call_id: str,
    pair: Pair = PAIR,
    created_at: datetime = AT,
    *,
    active: bool = True,
    platform_call_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> StoredCall:
    state = "ringing" if active else "ended"
    return StoredCall(call_id, pair, "business_initiated", created_at, state, data or {"route": "announcement"},
                      platform_call_id, active)  # fmt: skip


def reservation(reservation_id: str, reserved_at: datetime, pair: Pair = PAIR, key: str = "") -> Reservation:
    return Reservation(reservation_id, pair, reserved_at, "template", PermissionState.NONE, key, f"fp-{key}")


def append(record: EventRecord, tx: Tx) -> int:
    return tx.append(record)


async def settle(ticks: int = 10) -> None:
    """Let callbacks already scheduled on the loop run (a notification, say)."""
    for _ in range(ticks):
        await asyncio.sleep(0.005)


# --- transactions: atomic, serialisable, durable --------------------------------------------------------------------


class Boom(Exception):
    pass


async def test_a_transaction_that_raises_keeps_nothing_and_notifies_nobody(store: Store) -> None:
    ticket = store.changes.ticket()

    def write_everything_then_fail(tx: Tx) -> None:
        tx.save_ledger(PAIR, Ledger(state=PermissionState.PERMANENT), AT)
        tx.append(event())
        tx.save_call(call("call_a"))
        assert tx.claim("message:wamid.1", AT)
        tx.remember_message("wamid.OUT", PAIR, AT)
        tx.remember_alias("34600000000", PAIR.user)
        tx.save_idempotent_result(IdempotentResult(BUSINESS, "k", "f", {"status": "sent"}), AT)
        tx.save_reservation(reservation("r1", AT))
        tx.save_setting("position", "1")
        tx.save_restriction(BUSINESS, Restriction(None), AT)
        tx.park_call_event("wacid.X", {"kind": "ringing"}, AT)
        tx.keep_refused_webhook(b"{}", AT, "malformed")
        raise Boom

    with pytest.raises(Boom):
        await store.transaction(write_everything_then_fail)
    await settle()
    assert not ticket.is_set()

    def read_nothing(tx: Tx) -> None:
        assert tx.ledger(PAIR) == Ledger()
        assert tx.call("call_a") is None and tx.open_calls() == []
        assert tx.claim("message:wamid.1", AT)  # never claimed before
        assert tx.message_pair("wamid.OUT") is None and tx.alias("34600000000") is None
        assert tx.idempotent_result(BUSINESS, "k") is None
        assert tx.reservation_for_key(BUSINESS, "") is None and tx.take_reservation("r1") is None
        assert tx.setting("position") is None and tx.restriction(BUSINESS) is None
        assert tx.take_parked_call_events("wacid.X") == [] and tx.refused_webhooks() == []
        assert tx.latest_recorded_at() is None

    await store.transaction(read_nothing)
    assert await store.events_after(0) == [] and await store.last_cursor() == 0


async def test_a_transaction_returns_what_its_function_returns_once_committed(backend: Backend) -> None:
    writer, reader = backend.open(), backend.open()

    def write(tx: Tx) -> int:
        tx.save_setting("answer", "42")
        return tx.append(event())

    cursor = await writer.transaction(write)
    # Committed before the call returned: another store (another process) reads it at once.
    assert await reader.transaction(lambda tx: tx.setting("answer")) == "42"
    assert [e.cursor for e in await reader.events_after(0)] == [cursor]


async def test_what_committed_is_still_there_after_the_store_is_closed_and_opened_again(backend: Backend) -> None:
    # Durable: a commit survives the process (here: the store) going away; nothing is kept only in memory.
    first = backend.open()
    cursor = await first.transaction(lambda tx: (tx.save_setting("answer", "42"), tx.append(event()))[1])
    await first.close()
    backend.opened.remove(first)
    again = backend.open()
    assert await again.transaction(lambda tx: tx.setting("answer")) == "42"
    assert [e.cursor for e in await again.events_after(0)] == [cursor]
    assert await again.last_cursor() == cursor


async def test_concurrent_read_then_write_transactions_from_several_stores_lose_no_update(backend: Backend) -> None:
    stores = [backend.open() for _ in range(3)]
    rounds = 12

    def count_a_missed_call(tx: Tx) -> None:
        ledger = tx.ledger(PAIR)
        time.sleep(random.uniform(0, 0.003))  # widen the gap between the read and the write
        tx.save_ledger(PAIR, replace(ledger, consecutive_unanswered=ledger.consecutive_unanswered + 1), AT)

    await asyncio.gather(*(s.transaction(count_a_missed_call) for s in stores for _ in range(rounds)))
    assert (await stores[0].transaction(lambda tx: tx.ledger(PAIR))).consecutive_unanswered == 3 * rounds


async def test_transactions_that_fail_among_concurrent_ones_keep_nothing_and_the_others_commit(store: Store) -> None:
    # However a backend groups concurrent transactions (SQLite commits many in one), each stands alone.
    def write(n: int) -> Callable[[Tx], int]:
        def fn(tx: Tx) -> int:
            tx.save_setting(f"n{n}", str(n))
            cursor = tx.append(event(n=str(n)))
            if n % 3 == 0:
                raise Boom(n)
            return cursor

        return fn

    results = await asyncio.gather(*(store.transaction(write(n)) for n in range(30)), return_exceptions=True)
    failed = [n for n, r in enumerate(results) if isinstance(r, Boom)]
    assert failed == list(range(0, 30, 3)) and all(r.args == (n,) for n, r in enumerate(results) if n in failed)
    kept = await store.events_after(0)
    assert sorted(int(e.attributes["n"]) for e in kept) == [n for n in range(30) if n % 3]
    assert sorted(e.cursor for e in kept) == sorted(r for r in results if isinstance(r, int))
    settings = await store.read(lambda tx: [tx.setting(f"n{n}") for n in range(30)])
    assert settings == [None if n % 3 == 0 else str(n) for n in range(30)]


# --- reads: one snapshot, no write lock -------------------------------------------------------------------------------


async def test_a_read_sees_every_commit_acknowledged_before_it_from_any_store(backend: Backend) -> None:
    writer, reader = backend.open(), backend.open()
    assert await reader.read(lambda tx: (tx.ledger(PAIR), tx.setting("answer"))) == (Ledger(), None)
    ledger = Ledger(state=PermissionState.PERMANENT, state_changed_at=AT)
    for store in (writer, reader):
        await store.transaction(lambda tx: (tx.save_ledger(PAIR, ledger, AT), tx.save_setting("answer", "42")))
        assert await reader.read(lambda tx: (tx.ledger(PAIR), tx.setting("answer"))) == (ledger, "42")
        assert await writer.read(lambda tx: tx.ledger(PAIR)) == ledger


async def test_a_read_sees_one_snapshot_while_another_store_commits_during_it(backend: Backend) -> None:
    writer = backend.open()
    await writer.transaction(lambda tx: (tx.save_setting("n", "1"), tx.append(event(n="1"))))
    first_read, committed = threading.Event(), threading.Event()

    def look_twice(tx: Tx) -> tuple[str | None, str | None, datetime | None]:
        before = tx.setting("n")
        first_read.set()
        assert committed.wait(10)
        return before, tx.setting("n"), tx.latest_recorded_at()

    def read_in_another_thread() -> tuple[str | None, str | None, datetime | None]:
        # Its own thread and loop: the read may block its caller's thread, and the writer must go on meanwhile.
        async def read() -> tuple[str | None, str | None, datetime | None]:
            reader = open_store(backend.url)
            try:
                return await reader.read(look_twice)
            finally:
                await reader.close()

        return asyncio.run(read())

    reading = asyncio.ensure_future(asyncio.to_thread(read_in_another_thread))
    try:
        assert await asyncio.to_thread(first_read.wait, 10)
        later = AT + timedelta(hours=1)
        await writer.transaction(lambda tx: (tx.save_setting("n", "2"), tx.append(event(n="2", at=later))))
    finally:
        committed.set()
    assert await reading == ("1", "1", AT)  # neither the setting nor the event of the commit made during the read
    assert await writer.read(lambda tx: (tx.setting("n"), tx.latest_recorded_at())) == ("2", later)


async def test_a_read_that_writes_fails_and_keeps_nothing(store: Store) -> None:
    ticket = store.changes.ticket()

    def sneak_a_write(tx: Tx) -> None:
        tx.save_setting("sneaked", "yes")

    with pytest.raises(StoreError):
        await store.read(sneak_a_write)
    with pytest.raises(StoreError):
        await store.read(lambda tx: tx.append(event()))
    await settle()
    assert not ticket.is_set() and await store.events_after(0) == []
    assert await store.transaction(lambda tx: tx.setting("sneaked")) is None


async def test_a_read_raising_passes_its_exception_on_and_the_store_reads_on(store: Store) -> None:
    def fail(tx: Tx) -> None:
        tx.ledger(PAIR)
        raise Boom

    with pytest.raises(Boom):
        await store.read(fail)
    await store.transaction(lambda tx: tx.save_setting("after", "ok"))
    assert await store.read(lambda tx: tx.setting("after")) == "ok"


# --- the ledger, settings, restrictions ----------------------------------------------------------------------------


async def test_a_ledger_round_trips_to_the_microsecond(store: Store) -> None:
    ledger = Ledger(
        state=PermissionState.TEMPORARY,
        expires_at=AT + timedelta(days=7),
        state_changed_at=AT,
        request_times=(AT - timedelta(hours=2), AT - timedelta(microseconds=1)),
        connected_call_times=(AT - timedelta(minutes=5),),
        consecutive_unanswered=1,
        last_connected_at=AT - timedelta(minutes=5),
        last_user_message_at=AT - timedelta(seconds=30),
        request_expiries=(AT + timedelta(days=7),),
        state_before_request=PermissionState.REJECTED,
    )
    assert await store.transaction(lambda tx: tx.ledger(PAIR)) == Ledger()
    await store.transaction(lambda tx: tx.save_ledger(PAIR, Ledger(state=PermissionState.REQUESTED), AT))
    await store.transaction(lambda tx: tx.save_ledger(PAIR, ledger, AT))
    assert await store.transaction(lambda tx: (tx.ledger(PAIR), tx.ledger(OTHER_PAIR))) == (ledger, Ledger())


async def test_settings_keep_the_last_value_saved(store: Store) -> None:
    await store.transaction(lambda tx: tx.save_setting("manual_clock_position", "1"))
    await store.transaction(lambda tx: tx.save_setting("manual_clock_position", "2"))
    assert await store.transaction(lambda tx: (tx.setting("manual_clock_position"), tx.setting("other"))) == ("2", None)


async def test_a_business_pause_is_kept_per_business_until_removed(store: Store) -> None:
    def pause(tx: Tx) -> None:
        tx.save_restriction(BUSINESS, Restriction(AT + timedelta(hours=1)), AT)
        tx.save_restriction(OTHER_BUSINESS, Restriction(None), AT)  # no end given

    await store.transaction(pause)
    assert await store.transaction(lambda tx: (tx.restriction(BUSINESS), tx.restriction(OTHER_BUSINESS))) == (
        Restriction(AT + timedelta(hours=1)),
        Restriction(None),
    )
    await store.transaction(lambda tx: tx.save_restriction(BUSINESS, None, AT))
    assert await store.transaction(lambda tx: (tx.restriction(BUSINESS), tx.restriction(OTHER_BUSINESS))) == (
        None,
        Restriction(None),
    )


# --- events and cursors ---------------------------------------------------------------------------------------------


async def test_appended_events_come_back_whole_in_cursor_order(store: Store) -> None:
    written = [
        event(PAIR, "permission_request_sent", AT, channel="template"),
        event(OTHER_PAIR, "permission_granted", AT + timedelta(microseconds=1), is_permanent="true"),
        event(ELSEWHERE, "call_updated", AT + timedelta(seconds=1), call_id="call_x", call='{"a": 1}'),
        event(PAIR, "user_message_received", AT + timedelta(seconds=2)),
    ]
    cursors = []
    for record in written:
        cursors.append(await store.transaction(partial(append, replace(record, cursor=999))))
    assert cursors == sorted(set(cursors)) and all(0 < c < 2**63 for c in cursors)
    read = await store.events_after(0)
    assert read == [replace(r, cursor=c) for r, c in zip(written, cursors, strict=True)]
    assert await store.last_cursor() == cursors[-1]
    assert await store.events_after(cursors[-1]) == []


async def test_events_after_filters_by_business_and_user_and_pages_by_cursor(store: Store) -> None:
    pairs = [PAIR, OTHER_PAIR, ELSEWHERE]

    def write(tx: Tx) -> None:
        for index in range(30):
            tx.append(event(pairs[index % 3], at=AT + timedelta(seconds=index), n=str(index)))

    await store.transaction(write)
    everything = await store.events_after(0, limit=1000)
    assert [e.attributes["n"] for e in everything] == [str(i) for i in range(30)]
    assert [e.pair for e in await store.events_after(0, business=BUSINESS, limit=1000)] == [PAIR, OTHER_PAIR] * 10
    assert {e.pair for e in await store.events_after(0, user=PAIR.user, limit=1000)} == {PAIR, ELSEWHERE}
    only = await store.events_after(0, business=OTHER_BUSINESS, user=PAIR.user, limit=1000)
    assert [e.attributes["n"] for e in only] == [str(i) for i in range(2, 30, 3)]
    assert await store.events_after(0, business="+447911000000") == []
    # Page after page, filtered: each page resumes after the last cursor of the one before.
    pages, cursor = [], 0
    while page := await store.events_after(cursor, business=BUSINESS, limit=4):
        assert len(page) <= 4
        pages.append(page)
        cursor = page[-1].cursor
    assert [e for page in pages for e in page] == await store.events_after(0, business=BUSINESS, limit=1000)
    assert len(pages) == 5
    # From the middle: exactly the later ones.
    assert await store.events_after(everything[9].cursor, limit=1000) == everything[10:]


async def test_a_reader_resuming_after_its_last_cursor_never_misses_an_event_that_committed_late(
    backend: Backend,
) -> None:
    """Transaction 1 appends and stays open; transaction 2 starts meanwhile; a reader reads, then both commit. Resuming
    after the last cursor the reader saw must yield every event it has not seen: were cursors handed out at insert
    time (a sequence), transaction 2's event could be seen first and transaction 1's, with a smaller cursor, missed."""
    first, second, reader = backend.open(), backend.open(), backend.open()
    appended, release = threading.Event(), threading.Event()

    def slow(tx: Tx) -> int:
        cursor = tx.append(event(PAIR, n="first"))
        appended.set()
        release.wait(10)
        return cursor

    def quick(tx: Tx) -> int:
        return tx.append(event(OTHER_PAIR, n="second"))

    slow_one = asyncio.ensure_future(first.transaction(slow))
    try:
        assert await asyncio.to_thread(appended.wait, 5)
        quick_one = asyncio.ensure_future(second.transaction(quick))
        await asyncio.sleep(0.3)  # as far as the backend lets it go while the first is open
        seen = await reader.events_after(0)
    finally:
        release.set()
    await asyncio.gather(slow_one, quick_one)
    resumed = await reader.events_after(max((e.cursor for e in seen), default=0))
    assert sorted(e.attributes["n"] for e in seen + resumed) == ["first", "second"]
    assert [e.cursor for e in seen + resumed] == sorted(e.cursor for e in seen + resumed)


async def test_a_tailing_reader_sees_every_event_of_concurrent_writers_once_in_cursor_order(backend: Backend) -> None:
    writers = [backend.open() for _ in range(3)]
    reader = backend.open()
    transactions = 15

    def write(tx: Tx, writer: int, number: int) -> None:
        for part in range(2):
            tx.append(event(PAIR, n=f"{writer}.{number}.{part}"))
            time.sleep(random.uniform(0, 0.002))  # held open between appends

    async def write_all(writer: int) -> None:
        for number in range(transactions):
            await writers[writer].transaction(partial(write, writer=writer, number=number))

    seen: list[EventRecord] = []
    done = asyncio.Event()

    async def tail() -> None:
        cursor = 0
        while True:
            finished = done.is_set()  # read before the batch: a last pass after the writers finished
            batch = await reader.events_after(cursor, limit=7)
            seen.extend(batch)
            cursor = batch[-1].cursor if batch else cursor
            if finished and not batch:
                return
            if not batch:
                await asyncio.sleep(0.001)

    tailing = asyncio.ensure_future(tail())
    await asyncio.gather(*(write_all(w) for w in range(len(writers))))
    done.set()
    await asyncio.wait_for(tailing, 30)
    names = [e.attributes["n"] for e in seen]
    assert len(names) == len(set(names)) == 3 * transactions * 2
    assert [e.cursor for e in seen] == sorted({e.cursor for e in seen})
    # Each transaction's events are adjacent: nothing committed in between them.
    for index in range(0, len(seen), 2):
        assert names[index].rsplit(".", 1)[0] == names[index + 1].rsplit(".", 1)[0]


async def test_the_last_cursor_read_before_commits_yields_exactly_those_commits(backend: Backend) -> None:
    store, other = backend.open(), backend.open()
    await store.transaction(lambda tx: tx.append(event(n="before")))
    mark = await store.last_cursor()
    await other.transaction(lambda tx: tx.append(event(n="after")))
    assert [e.attributes["n"] for e in await store.events_after(mark)] == ["after"]


async def test_the_latest_recorded_time_is_the_newest_not_the_last_appended(store: Store) -> None:
    assert await store.transaction(lambda tx: tx.latest_recorded_at()) is None
    await store.transaction(lambda tx: tx.append(event(at=AT + timedelta(hours=1))))
    await store.transaction(lambda tx: tx.append(event(at=AT)))
    assert await store.transaction(lambda tx: tx.latest_recorded_at()) == AT + timedelta(hours=1)


# --- notify on commit -----------------------------------------------------------------------------------------------


async def test_a_listener_is_woken_after_the_commit_and_then_reads_what_it_wrote(backend: Backend) -> None:
    store, elsewhere = backend.open(), backend.open()
    ticket = store.changes.ticket()
    read_when_woken: list[EventRecord] = []

    async def listen() -> None:
        await ticket.wait()
        read_when_woken.extend(await elsewhere.events_after(0))

    listener = asyncio.ensure_future(listen())

    def write(tx: Tx) -> None:
        tx.append(event(n="one"))
        time.sleep(0.2)  # a notification sent before the commit would be heard during this

    await store.transaction(write)
    await asyncio.wait_for(listener, 5)
    assert [e.attributes["n"] for e in read_when_woken] == ["one"]


async def test_saving_a_call_notifies_and_every_listener_wakes_once_per_notification(store: Store) -> None:
    first = store.changes.ticket()
    await store.transaction(lambda tx: tx.save_call(call("call_a")))
    await asyncio.wait_for(first.wait(), 5)
    second = store.changes.ticket()
    assert second is not first and not second.is_set()
    await store.transaction(lambda tx: tx.append(event()))
    await asyncio.wait_for(second.wait(), 5)


async def test_a_commit_notifies_even_when_its_caller_stopped_waiting(store: Store) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(tx: Tx) -> None:
        tx.append(event(n="kept"))
        entered.set()
        release.wait(10)

    caller = asyncio.ensure_future(store.transaction(slow))
    try:
        assert await asyncio.to_thread(entered.wait, 5)
        ticket = store.changes.ticket()
        caller.cancel()  # a cancelled RPC
        await asyncio.sleep(0)
    finally:
        release.set()
    await asyncio.wait_for(ticket.wait(), 5)
    assert [e.attributes["n"] for e in await store.events_after(0)] == ["kept"]


# --- keys, messages, aliases, idempotency ---------------------------------------------------------------------------


async def test_a_key_is_claimed_once_across_stores(backend: Backend) -> None:
    stores = [backend.open() for _ in range(3)]
    results = await asyncio.gather(
        *(s.transaction(lambda tx: tx.claim("message:wamid.IN1", AT)) for s in stores for _ in range(5))
    )
    assert sorted(results) == [False] * 14 + [True]
    assert await stores[0].transaction(lambda tx: tx.claim("message:wamid.IN2", AT))


async def test_a_message_keeps_the_pair_and_time_it_was_first_sent_to(store: Store) -> None:
    await store.transaction(lambda tx: tx.remember_message("wamid.OUT1", PAIR, AT))
    await store.transaction(lambda tx: tx.remember_message("wamid.OUT1", OTHER_PAIR, AT + timedelta(hours=1)))

    def read(tx: Tx) -> tuple[Any, ...]:
        return tx.message_pair("wamid.OUT1"), tx.message_sent_at("wamid.OUT1"), tx.message_pair("wamid.NONE")

    assert await store.transaction(read) == (PAIR, AT, None)
    assert await store.transaction(lambda tx: tx.message_sent_at("wamid.NONE")) is None


async def test_an_alias_maps_the_platforms_wa_id_to_our_user_and_back(store: Store) -> None:
    def learn(tx: Tx) -> None:
        tx.remember_alias("34600000001", PAIR.user)
        tx.remember_alias("34600000002", PAIR.user)  # the platform's latest form for the same user
        tx.remember_alias("5511900000000", OTHER_PAIR.user)

    await store.transaction(learn)

    def read(tx: Tx) -> tuple[Any, ...]:
        return (tx.alias("34600000001"), tx.alias("34600000002"), tx.alias("1"), tx.wa_id_of(PAIR.user),
                tx.wa_id_of(OTHER_PAIR.user), tx.wa_id_of("+4915112345678"))  # fmt: skip

    assert await store.transaction(read) == (PAIR.user, PAIR.user, None, "34600000002", "5511900000000", None)
    await store.transaction(lambda tx: tx.remember_alias("34600000001", OTHER_PAIR.user))
    assert await store.transaction(lambda tx: tx.alias("34600000001")) == OTHER_PAIR.user


async def test_an_idempotency_key_keeps_its_fingerprint_and_its_latest_outcome_per_business(store: Store) -> None:
    pending = IdempotentResult(BUSINESS, "order-1", "fp-1", {"status": "pending"})
    await store.transaction(lambda tx: tx.save_idempotent_result(pending, AT))
    sent = IdempotentResult(BUSINESS, "order-1", "fp-other", {"status": "sent", "message_id": "wamid.1"})
    await store.transaction(lambda tx: tx.save_idempotent_result(sent, AT))

    def read(tx: Tx) -> tuple[Any, ...]:
        return tx.idempotent_result(BUSINESS, "order-1"), tx.idempotent_result(OTHER_BUSINESS, "order-1")

    assert await store.transaction(read) == (
        IdempotentResult(BUSINESS, "order-1", "fp-1", {"status": "sent", "message_id": "wamid.1"}),
        None,
    )


async def test_refused_webhooks_are_kept_byte_for_byte_oldest_first(store: Store) -> None:
    bodies = [(AT, "malformed: entry[0]", b'{"entry": 1}'), (AT + timedelta(seconds=1), "too old", b"\xff\x00\xfe")]

    def keep(tx: Tx) -> None:
        tx.keep_webhook(b'{"object": "whatsapp_business_account"}', AT)
        for at, reason, body in bodies:
            tx.keep_refused_webhook(body, at, reason)

    await store.transaction(keep)
    assert await store.transaction(lambda tx: tx.refused_webhooks()) == bodies


# --- reservations ---------------------------------------------------------------------------------------------------


async def test_a_reservation_is_found_by_key_and_taken_once_by_its_holder(store: Store) -> None:
    keyed = reservation("r1", AT, key="order-1")
    await store.transaction(lambda tx: tx.save_reservation(keyed))
    assert await store.transaction(lambda tx: tx.reservation_for_key(BUSINESS, "order-1")) == keyed
    assert await store.transaction(lambda tx: tx.reservation_for_key(OTHER_BUSINESS, "order-1")) is None

    def claim(tx: Tx) -> list[Reservation]:
        return tx.claim_reservations(reserved_before=AT, claims_expire_before=AT, claimant="p1", now=AT)

    (claimed,) = await store.transaction(claim)
    assert claimed == replace(keyed, claimed_by="p1", claimed_at=AT)
    assert await store.transaction(lambda tx: tx.take_reservation("r1", "p2")) is None  # not its holder
    assert await store.transaction(lambda tx: tx.take_reservation("r1", "p1")) == claimed
    assert await store.transaction(lambda tx: tx.take_reservation("r1")) is None
    unkeyed = reservation("r2", AT)
    await store.transaction(lambda tx: tx.save_reservation(unkeyed))
    assert await store.transaction(lambda tx: tx.take_reservation("r2")) == unkeyed


async def test_reservations_are_claimed_when_old_enough_and_unheld_or_held_too_long(store: Store) -> None:
    horizon = AT - timedelta(seconds=60)

    def setup(tx: Tx) -> None:
        tx.save_reservation(reservation("young", horizon + timedelta(microseconds=1)))
        tx.save_reservation(reservation("at-the-horizon", horizon))
        tx.save_reservation(reservation("older", horizon - timedelta(seconds=5), OTHER_PAIR))
        tx.save_reservation(reservation("in-flight", horizon - timedelta(seconds=9)))
        held = replace(reservation("held", horizon - timedelta(seconds=8)), claimed_by="p0", claimed_at=horizon)
        tx.save_reservation(held)
        live = replace(reservation("held-live", horizon - timedelta(seconds=7)), claimed_by="p0", claimed_at=AT)
        tx.save_reservation(live)

    await store.transaction(setup)

    def claim(tx: Tx) -> list[Reservation]:
        return tx.claim_reservations(
            reserved_before=horizon,
            claims_expire_before=horizon,
            claimant="p1",
            now=AT,
            excluding=frozenset({"in-flight"}),
        )

    claimed = await store.transaction(claim)
    assert [r.reservation_id for r in claimed] == ["held", "older", "at-the-horizon"]  # oldest first
    assert all(r.claimed_by == "p1" and r.claimed_at == AT for r in claimed)
    assert await store.transaction(claim) == []  # now held, and not for long


async def test_each_reservation_is_claimed_by_exactly_one_of_several_stores(backend: Backend) -> None:
    stores = [backend.open() for _ in range(3)]

    def setup(tx: Tx) -> None:
        for index in range(20):
            tx.save_reservation(reservation(f"r{index}", AT - timedelta(minutes=5, seconds=index)))

    await stores[0].transaction(setup)

    def claim(tx: Tx, claimant: str) -> list[Reservation]:
        return tx.claim_reservations(reserved_before=AT, claims_expire_before=AT - timedelta(minutes=10),
                                     claimant=claimant, now=AT)  # fmt: skip

    results = await asyncio.gather(
        *(s.transaction(partial(claim, claimant=f"p{i}.{n}")) for i, s in enumerate(stores) for n in range(4))
    )
    claimed = [r.reservation_id for batch in results for r in batch]
    assert sorted(claimed) == sorted(f"r{i}" for i in range(20))  # each once, none twice


# --- calls ----------------------------------------------------------------------------------------------------------


async def test_a_call_is_created_updated_and_found_by_id_platform_id_and_pair(store: Store) -> None:
    created = call("call_a", data={"facts": {"state": "dialing"}, "route": "announcement"})
    await store.transaction(lambda tx: tx.save_call(created))
    bound = replace(created, state="ringing", platform_call_id="wacid.A", data={"facts": {"state": "ringing"}})
    await store.transaction(lambda tx: tx.save_call(bound))

    def read(tx: Tx) -> tuple[Any, ...]:
        return (tx.call("call_a"), tx.call_by_platform_id("wacid.A"), tx.active_call(PAIR), tx.open_calls(),
                tx.call("call_none"), tx.call_by_platform_id("wacid.NONE"), tx.active_call(OTHER_PAIR))  # fmt: skip

    assert await store.transaction(read) == (bound, bound, bound, [bound], None, None, None)
    ended = replace(bound, state="ended", active=False)
    await store.transaction(lambda tx: tx.save_call(ended))
    assert await store.transaction(lambda tx: (tx.call("call_a"), tx.active_call(PAIR), tx.open_calls())) == (
        ended,
        None,
        [],
    )


async def test_a_pair_has_one_active_call_at_most_and_a_refused_second_one_writes_nothing(store: Store) -> None:
    await store.transaction(lambda tx: tx.save_call(call("call_a")))

    def second(tx: Tx) -> None:
        tx.append(event(n="lost"))
        tx.save_call(call("call_b", created_at=AT + timedelta(seconds=1)))

    with pytest.raises(CallInProgress):
        await store.transaction(second)
    assert await store.events_after(0) == []
    assert await store.transaction(lambda tx: tx.call("call_b")) is None
    # Another pair may call meanwhile, and the pair again once its call ended.
    await store.transaction(lambda tx: tx.save_call(call("call_c", OTHER_PAIR)))
    await store.transaction(lambda tx: tx.save_call(call("call_a", active=False)))
    await store.transaction(lambda tx: tx.save_call(call("call_b", created_at=AT + timedelta(seconds=1))))
    open_ids = [c.call_id for c in await store.transaction(lambda tx: tx.open_calls())]
    assert sorted(open_ids) == ["call_b", "call_c"]


async def test_calls_are_listed_newest_first_page_by_page(store: Store) -> None:
    calls = [
        call("call_1", PAIR, AT, active=False),
        call("call_2", OTHER_PAIR, AT + timedelta(seconds=1), active=False),
        call("call_3a", ELSEWHERE, AT + timedelta(seconds=2), active=False),
        call("call_3b", PAIR, AT + timedelta(seconds=2), active=False),  # same instant: by call id
        call("call_4", PAIR, AT + timedelta(seconds=3)),
    ]

    def save(tx: Tx) -> None:
        for stored in calls:
            tx.save_call(stored)

    await store.transaction(save)
    newest_first = ["call_4", "call_3b", "call_3a", "call_2", "call_1"]
    listed = await store.list_calls(business=None, user=None, before=None, limit=10)
    assert [c.call_id for c in listed] == newest_first and listed[0] == calls[-1]
    pages, before = [], None
    while page := await store.list_calls(business=None, user=None, before=before, limit=2):
        pages.append([c.call_id for c in page])
        before = (to_micros(page[-1].created_at), page[-1].call_id)
    assert pages == [["call_4", "call_3b"], ["call_3a", "call_2"], ["call_1"]]
    by_business = await store.list_calls(business=BUSINESS, user=None, before=None, limit=10)
    assert [c.call_id for c in by_business] == ["call_4", "call_3b", "call_2", "call_1"]
    by_user = await store.list_calls(business=None, user=PAIR.user, before=None, limit=10)
    assert [c.call_id for c in by_user] == ["call_4", "call_3b", "call_3a", "call_1"]
    both = await store.list_calls(business=BUSINESS, user=PAIR.user, before=(to_micros(calls[-1].created_at), "call_4"),
                                  limit=10)  # fmt: skip
    assert [c.call_id for c in both] == ["call_3b", "call_1"]


async def test_calls_with_platform_errors_are_those_whose_facts_record_a_code(store: Store) -> None:
    def save(tx: Tx) -> None:
        tx.save_call(call("call_failed", PAIR, active=False, data={"facts": {"error_codes": [138019]}}))
        tx.save_call(call("call_clean", OTHER_PAIR, active=False, data={"facts": {"error_codes": []}}))
        tx.save_call(call("call_old", ELSEWHERE, active=False, data={"facts": {}}))

    await store.transaction(save)
    found = await store.transaction(lambda tx: tx.calls_with_platform_errors())
    assert [c.call_id for c in found] == ["call_failed"]


async def test_parked_call_events_are_taken_once_in_the_order_they_were_parked(store: Store) -> None:
    def park(tx: Tx) -> None:
        tx.park_call_event("wacid.A", {"kind": "connect", "n": 1}, AT)
        tx.park_call_event("wacid.B", {"kind": "ringing"}, AT)
        tx.park_call_event("wacid.A", {"kind": "ringing", "n": 2}, AT)

    await store.transaction(park)
    assert await store.transaction(lambda tx: tx.take_parked_call_events("wacid.A")) == [
        {"kind": "connect", "n": 1},
        {"kind": "ringing", "n": 2},
    ]
    assert await store.transaction(lambda tx: tx.take_parked_call_events("wacid.A")) == []
    assert await store.transaction(lambda tx: tx.take_parked_call_events("wacid.B")) == [{"kind": "ringing"}]


# --- call ownership: leases -----------------------------------------------------------------------------------------


def owned(call_id: str, owner: str, lease_expires_at: datetime | None, pair: Pair = PAIR, *, active: bool = True,
          created_at: datetime = AT) -> StoredCall:  # fmt: skip
    return replace(call(call_id, pair, created_at, active=active), owner=owner, lease_expires_at=lease_expires_at)


async def test_a_call_keeps_the_owner_and_lease_it_was_created_with_when_saved_again(store: Store) -> None:
    created = owned("call_a", "p1", AT + timedelta(seconds=30))
    await store.transaction(lambda tx: tx.save_call(created))
    # Saved again from a record that knows nothing of owners (a later state, say): ownership stays.
    await store.transaction(lambda tx: tx.save_call(replace(created, state="ended", active=False, owner="",
                                                                    lease_expires_at=None)))  # fmt: skip
    stored = await store.transaction(lambda tx: tx.call("call_a"))
    assert stored is not None and (stored.owner, stored.lease_expires_at, stored.state) == (
        "p1",
        AT + timedelta(seconds=30),
        "ended",
    )


async def test_an_owner_renews_the_leases_of_its_open_calls_only(store: Store) -> None:
    lease = AT + timedelta(seconds=30)

    def setup(tx: Tx) -> None:
        tx.save_call(owned("call_a", "p1", lease, PAIR))
        tx.save_call(owned("call_b", "p1", lease, OTHER_PAIR))
        tx.save_call(owned("call_c", "p1", lease, ELSEWHERE, active=False))
        tx.save_call(owned("call_d", "p2", lease, ELSEWHERE))

    await store.transaction(setup)
    renewed = AT + timedelta(seconds=40)
    assert await store.transaction(lambda tx: tx.renew_call_leases("p1", renewed)) == 2
    leases = await store.transaction(lambda tx: [(c.call_id, c.owner, c.lease_expires_at) for c in tx.open_calls()])
    assert leases == [("call_a", "p1", renewed), ("call_b", "p1", renewed), ("call_d", "p2", lease)]
    ended = await store.transaction(lambda tx: tx.call("call_c"))
    assert ended is not None and ended.lease_expires_at == lease


async def test_only_open_calls_whose_lease_expired_or_that_have_no_owner_are_claimed(store: Store) -> None:
    now = AT + timedelta(minutes=1)

    def setup(tx: Tx) -> None:
        for index, (call_id, owner, lease, active) in enumerate([
            ("call_unowned", "", None, True),  # stored before calls had owners
            ("call_live", "p1", now + timedelta(microseconds=1), True),
            ("call_long_expired", "p2", now - timedelta(hours=1), True),
            ("call_claimants_own", "p9", now - timedelta(hours=1), True),
            ("call_ended", "p2", now - timedelta(hours=1), False),
            ("call_expiring_now", "p1", now, True),
        ]):  # fmt: skip
            pair = Pair(BUSINESS, f"+3461234{index:04d}")
            tx.save_call(owned(call_id, owner, lease, pair, active=active, created_at=AT + timedelta(seconds=index)))

    await store.transaction(setup)
    lease_until = now + timedelta(seconds=30)

    def claim(claimant: str) -> Callable[[Tx], list[StoredCall]]:
        return lambda tx: tx.claim_expired_calls(claimant=claimant, now=now, lease_until=lease_until)

    claimed = await store.transaction(claim("p9"))
    assert [c.call_id for c in claimed] == ["call_unowned", "call_long_expired", "call_expiring_now"]  # oldest first
    assert all(c.owner == "p9" and c.lease_expires_at == lease_until and c.active for c in claimed)
    reread = await store.transaction(lambda tx: {c.call_id: (c.owner, c.lease_expires_at) for c in tx.open_calls()})
    assert reread["call_unowned"] == ("p9", lease_until) and reread["call_live"][0] == "p1"
    # For another claimant, the claimed ones are leased now and the live one is live: only p9's own expired one.
    assert [c.call_id for c in await store.transaction(claim("p3"))] == ["call_claimants_own"]
    assert await store.transaction(claim("p4")) == []


async def test_every_store_on_one_database_reads_the_same_clock_for_leases(backend: Backend) -> None:
    """Leases are written and compared on the store's clock, whichever process reads it (the test's database runs
    on this machine, so that clock is this machine's here)."""
    first, second = backend.open(), backend.open()
    before = datetime.now(UTC)
    read_first = await first.transaction(lambda tx: tx.store_now())
    read_second = await second.transaction(lambda tx: tx.store_now())
    after = datetime.now(UTC)
    assert read_first.tzinfo is not None and read_first <= read_second
    assert before - timedelta(seconds=1) <= read_first <= read_second <= after + timedelta(seconds=1)


async def test_an_expired_call_is_claimed_by_exactly_one_of_several_stores(backend: Backend) -> None:
    stores = [backend.open() for _ in range(3)]

    def setup(tx: Tx) -> None:
        for index in range(12):
            tx.save_call(owned(f"call_{index}", "gone", AT, Pair(BUSINESS, f"+3461234{index:04d}")))

    await stores[0].transaction(setup)

    def claim(tx: Tx, claimant: str) -> list[StoredCall]:
        return tx.claim_expired_calls(claimant=claimant, now=AT, lease_until=AT + timedelta(seconds=30))

    results = await asyncio.gather(
        *(s.transaction(partial(claim, claimant=f"p{i}.{n}")) for i, s in enumerate(stores) for n in range(4))
    )
    claimed = [c.call_id for batch in results for c in batch]
    assert sorted(claimed) == sorted(f"call_{index}" for index in range(12))


# --- the replica registry --------------------------------------------------------------------------------------------

LATER = timedelta(seconds=15)


async def test_a_replica_is_found_by_instance_and_its_latest_address_and_heartbeat_replace_the_earlier(
    backend: Backend,
) -> None:
    first, second = backend.open(), backend.open()
    assert await first.transaction(lambda tx: tx.replica("host-a/1")) is None
    await first.transaction(lambda tx: tx.save_replica(Replica("host-a/1", "10.0.0.1:50051", AT)))
    await first.transaction(lambda tx: tx.save_replica(Replica("host-b/2", "10.0.0.2:50051", AT)))
    renewed = Replica("host-a/1", "10.0.0.9:50051", AT + timedelta(seconds=15, microseconds=7))
    await second.transaction(lambda tx: tx.save_replica(renewed))
    # Another store (another process) reads what the last save wrote, to the microsecond; the others stay.
    assert await first.transaction(lambda tx: tx.replica("host-a/1")) == renewed
    assert await second.transaction(lambda tx: tx.replica("host-b/2")) == Replica("host-b/2", "10.0.0.2:50051", AT)


async def test_replicas_whose_heartbeat_expired_before_a_time_are_forgotten(store: Store) -> None:
    def record(tx: Tx) -> None:
        for index, expires in enumerate((AT - timedelta(hours=2), AT - timedelta(microseconds=1), AT, AT + LATER)):
            tx.save_replica(Replica(f"host/{index}", f"10.0.0.{index}:50051", expires))

    await store.transaction(record)
    assert await store.transaction(lambda tx: tx.forget_replicas(AT)) == 2
    kept = await store.transaction(lambda tx: [tx.replica(f"host/{index}") for index in range(4)])
    assert [r.instance if r else None for r in kept] == [None, None, "host/2", "host/3"]


async def test_a_replica_saved_in_a_transaction_that_raises_is_not_kept(store: Store) -> None:
    def save_then_fail(tx: Tx) -> None:
        tx.save_replica(Replica("host-a/1", "10.0.0.1:50051", AT))
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await store.transaction(save_then_fail)
    assert await store.transaction(lambda tx: tx.replica("host-a/1")) is None


# --- the contact centre's router state --------------------------------------------------------------------------------


async def test_the_router_state_starts_absent_and_each_save_replaces_it_under_the_next_version(
    backend: Backend,
) -> None:
    store = backend.open()
    assert await store.transaction(lambda tx: (tx.router_version(), tx.router_state())) == (0, None)
    assert await store.transaction(lambda tx: tx.save_router_state('{"a": 1}')) == 1
    assert await store.transaction(lambda tx: tx.save_router_state('{"a": 2}')) == 2
    assert await store.transaction(lambda tx: (tx.router_version(), tx.router_state())) == (2, (2, '{"a": 2}'))
    # Another store on the same database (another process) reads the same version and state.
    assert await backend.open().transaction(lambda tx: tx.router_state()) == (2, '{"a": 2}')


async def test_a_router_state_save_that_rolls_back_keeps_the_version_and_state_before_it(store: Store) -> None:
    await store.transaction(lambda tx: tx.save_router_state("kept"))

    def save_then_fail(tx: Tx) -> None:
        tx.save_router_state("lost")
        raise RuntimeError("the step failed")

    with pytest.raises(RuntimeError):
        await store.transaction(save_then_fail)
    assert await store.transaction(lambda tx: tx.router_state()) == (1, "kept")


async def test_concurrent_router_steps_from_several_stores_each_see_the_version_the_last_one_saved(
    backend: Backend,
) -> None:
    stores = [backend.open() for _ in range(3)]

    def step(tx: Tx) -> int:
        version = tx.router_version()
        state = tx.router_state()
        count = int(state[1]) if state is not None else 0
        assert state is None or state[0] == version
        return tx.save_router_state(str(count + 1))

    versions = await asyncio.gather(*(s.transaction(step) for s in stores for _ in range(5)))
    assert sorted(versions) == list(range(1, 16))
    assert await stores[0].transaction(lambda tx: tx.router_state()) == (15, "15")


# --- the suite covers the interface ----------------------------------------------------------------------------------


def test_every_store_and_tx_method_is_exercised_by_this_suite() -> None:
    source = Path(__file__).read_text()
    members = [name for name in vars(Tx) if not name.startswith("_")]
    members += [name for name in vars(Store) if not name.startswith("_")]
    missing = [name for name in members if f".{name}(" not in source and f".{name}." not in source]
    assert len(members) > 30 and missing == []
