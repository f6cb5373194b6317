"""The SQLite schemas earlier releases wrote, as they wrote them, to build old databases in tests.

Copied from the releases themselves, never derived from today's migrations: a test that upgrades one of these
checks the migrations against what is really out there.
"""

# The first release (no schema version): only the permission ledger's tables. Later releases added their tables
# on start (CREATE TABLE IF NOT EXISTS), still without a version.
FIRST_RELEASE = """
CREATE TABLE IF NOT EXISTS pairs (
    business TEXT NOT NULL,
    user TEXT NOT NULL,
    ledger TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (business, user)
);
CREATE TABLE IF NOT EXISTS events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    business TEXT NOT NULL,
    user TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    state_after TEXT NOT NULL,
    attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_pair ON events (business, user, cursor);
CREATE TABLE IF NOT EXISTS claimed_keys (
    key TEXT PRIMARY KEY,
    claimed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    business TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (business, key)
);
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""

# Version 1 (PRAGMA user_version = 1; also every version-0 database a later release had opened): the user's column
# is `user`.
VERSION_1 = """
CREATE TABLE IF NOT EXISTS pairs (
    business TEXT NOT NULL,
    user TEXT NOT NULL,
    ledger TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (business, user)
);
CREATE TABLE IF NOT EXISTS events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    business TEXT NOT NULL,
    user TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    state_after TEXT NOT NULL,
    attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_pair ON events (business, user, cursor);
CREATE TABLE IF NOT EXISTS claimed_keys (
    key TEXT PRIMARY KEY,
    claimed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    business TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (business, key)
);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    business TEXT NOT NULL,
    user TEXT NOT NULL,
    sent_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS aliases (
    wa_id TEXT PRIMARY KEY,
    user TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    platform_call_id TEXT UNIQUE,
    business TEXT NOT NULL,
    user TEXT NOT NULL,
    direction TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    active INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_pair ON calls (business, user, created_at);
-- The platform allows one call at a time between a business number and a user (138003): so do we.
CREATE UNIQUE INDEX IF NOT EXISTS one_active_call_per_pair ON calls (business, user) WHERE active = 1;
CREATE TABLE IF NOT EXISTS parked_call_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    platform_call_id TEXT NOT NULL,
    parked_at INTEGER NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS restrictions (
    business TEXT PRIMARY KEY,
    until INTEGER,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
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
);
CREATE INDEX IF NOT EXISTS reservations_by_time ON reservations (reserved_at);
CREATE INDEX IF NOT EXISTS reservations_by_key ON reservations (business, idempotency_key);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""

# Version 2: the user's column renamed `user_number`.
VERSION_2 = """
CREATE TABLE IF NOT EXISTS pairs (
    business TEXT NOT NULL,
    user_number TEXT NOT NULL,
    ledger TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (business, user_number)
);
CREATE TABLE IF NOT EXISTS events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    business TEXT NOT NULL,
    user_number TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    state_after TEXT NOT NULL,
    attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_pair ON events (business, user_number, cursor);
CREATE TABLE IF NOT EXISTS claimed_keys (
    key TEXT PRIMARY KEY,
    claimed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    business TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (business, key)
);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    business TEXT NOT NULL,
    user_number TEXT NOT NULL,
    sent_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS aliases (
    wa_id TEXT PRIMARY KEY,
    user_number TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    platform_call_id TEXT UNIQUE,
    business TEXT NOT NULL,
    user_number TEXT NOT NULL,
    direction TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    active INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_pair ON calls (business, user_number, created_at);
-- The platform allows one call at a time between a business number and a user (138003): so do we.
CREATE UNIQUE INDEX IF NOT EXISTS one_active_call_per_pair ON calls (business, user_number) WHERE active = 1;
CREATE TABLE IF NOT EXISTS parked_call_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    platform_call_id TEXT NOT NULL,
    parked_at INTEGER NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS restrictions (
    business TEXT PRIMARY KEY,
    until INTEGER,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT PRIMARY KEY,
    business TEXT NOT NULL,
    user_number TEXT NOT NULL,
    reserved_at INTEGER NOT NULL,
    channel TEXT NOT NULL,
    state_before TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    claimed_at INTEGER
);
CREATE INDEX IF NOT EXISTS reservations_by_time ON reservations (reserved_at);
CREATE INDEX IF NOT EXISTS reservations_by_key ON reservations (business, idempotency_key);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""

# Created on first use by versions 0 to 2, when a signed delivery was refused.
REFUSED_WEBHOOKS = (
    "CREATE TABLE IF NOT EXISTS refused_webhooks ("
    "id INTEGER PRIMARY KEY AUTOINCREMENT, received_at INTEGER NOT NULL, reason TEXT NOT NULL, body BLOB NOT NULL)"
)
