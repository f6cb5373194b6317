"""The SQLite schema as numbered migrations, and the one transaction that brings a database up to date.

A database records the last migration it ran in `PRAGMA user_version`. A fresh database runs them all; an older
one runs those after its version; all in one `BEGIN IMMEDIATE` transaction with the new version, so a crash leaves
the database as it was and a second process opening the same file waits, then finds nothing left to do. A database
from a newer wacall is refused, unchanged.

Databases from before the version was kept read 0: earlier releases created their tables as they went (`CREATE
TABLE IF NOT EXISTS` on every start), so a version-0 database holds some or all of migration 1's tables. Every time
column holds microseconds since the epoch (UTC), in every version. Add a migration at the end; never edit one that
has shipped. (PostgreSQL keeps its own list in `postgres_schema.py`, under the same version numbers.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from wacall.store.base import StoreError


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    # One statement per execute: executescript() would commit the migration's transaction half way.
    def apply(db: sqlite3.Connection) -> None:
        for statement in sql:
            db.execute(statement)

    return apply


_VERSION_1_TABLES = _statements(
    """CREATE TABLE IF NOT EXISTS pairs (
        business TEXT NOT NULL,
        user TEXT NOT NULL,
        ledger TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (business, user)
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        cursor INTEGER PRIMARY KEY AUTOINCREMENT,
        business TEXT NOT NULL,
        user TEXT NOT NULL,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        occurred_at INTEGER NOT NULL,
        recorded_at INTEGER NOT NULL,
        state_after TEXT NOT NULL,
        attributes TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_pair ON events (business, user, cursor)",
    """CREATE TABLE IF NOT EXISTS claimed_keys (
        key TEXT PRIMARY KEY,
        claimed_at INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS idempotency (
        business TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        outcome TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (business, key)
    )""",
    """CREATE TABLE IF NOT EXISTS messages (
        message_id TEXT PRIMARY KEY,
        business TEXT NOT NULL,
        user TEXT NOT NULL,
        sent_at INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS aliases (
        wa_id TEXT PRIMARY KEY,
        user TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS calls (
        call_id TEXT PRIMARY KEY,
        platform_call_id TEXT UNIQUE,
        business TEXT NOT NULL,
        user TEXT NOT NULL,
        direction TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        state TEXT NOT NULL,
        active INTEGER NOT NULL,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS calls_by_pair ON calls (business, user, created_at)",
    # The platform allows one call at a time between a business number and a user (138003): so do we.
    "CREATE UNIQUE INDEX IF NOT EXISTS one_active_call_per_pair ON calls (business, user) WHERE active = 1",
    """CREATE TABLE IF NOT EXISTS parked_call_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        platform_call_id TEXT NOT NULL,
        parked_at INTEGER NOT NULL,
        event TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS restrictions (
        business TEXT PRIMARY KEY,
        until INTEGER,
        updated_at INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS reservations (
        reservation_id TEXT PRIMARY KEY,
        business TEXT NOT NULL,
        user TEXT NOT NULL,
        reserved_at INTEGER NOT NULL,
        channel TEXT NOT NULL,
        state_before TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        claimed_by TEXT NOT NULL,
        claimed_at INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS reservations_by_time ON reservations (reserved_at)",
    "CREATE INDEX IF NOT EXISTS reservations_by_key ON reservations (business, idempotency_key)",
    """CREATE TABLE IF NOT EXISTS settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS webhooks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at INTEGER NOT NULL,
        body BLOB NOT NULL
    )""",
)

# Tables that named the user's column `user` before version 2.
_USER_COLUMN_TABLES = ("pairs", "events", "messages", "aliases", "calls", "reservations")


def _rename_user_columns(db: sqlite3.Connection) -> None:
    # Only where the column still has its old name: a release that renamed the columns but was stopped before it
    # recorded version 2 left them renamed. SQLite renames the column in the table's indexes too.
    for table in _USER_COLUMN_TABLES:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if "user" in columns:
            db.execute(f'ALTER TABLE {table} RENAME COLUMN "user" TO user_number')


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the ledger's tables (every table earlier releases created as they went)", _VERSION_1_TABLES),
    # `user` is a reserved word in PostgreSQL, where `WHERE user = ?` silently compares with the current role.
    Migration(2, "the user's column is user_number", _rename_user_columns),
    Migration(
        3,
        "refused webhooks are part of the schema (they were created on first use)",
        _statements(
            """CREATE TABLE IF NOT EXISTS refused_webhooks (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                received_at INTEGER NOT NULL,
                reason TEXT NOT NULL,
                body BLOB NOT NULL
            )"""
        ),
    ),
    Migration(
        4,
        "a call records the process that owns its media and that owner's lease (calls stored earlier have none)",
        _statements(
            "ALTER TABLE calls ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE calls ADD COLUMN lease_expires_at INTEGER",
            "CREATE INDEX open_calls_by_lease ON calls (lease_expires_at) WHERE active = 1",
        ),
    ),
    Migration(
        5,
        "the contact centre's router state: one row, its version and the router codec's JSON",
        _statements(
            """CREATE TABLE router_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                version INTEGER NOT NULL,
                state TEXT NOT NULL
            )"""
        ),
    ),
    Migration(
        6,
        "the replica registry: each process's gRPC address and heartbeat, so call control reaches a call's owner",
        _statements(
            """CREATE TABLE replicas (
                instance TEXT PRIMARY KEY,
                address TEXT NOT NULL,
                heartbeat_expires_at INTEGER NOT NULL
            )"""
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


class SchemaTooNew(StoreError):
    def __init__(self, where: str, version: int, newest: int) -> None:
        super().__init__(f"{where} has schema version {version}; this wacall reads up to {newest}: upgrade wacall")
        self.version = version


def migrate(db: sqlite3.Connection, where: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Bring the database (an autocommit connection) to the newest version in one transaction, or refuse it
    unchanged (`SchemaTooNew`); returns the version it had. `where` names the database in errors."""
    newest = migrations[-1].version
    db.execute("BEGIN IMMEDIATE")
    try:
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > newest:
            raise SchemaTooNew(where, found, newest)
        for migration in migrations:
            if migration.version > found:
                migration.apply(db)
        if found < newest:
            db.execute(f"PRAGMA user_version = {newest:d}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found
