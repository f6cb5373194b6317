"""What an operator does to a database outside the service: apply the schema's migrations (`wacall migrate`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlparse

import psycopg

from wacall.store.base import StoreError, StoreUnavailable
from wacall.store.migrations import SCHEMA_VERSION, migrate
from wacall.store.postgres import POSTGRES_SCHEMES, PostgresOptions, redacted
from wacall.store.postgres_schema import migrate_postgres
from wacall.store.sqlite import sqlite_path


def migrate_database(url: str) -> tuple[int, int]:
    """Bring the database a URL names to the current schema, as `serve` does when it starts; returns the version it
    had and the version it has now. A database from a newer wacall is refused unchanged (`SchemaTooNew`)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = sqlite_path(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            return migrate(db, str(path)), SCHEMA_VERSION
        finally:
            db.close()
    if scheme in POSTGRES_SCHEMES:
        options = PostgresOptions()
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=options.connect_timeout_seconds) as pg:
                return migrate_postgres(pg, redacted(url)), SCHEMA_VERSION
        except psycopg.OperationalError as error:
            raise StoreUnavailable(f"cannot reach the database {redacted(url)}: {error}") from error
    raise StoreError(f"unsupported database URL {url!r}; use sqlite:///var/wacall.db or postgresql://HOST/DB")
