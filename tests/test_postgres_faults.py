"""The PostgreSQL backend and the replicas when things go wrong: a server that stops answering without closing its
connections, a NOTIFY that fails, a transaction left open that holds the event horizon back, migrations that wait
for locks or fail, pooled connections that died while idle, lock order and reruns that run out, a restarted replica
ending its earlier run's calls while a webhook ends one of them, and replicas whose wall clocks disagree. A real
PostgreSQL 15 on loopback (`postgres_server`)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import psycopg.errors
import pytest
from conftest import Running, settings_for, start_service, stop_service, wait_until
from postgres_server import PostgresServer
from wacall_client.v1 import calling_pb2 as pb

from wacall.clock import SystemClock
from wacall.rules.engine import Ledger, PermissionState
from wacall.store import EventRecord, Pair, StoredCall, StoreError, StoreUnavailable, Tx
from wacall.store import postgres as postgres_backend
from wacall.store.postgres import PostgresOptions, PostgresStore
from wacall.store.postgres_schema import MIGRATION_LOCK, MIGRATIONS, PostgresMigration, migrate_postgres

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PAIR = Pair("+447911123456", "+34612345678")


def event(n: str = "") -> EventRecord:
    return EventRecord(PAIR, "permission_request_sent", "business", AT, AT, PermissionState.REQUESTED, {"n": n})


@pytest.fixture
async def database(postgres_server: PostgresServer) -> AsyncIterator[str]:
    yield postgres_server.create_database()


@pytest.fixture
async def opened(database: str) -> AsyncIterator[Callable[..., PostgresStore]]:
    stores: list[PostgresStore] = []

    def open_one(**options: Any) -> PostgresStore:
        stores.append(PostgresStore(database, PostgresOptions(**options)))
        return stores[-1]

    yield open_one
    for store in stores:
        await store.close()


# --- a server that stops answering ------------------------------------------------------------------------------------


async def test_a_frozen_server_is_store_unavailable_within_the_call_limit_and_the_store_recovers(
    opened: Callable[..., PostgresStore], postgres_server: PostgresServer
) -> None:
    """SIGSTOP: the kernel still acknowledges what is sent, so no TCP timeout fires and the server's
    statement_timeout cannot either; the store's own limit cuts the connection and answers StoreUnavailable."""
    store = opened()
    await store.transaction(lambda tx: tx.save_ledger(PAIR, Ledger(state=PermissionState.PERMANENT), AT))
    frozen = postgres_server.freeze()
    try:
        started = time.monotonic()
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                store.transaction(lambda tx: tx.ledger(PAIR)),
                store.read(lambda tx: tx.ledger(PAIR)),
                return_exceptions=True,
            ),
            20,  # without the limit both hang until TCP gives up (about 15 minutes)
        )
        waited = time.monotonic() - started
    finally:
        postgres_server.thaw(frozen)
    assert [type(outcome) for outcome in outcomes] == [StoreUnavailable, StoreUnavailable], outcomes
    assert "did not answer within" in str(outcomes[0])
    assert waited < store.options.call_limit_seconds + 4, waited
    # The cut connections were discarded: the same store answers again once the server does.
    assert await asyncio.wait_for(store.transaction(lambda tx: tx.ledger(PAIR)), 30) == Ledger(
        state=PermissionState.PERMANENT
    )
    assert await asyncio.wait_for(store.read(lambda tx: tx.ledger(PAIR)), 30) == Ledger(state=PermissionState.PERMANENT)


async def test_every_connection_has_keepalives_and_a_tcp_user_timeout(opened: Callable[..., PostgresStore]) -> None:
    store = opened()
    with store._pool.connection() as pooled, store._priority_pool.connection() as priority:
        listening = store._first_listening
        assert listening is not None
        for db in (pooled, priority, listening):
            options = {o.keyword.decode(): (o.val or b"").decode() for o in db.pgconn.info}
            assert options["keepalives"] == "1" and options["keepalives_idle"] == "5", options
            assert options["tcp_user_timeout"] == str(store.options.statement_timeout_ms + 2000)


