"""The PostgreSQL schema as numbered migrations, and the one transaction that brings a database up to date.

The same version numbers and meanings as SQLite's (`migrations.py`), so `SCHEMA_VERSION` names one schema for both
backends. Times are bigint microseconds since the epoch, as `codecs.py` writes them for SQLite: one codec for both
backends, no time zone conversions between Python and the server, and comparisons that are plain integer ones.

The version lives in `schema_version` (one row). Migrations run in one transaction under a transaction-scoped
advisory lock, so two replicas starting at once apply them once: the second waits, then finds nothing to do. A
database from a newer wacall is refused, unchanged (`SchemaTooNew`). Add a migration at the end; never edit one
that has shipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors

from wacall.store.base import StoreError
from wacall.store.migrations import SchemaTooNew

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PostgresMigration:
    version: int
    summary: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[PostgresMigration, ...] = (
    PostgresMigration(
        1,
        "the ledger's tables",
        (
            """CREATE TABLE pairs (
                business text NOT NULL,
                user_number text NOT NULL,
                ledger text NOT NULL,
                updated_at bigint NOT NULL,
                PRIMARY KEY (business, user_number)
            )""",
            # cursor = (the appending transaction's id << 20) + the event's index in it: see postgres.py.
            """CREATE TABLE events (
                cursor bigint PRIMARY KEY,
                xid bigint NOT NULL,
                business text NOT NULL,
                user_number text NOT NULL,
                kind text NOT NULL,
                source text NOT NULL,
                occurred_at bigint NOT NULL,
                recorded_at bigint NOT NULL,
                state_after text NOT NULL,
                attributes text NOT NULL
            )""",
            "CREATE INDEX events_by_pair ON events (business, user_number, cursor)",
            "CREATE INDEX events_by_user ON events (user_number, cursor)",
            "CREATE INDEX events_by_recorded_at ON events (recorded_at)",
            "CREATE TABLE claimed_keys (key text PRIMARY KEY, claimed_at bigint NOT NULL)",
            """CREATE TABLE idempotency (
                business text NOT NULL,
                key text NOT NULL,
                fingerprint text NOT NULL,
                outcome text NOT NULL,
                created_at bigint NOT NULL,
                PRIMARY KEY (business, key)
            )""",
            """CREATE TABLE messages (
                message_id text PRIMARY KEY,
                business text NOT NULL,
                user_number text NOT NULL,
                sent_at bigint NOT NULL
            )""",
            """CREATE TABLE aliases (
                id bigserial UNIQUE,
                wa_id text PRIMARY KEY,
                user_number text NOT NULL
            )""",
            "CREATE INDEX aliases_by_user ON aliases (user_number, id)",
            """CREATE TABLE calls (
                call_id text PRIMARY KEY,
                platform_call_id text UNIQUE,
                business text NOT NULL,
                user_number text NOT NULL,
                direction text NOT NULL,
                created_at bigint NOT NULL,
                state text NOT NULL,
                active boolean NOT NULL,
                data text NOT NULL
            )""",
            "CREATE INDEX calls_by_pair ON calls (business, user_number, created_at)",
            "CREATE INDEX calls_by_time ON calls (created_at, call_id)",
            # The platform allows one call at a time between a business number and a user (138003): so do we.
            "CREATE UNIQUE INDEX one_active_call_per_pair ON calls (business, user_number) WHERE active",
            """CREATE TABLE parked_call_events (
                id bigserial PRIMARY KEY,
                platform_call_id text NOT NULL,
                parked_at bigint NOT NULL,
                event text NOT NULL
            )""",
            "CREATE INDEX parked_by_call ON parked_call_events (platform_call_id)",
            "CREATE TABLE restrictions (business text PRIMARY KEY, until bigint, updated_at bigint NOT NULL)",
            """CREATE TABLE reservations (
                reservation_id text PRIMARY KEY,
                business text NOT NULL,
                user_number text NOT NULL,
                reserved_at bigint NOT NULL,
                channel text NOT NULL,
                state_before text NOT NULL,
                idempotency_key text NOT NULL,
                fingerprint text NOT NULL,
                claimed_by text NOT NULL,
                claimed_at bigint
            )""",
            "CREATE INDEX reservations_by_time ON reservations (reserved_at)",
            "CREATE INDEX reservations_by_key ON reservations (business, idempotency_key)",
            "CREATE TABLE settings (name text PRIMARY KEY, value text NOT NULL)",
            """CREATE TABLE webhooks (
                id bigserial PRIMARY KEY,
                received_at bigint NOT NULL,
                body bytea NOT NULL
            )""",
        ),
    ),
    # SQLite renamed `user` (reserved here) to user_number; PostgreSQL's tables were born with user_number.
    PostgresMigration(2, "the user's column is user_number", ()),
    PostgresMigration(
        3,
        "refused webhooks are part of the schema",
        (
            """CREATE TABLE refused_webhooks (
                id bigserial PRIMARY KEY,
                received_at bigint NOT NULL,
                reason text NOT NULL,
                body bytea NOT NULL
            )""",
        ),
    ),
    PostgresMigration(
        4,
        "a call records the process that owns its media and that owner's lease",
        (
            "ALTER TABLE calls ADD COLUMN owner text NOT NULL DEFAULT ''",
            "ALTER TABLE calls ADD COLUMN lease_expires_at bigint",
            "CREATE INDEX open_calls_by_lease ON calls (lease_expires_at) WHERE active",
        ),
    ),
    PostgresMigration(
        5,
        "the contact centre's router state: one row, its version and the router codec's JSON",
        (
            """CREATE TABLE router_state (
                id integer PRIMARY KEY CHECK (id = 1),
                version bigint NOT NULL,
                state text NOT NULL
            )""",
        ),
    ),
    PostgresMigration(
        6,
        "the replica registry: each process's gRPC address and heartbeat, so call control reaches a call's owner",
        (
            """CREATE TABLE replicas (
                instance text PRIMARY KEY,
                address text NOT NULL,
                heartbeat_expires_at bigint NOT NULL
            )""",
        ),
    ),
    PostgresMigration(
        7,
        "one business's events in cursor order and calls newest first are index ranges, not sorts",
        (
            # As SQLite's migration 7; calls_by_time (created_at, call_id) is in migration 1 here already.
            "CREATE INDEX events_by_business ON events (business, cursor)",
            "CREATE INDEX calls_by_business ON calls (business, created_at, call_id)",
            "CREATE INDEX calls_by_pair_newest ON calls (business, user_number, created_at, call_id)",
        ),
    ),
)

# Every process that migrates takes this lock first (a transaction-scoped advisory lock: released at commit).
MIGRATION_LOCK = "wacall:migrate"


def migrate_postgres(
    db: psycopg.Connection[tuple[Any, ...]],
    where: str,
    migrations: tuple[PostgresMigration, ...] = MIGRATIONS,
    *,
    lock_timeout_seconds: float = 5.0,
    attempts: int = 60,
) -> int:
    """Bring the database to the newest version in one transaction, or refuse it unchanged (`SchemaTooNew`);
    returns the version it had. `db` is an autocommit connection; `where` names the database in errors.

    No statement timeout applies inside (an index build on a big table takes as long as it takes), but every lock
    wait is bounded (`lock_timeout`): a migration queued behind live traffic, or behind another replica's
    migration, gives up its place, so it stalls nobody's calls for long, and tries again, `attempts` times in
    all. A failure names the migration that failed."""
    for attempt in range(1, attempts + 1):
        try:
            return _migrate_once(db, where, migrations, lock_timeout_seconds)
        except psycopg.errors.LockNotAvailable as error:
            if attempt == attempts:
                raise StoreError(
                    f"migrating {where} gave up: {attempts} waits of {lock_timeout_seconds:.0f} s for its locks "
                    f"(another replica migrating, or long transactions on its tables): {error}"
                ) from error
            log.info("migrating %s: waiting for locks (%s); trying again", where, error)
    raise AssertionError("unreachable")  # pragma: no cover


def _migrate_once(
    db: psycopg.Connection[tuple[Any, ...]],
    where: str,
    migrations: tuple[PostgresMigration, ...],
    lock_timeout_seconds: float,
) -> int:
    newest = migrations[-1].version
    with db.transaction():
        db.execute("SET LOCAL statement_timeout = 0")
        db.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_seconds * 1000)}")
        db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        found = int(str(row[0])) if row else 0
        if found > newest:
            raise SchemaTooNew(where, found, newest)
        for migration in migrations:
            if migration.version > found:
                try:
                    for statement in migration.statements:
                        db.execute(statement.encode())
                except psycopg.errors.LockNotAvailable:
                    raise
                except psycopg.Error as error:
                    raise StoreError(
                        f"migration {migration.version} ({migration.summary}) of {where} failed: {error}"
                    ) from error
        if row is None:
            db.execute("INSERT INTO schema_version (version) VALUES (%s)", (newest,))
        elif found < newest:
            db.execute("UPDATE schema_version SET version = %s", (newest,))
    return found
