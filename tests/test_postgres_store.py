"""What the PostgreSQL backend adds to the store contract (test_store_contract.py runs it on PostgreSQL too):
stores in several processes deciding for one pair at once, cursors in commit order proven with raw transactions
held open, LISTEN/NOTIFY across stores, an outage and the recovery from it, the schema's migrations, and the whole
service on PostgreSQL through gRPC and signed webhooks. A real PostgreSQL 15 on loopback (`postgres_server`)."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psycopg
import pytest
from conftest import USER, Running, refused, settings_for, start_service, stop_service
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from postgres_server import PostgresServer
from test_webhooks import deliver, wamid
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.numbers import parse_number
from wacall.rules.engine import Ledger, PermissionState, Restriction
from wacall.store import (
    SCHEMA_VERSION,
    CallInProgress,
    EventRecord,
    Pair,
    SchemaTooNew,
    Store,
    StoredCall,
    StoreUnavailable,
    Tx,
    migrate_database,
    open_store,
)
from wacall.store.postgres import PostgresStore, _PostgresTx
from wacall.upstreams.meta import wire

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PAIR = Pair("+447911123456", "+34612345678")
OTHER = Pair("+447911123456", "+5511987654321")


def event(pair: Pair = PAIR, n: str = "") -> EventRecord:
    return EventRecord(pair, "permission_request_sent", "business", AT, AT, PermissionState.REQUESTED, {"n": n})


@pytest.fixture
async def database(postgres_server: PostgresServer) -> AsyncIterator[str]:
    yield postgres_server.create_database()


@pytest.fixture
async def stores(database: str) -> AsyncIterator[Callable[[], Store]]:
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(open_store(database))
        return opened[-1]

    yield open_one
    for store in opened:
        await store.close()


def request_once(tx: Tx, pair: Pair = PAIR) -> bool:
    """What a permission request's decision does: read the pair, and use up its one request if it is unused."""
    ledger = tx.ledger(pair)
    if ledger.request_times:
        return False
    time.sleep(0.001)  # widen the gap between the read and the write
    tx.append(event(pair))
    tx.save_ledger(pair, replace(ledger, state=PermissionState.REQUESTED, request_times=(AT,)), AT)
    return True


# --- decisions across stores and processes ------------------------------------------------------------------------


async def test_two_stores_deciding_for_one_pair_at_once_use_its_limit_exactly_once(
    stores: Callable[[], Store],
) -> None:
    first, second = stores(), stores()
    decided = await asyncio.gather(*(s.transaction(request_once) for s in (first, second) for _ in range(20)))
    assert sorted(decided) == [False] * 39 + [True]
    assert len(await first.events_after(0)) == 1


def _decide_in_a_process(url: str, start_at: float, attempts: int) -> int:
    """Runs in its own process: `attempts` concurrent decisions for PAIR, from `start_at` (wall time) on."""

    async def main() -> int:
        store = open_store(url)
        try:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            decided = await asyncio.gather(*(store.transaction(request_once) for _ in range(attempts)))
            return sum(decided)
        finally:
            await store.close()

    return asyncio.run(main())


async def test_two_processes_deciding_for_one_pair_at_once_use_its_limit_exactly_once(database: str) -> None:
    migrate_database(database)  # before the processes race (they would wait on the migration lock anyway)
    start_at = time.time() + 3
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        granted = pool.starmap(_decide_in_a_process, [(database, start_at, 30), (database, start_at, 30)])
    assert sum(granted) == 1
    with psycopg.connect(database) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (1,)


async def test_decisions_for_two_pairs_of_one_business_do_not_wait_for_each_other_but_a_pause_waits_for_them(
    stores: Callable[[], Store],
) -> None:
    """Every decision reads its business's pause: a shared lock, so one business's decisions run side by side. A
    pause being written takes it exclusively: it waits until the decisions that read the old one have committed."""
    holding, other, pausing = stores(), stores(), stores()
    read, release = threading.Event(), threading.Event()

    def decide_and_hold(tx: Tx) -> bool:
        tx.restriction(PAIR.business)
        decided = request_once(tx, PAIR)
        read.set()
        release.wait(10)
        return decided

    held = asyncio.ensure_future(holding.transaction(decide_and_hold))
    try:
        assert await asyncio.to_thread(read.wait, 5)
        # Another pair of the same business is decided while the first decision is still open.
        assert await asyncio.wait_for(
            other.transaction(lambda tx: (tx.restriction(OTHER.business), request_once(tx, OTHER))[1]), 10
        )
        pause = asyncio.ensure_future(
            pausing.transaction(lambda tx: tx.save_restriction(PAIR.business, Restriction(None), AT))
        )
        await asyncio.sleep(0.5)
        assert not pause.done()  # waits for the decision that read "no pause"
    finally:
        release.set()
    assert await held
    await asyncio.wait_for(pause, 10)
    assert await other.transaction(lambda tx: tx.restriction(PAIR.business)) == Restriction(None)


async def test_a_transaction_chosen_as_a_deadlock_victim_is_run_again_and_both_commit(
    stores: Callable[[], Store],
) -> None:
    """Two transactions lock two pairs in opposite orders: PostgreSQL aborts one (40P01), the store runs its function
    again from scratch, and both increments are kept."""
    first, second = stores(), stores()
    both_hold_one = threading.Barrier(2, timeout=10)
    runs: list[str] = []

    def count_both(name: str, pairs: tuple[Pair, Pair]) -> Callable[[Tx], None]:
        def count(tx: Tx) -> None:
            runs.append(name)
            ledgers = [tx.ledger(pairs[0])]
            if runs.count(name) == 1:
                both_hold_one.wait()  # the first run of each holds one pair's lock and asks for the other's
            ledgers.append(tx.ledger(pairs[1]))
            for pair, ledger in zip(pairs, ledgers, strict=True):
                tx.save_ledger(pair, replace(ledger, consecutive_unanswered=ledger.consecutive_unanswered + 1), AT)

        return count

    await asyncio.gather(
        first.transaction(count_both("first", (PAIR, OTHER))), second.transaction(count_both("second", (OTHER, PAIR)))
    )
    assert sorted(runs) in (["first", "first", "second"], ["first", "second", "second"])
    counts = await first.transaction(lambda tx: (tx.ledger(PAIR), tx.ledger(OTHER)))
    assert [ledger.consecutive_unanswered for ledger in counts] == [2, 2]


async def test_one_active_call_per_pair_holds_across_stores(stores: Callable[[], Store]) -> None:
    first, second = stores(), stores()

    def place(call_id: str) -> Callable[[Tx], str]:
        def save(tx: Tx) -> str:
            tx.save_call(StoredCall(call_id, PAIR, "business_initiated", AT, "dialing", {}, owner="me"))
            return call_id

        return save

    results = await asyncio.gather(
        *(s.transaction(place(f"call_{s is first}_{n}")) for s in (first, second) for n in range(10)),
        return_exceptions=True,
    )
    placed = [r for r in results if isinstance(r, str)]
    assert len(placed) == 1 and all(isinstance(r, CallInProgress) for r in results if r not in placed)
    assert (await second.transaction(lambda tx: tx.active_call(PAIR))).call_id == placed[0]  # type: ignore[union-attr]


# --- cursors in commit order ---------------------------------------------------------------------------------------


async def test_an_event_of_a_transaction_that_began_first_and_committed_last_is_never_skipped(
    stores: Callable[[], Store], database: str
) -> None:
    """Transaction A takes its id first, B after it; B appends and commits while A is still open. A reader then sees
    neither (A, still running, is the horizon), and after A commits both, A's first: resuming after the last
    cursor it saw, a reader misses nothing. A plain read of the table shows what a sequence would have got wrong."""
    reader = stores()
    with psycopg.connect(database) as a, psycopg.connect(database) as b:
        a_tx, b_tx = _PostgresTx(a), _PostgresTx(b)
        a.execute("SELECT pg_current_xact_id()")  # A's id: the smaller one
        b_cursor = b_tx.append(event(OTHER, "b"))
        b.commit()
        naive = [row[0] for row in reader_rows(database)]
        assert naive == [b_cursor]  # committed and visible to a plain read: a sequence reader would move past it
        assert await reader.events_after(0) == []
        assert await reader.last_cursor() == 0
        a_cursor = a_tx.append(event(PAIR, "a"))
        assert a_cursor < b_cursor
        a.commit()
    seen = await reader.events_after(0)
    assert [(e.attributes["n"], e.cursor) for e in seen] == [("a", a_cursor), ("b", b_cursor)]
    assert await reader.last_cursor() == b_cursor


