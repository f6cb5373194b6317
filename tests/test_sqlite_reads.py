"""SQLite reads: the long ones never run on the event loop, and one business's events and calls are index ranges.

`events_after` (every WatchEvents stream polls it), `list_calls` and `last_cursor` run on the store's reader thread,
so the loop serves RPCs, webhooks and media timers while they read. `Store.read` (a decision's point lookups) stays
on the caller's thread, except when another thread holds that connection: it then reads on the reader thread
rather than wait for it with the loop stopped.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from wacall.rules.engine import PermissionState
from wacall.store import EventRecord, Pair, SqliteStore, StoredCall, Tx
from wacall.store.sqlite import events_after_query, list_calls_query

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PAIR = Pair("+447911123456", "+34612345678")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "reads.db")

    def fill(tx: Tx) -> None:
        for n in range(50):
            tx.append(EventRecord(PAIR, "user_message_received", "user", AT, AT, PermissionState.NONE, {}))
            tx.save_call(StoredCall(f"call-{n:02}", PAIR, "outbound", AT, "ended", {}, active=False))

    await opened.transaction(fill)
    yield opened
    await opened.close()


async def ran_while_awaiting(read: Awaitable[Any]) -> bool:
    """Whether the loop ran other work while `read` was awaited: a read that blocks the loop thread finishes
    before a callback scheduled ahead of it can run."""
    ran: list[bool] = []
    asyncio.get_running_loop().call_soon(ran.append, True)
    await read
    return ran == [True]


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda s: s.events_after(0, business=PAIR.business), id="events_after"),
        pytest.param(
            lambda s: s.list_calls(business=PAIR.business, user=None, before=None, limit=100), id="list_calls"
        ),
        pytest.param(lambda s: s.last_cursor(), id="last_cursor"),
    ],
)
async def test_reads_that_can_be_long_leave_the_event_loop_free(
    store: SqliteStore, read: Callable[[SqliteStore], Awaitable[Any]]
) -> None:
    assert await ran_while_awaiting(read(store))


async def test_the_reads_off_the_loop_still_answer_from_one_snapshot(store: SqliteStore) -> None:
    assert len(await store.events_after(0, business=PAIR.business, limit=500)) == 50
    assert len(await store.events_after(40, business=PAIR.business)) == 10
    assert await store.last_cursor() == 50
    newest = await store.list_calls(business=PAIR.business, user=None, before=None, limit=3)
    assert [c.call_id for c in newest] == ["call-49", "call-48", "call-47"]


async def test_a_read_while_another_thread_holds_the_read_connection_does_not_wait_for_it(
    store: SqliteStore,
) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_lookup(tx: Tx) -> str | None:
        entered.set()
        release.wait(10)
        return tx.setting("nothing")

    # Another event loop (another thread) is in the middle of a read on the caller's-thread connection.
    other = threading.Thread(target=asyncio.run, args=(store.read(slow_lookup),))
    other.start()
    try:
        assert await asyncio.to_thread(entered.wait, 5)
        assert await ran_while_awaiting(store.read(lambda tx: tx.ledger(PAIR)))
        assert other.is_alive()  # answered while the other read was still holding its connection
    finally:
        release.set()
        await asyncio.to_thread(other.join, 10)


def query_plan(path: Path, query: tuple[str, tuple[Any, ...]]) -> list[str]:
    sql, params = query
    with sqlite3.connect(path) as db:
        return [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


@pytest.mark.parametrize(
    ("query", "index"),
    [
        pytest.param(events_after_query(10, PAIR.business, None, 500), "events_by_business", id="events of a business"),
        pytest.param(events_after_query(10, PAIR.business, PAIR.user, 500), "events_by_pair", id="events of a pair"),
        pytest.param(list_calls_query(PAIR.business, None, None, 50), "calls_by_business", id="calls of a business"),
        pytest.param(
            list_calls_query(PAIR.business, None, (1, "call-9"), 50), "calls_by_business", id="a business's next page"
        ),
        pytest.param(
            list_calls_query(PAIR.business, PAIR.user, None, 50), "calls_by_pair_newest", id="calls of a pair"
        ),
        pytest.param(list_calls_query(None, None, None, 50), "calls_by_time", id="every call"),
    ],
)
async def test_filtered_event_and_call_listings_read_an_index_range_without_sorting(
    store: SqliteStore, query: tuple[str, tuple[Any, ...]], index: str
) -> None:
    plan = query_plan(store.path, query)
    assert any(f"USING INDEX {index}" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan
