"""The durable ledger: per-pair derived state plus an append-only event log, behind one small interface.

`base.py` is the interface every backend implements and what it guarantees; `codecs.py` how values are stored;
`sqlite.py` the SQLite backend and `migrations.py` its schema; `postgres.py` the PostgreSQL backend and
`postgres_schema.py` its schema. `open_store(url)` picks the backend by the URL's
scheme: a new backend is one module and one line in `BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import urlparse

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
    Tx,
    wait_for_change,
)
from wacall.store.codecs import (
    LEGACY_REQUEST_LIFETIME,
    from_micros,
    ledger_from_json,
    ledger_to_json,
    optional_datetime,
    optional_micros,
    to_micros,
)
from wacall.store.migrations import SCHEMA_VERSION, SchemaTooNew
from wacall.store.operations import migrate_database
from wacall.store.postgres import DRIVER_ERRORS as POSTGRES_ERRORS
from wacall.store.postgres import PostgresStore, open_postgres
from wacall.store.sqlite import DRIVER_ERRORS as SQLITE_ERRORS
from wacall.store.sqlite import SqliteStore, open_sqlite

# URL scheme → the backend that opens such a URL.
BACKENDS: Mapping[str, Callable[[str], Store]] = {
    "sqlite": open_sqlite,
    "postgresql": open_postgres,
    "postgres": open_postgres,
}

# Every backend's driver errors, and the store's own: what the database raised, wherever it was raised.
DATABASE_ERRORS: tuple[type[Exception], ...] = (StoreError, *SQLITE_ERRORS, *POSTGRES_ERRORS)


def is_database_failure(error: BaseException) -> bool:
    """Whether `error` is the database's (a driver error, a closed or failed store), not the domain's: a second
    active call (`CallInProgress`) or a transaction function's own exception (a rule refusal) is not a failure."""
    return isinstance(error, DATABASE_ERRORS) and not isinstance(error, CallInProgress)


def open_store(url: str) -> Store:
    """The store a database URL names: `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`,
    `postgresql://USER[:PASS]@HOST:PORT/DB`."""
    scheme = urlparse(url).scheme
    opener = BACKENDS.get(scheme)
    if opener is None:
        known = ", ".join(f"{name}:" for name in sorted(BACKENDS))
        raise StoreError(
            f"unsupported database URL {url!r} (this wacall stores in {known}); use sqlite:///var/wacall.db"
        )
    return opener(url)


__all__ = [
    "BACKENDS",
    "DATABASE_ERRORS",
    "LEGACY_REQUEST_LIFETIME",
    "SCHEMA_VERSION",
    "CallInProgress",
    "ChangeNotifier",
    "EventRecord",
    "IdempotentResult",
    "Pair",
    "PostgresStore",
    "Replica",
    "Reservation",
    "SchemaTooNew",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredCall",
    "Tx",
    "from_micros",
    "is_database_failure",
    "ledger_from_json",
    "ledger_to_json",
    "migrate_database",
    "open_store",
    "optional_datetime",
    "optional_micros",
    "to_micros",
    "wait_for_change",
]