def reader_rows(database: str) -> list[tuple[int]]:
    with psycopg.connect(database) as db:
        return db.execute("SELECT cursor FROM events ORDER BY cursor").fetchall()


async def test_a_reader_held_back_by_a_running_writer_is_woken_when_it_ends(
    stores: Callable[[], Store], database: str
) -> None:
    reader, writer = stores(), stores()
    with psycopg.connect(database) as holder:
        holder.execute("SELECT pg_current_xact_id()")  # a writer anywhere that began before the event
        await writer.transaction(lambda tx: tx.append(event(n="late")))
        assert await reader.events_after(0) == []
        ticket = reader.changes.events_ticket()
        holder.rollback()
    await asyncio.wait_for(ticket.wait(), 5)
    assert [e.attributes["n"] for e in await reader.events_after(0)] == ["late"]


# --- notifications ---------------------------------------------------------------------------------------------------


async def test_a_commit_in_one_store_wakes_another_stores_listeners_and_a_rollback_does_not(
    stores: Callable[[], Store],
) -> None:
    writer, listener = stores(), stores()
    await listener.last_cursor()  # the listener's store is running on this loop
    ticket = listener.changes.ticket()

    def fail(tx: Tx) -> None:
        tx.append(event(n="rolled back"))
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        await writer.transaction(fail)
    await asyncio.sleep(1.0)  # a notification of the rollback would have arrived by now
    assert not ticket.is_set()
    await writer.transaction(lambda tx: tx.save_call(StoredCall("call_n", PAIR, "business_initiated", AT, "x", {})))
    await asyncio.wait_for(ticket.wait(), 5)


# --- an outage -------------------------------------------------------------------------------------------------------


async def test_while_the_database_is_down_calls_fail_unavailable_in_time_and_recover_without_a_restart(
    stores: Callable[[], Store], postgres_server: PostgresServer
) -> None:
    store = stores()
    await store.transaction(lambda tx: tx.save_ledger(PAIR, Ledger(state=PermissionState.PERMANENT), AT))
    postgres_server.stop()
    try:
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.transaction(lambda tx: tx.ledger(PAIR)), 30)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.events_after(0), 30)
    finally:
        postgres_server.start()
    # The same store, no restart: the pool reconnects by itself, and what committed before the outage is there.
    assert await asyncio.wait_for(store.transaction(lambda tx: tx.ledger(PAIR)), 30) == Ledger(
        state=PermissionState.PERMANENT
    )
    ticket = store.changes.ticket()
    await store.transaction(lambda tx: tx.append(event(n="after")))
    await asyncio.wait_for(ticket.wait(), 5)


def test_opening_a_store_on_an_unreachable_server_is_store_unavailable() -> None:
    with socket_nobody_listens_on() as port, pytest.raises(StoreUnavailable, match="cannot reach"):
        open_store(f"postgresql://postgres@127.0.0.1:{port}/nothing")


class socket_nobody_listens_on:
    def __enter__(self) -> int:
        import socket

        self._probe = socket.socket()
        self._probe.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        return int(self._probe.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self._probe.close()


# --- the schema ------------------------------------------------------------------------------------------------------


async def test_migrations_run_once_and_a_database_from_a_newer_wacall_is_refused_unchanged(database: str) -> None:
    assert migrate_database(database) == (0, SCHEMA_VERSION)
    assert migrate_database(database) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with psycopg.connect(database) as db:
        db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew):
        open_store(database)
    with psycopg.connect(database) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION + 1,)


async def test_stores_opened_at_once_on_a_fresh_database_migrate_it_once(database: str) -> None:
    opened = await asyncio.gather(*(asyncio.to_thread(open_store, database) for _ in range(4)))
    try:
        with psycopg.connect(database) as db:
            assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        for store in opened:
            await store.close()