# --- NOTIFY ---------------------------------------------------------------------------------------------------------


async def test_a_failed_notify_leaves_the_connection_transactional(
    opened: Callable[..., PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = opened(pool_size=1)  # one connection: the next transaction gets the one whose NOTIFY failed
    monkeypatch.setattr(postgres_backend, "CHANNEL", "no such channel")  # NOTIFY fails: a syntax error
    await store.transaction(lambda tx: tx.append(event("committed")))

    def write_then_fail(tx: Tx) -> None:
        tx.save_setting("kept?", "written")
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await store.transaction(write_then_fail)
    assert await store.transaction(lambda tx: tx.setting("kept?")) is None
    assert [e.attributes["n"] for e in await store.events_after(0)] == ["committed"]


# --- the event horizon ------------------------------------------------------------------------------------------------


async def test_a_horizon_held_back_is_rechecked_with_backoff_waking_only_event_watchers(
    opened: Callable[..., PostgresStore], database: str
) -> None:
    reader, writer = opened(), opened()
    reads = 0
    read_events = reader._events_after

    def counted(*args: Any) -> list[EventRecord]:
        nonlocal reads
        reads += 1
        return read_events(*args)

    reader._events_after = counted  # type: ignore[method-assign]

    async def watch() -> list[EventRecord]:
        while True:
            ticket = reader.changes.events_ticket()
            batch = await reader.events_after(0)
            if batch:
                return batch
            await asyncio.wait_for(ticket.wait(), 30)  # no poll: only the rechecks wake it

    with psycopg.connect(database) as holder:
        holder.execute("SELECT pg_current_xact_id()")  # a session left open holding a transaction id
        await writer.transaction(lambda tx: tx.append(event("held back")))
        watching = asyncio.create_task(watch())
        await asyncio.sleep(0.5)  # the writer's NOTIFY has arrived by now
        followers = reader.changes.ticket()
        await asyncio.sleep(1.5)
        # 20 ms doubling to 1 s: about 7 reads in 2 s (a 20 ms recheck without backoff makes about 100).
        assert 2 <= reads <= 15, reads
        assert not watching.done()
        assert not followers.is_set()  # call followers are not woken by rechecks: nothing of theirs changed
        holder.rollback()
    batch = await asyncio.wait_for(watching, 10)
    assert [e.attributes["n"] for e in batch] == ["held back"]


# --- migrations -------------------------------------------------------------------------------------------------------


async def test_a_store_opened_while_another_replica_migrates_waits_for_it_instead_of_giving_up(database: str) -> None:
    await PostgresStore(database).close()
    with psycopg.connect(database) as holder:
        # Another replica's migration in progress, longer than the statement timeout (5 s).
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))
        threading.Timer(6.5, holder.rollback).start()
        store = await asyncio.to_thread(PostgresStore, database)
    await store.transaction(lambda tx: tx.append(event()))
    await store.close()


def test_a_migration_waiting_behind_traffic_gives_way_and_retries_then_names_what_it_waited_for(
    database: str,
) -> None:
    asyncio.run(PostgresStore(database).close())
    added = PostgresMigration(MIGRATIONS[-1].version + 1, "a column", ("ALTER TABLE calls ADD COLUMN extra integer",))
    with psycopg.connect(database) as reader, psycopg.connect(database, autocommit=True) as migrating:
        reader.execute("SELECT count(*) FROM calls")  # live traffic holds the table (ACCESS SHARE) in its transaction
        started = time.monotonic()
        with pytest.raises(StoreError, match="gave up: 3 waits"):
            migrate_postgres(migrating, "here", (*MIGRATIONS, added), lock_timeout_seconds=0.3, attempts=3)
        assert time.monotonic() - started < 5  # it gave way each time instead of queueing everyone behind it
        reader.rollback()
        assert migrate_postgres(migrating, "here", (*MIGRATIONS, added), lock_timeout_seconds=0.3) == added.version - 1


