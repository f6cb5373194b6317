"""The SQLite backend's schema history: every database an earlier release wrote opens, upgraded in one transaction,
with its records intact; a database from a newer release is refused and left alone.

The old databases are built from the SQL those releases ran (`legacy_schemas.py`), not from today's migrations.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from legacy_schemas import FIRST_RELEASE, REFUSED_WEBHOOKS, VERSION_1, VERSION_2

from wacall.rules.engine import PermissionState, Restriction
from wacall.store import (
    SCHEMA_VERSION,
    IdempotentResult,
    Pair,
    SchemaTooNew,
    SqliteStore,
    StoreError,
    Tx,
    open_store,
    to_micros,
)
from wacall.store.migrations import MIGRATIONS, Migration, migrate

AT = datetime(2026, 11, 20, 9, 30, 15, 250_000, tzinfo=UTC)
PAIR = Pair("+447911123456", "+34612345678")
OTHER = Pair("+447911123456", "+5511987654321")


def build(path: Path, schema: str, version: int | None) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(schema)
    if version is not None:
        db.execute(f"PRAGMA user_version = {version}")
    return db


def shape(path: Path) -> dict[str, Any]:
    """Every table's columns and every index's columns, uniqueness and condition: what queries depend on."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        found: dict[str, Any] = {}
        for table in tables:
            columns = [tuple(r[1:]) for r in db.execute(f"PRAGMA table_info({table})")]
            indexes = {}
            for _, name, unique, origin, partial in db.execute(f"PRAGMA index_list({table})"):
                indexed = [r[2] for r in db.execute(f"PRAGMA index_info({name})")]
                indexes[name if origin == "c" else f"{origin}:{','.join(indexed)}"] = (indexed, unique, partial)
            found[table] = (columns, indexes)
        return found