def test_wacall_migrate_applies_the_migrations_and_says_from_which_version_to_which(
    database: str, tmp_path: Path
) -> None:
    def migrate(url: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "wacall.cli", "migrate", "--db", url], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    for url in (database, f"sqlite:///{tmp_path / 'wacall.db'}"):
        assert migrate(url) == f"migrated the schema from version 0 to version {SCHEMA_VERSION}"
        assert migrate(url) == f"schema version {SCHEMA_VERSION}: already current, nothing to do"
    refused_run = subprocess.run(
        [sys.executable, "-m", "wacall.cli", "migrate", "--db", "postgresql://postgres@127.0.0.1:1/none"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused_run.returncode == 1 and "cannot reach the database" in refused_run.stderr


# --- the service on PostgreSQL ---------------------------------------------------------------------------------------


@pytest.fixture
async def on_postgres(database: str, tmp_path: Path) -> AsyncIterator[Running]:
    running = await start_service(settings_for(tmp_path, db=database))
    try:
        yield running
    finally:
        await stop_service(running)


async def test_a_permission_request_is_granted_end_to_end_on_postgresql(on_postgres: Running) -> None:
    store = on_postgres.service.store
    assert isinstance(getattr(store, "inner", store), PostgresStore)  # under the metrics' instrumented store
    await on_postgres.behave(USER, sim_pb.ACCEPT_TEMPORARY)
    sent = await on_postgres.request()
    assert sent.channel in (pb.CHANNEL_TEMPLATE, pb.CHANNEL_INTERACTIVE)
    granted = await on_postgres.wait_for_state(pb.PERMISSION_STATE_TEMPORARY)
    assert granted.state == pb.PERMISSION_STATE_TEMPORARY


async def test_while_postgresql_is_down_rpcs_are_unavailable_webhooks_503_and_the_service_recovers(
    on_postgres: Running, postgres_server: PostgresServer
) -> None:
    await on_postgres.behave(USER, sim_pb.ACCEPT_TEMPORARY)
    await on_postgres.request()
    await on_postgres.wait_for_state(pb.PERMISSION_STATE_TEMPORARY)
    platform = on_postgres.service.platform
    assert platform is not None
    account = platform.provision(parse_number(PAIR.business))
    now = await on_postgres.now()
    watch = on_postgres.calling.WatchEvents(pb.WatchEventsRequest(), metadata=on_postgres.metadata, timeout=120)
    assert isinstance(await watch.read(), pb.Event)  # the stream is open and reading the ledger
    postgres_server.stop()
    try:
        # A stream that needs the ledger ends UNAVAILABLE too (never UNKNOWN), at its next read of the store.
        with pytest.raises(grpc.aio.AioRpcError) as watch_ended:
            while True:
                assert await asyncio.wait_for(watch.read(), 30) is not grpc.aio.EOF
        assert watch_ended.value.code() == grpc.StatusCode.UNAVAILABLE
        error = await refused(on_postgres.calling.GetPermission(
            pb.GetPermissionRequest(business_number=PAIR.business, user_number=USER),
            metadata=on_postgres.metadata, timeout=20,
        ))  # fmt: skip
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        status = rpc_status.from_call(error)
        assert status is not None
        details = {d.type_url.rsplit(".", 1)[-1]: d for d in status.details}
        retry, info = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
        details["RetryInfo"].Unpack(retry)
        details["ErrorInfo"].Unpack(info)
        assert retry.retry_delay.seconds > 0 and info.reason == "STORE_UNAVAILABLE"
        body = wire.text_message(account, USER.lstrip("+"), wamid(), now, "hello")
        response = await deliver(on_postgres, body)
        assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    finally:
        postgres_server.start()
    # No restart: the next RPC succeeds, and what was acknowledged before the outage is still there.
    permission = await on_postgres.permission()
    assert permission.state == pb.PERMISSION_STATE_TEMPORARY
    # The platform delivers the refused webhook again: now it is kept and applied.
    assert (await deliver(on_postgres, body)).status_code == 200