def test_a_failing_migration_is_named_and_changes_nothing(database: str) -> None:
    asyncio.run(PostgresStore(database).close())
    broken = PostgresMigration(MIGRATIONS[-1].version + 1, "a broken one", ("ALTER TABLE nowhere ADD COLUMN x int",))
    with psycopg.connect(database, autocommit=True) as db:
        with pytest.raises(StoreError, match=rf"migration {broken.version} \(a broken one\) of here failed"):
            migrate_postgres(db, "here", (*MIGRATIONS, broken))
        row = db.execute("SELECT version FROM schema_version").fetchone()
        assert row is not None and row[0] == MIGRATIONS[-1].version


# --- dead pooled connections, reruns ----------------------------------------------------------------------------------


async def test_snapshot_reads_run_again_on_pooled_connections_that_died_with_the_server(
    opened: Callable[..., PostgresStore], postgres_server: PostgresServer
) -> None:
    store = opened()

    def slow_read(tx: Tx) -> Ledger:
        time.sleep(0.2)  # all four at once: every pooled connection is used, hence open
        return tx.ledger(PAIR)

    await asyncio.gather(*(store.read(slow_read) for _ in range(store.options.pool_size)))
    postgres_server.stop()
    postgres_server.start()
    assert [await store.read(lambda tx: tx.ledger(PAIR)) for _ in range(6)] == [Ledger()] * 6


async def test_reruns_that_run_out_are_store_unavailable(opened: Callable[..., PostgresStore]) -> None:
    store = opened(attempts=3)
    runs = 0

    def always_a_deadlock(tx: Tx) -> None:
        nonlocal runs
        runs += 1
        tx.ledger(PAIR)
        raise psycopg.errors.DeadlockDetected("deadlock detected")

    with pytest.raises(StoreUnavailable, match="3 runs ended in deadlocks"):
        await store.transaction(always_a_deadlock)
    assert runs == 3


async def test_a_call_row_and_its_pair_are_locked_in_one_order_so_they_never_deadlock(
    opened: Callable[..., PostgresStore],
) -> None:
    """A webhook's order (the call, then its pair's ledger) against a decision's (the pair, then its call): both
    take the pair first, so the second waits instead of deadlocking (each function runs once)."""
    first, second = opened(), opened()
    call = StoredCall("call_lock_order", PAIR, "business_initiated", AT, "ringing", {})
    await first.transaction(lambda tx: tx.save_call(call))
    runs: list[str] = []
    first_holds = threading.Event()
    second_holds = threading.Event()

    def call_then_pair(tx: Tx) -> None:
        runs.append("call first")
        tx.call(call.call_id)
        first_holds.set()
        second_holds.wait(1.0)  # before the fix the other one takes the pair meanwhile
        tx.save_ledger(PAIR, Ledger(consecutive_unanswered=1), AT)

    def pair_then_call(tx: Tx) -> None:
        runs.append("pair first")
        first_holds.wait(5.0)
        tx.ledger(PAIR)
        second_holds.set()
        tx.call(call.call_id)

    await asyncio.gather(first.transaction(call_then_pair), second.transaction(pair_then_call))
    assert sorted(runs) == ["call first", "pair first"]


# --- the service: a store failure at the API, a restart racing a webhook, clocks that disagree ------------------------