def fresh_shape(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "fresh.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, str(path))
    db.close()
    return shape(path)


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def legacy_ledger() -> str:
    """A REQUESTED pair as releases before request expiry wrote it (no request_expiries, no state before)."""
    return json.dumps(
        {
            "state": "requested",
            "expires_at": None,
            "state_changed_at": to_micros(AT),
            "request_times": [to_micros(AT)],
            "connected_call_times": [],
            "consecutive_unanswered": 0,
            "last_connected_at": None,
            "last_user_message_at": None,
        }
    )


def fill(db: sqlite3.Connection, user: str) -> None:
    """One record in every table of version 1, the user's column named `user`."""
    at = to_micros(AT)
    facts = {"facts": {"state": "ringing"}, "route": "announcement"}
    rows: list[tuple[str, tuple[Any, ...]]] = [
        (f"INSERT INTO pairs (business, {user}, ledger, updated_at) VALUES (?, ?, ?, ?)",
         (PAIR.business, PAIR.user, legacy_ledger(), at)),
        (f"INSERT INTO events (business, {user}, kind, source, occurred_at, recorded_at, state_after, attributes) "
         "VALUES (?, ?, 'permission_request_sent', 'business', ?, ?, 'requested', '{\"channel\":\"template\"}')",
         (PAIR.business, PAIR.user, at, at)),
        ("INSERT INTO claimed_keys (key, claimed_at) VALUES ('message:wamid.IN1', ?)", (at,)),
        ("INSERT INTO idempotency (business, key, fingerprint, outcome, created_at) VALUES (?, 'k1', 'f1', ?, ?)",
         (PAIR.business, json.dumps({"status": "sent", "message_id": "wamid.OUT1"}), at)),
        (f"INSERT INTO messages (message_id, business, {user}, sent_at) VALUES ('wamid.OUT1', ?, ?, ?)",
         (PAIR.business, PAIR.user, at)),
        (f"INSERT INTO aliases (wa_id, {user}) VALUES ('34600000000', ?)", (PAIR.user,)),
        (f"INSERT INTO calls (call_id, platform_call_id, business, {user}, direction, created_at, state, active, data)"
         " VALUES ('call_open', 'wacid.OPEN', ?, ?, 'business_initiated', ?, 'ringing', 1, ?)",
         (PAIR.business, PAIR.user, at, json.dumps(facts))),
        (f"INSERT INTO calls (call_id, platform_call_id, business, {user}, direction, created_at, state, active, data)"
         " VALUES ('call_ended', NULL, ?, ?, 'user_initiated', ?, 'ended', 0, '{}')",
         (OTHER.business, OTHER.user, at - 1)),
        ("INSERT INTO parked_call_events (platform_call_id, parked_at, event) VALUES ('wacid.LATE', ?, ?)",
         (at, json.dumps({"kind": "ringing"}))),
        ("INSERT INTO restrictions (business, until, updated_at) VALUES (?, ?, ?)", (PAIR.business, at + 10, at)),
        (f"INSERT INTO reservations (reservation_id, business, {user}, reserved_at, channel, state_before, "
         "idempotency_key, fingerprint, claimed_by, claimed_at) VALUES ('r1', ?, ?, ?, 'template', 'none', 'k2', "
         "'f2', '', NULL)", (PAIR.business, PAIR.user, at)),
        ("INSERT INTO settings (name, value) VALUES ('manual_clock_position', ?)", (str(at),)),
        ("INSERT INTO webhooks (received_at, body) VALUES (?, ?)", (at, b'{"object":"whatsapp_business_account"}')),
    ]  # fmt: skip
    for sql, params in rows:
        db.execute(sql, params)


async def read_back(store: SqliteStore) -> None:
    """Every record `fill` wrote, read through the interface as today's services read it."""

    def read(tx: Tx) -> None:
        ledger = tx.ledger(PAIR)
        assert ledger.state is PermissionState.REQUESTED and ledger.request_times == (AT,)
        assert ledger.request_expiries == (AT + timedelta(days=7),)  # a legacy request lives 7 days
        assert not tx.claim("message:wamid.IN1", AT)
        assert tx.idempotent_result(PAIR.business, "k1") == IdempotentResult(
            PAIR.business, "k1", "f1", {"status": "sent", "message_id": "wamid.OUT1"}
        )
        assert tx.message_pair("wamid.OUT1") == PAIR and tx.message_sent_at("wamid.OUT1") == AT
        assert tx.alias("34600000000") == PAIR.user and tx.wa_id_of(PAIR.user) == "34600000000"
        open_call = tx.active_call(PAIR)
        assert open_call is not None and open_call.call_id == "call_open" and open_call.created_at == AT
        assert open_call.owner == "" and open_call.lease_expires_at is None  # stored before calls had owners
        assert tx.call_by_platform_id("wacid.OPEN") == open_call
        assert [c.call_id for c in tx.open_calls()] == ["call_open"]
        ended = tx.call("call_ended")
        assert ended is not None and not ended.active and ended.pair == OTHER
        assert tx.take_parked_call_events("wacid.LATE") == [{"kind": "ringing"}]
        assert tx.restriction(PAIR.business) == Restriction(AT + timedelta(microseconds=10))
        reservation = tx.reservation_for_key(PAIR.business, "k2")
        assert reservation is not None and reservation.reserved_at == AT and reservation.pair == PAIR
        assert tx.setting("manual_clock_position") == str(to_micros(AT))
        assert tx.latest_recorded_at() == AT

    await store.transaction(read)
    (event,) = await store.events_after(0)
    assert (event.pair, event.kind, event.cursor, event.attributes) == (
        PAIR,
        "permission_request_sent",
        1,
        {"channel": "template"},
    )
    assert await store.events_after(0, user=PAIR.user) == [event]
    listed = await store.list_calls(business=None, user=None, before=None, limit=10)
    assert [c.call_id for c in listed] == ["call_open", "call_ended"]


def test_the_migrations_are_numbered_one_after_another() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == SCHEMA_VERSION
    assert all(m.summary for m in MIGRATIONS)


async def test_a_fresh_database_runs_every_migration(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fresh.db")
    await store.close()
    assert user_version(tmp_path / "fresh.db") == SCHEMA_VERSION
    tables = set(shape(tmp_path / "fresh.db"))
    assert {"pairs", "events", "calls", "reservations", "settings", "webhooks", "refused_webhooks"} <= tables
    for table, (columns, _) in shape(tmp_path / "fresh.db").items():
        assert "user" not in [c[0] for c in columns], table  # a reserved word in PostgreSQL


@pytest.mark.parametrize(
    ("schema", "version", "user_column"),
    [
        pytest.param(VERSION_1, None, "user", id="version 0: every table, no version kept"),
        pytest.param(VERSION_1, 1, "user", id="version 1"),
        pytest.param(VERSION_2, 1, "user_number", id="version 1 whose columns were renamed before a crash"),
        pytest.param(VERSION_2, 2, "user_number", id="version 2"),
    ],
)
async def test_a_database_of_an_earlier_version_is_upgraded_with_every_record_intact(
    tmp_path: Path, schema: str, version: int | None, user_column: str
) -> None:
    path = tmp_path / "old.db"
    db = build(path, schema, version)
    fill(db, user_column)
    db.close()
    store = SqliteStore(path)
    try:
        await read_back(store)
    finally:
        await store.close()
    assert user_version(path) == SCHEMA_VERSION
    assert shape(path) == fresh_shape(tmp_path)


async def test_a_call_left_open_before_calls_had_owners_counts_as_expired(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    db = build(path, VERSION_2, 2)
    fill(db, "user_number")
    db.close()
    store = SqliteStore(path)
    try:
        lease_until = AT + timedelta(seconds=30)
        (claimed,) = await store.transaction(
            lambda tx: tx.claim_expired_calls(claimant="p1", now=AT - timedelta(days=365), lease_until=lease_until)
        )
        assert (claimed.call_id, claimed.owner, claimed.lease_expires_at) == ("call_open", "p1", lease_until)
    finally:
        await store.close()


async def test_the_first_release_database_gains_every_later_table(tmp_path: Path) -> None:
    path = tmp_path / "first.db"
    db = build(path, FIRST_RELEASE, None)
    db.execute(
        "INSERT INTO pairs (business, user, ledger, updated_at) VALUES (?, ?, ?, ?)",
        (PAIR.business, PAIR.user, legacy_ledger(), to_micros(AT)),
    )
    db.close()
    store = SqliteStore(path)
    try:
        ledger = await store.transaction(lambda tx: tx.ledger(PAIR))
        assert ledger.state is PermissionState.REQUESTED and ledger.request_times == (AT,)
        assert await store.transaction(lambda tx: (tx.open_calls(), tx.setting("x"), tx.refused_webhooks())) == (
            [],
            None,
            [],
        )
    finally:
        await store.close()
    assert shape(path) == fresh_shape(tmp_path)


async def test_refused_webhooks_kept_by_version_2_stay_kept(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    db = build(path, VERSION_2, 2)
    db.execute(REFUSED_WEBHOOKS)  # created on first use back then
    db.execute(
        "INSERT INTO refused_webhooks (received_at, reason, body) VALUES (?, 'malformed: entry', x'7b7d')",
        (to_micros(AT),),
    )
    db.close()
    store = SqliteStore(path)
    try:
        assert await store.transaction(lambda tx: tx.refused_webhooks()) == [(AT, "malformed: entry", b"{}")]
    finally:
        await store.close()
    assert shape(path) == fresh_shape(tmp_path)


def test_a_database_of_a_later_version_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = build(path, "CREATE TABLE pairs (whatever TEXT);", SCHEMA_VERSION + 1)
    db.close()
    before = shape(path)
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}; this wacall reads up to") as error:
        SqliteStore(path)
    assert isinstance(error.value, StoreError) and "upgrade wacall" in str(error.value)
    assert user_version(path) == SCHEMA_VERSION + 1 and shape(path) == before


def test_a_migration_that_fails_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = build(path, VERSION_1, 1)
    fill(db, "user")
    before = shape(path)

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise sqlite3.OperationalError("disk I/O error")

    broken = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "fails half way", half_done))
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        migrate(db, str(path), broken)
    assert not db.in_transaction
    db.close()
    # Not even the migrations before the broken one are kept: the columns still carry their version-1 names.
    assert user_version(path) == 1 and shape(path) == before
    assert migrate(sqlite3.connect(path, isolation_level=None), str(path)) == 1
    assert user_version(path) == SCHEMA_VERSION


async def test_two_processes_opening_an_old_database_at_once_upgrade_it_once(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = build(path, VERSION_1, 1)
    fill(db, "user")
    db.close()
    opened: list[SqliteStore] = []
    failures: list[BaseException] = []
    start = threading.Barrier(3)

    def open_it() -> None:
        start.wait()
        try:
            opened.append(SqliteStore(path))
        except BaseException as error:  # reported below
            failures.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == [] and len(opened) == 3
    try:
        await read_back(opened[0])
        for store in opened[1:]:
            assert (await store.transaction(lambda tx: tx.ledger(PAIR))).request_times == (AT,)
            assert len(await store.events_after(0)) == 1
    finally:
        for store in opened:
            await store.close()
    assert user_version(path) == SCHEMA_VERSION


async def test_open_store_picks_the_backend_by_the_urls_scheme(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'by-url.db'}")
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "by-url.db"
    await store.close()
    with pytest.raises(StoreError, match=r"unsupported database URL 'mysql://db/wacall' \(this wacall stores in "):
        open_store("mysql://db/wacall")
    with pytest.raises(StoreError, match="no host or database in 'postgresql://db'"):
        open_store("postgresql://db")
    with pytest.raises(StoreError, match="no database file in 'sqlite://'"):
        open_store("sqlite://")