async def test_a_store_that_closed_is_unavailable_at_the_api_never_unknown(database: str, tmp_path: Path) -> None:
    running = await start_service(settings_for(tmp_path, db=database))
    try:
        store = running.service.store
        assert store is not None
        await getattr(store, "inner", store).close()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await running.calling.GetCall(pb.GetCallRequest(call_id="call_" + "0" * 32), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        assert "the store is closed" in (refused.value.details() or "")
    finally:
        await stop_service(running)


async def ringing_call(running: Running, user: str) -> pb.Call:
    await running.grant(user, permanent=True)
    await running.phone(user, ring=600)  # the rules' clock is manual: it rings until the test ends
    started = await running.start_call(user)
    return await running.wait_call(started.call_id, pb.CALL_STATE_RINGING)


async def test_a_restart_ending_its_earlier_runs_calls_leaves_one_a_webhook_ended_meanwhile(
    database: str, tmp_path: Path
) -> None:
    running = await start_service(settings_for(tmp_path, db=database, instance_name="r"))
    try:
        calls = running.service.calls
        assert calls is not None
        live = await ringing_call(running, "+34612340101")
        with psycopg.connect(database) as db:
            db.execute("UPDATE calls SET owner = 'r/an-earlier-run' WHERE call_id = %s", (live.call_id,))
            db.commit()
            # A terminate webhook on another replica, committing while the restart is ending the earlier run's calls.
            db.execute(
                "UPDATE calls SET active = false, data = jsonb_set(data::jsonb, '{end_reason}', "
                "'\"ended by the platform\"')::text WHERE call_id = %s",
                (live.call_id,),
            )
            ending = asyncio.create_task(calls._end_orphans("the service restarted", earlier_runs=True))
            await asyncio.sleep(1.0)  # it listed the call (still active to it) and waits for the row
            db.commit()
        await asyncio.wait_for(ending, 10)
        with psycopg.connect(database) as db:
            row = db.execute(
                "SELECT active, data::jsonb ->> 'end_reason' FROM calls WHERE call_id = %s", (live.call_id,)
            ).fetchone()
        assert row == (False, "ended by the platform")  # not overwritten with the restart's stale copy
    finally:
        await stop_service(running)


class ClockAhead(SystemClock):
    """This machine's clock, running `ahead` of the others' (an unsynchronised replica)."""

    def __init__(self, ahead: timedelta) -> None:
        self.ahead = ahead

    def now(self) -> datetime:
        return super().now() + self.ahead


async def test_a_replica_whose_clock_runs_11_s_ahead_never_ends_a_living_owners_calls_or_refuses_to_forward(
    database: str, tmp_path: Path
) -> None:
    lease = 3.0
    owner = await start_service(
        settings_for(tmp_path / "owner", db=database, instance_name="owner", call_lease_seconds=lease)
    )
    ahead = None
    try:
        live = await ringing_call(owner, "+34612340102")
        ahead = await start_service(
            settings_for(tmp_path / "ahead", db=database, instance_name="ahead", call_lease_seconds=lease),
            ClockAhead(timedelta(seconds=11)),
        )
        assert ahead.service.calls is not None
        # Three whole leases: the replica ahead has reached the store for a lease, and passed its lease keeper
        # several times, each of which would claim the call if it compared the lease with its own clock.
        await asyncio.sleep(3 * lease)
        still = await owner.get_call(live.call_id)
        assert still.state == pb.CALL_STATE_RINGING and not still.end_reason
        assert owner.service.calls is not None and live.call_id in owner.service.calls.sessions
        found = await ahead.service.calls.owner_elsewhere(live.call_id)
        assert found is not None and found.reachable()  # its heartbeat is current on the database's clock
    finally:
        # The owner first: the replica started last set the loop's default executor, which its stop shuts down.
        await stop_service(owner)
        if ahead is not None:
            await stop_service(ahead)


async def test_an_owner_that_cannot_renew_its_leases_stops_its_calls_media_then_ends_them(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = 3.0
    running = await start_service(settings_for(tmp_path, db=database, instance_name="owner", call_lease_seconds=lease))
    try:
        calls = running.service.calls
        assert calls is not None
        live = await ringing_call(running, "+34612340103")
        session = calls.sessions[live.call_id]
        renew = calls._renew

        def cut_off(tx: Tx) -> None:
            raise StoreUnavailable("the database is unreachable (from this replica only)")

        monkeypatch.setattr(calls, "_renew", cut_off)
        # Within the lease, before any other replica may claim the call, its media stops here.
        await wait_until(lambda: asyncio.sleep(0, session.closed), lambda closed: closed, timeout=2 * lease)
        stored = await running.get_call(live.call_id)
        assert stored.state == pb.CALL_STATE_RINGING  # the store could not be told yet
        monkeypatch.setattr(calls, "_renew", renew)
        ended = await running.wait_call(live.call_id, pb.CALL_STATE_ENDED, timeout=3 * lease)
        assert ended.end_reason == "the process holding the call could not renew its lease"
    finally:
        await stop_service(running)
